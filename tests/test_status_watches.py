"""What ``status`` says of the reruns the watches of several runs followed (``run --watch``).

Each watch follows every done unit of the journal again; its run's end record counts what
that watch saw alone. ``status`` counts a unit's reruns as seen to finish when any watch up
to the last one saw them finish (the ``finished`` lines of ``PATH.watch``). The end-to-end
test drives the real command line in a subprocess against the in-process fake service on
loopback, on the system clock.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkrerun.fake import Catalog, FakeConfig, FakeServer
from bulkrerun.watchlog import finished_line, units_seen_finished, watch_path
from tests.conftest import Cli, Service, write_manifest
from tests.test_verify import bulkrerun, cli_env, read_until

pytestmark = pytest.mark.anyio

WS = "62fbba734e634c5087656fc3ff7adf34"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ANCHOR = 1_732_622_400_000  # 2024-11-26T20:00:00+08:00, the demo catalog's "now"
AK, SK = "DEMOAK0000000000", "demo-secret-0123456789"

HEAD = f"""version = 1
[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
timezone = "Asia/Shanghai"
"""


def window(begin: str, end: str) -> str:
    """A window of ods_payments and dwd_payments, one request per hour."""
    return f"""
[[window]]
job_name = "ods_payments"
begin = "{begin}"
end = "{end}"
chunk = "1h"
concurrent = 4
jobs = [{{ job_name = "dwd_payments", workspace_id = "{WS}" }}]
"""


EVENING = window("2024-11-25T18:00:00", "2024-11-25T22:00:00")  # 4 requests
AFTERNOON = window("2024-11-25T14:00:00", "2024-11-25T18:00:00")  # 4 more


def config(*, running_s: float) -> FakeConfig:
    fields: dict[str, Any] = {"rerun_fail_rate": 0.0, "waiting_s": 0.05, "running_s": running_s}
    return FakeConfig(ak=AK, sk=SK, catalog=dataclasses.replace(Catalog.demo(ANCHOR), **fields))


async def evening_watched(cwd: Path) -> tuple[Path, int]:
    """Run 1 of the evening's manifest (``bf.toml``, 4 requests): ``run --journal j --watch``,
    whose watch sees the reruns of all 4 succeed. The manifest, and the port of its service,
    for the next service to take."""
    manifest = cwd / "bf.toml"
    manifest.write_text(HEAD + EVENING, encoding="utf-8")
    async with FakeServer(config(running_s=0.1)) as first:
        code, _, err = await bulkrerun(
            cwd, first.url, "run", str(manifest), "--journal", "j", "--watch"
        )
        assert code == 0, err
        assert "watch: 32 rerun instances: 32 succeeded" in err
        return manifest, first.port


async def watch_stopped_by_ctrl_c(cwd: Path, manifest: Path, url: str) -> tuple[int, str]:
    """``run MANIFEST --journal j --watch`` against ``url``, stopped by Ctrl-C once its watch
    has said how far it is: the exit code and everything it said on stderr."""
    argv = [sys.executable, "-m", "bulkrerun", "run", str(manifest), "--journal", "j", "--watch"]
    seen = bytearray()
    async with await anyio.open_process(argv, cwd=cwd, env=cli_env(url)) as proc:
        assert proc.stderr is not None
        with anyio.fail_after(60):
            await read_until(proc.stderr, b"rerun instances finished", seen)
            assert b"rerun instances finished" in seen, seen.decode()
            proc.send_signal(signal.SIGINT)
            await read_until(proc.stderr, b"\0", seen)
            code = await proc.wait()
    return code, seen.decode()


async def status(cwd: Path, url: str) -> tuple[dict[str, Any], str]:
    code, out, err = await bulkrerun(cwd, url, "status", "j", "--json")
    assert code == 0, err
    code, text, err = await bulkrerun(cwd, url, "status", "j")
    assert code == 0, err
    return json.loads(out), " ".join(text.split())


async def test_a_watch_stopped_early_leaves_unseen_only_what_no_watch_saw_finish(
    tmp_path: Path,
) -> None:
    # Run 1 sends the evening's 4 requests and its watch sees all their reruns succeed.
    manifest, port = await evening_watched(tmp_path)
    # The manifest grows by the afternoon. Run 2, at the same endpoint, sends its 4 requests;
    # their reruns run for hours, and this service does not list the evening's reruns (it
    # shows their previous runs), as a list slow to show them would: run 2's watch has seen
    # none of the 8 units finish when Ctrl-C stops it.
    manifest.write_text(HEAD + AFTERNOON + EVENING, encoding="utf-8")
    async with FakeServer(config(running_s=36_000.0), port=port) as second:
        code, stderr = await watch_stopped_by_ctrl_c(tmp_path, manifest, second.url)
        assert code == 130, stderr
        assert len(second.ledger) == 4
        url = second.url
        got, text = await status(tmp_path, url)
        run_end = " ".join(stderr.split())
    # Run 2's end record keeps what its own watch saw: none of the 8 units finish.
    last = got["last_watch"]
    assert (last["run"], last["units"], last["unfinished"], last["stopped"]) == (2, 8, 8, "SIGINT")
    # But run 1's watch saw the evening's 4 finish: only the afternoon's are unseen (it said 8).
    assert got["watch_unfinished"] == 4
    step = (
        "the reruns of 4 done units were not seen to finish: run 2's watch was stopped by "
        f"SIGINT before they did; it saw 0 of {last['instances']} rerun instances finish; "
        "earlier watches saw the reruns of 4 other units finish. They stand (the service "
        "accepted them); to follow them again, which sends nothing: bulkrerun run "
        f"{manifest} --journal j --watch"
    )
    assert got["next_steps"] == [step]
    assert step in text
    assert step in run_end  # the run's own closing status says the same
    # Run 1's watch said which 4 units it saw finish; run 2's saw none.
    sidecar = watch_path(tmp_path / "j")
    lines = sidecar.read_text(encoding="utf-8").splitlines(keepends=True)
    said = [json.loads(x) for x in lines if '"t":"finished"' in x]
    assert sorted(x["run"] for x in said) == [1, 1, 1, 1]

    # A sidecar from before the watches said which units they saw finish: the last watch's
    # own count stands, as it did.
    sidecar.write_text("".join(x for x in lines if '"t":"finished"' not in x), encoding="utf-8")
    async with FakeServer(config(running_s=0.1), port=port):
        got, _ = await status(tmp_path, url)
    assert got["watch_unfinished"] == 8
    assert "earlier watches" not in got["next_steps"][0]


def test_units_seen_finished_counts_each_unit_once_up_to_the_run_asked(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    a, b, c, d = (f"{n:032x}" for n in (0xA1, 0xB2, 0xC3, 0xD4))
    odd = "not-a-planner-id"
    ours, old = 1_796_500_000.123, 1_796_400_000.5  # the created of this journal, of one before
    watch_path(journal).write_text(
        "".join(
            line + "\n"
            for line in [
                finished_line(d, 1, old, 5.0),  # of a journal removed before this one began
                finished_line(a, 1, ours, 10.0),
                '{"t":"instance","unit":"' + b + '"}',  # an instance's line: not a unit's
                finished_line(a, 2, ours, 20.0),  # seen again by a later watch: still one unit
                # Written otherwise: the same.
                '{"run":2,"unit":"' + a + '","t":"finished","journal":1796500000.123}',
                '{"run":2,"unit":"' + d + '","t":"finished","journal":1796400000.5}',
                '{"run":2,"unit":"' + d + '","t":"finished"}',  # of no journal it names
                finished_line(b, 2, ours, 20.0),
                finished_line(odd, 2, ours, 20.0),
                finished_line(odd, 2, old, 20.0),
                finished_line(a.upper(), 2, ours, 20.0),  # not the planner's spelling: another id
                finished_line(c, 3, ours, 30.0),  # a watch after the one asked about
                '{"t":"finished","unit":"' + c + '","run":"2"}',  # not as written: skipped
                '{"t":"finished","unit":"' + c,  # torn
            ]
        ),
        encoding="utf-8",
    )
    assert units_seen_finished(journal, 1, ours) == 1
    assert units_seen_finished(journal, 2, ours) == 4
    assert units_seen_finished(journal, 3, ours) == 5
    assert units_seen_finished(journal, 3, 1_796_500_000.1234) == 5  # as the live header has it
    assert units_seen_finished(journal, 3, old) == 2
    assert units_seen_finished(tmp_path / "other", 3, ours) == 0


async def test_a_watch_of_a_journal_begun_again_at_the_same_path_is_not_credited_the_old_ones(
    tmp_path: Path,
) -> None:
    """A journal removed and begun again at its path, with the same manifest: the new
    journal's units have the ids of the old one's, and its runs the same numbers, and the
    sidecar goes on from the old journal's lines. Its watch, stopped before it saw any rerun
    finish, has not seen them finish: the old journal's watch saw other reruns."""
    # Run 1 sends the evening's 4 requests and its watch sees all their reruns succeed.
    manifest, port = await evening_watched(tmp_path)
    (tmp_path / "j").unlink()  # the sidecar stays: nothing removes it with its journal
    async with FakeServer(config(running_s=36_000.0), port=port) as second:
        code, stderr = await watch_stopped_by_ctrl_c(tmp_path, manifest, second.url)
        assert code == 130, stderr
        assert len(second.ledger) == 4
        got, text = await status(tmp_path, second.url)
    last = got["last_watch"]
    assert (last["run"], last["units"], last["unfinished"], last["stopped"]) == (1, 4, 4, "SIGINT")
    assert got["watch_unfinished"] == 4  # was 0: the old journal's run 1 saw them finish
    follow = (
        "the reruns of 4 done units were not seen to finish: run 1's watch was stopped by "
        "SIGINT before they did"
    )
    assert follow in text
    assert "earlier watches" not in text


def test_a_manifest_of_what_failed_comments_its_times_in_the_entrys_timezone(
    tmp_path: Path, cli: Cli, fake_service: Callable[..., Service]
) -> None:
    # The first hours of 26 November in Shanghai, of a job the service does not know: both
    # requests fail. The manifest of what failed commented them as the 25th in UTC
    # ("2024-11-25T16:00:00.000Z"), where every other form of the report shows the 26th.
    m = write_manifest(
        tmp_path / "bf.toml",
        '[[window]]\njob_name = "gone_job"\nbegin = "2024-11-26T00:00:00"\n'
        'end = "2024-11-26T02:00:00"\nchunk = "1h"\n',
    )
    svc = fake_service("--missing-job", "gone_job")
    done = cli("run", str(m), "--journal", "j", url=svc.url)
    assert done.returncode == 1, done.stderr
    report = cli("report", "j", "--format", "csv", url=svc.url)
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert [r["begin_local"] for r in rows] == [
        "2024-11-26T00:00:00.000+08:00",
        "2024-11-26T01:00:00.000+08:00",
    ]
    written = cli("report", "j", "--format", "manifest", url=svc.url)
    assert written.returncode == 0, written.stderr
    text = written.stdout
    assert "begin = 1732550400000  # 2024-11-26T00:00:00.000+08:00" in text
    assert "end = 1732554000000  # 2024-11-26T01:00:00.000+08:00" in text
    assert "begin = 1732554000000  # 2024-11-26T01:00:00.000+08:00" in text
    assert "Z\n" not in text
    # The entries keep the timezone, so that plan (and the report of a run of it) shows the
    # same times again; and they are the very requests that failed.
    assert text.count('timezone = "Asia/Shanghai"') == 2
    again = tmp_path / "again.toml"
    again.write_text(text, encoding="utf-8")
    first = cli("plan", str(m), "--json", url=svc.url)
    second = cli("plan", str(again), "--json", url=svc.url)
    assert second.returncode == 0, second.stderr
    ids = [json.loads(line)["id"] for line in first.stdout.splitlines()]
    assert [json.loads(line)["id"] for line in second.stdout.splitlines()] == ids
    shown = cli("plan", str(again), url=svc.url)
    assert "2024-11-26 00:00:00.000+08:00" in shown.stdout, shown.stdout


async def test_a_journal_begun_again_at_the_same_path_is_not_shown_the_old_watchs_statuses(
    tmp_path: Path,
) -> None:
    """A journal removed and begun again at its path, with the same manifest: the old
    journal's watch saw every rerun fail, the new journal's run has no watch. The sidecar's
    instance lines of the old watch are not the new journal's: ``report`` and ``status``
    show no final status for its units."""
    manifest = tmp_path / "bf.toml"
    manifest.write_text(HEAD + EVENING, encoding="utf-8")
    failing = FakeConfig(
        ak=AK,
        sk=SK,
        catalog=dataclasses.replace(
            Catalog.demo(ANCHOR), rerun_fail_rate=1.0, waiting_s=0.05, running_s=0.1
        ),
    )
    async with FakeServer(failing) as server:
        code, _, err = await bulkrerun(
            tmp_path, server.url, "run", str(manifest), "--journal", "j", "--watch"
        )
        assert code == 0, err
        assert "watch: 32 rerun instances: 0 succeeded, 32 failed" in err
        (tmp_path / "j").unlink()  # the sidecar stays: nothing removes it with its journal
        code, _, err = await bulkrerun(tmp_path, server.url, "run", str(manifest), "--journal", "j")
        assert code == 0, err
        assert "the watch saw end failed" not in err  # the run's closing status
        got, text = await status(tmp_path, server.url)
        code, out, err = await bulkrerun(tmp_path, server.url, "report", "j", "--format", "json")
        assert code == 0, err
        code, table, err = await bulkrerun(tmp_path, server.url, "report", "j")
        assert code == 0, err
    assert len(server.ledger) == 8
    assert got["last_watch"] is None
    assert "the watch saw end failed" not in text  # was: "see which 32 rerun instances ..."
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    assert [(r["instance_status"], r["failed_instances"]) for r in rows] == [(None, None)] * 4
    assert "the watch saw end failed" not in table

    # Written before instance lines named their journal: read as they were, whatever the
    # journal.
    sidecar = watch_path(tmp_path / "j")
    lines = sidecar.read_text(encoding="utf-8").splitlines(keepends=True)
    old = [json.loads(x) for x in lines if '"t":"instance"' in x]
    assert len(old) == 32 and len({x["journal"] for x in old}) == 1
    sidecar.write_text(
        "".join(json.dumps({k: v for k, v in x.items() if k != "journal"}) + "\n" for x in old),
        encoding="utf-8",
    )
    async with FakeServer(failing) as server:
        _, text = await status(tmp_path, server.url)
    assert "see which 32 rerun instances the watch saw end failed" in text
