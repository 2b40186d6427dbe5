"""Applying a change set to the host folder: a security gate that fails closed.

- Every path is resolved one component at a time from a descriptor of the workspace with
  ``O_NOFOLLOW | O_DIRECTORY`` (openat-style): a symbolic link anywhere on the way, planted by
  anyone, stops the operation. Nothing is ever written through ``.claude`` (any case).
- A file whose host copy changed since the session started is a conflict and is left alone
  unless the caller passes ``overwrite=True`` (after asking the person).
- Each file is written to a temporary name in its folder, fsynced, then renamed over the old
  one; deletions are moved (or copied, across file systems) to the record's trash.
- Journal: before the first write, ``plan.json`` lists every operation with the sha256 of the
  new content, and the previous content of each file to be replaced is copied into the
  record. ``state.json`` says ``committed`` only when all are done. A record found in any
  other state (cowork was killed, the disk filled) is rolled back by :func:`recover`, so
  every file is old or new, never half-written, and the change set stays pending.
- Undo of a committed record restores the previous content of each file that still holds
  exactly what the apply wrote; the others are refused and listed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cowork.errors import CoworkError
from cowork.host.changes import store
from cowork.host.changes.model import ApplyResult, ChangeSet, FileChange, Refusal, UndoResult
from cowork.host.changes.wire import TEMP_PREFIX, check_path
from cowork.paths import Paths

#: Test seam (Python API only): called with the name of each step as it is reached.
Hook = Callable[[str], None]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ApplyError(CoworkError):
    """Applying or undoing stopped; what was done so far has been rolled back."""


def _split(rel: str) -> list[str]:
    check_path(rel.encode("utf-8", "surrogateescape"))
    return rel.split("/")


def open_dir(workspace: Path, parts: list[str], *, create: dict[str, int] | None = None) -> int:
    """A descriptor of the folder ``parts`` under ``workspace``, never following a link.
    Missing folders are created (mode from ``create``, keyed by relative path) only when
    listed there; else FileNotFoundError."""
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                rel = "/".join(parts[: i + 1])
                if create is None or rel not in create:
                    raise
                os.mkdir(part, create[rel] & 0o777, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_in_workspace(workspace: Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``rel``, never following a link."""
    parts = _split(rel)
    pfd = open_dir(workspace, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", rel)
    return fd


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _copy_fd_to(src_fd: int, dest: Path, mode: int = 0o600) -> None:
    os.lseek(src_fd, 0, os.SEEK_SET)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        for chunk in iter(lambda: os.read(src_fd, 1 << 20), b""):
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)


def _write_into(pfd: int, name: str, src: Path | None, link: str | None, mode: int) -> None:
    """Put new content at ``name`` in folder ``pfd``: temp name, fsync, rename."""
    tmp = _write_tmp(pfd, src, link, mode, sync=True)
    try:
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except BaseException:
        os.unlink(tmp, dir_fd=pfd)
        raise
    os.fsync(pfd)


def _write_tmp(pfd: int, src: Path | None, link: str | None, mode: int, *, sync: bool) -> str:
    """New content under a temporary name in folder ``pfd``; returns the name."""
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(6)}"
    if link is not None:
        os.symlink(link, tmp, dir_fd=pfd)
    else:
        assert src is not None
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=pfd)  # fmt: skip
        try:
            with open(src, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
            os.fchmod(out, mode & 0o777)
            if sync:
                os.fsync(out)
        except BaseException:
            os.close(out)
            os.unlink(tmp, dir_fd=pfd)
            raise
        os.close(out)
    return tmp


def _entry_sha(pfd: int, name: str) -> tuple[str, str] | None:
    """(type, sha or link target) of ``name`` in ``pfd``; None when absent."""
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "symlink", os.readlink(name, dir_fd=pfd)
    if stat.S_ISDIR(st.st_mode):
        return "dir", ""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        return "file", _sha_fd(fd)
    finally:
        os.close(fd)


def _chmod_at(pfd: int, name: str, mode: int) -> None:
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "is a symbolic link", name)
        os.chmod(f"/proc/self/fd/{fd}", mode & 0o777)
    finally:
        os.close(fd)


