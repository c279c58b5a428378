"""The engine against a tiny in-process transport and journal: ordering of effects, retries,
stops. The real fake service over sockets is exercised in test_run_e2e.py."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from bulkrerun.chunk import Chunk, canonical_json, chunk_id
from bulkrerun.clock import FakeClock
from bulkrerun.engine import Engine
from bulkrerun.errors import (
    AuthRefused,
    BudgetExhausted,
    Unanswered,
    Unreachable,
    WrongEndpoint,
)
from bulkrerun.events import Event, Retrying, Settled, Stopping
from bulkrerun.outcome import DONE, Kind, Outcome
from bulkrerun.pacing import LATE_FORGIVEN, Pacer, PacingConfig

pytestmark = pytest.mark.anyio


def chunks(n: int) -> Iterator[Chunk]:
    for i in range(n):
        body = canonical_json({"begin_time": 1_732_600_000_000 + i, "concurrent": 1})
        cid = chunk_id("job", "ws", body)
        yield Chunk(cid, "window", "window[0]", "job", "ws", body, (cid,))


class MemoryJournal:
    """Records calls in order; ``durable`` holds intents that `intend` has returned for."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int, str]] = []
        self.durable: set[tuple[str, int]] = set()

    async def intend(self, chunk: Chunk, attempt: int, wall: float) -> None:
        await anyio.lowlevel.checkpoint()
        self.durable.add((chunk.id, attempt))
        self.log.append(("intent", chunk.id, attempt, ""))

    def outcome(
        self, chunk: Chunk, attempt: int, outcome: Outcome, wall: float, state: str
    ) -> None:
        self.log.append(("outcome", chunk.id, attempt, state))

    async def flush(self) -> None:
        self.log.append(("flush", "", 0, ""))

    def was_held(self, chunk: Chunk) -> bool:
        return chunk.id in self.held_before

    def held_units(self, chunk: Chunk) -> int:
        return len(chunk.units) if chunk.id in self.held_before else 0

    held_before: frozenset[str] = frozenset()  # chunks resent with units held before

    def states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, cid, _, state in self.log:
            if kind == "outcome":
                out[cid] = state
            elif kind == "intent":
                out[cid] = "held"
        return out


class ScriptedTransport:
    """Answers from a script per chunk (default DONE); asserts intent came first."""

    def __init__(self, journal: MemoryJournal, script: dict[int, list[Outcome]] | None = None):
        self.journal = journal
        self.script = script or {}
        self.sent: list[tuple[str, int]] = []
        self.order: dict[str, int] = {}
        self.block = anyio.Event()
        self.blocking = False

    async def send(self, chunk: Chunk) -> Outcome:
        n = self.order.setdefault(chunk.id, len(self.order))
        attempt = sum(1 for c, _ in self.sent if c == chunk.id) + 1
        assert (chunk.id, attempt) in self.journal.durable, "sent before its intent was durable"
        self.sent.append((chunk.id, attempt))
        if self.blocking:
            await self.block.wait()
        await anyio.lowlevel.checkpoint()
        script = self.script.get(n, [])
        return script[attempt - 1] if attempt <= len(script) else DONE


