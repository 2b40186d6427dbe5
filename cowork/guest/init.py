"""PID 1 of the cowork guest: turn the seed into a sealed, ready guest, then keep it running.

Standard library only; runs inside the VM as root, started by the image's bootstrap
(``images/cowork-boot``) as ``python3 -m cowork.guest.init`` with the guest code unpacked in
:data:`~cowork.guest.contract.GUEST_LIB_DIR`.

Order of work (each step logs to :data:`~cowork.guest.contract.GUEST_LOG` and the console):
kernel modules, loopback up, the per-session SSH host key, authorized key and sshd
configuration (``sshd -t`` then runs in the background), hostname, the agent user, the 9p
mounts (workspace first, then the read-only ``.claude`` folders on top), extra CA
certificates, the environment, ``/dev/virtio-ports`` links, permissions, then the line
``COWORK-READY <session>`` on the console, then the channel relay in a forked child.

Contract:
- Fail closed: if any step before readiness fails (a mount is missing, a key cannot be
  written), the guest prints ``COWORK-FAILED <reason>`` instead of the ready line, syncs
  and powers off. A guest that printed ``COWORK-READY`` has every mount of the seed in place
  with the requested read-only flag. The one check that runs beside readiness instead of
  before it is ``sshd -t`` on the session's configuration: sshd refuses to serve a
  configuration it cannot load anyway, and a failed check prints ``COWORK-FAILED`` and
  powers off.
- A template guest (warm start) does every session-independent step before it is saved
  (modules, /dev, loopback, hidden processes, imports, the first programs' pages) and nothing
  session-specific; a restored guest reseeds its random state before anything else.
- The agent user has the seed's uid/gid, no password, no supplementary groups; any other
  account using that uid, gid or name is replaced.
- Everything under ``/run/cowork`` except ``lib`` (and the public authorized_keys that sshd
  reads as the agent) is root-only; so is the seed device.
- As PID 1 it reaps every orphan, restarts the relay if it dies, and on SIGTERM/SIGINT syncs
  and powers off. An ACPI power button press (libvirt's graceful shutdown, QEMU's
  ``system_powerdown``) becomes SIGTERM; Ctrl-Alt-Del becomes SIGINT (the kernel's
  immediate reboot on Ctrl-Alt-Del is switched off).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cowork.guest import contract
from cowork.guest.contract import Mount, Seed

RUN_DIR = "/run/cowork"
SSH_DIR = "/run/cowork/ssh"
HOST_KEY_PATH = "/run/cowork/ssh/host_key"
AUTHORIZED_KEYS_PATH = "/run/cowork/ssh/authorized_keys"
SSHD_CONFIG_PATH = "/run/cowork/ssh/sshd_config"
SSHD_PRIVSEP_DIR = "/run/sshd"
SSHD_ARGV = ["/usr/sbin/sshd", "-i", "-e", "-f", SSHD_CONFIG_PATH]
SSHD_CHECK_ARGV = ["/usr/sbin/sshd", "-t", "-f", SSHD_CONFIG_PATH]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_CA_DIR = "/usr/local/share/ca-certificates"
VIRTIO_PORTS_DIR = "/dev/virtio-ports"
READY_MARKER = "COWORK-READY"
FAILED_MARKER = "COWORK-FAILED"
MODULES = ("9p", "9pnet_virtio", "virtio_console", "virtio_rng", "button", "evdev", "overlay")
NINEP_MSIZE = 512000
AGENT_SHELL = "/bin/bash"
AGENT_GECOS = "cowork agent"
RELAY_RESTART_DELAY = 1.0
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
#: With Ctrl-Alt-Del "off", the kernel sends SIGINT to PID 1 instead of rebooting at once.
LINUX_REBOOT_CMD_CAD_OFF = 0
#: The ACPI power button (what libvirt's graceful shutdown presses) as an input device.
POWER_BUTTON_NAME = "Power Button"
EV_KEY = 1
KEY_POWER = 116
#: struct input_event on 64-bit Linux: struct timeval, __u16 type, __u16 code, __s32 value.
INPUT_EVENT = struct.Struct("@qqHHi")
SEED_DEVICE_ENV = "COWORK_SEED_DEVICE"

#: Guest groups that own system files or devices: the agent's gid must never become one.
PRIVILEGED_GROUPS = frozenset(
    {"root", "adm", "tty", "disk", "kmem", "sudo", "shadow", "utmp", "staff", "kvm"}
)

_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAG = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")


class InitError(Exception):
    """A step before readiness failed; the guest must not announce itself ready."""


# --- pure parts (unit-tested on the host) --------------------------------------------------
def find_seed_device(sys_root: str = "/sys", serial: str = contract.SEED_SERIAL) -> str | None:
    """``/dev/<name>`` of the block device whose ``serial`` is ``serial``, else None."""
    block = Path(sys_root) / "block"
    try:
        names = sorted(os.listdir(block))
    except OSError:
        return None
    for name in names:
        try:
            found = (block / name / "serial").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if found == serial:
            return f"/dev/{name}"
    return None


def virtio_port_links(sys_root: str = "/sys") -> dict[str, str]:
    """Port name -> device name (``vport0p1``) from ``/sys/class/virtio-ports``."""
    base = Path(sys_root) / "class" / "virtio-ports"
    out: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for dev in entries:
        try:
            name = (base / dev / "name").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name and "/" not in name and name not in (".", ".."):
            out[name] = dev
    return out


def power_button_devices(sys_root: str = "/sys") -> list[str]:
    """``/dev/input/eventN`` of every input device named "Power Button"."""
    base = Path(sys_root) / "class" / "input"
    out: list[str] = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        if not entry.startswith("event"):
            continue
        try:
            name = (base / entry / "device" / "name").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name == POWER_BUTTON_NAME:
            out.append(f"/dev/input/{entry}")
    return out


def power_pressed(data: bytes) -> bool:
    """Whether a read from an event device holds a press of the power key."""
    size = INPUT_EVENT.size
    for offset in range(0, len(data) - size + 1, size):
        _, _, etype, code, value = INPUT_EVENT.unpack_from(data, offset)
        if etype == EV_KEY and code == KEY_POWER and value == 1:
            return True
    return False


def mount_options(mount: Mount, msize: int = NINEP_MSIZE) -> str:
    """The ``-o`` options for a 9p share (``ro`` as well as the host's ``readonly=on``)."""
    opts = ["trans=virtio", "version=9p2000.L", f"msize={msize}"]
    if mount.readonly:
        opts.append("ro")
    return ",".join(opts)


@dataclass(frozen=True)
class MountCall:
    """The arguments of one mount(2) call."""

    source: str
    target: str
    fstype: str
    flags: int
    data: str


#: mount(2) flags (linux/mount.h).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20


def mount_call(mount: Mount, msize: int = NINEP_MSIZE) -> MountCall:
    """The mount(2) call for a 9p share: what ``mount -t 9p -o OPTIONS TAG TARGET`` does,
    with ``ro`` as the MS_RDONLY flag (the host's ``readonly=on`` is the boundary)."""
    if not _TAG.match(mount.tag):
        raise InitError(f"mount tag {mount.tag!r} is not a valid 9p tag")
    if not mount.target.startswith("/") or ".." in mount.target.split("/"):
        raise InitError(f"mount target {mount.target!r} must be an absolute path without '..'")
    data = ",".join(o for o in mount_options(mount, msize).split(",") if o != "ro")
    flags = MS_RDONLY if mount.readonly else 0
    return MountCall(mount.tag, mount.target, "9p", flags, data)


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def _unescape_mount_field(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_proc_mounts(text: str) -> list[MountEntry]:
    """Entries of ``/proc/mounts`` (octal escapes such as ``\\040`` decoded)."""
    out: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        out.append(
            MountEntry(
                source=_unescape_mount_field(fields[0]),
                target=_unescape_mount_field(fields[1]),
                fstype=fields[2],
                options=tuple(fields[3].split(",")),
            )
        )
    return out


def check_mounts(expected: Sequence[Mount], proc_mounts: str) -> None:
    """Raise InitError unless each expected share is the top-most mount at its target, is
    9p from the expected tag, and is read-only when asked."""
    entries = parse_proc_mounts(proc_mounts)
    for want in expected:
        target = os.path.normpath(want.target)
        at_target = [e for e in entries if e.target == target]
        if not at_target:
            raise InitError(f"share {want.tag} is not mounted at {target}")
        top = at_target[-1]
        if top.fstype != "9p" or top.source != want.tag:
            raise InitError(f"{target} is {top.fstype} from {top.source}, not 9p share {want.tag}")
        if want.readonly and not top.readonly:
            raise InitError(f"share {want.tag} at {target} is writable but must be read-only")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise InitError(f"{kind} name {name!r} is not a plain account name")


def replace_passwd(text: str, user: str, uid: int, gid: int, home: str, shell: str) -> str:
    """``/etc/passwd`` with ``user`` added, dropping any entry with that name or uid."""
    _check_name("user", user)
    if uid <= 0 or gid <= 0:
        raise InitError(f"agent uid/gid {uid}/{gid} must not be root (0)")
    kept = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == user or fields[2] == str(uid)):
            continue
        if line:
            kept.append(line)
    kept.append(f"{user}:x:{uid}:{gid}:{AGENT_GECOS}:{home}:{shell}")
    return "\n".join(kept) + "\n"


def replace_group(text: str, group: str, gid: int, member_to_drop: str) -> str:
    """``/etc/group`` with ``group`` (gid ``gid``, no members) added, any entry with that name
    or gid dropped, and ``member_to_drop`` removed from every other group's member list."""
    _check_name("group", group)
    if gid <= 0:
        raise InitError(f"agent gid {gid} must not be root (0)")
    kept = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4:
            if line:
                kept.append(line)
            continue
        if fields[2] == str(gid) and fields[0] in PRIVILEGED_GROUPS:
            raise InitError(
                f"agent gid {gid} is the guest's {fields[0]} group, which owns system files; "
                "the agent cannot be given it (run cowork as a user with an ordinary group)"
            )
        if fields[0] == group or fields[2] == str(gid):
            continue
        members = [m for m in fields[3].split(",") if m and m != member_to_drop]
        kept.append(":".join([*fields[:3], ",".join(members)]))
    kept.append(f"{group}:x:{gid}:")
    return "\n".join(kept) + "\n"


def replace_shadow(text: str, user: str, uid_names: Iterable[str] = ()) -> str:
    """``/etc/shadow`` with ``user`` locked (``*``: no password can ever match), dropping
    entries for ``user`` and for the names of accounts removed from passwd."""
    drop = {user, *uid_names}
    kept = [line for line in text.splitlines() if line and line.split(":", 1)[0] not in drop]
    kept.append(f"{user}:*:19000:0:99999:7:::")
    return "\n".join(kept) + "\n"


def passwd_names_with_uid(text: str, uid: int) -> list[str]:
    out = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(uid):
            out.append(fields[0])
    return out


_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def authorized_keys_line(key: str) -> str:
    """The one ``authorized_keys`` line for the host's client key: a bare public key (type,
    base64, optional comment) on one line, with no options such as ``command=`` and no
    second key smuggled in on another line."""
    line = key.strip()
    if any(c in line for c in "\r\n\0"):
        raise InitError("the seed's authorized key spans several lines")
    words = line.split()
    if len(words) < 2 or words[0] not in _KEY_TYPES:
        raise InitError("the seed's authorized key is not a bare OpenSSH public key")
    try:
        base64.b64decode(words[1], validate=True)
    except ValueError as exc:
        raise InitError("the seed's authorized key has a corrupt body") from exc
    return line + "\n"


def environment_file(env: dict[str, str]) -> str:
    """``/etc/environment`` text. Raises InitError for a name or value it cannot carry."""
    lines = []
    for key, value in sorted(env.items()):
        if not _ENV_KEY.match(key):
            raise InitError(f"environment variable name {key!r} is not valid")
        if any(c in value for c in '"\\\n\r\0'):
            raise InitError(f"environment variable {key} has a quote, backslash or newline")
        lines.append(f'{key}="{value}"')
    return "".join(line + "\n" for line in lines)


PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"


def check_pem_certificate(pem: str) -> str:
    """``pem`` stripped, if it is exactly one PEM certificate; else InitError. A malformed
    entry must not reach the system bundle, where it could break TLS for every program."""
    pem = pem.strip()
    lines = pem.splitlines()
    if len(lines) < 3 or lines[0] != PEM_BEGIN or lines[-1] != PEM_END:
        raise InitError("a CA certificate in the seed is not one PEM certificate")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError as exc:
        raise InitError("a CA certificate in the seed has a corrupt body") from exc
    if not der.startswith(b"\x30"):  # a DER SEQUENCE
        raise InitError("a CA certificate in the seed is not DER inside")
    return pem


def ca_bundle_addition(existing: str, certs: Sequence[str]) -> str:
    """Text to append to the CA bundle: each certificate not already in it."""
    out = []
    for cert in certs:
        pem = check_pem_certificate(cert)
        if pem not in existing:
            out.append(pem + "\n")
    prefix = "" if not out or existing.endswith("\n") or not existing else "\n"
    return prefix + "".join(out)


# --- effects -----------------------------------------------------------------------------------
class Log:
    """Writes each line to the init log (root-only) and the console."""

    def __init__(self, path: str = contract.GUEST_LOG) -> None:
        self._file = None
        try:
            os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "a", buffering=1)
        except OSError:
            self._file = None

    def fileno(self) -> int | None:
        return self._file.fileno() if self._file is not None else None

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic():8.3f}] cowork-init: {message}"
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.write(line + "\n")
        console(line)


