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
    step("configuring a small initrd")
    install(
        HERE / "initramfs" / "cowork.conf", root, "etc/initramfs-tools/conf.d/cowork.conf", 0o644
    )
    install(HERE / "initramfs" / "cowork-hook", root, "etc/initramfs-tools/hooks/cowork", 0o755)


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


def export_boot_files(root: Path, out: Path) -> None:
    kernels = sorted(glob.glob(f"{root}/boot/vmlinuz-*"))
    initrds = sorted(glob.glob(f"{root}/boot/initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise SystemExit(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    shutil.copyfile(initrds[0], out / "initrd.img")
    print(f"cowork-kernel: {os.path.basename(kernels[0])[len('vmlinuz-') :]}", flush=True)


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
    clear_dir(root / "tmp")
    export_boot_files(root, out)
    found = problems(root)
    if found:
        print("the image is not sealed:\n" + "\n".join(found), file=sys.stderr)
        raise SystemExit(1)


def disk(root: Path, out: Path, label: str, size: str) -> None:
    """Write ``out/disk.raw``: an ext4 file system holding ``root``.

    While hooks run, mmdebstrap has /proc, /sys and /dev mounted inside ``root`` and
    ``mkfs.ext4 -d`` has no way to stay on one file system, so it reads a non-recursive bind
    mount of ``root`` instead: the same tree without anything mounted inside it.
    """
    step("writing the disk")
    view = out.parent / "rootview"
    view.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(root), str(view)], check=True)
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(view), str(out / "disk.raw"), size],
            check=True,
        )
    finally:
        subprocess.run(["umount", str(view)], check=True)
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
