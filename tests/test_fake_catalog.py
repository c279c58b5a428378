"""The fake service's instance catalog: the list API and reruns moving through their states.

Times move on a FakeClock injected into the server, so a rerun goes waiting -> running ->
success exactly when the test advances the clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulkrerun.clock import FakeClock
from bulkrerun.fake import DEMO_ANCHOR_MS, Catalog, FakeConfig, FakeServer, JobSpec, Outage
from bulkrerun.fake.catalog import Instances
from bulkrerun.fake.validate import ListQuery

pytestmark = pytest.mark.anyio

WS = "62fbba734e634c5087656fc3ff7adf34"
HOUR = 3_600_000
MINUTE = 60_000
DAY = 24 * HOUR
T0 = 1_732_550_400_000  # 2024-11-26T00:00:00+08:00
JOB_A = JobSpec("ods_a", 1001, 60)
JOB_B = JobSpec("dwd_b", 1002, 15)
INSTANCE_FIELDS = {
    "job_name",
    "status",
    "job_instance_name",
    "plan_time",
    "start_time",
    "end_time",
    "execute_time",
    "instance_id",
    "instance_type",
    "submit_time",
    "job_id",
    "version",
    "force_success",
    "ignore_success",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def small_catalog(**overrides: Any) -> Catalog:
    """Two jobs over 30 hours from T0; every instance planned 02:00..04:00 failed."""
    fields: dict[str, Any] = {
        "jobs": (JOB_A, JOB_B),
        "start_ms": T0,
        "now_ms": T0 + DAY + 6 * HOUR,
        "outage": Outage(T0 + 2 * HOUR, T0 + 4 * HOUR),
        "seed": 5,
    }
    fields.update(overrides)
    return Catalog(**fields)


@asynccontextmanager
async def running(
    catalog: Catalog | None, clock: FakeClock | None = None
) -> AsyncIterator[tuple[FakeServer, aiohttp.ClientSession]]:
    config = FakeConfig(catalog=catalog, clock=clock or FakeClock())
    async with FakeServer(config) as srv, aiohttp.ClientSession() as session:
        yield srv, session


async def listing(
    session: aiohttp.ClientSession,
    srv: FakeServer,
    job: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    url = f"{srv.url}/v2/proj/factory/jobs/{job}/instances/detail"
    query = {k: str(v) for k, v in params.items()}
    sent = {"workspace": WS} if headers is None else headers
    async with session.get(url, params=query, headers=sent) as response:
        assert response.headers["X-Request-Id"]
        return response.status, await response.json()


async def rerun(
    session: aiohttp.ClientSession, srv: FakeServer, job: str, **body: Any
) -> tuple[int, Any]:
    full = {"retry_location": "errorNode", "retry_task_version": "original_version", **body}
    url = f"{srv.url}/v2/proj/factory/jobs/{job}/instances/retry"
    async with session.post(url, json=full, headers={"workspace": WS}) as response:
        text = await response.read()
        return response.status, json.loads(text) if text else None


def tasks(job: JobSpec, *plan_times: int) -> list[dict[str, int]]:
    return [{"job_id": job.job_id, "plan_time": p, "submit_time": p + 5_000} for p in plan_times]


# -- the catalog as a value ---------------------------------------------------------------


def test_plan_times_are_multiples_of_the_period_inside_the_span() -> None:
    catalog = small_catalog(start_ms=T0 + 7 * MINUTE, now_ms=T0 + HOUR)
    assert list(catalog.plan_times(JOB_B)) == [T0 + 15 * MINUTE, T0 + 30 * MINUTE, T0 + 45 * MINUTE]
    assert list(catalog.plan_times(JOB_A)) == []


def test_demo_catalog_is_realistic() -> None:
    catalog = Catalog.demo()
    assert len(catalog.jobs) == 12
    assert {job.name.split("_")[0] for job in catalog.jobs} == {"ods", "dwd", "dws"}
    assert {job.period_min for job in catalog.jobs} == {15, 60}
    assert catalog.now_ms == DEMO_ANCHOR_MS
    assert catalog.outage is not None
    assert catalog.outage.end_ms - catalog.outage.start_ms == 10 * HOUR
    live = Instances(catalog, FakeClock())
    failed = 0
    for job in catalog.jobs:
        query = ListQuery(WS, 1000, 0, catalog.start_ms, catalog.now_ms, "fail", None, False, False)
        result = live.query(job.name, query)
        assert isinstance(result, dict)
        assert all(catalog.outage.covers(job.name, i["plan_time"]) for i in result["instances"])
        failed += result["total"]
    assert failed == 300


def test_catalog_refuses_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="unique"):
        small_catalog(jobs=(JOB_A, JobSpec("ods_a", 7, 60)))
    with pytest.raises(ValueError, match="rerun_fail_rate"):
        small_catalog(rerun_fail_rate=2.0)
    with pytest.raises(ValueError, match="unknown jobs"):
        small_catalog(outage=Outage(T0, T0 + HOUR, frozenset({"nope"})))


def test_catalog_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "catalog.toml"
    toml.write_text(
        f"start_ms = {T0}\nnow_ms = {T0 + DAY + 6 * HOUR}\nseed = 5\n"
        f"outage = {{ start_ms = {T0 + 2 * HOUR}, end_ms = {T0 + 4 * HOUR} }}\n"
        '[[jobs]]\nname = "ods_a"\njob_id = 1001\nperiod_min = 60\n'
        '[[jobs]]\nname = "dwd_b"\njob_id = 1002\nperiod_min = 15\n'
    )
    assert Catalog.from_file(toml) == small_catalog()
    as_json = tmp_path / "catalog.json"
    as_json.write_text(
        json.dumps(
            {
                "start_ms": T0,
                "now_ms": T0 + DAY + 6 * HOUR,
                "seed": 5,
                "outage": {"start_ms": T0 + 2 * HOUR, "end_ms": T0 + 4 * HOUR},
                "jobs": [
                    {"name": "ods_a", "job_id": 1001, "period_min": 60},
                    {"name": "dwd_b", "job_id": 1002, "period_min": 15},
                ],
            }
        )
    )
    assert Catalog.from_file(as_json) == small_catalog()
    bad = tmp_path / "bad.toml"
    bad.write_text(f"start_ms = {T0}\nnow_ms = {T0}\njobs = []\ncolour = 'red'\n")
    with pytest.raises(ValueError, match=r"bad\.toml.*colour"):
        Catalog.from_file(bad)


# -- the list API -------------------------------------------------------------------------


async def test_list_filters_by_status_and_sorts_by_plan_time() -> None:
    async with running(small_catalog()) as (srv, session):
        status, failed = await listing(
            session,
            srv,
            "dwd_b",
            status="fail",
            min_plan_time=T0,
            max_plan_time=T0 + DAY,
            limit=100,
        )
        _, succeeded = await listing(
            session,
            srv,
            "dwd_b",
            status="success",
            min_plan_time=T0,
            max_plan_time=T0 + DAY,
            limit=1,
        )
    assert status == 200
    assert failed["total"] == 8  # 02:00 .. 03:45 every 15 minutes
    plan_times = [i["plan_time"] for i in failed["instances"]]
    assert plan_times == [T0 + 2 * HOUR + k * 15 * MINUTE for k in range(8)]
    first = failed["instances"][0]
    assert set(first) == INSTANCE_FIELDS
    assert (first["job_name"], first["job_id"], first["status"]) == ("dwd_b", 1002, "fail")
    assert first["plan_time"] < first["submit_time"] < first["start_time"] < first["end_time"]
    assert first["execute_time"] == first["end_time"] - first["start_time"]
    assert succeeded["total"] == 97 - 8  # 96 a day, both bounds included, minus the outage
    assert len(succeeded["instances"]) == 1


async def test_list_pages_concatenate_to_the_whole_window() -> None:
    window: dict[str, Any] = {"min_plan_time": T0, "max_plan_time": T0 + 10 * HOUR}
    async with running(small_catalog()) as (srv, session):
        _, whole = await listing(session, srv, "ods_a", limit=1000, **window)
        pages = [
            await listing(session, srv, "ods_a", limit=3, offset=offset, **window)
            for offset in range(0, 12, 3)
        ]
    assert whole["total"] == 11  # 00:00 .. 10:00 inclusive
    assert [p[1]["total"] for p in pages] == [11] * 4
    paged = [i for _, page in pages for i in page["instances"]]
    assert paged == whole["instances"]
    assert [i["plan_time"] for i in paged] == sorted(i["plan_time"] for i in paged)


async def test_list_defaults_to_today_in_china_and_ten_items() -> None:
    async with running(small_catalog()) as (srv, session):
        _, today = await listing(session, srv, "dwd_b")
    # The catalog's now is 06:00 on the second day: today is 00:00 .. 05:45, 24 instances.
    assert today["total"] == 24
    assert len(today["instances"]) == 10
    assert today["instances"][0]["plan_time"] == T0 + DAY


async def test_list_of_other_instance_types_is_empty() -> None:
    async with running(small_catalog()) as (srv, session):
        _, manual = await listing(session, srv, "ods_a", instance_type=2, min_plan_time=T0)
        _, normal = await listing(session, srv, "ods_a", instance_type=0, min_plan_time=T0)
        _, forced = await listing(session, srv, "ods_a", force_success="true", min_plan_time=T0)
    assert manual == {"total": 0, "instances": []}
    assert normal["total"] == 30
    assert forced["total"] == 0


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": 0}, "DLF.0100"),
        ({"limit": 1001}, "DLF.0100"),
        ({"limit": "ten"}, "DLF.0100"),
        ({"offset": -1}, "DLF.0100"),
        ({"min_plan_time": "1e12"}, "DLF.0100"),
        ({"status": "broken"}, "DLF.0100"),
        ({"force_success": "maybe"}, "DLF.0100"),
        ({"min_plan_time": T0 + DAY + 6 * HOUR - 31 * DAY - 1}, "DLF.0104"),
    ],
)
async def test_list_refuses_bad_queries(params: dict[str, Any], code: str) -> None:
    async with running(small_catalog()) as (srv, session):
        status, body = await listing(session, srv, "ods_a", **params)
    assert (status, body["error_code"]) == (400, code)


async def test_list_accepts_exactly_one_month_back() -> None:
    async with running(small_catalog()) as (srv, session):
        status, body = await listing(
            session, srv, "ods_a", min_plan_time=T0 + DAY + 6 * HOUR - 31 * DAY
        )
    assert (status, body["total"]) == (200, 30)


async def test_list_needs_the_workspace_and_a_known_job() -> None:
    async with running(small_catalog()) as (srv, session):
        no_workspace = await listing(session, srv, "ods_a", headers={})
        unknown = await listing(session, srv, "nope")
    assert no_workspace == (
        400,
        {"error_code": "DLF.0101", "error_msg": "The workspace header is missing or empty."},
    )
    assert unknown == (400, {"error_code": "DLF.1000", "error_msg": "Failed to find the job."})


async def test_list_without_a_catalog_is_empty() -> None:
    async with running(None) as (srv, session):
        assert await listing(session, srv, "any") == (200, {"total": 0, "instances": []})


# -- reruns -------------------------------------------------------------------------------


async def test_mode_a_rerun_goes_waiting_running_success_on_the_server_clock() -> None:
    clock = FakeClock()
    plan = T0 + 2 * HOUR
    window: dict[str, Any] = {"min_plan_time": plan, "max_plan_time": plan}

    async def seen() -> dict[str, Any]:
        _, result = await listing(session, srv, "ods_a", **window)
        assert result["total"] == 1
        instance: dict[str, Any] = result["instances"][0]
        return instance

    async with running(small_catalog(), clock) as (srv, session):
        assert (await seen())["status"] == "fail"
        assert await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, plan)) == (200, None)
        submit = int(clock.wall() * 1000)
        waiting = await seen()
        clock.advance(0.2)
        running_ = await seen()
        clock.advance(0.5)
        done = await seen()
    assert (waiting["status"], waiting["submit_time"], waiting["start_time"]) == (
        "waiting",
        submit,
        0,
    )
    assert (running_["status"], running_["start_time"], running_["end_time"]) == (
        "running",
        submit + 200,
        0,
    )
    assert (done["status"], done["end_time"], done["execute_time"]) == (
        "success",
        submit + 700,
        500,
    )
    assert srv.instances is not None
    assert srv.instances.rerun_count("ods_a", plan) == 1
    assert srv.instances.rerun_count("ods_a", plan + HOUR) == 0


async def test_with_a_list_lag_a_rerun_shows_in_the_list_only_that_late() -> None:
    # A service slow to list: until an accepted rerun is list_lag_s old, the list shows the
    # run before it (the original, then the previous rerun), on the server clock.
    clock = FakeClock()
    plan = T0 + 2 * HOUR
    window: dict[str, Any] = {"min_plan_time": plan, "max_plan_time": plan}

    async def seen() -> tuple[str, int]:
        _, result = await listing(session, srv, "ods_a", **window)
        instance = result["instances"][0]
        return instance["status"], instance["submit_time"]

    async with running(small_catalog(list_lag_s=10.0), clock) as (srv, session):
        original = await seen()
        assert await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, plan)) == (200, None)
        first = int(clock.wall() * 1000)
        clock.advance(9.9)
        assert await seen() == original
        clock.advance(0.1)
        assert await seen() == ("success", first)
        assert await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, plan)) == (200, None)
        clock.advance(5.0)
        assert await seen() == ("success", first)  # the first rerun, not yet the second
        clock.advance(5.0)
        assert (await seen())[1] == first + 10_000
        assert srv.instances is not None
        assert srv.instances.rerun_count("ods_a", plan) == 2
    assert original[0] == "fail"
    with pytest.raises(ValueError, match="list_lag_s"):
        small_catalog(list_lag_s=-1.0)


async def test_failing_reruns_end_in_fail() -> None:
    clock = FakeClock()
    plan = T0 + 3 * HOUR
    async with running(small_catalog(rerun_fail_rate=1.0), clock) as (srv, session):
        await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, plan))
        clock.advance(1.0)
        _, result = await listing(session, srv, "ods_a", min_plan_time=plan, max_plan_time=plan)
    assert result["instances"][0]["status"] == "fail"
    assert result["instances"][0]["submit_time"] == int((clock.wall() - 1.0) * 1000)


async def test_rerun_failures_follow_the_seed() -> None:
    plans = [T0 + k * 15 * MINUTE for k in range(40)]
    outcomes = []
    for _ in range(2):
        clock = FakeClock()
        async with running(small_catalog(rerun_fail_rate=0.5), clock) as (srv, session):
            await rerun(session, srv, "dwd_b", task_retrys=tasks(JOB_B, *plans))
            clock.advance(1.0)
            _, result = await listing(
                session, srv, "dwd_b", min_plan_time=T0, max_plan_time=plans[-1], limit=100
            )
        outcomes.append([i["status"] for i in result["instances"]])
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count("fail") < 40


async def test_mode_a_refuses_unknown_instances_and_applies_nothing() -> None:
    good, off_grid = T0 + 2 * HOUR, T0 + 2 * HOUR + 1
    async with running(small_catalog()) as (srv, session):
        off = await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, good, off_grid))
        wrong_id = await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_B, good))
        future = await rerun(session, srv, "ods_a", task_retrys=tasks(JOB_A, T0 + 2 * DAY))
        unknown_job = await rerun(session, srv, "nope", task_retrys=tasks(JOB_A, good))
    for status, body in (off, wrong_id, future):
        assert status == 400
        assert body["error_code"] == "DLF.1001"
    assert unknown_job == (400, {"error_code": "DLF.1000", "error_msg": "Failed to find the job."})
    assert srv.instances is not None
    assert srv.instances.rerun_count("ods_a", good) == 0
    assert srv.ledger == []


async def test_mode_b_reruns_the_window_inclusive_across_jobs_concurrent_at_a_time() -> None:
    clock = FakeClock()
    begin, end = T0 + 2 * HOUR, T0 + 3 * HOUR
    body = {
        "begin_time": begin,
        "end_time": end,
        "jobs": [{"job_name": "dwd_b", "workspace_id": WS}],
        "concurrent": 2,
    }

    async def statuses(job: str) -> dict[int, str]:
        _, result = await listing(
            session, srv, job, min_plan_time=begin - HOUR, max_plan_time=end + HOUR, limit=100
        )
        return {i["plan_time"]: i["status"] for i in result["instances"]}

    async with running(small_catalog(), clock) as (srv, session):
        assert await rerun(session, srv, "ods_a", **body) == (200, None)
        clock.advance(0.2)
        a_first, b_first = await statuses("ods_a"), await statuses("dwd_b")
        clock.advance(0.5 * 3 + 0.5)  # seven instances, two at a time: four rounds
        a_last, b_last = await statuses("ods_a"), await statuses("dwd_b")
    # In plan-time order: a@02:00 and b@02:00 run first; the others wait for a slot.
    assert a_first[begin] == "running"
    assert b_first[begin] == "running"
    assert b_first[begin + 15 * MINUTE] == "waiting"
    assert a_first[end] == "waiting"
    assert a_first[begin - HOUR] == "success"  # outside the window: untouched
    assert b_last[end + 15 * MINUTE] == "fail"  # in the outage but not the window: left failed
    assert {p: s for p, s in a_last.items() if begin <= p <= end} == {
        begin: "success",
        end: "success",
    }
    assert all(s == "success" for p, s in b_last.items() if begin <= p <= end)
    assert srv.instances is not None
    assert srv.instances.rerun_count("dwd_b", end) == 1
    assert srv.instances.rerun_count("dwd_b", end + 15 * MINUTE) == 0
    assert srv.instances.rerun_count("dwd_b", begin - 15 * MINUTE) == 0


async def test_mode_b_with_an_unknown_listed_job_is_refused() -> None:
    async with running(small_catalog()) as (srv, session):
        answer = await rerun(
            session,
            srv,
            "ods_a",
            begin_time=T0,
            end_time=T0 + HOUR,
            jobs=[{"job_name": "ghost", "workspace_id": WS}],
        )
    assert answer == (400, {"error_code": "DLF.1000", "error_msg": "Failed to find the job."})
    assert srv.ledger == []
