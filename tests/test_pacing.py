"""Pacing, tested on given ``now``s: exact schedules, no sleeping, no event loop.

The last part is a deterministic simulation of the engine against a rate-limited gateway
(64 workers, 20 ms latency, a token bucket at 50 req/s), on a simulated clock, asserting the
quota-utilisation goals for a rate set right (50) and a rate set far too high (370), and
the same goals for a rate five times too high against quotas of a few requests a second.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from bulkrerun.errors import SettingsError
from bulkrerun.fake.faults import throttle_message
from bulkrerun.outcome import DONE, Kind, Outcome
from bulkrerun.pacing import (
    BETA,
    CLIMB_ANSWERS,
    CLIMB_SECONDS,
    ESTIMATE_ANSWERS,
    LATE_FORGIVEN,
    MAX_CUT,
    MAX_WAIT,
    RETRY_AFTER_CAP,
    RETRY_BUDGET_CAPACITY,
    RETRY_COST,
    TIMEOUT_RETRY_COST,
    AdaptiveRate,
    BreakerState,
    CircuitBreaker,
    FailureBudget,
    Pacer,
    PacingConfig,
    RateLimiter,
    RetryBudget,
    backoff,
    parse_retry_after,
    stated_rate,
)

THROTTLED = Outcome(Kind.RETRY, status=429, error_code="APIG.0308", reason="429 throttled")
UNAVAILABLE = Outcome(Kind.RETRY, status=503, reason="503 unavailable")
CONNECT_ERROR = Outcome(Kind.RETRY, reason="connection refused")
REFUSED = Outcome(Kind.FAILED, status=400, error_code="DLF.1000", reason="400 refused")
HELD = Outcome(Kind.HELD, reason="timeout after send")


class MaxRandom(random.Random):
    """Jitter always at the top of its range, to see the backoff's ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- rate limiter -----------------------------------------------------------------------------


def test_limiter_spaces_bookings_one_interval_apart() -> None:
    limiter = RateLimiter(10, burst=1)
    assert [limiter.reserve(0.0) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_limiter_lets_a_burst_go_at_once_then_paces() -> None:
    limiter = RateLimiter(10, burst=3)
    assert [limiter.reserve(0.0) for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])


def test_limiter_refills_while_idle_but_never_beyond_the_burst() -> None:
    limiter = RateLimiter(10, burst=2)
    assert [limiter.reserve(0.0) for _ in range(3)] == pytest.approx([0, 0, 0.1])
    # 10 s idle: two go at once again, not a hundred.
    assert [limiter.reserve(10.0) for _ in range(3)] == pytest.approx([0, 0, 0.1])


def test_limiter_delays_are_relative_to_now() -> None:
    limiter = RateLimiter(4)
    assert limiter.reserve(1.0) == 0.0
    assert limiter.reserve(1.1) == pytest.approx(0.15)  # slot at 1.25
    assert limiter.delay(1.1) == pytest.approx(0.4)  # next would be at 1.5; nothing booked
    assert limiter.reserve(1.1) == pytest.approx(0.4)


def test_limiter_delay_says_what_the_next_booking_would_wait_burst_included() -> None:
    # delay() is what a re-plan starts from: with burst credit left it is 0, as reserve()
    # would be, not one interval after the last booking.
    limiter = RateLimiter(10, burst=3)
    for expected in (0.0, 0.0, 0.0, 0.1, 0.2):
        assert limiter.delay(0.0) == pytest.approx(expected)
        assert limiter.reserve(0.0) == pytest.approx(expected)
    assert limiter.delay(1.0) == 0.0  # refilled while idle


def test_limiter_reserve_due_books_only_what_is_due_and_forgives_lateness() -> None:
    limiter = RateLimiter(10, burst=1)
    assert limiter.reserve_due(0.0, 1e-6, 0.0) == 0.0  # due: booked
    assert limiter.reserve_due(0.0, 1e-6, 0.0) == pytest.approx(0.1)  # not due: not booked
    assert limiter.reserve_due(0.0, 1e-6, 0.0) == pytest.approx(0.1)
    assert limiter.reserve_due(0.1, 1e-6, 0.0) == 0.0
    # Booked 0.05 s late with 0.05 s forgiven: the next is due one interval after the
    # slot, not after the late booking; with nothing forgiven, after the booking.
    assert limiter.reserve_due(0.25, 1e-6, 0.05) == 0.0
    assert limiter.delay(0.25) == pytest.approx(0.05)
    other = RateLimiter(10, burst=1)
    other.reserve_due(0.0, 1e-6, 0.0)
    other.reserve_due(0.25, 1e-6, 0.0)
    assert other.delay(0.25) == pytest.approx(0.1)
    # Within the tolerance counts as due.
    assert other.reserve_due(0.35 - 1e-7, 1e-6, 0.0) == 0.0


def test_limiter_set_rate_paces_the_next_booking_at_the_new_interval() -> None:
    limiter = RateLimiter(10)
    assert limiter.reserve(0.0) == 0.0
    limiter.set_rate(5)
    assert limiter.rate == pytest.approx(5)
    assert [limiter.reserve(0.0) for _ in range(2)] == pytest.approx([0.2, 0.4])
    limiter.set_rate(20)
    assert limiter.reserve(0.0) == pytest.approx(0.45)


def test_limiter_rebase_starts_afresh_without_burst_credit() -> None:
    limiter = RateLimiter(10, burst=3)
    for _ in range(10):
        limiter.reserve(0.0)
    limiter.rebase(5.0)
    assert [limiter.reserve(0.0) for _ in range(3)] == pytest.approx([5.0, 5.1, 5.2])


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0)])
def test_limiter_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate, burst)


# --- backoff and Retry-After --------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_base_up_to_the_cap() -> None:
    rng = MaxRandom()
    got = [backoff(n, base=0.5, cap=30.0, rng=rng) for n in range(1, 10)]
    assert got == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("attempt", [64, 1000, 10**6])
def test_backoff_clamps_for_huge_attempts(attempt: int) -> None:
    assert backoff(attempt, base=0.5, cap=30.0, rng=MaxRandom()) == 30.0
    assert 0.0 <= backoff(attempt, base=0.5, cap=30.0, rng=random.Random(1)) <= 30.0


def test_backoff_is_full_jitter_with_exact_values_for_a_seed() -> None:
    rng = random.Random(42)
    got = [backoff(n, base=0.5, cap=30.0, rng=rng) for n in (1, 2, 3, 8)]
    # uniform(0, ceiling) with Random(42): 0.6394, 0.0250, 0.2750, 0.2232 of the ceilings
    # 0.5, 1, 2 and (64 capped to) 30.
    assert got == pytest.approx([0.319713, 0.025011, 0.550059, 6.696322], abs=1e-6)


def test_backoff_spreads_over_the_whole_interval() -> None:
    rng = random.Random(7)
    samples = [backoff(4, base=0.5, cap=30.0, rng=rng) for _ in range(2000)]
    assert min(samples) >= 0.0
    assert max(samples) <= 4.0
    assert statistics.mean(samples) == pytest.approx(2.0, abs=0.1)
    assert min(samples) < 0.05
    assert max(samples) > 3.95


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff(0, base=0.5, cap=30.0, rng=random.Random())


