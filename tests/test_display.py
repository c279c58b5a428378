"""The run's progress display: what it shows, and how often it redraws its numbers."""

from __future__ import annotations

import io
import itertools

import anyio
import anyio.lowlevel
import pytest
from rich.console import Console

import bulkrerun.display as display_module
from bulkrerun.clock import FakeClock
from bulkrerun.display import LIVE_EVERY, PLAIN_EVERY, RunDisplay
from bulkrerun.engine import RunResult
from bulkrerun.events import Stopping

pytestmark = pytest.mark.anyio


async def settle(counts: RunResult, n: int) -> None:
    """What the engine does to its result as chunks settle, one per step of the event loop
    (as fast as it goes); one in a hundred failed."""
    for i in range(n):
        await anyio.lowlevel.checkpoint()
        if i % 100 == 0:
            counts.failed += 1
        else:
            counts.done += 1


async def test_on_a_terminal_the_bar_follows_the_counts_every_live_interval_and_ends_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "monotonic", clock.now)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    display = RunDisplay(console, 1000)
    updates: list[tuple[float, int]] = []
    real_update = display._progress.update

    def update(task: object, **fields: object) -> None:
        updates.append((clock.now(), int(fields["completed"])))  # type: ignore[call-overload]
        real_update(task, **fields)  # type: ignore[arg-type]

    monkeypatch.setattr(display._progress, "update", update)
    counts = RunResult()
    start = clock.now()
    with display:
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.follow, counts, clock)
            await settle(counts, 600)
            tg.cancel_scope.cancel()
    times = [t for t, _ in updates]
    shown = [n for _, n in updates]
    assert updates[0] == (start, 0)  # shown at once
    # Every redraw while following came LIVE_EVERY after the one before: however fast the
    # chunks settle, the bar is updated at most once per interval.
    following = times[:-1]  # the last one is the exit's
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(following)]
    assert gaps == [LIVE_EVERY] * (len(following) - 1)
    assert clock.sleeps == [LIVE_EVERY] * len(following)
    assert shown == sorted(shown) and shown[-1] == 600  # the bar ends on the exact count
    task = display._progress.tasks[0]
    assert task.completed == 600
    assert (task.fields["done"], task.fields["failed"]) == (594, 6)


async def test_off_a_terminal_a_plain_line_every_plain_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "monotonic", clock.now)
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 50)
    counts = RunResult()
    with display:
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.follow, counts, clock)
            await settle(counts, 50)
            tg.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    # A line after each PLAIN_EVERY of the clock (the last sleep was cut short).
    assert clock.sleeps == [PLAIN_EVERY] * (len(lines) + 1)
    assert lines[0] == "progress: 1/50 units, 0 done, 1 failed, 0 held, 0.2/s"
    assert lines[-1] == (
        f"progress: {len(lines)}/50 units, {len(lines) - 1} done, 1 failed, 0 held, 0.2/s"
    )


async def test_units_a_stop_left_unsent_are_counted_where_they_are_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After a stop, its units not yet sent count in the progress (104 of 134 settled): a
    # line "104/134 units, 0 done, 0 failed, 20 held" did not add up without them.
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "monotonic", clock.now)
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 134)
    counts = RunResult()
    counts.held, counts.pending = 20, 84
    with display:
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.follow, counts, clock)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()  # a line, one PLAIN_EVERY of the clock on
            tg.cancel_scope.cancel()
    assert (
        out.getvalue()
        .splitlines()[0]
        .startswith("progress: 104/134 units, 0 done, 0 failed, 20 held, 84 not yet sent, ")
    )
    live = RunDisplay(Console(file=io.StringIO(), force_terminal=True, width=200), 134)
    with live:
        live.counts = counts
        live._refresh()
        assert live._progress.tasks[0].fields["unsent"] == ", 84 not yet sent"
        # Of those, 4 held units whose resend was refused (--resend-held) stay held: status
        # counts them so, and the resume does not send them.
        counts.held_again = 4
        live._refresh()
        fields = live._progress.tasks[0].fields
        assert (fields["held"], fields["unsent"]) == (24, ", 80 not yet sent")
    counts.pending = counts.held_again = 0
    assert live.unsent() == ""


async def test_disabled_it_draws_nothing_but_stop_notices() -> None:
    clock = FakeClock()
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=True, width=120), 10, enabled=False)
    counts = RunResult()
    with display:
        await display.follow(counts, clock)  # returns at once: nothing to follow
        counts.done = 10
        display(Stopping("SIGINT: finishing requests in flight"))
    assert clock.sleeps == []
    assert "stopping: SIGINT: finishing requests in flight" in out.getvalue()
    assert display.settled == 10


