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
- Keeps the warm pools (:mod:`cowork.host.pool`, which decides everything about them): a new
  session for a folder is taken from its pool when one is ready and current, else started
  normally; after a session for a folder started, the pool for it is kept filled when
  ``vm.pool_size`` > 0. Pooled VMs are recorded like any other and destroyed when the service
  stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cowork.daemon import protocol as p
from cowork.errors import CoworkError, UsageError
from cowork.host.events import Event, EventBus, Kind
from cowork.host.pool import PoolKey, PoolPlan, Pools
from cowork.host.warm import POOL
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
        self.ptys: dict[int, Any] = {}  # Shell request id -> cowork.host.channel.Pty

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
    #: The thread running the session's task or command, and the face whose request it is;
    #: set and cleared under ``work_lock`` (see :meth:`Daemon._stop_task`). A command is
    #: stopped through ``stop_work``; a task by an interrupt raised in its thread.
    task_thread: threading.Thread | None = None
    task_face: Conn | None = None
    work_lock: threading.Lock = field(default_factory=threading.Lock)
    stop_work: threading.Event = field(default_factory=threading.Event)
    interrupt_work: bool = False
    fault: str | None = None  # why the watchdog removed it
    removed: threading.Event = field(default_factory=threading.Event)
    close_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stopping(self) -> bool:
        """Whether the running task or command was asked to stop."""
        return self.stop_work.is_set()

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


def _listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


def _begin_work(ms: Managed, conn: Conn, *, interrupt: bool) -> bool:
    """Register the calling thread as running ``ms``'s task (``interrupt``: stopped by an
    interrupt raised in it) or command (stopped through ``ms.stop_work``) for ``conn``;
    whether that face is still there (one that went away while the VM started is not waited
    for)."""
    with ms.work_lock:
        ms.task_thread = threading.current_thread()
        ms.task_face = conn
        ms.stop_work = threading.Event()
        ms.interrupt_work = interrupt
    return conn.alive


