"""The manifest: which job instances to rerun, read and validated in full before anything is sent.

A manifest is TOML (or JSON with the same structure, chosen by the ``.json`` suffix) holding
``[defaults]`` and any number of ``[[window]]`` (mode B), ``[[instances]]`` (mode A) and
``[[select]]`` entries; see CONTRACT.md. :func:`load_manifest` turns it into a
:class:`Manifest` of frozen entries with the defaults merged in and every time converted to
epoch milliseconds, which is all the planner needs.

Validation is total. A rerun cannot be taken back, so a typo must never silently change what
is sent: unknown keys are errors, booleans must be booleans, and every problem of every entry
and of every instance file is collected before one :class:`~bulkrerun.errors.ManifestError`
is raised. Each problem is one sentence of the form::

    demo.toml: window[3].concurrent = 300: must be 1..128
    demo.toml: instances[1].file: failed.csv:17: plan_time = 173260158000: must be 13-digit ...

naming the manifest as the user wrote it, the entry, the field (and for instance files, the
file and line) and what is allowed.

How: pydantic models (strict, ``extra="forbid"``) check the *shape* of each part separately,
so that one broken entry does not hide the problems of the next. Every leaf value goes
through a small validator of ours that raises a sentence rather than pydantic's wording, and
pydantic's own structural errors (missing, unknown key, not a list) are translated in
:func:`_translate`, the one place that knows pydantic's error types. A second, semantic pass
then merges the defaults, resolves times in their time zone and checks what spans fields
(``end`` after ``begin``, ``items`` xor ``file``) and reads the instance files.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import errno
import hashlib
import json
import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from bulkrerun.errors import ManifestError
from bulkrerun.reference import INSTANCE_STATUSES, RETRY_LOCATIONS, RETRY_TASK_VERSIONS

__all__ = [
    "INSTANCE_FIELDS",
    "RETRY_LOCATIONS",
    "RETRY_TASK_VERSIONS",
    "STATUSES",
    "Entry",
    "EntryBase",
    "Instance",
    "InstancesEntry",
    "Manifest",
    "SelectEntry",
    "WindowEntry",
    "iter_instances",
    "iter_located_instances",
    "load_manifest",
    "parse_span",
]

STATUSES = INSTANCE_STATUSES
INSTANCE_FIELDS = ("job_id", "plan_time", "submit_time")

CONCURRENT_RANGE = (1, 128)
BATCH_RANGE = (1, 1000)
DEFAULT_BATCH = 100
DEFAULT_STATUSES = ("fail",)
# The instance-list API searches at most one month of plan times.
MAX_SELECT_SPAN_MS = 31 * 86_400_000
# The API takes 13-digit epoch milliseconds: 2001-09-09 to 2286-11-20.
MS_LOW, MS_HIGH = 10**12, 10**13
# A broken million-line file would otherwise bury the other problems.
MAX_PROBLEMS_PER_FILE = 20
# The service's job_id is a "long": a signed 64-bit integer.
JOB_ID_MAX = 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_SPAN = re.compile(r"([0-9]+)([smhd])")
_SPAN_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SPAN_HINT = 'a span like "30s", "15m", "1h" or "1d" (a positive integer and one unit: s, m, h, d)'
_TIME_HINT = (
    "an ISO 8601 time like 2024-11-26T08:00:00+08:00, or 13-digit epoch milliseconds "
    "like 1732579200000"
)
_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ---------------------------------------------------------------------------------------------
# What the planner gets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instance:
    """One job instance to rerun in mode A, as the instance-list API reports it."""

    job_id: int
    plan_time: int
    submit_time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryBase:
    """What every entry carries, with ``[defaults]`` already merged in."""

    label: str
    workspace: str
    retry_location: str
    retry_task_version: str
    ignore_obs_monitor: bool = True
    node_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowEntry(EntryBase):
    """Mode B: ``job_name`` (and ``jobs``) over ``[begin_ms, end_ms)`` cut into ``chunk_ms``."""

    job_name: str
    begin_ms: int
    end_ms: int
    chunk_ms: int
    concurrent: int = 1
    jobs: tuple[tuple[str, str], ...] = ()
    timezone: str | None = None  # the zone its times were read in, to show them in again

    def covers(self) -> tuple[tuple[str, str], ...]:
        """Every (job name, workspace) whose instances the window reruns (see
        :func:`covered_jobs`)."""
        return covered_jobs(self.job_name, self.workspace, self.jobs)


def covered_jobs(
    job_name: str, workspace: str, jobs: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """The (job name, workspace) pairs a window request reruns: its own job, then those of
    its ``jobs``, each once."""
    if not jobs:  # most windows; asked of every done window request of a big journal
        return ((job_name, workspace),)
    return tuple(dict.fromkeys(((job_name, workspace), *jobs)))


@dataclass(frozen=True, slots=True, kw_only=True)
class InstancesEntry(EntryBase):
    """Mode A: given instances of ``job_name``, either inline (``items``) or in ``file``.

    ``file`` is resolved (against the manifest's folder, then made absolute, so a later
    change of the working directory does not matter); ``file_name`` is the file as the
    manifest spells it, for messages.
    """

    job_name: str
    batch: int = DEFAULT_BATCH
    items: tuple[Instance, ...] = ()
    file: Path | None = None
    file_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectEntry(EntryBase):
    """Instances of ``job_names`` with one of ``statuses`` and a plan time in
    ``[begin_ms, end_ms)``, found through the instance-list API and rerun in mode A."""

    job_names: tuple[str, ...]
    begin_ms: int
    end_ms: int
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    batch: int = DEFAULT_BATCH
    timezone: str | None = None  # the zone its times were read in, to show them in again


Entry = WindowEntry | InstancesEntry | SelectEntry


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest.

    ``text`` and ``sha256`` are the raw file (the journal keeps a copy); ``files`` maps each
    instance file read (resolved path) to the SHA-256 of its bytes. ``warnings`` are things
    that are allowed but probably not meant (overlapping windows of one job).
    """

    path: Path
    text: str
    sha256: str
    files: dict[str, str]
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = ()


def parse_span(text: str) -> int:
    """``"15m"`` -> 900000. Spans are fixed durations (``1d`` is 24 h). Raises ValueError."""
    match = _SPAN.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"must be {_SPAN_HINT}")
    return int(match.group(1)) * _SPAN_MS[match.group(2)]


# ---------------------------------------------------------------------------------------------
# Leaf validators: each turns one value into what we keep, or raises one sentence
# ---------------------------------------------------------------------------------------------


