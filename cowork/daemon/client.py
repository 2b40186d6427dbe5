"""The face side of the service's socket: what the CLI and the desktop app use.

Imports only the standard library, pydantic (through :mod:`cowork.daemon.protocol`),
:mod:`cowork.errors` and :mod:`cowork.paths`: no libvirt, SSH, proxy or model SDK.

One :class:`Client` is one connection. A background thread reads every line: replies go to
the request that waits for them, events to the callback given with that request (or to the
subscription's callback). Several requests may be in flight on one connection.

    with Client.connect(Paths().daemon_socket) as c:
        for s in c.call(p.ListSessions()).sessions: ...
        c.subscribe(None, on_event=print)                     # every event, every session
        c.call(p.AnswerApproval(approval=a_id, allow=True))   # from any face
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cowork.daemon import protocol as p
from cowork.errors import CoworkError

EventHandler = Callable[[p.Event], None]
RT = TypeVar("RT", bound=p.Reply)


class DaemonError(CoworkError):
    """The service refused or failed a request (its message is for a person)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
        if code in {"bad_request", "not_found", "refused", "unknown_type"}:
            self.exit_code = 2


class DaemonUnavailable(CoworkError):
    """No service answers on the socket (none is running, or it is not ours)."""


class DaemonGone(DaemonError):
    """The connection to the service broke while a request was running."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "gone")


GONE_MESSAGE = (
    "the cowork service stopped unexpectedly while this was running; "
    "what was running in the VM was cut short"
)


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._wlock = threading.Lock()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue[p.Reply | None]] = {}
        self._handlers: dict[int, EventHandler] = {}
        self._subscribers: list[tuple[str | None, EventHandler]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cowork-client", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, path: Path, timeout: float = 5.0) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"the cowork service is not running ({path}: {exc})") from exc
        sock.settimeout(None)
        return cls(sock)

    # --- requests ------------------------------------------------------------------------
    def send(self, req: p.Request, on_event: EventHandler | None = None) -> int:
        """Send ``req`` (with a fresh id); return the id. Use :meth:`wait` for its reply."""
        rid = next(self._ids)
        msg = req.model_copy(update={"id": rid})
        with self._lock:
            if self._closed:
                raise DaemonGone(GONE_MESSAGE)
            self._waiting[rid] = queue.Queue()
            if on_event is not None:
                self._handlers[rid] = on_event
        self._write(msg.to_line())
        return rid

    def wait(self, rid: int, timeout: float | None = None) -> p.Reply:
        q = self._waiting[rid]
        try:
            msg = q.get(timeout=timeout)
        except queue.Empty:
            raise DaemonError(f"the cowork service did not answer within {timeout} s") from None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
                self._handlers.pop(rid, None)
        if msg is None:
            raise DaemonGone(GONE_MESSAGE)
        if isinstance(msg, p.ErrorReply):
            raise DaemonError(msg.message, msg.code)
        return msg

    def call(
        self,
        req: p.Request,
        on_event: EventHandler | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send ``req`` and wait for its reply (an instance of ``type(req).answer``)."""
        reply = self.wait(self.send(req, on_event), timeout)
        if not isinstance(reply, type(req).answer):
            raise DaemonError(f"unexpected reply {reply.type!r} to {req.type!r}")
        return reply

    def notify(self, req: p.Request) -> None:
        """Send ``req`` without waiting for its reply (keystrokes, window sizes)."""
        self._write(req.model_copy(update={"id": 0}).to_line())

    def send_raw(self, line: bytes) -> None:
        """Write raw bytes (tests of the service's handling of bad input)."""
        self._write(line)

    # --- conveniences for faces --------------------------------------------------------------
    def subscribe(self, session: str | None, on_event: EventHandler) -> None:
        """Every event from now on (of ``session``, or of all) goes to ``on_event``.

        The callback runs on the reader thread: keep it short.
        """
        # Registered first, so that no event sent right after the reply is missed. The
        # subscription's events are broadcasts (ref 0), routed here by session.
        with self._lock:
            self._subscribers.append((session, on_event))
        self.call(p.Subscribe(session=session))

    def run_task(
        self,
        req: p.RunTask,
        *,
        on_event: EventHandler,
        on_approval: Callable[[p.ApprovalAsked], bool],
    ) -> p.TaskResult:
        """Run a task; ``on_approval`` is asked (in its own thread) for each approval.

        If another face answers first, the answer from ``on_approval`` is ignored.
        """

        def handle(ev: p.Event) -> None:
            if isinstance(ev, p.ApprovalAsked):

                def ask(ev: p.ApprovalAsked = ev) -> None:
                    allow = on_approval(ev)
                    with contextlib.suppress(CoworkError):
                        self.call(p.AnswerApproval(approval=ev.approval, allow=allow))

                threading.Thread(target=ask, name="cowork-approval", daemon=True).start()
            on_event(ev)

        result: p.TaskResult = self.call(req, on_event=handle)
        return result

    def show_changes(
        self, session: str, *, previews: bool = True, timeout: float | None = 120.0
    ) -> tuple[p.ChangeSetInfo, list[p.ChangeEntry]]:
        """A session's staged set and all its pending changes (every page of ``changes.show``)."""
        entries: list[p.ChangeEntry] = []
        offset: int | None = 0
        info: p.ChangeSetInfo | None = None
        while offset is not None:
            page: p.ChangeSetReply = self.call(
                p.ShowChanges(session=session, offset=offset, previews=previews), timeout=timeout
            )
            info = page.set
            entries += page.entries
            if page.next_offset is not None and page.next_offset <= offset:
                raise DaemonError(f"the cowork service sent a bad page of changes ({offset})")
            offset = page.next_offset
        assert info is not None
        return info, entries

    def exec(
        self,
        req: p.Exec,
        *,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        on_event: EventHandler | None = None,
    ) -> p.ExecResult:
        def handle(ev: p.Event) -> None:
            if isinstance(ev, p.ExecOutput):
                data = ev.data.encode("latin-1")
                (on_stdout if ev.stream == "stdout" else on_stderr)(data)
            elif on_event is not None:
                on_event(ev)

        result: p.ExecResult = self.call(req, on_event=handle)
        return result

    def shell(self, req: p.Shell, stdin_fd: int, stdout_fd: int) -> p.ExecResult:
        """Bridge a local terminal to a terminal in the session until its program exits."""
        import os
        import signal
        import termios
        import tty

        def output(ev: p.Event) -> None:
            if isinstance(ev, p.ExecOutput):
                os.write(stdout_fd, ev.data.encode("latin-1"))

        rid = self.send(req, on_event=output)
        is_tty = os.isatty(stdin_fd)
        saved = termios.tcgetattr(stdin_fd) if is_tty else None
        old_winch: Any = None

        def on_winch(_sig: int, _frame: object) -> None:
            with contextlib.suppress(OSError, CoworkError):
                size = os.get_terminal_size(stdout_fd)
                self.notify(p.PtyResize(shell=rid, cols=size.columns, rows=size.lines))

        def pump() -> None:
            with contextlib.suppress(OSError, CoworkError):
                while True:
                    data = os.read(stdin_fd, 4096)
                    if not data:
                        self.notify(p.PtyInput(shell=rid, eof=True))
                        return
                    self.notify(p.PtyInput(shell=rid, data=data.decode("latin-1")))

        try:
            if is_tty:
                tty.setraw(stdin_fd)
                if threading.current_thread() is threading.main_thread():
                    old_winch = signal.signal(signal.SIGWINCH, on_winch)
            threading.Thread(target=pump, name="cowork-pty-input", daemon=True).start()
            reply = self.wait(rid)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
        if not isinstance(reply, p.ExecResult):
            raise DaemonError(f"unexpected reply {reply.type!r} to a shell")
        return reply

    # --- plumbing ------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            with self._wlock:
                self._sock.sendall(data)
        except OSError as exc:
            raise DaemonGone(f"{GONE_MESSAGE} ({exc})") from exc

    def _read(self) -> None:
        buf = self._sock.makefile("rb")
        try:
            while True:
                line = buf.readline(p.MAX_LINE + 1)
                if not line:
                    break
                try:
                    msg = p.parse_incoming(line)
                except p.ProtocolError:
                    continue
                self._dispatch(msg)
        except OSError:
            pass
        finally:
            with self._lock:
                self._closed = True
                waiting = list(self._waiting.values())
            for q in waiting:
                q.put(None)

    def _dispatch(self, msg: p.Reply | p.Event) -> None:
        if isinstance(msg, p.Reply):
            with self._lock:
                q = self._waiting.get(msg.id)
            if q is not None:
                q.put(msg)
            return
        with self._lock:
            handler = self._handlers.get(msg.ref) if msg.ref else None
            subs = list(self._subscribers) if not msg.ref else []
        if handler is not None:
            handler(msg)
        for session, fn in subs:
            if session is None or session == msg.session:
                fn(msg)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=2)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "DaemonError", "DaemonGone", "DaemonUnavailable"]
