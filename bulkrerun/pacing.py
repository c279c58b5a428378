"""Pacing: how fast to send, when to retry, when to stop. Pure decisions on ``now``.

Nothing here sleeps, reads a clock or touches the event loop: every method takes ``now``
(monotonic seconds) and returns a number or a verdict, so each schedule is tested exactly.
The engine's workers share one :class:`Pacer`; each attempt goes::

    slot = pacer.reserve(clock.now())                     # a place in the send schedule
    while (wait := pacer.wait(slot, clock.now())) > 0:    # the schedule may move it later
        await clock.sleep(wait)
    await journal.intend(...)                             # (the engine) durable intent
    while (wait := pacer.send_wait(slot, clock.now())) > 0:  # the gate: its turn to leave
        await clock.sleep(wait)
    sent_at = clock.now()
    outcome = await transport.send(chunk)
    pacer.on_outcome(outcome, clock.now(), sent_at=sent_at)
    if outcome.kind is Kind.RETRY:
        delay = pacer.retry_delay(outcome, attempt)       # None: give up on this unit
    if (reason := pacer.stop_reason()) is not None: ...   # failure budget or canary said stop

The algorithms, briefly:

- **Rate limiter** (:class:`RateLimiter`): GCRA, the arithmetic form of a token bucket. One
  number, the *theoretical arrival time* of the next request, advances by ``1/rate`` per
  booking; a booking may go ``burst - 1`` intervals ahead of it. Every attempt books,
  retries included.
- **Re-planning** (:class:`Pacer`): with 64 workers at 50 req/s the booked slots reach more
  than a second ahead, so a new rate would only govern sends after that backlog, and a
  gateway keeping no burst would answer 429 to every other request meanwhile. The pacer
  therefore keeps the booked :class:`Slot` objects and spaces them again whenever the
  rate changes or the breaker opens or closes; workers ask :meth:`Pacer.wait` until their
  slot is due, and a second GCRA, the gate, is asked again right before each send
  (:meth:`Pacer.send_wait`) and keeps actual sends one interval apart.
- **Adaptive rate** (:class:`AdaptiveRate`): as in the AWS SDKs' adaptive retry mode, a 429
  lowers the rate to ``BETA`` times a measured rate (here what the gateway *admitted*), then
  the rate climbs back on a CUBIC curve: fast to the last limit, flat around it, slowly past
  it, never above the configured rate. 429s for requests sent before the last decrease are
  stale and ignored, so one burst of 429s for many in-flight requests counts once. What it
  measures and how fast it climbs span a second, or a few dozen answers when a second holds
  fewer, so that it behaves at 2 req/s much as it does at 50. A 429 whose message states
  the gateway's limit (``limit:10,time:1 second``, read by :func:`stated_rate`) lowers the
  ceiling to it for the rest of the run: the rate needs no string of 429s to come down
  from a configured rate far too high, and never probes past the stated limit.
- **Backoff** (:func:`backoff`): exponential with full jitter, clamped at a cap; Retry-After
  (:func:`parse_retry_after`) is a floor.
- **Retry budget** (:class:`RetryBudget`): the AWS SDK retry quota. Retries spend tokens,
  successes earn them back, so a failing service is not sent a multiple of its load.
- **Circuit breaker** (:class:`CircuitBreaker`): after consecutive failures that say the
  service is unwell, no sends for a cooldown, then one probe; closes on success.
- **Failure budget** (:class:`FailureBudget`): a canary over the first N final outcomes, then
  a sliding window; stops a bad recovery before it spreads.

Which outcome is retryable, final or fatal is decided in ``transport`` (``Outcome.kind``);
this module only reacts to kinds and statuses, and reads a 429's message for the limit it
states.
"""

from __future__ import annotations

import bisect
import email.utils
import math
import random
import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum

from bulkrerun.errors import SettingsError
from bulkrerun.outcome import Kind, Outcome

# --- adaptive rate ----------------------------------------------------------------------------

BETA = 0.9
"""After a 429, pace at 90 % of what the gateway admitted lately. Close enough to the limit
to keep utilisation above 90 %, far enough below it that the gateway's bucket refills
between our requests and the next 429 takes a while."""

CLIMB_SECONDS = 1.0
"""CUBIC's K after the usual step, at a limit of ``CLIMB_ANSWERS`` req/s or more: seconds to
climb from ``BETA * limit`` back to the limit. One second recovers quickly from a sporadic
429 (another client's burst), yet the curve is flat near the limit, so probing past it is
slow and costs few 429s, as long as that second holds ``CLIMB_ANSWERS`` requests."""

CLIMB_ANSWERS = 40
"""Below this many req/s, CUBIC's K after the usual step is the time the limit takes for
this many requests (20 s at 2 req/s), not ``CLIMB_SECONDS``. Against a real quota each
climb ends in a probe past it and a 429, so the climb counted in requests sets the share of
429s: about one in 40. A climb of one second was two requests at 2 req/s, and a third of
the answers were 429s. The price: below 40 req/s a sporadic 429 costs as many requests as
it does at 40, where before it cost next to nothing. With 50, sporadic 429s at 50 req/s
cost more too: a rate they lower below 50 climbs back more slowly."""

ESTIMATE_WINDOW = 1.0
"""Seconds of sends the measurements look back at least: the unit of the gateway's quota
("limit:10, time:1 second"). Further back when that holds fewer than ``ESTIMATE_ANSWERS``."""

ESTIMATE_ANSWERS = 50
"""Answers the measurements look back at least: the window reaches back further than
``ESTIMATE_WINDOW`` to take in the last 50. At 2 req/s a second holds two answers, too few
for a share (``SHARE_MIN_ANSWERS``) or an admitted rate, and every 429 cut the rate by rule
(by half for a second one within the second) instead of by measurement; 50 is what a second
holds at 50 req/s. A 429 with no other 429 within the window starts a new throttling
episode."""

RATE_MIN_SAMPLES = 2
"""At least two admitted sends (one interval) before an admitted rate is believed: it only
ever stops a cut from going deeper than it, or, when most answers are 429s, sets it..."""

ESTIMATE_MIN_SPAN = 0.02
"""...spread over at least 20 ms, so that sends admitted at one instant (a gateway's burst)
are not read as a huge rate. A rate read too high only makes a decrease milder."""

