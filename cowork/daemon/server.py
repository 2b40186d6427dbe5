"""coworkd: one service per user that owns sessions and runs tasks for every face.

Contract:
- Listens on ``Paths.daemon_socket`` (mode 0600, in a 0700 runtime folder). Every connection's
  peer uid is read with SO_PEERCRED; another uid gets an ``error``/``refused`` reply and is
  closed. One service per user: it holds an exclusive lock on ``Paths.daemon_lock``.
- Owns sessions for their whole life, each with its gateway and policy watcher (a ``vm up``
  session keeps both until ``vm down``). Runs tasks through :mod:`cowork.host.tasks`; holds
  each approval until a face answers (first answer wins, the others see it answered) or the
  timeout says no.
- Records every session it boots under ``Paths.daemon_records`` before the VM is defined. On
  start, a record left by an earlier run means that run died: its VM is destroyed and its
  disks deleted (never the workspace). The gateway's CA and proxy token live only in the
  memory of the run that booted a VM, so a VM cannot be re-adopted with a working way out:
  removing it is the fail-closed choice.
- A fault in one session (its VM died, its disk filled up) ends that session's request with a
  plain message and removes the session; the service keeps serving the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowork.daemon import protocol as p
from cowork.errors import CoworkError, UsageError
from cowork.host.events import AuditLog, Event, EventBus, Kind
from cowork.paths import Paths

log = logging.getLogger(__name__)

#: How long an approval waits for a face before the answer is no.
APPROVAL_TIMEOUT_S = 300.0


# --- connections and the event hub ---------------------------------------------------------


class Conn:
    """One face's connection. Writes are serialised; a dead peer is dropped quietly."""

    def __init__(self, sock: socket.socket, uid: int, pid: int) -> None:
        self.sock = sock
        self.uid = uid
        self.pid = pid
        self.tag = f"face-{pid}-{secrets.token_hex(2)}"
        self._lock = threading.Lock()
        self.alive = True

    def send(self, msg: p.Message) -> None:
        if not self.alive:
            return
        try:
            with self._lock:
                self.sock.sendall(msg.to_line())
        except OSError:
            self.alive = False


class Hub:
    """Numbers every event once and sends it to each subscriber and the request it belongs
    to, so every face sees the same sequence."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._subs: list[tuple[Conn, str | None]] = []

    def subscribe(self, conn: Conn, session: str | None) -> None:
        with self._lock:
            self._subs.append((conn, session))

    def drop(self, conn: Conn) -> None:
        with self._lock:
            self._subs = [(c, s) for c, s in self._subs if c is not conn]

    def publish(self, ev: p.Event, to: tuple[Conn, int] | None = None) -> None:
        with self._lock:
            self._seq += 1
            ev = ev.model_copy(update={"seq": self._seq})
            targets = [c for c, s in self._subs if s is None or s == ev.session]
            # Sent under the lock: every subscriber receives events in seq order.
            for conn in targets:
                if to is None or conn is not to[0]:
                    conn.send(ev)
            if to is not None:
                to[0].send(ev.model_copy(update={"ref": to[1]}))


# --- approvals -----------------------------------------------------------------------------


@dataclass
class Pending:
    id: str
    session: str
    to: tuple[Conn, int] | None = None  # the face whose request asked
    done: threading.Event = field(default_factory=threading.Event)
    allow: bool = False


class Approvals:
    """Pending approvals; the first answer wins and everyone is told."""

    def __init__(self, hub: Hub, timeout_s: float) -> None:
        self._hub = hub
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}

    def ask(self, session: str, description: str, reason: str, to: tuple[Conn, int]) -> bool:
        item = Pending(id=secrets.token_hex(8), session=session, to=to)
        with self._lock:
            self._pending[item.id] = item
        self._hub.publish(
            p.ApprovalAsked(
                session=session,
                approval=item.id,
                description=description,
                reason=reason,
                timeout_s=self._timeout,
            ),
            to,
        )
        if not item.done.wait(self._timeout):
            self._settle(item.id, False, "timeout")
        return item.allow

    def answer(self, approval: str, allow: bool, by: str) -> tuple[bool, bool]:
        """(accepted, answer in force). Unknown or settled approvals are not accepted."""
        return self._settle(approval, allow, by)

    def refuse_all(self, session: str, by: str) -> None:
        with self._lock:
            ids = [a.id for a in self._pending.values() if a.session == session]
        for aid in ids:
            self._settle(aid, False, by)

    def _settle(self, approval: str, allow: bool, by: str) -> tuple[bool, bool]:
        with self._lock:
            item = self._pending.pop(approval, None)
            if item is None:
                return False, False
            item.allow = allow
        self._hub.publish(
            p.ApprovalAnswered(session=item.session, approval=approval, allow=allow, by=by),
            item.to,
        )
        item.done.set()
        return True, allow


# --- sessions --------------------------------------------------------------------------------


@dataclass
class Managed:
    """A session the service owns."""

    session: Any  # cowork.host.session.Session
    kept: bool
    busy: threading.Lock = field(default_factory=threading.Lock)
    task_thread: threading.Thread | None = None
    stopping: bool = False

    @property
    def name(self) -> str:
        return str(self.session.name)


class SessionGone(CoworkError):
    """The session's VM stopped while a request ran in it."""


