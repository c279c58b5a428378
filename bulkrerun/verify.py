"""Decide held units from the instances' live state, and watch reruns to their end.

A *held* unit is one whose request may or may not have been acted on (a timeout or a
connection lost after sending, a crash between intent and outcome). Sending it again could
rerun it twice, so ``run`` leaves it alone unless told. But the service knows: the instance
list (:mod:`bulkrerun.select`) shows each instance's current run. :func:`verify_held` reads
it for every held unit and records a ``verify`` record in the journal:

- **done** when the instance shows a run submitted (or started) after our request was first
  recorded, or a status only a rerun could produce; the evidence says what was seen;
- **pending** (``journal.verified(unit, None, ...)``) when it still shows the very run we
  asked to rerun, finished before our request: the request was not acted on, and the next
  ``run`` sends it;
- **held**, with the reason, when the list cannot decide (instance not found, a rerun by
  someone else before ours, a run that was still going when we asked, the list unavailable).

Window units (mode B) are judged through the instances of the request's jobs in its window:
all rerun after our request -> done; all untouched since before it -> pending; otherwise held.

Times. "After our request" compares the service's ``submit_time`` and ``start_time`` with our
own wall clock at the first intent, allowing :data:`CLOCK_SKEW_S` of disagreement between
the two clocks. The allowance only ever moves a verdict towards done or held, never towards
pending: *pending* needs, for an instance unit, the exact ``submit_time`` we asked to rerun
(which no clock can fake) and a finish before our request, and for a window unit runs that
ended before it, submitted more than the allowance before it. A wrong *done* leaves an
instance unrerun (visible in ``report``); a wrong *pending* would run it twice, which is the
one thing bulkrerun must never do. Before deciding, :func:`verify_held` waits until the
newest request it relies on is ``settle`` seconds old (:data:`SETTLE_S` unless told), so that
an accepted rerun has had time to show.

A list slower than that shows an accepted rerun's instance as it was before: exactly the
picture that makes a unit pending. So the requests the journal records as accepted serve as
canaries (:func:`load_canaries`: the latest few of each job): they are listed with the held
units, and while the list shows one of them as not rerun, it cannot be believed of a held
unit either. Such a unit stays held ("instance list lagging") instead of being made pending,
unless an accepted request sent after it shows rerun already. A canary still not shown an
hour on, while a later one of its job shows, is no longer taken for lag
(:data:`CANARY_STALE_S`).

:func:`watch` polls the instances of the journal's done units until each shows our rerun in
a final status, prints a table per job and appends what it saw to a sidecar file next to the
journal (``PATH.watch``, JSON lines; :func:`read_watch`). A sidecar rather than journal
records: the journal is the resume decision, and what became of a rerun on the service after
it was accepted changes no decision; the journal also offers no record type for it. While
the list keeps failing (a service down behind its gateway answers 503 for as long as it is
down), the watch keeps asking until its timeout, and :class:`ListTrouble` says so on the
console past :data:`LIST_NOTICE_AFTER_S`, again every :data:`LIST_NOTICE_EVERY_S`, and once
more when the list answers again.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bulkrerun.chunk import instance_unit_id
from bulkrerun.clock import Clock
from bulkrerun.journal import (
    LATEST_SETTLED,
    ChunkInfo,
    Journal,
    JournalState,
    UnitState,
    read_records_at,
)
from bulkrerun.manifest import MAX_SELECT_SPAN_MS
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.pacing import Pacer
from bulkrerun.reference import FAILED_STATUSES, INSTANCE_STATUSES
from bulkrerun.select import (
    InstanceLister,
    ListedInstance,
    ListFailed,
    ListTransport,
    gather_limited,
)
from bulkrerun.text import command_line, counted, duration
from bulkrerun.watchlog import WatchRecord, finished_line, read_watch, watch_path

__all__ = [
    "ACTIVE_STATUSES",
    "CANARY_STALE_S",
    "CLOCK_SKEW_S",
    "FAILED_STATUSES",
    "LIST_NOTICE_AFTER_S",
    "LIST_NOTICE_EVERY_S",
    "SETTLE_S",
    "Canary",
    "InstanceTarget",
    "ListTrouble",
    "Verdict",
    "VerifySummary",
    "WatchRecord",
    "WatchSummary",
    "WindowTarget",
    "judge_instance",
    "judge_lag",
    "judge_window",
    "load_canaries",
    "load_targets",
    "read_watch",
    "verify_held",
    "watch",
    "watch_path",
]

CLOCK_SKEW_S = 120.0
"""How far the service's clock and ours may disagree (s). NTP keeps real clocks within a
second; two minutes also covers a badly kept laptop. (The gateway refuses signatures more
than 15 minutes off, so AK/SK runs cannot be further apart than that anyway.)"""

SETTLE_S = 5.0
"""The age the newest request a verify relies on must reach before the list is read (the
default of ``--settle``): an accepted rerun shows in the list at once on the fake, and within
seconds on a scheduler. A list slower than that is caught by the canaries."""

CANARY_STALE_S = 3600.0
"""How long an accepted request's rerun may stay out of the list while a later one of its
job shows, before it no longer says that the list lags (s); ten times the settle when that
is longer (see :func:`judge_lag`). A list that lags seconds, or minutes in an incident, shows
the later reruns last; an hour is past any lag it may show out of order, and short enough
that a request the service never lists does not keep its job's held units held for good."""

STALE_SETTLES = 10
"""The settle times an accepted request must be old, at the least, before a later one's
rerun shown makes it stale: a user who gives ``--settle`` knows the list lags that much."""

LAGGING = "instance list lagging"
"""The reason of a unit held because the list does not yet show reruns the service
accepted (see :func:`judge_lag`)."""

CANARIES_PER_JOB = 3
"""Accepted requests per job whose reruns are looked for in the list, the latest ones: the
latest rerun the service accepted is the last to show, so if it shows, the list has caught up
with every request before it; a few, in case one instance was since changed by hand."""

CANARY_READS = LATEST_SETTLED
"""At most this many accepted requests are read from the journal to find the canaries,
newest first: a journal of 200,000 requests is not read whole for a job it holds none of.
As many as a journal read slim keeps in full of the requests it settles, so that a slim
read offers the same ones (see :meth:`JournalState.latest_accepted`)."""

CLUSTER_GAP_MS = 6 * 3_600_000
"""Plan times of one job closer than this are read with one paginated query over their span
rather than one query each: held units come from one incident, a few hours wide."""

