"""Wording shared by what the operator reads: a count with its noun, a duration, a command."""

from __future__ import annotations

import shlex
import unicodedata
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


ASCII_ERRORS = "bulkrerun-ascii"
"""The name of :func:`ascii_substitute` as a codec error handler (registered by ``python -m
bulkrerun``'s start-up for a stdout or stderr that cannot encode UTF-8)."""

_ASCII_FOR = {
    "\u2026": "+",  # … ends a cell cut to its column's width; "+" as top and ps cut theirs
    "\u00a0": " ",
    "\u2010": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2022": "*",
    "\u00b7": "*",
    "\u2192": ">",
    "\u2190": "<",
}


def ascii_substitute(exc: UnicodeError) -> tuple[str, int]:
    """A codec error handler: what an output that cannot encode them shows instead of the
    characters the tables and the progress draw (an ellipsis where a cell is cut, lines,
    dashes, quotes, a bar, a spinner), each one ASCII character, as wide as it, so that the
    columns stay aligned. Anything else (a job's Chinese name, two columns wide) is
    escaped, ``\\u8ba2``, as ``backslashreplace`` does: it is data, and the escape keeps it."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start : exc.end]:
        sub = _ASCII_FOR.get(char)
        if sub is None:
            code = ord(char)
            if 0x2500 <= code <= 0x257F:  # box drawing: rich's bar, a table's rules
                sub = _box_substitute(set(unicodedata.name(char, "").split()))
            elif 0x2580 <= code <= 0x259F:  # block elements: a bar's filled part
                sub = "#"
            elif 0x2800 <= code <= 0x28FF:  # braille: a spinner's frames
                sub = "."
            else:
                sub = char.encode("ascii", "backslashreplace").decode("ascii")
        out.append(sub)
    return "".join(out), exc.end


def _box_substitute(words: set[str]) -> str:
    """A line of a box (named HORIZONTAL, or only LEFT or RIGHT, as a bar's half-cells are)
    is ``-``, one up or down ``|``, a corner or a crossing ``+``."""
    across = "HORIZONTAL" in words or bool(words & {"LEFT", "RIGHT"})
    upright = "VERTICAL" in words or bool(words & {"UP", "DOWN"})
    return "+" if across == upright else "-" if across else "|"
