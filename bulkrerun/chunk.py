"""What one API request is: a :class:`Chunk`, with ids derived from its content.

A chunk's id is derived from what the service sees of the request: the job name, the
workspace and the body, serialised canonically (sorted keys, no spaces, UTF-8). Not from the
endpoint, the project or the chunk's position in the manifest, so the same request always has
the same id and editing one entry never changes another entry's ids.

A *unit* is what resume decides on. For a window entry the unit is the chunk itself (its id
is the chunk id). For instance entries each instance is a unit, keyed by
``(job_name, job_id, plan_time, submit_time)``, so an instance rerun once is never rerun
because a file was edited and the batches fell differently.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple

ID_HEX = 32  # 128 bits of SHA-256: collisions are not a practical concern at any plan size

Kind = Literal["window", "instances", "select"]


def canonical_json(value: Any) -> bytes:
    """The one serialisation used for bodies and ids: sorted keys, compact, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chunk_id(job_name: str, workspace: str, body: bytes) -> str:
    """Id of a request; ``body`` must already be canonical JSON.

    Equal to the hash of ``canonical_json({"body": ..., "job_name": ..., "workspace": ...})``,
    spliced together without re-serialising the body.
    """
    data = b"".join(
        (
            b'{"body":',
            body,
            b',"job_name":',
            canonical_json(job_name),
            b',"workspace":',
            canonical_json(workspace),
            b"}",
        )
    )
    return hashlib.sha256(data).hexdigest()[:ID_HEX]


def instance_unit_id(job_name: str, job_id: int, plan_time: int, submit_time: int) -> str:
    """Id of one instance as a unit of resume."""
    data = canonical_json([job_name, job_id, plan_time, submit_time])
    return hashlib.sha256(data).hexdigest()[:ID_HEX]


class Chunk(NamedTuple):
    """One API request, ready to send.

    ``body`` is the canonical JSON exactly as sent. ``units`` are the unit ids the request
    covers: ``(id,)`` for a window chunk, one id per instance for an instance batch, in the
    order of ``task_retrys``. ``entry`` names the manifest entry (``window[0]``).

    A named tuple, not a frozen dataclass, for the cost of making one per request (see
    :class:`bulkrerun.outcome.Outcome`; callgrind: 11,500 instructions as a frozen
    dataclass, 3,600 so).
    """

    id: str
    kind: Kind
    entry: str
    job_name: str
    workspace: str
    body: bytes
    units: tuple[str, ...]

    def body_object(self) -> dict[str, Any]:
        """The body as a JSON object (parsed; for reports and ``plan --json``)."""
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed
