"""The macOS backend: Apple's Virtualization framework through the ``vfkit`` helper.

The only module that runs ``vfkit``. Nothing here has been run on a Mac: it follows vfkit
v0.6.4's documented command line and REST API, and is tested against a fake ``vfkit``.

Contract:
- :func:`build_argv` is pure: the same :class:`~cowork.host.vm.spec.VMSpec` and
  :class:`VfkitOptions` always give the same argv (golden-tested). It adds no network device,
  no folder beyond ``spec.shares`` and nothing from the environment.
- vfkit splits device options on every comma and has no quoting, so a path with a comma is
  refused (:func:`argv_problems`), never passed on; so is a REST socket path longer than
  :data:`MAX_REST_SOCKET` bytes and a root disk that is not raw (vfkit boots raw images only).
- virtio-fs through vfkit has no read-only option: :attr:`BackendCapabilities
  .readonly_shares_enforced_by_host` is False and :meth:`VfkitBackend.validate` refuses a
  read-only share. The session refuses it earlier, with the same reason.
- ``create`` records the VM persistently (its argv under ``state_dir/<name>/``); ``start``
  removes a stale REST socket and channel socket (vfkit exits on a stale REST socket), runs
  vfkit in its own session and waits until its REST API says the VM runs; ``stop`` asks over
  REST, then SIGTERM, then SIGKILL; ``destroy`` forces it off and removes the VM's folder,
  and is idempotent. Only VMs named ``cowork-…`` are touched or listed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cowork.errors import BackendError, UsageError
from cowork.guest.contract import CHANNEL_VSOCK_PORT
from cowork.host.events import EventBus, Kind
from cowork.host.vm.backend import (
    NAME_PREFIX,
    BackendCapabilities,
    DiskFormat,
    VMState,
    VMStatus,
    check_name,
)
from cowork.host.vm.spec import VMSpec

VFKIT = "vfkit"
#: sun_path on macOS is 104 bytes including the terminating NUL.
MAX_REST_SOCKET = 103
#: The first bytes of a qcow2 image; vfkit refuses such a disk.
QCOW2_MAGIC = b"QFI\xfb"
#: Files in a VM's folder under the backend's state folder.
ARGV_FILE = "vfkit.argv.json"
PID_FILE = "vfkit.pid"
REST_SOCKET_FILE = "rest.sock"
LOG_FILE = "vfkit.log"
EFI_STORE_FILE = "efi-vars.fd"
#: vfkit's answer to ``GET /vm/state`` -> our state.
_STATES = {
    "VirtualMachineStateRunning": VMState.RUNNING,
    "VirtualMachineStateStarting": VMState.RUNNING,
    "VirtualMachineStateResuming": VMState.RUNNING,
    "VirtualMachineStateStopping": VMState.RUNNING,
    "VirtualMachineStatePausing": VMState.PAUSED,
    "VirtualMachineStatePaused": VMState.PAUSED,
    "VirtualMachineStateStopped": VMState.SHUTOFF,
    "VirtualMachineStateError": VMState.CRASHED,
}
POLL_SECONDS = 0.1

CAPABILITIES = BackendCapabilities(
    name="vfkit",
    shared_folder_transports=("virtiofs",),
    # vfkit always creates virtio-fs shares writable (no readOnly option reaches the
    # framework's VZSharedDirectory), so a read-only share is NOT enforced by the host.
    readonly_shares_enforced_by_host=False,
    channel_kinds=("vsock",),
    accelerators=(),  # the framework always uses the Mac's hypervisor; VMSpec.accel is unused
    disk_format=DiskFormat.RAW,
    readonly_disks_enforced_by_host=True,
)


@dataclass(frozen=True)
class VfkitOptions:
    """How one VM boots and where vfkit's own files are (everything else is in the spec)."""

    rest_socket: Path
    boot: str = "linux"  # "linux" (direct kernel boot) | "efi"
    efi_store: Path | None = None  # the EFI variable store, for boot == "efi"
    efi_create: bool = False  # create (and reset!) the variable store
    vsock_port: int = CHANNEL_VSOCK_PORT


def guest_cmdline(cmdline: str) -> str:
    """The kernel command line with the console on the virtio console (``hvc0``): the only
    console vfkit gives a Linux guest."""
    words = [w for w in cmdline.split() if not w.startswith("console=")]
    return " ".join(["console=hvc0", *words])


