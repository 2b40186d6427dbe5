"""The private channel to the guest: SSH (paramiko) over the VM's virtio-serial port.

This module is the only one that imports paramiko; every paramiko and socket error is
translated here into :class:`~cowork.errors.ChannelError` with a plain message.

Contract:
- :meth:`Channel.connect` resynchronises the byte stream before SSH starts (``SYNC <nonce>``
  / ``ACK <nonce>``, a fresh random nonce per try; see :mod:`cowork.guest.relay`), then
  verifies that the guest's host key is EXACTLY the pinned one. A different key is refused at
  once (never trust-on-first-use, never retried); anything else that fails is retried on a
  fresh connection with backoff until the timeout, because the guest may still be booting.
  A try that heard nothing back (the guest has not opened its port) keeps its connection
  and sends a fresh SYNC on it: QEMU reads nothing from a port the guest has not opened, so
  abandoned connections would queue up and be served, stale, before the live one.
- One transport per VM; every method may be called from several threads at once.
- Every command runs in its own process group (:func:`job_script`), so a timeout or an
  interrupt kills the command and all its children (:func:`kill_script`, on a second session).
- Environment for a command is passed on its command line, never with SSH ``env`` requests.
- A transport that stops answering keepalives is torn down; calls then raise ChannelError.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import secrets
import select
import shlex
import signal
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import paramiko

from cowork.errors import ChannelError, CommandFailed
from cowork.guest.contract import (
    ACK_PREFIX,
    AGENT_USER,
    GUEST_LIB_DIR,
    SYNC_PREFIX,
    WORKSPACE_MOUNT,
)
from cowork.host.events import EventBus, Kind

log = logging.getLogger(__name__)

#: Directory under the guest user's home that maps job ids to process groups.
JOBS_DIR = ".cowork-jobs"
#: Exit status of a command that ran out of time (as coreutils ``timeout``).
TIMEOUT_STATUS = 124
#: Bytes kept from the end of stderr in a CommandFailed message.
_STDERR_TAIL = 400
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CHUNK = 65536


@dataclass(frozen=True)
class Result:
    """What a guest command did. Timeouts and exit codes are data, not exceptions."""

    command: str
    exited: int  # exit status; 124 after a timeout, 130 after an interrupt, -N for signal N
    stdout: str
    stderr: str
    duration: float  # seconds
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exited == 0 and not self.timed_out


class CommandChannel(Protocol):
    """What callers of ``run()`` depend on: the one protocol for running guest commands.

    :class:`Channel` provides it over SSH; :class:`cowork.host.channel_fake.FakeChannel` is
    its fake for fast tests. ``guest_lib`` is where the guest code (``cowork/guest/*.py``,
    shipped in the seed) is found by commands run through this channel.
    """

    @property
    def guest_lib(self) -> str: ...

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | str | None = None,
        check: bool = False,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Result: ...


class SocketLike(Protocol):
    """One forwarded connection, as a reverse-forward handler sees it."""

    def recv(self, n: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def command_line(cmd: str | Sequence[str]) -> str:
    """The shell command text for ``cmd``; a sequence is quoted word by word."""
    if isinstance(cmd, str):
        return cmd
    return shlex.join(list(cmd))


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a dict, refusing names a shell would not accept."""
    out: dict[str, str] = {}
    for key, value in (env or {}).items():
        if not _ENV_KEY.match(key):
            raise ChannelError(
                f"environment variable name {key!r} is not valid: use letters, digits and '_'"
            )
        if "\0" in value:
            raise ChannelError(f"environment variable {key} contains a NUL byte; remove it")
        out[key] = value
    return out


def guest_program(channel: CommandChannel, module: str, *, python: str = "python3") -> str:
    """The command line running the guest program ``cowork/guest/<module>.py`` (isolated
    mode: no environment variables, user site or current folder on its import path)."""
    path = f"{channel.guest_lib}/cowork/guest/{module}.py"
    return f"{shlex.quote(python)} -I {shlex.quote(path)}"


def failed(result: Result) -> CommandFailed:
    """The CommandFailed for a result that is not ok (``check=True``)."""
    if result.timed_out:
        what = f"did not finish in time and was stopped after {result.duration:.1f} s"
    else:
        what = f"exited with status {result.exited}"
    tail = result.stderr[-_STDERR_TAIL:].strip()
    message = f"the guest command `{result.command}` {what}"
    if tail:
        message += f": {tail}"
    return CommandFailed(message, result)


def job_script(job: str, cwd: str, env: Mapping[str, str], command: str) -> str:
    """The bash script that runs ``command`` as job ``job`` (pure; golden-tested).

    sshd starts every session's shell as a session (and process group) leader, so the
    script's own pid is the group of the command and all its children. The script records it
    in ``~/.cowork-jobs/<job>`` for :func:`kill_script`, then runs ``command`` with
    ``bash -c`` in ``cwd`` with ``env`` exported, and exits with its status (128+N after
    signal N: the trailing ``exit`` keeps bash from exec'ing the command in its place, which
    would turn a signal into an SSH exit-signal). Nothing is forked but the command itself.
    """
    if not re.fullmatch(r"[0-9a-f]{8,64}", job):
        raise ValueError(f"job id {job!r} is not 8-64 lowercase hex characters")
    q = shlex.quote
    exports = "".join(f"export {k}={q(v)}\n" for k, v in check_env(env).items())
    return (
        f'd="$HOME/{JOBS_DIR}"; [ -d "$d" ] || mkdir -m 700 -- "$d"; echo "$$" > "$d/{job}"\n'
        f"cd -- {q(cwd)} || exit\n"
        f"{exports}"
        # The shell's own notices ("Killed") are not the command's output.
        "exec 3>&2 2>/dev/null\n"
        f"bash -c {q(command)} 2>&3 3>&-\n"
        "exit $?\n"
    )


def kill_script(job: str) -> str:
    """The shell script that ends job ``job``'s process group: TERM, then KILL after 1 s."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", job):
        raise ValueError(f"job id {job!r} is not 8-64 lowercase hex characters")
    return (
        f'f="$HOME/{JOBS_DIR}/{job}"; i=0\n'
        # The job may be a moment from recording its group.
        'while [ ! -s "$f" ] && [ "$i" -lt 10 ]; do sleep 0.1; i=$((i+1)); done\n'
        'read -r p 2>/dev/null < "$f" || exit 0\n'
        "case \"$p\" in ''|*[!0-9]*) exit 0;; esac\n"
        '[ "$p" -gt 1 ] || exit 0\n'
        'kill -TERM -- "-$p" 2>/dev/null || exit 0\n'
        'i=0; while kill -0 -- "-$p" 2>/dev/null && [ "$i" -lt 10 ]; do\n'
        "  sleep 0.1; i=$((i+1))\n"
        "done\n"
        'kill -KILL -- "-$p" 2>/dev/null; exit 0\n'
    )


def parse_public_key(line: str) -> tuple[str, bytes]:
    """``(key type, key blob)`` from an OpenSSH public key line ``"ssh-ed25519 AAAA... c"``."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise ChannelError(
            "the pinned host key is not an OpenSSH public key line ('ssh-ed25519 AAAA...')"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChannelError("the pinned host key's base64 part is not valid") from exc
    return parts[0], blob


def public_key_line(private_key: str | Path) -> str:
    """The OpenSSH public key line of a private key (text or file)."""
    key = _load_private_key(private_key)
    return f"{key.get_name()} {key.get_base64()}"


def _load_private_key(key: str | Path) -> paramiko.PKey:
    try:
        if isinstance(key, Path) or "-----BEGIN" not in key:
            return paramiko.PKey.from_path(Path(key))
        for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            with suppress(paramiko.SSHException, ValueError):
                return cls.from_private_key(io.StringIO(key))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise ChannelError(f"cannot read the client key {key!s:.60}: {exc}") from exc
    raise ChannelError("the client key text is not an OpenSSH private key (ed25519, ecdsa, rsa)")


class _Refused(ChannelError):
    """A failure retrying cannot fix (host key mismatch, authentication refused)."""


def _abort_socket(sock: socket.socket | None) -> None:
    # shutdown() first: close() alone hangs a transport blocked on send.
    if sock is None:
        return
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()


def _recv_exact(sock: socket.socket, n: int) -> None:
    while n > 0:
        got = sock.recv(min(n, _CHUNK))
        if not got:
            raise EOFError("the channel closed during the handshake")
        n -= len(got)


class NoAnswer(TimeoutError):
    """Nothing at all came back before the deadline: the guest has not read the port yet."""


def await_ack(sock: socket.socket, nonce: str, deadline: float) -> int:
    """Consume the stream up to and including ``ACK <nonce>\\n``; bytes discarded before it.

    Nothing after the ACK line is consumed (it is the start of sshd's banner): the socket is
    read with MSG_PEEK and only the bytes known to come before the ACK are taken. Raises
    TimeoutError at the deadline, :class:`NoAnswer` when not a single byte arrived.
    """
    ack = ACK_PREFIX + nonce.encode("ascii") + b"\n"
    discarded = 0
    heard = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if not heard:
                raise NoAnswer("the guest did not answer the handshake")
            raise TimeoutError("the guest did not acknowledge the handshake")
        sock.settimeout(remaining)
        try:
            data = sock.recv(_CHUNK, socket.MSG_PEEK)
        except TimeoutError:
            if not heard:
                raise NoAnswer("the guest did not answer the handshake") from None
            raise
        heard = True
        if not data:
            raise EOFError("the channel closed during the handshake")
        at = data.find(ack)
        if at >= 0:
            _recv_exact(sock, at + len(ack))
            return discarded + at
        # Keep a tail that might be the start of the ACK line.
        take = len(data) - (len(ack) - 1)
        if take > 0:
            _recv_exact(sock, take)
            discarded += take
        else:
            time.sleep(0.01)


class Pty:
    """An interactive remote program on a pseudo-terminal (``cowork shell``)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self._chan = chan

    def fileno(self) -> int:
        return self._chan.fileno()

    def read(self, n: int = _CHUNK, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes of output; ``b""`` at end of output. Raises TimeoutError."""
        self._chan.settimeout(timeout)
        try:
            return bytes(self._chan.recv(n))
        except TimeoutError:
            raise
        except (OSError, paramiko.SSHException) as exc:
            raise ChannelError(f"reading from the guest terminal failed: {exc}") from exc

    def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        try:
            self._chan.sendall(raw)
        except (OSError, paramiko.SSHException) as exc:
            raise ChannelError(f"writing to the guest terminal failed: {exc}") from exc

    def close_input(self) -> None:
        with suppress(OSError, paramiko.SSHException):
            self._chan.shutdown_write()

    def resize(self, cols: int, rows: int) -> None:
        with suppress(OSError, paramiko.SSHException):
            self._chan.resize_pty(width=cols, height=rows)

    def exit_status(self, timeout: float | None = None) -> int | None:
        """The remote program's exit status, waiting up to ``timeout``; None if not yet."""
        if not self._chan.status_event.wait(timeout):
            return None
        return int(self._chan.exit_status)

    def close(self) -> None:
        with suppress(OSError, paramiko.SSHException, EOFError):
            self._chan.close()

    def interactive(self, stdin_fd: int, stdout_fd: int) -> int:
        """Bridge a local terminal to this one until the program exits; its exit status.

        A tty on ``stdin_fd`` is put in raw mode (restored on return) and window size changes
        (SIGWINCH, main thread only) are passed on.
        """
        is_tty = os.isatty(stdin_fd)
        saved = termios.tcgetattr(stdin_fd) if is_tty else None
        old_handler: Any = None
        watch_winch = is_tty and threading.current_thread() is threading.main_thread()

        def on_winch(_sig: int, _frame: object) -> None:
            with suppress(OSError):
                size = os.get_terminal_size(stdout_fd)
                self.resize(size.columns, size.lines)

        try:
            if is_tty:
                tty.setraw(stdin_fd)
            if watch_winch:
                old_handler = signal.signal(signal.SIGWINCH, on_winch)
                on_winch(signal.SIGWINCH, None)
            inputs: list[Any] = [self._chan, stdin_fd]
            while True:
                ready, _, _ = select.select(inputs, [], [], 0.5)
                if self._chan in ready:
                    data = self._chan.recv(_CHUNK)
                    if not data:
                        break
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout_fd, view) :]
                if stdin_fd in ready:
                    local = os.read(stdin_fd, 4096)
                    if local:
                        self._chan.sendall(local)
                    else:
                        self.close_input()
                        inputs.remove(stdin_fd)
                if self._chan.closed:
                    break
        except (OSError, paramiko.SSHException) as exc:
            raise ChannelError(f"the guest terminal failed: {exc}") from exc
        finally:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            if watch_winch:
                signal.signal(signal.SIGWINCH, old_handler)
        status = self.exit_status(timeout=5.0)
        return -1 if status is None else status


class StreamPipe:
    """A guest program's stdin/stdout as a blocking byte stream (stderr is discarded)."""

    def __init__(self, chan: paramiko.Channel, kill: Callable[[], None]) -> None:
        self._chan = chan
        self._kill = kill
        self._closed = False

    def read(self, n: int) -> bytes:
        self._chan.settimeout(0.5)
        while not self._closed:
            try:
                while self._chan.recv_stderr_ready():  # drained so the program never blocks
                    self._chan.recv_stderr(_CHUNK)
                return bytes(self._chan.recv(n))
            except TimeoutError:
                if self._chan.closed or self._chan.exit_status_ready():
                    return b""
            except (OSError, EOFError, paramiko.SSHException):
                return b""
        return b""

    def write(self, data: bytes) -> None:
        try:
            self._chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ChannelError(f"the guest program's input closed: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with suppress(Exception):
            self._kill()
        with suppress(Exception):
            self._chan.close()


class Channel:
    """One SSH transport to one guest. Use :meth:`connect`; close it (or use ``with``)."""

    def __init__(
        self,
        transport: paramiko.Transport,
        sock: socket.socket,
        *,
        events: EventBus | None = None,
        keepalive: float = 5.0,
        workdir: str = WORKSPACE_MOUNT,
    ) -> None:
        self._transport = transport
        self._workdir = workdir
        self._sock = sock
        self._events = events
        self._keepalive = keepalive
        self._closed = threading.Event()
        self._lost: str | None = None
        # paramiko matches global-request replies to requests by order: one at a time.
        self._global_lock = threading.Lock()
        self._forwards: dict[int, tuple[str, int] | Callable[[SocketLike], None]] = {}
        self._forwards_lock = threading.Lock()
        self._watchdog = threading.Thread(
            target=self._watch, name="cowork-channel-keepalive", daemon=True
        )
        self._watchdog.start()

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        socket_path: Path,
        *,
        host_key: str,
        client_key: str | Path,
        user: str = AGENT_USER,
        timeout: float,
        events: EventBus | None = None,
        keepalive: float = 5.0,
        attempt_timeout: float = 3.0,
        workdir: str = WORKSPACE_MOUNT,
    ) -> Channel:
        """Connect to the guest's relay at ``socket_path`` and authenticate.

        ``host_key`` is the guest's pinned OpenSSH public key line; ``client_key`` the
        client's private key (OpenSSH text, or a file path). Retries until ``timeout``.
        ``workdir`` is the default ``cwd`` (it differs from ``/workspace`` only when the
        "guest" is a local sshd in tests).
        """
        pinned = parse_public_key(host_key)
        pkey = _load_private_key(client_key)
        deadline = time.monotonic() + timeout
        delay = 0.05
        per_try = attempt_timeout
        last = "nothing answered"
        attempts = 0
        # A try that heard nothing back keeps its connection for the next SYNC: QEMU does not
        # read a port the guest has not opened, so it would not notice a closed connection
        # either, and would hand the guest each abandoned connection's SYNC in turn first.
        sock: socket.socket | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _abort_socket(sock)
                raise ChannelError(
                    f"the guest did not answer on its private channel {socket_path} within "
                    f"{timeout:.0f} s after {attempts} tries (last problem: {last}); "
                    "check the guest console log"
                )
            attempts += 1
            transport: paramiko.Transport | None = None
            try:
                if sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(min(remaining, per_try))
                    sock.connect(str(socket_path))
                sock.settimeout(min(remaining, per_try))
                nonce = secrets.token_hex(16)
                sock.sendall(SYNC_PREFIX + nonce.encode("ascii") + b"\n")
                await_ack(sock, nonce, min(deadline, time.monotonic() + per_try))
                budget = max(0.5, min(deadline - time.monotonic(), 4 * per_try))
                transport = _start_ssh(sock, pinned, pkey, user, budget)
                channel = cls(
                    transport,
                    sock,
                    events=events,
                    keepalive=keepalive,
                    workdir=workdir,
                )
                log.debug("channel to %s up after %d tries", socket_path, attempts)
                return channel
            except _Refused:
                _abort_socket(sock)
                if transport is not None:
                    with suppress(Exception):
                        transport.close()
                raise
            except NoAnswer as exc:
                # Still connected and nothing came back: the next try sends a fresh SYNC on
                # this connection (a guest that reads them all at once answers the last).
                last = f"{type(exc).__name__}: {exc}"
                per_try = min(per_try * 1.5, max(attempt_timeout, 5.0))
                continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                _abort_socket(sock)
                sock = None
                if transport is not None:
                    with suppress(Exception):
                        transport.close()
            except Exception as exc:
                # Fail closed: anything unforeseen during verification refuses the channel.
                _abort_socket(sock)
                raise ChannelError(
                    f"connecting to the guest failed unexpectedly ({exc!r}); refusing to use "
                    "the channel"
                ) from exc
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
            per_try = min(per_try * 1.5, max(attempt_timeout, 5.0))

    # -- state --------------------------------------------------------------------------------

    @property
    def guest_lib(self) -> str:
        """Where the guest's init unpacked the guest code from the seed."""
        return GUEST_LIB_DIR

    def is_alive(self) -> bool:
        return not self._closed.is_set() and self._lost is None and self._transport.is_active()

    def close(self) -> None:
        """End the transport (idempotent). Commands still running see ChannelError."""
        self._closed.set()
        _abort_socket(self._sock)
        with suppress(Exception):
            self._transport.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _watch(self) -> None:
        while not self._closed.wait(self._keepalive):
            if not self._transport.is_active():
                self._lost = "the SSH transport ended"
                return
            answered = threading.Event()

            def probe(answered: threading.Event = answered) -> None:
                try:
                    with self._global_lock:
                        self._transport.global_request("keepalive@openssh.com", wait=True)
                except Exception:
                    return
                answered.set()

            threading.Thread(target=probe, name="cowork-channel-probe", daemon=True).start()
            if not answered.wait(self._keepalive * 3) and not self._closed.is_set():
                self._lost = "the guest stopped answering keepalives"
                log.warning("channel lost: %s", self._lost)
                _abort_socket(self._sock)
                return

    def _why_down(self) -> str:
        if self._closed.is_set():
            return "the channel to the guest was closed"
        return f"the channel to the guest was lost ({self._lost or 'the transport ended'})"

    def _open_session(self) -> paramiko.Channel:
        if not self.is_alive():
            raise ChannelError(self._why_down())
        try:
            return self._transport.open_session(timeout=30.0)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ChannelError(f"cannot open a session to the guest: {exc}") from exc

    def _emit(self, kind: Kind, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(kind, **fields)

    # -- commands -----------------------------------------------------------------------------

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | str | None = None,
        check: bool = False,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Result:
        """Run ``cmd`` with ``bash -c`` in the guest (in ``cwd``, default ``/workspace``).

        Output is collected and also passed to the callbacks as it arrives. After ``timeout``
        seconds, on KeyboardInterrupt, or once ``stop`` is set, the command's whole process
        group is killed; a timeout gives exit status 124 and ``timed_out=True``, an interrupt
        is re-raised and a stop raises :class:`KeyboardInterrupt` too. (``stop`` is for
        another thread: an asynchronous exception cannot be aimed at a thread reliably while
        it starts threads of its own.)
        """
        command = command_line(cmd)
        variables = check_env(env)
        job = secrets.token_hex(8)
        script = job_script(job, cwd or self._workdir, variables, command)
        data = input.encode() if isinstance(input, str) else input
        self._emit(Kind.COMMAND_STARTED, command=command, cwd=cwd or self._workdir, job=job)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        chan = self._open_session()
        try:
            result = self._drive(
                chan, script, job, command, data, deadline, start, on_stdout, on_stderr, stop
            )
        finally:
            with suppress(Exception):
                chan.close()
        self._emit(
            Kind.COMMAND_FINISHED,
            command=command,
            job=job,
            exited=result.exited,
            timed_out=result.timed_out,
            duration=round(result.duration, 3),
        )
        if check and not result.ok:
            raise failed(result)
        return result

    def _drive(
        self,
        chan: paramiko.Channel,
        remote: str,
        job: str,
        command: str,
        data: bytes | None,
        deadline: float | None,
        start: float,
        on_stdout: Callable[[bytes], None] | None,
        on_stderr: Callable[[bytes], None] | None,
        stop: threading.Event | None,
    ) -> Result:
        out: list[bytes] = []
        err: list[bytes] = []
        problems: list[BaseException] = []
        try:
            chan.exec_command(remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ChannelError(f"the guest refused to run a command: {exc}") from exc
        chan.settimeout(0.2)

        def feed_input() -> None:
            with suppress(OSError, EOFError, paramiko.SSHException):
                if data:
                    chan.settimeout(None)
                    view = memoryview(data)
                    while view and not chan.closed:
                        view = view[chan.send(bytes(view[:_CHUNK])) :]
                chan.shutdown_write()

        def read_stderr() -> None:
            try:
                while True:
                    try:
                        chunk = chan.recv_stderr(_CHUNK)
                    except TimeoutError:
                        if chan.closed:
                            return
                        continue
                    except (OSError, EOFError, paramiko.SSHException) as exc:
                        raise ChannelError(f"{self._why_down()}: {exc}") from exc
                    if not chunk:
                        return
                    err.append(chunk)
                    if on_stderr is not None:
                        on_stderr(chunk)
            except BaseException as exc:
                problems.append(exc)

        # recv with a timeout needs no lock with the writer: paramiko channels are thread-safe.
        writer = threading.Thread(target=feed_input, name="cowork-run-stdin", daemon=True)
        reader = threading.Thread(target=read_stderr, name="cowork-run-stderr", daemon=True)
        timed_out = False

        def stopped() -> bool:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            return False

        try:  # from here on, whatever ends the wait kills the command's processes
            if data:
                writer.start()
            else:
                with suppress(OSError, EOFError, paramiko.SSHException):
                    chan.shutdown_write()
            reader.start()
            while not stopped():
                if problems:
                    raise problems[0]
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    break
                try:
                    chunk = chan.recv(_CHUNK)
                except TimeoutError:
                    if not self.is_alive():
                        raise ChannelError(self._why_down()) from None
                    continue
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    raise ChannelError(f"{self._why_down()}: {exc}") from exc
                if not chunk:
                    break
                out.append(chunk)
                if on_stdout is not None:
                    on_stdout(chunk)
            if not timed_out:
                while not chan.status_event.wait(0.2) and not stopped():
                    if deadline is not None and time.monotonic() >= deadline:
                        timed_out = True
                        break
                    if not self.is_alive():
                        raise ChannelError(self._why_down())
                reader.join(timeout=None if timed_out else 5.0)
                if problems:
                    raise problems[0]
                if not self.is_alive():
                    # The session ended because the transport did, not because the command did.
                    raise ChannelError(self._why_down())
        except BaseException:
            self._kill(job)
            raise
        if timed_out:
            self._kill(job)
            chan.close()
            reader.join(timeout=5.0)
            exited = TIMEOUT_STATUS
        else:
            exited = int(chan.exit_status)
        return Result(
            command=command,
            exited=exited,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )

    def _kill(self, job: str) -> None:
        """Kill a job's process group through a second session; best effort."""
        if not self.is_alive():
            return
        try:
            chan = self._transport.open_session(timeout=10.0)
            try:
                chan.exec_command(kill_script(job))
                if not chan.status_event.wait(10.0):
                    log.warning("killing guest job %s did not finish", job)
            finally:
                chan.close()
        except Exception as exc:
            log.warning("could not kill guest job %s: %s", job, exc)

    # -- terminals ----------------------------------------------------------------------------

    def open_pty(
        self,
        cmd: str | None = None,
        *,
        term: str,
        cols: int,
        rows: int,
        cwd: str | None = None,
    ) -> Pty:
        """Start ``cmd`` (default: a login shell) on a remote pseudo-terminal."""
        remote = f"cd -- {shlex.quote(cwd or self._workdir)} && {cmd or 'exec bash -l'}"
        chan = self._open_session()
        try:
            chan.get_pty(term=term, width=cols, height=rows)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise ChannelError(
                f"the guest could not allocate a terminal ({exc}); its /dev/pts must be mounted"
            ) from exc
        try:
            chan.exec_command(remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise ChannelError(f"cannot start a terminal in the guest: {exc}") from exc
        return Pty(chan)

    def open_stream(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> StreamPipe:
        """Start ``cmd`` without a terminal; its stdin and stdout are a byte stream (for a
        line protocol such as MCP's stdio). :meth:`StreamPipe.close` stops its process group."""
        job = secrets.token_hex(8)
        script = job_script(job, cwd or self._workdir, check_env(env), command_line(cmd))
        chan = self._open_session()
        try:
            chan.exec_command(script)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise ChannelError(f"the guest refused to start a program: {exc}") from exc
        return StreamPipe(chan, lambda: self._kill(job))

    # -- forwards -----------------------------------------------------------------------------

    def reverse_forward(
        self,
        remote_port: int,
        target: tuple[str, int] | Callable[[SocketLike], None],
    ) -> Callable[[], None]:
        """Have the guest listen on 127.0.0.1:``remote_port``; each connection is bridged to
        the host TCP ``target`` (or handed to ``target`` if it is a callable) in a thread.

        Returns a function that cancels the forward.
        """
        if not self.is_alive():
            raise ChannelError(self._why_down())
        with self._forwards_lock:
            self._forwards[remote_port] = target
        try:
            with self._global_lock:
                self._transport.request_port_forward(
                    "127.0.0.1", remote_port, handler=self._on_forwarded
                )
        except (OSError, EOFError, paramiko.SSHException) as exc:
            with self._forwards_lock:
                self._forwards.pop(remote_port, None)
            raise ChannelError(
                f"the guest refused to listen on 127.0.0.1:{remote_port} for the host: {exc}"
            ) from exc

        def cancel() -> None:
            with self._forwards_lock:
                if self._forwards.pop(remote_port, None) is None:
                    return
            if self.is_alive():
                with self._global_lock, suppress(Exception):
                    # Not cancel_port_forward(): it drops the handler of every other forward.
                    self._transport.global_request(
                        "cancel-tcpip-forward", ("127.0.0.1", remote_port), wait=True
                    )

        return cancel

    def _on_forwarded(
        self, chan: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]
    ) -> None:
        with self._forwards_lock:
            target = self._forwards.get(server[1])
        if target is None:
            chan.close()
            return
        threading.Thread(
            target=_serve_forwarded, args=(chan, target), name="cowork-forward", daemon=True
        ).start()


def _serve_forwarded(
    chan: paramiko.Channel, target: tuple[str, int] | Callable[[SocketLike], None]
) -> None:
    try:
        if callable(target):
            target(chan)
            return
        with socket.create_connection(target, timeout=10.0) as upstream:
            upstream.settimeout(None)
            _pump(chan, upstream)
    except Exception as exc:
        log.info("forwarded connection failed: %s", exc)
    finally:
        with suppress(Exception):
            chan.close()


def _pump(chan: paramiko.Channel, upstream: socket.socket) -> None:
    """Copy both ways until both directions have ended."""
    open_ends: list[Any] = [chan, upstream]
    while open_ends:
        ready, _, _ = select.select(open_ends, [], [], 30.0)
        if not ready and chan.closed:
            return
        for end in ready:
            if end is chan:
                data = chan.recv(_CHUNK)
                if data:
                    upstream.sendall(data)
                else:
                    with suppress(OSError):
                        upstream.shutdown(socket.SHUT_WR)
                    open_ends.remove(chan)
            else:
                data = upstream.recv(_CHUNK)
                if data:
                    chan.sendall(data)
                else:
                    chan.shutdown_write()
                    open_ends.remove(upstream)


def _start_ssh(
    sock: socket.socket,
    pinned: tuple[str, bytes],
    pkey: paramiko.PKey,
    user: str,
    budget: float,
) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    try:
        return _handshake(transport, pinned, pkey, user, budget)
    except BaseException:
        _abort_socket(sock)
        with suppress(Exception):
            transport.close()
        raise


def _handshake(
    transport: paramiko.Transport,
    pinned: tuple[str, bytes],
    pkey: paramiko.PKey,
    user: str,
    budget: float,
) -> paramiko.Transport:
    transport.banner_timeout = budget
    transport.handshake_timeout = budget
    transport.auth_timeout = budget
    transport.start_client(timeout=budget)
    offered = transport.get_remote_server_key()
    if (offered.get_name(), offered.asbytes()) != pinned:
        raise _Refused(
            "host key mismatch: the guest presented a different SSH host key than the one "
            "this session created; refusing to connect (the VM may not be the one started)"
        )
    try:
        transport.auth_publickey(user, pkey)
    except paramiko.AuthenticationException as exc:
        raise _Refused(
            f"the guest refused the session's client key for user {user!r}: {exc}"
        ) from exc
    if not transport.is_authenticated():
        raise _Refused(f"the guest did not authenticate user {user!r}")
    return transport
