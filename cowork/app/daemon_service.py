"""The app's :class:`~cowork.app.service.Service` over cowork's per-user service (daemon).

Contract:
- Sessions, events, approvals and stopping go through :class:`cowork.daemon.client.Client`;
  the rest comes from :class:`~cowork.app.local.LocalParts` until the service offers it.
- The app names a task by its own id (``t1``, ``t2``…); the service names the VM. Events are
  translated into :class:`cowork.host.events.Event` with the app's id as ``session``; bus
  events that arrive before the VM's name is known are held and delivered in order once it
  is (a running task is found by its folder).
- A connection that breaks or cannot be made is :class:`ServiceUnavailable`; the next call
  connects again and subscribes again. Nothing here blocks on a task: a task's reply is
  awaited on its own thread.
- Staged changes (review, keep, discard, undo) go through the service's ``changes.*``
  requests, by the VM name of the app's task. A task whose session wrote straight into the
  folder (direct mode) has no staged set: its review says so. Keeping overwrites a file the
  person changed meanwhile only when asked to (else it is reported as not kept, with why);
  undo puts back what this app's last keep of that task wrote, refusing files changed since.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowork.app import text as T
from cowork.app.local import LocalParts
from cowork.app.service import (
    ApplyResult,
    Approval,
    ChangeKind,
    ChangeSet,
    CheckId,
    EventFn,
    FileChange,
    ReadinessCheck,
    ServiceUnavailable,
    SessionInfo,
    SessionState,
)
from cowork.daemon import protocol as p
from cowork.daemon.client import Client, DaemonError, DaemonGone, DaemonUnavailable
from cowork.errors import CoworkError, UsageError
from cowork.host.events import Event, Kind
from cowork.host.secrets import Secrets
from cowork.paths import Paths

UNAVAILABLE = (
    "cowork's background service is not running. Use \u201cStart the service\u201d in Setup; "
    "your folders are not affected."
)
#: Events held per VM name while its task is not known yet.
MAX_HELD = 2000
_SKIPPED_BUS_KINDS = frozenset(
    str(k)
    for k in (
        Kind.APPROVAL_ASKED,
        Kind.APPROVAL_ANSWERED,
        Kind.AGENT_TEXT,
        Kind.ACTION_DECIDED,
        Kind.AGENT_FINISHED,
        # The adapter says how and when a task ended once its request is answered (after
        # the service has closed its VM and kept its changes); the VM's own end, sent while
        # the service closes it, would come first and make a finished task read as stopped.
        Kind.SESSION_ENDED,
    )
)


#: How the library words each tool's action (cowork.host.agent.tools.describe), so the
#: timeline can show the right kind of step for the service's action events.
_TOOL_BY_WORDS = (
    ("Read the file", "read_file"),
    ("List files", "list_files"),
    ("Search for", "grep"),
    ("Write the file", "write_file"),
    ("Change part of the file", "edit_file"),
    ("Run a command", "bash"),
)


def tool_from_description(description: str) -> str:
    for words, tool in _TOOL_BY_WORDS:
        if description.startswith(words):
            return tool
    return "other"


@dataclass
class _Task:
    id: str
    folder: Path
    task: str
    started: float
    state: SessionState = SessionState.STARTING
    last: float = 0.0
    name: str | None = None
    finished: bool = False
    notices: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # streamed text not yet shown


class DaemonService(LocalParts):
    def __init__(
        self,
        paths: Paths,
        secrets: Secrets | None = None,
        *,
        connect: Callable[[], Client] | None = None,
        spawn: Callable[[], object] | None = None,
        **local: Any,
    ) -> None:
        super().__init__(paths, secrets, **local)
        self._connect_fn = connect or (lambda: Client.connect(paths.daemon_socket, timeout=2.0))
        self._spawn = spawn or self._spawn_service
        self._client: Client | None = None
        self._conn_lock = threading.Lock()
        self._lock = threading.RLock()
        self._subs: list[EventFn] = []
        self._tasks: dict[str, _Task] = {}
        self._alias: dict[str, str] = {}
        self._held: dict[str, list[p.Event]] = {}
        self._resolving: set[str] = set()
        self._pending: dict[tuple[str, str], Approval] = {}
        self._ids = itertools.count(1)
        self._records: dict[str, str] = {}  # task id -> its last keep's undo record
        self._modes: dict[str, str] = {}  # VM name -> "staged" or "direct"
        #: The approval mode asked for each task (None: the policy's).
        self.task_mode: str | None = None

    # --- connection ----------------------------------------------------------------------
    def _conn(self) -> Client:
        with self._conn_lock:
            client = self._client
            if client is not None and not client.closed:
                return client
            if client is not None:
                client.close()  # the service went away: free the old socket
                self._client = None
            try:
                client = self._connect_fn()
            except DaemonUnavailable as exc:
                raise ServiceUnavailable(UNAVAILABLE) from exc
            try:
                client.subscribe(None, self._on_wire)
            except (DaemonGone, OSError) as exc:
                client.close()
                raise ServiceUnavailable(UNAVAILABLE) from exc
            self._client = client
            return client

    def _call(self, req: p.Request, timeout: float | None = 30.0) -> Any:
        client = self._conn()
        try:
            return client.call(req, timeout=timeout)
        except DaemonGone as exc:
            with self._conn_lock:
                if self._client is client:
                    self._client = None
                    client.close()
            raise ServiceUnavailable(UNAVAILABLE) from exc

    def close(self) -> None:
        with self._conn_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _spawn_service(self) -> object:
        code = (
            "import json, pathlib, sys; from cowork.daemon.server import serve; "
            "from cowork.paths import Paths; "
            "serve(Paths(**{k: pathlib.Path(v) for k, v in json.loads(sys.argv[1]).items()}))"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code, self.paths_json()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def paths_json(self) -> str:
        import json

        fields = ("config", "data", "state", "cache", "admin", "runtime")
        return json.dumps({f: str(getattr(self.paths, f)) for f in fields})

    # --- readiness -----------------------------------------------------------------------
    def readiness(self) -> list[ReadinessCheck]:
        try:
            self._call(p.DaemonStatus(), timeout=5.0)
            daemon = ReadinessCheck(CheckId.DAEMON, True, "ready")
        except CoworkError as exc:
            daemon = ReadinessCheck(CheckId.DAEMON, False, str(exc))
        return [daemon, *self.local_checks()]

    def start_service(self) -> None:
        try:
            self._call(p.DaemonStatus(), timeout=5.0)
            return
        except ServiceUnavailable:
            pass
        self._spawn()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                self._call(p.DaemonStatus(), timeout=5.0)
                return
            except ServiceUnavailable:
                time.sleep(0.2)
        raise ServiceUnavailable(
            "cowork's background service did not start. Log out and back in, or run "
            "`cowork daemon status` in a terminal for details."
        )

    # --- events --------------------------------------------------------------------------
    def subscribe(self, fn: EventFn) -> Callable[[], None]:
        with self._lock:
            self._subs.append(fn)
        try:
            self._conn()
        except CoworkError:
            with self._lock:
                self._subs.remove(fn)
            raise

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def _deliver(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
            task = self._tasks.get(event.session or "")
            if task is not None:
                task.last = event.time
                if event.kind is Kind.APPROVAL_ASKED:
                    task.state = SessionState.WAITING
                elif event.kind in (Kind.APPROVAL_ANSWERED, Kind.VM_READY, Kind.AGENT_TEXT):
                    task.state = SessionState.WORKING
                elif event.kind is Kind.AGENT_FINISHED:
                    task.finished = True
                    failed = event.fields.get("error")
                    task.state = SessionState.FAILED if failed else SessionState.FINISHED
        for fn in subs:
            fn(event)

    def _on_wire(self, ev: p.Event, task: _Task | None = None) -> None:
        held: list[p.Event] = []
        with self._lock:
            if task is not None and ev.session and task.name is None:
                task.name = ev.session
                self._alias[ev.session] = task.id
                held = self._held.pop(ev.session, [])
            sid = task.id if task is not None else self._alias.get(ev.session or "")
            if sid is None:
                if ev.session and not isinstance(ev, p.Notice):
                    queue = self._held.setdefault(ev.session, [])
                    if len(queue) < MAX_HELD:
                        queue.append(ev)
                    self._resolve_later(ev.session)
                return
        for old in held:
            self._translate(old, sid)
        self._translate(ev, sid)

    def _resolve_later(self, name: str) -> None:
        if name in self._resolving:
            return
        self._resolving.add(name)
        threading.Thread(
            target=self._resolve, args=(name,), name="cowork-app-resolve", daemon=True
        ).start()

    def _resolve(self, name: str) -> None:
        """Find which of our tasks runs in VM ``name`` (by its folder), then deliver what
        was held for it. Retries while the VM is still booting."""
        try:
            for _ in range(600):
                try:
                    sessions = self._call(p.ListSessions(), timeout=10.0).sessions
                except CoworkError:
                    return
                workspace = next((s.workspace for s in sessions if s.name == name), None)
                if workspace is not None:
                    with self._lock:
                        task = next(
                            (t for t in self._tasks.values()
                             if str(t.folder) == workspace and t.name is None and not t.finished),
                            None,
                        )  # fmt: skip
                        if task is None:
                            self._held.pop(name, None)
                            return
                        task.name = name
                        self._alias[name] = task.id
                        held = self._held.pop(name, [])
                    for ev in held:
                        self._translate(ev, task.id)
                    return
                time.sleep(0.5)
        finally:
            with self._lock:
                self._resolving.discard(name)

    def _flush_text(self, sid: str) -> None:
        with self._lock:
            task = self._tasks.get(sid)
            if task is None or not task.text:
                return
            text, task.text = "".join(task.text).strip(), []
        if text:
            self._deliver(Event(Kind.AGENT_TEXT, {"text": text}, sid))

    def _translate(self, ev: p.Event, sid: str) -> None:
        if isinstance(ev, p.TaskText):
            with self._lock:
                task = self._tasks.get(sid)
                if task is not None:
                    task.text.append(ev.text)
            return
        if not isinstance(ev, p.Notice | p.BusEvent):
            self._flush_text(sid)
        if isinstance(ev, p.TaskAction):
            verdict = "refuse" if ev.kind != "run" else ev.verdict
            fields = {
                "tool": tool_from_description(ev.description),
                "action": ev.description,
                "verdict": verdict,
                "reason": ev.reason,
            }
            self._deliver(Event(Kind.ACTION_DECIDED, fields, sid))
        elif isinstance(ev, p.BusEvent):
            if ev.kind in _SKIPPED_BUS_KINDS:
                return  # these come as the service's own events, with the ids to answer
            try:
                kind = Kind(ev.kind)
            except ValueError:
                return  # a kind this app does not know yet
            self._deliver(Event(kind, dict(ev.fields), sid, ev.time))
        elif isinstance(ev, p.ApprovalAsked):
            approval = Approval(
                sid, ev.approval, ev.description, ev.reason, time.time(), ev.timeout_s
            )
            with self._lock:
                self._pending[approval.key] = approval
            asked: dict[str, Any] = {
                "call_id": ev.approval,
                "action": ev.description,
                "reason": ev.reason,
                "timeout": ev.timeout_s,
            }
            self._deliver(Event(Kind.APPROVAL_ASKED, asked, sid, approval.asked_at))
        elif isinstance(ev, p.ApprovalAnswered):
            with self._lock:
                self._pending.pop((sid, ev.approval), None)
            answered = {"call_id": ev.approval, "approved": ev.allow, "by": ev.by}
            self._deliver(Event(Kind.APPROVAL_ANSWERED, answered, sid))
        elif isinstance(ev, p.Notice):
            with self._lock:
                task = self._tasks.get(sid)
                if task is not None:
                    task.notices = [*task.notices[-9:], ev.message]

    # --- tasks ---------------------------------------------------------------------------
    def start_task(self, folder: Path, task: str) -> str:
        client = self._conn()
        t = _Task(f"t{next(self._ids)}", folder, task, time.time())
        t.last = t.started
        with self._lock:
            self._tasks[t.id] = t
        req = p.RunTask(workspace=str(folder), task=task, demo=self.demo, mode=self.task_mode)
        try:
            rid = client.send(req, on_event=lambda ev: self._on_wire(ev, t))
        except DaemonGone as exc:
            with self._lock:
                self._tasks.pop(t.id, None)
            raise ServiceUnavailable(UNAVAILABLE) from exc
        self._deliver(Event(Kind.SESSION_STARTED, {"workspace": str(folder)}, t.id, t.started))
        threading.Thread(
            target=self._await_task, args=(client, rid, t), name="cowork-app-task", daemon=True
        ).start()
        return t.id

    def _await_task(self, client: Client, rid: int, t: _Task) -> None:
        error = ""
        reason = ""
        try:
            result = client.wait(rid)
            error = getattr(result, "error", "") or ""
            reason = getattr(result, "reason", "") or ""
        except DaemonGone:
            error = (
                "cowork's background service stopped while the task was running; what was "
                "running in the sealed machine was cut short. Your folder is as the task left it."
            )
        except DaemonError as exc:
            error = str(exc)
        self._flush_text(t.id)
        if reason == "error" and not error:
            error = t.notices[-1] if t.notices else "the task could not continue"
        if not t.finished and (error or reason not in ("interrupted", "")):
            self._deliver(Event(Kind.AGENT_FINISHED, {"error": error or None}, t.id))
        with self._lock:
            if t.state not in (SessionState.FINISHED, SessionState.FAILED):
                t.state = SessionState.STOPPED
            for key in [k for k in self._pending if k[0] == t.id]:
                self._pending.pop(key)
        self._deliver(Event(Kind.SESSION_ENDED, {}, t.id))

    def answer_approval(self, session: str, call_id: str, allow: bool) -> None:
        self._call(p.AnswerApproval(approval=call_id, allow=allow))

    def stop_task(self, session: str) -> str:
        with self._lock:
            t = self._tasks.get(session)
        name = t.name if t is not None else session
        if t is not None and name is None:
            sessions = self._call(p.ListSessions()).sessions
            name = next((s.name for s in sessions if s.workspace == str(t.folder)), None)
            if name is None:
                raise UsageError(
                    "the task is still starting its sealed machine; try Stop again in a moment"
                )
        assert name is not None
        mode = self._mode_of(name)
        self._call(p.StopTask(session=name))
        if t is not None:
            with self._lock:
                t.state = SessionState.STOPPED
        return mode

    def _mode_of(self, name: str) -> str:
        try:
            info = self._call(p.VmStatus(name=name), timeout=10.0).session
        except DaemonError:
            return "direct"  # not known: say the cautious thing (files may have changed)
        return str(info.changes)

    def sessions(self) -> list[SessionInfo]:
        running = self._call(p.ListSessions(), timeout=10.0).sessions
        with self._lock:
            ours = {t.name for t in self._tasks.values() if t.name}
            out = [
                SessionInfo(t.id, t.folder, t.task, t.state, t.started, t.last)
                for t in self._tasks.values()
            ]
        for s in running:  # tasks other faces (the CLI) run
            if s.name not in ours and s.busy:
                now = time.time()
                out.append(
                    SessionInfo(s.name, Path(s.workspace), "", SessionState.WORKING, now, now)
                )
        return out

    def pending_approvals(self) -> list[Approval]:
        self._conn()
        with self._lock:
            return sorted(self._pending.values(), key=lambda a: a.asked_at)

    # --- staged changes -------------------------------------------------------------------
    def _vm_name(self, session: str) -> str:
        with self._lock:
            t = self._tasks.get(session)
        if t is None:
            return session  # a task another face ran: the service's own name
        if t.name is None:
            raise UsageError(T.REVIEW_NOT_STARTED)
        return t.name

    def _changes_call(self, fn: Callable[[Client], Any]) -> Any:
        client = self._conn()
        try:
            return fn(client)
        except DaemonGone as exc:
            with self._conn_lock:
                if self._client is client:
                    self._client = None
                    client.close()
            raise ServiceUnavailable(UNAVAILABLE) from exc

    def change_set(self, session: str) -> ChangeSet:
        name = self._vm_name(session)
        try:
            _info, entries = self._changes_call(lambda c: c.show_changes(name))
        except DaemonError as exc:
            if exc.code == "not_found":  # a staged session always has a set
                raise UsageError(T.REVIEW_DIRECT) from None
            raise
        return ChangeSet(session, tuple(_file_change(e) for e in entries))

    def apply_changes(
        self, session: str, paths: Sequence[str], overwrite: bool = False
    ) -> ApplyResult:
        name = self._vm_name(session)
        req = p.ApplyChanges(session=name, paths=list(paths), overwrite=overwrite)
        result: p.ChangesApplied = self._changes_call(lambda c: c.call(req, timeout=600.0))
        if result.record:
            with self._lock:
                self._records[session] = result.record
        failed = [(c.path, T.CONFLICT_NOT_KEPT) for c in result.conflicts]
        failed += [(r.path, r.reason) for r in result.refused]
        return ApplyResult(
            kept=tuple(result.applied),
            failed=tuple(failed),
            conflicts=tuple(c.path for c in result.conflicts),
        )

    def discard_changes(self, session: str) -> None:
        name = self._vm_name(session)
        self._changes_call(lambda c: c.call(p.DiscardChanges(session=name), timeout=60.0))

    def undo_last(self, session: str) -> ApplyResult:
        with self._lock:
            record = self._records.get(session)
        if record is None:
            raise UsageError(T.NOTHING_TO_UNDO)
        req = p.UndoChanges(record=record)
        result: p.ChangesUndone = self._changes_call(lambda c: c.call(req, timeout=600.0))
        with self._lock:
            if self._records.get(session) == record:
                del self._records[session]
        return ApplyResult(
            kept=tuple(result.restored),
            failed=tuple((r.path, r.reason) for r in result.refused),
        )


_KINDS = {"added": ChangeKind.ADDED, "deleted": ChangeKind.DELETED}


def _file_change(e: p.ChangeEntry) -> FileChange:
    """The service's entry as the review shows it: edits, renames and permission changes
    are all "edited"; the library's description says which."""
    renamed = T.RENAMED_FROM.format(path=e.renamed_from) if e.renamed_from else ""
    if e.is_diff:
        note = renamed  # the diff says the rest
    else:
        note = " — ".join(x for x in (renamed, e.preview or e.description) if x)
    return FileChange(
        path=e.path,
        kind=_KINDS.get(e.kind, ChangeKind.EDITED),
        size_before=e.old_size or 0,
        size_after=0 if e.kind == "deleted" else e.size,
        diff=e.preview if e.is_diff else None,
        note=note,
        conflict=e.conflict,
    )
