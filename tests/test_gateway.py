"""What the API gateway and load balancers in front of the service may answer, which the
fake service never does: HTML error pages, empty bodies, APIG's own codes, bodies cut off
or too slow after the status line, redirects, huge bodies. A tiny gateway on loopback
answers each case, chosen by the job name of the request, over real sockets.

What each answer must become, for a call that reruns twice when sent twice: ``done`` only
on a 2xx; ``retried`` only when the answer says nothing started; ``held`` whenever the
back end may have acted; a redirect or a gateway's "no such API" stops the run."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from bulkrerun.chunk import Chunk, canonical_json, chunk_id
from bulkrerun.outcome import Kind, wrong_endpoint
from bulkrerun.transport import MAX_ERROR_BODY, Auth, HttpTransport, _error_fields
from tests.conftest import Cli, write_manifest

pytestmark = pytest.mark.anyio

WALL = 1_732_600_000.0  # 2024-11-26T05:46:40Z
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def apig(code: str, msg: str) -> bytes:
    return json.dumps({"error_code": code, "error_msg": msg}).encode()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(status: int, body: bytes = b"", **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handle


@dataclass
class Gateway:
    """The gateway's address, the POSTs it took per job, and anything sent elsewhere."""

    url: str
    posts: Counter[str] = field(default_factory=Counter)
    elsewhere: list[str] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # body bytes each case got out
    release: anyio.Event = field(default_factory=anyio.Event)


def cases(gw: Gateway) -> dict[str, Handler]:
    async def cut(request: web.Request, status: int, *, reset: bool) -> web.StreamResponse:
        """The status line and part of a body said to be 100 bytes long; then the
        connection is reset (``reset``) or nothing more comes until the test ends."""
        resp = web.StreamResponse(status=status)
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b'{"error_code": "DLF.')
        if reset:
            assert request.transport is not None
            request.transport.abort()
        else:
            await gw.release.wait()
        return resp

    def broken(status: int, *, reset: bool) -> Handler:
        return lambda request: cut(request, status, reset=reset)

    async def huge(request: web.Request) -> web.StreamResponse:
        """A 10 MB error page with its length said."""
        resp = web.StreamResponse(status=400)
        resp.content_length = 10 * 2**20
        await resp.prepare(request)
        try:
            for _ in range(160):
                await resp.write(b"E" * 65536)
                gw.sent["huge"] += 65536
        except (ConnectionError, anyio.BrokenResourceError):
            pass  # the client went away
        return resp

    return {
        "502-html": answer(502, NGINX_502, **{"Content-Type": "text/html"}),
        "502-empty": answer(502),
        "502-apig": answer(502, apig("APIG.0202", "Backend unavailable")),
        "503-html": answer(503, NGINX_502.replace(b"502 Bad Gateway", b"503 Unavailable")),
        "503-empty": answer(503),
        "503-apig": answer(503, apig("APIG.0202", "Backend unavailable")),
        "504-html": answer(504, NGINX_502.replace(b"502 Bad Gateway", b"504 Timeout")),
        "504-empty": answer(504),
        "504-apig": answer(504, apig("APIG.0203", "Backend timeout")),
        "200-html": answer(200, b"<html><body>welcome</body></html>"),
        "200-truncated": answer(200, b'{"error_code": "DLF.10'),
        "200-empty": answer(200),
        "200-error-code": answer(200, apig("DLF.1000", "Failed to find the job.")),
        "200-slow": broken(200, reset=False),
        "200-reset": broken(200, reset=True),
        "400-slow": broken(400, reset=False),
        "400-reset": broken(400, reset=True),
        "429-slow": broken(429, reset=False),
        "503-reset": broken(503, reset=True),
        "504-reset": broken(504, reset=True),
        "401-reset": broken(401, reset=True),
        "301-other-host": answer(301, Location="http://127.0.0.1:9/v2/elsewhere"),
        "302-other-path": answer(302, Location="/v3/elsewhere"),
        "307-other-path": answer(307, Location="/v3/elsewhere"),
        "308-other-host": answer(308, Location=f"{gw.url}/v3/elsewhere"),
        "400-unknown-code": answer(400, apig("DLF.9999", "something new")),
        "404-apig": answer(404, apig("APIG.0101", "The API does not exist")),
        "404-dlf": answer(404, apig("DLF.0100", "The job does not exist.")),
        "405-empty": answer(405),
        "413-apig": answer(413, apig("APIG.0201", "Request entity too large")),
        "429-seconds": answer(429, apig("APIG.0308", "throttled"), **{"Retry-After": "7"}),
        "429-date": answer(429, b"", **{"Retry-After": "Tue, 26 Nov 2024 05:47:10 GMT"}),
        "429-none": answer(429, apig("APIG.0308", "throttled")),
        "400-huge": huge,
    }


