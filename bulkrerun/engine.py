"""The engine: plan minus journal -> paced workers -> transport -> journal.

Decisions live elsewhere (what to send: planner and journal state; when: pacing; what an
answer means: transport). The engine only orders the effects for each chunk::

    reserve a slot (pacing) -> record intent durably (journal) -> take a turn at the gate
    (pacing) -> send (transport) -> feed pacing -> record the outcome (journal) -> emit an event

Workers pull chunks straight from the plan's iterator: the event loop runs one task at a
time and ``next()`` never awaits, so no queue is needed and the plan is never materialised.

Intents ahead. A commit takes a few milliseconds (the commit delay and the fsync, which
took 3 ms at the median and 5.4 ms at p90 during a run on a busy 2-vCPU machine). With one
worker per request in flight, that much of every request's life would be spent waiting for
its intent, with the service idle for it. So there are ``lookahead`` workers more than
``max_inflight``, and a semaphore of ``max_inflight`` permits around the send: while every
permit is out, the extra workers commit the next intents. Requests in flight never exceed
``max_inflight``. The price: after a crash up to ``lookahead`` more units may show as held
(durable intent, not yet sent), which is safe (held units are never resent without
``--resend-held`` or a verification). And an admitted request may wait for a permit; only
when ``max_inflight``, not the rate, is what limits the run.

Stopping. A soft stop (first Ctrl-C, a fatal outcome, the failure budget) stops taking new
chunks and cancels waiting (pacing sleeps, backoff) at once; requests already in flight get
``grace`` seconds to answer. A hard stop (second Ctrl-C, or the grace running out) cancels
them: their outcome is unknown, so they are recorded as held. Either way the journal is
flushed before :meth:`Engine.run` returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import anyio

from bulkrerun.chunk import Chunk
from bulkrerun.clock import Clock, SystemClock
from bulkrerun.errors import (
    AuthRefused,
    BudgetExhausted,
    Fatal,
    ServiceDown,
    Unanswered,
    Unreachable,
    WrongEndpoint,
)
from bulkrerun.events import EventSink, Retrying, Settled, Stopping, ignore
from bulkrerun.outcome import (
    PROXY_AUTH_REQUIRED,
    PROXY_REFUSED_STOP,
    TIMED_OUT,
    Kind,
    Outcome,
    failure_code,
    wrong_endpoint,
)
from bulkrerun.pacing import Pacer, Slot
from bulkrerun.text import counted, duration
from bulkrerun.transport import Transport

UNREACHABLE_AFTER = 8
"""Connection failures, before the service has answered anything at all, after which the run
stops (exit 3) instead of crawling on: with nothing ever reached, the endpoint is wrong or
down, and the breaker would only pace the hopeless attempts to one every few seconds. Eight
is the breaker's first five plus three probes, about fifteen seconds."""

OUTAGE_STOP_AFTER = 600.0
"""Seconds of nothing but failures (5xx that were not acted on, connections that failed)
after the service had answered, after which the run stops (exit 3) instead of probing on:
with the breaker open, a probe every few seconds would take hours to use up the attempts
of thousands of units, and the operator would see a run that never ends. The same
command resumes once the service is back. A 429 is an answer: throttling is paced."""

HELD_IN_A_ROW_BEYOND_INFLIGHT = 3
"""Held outcomes in a row (nothing done or refused between them), beyond ``max_inflight``,
after which the run stops (exit 3): the service takes requests but answers none in time.
Each held unit may have run and must be decided by verification or by hand, so a run that
went on would only pile them up, one per breaker probe (every 6 s, seen against a service
that never answered in time). A stall that times out every request in flight at once makes
``max_inflight`` of them; three more are the breaker's probes failing too."""

LOOKAHEAD_SHARE = 0.5
"""Workers beyond ``max_inflight``, as a share of it (at least one): see "Intents ahead"."""

INTERRUPTED = Outcome(Kind.HELD, reason="interrupted mid-flight: unknown whether it ran")
NOT_SENT = Outcome(Kind.NOT_SENT, reason="stopped before sending")
_DONE = Kind.DONE  # asked once per request: a global is cheaper than the class's member