def _problem(message: str) -> PydanticCustomError:
    # The sentence goes through the context so that braces in it are never taken as fields.
    return PydanticCustomError("manifest", "{sentence}", {"sentence": message})


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _problem("must be a string")
    if not value.strip():
        raise _problem("must not be empty")
    if value != value.strip():
        raise _problem("must not start or end with spaces")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise _problem("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, possible in JSON ("\ud800")
        raise _problem("must be valid Unicode text") from None
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _problem("must be true or false")
    return value


def _one_of(allowed: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed or not isinstance(value, str):
            raise _problem("must be one of " + " | ".join(allowed))
        return value

    return check


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem(f"must be an integer {low}..{high}")
        if not low <= value <= high:
            raise _problem(f"must be {low}..{high}")
        return value

    return check


def _job_id_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return "must be a positive integer"
    if value > JOB_ID_MAX:
        return f"must be at most {JOB_ID_MAX} (2**63 - 1: the service's job_id is a 64-bit long)"
    return None


def _epoch_ms_problem(value: Any) -> str | None:
    """Why ``value`` is not 13-digit epoch milliseconds, with the likely fix; None if it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be 13-digit epoch milliseconds (an integer)"
    if MS_LOW <= value < MS_HIGH:
        return None
    if 10**9 <= value < 10**10:
        return f"looks like epoch seconds; write milliseconds: {value * 1000}"
    if 10**15 <= value < 10**16:
        return f"looks like epoch microseconds; write milliseconds: {value // 1000}"
    return "must be 13-digit epoch milliseconds"


def _job_id(value: Any) -> int:
    problem = _job_id_problem(value)
    if problem:
        raise _problem(problem)
    return int(value)


def _epoch_ms(value: Any) -> int:
    problem = _epoch_ms_problem(value)
    if problem:
        raise _problem(problem)
    return int(value)


def _aware_ms(moment: datetime) -> int:
    """Epoch ms of an aware datetime, exactly (no float), refusing what the API cannot take."""
    delta = moment - _EPOCH
    if delta % _ONE_MS:
        raise _problem("has a fraction of a millisecond; must be whole milliseconds")
    ms = delta // _ONE_MS
    if not MS_LOW <= ms < MS_HIGH:
        raise _problem("must lie between 2001-09-09 and 2286-11-20 (13-digit epoch milliseconds)")
    return ms


def _time(value: Any) -> int | datetime:
    """A time as written: epoch ms, or ISO 8601 (a string or a TOML date-time or date).

    Times with an offset become epoch ms at once; naive ones come back as naive datetimes,
    to be read in the entry's time zone by the semantic pass.
    """
    if isinstance(value, bool):
        raise _problem(f"must be {_TIME_HINT}")
    if isinstance(value, int):
        return _epoch_ms(value)
    if isinstance(value, str):
        if value.strip().isdigit():
            raise _problem("is a string of digits; write epoch milliseconds as a number, unquoted")
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _problem(f"is not a time; must be {_TIME_HINT}") from None
    elif isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time_of_day())
    else:
        raise _problem(f"must be {_TIME_HINT}")
    if moment.tzinfo is not None and moment.utcoffset() is not None:
        return _aware_ms(moment)
    return moment


def _timezone(value: Any) -> str:
    name = _text(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _problem(
            'unknown time zone; must be an IANA name like "Asia/Shanghai" or "UTC"'
        ) from None
    return name


def _span(value: Any) -> int:
    if not isinstance(value, str):
        raise _problem(f"must be {_SPAN_HINT}")
    try:
        return parse_span(value)
    except ValueError as exc:
        raise _problem(str(exc)) from None


def _statuses(value: Any) -> tuple[str, ...]:
    # A lone string is read as a list of one: `status = "fail"` says what it means.
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise _problem("must be a list of statuses")
    if not values:
        raise _problem("must not be empty; allowed: " + " | ".join(STATUSES))
    check = _one_of(STATUSES)
    for item in values:
        try:
            check(item)
        except PydanticCustomError:
            raise _problem(
                f"{json.dumps(item, default=str)} is not a status; allowed: " + " | ".join(STATUSES)
            ) from None
    return tuple(dict.fromkeys(values))


Text = Annotated[str, PlainValidator(_text)]


def _job_name(value: Any) -> str:
    name = _text(value)
    if name in (".", ".."):
        # A path segment of "." or ".." is collapsed by URL normalisation on the way, so the
        # request would reach another path than the one signed.
        raise _problem('must not be "." or ".." (it would be read as a path step)')
    return name


JobName = Annotated[str, PlainValidator(_job_name)]
Boolean = Annotated[bool, PlainValidator(_boolean)]
RetryLocation = Annotated[str, PlainValidator(_one_of(RETRY_LOCATIONS))]
RetryTaskVersion = Annotated[str, PlainValidator(_one_of(RETRY_TASK_VERSIONS))]
Concurrent = Annotated[int, PlainValidator(_int_between(*CONCURRENT_RANGE))]
Batch = Annotated[int, PlainValidator(_int_between(*BATCH_RANGE))]
JobId = Annotated[int, PlainValidator(_job_id)]
EpochMs = Annotated[int, PlainValidator(_epoch_ms)]
Time = Annotated[int | datetime, PlainValidator(_time)]
TimeZone = Annotated[str, PlainValidator(_timezone)]
Span = Annotated[int, PlainValidator(_span)]
Statuses = Annotated[tuple[str, ...], PlainValidator(_statuses)]


# ---------------------------------------------------------------------------------------------
# The shape of the file (pydantic, strict, no unknown keys)
# ---------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _version(value: Any) -> int:
    if value != 1 or isinstance(value, bool) or not isinstance(value, int):
        raise _problem("must be 1, the only manifest version there is")
    return 1


class _Top(_Model):
    # Entries stay loose here: each is checked on its own, so that one bad entry does not
    # hide the problems of the others.
    version: Annotated[int, PlainValidator(_version)]
    defaults: Any = None
    window: list[Any] = []
    instances: list[Any] = []
    select: list[Any] = []


class _Common(_Model):
    workspace: Text | None = None
    retry_location: RetryLocation | None = None
    retry_task_version: RetryTaskVersion | None = None
    ignore_obs_monitor: Boolean | None = None
    node_name: Text | None = None


class _Defaults(_Common):
    timezone: TimeZone | None = None


class _JobRef(_Model):
    job_name: Text
    workspace_id: Text


class _Window(_Common):
    timezone: TimeZone | None = None
    job_name: JobName
    begin: Time
    end: Time
    chunk: Span
    concurrent: Concurrent = 1
    jobs: list[_JobRef] | None = None


class _Item(_Model):
    job_id: JobId
    plan_time: EpochMs
    submit_time: EpochMs


class _Instances(_Common):
    # An entry may override any key of [defaults] (the contract), timezone too; this entry's
    # times are epoch milliseconds, so its zone reads nothing.
    timezone: TimeZone | None = None
    job_name: JobName
    batch: Batch = DEFAULT_BATCH
    items: list[_Item] | None = None
    file: Text | None = None


class _Select(_Common):
    timezone: TimeZone | None = None
    job_name: JobName | None = None
    job_names: list[JobName] | None = None
    begin: Time
    end: Time
    status: Statuses = DEFAULT_STATUSES
    batch: Batch = DEFAULT_BATCH


# What to say when a required field is missing or has the wrong type: what is allowed.
_ALLOWED: dict[str, str] = {
    "version": "write version = 1 at the top of the manifest",
    "workspace": "the workspace ID, in [defaults] or in the entry",
    "retry_location": "one of " + " | ".join(RETRY_LOCATIONS) + ", in [defaults] or in the entry",
    "retry_task_version": "one of "
    + " | ".join(RETRY_TASK_VERSIONS)
    + ", in [defaults] or in the entry",
    "job_name": "the job's name",
    "workspace_id": "the workspace ID of that job",
    "begin": _TIME_HINT,
    "end": _TIME_HINT + " (exclusive)",
    "chunk": _SPAN_HINT,
    "job_id": "a positive integer up to 2**63 - 1",
    "plan_time": "13-digit epoch milliseconds",
    "submit_time": "13-digit epoch milliseconds",
    "jobs": 'a list of tables like { job_name = "...", workspace_id = "..." }',
    "items": "a list of tables like { job_id = 917567, plan_time = ..., submit_time = ... }",
    "job_names": 'a list of job names like ["ods_orders", "ods_payments"]',
    "defaults": "a table: [defaults]",
    "window": "an array of tables: write [[window]]",
    "instances": "an array of tables: write [[instances]]",
    "select": "an array of tables: write [[select]]",
}

# pydantic's structural error types, in our words. Leaf values never reach this table: their
# validators above already raise sentences.
_WRONG: dict[str, str] = {
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "tuple_type": "must be a list",
}


# ---------------------------------------------------------------------------------------------
# Turning pydantic's errors into sentences
# ---------------------------------------------------------------------------------------------


def _where(prefix: str, loc: Iterable[int | str]) -> str:
    """``("jobs", 1, "workspace_id")`` under ``window[0]`` -> ``window[0].jobs[1].workspace_id``."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else part
    return text


def _show(value: Any) -> str:
    """A value as the user would write it in TOML/JSON, shortened to stay on one line."""
    if isinstance(value, (datetime, date, time_of_day)):
        shown = value.isoformat()
    else:
        try:
            shown = json.dumps(value, ensure_ascii=False, default=str)
        except ValueError:
            shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel]:
    """The model whose keys are allowed at ``loc`` (which ends in the offending key)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = _nested_model(field.annotation) if field else None
        if nested is None:
            break
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _meant(key: str, allowed: Iterable[str]) -> str | None:
    """The allowed key that the unknown ``key`` is probably a misspelling of, if any."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return close[0] if close else None


def _translate(error: ErrorDetails, prefix: str, model: type[BaseModel]) -> str:
    """One pydantic error as ``<entry>.<field> = <value>: <what is wrong>; <what is allowed>``."""
    loc = error["loc"]
    where = _where(prefix, loc)
    kind = error["type"]
    field = next((part for part in reversed(loc) if isinstance(part, str)), prefix)
    if kind == "missing":
        return f"{where}: missing; required: {_ALLOWED.get(str(field), 'a value')}"
    if kind == "extra_forbidden":
        allowed = list(_model_at(model, loc).model_fields)
        meant = _meant(str(loc[-1]), allowed)
        hint = f" (did you mean {meant}?)" if meant else ""
        return f"{where}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    shown = _show(error.get("input"))
    if kind == "manifest":
        return f"{where} = {shown}: {error['msg']}"
    wrong = _WRONG.get(kind, error["msg"])
    allowed_text = _ALLOWED.get(str(field))
    return f"{where} = {shown}: {wrong}" + (f"; allowed: {allowed_text}" if allowed_text else "")


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, prefix: str, problems: list[str]) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_translate(error, prefix, model) for error in exc.errors())
        return None


