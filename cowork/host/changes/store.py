"""Where change sets, undo records and the trash live (under :attr:`Paths.changes`), the
host's baseline of the workspace at session start, and turning a stored set into changes.

Layout::

    changes/sets/<session>/meta.json       workspace, state, what was applied
    changes/sets/<session>/baseline.json   lstat of every host path when the session started
    changes/sets/<session>/entries.json    the validated entries from the VM
    changes/sets/<session>/refused.json    entries refused, with the reason
    changes/sets/<session>/blobs/<n>       the bytes of each changed file
    changes/records/<id>/                  one apply: plan, journal state, undo copies, trash
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowork.errors import UsageError
from cowork.host.changes.model import ChangeSet, Entry, FileChange, Refusal
from cowork.host.changes.wire import ChangeSetError, read_stream
from cowork.paths import Paths

if TYPE_CHECKING:
    from cowork.host.channel import CommandChannel

Baseline = dict[str, list[Any]]  # path -> [type, size, mode, mtime_ns, ino]
MAX_DIFF_BYTES = 256 * 1024
EXPORT_TIMEOUT_S = 3600.0


def changes_root(paths: Paths) -> Path:
    return paths.changes


def set_dir(paths: Paths, session: str) -> Path:
    if not session or "/" in session or session.startswith("."):
        raise UsageError(f"{session!r} is not a session name; see `cowork changes list`")
    return paths.change_sets / session


def records_dir(paths: Paths) -> Path:
    return paths.change_records


def write_json(path: Path, obj: Any) -> None:
    """Atomically (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def stat_key(st: os.stat_result) -> list[Any]:
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    size = st.st_size if kind == "file" else 0
    mtime = st.st_mtime_ns if kind != "dir" else 0  # a folder's mtime moves with its entries
    return [kind, size, stat.S_IMODE(st.st_mode), mtime, st.st_ino]


def snapshot(workspace: Path) -> Baseline:
    """lstat of everything in ``workspace`` (never following links), minus ``.claude``."""
    out: Baseline = {}
    root = str(workspace)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d.casefold() != ".claude"]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            key = name if rel == "." else f"{rel}/{name}"
            try:
                out[key] = stat_key(os.lstat(full))
            except OSError:
                continue
    return out


def begin(paths: Paths, session: str, workspace: Path) -> None:
    """Record the host folder as it is when a staged session starts (for conflicts)."""
    sdir = set_dir(paths, session)
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json(sdir / "baseline.json", snapshot(workspace))
    meta = {"workspace": str(workspace), "state": "pending", "created_at": time.time(),
            "applied": []}  # fmt: skip
    write_json(sdir / "meta.json", meta)


def quota_bytes(quota_mib: int) -> int:
    return quota_mib * 1024 * 1024


def collect(paths: Paths, session: str, channel: CommandChannel, max_bytes: int) -> ChangeSet:
    """Copy the change set from the running VM of ``session`` into the store."""
    sdir = set_dir(paths, session)
    if not (sdir / "meta.json").exists():
        raise UsageError(f"session {session} is not staged: it has no change set")
    with tempfile.TemporaryFile(dir=sdir) as spool:

        def keep(data: bytes) -> None:
            spool.write(data)

        result = channel.run(
            ["python3", "-m", "cowork.guest.changes", "export", str(max_bytes)],
            env={"PYTHONPATH": "/run/cowork/lib"},
            on_stdout=keep,
            timeout=EXPORT_TIMEOUT_S,
        )
        if not result.ok:
            raise ChangeSetError(
                f"could not read the changes from the VM of {session}: {result.stderr.strip()}"
            )
        spool.seek(0)
        return store_stream(paths, session, spool, max_bytes)


def store_stream(paths: Paths, session: str, stream: Any, max_bytes: int) -> ChangeSet:
    """Parse an export (untrusted) into the store, replacing the previous copy."""
    sdir = set_dir(paths, session)
    fresh = sdir / "blobs.new"
    shutil.rmtree(fresh, ignore_errors=True)
    entries, refused = read_stream(stream, fresh, max_bytes)
    shutil.rmtree(sdir / "blobs", ignore_errors=True)
    fresh.rename(sdir / "blobs")
    write_json(sdir / "entries.json", [asdict(e) for e in entries])
    write_json(sdir / "refused.json", [asdict(r) for r in refused])
    return load(paths, session)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_sha(workspace: Path, rel: str) -> str | None:
    from cowork.host.changes.gate import open_in_workspace

    try:
        fd = open_in_workspace(workspace, rel)
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def conflict_of(workspace: Path, rel: str, baseline: Baseline) -> str | None:
    """Why the host's ``rel`` differs from when the session started, or None."""
    try:
        now: list[Any] | None = stat_key(os.lstat(workspace / rel))
    except FileNotFoundError:
        now = None
    except OSError as exc:
        return f"cannot be checked on the host ({exc.strerror})"
    was = baseline.get(rel)
    if was is None and now is not None:
        return "was created on the host after the session started"
    if was is not None and now is None:
        return "was deleted on the host after the session started"
    if was is not None and now is not None and list(was) != list(now):
        return "was changed on the host after the session started"
    return None


