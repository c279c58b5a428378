"""status and report, on journals written through the journal's API."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

import bulkrerun.report as report_module
from bulkrerun.chunk import Chunk, canonical_json, chunk_id, instance_unit_id
from bulkrerun.journal import Binding, Holder, Journal, RunInfo, UnitState, read_state
from bulkrerun.manifest import load_manifest
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.planner import SelectedInstance, plan
from bulkrerun.report import (
    REPORT_COLUMNS,
    count_pending,
    not_sent_by_manifest,
    render_status,
    report_rows,
    status,
    status_json,
    summarize,
    write_report,
)
from bulkrerun.verify import verify_held
from tests.conftest import Cli, Service, write_manifest
from tests.test_verify import world

BINDING = Binding("62099355b894428e8916573ae635f1f9", "http://127.0.0.1:8080")
WS = "62fbba734e634c5087656fc3ff7adf34"
T0 = 1_732_600_000.0
BEGIN = 1_732_608_000_000  # 2024-11-26T08:00:00Z

FAILED = Outcome(
    Kind.FAILED, 400, "DLF.1000", "Failed to find the job [bold]x[/bold].", "req-f", reason="400"
)
NOT_FOUND = Outcome(Kind.FAILED, 404, None, None, "req-n", reason="404")
HELD = Outcome(Kind.HELD, reason="timeout after send", elapsed=30.0)
THROTTLED = Outcome(Kind.RETRY, 429, "APIG.0308", "throttled", "req-t", retry_after=2.0)
ACCEPTED = Outcome(Kind.DONE, 200, request_id="req-ok", reason="accepted", elapsed=0.05)

MANIFEST = f"""version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"

[[window]]
job_name = "ods_orders"
begin = {BEGIN}
end = {BEGIN + 5 * 3_600_000}
chunk = "1h"
concurrent = 4
jobs = [{{ job_name = "dwd_orders", workspace_id = "{WS}" }}]

[[instances]]
job_name = "ods_payments"
batch = 3
items = [
  {{ job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 }},
  {{ job_id = 2, plan_time = 1732601580000, submit_time = 1732239754684 }},
  {{ job_id = 3, plan_time = 1732601580000, submit_time = 1732239754684 }},
  {{ job_id = 4, plan_time = 1732601580000, submit_time = 1732239754684 }},
]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=250, color_system=None, force_terminal=False), buffer


def run_journal(path: Path, script: Callable[[Journal], Any]) -> None:
    async def main() -> None:
        with Journal.open(path, BINDING, tool_version="0.1.0") as journal:
            await script(journal)
            await journal.flush()

    anyio.run(main)


def one_request(path: Path, outcome: Outcome, state: str) -> None:
    """A journal at ``path`` of one window request, sent once, with ``outcome``."""
    chunk = _window_chunk(0)

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, outcome, T0 + 1, state)

    run_journal(path, script)


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Path, list[Chunk]]:
    manifest = tmp_path / "backfill.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    return manifest, list(plan(load_manifest(manifest)))


@pytest.fixture
def journal_path(tmp_path: Path, planned: tuple[Path, list[Chunk]]) -> Path:
    """A journal of the manifest above, one run: window chunks 0..4 done / failed / held /
    throttled-then-done / never sent; instance batch [1, 2, 3] sent with no outcome (the
    run was killed), instance 4 never sent."""
    manifest_path, chunks = planned
    w0, w1, w2, w3, _w4, batch123, _batch4 = chunks
    path = tmp_path / "journal"
    manifest = load_manifest(manifest_path)

    async def script(j: Journal) -> None:
        j.begin_run(
            RunInfo.from_manifest(
                manifest_path, instance_files=manifest.files, pending=len(chunks)
            ),
            wall=T0,
        )
        await j.intend(w0, 1, T0 + 1)
        j.outcome(w0, 1, ACCEPTED, T0 + 2, "done")
        await j.intend(w1, 1, T0 + 2)
        j.outcome(w1, 1, FAILED, T0 + 3, "failed")
        await j.intend(w2, 1, T0 + 3)
        j.outcome(w2, 1, HELD, T0 + 4, "held")
        await j.intend(w3, 1, T0 + 4)
        j.outcome(w3, 1, THROTTLED, T0 + 5, "retry")
        await j.intend(w3, 2, T0 + 7)
        j.outcome(w3, 2, ACCEPTED, T0 + 8, "done")
        await j.intend(batch123, 1, T0 + 9)  # killed before the outcome

    run_journal(path, script)
    return path


def test_status_counts_units_and_says_what_to_do(journal_path: Path) -> None:
    summary = status(journal_path)
    assert (summary.done, summary.failed, summary.held, summary.pending) == (2, 1, 4, 2)
    assert summary.failed_by_code == {"DLF.1000": 1}
    assert (summary.requests, summary.attempts, summary.accepted, summary.runs) == (5, 6, 2, 1)
    assert summary.first_wall == T0 + 1
    assert summary.last_wall == T0 + 9
    assert summary.active_seconds == pytest.approx(9.0)
    assert summary.rate == pytest.approx(2 / 9.0)
    steps = "\n".join(summary.next_steps)
    assert f"--journal {journal_path}" in steps
    assert "backfill.toml" in steps
    assert "--resend-held" in steps
    assert f"bulkrerun verify {journal_path}" in steps
    assert "--retry-failed" in steps
    assert "2 units not yet sent" in steps


def test_the_steps_for_one_held_unit_speak_of_it_in_the_singular(tmp_path: Path) -> None:
    one_request(tmp_path / "j", HELD, "held")
    steps = summarize(tmp_path / "j", read_state(tmp_path / "j")[1], pending=0).next_steps
    assert steps[0].startswith("decide the 1 unit held from the instances' live state: ")
    assert steps[1].startswith("or resend it (it may then run twice): ")


@pytest.mark.parametrize(("watch", "active"), [(False, 5.0), (True, 1.05)])
def test_status_rate_counts_a_run_until_its_end_unless_it_watched(
    tmp_path: Path, planned: tuple[Path, list[Chunk]], watch: bool, active: float
) -> None:
    """A run paced at 0.2/s and stopped by Ctrl-C 5 s in, after its first request, was
    active 5 s: said as 47.6 requests/s over 0.0 s active, it read as the pacing broken.
    A run's end closes its active time, unless the time since is the watch's."""
    manifest_path, chunks = planned
    path = tmp_path / "journal"

    async def script(j: Journal) -> None:
        j.begin_run(
            RunInfo.from_manifest(manifest_path, options={"watch": watch}, pending=len(chunks)),
            wall=T0,
        )
        await j.intend(chunks[0], 1, T0 + 1)
        j.outcome(chunks[0], 1, ACCEPTED, T0 + 1.05, "done")
        j.end_run(130, "interrupted", "SIGINT", wall=T0 + 5)

    run_journal(path, script)
    summary = status(path)
    assert summary.active_seconds == pytest.approx(active)
    assert summary.rate == pytest.approx(1 / active)


def test_a_runs_closing_summary_shows_its_times_as_status_reads_them_back(
    tmp_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    # The journal keeps times to the millisecond, rounded; the closing summary of a run
    # (from its live state) cut them instead: ...08.483Z there, ...08.484Z in status.
    manifest_path, chunks = planned
    path = tmp_path / "journal"
    states = []

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest_path, pending=len(chunks)), wall=T0)
        await j.intend(chunks[0], 1, T0 + 1.4836)
        j.outcome(chunks[0], 1, ACCEPTED, T0 + 1.9997, "done")
        states.append(j.state())

    run_journal(path, script)
    live = status_json(summarize(path, states[0], pending=0))
    replayed = status_json(status(path))
    assert (live["first_time"], live["last_time"]) == (
        "2024-11-26T05:46:41.484Z",
        "2024-11-26T05:46:42.000Z",
    )
    assert (replayed["first_time"], replayed["last_time"]) == (
        live["first_time"],
        live["last_time"],
    )


def test_while_a_run_writes_only_its_own_unanswered_requests_are_in_flight(
    journal_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    # Run 1 was killed with batch [1, 2, 3] unanswered: held. Run 2 has sent window 4.
    manifest_path, chunks = planned
    w4 = chunks[4]

    async def second_run(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest_path), wall=T0 + 100)
        await j.intend(w4, 1, T0 + 101)

    run_journal(journal_path, second_run)
    _, state = read_state(journal_path)
    run_pid = state.runs[-1].pid  # the run record's: this process
    assert run_pid is not None
    live = summarize(journal_path, state, pending=1, holder=Holder(run_pid))
    assert (live.held, live.in_flight, live.busy, live.holder_pid) == (1 + 3, 1, True, run_pid)
    assert live.next_steps == [
        f"wait for it to end, or stop it (Ctrl-C where it runs, or kill -TERM {run_pid}: a run "
        f"finishes the requests in flight), then ask again: bulkrerun status {journal_path}"
    ]
    # Held by another bulkrerun (a verify, a run still starting): it sends nothing, so what
    # has no answer is held, as when nobody holds the journal.
    for holder in (Holder(run_pid + 1), Holder(None)):
        other = summarize(journal_path, state, pending=1, holder=holder)
        assert (other.held, other.in_flight, other.busy) == (1 + 3 + 1, 0, True)
        assert other.next_steps[0].startswith("wait for it to end")
    ended = summarize(journal_path, state, pending=1)
    assert (ended.held, ended.in_flight, ended.busy, ended.holder_pid) == (5, 0, False, None)
    # The report's rows say the same.
    live_rows = {row.chunk: row for row in report_rows(journal_path, Holder(run_pid))}
    killed, flying = live_rows[chunks[5].id], live_rows[w4.id]
    assert (flying.state, flying.current, flying.reason) == (
        "in flight",
        "in flight",
        "sent; no answer yet",
    )
    assert (killed.state, killed.current) == ("held", "held")
    for holder in (Holder(run_pid + 1), Holder(None), None):
        row = {row.chunk: row for row in report_rows(journal_path, holder)}[w4.id]
        assert (row.state, row.current, row.reason) == (
            "held",
            "held",
            "may have been sent; no outcome recorded",
        )


