"""What became of one attempt at sending a chunk: one type, decided in ``transport`` only.

============  =========================================================================
kind          meaning
============  =========================================================================
``DONE``      200: the service accepted the rerun.
``FAILED``    a definite refusal by the service (400 ``DLF.*``, other 4xx): it did
              not act and will not act if asked again unchanged. Final for this run.
``RETRY``     the request was not acted on (connect error, 408, 429, 503): send again
              after a backoff. Safe because nothing was started.
``HELD``      sent, but whether the service acted is unknown (timeout or connection lost
              after the request was written, 500, 502, 504). Never retried blindly: a rerun
              sent twice runs twice.
``FATAL``     401/403: credentials or permissions are wrong. Not an outcome of the unit:
              the run aborts and the unit stays pending.
``NOT_SENT``  the attempt's intent was durable, but the run stopped before the request
              left. Recorded to close the intent; not counted as an attempt.
============  =========================================================================

A ``FAILED`` answer that says the endpoint is wrong (see :func:`wrong_endpoint`) also
stops a run: it is no more the unit's doing than a 401.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"
    HELD = "held"
    FATAL = "fatal"
    NOT_SENT = "not_sent"


class Outcome(NamedTuple):
    """One attempt's result. ``error_msg`` is already scrubbed of anything secret.

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one.
    ``reason`` is a short human phrase (``"429 throttled"``, ``"timeout after send"``).

    A named tuple, not a frozen dataclass: it is as immutable, and one is made for every
    answer. A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (callgrind: 15,000 instructions to make one of eight fields, 5,700 as a named tuple).
    """

    kind: Kind
    status: int | None = None
    error_code: str | None = None
    error_msg: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    reason: str = ""
    elapsed: float = 0.0

    @property
    def throttled(self) -> bool:
        """The gateway said slow down (429)."""
        return self.status == 429


DONE = Outcome(Kind.DONE, status=200, reason="accepted")

# The reason of a request the client gave up waiting for (``--timeout``) once it was sent:
# a longer timeout may let such answers arrive, as it would not a lost connection.
TIMED_OUT = "timeout after sending: unknown whether it ran"

# A proxy's 407 (to a request, or to CONNECT for an https endpoint) is FATAL too: nothing
# reached the service, and every other request would meet the same.
PROXY_AUTH_REQUIRED = 407
PROXY_REFUSED = "the proxy refused its credentials (407)"
PROXY_REFUSED_STOP = (
    "the proxy refused the request (407): it wants credentials, or others than those in "
    "HTTPS_PROXY/HTTP_PROXY (as http://user:password@host:port). Nothing reached the "
    "service; fix the proxy setting and run the same command again."
)


def failure_code(error_code: str | None, status: int | None) -> str:
    """How a failed request is counted: its error code, else its HTTP status."""
    return error_code or (f"HTTP {status}" if status else "unknown")


NO_SUCH_API = "APIG.0101"  # the gateway's 404: no API at that path


def wrong_endpoint(status: int | None, error_code: str | None) -> bool:
    """Whether an answer says the endpoint is wrong rather than the request: a redirect
    (never followed: http for https, say), or a 404 or 405 that is not the service's (the
    service refuses with 400 ``DLF.*``; a 404 comes from the gateway, ``APIG.0101`` no such
    API, or from whatever else answers at that address, and a 405 from a server that takes
    no POST there). Every request to it would meet the same."""
    if status is None:
        return False
    return 300 <= status < 400 or (
        status in (404, 405) and not (error_code or "").startswith("DLF.")
    )
