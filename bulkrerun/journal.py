"""The journal: a write-ahead record of every request, the source of truth for resume.

The rerun API is not idempotent (a request sent twice reruns twice), so the journal records
a request's *intent* durably before the request leaves the process, and its *outcome* after.
Replaying the file gives the state of every unit of work (see :mod:`bulkrerun.chunk`):

=========================================  ==============================================
last records of a unit's chunk             the unit is
=========================================  ==============================================
(nothing)                                  pending: absent from :attr:`JournalState.units`
intent, outcome ``done``                   ``done``: never sent again
intent, outcome ``failed``                 ``failed``: sent again with ``--retry-failed``
intent, outcome ``held``                   ``held``: sent again with ``--resend-held``
intent without outcome (crash, ``kill``)   ``held``: the request may have left
intent, outcome ``retry`` / ``pending``    what it was before that intent (pending for a
                                           new unit): the service did not act on it
verify record                              what the verification found (``None``: pending)
=========================================  ==============================================

Format. One file of JSON lines (mode ``0600``), appended only. JSON lines rather than
SQLite because the workload is a pure append log with a replay at open: appends are one
``write`` per group of records and one ``fsync`` per group (group commit), a torn tail after
a crash is just an incomplete last line, and operators can read the file with ``grep``, ``jq``
and ``tail -f``. SQLite in WAL mode would give the same durability with more machinery
(a transaction per group, a schema, two more files next to the journal) and an opaque file.

Every line is one compact JSON object whose first key ``t`` names the record (``header``,
``run``, ``select``, ``intent``, ``outcome``, ``verify``, ``end``, ``verify_start``,
``verify_end``) and whose last key ``crc`` is the
CRC-32 (8 hex digits) of the line's bytes before ``,"crc"``. The checksum is what lets a
replay tell a torn or damaged line from a good one with certainty, and it is what makes the
fast replay path safe: the hot records (intents, and ``done``/``held``/``retry`` outcomes) are
read with one anchored regular expression over their fixed leading keys instead of a full
``json.loads`` that would also parse the spliced request body (a ``held`` outcome's
request id, which the report shows, with a second one). A ``select`` record, hundreds of
thousands of instances in one line, is read row by row into the selection's columns (see
:mod:`bulkrerun.selection`). Every other record, and any line the expressions do not match,
is parsed with ``json.loads``. The replay also pauses the
cyclic garbage collector, which would otherwise rescan the growing state again and again.
``benchmarks/journal_resume.py`` measures it: about 2.5x faster than a replay through
``json.loads``, and about as fast as a bare ``json.loads`` of every line.

Records (``wall`` is seconds since the epoch with millisecond precision):

- ``header``: ``format``, ``tool``, ``tool_version``, ``project_id``, ``endpoint``,
  ``created``. The first line; binds the journal to one project and endpoint.
- ``run``: one per ``run`` command: ``n``, ``wall``, ``pid``, ``tool_version``, ``manifest``
  (``name`` as given, ``path`` where that led, ``sha256``, ``text``: a copy),
  ``instance_files`` (path -> sha256), ``options``,
  ``pending`` (units not yet sent at start). Followed by one ``select`` record per
  ``[[select]]`` entry: ``run``, ``label``, ``items`` (``[job_name, job_id, plan_time,
  submit_time]`` lists).
- ``intent``: ``chunk``, ``attempt``, ``wall``, ``units`` (omitted when they are just the
  chunk id, as for window chunks), ``entry``, ``kind``, ``job_name``, ``workspace``, ``body``
  (the request body exactly as sent, spliced in without re-serialising). Later intents of a
  chunk the journal already holds carry only ``chunk``, ``attempt`` and ``wall``.
- ``outcome``: ``chunk``, ``attempt``, ``wall``, ``state`` (``done``, ``failed``, ``held``,
  ``retry``, ``pending``: the engine's decision), ``kind`` (the transport's
  :class:`~bulkrerun.outcome.Kind`; ``not_sent``: the run stopped before the request left,
  and the intent does not count as an attempt), then when known ``status``, ``error_code``,
  ``error_msg``, ``request_id``, ``reason``, ``retry_after``, and ``ms`` (elapsed).
- ``verify``: ``unit``, ``state`` (``null``: pending), ``evidence``, ``wall``.
- ``end``: ``run`` (its ``n``), ``wall``, ``exit`` (the command's exit code), ``stopped``
  (why the run stopped before its end: ``interrupted``, or the fatal condition, e.g.
  ``failure_budget``, ``auth_refused``, ``service_down``; ``null``: it went to the end),
  ``message`` (what it said of that, ``null`` without), ``timed_out: true`` when it
  stopped on requests that got no answer (``unanswered``) and the last of them timed out
  (a longer ``--timeout`` might have waited it out; absent otherwise), and for a run with
  ``--watch`` ``watch``: ``units`` (the done units it followed), ``unfinished`` (of them,
  those whose reruns it did not see all reach a final status), ``instances`` and
  ``finished`` (the rerun instances it listed, and of them those seen final; ``null`` when
  it listed none), ``stopped`` (``SIGINT``, ``SIGTERM``, ``timeout``, ``failed``; ``null``:
  it saw them all finish). The last record of a run that ended; a run killed or crashed has
  none.
- ``verify_start``: one per ``verify`` command, durable before it asks the service anything:
  ``n`` (verifications are numbered apart from runs), ``wall``, ``pid``, ``tool_version``,
  ``held`` (units held at its start), ``options`` (the settings it reached the service with:
  endpoint, project, rate, the flags given, user, host, auth kind; never a secret). Its
  ``verify`` records follow it.
- ``verify_end``: ``n``, ``wall``, ``exit``, ``stopped`` and ``message`` (as in ``end``), and
  what it decided: ``verified_done``, ``made_pending``, ``still_held`` (``null`` when it
  stopped before deciding). A verify killed or crashed has none. Why a start and an end
  rather than one record at the end: the start is on record before the first query, so a
  verify killed meanwhile still shows (as one that recorded no end), and the verdicts between
  the two are its own. Readers of format 1 from before these two skip them (unknown records
  of the same format are skipped), so adding them kept the format at 1.

Durability. :meth:`Journal.intend` returns only once its record is on stable storage.
Concurrent callers share one fsync (group commit; see ``Journal._commit``): the event loop
writes the records (a copy into the page cache) and a small helper process does the
fdatasync, so that the loop never waits on the disk and no thread of ours competes with it
for the interpreter lock (see :class:`_SyncHelper`); if the helper cannot start, the loop
fsyncs itself, waiting for the disk at each commit (:attr:`Journal.sync_fallback` says why).
The helper starts a sync at least ``COMMIT_INTERVAL`` after the start of the previous one
and covers everything written by then; callers that arrive meanwhile ride along. So the
batch grows with the load and the disk's latency, and the number of commits does not. Each
caller waits on a future of its own, woken once when its record is durable; a cancelled
caller stops at once (its record may still be written: it is followed by a ``pending``
outcome). Outcomes are buffered and ride along with the next commit (or
:meth:`Journal.flush` / :meth:`Journal.close`): an outcome lost in a crash leaves its unit
``held``, which is never resent without ``--resend-held``.

A torn last line (a crash while appending) is dropped at open: its records were never
durable, so no request went out on them. A damaged line before the last one is refused
(:class:`~bulkrerun.errors.JournalCorrupt`): the journal is the only record of what was
sent, and guessing could send a rerun twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import hashlib
import heapq
import json
import math
import os
import re
import shlex
import stat
import subprocess
import sys
import time
import zlib
from array import array
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _js
from pathlib import Path
from typing import IO, Any, Final

from bulkrerun.chunk import Chunk
from bulkrerun.errors import BadInput, Fatal, JournalCorrupt, JournalMismatch
from bulkrerun.outcome import Kind, Outcome, failure_code
from bulkrerun.selection import FoundInstances
from bulkrerun.watchlog import watch_path

__all__ = [
    "FORMAT",
    "LATEST_SETTLED",
    "OUTCOME_STATES",
    "Binding",
    "ChunkInfo",
    "Header",
    "Holder",
    "Journal",
    "JournalState",
    "RunEnd",
    "RunInfo",
    "RunRecord",
    "Selection",
    "UnitState",
    "VerifyEnd",
    "VerifyRecord",
    "bound_to",
    "held_by",
    "read_records_at",
    "read_state",
]

FORMAT: Final = 1
"""Format version written in the header; a journal of a newer format is refused."""

OUTCOME_STATES: Final = frozenset({"done", "failed", "held", "retry", "pending"})
"""What :meth:`Journal.outcome` accepts as ``state``."""

_NOT_ACTED: Final = frozenset({"retry", "pending"})

# Each outcome state as one string object, whatever line it was read from: a string decoded
# from each line is a fresh 53 bytes per request that ``report`` and a full replay keep.
_OUTCOME_STATE: Final = {s: s for s in OUTCOME_STATES}
_OUTCOME_STATE_B: Final = {s.encode(): s for s in OUTCOME_STATES}

LATEST_SETTLED: Final = 256
"""Of a journal read slim, how many of the settled requests are kept in full anyway: the
latest accepted, among which ``verify`` looks for its canaries (see
:meth:`JournalState.latest_accepted`)."""
_SETTLED_KEPT: Final = 8 * LATEST_SETTLED  # at most, before they are trimmed to the latest

COMMIT_INTERVAL: Final = 0.002
"""Seconds between the starts of two fsyncs at the least (kept by the sync helper).

