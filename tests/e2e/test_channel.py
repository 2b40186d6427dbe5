"""The private channel against a real guest (libvirt + QEMU under TCG): process-group kills,
immediate reconnects after aborted transfers, the pinned host key, the reverse forward, ptys."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator

import pytest

from cowork.errors import ChannelError
from cowork.guest import contract
from cowork.host.channel import Channel, parse_public_key
from cowork.paths import CHANNEL_SOCKET_FILE, CLIENT_KEY_FILE

pytestmark = pytest.mark.e2e


def _connect(booted, **kw) -> Channel:
    s = booted.session
    args = {
        "host_key": s.state.host_public_key,
        "client_key": (s.paths.session_dir(s.name) / CLIENT_KEY_FILE).read_text(),
        "user": contract.AGENT_USER,
        "timeout": 120.0,
        **kw,
    }
    return Channel.connect(s.paths.session_runtime(s.name) / CHANNEL_SOCKET_FILE, **args)


@pytest.fixture
def own_channel(booted) -> Iterator[None]:
    """Free the port (one host connection at a time) and give the session a fresh channel."""
    booted.session.channel.close()
    try:
        yield
    finally:
        booted.session.channel = _connect(booted)


def test_timeout_kills_the_whole_process_group(booted):
    r = booted.run("sleep 1000 & echo $!; sleep 1000", timeout=3)
    assert (r.exited, r.timed_out) == (124, True)
    pid = int(r.stdout.split()[0])
    gone = booted.run(
        f"for i in $(seq 100); do [ -e /proc/{pid} ] && ! grep -q '^State:.*Z' "
        f"/proc/{pid}/status 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
    )
    assert gone.ok, f"pid {pid} survived the timeout"


def test_large_output_is_intact(booted):
    r = booted.run("seq 1 1000000 | sha256sum; seq 1 1000000", timeout=300)
    digest, _, body = r.stdout.partition("\n")
    import hashlib

    assert hashlib.sha256(body.encode()).hexdigest() == digest.split()[0]


def test_immediate_reconnects_survive_aborted_transfers(booted, own_channel):
    for i in range(8):
        ch = _connect(booted)
        try:
            assert ch.run(f"echo round-{i}").stdout == f"round-{i}\n"
            if i % 2:
                started = threading.Event()
                done = threading.Event()

                def transfer(
                    ch: Channel = ch,
                    started: threading.Event = started,
                    done: threading.Event = done,
                ) -> None:
                    try:
                        ch.run(
                            "head -c 50000000 /dev/zero | tr '\\0' x",
                            on_stdout=lambda b, started=started: started.set(),
                        )
                    except ChannelError:
                        pass
                    finally:
                        done.set()

                threading.Thread(target=transfer, daemon=True).start()
                assert started.wait(120)
        finally:
            ch.close()
        if i % 2:
            assert done.wait(60)


def test_host_key_mismatch_is_refused(booted, own_channel):
    kind, blob = parse_public_key(booted.session.state.host_public_key)
    wrong = f"{kind} {base64.b64encode(blob[:-1] + bytes([blob[-1] ^ 1])).decode()}"
    with pytest.raises(ChannelError, match="host key mismatch"):
        _connect(booted, host_key=wrong)


def test_reverse_forward_reaches_a_host_server(booted):
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"from-host:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    cancel = booted.session.channel.reverse_forward(
        contract.PROXY_PORT, ("127.0.0.1", srv.getsockname()[1])
    )
    try:
        r = booted.run(
            "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', "
            f"{contract.PROXY_PORT})); s.sendall(b'ping'); print(s.recv(100).decode())\"",
            timeout=60,
        )
        assert r.stdout == "from-host:ping\n", r.stderr
    finally:
        cancel()
        srv.close()


def test_pty_has_a_terminal_of_the_asked_size(booted):
    if not booted.run("test -c /dev/ptmx && grep -q ' /dev/pts devpts ' /proc/mounts").ok:
        pytest.xfail("the guest has no devpts mounted at /dev/pts, so sshd cannot allocate ptys")
    pty = booted.session.channel.open_pty("stty size; tty; exit 4", term="xterm", cols=91, rows=27)
    out = b""
    while True:
        chunk = pty.read(4096, timeout=60)
        if not chunk:
            break
        out += chunk
    assert b"27 91" in out and b"/dev/pts/" in out
    assert pty.exit_status(timeout=30) == 4
    pty.close()