WALL = datetime(2024, 11, 26, 8, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        (format_datetime(datetime(2024, 11, 26, 8, 0, 7, tzinfo=UTC), usegmt=True), 7.0),
        ("Tue, 26 Nov 2024 08:00:30 GMT", 30.0),
        ("Tue, 26 Nov 2024 08:00:30 -0000", 30.0),
        ("Tue, 26 Nov 2024 07:59:00 GMT", 0.0),  # in the past: go now
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str, expected: float) -> None:
    assert parse_retry_after(value, WALL) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "soon", "-1", "nan", "inf", "1e999", "Tue, 99 Foo 2024"])
def test_retry_after_garbage_is_ignored(value: str) -> None:
    assert parse_retry_after(value, WALL) is None


def _pacer(**settings: Any) -> Pacer:
    return Pacer(PacingConfig(**settings), rng=random.Random(3))


@pytest.mark.parametrize("retry_after", [0.7, 3.0, 40.0])
def test_retry_after_is_a_floor_for_the_retry(retry_after: float) -> None:
    pacer = _pacer(rate=10.0)
    for attempt in range(1, 4):
        delay = pacer.retry_delay(Outcome(Kind.RETRY, status=503, retry_after=retry_after), attempt)
        assert delay is not None
        assert delay >= retry_after
        assert delay <= max(retry_after, 0.5 * 2 ** (attempt - 1))


def test_retry_after_is_capped() -> None:
    delay = _pacer().retry_delay(Outcome(Kind.RETRY, status=429, retry_after=86400.0), 1)
    assert delay == RETRY_AFTER_CAP


def test_a_429_retry_is_backoff_but_at_least_one_interval_of_the_current_rate() -> None:
    pacer = Pacer(PacingConfig(rate=10.0), rng=MaxRandom())
    assert [pacer.retry_delay(THROTTLED, n) for n in (1, 2)] == [0.5, 1.0]
    slow = Pacer(PacingConfig(rate=0.1), rng=MaxRandom())
    assert slow.retry_delay(THROTTLED, 1) == 10.0
    assert slow.retry_delay(Outcome(Kind.RETRY, status=429, retry_after=0.0), 1) == 10.0


def test_a_5xx_retry_is_plain_backoff() -> None:
    pacer = Pacer(PacingConfig(), rng=MaxRandom())
    assert [pacer.retry_delay(UNAVAILABLE, n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


# --- the limit a 429 states ---------------------------------------------------------------------

REACHED = "The throttling threshold has been reached"  # how the gateway's 429 message begins


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (throttle_message(10), 10.0),  # the fake's, as the reference writes it
        (f"{REACHED}: policy user over ratelimit,limit:60,time:1 minute.", 1.0),
        ("policy api over ratelimit,limit:2000,time:1 minute", 2000 / 60),
        ("policy ip over ratelimit,limit:5,time:5 second", 1.0),
        ("policy user over ratelimit,limit:10,time:2 seconds", 5.0),
        ("policy user over ratelimit,limit:7200,time:1 hour", 2.0),
        ("policy user over ratelimit,limit:43200,time:12 hours", 1.0),
        ("policy user over ratelimit,limit:8640,time:1 day", 0.1),
        ("policy user over ratelimit,limit:2.5,time:1 second", 2.5),
        ("policy user over ratelimit,limit:.5,time:0.5 second", 1.0),
        (throttle_message(0.25), 0.25),
        ("policy user over ratelimit, LIMIT: 30 , Time: 1 Minutes", 0.5),
    ],
)
def test_stated_rate_reads_the_limit_in_requests_per_second(message: str, expected: float) -> None:
    assert stated_rate(message) == pytest.approx(expected)


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "Too many requests",
        f"{REACHED}: policy user over ratelimit,limit:10",
        "policy user over ratelimit,time:1 second",
        "policy user over ratelimit,limit:10,time:1 fortnight",
        "policy user over ratelimit,limit:10,time:1 secondly",
        "policy user over ratelimit,limit:ten,time:1 second",
        "policy user over ratelimit,limit:-5,time:1 second",
        "policy user over ratelimit,limit:0,time:1 second",
        "policy user over ratelimit,limit:10,time:0 second",
        "policy user over ratelimit,limit:1e3,time:1 second",
        "policy user over ratelimit,limit:1" + "0" * 400 + ",time:1 second",  # inf
        "ratelimit:10,time:1 second",  # not "limit:" as a word
    ],
)
def test_stated_rate_is_none_when_no_limit_is_stated(message: str | None) -> None:
    assert stated_rate(message) is None


# --- adaptive rate ------------------------------------------------------------------------------


def _feed_successes(adaptive: AdaptiveRate, start: float, rate: float, seconds: float) -> float:
    """Successful sends at ``rate`` from ``start``, answered 20 ms later; returns the end."""
    n = round(seconds * rate)
    for k in range(n):
        sent = start + k / rate
        adaptive.on_success(sent + 0.02, sent)
    return start + n / rate


def test_adaptive_rate_stays_at_the_ceiling_without_429s() -> None:
    adaptive = AdaptiveRate(10.0)
    _feed_successes(adaptive, 0.0, 10.0, 5.0)
    assert adaptive.rate == 10.0
    assert adaptive.decreases == 0


def test_adaptive_rate_drops_on_429_by_beta_of_what_got_through() -> None:
    adaptive = AdaptiveRate(10.0)
    end = _feed_successes(adaptive, 0.0, 10.0, 1.0) - 0.05  # 10 admitted in the last second
    assert adaptive.on_throttle(end, end) is True
    # 10 of the 11 answers of the last second were admitted.
    assert adaptive.rate == pytest.approx(BETA * 10.0 * 10 / 11)
    assert adaptive.decreases == 1


def test_adaptive_rate_climbs_back_on_a_cubic_curve_never_above_the_ceiling() -> None:
    adaptive = AdaptiveRate(10.0)
    end = _feed_successes(adaptive, 0.0, 10.0, 1.0) - 0.05
    adaptive.on_throttle(end, end)
    limit = 10.0 * 10 / 11
    low = adaptive.rate

    def rate_after(seconds: float) -> float:
        adaptive.on_success(end + seconds, end + seconds - 0.02)
        return adaptive.rate

    k = max(CLIMB_SECONDS, CLIMB_ANSWERS / limit)  # at 9 req/s, the time of CLIMB_ANSWERS
    climb = [rate_after(x * k) for x in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 10.0)]
    assert climb == sorted(climb)
    assert low < climb[0] < limit
    # Concave and quick at first: most of the way back within half of K...
    assert climb[1] == pytest.approx(limit * (1 - (1 - BETA) * 0.5**3))
    assert climb[3] == pytest.approx(limit)  # ...back at the limit after K...
    assert climb[4] == pytest.approx(limit * (1 + (1 - BETA) * 0.5**3))  # ...then slowly past
    assert climb[-1] == 10.0  # capped by the ceiling