def console(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise InitError(f"{' '.join(argv)} failed ({done.returncode}): {detail}")


def _mount(call: MountCall) -> None:
    """mount(2) directly: under software emulation each /bin/mount costs a process start."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
    )  # fmt: skip
    done = libc.mount(
        call.source.encode(), call.target.encode(), call.fstype.encode(), call.flags,
        call.data.encode(),
    )  # fmt: skip
    if done != 0:
        err = ctypes.get_errno()
        raise InitError(
            f"mount {call.fstype} {call.source} on {call.target} ({call.data}) failed: "
            f"{os.strerror(err)}"
        )


def _write(path: str, text: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    tmp = f"{path}.cowork-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_modules(log: Log, extra: Sequence[str] = ()) -> None:
    """Load what the image's initrd has not loaded already (one modprobe for all)."""
    names = [*MODULES, *extra]
    done = subprocess.run(
        ["/sbin/modprobe", "-a", "-q", *names], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        log(f"modprobe {' '.join(names)} failed ({done.stderr.strip()}); carrying on")


def loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, ifreq))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def prepare_dev() -> None:
    """What udev and systemd would provide in /dev: ptys for interactive shells, /dev/shm for
    POSIX semaphores (Python's multiprocessing), and /dev/fd for bash's <(...)."""
    for path in ("/dev/pts", "/dev/shm"):
        os.makedirs(path, mode=0o755, exist_ok=True)
    if not os.path.ismount("/dev/pts"):
        _run(["/bin/mount", "-t", "devpts", "-o", "nosuid,noexec,gid=5,mode=620,ptmxmode=666",
              "devpts", "/dev/pts"])  # fmt: skip
    if not os.path.ismount("/dev/shm"):
        _run(["/bin/mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", "/dev/shm"])
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        if not os.path.lexists(f"/dev/{name}"):
            os.symlink(target, f"/dev/{name}")


