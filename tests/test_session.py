"""The resume rules and the count a run starts with."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import anyio
import pytest

from bulkrerun.chunk import Chunk
from bulkrerun.errors import Fatal
from bulkrerun.journal import (
    FORMAT,
    Binding,
    Header,
    Journal,
    JournalState,
    RunInfo,
    UnitState,
    read_state,
)
from bulkrerun.manifest import Manifest, WindowEntry
from bulkrerun.outcome import DONE, Kind, Outcome
from bulkrerun.planner import plan
from bulkrerun.session import (
    DoneWindow,
    Overlap,
    ResumeFlags,
    chunks_to_send,
    count_units,
    earlier_windows,
    should_send,
)
from tests.test_planner import HOUR, T0, WS, instances, manifest_of, mixed_manifest, window


@pytest.mark.parametrize(
    ("state", "flags", "sent"),
    [
        (None, ResumeFlags(), True),
        (UnitState.DONE, ResumeFlags(retry_failed=True, resend_held=True), False),
        (UnitState.FAILED, ResumeFlags(), False),
        (UnitState.FAILED, ResumeFlags(retry_failed=True), True),
        (UnitState.HELD, ResumeFlags(retry_failed=True), False),
        (UnitState.HELD, ResumeFlags(resend_held=True), True),
    ],
)
def test_resume_rule(state: UnitState | None, flags: ResumeFlags, sent: bool) -> None:
    assert should_send(state, flags) is sent


def test_a_first_run_counts_as_the_streaming_pass_does() -> None:
    """A fresh journal takes the arithmetic count; a journal that knows one unnamed unit
    takes the streaming pass. Both must say the same of the same plan."""
    m, selections = mixed_manifest()
    fresh = count_units(m, {}, ResumeFlags(), selections)
    streamed = count_units(m, {"not-in-this-plan": UnitState.DONE}, ResumeFlags(), selections)

    assert (fresh.new, fresh.to_send, fresh.total) == (16, 16, 16)
    assert (streamed.new, streamed.to_send, streamed.total) == (16, 16, 16)
    assert fresh.duplicates == streamed.duplicates
    assert len(fresh.duplicates) == 4


@pytest.mark.timeout(10)
def test_a_first_run_of_a_huge_window_is_counted_at_once() -> None:
    huge = manifest_of(window(end_ms=T0 + 10**12, chunk_ms=1000))  # a billion requests
    counts = count_units(huge, {}, ResumeFlags(), None)
    assert (counts.new, counts.to_send) == (10**9, 10**9)


def test_a_resumed_run_counts_units_by_their_state() -> None:
    m, selections = mixed_manifest()
    units = [u for chunk in plan(m, selections=selections) for u in chunk.units]
    states = {units[0]: UnitState.DONE, units[1]: UnitState.FAILED, units[-1]: UnitState.HELD}

    counts = count_units(m, states, ResumeFlags(retry_failed=True), selections)

    assert (counts.done, counts.failed, counts.held, counts.new) == (1, 1, 1, 13)
    assert counts.to_send == 14  # the new ones and the failed one


def test_a_first_run_sends_the_whole_plan_once_and_a_resumed_one_what_the_rule_says() -> None:
    m, selections = mixed_manifest()
    planned = list(plan(m, selections=selections))
    units = [u for chunk in planned for u in chunk.units]
    assert len(units) == len(set(units)) == 16  # the plan leaves out the 4 repeats

    header = Header(FORMAT, "test", "p", "http://x", 0.0)
    fresh = list(chunks_to_send(m, JournalState(header), ResumeFlags(), selections))
    assert fresh == planned

    resumed = JournalState(header)
    resumed.units.update({units[0]: UnitState.DONE, units[-1]: UnitState.HELD})
    sent = [u for c in chunks_to_send(m, resumed, ResumeFlags(), selections) for u in c.units]
    assert sorted(sent) == sorted(units[1:-1])


# ---------------------------------------------------------------------------------------------
# New window chunks over done ones
# ---------------------------------------------------------------------------------------------

MINUTE = 60_000
BINDING = Binding("p", "http://x")
HELD = Outcome(Kind.HELD, reason="timeout after send")
REFUSED = Outcome(Kind.FAILED, status=400, error_code="DLF.1000", reason="refused")


def journal_of(path: Path, sha256: str, sent: Iterable[tuple[Chunk, str]]) -> JournalState:
    """A journal of one earlier run (of a manifest with digest ``sha256``) that sent each
    chunk with the outcome ``done``, ``held`` or ``failed``; its replayed state."""

    async def write() -> None:
        with Journal.open(path, BINDING, tool_version="test") as journal:
            journal.begin_run(RunInfo("m.toml", "", sha256))
            for chunk, state in sent:
                await journal.intend(chunk, 1, 1.0)
                outcome = {"done": DONE, "held": HELD, "failed": REFUSED}[state]
                journal.outcome(chunk, 1, outcome, 2.0, state)
            await journal.flush()

    anyio.run(write)
    return read_state(path)[1]


def edited(*entries: WindowEntry) -> Manifest:
    return dataclasses.replace(manifest_of(*entries), sha256="edited")


def test_new_window_chunks_over_done_ones_are_counted_per_entry(tmp_path: Path) -> None:
    """An earlier run sent 4 hours of ods_orders in 1h chunks (two done, two held), the first
    hour of ods_users (done), that hour of ods_orders in another workspace (done) and an
    instance batch (done). The manifest now cuts ods_orders in 30 minutes, moves ods_users by
    half an hour, and keeps the last two hours of ods_orders as they were."""
    orders = list(plan(manifest_of(window(end_ms=T0 + 4 * HOUR))))
    users = next(plan(manifest_of(window(job_name="ods_users", end_ms=T0 + HOUR))))
    elsewhere = next(plan(manifest_of(window(workspace="w" * 32, end_ms=T0 + HOUR))))
    batch = next(plan(manifest_of(instances([(1, T0, T0 - 1000)]))))
    path = tmp_path / "j"
    done = [orders[0], orders[1], users, elsewhere, batch]
    state = journal_of(
        path, "earlier", [*((c, "done") for c in done), *((c, "held") for c in orders[2:])]
    )
    manifest = edited(
        window(end_ms=T0 + 4 * HOUR, chunk_ms=30 * MINUTE),
        window(
            label="window[1]",
            job_name="ods_users",
            begin_ms=T0 + 30 * MINUTE,
            end_ms=T0 + 90 * MINUTE,
        ),
        window(label="window[2]", begin_ms=T0 + 2 * HOUR, end_ms=T0 + 4 * HOUR),
    )

    earlier = earlier_windows(path, state, manifest)
    assert earlier is not None
    assert list(earlier()) == [  # the done window requests, as sent
        DoneWindow("ods_orders", WS, T0, T0 + HOUR - 1),
        DoneWindow("ods_orders", WS, T0 + HOUR, T0 + 2 * HOUR - 1),
        DoneWindow("ods_users", WS, T0, T0 + HOUR - 1),
        DoneWindow("ods_orders", "w" * 32, T0, T0 + HOUR - 1),
    ]
    counts = count_units(manifest, state.units, ResumeFlags(), None, earlier=earlier)

    # window[0]: its first four chunks re-cover the two done hours (not the held ones, nor
    # the hour of the other workspace); window[1]: its one chunk, half of the done hour of
    # ods_users; window[2]: its chunks are the held ones, not new.
    assert counts.overlaps == [
        Overlap("window[0]", "ods_orders", WS, 4, 2, first_ms=T0, last_ms=T0 + 2 * HOUR - 1),
        Overlap("window[1]", "ods_users", WS, 1, 1, T0 + 30 * MINUTE, T0 + HOUR - 1),
    ]
    assert (counts.done, counts.failed, counts.held, counts.new) == (0, 0, 2, 9)


def test_a_run_reads_the_done_windows_through_its_journal_even_once_it_is_removed(
    tmp_path: Path,
) -> None:
    """A run compares the chunks it sends with the done windows after it opened its journal:
    read by path, a journal removed (an `rm`, a cleaner of old files) in between was a
    FileNotFoundError and a traceback. Read through the run's descriptor, the run goes on
    to the point where it writes, which finds the removal and writes the journal back."""
    chunks = list(plan(manifest_of(window(end_ms=T0 + 2 * HOUR))))
    path = tmp_path / "j"
    journal_of(path, "earlier", [(chunks[0], "done"), (chunks[1], "done")])
    journal = Journal.open(path, BINDING, tool_version="test")
    path.unlink()
    earlier = earlier_windows(journal, journal.state(), edited(window(end_ms=T0 + HOUR)))
    assert earlier is not None
    assert list(earlier()) == [
        DoneWindow("ods_orders", WS, T0, T0 + HOUR - 1),
        DoneWindow("ods_orders", WS, T0 + HOUR, T0 + 2 * HOUR - 1),
    ]
    with pytest.raises(Fatal, match="what it had recorded is written back"):
        journal.close()
    assert read_state(path)[1].units == journal.state().units


def test_only_new_chunks_that_overlap_are_counted_and_runs_split_at_journaled_ones() -> None:
    """Hours 3 and 4 of a 10-hour window are done as they are; an old 3-hour chunk covered
    2:30 to 5:30: only hours 2 and 5 re-cover it (hours 3 and 4 are not new), and a done
    chunk that ends 1 ms before a new one starts does not overlap it."""
    entry = window(end_ms=T0 + 10 * HOUR)
    chunks = list(plan(manifest_of(entry)))
    units = {chunks[3].id: UnitState.DONE, chunks[4].id: UnitState.DONE}
    old = [
        DoneWindow("ods_orders", WS, T0 + 150 * MINUTE, T0 + 330 * MINUTE - 1),
        DoneWindow("ods_orders", WS, T0 - HOUR, T0 - 1),  # just before the window
        DoneWindow("ods_orders", WS, T0 + 10 * HOUR, T0 + 11 * HOUR - 1),  # just after
    ]

    counts = count_units(edited(entry), units, ResumeFlags(), None, earlier=lambda: iter(old))

    assert counts.overlaps == [
        Overlap("window[0]", "ods_orders", WS, 2, 1, T0 + 150 * MINUTE, T0 + 330 * MINUTE - 1)
    ]
    assert counts.new == 8


def test_a_resume_with_the_manifest_of_the_last_run_skips_the_check(tmp_path: Path) -> None:
    """Only an edit gives new chunks over done times: the same manifest as the last run
    (a resume after a crash) does not read a record more, nor does a journal without a done
    window request, nor a plan without a new window chunk."""
    chunks = list(plan(manifest_of(window(end_ms=T0 + 2 * HOUR))))
    path = tmp_path / "j"
    state = journal_of(path, "same", [(chunks[0], "done"), (chunks[1], "held")])
    rechunked = window(end_ms=T0 + 2 * HOUR, chunk_ms=30 * MINUTE)

    same = dataclasses.replace(edited(rechunked), sha256="same")
    # Its new chunks are not compared, nor is the journal read for them (failed or held
    # chunks a flag sends again are compared: see the test of them below).
    same_earlier = earlier_windows(path, state, same)
    assert same_earlier is not None and not same_earlier.new_chunks
    unreadable = dataclasses.replace(same_earlier, path=tmp_path / "absent")
    counts = count_units(same, state.units, ResumeFlags(), None, earlier=unreadable)
    assert (counts.overlaps, counts.new) == ([], 4)
    assert earlier_windows(path, state, edited(rechunked)) is not None

    held_only = journal_of(tmp_path / "held", "earlier", [(chunks[1], "held")])
    assert earlier_windows(tmp_path / "held", held_only, edited(rechunked)) is None

    def unread() -> Iterator[DoneWindow]:
        raise AssertionError("read the journal for a plan without new window chunks")

    unchanged = edited(window(end_ms=T0 + 2 * HOUR))
    counts = count_units(unchanged, state.units, ResumeFlags(), None, earlier=unread)
    assert counts.overlaps == []
    assert (counts.done, counts.held, counts.new) == (1, 1, 0)


def test_the_new_chunks_of_a_huge_window_take_flat_memory() -> None:
    """20,000 new chunks, all over one old chunk: a few intervals are kept, not 20,000 ids."""
    entry = window(end_ms=T0 + 20_000 * 1000, chunk_ms=1000)
    old = [DoneWindow("ods_orders", WS, T0, T0 + 20_000 * 1000 - 1)]
    units = {"of another plan": UnitState.DONE}
    tracemalloc.start()
    try:
        counts = count_units(edited(entry), units, ResumeFlags(), None, earlier=lambda: iter(old))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts.overlaps == [
        Overlap("window[0]", "ods_orders", WS, 20_000, 1, T0, T0 + 20_000 * 1000 - 1)
    ]
    assert peak < 256 * 1024


def test_a_job_in_jobs_is_re_covered_as_a_window_of_its_own_is(tmp_path: Path) -> None:
    """An earlier run reran 6 hours of ods_users with dwd_users in its jobs, and 6 hours of
    dwd_stock alone. Now a window of dwd_users alone over hours 2..8, and one of ods_items
    with dwd_stock (and dwd_users of another workspace) in its jobs over hours 4..10: each
    re-covers the done times of the job the earlier requests covered, and is named for it."""
    users = window(job_name="ods_users", end_ms=T0 + 6 * HOUR, jobs=(("dwd_users", WS),))
    stock = window(job_name="dwd_stock", end_ms=T0 + 6 * HOUR)
    path = tmp_path / "j"
    done = [*plan(manifest_of(users)), *plan(manifest_of(stock))]
    state = journal_of(path, "earlier", [(chunk, "done") for chunk in done])
    manifest = edited(
        users,  # as it was: all done, nothing new
        window(
            label="window[1]", job_name="dwd_users", begin_ms=T0 + 2 * HOUR, end_ms=T0 + 8 * HOUR
        ),
        window(
            label="window[2]",
            job_name="ods_items",
            begin_ms=T0 + 4 * HOUR,
            end_ms=T0 + 10 * HOUR,
            jobs=(("dwd_users", "f" * 32), ("dwd_stock", WS)),
        ),
    )

    earlier = earlier_windows(path, state, manifest)
    assert earlier is not None
    assert next(iter(earlier())) == DoneWindow(
        "ods_users", WS, T0, T0 + HOUR - 1, (("dwd_users", WS),)
    )
    counts = count_units(manifest, state.units, ResumeFlags(), None, earlier=earlier)

    assert counts.overlaps == [
        Overlap("window[1]", "dwd_users", WS, 4, 4, T0 + 2 * HOUR, T0 + 6 * HOUR - 1),
        Overlap("window[2]", "dwd_stock", WS, 2, 2, T0 + 4 * HOUR, T0 + 6 * HOUR - 1),
    ]
    assert (counts.done, counts.new) == (6, 12)

    # The other way round: done requests of dwd_stock alone, a new window lists it in jobs.
    alone = tmp_path / "alone"
    state = journal_of(alone, "earlier", [(c, "done") for c in plan(manifest_of(stock))])
    lists = edited(window(job_name="ods_new", end_ms=T0 + 2 * HOUR, jobs=(("dwd_stock", WS),)))
    earlier = earlier_windows(alone, state, lists)
    counts = count_units(lists, state.units, ResumeFlags(), None, earlier=earlier)
    assert counts.overlaps == [Overlap("window[0]", "dwd_stock", WS, 2, 2, T0, T0 + 2 * HOUR - 1)]


def test_failed_or_held_chunks_a_flag_sends_again_are_compared_with_done_ones(
    tmp_path: Path,
) -> None:
    """The drill: 2 days of ods_orders in 6h chunks with dwd_new in jobs, refused (the first
    six) or held (the last two); then the same without jobs, all done. The chunks with jobs
    are not new, but --retry-failed and --resend-held send them again, and with them
    ods_orders over times done already: found as new chunks over done ones are, also when
    the manifest is the one the last run recorded. dwd_new was never done: not named."""
    with_new = window(end_ms=T0 + 48 * HOUR, chunk_ms=6 * HOUR, jobs=(("dwd_new", WS),))
    without = window(end_ms=T0 + 48 * HOUR, chunk_ms=6 * HOUR)
    refused = list(plan(manifest_of(with_new)))
    path = tmp_path / "j"
    sent = [
        *((chunk, "failed") for chunk in refused[:6]),
        *((chunk, "held") for chunk in refused[6:]),
        *((chunk, "done") for chunk in plan(manifest_of(without))),
    ]
    state = journal_of(path, "last", sent)
    retry = edited(with_new)  # what report --format manifest writes: the same requests

    def overlaps(manifest: Manifest, flags: ResumeFlags) -> list[Overlap]:
        earlier = earlier_windows(path, state, manifest)
        return count_units(manifest, state.units, flags, None, earlier=earlier).overlaps

    assert overlaps(retry, ResumeFlags()) == []  # nothing is sent
    failed = Overlap("window[0]", "ods_orders", WS, 6, 6, T0, T0 + 36 * HOUR - 1)
    assert overlaps(retry, ResumeFlags(retry_failed=True)) == [failed]
    held = Overlap("window[0]", "ods_orders", WS, 2, 2, T0 + 36 * HOUR, T0 + 48 * HOUR - 1)
    assert overlaps(retry, ResumeFlags(resend_held=True)) == [held]
    both = ResumeFlags(retry_failed=True, resend_held=True)
    every = Overlap("window[0]", "ods_orders", WS, 8, 8, T0, T0 + 48 * HOUR - 1)
    assert overlaps(retry, both) == [every]
    last = dataclasses.replace(retry, sha256="last")  # the manifest of the last run
    assert overlaps(last, ResumeFlags(retry_failed=True)) == [failed]
    assert overlaps(last, ResumeFlags()) == []
