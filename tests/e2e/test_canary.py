"""The pre-trust canary against real VMs, through the CLI as a person runs it.

A workspace whose config in every location would create a marker file on the host, or
connect to a local listener, if anything in it were parsed-and-acted-on or executed on the
host. Every command that takes a workspace runs on it untrusted; then it is trusted and the
agent and ``exec`` run again: still nothing on the host. A PreToolUse hook of the trusted
workspace does run, inside the guest: it writes the guest's hostname into /workspace, a
path that exists only in the guest.

VM boots: one ``vm up`` serving exec and shell, one per ``run --demo``, one trusted exec.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import CLI
from tests.e2e.conftest import expected_owner
from tests.host.policy.conftest import Canary, make_canary

pytestmark = pytest.mark.e2e

HOOK_PROOF = "hook-ran-in-guest.txt"


def _own_tree(root: Path, owner: tuple[int, int]) -> None:
    """Give the workspace to the non-root owner the agent maps to (root runs only)."""
    if os.getuid() != 0:
        return
    os.chown(root, *owner)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), *owner)


@pytest.fixture
def canary_ws(tmp_path: Path, image_ready: None) -> Iterator[Canary]:
    with make_canary(tmp_path) as canary:
        settings_file = canary.workspace / ".claude" / "settings.json"
        settings = json.loads(settings_file.read_text())
        # A second PreToolUse hook: /workspace exists only in the guest.
        settings["hooks"]["PreToolUse"].append(
            {
                "matcher": "*",
                "hooks": [{"type": "command", "command": f"hostname > /workspace/{HOOK_PROOF}"}],
            }
        )
        settings_file.write_text(json.dumps(settings, indent=2))
        _own_tree(canary.workspace, expected_owner())
        yield canary


def _shell_under_pty(cli: CLI, ws: Path) -> tuple[int, str]:
    """``cowork shell`` on a terminal: wait for the prompt, run one command, exit."""
    fd, tty = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "cowork", "shell", "--workspace", str(ws)],
        stdin=tty, stdout=tty, stderr=tty, env=cli.env, cwd=cli.root, start_new_session=True,
    )  # fmt: skip
    os.close(tty)
    out = b""
    sent = False
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 300)
            if not ready:
                break  # the CLI is stuck; the assertions below say so
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and (out.rstrip().endswith(b"$") or out.rstrip().endswith(b"#")):
                os.write(fd, b"echo shell-$((6*7)); exit\n")
                sent = True
    finally:
        if not sent:
            child.terminate()
        status = child.wait(timeout=120)
        os.close(fd)
    return status, out.decode(errors="replace")


def _sessions(cli: CLI) -> list[str]:
    d = cli.state_dir / "sessions"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_canary_workspace_is_never_acted_on_on_the_host(
    tmp_path: Path, canary_ws: Canary, request: pytest.FixtureRequest
) -> None:
    cli = CLI(tmp_path / "home")
    request.addfinalizer(cli.close)  # the service the commands started goes too
    ws = str(canary_ws.workspace)

    def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        canary_ws.assert_untouched()
        return proc

    # --- untrusted: every command that takes the workspace ----------------------------
    ok(cli("policy", "show", "--workspace", ws))
    for url in (canary_ws.listener.url + "/x", "https://attacker.example.com/"):
        egress = cli("egress", "test", "--workspace", ws, url)
        assert egress.stdout.startswith("DENIED"), egress.stdout + egress.stderr
        canary_ws.assert_untouched()
    review = cli("trust", ws)  # no terminal: shows the review, trusts nothing
    assert review.returncode != 0
    canary_ws.assert_untouched()

    up = ok(cli("vm", "up", "--workspace", ws))
    try:
        proc = ok(cli("exec", "--workspace", ws, "--", "hostname; ls -a /workspace"))
        assert ".cowork.toml" in proc.stdout
        code, out = _shell_under_pty(cli, canary_ws.workspace)
        assert code == 0, out
        assert "shell-42" in out
        canary_ws.assert_untouched()
    finally:
        down = cli("vm", "down", "--workspace", ws)
    assert down.returncode == 0, down.stderr + up.stdout
    assert _sessions(cli) == []
    canary_ws.assert_untouched()

    run = ok(cli("run", "--demo", "--workspace", ws, "summarise my folder"))
    assert "demo model" in run.stdout
    assert not (canary_ws.workspace / HOOK_PROOF).exists(), "hooks ran for an untrusted folder"

    # --- trusted: hooks run, but only in the guest ------------------------------------
    ok(cli("trust", "--yes", ws))
    run = ok(cli("run", "--demo", "--workspace", ws, "summarise my folder"))
    assert "demo model" in run.stdout
    proof = canary_ws.workspace / HOOK_PROOF
    # The run's changes are staged: the hook's proof reaches the folder once they are kept.
    assert not proof.exists(), run.stdout
    assert "Nothing was changed in your folder" in run.stdout, run.stdout
    ok(cli("changes", "apply"))
    assert proof.exists(), run.stdout
    assert proof.read_text().strip() == "cowork"  # the guest's hostname
    proc = ok(cli("exec", "--workspace", ws, "--", "cat /workspace/.env; hostname"))
    assert proc.stdout.splitlines()[-1] == "cowork"
    assert _sessions(cli) == []
    canary_ws.assert_untouched()
