"""What the agent loop takes from policy, as one frozen value.

The session maps the merged policy (admin and user layers only: a workspace can never move
the API base URL) onto :class:`AgentSettings`; this package does not import the policy
package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cowork.errors import UsageError


class ApprovalMode(enum.StrEnum):
    """How often the person is asked before an action runs.

    - ``ask``: every action that changes something is asked about.
    - ``auto``: routine work in /workspace runs; risky actions are asked about.
    - ``deny-risky``: routine work runs; risky actions are refused without asking.

    In every mode, attempts to reach credentials or requests the egress policy would deny
    are refused.
    """

    ASK = "ask"
    AUTO = "auto"
    DENY_RISKY = "deny-risky"


DEFAULT_MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class AgentSettings:
    model: str = DEFAULT_MODEL
    base_url: str | None = None  # None: the SDK default (honours ANTHROPIC_BASE_URL)
    approval_mode: ApprovalMode = ApprovalMode.AUTO
    allowed_approval_modes: frozenset[ApprovalMode] = field(
        default_factory=lambda: frozenset(ApprovalMode)
    )
    max_turns: int = 50
    max_tokens: int = 8192
    bash_timeout: float = 120.0
    max_output_chars: int = 30_000

    def resolve_mode(self, requested: str | None = None) -> ApprovalMode:
        """The approval mode to use: ``requested`` (from a flag) or the policy default.

        Raises UsageError for an unknown mode or one the administrator does not allow.
        """
        raw = requested if requested is not None else str(self.approval_mode)
        try:
            mode = ApprovalMode(raw)
        except ValueError:
            names = ", ".join(m.value for m in ApprovalMode)
            raise UsageError(f"unknown approval mode {raw!r}; use one of: {names}") from None
        if mode not in self.allowed_approval_modes:
            allowed = ", ".join(sorted(m.value for m in self.allowed_approval_modes)) or "none"
            raise UsageError(
                f"approval mode {mode.value!r} is not allowed by your administrator's policy "
                f"(agent.allowed_approval_modes = {allowed}); choose one of those"
            )
        return mode
