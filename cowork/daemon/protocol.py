"""The service's wire protocol: versioned JSON lines of typed messages, imported by both sides.

Every line is one JSON object with ``v`` (:data:`VERSION`) and ``type``. A face sends
*requests*, each with an ``id`` it chose; the service answers each with exactly one *reply*
carrying the same ``id`` (``type`` = the reply's type, or ``error``). While a request runs
(a task, a command, a subscription) the service also sends *events* on the same connection;
an event names the request it belongs to in ``ref`` (0 for subscriptions' broadcast events)
and carries ``seq``, one counter for the whole service, so every subscriber sees the same
sequence. Requests on one connection run concurrently (answering an approval while a task
runs on the same connection works).

Adding a request: define a :class:`Request` subclass with a unique ``type`` literal and the
reply class it is answered with, decorate it with :func:`request`, and register a handler in
the service (``@handles(MyRequest)`` in :mod:`cowork.daemon.server`). Nothing else changes:
the parser finds types in :data:`REQUESTS`, :data:`REPLIES` and :data:`EVENTS`.

A line longer than :data:`MAX_LINE` bytes, invalid JSON, an unknown type or a bad field gets
an :class:`ErrorReply` (``code`` says which) and the connection keeps working.

This module imports only pydantic and the standard library: faces load it cheaply.
"""

from __future__ import annotations

import builtins
import json
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Bumped on any incompatible change; a message with another version is refused.
VERSION = 1
#: The longest line either side accepts (bytes, newline included).
MAX_LINE = 1 << 20


