"""Tests of AK/SK signing: byte-for-byte agreement with the official SDK, and the gateway side.

How the official SDK is driven (``huaweicloudsdkcore`` 3.1.219), exactly as its client does
it in ``Client.build_future_request`` and ``Credentials.sign_request``:

* the resource path has each path parameter encoded with ``quote(str(v), safe='')``
  (``Client._parse_path_params``), so a job name is one percent-encoded segment;
* ``query_params`` is the list of decoded ``(key, value)`` tuples, repeated keys included
  (``Client._parse_query_params``);
* ``header_params`` holds the request's own headers (``workspace``, ``Content-Type``...)
  and ``host`` is the endpoint's netloc (``Client._url_parse``);
* ``BasicCredentials(ak, sk, project_id).sign_request(request)`` adds ``X-Project-Id``, then
  ``X-Security-Token`` for temporary credentials, then runs ``Signer.sign``, which adds
  ``X-Sdk-Date`` and ``Host`` and the ``Authorization`` header and rewrites ``request.uri``
  to the path with the canonical query (what goes on the wire).

The one change for a deterministic test: ``X-Sdk-Date`` is put in ``header_params`` before
signing. The SDK then parses that date instead of reading ``datetime.utcnow()``, which is
its documented way of signing for a given time. Our side gets the same instant as ``wall``
and ``X-Project-Id`` among its headers (as bulkrerun's transport passes it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkrerun.signing import (
    EMPTY_SHA256,
    AkSk,
    Verdict,
    canonical_query,
    canonical_request,
    canonical_uri,
    mask_fragments,
    prepare,
    request_target,
    scrub,
    sdk_date,
    secret_windows,
    sign,
    sign_prepared,
    verify,
)

AK = "HPUAEXAMPLEAK0000001"
SK = "sEcReT+sk/with=chars0123456789abcdefghij"
TOKEN = "gQpjbi1ub3J0aC00TOKENVALUE+/=="
PROJECT = "62099355b894428e8916573ae635f1f9"
WORKSPACE = "62fbba734e634c5087656fc3ff7adf34"
WALL = 1732601580.75  # 2024-11-26T06:13:00.75Z
SIGNED_AT = 1732601580  # the second X-Sdk-Date says for WALL (floored)
KEYS = {AK: SK}
# Property tests check logic, not speed: on a loaded machine hypothesis's per-example deadline
# and its "too slow" health check fail for reasons that have nothing to do with signing.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that can stand in a URL or header value: no surrogates (not encodable) and no control
# characters (no HTTP stack would carry them in a header).
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
    max_size=20,
)
# Characters a job name or query may hold that need encoding, to make them frequent.
_RESERVED = st.sampled_from([*" /?#[]@!$&'()*+,;=%~-._:\"<>{}|\\^`", "é", "数据", "😀"])
_URL_TEXT = st.lists(st.one_of(_RESERVED, _TEXT), max_size=6).map("".join)
# A few fixed keys make repeated keys (sorted by value then) frequent.
_QUERY_KEY = st.one_of(st.sampled_from(["a", "A", "a b", ""]), _URL_TEXT)
_RESERVED_NAMES = {
    "workspace",
    "host",
    "x-sdk-date",
    "authorization",
    "x-security-token",
    "x-project-id",
    "content-type",
    "x-sdk-content-sha256",
}
_HEADER_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True).filter(
    lambda name: name.lower() not in _RESERVED_NAMES
)


def _random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(name, flips, strict=True))


@dataclass(frozen=True)
class Case:
    """One generated request, in both the SDK's terms and ours."""

    method: str
    scheme: str
    host: str
    path: str
    query: list[tuple[str, str]]
    quote_via: Callable[..., str]
    headers: dict[str, str]
    body: bytes
    token: str | None
    wall: float

    @property
    def url(self) -> str:
        query = urlencode(self.query, quote_via=self.quote_via)
        return f"{self.scheme}://{self.host}{self.path}" + (f"?{query}" if query else "")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    job = draw(_URL_TEXT.filter(bool))
    path = f"/v2/{PROJECT}/factory/jobs/{quote(job, safe='')}/instances/retry"
    headers: dict[str, str] = {"workspace": WORKSPACE}
    for name in draw(st.lists(_HEADER_NAME, max_size=4, unique_by=str.lower)):
        headers[name] = draw(_TEXT)
    content_type = draw(
        st.sampled_from(
            [
                None,
                "application/json;charset=UTF-8",
                "application/json;charset=utf-8",
                "application/bson",
                "text/plain",
            ]
        )
    )
    if content_type is not None:
        headers[_random_case(draw, "Content-Type")] = content_type
    host = draw(
        st.sampled_from(
            [
                "127.0.0.1:8080",
                "dayu.cn-north-4.myhuaweicloud.com",
                "dayu.eu-west-101.myhuaweicloud.eu:443",
                "[::1]:8443",
                "Example.COM",
            ]
        )
    )
    if draw(st.booleans()) and draw(st.booleans()):
        headers[_random_case(draw, "Host")] = host
    return Case(
        method=draw(st.sampled_from(["POST", "GET", "put", "DELETE"])),
        scheme=draw(st.sampled_from(["http", "https"])),
        host=host,
        path=path,
        query=draw(st.lists(st.tuples(_QUERY_KEY, _URL_TEXT), max_size=5)),
        quote_via=draw(st.sampled_from([quote, quote_plus])),
        headers=headers,
        body=draw(st.one_of(st.just(b""), st.binary(max_size=64))),
        token=draw(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9+/=]{1,40}", fullmatch=True))),
        wall=draw(st.floats(min_value=946684800, max_value=4102444799, allow_nan=False)),
    )


