"""Building and verifying the guest image: kernel + initrd + read-only base disk + manifest.

The image is Debian bookworm built from Debian packages with ``mmdebstrap`` (``--mode=root``
as root, ``--mode=unshare`` as a normal user), following the recipe in ``images/`` beside this
module (package data, so an installed cowork builds its image too): ``packages.txt`` (what
is installed), ``prepare.py`` (the hooks that seal the root file system) and ``cowork-boot``
(the kernel's ``init=``, which unpacks the guest code from the seed disk). The root file
system becomes an ext4 disk with ``mkfs.ext4 -d`` (no loop mounts, so no root needed for
that step) and then a qcow2 base that every session overlays.

Why the generic kernel (``linux-image-amd64``) and 9p: the workspace's ``.claude`` folder and
the user's ``~/.claude`` are shared read-only, and that MUST be enforced by the host, not by
a mount option the guest could drop. QEMU's 9p export has ``readonly=on``, enforced in QEMU
(writes fail with EROFS whatever the guest does), and ``security_model=passthrough`` keeps
real ownership, modes and symlinks in the user's folder. The virtiofsd in bookworm has no
read-only export, so a read-only virtiofs mount would not be a boundary. The cloud kernel
(``linux-image-cloud-amd64``) is smaller and boots faster but is built without 9p
(``CONFIG_NET_9P`` unset), so it cannot mount these shares.

Why our own initrd: minbase has no udev, and initramfs-tools's initrd (udev, scripts, ~35 MB
with ``MODULES=most``) spends seconds under software emulation before the real init runs.
``images/prepare.py`` instead builds a ~2 MB initrd from the image's own busybox-static and
kernel modules (virtio, ext4, 9p, virtio_console, virtio-rng, with their dependencies from
``modules.dep``) whose ``/init`` (``images/initrd-init``) loads them, mounts ``root=`` and
switches to ``init=``. initramfs-tools stays installed only because the kernel package
depends on it.

Contract:

- :func:`recipe_hash` covers every file in ``images/`` and this module's build constants,
  NOT ``cowork/guest`` (guest code travels on the seed disk). The image lives in
  ``Paths().image_dir(recipe_hash())``.
- :func:`build` builds into a temporary directory beside the final one and renames it into
  place, so a failed or interrupted build never leaves a half image where a good one is
  expected.
- :func:`verify` re-hashes every file listed in the manifest (sha256, full) and raises
  :class:`~cowork.errors.ImageError` naming the first file that is missing or differs.
  Measured: ~0.3-0.6 s for the ~440 MB image with a warm page cache (~700-950 MB/s).
- :func:`ensure` (every session start) uses :func:`verify_unchanged`: a full verification is
  recorded in the image folder with each file's inode, size, modification and change time,
  and reused only while all of them are unchanged; any change is hashed again and a file
  that differs is refused as by :func:`verify`. ``cowork image info`` and ``cowork doctor``
  always hash in full.
- ``build(force=True)`` replaces the image in place. Two builds of one recipe are not
  byte-identical (timestamps, file system UUID, newer security updates), so an overlay kept
  from an earlier session must not outlive a forced rebuild of its base.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cowork.errors import ImageError
from cowork.host.events import EventBus, Kind
from cowork.paths import IMAGE_MANIFEST_FILE, Paths

# --- build constants (part of the recipe hash) -------------------------------------------
RELEASE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DISK_SIZE = "8G"
FS_LABEL = "root"
BOOTSTRAP_PATH = "/usr/local/sbin/cowork-boot"
KERNEL_CMDLINE = f"console=ttyS0 root=/dev/vda rw quiet init={BOOTSTRAP_PATH}"
#: Documentation, man pages and translations are not needed by an agent and cost ~100 MB.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
MANIFEST_FORMAT = 1

# --- output file names ---------------------------------------------------------------------
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
BASE_DISK_FILE = "base.qcow2"
IMAGE_FILES = (KERNEL_FILE, INITRD_FILE, BASE_DISK_FILE)

#: Build tools and the Debian package that provides each.
BUILD_TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils"}
TOTAL_STEPS = 6

Progress = Callable[[str], None]


def recipe_dir() -> Path:
    """The recipe folder, ``cowork/host/images/``: package data, so an installed cowork (a
    wheel, the Debian package) builds its image as a checkout does."""
    return Path(__file__).resolve().parent / "images"


@dataclass(frozen=True)
class ImageInfo:
    """A built image. ``files`` maps each file name in ``dir`` to its sha256."""

    dir: Path
    kernel: Path
    initrd: Path
    base_disk: Path
    recipe_hash: str
    files: Mapping[str, str]
    built_at: str  # ISO 8601, UTC
    size_bytes: int
    kernel_cmdline: str
    kernel_version: str = ""

    def identity(self) -> str:
        """sha256 of this build: its recipe and the checksums of its files (a rebuild with
        the same recipe is another build)."""
        text = json.dumps([self.recipe_hash, sorted(self.files.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


# --- pure parts ------------------------------------------------------------------------------
def _recipe_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    )


def recipe_hash(root: Path | None = None) -> str:
    """sha256 over the recipe files in ``images/`` and the build constants above."""
    root = root or recipe_dir()
    if not root.is_dir():
        raise ImageError(
            f"the image recipe folder {root} is missing; reinstall cowork (the recipe is "
            "part of the package)"
        )
    h = hashlib.sha256()
    constants = {
        "release": RELEASE,
        "variant": VARIANT,
        "disk_size": DISK_SIZE,
        "fs_label": FS_LABEL,
        "cmdline": KERNEL_CMDLINE,
        "dpkg": list(DPKG_EXCLUDES),
        "format": MANIFEST_FORMAT,
    }
    h.update(json.dumps(constants, sort_keys=True).encode())
    for path in _recipe_files(root):
        h.update(b"\0file\0" + path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def read_packages(text: str) -> list[str]:
    """Package names from ``packages.txt``: one per line, ``#`` comments, blank lines ignored."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", line):
            raise ImageError(f"images/packages.txt: {line!r} is not a Debian package name")
        out.append(line)
    if not out:
        raise ImageError("images/packages.txt lists no packages")
    return out


