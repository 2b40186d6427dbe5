"""The service's warm pools without a VM: keys, staleness, the memory cap, back-off, checks.

Sessions are fakes (a state on disk and close()); tests/e2e/test_daemon_pool.py runs the
same pools in the service with real VMs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cowork.errors import BackendError, WorkspaceError
from cowork.host import pool as pool_mod
from cowork.host import warm
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.policy.effective import build
from cowork.host.pool import PoolKey, PoolPlan, Pools
from cowork.host.session_store import SessionState
from cowork.paths import Paths
from tests.waiting import wait_until


class FakeSession:
    """Just enough of a Session for the pools."""

    def __init__(self, paths: Paths, n: int, key: PoolKey) -> None:
        self.state = SessionState(
            name=f"cowork-pool-{n}", workspace=key.workspace, created_at=0.0,
            boot_seconds=3.0, accel="tcg", uri="", mounts=[], host_public_key=f"k{n}",
            agent_uid=1, agent_gid=1, image_recipe="r", start_mode="restore",
            changes=key.changes, pooled=True,
        )  # fmt: skip
        self.key = key
        self.paths = paths
        self.events = EventBus()
        self.dir = paths.session_dir(self.name)
        self.dir.mkdir(parents=True)
        self.policy = None
        self.closed = False
        self.alive = True

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def workspace(self) -> Path:
        return Path(self.state.workspace)

    def close(self) -> None:
        self.closed = True


class World:
    """A planner whose answers the test changes, and an opener that counts."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.policy = "p1"
        self.size = 1
        self.memory = 1024
        self.cap = 4096
        self.fail: Exception | None = None
        self.plan_fails = False
        self.made: list[FakeSession] = []
        self.bus, self.rec = EventBus(), Recorder()
        self.bus.subscribe(self.rec)
        self.notices: list[str] = []
        self.checked: list[str] = []
        self.refuse: str | None = None
        self._making = threading.Lock()

    def planner(self, workspace: str, changes_default: str) -> PoolPlan:
        if self.plan_fails:
            raise BackendError("no image")
        key = PoolKey(workspace, changes_default, self.policy, "img", "code")
        return PoolPlan(key, self.size, self.memory, self.cap)

    def opener(self, key: PoolKey) -> FakeSession:
        if self.fail is not None:
            raise self.fail
        with self._making:  # pools fill in threads of their own: one name each
            sess = FakeSession(self.paths, len(self.made), key)
            self.made.append(sess)
        return sess

    def check(self, sess: FakeSession, say: Callable[[str], None]) -> None:
        self.checked.append(sess.name)
        if self.refuse:
            raise WorkspaceError(self.refuse)

    def pools(self, **kw: object) -> Pools:
        kw.setdefault("refill_delay_seconds", 0.0)
        return Pools(
            self.opener,  # type: ignore[arg-type]
            self.planner,
            events=self.bus,
            notice=self.notices.append,
            alive=lambda s: s.alive,  # type: ignore[attr-defined]
            check=self.check,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    def phases(self) -> list[str]:
        return [str(e.fields["phase"]) for e in self.rec.of(Kind.VM_WARM)]


def waiting(pools: Pools, workspace: str = "/w") -> int:
    return sum(s.waiting for s in pools.status() if s.workspace == workspace)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(Paths.under(tmp_path))


@pytest.fixture
def pools(world: World) -> Iterator[Pools]:
    pools = world.pools()
    try:
        yield pools
    finally:
        pools.close()


def test_a_guest_is_taken_once_recorded_as_the_pool_and_the_pool_refills(world, pools):
    said: list[str] = []
    assert pools.take("/w", "direct", said.append) is None  # no pool yet
    pools.want("/w", "direct")
    assert wait_until(lambda: waiting(pools) == 1)
    first = pools.take("/w", "direct", said.append)
    assert first is not None and first.state.start_mode == warm.POOL
    assert not first.state.pooled and first.state.boot_seconds < 3.0
    saved = json.loads((first.dir / "session.json").read_text())
    assert (saved["start_mode"], saved["pooled"]) == ("pool", False)
    assert world.checked == [first.name]
    assert wait_until(lambda: waiting(pools) == 1)
    second = pools.take("/w", "direct", said.append)
    assert second is not None and second is not first and second.name != first.name
    assert world.phases().count("taken") == 2
    assert wait_until(lambda: waiting(pools) == 1)
    assert first.name not in pools.status()[0].guests
    assert not first.closed and not second.closed  # a taken guest belongs to its taker


def test_each_changes_mode_and_folder_has_its_own_pool(world, pools):
    pools.want("/w", "direct")
    assert wait_until(lambda: waiting(pools) == 1)
    assert pools.take("/w", "staged", lambda _m: None) is None
    assert pools.take("/other", "direct", lambda _m: None) is None
    assert waiting(pools) == 1


def test_a_changed_key_makes_the_pool_stale_and_the_session_start_normally(world, pools):
    pools.want("/w", "direct")
    assert wait_until(lambda: waiting(pools) == 1)
    old = world.made[-1]
    world.policy = "p2"  # a policy reload, an image rebuild or new guest code
    said: list[str] = []
    assert pools.take("/w", "direct", said.append) is None
    assert "pool-stale" in world.phases()
    assert said == ["the warm pool for this folder was out of date; starting normally"]
    assert wait_until(lambda: old.closed)
    pools.want("/w", "direct")  # the service asks again after the normal start
    assert wait_until(lambda: waiting(pools) == 1)
    new = pools.take("/w", "direct", said.append)
    assert new is not None and new is not old and new.key.policy == "p2"


def test_the_periodic_check_drops_stale_pools_and_refills_under_the_new_key(world):
    pools = world.pools(check_seconds=0.05).start()
    try:
        pools.want("/w", "direct")
        assert wait_until(lambda: waiting(pools) == 1)
        old = world.made[-1]
        world.policy = "p2"
        assert wait_until(lambda: old.closed)
        assert wait_until(lambda: waiting(pools) == 1)
        assert world.made[-1].key.policy == "p2"
        world.size = 0  # policy turns the pool off
        world.policy = "p3"
        off = world.made[-1]
        assert wait_until(lambda: off.closed)
        assert pools.status() == []
    finally:
        pools.close()


def test_a_guest_whose_vm_died_while_waiting_is_never_handed_out(world):
    pools = world.pools(check_seconds=0.05).start()
    try:
        pools.want("/w", "direct")
        assert wait_until(lambda: waiting(pools) == 1)
        dead = world.made[-1]
        dead.alive = False
        assert wait_until(lambda: dead.closed)
        assert "pool-discarded" in world.phases()
        assert wait_until(lambda: waiting(pools) == 1)
        taken = pools.take("/w", "direct", lambda _m: None)
        assert taken is not None and taken is not dead
    finally:
        pools.close()


def test_a_guest_that_fails_its_check_is_destroyed_and_not_reused(world, pools):
    pools.want("/w", "direct")
    assert wait_until(lambda: waiting(pools) == 1)
    bad = world.made[-1]
    world.refuse = "the folder now holds credentials"
    said: list[str] = []
    assert pools.take("/w", "direct", said.append) is None
    assert said and "could not be used" in said[0] and "credentials" in said[0]
    assert wait_until(lambda: bad.closed)
    world.refuse = None
    assert wait_until(lambda: waiting(pools) == 1)
    taken = pools.take("/w", "direct", said.append)
    assert taken is not None and taken is not bad


def test_the_memory_cap_bounds_every_pool_together(world, pools):
    world.size, world.memory, world.cap = 2, 1024, 2048
    pools.want("/a", "direct")
    assert wait_until(lambda: waiting(pools, "/a") == 2)
    first = list(world.made)
    pools.want("/b", "direct")  # no room beside /a: the pool used least recently goes
    assert "pool-evicted" in world.phases()
    assert wait_until(lambda: all(s.closed for s in first))
    assert wait_until(lambda: waiting(pools, "/b") == 2)
    assert [s.workspace for s in pools.status()] == ["/b"]
    world.cap = 1024  # one guest of 1 GiB fits
    world.policy = "p2"
    pools.want("/b", "direct")
    assert wait_until(lambda: waiting(pools, "/b") == 1)
    assert pools.status()[0].size == 1


def test_size_zero_or_a_cap_below_one_guest_is_off(world, pools):
    world.size = 0
    pools.want("/w", "direct")
    world.size, world.cap = 2, 512
    pools.want("/w", "direct")
    assert pools.status() == [] and world.made == []
    assert pools.take("/w", "direct", lambda _m: None) is None


def test_a_policy_or_image_that_cannot_be_read_means_no_pool_never_an_error(world, pools):
    pools.want("/w", "direct")
    assert wait_until(lambda: waiting(pools) == 1)
    world.plan_fails = True
    assert pools.take("/w", "direct", lambda _m: None) is None
    assert wait_until(lambda: world.made[-1].closed)
    pools.want("/w", "direct")
    assert pools.status() == []


def test_failed_fills_back_off_doubling_with_an_event_and_a_notice_each(world):
    world.fail = BackendError("libvirt is not running\nmore detail")
    pools = world.pools(retry_seconds=0.05, max_retry_seconds=0.2)
    try:
        pools.want("/w", "direct")
        assert wait_until(lambda: len(world.rec.of(Kind.VM_WARM)) >= 4)
        failed = [e.fields for e in world.rec.of(Kind.VM_WARM)][:4]
        assert [f["phase"] for f in failed] == ["pool-fill-failed"] * 4
        assert [f["retry_s"] for f in failed] == [0.05, 0.1, 0.2, 0.2]
        assert [f["failures"] for f in failed] == [1, 2, 3, 4]
        assert failed[0]["reason"] == "libvirt is not running"
        assert world.notices[0] == (
            "warm pool for /w: could not get a VM ready (libvirt is not running); "
            "trying again in 0 s"
        )
        status = pools.status()[0]
        assert status.failures >= 4 and status.last_error == "libvirt is not running"
        world.fail = None  # it recovers: the count resets and the guest waits
        assert wait_until(lambda: waiting(pools) == 1)
        assert pools.status()[0].failures == 0
    finally:
        pools.close()


def test_a_guest_opened_under_another_policy_is_not_kept(world, pools, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    policy = build(world.paths, ws)

    def opener(key: PoolKey) -> FakeSession:
        sess = world.opener(key)
        sess.policy = policy  # type: ignore[assignment]
        return sess

    other = Pools(opener, world.planner, events=world.bus, retry_seconds=60)  # type: ignore[arg-type]
    try:
        other.want("/w", "direct")  # the planner's digest "p1" is not this policy's
        assert wait_until(lambda: "pool-fill-failed" in world.phases())
        assert world.made[-1].closed and other.status()[0].waiting == 0
    finally:
        other.close()
    world.policy = pool_mod.policy_digest(policy)
    again = Pools(opener, world.planner, events=world.bus)  # type: ignore[arg-type]
    try:
        again.want("/w", "direct")
        assert wait_until(lambda: waiting(again) == 1)
    finally:
        again.close()


def test_close_destroys_every_waiting_guest_and_stops_filling(world):
    pools = world.pools(check_seconds=0.05).start()
    pools.want("/a", "direct")
    pools.want("/b", "staged")
    assert wait_until(lambda: waiting(pools, "/a") == 1 and waiting(pools, "/b") == 1)
    pools.close()
    assert all(s.closed for s in world.made)
    made = len(world.made)
    pools.want("/a", "direct")
    time.sleep(0.2)
    assert len(world.made) == made and pools.status() == []


def test_concurrent_takes_never_hand_out_the_same_guest(world):
    world.size = 4
    pools = world.pools()
    try:
        pools.want("/w", "direct")
        assert wait_until(lambda: waiting(pools) == 4)
        got: list[object] = []
        threads = [
            threading.Thread(target=lambda: got.append(pools.take("/w", "direct", print)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = [s.name for s in got if s is not None]  # type: ignore[attr-defined]
        assert len(names) == len(set(names)) >= 4
    finally:
        pools.close()


def test_keys_differ_with_the_policy_and_the_image(tmp_path):
    paths = Paths.under(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    a = build(paths, ws)
    assert pool_mod.policy_digest(a) == pool_mod.policy_digest(build(paths, ws))
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text("version = 1\n[vm]\nmemory_mib = 1024\n")
    assert pool_mod.policy_digest(a) != pool_mod.policy_digest(build(paths, ws))
    from cowork.host.image import ImageInfo

    info = ImageInfo(
        dir=tmp_path, kernel=tmp_path / "k", initrd=tmp_path / "i", base_disk=tmp_path / "d",
        recipe_hash="r", files={"vmlinuz": "1"}, built_at="t", size_bytes=1,
        kernel_cmdline="",
    )  # fmt: skip
    rebuilt = replace(info, files={"vmlinuz": "2"})
    assert info.identity() != rebuilt.identity()
    assert info.identity() == replace(info, built_at="u").identity()


def test_a_take_delays_the_refill_so_the_new_session_has_the_cpu(world):
    pools = world.pools(refill_delay_seconds=3600.0)
    try:
        pools.want("/w", "direct")
        assert wait_until(lambda: waiting(pools) == 1)
        assert pools.take("/w", "direct", lambda _m: None) is not None
        time.sleep(0.3)
        assert waiting(pools) == 0 and len(world.made) == 1
    finally:
        pools.close()


def test_the_check_before_a_take_sees_the_folder_as_it_is_now(tmp_path):
    """``check_taken``: the folder is checked again (credentials per policy, warnings to
    the taker) and a staged session's baseline is the folder at the take."""
    paths = Paths.under(tmp_path / "cw")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("before\n")
    key = PoolKey(str(ws), "staged", "p", "i", "g")
    sess = FakeSession(paths, 0, key)
    from cowork.host.changes import store

    store.begin(paths, sess.name, ws)  # as when the guest was made
    made = (store.set_dir(paths, sess.name) / "baseline.json").read_text()
    (ws / "notes.txt").write_text("edited while the guest waited\n")
    said: list[str] = []
    pool_mod.check_taken(sess, said.append)  # type: ignore[arg-type]
    assert said == []
    baseline = json.loads((store.set_dir(paths, sess.name) / "baseline.json").read_text())
    assert baseline == json.loads(json.dumps(store.snapshot(ws)))
    assert baseline != json.loads(made)

    (ws / ".env").write_text("API_KEY=x\n")
    sess.policy = build(paths, ws)  # type: ignore[assignment]  # secret_files = "warn"
    pool_mod.check_taken(sess, said.append)  # type: ignore[arg-type]
    assert len(said) == 1 and said[0].startswith("warning: ") and ".env" in said[0]
    sess.policy = None  # no policy known: the stricter rule
    with pytest.raises(WorkspaceError, match="look like credentials"):
        pool_mod.check_taken(sess, said.append)  # type: ignore[arg-type]
