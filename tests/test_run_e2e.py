"""``bulkrerun run`` end to end: the CLI as a process against the fake service as a process,
over real sockets. The fake's ledger is the truth about what the service accepted."""

from __future__ import annotations

import contextlib
import csv
import getpass
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkrerun.journal import Binding, Journal, RunInfo
from bulkrerun.manifest import load_manifest
from bulkrerun.outcome import DONE
from bulkrerun.planner import plan
from bulkrerun.settings import normalise_endpoint
from tests.conftest import AK, PROJECT, SK, WORKSPACE, Cli, Service, write_manifest

BOTH_MODES = """
[[window]]
job_name = "ods_orders"
begin = "2024-11-26T08:00:00+08:00"
end   = "2024-11-26T20:00:00+08:00"
chunk = "1h"
concurrent = 8
jobs = [ { job_name = "dwd_orders", workspace_id = "62fbba734e634c5087656fc3ff7adf34" } ]

[[instances]]
job_name = "ods payments/é"
batch = 2
items = [
  { job_id = 917567, plan_time = 1732601580000, submit_time = 1732239754684 },
  { job_id = 917568, plan_time = 1732605180000, submit_time = 1732239754684 },
  { job_id = 917569, plan_time = 1732608780000, submit_time = 1732239754684 },
]
"""


def one_window(job: str, hours: int, chunk: str, *, start: float = 0) -> str:
    """A manifest body: one window of ``job``, ``hours`` long from 2024-11-26T00:00Z
    (``start`` hours later)."""
    begin = 1_732_579_200_000 + round(start * 3_600_000)
    end = begin + hours * 3_600_000
    return f'[[window]]\njob_name = "{job}"\nbegin = {begin}\nend = {end}\nchunk = "{chunk}"\n'