def argv_problems(spec: VMSpec, options: VfkitOptions) -> list[str]:
    """Every reason vfkit could not take ``spec`` as given (pure: no file is looked at)."""
    out: list[str] = []
    paths: list[tuple[str, Path]] = [
        ("kernel", spec.kernel),
        ("initrd", spec.initrd),
        ("disk", spec.disk),
        ("seed", spec.seed),
        ("channel_socket", spec.channel_socket),
        ("console_log", spec.console_log),
        ("REST socket", options.rest_socket),
    ]
    paths += [(f"share {s.tag} source", s.source) for s in spec.shares]
    if options.efi_store is not None:
        paths.append(("EFI variable store", options.efi_store))
    for label, path in paths:
        if "," in str(path):
            out.append(
                f"{label} {str(path)!r}: contains a comma, which vfkit cannot take in an "
                "option (it splits on every comma); rename or move it"
            )
    cmdline = guest_cmdline(spec.cmdline)
    if "," in cmdline or '"' in cmdline:
        out.append(f"cmdline {spec.cmdline!r}: vfkit cannot take a comma or '\"' in it")
    rest = str(options.rest_socket)
    if not options.rest_socket.is_absolute():
        out.append(f"REST socket {rest!r}: must be an absolute path")
    if len(rest.encode()) > MAX_REST_SOCKET:
        out.append(
            f"REST socket {rest!r}: longer than {MAX_REST_SOCKET} bytes, too long for a unix "
            "socket on macOS; use a shorter state folder"
        )
    if options.boot not in ("linux", "efi"):
        out.append(f"boot {options.boot!r}: must be 'linux' or 'efi'")
    if options.boot == "efi" and options.efi_store is None:
        out.append("boot 'efi' needs an EFI variable store path")
    if not 1 <= options.vsock_port <= 0xFFFFFFFE:
        out.append(f"vsock port {options.vsock_port}: out of range")
    for share in spec.shares:
        if share.readonly:
            out.append(
                f"share {share.tag} ({share.source}) is read-only, but vfkit cannot make a "
                "virtio-fs share read-only: the guest could write to it"
            )
    return out