# --- planning ------------------------------------------------------------------------------
def plan(
    cs: ChangeSet, selection: list[str] | None, overwrite: bool
) -> tuple[list[dict[str, Any]], list[FileChange], list[Refusal]]:
    pending = cs.pending()
    by_path = {c.path: c for c in pending}
    refused: list[Refusal] = []
    if selection is None:
        chosen = list(pending)
    else:
        chosen = []
        for p in selection:
            if p in by_path:
                chosen.append(by_path[p])
            else:
                refused.append(Refusal(p, "is not a pending change of this session"))
    conflicts = [c for c in chosen if c.conflict and not overwrite]
    chosen = [c for c in chosen if not (c.conflict and not overwrite)]
    added_dirs = {c.path: c.mode or 0o755 for c in pending if c.kind == "added" and c.type == "dir"}
    ops: list[dict[str, Any]] = []
    for c in sorted((c for c in chosen if c.kind != "deleted"), key=lambda c: c.path.count("/")):
        op: dict[str, Any] = {"path": c.path, "kind": c.kind, "type": c.type, "mode": c.mode}
        if c.type == "dir":
            op["action"] = "mkdir" if c.kind == "added" else "chmod"
        elif c.kind == "mode":
            op["action"] = "chmod"
        else:
            op["action"] = "write"
            op["blob"] = c.blob
            op["target"] = c.target
        ops.append(op)
        if c.kind == "renamed" and c.renamed_from:
            ops.append({"path": c.renamed_from, "action": "delete", "type": "file"})
    for c in sorted((c for c in chosen if c.kind == "deleted"), key=lambda c: -c.path.count("/")):
        ops.append({"path": c.path, "action": "delete", "type": c.type})
    for op in ops:
        op["create"] = {d: m for d, m in added_dirs.items()
                        if op["path"].startswith(d + "/")}  # fmt: skip
    return ops, conflicts, refused


# --- apply ---------------------------------------------------------------------------------
def apply(paths: Paths, cs: ChangeSet, selection: list[str] | None = None, *,
          overwrite: bool = False, hook: Hook | None = None) -> ApplyResult:  # fmt: skip
    """Apply the pending changes of ``cs`` (all, or the paths in ``selection``)."""
    say = hook or (lambda _step: None)
    workspace = Path(cs.workspace)
    sdir = store.set_dir(paths, cs.session)
    ops, conflicts, refused = plan(cs, selection, overwrite)
    if not ops:
        return ApplyResult("", (), tuple(conflicts), tuple(refused))
    rid = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    rec = store.records_dir(paths) / rid
    (rec / "undo").mkdir(parents=True, mode=0o700)
    (rec / "trash").mkdir(mode=0o700)
    for i, op in enumerate(ops):
        op["n"] = i
        if op["action"] == "write" and op.get("target") is None:
            op["new"] = _sha_file(sdir / "blobs" / str(op["blob"]))
    store.write_json(rec / "plan.json", {"session": cs.session, "workspace": str(workspace),
                                         "ops": ops})  # fmt: skip
    store.write_json(rec / "state.json", {"state": "prepared"})
    say("planned")
    try:
        # Keep the previous content of every file that will be replaced (the undo copy).
        for op in ops:
            if op["action"] != "write":
                continue
            parts = _split(op["path"])
            try:
                pfd = open_dir(workspace, parts[:-1])
            except FileNotFoundError:
                continue
            try:
                try:
                    fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    op["old_link"] = os.readlink(parts[-1], dir_fd=pfd)
                    continue
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode):
                        _copy_fd_to(fd, rec / "undo" / str(op["n"]))
                        op["old_mode"] = stat.S_IMODE(st.st_mode)
                finally:
                    os.close(fd)
            finally:
                os.close(pfd)
        store.write_json(rec / "plan.json", {"session": cs.session, "workspace": str(workspace),
                                             "ops": ops})  # fmt: skip
        store.write_json(rec / "state.json", {"state": "running"})
        say("saved")
        # Every new file is written under a temporary name first, the disk synced once, and
        # only then is each renamed into place: a full disk stops us before any rename.
        for op in ops:
            _prepare(workspace, sdir, op)
        os.sync()
        say("prepared")
        for op in ops:
            _do(workspace, rec, op)
            say(f"op:{op['n']}")
        store.write_json(rec / "state.json", {"state": "committed", "finished_at": time.time()})
    except BaseException as exc:
        rollback(paths, rec)
        if isinstance(exc, OSError) and exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ApplyError(
                "applying the changes stopped: a path in the folder goes through a symbolic "
                "link or is not a folder any more; cowork never writes through links. Nothing "
                "was changed (everything done so far was put back)."
            ) from exc
        if isinstance(exc, OSError):
            raise ApplyError(
                f"applying the changes stopped at a file ({exc.strerror or exc}); nothing was "
                "changed (everything done so far was put back). Free some space or fix the "
                "permission and try again."
            ) from exc
        raise
    say("committed")
    applied = sorted({op["path"] for op in ops})
    store.set_state(paths, cs.session, applied=applied)
    done = set(applied)
    remaining = [c for c in cs.pending() if c.path not in done]
    if not remaining:
        store.set_state(paths, cs.session, state="applied")
    return ApplyResult(rid, tuple(applied), tuple(conflicts), tuple(refused))