def _rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _qemu_pid(name: str) -> int | None:
    """The QEMU process running domain ``name`` (for memory figures only)."""
    needle = f"guest={name},".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd and b"qemu" in cmd.split(b"\0", 1)[0]:
            return int(entry.name)
    return None


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


def _interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt in ``thread`` (how the agent loop is told to stop)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
        )


Opener = Callable[..., Any]


class Daemon:
    """The service. ``serve_forever()`` blocks; ``stop()`` ends it from any thread."""

    def __init__(
        self,
        paths: Paths,
        *,
        approval_timeout_s: float = APPROVAL_TIMEOUT_S,
        opener: Opener | None = None,
        task_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.paths = paths
        self.started = time.time()
        self.hub = Hub()
        self.approvals = Approvals(self.hub, approval_timeout_s)
        self._opener = opener
        self._task_overrides = task_overrides or {}
        self._lock = threading.Lock()
        self._sessions: dict[str, Managed] = {}
        self._booting: set[str] = set()  # workspaces being booted
        self._listener: socket.socket | None = None
        self._lockfd: int | None = None
        self._stopped = threading.Event()
        self._conns: set[Conn] = set()

    # --- start and stop ------------------------------------------------------------------
    def bind(self) -> None:
        """Take the per-user lock, clean up after an earlier run, and listen."""
        state = self.paths.daemon_state
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                "the cowork service is already running for this user; see `cowork daemon status`"
            ) from None
        self._lockfd = fd
        self.reconcile()
        runtime = self.paths.runtime
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(runtime, 0o700)
        path = self.paths.daemon_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        self._listener = sock

    def reconcile(self) -> list[str]:
        """Remove every VM an earlier run of the service recorded (it died with its
        gateway); return their names. Only recorded sessions are touched."""
        from cowork.host.session import destroy_session

        removed: list[str] = []
        records = self.paths.daemon_records
        if not records.is_dir():
            return removed
        for rec in sorted(records.glob("*.json")):
            name = rec.stem
            try:
                destroy_session(name, paths=self.paths, events=self._bus())
                removed.append(name)
                log.warning("removed VM %s left by an earlier run of the cowork service", name)
            except CoworkError as exc:
                log.error("could not remove VM %s left by an earlier run: %s", name, exc)
                continue
            rec.unlink(missing_ok=True)
        return removed

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        self._listener.settimeout(0.5)
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopped.is_set():
                    break
                raise
            threading.Thread(target=self._serve_conn, args=(sock,), daemon=True).start()
        self._teardown()

    def stop(self) -> None:
        self._stopped.set()

    def _teardown(self) -> None:
        with self._lock:
            managed = list(self._sessions.values())
        for ms in managed:
            self._stop_task(ms, "the cowork service is stopping")
        for ms in managed:
            self._close(ms)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.daemon_socket.unlink()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    # --- connections ---------------------------------------------------------------------
    def _serve_conn(self, sock: socket.socket) -> None:
        pid, uid = _peer(sock)
        conn = Conn(sock, uid, pid)
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            conn.send(
                p.ErrorReply(code="refused", message="this cowork service belongs to another user")
            )
            sock.close()
            return
        self._conns.add(conn)
        buf = sock.makefile("rb")
        try:
            while True:
                line = buf.readline(p.MAX_LINE + 1)
                if not line:
                    break
                if len(line) > p.MAX_LINE and not line.endswith(b"\n"):
                    conn.send(
                        p.ErrorReply(
                            code="too_long",
                            message=f"a message longer than {p.MAX_LINE} bytes was refused",
                        )
                    )
                    while line and not line.endswith(b"\n"):  # skip the rest of it
                        line = buf.readline(p.MAX_LINE + 1)
                    continue
                if not line.strip():
                    continue
                try:
                    req = p.parse_request(line)
                except p.ProtocolError as exc:
                    conn.send(p.ErrorReply(id=exc.ref, code=exc.code, message=str(exc)))
                    continue
                threading.Thread(
                    target=self._handle, args=(conn, req), name=f"req-{req.type}", daemon=True
                ).start()
        except OSError:
            pass
        finally:
            conn.alive = False
            self.hub.drop(conn)
            self._conns.discard(conn)
            with contextlib.suppress(OSError):
                sock.close()

    def _handle(self, conn: Conn, req: p.Request) -> None:
        handler = HANDLERS.get(type(req))
        try:
            if handler is None:
                raise p.ProtocolError("unknown_type", f"{req.type} is not handled", req.id)
            reply = handler(self, conn, req)
            conn.send(reply.model_copy(update={"id": req.id}))
        except p.ProtocolError as exc:
            conn.send(p.ErrorReply(id=req.id, code=exc.code, message=str(exc)))
        except UsageError as exc:
            conn.send(p.ErrorReply(id=req.id, code="bad_request", message=str(exc)))
        except CoworkError as exc:
            conn.send(p.ErrorReply(id=req.id, code="failed", message=str(exc)))
        except Exception as exc:
            log.exception("request %s failed", req.type)
            conn.send(
                p.ErrorReply(
                    id=req.id,
                    code="failed",
                    message=f"the cowork service failed: {type(exc).__name__}: {exc}",
                )
            )

    # --- sessions ------------------------------------------------------------------------
    def _bus(self) -> EventBus:
        from cowork.cli.common import audit_log_path

        bus = EventBus()
        with contextlib.suppress(CoworkError):
            bus.subscribe(AuditLog(audit_log_path(self.paths)))
        bus.subscribe(self._forward)
        bus.subscribe(self._record)
        return bus

    def _forward(self, ev: Event) -> None:
        session = ev.session or ev.fields.get("session") or ev.fields.get("name")
        self.hub.publish(
            p.BusEvent(
                session=session if isinstance(session, str) else None,
                kind=str(ev.kind),
                time=ev.time,
                fields=_jsonable(dict(ev.fields)),
            )
        )

    def _record(self, ev: Event) -> None:
        """Record a VM before it is defined, so a later run can remove it if we die."""
        if ev.kind is Kind.VM_CREATING:
            name = str(ev.fields.get("name"))
            records = self.paths.daemon_records
            records.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = records / f".{name}.tmp"
            tmp.write_text(json.dumps({"name": name, "pid": os.getpid(), "time": time.time()}))
            os.replace(tmp, records / f"{name}.json")

    def _unrecord(self, name: str) -> None:
        (self.paths.daemon_records / f"{name}.json").unlink(missing_ok=True)

    def _notice(self, session: str | None, message: str, to: tuple[Conn, int] | None) -> None:
        self.hub.publish(p.Notice(session=session, message=message), to)

    def _find(self, workspace: str) -> Managed | None:
        with self._lock:
            for ms in self._sessions.values():
                if str(ms.session.workspace) == workspace:
                    return ms
        return None

    def _get(self, name: str) -> Managed:
        with self._lock:
            ms = self._sessions.get(name)
        if ms is None:
            raise p.ProtocolError(
                "not_found",
                f"there is no cowork VM named {name!r} running "
                "in the service; see `cowork vm list`",
            )
        return ms

    def _boot(self, workspace: str, kept: bool, to: tuple[Conn, int]) -> tuple[Managed, bool]:
        """The running session for ``workspace``, or a new one (True when booted now)."""
        from cowork.host.session import open_session
        from cowork.host.workspace import check_workspace

        resolved = str(check_workspace(Path(workspace), paths=self.paths))
        with self._lock:
            existing = self._find_locked(resolved)
            if existing is not None:
                existing.kept = existing.kept or kept
                return existing, False
            if resolved in self._booting:
                raise UsageError(f"a VM for {resolved} is already starting; try again shortly")
            self._booting.add(resolved)
        try:
            opener = self._opener or open_session
            session = opener(
                Path(resolved),
                paths=self.paths,
                events=self._bus(),
                progress=lambda m: self._notice(None, m, to),
            )
        finally:
            with self._lock:
                self._booting.discard(resolved)
        ms = Managed(session=session, kept=kept)
        with self._lock:
            self._sessions[ms.name] = ms
        return ms, True

    def _find_locked(self, workspace: str) -> Managed | None:
        for ms in self._sessions.values():
            if str(ms.session.workspace) == workspace:
                return ms
        return None

    def _close(self, ms: Managed) -> None:
        with self._lock:
            self._sessions.pop(ms.name, None)
        try:
            ms.session.close()
        except CoworkError as exc:
            log.error("could not remove VM %s: %s", ms.name, exc)
            return
        self._unrecord(ms.name)

    def _alive(self, ms: Managed) -> bool:
        try:
            return str(ms.session.backend.status(ms.name).state.value) == "running"
        except CoworkError:
            return False

    def _fault(self, ms: Managed, exc: BaseException | None) -> str | None:
        """If the session's VM died or its disk is full, remove it and say so plainly."""
        if self._alive(ms) and not _disk_full(exc):
            return None
        if _disk_full(exc) or _disk_full_status(ms):
            why = (
                f"the disk holding cowork's session files ({self.paths.sessions}) is full, so "
                f"VM {ms.name} had to be stopped; free some space and try again"
            )
        else:
            why = f"VM {ms.name} stopped unexpectedly, so what ran in it was cut short"
        self._close(ms)
        return f"{why}. Your workspace files are as the last finished action left them."

    def info(self, ms: Managed) -> p.SessionInfo:
        s = ms.session
        qpid = _qemu_pid(ms.name)
        proc = getattr(s.gateway, "_proc", None) if s.gateway is not None else None
        gpid = getattr(proc, "pid", None)
        return p.SessionInfo(
            name=ms.name,
            workspace=str(s.workspace),
            state="running" if self._alive(ms) else "stopped",
            accel=s.state.accel,
            boot_seconds=s.state.boot_seconds,
            busy=ms.busy.locked(),
            kept=ms.kept,
            qemu_pid=qpid,
            qemu_rss_kib=_rss_kib(qpid),
            gateway_pid=gpid if isinstance(gpid, int) else None,
            gateway_rss_kib=_rss_kib(gpid if isinstance(gpid, int) else None),
        )

    def _stop_task(self, ms: Managed, why: str) -> bool:
        thread = ms.task_thread
        if thread is None or not thread.is_alive():
            return False
        ms.stopping = True
        self.approvals.refuse_all(ms.name, "stopped")
        _interrupt(thread)
        return True


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == 28:
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_status(ms: Managed) -> bool:
    """QEMU pauses a guest whose disk write failed with ENOSPC."""
    try:
        status = ms.session.backend.status(ms.name)
    except CoworkError:
        return False
    reason = str(getattr(status, "reason", "") or "")
    return "nospace" in reason.lower() or "enospc" in reason.lower()


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(obj, default=str)))


