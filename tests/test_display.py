"""The run's progress display: what it counts, and how often it redraws its numbers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import bulkrerun.display as display_module
from bulkrerun.chunk import Chunk
from bulkrerun.display import LIVE_EVERY, RunDisplay
from bulkrerun.events import Settled

CHUNK = Chunk("a" * 32, "window", "window[0]", "job", "ws", b"{}", ("a" * 32,))


def test_on_a_terminal_the_bar_is_updated_at_most_every_live_interval_and_ends_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(display_module.time, "monotonic", lambda: now[0])
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    display = RunDisplay(console, 1000)
    updates: list[int] = []
    real_update = display._progress.update

    def update(task: object, **fields: object) -> None:
        updates.append(int(fields["completed"]))  # type: ignore[call-overload]
        real_update(task, **fields)  # type: ignore[arg-type]

    monkeypatch.setattr(display._progress, "update", update)
    with display:
        for i in range(600):
            state = "failed" if i % 100 == 0 else "done"
            display(Settled(CHUNK, state, None, 1))
            now[0] += LIVE_EVERY / 100  # 100 events per interval
    assert updates[0] == 1  # the first one shows at once
    assert 6 <= len(updates) <= 8  # then one per interval (and one on exit), not 600
    assert updates[-1] == 600  # the bar ends on the exact count
    assert (display.done, display.failed) == (594, 6)
    task = display._progress.tasks[0]
    assert task.completed == 600
    assert task.fields["failed"] == 6
