"""What the fake service checks in a request, as pure functions: path, headers, body, query.

Every check here reads only its arguments and answers either a parsed request or a
:class:`Refusal` (status, error code, message). The server (``server.py``) does the I/O and
the order of checks; keeping the rules here makes each one testable without a socket and keeps
the per-request cost to one ``json.loads`` and a few dictionary look-ups.

The retry call is checked exactly as the public reference describes it (see
``dlf-retry-api.md``); where the reference is silent the fake is strict, because a stand-in
that accepts what the real service might refuse hides client bugs. The first violation found
is answered, like the real service does.

Error codes. The real service documents only ``DLF.1000``; the other ``DLF`` codes are ours,
chosen to look like the service's and to let a test tell the rules apart. Gateway codes are
the API gateway's documented ones.

======  ===========  ======================================================================
status  error_code   when
======  ===========  ======================================================================
400     DLF.0100     a body or query parameter is wrong: missing, wrong type, not allowed
                     value, unknown field, 13-digit time expected, modes A and B mixed or
                     neither given, ``concurrent`` outside 1..128, ``limit`` outside
                     1..1000, a ``job_id`` that is not a positive signed 64-bit integer
                     (the reference's "long"), a job name that is not UTF-8
400     DLF.0101     the ``workspace`` header is missing or empty
400     DLF.0102     ``Content-Type`` is not ``application/json`` (charset UTF-8 allowed)
400     DLF.0103     the body is not a JSON object
400     DLF.0104     ``min_plan_time`` is more than one month (31 days) back
400     DLF.1000     "Failed to find the job." (a missing job, or one the catalog lacks)
400     DLF.1001     a job instance to rerun does not exist (catalog only)
401     APIG.0301    authentication failed (bad or missing signature, wrong token)
403     DLF.0003     the job is denied to this user (``deny_jobs``)
403     DLF.0004     the ``X-Project-Id`` header is given and is not the path's project ID
                     (other services answer a token or header scoped to another project
                     with 403 too: a permission problem, not a malformed request)
404     APIG.0101    no such API (any other path)
405     APIG.0101    the retry or list path with another method
413     APIG.0413    the body is over 1 MiB (aiohttp's limit; the code is ours)
429     APIG.0308    throttled (rate limit or injected 429)
503     APIG.0202    back end unavailable (injected; the request was not acted on)
======  ===========  ======================================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from bulkrerun import reference

__all__ = [
    "INSTANCE_STATUSES",
    "JOB_NOT_FOUND",
    "MONTH_MS",
    "NO_WORKSPACE",
    "RETRY_LOCATIONS",
    "RETRY_TASK_VERSIONS",
    "ListQuery",
    "Refusal",
    "RetryRequest",
    "Route",
    "bad_param",
    "json_content_type",
    "route",
    "validate_list",
    "validate_retry",
]

RETRY_LOCATIONS = frozenset(reference.RETRY_LOCATIONS)
RETRY_TASK_VERSIONS = frozenset(reference.RETRY_TASK_VERSIONS)
INSTANCE_STATUSES = frozenset(reference.INSTANCE_STATUSES)

_COMMON_FIELDS = frozenset(
    {"retry_location", "node_name", "retry_task_version", "ignore_obs_monitor"}
)
_MODE_A_FIELDS = frozenset({"task_retrys"})
_MODE_B_FIELDS = frozenset({"begin_time", "end_time", "jobs", "concurrent"})
_ALL_FIELDS = _COMMON_FIELDS | _MODE_A_FIELDS | _MODE_B_FIELDS
_TASK_FIELDS = frozenset({"job_id", "plan_time", "submit_time"})
_JOB_FIELDS = frozenset({"job_name", "workspace_id"})

_MS_MIN = 10**12  # 13-digit epoch milliseconds: 2001-09-09 .. 2286-11-20
_MS_MAX = 10**13 - 1
_LONG_MAX = 2**63 - 1  # the reference's "long": a signed 64-bit integer
_CONCURRENT_MAX = 128
_LIMIT_MAX = 1000
_LIMIT_DEFAULT = 10
MONTH_MS = 31 * 86_400_000
_SERVICE_UTC_OFFSET_MS = 8 * 3_600_000  # the service's "today" is China Standard Time
_INT_RE = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error answer: HTTP status and the ``{"error_code", "error_msg"}`` body."""

    status: int
    error_code: str
    error_msg: str

    def body(self) -> bytes:
        return json.dumps(
            {"error_code": self.error_code, "error_msg": self.error_msg}, ensure_ascii=False
        ).encode()


