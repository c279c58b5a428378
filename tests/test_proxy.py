"""An HTTP proxy named by the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``),
as curl and the official SDK (through ``requests``) take it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bulkrerun.errors import SettingsError
from bulkrerun.transport import proxy_from_environment
from tests.conftest import Cli, Service, write_manifest
from tests.test_run_e2e import one_window, status_of

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any proxy variable of the machine's."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_the_proxy_for_the_endpoints_scheme_is_taken(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    proxy_env.setenv("http_proxy", "http://other.corp:8080")
    https = proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com")
    http = proxy_from_environment("http://dlf.internal:8080")
    assert https is not None and http is not None
    assert (str(https.url), https.variable) == ("http://proxy.corp:3128", "HTTPS_PROXY")
    assert (str(http.url), http.variable) == ("http://other.corp:8080", "HTTP_PROXY")


def test_a_proxy_without_a_scheme_is_an_http_one(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTPS_PROXY", "ops:hunter2@proxy.corp:3128")  # as curl takes it
    found = proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com")
    assert found is not None and found.shown == "http://proxy.corp:3128"
    assert "hunter2" not in repr(found)


def test_all_proxy_serves_when_the_scheme_has_none(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("ALL_PROXY", "http://proxy.corp:3128")
    found = proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com")
    assert found is not None and found.variable == "ALL_PROXY"


def test_no_proxy_and_loopback_go_direct(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    proxy_env.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    proxy_env.setenv("NO_PROXY", ".myhuaweicloud.com,10.0.0.1")
    assert proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com") is None
    assert proxy_from_environment("http://10.0.0.1:8080") is None
    for loopback in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        assert proxy_from_environment(loopback) is None
    assert proxy_from_environment("https://dlf.other.example") is not None
    assert proxy_from_environment("https://127.example.com") is not None  # not loopback


@pytest.mark.parametrize(
    ("no_proxy", "endpoint", "direct"),
    [
        ("10.0.0.0/8", "https://10.1.2.3", True),
        ("10.0.0.0/8", "https://11.1.2.3", False),
        ("dlf.internal:8443", "https://dlf.internal:8443", True),
        ("dlf.internal:8443", "https://dlf.internal", False),
        ("[2001:db8::1]", "https://[2001:db8::1]", True),
        ("2001:db8::/32", "https://[2001:db8::5]:8443", True),
        ("*.example.com", "https://dlf.example.com", True),
        ("example.com", "https://dlf.example.com", True),
        ("example.com", "https://badexample.com", False),
        ("other.com dlf.internal", "https://dlf.internal", True),
        ("other.com,\tdlf.internal", "https://dlf.internal", True),
        ("*", "https://anything.example", True),
    ],
)
def test_no_proxy_in_the_forms_curl_and_requests_take(
    proxy_env: pytest.MonkeyPatch, no_proxy: str, endpoint: str, direct: bool
) -> None:
    proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    proxy_env.setenv("no_proxy", no_proxy)
    assert (proxy_from_environment(endpoint) is None) is direct


def test_no_proxy_variable_no_proxy(proxy_env: pytest.MonkeyPatch) -> None:
    assert proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com") is None


@pytest.mark.parametrize(
    "value",
    [
        "socks5://ops:hunter2@proxy.corp:1080",
        "http://ops:hun#ter2@proxy.corp:3128",
        "http://ops:8080#ter2@proxy.corp:3128",  # parses, with the rest as a fragment
        "http://ops:12/ter2@proxy.corp:3128",  # parses, with the rest as a path
        "http://ops:12?ter2@proxy.corp:3128",
    ],
)
def test_a_proxy_value_it_cannot_use_is_refused_without_its_password(
    proxy_env: pytest.MonkeyPatch, value: str
) -> None:
    proxy_env.setenv("HTTPS_PROXY", value)
    with pytest.raises(SettingsError) as caught:
        proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com")
    assert "HTTPS_PROXY=" in str(caught.value) and "proxy.corp" in str(caught.value)
    assert "ter2" not in str(caught.value)


def test_a_proxys_answers_are_told_from_the_services() -> None:
    import aiohttp
    from multidict import CIMultiDict

    from bulkrerun.outcome import Kind
    from bulkrerun.transport import classify_exception, classify_status

    assert classify_status(407, b"", CIMultiDict(), 0.0, []).kind is Kind.FATAL
    refused = aiohttp.ClientHttpProxyError(None, (), status=407)  # type: ignore[arg-type]
    assert classify_exception(refused).kind is Kind.FATAL
    gone = aiohttp.ClientHttpProxyError(None, (), status=502)  # type: ignore[arg-type]
    assert classify_exception(gone).kind is Kind.RETRY  # before anything reached the service
    assert classify_exception(gone).status is None


def test_a_proxys_credentials_are_not_shown(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTPS_PROXY", "http://ops:hunter2@proxy.corp:3128")
    found = proxy_from_environment("https://dlf.cn-north-4.myhuaweicloud.com")
    assert found is not None and found.shown == "http://proxy.corp:3128"
    assert found.url.password == "hunter2"  # what the proxy is given


class ForwardProxy:
    """A forward HTTP proxy on loopback that knows one name the machine's resolver does
    not: ``fake.invalid`` is 127.0.0.1. A request to it arrives only through the proxy."""

    def __init__(self, credentials: str | None = None) -> None:
        """``credentials`` (``user:password``): what it asks for, answering 407 without."""
        self.credentials = credentials
        self.heads: list[bytes] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        """One HTTP/1.1 message: its head and its body (of Content-Length bytes)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head, await reader.readexactly(length)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # As a proxy does: each request's absolute target becomes its path on the way on.
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head, body = await self._message(reader)
                self.heads.append(head)
                if self.credentials is not None:
                    basic = base64.b64encode(self.credentials.encode())
                    if b"Proxy-Authorization: Basic " + basic not in head:
                        writer.write(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                            b'Proxy-Authenticate: Basic realm="corp"\r\n'
                            b"Content-Length: 0\r\n\r\n"
                        )
                        await writer.drain()
                        continue
                line, rest = head.split(b"\r\n", 1)
                method, target, version = line.split(b" ")
                url = urlsplit(target.decode())
                if upstream is None:
                    host = "127.0.0.1" if url.hostname == "fake.invalid" else str(url.hostname)
                    upstream = await asyncio.open_connection(host, url.port)
                path = url.path + (f"?{url.query}" if url.query else "")
                upstream[1].write(b" ".join((method, path.encode(), version)) + b"\r\n" + rest)
                upstream[1].write(body)
                answer, answer_body = await self._message(upstream[0])
                writer.write(answer + answer_body)
                await writer.drain()
        writer.close()
        if upstream is not None:
            upstream[1].close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    @contextlib.contextmanager
    def running(self) -> Iterator[ForwardProxy]:
        thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        thread.start()
        assert self._ready.wait(10)
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)


