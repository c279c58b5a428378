"""The canaries of a verify: accepted requests whose reruns tell whether the instance list
lags behind the service (see :func:`bulkrerun.verify.judge_lag`).

Against the fake service on loopback with its instance catalog, listing each accepted rerun
``LAG_S`` seconds late, on the shared fake clock of ``tests/test_verify.py``. A held unit
made pending is sent again by the next run: every test ends by checking what that run
would send, and how often the service accepted each request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkrerun.chunk import Chunk
from bulkrerun.journal import Journal
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.session import ResumeFlags, chunks_to_send
from bulkrerun.verify import verify_held
from tests.test_verify import LAG_S, MANIFEST, WS, World, catalog, world

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
