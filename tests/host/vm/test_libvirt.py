"""LibvirtBackend against libvirt's own ``test:///default`` driver (no mocking of libvirt)."""

from __future__ import annotations

import grp
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.errors import BackendError, UsageError
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.vm.backend import UnsupportedError, VMBackend, VMState
from cowork.host.vm.domainxml import HostContext
from cowork.host.vm.libvirt import (
    SESSION_URI,
    SYSTEM_URI,
    LibvirtBackend,
    default_uri,
    describe,
    kvm_device_problem,
)
from cowork.host.vm.spec import Accel, Share, VMSpec

TEST_URI = "test:///default"
HOST = HostContext(
    uid=os.getuid(),
    gid=os.getgid(),
    emulator=Path("/usr/bin/qemu-system-x86_64"),
    system_mode=False,
)
_counter = itertools.count()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def backend(recorder: Recorder) -> Iterator[LibvirtBackend]:
    bus = EventBus()
    bus.subscribe(recorder)
    with LibvirtBackend(TEST_URI, bus, host=HOST) as b:
        yield b


def make_spec(tmp_path: Path, **overrides: object) -> VMSpec:
    """A spec whose files exist (validate checks them); unique name per call."""
    for name in ("vmlinuz", "initrd.img", "overlay.qcow2", "seed.img"):
        (tmp_path / name).write_bytes(b"")
    ws = tmp_path / "ws"
    (ws / ".claude").mkdir(parents=True, exist_ok=True)
    base: dict[str, object] = {
        "name": f"cowork-t{os.getpid()}-{next(_counter)}",
        "kernel": tmp_path / "vmlinuz",
        "initrd": tmp_path / "initrd.img",
        "disk": tmp_path / "overlay.qcow2",
        "seed": tmp_path / "seed.img",
        "channel_socket": tmp_path / "ch.sock",
        "console_log": tmp_path / "console.log",
        "shares": (Share("cw-ws", ws, False), Share("cw-wsclaude", ws / ".claude", True)),
    }
    base.update(overrides)
    return VMSpec(**base)  # type: ignore[arg-type]


def test_is_a_vm_backend(backend: LibvirtBackend) -> None:
    assert isinstance(backend, VMBackend)
    caps = backend.capabilities
    assert caps.name == "libvirt"
    assert caps.shared_folder_transports == ("9p",)
    assert caps.readonly_shares_enforced_by_host is True
    assert caps.channel_kinds == ("virtio-serial",)
    assert Accel.TCG in caps.accelerators


def test_define_start_status_destroy(
    backend: LibvirtBackend, tmp_path: Path, recorder: Recorder
) -> None:
    spec = make_spec(tmp_path)
    assert backend.status(spec.name).state is VMState.MISSING
    backend.create(spec)
    status = backend.status(spec.name)
    assert status.state is VMState.SHUTOFF
    assert status.accel is Accel.TCG
    backend.start(spec.name)
    assert backend.status(spec.name).state is VMState.RUNNING
    assert spec.name in [s.name for s in backend.list()]
    backend.destroy(spec.name)
    assert backend.status(spec.name).state is VMState.MISSING
    assert spec.name not in [s.name for s in backend.list()]
    kinds = [e.kind for e in recorder.events]
    assert kinds == [Kind.VM_CREATING, Kind.VM_STARTED, Kind.VM_STOPPED]
    assert all(e.fields["name"] == spec.name for e in recorder.events)


def test_definition_is_seen_by_another_connection(tmp_path: Path) -> None:
    # test:///default is shared by the connections open in this process, like a daemon's
    # state is shared by CLI invocations.
    spec = make_spec(tmp_path, accel=Accel.KVM)
    with LibvirtBackend(TEST_URI, host=HOST) as first:
        first.create(spec)
        with LibvirtBackend(TEST_URI, host=HOST) as second:
            try:
                assert second.status(spec.name).state is VMState.SHUTOFF
                assert second.status(spec.name).accel is Accel.KVM
            finally:
                second.destroy(spec.name)
        assert first.status(spec.name).state is VMState.MISSING