def test_status_json_has_integer_counts(journal_path: Path) -> None:
    obj = status_json(status(journal_path))
    assert {k: obj[k] for k in ("done", "failed", "held", "pending")} == {
        "done": 2,
        "failed": 1,
        "held": 4,
        "pending": 2,
    }
    assert obj["failed_by_code"] == {"DLF.1000": 1}
    assert obj["first_time"] == "2024-11-26T05:46:41.000Z"
    json.dumps(obj)  # serialisable as is


def test_status_when_everything_is_done(tmp_path: Path) -> None:
    one_request(tmp_path / "j", ACCEPTED, "done")
    summary = summarize(tmp_path / "j", read_state(tmp_path / "j")[1], pending=0)
    assert summary.next_steps == ["nothing left to do: every unit is done"]
    assert summary.failed_by_code == {}


def test_render_status_prints_counts_and_escapes_service_text(journal_path: Path) -> None:
    con, buffer = console()
    render_status(summarize(journal_path, read_state(journal_path)[1], pending=None), con)
    text = buffer.getvalue()
    assert "DLF.1000" in text
    assert "?" in text  # pending unknown
    assert "2 of 5 requests accepted" in text
    assert "next:" in text


def test_report_rows_one_per_request_with_its_final_outcome(
    journal_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    chunks = planned[1]
    rows = {row.chunk: row for row in report_rows(journal_path)}
    assert list(rows) == [c.id for c in chunks[:4]] + [chunks[5].id]
    done, failed, held, retried = (rows[c.id] for c in chunks[:4])
    assert (done.state, done.status, done.request_id, done.attempts) == ("done", 200, "req-ok", 1)
    assert (done.begin_ms, done.end_ms, done.instances) == (BEGIN, BEGIN + 3_599_999, None)
    assert (done.mode, done.entry, done.job_name) == ("window", "window[0]", "ods_orders")
    assert (failed.state, failed.status, failed.error_code) == ("failed", 400, "DLF.1000")
    assert failed.error_msg == FAILED.error_msg
    assert (held.state, held.reason) == ("held", "timeout after send")
    assert (retried.state, retried.attempts, retried.request_id) == ("done", 2, "req-ok")
    killed = rows[chunks[5].id]
    assert (killed.state, killed.current, killed.instances, killed.status) == (
        "held",
        "held",
        3,
        None,
    )
    assert killed.reason == "may have been sent; no outcome recorded"


def test_report_shows_what_units_became_later(tmp_path: Path) -> None:
    chunk = _batch_chunk([1, 2])

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, HELD, T0 + 1, "held")
        j.verified(chunk.units[0], UnitState.DONE, "rerun seen", T0 + 2)
        other = _window_chunk(1)
        await j.intend(other, 1, T0 + 3)
        j.outcome(other, 1, THROTTLED, T0 + 4, "pending")  # 401 came next: run aborted

    run_journal(tmp_path / "j", script)
    first, second = report_rows(tmp_path / "j")
    assert (first.state, first.current) == ("held", "done 1, held 1")
    assert (second.state, second.current) == ("pending", "pending")


def test_report_csv_json_and_table(journal_path: Path) -> None:
    con, table_out = console()
    outputs: dict[str, str] = {}
    for fmt in ("csv", "json", "table"):
        out = io.StringIO()
        n = write_report(journal_path, fmt, out, con)
        assert n == 5
        outputs[fmt] = out.getvalue()
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert tuple(rows[0]) == REPORT_COLUMNS
    assert [r["state"] for r in rows] == ["done", "failed", "held", "done", "held"]
    assert rows[0]["begin"] == "2024-11-26T08:00:00.000Z"
    assert rows[0]["end"] == "2024-11-26T08:59:59.999Z"
    assert rows[1]["error_msg"] == FAILED.error_msg
    objects = [json.loads(line) for line in outputs["json"].splitlines()]
    assert len(objects) == 5
    assert objects[0]["begin_ms"] == BEGIN
    assert objects[4]["instances"] == 3
    assert set(REPORT_COLUMNS) <= set(objects[0])
    assert outputs["table"] == ""  # the table goes to the console
    text = table_out.getvalue()
    assert "5 requests: done 2, failed 1, held 2" in text
    assert "DLF.1000" in text
    assert "[bold]x[/bold]" in text  # printed as is, not taken as markup


def test_no_output_carries_an_authorization_header(journal_path: Path) -> None:
    con, buffer = console()
    render_status(status(journal_path), con)
    print(json.dumps(status_json(status(journal_path))), file=buffer)
    for fmt in ("table", "csv", "json", "manifest"):
        write_report(journal_path, fmt, buffer, con)
    text = buffer.getvalue()
    for name in ("Authorization", "X-Auth-Token", "X-Security-Token", "SDK-HMAC-SHA256"):
        assert name not in text


def test_manifest_of_what_failed_or_is_held_plans_the_same_requests(
    journal_path: Path, planned: tuple[Path, list[Chunk]], tmp_path: Path
) -> None:
    chunks = planned[1]
    out = io.StringIO()
    n = write_report(journal_path, "manifest", out, console()[0])
    assert n == 3  # failed window, held window, the killed batch
    text = out.getvalue()
    tomllib.loads(text)
    again = tmp_path / "again.toml"
    again.write_text(text, encoding="utf-8")
    replanned = list(plan(load_manifest(again)))
    # The window chunks come back with the very ids they had: the journal knows them.
    assert [c.id for c in replanned[:2]] == [chunks[1].id, chunks[2].id]
    assert replanned[0].body == chunks[1].body
    # The batch comes back with the same instances (units), whatever its batching.
    assert replanned[2].units == chunks[5].units
    _, state = read_state(journal_path)
    assert {state.units[u] for c in replanned for u in c.units} <= {
        UnitState.FAILED,
        UnitState.HELD,
    }


def test_a_manifests_header_speaks_only_of_the_states_it_holds(
    tmp_path: Path, journal_path: Path
) -> None:
    # A manifest of refusals alone was told that its held units may have been rerun and to
    # verify them first: it had none, and the verify it named had nothing to check.
    one_request(tmp_path / "refused", FAILED, "failed")
    out = io.StringIO()
    assert write_report(tmp_path / "refused", "manifest", out, console()[0]) == 1
    header = [line for line in out.getvalue().splitlines() if line.startswith("# ")]
    assert not any(w in line for w in ("Held", "verify", "--resend-held") for line in header)
    assert "# With the same journal, failed units need --retry-failed." in header
    one_request(tmp_path / "unknown", HELD, "held")
    out = io.StringIO()
    assert write_report(tmp_path / "unknown", "manifest", out, console()[0]) == 1
    header = [line for line in out.getvalue().splitlines() if line.startswith("# ")]
    verify = f"`bulkrerun verify {tmp_path / 'unknown'}`"
    assert f"# Held units may have been rerun already: check them first with {verify}." in header
    assert "# With the same journal, held units need --resend-held." in header
    out = io.StringIO()
    write_report(journal_path, "manifest", out, console()[0])  # failed and held units
    assert (
        "# With the same journal, failed units need --retry-failed and held units need "
        "--resend-held." in out.getvalue()
    )


def test_manifest_keeps_only_the_units_still_failed_or_held(tmp_path: Path) -> None:
    chunk = _batch_chunk([1, 2, 3])

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, HELD, T0 + 1, "held")
        j.verified(chunk.units[1], UnitState.DONE, "rerun seen", T0 + 2)

    run_journal(tmp_path / "j", script)
    out = io.StringIO()
    assert write_report(tmp_path / "j", "manifest", out, console()[0]) == 1
    data = tomllib.loads(out.getvalue())
    (entry,) = data["instances"]
    assert [i["job_id"] for i in entry["items"]] == [1, 3]
    assert entry["batch"] == 2
    assert entry["retry_location"] == "errorNode"


def test_manifest_reads_only_the_requests_that_carry_failed_or_held_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A journal of 100,000 done requests took 650 MB to write a manifest of nothing: the
    # records of every request were read and held, to keep those of a few.
    done = [_window_chunk(i) for i in range(50)]
    failed = _window_chunk(50)

    async def script(j: Journal) -> None:
        for i, chunk in enumerate(done):
            await j.intend(chunk, 1, T0 + i)
            j.outcome(chunk, 1, ACCEPTED, T0 + i, "done")
        await j.intend(failed, 1, T0 + 60)
        j.outcome(failed, 1, FAILED, T0 + 61, "failed")

    run_journal(tmp_path / "j", script)
    read: list[int] = []
    real = report_module.read_records_at

    def counting(path: Path, offsets: Any) -> Any:
        for record in real(path, offsets):
            read.append(1)
            yield record

    monkeypatch.setattr(report_module, "read_records_at", counting)
    out = io.StringIO()
    assert write_report(tmp_path / "j", "manifest", out, console()[0]) == 1
    assert f"chunk {failed.id}: failed" in out.getvalue()
    assert len(read) == 2  # the failed request's intent and outcome


def test_with_nothing_to_rerun_no_manifest_is_written_and_stderr_says_why(
    tmp_path: Path, cli: Cli
) -> None:
    # `plan` refuses a manifest without entries: writing one would end the user's pipeline
    # `report J --format manifest > again.toml && bulkrerun plan again.toml` in its error.
    one_request(tmp_path / "j", ACCEPTED, "done")
    out, err = io.StringIO(), io.StringIO()
    assert write_report(tmp_path / "j", "manifest", out, console()[0], err=err) == 0
    assert out.getvalue() == ""
    assert f"nothing failed or is held in the journal {tmp_path / 'j'}" in err.getvalue()
    done = cli("report", str(tmp_path / "j"), "--format", "manifest")
    assert (done.returncode, done.stdout) == (0, "")
    assert "nothing to rerun, so no manifest was written" in done.stderr


