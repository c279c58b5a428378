"""``status`` and ``report``: what a journal says, for people, scripts and tickets.

Everything here reads a journal with :func:`bulkrerun.journal.read_state` (read-only, no
lock, so it also works while a run appends; ``status`` reads it slim, without the details
of the windows sent once and done) and never sends anything.

- :func:`status` sums a journal up in a :class:`StatusSummary`: units done, failed (by error
  code), held and not yet sent; the rate achieved; the commands to run next.
- :func:`report_rows` yields one :class:`ReportRow` per request (chunk) with its final
  outcome; :func:`write_report` renders them as a table, CSV, JSON lines (one object per
  line, so that a report of a million requests streams and ``jq`` reads it), or as a new
  manifest of what failed or is held, ready to feed back in.

Report columns. The CSV header is :data:`REPORT_COLUMNS`, in this order (scripts may rely
on names and order; columns are only ever added at the end); each JSON line has the same
keys, plus ``begin_ms`` and ``end_ms`` (epoch milliseconds):

``chunk`` ``entry`` ``job_name`` ``workspace`` ``mode`` ``begin`` ``end`` ``instances``
``attempts`` ``state`` ``current`` ``status`` ``error_code`` ``error_msg`` ``request_id``
``reason`` ``last_time`` ``instance_status``
    the request and what became of it (see :class:`ReportRow`).
``verify_state``
    what a verification (``bulkrerun verify``, ``run --verify-held``) decided the request's
    units are, for the units whose state it still decides: ``done``, ``pending`` or
    ``held``; a tally (``done 2, pending 1``) when they differ or when it decided only some
    of them. Empty (JSON ``null``) when no verification decides any of them; ``state``,
    ``reason`` and ``error_msg`` remain what the request itself got.
``verify_evidence``
    what the verification saw, one sentence per unit, each naming its instance or window;
    distinct sentences joined with `` | ``.
``unknown_sends`` ``run``
    the sends of the request whose outcome is unknown, and the number of the run that made
    its last attempt (see :class:`ReportRow`).
``unknown_request_ids``
    the request ids the service gave those sends (a gateway's 504, say), oldest first:
    space-separated in CSV, a list in JSON. ``request_id`` is the last attempt's.
``jobs``
    of a window request, the jobs it reruns beside ``job_name``, as sent: in JSON a list of
    ``{"job_name", "workspace_id"}`` (empty when the window has none), in CSV their names
    with ``; `` between them. Empty (JSON ``null``) for an instances request.
``items``
    of an instances request, the instances it named, as sent: in JSON a list of
    ``{"job_id", "plan_time", "submit_time"}`` (epoch milliseconds), in CSV each one's
    ``job_id`` and plan time (ISO 8601 UTC) with ``; `` between them. Empty (JSON ``null``)
    for a window request, whose instances the service finds in its span.
``failed_instances``
    the rerun instances of the request that ``run --watch`` saw end failed (``fail``,
    ``running-exception``), by plan time: in JSON a list of ``{"job_name", "job_id",
    "plan_time", "instance_id", "status"}``, in CSV each one's job, plan time and status
    with ``; `` between them. Empty (JSON ``[]``) when the watch saw none of them fail,
    empty too (JSON ``null``) when it saw none of them end, as ``instance_status``.
``timezone`` ``begin_local`` ``end_local``
    the timezone the manifest wrote the request's entry in (its own ``timezone``, or
    ``[defaults]``'s; empty for an entry that names none, and for an ``[[instances]]``
    entry, whose times are epoch milliseconds), and ``begin`` and ``end`` in it with its
    offset (``2024-11-05T00:00:00.000+08:00``), as ``plan`` shows them: the day an audit
    "per job and day" counts, where ``begin`` (UTC) is the day before for the first hours
    of a day east of Greenwich. In UTC (``...Z``) when the entry names no timezone. The
    entry is the one of the run that first sent the request (the journal's copy of that
    run's manifest).

The table shows ``verify_state`` as its ``verified`` column and the evidence, when there is
any, instead of the request's own message: it is what decided the units. Its ``job``
column names a window's ``jobs`` after its own (``ods_orders + dwd_orders``, as ``plan``
does); its ``what`` column gives an instances request's number of instances and the span of
their plan times, both in the entry's timezone as ``begin_local`` (in UTC when it names
none), each time with its offset. After the closing count, one line per rerun instance the
watch saw end failed names its request (the chunk id prefix), job, plan time (in the same
timezone) and status.

CSV and spreadsheets. The report is opened in spreadsheets for audits and tickets, and some
of its text comes from elsewhere (job names, the service's error messages), so a CSV cell
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``
(as OWASP recommends against formula injection): a spreadsheet shows it as text instead of
running it. Only the CSV is escaped; JSON lines carry every value exactly, and are what
scripts should read.

The manifest format. A window's bounds are epoch milliseconds, commented in its entry's
timezone as ``begin_local`` writes them, and the entry keeps that timezone. When nothing
is failed or held there is nothing to rerun, and a
manifest needs at least one entry (``bulkrerun plan`` refuses one without): nothing is
written on ``out``, a note on stderr says so, and the exit code stays 0. Scripts test for
an empty file: ``bulkrerun report J --format manifest > again.toml && [ -s again.toml ] &&
bulkrerun plan again.toml``.

A unit that was never sent is not in the journal, so "not yet sent" needs the plan:
:func:`not_sent_by_manifest` plans again the copy of the manifest the journal's last run
recorded (with the instance files it read, found where that run read them and checked
against their digests, and the instances its ``[[select]]`` entries found), and those of
the other manifests earlier runs had, and counts the units the same replay does not know.
:func:`status` does both from one read of the journal, so that its numbers are of one
moment even while a run appends.

The journal never holds a secret (the transport scrubs error messages before they are
recorded), so nothing here needs to hide anything; it escapes what it prints, though, as
error messages come from the service.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bulkrerun.chunk import Chunk, instance_unit_id
from bulkrerun.errors import BadInput, ManifestError
from bulkrerun.journal import (
    ChunkInfo,
    Holder,
    JournalState,
    RunEnd,
    RunRecord,
    UnitState,
    VerifyEnd,
    VerifyRecord,
    held_by,
    read_records_at,
    read_state,
)
from bulkrerun.outcome import NO_SUCH_API, failure_code, wrong_endpoint
from bulkrerun.reference import FAILED_STATUSES
from bulkrerun.text import ONE_SHOT_FLAGS, command_line, counted, run_command, timeout_kept
from bulkrerun.watchlog import WatchRecord, read_watch, units_seen_finished

if TYPE_CHECKING:
    from bulkrerun.manifest import Manifest
    from bulkrerun.selection import FoundInstances

__all__ = [
    "REPORT_COLUMNS",
    "ReportFormat",
    "ReportRow",
    "StatusSummary",
    "count_pending",
    "not_sent_by_manifest",
    "render_status",
    "report_rows",
    "status",
    "status_json",
    "summarize",
    "write_report",
]

ReportFormat = Literal["table", "csv", "json", "manifest"]

# Rows per block of the report's table, measured together: big enough to read, small enough
# that a report of a million requests never sits in memory as one table.
_TABLE_BLOCK = 500


def _iso(wall: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds, rounded as the journal
    keeps them: a run's closing summary (of unrounded times) and status agree."""
    if wall is None or not math.isfinite(wall):
        return None
    moment = datetime.fromtimestamp(round(wall, 3), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else _ms_iso(ms)


@functools.lru_cache(maxsize=65_536)
def _ms_iso(ms: int) -> str:
    """Epoch milliseconds (a plan time, a window's bounds) as :func:`_iso` writes times. A
    report of a large journal writes millions, of a few thousand plan times (an incident's
    hours, for every job): cached, and not through ``datetime``, at half the cost."""
    seconds, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milli:03d}Z"


# ---------------------------------------------------------------------------------------
# status


@dataclass(frozen=True, slots=True)
class LastRun:
    """The journal's last run: its number, when it started, and how it ended (``end``
    None: it recorded no end, because it was killed or crashed, could not write its
    journal, or still runs)."""

    n: int
    started: float
    end: RunEnd | None


@dataclass(frozen=True, slots=True)
class Invocation:
    """One ``run`` or ``verify`` command the journal records, for the history a review reads:
    when it started, how it ended (``end`` None: it recorded none, because it was killed or
    crashed, or it still goes on), who ran it where, and with which flags and settings."""

    command: Literal["run", "verify"]
    n: int
    started: float
    pid: int | None
    options: dict[str, Any]
    end: RunEnd | VerifyEnd | None
    # A run's manifest as given and its digest, and the units not yet sent at its start;
    # a verify's held units at its start.
    manifest: str | None = None
    manifest_sha256: str | None = None
    pending: int | None = None
    held: int | None = None


@dataclass(frozen=True, slots=True)
class StatusSummary:
    """A journal summed up. Unit counts (``done`` ...) count units of work (an instance, or
    a window chunk); ``requests``, ``attempts`` and ``accepted`` count API requests.

    ``pending`` is ``None`` when it is not known (the plan could not be made again), and
    ``pending_unknown`` then says why, when there is more to say than that no run is recorded.
    ``rate`` is accepted requests per second over the runs' active time (each run from its
    start to its end), ``None`` before there is any.
    """

    journal: str
    project_id: str
    endpoint: str
    done: int
    failed: int
    held: int
    pending: int | None
    failed_by_code: dict[str, int]
    requests: int
    attempts: int
    accepted: int
    runs: int
    first_wall: float | None
    last_wall: float | None
    active_seconds: float
    rate: float | None
    next_steps: list[str] = field(default_factory=list)
    pending_unknown: str | None = None
    # Of a journal another bulkrerun holds (``status`` while a run or a verify goes on): that
    # it does, its pid when known, and, when it is the last run, the units of its requests
    # without an answer yet (in flight, so not counted in ``held``).
    busy: bool = False
    holder_pid: int | None = None
    in_flight: int = 0
    # When the journal's runs had more than one manifest (a manifest of what failed or is
    # held, say, after the one that planned them all): of ``pending``, per manifest (each as
    # a command should name it; the last run's first), the units it plans that none before
    # it does, or why they cannot be counted (its instance file changed since, say).
    pending_by_manifest: list[tuple[str, int | str]] = field(default_factory=list)
    # Requests accepted after an earlier send whose outcome is unknown (held): each may have
    # run more than once. None of a summary made otherwise than by :func:`summarize`.
    accepted_after_unknown: int | None = None
    last_run: LastRun | None = None
    # Every run and verify the journal records, in the order they started.
    history: list[Invocation] = field(default_factory=list)
    # The latest run with --watch that recorded its end: its number and what its watch saw
    # (the ``watch`` of its end record), and of its done units, those whose reruns neither
    # it nor a watch before it saw finish (0 without such a run). Each watch follows every
    # done unit again, so one stopped early may not see again what an earlier one saw.
    last_watch: dict[str, Any] | None = None
    watch_unfinished: int = 0