@asynccontextmanager
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway("")
    app = web.Application()
    handlers: dict[str, Handler] = {}

    async def retry(request: web.Request) -> web.StreamResponse:
        await request.read()
        job = request.match_info["job"]
        gw.posts[job] += 1
        return await handlers[job](request)

    async def other(request: web.Request) -> web.StreamResponse:
        gw.elsewhere.append(request.path)
        return web.Response()

    app.router.add_post("/v2/{project}/factory/jobs/{job}/instances/retry", retry)
    app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gw.url = f"http://127.0.0.1:{port}"
    handlers.update(cases(gw))
    try:
        yield gw
    finally:
        gw.release.set()  # the slow answers end
        await runner.cleanup()


def a_chunk(job: str) -> Chunk:
    body = canonical_json({"retry_location": "errorNode"})
    cid = chunk_id(job, "ws", body)
    return Chunk(cid, "instances", "instances[0]", job, "ws", body, (cid,))


# case, kind, status, error code
TABLE = [
    # A 502 is the gateway's "the back end I passed the request to gave no valid answer"
    # (RFC 9110 15.6.3): the back end may have started the rerun.
    ("502-html", Kind.HELD, 502, None),
    ("502-empty", Kind.HELD, 502, None),
    ("502-apig", Kind.HELD, 502, "APIG.0202"),
    ("503-html", Kind.RETRY, 503, None),
    ("503-empty", Kind.RETRY, 503, None),
    ("503-apig", Kind.RETRY, 503, "APIG.0202"),
    ("504-html", Kind.HELD, 504, None),
    ("504-empty", Kind.HELD, 504, None),
    ("504-apig", Kind.HELD, 504, "APIG.0203"),
    # A 2xx is the acceptance whatever its body says, as for the official SDK.
    ("200-html", Kind.DONE, 200, None),
    ("200-truncated", Kind.DONE, 200, None),
    ("200-empty", Kind.DONE, 200, None),
    ("200-error-code", Kind.DONE, 200, None),
    ("200-slow", Kind.DONE, 200, None),
    ("200-reset", Kind.DONE, 200, None),
    # The status line is the answer when its body does not come whole.
    ("400-slow", Kind.FAILED, 400, None),
    ("400-reset", Kind.FAILED, 400, None),
    ("429-slow", Kind.RETRY, 429, None),
    ("503-reset", Kind.RETRY, 503, None),
    ("504-reset", Kind.HELD, 504, None),
    ("401-reset", Kind.FATAL, 401, None),
    ("301-other-host", Kind.FAILED, 301, None),
    ("302-other-path", Kind.FAILED, 302, None),
    ("307-other-path", Kind.FAILED, 307, None),
    ("308-other-host", Kind.FAILED, 308, None),
    ("400-unknown-code", Kind.FAILED, 400, "DLF.9999"),
    ("404-apig", Kind.FAILED, 404, "APIG.0101"),
    ("404-dlf", Kind.FAILED, 404, "DLF.0100"),
    ("405-empty", Kind.FAILED, 405, None),
    ("413-apig", Kind.FAILED, 413, "APIG.0201"),
    ("429-seconds", Kind.RETRY, 429, "APIG.0308"),
    ("429-date", Kind.RETRY, 429, None),
    ("429-none", Kind.RETRY, 429, "APIG.0308"),
    ("400-huge", Kind.FAILED, 400, None),
]


