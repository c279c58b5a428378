"""Settings: environment (``BULKRERUN_*``), then a ``.env`` file, then command-line flags.

Read by pydantic-settings. Secrets are ``SecretStr`` so that no repr, log line or validation
error can show them. ``CLOUD_SDK_AK`` / ``CLOUD_SDK_SK`` (what the official SDK's examples
read) are used when ``BULKRERUN_AK`` / ``BULKRERUN_SK`` are unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkrerun.errors import SettingsError

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


class Settings(BaseSettings):
    """Everything a run needs to reach the service. Flags override via ``with_overrides``."""

    model_config = SettingsConfigDict(
        env_prefix="BULKRERUN_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    endpoint: str | None = None
    region: str | None = None
    project_id: str | None = None
    ak: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BULKRERUN_AK", "CLOUD_SDK_AK", "ak")
    )
    sk: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BULKRERUN_SK", "CLOUD_SDK_SK", "sk")
    )
    security_token: SecretStr | None = None
    token: SecretStr | None = None
    rate: float = Field(default=10.0, gt=0)
    burst: int = Field(default=1, ge=1)
    max_inflight: int = Field(default=16, ge=1, le=4096)
    timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    verify_tls: bool = True
    ca_bundle: Path | None = None

    def secrets(self) -> list[str]:
        """Every secret value that is set, for scrubbing messages."""
        return [s.get_secret_value() for s in (self.sk, self.security_token, self.token) if s]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``.env``, with ``overrides`` (flags; None = not given)
    on top. A bad value becomes a :class:`SettingsError` naming the variable."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"BULKRERUN_{field.upper()}" if field not in given else f"--{field}"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("bad settings:\n  " + "\n  ".join(problems)) from None


def normalise_endpoint(url: str) -> str:
    """One spelling per endpoint: lower-case scheme and host, default port and trailing slash
    dropped. Raises :class:`SettingsError` for something that is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"endpoint {url!r} is not a URL like https://host or http://127.0.0.1:8080"
        )
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
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