def _end_work(ms: Managed) -> None:
    """Unregister the calling thread. A stop raised while it waited for the lock is taken
    here, so it cannot reach the clean-up after (the work had finished anyway)."""
    with contextlib.suppress(KeyboardInterrupt), ms.work_lock:
        ms.task_thread = None
        ms.task_face = None


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
        pool_planner: Callable[[str, str], PoolPlan] | None = None,
        pool_check_s: float | None = None,
    ) -> None:
        """``opener`` opens a session (default :func:`cowork.host.session.open_session`);
        ``pool_planner`` and ``pool_check_s`` replace the pools' planner and check interval
        (tests)."""
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
        from cowork.host import pool

        self.pools = Pools(
            self._open_pooled,
            pool_planner or (lambda ws, changes: pool.plan(paths, ws, changes)),
            events=self._bus(),
            notice=self._pool_notice,
            check_seconds=pool_check_s if pool_check_s is not None else pool.CHECK_SECONDS,
        )

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
        if _listening(self.paths.daemon_socket):
            # Same runtime folder, other state folder: never take over another's socket.
            self._release()
            raise UsageError(
                f"another cowork service already listens on {self.paths.daemon_socket}"
            )
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
        threading.Thread(target=self._watch, name="cowork-watchdog", daemon=True).start()
        self.pools.start()
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
        self.pools.close()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.daemon_socket.unlink()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._release()

    def _release(self) -> None:
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
                if type(req) in INLINE:  # keystrokes must stay in order
                    self._handle(conn, req)
                    continue
                threading.Thread(
                    target=self._handle, args=(conn, req), name=f"req-{req.type}", daemon=True
                ).start()
        except OSError:
            pass
        finally:
            conn.alive = False
            self.hub.drop(conn)
            with self._lock:
                orphaned = [ms for ms in self._sessions.values() if ms.task_face is conn]
            for ms in orphaned:  # nobody is left to see the task or answer it
                self._stop_task(ms, "the face that started it went away")
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
        from cowork.cli.common import audit_log

        bus = EventBus()
        with contextlib.suppress(CoworkError):
            # The same log as the CLI's: session anchors, and the export to the collector.
            bus.subscribe(audit_log(self.paths))
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
        """Record a VM before it is defined or restored, so a later run can remove it if we
        die; forget it once it is gone with its files."""
        if ev.kind is Kind.VM_CREATING:
            name = str(ev.fields.get("name"))
            records = self.paths.daemon_records
            records.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = records / f".{name}.tmp"
            tmp.write_text(json.dumps({"name": name, "pid": os.getpid(), "time": time.time()}))
            os.replace(tmp, records / f"{name}.json")
        elif ev.kind is Kind.SESSION_ENDED:  # destroyed, whoever destroyed it (a pool too)
            ended = ev.session or ev.fields.get("session")
            if isinstance(ended, str):
                self._unrecord(ended)
        elif ev.kind is Kind.VM_STOPPED and ev.fields.get("how") in ("destroyed", "saved"):
            # A VM with no session files (a quick-start template's) is done with once gone;
            # a session's record stays until its files are deleted too (SESSION_ENDED).
            gone = str(ev.fields.get("name"))
            if not self.paths.session_dir(gone).exists():
                self._unrecord(gone)

    def _unrecord(self, name: str) -> None:
        (self.paths.daemon_records / f"{name}.json").unlink(missing_ok=True)

    def _notice(
        self, session: str | None, message: str, to: tuple[Conn, int] | None = None
    ) -> None:
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

    def _boot(
        self, workspace: str, kept: bool, to: tuple[Conn, int], changes_default: str = "direct"
    ) -> tuple[Managed, bool]:
        """The running session for ``workspace``, or a new one (True when booted now).

        ``changes_default`` is the command's own default for ``workspace.changes``
        (``staged`` for a task, ``direct`` for ``vm up``/``exec``/``shell``); policy that sets
        the key overrides it. A running session keeps the mode it was started in.
        """
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
        say = functools.partial(self._notice, None, to=to)
        try:
            session = self.pools.take(resolved, changes_default, say)
            if session is None:
                opener = self._opener or open_session
                session = opener(
                    Path(resolved),
                    paths=self.paths,
                    events=self._bus(),
                    progress=say,
                    changes_default=changes_default,
                )
        finally:
            with self._lock:
                self._booting.discard(resolved)
        ms = Managed(session=session, kept=kept)
        with self._lock:
            self._sessions[ms.name] = ms
        took = float(session.state.boot_seconds)
        if session.state.start_mode == POOL:
            self._notice(ms.name, f"VM {ms.name} taken from the warm pool in {took:.2f} s", to)
        else:
            self._notice(ms.name, f"VM {ms.name} ready in {took:.1f} s", to)
        self.pools.want(resolved, changes_default)
        return ms, True

    def _open_pooled(self, key: PoolKey) -> Any:
        """One guest to wait in the pool of ``key``."""
        from cowork.host.session import open_session

        opener = self._opener or open_session
        return opener(
            Path(key.workspace),
            paths=self.paths,
            events=self._bus(),
            progress=lambda m: log.debug("warm pool for %s: %s", key.workspace, m),
            changes_default=key.changes,
            pool=True,
        )

    def _pool_notice(self, message: str) -> None:
        log.warning("%s", message)
        self._notice(None, message, None)

    def _find_locked(self, workspace: str) -> Managed | None:
        for ms in self._sessions.values():
            if str(ms.session.workspace) == workspace:
                return ms
        return None

    def _close(self, ms: Managed) -> None:
        """Remove ``ms``. A second caller (the watchdog and a request can both get here)
        waits for the first to finish, so nobody is told the VM is gone while its files
        are still being removed."""
        with self._lock:
            self._sessions.pop(ms.name, None)
        with ms.close_lock:
            if ms.removed.is_set():
                return
            try:
                ms.session.close()
            except CoworkError as exc:
                log.error("could not remove VM %s: %s", ms.name, exc)
                return
            finally:
                ms.removed.set()
            self._unrecord(ms.name)

    def _watch(self) -> None:
        """Every few seconds: a session whose VM stopped, crashed or was paused by its
        hypervisor (QEMU pauses a guest whose disk write failed for want of space) is
        removed, and whoever uses it is told why."""
        while not self._stopped.wait(WATCH_INTERVAL_S):
            with self._lock:
                managed = list(self._sessions.values())
            for ms in managed:
                try:
                    state = str(ms.session.backend.status(ms.name).state.value)
                except CoworkError:
                    continue
                if state == "running":
                    continue
                if state == "paused" and _space_left(ms.session.dir) < LOW_SPACE_BYTES:
                    why = (
                        f"the disk holding cowork's session files ({self.paths.sessions}) is "
                        f"full, so VM {ms.name} had to be stopped; free some space and try again"
                    )
                elif state == "paused":
                    why = f"VM {ms.name} was paused by its hypervisor, so it had to be stopped"
                else:
                    why = f"VM {ms.name} stopped unexpectedly, so what ran in it was cut short"
                ms.fault = f"{why}. Your workspace files are as the last finished action left them."
                log.error("%s", ms.fault)
                self._notice(ms.name, ms.fault, None)
                self._stop_task(ms, ms.fault)
                self._close(ms)

    def _alive(self, ms: Managed) -> bool:
        try:
            return str(ms.session.backend.status(ms.name).state.value) == "running"
        except CoworkError:
            return False

    def _fault(self, ms: Managed, exc: BaseException | None) -> str | None:
        """If the session's VM died, its channel is lost or its disk is full, remove it and
        say so plainly; None when the session is fine."""
        from cowork.errors import ChannelError, CommandFailed

        if ms.fault is not None:  # the watchdog got there first: tell once the VM is gone
            ms.removed.wait(CLOSE_WAIT_S)
            return ms.fault

        # Any failure of the channel itself (lost, reset, refused) may be a dead QEMU that
        # libvirt has not noticed yet.
        lost = isinstance(exc, ChannelError) and not isinstance(exc, CommandFailed)
        if lost:
            deadline = time.monotonic() + 10
            while self._alive(ms) and time.monotonic() < deadline:
                time.sleep(0.2)
        if self._alive(ms) and not _disk_full(exc) and not lost:
            return None
        if _disk_full(exc) or _disk_full_status(ms):
            why = (
                f"the disk holding cowork's session files ({self.paths.sessions}) is full, so "
                f"VM {ms.name} had to be stopped; free some space and try again"
            )
        elif self._alive(ms):
            why = (
                f"the connection to VM {ms.name} was lost, so what ran in it was cut short "
                "and the VM was stopped"
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
            changes=str(s.state.changes),
            start_mode=str(s.state.start_mode),
            agent_ids=f"{s.state.agent_uid}:{s.state.agent_gid}",
            mounts=[
                p.MountInfo(
                    target=str(m["target"]), readonly=bool(m["readonly"]), source=str(m["source"])
                )
                for m in s.state.mounts
            ],
        )

    def _stop_task(self, ms: Managed, why: str) -> bool:
        """Stop the task or command running in ``ms``, if any. A task's interrupt is raised
        only while its thread is still registered (under ``work_lock``), so it lands before
        :func:`_end_work`, never in the clean-up after it."""
        with ms.work_lock:
            thread = ms.task_thread
            if thread is None or not thread.is_alive():
                return False
            ms.stop_work.set()
            self.approvals.refuse_all(ms.name, "stopped")
            if ms.interrupt_work:
                _interrupt(thread)
        return True


