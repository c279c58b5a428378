"""Where a run's time goes: bulkrerun against the bare aiohttp loop, request for request.

Both send the same N requests (default 30,000 window chunks) at 64 in flight to the fake
service on its own core, as ``throughput.py`` does, twice each:

- once under py-spy (``--nonblocking``: the process is never paused), which samples the
  client's main process while it runs. Each sample goes to the innermost frame that
  belongs to someone: a bulkrerun module, aiohttp and the event loop (one row, see
  ``HTTP``), or the bare loop's own code. Standard-library helpers and generated dataclass
  methods count for their caller; samples taken while a module is imported count as
  start-up, and those of bulkrerun's counting pass (the whole plan, read once before
  anything is sent, for its totals and duplicates) count as that pass.
- once unprofiled, for its wall time and its CPU time read from ``/proc``: the main process
  and, apart, its descendants (bulkrerun's journal sync helper, which does the fdatasyncs).
  The wall time the main process was not on the CPU is split in two: waiting for a CPU
  (runnable, while the sync helper, a kernel thread or another tenant of the machine had the
  core; from ``/proc/PID/schedstat``) and asleep (nothing to do: every request out and no
  answer in, or intents waiting for a commit). Instruction counts (``instructions.py``) see
  neither.

Every figure is per request (microseconds): the difference column is what bulkrerun's
journal, planner, pacing and engine cost on top of the same HTTP work. One caveat: py-spy
counts a process that is runnable but preempted as running. The sync helper preempts the
main process when the one-byte write that wakes it is made, so part of the helper's CPU
also shows in the ``bulkrerun.journal`` row.

py-spy is a development dependency (``make profile`` runs this). It reads the client's
memory from outside, so it needs ptrace permission over its own children.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import (
    AK,
    CLIENT_CORES,
    PY,
    ROOT,
    SERVER_CORE,
    SK,
    bare_argv,
    fake_server,
    machine,
    pin,
    run_argv,
    run_env,
    table,
    window_plan,
)

IMPORTS = "start-up: imports"
COUNTING = "bulkrerun: counting pass before sending"
OTHER = "other (standard library, CLI framework)"
# One row for both: on uvloop the loop's own work is C, charged to the aiohttp frame that
# called it (a write, a timer, a future), so split rows would compare unlike things.
HTTP = "aiohttp and the event loop"
HTTP_PACKAGES = ("aiohttp", "multidict", "yarl", "propcache", "aiohappyeyeballs")
HTTP_PACKAGES += ("asyncio", "uvloop", "anyio")


def owner(path: str) -> str | None:
    """Who a frame's file belongs to, or None for standard-library and generated code."""
    p = path.replace("\\", "/")
    if "/bulkrerun/" in p and p.endswith(".py"):
        return "bulkrerun." + Path(p).stem
    if p.endswith("benchmarks/bare_loop.py"):
        return "the bare loop's own code"
    if any(f"/{package}/" in p for package in HTTP_PACKAGES) or p.endswith("/selectors.py"):
        return HTTP
    return None


def attribute(frames: Sequence[dict[str, object]], stack: Sequence[int]) -> str:
    """The category of one sample (``stack``: frame indices, outermost first)."""
    if any(str(frames[i]["file"]).startswith("<frozen importlib") for i in stack):
        return IMPORTS
    if any(frames[i]["name"] == "count_units" for i in stack):
        return COUNTING
    for i in reversed(stack):
        found = owner(str(frames[i]["file"]))
        if found is not None:
            return found
    return OTHER


def sampled_seconds(speedscope: Path) -> Counter[str]:
    """On-CPU seconds of the client's main process by category, from py-spy's speedscope
    output: of the processes sampled (the pinning wrapper, the client, bulkrerun's sync
    helper), the one with the most samples: the client is on the CPU most of its run, the
    others seldom."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    by_process: dict[str, list[tuple[list[int], float]]] = {}
    for profile in data["profiles"]:
        process = str(profile["name"]).split(" Thread ")[0]
        samples = zip(profile["samples"], profile["weights"], strict=True)
        by_process.setdefault(process, []).extend(samples)
    out: Counter[str] = Counter()
    if by_process:
        for stack, weight in max(by_process.values(), key=len):
            out[attribute(frames, stack)] += weight
    return out


def _name(argv: Sequence[str]) -> str:
    """The client an argv runs, for messages (``-m bulkrerun``, ``benchmarks/bare_loop.py``)."""
    return " ".join(argv[1:3]) if argv[1] == "-m" else argv[1]


def _start(
    argv: Sequence[str], env: dict[str, str], cores: Sequence[int], stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the checkout on ``cores``, its output discarded."""
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=lambda: pin(cores),
    )