def _describe(blob: Path | None, old: Path | None, size: int) -> tuple[str, bool]:
    def text_of(p: Path | None) -> str | None:
        if p is None:
            return ""
        try:
            data = p.read_bytes() if p.stat().st_size <= MAX_DIFF_BYTES else None
        except OSError:
            return None
        if data is None or b"\0" in data:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    new_t, old_t = text_of(blob), text_of(old)
    if new_t is None or old_t is None:
        return f"binary or large file, {size} bytes", False
    return f"text, {len(new_t.splitlines())} lines", True


def classify(
    workspace: Path, entries: list[Entry], baseline: Baseline, blobs: Path
) -> list[FileChange]:
    """What each entry would do to the host folder (against the baseline)."""
    out: list[FileChange] = []
    present = {e.path for e in entries}
    for e in entries:
        was = baseline.get(e.path)
        blob = blobs / str(e.blob) if e.blob is not None else None
        conflict = conflict_of(workspace, e.path, baseline)
        if e.kind == "whiteout":
            if was is None:
                continue
            out.extend(_deleted_tree(workspace, e.path, baseline, present))
            continue
        if e.kind == "dir":
            if was is None:
                out.append(FileChange(e.path, "added", "dir", mode=e.mode, conflict=conflict))
            elif was[0] != "dir":
                out.append(FileChange(e.path, "modified", "dir", mode=e.mode, old_mode=was[2],
                                      description=f"a {was[0]} becomes a folder",
                                      conflict=conflict))  # fmt: skip
            elif was[2] != e.mode:
                out.append(FileChange(e.path, "mode", "dir", mode=e.mode, old_mode=was[2],
                                      conflict=conflict))  # fmt: skip
            if e.opaque and was is not None and was[0] == "dir":
                prefix = e.path + "/"
                for key in sorted(baseline):
                    if key.startswith(prefix) and key not in present:
                        out.append(_deleted(workspace, key, baseline))
            continue
        if e.kind == "symlink":
            if was is not None and was[0] == "symlink":
                try:
                    if os.readlink(workspace / e.path) == e.target:
                        continue
                except OSError:
                    pass
            out.append(FileChange(e.path, "added" if was is None else "modified", "symlink",
                                  target=e.target, description=f"link to {e.target}",
                                  conflict=conflict))  # fmt: skip
            continue
        # A regular file.
        if was is None:
            desc, _ = _describe(blob, None, e.size)
            out.append(FileChange(e.path, "added", "file", size=e.size, mode=e.mode,
                                  description=desc, conflict=conflict, blob=e.blob))  # fmt: skip
            continue
        if was[0] == "file" and conflict is None and blob is not None:
            same = host_sha(workspace, e.path) == _sha(blob)
            if same and was[2] == e.mode:
                continue  # copied up but not changed
            if same:
                out.append(FileChange(e.path, "mode", "file", size=e.size, old_size=was[1],
                                      mode=e.mode, old_mode=was[2], blob=e.blob))  # fmt: skip
                continue
        desc, _ = _describe(blob, None, e.size)
        out.append(FileChange(e.path, "modified", "file", size=e.size, old_size=was[1],
                              mode=e.mode, old_mode=was[2], description=desc,
                              conflict=conflict, blob=e.blob))  # fmt: skip
    return _find_renames(workspace, out, blobs)


def _deleted(workspace: Path, rel: str, baseline: Baseline) -> FileChange:
    was = baseline[rel]
    return FileChange(rel, "deleted", was[0] if was[0] in ("file", "dir", "symlink") else "file",
                      old_size=was[1], old_mode=was[2],
                      conflict=conflict_of(workspace, rel, baseline))  # fmt: skip


def _deleted_tree(
    workspace: Path, rel: str, baseline: Baseline, present: set[str]
) -> list[FileChange]:
    """The deletion of ``rel`` and, for a folder, of everything it held (children first)."""
    out = [
        _deleted(workspace, key, baseline)
        for key in sorted(baseline, reverse=True)
        if key.startswith(rel + "/") and key not in present
    ]
    out.append(_deleted(workspace, rel, baseline))
    return out


def _find_renames(workspace: Path, changes: list[FileChange], blobs: Path) -> list[FileChange]:
    deleted = {c.path: c for c in changes if c.kind == "deleted" and c.type == "file"}
    if not deleted or len(deleted) > 1000:
        return changes
    by_size: dict[int, list[str]] = {}
    for c in deleted.values():
        by_size.setdefault(c.old_size or 0, []).append(c.path)
    folded: set[str] = set()
    out = []
    for c in changes:
        if c.kind == "added" and c.type == "file" and c.blob is not None:
            for cand in by_size.get(c.size, []):
                if cand in folded:
                    continue
                if host_sha(workspace, cand) == _sha(blobs / str(c.blob)):
                    folded.add(cand)
                    why = c.conflict or deleted[cand].conflict
                    c = FileChange(**{**asdict(c), "kind": "renamed", "renamed_from": cand,
                                      "conflict": why})  # fmt: skip
                    break
        out.append(c)
    return [c for c in out if not (c.kind == "deleted" and c.path in folded)]


