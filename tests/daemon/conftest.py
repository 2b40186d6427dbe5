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
from cowork.host.pool import PoolKey, PoolPlan, policy_digest
from cowork.host.session_store import SessionState
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

    def __init__(
        self,
        workspace: Path,
        paths: Paths,
        events: EventBus,
        backend: FakeBackend,
        changes: str = "direct",
        pool: bool = False,
    ):
        FakeSession.count += 1
        self.name = f"fake-{FakeSession.count}"
        self.pool = pool
        self.workspace = workspace
        self.paths = paths
        self.events = events
        self.backend = backend
        self.gateway = None
        self.channel = FakeChannel(workspace)
        trust = TrustStore(paths.trust_store)
        self.policy = build(paths, workspace, trust)
        self.policy_watcher = SimpleNamespace(trust=trust, current=self.policy)
        self.state = SessionState(
            name=self.name, workspace=str(workspace), created_at=0.0, boot_seconds=0.1,
            accel="tcg", uri="", host_public_key="", agent_uid=1000, agent_gid=1000,
            image_recipe="r", changes=changes, start_mode="restore" if pool else "cold",
            mounts=[{"target": "/workspace", "readonly": False, "source": str(workspace)}],
            pooled=pool,
        )  # fmt: skip
        self.dir = paths.session_dir(self.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.outbound = None
        self.closed = False
        events.emit(Kind.VM_CREATING, name=self.name)
        backend.running.add(self.name)

    def close(self) -> None:
        self.closed = True
        self.backend.running.discard(self.name)
        self.events.emit(Kind.SESSION_ENDED, session=self.name)


@dataclass
class Service:
    paths: Paths
    daemon: Daemon
    backend: FakeBackend
    workspace: Path
    opened: list[FakeSession]

    def client(self) -> Client:
        return Client.connect(self.paths.daemon_socket)


def fake_pool_plan(paths: Paths, workspace: str, changes_default: str) -> PoolPlan:
    """The real pool key but for the image and guest code (there is no image here)."""
    policy = build(paths, Path(workspace), TrustStore(paths.trust_store))
    key = PoolKey(
        workspace, policy.changes_mode(changes_default),  # type: ignore[arg-type]
        policy_digest(policy), "image", "guest-code",
    )  # fmt: skip
    vm = policy.vm
    return PoolPlan(key, vm.pool_size, vm.memory_mib, vm.pool_memory_mib)


@pytest.fixture
def pool_check_s() -> float | None:
    """How often the service's pools look for stale keys (overridden by a test module)."""
    return None


@pytest.fixture
def service(
    tmp_path: Path, pool_check_s: float | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    monkeypatch.setattr("cowork.host.pool.REFILL_DELAY_SECONDS", 0.0)
    run = Path(tempfile.mkdtemp(prefix="cwd", dir="/tmp"))
    paths = replace(Paths.under(tmp_path / "cw"), runtime=run)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("first line\n")
    backend = FakeBackend()
    opened: list[FakeSession] = []

    def opener(
        workspace: Path,
        *,
        paths: Paths,
        events: EventBus,
        progress: Any,
        changes_default: str = "direct",
        pool: bool = False,
        **_kw: Any,
    ) -> FakeSession:
        progress("starting a fake VM")
        s = FakeSession(workspace, paths, events, backend, changes_default, pool)
        opened.append(s)
        return s

    daemon = Daemon(
        paths,
        opener=opener,
        approval_timeout_s=5.0,
        task_overrides={"key_source": lambda: None, "guest_root": str(ws)},
        pool_planner=lambda w, c: fake_pool_plan(paths, w, c),
        pool_check_s=pool_check_s,
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
