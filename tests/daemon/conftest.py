"""A service in a thread over temporary Paths, with sessions that run commands locally.

The fake sessions stand in for VMs only in these fast tests; tests/e2e/test_daemon.py runs
the same service with real VMs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cowork.daemon.client import Client
from cowork.daemon.server import Daemon
from cowork.host.channel_fake import FakeChannel
from cowork.host.events import EventBus, Kind
from cowork.host.policy.effective import build
from cowork.host.trust import TrustStore
from cowork.paths import Paths


@dataclass
class FakeBackend:
    running: set[str] = field(default_factory=set)

    def status(self, name: str) -> Any:
        state = "running" if name in self.running else "missing"
        return SimpleNamespace(state=SimpleNamespace(value=state))


class FakeSession:
    count = 0

    def __init__(self, workspace: Path, paths: Paths, events: EventBus, backend: FakeBackend):
        FakeSession.count += 1
        self.name = f"fake-{FakeSession.count}"
        self.workspace = workspace
        self.paths = paths
        self.events = events
        self.backend = backend
        self.gateway = None
        self.channel = FakeChannel(workspace)
        trust = TrustStore(paths.trust_store)
        self.policy = build(paths, workspace, trust)
        self.policy_watcher = SimpleNamespace(trust=trust, current=self.policy)
        self.state = SimpleNamespace(
            accel="tcg", boot_seconds=0.1, changes="direct", start_mode="cold",
            agent_uid=1000, agent_gid=1000,
            mounts=[{"target": "/workspace", "readonly": False, "source": str(workspace)}],
        )  # fmt: skip
        self.outbound = None
        self.closed = False
        events.emit(Kind.VM_CREATING, name=self.name)
        backend.running.add(self.name)

    def close(self) -> None:
        self.closed = True
        self.backend.running.discard(self.name)


@dataclass
class Service:
    paths: Paths
    daemon: Daemon
    backend: FakeBackend
    workspace: Path
    opened: list[FakeSession]

    def client(self) -> Client:
        return Client.connect(self.paths.daemon_socket)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    run = Path(tempfile.mkdtemp(prefix="cwd", dir="/tmp"))
    paths = replace(Paths.under(tmp_path / "cw"), runtime=run)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("first line\n")
    backend = FakeBackend()
    opened: list[FakeSession] = []

    def opener(
        workspace: Path, *, paths: Paths, events: EventBus, progress: Any, **_kw: Any
    ) -> FakeSession:
        progress("starting a fake VM")
        s = FakeSession(workspace, paths, events, backend)
        opened.append(s)
        return s

    daemon = Daemon(
        paths,
        opener=opener,
        approval_timeout_s=5.0,
        task_overrides={"key_source": lambda: None, "guest_root": str(ws)},
    )
    daemon.bind()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        yield Service(paths, daemon, backend, ws, opened)
    finally:
        daemon.stop()
        thread.join(timeout=10)
        shutil.rmtree(run, ignore_errors=True)
