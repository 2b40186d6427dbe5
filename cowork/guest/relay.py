"""The guest end of the private channel: resynchronise the port, then hand it to ``sshd -i``.

Standard library only; runs as root in the guest, in a child the guest init forks.

A virtio-serial port has no connection boundaries: bytes written by an earlier host connection
(or by an earlier sshd) can still be queued when a new host connection starts. So before each
SSH session the two ends agree on a fresh point in the stream:

    host  -> guest   b"SYNC <nonce>\\n"   (nonce: 32 lowercase hex characters, fresh per try)
    guest -> host    b"ACK <nonce>\\n"    then sshd's own banner

Contract:
- The relay discards every byte until it has read a complete, well-formed SYNC line; lines of
  any other shape and lines longer than :data:`MAX_LINE` are ignored, never echoed.
- When one read holds several SYNC lines the last one wins (earlier ones belong to host
  connections that have already given up).
- sshd gets the port as stdin and stdout and the relay's stderr (the init log); the relay waits
  for it, closes the port, and starts over. Nothing that goes wrong ends the loop.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from cowork.guest.contract import ACK_PREFIX, SYNC_PREFIX

#: Longest line the scanner keeps; "SYNC " + 32 hex + "\r\n" is 39 bytes.
MAX_LINE = 128
#: Seconds to wait when the port reads end-of-file (no host connected).
IDLE_SLEEP = 0.2
_NONCE = re.compile(rb"[0-9a-f]{32}\Z")


class SyncScanner:
    """Finds the last well-formed ``SYNC <nonce>`` line in a byte stream fed in pieces."""

    def __init__(self) -> None:
        self._partial = b""
        self._overlong = False

    def _line(self, line: bytes) -> str | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(SYNC_PREFIX):
            return None
        nonce = line[len(SYNC_PREFIX) :]
        return nonce.decode("ascii") if _NONCE.match(nonce) else None

    def feed(self, data: bytes) -> str | None:
        """Consume ``data``; the nonce of the last complete SYNC line in it, if any."""
        found: str | None = None
        pieces = data.split(b"\n")
        for piece in pieces[:-1]:
            line = self._partial + piece
            if not self._overlong and len(line) <= MAX_LINE:
                found = self._line(line) or found
            self._partial = b""
            self._overlong = False
        tail = pieces[-1]
        if self._overlong or len(self._partial) + len(tail) > MAX_LINE:
            self._partial = b""
            self._overlong = True
        else:
            self._partial += tail
        return found


def ack_line(nonce: str) -> bytes:
    return ACK_PREFIX + nonce.encode("ascii") + b"\n"


def sync_line(nonce: str) -> bytes:
    return SYNC_PREFIX + nonce.encode("ascii") + b"\n"


class PortReplaced(Exception):
    """The port the relay holds is gone or was re-created at its path: open it again."""


def wait_for_sync(
    read: Callable[[int], bytes],
    sleep: Callable[[float], None] = time.sleep,
    replaced: Callable[[], bool] = lambda: False,
) -> str:
    """Read through ``read`` until a SYNC line arrives; its nonce.

    ``read`` returning ``b""`` means no host is connected (virtio-serial reads end-of-file
    then): wait a little and read again - unless ``replaced()`` says the port was re-created
    meanwhile. A hung-up port reads end-of-file for ever, so without that check a relay that
    was not blocked in a read at the moment of the hang-up would wait on a dead port
    (raises :class:`PortReplaced`).
    """
    scanner = SyncScanner()
    while True:
        data = read(4096)
        if not data:
            if replaced():
                raise PortReplaced
            sleep(IDLE_SLEEP)
            continue
        nonce = scanner.feed(data)
        if nonce is not None:
            return nonce


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"cowork-relay: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _replaced(port_path: str, fd: int) -> bool:
    """Whether ``port_path`` no longer names the device open as ``fd``."""
    try:
        now = os.stat(port_path)
    except OSError:
        return True
    held = os.fstat(fd)
    return (now.st_rdev, now.st_ino, now.st_dev) != (held.st_rdev, held.st_ino, held.st_dev)


def serve_once(port_path: str, sshd_argv: Sequence[str]) -> int:
    """One session: open the port, wait for SYNC, ACK it, run sshd on it; sshd's status.

    Raises :class:`PortReplaced` when the port was re-created while waiting.
    """
    fd = os.open(port_path, os.O_RDWR | os.O_NOCTTY)
    try:
        nonce = wait_for_sync(lambda n: os.read(fd, n), replaced=lambda: _replaced(port_path, fd))
        _write_all(fd, ack_line(nonce))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            try:
                os.dup2(fd, 0)
                os.dup2(fd, 1)
                if fd > 1:
                    os.close(fd)
                os.execvp(sshd_argv[0], list(sshd_argv))  # noqa: S606 - argv from the init
            except BaseException as exc:
                _log(f"cannot start {sshd_argv[0]}: {exc}")
            os._exit(127)
    finally:
        # The port may be open only once: sshd holds it now; the relay lets go.
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def serve_forever(port_path: str, sshd_argv: list[str]) -> NoReturn:
    """Serve SSH sessions on ``port_path`` one after another, forever."""
    if not sshd_argv:
        raise ValueError("sshd_argv is empty: give the sshd command line to run")
    while True:
        try:
            code = serve_once(port_path, sshd_argv)
            if code not in (0, 255):
                _log(f"sshd exited with status {code}")
        except PortReplaced:
            continue
        except Exception as exc:
            _log(f"session on {port_path} failed: {exc!r}")
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> NoReturn:
    """``python3 relay.py PORT -- SSHD_ARGV...`` (the guest init forks this; so do tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: relay.py PORT -- SSHD_ARGV...\n")
        raise SystemExit(2)
    serve_forever(args[0], args[2:])


if __name__ == "__main__":  # pragma: no cover
    main()