def test_pending_is_counted_from_the_journals_copy_of_the_manifest(
    journal_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    manifest_path, chunks = planned
    _, state = read_state(journal_path)
    # Window chunk 4 and instance 4 were never sent.
    assert count_pending(state, chunks) == 2
    assert not_sent_by_manifest(state) == (2, None, [])
    # What the file says now does not matter: the run's manifest is the journal's copy.
    manifest_path.write_text(MANIFEST.replace("5 * 3_600_000", "6 * 3_600_000") + "\n")
    assert not_sent_by_manifest(state) == (2, None, [])
    manifest_path.unlink()
    assert not_sent_by_manifest(state) == (2, None, [])


def test_pending_is_counted_without_writing_anything(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # status reads: a full or read-only temporary folder must not stop it from counting.
    _, state = read_state(journal_path)
    monkeypatch.setattr(tempfile, "tempdir", str(journal_path.parent / "no-such-folder"))
    assert not_sent_by_manifest(state) == (2, None, [])


def test_pending_without_a_run_is_unknown(tmp_path: Path) -> None:
    run_journal(tmp_path / "j", _nothing)
    assert not_sent_by_manifest(read_state(tmp_path / "j")[1]) == (None, None, [])
    assert status(tmp_path / "j").pending is None


# -- not yet sent: from the journal's copy of the manifest, in one read ----------------------

FILE_MANIFEST = """version = 1

[defaults]
workspace = "WS"
retry_location = "errorNode"
retry_task_version = "original_version"

[[window]]
job_name = "ods_orders"
begin = 2024-11-26T16:00:00+08:00
end = 2024-11-26T19:00:00+08:00
chunk = "1h"

[[instances]]
job_name = "ods_payments"
batch = 2
file = "FILE"
""".replace("WS", WS)

INSTANCES_CSV = "job_id,plan_time,submit_time\n" + "".join(
    f"{j},1732601580000,1732239754684\n" for j in range(1, 6)
)


def run_from_manifest(journal: Path, manifest: Path, sent: int) -> list[Chunk]:
    """Record a run of ``manifest`` (named as given, as ``bulkrerun run`` records it) that
    sent the first ``sent`` requests of its plan: the first accepted, the others refused.
    Returns the plan."""
    loaded = load_manifest(manifest)
    chunks = list(plan(loaded))

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest, instance_files=loaded.files), wall=T0)
        for i, chunk in enumerate(chunks[:sent]):
            await j.intend(chunk, 1, T0 + i)
            if i == 0:
                j.outcome(chunk, 1, ACCEPTED, T0 + i, "done")
            else:
                j.outcome(chunk, 1, FAILED, T0 + i, "failed")

    run_journal(journal, script)
    return chunks


@pytest.mark.parametrize("file", ["failed.csv", "data/failed.csv", "../shared/failed.csv"])
def test_pending_is_counted_from_any_folder_whatever_became_of_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str
) -> None:
    # The run started in ops/ with `bulkrerun run configs/backfill.toml`: the journal has the
    # manifest's name relative to ops/, and the instance file as the manifest resolved it.
    ops = tmp_path / "ops"
    manifest = ops / "configs" / "backfill.toml"
    instances = (manifest.parent / file).resolve()
    instances.parent.mkdir(parents=True, exist_ok=True)
    instances.write_text(INSTANCES_CSV, encoding="utf-8")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(FILE_MANIFEST.replace("FILE", file), encoding="utf-8")
    monkeypatch.chdir(ops)
    chunks = run_from_manifest(tmp_path / "j", Path("configs/backfill.toml"), sent=4)
    units = sum(len(c.units) for c in chunks)
    assert units == 3 + 5
    # A window chunk done, two window chunks and the first batch of 2 instances failed.
    expected = {"done": 1, "failed": 4, "held": 0, "pending": 3}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with manifest.open("a", encoding="utf-8") as f:
        f.write("# looked at again after the run\n")
    for _ in ("edited", "deleted"):
        obj = status_json(status(tmp_path / "j"))
        assert {k: obj[k] for k in expected} == expected
        assert obj["pending_unknown"] is None
        manifest.unlink(missing_ok=True)


# `bulkrerun status JOURNAL` run from a folder that it removes before it starts.
IN_A_REMOVED_FOLDER = """
import os, runpy, sys
os.rmdir(os.getcwd())
sys.argv = ["bulkrerun", "status", sys.argv[1]]
runpy.run_module("bulkrerun", run_name="__main__")
"""


