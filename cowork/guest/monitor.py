"""The guest activity monitor: what runs and changes inside the VM, reported to the host.

Standard library only. Started by the guest's init as root before readiness, in its own
process; it writes JSON lines to a root-only virtio-serial port (the agent user cannot open
it, see ``init.link_virtio_ports``), and ``/proc`` is mounted ``hidepid=invisible`` so the
agent cannot see it (nor signal or ptrace it: it is root's).

Records (one JSON object a line, ``t`` says which, ``time`` is the guest's clock):

- ``hello`` once at start, then ``hb`` every :data:`HEARTBEAT_S` seconds: the host treats a
  silence of a few seconds as "the monitor is gone" and fails closed.
- ``proc``: a program started (``exec``): pid, ppid, uid, exe, argv (truncated, secret-looking
  values masked).
- ``file``: created, modified (closed after writing), deleted, renamed under the watched root.
- ``net``: a failed network attempt: a socket or connect that the kernel refused, or a packet
  with no route out (the guest has no NIC; only the proxy on loopback works).
- ``lost``: the monitor's own queue overflowed or the kernel dropped events (count).

Kernel interfaces, and why:

- Processes: the netlink process connector (``NETLINK_CONNECTOR``, ``CN_IDX_PROC``). It
  reports every fork and exec from the kernel itself, needs no audit daemon or tracing, and
  costs nothing per syscall; the monitor then reads ``/proc/<pid>`` for exe, argv and uid.
  A process that exits before it is read is still reported with its pid and parent. A
  classic BPF filter on the socket keeps only fork and exec, so the other events (exit,
  comm, uid...) never wake the monitor.
- Files: inotify (via ctypes; there is no stdlib binding) on every directory under the root.
  fanotify would see the pid but cannot report creates, deletes and renames on 9p or
  overlayfs without FAN_REPORT_FID support there; inotify sees every change made through the
  guest kernel, which is every change the agent can make. The host ties a change to the tool
  call running at that moment.
- Failed sockets: the kernel's audit netlink socket (``NETLINK_AUDIT``) with one rule:
  ``socket``/``connect``/``sendto`` that fail. It names the pid, uid, exe and error and
  catches what nothing else can (a raw socket refused with EPERM leaves no other trace). No
  audit daemon runs; the monitor is the audit listener. If the kernel has no audit support,
  the monitor falls back to ``/proc/net/snmp`` counters (``OutNoRoutes``,
  ``AttemptFails``), which say that and when, not who; the hello record says which is used.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

HEARTBEAT_S = 1.0
#: Once a record is queued, the writer waits this long for more before it writes: one write
#: to the port (an exit to the hypervisor) per batch instead of per record.
BATCH_WINDOW_S = 0.05
MAX_ARGS = 32
MAX_ARG_LEN = 256
QUEUE_MAX = 20000
#: Directories watched at most (each holds a watch and an open descriptor).
MAX_WATCHED_DIRS = 100000

# --- netlink process connector ---------------------------------------------------------------
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
NLMSG_DONE = 3
NLMSG_HDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
PROC_EVENT_HDR = struct.Struct("=IIQ")

# --- inotify ---------------------------------------------------------------------------------
IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
INOTIFY_EVENT = struct.Struct("=iIII")

# --- audit -----------------------------------------------------------------------------------
NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_SYSCALL = 1300
AUDIT_SOCKADDR = 1306
AUDIT_EOE = 1320
AUDIT_STATUS_ENABLED = 0x1
AUDIT_STATUS_PID = 0x4
AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_ARCH = 11
AUDIT_SUCCESS = 104
AUDIT_EQUAL = 0x40000000
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
#: Syscall numbers of socket, connect, sendto (and sendmsg) per architecture.
NET_SYSCALLS = {
    "x86_64": (AUDIT_ARCH_X86_64, {41: "socket", 42: "connect", 44: "sendto", 46: "sendmsg"}),
    "aarch64": (AUDIT_ARCH_AARCH64, {198: "socket", 203: "connect", 206: "sendto", 211: "sendmsg"}),
}

_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|auth|credential|private[_-]?key)"
)
_SECRET_VALUE = re.compile(
    r"^(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16,}|xox[abpr]-\S{10,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\..*|[A-Fa-f0-9]{40,}|[A-Za-z0-9+/_-]{40,}={0,2})$"
)


def mask_argv(argv: list[str]) -> list[str]:
    """``argv`` cut to :data:`MAX_ARGS` args of :data:`MAX_ARG_LEN` chars, secrets masked.

    Masked: the value after an option whose name looks secret (``--password X``,
    ``--token=X``, ``-p``-style flags are left alone), ``KEY=VALUE`` with a secret-looking key,
    ``Authorization: ...``/``Bearer ...`` values, and values that look like tokens or keys.
    """
    out: list[str] = []
    mask_next = False
    for arg in argv[:MAX_ARGS]:
        if mask_next:
            out.append("***")
            mask_next = False
            continue
        if arg.startswith("-") and "=" not in arg and _SECRET_KEY.search(arg):
            out.append(arg)
            mask_next = True
            continue
        key, eq, _value = arg.partition("=")
        if eq and _SECRET_KEY.search(key):
            out.append(f"{key}=***")
            continue
        low = arg.lower()
        if low.startswith(("authorization:", "bearer ", "cookie:", "x-api-key:")):
            out.append(arg.split(":", 1)[0] + ": ***" if ":" in arg else "Bearer ***")
            continue
        if _SECRET_VALUE.match(arg):
            out.append("***")
            continue
        out.append(arg[:MAX_ARG_LEN] + ("…" if len(arg) > MAX_ARG_LEN else ""))
    if len(argv) > MAX_ARGS:
        out.append(f"… {len(argv) - MAX_ARGS} more")
    return out


# --- processes -------------------------------------------------------------------------------
def proc_listen_message() -> bytes:
    payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn


#: Where a proc connector event's ``what`` sits in a datagram: after nlmsghdr and cn_msg.
PROC_WHAT_OFFSET = NLMSG_HDR.size + CN_MSG.size
SO_ATTACH_FILTER = 26
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06


def proc_filter_program(wanted: tuple[int, ...] = (PROC_EVENT_FORK, PROC_EVENT_EXEC)) -> bytes:
    """A classic BPF program (``struct sock_filter[]``) that keeps only ``wanted`` events.

    The connector sends every process event (fork, exec, exit, comm, uid, ...; a short
    program is four or more datagrams) and only fork and exec are used: dropping the rest in
    the kernel saves a wake-up, a recv and a parse for each. BPF loads words big-endian, so
    the constants are the event numbers as the host stores them, read big-endian.
    """
    ins = struct.Struct("=HBBI")
    prog = [ins.pack(_BPF_LD_W_ABS, 0, 0, PROC_WHAT_OFFSET)]
    for i, what in enumerate(wanted):
        native = int.from_bytes(what.to_bytes(4, sys.byteorder), "big")
        # jump to "keep" (after the remaining tests and the "drop"), else to the next test
        prog.append(ins.pack(_BPF_JEQ_K, len(wanted) - i, 0, native))
    prog.append(ins.pack(_BPF_RET_K, 0, 0, 0))
    prog.append(ins.pack(_BPF_RET_K, 0, 0, 0xFFFFFFFF))
    return b"".join(prog)


def attach_proc_filter(sock: socket.socket) -> bool:
    """Attach :func:`proc_filter_program` to ``sock``; False (and every event) if refused."""
    prog = proc_filter_program()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("@HP", len(prog) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def parse_proc_events(data: bytes) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(what, values) for each proc connector event in one netlink datagram."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, _type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            return
        body = offset + NLMSG_HDR.size + CN_MSG.size
        if body + PROC_EVENT_HDR.size <= offset + length:
            what, _cpu, _ts = PROC_EVENT_HDR.unpack_from(data, body)
            rest = data[body + PROC_EVENT_HDR.size : offset + length]
            if what == PROC_EVENT_FORK and len(rest) >= 16:
                yield what, struct.unpack_from("=iiii", rest)
            elif what == PROC_EVENT_EXEC and len(rest) >= 8:
                yield what, struct.unpack_from("=ii", rest)
        offset += (length + 3) & ~3


def describe_process(pid: int, proc: str = "/proc") -> dict[str, Any]:
    """exe, argv, uid and ppid of ``pid`` from /proc; fields it cannot read are left out."""
    out: dict[str, Any] = {"pid": pid}
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/cmdline", "rb") as fh:
        raw = fh.read()
        out["argv"] = mask_argv([a.decode(errors="replace") for a in raw.split(b"\0")[:-1]])
    with contextlib.suppress(OSError):
        out["exe"] = os.readlink(f"{proc}/{pid}/exe")
    with contextlib.suppress(OSError, ValueError), open(f"{proc}/{pid}/status", "rb") as fh:
        status = fh.read()
        for key, name in ((b"\nPPid:", "ppid"), (b"\nUid:", "uid")):
            at = status.find(key)
            if at >= 0:
                out[name] = int(status[at + len(key) :].split(None, 1)[0])
    return out


# --- files -----------------------------------------------------------------------------------
class Inotify:
    """Recursive inotify watches under one root (ctypes; the stdlib has no binding)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd
        self.paths: dict[int, str] = {}
        self.pins: dict[int, int] = {}
        self.unwatched = 0
        self._moves: dict[int, tuple[str, bool, float]] = {}
        self.watch_tree(self.root)

    def watch(self, path: str) -> None:
        # 9p without a cache (how the workspace is mounted) gives every fresh lookup a new
        # inode, and a watch belongs to an inode: holding the directory open pins its dentry,
        # so later lookups reach the watched inode. Without that, changes in a subfolder
        # created after the watch would go unseen.
        if len(self.pins) >= MAX_WATCHED_DIRS:
            self.unwatched += 1
            return
        try:
            pin = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        wd = self._add(self.fd, os.fsencode(path), WATCH_MASK)
        if wd < 0:
            os.close(pin)
            return
        old = self.pins.pop(wd, None)
        if old is not None:
            os.close(old)
        self.paths[wd] = path
        self.pins[wd] = pin

    def _forget(self, wd: int) -> None:
        self.paths.pop(wd, None)
        pin = self.pins.pop(wd, None)
        if pin is not None:
            os.close(pin)

    def close(self) -> None:
        for wd in list(self.pins):
            self._forget(wd)
        os.close(self.fd)

    def watch_tree(self, top: str) -> list[str]:
        """Watch ``top`` and every directory below it; returns the files already there."""
        found: list[str] = []
        self.watch(top)
        for dirpath, dirnames, filenames in os.walk(top):
            for d in dirnames:
                self.watch(os.path.join(dirpath, d))
            found += [os.path.join(dirpath, f) for f in filenames]
            found += [os.path.join(dirpath, d) for d in dirnames]
        return found

    def read(self) -> list[dict[str, Any]]:
        """Every pending change as a ``file`` record (renames paired by cookie)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            data = b""
        now = time.time()
        out: list[dict[str, Any]] = []
        offset = 0
        while offset + INOTIFY_EVENT.size <= len(data):
            wd, mask, cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
            raw = data[offset + INOTIFY_EVENT.size : offset + INOTIFY_EVENT.size + length]
            offset += INOTIFY_EVENT.size + length
            name = raw.rstrip(b"\0").decode(errors="replace")
            if mask & IN_Q_OVERFLOW:
                out.append({"t": "lost", "what": "file events", "count": 1, "time": now})
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF):
                self._forget(wd)
                continue
            base = self.paths.get(wd)
            if base is None or not name:
                continue
            path = os.path.join(base, name)
            is_dir = bool(mask & IN_ISDIR)
            if mask & IN_CREATE:
                out.append(_file("created", path, is_dir, now))
                if is_dir:  # watch it, and report what appeared before the watch did
                    out += [
                        _file("created", p, os.path.isdir(p), now) for p in self.watch_tree(path)
                    ]
            elif mask & IN_CLOSE_WRITE:
                out.append(_file("modified", path, False, now))
            elif mask & IN_DELETE:
                out.append(_file("deleted", path, is_dir, now))
                if is_dir:
                    for child_wd, p in list(self.paths.items()):
                        if p == path:
                            self._forget(child_wd)
            elif mask & IN_MOVED_FROM:
                self._moves[cookie] = (path, is_dir, now)
            elif mask & IN_MOVED_TO:
                src = self._moves.pop(cookie, None)
                if src is None:
                    out.append(_file("created", path, is_dir, now))
                else:
                    out.append({**_file("renamed", src[0], is_dir, now), "to": path})
                if is_dir:
                    self._rewatch(src[0] if src else None, path)
        # A move out of the tree has no MOVED_TO: report it as deleted after a short wait.
        for cookie, (path, is_dir, when) in list(self._moves.items()):
            if now - when > 0.5:
                del self._moves[cookie]
                out.append(_file("deleted", path, is_dir, when))
        return out

    def _rewatch(self, old: str | None, new: str) -> None:
        if old is not None:
            prefix = old.rstrip("/") + "/"
            for wd, p in list(self.paths.items()):
                if p == old or p.startswith(prefix):
                    self.paths[wd] = new + p[len(old) :]
        else:
            self.watch_tree(new)

    def pending_moves(self) -> bool:
        return bool(self._moves)


def _file(op: str, path: str, is_dir: bool, when: float) -> dict[str, Any]:
    return {"t": "file", "op": op, "path": path, "dir": is_dir, "time": when}


# --- failed network attempts -----------------------------------------------------------------
def _nlmsg(msg_type: int, flags: int, payload: bytes, seq: int) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), msg_type, flags, seq, 0) + payload


def audit_rule(arch: int, syscalls: list[int]) -> bytes:
    """struct audit_rule_data for: on exit of ``syscalls`` (this arch), when they failed."""
    mask = [0] * AUDIT_BITMASK_SIZE
    for nr in syscalls:
        mask[nr // 32] |= 1 << (nr % 32)
    fields = [AUDIT_ARCH, AUDIT_SUCCESS] + [0] * (AUDIT_MAX_FIELDS - 2)
    values = [arch, 0] + [0] * (AUDIT_MAX_FIELDS - 2)
    flags = [AUDIT_EQUAL, AUDIT_EQUAL] + [0] * (AUDIT_MAX_FIELDS - 2)
    return (
        struct.pack("=III", AUDIT_FILTER_EXIT, AUDIT_ALWAYS, 2)
        + struct.pack(f"={AUDIT_BITMASK_SIZE}I", *mask)
        + struct.pack(f"={AUDIT_MAX_FIELDS}I", *fields)
        + struct.pack(f"={AUDIT_MAX_FIELDS}I", *values)
        + struct.pack(f"={AUDIT_MAX_FIELDS}I", *flags)
        + struct.pack("=I", 0)
    )


def audit_status_set_pid(pid: int) -> bytes:
    """struct audit_status asking the kernel to enable audit and send records to ``pid``."""
    # mask, enabled, failure, pid, rate_limit, backlog_limit, lost, backlog, (more, zeroed)
    return struct.pack("=IIIIIIII", AUDIT_STATUS_ENABLED | AUDIT_STATUS_PID, 1, 1, pid, 0, 0, 0, 0)


#: "Failures" that are not refusals: a non-blocking connect in progress, would-block, EINTR.
NOT_FAILURES = frozenset({115, 11, 4})
#: Socket families that are network: IPv4, IPv6, packet (raw frames).
NET_FAMILIES = frozenset({2, 10, 17})

_KV = re.compile(r'(\w+)=("[^"]*"|\S+)')


def parse_audit_syscall(text: str, names: dict[int, str]) -> dict[str, Any] | None:
    """A ``net`` record from the text of an AUDIT_SYSCALL message, or None."""
    kv = {k: v.strip('"') for k, v in _KV.findall(text)}
    try:
        nr = int(kv.get("syscall", "-1"))
    except ValueError:
        return None
    if nr not in names or kv.get("success") != "no":
        return None
    exit_code = int(kv.get("exit", "0") or 0)
    if -exit_code in NOT_FAILURES:
        return None
    out: dict[str, Any] = {
        "t": "net",
        "syscall": names[nr],
        "error": os.strerror(-exit_code) if exit_code < 0 else str(exit_code),
        "errno": -exit_code,
    }
    for key in ("pid", "ppid", "uid"):
        if kv.get(key, "").isdigit():
            out[key] = int(kv[key])
    if "exe" in kv:
        out["exe"] = kv["exe"]
    if names[nr] == "socket":
        with contextlib.suppress(ValueError):
            out["family"] = int(kv.get("a0", "0"), 16)
            out["type"] = int(kv.get("a1", "0"), 16) & 0xF
    return out


def parse_sockaddr(hexdata: str) -> str | None:
    """``saddr=`` of an AUDIT_SOCKADDR message as ``host:port`` (IPv4/IPv6), else None."""
    try:
        raw = bytes.fromhex(hexdata)
    except ValueError:
        return None
    if len(raw) >= 8 and int.from_bytes(raw[:2], "little") == socket.AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{int.from_bytes(raw[2:4], 'big')}"
    if len(raw) >= 24 and int.from_bytes(raw[:2], "little") == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return f"[{host}]:{int.from_bytes(raw[2:4], 'big')}"
    return None


class AuditNet:
    """Failed socket/connect/sendto from the kernel's audit netlink socket."""

    def __init__(self) -> None:
        machine = os.uname().machine
        if machine not in NET_SYSCALLS:
            raise OSError(f"no syscall table for {machine}")
        arch, self.names = NET_SYSCALLS[machine]
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        self.sock.bind((0, 0))
        self.sock.send(
            _nlmsg(AUDIT_SET, NLM_F_REQUEST | NLM_F_ACK, audit_status_set_pid(os.getpid()), 1)
        )
        self._expect_ack(1)
        rule = audit_rule(arch, sorted(self.names))
        self.sock.send(_nlmsg(AUDIT_ADD_RULE, NLM_F_REQUEST | NLM_F_ACK, rule, 2))
        self._expect_ack(2, allow=(17,))  # EEXIST: the rule is already there
        self._pending: dict[str, dict[str, Any]] = {}

    def _expect_ack(self, seq: int, allow: tuple[int, ...] = ()) -> None:
        self.sock.settimeout(2.0)
        try:
            while True:
                data = self.sock.recv(65536)
                _len, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(data)
                if mtype == 2 and mseq == seq:  # NLMSG_ERROR carries the ack
                    err = -struct.unpack_from("=i", data, NLMSG_HDR.size)[0]
                    if err and err not in allow:
                        raise OSError(err, f"audit request {seq} refused: {os.strerror(err)}")
                    return
        finally:
            self.sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        _len, mtype, _f, _s, _p = NLMSG_HDR.unpack_from(data)
        text = data[NLMSG_HDR.size :].rstrip(b"\0").decode(errors="replace")
        serial = text.split(":", 1)[0] if text.startswith("audit(") else ""
        if mtype == AUDIT_SYSCALL:
            rec = parse_audit_syscall(text, self.names)
            if rec is not None:
                rec["time"] = time.time()
                self._pending[serial] = rec
        elif mtype == AUDIT_SOCKADDR and serial in self._pending:
            m = re.search(r"saddr=([0-9A-Fa-f]+)", text)
            addr = parse_sockaddr(m.group(1)) if m else None
            if addr:
                self._pending[serial]["address"] = addr
        elif mtype == AUDIT_EOE and serial in self._pending:
            rec = self._pending.pop(serial)
            # Only network attempts: a socket() of a network family, or a connect/send to an
            # IPv4/IPv6 address (local unix sockets failing is not the network).
            network = (
                rec.get("family") in NET_FAMILIES
                if rec["syscall"] == "socket"
                else "address" in rec
            )
            if network:
                out.append(rec)
        return out


