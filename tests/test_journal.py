"""The journal: durability before send, group commit, replay semantics, crash tolerance."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import heapq
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bulkrerun.journal as journal_module
from bulkrerun.chunk import Chunk, canonical_json, chunk_id, instance_unit_id
from bulkrerun.errors import BadInput, Fatal, JournalCorrupt, JournalMismatch
from bulkrerun.journal import (
    LATEST_SETTLED,
    Binding,
    Holder,
    Journal,
    RunEnd,
    RunInfo,
    UnitState,
    VerifyEnd,
    held_by,
    read_records_at,
    read_state,
)
from bulkrerun.outcome import DONE, Kind, Outcome

BINDING = Binding("62099355b894428e8916573ae635f1f9", "https://dayu.cn-north-4.myhuaweicloud.com")
WS = "62fbba734e634c5087656fc3ff7adf34"
WALL = 1_732_600_000.0

FAILED = Outcome(Kind.FAILED, 400, "DLF.1000", "Failed to find the job.", "req-1", reason="400")
HELD = Outcome(Kind.HELD, reason="timeout after send", elapsed=30.0)
THROTTLED = Outcome(Kind.RETRY, 429, "APIG.0308", "throttled", "req-2", retry_after=2.0)
REFUSED = Outcome(Kind.FATAL, 401, "APIG.0301", "Incorrect IAM authentication information")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def window(i: int, job: str = "ods_orders", entry: str = "window[0]") -> Chunk:
    begin = 1_732_608_000_000 + i * 3_600_000
    body = canonical_json(
        {
            "begin_time": begin,
            "concurrent": 2,
            "end_time": begin + 3_599_999,
            "ignore_obs_monitor": True,
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
        }
    )
    cid = chunk_id(job, WS, body)
    return Chunk(cid, "window", entry, job, WS, body, (cid,))


def batch(job_ids: list[int], job: str = "ods_payments", entry: str = "instances[0]") -> Chunk:
    items = [
        {"job_id": j, "plan_time": 1_732_601_580_000, "submit_time": 1_732_239_754_684}
        for j in job_ids
    ]
    body = canonical_json(
        {
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
            "task_retrys": items,
        }
    )
    units = tuple(
        instance_unit_id(job, it["job_id"], it["plan_time"], it["submit_time"]) for it in items
    )
    return Chunk(chunk_id(job, WS, body), "instances", entry, job, WS, body, units)


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
def journal(jpath: Path) -> Iterator[Journal]:
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    yield j
    j.close()


# -- creating and opening -----------------------------------------------------------------


def test_new_journal_is_private_and_starts_with_its_binding(journal: Journal, jpath: Path) -> None:
    assert stat.S_IMODE(jpath.stat().st_mode) == 0o600
    (header,) = lines(jpath)
    assert header["t"] == "header"
    assert header["format"] == 1
    assert header["project_id"] == BINDING.project_id
    assert header["endpoint"] == BINDING.endpoint
    assert header["tool_version"] == "0.1.0"
    assert journal.header.binding == BINDING


def test_journal_of_another_project_or_endpoint_is_refused(jpath: Path) -> None:
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    for other in (
        Binding("0" * 32, BINDING.endpoint),
        Binding(BINDING.project_id, "http://127.0.0.1:8080"),
    ):
        with pytest.raises(JournalMismatch) as err:
            Journal.open(jpath, other, tool_version="0.1.0")
        message = str(err.value)
        assert str(jpath) in message
        assert BINDING.project_id in message
        assert BINDING.endpoint in message
        assert "another --journal path" in message
        assert err.value.exit_code == 2
        # A verification is told to use the journal's own project and endpoint instead.
        with pytest.raises(JournalMismatch) as err:
            Journal.open(jpath, other, tool_version="0.1.0", create=False)
        assert "verify it with the project and endpoint it was run with" in str(err.value)
        assert "--journal" not in str(err.value)


@pytest.mark.anyio
async def test_a_journal_nothing_was_acted_on_through_may_go_says_the_refusal(
    jpath: Path,
) -> None:
    """A run stopped at an endpoint that was never reached binds its journal to it: the
    refusal at the right endpoint says that nothing is lost without it, until a request
    recorded in it is done, failed or held."""
    other = Binding(BINDING.project_id, "http://127.0.0.1:8080")
    c = window(0)
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(c, 1, 1.0)
        j.outcome(c, 1, Outcome(Kind.RETRY, reason="connect error"), 2.0, "pending")
    with pytest.raises(JournalMismatch, match="nothing is lost without it: remove it, or"):
        Journal.open(jpath, other, tool_version="0.1.0")
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(c, 2, 3.0)
        j.outcome(c, 2, Outcome(Kind.FAILED, 400, "DLF.1000", reason="400"), 4.0, "failed")
    with pytest.raises(JournalMismatch) as err:
        Journal.open(jpath, other, tool_version="0.1.0")
    assert "nothing is lost" not in str(err.value)
    assert str(err.value).endswith("give this run another --journal path.")


@pytest.mark.anyio
async def test_an_attempt_knows_whether_it_resends_held_units(jpath: Path) -> None:
    held, fresh = window(0), window(1)
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(held, 1, 1.0)  # no outcome: the run was killed, the unit is held
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        assert not j.was_held(held)  # no attempt of it open
        await j.intend(held, 2, 2.0)
        await j.intend(fresh, 1, 2.0)
        assert j.was_held(held) and not j.was_held(fresh)
        throttled = Outcome(Kind.RETRY, 429, "APIG.0308", reason="throttled")
        j.outcome(held, 2, throttled, 3.0, "retry")  # not acted on: held, as before
        assert j.state().units[held.id] is UnitState.HELD
        await j.intend(held, 3, 4.0)
        assert j.was_held(held)
    # A batch formed around a held unit on resume holds units never sent, or failed: a
    # resend not acted on leaves each as it was.
    one, two, three = batch([1]), batch([2]), batch([1, 2, 3])
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(one, 1, 5.0)  # held
        await j.intend(two, 1, 5.0)
        j.outcome(two, 1, Outcome(Kind.FAILED, 400, "DLF.1001", reason="400"), 6.0, "failed")
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(three, 1, 7.0)
        assert j.was_held(three)
        j.outcome(three, 1, Outcome(Kind.RETRY, 429, "APIG.0308", reason="429"), 8.0, "pending")
        units = j.state().units
        assert [units.get(u) for u in three.units] == [UnitState.HELD, UnitState.FAILED, None]
        assert j.held_units(three) == 1  # the engine counts it held again, not unsent


def test_an_empty_file_made_beforehand_becomes_a_private_journal(jpath: Path) -> None:
    jpath.touch(mode=0o644)
    jpath.chmod(0o644)
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    assert stat.S_IMODE(jpath.stat().st_mode) == 0o600
    assert lines(jpath)[0]["t"] == "header"


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(jpath: Path) -> None:
    for text in (b'version = 1\n[defaults]\nworkspace = "x"\n', b"hello", b'{"t":"run"}\n'):
        jpath.write_bytes(text)
        with pytest.raises(JournalMismatch, match="not a bulkrerun journal"):
            Journal.open(jpath, BINDING, tool_version="0.1.0")
        assert jpath.read_bytes() == text


def test_a_journal_of_a_newer_format_is_refused(jpath: Path) -> None:
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    data = jpath.read_bytes().replace(b'"format":1', b'"format":9')
    # Re-seal the header so that only the format is in question, not the checksum.
    body = data.split(b',"crc":', 1)[0]
    import zlib

    jpath.write_bytes(body + b',"crc":"%08x"}\n' % zlib.crc32(body))
    with pytest.raises(JournalMismatch, match="format 9"):
        Journal.open(jpath, BINDING, tool_version="0.1.0")


def test_an_empty_file_or_a_torn_header_is_started_afresh(jpath: Path) -> None:
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    header = jpath.read_bytes()
    for leftover in (b"", header[:1], header[:20], header[:-1], b"\x00" * 40):
        jpath.write_bytes(leftover)
        Journal.open(jpath, BINDING, tool_version="0.1.0").close()
        assert lines(jpath)[0]["project_id"] == BINDING.project_id


def test_only_a_journal_created_by_this_open_and_left_unused_is_discarded(jpath: Path) -> None:
    assert Journal.open(jpath, BINDING, tool_version="0.1.0").discard_if_unused()
    assert not jpath.exists()
    # Created, and a run recorded in it: kept.
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.begin_run(RunInfo("m.toml", "version = 1\n", "0" * 64))
    assert not j.discard_if_unused()
    assert j.closed and len(lines(jpath)) == 2
    # Opened, not created, even with nothing beyond its header: kept (it is not this run's).
    jpath.unlink()
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    assert not Journal.open(jpath, BINDING, tool_version="0.1.0").discard_if_unused()
    assert len(lines(jpath)) == 1


def test_who_holds_a_journal_is_read_without_taking_its_lock(
    jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert held_by(jpath) is None  # no journal there
    with Journal.open(jpath, BINDING, tool_version="0.1.0"):
        locks: list[int] = []
        real = fcntl.flock
        monkeypatch.setattr(fcntl, "flock", lambda fd, op: locks.append(op) or real(fd, op))
        assert held_by(jpath) == Holder(os.getpid())
        assert locks == []  # read from /proc/locks: a run opening it meanwhile is not refused
        monkeypatch.undo()
    assert held_by(jpath) is None
    # Where /proc/locks cannot be read: a shared lock is tried, and the pid is not known.
    monkeypatch.setattr(journal_module, "_flock_pids", lambda fd: None)
    with Journal.open(jpath, BINDING, tool_version="0.1.0"):
        assert held_by(jpath) == Holder(None)
    assert held_by(jpath) is None


def test_a_file_a_crash_left_empty_is_not_this_runs_to_discard(jpath: Path) -> None:
    jpath.write_bytes(b"")  # e.g. --journal "$(mktemp)": there before this run
    assert not Journal.open(jpath, BINDING, tool_version="0.1.0").discard_if_unused()
    assert len(lines(jpath)) == 1


def test_a_journal_removed_between_open_and_lock_is_opened_afresh(
    jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run A created the journal; run B opens the path; A records nothing and removes it; B
    # then gets the lock on a file no longer there. B must not journal into that.
    first = Journal.open(jpath, BINDING, tool_version="0.1.0")
    real = journal_module._open_file
    calls = 0

    def racing(path: Path, create: bool) -> tuple[int, bool]:
        nonlocal calls
        calls += 1
        opened = real(path, create)
        if calls == 1:
            assert first.discard_if_unused()  # A leaves between B's open and B's lock
        return opened

    monkeypatch.setattr(journal_module, "_open_file", racing)
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as second:
        assert calls == 2
        assert os.fstat(second._fd or -1).st_ino == jpath.stat().st_ino
    assert len(lines(jpath)) == 1


def test_opening_only_what_is_there_refuses_a_missing_journal(jpath: Path) -> None:
    with pytest.raises(BadInput, match=f"no journal at {re.escape(str(jpath))}"):
        Journal.open(jpath, BINDING, tool_version="0.1.0", create=False)
    assert not jpath.exists()
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()
    Journal.open(jpath, BINDING, tool_version="0.1.0", create=False).close()


def test_a_second_opener_is_refused_while_the_first_holds_the_journal(
    journal: Journal, jpath: Path
) -> None:
    with pytest.raises(BadInput, match="in use by another bulkrerun") as err:
        Journal.open(jpath, BINDING, tool_version="0.1.0")
    if sys.platform == "linux":  # the holder's pid comes from /proc/locks
        assert f"(pid {os.getpid()})" in str(err.value)
    assert "give this run another --journal path" in str(err.value)
    with pytest.raises(BadInput, match="in use by another bulkrerun") as err:
        Journal.open(jpath, BINDING, tool_version="0.1.0", create=False)  # a verify
    assert "--journal" not in str(err.value)
    journal.close()
    Journal.open(jpath, BINDING, tool_version="0.1.0").close()


def test_a_directory_or_a_missing_parent_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a directory"):
        Journal.open(tmp_path, BINDING, tool_version="0.1.0")
    with pytest.raises(BadInput, match="cannot create"):
        Journal.open(tmp_path / "missing" / "j", BINDING, tool_version="0.1.0")
    with pytest.raises(BadInput, match="no journal"):
        read_state(tmp_path / "nothing")


# -- durability and group commit -----------------------------------------------------------
#
# The fsyncs happen in the journal's sync helper process. A disk that does not answer is
# that helper stopped with SIGSTOP: the requests it has not answered stay unanswered until
# SIGCONT, exactly as if its fdatasync were blocked.


@contextlib.contextmanager
def stalled_disk(journal: Journal) -> Iterator[Callable[[], None]]:
    """Stop the journal's sync helper (starting it first); yields a function that lets it go
    on (called on exit at the latest). Call from a running event loop."""
    pid = journal._ensure_helper().pid
    os.kill(pid, signal.SIGSTOP)
    stopped = True

    def release() -> None:
        nonlocal stopped
        if stopped:
            os.kill(pid, signal.SIGCONT)
            stopped = False

    try:
        yield release
    finally:
        with contextlib.suppress(ProcessLookupError):  # close() may have ended it
            release()


def answered_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every size the sync helpers answer from now on (what they made durable), in order."""
    sizes: list[int] = []
    real = journal_module._SyncHelper.answers

    def answers(self: journal_module._SyncHelper) -> list[bytes] | None:
        got = real(self)
        sizes.extend(int(a) for a in got or () if a.isdigit())
        return got

    monkeypatch.setattr(journal_module._SyncHelper, "answers", answers)
    return sizes