ACTIVE_STATUSES = frozenset({"waiting", "running"})
"""Statuses of a run that is not over. Every other status the API defines is final for
watching: ``pause`` and ``freeze`` do not move on by themselves either."""


ENDED_STATUSES = frozenset(INSTANCE_STATUSES) - ACTIVE_STATUSES
"""Statuses of a run that is over, as the API defines them. A status it does not define
("queued", say) is not taken for one: a unit is made pending only on a run known to be over,
and the watch follows such a run on until it shows an ended status or the watch times out."""

LIST_NOTICE_AFTER_S = 60.0
"""How long the instance list may fail, attempt after attempt, before the watch says so (s).
A blip of a few seconds is ridden out by each call's retries and is not worth a line; a
minute without a single answer is an outage the operator should hear of, since the watch
otherwise keeps asking, silently, until its timeout (an hour by default). Counted per attempt,
not per poll: against a service that is down, one call's eight attempts take minutes (backoff
up to 30 s, the breaker's cooldowns), and a check per poll would come that much later."""

LIST_NOTICE_EVERY_S = 300.0
"""While the failures go on, the notice comes again at most this often (s): the console shows
that the watch is alive and still trying, in a dozen lines an hour rather than one a poll."""

Key = tuple[str, str]  # (job_name, workspace)


# -- what was asked: targets read from the journal's intent records -----------------------------


@dataclass(frozen=True, slots=True)
class InstanceTarget:
    """An instance unit (mode A): the instance and the run of it we asked to rerun.

    ``since_ms`` is our first intent for it, ``last_ms`` the latest record of its requests
    (epoch ms, our clock).
    """

    unit: str
    job_name: str
    workspace: str
    job_id: int
    plan_time: int
    submit_time: int
    since_ms: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class WindowTarget:
    """A window unit (mode B): ``jobs`` as ``(job_name, workspace)``, the main job first, and
    the plan-time window ``begin_time..end_time`` (inclusive, as sent)."""

    unit: str
    jobs: tuple[Key, ...]
    begin_time: int
    end_time: int
    since_ms: int
    last_ms: int


Target = InstanceTarget | WindowTarget


def load_targets(source: Path | Journal, state: JournalState, units: Iterable[str]) -> list[Target]:
    """The targets of ``units``, from the intent records of the chunks that carry them (in
    ``source``: the journal open for the verdicts, or the path of one).

    A unit may appear in several chunks (an instance re-batched after an edit, a chunk sent
    again in a later run): its window of "our request" starts at the earliest intent and
    ends at the latest record of any of them.
    """
    wanted = set(units)
    spans: dict[str, tuple[float, float]] = {}
    offsets: list[int] = []
    for info in state.chunks.values():
        if wanted.isdisjoint(info.units):
            continue
        offsets.append(info.intent_offset)
        for unit in wanted.intersection(info.units):
            first, last = spans.get(unit, (info.first_wall, info.last_wall))
            spans[unit] = (min(first, info.first_wall), max(last, info.last_wall))
    found: dict[str, Target] = {}
    for record in read_records_at(source, iter(sorted(offsets))):
        for target in _targets_of(record, wanted, spans):
            found[target.unit] = target
    return list(found.values())


def _targets_of(
    record: Mapping[str, Any], wanted: set[str], spans: Mapping[str, tuple[float, float]]
) -> Iterator[Target]:
    job_name = str(record["job_name"])
    workspace = str(record["workspace"])
    body = record["body"]

    def times(unit: str) -> tuple[int, int]:
        first, last = spans[unit]
        return round(first * 1000), round(last * 1000)

    if "task_retrys" in body:
        for task in body["task_retrys"]:
            job_id, plan_time, submit_time = (
                int(task["job_id"]),
                int(task["plan_time"]),
                int(task["submit_time"]),
            )
            unit = instance_unit_id(job_name, job_id, plan_time, submit_time)
            if unit in wanted:
                yield InstanceTarget(
                    unit, job_name, workspace, job_id, plan_time, submit_time, *times(unit)
                )
        return
    unit = str(record["chunk"])
    if unit in wanted:
        jobs = [(job_name, workspace)]
        jobs += [(str(j["job_name"]), str(j["workspace_id"])) for j in body.get("jobs", ())]
        yield WindowTarget(
            unit,
            tuple(dict.fromkeys(jobs)),
            int(body["begin_time"]),
            int(body["end_time"]),
            *times(unit),
        )


@dataclass(frozen=True, slots=True)
class Canary:
    """A request the service accepted (200), whose rerun the list should show by now: as a
    target (an instance of it, or its window over its jobs, its own first), the job it is
    of, and when the acceptance was recorded (epoch ms, our clock). A window is judged by
    its own job's instances, its other jobs' only when its own has none in it (see
    :func:`_judge_canary`)."""

    target: Target
    key: Key
    accepted_ms: int


def load_canaries(source: Path | Journal, state: JournalState, keys: Iterable[Key]) -> list[Canary]:
    """The latest :data:`CANARIES_PER_JOB` accepted requests of each job of ``keys``, and as
    many of the latest of other jobs (for a job with none of its own: the list is one API),
    read from the journal newest first, :data:`CANARY_READS` at most.

    One canary per request: an instance request stands for one of its instances (all were
    accepted at once), a window request for its window (judged as :func:`_judge_canary`
    says).
    """
    wanted = set(keys)
    # Settled requests too, of a journal read slim: they are the most of the accepted ones.
    accepted = state.latest_accepted(CANARY_READS)
    found: dict[Key, list[Canary]] = {}
    others = 0
    batch = 32  # read in small batches, newest first: most journals are done in one
    for k in range(0, len(accepted), batch):
        infos = sorted(accepted[k : k + batch], key=lambda info: info.intent_offset)
        records = dict(
            zip(
                (info.id for info in infos),
                read_records_at(source, (info.intent_offset for info in infos)),
                strict=True,
            )
        )
        for info in accepted[k : k + batch]:
            canary = _canary_of(records[info.id], info)
            if canary is None:
                continue
            mine = found.setdefault(canary.key, [])
            if len(mine) >= CANARIES_PER_JOB:
                continue
            if canary.key not in wanted:
                if others >= CANARIES_PER_JOB:
                    continue
                others += 1
            mine.append(canary)
        if all(len(found.get(key, ())) >= CANARIES_PER_JOB for key in wanted):
            break
    return [c for canaries in found.values() for c in canaries]


