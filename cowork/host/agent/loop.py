"""The agent loop as a pure state machine.

:meth:`AgentLoop.run` is a generator. It yields an *action* and receives that action's
*result* through ``send``; it does no I/O itself, so every path (tool results, errors, refusals,
max turns, interruption) is tested without a VM or a network. The driver
(:mod:`cowork.host.agent.driver`) performs the actions.

    action            the driver sends back
    ---------------   --------------------------------------------------------
    CallModel         ModelReply | ModelFailed | Interrupted
    AskUser           Answer | Interrupted
    RunTool           ToolOutcome | Interrupted
    Refused           None (a notification: the driver records the refusal)
    Finish            (nothing: the generator returns the RunSummary)

Contract: a tool call reaches ``RunTool`` only after the gate's decision was ``run`` or the
person answered yes to ``AskUser``. Any exception from the gate refuses the call.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cowork.host.agent.settings import AgentSettings

SYSTEM_PROMPT = """\
You are cowork, an assistant working on the files in one folder for a person who may not be \
technical. Everything you do runs inside a sealed Linux virtual machine: the person's folder \
is mounted at /workspace and is the only place you can read or change files. Use the tools to \
inspect and change files; keep changes to what the task asks for. The machine has no direct \
network access; web requests go through a gateway that only allows what an administrator \
permitted. Some actions need the person's approval; if one is declined or refused, do not \
retry it in another form — explain what you would need instead. When you are done, say in \
plain language what you changed."""


class Verdict(enum.StrEnum):
    RUN = "run"
    ASK = "ask"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # one plain-language sentence a non-technical person can judge
    risk: str = "routine"  # routine | risky | forbidden
    rule: str = ""  # which rule decided (for the audit log)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: Mapping[str, Any]


class Gate(Protocol):
    def decide(self, call: ToolCall) -> Decision: ...


# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class CallModel:
    turn: int  # 1-based
    system: str
    messages: tuple[Mapping[str, Any], ...]
    #: The tools the model may use; empty means the built-in set.
    tools: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class AskUser:
    call: ToolCall
    decision: Decision


@dataclass(frozen=True)
class RunTool:
    call: ToolCall
    decision: Decision
    approved_by_user: bool = False


@dataclass(frozen=True)
class Refused:
    call: ToolCall
    decision: Decision
    by_user: bool = False


class StopReason(enum.StrEnum):
    COMPLETED = "completed"
    MAX_TURNS = "max_turns"
    INTERRUPTED = "interrupted"
    ERROR = "error"


@dataclass(frozen=True)
class RunSummary:
    reason: StopReason
    turns: int
    ran: int
    asked: int
    refused: int
    final_text: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is StopReason.COMPLETED


@dataclass(frozen=True)
class Finish:
    summary: RunSummary


Action = CallModel | AskUser | RunTool | Refused | Finish

# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReply:
    """The assistant message: API content blocks as plain dicts, and the stop reason."""

    content: tuple[Mapping[str, Any], ...]
    stop_reason: str | None = "end_turn"

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=str(b["id"]), name=str(b["name"]), input=dict(b.get("input") or {}))
            for b in self.content
            if b.get("type") == "tool_use"
        ]

    def text(self) -> str:
        return "".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")


@dataclass(frozen=True)
class ModelFailed:
    message: str


@dataclass(frozen=True)
class Answer:
    approved: bool


@dataclass(frozen=True)
class ToolOutcome:
    text: str
    is_error: bool = False
    #: What the tool itself neutralised before the host saw the text (kind, count).
    findings: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Interrupted:
    where: str = ""


Result = ModelReply | ModelFailed | Answer | ToolOutcome | Interrupted | None


class _Stop(Exception):
    def __init__(self, reason: StopReason, error: str = "") -> None:
        self.reason = reason
        self.error = error


@dataclass
class _Counts:
    ran: int = 0
    asked: int = 0
    refused: int = 0
    turns: int = 0
    final_text: list[str] = field(default_factory=list)


def _declined_text(decision: Decision, by_user: bool) -> str:
    who = "The person declined this action" if by_user else "cowork refused this action"
    return (
        f"{who}: {decision.reason} It was not run. Do not try to achieve the same thing "
        "another way; continue with the rest of the task or explain what you would need."
    )


class AgentLoop:
    """One task, one conversation. Use :meth:`run` once."""

    def __init__(
        self,
        task: str,
        *,
        gate: Gate,
        settings: AgentSettings,
        system: str = SYSTEM_PROMPT,
        history: Sequence[Mapping[str, Any]] = (),
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.tools = tuple(tools)
        if not task.strip():
            raise ValueError("the task is empty")
        self.task = task
        self.gate = gate
        self.settings = settings
        self.system = system
        self.messages: list[Mapping[str, Any]] = [*history, {"role": "user", "content": task}]

    def _decide(self, call: ToolCall) -> Decision:
        try:
            decision = self.gate.decide(call)
            if not isinstance(decision, Decision):
                raise TypeError(f"gate returned {type(decision).__name__}")
            return decision
        except Exception as exc:  # fail closed: a broken gate refuses
            return Decision(
                Verdict.REFUSE,
                "cowork could not check whether this action is safe, so it was not run.",
                risk="unknown",
                rule=f"gate-error:{type(exc).__name__}",
            )

    def run(self) -> Generator[Action, Result, RunSummary]:
        counts = _Counts()
        try:
            yield from self._turns(counts)
            reason, error = StopReason.COMPLETED, ""
        except _Stop as stop:
            reason, error = stop.reason, stop.error
        summary = RunSummary(
            reason=reason,
            turns=counts.turns,
            ran=counts.ran,
            asked=counts.asked,
            refused=counts.refused,
            final_text="".join(counts.final_text).strip(),
            error=error,
        )
        yield Finish(summary)
        return summary

    def _turns(self, counts: _Counts) -> Generator[Action, Result, None]:
        while True:
            if counts.turns >= self.settings.max_turns:
                raise _Stop(
                    StopReason.MAX_TURNS,
                    f"stopped after {counts.turns} model turns (agent.max_turns); the task "
                    "may be unfinished",
                )
            counts.turns += 1
            reply = yield CallModel(counts.turns, self.system, tuple(self.messages), self.tools)
            if isinstance(reply, Interrupted):
                raise _Stop(StopReason.INTERRUPTED, "interrupted while the model was answering")
            if isinstance(reply, ModelFailed):
                raise _Stop(StopReason.ERROR, reply.message)
            if not isinstance(reply, ModelReply):
                raise _Stop(StopReason.ERROR, f"unexpected result {type(reply).__name__}")
            self.messages.append({"role": "assistant", "content": [dict(b) for b in reply.content]})
            calls = reply.tool_calls()
            counts.final_text = [reply.text()]
            if not calls:
                return
            results: list[dict[str, Any]] = []
            for call in calls:
                outcome = yield from self._one_call(call, counts)
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": outcome.text,
                        "is_error": outcome.is_error,
                    }
                )
            self.messages.append({"role": "user", "content": results})

    def _one_call(self, call: ToolCall, counts: _Counts) -> Generator[Action, Result, ToolOutcome]:
        decision = self._decide(call)
        by_user = False
        if decision.verdict is Verdict.ASK:
            counts.asked += 1
            answer = yield AskUser(call, decision)
            if isinstance(answer, Interrupted):
                raise _Stop(StopReason.INTERRUPTED, "interrupted while asking for approval")
            if not (isinstance(answer, Answer) and answer.approved):
                counts.refused += 1
                yield Refused(call, decision, by_user=True)
                return ToolOutcome(_declined_text(decision, by_user=True), is_error=True)
            by_user = True
        elif decision.verdict is not Verdict.RUN:
            counts.refused += 1
            yield Refused(call, decision)
            return ToolOutcome(_declined_text(decision, by_user=False), is_error=True)
        outcome = yield RunTool(call, decision, approved_by_user=by_user)
        if isinstance(outcome, Interrupted):
            raise _Stop(StopReason.INTERRUPTED, f"interrupted while running {call.name}")
        if not isinstance(outcome, ToolOutcome):
            outcome = ToolOutcome(f"internal error: no result for {call.name}", is_error=True)
        counts.ran += 1
        return outcome
