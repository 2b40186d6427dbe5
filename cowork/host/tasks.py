"""Assemble and run one agent task in a running session: the one place that decides how.

Every face (the CLI in-process, the daemon, tests) calls :func:`run_session_task`. It takes
ONE policy snapshot from the session's own watcher and derives everything from it: the agent
settings, the approval mode, the egress check the approval gate uses. It picks the real
model when the user has a key (or the labelled demo model without one), decides whether the
workspace's hooks run (only when the person trusts the workspace now; anything else is no),
and writes the transcript. No face reads policy for itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cowork.errors import SecretError, UsageError
from cowork.guest.contract import WORKSPACE_MOUNT
from cowork.host.agent.driver import (
    CREDENTIAL_ID,
    AnthropicModel,
    Approver,
    ModelClient,
    resolve_api_key,
)
from cowork.host.agent.loop import Decision, RunSummary, ToolCall
from cowork.host.agent.mcp import ServerSpec, configured_servers
from cowork.host.agent.offline import OfflineModel, demo_script
from cowork.host.agent.settings import AgentSettings, ApprovalMode
from cowork.host.agent.task import run_task
from cowork.host.agent.transcript import Transcript

if TYPE_CHECKING:
    from cowork.host.policy import Policy
    from cowork.host.session import Session

DEMO_LABEL = "demo model (scripted, not a real AI; set a key with `cowork creds set anthropic`)"
DEMO_MODEL = "cowork-demo-model"
#: Where the agent keeps its own state in the guest (outside the workspace).
GUEST_STATE_DIR = "/tmp/cowork-agent"

KeySource = Callable[[], str | None]


def agent_settings(policy: Policy) -> AgentSettings:
    """The agent part of the effective policy (a workspace can only narrow it)."""
    agent = policy.agent
    return AgentSettings(
        model=agent.model,
        base_url=agent.base_url,
        approval_mode=ApprovalMode(agent.approval_mode),
        allowed_approval_modes=frozenset(ApprovalMode(m) for m in agent.allowed_approval_modes),
        max_turns=agent.max_turns,
        max_tokens=agent.max_tokens,
    )


def keychain_key() -> str | None:
    """The user's model key from the keychain; None when there is none or no keychain."""
    from cowork.host.secrets import default_secrets

    try:
        return default_secrets().get(CREDENTIAL_ID)
    except SecretError:
        return None


@contextlib.contextmanager
def model_for(
    settings: AgentSettings,
    *,
    demo: bool,
    key_source: KeySource = keychain_key,
    on_notice: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[ModelClient, AgentSettings, bool]]:
    """The real model with the user's key, or the labelled demo model without one.

    Yields ``(model, settings actually used, is_demo)``. The notice naming the demo model is
    always given when the demo model is used.
    """
    key = None if demo else resolve_api_key(key_source)
    if key:
        yield AnthropicModel(settings, key), settings, False
        return
    on_notice(f"Using the {DEMO_LABEL}.")
    with OfflineModel(demo_script()) as server:
        demo_settings = AgentSettings(
            model=DEMO_MODEL,
            base_url=server.base_url,
            approval_mode=settings.approval_mode,
            allowed_approval_modes=settings.allowed_approval_modes,
            max_turns=settings.max_turns,
            max_tokens=settings.max_tokens,
        )
        yield AnthropicModel(demo_settings, "demo-model-no-key"), demo_settings, True


def egress_check_for(session: Session) -> Callable[[str, str], tuple[bool, str]]:
    """Would the session's gateway let this request out? Asked with the policy in force now.

    Without a policy watcher the answer is always no (fail closed).
    """
    from cowork.host.egress.gate import explain_url

    def check(method: str, url: str) -> tuple[bool, str]:
        policy = session.policy
        if policy is None:
            return False, "this session has no policy in force"
        decision = explain_url(url, method, policy.egress.grants)
        return decision.allowed, decision.reason

    return check