@pytest.mark.xfail(
    (3, 13) <= sys.version_info < (3, 13, 3),
    reason="CPython gh-130932: on 3.13.0-3.13.2 a missing module attribute in a removed "
    "folder is a SystemError, and `import socket` meets one",
    strict=True,
)
def test_status_in_a_removed_folder_names_the_manifest_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    # The run was started in tmp_path as `bulkrerun run backfill.toml`; status is asked in a
    # folder since removed, where os.getcwd() fails and the relative name leads nowhere.
    (tmp_path / "failed.csv").write_text(INSTANCES_CSV, encoding="utf-8")
    manifest = tmp_path / "backfill.toml"
    manifest.write_text(FILE_MANIFEST.replace("FILE", "failed.csv"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    run_from_manifest(tmp_path / "j", Path("backfill.toml"), sent=1)
    removed = tmp_path / "removed"
    removed.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", IN_A_REMOVED_FOLDER, str(tmp_path / "j")],
        capture_output=True,
        text=True,
        env=cli.env(),
        cwd=removed,
        timeout=60,
        check=False,
    )
    assert not removed.exists()
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    assert f"bulkrerun run {manifest} --journal {tmp_path / 'j'}" in out.stdout


def test_pending_is_unknown_while_an_instance_file_is_missing_or_changed(tmp_path: Path) -> None:
    manifest = tmp_path / "backfill.toml"
    manifest.write_text(FILE_MANIFEST.replace("FILE", "data/failed.csv"), encoding="utf-8")
    instances = tmp_path / "data" / "failed.csv"
    instances.parent.mkdir()
    instances.write_text(INSTANCES_CSV, encoding="utf-8")
    run_from_manifest(tmp_path / "j", manifest, sent=1)

    instances.rename(tmp_path / "kept.csv")
    summary = status(tmp_path / "j")
    assert summary.pending is None
    step = summary.next_steps[0]
    assert f"the instance file {instances} (instances[0]) that run 1 read is missing" in step
    assert step.endswith(f"bulkrerun run {manifest} --journal {tmp_path / 'j'}")
    con, buffer = console()
    render_status(summary, con)
    assert "?" in buffer.getvalue()
    assert str(instances) in buffer.getvalue()

    instances.write_text(INSTANCES_CSV.replace("\n5,", "\n6,"), encoding="utf-8")
    summary = status(tmp_path / "j")
    assert summary.pending is None
    assert f"{instances} (instances[0]) changed since run 1 read it" in summary.next_steps[0]
    assert status_json(summary)["pending_unknown"] == summary.pending_unknown

    # A directory, or a pipe, in its place: said as such (a pipe's open would wait for a
    # writer), not "missing" or "changed".
    instances.unlink()
    for replace in (os.mkdir, os.mkfifo):
        replace(instances)
        summary = status(tmp_path / "j")
        assert summary.pending is None
        assert (
            f"the instance file {instances} (instances[0]) that run 1 read cannot be read (it "
            "is no longer a regular file)" in summary.next_steps[0]
        )
        (os.rmdir if instances.is_dir() else os.unlink)(instances)

    (tmp_path / "kept.csv").replace(instances)  # back as it was: counted again
    assert status(tmp_path / "j").pending == 3 + 5 - 1


SELECT_MANIFEST = f"""version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"

[[select]]
job_name = "ods_payments"
begin = "2024-11-26T02:00:00+08:00"
end = "2024-11-26T06:00:00+08:00"
batch = 2
"""


def test_pending_of_a_select_entry_comes_from_the_selection_recorded(tmp_path: Path) -> None:
    manifest = tmp_path / "outage.toml"
    manifest.write_text(SELECT_MANIFEST, encoding="utf-8")
    found = [("ods_payments", j, 1_732_601_580_000, 1_732_239_754_684) for j in range(1, 6)]
    selected = {"select[0]": [SelectedInstance(*item) for item in found]}
    chunks = list(plan(load_manifest(manifest), selections=selected))
    assert [len(c.units) for c in chunks] == [2, 2, 1]

    async def script(j: Journal) -> None:
        info = RunInfo.from_manifest(manifest, selections={"select[0]": found})
        j.begin_run(info, wall=T0)
        await j.intend(chunks[0], 1, T0 + 1)
        j.outcome(chunks[0], 1, ACCEPTED, T0 + 2, "done")

    run_journal(tmp_path / "j", script)
    # The service would answer otherwise now, and the entry was edited: neither counts.
    manifest.write_text(SELECT_MANIFEST.replace("06:00", "05:00"), encoding="utf-8")
    summary = status(tmp_path / "j")
    assert (summary.done, summary.pending) == (2, 3)

    async def unrecorded(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0)

    run_journal(tmp_path / "j2", unrecorded)
    summary = status(tmp_path / "j2")
    assert summary.pending is None
    assert "the instances select[0] selected in run 1 are not recorded" in summary.next_steps[0]


def test_status_counts_from_one_read_so_its_numbers_add_up_during_a_run(
    journal_path: Path, planned: tuple[Path, list[Chunk]], monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = planned[1]
    unsent = [chunks[4], chunks[6]]  # window chunk 4, the batch of instance 4
    read_state_now = report_module.read_state

    def read_while_the_run_goes_on(path: Path, **kwargs: Any) -> Any:
        read = read_state_now(path, **kwargs)
        if unsent:  # meanwhile the run sends the next request, and it is accepted
            chunk = unsent.pop(0)

            async def script(j: Journal) -> None:
                await j.intend(chunk, 1, T0 + 20)
                j.outcome(chunk, 1, ACCEPTED, T0 + 21, "done")

            run_journal(path, script)
        return read

    monkeypatch.setattr(report_module, "read_state", read_while_the_run_goes_on)
    summary = status(journal_path)
    assert (summary.done, summary.failed, summary.held, summary.pending) == (2, 1, 4, 2)
    assert summary.done + summary.failed + summary.held + summary.pending == sum(
        len(c.units) for c in chunks
    )


def test_status_from_another_folder_through_the_cli(
    tmp_path: Path, cli: Cli, fake_service: Callable[..., Service]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "failed.csv").write_text(INSTANCES_CSV, encoding="utf-8")
    manifest = tmp_path / "m.toml"
    manifest.write_text(FILE_MANIFEST.replace("FILE", "data/failed.csv"), encoding="utf-8")
    # The service refuses the key: the run stops at its first answers, nothing sent. (An
    # unreachable port stops it too, but only after eight connections and their backoff.)
    srv = fake_service()
    refused = cli.env(srv.url, BULKRERUN_SK="not-the-secret-key-0123456789abcd")
    out = cli("run", "m.toml", "--journal", "run.journal", "--rate", "100", env=refused)
    assert out.returncode == 3, out.stderr
    assert srv.ledger() == []
    with manifest.open("a", encoding="utf-8") as f:
        f.write("# edited after the run\n")
    (tmp_path / "elsewhere").mkdir()
    out = Cli(tmp_path / "elsewhere")("status", str(tmp_path / "run.journal"), "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert {k: obj[k] for k in ("done", "failed", "held", "pending")} == {
        "done": 0,
        "failed": 0,
        "held": 0,
        "pending": 3 + 5,
    }
    # The commands it gives work from there: the manifest named where it is, not as typed
    # (after the step that says to fix the credentials first).
    journal = tmp_path / "run.journal"
    assert obj["next_steps"][0].startswith("first fix what the service refused")
    assert obj["next_steps"][1].endswith(
        f": bulkrerun run {manifest} --journal {journal} --rate 100"
    )
    here = json.loads(cli("status", "run.journal", "--json").stdout)
    assert here["next_steps"][1].endswith(": bulkrerun run m.toml --journal run.journal --rate 100")


# -- verification: how held units were decided --------------------------------------------


@pytest.mark.anyio
async def test_the_report_shows_how_a_verification_decided_held_units(tmp_path: Path) -> None:
    # A run against the fake service, which drops connections after accepting; then verify.
    async with world(tmp_path, drop_after_accept=0.5, seed=4) as w:
        with w.open_journal() as journal:
            await w.send_each_once(journal)
            await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
    rows = list(report_rows(w.journal_path))
    held = [r for r in rows if r.state == "held"]
    assert held and len(held) < len(rows)
    for row in rows:
        if row.state == "held":
            assert (row.current, row.verify_state) == ("done", "done")
            assert row.reason is not None and "connection lost" in row.reason  # kept as is
            assert row.verify_evidence is not None
            assert "after our request" in row.verify_evidence
        else:
            assert (row.verify_state, row.verify_evidence) == (None, None)
    batch = next(r for r in held if (r.instances or 0) > 1)
    assert batch.verify_evidence is not None
    assert batch.verify_evidence.count(" | ") == (batch.instances or 0) - 1  # one per instance

    con, table = console()
    outputs = {}
    for fmt in ("csv", "json", "table"):
        buffer = io.StringIO()
        write_report(w.journal_path, fmt, buffer, con)
        outputs[fmt] = buffer.getvalue()
    by_chunk = {r["chunk"]: r for r in csv.DictReader(io.StringIO(outputs["csv"]))}
    objects = {o["chunk"]: o for o in map(json.loads, outputs["json"].splitlines())}
    for row in held:
        assert by_chunk[row.chunk]["verify_state"] == objects[row.chunk]["verify_state"] == "done"
        assert by_chunk[row.chunk]["verify_evidence"] == row.verify_evidence
        assert objects[row.chunk]["verify_evidence"] == row.verify_evidence
    assert {by_chunk[r.chunk]["verify_state"] for r in rows if r.state == "done"} == {""}
    text = table.getvalue()
    assert "verified" in text.splitlines()[0]
    window = next(r for r in held if r.mode == "window")
    (line,) = (x for x in text.splitlines() if x.startswith(window.chunk[:12] + " "))
    # tries (the one send's outcome unknown), state, now, verified
    assert re.search(r" 1 \(1 unknown\) +held +done +done +window ", line)
    # The closing count says both: what the requests' answers were, and what their units
    # are now, which status counts (a footer of held ones read as work left).
    done = len(rows) - len(held)
    assert text.splitlines()[-1] == (
        f"{len(rows)} requests: done {done}, held {len(held)}; their units now: done {len(rows)}"
    )
    assert {(r.state, r.unknown_sends) for r in rows} == {("held", 1), ("done", 0)}
    assert {by_chunk[r.chunk]["unknown_sends"] for r in held} == {"1"}
    assert {objects[r.chunk]["unknown_sends"] for r in rows} == {0, 1}
    assert "connection lost" not in line  # the message is the evidence, not the reason


def test_each_row_names_the_run_that_made_its_last_attempt(
    tmp_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    """An incident's review reads which run sent what: the run's record in the journal names
    its manifest, flags and start."""
    manifest, chunks = planned
    first, again, later = chunks[:3]
    refused = Outcome(Kind.FAILED, 400, "DLF.1000", "Failed to find the job.", "req-no")

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0)
        await j.intend(first, 1, T0 + 1)
        j.outcome(first, 1, ACCEPTED, T0 + 2, "done")
        await j.intend(again, 1, T0 + 1)
        j.outcome(again, 1, refused, T0 + 2, "failed")
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0 + 60)  # --retry-failed
        await j.intend(again, 2, T0 + 61)
        j.outcome(again, 2, ACCEPTED, T0 + 62, "done")
        await j.intend(later, 1, T0 + 61)
        j.outcome(later, 1, ACCEPTED, T0 + 62, "done")

    run_journal(tmp_path / "j", script)
    runs = {row.chunk: row.run for row in report_rows(tmp_path / "j")}
    assert runs == {first.id: 1, again.id: 2, later.id: 2}
    buffer = io.StringIO()
    write_report(tmp_path / "j", "csv", buffer, console()[0])
    assert {r["chunk"]: r["run"] for r in csv.DictReader(io.StringIO(buffer.getvalue()))} == {
        first.id: "1",
        again.id: "2",
        later.id: "2",
    }
    buffer = io.StringIO()
    write_report(tmp_path / "j", "json", buffer, console()[0])
    assert [json.loads(line)["run"] for line in buffer.getvalue().splitlines()] == [1, 2, 2]


def test_the_request_ids_of_sends_whose_outcome_is_unknown_are_kept(
    tmp_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    """A ticket asking whether a request ran twice needs the id of the send that was held
    (a gateway's 504), not only the last attempt's."""
    manifest, chunks = planned
    chunk, other, odd = chunks[:3]
    timeout = Outcome(Kind.HELD, 504, "APIG.0201", "Backend timeout.", "req-504", reason="5xx")
    quoted = timeout._replace(request_id='req-"504"\\')  # written escaped
    dropped = Outcome(Kind.HELD, reason="connection lost after sending (ServerDisconnectedError)")
    live: dict[str, list[str]] = {}

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0)
        await j.intend(chunk, 1, T0 + 1)
        j.outcome(chunk, 1, timeout, T0 + 2, "held")
        await j.intend(other, 1, T0 + 1)
        j.outcome(other, 1, dropped, T0 + 2, "held")  # no answer, so no id
        await j.intend(odd, 1, T0 + 1)
        j.outcome(odd, 1, quoted, T0 + 2, "held")
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0 + 60)  # --resend-held
        await j.intend(chunk, 2, T0 + 61)
        j.outcome(chunk, 2, ACCEPTED, T0 + 62, "done")
        live.update(j.state().unknown_ids)

    run_journal(tmp_path / "j", script)
    assert live == {chunk.id: ["req-504"], odd.id: ['req-"504"\\']}
    rows = {row.chunk: row for row in report_rows(tmp_path / "j")}  # replayed from the file
    assert (rows[chunk.id].request_id, rows[chunk.id].unknown_request_ids) == (
        "req-ok",
        ("req-504",),
    )
    assert (rows[other.id].unknown_sends, rows[other.id].unknown_request_ids) == (1, ())
    assert rows[odd.id].unknown_request_ids == ('req-"504"\\',)
    buffer = io.StringIO()
    write_report(tmp_path / "j", "csv", buffer, console()[0])
    cells = {
        r["chunk"]: r["unknown_request_ids"] for r in csv.DictReader(io.StringIO(buffer.getvalue()))
    }
    assert cells == {chunk.id: "req-504", other.id: "", odd.id: 'req-"504"\\'}
    buffer = io.StringIO()
    write_report(tmp_path / "j", "json", buffer, console()[0])
    lists = {
        o["chunk"]: o["unknown_request_ids"]
        for o in map(json.loads, buffer.getvalue().splitlines())
    }
    assert lists == {chunk.id: ["req-504"], other.id: [], odd.id: ['req-"504"\\']}