def test_pacing_at_work_is_shown_and_a_spell_of_failing_is_told_once_with_its_times() -> None:
    from bulkrerun.outcome import DONE, Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    out = io.StringIO()
    pacer = Pacer(PacingConfig(rate=50.0, breaker_threshold=5, breaker_cooldown=5.0))
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 10, pacer=pacer)
    wall0 = 1_732_600_000.0 - 1000.0  # 2024-11-26T05:46:40Z at now = 1000.0
    assert display.pacing(1000.0, wall0 + 1000.0) == ""  # nothing to say while pacing is idle
    pacer.on_outcome(Outcome(Kind.RETRY, status=429, reason="429 throttled"), 1000.1, 1000.0)
    assert display.pacing(1000.2, wall0 + 1000.2).startswith("1 throttled (429), sending at ")
    failing = Outcome(Kind.RETRY, status=503, reason="503")
    for i in range(5):  # the breaker's threshold of failures in a row opens it at 1005.0
        pacer.on_outcome(failing, 1001.0 + i, 1000.5 + i)
    assert display.pacing(1006.0, wall0 + 1006.0) == (
        "paused 1s: the service is failing (circuit breaker open)"
    )
    # Each failed probe opens the breaker again: the spell goes on, and is not told again.
    for probe in (1010.0, 1015.5, 1021.0, 1026.5):
        pacer.on_outcome(failing, probe + 0.1, probe)
        assert display.pacing(probe + 0.2, wall0 + probe + 0.2).startswith("paused ")
    assert display.pacing(1130.0, wall0 + 1130.0).startswith("paused 2m05s: ")
    told = out.getvalue().splitlines()
    assert told == [
        "the service is failing since 05:46:45 UTC: sending paused; one request probes it "
        "every few seconds"
    ]
    pacer.on_outcome(DONE, 1132.1, 1132.0)  # a probe answered: the spell is over
    assert display.pacing(1132.2, wall0 + 1132.2).startswith("1 throttled (429)")
    display.pacing(1133.0, wall0 + 1133.0)
    assert out.getvalue().splitlines()[1:] == [
        "the service answers again after 2m07s: sending resumed"
    ]
    for i in range(5):  # a second spell is a new one: told again
        pacer.on_outcome(failing, 1141.0 + i, 1140.5 + i)
    display.pacing(1146.0, wall0 + 1146.0)
    assert out.getvalue().splitlines()[2].startswith("the service is failing since 05:49:05 UTC")


def test_a_spell_of_failing_told_after_a_stop_does_not_say_that_probes_go_on() -> None:
    # A run stopped on held answers told its spell of failing only at its end, as "sending
    # paused; one request probes it every few seconds", under "stopping: ...": nothing was
    # sent after the stop, nor probed.
    from bulkrerun.outcome import Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    out = io.StringIO()
    pacer = Pacer(PacingConfig(rate=50.0, breaker_threshold=5, breaker_cooldown=5.0))
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 10, pacer=pacer)
    wall0 = 1_732_600_000.0 - 1000.0  # 2024-11-26T05:46:40Z at now = 1000.0
    failing = Outcome(Kind.RETRY, status=503, reason="503")
    for i in range(5):
        pacer.on_outcome(failing, 1001.0 + i, 1000.5 + i)
    display(Stopping("the service does not answer"))
    display.pacing(1006.0, wall0 + 1006.0)
    assert out.getvalue().splitlines() == [
        "stopping: the service does not answer",
        "the service is failing since 05:46:45 UTC",
    ]


def test_a_spell_of_failing_over_between_two_looks_is_still_told_both_ways() -> None:
    from bulkrerun.outcome import DONE, Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    out = io.StringIO()
    pacer = Pacer(PacingConfig(rate=50.0, breaker_threshold=2, breaker_cooldown=1.0))
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 10, pacer=pacer)
    failing = Outcome(Kind.RETRY, status=502, reason="502")
    pacer.on_outcome(failing, 10.1, 10.0)
    pacer.on_outcome(failing, 10.2, 10.1)  # opens
    pacer.on_outcome(DONE, 11.5, 11.4)  # the probe answered: closed again
    assert display.pacing(12.0, 5012.0) == ""  # the plain line's look, 5 s apart
    assert out.getvalue().splitlines() == [
        "the service is failing since 01:23:30 UTC: sending paused; one request probes it "
        "every few seconds",
        "the service answers again after 1s: sending resumed",  # 10.2 to 11.5
    ]
    # A spell over, and another begun, between two looks: each told, in order.
    pacer.on_outcome(failing, 12.1, 12.0)
    pacer.on_outcome(failing, 12.2, 12.1)  # opens
    pacer.on_outcome(DONE, 14.0, 13.9)  # 1.8 s
    pacer.on_outcome(failing, 15.1, 15.0)
    pacer.on_outcome(failing, 15.2, 15.1)  # opens again
    assert display.pacing(17.0, 5017.0).startswith("paused 2s: ")
    assert out.getvalue().splitlines()[2:] == [
        "the service is failing since 01:23:32 UTC: sending paused; one request probes it "
        "every few seconds",
        "the service answers again after 2s: sending resumed",
        "the service is failing since 01:23:35 UTC: sending paused; one request probes it "
        "every few seconds",
    ]


