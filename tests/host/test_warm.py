"""Warm start without a VM: template keys, stale templates, seeds and the fallback notice."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cowork.guest import contract
from cowork.host import warm
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.vm.backend import BackendCapabilities
from cowork.host.vm.spec import Accel, Share
from cowork.paths import Paths

SHARES = (
    Share(contract.TAG_WORKSPACE, Path("/w"), False),
    Share(contract.TAG_WORKSPACE_CLAUDE, Path("/w/.claude"), True),
)


def key(**overrides: object) -> warm.TemplateKey:
    args: dict[str, object] = {
        "cpus": 2,
        "memory_mib": 1024,
        "accel": Accel.TCG,
        "shares": SHARES,
        "guest_code": "g1",
        "image_build": "b1",
    }
    args.update(overrides)
    recipe = str(args.pop("image_recipe", "r1"))
    return warm.template_key(recipe, **args)  # type: ignore[arg-type]


def install(paths: Paths, k: warm.TemplateKey, recorded: warm.TemplateKey | None = None) -> Path:
    """A template folder for ``k`` whose manifest records ``recorded`` (default ``k``)."""
    d = warm.template_dir(paths, k)
    d.mkdir(parents=True)
    for name in (warm.STATE_FILE, warm.DISK_FILE, warm.SEED_FILE):
        (d / name).write_bytes(b"x")
    manifest = {"key": (recorded or k).to_json()}
    (d / warm.MANIFEST_FILE).write_text(json.dumps(manifest))
    return d


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.under(tmp_path)


def test_the_key_changes_with_image_guest_code_size_and_shares():
    base = key()
    assert key() == base and key().digest() == base.digest()
    others = [
        key(image_recipe="r2"),
        key(image_build="b2"),
        key(guest_code="g2"),
        key(cpus=4),
        key(memory_mib=2048),
        key(accel=Accel.KVM),
        key(shares=SHARES[:1]),
        key(shares=(SHARES[0], Share(contract.TAG_WORKSPACE_CLAUDE, Path("/x"), False))),
    ]
    assert len({k.digest() for k in [base, *others]}) == len(others) + 1


def test_the_share_sources_are_not_part_of_the_key():
    moved = tuple(Share(s.tag, Path("/elsewhere") / s.tag, s.readonly) for s in SHARES)
    assert key(shares=moved) == key()


def test_the_guest_code_hash_follows_the_guest_code():
    files = contract.guest_code_files()
    assert warm.guest_code_hash(files) == warm.guest_code_hash()
    changed = dict(files, **{"cowork/guest/init.py": files["cowork/guest/init.py"] + "#\n"})
    assert warm.guest_code_hash(changed) != warm.guest_code_hash(files)


def test_a_complete_template_is_found(paths):
    k = key()
    d = install(paths, k)
    found = warm.find_template(paths, k)
    assert found is not None and found.dir == d and found.state_file == d / warm.STATE_FILE


@pytest.mark.parametrize(
    "older", [{"image_recipe": "r0"}, {"image_build": "b0"}, {"guest_code": "g0"}]
)
def test_a_template_of_an_older_image_or_guest_code_is_not_used(paths, older):
    current, old = key(), key(**older)
    install(paths, old)
    assert warm.find_template(paths, current) is None
    # Even planted in the current key's folder, a manifest of another key is refused.
    install(paths, current, recorded=old)
    assert warm.find_template(paths, current) is None


def test_an_incomplete_or_unreadable_template_is_not_used(paths):
    k = key()
    d = install(paths, k)
    (d / warm.STATE_FILE).unlink()
    assert warm.find_template(paths, k) is None
    (d / warm.STATE_FILE).write_bytes(b"x")
    (d / warm.MANIFEST_FILE).write_text("{not json")
    assert warm.find_template(paths, k) is None


def test_a_template_seed_carries_nothing_session_specific():
    seed = warm.template_seed("cowork-tpl-x")
    assert seed.template and seed.session == "cowork-tpl-x"
    assert seed.host_key == seed.authorized_key == seed.entropy == ""
    assert seed.mounts == () and seed.env == {} and seed.ca_certs == ()
    assert "cowork/guest/init.py" in seed.guest_code


def test_each_session_seed_gets_its_own_fresh_entropy():
    plain = warm.template_seed("s")
    one, two = warm.session_seed(plain), warm.session_seed(plain)
    assert not one.template and one.vmgenid
    raw = base64.b64decode(one.entropy)
    assert len(raw) == contract.ENTROPY_BYTES
    assert one.entropy != two.entropy


def test_warm_seed_disks_all_have_one_size_and_decode():
    small = warm.seed_bytes(warm.session_seed(warm.template_seed("s")))
    assert len(small) == warm.WARM_SEED_BYTES
    assert contract.decode_seed(small).entropy


def test_an_oversized_seed_is_refused():
    big = warm.template_seed("s")
    big = type(big)(**{**big.__dict__, "env": {"X": "y" * warm.WARM_SEED_BYTES}})
    with pytest.raises(Exception, match="more than"):
        warm.seed_bytes(big)


class NoSaveBackend:
    capabilities = BackendCapabilities(
        name="nosave",
        shared_folder_transports=("9p",),
        readonly_shares_enforced_by_host=True,
        channel_kinds=("virtio-serial",),
        accelerators=(Accel.TCG,),
    )


def test_a_backend_without_save_falls_back_with_one_notice(paths):
    bus, rec, said = EventBus(), Recorder(), []
    bus.subscribe(rec)
    got = warm.prepare(
        paths, None, key(), NoSaveBackend(),  # type: ignore[arg-type]
        create_overlay=lambda *_: None, events=bus, say=said.append,
    )  # fmt: skip
    assert got is None
    assert len(said) == 1 and said[0].startswith("quick start unavailable")
    [event] = rec.of(Kind.VM_WARM)
    assert event.fields["phase"] == "fallback" and "nosave" in event.fields["reason"]


def test_the_template_marker_wait_reports_a_failed_guest(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("boot\nCOWORK-FAILED InitError: no seed\n")
    with pytest.raises(Exception, match="no seed"):
        warm.wait_for_marker(log, "COWORK-TEMPLATE x", timeout=5)
    log.write_text("boot\nCOWORK-TEMPLATE x\n")
    warm.wait_for_marker(log, "COWORK-TEMPLATE x", timeout=5)


class FakeSession:
    """Just enough of a Session for the pool: a state, a folder, and close()."""

    def __init__(self, root: Path, n: int, workspace: str = "/w") -> None:
        from cowork.host.session import SessionState

        self.state = SessionState(
            name=f"cowork-p-{n}", workspace=workspace, created_at=0.0, boot_seconds=3.0,
            accel="tcg", uri="", mounts=[], host_public_key=f"k{n}", agent_uid=1,
            agent_gid=1, image_recipe="r", start_mode="restore", pooled=True,
        )  # fmt: skip
        self.paths = Paths.under(root)
        self.dir = self.paths.session_dir(self.state.name)
        self.dir.mkdir(parents=True)
        self.policy = None
        self.closed = False

    @property
    def name(self) -> str:
        return self.state.name

    def close(self) -> None:
        self.closed = True


def test_the_pool_hands_out_each_guest_once_and_refills(tmp_path):
    made: list[FakeSession] = []

    def opener() -> FakeSession:
        made.append(FakeSession(tmp_path, len(made)))
        return made[-1]

    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    pool = warm.WarmPool(
        opener,
        size=2,
        guest_memory_mib=1024,
        memory_cap_mib=8192,
        events=bus,  # type: ignore[arg-type]
    )
    try:
        assert pool.wait_ready(2, timeout=10)
        first, second = pool.take(), pool.take()
        assert first is not None and second is not None and first is not second
        assert first.state.start_mode == warm.POOL
        saved = json.loads((first.dir / "session.json").read_text())
        assert saved["start_mode"] == "pool" and saved["pooled"] is False
        assert pool.wait_ready(2, timeout=10)
        taken = {first.name, second.name}
        assert all(s.name not in taken for s in pool._ready)
        assert [e.fields["phase"] for e in rec.of(Kind.VM_WARM)].count("taken") == 2
    finally:
        pool.close()
    waiting = [s for s in made if s not in (first, second)]
    assert waiting and all(s.closed for s in waiting)
    assert not first.closed  # a taken session belongs to its taker


def test_the_pool_is_off_at_size_zero_and_bounded_by_memory(tmp_path):
    made: list[FakeSession] = []

    def opener() -> FakeSession:
        made.append(FakeSession(tmp_path, len(made)))
        return made[-1]

    off = warm.WarmPool(opener, size=0, guest_memory_mib=1024, memory_cap_mib=8192)  # type: ignore[arg-type]
    assert off.take() is None
    off.close()
    assert made == []
    capped = warm.WarmPool(opener, size=4, guest_memory_mib=1024, memory_cap_mib=2048)  # type: ignore[arg-type]
    try:
        assert capped.size == 2
        assert capped.wait_ready(2, timeout=10)
        assert not capped.wait_ready(3, timeout=0.5)
    finally:
        capped.close()


def test_a_failing_fill_is_reported_not_raised(tmp_path):
    def opener() -> FakeSession:
        raise warm.BackendError("no VM today")

    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    pool = warm.WarmPool(opener, size=1, guest_memory_mib=1024, memory_cap_mib=1024, events=bus)  # type: ignore[arg-type]
    try:
        deadline = 50
        while not rec.of(Kind.VM_WARM) and deadline:
            import time

            time.sleep(0.1)
            deadline -= 1
        assert rec.of(Kind.VM_WARM)[0].fields["phase"] == "pool-fill-failed"
        assert pool.take() is None
    finally:
        pool.close()


def test_templates_of_an_older_image_or_guest_code_are_pruned(paths):
    current = key()
    keep = [install(paths, current), install(paths, key(cpus=4))]
    stale = [
        install(paths, key(image_recipe="r0")),
        install(paths, key(image_build="b0")),  # the same recipe, built again
        install(paths, key(guest_code="g0")),
    ]
    odd = paths.templates / "not-a-template"
    odd.mkdir()
    removed = warm.prune_stale(paths, current)
    assert sorted(removed) == sorted(stale)
    assert all(d.is_dir() for d in keep) and odd.is_dir()


# --- the session seed arrives after the restore ---------------------------------------------
class RestoringBackend:
    """Records restore, destroy and the steps around them (no VM)."""

    capabilities = BackendCapabilities(
        name="fake-restore",
        shared_folder_transports=("9p",),
        readonly_shares_enforced_by_host=True,
        channel_kinds=("virtio-serial",),
        accelerators=(Accel.TCG,),
        save_restore=True,
    )

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def validate(self, spec): ...
    def create(self, spec): ...
    def start(self, name): ...
    def stop(self, name, timeout): ...
    def status(self, name): ...
    def list(self):
        return []

    def save(self, name, state_file): ...

    def restore(self, state_file, spec, work_file):
        self.steps.append("restore")

    def destroy(self, name):
        self.steps.append("destroy")


class _Spec:
    name = "cowork-ws-1"
    disk = Path("/nonexistent/overlay.qcow2")


def _restore(paths, steps, arm):
    k = key()
    install(paths, k)
    template = warm.find_template(paths, k)
    assert template is not None

    def connect(_timeout):
        steps.append("connect")
        return "channel"

    bus, rec, said = EventBus(), Recorder(), []
    bus.subscribe(rec)
    got = warm.restore(
        template, _Spec(), RestoringBackend(steps), connect=connect,  # type: ignore[arg-type]
        paths=paths, events=bus, say=said.append, arm=arm,
    )  # fmt: skip
    return got, template, rec


def test_the_seed_is_armed_after_the_restore_and_before_the_connect(paths):
    steps: list[str] = []
    got, _, _ = _restore(paths, steps, lambda: steps.append("arm"))
    assert got == "channel"
    assert steps == ["restore", "arm", "connect"]


def test_a_failing_arm_destroys_the_restored_vm_and_propagates(paths):
    from cowork.errors import EgressError

    steps: list[str] = []

    def arm():
        raise EgressError("the egress gateway could not start")

    with pytest.raises(EgressError):
        _restore(paths, steps, arm)
    assert steps == ["restore", "destroy"]
    assert warm.find_template(paths, key()) is not None  # not the template's fault


def test_the_seed_is_written_in_place_over_a_placeholder_the_guest_skips(tmp_path):
    from cowork.guest import init

    path = tmp_path / "seed.img"
    path.write_bytes(warm.placeholder_seed())
    inode = path.stat().st_ino
    with pytest.raises(init.InitError):  # the restored guest keeps polling
        init.read_seed(str(path))
    data = warm.seed_bytes(warm.session_seed(warm.template_seed("s")))
    warm.write_seed_in_place(path, data)
    assert path.stat().st_ino == inode
    assert path.read_bytes() == data
    assert init.read_seed(str(path)).session == "s"
    with pytest.raises(Exception, match=r"seed\.img is 4194304 bytes, not 3"):
        warm.write_seed_in_place(path, b"abc")
