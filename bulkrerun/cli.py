"""The ``bulkrerun`` command: the only place that reads settings and configures logging.

Commands: plan, run, status, report, verify, fake-server, demo (see ``bulkrerun --help``).
Every error a user can cause ends here as a message and an exit code from
:mod:`bulkrerun.errors`; no traceback reaches an operator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import getpass
import io
import logging
import math
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.abc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

import bulkrerun
from bulkrerun.errors import (
    EXIT_BAD_INPUT,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    AuthRefused,
    BulkrerunError,
    Fatal,
    ManifestError,
    SettingsError,
    Unanswered,
    WrongEndpoint,
)
from bulkrerun.events import Event, EventSink, Retrying, Settled, Stopping
from bulkrerun.interrupt import interrupt as _interrupt
from bulkrerun.text import ONE_SHOT_FLAGS, command_line, counted, duration, run_command


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """The parameters, with every flag's metavar set to none at all. typer 0.29 writes the
    type of every option in ``--help``, a flag's too (``--resend-held  <bool>``, ``--help
    <bool>``): read as a value the flag wants, which it does not take. An explicit metavar
    is what typer shows in its place; the empty one shows nothing, in every typer 0.16 on."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """``bulkrerun`` itself: its ``--version`` and ``--help`` shown as the flags they are."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


class _Command(TyperCommand):
    """A command whose ``--help`` reads as the command line is typed: flags without a type
    (see :func:`_flags_take_no_value`), and an argument in the usage line by its metavar as
    written (``run [OPTIONS] MANIFEST``), as click has it. typer 0.27 on wraps a required
    one in braces (``{MANIFEST}``), which reads as something else to type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument) and param.metavar is not None:
                pieces.append(param.metavar)
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


app = typer.Typer(
    cls=_Group,
    name="bulkrerun",
    help=(
        "Rerun Huawei Cloud DataArts Factory job instances in bulk: a manifest of jobs and "
        "time windows becomes paced API requests, and a journal records every outcome so "
        "that an interrupted run resumes without losing or repeating work.\n\n"
        "Start with **bulkrerun plan MANIFEST** (sends nothing), then "
        "**bulkrerun run MANIFEST --journal J**. Run the same command again to resume."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Console(Console):
    """rich's Console, except when the reader of the output goes away (``status | head``):
    rich then exits 1, which means here that requests failed. This one raises the
    BrokenPipeError for :func:`_writing_stdout` to decide."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more reaches that reader
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


class _Diagnostics(_Console):
    """The stderr console: progress, notes, warnings, stops. When stderr cannot be written
    (its reader went away, ``run ... 2>&1 | head``; the terminal hung up; a full disk under
    ``2> run.txt``), the command goes on without them rather than die mid-run with exit 1 and
    half its work undone: the journal records what a run does, and ``status`` shows it.
    What was lost is said in the log file, when there is one."""

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError as exc:
            self._lost(exc)

    def on_broken_pipe(self) -> None:
        self._lost(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))

    def _lost(self, exc: OSError) -> None:
        self.quiet = True
        del self._buffer[:]
        # Python's own writes (a log handler's, the last flush at exit) go nowhere too.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        _log_command(
            "warning",
            message=f"stderr cannot be written ({exc.strerror or exc}): going on without "
            "progress and messages",
        )


def _console(stream: Any, *, stderr: bool = False) -> Console:
    """Rich consoles. Piped into a file or a CI log, tables are 160 columns, not rich's 80, so
    that ids and times stay readable, and a message is never broken across lines: one problem
    is one line for grep."""
    tty = stream.isatty()
    kind = _Diagnostics if stderr else _Console
    return kind(highlight=False, width=None if tty else 160, soft_wrap=not tty, stderr=stderr)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)

# -- shared options ----------------------------------------------------------------------------

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")]
LogFile = Annotated[
    Path | None,
    typer.Option("--log-file", help="Also write structured JSON log lines to this file."),
]
Endpoint = Annotated[
    str | None,
    typer.Option(
        help="Base URL, e.g. https://host or http://127.0.0.1:8080 [env BULKRERUN_ENDPOINT]"
    ),
]
Region = Annotated[
    str | None, typer.Option(help="Region ID, e.g. cn-north-4 [env BULKRERUN_REGION]")
]
ProjectId = Annotated[
    str | None, typer.Option("--project-id", help="Project ID [env BULKRERUN_PROJECT_ID]")
]
Rate = Annotated[
    float | None, typer.Option(help="Requests per second, all workers together [default 10]")
]
Burst = Annotated[int | None, typer.Option(help="Token-bucket burst [default 1]")]
MaxInflight = Annotated[
    int | None, typer.Option("--max-inflight", help="Requests in flight at once [default 16]")
]
Timeout = Annotated[float | None, typer.Option(help="Seconds for one request [default 30]")]
MaxAttempts = Annotated[
    int | None,
    typer.Option("--max-attempts", help="Attempts per request for retryable failures [default 8]"),
]
_DEFAULT_GRACE = 5.0  # seconds requests in flight get to answer after Ctrl-C
_DEFAULT_OUTAGE_STOP = 600.0  # engine.OUTAGE_STOP_AFTER, without importing the engine here
_DEFAULT_SETTLE = 5.0  # verify.SETTLE_S, without importing verify here
JournalOpt = Annotated[
    Path,
    typer.Option("--journal", "-j", help="Journal file: created if new, resumed if it exists."),
]
_SETTLE_HELP = (
    "seconds the newest request it judges by must be old before the instance list is read: "
    "more for a service known to list its reruns late. While the list does not yet show "
    "reruns the service accepted, held units stay held."
)


