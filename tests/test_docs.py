"""The README's examples and reference, held to what the code does.

A new user copies commands and manifests from README.md and configs/; each was once right
and then drifted as messages, flags and keys changed. These tests read the README itself,
so a change that leaves it behind fails here: its manifests and the example configs load,
the flags it names exist and every option of every command is named, its settings table
and configs/example.env name the settings there are, and the rehearsal of the outage example
against ``fake-server --catalog`` prints and exits as the README says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup, TyperOption

from bulkrerun.cli import app
from bulkrerun.errors import ManifestError
from bulkrerun.manifest import load_manifest
from bulkrerun.planner import plan, summarize, window_times
from bulkrerun.settings import Settings
from tests.conftest import ROOT, Cli, Service

README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGS = ROOT / "configs"


def _sections(text: str) -> dict[str, str]:
    """The README's ``## `` sections by title (the text before the first is under "")."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    sections = {"": parts[0]}
    sections.update(zip(parts[1::2], parts[2::2], strict=True))
    return sections


SECTIONS = _sections(README)
# What a user of the tool reads: not the benchmark figures, nor the development commands
# (whose flags are pytest's, ruff's and mypy's).
USER_TEXT = "".join(
    body for title, body in SECTIONS.items() if title not in {"Benchmarks", "Development"}
)


def _loads_cleanly(path: Path) -> list[str]:
    """The problems of the manifest at ``path`` and its warnings, as plain sentences."""
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        return exc.problems
    return list(manifest.warnings)


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_loads_without_problems_or_warnings(path: Path) -> None:
    assert _loads_cleanly(path) == []


