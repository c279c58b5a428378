"""The one place where HTTP happens and where its results become :class:`Outcome` kinds.

Every response status and every aiohttp error is translated here, and only here, into one
of the outcome kinds of :mod:`bulkrerun.outcome`. The table (also in the README):

=======================================  ========  ==============================================
what came back                           kind      why
=======================================  ========  ==============================================
2xx                                      DONE      the service accepted the rerun
3xx                                      FAILED    redirected: not followed (the credentials would
                                                   go with it), not acted on; the endpoint is wrong,
                                                   and a run stops (``outcome.wrong_endpoint``)
401, 403                                 FATAL     credentials or permissions: every later request
                                                   would fail the same way; abort, units pending
429                                      RETRY     throttled at the gateway before the service
408, 502, 503                            RETRY     the gateway did not get the request to the back
                                                   end (or asks to send again): nothing started
other 4xx (400 ``DLF.*``, 409, ...)      FAILED    a definite refusal; sending it again unchanged
                                                   gets the same answer
404, 405 without a ``DLF.*`` code        FAILED    not the service's: no such API at the gateway
                                                   (``APIG.0101``); a run stops, as for a 3xx
500, 504, other 5xx                      HELD      the back end may have started the rerun
1xx, 600 and above                       HELD      not an answer HTTP knows: unknown whether it ran
connect error, connect timeout           RETRY     the request never left this machine
read timeout, connection lost after      HELD      the request was written; whether the service
writing, broken response                           acted is unknown, and a rerun sent twice runs
                                                   twice
=======================================  ========  ==============================================
"""

from __future__ import annotations

import json
import ssl
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import urlencode
from urllib.request import getproxies_environment, proxy_bypass

import aiohttp
from yarl import URL

from bulkrerun import signing
from bulkrerun.chunk import Chunk
from bulkrerun.errors import SettingsError
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.pacing import parse_retry_after
from bulkrerun.planner import request_headers, request_path

RETRY_STATUSES = frozenset({408, 429, 502, 503})
FATAL_STATUSES = frozenset({401, 403})
CONNECT_TIMEOUT = 10.0  # seconds to open a connection, at most half the request timeout
MAX_ERROR_BODY = 64 * 1024  # an error body larger than this is cut: messages, not payloads
MAX_LIST_BODY = 8 * 1024 * 1024  # an instance-list page (1,000 instances) larger is not read
MAX_ID = 128  # characters of a request id or error code kept (the service's are 32 or 8)
MAX_MESSAGE = 4000  # characters of an error message kept (a signature error's is ~1,500)
_DONE = Kind.DONE  # once per request: a global is cheaper than the class's member


@dataclass(frozen=True, slots=True)
class Auth:
    """How requests are authenticated: AK/SK signing, an IAM token, or (fake server) nothing."""

    aksk: signing.AkSk | None = None
    token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        out = [s for s in (self.token,) if s]
        if self.aksk is not None:
            out += [s for s in (self.aksk.sk, self.aksk.security_token) if s]
        return out


WIRE_HEADERS: Final = {"User-Agent": "bulkrerun", "Accept": "*/*", "Accept-Encoding": "identity"}
"""Sent with every request, unsigned (the session's default headers, which aiohttp adds to
each request's own). ``identity``: the session does not decompress
(``auto_decompress=False``), so it must not invite a compressed answer, which aiohttp's
default ``Accept-Encoding: gzip, deflate`` would (a gzipped error or instance list would
read as garbage). Given here, they also spare aiohttp adding its defaults per request."""


_Route = tuple[URL, dict[str, str], signing.Prepared | None]
"""A job's URL as sent, its headers, and (AK/SK) its prepared signer: see HttpTransport._route."""


class Transport(Protocol):
    """What the engine needs: send one chunk, get one outcome. Never raises for HTTP trouble."""

    async def send(self, chunk: Chunk) -> Outcome: ...