def hooks_trusted(session: Session) -> bool:
    """True only when the person trusts the session's workspace now; any doubt is no."""
    watcher = session.policy_watcher
    trust = watcher.trust if watcher is not None else None
    if trust is None:
        return False
    try:
        return trust.status(session.workspace).trusted
    except Exception:  # trust is a security gate: any failure means no
        return False


@dataclass
class TaskCallbacks:
    """What a face sees while a task runs. Every callback is optional."""

    on_text: Callable[[str], None] = lambda _t: None
    on_action: Callable[[str, ToolCall, Decision], None] = lambda _k, _c, _d: None
    on_notice: Callable[[str], None] = lambda _m: None


@dataclass(frozen=True)
class TaskOptions:
    """How the person asked for the task to run."""

    mode: str | None = None  # an approval mode from a flag; None: the policy's
    demo: bool = False  # the built-in demo model even when a key is set
    transcript: bool = True


@dataclass
class TaskPlan:
    """Everything decided for one task, before the model is asked anything."""

    settings: AgentSettings
    mode: ApprovalMode
    hooks_trusted: bool
    #: Connectors to start: admin policy and user settings, then a trusted workspace's.
    servers: tuple[ServerSpec, ...] = ()
    #: Connectors named but not started, with why.
    skipped: tuple[str, ...] = ()


def plan_task(session: Session, options: TaskOptions) -> TaskPlan:
    """Decide the run from ONE snapshot of the session's policy. A bad mode is a UsageError."""
    policy = session.policy
    if policy is None:
        raise UsageError(
            f"session {session.name} has no policy in force; start it with open_session()"
        )
    settings = agent_settings(policy)
    mode = settings.resolve_mode(options.mode)
    trusted = hooks_trusted(session)
    skipped: list[str] = []
    servers = configured_servers(policy, session.workspace, trusted, skipped)
    return TaskPlan(
        settings=settings,
        mode=mode,
        hooks_trusted=trusted,
        servers=tuple(servers),
        skipped=tuple(skipped),
    )


def run_session_task(
    session: Session,
    task: str,
    *,
    approver: Approver,
    options: TaskOptions | None = None,
    callbacks: TaskCallbacks | None = None,
    key_source: KeySource = keychain_key,
    model: ModelClient | None = None,
    guest_root: str | None = None,
) -> RunSummary:
    """Run ``task`` in ``session`` to its end and return what happened.

    ``model`` replaces the chosen model and ``guest_root`` the workspace mount (fast tests
    with a local runner only); otherwise the real model with the user's key, or the
    labelled demo model, working in the guest's /workspace.
    """
    options = options or TaskOptions()
    cb = callbacks or TaskCallbacks()
    plan = plan_task(session, options)
    transcript = Transcript.create(session.paths, session.workspace) if options.transcript else None
    for note in plan.skipped:
        cb.on_notice(f"Not started: {note}.")
    with contextlib.ExitStack() as stack:
        if model is None:
            model, used, _demo = stack.enter_context(
                model_for(plan.settings, demo=options.demo, key_source=key_source,
                          on_notice=cb.on_notice)
            )  # fmt: skip
        else:
            used = plan.settings
        return run_task(
            session.channel,
            task,
            settings=used,
            events=session.events,
            approver=approver,
            model=model,
            mode=str(plan.mode),
            egress_check=egress_check_for(session),
            hooks_trusted=plan.hooks_trusted,
            changes_staged=session.state.changes == "staged",
            outbound=session.outbound,
            mcp_servers=plan.servers,
            transcript=transcript,
            on_text=cb.on_text,
            on_action=cb.on_action,
            root=guest_root or WORKSPACE_MOUNT,
            state_dir=f"{guest_root}/.cowork-agent" if guest_root else GUEST_STATE_DIR,
        )


__all__ = [
    "DEMO_LABEL",
    "TaskCallbacks",
    "TaskOptions",
    "TaskPlan",
    "agent_settings",
    "egress_check_for",
    "hooks_trusted",
    "keychain_key",
    "model_for",
    "plan_task",
    "run_session_task",
]