class StalledCommitJournal(MemoryJournal):
    """Intents become durable ``batch`` at a time: a commit that stalled while they came
    (a slow fsync) and then covered them all at once."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.held: list[anyio.Event] = []

    async def intend(self, chunk: Chunk, attempt: int, wall: float) -> None:
        durable = anyio.Event()
        self.held.append(durable)
        if len(self.held) == self.batch:
            for event in self.held:
                event.set()
            self.held = []
        await durable.wait()
        await super().intend(chunk, attempt, wall)


class VirtualClock:
    """Time that moves only when every task waits, and then to the earliest wake-up: a
    discrete-event clock, so that concurrent sleepers wake in order. (``FakeClock`` adds
    every sleep to one total, which is exact for one sleeper at a time.)"""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return 1_732_600_000.0 + self._now

    async def sleep(self, seconds: float) -> None:
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), id(woken), woken))
        await woken.wait()

    async def drive(self) -> None:
        """Run beside the tasks under test (cancel it when they are done)."""
        while True:
            await anyio.wait_all_tasks_blocked()
            if not self._sleepers:  # nobody runs, nobody sleeps: nothing will ever move
                raise AssertionError("every task waits and none sleeps: a deadlock")
            at, _, woken = heapq.heappop(self._sleepers)
            self._now = max(self._now, at)
            woken.set()


class TimedTransport(ScriptedTransport):
    """Notes the clock at every send."""

    def __init__(self, journal: MemoryJournal, clock: VirtualClock) -> None:
        super().__init__(journal)
        self.clock = clock
        self.times: list[float] = []

    async def send(self, chunk: Chunk) -> Outcome:
        self.times.append(self.clock.now())
        return await super().send(chunk)


def engine_for(
    n: int,
    transport: ScriptedTransport,
    journal: MemoryJournal,
    events: list[Event],
    inflight: int = 4,
    clock: FakeClock | VirtualClock | None = None,
    grace: float = 0.2,
    **pacing: object,
) -> Engine:
    cfg = PacingConfig(**{"rate": 1000.0, "burst": 10, **pacing})  # type: ignore[arg-type]
    return Engine(
        chunks(n),
        transport=transport,
        journal=journal,
        pacer=Pacer(cfg, rng=random.Random(0)),  # the backoff's jitter, the same every run
        max_inflight=inflight,
        clock=clock or FakeClock(),
        on_event=events.append,
        on_settled=events.append,
        grace=grace,
    )


async def test_every_chunk_done_with_intent_first() -> None:
    journal = MemoryJournal()
    transport = ScriptedTransport(journal)
    events: list[Event] = []
    result = await engine_for(25, transport, journal, events).run()
    assert result.done == 25 and result.failed == result.held == result.pending == 0
    assert len(transport.sent) == 25
    assert set(journal.states().values()) == {"done"}
    assert journal.log[-1][0] == "flush"
    assert sum(isinstance(e, Settled) for e in events) == 25


async def test_settled_events_only_for_a_sink_that_asks_and_counts_either_way() -> None:
    journal = MemoryJournal()
    busy = Outcome(Kind.RETRY, status=503, reason="unavailable")
    transport = ScriptedTransport(journal, {0: [busy, DONE]})
    events: list[Event] = []
    engine = Engine(
        chunks(10),
        transport=transport,
        journal=journal,
        pacer=Pacer(PacingConfig(rate=1000.0, burst=10)),
        max_inflight=4,
        clock=FakeClock(),
        on_event=events.append,
    )
    result = await engine.run()
    assert result.done == 10
    assert [type(e) for e in events] == [Retrying]  # no Settled without on_settled


async def test_retry_then_done_and_give_up_is_failed() -> None:
    journal = MemoryJournal()
    busy = Outcome(Kind.RETRY, status=503, reason="unavailable")
    transport = ScriptedTransport(journal, {0: [busy, busy, DONE], 1: [busy] * 10})
    events: list[Event] = []
    result = await engine_for(3, transport, journal, events, max_attempts=3).run()
    first, second, _ = list(transport.order)
    assert [a for c, a in transport.sent if c == first] == [1, 2, 3]
    assert [a for c, a in transport.sent if c == second] == [1, 2, 3]
    states = journal.states()
    assert states[first] == "done" and states[second] == "failed"
    assert result.done == 2 and result.failed == 1
    retries = [e for e in events if isinstance(e, Retrying)]
    assert len(retries) == 4 and all(e.delay > 0 for e in retries)


async def test_a_resend_of_held_units_that_runs_out_of_attempts_is_not_acted_on() -> None:
    """--resend-held: a held unit may have been acted on by the send that left it held. A
    resend the service did not act on (429s until the attempts ran out) decides nothing: it
    is recorded as not acted on, which leaves each unit as it was (held), not failed, which
    --retry-failed would send a third time."""
    journal = MemoryJournal()
    held, *fresh = (c.id for c in chunks(3))
    journal.held_before = frozenset({held})
    throttled = Outcome(Kind.RETRY, status=429, error_code="APIG.0308", reason="throttled")
    transport = ScriptedTransport(journal, {i: [throttled] * 3 for i in range(3)})
    result = await engine_for(3, transport, journal, [], max_attempts=2).run()
    assert sorted(transport.sent) == sorted((c, a) for c in (held, *fresh) for a in (1, 2))
    states = journal.states()
    assert states[held] == "pending"
    assert [states[c] for c in fresh] == ["failed", "failed"]
    # The run's counts: not sent by this run, and held again (not waiting to be sent).
    assert (result.held, result.pending, result.failed, result.held_again) == (0, 1, 2, 1)


async def test_a_refused_resend_of_held_units_leaves_them_as_they_were() -> None:
    """A definite refusal (400) of a resend says it was not acted on, and nothing of the send
    that left the units held: recorded as not acted on, they stay held (verify decides
    them), not failed."""
    journal = MemoryJournal()
    held, fresh = (c.id for c in chunks(2))
    journal.held_before = frozenset({held})
    refused = Outcome(Kind.FAILED, status=400, error_code="DLF.1000", reason="no such job")
    transport = ScriptedTransport(
        journal, {0: [refused._replace(request_id="r0")], 1: [refused._replace(request_id="r1")]}
    )
    result = await engine_for(2, transport, journal, []).run()
    states = journal.states()
    assert (states[held], states[fresh]) == ("pending", "failed")
    assert (result.held, result.pending, result.failed, result.held_again) == (0, 1, 1, 1)
    # Each count's example is one of its own: a ticket for the failed unit cites its request.
    assert result.failed_example["DLF.1000"].request_id == "r1"
    assert result.refused_example["DLF.1000"].request_id == "r0"


async def test_auth_refusal_aborts_and_leaves_pending() -> None:
    journal = MemoryJournal()
    denied = Outcome(Kind.FATAL, status=401, error_code="APIG.0301", reason="auth")
    transport = ScriptedTransport(journal, {i: [denied] for i in range(100)})
    events: list[Event] = []
    engine = engine_for(100, transport, journal, events)
    result = await engine.run()
    assert isinstance(result.fatal, AuthRefused)
    assert len(transport.sent) <= 4  # only what was already in flight
    intended = {cid for kind, cid, _, _ in journal.log if kind == "intent"}
    # Intents committed ahead (see "Intents ahead") were not sent: pending too.
    assert len(intended) <= 4 + 2
    assert result.done == 0 and result.pending == len(intended)
    assert set(journal.states().values()) == {"pending"}
    assert any(isinstance(e, Stopping) for e in events)


@pytest.mark.parametrize(
    ("answer", "said", "unsaid"),
    [
        (
            Outcome(Kind.FATAL, 403, "DLF.0003", "no permission", reason="permission refused"),
            "refused permission for job ods_orders in workspace ws (or for one it reruns with "
            "it: dwd_orders in workspace ws2) (403 DLF.0003 no permission)",
            "Fix the credentials",
        ),
        (
            Outcome(Kind.FATAL, 401, "APIG.0301", "bad", reason="authentication refused"),
            "refused our credentials (401 APIG.0301 bad); nothing it refused was acted on. Fix "
            "the credentials (BULKRERUN_AK/BULKRERUN_SK, with BULKRERUN_SECURITY_TOKEN",
            "clock",
        ),
        (
            Outcome(
                Kind.FATAL,
                401,
                "APIG.0301",
                "bad",
                reason="authentication refused: this machine's clock is about 20 minutes ahead",
            ),
            "refused our signature (401 APIG.0301 bad): this machine's clock is about 20 "
            "minutes ahead, and the API gateway refuses AK/SK signatures dated more than 15 "
            "minutes from its time",
            "Fix the credentials",
        ),
    ],
)
async def test_an_auth_stop_says_what_to_fix(answer: Outcome, said: str, unsaid: str) -> None:
    """A 403 names the job and workspace (and those its request reruns with it); a 401
    the credentials; a clock the transport saw off, the clock."""
    journal = MemoryJournal()
    body = canonical_json(
        {"begin_time": 1, "jobs": [{"job_name": "dwd_orders", "workspace_id": "ws2"}]}
    )
    cid = chunk_id("ods_orders", "ws", body)
    chunk = Chunk(cid, "window", "window[0]", "ods_orders", "ws", body, (cid,))
    transport = ScriptedTransport(journal, {0: [answer]})
    engine = Engine(
        iter([chunk]),
        transport=transport,
        journal=journal,
        pacer=Pacer(PacingConfig(rate=1000.0), rng=random.Random(0)),
        max_inflight=1,
        clock=FakeClock(),
    )
    result = await engine.run()
    assert isinstance(result.fatal, AuthRefused)
    message = str(result.fatal)
    assert said in message
    assert unsaid not in message
    assert message.endswith("run the same command again.")
    assert journal.states() == {cid: "pending"}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (Outcome(Kind.FAILED, status=404, error_code="APIG.0101", error_msg="no API"), "APIG.0101"),
        (Outcome(Kind.FAILED, status=307, reason="redirected to X, not followed"), "HTTP 307"),
        (Outcome(Kind.FAILED, status=404, error_msg="<html>Not Found</html>"), "HTTP 404"),
        (Outcome(Kind.FAILED, status=405, error_msg="Method Not Allowed"), "HTTP 405"),
    ],
)
async def test_an_answer_that_says_the_endpoint_is_wrong_stops_the_run(
    answer: Outcome, said: str
) -> None:
    """Not the unit's doing, so not failed: every other request would meet the same."""
    journal = MemoryJournal()
    transport = ScriptedTransport(journal, {0: [answer]})
    engine = engine_for(100, transport, journal, [])
    result = await engine.run()
    assert isinstance(result.fatal, WrongEndpoint) and result.fatal.code == said
    assert len(transport.sent) <= 4  # the first, and what was in flight with it
    assert result.failed == 0 and journal.states()[transport.sent[0][0]] == "pending"


