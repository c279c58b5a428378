"""What ``run --watch`` saw of each rerun instance: the sidecar file ``PATH.watch``.

Kept apart from :mod:`bulkrerun.verify` (which talks to the service) so that ``report`` can
show the final instance status next to the API outcome without importing any HTTP code.
One JSON line per instance seen in a final status, mode 0600 like the journal. It informs;
it decides nothing, so it is not fsynced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WatchRecord", "read_watch", "watch_path"]


def watch_path(journal_path: Path) -> Path:
    """The sidecar file where :func:`watch` records what it saw: ``PATH.watch``."""
    return journal_path.with_name(journal_path.name + ".watch")


@dataclass(frozen=True, slots=True)
class WatchRecord:
    """One instance seen in a final status after our rerun (a line of ``PATH.watch``)."""

    unit: str
    job_name: str
    plan_time: int
    job_id: int
    instance_id: int | None
    status: str
    submit_time: int
    start_time: int
    end_time: int
    wall: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "t": "instance",
                "unit": self.unit,
                "job_name": self.job_name,
                "plan_time": self.plan_time,
                "job_id": self.job_id,
                "instance_id": self.instance_id,
                "status": self.status,
                "submit_time": self.submit_time,
                "start_time": self.start_time,
                "end_time": self.end_time,
                "wall": round(self.wall, 3),
            },
            separators=(",", ":"),
        )


def read_watch(journal_path: Path) -> dict[str, list[WatchRecord]]:
    """What :func:`watch` recorded for a journal: unit -> the final status of each of its
    instances (one for an instance unit, those of the window for a window unit). The latest
    sighting of an instance wins; a torn, foreign or undecodable line is skipped. Empty
    without a file, or with one that cannot be read (a directory in its place, no
    permission): it only informs, and a report or status must not fail for it."""
    latest: dict[tuple[str, str, int], WatchRecord] = {}
    try:
        f = watch_path(journal_path).open(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    with f:
        for line in f:
            try:
                obj = json.loads(line)
                if obj.get("t") != "instance":
                    continue
                record = WatchRecord(
                    unit=str(obj["unit"]),
                    job_name=str(obj["job_name"]),
                    plan_time=int(obj["plan_time"]),
                    job_id=int(obj["job_id"]),
                    instance_id=None if obj.get("instance_id") is None else int(obj["instance_id"]),
                    status=str(obj["status"]),
                    submit_time=int(obj["submit_time"]),
                    start_time=int(obj["start_time"]),
                    end_time=int(obj["end_time"]),
                    wall=float(obj["wall"]),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            latest[(record.unit, record.job_name, record.plan_time)] = record
    out: dict[str, list[WatchRecord]] = {}
    for record in latest.values():
        out.setdefault(record.unit, []).append(record)
    return out
