"""Bad input to the VM commands is refused with exit status 2, before any VM starts."""

from __future__ import annotations

from pathlib import Path

import pytest


def _no_session_started(cli) -> bool:
    sessions = cli.state_dir / "sessions"
    return not sessions.exists() or not any(sessions.iterdir())


@pytest.mark.parametrize("command", [["exec", "--workspace"], ["vm", "up", "--workspace"]])
@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda t: str(t / "missing"), "does not exist"),
        (lambda t: str(t / "file.txt"), "is a file"),
        (lambda t: "/", "system folder"),
        (lambda t: "/etc", "system folder"),
        (lambda t: str(Path.home()), "home folder"),
    ],
)
def test_bad_workspaces_are_refused(cli, tmp_path, command, target, message):
    (tmp_path / "file.txt").write_text("x")
    args = [*command, target(tmp_path)]
    if command[0] == "exec":
        args += ["--", "true"]
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _no_session_started(cli)


def test_a_claude_folder_with_credentials_is_refused(cli, tmp_path, monkeypatch):
    ws = tmp_path / "proj"
    ws.mkdir()
    home = tmp_path / "fakehome"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text('{"token": "x"}')
    cli.env["HOME"] = str(home)
    proc = cli("exec", "--workspace", str(ws), "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert ".credentials.json" in proc.stderr
    assert "cowork creds set" in proc.stderr
    assert _no_session_started(cli)


def test_a_workspace_claude_symlink_is_refused(cli, tmp_path):
    ws = tmp_path / "proj"
    ws.mkdir()
    (ws / ".claude").symlink_to(tmp_path)
    proc = cli("exec", "--workspace", str(ws), "--", "true")
    assert proc.returncode == 2
    assert "symbolic link" in proc.stderr
    assert _no_session_started(cli)


def test_exec_without_a_command_is_refused(cli, tmp_path):
    proc = cli("exec", "--workspace", str(tmp_path))
    assert proc.returncode == 2
    assert "no command given" in proc.stderr


def test_down_of_an_unknown_vm_says_so(cli):
    proc = cli("vm", "status", "cowork-nope-000000")
    assert proc.returncode == 2
    assert "no cowork VM named" in proc.stderr


def test_events_go_to_the_audit_log_named_by_user_settings(cli, tmp_path):
    from cowork.cli.common import audit_log_path
    from cowork.paths import Paths

    paths = Paths.under(tmp_path / "p")
    assert audit_log_path(paths) == paths.audit_log
    paths.config.mkdir(parents=True)
    target = tmp_path / "elsewhere" / "audit.jsonl"
    paths.user_settings_file.write_text(f'version = 1\n[audit]\nlog_path = "{target}"\n')
    assert audit_log_path(paths) == target