# --- request handlers ------------------------------------------------------------------------

Handler = Callable[[Daemon, Conn, Any], p.Reply]
HANDLERS: dict[type[p.Request], Handler] = {}


def handles(kind: type[p.Request]) -> Callable[[Handler], Handler]:
    """Register the service's handler for one request type (see the protocol's docstring)."""

    def deco(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return deco


@handles(p.ListSessions)
def _list(d: Daemon, conn: Conn, req: p.ListSessions) -> p.Reply:
    with d._lock:
        managed = list(d._sessions.values())
    return p.Sessions(sessions=[d.info(ms) for ms in managed])


@handles(p.VmUp)
def _up(d: Daemon, conn: Conn, req: p.VmUp) -> p.Reply:
    ms, started = d._boot(req.workspace, True, (conn, req.id))
    return p.SessionReply(session=d.info(ms), started=started)


@handles(p.VmDown)
def _down(d: Daemon, conn: Conn, req: p.VmDown) -> p.Reply:
    ms = d._get(req.name)
    d._stop_task(ms, "the VM is being stopped")
    with ms.busy:
        d._close(ms)
    return p.Ok()


@handles(p.VmStatus)
def _status(d: Daemon, conn: Conn, req: p.VmStatus) -> p.Reply:
    return p.SessionReply(session=d.info(d._get(req.name)))


@handles(p.Exec)
def _exec(d: Daemon, conn: Conn, req: p.Exec) -> p.Reply:
    to = (conn, req.id)
    ms, started = d._boot(req.workspace, req.keep, to)
    if not ms.busy.acquire(blocking=False):
        raise UsageError(f"VM {ms.name} is busy with another task or command; try again later")
    try:

        def out(stream: str) -> Callable[[bytes], None]:
            def send(data: bytes) -> None:
                conn.send(
                    p.ExecOutput(
                        ref=req.id,
                        session=ms.name,
                        stream=stream,  # type: ignore[arg-type]
                        data=data.decode("latin-1"),
                    )
                )

            return send

        try:
            result = ms.session.channel.run(
                req.command, timeout=req.timeout, on_stdout=out("stdout"), on_stderr=out("stderr")
            )
        except CoworkError as exc:
            why = d._fault(ms, exc)
            if why is not None:
                raise SessionGone(why) from exc
            raise
        code = result.exited if 0 <= result.exited < 256 else 1
        return p.ExecResult(exit_code=code, timed_out=bool(result.timed_out))
    finally:
        ms.busy.release()
        if started and not ms.kept and ms.name in d._sessions:
            d._close(ms)


@handles(p.RunTask)
def _run_task(d: Daemon, conn: Conn, req: p.RunTask) -> p.Reply:
    from cowork.host.agent.tools import describe
    from cowork.host.tasks import TaskCallbacks, TaskOptions, plan_task, run_session_task

    to = (conn, req.id)
    ms, started = d._boot(req.workspace, False, to)
    if not ms.busy.acquire(blocking=False):
        raise UsageError(f"VM {ms.name} is busy with another task or command; try again later")
    name = ms.name
    try:
        options = TaskOptions(mode=req.mode, demo=req.demo)
        plan_task(ms.session, options)  # a bad mode is refused before anything runs

        def approver(call: Any, decision: Any, description: str) -> bool:
            if ms.stopping:
                raise KeyboardInterrupt
            allowed = d.approvals.ask(name, description, decision.reason, to)
            if ms.stopping:
                raise KeyboardInterrupt
            return allowed

        callbacks = TaskCallbacks(
            on_text=lambda t: d.hub.publish(p.TaskText(session=name, text=t), to),
            on_action=lambda k, c, dec: d.hub.publish(
                p.TaskAction(
                    session=name,
                    kind=k,
                    description=describe(c),
                    verdict=dec.verdict.value,
                    reason=dec.reason,
                ),
                to,
            ),
            on_notice=lambda m: d._notice(name, m, to),
        )
        ms.task_thread = threading.current_thread()
        ms.stopping = False
        error: BaseException | None = None
        try:
            summary = run_session_task(
                ms.session,
                req.task,
                approver=approver,
                options=options,
                callbacks=callbacks,
                **d._task_overrides,
            )
        except KeyboardInterrupt:
            summary = None
        except CoworkError as exc:
            summary, error = None, exc
        finally:
            ms.task_thread = None
        full = summary is not None and "No space left" in summary.error
        fault = d._fault(ms, error or (OSError(28, summary.error) if full and summary else None))
        if fault is not None:
            d._notice(name, fault, to)
            d.hub.publish(p.TaskFinished(session=name, reason="error"), to)
            return _result(name, "error", summary, fault)
        if error is not None:
            raise error
        reason = summary.reason.value if summary is not None else "interrupted"
        d.hub.publish(p.TaskFinished(session=name, reason=reason), to)
        return _result(name, reason, summary, summary.error if summary is not None else "")
    finally:
        ms.busy.release()
        if started and not ms.kept and name in d._sessions:
            d._close(ms)


def _result(name: str, reason: str, summary: Any, error: str) -> p.TaskResult:
    if summary is None:
        return p.TaskResult(session=name, reason=reason, error=error)
    return p.TaskResult(
        session=name,
        reason=reason,
        error=error,
        turns=summary.turns,
        ran=summary.ran,
        asked=summary.asked,
        refused=summary.refused,
    )


@handles(p.StopTask)
def _stop(d: Daemon, conn: Conn, req: p.StopTask) -> p.Reply:
    ms = d._get(req.session)
    if not d._stop_task(ms, "stopped from a face"):
        raise UsageError(f"no task is running in VM {req.session}")
    return p.Ok()


@handles(p.Subscribe)
def _subscribe(d: Daemon, conn: Conn, req: p.Subscribe) -> p.Reply:
    d.hub.subscribe(conn, req.session)
    return p.Ok()


@handles(p.AnswerApproval)
def _answer(d: Daemon, conn: Conn, req: p.AnswerApproval) -> p.Reply:
    accepted, allow = d.approvals.answer(req.approval, req.allow, conn.tag)
    return p.ApprovalAnswerReply(accepted=accepted, allow=allow)


@handles(p.PolicyView)
def _policy(d: Daemon, conn: Conn, req: p.PolicyView) -> p.Reply:
    ms = d._get(req.session)
    policy = ms.session.policy
    if policy is None:
        raise p.ProtocolError("not_found", f"VM {req.session} has no policy in force")
    return p.PolicyReply(session=req.session, policy=policy.doc.model_dump(mode="json"))


@handles(p.DaemonStatus)
def _dstatus(d: Daemon, conn: Conn, req: p.DaemonStatus) -> p.Reply:
    with d._lock:
        managed = list(d._sessions.values())
    return p.DaemonInfo(
        pid=os.getpid(),
        uptime_s=round(time.time() - d.started, 1),
        rss_kib=_rss_kib(os.getpid()) or 0,
        sessions=[d.info(ms) for ms in managed],
    )


@handles(p.Shutdown)
def _shutdown(d: Daemon, conn: Conn, req: p.Shutdown) -> p.Reply:
    d.stop()
    return p.Ok()


def serve(paths: Paths, **kwargs: Any) -> None:
    """Run the service in this process until stopped (SIGTERM/SIGINT or ``daemon.stop``)."""
    daemon = Daemon(paths, **kwargs)
    daemon.bind()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: daemon.stop())
    log.info("cowork service listening on %s", paths.daemon_socket)
    daemon.serve_forever()


__all__ = ["HANDLERS", "Daemon", "handles", "serve"]
