"""The guest's change-set walker and server, on a real folder standing in for the upper layer."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading

from cowork.guest import changes


def names(entries):
    return {base64.b64decode(e["path"]).decode(): e for e in entries}


def test_scan_reports_files_dirs_links_whiteouts_and_never_follows_links(tmp_path):
    up = tmp_path / "upper"
    (up / "d").mkdir(parents=True)
    (up / "d" / "f").write_bytes(b"12345")
    (up / "link").symlink_to("/etc")
    os.mknod(up / "gone", 0o600 | 0o020000, 0)
    os.mkfifo(up / "fifo")
    entries, truncated = changes.scan(str(up))
    got = names(entries)
    assert not truncated
    assert got["d"]["kind"] == "dir" and got["d/f"]["size"] == 5
    assert got["link"]["kind"] == "symlink"
    assert base64.b64decode(got["link"]["target"]) == b"/etc"
    assert got["gone"]["kind"] == "whiteout"
    assert "fifo" not in got
    assert not any(k.startswith("link/") for k in got)


def test_scan_is_bounded(tmp_path):
    for i in range(10):
        (tmp_path / str(i)).write_text("x")
    entries, truncated = changes.scan(str(tmp_path), limit=4)
    assert len(entries) == 4 and truncated


def test_export_withholds_contents_over_the_limit(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    buf = io.BytesIO()
    changes.export(str(tmp_path), 10, buf.write)
    data = buf.getvalue()
    head = json.loads(data[len(changes.MAGIC) :].split(b"\n", 1)[0])
    assert head["contents"] is False and head["total"] == 100
    assert data.endswith(b"}\n" + changes.TRAILER)


def test_server_answers_only_allowed_uids(tmp_path):
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a").write_text("hi")
    a, b = socket.socketpair()
    t = threading.Thread(
        target=changes.handle, args=(a, frozenset({os.getuid() + 1}), str(tmp_path / "up"))
    )
    t.start()
    with b:  # refused before the request is even read
        assert b.recv(100).startswith(b"ERROR not allowed")
        t.join()
    a, b = socket.socketpair()
    t = threading.Thread(
        target=changes.handle, args=(a, frozenset({os.getuid()}), str(tmp_path / "up"))
    )
    t.start()
    with b:
        b.sendall(b'{"op": "export", "max_bytes": 100}\n')
        data = b"".join(iter(lambda: b.recv(65536), b""))
        t.join()
    assert data.startswith(changes.MAGIC) and data.endswith(b"hi" + changes.TRAILER)


def test_client_usage(capsys):
    assert changes.main([]) == 2
    assert changes.main(["export", "x"]) == 1
    assert "usage" in capsys.readouterr().err


def test_init_starts_the_server_with_pid1_signals_blocked_in_its_threads(monkeypatch):
    import signal

    from cowork.guest import contract, init

    seen = {}

    def fake_serve(path, uid):
        def record():
            seen["mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, set())

        t = threading.Thread(target=record)
        t.start()
        t.join()
        seen["uid"] = uid

    monkeypatch.setattr(changes, "serve", fake_serve)
    seed = contract.Seed("s", "k", "ssh-ed25519 AAAA", 4321, 4321, ())
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    init.start_changes_server(seed, lambda _msg: None)
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD} <= seen["mask"]
    assert seen["uid"] == 4321
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # restored here
