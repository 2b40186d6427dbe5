"""The libvirt backend: the only module that imports ``libvirt``.

Contract:
- One connection per :class:`LibvirtBackend`, opened on first use. libvirt's own error
  printing is switched off; every ``libvirtError`` is translated here into a
  :class:`~cowork.errors.BackendError` whose message names the VM and what to do.
- ``create`` defines the domain persistently (so ``list``/``status`` work across CLI runs);
  ``destroy`` forces it off and undefines it, and is idempotent.
- Only domains named ``cowork-…`` are ever touched or listed.
- No event loop is registered: lifecycle calls are synchronous and ``stop`` polls.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import shutil
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import libvirt

from cowork.errors import BackendError, UsageError
from cowork.host.events import EventBus, Kind
from cowork.host.vm.accel import DEV_KVM, detect_accel
from cowork.host.vm.backend import (
    NAME_PREFIX,
    BackendCapabilities,
    DiskFormat,
    UnsupportedError,
    VMState,
    VMStatus,
    check_name,
)
from cowork.host.vm.domainxml import (
    ACCEL_FOR_DOMAIN_TYPE,
    ARCH,
    HostContext,
    domain_xml,
    restore_xml,
)
from cowork.host.vm.spec import Accel, VMSpec

SYSTEM_URI = "qemu:///system"
SESSION_URI = "qemu:///session"
EMULATOR = "qemu-system-x86_64"
#: How often ``stop`` looks whether the guest has powered off.
STOP_POLL_SECONDS = 0.2

T = TypeVar("T")
log = logging.getLogger(__name__)


def _silence(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; ours are raised instead."""


libvirt.registerErrorHandler(_silence, None)

_STATES: dict[int, VMState] = {
    libvirt.VIR_DOMAIN_NOSTATE: VMState.RUNNING,
    libvirt.VIR_DOMAIN_RUNNING: VMState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: VMState.RUNNING,  # shutting down, still running
    libvirt.VIR_DOMAIN_PAUSED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: VMState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VMState.CRASHED,
}


def find_emulator() -> Path | None:
    """The QEMU binary libvirt would pick for x86_64 guests on this host, if installed."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/bin", "/usr/libexec"])
    found = shutil.which(EMULATOR, path=search)
    return Path(found) if found else None


def kvm_device_problem(dev_kvm: Path = DEV_KVM, kvm_group: str = "kvm") -> str | None:
    """Why libvirt's system daemon will re-probe QEMU on every call, or None.

    The system daemon checks ``/dev/kvm`` as its QEMU user (in group ``kvm``). Without udev
    the device stays ``root:root 0600``; libvirt then finds its cached QEMU capabilities
    outdated on every lookup and re-probes QEMU (seconds each; defining a domain took ~50 s).
    """
    try:
        st = dev_kvm.stat()
        group = grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return None
    if st.st_mode & 0o006 == 0o006 or (st.st_mode & 0o060 == 0o060 and group == kvm_group):
        return None
    return (
        f"{dev_kvm} is not usable by libvirt's QEMU user, so libvirt re-probes QEMU on every "
        f"call (slow): run `sudo chgrp {kvm_group} {dev_kvm} && sudo chmod 0660 {dev_kvm}` "
        "(udev does this on a normal system)"
    )


def default_uri() -> str:
    """``qemu:///system`` for root (libvirt's session URI is the system daemon for root
    anyway), ``qemu:///session`` for everyone else (QEMU then runs as the user)."""
    return SYSTEM_URI if os.geteuid() == 0 else SESSION_URI


def _is_system(uri: str) -> bool:
    return uri.startswith(("qemu:///system", "qemu+unix:///system"))


