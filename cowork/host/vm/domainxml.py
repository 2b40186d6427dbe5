"""The libvirt domain XML for a :class:`~cowork.host.vm.spec.VMSpec`: a pure builder.

Contract:
- :func:`domain_xml` depends only on its arguments: same spec and host, same bytes. Child
  order is fixed (one small builder per element, called in a fixed sequence) so the output is
  golden-tested under ``tests/data/domainxml/``.
- The guest gets exactly: a root disk, a read-only seed disk, the spec's shares (9p, with
  ``<readonly/>`` enforced by QEMU), one private virtio-serial channel, an entropy source,
  a console log file and a VM generation ID (``<genid/>``). No network interface, no USB, no
  balloon, no display, no sound, no host devices: the builder emits
  ``<controller type='usb' model='none'/>`` and ``<memballoon model='none'/>`` so libvirt adds no
  defaults of its own.
- In system mode (root on ``qemu:///system``) a static DAC label makes QEMU run as the
  invoking user instead of ``libvirt-qemu``, which could not read the user's cache or write
  the user's workspace.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cowork.host.vm.spec import Accel, Share, VMSpec

#: libvirt's domain ``type`` for each accelerator.
DOMAIN_TYPE = {Accel.TCG: "qemu", Accel.KVM: "kvm"}
ACCEL_FOR_DOMAIN_TYPE = {v: k for k, v in DOMAIN_TYPE.items()}
MACHINE = "q35"
ARCH = "x86_64"


@dataclass(frozen=True)
class HostContext:
    """What the builder needs to know about the host side of the hypervisor."""

    uid: int  # the user QEMU must run as (system mode only)
    gid: int
    emulator: Path  # e.g. /usr/bin/qemu-system-x86_64
    system_mode: bool  # True when connected to qemu:///system


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _memory(root: ET.Element, spec: VMSpec) -> None:
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.cpus), placement="static")


def _os(root: ET.Element, spec: VMSpec) -> None:
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=ARCH, machine=MACHINE)
    _sub(os_el, "kernel", str(spec.kernel))
    _sub(os_el, "initrd", str(spec.initrd))
    _sub(os_el, "cmdline", spec.cmdline)


def _features(root: ET.Element) -> None:
    # ACPI is required for the guest to see fw_cfg entries (and for graceful shutdown).
    features = _sub(root, "features")
    _sub(features, "acpi")


def _cpu(root: ET.Element, spec: VMSpec) -> None:
    if spec.accel is Accel.KVM:
        _sub(root, "cpu", mode="host-passthrough", check="none")


def _lifecycle(root: ET.Element) -> None:
    # A guest that powers off, reboots or crashes is gone: the session decides what is next.
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "destroy")
    _sub(root, "on_crash", "destroy")


def _disk(
    devices: ET.Element,
    *,
    source: Path,
    fmt: str,
    target: str,
    readonly: bool,
    serial: str | None,
) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt)
    _sub(disk, "source", file=str(source))
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")
    if serial is not None:
        _sub(disk, "serial", serial)


def _filesystem(devices: ET.Element, share: Share) -> None:
    fs = _sub(devices, "filesystem", type="mount", accessmode="passthrough")
    _sub(fs, "driver", type="path")
    _sub(fs, "source", dir=str(share.source))
    _sub(fs, "target", dir=share.tag)
    if share.readonly:
        _sub(fs, "readonly")


def _channel(devices: ET.Element, spec: VMSpec) -> None:
    ch = _sub(devices, "channel", type="unix")
    _sub(ch, "source", mode="bind", path=str(spec.channel_socket))
    _sub(ch, "target", type="virtio", name=spec.channel_name)
    if spec.monitor_socket is not None:
        mon = _sub(devices, "channel", type="unix")
        _sub(mon, "source", mode="bind", path=str(spec.monitor_socket))
        _sub(mon, "target", type="virtio", name=spec.monitor_name)


def _console(devices: ET.Element, spec: VMSpec) -> None:
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console_log))
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=str(spec.console_log))
    _sub(console, "target", type="serial", port="0")


def _rng(devices: ET.Element) -> None:
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")


def _devices(root: ET.Element, spec: VMSpec, host: HostContext) -> None:
    devices = _sub(root, "devices")
    _sub(devices, "emulator", str(host.emulator))
    _disk(devices, source=spec.disk, fmt="qcow2", target="vda", readonly=False, serial=None)
    _disk(
        devices, source=spec.seed, fmt="raw", target="vdb", readonly=True, serial=spec.seed_serial
    )
    # libvirt's own canonical order, so the definition reads back the same way.
    _sub(devices, "controller", type="usb", model="none")
    for share in spec.shares:
        _filesystem(devices, share)
    _console(devices, spec)
    _channel(devices, spec)
    _sub(devices, "memballoon", model="none")
    _rng(devices)


def _seclabel(root: ET.Element, host: HostContext) -> None:
    if host.system_mode:
        label = _sub(root, "seclabel", type="static", model="dac", relabel="no")
        _sub(label, "label", f"+{host.uid}:+{host.gid}")


def domain_element(spec: VMSpec, *, host: HostContext) -> ET.Element:
    """The ``<domain>`` element for ``spec`` (see :func:`domain_xml`)."""
    root = ET.Element("domain", {"type": DOMAIN_TYPE[spec.accel]})
    _sub(root, "name", spec.name)
    # A VM generation ID: libvirt picks one, and a restore of a saved guest gets a new one
    # (cowork.host.warm), so the guest's kernel reseeds its random state.
    _sub(root, "genid")
    _memory(root, spec)
    _os(root, spec)
    _features(root)
    _cpu(root, spec)
    _lifecycle(root)
    _devices(root, spec, host)
    _seclabel(root, host)
    return root


def domain_xml(spec: VMSpec, *, host: HostContext) -> str:
    """The libvirt domain XML for ``spec``, as text ending in a newline.

    Pure: reads no files and asks no hypervisor. The caller validates ``spec`` first.
    """
    root = domain_element(spec, host=host)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def restore_xml(saved: str, spec: VMSpec) -> str:
    """The XML of a saved domain (``saved``) with ``spec``'s name and host paths in place.

    Pure. Replaces the name, the root and seed disk sources (by target ``vda``/``vdb``),
    each 9p share source (by tag), each channel socket (by port name) and the console log;
    drops the UUID and the generation ID so the restored VM gets fresh ones. Raises
    ValueError when the saved domain's devices do not match ``spec`` (a share tag, disk or
    channel it lacks or has in excess).
    """
    import uuid

    root = ET.fromstring(saved)  # noqa: S314 (written by the local libvirt daemon)
    name = root.find("name")
    if name is None:
        raise ValueError("the saved VM has no name")
    name.text = spec.name
    for tag, value in (("uuid", str(uuid.uuid4())), ("genid", str(uuid.uuid4()))):
        el = root.find(tag)
        if el is None:
            raise ValueError(f"the saved VM has no <{tag}>")
        el.text = value
    devices = root.find("devices")
    if devices is None:
        raise ValueError("the saved VM has no devices")
    disks = {
        str(t.get("dev")): d for d in devices.findall("disk") if (t := d.find("target")) is not None
    }
    for target, path in (("vda", spec.disk), ("vdb", spec.seed)):
        src = disks[target].find("source") if target in disks else None
        if src is None:
            raise ValueError(f"the saved VM has no disk {target}")
        src.set("file", str(path))
    by_tag = {share.tag: share for share in spec.shares}
    fss = devices.findall("filesystem")
    seen = set()
    for fs in fss:
        target_el, src = fs.find("target"), fs.find("source")
        tag = str(target_el.get("dir")) if target_el is not None else ""
        if tag not in by_tag or src is None:
            raise ValueError(f"the saved VM shares {tag!r}, which this session does not")
        share = by_tag[tag]
        if (fs.find("readonly") is not None) != share.readonly:
            raise ValueError(f"the saved VM's share {tag} differs in read-only flag")
        src.set("dir", str(share.source))
        seen.add(tag)
    if seen != set(by_tag):
        raise ValueError(f"the saved VM lacks shares {sorted(set(by_tag) - seen)}")
    for kind in ("serial", "console"):
        for el in devices.findall(kind):
            src = el.find("source")
            if src is not None and el.get("type") == "file":
                src.set("path", str(spec.console_log))
    sockets = {spec.channel_name: spec.channel_socket}
    if spec.monitor_socket is not None:
        sockets[spec.monitor_name] = spec.monitor_socket
    found: dict[str, ET.Element] = {}
    for ch in devices.findall("channel"):
        target_el, src = ch.find("target"), ch.find("source")
        if ch.get("type") != "unix" or target_el is None or src is None:
            raise ValueError("the saved VM has a channel that is not a unix socket")
        found[str(target_el.get("name"))] = src
    if set(found) != set(sockets):
        raise ValueError(
            f"the saved VM's channels {sorted(found)} differ from this session's {sorted(sockets)}"
        )
    for port, path in sockets.items():
        found[port].set("path", str(path))
    return ET.tostring(root, encoding="unicode")
