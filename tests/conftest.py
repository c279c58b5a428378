"""Shared fixtures: the anyio backend (asyncio: aiohttp runs on it), the fake service as a
real process on 127.0.0.1 (port 0), and the CLI run as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AK, SK = "TESTAK00000000000000", "test-secret-key-0123456789abcdef"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WORKSPACE = "62fbba734e634c5087656fc3ff7adf34"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any bulkrerun or SDK setting of the machine, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULKRERUN_", "CLOUD_SDK_")) and k != "COLUMNS"
    }
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


@dataclass
class Service:
    """A ``bulkrerun fake-server`` process."""

    url: str
    ledger_path: Path
    proc: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)

    def ledger(self) -> list[dict[str, Any]]:
        if not self.ledger_path.exists():
            return []
        with self.ledger_path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def accepted_ids(self) -> list[str]:
        return [e["chunk_id"] for e in self.ledger()]

    def wait_accepted(self, n: int, timeout: float = 60) -> int:
        """Wait (a run going on meanwhile) until the service has accepted at least ``n``
        reruns; returns how many. Fails the test if it has not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (accepted := len(self.ledger())) < n:
            assert time.monotonic() < deadline, (
                f"{accepted} reruns accepted in {timeout} s, not {n}"
            )
            time.sleep(0.05)
        return accepted


@pytest.fixture
def fake_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start fake services: ``fake_service("--p429", "0.1")``; all stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, auth: bool = True) -> Service:
        ledger = tmp_path / f"ledger-{len(procs)}.jsonl"
        argv = [sys.executable, "-m", "bulkrerun", "fake-server", "--port", "0"]
        argv += ["--ledger", str(ledger)]
        argv += ["--ak", AK, "--sk", SK] if auth else []
        argv += list(args)
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), cwd=tmp_path
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line + (proc.stderr.read().decode() if proc.stderr else "")
        return Service(line.split("listening on", 1)[1].strip(), ledger, proc, list(args))

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class Cli:
    """Runs ``python -m bulkrerun`` with a clean environment in a temporary folder."""

    cwd: Path

    def env(self, url: str | None = None, **extra: str) -> dict[str, str]:
        base = {"BULKRERUN_PROJECT_ID": PROJECT, "BULKRERUN_AK": AK, "BULKRERUN_SK": SK}
        if url is not None:
            base["BULKRERUN_ENDPOINT"] = url
        base.update(extra)
        return clean_env(**base)

    def __call__(
        self,
        *args: str,
        url: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bulkrerun", *args],
            capture_output=True,
            text=True,
            env=env if env is not None else self.env(url),
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )

    def popen(
        self, *args: str, url: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "bulkrerun", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else self.env(url),
            cwd=self.cwd,
            # A run started from a terminal: under `nohup pytest` the child would inherit
            # SIGHUP ignored, and keep it so (as it should), and the tests that send one fail.
            preexec_fn=_sighup_default,
        )


def _sighup_default() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def write_manifest(path: Path, body: str, *, defaults: str = "") -> Path:
    path.write_text(
        "version = 1\n[defaults]\n"
        f'workspace = "{WORKSPACE}"\n'
        'retry_location = "errorNode"\nretry_task_version = "original_version"\n'
        'timezone = "Asia/Shanghai"\n' + defaults + "\n" + body,
        encoding="utf-8",
    )
    return path