def test_a_run_goes_through_the_proxy_the_environment_names(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service()
    port = int(srv.url.rsplit(":", 1)[1])
    endpoint = f"http://fake.invalid:{port}"  # resolvable only by the proxy
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "10m"))  # 12 requests
    j = tmp_path / "j"
    with ForwardProxy().running() as proxy:
        env = {k: v for k, v in cli.env(endpoint).items() if k.lower() not in _PROXY_VARIABLES}
        env["HTTP_PROXY"] = f"http://ops:hunter2@127.0.0.1:{proxy.port}"
        out = cli("run", str(m), "--journal", str(j), "--rate", "100", env=env)
    assert out.returncode == 0, out.stderr
    assert len(srv.ledger()) == 12
    assert status_of(cli, j)["done"] == 12
    flat = " ".join(out.stderr.split())
    assert f"at {endpoint} through http://127.0.0.1:{proxy.port} (HTTP_PROXY)" in flat
    # The proxy's credentials went to the proxy, and nowhere else.
    assert proxy.heads
    basic = base64.b64encode(b"ops:hunter2").decode()
    assert all(f"Proxy-Authorization: Basic {basic}".encode() in h for h in proxy.heads)
    assert "hunter2" not in out.stderr + out.stdout
    assert "hunter2" not in j.read_text(encoding="utf-8")
    run = next(json.loads(line) for line in j.read_text().splitlines() if '"t":"run"' in line)
    assert run["options"]["proxy"] == f"http://127.0.0.1:{proxy.port}"


@pytest.mark.parametrize("scheme", ["http", "https"])  # https: the proxy refuses CONNECT
def test_a_proxy_that_wants_other_credentials_stops_the_run_with_nothing_sent(
    cli: Cli, fake_service: type[Service], tmp_path: Path, scheme: str
) -> None:
    srv = fake_service()
    port = int(srv.url.rsplit(":", 1)[1])
    m = write_manifest(tmp_path / "m.toml", one_window("ods_orders", 2, "10m"))  # 12 requests
    j = tmp_path / "j"
    with ForwardProxy(credentials="ops:right").running() as proxy:
        env = {
            k: v
            for k, v in cli.env(f"{scheme}://fake.invalid:{port}").items()
            if k.lower() not in _PROXY_VARIABLES
        }
        env[f"{scheme.upper()}_PROXY"] = f"ops:wrong@127.0.0.1:{proxy.port}"  # no scheme
        out = cli("run", str(m), "--journal", str(j), "--rate", "100", env=env)
    assert out.returncode == 3, out.stderr
    flat = " ".join(out.stderr.split())
    assert "the proxy refused the request (407)" in flat
    assert "wrong" not in out.stderr
    assert proxy.heads and srv.ledger() == []
    s = status_of(cli, j)
    assert (s["done"], s["failed"], s["held"], s["pending"]) == (0, 0, 0, 12)
