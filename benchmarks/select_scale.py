"""Scale of a ``[[select]]`` after a large outage: ``plan``, ``run``, a resume (the recorded
selection reused), ``status``, ``report`` and ``verify`` of a selection of hundreds of
thousands of instances over tens of jobs, each timed as a whole process with its peak RSS,
and the size of the journal's longest line (the selection's record).

The fake service runs in a process of its own with a catalog of ``--jobs`` one-minute jobs
over ``--days`` days, every instance of which failed (``bulkrerun fake-server --catalog``
knows only the demo's twelve jobs). Not part of ``make bench``: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import AK, PY, ROOT, SERVER_CORE, SK, free_port, machine, peak_rss_of, pin, table

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def serve(port: int, jobs: int, days: int) -> None:
    """The fake service with a catalog of ``jobs`` one-minute jobs, all failed over ``days``."""
    from bulkrerun.fake import Catalog, FakeConfig, JobSpec, Outage, serve

    now = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    catalog = Catalog(
        jobs=tuple(JobSpec(f"ods_job_{k:03d}", 700_000 + k, period_min=1) for k in range(jobs)),
        start_ms=now - days * DAY_MS,
        now_ms=now,
        outage=Outage(now - days * DAY_MS, now),
        waiting_s=0.0,
        running_s=0.0,
    )
    serve(FakeConfig(ak=AK, sk=SK, catalog=catalog), "127.0.0.1", port)


def manifest(d: Path, jobs: int, days: int) -> Path:
    """One ``[[select]]`` entry over every job and the whole outage, but its last hour (the
    catalog's "now" moves on while the benchmark runs)."""
    now = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    names = ", ".join(f'"ods_job_{k:03d}"' for k in range(jobs))
    path = d / "select.toml"
    path.write_text(
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        f"[[select]]\njob_names = [{names}]\n"
        f"begin = {now - days * DAY_MS}\nend = {now - HOUR_MS}\nbatch = 1000\n"
    )
    return path


def longest_line(path: Path) -> int:
    with path.open("rb") as f:
        return max((len(line) for line in f), default=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=40, help="one-minute jobs selected")
    p.add_argument("--days", type=int, default=7, help="days of each job's instances")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve is not None:
        serve(a.serve, a.jobs, a.days)
        return 0
    port = free_port()
    server = subprocess.Popen(
        [PY, __file__, "--serve", str(port), "--jobs", str(a.jobs), "--days", str(a.days)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: pin(SERVER_CORE),
        cwd=ROOT,
    )
    rows = []
    try:
        assert server.stdout is not None
        if "listening" not in server.stdout.readline().decode():
            raise RuntimeError("fake server did not start")
        url = f"http://127.0.0.1:{port}"
        os.environ.update({"BULKRERUN_PROJECT_ID": "bench", "BULKRERUN_AK": AK, "BULKRERUN_SK": SK})
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            m = manifest(d, a.jobs, a.days)
            journal = d / "j"
            endpoint = ["--endpoint", url]
            fast = ["--rate", "1000000", "--burst", "1000", "--max-inflight", "64"]
            bulk = [PY, "-m", "bulkrerun"]
            run = [*bulk, "run", str(m), "--journal", str(journal), *endpoint, *fast]
            commands = {
                "plan": [*bulk, "plan", str(m), *endpoint, "--rate", "1000000"],
                "run": [*run, "--no-progress"],
                "run (resume, nothing new)": [*run, "--no-progress"],
                "status": [*bulk, "status", str(journal)],
                "status --json": [*bulk, "status", str(journal), "--json"],
                "report --format csv": [*bulk, "report", str(journal), "--format", "csv"],
                "verify": [*bulk, "verify", str(journal), *endpoint, "--rate", "1000000"],
            }
            kept = d / "kept"
            for what, argv in commands.items():
                if what == "run (resume, nothing new)":
                    shutil.copyfile(journal, kept)
                elif kept.exists():
                    shutil.copyfile(kept, journal)  # each on the journal the run left
                rss, t = peak_rss_of(argv)
                rows.append([what, f"{t.seconds:.1f}", f"{rss:.0f}", t.returncode])
            line = longest_line(kept)
            size = kept.stat().st_size
    finally:
        server.terminate()
        server.wait(10)
    print(table(
        f"a [[select]] of {a.jobs} one-minute jobs over {a.days} days, every instance failed; "
        f"journal {size / 1e6:.1f} MB, longest line {line / 1e6:.1f} MB ({machine()})",
        ["command", "seconds", "peak RSS MB", "exit"], rows,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
