"""Session composition without a guest: libvirt's test driver, a stand-in image, real gateway.

The guest never answers here, so these tests prove the failure paths: a boot that does not
become ready is destroyed and leaves nothing behind; bad input is refused before anything is
created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from cowork.errors import BootTimeout, WorkspaceError
from cowork.host import image as image_mod
from cowork.host import session as session_mod
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.image import ImageInfo
from cowork.host.policy import load_policy
from cowork.host.secrets import KeyringSecrets, MemoryKeyring
from cowork.host.session import EgressSettings, Session, VMSettings
from cowork.host.vm.libvirt import LibvirtBackend
from cowork.paths import Paths


@pytest.fixture
def paths(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="cws", dir="/tmp"))
    yield replace(Paths.under(tmp_path / "cw"), runtime=root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fake_image(tmp_path, monkeypatch):
    d = tmp_path / "image"
    d.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (d / name).write_bytes(b"not a kernel")
    base = d / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    info = ImageInfo(
        dir=d, kernel=d / "vmlinuz", initrd=d / "initrd.img", base_disk=base,
        recipe_hash="0" * 64, files={}, built_at="2026-01-01T00:00:00Z", size_bytes=0,
        kernel_cmdline="console=ttyS0",
    )  # fmt: skip
    monkeypatch.setattr(image_mod, "ensure", lambda paths, progress=None: info)
    return info


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "project"
    ws.mkdir()
    if os.getuid() == 0:
        os.chown(ws, 4321, 4321)
    return ws


def test_a_guest_that_never_becomes_ready_is_destroyed_and_leaves_nothing(
    paths, fake_image, workspace, monkeypatch
):
    bus = EventBus()
    rec = Recorder()
    bus.subscribe(rec)
    backend = LibvirtBackend(uri="test:///default", events=bus)
    gateways = []
    real_start = session_mod.start_gateway

    def recording_start(egress, events, runtime_dir):
        gw = real_start(egress, events, runtime_dir)
        gateways.append(gw)
        return gw

    monkeypatch.setattr(session_mod, "start_gateway", recording_start)
    egress = EgressSettings(
        grants_provider=lambda: (), secrets=KeyringSecrets(backend=MemoryKeyring())
    )
    with pytest.raises(BootTimeout) as err:
        Session.open(
            workspace, paths=paths, events=bus, backend=backend, egress=egress,
            settings=VMSettings(boot_timeout_s=2, claude_dir=workspace / "none", accel="tcg"),
        )  # fmt: skip
    assert "has been destroyed" in str(err.value)
    assert backend.list() == [], "the VM must be gone from the hypervisor"
    assert not paths.sessions.exists() or list(paths.sessions.iterdir()) == []
    assert list(paths.runtime.iterdir()) == []
    assert len(gateways) == 1 and not gateways[0].running, "the gateway must be stopped"
    assert (workspace / ".claude").is_dir()  # the one thing created, on purpose, and empty
    assert Kind.VM_READY not in [e.kind for e in rec.events]


class ExplodingBackend:
    """Any use is a test failure: bad input must be refused before the backend is touched."""

    def __getattr__(self, name):
        raise AssertionError(f"backend.{name} used before the input was checked")


@pytest.mark.parametrize("make", [lambda t: t / "missing", lambda t: Path("/etc")])
def test_bad_workspaces_are_refused_before_anything_is_created(paths, tmp_path, make):
    with pytest.raises(WorkspaceError):
        Session.open(make(tmp_path), paths=paths, backend=ExplodingBackend())
    assert not paths.sessions.exists()


def test_a_claude_folder_with_credentials_is_refused_before_anything(paths, workspace, tmp_path):
    claude = tmp_path / "claude"
    claude.mkdir()
    (claude / ".credentials.json").write_text("{}")
    with pytest.raises(WorkspaceError, match=r"\.credentials\.json"):
        Session.open(
            workspace, paths=paths, backend=ExplodingBackend(),
            settings=VMSettings(claude_dir=claude),
        )  # fmt: skip
    assert not paths.sessions.exists()


def test_credential_files_in_the_workspace_refuse_under_policy(paths, workspace, tmp_path):
    (workspace / "notes.txt").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(WorkspaceError, match=r"notes\.txt: a private key"):
        Session.open(
            workspace, paths=paths, backend=ExplodingBackend(),
            settings=VMSettings(claude_dir=tmp_path / "none", secret_files="refuse"),
        )  # fmt: skip
    assert not paths.sessions.exists()


def test_secret_files_setting_follows_the_policy(tmp_path):
    paths = Paths.under(tmp_path)
    assert VMSettings.from_policy(load_policy(paths)).secret_files == "warn"
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text('version = 1\n[mounts]\nsecret_files = "refuse"\n')
    assert VMSettings.from_policy(load_policy(paths)).secret_files == "refuse"


def test_settings_follow_the_policy(tmp_path):
    paths = Paths.under(tmp_path)
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text(
        'version = 1\n[vm]\ncpus = 1\nmemory_mib = 1024\naccel = "tcg"\nkeep_overlay = true\n'
        '[mounts]\nworkspace_writable = false\nclaude_dir = "~/elsewhere"\n'
        "[egress]\nmax_body_mib = 8\n"
        '[[egress.grants]]\nid = "pypi"\nhost = "pypi.org"\n'
    )
    policy = load_policy(paths)
    vm = VMSettings.from_policy(policy)
    assert (vm.cpus, vm.memory_mib, vm.accel, vm.keep_overlay) == (1, 1024, "tcg", True)
    assert vm.workspace_writable is False
    assert vm.claude_dir == Path("~/elsewhere").expanduser()

    current = [policy]
    egress = EgressSettings.from_policy(lambda: current[0])
    assert egress.max_body_mib == 8
    assert [g.id for g in egress.grants_provider()] == ["pypi"]
    # Grants are read at each request: a reloaded policy applies to the next one.
    current[0] = load_policy(Paths.under(tmp_path / "empty"))
    assert list(egress.grants_provider()) == []


def test_session_names_are_slugs_of_the_folder():
    name = session_mod.new_session_name(Path("/home/u/My Taxes (2026)"))
    assert name.startswith("cowork-my-taxes-2026-")
    assert len(name) <= 63


class NoReadOnlySharesBackend:
    """A backend whose host cannot enforce read-only shares (as vfkit's virtio-fs)."""

    def __init__(self, **caps: object) -> None:
        from cowork.host.vm.backend import BackendCapabilities

        fields: dict[str, object] = {
            "name": "fakevz",
            "shared_folder_transports": ("virtiofs",),
            "readonly_shares_enforced_by_host": False,
            "channel_kinds": ("vsock",),
            "accelerators": (),
        }
        fields.update(caps)
        self.capabilities = BackendCapabilities(**fields)  # type: ignore[arg-type]
        self.calls: list[str] = []

    def __getattr__(self, name):
        def record(*_args, **_kw):
            self.calls.append(name)
            raise AssertionError(f"backend.{name} used although the session must be refused")

        return record


def test_a_read_only_share_the_backend_cannot_enforce_is_refused(
    paths, fake_image, workspace, tmp_path
):
    claude = tmp_path / "claude"
    claude.mkdir()
    backend = NoReadOnlySharesBackend()
    with pytest.raises(WorkspaceError) as err:
        Session.open(
            workspace, paths=paths, backend=backend,
            settings=VMSettings(claude_dir=claude, accel="tcg"),
        )  # fmt: skip
    text = str(err.value)
    assert "fakevz VM backend cannot keep a shared folder read-only" in text
    assert f"{workspace / '.claude'} (cw-wsclaude)" in text and f"{claude} (cw-claude)" in text
    assert backend.calls == []
    assert list(paths.sessions.iterdir()) == [] and list(paths.runtime.iterdir()) == []


def test_shares_check_passes_writable_shares_and_enforcing_backends(tmp_path):
    from cowork.host import workspace as ws_mod

    writable = ws_mod.shares_for(tmp_path, None)[:1]
    ws_mod.check_shares_enforceable(writable, NoReadOnlySharesBackend().capabilities)
    both = ws_mod.shares_for(tmp_path, tmp_path / "c")
    enforcing = NoReadOnlySharesBackend(readonly_shares_enforced_by_host=True).capabilities
    ws_mod.check_shares_enforceable(both, enforcing)
    with pytest.raises(WorkspaceError, match="read-only"):
        ws_mod.check_shares_enforceable(both, NoReadOnlySharesBackend().capabilities)


def test_a_backend_needing_a_raw_root_disk_is_refused_clearly(paths, fake_image, workspace):
    from cowork.host.vm.backend import DiskFormat, UnsupportedError

    backend = NoReadOnlySharesBackend(
        readonly_shares_enforced_by_host=True, disk_format=DiskFormat.RAW
    )
    with pytest.raises(UnsupportedError, match="boots a raw root disk"):
        Session.open(
            workspace, paths=paths, backend=backend,
            settings=VMSettings(claude_dir=workspace / "none", accel="tcg"),
        )  # fmt: skip
    assert backend.calls == []
    assert list(paths.sessions.iterdir()) == []


def test_staged_mode_shares_the_workspace_read_only_and_tells_the_guest(
    paths, fake_image, workspace
):
    from cowork.guest import contract
    from cowork.host.changes import store

    backend = LibvirtBackend(uri="test:///default", events=EventBus())
    seen = {}
    real_create = backend.create

    def create(spec):
        seen["shares"] = {s.tag: s.readonly for s in spec.shares}
        seen["seed"] = contract.decode_seed(spec.seed.read_bytes())
        seen["baseline"] = (store.set_dir(paths, spec.name) / "baseline.json").exists()
        return real_create(spec)

    backend.create = create  # type: ignore[method-assign]
    settings = VMSettings(
        boot_timeout_s=2, claude_dir=workspace / "none", accel="tcg", workspace_changes="staged"
    )
    with pytest.raises(BootTimeout):
        Session.open(workspace, paths=paths, backend=backend, settings=settings)
    assert seen["shares"][contract.TAG_WORKSPACE] is True  # read-only, enforced by the host
    assert seen["seed"].staged is True
    assert seen["baseline"] is True
    assert store.list_sessions(paths) == []  # a failed start leaves no change set behind


def test_changes_mode_comes_from_the_command_unless_policy_sets_it(tmp_path):
    paths = Paths.under(tmp_path)
    assert VMSettings.from_policy(load_policy(paths), "staged").workspace_changes == "staged"
    assert VMSettings.from_policy(load_policy(paths)).workspace_changes == "direct"
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text('version = 1\n[workspace]\nchanges = "staged"\n')
    assert VMSettings.from_policy(load_policy(paths), "direct").workspace_changes == "staged"
