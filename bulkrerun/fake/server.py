"""The fake DataArts Factory service: an aiohttp server on loopback that acts like the real one.

It serves the two APIs bulkrerun uses, ``POST .../instances/retry`` and ``GET
.../instances/detail``, and answers everything else 404 (405 for another method on those
paths). Each request goes through the same steps, in this order::

    route -> method -> auth -> rate limit -> p429 -> p5xx -> project -> deny_jobs
          -> validation -> missing_jobs, catalog -> accept -> latency -> drop

- auth: with ``ak``/``sk`` the API gateway's signature (``bulkrerun.signing.verify``); with
  ``token`` the ``X-Auth-Token`` header; with both, either is accepted; with neither, any
  request is (no check). Failures are 401 ``APIG.0301``. With ``revoke_after``, the
  requests after the first that many to pass are refused as well (401 ``APIG.0301``): the
  key disabled, or the token expired, in the middle of a run. With ``clock_skew``, the
  gateway's clock (which a signature's ``X-Sdk-Date`` is checked against, and every
  answer's ``Date`` tells) is that many seconds ahead of this machine's.
- rate limit: a token bucket on the server clock, 429 ``APIG.0308`` beyond it, with
  ``Retry-After`` unless ``retry_after`` is off (the real gateway sends none). Both APIs
  count against it, as they share a user's quota on the real gateway.
- p429 / p5xx: seeded random 429 and 503 refusals; neither acts on the request. Each is a
  share of the requests its die is rolled for (see ``faults.Dice``).
- project: an ``X-Project-Id`` header, when present, must be the project ID of the path
  (percent-decoded); otherwise 403 ``DLF.0004``, as a permission refusal. Absent is fine: the
  reference sends it only with AK/SK auth in multi-project setups.
- deny_jobs: 403, as a permission refusal.
- validation: see ``validate.py`` and its table of error codes; then ``missing_jobs`` and,
  with a catalog, the jobs and instances themselves (``catalog.py``).
- accept: the rerun goes into the ledger (and the catalog's state); ``latency_ms`` is then
  waited on the server clock (refusals are answered at once; list answers wait too);
  ``drop_after_accept`` closes the connection without an answer, the case where the client
  cannot know that the rerun was started; ``timeout_after_accept`` answers 504
  ``APIG.0201`` (the gateway timed out on a back end that had started the rerun), which the
  client holds too.

Every answer carries ``X-Request-Id``. The server is built for speed, since benchmarks push tens
of thousands of requests through it: aiohttp's low-level server (no router, no middlewares),
no access log, no per-request logging and no fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import secrets
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web

from bulkrerun.clock import Clock, SystemClock
from bulkrerun.fake.catalog import Catalog, Instances
from bulkrerun.fake.faults import Dice, TokenBucket, throttle_message
from bulkrerun.fake.ledger import Ledger, LedgerEntry
from bulkrerun.fake.validate import (
    JOB_NOT_FOUND,
    Refusal,
    RetryRequest,
    route,
    validate_list,
    validate_retry,
)
from bulkrerun.signing import verify
from bulkrerun.text import counted

__all__ = ["FakeConfig", "FakeServer", "Stats", "serve"]

_NOT_FOUND = Refusal(
    404, "APIG.0101", "The API does not exist or has not been published in the environment"
)
_NOT_ALLOWED = Refusal(
    405, "APIG.0101", "The API does not exist or has not been published in the environment"
)
_UNAVAILABLE = Refusal(503, "APIG.0202", "Backend unavailable")
_BACKEND_TIMEOUT = Refusal(504, "APIG.0201", "Backend timeout")
_DENIED = Refusal(
    403, "DLF.0003", "The user does not have the permission to perform this operation."
)
_WRONG_PROJECT = Refusal(
    403,
    "DLF.0004",
    "The X-Project-Id header names another project than the URL: send the same project ID.",
)
_IAM = "Incorrect IAM authentication information"
_TOKEN_REFUSED = Refusal(401, "APIG.0301", f"{_IAM}: verify token failed")
_NO_AUTH = Refusal(401, "APIG.0301", f"{_IAM}: x-auth-token not found")
_REVOKED = Refusal(401, "APIG.0301", f"{_IAM}: the token has expired or the AK is disabled")
_TOO_LARGE = Refusal(413, "APIG.0413", "Request entity too large")
_DEFAULT_LIMIT = 10.0  # what a random 429 claims the limit is when no rate limit is set


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """How the fake service behaves. The defaults make a plain, fault-free, open service.

    ``ak``/``sk`` and ``token`` switch authentication on (``None``: accept any auth).
    ``rate_limit`` is per second with a burst of ``rate_burst``. ``p429``, ``p5xx`` and
    ``drop_after_accept`` are probabilities, each drawn from its own die derived from ``seed``
    and each a share of the requests that reach it (see ``faults.Dice``).
    ``missing_jobs`` answer ``DLF.1000``, ``deny_jobs`` 403. With a ``catalog`` the service
    knows real instances: unknown jobs answer ``DLF.1000`` and unknown instances ``DLF.1001``.
    ``revoke_after``: how many requests pass authentication before every later one is
    refused 401, as when a key is disabled or a token expires mid-run (``None``: never).
    ``clock_skew``: seconds the gateway's clock is ahead of ``clock`` (negative: behind),
    as if the client's clock had drifted the other way.
    """

    ak: str | None = None
    sk: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ledger_path: Path | None = None
    rate_limit: float | None = None
    rate_burst: int = 1
    p429: float = 0.0
    p5xx: float = 0.0
    latency_ms: float = 0.0
    drop_after_accept: float = 0.0
    timeout_after_accept: float = 0.0
    revoke_after: int | None = None
    clock_skew: float = 0.0
    seed: int | None = None
    retry_after: bool = True
    missing_jobs: frozenset[str] = frozenset()
    deny_jobs: frozenset[str] = frozenset()
    catalog: Catalog | None = None
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        if (self.ak is None) != (self.sk is None) or self.ak == "" or self.sk == "":
            raise ValueError("give both the AK and the SK, or neither")
        if self.token == "":
            raise ValueError("the token is empty")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit = {self.rate_limit}: must be more than 0 per second")
        if self.rate_burst < 1:
            raise ValueError(f"rate_burst = {self.rate_burst}: must be 1 or more")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms = {self.latency_ms}: must be 0 or more")
        if not math.isfinite(self.clock_skew):
            raise ValueError(f"clock_skew = {self.clock_skew}: must be a number of seconds")
        if self.revoke_after is not None and self.revoke_after < 0:
            raise ValueError(f"revoke_after = {self.revoke_after}: must be 0 or more")
        for name in ("p429", "p5xx", "drop_after_accept", "timeout_after_accept"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} = {p}: must be a probability, 0..1")


@dataclass(slots=True)
class Stats:
    """What the server saw, for assertions and benchmark reports.

    ``arrivals`` holds the server clock's monotonic reading at the arrival of every request,
    in order (for rate assertions). ``by_status`` and ``by_code`` count the answers sent;
    ``dropped`` counts accepted reruns whose connection was closed instead.
    """

    requests: int = 0
    arrivals: list[float] = field(default_factory=list)
    by_status: Counter[int] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    inflight: int = 0
    max_inflight: int = 0


class FakeServer:
    """The fake service, running while the ``async with`` block runs.

    ``url`` is known once entered (``http://127.0.0.1:PORT``; port 0 picks a free one).
    ``ledger`` lists every accepted rerun in order, ``stats`` what was received, and
    ``instances`` the catalog's live state when the config has a catalog.
    """

    def __init__(
        self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config = config if config is not None else FakeConfig()
        self.host = host
        self.port = port
        self.url = ""
        self.stats = Stats()
        self.instances = (
            Instances(config.catalog, config.clock) if config.catalog is not None else None
        )
        self._clock = config.clock
        self._keys = {config.ak: config.sk} if config.ak and config.sk else None
        self._token = config.token.encode() if config.token is not None else None
        self._passed = 0  # requests that passed authentication, for revoke_after
        self._bucket = (
            TokenBucket(config.rate_limit, config.rate_burst)
            if config.rate_limit is not None
            else None
        )
        self._dice = Dice(
            config.seed,
            config.p429,
            config.p5xx,
            config.drop_after_accept,
            config.timeout_after_accept,
        )
        self._throttled = Refusal(
            429, "APIG.0308", throttle_message(config.rate_limit or _DEFAULT_LIMIT)
        )
        self._latency = config.latency_ms / 1000.0
        self._ledger = Ledger()
        self._runner: web.ServerRunner | None = None
        # Request ids: a random prefix per server and a counter, 32 hex digits in all; cheaper
        # than a uuid4 per request and unique across servers all the same.
        self._rid_prefix = secrets.token_hex(8)
        self._rid_next = 0

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every accepted rerun, in order (built on first read; see ``ledger.py``)."""
        return self._ledger.entries

    @property
    def accepted(self) -> int:
        """How many reruns were accepted (dropped ones included), without building entries."""
        return len(self._ledger)

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on ``host:port`` and set ``url``."""
        self._ledger = Ledger(self.config.ledger_path)
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._ledger.close()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.port = bound_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening, close connections and the ledger file."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._ledger.close()

    # -- the request path -------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.arrivals.append(self._clock.now())
        stats.inflight += 1
        stats.max_inflight = max(stats.max_inflight, stats.inflight)
        try:
            response = await self._answer(request)
        finally:
            stats.inflight -= 1
        if response is None:
            # Drop: close the connection before any byte of an answer. aiohttp then fails to
            # write the response returned below, takes it as a premature client disconnection
            # and logs nothing; the client sees the server disconnect.
            stats.dropped += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=200)
        stats.by_status[response.status] += 1
        if self.config.clock_skew:  # the gateway's own time (aiohttp's Date is this machine's)
            response.headers["Date"] = formatdate(self._gateway_wall(), usegmt=True)
        return response

    def _gateway_wall(self) -> float:
        """The gateway's clock: the server clock's wall time plus ``clock_skew``."""
        return self._clock.wall() + self.config.clock_skew

    def _request_id(self) -> str:
        self._rid_next += 1
        return f"{self._rid_next:016x}{self._rid_prefix}"  # distinct part first: tables cut ends

    def _refuse(
        self, rid: str, refusal: Refusal, extra: dict[str, str] | None = None
    ) -> web.Response:
        self.stats.by_code[refusal.error_code] += 1
        headers = {"X-Request-Id": rid, "Content-Type": "application/json"}
        if extra:
            headers.update(extra)
        return web.Response(status=refusal.status, body=refusal.body(), headers=headers)

    async def _answer(self, request: web.BaseRequest) -> web.Response | None:
        """The answer to one request, or ``None`` to drop the connection without one."""
        rid = self._request_id()
        raw_path, _, raw_query = request.raw_path.partition("?")
        found = route(raw_path)
        if found is None:
            return self._refuse(rid, _NOT_FOUND)
        if isinstance(found, Refusal):
            return self._refuse(rid, found)
        allowed = "POST" if found.api == "retry" else "GET"
        if request.method != allowed:
            return self._refuse(rid, _NOT_ALLOWED, {"Allow": allowed})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(rid, _TOO_LARGE)
        refused = self._gateway(rid, request, raw_path, raw_query, body)
        if refused is not None:
            return refused
        given_project = request.headers.get("X-Project-Id")
        if given_project is not None and given_project != found.project_id:
            return self._refuse(rid, _WRONG_PROJECT)
        if found.job_name in self.config.deny_jobs:
            return self._refuse(rid, _DENIED)
        if found.api == "detail":
            return await self._list(rid, request, found.job_name)
        return await self._retry(rid, request, found.project_id, found.job_name, body)

    def _gateway(
        self, rid: str, request: web.BaseRequest, raw_path: str, raw_query: str, body: bytes
    ) -> web.Response | None:
        """What the API gateway refuses before the service sees the request, in this order."""
        refusal = self._authenticate(request, raw_path, raw_query, body)
        if refusal is not None:
            return self._refuse(rid, refusal)
        wait: int | None = None  # set when throttled: the Retry-After to send
        if self._bucket is not None and not self._bucket.take(self._clock.now()):
            wait = self._bucket.retry_after()
        elif self._dice.throttle():
            wait = 1
        if wait is not None:
            extra = {"Retry-After": str(wait)} if self.config.retry_after else None
            return self._refuse(rid, self._throttled, extra)
        if self._dice.unavailable():
            return self._refuse(rid, _UNAVAILABLE)
        return None

    async def _retry(
        self, rid: str, request: web.BaseRequest, project_id: str, job_name: str, body: bytes
    ) -> web.Response | None:
        headers = request.headers
        checked = validate_retry(
            job_name, headers.get("workspace"), headers.get("Content-Type"), body
        )
        if isinstance(checked, Refusal):
            return self._refuse(rid, checked)
        refusal = self._act(checked)
        if refusal is not None:
            return self._refuse(rid, refusal)
        # Accepted. Whether the connection will be dropped is decided now, so that the ledger
        # line is written once and says so.
        dropped = self._dice.drop()
        late = not dropped and self._dice.timeout()
        self._ledger.record(
            project_id,
            checked.job_name,
            checked.workspace,
            body,
            rid,
            checked.mode,
            self._clock.wall(),
            None if dropped else 504 if late else 200,
        )
        if self._latency:
            await self._clock.sleep(self._latency)
        if dropped:
            return None
        if late:
            return self._refuse(rid, _BACKEND_TIMEOUT)
        return web.Response(status=200, headers={"X-Request-Id": rid})

    def _authenticate(
        self, request: web.BaseRequest, raw_path: str, raw_query: str, body: bytes
    ) -> Refusal | None:
        refusal = self._check_credentials(request, raw_path, raw_query, body)
        revoke_after = self.config.revoke_after
        if refusal is None and revoke_after is not None:
            if self._passed >= revoke_after:
                return _REVOKED
            self._passed += 1
        return refusal

    def _check_credentials(
        self, request: web.BaseRequest, raw_path: str, raw_query: str, body: bytes
    ) -> Refusal | None:
        if self._keys is None and self._token is None:
            return None
        headers = request.headers
        if self._token is not None:
            given = headers.get("X-Auth-Token")
            if given is not None:
                if hmac.compare_digest(given.encode(), self._token):
                    return None
                return _TOKEN_REFUSED
        if self._keys is None:
            return _NO_AUTH
        verdict = verify(
            request.method,
            raw_path,
            raw_query,
            headers,
            body,
            keys=self._keys,
            wall=self._gateway_wall(),
        )
        if verdict.ok:
            return None
        return Refusal(401, verdict.error_code or "APIG.0301", verdict.error_msg or _IAM)

    def _act(self, checked: RetryRequest) -> Refusal | None:
        """The service side of an accepted rerun: job checks, then the catalog's state."""
        missing = self.config.missing_jobs
        if missing and (
            checked.job_name in missing or any(name in missing for name, _ in checked.jobs)
        ):
            return JOB_NOT_FOUND
        if self.instances is None:
            return None
        if checked.mode == "A":
            return self.instances.rerun_instances(checked.job_name, checked.task_retrys)
        names = [checked.job_name, *(name for name, _ in checked.jobs)]
        return self.instances.rerun_window(
            names, checked.begin_time, checked.end_time, checked.concurrent
        )

    async def _list(self, rid: str, request: web.BaseRequest, job_name: str) -> web.Response:
        catalog = self.config.catalog
        now_ms = catalog.now_ms if catalog is not None else int(self._clock.wall() * 1000)
        query = validate_list(request.headers.get("workspace"), request.query, now_ms)
        if isinstance(query, Refusal):
            return self._refuse(rid, query)
        if job_name in self.config.missing_jobs:
            return self._refuse(rid, JOB_NOT_FOUND)
        result: dict[str, Any] | Refusal = {"total": 0, "instances": []}
        if self.instances is not None:
            result = self.instances.query(job_name, query)
        if isinstance(result, Refusal):
            return self._refuse(rid, result)
        if self._latency:
            await self._clock.sleep(self._latency)
        return web.Response(
            status=200,
            body=json.dumps(result, separators=(",", ":")).encode(),
            headers={"X-Request-Id": rid, "Content-Type": "application/json"},
        )


def serve(config: FakeConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the fake service until SIGINT or SIGTERM (blocking; for ``bulkrerun fake-server``).

    Prints ``fake service listening on URL`` on stdout once it listens, and a one-line summary
    on stderr when it stops. Uses uvloop when it is installed.
    """
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(config, host, port))


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    async with FakeServer(config, host=host, port=port) as server:
        print(f"fake service listening on {server.url}", flush=True)
        await stop.wait()
    print(
        f"fake service stopped: {counted(server.stats.requests, 'request')}, "
        f"{counted(server.accepted, 'rerun')} accepted",
        file=sys.stderr,
        flush=True,
    )
