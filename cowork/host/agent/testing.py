"""Fakes for fast tests of the agent: approvers.

The stand-in for the guest is the channel's own fake,
:class:`cowork.host.channel_fake.FakeChannel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cowork.host.agent.loop import Decision, ToolCall


@dataclass
class ScriptedApprover:
    """Answers approval prompts from a fixed policy and remembers what it was asked."""

    answer: bool = False
    asked: list[tuple[ToolCall, Decision]] = field(default_factory=list)

    def __call__(self, call: ToolCall, decision: Decision, description: str) -> bool:
        self.asked.append((call, decision))
        return self.answer
