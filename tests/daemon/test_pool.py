"""The service keeps warm pools (fake sessions; tests/e2e/test_daemon_pool.py boots VMs)."""

from __future__ import annotations

import pytest

from cowork.cli.common import pool_lines, start_lines, started_by
from cowork.daemon import protocol as p
from cowork.host.events import Kind
from tests.daemon.conftest import Service
from tests.waiting import wait_until


@pytest.fixture
def pool_check_s() -> float:
    # Only a request finds a stale pool here: the periodic check is tested in tests/host.
    return 3600.0


def settings(service: Service, text: str) -> None:
    service.paths.config.mkdir(parents=True, exist_ok=True)
    service.paths.user_settings_file.write_text("version = 1\n" + text)


def status(service: Service) -> p.DaemonInfo:
    with service.client() as c:
        info: p.DaemonInfo = c.call(p.DaemonStatus())
    return info


def waiting(service: Service) -> list[str]:
    return [g for pool in status(service).pools for g in pool.guests]


def test_the_pool_is_off_by_default(service):
    with service.client() as c:
        c.call(p.Exec(workspace=str(service.workspace), command="true"))
    info = status(service)
    assert info.pool_size == 0 and info.pools == []
    assert [s.pool for s in service.opened] == [False]
    assert pool_lines(info.pool_size, info.pools) == ["pool:      off (vm.pool_size = 0)"]


def test_a_session_takes_a_pooled_guest_once_and_a_stale_pool_is_not_used(service):
    settings(service, "[vm]\npool_size = 1\nmemory_mib = 1024\npool_memory_mib = 2048\n")
    ws = str(service.workspace)
    with service.client() as c:
        c.call(p.Exec(workspace=ws, command="true"))  # started normally; its pool fills
        assert wait_until(lambda: len(waiting(service)) == 1)
        info = status(service)
        assert info.pool_size == 1
        (pool,) = info.pools
        assert (pool.workspace, pool.changes, pool.size, pool.waiting) == (ws, "direct", 1, 1)
        lines = pool_lines(info.pool_size, info.pools)
        assert lines[0] == f"pool:      1 of 1 waiting for {ws} (direct changes)"
        first = pool.guests[0]

        up = c.call(p.VmUp(workspace=ws))
        assert up.started and up.session.name == first
        assert up.session.start_mode == "pool"
        shown = c.call(p.VmStatus(name=first)).session
        assert shown.start_mode == "pool"
        assert started_by(shown.start_mode, shown.boot_seconds).startswith("pool (taken in ")
        c.call(p.VmDown(name=first))

        assert wait_until(lambda: len(waiting(service)) == 1)
        second = waiting(service)[0]
        assert second != first  # a guest is never handed out twice
        up = c.call(p.VmUp(workspace=ws))
        assert up.session.name == second and up.session.start_mode == "pool"
        c.call(p.VmDown(name=second))
        assert wait_until(lambda: len(waiting(service)) == 1)
        third = waiting(service)[0]
        stale = next(s for s in service.opened if s.name == third)

        settings(service, "[vm]\npool_size = 1\nmemory_mib = 1280\npool_memory_mib = 2048\n")
        up = c.call(p.VmUp(workspace=ws))
        assert up.session.start_mode == "cold" and up.session.name != third
        assert wait_until(lambda: stale.closed)
        c.call(p.VmDown(name=up.session.name))
        # The pool is filled again under the new settings.
        assert wait_until(lambda: len(waiting(service)) == 1)
        assert waiting(service)[0] not in (first, second, third)
    pooled = [s for s in service.opened if s.pool]
    assert all(s.state.workspace == ws for s in pooled)


def test_stopping_the_service_destroys_the_waiting_guests_and_their_records(service):
    settings(service, "[vm]\npool_size = 2\nmemory_mib = 1024\npool_memory_mib = 4096\n")
    with service.client() as c:
        c.call(p.Exec(workspace=str(service.workspace), command="true"))
    assert wait_until(lambda: len(waiting(service)) == 2)
    records = service.paths.daemon_records
    names = set(waiting(service))
    assert {f.stem for f in records.glob("*.json")} == names
    service.daemon.stop()
    assert wait_until(lambda: all(s.closed for s in service.opened))
    assert wait_until(lambda: not list(records.glob("*.json")))


def test_a_failing_fill_is_a_notice_never_an_error(service):
    settings(service, "[vm]\npool_size = 1\nmemory_mib = 1024\n")

    def broken(key):
        raise p.ProtocolError("failed", "the hypervisor is gone")

    service.daemon.pools._opener = broken
    notices: list[str] = []

    def seen(ev: p.Event) -> None:
        if isinstance(ev, p.Notice) and ev.message.startswith("warm pool"):
            notices.append(ev.message)

    with service.client() as c:
        c.subscribe(None, seen)
        c.call(p.Exec(workspace=str(service.workspace), command="true"))
        assert wait_until(lambda: bool(notices))
        assert status(service).pools[0].failures == 1
        assert "the hypervisor is gone" in notices[0]
        assert notices[0].endswith("trying again in 15 s")
        out = c.call(p.Exec(workspace=str(service.workspace), command="true"))
        assert out.exit_code == 0
    lines = pool_lines(1, status(service).pools)
    assert "filling failed 1 time(s) in a row (the hypervisor is gone)" in lines[-1]


def test_started_by_says_how_a_vm_started():
    assert started_by("pool", 0.012) == "pool (taken in 12 ms)"
    assert started_by("restore", 3.14) == "restore (3.1 s to ready)"
    assert started_by("cold", 13.0) == "cold (13.0 s to ready)"
    assert start_lines("cold", 13.0) == [
        "boot time:   13.0 s",
        "started by:  cold (13.0 s to ready)",
    ]
    assert start_lines("pool", 0.012) == ["started by:  pool (taken in 12 ms)"]


def test_records_of_vms_without_session_files_go_when_the_vm_goes(service):
    bus = service.daemon._bus()
    records = service.paths.daemon_records
    for name in ("cowork-tpl-abc-1234", "cowork-ws-5678"):
        bus.emit(Kind.VM_CREATING, name=name)
    service.paths.session_dir("cowork-ws-5678").mkdir(parents=True)
    for name in ("cowork-tpl-abc-1234", "cowork-ws-5678"):
        bus.emit(Kind.VM_STOPPED, name=name, how="destroyed")
    # The template VM is gone; the session's record stays until its files are deleted.
    assert sorted(f.stem for f in records.glob("*.json")) == ["cowork-ws-5678"]
    bus.emit(Kind.SESSION_ENDED, session="cowork-ws-5678")
    assert list(records.glob("*.json")) == []