def profiled(argv: Sequence[str], env: dict[str, str], rate: int, out: Path) -> Counter[str]:
    """Run ``argv`` on the client cores under py-spy (itself on the server core)."""
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: `make profile` installs the dev tools")
    # py-spy starts a small Python that pins itself and runs the client as its child (an
    # exec would leave py-spy reading the old interpreter); --subprocesses follows it.
    # py-spy exits 0 whatever the client did, so the wrapper writes the client's exit code.
    pin = "import os, pathlib, subprocess, sys; os.sched_setaffinity(0, {%s}); "
    pin += "pathlib.Path(sys.argv[1]).write_text(str(subprocess.call(sys.argv[2:])))"
    cores = ", ".join(map(str, CLIENT_CORES or sorted(os.sched_getaffinity(0))))
    status = out.with_suffix(".exit")
    cmd = [spy, "record", "--nonblocking", "--subprocesses", "--rate", str(rate)]
    cmd += ["--format", "speedscope", "-o", str(out), "--", PY, "-c", pin % cores, str(status)]
    proc = _start([*cmd, *argv], env, SERVER_CORE, stderr=subprocess.PIPE)
    _, stderr = proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(
            f"py-spy could not profile the run (exit {proc.returncode}); it needs ptrace "
            f"permission here: {stderr.decode(errors='replace')[-800:]}"
        )
    if status.read_text() != "0":
        raise SystemExit(f"{_name(argv)} failed under py-spy: exit {status.read_text()}")
    return sampled_seconds(out)


@dataclass(frozen=True)
class CpuTime:
    wall: float
    main: float  # seconds of CPU (user + system) of the main process
    descendants: float  # of the processes it started (the journal's sync helper)
    runnable: float | None  # seconds the main process waited for a CPU; None: not known


def _ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    return 0


def _runnable(pid: int) -> float | None:
    """Seconds ``pid`` has spent runnable but not running (None where the kernel does not
    keep scheduler statistics)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return None


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def cpu_time(argv: Sequence[str], env: dict[str, str]) -> CpuTime:
    """Run ``argv`` on the client cores, unprofiled. Its descendants' CPU, and the main
    process's time waiting for a CPU, are read from /proc every 20 ms while they live (what
    happens in the last 20 ms is missed); the whole tree's CPU comes from wait4 at the end,
    and the main process's is the difference."""
    hz = os.sysconf("SC_CLK_TCK")
    started = time.perf_counter()
    proc = _start(argv, env, CLIENT_CORES)
    seen: dict[int, int] = {}
    runnable: float | None = None
    while True:
        for child in _children(proc.pid):
            seen[child] = max(seen.get(child, 0), _ticks(child))
        if (waited := _runnable(proc.pid)) is not None:
            runnable = waited
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{_name(argv)} failed: exit {os.waitstatus_to_exitcode(status)}")
    total = usage.ru_utime + usage.ru_stime
    descendants = sum(seen.values()) / hz
    return CpuTime(wall, total - descendants, descendants, runnable)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=30_000, help="requests per run (default 30,000)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--signed", action="store_true", help="AK/SK-signed, both clients")
    a = p.parse_args()
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/stat").exists():
        print("profile_run.py reads /proc and pins cores: Linux only", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        m, plan = window_plan(d, a.n)
        with fake_server(*(("--ak", AK, "--sk", SK) if a.signed else ())) as url:
            bare = bare_argv(plan, url, a.signed)
            ours_env = run_env(a.signed)

            def ours(journal: str) -> list[str]:
                return run_argv(m, d / journal, url)

            profiles = {
                "bare": profiled(bare, {}, a.rate, d / "bare.json"),
                "ours": profiled(ours("j-profiled"), ours_env, a.rate, d / "ours.json"),
            }
            cpu = {"bare": cpu_time(bare, {}), "ours": cpu_time(ours("j-timed"), ours_env)}
    print(report(a, profiles, cpu))
    return 0


def report(
    a: argparse.Namespace, profiles: dict[str, Counter[str]], cpu: dict[str, CpuTime]
) -> str:
    per = 1e6 / a.n  # seconds of a run -> microseconds per request

    def row(label: str, bare: float, ours: float) -> list[str]:
        return [label, f"{bare * per:,.1f}", f"{ours * per:,.1f}", f"{(ours - bare) * per:+,.1f}"]

    bare, ours = profiles["bare"], profiles["ours"]
    # What both clients do first, biggest first; then bulkrerun's own modules.
    categories = sorted(
        set(bare) | set(ours), key=lambda c: (c.startswith("bulkrerun"), -ours[c] - bare[c])
    )
    rows = [row(c, bare[c], ours[c]) for c in categories]
    rows.append(row("all sampled (main process, on the CPU)", bare.total(), ours.total()))
    rows.append(["", "", "", ""])
    b, o = cpu["bare"], cpu["ours"]
    rows.append(row("unprofiled run: CPU of the main process", b.main, o.main))
    rows.append(row("unprofiled run: CPU of its sync helper", b.descendants, o.descendants))
    rows.append(row("unprofiled run: wall", b.wall, o.wall))
    if b.runnable is not None and o.runnable is not None:
        # The wall time the main process was not on the CPU, split in two.
        rows.append(row("  of it, the main process waiting for a CPU", b.runnable, o.runnable))
        rows.append(
            row(
                "  of it, the main process asleep",
                max(0.0, b.wall - b.main - b.runnable),
                max(0.0, o.wall - o.main - o.runnable),
            )
        )
    tag = "signed" if a.signed else "unsigned"
    return table(
        f"profile: {a.n:,} requests, {tag}, 64 in flight, microseconds per request; py-spy "
        f"at {a.rate} Hz ({machine()})",
        ["where the time goes", "bare aiohttp loop", "bulkrerun run", "difference"],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