def count_pending(state: JournalState, chunks: Iterable[Chunk]) -> int:
    """Units of ``chunks`` (a plan) that the journal has never recorded: not yet sent."""
    units = state.units
    return sum(1 for chunk in chunks for unit in chunk.units if unit not in units)


class _CannotCount(Exception):
    """What is not yet sent cannot be counted faithfully. The message says why and what to
    do, as a next step that ends where the command to run follows."""


def not_sent_by_manifest(
    state: JournalState,
) -> tuple[int | None, str | None, list[tuple[str, int | str]]]:
    """Units not yet sent of the manifests the journal's runs recorded, or None with why
    (a next step; None when no run is recorded) when that cannot be counted faithfully;
    and, when the runs had more than one manifest, per manifest (as a command should name
    it; the last run's first) the units it plans that none before it in that order does, or
    why they cannot be counted. The total is then None if any manifest's cannot, the second
    item saying why.

    Each manifest (by where it was) counts as its latest run recorded it: an edit replaces
    what the file planned before. Usually every run had the same manifest, and only its
    plan is made. When the runs had others (a manifest of what failed or is held, made by
    ``report --format manifest``, run with the same journal), each plan is made, the last
    run's first, and a unit two of them plan counts once.

    The plan is made from the journal's copy of the manifest, not from the file, which may
    have been edited or moved since, or named relative to another working directory; its
    ``[[select]]`` entries get the instances the journal recorded for them. Only instance
    files are read from disk (the journal holds their digests, not their lines): where the
    run read them, and only if their digests are still the recorded ones.
    """
    if not state.runs:
        return None, None, []
    latest = _latest_runs(state.runs)
    if len(latest) == 1:
        n = _count_not_sent(state, latest[0], count_pending)
        return (n, None, []) if isinstance(n, int) else (None, n, [])
    units = state.units
    seen: set[str] = set()

    def gather(state: JournalState, chunks: Iterable[Chunk]) -> int:
        before = len(seen)
        for chunk in chunks:
            seen.update(u for u in chunk.units if u not in units)
        return len(seen) - before

    by_manifest: list[tuple[str, int | str]] = []
    for run in latest:
        n = _count_not_sent(state, run, gather, later=_runs_after(state, run))
        by_manifest.append((_manifest_arg(run), n))
    unknown = next((n for _, n in by_manifest if isinstance(n, str)), None)
    return (len(seen) if unknown is None else None), unknown, by_manifest


def _count_not_sent(
    state: JournalState,
    run: RunRecord,
    count: Callable[[JournalState, Iterable[Chunk]], int],
    later: list[RunRecord] | None = None,
) -> int | str:
    """``count`` over the plan of the manifest ``run`` recorded, or why it cannot be made
    again faithfully (a next step, ending where the command to run follows)."""
    # Imported here, as in the functions below: only counting what is not yet sent needs
    # the manifest machinery (pydantic), which `report` can do without.
    from bulkrerun.planner import plan

    try:
        manifest, selections = _recorded_plan(state, run, later=later)
        return count(state, plan(manifest, selections=selections))
    except _CannotCount as exc:
        return str(exc)
    except ManifestError:  # an instance file changed between its check and the plan
        return (
            f"an instance file that run {run.n} read changed while it was read again, so what "
            "is not yet sent cannot be counted; ask again, or resume with the same command"
        )
    except OSError as exc:
        return (
            f"what is not yet sent cannot be counted ({exc}); ask again, or resume with the "
            "same command"
        )


def several_manifests(state: JournalState) -> bool:
    """Whether the journal's runs had more than one manifest (see :func:`_latest_runs`)."""
    return len(_latest_runs(state.runs)) > 1


def _manifest_keys(run: RunRecord) -> tuple[str, tuple[str, ...]]:
    """Where ``run``'s manifest was, and what it held: its digest and its instance files'."""
    held = (run.manifest_sha256, *sorted(run.instance_files.values()))
    return run.manifest_path or run.manifest_name, held


def _latest_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """The latest run of each manifest, the last run's first. A manifest is where it was
    (an edit replaces what the file planned before) or what it held: a journal and its
    manifest copied to another folder, instance files and all, plan what they planned."""
    latest: list[RunRecord] = []
    seen: set[object] = set()
    for run in reversed(runs):
        keys = _manifest_keys(run)
        if seen.isdisjoint(keys):
            latest.append(run)
        seen.update(keys)
    return latest


def _runs_after(state: JournalState, run: RunRecord) -> list[RunRecord]:
    return [r for r in state.runs if r.n > run.n]


def _recorded_plan(
    state: JournalState, run: RunRecord, later: list[RunRecord] | None = None
) -> tuple[Manifest, dict[str, FoundInstances]]:
    """The manifest ``run`` recorded and the instances its ``[[select]]`` entries found.
    ``later``: the runs since, when it is not the last run. The journal keeps one selection
    per entry label, the latest: if a later run had ``[[select]]`` entries too, the ones
    kept may be its own, and ``run``'s cannot be planned faithfully."""
    from bulkrerun.manifest import SelectEntry

    manifest = _recorded_manifest(run)
    selects = any(isinstance(e, SelectEntry) for e in manifest.entries)
    if selects and later and any(_has_select(r) for r in later):
        raise _CannotCount(
            f"what {run.manifest_name} (run {run.n}) left unsent cannot be counted: its "
            "[[select]] entries were selected over by a later run of another manifest. "
            "Running it again resumes it; this sends what the last run's manifest left"
        )
    return manifest, _recorded_selections(state, run, manifest)


def _has_select(run: RunRecord) -> bool:
    """Whether the manifest ``run`` recorded has ``[[select]]`` entries (as far as its copy
    reads: one that does not read cannot have recorded a selection)."""
    try:
        data = _copy_data(run)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("select"))


def _copy_data(run: RunRecord) -> Any:
    """The journal's copy of the manifest ``run`` recorded, parsed as TOML (or JSON, by its
    name); raises ValueError (TOMLDecodeError and JSONDecodeError are ValueErrors)."""
    text = run.manifest_text.removeprefix("\ufeff")
    return json.loads(text) if run.manifest_name.lower().endswith(".json") else tomllib.loads(text)


def _recorded_manifest(run: RunRecord) -> Manifest:
    """The manifest of ``run`` made again from the journal's copy, with the instance files
    that run read; raises :class:`_CannotCount` when that cannot be done faithfully."""
    from bulkrerun.manifest import manifest_from_copy

    name = run.manifest_name
    try:
        data = _copy_data(run)
        tables = data.get("instances") or []
    except (ValueError, AttributeError):  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise _CannotCount(
            f"the journal's copy of {name} (run {run.n}) cannot be read, so what is not yet "
            "sent cannot be counted; the same command resumes"
        ) from None
    spelled = {
        i: table["file"]
        for i, table in enumerate(tables)
        if isinstance(table, dict) and isinstance(table.get("file"), str)
    }
    where = _instance_files(run, list(spelled.values()))
    labels: dict[str, str] = {}  # instance file -> the first entry that reads it
    for i, file in spelled.items():
        path = where[file]
        label = labels.setdefault(path, f"instances[{i}]")
        _readable(run, path, label)
        tables[i]["file"] = path
    try:
        manifest = manifest_from_copy(
            Path(name),
            run.manifest_text,
            run.manifest_sha256,
            data,
            checked=run.instance_files,  # checked line by line when the run read them
        )
    except ManifestError as exc:
        _check_digests(run, {path: _sha256(path) for path in run.instance_files}, labels)
        problem = exc.problems[0] if exc.problems else str(exc)
        raise _CannotCount(
            f"the journal's copy of {name} (run {run.n}) no longer validates ({problem}), "
            "so what is not yet sent cannot be counted; the same command resumes"
        ) from None
    _check_digests(run, dict(manifest.files), labels)
    return manifest


def _instance_files(run: RunRecord, spelled: list[str]) -> dict[str, str]:
    """Each instance file as the manifest copy spells it -> the file ``run`` read.

    The journal records the files by the absolute paths they were read from, in the order
    the manifest's ``[[instances]]`` entries first named them (the manifest module checks
    entries in order and reads a file once). So the n-th file the copy names is the n-th
    file recorded, wherever the run was started and however the path was spelled.
    """
    recorded = list(run.instance_files)
    named = list(dict.fromkeys(os.path.normpath(file) for file in spelled))
    if len(named) != len(recorded):
        raise _CannotCount(
            f"the manifest {run.manifest_name} of run {run.n} names {len(named)} instance "
            f"files and the journal records {len(recorded)} read, so what is not yet sent "
            "cannot be counted; the same command resumes"
        )
    where = dict(zip(named, recorded, strict=True))
    return {file: where[os.path.normpath(file)] for file in spelled}


def _readable(run: RunRecord, path: str, label: str) -> None:
    """Raise :class:`_CannotCount` saying what keeps the instance file at ``path`` from
    being read again: gone, no longer a regular file (a directory, a pipe: opening one
    would wait for a writer), or refused (permissions)."""
    p = Path(path)
    if not p.exists():
        raise _missing(run, path, label)
    what = (
        "cannot be read (it is no longer a regular file)" if not p.is_file() else _unopenable(path)
    )
    if what:
        raise _CannotCount(
            f"the instance file {path} ({label}) that run {run.n} read {what}, so what is "
            "not yet sent cannot be counted; make it readable, then resume with the same "
            "command"
        )


def _unopenable(path: str) -> str:
    try:
        with open(path, "rb"):
            return ""
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _missing(run: RunRecord, path: str, label: str | None) -> _CannotCount:
    of = f" ({label})" if label else ""
    return _CannotCount(
        f"the instance file {path}{of} that run {run.n} read is missing, so what is not yet "
        "sent cannot be counted; put it back, then resume with the same command"
    )


def _check_digests(run: RunRecord, digests: dict[str, str | None], labels: dict[str, str]) -> None:
    """Raise :class:`_CannotCount` naming the first instance file whose digest now
    (``digests``: path -> SHA-256) is not the one ``run`` recorded."""
    for path, recorded in run.instance_files.items():
        if digests.get(path) != recorded:
            of = f" ({labels[path]})" if path in labels else ""
            raise _CannotCount(
                f"the instance file {path}{of} changed since run {run.n} read it, so what "
                "that run left unsent cannot be counted; the same command resumes with the "
                "file as it is now"
            )


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _recorded_selections(
    state: JournalState, run: RunRecord, manifest: Manifest
) -> dict[str, FoundInstances]:
    """The instances each ``[[select]]`` entry of ``manifest`` found, as the journal recorded
    them (``run`` records them all when it starts)."""
    from bulkrerun.manifest import SelectEntry

    selections = {}
    for entry in manifest.entries:
        if isinstance(entry, SelectEntry):
            found = state.selections.get(entry.label)
            if found is None:
                raise _CannotCount(
                    f"the instances {entry.label} selected in run {run.n} are not recorded, "
                    "so what is not yet sent cannot be counted; the same command resumes"
                )
            selections[entry.label] = found  # as replayed: the planner reads its columns
    return selections


