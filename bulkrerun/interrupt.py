"""SIGINT, SIGTERM and SIGHUP outside a run's engine (which takes them itself, to finish
the requests in flight first): each ends the command with 130 and the command that resumes.

Standard library only: the entry point installs this before it imports the CLI.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command gracefully. SIGHUP is the terminal going away (an ssh
session dropped, a window closed): by default it killed a run mid-request, leaving units
held that were never sent; it stops the run like SIGTERM now, and the same command resumes.
A SIGHUP the command was started with ignored (``nohup bulkrerun run ...``, so that the run
outlives the terminal) stays ignored: see :attr:`Interrupt.signals`. SIGINT and SIGTERM are
taken whatever they were: a script's ``bulkrerun run ... &`` starts with SIGINT ignored, and
``kill -INT`` has always stopped such a run."""

REDELIVER_AFTER = 0.01
"""Seconds before a signal Python dropped in a ``__del__`` is sent again."""


class Interrupt:
    """The handler of the :data:`STOP_SIGNALS`: remembers that a signal came and, once the CLI is
    imported, raises KeyboardInterrupt (typer turns it into a silent exit 130).

    While the CLI's modules are imported the handler only remembers: a KeyboardInterrupt
    raised inside an import printed a traceback of the import machinery, or, inside a class
    being made, came out as ``RuntimeError: Error calling __set_name__``. The CLI takes a
    remembered signal as soon as its imports are done (:meth:`check`).
    """

    def __init__(self) -> None:
        self.fired = False
        self.signame = "SIGINT"  # the name of the last signal taken
        # The command that resumes, once a run has sent something: the raw command line
        # would repeat one-shot flags such as --resend-held.
        self.resume: str | None = None
        self._raising = False
        self._again: threading.Timer | None = None  # a dropped signal's redelivery
        self._previous_hook = sys.unraisablehook
        # The stop signals this process takes: SIGHUP only if it was not started ignored.
        # Read once, before the first install replaces the inherited dispositions.
        self.signals: tuple[signal.Signals, ...] = ()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.fired = True
        self.signame = signal.Signals(signum).name
        if self._raising:
            raise KeyboardInterrupt

    def install(self, *, raising: bool = True) -> None:
        """Take the :data:`STOP_SIGNALS` from now on; ``raising=False`` only remembers them."""
        self._raising = raising
        if not self.signals:
            self.signals = tuple(
                s
                for s in STOP_SIGNALS
                if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN
            )
        for signum in self.signals:
            signal.signal(signum, self)
        if sys.unraisablehook != self._unraisable:
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    def _unraisable(self, unraisable: Any) -> None:
        """Python's report of an exception it drops. The KeyboardInterrupt of a signal,
        raised in a ``__del__``, is not reported (a traceback of the ``__del__``) but sent
        again a moment later, from a thread: the handler then runs, and raises, in the code
        the ``__del__`` interrupted. (Sent from here, it would raise in this hook, where
        Python drops it too.)"""
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and self.fired:
            again = self._again = threading.Timer(
                REDELIVER_AFTER, os.kill, (os.getpid(), signal.Signals[self.signame])
            )
            again.daemon = True
            again.start()
        else:
            self._previous_hook(unraisable)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal came. Python prints and drops an exception
        raised in a ``__del__`` or a weakref callback: a signal that landed there would
        otherwise leave the command running on, so it checks before it acts."""
        if self.fired:
            raise KeyboardInterrupt

    def take(self) -> str | None:
        """The name of a signal that came and was not acted on, its redelivery called off;
        None if none came. For a run's engine, which takes the signals itself once it has
        started: one Python dropped in a ``__del__`` just before would otherwise reach it
        only when redelivered, after it had begun to send."""
        if not self.fired:
            return None
        if self._again is not None:
            self._again.cancel()
        self.fired = False
        return self.signame


interrupt = Interrupt()