def _canary_of(record: Mapping[str, Any], info: ChunkInfo) -> Canary | None:
    key = (str(record["job_name"]), str(record["workspace"]))
    body = record["body"]
    since, accepted = round(info.first_wall * 1000), round(info.last_wall * 1000)
    if "task_retrys" in body:
        if not body["task_retrys"]:
            return None
        task = body["task_retrys"][-1]
        job_id, plan_time, submit_time = (
            int(task["job_id"]),
            int(task["plan_time"]),
            int(task["submit_time"]),
        )
        unit = instance_unit_id(key[0], job_id, plan_time, submit_time)
        target: Target = InstanceTarget(
            unit, key[0], key[1], job_id, plan_time, submit_time, since, accepted
        )
    else:
        jobs = [key, *((str(j["job_name"]), str(j["workspace_id"])) for j in body.get("jobs", ()))]
        target = WindowTarget(
            str(record["chunk"]),
            tuple(dict.fromkeys(jobs)),
            int(body["begin_time"]),
            int(body["end_time"]),
            since,
            accepted,
        )
    return Canary(target, key, accepted)


# -- judging: pure -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the list says of one held unit: ``state`` DONE, HELD or None (pending);
    ``evidence`` is the sentence journaled; ``reason`` a short phrase to count by."""

    state: UnitState | None
    evidence: str
    reason: str


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _after(instance: ListedInstance, since_ms: int, original_submit: int | None) -> bool:
    """The instance shows a run submitted or started after our request (with the skew
    allowance). For an instance unit, a submission is only "new" if it differs from the one
    we asked to rerun."""
    floor = since_ms - CLOCK_SKEW_S * 1000
    new_submit = original_submit is None or instance.submit_time != original_submit
    return (new_submit and instance.submit_time >= floor) or (
        instance.start_time != 0 and instance.start_time >= floor
    )


def _ended_before(instance: ListedInstance, since_ms: int) -> bool:
    """The run shown is over and every time it shows is before our request."""
    return instance.status in ENDED_STATUSES and _latest(instance) < since_ms


def _what(target: Target) -> str:
    """A unit as its evidence names it."""
    if isinstance(target, InstanceTarget):
        return f"{target.job_name} plan_time {_iso(target.plan_time)}"
    return f"window {_iso(target.begin_time)}..{_iso(target.end_time)} of " + ", ".join(
        job for job, _ in target.jobs
    )


def judge_instance(target: InstanceTarget, now: ListedInstance | None) -> Verdict:
    """The verdict for an instance unit given the instance as listed now (None: not listed)."""
    what = _what(target)
    asked = f"our request (first sent {_iso(target.since_ms)})"
    if now is None or now.job_id != target.job_id:
        return Verdict(
            UnitState.HELD,
            f"{what}: not in the instance list; cannot tell whether {asked} was acted on",
            "instance not listed",
        )
    if _after(now, target.since_ms, target.submit_time):
        when = (
            f"submitted {_iso(now.submit_time)}"
            if now.submit_time != target.submit_time
            else f"started {_iso(now.start_time)}"
        )
        return Verdict(
            UnitState.DONE,
            f"{what}: shows a run {when}, after {asked}; status {now.status}",
            "rerun seen",
        )
    if now.submit_time == target.submit_time:
        if _ended_before(now, target.since_ms):
            return Verdict(
                None,
                f"{what}: still shows the run submitted {_iso(now.submit_time)} that we asked "
                f"to rerun, {now.status} before {asked}: not rerun",
                "not rerun",
            )
        return Verdict(
            UnitState.HELD,
            f"{what}: shows the run we asked to rerun, {now.status}, not over before {asked}; "
            "cannot tell whether it was rerun",
            "run not over before our request",
        )
    if now.submit_time > target.submit_time:
        return Verdict(
            UnitState.HELD,
            f"{what}: rerun by someone else (submitted {_iso(now.submit_time)}, before "
            f"{asked}; status {now.status}); ours was not acted on. Decide by hand: "
            "--resend-held sends it again",
            "rerun by someone else before ours",
        )
    return Verdict(
        UnitState.HELD,
        f"{what}: shows a run submitted {_iso(now.submit_time)}, older than the one we asked "
        f"to rerun ({_iso(target.submit_time)}); cannot tell",
        "older run listed",
    )


def judge_window(target: WindowTarget, instances: Sequence[ListedInstance]) -> Verdict:
    """The verdict for a window unit given the listed instances of its jobs in its window."""
    what = _what(target)
    asked = f"our request (first sent {_iso(target.since_ms)})"
    if not instances:
        return Verdict(
            UnitState.HELD,
            f"{what}: no instances listed in the window; cannot tell whether {asked} was acted on",
            "no instances in window",
        )
    after = sum(_after(i, target.since_ms, None) for i in instances)
    before = sum(
        _ended_before(i, target.since_ms - round(CLOCK_SKEW_S * 1000))
        for i in instances
        if not _after(i, target.since_ms, None)
    )
    n = len(instances)
    every, show, runs = (
        ("its 1 instance", "shows", "a run") if n == 1 else (f"all {n:,} instances", "show", "runs")
    )
    if after == n:
        return Verdict(
            UnitState.DONE,
            f"{what}: {every} {show} {runs} submitted or started after {asked}",
            "rerun seen",
        )
    if before == n:
        return Verdict(
            None,
            f"{what}: {every} still {show} {runs} that ended before {asked}: not rerun",
            "not rerun",
        )
    if n == 1:
        said = f"its 1 instance shows no run after {asked}, nor one that ended before it"
    else:
        said = (
            f"{after:,} of {n:,} instances {'shows' if after == 1 else 'show'} a run after "
            f"{asked}, {before:,} {'a run' if before == 1 else 'runs'} that ended before it"
        )
        if (neither := n - after - before) > 0:
            said += f", {neither:,} neither"
    return Verdict(UnitState.HELD, f"{what}: {said}: inconclusive", "window inconclusive")


def judge_lag(
    target: Target,
    canaries: Sequence[tuple[Canary, Verdict]],
    *,
    stale_before_ms: int | None = None,
) -> Verdict | None:
    """For a unit the list shows as not rerun: HELD when the list does not yet show the
    reruns of requests the service accepted, None when nothing says it lags.

    ``canaries`` come with the verdict the list gives them as if they were held: *done*, it
    shows their rerun; *pending*, it shows them as not rerun although the service accepted
    them, which is the picture a list that lags shows of an accepted rerun. The unit's own
    jobs' canaries count, or, when its jobs have none, every job's. A canary accepted at or
    after the unit's latest request that shows rerun says the list has caught up with the
    unit's request too: the unit is judged as the list shows it. Otherwise a single canary
    shown as not rerun keeps the unit held: its own rerun may be one the list does not show
    yet, and a unit made pending would be sent, and run, twice.

    Except a canary accepted before ``stale_before_ms`` (epoch ms; see
    :data:`CANARY_STALE_S`) while one of its job accepted after it shows rerun: a list that
    lags shows the later reruns last, so that one is not lag but a rerun the service never
    lists (it skipped the instance, say). Counted, it would keep its job's held units held
    for as long as it stays among its job's latest, whatever the list shows.
    """
    keys = (
        target.jobs if isinstance(target, WindowTarget) else ((target.job_name, target.workspace),)
    )
    pool = [(c, v) for c, v in canaries if c.key in keys] or list(canaries)
    shown = [c for c, v in pool if v.state is UnitState.DONE]
    if any(c.accepted_ms >= target.last_ms for c in shown):
        return None

    def stale(c: Canary) -> bool:
        return (
            stale_before_ms is not None
            and c.accepted_ms < stale_before_ms
            and any(s.key == c.key and s.accepted_ms > c.accepted_ms for s in shown)
        )

    unseen = [c for c, v in pool if v.state is None and not stale(c)]
    if not unseen:
        return None
    canary = max(unseen, key=lambda c: c.accepted_ms)
    if isinstance(canary.target, InstanceTarget):
        example = f"{canary.key[0]} at {_iso(canary.target.plan_time)}"
    else:
        example = (
            f"{canary.key[0]} window {_iso(canary.target.begin_time)}.."
            f"{_iso(canary.target.end_time)}"
        )
    return Verdict(
        UnitState.HELD,
        f"{_what(target)}: the instance list does not yet show reruns the service accepted "
        f"(e.g. {example}, accepted {_iso(canary.accepted_ms)}): verify again later (or with a "
        "longer --settle)",
        LAGGING,
    )


# -- reading the instances the targets need -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Query:
    key: Key
    low: int
    high: int


def _queries(targets: Iterable[Target]) -> list[_Query]:
    """Plan-time ranges to list per (job, workspace): the targets' points and windows,
    merged where closer than :data:`CLUSTER_GAP_MS` and never wider than the API's month."""
    ranges: dict[Key, list[tuple[int, int]]] = {}
    for t in targets:
        if isinstance(t, InstanceTarget):
            ranges.setdefault((t.job_name, t.workspace), []).append((t.plan_time, t.plan_time))
        else:
            for key in t.jobs:
                ranges.setdefault(key, []).append((t.begin_time, t.end_time))
    out: list[_Query] = []
    for key, spans in ranges.items():
        spans.sort()
        low, high = spans[0]
        for a, b in spans[1:]:
            if a - high <= CLUSTER_GAP_MS and max(b, high) - low < MAX_SELECT_SPAN_MS:
                high = max(high, b)
            else:
                out.extend(_split(key, low, high))
                low, high = a, b
        out.extend(_split(key, low, high))
    return out