def test_a_stop_is_said_once_on_stderr_and_kept_in_the_log(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # With --log-file (an audited run), the log's record of a stop reached stderr as well,
    # under the line that says it: the operator read every stop twice.
    srv = fake_service("--missing-job", "ods_gone")
    m = write_manifest(
        tmp_path / "m.toml",
        '[[instances]]\njob_name = "ods_gone"\n'
        "items = [ { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 } ]\n"
        + one_window("ods_orders", 2, "1h"),
    )
    log = tmp_path / "run.log"
    out = cli(
        "run", str(m), "--journal", str(tmp_path / "j"), "--canary", "1",
        "--log-file", str(log), url=srv.url,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert out.stderr.count("stopping") == 1, out.stderr
    assert "stopping: canary: the first request failed" in out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (stop,) = [r for r in records if r["event"] == "stopping"]
    assert stop["reason"].startswith("canary: the first request failed")


def end_records(log: Path, journal: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The log's ``run ended`` record and the journal's ``end`` record of a run."""
    (logged,) = [
        r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "run ended"
    ]
    (ended,) = [r for r in map(json.loads, journal.read_text().splitlines()) if r["t"] == "end"]
    return logged, ended


def test_the_log_says_why_a_run_stopped_in_the_journals_words(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # The log's `run ended` said `stopped: null, interrupted: true` after a Ctrl-C, and the
    # fatal stop's message as `stopped`, where the journal's end record has the condition's
    # name in `stopped` and the message in `message`. A review reads both: they agree now.
    srv = fake_service("--latency-ms", "50")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j, log = tmp_path / "j", tmp_path / "run.jsonl"
    proc = cli.popen(
        "run", str(m), "--journal", str(j), "--rate", "10", "--log-file", str(log), url=srv.url
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(srv.ledger()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    logged, ended = end_records(log, j)
    assert (logged["stopped"], logged["exit_code"]) == ("interrupted", 130)
    assert logged["message"].startswith("SIGINT: it stopped sending; the requests ")
    assert (ended["stopped"], ended["message"]) == (logged["stopped"], logged["message"])
    assert "interrupted" not in logged  # said once, as the journal says it
    # A fatal stop: the condition's name, and what was said of it.
    j2, log2 = tmp_path / "j2", tmp_path / "run2.jsonl"
    env = cli.env(srv.url, BULKRERUN_SK="wrong-secret-key-wrong-secret")
    out = cli("run", str(m), "--journal", str(j2), "--log-file", str(log2), env=env)
    assert out.returncode == 3, out.stderr
    logged, ended = end_records(log2, j2)
    assert (logged["stopped"], logged["exit_code"]) == ("auth_refused", 3)
    assert logged["message"].startswith("the service refused our credentials")
    assert (ended["stopped"], ended["message"]) == (logged["stopped"], logged["message"])


def plan_ids(cli: Cli, manifest: Path) -> list[str]:
    out = cli("plan", str(manifest), "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["id"] for line in out.stdout.splitlines()]


def status_of(cli: Cli, journal: Path) -> dict[str, int]:
    out = cli("status", str(journal), "--json")
    assert out.returncode == 0, out.stderr
    parsed: dict[str, int] = json.loads(out.stdout)
    return parsed


def test_both_modes_end_to_end_each_chunk_accepted_once(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "run.journal"
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    ids = plan_ids(cli, m)
    assert len(ids) == 14
    assert Counter(srv.accepted_ids()) == Counter(ids)  # each exactly once
    ledger = srv.ledger()
    assert {e["project_id"] for e in ledger} == {PROJECT}
    assert {e["mode"] for e in ledger} == {"A", "B"}
    assert "ods payments/é" in {e["job_name"] for e in ledger}
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (15, 0, 0, 0)
    assert j.stat().st_mode & 0o777 == 0o600

    again = cli("run", str(m), "--journal", str(j), url=srv.url)
    assert again.returncode == 0, again.stderr
    assert "15 units done" in again.stderr
    assert len(srv.ledger()) == 14  # nothing sent again


def test_refusals_are_failed_with_code_and_request_id(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--missing-job", "ods_gone")
    m = write_manifest(
        tmp_path / "m.toml",
        BOTH_MODES
        + """
[[instances]]
job_name = "ods_gone"
items = [ { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 } ]
""",
    )
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 1, out.stderr
    assert "DLF.1000" in out.stderr
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"]) == (15, 1, 0)
    rows = cli("report", str(j), "--format", "json").stdout
    failed = [r for r in map(json.loads, rows.splitlines()) if r.get("state") == "failed"]
    assert len(failed) == 1
    assert failed[0]["error_code"] == "DLF.1000"
    assert failed[0]["request_id"]
    csv = cli("report", str(j), "--format", "csv").stdout
    assert "DLF.1000" in csv and failed[0]["request_id"] in csv
    # the run's own closing summary names the code, the request id and the message
    assert f"failed DLF.1000: 1 (e.g. request id {failed[0]['request_id']}" in out.stderr
    assert "Failed to find the job." in out.stderr

    # --retry-failed sends the refused one again (and only it)
    before = len(srv.ledger())
    again = cli("run", str(m), "--journal", str(j), "--retry-failed", url=srv.url)
    assert again.returncode == 1
    assert len(srv.ledger()) == before


def test_bad_manifest_exit_2_and_nothing_sent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(
        tmp_path / "bad.toml",
        BOTH_MODES.replace("concurrent = 8", "concurrent = 300").replace("batch = 2", "batchh = 2"),
    )
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), url=srv.url)
    assert out.returncode == 2
    assert "window[0].concurrent" in out.stderr and "1..128" in out.stderr
    assert "batchh" in out.stderr  # every problem at once
    assert srv.ledger() == []
    assert not (tmp_path / "j").exists()


def test_refused_credentials_abort_exit_3_then_same_command_works(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    body = """
[[window]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732579200000 + 0
chunk = "1m"
"""
    m = write_manifest(
        tmp_path / "m.toml",
        body.replace("end = 1732579200000 + 0", "end = 1732582800000"),  # 60 chunks
    )
    j = tmp_path / "j"
    env = cli.env(srv.url, BULKRERUN_SK="wrong-secret-key-wrong-secret")
    out = cli("run", str(m), "--journal", str(j), "--rate", "1000", env=env)
    assert out.returncode == 3, out.stderr
    assert "APIG.0301" in out.stderr
    assert "wrong-secret-key" not in out.stderr + out.stdout
    # The gateway echoes its canonical request over many lines: the stop is one line still.
    (stop,) = [line for line in out.stderr.splitlines() if line.startswith("stopped:")]
    assert "canonicalRequest: POST\\n/v2/" in stop
    assert stop.endswith("run the same command again.")
    assert "once that is fixed, resume with:\n  bulkrerun run " in out.stderr
    assert srv.ledger() == []
    # The run's only step would send what is not yet sent with its resume command: printed
    # once, below the stop, which says what to fix first ("every step below" leads none).
    assert "next:" not in out.stderr.splitlines()
    assert "Fix the credentials (BULKRERUN_AK/BULKRERUN_SK" in stop
    # status prints no resume command: every step would meet the same refusal, and the
    # first says to fix the credentials.
    first = "first fix what the service refused, or every step below is refused the same way"
    s = status_of(cli, j)
    assert "BULKRERUN_AK/BULKRERUN_SK or BULKRERUN_TOKEN" in s["next_steps"][0]  # type: ignore[index]
    assert s["done"] == 0 and s["held"] == 0 and s["pending"] == 60
    assert s["next_steps"][0].startswith(first)  # type: ignore[index]
    assert "send the 60 units not yet sent" in s["next_steps"][1]  # type: ignore[index]
    good = cli("run", str(m), "--journal", str(j), "--rate", "1000", url=srv.url)
    assert good.returncode == 0, good.stderr
    assert len(srv.ledger()) == 60


def test_credentials_revoked_mid_run_lose_and_repeat_nothing_once_fixed(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The key is disabled after 20 accepted requests, while others are in flight: those
    in flight were accepted and are held (cut off by the grace), the refused ones pending.
    With the credentials fixed (the same service again), the same command sends the rest:
    against the ledger, nothing is lost and nothing sent twice."""
    srv = fake_service("--revoke-after", "20", "--latency-ms", "3000")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j = tmp_path / "j"
    run = ("run", str(m), "--journal", str(j), "--rate", "1000", "--max-inflight", "16")
    out = cli(*run, "--grace", "0.5", url=srv.url)
    assert out.returncode == 3, out.stderr
    assert "401 APIG.0301" in out.stderr
    accepted = Counter(srv.accepted_ids())
    assert sum(accepted.values()) == len(accepted) == 20
    rows = [json.loads(r) for r in cli("report", str(j), "--format", "json").stdout.splitlines()]
    by_state: dict[str, set[str]] = {}
    for row in rows:
        by_state.setdefault(row["state"], set()).add(row["chunk"])
    # Accepted is exactly what the journal has done or held: a held one may have run.
    assert by_state["done"] | by_state.get("held", set()) == set(accepted)
    assert by_state.get("held"), "the grace should have cut off requests in flight"
    s = status_of(cli, j)
    assert (s["done"], s["held"], s["pending"]) == (
        len(by_state["done"]),
        len(by_state["held"]),
        60 - 20,
    )
    assert s["last_run"]["stopped"] == "auth_refused"  # type: ignore[index]

    # The credentials fixed: the same service, on the same endpoint and ledger.
    port = srv.url.rsplit(":", 1)[1]
    srv.proc.terminate()
    srv.proc.wait(10)
    fixed = fake_service("--port", port, "--ledger", str(srv.ledger_path))
    again = cli(*run, url=fixed.url)
    assert again.returncode == 1, again.stderr  # the held ones stay held
    accepted = Counter(srv.accepted_ids())  # the one ledger, both services' lines
    assert set(accepted) == set(plan_ids(cli, m))
    assert max(accepted.values()) == 1
    s = status_of(cli, j)
    held = len(by_state["held"])
    assert (s["done"], s["held"], s["pending"]) == (60 - held, held, 0)


def test_a_signature_refused_for_the_clock_says_to_set_the_clock(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The gateway refuses AK/SK signatures dated more than 15 minutes from its time: the
    stop says the clock is off and by how much (from the answer's Date), not to change keys
    that are right."""
    srv = fake_service("--clock-skew", "-1200")  # this machine 20 minutes ahead
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "10m"))
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), url=srv.url)
    assert out.returncode == 3, out.stderr
    (stop,) = [line for line in out.stderr.splitlines() if line.startswith("stopped:")]
    assert "this machine's clock is about 20 minutes ahead of the service's" in stop
    assert stop.endswith("Set this machine's clock right (NTP), then run the same command again.")
    assert "Fix the credentials" not in stop
    assert srv.ledger() == []
    s = status_of(cli, j)
    assert s["pending"] == 6
    assert "fix what the service refused" in s["next_steps"][0]  # type: ignore[index]
    assert "this machine's clock" in s["next_steps"][0]  # type: ignore[index]


def test_a_job_the_user_may_not_rerun_stops_the_run_naming_it(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A 403 for one job: the run stops (every request of it would be refused) and says
    which job and workspace, and that it is a permission; the other job's requests stand.
    Without that job in the manifest, the same command finishes the rest."""
    srv = fake_service("--deny-job", "secret_job")
    both = one_window("ods_orders", 2, "10m") + one_window("secret_job", 2, "10m")
    m = write_manifest(tmp_path / "m.toml", both)
    j = tmp_path / "j"
    run = ("run", str(m), "--journal", str(j), "--max-inflight", "4")
    out = cli(*run, url=srv.url)
    assert out.returncode == 3, out.stderr
    (stop,) = [line for line in out.stderr.splitlines() if line.startswith("stopped:")]
    assert f"refused permission for job secret_job in workspace {WORKSPACE} (403 DLF.0003" in stop
    assert "Fix the credentials" not in stop
    jobs = {e["job_name"] for e in srv.ledger()}
    assert jobs <= {"ods_orders"}
    s = status_of(cli, j)
    assert s["done"] == len(srv.ledger()) and s["held"] == 0
    assert "the user's permissions" in s["next_steps"][0]  # type: ignore[index]

    m.write_text(m.read_text().split('[[window]]\njob_name = "secret_job"')[0])
    again = cli(*run, url=srv.url)
    assert again.returncode == 0, again.stderr
    assert Counter(srv.accepted_ids()) == Counter(plan_ids(cli, m))


def test_journal_of_another_project_or_endpoint_is_refused(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url).returncode == 0
    other = cli.env(srv.url, BULKRERUN_PROJECT_ID="another-project")
    out = cli("run", str(m), "--journal", str(j), env=other)
    assert out.returncode == 2
    assert "another-project" in out.stderr or "project" in out.stderr
    spelled = srv.url.replace("127.0.0.1", "localhost")
    out = cli("run", str(m), "--journal", str(j), env=cli.env(spelled))
    assert out.returncode == 2


def test_dropped_after_accept_is_held_and_never_resent_without_flag(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--drop-after-accept", "0.3", "--seed", "3")
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", "--timeout", "5", url=srv.url)
    assert out.returncode == 1, out.stderr
    ledger = srv.ledger()
    dropped = [e["chunk_id"] for e in ledger if e["dropped"]]
    assert dropped, "the seed should drop some"
    assert Counter(e["chunk_id"] for e in ledger) == Counter(plan_ids(cli, m))
    s = status_of(cli, j)
    assert s["held"] >= len(dropped) and s["pending"] == 0

    again = cli("run", str(m), "--journal", str(j), url=srv.url)
    assert again.returncode == 1
    assert "held" in again.stderr and "--resend-held" in again.stderr
    assert len(srv.ledger()) == len(ledger)  # held are not resent

    resend = cli("run", str(m), "--journal", str(j), "--resend-held", url=srv.url)
    extra = srv.ledger()[len(ledger) :]
    held_units = s["held"]
    assert extra and len(extra) <= held_units
    assert {e["chunk_id"] for e in extra} <= {e["chunk_id"] for e in ledger if e["dropped"]} | {
        e["chunk_id"] for e in extra
    }
    assert "may run twice" in resend.stderr
    # What a review needs: every send of a request whose outcome is unknown is counted, and
    # here each was accepted (dropped after acceptance), so the ledger agrees row by row.
    accepted = Counter(srv.accepted_ids())
    report = cli("report", str(j), "--format", "json")
    for row in map(json.loads, report.stdout.splitlines()):
        if row["state"] == "done":
            assert accepted[row["chunk"]] == row["unknown_sends"] + 1, row
        elif row["state"] == "held":
            assert accepted[row["chunk"]] == row["unknown_sends"], row
    rows = [json.loads(line) for line in report.stdout.splitlines()]
    twice = [row for row in rows if row["state"] == "done" and row["unknown_sends"]]
    assert twice  # accepted twice by the fake: each may have run twice, and the report says so
    assert status_of(cli, j)["accepted_after_unknown"] == len(twice)
    said = cli("status", str(j)).stdout
    assert f"{len(twice)} request{'s' if len(twice) > 1 else ''} accepted after an" in said


def test_a_refused_resend_of_held_units_leaves_them_held_and_says_why(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The first sends were accepted, their answers lost: held. The resends are refused
    (the job is gone meanwhile). A refusal says the resend was not acted on, not that the
    first send was not: the units stay held, and --retry-failed is not offered as safe."""
    first = fake_service("--drop-after-accept", "1.0")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 3, "1h"))
    j = tmp_path / "j"
    args = ("run", str(m), "--journal", str(j), "--rate", "100", "--timeout", "5")
    assert cli(*args, url=first.url).returncode == 1
    assert len(first.ledger()) == 3 and status_of(cli, j)["held"] == 3
    first.proc.terminate()
    first.proc.wait(10)
    port = first.url.rsplit(":", 1)[1]
    gone = fake_service("--port", port, "--missing-job", "ods_orders")
    assert gone.url == first.url  # the journal is bound to the endpoint
    resend = cli(*args, "--resend-held", url=gone.url)
    assert resend.returncode == 1, resend.stderr
    assert gone.ledger() == []  # refused, none accepted
    assert "resend refused DLF.1000: 3 requests" in resend.stderr
    assert "their units stay held" in resend.stderr
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (0, 0, 3, 0)
    assert not any("--retry-failed" in step for step in s["next_steps"])
    assert any("bulkrerun verify" in step for step in s["next_steps"])
    closing = resend.stderr[resend.stderr.index("this run") :]
    assert "not yet sent" not in closing.split("next:")[1]  # nothing counted twice
    assert "of those held, 3 units held before are held again" in closing


def test_status_steps_carry_the_flags_the_last_run_was_given(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """Pasted as printed, with nothing in the environment naming the endpoint, a step reaches
    the same service at the same pace as the run did (not the default rate)."""
    srv = fake_service("--drop-after-accept", "1.0")
    days_ago = (time.time() - 1_732_579_200) / 3600 - 48  # within the month verify can query
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 3, "1h", start=days_ago))
    j = tmp_path / "j"
    flags = ["--endpoint", srv.url, "--rate", "7", "--timeout", "5"]
    assert cli("run", str(m), "--journal", str(j), *flags, "--no-progress").returncode == 1
    steps = status_of(cli, j)["next_steps"]
    commands = [shlex.split(step.split(": ", 1)[1]) for step in steps]
    assert ["bulkrerun", "verify", str(j), "--endpoint", srv.url, "--rate", "7"] in commands
    resend = ["bulkrerun", "run", str(m), "--journal", str(j), *flags, "--no-progress"]
    assert [*resend, "--resend-held"] in commands
    verify = next(c for c in commands if c[1] == "verify")
    out = cli(*verify[1:])  # BULKRERUN_ENDPOINT unset: the flag reaches the fake
    # The fake's catalog has no instances for a window (the fake lists; it decides nothing).
    assert "3 stay held (no instances in window: 3" in out.stdout, out.stdout + out.stderr


# SIGHUP: the terminal went away (an ssh session dropped). By default it killed the run
# (129) mid-request, leaving units held that were never sent.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_stops_cleanly_exit_130_and_resume_completes(
    cli: Cli, fake_service: type[Service], tmp_path: Path, sig: signal.Signals
) -> None:
    srv = fake_service("--latency-ms", "50")
    m = write_manifest(
        tmp_path / "m.toml",
        """
[[window]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732600800000
chunk = "1m"
""",
    )  # 360 chunks at 20/s: 18 s; interrupted after ~1 s
    # Brackets in the name (rich would take "[prod]" for a style tag) and the endpoint and
    # project given as flags only: the printed command must carry both to resume.
    j = tmp_path / "j[prod]"
    flags = ["--endpoint", srv.url, "--project-id", PROJECT]
    env = {k: v for k, v in cli.env().items() if k != "BULKRERUN_PROJECT_ID"}
    run = ["run", str(m), "--journal", str(j), "--rate", "20", "--retry-failed", *flags]
    proc = cli.popen(*run, env=env)
    srv.wait_accepted(10)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"stopping: {sig.name}: finishing requests in flight" in stderr
    printed = stderr.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    resume = shlex.split(printed)
    assert resume == ["bulkrerun", "run", str(m), "--journal", str(j), *flags, "--rate", "20"]
    assert "(without --retry-failed: add it again only after" in stderr  # a one-shot decision
    sent = len(srv.ledger())
    assert 10 <= sent < 360
    s = status_of(cli, j)
    # Every unit the journal calls done was accepted; one accepted and not done is held.
    assert s["done"] <= sent <= s["done"] + s["held"]
    # The journal says how the run ended, and status repeats it.
    last: Any = s["last_run"]
    assert (last["n"], last["stopped"], last["exit_code"]) == (1, "interrupted", 130)
    assert last["message"].startswith(f"{sig.name}: it stopped sending; the requests ")
    said = " ".join(cli("status", str(j)).stdout.split())
    assert f"run 1 (started {last['started']}) was interrupted {last['ended']} ({sig.name}:" in said
    out = cli(*resume[1:], "--rate", "200", env=env)  # the last --rate wins: a faster finish
    assert out.returncode in (0, 1), out.stderr
    assert f"journal {j}: {s['done']:,} units done" in out.stderr  # resumed, not started anew
    last = status_of(cli, j)["last_run"]
    assert (last["n"], last["stopped"], last["exit_code"]) == (2, None, out.returncode)
    final = status_of(cli, j)
    assert final["pending"] == 0 and final["done"] + final["held"] == 360
    counts = Counter(srv.accepted_ids())
    assert final["done"] <= len(counts) <= final["done"] + final["held"]
    assert max(counts.values()) == 1  # nothing accepted twice


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_start_up_exits_130_and_prints_the_command(
    cli: Cli, fake_service: type[Service], tmp_path: Path, sig: signal.Signals
) -> None:
    # The selection query waits 8 s for its answer: the signal lands in the run's start-up,
    # before the engine (and its own signal handling) exists.
    srv = fake_service("--latency-ms", "8000")
    now = int(time.time() * 1000)
    m = write_manifest(
        tmp_path / "m.toml",
        f'[[select]]\njob_name = "ods_orders"\nbegin = {now - 7_200_000}\nend = {now}\n',
    )
    j = tmp_path / "j"
    proc = cli.popen("run", str(m), "--journal", str(j), "--resend-held", url=srv.url)
    # Once the query is out, not after a fixed time: on a loaded machine the imports alone
    # took over 2 s, and a signal inside them is another case (see the note in cli.main).
    port = int(srv.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 60
    while not _connected_to(port) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert _connected_to(port), "the run did not send its query"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    # Nothing was sent by this run: the same command, one-shot flags included, resumes.
    assert f"bulkrerun run {m} --journal {j} --resend-held" in stderr
    assert srv.ledger() == []


# Signals where Python cannot raise one: each script below sends the command a SIGINT from a
# hook run at a set point of its start-up, then runs it as the console script does.
_SIGNAL_AT = {
    # During the CLI's imports (typer's), before any of its own code ran.
    "import": """
def hook():
    os.kill(os.getpid(), signal.SIGINT)
""",
    # Inside a __del__: Python prints the KeyboardInterrupt and drops it.
    "__del__": """
class Dropped:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs here
            pass
def hook():
    Dropped()
""",
    # Inside a class being made: the KeyboardInterrupt comes out as a RuntimeError.
    "__set_name__": """
class Named:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass
def hook():
    class Made:
        field = Named()
""",
}
_SIGNAL_SCRIPT = """
import os, signal, sys
{hook}
{at}
sys.argv = ["bulkrerun", *{argv!r}]
from bulkrerun.__main__ import main
main()
"""
# When the hook runs: as a module is first imported, or once the run has recorded itself
# (past the check before it records anything), the moment before the engine starts.
_SIGNAL_WHEN = """
class Finder:
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            hook()
        return None
sys.meta_path.insert(0, Finder())
"""
_SIGNAL_AFTER_BEGIN_RUN = """
from bulkrerun.journal import Journal
begin_run = Journal.begin_run
def begun(self, *args, **kwargs):
    begin_run(self, *args, **kwargs)
    hook()
Journal.begin_run = begun
"""


@pytest.mark.parametrize(
    ("where", "module"),
    [
        ("import", "typer"),
        ("__del__", "bulkrerun.engine"),
        ("__set_name__", "bulkrerun.engine"),
        ("__del__", None),  # after the run recorded itself
    ],
)
def test_a_signal_where_python_cannot_raise_it_still_stops_the_command_with_130(
    cli: Cli, fake_service: type[Service], tmp_path: Path, where: str, module: str | None
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "10m"))
    j = tmp_path / "j"
    argv = ["run", str(m), "--journal", str(j)]
    at = _SIGNAL_WHEN.format(module=module) if module else _SIGNAL_AFTER_BEGIN_RUN
    script = _SIGNAL_SCRIPT.format(hook=_SIGNAL_AT[where], at=at, argv=argv)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=cli.env(srv.url),
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr
    assert f"bulkrerun run {m} --journal {j}" in out.stderr
    assert srv.ledger() == []


def _connected_to(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is established (Linux's table)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        # local address, remote address (hex ip:port), state (01: established)
        if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":
            return True
    return False


def test_a_service_that_never_answers_in_time_stops_the_run(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # Accepted, then answered after 2 s; the client gives up after 0.3 s: every unit sent is
    # held (its rerun did start). With 2 in flight the run stops after 2 + 3 in a row.
    srv = fake_service("--latency-ms", "2000")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j = tmp_path / "j"
    run = ["run", str(m), "--journal", str(j), "--timeout", "0.3", "--max-inflight", "2"]
    out = cli(*run, "--rate", "100", url=srv.url)
    assert out.returncode == 3, out.stderr
    assert "the service does not answer: 5 requests in a row" in out.stderr
    s = status_of(cli, j)
    assert s["done"] == 0 and s["failed"] == 0
    assert 5 <= s["held"] < 60 and s["held"] + s["pending"] == 60
    assert len(srv.ledger()) == s["held"]  # what is held was in fact accepted
    # The resume command repeats the --timeout given, under which the run stopped: said so,
    # with what to do, or pasted it loops. (Its own stop message names BULKRERUN_TIMEOUT.)
    resume = out.stderr.split("resume with:\n", 1)[1].splitlines()
    assert "--timeout 0.3" in resume[0]
    # The first next step, of run's and of status's, says what keeping it means, once.
    kept = (
        "each run command below keeps --timeout 0.3, within which the service did not "
        "answer: if the service is only slow, give it longer (30 s when not set), or the run "
        "stops the same way"
    )
    assert s["next_steps"][0] == kept
    assert out.stderr.count("keeps --timeout 0.3") == 1, out.stderr
    assert all("--timeout 0.3" in step for step in s["next_steps"] if "bulkrerun run " in step)
    env = cli.env(srv.url, BULKRERUN_TIMEOUT="0.3")
    out = cli(*run[:3], str(tmp_path / "j2"), "--max-inflight", "2", "--rate", "100", env=env)
    assert out.returncode == 3, out.stderr
    assert "BULKRERUN_TIMEOUT" in out.stderr and "keeps --timeout" not in out.stderr
    assert not any(
        "keeps --timeout" in step for step in status_of(cli, tmp_path / "j2")["next_steps"]
    )


def test_a_journal_of_other_units_is_resumed_not_new(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    first = write_manifest(tmp_path / "a.toml", one_window("ods_orders", 2, "1h"))
    other = write_manifest(tmp_path / "b.toml", one_window("ods_users", 2, "1h"))
    j = tmp_path / "j"
    assert cli("run", str(first), "--journal", str(j), url=srv.url).returncode == 0
    out = cli("run", str(other), "--journal", str(j), url=srv.url)
    assert out.returncode == 0, out.stderr
    # None of b's units is in the journal, but the journal is not new: it says so, and that
    # what it holds done is a's, not lost.
    assert (
        f"journal {j}: 0 units done, 0 failed, 0 held, 2 new (and 2 done units this manifest "
        f"does not plan); sending 2 to project {PROJECT} at {srv.url}." in out.stderr
    )
    assert "new journal" not in out.stderr


def test_a_wrong_endpoint_stops_the_run_at_its_first_answer(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A 404 "no such API" says the endpoint is wrong, not the request: the run stops (exit 3)
    instead of sending every other request into the same answer, and leaves them pending."""
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 60, "1h"))
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), "--max-inflight", "2", url=srv.url + "/x")
    assert out.returncode == 3, out.stderr
    assert "stopped: the endpoint looks wrong: the answer was 404 APIG.0101" in out.stderr
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (0, 0, 0, 60)
    assert 1 <= s["requests"] <= 2  # the one answered, and the other in flight with it
    steps = s["next_steps"]
    assert len(steps) == 1, steps
    assert "refused with APIG.0101 (no such API): the endpoint" in steps[0]
    assert "start again with a new --journal" in steps[0]


def test_secrets_never_written_anywhere(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    log = tmp_path / "log.jsonl"
    token = "TEMPORARY-SECURITY-TOKEN-abcdef0123456789"
    env = cli.env(srv.url, BULKRERUN_SECURITY_TOKEN=token)
    out = cli(
        "run", str(m), "--journal", str(j), "-v", "--log-file", str(log), "--rate", "100", env=env
    )
    # the fake knows no token for this AK pair: refused with the canonical request echoed
    texts = [out.stdout, out.stderr, j.read_text(), log.read_text()]
    for fmt in ("table", "csv", "json"):
        texts.append(cli("report", str(j), "--format", fmt).stdout)
    texts.append(cli("status", str(j)).stdout)
    for text in texts:
        assert SK not in text
        assert token not in text
        assert "Authorization" not in text


@pytest.mark.parametrize("variable", ["BULKRERUN_SECURITY_TOKEN", "BULKRERUN_TOKEN"])
def test_no_part_of_a_long_token_echoed_cut_short_is_written_anywhere(
    cli: Cli, fake_service: type[Service], tmp_path: Path, variable: str
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    log = tmp_path / "log.jsonl"
    # Longer than a server reads of one header: it refuses the request with what it read.
    token = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=9000))
    env = cli.env(srv.url, **{variable: token})
    if variable == "BULKRERUN_TOKEN":
        del env["BULKRERUN_AK"], env["BULKRERUN_SK"]
    out = cli(
        "run", str(m), "--journal", str(j), "-v", "--log-file", str(log), "--rate", "100", env=env
    )
    texts = [out.stdout, out.stderr, j.read_text(), log.read_text()]
    for fmt in ("table", "csv", "json"):
        texts.append(cli("report", str(j), "--format", fmt).stdout)
    texts.append(cli("status", str(j)).stdout)
    assert "Got more than 8190 bytes" in texts[2]  # the echo, cut short, was there to leak
    windows = {token[k : k + 8] for k in range(len(token) - 7)}
    for text in texts:
        leaked = [text[k : k + 8] for k in range(len(text) - 7) if text[k : k + 8] in windows]
        assert not leaked, leaked[:3]


def test_log_file_has_a_line_per_settled_chunk(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    log = tmp_path / "chunks.jsonl"  # --log-file alone: per-chunk lines, none on stderr
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), "--log-file", str(log), url=srv.url)
    assert out.returncode == 0, out.stderr
    assert "chunk settled" not in out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    settled = [r for r in records if r["event"] == "chunk settled"]
    assert Counter(r["chunk"] for r in settled) == Counter(plan_ids(cli, m))
    assert {r["state"] for r in settled} == {"done"}
    assert {r["request_id"] for r in settled} == {e["request_id"] for e in srv.ledger()}


def test_plan_json_has_no_auth_headers_and_exact_paths(cli: Cli, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    out = cli("plan", str(m), "--json")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert all(set(r) == {"id", "method", "path", "headers", "body"} for r in lines)
    assert all(r["method"] == "POST" for r in lines)
    assert lines[-1]["path"] == (
        f"/v2/{PROJECT}/factory/jobs/ods%20payments%2F%C3%A9/instances/retry"
    )
    assert lines[0]["headers"]["workspace"] == WORKSPACE
    for r in lines:
        assert not {"Authorization", "X-Auth-Token", "X-Security-Token"} & set(r["headers"])
    no_project = cli(
        "plan", str(m), "--json", env={k: v for k, v in cli.env().items() if "PROJECT" not in k}
    )
    assert no_project.returncode == 0, no_project.stderr
    assert "/v2/{project_id}/factory/" in no_project.stdout
    ids = [json.loads(x)["id"] for x in no_project.stdout.splitlines()]
    assert ids == [r["id"] for r in lines]


@pytest.mark.parametrize(
    "cmd", ["plan", "run", "status", "report", "verify", "fake-server", "demo"]
)
def test_help_teaches(cli: Cli, cmd: str) -> None:
    out = cli(cmd, "--help")
    assert out.returncode == 0
    assert "--verbose" in out.stdout and "--log-file" in out.stdout
    assert AK not in out.stdout and SK not in out.stdout


def test_unreachable_endpoint_stops_with_exit_3_and_nothing_lost(cli: Cli, tmp_path: Path) -> None:
    import socket

    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    # A port bound and not listening: connections are refused, and no other process can
    # take it meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=url)
    assert out.returncode == 3, out.stderr
    assert "could not reach the service" in out.stderr
    flat = " ".join(out.stderr.split())
    assert "If the endpoint itself was wrong, the journal is bound to it" in flat
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (0, 0, 0, 15)


NO_HELPER = """
import subprocess

_popen = subprocess.Popen


def popen(args, *rest, **kwargs):
    if "-I" in args and "-S" in args:  # the journal's sync helper, and nothing else
        raise BlockingIOError(11, "Resource temporarily unavailable")
    return _popen(args, *rest, **kwargs)


subprocess.Popen = popen
"""


def test_a_run_whose_sync_helper_cannot_start_completes_and_says_so(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    site = tmp_path / "no-helper"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_HELPER, encoding="utf-8")
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "run.journal"
    env = cli.env(srv.url, PYTHONPATH=str(site))
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", env=env)
    assert out.returncode == 0, out.stderr
    assert "sync helper process could not start (Resource temporarily unavailable)" in (
        " ".join(out.stderr.split())
    )
    assert Counter(srv.accepted_ids()) == Counter(plan_ids(cli, m))  # each exactly once
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (15, 0, 0, 0)


def test_a_run_refused_before_recording_anything_leaves_no_journal(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # The selection is refused (further back than the list API reaches): exit 2, nothing
    # sent. A journal left behind would bind the path to this endpoint, and the same
    # command against another one would then be refused too.
    wrong, right = fake_service(), fake_service()
    now, day = int(time.time() * 1000), 86_400_000

    def days_back(begin: int, end: int) -> Path:
        select = f'job_name = "ods_orders"\nbegin = {now - begin * day}\nend = {now - end * day}\n'
        return write_manifest(tmp_path / "m.toml", f"[[select]]\n{select}")

    j = tmp_path / "j"
    out = cli("run", str(days_back(40, 39)), "--journal", str(j), url=wrong.url)
    assert out.returncode == 2, out.stderr
    assert "DLF.0104" in out.stderr
    assert not j.exists()
    out = cli("run", str(days_back(1, 0)), "--journal", str(j), url=right.url)
    assert out.returncode == 0, out.stderr
    assert status_of(cli, j)["endpoint"] == right.url
    assert wrong.ledger() == []


def test_held_units_verify_held_cannot_decide_are_explained_not_sent_to_verify_again(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # Every connection drops after acceptance: both requests are held. Their instances
    # (2024) are further back than the instance list reaches, so verification cannot say.
    srv = fake_service("--drop-after-accept", "1")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "1h"))
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 1, out.stderr
    assert status_of(cli, j)["held"] == 2
    out = cli("run", str(m), "--journal", str(j), "--verify-held", url=srv.url)
    assert out.returncode == 1, out.stderr
    err = " ".join(out.stderr.split())
    assert "2 stay held (instance list unavailable: 2, e.g. instance list of job ods_orders" in err
    assert "DLF.0104" in err
    assert "2 held units are not sent: the service may have acted on them. --verify-held " in err
    assert "could not decide them (see above), or add --resend-held" in err
    assert "Check with --verify-held" not in err
    assert len(srv.ledger()) == 2  # nothing sent again
    # The verification is on record as one of its own, with the run's flags, before the
    # run's record: who decided (here: could not decide) the held units, and how it ended.
    records = [json.loads(line) for line in j.read_text().splitlines()]
    kinds = [r["t"] for r in records if r["t"] in ("run", "verify_start", "verify_end")]
    assert kinds == ["run", "verify_start", "verify_end", "run"]
    start = next(r for r in records if r["t"] == "verify_start")
    end = next(r for r in records if r["t"] == "verify_end")
    assert start["held"] == 2
    assert ["--verify-held", None] in start["options"]["flags"]
    assert (end["exit"], end["stopped"], end["still_held"]) == (1, None, 2)
    assert status_of(cli, j)["last_verify"]["n"] == 1


def overlap_warnings(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "done requests already covered" in line or "done request already covered" in line
    ]


def overlap_explanations(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "That happens when" in line]


def six_hours_done(cli: Cli, srv: Service, tmp_path: Path) -> tuple[Path, Path]:
    """A manifest of 6 hours of ods_orders in 1h chunks, and a journal where all are done."""
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 6, "1h"))
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url).returncode == 0
    return m, j


def test_a_rechunked_window_is_sent_after_a_warning_that_names_the_entry_and_counts(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m, j = six_hours_done(cli, srv, tmp_path)
    m.write_text(m.read_text().replace('chunk = "1h"', 'chunk = "2h"'), encoding="utf-8")
    log = tmp_path / "log.jsonl"
    run = ["run", str(m), "--journal", str(j), "--rate", "100", "--log-file", str(log)]
    out = cli(*run, url=srv.url)

    assert out.returncode == 0, out.stderr
    assert overlap_warnings(out.stderr) == [
        "warning: window[0] (job ods_orders): 3 requests this run sends re-cover times that "
        "6 done requests already covered (2024-11-26 08:00:00.000+08:00 .. 2024-11-26 "
        "13:59:59.999+08:00): their instances will run again."
    ]
    assert overlap_explanations(out.stderr) == [
        "  That happens when an entry's chunk, begin (other than by whole chunks), jobs or a "
        "body field changed since an earlier run, when another entry (or its jobs) covered "
        "the job there, or when --retry-failed or --resend-held sends again requests whose "
        "times were done since. To avoid it, send what the earlier run sent, or narrow the "
        "window to what is not done; to rerun a job added to an entry's jobs over times "
        "already done, take it out of jobs again and give it a [[window]] entry of its own."
    ]
    # Said before anything was sent (the resume line comes next), and sent all the same:
    # resume decides per chunk.
    assert out.stderr.index("already covered (") < out.stderr.index("units done")
    assert len(srv.ledger()) == 6 + 3
    logged = [r for r in map(json.loads, log.read_text().splitlines()) if r["level"] == "warning"]
    assert [(r["event"], r["entry"], r["requests"], r["done_requests"]) for r in logged] == [
        ("new window chunks re-cover done ones", "window[0]", 3, 6)
    ]


JOBS_LINE = f'jobs = [ {{ job_name = "dwd_orders", workspace_id = "{WORKSPACE}" }} ]\n'
ADDED_JOB = f'{{ job_name = "dws_sales_hourly", workspace_id = "{WORKSPACE}" }}'


def test_a_job_added_to_jobs_warns_once_how_to_rerun_it_alone_and_that_way_sends_only_it(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # A backfill of ods_orders and its downstream dwd_orders is done; the next operator
    # adds another downstream job. In jobs, it gives every request a new body: the done
    # times of ods_orders and dwd_orders run again, which each job's warning says, and the
    # advice that follows them, once, says how to rerun the added job alone.
    srv = fake_service()
    body = one_window("ods_orders", 6, "1h") + JOBS_LINE
    m = write_manifest(tmp_path / "m.toml", body)
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url).returncode == 0
    j_own = tmp_path / "j-own"
    j_own.write_bytes(j.read_bytes())

    added = body.replace(" ]\n", f", {ADDED_JOB} ]\n")
    in_jobs = write_manifest(tmp_path / "in-jobs.toml", added)
    out = cli("run", str(in_jobs), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    warned = overlap_warnings(out.stderr)
    assert [w.split(": 6 requests")[0] for w in warned] == [
        "warning: window[0] (job ods_orders)",
        "warning: window[0] (job dwd_orders)",
    ]
    explained = overlap_explanations(out.stderr)
    assert len(explained) == 1
    assert "give it a [[window]] entry of its own" in explained[0]
    # The journal's 6 done requests are not this manifest's: said, not counted as lost.
    assert (
        "0 units done, 0 failed, 0 held, 6 new (and 6 done units this manifest does not "
        "plan); sending 6 to project "
    ) in out.stderr
    assert len(srv.ledger()) == 6 + 6

    # As the advice says: the entry as it was, and the added job in a window of its own.
    own = body + one_window("dws_sales_hourly", 6, "1h")
    own_entry = write_manifest(tmp_path / "own-entry.toml", own)
    out = cli("run", str(own_entry), "--journal", str(j_own), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert overlap_warnings(out.stderr) == []
    assert "6 units done, 0 failed, 0 held, 6 new; sending 6 to project " in out.stderr
    sent = srv.ledger()[12:]
    assert {e["job_name"] for e in sent} == {"dws_sales_hourly"} and len(sent) == 6


def test_a_window_extended_back_by_whole_chunks_sends_only_the_new_times(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # The next operator extends a done backfill by its begin: the cuts stay where they were
    # (begin + k*chunk), so the done requests keep their ids and only the new times are
    # sent, without a warning.
    srv = fake_service()
    _, j = six_hours_done(cli, srv, tmp_path)
    longer = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 9, "1h", start=-3))
    out = cli("run", str(longer), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert overlap_warnings(out.stderr) == []
    assert "6 units done, 0 failed, 0 held, 3 new; sending 3 to project " in out.stderr
    hour = 3_600_000
    assert sorted(e["body"]["begin_time"] for e in srv.ledger()[6:]) == [
        1_732_579_200_000 - k * hour for k in (3, 2, 1)
    ]


def half_done_journal(journal: Path, manifest: Path, url: str) -> None:
    """The journal a run of ``manifest`` leaves when killed after its first half of the
    chunks was done (the second half never sent)."""
    chunks = list(plan(load_manifest(manifest)))

    async def write() -> None:
        binding = Binding(PROJECT, normalise_endpoint(url))
        with Journal.open(journal, binding, tool_version="test") as j:
            j.begin_run(RunInfo.from_manifest(manifest))
            for chunk in chunks[: len(chunks) // 2]:
                await j.intend(chunk, 1, time.time())
                j.outcome(chunk, 1, DONE, time.time(), "done")

    anyio.run(write)


def test_an_unedited_resume_after_an_interruption_does_not_warn(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 6, "1h"))
    j = tmp_path / "j"
    half_done_journal(j, m, srv.url)
    edited = tmp_path / "edited.toml"
    edited.write_text(m.read_text().replace('chunk = "1h"', 'chunk = "2h"'), encoding="utf-8")
    j_edited = tmp_path / "j-edited"
    j_edited.write_bytes(j.read_bytes())

    out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert overlap_warnings(out.stderr) == []
    assert "3 units done, 0 failed, 0 held, 3 new; sending 3 to project " in out.stderr
    assert len(srv.ledger()) == 3
    # The same journal with the chunk edited: 2 of the 2h requests re-cover the 3 done hours.
    out = cli("run", str(edited), "--journal", str(j_edited), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert "2 requests this run sends re-cover times that 3 done requests" in " ".join(
        overlap_warnings(out.stderr)
    )


def test_a_window_moved_past_what_is_done_does_not_warn(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    _, j = six_hours_done(cli, srv, tmp_path)
    j_into = tmp_path / "j-into"
    j_into.write_bytes(j.read_bytes())

    # The next 6 hours, in 2h chunks: begin moved to where the done ones end.
    past = write_manifest(tmp_path / "past.toml", one_window("ods_orders", 6, "2h", start=6))
    out = cli("run", str(past), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert overlap_warnings(out.stderr) == []
    assert len(srv.ledger()) == 6 + 3
    # Moved half an hour less far, its first chunk re-covers the last done hour.
    into = write_manifest(tmp_path / "into.toml", one_window("ods_orders", 6, "2h", start=5.5))
    out = cli("run", str(into), "--journal", str(j_into), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    assert (
        "1 request this run sends re-covers times that 1 done request already covered"
        in " ".join(overlap_warnings(out.stderr))
    )


@contextlib.contextmanager
def a_run_in_flight(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, Any]]]:
    """A run of 60 requests whose answers take 3 s, stopped (SIGINT) at the end: yields it,
    its journal, and the first `status --json` that saw a request of it in flight."""
    srv = fake_service("--latency-ms", "3000")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j = tmp_path / "j"
    proc = cli.popen(
        "run", str(m), "--journal", str(j), "--rate", "100", "--max-inflight", "4", url=srv.url
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the run never had a request in flight"
            if j.exists():
                s: dict[str, Any] = status_of(cli, j)
                if s["in_flight"]:
                    break
            time.sleep(0.2)
        yield proc, j, s
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_status_during_a_run_counts_what_is_in_flight_and_says_to_wait(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    with a_run_in_flight(cli, fake_service, tmp_path) as (proc, j, s):
        assert (s["busy"], s["holder_pid"]) == (True, proc.pid)
        assert s["held"] == 0  # in flight, not held: their answers are on the way
        assert 1 <= s["in_flight"] <= 4 + 2  # the sends, and the intents written ahead
        assert s["done"] + s["in_flight"] + s["pending"] == 60
        assert s["next_steps"] == [
            f"wait for it to end, or stop it (Ctrl-C where it runs, or kill -TERM {proc.pid}: "
            f"a run finishes the requests in flight), then ask again: bulkrerun status {j}"
        ]
        shown = cli("status", str(j)).stdout
        assert f"a run (pid {proc.pid}) is writing this journal: " in shown
    after = status_of(cli, j)
    assert (after["busy"], after["holder_pid"], after["in_flight"]) == (False, None, 0)
    assert after["done"] + after["held"] + after["pending"] == 60


def test_a_second_signal_says_it_abandons_the_requests_in_flight(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    with a_run_in_flight(cli, fake_service, tmp_path) as (proc, j, _):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # two signals, not one the kernel merged
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopping: SIGINT: finishing requests in flight (again to stop at once)" in stderr
    # Not the first stop's words again ("finishing ..."): those requests are cut off.
    assert "stopping now: SIGINT again: abandoning requests in flight" in stderr
    assert status_of(cli, j)["held"] >= 1


def test_a_report_during_a_run_says_so_and_its_manifest_is_refused(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    with a_run_in_flight(cli, fake_service, tmp_path) as (proc, j, _):
        table = cli("report", str(j), "--format", "csv")
        assert table.returncode == 0, table.stderr
        assert f"another bulkrerun (pid {proc.pid}) holds this journal" in table.stderr
        rows = list(csv.DictReader(io.StringIO(table.stdout)))
        # Its requests without an answer yet are in flight, not held: a held request is one
        # whose outcome may never be known, and asks for a verify.
        states = Counter(row["state"] for row in rows)
        assert states["in flight"] >= 1
        assert set(states) <= {"done", "in flight"}
        # Requests in flight would be in it as held: run, they would be sent twice.
        manifest = cli("report", str(j), "--format", "manifest")
        assert manifest.returncode == 2
        assert (manifest.stdout, manifest.stderr.count("could name requests still in flight")) == (
            "",
            1,
        )
    assert "holds this journal" not in cli("report", str(j)).stderr


def test_status_while_verify_holds_the_journal_keeps_held_units_held(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # Both reruns are accepted and their connections dropped (held); verify then lists
    # their instances, each answer 3 s late: it holds the journal meanwhile, sending nothing.
    srv = fake_service("--drop-after-accept", "1", "--latency-ms", "3000")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "1h"))
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url).returncode == 1
    proc = cli.popen("verify", str(j), url=srv.url)
    try:
        deadline = time.monotonic() + 60
        while not (s := status_of(cli, j))["busy"]:
            assert time.monotonic() < deadline, "verify never held the journal"
            time.sleep(0.1)
        assert (s["holder_pid"], s["held"], s["in_flight"]) == (proc.pid, 2, 0)
        assert s["next_steps"][0].startswith("wait for it to end")
    finally:
        proc.communicate(timeout=60)


def test_the_log_file_opens_and_closes_with_the_run_as_a_whole(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 3, "1h"))
    j, log = tmp_path / "j", tmp_path / "run.jsonl"
    flags = ["--log-file", str(log), "--max-attempts", "3", "--outage-stop", "90", "--watch"]
    out = cli("run", str(m), "--journal", str(j), *flags, url=srv.url)
    assert out.returncode == 0, out.stderr
    assert f"new journal {j}: sending 3 units to project {PROJECT} at {srv.url}." in out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # What the run was told, in the log and in the journal: what explains its outcomes.
    told = {"max_attempts": 3, "outage_stop": 90.0, "watch": True, "rate": 10.0, "burst": 1}
    assert {k: records[0][k] for k in told} == told
    (run,) = (json.loads(line) for line in j.read_text().splitlines() if '"t":"run"' in line)
    assert {k: run["options"][k] for k in told} == told
    # Who ran it, where, how it authenticated, whether it checked the service's certificate.
    who = {
        "user": getpass.getuser(),  # the same environment as the run's
        "host": socket.gethostname(),
        "auth": "AK/SK",
        "verify_tls": True,
        "ca_bundle": None,
    }
    assert {k: run["options"][k] for k in who} == {k: records[0][k] for k in who} == who
    records = [r for r in records if r["event"] in ("run started", "chunk settled", "run ended")]
    first, last = records[0], records[-1]
    assert first["event"] == "run started"
    assert {k: first[k] for k in ("manifest", "journal", "resumed", "to_send", "pid")} == {
        "manifest": str(m),
        "journal": str(j),
        "resumed": False,
        "to_send": 3,
        "pid": first["pid"],
    }
    assert first["endpoint"] == srv.url and first["manifest_sha256"]
    assert [r["event"] for r in records[1:-1]] == ["chunk settled"] * 3
    assert last["event"] == "run ended"
    assert (last["exit_code"], last["done"], last["not_sent"], last["stopped"]) == (0, 3, 0, None)
    assert SK not in log.read_text()


def test_a_failed_unit_of_an_earlier_manifest_is_sent_again_by_the_step_status_names(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--missing-job", "ods_gone")
    first = write_manifest(tmp_path / "first.toml", one_window("ods_gone", 1, "1h"))
    second = write_manifest(tmp_path / "second.toml", one_window("ods_orders", 2, "1h"))
    j = tmp_path / "j"
    assert cli("run", str(first), "--journal", str(j), url=srv.url).returncode == 1
    out = cli("run", str(second), "--journal", str(j), url=srv.url)
    assert out.returncode == 1, out.stderr
    # The failed unit is first.toml's: second.toml --retry-failed would send nothing.
    steps = json.loads(cli("status", str(j), "--json").stdout)["next_steps"]
    step = next(s for s in steps if s.startswith("once the cause is fixed"))
    assert "second.toml" not in step and "--format manifest > retry.toml" in step
    assert step.endswith("then bulkrerun run retry.toml --journal " + str(j) + " --retry-failed")
    assert step in out.stderr.replace("\n", "")
    # The step works as it says, from the journal's folder.
    before = len(srv.ledger())
    report = cli("report", str(j), "--format", "manifest")
    (tmp_path / "retry.toml").write_text(report.stdout, encoding="utf-8")
    again = cli("run", "retry.toml", "--journal", str(j), "--retry-failed", url=srv.url)
    assert again.returncode == 1, again.stderr
    assert len(srv.ledger()) == before  # refused again, so not accepted
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["attempts"]) == (2, 1, 3 + 1)  # sent again, once


BULKRERUN = [sys.executable, "-m", "bulkrerun"]


def test_output_that_cannot_be_written_ends_with_one_line_and_exit_3(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), url=srv.url).returncode == 0
    commands = [
        ["plan", str(m)],
        ["plan", str(m), "--json"],
        ["status", str(j)],
        ["status", str(j), "--json"],
        *(["report", str(j), "--format", f] for f in ("table", "csv", "json")),
    ]
    for args in commands:
        with open("/dev/full", "w") as full:  # every write: no space left on device
            out = subprocess.run(
                [*BULKRERUN, *args], stdout=full, stderr=subprocess.PIPE, text=True,
                env=cli.env(srv.url), cwd=tmp_path, timeout=60, check=False,
            )  # fmt: skip
        assert out.returncode == 3, (args, out.stderr)
        assert out.stderr.strip().splitlines()[-1] == (
            "stopped: cannot write the output: No space left on device"
        ), args
        assert "Traceback" not in out.stderr
        # A reader that goes away (`| head`) had what it wanted: exit 0, nothing said.
        proc = subprocess.Popen(
            [*BULKRERUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=cli.env(srv.url), cwd=tmp_path,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command has written anything
        assert proc.wait(60) == 0, args
        assert proc.stderr.read() == b"", args
        proc.stderr.close()


def test_a_report_of_a_file_that_is_no_journal_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", BOTH_MODES)
    for fmt in ("table", "csv", "json", "manifest"):
        out = cli("report", str(m), "--format", fmt)
        assert out.returncode == 2 and out.stdout == "", fmt
        assert "is not a bulkrerun journal" in out.stderr and "check the path" in out.stderr


def test_a_journal_that_cannot_grow_mid_run_stops_it_with_exit_3_and_nothing_lost(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The disk fills during a run (here: a file-size limit on the process, so the journal's
    writes fail with EFBIG): the run stops cleanly with exit 3 and its resume command, its
    closing status adds up to the plan, and the resume loses and repeats nothing."""
    import resource

    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 50, "1m"))  # 3,000
    j = tmp_path / "j"
    limit = 64 * 1024  # about a hundred requests' records

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["run", str(m), "--journal", str(j), "--rate", "5000", "--max-inflight", "32"]
    out = subprocess.run(
        [*BULKRERUN, *args], capture_output=True, text=True, env=cli.env(srv.url),
        cwd=tmp_path, timeout=120, check=False, preexec_fn=small_files,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    flat = " ".join(out.stderr.split())
    assert f"stopped: cannot write the journal {j}: File too large" in flat
    assert f"resume with: bulkrerun run {m} --journal {j}" in flat
    s = status_of(cli, j)
    assert s["done"] + s["held"] + s["pending"] == 3000 and s["failed"] == 0
    assert 0 < s["done"] < 3000
    # The closing status is the file's, as the resume finds it (not the state in memory,
    # which held intents that never became durable): its table row, every count of it.
    row = re.search(
        r"^journal .*\n.*not yet sent *\n.*\n *([\d,]+) │ *([\d,]+) │ *([\d,]+) │ *([\d,]+) *$",
        out.stderr,
        re.MULTILINE,
    )
    assert row is not None, out.stderr
    shown = [int(n.replace(",", "")) for n in row.groups()]
    assert shown == [s["done"], s["failed"], s["held"], s["pending"]], out.stderr
    assert f"decide the {s['held']:,} units held" in flat
    # The units not yet sent are sent by the resume command printed below the steps: no
    # step says it again ("send the N units not yet sent: CMD" right above it).
    assert "units not yet sent:" not in flat
    assert f"send the {s['pending']:,} units not yet sent: " in " ".join(s["next_steps"])
    accepted = Counter(srv.accepted_ids())
    again = cli(*args, "--resend-held", url=srv.url)
    assert again.returncode == 0, again.stderr
    after = Counter(srv.accepted_ids())
    assert set(after) == set(plan_ids(cli, m))
    assert sum(after.values()) - sum(accepted.values()) == s["held"] + s["pending"]


def test_units_an_earlier_manifest_left_unsent_still_count_after_a_manifest_of_held_ones(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The manifest `report --format manifest` writes of what is held, run with the same
    journal, plans only those units: what the first manifest left unsent still counts as
    not yet sent, and the next step names that manifest's command."""
    srv = fake_service("--drop-after-accept", "1.0")  # every request held
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 24, "1h"))
    j = tmp_path / "j"
    out = cli(
        "run", "m.toml", "--journal", "j", "--max-inflight", "2", "--rate", "100", url=srv.url
    )
    assert out.returncode == 3, out.stderr  # the service answers nothing: stopped
    before = status_of(cli, j)
    assert before["held"] > 0 and before["pending"] > 0
    assert before["held"] + before["pending"] == 24
    report = cli("report", "j", "--format", "manifest")
    (tmp_path / "held.toml").write_text(report.stdout, encoding="utf-8")
    again = cli("run", "held.toml", "--journal", "j", "--rate", "100", url=srv.url)
    assert again.returncode == 1, again.stderr  # held units are not resent without the flag
    after = json.loads(cli("status", "j", "--json").stdout)
    assert (after["held"], after["pending"]) == (before["held"], before["pending"])
    assert after["pending_by_manifest"] == [
        {"manifest": "held.toml", "pending": 0},
        {"manifest": "m.toml", "pending": before["pending"]},
    ]
    step = f"send the {before['pending']} units not yet sent of m.toml"
    assert any(s.startswith(step) for s in after["next_steps"]), after["next_steps"]
    assert any(
        s.endswith(": bulkrerun run m.toml --journal j --rate 100") for s in after["next_steps"]
    )
    # The run's own closing status points there (it does not plan every manifest again).
    flat = " ".join(again.stderr.split())
    assert "this journal's runs had other manifests too" in flat
    assert "counted by: bulkrerun status j" in flat
    assert "nothing left to do" not in flat
    assert m.exists()


def test_after_a_canary_stop_status_puts_the_failures_before_the_rest(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The run's end record says it stopped on its canary: status shows that, and its next
    steps say to see why the requests failed before sending the rest, which would fail
    the same way."""
    srv = fake_service("--missing-job", "ghost_job")
    m = write_manifest(tmp_path / "m.toml", one_window("ghost_job", 1, "1m"))  # 60, all refused
    j = tmp_path / "j"
    args = ["--canary", "5", "--max-inflight", "2", "--rate", "100"]
    out = cli("run", str(m), "--journal", str(j), *args, url=srv.url)
    assert out.returncode == 3, out.stderr
    assert "run 1 (started" not in out.stderr  # its own end is said as this run's
    s: Any = status_of(cli, j)
    last = s["last_run"]
    assert (last["n"], last["stopped"], last["exit_code"]) == (1, "failure_budget", 3)
    assert last["message"].startswith("canary: ")
    steps = s["next_steps"]
    assert steps[0] == f"see why the {s['failed']} units failed: bulkrerun report {j}"
    # One command sends both the failed units and the rest: one step, not two.
    assert steps[1] == (
        f"once the cause is fixed, send them again with the {s['pending']} units not yet "
        f"sent: bulkrerun run {m} --journal {j} --rate 100 --max-inflight 2 --canary 5 "
        "--retry-failed"
    )
    assert len(steps) == 2
    said = " ".join(cli("status", str(j)).stdout.split())
    assert f"run 1 (started {last['started']}) stopped {last['ended']}: canary: " in said
    end = json.loads(j.read_text().splitlines()[-1])
    assert (end["t"], end["run"], end["exit"], end["stopped"]) == ("end", 1, 3, "failure_budget")


def test_a_security_token_beside_an_iam_token_is_said_to_go_unused(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A security token belongs to a temporary AK/SK pair: under token auth it is not sent,
    and the run says so rather than leave the user thinking it was (it never shows it)."""
    srv = fake_service("--token", "iam-token-0123456789")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "1h"))
    env = {k: v for k, v in cli.env(srv.url).items() if k not in ("BULKRERUN_AK", "BULKRERUN_SK")}
    env["BULKRERUN_TOKEN"] = "iam-token-0123456789"
    env["BULKRERUN_SECURITY_TOKEN"] = "sts-secret-9876543210"
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), env=env)
    assert out.returncode == 0, out.stderr
    said = " ".join(out.stderr.split())
    assert "warning: BULKRERUN_SECURITY_TOKEN is set but not sent" in said
    assert "sts-secret" not in out.stderr + out.stdout
    assert len(srv.ledger()) == 2


@pytest.mark.parametrize("token", ["e", "re"])
def test_a_token_too_short_to_mask_is_warned_of_not_spelt_out(
    cli: Cli, fake_service: type[Service], tmp_path: Path, token: str
) -> None:
    """Masking a placeholder of a character or two in the service's messages spelt it out
    ("Incorr***ct IAM auth***ntication": the token is ``e``). It is left unmasked, and the
    run says so once, without showing it."""
    srv = fake_service("--token", "iam-token-0123456789")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "1h"))
    j = tmp_path / "j"
    log = tmp_path / "log.jsonl"
    env = {k: v for k, v in cli.env(srv.url).items() if k not in ("BULKRERUN_AK", "BULKRERUN_SK")}
    env["BULKRERUN_TOKEN"] = token
    out = cli("run", str(m), "--journal", str(j), "--log-file", str(log), env=env)
    assert out.returncode == 3, out.stderr
    said = " ".join(out.stderr.split())
    for text in (said, j.read_text(), log.read_text(), cli("report", str(j)).stdout):
        assert "Incorrect IAM authentication information" in " ".join(text.split())
        assert "***" not in text
    assert "warning: the token is shorter than 8 characters, as no real one is" in said
    assert said.count("shorter than 8 characters") == 1
    assert srv.ledger() == []


def test_a_run_killed_outright_records_no_end_and_status_says_so(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--latency-ms", "50")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 6, "1m"))
    j = tmp_path / "j"
    proc = cli.popen("run", str(m), "--journal", str(j), "--rate", "20", url=srv.url)
    srv.wait_accepted(5)
    proc.kill()
    proc.communicate(timeout=30)
    last: Any = status_of(cli, j)["last_run"]
    assert (last["n"], last["ended"], last["exit_code"], last["stopped"]) == (1, None, None, None)
    said = " ".join(cli("status", str(j)).stdout.split())
    assert f"run 1 (started {last['started']}) recorded no end: it was killed or crashed" in said


def test_log_file_has_no_settled_line_for_a_request_a_stop_left_unsent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A canary that stops the run leaves the requests the workers had taken unsent: the
    log has one 'chunk settled' record per request sent, as the journal has."""
    srv = fake_service("--missing-job", "ghost_job")
    m = write_manifest(tmp_path / "m.toml", one_window("ghost_job", 1, "1m"))  # 60, all refused
    log = tmp_path / "log.jsonl"
    j = tmp_path / "j"
    args = ["--canary", "5", "--max-inflight", "8", "--rate", "100", "--log-file", str(log)]
    out = cli("run", str(m), "--journal", str(j), *args, url=srv.url)
    assert out.returncode == 3, out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    settled = [r for r in records if r["event"] == "chunk settled"]
    assert settled and all(r["attempts"] >= 1 for r in settled)
    assert len(settled) == status_of(cli, j)["failed"]


def test_a_service_gone_after_it_answered_stops_the_run_after_the_outage_stop(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 48, "1h"))
    j = tmp_path / "j"
    run = ("run", str(m), "--journal", str(j), "--rate", "5", "--outage-stop", "4")
    proc = cli.popen(*run, url=srv.url)
    srv.wait_accepted(3)
    srv.proc.terminate()  # gone: every connection refused from now on
    srv.proc.wait(10)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "the service has failed every request for" in stderr
    assert "--outage-stop SECONDS waits longer" in stderr
    resume = shlex.split(stderr.split("resume with:\n", 1)[1].splitlines()[0].strip())
    assert resume[resume.index("--outage-stop") + 1] == "4"  # the resume keeps it
    s = status_of(cli, j)
    assert s["done"] == len(srv.ledger()) and s["done"] + s["pending"] + s["held"] == 48


def test_a_backend_timeout_after_acceptance_is_held_not_resent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """504 from the gateway, after the back end had started the rerun: held (it may have
    run, and here it did), never sent again without --resend-held."""
    srv = fake_service("--timeout-after-accept", "0.3", "--seed", "4")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 20, "1h"))
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 1, out.stderr
    ledger = srv.ledger()
    late = [e for e in ledger if e["status"] == 504]
    assert late and len(ledger) == 20
    s = status_of(cli, j)
    assert (s["done"], s["held"], s["failed"], s["pending"]) == (20 - len(late), len(late), 0, 0)
    again = cli("run", str(m), "--journal", str(j), url=srv.url)
    assert again.returncode == 1 and len(srv.ledger()) == 20  # nothing sent twice


def test_a_request_that_ran_out_of_attempts_says_so_in_the_report(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--p5xx", "1.0")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "1h"))
    j = tmp_path / "j"
    args = ("run", str(m), "--journal", str(j), "--max-attempts", "2", "--rate", "100")
    assert cli(*args, url=srv.url).returncode == 1
    rows = [json.loads(line) for line in cli("report", str(j), "-f", "json").stdout.splitlines()]
    assert [(r["state"], r["attempts"], r["reason"]) for r in rows] == [
        ("failed", 2, "gave up after 2 attempts (--max-attempts); last: service unavailable, "
         "not acted on"),
    ] * 2  # fmt: skip
    assert status_of(cli, j)["failed_by_code"] == {"APIG.0202": 2}


def test_a_unit_listed_twice_is_sent_once_and_the_warning_is_logged(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    item = "{ job_id = 917567, plan_time = 1732601580000, submit_time = 1732239754684 }"
    body = f'[[instances]]\njob_name = "ods_orders"\nitems = [\n  {item},\n  {item},\n]\n'
    m = write_manifest(tmp_path / "m.toml", body)
    j, log = tmp_path / "j", tmp_path / "log.jsonl"
    out = cli("run", str(m), "--journal", str(j), "--log-file", str(log), url=srv.url)
    assert out.returncode == 0, out.stderr
    said = (
        f"{m}: instances[0].items[1]: job ods_orders job_id 917567 plan_time 1732601580000 "
        "(2024-11-26 06:13:00.000Z) submit_time 1732239754684 is planned earlier too, at "
        "instances[0].items[0]; it is sent once"
    )
    assert said in " ".join(out.stderr.split())
    warnings = [json.loads(line) for line in log.read_text().splitlines()]
    (warning,) = (w["message"] for w in warnings if w["event"] == "warning")
    assert warning.endswith(said)
    assert len(srv.ledger()) == 1


def test_a_resend_of_held_units_stopped_early_does_not_count_them_unsent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """More held units than the run takes before a refusal of the credentials stops it: the
    ones it never took are held still, not 'not yet sent'."""
    other = fake_service("--token", "another-token", auth=False)
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 40, "1h"))
    j = tmp_path / "j"
    chunks = list(plan(load_manifest(m)))

    async def killed_after_sending_all() -> None:  # 40 intents, no outcome: all held
        binding = Binding(PROJECT, normalise_endpoint(other.url))
        with Journal.open(j, binding, tool_version="test") as journal:
            journal.begin_run(RunInfo.from_manifest(m))
            for chunk in chunks:
                await journal.intend(chunk, 1, time.time())

    anyio.run(killed_after_sending_all)
    assert status_of(cli, j)["held"] == 40
    args = ("run", str(m), "--journal", str(j), "--resend-held", "--max-inflight", "1")
    out = cli(*args, url=other.url)
    assert out.returncode == 3, out.stderr  # credentials refused: a fatal stop
    closing = out.stderr.split("next:")[1]
    assert "not yet sent" not in closing.replace("what is not yet sent is not counted", "")
    assert "stopped before it resent every held unit" in closing
    s = status_of(cli, j)
    assert (s["held"], s["pending"]) == (40, 0)


# -- an environment that cannot take the output ---------------------------------------------


def run_raw(cli: Cli, args: list[str], env: dict[str, str], **kw: Any) -> Any:
    """``bulkrerun ARGS`` with the standard streams and limits the test gives."""
    return subprocess.run(
        [sys.executable, "-m", "bulkrerun", *args],
        env=env,
        cwd=cli.cwd,
        timeout=120,
        check=False,
        **kw,
    )


@pytest.mark.parametrize("broken", ["full disk", "reader gone"])
def test_a_run_whose_stderr_cannot_be_written_goes_on_to_the_end(
    cli: Cli, fake_service: type[Service], tmp_path: Path, broken: str
) -> None:
    # `run ... 2>&1 | head`, a terminal that hung up, `2> run.txt` on a full disk: the run
    # died at its next line of progress with exit 1, half its work undone.
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j, log = tmp_path / "j", tmp_path / "log.jsonl"
    rate, log_to = ["--rate", "1000"], ["--log-file", str(log)]
    if broken == "full disk":
        stderr = os.open("/dev/full", os.O_WRONLY)
    else:
        read, stderr = os.pipe()
        os.close(read)
    try:
        args = ["run", str(m), "--journal", str(j), *rate, *log_to]
        proc = run_raw(cli, args, cli.env(srv.url), stdout=subprocess.DEVNULL, stderr=stderr)
    finally:
        os.close(stderr)
    assert proc.returncode == 0
    assert status_of(cli, j)["done"] == 60
    assert len(srv.ledger()) == 60
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("stderr cannot be written" in r.get("message", "") for r in records)
    assert records[-1]["event"] == "run ended" and records[-1]["exit_code"] == 0


def test_a_log_file_that_cannot_be_written_is_said_once(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))
    j = tmp_path / "j"
    out = cli(
        "run", str(m), "--journal", str(j), "--rate", "1000", "--log-file", "/dev/full", url=srv.url
    )
    assert out.returncode == 0, out.stderr
    # One line, not a traceback per record over the progress.
    assert out.stderr.count("cannot write the log file /dev/full (No space left on device)") == 1
    assert "Logging error" not in out.stderr and "Traceback" not in out.stderr
    assert status_of(cli, j)["done"] == 60


def test_closed_stdout_and_stderr_are_taken_for_dev_null(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # Python makes sys.stdout None for a closed descriptor (every command failed at start-up
    # on it), and the journal, opened next, would have taken its number.
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))
    j = tmp_path / "j"
    for args in (["run", str(m), "--journal", str(j)], ["status", str(j)]):
        proc = subprocess.run(
            ["sh", "-c", 'exec "$@" >&- 2>&-', "sh", sys.executable, "-m", "bulkrerun", *args],
            env=cli.env(srv.url, BULKRERUN_RATE="1000"),
            cwd=cli.cwd,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, args
    assert status_of(cli, j)["done"] == 60
    assert len(srv.ledger()) == 60


def test_an_output_encoding_without_chinese_shows_escapes_and_reports_stay_utf8(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("订单_ods", 1, "30m"))
    j = tmp_path / "j"
    env = cli.env(srv.url, PYTHONIOENCODING="ascii")
    shown = cli("plan", str(m), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "\\u8ba2\\u5355_ods" in shown.stdout
    assert cli("run", str(m), "--journal", str(j), env=env).returncode == 0
    table = cli("report", str(j), env=env)
    assert table.returncode == 0 and "\\u8ba2\\u5355_ods" in table.stdout, table.stderr
    for fmt in ("csv", "json"):
        written = cli("report", str(j), "--format", fmt, env=env)
        assert written.returncode == 0, written.stderr
        assert "订单_ods" in written.stdout  # UTF-8, whatever the locale's encoding


def test_a_file_limit_below_what_max_inflight_needs_is_raised_or_refused(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # A connection per request in flight: beyond `ulimit -n` they failed with EMFILE, which
    # read as a service that cannot be reached (stop, "start a new journal").
    import resource

    srv = fake_service("--latency-ms", "200")
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    args = ["run", str(m), "--rate", "1000", "--max-inflight", "60"]

    def limited(soft: int, hard: int, j: Path) -> subprocess.CompletedProcess[str]:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        return run_raw(
            cli,
            [*args, "--journal", str(j)],
            cli.env(srv.url),
            capture_output=True,
            text=True,
            preexec_fn=limit,  # a test: no threads in the child yet
        )

    refused = limited(50, 50, tmp_path / "j1")
    assert refused.returncode == 2, refused.stderr
    assert "--max-inflight 60 needs about 92 open files" in refused.stderr
    assert "may open only 50 (ulimit -n): lower --max-inflight" in refused.stderr
    assert not (tmp_path / "j1").exists() and srv.ledger() == []
    raised = limited(50, 4096, tmp_path / "j2")  # the soft limit, raised as far as needed
    assert raised.returncode == 0, raised.stderr
    assert status_of(cli, tmp_path / "j2")["done"] == 60
    # verify lists instances a few queries at a time: --max-inflight is not its limit.
    checked = run_raw(
        cli,
        ["verify", str(tmp_path / "j2")],
        cli.env(srv.url, BULKRERUN_MAX_INFLIGHT="60"),
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (50, 50)),
    )
    assert checked.returncode == 0, checked.stderr


def test_a_report_table_into_a_pipe_shows_each_window_in_full(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # At 160 columns the window was cut to "2024-11-26T08:0…": what a held row is read by.
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 48, "1d", start=8))
    j = tmp_path / "j"
    assert cli("run", str(m), "--journal", str(j), url=srv.url).returncode == 0
    out = cli("report", str(j))
    assert out.returncode == 0, out.stderr
    # In the manifest's timezone (Asia/Shanghai, write_manifest's default), as plan shows it.
    assert "2024-11-26T16:00:00+08:00 .. 2024-11-27T15:59:59.999" in out.stdout
    assert "…" not in out.stdout


def with_jobs(body: str, *jobs: str) -> str:
    """A window body (of :func:`one_window`) with ``jobs`` of the test workspace added."""
    listed = ", ".join(f'{{ job_name = "{j}", workspace_id = "{WORKSPACE}" }}' for j in jobs)
    return f"{body}jobs = [ {listed} ]\n"


def rerun_counts(srv: Service) -> Counter[tuple[str, int]]:
    """How often the service accepted a rerun of each (job, window begin): the window's own
    job and every job of its jobs."""
    counted: Counter[tuple[str, int]] = Counter()
    for entry in srv.ledger():
        body = entry["body"]
        for job in [entry["job_name"], *(j["job_name"] for j in body.get("jobs", []))]:
            counted[(job, body["begin_time"])] += 1
    return counted


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_job_two_windows_cover_through_jobs_is_warned_about_before_sending(
    cli: Cli, fake_service: type[Service], tmp_path: Path, suffix: str
) -> None:
    """window[0] reruns ods_users with dwd_users in its jobs, window[1] dwd_users over the
    same 6 hours: dwd_users runs twice, and the run says so first, naming dwd_users."""
    srv = fake_service()
    body = with_jobs(one_window("ods_users", 6, "6h"), "dwd_users") + one_window(
        "dwd_users", 6, "6h"
    )
    m = write_manifest(tmp_path / "m.toml", body)
    if suffix == ".json":
        json_path = tmp_path / "m.json"
        json_path.write_text(json.dumps(tomllib.loads(m.read_text())), encoding="utf-8")
        m = json_path
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    said = " ".join(out.stderr.split())
    assert (
        f"warning: {m}: window[0] and window[1] overlap for job dwd_users (in jobs of "
        "window[0], job_name of window[1]): its instances in the overlap are rerun twice" in said
    )
    assert said.index("overlap for job dwd_users") < said.index("sending 2")
    assert rerun_counts(srv)[("dwd_users", 1_732_579_200_000)] == 2  # warned, sent as asked


def test_a_new_window_over_a_job_done_through_jobs_is_warned_about(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """e1 reran ods_users with dwd_users in its jobs; e2 adds a window of dwd_users alone over
    the same hours. Its requests re-cover dwd_users, and the warning names it."""
    srv = fake_service()
    e1_body = with_jobs(one_window("ods_users", 6, "1h"), "dwd_users")
    e1 = write_manifest(tmp_path / "e1.toml", e1_body)
    e2 = write_manifest(tmp_path / "e2.toml", e1_body + one_window("dwd_users", 6, "1h"))
    j = tmp_path / "j"
    assert cli("run", str(e1), "--journal", str(j), "--rate", "100", url=srv.url).returncode == 0

    out = cli("run", str(e2), "--journal", str(j), "--rate", "100", url=srv.url)
    assert out.returncode == 0, out.stderr
    (warning,) = overlap_warnings(out.stderr)
    assert warning.startswith("warning: window[1] (job dwd_users): ")
    assert (
        "6 requests this run sends re-cover times that 6 done requests already covered" in warning
    )
    assert "(2024-11-26 08:00:00.000+08:00 .. 2024-11-26 13:59:59.999+08:00)" in warning
    assert out.stderr.index("already covered (") < out.stderr.index("units done")
    assert len(srv.ledger()) == 6 + 6


def test_a_window_that_lists_its_own_job_in_jobs_is_refused_and_nothing_sent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    m = write_manifest(
        tmp_path / "m.toml", with_jobs(one_window("ods_users", 6, "1h"), "dwd_users", "ods_users")
    )
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), url=srv.url)
    assert out.returncode == 2, out.stderr
    assert 'window[0].jobs[1].job_name = "ods_users": is the window\'s own job' in " ".join(
        out.stderr.split()
    )
    assert srv.ledger() == []


def test_failed_windows_resent_over_times_done_since_are_warned_about(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The drill: 2 days of ods_orders in 6h chunks with dwd_new (unknown to the service) in
    jobs: 8 refusals. Without the jobs line: 8 requests done. Then what status advises, a
    manifest of the failed requests sent with --retry-failed once the service knows
    dwd_new: every one reruns ods_orders over times done already, and the run says so for
    each before sending (it sends them, as it sends new chunks it warns about)."""
    srv = fake_service("--missing-job", "dwd_new")
    body = one_window("ods_orders", 48, "6h")
    s1 = write_manifest(tmp_path / "s1.toml", with_jobs(body, "dwd_new"))
    j = tmp_path / "j"
    run = ("--journal", str(j), "--rate", "100")
    assert cli("run", str(s1), *run, url=srv.url).returncode == 1
    write_manifest(s1, body)
    out = cli("run", str(s1), *run, url=srv.url)
    assert out.returncode == 1, out.stderr
    assert overlap_warnings(out.stderr) == []  # nothing done covered these times yet
    s = status_of(cli, j)
    assert (s["done"], s["failed"]) == (8, 8)
    advice = " ".join(cli("status", str(j)).stdout.split())
    assert "--format manifest > retry.toml" in advice and "--retry-failed" in advice
    report = cli("report", str(j), "--format", "manifest")
    assert report.returncode == 0, report.stderr
    retry = tmp_path / "retry.toml"
    retry.write_text(report.stdout, encoding="utf-8")

    srv.proc.terminate()  # the service is fixed: restarted, on the same port, without fault
    srv.proc.wait(10)
    fixed = fake_service("--port", srv.url.rsplit(":", 1)[1])
    assert fixed.url == srv.url
    out = cli("run", str(retry), *run, "--retry-failed", url=fixed.url)

    assert out.returncode == 0, out.stderr
    warnings = overlap_warnings(out.stderr)
    assert len(warnings) == 8
    assert warnings[0].startswith("warning: window[0] (job ods_orders): ")
    assert (
        "1 request this run sends re-covers times that 1 done request already covered"
        in warnings[0]
    )
    # In the window's timezone, which the report's manifest keeps in each entry.
    assert "(2024-11-26 08:00:00.000+08:00 .. 2024-11-26 13:59:59.999+08:00)" in warnings[0]
    assert warnings[7].startswith("warning: window[7] (job ods_orders): ")
    assert out.stderr.index("already covered (") < out.stderr.index("units done")
    assert not any("dwd_new" in warning for warning in warnings)  # never done before
    twice = rerun_counts(srv) + rerun_counts(fixed)
    assert sorted(set(twice.values())) == [1, 2]
    assert all(n == 2 for (job, _), n in twice.items() if job == "ods_orders")


def test_a_run_started_with_sighup_ignored_outlives_the_terminal(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # `nohup bulkrerun run ...`: the operator asked for the run to go on when the terminal
    # closes. Taking SIGHUP as a stop would undo that.
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 1, "1m"))  # 60 chunks
    j = tmp_path / "j"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkrerun", "run", str(m), "--journal", str(j), "--rate", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env(srv.url),
        cwd=cli.cwd,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )
    srv.wait_accepted(5)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "SIGHUP" not in stderr
    assert status_of(cli, j)["done"] == 60


def test_a_journal_and_its_manifest_moved_to_another_folder_plan_as_one_manifest(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    # The folder of a run (manifest, instance file, journal) copied elsewhere and run there:
    # the manifest is at another path, but it is the same plan, not "other manifests too".
    srv = fake_service()
    first = tmp_path / "incident"
    first.mkdir()
    rows = "job_id,plan_time,submit_time\n1,1732500000000,1732500001000\n"
    (first / "failed.csv").write_text(rows + "2,1732503600000,1732503601000\n")
    (first / "m.toml").write_text(
        'version = 1\n[defaults]\nworkspace = "ws"\nretry_location = "errorNode"\n'
        'retry_task_version = "original_version"\n'
        '[[instances]]\njob_name = "ods_orders"\nfile = "failed.csv"\nbatch = 1\n'
    )
    moved = Cli(first)
    assert moved("run", "m.toml", "--journal", "j", url=srv.url).returncode == 0
    shutil.copytree(first, tmp_path / "copy")
    again = Cli(tmp_path / "copy")("run", "m.toml", "--journal", "j", url=srv.url)
    assert again.returncode == 0, again.stderr
    flat = " ".join(again.stderr.split())
    assert "other manifests" not in flat and "nothing left to do" in flat, flat
    status = json.loads(Cli(tmp_path / "copy")("status", "j", "--json").stdout)
    assert (status["done"], status["pending"]) == (2, 0), status
    assert len(status.get("pending_by_manifest") or []) <= 1, status
    assert len(srv.ledger()) == 2  # and the second run sent nothing
