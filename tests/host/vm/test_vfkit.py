"""The vfkit backend: golden argv (pure), and the lifecycle against a fake ``vfkit``."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from cowork.errors import BackendError, UsageError
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.vm.backend import DiskFormat, VMBackend, VMState
from cowork.host.vm.spec import Share, VMSpec
from cowork.host.vm.vfkit import (
    ARGV_FILE,
    PID_FILE,
    REST_SOCKET_FILE,
    VfkitBackend,
    VfkitOptions,
    argv_problems,
    build_argv,
    rest_call,
)

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "vfkit"
FAKE_VFKIT = Path(__file__).resolve().parent / "fake_vfkit.py"

TWO_SHARES = (
    Share("cw-ws", Path("/Users/ana/Documents/project"), readonly=False),
    Share("cw-claude", Path("/Users/ana/.claude"), readonly=False),
)


def make_spec(**overrides: object) -> VMSpec:
    base: dict[str, object] = {
        "name": "cowork-golden",
        "kernel": Path("/cache/images/abc/vmlinuz"),
        "initrd": Path("/cache/images/abc/initrd.img"),
        "disk": Path("/state/sessions/golden/root.img"),
        "seed": Path("/state/sessions/golden/seed.img"),
        "channel_socket": Path("/tmp/cw/golden/channel.sock"),
        "console_log": Path("/state/sessions/golden/console.log"),
    }
    base.update(overrides)
    return VMSpec(**base)  # type: ignore[arg-type]


REST = Path("/tmp/cw/vfkit/cowork-golden/rest.sock")
CASES = {
    "linux_two_shares": (make_spec(shares=TWO_SHARES), VfkitOptions(rest_socket=REST)),
    "linux_no_shares": (make_spec(cpus=4, memory_mib=4096), VfkitOptions(rest_socket=REST)),
    "efi_create": (
        make_spec(shares=TWO_SHARES[:1]),
        VfkitOptions(rest_socket=REST, boot="efi", efi_store=Path("/s/efi.fd"), efi_create=True),
    ),
}


# --- the pure builder -----------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_matches_golden_file(case: str) -> None:
    spec, options = CASES[case]
    got = json.dumps(build_argv(spec, options), indent=1) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("COWORK_UPDATE_GOLDEN") == "1":
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8"), (
        f"regenerate with COWORK_UPDATE_GOLDEN=1: {path}"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_has_no_network_device_and_only_the_spec_folders(case: str) -> None:
    spec, options = CASES[case]
    argv = build_argv(spec, options)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert not any(d.startswith("virtio-net") for d in devices)
    shared = [d for d in devices if d.startswith("virtio-fs")]
    assert shared == [f"virtio-fs,sharedDir={s.source},mountTag={s.tag}" for s in spec.shares]
    assert f"virtio-blk,path={spec.seed},readonly,deviceId=cowork-seed" in devices
    assert argv == build_argv(spec, options)  # pure: the same input, the same argv


def test_console_moves_to_the_virtio_console() -> None:
    argv = build_argv(make_spec(), VfkitOptions(rest_socket=REST))
    boot = argv[argv.index("--bootloader") + 1]
    assert boot.endswith('cmdline="console=hvc0 root=/dev/vda rw quiet"')
    assert "ttyS0" not in boot


def test_paths_with_commas_are_refused_with_the_path_named() -> None:
    spec = make_spec(
        disk=Path("/state/a,b/root.img"),
        shares=(Share("cw-ws", Path("/Users/ana/Q1,Q2"), readonly=False),),
    )
    with pytest.raises(UsageError) as info:
        build_argv(spec, VfkitOptions(rest_socket=REST))
    text = str(info.value)
    assert "disk '/state/a,b/root.img': contains a comma" in text
    assert "share cw-ws source '/Users/ana/Q1,Q2': contains a comma" in text
    assert "rename or move it" in text


def test_a_long_rest_socket_path_is_refused() -> None:
    long = Path("/" + "d" * 95 + "/rest.sock")
    problems = argv_problems(make_spec(), VfkitOptions(rest_socket=long))
    assert any("longer than 103 bytes" in p for p in problems)
    ok = Path("/" + "d" * (103 - len("//rest.sock")) + "/rest.sock")
    assert len(str(ok)) == 103
    assert argv_problems(make_spec(), VfkitOptions(rest_socket=ok)) == []


def test_a_read_only_share_is_refused_not_mounted_writable() -> None:
    spec = make_spec(shares=(Share("cw-claude", Path("/Users/ana/.claude"), readonly=True),))
    with pytest.raises(UsageError, match="cannot make a virtio-fs share read-only"):
        build_argv(spec, VfkitOptions(rest_socket=REST))


def test_efi_needs_a_variable_store() -> None:
    problems = argv_problems(make_spec(), VfkitOptions(rest_socket=REST, boot="efi"))
    assert problems == ["boot 'efi' needs an EFI variable store path"]


def test_capabilities_say_what_the_platform_lacks(tmp_path: Path) -> None:
    backend = VfkitBackend(tmp_path)
    assert isinstance(backend, VMBackend)
    caps = backend.capabilities
    assert caps.readonly_shares_enforced_by_host is False
    assert caps.readonly_disks_enforced_by_host is True
    assert caps.disk_format is DiskFormat.RAW
    assert caps.channel_kinds == ("vsock",)
    assert caps.shared_folder_transports == ("virtiofs",)
    assert caps.location == str(tmp_path)


# --- the lifecycle against the fake vfkit ---------------------------------------------------


@pytest.fixture
def short_tmp() -> object:
    # REST and channel sockets must fit in 103 bytes: pytest's tmp_path can be too long.
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cwvf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def record(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = short_tmp / "argv.jsonl"
    monkeypatch.setenv("FAKE_VFKIT_RECORD", str(path))
    return path


def files_for(root: Path, *, qcow2: bool = False) -> VMSpec:
    (root / "img").mkdir()
    for name in ("vmlinuz", "initrd.img", "seed.img"):
        (root / "img" / name).write_bytes(b"\0" * 512)
    (root / "img" / "root.img").write_bytes((b"QFI\xfb" if qcow2 else b"\0" * 4) + b"\0" * 508)
    (root / "ws").mkdir()
    (root / "run").mkdir()
    return VMSpec(
        name="cowork-life",
        kernel=root / "img" / "vmlinuz",
        initrd=root / "img" / "initrd.img",
        disk=root / "img" / "root.img",
        seed=root / "img" / "seed.img",
        channel_socket=root / "run" / "ch.sock",
        console_log=root / "run" / "console.log",
        shares=(Share("cw-ws", root / "ws", readonly=False),),
    )


def backend_for(root: Path, **kw: object) -> tuple[VfkitBackend, Recorder]:
    bus = EventBus(session="t")
    rec = Recorder()
    bus.subscribe(rec)
    kw.setdefault("start_timeout", 20.0)
    kw.setdefault("term_grace", 5.0)
    return VfkitBackend(root / "vf", vfkit=str(FAKE_VFKIT), events=bus, **kw), rec  # type: ignore[arg-type]


def test_start_status_inspect_and_graceful_stop(short_tmp: Path, record: Path) -> None:
    spec = files_for(short_tmp)
    backend, rec = backend_for(short_tmp)
    assert backend.status(spec.name).state is VMState.MISSING
    backend.create(spec)
    assert backend.status(spec.name).state is VMState.SHUTOFF
    backend.start(spec.name)
    try:
        status = backend.status(spec.name)
        assert status.state is VMState.RUNNING and status.pid is not None
        # What vfkit was given is exactly what the pure builder makes.
        [argv] = [json.loads(line) for line in record.read_text().splitlines()]
        assert argv == build_argv(spec, backend.options_for(spec.name), vfkit=str(FAKE_VFKIT))[1:]
        inspected = backend.inspect(spec.name)
        assert [d["kind"] for d in inspected["devices"]] == [
            "virtio-blk", "virtio-blk", "virtio-fs", "virtio-vsock", "virtio-serial",
        ]  # fmt: skip
        assert "Linux version" in spec.console_log.read_text()
        # The channel socket is there and reaches the "guest".
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(spec.channel_socket))
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        assert [v.name for v in backend.list()] == [spec.name]
    finally:
        backend.stop(spec.name, timeout=10)
    assert backend.status(spec.name).state is VMState.SHUTOFF
    assert [e.fields["how"] for e in rec.of(Kind.VM_STOPPED)] == ["graceful"]
    backend.destroy(spec.name)
    assert backend.status(spec.name).state is VMState.MISSING
    assert not (backend.state_dir / spec.name).exists()
    backend.destroy(spec.name)  # idempotent


def test_stop_falls_back_to_sigterm_then_sigkill(
    short_tmp: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = files_for(short_tmp)
    backend, rec = backend_for(short_tmp, term_grace=1.0)
    backend.create(spec)
    monkeypatch.setenv("FAKE_VFKIT_GUEST_IGNORES_STOP", "1")
    backend.start(spec.name)
    backend.stop(spec.name, timeout=0.5)
    assert backend.status(spec.name).state is VMState.SHUTOFF
    monkeypatch.setenv("FAKE_VFKIT_IGNORE_TERM", "1")
    backend.start(spec.name)
    pid = backend.status(spec.name).pid
    assert pid is not None
    backend.stop(spec.name, timeout=0.5)
    assert backend.status(spec.name).state is VMState.SHUTOFF
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert [e.fields["how"] for e in rec.of(Kind.VM_STOPPED)] == ["terminated", "forced"]
    backend.destroy(spec.name)


def test_a_stale_rest_socket_is_removed_before_start(short_tmp: Path, record: Path) -> None:
    spec = files_for(short_tmp)
    backend, _ = backend_for(short_tmp)
    backend.create(spec)
    backend.start(spec.name)
    pid = backend.status(spec.name).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # like a crash: the sockets stay behind
    deadline = time.monotonic() + 10
    while backend.status(spec.name).state is not VMState.SHUTOFF:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rest = backend.state_dir / spec.name / REST_SOCKET_FILE
    assert rest.exists() and spec.channel_socket.exists()
    backend.start(spec.name)  # the fake, like vfkit, exits on a stale socket
    assert backend.status(spec.name).state is VMState.RUNNING
    backend.destroy(spec.name)
    assert not spec.channel_socket.exists()


def test_the_fake_refuses_a_stale_socket_as_vfkit_does(short_tmp: Path, record: Path) -> None:
    # Proves the previous test can fail: without the clean-up, start fails.
    spec = files_for(short_tmp)
    backend, _ = backend_for(short_tmp)
    backend.create(spec)
    rest = backend.state_dir / spec.name / REST_SOCKET_FILE
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(rest))
    sock.close()
    argv = json.loads((backend.state_dir / spec.name / ARGV_FILE).read_text())["argv"]
    import subprocess

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "already in use" in proc.stderr


def test_a_vm_that_cannot_start_is_an_error_with_vfkits_words(
    short_tmp: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = files_for(short_tmp)
    backend, _ = backend_for(short_tmp)
    backend.create(spec)
    monkeypatch.setenv("FAKE_VFKIT_EXIT_AT_START", "1")
    with pytest.raises(BackendError, match="VZErrorDomain"):
        backend.start(spec.name)
    assert not (backend.state_dir / spec.name / PID_FILE).exists()
    assert backend.status(spec.name).state is VMState.SHUTOFF
    backend.destroy(spec.name)


def test_validate_refuses_qcow2_foreign_names_and_missing_vfkit(short_tmp: Path) -> None:
    spec = files_for(short_tmp, qcow2=True)
    backend, _ = backend_for(short_tmp)
    with pytest.raises(UsageError, match="vfkit boots raw images only"):
        backend.validate(spec)
    with pytest.raises(BackendError, match="not a cowork VM"):
        backend.status("someone-elses-vm")
    (short_tmp / "img" / "root.img").write_bytes(b"\0" * 512)
    missing = VfkitBackend(short_tmp / "vf", vfkit="/nonexistent/vfkit")
    with pytest.raises(UsageError, match=r"vfkit .* is not installed"):
        missing.validate(spec)


def test_destroy_forces_off_a_running_vm(short_tmp: Path, record: Path) -> None:
    spec = files_for(short_tmp)
    backend, _ = backend_for(short_tmp)
    backend.create(spec)
    with pytest.raises(BackendError, match="stale VM"):
        backend.create(spec)
    backend.start(spec.name)
    pid = backend.status(spec.name).pid
    assert pid is not None
    rest = backend.state_dir / spec.name / REST_SOCKET_FILE
    assert rest_call(rest, "GET", "/vm/state")[1]["state"] == "VirtualMachineStateRunning"
    backend.destroy(spec.name)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert backend.list() == []


def test_a_reused_pid_is_not_ours_and_is_never_signalled(short_tmp: Path) -> None:
    import subprocess

    spec = files_for(short_tmp)
    backend, _ = backend_for(short_tmp)
    backend.create(spec)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (backend.state_dir / spec.name / PID_FILE).write_text(f"{other.pid}\n")
        assert backend.status(spec.name).state is VMState.SHUTOFF
        backend.stop(spec.name, timeout=0.1)
        backend.destroy(spec.name)
        assert other.poll() is None, "a process that is not this VM's vfkit was signalled"
    finally:
        other.kill()
        other.wait()