def test_adaptive_rate_with_nothing_measured_steps_then_halves() -> None:
    adaptive = AdaptiveRate(100.0)
    assert adaptive.on_throttle(0.0, 0.0) is True  # the very first answer is a 429
    assert adaptive.rate == pytest.approx(BETA * 100.0)  # the usual step: may be jitter
    assert adaptive.on_throttle(0.02, 0.02) is True  # and the next one, sent after it, too
    assert adaptive.rate == pytest.approx(BETA * 100.0 / 2)
    # The limit stays at the rate before the halving: the climb back to it is quick.
    k = ((1 - 0.5) / (1 - BETA)) ** (1 / 3) * CLIMB_SECONDS
    adaptive.on_success(0.02 + k, 0.02 + k - 0.02)
    assert adaptive.rate == pytest.approx(BETA * 100.0)


def test_adaptive_rate_ignores_stale_429s_from_before_the_decrease() -> None:
    adaptive = AdaptiveRate(100.0)
    end = _feed_successes(adaptive, 0.0, 100.0, 1.0)
    # One burst answered for 30 requests in flight, all sent before the first answer came.
    sent_times = [end + k * 0.001 for k in range(30)]
    now = end + 0.05
    assert [adaptive.on_throttle(now, sent) for sent in sent_times].count(True) == 1
    assert adaptive.decreases == 1
    assert adaptive.stale == 29
    after_burst = adaptive.rate
    # A 429 for a request sent after the decrease is news: the new rate is still too high.
    assert adaptive.on_throttle(now + 0.1, now + 0.08) is True
    assert adaptive.rate < after_burst


def test_the_climb_has_the_same_shape_in_requests_at_2_req_s_as_at_40() -> None:
    """Against a real quota every climb ends in a probe past it and a 429, so the climb
    counted in requests sets the share of 429s. A climb of one second was two requests at
    2 req/s: against the fake service at 2/s, 39 of 99 attempts were 429s. Now the curve
    has the same shape in requests at any rate up to ``CLIMB_ANSWERS`` req/s."""

    def climb(rate: float, requests: list[int]) -> list[float]:
        """The rate, relative to the limit, ``n`` requests at the limit after a 429."""
        adaptive = AdaptiveRate(rate)
        end = _feed_successes(adaptive, 0.0, rate, 60.0)
        adaptive.on_throttle(end, end)  # 1 of the last 51 answers refused, at either rate
        limit = adaptive.rate / BETA
        relative = []
        for n in requests:
            adaptive.on_success(end + n / limit, end + n / limit - 0.02)
            relative.append(adaptive.rate / limit)
        return relative

    requests = [2, 10, 25, CLIMB_ANSWERS, 60]
    slow, fast = climb(2.0, requests), climb(float(CLIMB_ANSWERS), requests)
    assert slow == pytest.approx(fast)
    assert slow[0] < 0.95  # two requests after the 429, still well below the limit
    assert slow[3] == pytest.approx(1.0)  # back at it after CLIMB_ANSWERS requests


def test_at_a_low_rate_a_429_is_measured_over_the_last_answers_not_the_last_second() -> None:
    """At 2 req/s a second holds two answers, too few to measure: a second 429 soon after a
    first was "still far too fast" and halved the rate, however clean the minute before.
    The window reaches back over the last ``ESTIMATE_ANSWERS`` answers instead."""
    adaptive = AdaptiveRate(2.0)
    end = _feed_successes(adaptive, 0.0, 2.0, 30.0)  # 60 answers, all admitted
    assert adaptive.on_throttle(end, end) is True
    first = adaptive.rate
    assert first == pytest.approx(BETA * 2.0 * (ESTIMATE_ANSWERS - 1) / ESTIMATE_ANSWERS)
    sent = end + 1 / first  # the next request, sent at the new rate: refused too
    assert adaptive.on_throttle(sent, sent) is True
    # Two of the last 50 answers refused: 4 % below the first cut and the usual step.
    share = (ESTIMATE_ANSWERS - 2) / ESTIMATE_ANSWERS
    assert adaptive.rate == pytest.approx(BETA * first * share)


def _sporadic_run(seed: int, rate: float) -> tuple[list[float], int]:
    """1,500 requests at ``rate``, well under a quota nobody enforces, 1 % of answers a 429
    from others."""
    pacer = Pacer(PacingConfig(rate=rate), rng=random.Random(seed))
    result = simulate(pacer, quota=None, p429=0.01, seconds=1500 / rate, seed=seed)
    return [r for t, r in result.rates if t >= 1.0], result.accepted


