"""A local stand-in for the DataArts Factory service, for the demo, the tests and benchmarks.

``FakeServer`` runs it in-process on loopback (``async with FakeServer(config) as srv``) and
``serve`` runs it until a signal (``bulkrerun fake-server``). It validates requests as the
public reference describes (``validate``), checks AK/SK signatures or a token, keeps a ledger of
every accepted rerun (``ledger``), injects faults (``faults``) and, given a ``Catalog``, models
job instances whose reruns go through waiting, running and a final status (``catalog``).
"""

from __future__ import annotations

from bulkrerun.fake.catalog import DEMO_ANCHOR_MS, Catalog, Instances, JobSpec, Outage
from bulkrerun.fake.ledger import LedgerEntry, read_ledger
from bulkrerun.fake.server import FakeConfig, FakeServer, Stats, serve

__all__ = [
    "DEMO_ANCHOR_MS",
    "Catalog",
    "FakeConfig",
    "FakeServer",
    "Instances",
    "JobSpec",
    "LedgerEntry",
    "Outage",
    "Stats",
    "read_ledger",
    "serve",
]
