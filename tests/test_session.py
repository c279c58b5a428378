"""The resume rules and the count a run starts with."""

from __future__ import annotations

import pytest

from bulkrerun.journal import FORMAT, Header, JournalState, UnitState
from bulkrerun.planner import plan
from bulkrerun.session import ResumeFlags, chunks_to_send, count_units, should_send
from tests.test_planner import T0, manifest_of, mixed_manifest, window


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