def _split(key: Key, low: int, high: int) -> Iterator[_Query]:
    """One range as queries the API accepts (at most one month of plan times each)."""
    while high - low >= MAX_SELECT_SPAN_MS:
        yield _Query(key, low, low + MAX_SELECT_SPAN_MS - 1)
        low += MAX_SELECT_SPAN_MS
    yield _Query(key, low, high)


@dataclass
class _Listing:
    """What the list queries returned: instances per (job, workspace) by plan time, from
    every query of that job, and the queries that could not be read, with why.

    A job's held units may need several queries (clusters hours apart, months cut in two):
    each adds its instances to the job's, and a query that fails makes only the units whose
    plan times it covers unavailable, not every unit of its job.
    """

    instances: dict[Key, dict[int, ListedInstance]] = field(default_factory=dict)
    failed: dict[Key, list[tuple[_Query, str]]] = field(default_factory=dict)
    # Per job, its plan times sorted and the instances in that order, made when a window
    # first asks and dropped when the job's instances change: each held window looks up its
    # span by bisection instead of sorting all the job's instances again (4,000 held windows
    # of a job listed with 30,000 instances took minutes so).
    _by_time: dict[Key, tuple[list[int], list[ListedInstance]]] = field(
        default_factory=dict, repr=False
    )

    def add(self, key: Key, rows: Iterable[ListedInstance]) -> None:
        """One query's instances. Of two rows of one plan time, in a query or in two
        queries of a job that overlap, the one with the latest run is kept, whatever their
        order: the newer run is the rerun, if one is listed."""
        mine = self.instances.setdefault(key, {})
        self._by_time.pop(key, None)
        for item in rows:
            kept = mine.get(item.plan_time)
            if kept is None or _latest(item) > _latest(kept):
                mine[item.plan_time] = item

    def fail(self, q: _Query, reason: str) -> None:
        self.failed.setdefault(q.key, []).append((q, reason))

    def unavailable(self, key: Key, low: int, high: int) -> tuple[_Query, str] | None:
        """The first failed query of ``key`` that covers any plan time in ``low..high``, and
        why it failed; None when every query covering them answered."""
        return next(
            ((q, why) for q, why in self.failed.get(key, ()) if q.low <= high and low <= q.high),
            None,
        )

    def instance(self, key: Key, plan_time: int) -> ListedInstance | None:
        return self.instances.get(key, {}).get(plan_time)

    def window(self, t: WindowTarget) -> list[ListedInstance]:
        """The instances of the window's jobs with plan times in it, job by job, each job's
        in plan-time order."""
        found: list[ListedInstance] = []
        for key in t.jobs:
            by_time = self._by_time.get(key)
            if by_time is None:
                ordered = sorted(self.instances.get(key, {}).items())
                by_time = self._by_time[key] = ([p for p, _ in ordered], [i for _, i in ordered])
            times, instances = by_time
            found += instances[bisect_left(times, t.begin_time) : bisect_right(times, t.end_time)]
        return found


def _latest(instance: ListedInstance) -> int:
    return max(instance.submit_time, instance.start_time, instance.end_time)