class SnmpNet:
    """Fallback: counters of failed attempts in /proc/net/snmp (that and when, not who)."""

    COUNTERS = (("Ip", "OutNoRoutes"), ("Tcp", "AttemptFails"), ("Udp", "NoPorts"))

    def __init__(self, path: str = "/proc/net/snmp") -> None:
        self.path = path
        self.last = self._read()

    def _read(self) -> dict[str, int]:
        rows: dict[str, list[str]] = {}
        values: dict[str, int] = {}
        with contextlib.suppress(OSError):
            with open(self.path, encoding="ascii") as fh:
                text = fh.read()
            for line in text.splitlines():
                proto, _, rest = line.partition(":")
                if proto in rows:
                    for name, val in zip(rows[proto], rest.split(), strict=False):
                        with contextlib.suppress(ValueError):
                            values[f"{proto}.{name}"] = int(val)
                else:
                    rows[proto] = rest.split()
        return values

    def read(self) -> list[dict[str, Any]]:
        now = self._read()
        out = []
        for proto, name in self.COUNTERS:
            key = f"{proto}.{name}"
            delta = now.get(key, 0) - self.last.get(key, 0)
            if delta > 0:
                out.append({"t": "net", "counter": key, "count": delta, "time": time.time()})
        self.last = now
        return out


