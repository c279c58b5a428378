"""Pacing against the fake service over real sockets: a gateway limit below the client's
rate (stated in its 429s), random 429 and 503, and refused credentials. The engine,
transport and journal are the real ones (through the CLI's run coroutine, or the CLI
itself); the fake's ledger and arrival times are the truth. Time here is real: these are
end-to-end checks of behaviour whose schedules the unit tests in test_pacing.py pin down
exactly on a fake clock."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bulkrerun.cli import RunArgs, _run
from bulkrerun.errors import EXIT_FATAL, EXIT_OK
from bulkrerun.fake import FakeConfig, FakeServer
from bulkrerun.settings import Settings
from tests.conftest import AK, PROJECT, SK, Cli, Service, write_manifest

pytestmark = pytest.mark.anyio


def window(tmp: Path, n: int) -> Path:
    begin = 1_732_579_200_000
    return write_manifest(
        tmp / "m.toml",
        f'[[window]]\njob_name = "ods_orders"\nbegin = {begin}\nend = {begin + n * 60_000}\n'
        'chunk = "1m"\n',
    )


async def run(tmp: Path, m: Path, url: str, **settings: object) -> int:
    args = RunArgs(
        manifest=m, journal=tmp / "j", resend_held=False, retry_failed=False,
        verify_held=False, reselect=False, watch=False, max_failure_ratio=None, canary=0,
        grace=5.0, outage_stop=600.0, progress=False, log_chunks=False, resume="",
    )  # fmt: skip
    values = {"endpoint": url, "project_id": PROJECT, "ak": AK, "sk": SK, **settings}
    return await _run(args, Settings(**values), url)  # type: ignore[arg-type]


def max_in_any_second(arrivals: list[float]) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(arrivals):
        while t - arrivals[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_gateway_limit_below_the_clients_rate(tmp_path: Path) -> None:
    """The client is told 100/s, the gateway allows 20/s: every chunk is accepted exactly
    once, in close to the ideal time for 20/s, with few 429s."""
    n, limit = 120, 20.0
    config = FakeConfig(ak=AK, sk=SK, rate_limit=limit, rate_burst=2, retry_after=False)
    async with FakeServer(config) as srv:
        t0 = time.monotonic()
        code = await run(tmp_path, window(tmp_path, n), srv.url, rate=100.0, max_inflight=16)
        elapsed = time.monotonic() - t0
        assert code == EXIT_OK
        ids = Counter(e.chunk_id for e in srv.ledger)
        assert len(ids) == n and set(ids.values()) == {1}
        ideal = n / limit
        assert elapsed < ideal * 1.5 + 2, f"{elapsed:.1f} s for an ideal of {ideal:.1f} s"
        throttled = srv.stats.by_status[429]
        assert throttled <= 0.15 * srv.stats.requests, srv.stats.by_status


async def test_random_429_and_503_all_done_once_and_the_rate_is_kept(tmp_path: Path) -> None:
    n, rate = 120, 40.0
    # Every 429 states the limit, and the client keeps under it: a limit well above the
    # rate makes the random ones other clients' doing. (Without one the fake states 10/s.)
    config = FakeConfig(ak=AK, sk=SK, rate_limit=1000.0, p429=0.1, p5xx=0.1, seed=11)
    async with FakeServer(config) as srv:
        code = await run(tmp_path, window(tmp_path, n), srv.url, rate=rate, burst=1)
        assert code == EXIT_OK
        ids = Counter(e.chunk_id for e in srv.ledger)
        assert len(ids) == n and set(ids.values()) == {1}
        assert srv.stats.by_status[429] > 0 and srv.stats.by_status[503] > 0
        # Every attempt, retries included, goes through the one limiter: in no one-second
        # window does the service see more than rate + burst (one more for the network's
        # jitter at the window's edges).
        assert max_in_any_second(srv.stats.arrivals) <= rate + 1 + 1


async def test_refused_credentials_stop_after_a_few_requests(tmp_path: Path) -> None:
    config = FakeConfig(ak=AK, sk=SK)
    async with FakeServer(config) as srv:
        code = await run(
            tmp_path, window(tmp_path, 500), srv.url, sk="wrong-secret-key-000000000000",
            rate=1000.0, burst=50, max_inflight=16,
        )  # fmt: skip
        assert code == EXIT_FATAL
        assert srv.ledger == []
        assert srv.stats.by_status[401] == srv.stats.requests
        assert srv.stats.requests <= 16 + 4  # what was already in flight, no more


def test_a_rate_far_too_high_meets_fewer_429s_when_the_gateway_states_its_limit(
    tmp_path: Path, fake_service: Callable[..., Service], cli: Cli
) -> None:
    """``bulkrerun fake-server --rate-limit 10`` says "limit:10,time:1 second" in its 429s, as
    the gateway does. With the rate set to 370, the first 429 now brings the rate under 10
    at once. Before, it came down over several 429s, by measurement and by halves, and
    climbed past 10 again: 13 to 20 attempts were 429s (four runs); now 4 (four runs), the
    requests in flight at the start."""
    n = 40
    srv = fake_service("--rate-limit", "10", "--no-retry-after", "--latency-ms", "20")
    journal = tmp_path / "j"
    done = cli(
        "run", str(window(tmp_path, n)), "--journal", str(journal), "--rate", "370",
        "--max-inflight", "4", "--no-progress", url=srv.url,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    ids = Counter(srv.accepted_ids())
    assert len(ids) == n and set(ids.values()) == {1}
    status = json.loads(cli("status", str(journal), "--json", url=srv.url).stdout)
    assert (status["done"], status["requests"]) == (n, n)
    throttled = status["attempts"] - status["requests"]  # a 429 is the only retry here
    assert throttled <= 8, status
