"""Settings: environment (``BULKRERUN_*``), then a ``.env`` file, then command-line flags.

Read by pydantic-settings. Secrets are ``SecretStr`` so that no repr, log line or validation
error can show them. Every problem becomes a :class:`SettingsError` (exit 2, nothing sent)
naming the variable, or the flag when a flag gave the value:

- a variable that is set but empty is refused, not read as a value;
- values that go into a header or the URL (keys, tokens, project ID, endpoint, region) must
  be printable ASCII without spaces: a stray tab or carriage return would otherwise surface
  as a crash when the first request is sent;
- ``rate`` and ``timeout`` must be finite; ``ca_bundle`` must be a readable CA file.

The key pair comes from one place. ``BULKRERUN_AK`` / ``BULKRERUN_SK`` (from the environment
or ``.env``) win; ``CLOUD_SDK_AK`` / ``CLOUD_SDK_SK`` (what the official SDK's examples read,
again from either) are read only when both are unset, by a second small settings class. Half
a pair is refused rather than completed from the other family, which could sign with the
keys of another account.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkrerun.errors import SettingsError
from bulkrerun.signing import maskable

# Region IDs of DataArts Studio, from the official SDK's region table
# (huaweicloudsdkdataartsstudio/v1/region/dataartsstudio_region.py, version 3.1.219), which
# maps every one of them to https://dayu.{region}.myhuaweicloud.com.
REGIONS: frozenset[str] = frozenset(
    {
        "af-south-1",
        "ae-ad-1",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
        "cn-east-2",
        "cn-east-3",
        "cn-east-4",
        "cn-north-1",
        "cn-north-2",
        "cn-north-4",
        "cn-north-9",
        "cn-north-11",
        "cn-south-1",
        "cn-southwest-2",
        "eu-west-101",
        "la-north-2",
        "la-south-2",
        "me-east-1",
        "my-kualalumpur-1",
        "na-mexico-1",
        "ru-moscow-1",
        "ru-northwest-2",
        "sa-brazil-1",
        "tr-west-1",
    }
)


# Visible ASCII, no space: all that keys, tokens, project IDs, regions and URLs are made of.
_WIRE_SAFE = re.compile(r"[\x21-\x7e]+")
_Value = TypeVar("_Value", str, SecretStr)


def _wire_safe(value: _Value) -> _Value:
    """Refuse a value that cannot go into a header or URL as it is (the message never shows
    it: it may be a secret)."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not _WIRE_SAFE.fullmatch(text):
        raise PydanticCustomError(
            "not_wire_safe",
            "must be printable ASCII without spaces, tabs or line breaks "
            "(look for a stray character copied in with it)",
        )
    return value


def _readable_ca_file(path: Path) -> Path:
    """Refuse a CA bundle that is missing or unreadable now, not at the first request."""
    if not path.exists():
        raise PydanticCustomError("ca_file", "no such file: {path}", {"path": str(path)})
    if not path.is_file():
        raise PydanticCustomError("ca_file", "{path} is not a file", {"path": str(path)})
    try:
        ssl.create_default_context(cafile=str(path))
    except OSError as exc:  # ssl.SSLError is one too: not PEM, no certificate in it
        raise PydanticCustomError(
            "ca_file",
            "{path} cannot be read as a CA file: {why}",
            {"path": str(path), "why": str(exc)},
        ) from None
    return path


WireStr = Annotated[str, AfterValidator(_wire_safe)]
WireSecret = Annotated[SecretStr, AfterValidator(_wire_safe)]

# About one request a day: slower is not a rate limit, and 1/rate must stay finite.
MIN_RATE = 1e-5


class _FromEnvironment(BaseSettings):
    """What every settings class here shares: ``.env`` after the environment, unknown names
    ignored, no input echoed in errors, and no empty value taken for a setting."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # ``BULKRERUN_TOKEN=`` is a mistake, not a token: an empty AK used to crash the signer
        # and an empty token was sent and refused.
        if isinstance(value, str) and not value:
            raise PydanticCustomError("empty", "set but empty: unset it or give a value")
        return value


class Settings(_FromEnvironment):
    """Everything a run needs to reach the service. Flags override via ``load_settings``."""

    model_config = SettingsConfigDict(env_prefix="BULKRERUN_")

    endpoint: WireStr | None = None
    region: WireStr | None = None
    project_id: WireStr | None = None
    ak: WireSecret | None = None
    sk: WireSecret | None = None
    security_token: WireSecret | None = None
    token: WireSecret | None = None
    rate: float = Field(default=10.0, ge=MIN_RATE, allow_inf_nan=False)
    burst: int = Field(default=1, ge=1)
    max_inflight: int = Field(default=16, ge=1, le=4096)
    timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    max_attempts: int = Field(default=8, ge=1, le=100)
    verify_tls: bool = True
    ca_bundle: Annotated[Path, AfterValidator(_readable_ca_file)] | None = None

    def secrets(self) -> list[str]:
        """Every secret value that is set and can be masked, for scrubbing messages (see
        :func:`~bulkrerun.signing.maskable`)."""
        return maskable(
            s.get_secret_value() for s in (self.sk, self.security_token, self.token) if s
        )

    def sent_secrets(self) -> list[str]:
        """The secrets a request carries, which a server could echo in part: the token and
        the security token (the SK only signs)."""
        return maskable(s.get_secret_value() for s in (self.security_token, self.token) if s)

    def too_short_to_mask(self) -> list[str]:
        """What the secrets too short to be masked are (``the SK``...), never their values."""
        named = (
            ("the SK", self.sk),
            ("the security token", self.security_token),
            ("the token", self.token),
        )
        return [name for name, s in named if s and not maskable([s.get_secret_value()])]


class _CloudSdkKeys(_FromEnvironment):
    """The official SDK's ``CLOUD_SDK_AK`` / ``CLOUD_SDK_SK``, the fallback key pair."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_SDK_")

    ak: WireSecret | None = None
    sk: WireSecret | None = None