def _readme_manifests() -> list[str]:
    """Every ```toml block of the README that is a whole manifest (opens with its version)."""
    blocks = re.findall(r"^```toml\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
    return [block for block in blocks if block.lstrip().startswith("version")]


def test_the_readme_manifest_reference_loads_without_problems(tmp_path: Path) -> None:
    manifests = _readme_manifests()
    assert manifests, "the README's manifest reference is not a ```toml block any more"
    for n, text in enumerate(manifests):
        path = tmp_path / f"readme-{n}.toml"
        path.write_text(text, encoding="utf-8")
        assert _loads_cleanly(path) == [], text


def test_the_backfill_example_sends_the_requests_the_readme_counts() -> None:
    # "one request per 6 hours of plan time ... (56 requests), and a second job ... one
    # request a day ... (14 requests)"
    counts = [entry.requests for entry in summarize(load_manifest(CONFIGS / "backfill.toml"))]
    assert counts == [56, 14]
    assert "(56 requests)" in SECTIONS["Worked examples"]
    assert "(14 requests)" in SECTIONS["Worked examples"]


def _backfill_of(tmp_path: Path, name: str, windows: list[tuple[str, str]]) -> Path:
    """A manifest of one window of ods_orders per (begin, end), 1h chunks, times naive in
    Asia/Shanghai, with dwd_orders downstream."""
    entries = "".join(
        f'[[window]]\njob_name = "ods_orders"\nbegin = "{begin}"\nend = "{end}"\n'
        'chunk = "1h"\njobs = [ { job_name = "dwd_orders", '
        'workspace_id = "62fbba734e634c5087656fc3ff7adf34" } ]\n'
        for begin, end in windows
    )
    path = tmp_path / name
    path.write_text(
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "firstNode"\nretry_task_version = "current_version"\n'
        'timezone = "Asia/Shanghai"\n' + entries,
        encoding="utf-8",
    )
    return path


def test_the_order_requests_leave_in_is_the_one_the_readme_gives(tmp_path: Path) -> None:
    # "Requests leave in the plan's order: the entries in the manifest's order, each window
    # from its begin on": an operator backfilling upstream before downstream relies on it,
    # and on being told that it is not the order the reruns run in.
    path = _backfill_of(
        tmp_path,
        "two.toml",
        [
            ("2024-11-25T00:00:00", "2024-11-25T03:00:00"),
            ("2024-11-24T00:00:00", "2024-11-24T02:00:00"),
        ],
    )
    sent = [(chunk.entry, window_times(chunk.body)[0]) for chunk in plan(load_manifest(path))]
    day, hour = 86_400_000, 3_600_000
    first = 1_732_464_000_000  # 2024-11-25T00:00:00+08:00
    assert sent == [
        *(("window[0]", first + k * hour) for k in range(3)),
        *(("window[1]", first - day + k * hour) for k in range(2)),
    ]
    worked = " ".join(SECTIONS["Worked examples"].split())
    assert "Requests leave in the plan's order: the entries in the manifest's order" in worked
    assert "That is not the order the reruns run in" in worked
    assert "a downstream job left out of `jobs` is not rerun" in worked
    reference = " ".join(SECTIONS["Manifest reference"].split())
    assert "Requests are sent in the plan's order" in reference


def test_a_backfill_extended_by_whole_chunks_keeps_its_request_ids_as_the_readme_says(
    tmp_path: Path,
) -> None:
    # "moving begin (or end) by a whole number of chunks keeps the cuts where they were, so
    # the done requests keep their ids and only the new times are sent (a week more of 1h
    # chunks: 168 new requests ...). Moving begin by part of a chunk ... gives every request
    # a new id".
    weeks = [("2024-11-05T00:00:00", "2024-11-26T00:00:00")]
    done = {c.id for c in plan(load_manifest(_backfill_of(tmp_path, "3w.toml", weeks)))}
    a_week_more = [("2024-10-29T00:00:00", "2024-11-26T00:00:00")]
    extended = [c.id for c in plan(load_manifest(_backfill_of(tmp_path, "4w.toml", a_week_more)))]
    assert done <= set(extended)
    assert len(extended) - len(done) == 168
    by_half = [("2024-10-29T00:30:00", "2024-11-26T00:00:00")]
    shifted = {c.id for c in plan(load_manifest(_backfill_of(tmp_path, "half.toml", by_half)))}
    assert not done & shifted
    worked = " ".join(SECTIONS["Worked examples"].split())
    assert "moving `begin` (or `end`) by a whole number of chunks keeps the cuts" in worked
    assert "(a week more of `1h` chunks: 168 new requests, no warning)" in worked
    resume = " ".join(SECTIONS["The journal and resume"].split())
    assert "a `begin` moved by a whole number of chunks keeps the cuts where they were" in resume
    assert "give it a `[[window]]` entry of its own instead" in resume


# An entry of each kind, and a valid value for each key the README says an entry may set.
_ENTRIES = {
    "window": 'job_name = "a"\nbegin = 1732579200000\nend = 1732582800000\nchunk = "1h"\n',
    "instances": (
        'job_name = "a"\n'
        "items = [ { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 } ]\n"
    ),
    "select": 'job_name = "a"\nbegin = 1732579200000\nend = 1732582800000\n',
}
_VALUES = {
    "workspace": '"62fbba734e634c5087656fc3ff7adf34"',
    "retry_location": '"specifiedNode"',
    "node_name": '"load"',
    "retry_task_version": '"current_version"',
    "ignore_obs_monitor": "false",
    "timezone": '"UTC"',
}


def _entry_with(tmp_path: Path, kind: str, keys: list[str]) -> list[str]:
    text = (
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        f"[[{kind}]]\n{_ENTRIES[kind]}" + "".join(f"{key} = {_VALUES[key]}\n" for key in keys)
    )
    path = tmp_path / f"{kind}.toml"
    path.write_text(text, encoding="utf-8")
    return _loads_cleanly(path)


def test_the_keys_the_readme_says_every_entry_may_override_are_taken_by_every_entry(
    tmp_path: Path,
) -> None:
    # "[defaults] applies to every entry; an entry may override any of it" (the contract):
    # an instances entry, whose times are epoch milliseconds, takes timezone too.
    prose = " ".join(SECTIONS["Manifest reference"].split())
    said = re.search(r"Every entry may override (.+?)[;.(]", prose)
    assert said is not None
    keys = re.findall(r"`(\w+)`", said[1])
    assert set(keys) == set(_VALUES)
    for kind in _ENTRIES:
        assert _entry_with(tmp_path, kind, keys) == [], kind


def test_an_instances_entry_checks_the_timezone_it_takes(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        f'[[instances]]\n{_ENTRIES["instances"]}timezone = "Mars/Olympus"\n',
        encoding="utf-8",
    )
    (problem,) = _loads_cleanly(path)
    assert "instances[0].timezone" in problem


# ---------------------------------------------------------------------------------------------
# Flags and settings
# ---------------------------------------------------------------------------------------------


def _options() -> dict[str, list[TyperOption]]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return {
        name: [p for p in command.params if isinstance(p, TyperOption)]
        for name, command in group.commands.items()
    }


def _long(option: TyperOption) -> list[str]:
    return [o for o in (*option.opts, *option.secondary_opts) if o.startswith("--")]


def test_every_flag_the_readme_names_is_an_option_of_a_command() -> None:
    known = {flag for options in _options().values() for o in options for flag in _long(o)}
    known.add("--help")  # every command's, made by the framework rather than declared
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", USER_TEXT))
    assert named - known == set()


def test_the_readme_names_every_option_of_every_command() -> None:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", USER_TEXT))
    missing = [
        f"{command} {'/'.join(_long(option))}"
        for command, options in _options().items()
        for option in options
        if not set(_long(option)) & named
    ]
    assert missing == []


def _setting_variables() -> set[str]:
    return {f"BULKRERUN_{name.upper()}" for name in Settings.model_fields}


def test_the_readme_settings_table_names_every_setting_and_no_other() -> None:
    rows = [line for line in SECTIONS["Settings"].splitlines() if line.startswith("| `")]
    in_table = {v for row in rows for v in re.findall(r"`(BULKRERUN_\w+)`", row.split("|")[1])}
    assert in_table == _setting_variables()


def test_example_env_names_every_setting_and_no_other() -> None:
    text = (CONFIGS / "example.env").read_text(encoding="utf-8")
    # Set or commented out (# BULKRERUN_SK=): each is one to fill in.
    assigned = set(re.findall(r"^(?:# )?(BULKRERUN_\w+)=", text, flags=re.MULTILINE))
    assert assigned == _setting_variables()


def test_example_env_filled_in_plans_as_a_dot_env(cli: Cli) -> None:
    # "Copy to .env and fill in": as it stands (a region, a project, pacing) it is valid.
    (cli.cwd / ".env").write_text(
        (CONFIGS / "example.env").read_text(encoding="utf-8"), encoding="utf-8"
    )
    done = cli("plan", str(CONFIGS / "backfill.toml"), env=cli.env(url=None))
    assert done.returncode == 0, done.stderr
    assert "70 requests to https://dayu.cn-north-4.myhuaweicloud.com" in done.stdout


# ---------------------------------------------------------------------------------------------
# The rehearsal the README gives, over the wire
# ---------------------------------------------------------------------------------------------


def test_the_outage_rehearsal_against_the_catalog_goes_as_the_readme_says(
    fake_service: Callable[..., Service], cli: Cli
) -> None:
    service = fake_service("--catalog")
    manifest = str(CONFIGS / "outage.toml")

    planned = cli("plan", manifest, url=service.url)
    assert planned.returncode == 0, planned.stderr
    assert "select[0]: found 32 instances" in planned.stderr
    assert "4 requests to" in planned.stdout
    assert "found 32 instances ... (4 requests)" in SECTIONS["The fake service"]

    ran = cli("run", manifest, "--journal", "rehearsal.journal", "--rate", "100", url=service.url)
    assert ran.returncode == 1, ran.stderr
    counts = json.loads(cli("status", "rehearsal.journal", "--json").stdout)
    assert (counts["done"], counts["failed"], counts["held"], counts["pending"]) == (32, 12, 0, 0)
    assert counts["failed_by_code"] == {"DLF.1001": 10, "DLF.1000": 2}
    assert service.accepted_ids() and len(service.ledger()) == 2


def test_the_backfill_example_is_accepted_whole_by_a_fake_without_catalog(
    fake_service: Callable[..., Service], cli: Cli
) -> None:
    service = fake_service()
    ran = cli(
        "run",
        str(CONFIGS / "backfill.toml"),
        "--journal",
        "b.journal",
        "--rate",
        "200",
        url=service.url,
    )
    assert ran.returncode == 0, ran.stderr
    assert len(service.ledger()) == 70
    assert "(70 requests, exit 0)" in SECTIONS["The fake service"]