def sdk_sign(case: Case) -> SdkRequest:
    """Sign ``case`` with the official SDK, driven as its client drives it (module docstring)."""
    credentials = BasicCredentials(AK, SK, PROJECT)
    if case.token is not None:
        credentials = credentials.with_security_token(case.token)
    request = SdkRequest(
        method=case.method,
        schema=case.scheme,
        host=case.host,
        resource_path=case.path,
        query_params=list(case.query),
        header_params={**case.headers, "X-Sdk-Date": sdk_date(case.wall)},
        body=case.body,
    )
    signed: SdkRequest = credentials.sign_request(request)
    return signed


def our_sign(case: Case) -> dict[str, str]:
    headers = {**case.headers, "X-Project-Id": PROJECT}
    return sign(case.method, case.url, headers, case.body, AkSk(AK, SK, case.token), case.wall)


def _from_wire(value: str) -> str:
    # The SDK leaves header values as UTF-8 bytes spelled in Latin-1 (what `requests` sends).
    return value.encode("iso-8859-1").decode()


def _split_target(url: str) -> tuple[str, str]:
    path, _, query = request_target(url).partition("?")
    return path, query


# --- agreement with the official SDK ----------------------------------------------------------


@settings(parent=PROPERTY, max_examples=250)
@given(cases())
def test_sign_agrees_with_the_official_sdk(case: Case) -> None:
    ours = our_sign(case)
    theirs = sdk_sign(case)

    assert ours["Authorization"] == theirs.header_params["Authorization"]
    # The same headers are sent, with the same values.
    assert {k.lower() for k in ours} == {k.lower() for k in theirs.header_params}
    sdk_values = {
        k.lower(): _from_wire(v) for k, v in theirs.header_params.items() if k != "Authorization"
    }
    assert {k.lower(): v for k, v in ours.items() if k != "Authorization"} == sdk_values
    # And the same request target goes on the wire.
    assert request_target(case.url) == theirs.uri


@settings(parent=PROPERTY, max_examples=150)
@given(cases())
def test_verify_accepts_what_the_official_sdk_signs(case: Case) -> None:
    """The fake server must accept the SDK client unchanged."""
    signed = sdk_sign(case)
    path, _, query = signed.uri.partition("?")
    headers = {k: _from_wire(v) for k, v in signed.header_params.items()}
    verdict = verify(signed.method, path, query, headers, case.body, keys=KEYS, wall=case.wall + 1)
    assert verdict == Verdict(ok=True)


