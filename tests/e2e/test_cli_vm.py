"""`cowork exec` and `cowork vm …` as a user runs them, against real VMs."""

from __future__ import annotations

import os

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

        # A second `vm up` for the same folder boots nothing: the service says it is up.
        again = cli("vm", "up", "--workspace", str(ws))
        assert again.returncode == 0 and f"{name}\talready up" in again.stdout, again
    finally:
        down = cli("vm", "down", name)
    assert down.returncode == 0, down.stderr
    assert not (cli.state_dir / "sessions" / name).exists(), "overlay must be gone after down"
    assert name not in cli("vm", "list").stdout
    assert os.listdir(cli.state_dir / "sessions") == []
