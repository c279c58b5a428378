"""Small frozen records the engine emits; progress bars, logs and tests subscribe to them.

The engine never prints or logs by itself: it hands each event to one callback
(``on_event``), and the CLI fans it out to the progress display and to structlog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bulkrerun.chunk import Chunk
from bulkrerun.outcome import Outcome


@dataclass(frozen=True, slots=True)
class Retrying:
    """An attempt was not acted on (429, 503, connect error); the chunk waits ``delay`` s."""

    chunk: Chunk
    attempt: int
    outcome: Outcome
    delay: float


@dataclass(frozen=True, slots=True)
class Settled:
    """A chunk reached its outcome for this run: ``state`` is done, failed, held or pending
    (pending: not acted on, the run stopped first)."""

    chunk: Chunk
    state: str
    outcome: Outcome | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Stopping:
    """The run stops taking new chunks: ``reason`` says why (signal, auth, failure budget)."""

    reason: str
    hard: bool = False


Event = Retrying | Settled | Stopping
EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default sink."""
