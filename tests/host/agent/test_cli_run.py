import io

from cowork.cli import run as run_cli
from cowork.host.agent.loop import Decision, RunSummary, StopReason, ToolCall, Verdict


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_terminal_approver_asks_in_plain_language_and_defaults_to_no():
    call = ToolCall("x", "bash", {"command": "git push -f"})
    decision = Decision(Verdict.ASK, "It would force-push.", risk="risky")
    out = io.StringIO()
    assert run_cli.TerminalApprover(FakeTTY("y\n"), out)(call, decision, "Run a command")
    assert "Why cowork asks: It would force-push." in out.getvalue()
    assert not run_cli.TerminalApprover(FakeTTY("\n"), io.StringIO())(call, decision, "d")
    # No terminal: never allowed.
    assert not run_cli.TerminalApprover(io.StringIO("y\n"), io.StringIO())(call, decision, "d")


def test_summary_line_and_exit_status():
    done = RunSummary(StopReason.COMPLETED, turns=3, ran=1, asked=2, refused=1)
    assert run_cli.summary_line(done) == "1 action ran, 2 asked about, 1 refused."
    assert run_cli.exit_status(done) == 0
    stopped = RunSummary(StopReason.INTERRUPTED, turns=1, ran=0, asked=0, refused=0)
    assert run_cli.exit_status(stopped) == 130
    assert "Ctrl-C" in run_cli.summary_line(stopped)
