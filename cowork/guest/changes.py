"""The staged workspace's change set, as the guest sees it (standard library only).

In staged mode the guest's ``/workspace`` is an overlay: the read-only 9p share is the lower
layer, and everything the agent writes lands in the upper layer on the session's own disk
(:data:`UPPER_DIR`, root-only). This module walks that upper layer and streams it out.

Who reads the upper layer: the host logs in as the agent user, who cannot read
:data:`STAGED_ROOT`. The guest init (root) therefore serves the change set on a Unix socket
(:data:`SOCKET_PATH`) that only the agent's uid (and root) may connect to, checked again with
``SO_PEERCRED``; the host runs ``python3 -m cowork.guest.changes export`` as the agent, which
connects and copies the stream to its stdout. The server only ever reads the upper layer and
answers one fixed request, so the agent gains nothing from it that the merged view does not
already show it.

Wire format of ``export`` (everything after the first two lines is raw bytes)::

    COWORK-CHANGES 1\\n
    {"entries": [...], "truncated": false, "contents": true}\\n
    <the bytes of each "file" entry, in order, exactly "size" bytes each>
    END\\n

Each entry: ``path`` (base64 of the path bytes relative to the workspace), ``kind``
(``file`` | ``dir`` | ``symlink`` | ``whiteout``), ``mode`` (permission bits), ``size``,
``target`` (base64, symlinks only), ``opaque`` (a directory that hides the lower one).
When the files add up to more than the requested ``max_bytes``, ``contents`` is false and no
bytes follow: the host refuses such a set rather than reading it. The host treats every byte of
this as untrusted.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

MAGIC = b"COWORK-CHANGES 1\n"
TRAILER = b"END\n"
STAGED_ROOT = "/var/lib/cowork-staged"
LOWER_DIR = f"{STAGED_ROOT}/lower"
UPPER_DIR = f"{STAGED_ROOT}/upper"
WORK_DIR = f"{STAGED_ROOT}/work"
SOCKET_DIR = "/run/cowork-staged"
SOCKET_PATH = f"{SOCKET_DIR}/changes.sock"
MAX_ENTRIES = 200_000
MAX_REQUEST = 4096
_CHUNK = 1 << 20
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _opaque(path: bytes) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def scan(upper: str | bytes, limit: int = MAX_ENTRIES) -> tuple[list[dict[str, Any]], bool]:
    """Entries of the upper layer ``upper`` (sorted, parents before children) and whether the
    list was cut at ``limit``. Never follows a symbolic link."""
    root = os.fsencode(upper)
    out: list[dict[str, Any]] = []

    def walk(rel: bytes) -> bool:
        here = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(here))
        except OSError:
            return True
        for name in names:
            if len(out) >= limit:
                return False
            relpath = os.path.join(rel, name) if rel else name
            full = os.path.join(root, relpath)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            entry: dict[str, Any] = {
                "path": _b64(relpath),
                "mode": stat.S_IMODE(st.st_mode),
                "size": 0,
                "target": None,
                "opaque": False,
            }
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                entry["kind"] = "whiteout"
            elif stat.S_ISLNK(st.st_mode):
                entry["kind"] = "symlink"
                entry["target"] = _b64(os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                entry["kind"] = "dir"
                entry["opaque"] = _opaque(full)
            elif stat.S_ISREG(st.st_mode):
                entry["kind"] = "file"
                entry["size"] = st.st_size
            else:
                continue  # fifos, sockets, devices: nothing a folder on the host can take
            out.append(entry)
            if entry["kind"] == "dir" and not walk(relpath):
                return False
        return True

    complete = walk(b"")
    return out, not complete


def _send_file(path: bytes, size: int, write: Callable[[bytes], None]) -> None:
    """Exactly ``size`` bytes of ``path`` (zero-padded if it shrank meanwhile)."""
    sent = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = -1
    try:
        while fd >= 0 and sent < size:
            chunk = os.read(fd, min(_CHUNK, size - sent))
            if not chunk:
                break
            write(chunk)
            sent += len(chunk)
    finally:
        if fd >= 0:
            os.close(fd)
    while sent < size:
        pad = min(_CHUNK, size - sent)
        write(b"\0" * pad)
        sent += pad


def export(upper: str | bytes, max_bytes: int, write: Callable[[bytes], None]) -> None:
    """Stream the change set of ``upper`` in the wire format above."""
    entries, truncated = scan(upper)
    total = sum(e["size"] for e in entries if e["kind"] == "file")
    contents = total <= max_bytes and not truncated
    head = {"entries": entries, "truncated": truncated, "contents": contents, "total": total}
    write(MAGIC)
    write(json.dumps(head, separators=(",", ":")).encode() + b"\n")
    if contents:
        root = os.fsencode(upper)
        for e in entries:
            if e["kind"] == "file":
                rel = base64.b64decode(e["path"])
                _send_file(os.path.join(root, rel), e["size"], write)
    write(TRAILER)


def _iter_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    obj = json.loads(data.split(b"\n", 1)[0] or b"{}")
    if not isinstance(obj, dict):
        raise ValueError("request is not an object")
    return obj


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def handle(conn: socket.socket, allowed_uids: frozenset[int], upper: str) -> None:
    """Answer one connection: ``{"op": "export", "max_bytes": N}``."""
    with conn:
        if peer_uid(conn) not in allowed_uids:
            conn.sendall(b"ERROR not allowed\n")
            return
        try:
            req = _iter_request(conn)
            max_bytes = int(req.get("max_bytes", 0))
            if req.get("op") != "export" or max_bytes < 0:
                raise ValueError("unknown request")
        except (ValueError, OSError) as exc:
            conn.sendall(f"ERROR {exc}\n".encode())
            return
        export(upper, max_bytes, conn.sendall)


def serve(sock_path: str, agent_uid: int, upper: str = UPPER_DIR) -> threading.Thread:
    """Listen on ``sock_path`` (mode 0600, owned by ``agent_uid``) in a daemon thread."""
    os.makedirs(os.path.dirname(sock_path), mode=0o755, exist_ok=True)
    if os.path.lexists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    os.chown(sock_path, agent_uid, 0)
    os.chmod(sock_path, 0o600)
    server.listen(4)
    allowed = frozenset({0, agent_uid})

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn, allowed, upper), daemon=True).start()

    thread = threading.Thread(target=loop, name="changes", daemon=True)
    thread.start()
    return thread


def _client(max_bytes: int, out: BinaryIO, sock_path: str = SOCKET_PATH) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock_path)
        conn.sendall(json.dumps({"op": "export", "max_bytes": max_bytes}).encode() + b"\n")
        for chunk in iter(lambda: conn.recv(_CHUNK), b""):
            out.write(chunk)
    out.flush()
    return 0


def main(argv: list[str]) -> int:
    """``python3 -m cowork.guest.changes export MAX_BYTES``: the change set on stdout."""
    if len(argv) != 2 or argv[0] != "export":
        sys.stderr.write("usage: python3 -m cowork.guest.changes export MAX_BYTES\n")
        return 2
    try:
        return _client(int(argv[1]), sys.stdout.buffer)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"changes: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