def set_hostname(name: str) -> None:
    _check_name("host", name)
    socket.sethostname(name)
    _write("/etc/hostname", name + "\n", 0o644)
    _write("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost\n", 0o644)


def create_agent(seed: Seed) -> None:
    user, uid, gid = contract.AGENT_USER, seed.agent_uid, seed.agent_gid
    passwd = Path("/etc/passwd").read_text(encoding="utf-8")
    displaced = [n for n in passwd_names_with_uid(passwd, uid) if n != user]
    group = Path("/etc/group").read_text(encoding="utf-8")
    shadow = Path("/etc/shadow").read_text(encoding="utf-8")
    _write(
        "/etc/passwd",
        replace_passwd(passwd, user, uid, gid, contract.AGENT_HOME, AGENT_SHELL),
        0o644,
    )
    _write("/etc/group", replace_group(group, user, gid, user), 0o644)
    _write("/etc/shadow", replace_shadow(shadow, user, displaced), 0o640, 0, _shadow_gid())
    gshadow = Path("/etc/gshadow")
    if gshadow.exists():
        lines = [
            ln
            for ln in gshadow.read_text(encoding="utf-8").splitlines()
            if ln and ln.split(":", 1)[0] != user
        ]
        _write(str(gshadow), "\n".join([*lines, f"{user}:!::"]) + "\n", 0o640, 0, _shadow_gid())
    home = contract.AGENT_HOME
    os.makedirs(home, mode=0o755, exist_ok=True)
    os.chown(home, uid, gid)
    os.chmod(home, 0o755)  # noqa: S103 -- the agent's own home, owned by the agent