A commit delay (as PostgreSQL's ``commit_delay``): a commit costs the event loop a write, a
request to the helper and a wake-up whatever it carries, and an fsync here takes well under
a millisecond, so at thousands of requests per second nearly every intent would get a
commit of its own. Spacing commits lets each one carry every intent that arrived meanwhile;
the added latency (at most 2 ms) is small next to a request's round trip, and a slow run
never waits."""
_NOT_SENT: Final = Outcome(Kind.NOT_SENT, reason="not sent: interrupted before sending")

# ,"crc":"xxxxxxxx"}\n  -- the fixed-size tail of every line.
_CRC_TAIL: Final = 19
_CRC_KEY: Final = b',"crc":"'

# The first bytes of every header we write: how a torn first line is told from a foreign file.
_HEADER_START: Final = b'{"t":"header"'

# Fast replay paths. The checksum has already proved the line is exactly what this module
# wrote, so matching the fixed leading keys is enough; ids containing quotes, backslashes or
# control characters are written JSON-escaped, do not match, and take the json.loads path.
_ID = rb'"([^"\\\x00-\x1f]+)"'
_NUM = rb"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_INTENT_RE: Final = re.compile(
    rb'\{"t":"intent","chunk":' + _ID + rb',"attempt":([0-9]+),"wall":' + _NUM
    + rb'(?:,"units":\[([^\]\\]*)\])?'
    + rb'(?:(,"entry":)|,"crc":)'
)  # fmt: skip
_OUTCOME_RE: Final = re.compile(
    rb'\{"t":"outcome","chunk":' + _ID + rb',"attempt":([0-9]+),"wall":' + _NUM
    + rb',"state":"(done|held|retry)"'
)  # fmt: skip
_REQUEST_ID_RE: Final = re.compile(rb',"request_id":"([^"\\\x00-\x1f]*)"')
_REQUEST_ID_KEY: Final = b',"request_id":"'
# A select record as Journal.begin_run writes it, read row by row (see _select_record).
_SELECT_START: Final = b'{"t":"select",'
_JSON_TEXT = rb'("[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*")'  # a JSON string, unrolled
_JSON_INT = rb"(-?(?:0|[1-9][0-9]*))"
_SELECT_HEAD_RE: Final = re.compile(
    rb'\{"t":"select","run":[0-9]+,"label":' + _JSON_TEXT + rb',"items":\['
)
_SELECT_ROW_RE: Final = re.compile(
    rb"\[" + _JSON_TEXT + rb"," + _JSON_INT + rb"," + _JSON_INT + rb"," + _JSON_INT + rb"\]([,\]])"
)


class UnitState(StrEnum):
    """State of a unit in the journal; a pending unit is simply absent."""

    DONE = "done"
    FAILED = "failed"
    HELD = "held"


_ACTED: Final = {s.value: s for s in UnitState}  # outcome states that set a unit's state
# Bound once for the replayer, which runs twice per request: an enum member read through its
# class costs several times a global on Python 3.11 (see pacing).
_UNIT_DONE, _UNIT_FAILED, _UNIT_HELD = UnitState.DONE, UnitState.FAILED, UnitState.HELD


@dataclass(frozen=True, slots=True)
class Binding:
    """What a journal is bound to: one project at one (normalised) endpoint."""

    project_id: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Header:
    """The journal's first record."""

    format: int
    tool_version: str
    project_id: str
    endpoint: str
    created: float

    @property
    def binding(self) -> Binding:
        return Binding(self.project_id, self.endpoint)


Selection = tuple[str, int, int, int]
"""One selected instance: ``(job_name, job_id, plan_time, submit_time)``."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a ``run`` records at its start, so that ``status``, ``report`` and a resume can
    re-plan without the user's files: the manifest (a copy), the digests of the instance
    files it read, the instances each ``[[select]]`` entry found, the options and the number
    of units pending at start. ``options`` must be JSON-serialisable."""

    manifest_name: str
    manifest_text: str
    manifest_sha256: str
    instance_files: Mapping[str, str] = field(default_factory=dict)
    selections: Mapping[str, Sequence[Selection]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    pending: int | None = None

    @classmethod
    def from_manifest(cls, path: Path, **fields: Any) -> RunInfo:
        """Read the manifest at ``path``: its name as given, its text and its digest."""
        data = path.read_bytes()
        return cls(
            manifest_name=str(path),
            manifest_text=data.decode("utf-8", "replace"),
            manifest_sha256=hashlib.sha256(data).hexdigest(),
            **fields,
        )


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A ``run`` record as replayed."""

    n: int
    wall: float
    pid: int | None
    tool_version: str
    manifest_name: str
    manifest_text: str
    manifest_sha256: str
    instance_files: dict[str, str]
    options: dict[str, Any]
    pending: int | None
    manifest_path: str = ""  # absolute; empty in journals written before it was recorded


@dataclass(frozen=True, slots=True)
class RunEnd:
    """An ``end`` record as replayed: how run ``run`` ended (see the module's docstring)."""

    run: int
    wall: float
    exit: int
    stopped: str | None
    message: str | None
    timed_out: bool = False
    # Of a run with --watch: what its watch saw (see the module's docstring); None without.
    watch: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class VerifyRecord:
    """A ``verify_start`` record as replayed: one ``verify`` command (see the module's
    docstring). ``held``: the units held at its start."""

    n: int
    wall: float
    pid: int | None
    tool_version: str
    options: dict[str, Any]
    held: int | None


@dataclass(frozen=True, slots=True)
class VerifyEnd:
    """A ``verify_end`` record as replayed: how verification ``n`` ended and what it decided
    (the counts are None when it stopped before deciding)."""

    n: int
    wall: float
    exit: int
    stopped: str | None
    message: str | None
    verified_done: int | None = None
    made_pending: int | None = None
    still_held: int | None = None


@dataclass(slots=True, eq=False)
class ChunkInfo:
    """What the journal knows of one chunk (one request), for status and report.

    ``state`` is the last outcome's state, ``None`` while the last intent has none.
    ``intent_offset`` and ``outcome_offset`` are the byte offsets of the full intent line and
    of the last outcome line: a report reads the details (body, error message, request id)
    from there instead of keeping them in memory. ``status`` and ``error_code`` are kept for
    ``failed`` and ``pending`` outcomes only, for counting failures by code.
    """

    id: str
    units: tuple[str, ...]
    intent_offset: int
    first_wall: float
    last_wall: float
    attempts: int = 0
    state: str | None = None
    outcome_offset: int | None = None
    status: int | None = None
    error_code: str | None = None
    run: int = 0  # the number of the run that made the last attempt (0: before any run)


@dataclass(slots=True, eq=False)
class JournalState:
    """Everything a replay yields. ``units`` is the resume decision; the rest serves
    ``status`` and ``report``. ``chunks`` are in the order of their first intent."""

    header: Header
    units: dict[str, UnitState] = field(default_factory=dict)
    chunks: dict[str, ChunkInfo] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    ends: dict[int, RunEnd] = field(default_factory=dict)  # run n -> how it ended
    verifications: list[VerifyRecord] = field(default_factory=list)  # ``verify`` commands
    verify_ends: dict[int, VerifyEnd] = field(default_factory=dict)  # their n -> how it ended
    # The instances each ``[[select]]`` entry found, by label, the latest recorded.
    selections: dict[str, FoundInstances] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)  # unit -> evidence of last verify
    records: int = 0
    attempts: int = 0
    accepted: int = 0  # outcomes ``done``: requests the service accepted
    first_wall: float | None = None  # of the first intent
    last_wall: float = 0.0  # of the latest intent, outcome or verify record
    # Active time: the sum over runs of (end - run start), for the achieved rate. A run ends
    # at its end record (a Ctrl-C while pacing waits is time spent sending), or at its last
    # intent or outcome when it has none or it watched the reruns after sending.
    span_total: float = 0.0
    span_start: float | None = None
    span_end: float = 0.0
    # Of a journal read slim (``read_state(path, slim=True)``, ``Journal.open(slim=True)``):
    # the window requests sent once and accepted (``done``), with no send whose outcome is
    # unknown -> the byte offset of their intent. They are not in ``chunks``: their one unit
    # is the request itself, done in ``units``, which is all that ``status``, a resume and
    # a verify ask of them (a resume reads their windows from their intents; see
    # ``done_windows``; a verify's canaries are among the latest: ``settled_latest``).
    settled: dict[str, int] = field(default_factory=dict)
    # Of those, the LATEST_SETTLED last accepted, kept in full, and at times as many as
    # _SETTLED_KEPT of the latest (see ``latest_accepted``).
    settled_latest: list[ChunkInfo] = field(default_factory=list)
    # Of a journal opened with ``live_details=False``: what the records appended since only
    # count (their units and chunks are not in ``units`` and ``chunks``).
    untracked_units: Counter[UnitState] = field(default_factory=Counter)
    untracked_requests: int = 0
    never_sent: int = 0  # chunks whose every intent was closed not sent (kind not_sent)
    untracked_failed: Counter[str] = field(default_factory=Counter)  # failed units by code
    # Requests (chunk ids) with sends whose outcome is unknown, and how many: a held outcome,
    # or an intent a later intent of the same request followed without an outcome between.
    # Each may have been acted on: the request may have run that many times more.
    unknown_sends: dict[str, int] = field(default_factory=dict)
    # Of those sends, the request ids the service gave the held ones (a 504 from the gateway,
    # say), in order: a ticket asking whether a request ran twice needs them, and the report
    # shows only the last attempt's outcome.
    unknown_ids: dict[str, list[str]] = field(default_factory=dict)
    # Listed units that a request of this run failed: the code it failed with.
    failed_codes: dict[str, str] = field(default_factory=dict)

    def counts(self) -> Counter[UnitState]:
        """Units per state (pending units are not in the journal, so not counted)."""
        counts = Counter(self.units.values())
        counts.update(self.untracked_units)
        return counts

    @property
    def requests(self) -> int:
        """Distinct requests (chunks) the journal records as sent at least once (or
        perhaps sent: an intent without an outcome)."""
        return len(self.chunks) + len(self.settled) + self.untracked_requests - self.never_sent

    def done_windows(self) -> list[int]:
        """The intent offsets of the window requests whose one unit (the request itself) is
        done, in file order: those in ``chunks`` and the ``settled`` ones."""
        units = self.units
        offsets = [
            info.intent_offset
            for info in self.chunks.values()
            # A window request is its own one unit; an instance batch's are instance ids.
            if len(info.units) == 1
            and info.units[0] == info.id
            and units.get(info.id) is _UNIT_DONE
        ]
        if self.settled:
            offsets += self.settled.values()
            offsets.sort()
        return offsets

    def latest_accepted(self, n: int) -> list[ChunkInfo]:
        """The ``n`` requests last accepted (whose last outcome is ``done``), the latest first
        by the wall of that outcome (of equal walls, the one first sent first).

        Of a journal read slim, the settled requests count too, but only the
        :data:`LATEST_SETTLED` latest of them are known in full: ``n`` may not exceed it.
        """
        if n > LATEST_SETTLED and self.settled:
            raise ValueError(f"of a journal read slim, {LATEST_SETTLED} at most")
        done = [info for info in self.chunks.values() if info.state == "done"]
        done += self.settled_latest
        return heapq.nlargest(n, done, key=_accepted_order)

    def failed_by_code(self) -> dict[str, int]:
        """Failed units by the error code of the request that failed them last
        (``verified``: failed by a verification)."""
        failed = [info for info in self.chunks.values() if info.state == "failed"]
        failed.sort(key=lambda info: info.outcome_offset or 0)
        code_of: dict[str, str] = {}
        for info in failed:
            code = failure_code(info.error_code, info.status)
            for unit in info.units:
                code_of[unit] = code
        code_of.update(self.failed_codes)
        counts: Counter[str] = Counter(self.untracked_failed)
        for unit, unit_state in self.units.items():
            if unit_state is UnitState.FAILED:
                counts[code_of.get(unit, "verified")] += 1
        return dict(counts.most_common())

    @property
    def active_seconds(self) -> float:
        """Seconds the runs were active: from each run's start to its end (see
        ``span_total``)."""
        if self.span_start is None:
            return self.span_total
        return self.span_total + max(0.0, self.span_end - self.span_start)


def _accepted_order(info: ChunkInfo) -> tuple[float, int]:
    """How :meth:`JournalState.latest_accepted` orders requests: by their last wall, and of
    equal walls the one whose (first) intent comes first in the file first."""
    return (info.last_wall, -info.intent_offset)


class _InconsistentError(Exception):
    """A record contradicts the ones before it; the replay loop adds where."""


class _Unsettled(Exception):
    """A record of a slim replay touches a request it settled: the replay starts over in
    full (see :meth:`_Replayer.unsettle`)."""


class _Replayer:
    """Applies records to a :class:`JournalState`; used by replay and by the live journal,
    so that the state a writer holds is always what a replay of its file would give."""

    __slots__ = ("_live", "_open", "details", "slim", "state")

    def __init__(self, state: JournalState) -> None:
        self.state = state
        # Chunks whose last intent has no outcome yet -> the states their units had before
        # that intent, restored if the outcome says the service did not act on it.
        self._open: dict[str, tuple[UnitState | None, ...]] = {}
        # False: chunks described from now on are kept only until their outcome is final
        # (in _live), and then only counted; see Journal.open(live_details=...).
        self.details = True
        self._live: dict[str, tuple[str, ...]] = {}
        # True while a slim replay reads a file: a window request sent once and done is
        # settled (see JournalState.settled), and a record that touches one again (which no
        # bulkrerun writes: its unit is done, never sent or verified again) starts the
        # replay over in full, so that what a slim replay keeps is always a full replay's.
        self.slim = False

    def described(self, chunk_id: str) -> bool:
        """Whether a full intent of the chunk is on record (later intents may be short)."""
        st = self.state
        return chunk_id in st.chunks or chunk_id in self._live or chunk_id in st.settled

    def unsettle(self, chunk_id: str) -> ChunkInfo:
        """The details of a settled request that a record touches again: in a slim replay,
        :class:`_Unsettled` (the file is read again in full); in a journal opened slim and
        appended to since, what it kept (its walls and run are the latest ones known)."""
        if self.slim:
            raise _Unsettled
        st = self.state
        offset = st.settled.pop(chunk_id)
        kept = st.settled_latest
        k = next((k for k, info in enumerate(kept) if info.id == chunk_id), None)
        if k is not None:  # one of the latest: known in full
            info = kept.pop(k)
        else:
            info = ChunkInfo(
                chunk_id,
                (chunk_id,),
                offset,
                st.last_wall,
                st.last_wall,
                attempts=1,
                state="done",
                run=len(st.runs),
            )
        st.chunks[chunk_id] = info
        return info

    def priors(self, chunk_id: str) -> tuple[UnitState | None, ...] | None:
        """The states the units of ``chunk_id`` had before its attempt now open (None: no
        attempt of it is open)."""
        return self._open.get(chunk_id)

    def run(self, record: RunRecord) -> None:
        st = self.state
        st.runs.append(record)
        if st.span_start is not None:
            st.span_total += max(0.0, st.span_end - st.span_start)
        st.span_start = st.span_end = record.wall

    def select(self, label: str, found: FoundInstances) -> None:
        self.state.selections[label] = found

    def end(self, record: RunEnd) -> None:
        st = self.state
        st.ends[record.run] = record
        st.last_wall = max(st.last_wall, record.wall)
        last = st.runs[-1] if st.runs else None
        if last is not None and last.n == record.run and not last.options.get("watch"):
            st.span_end = max(st.span_end, record.wall)

    def verify_start(self, record: VerifyRecord) -> None:
        self.state.verifications.append(record)

    def verify_end(self, record: VerifyEnd) -> None:
        self.state.verify_ends[record.n] = record

    def intent(
        self,
        chunk_id: str,
        units: tuple[str, ...] | None,
        offset: int | None,
        wall: float,
    ) -> None:
        st = self.state
        info = st.chunks.get(chunk_id)
        if info is None and st.settled and chunk_id in st.settled:
            info = self.unsettle(chunk_id)
        if info is not None:
            if info.state is None:  # the send before this one has no outcome
                st.unknown_sends[chunk_id] = st.unknown_sends.get(chunk_id, 0) + 1
            info.state = None
            info.last_wall = wall
            if info.attempts == 0:  # tried before, never sent
                st.never_sent -= 1
            info.attempts += 1
            info.run = len(st.runs)
            units = info.units
        elif (live := self._live.get(chunk_id)) is not None:
            units = live
        elif units is None or offset is None:
            raise _InconsistentError(f"a later intent of chunk {chunk_id}, never described")
        elif self.details:
            info = ChunkInfo(chunk_id, units, offset, wall, wall, attempts=1, run=len(st.runs))
            st.chunks[chunk_id] = info
        else:
            self._live[chunk_id] = units
            st.untracked_requests += 1
        st.attempts += 1
        if st.first_wall is None:
            st.first_wall = wall
            if st.span_start is None:
                st.span_start = st.span_end = wall
        if wall > st.last_wall:
            st.last_wall = wall
        if wall > st.span_end:
            st.span_end = wall
        unit_states = st.units
        # What the units were just before this attempt: held, if an earlier attempt has no
        # outcome (it may have been acted on, whatever becomes of this one).
        if len(units) == 1:
            self._open[chunk_id] = (unit_states.get(units[0]),)
        else:
            self._open[chunk_id] = tuple([unit_states.get(u) for u in units])
        for u in units:
            unit_states[u] = _UNIT_HELD

    def outcome(
        self,
        chunk_id: str,
        state: str,
        wall: float,
        offset: int,
        status: int | None,
        error_code: str | None,
        sent: bool = True,
        first: bool = False,
        request_id: str | None = None,
    ) -> None:
        """``sent``: False for an outcome of kind ``not_sent``; ``first``: the outcome is of
        its run's first attempt at the chunk (how an untracked chunk, which keeps no
        count of attempts, is known never to have been sent); ``request_id``: the service's,
        given for a held outcome."""
        st = self.state
        info = st.chunks.get(chunk_id)
        if info is None and st.settled and chunk_id in st.settled:
            info = self.unsettle(chunk_id)
        if not sent:  # the intent's request never left (kind not_sent): no attempt
            st.attempts -= 1
            if info is not None:
                info.attempts -= 1
                if info.attempts == 0:
                    st.never_sent += 1
            elif first and chunk_id in self._live:  # new in this run, and never sent
                st.never_sent += 1
        if info is not None:
            units = info.units
            info.state = state
            info.last_wall = wall
            info.outcome_offset = offset
            info.status = status
            info.error_code = error_code
        elif (live := self._live.get(chunk_id)) is not None:
            units = live
        else:
            raise _InconsistentError(f"an outcome of chunk {chunk_id} without an intent")
        new = _ACTED.get(state)
        if new is None and state not in _NOT_ACTED:
            raise _InconsistentError(f"an outcome with the unknown state {state!r}")
        if new is _UNIT_HELD and info is not None:
            st.unknown_sends[chunk_id] = st.unknown_sends.get(chunk_id, 0) + 1
            if request_id is not None:
                st.unknown_ids.setdefault(chunk_id, []).append(request_id)
        priors = self._open.pop(chunk_id, None)
        if wall > st.last_wall:
            st.last_wall = wall
        if wall > st.span_end:
            st.span_end = wall
        unit_states = st.units
        if new is None:
            # Not acted on: each unit is back to what it was before the intent.
            if priors is not None:
                for u, prior in zip(units, priors, strict=True):
                    if prior is None:
                        unit_states.pop(u, None)
                    else:
                        unit_states[u] = prior
            return
        verified = st.verified
        if verified:  # an attempt acted on after a verification decides its units from now on
            for u in units:
                verified.pop(u, None)
        if new is _UNIT_DONE:
            st.accepted += 1
        if info is not None:
            for u in units:
                unit_states[u] = new
            if (
                self.slim
                and new is _UNIT_DONE
                and info.attempts == 1
                and len(units) == 1
                and units[0] == chunk_id
                and chunk_id not in st.unknown_sends
            ):
                # A window request sent once and done: settled, kept as its intent's offset
                # (under its id as first read, the string its unit shares).
                del st.chunks[chunk_id]
                st.settled[info.id] = info.intent_offset
                # The latest few kept in full all the same (see JournalState.latest_accepted).
                # Trimmed to the latest at times, by a sort, rather than kept a heap of the
                # latest: the walls mostly grow, so nearly every one would enter the heap,
                # where a sort of a list nearly in order is one pass (a heap cost about 0.3 s
                # of the 2.3 s of a slim read of 200,000 windows).
                kept = st.settled_latest
                kept.append(info)
                if len(kept) >= _SETTLED_KEPT:
                    kept.sort(key=_accepted_order)
                    del kept[:-LATEST_SETTLED]
            return
        # A chunk of this session, not kept: from now on its units are only counted, but
        # for those the state listed before (failed or held ones sent again), updated there.
        del self._live[chunk_id]
        code = failure_code(error_code, status) if new is _UNIT_FAILED else None
        for i, u in enumerate(units):
            prior = priors[i] if priors is not None else unit_states.get(u)
            if prior is None:
                unit_states.pop(u, None)
                st.untracked_units[new] += 1
                if code is not None:
                    st.untracked_failed[code] += 1
            else:
                unit_states[u] = new
                if code is not None:
                    st.failed_codes[u] = code

    def verify(self, unit: str, state: UnitState | None, evidence: str, wall: float) -> None:
        st = self.state
        if st.settled and unit in st.settled:  # a window request's unit is the request
            self.unsettle(unit)
        if state is None:
            st.units.pop(unit, None)
        else:
            st.units[unit] = state
        st.verified[unit] = evidence
        st.last_wall = max(st.last_wall, wall)


# ---------------------------------------------------------------------------------------
# Encoding


def _seal(payload: bytes) -> bytes:
    """Close a record (``payload`` lacks its final ``}``) with its checksum and newline."""
    return b'%s,"crc":"%08x"}\n' % (payload, zlib.crc32(payload))


_WATCH_COUNTS = ("units", "unfinished", "instances", "finished")


def _watch_seen(value: Any) -> dict[str, Any] | None:
    """An ``end`` record's ``watch`` as written (see the module's docstring); None without
    one, or with one not as written: it informs ``status`` and decides nothing."""
    if not isinstance(value, dict):
        return None
    counts = {key: value.get(key) for key in _WATCH_COUNTS}
    if (
        not all(
            n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)
            for n in counts.values()
        )
        or not isinstance(counts["units"], int)
        or not isinstance(counts["unfinished"], int)
    ):
        return None
    stopped = value.get("stopped")
    return {**counts, "stopped": stopped if isinstance(stopped, str) else None}


def _record(obj: Mapping[str, Any]) -> bytes:
    """A whole record through json.dumps: for rare records (header, run, verify)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return _seal(text[:-1].encode("ascii"))


def _plain(s: str) -> bool:
    """Whether ``s`` can go between quotes as is (and be read back by the fast path).

    Ids are hex, and ``bytes.isalnum`` says so of the ASCII bytes from a table, where
    ``str.isprintable`` and ``str.isalnum`` ask the Unicode database per character
    (callgrind, the 2,048 characters of 64 instances' unit ids: 53,600 to 13,600
    instructions). ``isascii()`` first: ``encode()`` would refuse a lone surrogate."""
    if s.isascii() and s.encode().isalnum():
        return True
    return '"' not in s and "\\" not in s and s.isprintable()


def _json_bytes(s: str) -> bytes:
    """``s`` as a JSON string in UTF-8, for the bytes templates (twice per request).

    :func:`_plain`'s test for an id, inline, keeping the bytes it encodes (callgrind, a
    chunk id: 3,300 instructions with ``str.isalnum``, 2,000 so)."""
    if s.isascii() and (b := s.encode()).isalnum():
        return b'"%s"' % b
    return b'"%s"' % s.encode() if _plain(s) else _js(s).encode()


def _outcome_payload(cid: str, attempt: int, wall: float, head: bytes, o: Outcome) -> bytes:
    """An outcome record without its checksum tail, any fields (``head``: state and kind)."""
    parts = [
        b'{"t":"outcome","chunk":%s,"attempt":%d,"wall":%.3f%s'
        % (_json_bytes(cid), attempt, wall, head)
    ]
    if o.status is not None:
        parts.append(b',"status":%d' % o.status)
    if o.error_code is not None:
        parts.append(b',"error_code":%s' % _js(o.error_code).encode())
    if o.error_msg is not None:
        parts.append(b',"error_msg":%s' % _js(o.error_msg).encode())
    if o.request_id is not None:
        parts.append(b',"request_id":%s' % _js(o.request_id).encode())
    if o.reason:
        parts.append(b',"reason":%s' % _js(o.reason).encode())
    if o.retry_after is not None and math.isfinite(o.retry_after):
        parts.append(b',"retry_after":%.3f' % o.retry_after)
    if math.isfinite(o.elapsed):
        parts.append(b',"ms":%.1f' % (o.elapsed * 1000.0))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# Replay


@dataclass(slots=True)
class _Scan:
    """The result of reading a journal file: the state and where the good bytes end."""

    header: Header
    replayer: _Replayer
    good_end: int  # offset after the last good line
    torn: bool  # bytes after good_end were dropped (a torn last line)


def _check_crc(line: bytes) -> bool:
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    tail = end - _CRC_TAIL + 1
    if tail < 0 or line[tail : tail + 8] != _CRC_KEY or line[end - 2 : end] != b'"}':
        return False
    try:
        return zlib.crc32(line[:tail]) == int(line[tail + 8 : end - 2], 16)
    except ValueError:
        return False


def _not_a_journal(path: Path) -> JournalMismatch:
    return JournalMismatch(
        f"{path} is not a bulkrerun journal (its first line is not a journal header): "
        "check the path. A run's --journal takes a new path or an existing journal."
    )


def _parse_header(line: bytes, path: Path) -> Header:
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict) or obj.get("t") != "header":
            raise TypeError
        fmt = obj["format"]
        if not isinstance(fmt, int):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        raise _not_a_journal(path) from None
    if fmt > FORMAT:
        raise JournalMismatch(
            f"journal {path} has format {fmt} (written by bulkrerun "
            f"{obj.get('tool_version', '?')}); this bulkrerun reads format {FORMAT} and "
            "older. Upgrade bulkrerun to continue with this journal."
        )
    try:
        return Header(
            format=fmt,
            tool_version=str(obj.get("tool_version", "")),
            project_id=str(obj["project_id"]),
            endpoint=str(obj["endpoint"]),
            created=float(obj.get("created", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        raise JournalMismatch(f"journal {path}: the header lacks its project or endpoint") from None


def _is_torn_header(data: bytes) -> bool:
    """Whether a first line that is not a good record is what a crash while writing the
    header leaves behind (never true of another program's file, which must not be cut)."""
    if not data.strip(b"\x00"):
        return True
    return data.startswith(_HEADER_START) or _HEADER_START.startswith(data.rstrip(b"\x00"))


def _apply_slow(rep: _Replayer, obj: Any, offset: int) -> None:
    """Apply one record parsed by json.loads."""
    if not isinstance(obj, dict):
        raise _InconsistentError("not a JSON object")
    try:
        kind = obj["t"]
        if kind == "intent":
            units = obj.get("units")
            full = "entry" in obj
            chunk_id = str(obj["chunk"])
            rep.intent(
                chunk_id,
                (tuple(str(u) for u in units) if units is not None else (chunk_id,))
                if full
                else None,
                offset if full else None,
                float(obj["wall"]),
            )
        elif kind == "outcome":
            state = str(obj["state"])
            state = _OUTCOME_STATE.get(state, state)
            keep = state in ("failed", "pending")
            status = obj.get("status")
            code = obj.get("error_code")
            request_id = obj.get("request_id") if state == "held" else None
            rep.outcome(
                str(obj["chunk"]),
                state,
                float(obj["wall"]),
                offset,
                int(status) if keep and status is not None else None,
                str(code) if keep and code is not None else None,
                sent=obj.get("kind") != Kind.NOT_SENT,
                request_id=str(request_id) if request_id is not None else None,
            )
        elif kind == "verify":
            raw = obj["state"]
            rep.verify(
                str(obj["unit"]),
                None if raw is None else UnitState(raw),
                str(obj.get("evidence", "")),
                float(obj["wall"]),
            )
        elif kind == "run":
            manifest = obj.get("manifest") or {}
            pending = obj.get("pending")
            rep.run(
                RunRecord(
                    n=int(obj["n"]),
                    wall=float(obj["wall"]),
                    pid=obj.get("pid"),
                    tool_version=str(obj.get("tool_version", "")),
                    manifest_name=str(manifest.get("name", "")),
                    manifest_text=str(manifest.get("text", "")),
                    manifest_sha256=str(manifest.get("sha256", "")),
                    instance_files=dict(obj.get("instance_files") or {}),
                    options=dict(obj.get("options") or {}),
                    pending=None if pending is None else int(pending),
                    manifest_path=str(manifest.get("path", "")),
                )
            )
        elif kind == "select":
            # A select record the fast path (_select_record) does not read: kept as compact.
            found = FoundInstances((str(j), int(a), int(b), int(c)) for j, a, b, c in obj["items"])
            rep.select(str(obj["label"]), found)
        elif kind == "end":
            stopped, message = obj.get("stopped"), obj.get("message")
            rep.end(
                RunEnd(
                    run=int(obj["run"]),
                    wall=float(obj["wall"]),
                    exit=int(obj["exit"]),
                    stopped=None if stopped is None else str(stopped),
                    message=None if message is None else str(message),
                    timed_out=obj.get("timed_out") is True,
                    watch=_watch_seen(obj.get("watch")),
                )
            )
        elif kind == "verify_start":
            held = obj.get("held")
            rep.verify_start(
                VerifyRecord(
                    n=int(obj["n"]),
                    wall=float(obj["wall"]),
                    pid=obj.get("pid"),
                    tool_version=str(obj.get("tool_version", "")),
                    options=dict(obj.get("options") or {}),
                    held=None if held is None else int(held),
                )
            )
        elif kind == "verify_end":
            stopped, message = obj.get("stopped"), obj.get("message")
            counts = [obj.get(k) for k in ("verified_done", "made_pending", "still_held")]
            done, pending, held = (None if n is None else int(n) for n in counts)
            rep.verify_end(
                VerifyEnd(
                    n=int(obj["n"]),
                    wall=float(obj["wall"]),
                    exit=int(obj["exit"]),
                    stopped=None if stopped is None else str(stopped),
                    message=None if message is None else str(message),
                    verified_done=done,
                    made_pending=pending,
                    still_held=held,
                )
            )
        elif kind == "header":
            raise _InconsistentError("a second header")
        # Unknown record types of the same format are skipped: room for additions that
        # older readers of format 1 may ignore.
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _InconsistentError(f"a malformed {obj.get('t')!r} record ({exc!r})") from None


def _scan(f: IO[bytes], path: Path, *, slim: bool = False) -> _Scan | None:
    """Replay an open journal file from its start (``slim``: see JournalState.settled).
    ``None`` for an empty file or a torn header (nothing was ever recorded in it)."""
    # The replay allocates a few objects per record and frees none of them, which makes the
    # cyclic garbage collector rescan the growing state again and again (more than half of
    # the replay time). It creates no reference cycles, so the collector is paused meanwhile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if slim:
            try:
                return _scan_records(f, path, slim=True)
            except _Unsettled:  # a record touches a settled request again: read it all
                f.seek(0)
        return _scan_records(f, path)
    finally:
        if was_enabled:
            gc.enable()


def _select_record(line: bytes, tail: int) -> tuple[str, FoundInstances] | None:
    """A ``select`` record (its checksum checked, which ends at ``tail``) as
    :meth:`Journal.begin_run` writes it, read row by row into the selection's columns:
    ``json.loads`` of the line made a list, a string and three numbers of each instance
    first (about 100 MB of a 20 MB line of 400,800 instances). None for a record of any
    other shape, which the caller reads with ``json.loads`` as before."""
    m = _SELECT_HEAD_RE.match(line)
    if m is None:
        return None
    # Straight into the columns of the job being read (a call per instance was twice the
    # time of json.loads); a new run where the job's name changes.
    runs: list[tuple[str, array[int], array[int], array[int]]] = []
    row = _SELECT_ROW_RE.match
    try:
        label = json.loads(m[1])
        pos = m.end()
        if line.startswith(b"]", pos):
            pos += 1
        else:
            name = b""
            while (r := row(line, pos)) is not None:
                if r[1] != name:
                    name = r[1]
                    ids, plans, submits = array("q"), array("q"), array("q")
                    runs.append((json.loads(name), ids, plans, submits))
                    add_id, add_plan, add_submit = ids.append, plans.append, submits.append
                add_id(int(r[2]))
                add_plan(int(r[3]))
                add_submit(int(r[4]))
                pos = r.end()
                if r[5] == b"]":
                    break
            else:
                return None
    except (ValueError, OverflowError):  # not UTF-8, an unknown escape, past 64 bits
        return None
    if pos != tail:
        return None
    return label, FoundInstances.of_columns(runs)


def _scan_records(f: IO[bytes], path: Path, *, slim: bool = False) -> _Scan | None:
    first = f.readline()
    if not first:
        return None
    if not (first.endswith(b"\n") and _check_crc(first)):
        if not f.read(1) and _is_torn_header(first):
            return None
        if first.startswith(_HEADER_START):
            raise JournalCorrupt(
                f"journal {path}, line 1: the header is damaged; the journal cannot be "
                "trusted. Restore it from a copy (or, knowing that units it records as sent "
                "would be sent again, start over with a new --journal path)."
            )
        raise _not_a_journal(path)
    header = _parse_header(first, path)
    state = JournalState(header=header)
    rep = _Replayer(state)
    rep.slim = slim
    offset = len(first)
    lineno = 1
    bad: str | None = None

    # The hot loop: locals for speed; the regex paths cover intents and common outcomes.
    intent_match = _INTENT_RE.match
    outcome_match = _OUTCOME_RE.match
    crc32 = zlib.crc32
    intent = rep.intent
    outcome = rep.outcome
    outcome_state = _OUTCOME_STATE_B
    records = 0
    try:
        for line in f:
            if bad is not None:
                raise JournalCorrupt(
                    f"journal {path}, line {lineno}: {bad}, and records follow it: the file "
                    "was edited or damaged. Restore it from a copy; do not resume from it as "
                    "is (it may hide requests already sent)."
                )
            lineno += 1
            n = len(line)
            # The checksum tail ,"crc":"xxxxxxxx"}\n, then the CRC of what precedes it.
            tail = n - _CRC_TAIL
            if line[n - 3 :] != b'"}\n' or tail < 1 or line[tail : tail + 8] != _CRC_KEY:
                bad = "incomplete, or not a journal record"
                continue
            try:
                good = crc32(line[:tail]) == int(line[tail + 8 : n - 3], 16)
            except ValueError:
                good = False
            if not good:
                bad = "checksum mismatch"
                continue
            m = intent_match(line)
            if m is not None:
                chunk_id = m[1].decode()
                if m[5] is None:  # a later attempt: the chunk was described before
                    intent(chunk_id, None, None, float(m[3]))
                else:
                    raw = m[4]
                    if raw is None:
                        units: tuple[str, ...] = (chunk_id,)
                    elif raw:
                        units = tuple(raw.decode()[1:-1].split('","'))
                    else:
                        units = ()
                    intent(chunk_id, units, offset, float(m[3]))
            else:
                m = outcome_match(line)
                if m is not None:
                    rid = None
                    if m[4] == b"held":  # rare: its request id, for the report
                        r = _REQUEST_ID_RE.search(line)
                        if r is not None:
                            rid = r[1].decode()
                        elif _REQUEST_ID_KEY in line:  # written escaped
                            rid = str(json.loads(line)["request_id"])
                    outcome(
                        m[1].decode(),
                        outcome_state[m[4]],
                        float(m[3]),
                        offset,
                        None,
                        None,
                        request_id=rid,
                    )
                else:
                    selected = (
                        _select_record(line, tail) if line.startswith(_SELECT_START) else None
                    )
                    if selected is not None:
                        rep.select(*selected)
                    else:
                        try:
                            obj = json.loads(line)
                        except ValueError:
                            bad = "not valid JSON"
                            continue
                        _apply_slow(rep, obj, offset)
            records += 1
            offset += n
    except _InconsistentError as exc:
        raise JournalCorrupt(
            f"journal {path}, line {lineno}: {exc}. The file was edited or damaged; restore "
            "it from a copy."
        ) from None
    state.records = records
    rep.slim = False  # records appended from now on settle nothing (see _Replayer.unsettle)
    # A bad last line is what a crash while appending leaves: it is dropped (its record
    # was never durable, so nothing acted on it).
    return _Scan(header, rep, offset, torn=bad is not None)


def _scan_fd(fd: int, path: Path, *, slim: bool = False) -> _Scan | None:
    """:func:`_scan` of the journal open (for appending) at ``fd``, from its start."""
    with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as f:
        f.seek(0)
        return _scan(f, path, slim=slim)


def read_state(path: Path, *, slim: bool = False) -> tuple[Header, JournalState]:
    """Replay the journal at ``path`` read-only, for ``status`` and ``report``.

    Takes no lock, so it works while a run appends; a torn last line is ignored.
    ``slim``: keep the window requests sent once and done as the offsets of their intents
    only (:attr:`JournalState.settled`), which is all that ``status`` needs of them (a
    ``report`` needs every request's details).
    """
    try:
        # Asked first: opening a FIFO for reading waits for a writer, /dev/zero never ends.
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if not stat.S_ISREG(mode):
            raise BadInput(_not_a_file(path, "")) from None
        f = path.open("rb", buffering=1 << 20)
    except FileNotFoundError:
        raise BadInput(f"no journal at {path}") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory, not a bulkrerun journal") from None
    with f:
        scan = _scan(f, path, slim=slim)
    if scan is None:
        raise JournalMismatch(f"{path} holds no journal yet (it is empty)")
    return scan.header, scan.replayer.state


def bound_to(path: Path) -> Header | None:
    """The header of the journal at ``path``, or None when there is none to read (no file,
    not a regular file, not a journal): for what a message suggests, never for a decision."""
    try:
        if not path.is_file():  # a FIFO would wait for a writer
            return None
        with path.open("rb") as f:
            return _parse_header(f.readline(1 << 16), path)
    except (OSError, JournalMismatch):
        return None


def read_records_at(source: Path | Journal, offsets: Iterator[int]) -> Iterator[dict[str, Any]]:
    """The records at the given byte offsets of a journal, parsed (for reports).

    Offsets come from :class:`ChunkInfo`; reading them in increasing order is sequential.
    A :class:`Journal` this process holds open is read through its own descriptor (see
    :meth:`Journal.records_at`), a path by opening the file there.
    """
    if isinstance(source, Journal):
        yield from source.records_at(offsets)
        return
    with source.open("rb") as f:
        yield from _records_in(f, source, offsets)


def _records_in(f: IO[bytes], path: Path, offsets: Iterator[int]) -> Iterator[dict[str, Any]]:
    for offset in offsets:
        f.seek(offset)
        line = f.readline()
        try:
            obj = json.loads(line)
        except ValueError:
            raise JournalCorrupt(
                f"journal {path}: the record at byte {offset} is unreadable; the file "
                "changed since it was read"
            ) from None
        if not isinstance(obj, dict):
            raise JournalCorrupt(f"journal {path}: the record at byte {offset} is not an object")
        yield obj


# ---------------------------------------------------------------------------------------
# The writer


def _fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (some filesystems refuse: then nothing more to do)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flock_pids(fd: int) -> list[int] | None:
    """The pids holding a flock on ``fd``'s file, from Linux's /proc/locks (0 for a holder
    outside this pid namespace); None when /proc/locks cannot be read."""
    try:
        st = os.fstat(fd)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters read "1: -> FLOCK".
            return [
                int(parts[4])
                for parts in map(str.split, f)
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key
            ]
    except (OSError, ValueError):
        return None


def _lock_holder(fd: int) -> int | None:
    """Best effort: the pid holding a flock on ``fd``'s file."""
    return next((pid for pid in _flock_pids(fd) or () if pid), None)


@dataclass(frozen=True, slots=True)
class Holder:
    """Another bulkrerun holding a journal (a run, or a verify): its pid when known."""

    pid: int | None

    @property
    def who(self) -> str:
        """``another bulkrerun (pid 4242)``, or without the pid when it is not known."""
        return "another bulkrerun" + (f" (pid {self.pid})" if self.pid is not None else "")


def held_by(path: Path) -> Holder | None:
    """The bulkrerun holding the journal at ``path`` (its lock) right now, None when none
    does. Read from Linux's /proc/locks, which takes no lock. Where that cannot be read, a
    shared lock is tried and dropped at once (a run starting at that very instant would be
    told the journal is in use), and the pid is not known."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO there: no wait for a writer
    except OSError:
        return None
    try:
        pids = _flock_pids(fd)
        if pids is not None:
            return Holder(next((pid for pid in pids if pid), None)) if pids else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder(None)
        except OSError:
            return None
        return None
    finally:
        os.close(fd)  # also drops a probe's lock


class _Removed(Exception):
    """The journal file was unlinked between its open and its lock."""


def _not_a_file(path: Path, hint: str) -> str:
    return f"{path} is not a regular file (a device, a FIFO, a socket): not a journal{hint}"


def _open_file(path: Path, create: bool) -> tuple[int, bool]:
    """A descriptor of the journal file at ``path`` for appending, and whether this call
    created it (mode ``0600``); with ``create=False`` only an existing file is opened."""
    fd, created = _open_path(path, create)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/null would take every record, and keep none
        os.close(fd)
        raise BadInput(_not_a_file(path, "; --journal needs a file path" if create else ""))
    return fd, created


def _open_path(path: Path, create: bool) -> tuple[int, bool]:
    if create:
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND, 0o600), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInput(f"cannot create the journal {path}: {exc.strerror}") from None
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND), False
    except FileNotFoundError:
        raise BadInput(f"no journal at {path}") from None
    except IsADirectoryError:
        # Only a run's argument is --journal (verify's is the journal itself, as status's).
        if not create:
            raise BadInput(f"{path} is a directory, not a bulkrerun journal") from None
        raise BadInput(
            f"{path} is a directory; --journal needs a file path (new, or an existing journal)"
        ) from None
    except OSError as exc:
        said = f"cannot open the journal {path}: {exc.strerror}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            said = _unwritable(path, exc.strerror or str(exc), create)
        raise BadInput(said) from None


def _unwritable(path: Path, why: str, for_run: bool) -> str:
    """What to do with a journal this process may read but not write (a read-only disk, an
    immutable file, another user's file): the commands that write it (a run, a verify) are
    refused, and the journal is whole. (One it may not read either is refused before, by
    the arguments' check.)"""
    quoted = shlex.quote(str(path))
    then = (
        "give run that path as --journal (it resumes from there)"
        if for_run
        else "verify that copy (and run with it as --journal from then on)"
    )
    # What --watch saw is a file of its own beside it, found by the journal's name: a copy
    # without it shows no final instance status, and a watch of the copy starts over.
    sidecar = watch_path(path)
    with_it = f" with {sidecar} (what --watch saw)" if sidecar.exists() else ""
    return (
        f"cannot write the journal {path} ({why}); nothing was sent. `bulkrerun status "
        f"{quoted}` and `bulkrerun report {quoted}` can still read it. To go on from it, "
        f"make it writable (its permissions, or the disk's mount), or copy it{with_it} to a "
        f"folder you can write and {then}."
    )


def _mismatch(
    path: Path, header: Header, binding: Binding, state: JournalState, for_run: bool
) -> str:
    """Why the journal at ``path`` refuses ``binding``, and what to do: a run needs another
    journal (or none: one whose requests were never acted on, such as a run stopped at a
    mistyped endpoint, can go); a verification needs the journal's own project and
    endpoint."""
    said = (
        f"journal {path} belongs to project {header.project_id} at {header.endpoint}, not to "
        f"project {binding.project_id} at {binding.endpoint}. A journal records the requests "
        "of one project and endpoint"
    )
    if not for_run:
        return (
            f"{said}: verify it with the project and endpoint it was run with "
            "(BULKRERUN_PROJECT_ID and BULKRERUN_ENDPOINT or BULKRERUN_REGION, or the flags)."
        )
    counts = state.counts()
    if not (counts[UnitState.DONE] or counts[UnitState.FAILED] or counts[UnitState.HELD]):
        return (
            f"{said}. No request recorded in it was acted on or may have been (none is done, "
            "failed or held), so nothing is lost without it: remove it, or give this run "
            "another --journal path."
        )
    return f"{said}; give this run another --journal path."


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_fdatasync: Final = getattr(os, "fdatasync", os.fsync)
"""``fdatasync`` where the system has it: an append-only file needs its data and its size
on stable storage, not its other metadata."""

# The sync helper, a program of its own (run as ``python -I -S -c _SYNC_HELPER``). It waits
# for a request on one pipe, lets COMMIT_INTERVAL pass since the start of its previous sync
# (the commit delay: whatever the journal writes meanwhile rides along), reads the file's
# size, fdatasyncs, and answers that size on the other pipe: every byte before it was
# written before the fdatasync began, so it is durable. EOF on the request pipe (the
# journal closed, or its process died) ends it. It opens nothing and imports only builtins.
_SYNC_HELPER: Final = """
import os, sys, time
fd, req, rep = (int(a) for a in sys.argv[1:4])
interval = float(sys.argv[4])
sync = getattr(os, "fdatasync", os.fsync)
last = -interval
try:
    while os.read(req, 4096):
        wait = last + interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        last = time.monotonic()
        st = os.fstat(fd)
        if st.st_nlink == 0:  # removed: what it holds is lost when the run ends
            os.write(rep, b"U\\n")
            break
        size = st.st_size
        try:
            sync(fd)
        except OSError as exc:
            os.write(rep, b"E%d\\n" % (exc.errno or 5))
            break
        os.write(rep, b"%d\\n" % size)
except (OSError, KeyboardInterrupt):
    pass
"""


class _HelperEnded(OSError):
    """The sync helper died (killed, or out of memory): no disk to mend."""


class _Unlinked(OSError):
    """The journal's file was removed while a run wrote it. ``written_back``: what it
    held was copied to a new file at its path (else ``strerror`` says why not)."""

    written_back = False


class _SyncHelper:
    """The helper process that makes the journal durable, and its two pipes.

    Why a process: the event loop must not wait on the disk, and a thread cannot wait for
    it cheaply. A Python thread needs the interpreter lock again after every fsync, and
    under load it waits for it up to the switch interval (5 ms), twice per commit; on a
    busy core that put 8-13 ms on every intent and two context switches per commit on the
    client's core (measured: 50,000 in a run of 60,000 requests). The helper needs no lock
    of ours: the loop writes the records itself (a copy into the page cache) and sends one
    byte; the helper's answer arrives through the loop's own selector. No library offers an
    asynchronous fsync on asyncio (aiofiles and anyio hand it to a thread), hence this.

    The helper syncs through a descriptor of its own, opened read-only here: fdatasync acts
    on the file, whatever descriptor names it, and this one shares neither the journal's
    lock nor its offset, so a helper outliving a killed run never holds the journal locked.
    """

    __slots__ = ("_proc", "rep", "req")

    def __init__(self, path: Path) -> None:
        if not sys.executable:  # an embedding application that runs no interpreter
            raise OSError(errno.ENOENT, "no Python interpreter to run it")
        sync_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fds: list[int] = [sync_fd]
        try:
            req_r, self.req = os.pipe()
            fds.append(req_r)
            self.rep, rep_w = os.pipe()
            fds.append(rep_w)
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and program
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _SYNC_HELPER,
                    str(sync_fd),
                    str(req_r),
                    str(rep_w),
                    repr(COMMIT_INTERVAL),
                ],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C is for the run; the helper ends on EOF
            )
        except BaseException:
            for fd in (getattr(self, "req", None), getattr(self, "rep", None)):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        os.set_blocking(self.rep, False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def request(self) -> None:
        """Ask for a sync of everything written so far (never blocks: one byte at a time
        is outstanding, and a pipe holds thousands)."""
        os.write(self.req, b".")

    def answers(self) -> list[bytes] | None:
        """The answers that arrived (sizes, or ``E<errno>``); None: the helper is gone."""
        data = b""
        while True:
            try:
                more = os.read(self.rep, 4096)
            except BlockingIOError:
                return data.split()
            if not more:
                # It ended. What it answered first (an error, most likely: it ends after one)
                # is read now; its end is seen at the next read, which finds nothing.
                return data.split() or None
            data += more

    def close(self) -> None:
        """Stop the helper at once (whatever it does is no longer needed) and reap it."""
        os.close(self.req)
        os.close(self.rep)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()


class Journal:
    """An open journal, locked for this process. Use :meth:`open`.

    Not thread-safe: every method is called from one thread, the event loop's while a loop
    runs. The fsyncs happen in a helper process (:class:`_SyncHelper`).
    """

    __slots__ = (
        "_buf",
        "_created_end",
        "_described",
        "_durable",
        "_error",
        "_fallback",
        "_fd",
        "_for_run",
        "_header",
        "_helper",
        "_loop",
        "_outcome_heads",
        "_path",
        "_rep",
        "_run",
        "_scheduled",
        "_size",
        "_str_cache",
        "_syncing",
        "_tool_version",
        "_verify",
        "_waiters",
        "_written",
    )

    def __init__(
        self, path: Path, fd: int, header: Header, rep: _Replayer, size: int, tool_version: str
    ) -> None:
        self._path = path
        self._fd: int | None = fd
        self._header = header
        self._rep = rep
        self._described = rep.described
        # Byte offsets, all of them: records are located by where they end. We are the
        # only writer (flock), so the file's size is ours to count.
        self._size = size  # end of the last record appended (buffered ones included)
        self._written = size  # end of what is written to the file
        self._durable = size  # end of what is known to be on stable storage
        self._tool_version = tool_version
        self._buf: list[bytes] = []  # records appended and not yet written, in order
        # Group commit (see "committing" below): callers waiting for their record to be
        # durable, (end offset, future) in increasing order, each woken once by _wake.
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._scheduled = False  # a _commit is scheduled on the loop
        self._syncing = False  # the helper has a request it has not answered yet
        self._helper: _SyncHelper | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the helper answers on
        self._error: OSError | None = None
        self._fallback: str | None = None  # why commits fsync on the loop (no helper)
        self._str_cache: dict[tuple[str, ...], bytes] = {}
        self._outcome_heads: dict[tuple[str, str], bytes] = {}
        self._created_end: int | None = None  # of a journal this open created: its header's end
        self._run: int | None = None  # the number of the run begun here, if one was
        self._verify: int | None = None  # the number of the verification begun here, if one
        self._for_run = True  # opened by a run (else by a verify: its messages say so)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        binding: Binding,
        *,
        tool_version: str,
        live_details: bool = True,
        slim: bool = False,
        create: bool = True,
    ) -> Journal:
        """Open the journal at ``path`` for appending, creating it if it does not exist
        (with ``create=False`` a missing journal is :class:`BadInput`: a mistyped path
        must not become a new, empty journal).

        ``live_details=False`` keeps memory flat however many records a run appends: the
        state keeps in detail what the file held when opened, and of the requests recorded
        since only the ones without a final outcome yet; the rest is counted (what
        :meth:`JournalState.counts`, ``requests`` and ``failed_by_code`` need). The resume
        decisions are made before sending, from the state as opened, so they lose nothing;
        :meth:`reload` replays the file when the details are wanted again. ``slim=True``
        replays what the file holds as :func:`read_state` does with it: of the window
        requests sent once and done, their intents' offsets only (what a run and a verify
        read of them).

        A new journal is created with mode ``0600`` and its header is made durable (file
        and directory fsynced). An existing journal must be bound to ``binding`` (else
        :class:`JournalMismatch`); it is replayed (:meth:`state`), and a torn last line is
        cut away before anything is appended. A damaged record before the last one raises
        :class:`JournalCorrupt`. The file stays locked (``flock``) until :meth:`close`:
        another process opening it gets :class:`BadInput`.
        """
        for _ in range(3):
            fd, created = _open_file(path, create)
            try:
                journal = cls._open_fd(
                    path, fd, binding, tool_version, created=created, for_run=create, slim=slim
                )
            except _Removed:  # a run that had just created it removed it again: afresh
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            journal._rep.details = live_details
            journal._for_run = create
            return journal
        raise BadInput(f"journal {path} was removed again and again while it was opened")

    @classmethod
    def _open_fd(
        cls,
        path: Path,
        fd: int,
        binding: Binding,
        tool_version: str,
        *,
        created: bool,
        for_run: bool,
        slim: bool = False,
    ) -> Journal:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_holder(fd)
            who = f" (pid {pid})" if pid is not None else ""
            other = ", or give this run another --journal path" if for_run else ""
            raise BadInput(
                f"journal {path} is in use by another bulkrerun{who}; wait for it to end "
                f"or stop it{other}."
            ) from None
        if os.fstat(fd).st_nlink == 0:
            # Its holder created it, recorded nothing and removed it (discard_if_unused)
            # between our open and our lock: what this descriptor holds is no journal.
            raise _Removed
        scan = None
        if not created:
            scan = _scan_fd(fd, path, slim=slim)
        if scan is None:
            # New file, or one a crash left empty or with a torn header: start it afresh,
            # private as a new one is (an empty file made beforehand keeps its own mode).
            os.ftruncate(fd, 0)
            if not created:  # a new file has its mode from open()
                try:
                    os.fchmod(fd, 0o600)
                except OSError as exc:
                    raise BadInput(
                        f"cannot make the journal {path} private (mode 0600): {exc.strerror}"
                    ) from None
            header = Header(FORMAT, tool_version, binding.project_id, binding.endpoint, time.time())
            line = _record(
                {
                    "t": "header",
                    "format": header.format,
                    "tool": "bulkrerun",
                    "tool_version": header.tool_version,
                    "project_id": header.project_id,
                    "endpoint": header.endpoint,
                    "created": round(header.created, 3),
                }
            )
            _write_all(fd, line)
            os.fsync(fd)
            _fsync_dir(path.parent)
            end = len(line)
            journal = cls(path, fd, header, _Replayer(JournalState(header)), end, tool_version)
            if created:  # not a file a crash left empty: that one is not this run's to remove
                journal._created_end = end
            return journal
        header = scan.header
        if header.binding != binding:
            raise JournalMismatch(_mismatch(path, header, binding, scan.replayer.state, for_run))
        if scan.torn:
            # A crash cut the last record short. It never counted: an intent is durable
            # only once whole, and a request leaves only after that.
            os.ftruncate(fd, scan.good_end)
            os.fsync(fd)
        return cls(path, fd, header, scan.replayer, scan.good_end, tool_version)

    # -- reading -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def header(self) -> Header:
        return self._header

    @property
    def closed(self) -> bool:
        return self._fd is None

    def state(self) -> JournalState:
        """The replayed state, kept up to date with every record appended since."""
        return self._rep.state

    def reload(self) -> JournalState:
        """Replay the file again, every record in detail (after a run opened with
        ``live_details=False``); only when nothing is waiting to be written."""
        self._check_usable()
        if self._buf:
            raise RuntimeError("reload() with records not yet written: flush() first")
        assert self._fd is not None
        scan = _scan_fd(self._fd, self._path)
        assert scan is not None, "a journal that was opened has its header"
        self._rep = scan.replayer
        self._described = scan.replayer.described
        return self._rep.state

    def records_at(self, offsets: Iterator[int]) -> Iterator[dict[str, Any]]:
        """The records at the given byte offsets (see :func:`read_records_at`), read through
        this journal's own descriptor: the file at its path may have been removed (an
        ``rm``, a cleaner of old files) since it was opened, while a verify or a watch
        decided what to ask the list, and the records live on in the descriptor until the
        close writes them back (see :meth:`_unlinked`). Read by path, they were a
        FileNotFoundError and a traceback. Reads what is written: :meth:`flush` first."""
        self._check_usable()
        assert self._fd is not None
        # A descriptor of its own, as _scan_fd's: its seeks move the offset the two share,
        # which appends (O_APPEND) ignore.
        with os.fdopen(os.dup(self._fd), "rb") as f:
            yield from _records_in(f, self._path, offsets)

    # -- appending -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._fatal()
        if self._fd is None:
            raise RuntimeError(f"journal {self._path} is closed")

    def _fatal(self) -> Fatal:
        if isinstance(self._error, _Unlinked):
            if not self._for_run:  # a verify: it sends no rerun, and decides units
                if self._error.written_back:
                    return Fatal(
                        f"the journal {self._path} was removed while this verify wrote it. "
                        f"What it had recorded, the verdicts with it, is written back to "
                        f"{self._path}: run the same command again to decide what it had not."
                    )
                return Fatal(
                    f"the journal {self._path} was removed while this verify wrote it, and "
                    f"what it had recorded could not be written back "
                    f"({self._error.strerror}). Do not run with a new journal in its place: "
                    "the requests its runs sent would be sent again."
                )
            if self._error.written_back:
                return Fatal(
                    f"the journal {self._path} was removed while this run wrote it. Nothing "
                    f"more is sent; what it had recorded is written back to {self._path}: "
                    "run the same command again to resume."
                )
            return Fatal(
                f"the journal {self._path} was removed while this run wrote it, and what it "
                f"had recorded could not be written back ({self._error.strerror}). Nothing "
                "more is sent. Do not start again with a new journal: the requests this run "
                "sent would be sent again."
            )
        if isinstance(self._error, _HelperEnded):
            return Fatal(
                f"cannot make the journal {self._path} durable: {self._error.strerror} (was "
                "it killed?). Nothing more is sent; run the same command again to resume."
            )
        reason = self._error.strerror if self._error is not None else "unknown error"
        return Fatal(
            f"cannot write the journal {self._path}: {reason}. Nothing more is sent; fix the "
            "cause (disk space, permissions) and run the same command again to resume."
        )

    def _append(self, line: bytes) -> int:
        """Buffer one record; returns its byte offset in the file."""
        offset = self._size
        self._size += len(line)
        self._buf.append(line)
        self._rep.state.records += 1
        return offset

    # The encoders below run once or twice per request on the event loop, so they build
    # each line with one bytes %-format over cached pieces (about twice as fast as an
    # f-string then encode). The bytes are the same: %d, %.3f and %.1f format as the
    # f-string specs did, and strings are JSON-encoded by the same functions.

    def _intent_line(self, chunk: Chunk, attempt: int, wall: float) -> tuple[bytes, bool]:
        """The intent record of ``chunk``, and whether it is a full one (describing it)."""
        if not math.isfinite(wall):
            raise ValueError(f"wall time must be finite, got {wall!r}")
        cid = chunk.id
        if self._described(cid):
            head = b'{"t":"intent","chunk":%s,"attempt":%d,"wall":%.3f' % (
                _json_bytes(cid),
                attempt,
                wall,
            )
            return _seal(head), False
        body = chunk.body
        # find(), not ``in``: for ``b"\n" in body`` CPython first tries the needle as a
        # byte value, raising and clearing a TypeError each time (1,200 instructions).
        if body[:1] != b"{" or body.find(b"\n") >= 0:
            raise ValueError(f"chunk {cid}: body is not one line of canonical JSON")
        units = chunk.units
        if len(units) == 1 and units[0] == cid:
            units_json = b""  # a window chunk: its unit is itself
        elif _plain("".join(units)):
            units_json = (
                (',"units":["' + '","'.join(units) + '"]').encode() if units else b',"units":[]'
            )
        else:
            units_json = b',"units":' + json.dumps(list(units)).encode()
        # Entry, kind, job and workspace repeat across thousands of chunks: encode them once.
        key = (chunk.entry, chunk.kind, chunk.job_name, chunk.workspace)
        tail = self._str_cache.get(key)
        if tail is None:
            tail = (
                f',"entry":{_js(chunk.entry)},"kind":{_js(chunk.kind)}'
                f',"job_name":{_js(chunk.job_name)},"workspace":{_js(chunk.workspace)},"body":'
            ).encode()
            if len(self._str_cache) < 4096:
                self._str_cache[key] = tail
        payload = b'{"t":"intent","chunk":%s,"attempt":%d,"wall":%.3f%s%s%s' % (
            _json_bytes(cid),
            attempt,
            wall,
            units_json,
            tail,
            body,
        )
        return _seal(payload), True

    async def intend(self, chunk: Chunk, attempt: int, wall: float) -> None:
        """Record that ``chunk`` is about to be sent; returns once the record is durable.

        If this raises (cancelled, or the journal cannot be written), the caller must not
        send the request. When cancelled, the journal records the attempt as not sent
        (state ``pending``), so that its units do not show as held.
        """
        if self._fd is None or self._error is not None:
            self._check_usable()
        line, full = self._intent_line(chunk, attempt, wall)
        offset = self._size
        self._size = end = offset + len(line)
        self._buf.append(line)
        rep = self._rep
        rep.state.records += 1
        if full:
            rep.intent(chunk.id, chunk.units, offset, wall)
        else:
            rep.intent(chunk.id, None, None, wall)
        try:
            await self._wait_durable(end)
        except BaseException:
            if self._error is None and self._fd is not None:
                self.outcome(chunk, attempt, _NOT_SENT, wall, "pending")
            raise

    def outcome(
        self, chunk: Chunk, attempt: int, outcome: Outcome, wall: float, state: str
    ) -> None:
        """Record what became of an attempt; durable with the next commit.

        ``state`` is the engine's decision: ``done``, ``failed``, ``held``, ``retry`` (not
        acted on; another attempt comes) or ``pending`` (not acted on, and the run stops).
        """
        if self._fd is None or self._error is not None:
            self._check_usable()
        o = outcome
        kind = o.kind
        head = self._outcome_heads.get((state, kind))
        if head is None:
            if state not in OUTCOME_STATES:
                raise ValueError(
                    f"outcome state must be one of {sorted(OUTCOME_STATES)}, not {state!r}"
                )
            head = f',"state":"{state}","kind":"{kind}"'.encode()
            self._outcome_heads[state, kind] = head
        cid = chunk.id
        if not self._described(cid):
            raise ValueError(f"outcome of chunk {cid} without an intent")
        if not math.isfinite(wall):
            raise ValueError(f"wall time must be finite, got {wall!r}")
        status = o.status
        request_id = o.request_id
        elapsed = o.elapsed
        if (
            status is not None
            and request_id is not None
            and o.reason
            and o.error_code is None
            and o.error_msg is None
            and o.retry_after is None
            and math.isfinite(elapsed)
        ):
            # The common outcome (a request the service answered without an error): one
            # format for the whole line.
            payload = (
                b'{"t":"outcome","chunk":%s,"attempt":%d,"wall":%.3f%s,"status":%d'
                b',"request_id":%s,"reason":%s,"ms":%.1f'
            ) % (
                _json_bytes(cid),
                attempt,
                wall,
                head,
                status,
                _js(request_id).encode(),
                _js(o.reason).encode(),
                elapsed * 1000.0,
            )
        else:
            payload = _outcome_payload(cid, attempt, wall, head, o)
        line = _seal(payload)
        offset = self._size
        self._size = offset + len(line)
        self._buf.append(line)
        rep = self._rep
        rep.state.records += 1
        if state == "failed" or state == "pending":  # kept for counting failures by code
            sent = kind is not Kind.NOT_SENT
            rep.outcome(cid, state, wall, offset, status, o.error_code, sent, attempt == 1)
        elif state == "held":
            rep.outcome(cid, state, wall, offset, None, None, request_id=request_id)
        else:
            rep.outcome(cid, state, wall, offset, None, None)

    def was_held(self, chunk: Chunk) -> bool:
        """Whether a unit of ``chunk`` was held before its attempt now open (a resend of held
        units): an earlier send may have been acted on, whatever becomes of this one."""
        priors = self._rep.priors(chunk.id)
        return priors is not None and _UNIT_HELD in priors

    def held_units(self, chunk: Chunk) -> int:
        """How many units of ``chunk`` are held now: after an attempt of a resend (of held
        units) not acted on, those it left held as they were."""
        units = self._rep.state.units
        return sum(1 for u in chunk.units if units.get(u) is _UNIT_HELD)

    def verified(self, unit_id: str, state: UnitState | None, evidence: str, wall: float) -> None:
        """Record what a verification found for a unit (``None``: it was not rerun, so it is
        pending again); durable with the next commit."""
        self._check_usable()
        line = _record(
            {
                "t": "verify",
                "unit": unit_id,
                "state": None if state is None else state.value,
                "evidence": evidence,
                "wall": round(wall, 3),
            }
        )
        self._append(line)
        self._rep.verify(unit_id, state, evidence, wall)

    def end_run(
        self,
        exit_code: int,
        stopped: str | None,
        message: str | None,
        *,
        timed_out: bool = False,
        wall: float | None = None,
        watch: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how the run this process began ended (``stopped``: why it stopped before
        its end, or None; ``timed_out``: see the module's docstring; ``watch``: what its
        ``--watch`` saw); durable with the next commit or :meth:`close`. Nothing when no run
        was begun here, or the journal can no longer be written (a run that cannot record
        its end reads as one that was killed: that is what it is to a resume)."""
        n = self._run
        if n is None or self._fd is None or self._error is not None:
            return
        wall = time.time() if wall is None else wall
        seen = None if watch is None else dict(watch)
        record = RunEnd(n, wall, exit_code, stopped, message, timed_out, seen)
        fields: dict[str, Any] = {
            "t": "end",
            "run": n,
            "wall": round(wall, 3),
            "exit": exit_code,
            "stopped": stopped,
            "message": message,
        }
        if timed_out:
            fields["timed_out"] = True
        if seen is not None:
            fields["watch"] = seen
        self._append(_record(fields))
        self._rep.end(record)

    def begin_run(self, run_info: RunInfo, *, wall: float | None = None) -> None:
        """Record the start of a run (manifest copy, selections, options); durable on return.

        Blocks for one fsync: it happens once per run, before any request.
        """
        self._check_usable()
        wall = time.time() if wall is None else wall
        n = len(self._rep.state.runs) + 1
        record = RunRecord(
            n=n,
            wall=wall,
            pid=os.getpid(),
            tool_version=self._tool_version,
            manifest_name=run_info.manifest_name,
            manifest_text=run_info.manifest_text,
            manifest_sha256=run_info.manifest_sha256,
            instance_files=dict(run_info.instance_files),
            options=dict(run_info.options),
            pending=run_info.pending,
            # Where the name as given leads from here (the run's folder), so that commands
            # naming the manifest can be given from any folder later.
            manifest_path=str(Path(run_info.manifest_name).absolute()),
        )
        self._append(
            _record(
                {
                    "t": "run",
                    "n": n,
                    "wall": round(wall, 3),
                    "pid": record.pid,
                    "tool_version": record.tool_version,
                    "manifest": {
                        "name": record.manifest_name,
                        "path": record.manifest_path,
                        "sha256": record.manifest_sha256,
                        "text": record.manifest_text,
                    },
                    "instance_files": record.instance_files,
                    "options": record.options,
                    "pending": record.pending,
                }
            )
        )
        self._rep.run(record)
        for label, items in run_info.selections.items():
            # Written from the selection's columns, as json.dumps would write it (a list of
            # rows and its text were 110 bytes an instance, beside the selection itself).
            found = (
                items
                if isinstance(items, FoundInstances)
                else FoundInstances((str(j), int(a), int(b), int(c)) for j, a, b, c in items)
            )
            head = b'{"t":"select","run":%d,"label":%s,"items":' % (
                n,
                json.dumps(label).encode("ascii"),
            )
            self._append(_seal(head + found.json_items()))
            self._rep.select(label, found)
        self._sync_now()
        self._run = n

    def begin_verify(
        self, options: Mapping[str, Any], held: int, *, wall: float | None = None
    ) -> None:
        """Record the start of a ``verify`` command (``options``: the settings it reaches
        the service with, JSON-serialisable, no secret; ``held``: units held now); durable
        on return, so that it is on record before the service is asked anything."""
        self._check_usable()
        wall = time.time() if wall is None else wall
        n = len(self._rep.state.verifications) + 1
        record = VerifyRecord(n, wall, os.getpid(), self._tool_version, dict(options), held)
        self._append(
            _record(
                {
                    "t": "verify_start",
                    "n": n,
                    "wall": round(wall, 3),
                    "pid": record.pid,
                    "tool_version": record.tool_version,
                    "held": held,
                    "options": record.options,
                }
            )
        )
        self._rep.verify_start(record)
        self._sync_now()
        self._verify = n

    def end_verify(
        self,
        exit_code: int,
        stopped: str | None,
        message: str | None,
        decided: tuple[int, int, int] | None,
        *,
        wall: float | None = None,
    ) -> None:
        """Record how the verification begun here ended (``decided``: units it made done,
        pending and left held; None when it stopped before deciding); durable with the next
        commit or :meth:`close`. Nothing when none was begun here or the journal can no
        longer be written, as for :meth:`end_run`."""
        n = self._verify
        if n is None or self._fd is None or self._error is not None:
            return
        wall = time.time() if wall is None else wall
        done, pending, held = (None, None, None) if decided is None else decided
        record = VerifyEnd(n, wall, exit_code, stopped, message, done, pending, held)
        self._append(
            _record(
                {
                    "t": "verify_end",
                    "n": n,
                    "wall": round(wall, 3),
                    "exit": exit_code,
                    "stopped": stopped,
                    "message": message,
                    "verified_done": done,
                    "made_pending": pending,
                    "still_held": held,
                }
            )
        )
        self._rep.verify_end(record)
        self._verify = None

    # -- committing ----------------------------------------------------------------------
    #
    # Group commit, with the fsyncs in a helper process (see _SyncHelper for why). A caller
    # whose record must be durable schedules one _commit on the loop (unless one is
    # scheduled) and waits on a future of its own. _commit writes every buffered record to
    # the file in one write (a copy into the page cache: microseconds) and, unless the
    # helper is busy with a request already, sends it one. The helper answers, at most once
    # per COMMIT_INTERVAL, the size it made durable; _on_answer wakes the callers it covers
    # and, if some are still waiting (their records came after the helper read the size),
    # asks again at once. So per request the loop pays a list append, a future and its
    # wake-up; per commit one write, one byte to the helper, and one read of its answer.
    #
    # The futures are asyncio's: bulkrerun runs only on asyncio (aiohttp requires it). Each
    # caller waits on its own future so that cancelling one caller (which cancels the future
    # it awaits) leaves the others waiting; nobody leads a batch, so a cancellation takes
    # effect at once, without waiting for the disk.

    async def _wait_durable(self, end: int) -> None:
        """Return once every record up to byte ``end`` is durable (or close() wrote it)."""
        loop = asyncio.get_running_loop()
        while self._durable < end:
            if self._error is not None:
                raise self._fatal() from self._error
            if self._fd is None:
                return  # close() wrote and fsynced everything
            self._schedule_commit(loop)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((end, fut))
            await fut

    def _schedule_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have :meth:`_commit` run on ``loop`` soon, once however often this is asked."""
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        """Loop callback (scheduled by _schedule_commit only): write what is buffered, and
        ask the helper to make it durable."""
        self._scheduled = False
        if self._fd is None or self._error is not None:
            self._wake()
            return
        self._write_out()
        if self._error is None and not self._syncing and self._durable < self._written:
            self._request_sync()
        self._wake()  # after an error: every caller finds out

    def _write_out(self) -> None:
        """Write every buffered record to the file (a copy into the page cache): not yet
        durable."""
        buf = self._buf
        if not buf or self._fd is None:
            return
        data = b"".join(buf)
        buf.clear()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._error = exc
            return
        self._written += len(data)

    def _request_sync(self) -> None:
        """Send the helper a request (starting it as needed); without one, sync here."""
        if self._fallback is None:
            try:
                helper = self._ensure_helper()
            except (OSError, subprocess.SubprocessError) as exc:
                # No process or descriptor to spare, or no interpreter to run: slower beats
                # stopping a recovery. From now on each commit fsyncs on the loop, which
                # waits for the disk (milliseconds, each commit carrying every intent
                # since the previous one).
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                self._fallback = (
                    f"the journal's sync helper process could not start ({why}): the "
                    "journal was synced on the event loop instead, which is slower"
                )
            else:
                try:
                    helper.request()
                except BrokenPipeError:
                    # The helper died before reading: the same failure its closed answer
                    # pipe reports, told the same way (not as a disk to mend).
                    self._helper_ended(helper)
                    return
                except OSError as exc:
                    self._error = exc
                    return
                self._syncing = True
                return
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # as the helper checks
            self._unlinked()
            return
        self._sync_written()

    @property
    def broken(self) -> bool:
        """Whether a write or a sync failed: the file then lacks records the state in memory
        holds (intents that were never durable, so never sent), and is the one to read."""
        return self._error is not None

    @property
    def lost(self) -> bool:
        """Whether the file was removed and what it held could not be written back: no
        command goes on from it (see :meth:`_fatal`)."""
        return isinstance(self._error, _Unlinked) and not self._error.written_back

    @property
    def sync_fallback(self) -> str | None:
        """Why the journal synced on the event loop (its helper could not start), or None."""
        return self._fallback

    def _ensure_helper(self) -> _SyncHelper:
        """The sync helper, started if need be, its answers read on the running loop."""
        loop = asyncio.get_running_loop()
        helper = self._helper
        if helper is None:
            helper = self._helper = _SyncHelper(self._path)
        if self._loop is not loop:
            if self._loop is not None:  # a journal used by one loop after another
                self._stop_listening(helper)
                self._syncing = False  # an answer to the old loop's request is read here
            loop.add_reader(helper.rep, self._on_answer)
            self._loop = loop
        return helper

    def _stop_listening(self, helper: _SyncHelper) -> None:
        """Stop reading the helper's answers on the loop that read them (if it is open)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # a closed loop
                self._loop.remove_reader(helper.rep)

    def _helper_ended(self, helper: _SyncHelper) -> None:
        if self._error is None:  # else the disk's error it answered before it ended says why
            self._error = _HelperEnded(errno.EIO, "its sync helper process ended unexpectedly")
        self._stop_listening(helper)  # a pipe at its end stays readable

    def _on_answer(self) -> None:
        """Loop callback: the helper answered; wake whoever it made durable."""
        helper = self._helper
        if helper is None or self._fd is None:
            return
        answers = helper.answers()
        if answers is None:
            self._helper_ended(helper)
        for answer in answers or ():
            if answer == b"U":
                self._unlinked()
            elif answer.startswith(b"E"):
                code = int(answer[1:])
                self._error = OSError(code, os.strerror(code))
            else:
                self._durable = max(self._durable, int(answer))
        if not answers and answers is not None:
            return  # woken without an answer: nothing changed
        self._syncing = False
        self._wake()
        if self._waiters and self._error is None:
            # Those still waiting came after the helper read the size: commit again.
            self._schedule_commit(asyncio.get_running_loop())

    def _unlinked(self) -> None:
        """The file was removed while the run wrote it (an ``rm``, a cleaner of old files):
        the records live on only in this process's descriptor, and a resume that found no
        journal would send every request again. The error stops the run (nothing more is
        sent); what was written is copied to a new file at the path, when it is free."""
        assert self._fd is not None
        error = _Unlinked(errno.ENOENT, "removed")
        try:
            fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                offset = 0
                while offset < self._written:
                    data = os.pread(self._fd, min(1 << 20, self._written - offset), offset)
                    if not data:
                        break
                    _write_all(fd, data)
                    offset += len(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self._path.parent)
        except OSError as exc:
            error.strerror = exc.strerror or str(exc)
        else:
            error.written_back = True
        self._error = error

    def _wake(self) -> None:
        """Resolve the waiters whose records are durable (all of them after an error or
        close(): they find out which)."""
        waiters = self._waiters
        durable: float = self._durable
        if self._error is not None or self._fd is None:
            durable = math.inf
        while waiters and waiters[0][0] <= durable:
            fut = waiters.popleft()[1]
            if not fut.done():  # a cancelled caller's future is done already
                fut.set_result(None)

    def _sync_now(self, *, removed_here: bool = False) -> None:
        """Write and fsync everything buffered, on this thread (begin_run, begin_verify,
        close). A file removed meanwhile is written back, as the helper's answer has it
        (``removed_here``: discard_if_unused removed it, and means it)."""
        if self._fd is None:
            return
        self._write_out()
        if self._error is None and not removed_here and os.fstat(self._fd).st_nlink == 0:
            # A verify that asked the list for minutes, or a run that followed its reruns
            # with --watch, commits nothing through the helper meanwhile: its end and close
            # are the first to find the file gone.
            self._unlinked()
        if self._error is None:
            self._sync_written()
        if self._error is not None:
            raise self._fatal() from self._error
        self._wake()

    def _sync_written(self) -> None:
        """fdatasync what is written, on this thread; a failure is kept in ``_error``."""
        assert self._fd is not None
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            self._error = exc
            return
        self._durable = self._written

    async def flush(self) -> None:
        """Make every record appended so far durable."""
        self._check_usable()
        await self._wait_durable(self._size)

    def close(self) -> None:
        """Write and fsync what is buffered, then release the file and its lock. Idempotent.

        Safe to call while the helper is syncing (it is stopped: close() syncs itself).
        Raises :class:`Fatal` if that fails, or if the file was removed (what it held is
        written back to its path first, when it can be).
        """
        self._close()

    def _close(self, *, removed_here: bool = False) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            if self._error is None:
                self._sync_now(removed_here=removed_here)
        finally:
            self._fd = None
            os.close(fd)  # closing the descriptor releases the flock
            helper, self._helper = self._helper, None
            if helper is not None:
                self._stop_listening(helper)
                helper.close()
            self._wake()  # callers waiting for a commit: close() did it

    def discard_if_unused(self) -> bool:
        """Close the journal; if this open created it and nothing was appended after its
        header, remove the file too, and say so (True).

        A run that stops before recording anything (bad input found late, such as a refused
        selection, or an interruption during start-up) then leaves no journal binding the
        path to its project and endpoint: the same command against the right endpoint works.
        """
        if self._fd is None or self._created_end is None or self._size != self._created_end:
            self.close()
            return False
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # while this process still holds the lock
        self._close(removed_here=True)
        _fsync_dir(self._path.parent)
        return True

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self._path)!r}, project={self._header.project_id!r})"
