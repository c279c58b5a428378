"""bulkrerun: rerun Huawei Cloud DataArts Factory job instances in bulk, paced and journaled.

The public API is small: load a manifest, plan it, run it. The CLI (``bulkrerun``) is the
main way in; these names are for scripts and tests.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bulkrerun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
