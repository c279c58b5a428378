"""Settings as a user writes them: the environment, a ``.env`` file and flags, each bad value
refused by name (and never echoed) before anything is sent, and the key pair taken from one
place only."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bulkrerun.errors import SettingsError
from bulkrerun.settings import Settings, load_settings
from tests.conftest import AK, PROJECT, SK, Cli, Service, clean_env, write_manifest

ONE_WINDOW = (
    '[[window]]\njob_name = "j"\nbegin = 1732579200000\nend = 1732582800000\nchunk = "1h"\n'
)


@pytest.fixture(autouse=True)
def no_settings_of_the_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BULKRERUN_* or CLOUD_SDK_* of the developer's, and no .env but the test's own."""
    for key in list(os.environ):
        if key.startswith(("BULKRERUN_", "CLOUD_SDK_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def refused(**flags: object) -> str:
    """The message of the SettingsError that ``load_settings`` raises."""
    with pytest.raises(SettingsError) as info:
        load_settings(**flags)
    return str(info.value)


def dotenv(*lines: str) -> None:
    Path(".env").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def keys(settings: Settings) -> tuple[str, str]:
    assert settings.ak is not None and settings.sk is not None
    return settings.ak.get_secret_value(), settings.sk.get_secret_value()


# -- values that go into a header or the URL ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "BULKRERUN_AK",
        "BULKRERUN_SK",
        "BULKRERUN_SECURITY_TOKEN",
        "BULKRERUN_TOKEN",
        "BULKRERUN_PROJECT_ID",
        "BULKRERUN_ENDPOINT",
        "BULKRERUN_REGION",
        "CLOUD_SDK_AK",
    ],
)
@pytest.mark.parametrize(
    "value", ["Xk9q7Z\r", "Xk9q7Z\n", "Xk9\tq7Z", " Xk9q7Z", "Xk9 q7Z", "Xk9q7Zé"]
)
def test_a_value_bound_for_a_header_or_url_refuses_stray_characters_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    message = refused()
    assert name in message
    assert "printable ASCII" in message
    assert "Xk9" not in message and "q7Z" not in message


def test_clean_header_values_are_kept_exactly() -> None:
    dotenv(
        "BULKRERUN_ENDPOINT=http://127.0.0.1:8080",
        "BULKRERUN_REGION=cn-north-4",
        f"BULKRERUN_PROJECT_ID={PROJECT}",
        f"BULKRERUN_AK={AK}",
        f"BULKRERUN_SK={SK}",
        "BULKRERUN_SECURITY_TOKEN=gQpjbi1ub3J0aC00+/=",
        "BULKRERUN_TOKEN=MIIEhQYJKoZIhvcNAQcCoIIEdjCCBHIC-_",
    )
    s = load_settings()
    assert (s.endpoint, s.region, s.project_id) == ("http://127.0.0.1:8080", "cn-north-4", PROJECT)
    assert keys(s) == (AK, SK)
    assert s.secrets() == [SK, "gQpjbi1ub3J0aC00+/=", "MIIEhQYJKoZIhvcNAQcCoIIEdjCCBHIC-_"]


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BULKRERUN_RATE", "BULKRERUN_TIMEOUT"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_rate_and_timeout_must_be_finite(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert f"{name}: Input should be a finite number" in refused()


def test_a_rate_so_small_that_its_interval_overflows_is_refused() -> None:
    assert math.isinf(1.0 / 1e-310)  # what the pacer and the plan's estimate would compute
    assert "--rate: Input should be greater than or equal to" in refused(rate=1e-310)
    assert load_settings(rate=0.001).rate == 0.001  # one request every 17 minutes is fine


def test_flags_are_named_as_typed_with_dashes() -> None:
    message = refused(max_inflight=0, max_attempts=0, timeout=float("inf"), rate=float("nan"))
    for flag in ("--max-inflight", "--max-attempts", "--timeout", "--rate"):
        assert f"{flag}: " in message
    assert "_" not in message.replace("BULKRERUN_", "")