async def _read(lister: InstanceLister, queries: Sequence[_Query], now_ms: int) -> _Listing:
    """The instances of each query by plan time (see :meth:`_Listing.add`). A row with a
    time in the future (past the clock allowance) makes its query unusable: such times
    would pass for a rerun after our request."""
    future = now_ms + CLOCK_SKEW_S * 1000

    async def one(q: _Query) -> list[ListedInstance] | ListFailed:
        try:
            return await lister.list(q.key[0], q.key[1], min_plan_time=q.low, max_plan_time=q.high)
        except ListFailed as exc:
            return exc

    listing = _Listing()
    for q, result in zip(queries, await gather_limited(one, queries), strict=True):
        if isinstance(result, ListFailed):
            listing.fail(q, result.reason)
            continue
        rows = [i for i in result if i.job_name == q.key[0] and q.low <= i.plan_time <= q.high]
        if (late := next((i for i in rows if _latest(i) > future), None)) is not None:
            listing.fail(
                q,
                f"the instance list shows a run at {_iso(_latest(late))}, in the future: "
                "its times cannot be trusted",
            )
        else:
            listing.add(q.key, rows)
    return listing


# -- verify ---------------------------------------------------------------------------------------


@dataclass
class VerifySummary:
    """What :func:`verify_held` decided; ``reasons`` counts the held verdicts by reason,
    ``examples`` has the evidence of the first unit held for each reason."""

    verified_done: int = 0
    made_pending: int = 0
    still_held: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def hold(self, reason: str, evidence: str, n: int = 1) -> None:
        """Count ``n`` units that stay held for ``reason``."""
        self.still_held += n
        self.reasons[reason] += n
        if evidence:
            self.examples.setdefault(reason, evidence)

    @property
    def checked(self) -> int:
        return self.verified_done + self.made_pending + self.still_held

    def __str__(self) -> str:
        return self.said()

    def said(self, journal: str | None = None) -> str:
        """The summary as printed; with ``journal`` (the path as the user gave it), the
        report it points to is a command that can be pasted."""
        if not self.checked:
            return "verify: no held units; nothing to check."

        def was(n: int) -> str:
            return f"{n:,} {'was' if n == 1 else 'were'}"

        stay = "stays" if self.still_held == 1 else "stay"
        # What pending means is said only of units made so: "0 were not (... the next run
        # sends them)" read as if the next run had something to send.
        pending = " (pending again: the next run sends them)" if self.made_pending else ""
        text = (
            f"verify: {counted(self.checked, 'held unit')} checked against the instances' live "
            f"state: {was(self.verified_done)} rerun (now done), {was(self.made_pending)} "
            f"not{pending}, {self.still_held:,} {stay} held"
        )
        if self.reasons:
            # The phrase counts; the first unit's evidence says why (e.g. which refusal made
            # the list unavailable), so the operator need not open the report to find out.
            text += (
                " ("
                + "; ".join(
                    f"{r}: {n:,}, e.g. {self.examples[r]}" if r in self.examples else f"{r}: {n:,}"
                    for r, n in self.reasons.most_common()
                )
                + ")"
            )
        if self.still_held:
            report = command_line(["bulkrerun", "report"] + ([journal] if journal else []))
            text += f". `{report}` shows the evidence per unit"
            # Held only until the list shows what the service accepted: resending them
            # would run those reruns twice, which waiting avoids.
            lagging = self.reasons.get(LAGGING, 0)
            if lagging:
                text += (
                    f"; verify again in a minute for the {counted(lagging, 'unit')} the list "
                    "lags behind (or with a longer --settle)"
                )
            if self.still_held > lagging:
                other = " other" if lagging else ""
                text += f"; --resend-held sends the{other} held ones again (they may run twice)"
        return text + "."


async def verify_held(
    journal: Journal,
    transport: ListTransport,
    *,
    pacer: Pacer,
    clock: Clock,
    settle: float = SETTLE_S,
    on_notice: Callable[[str], None] | None = None,
) -> VerifySummary:
    """Decide every held unit of ``journal`` from the instance list; journal each verdict.

    Sends no rerun. Raises :class:`~bulkrerun.errors.AuthRefused` if the service refuses the
    credentials (nothing is recorded then); a list that cannot be read leaves its units held.
    The list is read once the newest held request, and the newest canary (see
    :func:`judge_lag`), is ``settle`` seconds old. ``on_notice`` hears, past a minute of
    failures, that the list keeps failing, and when it answers again (:class:`ListTrouble`):
    its retries can take minutes.
    """
    summary = VerifySummary()
    state = journal.state()
    held = [u for u, s in state.units.items() if s is UnitState.HELD]
    if not held:
        return summary
    await journal.flush()  # the intent records are read from the file
    targets = load_targets(journal, state, held)
    keys = {
        key
        for t in targets
        for key in (t.jobs if isinstance(t, WindowTarget) else ((t.job_name, t.workspace),))
    }
    canaries = load_canaries(journal, state, keys)
    # The canaries too get the time to show: a canary sent after the newest held request
    # and read at once would be taken for a list that lags.
    newest = max((t.last_ms for t in [*targets, *(c.target for c in canaries)]), default=0)
    wait = newest / 1000 + settle - clock.wall()
    if wait > 0:
        await clock.sleep(wait)
    observe = None if on_notice is None else ListTrouble(None).observer(clock, on_notice)
    lister = InstanceLister(transport, pacer=pacer, clock=clock, on_outcome=observe)
    queries = _queries([*targets, *(c.target for c in canaries)])
    read_ms = round(clock.wall() * 1000)
    listing = await _read(lister, queries, read_ms)
    judged = [(c, _judge_canary(c, listing)) for c in canaries]
    stale_before = read_ms - round(max(CANARY_STALE_S, STALE_SETTLES * settle) * 1000)
    wall = clock.wall()
    for target in targets:
        verdict = _verdict(target, listing)
        if verdict.state is None:
            verdict = judge_lag(target, judged, stale_before_ms=stale_before) or verdict
        journal.verified(target.unit, verdict.state, verdict.evidence, wall)
        if verdict.state is UnitState.DONE:
            summary.verified_done += 1
        elif verdict.state is None:
            summary.made_pending += 1
        else:
            summary.hold(verdict.reason, verdict.evidence)
    # Held units whose intent record was not found cannot be judged (a damaged journal
    # would have been refused on open, so this is not expected); they stay as they are.
    missing = len(held) - len(targets)
    if missing:
        summary.hold("request not found in the journal", "", missing)
    await journal.flush()
    return summary