async def test_a_spell_of_failing_over_after_the_last_look_is_told_at_the_end() -> None:
    from bulkrerun.outcome import DONE, Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    clock, out = FakeClock(), io.StringIO()
    pacer = Pacer(PacingConfig(rate=50.0, breaker_threshold=1, breaker_cooldown=1.0))
    display = RunDisplay(Console(file=out, force_terminal=False, width=200), 1, pacer=pacer)
    with display:
        async with anyio.create_task_group() as tg:
            tg.start_soon(display.follow, RunResult(), clock)
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        t = clock.now()
        pacer.on_outcome(Outcome(Kind.RETRY, status=503, reason="503"), t + 0.5, t + 0.4)
        pacer.on_outcome(DONE, t + 2.0, t + 1.9)
        clock.advance(3.5)  # the run ends before the next plain line
    told = out.getvalue().splitlines()
    assert told[0].startswith("the service is failing since ")
    assert told[1] == "the service answers again after 2s: sending resumed"  # 1.5 s, not 3.5


def test_sporadic_429s_that_kept_the_rate_are_counted_apart() -> None:
    import random
    import re

    from bulkrerun.outcome import DONE, Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    pacer, rng = Pacer(PacingConfig(rate=10.0)), random.Random(0)
    display = RunDisplay(Console(file=io.StringIO(), width=200), 10, pacer=pacer)
    throttled = Outcome(Kind.RETRY, status=429, reason="429 throttled")
    t = 0.0
    while t < 300.0:  # 4 % of the answers a 429 at random, whatever the rate
        pacer.on_outcome(throttled if rng.random() < 0.04 else DONE, t + 0.02, t)
        t += 1 / pacer.current_rate
    stats = pacer.stats(t)
    assert 0 < stats.background_throttles < stats.throttled
    line = display.pacing(t, t)
    assert re.fullmatch(
        rf"{stats.throttled} throttled \(429; {stats.background_throttles} sporadic, rate kept\), "
        r"sending at \d+\.\d requests/s",
        line,
    ), line


def test_the_limit_the_gateway_stated_is_shown_with_the_rate() -> None:
    from bulkrerun.fake.faults import throttle_message
    from bulkrerun.outcome import Kind, Outcome
    from bulkrerun.pacing import BETA, Pacer, PacingConfig

    pacer = Pacer(PacingConfig(rate=50.0))
    display = RunDisplay(Console(file=io.StringIO(), width=200), 10, pacer=pacer)
    stating = Outcome(Kind.RETRY, status=429, error_msg=throttle_message(5))
    pacer.on_outcome(stating, 0.1, 0.0)
    assert display.pacing(0.2, 0.2) == (
        f"1 throttled (429), sending at {BETA * 5:.1f} requests/s (gateway limit 5/s)"
    )
    per_minute = "The throttling threshold has been reached: policy user over ratelimit,"
    per_minute += "limit:100,time:1 minute"
    pacer.on_outcome(Outcome(Kind.RETRY, status=429, error_msg=per_minute), 0.3, 0.2)
    assert display.pacing(0.4, 0.4).endswith("(gateway limit 1.7/s)")


def test_requests_waiting_to_retry_are_shown_with_the_last_one_due() -> None:
    from bulkrerun.pacing import Pacer, PacingConfig

    display = RunDisplay(Console(file=io.StringIO(), width=200), 10, pacer=Pacer(PacingConfig()))
    display.counts.waiting.update({"a": 1002.0, "b": 1001.0})
    assert display.doing(1000.0, 0.0) == "2 requests waiting to retry"
    display.counts.waiting["c"] = 1300.0  # a Retry-After of five minutes
    assert display.doing(1000.0, 0.0) == "3 requests waiting to retry, the last in 5m00s"
    display.counts.waiting.clear()
    assert display.doing(1000.0, 0.0) == ""


@pytest.mark.parametrize("width", [80, 100])
def test_what_pacing_does_goes_under_the_bar_and_squeezes_nothing_out(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """While the service throttles, the bar's count, held units and ETA stay on its row; the
    pacing note (as wide as the terminal, or wider) is the line below."""
    from bulkrerun.fake.faults import throttle_message
    from bulkrerun.outcome import Kind, Outcome
    from bulkrerun.pacing import Pacer, PacingConfig

    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "monotonic", clock.now)
    pacer = Pacer(PacingConfig(rate=50.0))
    pacer.on_outcome(Outcome(Kind.RETRY, status=429, error_msg=throttle_message(10)), 0.1, 0.0)
    display = RunDisplay(Console(file=io.StringIO(), force_terminal=True), 12_000, pacer=pacer)
    display.counts.done, display.counts.held = 4_120, 2
    display.counts.waiting.update({"a": 3.0, "b": 4.0, "c": 5.0})
    note = display.doing(0.2, 0.2)
    assert len(note) > 90
    clock.advance(412.2)
    out = io.StringIO()
    with display:
        display._refresh(note)
        screen = Console(file=out, color_system=None, width=width)
        screen.print(*display._progress.get_renderables())
    rows = out.getvalue().splitlines()
    assert "4122/12000 4120 done 0 failed 2 held 10.0/s" in rows[0]
    assert rows[0].endswith(" 0:00:00 -:--:--")  # elapsed and ETA (rich's own clocks)
    assert " ".join(" ".join(rows[1:]).split()) == note
