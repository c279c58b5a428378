"""The fake service over real sockets: validation, ledger, auth and every fault.

Each test starts its own server on 127.0.0.1:0 and talks to it with a bare aiohttp client,
so what is asserted is what any client would see on the wire.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from bulkrerun.chunk import canonical_json, chunk_id
from bulkrerun.clock import FakeClock
from bulkrerun.fake import FakeConfig, FakeServer, LedgerEntry, read_ledger
from bulkrerun.fake.faults import TokenBucket, throttle_message
from bulkrerun.fake.validate import json_content_type
from bulkrerun.signing import AkSk, sign

pytestmark = pytest.mark.anyio

WS = "62fbba734e634c5087656fc3ff7adf34"
PROJECT = "62099355b894428e8916573ae635f1f9"
JSON = {"Content-Type": "application/json;charset=UTF-8"}
MODE_A: dict[str, Any] = {
    "retry_location": "errorNode",
    "retry_task_version": "original_version",
    "ignore_obs_monitor": True,
    "task_retrys": [{"job_id": 917567, "plan_time": 1732601580000, "submit_time": 1732239754684}],
}
MODE_B: dict[str, Any] = {
    "retry_location": "errorNode",
    "retry_task_version": "current_version",
    "ignore_obs_monitor": True,
    "begin_time": 1732608520000,
    "end_time": 1732612120000,
    "jobs": [{"job_name": "job_test_smn2", "workspace_id": WS}],
    "concurrent": 2,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def retry_path(job: str = "test_job_name", project: str = PROJECT) -> str:
    return f"/v2/{project}/factory/jobs/{quote(job, safe='')}/instances/retry"


@asynccontextmanager
async def running(
    config: FakeConfig | None = None,
) -> AsyncIterator[tuple[FakeServer, aiohttp.ClientSession]]:
    async with FakeServer(config) as srv, aiohttp.ClientSession() as session:
        yield srv, session


async def call(
    session: aiohttp.ClientSession,
    base: str,
    *,
    method: str = "POST",
    path: str | None = None,
    body: Any = MODE_A,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any] | None, Any]:
    """Send one request with the path exactly as given; answer status, JSON body, headers."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"workspace": WS, **JSON} if headers is None else headers
    url = URL(base + (path if path is not None else retry_path()), encoded=True)
    async with session.request(method, url, data=raw, headers=sent) as response:
        text = await response.read()
        parsed = json.loads(text) if text else None
        return response.status, parsed, response.headers


