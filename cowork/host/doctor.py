"""Disk use, readiness checks and clean-up of cowork's own VM state.

Everything here works on one :class:`~cowork.paths.Paths` and only on folders cowork made
under it (images, sessions, kept overlays, staged changes, trash). Nothing here ever reads
or deletes a workspace, and the trust store, audit log and keychain entries are left alone
unless :func:`reset` is asked to remove the trust store.

- :func:`disk_usage` measures each kind of state and says how much of it can be reclaimed:
  images of old recipes (:func:`prune_images` removes them), interrupted image builds, and
  the state of sessions whose VM is no longer running.
- :func:`prune_images` removes images of recipes other than the current one, except an
  image a recorded session or a kept overlay still uses as its base disk.
- :func:`checks` answers "can cowork start a VM here?": libvirt, the image, the keychain, the
  accelerator. Each check is cheap and never raises.
- :func:`reset` destroys cowork's recorded VMs (by its own session records, never by name
  pattern) and deletes images, sessions and kept overlays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cowork.errors import CoworkError
from cowork.host import image
from cowork.paths import OVERLAY_FILE, Paths

#: The kinds of :func:`disk_usage` that :func:`reset` deletes.
RESET_KINDS = frozenset({"images", "image builds", "sessions", "kept overlays"})

# --- disk use --------------------------------------------------------------------------------


def tree_size(path: Path) -> int:
    """Bytes allocated on disk below ``path`` (sparse disks count what they use); 0 if absent."""
    total = 0
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path, onerror=lambda _e: None):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@dataclass(frozen=True)
class Usage:
    """One kind of state: where it is, how much it uses, how much can go and how."""

    kind: str  # "images", "image builds", "sessions", "kept overlays", "staged changes", "trash"
    path: Path
    bytes: int
    reclaimable: int
    how: str  # the command that reclaims it, or why it cannot be reclaimed
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskReport:
    usages: tuple[Usage, ...]

    @property
    def total(self) -> int:
        return sum(u.bytes for u in self.usages)

    @property
    def reclaimable(self) -> int:
        return sum(u.reclaimable for u in self.usages)


def qcow2_backing_file(path: Path) -> str | None:
    """The backing file named in a qcow2 header, or None (no backing file, not qcow2)."""
    try:
        with path.open("rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if not offset or not size or size > 4096:
                return None
            f.seek(offset)
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return None


def _all_reclaimable(kind: str, folder: Path, items: list[Path], how: str) -> Usage:
    """A usage whose every item can be reclaimed (each tree is measured once)."""
    size = sum(tree_size(p) for p in items)
    return Usage(kind, folder, size, size, how, tuple(p.name for p in items))


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def image_dirs(paths: Paths) -> list[Path]:
    """Built (or half-built) image folders, by recipe hash; not interrupted builds."""
    return [p for p in _children(paths.images) if p.is_dir() and not p.name.startswith(".")]


def build_leftovers(paths: Paths) -> list[Path]:
    """Temporary folders of image builds (``.build-*``), left by an interrupted build."""
    return [p for p in _children(paths.images) if p.is_dir() and p.name.startswith(".build-")]


def recipes_in_use(paths: Paths) -> set[str]:
    """Recipe hashes that a recorded session or a kept overlay still boots from."""
    from cowork.host.session import iter_states

    used = {state.image_recipe for state in iter_states(paths)}
    overlays = [p / OVERLAY_FILE for p in _children(paths.sessions)]
    overlays += [p / OVERLAY_FILE for p in _children(paths.kept_overlays)]
    for overlay in overlays:
        backing = qcow2_backing_file(overlay)
        if backing:
            with contextlib.suppress(ValueError):
                used.add(Path(backing).relative_to(paths.images).parts[0])
    return used


def disk_usage(paths: Paths, *, current_recipe: str | None = None) -> DiskReport:
    """What cowork's state uses under ``paths`` and what can be reclaimed (nothing deleted)."""
    current = current_recipe or image.recipe_hash()
    in_use = recipes_in_use(paths)
    images = image_dirs(paths)
    old = [p for p in images if p.name != current and p.name not in in_use]
    usages = [
        Usage(
            "images",
            paths.images,
            sum(tree_size(p) for p in images),
            sum(tree_size(p) for p in old),
            "cowork image prune" if old else "only the current recipe's image and those in use",
            tuple(p.name for p in old),
        )
    ]
    leftovers = build_leftovers(paths)
    usages.append(
        _all_reclaimable(
            "image builds", paths.images, leftovers, "cowork image prune (interrupted builds)"
        )
    )
    sessions = [p for p in _children(paths.sessions) if p.is_dir()]
    usages.append(
        _all_reclaimable(
            "sessions", paths.sessions, sessions, "cowork reset (stops and deletes every cowork VM)"
        )
    )
    kept = [p for p in _children(paths.kept_overlays) if p.is_dir()]
    usages.append(_all_reclaimable("kept overlays", paths.kept_overlays, kept, "cowork reset"))
    for kind, folder in (("staged changes", paths.change_sets), ("trash", paths.change_records)):
        usages.append(
            Usage(
                kind,
                folder,
                tree_size(folder),
                0,
                "review them in cowork; doctor and reset never delete them",
            )
        )
    return DiskReport(tuple(usages))


# --- prune -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    removed: tuple[Path, ...]
    freed: int
    kept_in_use: tuple[str, ...] = field(default_factory=tuple)


