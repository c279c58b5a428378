"""A machine that is not kind at 3 a.m.: output that cannot be written, too few files, a
terminal that cannot draw. Each command says what happened, exits with the contract's code
and leaves the journal sound."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from rich.console import Console

import bulkrerun.display as display_module
from bulkrerun.clock import FakeClock
from bulkrerun.display import PLAIN_EVERY, RunDisplay
from bulkrerun.engine import RunResult
from tests.conftest import PROJECT, Cli, Service, write_manifest

BULKRERUN = [sys.executable, "-m", "bulkrerun"]

INSTANCES = """
[[instances]]
job_name = "ods_payments"
batch = 1
items = [
  { job_id = 917567, plan_time = 1732601580000, submit_time = 1732239754684 },
  { job_id = 917568, plan_time = 1732601580000, submit_time = 1732239754684 },
]
"""


def _history(cli: Cli, journal: Path, url: str) -> list[dict[str, object]]:
    out = cli("status", str(journal), "--json", url=url)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["history"])


def test_verify_whose_output_cannot_be_written_keeps_its_verdict_and_says_so(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", INSTANCES)
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), url=srv.url).returncode == 0
    # A reader that went away (`verify J | head -0`): the exit code is the verdicts' (0:
    # nothing held), not 1, which says that units stay held.
    proc = subprocess.Popen(
        [*BULKRERUN, "verify", str(j)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli.env(srv.url), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # before the command has written anything
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, b"")
    # A full disk under `> verify.txt`: one line and exit 3, not a traceback.
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [*BULKRERUN, "verify", str(j)], stdout=full, stderr=subprocess.PIPE, text=True,
            env=cli.env(srv.url), cwd=tmp_path, timeout=60, check=False,
        )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "stopped: cannot write the output: No space left on device"
    ]
    # Both verifications are on record, ended as they did.
    verifies = [h for h in _history(cli, j, srv.url) if h["command"] == "verify"]
    assert [v["exit_code"] for v in verifies] == [0, 0]


def test_a_run_under_a_limit_of_a_dozen_files_exits_2_saying_to_raise_it(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", INSTANCES)
    j = tmp_path / "j"
    out = subprocess.run(
        [*BULKRERUN, "run", str(m), "--journal", str(j), "--max-inflight", "1"],
        capture_output=True, text=True, env=cli.env(srv.url), cwd=tmp_path, timeout=60,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12)),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    # Lowering --max-inflight cannot help (it is 1): the limit is what to raise.
    assert out.stderr.strip() == (
        "error: a run needs about 33 open files (--max-inflight 1, and 32 besides), and this "
        "process may open only 12 (ulimit -n): raise the limit to 33 or more"
    )
    assert not j.exists()
    assert srv.ledger() == []


@pytest.mark.anyio
async def test_on_a_dumb_terminal_a_run_shows_plain_lines_as_it_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TERM=dumb (an Emacs shell, some CI runners): rich draws its bar there only when it
    stops, so a run of an hour showed nothing until its end."""
    monkeypatch.setenv("TERM", "dumb")
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "monotonic", clock.now)
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=True, width=120), 10)
    counts = RunResult()
    with display:
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.follow, counts, clock)
            for _ in range(3):  # a unit done per step of the loop; the display's sleeps
                await anyio.lowlevel.checkpoint()  # on the fake clock take no time
                counts.done += 1
            tg.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert clock.sleeps[:2] == [PLAIN_EVERY, PLAIN_EVERY]
    assert lines[:2] == [
        "progress: 1/10 units, 1 done, 0 failed, 0 held, 0.2/s",
        "progress: 2/10 units, 2 done, 0 failed, 0 held, 0.2/s",
    ]


