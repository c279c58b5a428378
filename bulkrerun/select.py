"""``[[select]]``: find the instances to rerun through the instance-list API.

An outage is described by what failed, not by a list of ids: a ``[[select]]`` entry names
jobs, a plan-time window and statuses, and this module asks the service which instances
match (``GET /v2/{project_id}/factory/jobs/{job_name}/instances/detail``). Each instance found
carries exactly the ``job_id``, ``plan_time`` and ``submit_time`` a mode-A request needs, so
the planner turns the selection into ``task_retrys`` batches of exactly those instances.

Two layers:

- :class:`InstanceLister`, the client of the list API, shared with :mod:`bulkrerun.verify`.
  Every GET goes through the run's :class:`~bulkrerun.pacing.Pacer` (the same limiter, the
  same adaptive rate and breaker as the rerun POSTs, since both count against one quota),
  and through the transport that signs and classifies the rerun calls. A GET changes
  nothing on the service, so what is ``HELD`` for a rerun (timeout, connection lost, 5xx) is
  simply retried, like ``RETRY``. Pages are read with ``limit`` 1000 and ``offset``; a read
  counts only if it is provably complete (see :meth:`InstanceLister.list`).
- :func:`query_selections` and :func:`selections_for_run`, what ``plan`` and ``run`` call.
  ``run`` records the selection in the journal when it starts; a resume reuses the recorded
  selection instead of asking again (the service's answer has changed by then: the instances
  rerun meanwhile no longer show ``fail``), unless ``--reselect`` is given or the entry
  changed since (then it is queried again, with a note).

Statuses change while a selection is read: in an outage other people and tools rerun
instances too. So the list is never filtered by status on the service, where offset paging
over a shrinking set skips instances; each job's whole window is read, without a filter,
and the statuses are picked here. What a selection then means, precisely: every instance of
the window is read exactly once, and it is selected if and only if the status it showed when
read is one of the entry's. An instance that keeps a selected status throughout the listing
is therefore always selected, one that never has it is never selected, and one that changes
while the listing runs is judged by what it showed when its page was read (with the
``submit_time`` of that moment). That last race is the one any read-then-rerun has, however
fast the read: an instance rerun by someone else after it was read is selected here just as
it would be if they reran it a second after the listing ended.

Reach: the list API searches plan times at most one month back. A window longer than that is
refused here before anything is sent; a window that starts more than a month before the
service's "now" is refused by the service (``DLF.0104`` on the fake), and that refusal is
turned into a message that names the entry and says what to do. The client cannot check the
second case itself: the service's notion of now is what counts (the demo's world is fixed in
2024).
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import quote

import anyio
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bulkrerun.clock import Clock
from bulkrerun.errors import AuthRefused, BadInput, Fatal, ManifestError
from bulkrerun.journal import Journal, JournalState, RunRecord
from bulkrerun.manifest import MAX_SELECT_SPAN_MS, Manifest, SelectEntry
from bulkrerun.outcome import PROXY_AUTH_REQUIRED, PROXY_REFUSED_STOP, Kind, Outcome, wrong_endpoint
from bulkrerun.pacing import Pacer
from bulkrerun.selection import FoundInstances
from bulkrerun.text import counted, duration

__all__ = [
    "LIST_LIMIT",
    "LIST_READS",
    "InstanceLister",
    "ListFailed",
    "ListTransport",
    "ListedInstance",
    "list_path",
    "query_selections",
    "select_entry",
    "selections_for_run",
]

LIST_LIMIT = 1000
"""Instances per page: the most the list API gives at once."""

LIST_CONCURRENCY = 4
"""List queries in flight at once. The pacer sets the rate; this only hides the latency of a
few round trips (a dozen jobs at 200 ms each would otherwise take seconds at any rate)."""

LIST_READS = 3
"""Reads of a job's whole window before giving up when the list changes while it is read."""

SELECT_PROGRESS_EVERY_S = 15.0
"""While a ``[[select]]`` entry's lists are read, how often to say how far the reading is
(and not before this long): a month of forty one-minute jobs is 1,800 pages, three minutes
at the default rate, before the entry's one line of what it found."""

