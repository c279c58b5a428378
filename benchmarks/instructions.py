"""Instructions per request, counted: bulkrerun against the bare aiohttp loop, without drift.

On a shared machine the time a client takes drifts: identical runs here used between 4.7
and 6.2 s of CPU within minutes, and pairs of runs side by side still spread by a fifth. So
a change worth a few percent cannot be seen in ``throughput.py``. Instruction counts do
not drift: valgrind's callgrind counts every instruction a process executes in user space,
and repeated counts of the same code agree to within about 1 % (what still varies is how
the event loop's work falls into batches).

Each client sends N1 and then N2 requests (default 1,000 and 3,000) to the fake service,
64 in flight, under callgrind; ``(I(N2) - I(N1)) / (N2 - N1)`` is the cost of one request
with start-up cancelled out, and ``I(N1) - N1 x that`` is the start-up. The clients are
those of ``throughput.py``: the bare aiohttp loop (on asyncio's loop, as the goal's
baseline, and on uvloop) and a whole ``bulkrerun run``. The ratio is the bare loop's count
over bulkrerun's: what ``throughput.py``'s ratio would be if instructions were all a
request cost, per request and for a whole run of 60,000.

What it does not count, and so what the wall-clock ratio adds:

- the kernel: system calls, and the journal's fdatasyncs, which bulkrerun's sync helper
  makes in a process of its own (callgrind follows only the process it started);
- waiting. Under callgrind a client runs some fifty times slower, so the service answers at
  once and the client is never idle: its event loop batches differently than in a real run.
- Hashing (chunk ids; signing, with ``--signed``) is overstated: under valgrind, OpenSSL
  does not find the CPU's SHA instructions and runs its generic code.

Needs valgrind (a system package, not a Python one: ``apt install valgrind``).
``make instructions`` runs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import (
    AK,
    CLIENT_CORES,
    ROOT,
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

GOAL_RUN = 60_000  # requests in throughput.py's runs: the "whole run" column
_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(valgrind: str, argv: Sequence[str], env: dict[str, str], out: Path) -> int:
    """User-space instructions of one whole process, counted by callgrind, on the client
    cores. The process must succeed: a failed run's count means nothing."""
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        preexec_fn=lambda: pin(CLIENT_CORES),
        check=False,
    )
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        tail = proc.stderr.decode(errors="replace")[-800:]
        name = " ".join(argv[1:3])
        raise SystemExit(f"{name} failed under callgrind: exit {proc.returncode}\n{tail}")
    out.unlink(missing_ok=True)  # the per-function profile: only the total is used
    return int(found.group(1))


@dataclass(frozen=True)
class Cost:
    """A client's instructions: per request, and at start-up (what does not scale)."""

    per_request: float
    startup: float

    def run(self, n: int) -> float:
        return self.startup + n * self.per_request


def cost(counts: tuple[int, int], sizes: tuple[int, int]) -> Cost:
    (small, large), (n1, n2) = counts, sizes
    per = (large - small) / (n2 - n1)
    return Cost(per, small - n1 * per)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n1", type=int, default=1_000, help="requests of the small run")
    p.add_argument("--n2", type=int, default=3_000, help="requests of the large run")
    p.add_argument("--signed", action="store_true", help="AK/SK-signed, every client")
    a = p.parse_args()
    if not 0 < a.n1 < a.n2:
        p.error("need 0 < --n1 < --n2")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print(
            "instructions.py needs valgrind, which is not installed (it is a system "
            "package: apt install valgrind, dnf install valgrind)",
            file=sys.stderr,
        )
        return 2
    sizes = (a.n1, a.n2)
    costs: dict[str, Cost] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        plans = []
        for n in sizes:
            (d / str(n)).mkdir()
            plans.append(window_plan(d / str(n), n))
        with fake_server(*(("--ak", AK, "--sk", SK) if a.signed else ())) as url:
            clients = {
                "bare aiohttp loop": lambda i: (bare_argv(plans[i][1], url, a.signed), {}),
                "bare aiohttp loop + uvloop": lambda i: (
                    bare_argv(plans[i][1], url, a.signed, uvloop=True),
                    {},
                ),
                "bulkrerun run": lambda i: (
                    run_argv(plans[i][0], d / f"journal-{i}", url),
                    run_env(a.signed),
                ),
            }
            for name, client in clients.items():
                counts = []
                for i in range(2):
                    argv, env = client(i)
                    counts.append(instructions(valgrind, argv, env, d / "callgrind.out"))
                costs[name] = cost((counts[0], counts[1]), sizes)
                print(f"counted: {name}", file=sys.stderr, flush=True)
    print(report(a, costs))
    return 0


def report(a: argparse.Namespace, costs: dict[str, Cost]) -> str:
    bare, ours = costs["bare aiohttp loop"], costs["bulkrerun run"]
    rows = []
    for name, c in costs.items():
        per_request = bare.per_request / c.per_request
        whole = bare.run(GOAL_RUN) / c.run(GOAL_RUN)
        rows.append(
            [
                name,
                f"{c.per_request:,.0f}",
                f"{c.startup / 1e9:,.2f} G",
                f"{per_request:.3f}x" if c is not bare else "",
                f"{whole:.3f}x" if c is not bare else "",
            ]
        )
    tag = "signed" if a.signed else "unsigned"
    own = ours.per_request - bare.per_request
    return (
        table(
            f"instructions (callgrind, user space): {a.n1:,} and {a.n2:,} requests, {tag}, "
            f"64 in flight ({machine()})",
            [
                "client",
                "per request",
                "start-up",
                "bare loop / this, per request",
                f"same, whole run of {GOAL_RUN:,}",
            ],
            rows,
        )
        + f"\nbulkrerun per request: {own:+,.0f} instructions against the bare loop"
    )


if __name__ == "__main__":
    sys.exit(main())