def test_a_journal_removed_during_a_run_stops_it_and_is_written_back(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """`rm` of the journal (or a cleaner of old files in /tmp) during a run: the run went on
    to its end into a file no one could open again, said 'nothing left to do', and the same
    command then sent every request a second time."""
    srv = fake_service()
    m = write_manifest(
        tmp_path / "m.toml",
        '[[window]]\njob_name = "ods_orders"\nbegin = "2024-11-20T00:00:00"\n'
        'end = "2024-11-22T00:00:00"\nchunk = "15m"\n',
    )  # 192 requests
    j = tmp_path / "j"
    run = [str(m), "--journal", str(j), "--rate", "40", "--no-progress"]
    proc = cli.popen("run", *run, url=srv.url)
    srv.wait_accepted(20)
    j.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert (
        f"stopped: the journal {j} was removed while this run wrote it. Nothing more is sent; "
        f"what it had recorded is written back to {j}: run the same command again to resume."
    ) in stderr
    accepted = srv.accepted_ids()
    assert len(accepted) < 192  # it stopped
    assert j.stat().st_mode & 0o777 == 0o600
    # The same command resumes from what was written back: nothing accepted is sent again.
    again = cli("run", *run[:-3], "--rate", "1000", url=srv.url)
    assert again.returncode in (0, 1), again.stderr
    ids = srv.accepted_ids()
    assert len(ids) == len(set(ids))  # each request accepted once
    assert set(accepted) <= set(ids)
    status = json.loads(cli("status", str(j), "--json", url=srv.url).stdout)
    assert status["pending"] == 0
    assert status["done"] + status["held"] == 192
    assert status["done"] <= len(ids) <= status["done"] + status["held"]


def test_a_run_that_could_not_write_its_journal_is_not_said_to_be_killed(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A full disk (here a limit on the size of a file, `ulimit -f`) stops a run with 'cannot
    write the journal', and its end record cannot be written either: `status` then said
    only that the run 'was killed or crashed'."""
    srv = fake_service()
    m = write_manifest(
        tmp_path / "m.toml",
        '[[window]]\njob_name = "ods_orders"\nbegin = "2024-11-20T00:00:00"\n'
        'end = "2024-11-22T00:00:00"\nchunk = "15m"\n',
    )  # 192 requests: far more than 40 KB of journal holds
    j = tmp_path / "j"
    out = subprocess.run(
        [*BULKRERUN, "run", str(m), "--journal", str(j), "--rate", "1000", "--no-progress"],
        capture_output=True, text=True, env=cli.env(srv.url), cwd=tmp_path, timeout=60,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)),
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert f"stopped: cannot write the journal {j}: File too large." in out.stderr
    status = cli("status", str(j), url=srv.url)
    said = " ".join(status.stdout.split())
    assert "run 1 (started " in said
    assert (
        "recorded no end: it was killed or crashed, or could not write its journal (what it "
        "sent and had no answer for is held; the same command resumes)"
    ) in said


@contextlib.contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """``path`` readable but not writable by this user: mode 0400, or for root, whom modes
    do not stop, the immutable attribute (as a read-only disk refuses, with EPERM)."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"root, and chattr +i does not work here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_journal_that_cannot_be_written_says_what_can_still_be_done(
    cli: Cli, tmp_path: Path
) -> None:
    """A journal on a read-only disk, or another user's: run and verify said only 'cannot
    open the journal J: Permission denied', with nothing of what status and report can
    still do, nor how to go on."""
    from bulkrerun.journal import Binding, Journal

    url = "http://127.0.0.1:9"
    m = write_manifest(tmp_path / "m.toml", INSTANCES)
    j = tmp_path / "j"
    Journal.open(j, Binding(PROJECT, url), tool_version="t").close()
    before = j.read_bytes()
    with _unwritable(j):
        ran = cli("run", str(m), "--journal", "j", url=url)
        verified = cli("verify", "j", url=url)
        status = cli("status", "j", url=url)
    assert (ran.returncode, verified.returncode, status.returncode) == (2, 2, 0), ran.stderr
    why = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    said = (
        f"error: cannot write the journal j ({why}); nothing was sent. `bulkrerun status j` "
        "and `bulkrerun report j` can still read it. To go on from it, make it writable (its "
        "permissions, or the disk's mount), or copy it to a folder you can write and "
    )
    assert ran.stderr.strip().splitlines()[-1] == (
        said + "give run that path as --journal (it resumes from there)."
    )
    assert verified.stderr.strip().splitlines()[-1] == (
        said + "verify that copy (and run with it as --journal from then on)."
    )
    assert j.read_bytes() == before
