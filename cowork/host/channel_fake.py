"""Stand-ins for the private channel, for tests that do not boot a VM.

- :class:`FakeChannel` is the fake of :class:`cowork.host.channel.CommandChannel`: it runs
  commands locally with ``bash -c`` in a directory standing in for ``/workspace``
  (``/workspace/x`` maps to ``root/x``), with the same ``run()`` contract as
  :class:`cowork.host.channel.Channel` (Result, timeout kills the process group, callbacks,
  ``check``), and the guest code unpacked from :func:`cowork.guest.contract.guest_code_files`
  (what a seed carries) into its own ``guest_lib``. It is for fast unit tests of the parts
  that call ``run()`` (the agent's tools, hooks, approvals): it gives *no* isolation (that is
  the VM's job), so those tests prove the callers' logic, not the boundary.
- :class:`SerialShim` behaves like QEMU's end of a virtio-serial port: a unix socket the host
  connects to (one client at a time) joined to a "port" the guest opens by path (a pty in raw
  mode). Like QEMU it keeps the port's stream across host connections, so stale bytes from an
  earlier connection can reach the next one; :meth:`SerialShim.queue_stale` injects more.
- :class:`LocalGuest` is a real "guest" without a VM: the real relay
  (:mod:`cowork.guest.relay`) and the real OpenSSH server (``/usr/sbin/sshd -i``) behind a
  ``SerialShim``, with per-instance keys and the real :func:`cowork.guest.sshd.sshd_config`.
  sshd runs as the current user and can log in only that user. When that user is root the
  config's ``PermitRootLogin no`` becomes ``prohibit-password`` (keys only) - the single
  deviation from the guest's config, so the suite can run in root CI containers.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from cowork.errors import ChannelError
from cowork.guest.contract import WORKSPACE_MOUNT, guest_code_files
from cowork.host.channel import (
    TIMEOUT_STATUS,
    Result,
    check_env,
    command_line,
    failed,
    public_key_line,
)

_REPO_ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"


class FakeChannel:
    """Runs ``run()`` commands on this machine in ``root`` (default cwd), each as ``bash -c``
    in its own process group, like sshd in the guest.

    The environment is ``PATH``, ``HOME`` (= ``root``) and ``LANG``, then ``env``, then the
    call's ``env``; nothing else of this process's environment leaks in.
    ``interrupt_when(cmd)`` True simulates a Ctrl-C arriving while ``cmd`` runs: the command
    is started, ``run`` raises KeyboardInterrupt and the command is left running (recorded in
    ``interrupted`` with the thread that reaps it), so that the caller's own stop is tested.
    """

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str] | None = None,
        interrupt_when: Callable[[str], bool] | None = None,
    ) -> None:
        self.root = Path(root)
        self.env = dict(env or {})
        self.interrupt_when = interrupt_when
        self.commands: list[str] = []
        #: Every stdout and stderr returned, in order (for leak checks).
        self.outputs: list[str] = []
        self.interrupted: list[tuple[subprocess.Popen[bytes], threading.Thread]] = []
        self._closed = False
        self._guest_lib: Path | None = None

    @property
    def guest_lib(self) -> str:
        """A private folder holding the guest code as a seed carries it (made on first use,
        removed when this object is collected)."""
        if self._guest_lib is None:
            lib = Path(tempfile.mkdtemp(prefix="cowork-guest-lib-"))
            weakref.finalize(self, shutil.rmtree, lib, True)
            for rel, text in guest_code_files().items():
                (lib / rel).parent.mkdir(parents=True, exist_ok=True)
                (lib / rel).write_text(text, encoding="utf-8")
            self._guest_lib = lib
        return str(self._guest_lib)

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
        if self._closed:
            raise ChannelError("the channel to the guest was closed")
        command = command_line(cmd)
        self.commands.append(command)
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
        }
        full_env = {**base, **self.env, **check_env(env)}
        data = input.encode() if isinstance(input, str) else input
        start = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.local_dir(cwd),
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        if self.interrupt_when is not None and self.interrupt_when(command):
            time.sleep(0.3)  # let the command start (it writes its pid file) first
            reaper = threading.Thread(target=proc.communicate, daemon=True)
            reaper.start()
            self.interrupted.append((proc, reaper))
            raise KeyboardInterrupt
        out: list[bytes] = []
        err: list[bytes] = []

        def pump(stream: object, sink: list[bytes], cb: Callable[[bytes], None] | None) -> None:
            fd = stream.fileno()  # type: ignore[attr-defined]
            while chunk := os.read(fd, 65536):
                sink.append(chunk)
                if cb is not None:
                    cb(chunk)

        threads = [
            threading.Thread(target=pump, args=(proc.stdout, out, on_stdout), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, err, on_stderr), daemon=True),
        ]

        def feed() -> None:
            assert proc.stdin is not None
            try:
                if data:
                    proc.stdin.write(data)
                proc.stdin.close()
            except (OSError, ValueError):  # the command ended, or was killed
                pass

        timed_out = False
        deadline = None if timeout is None else start + timeout
        try:  # from here on, an interrupt kills the command's processes, then is raised
            for t in threads:
                t.start()
            threading.Thread(target=feed, daemon=True).start()
            while True:  # in slices, like the real channel: an interrupt is taken at once
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                try:
                    proc.wait(max(left, 0.0))
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        timed_out = True
                        break
        except BaseException:
            self._end(proc, threads, killed=True)
            raise
        self._end(proc, threads, killed=timed_out)
        result = Result(
            command=command,
            exited=TIMEOUT_STATUS if timed_out else _status(proc.returncode),
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )
        self.outputs += [result.stdout, result.stderr]
        if check and not result.ok:
            raise failed(result)
        return result

    @staticmethod
    def _end(proc: subprocess.Popen[bytes], readers: list[threading.Thread], killed: bool) -> None:
        if killed:
            _killpg(proc.pid)
            proc.wait()
        for t in readers:
            if t.ident is not None:  # started
                t.join(timeout=5.0 if killed else None)
        for stream in (proc.stdin if killed else None, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):  # stdin: feed may close it too
                    stream.close()

    def local_dir(self, cwd: str | None) -> Path:
        """Where a guest directory is here: ``/workspace[/x]`` maps to ``root[/x]``."""
        if cwd is None or cwd == WORKSPACE_MOUNT:
            return self.root
        if cwd.startswith(WORKSPACE_MOUNT + "/"):
            return self.root / cwd[len(WORKSPACE_MOUNT) + 1 :]
        return Path(cwd)

    def is_alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FakeChannel:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class SerialShim:
    """QEMU's side of a virtio-serial port, in a thread.

    ``hangup=True`` (like QEMU): when the host connection ends, the guest's open port ends
    too (its reads fail), and the port is re-created at the same path. Guest output not yet
    delivered stays queued for the next host connection. ``hangup=False``: the same port
    persists, so a guest program still running from the last connection reads the next
    connection's bytes - the harshest case for resynchronisation.
    """

    def __init__(self, directory: Path, *, hangup: bool = True) -> None:
        self.socket_path = directory / "channel.sock"
        self.port_path = directory / "port"
        self.hangup = hangup
        self.connections = 0
        self._to_host = bytearray()
        self._to_guest = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._master, self._slave = self._new_port()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._loop, name="serial-shim", daemon=True)
        self._thread.start()

    def _new_port(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        tmp = self.port_path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.port_path)
        return master, slave

    def queue_stale(self, to_guest: bytes = b"", to_host: bytes = b"") -> None:
        """Queue bytes as if left over from an earlier connection."""
        with self._lock:
            self._to_guest += to_guest
            self._to_host += to_host

    def _loop(self) -> None:
        client: socket.socket | None = None
        limit = 1 << 20
        try:
            while not self._stop.is_set():
                with self._lock:
                    rd: list[socket.socket | int] = []
                    wr: list[socket.socket | int] = []
                    if client is None:
                        rd.append(self._listener)
                        if not self.hangup:
                            rd.append(self._master)  # like QEMU: output with no client is lost
                    else:
                        if len(self._to_guest) < limit:
                            rd.append(client)
                        if len(self._to_host) < limit:
                            rd.append(self._master)
                        if self._to_host:
                            wr.append(client)
                    if self._to_guest:
                        wr.append(self._master)
                try:
                    r, w, _ = select.select(rd, wr, [], 0.1)
                except (OSError, ValueError):
                    r, w = [], []
                with self._lock:
                    if self._listener in r:
                        client, _ = self._listener.accept()
                        client.setblocking(False)
                        self.connections += 1
                        continue
                    if self._master in r:
                        try:
                            data = os.read(self._master, 65536)
                        except (BlockingIOError, OSError):
                            data = b""
                        if client is not None:
                            self._to_host += data
                    if self._master in w:
                        try:
                            n = os.write(self._master, self._to_guest[:65536])
                            del self._to_guest[:n]
                        except (BlockingIOError, OSError):
                            pass
                    if client is not None and client in w:
                        try:
                            n = client.send(self._to_host[:65536])
                            del self._to_host[:n]
                        except BlockingIOError:
                            pass
                        except OSError:
                            self._drop(client)
                            client = None
                            continue
                    if client is not None and client in r:
                        try:
                            data = client.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if data:
                            self._to_guest += data
                        else:
                            self._drop(client)
                            client = None
        finally:
            if client is not None:  # stopped while connected
                client.close()

    def _drop(self, client: socket.socket) -> None:
        client.close()
        if self.hangup:
            # The guest sees the port close, as with QEMU when the host disconnects.
            os.close(self._master)
            os.close(self._slave)
            self._to_guest.clear()
            self._master, self._slave = self._new_port()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._listener.close()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class LocalGuest:
    """The real relay and the real sshd behind a :class:`SerialShim`, in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        hangup: bool = True,
        proxy_port: int = 3128,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from cowork.guest.sshd import sshd_config

        if not os.path.exists(SSHD):
            raise ChannelError(f"{SSHD} is missing: install the openssh-server package")
        self.directory = Path(directory)
        self.user = getpass.getuser()
        self.workdir = self.directory / "workspace"
        self.workdir.mkdir()
        keys = self.directory / "keys"
        keys.mkdir(mode=0o700)
        self.host_key_path = keys / "host_key"
        self.client_key_path = keys / "client_key"
        for path in (self.host_key_path, self.client_key_path):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        self.host_key = public_key_line(self.host_key_path)
        self.client_key = self.client_key_path.read_text()
        authorized = keys / "authorized_keys"
        authorized.write_text(public_key_line(self.client_key_path) + "\n")
        config = sshd_config(
            str(self.host_key_path),
            str(authorized),
            self.user,
            dict(env or {}),
            proxy_port,
            strict_modes=False,
        )
        if os.getuid() == 0:
            config = config.replace("PermitRootLogin no", "PermitRootLogin prohibit-password")
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privsep chroot
        self.config_path = self.directory / "sshd_config"
        self.config_path.write_text(config)
        self.shim = SerialShim(self.directory, hangup=hangup)
        self.log_path = self.directory / "relay.log"
        self._log = self.log_path.open("ab")
        self._relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cowork.guest.relay",
                str(self.shim.port_path),
                "--",
                SSHD,
                "-i",
                "-e",
                "-f",
                str(self.config_path),
            ],
            cwd=_REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(_REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def socket_path(self) -> Path:
        return self.shim.socket_path

    def connect_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``Channel.connect`` that reach this guest."""
        return {
            "host_key": self.host_key,
            "client_key": self.client_key,
            "user": self.user,
            "workdir": str(self.workdir),
        }

    def close(self) -> None:
        _killpg(self._relay.pid)
        self._relay.wait()
        self.shim.close()
        self._log.close()

    def __enter__(self) -> LocalGuest:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def temporary_guest(**kwargs: object) -> tuple[LocalGuest, Callable[[], None]]:
    """A LocalGuest in a fresh short temporary directory (unix socket paths are short)."""
    directory = Path(tempfile.mkdtemp(prefix="cw-guest-"))
    guest = LocalGuest(directory, **kwargs)  # type: ignore[arg-type]

    def cleanup() -> None:
        guest.close()
        shutil.rmtree(directory, ignore_errors=True)

    return guest, cleanup