_encode = json.JSONEncoder(separators=(",", ":")).encode


# --- the monitor -----------------------------------------------------------------------------
class Monitor:
    """Collects records from every source into one bounded queue; a writer sends them."""

    def __init__(
        self,
        root: str,
        write: Callable[[bytes], None],
        proc: str = "/proc",
        use_audit: bool = True,
    ) -> None:
        self.root = root
        self.use_audit = use_audit
        self.write = write
        self.proc = proc
        # A deque, not queue.Queue: append and popleft are atomic, and the writer is woken
        # once per batch rather than taking a lock and a condition for every record.
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self.proc_filtered = False
        self.lost = 0
        self.stop = threading.Event()
        self.net_source = "none"

    def put(self, rec: dict[str, Any]) -> None:
        if len(self.queue) >= QUEUE_MAX:
            self.lost += 1
            return
        self.queue.append(rec)
        if not self._wake.is_set():
            self._wake.set()

    def _writer(self) -> None:
        seq = 0
        while not self.stop.is_set():
            if self._wake.wait(HEARTBEAT_S):
                self.stop.wait(BATCH_WINDOW_S)
            self._wake.clear()
            while True:
                batch: list[dict[str, Any]] = []
                with contextlib.suppress(IndexError):
                    while len(batch) < 512:
                        batch.append(self.queue.popleft())
                if self.lost:
                    lost, self.lost = self.lost, 0
                    batch.append({"t": "lost", "what": "records", "count": lost})
                seq += 1
                cpu = os.times()
                batch.append(
                    {
                        "t": "hb",
                        "seq": seq,
                        "time": time.time(),
                        "queued": len(self.queue),
                        "cpu_s": round(cpu.user + cpu.system, 3),
                    }
                )
                self.write("".join([_encode(r) + "\n" for r in batch]).encode())
                if len(batch) < 512 or not self.queue:
                    break

    def _drain(self, sock: socket.socket, most: int = 16) -> Iterator[bytes]:
        """Every datagram waiting on ``sock`` (up to ``most``): one wake-up, many events."""
        for _ in range(most):
            try:
                yield sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: the kernel dropped events
                self.put({"t": "lost", "what": f"process events ({exc})", "count": 1})
                return

    def _proc_events(self, data: bytes, parents: dict[int, int]) -> None:
        for what, values in parse_proc_events(data):
            if what == PROC_EVENT_FORK:
                parents[values[3]] = values[1]
                if len(parents) > 65536:
                    parents.clear()
            else:
                pid = values[1]
                rec = {
                    "t": "proc",
                    **describe_process(pid, self.proc),
                    "time": time.time(),
                }
                rec.setdefault("ppid", parents.get(pid, 0))
                self.put(rec)

    def run(self) -> None:
        proc_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        proc_sock.bind((os.getpid(), CN_IDX_PROC))
        self.proc_filtered = attach_proc_filter(proc_sock)
        proc_sock.send(proc_listen_message())
        files = Inotify(self.root)
        net: AuditNet | SnmpNet
        try:
            if not self.use_audit:
                raise OSError("not asked to use it")
            net = AuditNet()
            self.net_source = "audit"
        except OSError as exc:
            net = SnmpNet(f"{self.proc}/net/snmp")
            self.net_source = f"snmp counters (audit unavailable: {exc})"
        self.write(
            json.dumps(
                {
                    "t": "hello",
                    "pid": os.getpid(),
                    "v": 1,
                    "net": self.net_source,
                    "proc_filter": self.proc_filtered,
                    "time": time.time(),
                }
            ).encode()
            + b"\n"
        )
        threading.Thread(target=self._writer, name="writer", daemon=True).start()
        parents: dict[int, int] = {}
        fds: list[Any] = [proc_sock, files.fd]
        if isinstance(net, AuditNet):
            fds.append(net)
        try:
            while not self.stop.is_set():
                timeout = 0.2 if (isinstance(net, SnmpNet) or files.pending_moves()) else 1.0
                ready, _, _ = select.select(fds, [], [], timeout)
                # Files first: reading them is one cheap read, and a new folder must be
                # watched before anything happens inside it.
                if files.fd in ready or files.pending_moves():
                    for rec in files.read():
                        self.put(rec)
                if proc_sock in ready:
                    for data in self._drain(proc_sock):
                        self._proc_events(data, parents)
                if isinstance(net, SnmpNet) or net in ready:
                    for rec in net.read():
                        self.put(rec)

        finally:
            proc_sock.close()
            files.close()
            if isinstance(net, AuditNet):
                net.sock.close()


def open_port(path: str) -> Callable[[bytes], None]:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    return write


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python3 -m cowork.guest.monitor PORT ROOT\n")
        return 2
    port, root = args
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Monitor(root, open_port(port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