# -- set but empty -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "BULKRERUN_AK",
        "BULKRERUN_TOKEN",
        "BULKRERUN_PROJECT_ID",
        "BULKRERUN_RATE",
        "BULKRERUN_VERIFY_TLS",
        "BULKRERUN_CA_BUNDLE",
        "CLOUD_SDK_SK",
    ],
)
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_variable_set_but_empty_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, where: str
) -> None:
    if where == ".env":
        dotenv(f"{name}=")
    else:
        monkeypatch.setenv(name, "")
    assert f"{name}: set but empty: unset it or give a value" in refused()


def test_an_empty_key_pair_is_refused_not_passed_to_the_signer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKRERUN_AK", "")
    monkeypatch.setenv("BULKRERUN_SK", "")
    message = refused()
    assert "BULKRERUN_AK: set but empty" in message
    assert "BULKRERUN_SK: set but empty" in message


# -- the CA bundle -------------------------------------------------------------------------------


def test_ca_bundle_must_be_a_readable_ca_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BULKRERUN_CA_BUNDLE", "/nonexistent.pem")
    assert "BULKRERUN_CA_BUNDLE: no such file: /nonexistent.pem" in refused()
    monkeypatch.setenv("BULKRERUN_CA_BUNDLE", str(tmp_path))
    assert f"BULKRERUN_CA_BUNDLE: {tmp_path} is not a file" in refused()
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n", encoding="utf-8")
    monkeypatch.setenv("BULKRERUN_CA_BUNDLE", str(not_pem))
    assert f"BULKRERUN_CA_BUNDLE: {not_pem} cannot be read as a CA file" in refused()


def test_a_real_ca_bundle_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    certifi = pytest.importorskip("certifi")
    monkeypatch.setenv("BULKRERUN_CA_BUNDLE", certifi.where())
    assert load_settings().ca_bundle == Path(certifi.where())


# -- which key pair ------------------------------------------------------------------------------