def _parse_one_line_sources(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def _parse_deb822_sources(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


def mirrors_from_sources(files: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(Debian mirror, security mirror) for :data:`RELEASE` from apt sources files.

    ``files`` is (file name, text) pairs from ``/etc/apt/sources.list`` and
    ``sources.list.d/*.list`` (one-line format) or ``*.sources`` (deb822). Falls back to
    deb.debian.org for whichever is not configured.
    """
    mirror = security = ""
    for name, text in files:
        parse = _parse_deb822_sources if name.endswith(".sources") else _parse_one_line_sources
        for uri, suites in parse(text):
            if not uri.startswith(("http://", "https://")):
                continue
            if not mirror and RELEASE in suites:
                mirror = uri.rstrip("/")
            if not security and f"{RELEASE}-security" in suites:
                security = uri.rstrip("/")
    return mirror or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR


def host_mirrors(etc_apt: Path = Path("/etc/apt")) -> tuple[str, str]:
    files: list[tuple[str, str]] = []
    candidates = [etc_apt / "sources.list"]
    if (etc_apt / "sources.list.d").is_dir():
        candidates += sorted((etc_apt / "sources.list.d").iterdir())
    for path in candidates:
        if path.suffix in (".list", ".sources") and path.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                files.append((path.name, path.read_text(encoding="utf-8")))
    return mirrors_from_sources(files)


def has_subordinate_ids(user: str, uid: int, subuid_text: str) -> bool:
    """Whether /etc/subuid (or subgid) text gives ``user`` (or ``uid``) a range of ids."""
    for raw in subuid_text.splitlines():
        parts = raw.strip().split(":")
        if (
            len(parts) == 3
            and parts[0] in (user, str(uid))
            and parts[2].isdigit()
            and int(parts[2]) >= 65536
        ):
            return True
    return False


def mmdebstrap_argv(
    *,
    mode: str,
    packages: list[str],
    mirror: str,
    security: str,
    recipe: Path,
    out: Path,
    python: str,
) -> list[str]:
    """The mmdebstrap command that builds the root file system and, in its last hook, the raw
    ext4 disk ``out/disk.raw`` plus ``out/vmlinuz`` and ``out/initrd.img``. The root file
    system itself is discarded (target /dev/null): the disk is made inside mmdebstrap's
    namespace, where ownership is right in unshare mode too."""
    prepare = recipe / "prepare.py"
    argv = [
        "mmdebstrap",
        f"--mode={mode}",
        f"--variant={VARIANT}",
        "--format=null",
        "--include=" + ",".join(packages),
        '--aptopt=Acquire::Languages "none"',
        f'--setup-hook={_q(python)} {_q(str(prepare))} setup "$1"',
        f'--customize-hook={_q(python)} {_q(str(prepare))} customize "$1" {_q(str(out))}',
        f'--customize-hook={_q(python)} {_q(str(prepare))} disk "$1" {_q(str(out))} '
        f"{FS_LABEL} {DISK_SIZE}",
    ]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [
        RELEASE,
        "/dev/null",
        f"deb {mirror} {RELEASE} main",
        f"deb {mirror} {RELEASE}-updates main",
        f"deb {security} {RELEASE}-security main",
    ]
    return argv


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --- manifest and verification -----------------------------------------------------------------
def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest_path(directory: Path) -> Path:
    return directory / IMAGE_MANIFEST_FILE


def load(directory: Path) -> ImageInfo:
    """Read an image's manifest (no hashing). Raises ImageError if it is missing or bad."""
    path = _manifest_path(directory)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        files = {name: str(entry["sha256"]) for name, entry in obj["files"].items()}
        sizes = [int(entry["size"]) for entry in obj["files"].values()]
        info = ImageInfo(
            dir=directory,
            kernel=directory / KERNEL_FILE,
            initrd=directory / INITRD_FILE,
            base_disk=directory / BASE_DISK_FILE,
            recipe_hash=str(obj["recipe_hash"]),
            files=files,
            built_at=str(obj["built_at"]),
            size_bytes=sum(sizes),
            kernel_cmdline=str(obj["kernel_cmdline"]),
            kernel_version=str(obj.get("kernel_version", "")),
        )
    except FileNotFoundError as exc:
        raise ImageError(
            f"no guest image at {directory} ({IMAGE_MANIFEST_FILE} is missing); "
            "build it with `cowork image build`"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(
            f"the image manifest {path} is unreadable ({exc}); "
            "rebuild with `cowork image build --force`"
        ) from exc
    missing = [name for name in IMAGE_FILES if name not in files]
    if missing:
        raise ImageError(
            f"the image manifest {path} does not list {', '.join(missing)}; "
            "rebuild with `cowork image build --force`"
        )
    return info


def verify(info_or_dir: ImageInfo | Path) -> ImageInfo:
    """Re-hash every file of the image against its manifest; return the image if all match.

    Raises ImageError naming the first file that is missing or whose sha256 differs. An
    ``ImageInfo`` passed in must also agree with the manifest on disk.
    """
    directory = info_or_dir.dir if isinstance(info_or_dir, ImageInfo) else Path(info_or_dir)
    info = load(directory)
    if isinstance(info_or_dir, ImageInfo) and dict(info_or_dir.files) != dict(info.files):
        raise ImageError(
            f"the image manifest in {directory} changed since it was loaded; "
            "rebuild with `cowork image build --force`"
        )
    for name, expected in sorted(info.files.items()):
        path = directory / name
        try:
            actual = sha256_file(path)
        except FileNotFoundError as exc:
            raise ImageError(
                f"image file {path} is missing; rebuild with `cowork image build --force`"
            ) from exc
        except OSError as exc:
            raise ImageError(f"cannot read image file {path}: {exc.strerror}") from exc
        if actual != expected:
            raise ImageError(
                f"image file {path} does not match its manifest (sha256 {actual[:12]}…, "
                f"expected {expected[:12]}…); rebuild with `cowork image build --force`"
            )
    return info


#: Where :func:`verify_unchanged` records a full verification, in the image's folder.
VERIFIED_FILE = "verified.json"
#: A file changed less than this long before a verification may change again without its
#: change time moving (file systems stamp times at a clock tick); such a result is not kept.
SETTLE_SECONDS = 2.0


def _signatures(directory: Path, names: Iterable[str]) -> dict[str, list[int]] | None:
    """Device, inode, size, modification and change time (ns) of the manifest and ``names``;
    None when one is missing. Any write, truncation, replacement or ``touch`` of a file
    changes its change time (which no user call can set back) or its inode."""
    out: dict[str, list[int]] = {}
    for name in (IMAGE_MANIFEST_FILE, *names):
        try:
            st = os.stat(directory / name)
        except OSError:
            return None
        out[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def _verified_record(info: ImageInfo, signatures: Mapping[str, list[int]]) -> dict[str, Any]:
    return {"files": dict(info.files), "signatures": dict(signatures)}


def verify_unchanged(directory: Path, *, settle: float | None = None) -> ImageInfo:
    """:func:`verify`, but a full verification is reused while the manifest and every file
    of the image are exactly as they were then (same inode, size, modification and change
    time); anything else is hashed again, so a changed image still fails closed.

    The record of a verification is kept in ``VERIFIED_FILE`` in the image's folder (only
    when no file changed in the ``settle`` seconds before it, and none during it); an image
    folder that cannot be written is verified in full every time. ``settle`` defaults to
    :data:`SETTLE_SECONDS`."""
    settle = SETTLE_SECONDS if settle is None else settle
    started = time.time_ns()
    info = load(directory)
    before = _signatures(directory, info.files)
    record_path = directory / VERIFIED_FILE
    if before is not None:
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if recorded == _verified_record(info, before):
            return info
    verified = verify(directory)
    after = _signatures(directory, verified.files)
    settled = before is not None and all(
        sig[4] <= started - int(settle * 1e9) for sig in before.values()
    )
    if after is not None and after == before and settled:
        text = json.dumps(_verified_record(verified, after), sort_keys=True)
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(prefix=f".{VERIFIED_FILE}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
                os.chmod(tmp, 0o644)
                os.replace(tmp, record_path)
            except OSError:
                os.unlink(tmp)
                raise
    return verified


def write_manifest(directory: Path, *, recipe: str, kernel_version: str) -> ImageInfo:
    files = {}
    for name in IMAGE_FILES:
        path = directory / name
        files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    obj: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "recipe_hash": recipe,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kernel_cmdline": KERNEL_CMDLINE,
        "kernel_version": kernel_version,
        "release": RELEASE,
        "files": files,
    }
    _manifest_path(directory).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return load(directory)


# --- building ------------------------------------------------------------------------------------
#: Build tools such as mkfs.ext4 live in sbin, which is not on a normal user's PATH on Debian.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def tool_search_path() -> str:
    """PATH plus the sbin folders, for finding and running the build tools."""
    parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    return os.pathsep.join(parts + [d for d in SBIN_DIRS if d not in parts])


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=tool_search_path())


def check_tools(which: Callable[[str], str | None] = find_tool) -> None:
    """Raise ImageError naming the Debian package of every missing build tool."""
    missing = [(tool, pkg) for tool, pkg in BUILD_TOOLS.items() if which(tool) is None]
    if missing:
        names = ", ".join(tool for tool, _ in missing)
        pkgs = " ".join(sorted({pkg for _, pkg in missing}))
        raise ImageError(
            f"cannot build the guest image: {names} not found; install with "
            f"`sudo apt-get install --no-install-recommends {pkgs}`"
        )


def build_mode() -> str:
    """``root`` as root, else ``unshare`` (needs /etc/subuid and /etc/subgid ranges)."""
    if os.geteuid() == 0:
        return "root"
    import getpass

    user = getpass.getuser()
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError:
            text = ""
        if not has_subordinate_ids(user, os.getuid(), text):
            raise ImageError(
                f"cannot build the guest image as {user}: {name} gives {user} no range of "
                f"subordinate ids; add one with `sudo usermod --add-subuids 100000-165535 "
                f"--add-subgids 100000-165535 {user}` (package uidmap), or build as root"
            )
    return "unshare"


@contextlib.contextmanager
def _build_lock(images: Path) -> Iterator[None]:
    images.mkdir(parents=True, exist_ok=True)
    with (images / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _say(progress: Progress | None, n: int, text: str) -> None:
    if progress is not None:
        progress(f"[{n}/{TOTAL_STEPS}] {text}")


def _run_logged(argv: list[str], log: IO[str], on_line: Callable[[str], None], tmpdir: Path) -> int:
    env = {
        **os.environ,
        "PATH": tool_search_path(),
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "TMPDIR": str(tmpdir),
    }
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        on_line(line.rstrip("\n"))
    return proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def build(
    paths: Paths,
    *,
    force: bool = False,
    progress: Progress | None = None,
    bus: EventBus | None = None,
) -> ImageInfo:
    """Build the image for the current recipe (or return the existing one unless ``force``).

    Takes 1-3 minutes and needs the Debian mirror. ``progress`` receives lines such as
    ``"[2/6] installing packages (about 1-2 minutes)…"``.
    """
    _say(progress, 1, "checking build tools")
    check_tools()
    mode = build_mode()
    recipe = recipe_dir()
    rhash = recipe_hash(recipe)
    final = paths.image_dir(rhash)
    with _build_lock(paths.images):
        if final.exists() and not force:
            with contextlib.suppress(ImageError):
                info = load(final)
                _say(progress, TOTAL_STEPS, f"image already built at {final}")
                return info
        started = time.monotonic()
        if bus is not None:
            bus.emit(Kind.IMAGE_BUILD, phase="started", recipe_hash=rhash, mode=mode)
        work = Path(tempfile.mkdtemp(prefix=f".build-{rhash[:12]}-", dir=paths.images))
        try:
            # The build reads its own copy of the recipe, so an edit made while it runs
            # cannot end up in an image labelled with the old recipe's hash.
            snapshot = work / "recipe"
            shutil.copytree(recipe, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
            if recipe_hash(snapshot) != rhash:
                raise ImageError(f"the recipe in {recipe} changed as the build started; retry")
            packages = read_packages((snapshot / "packages.txt").read_text(encoding="utf-8"))
            info = _build_into(work, rhash, mode, packages, snapshot, progress)
            _install(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if bus is not None:
                bus.emit(Kind.IMAGE_BUILD, phase="failed", recipe_hash=rhash)
            raise
        seconds = round(time.monotonic() - started, 1)
        if bus is not None:
            bus.emit(Kind.IMAGE_BUILD, phase="finished", recipe_hash=rhash, seconds=seconds)
        _say(progress, TOTAL_STEPS, f"done in {seconds:.0f} s: {final}")
        return load(final)


def _build_into(
    work: Path,
    rhash: str,
    mode: str,
    packages: list[str],
    recipe: Path,
    progress: Progress | None,
) -> ImageInfo:
    mirror, security = host_mirrors()
    out = work / "out"
    out.mkdir()
    # The hooks run as root inside mmdebstrap's user namespace; in unshare mode that root is a
    # subordinate uid that cannot write to the user's folders. They write to stage/ (open to
    # it, under a work dir that others can traverse but not list), and the files are copied
    # out as the user afterwards.
    stage = work / "stage"
    stage.mkdir()
    os.chmod(stage, 0o777)  # noqa: S103 -- see above; removed when the build ends
    os.chmod(work, 0o711)  # noqa: S103 -- traversable to reach stage/, not listable
    log_path = work / "build.log"
    argv = mmdebstrap_argv(
        mode=mode,
        packages=packages,
        mirror=mirror,
        security=security,
        recipe=recipe,
        out=stage,
        python=sys.executable,
    )
    _say(progress, 2, f"installing packages from {mirror} (about 1-2 minutes)…")
    kernel_version = ""
    steps = {
        "sealing the root file system": 3,
        "pruning kernel modules": 3,
        "building the initrd": 3,
        "writing the disk": 4,
    }

    def on_line(line: str) -> None:
        nonlocal kernel_version
        if line.startswith("cowork-step: "):
            text = line[len("cowork-step: ") :]
            if text in steps:
                _say(progress, steps[text], text + "…")
        elif line.startswith("cowork-kernel: "):
            kernel_version = line.split(": ", 1)[1].strip()

    tmpdir = work / "tmp"
    tmpdir.mkdir()
    with log_path.open("w") as log:
        rc = _run_logged(argv, log, on_line, tmpdir)
    if rc != 0:
        kept = work.parent / "build-failed.log"
        shutil.copyfile(log_path, kept)
        hint = ""
        if mode == "unshare":
            hint = (
                "Building as a normal user needs unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1) and /etc/subuid ranges."
            )
        raise ImageError(
            f"mmdebstrap failed (exit {rc}); the whole log is in {kept}; its last lines:\n"
            f"{_tail(log_path)}\n{hint}".rstrip()
        )
    raw = stage / "disk.raw"
    for name in (KERNEL_FILE, INITRD_FILE, "disk.raw"):
        if not (stage / name).is_file():
            raise ImageError(f"the image build produced no {name}; see {log_path}")
    for name in (KERNEL_FILE, INITRD_FILE):
        shutil.copyfile(stage / name, out / name)
    _say(progress, 5, "converting the disk to qcow2…")
    try:
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                str(raw),
                str(out / BASE_DISK_FILE),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"qemu-img convert failed: {exc.stderr.strip()}") from exc
    shutil.rmtree(stage)
    _say(progress, 6, "hashing and writing the manifest…")
    for name in IMAGE_FILES:
        os.chmod(out / name, 0o444)
    shutil.move(str(log_path), str(out / "build.log"))
    return write_manifest(out, recipe=rhash, kernel_version=kernel_version)


def _install(work: Path, final: Path) -> None:
    """Atomically put ``work/out`` at ``final``, replacing an older build if there is one."""
    out = work / "out"
    if final.exists():
        os.rename(final, work / "previous")
    os.rename(out, final)
    shutil.rmtree(work, ignore_errors=True)


def find(paths: Paths) -> ImageInfo:
    """The image for the current recipe, without hashing. Raises ImageError if not built."""
    return load(paths.image_dir(recipe_hash()))


def ensure(paths: Paths, progress: Progress | None = None) -> ImageInfo:
    """The verified image for the current recipe, building it first if it is not there.

    A full verification is reused while no file of the image changed since
    (:func:`verify_unchanged`)."""
    directory = paths.image_dir(recipe_hash())
    if not _manifest_path(directory).is_file():
        build(paths, progress=progress)
    return verify_unchanged(directory)