@settings(parent=PROPERTY, max_examples=100)
@given(
    cases(),
    st.lists(
        st.tuples(
            st.one_of(st.just(b""), st.binary(max_size=64)),
            st.floats(min_value=946684800, max_value=4102444799, allow_nan=False),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_one_prepared_signer_signs_every_body_and_second_as_sign_does(
    case: Case, requests: list[tuple[bytes, float]]
) -> None:
    headers = {**case.headers, "X-Project-Id": PROJECT}
    creds = AkSk(AK, SK, case.token)
    prepared = prepare(case.method, case.url, headers, creds)
    for body, wall in requests:
        assert sign_prepared(prepared, body, wall) == sign(
            case.method, case.url, headers, body, creds, wall
        )


@pytest.mark.parametrize(
    "value", ["x-sdk-date:", "\x00", "a\x00\x00b", "x-sdk-date:\x00", "\x00x-sdk-date:\x00\x00"]
)
def test_header_values_like_the_date_line_or_with_nuls_sign_as_the_sdk_does(value: str) -> None:
    # The prepared signer marks the date's place in the canonical request; no header value
    # may be mistaken for that mark. Names sort before and after x-sdk-date.
    case = Case(
        method="POST",
        scheme="http",
        host="127.0.0.1:8080",
        path=f"/v2/{PROJECT}/factory/jobs/job/instances/retry",
        query=[],
        quote_via=quote,
        headers={"workspace": WORKSPACE, "a-before": value, "z-after": value},
        body=b"{}",
        token=None,
        wall=WALL,
    )
    assert our_sign(case)["Authorization"] == sdk_sign(case).header_params["Authorization"]


GOLDEN_SIGNATURE = "7d632f2b8fac6ffc0ea48a22844283b8a1b6aa27a8688d391b19ed7a3df46e92"
GOLDEN = Case(
    method="POST",
    scheme="http",
    host="127.0.0.1:8080",
    path=f"/v2/{PROJECT}/factory/jobs/a%20b%2F%C3%A9~%2B%25/instances/retry",
    query=[("b", "x y"), ("a", "2"), ("a", "1"), ("c", "")],
    quote_via=quote,
    headers={"workspace": WORKSPACE, "Content-Type": "application/json;charset=UTF-8"},
    body=b'{"retry_location":"errorNode"}',
    token=None,
    wall=WALL,
)


def test_golden_vector() -> None:
    """A fixed request whose signature the SDK computed once, kept as a plain regression."""
    headers = {**GOLDEN.headers, "X-Project-Id": PROJECT}
    out = sign("POST", GOLDEN.url, headers, GOLDEN.body, AkSk("AKX", "SKY"), WALL)
    expected = (
        "SDK-HMAC-SHA256 Access=AKX, "
        "SignedHeaders=content-type;host;workspace;x-project-id;x-sdk-date, "
        f"Signature={GOLDEN_SIGNATURE}"
    )
    assert out["X-Sdk-Date"] == "20241126T061300Z"
    assert out["Host"] == "127.0.0.1:8080"
    assert out["Authorization"] == expected
    credentials = BasicCredentials("AKX", "SKY", PROJECT)
    request = SdkRequest(
        method="POST",
        schema="http",
        host=GOLDEN.host,
        resource_path=GOLDEN.path,
        query_params=list(GOLDEN.query),
        header_params={**GOLDEN.headers, "X-Sdk-Date": "20241126T061300Z"},
        body=GOLDEN.body,
    )
    assert credentials.sign_request(request).header_params["Authorization"] == expected


def test_canonical_request_layout() -> None:
    canonical = canonical_request(
        "post",
        "/v2/p/factory/jobs/a%20b/instances/retry",
        "z=1&a=%7e+x",
        {"Host": "h:8080", "X-Sdk-Date": "20241126T061300Z", "skip_me": "x", "B": "  v  "},
        EMPTY_SHA256,
    )
    assert canonical == (
        "POST\n"
        "/v2/p/factory/jobs/a%20b/instances/retry/\n"
        "a=~%20x&z=1\n"
        "b:v\nhost:h:8080\nx-sdk-date:20241126T061300Z\n"
        "\n"
        "b;host;x-sdk-date\n" + EMPTY_SHA256
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/a/b", "/a/b/"),
        ("/a/b/", "/a/b/"),
        ("/a%2Fb", "/a/b/"),  # an encoded slash is signed as a separator, as the SDK does
        ("/%7E~%41", "/~~A/"),
        ("/数据", "/%E6%95%B0%E6%8D%AE/"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert canonical_uri(path) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("a=2&a=1&a=", "a=&a=1&a=2"),
        ("flag", "flag="),
        ("k=a+b&k2=a%20b&k3=a%2Bb", "k=a%20b&k2=a%20b&k3=a%2Bb"),
        ("%E6%95%B0=%3D%26", "%E6%95%B0=%3D%26"),
    ],
)
def test_canonical_query(query: str, expected: str) -> None:
    assert canonical_query(query) == expected


# --- sign ---------------------------------------------------------------------------------------


def test_sdk_date() -> None:
    assert sdk_date(WALL) == "20241126T061300Z"
    assert sdk_date(0) == "19700101T000000Z"
    assert sdk_date(59.999) == "19700101T000059Z"


def test_sdk_date_is_utc_whatever_the_machines_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Operators often run on machines set to China time. A date in local time passes every
    # other test on a machine in UTC, and there puts every request 8 h off: the gateway
    # refuses a date more than 15 minutes off. (A POSIX rule: no zone files needed.)
    with monkeypatch.context() as m:
        m.setenv("TZ", "CST-8")
        time.tzset()
        try:
            assert time.localtime(0).tm_hour == 8  # the machine's zone is +08:00 now
            assert sdk_date(WALL + 3607) == "20241126T071307Z"
        finally:
            m.undo()
            time.tzset()


def _retry_request() -> tuple[str, dict[str, str], bytes]:
    url = f"http://127.0.0.1:8080/v2/{PROJECT}/factory/jobs/ods_orders/instances/retry"
    headers = {
        "workspace": WORKSPACE,
        "Content-Type": "application/json;charset=UTF-8",
        "X-Project-Id": PROJECT,
    }
    body = json.dumps({"retry_location": "errorNode"}).encode()
    return url, headers, body


def test_sign_adds_the_auth_headers_and_keeps_the_given_ones() -> None:
    url, headers, body = _retry_request()
    out = sign("POST", url, headers, body, AkSk(AK, SK, TOKEN), WALL)
    assert out.items() >= headers.items()
    assert out["X-Security-Token"] == TOKEN
    assert out["X-Sdk-Date"] == "20241126T061300Z"
    assert out["Host"] == "127.0.0.1:8080"
    assert out["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;workspace;"
        "x-project-id;x-sdk-date;x-security-token, Signature="
    )
    assert SK not in json.dumps(out)


def test_resigning_replaces_stale_auth_headers() -> None:
    url, headers, body = _retry_request()
    first = sign("POST", url, headers, body, AkSk(AK, SK, TOKEN), WALL)
    # A retry re-signs later, perhaps from the signed headers; nothing stale survives.
    again = sign("POST", url, first, body, AkSk(AK, SK), WALL + 60)
    assert again == sign("POST", url, headers, body, AkSk(AK, SK), WALL + 60)
    assert "X-Security-Token" not in again


def test_sign_keeps_a_given_host() -> None:
    url, headers, body = _retry_request()
    out = sign("POST", url, {**headers, "host": "proxy.example"}, body, AkSk(AK, SK), WALL)
    assert out["host"] == "proxy.example"
    assert "Host" not in out


def test_sign_refuses_a_header_given_twice() -> None:
    url, headers, body = _retry_request()
    with pytest.raises(ValueError, match="given twice"):
        sign("POST", url, {**headers, "WORKSPACE": "other"}, body, AkSk(AK, SK), WALL)


# --- verify -------------------------------------------------------------------------------------


def _signed(creds: AkSk | None = None) -> tuple[str, str, dict[str, str], bytes]:
    url, headers, body = _retry_request()
    out = sign("POST", url + "?b=1&a=x", headers, body, creds or AkSk(AK, SK, TOKEN), WALL)
    path, query = _split_target(url + "?b=1&a=x")
    return path, query, out, body


def test_verify_accepts_what_sign_produces() -> None:
    path, query, headers, body = _signed()
    assert verify("POST", path, query, headers, body, keys=KEYS, wall=WALL).ok
    # Headers a client library adds after signing are not signed and do not matter; nor does
    # the spelling of the query on the wire or the case of header names.
    extra = {**headers, "Content-Length": str(len(body)), "Accept-Encoding": "gzip"}
    lowered = {k.lower(): v for k, v in extra.items()}
    assert verify("POST", path, "a=x&b=1", lowered, body, keys=KEYS, wall=WALL).ok
    # A path that still carries its query is split.
    assert verify("POST", f"{path}?{query}", "", headers, body, keys=KEYS, wall=WALL).ok


@pytest.mark.parametrize("skew", [-900.0, 0.0, 899.9, 900.0])
def test_verify_accepts_a_date_within_fifteen_minutes(skew: float) -> None:
    path, query, headers, body = _signed()
    assert verify("POST", path, query, headers, body, keys=KEYS, wall=SIGNED_AT + skew).ok


def _mutations() -> dict[str, Callable[[str, str, dict[str, str], bytes], Any]]:
    def change_header(name: str, value: str) -> Callable[..., Any]:
        return lambda p, q, h, b: (p, q, {**h, name: value}, b)

    return {
        "body": lambda p, q, h, b: (p, q, h, b + b" "),
        "empty body": lambda p, q, h, b: (p, q, h, b""),
        "path": lambda p, q, h, b: (p.replace("ods_orders", "ods_orderz"), q, h, b),
        "query": lambda p, q, h, b: (p, q + "&c=1", h, b),
        "workspace": change_header("workspace", "0" * 32),
        "project": change_header("X-Project-Id", "another"),
        "token": change_header("X-Security-Token", "forged"),
        "date": change_header("X-Sdk-Date", sdk_date(WALL + 1)),
        "host": change_header("Host", "127.0.0.1:8081"),
    }


@pytest.mark.parametrize("what", sorted(_mutations()))
def test_verify_rejects_a_changed_request(what: str) -> None:
    request = _mutations()[what](*_signed())
    verdict = verify("POST", *request, keys=KEYS, wall=WALL)
    assert verdict.error_code == "APIG.0301"
    assert verdict.error_msg is not None
    assert "verify aksk signature fail, canonicalRequest: POST\n/v2/" in verdict.error_msg
    assert SK not in verdict.error_msg


def test_verify_rejects_a_changed_method() -> None:
    verdict = verify("PUT", *_signed(), keys=KEYS, wall=WALL)
    assert not verdict.ok


def _refusal(
    headers_change: Callable[[dict[str, str]], dict[str, str]] = lambda h: h,
    *,
    keys: dict[str, str] = KEYS,
    wall: float = WALL,
) -> str:
    path, query, headers, body = _signed()
    verdict = verify("POST", path, query, headers_change(headers), body, keys=keys, wall=wall)
    assert not verdict.ok
    assert verdict.error_code == "APIG.0301"
    assert verdict.error_msg is not None
    assert SK not in verdict.error_msg
    return verdict.error_msg


def test_verify_rejects_a_wrong_sk() -> None:
    message = _refusal(keys={AK: "another secret"})
    assert "verify aksk signature fail" in message
    assert "another secret" not in message


def test_verify_rejects_an_unknown_ak() -> None:
    message = _refusal(keys={"OTHERAK": SK})
    assert message == (
        f"Incorrect IAM authentication information: Get secretKey failed,ak:{AK},err:ak not exist"
    )


@pytest.mark.parametrize("skew", [-900.001, 900.001, 86400.0])
def test_verify_rejects_a_stale_date(skew: float) -> None:
    assert "x-sdk-date" in _refusal(wall=SIGNED_AT + skew)


def _without(name: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda h: {k: v for k, v in h.items() if k.lower() != name}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_without("authorization"), "Authorization not found"),
        (_without("x-sdk-date"), "x-sdk-date not found"),
        (_without("workspace"), "signed header workspace not found"),
        (lambda h: {**h, "Authorization": "Bearer abc"}, "not in the SDK-HMAC-SHA256 format"),
        (
            lambda h: {**h, "Authorization": h["Authorization"].replace("Signature=", "Sig=")},
            "not in the SDK-HMAC-SHA256 format",
        ),
        (lambda h: {**h, "X-Sdk-Date": "2024-11-26T06:13:00Z"}, "not in the format"),
        (lambda h: {**h, "X-Sdk-Date": "20241399T061300Z"}, "not a valid time"),
        (
            lambda h: {
                **h,
                "Authorization": h["Authorization"].replace(
                    "SignedHeaders=content-type;host;", "SignedHeaders=content-type;"
                ),
            },
            "SignedHeaders must include host",
        ),
        (
            lambda h: {
                **h,
                "Authorization": h["Authorization"].replace(";x-security-token", ""),
            },
            "SignedHeaders must include x-security-token",
        ),
    ],
)
def test_verify_rejects_malformed_auth(
    change: Callable[[dict[str, str]], dict[str, str]], expected: str
) -> None:
    assert expected in _refusal(change)


@settings(parent=PROPERTY, max_examples=100)
@given(cases(), st.sampled_from(["body", "header", "sk"]))
def test_verify_rejects_tampering_over_generated_requests(case: Case, tamper: str) -> None:
    headers = our_sign(case)
    path, query = _split_target(case.url)
    body = case.body
    keys = KEYS
    if tamper == "body":
        body = body + b"!" if body else b"!"
    elif tamper == "header":
        headers = {**headers, "workspace": headers["workspace"] + "0"}
    else:
        keys = {AK: SK + "x"}
    verdict = verify(case.method, path, query, headers, body, keys=keys, wall=case.wall)
    unsigned = headers.get("X-Sdk-Content-Sha256") == "UNSIGNED-PAYLOAD"
    if tamper == "body" and unsigned and case.body:
        # The SDK's own escape hatch: a non-JSON body is declared unsigned, so the gateway
        # accepts a changed non-empty body (an empty body is still signed as empty).
        assert verdict.ok
    else:
        assert verdict.error_code == "APIG.0301"
        assert SK not in (verdict.error_msg or "")


def test_unsigned_payload_is_honoured_only_when_declared_and_signed() -> None:
    url, headers, _ = _retry_request()
    headers = {**headers, "Content-Type": "text/plain"}
    out = sign("POST", url, headers, b"hello", AkSk(AK, SK), WALL)
    assert out["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    path, query = _split_target(url)
    assert verify("POST", path, query, out, b"bye", keys=KEYS, wall=WALL).ok
    undeclared = {k: v for k, v in out.items() if k != "X-Sdk-Content-Sha256"}
    assert not verify("POST", path, query, undeclared, b"hello", keys=KEYS, wall=WALL).ok


# --- secrets ------------------------------------------------------------------------------------


def test_aksk_repr_hides_the_secrets() -> None:
    creds = AkSk(AK, SK, TOKEN)
    for text in (repr(creds), str(creds), f"{creds!r}"):
        assert AK in text
        assert SK not in text
        assert TOKEN not in text


@pytest.mark.parametrize(("ak", "sk"), [("", SK), (AK, "")])
def test_aksk_refuses_empty_keys(ak: str, sk: str) -> None:
    with pytest.raises(ValueError, match="empty") as info:
        AkSk(ak, sk)
    assert SK not in str(info.value)


def test_scrub_removes_the_token_echoed_by_the_gateway() -> None:
    path, query, headers, body = _signed()
    message = verify("POST", path, query, headers, body + b"x", keys=KEYS, wall=WALL).error_msg
    assert message is not None
    assert f"x-security-token:{TOKEN}\n" in message  # the gateway really echoes it

    clean = scrub(message, [SK, TOKEN])
    assert TOKEN not in clean
    assert "x-security-token:***\n" in clean
    # The rest of the echo stays useful for debugging.
    assert f"x-project-id:{PROJECT}\n" in clean
    assert "x-sdk-date:20241126T061300Z\n" in clean
    assert "verify aksk signature fail" in clean


@pytest.mark.parametrize(
    ("message", "forbidden"),
    [
        ("X-Auth-Token: MIIabc.def\nhost:h", "MIIabc"),
        ("authorization:SDK-HMAC-SHA256 Access=A, Signature=f00\nnext", "Signature=f00"),
        # Still JSON-escaped: the value ends at the literal backslash-n.
        ('{"error_msg": "x-security-token:TOK123\\nx-sdk-date:1"}', "TOK123"),
        ("the key was sEcReT and the token TOK", "sEcReT"),
    ],
)
def test_scrub_removes_secret_lines_and_values(message: str, forbidden: str) -> None:
    clean = scrub(message, ["sEcReT", "", "TOK"])
    assert forbidden not in clean
    assert "***" in clean


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # JSON: the value is masked up to its closing quote, the rest of the object is kept.
        (
            '{"x-security-token": "JSONTOK", "host": "h"}',
            '{"x-security-token": "***", "host": "h"}',
        ),
        # A Python dict, any case.
        (
            "{'X-Security-Token': 'DICTTOK', 'workspace': 'w'}",
            "{'X-Security-Token': '***', 'workspace': 'w'}",
        ),
        (
            '{"Authorization": "SDK-HMAC-SHA256 Access=A, Signature=f00", "X-Auth-Token": "T2"}',
            '{"Authorization": "***", "X-Auth-Token": "***"}',
        ),
        ("{'x-auth-token': 'MIIdict', 'n': 1}", "{'x-auth-token': '***', 'n': 1}"),
        # An escaped quote inside the value does not end it.
        ('{"authorization": "a\\"TAIL", "host": "h"}', '{"authorization": "***", "host": "h"}'),
        ("{'x-auth-token': 'it\\'sTAIL'}", "{'x-auth-token': '***'}"),
        # JSON inside a JSON string: the quotes are escaped.
        (
            '{"error_msg": "{\\"X-Auth-Token\\": \\"ESCTOK\\", \\"host\\": \\"h\\"}"}',
            '{"error_msg": "{\\"X-Auth-Token\\": \\"***\\", \\"host\\": \\"h\\"}"}',
        ),
        # A quoted value after an unquoted name.
        ('x-auth-token = "QTOK" rest', 'x-auth-token = "***" rest'),
    ],
)
def test_scrub_masks_quoted_keys_and_values(message: str, expected: str) -> None:
    assert scrub(message, []) == expected


def test_scrub_keeps_harmless_text() -> None:
    assert scrub("host:h\nx-sdk-date:1", ["absent"]) == "host:h\nx-sdk-date:1"
    # Longest secret first: a secret containing another is removed whole.
    assert scrub("abcdef", ["abc", "abcdef"]) == "***"


LONG_TOKEN = "MIIEXAYJKoZIhvcNAQcCoIIETTCCBEkCAQExDTALBglghkgBZQMEAgEw" * 4


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        # A server that refuses an oversized header echoes what it read of it, cut short.
        (f"Got more than 8190 bytes when reading: b'{LONG_TOKEN[:100]}...'", "8190 bytes"),
        # A part from the middle, between escapes, and a tail.
        (f"header x\x00{LONG_TOKEN[37:60]}\x01 y", "header x"),
        (f"ends with {SK[-12:]}", "ends with"),
        (f"{TOKEN[:9]} at the start", "at the start"),
    ],
)
def test_scrub_masks_a_part_of_a_secret(message: str, kept: str) -> None:
    clean = scrub(message, [SK, LONG_TOKEN, TOKEN])
    assert kept in clean
    assert "***" in clean
    for secret in (SK, LONG_TOKEN, TOKEN):
        windows = {secret[k : k + 8] for k in range(len(secret) - 7)}
        assert not any(clean[k : k + 8] in windows for k in range(len(clean) - 7)), clean


def test_mask_fragments_keeps_what_is_shorter_than_a_fragment() -> None:
    # Seven characters of a secret are kept: ordinary text shares that much by chance.
    sk = secret_windows([SK])
    assert mask_fragments(f"x {SK[:7]} y", sk) == f"x {SK[:7]} y"
    assert mask_fragments(f"x {SK[:8]} y", sk) == "x *** y"
    # Secrets shorter than a fragment are masked only whole (by scrub), not in parts.
    assert mask_fragments("abcdefgh", secret_windows(["abc"])) == "abcdefgh"
    # Two parts of secrets with ordinary text between stay two masks.
    both = secret_windows([SK, TOKEN])
    assert mask_fragments(f"{SK[:10]} and {TOKEN[5:20]}", both) == "*** and ***"


def test_empty_sha256_constant() -> None:
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256