def describe(code: int, message: str, doing: str, uri: str, name: str = "NAME") -> str:
    """The message for a person, for libvirt error ``code``/``message`` while ``doing``."""
    low = message.lower()
    detail = f"(libvirt said: {message})"
    if "virtlogd-sock" in low:
        text = (
            "libvirt's log daemon is not running: start it with `sudo systemctl start "
            "virtlogd` (or `sudo virtlogd -d` on a system without systemd)"
        )
    elif "failed to connect socket" in low and "permission denied" in low:
        text = (
            f"cowork may not use libvirt at {uri}: add yourself to the group libvirt "
            "(`sudo usermod -aG libvirt $USER`, then log in again) or use qemu:///session"
        )
    elif code == libvirt.VIR_ERR_NO_CONNECT or "failed to connect socket" in low:
        text = (
            "libvirt's daemon is not running: start it with `sudo systemctl start libvirtd` "
            "(or `sudo libvirtd -d && sudo virtlogd -d` on a system without systemd)"
        )
    elif "already exists" in low:
        text = f"could not {doing}: a stale VM named {name} exists: `cowork vm down {name}`"
    elif "qemu binary" in low or ("emulator" in low and "no such file" in low):
        text = (
            f"could not {doing}: QEMU is not installed: install it with "
            "`sudo apt-get install qemu-system-x86`"
        )
    else:
        text = f"could not {doing}"
    return f"{text} {detail}"


def translate(exc: libvirt.libvirtError, doing: str, uri: str, name: str = "NAME") -> BackendError:
    """A :class:`BackendError` for libvirt's ``exc`` (see :func:`describe`)."""
    message = str(exc.get_error_message() or exc).strip()
    return BackendError(describe(int(exc.get_error_code() or 0), message, doing, uri, name))


