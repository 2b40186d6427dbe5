"""Connecting while the guest has not opened its end of the port yet (a booting guest).

QEMU does not read a virtio-serial port's socket until the guest opens the port, so it does
not notice a host connection that gave up either: each abandoned connection's SYNC would be
handed to the guest, in turn, before the live one. The host keeps one connection while
nothing comes back and sends its next SYNC on it; the guest, reading them all at once,
answers the last. Runs the real relay and sshd behind a port that opens late.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.host.channel import Channel
from cowork.host.channel_fake import SSHD, LocalGuest, temporary_guest

pytestmark = pytest.mark.skipif(
    not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None,
    reason="needs openssh-server (/usr/sbin/sshd) and ssh-keygen",
)

SYNCS_BEFORE_OPENING = 3


class LatePort:
    """Accepts host connections but reads none until the first one has sent
    :data:`SYNCS_BEFORE_OPENING` SYNC lines; then notes whether another connection was waiting
    and joins the first to the guest's socket."""

    def __init__(self, path: Path, guest_socket: Path) -> None:
        self.path = path
        self.guest_socket = guest_socket
        self.other_connection_waiting: bool | None = None
        self.problem: str | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            conn.settimeout(60)
            while True:
                peeked = conn.recv(65536, socket.MSG_PEEK)
                if not peeked:
                    self.problem = "the host closed its first connection"
                    return
                if peeked.count(b"SYNC ") >= SYNCS_BEFORE_OPENING:
                    break
                select.select([conn], [], [], 0.05)  # wait a little for more, then peek again
            pending, _, _ = select.select([self._listener], [], [], 0)
            self.other_connection_waiting = bool(pending)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.connect(str(self.guest_socket))
                _pump(conn, up)

    def close(self) -> None:
        self._listener.close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    ends = [a, b]
    while True:
        readable, _, _ = select.select(ends, [], [], 60)
        if not readable:
            return
        for src in readable:
            try:
                data = src.recv(65536)
                if data:
                    (b if src is a else a).sendall(data)
            except OSError:  # either end reset: the connection is over
                data = b""
            if not data:
                return


@pytest.fixture
def guest() -> Iterator[LocalGuest]:
    g, cleanup = temporary_guest()
    try:
        yield g
    finally:
        cleanup()


def test_a_port_that_opens_late_is_answered_on_the_first_connection(
    guest: LocalGuest, tmp_path: Path
) -> None:
    late = LatePort(tmp_path / "late.sock", guest.socket_path)
    try:
        with Channel.connect(
            late.path,
            timeout=20,
            attempt_timeout=0.2,
            **guest.connect_kwargs(),  # type: ignore[arg-type]
        ) as ch:
            assert ch.run("echo ready").stdout == "ready\n"
        assert late.problem is None
        assert late.other_connection_waiting is False
    finally:
        late.close()
