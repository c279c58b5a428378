"""Scale of a run: memory stays flat as a run grows, and resuming a big journal is quick.

Runs ``bulkrerun run`` against the fake service (its own core) for 50,000 and 200,000
requests, with the rate out of the way and 64 in flight, and reads each run's peak RSS: a run
four times longer must not need materially more memory (goal: the 200,000 run's peak within
1.25x the 50,000 run's and under 256 MB). Then runs the same command again on the 200,000
journal (400,000 records): a resume that finds everything done, timed as a whole process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import AK, PY, SK, fake_server, machine, peak_rss_of, table, window_manifest


def run(m: Path, j: Path, url: str) -> tuple[float, float]:
    import os

    env_before = dict(os.environ)
    os.environ.update({"BULKRERUN_PROJECT_ID": "bench", "BULKRERUN_AK": AK, "BULKRERUN_SK": SK})
    try:
        rss, t = peak_rss_of(
            [PY, "-m", "bulkrerun", "run", str(m), "--journal", str(j), "--endpoint", url,
             "--rate", "1000000", "--burst", "1000", "--max-inflight", "64", "--no-progress"]
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    if t.returncode != 0:
        raise RuntimeError(f"run failed with exit code {t.returncode}")
    return rss, t.seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=50_000)
    p.add_argument("--large", type=int, default=200_000)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, fake_server("--ak", AK, "--sk", SK) as url:
        d = Path(tmp)
        results = {}
        for n in (a.small, a.large):
            m = window_manifest(d / f"m{n}.toml", n, "scale_job")
            rss, seconds = run(m, d / f"j{n}", url)
            results[n] = rss
            rows.append([f"run {n:,} requests", f"{n / seconds:,.0f}", f"{seconds:.1f}",
                         f"{rss:.0f}", ""])  # fmt: skip
        ratio = results[a.large] / results[a.small]
        flat = ratio <= 1.25 and results[a.large] < 256
        rows[-1][-1] = f"<= 1.25x of {a.small:,}, < 256 MB: {ratio:.2f}x " + (
            "PASS" if flat else "FAIL"
        )
        rss, seconds = run(d / f"m{a.large}.toml", d / f"j{a.large}", url)
        rows.append([f"resume {a.large:,} done ({2 * a.large:,} records)", "", f"{seconds:.1f}",
                     f"{rss:.0f}", ""])  # fmt: skip
    print(table(
        f"run scale: rate out of the way, 64 in flight ({machine()})",
        ["what", "requests/s", "seconds", "peak RSS MB", "goal"], rows,
    ))  # fmt: skip
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