class _Redact:
    """structlog processor: no secret value and no auth header ever reaches a log line."""

    KEYS = frozenset({"authorization", "x-auth-token", "x-security-token", "sk", "token"})

    def __init__(self, secrets: Sequence[str], sent: Sequence[str] = ()) -> None:
        from bulkrerun.signing import mask_fragments, secret_windows  # not at start-up

        self.secrets = [s for s in secrets if s]
        # Parts are looked for only of the secrets a request carries (``sent``): the text a
        # server could echo one in, cut short, is all the service's, already scrubbed whole
        # by the transport; this is the second line. The SK never travels, and looking for
        # its parts in every field of every record cost 15 us per record.
        self._windows = secret_windows(sent)
        self._mask_fragments = mask_fragments

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key in list(event):
            if key.lower() in self.KEYS:
                event[key] = "[redacted]"
            elif self.secrets and isinstance(event[key], str):
                value = event[key]
                for secret in self.secrets:
                    value = value.replace(secret, "[redacted]")
                event[key] = self._mask_fragments(value, self._windows) if self._windows else value
        return event


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged: while the progress bar is
    drawn, rich puts a proxy there that prints above the bar; a handler that kept the real
    stderr would write into the bar's line.

    Records of what was printed for the operator already (a stop, windows re-covering done
    times) are warnings in the log, for its readers, but are not written here again."""

    PRINTED = frozenset({"stopping", "new window chunks re-cover done ones"})

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict) and record.msg.get("event") in self.PRINTED:
            return
        self.stream = sys.stderr
        super().emit(record)


class _LogFileHandler(logging.FileHandler):
    """``--log-file``'s handler. A write that fails (a full disk) said so with a traceback
    per record, thousands of them over the progress, and the run ended 0 with its log cut
    short unnoticed: it now says so once, and logs nothing more to that file."""

    broken = False
    shown = ""  # the path as the user gave it (logging keeps it made absolute)
    kept_anyway = ""  # what records the command all the same: "the run", "the verification"

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if self.broken or not isinstance(exc, OSError):
            super().handleError(record)
            return
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            self.close()
        anyway = f" The journal records {self.kept_anyway} as before." if self.kept_anyway else ""
        err.print(
            f"warning: cannot write the log file {self.shown or self.baseFilename} "
            f"({exc.strerror or exc}): nothing more is logged to it.{anyway}",
            style="yellow",
            markup=False,
        )


def configure_logging(
    verbose: bool,
    log_file: Path | None,
    secrets: Sequence[str] = (),
    sent: Sequence[str] = (),
    *,
    journaled: str = "",
) -> bool:
    """Logs go to stderr (warnings, or everything with -v) and, with --log-file, as JSON lines
    to that file. Returns whether per-chunk logging is wanted (it costs time on big runs).
    ``journaled``: what the journal records of the command ("the run"), which a log file
    that can no longer be written does not lose; empty for a command that writes none.

    Without either, structlog is not even imported: ``plan --json`` of a million requests
    should not pay for it at start-up. Messages for the operator are printed; those an
    audit needs as well (the run's start and end, a stop, edited windows) are also logged.
    A log file that cannot be opened ends the command with exit 2 before anything is done.
    """
    if not verbose and log_file is None:
        return False
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _Redact(secrets, sent),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger("bulkrerun")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    console = _StderrHandler()
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.dev.ConsoleRenderer(colors=False), foreign_pre_chain=shared
        )
    )
    root.addHandler(console)
    if log_file is not None:
        try:
            # Private, as the journal is: it holds the same service messages, project and
            # endpoint (logging would make it with the umask's mode). One made before keeps
            # its own.
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler = _LogFileHandler(log_file, encoding="utf-8")
            handler.shown, handler.kept_anyway = str(log_file), journaled
        except OSError as exc:  # a missing folder, a directory, no permission
            raise _fail(
                SettingsError(f"--log-file {log_file}: cannot write to it ({exc.strerror})")
            ) from None
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(), foreign_pre_chain=shared
            )
        )
        root.addHandler(handler)
    return verbose or log_file is not None


def _fail(exc: BulkrerunError) -> typer.Exit:
    """Say why the command ends (on stderr, and in the log when there is one: a run that
    stops before it starts, its selection refused say, is part of the trail too)."""
    if isinstance(exc, ManifestError):
        problems = counted(len(exc.problems), "problem")
        err.print(f"[red]manifest has {problems}; nothing was sent:[/]")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        _log_command("command ended", exit_code=exc.exit_code, problems=list(exc.problems))
    else:
        label = "error" if exc.exit_code == EXIT_BAD_INPUT else "stopped"
        err.print(f"[red]{label}:[/] ", end="")
        err.print(str(exc), markup=False)
        _log_command("command ended", exit_code=exc.exit_code, why=f"{label}: {exc}")
    return typer.Exit(exc.exit_code)


@contextlib.contextmanager
def _writing_stdout() -> Iterator[None]:
    """Around what a command writes to stdout (the plan, a status, a report). A reader that
    went away (``report -f csv | head``) had what it wanted: the command ends quietly, exit
    0. Output that cannot be written (a full disk under ``> outage.csv``) ends it with one
    line saying so and exit 3, not a traceback."""
    try:
        yield
        sys.stdout.flush()
    except OSError as exc:
        # What is still buffered goes nowhere, so that the interpreter's last flush at exit
        # does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):
            return
        err.print("[red]stopped:[/] ", end="")
        err.print(f"cannot write the output: {exc.strerror or exc}", markup=False)
        raise typer.Exit(EXIT_FATAL) from None


def _report_width() -> None:
    """A report table into a file or a pipe (`less`, `make demo`'s output) gets 240 columns:
    at 160 the window's times, what a held row is read by, were cut to "2024-11-23T…"."""
    if not out.is_terminal:
        out.width = 240


def _settings(**flags: Any) -> Any:
    from bulkrerun.settings import load_settings

    return load_settings(**flags)


def _logging_for(
    settings: Any, verbose: bool, log_file: Path | None, *, journaled: str = ""
) -> bool:
    """:func:`configure_logging` masking the secrets of ``settings``; warns of one too short
    to be masked (a placeholder: masking it would spell it out, see signing.maskable)."""
    log_chunks = configure_logging(
        verbose, log_file, settings.secrets(), settings.sent_secrets(), journaled=journaled
    )
    from bulkrerun.signing import FRAGMENT

    for name in settings.too_short_to_mask():
        _warn(
            f"{name} is shorter than {FRAGMENT} characters, as no real one is: it is not "
            "masked in messages, where masking so short a value would spell it out"
        )
    return log_chunks


# -- plan --------------------------------------------------------------------------------------


@app.command(cls=_Command)
def plan(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="Manifest file (TOML, or JSON).")
    ],
    json_lines: Annotated[
        bool,
        typer.Option(
            "--json",
            help='One JSON object per request: {"id","method","path","headers","body"}. '
            "Streams; auth headers are never shown.",
        ),
    ] = False,
    endpoint: Endpoint = None,
    region: Region = None,
    project_id: ProjectId = None,
    rate: Rate = None,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """Validate MANIFEST and show the plan. Sends no rerun.

    The summary shows, per entry, the job, mode, span, requests and instances, the first and
    last request, and how long the plan takes at the configured rate. [[select]] entries are
    planned by reading the instance-list API (queries only) when an endpoint and credentials
    are set; without them they are shown without their requests.

    Exit codes: 0 the manifest is valid, 2 bad input (every problem found is listed), 3 the
    instance list of a [[select]] entry could not be read (credentials refused, service
    unreachable).
    """
    from urllib.parse import urlsplit

    from bulkrerun.manifest import load_manifest
    from bulkrerun.planner import plan as make_plan
    from bulkrerun.planner import write_json_lines
    from bulkrerun.session import UnitCounts

    duplicates = UnitCounts()  # only its duplicates: the first few, and how many
    try:
        settings = _settings(endpoint=endpoint, region=region, project_id=project_id, rate=rate)
        # [[select]] queries use them
        _logging_for(settings, verbose, log_file)
        where = _plan_endpoint(settings)
        m = load_manifest(manifest)
        _print_warnings(m)
        selections = _plan_selections(m, settings)
        requests = None  # not known when the reader went away (`| head`)
        with _writing_stdout():
            if json_lines:
                # The endpoint's own path (a gateway's prefix) comes before every path sent.
                known = settings.endpoint or settings.region
                prefix = urlsplit(where).path if known else ""
                requests = write_json_lines(
                    make_plan(m, selections=selections, on_duplicate=duplicates.add_duplicate),
                    settings.project_id,
                    sys.stdout.buffer,
                    prefix,
                )
                sys.stdout.buffer.flush()
            else:
                requests = _print_plan_summary(m, settings, selections, where, duplicates)
        if json_lines:
            # On stderr, as the plain plan's: stdout stays one request per line. Once the
            # stream is written, as its duplicates are found while it is.
            _warn_duplicates(m, duplicates.duplicates, duplicates.duplicate_count, selections)
    except BulkrerunError as exc:
        raise _fail(exc) from None
    _log_command(
        "plan shown",
        manifest=str(manifest),
        manifest_sha256=m.sha256,
        requests=requests,
        json=json_lines,
        warnings=list(m.warnings),
        duplicates=duplicates.duplicate_count,
    )


def _print_warnings(manifest: Any) -> None:
    from bulkrerun.clock import SystemClock

    for warning in manifest.warnings:
        _warn(warning)
    for warning in _future_begins(manifest, round(SystemClock.wall() * 1000)):
        _warn(warning)


def _future_begins(manifest: Any, now_ms: int) -> list[str]:
    """Windows and selections that begin after ``now_ms``. No instance is planned there
    yet: a window's requests would be accepted (done) and rerun nothing, a selection would
    find nothing. Most likely a wrong year or timezone, typed under stress."""
    return [
        f"{manifest.path}: {entry.label}.begin = {_fmt_ms(entry.begin_ms, entry.timezone)} "
        "is in the future: no instance is planned there yet, so its requests rerun nothing; "
        "check the year and the timezone"
        for entry in manifest.entries
        if getattr(entry, "begin_ms", None) is not None and entry.begin_ms > now_ms
    ]


def _warn(text: str) -> None:
    """A warning: on stderr, and in the log when there is one."""
    err.print("[yellow]warning:[/] ", end="")
    err.print(text, markup=False)
    _log_command("warning", message=text)


def _plan_selections(m: Any, settings: Any) -> dict[str, Any] | None:
    """``plan`` resolves ``[[select]]`` entries only when it can reach the service."""
    from bulkrerun.manifest import SelectEntry

    if not any(isinstance(e, SelectEntry) for e in m.entries):
        return None
    try:
        return anyio.run(_query_selections_for_plan, m, settings, backend="asyncio")
    except SettingsError as exc:
        err.print("[yellow]note:[/] ", end="")
        err.print(
            f"[[select]] entries need the instance-list API to be planned ({exc}); they are "
            "shown without their requests.",
            markup=False,
        )
        return None


def _pacer(
    settings: Any,
    *,
    max_failure_ratio: float | None = None,
    canary: int = 0,
    journal: Path | None = None,
) -> Any:
    """The one pacer of a command, from the settings: every request it sends (reruns and
    instance-list reads alike) goes through it. ``journal``: a run's, which its stop on the
    failure budget or the canary names in the command that shows the failures."""
    from bulkrerun.pacing import Pacer, PacingConfig

    report = (
        "bulkrerun report"
        if journal is None
        else command_line(["bulkrerun", "report", str(journal)])
    )
    return Pacer(
        PacingConfig(
            rate=settings.rate,
            burst=settings.burst,
            max_attempts=settings.max_attempts,
            max_failure_ratio=max_failure_ratio,
            canary=canary,
            report=report,
        )
    )


async def _query_selections_for_plan(m: Any, settings: Any) -> dict[str, Any]:
    from bulkrerun.clock import SystemClock
    from bulkrerun.select import query_selections
    from bulkrerun.verify import ListTrouble

    transport = _make_transport(settings)
    pacer = _pacer(settings)
    clock = SystemClock()
    async with transport:
        return await query_selections(
            m,
            transport,
            pacer=pacer,
            clock=clock,
            on_note=lambda s: err.print(s, markup=False),
            on_outcome=ListTrouble(None, selecting=True).observer(clock, _notice),
        )


def _plan_endpoint(settings: Any) -> str:
    """Where ``plan`` says the requests would go. A plan needs no endpoint, but one that is
    given and wrong (an unknown region, not a URL) is bad input, as it is for ``run``."""
    from bulkrerun.settings import resolve_endpoint

    if not settings.endpoint and not settings.region:
        return "(not set: BULKRERUN_REGION or BULKRERUN_ENDPOINT)"
    return resolve_endpoint(settings)


def _print_plan_summary(m: Any, settings: Any, selections: Any, where: str, duplicates: Any) -> int:
    """The plan's table, first and last request, and duration; returns its requests.
    ``duplicates`` (a UnitCounts) is told the units the manifest names again."""
    from bulkrerun.planner import summarize

    rows = summarize(m, selections=selections, on_duplicate=duplicates.add_duplicate)
    # A window reruns its `jobs` too: the plan names them beside its own job.
    also = {e.label: [name for name, _ws in e.jobs] for e in m.entries if getattr(e, "jobs", ())}
    table = Table(title=f"plan of {escape(str(m.path))}", title_justify="left")
    for col in ("entry", "job", "mode", "span", "requests", "instances"):
        table.add_column(col, justify="right" if col in ("requests", "instances") else "left")
    requests = units = 0
    for row in rows:
        span = (
            f"{_fmt_ms(row.begin_ms, row.timezone)} .. {_fmt_ms(row.end_ms, row.timezone)}"
            if row.begin_ms is not None and row.end_ms is not None
            else ""
        )
        mode = "B window" if row.kind == "window" else f"A {row.kind}"
        resolved = row.kind != "select" or (selections and row.label in selections)
        table.add_row(
            escape(row.label),
            escape(" + ".join([row.job_name, *also.get(row.label, ())])),
            mode,
            span,
            f"{row.requests:,}" if resolved else "needs a query",
            f"{row.units:,}" if row.kind != "window" and resolved else "",
        )
        requests += row.requests
        units += row.units if row.kind != "window" else 0
    table.add_section()
    table.add_row("total", "", "", "", f"{requests:,}", f"{units:,}")
    out.print(table)
    _warn_duplicates(m, duplicates.duplicates, duplicates.duplicate_count, selections)
    first = next((r for r in rows if r.first is not None), None)
    last = next((r for r in reversed(rows) if r.last is not None), None)
    if first is not None and first.first is not None:
        out.print(f"first request: {_describe(first.first, first.timezone)}", markup=False)
    if last is not None and last.last is not None:
        out.print(f"last request:  {_describe(last.last, last.timezone)}", markup=False)
    seconds = requests / settings.rate
    took = "under a second" if 0 < seconds < 0.5 else f"about {duration(seconds)}"  # not "0s"
    out.print(
        f"{counted(requests, 'request')} to {where}, project {settings.project_id or '(not set)'}; "
        f"at {settings.rate:g} requests/s that takes {took}.",
        markup=False,
    )
    return requests


def _warn_duplicates(
    manifest: Any, shown: Sequence[Any], count: int, selections: Any = None
) -> None:
    """Warn of units the manifest names again (``shown``: the first of them; ``count``: how
    many in all), each where the repeat is and where it first occurs, as a manifest error
    would name them (``selections``: what the ``[[select]]`` entries found)."""
    from bulkrerun.planner import first_places

    zones = {e.label: getattr(e, "timezone", None) for e in manifest.entries}
    firsts = first_places(manifest, shown, selections) if shown else {}
    for d in shown:
        zone = zones.get(d.label)
        if d.begin_time is not None:
            what = (
                f"the request for job {d.job_name} {_fmt_ms(d.begin_time, zone)} .. "
                f"{_fmt_ms(d.end_time, zone)}"
            )
        else:
            what = (
                f"job {d.job_name} job_id {d.job_id} plan_time {d.plan_time} "
                f"({_fmt_ms(d.plan_time, zone)}) submit_time {d.submit_time}"
            )
            if d.where == d.label:  # a [[select]] entry's: the instance list found it
                what += ", found by the instance list,"
        first = firsts.get(d.unit)
        earlier = f"earlier too, at {first}" if first else "earlier in the manifest too"
        _warn(f"{manifest.path}: {d.where}: {what} is planned {earlier}; it is sent once")
    if count > len(shown):
        _warn(f"{manifest.path}: {count:,} units named again in all; each is sent once")


def _describe(chunk: Any, zone: str | None) -> str:
    body = chunk.body_object()
    if "begin_time" in body:
        what = f"{_fmt_ms(body['begin_time'], zone)} .. {_fmt_ms(body['end_time'], zone)}"
    else:
        what = counted(len(body.get("task_retrys", [])), "instance")
    jobs = " + ".join([chunk.job_name, *(job["job_name"] for job in body.get("jobs", ()))])
    return f"{chunk.entry} {jobs} {what} (id {chunk.id})"


def _fmt_ms(ms: int | None, zone: str | None = None) -> str:
    """A time as the manifest meant it: in the entry's timezone with its offset
    (``2024-11-26 08:00:00.000+08:00``), or in UTC (``...Z``) when it named none."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    if ms is None:
        return ""
    at = dt.datetime.fromtimestamp(ms / 1000, ZoneInfo(zone) if zone else dt.UTC)
    shown = at.isoformat(" ", "milliseconds")
    return shown if zone else shown.removesuffix("+00:00") + "Z"


# -- run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunArgs:
    manifest: Path
    journal: Path
    resend_held: bool
    retry_failed: bool
    verify_held: bool
    reselect: bool
    watch: bool
    max_failure_ratio: float | None
    canary: int
    grace: float
    outage_stop: float
    progress: bool
    log_chunks: bool
    resume: str  # the command line that resumes this run, shell-quoted
    # The settings given as flags (flag, value or None), which status repeats in its steps.
    flags: tuple[tuple[str, str | None], ...] = ()
    # Instead of the journal's next steps, when those cannot work (the demo's fake service
    # is gone when it ends).
    next_steps: tuple[str, ...] | None = None
    # Run by `bulkrerun demo`: its record says so, for status to say how to reach a service
    # again (see report._demo_steps).
    demo: bool = False
    settle: float = _DEFAULT_SETTLE  # --settle, for --verify-held


def _make_auth(settings: Any) -> Any:
    from bulkrerun.signing import AkSk
    from bulkrerun.transport import Auth

    ak, sk = settings.ak, settings.sk
    if (ak is None) != (sk is None):
        raise SettingsError(
            "AK/SK: both BULKRERUN_AK and BULKRERUN_SK (or CLOUD_SDK_AK and CLOUD_SDK_SK) "
            "must be set, not just one"
        )
    if ak is not None and sk is not None:
        token = settings.security_token.get_secret_value() if settings.security_token else None
        return Auth(aksk=AkSk(ak.get_secret_value(), sk.get_secret_value(), token))
    if settings.token is not None:
        return Auth(token=settings.token.get_secret_value())
    raise SettingsError(
        "no credentials: set BULKRERUN_AK and BULKRERUN_SK (or CLOUD_SDK_AK / CLOUD_SDK_SK) "
        "for AK/SK signing, or BULKRERUN_TOKEN for an IAM token"
    )


def _user() -> str:
    """The operator's login name, or the uid when the system has none for it."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        return f"uid {os.getuid()}"


def _verify_options(
    settings: Any,
    endpoint: str,
    transport: Any,
    flags: tuple[tuple[str, str | None], ...],
    settle: float,
) -> dict[str, Any]:
    """What a ``verify`` records of itself (see journal: verify_start): the service it
    reaches, at which pace, how long it let requests settle (``--settle``), and
    :func:`_who_and_how`."""
    return {
        "endpoint": endpoint,
        "project_id": settings.project_id,
        "rate": settings.rate,
        "burst": settings.burst,
        "timeout": settings.timeout,
        "max_attempts": settings.max_attempts,
        "settle": settle,
        **_who_and_how(settings, transport, flags),
    }


def _who_and_how(
    settings: Any, transport: Any, flags: tuple[tuple[str, str | None], ...]
) -> dict[str, Any]:
    """What the record of a run or a verify says of who ran it where, with which flags, and
    how it authenticated and trusted the service: a review asks, and one with TLS
    verification off should say so. No secret: the auth is its kind."""
    return {
        "proxy": transport.proxy.shown if transport.proxy is not None else None,
        "flags": [list(pair) for pair in flags],
        "tool_version": bulkrerun.__version__,
        "pid": os.getpid(),
        "user": _user(),
        "host": socket.gethostname(),
        "auth": transport.auth.kind(),
        "verify_tls": settings.verify_tls,
        "ca_bundle": str(settings.ca_bundle) if settings.ca_bundle else None,
    }


def _service_for(settings: Any, journal: Path) -> str:
    """The endpoint to send to, with the project ID checked: exit 2 without either. When
    neither an endpoint nor a project is set and ``journal`` holds one, the message names
    what it is bound to: a resume pasted into a fresh shell, where the first run had them
    from the environment, would otherwise leave the operator to find them."""
    from bulkrerun.journal import bound_to
    from bulkrerun.settings import resolve_endpoint

    try:
        endpoint = resolve_endpoint(settings)
        _project_id(settings)
    except SettingsError as exc:
        header = bound_to(journal)
        has_endpoint = bool(settings.endpoint or settings.region)
        if header is None or (has_endpoint and settings.project_id):
            raise  # an unknown region, a bad URL: not something the journal answers
        add = []
        if not has_endpoint:
            add.append(("--endpoint", header.endpoint))
        if not settings.project_id:
            add.append(("--project-id", header.project_id))
        given = " ".join(f"{flag} {shlex.quote(value)}" for flag, value in add)
        raise SettingsError(
            f"{exc}. The journal {journal} is bound to project {header.project_id} at "
            f"{header.endpoint}: to go on with it, add {given}"
        ) from None
    return endpoint


def _project_id(settings: Any) -> str:
    """The project ID every command that talks to the service needs: exit 2 without one."""
    if not settings.project_id:
        raise SettingsError("no project ID: set BULKRERUN_PROJECT_ID or --project-id")
    return str(settings.project_id)


FILES_BESIDES_CONNECTIONS = 32
"""Open files a command needs besides one connection per request in flight: the standard
streams, the journal, its helper's pipes, the log, the event loop's (17 in a run at 16 in
flight), with room to spare."""


def _open_files_for(max_inflight: int) -> None:
    """Make sure the process may open a connection for every request in flight. Below the
    limit (``ulimit -n``), the connections beyond it failed with "too many open files",
    which read as a service that cannot be reached, and the run stopped advising a new
    journal. The soft limit is raised as far as needed when the hard one allows, as
    servers do; otherwise exit 2, before anything is sent, naming both numbers."""
    import resource

    needed = max_inflight + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    fits = hard - FILES_BESIDES_CONNECTIONS
    if fits < 1:  # even one request in flight would not do: only a higher limit helps
        raise SettingsError(
            f"a run needs about {needed} open files (--max-inflight {max_inflight}, and "
            f"{FILES_BESIDES_CONNECTIONS} besides), and this process may open only {hard} "
            f"(ulimit -n): raise the limit to {needed} or more"
        )
    raise SettingsError(
        f"--max-inflight {max_inflight} needs about {needed} open files (a connection per "
        f"request in flight), and this process may open only {hard} (ulimit -n): lower "
        f"--max-inflight (BULKRERUN_MAX_INFLIGHT) to {fits} or less, or raise the limit"
    )


def _make_transport(settings: Any, endpoint: str | None = None) -> Any:
    from bulkrerun.settings import resolve_endpoint
    from bulkrerun.transport import HttpTransport, proxy_from_environment

    endpoint = endpoint or resolve_endpoint(settings)
    return HttpTransport(
        endpoint=endpoint,
        project_id=_project_id(settings),
        auth=_make_auth(settings),
        timeout=settings.timeout,
        max_inflight=settings.max_inflight,
        verify_tls=settings.verify_tls,
        ca_bundle=settings.ca_bundle,
        proxy=proxy_from_environment(endpoint),
    )


# One-shot decisions about units recorded before: a resume command that repeated them would
# apply them to what this run leaves behind, e.g. send again units held by the interruption.
# (--verify-held only reads the instances' state: repeating it is safe, and it stays.)
def _given_flags(
    options: dict[str, Any], switches: Sequence[str]
) -> tuple[tuple[str, str | None], ...]:
    """The settings given as flags, as (flag, value) pairs, switches with None: what a
    command that carries this run on repeats (``options``: flag -> value, None when not
    given; ``switches``: the valueless flags to keep)."""
    pairs: list[tuple[str, str | None]] = []
    for flag, value in options.items():
        if value is not None:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # --rate 20 comes back as 20, not 20.0 (nor 2e+01)
            pairs.append((flag, str(value)))
    return (*pairs, *((switch, None) for switch in switches))


def _print_resume_command(args: RunArgs, lead: str) -> None:
    # No markup: a path like "rerun[prod].journal" is a file name, not a style tag.
    err.print(f"{lead}\n  {args.resume}", markup=False, soft_wrap=True)
    _print_left_out(args)


def _print_left_out(args: RunArgs) -> None:
    """Which one-shot flags of this run the command printed for the next one leaves out."""
    left_out = [flag for name, flag in ONE_SHOT_FLAGS if getattr(args, name)]
    if left_out:
        err.print(
            f"  (without {', '.join(left_out)}: add {'it' if len(left_out) == 1 else 'them'} "
            f"again only after `bulkrerun status "
            f"{shlex.quote(str(args.journal))}` shows what this run left held or failed)",
            markup=False,
            soft_wrap=True,
        )


async def _run(args: RunArgs, settings: Any, endpoint: str) -> int:
    """Everything of ``run`` that needs the event loop; returns the exit code."""
    from bulkrerun.clock import SystemClock
    from bulkrerun.display import RunDisplay
    from bulkrerun.engine import Engine
    from bulkrerun.journal import Binding, Journal, RunInfo, UnitState
    from bulkrerun.manifest import load_manifest
    from bulkrerun.session import ResumeFlags, chunks_to_send, count_units, earlier_windows

    manifest = load_manifest(args.manifest)
    _print_warnings(manifest)
    transport = _make_transport(settings, endpoint)
    # Without live details: the run's memory stays flat however many requests it sends
    # (the resume decisions come from the state as opened; --watch reloads the file). Slim:
    # of the requests an earlier run sent once and got done, a run needs no more than their
    # units' states and where their intents are.
    journal = Journal.open(
        args.journal,
        Binding(settings.project_id, endpoint),
        tool_version=bulkrerun.__version__,
        live_details=False,
        slim=True,
    )
    flags = ResumeFlags(retry_failed=args.retry_failed, resend_held=args.resend_held)
    clock = SystemClock()
    pacer = _pacer(
        settings,
        max_failure_ratio=args.max_failure_ratio,
        canary=args.canary,
        journal=args.journal,
    )
    try:
        async with transport:
            selections = await _selections_for_run(manifest, journal, transport, args, pacer, clock)
            if args.verify_held:
                # On record as a verification of its own, with the run's flags: its verdicts
                # come before the run's record.
                asked = _verify_options(settings, endpoint, transport, args.flags, args.settle)
                verified, _ = await _recorded_verify(
                    journal, transport, pacer, clock, asked, args.settle
                )
                err.print(verified.said(str(args.journal)), markup=False)
            state = journal.state()
            earlier = earlier_windows(journal, state, manifest)
            counts = count_units(manifest, state.units, flags, selections, earlier=earlier)
            _warn_duplicates(manifest, counts.duplicates, counts.duplicate_count, selections)
            _print_overlaps(counts.overlaps, log=args.log_chunks)
            where = f"project {settings.project_id} at {endpoint}"
            if transport.proxy is not None:
                where += f" through {transport.proxy.shown} ({transport.proxy.variable})"
            _print_resume(
                args,
                counts,
                resumed=bool(state.runs),
                where=where,
                unplanned_done=_done_not_planned(state, counts),
            )
            # Everything the run was told, for a review: what a "failed after 3 attempts" or
            # a watch that followed the reruns is explained by.
            options = {
                "retry_failed": args.retry_failed,
                "resend_held": args.resend_held,
                "verify_held": args.verify_held,
                "reselect": args.reselect,
                "watch": args.watch,
                "rate": settings.rate,
                "burst": settings.burst,
                "max_inflight": settings.max_inflight,
                "timeout": settings.timeout,
                "max_attempts": settings.max_attempts,
                "max_failure_ratio": args.max_failure_ratio,
                "canary": args.canary,
                "grace": args.grace,
                "outage_stop": args.outage_stop,
                **_who_and_how(settings, transport, args.flags),
                **({"demo": True} if args.demo else {}),
            }
            if args.log_chunks:
                _log_run(
                    "run started",
                    manifest=str(manifest.path),
                    manifest_sha256=manifest.sha256,
                    journal=str(args.journal),
                    project_id=settings.project_id,
                    endpoint=endpoint,
                    resumed=bool(state.runs),
                    done=counts.done,
                    failed=counts.failed,
                    held=counts.held,
                    new=counts.new,
                    to_send=counts.to_send,
                    **options,
                )
            # A signal Python dropped on the way (raised in a __del__) stops the run here,
            # before it records or sends anything.
            _interrupt.check()
            journal.begin_run(
                RunInfo(
                    manifest_name=str(manifest.path),
                    manifest_text=manifest.text,
                    manifest_sha256=manifest.sha256,
                    instance_files=manifest.files,
                    selections=selections or {},  # written from their columns
                    options=options,
                    pending=counts.to_send,
                )
            )
            display = RunDisplay(err, counts.to_send, enabled=args.progress, pacer=pacer)
            on_event, on_settled = _event_sinks(display, args.log_chunks)
            engine = Engine(
                iter(chunks_to_send(manifest, state, flags, selections)),
                transport=transport,
                journal=journal,
                pacer=pacer,
                max_inflight=settings.max_inflight,
                clock=clock,
                on_event=on_event,
                on_settled=on_settled,
                grace=args.grace,
                outage_stop=args.outage_stop,
            )
            interrupted = False
            signals: list[str] = []  # the stop signals that came, by name, in order
            stopping_before: str | None = None  # the stop under way when the first came
            # Everything built so far (settings, the replayed journal, which may hold a
            # million records) lives until the end: keep the cyclic GC from re-scanning it
            # on every full collection of the run. And collect the young generation less
            # often: each request allocates a few hundred objects that die young by
            # reference counting, and at the default threshold (700) the collector ran
            # over a thousand times in 30,000 requests, 7 % of the run's CPU (0.9 s of
            # 13 s; 0.04 s at 10,000). The garbage it waits for is bounded by that number.
            gc.freeze()
            thresholds = gc.get_threshold()
            gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
            with display, _restoring_gc(thresholds):
                async with anyio.create_task_group() as tg:

                    def take_signal(name: str) -> None:
                        nonlocal interrupted, stopping_before
                        interrupted = True
                        if not signals and engine.stopping:
                            stopping_before = engine.result.stop_reason
                        signals.append(name)
                        # Said live, to the person at the keyboard; the record says what
                        # happened (see _interrupted_message).
                        engine.stop(
                            f"{name} again: abandoning requests in flight"
                            if engine.stopping
                            else f"{name}: finishing requests in flight (again to stop at once)",
                            hard=engine.stopping,
                        )

                    async def watch_signals(
                        *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
                        with _signal_receiver() as sigs:
                            # One that came since the check before begin_run and was dropped
                            # (raised in a __del__) is taken now, before the engine starts:
                            # redelivered, it would come after the first requests left.
                            if (dropped := _interrupt.take()) is not None:
                                take_signal(dropped)
                            task_status.started()
                            async for signum in sigs:
                                take_signal(signal.Signals(signum).name)

                    await tg.start(watch_signals)
                    tg.start_soon(display.follow, engine.result, clock)
                    result = await engine.run()
                    tg.cancel_scope.cancel()
            if signals:
                result.stop_reason = _interrupted_message(
                    signals, stopping_before, engine.cut_off, args.grace
                )
            _interrupt.resume = args.resume  # what a Ctrl-C from now on says to run again
            if journal.sync_fallback:
                err.print(f"note: {journal.sync_fallback}.", style="yellow", markup=False)
            watch_stopped = False  # a signal stopped the watch, after every request went
            watched: list[Any] = []  # the watch's latest summary, once it has one
            watch_end: str | None = None  # why the watch ended early, if it did
            if args.watch and not interrupted and result.fatal is None:
                try:
                    signame = await _watch(
                        journal, transport, pacer, clock, on_progress=_keep_last(watched)
                    )
                except Fatal as exc:  # the reruns stand; only following them failed
                    _warn(f"could not follow the reruns: {exc}")
                    watch_end = "failed"
                else:
                    if signame is not None:
                        interrupted = watch_stopped = True
                        result.stop_reason = f"{signame}: stopped following the reruns"
                        watch_end = signame
                    elif watched and watched[0].timed_out:
                        watch_end = "timeout"
        not_sent = counts.to_send - result.done - result.failed - result.held
        from bulkrerun.report import several_manifests, summarize

        summary = None
        if journal.broken:
            # Its state in memory holds intents the file lacks (never durable, so never
            # sent): sum up the file, as `status` does, which is what a resume will find.
            from bulkrerun.report import status as file_status

            with contextlib.suppress(BulkrerunError, OSError):
                summary = file_status(args.journal)
        if summary is None:
            # How the run ended, for status and a review (a broken journal records nothing
            # more: to a resume, this run reads as one that was killed).
            now = journal.state().counts()
            unsettled = now[UnitState.FAILED] or now[UnitState.HELD] or not_sent
            stopped, message = _how_it_stopped(result, interrupted)
            timed_out = isinstance(result.fatal, Unanswered) and result.fatal.timed_out
            journal.end_run(
                _exit_code(result, interrupted, bool(unsettled)),
                stopped,
                message,
                timed_out=timed_out and not interrupted,
                watch=_watch_seen(watched, watch_end, now[UnitState.DONE])
                if args.watch and not (result.fatal or (interrupted and not watch_stopped))
                else None,
            )
            pending: int | None = not_sent - result.held_again  # those are held, as before
            unknown = None
            taken = result.done + result.failed + result.held + result.pending
            if args.resend_held and counts.held and taken < counts.to_send:
                # Stopped before it took every request: of those it did not take, which are
                # held (left as they were) and which never sent is not counted here.
                pending = None
                unknown = (
                    "this run stopped before it resent every held unit, so what is not yet "
                    f"sent is not counted here (bulkrerun status "
                    f"{shlex.quote(str(args.journal))} counts it); the same command resumes"
                )
            summary = summarize(
                args.journal, journal.state(), pending=pending, pending_unknown=unknown, counts=now
            )
            if several_manifests(journal.state()):
                # What the others left unsent would take planning each again against a
                # second read of the journal (the state in memory no longer lists the units
                # this run settled): `status` does that, not every run's end. Nor can this
                # say that nothing is left to do.
                steps = [s for s in summary.next_steps if not s.startswith("nothing left")]
                steps.append(
                    "this journal's runs had other manifests too; what they left unsent, if "
                    f"anything, is counted by: bulkrerun status {shlex.quote(str(args.journal))}"
                )
                summary = dataclasses.replace(summary, next_steps=steps)
    finally:
        # Closes it; a journal this run created and stopped before recording anything in
        # (a refused selection, a Ctrl-C in start-up) is removed, so that it binds nothing.
        journal.discard_if_unused()
    return _finish(args, result, interrupted, display, not_sent, summary, watch_stopped)


YOUNG_GC_THRESHOLD = 10_000
"""The cyclic GC's first threshold during a run (see _run)."""


@contextlib.contextmanager
def _restoring_gc(thresholds: tuple[int, int, int]) -> Iterator[None]:
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _event_sinks(display: Any, log_chunks: bool) -> tuple[EventSink, EventSink | None]:
    """The engine's ``on_event`` and ``on_settled``: the display's stop notices, and with
    ``--log-chunks`` a log line per event (without it, no Settled events are made)."""
    if not log_chunks:
        return display, None
    import structlog

    log = structlog.get_logger("bulkrerun")

    def sink(event: Event) -> None:
        display(event)
        if isinstance(event, Settled):
            if not event.attempts:
                return  # never sent (the run stopped first): one record per request sent
            o = event.outcome
            log.info(
                "chunk settled",
                chunk=event.chunk.id,
                entry=event.chunk.entry,
                job=event.chunk.job_name,
                units=len(event.chunk.units),
                state=event.state,
                attempts=event.attempts,
                status=o.status if o else None,
                error_code=o.error_code if o else None,
                error_msg=o.error_msg if o else None,
                request_id=o.request_id if o else None,
                reason=o.reason if o else None,
            )
        elif isinstance(event, Retrying):
            log.debug(
                "retrying",
                chunk=event.chunk.id,
                attempt=event.attempt,
                status=event.outcome.status,
                reason=event.outcome.reason,
                delay=round(event.delay, 3),
            )
        elif isinstance(event, Stopping):
            log.warning("stopping", reason=event.reason, hard=event.hard)

    return sink, sink


def _print_overlaps(overlaps: Sequence[Any], *, log: bool) -> None:
    """Warn, before anything is sent, of window entries whose new chunks re-cover times
    that done requests of an earlier run covered (see :class:`bulkrerun.session.Overlap`),
    the times in each entry's timezone, then once why it happens and how to avoid it (an
    entry covers several jobs: the same advice after each read as three times as much to
    take in). They are sent all the same: resume decides per chunk. With logging on, also
    logged."""
    for o in overlaps:
        zone = o.timezone
        err.print(
            f"[yellow]warning:[/] {escape(o.entry)} (job {escape(o.job_name)}): "
            f"{counted(o.new, 'request')} this run sends "
            f"{'re-covers' if o.new == 1 else 're-cover'} times that "
            f"{counted(o.done, 'done request')} already covered "
            f"({_fmt_ms(o.first_ms, zone)} .. {_fmt_ms(o.last_ms, zone)}): their instances "
            "will run again."
        )
    if overlaps:
        err.print(
            "  That happens when an entry's chunk, begin (other than by whole chunks), jobs "
            "or a body field changed since an earlier run, when another entry (or its jobs) "
            "covered the job there, or when --retry-failed or --resend-held sends again "
            "requests whose times were done since. To avoid it, send what the earlier run "
            "sent, or narrow the window to what is not done; to rerun a job added to an "
            "entry's jobs over times already done, take it out of jobs again and give it a "
            "[[window]] entry of its own.",
            markup=False,
        )
    if log and overlaps:
        import structlog

        logger = structlog.get_logger("bulkrerun")
        for o in overlaps:
            logger.warning(
                "new window chunks re-cover done ones",
                entry=o.entry,
                job=o.job_name,
                workspace=o.workspace,
                requests=o.new,
                done_requests=o.done,
                first_ms=o.first_ms,
                last_ms=o.last_ms,
            )


def _done_not_planned(state: Any, c: Any) -> int:
    """Units the journal records as done that the manifest does not plan (an entry taken
    out, or edited so that its requests are new ones). Counted only when the journal knows
    more units than the plan found in it: a resume of the same manifest pays nothing."""
    from bulkrerun.journal import UnitState

    known = len(state.units) + sum(state.untracked_units.values())
    if known <= c.done + c.failed + c.held:
        return 0
    done: int = state.counts()[UnitState.DONE]
    planned: int = c.done
    return max(0, done - planned)


def _print_resume(
    args: RunArgs, c: Any, *, resumed: bool, where: str, unplanned_done: int = 0
) -> None:
    """What the journal says and what this run sends, and where to (``where``: project and
    endpoint, so that a run against the wrong one can be stopped before much is sent).
    ``unplanned_done``: done units of the journal that the manifest does not plan, which
    the counts of the plan's units leave out ("0 units done" of a journal with 400 done
    read as a journal that had lost them)."""
    if resumed or c.done or c.failed or c.held:
        besides = (
            f" (and {counted(unplanned_done, 'done unit')} this manifest does not plan)"
            if unplanned_done
            else ""
        )
        err.print(
            f"journal {args.journal}: {counted(c.done, 'unit')} done, {c.failed:,} failed, "
            f"{c.held:,} held, {c.new:,} new{besides}; sending {c.to_send:,} to {where}.",
            markup=False,
        )
        if c.held and not args.resend_held:
            one = c.held == 1
            them, they = ("it", "it") if one else ("them", "they")
            check = (
                f"--verify-held could not decide {them} (see above)"
                if args.verify_held
                else "Check with --verify-held"
            )
            err.print(
                f"[yellow]{counted(c.held, 'held unit')} {'is' if one else 'are'} not sent[/]: "
                f"the service may have acted on {them}. {check}, or add --resend-held to send "
                f"{them} again ({they} may then run twice)."
            )
        if c.failed and not args.retry_failed:
            are = "is" if c.failed == 1 else "are"
            err.print(
                f"{counted(c.failed, 'failed unit')} {are} not sent; add --retry-failed to resend."
            )
    else:
        err.print(
            f"new journal {args.journal}: sending {counted(c.to_send, 'unit')} to {where}.",
            markup=False,
        )
    if args.resend_held and c.held:
        _warn(
            f"--resend-held sends {counted(c.held, 'unit')} again whose first request may have "
            f"been acted on; {'it' if c.held == 1 else 'those'} may run twice."
        )


def _finish(
    args: RunArgs,
    result: Any,
    interrupted: bool,
    display: Any,
    not_sent: int,
    summary: Any,
    watch_stopped: bool = False,
) -> int:
    """The closing table and status (from the journal's live state: no second read of it,
    unless writing it failed), and the exit code. ``watch_stopped``: a signal stopped
    ``--watch``, after every request of the run was sent."""
    from bulkrerun.report import (
        render_status,
        without_resume_step,
        wrong_endpoint_met,
        wrong_endpoint_step,
    )

    # Held units a resend left held (refused, or not gone) count as held, as status counts
    # them just below: not as not yet sent, which the resume would send.
    table = Table(title="this run", title_justify="left")
    for col in ("done", "failed", "held", "not yet sent", "units/s"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{result.done:,}",
        f"{result.failed:,}",
        f"{result.held + result.held_again:,}",
        f"{not_sent - result.held_again:,}",
        f"{display.rate():.1f}",
    )
    err.print(table)
    for code, n in sorted(result.failed_by_code.items(), key=lambda kv: -kv[1]):
        example = result.failed_example.get(code)
        detail = ""
        if example is not None:
            said = example.error_msg or example.reason
            detail = f" (e.g. request id {example.request_id or 'none'}: {said})"
        err.print(f"  failed {code}: {n:,}{detail}", markup=False)
    if result.held_again:
        err.print(
            f"  of those held, {counted(result.held_again, 'unit')} held before "
            f"{'is' if result.held_again == 1 else 'are'} held again: this run's resend was "
            "not acted on, or did not go",
            markup=False,
        )
    for code, n in sorted(result.refused_resends.items(), key=lambda kv: -kv[1]):
        example = result.refused_example[code]
        said = example.error_msg or example.reason
        err.print(
            f"  resend refused {code}: {counted(n, 'request')} (e.g. request id "
            f"{example.request_id or 'none'}: {said}); their units stay held, as the send "
            "that left them held may have been acted on",
            markup=False,
        )
    # How this run ended is said below (and recorded for status), not as an earlier run's.
    this_run = summary.last_run.n if summary.last_run is not None else None
    summary = dataclasses.replace(summary, last_run=None)
    if args.next_steps is not None:
        summary = dataclasses.replace(summary, next_steps=list(args.next_steps))
    elif isinstance(result.fatal, WrongEndpoint) and not (summary.done or summary.held):
        # As status says it (from the answers it reads back; the live state keeps none).
        met = wrong_endpoint_met({result.fatal.code})
        step = wrong_endpoint_step(args.journal, summary.endpoint, met, args.resume)
        summary = dataclasses.replace(summary, next_steps=[step])
    if (interrupted or result.fatal is not None) and summary.pending:
        # The resume command is printed below, under "Resume with:" (the line the contract
        # promises) or "resume with:": the step that sends the units not yet sent with it
        # would say it twice.
        steps = without_resume_step(summary.next_steps, summary.pending, args.resume)
        summary = dataclasses.replace(summary, next_steps=steps)
    render_status(summary, err)
    if watch_stopped and summary.pending == 0:
        # The same command would send nothing: it would only follow the reruns again.
        err.print("[yellow]interrupted[/]: ", end="")
        lead = (
            "the journal is consistent, and this run sent every request it had to (there is "
            "nothing to resume). To follow the reruns again, which sends nothing:"
        )
        watched = summary.last_watch
        if summary.watch_unfinished and args.next_steps is None:
            # The status's last step just above says so, with the command: not twice.
            err.print(f"{lead} the last step above.", markup=False, soft_wrap=True)
            _print_left_out(args)
        elif watched is not None and watched["run"] == this_run and args.next_steps is None:
            # This run's watch, or one before it, saw every rerun it followed finish: the
            # command would follow nothing (its end record counts what it saw alone).
            done = counted(watched["units"], "done unit")
            err.print(
                "the journal is consistent, and this run sent every request it had to (there "
                f"is nothing to resume); the reruns of the journal's {done} were all seen to "
                "finish, by this watch or an earlier one: nothing is left to follow either.",
                markup=False,
                soft_wrap=True,
            )
        else:
            _print_resume_command(args, lead)
    elif interrupted:
        err.print("[yellow]interrupted[/]: ", end="")
        _print_resume_command(args, "the journal is consistent. Resume with:")
    elif result.fatal is not None:
        err.print("[red]stopped:[/] ", end="")
        err.print(str(result.fatal), markup=False)
        # Pasted before the credentials are fixed, the command meets the same refusal.
        lead = "once that is fixed, resume with:"
        _print_resume_command(
            args, lead if isinstance(result.fatal, AuthRefused) else "resume with:"
        )
        if result.fatal.stop == "failure_budget" and summary.failed and not args.retry_failed:
            # The same command, as every resume command is, sends the rest and not the units
            # the stop was on: they are sent again only once their cause is fixed, and with
            # the same canary they would stop it again if it is not.
            them = "it" if summary.failed == 1 else "them"
            err.print(
                f"  (it leaves the {counted(summary.failed, 'failed unit')} failed: the step "
                f"above sends {them} with the rest, once the cause is fixed)",
                markup=False,
                soft_wrap=True,
            )
    code = _exit_code(result, interrupted, bool(summary.failed or summary.held or not_sent))
    if args.log_chunks:
        # Why it stopped, in the names of the journal's end record: the condition, its message.
        stopped, message = _how_it_stopped(result, interrupted)
        _log_run(
            "run ended",
            journal=str(args.journal),
            exit_code=code,
            done=result.done,
            failed=result.failed,
            held=result.held,
            not_sent=not_sent,
            held_again=result.held_again,
            failed_by_code=dict(result.failed_by_code),
            refused_resends=dict(result.refused_resends),
            stopped=stopped,
            message=message,
            units_per_second=round(display.rate(), 3),
            journal_done=summary.done,
            journal_failed=summary.failed,
            journal_held=summary.held,
        )
    return code


def _interrupted_message(
    signals: list[str], stopping_before: str | None, cut_off: bool, grace: float
) -> str:
    """What a run stopped by ``signals`` (names, in order) records of it, for its journal's
    end record and its log's ``run ended``, as a fact of the past: not the words said live
    (``finishing requests in flight (again to stop at once)`` was advice to the person at
    the keyboard then, and not what happened once a second signal or the grace cut the
    requests off). ``stopping_before``: the stop under way when the first signal came (a
    fatal condition's), which made that signal a hard stop; ``cut_off``: the requests
    still in flight were cut off rather than let finish."""
    first = signals[0]
    if stopping_before is not None:
        said = f"{stopping_before}; then {first}"
    elif len(signals) > 1:
        said = f"{first}, then {signals[1]} again"
    else:
        said = first
    if not cut_off:
        what = "the requests in flight were finished"
    elif stopping_before is None and len(signals) == 1:
        what = f"the requests still in flight after --grace {grace:g} s were cut off"
    else:
        what = "the requests still in flight were cut off"
    if cut_off:
        what += ", their outcome unknown (held)"
    return f"{said}: it stopped sending; {what}"


def _how_it_stopped(result: Any, interrupted: bool) -> tuple[str | None, str | None]:
    """Why a run stopped before its end, as its journal's ``end`` record and its log's
    ``run ended`` record both say it: the condition's name (``interrupted``, or a fatal
    stop's :attr:`~bulkrerun.errors.Fatal.stop`) and what was said of it; (None, None) for
    a run that went to its end."""
    if interrupted:
        return "interrupted", result.stop_reason
    if result.fatal is not None:
        return result.fatal.stop, str(result.fatal)
    return None, None


def _exit_code(result: Any, interrupted: bool, unsettled: bool) -> int:
    """A run's exit code (``unsettled``: units of the journal are failed, held, or not
    sent)."""
    if interrupted:
        return EXIT_INTERRUPTED
    if result.fatal is not None:
        return EXIT_FATAL
    return EXIT_SOME_FAILED if unsettled else EXIT_OK


def _log_run(event: str, **fields: Any) -> None:
    """One record of the run as a whole in the log (``--log-file``, ``-v``): what it set out
    to do, and what it did with which exit code, around its per-request records."""
    import structlog

    structlog.get_logger("bulkrerun").info(event, **fields)


async def _selections_for_run(
    manifest: Any, journal: Any, transport: Any, args: RunArgs, pacer: Any, clock: Any
) -> Any:
    from bulkrerun.manifest import SelectEntry

    if not any(isinstance(e, SelectEntry) for e in manifest.entries):
        return None
    from bulkrerun.select import selections_for_run
    from bulkrerun.verify import ListTrouble

    return await selections_for_run(
        manifest,
        journal,
        transport,
        reselect=args.reselect,
        pacer=pacer,
        clock=clock,
        on_note=lambda s: err.print(s, markup=False),
        on_outcome=ListTrouble(None, selecting=True).observer(
            clock, _notice
        ),  # past a minute, says so
    )


def _log_command(event: str, **fields: Any) -> None:
    """A record in the log (``-v``, ``--log-file``), when there is one: the one a command
    other than ``run`` leaves of what it read or decided, a notice or a warning, for the
    trail an incident's review follows."""
    if logging.getLogger("bulkrerun").handlers:  # configure_logging set up a log
        _log_run(event, **fields)


def _notice(line: str) -> None:
    """A line that says how long-running work goes (the instance list failing, say): on
    stderr, and in the log (``-v``, ``--log-file``)."""
    err.print(line, highlight=False, markup=False)
    _log_command("notice", message=line)


def _keep_last(box: list[Any]) -> Callable[[Any], None]:
    """An ``on_progress`` that keeps in ``box`` only the latest summary it is given."""

    def keep(summary: Any) -> None:
        box[:] = [summary]

    return keep


def _watch_seen(watched: list[Any], why: str | None, done: int) -> dict[str, Any]:
    """What ``--watch`` saw, for the run's end record (see :mod:`bulkrerun.journal`):
    ``watched`` its latest summary, if it had one; ``why`` it ended early (a signal's name,
    ``timeout``, ``failed``), if it did; ``done`` the journal's done units, every one of
    them unseen when the watch stopped before its first summary."""
    if not watched:
        return {
            "units": done,
            "unfinished": done if why else 0,
            "instances": None,
            "finished": None,
            "stopped": why,
        }
    s = watched[0]
    n = s.total()
    return {
        "units": s.units,
        "unfinished": s.unfinished_units,
        "instances": n if n else None,
        "finished": n - s.unfinished if n else None,
        "stopped": why if s.unfinished_units else None,
    }


async def _watch(
    journal: Any,
    transport: Any,
    pacer: Any,
    clock: Any,
    on_progress: Callable[[Any], None] | None = None,
) -> str | None:
    """Follow the reruns to a final status (``--watch``); the signal's name when SIGINT or
    SIGTERM stopped the following, else None.

    The reruns were sent and journaled before: a signal here stops only the following, and
    the run still ends with its table, status and resume command (``_finish``), exit 130.
    The first signal is taken by a receiver on the event loop, which cancels the watch;
    the receiver is then removed, so that a second signal raises KeyboardInterrupt at once
    (``main`` prints the resume command). The journal's replay (seconds for a million
    records) runs before the receiver, without awaiting: a signal raises there, and is
    handled in the same way.
    """
    from bulkrerun.verify import watch

    try:
        journal.reload()  # --watch needs the details a run opened with live_details=False
    except KeyboardInterrupt:  # the previous state stands: reload() replaces it when done
        _interrupt.fired = False  # handled here; main() is not to print the command again
        _watch_stopped(_interrupt.signame, journal.path)
        return _interrupt.signame
    stopped: str | None = None
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            nonlocal stopped
            with _signal_receiver() as sigs:
                task_status.started()
                async for signum in sigs:
                    stopped = signal.Signals(signum).name
                    break
            # From now on a signal raises KeyboardInterrupt, wherever the run is.
            tg.cancel_scope.cancel()

        await tg.start(stop_on_signal)
        try:
            await watch(
                journal, transport, pacer=pacer, clock=clock, console=err, on_progress=on_progress
            )
        except Exception as exc:  # noqa: BLE001 - raised below, not wrapped in a group
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if stopped is not None:
        _watch_stopped(stopped, journal.path)
    return stopped


def _watch_stopped(signame: str, journal: Path) -> None:
    err.print(f"[yellow]watch stopped by {signame}[/]: ", end="")
    err.print(
        "the reruns sent stand (the service accepted them and the journal records them); "
        "only following them stopped. `bulkrerun report "
        f"{shlex.quote(str(journal))}` shows the final statuses seen so far.",
        markup=False,
    )


def _run_args(
    manifest: Path,
    journal: Path,
    *,
    resend_held: bool,
    retry_failed: bool,
    verify_held: bool,
    reselect: bool,
    watch: bool,
    max_failure_ratio: float | None,
    canary: int,
    grace: float,
    outage_stop: float = _DEFAULT_OUTAGE_STOP,
    progress: bool,
    log_chunks: bool,
    resume: str,
    flags: tuple[tuple[str, str | None], ...] = (),
    settle: float = _DEFAULT_SETTLE,
) -> RunArgs:
    if max_failure_ratio is not None and not 0 <= max_failure_ratio <= 1:
        raise SettingsError(f"--max-failure-ratio {max_failure_ratio}: must be 0..1")
    _check_settle(settle)
    if settle != _DEFAULT_SETTLE and not verify_held:
        raise SettingsError(
            f"--settle {settle:g}: it is the wait of --verify-held; add --verify-held, or "
            "leave --settle out"
        )
    if canary < 0:
        raise SettingsError(f"--canary {canary}: must be 0 or more")
    if not 0 <= grace < math.inf:
        raise SettingsError(f"--grace {grace:g}: must be a number of seconds, 0 or more")
    if not 0 < outage_stop < math.inf:
        raise SettingsError(f"--outage-stop {outage_stop:g}: must be a number of seconds above 0")
    return RunArgs(
        manifest,
        journal,
        resend_held,
        retry_failed,
        verify_held,
        reselect,
        watch,
        max_failure_ratio,
        canary,
        grace,
        outage_stop,
        progress,
        log_chunks,
        resume,
        flags,
        settle=settle,
    )


def _check_settle(settle: float) -> None:
    if not 0 <= settle < math.inf:
        raise SettingsError(f"--settle {settle:g}: must be a number of seconds, 0 or more")


def _run_sync(args: RunArgs, settings: Any, endpoint: str) -> int:
    # A run's connections, one per request in flight. (The instance list's queries, of
    # plan, verify and a run's selection, go a few at a time.) Asked before the event loop
    # is made: under a limit of a dozen files, making it failed with a traceback.
    _open_files_for(settings.max_inflight)
    return anyio.run(
        _run, args, settings, endpoint, backend="asyncio", backend_options={"use_uvloop": True}
    )


@app.command(cls=_Command)
def run(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="Manifest file (TOML, or JSON).")
    ],
    journal: JournalOpt,
    resend_held: Annotated[
        bool,
        typer.Option(
            "--resend-held",
            help="Send held units again (sent before, outcome unknown). They may run twice.",
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send units the service refused again.")
    ] = False,
    verify_held: Annotated[
        bool,
        typer.Option(
            "--verify-held",
            help="First decide held units from the instances' live state (instance-list API).",
        ),
    ] = False,
    settle: Annotated[
        float,
        typer.Option("--settle", metavar="SECONDS", help="With --verify-held, the " + _SETTLE_HELP),
    ] = _DEFAULT_SETTLE,
    reselect: Annotated[
        bool,
        typer.Option("--reselect", help="Query [[select]] entries again instead of the journal's."),
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Once sending ends, follow the rerun instances to a final status, for up to "
            "an hour. How they end is printed and kept in JOURNAL.watch; it does not change "
            "the exit code.",
        ),
    ] = False,
    max_failure_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-failure-ratio",
            help="Stop (exit 3) when more than this share of requests fail, e.g. 0.2: "
            "judged over the last 100 finished requests (all of them while fewer, from the "
            "20th on; from the canary's end with --canary).",
        ),
    ] = None,
    canary: Annotated[
        int,
        typer.Option(
            help="Send this many requests first; stop if more than --max-failure-ratio "
            "(default 0.5 with a canary) of them fail. A plan of fewer requests is sent "
            "whole, unjudged."
        ),
    ] = 0,
    grace: Annotated[
        float, typer.Option(help="Seconds requests in flight get to answer after Ctrl-C.")
    ] = _DEFAULT_GRACE,
    outage_stop: Annotated[
        float,
        typer.Option(
            "--outage-stop",
            metavar="SECONDS",
            help="Stop (exit 3) once the service, after it had answered, has failed every "
            "request (5xx, no connection) for this many seconds. Meanwhile requests that run "
            "out of attempts or of the retry budget fail, not acted on (--retry-failed sends "
            "them again): a longer wait does not keep them all pending.",
        ),
    ] = _DEFAULT_OUTAGE_STOP,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    endpoint: Endpoint = None,
    region: Region = None,
    project_id: ProjectId = None,
    rate: Rate = None,
    burst: Burst = None,
    max_inflight: MaxInflight = None,
    timeout: Timeout = None,
    max_attempts: MaxAttempts = None,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """Execute MANIFEST, recording every request in the journal.

    If the journal exists (same project and endpoint) the run resumes: units it records as
    done are never sent again, whatever the manifest now holds; failed and held units only
    with --retry-failed / --resend-held. After any interruption, run the same command again.

    Credentials come from the environment or a .env file in the current folder:
    BULKRERUN_AK and BULKRERUN_SK for AK/SK signing (or CLOUD_SDK_AK and CLOUD_SDK_SK when
    both are unset; BULKRERUN_SECURITY_TOKEN with temporary keys), or BULKRERUN_TOKEN for an
    IAM token. They are never printed, logged or journaled.

    Exit codes: 0 all done, 1 some failed or held, 2 bad input (nothing sent),
    3 stopped by a fatal condition (e.g. credentials refused), 130 interrupted.
    """
    try:
        settings = _settings(
            endpoint=endpoint,
            region=region,
            project_id=project_id,
            rate=rate,
            burst=burst,
            max_inflight=max_inflight,
            timeout=timeout,
            max_attempts=max_attempts,
        )
        log_chunks = _logging_for(settings, verbose, log_file, journaled="the run")
        resolved = _service_for(settings, journal)
        auth = _make_auth(settings)  # credentials are checked before anything else happens
        if auth.aksk is None and settings.security_token is not None:
            _warn(
                "BULKRERUN_SECURITY_TOKEN is set but not sent: it goes with a temporary "
                "AK/SK pair (BULKRERUN_AK and BULKRERUN_SK), and this run authenticates with "
                "BULKRERUN_TOKEN"
            )
        flags = _given_flags(
            {
                "--endpoint": endpoint,
                "--region": region,
                "--project-id": project_id,
                "--rate": rate,
                "--burst": burst,
                "--max-inflight": max_inflight,
                "--timeout": timeout,
                "--max-attempts": max_attempts,
                "--max-failure-ratio": max_failure_ratio,
                "--canary": canary or None,
                "--grace": grace if grace != _DEFAULT_GRACE else None,
                "--outage-stop": outage_stop if outage_stop != _DEFAULT_OUTAGE_STOP else None,
                "--settle": settle if settle != _DEFAULT_SETTLE else None,
                "--log-file": log_file,
            },
            [
                *(["--verify-held"] if verify_held else []),
                *(["--watch"] if watch else []),
                *([] if progress else ["--no-progress"]),
                *(["--verbose"] if verbose else []),
            ],
        )
        # The command that resumes: same endpoint and project, at the same pace.
        resume = run_command(str(manifest), str(journal), flags)
        if canary and max_failure_ratio is None:
            max_failure_ratio = 0.5
        args = _run_args(
            manifest,
            journal,
            resend_held=resend_held,
            retry_failed=retry_failed,
            verify_held=verify_held,
            reselect=reselect,
            watch=watch,
            max_failure_ratio=max_failure_ratio,
            canary=canary,
            grace=grace,
            outage_stop=outage_stop,
            progress=progress,
            log_chunks=log_chunks,
            resume=resume,
            flags=flags,
            settle=settle,
        )
        code = _run_sync(args, settings, resolved)
    except BulkrerunError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


