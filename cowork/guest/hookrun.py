"""The hook runner: runs a trusted workspace's hooks in the guest (standard library only).

The host runs it as ``python3 -I /run/cowork/lib/cowork/guest/hookrun.py`` in the workspace;
it reads one JSON request on stdin, reads the workspace's ``.claude/settings.json`` and
``settings.local.json`` *in the guest*, runs the matching hook commands there with the hook
input on stdin, and prints one JSON summary
``{"blocked", "reason", "notes", "ran", "events"}``. The host never reads or parses the
workspace's settings itself (see :mod:`cowork.host.agent.hooks`).

Event ``List`` only reports which hook events the settings configure. A hook that exits 2, or
prints ``{"decision": "block"}`` or ``hookSpecificOutput.permissionDecision == "deny"``,
blocks; a PreToolUse hook that times out blocks.

It imports nothing from ``cowork``: it runs as a script, without the package on its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from typing import Any


def run_hook(req: dict[str, Any], hook: dict[str, Any], out: dict[str, Any]) -> None:
    payload = {
        "session_id": req["session_id"],
        "hook_event_name": req["event"],
        "cwd": req["cwd"],
        "tool_name": req["tool_name"],
        "tool_input": req["tool_input"],
    }
    if "tool_response" in req:
        payload["tool_response"] = req["tool_response"]
    out["ran"] += 1
    try:
        proc = subprocess.run(
            ["sh", "-c", str(hook.get("command", ""))],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            cwd=req["cwd"],
            timeout=float(hook.get("timeout") or 60),
            check=False,
        )
    except subprocess.TimeoutExpired:
        out["blocked"] = req["event"] == "PreToolUse" or out["blocked"]
        out["reason"] = f"the hook {hook.get('command')!r} took too long"
        return
    decision: Any = {}
    with contextlib.suppress(ValueError):
        decision = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    if not isinstance(decision, dict):
        decision = {}
    specific = decision.get("hookSpecificOutput") or {}
    if not isinstance(specific, dict):
        specific = {}
    if (
        proc.returncode == 2
        or decision.get("decision") == "block"
        or specific.get("permissionDecision") == "deny"
    ):
        out["blocked"] = True
        out["reason"] = (
            proc.stderr.strip()
            or decision.get("reason")
            or specific.get("permissionDecisionReason")
            or "blocked by a hook"
        )
    elif proc.returncode != 0:
        out["notes"].append(f"hook exited {proc.returncode}: {proc.stderr.strip()[:500]}")


def run(req: dict[str, Any]) -> dict[str, Any]:
    """The summary for one request (see the module docstring)."""
    out: dict[str, Any] = {"blocked": False, "reason": "", "notes": [], "ran": 0, "events": []}
    for path in req["settings"]:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            out["notes"].append(f"{os.path.basename(path)} could not be read: {exc}")
            continue
        hooks = data.get("hooks") if isinstance(data, dict) else None
        if not isinstance(hooks, dict):
            continue
        for event, entries in hooks.items():
            if entries and event not in out["events"]:
                out["events"].append(event)
        if req["event"] == "List":
            continue
        for entry in hooks.get(req["event"]) or []:
            matcher = (entry.get("matcher") or "") if isinstance(entry, dict) else ""
            try:
                if matcher not in ("", "*") and not re.fullmatch(matcher, req["tool_name"]):
                    continue
            except re.error:
                out["notes"].append(f"matcher {matcher!r} is not a valid pattern; skipped")
                continue
            for hook in entry.get("hooks") or []:
                if isinstance(hook, dict) and hook.get("type") == "command":
                    run_hook(req, hook, out)
    return out


def main() -> None:
    sys.stdout.write(json.dumps(run(json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
