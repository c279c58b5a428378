"""The ``bulkrerun`` command; ``python -m bulkrerun`` works the same."""

import os
import sys

from bulkrerun.interrupt import interrupt


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
      a traceback. Output meant for programs (``report --format csv``) is UTF-8 anyway.
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
    encoding = (sys.stdout.encoding or "").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


if __name__ == "__main__":
    main()
