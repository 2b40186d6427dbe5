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


class MountInfo(BaseModel):
    """One folder the VM sees: where in the guest, whether read-only, and from where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    readonly: bool
    source: str


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
    changes: str = "direct"  # "staged": the folder is read-only to it until changes are kept
    start_mode: str = "cold"  # "cold" boot, "restore" of a template, or taken from the "pool"
    agent_ids: str = ""  # "uid:gid" the agent runs as in the guest
    mounts: list[MountInfo] = Field(default_factory=list)


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


class PoolInfo(BaseModel):
    """One warm pool: guests waiting for the next session in one folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace: str
    changes: str  # "direct" or "staged"
    size: int  # guests it holds when full
    waiting: int
    guests: list[str] = Field(default_factory=list)  # names of the waiting VMs
    failures: int = 0  # fills that failed in a row
    retry_in_s: float = 0.0  # when the next fill may start (backing off)
    last_error: str = ""


@reply
class DaemonInfo(Reply):
    type: Literal["daemon.info"] = "daemon.info"
    pid: int
    uptime_s: float
    rss_kib: int
    sessions: list[SessionInfo] = Field(default_factory=list)
    pool_size: int = 0  # vm.pool_size from admin policy and user settings (0: off)
    pools: list[PoolInfo] = Field(default_factory=list)


class ChangeEntry(BaseModel):
    """One change of a staged set, as a person reviews it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    kind: str  # added, modified, deleted, mode, renamed
    type: str  # file, dir, symlink
    size: int = 0
    old_size: int | None = None
    renamed_from: str | None = None
    description: str = ""
    conflict: str | None = None  # why the folder's copy changed since the session started
    preview: str = ""  # a unified diff for a text file, else a short description
    is_diff: bool = False  # ``preview`` is a diff


class ChangeRefusal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    reason: str


class ChangeSetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str
    workspace: str
    state: str  # pending, applied, discarded
    created_at: float
    summary: str  # "edited 3 files, added 2" (of what is still pending)
    pending: int = 0
    applied: list[str] = Field(default_factory=list)
    refused: list[ChangeRefusal] = Field(default_factory=list)


@reply
class ChangeSets(Reply):
    type: Literal["changes.sets"] = "changes.sets"
    sets: list[ChangeSetInfo] = Field(default_factory=list)
    undo: list[str] = Field(default_factory=list)  # applies that can be undone, latest last


@reply
class ChangeSetReply(Reply):
    """A page of a set's pending changes: ask again from ``next_offset`` until it is None."""

    type: Literal["changes.set"] = "changes.set"
    set: ChangeSetInfo
    entries: list[ChangeEntry] = Field(default_factory=list)
    total: int = 0
    next_offset: int | None = None


@reply
class ChangesApplied(Reply):
    type: Literal["changes.applied"] = "changes.applied"
    record: str  # the undo record ("" when nothing was written)
    applied: list[str] = Field(default_factory=list)
    conflicts: list[ChangeEntry] = Field(default_factory=list)  # left alone (not overwritten)
    refused: list[ChangeRefusal] = Field(default_factory=list)


@reply
class ChangesUndone(Reply):
    type: Literal["changes.undone"] = "changes.undone"
    record: str
    restored: list[str] = Field(default_factory=list)
    refused: list[ChangeRefusal] = Field(default_factory=list)  # changed since: not restored


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
class Shell(Request):
    """An interactive program (default: a login shell) on a terminal in the workspace's
    session. Output arrives as :class:`ExecOutput` events; input and window sizes are sent
    with :class:`PtyInput` and :class:`PtyResize` naming this request's id."""

    type: Literal["shell"] = "shell"
    answer: ClassVar[builtins.type[Reply]] = ExecResult
    workspace: str
    term: str = "xterm-256color"
    cols: int = 80
    rows: int = 24
    keep: bool = False


@request
class PtyInput(Request):
    type: Literal["pty.input"] = "pty.input"
    shell: int  # the id of the Shell request on this connection
    data: str = ""  # latin-1 text of the raw bytes
    eof: bool = False


@request
class PtyResize(Request):
    type: Literal["pty.resize"] = "pty.resize"
    shell: int
    cols: int
    rows: int


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


@request
class ListChanges(Request):
    """Staged change sets (of one session, or all with ``session`` None) and the applies
    that can be undone."""

    type: Literal["changes.list"] = "changes.list"
    answer: ClassVar[builtins.type[Reply]] = ChangeSets
    session: str | None = None
    pending_only: bool = False


@request
class ShowChanges(Request):
    """The pending changes of a session's set, with a preview of each (paged)."""

    type: Literal["changes.show"] = "changes.show"
    answer: ClassVar[builtins.type[Reply]] = ChangeSetReply
    session: str
    offset: int = Field(default=0, ge=0)
    previews: bool = True


@request
class ApplyChanges(Request):
    """Keep changes in the folder: all pending ones, or the listed ``paths``. A file changed
    in the folder since the session started is left alone unless ``overwrite``."""

    type: Literal["changes.apply"] = "changes.apply"
    answer: ClassVar[builtins.type[Reply]] = ChangesApplied
    session: str
    paths: list[str] | None = None
    overwrite: bool = False


@request
class DiscardChanges(Request):
    """Forget a session's staged changes; the folder is not touched."""

    type: Literal["changes.discard"] = "changes.discard"
    session: str


@request
class UndoChanges(Request):
    """Put back what an apply replaced or removed (default: the latest apply)."""

    type: Literal["changes.undo"] = "changes.undo"
    answer: ClassVar[builtins.type[Reply]] = ChangesUndone
    record: str | None = None


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
