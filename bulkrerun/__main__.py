"""The ``bulkrerun`` command; ``python -m bulkrerun`` works the same."""

import codecs
import os
import sys

from bulkrerun.interrupt import interrupt
from bulkrerun.text import ASCII_ERRORS, ascii_substitute


def main() -> None:
    """Console-script entry point. Signals are taken before the CLI's imports (a few hundred
    milliseconds): a Ctrl-C there ends with 130 and the command to run again, like one
    anywhere else, instead of a traceback of the import."""
    interrupt.install(raising=False)
    standard_streams()
    from bulkrerun.cli import main as cli_main

    cli_main()


def standard_streams() -> None:
    """Make stdin, stdout and stderr fit to use, whatever the command was started with.

    - A closed one (``bulkrerun status J >&-``) is opened on /dev/null: Python had made its
      ``sys.stdout`` None, which every command tripped over at start-up, and the journal,
      opened next, would have been given its number, where anything written to "stdout"
      would land.
    - An encoding other than UTF-8 (``LC_ALL=C``, ``PYTHONIOENCODING=ascii``) writes what it
      cannot encode as an escape (``\u4e2d``) rather than die on a job's Chinese name with
      a traceback, and the ellipsis of a cut cell, the lines and the bar as ASCII
      characters of their width (:func:`~bulkrerun.text.ascii_substitute`): as escapes
      they widened their cells, and the columns after them went astray. Output meant for
      programs (``report --format csv``) is UTF-8 anyway.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # closed: the lowest free number is this one
            os.open(os.devnull, os.O_RDWR)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    codecs.register_error(ASCII_ERRORS, ascii_substitute)
    for stream in (sys.stdout, sys.stderr):
        encoding = (stream.encoding or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ASCII_ERRORS)


if __name__ == "__main__":
    main()