def bad_param(message: str) -> Refusal:
    """A ``DLF.0100`` parameter error."""
    return Refusal(400, "DLF.0100", f"Invalid request parameter: {message}")


JOB_NOT_FOUND = Refusal(400, "DLF.1000", "Failed to find the job.")
NO_WORKSPACE = Refusal(400, "DLF.0101", "The workspace header is missing or empty.")


@dataclass(frozen=True, slots=True)
class Route:
    """A request path that names one of the two APIs; ``job_name`` is decoded once."""

    api: Literal["retry", "detail"]
    project_id: str
    job_name: str


def route(path: str) -> Route | Refusal | None:
    """Which API a raw (still percent-encoded, query-less) path names; ``None`` for none.

    The path is split on ``/`` before decoding, so ``%2F`` inside a job name stays part of
    the name, and the job name is decoded exactly once (``a%2520b`` is ``a%20b``).
    """
    parts = path.split("/")
    # "", "v2", project, "factory", "jobs", job, "instances", "retry" | "detail"
    if (
        len(parts) != 8
        or parts[0]
        or parts[1] != "v2"
        or parts[3] != "factory"
        or parts[4] != "jobs"
        or parts[6] != "instances"
        or not parts[2]
        or not parts[5]
    ):
        return None
    api: Literal["retry", "detail"]
    if parts[7] == "retry":
        api = "retry"
    elif parts[7] == "detail":
        api = "detail"
    else:
        return None
    try:
        job_name = unquote(parts[5], errors="strict")
        project_id = unquote(parts[2], errors="strict")
    except UnicodeDecodeError:
        return bad_param("the job name in the path is not UTF-8 once percent-decoded")
    return Route(api, project_id, job_name)


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A valid retry call. ``body`` is the parsed JSON; the other fields are read from it.

    Mode A fills ``task_retrys`` with ``(job_id, plan_time, submit_time)``; mode B fills
    ``begin_time``, ``end_time``, ``jobs`` (``(job_name, workspace_id)``) and ``concurrent``.
    """

    job_name: str
    workspace: str
    mode: Literal["A", "B"]
    body: dict[str, Any]
    task_retrys: tuple[tuple[int, int, int], ...] = ()
    begin_time: int = 0
    end_time: int = 0
    jobs: tuple[tuple[str, str], ...] = ()
    concurrent: int = 1


def _is_int(value: object) -> bool:
    # JSON true is a Python bool, and bool is an int subclass: the type must be int exactly.
    return type(value) is int


def _is_ms(value: object) -> bool:
    return type(value) is int and _MS_MIN <= value <= _MS_MAX


def json_content_type(value: str | None) -> bool:
    """``application/json``, optionally with ``charset=utf-8``; both parts case-insensitive."""
    if value is None:
        return False
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        if not param.strip():
            continue
        key, _, val = param.partition("=")
        if key.strip().lower() != "charset" or val.strip().strip('"').lower() != "utf-8":
            return False
    return True


def validate_retry(
    job_name: str, workspace: str | None, content_type: str | None, body: bytes
) -> RetryRequest | Refusal:
    """Check one retry call (after routing and auth); the first violation is answered."""
    if not workspace:
        return NO_WORKSPACE
    if not json_content_type(content_type):
        return Refusal(
            400,
            "DLF.0102",
            "Unsupported Content-Type: expected application/json;charset=UTF-8.",
        )
    try:
        parsed = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        return Refusal(400, "DLF.0103", "The request body is not valid JSON.")
    if not isinstance(parsed, dict):
        return Refusal(400, "DLF.0103", "The request body must be a JSON object.")
    return _validate_body(job_name, workspace, parsed)


def _validate_body(job_name: str, workspace: str, body: dict[str, Any]) -> RetryRequest | Refusal:
    unknown = body.keys() - _ALL_FIELDS
    if unknown:
        return bad_param(f"unknown field(s): {', '.join(sorted(unknown))}")

    location = body.get("retry_location")
    if location not in RETRY_LOCATIONS:
        return bad_param(
            f"retry_location = {location!r}: must be one of firstNode, errorNode, specifiedNode"
        )
    # Optional fields, when present, must have their type: null is not a string or a boolean.
    node_name = body.get("node_name")
    if "node_name" in body and not isinstance(node_name, str):
        return bad_param("node_name must be a string")
    if location == "specifiedNode" and not node_name:
        return bad_param("node_name is required when retry_location is specifiedNode")
    version = body.get("retry_task_version")
    if version not in RETRY_TASK_VERSIONS:
        return bad_param(
            f"retry_task_version = {version!r}: must be original_version or current_version"
        )
    if "ignore_obs_monitor" in body and not isinstance(body["ignore_obs_monitor"], bool):
        return bad_param("ignore_obs_monitor must be a boolean")

    has_a = "task_retrys" in body
    has_b = not _MODE_B_FIELDS.isdisjoint(body.keys())
    if has_a and has_b:
        return bad_param(
            "task_retrys (rerun given instances) cannot be mixed with begin_time, end_time, "
            "jobs or concurrent (rerun a job with its upstream and downstream jobs)"
        )
    if has_a:
        return _mode_a(job_name, workspace, body)
    if has_b:
        return _mode_b(job_name, workspace, body)
    return bad_param("either task_retrys or begin_time and end_time must be given")


def _mode_a(job_name: str, workspace: str, body: dict[str, Any]) -> RetryRequest | Refusal:
    items = body["task_retrys"]
    if not isinstance(items, list) or not items:
        return bad_param("task_retrys must be a non-empty array")
    tasks: list[tuple[int, int, int]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return bad_param(f"task_retrys[{i}] must be an object")
        if item.keys() != _TASK_FIELDS:
            return bad_param(
                f"task_retrys[{i}] must have exactly job_id, plan_time and submit_time, "
                f"got {', '.join(sorted(item)) or 'nothing'}"
            )
        job_id, plan_time, submit_time = item["job_id"], item["plan_time"], item["submit_time"]
        if not _is_int(job_id) or not 1 <= job_id <= _LONG_MAX:
            return bad_param(
                f"task_retrys[{i}].job_id must be a positive integer of at most 2**63 - 1"
            )
        if not _is_ms(plan_time):
            return bad_param(f"task_retrys[{i}].plan_time must be 13-digit epoch milliseconds")
        if not _is_ms(submit_time):
            return bad_param(f"task_retrys[{i}].submit_time must be 13-digit epoch milliseconds")
        tasks.append((job_id, plan_time, submit_time))
    return RetryRequest(job_name, workspace, "A", body, task_retrys=tuple(tasks))


def _mode_b(job_name: str, workspace: str, body: dict[str, Any]) -> RetryRequest | Refusal:
    for name in ("begin_time", "end_time"):
        if name not in body:
            return bad_param(f"{name} is required with begin_time, end_time, jobs, concurrent")
        if not _is_ms(body[name]):
            return bad_param(f"{name} must be 13-digit epoch milliseconds")
    begin, end = body["begin_time"], body["end_time"]
    if begin > end:
        return bad_param("begin_time must not be after end_time")
    concurrent = body.get("concurrent", 1)
    if not _is_int(concurrent) or not 1 <= concurrent <= _CONCURRENT_MAX:
        return bad_param(f"concurrent = {concurrent!r}: must be an integer 1..128")
    jobs: list[tuple[str, str]] = []
    raw_jobs = body.get("jobs", [])
    if not isinstance(raw_jobs, list):
        return bad_param("jobs must be an array")
    for i, job in enumerate(raw_jobs):
        if not isinstance(job, dict) or job.keys() != _JOB_FIELDS:
            return bad_param(f"jobs[{i}] must be an object with exactly job_name, workspace_id")
        name, ws = job["job_name"], job["workspace_id"]
        if not isinstance(name, str) or not name or not isinstance(ws, str) or not ws:
            return bad_param(f"jobs[{i}].job_name and workspace_id must be non-empty strings")
        jobs.append((name, ws))
    return RetryRequest(
        job_name,
        workspace,
        "B",
        body,
        begin_time=begin,
        end_time=end,
        jobs=tuple(jobs),
        concurrent=concurrent,
    )


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A valid instance-list query. Plan-time bounds are inclusive (see ``validate_list``)."""

    workspace: str
    limit: int
    offset: int
    min_plan_time: int
    max_plan_time: int
    status: str | None
    instance_type: int | None
    force_success: bool
    ignore_success: bool