MAX_LISTED = 200_000
"""The most instances one job's window may hold: a month of a job run every minute is 44,640.
A list that counts more is refused rather than read page after page (a list that never
ends would be read until the memory ran out)."""

MONTH_REFUSAL = "DLF.0104"
"""The fake service's code for a ``min_plan_time`` more than one month back. The real
service's code is not documented, so a refusal whose message mentions "month" counts too."""

Note = Callable[[str], None]
T = TypeVar("T")
R = TypeVar("R")


class ListTransport(Protocol):
    """What the list client needs of a transport (``HttpTransport`` provides it)."""

    @property
    def project_id(self) -> str: ...

    async def get_json(
        self, path: str, query: Mapping[str, str | int], workspace: str
    ) -> tuple[Outcome, Any]: ...


def list_path(project_id: str, job_name: str) -> str:
    """The path of the instance-list API; the job name is encoded as one path segment."""
    project, job = quote(project_id, safe=""), quote(job_name, safe="")
    return f"/v2/{project}/factory/jobs/{job}/instances/detail"


@dataclass(frozen=True, slots=True)
class ListedInstance:
    """One instance as the list API shows it now (times in epoch ms; 0 when not reached)."""

    job_name: str
    job_id: int
    plan_time: int
    submit_time: int
    status: str
    start_time: int = 0
    end_time: int = 0
    instance_id: int | None = None


class ListFailed(Fatal):
    """The list API refused a query, did not answer within the attempts allowed, or its pages
    did not add up to a complete list within :data:`LIST_READS` reads.

    ``outcome`` is the last attempt's; ``refused`` says it was a definite refusal (a 4xx that
    asking again would not change) rather than a service that did not answer.
    """

    def __init__(self, job_name: str, outcome: Outcome, attempts: int) -> None:
        self.job_name = job_name
        self.outcome = outcome
        self.attempts = attempts
        super().__init__(f"instance list of job {job_name}: {self.reason}")

    @property
    def refused(self) -> bool:
        o = self.outcome
        return o.kind is Kind.FAILED and o.status is not None and o.status >= 400

    @property
    def reason(self) -> str:
        """A short phrase for messages and for counting reasons."""
        o = self.outcome
        if self.refused:
            code = f" {o.error_code}" if o.error_code else ""
            return f"refused ({o.status}{code}): {o.error_msg or o.reason}"
        if o.kind is Kind.FAILED:
            return o.reason
        what = f"{o.status} " if o.status is not None else ""
        return f"no answer after {counted(self.attempts, 'attempt')} (last: {what}{o.reason})"

    @property
    def month_reach(self) -> bool:
        """The refusal says the plan times are further back than the API searches."""
        o = self.outcome
        return self.refused and (
            o.error_code == MONTH_REFUSAL or "month" in (o.error_msg or "").lower()
        )


# -- the answer, as it crosses the boundary -----------------------------------------------------


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # lax ints take true as 1: a job id of 1 would be rerun
        raise ValueError("a boolean, not a number")
    return value


def _printable(text: str) -> str:
    if not text.isprintable():  # escape sequences would reach the terminal and the journal
        raise ValueError("holds control characters")
    return text


_LATEST_MS = 4_102_444_800_000  # 2100-01-01: a time past it is no time of a job's run
_Id = Annotated[int, BeforeValidator(_no_bool), Field(gt=0, le=2**63 - 1)]
_Ms = Annotated[int, BeforeValidator(_no_bool), Field(gt=0, le=_LATEST_MS)]
_MsOrZero = Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=_LATEST_MS)]
_Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]


class _ApiInstance(BaseModel):
    # Lax and tolerant: only the fields we use are checked; numbers given as digit strings
    # are read as numbers. But what is checked is checked as a rerun request would be: ids
    # and epoch-millisecond times in range, text printable and short. An instance we cannot
    # read makes the page unreadable (below): better no selection than a wrong one.
    model_config = ConfigDict(extra="ignore")

    job_name: _Text | None = None
    job_id: _Id
    plan_time: _Ms
    submit_time: _Ms
    status: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_printable)]
    start_time: _MsOrZero | None = None
    end_time: _MsOrZero | None = None
    instance_id: _Id | None = None


class _ApiPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    total: Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=MAX_LISTED)]
    instances: list[_ApiInstance] | None = None


