"""The one translation of HTTP results into outcome kinds (pure parts), and the transport
over real sockets against tiny handlers that misbehave in the ways the fake cannot."""

from __future__ import annotations

import errno
import json

import aiohttp
import pytest
from aiohttp import web

from bulkrerun.chunk import Chunk, canonical_json, chunk_id
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.signing import AkSk
from bulkrerun.transport import Auth, HttpTransport, classify_exception, classify_status

WALL = 1_732_600_000.0


def body(code: str, msg: str) -> bytes:
    return json.dumps({"error_code": code, "error_msg": msg}).encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, Kind.DONE),
        (204, Kind.DONE),
        (400, Kind.FAILED),
        (404, Kind.FAILED),
        (409, Kind.FAILED),
        (401, Kind.FATAL),
        (403, Kind.FATAL),
        (408, Kind.RETRY),
        (429, Kind.RETRY),
        (503, Kind.RETRY),
        (500, Kind.HELD),
        (502, Kind.HELD),  # the gateway passed it on and got no valid answer: it may have run
        (504, Kind.HELD),
        (599, Kind.HELD),
        (301, Kind.FAILED),  # redirects are not followed: not acted on
        (307, Kind.FAILED),
        (99, Kind.HELD),  # not an answer HTTP knows: unknown whether it ran
        (101, Kind.HELD),
        (600, Kind.HELD),
        (999, Kind.HELD),
    ],
)
def test_status_classes(status: int, kind: Kind) -> None:
    out = classify_status(status, body("X.1", "m"), {"X-Request-Id": "r1"}, WALL, [])
    assert out.kind is kind
    assert out.status == status
    assert out.request_id == "r1"


def test_refusal_carries_code_message_and_request_id() -> None:
    out = classify_status(
        400, body("DLF.1000", "Failed to find the job."), {"X-Request-Id": "abc"}, WALL, []
    )
    assert (out.error_code, out.error_msg, out.request_id) == (
        "DLF.1000",
        "Failed to find the job.",
        "abc",
    )


def test_retry_after_seconds_and_date() -> None:
    assert classify_status(429, b"", {"Retry-After": "3"}, WALL, []).retry_after == 3.0
    date = "Tue, 26 Nov 2024 05:46:50 GMT"  # WALL + 10 s
    out = classify_status(503, b"", {"Retry-After": date}, WALL, [])
    assert out.retry_after == pytest.approx(10.0, abs=1.0)


AHEAD = "this machine's clock is about 20 minutes ahead of the service's"
BEHIND = "this machine's clock is about 30 minutes behind the service's"


@pytest.mark.parametrize(
    ("status", "date", "signed", "said"),
    [
        # WALL is 2024-11-26T05:46:40Z.
        (401, "Tue, 26 Nov 2024 05:26:40 GMT", True, f"{AHEAD} (2024-11-26T05:26:40Z by its Date)"),
        (
            403,
            "Tue, 26 Nov 2024 06:16:40 GMT",
            True,
            f"{BEHIND} (2024-11-26T06:16:40Z by its Date)",
        ),
        (401, "Tue, 26 Nov 2024 05:44:40 GMT", True, None),  # 2 minutes: not said
        (401, "Tue, 26 Nov 2024 05:26:40 GMT", False, None),  # a token carries no time
        (401, "not a date \x1b[2J", True, None),
        (401, None, True, None),
    ],
)
def test_a_refusal_of_a_signature_says_when_the_answer_shows_our_clock_off(
    status: int, date: str | None, signed: bool, said: str | None
) -> None:
    headers = {"Date": date} if date is not None else {}
    out = classify_status(status, body("APIG.0301", "m"), headers, WALL, [], signed=signed)
    assert out.kind is Kind.FATAL
    base = "authentication refused" if status == 401 else "permission refused"
    assert out.reason == (base if said is None else f"{base}: {said}")


def test_signature_error_is_scrubbed() -> None:
    secret = "SECRET-TOKEN-VALUE-123"
    msg = (
        "Incorrect IAM authentication information: verify aksk signature fail, "
        f"canonicalRequest: POST\n/v2/\n\nx-security-token:{secret}\n"
    )
    out = classify_status(401, body("APIG.0301", msg), {}, WALL, [secret])
    assert out.kind is Kind.FATAL
    assert secret not in (out.error_msg or "")


def test_service_text_is_one_line_with_its_breaks_spelled_out_after_scrubbing() -> None:
    # The line of a signed token the client does not know of is masked line by line first.
    msg = "canonicalRequest: POST\r\n/v2/\n\nx-security-token:OTHER-TOKEN\nhost:h:8080\n"
    out = classify_status(401, body("APIG.0301", msg), {}, WALL, [])
    assert (
        out.error_msg == "canonicalRequest: POST\\n/v2/\\n\\nx-security-token:***\\nhost:h:8080\\n"
    )
    text = classify_status(502, b"upstream reset\nbefore headers\n", {}, WALL, [])
    assert text.error_msg == "upstream reset\\nbefore headers\\n"
    page = classify_status(502, b"<html>\n<h1>bad gateway</h1>\n</html>", {}, WALL, [])
    assert page.error_msg == "HTML page: bad gateway"  # the words it shows, on one line