# ---------------------------------------------------------------------------------------------
# Instance files: read line by line, hashed on the way
# ---------------------------------------------------------------------------------------------


def _decoded_lines(raw_lines: Iterable[bytes], digest: Any | None) -> Iterator[str]:
    """UTF-8 text lines of a binary stream, updating ``digest`` with the raw bytes.

    A line that is not UTF-8 comes out as a line holding only U+FFFD, which no parser
    accepts, so it is reported at its line number rather than aborting the read.
    """
    first = True
    for raw in raw_lines:
        if digest is not None:
            digest.update(raw)
        try:
            line = raw.decode("utf-8-sig" if first else "utf-8")
        except UnicodeDecodeError:
            line = "\ufffd\n"
        first = False
        yield line


_Row = Instance | list[str]  # an instance, or what is wrong with the line

# Python refuses to read integers of more than 4300 digits (sys.get_int_max_str_digits()).
_TOO_LONG = "holds a number too long to read (more than 4300 digits); no field takes one"
# Parsers recurse once per level of nesting: hundreds of brackets exhaust the stack.
_TOO_DEEP = "is nested too deeply to read (arrays or tables within each other, hundreds deep)"
# What parses may still be too deep to show in a message or check: nothing valid comes near
# this (a manifest nests five levels: itself, [[instances]], an entry, items, an item).
MAX_DEPTH = 32


def _too_deep(value: Any) -> list[int | str] | None:
    """Where ``value`` first holds an array or table nested more than MAX_DEPTH deep (the
    keys and indexes leading there); None when it does not. Without recursion, of course."""
    # Containers only, each with its depth and a link to its parent's entry: the path is
    # built only for the one found (a manifest of 200,000 inline items has as many tables,
    # and three times as many scalars, which are never queued).
    # Each: (container, depth, key, parent entry).
    todo: list[tuple[Any, int, int | str | None, Any]] = (
        [(value, 0, None, None)] if isinstance(value, dict | list) else []
    )
    while todo:
        entry = todo.pop()
        item, depth = entry[0], entry[1]
        if depth == MAX_DEPTH:
            loc: list[int | str] = []
            at: Any = entry
            while at[3] is not None:
                loc.append(at[2])
                at = at[3]
            return loc[::-1]
        children = item.items() if isinstance(item, dict) else enumerate(item)
        deeper = depth + 1
        todo.extend((c, deeper, k, entry) for k, c in children if isinstance(c, _CONTAINERS))
    return None