def _judge_canary(canary: Canary, listing: _Listing) -> Verdict:
    """What the list shows of a canary's rerun, as if it were held.

    A window request is judged by its own job's instances in its window: the service
    submits those reruns as it accepts the request, while how it queues its other jobs'
    is not the list's lag. Only when its own job has no instance there (an hourly job cut
    in 15-minute chunks) is it judged by its other jobs' instead: without them it would
    show nothing, and the held units of its jobs would be judged as if the list had caught
    up, and made pending under a list that lags.
    """
    t = canary.target
    if isinstance(t, InstanceTarget) or len(t.jobs) == 1:
        return _verdict(t, listing)
    own = WindowTarget(t.unit, t.jobs[:1], t.begin_time, t.end_time, t.since_ms, t.last_ms)
    if listing.unavailable(t.jobs[0], t.begin_time, t.end_time) is None and not listing.window(own):
        others = WindowTarget(t.unit, t.jobs[1:], t.begin_time, t.end_time, t.since_ms, t.last_ms)
        return _verdict(others, listing)
    return _verdict(own, listing)


def _verdict(target: Target, listing: _Listing) -> Verdict:
    if isinstance(target, InstanceTarget):
        keys: Sequence[Key] = [(target.job_name, target.workspace)]
        low = high = target.plan_time
    else:
        keys, low, high = target.jobs, target.begin_time, target.end_time
    for key in keys:
        if (failed := listing.unavailable(key, low, high)) is not None:
            q, why = failed
            return Verdict(
                UnitState.HELD,
                f"instance list of job {key[0]} unavailable for plan times "
                f"{_iso(q.low)}..{_iso(q.high)}: {why}",
                "instance list unavailable",
            )
    if isinstance(target, InstanceTarget):
        return judge_instance(target, listing.instance(keys[0], target.plan_time))
    return judge_window(target, listing.window(target))


# -- watch ----------------------------------------------------------------------------------------


@dataclass
class WatchSummary:
    """Statuses per job of the rerun instances watched. ``jobs[job]`` counts the final
    statuses seen, plus the last status seen (``waiting``, ``running``, one the API does not
    define) or ``not yet listed`` for those that did not finish before the timeout
    (``timed_out``)."""

    jobs: dict[str, Counter[str]] = field(default_factory=dict)
    timed_out: bool = False
    seconds: float = 0.0
    # Done units followed, and those of them whose reruns were not all seen in a final
    # status (a window not listed yet counts, though its instances are not yet known): what
    # the run's end record keeps, so that `status` can say what a watch stopped early left.
    units: int = 0
    unfinished_units: int = 0

    def total(self, statuses: Iterable[str] | None = None) -> int:
        wanted = None if statuses is None else frozenset(statuses)
        return sum(
            n for c in self.jobs.values() for s, n in c.items() if wanted is None or s in wanted
        )

    @property
    def succeeded(self) -> int:
        return self.total(("success",))

    @property
    def failed(self) -> int:
        return self.total(FAILED_STATUSES)

    @property
    def unfinished(self) -> int:
        return sum(_unfinished(c) for c in self.jobs.values())

    def __str__(self) -> str:
        n = self.total()
        if not n:
            return "watch: no rerun instances to watch."
        text = (
            f"watch: {counted(n, 'rerun instance')}: {self.succeeded:,} succeeded, "
            f"{self.failed:,} failed"
        )
        other = n - self.succeeded - self.failed - self.unfinished
        if other:
            text += f", {other:,} ended otherwise"
        if self.unfinished:
            text += f", {self.unfinished:,} " + (
                _undefined_share(odd) if (odd := _undefined(self)) else "not finished"
            )
            if self.timed_out:
                text += " when the watch timed out"
        return text + "."


NOT_LISTED = "not yet listed"


def _undefined(s: WatchSummary) -> int:
    """How many instances last showed a status the API does not define."""
    known = ENDED_STATUSES | ACTIVE_STATUSES | {NOT_LISTED}
    return sum(n for c in s.jobs.values() for st, n in c.items() if st not in known)


def _undefined_share(n: int) -> str:
    return f"not finished ({n:,} in a status the API does not define)"


def _unfinished(statuses: Counter[str]) -> int:
    """How many of one job's instances have not shown an ended status: ``not yet listed``,
    ``waiting``, ``running``, or a status the API does not define."""
    return sum(n for s, n in statuses.items() if s not in ENDED_STATUSES)


@dataclass(slots=True)
class _Watched:
    """One instance being watched: whose unit, which run we asked to rerun (None for window
    instances) and when, and the latest status of our rerun (None until it shows)."""

    unit: str
    key: Key
    plan_time: int
    original_submit: int | None
    since_ms: int
    status: str | None = None
    final: bool = False


