import os
import subprocess
import sys

import pytest

from cowork.guest import contract, init
from cowork.guest.contract import Mount

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
olduser:x:1000:1000:Old,,,:/home/olduser:/bin/bash
agent:x:1001:1001::/home/agent:/bin/sh
"""
GROUP = """root:x:0:
sudo:x:27:olduser,agent
users:x:100:agent
olduser:x:1000:
agent:x:1001:
"""
SHADOW = """root:*:19000:0:99999:7:::
olduser:$y$hash:19000:0:99999:7:::
agent:!:19000:0:99999:7:::
"""


def _sysfs(tmp_path, disks):
    for name, serial in disks.items():
        d = tmp_path / "block" / name
        d.mkdir(parents=True)
        if serial is not None:
            (d / "serial").write_text(serial + "\n")
    return str(tmp_path)


def test_find_seed_device_by_serial_not_by_order(tmp_path):
    root = _sysfs(tmp_path, {"vda": None, "vdb": "other", "vdc": contract.SEED_SERIAL})
    assert init.find_seed_device(root) == "/dev/vdc"


def test_find_seed_device_none_when_absent(tmp_path):
    assert init.find_seed_device(_sysfs(tmp_path, {"vda": "x"})) is None
    assert init.find_seed_device(str(tmp_path / "missing")) is None


def test_virtio_port_links(tmp_path):
    for dev, name in (("vport1p1", "org.cowork.channel.0"), ("vport1p2", "../evil"), ("x", "")):
        d = tmp_path / "class" / "virtio-ports" / dev
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
    assert init.virtio_port_links(str(tmp_path)) == {"org.cowork.channel.0": "vport1p1"}


def test_mount_options_and_call():
    rw = Mount(tag="cw-ws", target="/workspace", readonly=False)
    ro = Mount(tag="cw-claude", target="/home/agent/.claude", readonly=True)
    assert init.mount_options(rw) == "trans=virtio,version=9p2000.L,msize=512000"
    assert init.mount_options(ro) == "trans=virtio,version=9p2000.L,msize=512000,ro"
    assert init.mount_call(rw) == init.MountCall(
        "cw-ws", "/workspace", "9p", 0, "trans=virtio,version=9p2000.L,msize=512000"
    )
    # mount(8) turns "ro" into the read-only flag; the call does the same.
    assert init.mount_call(ro) == init.MountCall(
        "cw-claude", "/home/agent/.claude", "9p", init.MS_RDONLY,
        "trans=virtio,version=9p2000.L,msize=512000",
    )  # fmt: skip


@pytest.mark.parametrize(
    "mount",
    [
        Mount(tag="bad tag", target="/workspace", readonly=False),
        Mount(tag="cw-ws", target="relative", readonly=False),
        Mount(tag="cw-ws", target="/workspace/../etc", readonly=False),
    ],
)
def test_mount_call_refuses_bad_values(mount):
    with pytest.raises(init.InitError):
        init.mount_call(mount)


PROC_MOUNTS = """/dev/root / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cw-ws /workspace 9p rw,relatime,access=client,msize=512000,trans=virtio 0 0
cw-wsclaude /workspace/.claude 9p ro,relatime,msize=512000,trans=virtio 0 0
cw-claude /home/agent/my\\040claude 9p ro,relatime,trans=virtio 0 0
"""

MOUNTS = (
    Mount(tag="cw-ws", target="/workspace", readonly=False),
    Mount(tag="cw-wsclaude", target="/workspace/.claude", readonly=True),
    Mount(tag="cw-claude", target="/home/agent/my claude", readonly=True),
)


def test_parse_proc_mounts_decodes_escapes():
    entries = init.parse_proc_mounts(PROC_MOUNTS)
    assert entries[-1].target == "/home/agent/my claude"
    assert entries[-1].readonly
    assert entries[2].fstype == "9p" and not entries[2].readonly


def test_check_mounts_accepts_the_expected_shares():
    init.check_mounts(MOUNTS, PROC_MOUNTS)


def test_check_mounts_fails_closed_on_a_missing_share():
    text = PROC_MOUNTS.replace("cw-wsclaude /workspace/.claude", "cw-x /elsewhere")
    with pytest.raises(init.InitError, match=r"not mounted at /workspace/\.claude"):
        init.check_mounts(MOUNTS, text)


def test_check_mounts_fails_closed_on_a_writable_readonly_share():
    text = PROC_MOUNTS.replace(
        "cw-wsclaude /workspace/.claude 9p ro,", "cw-wsclaude /workspace/.claude 9p rw,"
    )
    with pytest.raises(init.InitError, match="must be read-only"):
        init.check_mounts(MOUNTS, text)


def test_check_mounts_looks_at_the_topmost_mount():
    # Something mounted over the share afterwards hides it: that is not our share.
    text = PROC_MOUNTS + "tmpfs /workspace/.claude tmpfs rw 0 0\n"
    with pytest.raises(init.InitError, match="tmpfs"):
        init.check_mounts(MOUNTS, text)


def test_replace_passwd_drops_same_name_and_same_uid():
    out = init.replace_passwd(PASSWD, "agent", 1000, 1000, "/home/agent", "/bin/bash")
    lines = out.splitlines()
    assert "agent:x:1000:1000:cowork agent:/home/agent:/bin/bash" in lines
    assert not any(line.startswith(("olduser:", "agent:x:1001")) for line in lines)
    assert lines[0].startswith("root:x:0:0")
    assert init.passwd_names_with_uid(PASSWD, 1000) == ["olduser"]


def test_replace_passwd_refuses_root_ids_and_odd_names():
    with pytest.raises(init.InitError):
        init.replace_passwd(PASSWD, "agent", 0, 1000, "/home/agent", "/bin/bash")
    with pytest.raises(init.InitError):
        init.replace_passwd(PASSWD, "agent", 1000, 0, "/home/agent", "/bin/bash")
    with pytest.raises(init.InitError):
        init.replace_passwd(PASSWD, "a:b", 1000, 1000, "/home/agent", "/bin/bash")


def test_replace_group_leaves_the_agent_in_no_other_group():
    out = init.replace_group(GROUP, "agent", 1000, "agent")
    lines = out.splitlines()
    assert "sudo:x:27:olduser" in lines
    assert "users:x:100:" in lines
    assert "agent:x:1000:" in lines
    assert not any(line.startswith("olduser:") for line in lines)  # gid 1000 reused


def test_replace_shadow_locks_the_agent():
    out = init.replace_shadow(SHADOW, "agent", ["olduser"])
    assert out.splitlines() == ["root:*:19000:0:99999:7:::", "agent:*:19000:0:99999:7:::"]


def test_environment_file_quotes_and_refuses_what_it_cannot_carry():
    text = init.environment_file({"HTTPS_PROXY": "http://127.0.0.1:3128", "A": "x y"})
    assert text == 'A="x y"\nHTTPS_PROXY="http://127.0.0.1:3128"\n'
    for bad in ({"A B": "x"}, {"A": 'x"y'}, {"A": "x\ny"}):
        with pytest.raises(init.InitError):
            init.environment_file(bad)


PEM = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----"


def test_ca_bundle_addition_appends_once():
    assert init.ca_bundle_addition("existing\n", [PEM]) == PEM + "\n"
    assert init.ca_bundle_addition("existing", [PEM + "\n"]) == "\n" + PEM + "\n"
    assert init.ca_bundle_addition("x\n" + PEM + "\n", [PEM]) == ""


@pytest.mark.parametrize(
    "bad",
    [
        "not a cert",
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----",  # not DER
        PEM + "\n" + PEM,  # two in one entry
        "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----",
    ],
)
def test_ca_bundle_refuses_anything_but_one_certificate(bad):
    with pytest.raises(init.InitError):
        init.ca_bundle_addition("", [bad])


def test_read_seed_round_trip_and_rejects_garbage(tmp_path):
    seed = contract.Seed(
        session="s1",
        host_key="KEY",
        authorized_key="ssh-ed25519 AAAA host",
        agent_uid=1000,
        agent_gid=1000,
        mounts=MOUNTS,
        guest_code={"cowork/guest/init.py": "x"},
    )
    dev = tmp_path / "seed.img"
    dev.write_bytes(contract.encode_seed(seed) + b"\0" * 4096)
    assert init.read_seed(str(dev)) == seed
    dev.write_bytes(b"\0" * 4096)
    with pytest.raises(init.InitError):
        init.read_seed(str(dev))


def test_main_refuses_to_run_when_not_pid_1(tmp_path):
    # The guest's init must never act on a host: outside PID 1 it exits at once, touching
    # nothing (no log file, no /etc changes).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "cowork.guest.init"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "not PID 1" in done.stderr


def test_power_button_devices(tmp_path):
    for entry, name in (
        ("event0", "AT Translated Set 2 keyboard"),
        ("event1", "Power Button"),
        ("mouse0", "Power Button"),
    ):
        d = tmp_path / "class" / "input" / entry / "device"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
    assert init.power_button_devices(str(tmp_path)) == ["/dev/input/event1"]
    assert init.power_button_devices(str(tmp_path / "none")) == []


def test_power_pressed_only_on_a_power_key_press():
    def event(etype, code, value):
        return init.INPUT_EVENT.pack(1, 2, etype, code, value)

    syn = event(0, 0, 0)
    assert init.INPUT_EVENT.size == 24
    assert init.power_pressed(syn + event(init.EV_KEY, init.KEY_POWER, 1) + syn)
    assert not init.power_pressed(event(init.EV_KEY, init.KEY_POWER, 0) + syn)  # release
    assert not init.power_pressed(event(init.EV_KEY, 30, 1))  # another key
    assert not init.power_pressed(event(init.EV_KEY, init.KEY_POWER, 1)[:20])  # torn read


@pytest.mark.parametrize("gid", [27, 0])
def test_replace_group_refuses_a_privileged_gid(gid):
    with pytest.raises(init.InitError):
        init.replace_group(GROUP + "disk:x:6:\n", "agent", gid, "agent")
    with pytest.raises(init.InitError, match="disk group"):
        init.replace_group(GROUP + "disk:x:6:\n", "agent", 6, "agent")


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeY1U0Vjzj8t4iC0C2x1nQq1Ojm9fQ3o0Gv9d0n2Y4x host"


def test_authorized_keys_line_accepts_one_bare_key():
    assert init.authorized_keys_line(KEY + "\n") == KEY + "\n"


@pytest.mark.parametrize(
    "bad",
    [
        KEY + "\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5 second",  # a second key
        'command="sh" ' + KEY,  # options
        "ssh-ed25519",  # no body
        "ssh-ed25519 not*base64 x",
        "",
    ],
)
def test_authorized_keys_line_refuses_anything_else(bad):
    with pytest.raises(init.InitError):
        init.authorized_keys_line(bad)


def test_check_plain_path_refuses_a_symlinked_component(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "ws" / ".claude").symlink_to(tmp_path / "etc")
    init.check_plain_path(str(tmp_path / "ws"))
    init.check_plain_path(str(tmp_path / "ws" / "missing"))
    with pytest.raises(init.InitError, match="symbolic link"):
        init.check_plain_path(str(tmp_path / "ws" / ".claude"))
    with pytest.raises(init.InitError, match="symbolic link"):
        init.check_plain_path(str(tmp_path / "ws" / ".claude" / "x"))


# --- warm start -------------------------------------------------------------------------------
def test_entropy_request_credits_eight_bits_per_byte():
    req = init.entropy_request(b"\x01" * 64)
    assert req[:8] == (512).to_bytes(4, sys.byteorder) + (64).to_bytes(4, sys.byteorder)
    assert req[8:] == b"\x01" * 64


@pytest.mark.parametrize("text", ["", "AAAA", "not base64!"])
def test_a_restored_guest_without_enough_entropy_refuses_to_serve(text):
    with pytest.raises(init.InitError):
        init.decode_entropy(text)


def test_enough_entropy_is_accepted():
    import base64

    raw = os.urandom(contract.ENTROPY_BYTES)
    assert init.decode_entropy(base64.b64encode(raw).decode()) == raw


def test_vmgenid_bound_looks_for_a_bound_device(tmp_path):
    driver = tmp_path / "vmgenid"
    assert not init.vmgenid_bound(str(driver))
    driver.mkdir()
    (driver / "bind").write_text("")
    (driver / "uevent").write_text("")
    assert not init.vmgenid_bound(str(driver))
    (driver / "QEMUVGID:00").mkdir()
    assert init.vmgenid_bound(str(driver))


def test_reseed_fails_closed_before_touching_the_kernel(tmp_path):
    seed = contract.Seed(
        session="s", host_key="", authorized_key="", agent_uid=1, agent_gid=1, mounts=(),
        entropy="",
    )  # fmt: skip
    missing = tmp_path / "no-urandom"
    with pytest.raises(init.InitError, match="entropy"):
        init.warm_reseed(seed, lambda _m: None, urandom=str(missing))  # type: ignore[arg-type]


def test_the_guest_code_in_a_seed_is_exactly_the_package_and_nothing_else():
    """What runs as root in the guest comes only from cowork's own ``cowork/guest`` files:
    no parameter, setting or environment variable adds to it, and the seed has no field
    that names a command for init to run. (Tests that need a root action in the guest
    replace ``contract.guest_code_files`` in their own process.)"""
    import inspect
    from dataclasses import fields
    from pathlib import Path

    here = Path(init.__file__).resolve().parent
    files = contract.guest_code_files()
    assert set(files) == {"cowork/__init__.py"} | {
        f"cowork/guest/{p.name}" for p in here.glob("*.py")
    }
    for name, text in files.items():
        if name != "cowork/__init__.py":
            assert text == (here / Path(name).name).read_text(encoding="utf-8")
    assert list(inspect.signature(contract.guest_code_files).parameters) == []
    assert {f.name for f in fields(contract.Seed)} == {
        "session",
        "host_key",
        "authorized_key",
        "agent_uid",
        "agent_gid",
        "mounts",
        "env",
        "ca_certs",
        "guest_code",
        "hostname",
        "channel_port",
        "template",
        "entropy",
        "vmgenid",
        "host_time",
        "staged",
    }, "a new seed field: make sure it cannot make the guest's init run something as root"


def test_ldd_paths_keeps_absolute_library_paths():
    text = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibcrypto.so.3 => /lib/x86_64-linux-gnu/libcrypto.so.3 (0x00007f)\n"
        "\tlibgone.so.1 => not found\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
    )
    assert init.ldd_paths(text) == [
        "/lib/x86_64-linux-gnu/libcrypto.so.3",
        "/lib64/ld-linux-x86-64.so.2",
    ]


class _Check:
    def __init__(self, stderr: bytes):
        import io

        self.stderr = io.BytesIO(stderr)


def test_a_refused_sshd_configuration_powers_the_guest_off(monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(init, "console", said.append)

    def shutdown(_log):
        raise SystemExit("powered off")

    monkeypatch.setattr(init, "shutdown", shutdown)
    failed = 255 << 8  # a wait status: exit code 255
    with pytest.raises(SystemExit, match="powered off"):
        init.check_sshd(failed, _Check(b"Bad configuration option: Nope"), lambda _m: None)  # type: ignore[arg-type]
    assert said and said[-1].startswith("COWORK-FAILED sshd -t refused the configuration (255)")
    assert "Nope" in said[-1]


def test_a_passed_sshd_check_changes_nothing(monkeypatch):
    monkeypatch.setattr(init, "shutdown", lambda _log: pytest.fail("must not power off"))
    logged: list[str] = []
    init.check_sshd(0, _Check(b""), logged.append)  # type: ignore[arg-type]
    assert logged == ["sshd configuration checked"]