class JournalSink(Protocol):
    """What the engine needs of the journal (``bulkrerun.journal.Journal`` provides it)."""

    async def intend(self, chunk: Chunk, attempt: int, wall: float) -> None: ...

    def outcome(
        self, chunk: Chunk, attempt: int, outcome: Outcome, wall: float, state: str
    ) -> None: ...

    async def flush(self) -> None: ...

    def was_held(self, chunk: Chunk) -> bool: ...

    def held_units(self, chunk: Chunk) -> int: ...


@dataclass
class RunResult:
    """What happened in this run (units, not chunks, for done/failed/held/pending)."""

    done: int = 0
    failed: int = 0
    held: int = 0
    pending: int = 0
    stop_reason: str | None = None
    fatal: Fatal | None = None
    failed_by_code: dict[str, int] = field(default_factory=dict)
    # The first refusal of each code, for the closing summary: what a ticket asks for.
    failed_example: dict[str, Outcome] = field(default_factory=dict)
    # Resends of held units (--resend-held) the service refused, by code: not acted on, so
    # the units stay held (the send that left them held may have been).
    refused_resends: dict[str, int] = field(default_factory=dict)
    # The first refused resend of each code: not an example of a failed unit.
    refused_example: dict[str, Outcome] = field(default_factory=dict)
    # Of the units counted pending, those back to held: a resend of held units that was not
    # acted on, or not sent (--resend-held). Not waiting to be sent, nor held by this run.
    held_again: int = 0
    # Requests waiting to be sent again (backoff, Retry-After): chunk id -> when, on the
    # engine's clock. The progress line says so: a long Retry-After is otherwise silence.
    waiting: dict[str, float] = field(default_factory=dict)


