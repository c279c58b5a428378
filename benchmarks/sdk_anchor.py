"""The anchor: the official Huawei Cloud SDK, as a user would script it, sequential or with
a thread pool. Prints requests per second over N requests."""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkdataartsstudio.v1 import (
    DataArtsStudioClient,
    RetryFactoryJobInstanceBody,
    RetryFactoryJobInstanceBodyJobs,
    RetryFactoryJobInstanceBodyTaskRetrys,
    RetryFactoryJobInstanceRequest,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("plan")
    p.add_argument("url")
    p.add_argument("--ak", required=True)
    p.add_argument("--sk", required=True)
    p.add_argument("--project", default="bench")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    with open(a.plan, encoding="utf-8") as f:
        reqs = [json.loads(next(f)) for _ in range(a.n)]
    client = (
        DataArtsStudioClient.new_builder()
        .with_credentials(BasicCredentials(a.ak, a.sk, a.project))
        .with_endpoints([a.url])
        .build()
    )

    def one(r: dict) -> None:  # type: ignore[type-arg]
        b = dict(r["body"])
        if "jobs" in b:
            b["jobs"] = [RetryFactoryJobInstanceBodyJobs(**j) for j in b["jobs"]]
        if "task_retrys" in b:
            b["task_retrys"] = [
                RetryFactoryJobInstanceBodyTaskRetrys(**t) for t in b["task_retrys"]
            ]
        req = RetryFactoryJobInstanceRequest(
            workspace=r["headers"]["workspace"],
            job_name=unquote(r["path"].split("/")[5]),
            x_project_id=a.project,
            body=RetryFactoryJobInstanceBody(**b),
        )
        client.retry_factory_job_instance(req)

    t0 = time.perf_counter()
    if a.threads == 1:
        for r in reqs:
            one(r)
    else:
        with ThreadPoolExecutor(a.threads) as pool:
            list(pool.map(one, reqs))
    print(a.n / (time.perf_counter() - t0))


if __name__ == "__main__":
    main()
