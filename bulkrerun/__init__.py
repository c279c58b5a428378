"""bulkrerun: rerun Huawei Cloud DataArts Factory job instances in bulk, paced and journaled.

The public API is small: load a manifest, plan it, run it. The CLI (``bulkrerun``) is the
main way in; these names are for scripts and tests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """``__version__`` from the package metadata, read on first use: importing
    importlib.metadata costs start-up time that ``plan --json`` need not pay."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("bulkrerun")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0"
    raise AttributeError(f"module 'bulkrerun' has no attribute {name!r}")
