"""The VM backend protocol: lifecycle verbs every hypervisor backend implements.

Contract:
- A backend only manages VMs whose name starts with :data:`NAME_PREFIX`; ``list()`` never
  reports anything else and ``validate`` refuses a spec with another name.
- What a backend can do is data (:class:`BackendCapabilities`). A verb a backend cannot
  perform raises :class:`UnsupportedError`; it never silently does nothing.
- ``destroy`` is idempotent: it forces the VM off and removes every trace of it from the
  hypervisor, and succeeds when there is nothing left to remove.
- Errors from the hypervisor are :class:`~cowork.errors.BackendError` with a message for a
  person; a spec that cannot be run is a :class:`~cowork.errors.UsageError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cowork.errors import BackendError
from cowork.host.vm.spec import Accel, VMSpec

#: Every VM cowork creates is named ``cowork-…``; nothing else is touched or listed.
NAME_PREFIX = "cowork-"


class UnsupportedError(BackendError):
    """The backend cannot do what was asked (e.g. a transport or accelerator it lacks)."""


class VMState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"  # defined but not running
    CRASHED = "crashed"
    MISSING = "missing"  # not known to the hypervisor at all


@dataclass(frozen=True)
class VMStatus:
    name: str
    state: VMState
    accel: Accel | None = None  # None when the VM is missing
    pid: int | None = None  # the hypervisor process, when known
    started_at: float | None = None  # epoch seconds, when known


class DiskFormat(enum.StrEnum):
    """The format of a session's root disk that a backend can boot."""

    QCOW2 = "qcow2"  # a copy-on-write overlay over the base image (``qemu-img create -b``)
    RAW = "raw"  # a full raw image; on macOS an APFS clone of the raw base (``cp -c``)


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do, as data: the session decides from this, never by probing.

    A missing capability is a ``False``/empty field, never an attribute that is absent.
    """

    name: str  # "libvirt", "vfkit"
    shared_folder_transports: tuple[str, ...]  # "9p", "virtiofs"
    #: The host refuses every write to a share marked read-only. When False a read-only share
    #: would be writable from the guest, so the session MUST refuse it.
    readonly_shares_enforced_by_host: bool
    channel_kinds: tuple[str, ...]  # "virtio-serial", "vsock"
    accelerators: tuple[Accel, ...]  # usable on this host, best first; () when implicit
    #: The root disk the backend boots (``VMSpec.disk``).
    disk_format: DiskFormat = DiskFormat.QCOW2
    #: A read-only virtio-blk disk is enforced by the host (the seed relies on it).
    readonly_disks_enforced_by_host: bool = True
    #: Where this backend's VMs live, recorded in a session's state so a later command reaches
    #: the same place (a libvirt URI, the vfkit state folder); "" when there is one place only.
    location: str = ""
    #: The backend can save a running VM with its memory to a file and restore a new VM from
    #: it with other host paths (``save``/``restore``): what warm start needs.
    save_restore: bool = False


@runtime_checkable
class VMBackend(Protocol):
    """Lifecycle of sealed guest VMs on one hypervisor."""

    @property
    def capabilities(self) -> BackendCapabilities: ...

    def validate(self, spec: VMSpec) -> None:
        """Raise UsageError listing every reason ``spec`` cannot run here; else return."""

    def create(self, spec: VMSpec) -> None:
        """Make the VM known to the hypervisor (persistently), not yet running."""

    def start(self, name: str) -> None:
        """Boot a created VM."""

    def stop(self, name: str, timeout: float) -> None:
        """Ask the guest to power off; force it off after ``timeout`` seconds."""

    def destroy(self, name: str) -> None:
        """Force off and remove every trace from the hypervisor; no error if missing."""

    def status(self, name: str) -> VMStatus:
        """The VM's state; :attr:`VMState.MISSING` if the hypervisor does not know it."""

    def list(self) -> list[VMStatus]:
        """Every cowork VM (name starting with :data:`NAME_PREFIX`) the hypervisor knows."""


@runtime_checkable
class SaveRestoreBackend(VMBackend, Protocol):
    """A backend with ``capabilities.save_restore``: warm start (``cowork.host.warm``)."""

    def save(self, name: str, state_file: Path) -> None:
        """Save running VM ``name`` with its memory to ``state_file``; it stops running."""

    def restore(self, state_file: Path, spec: VMSpec, work_file: Path) -> None:
        """Start VM ``spec.name`` from ``state_file`` with ``spec``'s host paths (disks,
        shares, channel socket, console log), a fresh UUID and generation ID. ``work_file``
        is scratch space for a per-VM copy of the state (removed afterwards)."""


def check_name(name: str) -> None:
    """Refuse to act on a VM that is not cowork's (fail closed on foreign names)."""
    if not name.startswith(NAME_PREFIX) or len(name) <= len(NAME_PREFIX):
        raise BackendError(
            f"VM {name!r} is not a cowork VM: cowork only manages VMs named "
            f"{NAME_PREFIX}<something>"
        )