SHARE_MIN_ANSWERS = 8
"""At least eight answers before a share of admitted ones is believed: with three, one
unlucky 429 would read as a third of our requests refused."""

MAX_CUT = 0.5
"""A share of admitted answers cuts the rate by at most half per 429: it is a rougher clue
than a measured admitted rate. Also the step for a second fresh 429 with nothing measured
in between, as in AIMD: 370 req/s meets a quota of 50 within a few 429s."""

BACKGROUND_BAND = 0.97
"""Answers to what was sent while the rate climbed back below 97 % of the limit (CUBIC's
W_max) measure the *background*: the share of 429s our rate does not cause. Under a real
quota the limit sits at it, so those sends are admitted; 429s that come from other clients
or a gateway's whims come at any rate, and come there too."""

BACKGROUND_LIMITS = 3
"""...below 97 % of the lowest of the last three limits, in fact: a gateway with a burst lets
a rate past its quota for a while, and a limit set then lies above the quota."""

BACKGROUND_SETTLED = 0.8
"""...and only once the rate has settled near the quota: after a decrease that took the
usual step, with at least 80 % of the window's answers admitted, to a limit at least 80 %
of the one before. On the way down from a rate far above the quota the limit is still
above it, and what is sent below the limit is refused for being too fast."""

BACKGROUND_ANSWERS = 400
"""The background share is a moving average over about the last 400 such answers (older
ones weigh less and less), so it follows a background that changes."""

BACKGROUND_MIN_ANSWERS = 50
BACKGROUND_MIN_SHARE = 0.01
"""The background is believed from 50 answers on, and only at 1 % or more: below that,
every fresh 429 lowers the rate as before, and 1 % costs little (87-98 % of the rate)."""

BACKGROUND_Z = 2.0
"""A fresh 429 the background explains lowers nothing: the window's 429s are at most the
background's share of its answers plus two standard deviations. At 3 % over 50 answers,
four 429s are already too many; over a real quota the rate then probes a few per cent
past it before it turns back."""

MIN_RATE = 0.1
"""Never pace slower than one request per 10 s: a quota taken entirely by other clients then
costs one 429 per 10 s while the rate waits for room."""

# --- schedule ---------------------------------------------------------------------------------

DUE_TOLERANCE = 1e-6
"""A slot less than a microsecond away is due: sums of float intervals are not exact, and a
worker must not be sent back to sleep for a rounding error."""

LATE_FORGIVEN = 0.002
"""A send up to 2 ms after its turn does not push the next ones back. Timers fire a
millisecond or so late (epoll counts milliseconds); were every such delay carried over,
50 req/s would become 48. The price: two sends may come up to 2 ms closer than the rate."""

MAX_WAIT = 0.25
"""Longest sleep :meth:`Pacer.wait` and :meth:`Pacer.send_wait` ask for: a worker asks again
at least four times a second, so a slot moved earlier by a higher rate is used within a
quarter second."""

# --- retries ----------------------------------------------------------------------------------

RETRY_AFTER_CAP = 300.0
"""Longest Retry-After honoured (s). A longer one is a maintenance window, not a throttle:
the unit retries after five minutes (and meets the breaker if the service is still out)
rather than keep a worker waiting for hours."""

RETRY_BUDGET_CAPACITY = 500
RETRY_COST = 5
TIMEOUT_RETRY_COST = 10
SUCCESS_REFUND = 1
"""The AWS SDK retry quota, unchanged: 500 tokens, a retry costs 5 (10 after a timeout or a
connection error, which cost the service more), a success earns 1 back. Sustained, at most
one attempt in six may be a retry; a burst of 100 retries is allowed."""

# --- stopping ---------------------------------------------------------------------------------

FAILURE_WINDOW = 100
"""Final outcomes in the failure budget's sliding window: enough for a ratio to mean
something, few enough to react within a minute at 10 req/s."""

