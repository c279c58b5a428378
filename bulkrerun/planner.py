"""The plan: a manifest turned into API requests, one :class:`~bulkrerun.chunk.Chunk` each.

Pure and streaming. :func:`plan` yields chunks one at a time, in manifest order, and never
holds the plan: a window of a million chunks costs O(1) memory, an instance file is read line
by line. What it does remember is bounded by what resume and de-duplication need (the ids of
instance units seen, and the chunk ids of window entries that could repeat one another).

* Window entries (mode B) are cut at ``begin + k*chunk``; each request carries its chunk's
  start as ``begin_time`` and its end minus 1 ms as ``end_time`` (the last chunk ends at the
  window's end minus 1 ms), so that no instance falls into two requests whether the service
  reads ``end_time`` as inclusive or not. The chunk is the unit of resume.
* Instance entries (mode A) and select entries are cut into batches of ``batch`` instances;
  each instance is a unit of resume, and ``skip`` removes done units *before* batching, so a
  resumed run re-forms full batches of what is left.
* Ids come from what the service sees (job name, workspace, canonical body): see
  :mod:`bulkrerun.chunk`.

Speed: ``plan --json`` must stream hundreds of thousands of requests per second. Each window
entry pre-renders its body as a ``%``-template with the two times left open (canonical JSON
sorts keys, and ``begin_time``, ``concurrent``, ``end_time`` come first, so the template is
exact; a test checks it against :func:`~bulkrerun.chunk.canonical_json`). Building a
:class:`Chunk` costs more than the rest of the work together, so :func:`write_json_lines`
recognises a fresh :class:`Plan` and renders window lines straight from the templates.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from binascii import hexlify
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeGuard
from urllib.parse import quote

from bulkrerun.chunk import ID_HEX, Chunk, Kind, canonical_json
from bulkrerun.manifest import (
    Entry,
    EntryBase,
    InstancesEntry,
    Manifest,
    SelectEntry,
    WindowEntry,
    iter_located_instances,
)
from bulkrerun.selection import FoundInstances, SelectedInstance

__all__ = [
    "CONTENT_TYPE",
    "Duplicate",
    "EntrySummary",
    "Plan",
    "SelectedInstance",
    "first_places",
    "plan",
    "request_headers",
    "request_path",
    "summarize",
    "window_times",
    "write_json_lines",
]

CONTENT_TYPE = "application/json;charset=UTF-8"
# Lines per write in `write_json_lines`: large enough that writes cost nothing, small enough
# (about 1 MB) that the output starts at once and memory stays flat.
_BLOCK_LINES = 2048

Skip = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A unit the manifest names again, left out (the first is sent): where the repeat is
    and what it is, for a warning that lets the user find it.

    ``where`` is the entry and the place in it: ``instances[1].items[2]``,
    ``instances[1].file: failed.csv:3`` (the file as the manifest names it, and the line),
    ``window[1]`` or ``select[0]``. An instance has ``job_id``, ``plan_time`` and
    ``submit_time``; a window chunk ``begin_time`` and ``end_time`` (as sent).
    """

    unit: str
    label: str
    where: str
    job_name: str
    job_id: int | None = None
    plan_time: int | None = None
    submit_time: int | None = None
    begin_time: int | None = None
    end_time: int | None = None


OnDuplicate = Callable[[Duplicate], None]


# ---------------------------------------------------------------------------------------------
# The request around the body
# ---------------------------------------------------------------------------------------------


def request_path(project_id: str | None, job_name: str) -> str:
    """The path of the rerun call; the job name is percent-encoded as one path segment.

    Without a project ID (None, or empty as an unset variable often is) the path holds a
    literal ``{project_id}``: ``plan`` works without settings.
    """
    project = quote(project_id, safe="") if project_id else "{project_id}"
    return f"/v2/{project}/factory/jobs/{quote(job_name, safe='')}/instances/retry"


def request_headers(workspace: str, project_id: str | None) -> dict[str, str]:
    """Headers of the rerun call without the auth headers (which the transport adds)."""
    headers = {"Content-Type": CONTENT_TYPE, "workspace": workspace}
    if project_id:
        headers["X-Project-Id"] = project_id
    return headers


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _line_middle(job_name: str, workspace: str, project_id: str | None, prefix: str = "") -> bytes:
    """What a ``plan --json`` line holds between the id and the body. ``prefix`` is the
    endpoint's own path (``/gw`` of ``https://host/gw``), which every request's path follows."""
    path = _json(prefix + request_path(project_id, job_name))
    headers = _json(request_headers(workspace, project_id))
    return b'","method":"POST","path":' + path + b',"headers":' + headers + b',"body":'


