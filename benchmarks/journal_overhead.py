"""Journal overhead: the same run through the real engine and transport, with the durable
journal and with a no-op journal, alternated in one session.

Against ``bulkrerun fake-server`` on its own core, N window requests at 64 in flight, rate out
of the way. Each configuration runs in a fresh interpreter (``--child``) pinned to the client
core; the table shows median requests/s and CPU seconds, and the journal's cost as the ratio
of the two throughputs and as CPU microseconds per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, fake_server, machine, table, timed, window_manifest


class NoJournal:
    """Accepts every record and keeps none: the baseline."""

    async def intend(self, chunk: object, attempt: int, wall: float) -> None:
        return None

    def outcome(self, *args: object) -> None:
        return None

    async def flush(self) -> None:
        return None

    def was_held(self, chunk: object) -> bool:
        return False

    def held_units(self, chunk: object) -> int:
        return 0


def child(manifest: Path, url: str, journal_path: str) -> None:
    import anyio

    from bulkrerun.engine import Engine
    from bulkrerun.journal import Binding, Journal
    from bulkrerun.manifest import load_manifest
    from bulkrerun.pacing import Pacer, PacingConfig
    from bulkrerun.planner import plan
    from bulkrerun.transport import Auth, HttpTransport

    async def main() -> None:
        m = load_manifest(manifest)
        journal: object = NoJournal()
        if journal_path != "-":
            journal = Journal.open(
                Path(journal_path), Binding("bench", url), tool_version="b", live_details=False
            )  # as `bulkrerun run` opens it
        transport = HttpTransport(
            endpoint=url, project_id="bench", auth=Auth(token="t"), max_inflight=64
        )
        async with transport:
            engine = Engine(
                iter(plan(m)),
                transport=transport,
                journal=journal,  # type: ignore[arg-type]
                pacer=Pacer(PacingConfig(rate=1e6, burst=1000)),
                max_inflight=64,
            )
            t0, c0 = time.perf_counter(), time.process_time()
            result = await engine.run()
            print(result.done, time.perf_counter() - t0, time.process_time() - c0)
        if isinstance(journal, Journal):
            journal.close()

    anyio.run(main, backend_options={"use_uvloop": True})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(Path(a.child[0]), a.child[1], a.child[2])
        return 0
    results: dict[str, list[tuple[float, float]]] = {"no-op journal": [], "durable journal": []}
    with tempfile.TemporaryDirectory() as tmp, fake_server() as url:
        d = Path(tmp)
        m = window_manifest(d / "m.toml", a.n, "overhead_job")
        for rep in range(a.reps + 1):  # the first round warms the server up; not counted
            for name in results:
                j = "-" if name.startswith("no-op") else str(d / f"j{rep}")
                t = timed([PY, __file__, "--child", str(m), url, j])
                done, seconds, cpu = t.stdout.split()
                assert int(done) == a.n, t.stderr
                if rep:
                    results[name].append((a.n / float(seconds), float(cpu)))
    rows = []
    med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
           for k, v in results.items()}  # fmt: skip
    base_rate, base_cpu = med["no-op journal"]
    for name, (rate, cpu) in med.items():
        rows.append([name, f"{rate:,.0f}", f"{cpu:.2f}", f"{rate / base_rate:.2f}",
                     f"{(cpu - base_cpu) / a.n * 1e6:+.0f}"])  # fmt: skip
    print(table(
        f"journal overhead: {a.n:,} requests, 64 in flight, median of {a.reps} ({machine()})",
        ["journal", "requests/s", "CPU s", "ratio", "CPU us/request"], rows,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
