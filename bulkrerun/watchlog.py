"""What ``run --watch`` saw of each rerun instance: the sidecar file ``PATH.watch``.

Kept apart from :mod:`bulkrerun.verify` (which talks to the service) so that ``report`` can
show the final instance status next to the API outcome without importing any HTTP code.
One JSON line per instance seen in a final status, mode 0600 like the journal. It informs;
it decides nothing, so it is not fsynced.

Its lines: ``"t": "instance"`` (:class:`WatchRecord`), and ``"t": "finished"``: ``unit``,
``run`` (the number of the run whose watch it was), ``journal`` and ``wall``, once that
watch has seen every rerun of the unit in a final status (:func:`finished_line`). Both
kinds name their journal (``journal``: the ``created`` of its header), and readers skip the
lines of another: a journal removed and begun again at the same path, the same manifest
with it, has the old one's unit ids, and its sidecar goes on from the old one's lines.
Instance lines written before they named it are read whatever the journal, as they were.

Every watch follows the journal's done units all over again, so a watch stopped early does
not know what an earlier one saw: ``status`` counts a unit's reruns as seen to finish when
any watch saw them so (:func:`units_seen_finished`). Sidecars written before these lines
have none: the last watch's own count stands for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bulkrerun.chunk import ID_HEX

__all__ = ["WatchRecord", "finished_line", "read_watch", "units_seen_finished", "watch_path"]


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

    def to_json(self, journal: float) -> str:
        """The sidecar's line (no newline), of the journal created at ``journal`` (its
        header's ``created``; not kept in the record: a reader skips the lines of another)."""
        return json.dumps(
            {
                "t": "instance",
                "unit": self.unit,
                "journal": round(journal, 3),
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


def read_watch(journal_path: Path, journal: float | None = None) -> dict[str, list[WatchRecord]]:
    """What :func:`watch` recorded for a journal: unit -> the final status of each of its
    instances (one for an instance unit, those of the window for a window unit). The latest
    sighting of an instance wins; a torn, foreign or undecodable line is skipped. Empty
    without a file, or with one that cannot be read (a directory in its place, no
    permission): it only informs, and a report or status must not fail for it.

    ``journal``: the ``created`` of the journal's header; the lines that name another
    journal are skipped (those that name none, written before lines named it, are read).
    None reads them all."""
    ours = None if journal is None else round(journal, 3)
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
                if ours is not None and (of := obj.get("journal")) is not None and of != ours:
                    continue  # of a journal removed before this one began at its path
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


def finished_line(unit: str, run: int, journal: float, wall: float) -> str:
    """The line saying that run ``run``'s watch saw every rerun of ``unit`` reach a final
    status (no newline). ``journal``: the ``created`` of the journal's header, which tells
    its lines from those of an earlier journal at the same path (see
    :func:`units_seen_finished`)."""
    return json.dumps(
        {
            "t": "finished",
            "unit": unit,
            "run": run,
            "journal": round(journal, 3),
            "wall": round(wall, 3),
        },
        separators=(",", ":"),
    )


def units_seen_finished(journal_path: Path, up_to_run: int, journal: float) -> int:
    """How many units the watches of the runs numbered ``up_to_run`` or less saw finish
    (every rerun of them in a final status), each counted once however many watches saw it.

    Of the journal created at ``journal`` (its header's ``created``) only: a journal removed
    and begun again at the same path, the same manifest with it, has the same unit ids and
    run numbers, and its sidecar goes on from the old one's lines. Counted, they said that
    the new watches had seen reruns finish that they had not seen at all.

    Those runs' done units were done for every later watch too (a done unit is never sent
    again), so each of them is among the units a later watch followed. Read line by line,
    keeping a set of the units alone, as 128-bit numbers where they are the planner's ids
    (44 bytes apiece, where the text takes 81): 20 MB for 200,000 units. 0 without a file
    or with one that cannot be read, as :func:`read_watch`."""
    seen: set[int | str] = set()
    ours = round(journal, 3)
    try:
        f = watch_path(journal_path).open("rb")
    except OSError:
        return 0
    with f:
        for line in f:
            if (m := _FINISHED.match(line)) is not None:  # as finished_line writes it
                if int(m[2]) <= up_to_run and float(m[3]) == ours:
                    seen.add(int(m[1], 16))
                continue
            if b'"finished"' not in line:  # an instance's line
                continue
            try:
                obj = json.loads(line)
                unit, run, of = obj["unit"], obj["run"], obj["journal"]
            except (ValueError, KeyError, TypeError):
                continue
            kept = obj.get("t") == "finished" and isinstance(unit, str) and type(run) is int
            if kept and run <= up_to_run and isinstance(of, int | float) and of == ours:
                seen.add(_compact(unit))
    return len(seen)


# A finished line as :func:`finished_line` writes it, of one of the planner's unit ids.
_FINISHED = re.compile(
    rb'\{"t":"finished","unit":"([0-9a-f]{%d})","run":([0-9]{1,18}),"journal":([0-9]{1,16}(?:\.[0-9]{1,17})?),'
    % ID_HEX
)


def _compact(unit: str) -> int | str:
    """A unit id as a number when it is one of the planner's (lowercase hex, the text back
    exactly from the number), else as it is: no two ids are taken for one."""
    if len(unit) == ID_HEX:
        try:
            n = int(unit, 16)
        except ValueError:
            return unit
        if f"{n:0{ID_HEX}x}" == unit:
            return n
    return unit