# -- status, report, verify --------------------------------------------------------------------


@app.command(cls=_Command)
def status(
    journal: Annotated[
        Path, typer.Argument(metavar="JOURNAL", help="Journal file (the --journal PATH of a run).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: done, failed, held, pending, ...")
    ] = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """Summarise a journal: done, failed, held, not yet sent, and what to do next.

    Failures are counted by error code; the rate achieved is shown. --json prints one
    object with at least the integer keys done, failed, held and pending. pending is counted
    from the journal's copy of the manifest; it is null, with pending_unknown saying why, only
    when an instance file the run read is missing or has changed.
    """
    configure_logging(verbose, log_file)
    import json

    from bulkrerun.report import render_status, status_json
    from bulkrerun.report import status as make_status

    try:
        summary = make_status(journal)
    except BulkrerunError as exc:
        raise _fail(exc) from None
    with _writing_stdout():
        if as_json:
            out.print(json.dumps(status_json(summary)), markup=False, soft_wrap=True)
        else:
            render_status(summary, out)
    _log_command("status read", **status_json(summary))


@app.command(cls=_Command)
def report(
    journal: Annotated[
        Path, typer.Argument(metavar="JOURNAL", help="Journal file (the --journal PATH of a run).")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="table, csv, json (JSON lines: one object per request), or manifest (a new "
            "manifest of what failed or is held). "
            "In csv, cells starting with = + - @ get a leading ' so that spreadsheets show "
            "them as text; json carries the exact values.",
        ),
    ] = "table",
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """One row per request with its final outcome, for audits and tickets."""
    configure_logging(verbose, log_file)
    from bulkrerun.report import write_report

    if fmt not in ("table", "csv", "json", "manifest"):
        raise _fail(SettingsError(f"--format {fmt}: must be table, csv, json or manifest"))
    rows = None  # not known when the reader went away (`| head`)
    if fmt == "table":
        _report_width()
    if fmt != "table" and isinstance(sys.stdout, io.TextIOWrapper):
        # For programs, in the journal's own encoding, whatever the locale's (LC_ALL=C).
        sys.stdout.reconfigure(encoding="utf-8", errors="strict")
    try:
        with _writing_stdout():
            rows = write_report(journal, fmt, sys.stdout, out)  # type: ignore[arg-type]
    except BulkrerunError as exc:
        raise _fail(exc) from None
    _log_command("report written", journal=str(journal), format=fmt, rows=rows)


@app.command(cls=_Command)
def verify(
    journal: Annotated[
        Path, typer.Argument(metavar="JOURNAL", help="Journal file (the --journal PATH of a run).")
    ],
    endpoint: Endpoint = None,
    region: Region = None,
    project_id: ProjectId = None,
    rate: Rate = None,
    settle: Annotated[
        float, typer.Option("--settle", metavar="SECONDS", help="The " + _SETTLE_HELP)
    ] = _DEFAULT_SETTLE,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """Decide held units from the instances' live state, without sending any rerun.

    A held instance whose instance shows a run submitted after our intent is marked done
    (with the evidence); one that still shows the run from before is made pending again, so
    the next `run` sends it. What cannot be decided stays held, with the reason; so does a
    unit the list shows as not rerun while it does not yet show reruns the service accepted
    (a list slower than --settle): verify again later.

    Exit codes: 0 every held unit decided (or none held), 1 some stay held, 2 bad input (no
    such journal, settings), 3 stopped by a fatal condition (e.g. credentials refused), 130
    interrupted.
    """
    try:
        settings = _settings(endpoint=endpoint, region=region, project_id=project_id, rate=rate)
        _logging_for(settings, verbose, log_file, journaled="the verification")
        _check_settle(settle)
        resolved = _service_for(settings, journal)  # before the journal, bound to a project
        flags = _given_flags(
            {
                "--endpoint": endpoint,
                "--region": region,
                "--project-id": project_id,
                "--rate": rate,
                "--settle": settle if settle != _DEFAULT_SETTLE else None,
                "--log-file": log_file,
            },
            ["--verbose"] if verbose else [],
        )
        code = anyio.run(
            _verify_only, journal, settings, resolved, flags, settle, backend="asyncio"
        )
    except BulkrerunError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


async def _verify_only(
    path: Path,
    settings: Any,
    endpoint: str,
    flags: tuple[tuple[str, str | None], ...],
    settle: float,
) -> int:
    from bulkrerun.clock import SystemClock
    from bulkrerun.journal import Binding, Journal

    # Slim: a verify reads the held units' requests and the latest accepted ones (its
    # canaries), not the details of every request sent once and done.
    journal = Journal.open(
        path,
        Binding(settings.project_id, endpoint),
        tool_version=bulkrerun.__version__,
        create=False,  # a mistyped path must not become a new, empty journal
        slim=True,
    )
    try:
        transport = _make_transport(settings, endpoint)
        pacer = _pacer(settings)
        options = _verify_options(settings, endpoint, transport, flags, settle)
        async with transport:
            summary, code = await _recorded_verify(
                journal, transport, pacer, SystemClock(), options, settle
            )
    except BaseException:
        # How it stopped (a refusal, a signal) stays the news; a journal removed meanwhile,
        # which the close writes back, is said besides.
        try:
            journal.close()
        except Fatal as exc:
            err.print("[red]stopped:[/] ", end="")
            err.print(str(exc), markup=False)
            _log_command("journal removed", message=str(exc))
            if journal.lost:  # a signal's "nothing is lost ... run the same command" is not so
                _journal_lost.append(str(path))
        raise
    journal.close()  # a journal removed since its last commit: written back, and said (exit 3)
    # Its verdicts are in the journal by now: a reader gone away (`| head`) leaves the exit
    # code the verdicts', and a full disk under `> verify.txt` is said in one line.
    with _writing_stdout():
        out.print(summary.said(str(path)), markup=False)
    return code


async def _recorded_verify(
    journal: Any,
    transport: Any,
    pacer: Any,
    clock: Any,
    options: dict[str, Any],
    settle: float,
) -> tuple[Any, int]:
    """Decide the journal's held units (``verify``, ``run --verify-held``) between a record
    of who verified, when, reaching which service how, durable before the first query (as
    a run's record is before its first request), and one of how it ended, which the log's
    ``verify ended`` record repeats. Returns the verification's summary and exit code (0
    every held unit decided, else 1)."""
    from bulkrerun.journal import UnitState
    from bulkrerun.verify import verify_held

    summary = None
    ended: tuple[int, str | None, str | None] | None = None  # exit, stopped, message
    journal.begin_verify(options, journal.state().counts()[UnitState.HELD])
    n = journal.state().verifications[-1].n  # as its records in the journal number it
    try:
        summary = await verify_held(
            journal, transport, pacer=pacer, clock=clock, settle=settle, on_notice=_notice
        )
        ended = (EXIT_OK if not summary.still_held else EXIT_SOME_FAILED, None, None)
    except BulkrerunError as exc:
        ended = (exc.exit_code, exc.stop if isinstance(exc, Fatal) else "error", str(exc))
        raise
    except BaseException:
        # A signal: raised where the loop waits, it reaches this coroutine as its
        # cancellation. Anything else is a crash, and is recorded as one: with no end.
        if _interrupt.fired:
            ended = (EXIT_INTERRUPTED, "interrupted", _interrupt.signame)
        raise
    finally:
        if ended is not None:
            decided = None
            if summary is not None:
                decided = (summary.verified_done, summary.made_pending, summary.still_held)
            try:
                journal.end_verify(*ended, decided)
            finally:
                # In the log as well, however it ended (not only a verify that decided):
                # its number matches the line to the journal's records of it.
                _log_command(
                    "verify ended",
                    journal=str(journal.path),
                    n=n,
                    exit_code=ended[0],
                    stopped=ended[1],
                    message=ended[2],
                    verified_done=None if decided is None else decided[0],
                    made_pending=None if decided is None else decided[1],
                    still_held=None if decided is None else decided[2],
                    held_by_reason=None if summary is None else dict(summary.reasons),
                )
    return summary, ended[0]


# -- fake-server and demo ----------------------------------------------------------------------

# The fake's fault options, in a panel of their own: in one with the others, the widest of
# its names, types and defaults left too little room at 80 columns, and rich cut the names
# (``--drop-after-acce…``).
_FAULTS = "Faults"


@app.command("fake-server", cls=_Command)
def fake_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 = any free port).")] = 8080,
    ak: Annotated[
        str | None, typer.Option(help="Accept only requests signed with this AK.")
    ] = None,
    sk: Annotated[str | None, typer.Option(help="The SK that goes with --ak.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Accept only requests with this X-Auth-Token.")
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="Append one JSON line per accepted rerun to this file.")
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            "--rate-limit", rich_help_panel=_FAULTS, help="Answer 429 beyond this many requests/s."
        ),
    ] = None,
    rate_burst: Annotated[
        int,
        typer.Option(
            "--rate-burst", rich_help_panel=_FAULTS, help="Burst allowed by --rate-limit."
        ),
    ] = 1,
    p429: Annotated[
        float,
        typer.Option(
            "--p429",
            rich_help_panel=_FAULTS,
            help="Share of authenticated requests, not already throttled by --rate-limit, "
            "answered 429 (seeded by --seed). Like every 429 of the fake, they state the "
            "--rate-limit as the gateway's limit, or 10/s without one, and bulkrerun paces "
            "under a stated limit.",
        ),
    ] = 0.0,
    p5xx: Annotated[
        float,
        typer.Option(
            "--p5xx",
            rich_help_panel=_FAULTS,
            help="Share of the requests not throttled (by --rate-limit or --p429) answered 503, "
            "not acted on (seeded by --seed).",
        ),
    ] = 0.0,
    latency_ms: Annotated[
        float,
        typer.Option(
            "--latency-ms",
            rich_help_panel=_FAULTS,
            help="Milliseconds added before answering an accepted rerun or a list query.",
        ),
    ] = 0.0,
    drop_after_accept: Annotated[
        float,
        typer.Option(
            "--drop-after-accept",
            rich_help_panel=_FAULTS,
            help="Share of accepted reruns whose connection is dropped without an answer.",
        ),
    ] = 0.0,
    timeout_after_accept: Annotated[
        float,
        typer.Option(
            "--timeout-after-accept",
            rich_help_panel=_FAULTS,
            help="Share of accepted reruns, not dropped, answered 504 APIG.0201 (a backend "
            "timeout) instead of 200: started, but the client is not told so.",
        ),
    ] = 0.0,
    revoke_after: Annotated[
        int | None,
        typer.Option(
            "--revoke-after",
            rich_help_panel=_FAULTS,
            min=0,
            help="Refuse every request after the first N that pass authentication with 401 "
            "APIG.0301, as when the key is disabled or the token expires in the middle of a "
            "run (with or without --ak/--sk or --token).",
        ),
    ] = None,
    clock_skew: Annotated[
        float,
        typer.Option(
            "--clock-skew",
            rich_help_panel=_FAULTS,
            help="Seconds the gateway's clock is ahead of this machine's (negative: behind): "
            "AK/SK signatures more than 15 minutes off are refused with 401, and every "
            "answer's Date header tells the gateway's time.",
        ),
    ] = 0.0,
    seed: Annotated[
        int | None, typer.Option(rich_help_panel=_FAULTS, help="Seed for the random faults.")
    ] = None,
    catalog: Annotated[
        bool,
        typer.Option(
            "--catalog/--no-catalog",
            help="Model job instances (the demo's jobs and outage) and the instance-list API.",
        ),
    ] = False,
    list_lag: Annotated[
        float,
        typer.Option(
            "--list-lag",
            rich_help_panel=_FAULTS,
            metavar="SECONDS",
            min=0.0,
            help="With --catalog: an accepted rerun shows in the instance list only this many "
            "seconds later (until then the list shows the instance's previous run), as a "
            "service slow to list would.",
        ),
    ] = 0.0,
    missing_job: Annotated[
        list[str] | None,
        typer.Option(
            "--missing-job",
            metavar="JOB",
            rich_help_panel=_FAULTS,
            help="Answer DLF.1000 'Failed to find the job.' for it.",
        ),
    ] = None,
    deny_job: Annotated[
        list[str] | None,
        typer.Option(
            "--deny-job",
            metavar="JOB",
            rich_help_panel=_FAULTS,
            help="Answer 403 DLF.0003 (no permission) for it, reruns and instance lists alike.",
        ),
    ] = None,
    no_retry_after: Annotated[
        bool,
        typer.Option(
            "--no-retry-after", rich_help_panel=_FAULTS, help="Send 429 without Retry-After."
        ),
    ] = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """A local stand-in for the DataArts Factory service, for demos, tests and rehearsals.

    It validates requests like the service, checks AK/SK signatures or a token when given
    (401 otherwise; without them any auth is accepted), keeps a ledger of accepted reruns
    and can inject faults: 429, 503, latency, connections dropped after acceptance, 504
    after acceptance, credentials refused from the middle of a run on, a clock skewed
    from this machine's.
    """
    configure_logging(verbose, log_file, [s for s in (sk, token) if s], [token] if token else [])
    from bulkrerun.fake import Catalog, FakeConfig, serve

    try:
        config = FakeConfig(
            ak=ak,
            sk=sk,
            token=token,
            ledger_path=ledger,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            p429=p429,
            p5xx=p5xx,
            latency_ms=latency_ms,
            drop_after_accept=drop_after_accept,
            timeout_after_accept=timeout_after_accept,
            revoke_after=revoke_after,
            clock_skew=clock_skew,
            seed=seed,
            retry_after=not no_retry_after,
            missing_jobs=frozenset(missing_job or ()),
            deny_jobs=frozenset(deny_job or ()),
            catalog=dataclasses.replace(Catalog.demo(), list_lag_s=list_lag) if catalog else None,
        )
        if list_lag and not catalog:
            raise ValueError(f"list_lag = {list_lag:g}: needs --catalog, which models the list")
    except ValueError as exc:  # --ak without --sk, --rate-limit 0, --p429 2, an empty --token
        # The config names its fields ("latency_ms = -5.0: ..."): said as the option typed.
        said = re.sub(r"^(\w+) = ", lambda m: f"--{m[1].replace('_', '-')} ", str(exc))
        err.print("[red]error:[/] ", end="")
        err.print(f"{said} (see bulkrerun fake-server --help)", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        serve(config, host, port)
    except OSError as exc:  # the port is taken, the host is not ours, the ledger not writable
        err.print("[red]error:[/] the fake service could not start: ", end="")
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


DEMO_MANIFEST = Path("configs/demo.toml")


def _demo_manifest() -> Path | None:
    """configs/demo.toml: in the current folder (a checkout's root, as `make demo` runs it),
    else the copy an installed wheel carries (pyproject's force-include), else the checkout
    this package was imported from. So `bulkrerun demo` works from any folder."""
    if DEMO_MANIFEST.is_file():
        return DEMO_MANIFEST
    packaged = Path(__file__).resolve().parent / "demo.toml"
    if packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / DEMO_MANIFEST
    return checkout if checkout.is_file() else None


@app.command(cls=_Command)
def demo(
    manifest: Annotated[
        Path | None,
        typer.Option(help="The demo manifest [default: configs/demo.toml, found from anywhere]."),
    ] = None,
    journal: Annotated[
        Path | None, typer.Option(help="Journal (default: a new one in a temporary folder).")
    ] = None,
    hostile: Annotated[
        bool,
        typer.Option(
            "--hostile",
            help="A service at its weakest: a low rate limit, random 429 and 503, dropped "
            "connections. Shows pacing at work.",
        ),
    ] = False,
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 40.0,
    max_inflight: MaxInflight = None,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> None:
    """Run configs/demo.toml end to end against the built-in fake service: no account needed.

    Starts the fake service in-process, runs the manifest with progress, then prints the
    status and the report.
    """
    import secrets
    import tempfile

    from bulkrerun.fake import Catalog, FakeConfig, FakeServer

    ak, sk = "DEMO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    log_chunks = configure_logging(verbose, log_file, [sk], journaled="the run")
    if manifest is None:
        manifest = _demo_manifest()
        if manifest is None:
            err.print(
                f"[red]error:[/] {DEMO_MANIFEST} is neither here nor in this installation: "
                "run the demo from the repository's root (make demo), or give --manifest"
            )
            raise typer.Exit(EXIT_BAD_INPUT)
    elif not manifest.exists():
        err.print(f"[red]error:[/] {escape(str(manifest))} not found (--manifest)")
        raise typer.Exit(EXIT_BAD_INPUT)
    config = FakeConfig(
        ak=ak,
        sk=sk,
        catalog=Catalog.demo(),  # its world's "now" is the one configs/demo.toml is written for
        missing_jobs=frozenset({"ods_legacy_feed"}),
        seed=7,
        latency_ms=5.0,
        # --hostile: a quota below the demo's rate, random throttling and outages, and a
        # few reruns accepted but never answered (they end held).
        rate_limit=15.0 if hostile else None,
        p429=0.03 if hostile else 0.0,
        p5xx=0.03 if hostile else 0.0,
        drop_after_accept=0.01 if hostile else 0.0,
    )
    tmp = tempfile.TemporaryDirectory(prefix="bulkrerun-demo-")
    journal_path = journal or Path(tmp.name) / "demo.journal"

    async def main() -> int:
        async with FakeServer(config) as srv:
            err.print(f"fake DataArts Factory service on {srv.url} (AK/SK signing checked)")
            settings = _settings(
                endpoint=srv.url,
                project_id="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                ak=ak,
                sk=sk,
                rate=rate,
                burst=1,
                max_inflight=max_inflight or 16,
                timeout=10.0,
            )
            args = _run_args(
                manifest,
                journal_path,
                resend_held=False,
                retry_failed=False,
                verify_held=False,
                reselect=False,
                watch=True,
                max_failure_ratio=None,
                canary=0,
                grace=_DEFAULT_GRACE,
                progress=True,
                log_chunks=log_chunks,
                # Its fake service (a new port, new keys) ends with it: a journal of the demo
                # cannot be resumed, the demo starts again.
                resume="bulkrerun demo",
            )
            args = dataclasses.replace(args, next_steps=_demo_next_steps(journal), demo=True)
            code = await _run(args, settings, srv.url)
            err.print(f"ledger: the fake service accepted {counted(len(srv.ledger), 'rerun')}")
            return code

    try:
        code = anyio.run(main, backend="asyncio")
        from bulkrerun.report import write_report

        _report_width()
        write_report(journal_path, "table", sys.stdout, out)
        if code == EXIT_SOME_FAILED:
            # The refusals (a job the service does not know) and, with --hostile, the held
            # reruns are part of the show: the demo itself succeeded.
            err.print(
                "demo finished: the refused (and, with --hostile, held) requests above are "
                "part of the demo; `bulkrerun run` would exit 1 for them."
            )
            code = EXIT_OK
    except BulkrerunError as exc:
        raise _fail(exc) from None
    finally:
        tmp.cleanup()
    raise typer.Exit(code)


def _demo_next_steps(journal: Path | None) -> tuple[str, ...]:
    """What to try after the demo. Not the journal's own next steps: the demo's fake service
    stops with it (and a temporary journal is deleted), so resuming or verifying cannot work."""
    if journal is None:
        return (
            "the demo's journal was temporary: give --journal PATH to keep one, then try "
            "`bulkrerun status PATH` and `bulkrerun report PATH --format csv`",
        )
    quoted = shlex.quote(str(journal))
    return (
        f"look at the journal: `bulkrerun status {quoted}` and `bulkrerun report {quoted} "
        "--format csv` (the demo's fake service has stopped: status says how to start one "
        "in its place before you resume or verify)",
    )


def _version(value: bool) -> None:
    if value:
        out.print(f"bulkrerun {bulkrerun.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Rerun DataArts Factory job instances in bulk."""


def _signals_interrupt() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt, wherever the command is, except while
    a run's engine handles them itself (it finishes the requests in flight first) and while
    ``--watch`` follows the reruns (the first one stops the following; see ``_watch``).

    Without this, SIGTERM before the engine started killed the process (exit 143), and a
    Ctrl-C there went to asyncio's own handler, which only cancels the main task: the
    cancellation could be absorbed on its way and the run went on sending.
    """
    _interrupt.install()


@contextlib.contextmanager
def _signal_receiver() -> Iterator[Any]:
    """anyio's receiver of the stop signals on the event loop; on the way out, straight
    back to :func:`_signals_interrupt`. Removing the receiver resets the handlers, SIGTERM's
    to the default, which kills: a SIGTERM while the run's display and task group closed
    after it ended the process with 143 and no resume command. What is left is the instant
    between two calls, with no await between them."""
    try:
        with anyio.open_signal_receiver(*_interrupt.signals) as sigs:
            yield sigs
    finally:
        _signals_interrupt()


_journal_lost: list[str] = []
"""Journals a command found removed and could not write back, said already (with what not
to do): after a signal, :func:`main` then does not say "nothing is lost" nor give the command
again, which would find no journal, and ends with 3 (fatal), not 130."""


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` ended the command because of a signal: the KeyboardInterrupt, or
    what was raised from it (typer's exit 130, a RuntimeError of a class being made). An
    exit the command chose (bad input, a stop it reported itself) is its own."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: Sequence[str] | None = None) -> None:
    """The CLI's entry point (the console script's is :func:`bulkrerun.__main__.main`). A
    Ctrl-C or SIGTERM outside a run's own handling (while a manifest is read, a journal
    replayed or a selection queried; a second one while the run ends) ends with 130 too,
    and the command to run again: nothing is lost, the journal records only what was
    durable."""
    args = list(argv) if argv is not None else sys.argv[1:]
    _signals_interrupt()
    try:
        _interrupt.check()  # one that came during the imports
        app(args=args)
    except BaseException as exc:
        # Raised in a class being made, a KeyboardInterrupt comes out as a RuntimeError
        # caused by it. Any other error is the command's own, signal or not.
        if not _interrupt.fired or not _from_interrupt(exc):
            raise
        code = EXIT_INTERRUPTED
        if _journal_lost:
            err.print("[yellow]interrupted[/]: ", end="")
            err.print(
                f"the journal {_journal_lost[0]} is lost (see above): there is nothing to run "
                "again from it.",
                markup=False,
                soft_wrap=True,
            )
            code = EXIT_FATAL
        else:
            err.print(
                "[yellow]interrupted[/]: nothing is lost. Run the same command again to resume:"
            )
            command = _interrupt.resume or shlex.join(["bulkrerun", *args])
            err.print("  " + command, markup=False, soft_wrap=True)
        # Not sys.exit: a signal that landed in code Python ran from a string (a dataclass
        # made during an import, typer reading annotations) leaves the interpreter marked
        # as interrupted, and under `python -m bulkrerun` it would end by killing itself
        # with SIGINT (-2 to a parent that waits, even after a SIGTERM) instead of 130.
        # Everything that held the journal has been closed on the way here.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


__all__ = ["app", "main"]
