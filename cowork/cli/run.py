"""``cowork run --workspace DIR "task"``: hand a task to the agent; everything runs in the VM.

Streams the agent's text and each action in plain language, asks approvals on the terminal,
prints how many actions ran / were asked about / were refused, and exits 0 on completion
(130 after Ctrl-C). Without an API key it uses the built-in demo model, clearly labelled.

This module is a face only: :mod:`cowork.host.tasks` decides how the task runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from cowork.cli.common import add_workspace_arg, event_bus, progress
from cowork.host.agent.loop import Decision, RunSummary, StopReason, ToolCall, Verdict
from cowork.host.agent.settings import ApprovalMode
from cowork.host.agent.tools import describe
from cowork.paths import Paths


class TerminalApprover:
    """Asks on the terminal. Anything but y/yes is no; without a terminal it is always no."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    def __call__(self, call: ToolCall, decision: Decision, description: str) -> bool:
        return self.ask(description, decision.reason)

    def ask(self, description: str, reason: str) -> bool:
        out = self.stdout
        print(f"\n? The agent wants to: {description}", file=out)
        print(f"  Why cowork asks: {reason}", file=out)
        if not self.stdin.isatty():
            print("  No terminal to answer on, so it was not allowed.", file=out)
            return False
        print("  Allow it? [y/N] ", end="", file=out, flush=True)
        answer = self.stdin.readline().strip().lower()
        return answer in {"y", "yes"}


def action_line(kind: str, description: str, verdict: str, reason: str) -> str:
    if kind == "run":
        return f"\n→ {description}"
    if verdict == Verdict.REFUSE.value:
        return f"\n✗ Refused: {description} — {reason}"
    return f"\n✗ Not allowed: {description}"


def print_action(kind: str, call: ToolCall, decision: Decision, out: TextIO) -> None:
    line = action_line(kind, describe(call), decision.verdict.value, decision.reason)
    print(line, file=out, flush=True)


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


def after_task(summary: RunSummary, out: TextIO) -> None:
    """The end of a run, after the task: the summary line.

    A review of what the task changed (staged changes) belongs here, after the summary.
    """
    print(f"\n\n{summary_line(summary)}", file=out)


def _run_in_process(args: argparse.Namespace, out: TextIO) -> RunSummary:
    from cowork.host.session import open_session
    from cowork.host.tasks import TaskCallbacks, TaskOptions, run_session_task
    from cowork.host.workspace import check_workspace

    paths = Paths()
    events = event_bus(paths)
    workspace = check_workspace(args.workspace, paths=paths)
    with open_session(workspace, paths=paths, events=events, progress=progress) as session:
        return run_session_task(
            session,
            args.task,
            approver=TerminalApprover(),
            options=TaskOptions(mode=args.mode, demo=args.demo),
            callbacks=TaskCallbacks(
                on_text=lambda t: print(t, end="", file=out, flush=True),
                on_action=lambda k, c, d: print_action(k, c, d, out),
                on_notice=lambda m: print(m, file=out, flush=True),
            ),
        )


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    summary = _run_in_process(args, out)
    after_task(summary, out)
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
