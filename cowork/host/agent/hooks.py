"""Workspace hooks (PreToolUse / PostToolUse) from a trusted workspace's ``.claude`` settings.

The host never reads or parses the workspace's settings: the small program below runs in the
guest (python3, standard library), reads ``/workspace/.claude/settings.json`` and
``settings.local.json`` there, runs the matching hook commands there with the hook input on
stdin, and prints one JSON summary. The host only reads that summary. Hooks run only when the
session says the workspace is trusted.

Hook semantics follow Claude Code's: ``matcher`` is a regular expression over the tool name
(``Bash``, ``Read``, ``Write``, ``Edit``, ``Glob``, ``Grep``; empty or ``*`` matches all); exit
status 2 blocks (stderr is the reason); stdout JSON ``{"decision": "block", "reason": ...}``
or ``hookSpecificOutput.permissionDecision == "deny"`` also blocks. A PreToolUse hook that
cannot run blocks the action (fail closed).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cowork.host.agent.loop import ToolCall, ToolOutcome
from cowork.host.agent.tools import GuestRunner

CLAUDE_TOOL_NAMES = {
    "bash": "Bash",
    "read_file": "Read",
    "write_file": "Write",
    "edit_file": "Edit",
    "list_files": "Glob",
    "grep": "Grep",
}

SOURCE = r"""
import json, os, re, subprocess, sys

req = json.loads(sys.stdin.read())
out = {"blocked": False, "reason": "", "notes": [], "ran": 0, "events": []}
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
            if not isinstance(hook, dict) or hook.get("type") != "command":
                continue
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
                    ["sh", "-c", str(hook.get("command", ""))], input=json.dumps(payload),
                    capture_output=True, text=True, cwd=req["cwd"],
                    timeout=float(hook.get("timeout") or 60),
                )
            except subprocess.TimeoutExpired:
                out["blocked"] = req["event"] == "PreToolUse" or out["blocked"]
                out["reason"] = f"the hook {hook.get('command')!r} took too long"
                continue
            decision = {}
            try:
                decision = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
            except ValueError:
                pass
            specific = decision.get("hookSpecificOutput") or {}
            if proc.returncode == 2 or decision.get("decision") == "block" or \
                    specific.get("permissionDecision") == "deny":
                out["blocked"] = True
                out["reason"] = (proc.stderr.strip() or decision.get("reason")
                                 or specific.get("permissionDecisionReason") or "blocked by a hook")
            elif proc.returncode != 0:
                out["notes"].append(f"hook exited {proc.returncode}: {proc.stderr.strip()[:500]}")
sys.stdout.write(json.dumps(out))
"""


@dataclass(frozen=True)
class HookOutcome:
    blocked: bool
    reason: str = ""
    notes: tuple[str, ...] = ()
    ran: int = 0


class GuestHooks:
    """Runs a trusted workspace's hooks in the guest."""

    def __init__(
        self,
        runner: GuestRunner,
        *,
        root: str = "/workspace",
        session_id: str = "cowork",
        python: str = "python3",
    ) -> None:
        self.runner = runner
        self.root = root
        self.session_id = session_id
        self.python = python
        self.events: frozenset[str] | None = None

    def _settings(self) -> list[str]:
        return [f"{self.root}/.claude/settings.json", f"{self.root}/.claude/settings.local.json"]

    def _request(
        self, event: str, call: ToolCall | None, response: Mapping[str, Any] | None = None
    ) -> HookOutcome:
        tool_input: dict[str, Any] = dict(call.input) if call else {}
        if call and "path" in tool_input:
            tool_input["file_path"] = f"/workspace/{str(tool_input['path']).lstrip('/')}"
        req: dict[str, Any] = {
            "event": event,
            "settings": self._settings(),
            "cwd": self.root,
            "session_id": self.session_id,
            "tool_name": CLAUDE_TOOL_NAMES.get(call.name, call.name) if call else "",
            "tool_input": tool_input,
        }
        if response is not None:
            req["tool_response"] = dict(response)
        result = self.runner.run(
            f"{self.python} -I -c {shlex.quote(SOURCE)}",
            timeout=300,
            cwd=self.root,
            input=json.dumps(req),
        )
        try:
            reply = json.loads(result.stdout)
            outcome = HookOutcome(
                blocked=bool(reply["blocked"]),
                reason=str(reply["reason"]),
                notes=tuple(str(n) for n in reply["notes"]),
                ran=int(reply["ran"]),
            )
            if event == "List":
                self.events = frozenset(str(e) for e in reply["events"])
            return outcome
        except (ValueError, KeyError, TypeError):
            return HookOutcome(
                blocked=True,
                reason=f"the folder's {event} hooks could not run (exit {result.exited})",
            )

    def refresh(self) -> frozenset[str]:
        """Which hook events the workspace configures (asked once per run)."""
        outcome = self._request("List", None)
        if outcome.blocked:
            self.events = frozenset({"PreToolUse", "PostToolUse"})  # unknown: run them
        return self.events or frozenset()

    def pre(self, call: ToolCall) -> HookOutcome:
        if self.events is not None and "PreToolUse" not in self.events:
            return HookOutcome(blocked=False)
        return self._request("PreToolUse", call)

    def post(self, call: ToolCall, outcome: ToolOutcome) -> HookOutcome:
        if self.events is not None and "PostToolUse" not in self.events:
            return HookOutcome(blocked=False)
        response = {"output": outcome.text[:10_000], "is_error": outcome.is_error}
        return self._request("PostToolUse", call, response)