# ---------------------------------------------------------------------------------------------
# Bodies and ids, pre-rendered
# ---------------------------------------------------------------------------------------------


def _escape(data: bytes) -> bytes:
    """Literal bytes inside a ``%``-template (a job name may hold a ``%``)."""
    return data.replace(b"%", b"%%")


def _common_body(entry: EntryBase) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ignore_obs_monitor": entry.ignore_obs_monitor,
        "retry_location": entry.retry_location,
        "retry_task_version": entry.retry_task_version,
    }
    if entry.node_name is not None:
        body["node_name"] = entry.node_name
    return body


def window_body(entry: WindowEntry, begin_time: int, end_time: int) -> dict[str, Any]:
    """The body of one window request as a plain dict: the reference the templates must match."""
    body = _common_body(entry)
    body.update(begin_time=begin_time, end_time=end_time, concurrent=entry.concurrent)
    if entry.jobs:
        body["jobs"] = [{"job_name": name, "workspace_id": ws} for name, ws in entry.jobs]
    return body


def _id_affixes(job_name: str, workspace: str) -> tuple[bytes, bytes]:
    """The bytes hashed for a chunk id around its body (see :func:`bulkrerun.chunk.chunk_id`)."""
    suffix = (
        b',"job_name":' + canonical_json(job_name) + b',"workspace":' + canonical_json(workspace)
    )
    return b'{"body":', suffix + b"}"