def test_non_json_error_body_is_kept_as_text() -> None:
    out = classify_status(503, b"<html>bad gateway</html>", {}, WALL, [])
    assert out.kind is Kind.RETRY
    assert "bad gateway" in (out.error_msg or "")


def test_what_the_service_says_is_kept_without_secrets_as_one_printable_line() -> None:
    token = "MIIToken0123456789abcdefghijklmnopqrstu"  # 40 characters
    echoed = body(f"DLF.{token}", f"bad token {token}")
    out = classify_status(400, echoed, {"X-Request-Id": f"rid-{token}"}, WALL, [token])
    assert token not in repr(out)
    assert (out.error_code, out.request_id) == ("DLF.***", "rid-***")
    done = classify_status(200, b"", {"X-Request-Id": f"rid-{token}"}, WALL, [token])
    assert done.request_id == "rid-***"
    # A secret across the cut of a long text body: scrubbed whole, then cut.
    text = ("x" * 480 + token + " tail").encode()
    cut = classify_status(502, text, {}, WALL, [token])
    assert "MIIToken" not in (cut.error_msg or "") and len(cut.error_msg or "") <= 500
    # Escape sequences would clear the screen, retitle the window, overwrite a line.
    hostile = body("X\x1b[2J\x1b[31m", "m\x1b]0;TITLE\x07\x1b[31mred\r\x1b[2Kfake line")
    out = classify_status(400, hostile, {"X-Request-Id": "r\x1b[2J" + "9" * 300}, WALL, [])
    assert out.error_code == "X\\x1b[2J\\x1b[31m"
    assert out.error_msg == "m\\x1b]0;TITLE\\x07\\x1b[31mred\\n\\x1b[2Kfake line"
    assert out.request_id is not None and out.request_id.startswith("r\\x1b[2J999")
    assert len(out.request_id) == 128 and out.request_id.endswith("…")
    # Spaces of other scripts stay, a tab is a space; a bidirectional override is escaped.
    spaced = body("DLF.1000", "作业不存在\u3000请检查\tjob\u00a0name \u202eevil")
    out = classify_status(400, spaced, {}, WALL, [])
    assert out.error_msg == "作业不存在\u3000请检查 job\u00a0name \\u202eevil"


def test_exception_classes() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, OSError(111, "refused"))
    assert classify_exception(refused).kind is Kind.RETRY
    assert classify_exception(aiohttp.ConnectionTimeoutError()).kind is Kind.RETRY
    assert classify_exception(aiohttp.SocketTimeoutError()).kind is Kind.HELD
    assert classify_exception(TimeoutError()).kind is Kind.HELD
    assert classify_exception(aiohttp.ServerDisconnectedError()).kind is Kind.HELD
    assert classify_exception(aiohttp.ClientPayloadError("x")).kind is Kind.HELD
    # Out of file descriptors: said as such, not as a service that refuses connections.
    no_files = aiohttp.ClientConnectorError(key, OSError(errno.EMFILE, "Too many open files"))
    assert classify_exception(no_files) == Outcome(
        Kind.RETRY, reason="could not connect: Too many open files"
    )


def a_chunk(job: str = "job é/1") -> Chunk:
    b = canonical_json({"retry_location": "errorNode"})
    cid = chunk_id(job, "ws", b)
    return Chunk(cid, "window", "window[0]", job, "ws", b, (cid,))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def serve(handler: object) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.anyio
async def test_read_timeout_after_sending_is_held() -> None:
    import anyio

    async def slow(request: web.Request) -> web.Response:
        await anyio.sleep(5)
        return web.Response()

    runner, url = await serve(slow)
    try:
        t = HttpTransport(endpoint=url, project_id="p", auth=Auth(token="t"), timeout=0.3)
        async with t:
            out = await t.send(a_chunk())
        assert out.kind is Kind.HELD
        assert "timeout" in out.reason
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_connection_refused_is_retry() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    runner, url = await serve(ok)
    await runner.cleanup()  # nothing listens there any more
    t = HttpTransport(endpoint=url, project_id="p", auth=Auth(token="t"), timeout=2)
    async with t:
        out = await t.send(a_chunk())
    assert out.kind is Kind.RETRY


@pytest.mark.anyio
async def test_headers_path_and_token_on_the_wire() -> None:
    seen: list[web.Request] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request)
        await request.read()
        return web.Response(headers={"X-Request-Id": "rid-1"})

    runner, url = await serve(ok)
    try:
        t = HttpTransport(endpoint=url, project_id="proj", auth=Auth(token="tok"), timeout=2)
        async with t:
            out = await t.send(a_chunk())
        assert out.kind is Kind.DONE and out.request_id == "rid-1"
        req = seen[0]
        assert req.raw_path == "/v2/proj/factory/jobs/job%20%C3%A9%2F1/instances/retry"
        assert req.headers["workspace"] == "ws"
        assert req.headers["X-Project-Id"] == "proj"
        assert req.headers["X-Auth-Token"] == "tok"
        assert req.headers["Content-Type"] == "application/json;charset=UTF-8"
        # The session does not decompress, so it asks for no compression.
        assert req.headers["Accept-Encoding"] == "identity"
        assert req.headers["User-Agent"] == "bulkrerun"
    finally:
        await runner.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["X-Auth-Token", "X-Security-Token"])
