"""The one exception tree of bulkrerun.

::

    BulkrerunError                  every error this package raises on purpose
    ├── BadInput                    exit 2: nothing was sent
    │   ├── ManifestError           the manifest or an instance file is wrong: every problem
    │   ├── SettingsError           settings or arguments are wrong
    │   └── JournalMismatch         the journal belongs to another project, endpoint or format
    ├── JournalCorrupt              exit 2: a journal record in the middle is unreadable
    └── Fatal                       exit 3: the run stopped; the journal is consistent
        ├── AuthRefused             401/403: credentials or permissions are wrong
        ├── BudgetExhausted         the failure budget or the canary said stop
        ├── Unreachable             no request ever reached the service (wrong endpoint?)
        ├── WrongEndpoint           an answer says the endpoint is wrong (redirect, no such API)
        ├── ServiceDown             the service failed every request for minutes
        ├── Unanswered              request after request sent without a definite answer
        └── select.ListFailed       the instance-list API refused or did not answer

Foreign exceptions (aiohttp, OS errors) are translated into outcomes in ``transport`` and
nowhere else; they do not escape as exceptions.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130


class BulkrerunError(Exception):
    """Base of every error raised on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FATAL


class BadInput(BulkrerunError):
    """Input is wrong and nothing was sent."""

    exit_code = EXIT_BAD_INPUT


class ManifestError(BadInput):
    """One or more problems in a manifest; ``problems`` holds every one, each a full sentence
    naming the file, the entry (``window[2]``), the field and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SettingsError(BadInput):
    """A setting or a command-line argument is wrong."""


class JournalMismatch(BadInput):
    """The journal at the given path belongs to another project, endpoint or format."""


class JournalCorrupt(BulkrerunError):
    """A record before the last one is unreadable: the file was edited or damaged."""

    exit_code = EXIT_BAD_INPUT


class Fatal(BulkrerunError):
    """The run stopped before its end; the journal is consistent and the same command resumes.

    ``stop`` names the condition in the run's ``end`` record (see :mod:`bulkrerun.journal`),
    for ``status`` and a review: a name, not a class, so that the journal outlives the code.
    """

    exit_code = EXIT_FATAL
    stop = "fatal"


class AuthRefused(Fatal):
    """The service refused our credentials or permissions (401/403)."""

    stop = "auth_refused"


class BudgetExhausted(Fatal):
    """Too many requests failed (``--max-failure-ratio`` or ``--canary``)."""

    stop = "failure_budget"


class Unreachable(Fatal):
    """The run's first requests all failed to connect: the endpoint is wrong or down."""

    stop = "unreachable"


class WrongEndpoint(Fatal):
    """An answer says the endpoint is wrong, not the request: every other request would
    meet the same (a redirect, not followed; the gateway knows no such API). ``code``: the
    answer's error code, or ``HTTP <status>``."""

    stop = "wrong_endpoint"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ServiceDown(Fatal):
    """After answering, the service failed every request (5xx, no connection) for minutes."""

    stop = "service_down"


class Unanswered(Fatal):
    """Request after request was sent and got no definite answer (a timeout, a lost
    connection, a 5xx that may have acted): each is held, and more would only be more held.
    ``timed_out``: the last of them was a timeout of ours (not a lost connection or a 5xx),
    which a longer timeout might have waited out."""

    stop = "unanswered"

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
