"""Choosing the accelerator: KVM where the host really offers it, otherwise TCG with a warning.

Contract:
- Automatic choice picks KVM only when ``/dev/kvm`` exists, can be opened read-write, and the
  CPU flags in ``/proc/cpuinfo`` include ``vmx`` or ``svm``. Anything else (including an error
  while checking) picks TCG and carries a one-line warning for the user.
- An explicit ``"kvm"`` or ``"tcg"`` is honoured as given, without a warning.
- The probe paths are arguments so tests run against fake files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cowork.errors import UsageError
from cowork.host.vm.spec import Accel

DEV_KVM = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
AUTO = "auto"
_VIRT_FLAGS = frozenset({"vmx", "svm"})


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str  # why this accelerator was chosen, for logs and ``cowork vm doctor``
    warning: str | None  # one line to show the user, or None


def kvm_problem(dev_kvm: Path = DEV_KVM, cpuinfo: Path = CPUINFO) -> str | None:
    """Why KVM is not usable here, or None when it is."""
    if not dev_kvm.exists():
        return f"{dev_kvm} does not exist"
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{dev_kvm} cannot be opened read-write: {exc.strerror or exc}"
    os.close(fd)
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"{cpuinfo} cannot be read: {exc.strerror or exc}"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags" and _VIRT_FLAGS & set(value.split()):
            return None
    return f"the CPU offers no hardware virtualisation (no vmx or svm flag in {cpuinfo})"


def detect_accel(
    requested: Accel | str | None = None,
    *,
    dev_kvm: Path = DEV_KVM,
    cpuinfo: Path = CPUINFO,
) -> AccelChoice:
    """The accelerator to use. ``requested`` is ``None``/``"auto"``, ``"kvm"`` or ``"tcg"``."""
    if requested is not None and str(requested) != AUTO:
        try:
            accel = Accel(str(requested))
        except ValueError:
            raise UsageError(
                f'vm.accel = {str(requested)!r} is not known: use "auto", "kvm" or "tcg"'
            ) from None
        return AccelChoice(accel, f"vm.accel = {str(accel)!r} was set explicitly", None)
    try:
        problem = kvm_problem(dev_kvm, cpuinfo)
    except Exception as exc:  # any surprise while probing means: do not rely on KVM
        problem = f"checking for KVM failed: {exc}"
    if problem is None:
        return AccelChoice(Accel.KVM, f"{dev_kvm} is usable and the CPU has vmx or svm", None)
    warning = (
        f"KVM is not usable here ({problem}); falling back to software emulation (slow). "
        'Set vm.accel = "tcg" to silence this.'
    )
    return AccelChoice(Accel.TCG, problem, warning)