@pytest.mark.parametrize(("case", "kind", "status", "code"), TABLE, ids=[t[0] for t in TABLE])
async def test_each_answer_of_a_gateway_is_classified_by_what_it_says_of_the_rerun(
    case: str, kind: Kind, status: int, code: str | None
) -> None:
    async with gateway() as gw:
        t = HttpTransport(
            endpoint=gw.url, project_id="p", auth=Auth(token="t"), timeout=1, wall=lambda: WALL
        )
        async with t:
            with anyio.fail_after(10):
                out = await t.send(a_chunk(case))
    assert (out.kind, out.status, out.error_code) == (kind, status, code), out
    assert gw.posts == {case: 1} and gw.elsewhere == []  # sent once, never followed
    if case.endswith(("-slow", "-reset")) and kind is not Kind.DONE and kind is not Kind.FATAL:
        assert out.reason.endswith(")") and "its body did not arrive whole" in out.reason
    if 300 <= status < 400:
        assert "not followed" in out.reason
    assert wrong_endpoint(out.status, out.error_code) is (case in WRONG_ENDPOINT)
    if case in WRONG_ENDPOINT:  # as the run's stop says it, and the report after it
        assert out.reason.endswith("is the endpoint right?"), out.reason
    if status in (404, 405, 413) and case not in WRONG_ENDPOINT:
        assert out.reason == "refused by the service"
    if case == "502-html":  # the page's title, not its markup
        assert out.error_msg == "HTML page: 502 Bad Gateway", out.error_msg
    if case == "503-html":
        assert out.error_msg == "HTML page: 503 Unavailable", out.error_msg
    if case == "429-seconds":
        assert out.retry_after == 7.0
    if case == "429-date":
        assert out.retry_after == 30.0
    if case == "429-none":
        assert out.retry_after is None
    if case == "400-huge":
        # Read up to the cap, not whole: what got out is that and the sockets' buffers.
        assert len(out.error_msg or "") <= 500
        assert gw.sent["huge"] < MAX_ERROR_BODY + 8 * 2**20, gw.sent


WRONG_ENDPOINT = {
    "301-other-host",
    "302-other-path",
    "307-other-path",
    "308-other-host",
    "404-apig",
    "405-empty",
}


async def test_a_run_holds_a_502_and_keeps_the_status_of_an_answer_cut_short(
    cli: Cli, tmp_path: Path
) -> None:
    # A 502 was retried as not acted on (then failed, for --retry-failed to send a third
    # time), and a 400 whose body was cut off was held with no status, as if unanswered.
    items = "items = [ { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 } ]"
    m = write_manifest(
        tmp_path / "m.toml",
        "".join(
            f'[[instances]]\njob_name = "{job}"\n{items}\n' for job in ("502-html", "400-reset")
        ),
    )
    j = tmp_path / "j"
    async with gateway() as gw:
        env = cli.env(gw.url)
        run = await anyio.run_process(
            [sys.executable, "-m", "bulkrerun", "run", str(m), "--journal", str(j),
             "--no-progress", "--max-attempts", "3"],
            env=env, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert gw.posts == {"502-html": 1, "400-reset": 1}
    assert run.returncode == 1, run.stderr.decode()
    status = await anyio.run_process(
        [sys.executable, "-m", "bulkrerun", "status", str(j), "--json"],
        env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    counts = json.loads(status.stdout)
    assert (counts["done"], counts["failed"], counts["held"]) == (0, 1, 1), counts
    report = await anyio.run_process(
        [sys.executable, "-m", "bulkrerun", "report", str(j), "--format", "json"],
        env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    rows = {r["job_name"]: r for r in map(json.loads, report.stdout.decode().splitlines())}
    assert (rows["502-html"]["state"], rows["502-html"]["status"]) == ("held", 502)
    assert (rows["400-reset"]["state"], rows["400-reset"]["status"]) == ("failed", 400)
    assert "its body did not arrive whole" in rows["400-reset"]["reason"]


@pytest.mark.parametrize(
    ("page", "shown"),
    [
        (NGINX_502.decode(), "HTML page: 502 Bad Gateway"),
        (
            "<!DOCTYPE html><html><head><style>p {}</style><script>x()</script></head>"
            "<body><p>Service &amp; gateway\n   unavailable</p><!-- id 7 --></body></html>",
            "HTML page: Service & gateway unavailable",
        ),
        ("<html><body></body></html>", "HTML page"),
        ("upstream connect error <not html>", "upstream connect error <not html>"),
    ],
)
def test_an_html_error_page_reads_as_the_words_it_shows(page: str, shown: str) -> None:
    assert _error_fields(page.encode(), []) == (None, shown)
