"""One task, end to end: assemble gate, tools, hooks and driver around a guest runner."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from cowork.guest.contract import WORKSPACE_MOUNT
from cowork.host.agent.approvals import Approvals, Assessor, EgressCheck, RuleAssessor
from cowork.host.agent.content import ContentLayer, Provenance, skills_prompt
from cowork.host.agent.driver import Approver, Driver, ModelClient
from cowork.host.agent.hooks import GuestHooks
from cowork.host.agent.loop import (
    SYSTEM_PROMPT,
    AgentLoop,
    Decision,
    Gate,
    RunSummary,
    ToolCall,
    Verdict,
)
from cowork.host.agent.mcp import PREFIX as MCP_PREFIX
from cowork.host.agent.mcp import McpHub, ServerSpec, start_servers
from cowork.host.agent.settings import AgentSettings
from cowork.host.agent.tools import (
    TOOL_SCHEMAS,
    USER_SKILLS_ROOT,
    WORKSPACE_SKILLS_ROOT,
    GuestTools,
)
from cowork.host.agent.transcript import Transcript
from cowork.host.channel import CommandChannel
from cowork.host.egress.taint import AfterOutside, Asker, OutboundHold
from cowork.host.events import EventBus, Kind


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
    outbound: OutboundHold | None = None,
    mcp_servers: Sequence[ServerSpec] = (),
) -> RunSummary:
    """Run ``task`` to its end. ``mode`` (a flag) overrides the policy's approval mode if the
    administrator allows it (UsageError otherwise). ``hooks_trusted`` is True only for a
    workspace the person trusted: then its PreToolUse/PostToolUse hooks run in the guest.
    ``changes_staged`` is True when the session's changes wait for review (staged mode):
    auto mode then runs reversible work confined to the folder without asking.

    ``outbound`` is the session's hold after outside content (``Session.outbound``): results
    from outside origins mark it, and while the task runs, a request the gateway holds is
    asked about through ``approver``, the same one the task uses."""
    approval_mode = settings.resolve_mode(mode)
    # A workspace's own skills are workspace configuration: inert until the folder is trusted.
    skill_roots = (
        (USER_SKILLS_ROOT, WORKSPACE_SKILLS_ROOT) if hooks_trusted else (USER_SKILLS_ROOT,)
    )
    inner = Approvals(
        approval_mode,
        assessor or RuleAssessor(egress_check=egress_check),
        changes_staged=changes_staged,
    )
    hub = start_servers(runner, mcp_servers, cwd=root) if mcp_servers else McpHub()
    marked = [False]
    hold = outbound or OutboundHold()
    gate = AfterOutsideGate(inner, lambda: marked[0] or hold.marked, hold.current_mode, hub)
    tools = GuestTools(
        runner,
        root=root,
        state_dir=state_dir,
        bash_timeout=settings.bash_timeout,
        max_output_chars=settings.max_output_chars,
        skill_roots=skill_roots,
        mcp=hub,
    )
    hooks = GuestHooks(runner, root=root) if hooks_trusted else None
    content = ContentLayer()

    def on_outside(prov: Provenance) -> None:
        first = outbound.mark(str(prov.origin), prov.source) if outbound is not None else False
        if first or not marked[0]:
            marked[0] = True
            events.emit(
                Kind.SESSION_MARKED,
                origin=str(prov.origin),
                source=prov.source,
                message=f"The agent read {prov.label()}. From now on, anything that would send "
                "data out of this session is held and asked about first.",
            )

    driver = Driver(
        model=model,
        tools=tools,
        approver=approver,
        events=events,
        transcript=transcript,
        hooks=hooks,
        on_text=on_text,
        on_action=on_action,
        content=content,
        on_outside=on_outside,
    )
    system = f"{SYSTEM_PROMPT}\n\n{content.instruction()}"
    listed = skills_prompt(tools.list_skills())
    if listed:
        system += f"\n\n{listed}"
    loop = AgentLoop(
        task, gate=gate, settings=settings, system=system, tools=(*TOOL_SCHEMAS, *hub.schemas())
    )
    try:
        if outbound is None:
            return driver.run(loop)
        with outbound.asking(hold_asker(approver)):
            return driver.run(loop)
    finally:
        hub.close()


class AfterOutsideGate:
    """After outside content, a connector tool not declared read-only is asked about (or
    refused) per ``agent.after_outside_content``, like a request held at the gateway."""

    def __init__(
        self,
        inner: Gate,
        is_marked: Callable[[], bool],
        mode: Callable[[], AfterOutside],
        hub: McpHub,
    ) -> None:
        self.inner, self.is_marked, self.mode, self.hub = inner, is_marked, mode, hub

    def decide(self, call: ToolCall) -> Decision:
        decision = self.inner.decide(call)
        if not call.name.startswith(MCP_PREFIX) or decision.verdict is Verdict.REFUSE:
            return decision
        if not self.is_marked() or self.hub.read_only(call.name):
            return decision
        mode = self.mode()
        if mode is AfterOutside.OFF:
            return decision
        rule = "after-outside-content"
        if mode is AfterOutside.DENY:
            return Decision(
                Verdict.REFUSE,
                "After outside content, the policy does not allow connector tools that change "
                "things; an administrator can change agent.after_outside_content.",
                risk="risky",
                rule=rule,
            )
        return Decision(
            Verdict.ASK,
            "The agent read outside content that could be trying to make it use this "
            "connector tool, which can send data out or change things.",
            risk="risky",
            rule=rule,
        )


def hold_asker(approver: Approver) -> Asker:
    """Ask about a request held at the gateway through the task's own approver."""
    counter = itertools.count(1)

    def ask(question: str, reason: str) -> bool:
        call = ToolCall(id=f"egress-hold-{next(counter)}", name="send_out", input={})
        decision = Decision(Verdict.ASK, reason, risk="risky", rule="after-outside-content")
        return approver(call, decision, question) is True

    return ask
