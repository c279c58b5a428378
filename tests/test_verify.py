"""Verifying held units from the instances' live state, and watching reruns to their end.

The verdicts are pure functions, tested on hand-made instances. The rest runs against the
fake service on loopback with its instance catalog: one :class:`FakeClock` drives the server
(submit times, instance states) and the client (pacing, journal walls, polling), so a rerun
moves from waiting to success exactly as the watch sleeps. The end-to-end tests drive the
real command line in a subprocess against the in-process fake on the system clock.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import re
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from bulkrerun.chunk import Chunk, instance_unit_id
from bulkrerun.clock import FakeClock
from bulkrerun.errors import Fatal
from bulkrerun.fake import Catalog, FakeConfig, FakeServer
from bulkrerun.journal import Binding, Journal, RunInfo, UnitState
from bulkrerun.manifest import Manifest, load_manifest
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.pacing import Pacer, PacingConfig
from bulkrerun.planner import SelectedInstance, plan
from bulkrerun.select import ListedInstance, query_selections
from bulkrerun.session import ResumeFlags, chunks_to_send
from bulkrerun.transport import Auth, HttpTransport
from bulkrerun.verify import (
    CLOCK_SKEW_S,
    LIST_NOTICE_AFTER_S,
    LIST_NOTICE_EVERY_S,
    Canary,
    InstanceTarget,
    ListTrouble,
    Verdict,
    VerifySummary,
    WatchSummary,
    WindowTarget,
    judge_instance,
    judge_lag,
    judge_window,
    load_canaries,
    load_targets,
    read_watch,
    verify_held,
    watch,
    watch_path,
)

pytestmark = pytest.mark.anyio

WS = "62fbba734e634c5087656fc3ff7adf34"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ROOT = Path(__file__).resolve().parent.parent
ANCHOR = 1_732_622_400_000  # 2024-11-26T20:00:00+08:00, the demo's "now" (cli.DEMO_ANCHOR_MS)
HOUR = 3_600_000
MINUTE = 60_000
OUTAGE = (ANCHOR - 22 * HOUR, ANCHOR - 12 * HOUR)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- verdicts: pure --------------------------------------------------------------------------------

T_ASK = 1_732_630_000_000  # our first intent (epoch ms, our clock)
S0 = 1_732_601_590_000  # the submission we asked to rerun
SKEW = round(CLOCK_SKEW_S * 1000)


def target(**overrides: Any) -> InstanceTarget:
    fields: dict[str, Any] = {
        "unit": "u1",
        "job_name": "ods_orders",
        "workspace": WS,
        "job_id": 917560,
        "plan_time": 1_732_601_580_000,
        "submit_time": S0,
        "since_ms": T_ASK,
        "last_ms": T_ASK + 1000,
    }
    fields.update(overrides)
    return InstanceTarget(**fields)


def listed(**overrides: Any) -> ListedInstance:
    fields: dict[str, Any] = {
        "job_name": "ods_orders",
        "job_id": 917560,
        "plan_time": 1_732_601_580_000,
        "submit_time": S0,
        "status": "fail",
        "start_time": S0 + 2000,
        "end_time": S0 + 60_000,
    }
    fields.update(overrides)
    return ListedInstance(**fields)


def test_an_instance_still_showing_the_run_we_asked_to_rerun_is_pending() -> None:
    verdict = judge_instance(target(), listed())
    assert verdict.state is None
    assert verdict.reason == "not rerun"
    assert "still shows the run submitted 2024-11-26T06:13:10Z" in verdict.evidence
    assert "ods_orders plan_time 2024-11-26T06:13:00Z" in verdict.evidence


@pytest.mark.parametrize(
    ("instance", "why"),
    [
        # A new submission after our request (ours, whatever its status now).
        (listed(submit_time=T_ASK + 800, status="waiting", start_time=0, end_time=0), "submitted"),
        (listed(submit_time=T_ASK + 800, status="fail", start_time=T_ASK + 900), "submitted"),
        # The service's clock a minute behind ours: still ours.
        (listed(submit_time=T_ASK - 60_000, status="running", start_time=0), "submitted"),
        # Same submission, but started after our request: only a rerun starts it again.
        (listed(status="running", start_time=T_ASK + 5000, end_time=0), "started"),
    ],
)
def test_an_instance_showing_a_run_after_our_request_is_done(
    instance: ListedInstance, why: str
) -> None:
    verdict = judge_instance(target(), instance)
    assert verdict.state is UnitState.DONE
    assert f"shows a run {why}" in verdict.evidence


def test_the_run_we_asked_to_rerun_is_not_taken_for_ours_however_close_to_our_request() -> None:
    # Submitted a minute before our request (within the clock-skew allowance) and never
    # started: its submit_time is the one we asked to rerun, so it is that run, not a rerun,
    # and it ended before we asked. Taken for ours, the unit would be done and never rerun.
    asked = T_ASK - 60_000
    verdict = judge_instance(
        target(submit_time=asked),
        listed(submit_time=asked, status="fail", start_time=0, end_time=asked + 1000),
    )
    assert verdict.state is None
    assert verdict.reason == "not rerun"


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        (None, "instance not listed"),
        (listed(job_id=1), "instance not listed"),
        # Rerun by someone else well before our request: ours was not acted on, but sending
        # it now would rerun a rerun. An operator decides.
        (
            listed(submit_time=T_ASK - SKEW - 1, status="success"),
            "rerun by someone else before ours",
        ),
        # The run we asked to rerun had not ended when we asked.
        (
            listed(status="running", start_time=S0 + 1, end_time=0),
            "run not over before our request",
        ),
        (listed(status="fail", end_time=T_ASK + 10), "run not over before our request"),
        # A status the API does not define is not a run known to be over: sending it again
        # could rerun it twice.
        (listed(status="queued"), "run not over before our request"),
        (listed(submit_time=S0 - 1), "older run listed"),
    ],
)
def test_what_the_list_cannot_decide_stays_held(
    instance: ListedInstance | None, reason: str
) -> None:
    verdict = judge_instance(target(), instance)
    assert verdict.state is UnitState.HELD
    assert verdict.reason == reason


def window_target() -> WindowTarget:
    return WindowTarget(
        "w1", (("ods_orders", WS), ("dwd_orders", WS)), S0 - HOUR, S0, T_ASK, T_ASK + 1000
    )


def test_a_window_is_done_when_all_its_instances_were_rerun_after_our_request() -> None:
    rerun = [listed(submit_time=T_ASK + k, status="success", start_time=T_ASK + k) for k in (5, 9)]
    verdict = judge_window(window_target(), rerun)
    assert verdict.state is UnitState.DONE
    assert "all 2 instances" in verdict.evidence
    assert "ods_orders, dwd_orders" in verdict.evidence


def test_a_window_is_pending_when_all_its_runs_ended_before_our_request() -> None:
    verdict = judge_window(window_target(), [listed(), listed(plan_time=S0 - HOUR)])
    assert verdict.state is None


def test_a_window_is_held_when_mixed_empty_or_too_close_to_our_request() -> None:
    mixed = [listed(), listed(submit_time=T_ASK + 5, status="waiting", start_time=0, end_time=0)]
    assert judge_window(window_target(), mixed).reason == "window inconclusive"
    assert judge_window(window_target(), []).reason == "no instances in window"
    # A run that ended within the clock allowance before our request could be ours on a
    # service whose clock is behind: never pending on that.
    close = listed(submit_time=T_ASK - SKEW - 5000, start_time=T_ASK - SKEW - 4000,
                   end_time=T_ASK - 1000)  # fmt: skip
    assert judge_window(window_target(), [close]).state is UnitState.HELD


def test_an_inconclusive_window_says_what_each_instance_shows_in_words_that_agree() -> None:
    # It said "0 of 1 instances show a run after ..., 0 do not", and left out the instances
    # that show neither a run after our request nor one over well before it.
    close = listed(submit_time=T_ASK - SKEW - 5000, start_time=T_ASK - SKEW - 4000,
                   end_time=T_ASK - 1000)  # fmt: skip
    rerun = listed(submit_time=T_ASK + 5, status="waiting", start_time=0, end_time=0)
    asked = "our request (first sent 2024-11-26T14:06:40Z)"
    said = [
        judge_window(window_target(), instances).evidence.split(": ", 1)[1]
        for instances in ([close], [listed(), rerun], [listed(), rerun, close])
    ]
    assert said == [
        f"its 1 instance shows no run after {asked}, nor one that ended before it: inconclusive",
        f"1 of 2 instances shows a run after {asked}, 1 a run that ended before it: inconclusive",
        f"1 of 3 instances shows a run after {asked}, 1 a run that ended before it, 1 neither: "
        "inconclusive",
    ]


def test_the_summary_reads_as_a_sentence() -> None:
    assert str(VerifySummary()) == "verify: no held units; nothing to check."
    s = VerifySummary(3, 2, 1)
    s.reasons["instance not listed"] += 1
    text = str(s)
    assert text.startswith("verify: 6 held units checked against the instances' live state: ")
    assert "3 were rerun (now done), 2 were not (pending again" in text
    assert "1 stays held (instance not listed: 1)" in text
    assert "--resend-held" in text


# -- against the fake service ----------------------------------------------------------------------

MANIFEST = f"""version = 1
[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
timezone = "Asia/Shanghai"

[[select]]
job_names = ["ods_orders", "ods_users", "dws_sales_hourly"]
begin = "2024-11-25T22:00:00"
end = "2024-11-26T08:00:00"
batch = 10

[[window]]
job_name = "ods_payments"
begin = "2024-11-25T18:00:00"
end = "2024-11-25T22:00:00"
chunk = "1h"
concurrent = 4
jobs = [{{ job_name = "dwd_payments", workspace_id = "{WS}" }}]
"""
# 40 + 10 + 10 failed instances in 4 + 1 + 1 requests; 4 window requests of 2 x 4 instances.
SELECTED, WINDOW_CHUNKS, WINDOW_INSTANCES = 60, 4, 32


def catalog(**overrides: Any) -> Catalog:
    fields: dict[str, Any] = {"rerun_fail_rate": 0.0, "waiting_s": 1.0, "running_s": 3.0}
    fields.update(overrides)
    return dataclasses.replace(Catalog.demo(ANCHOR), **fields)


def shared_clock() -> FakeClock:
    # An hour after the catalog's "now": reruns happen after every original run.
    return FakeClock(wall=ANCHOR / 1000 + 3600)


@dataclasses.dataclass
class World:
    srv: FakeServer
    transport: HttpTransport
    clock: FakeClock
    pacer: Pacer
    manifest: Manifest
    selections: dict[str, list[SelectedInstance]]
    chunks: list[Chunk]
    journal_path: Path

    def open_journal(self, path: Path | None = None, *, slim: bool = False) -> Journal:
        """The world's journal (or the one at ``path``), read in full or slim (as ``verify``
        and ``run`` read it)."""
        return Journal.open(
            path or self.journal_path, Binding(PROJECT, self.srv.url), tool_version="t", slim=slim
        )

    async def send_each_once(self, journal: Journal, chunks: list[Chunk] | None = None) -> None:
        """Every chunk (of ``chunks``) sent once, its intent and outcome recorded as a run
        records them (a dropped connection is held), 50 ms apart on the shared clock."""
        for chunk in self.chunks if chunks is None else chunks:
            await journal.intend(chunk, 1, self.clock.wall())
            outcome = await self.transport.send(chunk)
            decided = {Kind.DONE: "done", Kind.HELD: "held"}[outcome.kind]
            journal.outcome(chunk, 1, outcome, self.clock.wall(), decided)
            self.clock.advance(0.05)

    def rerun_counts(self) -> list[int]:
        truth = self.srv.instances
        assert truth is not None
        return [truth.rerun_count(i.job_name, i.plan_time) for i in self.selections["select[0]"]]


@asynccontextmanager
async def world(
    tmp_path: Path, server: type[FakeServer] = FakeServer, manifest: str = MANIFEST, **config: Any
) -> AsyncIterator[World]:
    clock = shared_clock()
    config.setdefault("catalog", catalog())
    async with (
        server(FakeConfig(clock=clock, **config)) as srv,
        HttpTransport(
            endpoint=srv.url, project_id=PROJECT, auth=Auth(), timeout=5.0, wall=clock.wall
        ) as transport,
    ):
        path = tmp_path / "outage.toml"
        path.write_text(manifest, encoding="utf-8")
        pacer = Pacer(PacingConfig(rate=1000.0))
        loaded = load_manifest(path)
        selections = await query_selections(
            loaded, transport, pacer=pacer, clock=clock, on_note=lambda _: None
        )
        chunks = list(plan(loaded, selections=selections))
        w = World(srv, transport, clock, pacer, loaded, selections, chunks, tmp_path / "j")
        with w.open_journal() as journal:
            journal.begin_run(RunInfo.from_manifest(path, selections=_rows(selections)))
        yield w


def _rows(
    found: Mapping[str, list[SelectedInstance]],
) -> dict[str, list[tuple[str, int, int, int]]]:
    return {
        label: [(i.job_name, i.job_id, i.plan_time, i.submit_time) for i in items]
        for label, items in found.items()
    }


def units_of(chunks: list[Chunk]) -> set[str]:
    return {u for c in chunks for u in c.units}


async def test_after_a_kill_the_sent_are_done_and_the_unsent_pending(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert len(w.chunks) == 6 + WINDOW_CHUNKS
        # The run records every intent, sends half of the requests, and is killed (-9) before
        # it can record a single outcome.
        sent = [c for k, c in enumerate(w.chunks) if k % 2 == 0]
        unsent = [c for k, c in enumerate(w.chunks) if k % 2 == 1]
        with w.open_journal() as journal:
            for chunk in w.chunks:
                await journal.intend(chunk, 1, w.clock.wall())
            for chunk in sent:
                assert (await w.transport.send(chunk)).kind is Kind.DONE
                w.clock.advance(0.05)
        # (closing flushes nothing more: intents are durable already, outcomes never came)
        with w.open_journal() as journal:
            before = journal.state()
            assert set(before.units) == units_of(w.chunks)
            assert set(before.units.values()) == {UnitState.HELD}
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            after = journal.state()
        assert summary.verified_done == len(units_of(sent))
        assert summary.made_pending == len(units_of(unsent))
        assert summary.still_held == 0
        assert "were not (pending again" in str(summary)
        # What the journal now says (a replay of the file, not only the live state).
        with w.open_journal() as journal:
            replayed = journal.state()
        for state in (after, replayed):
            assert {u for u, s in state.units.items() if s is UnitState.DONE} == units_of(sent)
            assert not units_of(unsent) & set(state.units)
            assert set(state.verified) == units_of(w.chunks)
        some = next(iter(units_of(sent)))
        assert "after our request" in replayed.verified[some]
        # The resume sends exactly what the service never got, and nothing else.
        resume = list(chunks_to_send(w.manifest, replayed, ResumeFlags(), w.selections))
        assert units_of(resume) == units_of(unsent)
        for chunk in resume:
            assert (await w.transport.send(chunk)).kind is Kind.DONE
        # Every selected instance was rerun exactly once; every window chunk accepted once.
        assert w.rerun_counts() == [1] * SELECTED
        window_ids = [e.chunk_id for e in w.srv.ledger if e.mode == "B"]
        assert sorted(window_ids) == sorted({c.id for c in w.chunks if c.kind == "window"})


async def test_after_dropped_connections_every_held_unit_is_found_done(tmp_path: Path) -> None:
    async with world(tmp_path, drop_after_accept=0.5, seed=4) as w:
        with w.open_journal() as journal:
            await w.send_each_once(journal)
            held = {u for u, s in journal.state().units.items() if s is UnitState.HELD}
            assert 0 < len(held) < len(units_of(w.chunks))
            assert w.srv.stats.dropped > 0
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            assert summary.verified_done == len(held)
            assert summary.made_pending == summary.still_held == 0
            state = journal.state()
        assert set(state.units.values()) == {UnitState.DONE}
        assert list(chunks_to_send(w.manifest, state, ResumeFlags(), w.selections)) == []
        assert w.rerun_counts() == [1] * SELECTED


WRITTEN_BACK = "removed while this run wrote it. Nothing more is sent; what it had recorded"


async def test_a_journal_removed_before_the_verify_reads_its_requests_keeps_the_verdicts(
    tmp_path: Path,
) -> None:
    """An `rm` of the journal just after a verify opened it: the held units' requests were
    read again by path, a FileNotFoundError and a traceback (exit 1), where a removal found
    later writes the journal back. They are read through the verify's own descriptor now,
    and its verdicts are written back with the rest. (The command-line tests of a journal
    removed while a verify waits hit this on a loaded machine, one time in three.)"""
    async with world(tmp_path, drop_after_accept=0.5, seed=4) as w:
        with w.open_journal() as journal:
            await w.send_each_once(journal)
            held = {u for u, s in journal.state().units.items() if s is UnitState.HELD}
        assert held
        journal = w.open_journal(slim=True)
        w.journal_path.unlink()
        # Its verdicts' commit finds the file gone (no try/finally: a close there would
        # find it too, and its Fatal would hide any other error).
        with pytest.raises(Fatal, match=WRITTEN_BACK):
            await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
        journal.close()
        with w.open_journal() as again:
            assert set(again.state().units.values()) == {UnitState.DONE}
            assert held <= set(again.state().verified)


async def test_a_journal_removed_before_the_watch_reads_its_requests_is_followed_and_kept(
    tmp_path: Path,
) -> None:
    """The same for a watch (``run --watch``, which reads the done units' requests when its
    run has ended): it follows the reruns, and the journal is written back at its close."""
    async with world(tmp_path) as w:
        await send_all(w)
        journal = w.open_journal()
        w.journal_path.unlink()
        con, _ = console()
        summary = await watch(
            journal, w.transport, pacer=w.pacer, clock=w.clock, console=con, poll=1.0
        )
        assert summary.succeeded == SELECTED + WINDOW_INSTANCES
        with pytest.raises(Fatal, match=WRITTEN_BACK):
            journal.close()
        with w.open_journal() as again:
            assert set(again.state().units.values()) == {UnitState.DONE}


async def test_verify_waits_for_a_fresh_request_to_settle(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        with w.open_journal() as journal:
            await journal.intend(w.chunks[0], 1, w.clock.wall())
            start, slept = w.clock.now(), len(w.clock.sleeps)
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
        assert w.clock.sleeps[slept] == pytest.approx(5.0, abs=0.01)
        assert w.clock.now() - start >= 5.0
        assert summary.made_pending == len(w.chunks[0].units)


LAG_S = 3.0  # how late the fake lists an accepted rerun, in the tests of a slow list


def test_a_unit_the_list_shows_unrerun_stays_held_while_an_accepted_request_shows_so_too() -> None:
    # judge_lag, pure: canaries with the verdict the list gives them as if they were held.
    t = target(since_ms=T_ASK, last_ms=T_ASK + 1000)
    accepted = target(unit="c1", plan_time=t.plan_time + HOUR, since_ms=T_ASK + 1500)
    key = ("ods_orders", WS)
    unseen = Verdict(None, "not rerun", "not rerun")
    seen = Verdict(UnitState.DONE, "rerun seen", "rerun seen")
    after = Canary(accepted, key, T_ASK + 1600)
    before = Canary(dataclasses.replace(accepted, unit="c0"), key, T_ASK - 1000)
    lagging = judge_lag(t, [(after, unseen)])
    assert lagging is not None and lagging.state is UnitState.HELD
    assert lagging.reason == "instance list lagging"
    assert lagging.evidence == (
        "ods_orders plan_time 2024-11-26T06:13:00Z: the instance list does not yet show "
        "reruns the service accepted (e.g. ods_orders at 2024-11-26T07:13:00Z, accepted "
        "2024-11-26T14:06:41Z): verify again later (or with a longer --settle)"
    )
    # A request accepted after ours shows rerun: the list has caught up with ours too.
    assert judge_lag(t, [(before, unseen), (after, seen)]) is None
    # One accepted before ours showing rerun says nothing of ours.
    assert judge_lag(t, [(before, seen), (after, unseen)]) is not None
    # No canary, or none shown unrerun: judged as the list shows it.
    assert judge_lag(t, []) is None
    assert judge_lag(t, [(after, Verdict(UnitState.HELD, "?", "instance not listed"))]) is None
    # Another job's canaries count only when the unit's own job has none.
    other = Canary(dataclasses.replace(accepted, job_name="ods_users"), ("ods_users", WS), 0)
    assert judge_lag(t, [(other, unseen)]) is not None
    assert judge_lag(t, [(other, unseen), (after, seen)]) is None


async def dropped_under_a_slow_list(w: World, journal: Journal) -> set[str]:
    """Every chunk sent once, some of them dropped after the fake accepted them: the held
    units, each one's rerun accepted, which the list shows only ``LAG_S`` later."""
    await w.send_each_once(journal)
    held = {u for u, s in journal.state().units.items() if s is UnitState.HELD}
    assert held and w.srv.stats.dropped > 0
    return held


