"""Benchmark of the journal: the cost of writing it and the time to replay it for a resume.

Usage: ``python benchmarks/journal_resume.py [--records 1000000] [--dir DIR] [--keep]``

1. Writes a journal of about ``--records`` records through the public API, the way a run
   does: 64 workers each ``intend`` (durable, group commit) then record an ``outcome``.
   Most chunks are window chunks; one in ten is a batch of 20 instances; one in twenty is
   throttled once and sent again. Prints the wall time, records/s, fsyncs per commit and the
   event loop's CPU time per request (intent + outcome), which is what the journal takes
   from a run's throughput.
2. Replays it in a fresh process, twice: ``read_state`` (what ``status`` and ``report`` do)
   and ``Journal.open`` (what a resume does: lock, replay, check the tail), and prints
   records, seconds, records/s and the replaying process's peak RSS; then, as a yardstick
   for the machine, the time a bare ``json.loads`` of every line takes.
3. A micro-benchmark of the per-record CPU cost of the encoding alone (no I/O).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from bulkrerun.chunk import Chunk, canonical_json, chunk_id, instance_unit_id
from bulkrerun.journal import Binding, Journal, RunInfo, read_state
from bulkrerun.outcome import DONE, Kind, Outcome

BINDING = Binding("62099355b894428e8916573ae635f1f9", "https://dayu.cn-north-4.myhuaweicloud.com")
WORKSPACE = "62fbba734e634c5087656fc3ff7adf34"
THROTTLED = Outcome(Kind.RETRY, status=429, error_code="APIG.0308", reason="429 throttled")


def make_chunk(i: int) -> Chunk:
    """The i-th chunk of a plausible plan."""
    if i % 10 == 9:
        job = "ods_payments"
        items = [
            {
                "job_id": 917_567 + i,
                "plan_time": 1_732_601_580_000 + k * 60_000,
                "submit_time": 1_732_239_754_684,
            }
            for k in range(20)
        ]
        body = canonical_json(
            {
                "ignore_obs_monitor": True,
                "retry_location": "errorNode",
                "retry_task_version": "original_version",
                "task_retrys": items,
            }
        )
        units = tuple(
            instance_unit_id(job, it["job_id"], it["plan_time"], it["submit_time"]) for it in items
        )
        return Chunk(
            chunk_id(job, WORKSPACE, body), "instances", "instances[0]", job, WORKSPACE, body, units
        )
    job = "ods_orders"
    begin = 1_732_608_000_000 + i * 3_600_000
    body = canonical_json(
        {
            "begin_time": begin,
            "concurrent": 8,
            "end_time": begin + 3_599_999,
            "ignore_obs_monitor": True,
            "jobs": [{"job_name": "dwd_orders", "workspace_id": WORKSPACE}],
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
        }
    )
    cid = chunk_id(job, WORKSPACE, body)
    return Chunk(cid, "window", "window[0]", job, WORKSPACE, body, (cid,))


def chunks_for(records: int) -> list[Chunk]:
    # Each chunk writes 2 records, and 1 in 20 writes 2 more (a retry).
    n = int(records / 2.1)
    return [make_chunk(i) for i in range(n)]


async def write_journal(path: Path, chunks: list[Chunk], workers: int) -> dict[str, float]:
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    os.fsync = counting_fsync  # type: ignore[assignment]
    try:
        journal = Journal.open(path, BINDING, tool_version="bench")
        journal.begin_run(RunInfo("bench.toml", "version = 1\n", "0" * 64, pending=len(chunks)))
        wall = 1_732_600_000.0
        it = iter(chunks)
        cpu0, t0 = time.thread_time(), time.perf_counter()

        async def worker() -> None:
            for n, chunk in enumerate(it):
                await journal.intend(chunk, 1, wall)
                if n % 20 == 7:
                    journal.outcome(chunk, 1, THROTTLED, wall, "retry")
                    await journal.intend(chunk, 2, wall)
                    journal.outcome(chunk, 2, DONE, wall, "done")
                else:
                    journal.outcome(chunk, 1, DONE, wall, "done")

        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
        await journal.flush()
        seconds = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        records = journal.state().records
        journal.close()
    finally:
        os.fsync = real_fsync
    requests = journal.state().attempts
    return {
        "records": records or 0,
        "seconds": seconds,
        "requests": requests,
        "fsyncs": fsyncs,
        "loop_cpu_us_per_request": cpu / requests * 1e6,
    }


def replay(path: Path, how: str) -> dict[str, float]:
    """Run in a fresh process: replay and report time and peak RSS."""
    t0 = time.perf_counter()
    if how == "json.loads":  # the baseline: parse every line, nothing more
        with path.open("rb") as f:
            records = sum(1 for line in f if json.loads(line))
        seconds = time.perf_counter() - t0
        return {"records": records, "units": 0, "seconds": seconds, "peak_rss_mib": _rss_mib()}
    if how == "read_state":
        _, state = read_state(path)
    else:
        journal = Journal.open(path, BINDING, tool_version="bench")
        state = journal.state()
        journal.close()
    seconds = time.perf_counter() - t0
    return {
        "records": state.records + 1,  # and the header
        "units": len(state.units),
        "seconds": seconds,
        "peak_rss_mib": _rss_mib(),
    }


def _rss_mib() -> float:
    """Peak RSS of this process. On Linux from VmHWM: ru_maxrss survives fork and exec, so
    it would include the parent's (which holds the chunks it wrote)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def micro(n: int) -> dict[str, float]:
    """CPU cost of encoding one intent and one outcome (no I/O, no event loop)."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.open(Path(tmp) / "j", BINDING, tool_version="bench")
        chunks = [make_chunk(i * 10) for i in range(n)]  # window chunks only
        t0 = time.perf_counter()
        for chunk in chunks:
            line, _ = journal._intent_line(chunk, 1, 1_732_600_000.0)
            offset = journal._append(line)
            journal._rep.intent(chunk.id, chunk.units, offset, 1_732_600_000.0)
            journal.outcome(chunk, 1, DONE, 1_732_600_000.0, "done")
            journal._buf.clear()
        seconds = time.perf_counter() - t0
        journal._fd = None
    return {"records": 2 * n, "us_per_request": seconds / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the journal file")
    parser.add_argument(
        "--replay", choices=["read_state", "open", "json.loads"], help=argparse.SUPPRESS
    )
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.replay:  # child process
        print(json.dumps(replay(args.path, args.replay)))
        return

    tmp = tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir)
    path = Path(tmp) / "journal.jsonl"
    try:
        m = micro(20_000)
        print(f"encode only: {m['us_per_request']:.2f} us of CPU per request (intent + outcome)")

        print(f"building {args.records:,} records of chunks ...", flush=True)
        chunks = chunks_for(args.records)
        w = anyio.run(write_journal, path, chunks, args.workers)
        size = path.stat().st_size
        print(
            f"write: {w['records']:,.0f} records, {w['requests']:,.0f} requests in "
            f"{w['seconds']:.2f} s ({w['records'] / w['seconds']:,.0f} records/s), "
            f"{w['fsyncs']:,.0f} fsyncs ({w['requests'] / max(1, w['fsyncs']):.1f} intents each), "
            f"loop CPU {w['loop_cpu_us_per_request']:.1f} us/request, file {size / 1e6:,.1f} MB"
        )
        print()
        print(
            f"{'replay':<12} {'records':>10} {'units':>10} {'seconds':>8} {'records/s':>11} "
            f"{'peak RSS':>10}"
        )
        for how in ("read_state", "open", "json.loads"):
            out = subprocess.run(
                [sys.executable, __file__, "--replay", how, "--path", str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out)
            print(
                f"{how:<12} {r['records']:>10,} {r['units']:>10,} {r['seconds']:>8.2f} "
                f"{r['records'] / r['seconds']:>11,.0f} {r['peak_rss_mib']:>7.0f} MiB"
            )
    finally:
        if args.keep:
            print(f"journal kept at {path}")
        else:
            path.unlink(missing_ok=True)
            os.rmdir(tmp)


if __name__ == "__main__":
    main()
