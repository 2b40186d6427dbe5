"""Reading the guest's change set stream (:mod:`cowork.guest.changes`): UNTRUSTED input.

Everything here assumes the guest is hostile: sizes are bounded before anything is read,
every path is checked for shape (relative, no ``..``, valid UTF-8, no control characters,
never through ``.claude`` in any case), entries that go through a symbolic link or a deleted
folder of the same set are refused, and the bytes of each file are copied to the store, never
interpreted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import posixpath
import unicodedata
from pathlib import Path
from typing import IO, Any

from cowork.errors import CoworkError
from cowork.guest.changes import MAGIC, TRAILER
from cowork.host.changes.model import Entry, Refusal

MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_ENTRIES = 200_000
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
CLAUDE_DIR = ".claude"
TEMP_PREFIX = ".cowork-tmp-"
_CHUNK = 1 << 20


class ChangeSetError(CoworkError):
    """The change set as a whole cannot be used (malformed, too big, unreadable)."""


def check_path(raw: bytes) -> str:
    """The path as text, or ValueError saying (in plain words) why it is refused."""
    if not raw:
        raise ValueError("empty path")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError("path is too long")
    if b"\0" in raw:
        raise ValueError("path contains a NUL byte")
    if raw.startswith(b"/"):
        raise ValueError("absolute path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("name is not valid UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise ValueError("name contains a control character such as a newline")
    parts = text.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"path component {part!r} is not allowed")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise ValueError("a name in the path is too long")
        if part.casefold() == CLAUDE_DIR:
            raise ValueError("path goes through a .claude folder, which is never changed")
        if part.startswith(TEMP_PREFIX):
            raise ValueError("name is reserved for cowork's temporary files")
    return text


def _shown(raw: bytes) -> str:
    return repr(raw)[2:-1][:200]


def _field_int(obj: dict[str, Any], key: str, hi: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise ValueError(f"bad {key}")
    return value


def parse_header(obj: Any, max_bytes: int) -> tuple[list[tuple[Entry, bytes]], list[Refusal]]:
    """Validated entries (with their raw path) and refusals. Raises ChangeSetError for a set
    that cannot be used at all."""
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        raise ChangeSetError("the change set from the VM is malformed (no entry list)")
    if obj.get("truncated"):
        raise ChangeSetError(
            f"the VM changed more than {MAX_ENTRIES} files and folders; cowork cannot review "
            "that many. Discard the changes, or ask for a smaller task."
        )
    raw_entries = obj["entries"]
    if len(raw_entries) > MAX_ENTRIES:
        raise ChangeSetError(
            f"the change set has {len(raw_entries)} entries (at most {MAX_ENTRIES})"
        )
    total = 0
    for e in raw_entries:
        if isinstance(e, dict) and e.get("kind") == "file" and isinstance(e.get("size"), int):
            total += max(0, e["size"])
    if total > max_bytes or obj.get("contents") is not True:
        raise ChangeSetError(
            f"the changed files add up to {total} bytes, more than the {max_bytes} bytes "
            "cowork keeps for review (workspace.undo_quota_mib); discard the changes or raise "
            "the limit"
        )
    out: list[tuple[Entry, bytes]] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    blocked: dict[str, str] = {}  # prefix -> why children are refused
    blob = 0
    for e in raw_entries:
        try:
            if not isinstance(e, dict):
                raise ValueError("entry is not an object")
            raw = base64.b64decode(str(e.get("path", "")), validate=True)
        except (ValueError, binascii.Error):
            refused.append(Refusal("(unreadable entry)", "malformed entry"))
            continue
        kind = e.get("kind")
        size = e.get("size") if kind == "file" else 0
        try:
            if kind not in ("file", "dir", "symlink", "whiteout"):
                raise ValueError(f"unknown kind {kind!r}")
            mode = _field_int(e, "mode", 0o7777)
            size = _field_int(e, "size", 1 << 62)
            path = check_path(raw)
            parent = path.rpartition("/")[0]
            parts = path.split("/")
            for i in range(1, len(parts)):
                why = blocked.get("/".join(parts[:i]))
                if why:
                    raise ValueError(why)
            if parent and parent not in dirs:
                raise ValueError("its folder is not part of the change set")
            if path in seen:
                raise ValueError("appears twice in the change set")
            target = None
            if kind == "symlink":
                traw = base64.b64decode(str(e.get("target", "")), validate=True)
                if not traw or b"\0" in traw or len(traw) > MAX_PATH_BYTES:
                    raise ValueError("bad symbolic link target")
                target = traw.decode("utf-8")
                where = posixpath.normpath(posixpath.join(parent, target))
                if target.startswith("/") or where == ".." or where.startswith("../"):
                    raise ValueError("symbolic link points outside the folder")
                blocked[path] = "goes through a symbolic link made in the VM"
            if kind == "whiteout":
                blocked[path] = "is inside a folder the VM deleted"
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            refused.append(Refusal(_shown(raw), str(exc)))
            if kind == "file" and isinstance(size, int) and size > 0:
                out.append((Entry("", "file", 0, size, blob=blob), raw))  # bytes to skip
                blob += 1
            continue
        seen.add(path)
        if kind == "dir":
            dirs.add(path)
        out.append(
            (
                Entry(
                    path,
                    kind,
                    mode,
                    size,
                    target=target,
                    opaque=kind == "dir" and e.get("opaque") is True,
                    blob=blob if kind == "file" else None,
                ),
                raw,
            )
        )
        if kind == "file":
            blob += 1
    return out, refused


def read_stream(
    stream: IO[bytes], blobs: Path, max_bytes: int
) -> tuple[list[Entry], list[Refusal]]:
    """Parse a whole export from ``stream``; each file's bytes go to ``blobs/<n>``."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise ChangeSetError("the VM did not send a change set (is the workspace staged?)")
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise ChangeSetError("the change set's description is too large or cut short")
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise ChangeSetError(f"the change set's description is not JSON: {exc}") from None
    parsed, refused = parse_header(header, max_bytes)
    blobs.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry, _raw in parsed:
        if entry.blob is not None:
            _copy(stream, blobs / str(entry.blob), entry.size, keep=bool(entry.path))
        if entry.path:
            entries.append(entry)
    if stream.read(len(TRAILER)) != TRAILER:
        raise ChangeSetError("the change set from the VM was cut short")
    os.sync()  # once for every blob, not one fsync each
    return entries, refused


def _copy(stream: IO[bytes], dest: Path, size: int, *, keep: bool) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600) if keep else -1
    try:
        left = size
        while left:
            chunk = stream.read(min(_CHUNK, left))
            if not chunk:
                raise ChangeSetError("the change set from the VM was cut short")
            view = memoryview(chunk)
            while fd >= 0 and view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
    finally:
        if fd >= 0:
            os.close(fd)
