"""The official Huawei Cloud Python SDK, unchanged, against the fake service.

The SDK is the reference peer: if its ``DataArtsStudioClient`` is accepted with the right key
pair and refused with a wrong one, the fake's routing, validation and signature check agree
with what real clients send. The SDK is synchronous, so each call runs in a worker thread
while the server runs on the test's event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkdataartsstudio.v1 import (
    DataArtsStudioClient,
    ListFactoryJobInstancesByNameRequest,
    RetryFactoryJobInstanceBody,
    RetryFactoryJobInstanceBodyJobs,
    RetryFactoryJobInstanceBodyTaskRetrys,
    RetryFactoryJobInstanceRequest,
)

from bulkrerun.chunk import canonical_json, chunk_id
from bulkrerun.fake import DEMO_ANCHOR_MS, Catalog, FakeConfig, FakeServer

pytestmark = [
    pytest.mark.anyio,
    # The SDK's signer dates requests with datetime.utcnow(), deprecated since Python 3.12:
    # the SDK's warning, not ours.
    pytest.mark.filterwarnings(
        "ignore:datetime.datetime.utcnow:DeprecationWarning:huaweicloudsdkcore"
    ),
]

AK, SK = "HPUAEXAMPLEAK0000001", "example-secret-key-1111111111111111111111"
PROJECT = "62099355b894428e8916573ae635f1f9"
WS = "62fbba734e634c5087656fc3ff7adf34"
HOUR = 3_600_000
OUTAGE_PLAN = DEMO_ANCHOR_MS - 20 * HOUR  # inside the demo catalog's outage
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(url: str, sk: str = SK) -> Any:
    credentials = BasicCredentials(AK, sk, PROJECT)
    return (
        DataArtsStudioClient.new_builder()
        .with_credentials(credentials)
        .with_endpoints([url])
        .build()
    )


async def in_thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


def mode_a_request(job_id: int) -> Any:
    body = RetryFactoryJobInstanceBody(
        retry_location="errorNode",
        retry_task_version="original_version",
        ignore_obs_monitor=True,
        task_retrys=[
            RetryFactoryJobInstanceBodyTaskRetrys(
                job_id=job_id, plan_time=OUTAGE_PLAN, submit_time=OUTAGE_PLAN + 7_000
            )
        ],
    )
    return RetryFactoryJobInstanceRequest(
        job_name="ods_orders", workspace=WS, x_project_id=PROJECT, body=body
    )


def mode_b_request() -> Any:
    body = RetryFactoryJobInstanceBody(
        retry_location="firstNode",
        retry_task_version="current_version",
        ignore_obs_monitor=False,
        begin_time=OUTAGE_PLAN,
        end_time=OUTAGE_PLAN + HOUR - 1,
        jobs=[RetryFactoryJobInstanceBodyJobs(job_name="dwd_orders", workspace_id=WS)],
        concurrent=4,
    )
    return RetryFactoryJobInstanceRequest(
        job_name="ods_orders", workspace=WS, x_project_id=PROJECT, body=body
    )


def demo_config(**fields: Any) -> FakeConfig:
    return FakeConfig(ak=AK, sk=SK, catalog=Catalog.demo(), **fields)


async def test_sdk_retry_in_both_modes_is_accepted() -> None:
    catalog = Catalog.demo()
    job_id = next(job.job_id for job in catalog.jobs if job.name == "ods_orders")
    async with FakeServer(FakeConfig(ak=AK, sk=SK, catalog=catalog)) as srv:
        sdk = client(srv.url)
        answer_a = await in_thread(lambda: sdk.retry_factory_job_instance(mode_a_request(job_id)))
        answer_b = await in_thread(lambda: sdk.retry_factory_job_instance(mode_b_request()))
    assert (answer_a.status_code, answer_b.status_code) == (200, 200)
    a, b = srv.ledger
    expected_a = {
        "retry_location": "errorNode",
        "retry_task_version": "original_version",
        "ignore_obs_monitor": True,
        "task_retrys": [
            {"job_id": job_id, "plan_time": OUTAGE_PLAN, "submit_time": OUTAGE_PLAN + 7_000}
        ],
    }
    assert (a.mode, a.project_id, a.job_name, a.workspace, a.body) == (
        "A",
        PROJECT,
        "ods_orders",
        WS,
        expected_a,
    )
    assert a.chunk_id == chunk_id("ods_orders", WS, canonical_json(expected_a))
    assert b.mode == "B"
    assert b.body["jobs"] == [{"job_name": "dwd_orders", "workspace_id": WS}]
    assert srv.instances is not None
    assert srv.instances.rerun_count("ods_orders", OUTAGE_PLAN) == 2  # once per mode
    assert srv.instances.rerun_count("dwd_orders", OUTAGE_PLAN + 45 * 60_000) == 1


async def test_sdk_with_a_wrong_key_gets_401() -> None:
    async with FakeServer(demo_config()) as srv:
        sdk = client(srv.url, sk="not-the-secret-key")
        with pytest.raises(ClientRequestException) as caught:
            await in_thread(lambda: sdk.retry_factory_job_instance(mode_b_request()))
    assert caught.value.status_code == 401
    assert caught.value.error_code == "APIG.0301"
    assert caught.value.request_id  # the X-Request-Id the SDK read back
    assert SK not in str(caught.value.error_msg)
    assert srv.ledger == []


async def test_sdk_sees_the_service_refusal() -> None:
    async with FakeServer(demo_config()) as srv:
        sdk = client(srv.url)
        with pytest.raises(ClientRequestException) as caught:
            await in_thread(lambda: sdk.retry_factory_job_instance(mode_a_request(1)))
    assert (caught.value.status_code, caught.value.error_code) == (400, "DLF.1001")


async def test_sdk_lists_instances_from_the_catalog() -> None:
    async with FakeServer(demo_config()) as srv:
        sdk = client(srv.url)
        request = ListFactoryJobInstancesByNameRequest(
            workspace=WS,
            job_name="ods_orders",
            min_plan_time=OUTAGE_PLAN - 2 * HOUR,
            max_plan_time=OUTAGE_PLAN + 2 * HOUR,
            status="fail",
            limit=5,
            offset=2,
        )
        answer = await in_thread(lambda: sdk.list_factory_job_instances_by_name(request))
    assert answer.status_code == 200
    assert answer.total == 17  # 15-minute job, outage all over the 4 h window, both ends
    assert len(answer.instances) == 5
    first = answer.instances[0]
    assert (first.job_name, first.status, first.plan_time) == (
        "ods_orders",
        "fail",
        OUTAGE_PLAN - 2 * HOUR + 2 * 15 * 60_000,
    )
    assert first.submit_time > first.plan_time
    assert isinstance(first.job_id, int)