class ProtocolError(Exception):
    """A line that is not a valid message. ``code`` is sent back in the error reply."""

    def __init__(self, code: str, message: str, ref: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = VERSION
    type: str

    def to_line(self) -> bytes:
        return (self.model_dump_json() + "\n").encode()


def _type_of(cls: Any) -> str:
    return str(cls.model_fields["type"].default)


# --- replies --------------------------------------------------------------------------------


class Reply(Message):
    id: int = 0


REPLIES: dict[str, type[Reply]] = {}
R = TypeVar("R", bound=type[Reply])


def reply(cls: R) -> R:
    REPLIES[_type_of(cls)] = cls
    return cls


@reply
class ErrorReply(Reply):
    """The request failed. ``code``: bad_line, too_long, bad_version, unknown_type,
    bad_request, not_found, refused, failed. ``message`` is for a person."""

    type: Literal["error"] = "error"
    code: str
    message: str


@reply
class Ok(Reply):
    type: Literal["ok"] = "ok"


class SessionInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    workspace: str
    state: str  # "running" or the VM's state
    accel: str = ""
    boot_seconds: float = 0.0
    busy: bool = False  # a task or command is running in it
    kept: bool = True  # stays up after the request that started it (``vm up``)
    qemu_pid: int | None = None
    qemu_rss_kib: int | None = None
    gateway_pid: int | None = None
    gateway_rss_kib: int | None = None


@reply
class Sessions(Reply):
    type: Literal["sessions"] = "sessions"
    sessions: list[SessionInfo] = Field(default_factory=list)


@reply
class SessionReply(Reply):
    type: Literal["session"] = "session"
    session: SessionInfo
    started: bool = False  # booted for this request (False: an existing one)


@reply
class ExecResult(Reply):
    type: Literal["exec.result"] = "exec.result"
    exit_code: int
    timed_out: bool = False


@reply
class TaskResult(Reply):
    type: Literal["task.result"] = "task.result"
    session: str
    reason: str  # cowork.host.agent.loop.StopReason value
    turns: int = 0
    ran: int = 0
    asked: int = 0
    refused: int = 0
    error: str = ""


@reply
class ApprovalAnswerReply(Reply):
    type: Literal["approval.answer.result"] = "approval.answer.result"
    accepted: bool  # False: answered already (by another face or the timeout)
    allow: bool  # the answer in force


@reply
class PolicyReply(Reply):
    type: Literal["policy"] = "policy"
    session: str
    policy: dict[str, Any]


@reply
class DaemonInfo(Reply):
    type: Literal["daemon.info"] = "daemon.info"
    pid: int
    uptime_s: float
    rss_kib: int
    sessions: list[SessionInfo] = Field(default_factory=list)


# --- requests -------------------------------------------------------------------------------


class Request(Message):
    id: int = 0
    #: The reply class a successful request is answered with.
    answer: ClassVar[builtins.type[Reply]] = Ok


REQUESTS: dict[str, type[Request]] = {}
Q = TypeVar("Q", bound=type[Request])


def request(cls: Q) -> Q:
    REQUESTS[_type_of(cls)] = cls
    return cls


@request
class ListSessions(Request):
    type: Literal["sessions.list"] = "sessions.list"
    answer: ClassVar[builtins.type[Reply]] = Sessions


@request
class VmUp(Request):
    """Boot a session for a workspace and keep it (its gateway and policy watcher too)."""

    type: Literal["vm.up"] = "vm.up"
    answer: ClassVar[builtins.type[Reply]] = SessionReply
    workspace: str


@request
class VmDown(Request):
    type: Literal["vm.down"] = "vm.down"
    name: str


@request
class VmStatus(Request):
    type: Literal["vm.status"] = "vm.status"
    answer: ClassVar[builtins.type[Reply]] = SessionReply
    name: str


@request
class Exec(Request):
    """Run a command in the workspace's session (booted, and then removed, when none is up
    unless ``keep``). Output arrives as :class:`ExecOutput` events."""

    type: Literal["exec"] = "exec"
    answer: ClassVar[builtins.type[Reply]] = ExecResult
    workspace: str
    command: str
    timeout: float | None = None
    keep: bool = False


@request
class RunTask(Request):
    """Run an agent task in the workspace's session. Events stream until the reply."""

    type: Literal["task.run"] = "task.run"
    answer: ClassVar[builtins.type[Reply]] = TaskResult
    workspace: str
    task: str
    mode: str | None = None
    demo: bool = False


@request
class StopTask(Request):
    type: Literal["task.stop"] = "task.stop"
    session: str


@request
class Subscribe(Request):
    """Receive every event (of one session, or of all with ``session`` None) until the
    connection closes. Answered with :class:`Ok` once subscribed."""

    type: Literal["subscribe"] = "subscribe"
    session: str | None = None


@request
class AnswerApproval(Request):
    type: Literal["approval.answer"] = "approval.answer"
    answer: ClassVar[builtins.type[Reply]] = ApprovalAnswerReply
    approval: str
    allow: bool


@request
class PolicyView(Request):
    """The policy in force for a running session (its watcher's current snapshot)."""

    type: Literal["policy.view"] = "policy.view"
    answer: ClassVar[builtins.type[Reply]] = PolicyReply
    session: str


@request
class DaemonStatus(Request):
    type: Literal["daemon.status"] = "daemon.status"
    answer: ClassVar[builtins.type[Reply]] = DaemonInfo


@request
class Shutdown(Request):
    """Stop the service: running tasks are stopped and every session it owns is removed."""

    type: Literal["daemon.stop"] = "daemon.stop"


# --- events ---------------------------------------------------------------------------------


class Event(Message):
    ref: int = 0  # the request this event belongs to; 0: a subscription's broadcast
    seq: int = 0
    session: str | None = None


EVENTS: dict[str, type[Event]] = {}
E = TypeVar("E", bound=type[Event])


def event(cls: E) -> E:
    EVENTS[_type_of(cls)] = cls
    return cls


@event
class Notice(Event):
    """Something the person should read (progress, the demo-model label, a fault)."""

    type: Literal["notice"] = "notice"
    message: str


@event
class BusEvent(Event):
    """An event from cowork's event bus (the same ones the audit log records)."""

    type: Literal["bus"] = "bus"
    kind: str
    time: float
    fields: dict[str, Any] = Field(default_factory=dict)


@event
class TaskText(Event):
    type: Literal["task.text"] = "task.text"
    text: str


@event
class TaskAction(Event):
    type: Literal["task.action"] = "task.action"
    kind: str  # "run" or "skip"
    description: str
    verdict: str
    reason: str


@event
class ApprovalAsked(Event):
    type: Literal["approval.asked"] = "approval.asked"
    approval: str
    description: str
    reason: str
    timeout_s: float


@event
class ApprovalAnswered(Event):
    type: Literal["approval.answered"] = "approval.answered"
    approval: str
    allow: bool
    by: str  # "face" or "timeout"


@event
class ExecOutput(Event):
    type: Literal["exec.output"] = "exec.output"
    stream: Literal["stdout", "stderr"]
    data: str  # latin-1 text of the raw bytes (every byte value round-trips)


@event
class TaskFinished(Event):
    type: Literal["task.finished"] = "task.finished"
    reason: str


# --- parsing --------------------------------------------------------------------------------

AnyMessage = Request | Reply | Event


def parse(line: bytes, table: dict[str, type[Any]]) -> Any:
    """One message of the kinds in ``table``. Raises :class:`ProtocolError`."""
    if len(line) > MAX_LINE:
        raise ProtocolError("too_long", f"a message longer than {MAX_LINE} bytes was refused")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_line", f"not a JSON message: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_line", "a message must be a JSON object")
    raw_id = obj.get("id")
    ref = raw_id if isinstance(raw_id, int) else 0
    if obj.get("v") != VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {obj.get('v')!r} is not supported (this side speaks {VERSION}); "
            "restart the cowork service after updating cowork",
            ref,
        )
    kind = obj.get("type")
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}", ref)
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(message)'}: {e['msg']}" for e in exc.errors()
        )
        raise ProtocolError("bad_request", f"{kind}: {problems}", ref) from None


def parse_request(line: bytes) -> Request:
    msg: Request = parse(line, REQUESTS)
    return msg


def parse_incoming(line: bytes) -> Reply | Event:
    """A message from the service: a reply or an event."""
    msg: Reply | Event = parse(line, {**REPLIES, **EVENTS})
    return msg
