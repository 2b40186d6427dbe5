"""A real guest booted through LibvirtBackend + QEMU (TCG), independent of the guest image.

The guest is tiny and built here: Debian's generic kernel (fetched with ``apt-get download``
into a per-user cache) and a busybox initramfs whose ``/init`` loads the virtio and 9p
modules, looks at what the VM offers, writes the results to the console and then idles.
The host reads those lines from the console log file the domain XML configures.

Runs as root (``qemu:///system``, QEMU as root through the static DAC label) and as a normal
user (``qemu:///session``, e.g. ``runuser -u coworktest -- env HOME=/home/coworktest ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.vm.backend import VMState
from cowork.host.vm.libvirt import LibvirtBackend, _qemu_pid
from cowork.host.vm.spec import Accel, Share, VMSpec

pytestmark = pytest.mark.e2e

KERNEL_META = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
#: Load order follows each module's ``depends=`` (no modprobe in the initramfs).
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
    "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko",
    "net/9p/9pnet.ko",
    "net/9p/9pnet_virtio.ko",
    "fs/9p/9p.ko",
)
BOOT_DEADLINE_SECONDS = 300  # TCG on a shared 2-core machine; a watchdog, not a benchmark
DONE = "COWORK-E2E-DONE"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /mnt/ws /mnt/ro
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in {modules}; do insmod /lib/modules/$m; done
sleep 1
say() {{ echo "CHECK $1 $2"; }}
say net "$(ls /sys/class/net | tr '\\n' ',')"
for p in /sys/class/virtio-ports/*; do say port "$(cat $p/name)"; done
for d in /sys/block/vd*; do say disk "$(basename $d):$(cat $d/serial):ro=$(cat $d/ro)"; done
for c in /sys/bus/pci/devices/*/class; do say pciclass "$(cat $c)"; done
# Write as the host user's uid, as the agent does: unprivileged QEMU cannot chown to root.
U=$(sed -n 's/.*cowork_uid=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /etc
echo "root:x:0:0::/:/bin/sh" > /etc/passwd
[ "$U" = 0 ] || echo "agent:x:$U:$U::/:/bin/sh" >> /etc/passwd
printf 'root:x:0:\\nagent:x:%s:\\n' "$U" > /etc/group
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 cw-ws /mnt/ws || say wsmount failed
if su "$(sed -n "s/^\\([a-z]*\\):x:$U:.*/\\1/p" /etc/passwd)" -c \\
    'echo written-by-guest > /mnt/ws/from-guest.txt' 2>/tmp/werr; then say wswrite ok
else say wswrite "failed:$(tr ' ' _ </tmp/werr)"; fi
# Mounted read-write on purpose: the host, not the guest, must refuse the write.
mount -t 9p -o trans=virtio,version=9p2000.L,rw cw-ro /mnt/ro && say romount ok
say roread "$(cat /mnt/ro/keep.txt)"
if (echo changed > /mnt/ro/keep.txt) 2>/tmp/err; then say rowrite allowed
else say rowrite "refused:$(cat /tmp/err | tr ' ' '_')"; fi
if touch /mnt/ro/new.txt 2>/dev/null; then say rocreate allowed; else say rocreate refused; fi
echo {done}
while true; do sleep 3600; done
"""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cowork-tests"


def _kernel_package() -> str:
    proc = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"apt-cache cannot resolve {KERNEL_META} ({proc.stderr.strip()}): run "
            f"`sudo apt-get update`, or unpack the kernel package into {_cache_dir()}"
        )
    out = proc.stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise AssertionError(f"apt-cache does not know which kernel {KERNEL_META} depends on")