def build_argv(spec: VMSpec, options: VfkitOptions, *, vfkit: str = VFKIT) -> list[str]:
    """The vfkit command line for ``spec``. Raises UsageError listing every problem."""
    problems = spec.problems() + argv_problems(spec, options)
    if problems:
        raise UsageError(
            f"VM {spec.name!r} cannot run with vfkit:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    argv = [vfkit, "--cpus", str(spec.cpus), "--memory", str(spec.memory_mib)]
    if options.boot == "linux":
        boot = (
            f"linux,kernel={spec.kernel},initrd={spec.initrd},"
            f'cmdline="{guest_cmdline(spec.cmdline)}"'
        )
    else:
        boot = f"efi,variable-store={options.efi_store}" + (",create" if options.efi_create else "")
    argv += ["--bootloader", boot]
    devices = [
        f"virtio-blk,path={spec.disk}",
        f"virtio-blk,path={spec.seed},readonly,deviceId={spec.seed_serial}",
        *(f"virtio-fs,sharedDir={s.source},mountTag={s.tag}" for s in spec.shares),
        f"virtio-vsock,port={options.vsock_port},socketURL={spec.channel_socket},connect",
        f"virtio-serial,logFilePath={spec.console_log}",
    ]
    for device in devices:
        argv += ["--device", device]
    argv += ["--restful-uri", f"unix://{options.rest_socket}"]
    return argv


# --- REST over the unix socket ------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def rest_call(
    path: Path, method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """``(status, decoded JSON or None)`` of one request to vfkit's REST API at ``path``.

    Raises OSError (including ``http.client.HTTPException``, turned into OSError) when vfkit
    does not answer.
    """
    conn = _UnixHTTPConnection(path, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, url, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"vfkit's REST API answered badly: {exc}") from exc
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return resp.status, None


# --- the backend --------------------------------------------------------------------------


class VfkitBackend:
    """VMs run by ``vfkit`` processes; each VM's files live in ``state_dir/<name>/``.

    ``state_dir`` must be short: the REST socket inside it is limited to 103 bytes.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        vfkit: str = VFKIT,
        events: EventBus | None = None,
        boot: str = "linux",
        start_timeout: float = 30.0,
        term_grace: float = 10.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.vfkit = vfkit
        self.events = events
        self.boot = boot
        self.start_timeout = start_timeout
        self.term_grace = term_grace

    @property
    def capabilities(self) -> BackendCapabilities:
        return replace(CAPABILITIES, location=str(self.state_dir))

    # --- files ----------------------------------------------------------------------------
    def vm_dir(self, name: str) -> Path:
        check_name(name)
        return self.state_dir / name

    def options_for(self, name: str) -> VfkitOptions:
        vdir = self.vm_dir(name)
        if self.boot == "efi":
            return VfkitOptions(
                rest_socket=vdir / REST_SOCKET_FILE,
                boot="efi",
                efi_store=vdir / EFI_STORE_FILE,
                efi_create=not (vdir / EFI_STORE_FILE).exists(),
            )
        return VfkitOptions(rest_socket=vdir / REST_SOCKET_FILE)

    def _emit(self, kind: Kind, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **fields)

    # --- lifecycle ------------------------------------------------------------------------
    def validate(self, spec: VMSpec) -> None:
        problems = spec.problems()
        if not spec.name.startswith(NAME_PREFIX):
            problems.append(f"name {spec.name!r}: must start with {NAME_PREFIX!r}")
        else:
            problems += argv_problems(spec, self.options_for(spec.name))
        for label, path in (("kernel", spec.kernel), ("initrd", spec.initrd), ("seed", spec.seed)):
            if path.is_absolute() and not path.is_file():
                problems.append(f"{label} {str(path)!r}: no such file")
        if spec.disk.is_absolute():
            problems += _raw_disk_problems(spec.disk)
        for label, path in (
            ("channel_socket", spec.channel_socket),
            ("console_log", spec.console_log),
        ):
            if path.is_absolute() and not path.parent.is_dir():
                problems.append(f"{label} {str(path)!r}: folder {str(path.parent)!r} is missing")
        for share in spec.shares:
            if share.source.is_absolute() and not share.source.is_dir():
                problems.append(f"share {share.tag} source {str(share.source)!r}: not a folder")
        if shutil.which(self.vfkit) is None:
            problems.append(
                f"vfkit ({self.vfkit}) is not installed: `brew install vfkit` (macOS 13 or later)"
            )
        if problems:
            raise UsageError(
                f"VM {spec.name!r} cannot run:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    def create(self, spec: VMSpec) -> None:
        self.validate(spec)
        vdir = self.vm_dir(spec.name)
        if vdir.exists():
            raise BackendError(
                f"a stale VM named {spec.name} exists: remove it with `cowork vm down {spec.name}`"
            )
        argv = build_argv(spec, self.options_for(spec.name), vfkit=self.vfkit)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        vdir.mkdir(mode=0o700)
        tmp = vdir / (ARGV_FILE + ".tmp")
        tmp.write_text(json.dumps({"argv": argv, "channel_socket": str(spec.channel_socket)}))
        tmp.replace(vdir / ARGV_FILE)
        self._emit(Kind.VM_CREATING, name=spec.name, accel=None)

    def _recorded(self, name: str) -> dict[str, Any]:
        path = self.vm_dir(name) / ARGV_FILE
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise BackendError(f"there is no VM named {name}; see `cowork vm list`") from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"the record of VM {name} in {path} is unreadable: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("argv"), list):
            raise BackendError(f"the record of VM {name} in {path} is malformed; remove the VM")
        return obj

    def start(self, name: str) -> None:
        record = self._recorded(name)
        vdir = self.vm_dir(name)
        if self._pid(name) is not None:
            raise BackendError(f"VM {name} is already running")
        rest = vdir / REST_SOCKET_FILE
        # vfkit exits at once on a stale REST socket; a stale channel socket would stop it
        # from listening. Both are ours: no vfkit runs for this VM (checked above).
        for stale in (rest, Path(str(record.get("channel_socket", "")))):
            if stale.is_absolute():
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        argv = [str(a) for a in record["argv"]]
        exe = shutil.which(argv[0])
        if exe is None:
            raise BackendError(f"vfkit ({argv[0]}) is not installed: `brew install vfkit`")
        log_path = vdir / LOG_FILE
        pid = os.posix_spawn(
            exe,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )  # fmt: skip
        (vdir / PID_FILE).write_text(f"{pid}\n")
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not _alive(pid):
                (vdir / PID_FILE).unlink(missing_ok=True)
                raise BackendError(
                    f"vfkit could not start VM {name}: {_tail(log_path)} (log: {log_path})"
                )
            if self._rest_state(name) is VMState.RUNNING:
                break
            if time.monotonic() >= deadline:
                self._kill(pid, signal.SIGKILL, wait=self.term_grace)
                (vdir / PID_FILE).unlink(missing_ok=True)
                raise BackendError(
                    f"VM {name} was not running {self.start_timeout:.0f} s after vfkit started; "
                    f"it has been stopped. vfkit said: {_tail(log_path)}"
                )
            time.sleep(POLL_SECONDS)
        self._emit(Kind.VM_STARTED, name=name, accel=None, pid=pid)

    def stop(self, name: str, timeout: float) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        how = "graceful"
        with contextlib.suppress(OSError):
            rest_call(self.vm_dir(name) / REST_SOCKET_FILE, "POST", "/vm/state", {"state": "Stop"})
        if not self._wait_gone(pid, timeout):
            how = "terminated"
            if not self._kill(pid, signal.SIGTERM, wait=self.term_grace):
                how = "forced"
                self._kill(pid, signal.SIGKILL, wait=self.term_grace)
        (self.vm_dir(name) / PID_FILE).unlink(missing_ok=True)
        self._emit(Kind.VM_STOPPED, name=name, how=how)

    def destroy(self, name: str) -> None:
        vdir = self.vm_dir(name)
        pid = self._pid(name)
        if pid is not None:
            with contextlib.suppress(OSError):
                rest_call(vdir / REST_SOCKET_FILE, "POST", "/vm/state", {"state": "HardStop"})
            if not self._wait_gone(pid, 2.0):
                self._kill(pid, signal.SIGKILL, wait=self.term_grace)
        if not vdir.exists():
            return
        with contextlib.suppress(BackendError, OSError):
            channel = Path(str(self._recorded(name).get("channel_socket", "")))
            if channel.is_absolute():
                channel.unlink(missing_ok=True)
        shutil.rmtree(vdir, ignore_errors=True)
        if vdir.exists():
            raise BackendError(f"could not remove {vdir}: remove it by hand")
        self._emit(Kind.VM_STOPPED, name=name, how="destroyed")

    def status(self, name: str) -> VMStatus:
        vdir = self.vm_dir(name)
        if not (vdir / ARGV_FILE).is_file():
            return VMStatus(name=name, state=VMState.MISSING)
        pid = self._pid(name)
        if pid is None:
            return VMStatus(name=name, state=VMState.SHUTOFF)
        state = self._rest_state(name) or VMState.RUNNING  # starting: no REST answer yet
        started = None
        with contextlib.suppress(OSError):
            started = (vdir / PID_FILE).stat().st_mtime
        return VMStatus(name=name, state=state, pid=pid, started_at=started)

    def list(self) -> list[VMStatus]:
        if not self.state_dir.is_dir():
            return []
        return [
            self.status(d.name)
            for d in sorted(self.state_dir.iterdir())
            if d.name.startswith(NAME_PREFIX) and len(d.name) > len(NAME_PREFIX) and d.is_dir()
        ]

    # --- helpers --------------------------------------------------------------------------
    def inspect(self, name: str) -> Any:
        """vfkit's own description of the running VM (``GET /vm/inspect``)."""
        try:
            status, body = rest_call(self.vm_dir(name) / REST_SOCKET_FILE, "GET", "/vm/inspect")
        except OSError as exc:
            raise BackendError(f"VM {name} does not answer: {exc}") from exc
        if status != 200:
            raise BackendError(f"vfkit refused to describe VM {name} (HTTP {status})")
        return body

    def _pid(self, name: str) -> int | None:
        """The vfkit process of ``name`` if it is alive (reaped if it was our child).

        The recorded pid counts only while that process's command line still names this
        VM's REST socket: a pid reused by another process is never signalled.
        """
        vdir = self.vm_dir(name)
        try:
            pid = int((vdir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 1 or not _alive(pid):
            return None
        return pid if f"unix://{vdir / REST_SOCKET_FILE}" in _command_line(pid) else None

    def _rest_state(self, name: str) -> VMState | None:
        try:
            status, body = rest_call(self.vm_dir(name) / REST_SOCKET_FILE, "GET", "/vm/state")
        except OSError:
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        return _STATES.get(str(body.get("state")), VMState.RUNNING)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while _alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def _kill(self, pid: int, sig: signal.Signals, *, wait: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return self._wait_gone(pid, wait)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a child of ours that exited is reaped (not left a zombie)."""
    with contextlib.suppress(ChildProcessError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> str:
    """The command line of process ``pid`` ("" if unknown); ``ps`` works on macOS and Linux."""
    try:
        proc = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],  # -ww: never cut to a width
            capture_output=True,
            env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _raw_disk_problems(disk: Path) -> list[str]:
    try:
        with disk.open("rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        return [f"disk {str(disk)!r}: no such file"]
    except OSError as exc:
        return [f"disk {str(disk)!r}: cannot be read ({exc})"]
    if head == QCOW2_MAGIC:
        return [
            f"disk {str(disk)!r}: is a qcow2 image; vfkit boots raw images only "
            "(on macOS the session disk is an APFS clone of the raw base image)"
        ]
    return []


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    return " | ".join(text.splitlines()[-lines:]) or "(no output)"