def _wrong_endpoint_met(state: JournalState, counts: Counter[UnitState]) -> str | None:
    """What every answered request met, when each answer said the endpoint is wrong (see
    :func:`wrong_endpoint`: since such an answer stops a run, its units are pending; in older
    journals, failed) and no unit is done or held; else None."""
    if counts[UnitState.DONE] or counts[UnitState.HELD]:
        return None
    codes = set()
    for info in state.chunks.values():
        if info.status is None:  # kept for failed and pending outcomes only
            continue
        if not wrong_endpoint(info.status, info.error_code):
            return None
        codes.add(failure_code(info.error_code, info.status))
    return wrong_endpoint_met(codes) if codes else None


def wrong_endpoint_met(codes: set[str]) -> str:
    """What requests met, said of the answers with ``codes`` (see :func:`failure_code`), each
    of which says the endpoint is wrong."""
    if codes == {NO_SUCH_API}:
        return f"was refused with {NO_SUCH_API} (no such API)"
    if all(code.startswith("HTTP 3") for code in codes):
        return f"was redirected ({', '.join(sorted(codes))}; redirects are not followed)"
    return f"was answered {', '.join(sorted(codes))}, not by the service"


def wrong_endpoint_step(path: Path, endpoint: str, met: str, run: str) -> str:
    """The one next step once every answered request ``met`` an answer that says the
    endpoint is wrong; ``run``: the command that resumes. Once the endpoint is fixed, this
    journal, bound to the wrong one, refuses the run (exit 2), and as nothing was accepted
    there a new journal loses nothing."""
    report = f"`bulkrerun report {shlex.quote(str(path))}`"
    where = f", and {report} shows where they pointed" if "redirected" in met else ""
    return (
        f"every request answered {met}: the endpoint {endpoint} looks wrong{where}. Nothing "
        "was accepted there; once BULKRERUN_ENDPOINT, BULKRERUN_REGION or --endpoint is "
        "right, start again with a new --journal (this one stays bound to that endpoint). If "
        f"it was right and the gateway misrouted for a while, the same command resumes: {run}"
    )


def _manifest_arg(run: RunRecord) -> str:
    """The manifest as a command typed here should name it: as it was given, if that still
    leads to it from this folder, else where it was (the journal may be read from anywhere)."""
    given, where = run.manifest_name, run.manifest_path
    if not where:
        return given
    try:
        here = Path(given).absolute()
    except OSError:
        # This folder was removed (os.getcwd fails): a name relative to it leads nowhere,
        # where the manifest was still does, from wherever the user goes next.
        return where
    return given if here == Path(where) else where


# The flags of `run` that `verify` takes too: it reaches the same service the same way.
_VERIFY_FLAGS = frozenset(
    {"--endpoint", "--region", "--project-id", "--rate", "--settle", "--verbose", "--log-file"}
)


def _last_flags(state: JournalState) -> list[tuple[str, str | None]]:
    """The settings the last run was given as flags ((flag, value or None) pairs), for the
    commands that carry it on: without them a step would run at the default pace, or be
    refused for another endpoint. Nothing for a journal written before they were recorded,
    or whose record is not as written."""
    return _recorded_flags(state.runs[-1].options) if state.runs else []