def _prepare(workspace: Path, sdir: Path, op: dict[str, Any]) -> None:
    """Folders are made, new content is written under a temporary name (``op["tmp"]``)."""
    parts = _split(op["path"])
    action = op["action"]
    if action not in ("mkdir", "write"):
        return
    pfd = open_dir(workspace, parts[:-1], create=op.get("create") or {})
    try:
        name = parts[-1]
        if action == "mkdir":
            try:
                os.mkdir(name, (op.get("mode") or 0o755) & 0o777, dir_fd=pfd)
            except FileExistsError:
                os.close(os.open(name, _DIR_FLAGS, dir_fd=pfd))  # must be a real folder
            return
        cur = None
        with contextlib.suppress(FileNotFoundError):
            cur = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if cur is not None and stat.S_ISDIR(cur.st_mode):
            raise OSError(errno.EISDIR, "a folder is in the way", op["path"])
        blob = sdir / "blobs" / str(op["blob"]) if op.get("target") is None else None
        op["tmp"] = _write_tmp(pfd, blob, op.get("target"), op.get("mode") or 0o644, sync=False)
    finally:
        os.close(pfd)


def _do(workspace: Path, rec: Path, op: dict[str, Any]) -> None:
    """The step that makes ``op`` visible: a rename, a chmod or a move to the trash."""
    parts = _split(op["path"])
    action = op["action"]
    if action == "mkdir":
        return
    pfd = open_dir(workspace, parts[:-1])
    try:
        name = parts[-1]
        if action == "chmod":
            _chmod_at(pfd, name, op.get("mode") or 0o644)
        elif action == "write":
            os.rename(op["tmp"], name, src_dir_fd=pfd, dst_dir_fd=pfd)
        elif action == "delete":
            _to_trash(pfd, name, rec / "trash" / str(op["n"]), op["type"])
    finally:
        os.close(pfd)


def _to_trash(pfd: int, name: str, dest: Path, kind: str) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.rmdir(name, dir_fd=pfd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        return
    dfd = os.open(dest.parent, _DIR_FLAGS)
    try:
        try:
            os.rename(name, dest.name, src_dir_fd=pfd, dst_dir_fd=dfd)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=pfd), dest.name, dir_fd=dfd)
        else:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                _copy_fd_to(fd, dest, stat.S_IMODE(st.st_mode))
            finally:
                os.close(fd)
        os.unlink(name, dir_fd=pfd)
        os.fsync(pfd)
    finally:
        os.close(dfd)


