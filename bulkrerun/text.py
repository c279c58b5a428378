"""Wording shared by what the operator reads: a count with its noun, a duration, a command."""

from __future__ import annotations

import shlex
from collections.abc import Iterable

# The one-shot flags of `run` (the RunArgs field or run record option, and the flag): a
# command that carries a run on leaves them out, and says so; a run's history names them.
ONE_SHOT_FLAGS = (
    ("resend_held", "--resend-held"),
    ("retry_failed", "--retry-failed"),
    ("reselect", "--reselect"),
)


DEFAULT_TIMEOUT = 30.0  # the default of Settings.timeout, without importing settings here


def timeout_kept(given: str) -> str:
    """What is said of the run commands that repeat the ``--timeout`` within which the
    service did not answer, so that it stopped a run (the user's choice, as every flag is):
    with it, the run may stop the same way. The first of the next steps that ``run`` and
    ``status`` give after such a stop."""
    return (
        f"each run command below keeps --timeout {given}, within which the service did not "
        f"answer: if the service is only slow, give it longer ({DEFAULT_TIMEOUT:g} s when not "
        "set), or the run stops the same way"
    )


def counted(n: int, noun: str) -> str:
    """``1 unit``, ``1,204 units``: the noun's plural is the noun and an ``s``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """``45s``, ``6m30s``, ``1h05m00s``; to the nearest second."""
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def run_command(manifest: str, journal: str, flags: Iterable[tuple[str, str | None]]) -> str:
    """The ``run`` command of ``manifest`` on ``journal`` with ``flags`` (see
    :func:`command_line`): what resumes a run, and what the next steps of a status say."""
    return command_line(["bulkrerun", "run", manifest, "--journal", journal], flags)


def command_line(words: Iterable[str], flags: Iterable[tuple[str, str | None]] = ()) -> str:
    """A command to paste into a shell: ``words``, then each flag and its value (None for a
    switch), quoted where the shell needs it."""
    argv = list(words)
    for flag, value in flags:
        argv += [flag] if value is None else [flag, value]
    return shlex.join(argv)