def _shadow_gid() -> int:
    for line in Path("/etc/group").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == "shadow":
            return int(fields[2])
    return 0


def check_plain_path(target: str) -> None:
    """Raise InitError if any component of ``target`` is a symlink: a shared folder could
    hold one (``.claude -> /etc``) and mount(8) would follow it."""
    if os.path.realpath(target) != os.path.normpath(target):
        raise InitError(f"mount target {target} goes through a symbolic link; refusing it")


def mount_shares(mounts: Sequence[Mount], log: Log) -> None:
    for mount in mounts:
        call = mount_call(mount)
        try:
            check_plain_path(os.path.dirname(mount.target))
            os.makedirs(mount.target, mode=0o755, exist_ok=True)
            check_plain_path(mount.target)
            _mount(call)
        except Exception as exc:
            raise RuntimeError(f"share {mount.tag} at {mount.target}: {exc}") from exc
        log(f"mounted {mount.tag} at {mount.target}{' read-only' if mount.readonly else ''}")
    check_mounts(mounts, Path("/proc/mounts").read_text(encoding="utf-8"))


# --- staged workspace (overlay over the read-only share) ----------------------------------
def staged_mount_plan(seed: Seed) -> tuple[Mount, list[Mount]]:
    """The workspace share moved to the overlay's lower directory, and the other shares.

    Raises InitError unless the workspace share is read-only: staged mode relies on the
    host refusing writes, the overlay only gives the agent somewhere else to write."""
    from cowork.guest import changes

    found = [m for m in seed.mounts if m.tag == contract.TAG_WORKSPACE]
    if len(found) != 1 or found[0].target != contract.WORKSPACE_MOUNT:
        raise InitError("staged mode needs exactly one workspace share at /workspace")
    if not found[0].readonly:
        raise InitError("staged mode needs the workspace share read-only; refusing to start")
    lower = Mount(found[0].tag, changes.LOWER_DIR, True)
    return lower, [m for m in seed.mounts if m is not found[0]]


def overlay_options(lower: str, upper: str, work: str) -> str:
    # redirect_dir/metacopy/index off: a renamed folder is copied up whole, so the upper
    # layer alone describes every change (no redirects to follow into the lower layer).
    return (
        f"lowerdir={lower},upperdir={upper},workdir={work},"
        "redirect_dir=off,metacopy=off,index=off,xino=off"
    )


