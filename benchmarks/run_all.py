"""``make bench``: every benchmark in turn, then one summary of their goals.

Each script prints its own table (with the baseline measured in the same run where there is
one) and exits 1 if a goal is missed; this prints them all and a closing summary.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = [
    ("plan scale (1.2 M requests)", ["plan_scale.py", "--repeat", "3"]),
    ("throughput vs bare aiohttp and the SDK", ["throughput.py"]),
    ("quota utilisation", ["quota.py"]),
    ("run scale and resume", ["run_scale.py"]),
    ("journal: overhead in a run", ["journal_overhead.py"]),
    ("journal: resume from 1,000,000 records", ["journal_resume.py"]),
]


def main() -> int:
    summary = []
    for title, argv in SUITE:
        print(f"\n=== {title} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(
            [sys.executable, str(HERE / argv[0]), *argv[1:]], cwd=HERE.parent
        ).returncode
        summary.append((title, code, time.perf_counter() - t0))
    print("\n=== summary ===")
    for title, code, seconds in summary:
        print(f"{'PASS' if code == 0 else 'FAIL'}  {title}  ({seconds:.0f} s)")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