class LibvirtBackend:
    """Sealed guest VMs as libvirt domains (QEMU; or libvirt's ``test:///`` driver in tests).

    ``host`` overrides what is otherwise learnt from the hypervisor (tests on drivers
    without an x86_64 QEMU pass it explicitly).
    """

    def __init__(
        self,
        uri: str | None = None,
        events: EventBus | None = None,
        *,
        host: HostContext | None = None,
    ) -> None:
        self.uri = uri or default_uri()
        self._events = events
        self._host = host
        self._conn: Any = None
        self._lock = threading.Lock()
        self._capabilities: BackendCapabilities | None = None

    # --- connection -----------------------------------------------------------------
    def _connect(self) -> Any:
        with self._lock:
            if urlsplit(self.uri).netloc:
                # Shares, disks and sockets are paths on this machine: a remote daemon
                # would resolve them on another one.
                raise UnsupportedError(
                    f"libvirt at {self.uri} is on another machine; cowork only drives the "
                    "local hypervisor (qemu:///session or qemu:///system)"
                )
            if self._conn is not None and not self._alive(self._conn):
                # The daemon restarted (or a session daemon timed out): reconnect once.
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise translate(exc, f"connect to libvirt at {self.uri}", self.uri) from exc
            return self._conn

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except libvirt.libvirtError as exc:
            raise translate(exc, doing, self.uri) from exc

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a dead connection: nothing left to release.
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def __enter__(self) -> LibvirtBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _driver(self) -> str:
        conn = self._connect()
        return str(self._call("ask libvirt for its driver", conn.getType))

    def _lookup(self, name: str) -> Any | None:
        conn = self._connect()
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(exc, f"look up VM {name}", self.uri) from exc

    def _require(self, name: str) -> Any:
        check_name(name)
        dom = self._lookup(name)
        if dom is None:
            raise BackendError(f"VM {name} does not exist: create it first (`cowork vm up`)")
        return dom

    def _emit(self, kind: Kind, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(kind, **fields)

    # --- host facts -----------------------------------------------------------------
    def host_context(self) -> HostContext:
        """Who QEMU runs as, which emulator, and whether this is the system daemon.

        Learnt from the local host, not from libvirt's capabilities: those are rebuilt on
        every call in libvirt 9 (seconds each under TCG load). Only local URIs are used.
        """
        if self._host is not None:
            return self._host
        emulator = find_emulator()
        if emulator is None:
            raise BackendError(
                f"QEMU for {ARCH} ({EMULATOR}) is not installed: install it with "
                "`sudo apt-get install qemu-system-x86`"
            )
        return HostContext(
            uid=os.getuid(), gid=os.getgid(), emulator=emulator, system_mode=_is_system(self.uri)
        )

    @property
    def capabilities(self) -> BackendCapabilities:
        if self._capabilities is None:
            best = detect_accel()
            accels = (Accel.KVM, Accel.TCG) if best.accel is Accel.KVM else (Accel.TCG,)
            self._capabilities = BackendCapabilities(
                name="libvirt",
                # virtiofsd in QEMU 7.2 cannot export read-only, so only 9p is offered.
                shared_folder_transports=("9p",),
                readonly_shares_enforced_by_host=True,
                channel_kinds=("virtio-serial",),
                accelerators=accels,
                disk_format=DiskFormat.QCOW2,
                location=self.uri,
                save_restore=True,
            )
        return self._capabilities

    # --- lifecycle ------------------------------------------------------------------
    def validate(self, spec: VMSpec) -> None:
        problems = spec.problems()
        if not spec.name.startswith(NAME_PREFIX):
            problems.append(f"name {spec.name!r}: must start with {NAME_PREFIX!r}")
        for label, path in (
            ("kernel", spec.kernel),
            ("initrd", spec.initrd),
            ("disk", spec.disk),
            ("seed", spec.seed),
        ):
            if path.is_absolute() and not path.is_file():
                problems.append(f"{label} {str(path)!r}: no such file")
        for label, path in (
            ("channel_socket", spec.channel_socket),
            ("console_log", spec.console_log),
        ):
            if path.is_absolute() and not path.parent.is_dir():
                problems.append(f"{label} {str(path)!r}: folder {str(path.parent)!r} is missing")
        for share in spec.shares:
            if share.source.is_absolute() and not share.source.is_dir():
                problems.append(f"share {share.tag} source {str(share.source)!r}: not a folder")
        if self._host is None and self._driver() == "QEMU":
            if find_emulator() is None:
                problems.append(
                    f"QEMU for {ARCH} ({EMULATOR}) is not installed: "
                    "`sudo apt-get install qemu-system-x86`"
                )
            if spec.accel is Accel.KVM and not DEV_KVM.exists():
                problems.append(f'accel "kvm": {DEV_KVM} does not exist; set vm.accel = "tcg"')
        if problems:
            raise UsageError(
                f"VM {spec.name!r} cannot run:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    def create(self, spec: VMSpec) -> None:
        self.validate(spec)
        if self._lookup(spec.name) is not None:
            raise BackendError(
                f"a stale VM named {spec.name} exists: remove it with `cowork vm down {spec.name}`"
            )
        host = self.host_context()
        if host.system_mode and (problem := kvm_device_problem()) is not None:
            log.warning("%s", problem)
            self._emit(Kind.VM_WARNING, name=spec.name, warning=problem)
        xml = domain_xml(spec, host=host)
        conn = self._connect()
        self._emit(Kind.VM_CREATING, name=spec.name, accel=str(spec.accel))
        try:
            conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise translate(exc, f"define VM {spec.name}", self.uri, spec.name) from exc

    def start(self, name: str) -> None:
        dom = self._require(name)
        self._call(f"start VM {name}", dom.create)
        status = self._status_of(dom)
        self._emit(
            Kind.VM_STARTED,
            name=name,
            accel=str(status.accel) if status.accel else None,
            pid=status.pid,
        )

    def save(self, name: str, state_file: Path) -> None:
        """Save running VM ``name`` with its memory to ``state_file``; the VM is then gone
        from the hypervisor's running set (its persistent definition, if any, stays)."""
        dom = self._require(name)
        try:
            dom.save(str(state_file))
        except libvirt.libvirtError as exc:
            raise translate(exc, f"save VM {name} to {state_file}", self.uri, name) from exc
        self._emit(Kind.VM_STOPPED, name=name, how="saved")

    def restore(self, state_file: Path, spec: VMSpec, work_file: Path) -> None:
        """Start a new (transient) VM from ``state_file`` with ``spec``'s name and host
        paths: disks, shares, channel socket and console log are replaced by the spec's, and
        the VM gets a fresh UUID and generation ID. The guest's devices must match.

        libvirt refuses a restore under another name or UUID than the saved one, so the
        state is copied to ``work_file`` with the new definition in its header first (the
        copy is removed once QEMU has read it).
        """
        self.validate(spec)
        if self._lookup(spec.name) is not None:
            raise BackendError(
                f"a stale VM named {spec.name} exists: remove it with `cowork vm down {spec.name}`"
            )
        try:
            xml = copy_saved_image(state_file, work_file, lambda saved: restore_xml(saved, spec))
        except (OSError, ValueError) as exc:
            work_file.unlink(missing_ok=True)
            raise BackendError(f"the saved VM {state_file} is unusable: {exc}") from exc
        conn = self._connect()
        # Said before the VM exists, as for a definition: whoever records VMs to clean up
        # after a crash (the service) must know this one too.
        self._emit(Kind.VM_CREATING, name=spec.name, accel=str(spec.accel), restored=True)
        try:
            conn.restoreFlags(str(work_file), xml, 0)
        except libvirt.libvirtError as exc:
            raise translate(
                exc, f"restore VM {spec.name} from {state_file}", self.uri, spec.name
            ) from exc
        finally:
            work_file.unlink(missing_ok=True)
        self._emit(Kind.VM_STARTED, name=spec.name, accel=str(spec.accel), restored=True)

    def stop(self, name: str, timeout: float) -> None:
        dom = self._require(name)
        if not self._call(f"check VM {name}", dom.isActive):
            return
        how = "graceful"
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            how = "forced"  # the guest cannot be asked (no ACPI yet): force it
        deadline = time.monotonic() + max(0.0, timeout)
        while how == "graceful" and self._active(dom):
            if time.monotonic() >= deadline:
                how = "forced"
                break
            time.sleep(STOP_POLL_SECONDS)
        if how == "forced":
            self._force_off(dom, name)
        self._emit(Kind.VM_STOPPED, name=name, how=how)

    def destroy(self, name: str) -> None:
        check_name(name)
        dom = self._lookup(name)
        if dom is None:
            return
        self._force_off(dom, name)
        try:
            if dom.isPersistent():
                self._undefine(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise translate(exc, f"remove VM {name}", self.uri) from exc
        self._emit(Kind.VM_STOPPED, name=name, how="destroyed")

    def status(self, name: str) -> VMStatus:
        check_name(name)
        dom = self._lookup(name)
        if dom is None:
            return VMStatus(name=name, state=VMState.MISSING)
        return self._status_of(dom)

    def list(self) -> list[VMStatus]:
        conn = self._connect()
        doms = self._call("list VMs", lambda: conn.listAllDomains(0))
        out = []
        for dom in doms:
            name = str(dom.name())
            if name.startswith(NAME_PREFIX):
                try:
                    out.append(self._status_of(dom))
                except BackendError:
                    continue  # undefined between listing and asking: it is gone
        return sorted(out, key=lambda s: s.name)

    # --- helpers --------------------------------------------------------------------
    def _active(self, dom: Any) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise translate(exc, f"check VM {dom.name()}", self.uri) from exc

    def _force_off(self, dom: Any, name: str) -> None:
        if not self._active(dom):
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            # It may have stopped on its own between the check and the destroy.
            if self._active(dom):
                raise translate(exc, f"force off VM {name}", self.uri) from exc

    def _undefine(self, dom: Any) -> None:
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (
                libvirt.VIR_ERR_NO_SUPPORT,
                libvirt.VIR_ERR_INVALID_ARG,
            ):
                raise
            dom.undefine()

    def _status_of(self, dom: Any) -> VMStatus:
        name = str(dom.name())
        try:
            code = int(dom.state()[0])
            root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 (from the local libvirt daemon)
        except libvirt.libvirtError as exc:
            raise translate(exc, f"read the state of VM {name}", self.uri) from exc
        state = _STATES.get(code, VMState.RUNNING)
        accel = ACCEL_FOR_DOMAIN_TYPE.get(str(root.get("type")))
        pid = started = None
        if state in (VMState.RUNNING, VMState.PAUSED) and self._driver() == "QEMU":
            pid = _qemu_pid(name, any_user=_is_system(self.uri))
            started = _process_start(pid) if pid is not None else None
        return VMStatus(name=name, state=state, accel=accel, pid=pid, started_at=started)


#: libvirt's QEMU save image header (libvirt 9): magic, then 19 native-endian uint32s of which
#: the first five are version, data length, was-running, compressed and cookie offset; the
#: data (domain XML, NUL, cookie XML, NUL, zero padding) follows, then QEMU's stream.
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_HEADER = struct.Struct("=16s19I")
SAVE_VERSION = 2


def rewrite_saved_header(head: bytes, edit: Callable[[str], str]) -> tuple[bytes, str]:
    """``head`` (the header and data of a save image) with its domain XML replaced by
    ``edit(xml)``, the cookie moved behind it; and the new XML. Pure. Raises ValueError for
    another format or when the new XML does not fit the data's padding."""
    if len(head) < SAVE_HEADER.size:
        raise ValueError("too short for a libvirt save image")
    fields = list(SAVE_HEADER.unpack_from(head))
    magic, version, data_len, _running, compressed, cookie_off = fields[:6]
    if magic != SAVE_MAGIC or version != SAVE_VERSION or compressed != 0:
        raise ValueError("not an uncompressed libvirt save image of version 2")
    data = head[SAVE_HEADER.size : SAVE_HEADER.size + data_len]
    if len(data) != data_len or not 0 < cookie_off <= data_len:
        raise ValueError("the save image's header is damaged")
    xml = data[: data.index(b"\0")].decode()
    cookie = data[cookie_off : data.index(b"\0", cookie_off)]
    new_xml = edit(xml)
    body = new_xml.encode() + b"\0"
    new_cookie_off = len(body)
    body += cookie + b"\0"
    if len(body) > data_len:
        raise ValueError("the new definition does not fit the save image")
    fields[5] = new_cookie_off
    return SAVE_HEADER.pack(*fields) + body + b"\0" * (data_len - len(body)), new_xml


def copy_saved_image(src: Path, dst: Path, edit: Callable[[str], str]) -> str:
    """Copy save image ``src`` to ``dst`` (private) with its XML edited; return the XML."""
    with open(src, "rb") as f:
        head = f.read(SAVE_HEADER.size)
        if len(head) < SAVE_HEADER.size:
            raise ValueError("too short for a libvirt save image")
        data_len = SAVE_HEADER.unpack_from(head)[2]
        head += f.read(data_len)
        new_head, xml = rewrite_saved_header(head, edit)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(new_head)
            out.flush()
            _copy_rest(f, out)
    return xml


def _copy_rest(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy ``src`` from its offset to its end onto ``dst`` at the same offset, inside the
    kernel (``copy_file_range``: shared extents where the file system can, e.g. XFS or
    btrfs), falling back to a plain copy."""
    offset = src.tell()
    size = os.fstat(src.fileno()).st_size
    try:
        while offset < size:
            n = os.copy_file_range(
                src.fileno(), dst.fileno(), size - offset, offset_src=offset, offset_dst=offset
            )
            if n == 0:
                break
            offset += n
        if offset >= size:
            return
    except OSError:
        pass
    src.seek(offset)
    dst.seek(offset)
    shutil.copyfileobj(src, dst, 8 * 1024 * 1024)


def _qemu_pid(name: str, *, any_user: bool, proc: Path = Path("/proc")) -> int | None:
    """The QEMU process running domain ``name`` (its argv has ``-name guest=NAME,``)."""
    marker = f"guest={name},".encode()
    uid = os.getuid()
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if not any_user and entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = bool(argv) and Path(argv[0].decode(errors="replace")).name.startswith(
            "qemu-system"
        )
        if is_qemu and any(arg.startswith(marker) for arg in argv):
            return int(entry.name)
    return None


def _process_start(pid: int, proc: Path = Path("/proc")) -> float | None:
    """When process ``pid`` started, in epoch seconds (from /proc; None if unknown)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[19])  # field 22 of stat, counted after "pid (comm)"
        btime = next(
            int(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
