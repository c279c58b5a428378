"""Small frozen records the engine emits; progress bars, logs and tests subscribe to them.

The engine never prints or logs by itself: it hands :class:`Retrying` and :class:`Stopping`
to one callback (``on_event``), and each chunk's :class:`Settled` to another
(``on_settled``), given only when wanted (``--log-chunks``, tests): that one is called for
every request. The CLI fans them out to structlog and to the progress display, which
prints the stop notices and reads its counts from the engine's result.

Named tuples, as immutable as frozen dataclasses and cheaper to make: a run makes a
:class:`Settled` for every request (callgrind: 7,300 instructions as a frozen dataclass,
3,300 so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from bulkrerun.chunk import Chunk
from bulkrerun.outcome import Outcome


class Retrying(NamedTuple):
    """An attempt was not acted on (429, 503, connect error); the chunk waits ``delay`` s."""

    chunk: Chunk
    attempt: int
    outcome: Outcome
    delay: float


class Settled(NamedTuple):
    """A chunk reached its outcome for this run: ``state`` is done, failed, held or pending
    (pending: not acted on, the run stopped first)."""

    chunk: Chunk
    state: str
    outcome: Outcome | None
    attempts: int


class Stopping(NamedTuple):
    """The run stops taking new chunks: ``reason`` says why (signal, auth, failure budget)."""

    reason: str
    hard: bool = False


Event = Retrying | Settled | Stopping
EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default sink."""