def load(paths: Paths, session: str) -> ChangeSet:
    sdir = set_dir(paths, session)
    try:
        meta = read_json(sdir / "meta.json")
    except FileNotFoundError:
        raise UsageError(
            f"there are no staged changes for {session!r}; see `cowork changes list`"
        ) from None
    workspace = Path(meta["workspace"])
    changes: list[FileChange] = []
    refused: list[Refusal] = []
    if (sdir / "entries.json").exists() and meta["state"] != "discarded":
        entries = [Entry(**e) for e in read_json(sdir / "entries.json")]
        refused = [Refusal(**r) for r in read_json(sdir / "refused.json")]
        baseline = read_json(sdir / "baseline.json")
        changes = classify(workspace, entries, baseline, sdir / "blobs")
    return ChangeSet(
        session=session,
        workspace=str(workspace),
        state=meta["state"],
        created_at=meta["created_at"],
        changes=tuple(changes),
        refused=tuple(refused),
        applied=tuple(meta.get("applied", ())),
    )


def diff(paths: Paths, session: str, change: FileChange) -> str:
    """A unified diff for a text file, else a short description."""
    sdir = set_dir(paths, session)
    meta = read_json(sdir / "meta.json")
    workspace = Path(meta["workspace"])
    if change.type != "file" or change.kind in ("deleted", "mode"):
        return change.description or change.kind
    blob = sdir / "blobs" / str(change.blob)
    old_path = change.renamed_from or change.path

    def lines(data: bytes | None) -> list[str] | None:
        if data is None or len(data) > MAX_DIFF_BYTES or b"\0" in data:
            return None
        try:
            return data.decode("utf-8").splitlines(keepends=True)
        except UnicodeDecodeError:
            return None

    from cowork.host.changes.gate import open_in_workspace

    old: bytes | None = b""
    if change.kind != "added":
        try:
            with os.fdopen(open_in_workspace(workspace, old_path), "rb") as f:
                old = f.read(MAX_DIFF_BYTES + 1)
        except OSError:
            old = None
    new = blob.read_bytes() if blob.stat().st_size <= MAX_DIFF_BYTES else None
    a, b = lines(old), lines(new)
    if a is None or b is None:
        return change.description or f"binary file, {change.size} bytes"
    return "".join(difflib.unified_diff(a, b, f"a/{old_path}", f"b/{change.path}"))


def set_state(
    paths: Paths, session: str, *, state: str | None = None, applied: list[str] | None = None
) -> None:
    sdir = set_dir(paths, session)
    meta = read_json(sdir / "meta.json")
    if state is not None:
        meta["state"] = state
    if applied is not None:
        meta["applied"] = sorted(set(meta.get("applied", [])) | set(applied))
    write_json(sdir / "meta.json", meta)


def unapply(paths: Paths, session: str, restored: list[str]) -> None:
    """Mark ``restored`` as pending again after an undo (a discarded set stays discarded)."""
    sdir = set_dir(paths, session)
    meta = read_json(sdir / "meta.json")
    meta["applied"] = sorted(set(meta.get("applied", [])) - set(restored))
    if meta["state"] == "applied":
        meta["state"] = "pending"
    write_json(sdir / "meta.json", meta)


def list_sessions(paths: Paths) -> list[str]:
    root = changes_root(paths) / "sets"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").exists())


def usage_bytes(paths: Paths) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(changes_root(paths)):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def prune(paths: Paths, quota_mib: int, max_age_days: int) -> list[str]:
    """Remove undo records older than the age limit, then the oldest until under quota.
    Staged sets are never removed here (they are the user's pending work)."""
    rdir = records_dir(paths)
    if not rdir.is_dir():
        return []
    removed = []
    records = []
    for rec in rdir.iterdir():
        try:
            st = read_json(rec / "state.json")
        except (OSError, ValueError):
            continue
        if st.get("state") in ("committed", "undone", "rolled-back"):
            records.append((st.get("finished_at", 0.0), rec))
    records.sort()
    now = time.time()
    for when, rec in list(records):
        if now - when > max_age_days * 86400:
            shutil.rmtree(rec, ignore_errors=True)
            removed.append(rec.name)
            records.remove((when, rec))
    while records and usage_bytes(paths) > quota_bytes(quota_mib):
        when, rec = records.pop(0)
        shutil.rmtree(rec, ignore_errors=True)
        removed.append(rec.name)
    return removed