async def test_a_service_refusal_with_404_is_the_requests_failure_not_the_endpoints() -> None:
    refused = Outcome(Kind.FAILED, status=404, error_code="DLF.0100", error_msg="no such job")
    journal = MemoryJournal()
    transport = ScriptedTransport(journal, {0: [refused]})
    result = await engine_for(10, transport, journal, []).run()
    assert result.fatal is None and (result.failed, result.done) == (1, 9)


async def test_soft_stop_finishes_inflight_and_sends_nothing_new() -> None:
    # On a clock that moves only when every task waits: the grace period cannot run out
    # while the requests in flight are answered, however slow the machine.
    journal = MemoryJournal()
    transport = ScriptedTransport(journal)
    transport.blocking = True
    events: list[Event] = []
    clock = VirtualClock()
    engine = engine_for(50, transport, journal, events, clock=clock)
    result = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.drive)

        async def stopper() -> None:
            while len(transport.sent) < 4:
                await anyio.lowlevel.checkpoint()
            engine.stop("test")
            transport.block.set()

        tg.start_soon(stopper)
        result = await engine.run()
        tg.cancel_scope.cancel()
    assert result is not None
    assert len(transport.sent) == 4
    assert result.done == 4 and result.held == 0


async def test_hard_stop_records_inflight_as_held() -> None:
    journal = MemoryJournal()
    transport = ScriptedTransport(journal)
    transport.blocking = True  # never answers
    events: list[Event] = []
    engine = engine_for(50, transport, journal, events)

    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            while len(transport.sent) < 4:
                await anyio.lowlevel.checkpoint()
            engine.stop("first ctrl-c")
            engine.stop("second ctrl-c", hard=True)

        tg.start_soon(stopper)
        result = await engine.run()
    assert result.held == 4 and result.done == 0
    states = journal.states()
    sent = {cid for cid, _ in transport.sent}
    # In flight: held. Committed ahead and waiting for a permit: not sent, so pending.
    assert {states[cid] for cid in sent} == {"held"}
    assert {s for cid, s in states.items() if cid not in sent} <= {"pending"}