_CONTAINERS = (dict, list)  # a tuple: isinstance with it is faster than with dict | list


def _deep_problem(loc: list[int | str]) -> str:
    shown = _where("", loc[:3]) + ("..." if len(loc) > 3 else "")
    return f"{shown}: nested more than {MAX_DEPTH} levels deep (arrays or tables within each other)"


def _value_problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with the instance fields in ``values``; fields not there are skipped."""
    problems = []
    for name, check in (
        ("job_id", _job_id_problem),
        ("plan_time", _epoch_ms_problem),
        ("submit_time", _epoch_ms_problem),
    ):
        problem = check(values[name]) if name in values else None
        if problem:
            problems.append(f"{name} = {_show(values[name])}: {problem}")
    return problems


def _cell(text: str) -> int | str:
    """A CSV cell as the value it stands for: a number when it is all digits."""
    cell = text.strip()
    # isascii() too: str.isdigit() also accepts digits like "²".
    if cell.isascii() and cell.isdigit():
        try:
            return int(cell)
        except ValueError:  # too long to read: left as text, refused as not a number
            return cell
    return cell


def _csv_problem(exc: csv.Error, line: int) -> str:
    """What the csv module refused, in words that point at the fix; ``line``: where it
    stopped reading."""
    message = str(exc)
    if message.startswith("field larger than field limit"):
        # Usually a stray double quote: it opens a quoted cell that runs on, across lines,
        # until the next quote in the file.
        limit = csv.field_size_limit()
        return (
            f"a cell runs on past {limit} characters (to line {line}); look for a stray "
            'double quote (") here: it opens a quoted cell that takes in the lines after it. '
            "Each cell is one number"
        )
    if message.startswith("new-line character seen in unquoted field"):
        return (
            "holds a carriage return (\\r) inside a cell; lines must end in \\n or \\r\\n "
            "(save the file with Unix or Windows line ends)"
        )
    return f"cannot be read as CSV ({message}); each line must be job_id,plan_time,submit_time"


def _plain_instance(row: list[str]) -> Instance | None:
    """The instance of a row of plain values (ASCII digits, no spaces or leading zeros, each
    in range), or None for any other row, which the general path reads and judges.

    Every file is read once to be checked and again for each plan made of it (``run`` plans
    twice, ``status`` once), so a row's cost counts several times over: this takes a
    300,000-row file from about 5 to 2 microseconds a row. It says yes only where
    :func:`_cell` and :func:`_value_problems` would give the same instance without a
    problem: 13 digits without a leading zero are 13-digit epoch milliseconds, and a
    ``job_id`` of at most 19 digits is checked against its range.
    """
    job_id, plan_time, submit_time = row
    if not (
        len(plan_time) == 13
        and len(submit_time) == 13
        and 0 < len(job_id) <= 19
        and (job_id + plan_time + submit_time).isascii()
        and job_id.isdigit()
        and plan_time.isdigit()
        and submit_time.isdigit()
        and job_id[0] != "0"
        and plan_time[0] != "0"
        and submit_time[0] != "0"
    ):
        return None
    number = int(job_id)
    if number > JOB_ID_MAX:
        return None
    return Instance(number, int(plan_time), int(submit_time))


def _csv_rows(lines: Iterator[str]) -> Iterator[tuple[int, _Row]]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:  # a file of CR line ends, a quote that runs on from the header
        yield 1, [_csv_problem(exc, reader.line_num)]
        return
    expected = ",".join(INSTANCE_FIELDS)
    if header is None:
        return
    names = [cell.strip() for cell in header]
    header_ok = names == list(INSTANCE_FIELDS)
    if not header_ok:
        yield 1, [f"header = {_show(','.join(header))}: must be exactly {expected}"]
    # Below a bad header the values are still checked, in the columns it names rightly, so
    # that fixing the header does not bring up a second round of problems. A row is measured
    # against the header: when the header has a column too many, so has every row, and that
    # is one problem, reported once at the header.
    columns = {name: names.index(name) for name in INSTANCE_FIELDS if name in names}
    width = f"must have 3, {expected}" if header_ok else f"the header has {len(names)}"
    while True:
        start = reader.line_num + 1  # where the next row begins; a quoted cell may span lines
        try:
            row = next(reader, None)
        except csv.Error as exc:
            # Where the reader stands after this is a guess, so the rest of the file is not
            # read as rows: one problem, at the line where the row began.
            yield start, [_csv_problem(exc, reader.line_num)]
            return
        if row is None:
            return
        line = start  # a row whose quoted cell spans lines is named where it begins
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(names):
            yield line, [f"has {len(row)} fields: {width}"]
            continue
        if header_ok:
            instance = _plain_instance(row)
            if instance is not None:
                yield line, instance
                continue
        values: dict[str, Any] = {name: _cell(row[index]) for name, index in columns.items()}
        problems = _value_problems(values)
        if problems:
            yield line, problems
        elif header_ok:
            yield line, Instance(values["job_id"], values["plan_time"], values["submit_time"])


def _jsonl_rows(lines: Iterator[str]) -> Iterator[tuple[int, _Row]]:
    expected = ", ".join(INSTANCE_FIELDS)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.strip(), object_pairs_hook=_unique_keys)
        except _DuplicateKeyError as exc:
            yield line_no, [f"is not valid JSON: {exc}"]
            continue
        except json.JSONDecodeError as exc:
            yield line_no, [f"is not valid JSON: {exc.msg} (column {exc.colno})"]
            continue
        except ValueError:
            yield line_no, [_TOO_LONG]
            continue
        except RecursionError:
            yield line_no, [f"{_TOO_DEEP}; each line must be one flat JSON object with {expected}"]
            continue
        if not isinstance(obj, dict):
            yield line_no, [f"must be a JSON object with keys {expected}"]
            continue
        if any(isinstance(value, (dict, list)) for value in obj.values()):
            deep = _too_deep(obj)
            if deep is not None:
                yield line_no, [f"{_deep_problem(deep)}; each line must be one flat JSON object"]
                continue
        # Every problem of the line at once: a stray key does not hide a bad value.
        problems = [
            f"{key}: unknown key; allowed keys: {expected}"
            for key in obj
            if key not in INSTANCE_FIELDS
        ]
        problems += [
            f"{key}: missing; each line needs {expected}"
            for key in INSTANCE_FIELDS
            if key not in obj
        ]
        problems += _value_problems(obj)
        if problems:
            yield line_no, problems
        else:
            yield line_no, Instance(obj["job_id"], obj["plan_time"], obj["submit_time"])


class _NotAFile(OSError):
    """An instance file that is a pipe, a device or a socket, not a regular file."""

    def __init__(self, mode: int) -> None:
        super().__init__(f"is {_kind(mode)}, not a regular file")
        self.mode = mode


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"  # pragma: no cover - no other kind on the systems we run on


def _not_a_file(mode: int) -> str:
    return (
        f"is {_kind(mode)}, not a regular file; an instance file is read twice (once to "
        "validate it, once to plan), which only a regular file allows: save what it holds "
        "to a .csv or .jsonl file and name that"
    )


def _open_regular(path: Path) -> typing.BinaryIO:
    """``path`` opened for reading, when it is a regular file.

    A pipe (a FIFO, /dev/stdin) would give its lines once, to validation, and then leave
    planning waiting for a writer that never comes; a device may never end. Opening without
    waiting and asking the open file what it is also holds when the file was swapped after
    a check by name. Raises IsADirectoryError or :class:`_NotAFile` (both OSErrors).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise _NotAFile(mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _rows(path: Path, digest: Any | None = None) -> Iterator[tuple[int, _Row]]:
    """(line number, instance or problem) for each non-blank data line of an instance file.

    Raises OSError when it cannot be read; :class:`_NotAFile` when it is not a regular file.
    """
    with _open_regular(path) as raw:
        lines = _decoded_lines(raw, digest)
        if path.suffix.lower() in _CSV_SUFFIXES:
            yield from _csv_rows(lines)
        else:
            yield from _jsonl_rows(lines)
        # Read what the parser left (after a bad header) so that the digest covers the file.
        for _ in lines:
            pass


def _digest_of(path: Path) -> str | None:
    """The SHA-256 of the regular file at ``path``; None when it cannot be read (the check
    line by line then says why)."""
    digest = hashlib.sha256()
    try:
        with _open_regular(path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def iter_instances(entry: InstancesEntry) -> Iterator[Instance]:
    """The instances of ``entry``: its ``items``, or its file streamed line by line.

    The file was validated by :func:`load_manifest`; if it was changed into something
    invalid since, this raises :class:`ManifestError` rather than guess.
    """
    for _, instance in iter_located_instances(entry):
        yield instance


def iter_located_instances(entry: InstancesEntry) -> Generator[tuple[int, Instance], None, None]:
    """As :func:`iter_instances`, each instance with where it is: its index in ``items``
    (from 0, as ``items[2]`` in messages), or its line in the file (from 1)."""
    if entry.file is None:
        yield from enumerate(entry.items)
        return
    shown = entry.file_name or entry.file.name
    try:
        for line_no, row in _rows(entry.file):
            if not isinstance(row, Instance):
                where = f"{entry.label}.file: {shown}:{line_no}"
                raise ManifestError(
                    [f"{where}: {problem} (changed since it was checked)" for problem in row]
                )
            yield line_no, row
    except OSError as exc:  # gone, or swapped for a pipe, since it was checked
        if isinstance(exc, _NotAFile):
            why = _not_a_file(exc.mode)
        else:
            why = f"cannot be read: {exc.strerror or exc}"
        where = f"{entry.label}.file = {_show(shown)}"
        raise ManifestError([f"{where}: {why} (changed since it was checked)"]) from None


# ---------------------------------------------------------------------------------------------
# The semantic pass
# ---------------------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """A JSON object holds the same key twice (TOML refuses that by itself)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"duplicate key {json.dumps(key)}")
        result[key] = value
    return result


# A valid value for each required field, used when the real one is wrong (see validate).
_STAND_INS: dict[str, Any] = {
    "version": 1,
    "job_name": "-",
    "workspace_id": "-",
    "begin": MS_LOW,
    "end": MS_HIGH - 1,
    "chunk": "1s",
    "job_id": 1,
    "plan_time": MS_LOW,
    "submit_time": MS_LOW,
}


class _Checker:
    """Collects the problems of one manifest while building its entries.

    Every ``broken`` set below names the fields that already have a problem reported: a
    check that would only repeat that problem in other words stays quiet.
    """

    def __init__(
        self, name: str, folder: Path, now_ms: int | None, known: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.folder = folder
        self.now_ms = now_ms
        self.problems: list[str] = []
        self.files: dict[str, str] = {}
        self.checked: dict[Path, bool] = {}
        self.known = known or {}  # file -> digest of a version found good (manifest_from_copy)
        self.defaults = _Defaults()
        self.defaults_broken: set[str] = set()

    def add(self, problem: str) -> None:
        self.problems.append(f"{self.name}: {problem}")

    def validate(self, model: type[_M], data: Any, prefix: str) -> tuple[_M | None, set[str]]:
        """The model, and the fields that were wrong.

        When some fields are wrong, the model is made again from the others so that the
        checks across fields still run and report their own problems in the same pass.
        """
        try:
            return model.model_validate(data), set()
        except ValidationError as exc:
            errors = exc.errors()
        for error in errors:
            self.add(_translate(error, prefix, model))
        if not isinstance(data, dict):
            return None, set(model.model_fields)
        broken = {str(error["loc"][0]) for error in errors if error["loc"]}
        # A misspelt key counts as the key it was meant to be: when that one is absent, its
        # absence is the problem already reported with "did you mean", and must not come back
        # as "missing" (for [defaults], once in every entry).
        for error in errors:
            if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
                meant = _meant(str(error["loc"][0]), model.model_fields)
                if meant is not None and meant not in data:
                    broken.add(meant)
        usable = {key: value for key, value in data.items() if key not in broken}
        for key in broken:
            field = model.model_fields.get(key)
            if field is not None and field.is_required():
                # Stand-ins only let the other fields be checked; the entry is dropped anyway.
                usable[key] = _STAND_INS[key]
        try:
            return model.model_validate(usable), broken
        except ValidationError:
            return None, broken

    def use_defaults(self, data: Any) -> None:
        """Validate [defaults]; keep its good fields even when others are wrong."""
        if data is None:
            return
        defaults, self.defaults_broken = self.validate(_Defaults, data, "defaults")
        if defaults is not None:
            self.defaults = defaults

    # -- common fields -----------------------------------------------------------------------

    def common(self, label: str, raw: _Common, broken: set[str]) -> dict[str, Any] | None:
        """The fields every entry has, with [defaults] merged in; None when one is missing."""
        excused = broken | self.defaults_broken
        merged: dict[str, Any] = {"label": label}
        ok = True
        for key in ("workspace", "retry_location", "retry_task_version"):
            value = getattr(raw, key) or getattr(self.defaults, key)
            if value is None:
                ok = False
                if key not in excused:
                    self.add(f"{label}.{key}: missing; required: {_ALLOWED[key]}")
            merged[key] = value
        obs = raw.ignore_obs_monitor
        merged["ignore_obs_monitor"] = (
            obs if obs is not None else self.defaults.ignore_obs_monitor is not False
        )
        merged["node_name"] = raw.node_name or self.defaults.node_name
        if merged["retry_location"] == "specifiedNode" and merged["node_name"] is None:
            ok = False
            if "node_name" not in excused:
                self.add(
                    f"{label}.node_name: missing; retry_location = specifiedNode needs "
                    "node_name, the node to restart from"
                )
        return merged if ok else None

    # -- times ---------------------------------------------------------------------------------

    def time_ms(
        self, where: str, value: int | datetime, zone_name: str | None, excused: bool, written: Any
    ) -> int | None:
        """Epoch ms of a time as validated; naive times are read in ``zone_name``. Messages
        show it as ``written``, so that it can be found in the file."""
        if isinstance(value, int):
            return value
        shown = _show(written)
        if zone_name is None:
            if not excused:
                self.add(
                    f"{where} = {shown}: has no UTC offset and no timezone is set; write it "
                    'with an offset (2024-11-26T08:00:00+08:00) or set timezone = "Asia/Shanghai" '
                    "in [defaults]"
                )
            return None
        zone = ZoneInfo(zone_name)
        early = value.replace(tzinfo=zone, fold=0)
        late = value.replace(tzinfo=zone, fold=1)
        if early.utcoffset() != late.utcoffset():
            # Daylight saving: the wall time happens twice (fall back) or never (spring
            # forward). Either way, which instant was meant is a guess; ask for an offset.
            round_trip = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
            why = "happens twice" if round_trip == value else "does not exist"
            self.add(
                f"{where} = {shown}: {why} in {zone_name} (daylight saving); write it with "
                f"an explicit offset like {early.isoformat()}"
            )
            return None
        try:
            return _aware_ms(early)
        except PydanticCustomError as exc:
            self.add(f"{where} = {shown}: {exc.message()}")
            return None

    def span(
        self, label: str, raw: _Window | _Select, broken: set[str], data: dict[str, Any]
    ) -> tuple[int, int, str | None] | None:
        """(begin ms, end ms, zone) of an entry with begin and end; None after a problem.

        ``data`` is the entry as written, so that messages show times as the user wrote them.
        """
        # Each time is checked whatever is wrong with the other. A time without an offset
        # cannot be read when the timezone meant for it (the entry's or the default) is
        # wrong; that was reported already, so such a time stays quiet.
        zone = None if "timezone" in broken else raw.timezone or self.defaults.timezone
        excused = "timezone" in broken or "timezone" in self.defaults_broken
        begin_ms = None
        if "begin" not in broken:
            begin_ms = self.time_ms(f"{label}.begin", raw.begin, zone, excused, data["begin"])
        end_ms = None
        if "end" not in broken:
            end_ms = self.time_ms(f"{label}.end", raw.end, zone, excused, data["end"])
        if begin_ms is None or end_ms is None:
            return None
        if end_ms <= begin_ms:
            self.add(
                f"{label}.end = {_show(data['end'])}: must be after begin "
                f"({_show(data['begin'])}); end is exclusive"
            )
            return None
        return begin_ms, end_ms, zone

    # -- entries -------------------------------------------------------------------------------

    def window(self, index: int, data: Any) -> WindowEntry | None:
        label = f"window[{index}]"
        raw, broken = self.validate(_Window, data, label)
        if raw is None:
            return None
        common = self.common(label, raw, broken)
        times = self.span(label, raw, broken, data)
        jobs_ok = self.window_jobs(label, raw, broken, data)
        if common is None or times is None or broken or not jobs_ok:
            return None
        return WindowEntry(
            **common,
            job_name=raw.job_name,
            begin_ms=times[0],
            end_ms=times[1],
            chunk_ms=raw.chunk,
            concurrent=raw.concurrent,
            jobs=tuple((job.job_name, job.workspace_id) for job in raw.jobs or ()),
            timezone=times[2],
        )

    def window_jobs(self, label: str, raw: _Window, broken: set[str], data: Any) -> bool:
        """Whether ``jobs`` names each job once and not the window's own job.

        The service reruns ``job_name`` and every job of ``jobs``; what it does with one
        named twice in a request is not documented (twice is what the operator should fear),
        and such a line is a slip for another job more often than not. Refused, not warned
        about: the fix is to delete the line, and a warning scrolls by as the run sends.
        When a line of ``jobs`` is broken, its good lines (``data``, as written) are checked
        all the same, so that mending the one does not reveal the other a pass later.
        """
        if "jobs" in broken:
            refs = _good_job_refs(data.get("jobs") if isinstance(data, dict) else None)
        else:
            refs = list(enumerate(raw.jobs or ()))
        if not refs:
            return True
        workspace = raw.workspace or self.defaults.workspace
        seen: dict[tuple[str, str], int] = {}
        if "job_name" not in broken and "workspace" not in broken and workspace is not None:
            seen[(raw.job_name, workspace)] = -1
        ok = True
        for i, job in refs:
            key = (job.job_name, job.workspace_id)
            first = seen.setdefault(key, i)
            if first == i:
                continue
            ok = False
            where = f"{label}.jobs[{i}].job_name = {_show(job.job_name)}"
            if first < 0:
                self.add(
                    f"{where}: is the window's own job (its job_name, in the same workspace), "
                    "which the window reruns already; list only its upstream and downstream "
                    "jobs in jobs"
                )
            else:
                self.add(
                    f"{where}: repeats jobs[{first}] (the same job_name and workspace_id); "
                    "list each job once"
                )
        return ok

    def instances(self, index: int, data: Any) -> InstancesEntry | None:
        label = f"instances[{index}]"
        raw, broken = self.validate(_Instances, data, label)
        if raw is None:
            return None
        common = self.common(label, raw, broken)
        has_items = raw.items is not None or "items" in broken
        has_file = raw.file is not None or "file" in broken
        items: tuple[Instance, ...] = ()
        path: Path | None = None
        ok = True
        if has_items and has_file:
            self.add(f"{label}.file: give items or file, not both")
            ok = False
        elif not has_items and not has_file:
            self.add(
                f"{label}.items: missing; give items = [ {{ job_id = ..., plan_time = ..., "
                'submit_time = ... } ] or file = "failed.csv"'
            )
            ok = False
        elif raw.items is not None:
            if not raw.items:
                self.add(f"{label}.items = []: must not be empty; allowed: {_ALLOWED['items']}")
                ok = False
            items = tuple(Instance(i.job_id, i.plan_time, i.submit_time) for i in raw.items)
        elif raw.file is not None:
            given = self.folder / raw.file
            path = given.resolve()
            ok = self.instance_file(label, raw.file, path, given)
        if common is None or not ok or broken:
            return None
        return InstancesEntry(
            **common,
            job_name=raw.job_name,
            batch=raw.batch,
            items=items,
            file=path,
            file_name=raw.file,
        )

    def instance_file(self, label: str, shown: str, path: Path, given: Path) -> bool:
        """Read and check a whole instance file (once per file); True when it is usable.

        ``path`` is resolved; ``given`` is the file as named (unresolved: the system follows
        a link like /dev/stdin where resolving a path cannot); ``shown`` is the file as the
        manifest names it.
        """
        where = f"{label}.file = {_show(shown)}"
        try:
            mode = given.stat().st_mode
        except OSError:
            pass  # said below, when it is read
        else:
            # Asked first: what a pipe resolves to says nothing true about it.
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                self.add(f"{where}: {_not_a_file(mode)}")
                return False
        if path.suffix.lower() not in _CSV_SUFFIXES + _JSONL_SUFFIXES:
            self.add(
                f"{where}: must end in .csv (header {','.join(INSTANCE_FIELDS)}) or .jsonl "
                "(one JSON object per line)"
            )
            return False
        if path in self.checked:
            return self.checked[path]
        self.checked[path] = False
        known = self.known.get(str(path))
        if known is not None and _digest_of(path) == known:
            # The bytes a validation found good: hashing them is enough (in C, a tenth of the
            # time that parsing and checking every line takes).
            self.checked[path] = True
            self.files[str(path)] = known
            return True
        digest = hashlib.sha256()
        count = 0
        bad: list[str] = []
        try:
            for line_no, row in _rows(path, digest):
                if isinstance(row, Instance):
                    count += 1
                else:
                    bad.extend(f"{label}.file: {shown}:{line_no}: {problem}" for problem in row)
        except FileNotFoundError:
            self.add(f"{where}: no such file (relative to the manifest's folder)")
            return False
        except IsADirectoryError:
            self.add(f"{where}: is a folder; must be a .csv or .jsonl file")
            return False
        except _NotAFile as exc:  # swapped for a pipe since it was looked at
            self.add(f"{where}: {_not_a_file(exc.mode)}")
            return False
        except OSError as exc:
            self.add(f"{where}: cannot be read: {exc.strerror or exc}")
            return False
        for problem in bad[:MAX_PROBLEMS_PER_FILE]:
            self.add(problem)
        if len(bad) > MAX_PROBLEMS_PER_FILE:
            self.add(
                f"{label}.file: {shown}: {len(bad) - MAX_PROBLEMS_PER_FILE} more problems "
                "like these not shown"
            )
        if bad:
            return False
        if count == 0:
            self.add(f"{where}: holds no instances; must list at least one")
            return False
        self.checked[path] = True
        self.files[str(path)] = digest.hexdigest()
        return True

    def select(self, index: int, data: Any) -> SelectEntry | None:
        label = f"select[{index}]"
        raw, broken = self.validate(_Select, data, label)
        if raw is None:
            return None
        common = self.common(label, raw, broken)
        has_name = raw.job_name is not None or "job_name" in broken
        has_names = raw.job_names is not None or "job_names" in broken
        names: tuple[str, ...] = ()
        if has_name and has_names:
            self.add(f"{label}.job_names: give job_name or job_names, not both")
        elif not has_name and not has_names:
            self.add(
                f'{label}.job_names: missing; give job_name = "..." or job_names = ["...", "..."]'
            )
        elif raw.job_names is not None and not raw.job_names:
            self.add(f"{label}.job_names = []: must not be empty; allowed: {_ALLOWED['job_names']}")
        elif raw.job_name is not None:
            names = (raw.job_name,)
        elif raw.job_names is not None:
            names = tuple(dict.fromkeys(raw.job_names))
        times = self.span(label, raw, broken, data)
        if times is not None:
            begin_ms, end_ms, _zone = times
            if end_ms - begin_ms > MAX_SELECT_SPAN_MS:
                days = (end_ms - begin_ms) / 86_400_000
                self.add(
                    f"{label}.end = {_show(data['end'])}: the plan times searched span "
                    f"{days:.1f} days; must be at most 31 days (the instance-list API searches "
                    "one month); split it into several [[select]] entries"
                )
                times = None
            elif self.now_ms is not None and begin_ms < self.now_ms - MAX_SELECT_SPAN_MS:
                self.add(
                    f"{label}.begin = {_show(data['begin'])}: is more than 31 days ago; "
                    "the instance-list API searches at most one month back"
                )
                times = None
        if common is None or not names or times is None or broken:
            return None
        return SelectEntry(
            **common,
            job_names=names,
            begin_ms=times[0],
            end_ms=times[1],
            statuses=raw.status,
            batch=raw.batch,
            timezone=times[2],
        )


def _good_job_refs(items: Any) -> list[tuple[int, _JobRef]]:
    """The lines of a ``jobs`` list (as written) that are valid on their own, with their
    index; their problems are reported already."""
    if not isinstance(items, list):
        return []
    good = []
    for i, item in enumerate(items):
        with contextlib.suppress(ValidationError):
            good.append((i, _JobRef.model_validate(item)))
    return good


def _overlaps(name: str, windows: Sequence[WindowEntry]) -> list[str]:
    """Windows that cover one job (and workspace) at overlapping times: allowed, but probably
    not meant. A window covers its ``job_name`` and every job of its ``jobs``: a job one
    window lists in ``jobs`` and another names as its own is rerun by both.

    Per job, its windows sorted by ``begin`` are compared with those that begin before they
    end, so disjoint windows (a manifest ``report --format manifest`` wrote holds one per
    failed request) cost a sort, not a comparison of every pair. Warnings come by pair of
    entries in manifest order, then in the order the first entry covers the jobs.
    """
    by_job: dict[tuple[str, str], list[int]] = {}
    for index, window in enumerate(windows):
        for job in window.covers():
            by_job.setdefault(job, []).append(index)
    found: list[tuple[int, int, int, str]] = []
    for job, indices in by_job.items():
        indices.sort(key=lambda k: windows[k].begin_ms)
        for at, a in enumerate(indices):
            for b in indices[at + 1 :]:
                if windows[b].begin_ms >= windows[a].end_ms:
                    break
                first, second = windows[min(a, b)], windows[max(a, b)]
                order = first.covers().index(job)
                found.append((min(a, b), max(a, b), order, _overlap(name, first, second, job)))
    return [warning for *_, warning in sorted(found)]


def _overlap(name: str, first: WindowEntry, second: WindowEntry, job: tuple[str, str]) -> str:
    """The warning for ``job``, which both windows cover at overlapping times."""
    same_job = (first.job_name, first.workspace) == (second.job_name, second.workspace)
    # Two entries whose chunks are identical (times and body) make identical requests,
    # which the planner sends once; only entries of one job_name can.
    unless = " unless the two entries cut identical chunks" if same_job else ""
    if same_job and job == (first.job_name, first.workspace):
        return (
            f"{name}: {first.label} and {second.label} overlap for job {first.job_name}: "
            f"instances in the overlap are rerun twice{unless}"
        )

    def role(window: WindowEntry) -> str:
        own = job == (window.job_name, window.workspace)
        return f"{'job_name' if own else 'in jobs'} of {window.label}"

    return (
        f"{name}: {first.label} and {second.label} overlap for job {job[0]} ({role(first)}, "
        f"{role(second)}): its instances in the overlap are rerun twice{unless}"
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_TOML_WHERE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def _parse(name: str, text: str, is_json: bool) -> Any:
    """The document as plain data; raises ManifestError with line and column on bad syntax."""
    if is_json:
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                [f"{name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}; fix the syntax"]
            ) from None
        except _DuplicateKeyError as exc:
            raise ManifestError([f"{name}: invalid JSON: {exc}; keep one of them"]) from None
        except ValueError:
            raise ManifestError([f"{name}: {_TOO_LONG}"]) from None
        except RecursionError:
            raise ManifestError([f"{name}: {_TOO_DEEP_MANIFEST}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_WHERE.match(message)
        if match:
            where, message = f"{name}:{match['line']}:{match['col']}", match["what"]
        else:
            where = name
        raise ManifestError([f"{where}: invalid TOML: {message}; fix the syntax"]) from None
    except ValueError:
        raise ManifestError([f"{name}: {_TOO_LONG}"]) from None
    except RecursionError:
        raise ManifestError([f"{name}: {_TOO_DEEP_MANIFEST}"]) from None


_LEVELS = "itself, [[instances]], an entry, its items, one item"
# Neither parser says where it was when the stack ran out, so no line is given.
_TOO_DEEP_MANIFEST = (
    f"{_TOO_DEEP}; a manifest nests five levels at most ({_LEVELS}): look for brackets or "
    "braces opened hundreds deep, or never closed"
)

_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*(window|instances|select)[ \t]*\]\]", re.MULTILINE)
_KINDS = ("window", "instances", "select")


def _document_order(text: str, counts: dict[str, int]) -> list[tuple[str, int]]:
    """(kind, index) of every entry in the order the file lists them.

    tomllib (like JSON) groups entries by kind, but an operator who writes a window, then
    instances, then another window expects them sent in that order. The ``[[kind]]`` headers
    give it back; when they do not account for every entry (inline arrays, JSON), entries
    keep the order of their kinds' first appearance.
    """
    found = [match.group(1) for match in _HEADER.finditer(text)]
    if all(found.count(kind) == counts.get(kind, 0) for kind in _KINDS):
        seen = dict.fromkeys(_KINDS, 0)
        order = []
        for kind in found:
            order.append((kind, seen[kind]))
            seen[kind] += 1
        return order
    return [(kind, index) for kind in counts for index in range(counts[kind])]


def load_manifest(path: Path, *, now_ms: int | None = None) -> Manifest:
    """Read, validate and normalise the manifest at ``path`` (TOML, or JSON by suffix).

    Instance files are read in full here (and hashed) so that nothing is sent before every
    line is known to be good. ``now_ms``, when given, also refuses ``[[select]]`` windows
    further back than the instance-list API searches; leave it out when the selection comes
    from a journal. Raises :class:`ManifestError` listing every problem found.
    """
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([f"{name}: no such file"]) from None
    except OSError as exc:
        raise ManifestError([f"{name}: cannot be read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            [f"{name}: byte {exc.start} is not UTF-8; save the file as UTF-8"]
        ) from None

    if not text.removeprefix("\ufeff").strip():
        raise ManifestError(
            [
                f"{name}: the file is empty; a manifest needs version = 1 and at least one "
                "[[window]], [[instances]] or [[select]] entry (`report --format manifest` "
                "writes nothing when nothing is left to rerun)"
            ]
        )
    data = _parse(name, text.removeprefix("\ufeff"), path.suffix.lower() == ".json")
    deep = _too_deep(data)
    if deep is not None:
        raise ManifestError(
            [f"{name}: {_deep_problem(deep)}; a manifest nests five levels at most ({_LEVELS})"]
        )
    sha256 = hashlib.sha256(raw).hexdigest()
    return _validated(path, text, sha256, data, now_ms=now_ms)


def manifest_from_copy(
    path: Path, text: str, sha256: str, data: Any, *, checked: Mapping[str, str] | None = None
) -> Manifest:
    """A manifest made again from a copy (a journal's): ``data`` is ``text`` parsed, with
    every instance file an absolute path. Validated as :func:`load_manifest` validates, with
    no file read but the instance files; ``path`` is the name messages give.

    ``checked``: instance file -> the SHA-256 it had when a validation found every line of
    it good (what a journal records). A file that still has that digest is only hashed, not
    checked line by line again: the same bytes give the same verdict."""
    return _validated(path, text, sha256, data, now_ms=None, checked=checked)


def _validated(
    path: Path,
    text: str,
    sha256: str,
    data: Any,
    *,
    now_ms: int | None,
    checked: Mapping[str, str] | None = None,
) -> Manifest:
    name = str(path)
    if not isinstance(data, dict):
        raise ManifestError(
            [f"{name}: must be an object with version, defaults and entries; found {_show(data)}"]
        )
    check = _Checker(name, path.parent, now_ms, checked)
    top, _ = check.validate(_Top, data, "")
    if top is None:  # pragma: no cover - validate() substitutes every required field
        raise ManifestError(check.problems)
    check.use_defaults(top.defaults)

    lists = {"window": top.window, "instances": top.instances, "select": top.select}
    build = {"window": check.window, "instances": check.instances, "select": check.select}
    counts = {kind: len(lists[kind]) for kind in data if lists.get(kind)}
    entries = [build[kind](i, lists[kind][i]) for kind, i in _document_order(text, counts)]
    if not entries and not check.problems:
        check.add("no entries; add at least one [[window]], [[instances]] or [[select]]")
    if check.problems:
        raise ManifestError(check.problems)

    valid = tuple(entry for entry in entries if entry is not None)
    windows = [entry for entry in valid if isinstance(entry, WindowEntry)]
    return Manifest(
        path=path,
        text=text,
        sha256=sha256,
        files=check.files,
        entries=valid,
        warnings=tuple(_overlaps(name, windows)),
    )