async def test_a_part_of_a_sent_secret_echoed_in_the_request_id_is_masked(header: str) -> None:
    secret = "MIIEXAYJKoZIhvcNAQcCoIIETTCCBEkCAQExDTALBglghkgBZQMEAgEw"

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        part = request.headers[header][:30]  # an id made of what it was sent, cut short
        return web.Response(status=400, headers={"X-Request-Id": f"rid-{part}"})

    auth = Auth(token=secret) if header == "X-Auth-Token" else Auth(AkSk("AK1", "SK1", secret))
    runner, url = await serve(echo)
    try:
        async with HttpTransport(endpoint=url, project_id="p", auth=auth, timeout=2) as t:
            out = await t.send(a_chunk())
        assert out.request_id == "rid-***"
    finally:
        await runner.cleanup()


def test_an_sk_alone_adds_no_fragment_check_per_request() -> None:
    # The SK signs and never travels: a server cannot echo it.
    assert Auth(AkSk("AK1", "SK1-long-enough-to-have-windows")).sent() == []
    assert Auth(token="tok").sent() == ["tok"]


@pytest.mark.anyio
async def test_signed_request_verifies_on_the_server_side() -> None:
    from bulkrerun.signing import verify

    verdicts = []

    async def check(request: web.Request) -> web.Response:
        data = await request.read()
        path, _, query = request.raw_path.partition("?")
        verdicts.append(
            verify(
                request.method,
                path,
                query,
                request.headers,
                data,
                keys={"AK1": "SK1"},
                wall=__import__("time").time(),
            )
        )
        encodings.append(request.headers.get("Accept-Encoding"))
        return web.json_response({"total": 0})

    encodings: list[str | None] = []
    runner, url = await serve(check)
    try:
        t = HttpTransport(endpoint=url, project_id="p", auth=Auth(aksk=AkSk("AK1", "SK1")))
        async with t:
            assert (await t.send(a_chunk("odd name+/é"))).kind is Kind.DONE
            outcome, parsed = await t.get_json("/v2/p/x", {"b": "1 2", "a": 3}, "ws")
            assert outcome.kind is Kind.DONE
        assert parsed == {"total": 0}
        assert len(verdicts) == 2 and all(v.ok for v in verdicts), verdicts
        assert encodings == ["identity", "identity"]  # added after signing, unsigned
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_redirect_is_not_followed_and_the_credentials_stay_here() -> None:
    seen: list[dict[str, str]] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response()

    other, other_url = await serve(elsewhere)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{other_url}/v2/evil")

    runner, url = await serve(redirect)
    try:
        t = HttpTransport(endpoint=url, project_id="p", auth=Auth(token="secret-token"))
        async with t:
            out = await t.send(a_chunk())
            listed, page = await t.get_json("/v2/p/factory/jobs/j/instances", {"limit": 1}, "ws")
        assert seen == []
        assert out.kind is Kind.FAILED and out.status == 307
        assert (
            out.reason == f"redirected to {other_url}/v2/evil, not followed: is the endpoint right?"
        )
        assert listed.kind is Kind.FAILED and page is None
    finally:
        await runner.cleanup()
        await other.cleanup()


@pytest.mark.anyio
async def test_a_huge_answer_is_not_read_whole() -> None:
    import anyio

    sent = {"GET": 0, "POST": 0}  # bytes each answer got out before the client left

    async def flood(request: web.Request) -> web.StreamResponse:
        status = 200 if request.method == "GET" else 400
        resp = web.StreamResponse(status=status)  # chunked: no length said
        await resp.prepare(request)
        block = b"x" * 65536
        try:
            for _ in range(1024):  # 64 MB
                await resp.write(block)
                sent[request.method] += len(block)
        except (ConnectionError, anyio.BrokenResourceError):
            pass  # the client went away
        return resp

    runner, url = await serve(flood)
    try:
        t = HttpTransport(endpoint=url, project_id="p", auth=Auth(token="t"), timeout=20)
        async with t:
            refused = await t.send(a_chunk())
            listed, page = await t.get_json("/v2/p/factory/jobs/j/instances", {"limit": 1}, "ws")
        assert refused.kind is Kind.FAILED and len(refused.error_msg or "") <= 500
        assert listed.kind is Kind.RETRY and page is None
        assert listed.reason == "unreadable answer from the service (over 8,388,608 bytes)"
        # Neither was read to its 64 MB end: what got out is what was read (the refusal's
        # 64 KiB, the page's 8 MiB) and what the sockets' buffers took.
        assert sent["POST"] < 24 * 2**20 and sent["GET"] < 32 * 2**20, sent
    finally:
        await runner.cleanup()