class _Watcher:
    """The state of one :func:`watch`: the instances, what is final, the sidecar file."""

    def __init__(self, targets: Sequence[Target], path: Path, clock: Clock) -> None:
        self.items: dict[tuple[Key, int], _Watched] = {}
        self.windows = [t for t in targets if isinstance(t, WindowTarget)]
        for t in targets:
            if isinstance(t, InstanceTarget):
                key = (t.job_name, t.workspace)
                self.items[(key, t.plan_time)] = _Watched(
                    t.unit, key, t.plan_time, t.submit_time, t.since_ms
                )
        self.queries = _queries(targets)
        self.seen: set[int] = set()  # indexes of queries answered at least once
        self.units = list(dict.fromkeys(t.unit for t in targets))
        self.finished: set[str] = set()  # units recorded as seen finished by this watch
        self._path: Path | None = path  # None once it could not be written
        self._clock = clock

    def open_queries(self) -> list[int]:
        """Indexes of the queries still worth asking: never answered, or covering an
        instance whose rerun has not finished."""
        open_ranges = [(item.key, item.plan_time) for item in self.items.values() if not item.final]
        return [
            k
            for k, q in enumerate(self.queries)
            if k not in self.seen
            or any(key == q.key and q.low <= p <= q.high for key, p in open_ranges)
        ]

    def update(self, q: _Query, listed: Sequence[ListedInstance]) -> list[WatchRecord]:
        """Take one query's answer; returns the instances newly seen final."""
        newly: list[WatchRecord] = []
        for i in listed:
            if i.job_name != q.key[0] or not q.low <= i.plan_time <= q.high:
                continue
            item = self.items.get((q.key, i.plan_time))
            if item is None:
                window = next(
                    (
                        w
                        for w in self.windows
                        if q.key in w.jobs and w.begin_time <= i.plan_time <= w.end_time
                    ),
                    None,
                )
                if window is None:
                    continue
                item = _Watched(window.unit, q.key, i.plan_time, None, window.since_ms)
                self.items[(q.key, i.plan_time)] = item
            if item.final or not _after(i, item.since_ms, item.original_submit):
                continue  # our rerun does not show yet
            item.status = i.status
            if i.status in ENDED_STATUSES:
                item.final = True
                newly.append(
                    WatchRecord(
                        item.unit,
                        i.job_name,
                        i.plan_time,
                        i.job_id,
                        i.instance_id,
                        i.status,
                        i.submit_time,
                        i.start_time,
                        i.end_time,
                        self._clock.wall(),
                    )
                )
        return newly

    def record(self, lines: Sequence[str]) -> str | None:
        """Append ``lines`` to the sidecar (mode 0600, like the journal). Not fsynced: it
        informs ``report`` and ``status`` and decides nothing.

        So a sidecar that cannot be written (the journal's folder read-only, a full disk)
        does not end the watch, nor change the run's exit code: the first failure returns
        the line that says so, and the sidecar is not tried again (records after a gap
        would pass for all there is)."""
        if not lines or self._path is None:
            return None
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                # A record cut short (a watch killed mid-write) ends its line first: glued
                # to it, the next record would be skipped with it.
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                f.write(("\n" if torn else "") + "".join(line + "\n" for line in lines))
        except OSError as exc:
            path, self._path = self._path, None
            return (
                f"watch: cannot keep the final statuses in {path} "
                f"({exc.strerror or exc}): the watch goes on, but `bulkrerun report` will not "
                "show the instance statuses it sees from now on."
            )
        return None

    def counts(self) -> dict[str, Counter[str]]:
        jobs: dict[str, Counter[str]] = {}
        for item in self.items.values():
            jobs.setdefault(item.key[0], Counter())[item.status or NOT_LISTED] += 1
        return jobs

    def unfinished_units(self) -> set[str]:
        """Units whose reruns have not all shown a final status: an instance not final, or a
        window one of whose queries has not answered yet (its instances are not known)."""
        units = {item.unit for item in self.items.values() if not item.final}
        for k, q in enumerate(self.queries):
            if k not in self.seen:
                units.update(
                    w.unit
                    for w in self.windows
                    if q.key in w.jobs and q.low <= w.end_time and w.begin_time <= q.high
                )
        return units

    def finished_lines(self, unfinished: set[str], run: int, journal: float) -> list[str]:
        """The sidecar's lines for the units seen finish since the last call (all but
        ``unfinished``), as run ``run``'s watch of the journal created at ``journal``: so
        that ``status`` counts them as seen to finish after a later watch stopped before it
        saw them again."""
        new = [u for u in self.units if u not in unfinished and u not in self.finished]
        self.finished.update(new)
        wall = self._clock.wall()
        return [finished_line(u, run, journal, wall) for u in new]

    @property
    def done(self) -> bool:
        return (
            bool(self.seen)
            and len(self.seen) == len(self.queries)
            and all(item.final for item in self.items.values())
        )


class ListTrouble:
    """How long the instance list has been failing during a watch, a verification or a
    selection, and when to say so. ``until_wall``: when the watch times out (epoch s); None
    for a verification (or, with ``selecting``, the selection of ``[[select]]`` entries),
    which asks until its retries run out.

    Pure: told each list call's outcome as it comes (retries included), with the clock's
    readings, it returns the line to print, if any. A failure is a ``RETRY`` outcome (a 5xx,
    a 429, a connection that failed or timed out: no answer); any other outcome is an
    answer, a refusal too, and ends the trouble. One tracker for the whole list, not one per
    job: the jobs' lists are one API behind one gateway, and while some of them answer the
    service is up (a job whose own list keeps failing is warned of when its query gives up).
    """

    __slots__ = ("_noticed", "_selecting", "_since", "_since_wall", "_until_wall")

    def __init__(self, until_wall: float | None, *, selecting: bool = False) -> None:
        self._until_wall = until_wall
        self._selecting = selecting
        self._since: float | None = None  # the first failure since the last answer (monotonic)
        self._since_wall = 0.0  # the same instant, epoch s
        self._noticed: float | None = None  # the last notice given (monotonic)

    def failed(self, outcome: Outcome, now: float, wall: float) -> str | None:
        """A list call failed at ``now`` (monotonic; ``wall`` is the same instant in epoch s).
        The notice to print once the failures have lasted :data:`LIST_NOTICE_AFTER_S`, then
        at most every :data:`LIST_NOTICE_EVERY_S`; None otherwise."""
        if self._since is None:
            self._since, self._since_wall = now, wall
        failing = now - self._since
        if failing < LIST_NOTICE_AFTER_S:
            return None
        if self._noticed is not None and now - self._noticed < LIST_NOTICE_EVERY_S:
            return None
        self._noticed = now
        said = (
            f"the instance list has been failing for {duration(failing)} (since "
            f"{_iso(round(self._since_wall * 1000))}; last: {_what_failed(outcome)})."
        )
        if self._selecting:
            return (
                f"select: {said} Each [[select]] entry's list is asked until its retries run "
                "out; Ctrl-C stops, and no rerun has been sent."
            )
        if self._until_wall is None:
            return (
                f"verify: {said} Each held unit's list is asked until its retries run out; "
                "Ctrl-C stops, and the units not decided stay held."
            )
        return (
            f"watch: {said} Following goes on until {_iso(round(self._until_wall * 1000))}, "
            "when the watch times out; Ctrl-C stops following, and the reruns already sent "
            "stand."
        )

    def observer(self, clock: Clock, say: Callable[[str], None]) -> Callable[[Outcome], None]:
        """An ``on_outcome`` for :class:`InstanceLister`: each list call's outcome, told to
        this tracker at ``clock``'s readings; what it has to say goes to ``say``."""

        def observe(outcome: Outcome) -> None:
            if outcome.kind is Kind.RETRY:
                line = self.failed(outcome, clock.now(), clock.wall())
            else:
                line = self.answered(clock.now())
            if line is not None:
                say(line)

        return observe

    def answered(self, now: float) -> str | None:
        """A list call was answered at ``now``: the line saying so, if a notice was given."""
        since, noticed = self._since, self._noticed
        self._since = self._noticed = None
        if since is None or noticed is None:
            return None
        who, what = (
            ("select", "selecting")
            if self._selecting
            else ("verify", "verifying")
            if self._until_wall is None
            else ("watch", "following the reruns")
        )
        return (
            f"{who}: the instance list answers again, after {duration(now - since)} of "
            f"failures; {what} goes on."
        )