UNREADABLE = Outcome(Kind.FAILED, status=200, reason="the answer is not an instance list")


def _page(job_name: str, parsed: Any) -> tuple[int, list[ListedInstance]]:
    items = parsed.get("instances") if isinstance(parsed, dict) else None
    if isinstance(items, list) and len(items) > LIST_LIMIT:
        # More than was asked for: not validated item by item (a page of a million empty
        # objects made pydantic build a million errors, 1.75 GB).
        raise ListFailed(job_name, UNREADABLE, 1)
    try:
        page = _ApiPage.model_validate(parsed)
    except ValidationError:
        raise ListFailed(job_name, UNREADABLE, 1) from None
    # The job's name and the statuses are a few strings, each parsed afresh per instance:
    # shared instead (a selection of 400,000 instances kept 100 bytes apiece of them).
    return page.total, [
        ListedInstance(
            job_name=job_name if i.job_name in (None, job_name) else i.job_name,
            job_id=i.job_id,
            plan_time=i.plan_time,
            submit_time=i.submit_time,
            status=sys.intern(i.status),
            start_time=i.start_time or 0,
            end_time=i.end_time or 0,
            instance_id=i.instance_id,
        )
        for i in page.instances or ()
    ]


# -- the client ----------------------------------------------------------------------------------


