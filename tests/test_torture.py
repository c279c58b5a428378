"""Crash torture: ``run`` is ``kill -9``ed at random moments many times, then resumed to the
end. The fake service's ledger proves what the service accepted; the journal must agree.

Guarantees checked (CONTRACT.md, "Chunks and the journal"):
- no unit is accepted twice without ``--resend-held``;
- every unit ends done, failed or held (none lost);
- every unit the journal says is done was accepted exactly once;
- with ``--resend-held`` the only units accepted twice are held ones.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from bulkrerun.chunk import instance_unit_id
from bulkrerun.journal import UnitState, read_state
from tests.conftest import Cli, Service, write_manifest

pytestmark = pytest.mark.slow

KILLS = 24


def manifest(tmp: Path) -> Path:
    items = ",\n".join(
        f"{{ job_id = {1000 + i}, plan_time = {1732600000000 + i * 60000}, "
        f"submit_time = 1732239754684 }}"
        for i in range(420)
    )
    return write_manifest(
        tmp / "m.toml",
        f"""
[[window]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732597200000
chunk = "1m"
concurrent = 2

[[instances]]
job_name = "ods_payments"
batch = 7
items = [
{items}
]
""",
    )  # 300 window units + 420 instance units in 60 batches


def accepted_units(ledger: list[dict[str, object]]) -> Counter[str]:
    units: Counter[str] = Counter()
    for e in ledger:
        body = e["body"]
        assert isinstance(body, dict)
        if "task_retrys" in body:
            for t in body["task_retrys"]:
                units[
                    instance_unit_id(
                        str(e["job_name"]), t["job_id"], t["plan_time"], t["submit_time"]
                    )
                ] += 1
        else:
            units[str(e["chunk_id"])] += 1
    return units


def torture(cli: Cli, srv: Service, tmp: Path, seed: int, *, drops: bool = False) -> None:
    rng = random.Random(seed)
    m = manifest(tmp)
    j = tmp / "torture.journal"
    args = ["run", str(m), "--journal", str(j), "--burst", "4", "--max-inflight", "16",
            "--timeout", "3", "--no-progress"]  # fmt: skip
    # Slow while being killed, fast to finish. Each killed run sends its burst and then 15 a
    # second for what the kill (0.4-1.6 s after the start) leaves it after start-up: the
    # service had accepted 206-250 of the plan's 360 requests after 24 kills. At 25 a second
    # a quick start-up let the plan end before the 20th kill, and the test failed.
    slow, fast = ["--rate", "15"], ["--rate", "400"]
    kills = 0
    while kills < KILLS:
        proc = cli.popen(*args, *slow, url=srv.url)
        time.sleep(rng.uniform(0.4, 1.6))
        if proc.poll() is not None:  # finished before the kill: the plan is done
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
    final = cli(*args, *fast, url=srv.url)
    assert final.returncode in (0, 1), final.stderr
    assert kills >= 20, "the run should have been killed many times mid-way"

    ledger = srv.ledger()
    accepted = accepted_units(ledger)
    _, state = read_state(j)
    units = state.units
    assert len(units) == 720, "every unit ends done, failed or held"
    assert max(accepted.values()) == 1, "no unit accepted twice without --resend-held"
    done = {u for u, s in units.items() if s is UnitState.DONE}
    held = {u for u, s in units.items() if s is UnitState.HELD}
    assert done <= set(accepted), "a unit recorded done was accepted by the service"
    assert not {u for u, s in units.items() if s is UnitState.FAILED}
    # what the service accepted but the journal does not call done must be held
    assert set(accepted) - done <= held
    status = json.loads(cli("status", str(j), "--json").stdout)
    assert status["pending"] == 0
    assert status["held"] == len(held)

    dropped = {e["chunk_id"] for e in ledger if e["dropped"]}
    if drops:
        assert dropped, "the seed should drop some connections"
        assert held, "dropped connections leave units held"
    if held:
        before = Counter(accepted)
        resend = cli(*args, *fast, "--resend-held", url=srv.url)
        assert resend.returncode in (0, 1), resend.stderr
        after = accepted_units(srv.ledger())
        twice = {u for u, n in after.items() if n > 1}
        assert twice <= held, "with --resend-held, only held units may run twice"
        assert all(after[u] == before[u] for u in done)


def test_kill_9_at_random_moments(cli: Cli, fake_service: type[Service], tmp_path: Path) -> None:
    srv = fake_service("--latency-ms", "20")
    torture(cli, srv, tmp_path, seed=1)


def test_kill_9_with_connections_dropped_after_accept(
    cli: Cli, fake_service: type[Service], tmp_path: Path
) -> None:
    srv = fake_service("--latency-ms", "20", "--drop-after-accept", "0.05", "--seed", "5")
    torture(cli, srv, tmp_path, seed=2, drops=True)
