"""Scale of the commands run after a large run: ``status``, ``status --json``, ``verify``, and
the resumes an operator types next (nothing new, ``--retry-failed``, ``--resend-held``,
``--verify-held``).

Runs ``bulkrerun run`` once against a faulty fake service (503s, dropped connections and
504s after acceptance: failed and held requests) for ``--requests`` window requests and
``--rows`` instances of one file, then times each command on a copy of that journal as a
whole process, with its peak RSS. Not part of ``make bench``: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import AK, PY, SK, fake_server, machine, peak_rss_of, run_argv, run_env, table

FAULTS = ("--p5xx", "0.01", "--drop-after-accept", "0.01", "--timeout-after-accept", "0.01")


def manifest(d: Path, requests: int, rows: int) -> Path:
    """A window of ``requests`` ten-second chunks and a file of ``rows`` instances, both
    within the last month (where the instance list looks)."""
    now = int(time.time()) * 1000 // 60_000 * 60_000
    begin = now - 25 * 86_400_000
    with (d / "failed.csv").open("w") as f:
        f.write("job_id,plan_time,submit_time\n")
        submit = begin - 3_600_000
        f.writelines(f"{100_000 + i},{begin + i * 5_000},{submit}\n" for i in range(rows))
    path = d / "after.toml"
    path.write_text(
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        f'[[window]]\njob_name = "after_job"\nbegin = {begin}\nend = {begin + requests * 10_000}\n'
        'chunk = "10s"\n'
        '[[instances]]\njob_name = "after_payments"\nfile = "failed.csv"\n'
    )
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=200_000, help="window requests")
    p.add_argument("--rows", type=int, default=300_000, help="instances in the file")
    a = p.parse_args()
    os.environ.update(run_env(signed=True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, fake_server("--ak", AK, "--sk", SK, *FAULTS) as url:
        d = Path(tmp)
        m = manifest(d, a.requests, a.rows)
        journal = d / "j"
        run = [*run_argv(m, journal, url), "--max-attempts", "1"]
        rss, t = peak_rss_of(run)
        rows.append(["run", f"{t.seconds:.1f}", f"{rss:.0f}"])
        endpoint = ["--endpoint", url, "--rate", "1000000"]
        commands = {
            "status": [PY, "-m", "bulkrerun", "status", str(journal)],
            "status --json": [PY, "-m", "bulkrerun", "status", str(journal), "--json"],
            "verify": [PY, "-m", "bulkrerun", "verify", str(journal), *endpoint],
            "run (resume, nothing new)": run,
            "run --retry-failed": [*run, "--retry-failed"],
            "run --resend-held": [*run, "--resend-held"],
            "run --verify-held": [*run, "--verify-held"],
        }
        kept = d / "kept"
        shutil.copyfile(journal, kept)
        for what, argv in commands.items():
            shutil.copyfile(kept, journal)  # each on the journal the run left
            rss, t = peak_rss_of(argv)
            rows.append([what, f"{t.seconds:.1f}", f"{rss:.0f}"])
    print(table(
        f"after a run of {a.requests:,} window requests and {a.rows:,} instances, with failed "
        f"and held ones ({machine()})",
        ["command", "seconds", "peak RSS MB"], rows,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
