"""What the desktop app needs from cowork, as one typed seam.

Contract:
- :class:`Service` lists every call the app makes; the app never reaches past it. The daemon
  client adapter and :class:`FakeService` (fast tests) both satisfy it.
- Refusals and warnings are data (:class:`FolderReport`), not exceptions; an unreachable
  daemon is :class:`ServiceUnavailable`, a key the model API refuses is :class:`KeyRejected`.
  Every error's ``str()`` is a sentence for a person.
- Event callbacks may arrive on any thread; the app marshals them onto its own.
- Nothing here imports Qt.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from cowork.errors import CoworkError, UsageError
from cowork.host.events import Event, Kind


class ServiceUnavailable(CoworkError):
    """The cowork background service cannot be reached (not running, or it stopped)."""


class KeyRejected(UsageError):
    """The model API refused the key; nothing was stored."""


class CheckId(enum.StrEnum):
    DAEMON = "daemon"
    LIBVIRT = "libvirt"
    IMAGE = "image"
    MODEL_KEY = "model_key"


@dataclass(frozen=True)
class ReadinessCheck:
    id: CheckId
    ok: bool
    detail: str  # one sentence: what was found, and on failure what the fix does


@dataclass(frozen=True)
class BuildProgress:
    step: str
    step_number: int
    steps: int
    percent: float  # 0..100 over the whole build
    elapsed: float  # seconds
    remaining: float | None  # seconds, None while unknown


class WarningKind(enum.StrEnum):
    SECRETS = "secrets"
    LARGE = "large"
    CLOUD = "cloud"
    NETWORK = "network"
    BROAD = "broad"


@dataclass(frozen=True)
class FolderWarning:
    kind: WarningKind
    files: tuple[str, ...] = ()  # relative paths, for SECRETS


@dataclass(frozen=True)
class FolderReport:
    given: Path
    real_path: Path | None
    refusal: str | None  # why not, and what to do; None when the folder may be used
    warnings: tuple[FolderWarning, ...] = ()
    size_bytes: int = 0
    file_count: int = 0
    counted_all: bool = True  # False when counting stopped at the limit
    has_config: bool = False

    @property
    def usable(self) -> bool:
        return self.refusal is None


class TrustState(enum.StrEnum):
    NO_CONFIG = "no-config"
    UNTRUSTED = "untrusted"
    TRUSTED = "trusted"
    LAPSED = "lapsed"


@dataclass(frozen=True)
class TrustItem:
    file: str
    kind: str  # hook, mcp-server, env, permissions, base-url, command, setting
    text: str


@dataclass(frozen=True)
class TrustInfo:
    folder: Path
    state: TrustState
    items: tuple[TrustItem, ...] = ()
    problems: tuple[str, ...] = ()


class SessionState(enum.StrEnum):
    STARTING = "starting"
    WORKING = "working"
    WAITING = "waiting"
    STALLED = "stalled"
    FAILED = "failed"
    FINISHED = "finished"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SessionInfo:
    id: str
    folder: Path
    task: str
    state: SessionState
    started_at: float
    last_activity: float


@dataclass(frozen=True)
class Approval:
    session: str
    call_id: str
    action: str  # the whole action in plain words
    reason: str  # why cowork asks
    asked_at: float
    timeout: float = 300.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.session, self.call_id)


class ChangeKind(enum.StrEnum):
    EDITED = "edited"
    ADDED = "added"
    DELETED = "deleted"


@dataclass(frozen=True)
class FileChange:
    path: str
    kind: ChangeKind
    before: str | None = None  # text, None when absent or not text
    after: str | None = None
    size_before: int = 0
    size_after: int = 0
    diff: str | None = None  # a unified diff (text files), when before/after are not sent
    note: str = ""  # a short description for a person (not text, a rename, permissions)
    conflict: str | None = None  # why the folder's copy changed since the task started


@dataclass(frozen=True)
class ChangeSet:
    session: str
    files: tuple[FileChange, ...]


@dataclass(frozen=True)
class ApplyResult:
    kept: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = ()  # (path, why)
    conflicts: tuple[str, ...] = ()  # of ``failed``: changed in the folder meanwhile


@dataclass(frozen=True)
class PolicyRow:
    key: str
    value: str
    layer: str  # default, admin, user, workspace, floor
    locked: bool


@dataclass(frozen=True)
class EffectivePolicy:
    rows: tuple[PolicyRow, ...]
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


ProgressFn = Callable[[BuildProgress], None]
EventFn = Callable[[Event], None]


class Service(Protocol):
    """Everything the app asks of cowork."""

    # readiness
    def readiness(self) -> list[ReadinessCheck]: ...
    def start_service(self) -> None: ...
    def build_image(self, on_progress: ProgressFn) -> None: ...
    def set_api_key(self, key: str) -> None: ...
    def use_demo_model(self) -> None: ...
    # folders and trust
    def check_folder(self, folder: Path) -> FolderReport: ...
    def trust_info(self, folder: Path) -> TrustInfo: ...
    def trust(self, folder: Path) -> None: ...
    def untrust(self, folder: Path) -> None: ...
    def trusted_folders(self) -> list[Path]: ...
    # tasks
    def start_task(self, folder: Path, task: str) -> str: ...
    def subscribe(self, fn: EventFn) -> Callable[[], None]: ...
    def answer_approval(self, session: str, call_id: str, allow: bool) -> None: ...
    def stop_task(self, session: str) -> str: ...
    def sessions(self) -> list[SessionInfo]: ...
    def pending_approvals(self) -> list[Approval]: ...
    # staged changes
    def change_set(self, session: str) -> ChangeSet: ...
    def apply_changes(
        self, session: str, paths: Sequence[str], overwrite: bool = False
    ) -> ApplyResult: ...
    def discard_changes(self, session: str) -> None: ...
    def undo_last(self, session: str) -> ApplyResult: ...
    # policy and settings
    def effective_policy(self, folder: Path | None = None) -> EffectivePolicy: ...
    def set_user_setting(self, key: str, value: str) -> None: ...


# --- a fake for fast tests ---------------------------------------------------------------


@dataclass
class _FakeSession:
    info: SessionInfo
    changes: ChangeSet
    applied: list[str] = field(default_factory=list)


class FakeService:
    """An in-memory :class:`Service`. Tests script it: ``fail_*`` flags, ``emit()``,
    ``set_alive()``. Folder checks use the real library check (:mod:`cowork.app.folders`)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.alive = True
        self.checks = {
            CheckId.DAEMON: True,
            CheckId.LIBVIRT: True,
            CheckId.IMAGE: True,
            CheckId.MODEL_KEY: False,
        }
        self.stored_key: str | None = None
        self.demo = False
        self.reject_keys: set[str] = set()
        self.trusted: set[Path] = set()
        self.trust_items: dict[Path, tuple[TrustItem, ...]] = {}
        self.answers: list[tuple[str, str, bool]] = []
        self.started: list[tuple[Path, str]] = []
        self.stopped: list[str] = []
        self.discarded: list[str] = []
        self.settings: dict[str, str] = {}
        self.policy = EffectivePolicy(
            rows=(
                PolicyRow("vm.memory_mb", "2048", "default", False),
                PolicyRow("agent.model", '"claude-sonnet-4-5"', "user", False),
                PolicyRow("egress.allow_web", "false", "admin", True),
            )
        )
        self.next_changes: tuple[FileChange, ...] = ()
        self.build_steps = ("Download packages", "Install the system", "Seal the image")
        self._sessions: dict[str, _FakeSession] = {}
        self._pending: dict[tuple[str, str], Approval] = {}
        self._subs: list[EventFn] = []
        self._lock = threading.Lock()
        self._n = 0

    # scripting helpers
    def set_alive(self, alive: bool) -> None:
        self.alive = alive
        self.checks[CheckId.DAEMON] = alive

    def _need(self) -> None:
        if not self.alive:
            raise ServiceUnavailable(
                "cowork's background service is not running. It restarts by itself; "
                "if it does not, log out and back in."
            )

    def emit(self, kind: Kind, session: str | None = None, **fields: object) -> Event:
        event = Event(kind=kind, fields=fields, session=session, time=self.clock())
        if session in self._sessions:
            s = self._sessions[session]
            state = s.info.state
            if kind is Kind.APPROVAL_ASKED:
                state = SessionState.WAITING
                approval = Approval(
                    session=session,
                    call_id=str(fields.get("call_id")),
                    action=str(fields.get("action", "")),
                    reason=str(fields.get("reason", "")),
                    asked_at=event.time,
                )
                self._pending[approval.key] = approval
            elif kind is Kind.APPROVAL_ANSWERED:
                self._pending.pop((session, str(fields.get("call_id"))), None)
                state = SessionState.WORKING
            elif kind is Kind.AGENT_FINISHED:
                state = SessionState.FAILED if fields.get("error") else SessionState.FINISHED
            elif kind is Kind.SESSION_ENDED and state not in (
                SessionState.FINISHED,
                SessionState.FAILED,
            ):
                state = SessionState.STOPPED
            elif state is SessionState.STARTING and kind is Kind.VM_READY:
                state = SessionState.WORKING
            s.info = replace(s.info, state=state, last_activity=event.time)
        for fn in list(self._subs):
            fn(event)
        return event

    # Service
    def readiness(self) -> list[ReadinessCheck]:
        out = []
        for cid, ok in self.checks.items():
            if cid is CheckId.DAEMON:
                ok = self.alive
            out.append(ReadinessCheck(cid, ok, "ready" if ok else "not ready"))
        return out

    def start_service(self) -> None:
        self.set_alive(True)

    def build_image(self, on_progress: ProgressFn) -> None:
        self._need()
        n = len(self.build_steps)
        for i, step in enumerate(self.build_steps, 1):
            on_progress(BuildProgress(step, i, n, 100.0 * (i - 1) / n, float(i), float(n - i + 1)))
        on_progress(BuildProgress("Done", n, n, 100.0, float(n), 0.0))
        self.checks[CheckId.IMAGE] = True

    def set_api_key(self, key: str) -> None:
        self._need()
        if key in self.reject_keys:
            raise KeyRejected(
                "The model service refused this key (401 unauthorised). Check that you copied "
                "the whole key, or create a new one; your previous setup is unchanged."
            )
        self.stored_key = key
        self.checks[CheckId.MODEL_KEY] = True

    def use_demo_model(self) -> None:
        self._need()
        self.demo = True
        self.checks[CheckId.MODEL_KEY] = True

    def check_folder(self, folder: Path) -> FolderReport:
        from cowork.app.folders import check_folder

        return check_folder(folder)

    def trust_info(self, folder: Path) -> TrustInfo:
        real = folder.resolve()
        items = self.trust_items.get(real, ())
        if not items:
            return TrustInfo(real, TrustState.NO_CONFIG)
        state = TrustState.TRUSTED if real in self.trusted else TrustState.UNTRUSTED
        return TrustInfo(real, state, items)

    def trust(self, folder: Path) -> None:
        self.trusted.add(folder.resolve())

    def untrust(self, folder: Path) -> None:
        self.trusted.discard(folder.resolve())

    def trusted_folders(self) -> list[Path]:
        return sorted(self.trusted)

    def start_task(self, folder: Path, task: str) -> str:
        self._need()
        with self._lock:
            self._n += 1
            sid = f"s{self._n}"
        now = self.clock()
        info = SessionInfo(sid, folder, task, SessionState.STARTING, now, now)
        self._sessions[sid] = _FakeSession(info, ChangeSet(sid, self.next_changes))
        self.started.append((folder, task))
        self.emit(Kind.SESSION_STARTED, sid, workspace=str(folder))
        return sid

    def subscribe(self, fn: EventFn) -> Callable[[], None]:
        self._subs.append(fn)

        def unsubscribe() -> None:
            if fn in self._subs:
                self._subs.remove(fn)

        return unsubscribe

    def answer_approval(self, session: str, call_id: str, allow: bool) -> None:
        self._need()
        self.answers.append((session, call_id, allow))
        self.emit(Kind.APPROVAL_ANSWERED, session, call_id=call_id, approved=allow)

    def stop_task(self, session: str) -> str:
        self._need()
        self.stopped.append(session)
        for key in [k for k in self._pending if k[0] == session]:
            self._pending.pop(key)
        self.emit(Kind.SESSION_ENDED, session)
        return "staged"

    def sessions(self) -> list[SessionInfo]:
        self._need()
        return [s.info for s in self._sessions.values()]

    def pending_approvals(self) -> list[Approval]:
        self._need()
        return sorted(self._pending.values(), key=lambda a: a.asked_at)

    def change_set(self, session: str) -> ChangeSet:
        self._need()
        s = self._sessions[session]
        return ChangeSet(session, tuple(f for f in s.changes.files if f.path not in s.applied))

    def apply_changes(
        self, session: str, paths: Sequence[str], overwrite: bool = False
    ) -> ApplyResult:
        self._need()
        s = self._sessions[session]
        by = {f.path: f for f in s.changes.files}
        clash = tuple(p for p in paths if p in by and by[p].conflict and not overwrite)
        kept = [p for p in paths if p not in clash]
        s.applied = [*s.applied, *kept]
        return ApplyResult(
            kept=tuple(kept),
            failed=tuple((p, "changed in the folder meanwhile") for p in clash),
            conflicts=clash,
        )

    def discard_changes(self, session: str) -> None:
        self._need()
        self.discarded.append(session)
        s = self._sessions[session]
        s.changes = ChangeSet(session, ())

    def undo_last(self, session: str) -> ApplyResult:
        self._need()
        s = self._sessions[session]
        undone, s.applied = tuple(s.applied), []
        return ApplyResult(kept=undone)

    def effective_policy(self, folder: Path | None = None) -> EffectivePolicy:
        self._need()
        rows = tuple(
            replace(r, value=self.settings[r.key], layer="user")
            if r.key in self.settings and not r.locked
            else r
            for r in self.policy.rows
        )
        return replace(self.policy, rows=rows)

    def set_user_setting(self, key: str, value: str) -> None:
        self._need()
        for r in self.policy.rows:
            if r.key == key and r.locked:
                raise UsageError(f"{key} is set by your organisation and cannot be changed.")
        self.settings[key] = value