# --- rollback, recovery and undo -------------------------------------------------------------
def _restore(workspace: Path, rec: Path, op: dict[str, Any], strict: bool) -> str | None:
    """Put back what ``op`` replaced. Returns why not (strict: only if untouched since)."""
    parts = _split(op["path"])
    try:
        pfd = open_dir(workspace, parts[:-1])
    except FileNotFoundError:
        return None if op["action"] == "delete" and not strict else "its folder is gone"
    except OSError as exc:
        return f"cannot be reached safely ({exc.strerror})"
    try:
        name = parts[-1]
        now = _entry_sha(pfd, name)
        action = op["action"]
        if action == "write":
            wrote = (
                ("symlink", op["target"])
                if op.get("target") is not None
                else ("file", op.get("new"))
            )
            if now != wrote:
                return "was changed after the apply" if strict and now is not None else None
            undo = rec / "undo" / str(op["n"])
            if undo.exists():
                _write_into(pfd, name, undo, None, op.get("old_mode", 0o644))
            elif op.get("old_link") is not None:
                _write_into(pfd, name, None, op["old_link"], 0o777)
            else:
                os.unlink(name, dir_fd=pfd)
        elif action == "delete":
            trash = rec / "trash" / str(op["n"])
            if not os.path.lexists(trash):
                return None
            if now is not None:
                return "a new file is in its place" if strict else None
            if trash.is_symlink():
                _write_into(pfd, name, None, os.readlink(trash), 0o777)
            else:
                _write_into(pfd, name, trash, None, stat.S_IMODE(trash.stat().st_mode))
        elif action == "mkdir":
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=pfd)
        elif action == "chmod" and op.get("old_mode") is not None:
            _chmod_at(pfd, name, op["old_mode"])
        return None
    finally:
        os.close(pfd)


def rollback(paths: Paths, rec: Path, *, strict: bool = False) -> list[Refusal]:
    """Undo the operations of record ``rec`` in reverse order."""
    planned = store.read_json(rec / "plan.json")
    workspace = Path(planned["workspace"])
    refused = []
    # Temporary files left by an interrupted apply, once per folder (deepest first).
    folders = {op["path"].rpartition("/")[0] for op in planned["ops"]}
    for folder in sorted(folders, key=lambda f: -f.count("/")):
        try:
            pfd = open_dir(workspace, folder.split("/") if folder else [])
        except OSError:
            continue
        try:
            for entry in os.listdir(pfd):
                if entry.startswith(TEMP_PREFIX):
                    os.unlink(entry, dir_fd=pfd)
        finally:
            os.close(pfd)
    for op in reversed(planned["ops"]):
        why = _restore(workspace, rec, op, strict)
        if why:
            refused.append(Refusal(op["path"], why))
    state = "undone" if strict else "rolled-back"
    store.write_json(rec / "state.json", {"state": state, "finished_at": time.time(),
                                          "refused": [r.path for r in refused]})  # fmt: skip
    return refused


def recover(paths: Paths) -> list[str]:
    """Roll back every apply that did not finish (run at the start of each command)."""
    rdir = store.records_dir(paths)
    done: list[str] = []
    if not rdir.is_dir():
        return done
    for rec in sorted(rdir.iterdir()):
        try:
            state = store.read_json(rec / "state.json").get("state")
        except (OSError, ValueError):
            state = None
        if state in ("committed", "undone", "rolled-back"):
            continue
        if not (rec / "plan.json").exists():
            shutil.rmtree(rec, ignore_errors=True)
            continue
        rollback(paths, rec)
        done.append(rec.name)
    return done


def undo(paths: Paths, record: str) -> UndoResult:
    rec = store.records_dir(paths) / record
    try:
        state = store.read_json(rec / "state.json").get("state")
    except (OSError, ValueError):
        raise ApplyError(
            f"there is no apply record {record!r}; see `cowork changes list`"
        ) from None
    if state != "committed":
        raise ApplyError(f"apply {record} is {state}; only a finished apply can be undone")
    planned = store.read_json(rec / "plan.json")
    refused = rollback(paths, rec, strict=True)
    bad = {r.path for r in refused}
    restored = tuple(sorted({op["path"] for op in planned["ops"]} - bad))
    return UndoResult(record, restored, tuple(refused))