def mount_staged_workspace(seed: Seed, log: Log) -> None:
    """Mount the read-only share under the root-only staging folder, the overlay on
    ``/workspace`` (upper and work dirs on the session disk), then the other shares."""
    from cowork.guest import changes

    lower, others = staged_mount_plan(seed)
    os.makedirs(changes.STAGED_ROOT, mode=0o700, exist_ok=True)
    os.chown(changes.STAGED_ROOT, 0, 0)
    os.chmod(changes.STAGED_ROOT, 0o700)
    for path in (changes.LOWER_DIR, changes.UPPER_DIR, changes.WORK_DIR):
        os.makedirs(path, mode=0o755, exist_ok=True)
    mount_shares([lower], log)
    # The merged root takes the upper root's owner and mode: make them the lower root's, so
    # the agent owns its workspace as it does on the host.
    st = os.stat(changes.LOWER_DIR)
    os.chown(changes.UPPER_DIR, st.st_uid, st.st_gid)
    os.chmod(changes.UPPER_DIR, stat.S_IMODE(st.st_mode))
    os.makedirs(contract.WORKSPACE_MOUNT, mode=0o755, exist_ok=True)
    check_plain_path(contract.WORKSPACE_MOUNT)
    opts = overlay_options(changes.LOWER_DIR, changes.UPPER_DIR, changes.WORK_DIR)
    _mount(MountCall("cowork-staged", contract.WORKSPACE_MOUNT, "overlay", 0, opts))
    log(f"staged workspace: overlay on {contract.WORKSPACE_MOUNT} over {changes.LOWER_DIR}")
    mount_shares(others, log)
    entries = parse_proc_mounts(Path("/proc/mounts").read_text(encoding="utf-8"))
    top = [e for e in entries if e.target == contract.WORKSPACE_MOUNT]
    if not top or top[-1].fstype != "overlay":
        raise InitError("the staged workspace overlay is not mounted on /workspace")