def _query_int(query: Mapping[str, str], name: str, default: int) -> int | Refusal:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not _INT_RE.fullmatch(raw):
        return bad_param(f"{name} = {raw!r}: must be an integer")
    return int(raw)


def _query_bool(query: Mapping[str, str], name: str) -> bool | Refusal:
    raw = query.get(name, "").lower()
    if raw in ("", "false"):
        return False
    if raw == "true":
        return True
    return bad_param(f"{name} must be true or false")


def validate_list(
    workspace: str | None, query: Mapping[str, str], now_ms: int
) -> ListQuery | Refusal:
    """Check an instance-list query against the service's notion of now (``now_ms``).

    Defaults follow the SDK's description: ``limit`` 10, ``offset`` 0, ``min_plan_time`` the
    start of today (China Standard Time), ``max_plan_time`` now. The reference words the
    bounds as "greater than" / "less than"; the fake treats both as inclusive, which no client
    can tell apart from strict bounds if it filters its own window as it should.
    """
    if not workspace:
        return NO_WORKSPACE
    local = now_ms + _SERVICE_UTC_OFFSET_MS
    today = now_ms - local % 86_400_000
    values: dict[str, int] = {}
    for name, default in (
        ("limit", _LIMIT_DEFAULT),
        ("offset", 0),
        ("min_plan_time", today),
        ("max_plan_time", now_ms),
    ):
        got = _query_int(query, name, default)
        if isinstance(got, Refusal):
            return got
        values[name] = got
    if not 1 <= values["limit"] <= _LIMIT_MAX:
        return bad_param(f"limit = {values['limit']}: must be 1..1000")
    if values["offset"] < 0:
        return bad_param(f"offset = {values['offset']}: must be 0 or more")
    if values["min_plan_time"] < now_ms - MONTH_MS:
        return Refusal(
            400,
            "DLF.0104",
            f"min_plan_time {values['min_plan_time']} is more than one month back: "
            "instances can be queried for the last month only.",
        )
    status = query.get("status") or None
    if status is not None and status not in INSTANCE_STATUSES:
        return bad_param(
            f"status = {status!r}: must be one of {', '.join(sorted(INSTANCE_STATUSES))}"
        )
    instance_type: int | None = None
    if query.get("instance_type"):
        got = _query_int(query, "instance_type", 0)
        if isinstance(got, Refusal):
            return got
        instance_type = got
    force_success = _query_bool(query, "force_success")
    if isinstance(force_success, Refusal):
        return force_success
    ignore_success = _query_bool(query, "ignore_success")
    if isinstance(ignore_success, Refusal):
        return ignore_success
    return ListQuery(
        workspace,
        values["limit"],
        values["offset"],
        values["min_plan_time"],
        values["max_plan_time"],
        status,
        instance_type,
        force_success,
        ignore_success,
    )