def _recorded_flags(options: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The flags a ``run`` or ``verify`` record's ``options`` say it was given; nothing when
    they are not recorded, or not as written."""
    recorded = options.get("flags")
    if not isinstance(recorded, list):
        return []
    pairs = []
    for pair in recorded:
        match pair:
            case [str(flag), str() | None as value] if flag.startswith("--"):
                pairs.append((flag, value))
            case _:
                return []
    return pairs


def _next_steps(
    path: Path,
    state: JournalState,
    counts: Counter[UnitState],
    pending: int | None,
    pending_unknown: str | None,
    holder: Holder | None = None,
    by_manifest: list[tuple[str, int | str]] | None = None,
    unseen: tuple[int, dict[str, Any], int] | None = None,
) -> list[str]:
    """What to do next. ``unseen``: :func:`_watch_unseen`'s answer."""
    journal = shlex.quote(str(path))
    if holder is not None:
        # Any command on the journal would be refused while another bulkrerun holds it.
        kill = f", or kill -TERM {holder.pid}" if holder.pid is not None else ""
        return [
            f"wait for it to end, or stop it (Ctrl-C where it runs{kill}: a run finishes the "
            f"requests in flight), then ask again: bulkrerun status {journal}"
        ]
    manifest = _manifest_arg(state.runs[-1]) if state.runs else "MANIFEST"
    flags = _demo_flags(state) + _last_flags(state)
    run = run_command(manifest, str(path), flags)
    held, failed = counts[UnitState.HELD], counts[UnitState.FAILED]
    # A run sends again only the failed or held units of its own plan. When the journal's
    # runs had different manifests (another file, or an edit), the last one may not hold
    # them all: a manifest made of exactly them does.
    again = run
    if len({r.manifest_sha256 for r in state.runs}) > 1:
        again = (
            f"bulkrerun report {journal} --format manifest > retry.toml (the runs had "
            f"different manifests; the last may not hold them all), then "
            f"{run_command('retry.toml', str(path), flags)}"
        )

    # Every answer said the endpoint is wrong (redirected, or no such API), not the requests.
    if (met := _wrong_endpoint_met(state, counts)) is not None:
        return [wrong_endpoint_step(path, state.header.endpoint, met, run)]

    steps: list[str] = []
    failures = []
    if failed:
        failures = [
            f"see why the {counted(failed, 'unit')} failed: bulkrerun report {journal}",
            f"once the cause is fixed, send them again: {again} --retry-failed",
        ]
    # The last run stopped because too many requests failed (its failure budget or canary):
    # sending the rest before their cause is fixed would fail them too.
    end = _last_end(state)
    budget = end is not None and end.stopped == "failure_budget"
    if budget and failures:
        if again == run and not by_manifest and pending:
            # One command sends both, the failed units and those not yet sent.
            failures[1] = (
                f"once the cause is fixed, send them again with the "
                f"{counted(pending, 'unit')} not yet sent: {again} --retry-failed"
            )
            pending = 0
        steps += failures
        failures = []
    first = len(steps)
    if by_manifest:
        for i, (name, n) in enumerate(by_manifest):
            command = run if i == 0 else run_command(name, str(path), flags)
            where = "" if i == 0 else f" ({name}, an earlier run's manifest)"
            if isinstance(n, str):  # why it cannot be counted, ending where a command follows
                steps.append(f"{n}{where}: {command}")
            elif n and i == 0:
                steps.append(not_yet_sent_step(n, command))
            elif n:
                steps.append(
                    f"send the {counted(n, 'unit')} not yet sent of {name} (an earlier run's "
                    f"manifest; the last one does not plan them): {command}"
                )
    elif pending is None:
        why = pending_unknown or "send whatever is not yet sent (the same command resumes)"
        steps.append(f"{why}: {run}")
    elif pending:
        steps.append(not_yet_sent_step(pending, run))
    if held:
        steps.append(
            f"decide the {counted(held, 'unit')} held from the instances' live state: "
            + command_line(
                ["bulkrerun", "verify", str(path)], (f for f in flags if f[0] in _VERIFY_FLAGS)
            )
        )
        them = "it (it" if held == 1 else "them (each"
        steps.append(f"or resend {them} may then run twice): {again} --resend-held")
    if budget and len(steps) > first:
        # After the failures' own "once the cause is fixed, send them again", a "then" says
        # it; said first (the stop's requests were held, not refused), there is no "then".
        lead = "then " if first else "once the cause is fixed, "
        steps[first] = lead + steps[first]
    steps += failures
    # The last run stopped on a refusal of its credentials or permissions (or a proxy's):
    # every step sends with them, and would be refused the same way until they are fixed.
    if end is not None and end.stopped == "auth_refused" and steps:
        steps.insert(0, _refused_first(end.message or ""))
    # The last run stopped on requests it gave up waiting for: its run commands repeat the
    # --timeout it was given, as its resume command does, and say as it does what that means.
    timeout = dict(flags).get("--timeout")
    if end is not None and end.timed_out and timeout is not None and steps:
        steps.insert(0, timeout_kept(timeout))
    if watched := _watch_failed(path, state.header.created):
        # Accepted is not succeeded: a run sends a done unit never again, whatever its
        # rerun became, so these take a selection of their own.
        steps.append(
            f"see which {counted(watched, 'rerun instance')} the watch saw end failed: "
            f"bulkrerun report {journal} (listed after its table; failed_instances in csv and "
            "json); their requests were accepted, so "
            "no run of this journal sends them again: to rerun them, select them ([[select]] "
            "with their status) in a manifest run with a new --journal"
        )
    if unseen is not None and unseen[2]:
        quiet = pending == 0 and not any(isinstance(n, str) or n for _, n in by_manifest or ())
        steps.append(
            _follow_step(*unseen, run_command(manifest, str(path), _with_watch(flags)), quiet)
        )
    if not steps:
        steps.append("nothing left to do: every unit is done")
    elif _demo_flags(state) and any(" --endpoint " in step for step in steps):
        # The steps that carry the demo's endpoint are those that reach its service.
        steps.insert(0, _demo_first(state.header.endpoint))
    return steps


def not_yet_sent_step(n: int, run: str) -> str:
    """The next step that sends the ``n`` units not yet sent with the command ``run``: a
    run that stopped prints that command under "Resume with:" too, and leaves this out
    (see :func:`without_resume_step`)."""
    return f"send the {counted(n, 'unit')} not yet sent: {run}"


_REFUSED_FIRST = "first fix what the service refused"

# The steps that only lead the others: what to fix before any of them, the demo's service
# to start again, the --timeout each of them keeps.
_LEADS = (_REFUSED_FIRST, "this journal is the demo's", "each run command below keeps")


def without_resume_step(steps: list[str], pending: int, resume: str) -> list[str]:
    """The next steps of a run that stopped (a signal, or a fatal condition) and prints its
    resume command ``resume`` below them: without the step that sends the ``pending`` units
    with that same command, which would say it twice in a row, and without the steps that
    only lead the others when none is left to lead (the stop itself says what to fix)."""
    same = not_yet_sent_step(pending, resume)
    kept = [step for step in steps if step != same]
    if kept != steps and all(step.startswith(_LEADS) for step in kept):
        return []
    return kept


def _demo_flags(state: JournalState) -> list[tuple[str, str | None]]:
    """The endpoint and project of the demo's fake service when the last run was
    ``bulkrerun demo``'s: it gave its run them as settings, not as flags, so without these
    a step that reaches the service would have no endpoint (exit 2)."""
    if not state.runs or state.runs[-1].options.get("demo") is not True:
        return []
    return [("--endpoint", state.header.endpoint), ("--project-id", state.header.project_id)]


def _demo_first(endpoint: str) -> str:
    """The step before any other of a demo's journal: its fake service (and its keys) ended
    with the demo, and the journal is bound to that endpoint, so one must listen there again."""
    port = urlsplit(endpoint).port
    return (
        "this journal is the demo's, and its fake service stopped with it: to try the steps "
        "below, first start one at its endpoint in another terminal, "
        f"`bulkrerun fake-server --catalog --port {port}` (it takes any credentials: "
        "`export BULKRERUN_TOKEN=demo-token` if none are set)"
    )


def _last_watch(state: JournalState) -> tuple[int, dict[str, Any]] | None:
    """The latest run that followed its reruns (``--watch``) and what its watch saw, as its
    end record keeps it; None when no run that recorded its end watched."""
    for run in reversed(state.runs):
        end = state.ends.get(run.n)
        if end is not None and end.watch is not None:
            return run.n, end.watch
    return None


def _watch_unseen(path: Path, state: JournalState) -> tuple[int, dict[str, Any], int] | None:
    """The latest run that watched and what its watch saw (:func:`_last_watch`), and of the
    done units it followed, those whose reruns no watch saw finish, neither it nor one
    before it (the sidecar says which units each saw finish, of this journal: not of one
    removed before it was begun at the same path). None without such a run.

    Its end record counts what it saw alone, and a watch follows every done unit again: one
    stopped before its first answer "did not see" what an earlier one saw end long before.
    Sidecars from before the sidecar said so leave that count as it is."""
    watched = _last_watch(state)
    if watched is None:
        return None
    n, seen = watched
    unfinished = seen["unfinished"]
    if unfinished:
        # What those watches saw finish was done for this one too: among the units it followed.
        finished = units_seen_finished(path, n, state.header.created)
        unfinished = max(0, min(unfinished, seen["units"] - finished))
    return n, seen, unfinished


def _with_watch(flags: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return flags if ("--watch", None) in flags else [*flags, ("--watch", None)]


def _follow_step(n: int, seen: dict[str, Any], unfinished: int, command: str, quiet: bool) -> str:
    """The step after the watches did not see every rerun finish: how many (``unfinished``,
    of the units run ``n``'s watch followed), why, and the command that follows them again
    (``quiet``: it sends nothing, as nothing is left to)."""
    why = {
        "timeout": "timed out",
        "failed": "could not follow them",
        None: "ended",
    }.get(seen["stopped"], f"was stopped by {seen['stopped']}")
    so_far = ""
    if seen["instances"] is not None:
        so_far = (
            f"; it saw {seen['finished']:,} of {counted(seen['instances'], 'rerun instance')} "
            "finish"
        )
    if earlier := seen["unfinished"] - unfinished:
        so_far += f"; earlier watches saw the reruns of {counted(earlier, 'other unit')} finish"
    whose = (
        "the reruns of 1 done unit were"
        if unfinished == 1
        else (f"the reruns of {unfinished:,} done units were")
    )
    how = "which sends nothing" if quiet else "which also sends what is not yet sent"
    return (
        f"{whose} not seen to finish: run {n}'s watch {why} before they did{so_far}. They "
        f"stand (the service accepted them); to follow them again, {how}: {command}"
    )


def _refused_first(message: str) -> str:
    """The step before any other after a stop on refused credentials, by what the stop
    said (its message, as the end record keeps it)."""
    if message.startswith("the proxy refused"):
        what = "the proxy's credentials (HTTPS_PROXY or HTTP_PROXY, http://user:password@host)"
    elif "this machine's clock is" in message:  # read off the refusal's Date: see engine
        what = "this machine's clock (the stop says how far off it is; NTP sets it right)"
    elif "(403 " in message:
        what = "the user's permissions on the job the stop names"
    else:
        what = (
            "the credentials (BULKRERUN_AK/BULKRERUN_SK or BULKRERUN_TOKEN: an IAM token "
            "lasts 24 hours, a key may have been disabled or replaced), or this machine's "
            "clock if it is off (AK/SK signatures more than 15 minutes off are refused)"
        )
    return f"{_REFUSED_FIRST}, or every step below is refused the same way: {what}"


def _last_end(state: JournalState) -> RunEnd | None:
    """How the journal's last run ended; None when it recorded no end (or there is none)."""
    return state.ends.get(state.runs[-1].n) if state.runs else None


def _watch_failed(path: Path, created: float) -> int:
    """How many rerun instances ``run --watch`` saw end in a failed status, for the journal
    whose header's ``created`` is ``created``."""
    watched = read_watch(path, created).values()
    return sum(1 for records in watched for r in records if r.status in FAILED_STATUSES)


def summarize(
    path: Path,
    state: JournalState,
    *,
    pending: int | None,
    pending_unknown: str | None = None,
    holder: Holder | None = None,
    pending_by_manifest: list[tuple[str, int | str]] | None = None,
    counts: Counter[UnitState] | None = None,
) -> StatusSummary:
    """A :class:`StatusSummary` of an already replayed journal (e.g. a run's live state),
    with ``pending`` as the caller counted it (``pending_unknown``: why it could not).
    ``holder``: another bulkrerun holding the journal meanwhile. When that is the last run
    (its pid is the run record's), its requests without an answer yet are in flight, not
    held; a verify, or a run still starting, sends nothing, and held units stay held.
    ``counts``: ``state.counts()``, when the caller has it already (counting goes through
    every unit: 0.1 s per million)."""
    counts = state.counts() if counts is None else Counter(counts)
    in_flight = _in_flight(state, _flying_since(state, holder))
    counts[UnitState.HELD] -= in_flight
    failed_by_code = state.failed_by_code()
    watched = _watch_unseen(path, state)
    active = state.active_seconds
    return StatusSummary(
        journal=str(path),
        project_id=state.header.project_id,
        endpoint=state.header.endpoint,
        done=counts[UnitState.DONE],
        failed=counts[UnitState.FAILED],
        held=counts[UnitState.HELD],
        pending=pending,
        failed_by_code=failed_by_code,
        requests=state.requests,
        attempts=state.attempts,
        accepted=state.accepted,
        runs=len(state.runs),
        first_wall=state.first_wall,
        last_wall=state.last_wall or None,
        active_seconds=active,
        rate=state.accepted / active if active > 0 else None,
        next_steps=_next_steps(
            path,
            state,
            counts,
            pending,
            pending_unknown,
            holder,
            pending_by_manifest,
            watched,
        ),
        pending_unknown=pending_unknown,
        busy=holder is not None,
        holder_pid=holder.pid if holder is not None else None,
        in_flight=in_flight,
        pending_by_manifest=pending_by_manifest or [],
        last_run=LastRun(state.runs[-1].n, state.runs[-1].wall, _last_end(state))
        if state.runs
        else None,
        history=_history(state),
        last_watch=None if watched is None else {"run": watched[0], **watched[1]},
        watch_unfinished=0 if watched is None else watched[2],
        accepted_after_unknown=_accepted_after_unknown(state),
    )


def _accepted_after_unknown(state: JournalState) -> int:
    """Requests done after an earlier send whose outcome is unknown: each may have run more
    than once. Of the requests with such sends only, which the state keeps in full, also a
    run's live state (a request new in a run is sent again only after an answer)."""
    chunks = state.chunks
    return sum(1 for cid in state.unknown_sends if chunks[cid].state == "done")


def _history(state: JournalState) -> list[Invocation]:
    """The journal's runs and verifications, in the order they started (one at a time: each
    holds the journal's lock)."""
    runs = [
        Invocation(
            "run",
            r.n,
            r.wall,
            r.pid,
            r.options,
            state.ends.get(r.n),
            manifest=r.manifest_name,
            manifest_sha256=r.manifest_sha256,
            pending=r.pending,
        )
        for r in state.runs
    ]
    verifications = [_verify_invocation(v, state.verify_ends.get(v.n)) for v in state.verifications]
    return sorted([*runs, *verifications], key=lambda i: i.started)


def _verify_invocation(v: VerifyRecord, end: VerifyEnd | None) -> Invocation:
    return Invocation("verify", v.n, v.wall, v.pid, v.options, end, held=v.held)


def _flags_given(inv: Invocation) -> list[tuple[str, str | None]]:
    """The flags ``inv`` was given, as far as its record says, one-shot ones included."""
    flags = _recorded_flags(inv.options)
    if inv.command == "run":
        # Its record keeps them as options, not among the flags that carry on.
        flags += [(flag, None) for key, flag in ONE_SHOT_FLAGS if inv.options.get(key) is True]
    return flags


def _flying_since(state: JournalState, holder: Holder | None) -> float | None:
    """When the last run started, if it is the ``holder`` of the journal (its pid is the run
    record's): the requests it sent since and has no answer for are in flight. None
    otherwise: a verify, or a run still starting, sends nothing, and what has no answer is
    held. (Requests an earlier run left without an answer are held either way.)"""
    if holder is None or holder.pid is None or not state.runs:
        return None
    last = state.runs[-1]
    return last.wall if last.pid == holder.pid else None


def _flying(info: ChunkInfo, since: float | None) -> bool:
    """Whether the request ``info`` is in flight (see :func:`_flying_since`)."""
    return since is not None and info.state is None and info.last_wall >= since


def _in_flight(state: JournalState, since: float | None) -> int:
    """Units of the requests in flight (see :func:`_flying_since`)."""
    if since is None:
        return 0
    units = state.units
    flying = {
        unit
        for info in state.chunks.values()
        if _flying(info, since)
        for unit in info.units
        if units.get(unit) is UnitState.HELD
    }
    return len(flying)


def status(path: Path) -> StatusSummary:
    """Read the journal at ``path`` once and sum it up, what is not yet sent included.

    One read serves every number (see :func:`not_sent_by_manifest`), so that they are of one moment
    and add up even while a run appends to the journal.
    """
    # Slim: of the requests sent once and done, a status needs their units' states only.
    _, state = read_state(path, slim=True)
    pending, unknown, by_manifest = not_sent_by_manifest(state)
    return summarize(
        path,
        state,
        pending=pending,
        pending_unknown=unknown,
        holder=_other_holder(path),
        pending_by_manifest=by_manifest,
    )


def _other_holder(path: Path) -> Holder | None:
    """Another bulkrerun holding the journal at ``path``; None when none does, or when it
    is this process (a run summing itself up)."""
    holder = held_by(path)
    return None if holder is not None and holder.pid == os.getpid() else holder


def status_json(summary: StatusSummary) -> dict[str, Any]:
    """The summary as a JSON-ready object: integer ``done``, ``failed``, ``held`` and
    ``pending`` (``null`` when unknown, ``pending_unknown`` saying why), then the details."""
    return {
        "done": summary.done,
        "failed": summary.failed,
        "held": summary.held,
        "pending": summary.pending,
        "pending_unknown": summary.pending_unknown,
        "pending_by_manifest": [
            {"manifest": m, "pending": n}
            if isinstance(n, int)
            else {"manifest": m, "pending": None, "pending_unknown": n}
            for m, n in summary.pending_by_manifest
        ],
        "in_flight": summary.in_flight,
        "busy": summary.busy,
        "holder_pid": summary.holder_pid,
        "failed_by_code": summary.failed_by_code,
        "requests": summary.requests,
        "attempts": summary.attempts,
        "accepted": summary.accepted,
        "runs": summary.runs,
        "last_run": _last_run_object(summary.last_run),
        "watch_unfinished": summary.watch_unfinished,
        "last_watch": summary.last_watch,
        "last_verify": None if (v := _last_verify(summary)) is None else _invocation_object(v),
        "history": [_invocation_object(inv) for inv in summary.history],
        "accepted_after_unknown": summary.accepted_after_unknown,
        "first_time": _iso(summary.first_wall),
        "last_time": _iso(summary.last_wall),
        "active_seconds": round(summary.active_seconds, 3),
        "rate_per_second": None if summary.rate is None else round(summary.rate, 3),
        "journal": summary.journal,
        "project_id": summary.project_id,
        "endpoint": summary.endpoint,
        "next_steps": summary.next_steps,
    }


def _invocation_object(inv: Invocation) -> dict[str, Any]:
    """A run or verify of the history as JSON: the keys of ``last_run`` and more."""
    end = inv.end
    obj: dict[str, Any] = {
        "command": inv.command,
        "n": inv.n,
        "started": _iso(inv.started),
        "ended": None if end is None else _iso(end.wall),
        "exit_code": None if end is None else end.exit,
        "stopped": None if end is None else end.stopped,
        "message": None if end is None else end.message,
        "pid": inv.pid,
        "flags": [[flag, value] for flag, value in _flags_given(inv)],
    }
    if inv.command == "run":
        obj |= {
            "manifest": inv.manifest,
            "manifest_sha256": inv.manifest_sha256,
            "pending_at_start": inv.pending,
        }
    else:
        decided = end if isinstance(end, VerifyEnd) else None
        obj |= {
            "held_at_start": inv.held,
            "verified_done": None if decided is None else decided.verified_done,
            "made_pending": None if decided is None else decided.made_pending,
            "still_held": None if decided is None else decided.still_held,
        }
    obj["options"] = inv.options
    return obj


def _last_verify(summary: StatusSummary) -> Invocation | None:
    verifications = [inv for inv in summary.history if inv.command == "verify"]
    return verifications[-1] if verifications else None


def _last_run_object(last: LastRun | None) -> dict[str, Any] | None:
    if last is None:
        return None
    end = last.end
    return {
        "n": last.n,
        "started": _iso(last.started),
        "ended": None if end is None else _iso(end.wall),
        "exit_code": None if end is None else end.exit,
        "stopped": None if end is None else end.stopped,
        "message": None if end is None else end.message,
    }


def _last_run_line(summary: StatusSummary) -> str | None:
    """How the last run ended, in words; None while it runs (it holds the journal)."""
    last = summary.last_run
    if last is None or (summary.busy and last.end is None):
        return None
    return _ended_line(
        f"run {last.n} (started {_iso(last.started)})",
        last.end,
        "what it sent and had no answer for is held; the same command resumes",
    )


def _last_verify_line(summary: StatusSummary) -> str | None:
    """How the last verification ended and what it decided, in words; None when there was
    none, or while it goes on (it holds the journal)."""
    last = _last_verify(summary)
    if last is None or (summary.busy and last.end is None):
        return None
    end = last.end if isinstance(last.end, VerifyEnd) else None
    decided = ""
    if end is not None and end.verified_done is not None:
        decided = (
            f": {end.verified_done:,} made done, {end.made_pending:,} made pending, "
            f"{end.still_held or 0:,} still held"
        )
    return _ended_line(
        f"verify {last.n} (started {_iso(last.started)})",
        end,
        "what it had decided by then is recorded; the held units it had not stay held",
        decided,
    )


def _ended_line(
    what: str, end: RunEnd | VerifyEnd | None, if_no_end: str, decided: str = ""
) -> str:
    """How a run or a verify (``what``) ended, by its end record (None: it recorded none,
    and ``if_no_end`` says what that leaves); ``decided`` follows a normal end's exit."""
    if end is None:
        # A run or a verify that could not write its journal (a full disk) could not write
        # its end there either: nothing in the journal tells that from a kill.
        return (
            f"{what} recorded no end: it was killed or crashed, or could not write its "
            f"journal ({if_no_end})"
        )
    if end.stopped is None:
        return f"{what} ended {_iso(end.wall)}, exit {end.exit}{decided}"
    if end.stopped == "interrupted":
        return f"{what} was interrupted {_iso(end.wall)} ({_past(end.message) or 'a signal'})"
    return f"{what} stopped {_iso(end.wall)}: {end.message or end.stopped}"


# What a run recorded of a Ctrl-C before it recorded what happened: the words said live,
# advice to the person at the keyboard then ("again to stop at once"), which the record
# kept even when a second signal or the grace cut the requests off.
_SAID_LIVE = ": finishing requests in flight (again to stop at once)"


def _past(message: str | None) -> str | None:
    """An interrupted run's recorded ``message`` as what happened: one recorded by an
    earlier version (the words said live) says only what is known of it, that the run
    stopped sending."""
    if message is None or not message.endswith(_SAID_LIVE):
        return message
    return (
        f"{message.removesuffix(_SAID_LIVE)}: it stopped sending; its record does not say "
        "whether the requests in flight finished"
    )


def _manifest_change(inv: Invocation, before: Invocation | None) -> str | None:
    """How the manifest of run ``inv`` differs from that of the run ``before`` it, in words
    for the history (None: the same, or not known): the next operator reads there that it
    was edited between the two, which the path alone does not show (the digest is only in
    ``status --json``)."""
    if before is None or not (inv.manifest_sha256 and before.manifest_sha256):
        return None
    same_text = inv.manifest_sha256 == before.manifest_sha256
    if inv.manifest == before.manifest:
        return None if same_text else f"manifest changed since run {before.n}"
    if same_text:
        return f"the same manifest as run {before.n}'s, by another path"
    return f"another manifest than run {before.n}'s"


def _history_lines(history: list[Invocation]) -> list[str]:
    """One line per run or verify of the history, in columns: what, when it started, how it
    ended, who ran it where, and the manifest and flags it was given, then how the manifest
    differs from the run before's, when it does."""
    rows = []
    notes: list[str | None] = []
    before: Invocation | None = None  # the run before, to compare manifests with
    for inv in history:
        if inv.command == "run":
            notes.append(_manifest_change(inv, before))
            before = inv
        else:
            notes.append(None)
        end = inv.end
        if end is None:
            how = "no end"
        elif end.stopped is None:
            how = f"exit {end.exit}"
        else:
            how = f"exit {end.exit} ({end.stopped})"
        user, host = inv.options.get("user"), inv.options.get("host")
        who = f"{user}@{host}" if user and host else "?"
        words = [inv.manifest or ""] if inv.command == "run" else []
        given = command_line(words, _flags_given(inv))
        rows.append([f"{inv.command} {inv.n}", _iso(inv.started) or "", how, who, given])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row, note in zip(rows, notes, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        line = "  " + "  ".join([*cells, row[4]])
        lines.append((f"{line}  ({note})" if note else line).rstrip())
    return lines


def render_status(summary: StatusSummary, console: Console) -> None:
    """Print the summary for people."""
    console.print(
        f"journal [bold]{escape(summary.journal)}[/] (project {escape(summary.project_id)} "
        f"at {escape(summary.endpoint)})"
    )
    table = Table(show_edge=False, pad_edge=False)
    for name, style in (
        ("done", "green"),
        ("failed", "red"),
        ("held", "yellow"),
        ("not yet sent", ""),
    ):
        table.add_column(name, justify="right", style=style)
    pending = "?" if summary.pending is None else f"{summary.pending:,}"
    table.add_row(f"{summary.done:,}", f"{summary.failed:,}", f"{summary.held:,}", pending)
    console.print(table)
    if summary.in_flight:  # counted only when the holder's pid is the last run's
        console.print(
            f"a run (pid {summary.holder_pid}) is writing this journal: "
            f"{counted(summary.in_flight, 'unit')} in flight (no answer yet)"
        )
    elif summary.busy:
        verifying = _last_verify(summary)
        if (
            verifying is not None
            and verifying.end is None
            and summary.holder_pid is not None
            and verifying.pid == summary.holder_pid
        ):
            what = f"a verify (pid {summary.holder_pid}, verify {verifying.n}) holds this journal"
        else:
            what = f"{Holder(summary.holder_pid).who} holds this journal (a run, or a verify)"
        console.print(f"{what}: these numbers are of this moment")
    for code, n in summary.failed_by_code.items():
        console.print(f"  failed [red]{escape(code)}[/]: {n:,}")
    if summary.requests:
        line = (
            f"{summary.accepted:,} of {counted(summary.requests, 'request')} accepted, "
            f"{counted(summary.attempts, 'attempt')} in {counted(summary.runs, 'run')}"
        )
        if summary.first_wall is not None and summary.last_wall is not None:
            line += f", {_iso(summary.first_wall)} to {_iso(summary.last_wall)}"
        if summary.rate is not None:
            line += f"; {summary.rate:,.1f} requests/s over {summary.active_seconds:,.1f} s active"
        console.print(line)
        if summary.accepted_after_unknown:
            console.print(
                f"{counted(summary.accepted_after_unknown, 'request')} accepted after an "
                "earlier send whose outcome is unknown: each may have run more than once "
                "(see unknown_sends in the report)",
                highlight=False,
            )
    else:
        console.print("no request recorded yet")
    if (ended := _last_run_line(summary)) is not None:
        console.print(ended, markup=False, highlight=False)
    if (verified := _last_verify_line(summary)) is not None:
        console.print(verified, markup=False, highlight=False)
    history = summary.history
    if sum(inv.command == "run" for inv in history) > 1 or len(history) - summary.runs > 1:
        # Only when the lines above do not say it all: status --json has every one.
        console.print("runs (and verifications), with their flags:")
        for line in _history_lines(history):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if summary.next_steps:  # none left when a run's only one is its resume command
        console.print("next:")
    for step in summary.next_steps:
        console.print(f"  - {escape(step)}", soft_wrap=True)


# ---------------------------------------------------------------------------------------
# report


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One request (chunk) and its final outcome.

    ``state`` is what became of this request: ``done``, ``failed``, ``held`` (including
    sent without an outcome recorded) or ``pending`` (not acted on, not sent since).
    ``current`` is what its units are now, which later requests or a verification may
    have changed (``done 3, held 1`` when they differ). ``begin_ms``/``end_ms`` are the
    window request's ``begin_time``/``end_time`` as sent; ``instances`` the size of a
    mode A request. ``instance_status`` is what ``run --watch`` saw the rerun instances end
    as (``success 3, fail 1``): "accepted" is not "succeeded". ``verify_state`` and
    ``verify_evidence`` say how a verification decided the units, when one decides them
    (see the module's docstring). ``unknown_sends`` counts the sends of this request whose
    outcome is unknown (held, or no outcome recorded), the last one included: each may have
    been acted on, so a request ``done`` with 2 of them may have run up to three times (a
    verification may since have found one was not acted on). ``run`` is the number of the
    run that made its last attempt, or last stopped before sending one (as ``status``
    counts runs): the journal's record of that run names its manifest, its flags and when
    it started. ``unknown_request_ids`` are the request ids of the sends counted in
    ``unknown_sends`` that got one (a sent request with no answer has none): what a
    support ticket asking whether it ran twice needs. ``jobs`` are a window request's
    ``(job_name, workspace_id)`` besides its own, ``items`` an instances request's
    ``(job_id, plan_time, submit_time)``, both as sent (None for the other mode);
    ``failed_instances`` what the watch saw of its rerun instances that ended failed
    (None when it saw none of them end). ``timezone`` is the one its entry's times were
    written in, to show them in again (None: UTC).
    """

    chunk: str
    entry: str
    job_name: str
    workspace: str
    mode: str
    begin_ms: int | None
    end_ms: int | None
    instances: int | None
    attempts: int
    state: str
    current: str
    status: int | None
    error_code: str | None
    error_msg: str | None
    request_id: str | None
    reason: str | None
    last_wall: float
    instance_status: str | None = None
    verify_state: str | None = None
    verify_evidence: str | None = None
    unknown_sends: int = 0
    run: int = 0
    unknown_request_ids: tuple[str, ...] = ()
    jobs: tuple[tuple[str, str], ...] | None = None
    items: tuple[tuple[int, int, int], ...] | None = None
    failed_instances: tuple[WatchRecord, ...] | None = None
    timezone: str | None = None


REPORT_COLUMNS = (
    "chunk",
    "entry",
    "job_name",
    "workspace",
    "mode",
    "begin",
    "end",
    "instances",
    "attempts",
    "state",
    "current",
    "status",
    "error_code",
    "error_msg",
    "request_id",
    "reason",
    "last_time",
    "instance_status",
    "verify_state",
    "verify_evidence",
    "unknown_sends",
    "run",
    "unknown_request_ids",
    "jobs",
    "items",
    "failed_instances",
    "timezone",
    "begin_local",
    "end_local",
)
"""The CSV header; JSON lines carry the same keys plus ``begin_ms`` and ``end_ms``. Columns
are only ever added at the end, so that scripts keep working."""


def _row_state(info: ChunkInfo, flying: bool) -> str:
    if info.state is None:
        # Sent, and no outcome recorded: the run that sent it is still waiting for the
        # answer, or it was killed.
        return "in flight" if flying else "held"
    if info.state in ("retry", "pending"):
        return "pending"
    return info.state


def _current(info: ChunkInfo, units: dict[str, UnitState], flying: bool) -> str:
    held = "in flight" if flying else "held"
    tally = Counter(
        held if (state := units.get(u)) is UnitState.HELD else str(state or "pending")
        for u in info.units
    )
    if len(tally) == 1:
        return next(iter(tally))
    return ", ".join(f"{s} {n}" for s, n in sorted(tally.items()))


def _verification(
    info: ChunkInfo, units: dict[str, UnitState], verified: dict[str, str]
) -> tuple[str, str] | None:
    """How a verification decided the chunk's units: ``(state, evidence)``, or None when it
    decides none of them.

    :attr:`JournalState.verified` holds, per unit, the evidence of the verification that
    decides its state now, so that state is what the verification found (a unit absent from
    the replay's units is pending again).
    """
    decided = [u for u in info.units if u in verified]
    if not decided:
        return None
    tally = Counter(str(units.get(u, "pending")) for u in decided)
    if len(tally) == 1 and len(decided) == len(info.units):
        state = next(iter(tally))
    else:
        state = ", ".join(f"{s} {n}" for s, n in sorted(tally.items()))
    return state, " | ".join(dict.fromkeys(verified[u] for u in decided))


def _details(
    path: Path, state: JournalState, infos: list[ChunkInfo] | None = None
) -> Iterator[tuple[ChunkInfo, dict[str, Any], dict[str, Any] | None]]:
    """Each chunk (of ``infos``, in journal order; default: all) with its intent record and
    the outcome record of its last attempt (None when that attempt has none), read from the
    file at the offsets the replay noted."""
    if infos is None:
        infos = list(state.chunks.values())

    def offsets() -> Iterator[int]:
        for info in infos:
            yield info.intent_offset
            if info.state is not None and info.outcome_offset is not None:
                yield info.outcome_offset

    records = read_records_at(path, offsets())
    for info in infos:
        intent = next(records)
        outcome = None
        if info.state is not None and info.outcome_offset is not None:
            outcome = next(records)
        yield info, intent, outcome


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _row(
    info: ChunkInfo,
    intent: dict[str, Any],
    outcome: dict[str, Any] | None,
    units: dict[str, UnitState],
    flying: bool = False,
    zone: str | None = None,
) -> ReportRow:
    """The report's row of one request; ``flying``: it is in flight (see
    :func:`_flying_since`); ``zone``: its entry's timezone (see :class:`_EntryZones`)."""
    body = intent.get("body") or {}
    tasks = body.get("task_retrys")
    o = outcome or {}
    begin, end = body.get("begin_time"), body.get("end_time")
    mode = str(intent.get("kind", ""))
    if outcome is not None:
        reason = _opt_str(o.get("reason"))
    else:
        reason = "sent; no answer yet" if flying else "may have been sent; no outcome recorded"
    return ReportRow(
        chunk=info.id,
        entry=str(intent.get("entry", "")),
        job_name=str(intent.get("job_name", "")),
        workspace=str(intent.get("workspace", "")),
        mode=mode,
        begin_ms=int(begin) if begin is not None else None,
        end_ms=int(end) if end is not None else None,
        instances=len(tasks) if isinstance(tasks, list) else None,
        attempts=info.attempts,
        state=_row_state(info, flying),
        current=_current(info, units, flying),
        status=int(o["status"]) if o.get("status") is not None else None,
        error_code=_opt_str(o.get("error_code")),
        error_msg=_opt_str(o.get("error_msg")),
        request_id=_opt_str(o.get("request_id")),
        reason=reason,
        last_wall=info.last_wall,
        run=info.run,
        jobs=_jobs(body) if mode == "window" else None,
        items=_items(tasks) if isinstance(tasks, list) else None,
        timezone=zone,
    )


def _jobs(body: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The jobs a window request reruns beside its own, as sent: (job_name, workspace_id)."""
    return tuple(
        [
            (str(job.get("job_name", "")), str(job.get("workspace_id", "")))
            for job in body.get("jobs") or ()
            if isinstance(job, dict)
        ]
    )


def _items(tasks: list[Any]) -> tuple[tuple[int, int, int], ...]:
    """The instances an instances request reruns, as sent: (job_id, plan_time, submit_time)."""
    return tuple(
        [
            (int(t["job_id"]), int(t["plan_time"]), int(t["submit_time"]))
            for t in tasks
            if isinstance(t, dict)
        ]
    )


def _known_zone(zone: object) -> str | None:
    """``zone`` when it names a timezone this machine knows, else None."""
    if not isinstance(zone, str) or not zone:
        return None
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return zone


def _entry_zones(run: RunRecord) -> dict[str, str]:
    """Each entry of the manifest ``run`` recorded whose times ``plan`` shows in a timezone
    (a window's, a selection's) -> that timezone: the entry's own, or ``[defaults]``'. Read
    from the journal's copy alone, without validating it again (that would need its
    instance files, which a time does not); an entry or a zone that does not read has none."""
    try:
        data = _copy_data(run)
    except ValueError:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        return {}
    if not isinstance(data, dict):
        return {}
    defaults = data.get("defaults")
    default = defaults.get("timezone") if isinstance(defaults, dict) else None
    zones = {}
    for kind in ("window", "select"):
        entries = data.get(kind)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            zone = _known_zone(entry.get("timezone", default) if isinstance(entry, dict) else None)
            if zone is not None:
                zones[f"{kind}[{i}]"] = zone
    return zones


class _EntryZones:
    """The timezone of each request's entry (see :func:`_entry_zones`) as the run that first
    sent the request had it: the last run to start before its first intent (runs hold the
    journal one at a time), whose manifest names the entry in the intent. Each run's copy is
    read once, when a request of it first asks."""

    __slots__ = ("_runs", "_starts", "_zones")

    def __init__(self, runs: list[RunRecord]) -> None:
        self._runs = runs
        self._starts = [run.wall for run in runs]
        self._zones: dict[int, dict[str, str]] = {}

    def of(self, first_wall: float, entry: str) -> str | None:
        i = bisect.bisect_right(self._starts, first_wall) - 1
        if i < 0:
            return None
        zones = self._zones.get(i)
        if zones is None:
            zones = self._zones[i] = _entry_zones(self._runs[i])
        return zones.get(entry)


def report_rows(path: Path, holder: Holder | None = None) -> Iterator[ReportRow]:
    """One row per request recorded in the journal at ``path``, in the order first sent,
    with how a verification decided its units, if one did, and the final instance statuses
    ``run --watch`` saw, when it ran. ``holder``: another bulkrerun holding the journal;
    when it is the last run, its requests without an answer yet are ``in flight``, not
    ``held``.

    Verifications come with the replay (:attr:`JournalState.verified`), so this reads the
    journal once, plus the intent and outcome lines of each request at their offsets. The
    journal is read before this returns, so that a path that is no journal is refused before
    a writer has put anything out (a csv header, say).
    """
    _, state = read_state(path)
    return _rows(path, state, read_watch(path, state.header.created), holder)


def _rows(
    path: Path, state: JournalState, watched: dict[str, list[WatchRecord]], holder: Holder | None
) -> Iterator[ReportRow]:
    verified = state.verified
    since = _flying_since(state, holder)
    unknown = state.unknown_sends
    zones = _EntryZones(state.runs)
    for info, intent, outcome in _details(path, state):
        flying = _flying(info, since)
        zone = zones.of(info.first_wall, str(intent.get("entry", "")))
        row = _row(info, intent, outcome, state.units, flying, zone)
        # The last send without an outcome is unknown too, unless it is still in flight.
        sends = unknown.get(info.id, 0) + (info.state is None and not flying)
        if sends:
            ids = tuple(state.unknown_ids.get(info.id, ()))
            row = dataclasses.replace(row, unknown_sends=sends, unknown_request_ids=ids)
        if verified and (decided := _verification(info, state.units, verified)) is not None:
            row = dataclasses.replace(row, verify_state=decided[0], verify_evidence=decided[1])
        if watched:
            records = [r for u in info.units for r in watched.get(u, ())]
            if records:
                seen = Counter(r.status for r in records)
                text = ", ".join(f"{status} {n}" for status, n in seen.most_common())
                failed = sorted(
                    (r for r in records if r.status in FAILED_STATUSES),
                    key=lambda r: (r.plan_time, r.job_name),
                )
                row = dataclasses.replace(row, instance_status=text, failed_instances=tuple(failed))
        yield row


def _row_object(row: ReportRow) -> dict[str, Any]:
    """The row's values by column, but for ``jobs``, ``items`` and ``failed_instances``,
    which CSV writes as text and JSON as lists (:func:`_json_object`), and which come
    before ``timezone``, ``begin_local`` and ``end_local`` (:data:`REPORT_COLUMNS`)."""
    return {
        "chunk": row.chunk,
        "entry": row.entry,
        "job_name": row.job_name,
        "workspace": row.workspace,
        "mode": row.mode,
        "begin": _iso_ms(row.begin_ms),
        "end": _iso_ms(row.end_ms),
        "begin_ms": row.begin_ms,
        "end_ms": row.end_ms,
        "instances": row.instances,
        "attempts": row.attempts,
        "state": row.state,
        "current": row.current,
        "status": row.status,
        "error_code": row.error_code,
        "error_msg": row.error_msg,
        "request_id": row.request_id,
        "reason": row.reason,
        "last_time": _iso(row.last_wall),
        "instance_status": row.instance_status,
        "verify_state": row.verify_state,
        "verify_evidence": row.verify_evidence,
        "unknown_sends": row.unknown_sends,
        "run": row.run,
        "unknown_request_ids": list(row.unknown_request_ids),
        "timezone": row.timezone,
        "begin_local": _local_iso(row.begin_ms, row.timezone),
        "end_local": _local_iso(row.end_ms, row.timezone),
    }


def _json_object(row: ReportRow) -> dict[str, Any]:
    """The row as a JSON line: :func:`_row_object` and the lists only JSON carries whole."""
    obj = _row_object(row)
    if row.jobs is not None:
        obj["jobs"] = [{"job_name": name, "workspace_id": ws} for name, ws in row.jobs]
    else:
        obj["jobs"] = None
    if row.items is not None:
        obj["items"] = [{"job_id": j, "plan_time": p, "submit_time": s} for j, p, s in row.items]
    else:
        obj["items"] = None
    if row.failed_instances is not None:
        obj["failed_instances"] = [
            {
                "job_name": r.job_name,
                "job_id": r.job_id,
                "plan_time": r.plan_time,
                "instance_id": r.instance_id,
                "status": r.status,
            }
            for r in row.failed_instances
        ]
    else:
        obj["failed_instances"] = None
    for key in REPORT_COLUMNS[REPORT_COLUMNS.index("failed_instances") + 1 :]:
        obj[key] = obj.pop(key)  # in the order of the columns: those added last, last
    return obj


def _moment(ms: int, zone: str | None) -> datetime:
    """Epoch milliseconds as a moment in ``zone`` (None: UTC), to the millisecond (not
    through a float of seconds, which may land a microsecond short)."""
    seconds, milli = divmod(ms, 1000)
    at = datetime.fromtimestamp(seconds, ZoneInfo(zone) if zone else UTC)
    return at.replace(microsecond=milli * 1000)


@functools.lru_cache(maxsize=65_536)
def _zoned_iso(ms: int, zone: str) -> str:
    """Epoch milliseconds in ``zone`` with its offset and milliseconds, as ``begin_local``
    writes them (cached as :func:`_ms_iso` is: a report repeats a few thousand times)."""
    return _moment(ms, zone).isoformat(timespec="milliseconds")


def _local_iso(ms: int | None, zone: str | None) -> str | None:
    """``begin_local``/``end_local``: in the entry's timezone, or as ``begin`` (UTC)."""
    if ms is None:
        return None
    return _zoned_iso(ms, zone) if zone else _ms_iso(ms)


def _short_iso(ms: int, zone: str | None = None) -> str:
    """A time for the table: in ``zone`` with its offset (as ``plan`` shows it), or UTC
    (``Z``); its milliseconds only when it has some."""
    spec = "seconds" if ms % 1000 == 0 else "milliseconds"
    shown = _moment(ms, zone).isoformat(timespec=spec)
    return shown if zone else shown.replace("+00:00", "Z")


def _span(begin_ms: int, end_ms: int, zone: str | None = None) -> str:
    begin, end = _short_iso(begin_ms, zone), _short_iso(end_ms, zone)
    if begin == end:
        return begin
    if zone and begin[-6:] == end[-6:]:  # one offset (+08:00), said once, at the start
        end = end[:-6]
    if begin[:11] == end[:11]:  # same day: the end's time says enough
        end = end[11:]
    return f"{begin} .. {end}"


def _what(row: ReportRow) -> str:
    """A window request's span; how many instances an instances request named, and the span
    of their plan times (the CSV and JSON list each one); in the entry's timezone."""
    if row.begin_ms is not None and row.end_ms is not None:
        return _span(row.begin_ms, row.end_ms, row.timezone)
    if row.instances is not None:
        what = f"{row.instances:,} instance{'s' if row.instances != 1 else ''}"
        if row.items:
            plans = [plan for _, plan, _ in row.items]
            what += f": {_span(min(plans), max(plans), row.timezone)}"
        return what
    return ""


def _job(row: ReportRow) -> str:
    """The row's job, and the jobs a window reruns beside it (as ``plan`` names them)."""
    if not row.jobs:
        return row.job_name
    return " + ".join([row.job_name, *(name for name, _ in row.jobs)])


_STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "held": "yellow",
    "in flight": "blue",
    "pending": "cyan",
}


# The table's columns, each with the widest it may get and the width it keeps while others
# give way. ``None``: always shown in full (chunk id prefix, entry, tries, state, status,
# request id: what an audit and a support ticket need of every row). The others give way
# when the console is narrow: first each down to the width it keeps, the widest first, so
# that a window's jobs, the message and the instances' statuses give way before the span of
# times a row covers (at 240 columns it lost its last character to the jobs of a window);
# then, if the line is still too wide, all of them, the widest first, and all before the
# columns shown in full.
_COLUMNS: tuple[tuple[str, int | None, int], ...] = (
    ("chunk", None, 0),
    ("entry", None, 0),
    ("job", 48, 24),
    ("what", 66, 66),  # "1,000 instances: " and a span over two days, its offset once
    ("tries", None, 0),
    ("state", None, 0),
    ("now", 24, 10),
    ("verified", 24, 10),
    ("status", None, 0),
    ("request id", None, 0),
    ("message", 80, 24),
    ("instances now", 32, 16),
)
_STATE_COLUMN = 5
_GAP = "  "


def _cells(row: ReportRow) -> list[str]:
    status = " ".join(x for x in (str(row.status or ""), row.error_code or "") if x)
    return [
        row.chunk[:12],
        row.entry,
        _job(row),
        _what(row),
        f"{row.attempts} ({row.unknown_sends} unknown)" if row.unknown_sends else str(row.attempts),
        row.state,
        row.current if row.current != row.state else "",
        row.verify_state or "",
        status,
        row.request_id or "",
        row.verify_evidence or row.error_msg or row.reason or "",
        row.instance_status or "",
    ]


def _widths(block: list[list[str]], room: int, before: list[int]) -> list[int]:
    """Each column's width for ``block``: its widest cell, at most the column's limit, and
    no narrower than in the blocks ``before`` it (the header's included), so that the
    columns stay under their names from block to block; then, while the line is wider than
    ``room``, a column that may give way loses a cell: the widest of those wider than the
    width they keep, then the widest of all (cut cells end with an ellipsis), down to
    three, then all (a column of width 0 is left out, with its gap)."""
    widths = [
        max(min(max(cell_len(cells[i]) for cells in block), widest or sys.maxsize), before[i])
        for i, (_, widest, _) in enumerate(_COLUMNS)
    ]
    flexible = [i for i, (_, widest, _) in enumerate(_COLUMNS) if widest is not None]

    def line_width() -> int:
        shown = [w for w in widths if w]
        return sum(shown) + len(_GAP) * (len(shown) - 1)

    while line_width() > room:
        above = [i for i in flexible if widths[i] > _COLUMNS[i][2]]
        i = max(above or flexible, key=lambda i: widths[i])
        if not widths[i]:
            break
        widths[i] = widths[i] - 1 if widths[i] > 3 else 0  # "a…" says nothing: left out
    return widths


def _fitted(cell: str, width: int) -> str:
    if cell_len(cell) <= width:
        return set_cell_size(cell, width)
    return set_cell_size(cell, width - 1) + "…"


def _write_block(block: list[list[str]], before: list[int] | None, console: Console) -> list[int]:
    """Rows as lines of columns two spaces apart, written as one text, under the header
    when no block came ``before`` (else the widths it had); returns the widths used.
    rich's Table took a millisecond a row (two minutes for a journal of 100,000 requests),
    and the rows need none of what it does beyond this: one line each, cut to the
    console's width."""
    header = before is None
    if header:
        block = [[name for name, _, _ in _COLUMNS], *block]
    room = console.width  # a property that asks the terminal: read once, not once a line
    widths = _widths(block, room, before or [0] * len(_COLUMNS))
    # Each line is three appends: the cells before the state, the state (styled), the cells
    # after it. A Text append strips control codes and keeps spans: one per cell and gap,
    # 24 a line, took a fifth of the table's time.
    shown = [i for i, width in enumerate(widths) if width]
    before_state = [i for i in shown if i < _STATE_COLUMN]
    after_state = [i for i in shown if i > _STATE_COLUMN]
    state_width = widths[_STATE_COLUMN]
    text = Text(no_wrap=True, overflow="crop")
    for n, cells in enumerate(block):
        title = header and n == 0
        line = Text(
            "".join(_fitted(cells[i], widths[i]) + _GAP for i in before_state),
            style="bold" if title else "",
        )
        state = cells[_STATE_COLUMN]
        line.append(_fitted(state, state_width), "" if title else _STATE_STYLE.get(state, ""))
        line.append("".join(_GAP + _fitted(cells[i], widths[i]) for i in after_state))
        line.rstrip()
        line.truncate(room)
        text.append_text(line)
        text.append("\n")
    console.print(text, end="")
    return widths


def _write_table(rows: Iterable[ReportRow], console: Console) -> int:
    n = 0
    block: list[list[str]] = []
    widths: list[int] | None = None
    tally: Counter[str] = Counter()
    now: Counter[str] = Counter()  # of the requests' units, after verifications since
    # (chunk, its entry's timezone, instance) of each rerun instance the watch saw end failed
    failed: list[tuple[str, str | None, WatchRecord]] = []
    for row in rows:
        block.append(_cells(row))
        if row.failed_instances:
            failed += ((row.chunk, row.timezone, r) for r in row.failed_instances)
        tally[row.state] += 1
        now["mixed" if "," in row.current else row.current] += 1
        n += 1
        if len(block) == _TABLE_BLOCK:
            widths = _write_block(block, widths, console)
            block = []
    if block:
        _write_block(block, widths, console)
    line = counted(n, "request")
    if tally:
        line += ": " + ", ".join(f"{state} {k:,}" for state, k in sorted(tally.items()))
    if now != tally:  # a verify decided units since: what status counts
        line += "; their units now: " + ", ".join(f"{s} {k:,}" for s, k in sorted(now.items()))
    console.print(line)
    if failed:
        _write_failed(failed, console)
    return n


def _write_failed(failed: list[tuple[str, str | None, WatchRecord]], console: Console) -> None:
    """After the table, one line per rerun instance the watch saw end failed: its request
    (the chunk id prefix the table shows), job, plan time and status. In a cell of the
    table they would be cut off on any console; they are what a review of an incident
    asks for."""
    lines = [
        [chunk[:12], r.job_name, _short_iso(r.plan_time, zone), r.status]
        for chunk, zone, r in failed
    ]
    widths = [max(cell_len(cells[i]) for cells in lines) for i in range(len(lines[0]))]
    width = console.width
    text = Text(no_wrap=True, overflow="crop")
    text.append(
        f"{counted(len(failed), 'rerun instance')} the watch saw end failed "
        "(request, job, plan time, status):\n"
    )
    for cells in lines:
        line = Text("  " + _GAP.join(_fitted(c, w) for c, w in zip(cells, widths, strict=True)))
        line.rstrip()
        line.truncate(width)
        text.append_text(line)
        text.append("\n")
    console.print(text, end="")


# What a spreadsheet may take for the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A value as a CSV cell: None empty, text that a spreadsheet would run as a formula
    behind a ``'`` (see the module's docstring)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _jobs_text(jobs: tuple[tuple[str, str], ...] | None) -> str | None:
    """A window's jobs as a CSV cell: their names, ``; `` between them."""
    return None if jobs is None else "; ".join(name for name, _ in jobs)


def _items_text(items: tuple[tuple[int, int, int], ...] | None) -> str | None:
    """An instances request's instances as a CSV cell: job id and plan time of each."""
    if items is None:
        return None
    return "; ".join(f"{job_id} {_ms_iso(plan)}" for job_id, plan, _ in items)


def _failed_text(failed: tuple[WatchRecord, ...] | None) -> str | None:
    """The rerun instances seen end failed as a CSV cell: job, plan time and status of each."""
    if failed is None:
        return None
    return "; ".join(f"{r.job_name} {_ms_iso(r.plan_time)} {r.status}" for r in failed)


def _write_csv(rows: Iterable[ReportRow], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    n = 0
    for row in rows:
        obj = _row_object(row)
        obj["unknown_request_ids"] = " ".join(row.unknown_request_ids) or None
        obj["jobs"] = _jobs_text(row.jobs)
        obj["items"] = _items_text(row.items)
        obj["failed_instances"] = _failed_text(row.failed_instances)
        writer.writerow([_csv_cell(obj[c]) for c in REPORT_COLUMNS])
        n += 1
    return n


def _write_json_lines(rows: Iterable[ReportRow], out: TextIO) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(_json_object(row), ensure_ascii=False) + "\n")
        n += 1
    return n


# -- the manifest of what failed or is held ------------------------------------------------


def _toml_str(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} in a manifest")


def _comment(text: str) -> str:
    return " ".join(text.split())


_COMMON_KEYS = ("retry_location", "retry_task_version", "ignore_obs_monitor", "node_name")


def _manifest_entry(
    row: ReportRow, body: dict[str, Any], items: list[dict[str, Any]] | None, zone: str | None
) -> list[str]:
    """A request as an entry of a manifest. ``zone``: its entry's timezone in the manifest
    that sent it, as ``report`` shows its times (:class:`_EntryZones`): a window's bounds are
    written in epoch milliseconds, commented in that timezone as ``begin_local`` writes them
    (UTC without one), and the entry keeps it, so that ``plan`` and ``report`` of a run of
    the new manifest show them in it again. A timezone changes no request (ids come from the
    body): the window is sent as it was."""
    why = row.error_code or row.reason or ""
    if row.error_msg:
        why = f"{why} {row.error_msg}".strip()
    lines = [
        f"# {row.entry}, chunk {row.chunk}: {row.state}"
        + (f" ({_comment(why)})" if why else "")
        + f", {row.attempts} attempt{'s' if row.attempts != 1 else ''}"
    ]
    if items is None:
        begin, end = int(body["begin_time"]), int(body["end_time"]) + 1
        # A span at least as long as the window makes exactly one request, with this
        # begin_time and end_time: the chunk as it was sent (same body, same chunk id).
        span_s = max(1, -(-(end - begin) // 1000))
        lines += [
            "[[window]]",
            f"job_name = {_toml_str(row.job_name)}",
            f"workspace = {_toml_str(row.workspace)}",
            f"begin = {begin}  # {_local_iso(begin, zone)}",
            f"end = {end}  # {_local_iso(end, zone)}",
            f'chunk = "{span_s}s"',
            f"concurrent = {int(body.get('concurrent', 1))}",
        ]
        if body.get("jobs"):
            lines.append(f"jobs = {_toml_value(list(body['jobs']))}")
        if zone:
            lines.append(f"timezone = {_toml_str(zone)}")
    else:
        lines += [
            "[[instances]]",
            f"job_name = {_toml_str(row.job_name)}",
            f"workspace = {_toml_str(row.workspace)}",
            f"batch = {max(1, min(1000, len(items)))}",
        ]
    for key in _COMMON_KEYS:
        if key in body:
            lines.append(f"{key} = {_toml_value(body[key])}")
    if items is not None:
        lines.append("items = [")
        lines += [
            f"  {{ job_id = {int(i['job_id'])}, plan_time = {int(i['plan_time'])}, "
            f"submit_time = {int(i['submit_time'])} }},"
            for i in items
        ]
        lines.append("]")
    return [*lines, ""]


def _write_manifest(path: Path, out: TextIO, err: TextIO) -> int:
    """Write a manifest of the units now failed or held, one entry per request that
    carried them (the latest such request, if several); returns the number of entries.

    With none, writes nothing on ``out`` (a manifest without entries is no manifest) and
    says on ``err`` that there is nothing to rerun."""
    header, state = read_state(path)
    units = state.units
    wanted = (UnitState.FAILED, UnitState.HELD)
    entries: list[list[str]] = []
    emitted: set[str] = set()
    # Only the requests that carry a unit failed or held now are read: the records of the
    # others, most of a journal, would otherwise all be held here at once (650 MB for one of
    # 100,000 done requests). Latest first, so that a unit sent again is written with its
    # last request.
    carrying = [
        info for info in state.chunks.values() if any(units.get(u) in wanted for u in info.units)
    ]
    details = list(_details(path, state, carrying))
    zones = _EntryZones(state.runs)
    for info, intent, outcome in reversed(details):
        todo = [u for u in info.units if units.get(u) in wanted and u not in emitted]
        if not todo:
            continue
        row = _row(info, intent, outcome, units)
        body = intent.get("body") or {}
        tasks = body.get("task_retrys")
        if isinstance(tasks, list):
            keep = set(todo)
            unit_ids = info.units
            if len(unit_ids) != len(tasks):  # not written by bulkrerun's planner: recompute
                unit_ids = tuple(
                    instance_unit_id(
                        row.job_name, int(t["job_id"]), int(t["plan_time"]), int(t["submit_time"])
                    )
                    for t in tasks
                )
            items = [t for u, t in zip(unit_ids, tasks, strict=True) if u in keep]
            if not items:
                continue
            entries.append(_manifest_entry(row, body, items, None))
        else:
            zone = zones.of(info.first_wall, str(intent.get("entry", "")))
            entries.append(_manifest_entry(row, body, None, zone))
        emitted.update(todo)
    entries.reverse()
    journal = str(path)
    # Accepted, then failed as the watch saw them end: done units, which a run of this
    # journal never sends again, so not in the manifest; it says where they are.
    watched = _watch_failed(path, header.created)
    aside = (
        f"{counted(watched, 'rerun instance')} the watch saw end failed "
        f"({'its request was' if watched == 1 else 'their requests were'} accepted, so a run "
        f"of this journal does not send {'it' if watched == 1 else 'them'} again): "
        f"`bulkrerun report {shlex.quote(journal)}` lists {'it' if watched == 1 else 'them'}"
    )
    if not entries:
        err.write(
            f"nothing failed or is held in the journal {journal}: nothing to rerun, so no "
            "manifest was written\n"
        )
        if watched:
            err.write(f"not in any manifest: {aside}\n")
        return 0
    out.write(
        f"# Requests whose units failed or are held, from the journal {_comment(journal)}\n"
        f"# (project {header.project_id} at {_comment(header.endpoint)}), "
        f"written {_iso(datetime.now(UTC).timestamp())}.\n"
    )
    # Said of what the manifest holds: a manifest of refusals alone was told to verify
    # held units it had none of.
    states = {units.get(u) for u in emitted}
    if UnitState.HELD in states:
        out.write(
            "# Held units may have been rerun already: check them first with "
            f"`bulkrerun verify {shlex.quote(journal)}`.\n"
        )
    needs = [
        f"{word} units need {flag}"
        for state, word, flag in (
            (UnitState.FAILED, "failed", "--retry-failed"),
            (UnitState.HELD, "held", "--resend-held"),
        )
        if state in states
    ]
    out.write(f"# With the same journal, {' and '.join(needs)}.\n")
    if watched:
        out.write(f"# Not here: {_comment(aside)}.\n")
    out.write("version = 1\n\n")
    for lines in entries:
        out.write("\n".join(lines) + "\n")
    return len(entries)


def write_report(
    path: Path, fmt: ReportFormat, out: TextIO, console: Console, *, err: TextIO | None = None
) -> int:
    """Write the report of the journal at ``path`` in ``fmt``: ``table`` on ``console``;
    ``csv``, ``json`` (JSON lines: one object per request) or ``manifest`` on ``out``.
    Returns the number of rows (entries, for a manifest). Notes go to ``err`` (default:
    stderr): that a manifest has nothing to rerun, so none is written; that another
    bulkrerun holds the journal, so the report is of this moment.

    While another bulkrerun holds the journal, a manifest is refused (:class:`BadInput`): it
    would name a run's requests without an answer yet, and, run, send them twice."""
    notes = sys.stderr if err is None else err
    holder = _other_holder(path)
    if holder is not None:
        if fmt == "manifest":
            raise BadInput(
                f"{holder.who} holds the journal {path}: a manifest of what failed "
                "or is held could name requests still in flight, and running it would send "
                "them twice. Wait for it to end (or stop it), then ask again."
            )
        print(
            f"note: {holder.who} holds this journal: the report is of this moment. A run's "
            "requests without an answer yet show as in flight (as held, for a verify).",
            file=notes,
        )
    if fmt == "manifest":
        return _write_manifest(path, out, notes)
    rows = report_rows(path, holder)
    if fmt == "table":
        return _write_table(rows, console)
    if fmt == "csv":
        return _write_csv(rows, out)
    if fmt == "json":
        return _write_json_lines(rows, out)
    raise ValueError(f"unknown report format {fmt!r}: table, csv, json or manifest")
