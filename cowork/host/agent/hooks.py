"""Workspace hooks (PreToolUse / PostToolUse) from a trusted workspace's ``.claude`` settings.

The host never reads or parses the workspace's settings: the program
:mod:`cowork.guest.hookrun` runs in the guest (python3, standard library), reads
``/workspace/.claude/settings.json`` and ``settings.local.json`` there, runs the matching
hook commands there with the hook input on stdin, and prints one JSON summary. The host only
reads that summary. Hooks run only when the session says the workspace is trusted.

Hook semantics follow Claude Code's: ``matcher`` is a regular expression over the tool name
(``Bash``, ``Read``, ``Write``, ``Edit``, ``Glob``, ``Grep``; empty or ``*`` matches all); exit
status 2 blocks (stderr is the reason); stdout JSON ``{"decision": "block", "reason": ...}``
or ``hookSpecificOutput.permissionDecision == "deny"`` also blocks. A PreToolUse hook that
cannot run blocks the action (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cowork.host.agent.loop import ToolCall, ToolOutcome
from cowork.host.channel import CommandChannel, guest_program

CLAUDE_TOOL_NAMES = {
    "bash": "Bash",
    "read_file": "Read",
    "write_file": "Write",
    "edit_file": "Edit",
    "list_files": "Glob",
    "grep": "Grep",
}


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
        runner: CommandChannel,
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
            guest_program(self.runner, "hookrun", python=self.python),
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