# At 2 req/s as well: below CLIMB_ANSWERS req/s a sporadic 429 costs as many requests as at
# 40 (the climb back takes that many). Before, it cost next to nothing, but two close together
# halved the rate: a second held too few answers to tell them from a quota.
@pytest.mark.parametrize("rate", [50.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sporadic_429s_do_not_collapse_the_rate(seed: int, rate: float) -> None:
    rates, accepted = _sporadic_run(seed, rate)
    assert statistics.mean(rates) >= 0.8 * rate
    assert min(rates) >= 0.5 * rate  # a few 429s close together cost more, but never all
    assert accepted >= 0.85 * 1500


def _background_run(seed: int, rate: float, quota: float | None, p429: float) -> SimResult:
    """1,500 requests' worth of time at ``rate`` (or the quota), twice over, ``p429`` of the
    answers a 429 at random that no rate of ours causes."""
    pacer = Pacer(PacingConfig(rate=rate), rng=random.Random(seed))
    seconds = 3000 / min(rate, quota or rate)
    return simulate(pacer, quota=quota, p429=p429, seconds=seconds, seed=seed)


# Each 429 used to lower the limit to the rate of the moment; at 3 % the next came before
# the climb back was over, and the rate sank step by step: 15 req/s became 5 in a minute,
# and these runs accepted 14-67 % of the rate. The background takes some fifty answers
# below the limit to learn (longest at 2 req/s), and a run of 429s it does not explain
# still lowers the rate, hence the bounds, looser at 5 %. Of seeds 3-15, two runs at 2 req/s
# fall just short (a rate of 0.64 at 5 %, 61 % accepted at 3 %).
@pytest.mark.parametrize(("p429", "floor"), [(0.03, 0.75), (0.05, 0.65)])
@pytest.mark.parametrize("rate", [50.0, 15.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steady_random_429s_do_not_ratchet_the_rate_down(
    seed: int, rate: float, p429: float, floor: float
) -> None:
    result = _background_run(seed, rate, None, p429)
    seconds = result.rates[-1][0]
    second_half = [r for t, r in result.rates if t >= seconds / 2]
    assert statistics.mean(second_half) >= floor * rate
    assert result.accepted >= (floor - 0.15) * rate * seconds
    assert result.throttled <= 1.5 * p429 * result.sent  # the background's, give or take


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_429s_over_a_real_quota_do_not_let_the_rate_hammer_it(seed: int) -> None:
    """The background explains the random 429s only: probing past the quota adds 429s
    above it, and the rate turns back. Seeds 0-15: 3.9-9.0 % 429s in all, 3 % of them the
    background's, and 63-78 % of the quota used; before, 2.8-4.1 % and 29-70 %."""
    result = _background_run(seed, 370.0, 50.0, 0.03)
    seconds = result.rates[-1][0]
    assert result.throttled <= 0.1 * result.sent
    assert max(r for t, r in result.rates if t >= 5.0) <= 1.5 * 50.0
    assert result.accepted >= 0.6 * 50.0 * seconds


def test_a_429_the_background_explains_lowers_nothing_and_a_run_of_them_does() -> None:
    adaptive, rng = AdaptiveRate(10.0), random.Random(0)
    t, late = 0.0, []
    while t < 300.0:  # 4 % of the answers a 429 at random, at the rate of the moment
        if rng.random() < 0.04:
            adaptive.on_throttle(t + 0.02, t)
        else:
            adaptive.on_success(t + 0.02, t)
        if t >= 200.0:
            late.append(adaptive.rate)
        t += 1 / adaptive.rate
    assert adaptive.background > 0
    assert statistics.mean(late) >= 0.85 * 10.0
    rate, decreases, background = adaptive.rate, adaptive.decreases, adaptive.background
    assert adaptive.on_throttle(t + 0.02, t) is False  # one more: the background's
    assert (adaptive.rate, adaptive.decreases) == (rate, decreases)
    assert adaptive.background == background + 1
    for _ in range(10):  # a run of them is not
        t += 1 / adaptive.rate
        adaptive.on_throttle(t + 0.02, t)
    assert adaptive.decreases > decreases
    assert adaptive.rate < rate


# --- a limit the gateway states ---------------------------------------------------------------


def stating(limit: float) -> Outcome:
    """A 429 whose message states ``limit`` requests per second, as the gateway's does."""
    return Outcome(
        Kind.RETRY, status=429, error_code="APIG.0308", error_msg=throttle_message(limit)
    )


def _answered_at_the_rate(pacer: Pacer, start: float, seconds: float) -> tuple[float, list[float]]:
    """Sends from ``start`` for ``seconds``, each one interval of the pacer's rate of the
    moment after the last, all admitted and answered 20 ms later. Returns the end and the
    rate after each answer."""
    t, rates = start, []
    while t < start + seconds:
        pacer.on_outcome(DONE, t + 0.02, sent_at=t)
        rates.append(pacer.current_rate)
        t += 1.0 / pacer.current_rate
    return t, rates


def test_a_429_stating_a_limit_caps_the_rate_at_once_and_for_the_rest_of_the_run() -> None:
    pacer = _pacer(rate=50.0)
    end, _ = _answered_at_the_rate(pacer, 0.0, 1.0)
    pacer.on_outcome(stating(5), end + 0.001, sent_at=end)
    # One step to just under the stated limit, not halvings over several 429s.
    assert pacer.current_rate == pytest.approx(BETA * 5.0)
    assert pacer.stats(end).stated_limit == 5.0
    _, rates = _answered_at_the_rate(pacer, end + 0.001, 120.0)
    assert max(rates) == 5.0  # back at the limit, never past it: no probing above it
    assert rates[-1] == 5.0


def test_a_burst_of_429s_stating_the_limit_is_one_decrease() -> None:
    pacer = _pacer(rate=370.0)
    # 30 requests sent at 370/s before the first answer, all refused, all stating 50/s.
    for k in range(30):
        pacer.on_outcome(stating(50), 0.1 + k * 0.001, sent_at=k / 370.0)
    stats = pacer.stats(0.2)
    assert pacer.current_rate == pytest.approx(BETA * 50.0)
    assert (stats.decreases, stats.stale_throttles) == (1, 29)


def test_a_429_just_after_the_cut_to_a_stated_limit_takes_the_usual_step_not_half() -> None:
    """The gateway's bucket is still empty from the rate before the cut: the first send
    after it may be refused too. It used to halve the rate (15 req/s to 7 in the demo):
    with nothing measured in between, a second fresh 429 meant "still far too fast"."""
    pacer = _pacer(rate=40.0)
    pacer.on_outcome(stating(15), 0.021, sent_at=0.001)
    cut = pacer.current_rate
    assert cut == pytest.approx(BETA * 15.0)
    pacer.on_outcome(stating(15), 0.03, sent_at=0.03)  # sent after the cut: fresh
    assert pacer.current_rate == pytest.approx(BETA * cut)
    unstated = _pacer(rate=40.0)  # without a statement, it still halves
    unstated.on_outcome(THROTTLED, 0.021, sent_at=0.001)
    unstated.on_outcome(THROTTLED, 0.03, sent_at=0.03)
    assert unstated.current_rate == pytest.approx(MAX_CUT * BETA * 40.0)


@pytest.mark.parametrize(("configured", "lifted"), [(50.0, 8.0), (6.0, 6.0)])
def test_a_later_statement_replaces_the_earlier_but_never_lifts_past_the_configured_rate(
    configured: float, lifted: float
) -> None:
    pacer = _pacer(rate=configured)
    end, _ = _answered_at_the_rate(pacer, 0.0, 1.0)
    pacer.on_outcome(stating(5), end, sent_at=end)
    end, rates = _answered_at_the_rate(pacer, end, 60.0)
    assert max(rates) == 5.0
    # The gateway's policy changed: its 429s now state 8/s. Still a 429: a step down first.
    pacer.on_outcome(stating(8), end, sent_at=end)
    assert pacer.current_rate < 5.0
    assert pacer.stats(end).stated_limit == 8.0
    _, rates = _answered_at_the_rate(pacer, end, 120.0)
    assert max(rates) == lifted  # climbs past 5, up to the new ceiling and no further
    assert rates[-1] == lifted


UNSTATED = [
    None,
    "Too many requests",
    f"{REACHED}: policy user over ratelimit,limit:10",
]


@pytest.mark.parametrize("message", UNSTATED)
def test_a_429_stating_no_limit_paces_as_before_and_keeps_a_stated_ceiling(
    message: str | None,
) -> None:
    unstated = Outcome(Kind.RETRY, status=429, error_code="APIG.0308", error_msg=message)
    # As before: the same rates, answer for answer, as a 429 that says nothing at all, and
    # as one stating a limit above the configured rate (which bounds nothing).
    histories = []
    for outcome in (THROTTLED, unstated, stating(500)):
        pacer = _pacer(rate=50.0)
        end, before = _answered_at_the_rate(pacer, 0.0, 1.0)
        pacer.on_outcome(outcome, end, sent_at=end)
        _, after = _answered_at_the_rate(pacer, end, 10.0)
        histories.append(before + after)
    assert histories[0] == histories[1] == histories[2]
    assert max(histories[0][-20:]) == 50.0  # back at the configured rate
    assert _pacer(rate=50.0).stats(0.0).stated_limit is None
    # A 429 stating no limit leaves the ceiling a statement set before: for the whole run.
    pacer = _pacer(rate=50.0)
    end, _ = _answered_at_the_rate(pacer, 0.0, 1.0)
    pacer.on_outcome(stating(5), end, sent_at=end)
    end, _ = _answered_at_the_rate(pacer, end, 30.0)
    pacer.on_outcome(unstated, end, sent_at=end)
    _, rates = _answered_at_the_rate(pacer, end, 60.0)
    assert max(rates) == 5.0
    assert pacer.stats(end).stated_limit == 5.0


# --- retry budget, max attempts -------------------------------------------------------------------


def test_retry_budget_pays_until_empty_and_refills_on_success() -> None:
    budget = RetryBudget()
    assert sum(budget.withdraw(RETRY_COST) for _ in range(200)) == RETRY_BUDGET_CAPACITY // 5
    assert budget.tokens == 0
    assert budget.withdraw(RETRY_COST) is False
    for _ in range(7):
        budget.deposit()
    assert budget.withdraw(RETRY_COST) is True
    assert budget.tokens == 2
    for _ in range(1000):
        budget.deposit()
    assert budget.tokens == RETRY_BUDGET_CAPACITY


def test_pacer_gives_up_when_the_retry_budget_is_spent() -> None:
    pacer = _pacer(max_attempts=1000)
    granted = 0
    while pacer.retry_delay(UNAVAILABLE, 1) is not None:
        granted += 1
    assert granted == RETRY_BUDGET_CAPACITY // RETRY_COST
    assert pacer.stats(0.0).gave_up == 1
    # Successes refill it: five successes buy one more retry.
    for _ in range(RETRY_COST):
        pacer.on_outcome(DONE, 1.0, sent_at=0.9)
    assert pacer.retry_delay(UNAVAILABLE, 1) is not None
    assert pacer.retry_delay(UNAVAILABLE, 1) is None


def test_connection_errors_cost_twice_as_much_and_429s_nothing() -> None:
    pacer = _pacer(max_attempts=1000)
    granted = 0
    while pacer.retry_delay(CONNECT_ERROR, 1) is not None:
        granted += 1
    assert granted == RETRY_BUDGET_CAPACITY // TIMEOUT_RETRY_COST
    assert pacer.retry_delay(THROTTLED, 1) is not None  # throttling is the rate's business


def test_max_attempts_ends_retries() -> None:
    pacer = _pacer(max_attempts=3)
    assert pacer.retry_delay(UNAVAILABLE, 1) is not None
    assert pacer.retry_delay(UNAVAILABLE, 2) is not None
    assert pacer.retry_delay(UNAVAILABLE, 3) is None
    assert pacer.retry_delay(THROTTLED, 3) is None


# --- circuit breaker ------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=5.0)
    breaker.record(False, 1.0, 0.9)
    breaker.record(False, 1.1, 1.0)
    breaker.record(True, 1.2, 1.1)  # an answer resets the count
    for t in (2.0, 2.1, 2.2):
        breaker.record(False, t, t - 0.1)
    assert breaker.state(2.2) is BreakerState.OPEN
    assert not breaker.allows(3.0)
    assert breaker.wait(3.0) == pytest.approx(4.2)
    assert breaker.state(7.2) is BreakerState.HALF_OPEN
    assert breaker.allows(7.2)
    breaker.on_send(7.2)  # the probe
    assert not breaker.allows(7.3)
    breaker.record(True, 7.5, 7.2)
    assert breaker.state(7.5) is BreakerState.CLOSED
    assert breaker.opens == 1


def test_breaker_reopens_when_the_probe_fails_and_ignores_the_past() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=5.0)
    breaker.record(False, 1.0, 0.5)
    breaker.record(True, 2.0, 0.8)  # sent before it opened: says nothing about now
    assert breaker.state(2.0) is BreakerState.OPEN
    breaker.on_send(6.0)
    breaker.record(None, 6.1, 6.0)  # the probe got 429: neutral, another probe may go
    assert breaker.allows(6.1)
    breaker.on_send(6.2)
    breaker.record(False, 6.3, 6.2)
    assert breaker.state(6.3) is BreakerState.OPEN
    assert breaker.wait(6.3) == pytest.approx(5.0)
    assert breaker.opens == 2


def test_pacer_holds_every_send_during_the_cooldown_then_sends_one_probe() -> None:
    pacer = _pacer(rate=10.0, breaker_threshold=2, breaker_cooldown=5.0)
    slots = [pacer.reserve(0.0) for _ in range(3)]
    assert [pacer.wait(s, 0.0) for s in slots] == pytest.approx([0.0, 0.1, 0.2])
    pacer.on_outcome(UNAVAILABLE, 0.05, sent_at=0.0)
    pacer.on_outcome(HELD, 0.06, sent_at=0.0)  # a timeout also says the service is unwell
    assert pacer.stats(0.06).breaker is BreakerState.OPEN
    # The slots still booked move past the cooldown; workers look again every MAX_WAIT.
    assert pacer.wait(slots[1], 0.1) == MAX_WAIT
    assert pacer.wait(slots[1], 5.0) == pytest.approx(0.06)
    late = pacer.reserve(5.0)
    assert pacer.wait(slots[1], 5.06) == 0.0  # the probe
    assert pacer.wait(slots[2], 5.16) == pytest.approx(0.1)  # half-open: the probe is out
    assert pacer.wait(slots[2], 5.26) == pytest.approx(0.1)
    assert pacer.stats(5.26).holds == 2
    pacer.on_outcome(DONE, 5.3, sent_at=5.06)
    assert pacer.stats(5.3).breaker is BreakerState.CLOSED
    assert pacer.wait(slots[2], 5.3) == 0.0
    assert pacer.wait(late, 5.3) == pytest.approx(0.1)


# --- failure budget -------------------------------------------------------------------------------


def test_canary_within_the_ratio_goes_on() -> None:
    budget = FailureBudget(0.2, canary=10)
    for failed in [True, True] + [False] * 8:
        budget.record(failed)
    assert budget.reason is None


def test_canary_over_the_ratio_stops() -> None:
    budget = FailureBudget(0.2, canary=10)
    for failed in [True, True, True] + [False] * 6:
        budget.record(failed)
        assert budget.reason is None  # judged only once the first ten are in
    budget.record(False)
    assert budget.reason is not None
    assert "3 of the first 10" in budget.reason
    budget.record(False)
    assert budget.reason is not None  # it keeps saying stop


def test_canary_without_a_ratio_stops_on_any_failure() -> None:
    budget = FailureBudget(None, canary=3)
    for failed in (False, True, False):
        budget.record(failed)
    assert budget.reason is not None
    clean = FailureBudget(None, canary=3)
    for failed in (False, False, False, True, True):
        clean.record(failed)
    assert clean.reason is None  # after the canary, no ratio: no limit


def test_after_the_canary_a_sliding_window_decides() -> None:
    budget = FailureBudget(0.5, canary=4, window=6)
    for failed in (False, False, False, False):  # canary passes
        budget.record(failed)
    for failed in (True, True, False):  # 2 of 7 so far, 2 of the last 6
        budget.record(failed)
        assert budget.reason is None
    budget.record(True)  # 3 of the last 6: 50 %, not more
    assert budget.reason is None
    budget.record(True)  # 4 of the last 6
    assert budget.reason is not None
    assert "4 of the last 6" in budget.reason


def test_without_a_canary_the_budget_judges_from_twenty_outcomes_on() -> None:
    # Not from the hundredth: a run of 96 requests, every one refused, ended unjudged.
    budget = FailureBudget(0.2)
    for failed in [True] * 4 + [False] * 15:  # 4 of 19: not judged yet
        budget.record(failed)
        assert budget.reason is None
    budget.record(False)  # 4 of 20: 20 %, not more
    assert budget.reason is None
    budget.record(True)  # 5 of 21
    assert budget.reason is not None
    assert "5 of the last 21" in budget.reason


def test_a_window_smaller_than_twenty_is_judged_once_full() -> None:
    budget = FailureBudget(0.5, window=4)
    for _ in range(3):
        budget.record(True)
    assert budget.reason is None
    budget.record(True)
    assert budget.reason is not None


def test_pacer_counts_held_and_given_up_units_as_failures() -> None:
    pacer = _pacer(max_failure_ratio=0.4, canary=5, max_attempts=2)
    pacer.on_outcome(DONE, 1.0, sent_at=0.9)
    pacer.on_outcome(HELD, 1.0, sent_at=0.9)
    pacer.on_outcome(REFUSED, 1.0, sent_at=0.9)
    pacer.on_outcome(DONE, 1.0, sent_at=0.9)
    assert pacer.stop_reason() is None
    pacer.on_outcome(UNAVAILABLE, 1.0, sent_at=0.9)  # not final yet: it will be retried
    assert pacer.stop_reason() is None
    assert pacer.retry_delay(UNAVAILABLE, 2) is None  # max attempts: given up, a failure
    reason = pacer.stop_reason()
    assert reason is not None
    # Held counts too, and the reason says so: a run stopped for "21 of the last 100
    # requests failed" showed 0 failed and 1,190 units held.
    assert "3 of the first 5 requests failed or were held" in reason
    stats = pacer.stats(1.0)
    assert (stats.final_ok, stats.final_failed) == (2, 3)


# --- the pacer's schedule -------------------------------------------------------------------------


def test_pacer_hands_out_slots_at_the_rate_and_caps_waits() -> None:
    pacer = _pacer(rate=2.0)
    slots = [pacer.reserve(0.0) for _ in range(3)]
    assert [s.at for s in slots] == pytest.approx([0.0, 0.5, 1.0])
    assert pacer.wait(slots[0], 0.0) == 0.0
    assert pacer.send_wait(slots[0], 0.0) == 0.0
    with pytest.raises(ValueError, match="used or cancelled"):
        pacer.wait(slots[0], 0.0)  # a slot sends once
    assert pacer.wait(slots[1], 0.0) == MAX_WAIT
    assert pacer.wait(slots[1], 0.4) == pytest.approx(0.1)
    assert pacer.wait(slots[1], 0.5) == 0.0
    assert pacer.send_wait(slots[1], 0.5) == 0.0
    assert pacer.stats(0.5).sends == 2


def test_pacer_gate_keeps_sends_one_interval_apart_when_a_worker_is_late() -> None:
    pacer = _pacer(rate=10.0)
    first, second = pacer.reserve(0.0), pacer.reserve(0.0)
    assert pacer.wait(first, 0.08) == 0.0  # its worker woke 80 ms late
    assert pacer.send_wait(first, 0.08) == 0.0
    # So the next, admitted on time, waits for its turn at the gate: one interval after
    # the first send, less the lateness forgiven.
    assert pacer.wait(second, 0.1) == 0.0
    assert pacer.send_wait(second, 0.1) == pytest.approx(0.08 - LATE_FORGIVEN)
    assert pacer.send_wait(second, 0.18 - LATE_FORGIVEN) == 0.0


def test_pacer_forgives_a_little_lateness_so_the_rate_holds() -> None:
    pacer = _pacer(rate=50.0)
    slots = [pacer.reserve(0.0) for _ in range(100)]
    # Every worker wakes 1.5 ms after its slot, as timers do: each sends at once, and the
    # hundred sends take two seconds, not 2.15.
    sent = []
    for slot in slots:
        now = slot.at + 0.0015
        assert pacer.wait(slot, now) == 0.0
        assert pacer.send_wait(slot, now) == 0.0
        sent.append(now)
    assert sent[-1] == pytest.approx(99 / 50 + 0.0015)


def test_pacer_replans_booked_slots_when_a_429_lowers_the_rate() -> None:
    pacer = _pacer(rate=100.0)
    slots = [pacer.reserve(0.0) for _ in range(50)]
    assert slots[-1].at == pytest.approx(0.49)
    assert pacer.wait(slots[0], 0.0) == 0.0
    assert pacer.send_wait(slots[0], 0.0) == 0.0
    pacer.on_outcome(THROTTLED, 0.005, sent_at=0.0)
    rate = pacer.current_rate
    assert rate == pytest.approx(BETA * 100.0)
    # Every slot not yet sent is spaced again at the new rate from one interval after the
    # last send, and later bookings follow them.
    assert [s.at for s in slots[1:4]] == pytest.approx([1 / rate, 2 / rate, 3 / rate])
    assert slots[-1].at == pytest.approx(49 / rate)
    assert pacer.reserve(0.01).at == pytest.approx(50 / rate)


def test_pacer_cancel_gives_the_slot_back() -> None:
    pacer = _pacer(rate=10.0)
    slots = [pacer.reserve(0.0) for _ in range(3)]
    pacer.cancel(slots[1])
    pacer.wait(slots[0], 0.0)
    pacer.send_wait(slots[0], 0.0)
    pacer.on_outcome(THROTTLED, 0.01, sent_at=0.0)  # re-planned without the cancelled one
    assert slots[2].at == pytest.approx(1 / pacer.current_rate)
    with pytest.raises(ValueError, match="used or cancelled"):
        pacer.wait(slots[1], 0.0)


def test_pacer_without_adaptive_keeps_its_rate() -> None:
    pacer = _pacer(rate=10.0, adaptive=False)
    pacer.on_outcome(THROTTLED, 1.0, sent_at=0.9)
    assert pacer.current_rate == 10.0
    assert pacer.stats(1.0).throttled == 1


def test_sent_at_defaults_to_now_minus_elapsed() -> None:
    pacer = _pacer(rate=100.0)
    for k in range(20):  # a second of successes
        pacer.on_outcome(Outcome(Kind.DONE, status=200, elapsed=0.02), 0.05 * k + 0.02)
    pacer.on_outcome(Outcome(Kind.RETRY, status=429, elapsed=0.5), 1.0)  # sent at 0.5
    assert pacer.current_rate < 100.0
    stale = Outcome(Kind.RETRY, status=429, elapsed=0.6)  # sent at 0.45, before the decrease
    pacer.on_outcome(stale, 1.05)
    assert pacer.stats(1.05).stale_throttles == 1


def test_fatal_outcomes_are_the_engines_business() -> None:
    pacer = _pacer()
    pacer.on_outcome(Outcome(Kind.FATAL, status=401), 1.0)
    assert pacer.stats(1.0).outcomes == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rate": 0.0}, "rate = 0.0"),
        ({"burst": 0}, "burst = 0"),
        ({"max_attempts": 0}, "max_attempts = 0"),
        ({"backoff_base": 2.0, "backoff_cap": 1.0}, "backoff_base"),
        ({"max_failure_ratio": 1.5}, "max_failure_ratio = 1.5"),
        ({"canary": -1}, "canary = -1"),
        ({"breaker_threshold": 0}, "breaker_threshold = 0"),
        ({"breaker_cooldown": -1.0}, "breaker_cooldown = -1.0"),
    ],
)
def test_config_names_what_is_wrong(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        PacingConfig(**settings)


# --- the engine against a rate-limited gateway, simulated -----------------------------------------


class _Bucket:
    """The gateway's throttle: a token bucket, ``rate`` per second, ``burst`` deep."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), 0.0

    def take(self, t: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
        self.last = t
        if self.tokens >= 1.0 - 1e-9:  # float sums of intervals are not exact
            self.tokens -= 1.0
            return True
        return False


@dataclass
class SimResult:
    accepted: int = 0
    throttled: int = 0
    sent: int = 0
    rates: list[tuple[float, float]] = field(default_factory=list)  # every 0.25 s
    admitted_at: list[float] = field(default_factory=list)
    throttled_at: list[float] = field(default_factory=list)  # when each 429 was answered
    waiting: list[int] = field(default_factory=list)  # admitted, not yet sent: every 0.25 s


def stalls(every: float, length: float, commit: float = 0.003) -> Callable[[float], float]:
    """A disk whose commits take ``commit``, except that every ``every`` seconds one stalls
    for ``length``: an intent written during a stall is durable only when it ends."""

    def durable_after(t: float) -> float:
        into = t % every
        return (length - into if into < length else 0.0) + commit

    return durable_after


def simulate(
    pacer: Pacer,
    *,
    quota: float | None = 50.0,
    burst: int = 1,
    latency: float = 0.02,
    latency_429: float = 0.0,
    workers: int = 64,
    seconds: float = 20.0,
    p429: float = 0.0,
    stated: float | None = None,
    jitter: float = 0.0,
    seed: int = 0,
    commit: Callable[[float], float] | None = None,
) -> SimResult:
    """Workers running the engine's loop against a gateway, on a simulated clock.

    Each worker sends chunk after chunk: reserve, wait, (commit,) wait its turn, send; the
    gateway admits by its bucket (or answers 429 at random with ``p429``), with
    ``Retry-After: 1`` like the fake server; admitted requests are answered after
    ``latency``, 429s after ``latency_429``; a 429's message states the limit ``stated``
    (req/s) as the gateway's does, or none. With ``jitter``, every wake-up is up to that
    late and every request takes up to that long to reach the gateway, as timers and
    networks do. ``commit(t)``: how long an intent written at ``t`` takes to be durable.
    """
    rng = random.Random(seed)
    bucket = _Bucket(quota, burst) if quota is not None else None
    message = throttle_message(stated) if stated is not None else None
    result = SimResult()
    clock = [0.0]
    waiting = [0]

    def worker() -> Generator[float, None, None]:
        while True:
            attempt = 1
            while True:
                slot = pacer.reserve(clock[0])
                while (wait := pacer.wait(slot, clock[0])) > 0:
                    yield wait
                waiting[0] += 1
                if commit is not None:  # the intent's commit, before the request may leave
                    yield commit(clock[0])
                while (turn := pacer.send_wait(slot, clock[0])) > 0:
                    yield turn
                waiting[0] -= 1
                sent = clock[0]
                if sent >= seconds:
                    return
                result.sent += 1
                arrival = sent + rng.uniform(0.0, jitter)
                if (bucket is None or bucket.take(arrival)) and rng.random() >= p429:
                    yield latency
                    pacer.on_outcome(DONE, clock[0], sent_at=sent)
                    result.accepted += 1
                    result.admitted_at.append(arrival)
                    break
                yield latency_429
                outcome = Outcome(Kind.RETRY, status=429, error_msg=message, retry_after=1.0)
                pacer.on_outcome(outcome, clock[0], sent_at=sent)
                result.throttled += 1
                result.throttled_at.append(clock[0])
                delay = pacer.retry_delay(outcome, attempt)
                assert delay is not None
                attempt += 1
                yield delay

    def late() -> float:
        return rng.uniform(0.0, jitter)

    def sample(t: float) -> None:
        result.rates.append((t, pacer.current_rate))
        result.waiting.append(waiting[0])

    _run(worker, workers, clock, late, sample)
    return result


def _run(
    worker: Callable[[], Generator[float, None, None]],
    workers: int,
    clock: list[float],
    late: Callable[[], float],
    sample: Callable[[float], None],
) -> None:
    """A discrete-event loop: each worker yields how long it sleeps (and wakes ``late()``)."""
    queue: list[tuple[float, int, Generator[float, None, None]]] = []
    for n in range(workers):
        heapq.heappush(queue, (0.0, n, worker()))
    seq, next_sample = workers, 0.0
    while queue:
        t, _, task = heapq.heappop(queue)
        clock[0] = t
        while t >= next_sample:
            sample(next_sample)
            next_sample += 0.25
        try:
            delay = next(task)
        except StopIteration:
            continue
        heapq.heappush(queue, (t + delay + late(), seq, task))
        seq += 1


GATEWAYS = [
    pytest.param(1, 0.0, 0.0, id="bucket1-429-at-once"),  # like the fake server
    pytest.param(1, 0.02, 0.0, id="bucket1-429-after-latency"),  # like a real gateway
    pytest.param(5, 0.0, 0.0, id="bucket5-429-at-once"),
    pytest.param(5, 0.0, 0.002, id="bucket5-jitter-2ms"),
    pytest.param(50, 0.02, 0.0, id="bucket50-429-after-latency"),  # "limit:50,time:1 second"
]


@pytest.mark.parametrize(("burst", "latency_429", "jitter"), GATEWAYS)
def test_rate_set_right_uses_the_quota_with_almost_no_429s(
    burst: int, latency_429: float, jitter: float
) -> None:
    pacer = Pacer(PacingConfig(rate=50.0), rng=random.Random(1))
    result = simulate(pacer, burst=burst, latency_429=latency_429, jitter=jitter)
    assert result.accepted >= 0.97 * 50.0 * 20.0
    assert result.throttled <= 0.01 * result.sent


@pytest.mark.parametrize(("burst", "latency_429", "jitter"), GATEWAYS)
def test_rate_far_too_high_converges_under_the_quota_with_few_429s(
    burst: int, latency_429: float, jitter: float
) -> None:
    pacer = Pacer(PacingConfig(rate=370.0), rng=random.Random(1))
    result = simulate(pacer, burst=burst, latency_429=latency_429, jitter=jitter)
    assert result.accepted >= 0.90 * 50.0 * 20.0
    assert result.throttled <= 0.05 * result.sent
    # Near the quota within a second, then hovering there: more than 93 % of it used.
    assert min(t for t, rate in result.rates if rate <= 55.0) <= 1.0
    assert max(rate for t, rate in result.rates if t >= 2.0) <= 1.5 * 50.0
    assert sum(t >= 2.0 for t in result.admitted_at) >= 0.93 * 50.0 * 18.0


LOW_QUOTA_GATEWAYS = [
    pytest.param(1, 0.0, 0.0, id="bucket1-429-at-once"),  # like the fake server
    pytest.param(1, 0.02, 0.0, id="bucket1-429-after-latency"),  # like a real gateway
    pytest.param(2, 0.0, 0.002, id="bucket2-jitter-2ms"),
]


@pytest.mark.parametrize(("burst", "latency_429", "jitter"), LOW_QUOTA_GATEWAYS)
@pytest.mark.parametrize("quota", [1.0, 2.0, 5.0])
def test_rate_five_times_too_high_converges_under_a_low_quota(
    quota: float, burst: int, latency_429: float, jitter: float
) -> None:
    """Against the fake service at 2/s with the default rate of 10, 39 of 99 attempts were
    429s and 1.2/s got through; at 5/s with a rate of 20, 40 of 180 were 429s. A second
    held too few answers to measure, and every climb back took a second (two requests at
    2/s) and ended in a 429. The goals of a rate set far too high hold at a few requests a
    second too, over 200 requests: the 429s on the way down, four or so, are a fixed cost
    that a run of 60 requests feels more."""
    seconds = 200 / quota
    pacer = Pacer(PacingConfig(rate=5 * quota), rng=random.Random(1))
    result = simulate(
        pacer, quota=quota, burst=burst, latency_429=latency_429, jitter=jitter,
        workers=16, seconds=seconds,
    )  # fmt: skip
    assert result.accepted >= 0.90 * quota * seconds
    assert result.throttled <= 0.05 * result.sent


@pytest.mark.parametrize(("burst", "latency_429", "jitter"), GATEWAYS)
def test_rate_far_too_high_against_a_stated_limit_drops_under_it_at_the_first_429(
    burst: int, latency_429: float, jitter: float
) -> None:
    """The gateway at 50/s states "limit:50,time:1 second" in its 429s; the rate is 370.
    Before, the rate came down by halves, a 429 each, and climbed past 50 again on its
    CUBIC curve, each probe a 429. Now the first 429 puts it just under 50, and it never
    goes past 50 again: fewer 429s (13 against 17 with a bucket of 1 answering at once, 1
    against 18 with a bucket of 5), the goals of a rate set far too high met as before."""
    runs = {}
    for stated in (None, 50.0):
        pacer = Pacer(PacingConfig(rate=370.0), rng=random.Random(1))
        runs[stated] = simulate(
            pacer, burst=burst, latency_429=latency_429, jitter=jitter, stated=stated
        )
    result = runs[50.0]
    first = result.throttled_at[0]
    assert max(rate for t, rate in result.rates if t > first) <= 50.0
    assert result.throttled < runs[None].throttled
    assert result.accepted >= 0.90 * 50.0 * 20.0
    assert result.throttled <= 0.05 * result.sent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sporadic_429s_stating_a_limit_below_the_rate_bound_it_but_do_not_collapse_it(
    seed: int,
) -> None:
    """Other tools of the same user share its quota of 50/s and take some of it: 1 % of our
    requests are refused at random, each 429 stating the user's limit. The rate set to 370
    comes down to 50 and stays near it: no quota is enforced against us below it."""
    pacer = Pacer(PacingConfig(rate=370.0), rng=random.Random(seed))
    result = simulate(pacer, quota=None, p429=0.01, stated=50.0, seconds=30.0, seed=seed)
    first = result.throttled_at[0]
    rates = [rate for t, rate in result.rates if t > first]
    assert max(rates) <= 50.0
    assert statistics.mean(rates) >= 0.8 * 50.0
    assert min(rates) >= 0.5 * 50.0


def test_a_stalled_commit_releases_its_intents_at_the_rate_not_in_one_burst() -> None:
    """A commit that stalls holds every intent admitted meanwhile and then makes them all
    durable at once. Sent as they come, those requests reach the gateway together: against
    the fake service (50/s, a burst of 5) 8 and 10 requests went out within 2 ms after
    fsyncs of 150-190 ms, and 3 and 5 of them were answered 429. The gate is asked right
    before each send, so they go one interval apart, while admissions go on at the
    rate."""
    pacer = Pacer(PacingConfig(rate=50.0), rng=random.Random(1))
    result = simulate(pacer, burst=5, commit=stalls(every=2.0, length=0.19))
    assert result.throttled == 0
    assert result.accepted >= 0.97 * 50.0 * 20.0
    # A stall of 0.19 s at 50/s holds about 10 intents: so many wait for their turn from
    # then on, carrying the sends through the next stall, and never more.
    assert max(result.waiting) <= 11


def test_reads_do_not_spend_the_canary() -> None:
    """Instance-list reads (final=False) pace like any request but leave the failure budget
    to the reruns: a canary of 3 is not used up by a selection's reads."""
    pacer = Pacer(PacingConfig(rate=100.0, canary=3))
    refused = Outcome(Kind.FAILED, status=400, error_code="DLF.0100")
    for i in range(10):
        pacer.on_outcome(refused, float(i), float(i), final=False)
    assert pacer.stop_reason() is None
    for i in range(3):
        pacer.on_outcome(refused, 20.0 + i, 20.0 + i)
    assert pacer.stop_reason() is not None


def test_answers_that_left_the_window_never_count_though_dropped_in_batches() -> None:
    from bulkrerun.pacing import ESTIMATE_WINDOW, _AnswerMeter

    meter = _AnswerMeter()
    # 300 throttled answers long ago (fewer than one trim batch: still in the list), some
    # arriving out of send order, then 20 admitted ones within the window.
    for i in range(300):
        meter.add(float(i % 7 if i % 2 else i) / 100, False, 5.0)
    now = 10.0
    for i in range(20):
        meter.add(now - 0.5 + i * 0.01 - (0.005 if i % 3 == 0 else 0.0), True, now)
    window = now - ESTIMATE_WINDOW
    assert meter.admitted_share(window) == 1.0
    rate = meter.admitted_rate(window)
    assert rate is not None and 90 < rate < 115
    answers = meter._answers
    assert answers == sorted(answers)  # kept in send order, out-of-order arrivals included


@pytest.mark.parametrize("seed", range(3))
def test_a_burst_the_gateway_does_not_keep_is_given_up_at_the_first_decrease(seed: int) -> None:
    """--burst 20 against a gateway that keeps no burst (the fake's default): most of each
    burst drew 429s, each lowered the rate again, and 10 req/s sank to 1-4 for minutes. From
    the first decrease, sends go one interval apart."""
    pacer = Pacer(PacingConfig(rate=10.0, burst=20), rng=random.Random(seed))
    r = simulate(
        pacer, quota=10.0, burst=1, latency=0.05, workers=16, seconds=60.0, stated=10.0,
        seed=seed, jitter=0.003,
    )  # fmt: skip
    assert r.accepted / 60.0 >= 8.5
    assert r.throttled <= 0.06 * r.sent


def test_a_canary_of_one_request_names_it_in_the_singular() -> None:
    budget = FailureBudget(0.5, canary=1)
    budget.record(True)
    assert budget.reason is not None
    assert budget.reason.startswith("canary: the first request failed or was held (100%, more than")
