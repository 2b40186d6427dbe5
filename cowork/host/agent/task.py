"""One task, end to end: assemble gate, tools, hooks and driver around a guest runner."""

from __future__ import annotations

from collections.abc import Callable

from cowork.guest.contract import WORKSPACE_MOUNT
from cowork.host.agent.approvals import Approvals, Assessor, EgressCheck, RuleAssessor
from cowork.host.agent.driver import Approver, Driver, ModelClient
from cowork.host.agent.hooks import GuestHooks
from cowork.host.agent.loop import AgentLoop, Decision, RunSummary, ToolCall
from cowork.host.agent.settings import AgentSettings
from cowork.host.agent.tools import GuestTools
from cowork.host.agent.transcript import Transcript
from cowork.host.channel import CommandChannel
from cowork.host.events import EventBus


def run_task(
    runner: CommandChannel,
    task: str,
    *,
    settings: AgentSettings,
    events: EventBus,
    approver: Approver,
    model: ModelClient,
    mode: str | None = None,
    egress_check: EgressCheck | None = None,
    assessor: Assessor | None = None,
    transcript: Transcript | None = None,
    hooks_trusted: bool = False,
    changes_staged: bool = False,
    root: str = WORKSPACE_MOUNT,
    state_dir: str = "/tmp/cowork-agent",
    on_text: Callable[[str], None] = lambda _t: None,
    on_action: Callable[[str, ToolCall, Decision], None] = lambda _k, _c, _d: None,
) -> RunSummary:
    """Run ``task`` to its end. ``mode`` (a flag) overrides the policy's approval mode if the
    administrator allows it (UsageError otherwise). ``hooks_trusted`` is True only for a
    workspace the person trusted: then its PreToolUse/PostToolUse hooks run in the guest.
    ``changes_staged`` is True when the session's changes wait for review (staged mode):
    auto mode then runs reversible work confined to the folder without asking."""
    approval_mode = settings.resolve_mode(mode)
    gate = Approvals(
        approval_mode,
        assessor or RuleAssessor(egress_check=egress_check),
        changes_staged=changes_staged,
    )
    tools = GuestTools(
        runner,
        root=root,
        state_dir=state_dir,
        bash_timeout=settings.bash_timeout,
        max_output_chars=settings.max_output_chars,
    )
    hooks = GuestHooks(runner, root=root) if hooks_trusted else None
    driver = Driver(
        model=model,
        tools=tools,
        approver=approver,
        events=events,
        transcript=transcript,
        hooks=hooks,
        on_text=on_text,
        on_action=on_action,
    )
    return driver.run(AgentLoop(task, gate=gate, settings=settings))
