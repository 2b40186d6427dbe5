"""``cowork run --workspace DIR "task"``: hand a task to the agent; everything runs in the VM.

Streams the agent's text and each action in plain language, asks approvals on the terminal,
prints how many actions ran / were asked about / were refused, and exits 0 on completion
(130 after Ctrl-C). Without an API key it uses the built-in demo model, clearly labelled.

This module is a face only: :mod:`cowork.host.tasks` decides how the task runs. By default
the task runs in the user's cowork service (started in the background when none is running);
``--no-daemon`` runs it in this process with the same library code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, TextIO

from cowork.cli.common import add_daemon_arg, add_workspace_arg, event_bus, progress
from cowork.errors import CoworkError
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


def after_task(summary: RunSummary, out: TextIO, session: str | None) -> None:
    """The end of a run, after the task: the summary line, then the review of what the task
    changed (staged changes: keep or discard on a terminal; nothing is kept without one)."""
    from cowork.host.changes import end_of_run

    print(f"\n\n{summary_line(summary)}", file=out)
    if session is None:
        return
    if summary.reason is StopReason.INTERRUPTED:
        # No question after Ctrl-C: what the task staged waits, and the folder is untouched.
        print("Anything it staged is kept aside: see `cowork changes list`.", file=out)
        return
    end_of_run(Paths(), session, out=out)


#: What a run face returns: what happened, and the session it ran in (None: never started).
RunOutcome = tuple[RunSummary, "str | None"]


def _run_in_process(args: argparse.Namespace, out: TextIO) -> RunOutcome:
    from cowork.host.session import open_session
    from cowork.host.tasks import TaskCallbacks, TaskOptions, run_session_task
    from cowork.host.workspace import check_workspace

    paths = Paths()
    events = event_bus(paths)
    workspace = check_workspace(args.workspace, paths=paths)
    with open_session(
        workspace, paths=paths, events=events, progress=progress, changes_default="staged"
    ) as session:
        summary = run_session_task(
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
    # The session is closed here: a staged change set has been saved on the host.
    return summary, session.name


def _run_via_daemon(args: argparse.Namespace, out: TextIO) -> RunOutcome:
    from cowork.cli.daemon import connect_or_start, recover_if_gone
    from cowork.daemon import protocol as p
    from cowork.host.workspace import check_workspace

    paths = Paths()
    workspace = check_workspace(args.workspace, paths=paths)
    approver = TerminalApprover()
    session: list[str] = []

    def on_event(ev: p.Event) -> None:
        if ev.session and not session:
            session.append(ev.session)
        _show_event(ev, out)

    with connect_or_start(paths) as client, recover_if_gone(paths):
        request = p.RunTask(
            workspace=str(workspace), task=args.task, mode=args.mode, demo=args.demo
        )
        try:
            result = client.run_task(
                request,
                on_event=on_event,
                on_approval=lambda ev: approver.ask(ev.description, ev.reason),
            )
        except KeyboardInterrupt:
            # Ctrl-C stops the task in the service too; its files stay as the last action left them.
            if session:
                with contextlib.suppress(CoworkError):
                    client.call(p.StopTask(session=session[0]), timeout=30)
            interrupted = RunSummary(StopReason.INTERRUPTED, turns=0, ran=0, asked=0, refused=0)
            return interrupted, (session[0] if session else None)
    # The service closes a task's session before it answers: its change set is saved.
    return RunSummary(
        StopReason(result.reason),
        turns=result.turns,
        ran=result.ran,
        asked=result.asked,
        refused=result.refused,
        error=result.error,
    ), result.session


def _show_event(event: Any, out: TextIO) -> None:
    from cowork.daemon import protocol as p

    if isinstance(event, p.TaskText):
        print(event.text, end="", file=out, flush=True)
    elif isinstance(event, p.TaskAction):
        print(action_line(event.kind, event.description, event.verdict, event.reason),
              file=out, flush=True)  # fmt: skip
    elif isinstance(event, p.Notice):
        print(event.message, file=out, flush=True)
    elif isinstance(event, p.ApprovalAnswered) and event.by != "face-self":
        verb = "allowed" if event.allow else "not allowed"
        if event.by == "timeout":
            print("\n  Nobody answered in time, so it was not allowed.", file=out, flush=True)
        else:
            print(f"\n  Answered: {verb}.", file=out, flush=True)


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    run = _run_in_process if args.no_daemon else _run_via_daemon
    summary, session = run(args, out)
    after_task(summary, out, session)
    return exit_status(summary)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="hand a task to the agent; everything it does runs in the sealed VM"
    )
    add_workspace_arg(parser)
    add_daemon_arg(parser)
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