async def test_grace_runs_out_then_inflight_is_held() -> None:
    # The grace period is the run's clock's: 30 s of it pass here in no time.
    journal = MemoryJournal()
    transport = ScriptedTransport(journal)
    transport.blocking = True
    clock = VirtualClock()
    engine = engine_for(10, transport, journal, [], clock=clock, grace=30.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.drive)

        async def stopper() -> None:
            while len(transport.sent) < 4:
                await anyio.lowlevel.checkpoint()
            engine.stop("ctrl-c")

        tg.start_soon(stopper)
        started = clock.now()
        with anyio.fail_after(5):
            result = await engine.run()
        tg.cancel_scope.cancel()
    assert result.held == 4
    assert clock.now() - started == 30.0


async def test_failure_budget_stops_the_run() -> None:
    journal = MemoryJournal()
    refused = Outcome(Kind.FAILED, status=400, error_code="DLF.1000", reason="refused")
    transport = ScriptedTransport(journal, {i: [refused] for i in range(1000)})
    result = await engine_for(200, transport, journal, [], max_failure_ratio=0.5, canary=10).run()
    assert isinstance(result.fatal, BudgetExhausted)
    assert len(transport.sent) == 10  # the canary's, and nothing after them
    assert result.failed_by_code == {"DLF.1000": result.failed}


