"""The job instances the fake service knows: a small model of DataArts Factory's scheduler.

A :class:`Catalog` describes a history: jobs (name, id, schedule period), the span of plan
times they were scheduled over, and an outage whose instances failed. It is a plain value and
holds no instance records: an instance exists for every multiple of its job's period (epoch
milliseconds) in ``start_ms .. now_ms``, and its original run's times are derived from a hash of
``(seed, job_id, plan_time)``. So a month of one-minute jobs costs nothing until it is read.

:class:`Instances` is the live model the server keeps per catalog: it records accepted reruns
and answers the instance-list API. A rerun is not a task: it stores the server's clock reading
at acceptance, and each read computes the status from it (``waiting`` for ``waiting_s``, then
``running`` for ``running_s``, then ``success``, or ``fail`` for a seeded ``rerun_fail_rate``
of reruns). With a :class:`~bulkrerun.clock.FakeClock` a test moves an instance through its
states by advancing time; nothing runs in the background.

Choices where the reference is silent:

- An instance is identified by ``(job_id, plan_time)``; ``submit_time`` is not compared. A
  rerun sets a new ``submit_time``, and the service's answer to a stale one is not documented;
  the lenient reading means a resend of a held request reruns again, which is exactly the
  danger bulkrerun exists to avoid, and the ledger shows it.
- Rerunning an instance that is waiting or running restarts it (no refusal).
- Mode B reruns, in plan-time order, the instances of ``job_name`` and of each listed job with
  ``begin_time <= plan_time <= end_time``, ``concurrent`` at a time: instance ``k`` waits
  ``waiting_s + (k // concurrent) * running_s`` before it runs. Workspaces are not modelled:
  jobs are looked up by name whatever the workspace.
- Times not reached yet (the start and end of a waiting instance) are ``0``; every instance
  has ``instance_type`` 0 (normal scheduling), ``version`` 1 and is never force- or
  ignore-success.
- The list is sorted by ``plan_time`` ascending, and its plan-time bounds are inclusive.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bulkrerun.clock import Clock
from bulkrerun.fake.validate import JOB_NOT_FOUND, ListQuery, Refusal

__all__ = ["DEMO_ANCHOR_MS", "Catalog", "Instances", "JobSpec", "Outage"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# 2024-11-26T20:00:00+08:00: the demo's "now"; its outage is 2024-11-25 22:00..2024-11-26 08:00
# (+08:00). configs/demo.toml is written for this world.
DEMO_ANCHOR_MS = 1_732_622_400_000


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A scheduled job: its name, its numeric id and its period in minutes."""

    name: str
    job_id: int
    period_min: int = 60

    @property
    def period_ms(self) -> int:
        return self.period_min * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Outage:
    """Instances planned in ``start_ms <= plan_time < end_ms`` failed (of ``jobs``; all if None)."""

    start_ms: int
    end_ms: int
    jobs: frozenset[str] | None = None

    def covers(self, job_name: str, plan_time: int) -> bool:
        return self.start_ms <= plan_time < self.end_ms and (
            self.jobs is None or job_name in self.jobs
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    """A history of job instances; see the module docstring for what is derived from it.

    ``now_ms`` is the catalog's own "now": the instance-list API's one-month limit and its
    default ``max_plan_time`` are measured from it, so a demo with fixed dates works whenever
    it runs. Reruns, in contrast, happen at the server clock's wall time.
    """

    jobs: tuple[JobSpec, ...]
    start_ms: int
    now_ms: int
    outage: Outage | None = None
    rerun_fail_rate: float = 0.0
    waiting_s: float = 0.2
    running_s: float = 0.5
    seed: int = 0
    # How long an accepted rerun stays out of the instance list (s): the list shows the
    # instance's previous run until then, as a service slow to list would.
    list_lag_s: float = 0.0

    def __post_init__(self) -> None:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError("catalog: job names must be unique")
        if len({job.job_id for job in self.jobs}) != len(self.jobs):
            raise ValueError("catalog: job ids must be unique")
        for job in self.jobs:
            if not job.name or job.period_min < 1:
                raise ValueError(f"catalog: job {job.name!r} needs a name and period_min >= 1")
        if self.start_ms > self.now_ms:
            raise ValueError("catalog: start_ms must not be after now_ms")
        if not 0.0 <= self.rerun_fail_rate <= 1.0:
            raise ValueError("catalog: rerun_fail_rate must be 0..1")
        if self.waiting_s < 0 or self.running_s < 0:
            raise ValueError("catalog: waiting_s and running_s must be 0 or more")
        if not 0 <= self.list_lag_s < float("inf"):
            raise ValueError("catalog: list_lag_s must be 0 or more")
        if self.outage is not None:
            if self.outage.start_ms > self.outage.end_ms:
                raise ValueError("catalog: the outage must not end before it starts")
            unknown = (self.outage.jobs or frozenset()) - set(names)
            if unknown:
                raise ValueError(f"catalog: outage names unknown jobs {sorted(unknown)}")

    def plan_times(self, job: JobSpec) -> range:
        """Every plan time of ``job``: multiples of its period in ``start_ms .. now_ms``."""
        period = job.period_ms
        first = -(-self.start_ms // period) * period  # ceiling division
        return range(first, self.now_ms, period)

    @classmethod
    def demo(cls, anchor_ms: int = DEMO_ANCHOR_MS) -> Catalog:
        """A realistic catalog: 12 jobs over the 3 days before ``anchor_ms``, one outage.

        Six jobs run every 15 minutes and six hourly. The outage covers the 10 hours from
        ``anchor - 22 h`` (with the default anchor, 2024-11-26 02:00 to 12:00 China time),
        during which all 300 instances failed. 2 % of reruns fail again.
        """
        names_periods = [
            ("ods_orders", 15),
            ("ods_payments", 15),
            ("ods_users", 60),
            ("ods_products", 60),
            ("ods_inventory", 15),
            ("ods_logistics", 60),
            ("dwd_orders", 15),
            ("dwd_payments", 15),
            ("dwd_users", 60),
            ("dwd_inventory", 60),
            ("dws_sales_hourly", 60),
            ("dws_payments_15m", 15),
        ]
        jobs = tuple(
            JobSpec(name, 917_560 + i, period) for i, (name, period) in enumerate(names_periods)
        )
        anchor = anchor_ms - anchor_ms % HOUR_MS
        return cls(
            jobs=jobs,
            start_ms=anchor - 3 * DAY_MS,
            now_ms=anchor_ms,
            outage=Outage(anchor - 22 * HOUR_MS, anchor - 12 * HOUR_MS),
            rerun_fail_rate=0.02,
            seed=1,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Catalog:
        """A catalog from parsed TOML/JSON with the fields of this class (see ``from_file``)."""
        model = _CatalogModel.model_validate(data)
        outage = None
        if model.outage is not None:
            jobs = None if model.outage.jobs is None else frozenset(model.outage.jobs)
            outage = Outage(model.outage.start_ms, model.outage.end_ms, jobs)
        return cls(
            jobs=tuple(JobSpec(j.name, j.job_id, j.period_min) for j in model.jobs),
            start_ms=model.start_ms,
            now_ms=model.now_ms,
            outage=outage,
            rerun_fail_rate=model.rerun_fail_rate,
            waiting_s=model.waiting_s,
            running_s=model.running_s,
            seed=model.seed,
            list_lag_s=model.list_lag_s,
        )

    @classmethod
    def from_file(cls, path: Path | str) -> Catalog:
        """Load a catalog from TOML (``.toml``) or JSON. For example::

        start_ms = 1732377600000
        now_ms = 1732636800000
        rerun_fail_rate = 0.02          # optional, like waiting_s, running_s, seed, list_lag_s
        outage = { start_ms = 1732557600000, end_ms = 1732593600000 }  # jobs = [...]
        [[jobs]]
        name = "ods_orders"
        job_id = 917567
        period_min = 60
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            return cls.from_mapping(data)
        except (OSError, ValueError) as exc:  # ValidationError and TOMLDecodeError included
            detail = str(exc) if not isinstance(exc, ValidationError) else _describe(exc)
            raise ValueError(f"{path}: not a valid catalog: {detail}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _JobModel(_Strict):
    name: str
    job_id: int
    period_min: int = 60


class _OutageModel(_Strict):
    start_ms: int
    end_ms: int
    jobs: list[str] | None = None


class _CatalogModel(_Strict):
    jobs: list[_JobModel]
    start_ms: int
    now_ms: int
    outage: _OutageModel | None = None
    rerun_fail_rate: float = 0.0
    waiting_s: float = 0.2
    running_s: float = 0.5
    seed: int = 0
    list_lag_s: float = 0.0


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


def _digest(*parts: int) -> int:
    """A stable 64-bit hash of integers: the fake's only source of per-instance variety."""
    data = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(slots=True)
class _Rerun:
    """The last accepted rerun of one instance (``count`` reruns so far)."""

    count: int
    submit_ms: int  # server wall time at acceptance: the instance's new submit_time
    accepted_at: float  # server monotonic time at acceptance: what the status is computed from
    wait_s: float  # time spent waiting before running (queued behind ``concurrent`` slots)
    fails: bool
    previous: _Rerun | None = None  # the rerun before it, listed until it is list_lag_s old


class Instances:
    """The live state of a catalog's instances on one server: reruns and the list API."""

    __slots__ = ("_clock", "_jobs", "_reruns", "catalog")

    def __init__(self, catalog: Catalog, clock: Clock) -> None:
        self.catalog = catalog
        self._clock = clock
        self._jobs = {job.name: job for job in catalog.jobs}
        self._reruns: dict[tuple[str, int], _Rerun] = {}

    def has_job(self, name: str) -> bool:
        return name in self._jobs

    def rerun_instances(
        self, job_name: str, tasks: Sequence[tuple[int, int, int]]
    ) -> Refusal | None:
        """Mode A: rerun the listed instances of ``job_name``; all exist, or nothing is done."""
        job = self._jobs.get(job_name)
        if job is None:
            return JOB_NOT_FOUND
        plan_times = self.catalog.plan_times(job)
        for job_id, plan_time, _submit_time in tasks:
            if job_id != job.job_id or plan_time not in plan_times:
                return Refusal(
                    400,
                    "DLF.1001",
                    f"The job instance does not exist: job {job_name}, job_id {job_id}, "
                    f"plan_time {plan_time}.",
                )
        wait = self.catalog.waiting_s
        self._start(((job, plan_time) for _, plan_time, _ in tasks), lambda _k: wait)
        return None

    def rerun_window(
        self, job_names: Iterable[str], begin_ms: int, end_ms: int, concurrent: int
    ) -> Refusal | None:
        """Mode B: rerun the instances of the jobs planned in ``begin_ms..end_ms`` inclusive."""
        jobs: list[JobSpec] = []
        for name in dict.fromkeys(job_names):  # de-duplicated, first mention first
            job = self._jobs.get(name)
            if job is None:
                return JOB_NOT_FOUND
            jobs.append(job)
        chosen = sorted(
            (
                (plan_time, order, job)
                for order, job in enumerate(jobs)
                for plan_time in self._window(job, begin_ms, end_ms)
            ),
            key=lambda item: (item[0], item[1]),
        )
        waiting, running = self.catalog.waiting_s, self.catalog.running_s
        self._start(
            ((job, plan_time) for plan_time, _, job in chosen),
            lambda k: waiting + (k // concurrent) * running,
        )
        return None

    def _start(
        self, targets: Iterable[tuple[JobSpec, int]], wait_of: Callable[[int], float]
    ) -> None:
        submit_ms = int(self._clock.wall() * 1000)
        now = self._clock.now()
        rate, seed = self.catalog.rerun_fail_rate, self.catalog.seed
        for k, (job, plan_time) in enumerate(targets):
            key = (job.name, plan_time)
            previous = self._reruns.get(key)
            count = 1 if previous is None else previous.count + 1
            fails = rate > 0.0 and _digest(seed, job.job_id, plan_time, count) < rate * 2**64
            self._reruns[key] = _Rerun(count, submit_ms, now, float(wait_of(k)), fails, previous)

    def _window(self, job: JobSpec, low: int, high: int) -> range:
        """The plan times of ``job`` in ``low..high`` (inclusive), as a range."""
        times = self.catalog.plan_times(job)
        period = job.period_ms
        first = max(low, times.start)
        start = times.start + -(-(first - times.start) // period) * period
        return range(start, min(high + 1, times.stop), period)

    def rerun_count(self, job_name: str, plan_time: int) -> int:
        """How many reruns of this instance were accepted (for tests)."""
        rerun = self._reruns.get((job_name, plan_time))
        return 0 if rerun is None else rerun.count

    def _listed(self, job: JobSpec, plan_time: int, now: float) -> _Rerun | None:
        """The latest rerun of the instance that the list shows at ``now``: one accepted at
        least ``list_lag_s`` ago (None: the original run)."""
        rerun = self._reruns.get((job.name, plan_time))
        lag = self.catalog.list_lag_s
        while rerun is not None and now - rerun.accepted_at < lag:
            rerun = rerun.previous
        return rerun

    def _status(self, job: JobSpec, plan_time: int, now: float) -> str:
        rerun = self._listed(job, plan_time, now)
        if rerun is None:
            outage = self.catalog.outage
            return (
                "fail" if outage is not None and outage.covers(job.name, plan_time) else "success"
            )
        elapsed = now - rerun.accepted_at
        if elapsed < rerun.wait_s:
            return "waiting"
        if elapsed < rerun.wait_s + self.catalog.running_s:
            return "running"
        return "fail" if rerun.fails else "success"

    def instance(self, job_name: str, plan_time: int) -> dict[str, Any] | None:
        """One instance as the list API shows it, or ``None`` if there is no such instance."""
        job = self._jobs.get(job_name)
        if job is None or plan_time not in self.catalog.plan_times(job):
            return None
        now = self._clock.now()
        return self._render(job, plan_time, self._status(job, plan_time, now), now)

    def _render(self, job: JobSpec, plan_time: int, status: str, now: float) -> dict[str, Any]:
        index = (plan_time - self.catalog.plan_times(job).start) // job.period_ms
        rerun = self._listed(job, plan_time, now)
        if rerun is None:
            # The original run, derived from the hash: submitted 1..30 s after its plan time,
            # started 0.5..5 s later, ran 20 s..10 min (a third of that when it failed).
            h = _digest(self.catalog.seed, job.job_id, plan_time, 0)
            submit = plan_time + 1_000 + h % 29_000
            start = submit + 500 + (h >> 16) % 4_500
            duration = 20_000 + (h >> 32) % 580_000
            if status == "fail":
                duration //= 3
            end = start + duration
        else:
            submit = rerun.submit_ms
            start = end = duration = 0  # not reached yet while waiting
            if status != "waiting":
                start = submit + round(rerun.wait_s * 1000)
                if status == "running":  # the time it has run so far; no end yet
                    duration = max(0, round((now - rerun.accepted_at - rerun.wait_s) * 1000))
                else:
                    duration = round(self.catalog.running_s * 1000)
                    end = start + duration
        return {
            "job_name": job.name,
            "status": status,
            "job_instance_name": f"{job.name}_{plan_time}",
            "plan_time": plan_time,
            "start_time": start,
            "end_time": end,
            "execute_time": duration,
            "instance_id": job.job_id * 10_000_000 + index % 10_000_000,
            "instance_type": 0,
            "submit_time": submit,
            "job_id": job.job_id,
            "version": 1,
            "force_success": False,
            "ignore_success": False,
        }

    def query(self, job_name: str, q: ListQuery) -> dict[str, Any] | Refusal:
        """The instance-list API: ``{"total", "instances"}``, sorted by plan time ascending."""
        job = self._jobs.get(job_name)
        if job is None:
            return JOB_NOT_FOUND
        if q.force_success or q.ignore_success or q.instance_type not in (None, 0):
            return {"total": 0, "instances": []}
        now = self._clock.now()
        window = self._window(job, q.min_plan_time, q.max_plan_time)
        if q.status is None:
            matching: Sequence[int] = window
        else:
            matching = [p for p in window if self._status(job, p, now) == q.status]
        page = matching[q.offset : q.offset + q.limit]
        return {
            "total": len(matching),
            "instances": [self._render(job, p, self._status(job, p, now), now) for p in page],
        }
