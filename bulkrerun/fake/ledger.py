"""The fake service's ledger: every rerun it accepted, in order, in memory and on disk.

The ledger is how a test proves "each chunk accepted exactly once": an entry carries the
``chunk_id`` computed from what the server received, with the same function the client uses
(:func:`bulkrerun.chunk.chunk_id` over the canonical body), so ledger and journal can be
matched id for id. With a path, each entry is also appended to a JSON-lines file and flushed
(not fsynced: the ledger is a test instrument, and an fsync per request would make the fake
the bottleneck of the benchmarks it serves).

Speed: without a file, a request only appends a tuple of strings (the raw body included) and
the entries are built when ``entries`` is read. A tuple of strings is untracked by the garbage
collector, whereas tens of thousands of retained dicts and entries would make every full
collection walk them all; building the entries late also keeps the canonical serialisation
and hashing of the chunk id off the request path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from bulkrerun.chunk import canonical_json, chunk_id

__all__ = ["Ledger", "LedgerEntry", "read_ledger"]

Mode = Literal["A", "B"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One accepted rerun. ``status`` is its answer's: 200, 504 for a backend timeout after
    acceptance, or None when the connection was closed without an answer (``dropped``).

    ``at`` is the server's wall time of acceptance, in seconds. ``body`` is the parsed JSON
    body (a dict, so an entry compares but does not hash).
    """

    project_id: str
    job_name: str
    workspace: str
    body: dict[str, Any]
    chunk_id: str
    request_id: str
    mode: Mode
    at: float
    status: int | None = 200

    @property
    def dropped(self) -> bool:
        return self.status is None

    def to_json(self) -> str:
        """The entry as one JSON object (a line of the ledger file)."""
        fields = {
            "project_id": self.project_id,
            "job_name": self.job_name,
            "workspace": self.workspace,
            "body": self.body,
            "chunk_id": self.chunk_id,
            "request_id": self.request_id,
            "mode": self.mode,
            "dropped": self.dropped,
            "status": self.status,
            "at": self.at,
        }
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


# What the request path records: project, job, workspace, raw body, request id, mode,
# wall time, the answer's status (None: dropped).
_Raw = tuple[str, str, str, bytes, str, Mode, float, int | None]


def _build(raw: _Raw) -> LedgerEntry:
    project_id, job_name, workspace, body, request_id, mode, at, status = raw
    parsed: dict[str, Any] = json.loads(body)
    return LedgerEntry(
        project_id=project_id,
        job_name=job_name,
        workspace=workspace,
        body=parsed,
        chunk_id=chunk_id(job_name, workspace, canonical_json(parsed)),
        request_id=request_id,
        mode=mode,
        at=at,
        status=status,
    )


class Ledger:
    """Accepted reruns in memory (``entries``) and, with a ``path``, in a JSON-lines file."""

    __slots__ = ("_built", "_file", "_pending", "path")

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._built: list[LedgerEntry] = []
        self._pending: list[_Raw] = []
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def record(
        self,
        project_id: str,
        job_name: str,
        workspace: str,
        body: bytes,
        request_id: str,
        mode: Mode,
        at: float,
        status: int | None,
    ) -> None:
        """Record one accepted rerun; ``body`` is the raw request body, already validated,
        ``status`` its answer's (None: the connection is dropped without one)."""
        raw: _Raw = (project_id, job_name, workspace, body, request_id, mode, at, status)
        if self._file is None:
            self._pending.append(raw)
            return
        entry = _build(raw)
        self._built.append(entry)
        self._file.write(entry.to_json() + "\n")
        self._file.flush()

    @property
    def entries(self) -> list[LedgerEntry]:
        """Every accepted rerun, in order of acceptance."""
        if self._pending:
            self._built.extend(_build(raw) for raw in self._pending)
            self._pending.clear()
        return self._built

    def __len__(self) -> int:
        return len(self._built) + len(self._pending)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_ledger(path: Path | str) -> list[dict[str, Any]]:
    """The entries of a ledger file, as dicts, in order.

    A last line cut short (the server was killed while writing it) is skipped; a bad line
    before the last one is an error, because it means the file was damaged or edited.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not a JSON object") from None
    return entries
