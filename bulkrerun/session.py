"""One ``bulkrerun run``: bind the journal, decide per unit what to send, run the engine.

The resume rules of the contract live here, as one pure function (:func:`should_send`):
``done`` is never sent again; ``failed`` only with ``--retry-failed``; ``held`` only with
``--resend-held``; anything the journal has never seen is new and sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bulkrerun.chunk import Chunk
from bulkrerun.journal import JournalState, UnitState
from bulkrerun.manifest import Manifest
from bulkrerun.planner import SelectedInstance, plan


@dataclass(frozen=True, slots=True)
class ResumeFlags:
    retry_failed: bool = False
    resend_held: bool = False


@dataclass
class UnitCounts:
    """The plan's units by what the journal says of them, before this run sends anything."""

    done: int = 0
    failed: int = 0
    held: int = 0
    new: int = 0
    to_send: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.failed + self.held + self.new


def should_send(state: UnitState | None, flags: ResumeFlags) -> bool:
    """The resume rule for one unit."""
    if state is None:
        return True
    if state is UnitState.DONE:
        return False
    if state is UnitState.FAILED:
        return flags.retry_failed
    return flags.resend_held  # HELD: a rerun sent twice runs twice


def count_units(
    manifest: Manifest,
    units: Mapping[str, UnitState],
    flags: ResumeFlags,
    selections: Mapping[str, Sequence[SelectedInstance]] | None,
) -> UnitCounts:
    """Count the plan's units by their journal state: one streaming pass over the whole plan,
    or, when the journal knows no unit yet (a first run), as :meth:`Plan.count_units` counts
    (windows by arithmetic): every unit is then new and sent."""
    counts = UnitCounts()
    tally: Counter[UnitState | None] = Counter()

    def dup(unit: str, label: str) -> None:
        counts.duplicates.append((unit, label))

    chunks = plan(manifest, selections=selections, on_duplicate=dup)
    if not units:
        counts.new = counts.to_send = chunks.count_units()
        return counts
    for chunk in chunks:
        for unit in chunk.units:
            state = units.get(unit)
            tally[state] += 1
            if should_send(state, flags):
                counts.to_send += 1
    counts.done = tally[UnitState.DONE]
    counts.failed = tally[UnitState.FAILED]
    counts.held = tally[UnitState.HELD]
    counts.new = tally[None]
    return counts


def chunks_to_send(
    manifest: Manifest,
    state: JournalState,
    flags: ResumeFlags,
    selections: Mapping[str, Sequence[SelectedInstance]] | None,
) -> Iterable[Chunk]:
    """The plan minus what the journal says must not be sent; batches re-form around it.

    A first run (a journal that knows no unit yet) sends the whole plan, which already
    leaves out repeated units: no unit is asked about (two calls per chunk, 1,500
    instructions)."""
    units = state.units
    if not units:
        return plan(manifest, selections=selections)
    skip: Callable[[str], bool] = lambda unit: not should_send(units.get(unit), flags)  # noqa: E731
    return plan(manifest, skip=skip, selections=selections)