def test_destroy_is_idempotent(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.destroy(spec.name)  # never existed
    backend.create(spec)
    backend.destroy(spec.name)  # defined, not running
    backend.destroy(spec.name)  # gone
    assert backend.status(spec.name).state is VMState.MISSING


def test_stop_is_graceful_and_keeps_the_definition(
    backend: LibvirtBackend, tmp_path: Path, recorder: Recorder
) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    try:
        backend.start(spec.name)
        backend.stop(spec.name, timeout=5)
        assert backend.status(spec.name).state is VMState.SHUTOFF
        assert recorder.of(Kind.VM_STOPPED)[-1].fields["how"] == "graceful"
        backend.stop(spec.name, timeout=5)  # already off: nothing to do
    finally:
        backend.destroy(spec.name)


def test_create_twice_names_the_stale_vm(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    try:
        with pytest.raises(BackendError, match=f"cowork vm down {spec.name}"):
            backend.create(spec)
    finally:
        backend.destroy(spec.name)


def test_list_only_reports_cowork_vms(backend: LibvirtBackend, tmp_path: Path) -> None:
    # The test driver always holds a running domain named "test": it is not ours.
    spec = make_spec(tmp_path)
    backend.create(spec)
    try:
        names = [s.name for s in backend.list()]
        assert spec.name in names
        assert all(n.startswith("cowork-") for n in names)
        assert "test" not in names
    finally:
        backend.destroy(spec.name)


@pytest.mark.parametrize("verb", ["start", "destroy", "status", "stop"])
def test_foreign_vm_is_never_touched(backend: LibvirtBackend, verb: str) -> None:
    # "test" exists and runs on this driver: refusing it proves the name check comes first.
    with pytest.raises(BackendError, match="not a cowork VM"):
        if verb == "stop":
            backend.stop("test", timeout=1)
        else:
            getattr(backend, verb)("test")
    assert backend._lookup("test") is not None
    assert backend._lookup("test").isActive()


def test_start_of_missing_vm_says_so(backend: LibvirtBackend) -> None:
    with pytest.raises(BackendError, match="cowork-nothing does not exist"):
        backend.start("cowork-nothing")


def test_validate_lists_every_problem(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        name="plain",
        kernel=tmp_path / "missing-kernel",
        console_log=tmp_path / "nodir" / "console.log",
        shares=(Share("cw-ws", tmp_path / "vmlinuz", False),),
    )
    with pytest.raises(UsageError) as err:
        backend.create(spec)
    text = str(err.value)
    assert "must start with 'cowork-'" in text
    assert "missing-kernel" in text and "no such file" in text
    assert "nodir" in text
    assert "not a folder" in text
    assert backend.status("cowork-x").state is VMState.MISSING


def test_unsupported_error_is_a_backend_error() -> None:
    assert issubclass(UnsupportedError, BackendError)


def test_libvirt_prints_nothing_by_itself(
    backend: LibvirtBackend, capfd: pytest.CaptureFixture[str]
) -> None:
    backend.status("cowork-absent")
    with pytest.raises(BackendError):
        backend.start("cowork-absent")
    with pytest.raises(BackendError):
        LibvirtBackend("qemu+unix:///system?socket=/nonexistent/libvirt-sock").list()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_daemon_not_running_is_explained() -> None:
    with pytest.raises(BackendError, match=r"libvirt's daemon is not running.*libvirtd -d"):
        LibvirtBackend("qemu+unix:///system?socket=/nonexistent/libvirt-sock").list()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied",
            "add yourself to the group libvirt",
        ),
        (
            "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
            "sudo systemctl start libvirtd",
        ),
        (
            "Failed to connect socket to '/run/libvirt/virtlogd-sock': No such file or directory",
            "log daemon is not running",
        ),
        (
            "operation failed: domain 'cowork-a' already exists with uuid 1234",
            "stale VM named cowork-a exists: `cowork vm down cowork-a`",
        ),
        (
            "Cannot check QEMU binary /usr/bin/qemu-system-x86_64: No such file or directory",
            "apt-get install qemu-system-x86",
        ),
        ("internal error: something odd", "could not start VM cowork-a"),
    ],
)
def test_errors_are_described_for_people(message: str, expected: str) -> None:
    text = describe(1, message, "start VM cowork-a", SYSTEM_URI, "cowork-a")
    assert expected in text
    assert message in text  # libvirt's own words stay available for a bug report