#: How long a request waits for the watchdog to finish removing a failed session.
CLOSE_WAIT_S = 120.0
#: The exit status a face gets for a command that was stopped (the shell's for Ctrl-C).
STOPPED_EXIT = 130
#: How often the watchdog looks at every session's VM.
WATCH_INTERVAL_S = 2.0
#: Free space below which a paused VM is taken to have run out of disk.
LOW_SPACE_BYTES = 64 << 20


def _space_left(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


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
#: Quick requests handled in the connection's own thread, in the order they arrive.
INLINE: set[type[p.Request]] = {p.PtyInput, p.PtyResize}
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

        # A face that goes away, or a stop, ends the command.
        present = _begin_work(ms, conn, interrupt=False)
        result = None
        try:
            if present:
                result = ms.session.channel.run(
                    req.command,
                    timeout=req.timeout,
                    on_stdout=out("stdout"),
                    on_stderr=out("stderr"),
                    stop=ms.stop_work,
                )
        except KeyboardInterrupt:
            pass  # the channel killed the command's processes in the guest
        except CoworkError as exc:
            why = d._fault(ms, exc)
            if why is not None:
                raise SessionGone(why) from exc
            raise
        finally:
            _end_work(ms)
        if result is None:
            why = d._fault(ms, None)  # stopped because the VM died: say so, as when it fails
            if why is not None:
                raise SessionGone(why)
            d._notice(ms.name, "the command was stopped", to)
            return p.ExecResult(exit_code=STOPPED_EXIT)
        code = result.exited if 0 <= result.exited < 256 else 1
        return p.ExecResult(exit_code=code, timed_out=bool(result.timed_out))
    finally:
        ms.busy.release()
        if started and not ms.kept and ms.name in d._sessions:
            d._close(ms)


@handles(p.Shell)
def _shell(d: Daemon, conn: Conn, req: p.Shell) -> p.Reply:
    to = (conn, req.id)
    ms, started = d._boot(req.workspace, req.keep, to)
    if not ms.busy.acquire(blocking=False):
        raise UsageError(f"VM {ms.name} is busy with another task or command; try again later")
    try:
        pty = ms.session.channel.open_pty(term=req.term, cols=req.cols, rows=req.rows)
        conn.ptys[req.id] = pty
        try:
            while conn.alive:
                try:
                    data = pty.read(timeout=0.5)
                except TimeoutError:
                    continue
                if not data:
                    break
                conn.send(p.ExecOutput(ref=req.id, session=ms.name, stream="stdout",
                                       data=data.decode("latin-1")))  # fmt: skip
            status = pty.exit_status(timeout=5)
        finally:
            conn.ptys.pop(req.id, None)
            pty.close()
        code = status if status is not None and 0 <= status < 256 else 1
        return p.ExecResult(exit_code=code)
    except CoworkError as exc:
        why = d._fault(ms, exc)
        if why is not None:
            raise SessionGone(why) from exc
        raise
    finally:
        ms.busy.release()
        if started and not ms.kept and ms.name in d._sessions:
            d._close(ms)


@handles(p.PtyInput)
def _pty_input(d: Daemon, conn: Conn, req: p.PtyInput) -> p.Reply:
    pty = conn.ptys.get(req.shell)
    if pty is None:
        raise p.ProtocolError("not_found", f"no terminal for request {req.shell}")
    if req.data:
        pty.write(req.data.encode("latin-1"))
    if req.eof:
        pty.close_input()
    return p.Ok()


@handles(p.PtyResize)
def _pty_resize(d: Daemon, conn: Conn, req: p.PtyResize) -> p.Reply:
    pty = conn.ptys.get(req.shell)
    if pty is None:
        raise p.ProtocolError("not_found", f"no terminal for request {req.shell}")
    pty.resize(req.cols, req.rows)
    return p.Ok()


@handles(p.RunTask)
def _run_task(d: Daemon, conn: Conn, req: p.RunTask) -> p.Reply:
    from cowork.host.agent.tools import describe
    from cowork.host.tasks import TaskCallbacks, TaskOptions, plan_task, run_session_task

    to = (conn, req.id)
    ms, started = d._boot(req.workspace, False, to, changes_default="staged")
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
        present = _begin_work(ms, conn, interrupt=True)
        error: BaseException | None = None
        summary = None
        try:
            if present:
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
            _end_work(ms)
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
    from cowork.host.policy import load_policy

    try:
        pool_size = load_policy(d.paths).vm.pool_size
    except CoworkError:
        pool_size = 0
    return p.DaemonInfo(
        pid=os.getpid(),
        uptime_s=round(time.time() - d.started, 1),
        rss_kib=_rss_kib(os.getpid()) or 0,
        sessions=[d.info(ms) for ms in managed],
        pool_size=pool_size,
        pools=[p.PoolInfo(**asdict(s) | {"guests": list(s.guests)}) for s in d.pools.status()],
    )


@handles(p.Shutdown)
def _shutdown(d: Daemon, conn: Conn, req: p.Shutdown) -> p.Reply:
    d.stop()
    return p.Ok()


# --- staged changes (the host library does the work; these only translate) ---------------

#: Roughly how many bytes of entries one ``changes.set`` reply carries (under MAX_LINE).
CHANGES_PAGE_BYTES = p.MAX_LINE // 2
#: The longest preview sent for one file; a longer diff is cut with a note.
MAX_PREVIEW_CHARS = 64 * 1024
_changes_lock = threading.Lock()  # one apply/discard/undo at a time within the service


def _set_info(cs: Any) -> p.ChangeSetInfo:
    from cowork.host import changes

    return p.ChangeSetInfo(
        session=cs.session,
        workspace=cs.workspace,
        state=cs.state,
        created_at=cs.created_at,
        summary=changes.summary(cs.pending()),
        pending=len(cs.pending()),
        applied=list(cs.applied),
        refused=[p.ChangeRefusal(path=r.path, reason=r.reason) for r in cs.refused],
    )


def _entry(c: Any, preview: str = "", is_diff: bool = False) -> p.ChangeEntry:
    return p.ChangeEntry(
        path=c.path,
        kind=c.kind,
        type=c.type,
        size=c.size,
        old_size=c.old_size,
        renamed_from=c.renamed_from,
        description=c.description,
        conflict=c.conflict,
        preview=preview,
        is_diff=is_diff,
    )


def _load_set(d: Daemon, session: str) -> Any:
    from cowork.host import changes

    changes.recover(d.paths)
    try:
        return changes.show(d.paths, session)
    except UsageError as exc:
        raise p.ProtocolError("not_found", str(exc)) from None


def _preview(d: Daemon, session: str, c: Any) -> tuple[str, bool]:
    from cowork.host import changes

    if c.type != "file" or c.kind not in ("added", "modified", "renamed"):
        return c.description or c.kind, False
    try:
        text = changes.diff(d.paths, session, c)
    except (OSError, CoworkError) as exc:
        return f"{c.description or c.kind} (no preview: {exc})", False
    is_diff = text.startswith("--- ")
    if len(text) > MAX_PREVIEW_CHARS:
        text = text[:MAX_PREVIEW_CHARS] + "\n… (the rest of the difference is not shown)\n"
    return text, is_diff


@handles(p.ListChanges)
def _changes_list(d: Daemon, conn: Conn, req: p.ListChanges) -> p.Reply:
    from cowork.host import changes

    changes.recover(d.paths)
    if req.session is not None:
        sets = [_load_set(d, req.session)]
        if req.pending_only:
            sets = [cs for cs in sets if cs.state == "pending"]
    else:
        sets = changes.list_sets(d.paths, pending_only=req.pending_only)
    return p.ChangeSets(sets=[_set_info(cs) for cs in sets], undo=changes.undo_records(d.paths))


@handles(p.ShowChanges)
def _changes_show(d: Daemon, conn: Conn, req: p.ShowChanges) -> p.Reply:
    cs = _load_set(d, req.session)
    pending = cs.pending()
    entries: list[p.ChangeEntry] = []
    used = 0
    i = req.offset
    while i < len(pending):
        c = pending[i]
        preview, is_diff = _preview(d, cs.session, c) if req.previews else ("", False)
        entry = _entry(c, preview, is_diff)
        size = len(entry.model_dump_json()) + 1
        if entries and used + size > CHANGES_PAGE_BYTES:
            break
        entries.append(entry)
        used += size
        i += 1
    return p.ChangeSetReply(
        set=_set_info(cs),
        entries=entries,
        total=len(pending),
        next_offset=i if i < len(pending) else None,
    )


def _undo_limits(d: Daemon) -> tuple[int, int]:
    from cowork.host.policy import load_policy

    ws = load_policy(d.paths).doc.workspace
    return ws.undo_quota_mib, ws.undo_max_age_days


@handles(p.ApplyChanges)
def _changes_apply(d: Daemon, conn: Conn, req: p.ApplyChanges) -> p.Reply:
    from cowork.host import changes

    quota, age = _undo_limits(d)
    with _changes_lock:
        _load_set(d, req.session)
        result = changes.apply(
            d.paths,
            req.session,
            list(req.paths) if req.paths is not None else None,
            overwrite=req.overwrite,
            quota_mib=quota,
            max_age_days=age,
        )
    return p.ChangesApplied(
        record=result.record,
        applied=list(result.applied),
        conflicts=[_entry(c) for c in result.conflicts],
        refused=[p.ChangeRefusal(path=r.path, reason=r.reason) for r in result.refused],
    )


@handles(p.DiscardChanges)
def _changes_discard(d: Daemon, conn: Conn, req: p.DiscardChanges) -> p.Reply:
    from cowork.host import changes

    with _changes_lock:
        _load_set(d, req.session)
        changes.discard(d.paths, req.session)
    return p.Ok()


@handles(p.UndoChanges)
def _changes_undo(d: Daemon, conn: Conn, req: p.UndoChanges) -> p.Reply:
    from cowork.host import changes

    with _changes_lock:
        changes.recover(d.paths)
        if req.record is not None and req.record not in changes.undo_records(d.paths):
            raise p.ProtocolError(
                "not_found",
                f"there is no apply {req.record!r} that can be undone; see `cowork changes list`",
            )
        result = changes.undo(d.paths, req.record)
    return p.ChangesUndone(
        record=result.record,
        restored=list(result.restored),
        refused=[p.ChangeRefusal(path=r.path, reason=r.reason) for r in result.refused],
    )


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