def classify_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    wall: float,
    secrets: list[str],
    *,
    elapsed: float = 0.0,
) -> Outcome:
    """Pure: a response's status, body and headers to an outcome (see the module table).

    What the service says (request id, error code and message, a redirect's target) is
    kept as one printable line, without the run's secrets: it is shown, logged and
    journaled, and a hostile or broken server could echo a token it was sent, or send
    escape sequences that rewrite the operator's terminal."""
    request_id = headers.get("X-Request-Id") or headers.get("x-request-id")
    if request_id is not None and not (request_id.isprintable() and len(request_id) <= MAX_ID):
        request_id = _service_text(request_id, secrets, MAX_ID)
    elif request_id is not None and secrets:
        for secret in secrets:  # once per request: a loop costs less than scrub()
            if secret in request_id:
                request_id = _service_text(request_id, secrets, MAX_ID)
                break
    if 200 <= status < 300:
        # Fields in order (kind, status, error_code, error_msg, request_id, retry_after,
        # reason, elapsed): one is made per request, and by keyword it costs 2,100 more
        # instructions (callgrind: 5,800 against 3,700).
        return Outcome(_DONE, status, None, None, request_id, None, "accepted", elapsed)
    code, msg = _error_fields(body, secrets)
    retry_after = None
    if status in RETRY_STATUSES:
        kind = Kind.RETRY
        if (value := headers.get("Retry-After")) is not None:
            retry_after = parse_retry_after(value, wall)
        reason = "throttled" if status == 429 else "service unavailable, not acted on"
    elif status in FATAL_STATUSES:
        kind, reason = Kind.FATAL, "authentication or permission refused"
    elif 400 <= status < 500:
        kind, reason = Kind.FAILED, "refused by the service"
    elif 300 <= status < 400:
        # Not followed: the request and its credentials would go wherever the answer says.
        where = _service_text(headers.get("Location") or "nowhere", secrets, 200)
        kind = Kind.FAILED
        reason = f"redirected to {where}, not followed: is the endpoint right?"
    elif 500 <= status < 600:
        kind, reason = Kind.HELD, "server error: the rerun may have started"
    else:
        kind, reason = Kind.HELD, f"an answer with status {status}: unknown whether it ran"
    return Outcome(
        kind,
        status=status,
        error_code=code,
        error_msg=msg,
        request_id=request_id,
        retry_after=retry_after,
        reason=reason,
        elapsed=elapsed,
    )