async def test_the_canarys_requests_go_out_alone_and_the_rest_waits_for_their_word() -> None:
    # 64 in flight, a canary of 3 whose answers are slow to come: nothing else leaves
    # until all three have settled. Held answers stop the run: only the canary was sent.
    journal = MemoryJournal()
    lost = Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    transport = ScriptedTransport(journal, {i: [lost] for i in range(3)})
    transport.blocking = True
    engine = engine_for(100, transport, journal, [], inflight=64, canary=3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        with anyio.fail_after(5):
            while len(transport.sent) < 3:
                await anyio.lowlevel.checkpoint()
            for _ in range(50):  # every worker has had its turn: none sent a fourth
                await anyio.lowlevel.checkpoint()
        assert len(transport.sent) == 3, transport.sent
        transport.block.set()
    assert isinstance(engine.result.fatal, BudgetExhausted)
    assert (engine.result.held, len(transport.sent)) == (3, 3)
    # A canary that passes lets the rest go; one larger than the plan sends it whole.
    for n, canary in ((40, 3), (2, 5)):
        journal = MemoryJournal()
        transport = ScriptedTransport(journal)
        result = await engine_for(n, transport, journal, [], inflight=8, canary=canary).run()
        assert (result.done, result.fatal, len(transport.sent)) == (n, None, n)


async def test_failures_are_counted_under_the_code_status_and_report_give_them() -> None:
    from bulkrerun.outcome import failure_code

    bare = Outcome(Kind.FAILED, status=400, reason="bad request")  # an answer without a code
    lost = Outcome(Kind.FAILED, reason="answer unreadable")  # no answer to name it by
    journal = MemoryJournal()
    transport = ScriptedTransport(journal, {0: [bare], 1: [bare], 2: [lost]})
    result = await engine_for(5, transport, journal, []).run()
    assert result.failed_by_code == {failure_code(None, 400): 2, "answer unreadable": 1}
    assert failure_code(None, 400) == "HTTP 400"


async def test_an_unreachable_service_stops_the_run_with_units_pending() -> None:
    journal = MemoryJournal()
    refused = Outcome(Kind.RETRY, reason="could not connect (ClientConnectorError)")
    transport = ScriptedTransport(journal, {i: [refused] * 10 for i in range(100)})
    result = await engine_for(100, transport, journal, [], breaker_cooldown=0.0).run()
    assert isinstance(result.fatal, Unreachable)
    assert "BULKRERUN_ENDPOINT" in str(result.fatal)
    assert len(transport.sent) < 20
    assert result.done == result.failed == result.held == 0
    assert set(journal.states().values()) <= {"pending", "retry"}


async def test_held_answers_in_a_row_stop_the_run_rather_than_hold_more() -> None:
    # Every request is sent and times out: each is held, as its rerun may have started.
    # With 2 in flight the run stops at the 2 + 3rd held answer in a row; the rest of the
    # plan stays unsent (pending), not held one probe at a time.
    journal = MemoryJournal()
    lost = Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    transport = ScriptedTransport(journal, {i: [lost] for i in range(100)})
    result = await engine_for(100, transport, journal, [], inflight=2).run()
    assert isinstance(result.fatal, Unanswered)
    assert "the service does not answer: 5 requests in a row" in str(result.fatal)
    sent = len(transport.sent)
    assert 5 <= sent <= 5 + 2 and len(set(transport.sent)) == sent  # none sent twice
    assert (result.done, result.failed, result.held) == (0, 0, sent)
    states = Counter(journal.states().values())  # of the chunks the workers took
    assert states["held"] == sent and set(states) <= {"held", "pending"}


async def test_timeouts_in_a_row_name_the_flag_and_do_not_promise_the_same_command() -> None:
    # The timeout may have been given as --timeout, which the resume command and status's
    # steps repeat ("or the run stops the same way"): the stop names the flag beside the
    # variable, and says to run again, not to run the same command again.
    journal = MemoryJournal()
    lost = Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    transport = ScriptedTransport(journal, {i: [lost] for i in range(100)})
    result = await engine_for(100, transport, journal, [], inflight=2).run()
    assert isinstance(result.fatal, Unanswered) and result.fatal.timed_out
    message = str(result.fatal)
    assert "Check the service and the timeout (--timeout or BULKRERUN_TIMEOUT), then run " in (
        message
    )
    assert "the same command" not in message


async def test_held_gateway_answers_in_a_row_stop_without_blaming_the_timeout() -> None:
    # A 502 or 504 from the gateway is an answer, if not a definite one: the stop says the
    # service keeps failing and points at its health, not at BULKRERUN_TIMEOUT.
    journal = MemoryJournal()
    bad = Outcome(Kind.HELD, status=502, reason="502 Bad Gateway: the back end may have run it")
    transport = ScriptedTransport(journal, {i: [bad] for i in range(100)})
    result = await engine_for(100, transport, journal, [], inflight=2).run()
    assert isinstance(result.fatal, Unanswered) and not result.fatal.timed_out
    message = str(result.fatal)
    assert message.startswith("the service keeps failing: 5 requests in a row")
    assert "the service's health" in message and "BULKRERUN_TIMEOUT" not in message
    assert result.held == len(transport.sent) and len(set(transport.sent)) == result.held


async def test_connect_errors_after_the_service_answered_are_retried_not_fatal() -> None:
    journal = MemoryJournal()
    refused = Outcome(Kind.RETRY, reason="could not connect")
    script = {0: [DONE]} | {i: [refused, DONE] for i in range(1, 30)}
    transport = ScriptedTransport(journal, script)
    # One at a time: the first chunk's answer comes before any connect error.
    result = await engine_for(30, transport, journal, [], inflight=1, breaker_cooldown=0.0).run()
    assert result.fatal is None
    assert result.done == 30


async def test_intents_run_ahead_but_sends_in_flight_never_exceed_the_limit() -> None:
    journal = MemoryJournal()
    transport = ScriptedTransport(journal)
    transport.blocking = True
    in_flight = peak = 0
    send = transport.send

    async def counting_send(chunk: Chunk) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await send(chunk)
        finally:
            in_flight -= 1

    transport.send = counting_send  # type: ignore[method-assign]
    engine = engine_for(40, transport, journal, [], inflight=4)

    async with anyio.create_task_group() as tg:

        async def release() -> None:
            # Every permit is out: the lookahead workers have committed their intents.
            while len(transport.sent) < 4 or len(journal.durable) < 6:
                await anyio.lowlevel.checkpoint()
            assert len(transport.sent) == 4 and len(journal.durable) == 6
            transport.block.set()

        tg.start_soon(release)
        result = await engine.run()
    assert result.done == 40 and peak == 4


async def test_intents_made_durable_together_still_leave_one_interval_apart() -> None:
    """The rate governs what leaves, not what is admitted: four intents that one stalled
    commit made durable at once are sent 0.1 s apart at 10/s, not in one burst."""
    journal = StalledCommitJournal(batch=4)
    clock = VirtualClock()
    transport = TimedTransport(journal, clock)
    engine = Engine(
        chunks(12),
        transport=transport,
        journal=journal,
        pacer=Pacer(PacingConfig(rate=10.0, burst=1, adaptive=False)),
        max_inflight=4,
        clock=clock,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.drive)
        result = await engine.run()
        tg.cancel_scope.cancel()
    assert result.done == 12
    gaps = [b - a for a, b in zip(transport.times, transport.times[1:], strict=False)]
    assert min(gaps) >= 0.1 - LATE_FORGIVEN - 1e-9


async def test_a_service_that_fails_everything_for_ten_minutes_after_answering_stops_the_run() -> (
    None
):
    """Not unreachable (it answered first), but down since: 503s and failed connections
    only. With the breaker open a probe every few seconds would take hours; the run stops
    (exit 3) after OUTAGE_STOP_AFTER; an answer in between starts the count again."""
    from bulkrerun.engine import OUTAGE_STOP_AFTER
    from bulkrerun.errors import ServiceDown

    journal = MemoryJournal()
    down = Outcome(Kind.RETRY, status=503, error_code="APIG.0202", reason="unavailable")
    refused = Outcome(Kind.RETRY, reason="could not connect (ClientConnectorError)")
    script = {i: [down, refused] * 500 for i in range(1, 50)}  # chunk 0: done at once
    transport = ScriptedTransport(journal, script)
    engine = engine_for(50, transport, journal, [], max_attempts=1000)
    clock = engine._clock
    started = clock.now()
    result = await engine.run()
    assert isinstance(result.fatal, ServiceDown)
    assert "the service has failed every request for 10m" in str(result.fatal)
    assert "last: " in str(result.fatal)
    assert OUTAGE_STOP_AFTER <= clock.now() - started <= OUTAGE_STOP_AFTER + 120
    # Units whose retries ran out meanwhile (the retry budget, drawn on as the jitter
    # falls) fail, not acted on; those the stop found waiting stay pending; none is held.
    assert result.done == 1 and result.held == 0 and result.pending > 0


async def test_the_outage_stop_is_the_operators_to_set() -> None:
    """--outage-stop: how long a service that fails everything is probed before the run
    stops. (Longer than the default, the retry budget is spent meanwhile: each request then
    fails, not acted on, after one attempt.)"""
    from bulkrerun import cli
    from bulkrerun.engine import OUTAGE_STOP_AFTER
    from bulkrerun.errors import ServiceDown

    assert cli._DEFAULT_OUTAGE_STOP == OUTAGE_STOP_AFTER  # the flag's default is the engine's
    down = Outcome(Kind.RETRY, status=503, error_code="APIG.0202", reason="unavailable")
    refused = Outcome(Kind.RETRY, reason="could not connect (ClientConnectorError)")
    for limit in (60.0, 300.0):
        journal = MemoryJournal()
        script = {i: [down, refused] * 1000 for i in range(1, 20)}  # chunk 0: done at once
        transport = ScriptedTransport(journal, script)
        engine = Engine(
            chunks(20),
            transport=transport,
            journal=journal,
            pacer=Pacer(PacingConfig(rate=1000.0, burst=10, max_attempts=2000)),
            max_inflight=4,
            clock=(clock := FakeClock()),
            grace=0.2,
            outage_stop=limit,
        )
        started = clock.now()
        result = await engine.run()
        assert isinstance(result.fatal, ServiceDown)
        assert "--outage-stop SECONDS waits longer" in str(result.fatal)
        assert limit <= clock.now() - started <= limit + 120


async def test_requests_waiting_to_retry_are_counted_while_they_wait() -> None:
    journal = MemoryJournal()
    told = Outcome(Kind.RETRY, status=429, retry_after=300.0, reason="throttled")
    transport = ScriptedTransport(journal, {0: [told, DONE]})
    seen: list[dict[str, float]] = []
    engine = engine_for(2, transport, journal, [])
    engine._emit = lambda event: seen.append(dict(engine.result.waiting))  # type: ignore[method-assign]
    result = await engine.run()
    assert result.done == 2 and result.waiting == {}
    [waiting] = seen  # the one retry, as it began: due at the Retry-After at least
    (due,) = waiting.values()
    assert due - engine._clock.now() <= 0 and due >= 1000.0 + 300.0


async def test_giving_up_after_one_attempt_says_1_attempt() -> None:
    reasons: list[str] = []

    class Reasons(MemoryJournal):
        def outcome(
            self, chunk: Chunk, attempt: int, outcome: Outcome, wall: float, state: str
        ) -> None:
            reasons.append(outcome.reason)
            super().outcome(chunk, attempt, outcome, wall, state)

    journal = Reasons()
    busy = Outcome(Kind.RETRY, status=503, reason="unavailable")
    transport = ScriptedTransport(journal, {0: [busy]})
    result = await engine_for(1, transport, journal, [], max_attempts=1).run()
    assert result.failed == 1
    assert reasons == ["gave up after 1 attempt (--max-attempts); last: unavailable"]