def test_default_uri_follows_the_user() -> None:
    assert default_uri() == (SYSTEM_URI if os.geteuid() == 0 else SESSION_URI)


def test_kvm_device_that_libvirt_cannot_use_is_reported(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    group = grp.getgrgid(dev.stat().st_gid).gr_name
    dev.chmod(0o600)
    problem = kvm_device_problem(dev, kvm_group=group)
    assert problem is not None and f"chmod 0660 {dev}" in problem
    dev.chmod(0o660)
    assert kvm_device_problem(dev, kvm_group=group) is None
    assert kvm_device_problem(dev, kvm_group=group + "-other") is not None
    dev.chmod(0o666)
    assert kvm_device_problem(dev, kvm_group=group + "-other") is None
    assert kvm_device_problem(tmp_path / "absent") is None


def test_remote_hypervisor_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="another machine"):
        LibvirtBackend("qemu+ssh://example.invalid/system").list()


def test_reconnects_after_the_connection_closed(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    try:
        backend._connect().close()  # as if the daemon had gone away
        assert backend.status(spec.name).state in (VMState.SHUTOFF, VMState.MISSING)
        assert backend.status("cowork-absent").state is VMState.MISSING
    finally:
        backend.destroy(spec.name)


def _save_image(xml: str, cookie: str, pad: int = 4096, stream: bytes = b"QEVM-stream") -> bytes:
    from cowork.host.vm.libvirt import SAVE_HEADER, SAVE_MAGIC

    data = xml.encode() + b"\0"
    cookie_off = len(data)
    data += cookie.encode() + b"\0"
    data += b"\0" * pad
    fields = [SAVE_MAGIC, 2, len(data), 1, 0, cookie_off] + [0] * 14
    return SAVE_HEADER.pack(*fields) + data + stream


def test_a_save_image_is_copied_with_a_new_definition(tmp_path: Path) -> None:
    from cowork.host.vm.libvirt import SAVE_HEADER, copy_saved_image

    src, dst = tmp_path / "a.save", tmp_path / "b.save"
    src.write_bytes(_save_image("<domain><name>old</name></domain>", "<cookie/>"))
    xml = copy_saved_image(src, dst, lambda x: x.replace("old", "a-much-longer-name"))
    assert xml == "<domain><name>a-much-longer-name</name></domain>"
    out = dst.read_bytes()
    fields = SAVE_HEADER.unpack_from(out)
    data = out[SAVE_HEADER.size : SAVE_HEADER.size + fields[2]]
    assert fields[2] == SAVE_HEADER.unpack_from(src.read_bytes())[2]  # same data length
    assert data[: data.index(b"\0")].decode() == xml
    assert data[fields[5] :].startswith(b"<cookie/>\0")
    assert out.endswith(b"QEVM-stream") and len(out) == src.stat().st_size
    assert dst.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "image",
    [
        b"short",
        _save_image("<d/>", "<c/>").replace(b"LibvirtQemudSave", b"LibvirtQemudPart"),
        _save_image("<d/>", "<c/>", pad=0),  # no room for a longer definition
    ],
)
def test_a_save_image_that_cannot_be_rewritten_is_refused(tmp_path: Path, image: bytes) -> None:
    from cowork.host.vm.libvirt import copy_saved_image

    src = tmp_path / "a.save"
    src.write_bytes(image)
    with pytest.raises(ValueError):
        copy_saved_image(src, tmp_path / "b.save", lambda x: x + " " * 100)
