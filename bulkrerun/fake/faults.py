"""Faults the fake service injects: a server-side rate limit and seeded random refusals.

Both are pure decisions: the token bucket is arithmetic on the ``now`` it is given (the
server's clock, a :class:`~bulkrerun.clock.FakeClock` in tests, so a rate-limit test asserts
exact outcomes), and the dice are seeded, so a seeded run refuses the same requests in the same
order every time.

Each fault has its own die: ``random.Random(f"{seed}/{name}")`` with ``name`` one of ``p429``,
``p5xx``, ``drop_after_accept`` and ``timeout_after_accept`` (a ``str`` seed is hashed with
SHA-512, the same on every run and platform; a ``None`` seed gives unseeded dice). A die is
rolled only when its fault is switched on, so the n-th roll of one die is the same whatever
the others are set to: turning one fault on does not change the sequence another one sees.
Which request gets the n-th roll still depends on the faults before it, since each die is
rolled only for the requests that reach it (see :class:`Dice`).
"""

from __future__ import annotations

import math
import random

__all__ = ["Dice", "TokenBucket", "throttle_message"]

# Two monotonic readings far from zero lose a few ulps when subtracted: a request that
# arrives exactly one interval after the previous one must still find its token.
_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    The bucket starts full. Each request takes one token; a request that finds less than one
    is refused and takes nothing (the gateway counts what it lets through, not what it
    refuses, so a client hammering a throttled API still gets through at the limit rate).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError(f"rate = {rate}: must be more than 0 per second")
        if burst < 1:
            raise ValueError(f"burst = {burst}: must be 1 or more")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Take a token at time ``now`` (seconds, monotonic); ``False`` if there is none."""
        if self._last is not None:
            # Refill for the time elapsed since the last request, capped at the burst size.
            elapsed = max(0.0, now - self._last)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._last = now
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a token is back, at least 1 (``Retry-After`` is in seconds)."""
        missing = max(0.0, 1.0 - self._tokens)
        return max(1, math.ceil(missing / self.rate))


def throttle_message(limit: float) -> str:
    """The gateway's 429 message, with ``limit`` requests per second."""
    shown = str(int(limit)) if float(limit).is_integer() else f"{limit:g}"
    return (
        "The throttling threshold has been reached: "
        f"policy user over ratelimit,limit:{shown},time:1 second"
    )


class Dice:
    """Seeded random faults: 429, 5xx and dropping the connection after acceptance.

    Each probability is a share of the requests its die is rolled for, not of all requests:

    - ``p429``: of the requests to either API that passed authentication and the rate limit;
    - ``p5xx``: of those that p429 then did not throttle;
    - ``p_drop``: of the reruns accepted (an instance-list answer is never dropped);
    - ``p_timeout``: of the reruns accepted and not dropped (answered 504 instead of 200).

    So, without a rate limit, ``p429 = p5xx = 0.1`` answers about 10 % of the authenticated
    requests 429 and 9 % (0.9 x 0.1) 503.
    """

    __slots__ = (
        "_drop",
        "_late",
        "_throttle",
        "_unavailable",
        "p5xx",
        "p429",
        "p_drop",
        "p_timeout",
    )

    def __init__(
        self, seed: int | None, p429: float, p5xx: float, p_drop: float, p_timeout: float = 0.0
    ) -> None:
        for name, p in (
            ("p429", p429),
            ("p5xx", p5xx),
            ("drop_after_accept", p_drop),
            ("timeout_after_accept", p_timeout),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} = {p}: must be a probability, 0..1")
        self._throttle = _die(seed, "p429")
        self._unavailable = _die(seed, "p5xx")
        self._drop = _die(seed, "drop_after_accept")
        self._late = _die(seed, "timeout_after_accept")
        self.p429 = p429
        self.p5xx = p5xx
        self.p_drop = p_drop
        self.p_timeout = p_timeout

    def throttle(self) -> bool:
        return self.p429 > 0.0 and self._throttle.random() < self.p429

    def unavailable(self) -> bool:
        return self.p5xx > 0.0 and self._unavailable.random() < self.p5xx

    def drop(self) -> bool:
        return self.p_drop > 0.0 and self._drop.random() < self.p_drop

    def timeout(self) -> bool:
        return self.p_timeout > 0.0 and self._late.random() < self.p_timeout


def _die(seed: int | None, name: str) -> random.Random:
    """The die of one fault: its own stream, derived from the seed and the fault's name."""
    return random.Random(None if seed is None else f"{seed}/{name}")