@pytest.mark.anyio
async def test_intent_is_durable_before_intend_returns(
    journal: Journal, jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = answered_sizes(monkeypatch)
    chunk = window(0)
    await journal.intend(chunk, 1, WALL)
    # Another handle sees the record, and the helper's fdatasync covered it before intend
    # returned.
    with open(jpath, "rb") as other:  # noqa: ASYNC230 - the point is to read it at once
        data = other.read()
    assert json.loads(data.splitlines()[-1])["chunk"] == chunk.id
    assert synced
    assert synced[-1] == len(data)


def test_the_sync_helper_answers_the_size_it_made_durable(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"header\n")
    helper = journal_module._SyncHelper(path)
    try:
        with path.open("ab") as f:
            f.write(b"x" * 5000)
        helper.request()
        answers: list[bytes] | None = []
        deadline = time.monotonic() + 10
        while answers == [] and time.monotonic() < deadline:
            time.sleep(0.001)
            answers = helper.answers()
        assert answers == [b"5007"]  # everything written before the request
    finally:
        helper.close()
    # close() ends it at once: no process is left behind.
    with pytest.raises(ProcessLookupError):
        os.kill(helper.pid, 0)


def test_the_sync_helper_fdatasyncs_and_answers_the_error_it_meets() -> None:
    # fdatasync of /dev/null fails with EINVAL: the answer is that error, not a size, so the
    # helper did ask the kernel (a helper that answered sizes without syncing would pass
    # every test that only reads the file back). Read from its pipe as it wrote it.
    helper = journal_module._SyncHelper(Path(os.devnull))
    try:
        helper.request()
        readable, _, _ = select.select([helper.rep], [], [], 10)
        assert readable, "the helper did not answer"
        assert os.read(helper.rep, 4096) == b"E%d\n" % errno.EINVAL
    finally:
        helper.close()


def test_the_error_a_helper_answers_before_it_ends_is_read() -> None:
    helper = journal_module._SyncHelper(Path(os.devnull))
    try:
        helper.request()
        helper._proc.wait(10)  # it answered E22 and ended
        assert helper.answers() == [b"E%d" % errno.EINVAL]
    finally:
        helper.close()


@pytest.mark.anyio
async def test_a_sync_the_disk_refuses_stops_the_journal_with_its_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper's error answer is the journal's error: the intent is not durable, so it
    # must not return as if it were, and the operator is told what the disk said.
    def answers(self: journal_module._SyncHelper) -> list[bytes] | None:
        return [b"E%d" % errno.EIO]

    monkeypatch.setattr(journal_module._SyncHelper, "answers", answers)
    with anyio.fail_after(10), pytest.raises(Fatal, match="Input/output error") as err:
        await journal.intend(window(0), 1, WALL)
    assert err.value.exit_code == 3
    with pytest.raises(Fatal, match="Input/output error"):
        await journal.intend(window(1), 1, WALL)


@pytest.mark.anyio
async def test_a_helper_that_ends_after_its_error_answer_leaves_the_error_said(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real helper on a file the disk cannot sync (/dev/null: EINVAL) answers the error and
    # ends; its end must not replace the disk's error with "ended unexpectedly".
    real = journal_module._SyncHelper
    monkeypatch.setattr(journal_module, "_SyncHelper", lambda _path: real(Path(os.devnull)))
    with anyio.fail_after(10), pytest.raises(Fatal, match="Invalid argument") as err:
        await journal.intend(window(0), 1, WALL)
    assert "ended unexpectedly" not in str(err.value)
    await anyio.sleep(0.2)  # the helper's end is read by now
    with pytest.raises(Fatal, match="Invalid argument"):
        await journal.intend(window(1), 1, WALL)


@pytest.mark.anyio
async def test_an_intent_waits_for_a_sync_that_covers_it_not_for_any_answer(
    journal: Journal, jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper answers the size it read before its fdatasync. A record written after that
    # read is not durable yet, however much the journal has written: here the first answer
    # is one the helper read before the intent reached the file.
    before = os.stat(jpath).st_size
    real = journal_module._SyncHelper.answers
    answered: list[bytes] = []

    def answers(self: journal_module._SyncHelper) -> list[bytes] | None:
        got = real(self)
        if got and not answered:
            got = [b"%d" % before]
        answered.extend(got or ())
        return got

    monkeypatch.setattr(journal_module._SyncHelper, "answers", answers)
    with anyio.fail_after(10):
        await journal.intend(window(0), 1, WALL)
    # Not on the first answer: on a second sync, which covered the intent.
    assert [int(a) for a in answered] == [before, os.stat(jpath).st_size]


@pytest.mark.anyio
async def test_concurrent_intents_share_fsyncs(
    journal: Journal, jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = 0
    real = journal_module._SyncHelper.request

    def request(self: journal_module._SyncHelper) -> None:
        nonlocal requests
        requests += 1
        real(self)

    monkeypatch.setattr(journal_module._SyncHelper, "request", request)
    chunks = [window(i) for i in range(200)]

    async def send(chunk: Chunk) -> None:
        await journal.intend(chunk, 1, WALL)
        journal.outcome(chunk, 1, DONE, WALL + 1, "done")

    async with anyio.create_task_group() as tg:
        for chunk in chunks:
            tg.start_soon(send, chunk)
    await journal.flush()
    assert requests <= 5  # one for the first caller, one for everyone who came meanwhile, ...
    records = lines(jpath)[1:]
    assert len(records) == 400
    assert {r["chunk"] for r in records if r["t"] == "intent"} == {c.id for c in chunks}


@pytest.mark.anyio
async def test_the_event_loop_runs_while_a_commit_waits_for_the_disk(journal: Journal) -> None:
    returned = False

    async def send() -> None:
        nonlocal returned
        await journal.intend(window(0), 1, WALL)
        returned = True

    with stalled_disk(journal) as release:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            ticks = 0
            for _ in range(50):  # the loop keeps running other tasks while the disk is stuck
                await anyio.lowlevel.checkpoint()
                ticks += 1
            await anyio.sleep(0.05)  # many commit intervals: still nothing comes back
            assert ticks == 50
            assert not returned
            release()
    assert returned


@pytest.mark.anyio
async def test_a_cancelled_intent_is_recorded_as_not_sent(journal: Journal, jpath: Path) -> None:
    first, second = window(0), window(1)
    sent: list[str] = []

    async def send(chunk: Chunk) -> None:
        await journal.intend(chunk, 1, WALL)
        sent.append(chunk.id)

    with stalled_disk(journal) as release:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, first)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(send, second)  # waits for the next commit, behind the first
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
            release()
    journal.close()
    _, state = read_state(jpath)
    # Neither request left; the journal says so instead of calling them held.
    assert sent == []
    assert state.units == {}
    assert {state.chunks[c.id].state for c in (first, second)} == {"pending"}


@pytest.mark.anyio
async def test_outcomes_are_buffered_until_the_next_commit(journal: Journal, jpath: Path) -> None:
    chunk = window(0)
    await journal.intend(chunk, 1, WALL)
    journal.outcome(chunk, 1, DONE, WALL + 1, "done")
    assert [r["t"] for r in lines(jpath)] == ["header", "intent"]
    await journal.flush()
    assert [r["t"] for r in lines(jpath)] == ["header", "intent", "outcome"]


@pytest.mark.anyio
async def test_close_writes_everything_even_during_a_commit(jpath: Path) -> None:
    journal = Journal.open(jpath, BINDING, tool_version="0.1.0")
    chunks = [window(i) for i in range(3)]

    async def send(chunk: Chunk) -> None:
        await journal.intend(chunk, 1, WALL)

    with stalled_disk(journal):
        async with anyio.create_task_group() as tg:
            for chunk in chunks:
                tg.start_soon(send, chunk)
            while not journal._syncing:  # the commit is under way, the disk stuck in it
                await anyio.lowlevel.checkpoint()
            journal.outcome(chunks[0], 1, DONE, WALL, "done")  # not yet durable either
            journal.close()  # does not wait for the stuck helper: it syncs itself
            journal.close()  # idempotent
    kinds = [(r["t"], r["chunk"]) for r in lines(jpath)[1:]]
    assert kinds[:3] == [("intent", c.id) for c in chunks]
    assert kinds[3] == ("outcome", chunks[0].id)
    with pytest.raises(RuntimeError, match="closed"):
        await journal.intend(window(9), 1, WALL)


@pytest.mark.anyio
async def test_a_write_failure_stops_everything_with_a_fatal_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(Fatal, match="No space left on device") as err:
        await journal.intend(window(0), 1, WALL)
    assert err.value.exit_code == 3
    assert "run the same command again" in str(err.value)
    with pytest.raises(Fatal):
        await journal.intend(window(1), 1, WALL)
    journal.close()  # does not raise again, releases the lock


@pytest.mark.anyio
async def test_every_waiting_caller_gets_the_fatal_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    failed: list[str] = []

    async def send(chunk: Chunk) -> None:
        with pytest.raises(Fatal, match="No space left on device"):
            await journal.intend(chunk, 1, WALL)
        failed.append(chunk.id)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(send, window(i))
    assert len(failed) == 10


@pytest.mark.anyio
async def test_a_cancelled_caller_stops_at_once_and_the_others_still_wait(
    journal: Journal,
) -> None:
    first, second = window(0), window(1)
    returned: list[str] = []
    scope = anyio.CancelScope()
    second_ended = anyio.Event()

    async def send(chunk: Chunk) -> None:
        await journal.intend(chunk, 1, WALL)
        returned.append(chunk.id)

    async def send_cancellable() -> None:
        try:
            with scope:
                await send(second)
        finally:
            second_ended.set()

    with stalled_disk(journal) as release:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, first)
            tg.start_soon(send_cancellable)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            scope.cancel()
            # The disk is still stuck: the cancellation does not wait for it.
            with anyio.fail_after(5):
                await second_ended.wait()
            assert returned == []
            assert journal.state().chunks[second.id].state == "pending"
            release()
    assert returned == [first.id]
    assert journal.state().chunks[first.id].state is None  # sent, no outcome yet


@pytest.mark.anyio
async def test_one_sync_helper_serves_every_commit(journal: Journal) -> None:
    helpers = set()
    for i in range(4):  # one after the other: one commit each
        await journal.intend(window(i), 1, WALL)
        helpers.add(journal._helper)
    (helper,) = helpers
    assert helper is not None
    assert helper.pid != os.getpid()


@pytest.mark.anyio
async def test_a_helper_that_dies_stops_the_journal_with_a_fatal_error(journal: Journal) -> None:
    with stalled_disk(journal):
        assert journal._helper is not None
        os.kill(journal._helper.pid, signal.SIGKILL)
        with anyio.fail_after(5), pytest.raises(Fatal, match="sync helper process ended"):
            await journal.intend(window(0), 1, WALL)
    # The dead helper's pipe, readable for ever at its end, is no longer listened to: the
    # loop would otherwise call the journal back on every turn until close().
    assert journal._helper is not None
    assert not asyncio.get_running_loop().remove_reader(journal._helper.rep)


@pytest.mark.anyio
async def test_a_helper_found_dead_when_asked_to_sync_is_told_as_a_dead_helper(
    journal: Journal,
) -> None:
    # The order the other test leaves to chance: the request meets the closed pipe (EPIPE)
    # before the loop reads the end of the answers. Told as a disk to mend, it misled.
    helper = journal._ensure_helper()
    os.kill(helper.pid, signal.SIGKILL)
    helper._proc.wait()
    asyncio.get_running_loop().remove_reader(helper.rep)  # the end of answers not read yet
    with anyio.fail_after(5), pytest.raises(Fatal, match="sync helper process ended") as raised:
        await journal.intend(window(0), 1, WALL)
    assert "disk space" not in str(raised.value)


@pytest.mark.anyio
async def test_without_a_sync_helper_the_loop_syncs_each_intent_before_it_returns(
    journal: Journal, jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[object] = []

    def no_process(*args: object, **kwargs: object) -> None:
        starts.append(args)
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    synced: list[int] = []  # the file's size at each fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        os.fsync(fd)

    monkeypatch.setattr(journal_module.subprocess, "Popen", no_process)
    monkeypatch.setattr(journal_module, "_fdatasync", fdatasync)
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(3):
        await journal.intend(window(i), 1, WALL)
        # Returned: an fdatasync on the loop covered the whole file, this intent included.
        assert synced and synced[-1] == os.stat(jpath).st_size
        assert window(i).id in read_state(jpath)[1].chunks
    async with anyio.create_task_group() as tg:  # concurrent intents share the syncs
        for i in range(3, 13):
            tg.start_soon(journal.intend, window(i), 1, WALL)
    assert len(synced) < 3 + 10
    assert len(starts) == 1  # tried once, not on every commit
    assert len(os.listdir("/proc/self/fd")) == fds  # the pipes and descriptor were closed
    assert journal.sync_fallback is not None
    assert "sync helper process could not start (Resource temporarily unavailable)" in (
        journal.sync_fallback
    )


HOLDS_A_HELPER = """
import sys, anyio
from pathlib import Path
from bulkrerun.journal import Binding, Journal
from tests.test_journal import BINDING, WALL, window

async def main():
    journal = Journal.open(Path(sys.argv[1]), BINDING, tool_version="0.1.0")
    await journal.intend(window(0), 1, WALL)
    print(journal._helper.pid, flush=True)
    await anyio.sleep(60)

anyio.run(main)
"""


@pytest.mark.timeout(60)
def test_a_killed_runs_helper_never_holds_the_journal_locked(jpath: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDS_A_HELPER, str(jpath)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None
    helper_pid = int(proc.stdout.readline())
    try:
        os.kill(helper_pid, signal.SIGSTOP)  # it cannot even notice that the run died
        proc.kill()  # kill -9 of the run
        proc.wait(10)
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as again:
            assert again.state().units == {window(0).id: UnitState.HELD}
    finally:
        proc.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper_pid, signal.SIGKILL)


def test_a_journal_serves_one_event_loop_after_another(jpath: Path) -> None:
    async def send(journal: Journal, chunk: Chunk) -> None:
        with anyio.fail_after(5):
            await journal.intend(chunk, 1, WALL)
            journal.outcome(chunk, 1, DONE, WALL, "done")
            await journal.flush()

    with Journal.open(jpath, BINDING, tool_version="0.1.0") as journal:
        anyio.run(send, journal, window(0))
        anyio.run(send, journal, window(1))
    assert read_state(jpath)[1].units == {
        window(0).id: UnitState.DONE,
        window(1).id: UnitState.DONE,
    }


# What this version wrote before the encoders were rewritten for speed: older journals and
# the fast replay expressions depend on these bytes (key order, number formats, checksum).
GOLDEN = [
    (
        b'{"t":"intent","chunk":"201d948aff33ad60bce05fe689488b5e","attempt":1,"wall":17326000'
        b'00.123,"entry":"window[0]","kind":"window","job_name":"ods_orders","workspace":"62fb'
        b'ba734e634c5087656fc3ff7adf34","body":{"begin_time":1732608000000,"concurrent":2,"end'
        b'_time":1732611599999,"ignore_obs_monitor":true,"retry_location":"errorNode","retry_t'
        b'ask_version":"original_version"},"crc":"018859aa"}'
    ),
    (
        b'{"t":"outcome","chunk":"201d948aff33ad60bce05fe689488b5e","attempt":1,"wall":1732600'
        b'001.500,"state":"failed","kind":"failed","status":400,"error_code":"DLF.1000","error'
        b'_msg":"Failed to find the job.","request_id":"req-1","reason":"400","ms":0.0,"crc":"'
        b'c815efc7"}'
    ),
    (
        b'{"t":"intent","chunk":"201d948aff33ad60bce05fe689488b5e","attempt":2,"wall":17326000'
        b'02.000,"crc":"94057e23"}'
    ),
    (
        b'{"t":"outcome","chunk":"201d948aff33ad60bce05fe689488b5e","attempt":2,"wall":1732600'
        b'002.250,"state":"done","kind":"done","status":200,"request_id":"445b66ecc24806650000'
        b'00000001869f","reason":"accepted","ms":6.6,"crc":"bc1abd15"}'
    ),
    (
        b'{"t":"intent","chunk":"7d1ee725cec90abf6384dd89c6ccd5b0","attempt":1,"wall":17326000'
        b'03.000,"units":["03f5e849797d6c4535708c45c6054e14","e088d0fa806b0dde7b67adf77f87716e'
        b'"],"entry":"instances[0]","kind":"instances","job_name":"ods_payments","workspace":"'
        b'62fbba734e634c5087656fc3ff7adf34","body":{"retry_location":"errorNode","retry_task_v'
        b'ersion":"original_version","task_retrys":[{"job_id":1,"plan_time":1732601580000,"sub'
        b'mit_time":1732239754684},{"job_id":2,"plan_time":1732601580000,"submit_time":1732239'
        b'754684}]},"crc":"dae90665"}'
    ),
    (
        b'{"t":"outcome","chunk":"7d1ee725cec90abf6384dd89c6ccd5b0","attempt":1,"wall":1732600'
        b'004.000,"state":"held","kind":"held","reason":"timeout after send","ms":30000.0,"crc'
        b'":"94571350"}'
    ),
]


@pytest.mark.anyio
async def test_records_are_written_byte_for_byte_as_before(journal: Journal, jpath: Path) -> None:
    w, b = window(0), batch([1, 2])
    accepted = Outcome(
        Kind.DONE, 200, request_id="445b66ecc2480665000000000001869f", reason="accepted",
        elapsed=0.0066,
    )  # fmt: skip
    await journal.intend(w, 1, WALL + 0.1234)
    journal.outcome(w, 1, FAILED, WALL + 1.5, "failed")
    await journal.intend(w, 2, WALL + 2)
    journal.outcome(w, 2, accepted, WALL + 2.25, "done")
    await journal.intend(b, 1, WALL + 3)
    journal.outcome(b, 1, HELD, WALL + 4, "held")
    await journal.flush()
    assert raw_lines(jpath)[1:] == GOLDEN


# -- replay ---------------------------------------------------------------------------------


async def _play(path: Path, script: Callable[[Journal], Any]) -> None:
    journal = Journal.open(path, BINDING, tool_version="0.1.0")
    try:
        await script(journal)
    finally:
        journal.close()


def _reopened(path: Path) -> dict[str, UnitState]:
    with Journal.open(path, BINDING, tool_version="0.1.0") as journal:
        return dict(journal.state().units)


@pytest.mark.anyio
async def test_replay_gives_each_unit_its_state(jpath: Path) -> None:
    done, failed, held, in_flight, retried, aborted = (window(i) for i in range(6))
    instances = batch([1, 2, 3])

    async def script(j: Journal) -> None:
        for chunk, outcome, state in (
            (done, DONE, "done"),
            (failed, FAILED, "failed"),
            (held, HELD, "held"),
            (retried, THROTTLED, "retry"),  # then the process died before the next attempt
            (aborted, REFUSED, "pending"),  # 401: the run aborted, the unit is pending
            (instances, DONE, "done"),
        ):
            await j.intend(chunk, 1, WALL)
            j.outcome(chunk, 1, outcome, WALL + 1, state)
        await j.intend(in_flight, 1, WALL)  # killed before the outcome came

    await _play(jpath, script)
    expected = {
        done.id: UnitState.DONE,
        failed.id: UnitState.FAILED,
        held.id: UnitState.HELD,
        in_flight.id: UnitState.HELD,
        **dict.fromkeys(instances.units, UnitState.DONE),
    }
    _, state = read_state(jpath)
    assert state.units == expected
    assert _reopened(jpath) == expected
    assert state.chunks[failed.id].error_code == "DLF.1000"
    assert state.chunks[failed.id].status == 400
    assert state.chunks[in_flight.id].state is None
    assert state.chunks[retried.id].state == "retry"
    assert state.accepted == 2
    assert state.attempts == 7


@pytest.mark.anyio
async def test_an_attempt_not_acted_on_leaves_units_as_they_were(jpath: Path) -> None:
    chunk = window(0)

    async def first_run(j: Journal) -> None:
        await j.intend(chunk, 1, WALL)
        j.outcome(chunk, 1, HELD, WALL + 1, "held")

    async def resend_throttled(j: Journal) -> None:  # --resend-held, then 429 and a crash
        await j.intend(chunk, 1, WALL + 10)
        j.outcome(chunk, 1, THROTTLED, WALL + 11, "retry")

    await _play(jpath, first_run)
    await _play(jpath, resend_throttled)
    # The first send may have been acted on: the unit is still held, not pending.
    assert _reopened(jpath) == {chunk.id: UnitState.HELD}

    async def resend_done(j: Journal) -> None:
        await j.intend(chunk, 2, WALL + 20)
        j.outcome(chunk, 2, DONE, WALL + 21, "done")

    await _play(jpath, resend_done)
    _, state = read_state(jpath)
    assert state.units == {chunk.id: UnitState.DONE}
    assert state.chunks[chunk.id].attempts == 3
    # Later intents of a chunk the journal holds are short records.
    intents = [r for r in lines(jpath) if r["t"] == "intent"]
    assert "body" in intents[0]
    assert all(set(r) == {"t", "chunk", "attempt", "wall", "crc"} for r in intents[1:])


@pytest.mark.anyio
async def test_a_resend_not_acted_on_after_a_crash_leaves_the_unit_held(jpath: Path) -> None:
    chunk = window(0)

    async def killed_in_flight(j: Journal) -> None:
        await j.intend(chunk, 1, WALL)  # and the process dies: no outcome

    async def resend_throttled(j: Journal) -> None:  # --resend-held, then 429 and a crash
        await j.intend(chunk, 1, WALL + 10)
        j.outcome(chunk, 1, THROTTLED, WALL + 11, "retry")

    await _play(jpath, killed_in_flight)
    assert _reopened(jpath) == {chunk.id: UnitState.HELD}
    await _play(jpath, resend_throttled)
    assert _reopened(jpath) == {chunk.id: UnitState.HELD}


@pytest.mark.anyio
async def test_verify_records_decide_held_units(jpath: Path) -> None:
    chunk = batch([1, 2, 3])

    async def script(j: Journal) -> None:
        await j.intend(chunk, 1, WALL)
        j.outcome(chunk, 1, HELD, WALL + 1, "held")
        j.verified(chunk.units[0], UnitState.DONE, "instance 1 rerun at 10:02", WALL + 2)
        j.verified(chunk.units[1], None, "instance 2 never rerun", WALL + 2)

    await _play(jpath, script)
    _, state = read_state(jpath)
    assert state.units == {chunk.units[0]: UnitState.DONE, chunk.units[2]: UnitState.HELD}
    assert state.verified[chunk.units[1]] == "instance 2 never rerun"


@pytest.mark.anyio
async def test_runs_and_selections_are_kept(jpath: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text("version = 1\n# 订单\n", encoding="utf-8")
    info = RunInfo.from_manifest(
        manifest,
        instance_files={"failed.csv": "ab" * 32},
        selections={"select[0]": [("ods_orders", 917567, 1_732_601_580_000, 1_732_239_754_684)]},
        options={"retry_failed": True, "resend_held": False},
        pending=12,
    )

    async def script(j: Journal) -> None:
        j.begin_run(info, wall=WALL)
        assert j.state().runs[0].manifest_text == info.manifest_text

    await _play(jpath, script)
    await _play(jpath, lambda j: _async(j.begin_run, RunInfo("m2.toml", "", "", pending=0)))
    _, state = read_state(jpath)
    first, second = state.runs
    assert (first.n, second.n) == (1, 2)
    assert first.manifest_name == str(manifest)
    assert first.manifest_text == "version = 1\n# 订单\n"
    assert len(first.manifest_sha256) == 64
    assert first.instance_files == {"failed.csv": "ab" * 32}
    assert first.options == {"retry_failed": True, "resend_held": False}
    assert first.pending == 12
    assert first.pid == os.getpid()
    assert state.selections == {
        "select[0]": [("ods_orders", 917567, 1_732_601_580_000, 1_732_239_754_684)]
    }


async def _async(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


def test_a_run_records_how_it_ended_and_only_a_run_begun_here(jpath: Path) -> None:
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.end_run(0, None, None, wall=WALL)  # no run begun by this open: nothing to end
    j.begin_run(RunInfo("m.toml", "", "", pending=3), wall=WALL)
    j.end_run(3, "failure_budget", 'canary: 3 of the first 3 failed; "订单"', wall=WALL + 2)
    j.close()
    assert [r["t"] for r in lines(jpath)] == ["header", "run", "end"]
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.end_run(1, None, None)  # this open began no run: run 1's end stays as it was
    j.begin_run(RunInfo("m.toml", "", "", pending=0), wall=WALL + 5)
    j.close()  # ended by no record: as a run killed before its end
    _, state = read_state(jpath)
    assert [r.n for r in state.runs] == [1, 2]
    assert state.ends == {
        1: RunEnd(1, WALL + 2, 3, "failure_budget", 'canary: 3 of the first 3 failed; "订单"')
    }


def test_a_verify_records_its_start_at_once_and_its_end_apart_from_runs(jpath: Path) -> None:
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.begin_run(RunInfo("m.toml", "", "", pending=3), wall=WALL)
    j.end_run(1, None, None, wall=WALL + 1)
    j.close()
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.end_verify(0, None, None, None)  # no verify begun by this open: nothing to end
    options = {"endpoint": BINDING.endpoint, "rate": 3.0, "flags": [["--rate", "3"]]}
    j.begin_verify(options, held=2, wall=WALL + 10)
    # On stable storage before the verify asks the service anything, as a run's record is.
    assert [r["t"] for r in lines(jpath)] == ["header", "run", "end", "verify_start"]
    j.verified("u1", UnitState.DONE, "rerun seen", WALL + 11)
    j.end_verify(1, None, None, (1, 0, 1), wall=WALL + 12)
    j.close()
    j = Journal.open(jpath, BINDING, tool_version="0.1.0")
    j.begin_verify({}, held=1, wall=WALL + 20)
    j.close()  # ended by no record: as a verify killed before its end
    _, state = read_state(jpath)
    assert [r.n for r in state.runs] == [1]  # a verify is not a run: runs are numbered alone
    assert [(v.n, v.wall, v.held, v.options) for v in state.verifications] == [
        (1, WALL + 10, 2, options),
        (2, WALL + 20, 1, {}),
    ]
    assert state.verifications[0].pid == os.getpid()
    assert state.verify_ends == {1: VerifyEnd(1, WALL + 12, 1, None, None, 1, 0, 1)}


@pytest.mark.anyio
async def test_unusual_names_and_ids_round_trip(jpath: Path) -> None:
    # Quotes, backslashes, control characters and non-ASCII take the json.loads path.
    odd = 'job "订单"\\\n'
    body = canonical_json({"begin_time": 1, "end_time": 2, "note": "订单"})
    chunk = Chunk('id"with\\quote', "window", "window[7]", odd, WS, body, ("u1", 'u"2', "ü3"))
    plain = Chunk("x" * 32, "window", "window[8]", "job", WS, body, ())

    async def script(j: Journal) -> None:
        for c in (chunk, plain):
            await j.intend(c, 1, WALL)
            j.outcome(c, 1, DONE, WALL + 1, "done")
        await j.intend(chunk, 2, WALL + 2)
        j.outcome(chunk, 2, HELD, WALL + 3, "held")

    await _play(jpath, script)
    _, state = read_state(jpath)
    assert state.units == dict.fromkeys(chunk.units, UnitState.HELD)
    assert state.chunks[plain.id].units == ()
    (intent,) = read_records_at(jpath, iter([state.chunks[chunk.id].intent_offset]))
    assert intent["job_name"] == odd
    assert intent["body"] == {"begin_time": 1, "end_time": 2, "note": "订单"}


@pytest.mark.anyio
async def test_live_state_matches_a_replay(journal: Journal, jpath: Path) -> None:
    a, b, c = window(0), batch([1, 2]), window(1)
    await journal.intend(a, 1, WALL)
    journal.outcome(a, 1, THROTTLED, WALL + 1, "retry")
    await journal.intend(a, 2, WALL + 2)
    journal.outcome(a, 2, DONE, WALL + 3, "done")
    await journal.intend(b, 1, WALL + 4)
    journal.outcome(b, 1, FAILED, WALL + 5, "failed")
    await journal.intend(c, 1, WALL + 6)
    await journal.flush()
    _, replayed = read_state(jpath)
    live = journal.state()
    assert live.units == replayed.units
    assert live.records == replayed.records
    assert live.attempts == replayed.attempts == 4
    for cid, info in live.chunks.items():
        other = replayed.chunks[cid]
        assert (info.state, info.attempts, info.intent_offset, info.outcome_offset) == (
            other.state,
            other.attempts,
            other.intent_offset,
            other.outcome_offset,
        )


def test_misuse_is_refused(journal: Journal) -> None:
    with pytest.raises(ValueError, match="without an intent"):
        journal.outcome(window(0), 1, DONE, WALL, "done")
    with pytest.raises(ValueError, match="outcome state"):
        journal.outcome(window(0), 1, DONE, WALL, "maybe")
    bad = Chunk("x", "window", "window[0]", "j", WS, b'{"a":\n1}', ("x",))
    with pytest.raises(ValueError, match="canonical JSON"):
        anyio.run(journal.intend, bad, 1, WALL)
    with pytest.raises(ValueError, match="finite"):
        anyio.run(journal.intend, window(0), 1, float("nan"))


# -- crashes and damage ---------------------------------------------------------------------


def _no_helper(*args: object, **kwargs: object) -> None:
    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")


def _journal_with_records(path: Path) -> bytes:
    async def script(j: Journal) -> None:
        for i in range(3):
            chunk = window(i)
            await j.intend(chunk, 1, WALL + i)
            j.outcome(chunk, 1, DONE, WALL + i, "done")
        await j.intend(batch([7, 8]), 1, WALL + 5)

    anyio.run(_play, path, script)
    return path.read_bytes()


def test_a_torn_last_record_is_cut_away_at_every_cut_point(
    jpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _journal_with_records(jpath)
    # What is checked is where the file is cut and what follows, at 531 points: not the disk
    # (the durability tests are). A sync helper started per journal and two fsyncs per
    # cut point took 12 s on a loaded machine.
    monkeypatch.setattr(journal_module.subprocess, "Popen", _no_helper)
    monkeypatch.setattr(journal_module, "_fdatasync", lambda fd: None)
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: None)
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    good = data[:last_start]
    expected_units = {window(i).id: UnitState.DONE for i in range(3)}
    for cut in range(last_start + 1, len(data)):  # every prefix of the last line
        jpath.write_bytes(data[:cut])
        _, state = read_state(jpath)  # read-only: tolerated, not repaired
        assert state.units == expected_units
        assert jpath.read_bytes() == data[:cut]
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as journal:
            assert journal.state().units == expected_units
            assert jpath.read_bytes() == good  # repaired before appending
            anyio.run(journal.intend, window(9), 1, WALL)
        _, state = read_state(jpath)
        assert state.units == {**expected_units, window(9).id: UnitState.HELD}


def test_garbage_after_the_last_record_is_a_torn_tail(jpath: Path) -> None:
    data = _journal_with_records(jpath)
    for garbage in (b"\x00" * 512, b'{"t":"outc', b"not json at all\n"):
        jpath.write_bytes(data + garbage)
        with Journal.open(jpath, BINDING, tool_version="0.1.0"):
            pass
        assert jpath.read_bytes() == data


def test_damage_before_the_last_record_is_refused(jpath: Path) -> None:
    data = _journal_with_records(jpath)
    rows = data.splitlines(keepends=True)
    damaged_line = 3  # 1-based: header, intent, outcome, ...
    for damage in (
        lambda row: row.replace(b'"done"', b'"held"'),  # an edit: checksum no longer matches
        lambda row: row[:20] + b"\n",  # a truncated line
        lambda row: b"\n",  # an empty line
    ):
        rows_copy = list(rows)
        rows_copy[damaged_line - 1] = damage(rows[damaged_line - 1])
        jpath.write_bytes(b"".join(rows_copy))
        for attempt in (
            lambda: read_state(jpath),
            lambda: Journal.open(jpath, BINDING, tool_version="0.1.0"),
        ):
            with pytest.raises(JournalCorrupt, match=f"line {damaged_line}") as err:
                attempt()
            assert err.value.exit_code == 2
        assert jpath.read_bytes() == b"".join(rows_copy)  # never "repaired"


def test_a_damaged_header_is_refused(jpath: Path) -> None:
    # The header binds the journal to its project: one edited (or rotted) in place must not
    # be read as the binding of another.
    data = _journal_with_records(jpath)
    header, rest = data.split(b"\n", 1)
    edited = header.replace(BINDING.project_id.encode(), b"f" * len(BINDING.project_id))
    jpath.write_bytes(edited + b"\n" + rest)
    for attempt in (
        lambda: read_state(jpath),
        lambda: Journal.open(jpath, BINDING, tool_version="0.1.0"),
    ):
        with pytest.raises(JournalCorrupt, match="line 1: the header is damaged") as err:
            attempt()
        assert err.value.exit_code == 2
    assert jpath.read_bytes() == edited + b"\n" + rest  # left as it was


def test_a_record_that_contradicts_the_ones_before_is_refused(jpath: Path) -> None:
    data = _journal_with_records(jpath)
    rows = data.splitlines(keepends=True)
    # Drop the first intent: its outcome then has no intent.
    jpath.write_bytes(b"".join(rows[:1] + rows[2:]))
    with pytest.raises(JournalCorrupt, match=r"line 2.*without an intent"):
        read_state(jpath)


def test_every_record_holds_only_what_it_was_given(jpath: Path) -> None:
    _journal_with_records(jpath)
    allowed = {
        "header": {"t", "format", "tool", "tool_version", "project_id", "endpoint", "created"},
        "intent": {"t", "chunk", "attempt", "wall", "units", "entry", "kind", "job_name",
                   "workspace", "body"},
        "outcome": {"t", "chunk", "attempt", "wall", "state", "kind", "status", "error_code",
                    "error_msg", "request_id", "reason", "retry_after", "ms"},
    }  # fmt: skip
    for record in lines(jpath):
        assert set(record) - {"crc"} <= allowed[record["t"]]
    text = jpath.read_text()
    for secret_name in ("Authorization", "X-Auth-Token", "X-Security-Token", "sk", "SK"):
        assert f'"{secret_name}"' not in text


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=12))
def test_any_chunk_or_unit_id_is_written_as_json_and_read_back(text: str) -> None:
    # Ids are hex, and the encoder takes a shortcut for them; any other string must still
    # be escaped as JSON (quotes, backslashes, control characters, lone surrogates).
    cid = "c" + text
    window_chunk = Chunk(cid, "window", "window[0]", "j", WS, b'{"a":1}', (cid,))
    units = ("u" + text, "0f")
    batch_chunk = Chunk("b" + text, "instances", "instances[0]", "j", WS, b'{"b":1}', units)

    async def script(j: Journal) -> None:
        for chunk in (window_chunk, batch_chunk):
            await j.intend(chunk, 1, WALL)
            j.outcome(chunk, 1, DONE, WALL, "done")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        anyio.run(_play, path, script)
        records = lines(path)[1:]
        assert [r["chunk"] for r in records] == [cid, cid, "b" + text, "b" + text]
        assert records[2]["units"] == list(units)
        done = UnitState.DONE
        assert read_state(path)[1].units == {cid: done, units[0]: done, units[1]: done}


# -- a model of the replay rules ------------------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.integers(0, 3),  # which chunk
        st.sampled_from(["done", "failed", "held", "retry", "pending", "crash", "verify"]),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ACTIONS)
def test_replay_follows_the_rules_for_any_history(actions: list[tuple[int, str]]) -> None:
    chunks = [window(0), window(1), batch([1, 2]), batch([2, 3], job="other")]
    model: dict[str, UnitState] = {}

    async def script(j: Journal) -> None:
        attempts = [0] * len(chunks)
        for index, action in actions:
            chunk = chunks[index]
            if action == "verify":
                j.verified(chunk.units[0], UnitState.DONE, "seen", WALL)
                model[chunk.units[0]] = UnitState.DONE
                continue
            attempts[index] += 1
            before = {u: model.get(u) for u in chunk.units}
            await j.intend(chunk, attempts[index], WALL)
            for u in chunk.units:
                model[u] = UnitState.HELD
            if action == "crash":
                continue  # no outcome: held until a later outcome says otherwise
            kind = {"done": DONE, "failed": FAILED, "held": HELD}.get(action, THROTTLED)
            j.outcome(chunk, attempts[index], kind, WALL, action)
            if action in ("retry", "pending"):
                for u, prior in before.items():
                    if prior is None:
                        model.pop(u, None)
                    else:
                        model[u] = prior
            else:
                for u in chunk.units:
                    model[u] = UnitState(action)
        assert j.state().units == model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        anyio.run(_play, path, script)
        assert read_state(path)[1].units == model


# -- a run's journal without live details ---------------------------------------------------

SESSION = st.lists(
    st.tuples(
        st.integers(0, 2),  # retries (429) before the last attempt
        st.sampled_from(["done", "failed", "held", "pending", "in flight"]),
    ),
    min_size=6,
    max_size=6,
)


def _summary(state: Any) -> tuple[Any, ...]:
    return (
        dict(state.counts()),
        state.requests,
        state.attempts,
        state.accepted,
        state.failed_by_code(),
        state.records,
    )


@settings(max_examples=40, deadline=None)
@given(SESSION)
def test_a_run_without_live_details_sums_up_as_a_replay(session: list[tuple[int, str]]) -> None:
    # Before the run: a window done, a window and a batch failed, a batch held.
    earlier = [window(0), window(1), batch([1, 2]), batch([3])]
    # The run: a new window, the failed window again (same chunk), the failed batch's units
    # re-formed with a new one (another chunk), the held batch's unit, two new chunks.
    run = [window(2), window(1), batch([1, 2, 4]), batch([3]), batch([5, 6]), window(3)]
    rejected = Outcome(Kind.FAILED, 400, "DLF.3051", "bad state", "req-3", reason="400")
    again = Outcome(Kind.FAILED, 403, None, "forbidden", "req-4", reason="403")  # "HTTP 403"

    async def before(j: Journal) -> None:
        states = ["done", "failed", "failed", "held"]
        for chunk, state, outcome in zip(
            earlier, states, [DONE, FAILED, rejected, HELD], strict=True
        ):
            await j.intend(chunk, 1, WALL)
            j.outcome(chunk, 1, outcome, WALL + 1, state)

    async def during(path: Path) -> tuple[Any, ...]:
        j = Journal.open(path, BINDING, tool_version="0.1.0", live_details=False)
        try:
            listed = (len(j.state().chunks), len(j.state().units))
            for chunk, (retries, last) in zip(run, session, strict=True):
                attempt = 0
                for _ in range(retries):
                    attempt += 1
                    await j.intend(chunk, attempt, WALL + 10)
                    j.outcome(chunk, attempt, THROTTLED, WALL + 11, "retry")
                attempt += 1
                await j.intend(chunk, attempt, WALL + 12)
                if last != "in flight":
                    outcome = {"done": DONE, "failed": again, "held": HELD}.get(last, THROTTLED)
                    j.outcome(chunk, attempt, outcome, WALL + 13, last)
            await j.flush()
            live = j.state()
            # Nothing of the run's settled requests is kept one by one: the state holds
            # what it held when opened, and the run's units still in flight.
            flying = [c for c, (_, last) in zip(run, session, strict=True) if last == "in flight"]
            in_flight = sum(len(c.units) for c in flying)
            assert len(live.chunks) == listed[0]
            assert len(live.units) <= listed[1] + in_flight
            summary = _summary(live)
            detailed = j.reload()
            assert set(detailed.chunks) == {c.id for c in earlier + run}
            return summary
        finally:
            j.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        anyio.run(_play, path, before)
        live = anyio.run(during, path)
        assert live == _summary(read_state(path)[1])


@pytest.mark.anyio
async def test_sends_whose_outcome_is_unknown_are_counted_per_request(jpath: Path) -> None:
    killed, held, retried = window(0), window(1), window(2)
    throttled = Outcome(Kind.RETRY, 429, "APIG.0308", reason="throttled")
    lost = Outcome(Kind.HELD, reason="connection lost after sending")
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        await j.intend(killed, 1, 1.0)  # no outcome: a crash
        await j.intend(held, 1, 1.0)
        j.outcome(held, 1, lost, 2.0, "held")
        await j.intend(retried, 1, 1.0)
        j.outcome(retried, 1, throttled, 2.0, "retry")  # not acted on: known
        await j.intend(retried, 2, 3.0)
        j.outcome(retried, 2, DONE, 4.0, "done")
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:  # --resend-held
        await j.intend(killed, 1, 5.0)
        j.outcome(killed, 1, DONE, 6.0, "done")
        await j.intend(held, 1, 5.0)
        j.outcome(held, 1, lost, 6.0, "held")
    _, state = read_state(jpath)
    assert state.unknown_sends == {killed.id: 1, held.id: 2}


# -- a slim read (status, and a run's resume) -------------------------------------------------


def _replayed(state: Any) -> tuple[Any, ...]:
    """Everything a replay yields that status and a resume read, but the requests' details."""
    return (
        state.units,
        dict(state.counts()),
        state.requests,
        state.attempts,
        state.accepted,
        state.never_sent,
        state.failed_by_code(),
        state.unknown_sends,
        state.unknown_ids,
        state.verified,
        state.records,
        state.first_wall,
        state.last_wall,
        state.active_seconds,
        state.done_windows(),
    )


def _details(state: Any) -> dict[str, tuple[Any, ...]]:
    fields = ("units", "intent_offset", "first_wall", "last_wall", "attempts", "state")
    more = ("outcome_offset", "status", "error_code", "run")
    return {
        cid: tuple(getattr(info, f) for f in fields + more) for cid, info in state.chunks.items()
    }


async def _every_fate(j: Journal) -> list[Chunk]:
    """Window requests done at once (0, 6), failed (1), held (2), done after a 429 (3),
    held then done (4), never sent (5), one left in flight (7, a crash); a batch done, a
    batch failed; a verification of the held window."""
    w = [window(i) for i in range(8)]
    b12, b3 = batch([1, 2]), batch([3])
    lost = Outcome(Kind.HELD, 504, None, None, "req-504", reason="504")
    fates: list[tuple[Chunk, list[tuple[Outcome, str]]]] = [
        (w[0], [(DONE, "done")]),
        (w[1], [(FAILED, "failed")]),
        (w[2], [(HELD, "held")]),
        (w[3], [(THROTTLED, "retry"), (DONE, "done")]),
        (w[4], [(lost, "held"), (DONE, "done")]),
        (w[5], [(Outcome(Kind.NOT_SENT, reason="interrupted"), "pending")]),
        (b12, [(DONE, "done")]),
        (b3, [(FAILED, "failed")]),
        (w[6], [(DONE, "done")]),
    ]
    wall = WALL
    for chunk, outcomes in fates:
        for attempt, (outcome, state) in enumerate(outcomes, 1):
            wall += 1
            await j.intend(chunk, attempt, wall)
            j.outcome(chunk, attempt, outcome, wall + 0.5, state)
    await j.intend(w[7], 1, wall + 1)
    j.verified(w[2].id, UnitState.DONE, "rerun seen", wall + 2)
    await j.flush()
    return [*w, b12, b3]


def test_a_slim_read_keeps_windows_done_at_once_as_offsets_and_sums_up_as_a_full_one(
    jpath: Path,
) -> None:
    async def play() -> list[Chunk]:
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
            return await _every_fate(j)

    w = anyio.run(play)
    _, full = read_state(jpath)
    _, slim = read_state(jpath, slim=True)
    # The windows sent once and done are kept as where their intents are, nothing more;
    # every other request (done after a 429, or after a send of unknown outcome, a batch)
    # in full.
    assert slim.settled == {c.id: full.chunks[c.id].intent_offset for c in (w[0], w[6])}
    assert _details(slim) == {
        cid: d for cid, d in _details(full).items() if cid not in (w[0].id, w[6].id)
    }
    assert _replayed(slim) == _replayed(full)
    assert slim.done_windows() == sorted(
        full.chunks[c.id].intent_offset for c in (w[0], w[2], w[3], w[4], w[6])
    )
    # A run's resume opens it so, and what it appends sums up as a full replay does.
    with Journal.open(jpath, BINDING, tool_version="0.1.0", live_details=False, slim=True) as j:
        assert _replayed(j.state()) == _replayed(full)

        async def retry() -> None:
            await j.intend(w[1], 2, WALL + 50)
            j.outcome(w[1], 2, DONE, WALL + 51, "done")
            await j.flush()

        anyio.run(retry)
        live = _replayed(j.state())
    assert live == _replayed(read_state(jpath)[1]) == _replayed(read_state(jpath, slim=True)[1])


@pytest.mark.parametrize("touch", ["sent again", "verified", "outcome again"])
def test_a_slim_read_of_a_settled_window_touched_again_is_a_full_one(
    jpath: Path, touch: str
) -> None:
    # No bulkrerun sends a done window again, verifies it, or records a second outcome of
    # it; a journal that does anyway (edited by hand) is read in full, never guessed at.
    async def play() -> None:
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
            w = await _every_fate(j)
            if touch == "sent again":
                await j.intend(w[0], 2, WALL + 60)
                j.outcome(w[0], 2, FAILED, WALL + 61, "failed")
            elif touch == "verified":
                j.verified(w[0].id, None, "never rerun", WALL + 60)
            else:
                j.outcome(w[0], 1, HELD, WALL + 60, "held")
            await j.flush()

    anyio.run(play)
    _, full = read_state(jpath)
    _, slim = read_state(jpath, slim=True)
    assert not slim.settled
    assert _details(slim) == _details(full)
    assert _replayed(slim) == _replayed(full)


def test_a_journal_opened_slim_details_a_settled_window_touched_again(jpath: Path) -> None:
    # What a run appends is replayed live: a record touching a settled window (which no run
    # writes) gets its details back, and the sums stay a full replay's.
    async def play() -> list[Chunk]:
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
            return await _every_fate(j)

    w = anyio.run(play)
    with Journal.open(jpath, BINDING, tool_version="0.1.0", slim=True) as j:
        assert w[0].id in j.state().settled

        async def again() -> None:
            await j.intend(w[0], 2, WALL + 60)
            j.outcome(w[0], 2, FAILED, WALL + 61, "failed")
            j.verified(w[6].id, None, "never rerun", WALL + 62)
            await j.flush()

        anyio.run(again)
        state = j.state()
        assert w[0].id not in state.settled and w[6].id not in state.settled
        assert state.chunks[w[0].id].attempts == 2
        assert state.chunks[w[0].id].state == "failed"
        live = _replayed(state)
    assert live == _replayed(read_state(jpath)[1])


def test_a_slim_read_offers_the_latest_accepted_requests_of_a_full_one(jpath: Path) -> None:
    # verify's canaries are the latest accepted requests, most of them windows sent once and
    # done, which a slim read settles: it keeps the latest LATEST_SETTLED of those in full,
    # so that the latest accepted are a full read's, whatever order their walls come in.
    n = journal_module._SETTLED_KEPT + 100  # more than the replay keeps before it trims
    walls = [WALL + 1000 + (k * 37) % 5 for k in range(n)]  # out of order, many equal

    async def play() -> None:
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
            async with anyio.create_task_group() as tg:  # intents share commits
                for k in range(n):
                    tg.start_soon(j.intend, window(k), 1, WALL + k)
            for k in range(n):
                j.outcome(window(k), 1, DONE, walls[k], "done")
                if k % 40 == 0:  # batches done too, and a failed one the latest of all
                    b = batch([k])
                    await j.intend(b, 1, WALL + k)
                    j.outcome(b, 1, DONE, walls[k], "done")
            await j.intend(window(n), 1, WALL + n)
            j.outcome(window(n), 1, FAILED, WALL + 2000, "failed")
            await j.flush()

    anyio.run(play)
    _, full = read_state(jpath)
    _, slim = read_state(jpath, slim=True)
    assert len(slim.settled) == n > LATEST_SETTLED

    def latest(state: Any) -> list[tuple[Any, ...]]:
        return [
            (i.id, i.intent_offset, i.first_wall, i.last_wall, i.run)
            for i in state.latest_accepted(LATEST_SETTLED)
        ]

    assert latest(slim) == latest(full)
    # A full read's, as verify chose them before: by the last wall, the first sent first.
    done = [i for i in full.chunks.values() if i.state == "done"]
    assert latest(full) == [
        (i.id, i.intent_offset, i.first_wall, i.last_wall, i.run)
        for i in heapq.nlargest(LATEST_SETTLED, done, key=lambda i: i.last_wall)
    ]
    with pytest.raises(ValueError, match="at most"):
        slim.latest_accepted(LATEST_SETTLED + 1)
    # A journal opened slim offers them too.
    with Journal.open(jpath, BINDING, tool_version="0.1.0", slim=True) as j:
        assert latest(j.state()) == latest(full)


def test_a_replay_keeps_one_string_per_outcome_state(jpath: Path) -> None:
    # A report reads every request's details: a state decoded afresh from each line cost
    # 53 bytes per request, a string shared by all costs nothing.
    async def play() -> None:
        with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
            await _every_fate(j)
            for k in range(10, 20):  # more of each, through either path of the replay
                await j.intend(window(k), 1, WALL + k)
                j.outcome(
                    window(k), 1, FAILED if k % 2 else DONE, WALL + k, "failed" if k % 2 else "done"
                )
            await j.flush()

    anyio.run(play)
    _, full = read_state(jpath)
    states = [info.state for info in full.chunks.values() if info.state is not None]
    assert {"done", "failed", "held", "pending"} <= set(states)
    assert len({id(s) for s in states}) == len(set(states))


def test_a_selection_is_replayed_as_recorded_whatever_its_names_and_numbers(
    jpath: Path, tmp_path: Path
) -> None:
    # The replay reads a select record row by row into columns (bulkrerun.selection), not
    # through json.loads: names that JSON escapes, a name with a %, the largest job id, a
    # job coming back after another, and an empty selection come back as recorded.
    rows = [
        ('a"b', 1, 2, 3),
        ('a"b', 4, 5, 6),
        ("c\\d%e", 2**63 - 1, 7, 8),
        ("订单", 9, 10, 11),
        ('a"b', 12, 13, 14),
    ]
    manifest = tmp_path / "m.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    info = RunInfo.from_manifest(manifest, selections={"select[0]": rows, "select[1]": []})
    with Journal.open(jpath, BINDING, tool_version="0.1.0") as j:
        j.begin_run(info)
    _, state = read_state(jpath)
    assert state.selections == {"select[0]": rows, "select[1]": []}
    # Written as json.dumps writes the rows: the journal's format is unchanged.
    written = [json.loads(line) for line in lines_of(jpath, b'{"t":"select"')]
    assert [r["items"] for r in written] == [[list(row) for row in rows], []]
    # A select record of another shape (json.dumps's default spacing) is read the same.
    body = json.dumps({"t": "select", "run": 1, "label": "select[0]", "items": rows[::-1]})
    payload = body.encode()[:-1]
    with jpath.open("ab") as f:
        f.write(payload + b',"crc":"%08x"}\n' % zlib.crc32(payload))
    _, state = read_state(jpath)
    assert state.selections["select[0]"] == rows[::-1]


def lines_of(path: Path, start: bytes) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.startswith(start)]
