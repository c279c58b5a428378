"""A ``[[select]]`` entry's instances in memory: :class:`FoundInstances`.

A selection after an outage is hundreds of thousands of instances of a few tens of jobs. Held
as one tuple per instance (a name and three numbers), it cost about 160 bytes an instance:
63 MB for 400,800 instances in a resume and in ``status``, and as much again while the
planner grouped it by job. Here an instance costs 24 bytes: the instances are kept in runs of
one job, each run the job's name once and three ``array('q')`` columns (``job_id``,
``plan_time``, ``submit_time``). An instance becomes a :class:`SelectedInstance` only when it
is read one at a time (iterated, indexed); the planner reads the columns
(:meth:`FoundInstances.numbers_by_job`) and the journal writes them
(:meth:`FoundInstances.json_items`) without that.

The order is the order the instances were added in, whatever it is: a run ends where the job
changes, so that they iterate as they were given. A selection lists its jobs one after the
other, so it is one run a job.
"""

from __future__ import annotations

import itertools
import json
import operator
from array import array
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from typing import Any, NamedTuple, SupportsIndex, overload

__all__ = ["FoundInstances", "SelectedInstance"]

Numbers = tuple[int, int, int]


class SelectedInstance(NamedTuple):
    """An instance found for a ``[[select]]`` entry (by the instance-list API or the
    journal): ``(job_name, job_id, plan_time, submit_time)``, as the journal records it."""

    job_name: str
    job_id: int
    plan_time: int
    submit_time: int


class _Run:
    """Consecutive instances of one job: its name once, their numbers in three columns."""

    __slots__ = ("job_ids", "job_name", "plan_times", "submit_times")

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.job_ids: MutableSequence[int] = array("q")
        self.plan_times: MutableSequence[int] = array("q")
        self.submit_times: MutableSequence[int] = array("q")

    def __len__(self) -> int:
        return len(self.job_ids)

    def append(self, job_id: int, plan_time: int, submit_time: int) -> None:
        n = len(self.job_ids)
        try:
            self.job_ids.append(job_id)
            self.plan_times.append(plan_time)
            self.submit_times.append(submit_time)
        except OverflowError:
            # A number past 64 bits, which neither the list API (ids up to 2**63 - 1, times
            # up to 2100) nor a manifest gives: the run keeps plain lists from here.
            columns = (self.job_ids, self.plan_times, self.submit_times)
            for column in columns:
                del column[n:]
            self.job_ids, self.plan_times, self.submit_times = (list(c) for c in columns)
            self.append(job_id, plan_time, submit_time)

    def numbers(self) -> Iterator[Numbers]:
        return zip(self.job_ids, self.plan_times, self.submit_times, strict=True)


class FoundInstances(Sequence[SelectedInstance]):
    """The instances of one ``[[select]]`` entry, 24 bytes apiece (see the module's
    docstring). A sequence of :class:`SelectedInstance`, equal to any sequence of the same
    instances (a list of them, or of ``(job_name, job_id, plan_time, submit_time)`` tuples)."""

    __slots__ = ("_len", "_names", "_runs")

    def __init__(self, rows: Iterable[Sequence[Any]] = ()) -> None:
        """``rows``: ``(job_name, job_id, plan_time, submit_time)`` each, in order."""
        self._runs: list[_Run] = []
        self._names: dict[str, str] = {}  # one string per job name, however often it comes
        self._len = 0
        for job_name, job_id, plan_time, submit_time in rows:
            self.add(job_name, job_id, plan_time, submit_time)

    @classmethod
    def joined(cls, parts: Iterable[FoundInstances]) -> FoundInstances:
        """``parts`` one after the other; their columns are taken over, not copied (a part
        must not be added to afterwards)."""
        whole = cls()
        for part in parts:
            for run in part._runs:
                last = whole._runs[-1] if whole._runs else None
                if last is not None and last.job_name == run.job_name:
                    for numbers in run.numbers():
                        last.append(*numbers)
                else:
                    run.job_name = whole._names.setdefault(run.job_name, run.job_name)
                    whole._runs.append(run)
            whole._len += part._len
        return whole

    @classmethod
    def of_columns(
        cls, runs: Iterable[tuple[str, array[int], array[int], array[int]]]
    ) -> FoundInstances:
        """From runs given as columns: ``(job_name, job_ids, plan_times, submit_times)``,
        the three of one length each. They are taken over, not copied."""
        found = cls()
        for job_name, job_ids, plan_times, submit_times in runs:
            if not len(job_ids) == len(plan_times) == len(submit_times):
                raise ValueError("the columns of a run differ in length")
            run = _Run(found._names.setdefault(job_name, job_name))
            run.job_ids, run.plan_times, run.submit_times = job_ids, plan_times, submit_times
            found._runs.append(run)
            found._len += len(job_ids)
        return found

    def add(self, job_name: str, job_id: int, plan_time: int, submit_time: int) -> None:
        runs = self._runs
        if not runs or runs[-1].job_name != job_name:
            runs.append(_Run(self._names.setdefault(job_name, job_name)))
        runs[-1].append(job_id, plan_time, submit_time)
        self._len += 1

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[SelectedInstance]:
        for run in self._runs:
            name = run.job_name
            for job_id, plan_time, submit_time in run.numbers():
                yield SelectedInstance(name, job_id, plan_time, submit_time)

    @overload
    def __getitem__(self, index: SupportsIndex) -> SelectedInstance: ...
    @overload
    def __getitem__(self, index: slice) -> list[SelectedInstance]: ...
    def __getitem__(
        self, index: SupportsIndex | slice
    ) -> SelectedInstance | list[SelectedInstance]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("FoundInstances index out of range")
        for run in self._runs:  # one run a job: a few tens at most
            if i < len(run):
                return SelectedInstance(
                    run.job_name, run.job_ids[i], run.plan_times[i], run.submit_times[i]
                )
            i -= len(run)
        raise AssertionError("unreachable: the runs hold _len instances")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        if self._len <= 8:
            return f"FoundInstances({list(self)!r})"
        jobs = len(self._names)
        return f"<FoundInstances: {self._len:,} instances of {jobs} job{'s' * (jobs != 1)}>"

    def numbers_by_job(self) -> Iterator[tuple[str, Iterator[Numbers]]]:
        """Per job, in the order of their first instance: the job's name and its instances'
        ``(job_id, plan_time, submit_time)``, in order. What a request is made of (one
        request names one job), read from the columns."""
        runs: dict[str, list[_Run]] = {}
        for run in self._runs:
            runs.setdefault(run.job_name, []).append(run)
        for name, of_job in runs.items():
            yield name, itertools.chain.from_iterable(run.numbers() for run in of_job)

    def json_items(self) -> bytes:
        """The instances as the journal's ``select`` record holds them: the bytes
        ``json.dumps`` writes of a list of ``[job_name, job_id, plan_time, submit_time]``
        lists (compact, ASCII), without the list of lists."""
        out = bytearray(b"[")
        for run in self._runs:
            name = json.dumps(run.job_name).encode("ascii").replace(b"%", b"%%")
            row = b"[" + name + b",%d,%d,%d],"
            for numbers in run.numbers():
                out += row % numbers
        if self._len:
            out[-1:] = b"]"
        else:
            out += b"]"
        return bytes(out)
