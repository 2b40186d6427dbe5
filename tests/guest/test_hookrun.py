"""The hook runner's guest program, called directly."""

import json
from pathlib import Path
from typing import Any

from cowork.guest import hookrun


def _req(ws: Path, event: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": event,
        "settings": [str(ws / ".claude/settings.json"), str(ws / ".claude/settings.local.json")],
        "cwd": str(ws),
        "session_id": "s",
        "tool_name": "Write",
        "tool_input": {"file_path": "/workspace/x"},
        **extra,
    }


def _settings(ws: Path, hooks: dict[str, Any]) -> None:
    (ws / ".claude").mkdir(exist_ok=True)
    (ws / ".claude/settings.json").write_text(json.dumps({"hooks": hooks}))


def test_list_reports_configured_events_without_running_anything(tmp_path: Path) -> None:
    _settings(tmp_path, {"PreToolUse": [{"hooks": [{"type": "command", "command": "touch r"}]}]})
    out = hookrun.run(_req(tmp_path, "List"))
    assert (out["events"], out["ran"], out["blocked"]) == (["PreToolUse"], 0, False)
    assert not (tmp_path / "r").exists()


def test_exit_2_blocks_with_stderr_as_reason_and_matcher_filters(tmp_path: Path) -> None:
    hooks = {
        "PreToolUse": [
            {"matcher": "Bash", "hooks": [{"type": "command", "command": "touch bash-ran"}]},
            {
                "matcher": "Write|Edit",
                "hooks": [{"type": "command", "command": "cat > in.json; echo no >&2; exit 2"}],
            },
        ]
    }
    _settings(tmp_path, hooks)
    out = hookrun.run(_req(tmp_path, "PreToolUse"))
    assert (out["blocked"], out["reason"], out["ran"]) == (True, "no", 1)
    assert not (tmp_path / "bash-ran").exists()
    assert json.loads((tmp_path / "in.json").read_text())["hook_event_name"] == "PreToolUse"


def test_deny_decision_blocks_and_unreadable_settings_are_noted(tmp_path: Path) -> None:
    deny = {"hookSpecificOutput": {"permissionDecision": "deny", "permissionDecisionReason": "r"}}
    cmd = f"echo '{json.dumps(deny)}'"
    _settings(tmp_path, {"PreToolUse": [{"hooks": [{"type": "command", "command": cmd}]}]})
    (tmp_path / ".claude/settings.local.json").write_text("{broken")
    out = hookrun.run(_req(tmp_path, "PreToolUse"))
    assert (out["blocked"], out["reason"]) == (True, "r")
    assert any("settings.local.json could not be read" in n for n in out["notes"])