@pytest.mark.parametrize("own_pair_in", [".env", "environment"])
def test_the_bulkrerun_pair_wins_over_the_cloud_sdk_pair_whichever_holds_which(
    monkeypatch: pytest.MonkeyPatch, own_pair_in: str
) -> None:
    own = {"BULKRERUN_AK": "own-ak", "BULKRERUN_SK": "own-sk"}
    sdk = {"CLOUD_SDK_AK": "sdk-ak", "CLOUD_SDK_SK": "sdk-sk"}
    in_dotenv, in_environment = (own, sdk) if own_pair_in == ".env" else (sdk, own)
    dotenv(*(f"{name}={value}" for name, value in in_dotenv.items()))
    for name, value in in_environment.items():
        monkeypatch.setenv(name, value)
    assert keys(load_settings()) == ("own-ak", "own-sk")


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_cloud_sdk_pair_is_read_when_bulkrerun_pair_is_unset(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == ".env":
        dotenv("CLOUD_SDK_AK=sdk-ak", "CLOUD_SDK_SK=sdk-sk")
    else:
        monkeypatch.setenv("CLOUD_SDK_AK", "sdk-ak")
        monkeypatch.setenv("CLOUD_SDK_SK", "sdk-sk")
    s = load_settings()
    assert keys(s) == ("sdk-ak", "sdk-sk")
    assert "sdk-sk" not in repr(s)


def test_flags_override_both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv("BULKRERUN_AK=own-ak", "BULKRERUN_SK=own-sk", "BULKRERUN_RATE=3.5")
    monkeypatch.setenv("CLOUD_SDK_AK", "sdk-ak")
    monkeypatch.setenv("CLOUD_SDK_SK", "sdk-sk")
    s = load_settings(ak="flag-ak", sk="flag-sk", rate=7.0)
    assert keys(s) == ("flag-ak", "flag-sk")
    assert s.rate == 7.0


def test_a_region_flag_sends_there_over_an_endpoint_of_the_environment_or_dotenv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bulkrerun.settings import resolve_endpoint

    region_url = "https://dayu.cn-north-4.myhuaweicloud.com"
    monkeypatch.setenv("BULKRERUN_ENDPOINT", "http://127.0.0.1:18472")
    assert resolve_endpoint(load_settings(region="cn-north-4")) == region_url
    monkeypatch.delenv("BULKRERUN_ENDPOINT")
    dotenv("BULKRERUN_ENDPOINT=http://127.0.0.1:18472")
    assert resolve_endpoint(load_settings(region="cn-north-4")) == region_url
    # Beside each other in one place, the endpoint still wins over the region.
    monkeypatch.setenv("BULKRERUN_REGION", "cn-north-4")
    assert resolve_endpoint(load_settings()) == "http://127.0.0.1:18472"
    assert resolve_endpoint(load_settings(endpoint="http://[::1]:9")) == "http://[::1]:9"


def test_endpoint_and_region_flags_together_are_refused() -> None:
    message = refused(endpoint="http://127.0.0.1:18472", region="cn-north-4")
    assert "--endpoint and --region" in message


@pytest.mark.parametrize(
    ("environment", "lines", "have", "missing"),
    [
        # Half a BULKRERUN pair is not completed from a whole CLOUD_SDK pair...
        (
            {"BULKRERUN_AK": "own-ak", "CLOUD_SDK_AK": "sdk-ak", "CLOUD_SDK_SK": "sdk-sk"},
            [],
            "BULKRERUN_AK",
            "BULKRERUN_SK",
        ),
        (
            {"CLOUD_SDK_AK": "sdk-ak", "CLOUD_SDK_SK": "sdk-sk"},
            ["BULKRERUN_SK=own-sk"],
            "BULKRERUN_SK",
            "BULKRERUN_AK",
        ),
        # ... nor from half a CLOUD_SDK pair, and half a CLOUD_SDK pair is not a pair.
        ({"BULKRERUN_AK": "own-ak", "CLOUD_SDK_SK": "sdk-sk"}, [], "BULKRERUN_AK", "BULKRERUN_SK"),
        ({}, ["CLOUD_SDK_AK=sdk-ak"], "CLOUD_SDK_AK", "CLOUD_SDK_SK"),
    ],
)
def test_half_a_key_pair_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    lines: list[str],
    have: str,
    missing: str,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    dotenv(*lines)
    message = refused()
    assert f"{have} is set but {missing} is not: both must be set, not just one" in message
    assert "-ak" not in message and "-sk" not in message


# -- through the command line, against the fake service ------------------------------------------


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ({"BULKRERUN_AK": AK + "\r"}, "BULKRERUN_AK"),
        ({"BULKRERUN_TIMEOUT": "inf"}, "BULKRERUN_TIMEOUT"),
        ({"BULKRERUN_RATE": "inf"}, "BULKRERUN_RATE"),
        ({"BULKRERUN_SK": ""}, "BULKRERUN_SK"),
        ({"BULKRERUN_CA_BUNDLE": "/nonexistent.pem"}, "BULKRERUN_CA_BUNDLE"),
    ],
)
def test_run_with_a_bad_setting_exits_2_and_sends_nothing(
    cli: Cli,
    fake_service: Callable[..., Service],
    tmp_path: Path,
    bad: dict[str, str],
    name: str,
) -> None:
    service = fake_service()
    manifest = write_manifest(tmp_path / "m.toml", ONE_WINDOW)
    result = cli("run", str(manifest), "--journal", "j", env=cli.env(service.url, **bad))
    assert result.returncode == 2, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert SK not in result.stderr + result.stdout
    assert service.ledger() == []
    assert not (tmp_path / "j").exists()


def test_run_signs_with_the_dotenv_pair_not_the_sdk_pair_of_the_shell(
    cli: Cli, fake_service: Callable[..., Service], tmp_path: Path
) -> None:
    service = fake_service()  # accepts only requests signed with AK/SK
    manifest = write_manifest(tmp_path / "m.toml", ONE_WINDOW)
    (tmp_path / ".env").write_text(f"BULKRERUN_AK={AK}\nBULKRERUN_SK={SK}\n", encoding="utf-8")
    env = clean_env(
        BULKRERUN_ENDPOINT=service.url,
        BULKRERUN_PROJECT_ID=PROJECT,
        CLOUD_SDK_AK="OTHERACCOUNTAK000000",
        CLOUD_SDK_SK="other-account-secret-key-000000",
    )
    result = cli("run", str(manifest), "--journal", "j", "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert len(service.ledger()) == 1


def test_run_and_status_say_the_default_timeout_settings_has() -> None:
    from bulkrerun import text

    assert Settings.model_fields["timeout"].default == text.DEFAULT_TIMEOUT
