"""``cowork run --workspace DIR "task"``: hand a task to the agent; everything runs in the VM.

Streams the agent's text and each action in plain language, asks approvals on the terminal,
prints how many actions ran / were asked about / were refused, and exits 0 on completion
(130 after Ctrl-C). Without an API key it uses the built-in demo model, clearly labelled.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cowork.cli.common import add_workspace_arg, event_bus, progress
from cowork.errors import SecretError
from cowork.host.agent.driver import CREDENTIAL_ID, AnthropicModel, ModelClient, resolve_api_key
from cowork.host.agent.loop import Decision, RunSummary, StopReason, ToolCall, Verdict
from cowork.host.agent.offline import OfflineModel, demo_script
from cowork.host.agent.settings import AgentSettings, ApprovalMode
from cowork.host.agent.task import run_task
from cowork.host.agent.tools import describe
from cowork.host.agent.transcript import Transcript
from cowork.paths import Paths

if TYPE_CHECKING:
    from cowork.host.policy import Policy

DEMO_LABEL = "demo model (scripted, not a real AI; set a key with `cowork creds set anthropic`)"


class TerminalApprover:
    """Asks on the terminal. Anything but y/yes is no; without a terminal it is always no."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    def __call__(self, call: ToolCall, decision: Decision, description: str) -> bool:
        out = self.stdout
        print(f"\n? The agent wants to: {description}", file=out)
        print(f"  Why cowork asks: {decision.reason}", file=out)
        if not self.stdin.isatty():
            print("  No terminal to answer on, so it was not allowed.", file=out)
            return False
        print("  Allow it? [y/N] ", end="", file=out, flush=True)
        answer = self.stdin.readline().strip().lower()
        return answer in {"y", "yes"}


def print_action(kind: str, call: ToolCall, decision: Decision, out: TextIO) -> None:
    if kind == "run":
        print(f"\n→ {describe(call)}", file=out, flush=True)
    elif decision.verdict is Verdict.REFUSE:
        print(f"\n✗ Refused: {describe(call)} — {decision.reason}", file=out, flush=True)
    else:
        print(f"\n✗ Not allowed: {describe(call)}", file=out, flush=True)


def summary_line(summary: RunSummary) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}" if count == 1 else f"{count} {word}s"

    text = (
        f"{n(summary.ran, 'action')} ran, {summary.asked} asked about, {summary.refused} refused."
    )
    if summary.reason is StopReason.INTERRUPTED:
        text += " Stopped by you (Ctrl-C); files are left as they were after the last action."
    elif summary.error:
        text += f" {summary.error[:1].upper()}{summary.error[1:]}."
    return text


def exit_status(summary: RunSummary) -> int:
    if summary.reason is StopReason.COMPLETED:
        return 0
    return 130 if summary.reason is StopReason.INTERRUPTED else 1


def _keychain() -> str | None:
    from cowork.host.secrets import default_secrets

    try:
        return default_secrets().get(CREDENTIAL_ID)
    except SecretError:
        return None


@contextlib.contextmanager
def model_for(
    settings: AgentSettings, *, demo: bool, out: TextIO
) -> Iterator[tuple[ModelClient, AgentSettings]]:
    """The real model with the user's key, or the labelled demo model without one."""
    key = None if demo else resolve_api_key(_keychain)
    if key:
        yield AnthropicModel(settings, key), settings
        return
    print(f"Using the {DEMO_LABEL}.", file=out, flush=True)
    with OfflineModel(demo_script()) as server:
        demo_settings = AgentSettings(
            model="cowork-demo-model",
            base_url=server.base_url,
            approval_mode=settings.approval_mode,
            allowed_approval_modes=settings.allowed_approval_modes,
            max_turns=settings.max_turns,
            max_tokens=settings.max_tokens,
        )
        yield AnthropicModel(demo_settings, "demo-model-no-key"), demo_settings


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


def _run(args: argparse.Namespace) -> int:
    from cowork.host.agent.mcp import workspace_servers
    from cowork.host.egress.gate import explain_url
    from cowork.host.policy import load_effective
    from cowork.host.session import open_session
    from cowork.host.trust import TrustStore
    from cowork.host.workspace import check_workspace

    paths = Paths()
    events = event_bus(paths)
    # Every check of the user's input happens before anything starts.
    workspace: Path = check_workspace(args.workspace, paths=paths)
    trust = TrustStore(paths.trust_store, bus=events)
    settings = agent_settings(load_effective(paths, workspace, trust, events))
    mode = settings.resolve_mode(args.mode)
    out = sys.stdout
    with (
        model_for(settings, demo=args.demo, out=out) as (model, used),
        open_session(workspace, paths=paths, events=events, progress=progress) as session,
    ):

        def egress_check(method: str, url: str) -> tuple[bool, str]:
            policy = session.policy
            grants = policy.egress.grants if policy is not None else ()
            decision = explain_url(url, method, grants)
            return decision.allowed, decision.reason

        summary = run_task(
            session.channel,
            args.task,
            settings=used,
            events=events,
            approver=TerminalApprover(),
            model=model,
            mode=str(mode),
            egress_check=egress_check,
            hooks_trusted=trust.status(workspace).trusted,
            transcript=Transcript.create(paths, workspace),
            on_text=lambda t: print(t, end="", file=out, flush=True),
            on_action=lambda k, c, d: print_action(k, c, d, out),
            outbound=session.outbound,
            mcp_servers=workspace_servers(workspace, trust.status(workspace).trusted),
        )
    print(f"\n\n{summary_line(summary)}", file=out)
    return exit_status(summary)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="hand a task to the agent; everything it does runs in the sealed VM"
    )
    add_workspace_arg(parser)
    parser.add_argument("task", help='what to do, in plain words, e.g. "tidy my notes"')
    parser.add_argument(
        "--mode",
        choices=[m.value for m in ApprovalMode],
        help="how often to ask before actions (default: auto, or your administrator's choice)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="use the built-in demo model even if a key is set"
    )
    parser.set_defaults(func=_run)