def _kernel_tree() -> Path:
    """Debian's generic kernel, unpacked once per user into the test cache."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb to fetch Debian's kernel")
    cached = sorted(p.parent for p in _cache_dir().glob("linux-image-*/done"))
    if cached:
        return cached[-1]
    package = _kernel_package()
    tree = _cache_dir() / package
    work = tree.with_name(tree.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(
        ["apt-get", "download", "-q", package], cwd=work, check=True, capture_output=True
    )
    (deb,) = work.glob("*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    deb.unlink()
    (work / "done").write_text(package)
    shutil.rmtree(tree, ignore_errors=True)
    work.rename(tree)
    return tree


def _newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio "newc" archive: (name, mode, data, (rdev major, minor)) per entry."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * ((-len(out)) % 4))

    for ino, (name, mode, data, (major, minor)) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1
    ):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(raw), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


@pytest.fixture(scope="module")
def tiny_guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tree = _kernel_tree()
    (kernel,) = (tree / "x" / "boot").glob("vmlinuz-*")
    (moddir,) = (tree / "x" / "lib" / "modules").iterdir()
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "lib", "lib/modules", "tmp"):
        entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes(), (0, 0)))
    for rel in MODULES:
        name = Path(rel).name
        data = (moddir / "kernel" / rel).read_bytes()
        entries.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, data, (0, 0)))
    init = INIT.format(modules=" ".join(Path(m).name for m in MODULES), done=DONE)
    entries.append(("init", stat.S_IFREG | 0o755, init.encode(), (0, 0)))
    out = tmp_path_factory.mktemp("guest")
    initrd = out / "initrd.img"
    initrd.write_bytes(_newc(entries))
    local_kernel = out / "vmlinuz"
    shutil.copyfile(kernel, local_kernel)
    return local_kernel, initrd


def _wait_for(path: Path, marker: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text
        time.sleep(0.5)
    text = path.read_text(errors="replace") if path.exists() else "<no console log>"
    raise AssertionError(f"guest did not print {marker!r} in time; console:\n{text[-3000:]}")


@pytest.fixture
def backend() -> Iterator[tuple[LibvirtBackend, Recorder, float]]:
    bus = EventBus()
    recorder = Recorder()
    bus.subscribe(recorder)
    t0 = time.monotonic()
    with LibvirtBackend(events=bus) as b:
        b.list()  # opens the connection (starts the per-user daemon in session mode)
        yield b, recorder, time.monotonic() - t0


def test_tiny_guest_boots_sealed_and_leaves_nothing(
    tiny_guest: tuple[Path, Path],
    backend: tuple[LibvirtBackend, Recorder, float],
    tmp_path: Path,
) -> None:
    lv, recorder, connect_s = backend
    kernel, initrd = tiny_guest
    ws = tmp_path / "ws"
    ro = tmp_path / "ro"
    ws.mkdir()
    ro.mkdir()
    (ro / "keep.txt").write_text("original\n")
    disk = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    seed = tmp_path / "seed.img"
    seed.write_bytes(b"\0" * 512)
    name = f"cowork-e2e-{os.getpid()}"
    spec = VMSpec(
        name=name,
        kernel=kernel,
        initrd=initrd,
        disk=disk,
        seed=seed,
        channel_socket=tmp_path / "ch.sock",
        console_log=tmp_path / "console.log",
        shares=(Share("cw-ws", ws, False), Share("cw-ro", ro, True)),
        cmdline=f"console=ttyS0 rdinit=/init panic=-1 loglevel=4 cowork_uid={os.getuid()}",
        cpus=1,
        memory_mib=512,
        accel=Accel.TCG,
    )
    timings: dict[str, float] = {"first_connection_s": connect_s}
    try:
        t0 = time.monotonic()
        lv.create(spec)
        timings["define_s"] = time.monotonic() - t0
        lv.start(name)
        timings["define_start_s"] = time.monotonic() - t0
        status = lv.status(name)
        assert status.state is VMState.RUNNING
        assert status.accel is Accel.TCG
        assert status.pid is not None and status.started_at is not None
        # QEMU runs as the invoking user in both modes (static DAC label in system mode).
        assert Path(f"/proc/{status.pid}").stat().st_uid == os.getuid()
        assert name in [s.name for s in lv.list()]

        console = _wait_for(spec.console_log, DONE, time.monotonic() + BOOT_DEADLINE_SECONDS)
        timings["start_to_checks_done_s"] = time.monotonic() - t0
        checks = [ln.split(" ", 2)[1:] for ln in console.splitlines() if ln.startswith("CHECK ")]
        by_key: dict[str, list[str]] = {}
        for key, *value in checks:
            by_key.setdefault(key, []).append(value[0] if value else "")
        assert by_key["net"] == ["lo,"], "the guest must have no network device"
        assert by_key["port"] == [spec.channel_name]
        assert sorted(by_key["disk"]) == ["vda::ro=0", f"vdb:{spec.seed_serial}:ro=1"]
        for cls in by_key["pciclass"]:
            # network, display, multimedia, USB controllers must not exist
            assert not cls.startswith(("0x02", "0x03", "0x04", "0x0c03")), cls
        assert by_key["wswrite"] == ["ok"]
        assert (ws / "from-guest.txt").read_text() == "written-by-guest\n"
        assert (ws / "from-guest.txt").stat().st_uid == os.getuid()
        assert by_key["romount"] == ["ok"]
        assert by_key["roread"] == ["original"]
        assert by_key["rowrite"][0].startswith("refused:")
        assert "Read-only_file_system" in by_key["rowrite"][0]
        assert by_key["rocreate"] == ["refused"]
        assert (ro / "keep.txt").read_text() == "original\n"
        assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]

        # This guest has no ACPI handler: stop must fall back to forcing it off.
        lv.stop(name, timeout=3)
        assert lv.status(name).state is VMState.SHUTOFF
        assert recorder.of(Kind.VM_STOPPED)[-1].fields["how"] in ("graceful", "forced")
        lv.start(name)
        assert lv.status(name).state is VMState.RUNNING
    finally:
        t0 = time.monotonic()
        lv.destroy(name)
        timings["destroy_s"] = time.monotonic() - t0
    assert lv.status(name).state is VMState.MISSING
    assert name not in [s.name for s in lv.list()]
    with LibvirtBackend() as fresh:
        assert fresh.status(name).state is VMState.MISSING
    assert _qemu_pid(name, any_user=True) is None
    print(json.dumps({"uri": lv.uri, **{k: round(v, 3) for k, v in timings.items()}}))