class InstanceLister:
    """The instance-list API, paced and retried like the rerun calls.

    One GET follows the engine's loop (see :mod:`bulkrerun.pacing`): book a slot, wait until
    the pacer says it is due, send, tell the pacer. ``RETRY`` and ``HELD`` outcomes wait the
    pacer's backoff and go again, up to its ``max_attempts``; ``FATAL`` raises
    :class:`AuthRefused`; a refusal raises :class:`ListFailed` at once. ``on_outcome``, when
    given, is told every GET's outcome (a ``HELD`` one as ``RETRY``) as it comes, retries
    included: the watch tells from it how long the list has been failing.
    """

    __slots__ = ("_clock", "_on_outcome", "_pacer", "_transport", "gets")

    def __init__(
        self,
        transport: ListTransport,
        *,
        pacer: Pacer,
        clock: Clock,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._transport = transport
        self._pacer = pacer
        self._clock = clock
        self._on_outcome = on_outcome
        self.gets = 0  # requests sent, retries included

    @property
    def clock(self) -> Clock:
        return self._clock

    async def list(
        self,
        job_name: str,
        workspace: str,
        *,
        min_plan_time: int,
        max_plan_time: int,
        on_page: Callable[[int], None] | None = None,
    ) -> list[ListedInstance]:
        """Every instance of ``job_name`` with a plan time in ``min..max`` (both inclusive, as
        sent; callers filter their own bounds), whatever its status, sorted by plan time.

        Why no status filter: the list is paged by ``offset``, and offset paging is only
        sound over a set that does not change between pages. The set filtered by status
        does change (an instance rerun by someone else leaves ``fail``, and every instance
        behind it moves one place up, so the next page starts one instance too far: 300
        reruns between two pages skip 300 failed instances). The set of instances planned in
        a window does not change when their statuses do; it changes only when instances are
        created or removed in it, which for a window in the past is rare (a window that
        reaches into the present gains an instance per period as the scheduler plans it).

        Why this is checked rather than assumed: a read of the window counts only if every
        page gave the same ``total`` and the pages held ``total`` distinct instances between
        them. With the set unchanged, that is every instance of it, whatever order the
        service lists them in (the reference promises none; the fake sorts by plan time).
        Otherwise the window is read again from the start, up to :data:`LIST_READS` times,
        then :class:`ListFailed` says so. A read that finds a changed ``total`` stops at
        that page, so a retry costs at most the pages already read.

        The cost: every instance of the window is read, not only the failed ones, at
        :data:`LIST_LIMIT` a page against the rerun calls' quota. A window of hours or days
        of hourly or 15-minute jobs is one page per job (fewer requests than one query per
        status); the dearest case, a one-minute job over the whole month the API reaches,
        is 45 pages, under 5 s at the default 10 requests per second.

        ``on_page``, when given, is told the number of instances of each page as it is read.
        """
        path = list_path(self._transport.project_id, job_name)
        problem = ""
        for _ in range(LIST_READS):
            found, problem = await self._read_window(
                job_name, path, workspace, min_plan_time, max_plan_time, on_page
            )
            if not problem:
                return sorted(found, key=lambda i: (i.plan_time, i.job_id))
        reason = (
            f"the list could not be read completely, {LIST_READS} times in a row: the pages "
            f"did not add up ({problem}), so instances were being planned or removed in the "
            "window, or the service changed their order between pages. If the window reaches "
            "into the present, end it in the past; then run the same command again"
        )
        raise ListFailed(job_name, Outcome(Kind.FAILED, status=200, reason=reason), LIST_READS)

    async def _read_window(
        self,
        job_name: str,
        path: str,
        workspace: str,
        low: int,
        high: int,
        on_page: Callable[[int], None] | None,
    ) -> tuple[Sequence[ListedInstance], str]:
        """One read of the window, page by page: ``(instances, "")`` when it is complete,
        ``(_, what went wrong)`` when it is not (see :meth:`list`)."""
        # An instance is (job_id, plan_time), as for a rerun; instance_id is added so that two
        # rows of one plan time (should the service list, say, a manual run beside the
        # scheduled one) count as two and do not make a complete read look incomplete.
        found: dict[tuple[int, int, int | None], ListedInstance] = {}
        first_total: int | None = None
        offset = 0
        while True:
            query: dict[str, str | int] = {
                "min_plan_time": low,
                "max_plan_time": high,
                "limit": LIST_LIMIT,
                "offset": offset,
            }
            total, items = _page(job_name, await self._get(job_name, path, query, workspace))
            if on_page is not None:
                on_page(len(items))
            if first_total is None:
                first_total = total
            elif total != first_total:
                return (), f"{first_total:,} instances, then {total:,} at offset {offset:,}"
            new = 0
            for item in items:
                key = (item.job_id, item.plan_time, item.instance_id)
                new += key not in found
                found[key] = item
            offset += len(items)
            # Ends when the pages reach the total, or bring nothing new: a service that
            # ignored offset would otherwise be asked forever.
            if not items or not new or offset >= total:
                break
        if len(found) != first_total:
            return (), (
                f"the pages held {counted(len(found), 'distinct instance')} of the "
                f"{first_total:,} the service counted"
            )
        return tuple(found.values()), ""

    async def _get(
        self, job_name: str, path: str, query: Mapping[str, str | int], workspace: str
    ) -> Any:
        pacer, clock = self._pacer, self._clock
        attempt = 0
        while True:
            attempt += 1
            slot = pacer.reserve(clock.now())
            try:
                while (wait := pacer.wait(slot, clock.now())) > 0:
                    await clock.sleep(wait)
            except BaseException:
                pacer.cancel(slot)  # cancelled while waiting: give the slot back
                raise
            while (wait := pacer.send_wait(slot, clock.now())) > 0:  # its turn at the gate
                await clock.sleep(wait)
            sent_at = clock.now()
            self.gets += 1
            outcome, parsed = await self._transport.get_json(path, query, workspace)
            if outcome.kind is Kind.FATAL and outcome.status == PROXY_AUTH_REQUIRED:
                raise AuthRefused(PROXY_REFUSED_STOP)
            if outcome.kind is Kind.FATAL:
                # Under AK/SK, a reason after a colon says our clock is off (the transport
                # reads it off the answer's Date): the credentials may be right.
                _, _, off = outcome.reason.partition(": ")
                fix = (
                    f"{off}, and AK/SK signatures dated more than 15 minutes from the "
                    "gateway's time are refused: set this machine's clock right (NTP)"
                    if off
                    else "Check the AK/SK or token and the user's permissions on DataArts Factory"
                )
                raise AuthRefused(
                    f"the service refused our credentials or permissions reading the instance "
                    f"list of job {job_name} ({outcome.status} {outcome.error_code or ''}: "
                    f"{outcome.error_msg or outcome.reason}). {fix[0].upper()}{fix[1:]}, then "
                    "run the same command again."
                )
            if outcome.kind is Kind.HELD:
                # Unknown for a rerun, harmless for a read: a GET is retried like any RETRY,
                # and its reason says what happened to a read ("unknown whether it ran" is
                # a rerun's worry).
                read = "no answer in time" if outcome.status is None else "server error"
                outcome = outcome._replace(kind=Kind.RETRY, reason=read)
            pacer.on_outcome(outcome, clock.now(), sent_at=sent_at, final=False)
            if self._on_outcome is not None:
                self._on_outcome(outcome)
            if outcome.kind is Kind.DONE:
                return parsed
            if outcome.kind is Kind.FAILED:
                raise ListFailed(job_name, outcome, attempt)
            delay = pacer.retry_delay(outcome, attempt, final=False)
            if delay is None:
                raise ListFailed(job_name, outcome, attempt)
            await clock.sleep(delay)


async def gather_limited(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int = LIST_CONCURRENCY
) -> list[R]:
    """``[await fn(x) for x in items]`` with up to ``limit`` running at once, in order.

    The first error cancels the rest and is raised as itself, not wrapped in an exception
    group, so callers handle :class:`ListFailed` or :class:`AuthRefused` as usual. Written
    here because anyio has no bounded gather, and ``asyncio.gather`` neither bounds nor
    cancels structurally; it is a task group and a capacity limiter.
    """
    results: dict[int, R] = {}
    errors: list[Exception] = []
    limiter = anyio.CapacityLimiter(limit)

    async def one(index: int, item: T) -> None:
        async with limiter:
            try:
                results[index] = await fn(item)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the group
                errors.append(exc)
                tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    if errors:
        raise errors[0]
    return [results[index] for index in range(len(items))]


# -- selecting ------------------------------------------------------------------------------------


async def select_entry(
    entry: SelectEntry, lister: InstanceLister, *, manifest_name: str, on_note: Note
) -> FoundInstances:
    """The instances of one ``[[select]]`` entry: its jobs' instances with a plan time in
    ``[begin, end)`` and one of its statuses, job by job in the entry's order, each job's by
    plan time. Notes what was found per job and status.

    Raises :class:`ManifestError` (nothing sent) for a window longer than the list API
    reaches and :class:`BadInput` when the service refuses the query (unknown job, window too
    far back); :class:`ListFailed` (exit 3) when it does not answer, or its pages keep
    changing (see :meth:`InstanceLister.list`).
    """
    label = entry.label
    span = entry.end_ms - entry.begin_ms
    if span > MAX_SELECT_SPAN_MS:
        raise ManifestError(
            [
                f"{manifest_name}: {label}: the plan times searched span {span / 86_400_000:.1f} "
                "days; the instance-list API searches at most one month (31 days): split the "
                "window into several [[select]] entries"
            ]
        )
    statuses = frozenset(entry.statuses)
    statuses_shown = " or ".join(entry.statuses)
    counts: dict[str, Counter[str]] = {job: Counter() for job in entry.job_names}
    progress = _Progress(label, len(entry.job_names), statuses_shown, lister.clock, on_note)

    async def one(job: str) -> FoundInstances:
        try:
            # The API's bounds are inclusive; the entry's end is exclusive. No status filter:
            # the statuses are picked here, from one complete read (see InstanceLister.list).
            listed = await lister.list(
                job,
                entry.workspace,
                min_plan_time=entry.begin_ms,
                max_plan_time=entry.end_ms - 1,
                on_page=progress.page,
            )
        except ListFailed as exc:
            if not exc.refused:
                raise
            raise BadInput(_refusal_message(manifest_name, label, exc)) from None
        # Picked as soon as the job's list is read, so that only the jobs being read keep
        # their whole list (every status, every field): 40 jobs of 10,000 instances kept
        # them all until the last job was read. The list is sorted by (plan_time, job_id),
        # so two rows of one instance (two instance ids) are next to each other: the first
        # is taken. Into the selection's columns (see bulkrerun.selection).
        picked = FoundInstances()
        last: tuple[int, int] | None = None
        for i in listed:
            key = (i.plan_time, i.job_id)
            if (
                key != last
                and i.status in statuses
                and entry.begin_ms <= i.plan_time < entry.end_ms
                and i.job_name == job
            ):
                last = key
                counts[job][i.status] += 1
                picked.add(job, i.job_id, i.plan_time, i.submit_time)
        progress.job_read(len(picked))
        return picked

    results = await gather_limited(one, entry.job_names)
    found = FoundInstances.joined(results)
    lines = [f"{label}: found {counted(len(found), 'instance')} with status {statuses_shown}"]
    for job in entry.job_names:
        seen = ", ".join(f"{counts[job][s]:,} {s}" for s in entry.statuses if counts[job][s])
        lines.append(f"  {job}: {seen or 'none'}")
    on_note("\n".join(lines))
    return found


class _Progress:
    """How far the reading of one entry's lists is, said every
    :data:`SELECT_PROGRESS_EVERY_S` on the lister's clock once it has lasted that long: a
    large selection is minutes of pages, and its line of what it found comes at the end.
    Told each page as it is read (see :meth:`InstanceLister.list`), and each job once its
    list is complete and picked."""

    __slots__ = (
        "_clock",
        "_label",
        "_last",
        "_note",
        "_start",
        "_statuses",
        "jobs",
        "jobs_read",
        "pages",
        "read",
        "selected",
    )

    def __init__(self, label: str, jobs: int, statuses: str, clock: Clock, note: Note) -> None:
        self._label, self._statuses, self._clock, self._note = label, statuses, clock, note
        self._start = self._last = clock.now()
        self.jobs, self.jobs_read, self.pages, self.read, self.selected = jobs, 0, 0, 0, 0

    def page(self, instances: int) -> None:
        self.pages += 1
        self.read += instances
        now = self._clock.now()
        if now - self._last < SELECT_PROGRESS_EVERY_S:
            return
        self._last = now
        self._note(
            f"{self._label}: reading the instance lists, {duration(now - self._start)} so far: "
            f"{self.jobs_read:,} of {counted(self.jobs, 'job')} read "
            f"({counted(self.selected, 'instance')} with status {self._statuses}), "
            f"{counted(self.pages, 'page')} of {counted(self.read, 'instance')} in all. "
            "Nothing is rerun before the lists are read."
        )

    def job_read(self, selected: int) -> None:
        self.jobs_read += 1
        self.selected += selected


def _refusal_message(manifest_name: str, label: str, exc: ListFailed) -> str:
    o = exc.outcome
    said = f"{o.error_code or o.status}: {o.error_msg or o.reason}"
    if exc.month_reach:
        hint = (
            "the instance-list API searches plan times at most one month back from now; "
            "move begin into the last month (older instances need an [[instances]] entry "
            "with their job_id, plan_time and submit_time)"
        )
    elif o.error_code == "DLF.1000":
        hint = "check the job name and the workspace"
    elif wrong_endpoint(o.status, o.error_code):
        hint = (
            "that is not the service's answer: the endpoint looks wrong (BULKRERUN_ENDPOINT, "
            "BULKRERUN_REGION or --endpoint)"
        )
    else:
        hint = "check the entry's jobs, window and statuses"
    return (
        f"{manifest_name}: {label}: the service refused the instance list of job "
        f"{exc.job_name} ({said}); {hint}. Nothing was sent."
    )


async def query_selections(
    manifest: Manifest,
    transport: ListTransport,
    *,
    pacer: Pacer,
    clock: Clock,
    on_note: Note,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> dict[str, FoundInstances]:
    """Ask the service for the instances of every ``[[select]]`` entry (label -> found).
    ``on_outcome`` hears every GET's outcome (see :class:`InstanceLister`)."""
    lister = InstanceLister(transport, pacer=pacer, clock=clock, on_outcome=on_outcome)
    return {
        entry.label: await select_entry(
            entry, lister, manifest_name=str(manifest.path), on_note=on_note
        )
        for entry in manifest.entries
        if isinstance(entry, SelectEntry)
    }


async def selections_for_run(
    manifest: Manifest,
    journal: Journal,
    transport: ListTransport,
    *,
    reselect: bool,
    pacer: Pacer,
    clock: Clock,
    on_note: Note,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> dict[str, FoundInstances]:
    """The selection a ``run`` uses: the journal's for entries it recorded and that did not
    change since, the service's for the others (or for all, with ``reselect``).

    Why reuse: after a partial run the service's answer has changed (instances rerun meanwhile
    show ``waiting`` or ``success``, and a rerun that failed again shows a new
    ``submit_time``, which is a new unit). The recorded selection keeps the run's units what
    they were, so a resume finishes exactly the work that was started.
    """
    state = journal.state()
    lister = InstanceLister(transport, pacer=pacer, clock=clock, on_outcome=on_outcome)
    name = str(manifest.path)
    out: dict[str, FoundInstances] = {}
    for entry in manifest.entries:
        if not isinstance(entry, SelectEntry):
            continue
        recorded = state.selections.get(entry.label)
        if recorded is not None and not reselect:
            run = recorded_with(state, entry.label)
            if run is not None and same_selection(run, manifest, entry.label):
                out[entry.label] = recorded  # as replayed, not copied
                on_note(
                    f"{entry.label}: {counted(len(recorded), 'instance')}, the selection the "
                    f"journal recorded in run {run.n} (not asked again; --reselect asks the "
                    "service again)"
                )
                continue
            on_note(
                f"{entry.label} changed since its selection was recorded (jobs, window, "
                "statuses or workspace); asking the service again. Instances rerun since then "
                "that failed again carry a new submit_time and are selected again."
            )
        elif recorded is not None:
            on_note(f"{entry.label}: --reselect: asking the service again")
        out[entry.label] = await select_entry(entry, lister, manifest_name=name, on_note=on_note)
    return out


# -- has the entry changed since its selection was recorded? --------------------------------------


def recorded_with(state: JournalState, label: str) -> RunRecord | None:
    """The run whose manifest the selection recorded for ``label`` came from: the latest run
    whose manifest copy has that select entry (every run records a selection for each select
    entry of its manifest, so later runs without the entry did not overwrite it)."""
    index = _index(label)
    for run in reversed(state.runs):
        tables = _select_tables(run.manifest_name, run.manifest_text)
        if tables is not None and index is not None and index < len(tables[1]):
            return run
    return None


def same_selection(run: RunRecord, manifest: Manifest, label: str) -> bool:
    """Whether ``label`` asks the same question in ``run``'s manifest copy and in ``manifest``:
    same jobs, window, statuses, workspace and time zone, as written. Compared on the parsed
    text rather than on validated entries, because validating the old copy would need its
    instance files; a difference in spelling only (a time written another way) reads as a
    change, which costs one query and a note, never a wrong reuse."""
    index = _index(label)
    new = _select_tables(str(manifest.path), manifest.text)
    if index is None or new is None or index >= len(new[1]):
        return False
    if run.manifest_sha256 == manifest.sha256:
        return True
    old = _select_tables(run.manifest_name, run.manifest_text)
    if old is None or index >= len(old[1]):
        return False
    return _question(old[0], old[1][index]) == _question(new[0], new[1][index])


def _index(label: str) -> int | None:
    if not (label.startswith("select[") and label.endswith("]")):
        return None
    digits = label[len("select[") : -1]
    return int(digits) if digits.isdigit() else None


def _select_tables(name: str, text: str) -> tuple[dict[str, Any], list[Any]] | None:
    """``([defaults], [[select]] tables)`` of a manifest's text; None if it does not parse."""
    try:
        data = (
            json.loads(text)
            if name.lower().endswith(".json")
            else tomllib.loads(text.removeprefix("\ufeff"))
        )
    except ValueError:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(data, dict):
        return None
    defaults = data.get("defaults")
    selects = data.get("select")
    return (
        defaults if isinstance(defaults, dict) else {},
        selects if isinstance(selects, list) else [],
    )


def _question(defaults: Mapping[str, Any], table: Any) -> tuple[Any, ...] | None:
    """What a select table asks the service, normalised as far as the raw text allows."""
    if not isinstance(table, dict):
        return None
    names = table.get("job_names")
    if names is None:
        names = [table.get("job_name")]
    status = table.get("status", ["fail"])
    if isinstance(status, str):
        status = [status]
    return (
        _frozen(names if isinstance(names, list) else [names]),
        table.get("begin"),
        table.get("end"),
        _frozen(status if isinstance(status, list) else [status]),
        table.get("workspace", defaults.get("workspace")),
        table.get("timezone", defaults.get("timezone")),
    )


def _frozen(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(str(v) for v in values))