FAILURE_JUDGED_FROM = 20
"""Without a canary, the failure budget judges from this many final outcomes on (over all of
them until the window is full): waiting for the window to fill let a run of fewer requests
end without ever being judged, and let 100 refusals go out before a stop."""


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class RateLimiter:
    """GCRA rate limiter on injected time, shared by all workers.

    :meth:`reserve` books the next slot and returns how long to wait for it: at ``rate`` 10
    and ``burst`` 1, calls at ``now=0`` get 0, 0.1, 0.2, ... :meth:`set_rate` changes the
    pace of later bookings; :meth:`rebase` starts the schedule afresh, for re-planning.

    Written here rather than taken from aiolimiter or aiometer: both read the event loop's
    clock and sleep themselves, so they can be neither driven by an injected clock nor
    re-rated on the fly, and a limiter that only answers "how long" is ten lines of GCRA.
    """

    __slots__ = ("_burst", "_interval", "_tat")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._interval = 1.0 / _positive("rate", rate)
        self._burst = burst
        # Theoretical arrival time of the next booking. -inf: the bucket starts full, so the
        # first ``burst`` bookings go at once.
        self._tat = -math.inf

    @property
    def rate(self) -> float:
        return 1.0 / self._interval

    @property
    def burst(self) -> int:
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Pace later bookings at ``rate``: the next one comes one *new* interval after the
        last one booked. Slots already handed out stay as they are."""
        interval = 1.0 / _positive("rate", rate)
        self._tat += interval - self._interval  # -inf stays -inf
        self._interval = interval

    def delay(self, now: float) -> float:
        """Seconds until a booking would be due, without booking."""
        # GCRA: the bucket is full when the theoretical arrival time is at or before now.
        # A booking may be up to burst - 1 intervals ahead of it: the token bucket's burst.
        return max(0.0, self._tat - (self._burst - 1) * self._interval - now)

    def reserve(self, now: float, *, late: float = 0.0) -> float:
        """Book the next slot; return the seconds to wait for it (0.0 if it is now).

        ``late``: how late the booking comes after its due time; up to that much lateness
        does not push later bookings back (the caller bounds it: it is a small burst).
        """
        # delay(), inline, and conditionals rather than max(): a run books twice per request
        # (callgrind: 2,200 instructions a booking so, 4,900 through delay() and max()).
        tat, interval = self._tat, self._interval
        delay = tat - (self._burst - 1) * interval - now
        # Each booking moves the theoretical arrival time one interval on.
        self._tat = (tat if tat > now - late else now - late) + interval
        return delay if delay > 0.0 else 0.0

    def reserve_due(self, now: float, tolerance: float, late: float) -> float:
        """Book the next slot if it is due within ``tolerance`` seconds and return 0.0;
        otherwise book nothing and return the seconds until it is due. ``late``: as for
        :meth:`reserve`.

        One call where asking :meth:`delay` and then booking took two (the gate, once per
        request; callgrind: 1,700 instructions against 8,600)."""
        tat, interval = self._tat, self._interval
        delay = tat - (self._burst - 1) * interval - now
        if delay > tolerance:
            return delay
        self._tat = (tat if tat > now - late else now - late) + interval
        return 0.0

    def no_burst(self) -> None:
        """From now on, one booking per interval: no burst credit, however full the bucket."""
        self._burst = 1

    def rebase(self, at: float) -> None:
        """Forget every booking: the next one is at ``at``, then one interval apart, with no
        burst credit (re-planned sends must not leave in a burst)."""
        self._tat = at + (self._burst - 1) * self._interval


class _AnswerMeter:
    """The answered attempts of the measurement window (:meth:`window_start`): when each was
    sent and whether the gateway admitted it (any answer but 429). Kept sorted by send time,
    since answers arrive out of send order. Every query starts within the window, so
    answers that fell out of it are dropped only now and then (``_TRIM_EVERY`` answers): at
    thousands of answers a second, dropping them one by one moved the whole list each time.
    """

    __slots__ = ("_added", "_answers")
    _TRIM_EVERY = 512

    def __init__(self) -> None:
        self._answers: list[tuple[float, bool]] = []
        self._added = 0

    def add(self, sent_at: float, admitted: bool, now: float) -> None:
        answers = self._answers
        if not answers or sent_at > answers[-1][0]:
            answers.append((sent_at, admitted))  # the usual case: the latest send yet
        else:
            bisect.insort(answers, (sent_at, admitted))
        self._added += 1
        if self._added % self._TRIM_EVERY == 0:
            # Older than the window: sent more than a second ago, and not among the last
            # ESTIMATE_ANSWERS.
            old = bisect.bisect_left(answers, (now - ESTIMATE_WINDOW, False))
            old = min(old, len(answers) - ESTIMATE_ANSWERS)
            if old > 0:
                del answers[:old]

    def window_start(self, now: float) -> float:
        """The send time the measurements start from: ``ESTIMATE_WINDOW`` seconds back, or
        further back to take in the last ``ESTIMATE_ANSWERS`` answers (all, while fewer)."""
        answers = self._answers
        start = now - ESTIMATE_WINDOW
        if answers:
            oldest = answers[max(0, len(answers) - ESTIMATE_ANSWERS)][0]
            # Just before its send time: the share counts what was sent after the start.
            start = min(start, math.nextafter(oldest, -math.inf))
        return start

    def admitted_share(self, since: float) -> float | None:
        """The share of admitted answers among the attempts sent after ``since``, or None
        when fewer than ``SHARE_MIN_ANSWERS`` were answered."""
        answers, refused = self.refused(since)
        if answers < SHARE_MIN_ANSWERS:
            return None
        return (answers - refused) / answers

    def refused(self, since: float) -> tuple[int, int]:
        """``(answers, refused)`` among the attempts sent after ``since``."""
        answers = self._answers[bisect.bisect_right(self._answers, (since, True)) :]
        return len(answers), sum(not admitted for _, admitted in answers)

    def admitted_rate(self, since: float) -> float | None:
        """Admitted sends per second among those sent at or after ``since``, or None when
        too few. Measured between the first and last of them (n - 1 intervals), so a
        gateway admitting one request every 20 ms reads exactly 50, and sends whose answers
        are still on their way do not dilute it."""
        lo = bisect.bisect_left(self._answers, (since, False))
        times = [sent for sent, admitted in self._answers[lo:] if admitted]
        if len(times) < RATE_MIN_SAMPLES or times[-1] - times[0] < ESTIMATE_MIN_SPAN:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


class AdaptiveRate:
    """The sending rate, from 429s and successes; never above the ceiling: the configured
    rate, or the limit a 429 stated when that is lower.

    A 429 is *stale*, and ignored, when its request was sent before the last decrease: one
    burst of 429s answered for many in-flight requests is one signal, not many. (This
    assumes a new rate governs every send after it, which :class:`Pacer` ensures.)

    A fresh 429 sets the *limit* (CUBIC's W_max), at most the current rate, and the rate
    drops to ``BETA * limit``. The limit is judged from two measurements:

    - the share of answers admitted since the last decrease (over the window, when there
      are too few): our rate times that share got through. Near the quota a 429 is one
      answer in many, so it costs about 10 %, as in the AWS SDK's adaptive mode; far above
      it, the rate comes down by half per fresh 429 (``MAX_CUT``);
    - the rate at which the gateway admitted our sends since the first 429 of the episode.
      Its bucket is empty since then, so while we send faster than it refills, this is its
      quota. When most answers are 429s, this is the limit, and the rate lands near the
      quota in one step; otherwise it only keeps a cut from going below what the gateway
      visibly admits.

    With nothing measured, the first 429 in a while takes the usual step; a second one in a
    row halves the rate but keeps the old rate as the limit, so the climb back towards a
    quota that may lie anywhere between the two is quick.

    Between 429s the rate follows CUBIC from the last decrease,
    ``limit * (1 + C * (t - K)^3)``: concave up to the limit, flat around it, convex past it.
    C is set at each decrease so that the usual step climbs back in ``CLIMB_SECONDS``, or in
    ``CLIMB_ANSWERS`` requests at the limit when that takes longer: below 40 req/s the
    curve has the same shape counted in requests at any rate.

    The measurements look back over a window of at least a second and at least
    ``ESTIMATE_ANSWERS`` answers (:meth:`_AnswerMeter.window_start`), for the same reason.

    A 429 may state the gateway's limit (:func:`stated_rate`). From then on the ceiling is
    the lower of it and the configured rate, and the latest statement replaces an earlier
    one (a policy may change), so a higher one lifts the ceiling again, never above the
    configured rate. The statement is only an upper bound: other clients of the same user
    share the quota, so below it the rate adapts as before, and sporadic 429s cost what
    they did. A statement below the current rate makes its 429 fresh even if stale, and
    caps the limit: the rate drops to at most ``BETA`` times the stated limit at once,
    instead of coming down by halves over several 429s, and climbs back to it, not past it.

    Some 429s have nothing to do with our rate: another client's burst, a gateway refusing
    a share of requests at random. Each one used to lower the limit to the rate of the
    moment, so at 3 % the next came before the rate had climbed back, and the rate sank
    step by step towards the floor (15 req/s became 5 within a minute). What tells such
    429s from a quota is whether they come at lower rates too: answers to sends made while
    the rate climbs back below the limit (``BACKGROUND_BAND``) measure the *background*
    share, which a quota leaves near zero. A fresh 429 that the background explains
    (``BACKGROUND_Z``) is counted in ``background`` and lowers nothing; more 429s than it
    explains, or a stated limit below the rate, lower the rate as above.
    """

    __slots__ = (
        "_band",
        "_bg_answers",
        "_bg_refused",
        "_ceiling",
        "_climb",
        "_configured",
        "_cubic",
        "_episode",
        "_last_throttle",
        "_limit",
        "_limits",
        "_meter",
        "_rate",
        "_settled",
        "_since",
        "_stated",
        "background",
        "decreases",
        "stale",
    )

    def __init__(self, ceiling: float) -> None:
        self._configured = self._ceiling = self._rate = _positive("ceiling", ceiling)
        self._stated: float | None = None  # the limit the latest 429 stating one stated
        self._meter = _AnswerMeter()
        self._limit: float | None = None  # CUBIC's W_max; None until the first decrease
        self._since = -math.inf  # the last decrease: CUBIC's origin, and the stale line
        self._climb = 0.0  # CUBIC's K and C since the last decrease; set at each decrease
        self._cubic = 0.0
        self._episode = -math.inf  # when the first 429 of the current run of 429s was sent
        self._last_throttle = -math.inf
        # The background: answers below the limit while climbing back, and those refused,
        # as moving sums (BACKGROUND_ANSWERS).
        self._bg_answers = self._bg_refused = 0.0
        self._settled = False  # whether the rate has settled near the limit (see above)
        self._limits: deque[float] = deque(maxlen=BACKGROUND_LIMITS)  # the last limits
        self._band = 0.0  # sends below this rate measure the background, once settled
        self.background = 0  # fresh 429s the background explained
        self.decreases = 0
        self.stale = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def ceiling(self) -> float:
        """The highest rate allowed: the configured one, or a lower limit a 429 stated."""
        return self._ceiling

    @property
    def stated(self) -> float | None:
        """The limit (req/s) stated by the latest 429 that stated one; None until one did."""
        return self._stated

    def on_success(self, now: float, sent_at: float) -> bool:
        """A request sent at ``sent_at`` got through the gateway (any answer but 429).
        Returns True if the rate went up."""
        self._meter.add(sent_at, True, now)
        if self._limit is None:
            return False
        if self._settled and sent_at >= self._since and self._rate < self._band:
            self._below(refused=False)
        t = now - self._since - self._climb
        target = min(self._ceiling, self._limit * (1.0 + self._cubic * t**3))
        if target <= self._rate:
            return False
        self._rate = target
        return True

    def on_throttle(self, now: float, sent_at: float, stated: float | None = None) -> bool:
        """A request sent at ``sent_at`` got 429, its message stating the limit ``stated``
        (req/s; None when it states none). Returns True if the rate went down."""
        self._meter.add(sent_at, False, now)
        window = self._meter.window_start(now)
        if self._last_throttle < window:
            self._episode = sent_at  # no other 429 within the window: a new episode
        self._last_throttle = now
        if stated is not None:
            self._stated = stated
            self._ceiling = min(self._configured, stated)
        if sent_at < self._since and self._rate <= self._ceiling:
            self.stale += 1
            return False
        if self._settled and self._rate < self._band:
            self._below(refused=True)
        if (stated is None or stated >= self._rate) and self._explained(window):
            self.background += 1
            return False
        limit, cut = self._estimate(window)
        # At most the rate, and at most the ceiling: a stated limit below the rate is the
        # limit, whatever the measurements make of answers to a rate far above it.
        limit = min(self._rate, limit, self._ceiling)
        share = self._meter.admitted_share(window)
        self._settled = (
            cut == BETA
            and share is not None
            and share >= BACKGROUND_SETTLED
            and self._limit is not None
            and limit >= BACKGROUND_SETTLED * self._limit
        )
        self._limit = limit
        self._limits.append(limit)
        self._band = BACKGROUND_BAND * min(self._limits)
        self._rate = min(self._ceiling, max(MIN_RATE, cut * self._limit))
        # CUBIC's C, relative to the limit: the usual step climbs back in a second, or in
        # CLIMB_ANSWERS requests at the limit if that is longer. Then K for this cut: the
        # curve is back at the limit K seconds from now.
        climb = max(CLIMB_SECONDS, CLIMB_ANSWERS / self._limit)
        self._cubic = (1.0 - BETA) / climb**3
        self._climb = ((1.0 - cut) / self._cubic) ** (1.0 / 3.0)
        self._since = now
        self.decreases += 1
        return True

    def _below(self, *, refused: bool) -> None:
        """Count one fresh answer to a send made below the limit, while climbing back."""
        keep = 1.0 - 1.0 / BACKGROUND_ANSWERS
        self._bg_answers = self._bg_answers * keep + 1.0
        self._bg_refused = self._bg_refused * keep + refused

    def _explained(self, window: float) -> bool:
        """Whether the background explains the window's 429s (see the class docstring)."""
        if self._bg_answers < BACKGROUND_MIN_ANSWERS:
            return False
        share = self._bg_refused / self._bg_answers
        if share < BACKGROUND_MIN_SHARE:
            return False
        answers, refused = self._meter.refused(window)
        expected = answers * share
        return refused <= expected + BACKGROUND_Z * math.sqrt(expected * (1.0 - share))

    def _estimate(self, window: float) -> tuple[float, float]:
        """``(limit, cut)`` at a fresh 429: what the gateway seems to let through, and the
        share of it to pace at (see the class docstring). ``window``: where the
        measurements start (:meth:`_AnswerMeter.window_start`)."""
        admitted = self._meter.admitted_rate(max(self._episode, window)) or 0.0
        share = self._meter.admitted_share(max(self._since, window))
        if share is None:
            # Too few answers since the last decrease: the window's share, if most of it was
            # admitted (two sporadic 429s close together). Mostly refused, it may well be
            # from a faster rate before the decrease, and says nothing about this one.
            share = self._meter.admitted_share(window)
            if share is not None and share < MAX_CUT:
                share = None
        if share is not None:
            if admitted and share < MAX_CUT:
                return admitted, BETA  # most refused: we saturate it, it admits its quota
            return max(admitted, self._rate * max(MAX_CUT, share)), BETA
        if admitted or self._since <= window:
            # The first 429 in the window with nothing to measure (the first answers of a
            # run) takes the usual step. Halving would cost a long climb back whenever the
            # rate was right and the 429 came from jitter or from another client.
            return max(admitted, self._rate), BETA
        if self._stated is not None and self._rate <= self._stated:
            # Below a stated limit already, the rate is not far too fast: a 429 for the
            # first sends after the cut to it is the gateway's bucket, still empty from
            # the rate before, and halving it took the demo from 15 req/s to 7 at once.
            return self._rate, BETA
        return self._rate, MAX_CUT  # a second fresh 429 in a row: still far too fast


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.

    ``attempt`` counts from 1 (the attempt that just failed). Full jitter (AWS architecture
    blog, "Exponential Backoff and Jitter") spreads workers that failed together over the
    whole interval, which decorrelates them best. Any ``attempt`` is fine: the exponent is
    clamped before it can overflow a float.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt!r}")
    try:
        ceiling = base * 2.0 ** (attempt - 1)
    except OverflowError:
        ceiling = cap
    return rng.uniform(0.0, min(cap, ceiling))


