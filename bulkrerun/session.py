"""One ``bulkrerun run``: bind the journal, decide per unit what to send, run the engine.

The resume rules of the contract live here, as one pure function (:func:`should_send`):
``done`` is never sent again; ``failed`` only with ``--retry-failed``; ``held`` only with
``--resend-held``; anything the journal has never seen is new and sent.

Window chunks are decided per chunk, and a chunk's id covers its whole body: an edit of a
window entry (its ``chunk``, its ``begin``, a body field, its ``jobs``) gives every chunk a
new id, and the new chunks re-cover times whose instances an earlier run already rerun. So
do failed or held chunks that ``--retry-failed`` or ``--resend-held`` sends again after
other requests over their times were done (a ``jobs`` line removed after the refusals it
caused, say). The contract keeps the per-chunk rule, so such chunks are sent;
:func:`count_units` finds them (:class:`Overlap`) so that the operator is warned before
anything is sent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bulkrerun.chunk import Chunk
from bulkrerun.journal import Journal, JournalState, UnitState, read_records_at
from bulkrerun.manifest import Manifest, WindowEntry, covered_jobs
from bulkrerun.planner import Duplicate, SelectedInstance, plan, window_times

KEPT_DUPLICATES = 20
"""The duplicate units a count keeps to be shown (all are counted): a file named twice
repeats every one of its units."""


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
    # The first units the manifest names again (at most KEPT_DUPLICATES), and how many.
    duplicates: list[Duplicate] = field(default_factory=list)
    duplicate_count: int = 0
    overlaps: list[Overlap] = field(default_factory=list)

    def add_duplicate(self, duplicate: Duplicate) -> None:
        """Count a unit the manifest names again (an ``on_duplicate`` of the planner)."""
        self.duplicate_count += 1
        if len(self.duplicates) < KEPT_DUPLICATES:
            self.duplicates.append(duplicate)

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
    *,
    earlier: Callable[[], Iterable[DoneWindow]] | None = None,
) -> UnitCounts:
    """Count the plan's units by their journal state: one streaming pass over the whole plan,
    or, when the journal knows no unit yet (a first run), as :meth:`Plan.count_units` counts
    (windows by arithmetic): every unit is then new and sent.

    With ``earlier`` (see :func:`earlier_windows`), the same pass also finds the window
    chunks this run sends that re-cover times of done ones: :attr:`UnitCounts.overlaps`.
    Those are the new chunks (unless ``earlier`` says they need no check) and the failed or
    held ones the flags send again. ``earlier`` is called only if there are any."""
    counts = UnitCounts()
    tally: Counter[UnitState | None] = Counter()

    chunks = plan(manifest, selections=selections, on_duplicate=counts.add_duplicate)
    if not units:
        counts.new = counts.to_send = chunks.count_units()
        return counts
    new_windows = _NewWindows(manifest) if earlier is not None else None
    check_new = not isinstance(earlier, EarlierWindows) or earlier.new_chunks
    for chunk in chunks:
        for unit in chunk.units:
            state = units.get(unit)
            tally[state] += 1
            send = should_send(state, flags)
            if send:
                counts.to_send += 1
        # A window chunk's one unit is the chunk: ``state`` and ``send`` are the chunk's.
        if (
            new_windows is not None
            and send
            and chunk.kind == "window"
            and (check_new or state is not None)
        ):
            new_windows.add(chunk)
    counts.done = tally[UnitState.DONE]
    counts.failed = tally[UnitState.FAILED]
    counts.held = tally[UnitState.HELD]
    counts.new = tally[None]
    if new_windows is not None and earlier is not None:
        counts.overlaps = new_windows.overlaps(earlier)
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


# ---------------------------------------------------------------------------------------------
# New window chunks over done ones
# ---------------------------------------------------------------------------------------------


class DoneWindow(NamedTuple):
    """A done window request of the journal: its job, workspace, plan times
    ``begin_time..end_time`` (inclusive, as sent) and the (job name, workspace) of each job
    of its ``jobs``, which it reran too."""

    job_name: str
    workspace: str
    begin_time: int
    end_time: int
    jobs: tuple[tuple[str, str], ...] = ()

    def covers(self) -> tuple[tuple[str, str], ...]:
        """Every (job name, workspace) whose instances it reran (see :func:`covered_jobs`)."""
        return covered_jobs(self.job_name, self.workspace, self.jobs)


@dataclass(frozen=True, slots=True)
class Overlap:
    """Requests of one window entry that this run sends and that re-cover times of a job that
    done requests already covered, so that its instances there run again: new requests, and
    failed or held ones ``--retry-failed`` or ``--resend-held`` sends again.

    A window request covers its job and every job of its ``jobs``: ``job_name`` and
    ``workspace`` name the job covered twice, the entry's own job or one of its ``jobs`` (an
    entry that re-covers several jobs has one overlap for each). ``new`` counts the entry's
    requests sent (new or again) that overlap a done one covering that job, ``done`` those
    done requests,
    ``first_ms``..``last_ms`` (both inclusive) the span of plan times covered twice.
    """

    entry: str
    job_name: str
    workspace: str
    new: int
    done: int
    first_ms: int
    last_ms: int
    timezone: str | None = None  # the entry's, to show the times as it was written


@dataclass(frozen=True, slots=True)
class EarlierWindows:
    """The journal's done window requests, read (lazily, when called) from their intent
    records: what :func:`count_units` compares the window chunks a run sends with.

    ``new_chunks`` False: the manifest is the one the last run recorded, so its new chunks
    need no comparison (see :func:`earlier_windows`); failed or held chunks that a flag
    sends again still do.
    """

    path: Path | Journal  # the journal the run holds open (read through it), or its path
    state: JournalState
    new_chunks: bool = True

    def __call__(self) -> Iterator[DoneWindow]:
        return read_done_windows(self.path, self.state)


def earlier_windows(
    path: Path | Journal, state: JournalState, manifest: Manifest
) -> EarlierWindows | None:
    """What :func:`count_units` compares the window chunks a run sends with (see
    :class:`EarlierWindows`). Made so that the check costs nothing when it can find nothing:

    - the manifest is the one the last run recorded (a resume after an interruption): only an
      edit gives chunks new ids over done times (two overlapping entries of one manifest can
      too, but loading the manifest already warns about those), so new chunks are not
      compared. The failed and held chunks ``--retry-failed`` and ``--resend-held`` send
      again are: requests of another manifest may have covered their times since they
      failed. The journal is read only if there are any;
    - None when the manifest has no window entry, or (another manifest) the journal no done
      window request.
    """
    if not any(isinstance(entry, WindowEntry) for entry in manifest.entries):
        return None
    if state.runs and state.runs[-1].manifest_sha256 == manifest.sha256:
        return EarlierWindows(path, state, new_chunks=False)
    if not state.done_windows():
        return None
    return EarlierWindows(path, state)


def read_done_windows(path: Path | Journal, state: JournalState) -> Iterator[DoneWindow]:
    """The done window requests of the journal at ``path`` (replayed as ``state``), in the
    order first sent, from their intent records (one read each, in file order)."""
    for record in read_records_at(path, iter(state.done_windows())):
        body = record.get("body")
        if record.get("kind") != "window" or not isinstance(body, dict):
            continue
        jobs = body.get("jobs")
        yield DoneWindow(
            str(record.get("job_name", "")),
            str(record.get("workspace", "")),
            int(body["begin_time"]),
            int(body["end_time"]),
            tuple(
                (str(job.get("job_name", "")), str(job.get("workspace_id", "")))
                for job in (jobs if isinstance(jobs, list) else ())
                if isinstance(job, dict)
            ),
        )


class _Spans:
    """A union of closed intervals of milliseconds, as sorted starts and ends.

    An interval that touches the last one merges into it at once, so intervals that come in
    time order (a window's chunks, done chunks as they were sent) cost one pair per gap
    between them. Others are appended, and the whole is sorted and merged again whenever it
    has doubled; :meth:`merge` before reading ``starts`` and ``ends``.
    """

    __slots__ = ("_limit", "ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self._limit = 64

    def add(self, start: int, end: int) -> None:
        starts, ends = self.starts, self.ends
        if starts and start <= ends[-1] + 1 and end + 1 >= starts[-1]:
            starts[-1] = min(start, starts[-1])
            ends[-1] = max(end, ends[-1])
            return
        starts.append(start)
        ends.append(end)
        if len(starts) > self._limit:
            self.merge()
            self._limit = 2 * len(self.starts) + 64

    def merge(self) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(zip(self.starts, self.ends, strict=True)):
            if starts and start <= ends[-1] + 1:
                ends[-1] = max(end, ends[-1])
            else:
                starts.append(start)
                ends.append(end)
        self.starts, self.ends = starts, ends


# An entry and a job it covers: (entry label, job name, workspace).
_Key = tuple[str, str, str]


class _NewWindows:
    """The plan times of the window chunks a run sends (new ones, and failed or held ones
    sent again), per entry, merged as they stream by.

    The chunks of one entry come in time order and touch one another, so an entry costs
    one interval per run of chunks sent: as many as the chunks left out between them cut,
    however many chunks the plan holds. No chunk id is kept.
    """

    __slots__ = ("entries", "runs")

    def __init__(self, manifest: Manifest) -> None:
        self.entries = {e.label: e for e in manifest.entries if isinstance(e, WindowEntry)}
        self.runs: dict[str, _Spans] = {}

    def add(self, chunk: Chunk) -> None:
        runs = self.runs.get(chunk.entry)
        if runs is None:
            runs = self.runs[chunk.entry] = _Spans()
        runs.add(*window_times(chunk.body))

    def overlaps(self, earlier: Callable[[], Iterable[DoneWindow]]) -> list[Overlap]:
        """Per entry (in manifest order) and job it covers (its own, then those of its
        ``jobs``) that has any: its chunks sent over ``earlier`` ones that covered that job.

        One pass over the done requests: for each job a done request covered, it is looked
        up (bisection) among the runs of chunks sent of the entries that cover the same job
        and workspace; what it overlaps is kept as spans, merged, and the entry's chunks these
        spans touch are counted by arithmetic.
        """
        if not self.runs:
            return []
        by_job: dict[tuple[str, str], list[_Key]] = {}
        for label, runs in self.runs.items():
            runs.merge()
            for job_name, workspace in self.entries[label].covers():
                by_job.setdefault((job_name, workspace), []).append((label, job_name, workspace))
        covered: dict[_Key, _Spans] = {}
        done: Counter[_Key] = Counter()
        for window in earlier():
            begin, end = window.begin_time, window.end_time
            for job in window.covers():
                for key in by_job.get(job, []):
                    runs = self.runs[key[0]]
                    starts, ends = runs.starts, runs.ends
                    i = bisect_left(ends, begin)  # the first run that does not end before it
                    if i == len(starts) or starts[i] > end:
                        continue
                    done[key] += 1
                    spans = covered.setdefault(key, _Spans())
                    while i < len(starts) and starts[i] <= end:
                        spans.add(max(begin, starts[i]), min(end, ends[i]))
                        i += 1
        found = []
        for label in self.runs:
            entry = self.entries[label]
            for job_name, workspace in entry.covers():
                key = (label, job_name, workspace)
                if not done[key]:
                    continue
                spans = covered[key]
                spans.merge()
                found.append(
                    Overlap(
                        entry=label,
                        job_name=job_name,
                        workspace=workspace,
                        new=_chunks_touched(entry, spans),
                        done=done[key],
                        first_ms=spans.starts[0],
                        last_ms=spans.ends[-1],
                        timezone=entry.timezone,
                    )
                )
        return found


def _chunks_touched(entry: WindowEntry, spans: _Spans) -> int:
    """How many of the entry's chunks the (merged) ``spans`` touch.

    Chunk ``k`` covers ``begin + k*chunk`` to ``begin + (k+1)*chunk - 1`` (the last one
    less), so a plan time ``t`` of the window lies in chunk ``(t - begin) // chunk``. Spans
    are sorted, so each counts its chunks from past the last one counted.
    """
    counted, last = 0, -1
    for start, end in zip(spans.starts, spans.ends, strict=True):
        first = max((start - entry.begin_ms) // entry.chunk_ms, last + 1)
        final = (end - entry.begin_ms) // entry.chunk_ms
        counted += max(0, final - first + 1)
        last = max(last, final)
    return counted
