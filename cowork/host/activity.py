"""The host side of the guest activity monitor, and the activity timeline in plain words.

:class:`MonitorReader` connects to the host end of the guest monitor's own virtio-serial port
(a unix socket QEMU binds; in the guest the port is root-only), turns each JSON line into a
typed event on the session's bus (``guest.process``, ``guest.file``, ``guest.socket``) tagged
with the tool call and guest command running when it arrived (:class:`CallTracker`), and
watches the heartbeat: when no line arrives for :data:`HEARTBEAT_TIMEOUT_S` seconds (or no
``hello`` within :data:`HELLO_TIMEOUT_S` of starting), it emits ``monitor.lost`` once and calls
``on_lost`` (the session stops the VM or only marks it, per ``audit.monitor_lost``). A monitor
that says ``hello`` twice was restarted, which also means events were missed: lost.

:func:`describe` and :func:`timeline` render audit log lines as one plain sentence each, for
``cowork activity`` and the app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cowork.host.events import Event, EventBus, Kind

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 5.0
HELLO_TIMEOUT_S = 30.0
MAX_LINE = 1 << 20

_RECORD_KINDS = {"proc": Kind.GUEST_PROCESS, "file": Kind.GUEST_FILE, "net": Kind.GUEST_SOCKET}


class CallTracker:
    """Which tool call and guest command are running now (a bus subscriber)."""

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.job: str | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        f = event.fields
        with self._lock:
            if (
                event.kind == Kind.ACTION_DECIDED and f.get("verdict") in ("run", "run-approved")
            ) or (event.kind == Kind.APPROVAL_ANSWERED and f.get("approved")):
                self.call_id = str(f.get("call_id"))
            elif event.kind == Kind.AGENT_FINISHED:
                self.call_id = None
            elif event.kind == Kind.COMMAND_STARTED:
                self.job = str(f.get("job"))
            elif event.kind == Kind.COMMAND_FINISHED and str(f.get("job")) == self.job:
                self.job = None

    def current(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            if self.call_id is not None:
                out["call_id"] = self.call_id
            if self.job is not None:
                out["job"] = self.job
            return out


class MonitorReader:
    """Reads the guest monitor's port; see the module docstring."""

    def __init__(
        self,
        socket_path: Path,
        bus: EventBus,
        session: str,
        *,
        on_lost: Callable[[str], None] = lambda _r: None,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
        hello_timeout: float = HELLO_TIMEOUT_S,
        attached: bool = False,
    ) -> None:
        self.socket_path = socket_path
        self.bus = bus
        self.session = session
        self.on_lost = on_lost
        self.heartbeat_timeout = heartbeat_timeout
        self.hello_timeout = hello_timeout
        self.tracker = CallTracker()
        self._unsubscribe = bus.subscribe(self.tracker)
        self.hello: dict[str, Any] | None = None
        #: Attached to a running guest: its hello went to an earlier reader; any line will do.
        self.attached = attached
        self.alive = False
        self.last_hb: dict[str, Any] | None = None
        #: Host clock when each guest record arrived, with the record (for the benchmark).
        self.on_record: Callable[[dict[str, Any], float], None] | None = None
        self.last_seen = time.monotonic()
        self.started = time.monotonic()
        self.lost_reason: str | None = None
        self.records = 0
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads = [
            threading.Thread(target=self._read_loop, name="monitor-reader", daemon=True),
            threading.Thread(target=self._watchdog, name="monitor-watchdog", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _connect(self) -> socket.socket | None:
        while not self._stop.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.socket_path))
                s.settimeout(0.5)
                return s
            except OSError:
                s.close()
                self._stop.wait(0.2)
        return None

    def _read_loop(self) -> None:
        sock = self._connect()
        if sock is None:
            return
        self._sock = sock
        buf = b""
        with contextlib.closing(sock):
            while not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._handle(line)
                if len(buf) > MAX_LINE:
                    buf = b""

    def _handle(self, raw: bytes) -> None:
        try:
            rec = json.loads(raw)
        except ValueError:
            return
        if not isinstance(rec, dict):
            return
        self.last_seen = time.monotonic()
        self.alive = True
        t = rec.get("t")
        if self.on_record is not None:
            self.on_record(rec, time.time())
        if t == "hello":
            if self.hello is not None:
                self._lost("the guest activity monitor restarted (events may be missing)")
            self.hello = rec
            return
        if t == "hb":
            self.last_hb = rec
            return
        if t == "lost":
            self.bus.emit(
                Kind.VM_WARNING,
                session=self.session,
                message=f"the activity monitor missed {rec.get('count')} {rec.get('what')}",
            )
            return
        kind = _RECORD_KINDS.get(str(t))
        if kind is None:
            return
        fields = {k: v for k, v in rec.items() if k not in ("t",)}
        fields["guest_time"] = fields.pop("time", None)
        fields.update(self.tracker.current())
        self.records += 1
        self.bus.emit(kind, session=self.session, **fields)

    def _watchdog(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            started = self.hello is not None or (self.attached and self.alive)
            if not started and now - self.started > self.hello_timeout:
                self._lost("the guest activity monitor never started")
            elif started and now - self.last_seen > self.heartbeat_timeout:
                self._lost(
                    f"the guest activity monitor stopped reporting "
                    f"(nothing for {now - self.last_seen:.0f} s)"
                )

    def _lost(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.bus.emit(Kind.MONITOR_LOST, session=self.session, reason=reason)
        try:
            self.on_lost(reason)
        except Exception:
            log.exception("monitor-lost handler failed")

    def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2)


# --- plain words -----------------------------------------------------------------------------
def _who(f: Mapping[str, Any]) -> str:
    call = f" (tool call {f['call_id']})" if f.get("call_id") else ""
    return call


def describe(line: Mapping[str, Any]) -> str | None:
    """One plain sentence for an audit line, or None for kinds the timeline skips."""
    kind = str(line.get("kind"))
    f: Mapping[str, Any] = line.get("fields") or {}
    if kind == Kind.GUEST_PROCESS:
        argv = " ".join(str(a) for a in f.get("argv") or []) or str(f.get("exe") or "?")
        user = "the agent" if f.get("uid") not in (0, None) else "the system"
        return f"{user} started {argv!r} (pid {f.get('pid')}, parent {f.get('ppid')}){_who(f)}"
    if kind == Kind.GUEST_FILE:
        what = "folder" if f.get("dir") else "file"
        if f.get("op") == "renamed":
            return f"{what} {f.get('path')} renamed to {f.get('to')}{_who(f)}"
        return f"{what} {f.get('path')} {f.get('op')}{_who(f)}"
    if kind == Kind.GUEST_SOCKET:
        if f.get("counter"):
            return f"{f.get('count')} network attempt(s) failed ({f.get('counter')}){_who(f)}"
        where = f" to {f['address']}" if f.get("address") else ""
        return (
            f"{f.get('exe') or 'a program'} (pid {f.get('pid')}) tried a network "
            f"{f.get('syscall')}{where} outside the proxy: {f.get('error')}{_who(f)}"
        )
    if kind == Kind.MONITOR_LOST:
        return f"ALERT: {f.get('reason')}"
    if kind == Kind.COMMAND_STARTED:
        return f"command started: {f.get('command')}"
    if kind == Kind.COMMAND_FINISHED:
        return f"command finished: {f.get('command')} (exit {f.get('exited')})"
    if kind == Kind.ACTION_DECIDED:
        return f"action {f.get('verdict')}: {f.get('action')} (tool call {f.get('call_id')})"
    if kind == Kind.AGENT_STARTED:
        return f"task {f.get('task_id')} started"
    if kind == Kind.TOOL_FINISHED:
        return (
            f"tool call {f.get('call_id')} ({f.get('tool')}) finished: {f.get('outcome')} "
            f"after {f.get('seconds')} s"
        )
    if kind == Kind.AGENT_FINISHED:
        return f"task {f.get('task_id') or ''} finished: {f.get('error') or f.get('reason')}"
    if kind == Kind.EGRESS_DENIED:
        return f"blocked: {f.get('method')} {f.get('host')}{f.get('path') or ''}: {f.get('reason')}"
    if kind == Kind.EGRESS_ALLOWED:
        return f"allowed: {f.get('method')} {f.get('host')}{f.get('path') or ''}"
    if kind in (Kind.SESSION_STARTED, Kind.SESSION_ENDED, Kind.VM_READY):
        return kind.replace(".", " ")
    return None


def timeline(lines: Iterable[Mapping[str, Any]], session: str | None = None) -> list[str]:
    out = []
    for line in lines:
        if session is not None and line.get("session") != session:
            continue
        text = describe(line)
        if text is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(float(line.get("time") or 0)))
            out.append(f"{stamp}  #{line.get('seq')}  {text}")
    return out


def watch_session(
    name: str,
    socket_path: Path,
    bus: EventBus,
    *,
    stop_vm: Callable[[], None],
    mode: str,
    attached: bool = False,
) -> MonitorReader:
    """A reader for session ``name``; when the monitor is lost, ``mode`` "stop" stops the VM
    (fail closed) and "mark" only records ``monitor.lost`` (and every later event stands
    without the guest's view)."""

    def lost(reason: str) -> None:
        if mode == "stop":
            log.error("session %s: %s; stopping the VM", name, reason)
            stop_vm()

    return MonitorReader(socket_path, bus, name, on_lost=lost, attached=attached)