def parse_retry_after(value: str, wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    ``wall`` is the current epoch time, to turn a date into a delay. A date in the past gives
    0.0. Anything unreadable gives None (the header is advice; garbage is ignored).
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means "UTC, source unknown"; HTTP dates are UTC anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - wall)


_STATED_LIMIT = re.compile(
    r"\blimit:\s*(\d+(?:\.\d*)?|\.\d+)\s*,\s*time:\s*(\d+(?:\.\d*)?|\.\d+)\s*"
    r"(second|minute|hour|day)s?\b",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def stated_rate(message: str | None) -> float | None:
    """The limit a 429's message states, in requests per second, or None if it states none.

    The API gateway names the throttling policy that refused the request and its limit:
    ``...policy user over ratelimit,limit:10,time:1 second`` is 10.0, ``limit:100,time:1
    minute`` is 100/60, ``limit:5,time:5 second`` is 1.0. The unit may be second, minute,
    hour or day, singular or plural, in any case; the numbers may be fractional. A message
    without both parts (``...ratelimit,limit:10``), a zero or an unreadable number gives None:
    the statement is advice, and garbage is ignored.
    """
    if not message:
        return None
    found = _STATED_LIMIT.search(message)
    if found is None:
        return None
    limit, span, unit = found.groups()
    seconds = float(span) * _UNIT_SECONDS[unit.lower()]
    rate = float(limit) / seconds if seconds > 0 else math.inf
    return rate if 0 < rate < math.inf else None


class RetryBudget:
    """The AWS SDK retry quota: retries spend tokens, successes earn them back.

    While the service answers, the budget stays full and retries are free. When most
    attempts fail it drains, and retries stop until successes refill it: a failing service
    then sees one attempt per request instead of ``max_attempts``.
    """

    __slots__ = ("_capacity", "_tokens")

    def __init__(self, capacity: int = RETRY_BUDGET_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0, got {capacity!r}")
        self._capacity = capacity
        self._tokens = capacity

    @property
    def tokens(self) -> int:
        return self._tokens

    def withdraw(self, cost: int) -> bool:
        """Pay for a retry; False (and nothing paid) when the budget cannot cover it."""
        if cost > self._tokens:
            return False
        self._tokens -= cost
        return True

    def deposit(self, amount: int = SUCCESS_REFUND) -> None:
        tokens = self._tokens + amount  # once per request: a conditional costs less than min()
        self._tokens = tokens if tokens < self._capacity else self._capacity


SPELLS_KEPT = 8
"""Spells of failing the breaker keeps for the display (which looks every few seconds)."""


@dataclass(slots=True)
class Spell:
    """A spell of a failing service: when the breaker opened from closed, and when it
    closed again (None: it goes on), on the clock's time."""

    began: float
    ended: float | None = None


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Stops sending while the service looks down; probes with one request to find out.

    ``threshold`` unhealthy outcomes in a row (5xx, connection errors, timeouts) open it: no
    sends for ``cooldown`` seconds. Then it is half-open: one probe may go; a healthy answer
    closes it, an unhealthy one opens it again. Healthy means the service answered (200 or a
    definite refusal); a 429 says nothing about the service behind the gateway and is
    neither. While open, outcomes of requests sent before it opened are ignored: they tell
    of the past, and only what was sent since may close it.
    """

    __slots__ = (
        "_cooldown",
        "_failures",
        "_open_until",
        "_opened_at",
        "_probe_out",
        "_threshold",
        "opens",
        "outages",
        "spells",
    )

    def __init__(self, threshold: int, cooldown: float) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {threshold!r}")
        if not (math.isfinite(cooldown) and cooldown >= 0):
            raise ValueError(f"cooldown must be a finite number >= 0, got {cooldown!r}")
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None  # None: closed
        self._open_until = -math.inf
        self._probe_out = False
        self.opens = 0  # every opening, a failed probe's included
        self.outages = 0  # openings from closed: one per spell of failing
        # The latest spells, the newest last: what a display tells.
        self.spells: deque[Spell] = deque(maxlen=SPELLS_KEPT)

    def state(self, now: float) -> BreakerState:
        """Closed, open (``now`` within the cooldown), or half-open (cooldown over)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self._open_until else BreakerState.HALF_OPEN

    def wait(self, now: float) -> float:
        """Seconds left of the cooldown (0.0 unless open)."""
        return max(0.0, self._open_until - now) if self._opened_at is not None else 0.0

    def allows(self, now: float) -> bool:
        """May a request be sent now? Closed: yes. Open: no. Half-open: if no probe is out."""
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probe_out
        )

    def on_send(self, now: float) -> None:
        """A request allowed by :meth:`allows` is being sent: half-open, it is the probe."""
        if self.state(now) is BreakerState.HALF_OPEN:
            self._probe_out = True

    def record(self, healthy: bool | None, now: float, sent_at: float) -> None:
        """An outcome: healthy (True), unhealthy (False) or neutral (None, a 429)."""
        if self._opened_at is None:
            if healthy is True:
                self._failures = 0
            elif healthy is False:
                self._failures += 1
                if self._failures >= self._threshold:
                    self.outages += 1
                    self.spells.append(Spell(now))
                    self._open(now)
            return
        if sent_at < self._opened_at:
            return
        if healthy is True:
            self._opened_at = None
            self._failures = 0
            self._probe_out = False
            self.spells[-1].ended = now
        elif healthy is False:
            self._open(now)
        else:
            self._probe_out = False  # the probe was throttled: another may go

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._open_until = now + self._cooldown
        self._probe_out = False
        self.opens += 1


class FailureBudget:
    """Says stop when too large a share of requests fail finally (failed or held).

    With ``canary`` N > 0, the first check comes after the first N final outcomes: if more
    than ``max_ratio`` of them failed (any failure, when ``max_ratio`` is None), stop. After
    that, and from the :data:`FAILURE_JUDGED_FROM`-th outcome when there is no canary, the
    share over the last ``window`` outcomes (all of them, while fewer) is checked after each
    one. Once it says stop, it keeps saying it.
    """

    __slots__ = (
        "_canary",
        "_failed",
        "_judged_from",
        "_max_ratio",
        "_reason",
        "_recent",
        "_recent_failed",
        "_report",
        "_total",
        "_window",
    )

    def __init__(
        self,
        max_ratio: float | None,
        *,
        canary: int = 0,
        window: int = FAILURE_WINDOW,
        report: str = "bulkrerun report",
    ) -> None:
        if max_ratio is not None and not 0.0 <= max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in 0..1, got {max_ratio!r}")
        if canary < 0 or window < 1:
            raise ValueError(f"canary must be >= 0 and window >= 1, got {canary!r} and {window!r}")
        self._max_ratio = max_ratio
        self._canary = canary
        self._window = window
        self._judged_from = canary or min(window, FAILURE_JUDGED_FROM)
        self._recent: deque[bool] = deque(maxlen=window)
        self._recent_failed = 0
        self._total = 0
        self._failed = 0
        self._reason: str | None = None
        self._report = report

    @property
    def reason(self) -> str | None:
        """Why to stop, as a sentence for the operator; None while within budget."""
        return self._reason

    def record(self, failed: bool) -> None:
        """One request's final outcome."""
        if len(self._recent) == self._window and self._recent[0]:
            self._recent_failed -= 1
        self._recent.append(failed)
        self._recent_failed += failed
        self._total += 1
        self._failed += failed
        if self._reason is not None:
            return
        if self._total == self._canary:
            allowed = self._max_ratio if self._max_ratio is not None else 0.0
            if self._failed > allowed * self._total:
                which = (
                    "the first request"
                    if self._total == 1
                    else f"{self._failed} of the first {self._total:,} requests"
                )
                self._reason = (
                    f"canary: {which} failed or "
                    f"{'was' if self._failed == 1 else 'were'} held "
                    f"({self._failed / self._total:.0%}, more than the {allowed:.0%} allowed); "
                    f"check the manifest and the failures (`{self._report}`) before resuming"
                )
        elif self._max_ratio is not None and self._total >= self._judged_from:
            n = len(self._recent)
            if self._recent_failed > self._max_ratio * n:
                self._reason = (
                    f"failure budget: {self._recent_failed} of the last {n} requests failed "
                    "or were held "
                    f"({self._recent_failed / n:.0%}, more than the {self._max_ratio:.0%} "
                    f"allowed); see `{self._report}` for the errors before resuming"
                )


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """Everything pacing can be told. Defaults follow CONTRACT.md: 10 req/s, burst 1, 8 attempts.

    ``rate`` is the ceiling the adaptive rate never exceeds. A canary without
    ``max_failure_ratio`` stops on any failure among the first ``canary`` requests.
    """

    rate: float = 10.0
    burst: int = 1
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    adaptive: bool = True
    max_failure_ratio: float | None = None
    canary: int = 0
    failure_window: int = FAILURE_WINDOW
    report: str = "bulkrerun report"
    """The command that shows the failures, which a stop of the failure budget or the
    canary names: pacing knows no journal, so the command line names it here (a bare
    ``bulkrerun report``, pasted, ends "Missing argument 'JOURNAL'")."""
    breaker_threshold: int = 5
    breaker_cooldown: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.rate) and self.rate > 0):
            problems.append(
                f"rate = {self.rate!r}: must be a positive number of requests per second"
            )
        if self.burst < 1:
            problems.append(f"burst = {self.burst!r}: must be at least 1")
        if self.max_attempts < 1:
            problems.append(f"max_attempts = {self.max_attempts!r}: must be at least 1")
        if not 0 <= self.backoff_base <= self.backoff_cap < math.inf:
            problems.append(
                f"backoff_base = {self.backoff_base!r}, backoff_cap = {self.backoff_cap!r}: "
                "need 0 <= base <= cap, finite"
            )
        if self.max_failure_ratio is not None and not 0 <= self.max_failure_ratio <= 1:
            problems.append(f"max_failure_ratio = {self.max_failure_ratio!r}: must be 0..1")
        if self.canary < 0:
            problems.append(f"canary = {self.canary!r}: must be 0 (off) or more")
        if self.failure_window < 1:
            problems.append(f"failure_window = {self.failure_window!r}: must be at least 1")
        if self.breaker_threshold < 1:
            problems.append(f"breaker_threshold = {self.breaker_threshold!r}: must be at least 1")
        if not 0 <= self.breaker_cooldown < math.inf:
            problems.append(f"breaker_cooldown = {self.breaker_cooldown!r}: must be >= 0 s")
        if problems:
            raise SettingsError("pacing settings: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class PacingStats:
    """A snapshot of what pacing did, for progress lines, ``status`` and benchmarks."""

    rate: float
    reservations: int
    sends: int
    holds: int
    replans: int
    outcomes: int
    throttled: int
    stale_throttles: int
    decreases: int
    retries: int
    gave_up: int
    retry_tokens: int
    breaker: BreakerState
    final_ok: int
    final_failed: int
    stated_limit: float | None = None
    """The limit (req/s) the gateway's latest 429 stated, None until one did."""
    background_throttles: int = 0
    """Fresh 429s the background share explained, which lowered nothing."""
    outages: int = 0
    """Times the breaker opened from closed: spells of a failing service, however many
    probes each one failed."""
    spells: tuple[Spell, ...] = ()
    """The latest spells of failing (at most ``SPELLS_KEPT``), the newest last; ``outages``
    counts them all."""


# The outcome kinds on_outcome asks about, bound once: an enum member read through its class
# costs several times a global on Python 3.11, and on_outcome runs once per request.
_DONE, _FAILED, _RETRY, _FATAL = Kind.DONE, Kind.FAILED, Kind.RETRY, Kind.FATAL


class Slot:
    """One attempt's place in the send schedule, handed out by :meth:`Pacer.reserve`.

    The pacer moves it (a new rate, the breaker opening or closing) until it is used;
    ask :meth:`Pacer.wait` rather than reading ``at``.
    """

    __slots__ = ("_gone", "at")

    def __init__(self, at: float) -> None:
        self.at = at
        self._gone = False  # sent or cancelled: out of the schedule

    def __repr__(self) -> str:
        return f"Slot(at={self.at!r})"


class Pacer:
    """The one object the engine asks: when to send, whether to retry, whether to stop.

    Combines the rate limiter, the adaptive rate, backoff, the retry budget, the circuit
    breaker and the failure budget behind a few calls (the loop is in the module
    docstring). Not thread-safe: the engine's workers are tasks on one event loop and no
    call awaits, so calls never interleave.

    Scheduling uses two GCRA limiters at the current rate. The *plan* books a :class:`Slot`
    per attempt, in order; when the rate changes or the breaker opens or closes, the slots
    not yet sent are spaced again from the next moment the new pace allows, so a change
    governs the very next send instead of the one after a backlog (with 64 workers at
    50 req/s, more than a second of slots is booked). The *gate* paces actual sends: each
    admitted attempt asks it right before it leaves (:meth:`send_wait`), so workers that
    woke late, a plan just redrawn, or intents that became durable together never send
    closer together than the rate allows (give or take ``LATE_FORGIVEN``). Waits are capped
    at ``MAX_WAIT`` so a slot moved earlier (a higher rate) is noticed.
    """

    __slots__ = (
        "_adaptive",
        "_breaker",
        "_budget",
        "_config",
        "_failures",
        "_final_failed",
        "_final_ok",
        "_gate",
        "_gave_up",
        "_holds",
        "_outcomes",
        "_pending",
        "_plan",
        "_replans",
        "_reservations",
        "_retries",
        "_rng",
        "_sends",
        "_throttled",
    )

    def __init__(self, config: PacingConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng if rng is not None else random.Random()
        self._plan = RateLimiter(config.rate, config.burst)
        self._gate = RateLimiter(config.rate, config.burst)
        self._adaptive = AdaptiveRate(config.rate) if config.adaptive else None
        self._budget = RetryBudget()
        self._breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown)
        self._failures = FailureBudget(
            config.max_failure_ratio,
            canary=config.canary,
            window=config.failure_window,
            report=config.report,
        )
        self._pending: deque[Slot] = deque()  # booked, not yet sent, in booking order
        self._reservations = self._sends = self._holds = self._replans = 0
        self._outcomes = self._throttled = self._retries = self._gave_up = 0
        self._final_ok = self._final_failed = 0

    @property
    def config(self) -> PacingConfig:
        return self._config

    @property
    def current_rate(self) -> float:
        return self._gate.rate

    def reserve(self, now: float) -> Slot:
        """Book a place in the send schedule for one attempt (every attempt books one)."""
        self._reservations += 1
        slot = Slot(now + self._plan.reserve(now))
        self._pending.append(slot)
        return slot

    def wait(self, slot: Slot, now: float) -> float:
        """Seconds to sleep before asking again; 0.0 means admitted (the slot is used up):
        record the intent, then ask :meth:`send_wait` before sending.

        A slot waits for its planned time, then for the breaker (while it is open the wait
        is the rest of its cooldown; while the half-open probe is out, one interval). The
        first slot admitted after a cooldown is the probe. Waits are capped at ``MAX_WAIT``.
        """
        if slot._gone:
            raise ValueError(f"{slot!r} was used or cancelled already: reserve another")
        if slot.at - now > DUE_TOLERANCE:
            return min(slot.at - now, MAX_WAIT)
        breaker = self._breaker
        closed = breaker._opened_at is None  # the usual case, asked once per request
        if not closed and not breaker.allows(now):
            self._holds += 1
            return min(breaker.wait(now) or 1.0 / self._gate.rate, MAX_WAIT)
        self._pending.remove(slot)
        slot._gone = True
        if not closed:
            breaker.on_send(now)
        return 0.0

    def send_wait(self, slot: Slot, now: float) -> float:
        """Seconds to sleep before asking again; 0.0 means send now (the turn is taken).
        Asked for an admitted attempt (``slot``), once its intent is durable.

        The gate paces what actually leaves. Between admission and sending, the engine
        waits for the attempt's intent to be durable, and a commit that stalls (a disk that
        took 150 ms over one fsync) releases every intent admitted meanwhile at once: sent
        as they come, they would reach the service as one burst and draw 429s from a
        gateway that allows a small one (measured against the fake service: 8 and 10
        requests within 2 ms, 3 and 5 of them answered 429). Asking here, they leave at
        most ``burst`` at once and then one interval apart, at the rate of the moment: a
        429 that lowers it holds the ones still waiting too. Admissions go on meanwhile,
        so the requests waiting their turn carry the sends through the next stall, as the
        engine's intents ahead do. Up to ``LATE_FORGIVEN`` of lateness after the slot does
        not push later sends back.
        """
        late = now - slot.at
        delay = self._gate.reserve_due(
            now, DUE_TOLERANCE, late if late < LATE_FORGIVEN else LATE_FORGIVEN
        )
        if delay > 0.0:
            return delay if delay < MAX_WAIT else MAX_WAIT
        self._sends += 1
        return 0.0

    def cancel(self, slot: Slot) -> None:
        """Give a booked slot back (a worker stopping before it sent)."""
        if not slot._gone:
            self._pending.remove(slot)
            slot._gone = True

    def on_outcome(
        self, outcome: Outcome, now: float, sent_at: float | None = None, *, final: bool = True
    ) -> None:
        """Learn from one attempt's outcome. ``sent_at`` defaults to ``now - outcome.elapsed``.

        ``final=False`` for requests that are not reruns (instance-list reads): they pace and
        feed the breaker like any request, but do not count in the failure budget, so a
        canary is spent on reruns only."""
        kind = outcome.kind
        if kind is _FATAL:
            return  # the engine aborts the run; nothing left to pace
        sent = sent_at if sent_at is not None else now - outcome.elapsed
        self._outcomes += 1
        adaptive = self._adaptive
        if outcome.status == 429:  # outcome.throttled, without a property call per request
            self._throttled += 1
            # The message is read on a 429 only: a 200 costs nothing more.
            if adaptive is not None and adaptive.on_throttle(
                now, sent, stated_rate(outcome.error_msg)
            ):
                # A gateway that throttled us keeps no burst for us either: sent in bursts
                # of --burst at a rate it admits, most of each burst drew 429s, and each of
                # those lowered the rate again (burst 20 against a gateway's 1 sank 10 req/s
                # to 1). From the first decrease, sends go one interval apart.
                self._gate.no_burst()
                self._plan.no_burst()
                self._set_rate(adaptive.rate, now)
            self._health(None, now, sent)  # the gateway said nothing about the service
            return
        # Anything but a connection error (RETRY without a status) got through the gateway.
        reached = kind is not _RETRY or outcome.status is not None
        if adaptive is not None and reached and adaptive.on_success(now, sent):
            self._set_rate(adaptive.rate, now)
        healthy = kind is _DONE or kind is _FAILED  # it answered, yes or no
        self._health(healthy, now, sent)
        if healthy:
            self._budget.deposit()
        if kind is not _RETRY and final:
            self._final(failed=kind is not _DONE)

    def retry_delay(self, outcome: Outcome, attempt: int, *, final: bool = True) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after a RETRY outcome, or None to
        give up (``max_attempts`` reached or the retry budget is spent).

        The wait is the full-jitter backoff, floored by Retry-After (capped at
        ``RETRY_AFTER_CAP``) and, for a 429, by one interval of the current rate. The retry
        then books a slot like any attempt, at the rate the 429 lowered.

        The vendor's advice to wait 2 to 5 s after a 429 is for clients that do not pace.
        Here the load is set by the adaptive rate, which every retry goes through; a fixed
        wait on top would only delay the unit, and the end of the run, by seconds.
        """
        cfg = self._config
        if outcome.throttled:
            # Free: the adaptive rate already slows every attempt down, and failing units
            # because the operator set the rate too high would teach the wrong lesson.
            cost = 0
        elif outcome.status is None:
            cost = TIMEOUT_RETRY_COST  # a connection error or timeout
        else:
            cost = RETRY_COST
        if attempt >= cfg.max_attempts or not self._budget.withdraw(cost):
            self._gave_up += 1
            if final:
                self._final(failed=True)
            return None
        delay = backoff(attempt, base=cfg.backoff_base, cap=cfg.backoff_cap, rng=self._rng)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, RETRY_AFTER_CAP))
        if outcome.throttled:
            delay = max(delay, 1.0 / self._gate.rate)
        self._retries += 1
        return delay

    def stop_reason(self) -> str | None:
        """Why the run should stop (failure budget or canary), or None to go on."""
        return self._failures.reason

    def stats(self, now: float) -> PacingStats:
        adaptive = self._adaptive
        return PacingStats(
            rate=self._gate.rate,
            reservations=self._reservations,
            sends=self._sends,
            holds=self._holds,
            replans=self._replans,
            outcomes=self._outcomes,
            throttled=self._throttled,
            stale_throttles=adaptive.stale if adaptive is not None else 0,
            decreases=adaptive.decreases if adaptive is not None else 0,
            retries=self._retries,
            gave_up=self._gave_up,
            retry_tokens=self._budget.tokens,
            breaker=self._breaker.state(now),
            final_ok=self._final_ok,
            final_failed=self._final_failed,
            stated_limit=adaptive.stated if adaptive is not None else None,
            background_throttles=adaptive.background if adaptive is not None else 0,
            outages=self._breaker.outages,
            spells=tuple(Spell(x.began, x.ended) for x in self._breaker.spells),
        )

    def _set_rate(self, rate: float, now: float) -> None:
        self._gate.set_rate(rate)
        self._plan.set_rate(rate)
        self._replan(now)

    def _health(self, healthy: bool | None, now: float, sent_at: float) -> None:
        """Feed the breaker; re-plan the booked slots when it opens (past its cooldown;
        the first slot after it is the probe) or closes (the slots that waited go)."""
        breaker = self._breaker
        if breaker._opened_at is None and healthy is not False:
            breaker.record(healthy, now, sent_at)  # closed, and it stays so: nothing to re-plan
            return
        was_closed = self._breaker.state(now) is BreakerState.CLOSED
        opens = self._breaker.opens
        self._breaker.record(healthy, now, sent_at)
        closed = self._breaker.state(now) is BreakerState.CLOSED
        if self._breaker.opens != opens or (closed and not was_closed):
            self._replan(now)

    def _replan(self, now: float) -> None:
        """Space every booked slot again, in booking order and at the current rate, from
        the first moment both the gate and the breaker allow; later bookings follow."""
        self._replans += 1
        start = now + max(self._gate.delay(now), self._breaker.wait(now))
        plan = self._plan
        plan.rebase(start)
        for slot in self._pending:
            slot.at = start + plan.reserve(start)

    def _final(self, *, failed: bool) -> None:
        if failed:
            self._final_failed += 1
        else:
            self._final_ok += 1
        self._failures.record(failed)
