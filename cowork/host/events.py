"""One typed event stream for every part of cowork, and the append-only audit log.

Contract:
- Every part emits :class:`Event` values into an :class:`EventBus`. The audit log, the CLI's
  ``tail`` and the app's activity view all read the same events.
- Events MUST NOT carry secret values: credentials, tokens, private keys. Emitters pass
  identifiers (credential id, grant id) instead.
- The audit log is JSON lines; each line carries ``prev`` (the previous line's ``hash``) and
  ``hash`` = sha256 of the canonical JSON of the line without ``hash``. :func:`verify_log`
  detects an edited, removed or reordered line.
- A subscriber that raises is logged and dropped from that delivery; it never stops the
  emitter (the emitter's security decision has already been made).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class Kind(enum.StrEnum):
    """Every kind of event cowork emits."""

    VM_CREATING = "vm.creating"
    VM_STARTED = "vm.started"
    VM_READY = "vm.ready"
    VM_STOPPED = "vm.stopped"
    VM_WARNING = "vm.warning"
    IMAGE_BUILD = "image.build"
    COMMAND_STARTED = "command.started"
    COMMAND_FINISHED = "command.finished"
    FILE_CHANGED = "file.changed"
    EGRESS_ALLOWED = "egress.allowed"
    EGRESS_DENIED = "egress.denied"
    POLICY_LOADED = "policy.loaded"
    POLICY_RELOADED = "policy.reloaded"
    POLICY_REJECTED = "policy.rejected"
    TRUST_GRANTED = "trust.granted"
    TRUST_REVOKED = "trust.revoked"
    TRUST_LAPSED = "trust.lapsed"
    APPROVAL_ASKED = "approval.asked"
    APPROVAL_ANSWERED = "approval.answered"
    ACTION_DECIDED = "action.decided"
    AGENT_TEXT = "agent.text"
    AGENT_STARTED = "agent.started"
    AGENT_FINISHED = "agent.finished"
    TOOL_FINISHED = "tool.finished"
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    POLICY_IGNORED = "policy.ignored"
    EXCEPTION_REQUESTED = "exception.requested"
    EXPORT_DROPPED = "export.dropped"
    GUEST_PROCESS = "guest.process"
    GUEST_FILE = "guest.file"
    GUEST_SOCKET = "guest.socket"
    MONITOR_LOST = "monitor.lost"
    VM_WARM = "vm.warm"  # warm start: template built, restored, or fell back to cold boot
    EGRESS_SELFTEST = "egress.selftest"
    CONTENT_NEUTRALISED = "content.neutralised"
    SESSION_MARKED = "session.marked"
    EGRESS_HELD = "egress.held"


@dataclass(frozen=True)
class Event:
    kind: Kind
    fields: Mapping[str, Any] = field(default_factory=dict)
    session: str | None = None
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 6),
            "kind": str(self.kind),
            "session": self.session,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        return cls(
            kind=Kind(obj["kind"]),
            fields=dict(obj.get("fields") or {}),
            session=obj.get("session"),
            time=float(obj["time"]),
        )


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of events to subscribers; thread-safe."""

    def __init__(self, session: str | None = None) -> None:
        self._session = session
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def emit(self, kind: Kind, session: str | None = None, **fields: Any) -> Event:
        event = Event(kind=kind, fields=fields, session=session or self._session)
        self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except Exception:
                log.exception("event subscriber failed on %s", event.kind)


class Recorder:
    """A subscriber that keeps events in memory (tests, the CLI's summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: Kind) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


def _line_hash(obj: Mapping[str, Any]) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Append-only JSON-lines audit log with a hash chain. Use as a bus subscriber.

    Each line also carries ``seq``, its 1-based line number: the id ``cowork why`` and
    ``cowork audit verify`` use. Appends take an exclusive ``flock`` and read the chain head
    from the file's last line, so several cowork processes can share one log. Listeners
    (:meth:`add_listener`) receive each written line (with ``seq`` and ``hash``) in order;
    when ``anchors`` is given, each ``session.ended`` line is also recorded there as an
    anchor (see :mod:`cowork.host.audit`).
    """

    def __init__(self, path: Path, anchors: Path | None = None) -> None:
        self.path = path
        self.anchors = anchors
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, Any]], object]] = []

    def add_listener(self, fn: Callable[[dict[str, Any]], object]) -> None:
        with self._lock:
            self._listeners.append(fn)

    def __call__(self, event: Event) -> None:
        self.append(event)

    def append(self, event: Event) -> dict[str, Any]:
        """Write ``event`` as the next line; returns the line as written.

        Anchors and listeners run while the file lock is held, so they see lines in log
        order; a listener must not append to this log itself.
        """
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                last = _last_line(fd)
                obj = event.to_json()
                obj["prev"] = str(last.get("hash", GENESIS)) if last else GENESIS
                obj["seq"] = int(last.get("seq", 0)) + 1 if last else 1
                obj["hash"] = _line_hash(obj)
                line = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str) + "\n"
                os.write(fd, line.encode())
                if self.anchors is not None and event.kind == Kind.SESSION_ENDED:
                    from cowork.host.audit import write_anchor

                    write_anchor(self.anchors, self.path, obj)
                for fn in self._listeners:
                    try:
                        fn(obj)
                    except Exception:
                        log.exception("audit log listener failed")
            finally:
                os.close(fd)
        return obj


def _last_line(fd: int) -> dict[str, Any] | None:
    """The last JSON line of the open file ``fd`` (read backwards from the end)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    chunk = b""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        chunk = os.pread(fd, step, pos) + chunk
        stripped = chunk.rstrip(b"\n")
        if b"\n" in stripped or pos == 0:
            raw = stripped.rsplit(b"\n", 1)[-1]
            if not raw.strip():
                return None
            try:
                obj = json.loads(raw)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            raw = raw.strip()
            if raw:
                obj = json.loads(raw)
                if isinstance(obj, dict):
                    yield obj


def read_log(path: Path) -> list[Event]:
    """Every event in an audit log, oldest first."""
    if not path.exists():
        return []
    return [Event.from_json(obj) for obj in _read_lines(path)]


def verify_log(path: Path) -> list[str]:
    """Problems with the hash chain of ``path``; an empty list means intact."""
    problems: list[str] = []
    prev = GENESIS
    if not path.exists():
        return problems
    for n, obj in enumerate(_read_lines(path), start=1):
        claimed = obj.pop("hash", None)
        if obj.get("prev") != prev:
            problems.append(f"{path}: line {n} does not follow line {n - 1}")
        if claimed != _line_hash(obj):
            problems.append(f"{path}: line {n} was modified")
        prev = str(claimed)
    return problems
