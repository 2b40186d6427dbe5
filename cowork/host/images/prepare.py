"""mmdebstrap hooks for the cowork guest image. Runs on the build host, not in the guest.

    python3 prepare.py setup ROOT           before any package is installed
    python3 prepare.py customize ROOT OUT   after every package is installed

``ROOT`` is the root file system being built. In unshare mode the hooks run inside
mmdebstrap's user namespace, where ROOT's files appear root-owned, so plain ``os`` calls
give the image the right ownership in both modes.

Each phase prints ``cowork-step: <what>`` lines that the builder turns into progress.
The customize phase fails the build (non-zero exit) if the result is not as sealed as
promised: a setuid/setgid file, a file capability, an SSH host key, or sudo left behind.
"""

from __future__ import annotations

import errno
import glob
import gzip
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOOTSTRAP = "usr/local/sbin/cowork-boot"
CAPABILITY_XATTR = "security.capability"
HOSTNAME = "cowork"


def step(text: str) -> None:
    print(f"cowork-step: {text}", flush=True)


def install(src: Path, root: Path, rel: str, mode: int) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chown(dest, 0, 0)
    os.chmod(dest, mode)


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()
    dest.write_text(text, encoding="utf-8")
    os.chown(dest, 0, 0)
    os.chmod(dest, mode)


def setup(root: Path) -> None:
    step("configuring initramfs-tools")
    conf = "etc/initramfs-tools/conf.d/cowork.conf"
    install(HERE / "initramfs" / "cowork.conf", root, conf, 0o644)


# --- the initrd ----------------------------------------------------------------------------
#: Loaded by the initrd, in this order (each after its dependencies): what reaches the root
#: disk (virtio PCI + block, ext4 and the crc32c it asks for at mount time when metadata
#: checksums are on), then what the guest init needs (9p shares, the channel port, entropy).
INITRD_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "9pnet_virtio",
    "9p",
    "virtio_console",
    "virtio_rng",
)
TRAILER = "TRAILER!!!"


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_closure(wanted, modules_dep: str, modules_builtin: str) -> list[str]:
    """Paths (relative to /lib/modules/VERSION) of ``wanted`` and their dependencies, each
    after everything it depends on. Built-in modules need no file and are skipped; a
    module that is neither is an error (the guest could not boot)."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[_module_name(path)] = (path.strip(), rest.split())
    builtin = {_module_name(ln.strip()) for ln in modules_builtin.splitlines() if ln.strip()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise ValueError(f"module dependency loop: {' -> '.join((*chain, name))}")
        if name not in deps:
            if name in builtin:
                return
            raise ValueError(f"kernel module {name} is neither built in nor in modules.dep")
        path, needs = deps[name]
        for dep in needs:
            visit(_module_name(dep), (*chain, name))
        seen.add(name)
        if not path.endswith(".ko"):
            raise ValueError(f"{path}: compressed modules cannot be loaded by busybox insmod")
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def cpio_newc(entries) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs.

    ``entries`` are (name, mode, data, (rdev major, rdev minor)) with the file type in mode;
    owners are root and mtimes 0, so the same inputs always give the same bytes.
    """
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, (TRAILER, 0, b"", (0, 0))], 1):
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (
            0 if name == TRAILER else ino,
            mode,
            0,  # uid
            0,  # gid
            0 if name == TRAILER else nlink,
            0,  # mtime
            len(data),
            0,  # dev major
            0,  # dev minor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check
        )
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(encoded)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def build_initrd(root: Path, version: str) -> bytes:
    """The gzip-compressed initrd: busybox, the modules, /init and /dev/console."""
    moddir = root / "lib/modules" / version
    order = module_closure(
        INITRD_MODULES,
        (moddir / "modules.dep").read_text(encoding="utf-8"),
        (moddir / "modules.builtin").read_text(encoding="utf-8"),
    )
    entries: list = []
    dirs: set[str] = set()

    def add_dir(path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))

    def add_file(name: str, mode: int, data: bytes) -> None:
        entries.append((name, stat.S_IFREG | mode, data, (0, 0)))

    for d in ("bin", "dev", "proc", "sys", "root"):
        add_dir(d)
    # The kernel opens /dev/console for /init before anything can mount devtmpfs.
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    add_file("bin/busybox", 0o755, (root / "bin/busybox").read_bytes())
    add_file("init", 0o755, (HERE / "initrd-init").read_bytes())
    add_file("modules", 0o644, "".join(p + "\n" for p in order).encode())
    for rel in order:
        add_dir("lib/modules/" + os.path.dirname(rel))
        add_file(f"lib/modules/{rel}", 0o644, (moddir / rel).read_bytes())
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)


