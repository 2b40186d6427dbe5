"""The file tools' program: runs in the guest as the agent user (standard library only).

The host runs it as ``python3 -I /run/cowork/lib/cowork/guest/fileops.py`` (the guest code
travels in the seed like the rest of :mod:`cowork.guest`); it reads one JSON request on stdin
and prints one JSON object ``{"ok": bool, "text": str}``.

Contract: every path that, after resolving symlinks *inside the guest*, is not under the
workspace root MUST be refused: this is what stops a symlink in the workspace from reading or
replacing a file elsewhere. Writes go to a temporary file in the same folder and are renamed
into place, so an interrupted write leaves the old file intact.

It imports nothing from ``cowork``: it runs as a script, without the package on its path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

MAX_READ = 2_000_000
MAX_LIST = 1000
MAX_MATCHES = 200
#: The workspace as the model names it; mapped onto the request's root.
ALIAS = "/workspace"

Request = dict[str, Any]


class Refuse(Exception):
    """The request is refused; the message says why, for the model."""


def confine(root: str, rel: str, must_exist: bool = True) -> tuple[str, str]:
    """``(root, path)`` with symlinks resolved; Refuse if the path leaves the root."""
    root_real = os.path.realpath(root)
    rel = rel or "."
    if rel == ALIAS or rel.startswith(ALIAS + "/"):
        rel = "." + rel[len(ALIAS) :]
    joined = rel if os.path.isabs(rel) else os.path.join(root_real, rel)
    real = os.path.realpath(joined)
    if real != root_real and not real.startswith(root_real + os.sep):
        raise Refuse(f"{rel} is outside the workspace; only files in the workspace can be used")
    if must_exist and not os.path.lexists(real):
        raise Refuse(f"{rel} does not exist in the workspace")
    return root_real, real


def shown(root_real: str, real: str) -> str:
    return os.path.relpath(real, root_real)


def read_file(req: Request) -> str:
    _root, path = confine(req["root"], req["path"])
    if os.path.isdir(path):
        raise Refuse(f"{req['path']} is a folder; use list_files")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_READ + 1)
    if b"\0" in data[:8192]:
        return f"{req['path']} is a binary file ({os.path.getsize(path)} bytes); not shown"
    text = data[:MAX_READ].decode("utf-8", "replace")
    lines = text.splitlines()
    offset = max(int(req.get("offset") or 1), 1)
    limit = int(req.get("limit") or 2000)
    chosen = lines[offset - 1 : offset - 1 + limit]
    body = "\n".join(f"{n:6}\t{line}" for n, line in enumerate(chosen, start=offset))
    more = len(lines) - (offset - 1 + len(chosen))
    if more > 0:
        body += f"\n[{more} more lines; read again with offset={offset + len(chosen)}]"
    if len(data) > MAX_READ:
        body += "\n[file larger than 2 MB; the rest is not shown]"
    return body or "(empty file)"


def atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    mode = None
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=".cowork-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(req: Request) -> str:
    root, path = confine(req["root"], req["path"], must_exist=False)
    if path == root or os.path.isdir(path):
        raise Refuse(f"{req['path']} is a folder")
    parent = os.path.dirname(path)
    created = not os.path.exists(path)
    os.makedirs(parent, exist_ok=True)
    confine(req["root"], parent)
    data = str(req["content"]).encode("utf-8")
    atomic_write(path, data)
    verb = "created" if created else "replaced"
    return f"{verb} {shown(root, path)} ({len(data)} bytes)"


def edit_file(req: Request) -> str:
    root, path = confine(req["root"], req["path"])
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    old, new = str(req["old_string"]), str(req["new_string"])
    if not old:
        raise Refuse("old_string is empty; use write_file to create a file")
    count = text.count(old)
    if count == 0:
        raise Refuse(f"old_string was not found in {req['path']}; copy it exactly from the file")
    if count > 1 and not req.get("replace_all"):
        raise Refuse(f"old_string appears {count} times in {req['path']}; add context")
    text = text.replace(old, new) if req.get("replace_all") else text.replace(old, new, 1)
    atomic_write(path, text.encode("utf-8"))
    return f"edited {shown(root, path)} ({count if req.get('replace_all') else 1} replacement(s))"


def inside(root: str, p: str) -> bool:
    real = os.path.realpath(p)
    return real == root or real.startswith(root + os.sep)


def list_files(req: Request) -> str:
    root, base = confine(req["root"], req.get("path") or ".")
    pattern = str(req.get("pattern") or "**/*")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames) + [d + "/" for d in dirnames]:
            full = os.path.join(dirpath, name.rstrip("/"))
            rel = os.path.relpath(full, base)
            if not (
                fnmatch.fnmatch(rel, pattern)
                or fnmatch.fnmatch(name.rstrip("/"), pattern)
                or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))
            ):
                continue
            if not inside(root, full):
                rel += " -> (outside the workspace)"
            elif name.endswith("/"):
                rel += "/"
            out.append(rel)
            if len(out) >= MAX_LIST:
                return "\n".join(sorted(out)) + f"\n[stopped at {MAX_LIST} entries]"
    return "\n".join(sorted(out)) or "(no matching files)"


def grep(req: Request) -> str:
    root, base = confine(req["root"], req.get("path") or ".")
    flags = re.IGNORECASE if req.get("ignore_case") else 0
    try:
        rx = re.compile(str(req["pattern"]), flags)
    except re.error as exc:
        raise Refuse(f"the pattern is not a valid regular expression: {exc}") from None
    glob = req.get("glob")
    files: list[str] = []
    if os.path.isfile(base):
        files = [base]
    else:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            files += [os.path.join(dirpath, f) for f in sorted(filenames)]
    out: list[str] = []
    for f in files:
        if glob and not fnmatch.fnmatch(os.path.basename(f), str(glob)):
            continue
        if not inside(root, f) or os.path.getsize(f) > MAX_READ:
            continue
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if rx.search(line):
                out.append(f"{os.path.relpath(f, root)}:{n}:{line[:300]}")
                if len(out) >= MAX_MATCHES:
                    return "\n".join(out) + f"\n[stopped at {MAX_MATCHES} matches]"
    return "\n".join(out) or "(no matches)"


OPS: dict[str, Callable[[Request], str]] = {
    "read_file": read_file,
    "write_file": write_file,
    "edit_file": edit_file,
    "list_files": list_files,
    "grep": grep,
}


def handle(raw: str) -> dict[str, Any]:
    """The reply for one request text; never raises for bad input."""
    try:
        req = json.loads(raw)
        if not isinstance(req, dict):
            raise Refuse("the request is not a JSON object")
        text, ok = OPS[req["op"]](req), True
    except Refuse as exc:
        text, ok = str(exc), False
    except KeyError as exc:
        text, ok = f"missing input {exc}", False
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        text, ok = f"{type(exc).__name__}: {exc}", False
    return {"ok": ok, "text": text}


def main() -> None:
    sys.stdout.write(json.dumps(handle(sys.stdin.read())))


if __name__ == "__main__":
    main()
