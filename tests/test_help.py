"""``--help`` as an operator reads it: ``python -m bulkrerun [COMMAND] --help`` run as a real
process, piped (no terminal), at 80 and 120 columns."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest
import typer.main

from bulkrerun.cli import app
from tests.conftest import clean_env

COMMANDS = ["", "plan", "run", "status", "report", "verify", "fake-server", "demo"]
WIDTHS = [80, 120]


@functools.cache
def _help(command: str, width: int) -> str:
    argv = [sys.executable, "-m", "bulkrerun", *([command] if command else []), "--help"]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=clean_env(COLUMNS=str(width)),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _declared(command: str) -> list[typer.core.TyperOption]:
    """The options ``command`` declares (the group's own for ""), from the CLI itself, so
    that a flag added later is checked too."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    cmd = group if not command else group.commands[command]
    return [p for p in cmd.params if isinstance(p, typer.core.TyperOption)]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", COMMANDS)
def test_flags_are_listed_without_a_value(command: str, width: int) -> None:
    """A flag takes no value, so its row shows none: typer 0.29 wrote ``<bool>`` after each
    (``--resend-held  <bool>  Send held units again``), as if one had to be given."""
    text = _help(command, width)
    assert "<bool>" not in text
    flags = [p for p in _declared(command) if p.is_flag]
    names = [name for p in flags for name in (*p.opts, *p.secondary_opts)] + ["--help"]
    assert len(names) > 1
    for name in names:
        row = next((line for line in text.splitlines() if f" {name} " in line), None)
        assert row is not None, f"{name} is not listed"
        # What follows the flag's names on its row is its help, not a type or a value.
        after = row.split(name, 1)[1].strip(" │")
        assert not after.startswith(("<", "BOOLEAN", "[")), row


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("", "[OPTIONS] COMMAND [ARGS]..."),
        ("plan", "plan [OPTIONS] MANIFEST"),
        ("run", "run [OPTIONS] MANIFEST"),
        ("status", "status [OPTIONS] JOURNAL"),
        ("report", "report [OPTIONS] JOURNAL"),
        ("verify", "verify [OPTIONS] JOURNAL"),
        ("fake-server", "fake-server [OPTIONS]"),
        ("demo", "demo [OPTIONS]"),
    ],
)
def test_usage_line_is_the_command_as_typed(command: str, usage: str, width: int) -> None:
    """The usage line names an argument as it is typed: typer 0.27 on wrapped a required one
    in braces (``run [OPTIONS] {MANIFEST}``)."""
    text = _help(command, width)
    lines = [line.strip() for line in text.splitlines() if "Usage:" in line]
    assert lines == [f"Usage: python -m bulkrerun {usage}"]


def test_missing_argument_names_it_as_typed() -> None:
    """The usage line of an error, too."""
    proc = subprocess.run(
        [sys.executable, "-m", "bulkrerun", "run"],
        capture_output=True,
        text=True,
        env=clean_env(COLUMNS="120"),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Usage: python -m bulkrerun run [OPTIONS] MANIFEST\n" in proc.stderr
    assert "Missing argument 'MANIFEST'" in proc.stderr
    assert not re.search(r"[{}]", proc.stderr)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_listed_whole(command: str, width: int) -> None:
    """Each option's names whole, nothing cut: at 80 columns ``fake-server --help`` showed
    ``--drop-after-acce…`` and ``--timeout-after-a…``."""
    text = _help(command, width)
    assert "…" not in text
    words = set(re.findall(r"(?<![\w-])-[\w-]+", text))
    for param in _declared(command):
        for name in (*param.opts, *param.secondary_opts):
            assert name in words, f"{name} is not listed whole"


@pytest.mark.parametrize("width", WIDTHS)
def test_fake_server_job_options_name_a_job(width: int) -> None:
    """``--missing-job`` and ``--deny-job`` take a job name, once per job: typer 0.29 wrote
    ``<list[str]>``, a Python type, after them."""
    text = _help("fake-server", width)
    assert "list[" not in text
    for name in ("--missing-job", "--deny-job"):
        assert re.search(rf"│ {name} +JOB +\w", text), name