async def test_a_list_slower_than_the_settle_time_leaves_the_held_units_held(
    tmp_path: Path,
) -> None:
    # Verify reads the list a second after the newest request, the fake lists a rerun three
    # seconds after accepting it: the held units' instances still show the run we asked to
    # rerun, finished before our request. That picture used to make them pending, and the
    # next run reran them a second time. The done requests sent around them are shown no
    # better: the list lags, and the held units stay held until it catches up.
    async with world(
        tmp_path, catalog=catalog(list_lag_s=LAG_S), drop_after_accept=0.4, seed=2
    ) as w:
        with w.open_journal() as journal:
            held = await dropped_under_a_slow_list(w, journal)
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=1.0
            )
            assert (summary.verified_done, summary.made_pending) == (0, 0)
            assert summary.still_held == len(held)
            assert summary.reasons == {"instance list lagging": len(held)}
            text = str(summary)
            assert "the instance list does not yet show reruns the service accepted (e.g. " in text
            assert "verify again later" in text, text
            # Its advice is to wait for the list, not to resend what it lags behind.
            assert f"verify again in a minute for the {len(held)} units the list" in text, text
            assert "--resend-held" not in text, text
            state = journal.state()
            assert {u for u, s in state.units.items() if s is UnitState.HELD} == held
            # The next run sends none of them: each rerun was accepted exactly once.
            assert list(chunks_to_send(w.manifest, state, ResumeFlags(), w.selections)) == []
            ids = [e.chunk_id for e in w.srv.ledger]
            assert len(ids) == len(set(ids)) == len(w.chunks)
            # Once the list has caught up, the same verify finds them rerun.
            later = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            assert (later.verified_done, later.made_pending, later.still_held) == (len(held), 0, 0)
        assert w.rerun_counts() == [1] * SELECTED


