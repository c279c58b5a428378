"""Helpers shared by the benchmarks: start the fake service as a process on its own core,
time whole processes, read peak memory, print tables.

Everything runs on loopback. The server and the client are pinned to different cores
where the machine has two or more, so the client's cost is not hidden by the server's.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CORE = CORES[-1:] if len(CORES) >= 2 else []
# Fixed fake credentials shared by the benchmarks and the fake services they start.
AK, SK = "BENCHAK0000000000000", "bench-secret-key-not-real"
CLIENT_CORES = CORES[:-1] if len(CORES) >= 2 else []

# bulkrerun is timed as installed: pip byte-compiles an installed package, so its processes
# start from bytecode like aiohttp's. A checkout installed editable and run with
# PYTHONDONTWRITEBYTECODE set (as on the development machine) would instead compile every
# module again in every timed process: 60-130 ms of start-up measured, charged to bulkrerun
# alone. compile_dir skips what is up to date.
compileall.compile_dir(ROOT / "bulkrerun", quiet=1)


def window_manifest(path: Path, n: int, job_name: str, extra: str = "") -> Path:
    """A manifest of one window of ``n`` one-minute chunks (``n`` requests) from 2024-01-01."""
    begin = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    path.write_text(
        "version = 1\n[defaults]\n"
        'workspace = "62fbba734e634c5087656fc3ff7adf34"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        f'[[window]]\njob_name = "{job_name}"\nbegin = {begin}\nend = {begin + n * 60_000}\n'
        f'chunk = "1m"\n{extra}'
    )
    return path


PROJECT = "bench"


def run_env(signed: bool) -> dict[str, str]:
    """The environment of a ``bulkrerun run`` against the benchmarks' fake service."""
    env = {"BULKRERUN_PROJECT_ID": PROJECT}
    env.update({"BULKRERUN_AK": AK, "BULKRERUN_SK": SK} if signed else {"BULKRERUN_TOKEN": "t"})
    return env


def run_argv(manifest: Path, journal: Path, url: str) -> list[str]:
    """A whole ``bulkrerun run`` of ``manifest``: rate out of the way, 64 in flight."""
    return [
        PY,
        "-m",
        "bulkrerun",
        "run",
        str(manifest),
        "--journal",
        str(journal),
        "--endpoint",
        url,
        "--rate",
        "1000000",
        "--burst",
        "1000",
        "--max-inflight",
        "64",
        "--no-progress",
    ]


def bare_argv(plan: Path, url: str, signed: bool, uvloop: bool = False) -> list[str]:
    """The bare aiohttp loop (``bare_loop.py``) sending the requests of ``plan --json``."""
    argv = [PY, "benchmarks/bare_loop.py", str(plan), url, "--project", PROJECT]
    argv += ["--sign", AK, SK] if signed else []
    argv += ["--uvloop"] if uvloop else []
    return argv


def window_plan(d: Path, n: int) -> tuple[Path, Path]:
    """A manifest of ``n`` window requests in ``d``, and its ``plan --json`` (what the bare
    loop sends)."""
    manifest = window_manifest(d / "bench.toml", n, "bench_job", "concurrent = 4\n")
    plan = d / "plan.jsonl"
    with plan.open("wb") as f:
        subprocess.run(
            [PY, "-m", "bulkrerun", "plan", str(manifest), "--json"], stdout=f, check=True
        )
    return manifest, plan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cores: Sequence[int]) -> None:
    """Keep this process (a preexec_fn: the child about to start) on ``cores``."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """``bulkrerun fake-server`` as a process on the server core; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "bulkrerun", "fake-server", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: pin(SERVER_CORE),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if "listening" not in line:
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass(frozen=True)
class Timed:
    seconds: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> Timed:
    """Run a whole process on the client cores; wall time and its peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        env={**os.environ, **(env or {})},
        preexec_fn=lambda: pin(CLIENT_CORES),
        cwd=ROOT,
        check=False,
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all waited children: only meaningful when this
    # child set a new maximum, so benchmarks measure memory in a fresh interpreter each time.
    return Timed(
        seconds,
        max(after, before) / 1024,
        proc.returncode,
        proc.stdout.decode(),
        proc.stderr.decode(),
    )


def peak_rss_of(argv: Sequence[str]) -> tuple[float, Timed]:
    """Peak RSS in MB of one process, measured by a fresh helper interpreter around it."""
    code = (
        "import resource,subprocess,sys,time;t=time.perf_counter();"
        "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(time.perf_counter()-t, u.ru_maxrss, r.returncode)"
    )
    t = timed([PY, "-c", code, *argv])
    seconds, rss_kb, rc = t.stdout.split()
    return int(rss_kb) / 1024, Timed(float(seconds), int(rss_kb) / 1024, int(rc), "", t.stderr)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if m:
            cpu = m.group(1).strip()
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
