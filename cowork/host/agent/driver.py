"""The driver: performs the loop's actions. The only module that imports the anthropic SDK.

- :class:`AnthropicModel` calls the Messages API with streaming and tool use. The API key is
  passed in (keychain first, ``ANTHROPIC_API_KEY`` as a fallback — see :func:`resolve_api_key`)
  and is never logged, emitted, put in an exception or sent to the VM. Rate limits (429),
  overload (529) and server errors are retried with backoff honouring ``retry-after``.
- :class:`Driver` runs an :class:`AgentLoop`: model turns, approvals, tools in the guest,
  workspace hooks in the guest, events, transcript. Ctrl-C (KeyboardInterrupt) stops the model
  stream or the running guest command (its process group in the guest) and ends the run; file
  tools write through a temporary file and a rename, so the workspace stays consistent.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anthropic

from cowork.errors import AgentError, ChannelError, SecretError
from cowork.host.agent.content import ContentLayer, Provenance, provenance_of
from cowork.host.agent.hooks import GuestHooks
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
    Result,
    RunSummary,
    RunTool,
    ToolCall,
    ToolOutcome,
)
from cowork.host.agent.settings import AgentSettings
from cowork.host.agent.tools import TOOL_SCHEMAS, GuestTools, describe, tool_input_summary
from cowork.host.agent.transcript import Transcript
from cowork.host.events import EventBus, Kind

log = logging.getLogger(__name__)

CREDENTIAL_ID = "anthropic"
API_KEY_ENV = "ANTHROPIC_API_KEY"


def resolve_api_key(keychain: Callable[[], str | None] | None) -> str | None:
    """The API key: the keychain's ``anthropic`` credential, else ``ANTHROPIC_API_KEY``.

    A keychain that is unavailable falls back to the environment (headless use).
    """
    if keychain is not None:
        try:
            value = keychain()
        except SecretError as exc:
            log.info("keychain unavailable (%s); trying %s", type(exc).__name__, API_KEY_ENV)
            value = None
        if value:
            return value
    return os.environ.get(API_KEY_ENV) or None


class ModelClient(Protocol):
    def complete(self, action: CallModel, on_text: Callable[[str], None]) -> ModelReply: ...


class Approver(Protocol):
    """Asks the person. Returns True to run the action. Must not raise except KeyboardInterrupt."""

    def __call__(self, call: ToolCall, decision: Decision, description: str) -> bool: ...


def _block_dict(block: Any) -> dict[str, Any]:
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    dumped: dict[str, Any] = block.model_dump(exclude_none=True)
    return dumped


class AnthropicModel:
    """The Messages API through the official SDK, streaming, with our own backoff."""

    RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

    def __init__(
        self,
        settings: AgentSettings,
        api_key: str,
        *,
        max_attempts: int = 6,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, float], None] | None = None,
        timeout: float = 600.0,
    ) -> None:
        if not api_key:
            raise AgentError(
                "no API key for the model: run `cowork creds set anthropic` "
                f"(or set {API_KEY_ENV} for headless use)"
            )
        self.settings = settings
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.on_retry = on_retry
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": timeout}
        if settings.base_url:
            kwargs["base_url"] = settings.base_url
        self._client = anthropic.Anthropic(**kwargs)

    def _delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header is not None:
            try:
                return min(max(float(header), 0.0), 60.0)
            except ValueError:
                pass
        return float(min(2**attempt, 30)) * (0.5 + random.random() / 2)  # noqa: S311

    def complete(self, action: CallModel, on_text: Callable[[str], None]) -> ModelReply:
        last = ""
        for attempt in range(self.max_attempts):
            try:
                return self._stream(action, on_text)
            except anthropic.APIStatusError as exc:
                if exc.status_code not in self.RETRYABLE_STATUS:
                    raise AgentError(self._explain(exc)) from None
                last = f"the model service answered {exc.status_code}"
                delay = self._delay(attempt, exc)
            except anthropic.APIConnectionError as exc:
                last = "the model service could not be reached"
                delay = self._delay(attempt, exc)
            if attempt + 1 < self.max_attempts:
                if self.on_retry is not None:
                    self.on_retry(last, delay)
                self.sleep(delay)
        raise AgentError(f"{last} {self.max_attempts} times in a row; try again in a few minutes")

    def _explain(self, exc: anthropic.APIStatusError) -> str:
        if isinstance(exc, anthropic.AuthenticationError):
            return (
                "the model service rejected the API key; set a valid one with "
                "`cowork creds set anthropic`"
            )
        if isinstance(exc, anthropic.PermissionDeniedError):
            return "the API key is not allowed to use this model or service; ask your administrator"
        if isinstance(exc, anthropic.NotFoundError):
            return (
                f"the model service does not know the model {self.settings.model!r}; "
                "check agent.model in your policy"
            )
        message = ""
        body = exc.body
        if isinstance(body, Mapping):
            err = body.get("error")
            if isinstance(err, Mapping):
                message = str(err.get("message", ""))
        return f"the model service refused the request ({exc.status_code}): {message[:300]}"

    def _stream(self, action: CallModel, on_text: Callable[[str], None]) -> ModelReply:
        with self._client.messages.stream(
            model=self.settings.model,
            max_tokens=self.settings.max_tokens,
            system=action.system,
            messages=[dict(m) for m in action.messages],  # type: ignore[misc]
            tools=[dict(t) for t in action.tools] or list(TOOL_SCHEMAS),  # type: ignore[misc,arg-type]
        ) as stream:
            for event in stream:
                if event.type == "text":
                    on_text(event.text)
            final = stream.get_final_message()
        return ModelReply(
            content=tuple(_block_dict(b) for b in final.content), stop_reason=final.stop_reason
        )


class Driver:
    """Runs one :class:`AgentLoop` to its end; returns the summary."""

    def __init__(
        self,
        *,
        model: ModelClient,
        tools: GuestTools,
        approver: Approver,
        events: EventBus,
        transcript: Transcript | None = None,
        hooks: GuestHooks | None = None,
        on_text: Callable[[str], None] = lambda _t: None,
        on_action: Callable[[str, ToolCall, Decision], None] = lambda _k, _c, _d: None,
        content: ContentLayer | None = None,
        on_outside: Callable[[Provenance], None] = lambda _p: None,
    ) -> None:
        self.content = content
        self.on_outside = on_outside
        self.model = model
        self.tools = tools
        self.approver = approver
        self.events = events
        self.transcript = transcript
        self.hooks = hooks
        self.on_text = on_text
        self.on_action = on_action
        self.task_id = ""

    def _record(self, kind: str, **fields: Any) -> None:
        if self.transcript is not None:
            self.transcript.record(kind, **fields)

    def _decided(self, call: ToolCall, decision: Decision, verdict: str) -> None:
        self.events.emit(
            Kind.ACTION_DECIDED,
            call_id=call.id,
            tool=call.name,
            action=describe(call),
            verdict=verdict,
            risk=decision.risk,
            rule=decision.rule,
            reason=decision.reason,
        )

    def run(self, loop: AgentLoop) -> RunSummary:
        self._record("task", task=loop.task, settings=str(loop.settings.model))
        # The task's own text stays out of events (it can hold what the person typed); the
        # id ties the task's events together (and becomes its span in the OTLP export).
        self.task_id = secrets.token_hex(8)
        self.events.emit(Kind.AGENT_STARTED, task_id=self.task_id, model=loop.settings.model)
        if self.hooks is not None and self.hooks.events is None:
            self.hooks.refresh()
        steps = loop.run()
        action = next(steps)
        while True:
            if isinstance(action, Finish):
                summary = action.summary
                self._finish(summary)
                steps.close()
                return summary
            result = self._perform(action)
            action = steps.send(result)

    def _finish(self, summary: RunSummary) -> None:
        fields: dict[str, Any] = {
            "reason": str(summary.reason),
            "turns": summary.turns,
            "ran": summary.ran,
            "asked": summary.asked,
            "refused": summary.refused,
            "error": summary.error,
        }
        self.events.emit(Kind.AGENT_FINISHED, task_id=self.task_id, **fields)
        self._record("finished", **fields)

    def _perform(self, action: CallModel | AskUser | RunTool | Refused) -> Result:
        if isinstance(action, CallModel):
            return self._call_model(action)
        if isinstance(action, AskUser):
            return self._ask(action)
        if isinstance(action, RunTool):
            return self._run_tool(action)
        verdict = "refused-by-user" if action.by_user else "refuse"
        self._decided(action.call, action.decision, verdict)
        self.on_action("refused", action.call, action.decision)
        self._record(
            "refused",
            tool=action.call.name,
            input=tool_input_summary(action.call),
            by_user=action.by_user,
            reason=action.decision.reason,
        )
        return None

    def _call_model(self, action: CallModel) -> Result:
        try:
            reply = self.model.complete(action, self.on_text)
        except KeyboardInterrupt:
            return Interrupted("model")
        except AgentError as exc:
            return ModelFailed(str(exc))
        text = reply.text()
        if text:
            self.events.emit(Kind.AGENT_TEXT, turn=action.turn, text=text)
        self._record("assistant", turn=action.turn, content=list(reply.content))
        return reply

    def _ask(self, action: AskUser) -> Result:
        call, decision = action.call, action.decision
        description = describe(call)
        self.events.emit(
            Kind.APPROVAL_ASKED,
            call_id=call.id,
            tool=call.name,
            action=description,
            reason=decision.reason,
            risk=decision.risk,
            rule=decision.rule,
        )
        try:
            approved = bool(self.approver(call, decision, description))
        except KeyboardInterrupt:
            self.events.emit(Kind.APPROVAL_ANSWERED, call_id=call.id, approved=False)
            return Interrupted("approval")
        except Exception:  # fail closed: an approver that breaks says no
            log.exception("approver failed")
            approved = False
        self.events.emit(Kind.APPROVAL_ANSWERED, call_id=call.id, approved=approved)
        self._record("answer", tool=call.name, approved=approved)
        return Answer(approved)

    def _run_tool(self, action: RunTool) -> Result:
        call = action.call
        verdict = "run-approved" if action.approved_by_user else "run"
        if not action.approved_by_user:
            self._decided(call, action.decision, verdict)
        self.on_action("run", call, action.decision)
        started = time.monotonic()
        try:
            outcome = self._execute(call)
        except KeyboardInterrupt:
            self._stop_guest_command(call)
            self._tool_finished(call, "interrupted", started)
            return Interrupted(call.name)
        self._tool_finished(call, "error" if outcome.is_error else "ok", started)
        self._record(
            "tool",
            tool=call.name,
            input=tool_input_summary(call),
            is_error=outcome.is_error,
            output=outcome.text[:4000],
        )
        return self._screen(call, outcome)

    def _tool_finished(self, call: ToolCall, outcome: str, started: float) -> None:
        self.events.emit(
            Kind.TOOL_FINISHED,
            call_id=call.id,
            tool=call.name,
            outcome=outcome,
            seconds=round(time.monotonic() - started, 3),
        )

    def _screen(self, call: ToolCall, outcome: ToolOutcome) -> ToolOutcome:
        """The content layer: provenance, neutralisation, envelope; outside text marks."""
        if self.content is None:
            return outcome
        prov = provenance_of(call.name, call.input)
        text, findings = self.content.process(outcome.text, prov)
        for kind, n in outcome.findings:
            findings.add(kind, n)
        if findings:
            self.events.emit(
                Kind.CONTENT_NEUTRALISED,
                call_id=call.id,
                tool=call.name,
                origin=str(prov.origin),
                source=prov.source,
                counts=dict(findings.counts),
                message=f"{prov.label().capitalize()}: {findings.plain()}; it was shown to "
                "the agent as data.",
            )
        if prov.origin.outside:
            self.on_outside(prov)
        return ToolOutcome(text, outcome.is_error)

    def _execute(self, call: ToolCall) -> ToolOutcome:
        if self.hooks is not None:
            pre = self.hooks.pre(call)
            if pre.blocked:
                return ToolOutcome(
                    f"A PreToolUse hook in this folder blocked the action: {pre.reason}",
                    is_error=True,
                )
        try:
            outcome = self.tools.execute(call)
        except ChannelError as exc:
            outcome = ToolOutcome(f"the VM did not run the action: {exc}", is_error=True)
        if self.hooks is not None:
            post = self.hooks.post(call, outcome)
            if post.blocked and post.reason:
                outcome = ToolOutcome(
                    f"{outcome.text}\n[PostToolUse hook feedback] {post.reason}", outcome.is_error
                )
        return outcome

    def _stop_guest_command(self, call: ToolCall) -> None:
        for _ in range(3):
            try:
                self.tools.interrupt(call)
                return
            except KeyboardInterrupt:
                continue
            except Exception:
                log.warning("could not stop the running command in the VM", exc_info=True)
                return
