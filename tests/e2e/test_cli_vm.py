"""`cowork exec` and `cowork vm …` as a user runs them, against real VMs."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from cowork.host.events import Kind, read_log, verify_log
from tests.cli.conftest import CLI
from tests.e2e.conftest import make_workspace

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(tmp_path, image_ready):
    c = CLI(tmp_path / "home")
    try:
        yield c
    finally:
        c.close()  # the service the commands started goes too


def _in_terminal(cli, args, typed: bytes, timeout: float = 300) -> tuple[bytes, int]:
    """Run ``cowork ARGS`` on a new terminal, type ``typed``, and read everything it shows
    until it exits; its output and exit status."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowork", *args],
        stdin=slave, stdout=slave, stderr=slave, env=cli.env, cwd=cli.root,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    typed_yet = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: everything on it has gone
                break
            if not chunk:
                break
            out += chunk
            if not typed_yet and b"$ " in out:  # the guest shell's prompt
                os.write(master, typed)
                typed_yet = True
        return bytes(out), proc.wait(60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sessions(cli):
    d = cli.state_dir / "sessions"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_exec_streams_output_returns_the_exit_code_and_tears_down(cli, tmp_path):
    ws = make_workspace(tmp_path)
    (ws / "notes.txt").write_text("remember the milk\n")
    proc = cli(
        "exec", "--workspace", str(ws), "--",
        "sh", "-c", "cat notes.txt; echo to-stderr >&2; ls -a /workspace; exit 3",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "remember the milk" in proc.stdout
    assert ".claude" in proc.stdout
    assert "to-stderr" in proc.stderr
    assert "ready in" in proc.stderr
    assert _sessions(cli) == [], "the session's overlay and files must be gone"
    # The audit log holds each event once, in an intact hash chain.
    log = cli.root / "data" / "cowork" / "audit.jsonl"
    assert verify_log(log) == []
    events = read_log(log)
    kinds = [e.kind for e in events]
    # The person's command once, beside the gateway's self-test at start (its own command).
    mine = [e for e in events if "notes.txt" in str(e.fields.get("command", ""))]
    assert [e.kind for e in mine] == [Kind.COMMAND_STARTED, Kind.COMMAND_FINISHED]
    assert kinds.count(Kind.COMMAND_STARTED) == kinds.count(Kind.COMMAND_FINISHED)
    assert kinds.count(Kind.EGRESS_SELFTEST) == 1
    assert Kind.VM_READY in kinds and Kind.SESSION_ENDED in kinds


def test_vm_up_exec_status_down(cli, tmp_path):
    ws = make_workspace(tmp_path)
    up = cli("vm", "up", "--workspace", str(ws))
    assert up.returncode == 0, up.stderr
    name = up.stdout.split()[0]
    try:
        sdir = cli.state_dir / "sessions" / name
        assert (sdir / "overlay.qcow2").exists()

        listed = cli("vm", "list")
        assert name in listed.stdout and "running" in listed.stdout

        # exec reuses the running VM (no second boot) and leaves it running.
        proc = cli("exec", "--workspace", str(ws), "--", "echo reused; hostname")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("reused\n")
        assert "ready in" not in proc.stderr

        status = cli("vm", "status", name)
        assert status.returncode == 0, status.stderr
        for text in ("boot time:", "accel:", "/workspace", "read-write", "read-only"):
            assert text in status.stdout

        # `cowork shell` through the service, on a real terminal.
        out, code = _in_terminal(cli, ["shell", "--workspace", str(ws)],
                                 b"echo hi-$((6*7)); exit 7\n")  # fmt: skip
        assert code == 7 and b"hi-42" in out, out

        # Ctrl-C on `cowork exec` stops the command in the VM, not only the command here.
        proc = subprocess.Popen(
            [sys.executable, "-m", "cowork", "exec", "--workspace", str(ws), "--",
             "echo started; exec sleep 600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env, cwd=cli.root,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        left = cli("exec", "--workspace", str(ws), "--", "pgrep -x sleep || echo none")
        assert left.returncode == 0 and left.stdout == "none\n", left

        # A second `vm up` for the same folder boots nothing: the service says it is up.
        again = cli("vm", "up", "--workspace", str(ws))
        assert again.returncode == 0 and f"{name}\talready up" in again.stdout, again
    finally:
        down = cli("vm", "down", name)
    assert down.returncode == 0, down.stderr
    assert not (cli.state_dir / "sessions" / name).exists(), "overlay must be gone after down"
    assert name not in cli("vm", "list").stdout
    assert os.listdir(cli.state_dir / "sessions") == []