def classify_exception(exc: BaseException) -> Outcome:
    """Pure: an aiohttp or OS error to an outcome. Errors that happen before the request can
    have been written are RETRY; every other one leaves the outcome unknown (HELD)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return Outcome(Kind.RETRY, reason=f"could not connect ({name})")
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    return Outcome(Kind.HELD, reason=f"connection lost after sending ({name})")


def _error_fields(body: bytes, secrets: list[str]) -> tuple[str | None, str | None]:
    if not body:
        return None, None
    try:
        parsed = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        # Scrubbed whole, then cut: a secret across the cut would no longer match.
        text = body[:MAX_ERROR_BODY].decode("utf-8", "replace")
        return None, _service_text(text, secrets, 500)
    if not isinstance(parsed, dict):
        return None, _service_text(str(parsed), secrets, 500)
    code = parsed.get("error_code")
    msg = parsed.get("error_msg")
    return (
        _service_text(str(code), secrets, MAX_ID) if code is not None else None,
        _service_text(str(msg), secrets, MAX_MESSAGE) if msg is not None else None,
    )


def _service_text(text: str, secrets: list[str], limit: int) -> str:
    """What the service said, fit to show, log and journal: without the run's secrets (see
    :func:`signing.scrub`), as one line of printable characters, at most ``limit`` of them.

    One line: a gateway's signature error (``APIG.0301``) echoes the canonical request over
    a dozen lines, which broke the stop message, the report's rows and csv cells apart; its
    breaks are written ``\\n``, after scrubbing (scrub masks secret headers line by line).
    Printable: any other control character is written as an escape (``\\x1b``), so that a
    server's text cannot clear the screen, retitle the window or overwrite a line."""
    text = signing.scrub(text, secrets)
    if not text.isprintable():
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = "".join(map(_printable, text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _printable(c: str) -> str:
    """One character of service text as shown: spaces (an ideographic space in a Chinese
    message, a no-break space) as they are, a tab as a space, a line break as ``\\n``, any
    other control or format character (ESC, a bidirectional override) as its escape."""
    if c.isprintable() or unicodedata.category(c) == "Zs":
        return c
    return " " if c == "\t" else "\\n" if c == "\n" else repr(c)[1:-1]


def ssl_context(verify: bool, ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """TLS as the operator asked: verified against the system store (default) or a CA file."""
    if not verify:
        return False
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return True


_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Proxy:
    """The HTTP proxy a run goes through. ``url`` may carry credentials (``user:pass@``):
    show ``shown`` instead; ``variable`` is where it came from."""

    url: str
    variable: str

    @property
    def shown(self) -> str:
        return str(URL(self.url).with_user(None))


def proxy_from_environment(endpoint: str) -> Proxy | None:
    """The proxy the environment names for ``endpoint``, as curl and the official SDK
    (through ``requests``) read it: ``HTTPS_PROXY`` for an https endpoint, ``HTTP_PROXY``
    for http, else ``ALL_PROXY`` (either case), unless ``NO_PROXY`` names the host. A
    loopback endpoint (the fake service, a tunnel) never goes through one, as in Go's
    standard library.

    Written here rather than left to aiohttp's ``trust_env``: that looks the variables up
    again on every request, and also sends ``~/.netrc`` credentials to the service as Basic
    auth. Raises :class:`SettingsError` for a proxy aiohttp cannot use (``socks5://``).
    """
    url = URL(endpoint)
    host = url.host
    if host is None or host in _LOOPBACK or host.startswith("127."):
        return None
    proxies = getproxies_environment()
    scheme = url.scheme if url.scheme in proxies else "all"
    value = proxies.get(scheme)
    if not value or proxy_bypass(host):  # NO_PROXY
        return None
    variable = f"{scheme.upper()}_PROXY"
    shown = str(URL(value).with_user(None)) if "://" in value else value
    if URL(value).scheme not in ("http", "https") or not URL(value).host:
        raise SettingsError(
            f"{variable}={shown}: not a proxy this tool can use; give an http:// or "
            "https:// proxy, or add the endpoint's host to NO_PROXY"
        )
    return Proxy(value, variable)


class HttpTransport:
    """One aiohttp session per run, its pool sized to the in-flight limit."""

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        auth: Auth,
        timeout: float = 30.0,
        max_inflight: int = 16,
        verify_tls: bool = True,
        ca_bundle: Path | None = None,
        proxy: Proxy | None = None,
        wall: Any = time.time,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.proxy = proxy
        self.project_id = project_id
        self.auth = auth
        self._secrets = auth.secrets()
        self._wall = wall
        # ``timeout`` bounds the whole request (one timer per request; a per-read timeout
        # would re-arm a timer on every packet). Connecting has a shorter bound of its own so
        # that a connect timeout is told apart: nothing was sent, it is safe to retry.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout / 2, CONNECT_TIMEOUT)
        )
        self._max_inflight = max_inflight
        self._ssl = ssl_context(verify_tls, ca_bundle)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, dict[str, str]] = {}
        # Per (job, workspace): the URL as sent, and the headers ready to send or (AK/SK)
        # the signing work that does not depend on the body or the date. A run sends
        # thousands of requests to each: one lookup per request.
        self._routes: dict[tuple[str, str], _Route] = {}

    async def __aenter__(self) -> Self:
        # One endpoint: the total limit is the per-host limit, without aiohttp keeping
        # per-host counts on every request.
        connector = aiohttp.TCPConnector(limit=self._max_inflight, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=WIRE_HEADERS,
            # No cookies, no compression (see WIRE_HEADERS): the service answers tiny bodies.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            proxy=self.proxy.url if self.proxy is not None else None,
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _route(self, job_name: str, workspace: str) -> _Route:
        """What every request of a job in a workspace shares. The URL is sent as signed:
        ``encoded=True`` keeps yarl from re-quoting the path, which would change what the
        signature covers."""
        url = self.endpoint + request_path(self.project_id, job_name)
        headers = self._base_headers(workspace)
        aksk = self.auth.aksk
        prepared = signing.prepare("POST", url, headers, aksk) if aksk is not None else None
        route = self._routes[job_name, workspace] = (URL(url, encoded=True), headers, prepared)
        return route

    def _base_headers(self, workspace: str) -> dict[str, str]:
        """The request's own headers (signed under AK/SK), token-authenticated: all of
        them, ready to send (the session adds WIRE_HEADERS)."""
        h = self._headers.get(workspace)
        if h is None:
            h = self._headers[workspace] = request_headers(workspace, self.project_id)
            if self.auth.aksk is None and self.auth.token:
                h["X-Auth-Token"] = self.auth.token
        return h

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """The headers to send: AK/SK-signed when AK/SK is configured."""
        if self.auth.aksk is None:
            return headers
        # WIRE_HEADERS come from the session: unsigned, as a client library adds them.
        return signing.sign(method, url, headers, body, self.auth.aksk, self._wall())

    async def send(self, chunk: Chunk) -> Outcome:
        route = self._routes.get((chunk.job_name, chunk.workspace))
        if route is None:
            route = self._route(chunk.job_name, chunk.workspace)
        wire, headers, prepared = route
        if prepared is not None:
            headers = signing.sign_prepared(prepared, chunk.body, self._wall())
        outcome, _ = await self._request("POST", wire, headers, chunk.body)
        return outcome

    async def get_json(
        self, path: str, query: Mapping[str, str | int], workspace: str
    ) -> tuple[Outcome, Any]:
        """A signed GET (the instance-list API): the outcome and, when DONE, the parsed body."""
        url = f"{self.endpoint}{path}?{urlencode(sorted(query.items()))}"
        headers = self.sign("GET", url, self._base_headers(workspace), b"")
        return await self._request("GET", URL(url, encoded=True), headers, None, want_body=True)

    async def _request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        want_body: bool = False,
    ) -> tuple[Outcome, Any]:
        assert self._session is not None, "use HttpTransport as an async context manager"
        started = time.perf_counter()
        parsed: Any = None
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                limit = MAX_LIST_BODY if want_body else MAX_ERROR_BODY
                cut = False
                try:
                    length = resp.content_length
                    if length is not None and length <= limit:  # the usual answer: said, small
                        data = await resp.read()
                    else:
                        data, cut = await _read_at_most(resp, limit)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if 200 <= status < 300 and not want_body:
                        data = b""  # the status line already said accepted
                    else:
                        elapsed = time.perf_counter() - started
                        return _with_elapsed(classify_exception(exc), elapsed), None
                elapsed = time.perf_counter() - started
                outcome = classify_status(
                    status, data, resp.headers, self._wall(), self._secrets, elapsed=elapsed
                )
                if want_body and outcome.kind is Kind.DONE:
                    try:
                        if cut:  # a page cut short cannot be read
                            raise ValueError(f"over {limit:,} bytes")
                        parsed = json.loads(data)
                    except ValueError:
                        outcome = Outcome(
                            Kind.RETRY,
                            status=status,
                            reason="unreadable answer from the service"
                            + (f" (over {limit:,} bytes)" if cut else ""),
                            elapsed=elapsed,
                        )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = _with_elapsed(classify_exception(exc), time.perf_counter() - started)
        return outcome, parsed


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """A body of unknown or large length, read up to ``limit`` bytes, and whether it was
    cut there: a server's answer must not fill the memory (a 2 GB body took 5.8 GB). The
    rest of a cut body stays unread, and the connection is closed rather than reused."""
    parts: list[bytes] = []
    size = 0
    async for part in resp.content.iter_any():
        parts.append(part)
        size += len(part)
        if size > limit:
            resp.close()
            return b"".join(parts)[:limit], True
    return b"".join(parts), False


def _with_elapsed(o: Outcome, elapsed: float) -> Outcome:
    return Outcome(
        o.kind, o.status, o.error_code, o.error_msg, o.request_id, o.retry_after, o.reason, elapsed
    )
