"""The guest relay: the SYNC scanner, and the real relay loop on a pty standing in for a port."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cowork.guest import relay
from cowork.guest.relay import MAX_LINE, SyncScanner, ack_line, sync_line, wait_for_sync

REPO = Path(__file__).resolve().parents[2]
NONCE = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def test_finds_a_sync_line_after_garbage() -> None:
    scanner = SyncScanner()
    assert scanner.feed(b"\x00\xffSSH-2.0-stale\r\nrandom bytes") is None
    assert scanner.feed(b"\n" + sync_line(NONCE)) == NONCE


def test_a_sync_line_split_anywhere_is_found() -> None:
    data = b"junk\n" + sync_line(NONCE)
    for cut in range(len(data) + 1):
        scanner = SyncScanner()
        first = scanner.feed(data[:cut])
        second = scanner.feed(data[cut:])
        assert (first or second) == NONCE


def test_the_last_sync_line_in_a_read_wins() -> None:
    assert SyncScanner().feed(sync_line(OTHER) + sync_line(NONCE)) == NONCE


def test_crlf_is_accepted() -> None:
    assert SyncScanner().feed(b"SYNC " + NONCE.encode() + b"\r\n") == NONCE


@pytest.mark.parametrize(
    "line",
    [
        b"SYNC " + NONCE.upper().encode() + b"\n",  # nonces are lowercase
        b"SYNC " + NONCE[:-1].encode() + b"\n",  # too short
        b"SYNC " + NONCE.encode() + b"0\n",  # too long
        b" SYNC " + NONCE.encode() + b"\n",  # not at the start of a line
        b"SYNC  " + NONCE.encode() + b"\n",
        b"ACK " + NONCE.encode() + b"\n",
        b"SYNC " + NONCE.encode(),  # no end of line yet
    ],
)
def test_malformed_lines_are_ignored(line: bytes) -> None:
    assert SyncScanner().feed(line) is None


def test_a_sync_at_the_end_of_an_overlong_line_is_ignored() -> None:
    scanner = SyncScanner()
    assert scanner.feed(b"x" * (MAX_LINE + 1)) is None
    assert scanner.feed(sync_line(NONCE)) is None  # still the same, overlong line
    assert scanner.feed(sync_line(NONCE)) == NONCE  # a fresh line


def test_memory_stays_bounded_on_endless_garbage() -> None:
    scanner = SyncScanner()
    for _ in range(1000):
        scanner.feed(b"y" * 4096)
    assert len(scanner._partial) <= MAX_LINE


@given(
    garbage=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=6),
)
def test_any_garbage_then_a_fresh_line_then_sync_is_found(garbage: bytes, cuts: list[int]) -> None:
    data = garbage + b"\n" + sync_line(NONCE)
    scanner = SyncScanner()
    found = None
    last = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        found = scanner.feed(data[last:cut]) or found
        last = cut
    assert found == NONCE


def test_wait_for_sync_waits_while_no_host_is_connected() -> None:
    reads = [b"", b"", b"noise\n", b"", sync_line(NONCE)]
    slept: list[float] = []
    assert wait_for_sync(lambda n: reads.pop(0), sleep=slept.append) == NONCE
    assert len(slept) == 3


def test_wait_for_sync_gives_up_a_port_that_was_replaced() -> None:
    reads = iter([b"", b"", b""])
    checks: list[int] = []

    def replaced() -> bool:
        checks.append(1)
        return len(checks) >= 2

    with pytest.raises(relay.PortReplaced):
        relay.wait_for_sync(lambda _n: next(reads), sleep=lambda _s: None, replaced=replaced)
    assert len(checks) == 2


def test_ack_line_shape() -> None:
    assert ack_line(NONCE) == b"ACK " + NONCE.encode() + b"\n"


@pytest.fixture
def port(tmp_path: Path) -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _read_until(fd: int, needle: bytes, limit: float = 20.0) -> bytes:
    got = b""
    deadline = time.monotonic() + limit
    while needle not in got:
        assert time.monotonic() < deadline, f"no {needle!r} in {got!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            got += os.read(fd, 4096)
    return got


def test_relay_acks_then_hands_the_port_to_the_server_and_starts_over(
    port: tuple[int, str], tmp_path: Path
) -> None:
    master, port_path = port
    server = [
        sys.executable,
        "-c",
        "import sys; print('READY', flush=True); "
        "line = sys.stdin.readline(); print('got', line.strip(), flush=True)",
    ]
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowork.guest.relay", port_path, "--", *server],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        # Stale bytes from an earlier session come first and must not reach the server.
        os.write(master, b"SSH-2.0-old\r\n\x00\x01garbage" + b"z" * 500 + b"\n")
        os.write(master, sync_line(NONCE))
        out = _read_until(master, b"READY\n")
        assert out.startswith(ack_line(NONCE))
        assert out == ack_line(NONCE) + b"READY\n"
        os.write(master, b"hello\n")
        assert _read_until(master, b"got hello\n") == b"got hello\n"
        # The server exited; the relay waits for the next SYNC and serves again.
        os.write(master, b"leftover\n" + sync_line(OTHER))
        out = _read_until(master, b"READY\n")
        assert out == ack_line(OTHER) + b"READY\n"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_main_refuses_bad_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        relay.main(["/dev/null"])
    assert exc.value.code == 2
