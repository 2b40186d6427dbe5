"""The service's warm pool with real VMs (TCG): one service for the module, one folder.

The pool fills after a first session in the folder; the next session takes the pooled guest
(`vm status` says pool), which passes the same isolation checks as a cold-booted or restored
guest (the tests of tests/e2e/test_vm.py imported below run against it); a taken guest is
never handed out again; a policy change makes the waiting guest stale; stopping the service
destroys what waits. The tests run in order and share the service.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cowork.daemon import protocol as p
from cowork.daemon.client import Client
from cowork.daemon.server import Daemon
from cowork.host import pool as pool_mod
from cowork.host.session_store import find_for_workspace, load_state
from cowork.host.vm.libvirt import LibvirtBackend
from cowork.paths import Paths
from tests.e2e.conftest import Booted, make_warm_paths, sample_folders
from tests.e2e.test_vm import (  # noqa: F401 (run here against a guest from the pool)
    test_claude_folders_are_read_only_in_the_guest,
    test_host_files_outside_the_workspace_are_invisible,
    test_mount_table_holds_only_the_two_folders,
    test_no_network_interface_but_loopback,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

#: A pool fill may have to build the quick-start template first (once per test run).
FILL_TIMEOUT = 900.0
SETTINGS = "version = 1\n[vm]\nmemory_mib = 1024\npool_size = 1\npool_memory_mib = 1024\n"


@dataclass
class World:
    paths: Paths
    daemon: Daemon
    thread: threading.Thread
    workspace: Path
    claude: Path
    outside: Path

    def client(self) -> Client:
        return Client.connect(self.paths.daemon_socket)

    def status(self) -> p.DaemonInfo:
        with self.client() as c:
            info: p.DaemonInfo = c.call(p.DaemonStatus())
        return info

    def waiting(self) -> list[str]:
        return [g for pool in self.status().pools for g in pool.guests]

    def settings(self, extra: str = "") -> None:
        self.paths.user_settings_file.write_text(
            SETTINGS + extra + f'[mounts]\nclaude_dir = "{self.claude}"\n'
        )


def domain_state(name: str) -> str:
    return LibvirtBackend().status(name).state.value


@pytest.fixture(scope="module")
def world(image_ready, warm_cache, tmp_path_factory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("daemon-pool")
    paths = make_warm_paths(root / "cowork", warm_cache)
    ws, claude, outside = sample_folders(root)
    paths.config.mkdir(parents=True)
    daemon = Daemon(paths, pool_check_s=2.0)
    daemon.bind()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    world = World(paths, daemon, thread, ws, claude, outside)
    world.settings()
    thread.start()
    try:
        yield world
    finally:
        daemon.stop()
        thread.join(timeout=300)
        shutil.rmtree(paths.runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def pooled(world: World) -> p.SessionInfo:
    """A session the service took from its pool (kept up until a test below ends it)."""
    with world.client() as c:
        first = c.call(p.Exec(workspace=str(world.workspace), command="cat hello.txt"))
        assert first.exit_code == 0
        assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT), world.status()
        (waiting,) = world.waiting()
        up: p.SessionReply = c.call(p.VmUp(workspace=str(world.workspace)))
    assert up.started and up.session.name == waiting
    return up.session


@pytest.fixture(scope="module")
def sealed(world: World, pooled: p.SessionInfo) -> Booted:
    """The pooled guest, for the isolation tests of tests/e2e/test_vm.py."""
    session = world.daemon._sessions[pooled.name].session
    return Booted(session, world.workspace, world.claude, world.outside, recorder=None)  # type: ignore[arg-type]


def test_a_session_is_taken_from_the_pool_and_vm_status_says_so(world, pooled):
    assert pooled.start_mode == "pool"
    with world.client() as c:
        shown = c.call(p.VmStatus(name=pooled.name)).session
        assert shown.start_mode == "pool" and shown.state == "running"
        out: list[bytes] = []
        result = c.exec(
            p.Exec(workspace=str(world.workspace), command="cat hello.txt; id -un"),
            on_stdout=out.append, on_stderr=out.append,
        )  # fmt: skip
    assert result.exit_code == 0
    assert b"".join(out).decode() == "hello from the host\nagent\n"
    state = load_state(world.paths, pooled.name)
    assert (state.start_mode, state.pooled) == ("pool", False)


def test_the_pooled_guest_reaches_out_only_through_its_gateway(sealed):
    denied = sealed.run(
        "python3 -c \"import urllib.request as u; u.urlopen('https://example.org', timeout=20)\""
        " 2>&1; echo rc=$?"
    )
    assert "rc=0" not in denied.stdout
    assert "403" in denied.stdout or "Forbidden" in denied.stdout, denied.stdout


def test_a_waiting_guest_is_found_by_no_command(world, pooled):
    assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT), world.status()
    (waiting,) = world.waiting()
    assert waiting != pooled.name
    assert load_state(world.paths, waiting).pooled
    # Recorded like any VM of the service, so a later run removes it if this one dies.
    assert waiting in {f.stem for f in world.paths.daemon_records.glob("*.json")}
    # A `--no-daemon` command looking for the folder's VM finds the taken one, never this.
    found = find_for_workspace(world.paths, world.workspace)
    assert found is not None and found.name == pooled.name
    info = world.status()
    (pool,) = info.pools
    assert (pool.workspace, pool.changes, pool.size) == (str(world.workspace), "direct", 1)
    assert info.pool_size == 1


def test_a_taken_guest_is_never_handed_out_again(world, pooled):
    with world.client() as c:
        c.call(p.VmDown(name=pooled.name))
    assert domain_state(pooled.name) == "missing"
    assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT)
    (waiting,) = world.waiting()
    assert waiting != pooled.name
    with world.client() as c:
        up = c.call(p.VmUp(workspace=str(world.workspace))).session
        assert up.name == waiting != pooled.name and up.start_mode == "pool"
        c.call(p.VmDown(name=up.name))
    assert domain_state(up.name) == "missing"


def test_a_policy_change_makes_the_waiting_guest_stale(world):
    assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT)
    (stale,) = world.waiting()
    world.settings('start_mode = "restore"\n')  # another policy: another key
    with world.client() as c:
        up = c.call(p.VmUp(workspace=str(world.workspace))).session
        try:
            assert up.name != stale
            # Started normally, or (if the periodic check refilled first) from the pool
            # made under the new policy: either way never the stale guest.
            assert up.start_mode in ("restore", "pool")
            assert wait_until(lambda: domain_state(stale) == "missing", 120)
            records = {f.stem for f in world.paths.daemon_records.glob("*.json")}
            assert stale not in records
        finally:
            c.call(p.VmDown(name=up.name))
    assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT)
    (fresh,) = world.waiting()
    assert fresh != stale
    session_dir = world.paths.session_dir(fresh)
    assert json.loads((session_dir / "session.json").read_text())["pooled"] is True
    now = pool_mod.plan(world.paths, str(world.workspace), "direct").key
    assert list(world.daemon.pools._entries) == [now]  # the pool of the new policy only


def test_stopping_the_service_destroys_the_waiting_guests(world):
    """Runs last: it stops the module's service."""
    assert wait_until(lambda: len(world.waiting()) == 1, FILL_TIMEOUT)
    (waiting,) = world.waiting()
    assert domain_state(waiting) == "running"
    world.daemon.stop()
    world.thread.join(timeout=300)
    assert not world.thread.is_alive()
    assert domain_state(waiting) == "missing"
    assert not world.paths.session_dir(waiting).exists()
    assert list(world.paths.daemon_records.glob("*.json")) == []