def test_the_verification_of_each_unit_of_a_request_is_tallied_with_its_evidence(
    tmp_path: Path,
) -> None:
    batch, window = _batch_chunk([1, 2, 3]), _window_chunk(0)

    async def script(j: Journal) -> None:
        await j.intend(batch, 1, T0)
        j.outcome(batch, 1, HELD, T0 + 1, "held")
        await j.intend(window, 1, T0 + 1)  # killed before the outcome
        j.verified(batch.units[0], UnitState.DONE, "job 1: shows a run after ours", T0 + 9)
        j.verified(batch.units[1], None, "job 2: still shows the run: not rerun", T0 + 9)
        j.verified(window.id, None, "window: all 4 instances ended before ours", T0 + 9)

    run_journal(tmp_path / "j", script)
    first, second = report_rows(tmp_path / "j")
    assert (first.state, first.current) == ("held", "done 1, held 1, pending 1")
    assert first.verify_state == "done 1, pending 1"  # job 3 was not decided
    assert first.verify_evidence == (
        "job 1: shows a run after ours | job 2: still shows the run: not rerun"
    )
    assert (second.state, second.current, second.verify_state) == ("held", "pending", "pending")
    assert second.verify_evidence == "window: all 4 instances ended before ours"


def test_a_verification_no_longer_shows_once_a_later_request_decided_the_unit(
    tmp_path: Path,
) -> None:
    chunk = _window_chunk(0)

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, HELD, T0 + 1, "held")
        j.verified(chunk.id, None, "window: not rerun", T0 + 9)
        await j.intend(chunk, 2, T0 + 10)  # the next run sends it again
        j.outcome(chunk, 2, ACCEPTED, T0 + 11, "done")

    run_journal(tmp_path / "j", script)
    (row,) = report_rows(tmp_path / "j")
    assert (row.state, row.current, row.attempts) == ("done", "done", 2)
    assert (row.verify_state, row.verify_evidence) == (None, None)


# -- CSV: text a spreadsheet would run ------------------------------------------------------


def test_csv_cells_a_spreadsheet_would_run_as_formulas_start_with_a_quote(
    tmp_path: Path,
) -> None:
    payload = "=cmd|' /C calc'!A0"
    messages = ["+SUM(1,2)", "-2+3", "@SUM(A1)", "\t=1+1", "plain = text"]
    chunks = [_window_chunk(i, job=payload) for i in range(len(messages))]

    async def script(j: Journal) -> None:
        for chunk, message in zip(chunks, messages, strict=True):
            await j.intend(chunk, 1, T0)
            refused = Outcome(Kind.FAILED, 400, "DLF.1000", message, "req-f", reason="400")
            j.outcome(chunk, 1, refused, T0 + 1, "failed")

    run_journal(tmp_path / "j", script)
    con = console()[0]
    out = io.StringIO()
    write_report(tmp_path / "j", "csv", out, con)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["job_name"] for r in rows] == ["'" + payload] * len(messages)
    assert [r["error_msg"] for r in rows] == ["'" + m for m in messages[:-1]] + [messages[-1]]
    assert {r["state"] for r in rows} == {"failed"}
    # JSON lines, for scripts, carry the values exactly.
    out = io.StringIO()
    write_report(tmp_path / "j", "json", out, con)
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(o["job_name"], o["error_msg"]) for o in objects] == [(payload, m) for m in messages]


# -- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 120, 160, 260])
def test_the_table_shows_chunk_entry_tries_state_and_status_in_full_at_any_width(
    journal_path: Path, width: int
) -> None:
    rows = list(report_rows(journal_path))
    assert {r.state for r in rows} == {"done", "failed", "held"}
    for soft_wrap in (False, True):  # True: as the CLI prints into a pipe or a file
        buffer = io.StringIO()
        con = Console(file=buffer, width=width, soft_wrap=soft_wrap)
        write_report(journal_path, "table", io.StringIO(), con)
        lines = buffer.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width
        for row in rows:
            (line,) = (line for line in lines if line.startswith(row.chunk[:12] + " "))
            words = line.split()
            assert {row.entry, str(row.attempts), row.state} <= set(words), line
            if row.status is not None:
                assert str(row.status) in words, line
            if row.error_code is not None:
                assert row.error_code in words, line
        if width >= 260:  # room for everything: nothing gives way
            text = buffer.getvalue()
            assert FAILED.error_msg is not None
            assert FAILED.error_msg in text
            assert "2024-11-26T08:00:00Z .. 08:59:59.999Z" in text


@pytest.mark.parametrize("width", [80, 120, 220, 240])
def test_the_span_of_a_row_gives_way_after_the_jobs_and_the_message(
    tmp_path: Path, width: int
) -> None:
    # At 240 columns (make demo's output) an instances row's span lost its last character
    # to a window's list of jobs: "10 instances: 2024-11-25T14:00:00Z .. 16:15…".
    plans = [1_732_543_200_000 + k * 900_000 for k in range(10)]  # 14:00 .. 16:15 UTC
    items = ", ".join(
        f"{{ job_id = {k + 1}, plan_time = {p}, submit_time = {p + 1000} }}"
        for k, p in enumerate(plans)
    )
    jobs = ", ".join(
        f'{{ job_name = "{name}", workspace_id = "{WS}" }}'
        for name in ("dwd_payments", "dws_payments_15m", "ads_payments_daily")
    )
    manifest_path = write_manifest(
        tmp_path / "m.toml",
        f'[[instances]]\njob_name = "ods_orders"\nbatch = 10\nitems = [{items}]\n'
        f'[[window]]\njob_name = "ods_payments"\nbegin = {BEGIN}\nend = {BEGIN + 900_000}\n'
        f'chunk = "15m"\njobs = [{jobs}]\n'
        f'[[instances]]\njob_name = "ods_legacy_feed"\nitems = [{{ job_id = 1, '
        f"plan_time = {BEGIN}, submit_time = {BEGIN} }}]\n",
    )
    batch, window, refused = plan(load_manifest(manifest_path))
    request_id = "00000000000000eb75259becdb89fb74"  # as long as the service's
    done = Outcome(Kind.DONE, 200, request_id=request_id, reason="accepted")
    failed = Outcome(Kind.FAILED, 400, "DLF.1000", "Failed to find the job.", request_id)

    async def script(j: Journal) -> None:
        for chunk, outcome, state in ((batch, done, "done"), (window, done, "done")):
            await j.intend(chunk, 1, T0)
            j.outcome(chunk, 1, outcome, T0 + 1, state)
        await j.intend(refused, 1, T0)
        j.outcome(refused, 1, failed, T0 + 1, "failed")

    run_journal(tmp_path / "j", script)
    buffer = io.StringIO()
    write_report(tmp_path / "j", "table", io.StringIO(), Console(file=buffer, width=width))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    (row,) = (line for line in lines if line.startswith(batch.id[:12] + " "))
    assert {"instances[0]", "done", "200"} <= set(row.split()), row
    if width >= 220:  # the jobs and the message give way first, and have room to
        assert "10 instances: 2024-11-25T14:00:00Z .. 16:15:00Z " in row
        (row,) = (line for line in lines if line.startswith(window.id[:12] + " "))
        assert "2024-11-26T08:00:00Z .. 08:14:59.999Z " in row
        assert " ods_payments + dwd_pay" in row


def test_a_table_of_many_rows_is_not_rendered_cell_by_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through rich's Table, every cell was rendered on its own, about a millisecond a row:
    # the table of a journal of 96,000 requests took 112 s, its CSV 9 s.
    chunks = [_window_chunk(i) for i in range(600)]  # more than one block of rows

    async def script(j: Journal) -> None:
        for i, chunk in enumerate(chunks):
            await j.intend(chunk, 1, T0 + i)
            j.outcome(chunk, 1, ACCEPTED, T0 + i, "done")

    run_journal(tmp_path / "j", script)
    renders = 0
    real = Console.render

    def counting(self: Console, *args: Any, **kwargs: Any) -> Any:
        nonlocal renders
        renders += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Console, "render", counting)
    con, buffer = console()
    assert write_report(tmp_path / "j", "table", io.StringIO(), con) == 600
    assert renders < 20  # a few per block of rows, not one per cell
    lines = buffer.getvalue().splitlines()
    assert [line.split()[0] for line in lines if line.startswith("chunk")] == ["chunk"]
    assert [line[:12] for line in lines[1:-1]] == [c.id[:12] for c in chunks]
    assert lines[-1] == "600 requests: done 600"


def test_the_columns_of_a_long_table_stay_under_their_names_from_block_to_block(
    tmp_path: Path,
) -> None:
    """Each block of rows is laid out on its own: a column empty in a later block (held
    requests have no status nor request id) kept no width there, and the columns after it
    slid left, away from their names in the header. They keep their widths now."""
    chunks = [_window_chunk(i) for i in range(600)]  # a block of 500, then one of 100

    async def script(j: Journal) -> None:
        for i, chunk in enumerate(chunks):  # the first block ends with a held one
            await j.intend(chunk, 1, T0 + i)
            held = i >= 499
            j.outcome(chunk, 1, HELD if held else ACCEPTED, T0 + i, "held" if held else "done")

    run_journal(tmp_path / "j", script)
    con, buffer = console()
    assert write_report(tmp_path / "j", "table", io.StringIO(), con) == 600
    header, *rows, _ = buffer.getvalue().splitlines()
    state, message = header.index("state"), header.index("message")
    assert [row[state : state + 4] for row in rows] == ["done"] * 499 + ["held"] * 101
    assert {row[message:].split()[0] for row in rows} == {"accepted", "timeout"}


# -- helpers ------------------------------------------------------------------------------


async def _nothing(_journal: Journal) -> None:
    return None


