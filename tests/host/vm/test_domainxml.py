"""Golden files and structural invariants of the generated libvirt domain XML."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cowork.host.vm.domainxml import HostContext, domain_xml
from cowork.host.vm.spec import Accel, Share, VMSpec

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "domainxml"
QEMU = Path("/usr/bin/qemu-system-x86_64")
SESSION = HostContext(uid=1000, gid=1000, emulator=QEMU, system_mode=False)
SYSTEM = HostContext(uid=0, gid=0, emulator=QEMU, system_mode=True)
FORBIDDEN = ("interface", "hostdev", "graphics", "video", "sound", "redirdev", "smartcard")

THREE_SHARES = (
    Share("cw-ws", Path("/home/ana/Documents/project"), readonly=False),
    Share("cw-wsclaude", Path("/home/ana/Documents/project/.claude"), readonly=True),
    Share("cw-claude", Path("/home/ana/.claude"), readonly=True),
)


def make_spec(**overrides: object) -> VMSpec:
    base: dict[str, object] = {
        "name": "cowork-golden",
        "kernel": Path("/cache/images/abc/vmlinuz"),
        "initrd": Path("/cache/images/abc/initrd.img"),
        "disk": Path("/state/sessions/golden/overlay.qcow2"),
        "seed": Path("/state/sessions/golden/seed.img"),
        "channel_socket": Path("/run/user/1000/cowork/golden/channel.sock"),
        "console_log": Path("/state/sessions/golden/console.log"),
    }
    base.update(overrides)
    return VMSpec(**base)  # type: ignore[arg-type]


CASES = {
    "tcg_three_shares": (make_spec(shares=THREE_SHARES), SESSION),
    "kvm": (make_spec(accel=Accel.KVM, cpus=4, memory_mib=2048, shares=THREE_SHARES), SESSION),
    "system_mode_dac": (make_spec(shares=THREE_SHARES), SYSTEM),
    "no_shares": (make_spec(), SESSION),
    "with_monitor": (
        make_spec(
            shares=THREE_SHARES, monitor_socket=Path("/run/user/1000/cowork/golden/monitor.sock")
        ),
        SESSION,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden_file(case: str) -> None:
    spec, host = CASES[case]
    got = domain_xml(spec, host=host)
    path = GOLDEN / f"{case}.xml"
    if os.environ.get("COWORK_UPDATE_GOLDEN") == "1":
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8"), (
        f"regenerate with COWORK_UPDATE_GOLDEN=1: {path}"
    )


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 (our own builder's output)


def assert_sealed(xml: str, spec: VMSpec) -> ET.Element:
    root = parse(xml)
    for tag in FORBIDDEN:
        assert root.find(f".//{tag}") is None, f"<{tag}> must not be in the domain"
    usb = [c for c in root.iter("controller") if c.get("type") == "usb"]
    assert [c.get("model") for c in usb] == ["none"]
    assert [m.get("model") for m in root.iter("memballoon")] == ["none"]
    shares = {(str(s.source), s.tag, s.readonly) for s in spec.shares}
    seen = set()
    for fs in root.iter("filesystem"):
        source = fs.find("source")
        target = fs.find("target")
        assert source is not None and target is not None
        seen.add((source.get("dir"), target.get("dir"), fs.find("readonly") is not None))
    assert seen == shares
    disks = root.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [str(spec.disk), str(spec.seed)]  # type: ignore[union-attr]
    assert disks[0].find("readonly") is None
    assert disks[1].find("readonly") is not None
    assert disks[1].findtext("serial") == spec.seed_serial
    channels = root.findall("devices/channel")
    assert len(channels) == (1 if spec.monitor_socket is None else 2)
    assert channels[0].find("source").get("path") == str(spec.channel_socket)  # type: ignore[union-attr]
    if spec.monitor_socket is not None:  # the monitor's own port, also a unix socket on the host
        assert channels[1].find("source").get("path") == str(spec.monitor_socket)  # type: ignore[union-attr]
        assert channels[1].find("target").get("name") == spec.monitor_name  # type: ignore[union-attr]
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_nothing_but_the_listed_devices(case: str) -> None:
    spec, host = CASES[case]
    root = assert_sealed(domain_xml(spec, host=host), spec)
    kinds = [child.tag for child in root.find("devices")]  # type: ignore[union-attr]
    allowed = {"emulator", "disk", "controller", "filesystem", "serial", "console", "channel"}
    allowed |= {"memballoon", "rng"}
    assert set(kinds) <= allowed


def test_domain_type_follows_accel() -> None:
    assert parse(domain_xml(make_spec(), host=SESSION)).get("type") == "qemu"
    kvm = parse(domain_xml(make_spec(accel=Accel.KVM), host=SESSION))
    assert kvm.get("type") == "kvm"


def test_dac_label_only_in_system_mode() -> None:
    session = parse(domain_xml(make_spec(), host=SESSION))
    assert session.find("seclabel") is None
    system = parse(domain_xml(make_spec(), host=HostContext(1234, 99, QEMU, True)))
    label = system.find("seclabel")
    assert label is not None
    assert (label.get("type"), label.get("model"), label.get("relabel")) == ("static", "dac", "no")
    assert label.findtext("label") == "+1234:+99"


def test_lifecycle_actions_all_destroy() -> None:
    root = parse(domain_xml(make_spec(), host=SESSION))
    for tag in ("on_poweroff", "on_reboot", "on_crash"):
        assert root.findtext(tag) == "destroy"


def test_text_is_escaped() -> None:
    tricky = "console=ttyS0 a=<b> c=&d quote=\"x\" 'y'"
    spec = make_spec(cmdline=tricky, shares=(Share("t", Path("/a&b/<c>"), True),))
    root = parse(domain_xml(spec, host=SESSION))
    assert root.findtext("os/cmdline") == tricky
    assert root.find("devices/filesystem/source").get("dir") == "/a&b/<c>"  # type: ignore[union-attr]


tags = st.from_regex(r"[A-Za-z0-9_-]{1,31}", fullmatch=True)
sources = st.lists(
    st.text(
        st.characters(
            max_codepoint=0x2FF, exclude_categories=("Cc", "Cs", "Zs"), exclude_characters="/"
        ),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=4,
).map(lambda parts: Path("/", *parts))


@settings(max_examples=60, deadline=None)
@given(
    shares=st.lists(st.tuples(tags, sources, st.booleans()), max_size=5, unique_by=lambda t: t[0]),
    accel=st.sampled_from(list(Accel)),
    system=st.booleans(),
)
def test_any_spec_stays_sealed(
    shares: list[tuple[str, Path, bool]], accel: Accel, system: bool
) -> None:
    spec = make_spec(shares=tuple(Share(t, s, r) for t, s, r in shares), accel=accel)
    host = SYSTEM if system else SESSION
    xml = domain_xml(spec, host=host)
    assert_sealed(xml, spec)
    assert xml == domain_xml(spec, host=host)  # pure: same input, same bytes


def test_restore_xml_puts_in_the_sessions_paths_and_fresh_ids() -> None:
    from cowork.host.vm.domainxml import restore_xml

    saved_spec = make_spec(shares=THREE_SHARES)
    saved = domain_xml(saved_spec, host=SESSION).replace(
        "<genid />", "<uuid>u-1</uuid><genid>g-1</genid>"
    )
    moved = tuple(Share(s.tag, Path("/new") / s.tag, s.readonly) for s in THREE_SHARES)
    spec = make_spec(
        name="cowork-other", shares=moved, disk=Path("/s2/overlay.qcow2"),
        seed=Path("/s2/seed.img"), channel_socket=Path("/r2/channel.sock"),
        console_log=Path("/s2/console.log"),
    )  # fmt: skip
    root = parse(restore_xml(saved, spec))
    assert root.findtext("name") == "cowork-other"
    assert root.findtext("uuid") not in ("u-1", None)
    assert root.findtext("genid") not in ("g-1", None)
    files = {d.find("target").get("dev"): d.find("source").get("file") for d in root.iter("disk")}
    assert files == {"vda": "/s2/overlay.qcow2", "vdb": "/s2/seed.img"}
    dirs = sorted(fs.find("source").get("dir") for fs in root.iter("filesystem"))
    assert dirs == sorted(str(s.source) for s in moved)
    assert [c.find("source").get("path") for c in root.iter("channel")] == ["/r2/channel.sock"]
    assert {s.find("source").get("path") for s in root.findall("devices/serial")} == {
        "/s2/console.log"
    }
    assert_sealed(ET.tostring(root, encoding="unicode"), spec)


def test_restore_xml_refuses_other_shares() -> None:
    from cowork.host.vm.domainxml import restore_xml

    saved = domain_xml(make_spec(shares=THREE_SHARES), host=SESSION).replace(
        "<genid />", "<uuid>u</uuid><genid>g</genid>"
    )
    writable = tuple(Share(s.tag, s.source, False) for s in THREE_SHARES)
    for shares in (THREE_SHARES[:2], writable):
        with pytest.raises(ValueError):
            restore_xml(saved, make_spec(shares=shares))


def test_restore_xml_moves_each_channel_by_its_port_name() -> None:
    from cowork.host.vm.domainxml import restore_xml

    saved = domain_xml(
        make_spec(shares=THREE_SHARES, monitor_socket=Path("/r1/monitor.sock")), host=SESSION
    ).replace("<genid />", "<uuid>u</uuid><genid>g</genid>")
    spec = make_spec(
        shares=THREE_SHARES,
        channel_socket=Path("/r2/channel.sock"),
        monitor_socket=Path("/r2/monitor.sock"),
    )
    root = parse(restore_xml(saved, spec))
    paths = {
        c.find("target").get("name"): c.find("source").get("path") for c in root.iter("channel")
    }
    assert paths == {spec.channel_name: "/r2/channel.sock", spec.monitor_name: "/r2/monitor.sock"}
    # A session with a monitor cannot take a template saved without one, and the reverse.
    without = domain_xml(make_spec(shares=THREE_SHARES), host=SESSION).replace(
        "<genid />", "<uuid>u</uuid><genid>g</genid>"
    )
    with pytest.raises(ValueError):
        restore_xml(without, spec)
    with pytest.raises(ValueError):
        restore_xml(saved, make_spec(shares=THREE_SHARES))