@dataclass(frozen=True, slots=True)
class _WindowTemplate:
    """One window entry, pre-rendered: ``body_fmt % (begin_time, end_time)`` is the canonical
    body and ``id_fmt % (begin_time, end_time)`` the bytes whose hash is the chunk id."""

    entry: WindowEntry
    body_fmt: bytes
    id_fmt: bytes

    @classmethod
    def of(cls, entry: WindowEntry) -> _WindowTemplate:
        # Canonical JSON sorts keys: begin_time, concurrent and end_time come before every
        # other key of a mode B body, so the body is this head and the rest rendered once.
        rest = window_body(entry, 0, 0)
        for key in ("begin_time", "end_time", "concurrent"):
            del rest[key]
        head = b'{"begin_time":%d,"concurrent":' + str(entry.concurrent).encode()
        body_fmt = head + b',"end_time":%d,' + _escape(canonical_json(rest)[1:])
        prefix, suffix = _id_affixes(entry.job_name, entry.workspace)
        return cls(entry, body_fmt, prefix + body_fmt + _escape(suffix))

    def chunk(self, begin_time: int, end_time: int) -> Chunk:
        times = (begin_time, end_time)
        cid = hashlib.sha256(self.id_fmt % times).hexdigest()[:ID_HEX]
        entry = self.entry
        body = self.body_fmt % times
        return Chunk(cid, "window", entry.label, entry.job_name, entry.workspace, body, (cid,))

    def count(self) -> int:
        """Requests of this window, by arithmetic: ceil((end - begin) / chunk)."""
        entry = self.entry
        return -(-(entry.end_ms - entry.begin_ms) // entry.chunk_ms)

    def nth(self, k: int) -> Chunk:
        """The ``k``-th chunk (from 0), without cutting the ones before it."""
        first = self.entry.begin_ms + k * self.entry.chunk_ms
        return self.chunk(*next(_cuts(self.entry, first, first + 1)))


# The head every window body starts with (see _WindowTemplate.of): its two times, read back
# without parsing the body.
_WINDOW_HEAD = re.compile(
    rb'\{"begin_time":(-?[0-9]+),"concurrent":[0-9]+,"end_time":(-?[0-9]+)[,}]'
)


def window_times(body: bytes) -> tuple[int, int]:
    """``(begin_time, end_time)`` of a window chunk's canonical body.

    Read from the fixed head the templates render, a regular expression instead of a
    ``json.loads`` of the whole body: a resume may ask it of every new chunk of a big plan.
    """
    m = _WINDOW_HEAD.match(body)
    if m is not None:
        return int(m[1]), int(m[2])
    parsed = json.loads(body)
    return int(parsed["begin_time"]), int(parsed["end_time"])


@dataclass(frozen=True, slots=True)
class _BatchTemplate:
    """Mode A requests of one job under one entry: body head, unit ids, chunk ids."""

    kind: Kind
    label: str
    job_name: str
    workspace: str
    head: bytes  # the body up to and including '"task_retrys":['
    unit_fmt: bytes  # % (job_id, plan_time, submit_time) -> bytes hashed for the unit id
    id_prefix: bytes
    id_suffix: bytes

    @classmethod
    def of(cls, kind: Kind, entry: EntryBase, job_name: str) -> _BatchTemplate:
        # task_retrys is the last key of a mode A body in canonical order.
        common = canonical_json(_common_body(entry))
        prefix, suffix = _id_affixes(job_name, entry.workspace)
        return cls(
            kind=kind,
            label=entry.label,
            job_name=job_name,
            workspace=entry.workspace,
            head=common[:-1] + b',"task_retrys":[',
            # Equal to canonical_json([job_name, job_id, plan_time, submit_time]), the
            # input of chunk.instance_unit_id.
            unit_fmt=b"[" + _escape(canonical_json(job_name)) + b",%d,%d,%d]",
            id_prefix=prefix,
            id_suffix=suffix,
        )

    def chunk(self, units: list[str], items: list[bytes]) -> Chunk:
        body = self.head + b",".join(items) + b"]}"
        cid = hashlib.sha256(self.id_prefix + body + self.id_suffix).hexdigest()[:ID_HEX]
        return Chunk(cid, self.kind, self.label, self.job_name, self.workspace, body, tuple(units))


_ITEM = b'{"job_id":%d,"plan_time":%d,"submit_time":%d}'


# ---------------------------------------------------------------------------------------------
# Streaming the chunks
# ---------------------------------------------------------------------------------------------


@dataclass
class _Seen:
    """What de-duplication remembers across entries.

    Instance units: every unit id seen (memory proportional to the instances, as allowed).
    Window chunks: chunks of one window entry never repeat, and two entries can only cut
    identical chunks if their job, workspace and body without the times are equal, i.e. if
    their ``id_fmt`` templates are equal. Only such groups get a set, so a plan made of one
    huge window remembers nothing.
    """

    on_duplicate: OnDuplicate | None
    units: set[str] = field(default_factory=set)
    windows: dict[bytes, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, templates: Iterable[_WindowTemplate], on_duplicate: OnDuplicate | None) -> _Seen:
        seen = cls(on_duplicate)
        counts: dict[bytes, int] = {}
        for template in templates:
            counts[template.id_fmt] = counts.get(template.id_fmt, 0) + 1
        seen.windows = {key: set() for key, count in counts.items() if count > 1}
        return seen

    def duplicate(self, duplicate: Duplicate) -> None:
        if self.on_duplicate is not None:
            self.on_duplicate(duplicate)

    def window_duplicate(self, cid: str, entry: WindowEntry, times: tuple[int, int]) -> None:
        if self.on_duplicate is not None:
            begin_time, end_time = times
            self.on_duplicate(
                Duplicate(
                    cid,
                    entry.label,
                    entry.label,
                    entry.job_name,
                    begin_time=begin_time,
                    end_time=end_time,
                )
            )

    def countable(self, template: _WindowTemplate | None) -> TypeGuard[_WindowTemplate]:
        """Whether an entry's units can be counted by arithmetic: it is a window (it has a
        template) that no other window can repeat, so none of its chunks is a duplicate."""
        return template is not None and template.id_fmt not in self.windows


def _whole_end(entry: WindowEntry) -> int:
    """Where the window's whole chunks end (the last chunk may be shorter)."""
    return entry.begin_ms + (entry.end_ms - entry.begin_ms) // entry.chunk_ms * entry.chunk_ms


def _cuts(entry: WindowEntry, first: int, stop: int) -> Iterator[tuple[int, int]]:
    """(begin_time, end_time) of the chunks of a window that begin in ``[first, stop)``.

    Whole chunks come from two ranges zipped, with no per-chunk arithmetic in Python; the
    last chunk, when the window is not a whole number of chunks, ends at the window's end
    minus 1 ms.
    """
    step = entry.chunk_ms
    whole_end = _whole_end(entry)
    wholes = max(0, -(-(min(stop, whole_end) - first) // step))
    last = first + wholes * step
    yield from zip(range(first, last, step), range(first + step - 1, last, step), strict=True)
    if first <= whole_end < min(stop, entry.end_ms):
        yield whole_end, entry.end_ms - 1


def _window_chunks(template: _WindowTemplate, skip: Skip | None, seen: _Seen) -> Iterator[Chunk]:
    entry = template.entry
    label, job_name, workspace = entry.label, entry.job_name, entry.workspace
    body_fmt, id_fmt = template.body_fmt, template.id_fmt
    repeats = seen.windows.get(id_fmt)
    sha256 = hashlib.sha256
    for times in _cuts(entry, entry.begin_ms, entry.end_ms):
        cid = sha256(id_fmt % times).hexdigest()[:ID_HEX]
        if repeats is not None:
            if cid in repeats:
                seen.window_duplicate(cid, entry, times)
                continue
            repeats.add(cid)
        if skip is not None and skip(cid):
            continue
        yield Chunk(cid, "window", label, job_name, workspace, body_fmt % times, (cid,))


def _batch_chunks(
    template: _BatchTemplate,
    instances: Iterable[tuple[int, tuple[int, int, int]]],
    batch: int,
    skip: Skip | None,
    seen: _Seen,
    place: Callable[[int], str],
) -> Iterator[Chunk]:
    """Batches of ``batch`` instances, leaving out duplicates and skipped units first.
    ``instances``: (position, numbers), ``place(position)`` says where a duplicate is."""
    unit_fmt, units_seen = template.unit_fmt, seen.units
    sha256 = hashlib.sha256
    units: list[str] = []
    items: list[bytes] = []
    for position, numbers in instances:
        unit = sha256(unit_fmt % numbers).hexdigest()[:ID_HEX]
        # Duplicates are found whatever the journal holds, so a resumed run warns about
        # the same ones as the first run did.
        if unit in units_seen:
            seen.duplicate(
                Duplicate(unit, template.label, place(position), template.job_name, *numbers)
            )
            continue
        units_seen.add(unit)
        if skip is not None and skip(unit):
            continue
        units.append(unit)
        items.append(_ITEM % numbers)
        if len(units) == batch:
            yield template.chunk(units, items)
            units, items = [], []
    if units:
        yield template.chunk(units, items)


def _instances_chunks(entry: InstancesEntry, skip: Skip | None, seen: _Seen) -> Iterator[Chunk]:
    template = _BatchTemplate.of("instances", entry, entry.job_name)
    located = (
        (at, (i.job_id, i.plan_time, i.submit_time)) for at, i in iter_located_instances(entry)
    )
    return _batch_chunks(template, located, entry.batch, skip, seen, _place(entry))


def _place(entry: InstancesEntry) -> Callable[[int], str]:
    """Where an instance of ``entry`` is, by its position: ``instances[1].items[2]``, or
    ``instances[1].file: failed.csv:3`` (the file as the manifest names it, and the line)."""
    if entry.file is None:
        return f"{entry.label}.items[{{}}]".format
    shown = entry.file_name or entry.file.name
    return f"{entry.label}.file: {shown}:{{}}".format


def _select_chunks(
    entry: SelectEntry, found: Sequence[SelectedInstance], skip: Skip | None, seen: _Seen
) -> Iterator[Chunk]:
    # One request names one job: by job, jobs in order of first appearance, read from the
    # selection's columns (a list of them per job was 200 bytes an instance).
    columns = found if isinstance(found, FoundInstances) else FoundInstances(found)
    place = _constant(entry.label)  # found by the instance list: no line to point at
    for job_name, numbers in columns.numbers_by_job():
        template = _BatchTemplate.of("select", entry, job_name)
        at = zip(itertools.repeat(0), numbers)
        yield from _batch_chunks(template, at, entry.batch, skip, seen, place)


def _constant(text: str) -> Callable[[int], str]:
    return lambda _position: text


def _templates(manifest: Manifest) -> dict[str, _WindowTemplate]:
    return {
        entry.label: _WindowTemplate.of(entry)
        for entry in manifest.entries
        if isinstance(entry, WindowEntry)
    }


def _entry_chunks(
    entry: Entry,
    templates: Mapping[str, _WindowTemplate],
    skip: Skip | None,
    seen: _Seen,
    selections: Mapping[str, Sequence[SelectedInstance]],
) -> Iterator[Chunk]:
    if isinstance(entry, WindowEntry):
        return _window_chunks(templates[entry.label], skip, seen)
    if isinstance(entry, InstancesEntry):
        return _instances_chunks(entry, skip, seen)
    found = selections.get(entry.label)
    if found is None:
        return iter(())
    return _select_chunks(entry, found, skip, seen)


class Plan(Iterator[Chunk]):
    """The chunks of a manifest, produced lazily as it is iterated (see :func:`plan`).

    An iterator like any other, with one extra: :meth:`write_json_lines` renders a fresh
    plan as ``plan --json`` lines without building the window chunks at all.
    """

    def __init__(
        self,
        manifest: Manifest,
        skip: Skip | None,
        selections: Mapping[str, Sequence[SelectedInstance]],
        on_duplicate: OnDuplicate | None,
    ) -> None:
        self._manifest = manifest
        self._skip = skip
        self._selections = selections
        self._templates = _templates(manifest)
        self._seen = _Seen.of(self._templates.values(), on_duplicate)
        self._chunks: Iterator[Chunk] | None = None

    @property
    def started(self) -> bool:
        """True once a chunk was asked for: the fast JSON path is then no longer possible."""
        return self._chunks is not None

    def __next__(self) -> Chunk:
        if self._chunks is None:
            self._chunks = self._all_chunks()
        return next(self._chunks)

    def _all_chunks(self) -> Iterator[Chunk]:
        for entry in self._manifest.entries:
            yield from self._entry_chunks(entry)

    def _entry_chunks(self, entry: Entry) -> Iterator[Chunk]:
        return _entry_chunks(entry, self._templates, self._skip, self._seen, self._selections)

    def count_units(self) -> int:
        """The units of this (fresh) plan, as iterating it would give them, counted.

        A window that no other window can repeat is counted by arithmetic, as
        :func:`summarize` does: not one chunk is cut or hashed, so a run of a million-request
        window starts sending at once instead of after a pass over the whole plan. Every
        other entry is streamed, and its duplicates are reported as iterating reports them.
        With ``skip`` every entry is streamed: what it leaves out is known only by asking.
        """
        if self.started:
            raise RuntimeError("the plan was already iterated; make a new one")
        self._chunks = iter(())
        total = 0
        for entry in self._manifest.entries:
            template = self._templates.get(entry.label)
            if self._skip is None and self._seen.countable(template):
                total += template.count()
            else:
                total += sum(len(chunk.units) for chunk in self._entry_chunks(entry))
        return total

    def write_json_lines(self, project_id: str | None, out: BinaryIO, prefix: str = "") -> int:
        """The ``plan --json`` stream of this (fresh) plan; see :func:`write_json_lines`."""
        if self.started:
            raise RuntimeError("the plan was already iterated; make a new one")
        self._chunks = iter(())
        writer = _LineWriter(out, project_id, prefix)
        for entry in self._manifest.entries:
            if isinstance(entry, WindowEntry):
                writer.flush()
                template = self._templates[entry.label]
                writer.count += _write_window_lines(
                    template, project_id, self._skip, self._seen, out, prefix
                )
            else:
                for chunk in self._entry_chunks(entry):
                    writer.add(chunk)
        writer.flush()
        out.flush()
        return writer.count


def _write_window_lines(
    template: _WindowTemplate,
    project_id: str | None,
    skip: Skip | None,
    seen: _Seen,
    out: BinaryIO,
    prefix: str = "",
) -> int:
    """Window chunks as ``plan --json`` lines, straight from the templates.

    The same cuts and ids as :func:`_window_chunks`, but the whole line (id, path, headers,
    body) is one ``%``-template too and no :class:`Chunk` is built: this is the hot path of
    ``plan --json``. A test checks that both give the same bytes.
    """
    entry = template.entry
    middle = _line_middle(entry.job_name, entry.workspace, project_id, prefix)
    line_fmt = b'{"id":"%b' + _escape(middle) + template.body_fmt + b"}\n"
    id_fmt = template.id_fmt
    repeats = seen.windows.get(id_fmt)
    sha256, half, join = hashlib.sha256, ID_HEX // 2, b"".join
    count = 0
    if repeats is None and skip is None:
        # Nothing to decide per chunk: render blocks of lines in one comprehension each.
        block = entry.chunk_ms * _BLOCK_LINES
        for first in range(entry.begin_ms, entry.end_ms, block):
            block_lines = [
                line_fmt % (hexlify(sha256(id_fmt % (b, e)).digest()[:half]), b, e)
                for b, e in _cuts(entry, first, first + block)
            ]
            out.write(join(block_lines))
            count += len(block_lines)
        return count
    lines: list[bytes] = []
    for times in _cuts(entry, entry.begin_ms, entry.end_ms):
        digest = hexlify(sha256(id_fmt % times).digest()[:half])
        cid = digest.decode()
        if repeats is not None:
            if cid in repeats:
                seen.window_duplicate(cid, entry, times)
                continue
            repeats.add(cid)
        if skip is not None and skip(cid):
            continue
        lines.append(line_fmt % (digest, *times))
        if len(lines) >= _BLOCK_LINES:
            out.write(join(lines))
            count += len(lines)
            lines.clear()
    out.write(join(lines))
    return count + len(lines)


class _LineWriter:
    """``plan --json`` lines of any chunks, written in blocks."""

    def __init__(self, out: BinaryIO, project_id: str | None, prefix: str = "") -> None:
        self.out = out
        self.project_id = project_id
        self.prefix = prefix
        self.count = 0
        self.lines: list[bytes] = []
        self.middles: dict[tuple[str, str], bytes] = {}

    def add(self, chunk: Chunk) -> None:
        key = (chunk.job_name, chunk.workspace)
        middle = self.middles.get(key)
        if middle is None:
            middle = self.middles[key] = _line_middle(*key, self.project_id, self.prefix)
        self.lines.append(b'{"id":"' + chunk.id.encode() + middle + chunk.body + b"}\n")
        if len(self.lines) >= _BLOCK_LINES:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.out.write(b"".join(self.lines))
            self.count += len(self.lines)
            self.lines.clear()


def plan(
    manifest: Manifest,
    *,
    skip: Skip | None = None,
    selections: Mapping[str, Sequence[SelectedInstance]] | None = None,
    on_duplicate: OnDuplicate | None = None,
) -> Plan:
    """One chunk per API request, in manifest order, windows oldest first.

    ``skip(unit_id)`` -> True leaves a unit out before batching (resume). ``selections`` maps
    a select entry's label to the instances found for it (a :class:`FoundInstances` is read
    from its columns; another sequence is put in columns first); a select entry without one
    is left out (the caller decides whether that is an error). A unit that appears again is
    sent once and reported with ``on_duplicate(Duplicate(...))``, naming the repeat.
    """
    return Plan(manifest, skip, selections or {}, on_duplicate)


def first_places(
    manifest: Manifest,
    duplicates: Iterable[Duplicate],
    selections: Mapping[str, Sequence[SelectedInstance]] | None = None,
) -> dict[str, str]:
    """Where the unit of each of ``duplicates`` first occurs in ``manifest`` (unit id ->
    place, as :attr:`Duplicate.where` names a repeat), for a warning that names both.

    The planner remembers that it saw a unit, not where: a place for every instance of a
    plan would cost memory for all of them, for the few a warning shows. This finds those
    few in one more pass over the entries, which ends once it has them all (the first
    occurrence comes before its repeat, so usually early).
    """
    wanted = {d.unit for d in duplicates}
    times = {
        d.unit: (d.begin_time, d.end_time)
        for d in duplicates
        if d.begin_time is not None and d.end_time is not None
    }
    places: dict[str, str] = {}
    chosen = selections or {}
    sha256 = hashlib.sha256

    def found(unit_bytes: bytes, place: str) -> bool:
        """Note ``place`` if the unit whose id hashes ``unit_bytes`` is wanted and not
        placed yet; True once all are."""
        unit = sha256(unit_bytes).hexdigest()[:ID_HEX]
        if unit in wanted and unit not in places:
            places[unit] = place
        return len(places) == len(wanted)

    for entry in manifest.entries:
        if len(places) == len(wanted):
            break
        if isinstance(entry, WindowEntry):
            id_fmt = _WindowTemplate.of(entry).id_fmt
            for begin, end in times.values():
                if _cuts_at(entry, begin, end):
                    found(id_fmt % (begin, end), entry.label)
        elif isinstance(entry, InstancesEntry):
            unit_fmt = _BatchTemplate.of("instances", entry, entry.job_name).unit_fmt
            place = _place(entry)
            with contextlib.closing(iter_located_instances(entry)) as located:
                for at, i in located:
                    if found(unit_fmt % (i.job_id, i.plan_time, i.submit_time), place(at)):
                        break
        else:
            formats: dict[str, bytes] = {}
            for s in chosen.get(entry.label, ()):
                fmt = formats.get(s.job_name)
                if fmt is None:
                    fmt = formats[s.job_name] = _BatchTemplate.of(
                        "select", entry, s.job_name
                    ).unit_fmt
                numbers = (s.job_id, s.plan_time, s.submit_time)
                if found(fmt % numbers, f"{entry.label} (found by the instance list)"):
                    break
    return places


def _cuts_at(entry: WindowEntry, begin: int, end: int) -> bool:
    """Whether one of the chunks ``entry`` cuts spans ``begin`` .. ``end`` (see _cuts)."""
    return (
        entry.begin_ms <= begin < entry.end_ms
        and (begin - entry.begin_ms) % entry.chunk_ms == 0
        and end == min(begin + entry.chunk_ms, entry.end_ms) - 1
    )


def write_json_lines(
    chunks: Iterable[Chunk], project_id: str | None, out: BinaryIO, prefix: str = ""
) -> int:
    """Write the ``plan --json`` stream: one ``{"id","method","path","headers","body"}`` line
    per request, the body spliced in as the canonical bytes. Returns the number of lines.
    ``prefix``, the endpoint's own path, goes before each path, as it does when it is sent.

    Given a fresh :class:`Plan`, window lines are rendered from templates without building
    chunks (several times faster); any other iterable of chunks gives the same bytes.
    """
    if isinstance(chunks, Plan) and not chunks.started:
        return chunks.write_json_lines(project_id, out, prefix)
    writer = _LineWriter(out, project_id, prefix)
    for chunk in chunks:
        writer.add(chunk)
    writer.flush()
    out.flush()
    return writer.count


# ---------------------------------------------------------------------------------------------
# Summaries for `plan`
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySummary:
    """What one entry will send: counts and the first and last request.

    ``duplicates`` counts units left out because an earlier entry (or line) has them.
    ``needs_selection`` is True for a select entry whose instances are not known yet (they
    are looked up when the run starts); its counts are then 0.
    """

    label: str
    kind: Kind
    job_name: str
    begin_ms: int | None
    end_ms: int | None
    requests: int
    units: int
    first: Chunk | None
    last: Chunk | None
    duplicates: int = 0
    needs_selection: bool = False
    timezone: str | None = None  # the entry's, for showing its times as they were written


def summarize(
    manifest: Manifest,
    *,
    selections: Mapping[str, Sequence[SelectedInstance]] | None = None,
    on_duplicate: OnDuplicate | None = None,
) -> list[EntrySummary]:
    """Per entry: requests, units, first and last chunk, as :func:`plan` would send them;
    each unit left out as a duplicate is also told to ``on_duplicate``, as :func:`plan` does.

    Windows are counted by arithmetic unless another window could repeat their chunks;
    instance and select entries take one streaming pass (that is where duplicates show).
    """
    chosen = selections or {}
    duplicates: dict[str, int] = {}

    def count_duplicate(duplicate: Duplicate) -> None:
        duplicates[duplicate.label] = duplicates.get(duplicate.label, 0) + 1
        if on_duplicate is not None:
            on_duplicate(duplicate)

    templates = _templates(manifest)
    seen = _Seen.of(templates.values(), count_duplicate)
    summaries = []
    for entry in manifest.entries:
        first = last = None
        requests = units = 0
        template = templates.get(entry.label)
        if seen.countable(template):
            requests = units = template.count()
            first, last = template.nth(0), template.nth(requests - 1)
        else:
            for chunk in _entry_chunks(entry, templates, None, seen, chosen):
                first = first or chunk
                last = chunk
                requests += 1
                units += len(chunk.units)
        summaries.append(
            EntrySummary(
                label=entry.label,
                kind=_kind(entry),
                job_name=(
                    ",".join(entry.job_names) if isinstance(entry, SelectEntry) else entry.job_name
                ),
                begin_ms=None if isinstance(entry, InstancesEntry) else entry.begin_ms,
                end_ms=None if isinstance(entry, InstancesEntry) else entry.end_ms,
                requests=requests,
                units=units,
                first=first,
                last=last,
                duplicates=duplicates.get(entry.label, 0),
                needs_selection=isinstance(entry, SelectEntry) and entry.label not in chosen,
                timezone=None if isinstance(entry, InstancesEntry) else entry.timezone,
            )
        )
    return summaries


def _kind(entry: Entry) -> Kind:
    if isinstance(entry, WindowEntry):
        return "window"
    if isinstance(entry, InstancesEntry):
        return "instances"
    return "select"
