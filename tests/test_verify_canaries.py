"""The canaries of a verify: accepted requests whose reruns tell whether the instance list
lags behind the service (see :func:`bulkrerun.verify.judge_lag`).

Against the fake service on loopback with its instance catalog, listing each accepted rerun
``LAG_S`` seconds late, on the shared fake clock of ``tests/test_verify.py``. A held unit
made pending is sent again by the next run: every test ends by checking what that run
would send, and how often the service accepted each request.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bulkrerun.chunk import Chunk
from bulkrerun.journal import Journal, UnitState
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.session import ResumeFlags, chunks_to_send
from bulkrerun.verify import CANARY_STALE_S, Canary, Verdict, judge_lag, verify_held
from tests.test_verify import (
    HOUR,
    LAG_S,
    MANIFEST,
    T_ASK,
    WS,
    World,
    catalog,
    target,
    world,
)

pytestmark = pytest.mark.anyio

LAGGING = "instance list lagging"


async def accepted_but_unanswered(w: World, journal: Journal, chunk: Chunk) -> None:
    """``chunk`` sent and accepted by the service, its answer lost (a timeout): held."""
    await journal.intend(chunk, 1, w.clock.wall())
    assert (await w.transport.send(chunk)).kind is Kind.DONE
    journal.outcome(chunk, 1, Outcome(Kind.HELD, reason="timeout"), w.clock.wall(), "held")
    w.clock.advance(0.05)


def resent(w: World, journal: Journal) -> list[Chunk]:
    """What the next run would send."""
    return list(chunks_to_send(w.manifest, journal.state(), ResumeFlags(), w.selections))


def accepted_once(w: World) -> bool:
    ids = [e.chunk_id for e in w.srv.ledger]
    return len(ids) == len(set(ids))


# -- a unit whose own rerun shows ------------------------------------------------------------------


async def test_a_held_unit_whose_own_rerun_shows_is_done_while_a_later_canary_is_not_shown(
    tmp_path: Path,
) -> None:
    # The held batch was accepted 2.5 s before the done one that is its canary; read a second
    # after the canary, the list (3 s late) shows the held batch's reruns but not the
    # canary's. The list lags, but not behind this unit: its own reruns decide it.
    async with world(tmp_path, catalog=catalog(list_lag_s=LAG_S)) as w:
        held, canary = [c for c in w.chunks if c.job_name == "ods_orders"][:2]
        with w.open_journal() as journal:
            await accepted_but_unanswered(w, journal, held)
            w.clock.advance(2.45)
            await w.send_each_once(journal, [canary])
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=1.0
            )
            assert (summary.verified_done, summary.made_pending, summary.still_held) == (
                len(held.units),
                0,
                0,
            ), str(summary)
            state = journal.state()
            assert all("after our request" in state.verified[u] for u in held.units)
            assert held not in resent(w, journal)
        assert accepted_once(w)


# -- a window whose own job has no instance in it ------------------------------------------------

# ods_users runs hourly, dwd_payments every 15 minutes: of four 15-minute chunks from 10:15,
# the first three hold a dwd_payments instance alone, the last one an instance of each.
QUARTERS = MANIFEST[: MANIFEST.index("[[select]]")] + (
    '[[window]]\njob_name = "ods_users"\nbegin = "2024-11-25T10:15:00"\n'
    'end = "2024-11-25T11:15:00"\nchunk = "15m"\n'
    f'jobs = [{{ job_name = "dwd_payments", workspace_id = "{WS}" }}]\n'
)


async def test_a_window_canary_without_an_instance_of_its_own_job_is_judged_by_its_others(
    tmp_path: Path,
) -> None:
    # The three done windows are the held window's canaries, each judged by its own job's
    # instances only: ods_users has none in them, so they showed nothing either way, and the
    # held window, accepted but shown as not rerun by a list three seconds late, was made
    # pending: the next run sent it, and its instances ran twice. Judged by their
    # dwd_payments instances, which the list does not show rerun yet either, they say the
    # list lags.
    async with world(tmp_path, manifest=QUARTERS, catalog=catalog(list_lag_s=LAG_S)) as w:
        *done, held = w.chunks
        assert len(done) == 3
        with w.open_journal() as journal:
            await w.send_each_once(journal, done)
            await accepted_but_unanswered(w, journal, held)
            summary = await verify_held(
                journal, w.transport, pacer=w.pacer, clock=w.clock, settle=1.0
            )
            assert (summary.verified_done, summary.made_pending) == (0, 0), str(summary)
            assert summary.reasons == {LAGGING: 1}, str(summary)
            assert resent(w, journal) == []
            # Once the list has caught up, the same verify finds it rerun.
            later = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock)
            assert (later.verified_done, later.made_pending, later.still_held) == (1, 0, 0)
            assert resent(w, journal) == []
        assert accepted_once(w) and len(w.srv.ledger) == len(w.chunks)


# -- an accepted request the list never shows ----------------------------------------------------


def test_a_canary_unlisted_long_while_a_later_one_of_its_job_shows_is_not_taken_for_lag() -> None:
    # judge_lag, pure. Three canaries of the unit's job, all accepted before its request
    # (the unit was its run's last): the oldest not shown, the two after it shown.
    t = target(since_ms=T_ASK, last_ms=T_ASK + 1000)
    unseen = Verdict(None, "not rerun", "not rerun")
    seen = Verdict(UnitState.DONE, "rerun seen", "rerun seen")

    def canary(unit: str, accepted: int, job: str = "ods_orders") -> Canary:
        c = dataclasses.replace(t, unit=unit, job_name=job, since_ms=accepted, last_ms=accepted)
        return Canary(c, (job, WS), accepted)

    old, mid, new = (canary(f"c{k}", T_ASK - 300 + 100 * k) for k in range(3))
    pool = [(old, unseen), (mid, seen), (new, seen)]
    # Read within the hour, it may be lag shown out of order: the unit stays held.
    assert judge_lag(t, pool) is not None
    assert judge_lag(t, pool, stale_before_ms=old.accepted_ms) is not None
    # Read later, it is a rerun the list never shows: the unit is judged as the list shows it.
    assert judge_lag(t, pool, stale_before_ms=old.accepted_ms + 1) is None
    # Not if none accepted after it shows rerun ...
    later = old.accepted_ms + 1
    assert judge_lag(t, [(old, unseen)], stale_before_ms=later) is not None
    assert judge_lag(t, [(mid, unseen), (old, seen)], stale_before_ms=T_ASK + HOUR) is not None
    # ... nor if the one shown is another job's: lists may lag by job.
    other = canary("o", new.accepted_ms, job="ods_users")
    everyone = [(dataclasses.replace(old, key=("ods_payments", WS)), unseen), (other, seen)]
    assert judge_lag(t, everyone, stale_before_ms=later) is not None


async def test_a_request_the_list_never_shows_holds_its_job_back_for_an_hour_not_for_good(
    tmp_path: Path,
) -> None:
    # The first of three batches of ods_orders was accepted, the journal says, but the list
    # never shows its rerun (the service skipped it); the two after it show theirs. The
    # fourth was recorded and never left (a kill): the list rightly shows it not rerun. It
    # stayed held, "instance list lagging", for as long as that batch was the job's oldest
    # canary: a day later still, and verify said to verify again later.
    async with world(tmp_path, catalog=catalog(list_lag_s=LAG_S)) as w:
        skipped, first, second, unsent = [c for c in w.chunks if c.job_name == "ods_orders"]
        with w.open_journal() as journal:
            await journal.intend(skipped, 1, w.clock.wall())
            journal.outcome(skipped, 1, Outcome(Kind.DONE, 200), w.clock.wall(), "done")
            w.clock.advance(0.05)
            await w.send_each_once(journal, [first, second])
            await journal.intend(unsent, 1, w.clock.wall())  # killed before it left

            async def verify(**kw: float) -> tuple[int, int, int]:
                s = await verify_held(journal, w.transport, pacer=w.pacer, clock=w.clock, **kw)
                return s.verified_done, s.made_pending, s.still_held

            held = len(unsent.units)
            # Within the lag of the two shown, and within the hour: the list may lag.
            assert await verify(settle=1.0) == (0, 0, held)
            w.clock.advance(CANARY_STALE_S - 60)
            assert await verify() == (0, 0, held)
            # A user who says the list lags 10 minutes has it wait ten times that.
            w.clock.advance(120)
            assert await verify(settle=600) == (0, 0, held)
            assert unsent not in resent(w, journal)
            # An hour on, while later ones show: the unit is judged as the list shows it.
            w.clock.advance(2 * 3600)
            assert await verify() == (0, held, 0)
            assert unsent in resent(w, journal)
        assert accepted_once(w)