async def test_a_settle_time_above_the_lag_decides_the_held_units_at_once(
    tmp_path: Path,
) -> None:
    async with world(
        tmp_path, catalog=catalog(list_lag_s=LAG_S), drop_after_accept=0.4, seed=2
    ) as w:
        with w.open_journal() as journal:
            held = await dropped_under_a_slow_list(w, journal)
            start = w.clock.now()
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=LAG_S + 1
            )
        assert (summary.verified_done, summary.made_pending, summary.still_held) == (
            len(held),
            0,
            0,
        )
        assert w.clock.now() - start < LAG_S + 1.5  # one wait, from the newest request


async def test_a_held_unit_whose_request_the_list_shows_unacted_is_still_pending_under_a_lag(
    tmp_path: Path,
) -> None:
    # The lag evidence holds back only what the list may not show yet: a held request that
    # never reached the service, sent before requests the list already shows rerun, is
    # still made pending.
    async with world(tmp_path, catalog=catalog(list_lag_s=LAG_S)) as w:
        first, *rest = w.chunks
        with w.open_journal() as journal:
            await journal.intend(first, 1, w.clock.wall())  # killed before it left
            w.clock.advance(0.05)
            for chunk in rest:
                await journal.intend(chunk, 1, w.clock.wall())
                journal.outcome(chunk, 1, await w.transport.send(chunk), w.clock.wall(), "done")
                w.clock.advance(0.05)
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=LAG_S + 1
            )
        assert (summary.verified_done, summary.made_pending, summary.still_held) == (
            0,
            len(first.units),
            0,
        )


async def test_the_canaries_are_found_among_windows_a_slim_read_settled(tmp_path: Path) -> None:
    # A journal read slim (verify, run --verify-held) keeps the windows sent once and done as
    # their intents' offsets only. Here they are the only accepted requests: the held batches'
    # reruns were accepted but their answers lost, and the list shows none of it yet. The
    # windows must still serve as canaries, or the held units are made pending and the next
    # run reruns them a second time.
    async with world(tmp_path, catalog=catalog(list_lag_s=LAG_S)) as w:
        batches = [c for c in w.chunks if c.kind != "window"]
        windows = [c for c in w.chunks if c.kind == "window"]
        with w.open_journal() as journal:
            for chunk in batches:
                await journal.intend(chunk, 1, w.clock.wall())
                assert (await w.transport.send(chunk)).kind is Kind.DONE
                journal.outcome(
                    chunk, 1, Outcome(Kind.HELD, reason="timeout"), w.clock.wall(), "held"
                )
                w.clock.advance(0.05)
            await w.send_each_once(journal, windows)
        held = units_of(batches)
        with w.open_journal(slim=True) as journal:
            state = journal.state()
            assert set(state.settled) == {c.id for c in windows}
            assert not [info for info in state.chunks.values() if info.state == "done"]
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=1.0
            )
            assert (summary.verified_done, summary.made_pending) == (0, 0), str(summary)
            assert summary.reasons == {"instance list lagging": len(held)}
            assert "(e.g. ods_payments window " in str(summary)
            state = journal.state()
            assert list(chunks_to_send(w.manifest, state, ResumeFlags(), w.selections)) == []
            # Once the list has caught up, the same verify finds them rerun.
            later = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            assert (later.verified_done, later.made_pending, later.still_held) == (len(held), 0, 0)
        assert w.rerun_counts() == [1] * SELECTED


async def every_fate(w: World, journal: Journal) -> None:
    """Of the world's requests: a batch killed before it left (held, not acted on), a batch
    and a window refused (failed), a window throttled then done, the rest sent once, some of
    them dropped after the fake accepted them (held) and the others done."""
    first, refused, *batches = [c for c in w.chunks if c.kind != "window"]
    throttled, rejected, *windows = [c for c in w.chunks if c.kind == "window"]
    await journal.intend(first, 1, w.clock.wall())
    w.clock.advance(0.05)
    no = Outcome(Kind.FAILED, 400, "DLF.1000", "Failed to find the job.", "req-1", reason="400")
    for chunk in (refused, rejected):
        await journal.intend(chunk, 1, w.clock.wall())
        journal.outcome(chunk, 1, no, w.clock.wall(), "failed")
        w.clock.advance(0.05)
    await journal.intend(throttled, 1, w.clock.wall())
    journal.outcome(throttled, 1, Outcome(Kind.RETRY, 429, reason="429"), w.clock.wall(), "retry")
    await journal.intend(throttled, 2, w.clock.wall())
    journal.outcome(throttled, 2, await w.transport.send(throttled), w.clock.wall(), "done")
    w.clock.advance(0.05)
    await w.send_each_once(journal, [*batches, *windows])


@pytest.mark.parametrize("settle", [1.0, LAG_S + 1], ids=["list lagging", "list caught up"])
async def test_a_verify_of_a_slim_read_decides_as_one_of_a_full_read(
    tmp_path: Path, settle: float
) -> None:
    # Two copies of one journal of every fate, verified one after the other (the second at
    # once: the first waited for the settle time), one read in full and one slim.
    async with world(
        tmp_path, catalog=catalog(list_lag_s=LAG_S), drop_after_accept=0.4, seed=2
    ) as w:
        with w.open_journal() as journal:
            await every_fate(w, journal)
        copies = {"full": tmp_path / "full", "slim": tmp_path / "slim"}
        seen: dict[str, tuple[Any, ...]] = {}
        for how, path in copies.items():
            path.write_bytes(w.journal_path.read_bytes())
            with w.open_journal(path, slim=how == "slim") as journal:
                state = journal.state()
                if how == "slim":
                    assert state.settled  # windows done at once
                held = sorted(u for u, s in state.units.items() if s is UnitState.HELD)
                targets = load_targets(path, state, held)
                keys = {(t.job_name, t.workspace) for t in targets if isinstance(t, InstanceTarget)}
                keys |= {k for t in targets if isinstance(t, WindowTarget) for k in t.jobs}
                canaries = load_canaries(path, state, keys)
                summary = await verify_held(
                    journal, w.transport, pacer=w.pacer, clock=w.clock, settle=settle
                )
                units = dict(journal.state().units)
            verdicts = [
                (r["unit"], r["state"], r["evidence"]) for r in journal_records(path, "verify")
            ]
            seen[how] = (
                held,
                sorted(targets, key=lambda t: t.unit),
                canaries,
                summary,
                verdicts,
                units,
            )
        assert seen["slim"] == seen["full"]
        held, _, canaries, summary, verdicts, units = seen["full"]
        # What was compared: held units of both kinds, decided (or held for the lag) with
        # window canaries among the others; the failed units left alone.
        assert {c.key[0] for c in canaries} >= {"ods_payments", "ods_orders"}
        assert len(verdicts) == len(held) > 0
        assert UnitState.FAILED in units.values()
        if settle == 1.0:
            assert summary.reasons["instance list lagging"] == len(held), str(summary)
        else:
            assert summary.verified_done > 0 and summary.made_pending > 0, str(summary)