def walk(root: Path):
    """Every path under root, not following symlinks and not crossing into other mounts."""
    root_dev = os.lstat(root).st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_dev == root_dev:  # /proc, /sys, /dev are mounted while hooks run
                keep.append(name)
                yield path, st
        dirnames[:] = keep
        for name in filenames:
            path = os.path.join(dirpath, name)
            yield path, os.lstat(path)


def strip_privileges(root: Path) -> tuple[list[str], list[str]]:
    """Remove setuid/setgid bits and file capabilities. Returns (setid paths, capability paths)."""
    setid: list[str] = []
    caps: list[str] = []
    for path, st in walk(root):
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            setid.append(path)
        try:
            os.removexattr(path, CAPABILITY_XATTR, follow_symlinks=False)
            caps.append(path)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return setid, caps


def problems(root: Path) -> list[str]:
    out: list[str] = []
    for path, st in walk(root):
        if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
            continue
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            out.append(f"{path}: still setuid/setgid")
        try:
            os.getxattr(path, CAPABILITY_XATTR, follow_symlinks=False)
            out.append(f"{path}: still has file capabilities")
        except OSError:
            pass
    out += [f"{p}: SSH host key left in the image" for p in glob.glob(f"{root}/etc/ssh/ssh_host_*")]
    for rel in ("usr/bin/sudo", "usr/sbin/sudo", "bin/sudo"):
        if os.path.lexists(root / rel):
            out.append(f"{root / rel}: sudo must not be in the image")
    if not os.access(root / BOOTSTRAP, os.X_OK):
        out.append(f"{root / BOOTSTRAP}: bootstrap missing")
    return out


def clear_dir(path: Path, pattern: str = "*") -> None:
    for entry in glob.glob(str(path / pattern)):
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.unlink(entry)


#: Kernel module trees for hardware the guest never has (about 300 MB of the generic
#: kernel's 400 MB of modules). drivers/net goes too: the guest has no network device by
#: design, and without the drivers one attached by mistake would stay dead as well.
#: drivers/input stays: evdev reports the ACPI power button that a graceful shutdown presses.
PRUNED_MODULE_DIRS = (
    "sound",
    "net/bluetooth",
    "net/mac80211",
    "net/wireless",
    "net/nfc",
    "drivers/ata",
    "drivers/bluetooth",
    "drivers/firewire",
    "drivers/gnss",
    "drivers/gpu",
    "drivers/hid",
    "drivers/hwmon",
    "drivers/i2c",
    "drivers/iio",
    "drivers/infiniband",
    "drivers/isdn",
    "drivers/leds",
    "drivers/media",
    "drivers/memstick",
    "drivers/mmc",
    "drivers/mtd",
    "drivers/net",
    "drivers/nfc",
    "drivers/platform",
    "drivers/scsi",
    "drivers/spi",
    "drivers/staging",
    "drivers/thunderbolt",
    "drivers/usb",
    "drivers/video",
    "drivers/w1",
)


