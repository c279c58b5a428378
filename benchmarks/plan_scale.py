"""How fast ``plan --json`` streams a plan of over a million requests, and in how much memory.

Usage::

    python benchmarks/plan_scale.py [--requests 1200000] [--repeat 1] [--keep]

Builds a manifest in a temporary folder (two one-second-chunk windows, one with downstream
jobs, and an instance file), then measures, each in a child process of its own:

* ``write_json_lines``: the planner's JSON stream into ``/dev/null``, timed inside the child
  (manifest validation excluded);
* ``cli``: the real command ``python -m bulkrerun plan M --json > /dev/null``, timed from
  outside, start-up included. Skipped (with the reason) when ``bulkrerun/cli.py`` is missing
  or the command fails.

Peak memory is the child's maximum resident set size, as ``getrusage(RUSAGE_CHILDREN)``
reports it; ``os.wait4`` returns those figures for exactly one child, so a row is never
charged for another row's peak. Prints a table with the goals (>= 400,000 requests/s,
< 64 MB) and PASS/FAIL; exits 1 if a goal is missed. With ``--repeat N`` each row keeps its
best run: the machine's other load only ever slows a run down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_RATE = 400_000
GOAL_RSS_MB = 64
T0 = 1732579200000  # 2024-11-26T08:00:00+08:00
WS = "62fbba734e634c5087656fc3ff7adf34"
INSTANCES = 20_000  # in the instance file, batched by 100: 200 requests


@dataclass(frozen=True)
class Row:
    name: str
    requests: int
    seconds: float
    rss_mb: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def passed(self) -> bool:
        return self.rate >= GOAL_RATE and self.rss_mb < GOAL_RSS_MB


def build(folder: Path, requests: int) -> Path:
    """A manifest of about ``requests`` requests, mostly one-second window chunks."""
    first = requests * 6 // 10
    second = requests - first - INSTANCES // 100
    with (folder / "failed.csv").open("w") as out:
        out.write("job_id,plan_time,submit_time\n")
        out.writelines(
            f"{900000 + i % 7},{T0 + i * 1000},{T0 - 86_400_000}\n" for i in range(INSTANCES)
        )
    manifest = folder / "scale.toml"
    manifest.write_text(
        f"""\
version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"

[[window]]
job_name = "ods_orders"
begin = {T0}
end = {T0 + first * 1000}
chunk = "1s"
concurrent = 8
jobs = [ {{ job_name = "dwd_orders", workspace_id = "{WS}" }} ]

[[instances]]
job_name = "ods_payments"
file = "failed.csv"

[[window]]
job_name = "ods_refunds"
begin = {T0}
end = {T0 + second * 1000}
chunk = "1s"
"""
    )
    return manifest


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_child(command: list[str], stdout: int | None) -> tuple[int, float, float, bytes]:
    """Run ``command``; (exit code, wall seconds, peak RSS in MB, its stdout if piped)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, env=child_env())
    output = proc.stdout.read() if proc.stdout else b""
    errors = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        output = errors
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return proc.returncode, seconds, usage.ru_maxrss / scale, output


def measure_null_sink(manifest: Path) -> Row:
    code, _, rss, output = run_child(
        [sys.executable, __file__, "--child-null-sink", str(manifest)], subprocess.PIPE
    )
    if code != 0:
        return Row("write_json_lines", 0, 0.0, rss, f"failed: {output.decode()[-200:]}")
    report = json.loads(output)
    return Row("write_json_lines", report["requests"], report["seconds"], rss)


def measure_cli(manifest: Path, requests: int) -> Row:
    if not (REPO / "bulkrerun" / "cli.py").exists():
        return Row("cli plan --json", 0, 0.0, 0.0, "skipped: bulkrerun/cli.py does not exist yet")
    command = [sys.executable, "-m", "bulkrerun", "plan", str(manifest), "--json"]
    with open(os.devnull, "wb") as null:
        code, seconds, rss, errors = run_child(command, null.fileno())
    if code != 0:
        reason = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return Row("cli plan --json", 0, 0.0, rss, f"skipped: exit {code}: {reason[0][:120]}")
    return Row("cli plan --json", requests, seconds, rss, "start-up included")


def child_null_sink(manifest_path: str) -> None:
    """In the child: validate, then time the JSON stream into /dev/null."""
    from bulkrerun.manifest import load_manifest
    from bulkrerun.planner import plan, write_json_lines

    manifest = load_manifest(Path(manifest_path))
    with open(os.devnull, "wb") as null:
        started = time.perf_counter()
        count = write_json_lines(plan(manifest), None, null)
        seconds = time.perf_counter() - started
    print(json.dumps({"requests": count, "seconds": seconds}))


def best(rows: list[Row]) -> Row:
    usable = [row for row in rows if row.requests]
    return max(usable, key=lambda row: row.rate) if usable else rows[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_200_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the best is kept")
    parser.add_argument("--keep", action="store_true", help="keep the generated manifest")
    parser.add_argument("--child-null-sink", metavar="MANIFEST", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_null_sink:
        child_null_sink(args.child_null_sink)
        return 0

    folder = Path(tempfile.mkdtemp(prefix="bulkrerun-plan-scale-"))
    try:
        manifest = build(folder, args.requests)
        sys.path.insert(0, str(REPO))
        from bulkrerun.manifest import load_manifest
        from bulkrerun.planner import summarize

        requests = sum(s.requests for s in summarize(load_manifest(manifest)))
        print(
            f"manifest: {requests:,} requests ({manifest.name}, {INSTANCES:,} instances in a file)"
        )
        rows = [
            best([measure_null_sink(manifest) for _ in range(args.repeat)]),
            best([measure_cli(manifest, requests) for _ in range(args.repeat)]),
        ]
    finally:
        if args.keep:
            print(f"kept: {folder}")
        else:
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()

    print(
        f"\n{'row':<18} {'requests':>10} {'seconds':>8} {'req/s':>10} {'peak RSS':>9}  "
        f"goal: >= {GOAL_RATE:,} req/s, < {GOAL_RSS_MB} MB"
    )
    failed = False
    for row in rows:
        if not row.requests:
            print(f"{row.name:<18} {'-':>10} {'-':>8} {'-':>10} {'-':>9}  {row.note}")
            continue
        verdict = "PASS" if row.passed else "FAIL"
        failed |= not row.passed
        note = f" ({row.note})" if row.note else ""
        print(
            f"{row.name:<18} {row.requests:>10,} {row.seconds:>8.2f} {row.rate:>10,.0f} "
            f"{row.rss_mb:>6.1f} MB  {verdict}{note}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
