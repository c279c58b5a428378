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
                                                   (under AK/SK, the reason says when the
                                                   answer's ``Date`` shows our clock is off)
429                                      RETRY     throttled at the gateway before the service
408, 503                                 RETRY     the gateway did not get the request to the back
                                                   end (or asks to send again): nothing started
other 4xx (400 ``DLF.*``, 409, ...)      FAILED    a definite refusal; sending it again unchanged
                                                   gets the same answer
404, 405 without a ``DLF.*`` code        FAILED    not the service's: no such API at the gateway
                                                   (``APIG.0101``); a run stops, as for a 3xx
500, 502, 504, other 5xx                 HELD      the back end may have started the rerun: a 502
                                                   is a gateway that passed the request on and got
                                                   no valid answer (the back end reset or died
                                                   after taking it), not one that sent nothing
1xx, 600 and above                       HELD      not an answer HTTP knows: unknown whether it ran
connect error, connect timeout           RETRY     the request never left this machine
read timeout, connection lost after      HELD      the request was written; whether the service
writing, broken response                           acted is unknown, and a rerun sent twice runs
                                                   twice
a status line, then its body cut off     as its     the status is the answer, the body only says
or late                                  status    why (a 2xx is done, a 400 failed, a 503 retried)
=======================================  ========  ==============================================
"""

from __future__ import annotations

import email.utils
import errno
import html
import ipaddress
import json
import re
import ssl
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import urlencode
from urllib.request import getproxies_environment

import aiohttp
from yarl import URL

from bulkrerun import signing
from bulkrerun.chunk import Chunk
from bulkrerun.errors import SettingsError
from bulkrerun.outcome import (
    PROXY_AUTH_REQUIRED,
    PROXY_REFUSED,
    TIMED_OUT,
    Kind,
    Outcome,
    wrong_endpoint,
)
from bulkrerun.pacing import parse_retry_after
from bulkrerun.planner import request_headers, request_path
from bulkrerun.text import counted

RETRY_STATUSES = frozenset({408, 429, 503})  # not 502: see the module table
FATAL_STATUSES = frozenset({401, 403})
CONNECT_TIMEOUT = 10.0  # seconds to open a connection, at most half the request timeout
MAX_ERROR_BODY = 64 * 1024  # an error body larger than this is cut: messages, not payloads
MAX_LIST_BODY = 8 * 1024 * 1024  # an instance-list page (1,000 instances) larger is not read
MAX_ID = 128  # characters of a request id or error code kept (the service's are 32 or 8)
MAX_MESSAGE = 4000  # characters of an error message kept (a signature error's is ~1,500)
CLOCK_OFF_AFTER = 300.0
"""Seconds between this machine's clock and the ``Date`` of a refusal beyond which the
refusal says so. The gateway refuses AK/SK signatures dated more than 15 minutes from its
own time; a ``Date`` is to the second and an answer takes a moment to come, so a clock
5 minutes off is told, one a few seconds off is not."""
NOT_THE_SERVICE = "not the service's answer (no such API here): is the endpoint right?"
_DONE = Kind.DONE  # once per request: a global is cheaper than the class's member
_FATAL = Kind.FATAL


@dataclass(frozen=True, slots=True)
class Auth:
    """How requests are authenticated: AK/SK signing, an IAM token, or (fake server) nothing."""

    aksk: signing.AkSk | None = None
    token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """The secret values to keep out of messages (see :func:`signing.maskable`)."""
        out = [s for s in (self.token,) if s]
        if self.aksk is not None:
            out += [s for s in (self.aksk.sk, self.aksk.security_token) if s]
        return signing.maskable(out)

    def kind(self) -> str:
        """How requests are authenticated, for the run's record (no secret in it)."""
        if self.aksk is None:
            return "token" if self.token else "none"
        return "AK/SK with a security token" if self.aksk.security_token else "AK/SK"

    def sent(self) -> list[str]:
        """The secrets that travel in a request's headers, which a server could echo in
        part: the token and the security token (the SK only signs; it is never sent)."""
        out = [s for s in (self.token,) if s]
        if self.aksk is not None and self.aksk.security_token:
            out.append(self.aksk.security_token)
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
    echoable: frozenset[str] = frozenset(),
    signed: bool = False,
) -> Outcome:
    """Pure: a response's status, body and headers to an outcome (see the module table).
    ``signed``: the request was AK/SK-signed, so a refusal may be our clock's doing (a
    signature carries its time), which its reason then says (see :func:`clock_off`).

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
        else:
            # A part of a secret the server was sent (``echoable``: the windows of the
            # token's and the security token's characters, see signing.secret_windows).
            # Empty for AK/SK alone, whose SK never travels: no cost per request there.
            if echoable and signing.holds_fragment(request_id, echoable):
                request_id = _service_text(request_id, secrets, MAX_ID)
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
        kind = Kind.FATAL
        reason = "authentication refused" if status == 401 else "permission refused"
        if signed and (off := clock_off(headers.get("Date"), wall)) is not None:
            reason = f"{reason}: {off}"
    elif status == PROXY_AUTH_REQUIRED:  # a proxy's answer, never the service's
        kind, reason = Kind.FATAL, PROXY_REFUSED
    elif 400 <= status < 500:
        kind = Kind.FAILED
        # A 404 or 405 without a DLF code is not the service's (see wrong_endpoint): its
        # unit's reason said "refused by the service", against the run's stop.
        reason = NOT_THE_SERVICE if wrong_endpoint(status, code) else "refused by the service"
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


def clock_off(date: str | None, wall: float) -> str | None:
    """How far this machine's clock (``wall``) is from a server's, by the ``Date`` header
    of its answer, said in a phrase; None within :data:`CLOCK_OFF_AFTER` or without a
    ``Date`` that can be read. The time is said as read, never the server's text."""
    if not date:
        return None
    try:
        served = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    off = wall - served
    if not abs(off) > CLOCK_OFF_AFTER:  # also NaN-proof
        return None
    side = "ahead of" if off > 0 else "behind"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(served))
    by = counted(round(abs(off) / 60), "minute")
    return f"this machine's clock is about {by} {side} the service's ({at} by its Date)"