def prune_modules(root: Path, version: str) -> int:
    """Delete the module trees in PRUNED_MODULE_DIRS and re-run depmod; bytes freed."""
    step("pruning kernel modules")
    kernel = root / "lib/modules" / version / "kernel"
    freed = 0
    for rel in PRUNED_MODULE_DIRS:
        tree = kernel / rel
        if tree.is_dir() and not tree.is_symlink():
            freed += sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
            shutil.rmtree(tree)
    subprocess.run(["chroot", str(root), "/sbin/depmod", "-a", version], check=True)
    print(f"cowork-pruned: {freed // 2**20} MiB of kernel modules", flush=True)
    return freed


def export_boot_files(root: Path, out: Path) -> None:
    kernels = sorted(glob.glob(f"{root}/boot/vmlinuz-*"))
    if len(kernels) != 1:
        raise SystemExit(f"expected one kernel in /boot, found {kernels}")
    version = os.path.basename(kernels[0])[len("vmlinuz-") :]
    prune_modules(root, version)
    step("building the initrd")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    (out / "initrd.img").write_bytes(build_initrd(root, version))
    print(f"cowork-kernel: {version}", flush=True)


def customize(root: Path, out: Path) -> None:
    step("sealing the root file system")
    install(HERE / "cowork-boot", root, BOOTSTRAP, 0o755)
    # Per-session host keys come from the seed disk; build-time keys would be shared by
    # every user of the image.
    for key in glob.glob(f"{root}/etc/ssh/ssh_host_*"):
        os.unlink(key)
    setid, caps = strip_privileges(root)
    print(f"cowork-stripped: {len(setid)} setuid/setgid, {len(caps)} capabilities", flush=True)
    write(root, "etc/hostname", HOSTNAME + "\n")
    write(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost\n")
    # No network device: nothing resolves names in the guest; the egress proxy does.
    write(root, "etc/resolv.conf", "")
    write(root, "etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n")
    clear_dir(root / "var/lib/apt/lists", "*")
    os.makedirs(root / "var/lib/apt/lists/partial", exist_ok=True)
    clear_dir(root / "var/cache/apt", "*.bin")
    clear_dir(root / "var/cache/apt/archives", "*.deb")
    clear_dir(root / "var/log", "*.log")
    # Not /tmp: mmdebstrap keeps its apt configuration there until its own cleanup, after
    # these hooks; without it that cleanup's apt-get would act on the build host's apt state.
    # The disk gets an empty /tmp instead (see disk()).
    export_boot_files(root, out)
    found = problems(root)
    if found:
        print("the image is not sealed:\n" + "\n".join(found), file=sys.stderr)
        raise SystemExit(1)


def disk(root: Path, out: Path, label: str, size: str) -> None:
    """Write ``out/disk.raw``: an ext4 file system holding ``root``.

    While hooks run, mmdebstrap has /proc, /sys and /dev mounted inside ``root`` and
    ``mkfs.ext4 -d`` has no way to stay on one file system, so it reads a non-recursive bind
    mount of ``root`` instead: the same tree without anything mounted inside it (then empty
    tmpfs mounts over its /tmp and /var/tmp, which ``mkfs.ext4 -d`` copies as empty).
    """
    step("writing the disk")
    view = out / "rootview"
    view.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(root), str(view)], check=True)
    mounted = [view]
    try:
        # mmdebstrap's own files are still in /tmp and /var/tmp (it removes them after the
        # hooks): the image gets these directories empty.
        for rel in ("tmp", "var/tmp"):
            target = view / rel
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs", str(target)],
                check=True,
            )
            mounted.append(target)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(view), str(out / "disk.raw"), size],
            check=True,
        )
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=True)
        view.rmdir()


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "setup":
        setup(Path(argv[1]))
    elif len(argv) == 3 and argv[0] == "customize":
        customize(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 5 and argv[0] == "disk":
        disk(Path(argv[1]), Path(argv[2]), argv[3], argv[4])
    else:
        raise SystemExit(
            "usage: prepare.py setup ROOT | customize ROOT OUT | disk ROOT OUT LABEL SIZE"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