def _window_chunk(i: int, job: str = "ods_orders") -> Chunk:
    body = canonical_json(
        {
            "begin_time": BEGIN + i * 3_600_000,
            "concurrent": 1,
            "end_time": BEGIN + (i + 1) * 3_600_000 - 1,
            "ignore_obs_monitor": True,
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
        }
    )
    cid = chunk_id(job, WS, body)
    return Chunk(cid, "window", "window[0]", job, WS, body, (cid,))


def _batch_chunk(job_ids: list[int]) -> Chunk:
    items = [
        {"job_id": j, "plan_time": 1_732_601_580_000, "submit_time": 1_732_239_754_684}
        for j in job_ids
    ]
    body = canonical_json(
        {
            "ignore_obs_monitor": True,
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
            "task_retrys": items,
        }
    )
    units = tuple(
        instance_unit_id("ods_payments", j, 1_732_601_580_000, 1_732_239_754_684) for j in job_ids
    )
    return Chunk(
        chunk_id("ods_payments", WS, body),
        "instances",
        "instances[0]",
        "ods_payments",
        WS,
        body,
        units,
    )


def test_a_verification_still_shows_after_an_attempt_that_was_not_sent(tmp_path: Path) -> None:
    from bulkrerun.engine import NOT_SENT

    chunk = _window_chunk(0)

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, HELD, T0 + 1, "held")
        j.verified(chunk.id, None, "window: not rerun", T0 + 9)
        await j.intend(chunk, 2, T0 + 10)  # the next run stopped before this one left
        j.outcome(chunk, 2, NOT_SENT, T0 + 11, "pending")

    run_journal(tmp_path / "j", script)
    (row,) = report_rows(tmp_path / "j")
    assert row.current == "pending"
    assert (row.verify_state, row.verify_evidence) == ("pending", "window: not rerun")


def test_an_attempt_that_was_not_sent_is_not_counted_as_one(tmp_path: Path) -> None:
    from bulkrerun.engine import NOT_SENT

    sent, stopped = _window_chunk(0), _window_chunk(1)
    states: list[tuple[int, int]] = []

    async def script(j: Journal) -> None:
        await j.intend(sent, 1, T0)
        j.outcome(sent, 1, HELD, T0 + 1, "held")
        await j.intend(sent, 1, T0 + 10)  # the next run: sent again, the service refused it
        j.outcome(sent, 1, THROTTLED, T0 + 11, "retry")
        await j.intend(sent, 2, T0 + 12)  # then the run stopped before this one left
        j.outcome(sent, 2, NOT_SENT, T0 + 13, "pending")
        await j.intend(stopped, 1, T0 + 12)
        j.outcome(stopped, 1, NOT_SENT, T0 + 13, "pending")
        live = j.state()
        states.append((live.attempts, live.chunks[sent.id].attempts))

    path = tmp_path / "j"
    run_journal(path, script)
    _, replayed = read_state(path)
    states.append((replayed.attempts, replayed.chunks[sent.id].attempts))
    assert states == [(2, 2), (2, 2)]  # as the journal ran, and read again
    assert status(path).attempts == 2
    assert status(path).requests == 1  # the other one never left
    rows = {row.chunk: row for row in report_rows(path)}
    assert rows[sent.id].attempts == 2
    assert rows[sent.id].current == "held"  # by the first send, which nothing answered


def test_a_run_without_live_details_does_not_count_a_request_that_never_left(
    tmp_path: Path,
) -> None:
    # As a run keeps its journal: the requests it adds are only counted, not described.
    from bulkrerun.engine import NOT_SENT

    sent, stopped = _window_chunk(0), _window_chunk(1)
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        path = tmp_path / "j"
        with Journal.open(path, BINDING, tool_version="0.1.0", live_details=False) as j:
            await j.intend(sent, 1, T0)
            j.outcome(sent, 1, ACCEPTED, T0 + 1, "done")
            await j.intend(stopped, 1, T0 + 2)
            j.outcome(stopped, 1, NOT_SENT, T0 + 3, "pending")
            await j.flush()
            seen.append((j.state().requests, j.state().attempts))

    anyio.run(main)
    assert seen == [(1, 1)]
    assert (status(tmp_path / "j").requests, status(tmp_path / "j").attempts) == (1, 1)


def test_a_unit_two_manifests_plan_counts_once_and_each_names_what_only_it_plans(
    tmp_path: Path,
) -> None:
    def window(hours: tuple[int, int]) -> str:
        begin, end = (1_732_579_200_000 + h * 3_600_000 for h in hours)
        return f'[[window]]\njob_name = "j"\nbegin = {begin}\nend = {end}\nchunk = "1h"\n'

    first = write_manifest(tmp_path / "first.toml", window((0, 4)))  # hours 0-3
    second = write_manifest(tmp_path / "second.toml", window((2, 6)))  # hours 2-5
    path = tmp_path / "j"

    hour2 = next(iter(plan(load_manifest(second))))

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(first), wall=T0)
        j.begin_run(RunInfo.from_manifest(second), wall=T0 + 1)
        await j.intend(hour2, 1, T0 + 2)
        j.outcome(hour2, 1, FAILED, T0 + 3, "failed")

    run_journal(path, script)
    summary = status(path)
    assert summary.pending == 5  # hours 0-5 but the failed one, the ones they share once
    assert summary.pending_by_manifest == [(str(second), 3), (str(first), 2)]  # 0 and 1
    steps = summary.next_steps
    assert f"send the 3 units not yet sent: bulkrerun run {second}" in steps[0]
    assert steps[1].startswith(f"send the 2 units not yet sent of {first}")
    # The failed unit is sent again through a manifest of exactly what failed or is held,
    # not by either manifest's command.
    (retry,) = [step for step in steps if step.startswith("once the cause is fixed")]
    assert retry.endswith(f"then bulkrerun run retry.toml --journal {path} --retry-failed")


def test_an_earlier_manifest_that_cannot_be_counted_makes_the_total_unknown_not_the_rest(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.csv").write_text(INSTANCES_CSV, encoding="utf-8")
    first = write_manifest(
        tmp_path / "first.toml", '[[instances]]\njob_name = "j"\nfile = "a.csv"\n'
    )
    second = write_manifest(
        tmp_path / "second.toml",
        '[[window]]\njob_name = "j"\nbegin = 1732579200000\nend = 1732586400000\nchunk = "1h"\n',
    )
    path = tmp_path / "j"

    async def script(j: Journal) -> None:
        files = load_manifest(first).files
        j.begin_run(RunInfo.from_manifest(first, instance_files=files), wall=T0)
        j.begin_run(RunInfo.from_manifest(second), wall=T0 + 1)

    run_journal(path, script)
    assert status(path).pending == 2 + 5  # two windows, five instances
    with (tmp_path / "a.csv").open("a", encoding="utf-8") as f:
        f.write("917570,1732601580000,1732239754684\n")
    summary = status(path)
    # Not 2: first.toml may still hold units not yet sent. Its reason is the total's.
    assert summary.pending is None
    ((last, two), (manifest, why)) = summary.pending_by_manifest
    assert (last, two) == (str(second), 2)  # second.toml's, still counted
    assert manifest == str(first) and isinstance(why, str) and "changed since run 1" in why
    assert summary.pending_unknown == why
    assert summary.next_steps[0].startswith(
        f"send the 2 units not yet sent: bulkrerun run {second}"
    )
    assert summary.next_steps[1].endswith(
        f"an earlier run's manifest): bulkrerun run {first} --journal {path}"
    )
    as_json = status_json(summary)
    assert as_json["pending"] is None and as_json["pending_unknown"] == why
    assert as_json["pending_by_manifest"] == [
        {"manifest": str(second), "pending": 2},
        {"manifest": str(first), "pending": None, "pending_unknown": why},
    ]


@pytest.mark.parametrize("recorded", ["failed", "pending"])
def test_every_request_redirected_names_the_endpoint_as_wrong(
    tmp_path: Path, planned: tuple[Path, list[Chunk]], recorded: str
) -> None:
    """Redirects are not followed (the credentials would go with them): when every request
    met one, the endpoint is wrong (http for https, say), as with "no such API"; not a case
    for --retry-failed, which the journal, bound to that endpoint, would refuse. A run stops
    at such an answer and leaves the unit pending; older journals have it failed."""
    manifest, chunks = planned
    where = "redirected to https://127.0.0.1:8443/v2/..., not followed: is the endpoint right?"
    moved = Outcome(Kind.FAILED, status=307, reason=where)

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest), wall=T0)
        for chunk in chunks:
            await j.intend(chunk, 1, T0 + 1)
            j.outcome(chunk, 1, moved, T0 + 2, recorded)

    run_journal(tmp_path / "j", script)
    steps = " ".join(status(tmp_path / "j").next_steps)
    assert "every request answered was redirected (HTTP 307; redirects are not followed)" in steps
    assert f"the endpoint {BINDING.endpoint} looks wrong" in steps
    assert "start again with a new --journal" in steps and "--retry-failed" not in steps


def test_the_status_line_counts_one_request_attempt_and_run_in_the_singular(
    tmp_path: Path, planned: tuple[Path, list[Chunk]]
) -> None:
    manifest_path, chunks = planned
    chunk = chunks[0]

    async def script(j: Journal) -> None:
        j.begin_run(RunInfo.from_manifest(manifest_path, pending=1), wall=T0)
        await j.intend(chunk, 1, T0)
        j.outcome(chunk, 1, ACCEPTED, T0 + 1, "done")

    run_journal(tmp_path / "j", script)
    con, buffer = console()
    render_status(summarize(tmp_path / "j", read_state(tmp_path / "j")[1], pending=0), con)
    text = buffer.getvalue()
    assert "1 of 1 request accepted, 1 attempt in 1 run," in text
    assert "(s)" not in text