_NO_FILES = (errno.EMFILE, errno.ENFILE)  # this process, or the system, at its limit


def classify_exception(exc: BaseException) -> Outcome:
    """Pure: an aiohttp or OS error to an outcome. Errors that happen before the request can
    have been written are RETRY; every other one leaves the outcome unknown (HELD)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return Outcome(Kind.RETRY, reason=f"could not connect to the proxy ({name})")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy's answer to CONNECT (an https endpoint): nothing reached the service.
        if exc.status == PROXY_AUTH_REQUIRED:
            return Outcome(Kind.FATAL, status=exc.status, reason=PROXY_REFUSED)
        return Outcome(
            Kind.RETRY, reason=f"the proxy did not connect to the service ({exc.status})"
        )
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno in _NO_FILES:
        return Outcome(Kind.RETRY, reason=f"could not connect: {exc.os_error.strerror}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return Outcome(Kind.RETRY, reason=f"could not connect ({name})")
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return Outcome(Kind.HELD, reason=TIMED_OUT)
    return Outcome(Kind.HELD, reason=f"connection lost after sending ({name})")


def _error_fields(body: bytes, secrets: list[str]) -> tuple[str | None, str | None]:
    if not body:
        return None, None
    try:
        parsed = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        # Scrubbed whole, then cut: a secret across the cut would no longer match.
        text = _page_words(body[:MAX_ERROR_BODY].decode("utf-8", "replace"))
        return None, _service_text(text, secrets, 500)
    if not isinstance(parsed, dict):
        return None, _service_text(str(parsed), secrets, 500)
    code = parsed.get("error_code")
    msg = parsed.get("error_msg")
    return (
        _service_text(str(code), secrets, MAX_ID) if code is not None else None,
        _service_text(str(msg), secrets, MAX_MESSAGE) if msg is not None else None,
    )


_HTML_START = re.compile(r"\s*(<!doctype html|<html)", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HTML_NOT_SHOWN = re.compile(
    r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL
)
_HTML_TAG = re.compile(r"<[^>]*>")


def _page_words(text: str) -> str:
    """A load balancer's or gateway's HTML error page as the words a browser would show:
    ``HTML page: 502 Bad Gateway`` (its title, else its text), not 500 characters of markup
    in the stop message, the report and the journal. Any other text is as it came.

    Regular expressions, not an HTML parser: the page is read for a person, the title is
    all it needs, and an error page malformed enough to fool them still reads as text."""
    if not _HTML_START.match(text):
        return text
    title = _HTML_TITLE.search(text)
    words = title.group(1) if title else _HTML_TAG.sub(" ", _HTML_NOT_SHOWN.sub(" ", text))
    words = " ".join(html.unescape(words).split())
    return f"HTML page: {words}" if words else "HTML page"


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


@dataclass(frozen=True, slots=True)
class Proxy:
    """The HTTP proxy a run goes through. ``url`` may carry credentials (``user:pass@``):
    show ``shown``; ``variable`` is where it came from."""

    url: URL = field(repr=False)
    variable: str

    @property
    def shown(self) -> str:
        return str(self.url.with_user(None))


def proxy_from_environment(endpoint: str) -> Proxy | None:
    """The proxy the environment names for ``endpoint``, as curl and the official SDK
    (through ``requests``) read it: ``HTTPS_PROXY`` for an https endpoint, ``HTTP_PROXY``
    for http, else ``ALL_PROXY`` (either case; ``http://`` when it names no scheme), unless
    ``NO_PROXY`` matches the endpoint (see :func:`_no_proxy_matches`). A loopback endpoint
    (the fake service, a tunnel) never goes through one, as in Go's standard library.

    Written here rather than left to aiohttp's ``trust_env``: that looks the variables up
    again on every request, skips ``ALL_PROXY``, and sends ``~/.netrc`` credentials to the
    service as Basic auth. Raises :class:`SettingsError` for a proxy aiohttp cannot use
    (``socks5://``); the value is never shown with its credentials.
    """
    url = URL(endpoint)
    host = url.host
    if host is None or _loopback(host):
        return None
    proxies = getproxies_environment()  # lower case wins, as in requests and curl
    scheme = url.scheme if proxies.get(url.scheme) else "all"
    value = proxies.get(scheme, "").strip()
    if not value or _no_proxy_matches(proxies.get("no", ""), host, url.port):
        return None
    variable = f"{scheme.upper()}_PROXY"
    if "://" not in value:
        value = "http://" + value
    try:
        proxy = URL(value)
        # Nothing after host:port: a path, query or fragment here is a password with an
        # unencoded / ? or #, which would be cut there (and shown).
        usable = (
            proxy.scheme in ("http", "https")
            and bool(proxy.host)
            and proxy.path in ("", "/")
            and not proxy.query_string
            and not proxy.fragment
        )
    except ValueError:
        proxy, usable = None, False
    if proxy is None or not usable:
        scheme_part, _, rest = value.partition("://")
        shown = f"{scheme_part}://{rest.rpartition('@')[2]}"  # without user:password@
        raise SettingsError(
            f"{variable}={shown}: not a proxy this tool can use; give an http:// or "
            "https:// proxy (with any of : / ? # @ in its user or password percent-encoded), "
            "or add the endpoint's host to NO_PROXY"
        )
    return Proxy(proxy, variable)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_proxy_matches(no_proxy: str, host: str, port: int | None) -> bool:
    """Whether ``NO_PROXY`` (comma- or space-separated) names ``host`` (and ``port``), in
    the forms curl and requests take: ``*``; a name, matching it and its subdomains
    (``example.com``, ``.example.com``, ``*.example.com``); an IP address or a CIDR block
    (``10.0.0.0/8``, ``[2001:db8::1]``); any of them with ``:port``."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(",", " ").lower().split():
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: str | None = None
        if entry.startswith("["):  # [v6] or [v6]:port
            entry, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:  # name:port or v4:port; a bare v6 has more colons
            entry, entry_port = entry.split(":")
        if entry_port and (not entry_port.isdigit() or int(entry_port) != port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.removeprefix("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


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
        # Given with each request (ClientSession takes a proxy of its own only since
        # aiohttp 3.10), as a URL: a string would be parsed again every time.
        self._proxy_url = proxy.url if proxy is not None else None
        self.project_id = project_id
        self.auth = auth
        self._secrets = auth.secrets()
        self._echoable = signing.secret_windows(auth.sent())
        self._signed = auth.aksk is not None
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
                method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy_url,
            ) as resp:
                status = resp.status
                limit = MAX_LIST_BODY if want_body else MAX_ERROR_BODY
                cut = False
                broken = None  # why the body did not arrive whole, when it did not
                try:
                    length = resp.content_length
                    if length is not None and length <= limit:  # the usual answer: said, small
                        data = await resp.read()
                    else:
                        data, cut = await _read_at_most(resp, limit)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if want_body and 200 <= status < 300:  # a page that did not come whole
                        elapsed = time.perf_counter() - started
                        return _with_elapsed(classify_exception(exc), elapsed), None
                    # The status line is the answer; the body only explains it. A 400 whose
                    # body was cut is still a refusal, a 503 still not acted on, a 401 still
                    # the credentials: held without a status, they said "unknown whether it
                    # ran", and a 401 did not stop the run.
                    data, broken = b"", type(exc).__name__
                elapsed = time.perf_counter() - started
                outcome = classify_status(
                    status,
                    data,
                    resp.headers,
                    self._wall(),
                    self._secrets,
                    elapsed=elapsed,
                    echoable=self._echoable,
                    signed=self._signed,
                )
                if broken is not None and outcome.kind is not _DONE and outcome.kind is not _FATAL:
                    # Not a FATAL's reason: the engine reads a clock's drift after its colon.
                    outcome = outcome._replace(
                        reason=f"{outcome.reason} (its body did not arrive whole: {broken})"
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
