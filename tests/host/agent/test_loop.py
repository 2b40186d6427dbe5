import pytest

from cowork.host.agent.loop import (
    AgentLoop,
    Answer,
    AskUser,
    CallModel,
    Decision,
    Finish,
    Interrupted,
    ModelFailed,
    ModelReply,
    Refused,
    RunTool,
    StopReason,
    ToolOutcome,
    Verdict,
)
from cowork.host.agent.settings import AgentSettings


class Gate:
    def __init__(self, verdicts=None):
        self.verdicts = verdicts or {}

    def decide(self, call):
        verdict = self.verdicts.get(call.name, Verdict.RUN)
        return Decision(verdict, f"because {call.name}", risk="risky", rule="test")


def tool(name, id_, **input_):
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def text(t):
    return {"type": "text", "text": t}


def drive(loop, respond):
    """Run the loop, answering each action with respond(action); return (actions, summary)."""
    steps = loop.run()
    actions = []
    action = next(steps)
    while True:
        actions.append(action)
        if isinstance(action, Finish):
            return actions, action.summary
        action = steps.send(respond(action))


def test_scripted_task_with_tool_results_and_errors_reaches_completion():
    replies = iter(
        [
            ModelReply((text("Reading."), tool("read_file", "t1", path="a.txt")), "tool_use"),
            ModelReply((tool("bash", "t2", command="false"),), "tool_use"),
            ModelReply((text("All done."),), "end_turn"),
        ]
    )
    loop = AgentLoop("summarise", gate=Gate(), settings=AgentSettings())

    def respond(action):
        if isinstance(action, CallModel):
            return next(replies)
        if isinstance(action, RunTool):
            if action.call.name == "bash":
                return ToolOutcome("[exit code 1]", is_error=True)
            return ToolOutcome("hello")
        raise AssertionError(action)

    actions, summary = drive(loop, respond)
    assert [type(a).__name__ for a in actions] == [
        "CallModel",
        "RunTool",
        "CallModel",
        "RunTool",
        "CallModel",
        "Finish",
    ]
    assert summary.reason is StopReason.COMPLETED and summary.ok
    assert (summary.ran, summary.asked, summary.refused, summary.turns) == (2, 0, 0, 3)
    assert summary.final_text == "All done."
    # The model saw each tool result, errors flagged, paired with its tool_use id.
    third = actions[4]
    results = [m for m in third.messages if m["role"] == "user"][1:]
    assert results[0]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": "hello",
        "is_error": False,
    }
    assert results[1]["content"][0]["is_error"] is True


def test_ask_declined_and_refused_calls_never_run_and_are_counted():
    replies = iter(
        [
            ModelReply(
                (tool("bash", "t1", command="rm -rf x"), tool("write_file", "t2", path="a")),
                "tool_use",
            ),
            ModelReply((text("ok"),), "end_turn"),
        ]
    )
    gate = Gate({"bash": Verdict.ASK, "write_file": Verdict.REFUSE})
    loop = AgentLoop("t", gate=gate, settings=AgentSettings())

    def respond(action):
        if isinstance(action, CallModel):
            return next(replies)
        if isinstance(action, AskUser):
            return Answer(False)
        if isinstance(action, Refused):
            return None
        raise AssertionError(f"must not run: {action}")

    actions, summary = drive(loop, respond)
    assert (summary.ran, summary.asked, summary.refused) == (0, 1, 2)
    refusals = [a for a in actions if isinstance(a, Refused)]
    assert [r.by_user for r in refusals] == [True, False]
    last_call = [a for a in actions if isinstance(a, CallModel)][-1]
    results = last_call.messages[-1]["content"]
    assert all(r["is_error"] for r in results)
    assert "declined" in results[0]["content"] and "refused" in results[1]["content"]


def test_approved_ask_runs_the_tool():
    replies = iter(
        [ModelReply((tool("bash", "t1", command="x"),), "tool_use"), ModelReply((text("k"),))]
    )
    loop = AgentLoop("t", gate=Gate({"bash": Verdict.ASK}), settings=AgentSettings())
    seen = []

    def respond(action):
        seen.append(action)
        if isinstance(action, CallModel):
            return next(replies)
        if isinstance(action, AskUser):
            return Answer(True)
        return ToolOutcome("ran")

    _, summary = drive(loop, respond)
    run = [a for a in seen if isinstance(a, RunTool)]
    assert len(run) == 1 and run[0].approved_by_user
    assert (summary.ran, summary.asked, summary.refused) == (1, 1, 0)


def test_max_turns_stops_a_model_that_never_finishes():
    loop = AgentLoop("t", gate=Gate(), settings=AgentSettings(max_turns=3))
    n = iter(range(100))

    def respond(action):
        if isinstance(action, CallModel):
            return ModelReply((tool("list_files", f"t{next(n)}"),), "tool_use")
        return ToolOutcome("x")

    actions, summary = drive(loop, respond)
    assert summary.reason is StopReason.MAX_TURNS and not summary.ok
    assert sum(isinstance(a, CallModel) for a in actions) == 3
    assert "max_turns" in summary.error


@pytest.mark.parametrize("where", ["model", "tool", "approval"])
def test_interruption_ends_the_run_at_any_step(where):
    loop = AgentLoop("t", gate=Gate({"bash": Verdict.ASK}), settings=AgentSettings())
    replies = iter(
        [
            ModelReply((tool("read_file", "t1", path="a"), tool("bash", "t2", command="x"))),
            ModelReply((text("never"),)),
        ]
    )

    def respond(action):
        if isinstance(action, CallModel):
            return Interrupted() if where == "model" else next(replies)
        if isinstance(action, RunTool):
            return Interrupted() if where == "tool" else ToolOutcome("ok")
        if isinstance(action, AskUser):
            return Interrupted()
        raise AssertionError(action)

    actions, summary = drive(loop, respond)
    assert summary.reason is StopReason.INTERRUPTED
    assert sum(isinstance(a, CallModel) for a in actions) == 1


def test_model_failure_ends_with_error():
    loop = AgentLoop("t", gate=Gate(), settings=AgentSettings())
    _, summary = drive(loop, lambda a: ModelFailed("the model service answered 500"))
    assert summary.reason is StopReason.ERROR
    assert "500" in summary.error


class BrokenGate:
    def decide(self, call):
        raise RuntimeError("bug in the gate")


class WrongGate:
    def decide(self, call):
        return True


@pytest.mark.parametrize("gate", [BrokenGate(), WrongGate()])
def test_a_failing_gate_refuses_fail_closed(gate):
    replies = iter([ModelReply((tool("bash", "t1", command="ls"),)), ModelReply((text("k"),))])
    loop = AgentLoop("t", gate=gate, settings=AgentSettings())

    def respond(action):
        if isinstance(action, CallModel):
            return next(replies)
        if isinstance(action, Refused):
            assert action.decision.verdict is Verdict.REFUSE
            return None
        raise AssertionError(f"must not run or ask: {action}")

    _, summary = drive(loop, respond)
    assert (summary.ran, summary.refused) == (0, 1)


def test_empty_task_is_rejected():
    with pytest.raises(ValueError):
        AgentLoop("  ", gate=Gate(), settings=AgentSettings())