class Engine:
    """Runs one plan. Create, then ``await run()``; ``stop()`` may be called from a signal
    handler task.

    ``on_event`` hears what happens to the run (:class:`Retrying`, :class:`Stopping`);
    ``on_settled``, when given, each chunk's :class:`Settled`. The counts so far are in
    ``result`` at any moment."""

    def __init__(
        self,
        chunks: Iterator[Chunk],
        *,
        transport: Transport,
        journal: JournalSink,
        pacer: Pacer,
        max_inflight: int,
        clock: Clock | None = None,
        on_event: EventSink = ignore,
        on_settled: EventSink | None = None,
        grace: float = 5.0,
        outage_stop: float = OUTAGE_STOP_AFTER,
        lookahead: int | None = None,
    ) -> None:
        self._chunks = chunks
        self._transport = transport
        self._journal = journal
        self._pacer = pacer
        self._clock = clock or SystemClock()
        self._emit = on_event
        # One Settled per request: made only for a sink that asks for them (3,300
        # instructions each; the progress display reads ``result`` instead).
        self._on_settled = on_settled
        self._max_inflight = max_inflight
        self._lookahead = (
            max(1, int(max_inflight * LOOKAHEAD_SHARE)) if lookahead is None else lookahead
        )
        # Taken once per request, without waiting when one is free (acquire_nowait): an
        # await of acquire() costs more even then (callgrind, taking and giving back one:
        # asyncio's Semaphore 5,200 instructions, this 1,500).
        self._permits = anyio.Semaphore(max_inflight)
        self._grace = grace
        self._outage_stop = outage_stop
        self._stopping = False
        self._stop_event = anyio.Event()
        self._waits: set[anyio.CancelScope] = set()  # cancelled on soft stop: waits end at once
        self._inflight = anyio.CancelScope()  # cancelled on hard stop: sends end at once
        self._answered = False  # has the service (or its gateway) answered anything yet?
        self._unreached = 0  # connection failures while it has not
        self._held_in_a_row = 0  # held outcomes since the last done or failed one
        self._failing_since: float | None = None  # the first failure since the last answer
        # The canary (--canary N): the first N requests go out alone, and the rest wait for
        # all of them to settle, which the failure budget judges first. Without the gate
        # the rest went out at the rate meanwhile, and a canary that failed stopped a run
        # that had already sent more. None: no canary, or its requests have settled.
        self._canary = pacer.config.canary
        self._canary_gate: anyio.Event | None = anyio.Event() if self._canary > 0 else None
        self._canary_taken = 0
        self._canary_settled = 0
        self.result = RunResult()

    # -- control ----------------------------------------------------------------------------

    def stop(self, reason: str, *, hard: bool = False) -> None:
        """Stop taking chunks (soft) or also abandon requests in flight (hard)."""
        if not self._stopping or hard:
            self._emit(Stopping(reason, hard))
        if not self._stopping:
            self._stopping = True
            self.result.stop_reason = reason
            self._stop_event.set()
            self._open_canary_gate()  # its waiters take nothing more: they see the stop
        for scope in self._waits:
            scope.cancel()
        if hard:
            self._inflight.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def cut_off(self) -> bool:
        """Whether the requests still in flight were cut off (a hard stop, or the grace
        running out after a soft one) rather than let finish: their outcome is unknown, so
        they are held. What a run's record of its stop says happened."""
        return self._inflight.cancel_called

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        try:
            with self._inflight:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._grace_watch)
                    async with anyio.create_task_group() as workers:
                        for _ in range(self._max_inflight + self._lookahead):
                            workers.start_soon(self._worker)
                    outer.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._journal.flush()
                except Fatal as exc:  # the journal cannot be written (a full disk)
                    if self.result.fatal is None:
                        self.result.fatal = exc
        return self.result

    async def _grace_watch(self) -> None:
        """After a soft stop, give requests in flight ``grace`` seconds, then cut them off."""
        await self._stop_event.wait()
        await self._clock.sleep(self._grace)
        self._inflight.cancel()

    async def _worker(self) -> None:
        while not self._stopping:
            gate = self._canary_gate
            if gate is not None:
                if self._canary_taken >= self._canary:
                    await gate.wait()  # the canary's requests are out: wait for their word
                    continue
                self._canary_taken += 1
            chunk = next(self._chunks, None)
            if chunk is None:
                if gate is not None:  # fewer requests than the canary: all of them are out
                    self._canary_taken -= 1
                    self._canary = self._canary_taken
                    self._open_canary_gate()
                return
            try:
                await self._one(chunk)
            except Fatal as exc:
                # The journal cannot be written (a full disk): no intent can be made durable,
                # so nothing more is sent. A request in flight keeps its durable intent
                # without an outcome, held; the others' workers stop as for any fatal stop.
                if self.result.fatal is None:
                    self._fatal(exc, "the journal cannot be written")
                return

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless stopping; False when a stop came first or cut the wait short."""
        if seconds > 0 and not self._stopping:
            scope = anyio.CancelScope()
            self._waits.add(scope)
            try:
                with scope:
                    await self._clock.sleep(seconds)
            finally:
                self._waits.discard(scope)
        return not self._stopping

    async def _one(self, chunk: Chunk) -> None:
        """Every attempt of one chunk, until it settles."""
        pacer, clock, journal = self._pacer, self._clock, self._journal
        attempt = 1
        while True:
            # Admission: a slot in the send schedule. Usually it is due at once, and then no
            # coroutine is made for the wait.
            slot = pacer.reserve(now := clock.now())
            wait = pacer.wait(slot, now)
            if not (await self._admitted(slot, wait) if wait > 0 else not self._stopping):
                self._settle(chunk, "pending", None, attempt - 1)
                return
            # The intent must be durable before the request leaves. Cancelled meanwhile
            # (a hard stop), the journal records the attempt as not sent and re-raises.
            try:
                await journal.intend(chunk, attempt, clock.wall())
            except anyio.get_cancelled_exc_class():
                self._settle(chunk, "pending", None, attempt - 1)
                raise
            permits = self._permits
            try:
                permits.acquire_nowait()
            except anyio.WouldBlock:
                try:
                    await permits.acquire()
                except BaseException:  # cancelled (a hard stop) before it was sent
                    self._not_sent(chunk, attempt)
                    raise
            try:
                if self._stopping:  # stopped while the intent was committed: not sent
                    self._not_sent(chunk, attempt)
                    return
                # Its turn at the gate: sends leave at the rate, however the commit bunched
                # the intents (see Pacer.send_wait).
                wait = pacer.send_wait(slot, clock.now())
                if wait > 0 and not await self._turn(chunk, attempt, slot, wait):
                    return
                sent_at = clock.now()
                outcome = INTERRUPTED
                try:
                    outcome = await self._transport.send(chunk)
                finally:
                    # A hard stop cancels the send: the outcome stays INTERRUPTED, held.
                    pacer.on_outcome(outcome, clock.now(), sent_at)
                    if outcome.kind is _DONE:  # _decide's first case, inline
                        self._answered = True
                        self._held_in_a_row = 0
                        self._failing_since = None
                        state, delay = "done", 0.0
                    else:
                        state, delay = self._decide(chunk, outcome, attempt)
                    if state == "failed" and outcome.kind is Kind.RETRY:
                        journal.outcome(
                            chunk, attempt, self._gave_up(outcome, attempt), clock.wall(), state
                        )
                    else:
                        journal.outcome(chunk, attempt, outcome, clock.wall(), state)
                    if state != "retry":
                        self._settle(chunk, state, outcome, attempt)
            finally:
                permits.release()
            if state != "retry":
                return
            waiting = self.result.waiting
            waiting[chunk.id] = clock.now() + delay
            try:
                self._emit(Retrying(chunk, attempt, outcome, delay))
                waited = await self._wait(delay)
            finally:
                del waiting[chunk.id]
            if not waited:
                journal.outcome(chunk, attempt, outcome, clock.wall(), "pending")
                self._settle(chunk, "pending", outcome, attempt)
                return
            attempt += 1

    async def _turn(self, chunk: Chunk, attempt: int, slot: Slot, wait: float) -> bool:
        """Wait for the attempt's turn at the gate, due in ``wait`` seconds (a lower rate may
        move it later meanwhile). False when a stop came first: the attempt is then recorded
        as not sent, and so it is when a hard stop cancels the wait."""
        pacer, clock = self._pacer, self._clock
        try:
            while wait > 0:
                if not await self._wait(wait):
                    break
                wait = pacer.send_wait(slot, clock.now())
            else:
                return True
        except BaseException:
            self._not_sent(chunk, attempt)
            raise
        self._not_sent(chunk, attempt)
        return False

    def _not_sent(self, chunk: Chunk, attempt: int) -> None:
        """An attempt whose intent is durable did not leave: record it so, and settle the
        chunk as pending (its units are not held)."""
        self._journal.outcome(chunk, attempt, NOT_SENT, self._clock.wall(), "pending")
        self._settle(chunk, "pending", None, attempt - 1)

    async def _admitted(self, slot: Slot, wait: float) -> bool:
        """Wait for this attempt's place in the send schedule, ``slot``, due in ``wait``
        seconds (pacing may move it later meanwhile: a lower rate, an open breaker).
        False: a stop came first."""
        pacer, clock = self._pacer, self._clock
        while wait > 0:
            if not await self._wait(wait):
                pacer.cancel(slot)
                return False
            wait = pacer.wait(slot, clock.now())
        return not self._stopping

    def _decide(self, chunk: Chunk, outcome: Outcome, attempt: int) -> tuple[str, float]:
        """The journal state for this attempt's outcome, and the delay before the next
        attempt when it is ``retry``. Trips the stop on a fatal outcome."""
        kind = outcome.kind
        if outcome.status is not None:
            self._answered = True
        if kind is Kind.DONE:
            return "done", 0.0
        if kind is Kind.FAILED:
            self._held_in_a_row = 0
            self._failing_since = None
            if wrong_endpoint(outcome.status, outcome.error_code):
                self._wrong_endpoint(outcome)
                return "pending", 0.0  # not acted on, and not the unit's doing
            # A refused resend of held units (--resend-held) was not acted on, and says
            # nothing of the send that left them held: failed would have --retry-failed,
            # said to be safe, send them a third time. See the RETRY case below.
            if not self._journal.was_held(chunk):
                return "failed", 0.0
            code = _code(outcome)
            refused = self.result.refused_resends
            refused[code] = refused.get(code, 0) + 1
            self.result.refused_example.setdefault(code, outcome)
            return "pending", 0.0
        if kind is Kind.HELD:
            if outcome is INTERRUPTED:  # cut off by a hard stop: not the service's doing
                return "held", 0.0
            self._held_in_a_row += 1
            limit = self._max_inflight + HELD_IN_A_ROW_BEYOND_INFLIGHT
            if self._held_in_a_row >= limit and self.result.fatal is None:
                # A gateway's 502/504 is an answer: the timeout is not what to check then.
                # The timeout may have come from --timeout, which a pasted resume repeats:
                # both are named, and "run again" does not promise that the same command,
                # with the same timeout, goes on (status's first step says what keeping it
                # means).
                if outcome.status is None:
                    what = "the service does not answer"
                    check = "the service and the timeout (--timeout or BULKRERUN_TIMEOUT)"
                    again = "run again"
                else:
                    what, check = "the service keeps failing", "the service's health"
                    again = "run the same command again"
                self._fatal(
                    Unanswered(
                        f"{what}: {self._held_in_a_row} requests in a row were sent and got "
                        f"no definite answer (the last: {outcome.reason}). Each is held, as "
                        "its rerun may have started; the run stopped rather than hold more. "
                        f"Check {check}, then {again}: held units are "
                        "not resent; decide them first with --verify-held (or `bulkrerun "
                        "verify`).",
                        timed_out=outcome.reason == TIMED_OUT,
                    ),
                    what,
                )
            return "held", 0.0
        if kind is Kind.FATAL:
            if self.result.fatal is None:
                if outcome.status == PROXY_AUTH_REQUIRED:
                    message = PROXY_REFUSED_STOP
                else:
                    message = _refused(outcome, chunk)
                self._fatal(AuthRefused(message), "authentication or permission refused")
            return "pending", 0.0
        # RETRY: not acted on. A stop leaves it pending; running out of attempts or of the
        # retry budget makes it failed (so --retry-failed sends it again later), unless it
        # resent held units: see below.
        if outcome.status is None and not self._answered:
            self._unreached += 1
            if self._unreached >= UNREACHABLE_AFTER and self.result.fatal is None:
                self._fatal(
                    Unreachable(
                        f"could not reach the service: {self._unreached} attempts failed to "
                        f"connect ({outcome.reason}) and none got an answer. Check "
                        "BULKRERUN_ENDPOINT or BULKRERUN_REGION, any proxy (HTTPS_PROXY, "
                        "HTTP_PROXY, NO_PROXY) and the network; a request that failed "
                        "to connect was not sent, so the same command resumes once it is "
                        "reachable. If the "
                        "endpoint itself was wrong, the journal is bound to it: run with the "
                        "right one and a new --journal path."
                    ),
                    "the service cannot be reached",
                )
        elif outcome.status is None or outcome.status >= 500:
            self._outage(outcome)
        if self._stopping:
            return "pending", 0.0
        delay = self._pacer.retry_delay(outcome, attempt)
        if delay is None:
            # A unit held before (--resend-held) may have been acted on by the send that left
            # it held; that this resend was not acted on decides nothing. Failed would have
            # --retry-failed, said to be safe, send it a third time: recorded as not acted
            # on, each unit of the request is back to what it was (held, failed, or not yet
            # sent, in a batch formed around it).
            return ("pending" if self._journal.was_held(chunk) else "failed"), 0.0
        return "retry", delay

    def _gave_up(self, outcome: Outcome, attempt: int) -> Outcome:
        """A retryable outcome that ended the retries, as journaled: saying why they ended,
        where the report would otherwise show a plain 'throttled' as the reason it failed."""
        if attempt >= self._pacer.config.max_attempts:
            why = f"gave up after {counted(attempt, 'attempt')} (--max-attempts)"
        else:
            why = "gave up: the retry budget is spent (the service fails too often)"
        return outcome._replace(reason=f"{why}; last: {outcome.reason}")

    def _wrong_endpoint(self, outcome: Outcome) -> None:
        """Stop the run: an answer said the endpoint is wrong (see :func:`wrong_endpoint`),
        and every other request would meet the same."""
        if self.result.fatal is not None:
            return
        said = " ".join(str(x) for x in (outcome.status, outcome.error_code) if x)
        detail = outcome.reason if 300 <= (outcome.status or 0) < 400 else outcome.error_msg
        self._fatal(
            WrongEndpoint(
                f"the endpoint looks wrong: the answer was {said}"
                f"{f' ({detail})' if detail else ''}, not the service's refusal of a request. "
                "Nothing answered so was acted on; the run stopped rather than send the rest "
                "into the same answer.",
                failure_code(outcome.error_code, outcome.status),
            ),
            "the endpoint looks wrong",
        )

    def _outage(self, outcome: Outcome) -> None:
        """A failure not acted on (a 503, a connection that failed) after the service
        had answered: past ``outage_stop`` seconds of nothing else, stop the run."""
        now = self._clock.now()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._outage_stop and self.result.fatal is None:
            wall = self._clock.wall() - (now - self._failing_since)
            since = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._fatal(
                ServiceDown(
                    f"the service has failed every request for "
                    f"{duration(now - self._failing_since)} (since {since}; last: "
                    f"{outcome.reason}). None of those was acted on; the run stopped rather "
                    "than probe on. Run the same command again once the service is back "
                    "(--outage-stop SECONDS waits longer before stopping)."
                ),
                "the service is down",
            )

    def _fatal(self, fatal: Fatal, reason: str) -> None:
        """Stop the run for ``fatal`` (exit 3), the first fatal condition of the run."""
        self.result.fatal = fatal
        self.stop(reason)

    def _settle(self, chunk: Chunk, state: str, outcome: Outcome | None, attempts: int) -> None:
        n = len(chunk.units)
        r = self.result
        if state == "done":
            r.done += n
        elif state == "failed":
            r.failed += n
            code = "?" if outcome is None else _code(outcome)
            r.failed_by_code[code] = r.failed_by_code.get(code, 0) + n
            if outcome is not None:
                r.failed_example.setdefault(code, outcome)
        elif state == "held":
            r.held += n
        else:
            # Not acted on, or not sent: a resend's units held before (--resend-held) are
            # held again, not waiting to be sent.
            r.pending += n
            r.held_again += self._journal.held_units(chunk)
        if self._on_settled is not None:
            self._on_settled(Settled(chunk, state, outcome, attempts))
        reason = self._pacer.stop_reason()
        if reason is not None and r.fatal is None:
            self._fatal(BudgetExhausted(f"{reason}. The rest was not sent."), reason)
        if self._canary_gate is not None:
            self._canary_settled += 1
            if self._canary_settled >= self._canary:
                self._open_canary_gate()  # after the budget's word: a stop comes first

    def _open_canary_gate(self) -> None:
        """Let the workers that wait behind the canary take the rest (or see the stop)."""
        if self._canary_gate is not None:
            self._canary_gate.set()
            self._canary_gate = None


def _refused(outcome: Outcome, chunk: Chunk) -> str:
    """What a run stopped by a 401 or 403 says: what was refused, and what to fix first.

    A 401 is the credentials (a token lasts 24 hours; a key can be disabled or replaced
    while a run goes on), or, under AK/SK, this machine's clock, which the transport reads
    off the answer's ``Date`` and puts in the reason after a colon. A 403 is a permission,
    which may be one job's: the stop names the job and workspace it was refused for."""
    detail = " ".join(str(x) for x in (outcome.status, outcome.error_code, outcome.error_msg) if x)
    _, _, clock = outcome.reason.partition(": ")
    if clock:
        return (
            f"the service refused our signature ({detail}): {clock}, and the API gateway "
            "refuses AK/SK signatures dated more than 15 minutes from its time. Nothing it "
            "refused was acted on. Set this machine's clock right (NTP), then run the same "
            "command again."
        )
    if outcome.status == 403:
        # A window's request reruns its `jobs` too, which may be of other workspaces.
        others = [
            f"{j.get('job_name')} in workspace {j.get('workspace_id')}"
            for j in chunk.body_object().get("jobs") or ()
            if isinstance(j, dict)
        ]
        also = f" (or for one it reruns with it: {', '.join(others)})" if others else ""
        return (
            f"the service refused permission for job {chunk.job_name} in workspace "
            f"{chunk.workspace}{also} ({detail}); nothing it refused was acted on. Grant the "
            "user permission on that job (or take it out of the manifest: what is done stays "
            "done), then run the same command again."
        )
    return (
        f"the service refused our credentials ({detail}); nothing it refused was acted on. "
        "Fix the credentials (BULKRERUN_AK/BULKRERUN_SK, with BULKRERUN_SECURITY_TOKEN for "
        "temporary ones, or BULKRERUN_TOKEN: an IAM token lasts 24 hours, temporary keys "
        "expire too, and a key may have been disabled or replaced; and the project ID), then "
        "run the same command again."
    )


def _code(outcome: Outcome) -> str:
    """What a refusal is counted under: as ``status`` and ``report`` count it (its error
    code, else ``HTTP`` and its status), or, without an answer, its reason."""
    if outcome.error_code or outcome.status:
        return failure_code(outcome.error_code, outcome.status)
    return outcome.reason