def changed(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``base`` with ``fields`` set; a field set to ``...`` is removed."""
    out = dict(base)
    for key, value in fields.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def task(**fields: Any) -> dict[str, Any]:
    return changed(MODE_A, task_retrys=[changed(MODE_A["task_retrys"][0], **fields)])


# -- validation: one request per rule -----------------------------------------------------

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("no workspace", {"headers": JSON}),
    ("empty workspace", {"headers": {"workspace": "", **JSON}}),
    ("no content type", {"headers": {"workspace": WS}}),
    ("text content type", {"headers": {"workspace": WS, "Content-Type": "text/plain"}}),
    (
        "latin-1 charset",
        {"headers": {"workspace": WS, "Content-Type": "application/json;charset=latin-1"}},
    ),
    ("not json", {"body": b"{not json"}),
    ("json array", {"body": [MODE_A]}),
    ("json string", {"body": "rerun"}),
    ("unknown field", {"body": changed(MODE_A, priority=1)}),
    ("no retry_location", {"body": changed(MODE_A, retry_location=...)}),
    ("bad retry_location", {"body": changed(MODE_A, retry_location="lastNode")}),
    ("specifiedNode without node", {"body": changed(MODE_A, retry_location="specifiedNode")}),
    ("node_name not a string", {"body": changed(MODE_A, node_name=3)}),
    ("node_name null", {"body": changed(MODE_A, node_name=None)}),
    ("ignore_obs_monitor null", {"body": changed(MODE_A, ignore_obs_monitor=None)}),
    ("no retry_task_version", {"body": changed(MODE_A, retry_task_version=...)}),
    ("bad retry_task_version", {"body": changed(MODE_A, retry_task_version="latest")}),
    ("ignore_obs_monitor string", {"body": changed(MODE_A, ignore_obs_monitor="true")}),
    ("ignore_obs_monitor int", {"body": changed(MODE_A, ignore_obs_monitor=1)}),
    ("modes mixed", {"body": changed(MODE_A, begin_time=1732608520000)}),
    ("modes mixed by concurrent", {"body": changed(MODE_A, concurrent=1)}),
    ("no mode", {"body": changed(MODE_A, task_retrys=...)}),
    ("task_retrys empty", {"body": changed(MODE_A, task_retrys=[])}),
    ("task_retrys object", {"body": changed(MODE_A, task_retrys=MODE_A["task_retrys"][0])}),
    ("task_retrys item not object", {"body": changed(MODE_A, task_retrys=[917567])}),
    ("task extra key", {"body": task(version=1)}),
    ("task missing key", {"body": task(submit_time=...)}),
    ("job_id boolean", {"body": task(job_id=True)}),
    ("job_id string", {"body": task(job_id="917567")}),
    ("job_id float", {"body": task(job_id=917567.0)}),
    ("job_id zero", {"body": task(job_id=0)}),
    ("job_id negative", {"body": task(job_id=-5)}),
    ("job_id over a long", {"body": task(job_id=2**63)}),
    ("job_id huge", {"body": task(job_id=99999999999999999999999)}),
    ("plan_time in seconds", {"body": task(plan_time=1732601580)}),
    ("plan_time 14 digits", {"body": task(plan_time=17326015800000)}),
    ("plan_time float", {"body": task(plan_time=1732601580000.0)}),
    ("submit_time boolean", {"body": task(submit_time=True)}),
    ("submit_time negative", {"body": task(submit_time=-1732239754684)}),
    ("begin_time missing", {"body": changed(MODE_B, begin_time=...)}),
    ("end_time missing", {"body": changed(MODE_B, end_time=...)}),
    ("begin_time string", {"body": changed(MODE_B, begin_time="1732608520000")}),
    ("end_time 12 digits", {"body": changed(MODE_B, end_time=173260852000)}),
    ("begin after end", {"body": changed(MODE_B, begin_time=1732612120001)}),
    ("concurrent 0", {"body": changed(MODE_B, concurrent=0)}),
    ("concurrent 129", {"body": changed(MODE_B, concurrent=129)}),
    ("concurrent boolean", {"body": changed(MODE_B, concurrent=True)}),
    ("concurrent string", {"body": changed(MODE_B, concurrent="2")}),
    ("jobs object", {"body": changed(MODE_B, jobs={"job_name": "a", "workspace_id": WS})}),
    ("jobs item string", {"body": changed(MODE_B, jobs=["a"])}),
    ("jobs item no workspace", {"body": changed(MODE_B, jobs=[{"job_name": "a"}])}),
    (
        "jobs item extra key",
        {"body": changed(MODE_B, jobs=[{"job_name": "a", "workspace_id": WS, "x": 1}])},
    ),
    (
        "jobs item empty name",
        {"body": changed(MODE_B, jobs=[{"job_name": "", "workspace_id": WS}])},
    ),
    ("jobs item int name", {"body": changed(MODE_B, jobs=[{"job_name": 5, "workspace_id": WS}])}),
    ("job name not utf-8", {"path": "/v2/p/factory/jobs/%FF%FE/instances/retry"}),
]
EXPECTED_CODE = {
    "no workspace": "DLF.0101",
    "empty workspace": "DLF.0101",
    "no content type": "DLF.0102",
    "text content type": "DLF.0102",
    "latin-1 charset": "DLF.0102",
    "not json": "DLF.0103",
    "json array": "DLF.0103",
    "json string": "DLF.0103",
}


@pytest.mark.parametrize(("case", "request_parts"), INVALID, ids=[case for case, _ in INVALID])
async def test_invalid_request_is_refused_with_400(
    case: str, request_parts: dict[str, Any]
) -> None:
    async with running() as (srv, session):
        status, body, headers = await call(session, srv.url, **request_parts)
    assert status == 400
    assert body is not None
    assert body["error_code"] == EXPECTED_CODE.get(case, "DLF.0100")
    assert body["error_msg"]
    assert headers["X-Request-Id"]
    assert srv.ledger == []


VALID: list[tuple[str, dict[str, Any]]] = [
    ("mode A", {"body": MODE_A}),
    ("mode B", {"body": MODE_B}),
    ("content type plain", {"headers": {"workspace": WS, "Content-Type": "application/json"}}),
    (
        "content type as the SDK",
        {"headers": {"workspace": WS, "Content-Type": "application/json;charset=utf-8"}},
    ),
    (
        "content type spaced and upper",
        {"headers": {"workspace": WS, "Content-Type": "Application/JSON; charset=UTF-8"}},
    ),
    (
        "specifiedNode with node",
        {"body": changed(MODE_A, retry_location="specifiedNode", node_name="n1")},
    ),
    (
        "firstNode, no ignore_obs_monitor",
        {"body": changed(MODE_A, retry_location="firstNode", ignore_obs_monitor=...)},
    ),
    ("job_id 1", {"body": task(job_id=1)}),
    ("job_id the largest long", {"body": task(job_id=2**63 - 1)}),
    ("mode B minimal", {"body": changed(MODE_B, jobs=..., concurrent=...)}),
    ("mode B empty jobs", {"body": changed(MODE_B, jobs=[])}),
    ("mode B begin equals end", {"body": changed(MODE_B, end_time=MODE_B["begin_time"])}),
    ("concurrent 1", {"body": changed(MODE_B, concurrent=1)}),
    ("concurrent 128", {"body": changed(MODE_B, concurrent=128)}),
    ("many tasks", {"body": changed(MODE_A, task_retrys=MODE_A["task_retrys"] * 1000)}),
]


@pytest.mark.parametrize(("case", "request_parts"), VALID, ids=[case for case, _ in VALID])
async def test_valid_request_is_accepted(case: str, request_parts: dict[str, Any]) -> None:
    async with running() as (srv, session):
        status, body, headers = await call(session, srv.url, **request_parts)
    assert (status, body) == (200, None), case
    assert len(srv.ledger) == 1
    assert srv.ledger[0].request_id == headers["X-Request-Id"]


ROUTES: list[tuple[str, str, int]] = [
    ("POST", "/v2/p/factory/jobs/j/instances", 404),
    ("POST", "/v2/p/factory/jobs/j/instances/retry/", 404),
    ("POST", "/v1/p/factory/jobs/j/instances/retry", 404),
    ("POST", "/v2/p/factory/jobs//instances/retry", 404),
    ("POST", "/", 404),
    ("GET", "/v2/p/factory/jobs/j/instances/retry", 405),
    ("PUT", "/v2/p/factory/jobs/j/instances/retry", 405),
    ("DELETE", "/v2/p/factory/jobs/j/instances/retry", 405),
    ("POST", "/v2/p/factory/jobs/j/instances/detail", 405),
]


@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
async def test_other_paths_and_methods(method: str, path: str, status: int) -> None:
    async with running() as (srv, session):
        got, body, headers = await call(session, srv.url, method=method, path=path)
    assert got == status
    assert body is not None
    assert body["error_code"] == "APIG.0101"
    assert headers["X-Request-Id"]
    if status == 405:
        assert headers["Allow"] in ("POST", "GET")


async def test_oversized_body_is_refused_with_413() -> None:
    huge = io.BytesIO(b"{" + b" " * 2**21 + b"}")
    async with (
        running() as (srv, session),
        session.post(srv.url + retry_path(), data=huge, headers={"workspace": WS, **JSON}) as r,
    ):
        assert r.status == 413
        assert (await r.json())["error_code"] == "APIG.0413"
        assert r.headers["X-Request-Id"]


def test_content_type_rule() -> None:
    assert json_content_type("application/json")
    assert json_content_type('application/json; charset="utf-8"')
    assert not json_content_type("application/json; boundary=x")
    assert not json_content_type("application/jsonx")
    assert not json_content_type(None)


# -- acceptance and the ledger --------------------------------------------------------------


async def test_both_modes_are_in_the_ledger_once_with_matching_chunk_ids(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.jsonl"
    async with running(FakeConfig(ledger_path=ledger_file)) as (srv, session):
        status_a, _, headers_a = await call(session, srv.url, body=MODE_A)
        status_b, _, headers_b = await call(
            session, srv.url, path=retry_path("ods_orders", "p1"), body=MODE_B
        )
    assert (status_a, status_b) == (200, 200)
    a, b = srv.ledger
    assert (a.mode, a.job_name, a.project_id, a.workspace) == ("A", "test_job_name", PROJECT, WS)
    assert (b.mode, b.job_name, b.project_id) == ("B", "ods_orders", "p1")
    assert a.body == MODE_A
    assert b.body == MODE_B
    assert a.chunk_id == chunk_id("test_job_name", WS, canonical_json(MODE_A))
    assert b.chunk_id == chunk_id("ods_orders", WS, canonical_json(MODE_B))
    assert (a.request_id, b.request_id) == (headers_a["X-Request-Id"], headers_b["X-Request-Id"])
    assert not a.dropped
    assert not b.dropped
    assert read_ledger(ledger_file) == [json.loads(a.to_json()), json.loads(b.to_json())]
    assert srv.stats.by_status == {200: 2}


async def test_ledger_file_is_written_as_requests_arrive(tmp_path: Path) -> None:
    ledger_file = tmp_path / "sub" / "ledger.jsonl"
    async with running(FakeConfig(ledger_path=ledger_file)) as (srv, session):
        await call(session, srv.url)
        assert [e["chunk_id"] for e in read_ledger(ledger_file)] == [srv.ledger[0].chunk_id]
        await call(session, srv.url)
        assert len(read_ledger(ledger_file)) == 2


def test_read_ledger_skips_a_torn_last_line_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_ledger(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_ledger(path)


@pytest.mark.parametrize(
    ("job", "encoded"),
    [
        ("a b/c%d", "a%20b%2Fc%25d"),
        ("a%20b", "a%2520b"),  # decoded once: the name keeps its literal %20
        ("数据作业", quote("数据作业", safe="")),
        ("plain-job_1.x~", "plain-job_1.x~"),
    ],
)
async def test_job_name_is_percent_decoded_exactly_once(job: str, encoded: str) -> None:
    async with running() as (srv, session):
        status, _, _ = await call(
            session, srv.url, path=f"/v2/{PROJECT}/factory/jobs/{encoded}/instances/retry"
        )
    assert status == 200
    assert srv.ledger[0].job_name == job
    assert srv.ledger[0].chunk_id == chunk_id(job, WS, canonical_json(MODE_A))


async def test_missing_jobs_answer_dlf_1000() -> None:
    config = FakeConfig(missing_jobs=frozenset({"gone"}))
    async with running(config) as (srv, session):
        direct = await call(session, srv.url, path=retry_path("gone"))
        listed = await call(
            session,
            srv.url,
            body=changed(MODE_B, jobs=[{"job_name": "gone", "workspace_id": WS}]),
        )
        other = await call(session, srv.url)
    for status, body, _ in (direct, listed):
        assert status == 400
        assert body == {"error_code": "DLF.1000", "error_msg": "Failed to find the job."}
    assert other[0] == 200
    assert len(srv.ledger) == 1


async def test_denied_jobs_answer_403() -> None:
    async with running(FakeConfig(deny_jobs=frozenset({"secret_job"}))) as (srv, session):
        status, body, _ = await call(session, srv.url, path=retry_path("secret_job"))
    assert status == 403
    assert body is not None
    assert body["error_code"] == "DLF.0003"
    assert srv.ledger == []


# -- authentication -----------------------------------------------------------------------

AK, SK = "HPUAEXAMPLEAK0000000", "example-secret-key-0000000000000000000000"


async def signed_call(
    session: aiohttp.ClientSession,
    base: str,
    creds: AkSk,
    wall: float,
    *,
    path: str | None = None,
    body: dict[str, Any] = MODE_A,
    tamper: Callable[[dict[str, str]], None] | None = None,
    project_header: str = PROJECT,
) -> tuple[int, dict[str, Any] | None, Any]:
    raw = canonical_json(body)
    target = path if path is not None else retry_path()
    headers = sign(
        "POST",
        base + target,
        {"workspace": WS, "X-Project-Id": project_header, **JSON},
        raw,
        creds,
        wall,
    )
    if tamper is not None:
        tamper(headers)
    return await call(session, base, path=target, body=raw, headers=headers)


async def test_aksk_signed_request_is_accepted() -> None:
    clock = FakeClock()
    async with running(FakeConfig(ak=AK, sk=SK, clock=clock)) as (srv, session):
        status, _, _ = await signed_call(session, srv.url, AkSk(AK, SK), clock.wall())
        encoded, _, _ = await signed_call(
            session, srv.url, AkSk(AK, SK), clock.wall(), path=retry_path("a b/ç")
        )
    assert (status, encoded) == (200, 200)
    assert [e.job_name for e in srv.ledger] == ["test_job_name", "a b/ç"]


@pytest.mark.parametrize(
    ("case", "creds", "shift", "tamper"),
    [
        ("wrong sk", AkSk(AK, "another-secret"), 0.0, None),
        ("unknown ak", AkSk("OTHERAK", SK), 0.0, None),
        ("date too old", AkSk(AK, SK), -901.0, None),
        ("body changed", AkSk(AK, SK), 0.0, lambda h: h.update(workspace="f" * 32)),
        ("no authorization", AkSk(AK, SK), 0.0, lambda h: h.pop("Authorization")),
    ],
)
async def test_bad_signature_is_refused_with_401(
    case: str,
    creds: AkSk,
    shift: float,
    tamper: Callable[[dict[str, str]], None] | None,
) -> None:
    clock = FakeClock()
    async with running(FakeConfig(ak=AK, sk=SK, clock=clock)) as (srv, session):
        status, body, headers = await signed_call(
            session, srv.url, creds, clock.wall() + shift, tamper=tamper
        )
    assert status == 401, case
    assert body is not None
    assert body["error_code"] == "APIG.0301"
    assert SK not in body["error_msg"]
    assert headers["X-Request-Id"]
    assert srv.ledger == []


async def test_token_auth() -> None:
    config = FakeConfig(token="iam-token-1")
    async with running(config) as (srv, session):
        good = await call(
            session, srv.url, headers={"workspace": WS, "X-Auth-Token": "iam-token-1", **JSON}
        )
        wrong = await call(
            session, srv.url, headers={"workspace": WS, "X-Auth-Token": "iam-token-2", **JSON}
        )
        missing = await call(session, srv.url)
    assert good[0] == 200
    for status, body, _ in (wrong, missing):
        assert status == 401
        assert body is not None
        assert body["error_code"] == "APIG.0301"
        assert "iam-token" not in body["error_msg"]
    assert len(srv.ledger) == 1


async def test_token_and_aksk_together_accept_either() -> None:
    clock = FakeClock()
    config = FakeConfig(ak=AK, sk=SK, token="tok", clock=clock)
    async with running(config) as (srv, session):
        by_token = await call(
            session, srv.url, headers={"workspace": WS, "X-Auth-Token": "tok", **JSON}
        )
        by_key = await signed_call(session, srv.url, AkSk(AK, SK), clock.wall())
        by_nothing = await call(session, srv.url)
    assert (by_token[0], by_key[0], by_nothing[0]) == (200, 200, 401)


@pytest.mark.parametrize("auth", ["aksk", "token", "none"])
async def test_revoke_after_refuses_every_request_after_the_first_n_that_passed(
    auth: str,
) -> None:
    # A key disabled or a token expired mid-run: the first N pass, every later one is 401,
    # those that fail on their own merits (a wrong SK) not counted among the N.
    clock = FakeClock()
    creds = {"aksk": {"ak": AK, "sk": SK}, "token": {"token": "tok"}, "none": {}}[auth]
    config = FakeConfig(**creds, revoke_after=2, clock=clock)  # type: ignore[arg-type]

    async def one(session: aiohttp.ClientSession, url: str, *, good: bool = True) -> Any:
        if auth == "aksk":
            key = AkSk(AK, SK if good else "another-secret")
            return await signed_call(session, url, key, clock.wall())
        token = "tok" if good or auth == "none" else "other"
        return await call(session, url, headers={"workspace": WS, "X-Auth-Token": token, **JSON})

    async with running(config) as (srv, session):
        answers = [await one(session, srv.url)]
        if auth != "none":
            answers.append(await one(session, srv.url, good=False))
        answers += [await one(session, srv.url) for _ in range(3)]
    expected = [200, 200, 401, 401] if auth == "none" else [200, 401, 200, 401, 401]
    assert [status for status, _, _ in answers] == expected
    _, refused, _ = answers[-1]
    assert refused["error_code"] == "APIG.0301"
    assert "expired" in refused["error_msg"]
    assert len(srv.ledger) == 2


@pytest.mark.parametrize(("skew", "status"), [(-1200.0, 401), (-600.0, 200), (1200.0, 401)])
async def test_clock_skew_checks_signatures_against_the_gateways_time_and_tells_it(
    skew: float, status: int
) -> None:
    # The client signs with this machine's time; the gateway's runs `skew` seconds apart.
    clock = FakeClock()
    config = FakeConfig(ak=AK, sk=SK, clock=clock, clock_skew=skew)
    async with running(config) as (srv, session):
        answer, refused, headers = await signed_call(session, srv.url, AkSk(AK, SK), clock.wall())
    assert answer == status
    if status == 401:
        assert refused is not None
        assert "seconds away from the server time" in refused["error_msg"]
    told = parsedate_to_datetime(headers["Date"]).timestamp()
    assert told == int(clock.wall() + skew)


async def test_signed_request_with_another_project_in_x_project_id_is_refused() -> None:
    clock = FakeClock()
    async with running(FakeConfig(ak=AK, sk=SK, clock=clock)) as (srv, session):
        other = await signed_call(
            session, srv.url, AkSk(AK, SK), clock.wall(), project_header="f" * 32
        )
        same = await signed_call(session, srv.url, AkSk(AK, SK), clock.wall())
    # Validly signed (a bad signature would be 401), but scoped to another project.
    assert other[0] == 403
    assert other[1] is not None
    assert other[1]["error_code"] == "DLF.0004"
    assert other[2]["X-Request-Id"]
    assert same[0] == 200
    assert [e.request_id for e in srv.ledger] == [same[2]["X-Request-Id"]]


def detail_path(project: str = PROJECT) -> str:
    return f"/v2/{project}/factory/jobs/test_job_name/instances/detail"


@pytest.mark.parametrize(
    ("api", "project_header", "status"),
    [
        ("retry", None, 200),
        ("retry", PROJECT, 200),
        ("retry", "another", 403),
        ("retry", PROJECT.upper(), 403),
        ("retry", "", 403),
        ("detail", None, 200),
        ("detail", PROJECT, 200),
        ("detail", "another", 403),
    ],
)
async def test_x_project_id_must_be_the_path_project_when_given(
    api: str, project_header: str | None, status: int
) -> None:
    headers = {"workspace": WS, **JSON}
    if project_header is not None:
        headers["X-Project-Id"] = project_header
    async with running() as (srv, session):
        if api == "retry":
            got, body, _ = await call(session, srv.url, headers=headers)
        else:
            got, body, _ = await call(
                session, srv.url, method="GET", path=detail_path(), body=b"", headers=headers
            )
    assert got == status
    if status == 403:
        assert body is not None
        assert body["error_code"] == "DLF.0004"
        assert srv.ledger == []
    elif api == "retry":
        assert len(srv.ledger) == 1
    else:
        assert body == {"total": 0, "instances": []}


async def test_x_project_id_is_compared_with_the_decoded_path_project() -> None:
    headers = {"workspace": WS, "X-Project-Id": "a b", **JSON}
    async with running() as (srv, session):
        status, _, _ = await call(
            session, srv.url, path=retry_path(project="a%20b"), headers=headers
        )
    assert status == 200
    assert srv.ledger[0].project_id == "a b"


def test_config_refuses_half_a_key_pair() -> None:
    with pytest.raises(ValueError, match="AK"):
        FakeConfig(ak="x")
    with pytest.raises(ValueError, match="p5xx"):
        FakeConfig(p5xx=1.5)
    assert "hidden-sk" not in repr(FakeConfig(ak="a", sk="hidden-sk", token="hidden-token"))


# -- faults -------------------------------------------------------------------------------


async def test_rate_limit_is_exact_on_a_fake_clock() -> None:
    clock = FakeClock()
    async with running(FakeConfig(rate_limit=10, clock=clock)) as (srv, session):
        statuses = []
        for step in (0.0, 0.0, 0.1, 0.05, 0.05, 0.0, 1.0, 0.0):
            clock.advance(step)
            status, body, headers = await call(session, srv.url)
            statuses.append(status)
            if status == 429:
                assert body == {
                    "error_code": "APIG.0308",
                    "error_msg": throttle_message(10),
                }
                assert "limit:10,time:1 second" in body["error_msg"]
                assert headers["Retry-After"] == "1"
    assert statuses == [200, 429, 200, 429, 200, 429, 200, 429]
    assert len(srv.ledger) == 4
    assert srv.stats.arrivals == pytest.approx(
        [1000.0, 1000.0, 1000.1, 1000.15, 1000.2, 1000.2, 1001.2, 1001.2]
    )


async def test_rate_limit_burst_and_no_retry_after() -> None:
    clock = FakeClock()
    config = FakeConfig(rate_limit=2, rate_burst=3, retry_after=False, clock=clock)
    async with running(config) as (srv, session):
        answers = [await call(session, srv.url) for _ in range(4)]
        clock.advance(0.5)
        answers.append(await call(session, srv.url))
    assert [a[0] for a in answers] == [200, 200, 200, 429, 200]
    assert "Retry-After" not in answers[3][2]
    assert srv.stats.by_code == {"APIG.0308": 1}


def test_token_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    bucket = TokenBucket(rate=4, burst=2)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.25)  # one token back after 1/4 s
    assert not bucket.take(0.25)
    assert bucket.retry_after() == 1
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]  # capped at 2
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0)


async def test_auth_is_checked_before_the_rate_limit() -> None:
    clock = FakeClock()
    good = {"workspace": WS, "X-Auth-Token": "tok", **JSON}
    bad = {"workspace": WS, "X-Auth-Token": "nope", **JSON}
    async with running(FakeConfig(token="tok", rate_limit=1, clock=clock)) as (srv, session):
        first = await call(session, srv.url, headers=good)
        refused = await call(session, srv.url, headers=bad)
        throttled = await call(session, srv.url, headers=good)
    assert (first[0], refused[0], throttled[0]) == (200, 401, 429)


def expected_faults(seed: int, fault: str, p: float, n: int) -> list[bool]:
    """The first ``n`` rolls of one fault's die. Spelled out here rather than imported, so that
    a change of derivation (which changes every seeded run) fails this test."""
    rng = random.Random(f"{seed}/{fault}")
    return [rng.random() < p for _ in range(n)]


async def answers_of(config: FakeConfig, n: int) -> tuple[list[int | None], list[LedgerEntry]]:
    """Send ``n`` mode-A requests one after another: each status (None if dropped), the ledger."""
    statuses: list[int | None] = []
    async with running(config) as (srv, session):
        for _ in range(n):
            try:
                statuses.append((await call(session, srv.url))[0])
            except aiohttp.ServerDisconnectedError:
                statuses.append(None)
    return statuses, srv.ledger


async def test_random_429_follows_the_seed() -> None:
    async with running(FakeConfig(p429=0.4, seed=7)) as (srv, session):
        answers = [await call(session, srv.url) for _ in range(30)]
    throttled = [status == 429 for status, _, _ in answers]
    assert throttled == expected_faults(7, "p429", 0.4, 30)
    assert 0 < sum(throttled) < 30
    assert all(
        body and body["error_code"] == "APIG.0308" for status, body, _ in answers if status == 429
    )
    assert all(h["Retry-After"] == "1" for status, _, h in answers if status == 429)
    assert len(srv.ledger) == throttled.count(False)


async def test_random_5xx_follows_the_seed_and_is_not_acted_on() -> None:
    async with running(FakeConfig(p5xx=0.3, seed=11)) as (srv, session):
        answers = [await call(session, srv.url) for _ in range(30)]
    unavailable = [status == 503 for status, _, _ in answers]
    assert unavailable == expected_faults(11, "p5xx", 0.3, 30)
    assert all(
        body == {"error_code": "APIG.0202", "error_msg": "Backend unavailable"}
        for status, body, _ in answers
        if status == 503
    )
    assert len(srv.ledger) == unavailable.count(False)
    assert srv.stats.by_status[503] == sum(unavailable)


async def test_latency_is_waited_on_the_server_clock_after_acceptance() -> None:
    clock = FakeClock()
    async with running(FakeConfig(latency_ms=250, clock=clock)) as (srv, session):
        await call(session, srv.url)
        await call(session, srv.url, body={"bad": 1})  # refusals are answered at once
    assert clock.sleeps == [0.25]
    assert srv.stats.by_status == {200: 1, 400: 1}


async def test_drop_after_accept_closes_the_connection_without_an_answer() -> None:
    async with running(FakeConfig(drop_after_accept=1.0)) as (srv, session):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, srv.url)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, srv.url, body=MODE_B)
        refused = await call(session, srv.url, body={"bad": 1})  # only accepted ones drop
    assert refused[0] == 400
    assert [(e.mode, e.dropped) for e in srv.ledger] == [("A", True), ("B", True)]
    assert srv.stats.dropped == 2
    assert srv.stats.by_status == {400: 1}


async def test_drop_after_accept_follows_the_seed() -> None:
    statuses, ledger = await answers_of(FakeConfig(drop_after_accept=0.5, seed=3), 12)
    dropped = [status is None for status in statuses]
    assert dropped == expected_faults(3, "drop_after_accept", 0.5, 12)
    assert [e.dropped for e in ledger] == dropped


async def test_timeout_after_accept_starts_the_rerun_and_answers_504() -> None:
    statuses, ledger = await answers_of(FakeConfig(timeout_after_accept=0.5, seed=5), 12)
    late = [status == 504 for status in statuses]
    assert late == expected_faults(5, "timeout_after_accept", 0.5, 12)
    assert 0 < sum(late) < 12
    assert len(ledger) == 12  # every one was accepted, and is in the ledger
    assert [e.status for e in ledger] == statuses
    assert not any(e.dropped for e in ledger)
    async with running(FakeConfig(timeout_after_accept=1.0)) as (srv, session):
        status, body, headers = await call(session, srv.url)
    assert (status, body) == (504, {"error_code": "APIG.0201", "error_msg": "Backend timeout"})
    assert headers["X-Request-Id"] == srv.ledger[0].request_id
    # Rolled only for what was not dropped: a dropped rerun has no status.
    _, both = await answers_of(FakeConfig(drop_after_accept=1.0, timeout_after_accept=1.0), 2)
    assert [(e.dropped, e.status) for e in both] == [(True, None), (True, None)]


async def test_turning_one_fault_on_does_not_change_what_another_one_rolls() -> None:
    alone, _ = await answers_of(FakeConfig(p5xx=0.3, seed=11), 40)
    both, _ = await answers_of(FakeConfig(p429=0.4, p5xx=0.3, seed=11), 40)
    # p429 is rolled for every request, p5xx only for those p429 let through: these see the
    # 5xx die's sequence from its start, as if p429 were off.
    assert [status == 429 for status in both] == expected_faults(11, "p429", 0.4, 40)
    unavailable = [status == 503 for status in both if status != 429]
    assert unavailable == [status == 503 for status in alone][: len(unavailable)]
    assert 429 in both
    assert 503 in both

    # The drop die is rolled only for accepted reruns, whatever refused the others.
    _, drops_alone = await answers_of(FakeConfig(drop_after_accept=0.5, seed=3), 30)
    statuses, drops_with_5xx = await answers_of(
        FakeConfig(drop_after_accept=0.5, p5xx=0.3, seed=3), 30
    )
    dropped = [e.dropped for e in drops_with_5xx]
    assert dropped == [e.dropped for e in drops_alone][: len(dropped)]
    assert 503 in statuses
    assert None in statuses


async def test_stats_count_requests_and_in_flight() -> None:
    async with running(FakeConfig(missing_jobs=frozenset({"gone"}))) as (srv, session):
        await call(session, srv.url)
        await call(session, srv.url, path=retry_path("gone"))
        await call(session, srv.url, path="/nothing")
    stats = srv.stats
    assert stats.requests == 3
    assert len(stats.arrivals) == 3
    assert stats.by_status == {200: 1, 400: 1, 404: 1}
    assert stats.by_code == {"DLF.1000": 1, "APIG.0101": 1}
    assert (stats.inflight, stats.max_inflight) == (0, 1)
    assert srv.accepted == 1


# -- the blocking entry point -------------------------------------------------------------


def test_serve_prints_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "from pathlib import Path; from bulkrerun.fake import FakeConfig, serve; "
        f"serve(FakeConfig(ledger_path=Path({str(tmp_path / 'l.jsonl')!r})), '127.0.0.1', 0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake service listening on http://127.0.0.1:")
        url = line.split()[-1]
        request = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, urllib.request as u; "
                "r = u.Request(sys.argv[1], data=sys.argv[2].encode(), "
                "headers={'workspace': 'w', 'Content-Type': 'application/json'}); "
                "print(u.urlopen(r).status)",
                url + retry_path(),
                json.dumps(MODE_A),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert request.stdout.strip() == "200", request.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "1 request, 1 rerun accepted" in err
    assert len(read_ledger(tmp_path / "l.jsonl")) == 1