def prune_images(paths: Paths, *, current_recipe: str | None = None) -> Pruned:
    """Delete images of recipes other than the current one, and interrupted builds.

    An image a recorded session or a kept overlay still uses stays. Runs under the image
    build lock, so it never removes an image while a build is writing one.
    """
    current = current_recipe or image.recipe_hash()
    removed: list[Path] = []
    freed = 0
    with image._build_lock(paths.images):
        in_use = recipes_in_use(paths)
        candidates = [p for p in image_dirs(paths) if p.name != current and p.name not in in_use]
        for path in [*candidates, *build_leftovers(paths)]:
            size = tree_size(path)
            shutil.rmtree(path)
            removed.append(path)
            freed += size
    kept = tuple(sorted(r for r in in_use if r != current and paths.image_dir(r).is_dir()))
    return Pruned(tuple(removed), freed, kept)


# --- readiness ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_image(paths: Paths) -> Check:
    try:
        rhash = image.recipe_hash()
        info = image.verify(paths.image_dir(rhash))
    except CoworkError as exc:
        return Check("guest image", False, str(exc), "cowork image build")
    return Check("guest image", True, f"{info.dir} (built {info.built_at}, verified)")


def check_libvirt(uri: str | None = None) -> Check:
    try:
        import libvirt

        from cowork.host.vm.libvirt import _silence, default_uri
    except ImportError as exc:
        return Check("libvirt", False, f"the libvirt Python binding is missing ({exc})")
    target = uri or default_uri()
    libvirt.registerErrorHandler(_silence, None)
    try:
        conn = libvirt.open(target)
    except libvirt.libvirtError as exc:
        return Check(
            "libvirt",
            False,
            f"{target} is not reachable: {exc.get_error_message()}",
            "sudo systemctl start libvirtd" if target.endswith("/system") else "",
        )
    try:
        version = conn.getLibVersion()
    finally:
        conn.close()
    major, minor = version // 1_000_000, version // 1000 % 1000
    return Check("libvirt", True, f"{target} (libvirt {major}.{minor})")


def check_keychain() -> Check:
    from cowork.host.secrets import secret_service_backend

    try:
        secret_service_backend()
    except CoworkError as exc:
        return Check("keychain", False, str(exc))
    return Check("keychain", True, "the Secret Service answers on the session bus")


def check_accel() -> Check:
    from cowork.host.vm.accel import detect_accel

    choice = detect_accel()
    if choice.warning:
        return Check("accelerator", True, f"{choice.accel}: {choice.warning}")
    return Check("accelerator", True, f"{choice.accel}: {choice.reason}")


def checks(paths: Paths, *, uri: str | None = None) -> list[Check]:
    """Readiness: libvirt reachable, image present and intact, keychain, KVM or TCG."""
    out: list[Check] = []
    runs: list[Callable[[], Check]] = [
        lambda: check_libvirt(uri),
        lambda: check_image(paths),
        check_keychain,
        check_accel,
    ]
    for run in runs:
        try:
            out.append(run())
        except Exception as exc:  # a check must report, never crash the report
            out.append(Check("check", False, f"{type(exc).__name__}: {exc}"))
    return out


# --- reset ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResetResult:
    destroyed_vms: tuple[str, ...]
    removed: tuple[Path, ...]
    freed: int
    errors: tuple[str, ...]


def reset(
    paths: Paths,
    *,
    include_trust: bool = False,
    destroy: Callable[[str], None] | None = None,
) -> ResetResult:
    """Delete cowork's VM state under ``paths``: every recorded VM (stopped and undefined
    through its own session record), sessions, kept overlays and images.

    Never touches workspaces, user settings, the audit log, transcripts, staged changes,
    trash or keychain entries; the trust store only when ``include_trust``. ``destroy``
    replaces the VM teardown (tests); by default it is
    :func:`cowork.host.session.destroy_session`.
    """
    from cowork.host.session import destroy_session, iter_states

    def teardown(name: str) -> None:
        if destroy is not None:
            destroy(name)
        else:
            destroy_session(name, paths=paths)

    destroyed: list[str] = []
    errors: list[str] = []
    for state in list(iter_states(paths)):
        try:
            teardown(state.name)
            destroyed.append(state.name)
        except CoworkError as exc:
            errors.append(f"VM {state.name}: {exc}")
    targets: list[Path] = [paths.sessions, paths.kept_overlays]
    if include_trust:
        targets.append(paths.trust_store)
    removed: list[Path] = []
    freed = 0
    with image._build_lock(paths.images):
        targets += [*image_dirs(paths), *build_leftovers(paths)]
        freed, removed, errors = _remove_all(targets, freed, removed, errors)
    return ResetResult(tuple(destroyed), tuple(removed), freed, tuple(errors))


def _remove_all(
    targets: Iterable[Path], freed: int, removed: list[Path], errors: list[str]
) -> tuple[int, list[Path], list[str]]:
    for path in targets:
        if not path.exists() and not path.is_symlink():
            continue
        size = tree_size(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            continue
        removed.append(path)
        freed += size
    return freed, removed, errors


__all__ = [
    "RESET_KINDS",
    "Check",
    "DiskReport",
    "Pruned",
    "ResetResult",
    "Usage",
    "checks",
    "disk_usage",
    "prune_images",
    "qcow2_backing_file",
    "reset",
    "tree_size",
]
