"""More of a machine that is not kind at 3 a.m. (see test_environment.py): a journal removed
while a verify writes it, a journal that cannot be written next to its --watch sidecar, and
a terminal that cannot print what is not ASCII."""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from bulkrerun.text import ascii_substitute
from tests.conftest import PROJECT, Cli, Service, write_manifest
from tests.test_environment import INSTANCES, _unwritable

WINDOWS = """
[[window]]
job_name = "ods_orders"
begin = "2024-11-26T00:00:00"
end = "2024-11-26T06:00:00"
chunk = "1h"
"""  # 6 requests, of a job the fake's catalog lists


def _held_journal(cli: Cli, srv: Service, tmp_path: Path) -> Path:
    """A journal whose 6 requests the service accepted and whose answers were lost: held."""
    m = write_manifest(tmp_path / "m.toml", WINDOWS)
    j = tmp_path / "j"
    ran = cli("run", str(m), "--journal", str(j), "--no-progress", url=srv.url)
    assert ran.returncode == 1, ran.stderr
    assert json.loads(cli("status", str(j), "--json", url=srv.url).stdout)["held"] == 6
    return j


def _wait_for_record(path: Path, kind: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f'"t":"{kind}"' not in path.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, f"no {kind} record in {timeout} s"
        time.sleep(0.02)


def test_a_journal_removed_while_a_verify_waits_is_written_back_when_it_is_interrupted(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """`rm` of the journal while a verify waited for the list to settle, then Ctrl-C: the
    verify closed the removed file, exit 130, and the journal, its runs with it, was gone."""
    srv = fake_service("--catalog", "--drop-after-accept", "1")
    j = _held_journal(cli, srv, tmp_path)
    proc = cli.popen("verify", str(j), "--settle", "600", url=srv.url)
    _wait_for_record(j, "verify_start")
    j.unlink()
    time.sleep(0.2)  # the verify waits on: nothing it does meanwhile finds the file gone
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert (
        f"stopped: the journal {j} was removed while this verify wrote it. What it had "
        f"recorded, the verdicts with it, is written back to {j}: run the same command again "
        "to decide what it had not."
    ) in " ".join(stderr.split())
    assert j.stat().st_mode & 0o777 == 0o600
    status = json.loads(cli("status", str(j), "--json", url=srv.url).stdout)
    assert (status["held"], status["runs"]) == (6, 1)
    verifies = [h for h in status["history"] if h["command"] == "verify"]
    assert [(v["exit_code"], v["stopped"]) for v in verifies] == [(130, "interrupted")]
    # The same command decides them from the journal written back.
    again = cli("verify", str(j), "--settle", "0", url=srv.url)
    assert again.returncode == 0, again.stderr
    assert json.loads(cli("status", str(j), "--json", url=srv.url).stdout)["done"] == 6


def test_a_journal_removed_with_its_folder_while_a_verify_waits_is_not_said_safe_on_ctrl_c(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The journal's folder removed (`rm -rf`) while a verify waited, then Ctrl-C: nothing
    could be written back, as the verify said, and then "interrupted: nothing is lost. Run
    the same command again to resume: bulkrerun verify ..." with exit 130, a command that
    finds no journal."""
    srv = fake_service("--catalog", "--drop-after-accept", "1")
    folder = tmp_path / "d [prod]"
    folder.mkdir()
    j = _held_journal(cli, srv, folder)
    proc = cli.popen("verify", str(j), "--settle", "600", url=srv.url)
    _wait_for_record(j, "verify_start")
    # Past its reading of the held requests, which opens the journal by its path: a file
    # removed before it ends the verify in a FileNotFoundError (noticed, not mended here).
    time.sleep(0.5)
    shutil.rmtree(folder)
    time.sleep(0.2)  # the verify waits on: nothing it does meanwhile finds the file gone
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    said = " ".join(stderr.split())
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert (
        f"stopped: the journal {j} was removed while this verify wrote it, and what it had "
        "recorded could not be written back"
    ) in said
    assert f"interrupted: the journal {j} is lost (see above)" in said
    assert "nothing is lost" not in said
    assert "Run the same command again" not in said


def test_a_journal_removed_while_a_verify_decides_keeps_its_verdicts_and_says_verify(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """The removal found where the verify commits its verdicts: they were written back, but
    the message spoke of a run ('Nothing more is sent ... to resume')."""
    srv = fake_service("--catalog", "--drop-after-accept", "1")
    j = _held_journal(cli, srv, tmp_path)
    proc = cli.popen("verify", str(j), "--settle", "6", url=srv.url)  # seconds of wait
    _wait_for_record(j, "verify_start")
    j.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    said = " ".join(stderr.split())
    assert f"the journal {j} was removed while this verify wrote it. What it had" in said
    assert "Nothing more is sent" not in said
    status = json.loads(cli("status", str(j), "--json", url=srv.url).stdout)
    assert (status["done"], status["held"]) == (6, 0)  # its verdicts, written back


def test_a_journal_that_cannot_be_written_is_copied_with_its_watch_sidecar(
    cli: Cli, tmp_path: Path
) -> None:
    """The advice to copy an unwritable journal elsewhere left out J.watch, what --watch
    saw: a copy without it shows no final instance status, and its watch starts over."""
    from bulkrerun.journal import Binding, Journal

    url = "http://127.0.0.1:9"
    m = write_manifest(tmp_path / "m.toml", INSTANCES)
    j = tmp_path / "j"
    Journal.open(j, Binding(PROJECT, url), tool_version="t").close()
    (tmp_path / "j.watch").write_text("", encoding="utf-8")
    with _unwritable(j):
        ran = cli("run", str(m), "--journal", "j", url=url)
        verified = cli("verify", "j", url=url)
    assert (ran.returncode, verified.returncode) == (2, 2), ran.stderr
    why = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    said = (
        f"error: cannot write the journal j ({why}); nothing was sent. `bulkrerun status j` "
        "and `bulkrerun report j` can still read it. To go on from it, make it writable (its "
        "permissions, or the disk's mount), or copy it with j.watch (what --watch saw) to a "
        "folder you can write and "
    )
    assert ran.stderr.strip().splitlines()[-1] == (
        said + "give run that path as --journal (it resumes from there)."
    )
    assert verified.stderr.strip().splitlines()[-1] == (
        said + "verify that copy (and run with it as --journal from then on)."
    )


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _on_terminal(cli: Cli, args: list[str], env: dict[str, str], cols: int = 80) -> str:
    """What ``bulkrerun ARGS`` shows on a terminal ``cols`` wide (stdout and stderr both),
    without its colours."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkrerun", *args], stdin=child, stdout=child, stderr=child,
        env={**env, "COLUMNS": str(cols), "TERM": "xterm"}, cwd=cli.cwd,
    )  # fmt: skip
    os.close(child)
    shown = bytearray()
    while True:
        try:
            data = os.read(main, 1 << 16)
        except OSError:  # EIO: the command ended, and its end of the terminal with it
            break
        if not data:
            break
        shown += data
    os.close(main)
    assert proc.wait(60) in (0, 1), shown.decode("utf-8", "replace")
    return _ANSI.sub("", shown.decode("utf-8"))


def test_the_characters_tables_draw_have_ascii_substitutes_as_wide() -> None:
    codecs.register_error("test-ascii", ascii_substitute)
    # An ellipsis, a bar, a rule, a spinner's frame, a dash; a job's Chinese name is data:
    # escaped, as before.
    text = "co\u2026 \u2501\u2501\u2578 \u2502 \u280b \u2014 \u8ba2"
    assert text.encode("ascii", "test-ascii") == b"co+ --- | . - \\u8ba2"


def test_tables_on_a_terminal_that_cannot_encode_utf8_cut_cells_in_ascii(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    """PYTHONIOENCODING=ascii (or LC_ALL=C): a cell cut to its column ended in an escape,
    ``\\u2026``, six columns for the one of the ellipsis: the lines ran past the terminal
    and the columns after it went astray."""
    srv = fake_service("--catalog", "--drop-after-accept", "1")
    j = _held_journal(cli, srv, tmp_path)
    m = str(tmp_path / "m.toml")
    for args in (["plan", m], ["report", str(j)], ["status", str(j)], ["--help"]):
        shown = _on_terminal(cli, args, cli.env(srv.url, PYTHONIOENCODING="ascii"))
        assert shown.isascii(), args
        assert "\\u" not in shown, args
    # (status prints its commands whole, to paste, whatever the width.)
    plan = _on_terminal(cli, ["plan", m], cli.env(srv.url, PYTHONIOENCODING="ascii"))
    report = _on_terminal(cli, ["report", str(j)], cli.env(srv.url, PYTHONIOENCODING="ascii"))
    for shown in (plan, report):
        assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert "+08:+ |" in plan  # the span, cut
    assert report.splitlines()[1].endswith("  co+")  # the message, cut
    # UTF-8 is as it was.
    plan = _on_terminal(cli, ["plan", m], cli.env(srv.url, PYTHONIOENCODING="utf-8"))
    report = _on_terminal(cli, ["report", str(j)], cli.env(srv.url, PYTHONIOENCODING="utf-8"))
    assert "+08:\u2026 \u2502" in plan
    assert report.splitlines()[1].endswith("  co\u2026")