def start_changes_server(seed: Seed, log: Log) -> None:
    """Serve the change set (root reads the upper layer; only the agent's uid may ask).

    Its threads start with PID 1's signals blocked, so SIGTERM, SIGINT and SIGCHLD stay
    pending for the supervisor's ``sigtimedwait`` instead of landing in a server thread."""
    from cowork.guest import changes

    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        changes.serve(changes.SOCKET_PATH, seed.agent_uid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    log(f"change set served on {changes.SOCKET_PATH}")


def write_ssh_files(seed: Seed) -> subprocess.Popen[bytes]:
    """Write the session's host key, authorized key and sshd configuration; start ``sshd -t``
    on them in the background and return it (:func:`supervise` acts on its result)."""
    os.makedirs(SSH_DIR, mode=0o711, exist_ok=True)
    os.chown(SSH_DIR, 0, 0)
    # sshd reads authorized_keys as the agent (and checks it is root-owned, not writable by
    # others): the public key is readable, nothing here is writable by the agent.
    os.chmod(SSH_DIR, 0o711)  # noqa: S103 -- traversable, not listable or writable
    host_key = seed.host_key if seed.host_key.endswith("\n") else seed.host_key + "\n"
    _write(HOST_KEY_PATH, host_key, 0o600)
    _write(AUTHORIZED_KEYS_PATH, authorized_keys_line(seed.authorized_key), 0o644)
    os.makedirs(SSHD_PRIVSEP_DIR, mode=0o755, exist_ok=True)
    os.chmod(SSHD_PRIVSEP_DIR, 0o755)  # noqa: S103 -- sshd requires root 0755
    from cowork.guest import sshd

    text = sshd.sshd_config(
        host_key=HOST_KEY_PATH,
        authorized_keys=AUTHORIZED_KEYS_PATH,
        user=contract.AGENT_USER,
        env=dict(seed.env),
        proxy_port=contract.PROXY_PORT,
    )
    _write(SSHD_CONFIG_PATH, text, 0o600)
    return subprocess.Popen(
        SSHD_CHECK_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


#: Started beside the setup: the programs the first command of a session runs (the channel's
#: job script), so that their first, slow start is not on the way to the first command.
SHELL_WARMUP_ARGV = ["/bin/bash", "-c", "/usr/bin/mkdir --version"]


def start_shell_warmup() -> None:
    """Start :data:`SHELL_WARMUP_ARGV` as root in the background (reaped by the supervisor);
    it reads nothing of the session."""
    with contextlib.suppress(OSError):
        subprocess.Popen(
            SHELL_WARMUP_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip


def install_ca_certs(certs: Sequence[str]) -> None:
    if not certs:
        return
    bundle = Path(CA_BUNDLE)
    existing = bundle.read_text(encoding="utf-8") if bundle.exists() else ""
    addition = ca_bundle_addition(existing, certs)
    os.makedirs(LOCAL_CA_DIR, mode=0o755, exist_ok=True)
    for i, cert in enumerate(certs):
        _write(f"{LOCAL_CA_DIR}/cowork-{i}.crt", check_pem_certificate(cert) + "\n", 0o644)
    if addition:
        _write(CA_BUNDLE, existing + addition, 0o644)


def link_virtio_ports(log: Log) -> dict[str, str]:
    links = virtio_port_links()
    os.makedirs(VIRTIO_PORTS_DIR, mode=0o755, exist_ok=True)
    for name, dev in links.items():
        link = f"{VIRTIO_PORTS_DIR}/{name}"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(f"../{dev}", link)
        os.chown(f"/dev/{dev}", 0, 0)
        os.chmod(f"/dev/{dev}", 0o600)
        log(f"port {name} is /dev/{dev}")
    return links


def lock_down(seed_device: str) -> None:
    os.chown(seed_device, 0, 0)
    os.chmod(seed_device, 0o600)
    os.chmod(RUN_DIR, 0o711)  # noqa: S103 -- the agent reaches lib/ but cannot list
    for entry in os.listdir(RUN_DIR):
        path = f"{RUN_DIR}/{entry}"
        if entry in ("lib", "ssh") or os.path.islink(path):
            continue
        os.chown(path, 0, 0)
        os.chmod(path, 0o700 if os.path.isdir(path) else 0o600)


def read_seed(device: str) -> Seed:
    with open(device, "rb") as f:
        head = f.read(64)
        newline = head.find(b"\n")
        if newline < 0:
            raise InitError(f"{device} is not a cowork seed disk")
        try:
            length = int(head[:newline].split(b" ")[2])
        except (IndexError, ValueError) as exc:
            raise InitError(f"{device} has a malformed seed header") from exc
        if not 0 < length <= contract.SEED_MAX_BYTES:
            raise InitError(f"{device}: seed length {length} out of range")
        f.seek(0)
        data = f.read(newline + 1 + length)
    try:
        return contract.decode_seed(data)
    except (ValueError, TypeError) as exc:
        raise InitError(f"{device}: {exc}") from exc


# --- warm start: template wait and reseed (see cowork.host.warm) ---------------------------
#: ioctls on /dev/urandom (linux/random.h) and on a block device (linux/fs.h).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
BLKFLSBUF = 0x1261
VMGENID_DRIVER_DIR = "/sys/bus/acpi/drivers/vmgenid"
WARM_POLL_SECONDS = 0.02


def entropy_request(entropy: bytes) -> bytes:
    """The ``struct rand_pool_info`` for RNDADDENTROPY: credit 8 bits per byte given."""
    return struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy


def decode_entropy(text: str) -> bytes:
    """The seed's entropy, or InitError if it is missing or too short (fail closed)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InitError("the seed's entropy is not base64") from exc
    if len(raw) < contract.ENTROPY_BYTES:
        raise InitError(
            f"the seed carries {len(raw)} bytes of entropy; a restored guest needs at least "
            f"{contract.ENTROPY_BYTES} before it makes a key or runs anything"
        )
    return raw


def vmgenid_bound(driver_dir: str = VMGENID_DRIVER_DIR) -> bool:
    """Whether the kernel's vmgenid driver is bound to a generation ID device: it then
    reseeds the kernel's random number generator when the hypervisor changes the ID."""
    try:
        return any(":" in entry for entry in os.listdir(driver_dir))
    except OSError:
        return False


def warm_reseed(seed: Seed, log: Log, urandom: str = "/dev/urandom") -> None:
    """Mix the seed's fresh host entropy into the kernel and force a reseed, and check the
    generation ID driver where the host says the VM has the device. Raises InitError if
    either is missing: a restored guest shares its random state with every other clone of
    the template until this has happened."""
    raw = decode_entropy(seed.entropy)
    if seed.vmgenid:
        if not vmgenid_bound():  # a template loads the driver before it is saved
            subprocess.run(["/sbin/modprobe", "-q", "vmgenid"], capture_output=True, check=False)
        if not vmgenid_bound():
            raise InitError("the VM has a generation ID device but the vmgenid driver is absent")
    fd = os.open(urandom, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, entropy_request(raw))
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    log(f"random state reseeded ({len(raw)} bytes of host entropy, vmgenid {seed.vmgenid})")


def warm_set_clock(seed: Seed, log: Log) -> None:
    """Set the clock of a restored guest from the session seed: it stood still from the
    template's save until now, and certificates made for this session would not yet be
    valid. Never moves the clock back."""
    if seed.host_time > time.time():
        time.clock_settime(time.CLOCK_REALTIME, seed.host_time)
        log(f"clock set to the host's ({seed.host_time:.0f})")


def read_fresh_seed(device: str) -> Seed | None:
    """The seed on ``device`` read past the page cache, or None while it is not readable."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKFLSBUF)
    finally:
        os.close(fd)
    try:
        return read_seed(device)
    except InitError:
        return None


def warm_template_wait(template: Seed, device: str, log: Log) -> Seed:
    """Stop before anything session-specific and wait for the session's seed.

    Only session-independent work happens here (:func:`prepare_template`). Nothing reads the
    kernel's boot ID, makes a key or mounts a share before the host saves the guest: each
    clone then makes its boot ID and keys after its own reseed. The host swaps the seed
    disk's file when it restores a clone; this polls the disk past the page cache until a
    non-template seed appears.
    """
    prepare_template(log)
    log(f"template {template.session}: waiting for a session seed")
    console(f"{contract.TEMPLATE_MARKER} {template.session}")
    while True:
        fresh = read_fresh_seed(device)
        if fresh is not None and not fresh.template and fresh.session != template.session:
            log(f"restored from template {template.session} as session {fresh.session}")
            return fresh
        time.sleep(WARM_POLL_SECONDS)


#: Guest modules the init imports only when a step needs them; a template imports them before
#: it is saved (the guest code is never compiled to bytecode files, so each import compiles).
LAZY_MODULES = (
    "cowork.guest.sshd", "cowork.guest.relay", "cowork.guest.monitor", "cowork.guest.changes",
)  # fmt: skip
#: What every session runs first: the channel's sshd and the agent's shell. A template reads
#: them and their libraries, so a restored guest finds them in memory instead of on disk.
PRIMED_PROGRAMS = ("/usr/sbin/sshd", "/bin/bash", "/usr/bin/mkdir")
PRIMED_FILES = ("/etc/ld.so.cache",)


def ldd_paths(text: str) -> list[str]:
    """Absolute library paths in ``ldd`` output (``name => /path (addr)`` or ``/path (addr)``)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if "=>" in words:
            words = words[words.index("=>") + 1 :]
        if words and words[0].startswith("/"):
            out.append(words[0])
    return out


def prime_page_cache(log: Log) -> None:
    """Read :data:`PRIMED_PROGRAMS`, their libraries and :data:`PRIMED_FILES` once."""
    files = [*PRIMED_PROGRAMS, *PRIMED_FILES]
    for program in PRIMED_PROGRAMS:
        argv = ["/usr/bin/ldd", program]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        files.extend(ldd_paths(done.stdout))
    total = 0
    for path in dict.fromkeys(files):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    log(f"read {total // 1024} KiB of programs and libraries ahead")


def prepare_template(log: Log) -> None:
    """Everything before readiness that does not depend on the session, done once in the
    template: kernel modules (with the generation ID driver), /dev, loopback, hiding other
    users' processes, the init's own lazy imports and the first programs' pages."""
    load_modules(log, extra=("vmgenid",))
    prepare_dev()
    loopback_up()
    hide_processes()
    import importlib

    for name in LAZY_MODULES:
        importlib.import_module(name)
    prime_page_cache(log)


def setup(log: Log) -> tuple[Seed, str, subprocess.Popen[bytes]]:
    """Every step before readiness. Raises InitError (or OSError) on any failure.

    Also returns the check of the sshd configuration, still running (see :func:`supervise`).
    """
    device = os.environ.get(SEED_DEVICE_ENV) or find_seed_device()
    if not device:
        raise InitError(f"no disk with serial {contract.SEED_SERIAL}")
    seed = read_seed(device)
    if seed.template:
        seed = warm_template_wait(seed, device, log)
        warm_reseed(seed, log)
        warm_set_clock(seed, log)
    else:
        if seed.entropy:
            warm_reseed(seed, log)
        load_modules(log)
        prepare_dev()
        loopback_up()
    log(f"seed {device}: session {seed.session}, {len(seed.mounts)} shares")
    # First, so that the configuration check and the shell's first start run beside the
    # steps below (each program's first start in a VM is slow under software emulation).
    sshd_check = write_ssh_files(seed)
    start_shell_warmup()
    set_hostname(seed.hostname)
    create_agent(seed)
    log(f"user {contract.AGENT_USER} uid {seed.agent_uid} gid {seed.agent_gid}")
    if seed.staged:
        mount_staged_workspace(seed, log)
    else:
        mount_shares(seed.mounts, log)
    install_ca_certs(seed.ca_certs)
    _write("/etc/environment", environment_file(dict(seed.env)), 0o644)
    links = link_virtio_ports(log)
    if seed.channel_port not in links:
        raise InitError(f"no virtio-serial port named {seed.channel_port}")
    lock_down(device)
    if seed.staged:
        start_changes_server(seed, log)
    return seed, f"{VIRTIO_PORTS_DIR}/{seed.channel_port}", sshd_check


def hide_processes() -> None:
    """Remount ``/proc`` with ``hidepid=2`` unless it already is."""
    for entry in parse_proc_mounts(Path("/proc/mounts").read_text(encoding="utf-8")):
        hidden = {"hidepid=2", "hidepid=invisible"} & set(entry.options)
        if entry.target == "/proc" and entry.fstype == "proc" and hidden:
            return
    _run(["/bin/mount", "-o", "remount,hidepid=2", "/proc"])


# --- activity monitor --------------------------------------------------------------------------
def start_activity_monitor(log: Log) -> int | None:
    """Hide other users' processes, then start the activity monitor as root (before ready).

    ``/proc`` is remounted ``hidepid=2``: the agent sees only its own processes, so it cannot
    see the monitor, and as a non-root user it can neither signal nor ptrace it. The monitor
    writes to its own root-only virtio-serial port; without that port (a host that did not
    ask for it) nothing is started. Fails closed: an error here fails the boot.
    """
    hide_processes()
    port = f"{VIRTIO_PORTS_DIR}/{contract.MONITOR_PORT}"
    if not os.path.exists(port):
        log("no activity monitor port: monitor not started")
        return None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the guest
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            logfd = log.fileno()
            if logfd is not None:
                os.dup2(logfd, 1)
                os.dup2(logfd, 2)
            from cowork.guest import monitor

            monitor.main([port, contract.WORKSPACE_MOUNT])
        except BaseException as exc:
            log(f"activity monitor failed: {exc!r}")
        os._exit(1)
    log(f"activity monitor started (pid {pid}) on {port}")
    return pid


# --- PID 1 -------------------------------------------------------------------------------------
def power_off() -> NoReturn:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)
    os._exit(1)  # only reached if reboot(2) failed (not PID 1, no CAP_SYS_BOOT)


def start_relay(port_path: str, log: Log) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the guest
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            logfd = log.fileno()
            if logfd is not None:
                os.dup2(logfd, 1)
                os.dup2(logfd, 2)
            from cowork.guest import relay

            relay.serve_forever(port_path, list(SSHD_ARGV))
        except BaseException as exc:
            log(f"relay failed: {exc!r}")
        os._exit(1)
    log(f"relay started (pid {pid}) on {port_path}")
    return pid


def watch_power_button(log: Log) -> None:
    """Turn an ACPI power button press (libvirt's graceful shutdown) into SIGTERM to PID 1."""
    devices = power_button_devices()
    if not devices:
        log("no ACPI power button: graceful shutdown needs SIGTERM or Ctrl-Alt-Del")
        return
    fds = []
    for dev in devices:
        try:
            fds.append(os.open(dev, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            log(f"cannot watch {dev}: {exc.strerror}")

    def loop() -> None:
        import select

        while fds:
            ready, _, _ = select.select(fds, [], [])
            for fd in ready:
                if power_pressed(os.read(fd, INPUT_EVENT.size * 64)):
                    log("power button pressed")
                    os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="power-button", daemon=True).start()


def supervise(port_path: str, log: Log, sshd_check: subprocess.Popen[bytes]) -> NoReturn:
    """Reap every child forever; restart the relay when it exits; power off on TERM/INT.

    ``sshd_check`` (``sshd -t`` on the session's configuration) runs beside the relay's start
    instead of before readiness: under software emulation it costs as much as the rest of a
    restored guest's setup. sshd itself refuses to serve a configuration it cannot load, so
    nothing is served with a bad one either way; when the check fails the guest reports it
    (``COWORK-FAILED``) and powers off.
    """
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.signal(signal.SIGCHLD, lambda *_: None)  # SIG_DFL would discard it
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    relay_pid = start_relay(port_path, log)
    watch_power_button(log)  # after blocking: its thread must not take the signals itself
    relay_died_at: float | None = None
    while True:
        info = signal.sigtimedwait(watched, RELAY_RESTART_DELAY)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            log(f"signal {info.si_signo}: powering off")
            shutdown(log)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == sshd_check.pid:
                check_sshd(status, sshd_check, log)
            if pid == relay_pid:
                log(f"relay exited ({os.waitstatus_to_exitcode(status)}); restarting")
                relay_pid = -1
                relay_died_at = time.monotonic()
        if (
            relay_pid < 0
            and relay_died_at is not None
            and time.monotonic() - relay_died_at >= RELAY_RESTART_DELAY
        ):
            relay_pid = start_relay(port_path, log)
            relay_died_at = None


def check_sshd(status: int, check: subprocess.Popen[bytes], log: Log) -> None:
    """Power off (fail closed, with the reason on the console) unless ``sshd -t`` passed."""
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        log("sshd configuration checked")
        return
    detail = ""
    if check.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            detail = check.stderr.read(4096).decode(errors="replace").strip()
    reason = f"sshd -t refused the configuration ({code}): {detail}"
    log(reason)
    console(f"{FAILED_MARKER} {reason}")
    shutdown(log)


def shutdown(log: Log) -> NoReturn:
    os.sync()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(-1, sig)
        if sig == signal.SIGTERM:
            time.sleep(0.5)
    os.sync()
    log("powering off")
    power_off()


def main() -> NoReturn:
    if os.getpid() != 1:
        # Never act on a host (or anywhere but a fresh guest): this rewrites /etc/passwd.
        sys.stderr.write("cowork-init: not PID 1: refusing to run (this is the guest's init)\n")
        raise SystemExit(2)
    log = Log()
    started = time.monotonic()
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).reboot(LINUX_REBOOT_CMD_CAD_OFF)
    try:
        seed, port_path, sshd_check = setup(log)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log(f"setup failed: {reason}")
        console(f"{FAILED_MARKER} {reason}")
        shutdown(log)
    try:
        start_activity_monitor(log)
    except Exception as exc:
        log(f"activity monitor: {exc!r}")
        console(f"{FAILED_MARKER} activity monitor: {exc}")
        shutdown(log)
    log(f"ready in {time.monotonic() - started:.2f} s after init start")
    console(f"{READY_MARKER} {seed.session}")
    try:
        supervise(port_path, log, sshd_check)
    except BaseException as exc:
        # PID 1 must never return: the kernel would panic and leave the VM hung.
        log(f"supervisor failed: {type(exc).__name__}: {exc}")
        shutdown(log)


if __name__ == "__main__":
    main()
