"""The backend-neutral description of one sealed guest VM.

A :class:`VMSpec` is frozen and says everything a backend needs; backends add nothing from
elsewhere (no default network, no extra host folder). :meth:`VMSpec.problems` lists every
problem at once, each naming the field; :meth:`VMSpec.validate` raises them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cowork.errors import UsageError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,31}$")
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: sun_path is 108 bytes on Linux, 104 on macOS; stay under the smaller.
MAX_SOCKET_PATH = 100


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"  # software emulation: slow, works everywhere


@dataclass(frozen=True)
class Share:
    """A host folder shared into the guest. ``readonly`` MUST be enforced by the host."""

    tag: str
    source: Path
    readonly: bool


@dataclass(frozen=True)
class VMSpec:
    name: str
    kernel: Path
    initrd: Path
    disk: Path  # the per-session copy-on-write overlay (qcow2) over the base image
    seed: Path  # the per-session raw seed disk, attached read-only
    channel_socket: Path  # host end of the private channel (unix socket the backend binds)
    console_log: Path
    shares: tuple[Share, ...] = ()
    cmdline: str = "console=ttyS0 root=/dev/vda rw quiet"
    cpus: int = 2
    memory_mib: int = 1024
    accel: Accel = Accel.TCG
    channel_name: str = "org.cowork.channel.0"
    seed_serial: str = "cowork-seed"
    extra: dict[str, str] = field(default_factory=dict)
    #: Host end of the guest activity monitor's port (root-only in the guest); None: no port.
    monitor_socket: Path | None = None
    monitor_name: str = "org.cowork.monitor.0"

    def problems(self) -> list[str]:
        out: list[str] = []
        if not NAME_RE.match(self.name):
            out.append(
                f"name {self.name!r}: use 1-63 lower-case letters, digits and '-', "
                "starting with a letter or digit"
            )
        if not 1 <= self.cpus <= 64:
            out.append(f"cpus {self.cpus}: must be between 1 and 64")
        if not 256 <= self.memory_mib <= 262144:
            out.append(f"memory_mib {self.memory_mib}: must be between 256 and 262144")
        for label, path in (
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("disk", self.disk),
            ("seed", self.seed),
            ("channel_socket", self.channel_socket),
            ("console_log", self.console_log),
        ):
            if not path.is_absolute():
                out.append(f"{label} {str(path)!r}: must be an absolute path")
        if len(str(self.channel_socket).encode()) > MAX_SOCKET_PATH:
            out.append(
                f"channel_socket {str(self.channel_socket)!r}: longer than {MAX_SOCKET_PATH} "
                "bytes, too long for a unix socket; use a shorter runtime directory"
            )
        if self.monitor_socket is not None:
            if not self.monitor_socket.is_absolute():
                out.append(f"monitor_socket {str(self.monitor_socket)!r}: must be absolute")
            if len(str(self.monitor_socket).encode()) > MAX_SOCKET_PATH:
                out.append(
                    f"monitor_socket {str(self.monitor_socket)!r}: too long for a unix socket"
                )
            if not CHANNEL_RE.match(self.monitor_name) or self.monitor_name == self.channel_name:
                out.append(f"monitor_name {self.monitor_name!r}: use its own port name")
        if not CHANNEL_RE.match(self.channel_name):
            out.append(f"channel_name {self.channel_name!r}: use letters, digits, '.', '_', '-'")
        seen: set[str] = set()
        for share in self.shares:
            if not TAG_RE.match(share.tag):
                out.append(f"share tag {share.tag!r}: use 1-31 letters, digits, '_' or '-'")
            if share.tag in seen:
                out.append(f"share tag {share.tag!r}: used twice")
            seen.add(share.tag)
            if not share.source.is_absolute():
                out.append(f"share {share.tag} source {str(share.source)!r}: must be absolute")
        paths = [
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("disk", self.disk),
            ("seed", self.seed),
            ("channel_socket", self.channel_socket),
            ("console_log", self.console_log),
        ] + [(f"share {share.tag} source", share.source) for share in self.shares]
        for label, path in paths:
            # A control character cannot be written into libvirt's XML (or QEMU's argv) as is.
            if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
                out.append(f"{label} {str(path)!r}: contains control characters; rename it")
        for key, value in (("cmdline", self.cmdline), ("seed_serial", self.seed_serial)):
            if any(ord(c) < 32 for c in value):
                out.append(f"{key}: contains control characters")
        return out

    def validate(self) -> VMSpec:
        problems = self.problems()
        if problems:
            raise UsageError(
                f"VM spec {self.name!r} is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return self