def test_the_report_table_of_one_request_ends_with_1_request(tmp_path: Path) -> None:
    one_request(tmp_path / "j", ACCEPTED, "done")
    con, buffer = console()
    assert write_report(tmp_path / "j", "table", io.StringIO(), con) == 1
    assert "1 request: done 1" in buffer.getvalue()


# -- which instances each request reran, and which of them failed -------------------------

# An incident in small: instances of two jobs (one of them refused: its job_id is another
# job's), and a window that reruns a downstream job too. The demo catalog's reruns fail at
# its seeded 2 %: with these plan times, one ods_orders, one ods_payments and one dwd_users
# rerun end failed (the test reads which from the fake itself).
INCIDENT = f"""version = 1
[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
timezone = "Asia/Shanghai"

[[instances]]
job_name = "ods_orders"
batch = 2
items = [
  {{ job_id = 917560, plan_time = 1732576500000, submit_time = 1732576501000 }},
  {{ job_id = 917560, plan_time = 1732577400000, submit_time = 1732577401000 }},
  {{ job_id = 917560, plan_time = 1732578300000, submit_time = 1732578301000 }},
]

[[instances]]
job_name = "ods_payments"
batch = 2
items = [
  {{ job_id = 917561, plan_time = 1732560300000, submit_time = 1732560301000 }},
  {{ job_id = 917561, plan_time = 1732561200000, submit_time = 1732561201000 }},
  {{ job_id = 917566, plan_time = 1732562100000, submit_time = 1732562101000 }},
]

[[window]]
job_name = "ods_users"
begin = "2024-11-26T06:00:00"
end = "2024-11-26T08:00:00"
chunk = "1h"
concurrent = 2
jobs = [{{ job_name = "dwd_users", workspace_id = "{WS}" }}]
"""


def _iso_z(ms: int, spec: str = "milliseconds") -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


@pytest.mark.anyio
async def test_each_format_names_the_instances_a_request_reran_and_which_failed(
    tmp_path: Path,
) -> None:
    # An audit after an incident asks, of each request: which instances (job, plan time) it
    # reran, a window's downstream jobs included, and which of them the watch saw fail. The
    # report said "2 instances", named a window's own job only, and tallied "fail 1".
    from bulkrerun.verify import watch
    from tests.test_verify import catalog

    async with world(
        tmp_path, manifest=INCIDENT, catalog=catalog(rerun_fail_rate=0.02, seed=1)
    ) as w:
        with w.open_journal() as journal:
            for chunk in w.chunks:
                await journal.intend(chunk, 1, w.clock.wall())
                outcome = await w.transport.send(chunk)
                state = {Kind.DONE: "done", Kind.FAILED: "failed"}[outcome.kind]
                journal.outcome(chunk, 1, outcome, w.clock.wall(), state)
            await watch(journal, w.transport, pacer=w.pacer, clock=w.clock, console=console()[0])
        truth = w.srv.instances
        assert truth is not None

        def status_of(job: str, plan_time: int) -> str:
            instance = truth.instance(job, plan_time)
            assert instance is not None
            return str(instance["status"])

        con, table = console()
        outputs = {}
        for fmt in ("csv", "json", "table", "manifest"):
            buffer = io.StringIO()
            write_report(w.journal_path, fmt, buffer, con, err=io.StringIO())
            outputs[fmt] = buffer.getvalue()

    objects = [json.loads(line) for line in outputs["json"].splitlines()]
    by_chunk = {r["chunk"]: r for r in csv.DictReader(io.StringIO(outputs["csv"]))}
    lines = table.getvalue().splitlines()
    failed_seen: list[tuple[str, str, int]] = []  # (chunk, job, plan time), from the fake
    for chunk, obj in zip(w.chunks, objects, strict=True):
        assert obj["chunk"] == chunk.id
        body = chunk.body_object()
        cells = by_chunk[chunk.id]
        (line,) = (x for x in lines if x.startswith(chunk.id[:12] + " "))
        if chunk.kind == "instances":
            sent = body["task_retrys"]
            assert obj["items"] == sent  # exactly as sent
            assert obj["jobs"] is None
            assert cells["items"] == "; ".join(
                f"{i['job_id']} {_iso_z(i['plan_time'])}" for i in sent
            )
            plans = sorted(i["plan_time"] for i in sent)
            first, last = _iso_z(plans[0], "seconds"), _iso_z(plans[-1], "seconds")
            span = first if len(plans) == 1 else f"{first} .. {last[11:]}"
            assert f"{len(sent)} instance{'s' if len(sent) > 1 else ''}: {span}" in line
            reran = [(chunk.job_name, i["plan_time"]) for i in sent]
        else:
            assert obj["jobs"] == [{"job_name": "dwd_users", "workspace_id": WS}]
            assert obj["items"] is None
            assert (cells["jobs"], cells["items"]) == ("dwd_users", "")
            assert " ods_users + dwd_users " in line
            hours = range(body["begin_time"], body["end_time"] + 1, 3_600_000)
            reran = [(job, p) for p in hours for job in ("ods_users", "dwd_users")]
        if obj["state"] == "failed":  # refused: nothing rerun, nothing watched
            assert (obj["error_code"], obj["failed_instances"], cells["failed_instances"]) == (
                "DLF.1001",
                None,
                "",
            )
            continue
        failed = sorted((p, job) for job, p in reran if status_of(job, p) == "fail")
        assert [(f["plan_time"], f["job_name"]) for f in obj["failed_instances"]] == failed
        assert {f["status"] for f in obj["failed_instances"]} <= {"fail"}
        assert cells["failed_instances"] == "; ".join(f"{j} {_iso_z(p)} fail" for p, j in failed)
        failed_seen += [(chunk.id, job, p) for p, job in failed]

    # Worth its name: some reruns failed, in both kinds of request, and not all of them.
    assert {c for c, _, _ in failed_seen} and len(failed_seen) < 9
    assert {job for _, job, _ in failed_seen} >= {"dwd_users", "ods_orders"}
    # The table closes with them, one a line, under its count.
    count = next(i for i, x in enumerate(lines) if x.startswith("6 requests: done 5, failed 1"))
    assert lines[count + 1] == (
        f"{len(failed_seen)} rerun instances the watch saw end failed "
        "(request, job, plan time, status):"
    )
    listed = [x.split() for x in lines[count + 2 :]]
    assert sorted(listed) == sorted(
        [c[:12], job, _iso_z(p, "seconds"), "fail"] for c, job, p in failed_seen
    )
    # The manifest of what failed: the refused instance, and where the failed reruns are.
    manifest = outputs["manifest"]
    assert "{ job_id = 917566, plan_time = 1732562100000, submit_time = 1732562101000 }" in (
        manifest
    )
    assert f"# Not here: {len(failed_seen)} rerun instances the watch saw end failed" in manifest
    steps = status(w.journal_path).next_steps
    assert "(listed after its table; failed_instances in csv and json)" in steps[-1]


def test_the_new_columns_come_after_the_ones_scripts_read() -> None:
    assert REPORT_COLUMNS[:23] == (
        "chunk", "entry", "job_name", "workspace", "mode", "begin", "end", "instances",
        "attempts", "state", "current", "status", "error_code", "error_msg", "request_id",
        "reason", "last_time", "instance_status", "verify_state", "verify_evidence",
        "unknown_sends", "run", "unknown_request_ids",
    )  # fmt: skip
    assert REPORT_COLUMNS[23:26] == ("jobs", "items", "failed_instances")
    assert REPORT_COLUMNS[26:] == ("timezone", "begin_local", "end_local")


def _options(user: str, *flags: list[str | None], **one_shots: bool) -> dict[str, Any]:
    """A run record's options as `run` writes them (the ones the history reads)."""
    return {"user": user, "host": "ops-1", "flags": [list(f) for f in flags], **one_shots}


def test_status_lists_the_runs_and_verifications_with_their_flags(tmp_path: Path) -> None:
    """Every run and verify, in order, with who ran it and the flags it was given (one-shot
    ones too): in status --json always, in the plain status once there is more than one."""
    path = tmp_path / "j"

    async def first(j: Journal) -> None:
        j.begin_run(RunInfo("m.toml", "", "", options=_options("ana", ["--rate", "5"])), wall=T0)
        j.end_run(130, "interrupted", "SIGINT: finishing requests in flight", wall=T0 + 1)

    run_journal(path, first)
    con, buffer = console()
    render_status(status(path), con)
    assert "runs (and verifications)" not in buffer.getvalue()  # the last-run line says it
    history = status_json(status(path))["history"]
    assert [(h["command"], h["n"], h["exit_code"], h["flags"]) for h in history] == [
        ("run", 1, 130, [["--rate", "5"]])
    ]

    async def second(j: Journal) -> None:
        options = _options("bo", ["--rate", "7"], ["--watch", None], resend_held=True)
        j.begin_run(RunInfo("again.toml", "", "", pending=2, options=options), wall=T0 + 60)
        j.end_run(1, None, None, wall=T0 + 70)
        j.begin_verify({"user": "cy", "host": "ops-2", "flags": []}, held=2, wall=T0 + 80)
        j.end_verify(1, None, None, (1, 0, 1), wall=T0 + 81)

    run_journal(path, second)
    summary = status(path)
    s = status_json(summary)
    assert s["runs"] == 2  # the count stays what it was; the list is a key of its own
    assert [(h["command"], h["n"], h["started"], h["exit_code"]) for h in s["history"]] == [
        ("run", 1, "2024-11-26T05:46:40.000Z", 130),
        ("run", 2, "2024-11-26T05:47:40.000Z", 1),
        ("verify", 1, "2024-11-26T05:48:00.000Z", 1),
    ]
    run2 = s["history"][1]
    assert run2["flags"] == [["--rate", "7"], ["--watch", None], ["--resend-held", None]]
    assert (run2["manifest"], run2["pending_at_start"], run2["options"]["user"]) == (
        "again.toml",
        2,
        "bo",
    )
    assert s["last_verify"] == s["history"][2]
    assert (s["last_verify"]["verified_done"], s["last_verify"]["still_held"]) == (1, 1)
    con, buffer = console()
    render_status(summary, con)
    text = buffer.getvalue()
    assert (
        "verify 1 (started 2024-11-26T05:48:00.000Z) ended 2024-11-26T05:48:01.000Z, exit 1: "
        in text
    )
    listed = text.split("runs (and verifications), with their flags:\n", 1)[1].split("next:")[0]
    assert [line.split() for line in listed.splitlines()] == [
        [
            "run",
            "1",
            "2024-11-26T05:46:40.000Z",
            "exit",
            "130",
            "(interrupted)",
            "ana@ops-1",
            "m.toml",
            "--rate",
            "5",
        ],
        [
            "run",
            "2",
            "2024-11-26T05:47:40.000Z",
            "exit",
            "1",
            "bo@ops-1",
            "again.toml",
            "--rate",
            "7",
            "--watch",
            "--resend-held",
        ],
        ["verify", "1", "2024-11-26T05:48:00.000Z", "exit", "1", "cy@ops-2"],
    ]


