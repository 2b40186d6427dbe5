"""Accelerator choice against fake /dev/kvm and /proc/cpuinfo files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowork.errors import UsageError
from cowork.host.vm.accel import detect_accel, kvm_problem
from cowork.host.vm.spec import Accel

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n"
AMD = "processor\t: 0\nflags\t\t: fpu svm sse2\n"
NONE = "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor sse2\nvmx flags\t: ept\n"


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    return path


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [INTEL, AMD])
def test_kvm_when_device_opens_and_cpu_has_virtualisation(
    tmp_path: Path, dev: Path, text: str
) -> None:
    choice = detect_accel(dev_kvm=dev, cpuinfo=cpuinfo(tmp_path, text))
    assert choice.accel is Accel.KVM
    assert choice.warning is None


def test_tcg_without_cpu_flags_warns(tmp_path: Path, dev: Path) -> None:
    # "vmx flags" is a different line; only the "flags" line counts.
    choice = detect_accel(dev_kvm=dev, cpuinfo=cpuinfo(tmp_path, NONE))
    assert choice.accel is Accel.TCG
    assert choice.warning == (
        f"KVM is not usable here (the CPU offers no hardware virtualisation (no vmx or svm "
        f"flag in {tmp_path / 'cpuinfo'})); falling back to software emulation (slow). "
        'Set vm.accel = "tcg" to silence this.'
    )


def test_tcg_without_device(tmp_path: Path) -> None:
    choice = detect_accel(dev_kvm=tmp_path / "absent", cpuinfo=cpuinfo(tmp_path, INTEL))
    assert choice.accel is Accel.TCG
    assert choice.warning is not None
    assert f"{tmp_path / 'absent'} does not exist" in choice.warning


def test_tcg_when_device_cannot_be_opened_read_write(tmp_path: Path) -> None:
    unopenable = tmp_path / "kvmdir"  # a directory cannot be opened O_RDWR, even by root
    unopenable.mkdir()
    choice = detect_accel(dev_kvm=unopenable, cpuinfo=cpuinfo(tmp_path, INTEL))
    assert choice.accel is Accel.TCG
    assert "cannot be opened read-write" in (choice.warning or "")


def test_tcg_when_cpuinfo_unreadable(tmp_path: Path, dev: Path) -> None:
    problem = kvm_problem(dev, tmp_path / "no-cpuinfo")
    assert problem is not None and "cannot be read" in problem
    assert detect_accel(dev_kvm=dev, cpuinfo=tmp_path / "no-cpuinfo").accel is Accel.TCG


class ExplodingPath(type(Path())):  # type: ignore[misc]
    def read_text(self, *args: object, **kwargs: object) -> str:
        raise RuntimeError("unexpected")


def test_any_probe_failure_falls_back_to_tcg(tmp_path: Path, dev: Path) -> None:
    # Fail closed: a surprise while probing never selects KVM.
    choice = detect_accel(dev_kvm=dev, cpuinfo=ExplodingPath(tmp_path / "cpuinfo"))
    assert choice.accel is Accel.TCG
    assert choice.warning is not None and "checking for KVM failed: unexpected" in choice.warning


@pytest.mark.parametrize(("value", "accel"), [("kvm", Accel.KVM), ("tcg", Accel.TCG)])
def test_explicit_value_wins_without_warning(tmp_path: Path, value: str, accel: Accel) -> None:
    choice = detect_accel(value, dev_kvm=tmp_path / "absent", cpuinfo=tmp_path / "absent")
    assert choice.accel is accel
    assert choice.warning is None


@pytest.mark.parametrize("value", [None, "auto"])
def test_auto_probes(tmp_path: Path, dev: Path, value: str | None) -> None:
    choice = detect_accel(value, dev_kvm=dev, cpuinfo=cpuinfo(tmp_path, AMD))
    assert choice.accel is Accel.KVM


def test_unknown_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"vm\.accel = 'hvf'"):
        detect_accel("hvf")