def test_the_verify_command_reads_its_journal_slim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Of the requests sent once and done, a verify needs no more than a status does (the
    # test above shows that it decides the same): its journal is opened slim.
    from typer.testing import CliRunner

    from bulkrerun.cli import app

    url = "http://127.0.0.1:9"  # asked nothing: no unit is held
    manifest = tmp_path / "w.toml"
    manifest.write_text(windows("2024-11-25T18:00:00", "2024-11-25T22:00:00", "1h"))
    chunks = list(plan(load_manifest(manifest)))
    path = tmp_path / "j"

    async def done() -> None:
        with Journal.open(path, Binding(PROJECT, url), tool_version="t") as journal:
            for k, chunk in enumerate(chunks):
                await journal.intend(chunk, 1, ANCHOR / 1000 + k)
                journal.outcome(chunk, 1, Outcome(Kind.DONE, 200), ANCHOR / 1000 + k, "done")

    anyio.run(done)
    opened: list[bool] = []
    real = Journal.open.__func__  # type: ignore[attr-defined]

    def spy(cls: type[Journal], *args: Any, **kwargs: Any) -> Journal:
        opened.append(kwargs.get("slim", False))
        return real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Journal, "open", classmethod(spy))
    for key in list(os.environ):
        if key.startswith(("BULKRERUN_", "CLOUD_SDK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BULKRERUN_PROJECT_ID", PROJECT)
    monkeypatch.setenv("BULKRERUN_TOKEN", "t")
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    result = CliRunner().invoke(app, ["verify", str(path), "--endpoint", url])
    assert result.exit_code == 0, result.output
    assert "verify: no held units; nothing to check." in result.output
    assert opened == [True]


DAY = 24 * HOUR


def windows(begin: str | int, end: str | int, chunk: str) -> str:
    """A manifest of one window of ods_payments with dwd_payments (both every 15 minutes in
    the catalog); times as TOML values."""
    head = MANIFEST[: MANIFEST.index("[[select]]")]
    return head + (
        f'[[window]]\njob_name = "ods_payments"\nbegin = {begin}\nend = {end}\n'
        f'chunk = "{chunk}"\njobs = [{{ job_name = "dwd_payments", workspace_id = "{WS}" }}]\n'
    )


async def hold(w: World, held: list[Chunk], sent: list[Chunk]) -> None:
    """``held`` recorded as intents, of them ``sent`` sent, then the run killed before any
    outcome: every unit of ``held`` is held."""
    with w.open_journal() as journal:
        for chunk in held:
            await journal.intend(chunk, 1, w.clock.wall())
        for chunk in sent:
            assert (await w.transport.send(chunk)).kind is Kind.DONE
            w.clock.advance(0.05)


async def test_held_windows_hours_apart_are_each_judged_from_their_own_instances(
    tmp_path: Path,
) -> None:
    # Held chunks 8 h apart are listed by separate queries of each job. Only the last
    # query's instances used to be kept: every other held window showed no instance at all
    # ("no instances in window") and stayed held, though each was sent or not.
    manifest = windows('"2024-11-24T00:00:00"', '"2024-11-26T00:00:00"', "2h")
    async with world(tmp_path, manifest=manifest) as w:
        assert len(w.chunks) == 24
        held = w.chunks[::4]  # 6 chunks, 6 h apart from one's end to the next's start
        sent, unsent = held[::2], held[1::2]
        await hold(w, held, sent)
        with w.open_journal() as journal:
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            state = journal.state()
        assert (summary.verified_done, summary.made_pending, summary.still_held) == (3, 3, 0), str(
            summary
        )
        assert {u for u, s in state.units.items() if s is UnitState.DONE} == units_of(sent)
        assert not units_of(unsent) & set(state.units)  # pending again
        # The resume sends exactly what the service never got; every chunk is accepted once.
        resume = list(chunks_to_send(w.manifest, state, ResumeFlags(), w.selections))
        assert units_of(resume) == units_of(w.chunks) - units_of(sent)
        for chunk in resume:
            assert (await w.transport.send(chunk)).kind is Kind.DONE
        accepted = [e.chunk_id for e in w.srv.ledger]
        assert sorted(accepted) == sorted(c.id for c in w.chunks)


async def test_a_refused_query_leaves_held_only_the_units_it_covers(tmp_path: Path) -> None:
    # Two held chunks of one window: one more than a month back (the list refuses to look
    # there, DLF.0104), one of yesterday. The refusal used to stand for the whole job: the
    # recent chunk, whose instances were listed, was held as "instance list unavailable".
    old_enough = catalog(start_ms=ANCHOR - 40 * DAY)
    manifest = windows(ANCHOR - 34 * DAY, ANCHOR - DAY, "1d")
    async with world(tmp_path, manifest=manifest, catalog=old_enough) as w:
        first, last = w.chunks[0], w.chunks[-1]
        await hold(w, [first, last], [first, last])
        with w.open_journal() as journal:
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            state = journal.state()
    (old,), (recent,) = first.units, last.units
    assert (summary.verified_done, summary.made_pending, summary.still_held) == (1, 0, 1)
    assert summary.reasons == {"instance list unavailable": 1}
    assert state.units[recent] is UnitState.DONE
    assert "all 192 instances show runs" in state.verified[recent]
    assert state.units[old] is UnitState.HELD
    assert "DLF.0104" in state.verified[old]
    assert "more than one month back" in state.verified[old]
    # The evidence names the plan times the refused query covered: those of the old chunk.
    assert "plan times 2024-10-23T12:00:00Z..2024-10-24T11:59:59Z" in state.verified[old]


async def test_a_watch_follows_done_windows_hours_apart_each_through_its_own_query(
    tmp_path: Path,
) -> None:
    # The watch's queries are the verification's: done chunks 8 h apart are listed by
    # separate queries of each job, and every one of their instances is followed.
    manifest = windows('"2024-11-24T00:00:00"', '"2024-11-26T00:00:00"', "2h")
    async with world(tmp_path, manifest=manifest) as w:
        w.chunks = w.chunks[::4]
        await send_all(w)
        con, _ = console()
        with w.open_journal() as journal:
            summary = await watch(
                journal, w.transport, pacer=w.pacer, clock=w.clock, console=con, poll=1.0
            )
    assert summary.jobs == {"ods_payments": {"success": 48}, "dwd_payments": {"success": 48}}
    seen = read_watch(w.journal_path)
    assert {unit: len(records) for unit, records in seen.items()} == {c.id: 16 for c in w.chunks}


class Unavailable:
    project_id = PROJECT

    async def get_json(
        self, path: str, query: Mapping[str, str | int], workspace: str
    ) -> tuple[Outcome, Any]:
        return Outcome(Kind.RETRY, status=503, error_code="APIG.0202", reason="unavailable"), None


async def test_units_whose_instances_cannot_be_read_stay_held_with_the_reason(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        with w.open_journal() as journal:
            await journal.intend(w.chunks[0], 1, w.clock.wall())
            summary = await verify_held(
                journal,
                Unavailable(),
                pacer=Pacer(PacingConfig(max_attempts=2)),
                clock=w.clock,
            )
            state = journal.state()
    units = w.chunks[0].units
    assert summary.still_held == len(units)
    assert summary.reasons == {"instance list unavailable": len(units)}
    assert {state.units[u] for u in units} == {UnitState.HELD}
    assert "no answer after 2 attempts" in state.verified[units[0]]
    # The summary says why, with the first unit's evidence: no need to open the report.
    assert f"instance list unavailable: {len(units)}, e.g. {state.verified[units[0]]})" in str(
        summary
    )


async def test_nothing_held_means_nothing_asked(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        requests = w.srv.stats.requests
        with w.open_journal() as journal:
            summary = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
        assert summary.checked == 0
        assert w.srv.stats.requests == requests


# -- watch -----------------------------------------------------------------------------------------


async def send_all(w: World) -> None:
    with w.open_journal() as journal:
        for chunk in w.chunks:
            await journal.intend(chunk, 1, w.clock.wall())
            outcome = await w.transport.send(chunk)
            assert outcome.kind is Kind.DONE
            journal.outcome(chunk, 1, outcome, w.clock.wall(), "done")


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=120, color_system=None), buffer


async def test_watch_follows_every_rerun_to_success_and_records_it(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await send_all(w)
        con, out = console()
        with w.open_journal() as journal:
            summary = await watch(
                journal, w.transport, pacer=w.pacer, clock=w.clock, console=con, poll=1.0
            )
    assert isinstance(summary, WatchSummary)
    assert not summary.timed_out
    assert summary.total() == summary.succeeded == SELECTED + WINDOW_INSTANCES
    assert summary.jobs["ods_orders"] == {"success": 40}
    assert summary.jobs["dwd_payments"] == {"success": 16}
    # Waiting 1 s and running 3 s on the server clock: the watch polled through them.
    assert 4.0 <= summary.seconds < 10.0
    text = out.getvalue()
    assert "reruns by job" in text
    assert "watch: 92 rerun instances: 92 succeeded, 0 failed." in text
    assert "waiting, running or not yet listed" in text
    # The sidecar: one final status per instance, by unit, next to the journal.
    assert watch_path(w.journal_path) == tmp_path / "j.watch"
    assert os.stat(tmp_path / "j.watch").st_mode & 0o777 == 0o600
    seen = read_watch(w.journal_path)
    first = w.selections["select[0]"][0]
    unit = instance_unit_id(first.job_name, first.job_id, first.plan_time, first.submit_time)
    (record,) = seen[unit]
    assert (record.job_name, record.plan_time, record.status) == (
        first.job_name,
        first.plan_time,
        "success",
    )
    assert record.submit_time > first.submit_time
    window = next(c for c in w.chunks if c.kind == "window")
    assert len(seen[window.id]) == 8
    assert {r.job_name for r in seen[window.id]} == {"ods_payments", "dwd_payments"}


async def test_watch_counts_failed_reruns(tmp_path: Path) -> None:
    async with world(tmp_path, catalog=catalog(rerun_fail_rate=1.0)) as w:
        await send_all(w)
        con, out = console()
        with w.open_journal() as journal:
            summary = await watch(journal, w.transport, pacer=w.pacer, clock=w.clock, console=con)
    assert summary.failed == SELECTED + WINDOW_INSTANCES
    assert summary.succeeded == 0
    assert "0 succeeded, 92 failed" in out.getvalue()
    assert {r.status for rs in read_watch(w.journal_path).values() for r in rs} == {"fail"}
    # Accepted is not succeeded: status says so, and that a run of this journal will not
    # send them again.
    from bulkrerun.report import status

    steps = status(w.journal_path).next_steps
    assert steps[-1].startswith(
        "see which 92 rerun instances the watch saw end failed: bulkrerun report "
    )
    assert "no run of this journal sends them again" in steps[-1]


async def test_watch_gives_up_at_the_timeout_and_says_what_is_unfinished(tmp_path: Path) -> None:
    async with world(tmp_path, catalog=catalog(running_s=10_000.0)) as w:
        summary, text = await watch_to_the_timeout(w, w.transport)
    assert summary.timed_out
    assert summary.unfinished == SELECTED + WINDOW_INSTANCES
    assert summary.jobs["ods_users"] == {"running": 10}
    assert "92 not finished when the watch timed out" in text
    assert read_watch(w.journal_path) == {}
    # In units, as the run's end record keeps it for status: every done unit unseen.
    assert (summary.units, summary.unfinished_units) == (SELECTED + WINDOW_CHUNKS,) * 2


async def test_a_watch_tells_its_progress_from_before_its_first_poll_to_its_end(
    tmp_path: Path,
) -> None:
    # A signal cancels the watch from outside, which loses its return value: the run keeps
    # what it heard last, so that its end record says how much was not seen to finish.
    heard: list[WatchSummary] = []
    async with world(tmp_path) as w:
        await send_all(w)
        con, _ = console()
        with w.open_journal() as journal:
            summary = await watch(
                journal,
                w.transport,
                pacer=w.pacer,
                clock=w.clock,
                console=con,
                poll=1.0,
                on_progress=heard.append,
            )
    first = heard[0]
    # Before the first answer: the instance units not yet listed, the windows' instances not
    # yet known, every done unit unseen.
    assert first.jobs["ods_orders"] == {"not yet listed": 40}
    assert "dwd_payments" not in first.jobs
    assert (first.units, first.unfinished_units) == (SELECTED + WINDOW_CHUNKS,) * 2
    assert heard[-1] == summary
    assert (summary.units, summary.unfinished_units) == (SELECTED + WINDOW_CHUNKS, 0)
    assert [s.unfinished_units for s in heard] == sorted(
        (s.unfinished_units for s in heard), reverse=True
    )


async def watch_to_the_timeout(w: World, transport: Any) -> tuple[WatchSummary, str]:
    """Every request sent, then a watch of 30 s (virtual) polling every 5: the summary and
    what it printed."""
    await send_all(w)
    con, out = console()
    with w.open_journal() as journal:
        summary = await watch(
            journal, transport, pacer=w.pacer, clock=w.clock, console=con, poll=5.0, timeout=30.0
        )
    return summary, out.getvalue()


class Renamed:
    """The transport, with the instance list showing ``running`` as ``queued``: a status
    the API does not define."""

    def __init__(self, transport: HttpTransport) -> None:
        self._transport = transport
        self.project_id = transport.project_id

    async def get_json(
        self, path: str, query: Mapping[str, str | int], workspace: str
    ) -> tuple[Outcome, Any]:
        outcome, parsed = await self._transport.get_json(path, query, workspace)
        for i in parsed.get("instances") or () if isinstance(parsed, dict) else ():
            if i.get("status") == "running":
                i["status"] = "queued"
        return outcome, parsed


async def test_watch_follows_a_status_the_api_does_not_define_until_the_timeout(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, catalog=catalog(running_s=10_000.0)) as w:
        summary, printed = await watch_to_the_timeout(w, Renamed(w.transport))
    # Not taken for an ended run: followed to the timeout, counted as not finished, and
    # nothing recorded as final.
    assert summary.timed_out
    assert summary.jobs["ods_users"] == {"queued": 10}
    assert summary.unfinished == SELECTED + WINDOW_INSTANCES
    queued = sum(c["queued"] for c in summary.jobs.values())
    assert queued > 50
    text = " ".join(printed.split())  # the console wraps long lines
    assert "ended otherwise" not in text
    assert (
        f"92 not finished ({queued} in a status the API does not define) when the watch "
        "timed out." in text
    )
    assert read_watch(w.journal_path) == {}


async def test_watch_without_done_units_says_so(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        con, out = console()
        with w.open_journal() as journal:
            summary = await watch(journal, w.transport, pacer=w.pacer, clock=w.clock, console=con)
    assert summary.total() == 0
    assert "no rerun instances to watch" in out.getvalue()


def test_list_trouble_speaks_past_a_minute_every_five_and_when_it_is_over() -> None:
    unavailable = Outcome(
        Kind.RETRY, status=503, error_code="APIG.0202", error_msg="Backend unavailable"
    )
    wall0 = ANCHOR / 1000  # 2024-11-26T12:00:00Z, at now = 0
    trouble = ListTrouble(until_wall=wall0 + 3600)
    assert trouble.answered(5.0) is None  # nothing was said: nothing to take back
    for now in (10.0, 30.0, 69.9):
        assert trouble.failed(unavailable, now, wall0 + now) is None
    notice = trouble.failed(unavailable, 70.0, wall0 + 70.0)
    assert notice == (
        "watch: the instance list has been failing for 1m00s (since 2024-11-26T12:00:10Z; "
        "last: 503 APIG.0202 Backend unavailable). Following goes on until "
        "2024-11-26T13:00:00Z, when the watch times out; Ctrl-C stops following, and the "
        "reruns already sent stand."
    )
    assert trouble.failed(unavailable, 71.0, wall0 + 71.0) is None
    assert trouble.failed(unavailable, 369.9, wall0 + 369.9) is None
    refused = Outcome(Kind.RETRY, reason="could not connect (ClientConnectorError)")
    again = trouble.failed(refused, 370.0, wall0 + 370.0)
    assert again is not None
    assert "failing for 6m00s (since 2024-11-26T12:00:10Z; last: could not connect" in again
    assert trouble.answered(400.0) == (
        "watch: the instance list answers again, after 6m30s of failures; following the "
        "reruns goes on."
    )
    assert trouble.answered(401.0) is None
    # A new outage is counted from its own start.
    assert trouble.failed(unavailable, 500.0, wall0 + 500.0) is None
    assert trouble.failed(unavailable, 559.0, wall0 + 559.0) is None
    assert trouble.failed(unavailable, 560.0, wall0 + 560.0) is not None


class ListDown(FakeServer):
    """Answers the instance list 503 ``APIG.0202``, as the gateway does while the service
    behind it is down, from ``down[0]`` until ``down[1]`` on the server clock (monotonic);
    notes each refusal's wall time."""

    down = (float("inf"), float("inf"))

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.refused: list[float] = []

    async def _list(self, rid: str, request: Any, job_name: str) -> Any:
        from bulkrerun.fake.validate import Refusal

        if self.down[0] <= self._clock.now() < self.down[1]:
            self.refused.append(self._clock.wall())
            return self._refuse(rid, Refusal(503, "APIG.0202", "Backend unavailable"))
        return await super()._list(rid, request, job_name)


class Stamped(io.StringIO):
    """A console's file that notes the clock's wall reading at each print (one write each),
    with the print's lines, wrapped by the console, joined again."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.prints: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.prints.append((self.clock.wall(), " ".join(text.split())))
        return super().write(text)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_watch_whose_list_keeps_failing_says_so_past_a_minute_and_when_it_recovers(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, server=ListDown) as w:
        srv = w.srv
        assert isinstance(srv, ListDown)
        await send_all(w)
        start = w.clock.wall()
        srv.down = (w.clock.now(), w.clock.now() + 400.0)  # nearly seven minutes, then back
        file = Stamped(w.clock)
        con = Console(file=file, width=120, color_system=None)
        pacer = Pacer(PacingConfig(rate=1000.0), rng=random.Random(3))
        with w.open_journal() as journal:
            summary = await watch(journal, w.transport, pacer=pacer, clock=w.clock, console=con)
    assert summary.succeeded == SELECTED + WINDOW_INSTANCES  # followed to the end once back
    notices = [(t, text) for t, text in file.prints if "instance list has been failing" in text]
    back = [(t, text) for t, text in file.prints if "instance list answers again" in text]
    first_503 = srv.refused[0]
    # Not before the minute; after it, at the next failed attempt: attempts are at most a
    # backoff apart (30 s, PacingConfig.backoff_cap), or a breaker cooldown or a poll.
    (t1, n1), (t2, n2) = notices
    assert first_503 + LIST_NOTICE_AFTER_S <= t1 <= first_503 + LIST_NOTICE_AFTER_S + 35
    assert LIST_NOTICE_EVERY_S <= t2 - t1 <= LIST_NOTICE_EVERY_S + 35
    for notice in (n1, n2):
        assert "last: 503 APIG.0202 Backend unavailable" in notice
        since = re.search(r"since (\S+Z);", notice)
        assert since is not None
        when = datetime.strptime(since[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert first_503 - 1 <= when.timestamp() <= first_503 + 5
        assert f"until {_iso(start + 3600)}, when the watch times out" in notice
        assert "Ctrl-C stops following, and the reruns already sent stand" in notice
    ((t3, line),) = back
    assert t3 >= start + 400.0
    assert re.search(r"answers again, after \d+m\d\ds of failures", line)
    assert "watch: 92 rerun instances: 92 succeeded" in file.getvalue()


async def test_a_watch_after_one_killed_mid_write_loses_none_of_its_records(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await send_all(w)
        watch_path(w.journal_path).write_text('{"t":"instance","unit":"abc","job_na')
        con, _ = console()
        with w.open_journal() as journal:
            summary = await watch(
                journal, w.transport, pacer=w.pacer, clock=w.clock, console=con, poll=1.0
            )
    assert summary.total() == summary.succeeded == SELECTED + WINDOW_INSTANCES
    seen = read_watch(w.journal_path)
    assert sum(len(records) for records in seen.values()) == SELECTED + WINDOW_INSTANCES
    assert (
        watch_path(w.journal_path).read_text().startswith('{"t":"instance","unit":"abc","job_na\n')
    )


def unwritable_sidecar(journal: Path) -> Path:
    """``JOURNAL.watch`` made impossible to create, whoever runs the test (root too): a
    symlink into a folder that does not exist, as a read-only folder would refuse it."""
    sidecar = watch_path(journal)
    sidecar.symlink_to(journal.parent / "gone" / sidecar.name)
    return sidecar


async def test_a_watch_whose_sidecar_cannot_be_written_goes_on_and_says_so_once(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        # Sent a second apart on the server's clock, the reruns end over several polls: the
        # sidecar is written (and fails) more than once.
        with w.open_journal() as journal:
            for chunk in w.chunks:
                await journal.intend(chunk, 1, w.clock.wall())
                outcome = await w.transport.send(chunk)
                journal.outcome(chunk, 1, outcome, w.clock.wall(), "done")
                w.clock.advance(1.0)
        sidecar = unwritable_sidecar(w.journal_path)
        file = Stamped(w.clock)
        con = Console(file=file, width=120, color_system=None)
        with w.open_journal() as journal:
            summary = await watch(
                journal, w.transport, pacer=w.pacer, clock=w.clock, console=con, poll=1.0
            )
    assert summary.succeeded == SELECTED + WINDOW_INSTANCES  # followed to the end
    finished = [t for t, text in file.prints if "rerun instances finished" in text]
    assert len(set(finished)) > 2  # several polls, each with reruns newly ended
    said = [text for _, text in file.prints if "cannot keep" in text]
    assert said == [
        f"watch: cannot keep the final statuses in {sidecar} (No such file or directory): "
        "the watch goes on, but `bulkrerun report` will not show the instance statuses it "
        "sees from now on."
    ]
    assert "watch: 92 rerun instances: 92 succeeded" in file.getvalue()
    assert read_watch(w.journal_path) == {}


def test_read_watch_keeps_the_latest_and_skips_torn_lines(tmp_path: Path) -> None:
    line = {"t": "instance", "unit": "u", "job_name": "j", "plan_time": 1, "job_id": 2,
            "instance_id": None, "status": "fail", "submit_time": 3, "start_time": 4,
            "end_time": 5, "wall": 6.0}  # fmt: skip
    later = {**line, "status": "success", "wall": 7.0}
    (tmp_path / "j.watch").write_text(
        json.dumps(line) + "\n" + json.dumps(later) + "\n" + '{"t":"inst', encoding="utf-8"
    )
    (record,) = read_watch(tmp_path / "j")["u"]
    assert record.status == "success"
    assert read_watch(tmp_path / "other") == {}


# -- the real command line -------------------------------------------------------------------------


def cli_env(url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULKRERUN_", "CLOUD_SDK_")) and k != "COLUMNS"
    }
    env.update(
        COLUMNS="200",
        BULKRERUN_ENDPOINT=url,
        BULKRERUN_PROJECT_ID=PROJECT,
        BULKRERUN_AK="DEMOAK0000000000",
        BULKRERUN_SK="demo-secret-0123456789",
        BULKRERUN_RATE="200",
        BULKRERUN_MAX_INFLIGHT="16",
    )
    return env


async def bulkrerun(cwd: Path, url: str, *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "bulkrerun", *args], cwd=cwd, env=cli_env(url), check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def demo_config(**overrides: Any) -> FakeConfig:
    fields: dict[str, Any] = {
        "ak": "DEMOAK0000000000",
        "sk": "demo-secret-0123456789",
        "catalog": catalog(waiting_s=0.05, running_s=0.1),
        "missing_jobs": frozenset({"ods_legacy_feed"}),
    }
    fields.update(overrides)
    return FakeConfig(**fields)


@pytest.mark.slow
async def test_the_demo_outage_is_selected_rerun_once_and_watched_to_success(
    tmp_path: Path,
) -> None:
    manifest = str(ROOT / "configs" / "demo.toml")
    async with FakeServer(demo_config()) as srv:
        code, out, err = await bulkrerun(
            tmp_path, srv.url, "run", manifest, "--journal", "demo.journal", "--watch"
        )
        assert code == 1, err  # the two ods_legacy_feed requests are refused
        truth = srv.instances
        assert truth is not None
        # The 300 instances of the outage, each rerun exactly once.
        outage = [
            (job.name, p)
            for job in truth.catalog.jobs
            for p in truth.catalog.plan_times(job)
            if OUTAGE[0] <= p < OUTAGE[1]
        ]
        assert len(outage) == 300
        assert {truth.rerun_count(j, p) for j, p in outage} == {1}
        ids = [e.chunk_id for e in srv.ledger]
        assert len(ids) == len(set(ids)) == 30 + 144 + 48
        assert "select[0]: found 300 instances" in err
        assert "reruns by job" in err
        seen = read_watch(tmp_path / "demo.journal")
        statuses = [r.status for rs in seen.values() for r in rs]
        assert statuses.count("success") == len(statuses) >= 300

        code, out, err = await bulkrerun(tmp_path, srv.url, "status", "demo.journal", "--json")
        assert code == 0, err
        status = json.loads(out)
        assert (status["done"], status["failed"], status["held"], status["pending"]) == (
            300 + 144 + 48,
            4,
            0,
            0,
        )

        # The report shows the final instance status next to the API outcome.
        code, out, err = await bulkrerun(
            tmp_path, srv.url, "report", "demo.journal", "--format", "json"
        )
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        done_rows = [r for r in rows if r["state"] == "done"]
        assert done_rows and all(r["instance_status"] for r in done_rows)
        assert all(r["instance_status"] is None for r in rows if r["state"] == "failed")

        # Running the same command again resends nothing: the selection comes from the
        # journal (the service would now answer with no failed instance at all).
        code, out, err = await bulkrerun(
            tmp_path, srv.url, "run", manifest, "--journal", "demo.journal"
        )
        assert code == 1, err
        assert "select[0]: 300 instances, the selection the journal recorded in run 1" in err
        assert len(srv.ledger) == len(ids)


@pytest.mark.slow
async def test_verify_on_the_command_line_resolves_held_units(tmp_path: Path) -> None:
    manifest = tmp_path / "outage.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    async with FakeServer(demo_config(drop_after_accept=0.4, seed=2)) as srv:
        code, _, err = await bulkrerun(tmp_path, srv.url, "run", str(manifest), "--journal", "j")
        assert code == 1, err
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
        held = json.loads(out)["held"]
        assert held > 0
        accepted = len(srv.ledger)
        await anyio.sleep(5.0)  # verify believes a request once it is SETTLE_S old
        code, out, err = await bulkrerun(tmp_path, srv.url, "verify", "j")
        assert code == 0, out + err
        assert f"{held} held units checked" in out.replace(",", "")
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
        status = json.loads(out)
        assert (status["held"], status["pending"]) == (0, 0)
        assert status["done"] == SELECTED + WINDOW_CHUNKS
        code, _, err = await bulkrerun(tmp_path, srv.url, "run", str(manifest), "--journal", "j")
        assert code == 0, err
        assert len(srv.ledger) == accepted  # nothing the service had accepted was resent


@pytest.mark.slow
async def test_verify_against_a_slow_list_on_the_command_line_sends_no_rerun_twice(
    tmp_path: Path,
) -> None:
    # The fake lists an accepted rerun 8 s late; verify reads the list at once (--settle 0):
    # the held units, whose reruns the service accepted, stay held, and no run sends them.
    # With --settle 9, verify waits out the lag and finds them rerun.
    manifest = tmp_path / "outage.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    slow = catalog(waiting_s=0.05, running_s=0.1, list_lag_s=8.0)
    async with FakeServer(demo_config(catalog=slow, drop_after_accept=0.4, seed=2)) as srv:
        code, _, err = await bulkrerun(tmp_path, srv.url, "run", str(manifest), "--journal", "j")
        assert code == 1, err
        accepted = len(srv.ledger)
        assert accepted == len({e.chunk_id for e in srv.ledger})
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
        held = json.loads(out)["held"]
        assert held > 0
        code, out, err = await bulkrerun(tmp_path, srv.url, "verify", "j", "--settle", "0")
        assert code == 1, out + err
        said = " ".join(out.split())
        assert ", 0 were not, " in said and "pending again" not in said
        assert f"{held} stay held (instance list lagging: {held}, e.g. " in said
        assert "`bulkrerun report j` shows the evidence per unit" in said
        assert "the instance list does not yet show reruns the service accepted" in said
        code, out, err = await bulkrerun(
            tmp_path, srv.url, "run", str(manifest), "-j", "j", "--verify-held", "--settle", "0"
        )
        assert len(srv.ledger) == accepted, err  # nothing the service had accepted was resent
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
        status = json.loads(out)
        assert status["held"] == held
        assert any("bulkrerun verify j --settle 0" in step for step in status["next_steps"])
        code, out, err = await bulkrerun(tmp_path, srv.url, "verify", "j", "--settle", "9")
        assert code == 0, out + err
        assert f"{held} were rerun (now done), 0 were not" in " ".join(out.split())
        code, _, err = await bulkrerun(tmp_path, srv.url, "run", str(manifest), "--journal", "j")
        assert code == 0, err
        assert len(srv.ledger) == accepted
    starts = journal_records(tmp_path / "j", "verify_start")
    assert [(r["options"]["settle"], r["options"]["flags"]) for r in starts] == [
        (0.0, [["--settle", "0"]]),
        (0.0, [["--settle", "0"], ["--verify-held", None]]),
        (9.0, [["--settle", "9"]]),
    ]


async def test_settle_must_be_seconds_and_goes_with_verify_held(tmp_path: Path) -> None:
    from bulkrerun import cli, verify

    assert verify.SETTLE_S == cli._DEFAULT_SETTLE
    manifest = tmp_path / "outage.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    url = "http://127.0.0.1:9"  # refused before anything is asked
    for args, said in [
        (("verify", "j", "--settle", "-1"), "--settle -1: must be a number of seconds, 0 or more"),
        (("verify", "j", "--settle", "inf"), "--settle inf: must be a number of seconds"),
        (
            ("run", str(manifest), "-j", "j", "--verify-held", "--settle", "-0.5"),
            "--settle -0.5: must be a number of seconds",
        ),
        (("run", str(manifest), "-j", "j", "--settle", "30"), "add --verify-held"),
    ]:
        code, out, err = await bulkrerun(tmp_path, url, *args)
        assert (code, said in " ".join(err.split())) == (2, True), out + err
    assert not (tmp_path / "j").exists()


class ListRefused(FakeServer):
    """Accepts reruns, refuses the instance list (a role without the list permission)."""

    async def _list(self, rid: str, request: Any, job_name: str) -> Any:
        from bulkrerun.fake.validate import Refusal

        return self._refuse(rid, Refusal(403, "DLF.0003", "list denied"))


def window_manifest(tmp_path: Path) -> Path:
    """The test manifest with its window entries only."""
    window_only = MANIFEST[MANIFEST.index("[[window]]") :]
    manifest = tmp_path / "window.toml"
    manifest.write_text(MANIFEST[: MANIFEST.index("[[select]]")] + window_only, encoding="utf-8")
    return manifest


async def test_a_watch_that_cannot_list_warns_and_the_reruns_decide_the_exit(
    tmp_path: Path,
) -> None:
    manifest = window_manifest(tmp_path)
    async with ListRefused(demo_config()) as srv:
        code, _, err = await bulkrerun(
            tmp_path, srv.url, "run", str(manifest), "--journal", "j", "--watch"
        )
    assert code == 0, err  # every rerun was accepted; only following them failed
    assert len(srv.ledger) == WINDOW_CHUNKS
    assert "warning: could not follow the reruns: " in err
    assert "this run" in err  # the run's summary is still shown


async def test_a_watch_that_cannot_keep_its_sidecar_leaves_the_exit_code_alone(
    tmp_path: Path,
) -> None:
    manifest = window_manifest(tmp_path)
    sidecar = unwritable_sidecar(tmp_path / "j")
    async with FakeServer(demo_config()) as srv:
        code, _, err = await bulkrerun(
            tmp_path, srv.url, "run", str(manifest), "--journal", "j", "--watch"
        )
    assert code == 0, err  # every rerun was accepted, and --watch changes no exit code
    assert "Traceback" not in err
    err = " ".join(err.split())
    assert err.count("cannot keep the final statuses") == 1
    assert f"watch: cannot keep the final statuses in {sidecar.name} (No such file" in err
    assert f"watch: {WINDOW_INSTANCES} rerun instances: {WINDOW_INSTANCES} succeeded" in err
    assert "this run" in err  # the run's summary is still shown
    assert len(srv.ledger) == WINDOW_CHUNKS


async def read_until(stream: Any, text: bytes, seen: bytearray) -> None:
    """Read ``stream`` into ``seen`` until ``text`` appears in it (or the stream ends)."""
    while text not in seen:
        try:
            seen += await stream.receive()
        except anyio.EndOfStream:
            return


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_during_the_watch_stops_following_and_ends_with_the_run_table(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # The reruns never finish (running for hours): the watch is still following them when
    # the signal comes, after its first progress line. The reruns were sent and journaled:
    # the run ends as it would without --watch, with its table, status and resume command.
    manifest = window_manifest(tmp_path)
    config = demo_config(catalog=catalog(waiting_s=0.05, running_s=36_000.0))
    argv = [sys.executable, "-m", "bulkrerun", "run", str(manifest), "--journal", "j"]
    argv += ["--watch", "--resend-held"]  # a one-shot flag the resume command must leave out
    seen = bytearray()
    async with FakeServer(config) as srv:
        async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(srv.url)) as proc:
            assert proc.stderr is not None
            with anyio.fail_after(60):
                await read_until(proc.stderr, b"rerun instances finished", seen)
                assert b"rerun instances finished" in seen, seen.decode()
                proc.send_signal(sig)
                await read_until(proc.stderr, b"\0", seen)  # to the end
                code = await proc.wait()
        accepted = len(srv.ledger)
    err = seen.decode()
    assert code == 130, err
    assert "Traceback" not in err
    assert f"watch stopped by {sig.name}: the reruns sent stand" in err
    # The closing table of this run, then the journal's status, as without --watch.
    table = err[err.index("this run") :]
    assert re.search(r"│ +4 │ +0 │ +0 │ +0 │", table), table
    # Every unit is done, but the watch did not see their reruns finish: not "nothing left
    # to do", which is what it said.
    assert "nothing left to do" not in table
    follow = (
        f"the reruns of {WINDOW_CHUNKS} done units were not seen to finish: run 1's watch was "
        f"stopped by {sig.name} before they did; it saw 0 of {WINDOW_INSTANCES} rerun "
        "instances finish. They stand (the service accepted them); to follow them again, "
        f"which sends nothing: bulkrerun run {manifest} --journal j --watch"
    )
    assert follow in " ".join(table.split()), table
    # Every request was sent: the command printed only follows the reruns again, and says
    # so (it said "Resume with:", as if something were left to send). It is printed once,
    # in the step above (it was printed under the closing line too).
    assert "Resume with" not in err
    lead = "this run sent every request it had to (there is nothing to resume). To follow the "
    assert lead + "reruns again, which sends nothing: the last step above.\n" in err
    command = shlex.join(["bulkrerun", "run", str(manifest), "--journal", "j", "--watch"])
    assert " ".join(err.split()).count(command) == 1
    assert follow.endswith(command)
    assert "(without --resend-held: add it again only after" in err
    assert accepted == WINDOW_CHUNKS
    # The journal was closed properly: whole, unlocked, every rerun done.
    code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
    status = json.loads(out)
    assert (status["done"], status["held"], status["pending"]) == (WINDOW_CHUNKS, 0, 0)
    # And status says, as the run's end did, that the watch did not see them finish, and
    # how to follow them again (it said only "nothing left to do: every unit is done").
    assert status["watch_unfinished"] == WINDOW_CHUNKS
    assert status["last_watch"] == {
        "run": 1,
        "units": WINDOW_CHUNKS,
        "unfinished": WINDOW_CHUNKS,
        "instances": WINDOW_INSTANCES,
        "finished": 0,
        "stopped": sig.name,
    }
    assert status["next_steps"] == [follow]
    code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j")
    assert code == 0, out
    assert "nothing left to do" not in out
    assert follow in " ".join(out.split()), out
    # Why the run stopped, for a review: the signal, and that it stopped only the watch.
    last = status["last_run"]
    assert (last["stopped"], last["message"]) == (
        "interrupted",
        f"{sig.name}: stopped following the reruns",
    )


class Later:
    """The system clock, ``shift`` seconds ahead once told so: the service's hours pass at
    once. (Its signatures' dates would be refused so far off: the service takes any auth.)"""

    shift = 0.0

    def now(self) -> float:
        return time.monotonic() + self.shift

    def wall(self) -> float:
        return time.time() + self.shift

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


async def test_following_the_reruns_again_to_their_end_sends_nothing_and_clears_the_step(
    tmp_path: Path,
) -> None:
    manifest = window_manifest(tmp_path)
    later = Later()
    config = demo_config(
        catalog=catalog(waiting_s=0.05, running_s=3_600.0), clock=later, ak=None, sk=None
    )
    argv = [sys.executable, "-m", "bulkrerun", "run", str(manifest), "--journal", "j", "--watch"]
    seen = bytearray()
    async with FakeServer(config) as srv:
        async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(srv.url)) as proc:
            assert proc.stderr is not None
            with anyio.fail_after(60):
                await read_until(proc.stderr, b"rerun instances finished", seen)
                proc.send_signal(signal.SIGINT)
                await read_until(proc.stderr, b"\0", seen)
                assert await proc.wait() == 130, seen.decode()
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
        step = json.loads(out)["next_steps"][0]
        command = shlex.split(step.split("which sends nothing: ", 1)[1])
        assert command == ["bulkrerun", "run", str(manifest), "--journal", "j", "--watch"]
        # The service's day passes, and the reruns end: the command the step gives follows
        # them to their end, and sends nothing.
        later.shift = 86_400.0
        code, _, err = await bulkrerun(tmp_path, srv.url, *command[1:])
        assert code == 0, err
        assert f"watch: {WINDOW_INSTANCES} rerun instances: {WINDOW_INSTANCES} succeeded" in err
        assert len(srv.ledger) == WINDOW_CHUNKS
        code, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j", "--json")
    status = json.loads(out)
    assert status["watch_unfinished"] == 0
    assert status["last_watch"]["run"] == 2
    assert status["next_steps"] == ["nothing left to do: every unit is done"]


@pytest.fixture
def signal_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIGINT and SIGTERM as the run leaves them before its watch (they raise
    KeyboardInterrupt); pytest's own handlers and the CLI's interrupt state back after."""
    import bulkrerun.cli as cli

    monkeypatch.setattr(cli._interrupt, "fired", False)
    monkeypatch.setattr(cli._interrupt, "signame", "SIGINT", raising=False)
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    cli._signals_interrupt()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


@pytest.mark.usefixtures("signal_handlers")
async def test_after_a_signal_stops_the_watch_the_next_one_ends_the_command_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import bulkrerun.cli as cli

    async with world(tmp_path, catalog=catalog(running_s=36_000.0)) as w:
        await send_all(w)
        before = w.srv.stats.requests
        unheard = False  # the signal raised where it was sent: nothing took it

        async def interrupt() -> None:
            nonlocal unheard
            while w.srv.stats.requests == before:  # once the watch polls
                await anyio.sleep(0.01)
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                unheard = True

        with w.open_journal() as journal, anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(interrupt)
                stopped = await cli._watch(journal, w.transport, w.pacer, w.clock)
    assert not unheard
    assert stopped == "SIGINT"
    assert "watch stopped by SIGINT: the reruns sent stand" in capsys.readouterr().err
    assert not cli._interrupt.fired  # taken by the watch: main() prints nothing more
    # The next signal, SIGTERM too, raises at once wherever the command is.
    assert signal.getsignal(signal.SIGINT) is cli._interrupt
    assert signal.getsignal(signal.SIGTERM) is cli._interrupt
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
    assert (cli._interrupt.fired, cli._interrupt.signame) == (True, "SIGTERM")


@pytest.mark.usefixtures("signal_handlers")
async def test_a_signal_while_the_watch_replays_the_journal_stops_it_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The replay before the watch is synchronous (seconds for a million records): the signal
    # raises KeyboardInterrupt inside it, and the run still ends with its table.
    import bulkrerun.cli as cli

    class Replaying:
        path = tmp_path / "j"

        def reload(self) -> None:
            signal.raise_signal(signal.SIGTERM)

    async with world(tmp_path) as w:
        requests = w.srv.stats.requests
        stopped = await cli._watch(Replaying(), w.transport, w.pacer, w.clock)
        assert w.srv.stats.requests == requests  # nothing listed
    assert stopped == "SIGTERM"
    assert not cli._interrupt.fired
    assert "watch stopped by SIGTERM: the reruns sent stand" in capsys.readouterr().err


async def test_a_verify_whose_list_keeps_failing_says_so_past_a_minute_and_when_it_recovers(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, server=ListDown) as w:
        srv = w.srv
        assert isinstance(srv, ListDown)
        with w.open_journal() as journal:
            for chunk in w.chunks:
                await journal.intend(chunk, 1, w.clock.wall())
            for chunk in w.chunks:
                assert (await w.transport.send(chunk)).kind is Kind.DONE
        srv.down = (w.clock.now(), w.clock.now() + 150.0)
        notices: list[tuple[float, str]] = []
        pacer = Pacer(PacingConfig(rate=1000.0, max_attempts=30), rng=random.Random(3))
        with w.open_journal() as journal:
            summary = await verify_held(
                journal,
                w.transport,
                pacer=pacer,
                clock=w.clock,
                settle=0.0,
                on_notice=lambda line: notices.append((w.clock.wall(), line)),
            )
    assert summary.verified_done == len(units_of(w.chunks))  # decided once it answered
    first_503 = srv.refused[0]
    (t1, failing), (t2, back) = notices
    assert first_503 + LIST_NOTICE_AFTER_S <= t1 <= first_503 + LIST_NOTICE_AFTER_S + 35
    assert failing.startswith("verify: the instance list has been failing for 1m")
    assert "last: 503 APIG.0202 Backend unavailable" in failing
    assert "Ctrl-C stops, and the units not decided stay held" in failing
    assert t2 >= first_503 + 150.0 - 1
    assert re.match(r"verify: the instance list answers again, after \dm\d\ds of failures", back)


class _ListOf:
    """An instance list that answers every query with the same rows."""

    def __init__(self, rows: list[ListedInstance]) -> None:
        self.rows = rows

    async def list(self, job: str, ws: str, *, min_plan_time: int, max_plan_time: int) -> Any:
        return self.rows


@pytest.mark.anyio
async def test_two_rows_of_one_plan_time_are_read_alike_whatever_their_order() -> None:
    """The rerun (submitted after our request) and the run we asked to rerun, both listed:
    in either order the unit is done. The last row used to win: listed second, the old run
    made the unit pending, and the next run sent it a second time."""
    from bulkrerun import verify

    rerun = listed(submit_time=T_ASK + 5000, status="running", start_time=0, end_time=0)
    old = listed()  # the run we asked to rerun, over before our request
    unit = target()
    query = verify._Query((unit.job_name, unit.workspace), unit.plan_time, unit.plan_time)
    for rows in ([rerun, old], [old, rerun]):
        listing = await verify._read(_ListOf(rows), [query], T_ASK + 60_000)  # type: ignore[arg-type]
        assert verify._verdict(unit, listing).state is UnitState.DONE, rows


@pytest.mark.anyio
async def test_many_held_windows_of_one_job_order_its_instances_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each held window sorted all the listed instances of its jobs to find its own: 2,000
    held windows of a job listed with 20,000 instances took 12 s, 4,000 of 40,000 near a
    minute. The instances are ordered once per job now; each window's are the same."""
    from bulkrerun import verify

    sorts = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sorts
        sorts += 1
        return sorted(*args, **kwargs)

    jobs = (("ods_orders", WS), ("dwd_orders", WS))
    rows = [  # two instances an hour per job, listed out of order, rerun after our request
        listed(job_name=job, plan_time=S0 + k * 30 * MINUTE, submit_time=T_ASK + 5000)
        for k in reversed(range(48))
        for job, _ in jobs
    ]
    windows = [
        WindowTarget(f"w{h}", jobs, S0 + h * HOUR, S0 + (h + 1) * HOUR - 1, T_ASK, T_ASK)
        for h in range(24)
    ]
    queries = [verify._Query(key, S0, S0 + 24 * HOUR) for key in jobs]
    listing = await verify._read(_ListOf(rows), queries, T_ASK + 60_000)  # type: ignore[arg-type]
    monkeypatch.setattr(verify, "sorted", counting, raising=False)
    for h, window in enumerate(windows):
        found = listing.window(window)
        assert [(i.job_name, i.plan_time) for i in found] == [
            (job, S0 + h * HOUR + half * 30 * MINUTE) for job, _ in jobs for half in (0, 1)
        ]
        assert verify._verdict(window, listing).state is UnitState.DONE
    assert sorts <= len(jobs)
    assert (
        listing.window(dataclasses.replace(windows[0], begin_time=S0 - HOUR, end_time=S0 - 1)) == []
    )


@pytest.mark.anyio
async def test_a_run_listed_in_the_future_is_no_evidence() -> None:
    from bulkrerun import verify

    unit = target()
    query = verify._Query((unit.job_name, unit.workspace), unit.plan_time, unit.plan_time)
    now = T_ASK + 60_000
    ten_years = 315_360_000_000
    for row in (listed(submit_time=now + ten_years), listed(start_time=99_999_999_999_999)):
        listing = await verify._read(_ListOf([row]), [query], now)  # type: ignore[arg-type]
        verdict = verify._verdict(unit, listing)
        assert verdict.state is UnitState.HELD
        assert "in the future: its times cannot be trusted" in verdict.evidence
    # Within the clock allowance a time ahead of ours is a clock's skew, and counts.
    ahead = listed(submit_time=now + SKEW // 2)
    listing = await verify._read(_ListOf([ahead]), [query], now)  # type: ignore[arg-type]
    assert verify._verdict(unit, listing).state is UnitState.DONE


def test_a_watch_sidecar_that_cannot_be_read_is_taken_as_none(tmp_path: Path) -> None:
    # It only informs `report` and `status`, which must not fail for it.
    from bulkrerun.watchlog import WatchRecord

    journal = tmp_path / "j"
    watch_path(journal).mkdir()  # a directory in its place
    assert read_watch(journal) == {}
    watch_path(journal).rmdir()
    record = WatchRecord("u1", "ods_orders", 1, 2, 3, "success", 4, 5, 6, 7.0)
    watch_path(journal).write_bytes(b"\xff\xfe not text\n" + record.to_json(0.0).encode() + b"\n")
    assert read_watch(journal) == {"u1": [record]}


def test_the_evidence_for_a_window_of_one_instance_is_in_the_singular() -> None:
    rerun = [listed(submit_time=T_ASK + 5, status="success", start_time=T_ASK + 5)]
    assert ": its 1 instance shows a run submitted or started after our request" in (
        judge_window(window_target(), rerun).evidence
    )
    assert ": its 1 instance still shows a run that ended before our request" in (
        judge_window(window_target(), [listed()]).evidence
    )


def test_the_summary_says_what_pending_means_only_of_units_made_so_and_names_the_report() -> None:
    # "0 were not (pending again: the next run sends them)" read as if the next run had
    # something to send; and a bare `bulkrerun report`, pasted, ends "Missing argument".
    s = VerifySummary(3, 0, 0)
    s.hold("instance not listed", "", 2)
    said = s.said("out age.journal")
    assert "3 were rerun (now done), 0 were not, 2 stay held" in said
    assert "pending again" not in said
    assert "`bulkrerun report 'out age.journal'` shows the evidence per unit" in said
    assert "2 were not (pending again: the next run sends them)" in VerifySummary(0, 2, 0).said()


def test_the_summary_of_one_held_unit_reads_in_the_singular() -> None:
    assert str(VerifySummary(1, 0, 0)).startswith(
        "verify: 1 held unit checked against the instances' live state: 1 was rerun (now "
        "done), 0 were not, 0 stay held"
    )
    s = VerifySummary(0, 1, 0)
    s.hold("instance not listed", "", 1)
    assert "1 was not (pending again" in str(s)
    assert "1 stays held (instance not listed: 1)" in str(s)


def test_the_watch_of_one_rerun_instance_counts_it_in_the_singular() -> None:
    from collections import Counter

    from bulkrerun.verify import WatchSummary, _progress

    summary = WatchSummary(jobs={"ods_orders": Counter({"success": 1})})
    assert str(summary) == "watch: 1 rerun instance: 1 succeeded, 0 failed."
    assert _progress(summary).startswith("watch: 1 of 1 rerun instance finished (1 succeeded")


# -- a verify's own record in the journal ----------------------------------------------------------


def journal_records(path: Path, *kinds: str) -> list[dict[str, Any]]:
    """The records of the journal at ``path`` of the given kinds, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["t"] in kinds]


async def test_a_verify_records_who_ran_it_how_and_what_it_decided(tmp_path: Path) -> None:
    """Its start (the settings it reached the service with, never a secret) before its first
    verdict, its end (exit code, what it decided) after the last; status says it."""
    async with world(tmp_path, drop_after_accept=0.5, seed=4) as w:
        with w.open_journal() as journal:
            await w.send_each_once(journal)
            held = journal.state().counts()[UnitState.HELD]
        assert held > 0
        code, out, err = await bulkrerun(tmp_path, w.srv.url, "verify", "j", "--rate", "50")
        assert code == 0, out + err
    records = journal_records(w.journal_path, "verify_start", "verify", "verify_end")
    start, *verdicts, end = records
    assert (start["t"], end["t"]) == ("verify_start", "verify_end")
    assert [r["t"] for r in verdicts] == ["verify"] * held
    assert (start["n"], start["held"]) == (1, held)
    options = start["options"]
    assert (options["endpoint"], options["project_id"]) == (w.srv.url, PROJECT)
    assert (options["rate"], options["flags"]) == (50.0, [["--rate", "50"]])
    assert options["auth"] == "AK/SK"
    text = w.journal_path.read_text(encoding="utf-8")
    assert "demo-secret-0123456789" not in text  # the SK of cli_env
    assert start["wall"] <= end["wall"]
    assert (end["n"], end["exit"], end["stopped"], end["message"]) == (1, 0, None, None)
    assert (end["verified_done"], end["made_pending"], end["still_held"]) == (held, 0, 0)

    code, out, _ = await bulkrerun(tmp_path, w.srv.url, "status", "j", "--json")
    last = json.loads(out)["last_verify"]
    assert (last["command"], last["n"], last["exit_code"]) == ("verify", 1, 0)
    assert (last["verified_done"], last["still_held"], last["held_at_start"]) == (held, 0, held)
    assert last["options"]["endpoint"] == w.srv.url
    code, out, _ = await bulkrerun(tmp_path, w.srv.url, "status", "j")
    said = " ".join(out.split())
    assert (
        f"verify 1 (started {last['started']}) ended {last['ended']}, exit 0: {held} made done, "
        "0 made pending, 0 still held"
    ) in said


class _Silent:
    """A TCP service on loopback that takes connections and never answers: a command asking
    it waits until it is stopped. ``asked`` is set on the first connection."""

    def __init__(self) -> None:
        self.asked = anyio.Event()
        self.url = ""

    async def serve(self, listener: Any) -> None:
        async def hold(stream: Any) -> None:
            self.asked.set()
            async with stream:
                await anyio.sleep_forever()

        await listener.serve(hold)


async def held_journal(tmp_path: Path, url: str) -> Path:
    """A journal bound to ``url`` whose window requests were sent an hour ago, answers
    unknown: every unit held, old enough for a verify to ask about at once."""
    manifest = window_manifest(tmp_path)
    path = tmp_path / "j"
    with Journal.open(path, Binding(PROJECT, url), tool_version="t") as journal:
        journal.begin_run(RunInfo.from_manifest(manifest))
        sent = datetime.now(UTC).timestamp() - 3600
        for chunk in plan(load_manifest(manifest)):
            await journal.intend(chunk, 1, sent)
    return path


def starts_pid(path: Path) -> int:
    """The pid the journal's first verify recorded at its start."""
    return int(journal_records(path, "verify_start")[0]["pid"])


async def test_a_verify_interrupted_or_killed_says_so_in_the_journal(tmp_path: Path) -> None:
    """Interrupted, it records its end (130, the signal, nothing decided); killed, it cannot,
    and its start shows it began: status tells the two apart, and lists both."""
    silent = _Silent()
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        # anyio's typed attribute, not Django's QuerySet.extra (what S610 is about).
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
        url = f"http://127.0.0.1:{port}"
        tg.start_soon(silent.serve, listener)
        path = await held_journal(tmp_path, url)
        argv = [sys.executable, "-m", "bulkrerun", "verify", "j", "--rate", "5"]
        for sig in (signal.SIGINT, signal.SIGKILL):
            silent.asked = anyio.Event()
            async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(url)) as proc:
                with anyio.fail_after(30):
                    await silent.asked.wait()  # it is asking the list: mid-verify
                if sig == signal.SIGINT:  # status, meanwhile, names what holds the journal
                    _, out, _ = await bulkrerun(tmp_path, url, "status", "j")
                    holding = " ".join(out.split())
                proc.send_signal(sig)
                assert await proc.wait() == (130 if sig == signal.SIGINT else -signal.SIGKILL)
        tg.cancel_scope.cancel()
    assert f"a verify (pid {starts_pid(path)}, verify 1) holds this journal" in holding
    starts = journal_records(path, "verify_start")
    ends = journal_records(path, "verify_end")
    assert [s["n"] for s in starts] == [1, 2]
    assert [(e["n"], e["exit"], e["stopped"], e["message"]) for e in ends] == [
        (1, 130, "interrupted", "SIGINT")
    ]
    assert ends[0]["verified_done"] is None  # it stopped before deciding
    assert not journal_records(path, "verify")  # and decided nothing

    _, out, _ = await bulkrerun(tmp_path, url, "status", "j", "--json")
    s = json.loads(out)
    assert s["held"] == WINDOW_CHUNKS  # as before either verify
    history = [(h["command"], h["n"], h["exit_code"], h["stopped"]) for h in s["history"]]
    assert history == [
        ("run", 1, None, None),
        ("verify", 1, 130, "interrupted"),
        ("verify", 2, None, None),
    ]
    assert s["last_verify"]["n"] == 2
    _, out, _ = await bulkrerun(tmp_path, url, "status", "j")
    said = " ".join(out.split())
    second = s["history"][2]["started"]
    assert f"verify 2 (started {second}) recorded no end: it was killed or crashed" in said
    assert "runs (and verifications), with their flags:" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  verify ")]
    assert [line[:2] + line[3:5] for line in lines] == [
        ["verify", "1", "exit", "130"],
        ["verify", "2", "no", "end"],
    ]
    assert all(line[-2:] == ["--rate", "5"] for line in lines)


async def test_a_verify_refused_records_why_it_stopped(tmp_path: Path) -> None:
    async with FakeServer(FakeConfig(ak="OTHERAK000000000", sk="other-secret-0123456789")) as srv:
        path = await held_journal(tmp_path, srv.url)
        code, _, err = await bulkrerun(tmp_path, srv.url, "verify", "j")
        assert code == 3, err
        (end,) = journal_records(path, "verify_end")
        assert (end["exit"], end["stopped"]) == (3, "auth_refused")
        assert end["message"] in err
        _, out, _ = await bulkrerun(tmp_path, srv.url, "status", "j")
    said = " ".join(out.split())
    assert re.search(r"verify 1 \(started [^)]+\) stopped \S+: ", said), said