def test_status_words_a_run_interrupted_before_it_recorded_what_happened_as_past(
    tmp_path: Path,
) -> None:
    # A run's end record kept the words said live at a Ctrl-C; status replayed them as if
    # to the person reading it now ("(again to stop at once)"). A journal of an earlier
    # version still holds them: status says what they tell of the past, no more.
    path = tmp_path / "j"

    async def interrupted(j: Journal) -> None:
        j.begin_run(RunInfo("m.toml", "", "", options=_options("ana")), wall=T0)
        live = "SIGINT: finishing requests in flight (again to stop at once)"
        j.end_run(130, "interrupted", live, wall=T0 + 1)

    run_journal(path, interrupted)
    con, buffer = console()
    render_status(status(path), con)
    said = " ".join(buffer.getvalue().split())
    assert (
        "run 1 (started 2024-11-26T05:46:40.000Z) was interrupted 2024-11-26T05:46:41.000Z "
        "(SIGINT: it stopped sending; its record does not say whether the requests in flight "
        "finished)" in said
    )
    assert "again to stop at once" not in said


def _shanghai_window(begin: str, end: str, chunk: str = "6h") -> str:
    """A manifest body: a window of ods_orders (and dwd_orders downstream) from ``begin`` to
    ``end``, written without an offset: in the default timezone, Asia/Shanghai."""
    return (
        f'[[window]]\njob_name = "ods_orders"\nbegin = "{begin}"\nend = "{end}"\n'
        f'chunk = "{chunk}"\njobs = [ {{ job_name = "dwd_orders", workspace_id = '
        '"62fbba734e634c5087656fc3ff7adf34" } ]\n'
    )


def test_status_marks_a_run_whose_manifest_differs_from_the_run_before(
    tmp_path: Path, cli: Cli, fake_service: Callable[..., Service]
) -> None:
    # A backfill resumed by another operator after an edit: the plain list of runs named
    # the same bf.toml for both, and the edit showed only as a digest in status --json.
    srv = fake_service()
    bf = write_manifest(
        tmp_path / "bf.toml", _shanghai_window("2024-11-05T00:00:00", "2024-11-06T00:00:00")
    )
    other = write_manifest(
        tmp_path / "other.toml", _shanghai_window("2024-11-01T00:00:00", "2024-11-02T00:00:00")
    )

    def run(manifest: str) -> None:
        out = cli("run", manifest, "--journal", "j", "--rate", "100", "--no-progress", url=srv.url)
        assert out.returncode == 0, out.stderr

    run("bf.toml")
    bf.write_text(bf.read_text().replace("2024-11-06T", "2024-11-07T"), encoding="utf-8")
    run("bf.toml")  # edited: a day more
    (tmp_path / "copy.toml").write_bytes(bf.read_bytes())
    run("copy.toml")  # the same text by another name
    run(other.name)
    run(other.name)  # unchanged since the run before
    shown = cli("status", "j").stdout
    listed = shown.split("runs (and verifications), with their flags:\n", 1)[1]
    lines = listed.split("next:")[0].splitlines()
    assert [line.split("--no-progress")[1].strip() for line in lines] == [
        "",
        "(manifest changed since run 1)",
        "(the same manifest as run 2's, by another path)",
        "(another manifest than run 3's)",
        "",
    ]


def test_the_report_shows_times_in_the_timezone_the_manifest_wrote_them_in(
    tmp_path: Path, cli: Cli, fake_service: Callable[..., Service]
) -> None:
    # A backfill of days in Asia/Shanghai: plan showed 2024-11-05T00:00:00.000+08:00, the
    # report's table and csv 2024-11-04T16:00:00.000Z, and an audit "per job and day" put
    # the first hours of each day on the day before. The table now shows each entry's times
    # in its timezone, as plan does; csv and json keep begin and end (UTC) and add the local
    # form at the end.
    srv = fake_service()
    payments = (
        '[[instances]]\njob_name = "ods_payments"\n'
        "items = [ { job_id = 917567, plan_time = 1730736000000, submit_time = 1730736001000 } ]\n"
    )
    write_manifest(
        tmp_path / "bf.toml",
        _shanghai_window("2024-11-05T00:00:00", "2024-11-07T00:00:00", "1d") + payments,
    )
    # Another manifest, another run: its window's own timezone, not the first run's.
    ny = _shanghai_window("2024-11-10T00:00:00", "2024-11-11T00:00:00", "1d")
    write_manifest(
        tmp_path / "ny.toml",
        ny.replace("[[window]]\n", '[[window]]\ntimezone = "America/New_York"\n'),
    )
    for manifest in ("bf.toml", "ny.toml"):
        out = cli("run", manifest, "--journal", "j", "--rate", "100", "--no-progress", url=srv.url)
        assert out.returncode == 0, out.stderr

    table = cli("report", "j").stdout.splitlines()
    assert table[0].split()[:4] == ["chunk", "entry", "job", "what"]  # no "(UTC)": see the offsets
    rows = [" ".join(line.split()) for line in table[1:5]]
    assert "2024-11-05T00:00:00+08:00 .. 23:59:59.999" in rows[0]
    assert "2024-11-06T00:00:00+08:00 .. 23:59:59.999" in rows[1]
    assert "1 instance: 2024-11-04T16:00:00Z" in rows[2]  # epoch ms, as plan shows them: UTC
    assert "2024-11-10T00:00:00-05:00 .. 23:59:59.999" in rows[3]
    assert not any("999+08:00" in row or "999-05:00" in row for row in rows)  # offset once

    lines = list(csv.reader(io.StringIO(cli("report", "j", "--format", "csv").stdout)))
    header, body = lines[0], lines[1:]
    assert header[:26] == list(REPORT_COLUMNS[:26])  # the columns scripts read, unmoved
    assert header[26:] == ["timezone", "begin_local", "end_local"]
    got = [(r[5], r[6], r[26], r[27], r[28]) for r in body]
    assert got == [
        (
            "2024-11-04T16:00:00.000Z",
            "2024-11-05T15:59:59.999Z",
            "Asia/Shanghai",
            "2024-11-05T00:00:00.000+08:00",
            "2024-11-05T23:59:59.999+08:00",
        ),
        (
            "2024-11-05T16:00:00.000Z",
            "2024-11-06T15:59:59.999Z",
            "Asia/Shanghai",
            "2024-11-06T00:00:00.000+08:00",
            "2024-11-06T23:59:59.999+08:00",
        ),
        ("", "", "", "", ""),
        (
            "2024-11-10T05:00:00.000Z",
            "2024-11-11T04:59:59.999Z",
            "America/New_York",
            "2024-11-10T00:00:00.000-05:00",
            "2024-11-10T23:59:59.999-05:00",
        ),
    ]
    objects = [
        json.loads(line) for line in cli("report", "j", "--format", "json").stdout.splitlines()
    ]
    assert [list(o)[-3:] for o in objects] == [["timezone", "begin_local", "end_local"]] * 4
    assert [(o["begin"], o["timezone"], o["begin_local"]) for o in objects] == [
        (r[0] or None, r[2] or None, r[3] or None) for r in got
    ]


@pytest.mark.parametrize(
    ("begin", "end", "zone", "shown"),
    [
        # One offset is said once, at the start; a day's end needs only its time.
        ("2024-11-25T14:00:00Z", "2024-11-25T16:00:00Z", "Asia/Shanghai",
         "2024-11-25T22:00:00+08:00 .. 2024-11-26T00:00:00"),
        ("2024-11-25T14:00:00Z", "2024-11-25T15:59:59.999Z", "Asia/Shanghai",
         "2024-11-25T22:00:00+08:00 .. 23:59:59.999"),
        # Across a change of offset (New York's end of summer time) both are said.
        ("2024-11-03T04:00:00Z", "2024-11-03T07:00:00Z", "America/New_York",
         "2024-11-03T00:00:00-04:00 .. 02:00:00-05:00"),
        # UTC keeps its Z at both ends, as before.
        ("2024-11-25T14:00:00Z", "2024-11-25T16:15:00Z", None,
         "2024-11-25T14:00:00Z .. 16:15:00Z"),
    ],
)  # fmt: skip
def test_a_span_in_the_table_says_its_offset_once_unless_it_changes(
    begin: str, end: str, zone: str | None, shown: str
) -> None:
    from datetime import datetime

    from bulkrerun.report import _span

    ms = [int(datetime.fromisoformat(t).timestamp() * 1000) for t in (begin, end)]
    assert _span(ms[0], ms[1], zone) == shown
