"""The service's own vocabulary, as the public API reference gives it.

One place for the enumerations of the rerun call and the instance list, read both by the
manifest's validation (what a user may write) and by the fake service (what it accepts), so
the two cannot drift apart. Ordered as the reference lists them: messages show them so.
"""

from __future__ import annotations

RETRY_LOCATIONS = ("firstNode", "errorNode", "specifiedNode")
RETRY_TASK_VERSIONS = ("original_version", "current_version")
INSTANCE_STATUSES = (
    "waiting",
    "running",
    "success",
    "fail",
    "running-exception",
    "pause",
    "manual-stop",
    "skip-by-depend",
    "freeze",
)
FAILED_STATUSES = frozenset({"fail", "running-exception"})
"""The instance statuses of a run that failed."""
