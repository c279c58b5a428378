"""AK/SK request signing: the API gateway's ``SDK-HMAC-SHA256`` scheme, both ways.

``sign`` turns a request (method, absolute URL, headers, body) into the complete header set to
send; ``verify`` is the gateway's side of the same computation, for the fake server. Both are
pure: the time is an argument, so tests pin it and nothing here reads a clock.

The reference is the official Python SDK (``huaweicloudsdkcore.signer.signer.Signer`` as
driven by ``huaweicloudsdkcore.client`` and ``BasicCredentials.sign_request``, version
3.1.219). Our signatures agree with it byte for byte; the tests prove it over generated
requests. What the SDK does, step by step, and what we mirror:

1. ``X-Sdk-Date`` = UTC time as ``YYYYMMDDTHHMMSSZ``; ``Host`` = the endpoint URL's netloc
   verbatim (so ``host:port`` whenever the URL spells a port); ``X-Security-Token`` for
   temporary credentials; ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` when ``Content-Type`` is
   neither JSON nor BSON.
2. Signed headers: every header whose name has no ``_``, lower-cased, sorted; each canonical
   header line is ``name:value`` with the value stripped of surrounding whitespace.
3. Canonical URI: the path percent-decoded, split on ``/``, each segment encoded with only
   RFC 3986 unreserved characters kept, joined, and ending in ``/``. (So an encoded ``%2F``
   inside a job name is signed as a separator, exactly as the SDK and gateway do.)
4. Canonical query: the decoded ``(key, value)`` pairs sorted, each encoded like a segment,
   joined as ``k=v`` with ``&``. Repeated keys give one pair each; ``+`` means a space.
5. Payload hash: hex SHA-256 of the body (``UNSIGNED-PAYLOAD`` when that header says so).
6. ``string_to_sign = "SDK-HMAC-SHA256\\n<date>\\n<hex sha256(canonical request)>"``,
   signature = hex HMAC-SHA256 of it keyed with the SK.

Secrets never leave this module in clear except in the headers ``sign`` returns: ``AkSk``
hides the SK and the token in its repr, and no error message built here contains them. The
gateway's own error message echoes the canonical request, which includes the signed
``X-Security-Token`` line; ``verify`` reproduces that on purpose (the fake server should be
as unkind as the real one) and ``scrub`` is how the client side removes it.

Speed: one signature costs two SHA-256 runs over short strings, one HMAC and some string
joins. The canonical URI of a path and the sorted signed-header list of a header-name set
repeat across thousands of requests, so both are memoised.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_SKEW",
    "AkSk",
    "Verdict",
    "canonical_headers",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "request_target",
    "scrub",
    "sdk_date",
    "sign",
    "string_to_sign",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW = 900.0  # the gateway refuses an X-Sdk-Date more than 15 minutes off its clock

HEADER_DATE = "X-Sdk-Date"
HEADER_HOST = "Host"
HEADER_AUTHORIZATION = "Authorization"
HEADER_SECURITY_TOKEN = "X-Security-Token"  # noqa: S105 -- a header name, not a secret
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"

_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_DATE_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
# What ``sign`` computes itself: a caller's own copy is dropped so that re-signing the same
# base headers (a retry) is idempotent and a stale date can never survive.
_COMPUTED = frozenset(
    name.lower() for name in (HEADER_DATE, HEADER_AUTHORIZATION, HEADER_SECURITY_TOKEN)
)
# The form the SDK writes. Whitespace around the commas is tolerated, as gateways do.
_AUTHORIZATION_RE = re.compile(
    r"SDK-HMAC-SHA256\s+Access=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,"
    r"\s*Signature=([0-9a-fA-F]{64})"
)
_IAM = "Incorrect IAM authentication information"
# A secret header and its value, in an echoed canonical request ("name:value" lines) or in a
# printed mapping (JSON, a Python dict), whose key may be quoted. The value is masked:
# - quoted with " or ': up to its closing quote, backslash escapes skipped ("a\"b" is whole);
# - quoted with \" (JSON inside a JSON string): up to the next \";
# - unquoted: to the end of the line, or to a literal backslash-n if the message is still
#   JSON-escaped.
# A value whose quote never closes runs to the end of the line: over-scrubbing a flattened
# message is preferred to leaking a token.
_SECRET_LINE_RE = re.compile(
    r"""(?im)\b(x-security-token|x-auth-token|authorization)(\\?["']?[ \t]*[:=][ \t]*)"""
    r"""(?:(\\")(?:(?!\\")[^\r\n])*"""
    r"""|(["'])(?:\\[^\r\n]|(?!\4)[^\\\r\n])*"""
    r"""|(?:(?!\\n)[^\r\n])*)"""
)
_MASK = "***"


@dataclass(frozen=True, slots=True)
class AkSk:
    """An access key pair; ``security_token`` is set for temporary credentials (STS).

    The repr shows the AK only: the SK and the token must never reach a log or a traceback.
    """

    ak: str
    sk: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Messages name the field, never its value.
        if not self.ak:
            raise ValueError("the access key (AK) is empty")
        if not self.sk:
            raise ValueError("the secret key (SK) is empty")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gateway's answer to a signature: ``ok``, or the error code and message to send."""

    ok: bool
    error_code: str | None = None
    error_msg: str | None = None


_ACCEPTED = Verdict(ok=True)


def sdk_date(wall: float) -> str:
    """``X-Sdk-Date`` for the epoch time ``wall``: UTC ``YYYYMMDDTHHMMSSZ``, seconds floored."""
    return _date_of_second(math.floor(wall))


@lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    # Many requests share a second; formatting a struct_time is the slow part of this.
    return time.strftime(_DATE_FORMAT, time.gmtime(second))


def _encode(text: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (UTF-8), as the SDK."""
    return quote(text, safe="~")


@lru_cache(maxsize=4096)
def canonical_uri(path: str) -> str:
    """The canonical URI of a (percent-encoded) request path, always ending in ``/``."""
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: str) -> str:
    """The canonical form of a raw query string: decoded pairs sorted, re-encoded, ``&``-joined.

    Blank values are kept (``a`` and ``a=`` both give ``a=``), repeated keys give one pair each,
    and ``+`` decodes to a space, as every HTTP server reads a query.
    """
    if not query:
        return ""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in pairs)


def request_target(url: str) -> str:
    """The path and query to put on the wire for ``url``, as the SDK sends them.

    The SDK sends the canonical query string (sorted, encoded) rather than the caller's
    spelling; sending the same removes any doubt about what the gateway will decode.
    """
    parts = urlsplit(url)
    query = canonical_query(parts.query)
    path = parts.path or "/"
    return f"{path}?{query}" if query else path


@lru_cache(maxsize=256)
def _signed_names(names: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], str]:
    """For header names as given: ``((lower, given), ...)`` sorted by lower, and the ``;`` list.

    Names with ``_`` are not signed (the SDK's rule: proxies may drop such headers). A
    header-name set repeats for every request of a run, hence the memo.
    """
    pairs = sorted((name.lower(), name) for name in names if "_" not in name)
    for (low, given), (next_low, next_given) in pairwise(pairs):
        if low == next_low:
            raise ValueError(f"header {given!r} is given twice (also as {next_given!r})")
    return tuple(pairs), ";".join(low for low, _ in pairs)


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """The canonical header block (``name:value\\n`` per signed header) and the signed list.

    Values are stripped of surrounding whitespace; ``sign`` sends them stripped too.
    """
    pairs, signed = _signed_names(tuple(headers))
    block = "".join(f"{low}:{headers[given].strip()}\n" for low, given in pairs)
    return block, signed


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], body_sha256_hex: str
) -> str:
    """The canonical request over ``headers`` (all of them signed, by the SDK's rule).

    ``path`` and ``query`` are raw (percent-encoded) as in the URL; ``body_sha256_hex`` is the
    payload hash (``EMPTY_SHA256`` for no body).
    """
    block, signed = canonical_headers(headers)
    return _join_canonical(
        method, canonical_uri(path), canonical_query(query), block, signed, body_sha256_hex
    )


def _join_canonical(
    method: str, uri: str, query: str, block: str, signed: str, payload_hash: str
) -> str:
    # The header block ends with a newline and is followed by another: a blank line, as the
    # SDK and the gateway write it.
    return f"{method.upper()}\n{uri}\n{query}\n{block}\n{signed}\n{payload_hash}"


def string_to_sign(date: str, canonical: str) -> str:
    """What the HMAC covers: the algorithm, the ``X-Sdk-Date`` and the canonical request hash."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}"


def _signature(sk: bytes, to_sign: str) -> str:
    return hmac.digest(sk, to_sign.encode(), "sha256").hex()


def _find(headers: Mapping[str, str], lower_name: str) -> str | None:
    """First value of a header, by case-insensitive name (as the SDK looks headers up)."""
    for name, value in headers.items():
        if name.lower() == lower_name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything :func:`sign` derives from the method, the URL, the headers and the
    credentials, ready for any body and date: a run signs thousands of requests to the same
    URL with the same headers, and only the body and the second change. Make with
    :func:`prepare`, use with :func:`sign_prepared`; what it holds includes the SK."""

    head: dict[str, str] = field(repr=False)  # the headers to send that come before the date
    host: str | None  # the Host header added after the date, unless one was given
    canonical_head: str  # the canonical request up to the X-Sdk-Date value
    canonical_tail: str  # after the date value, up to the payload hash
    declared: str | None  # a payload hash declared in the headers, taken as it is
    authorization: str = field(repr=False)  # the Authorization value up to the signature
    sk: bytes = field(repr=False)


def prepare(method: str, url: str, headers: Mapping[str, str], creds: AkSk) -> Prepared:
    """The per-URL part of :func:`sign` (see there for ``url`` and ``headers``)."""
    head: dict[str, str] = {}
    present: set[str] = set()  # lower-cased names in `head`, for case-insensitive lookups
    for name, value in headers.items():
        low = name.lower()
        if low not in _COMPUTED:
            head[name] = value.strip()
            present.add(low)
    # The SDK's rule, including its exact-case lookup of "Content-Type": a non-JSON body is
    # declared unsigned rather than hashed.
    content_type = head.get("Content-Type")
    if content_type and not content_type.startswith(("application/json", "application/bson")):
        head[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
        present.add("x-sdk-content-sha256")
    if creds.security_token is not None:
        head[HEADER_SECURITY_TOKEN] = creds.security_token.strip()
    parts = urlsplit(url)
    # The netloc as written (port included when spelled), without any userinfo.
    host = None if "host" in present else parts.netloc.rpartition("@")[2]
    declared = None
    if "x-sdk-content-sha256" in present:
        declared = _find(head, "x-sdk-content-sha256") or None
    # The canonical request with a mark where the date's value goes: a run of NULs longer
    # than any in the method and the header values (the URL's parts are percent-encoded),
    # so that it stands there and nowhere else.
    mark = "\0"
    while mark in method or any(mark in value for value in head.values()):
        mark += "\0"
    out = {**head, HEADER_DATE: mark}
    if host is not None:
        out[HEADER_HOST] = host
    block, signed = canonical_headers(out)
    canonical = _join_canonical(
        method, canonical_uri(parts.path or "/"), canonical_query(parts.query), block, signed, ""
    )
    canonical_head, canonical_tail = canonical.split(mark)
    return Prepared(
        head,
        host,
        canonical_head,
        canonical_tail,
        declared,
        f"{ALGORITHM} Access={creds.ak}, SignedHeaders={signed}, Signature=",
        creds.sk.encode(),
    )


def sign_prepared(prepared: Prepared, body: bytes, wall: float) -> dict[str, str]:
    """:func:`sign` for a request :func:`prepare` was given the method, URL and headers of."""
    p = prepared
    date = sdk_date(wall)
    out = p.head.copy()
    out[HEADER_DATE] = date
    if p.host is not None:
        out[HEADER_HOST] = p.host
    if not body:
        payload_hash = EMPTY_SHA256
    elif p.declared is not None:
        payload_hash = p.declared  # as the SDK: a declared payload hash is taken as it is
    else:
        payload_hash = hashlib.sha256(body).hexdigest()
    canonical = p.canonical_head + date + p.canonical_tail + payload_hash
    out[HEADER_AUTHORIZATION] = p.authorization + _signature(p.sk, string_to_sign(date, canonical))
    return out


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    creds: AkSk,
    wall: float,
) -> dict[str, str]:
    """Sign a request; returns every header to send, ``Authorization`` included.

    ``url`` is absolute (``http://127.0.0.1:8080/v2/p/factory/jobs/a%20b/instances/retry``),
    path segments already percent-encoded; send the path and query of
    :func:`request_target` with it. ``headers`` are the request's own headers (``workspace``,
    ``Content-Type``, ``X-Project-Id``...): all of them are signed unless their name has an
    ``_``. Values are returned stripped of surrounding whitespace, as they were signed.
    ``Host`` is added from the URL unless given; any ``X-Sdk-Date``, ``Authorization`` or
    ``X-Security-Token`` given is replaced by what ``wall`` and ``creds`` say.

    The same as :func:`sign_prepared` of :func:`prepare`, which is what to use for many
    requests to one URL with the same headers.
    """
    return sign_prepared(prepare(method, url, headers, creds), body, wall)


def _refuse(detail: str) -> Verdict:
    return Verdict(ok=False, error_code="APIG.0301", error_msg=f"{_IAM}: {detail}")


def verify(
    method: str,
    raw_path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    keys: Mapping[str, str],
    wall: float,
    max_skew: float = MAX_SKEW,
) -> Verdict:
    """Check a request's AK/SK signature as the API gateway does; ``keys`` maps AK to SK.

    ``raw_path`` and ``query_string`` are as received, still percent-encoded (in aiohttp:
    ``request.raw_path`` split at ``?``; a ``raw_path`` that still carries its query is split
    here). ``wall`` is the server's epoch time.

    Every refusal is ``APIG.0301``, the gateway's code for all IAM authentication failures.
    The messages of the documented cases (bad signature, unknown AK) follow the gateway's
    wording, and a bad signature echoes the canonical request computed here, as the gateway
    does (signed ``x-security-token`` line included: see :func:`scrub`). The other messages
    are ours, in the same style. No message ever contains an SK.
    """
    raw_path, has_query, query_in_path = raw_path.partition("?")
    if has_query and not query_string:
        query_string = query_in_path
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)  # the first of repeated headers counts

    authorization = lowered.get("authorization")
    if authorization is None:
        return _refuse("Authorization not found")
    match = _AUTHORIZATION_RE.fullmatch(authorization.strip())
    if match is None:
        return _refuse(f"Authorization is not in the {ALGORITHM} format")
    ak, signed_list, given_signature = match.groups()

    date = lowered.get("x-sdk-date")
    if date is None:
        return _refuse("x-sdk-date not found")
    date = date.strip()
    if _DATE_RE.fullmatch(date) is None:
        return _refuse(f"x-sdk-date {date!r} is not in the format YYYYMMDDTHHMMSSZ")
    try:
        signed_at = calendar.timegm(time.strptime(date, _DATE_FORMAT))
    except ValueError:
        return _refuse(f"x-sdk-date {date!r} is not a valid time")
    if abs(wall - signed_at) > max_skew:
        return _refuse(
            f"x-sdk-date {date} is more than {max_skew:.0f} seconds away from the server time "
            f"{sdk_date(wall)}"
        )

    sk = keys.get(ak)
    if sk is None:
        return _refuse(f"Get secretKey failed,ak:{ak},err:ak not exist")

    names = signed_list.split(";")
    for required in ("host", "x-sdk-date"):
        if required not in names:
            return _refuse(f"SignedHeaders must include {required}")
    if "x-security-token" in lowered and "x-security-token" not in names:
        return _refuse("SignedHeaders must include x-security-token")
    lines = []
    for name in names:
        signed_value = lowered.get(name)
        if signed_value is None:
            return _refuse(f"signed header {name} not found")
        lines.append(f"{name}:{signed_value.strip()}\n")

    if not body:
        payload_hash = EMPTY_SHA256
    elif "x-sdk-content-sha256" in names and (
        lowered["x-sdk-content-sha256"].strip() == UNSIGNED_PAYLOAD
    ):
        payload_hash = UNSIGNED_PAYLOAD
    else:
        payload_hash = hashlib.sha256(body).hexdigest()

    canonical = _join_canonical(
        method,
        canonical_uri(raw_path or "/"),
        canonical_query(query_string),
        "".join(lines),
        signed_list,
        payload_hash,
    )
    expected = _signature(sk.encode(), string_to_sign(date, canonical))
    if not hmac.compare_digest(expected, given_signature.lower()):
        return _refuse(f"verify aksk signature fail, canonicalRequest: {canonical}")
    return _ACCEPTED


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` without the given secret values and without the values of secret headers.

    A gateway error message may echo the canonical request, whose signed ``x-security-token``
    line carries the temporary credentials' token; ``x-auth-token`` and ``authorization``
    values are masked the same way, also where a message prints headers as a JSON object or
    a Python dict (``{"X-Auth-Token": "***", ...}``: the rest is kept). A part of a secret is
    masked too (see :func:`mask_fragments`): a server that refuses an oversized header echoes
    what it read of it, cut short. Use it on every message from the service before it is
    logged, journaled or shown.
    """
    # Longest first, so that a secret containing another is removed whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, _MASK)
    message = mask_fragments(message, secret_windows(secrets))
    return _SECRET_LINE_RE.sub(_mask_value, message)


FRAGMENT = 8
"""The shortest run of a secret's characters :func:`mask_fragments` masks, and the shortest
secret masked at all (see :func:`maskable`)."""


def maskable(secrets: Iterable[str]) -> list[str]:
    """The secrets long enough to be masked in text: :data:`FRAGMENT` characters or more.

    No real one is shorter (an SK has 40 characters, an IAM token thousands). Masking a
    placeholder of a character or two would spell it out, not hide it: with the token ``e``,
    "Incorrect IAM authentication" became "Incorr***ct IAM auth***ntication". Such a value is
    warned of once instead (see ``cli``), and the values of auth headers stay masked
    whatever their length."""
    return [s for s in secrets if len(s) >= FRAGMENT]


def secret_windows(secrets: Iterable[str]) -> frozenset[str]:
    """Every run of :data:`FRAGMENT` characters of the secrets, for :func:`mask_fragments`."""
    return _windows(tuple(sorted({s for s in secrets if len(s) >= FRAGMENT})))


@lru_cache(maxsize=8)
def _windows(secrets: tuple[str, ...]) -> frozenset[str]:
    return frozenset(s[k : k + FRAGMENT] for s in secrets for k in range(len(s) - FRAGMENT + 1))


def holds_fragment(text: str, windows: frozenset[str]) -> bool:
    """Whether ``text`` holds a run of :data:`FRAGMENT` characters of a secret."""
    return any(text[k : k + FRAGMENT] in windows for k in range(len(text) - FRAGMENT + 1))


def mask_fragments(text: str, windows: frozenset[str]) -> str:
    """``text`` with every run of :data:`FRAGMENT` or more characters taken from a secret
    masked: a prefix cut off where a message was truncated, a part between escapes, a tail.
    ``windows``: :func:`secret_windows` of the secrets.

    Each window of ``FRAGMENT`` characters is looked up among the secrets' windows, then the
    run is grown while its windows are a secret's too. Eight characters of a key or token
    are 48 bits of it and do not occur in a message by chance; over-masking text that
    happens to share them is preferred to leaking a token's first hundred characters.
    """
    if not windows or len(text) < FRAGMENT:
        return text
    out: list[str] = []
    start = i = 0
    last = len(text) - FRAGMENT
    while i <= last:
        if text[i : i + FRAGMENT] not in windows:
            i += 1
            continue
        end = i + FRAGMENT
        while end < len(text) and text[end - FRAGMENT + 1 : end + 1] in windows:
            end += 1
        out += (text[start:i], _MASK)
        start = i = end
    out.append(text[start:])
    return "".join(out)


def _mask_value(match: re.Match[str]) -> str:
    # Name, separator and opening quote stay; the closing quote was not part of the match.
    name, separator, quote = match.group(1), match.group(2), match.group(3) or match.group(4)
    return f"{name}{separator}{quote or ''}{_MASK}"