def _what_failed(o: Outcome) -> str:
    """A failed call's status, error code and message (the message scrubbed of secrets by the
    transport, as every message from the service is), or what happened without an answer."""
    if o.status is None:
        return o.reason
    return " ".join(str(part) for part in (o.status, o.error_code, o.error_msg or o.reason) if part)


async def watch(
    journal: Journal,
    transport: ListTransport,
    *,
    pacer: Pacer,
    clock: Clock,
    console: Console,
    poll: float = 2.0,
    # A deadline on the injected clock, not a cancel scope: the watch ends with a summary of
    # what finished, which cancelling it from outside would lose.
    timeout: float = 3600,  # noqa: ASYNC109
    on_progress: Callable[[WatchSummary], None] | None = None,
) -> WatchSummary:
    """Poll the instances of the journal's done units until our reruns of them reach a
    final status (or ``timeout`` seconds pass); print progress and a table per job on
    ``console``; append each final status to ``PATH.watch``.

    An instance counts once the list shows *our* rerun: for an instance unit a run submitted
    after the one we asked to rerun, for a window unit a run submitted or started after our
    request. Until then it is "not yet listed".

    A list that keeps failing is asked again until the timeout; past a minute the console
    says what fails, since when and until when (:class:`ListTrouble`).

    ``on_progress`` hears the summary so far before the first poll and after each: a signal
    cancels the watch from outside (see ``cli._watch``), and the run's end record still
    says how many units it had not seen finish.
    """
    state = journal.state()
    done = [u for u, s in state.units.items() if s is UnitState.DONE]
    summary = WatchSummary()
    if not done:
        if on_progress is not None:
            on_progress(summary)
        console.print(str(summary), highlight=False, markup=False)
        return summary
    await journal.flush()
    targets = load_targets(journal, state, done)
    watcher = _Watcher(targets, watch_path(journal.path), clock)
    started = clock.now()
    deadline = started + timeout
    trouble = ListTrouble(until_wall=clock.wall() + timeout)
    observe = trouble.observer(
        clock, lambda line: console.print(line, highlight=False, markup=False)
    )
    lister = InstanceLister(transport, pacer=pacer, clock=clock, on_outcome=observe)
    shown = ""
    warned: set[Key] = set()

    run = state.runs[-1].n if state.runs else 0  # the run this watch is part of

    def so_far(unfinished: set[str]) -> WatchSummary:
        return WatchSummary(
            watcher.counts(),
            seconds=clock.now() - started,
            units=len(targets),
            unfinished_units=len(unfinished),
        )

    if on_progress is not None:
        on_progress(so_far(watcher.unfinished_units()))

    async def one(q: _Query) -> list[ListedInstance] | ListFailed:
        try:
            return await lister.list(q.key[0], q.key[1], min_plan_time=q.low, max_plan_time=q.high)
        except ListFailed as exc:
            return exc

    while True:
        indexes = watcher.open_queries()
        queries = [watcher.queries[k] for k in indexes]
        for k, result in zip(indexes, await gather_limited(one, queries), strict=True):
            q = watcher.queries[k]
            if isinstance(result, ListFailed):
                if q.key not in warned:
                    warned.add(q.key)
                    console.print(f"watch: {result}", highlight=False, markup=False)
                if result.refused:
                    watcher.seen.add(k)  # asking again gets the same refusal
                    for item in watcher.items.values():
                        if item.key == q.key and q.low <= item.plan_time <= q.high:
                            item.final = True
                continue
            watcher.seen.add(k)
            newly = [r.to_json(state.header.created) for r in watcher.update(q, result)]
            if (unkept := watcher.record(newly)) is not None:
                console.print(unkept, highlight=False, markup=False)
        unfinished = watcher.unfinished_units()
        # Said after the round's instances, as the summary the run's end record keeps is.
        lines = watcher.finished_lines(unfinished, run, state.header.created)
        if (unkept := watcher.record(lines)) is not None:
            console.print(unkept, highlight=False, markup=False)
        summary = so_far(unfinished)
        if clock.now() >= deadline and not watcher.done:
            summary.timed_out = True
        if on_progress is not None:
            on_progress(summary)
        line = _progress(summary)
        if line != shown:
            console.print(line, highlight=False, markup=False)
            shown = line
        if watcher.done or summary.timed_out:
            break
        await clock.sleep(min(poll, max(0.0, deadline - clock.now())))
    console.print(_table(summary))
    console.print(str(summary), highlight=False, markup=False)
    return summary


def _progress(s: WatchSummary) -> str:
    n = s.total()
    final = n - s.unfinished
    return (
        f"watch: {final:,} of {counted(n, 'rerun instance')} finished ({s.succeeded:,} succeeded, "
        f"{s.failed:,} failed), {s.unfinished:,} "
        + (
            _undefined_share(odd)
            if (odd := _undefined(s))
            else "waiting, running or not yet listed"
        )
    )


def _table(s: WatchSummary) -> Table:
    table = Table(title="reruns by job", title_justify="left")
    for col in ("job", "instances", "success", "failed", "other", "not finished"):
        table.add_column(col, justify="left" if col == "job" else "right")
    for job in sorted(s.jobs):
        c = s.jobs[job]
        n = sum(c.values())
        ok = c["success"]
        failed = sum(c[x] for x in FAILED_STATUSES)
        unfinished = _unfinished(c)
        other = n - ok - failed - unfinished
        table.add_row(
            escape(job), f"{n:,}", f"{ok:,}", f"{failed:,}", f"{other:,}", f"{unfinished:,}"
        )
    table.add_section()
    table.add_row(
        "total",
        f"{s.total():,}",
        f"{s.succeeded:,}",
        f"{s.failed:,}",
        f"{s.total() - s.succeeded - s.failed - s.unfinished:,}",
        f"{s.unfinished:,}",
    )
    return table