_Model = TypeVar("_Model", bound=_FromEnvironment)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``.env``, with ``overrides`` (flags; None = not given)
    on top. A bad value becomes a :class:`SettingsError` naming the variable or flag."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "region" in given:
        # A flag says where to send, over the environment and .env: --region sets aside an
        # endpoint set there (which would otherwise win, as it does over a region beside it).
        if "endpoint" in given:
            raise SettingsError("--endpoint and --region both say where to send: give one of them")
        given["endpoint"] = None
    settings = _validated(Settings, given)
    if settings.ak is None and settings.sk is None:
        sdk = _validated(_CloudSdkKeys, {})
        _refuse_half_pair(sdk.ak, sdk.sk, "CLOUD_SDK_")
        return settings.model_copy(update={"ak": sdk.ak, "sk": sdk.sk})
    _refuse_half_pair(settings.ak, settings.sk, "BULKRERUN_")
    return settings


def _validated(model: type[_Model], given: dict[str, Any]) -> _Model:
    """``model`` read from its sources with ``given`` on top; every problem in one
    :class:`SettingsError`, each under the name the user wrote: ``--max-inflight`` for a
    flag, ``BULKRERUN_MAX_INFLIGHT`` for a variable."""
    try:
        return model(**given)
    except ValidationError as exc:
        prefix = model.model_config.get("env_prefix", "")
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            if not field:
                name = "settings"
            elif field in given:
                name = "--" + field.replace("_", "-")
            else:
                name = prefix + field.upper()
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("bad settings:\n  " + "\n  ".join(problems)) from None


def _refuse_half_pair(ak: SecretStr | None, sk: SecretStr | None, prefix: str) -> None:
    if (ak is None) == (sk is None):
        return
    have, missing = (f"{prefix}AK", f"{prefix}SK") if sk is None else (f"{prefix}SK", f"{prefix}AK")
    raise SettingsError(
        f"{have} is set but {missing} is not: both must be set, not just one. The pair is "
        "never split between BULKRERUN_AK/SK and CLOUD_SDK_AK/SK, which are read only when "
        "BULKRERUN_AK and BULKRERUN_SK are both unset."
    )


def normalise_endpoint(url: str) -> str:
    """One spelling per endpoint: lower-case scheme and host, default port and trailing slash
    dropped. Raises :class:`SettingsError` for something that is not an http(s) URL."""
    if "@" in url:
        # A user and password would be shown, journaled and printed in the resume command:
        # refused, and never echoed (what follows the last @ is). Any @, not only where
        # urlsplit finds userinfo: "http://admin:12/pw@host" reads as host admin, port 12
        # and a path holding the password. An endpoint has no @.
        scheme = url[: url.find("://") + 3] if "://" in url else ""
        shown = f"{scheme}***@{url.rsplit('@', 1)[1]}"
        raise SettingsError(
            f"endpoint {shown!r}: a user or password in the URL is never sent (the service "
            "takes BULKRERUN_AK/BULKRERUN_SK or BULKRERUN_TOKEN), and would be shown and "
            "journaled: give the endpoint without it"
        )
    bad = f"endpoint {url!r} is not a URL like https://host or http://127.0.0.1:8080"
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError as exc:  # also an unclosed IPv6 bracket
        raise SettingsError(f"{bad} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise SettingsError(bad)
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = (
        host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    )
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_endpoint(settings: Settings) -> str:
    """The base URL to send to: the explicit endpoint, or the region's DataArts Studio URL."""
    if settings.endpoint:
        return normalise_endpoint(settings.endpoint)
    if settings.region:
        if settings.region not in REGIONS:
            known = ", ".join(sorted(REGIONS))
            raise SettingsError(
                f"unknown region {settings.region!r}; known regions: {known}. "
                "For a private endpoint or proxy set BULKRERUN_ENDPOINT (or --endpoint) instead."
            )
        return f"https://dayu.{settings.region}.myhuaweicloud.com"
    raise SettingsError(
        "no endpoint: set BULKRERUN_REGION (e.g. cn-north-4) or BULKRERUN_ENDPOINT "
        "(or --region / --endpoint)"
    )
