"""The folder check the app shows when a person picks a folder (no Qt).

Contract: :func:`check_folder` never raises. Refusals come from the library's own workspace
check (:func:`cowork.host.workspace.check_workspace`), so the app refuses exactly what a
session would refuse; on top of it come warnings a person should see before starting: likely
secrets, very large folders, cloud-synced or network folders, very broad picks.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cowork.app.service import FolderReport, FolderWarning, WarningKind
from cowork.errors import CoworkError
from cowork.host import trust
from cowork.host.workspace import check_claude_dir, check_workspace
from cowork.paths import WORKSPACE_CLAUDE_DIR, Paths

#: File names (glob, case-insensitive) that usually hold secrets.
SECRET_PATTERNS = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa", "id_dsa", "id_ecdsa",
    "id_ed25519", "credentials", "credentials.*", "*credentials*.json", ".netrc", ".npmrc",
    ".pypirc", "*.kdbx", "secrets.*", "service-account*.json",
)  # fmt: skip
#: Folders skipped when looking for secrets (their contents are not the user's own).
SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv"})
LARGE_BYTES = 2 * 1024**3
LARGE_FILES = 20_000
#: Counting stops here, so a huge pick answers quickly (the folder is then "very large").
COUNT_LIMIT = 100_000
#: Path parts that mark a folder synced by a cloud client.
CLOUD_MARKERS = (
    "dropbox", "onedrive", "google drive", "googledrive", "icloud", "icloud drive",
    "mobile documents", "nextcloud", "owncloud", "box sync", "pcloud", "mega",
)  # fmt: skip
#: Files a cloud client leaves in the folder it syncs.
CLOUD_FILES = (".dropbox", ".dropbox.cache", ".sync", "desktop.ini", ".owncloudsync.log")
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afpfs", "fuse.sshfs", "sshfs", "9p", "davfs",
     "fuse.rclone", "fuse.gvfsd-fuse", "ceph", "glusterfs", "fuse.s3fs", "webdav"}
)  # fmt: skip
#: Home sub-folders that are too broad to hand over whole.
BROAD_NAMES = ("Desktop", "Downloads", "Documents", "Pictures", "Music", "Videos")


def is_secret_name(name: str) -> bool:
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p) for p in SECRET_PATTERNS)


def mount_fstype(path: Path, mounts: Iterable[str] | None = None) -> str | None:
    """The file-system type of the mount holding ``path`` (Linux /proc/self/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return None
    best, fstype = -1, None
    text = str(path)
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), parts[2]
    return fstype


def _is_cloud(path: Path) -> bool:
    parts = [p.lower() for p in path.parts]
    if any(m == p or p.startswith(m + " ") or p.startswith(m + "-") for p in parts
           for m in CLOUD_MARKERS):  # fmt: skip
        return True
    return any((parent / f).exists() for parent in (path, *path.parents) for f in CLOUD_FILES)


def _walk(root: Path) -> tuple[int, int, bool, list[str]]:
    size = count = 0
    secrets: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _e: None):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            count += 1
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                size += os.lstat(full).st_size
            if is_secret_name(name):
                secrets.append(os.path.relpath(full, root))
            if count >= COUNT_LIMIT:
                return size, count, False, secrets
    return size, count, True, secrets


def check_folder(
    folder: Path, *, paths: Paths | None = None, mounts: Iterable[str] | None = None
) -> FolderReport:
    try:
        real = check_workspace(folder, paths=paths)
        check_claude_dir(real / WORKSPACE_CLAUDE_DIR)  # credentials the agent could read
    except CoworkError as exc:
        return FolderReport(given=folder, real_path=None, refusal=str(exc))
    except Exception as exc:  # fail closed
        return FolderReport(given=folder, real_path=None, refusal=f"cannot check {folder}: {exc}")
    try:
        size, count, complete, secrets = _walk(real)
        warnings: list[FolderWarning] = []
        if secrets:
            warnings.append(FolderWarning(WarningKind.SECRETS, tuple(sorted(secrets)[:20])))
        if size >= LARGE_BYTES or count >= LARGE_FILES or not complete:
            warnings.append(FolderWarning(WarningKind.LARGE))
        if _is_cloud(real):
            warnings.append(FolderWarning(WarningKind.CLOUD))
        if (mount_fstype(real, mounts) or "") in NETWORK_FS:
            warnings.append(FolderWarning(WarningKind.NETWORK))
        home = Path.home().resolve()
        if real.parent == home and real.name in BROAD_NAMES:
            warnings.append(FolderWarning(WarningKind.BROAD))
        has_config = any(f.present for f in trust.snapshot(real).files)
    except Exception as exc:  # the folder changed under us: refuse, say so
        return FolderReport(given=folder, real_path=real, refusal=f"cannot read {real}: {exc}")
    return FolderReport(
        given=folder,
        real_path=real,
        refusal=None,
        warnings=tuple(warnings),
        size_bytes=size,
        file_count=count,
        counted_all=complete,
        has_config=has_config,
    )


class RecentFolders:
    """The folders a person picked before, newest first, kept in a small JSON file."""

    LIMIT = 8

    def __init__(self, file: Path | None) -> None:
        self.file = file

    def load(self) -> list[Path]:
        if self.file is None:
            return []
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return []
        return [Path(p) for p in data if isinstance(p, str)][: self.LIMIT]

    def add(self, folder: Path) -> list[Path]:
        items = [folder, *[p for p in self.load() if p != folder]][: self.LIMIT]
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps([str(p) for p in items]))
            tmp.replace(self.file)
        return items
