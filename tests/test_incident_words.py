"""What an operator reads in one incident (a canary stop, a Ctrl-C, a resend, the next
steps): every command it prints works as pasted, and nothing is said twice."""

from __future__ import annotations

import json
import re
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest

from bulkrerun.fake import FakeServer
from tests.conftest import Cli, Service, write_manifest
from tests.test_status_watches import (
    config,
    evening_watched,
    status,
    watch_stopped_by_ctrl_c,
)

BEGIN = 1_732_579_200_000  # 2024-11-26T00:00:00Z


def window(job: str, hours: int, chunk: str = "1h", start: int = 0) -> str:
    begin = BEGIN + start * 3_600_000
    return (
        f'[[window]]\njob_name = "{job}"\nbegin = {begin}\n'
        f'end = {begin + hours * 3_600_000}\nchunk = "{chunk}"\n'
    )


def status_of(cli: Cli, journal: Path) -> dict[str, Any]:
    out = cli("status", str(journal), "--json")
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def test_a_canary_stop_names_the_journal_in_the_report_it_points_to(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The canary's stop said to check the failures with a bare `bulkrerun report`, which,
    pasted, ends "Missing argument 'JOURNAL'". It names the run's journal, quoted for the
    shell, live and in the journal's end record that status shows."""
    srv = fake_service("--missing-job", "ghost_job")
    m = write_manifest(tmp_path / "m.toml", window("ghost_job", 12))
    j = "outage [prod].journal"  # a space and brackets: quoted, and not taken for markup
    out = cli("run", str(m), "--journal", j, "--canary", "2", "--max-inflight", "1", url=srv.url)
    assert out.returncode == 3, out.stderr
    said = re.findall(r"failures \(`([^`]*)`\)", out.stderr)
    assert said == [f"bulkrerun report '{j}'"] * 2, out.stderr  # stopping:, then stopped:
    shown = cli(*shlex.split(said[0])[1:], url=srv.url)
    assert shown.returncode == 0, shown.stderr
    assert "ghost_job" in shown.stdout and "DLF.1000" in shown.stdout
    assert f"(`bulkrerun report '{j}'`)" in status_of(cli, tmp_path / j)["last_run"]["message"]


def test_a_ctrl_c_prints_the_resume_command_once(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """After a Ctrl-C the resume command was printed twice in a row: as the step that sends
    the units not yet sent, then under "Resume with:". It is printed once, under "Resume
    with:" (the line the contract promises); the steps for the held units stay."""

    srv = fake_service("--latency-ms", "50", "--drop-after-accept", "0.3", "--seed", "7")
    m = write_manifest(tmp_path / "m.toml", window("ods_orders", 6, "1m"))  # 360 at 20/s
    j = tmp_path / "j"
    args = ["--rate", "20", "--max-attempts", "1"]
    proc = cli.popen("run", str(m), "--journal", str(j), *args, url=srv.url)
    srv.wait_accepted(10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    resume = f"bulkrerun run {m} --journal {j} --rate 20 --max-attempts 1"
    assert f"interrupted: the journal is consistent. Resume with:\n  {resume}\n" in stderr
    lines = [line.strip() for line in stderr.splitlines()]
    assert [line for line in lines if line.endswith(resume)] == [resume], stderr
    s = status_of(cli, j)
    assert s["pending"] and s["held"], s
    # status, which prints no resume command, still gives the step that sends them.
    assert f"send the {s['pending']} units not yet sent: {resume}" in s["next_steps"]
    assert f"- or resend them (each may then run twice): {resume} --resend-held" in stderr


def test_after_a_stop_on_failures_the_cause_is_to_be_fixed_said_once(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A canary stop in a journal whose runs had other manifests gave two steps in a row that
    said "once the cause is fixed": the failed units' (sent again from a manifest of them),
    then "then, once the cause is fixed, send the N units not yet sent". The second says
    "then send" now. A canary stop on held requests alone, with no failed ones before it,
    began its steps with "then"."""
    srv = fake_service("--missing-job", "ghost_job")
    j = tmp_path / "j"
    first = write_manifest(tmp_path / "first.toml", window("ods_orders", 2))
    assert cli("run", str(first), "--journal", str(j), url=srv.url).returncode == 0
    second = write_manifest(
        tmp_path / "second.toml", window("ghost_job", 4) + window("ods_orders", 4, start=4)
    )
    args = ["--canary", "2", "--max-inflight", "1"]
    out = cli("run", str(second), "--journal", str(j), *args, url=srv.url)
    assert out.returncode == 3, out.stderr
    steps = status_of(cli, j)["next_steps"]
    assert steps[1].startswith("once the cause is fixed, send them again: bulkrerun report ")
    assert steps[2] == (
        f"then send the 6 units not yet sent: bulkrerun run {second} --journal {j} "
        "--max-inflight 1 --canary 2"
    )
    assert sum("once the cause is fixed" in step for step in steps) == 1, steps

    held = fake_service("--drop-after-accept", "1")
    m = write_manifest(tmp_path / "m.toml", window("ods_orders", 6))
    h = tmp_path / "h"
    out = cli("run", str(m), "--journal", str(h), *args, "--max-attempts", "1", url=held.url)
    assert out.returncode == 3, out.stderr
    steps = status_of(cli, h)["next_steps"]
    assert steps[0] == (
        f"once the cause is fixed, send the 4 units not yet sent: bulkrerun run {m} "
        f"--journal {h} --max-inflight 1 --max-attempts 1 --canary 2"
    )


def test_a_resends_closing_summary_counts_what_may_have_run_twice_as_status_does(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """`status` says how many requests were accepted after an earlier send whose outcome is
    unknown (each may have run twice); the closing summary of the run that resent them,
    which is what the operator reads then, did not."""
    srv = fake_service("--drop-after-accept", "0.3", "--seed", "3")
    m = write_manifest(tmp_path / "m.toml", window("ods_orders", 12))
    j = tmp_path / "j"
    first = cli("run", str(m), "--journal", str(j), "--max-attempts", "1", url=srv.url)
    assert first.returncode == 1, first.stderr  # some held
    assert "earlier send whose outcome is unknown" not in first.stderr
    again = cli(
        "run", str(m), "--journal", str(j), "--resend-held", "--max-attempts", "1", url=srv.url
    )
    twice = status_of(cli, j)["accepted_after_unknown"]
    assert twice > 0, again.stderr
    said = " ".join(again.stderr.split())
    assert (
        f"{twice} request{'s' if twice > 1 else ''} accepted after an earlier send whose "
        "outcome is unknown: each may have run more than once"
    ) in said


def test_a_fatal_stop_prints_the_resume_command_once(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """After a fatal stop (exit 3) the step "send the N units not yet sent: CMD" was printed
    right above "resume with:" and the same command. It is printed once, under "resume
    with:"; the held units' steps stay, and a step that only leads the others ("first fix
    what the service refused, or every step below is refused the same way") goes with it
    when no step is left below it. `status`, which prints no resume command, keeps them."""
    m = write_manifest(tmp_path / "m.toml", window("ods_orders", 12))
    args = ["--max-inflight", "1", "--max-attempts", "1"]

    refused = fake_service("--revoke-after", "5")  # credentials refused mid-run
    j = tmp_path / "refused"
    out = cli("run", str(m), "--journal", str(j), *args, url=refused.url)
    assert out.returncode == 3, out.stderr
    resume = f"bulkrerun run {m} --journal {j} --max-inflight 1 --max-attempts 1"
    assert f"once that is fixed, resume with:\n  {resume}\n" in out.stderr
    lines = [line.strip() for line in out.stderr.splitlines()]
    assert [line for line in lines if line.endswith(resume)] == [resume], out.stderr
    assert "every step below" not in out.stderr and "next:" not in lines, out.stderr
    s = status_of(cli, j)
    assert s["pending"] == 7 and s["next_steps"][0].startswith("first fix what the service")
    assert s["next_steps"][1] == f"send the 7 units not yet sent: {resume}"

    silent = fake_service("--drop-after-accept", "1")  # the service answers nothing
    h = tmp_path / "held"
    out = cli("run", str(m), "--journal", str(h), *args, url=silent.url)
    assert out.returncode == 3, out.stderr
    resume = f"bulkrerun run {m} --journal {h} --max-inflight 1 --max-attempts 1"
    assert f"\nresume with:\n  {resume}\n" in out.stderr
    lines = [line.strip() for line in out.stderr.splitlines()]
    assert [line for line in lines if line.endswith(resume)] == [resume], out.stderr
    s = status_of(cli, h)
    assert s["pending"] and s["held"], s
    assert f"- or resend them (each may then run twice): {resume} --resend-held" in lines
    assert f"send the {s['pending']} units not yet sent: {resume}" in s["next_steps"]


@pytest.mark.anyio
async def test_a_watch_stopped_early_offers_no_command_when_every_rerun_was_seen_finish(
    tmp_path: Path,
) -> None:
    """A watch stopped early whose units an earlier watch had all seen finish still offered
    "To follow the reruns again, which sends nothing:" and the command: nothing was left to
    see. It says so, with no command; status has nothing left to do either."""
    # Run 1 sends the evening's 4 requests and its watch sees all their reruns succeed.
    manifest, port = await evening_watched(tmp_path)
    # Run 2, the same command, sends nothing; its watch follows the 4 done units again, on a
    # service that lists their previous runs (as one slow to list would), until Ctrl-C.
    async with FakeServer(config(running_s=36_000.0), port=port) as second:
        code, stderr = await watch_stopped_by_ctrl_c(tmp_path, manifest, second.url)
        assert code == 130, stderr
        assert second.ledger == []
        got, _ = await status(tmp_path, second.url)
    said = " ".join(stderr.split())
    assert (got["last_watch"]["unfinished"], got["watch_unfinished"]) == (4, 0)
    assert got["next_steps"] == ["nothing left to do: every unit is done"]
    assert (
        "interrupted: the journal is consistent, and this run sent every request it had to "
        "(there is nothing to resume); the reruns of the journal's 4 done units were all seen "
        "to finish, by this watch or an earlier one: nothing is left to follow either."
    ) in said
    assert "To follow the reruns again" not in said and "--watch" not in said.split("this run")[-1]


def test_a_canary_stops_resume_command_says_it_leaves_the_failed_units_failed(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A canary stop's "resume with:" gives the same command, without --retry-failed: it
    sends the rest, not the units the canary stopped on, and did not say so; the step
    above it sends them too once the cause is fixed. With the cause not fixed, that step's
    command would meet the same canary on the same units: the resume line stays as it is,
    and says what it leaves."""
    srv = fake_service("--missing-job", "ghost_job")
    m = write_manifest(tmp_path / "m.toml", window("ghost_job", 12))
    j = tmp_path / "j"
    args = ["--canary", "2", "--max-inflight", "1"]
    out = cli("run", str(m), "--journal", str(j), *args, url=srv.url)
    assert out.returncode == 3, out.stderr
    resume = f"bulkrerun run {m} --journal {j} --max-inflight 1 --canary 2"
    assert (
        f"\nresume with:\n  {resume}\n  (it leaves the 2 failed units failed: the step above "
        "sends them with the rest, once the cause is fixed)\n"
    ) in out.stderr
    steps = status_of(cli, j)["next_steps"]
    assert steps[1] == (
        f"once the cause is fixed, send them again with the 10 units not yet sent: {resume} "
        "--retry-failed"
    )
    # Pasted before the cause is fixed, that step stops on the same two units again.
    again = cli(*shlex.split(steps[1].split(": ", 1)[1])[1:], url=srv.url)
    assert again.returncode == 3, again.stderr
    assert "canary: 2 of the first 2 requests failed" in again.stderr
    assert status_of(cli, j)["pending"] == 10 and len(srv.accepted_ids()) == 0


def closing_table(stderr: str) -> dict[str, int]:
    """The run's closing table ("this run"), column -> count (the rate left out)."""
    lines = stderr[stderr.index("this run\n") :].splitlines()
    head, row = (re.split(r"\s*[┃│]\s*", line.strip(" ┃│")) for line in (lines[2], lines[4]))
    return {
        name: int(n.replace(",", "")) for name, n in zip(head, row, strict=True) if "/" not in name
    }


def test_a_stopped_runs_closing_table_says_not_yet_sent_as_status_does(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The run's closing table called "not sent" what the status printed under it, and every
    next step, call "not yet sent": the same units, under two names."""
    srv = fake_service("--missing-job", "ghost_job")
    m = write_manifest(tmp_path / "m.toml", window("ghost_job", 12))
    j = tmp_path / "j"
    out = cli(
        "run", str(m), "--journal", str(j), "--canary", "2", "--max-inflight", "1", url=srv.url
    )
    assert out.returncode == 3, out.stderr
    got = status_of(cli, j)
    assert closing_table(out.stderr) == {"done": 0, "failed": 2, "held": 0, "not yet sent": 10}
    assert (got["done"], got["failed"], got["held"], got["pending"]) == (0, 2, 0, 10)


def test_held_units_a_refused_resend_left_held_are_not_counted_as_not_yet_sent(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """A resend of 3 held units the service refused: they stay held, and the status under
    the run's closing table counts them held, with none not yet sent. The closing table
    counted them "not sent", and a line "of those not sent" said they were held again:
    named "not yet sent" as status names them, the two tables would contradict each other.
    They count as held, as status counts them, and the line says which those are."""
    first = fake_service("--drop-after-accept", "1.0")
    m = write_manifest(tmp_path / "m.toml", window("ods_orders", 3))
    j = tmp_path / "j"
    args = ("run", str(m), "--journal", str(j), "--rate", "100", "--timeout", "5")
    assert cli(*args, url=first.url).returncode == 1
    first.proc.terminate()
    first.proc.wait(10)
    port = first.url.rsplit(":", 1)[1]
    gone = fake_service("--port", port, "--missing-job", "ods_orders")
    resend = cli(*args, "--resend-held", url=gone.url)
    assert resend.returncode == 1, resend.stderr
    got = status_of(cli, j)
    assert (got["done"], got["failed"], got["held"], got["pending"]) == (0, 0, 3, 0)
    assert closing_table(resend.stderr) == {"done": 0, "failed": 0, "held": 3, "not yet sent": 0}
    closing = " ".join(resend.stderr[resend.stderr.index("this run") :].split())
    assert (
        "of those held, 3 units held before are held again: this run's resend was not acted "
        "on, or did not go"
    ) in closing
