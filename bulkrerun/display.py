"""What an operator sees during a run: a rich progress bar drawn from the engine's counts.

On a terminal: one bar in units (instances or window chunks) with done / failed / held
counts, the current rate and an ETA. Elsewhere (CI logs, pipes, a ``TERM=dumb`` terminal): a
plain line every few seconds, so a long run still shows life without flooding the log.

Pacing shows too, when it is at work: how often the service throttled, the rate it left
and the limit the gateway stated in its 429s, if it did; or that sending is paused while
the circuit breaker waits on a failing service (a line is printed when it opens). Without
it a run that waits looks like a run that hangs.

The display reads the engine's :class:`~bulkrerun.engine.RunResult` on a timer instead of
being told of every chunk: the engine counts each settled chunk there anyway, and an event
per request, made and handed to a display that counted it a second time, cost 6,100
instructions a request (callgrind), about 1 % of a fast run, to redraw ten times a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from bulkrerun.clock import Clock
from bulkrerun.engine import RunResult
from bulkrerun.events import Event, Stopping
from bulkrerun.pacing import BreakerState, Pacer
from bulkrerun.text import counted, duration

PLAIN_EVERY = 5.0  # seconds between plain progress lines when not on a terminal
LIVE_EVERY = 0.1
"""Seconds between updates of the bar's numbers on a terminal (rich redraws it 10 times a
second)."""
LONG_WAIT = 10.0  # seconds: a retry due later than this is shown with its time


class _RunProgress(Progress):
    """The bar, and under it what pacing is doing, when it is at work. On the bar's row,
    that note (often 100 characters) squeezed out the bar, the count, the held units and
    the ETA on any terminal under 200 columns: just when the run is in trouble."""

    note = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.note:
            yield Text(self.note, style="yellow")


class RunDisplay:
    """Draws a run's progress while :meth:`follow` runs, and prints the engine's stop
    notices (it is the engine's ``on_event`` sink). Use as a context manager around the
    run: leaving it draws the final counts."""

    def __init__(
        self,
        console: Console,
        total_units: int,
        *,
        enabled: bool = True,
        pacer: Pacer | None = None,
    ) -> None:
        self.console = console
        self.total = total_units
        self.counts = RunResult()  # the engine's, once follow() is given them
        self._pacer = pacer
        # Spells of a failing service (pacing's count) whose start, and whose end, was told.
        self._told_began = 0
        self._told_ended = 0
        self._stopping = False  # a Stopping event came: nothing more is sent, or probed
        self._started = time.monotonic()
        # A terminal that cannot move the cursor (TERM=dumb: an Emacs shell, some CI
        # runners) gets the plain lines: rich draws nothing on it until the bar stops, and a
        # run of an hour showed no sign of life until its end.
        self._live = enabled and console.is_terminal and not console.is_dumb_terminal
        self._plain = enabled and not self._live
        self._progress = _RunProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[done]} done[/] [red]{task.fields[failed]} failed[/] "
                "[yellow]{task.fields[held]} held[/]{task.fields[unsent]} {task.fields[rate]}/s"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not self._live,
        )
        self._task: TaskID | None = None
        self._clock: Clock | None = None  # follow()'s

    def __enter__(self) -> RunDisplay:
        # Started only when drawn: before rich 14.3, a disabled Progress printed a blank
        # line when stopped off a terminal.
        if self._live:
            self._progress.start()
        self._task = self._progress.add_task(
            "rerun", total=self.total, done=0, failed=0, held=0, unsent="", rate="0"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._clock is not None and (self._live or self._plain):
            self.pacing(self._clock.now(), self._clock.wall())  # tell a spell's end, if untold
        self._refresh()
        if self._live:
            self._progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Stopping):
            self._stopping = True
            word = "stopping now" if event.hard else "stopping"
            self.console.print(f"[yellow]{word}: {escape(event.reason)}[/]")

    async def follow(self, counts: RunResult, clock: Clock) -> None:
        """Show ``counts`` (the engine's result, which it updates as chunks settle) until
        cancelled: on a terminal at once and then every ``LIVE_EVERY`` seconds; elsewhere
        as a plain line every ``PLAIN_EVERY`` seconds; not at all when disabled."""
        self.counts = counts
        self._clock = clock
        if self._live:
            while True:
                self._refresh(self.doing(clock.now(), clock.wall()))
                await clock.sleep(LIVE_EVERY)
        elif self._plain:
            while True:
                await clock.sleep(PLAIN_EVERY)
                pacing = self.doing(clock.now(), clock.wall())
                self.console.print(
                    f"progress: {self.settled}/{self.total} units, {counts.done} done, "
                    f"{counts.failed} failed, {self.held()} held{self.unsent()}, "
                    f"{self.rate():.1f}/s" + (f"; {pacing}" if pacing else ""),
                    highlight=False,
                )

    def doing(self, now: float, wall: float) -> str:
        """What pacing does (see :meth:`pacing`) and, when requests wait to be sent again,
        how many and until when: a Retry-After of minutes would otherwise look like a hang
        behind a line that says the rate."""
        pacing = self.pacing(now, wall)
        waiting = self.counts.waiting
        if not waiting:
            return pacing
        last = max(waiting.values()) - now
        note = f"{counted(len(waiting), 'request')} waiting to retry"
        if last >= LONG_WAIT:
            note += f", the last in {duration(last)}"
        return f"{pacing}; {note}" if pacing else note

    def pacing(self, now: float, wall: float) -> str:
        """What pacing is doing, in a few words ("" when nothing worth saying), at ``now``
        (the clock's monotonic time; ``wall`` is the same moment's). Prints a line when the
        breaker opens on a failing service, with the time, and one when the service
        answers again: not at each failed probe, which opens it again every few seconds."""
        if self._pacer is None:
            return ""
        stats = self._pacer.stats(now)
        spells = stats.spells
        first = stats.outages - len(spells)  # the count of the oldest spell still kept
        for n, spell in enumerate(spells, start=first):
            if n >= self._told_began:
                self._told_began = n + 1
                began = datetime.fromtimestamp(wall - (now - spell.began), UTC)
                # Told after a stop (at the end, off a terminal), "sending paused; one
                # request probes it" contradicted the stop above it: nothing is sent then.
                doing = (
                    ""
                    if self._stopping
                    else ": sending paused; one request probes it every few seconds"
                )
                self.console.print(
                    f"[yellow]the service is failing since {began:%H:%M:%S} UTC{doing}[/]"
                )
            if spell.ended is not None and n >= self._told_ended:
                self._told_ended = n + 1
                self.console.print(
                    f"[green]the service answers again after "
                    f"{duration(spell.ended - spell.began)}: sending resumed[/]"
                )
        if stats.breaker is not BreakerState.CLOSED:
            since = spells[-1].began if spells else now
            return (
                f"paused {duration(now - since)}: the service is failing "
                f"(circuit breaker {stats.breaker})"
            )
        if stats.throttled:
            # Sporadic: 429s no more frequent than those that come at any rate (another
            # client's), which lowered nothing: why the rate holds while 429s go up.
            sporadic = stats.background_throttles
            kept = f"; {sporadic:,} sporadic, rate kept" if sporadic else ""
            line = (
                f"{stats.throttled:,} throttled (429{kept}), sending at {stats.rate:.1f} requests/s"
            )
            if stats.stated_limit is not None:
                line += f" (gateway limit {_per_second(stats.stated_limit)}/s)"
            return line
        return ""

    @property
    def settled(self) -> int:
        c = self.counts
        return c.done + c.failed + c.held + c.pending

    def held(self) -> int:
        """The units held: those whose send this run left unknown, and those held before
        whose resend (``--resend-held``) was refused or did not go, which stay held, as
        ``status`` and the run's closing table count them."""
        return self.counts.held + self.counts.held_again

    def unsent(self) -> str:
        """The units a stop left not yet sent (as ``status`` says), counted in
        :attr:`settled` (", 84 not yet sent"; "" with none): without them, "104/134 units,
        0 done, 0 failed, 20 held" did not add up. Held ones held again are in :meth:`held`."""
        pending = self.counts.pending - self.counts.held_again
        return f", {pending:,} not yet sent" if pending else ""

    def rate(self) -> float:
        """Units sent and settled per second so far: not those left pending by a stop."""
        c = self.counts
        elapsed = time.monotonic() - self._started
        return (c.done + c.failed + c.held) / elapsed if elapsed > 0 else 0.0

    def _refresh(self, pacing: str = "") -> None:
        if self._task is None:
            return
        c = self.counts
        self._progress.note = pacing
        self._progress.update(
            self._task,
            completed=self.settled,
            done=c.done,
            failed=c.failed,
            held=self.held(),
            unsent=self.unsent(),
            rate=f"{self.rate():.1f}",
        )


def _per_second(rate: float) -> str:
    """A stated limit as a short number: 50, 1.7 (100 a minute), 0.0069 (600 a day)."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
