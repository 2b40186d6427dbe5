"""Boot the built guest image with plain QEMU (q35, TCG) and check the guest init's work.

The device set matches what the libvirt backend gives the guest: the overlay disk, the seed
disk (read-only, serial cowork-seed), three 9p shares (the workspace read-write, both
.claude folders read-only), one virtio-serial port for the channel, virtio-rng, the serial
console to a file, and nothing else (-nodefaults, no NIC).

Skipped with a reason when the image is not built (``cowork image build``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cowork.errors import ImageError
from cowork.guest import contract
from cowork.host import image
from cowork.paths import Paths

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180.0
# As root, the shared folders are given to an ordinary uid (the agent is never root); a
# normal user's QEMU runs as them and the agent gets their ids, as on a desktop.
AGENT_UID, AGENT_GID = (4321, 4322) if os.getuid() == 0 else (os.getuid(), os.getgid())


def _image() -> image.ImageInfo:
    try:
        return image.find(Paths())
    except ImageError as exc:
        pytest.skip(f"guest image not built ({exc})")


def _keypair(directory: Path, name: str) -> tuple[str, str]:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key.read_text(), (directory / f"{name}.pub").read_text().strip()


def _ca_cert(directory: Path) -> str:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=cowork raw boot test CA",
         "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return (directory / "ca.pem").read_text()


def qemu_argv(info: image.ImageInfo, d: Path, shares: list[tuple[str, Path, bool]]) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "1024",
        "-smp", "2",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-nic", "none",
        "-kernel", str(info.kernel),
        "-initrd", str(info.initrd),
        "-append", info.kernel_cmdline,
        "-drive", f"file={d / 'overlay.qcow2'},if=none,id=root,format=qcow2",
        "-device", "virtio-blk-pci,drive=root",
        # QEMU 7.2 takes the serial on the device, not on -drive.
        "-drive", f"file={d / 'seed.img'},if=none,id=seed,format=raw,readonly=on",
        "-device", f"virtio-blk-pci,drive=seed,serial={contract.SEED_SERIAL}",
    ]  # fmt: skip
    for tag, path, readonly in shares:
        ro = ",readonly=on" if readonly else ""
        argv += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=passthrough{ro}"]
    argv += [
        "-device", "virtio-serial",
        "-chardev", f"socket,id=ch0,path={d / 'ch.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=ch0,name={contract.CHANNEL_PORT}",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{d / 'console.log'}",
        "-pidfile", str(d / "qemu.pid"),
        "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
    ]  # fmt: skip
    return argv


class Guest:
    def __init__(self, root: Path, extra_mounts: tuple[contract.Mount, ...] = ()) -> None:
        self.info = _image()
        self.dir = root
        self.ws = root / "ws"
        (self.ws / ".claude").mkdir(parents=True)
        (self.ws / "hello.txt").write_text("hello from the host\n")
        (self.ws / ".claude" / "settings.json").write_text("{}\n")
        self.user_claude = root / "user-claude"
        self.user_claude.mkdir()
        (self.user_claude / "CLAUDE.md").write_text("be nice\n")
        # The shared folders belong to the user whose uid the agent gets (as on a desktop).
        if os.getuid() == 0:
            for top in (self.ws, self.user_claude):
                for path in (top, *top.rglob("*")):
                    os.chown(path, AGENT_UID, AGENT_GID)
        host_priv, self.host_pub = _keypair(root, "host_key")
        self.client_priv, client_pub = _keypair(root, "client_key")
        self.mounts = (
            contract.Mount(contract.TAG_WORKSPACE, contract.WORKSPACE_MOUNT, False),
            contract.Mount(contract.TAG_WORKSPACE_CLAUDE, "/workspace/.claude", True),
            contract.Mount(contract.TAG_USER_CLAUDE, f"{contract.AGENT_HOME}/.claude", True),
            *extra_mounts,
        )
        seed = contract.Seed(
            session="rawboot",
            host_key=host_priv,
            authorized_key=client_pub,
            agent_uid=AGENT_UID,
            agent_gid=AGENT_GID,
            mounts=self.mounts,
            env={"HTTPS_PROXY": f"http://127.0.0.1:{contract.PROXY_PORT}", "COWORK": "1"},
            ca_certs=(_ca_cert(root),),
            guest_code=contract.guest_code_files(),
            hostname="cowork-raw",
        )
        (root / "seed.img").write_bytes(contract.encode_seed(seed))
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(self.info.base_disk), str(root / "overlay.qcow2")],
            check=True,
        )  # fmt: skip
        shares = [
            (contract.TAG_WORKSPACE, self.ws, False),
            (contract.TAG_WORKSPACE_CLAUDE, self.ws / ".claude", True),
            (contract.TAG_USER_CLAUDE, self.user_claude, True),
        ]
        self.console = root / "console.log"
        self.started = time.monotonic()
        self.qemu_log = root / "qemu.log"
        with self.qemu_log.open("wb") as out:
            self.proc = subprocess.Popen(
                qemu_argv(self.info, root, shares),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ready_after: float | None = None

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> str:
        deadline = self.started + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            text = self.console_text()
            if "COWORK-READY" in text or "COWORK-FAILED" in text:
                self.ready_after = time.monotonic() - self.started
                return text
            if self.proc.poll() is not None:
                out = self.qemu_log.read_text(errors="replace")
                pytest.fail(f"QEMU exited ({self.proc.returncode}): {out}\n{text}")
            time.sleep(0.2)
        pytest.fail(f"no COWORK-READY within {BOOT_TIMEOUT} s:\n{self.console_text()}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    g = Guest(tmp_path_factory.mktemp("rawboot"))
    try:
        g.wait_ready()
        print(f'{{"bench": "boot_to_ready_raw_qemu", "seconds": {g.ready_after:.2f}}}')
        yield g
    finally:
        g.stop()


def test_console_shows_ready_mounts_and_agent_user(guest):
    text = guest.console_text()
    assert "COWORK-FAILED" not in text, text
    assert re.search(r"^COWORK-READY rawboot\r?$", text, re.M), text
    assert f"user agent uid {AGENT_UID} gid {AGENT_GID}" in text
    assert "mounted cw-ws at /workspace\r" in text or "mounted cw-ws at /workspace\n" in text
    assert "mounted cw-wsclaude at /workspace/.claude read-only" in text
    assert "mounted cw-claude at /home/agent/.claude read-only" in text
    assert f"port {contract.CHANNEL_PORT} is /dev/vport" in text
    # The order matters: the read-only .claude goes on top of the workspace.
    assert text.index("mounted cw-ws at") < text.index("mounted cw-wsclaude at")


def _channel(guest):
    channel = pytest.importorskip("cowork.host.channel")
    if not hasattr(channel, "Channel"):
        pytest.skip("cowork.host.channel has no Channel yet")
    return channel.Channel.connect(
        guest.dir / "ch.sock",
        host_key=guest.host_pub,
        client_key=guest.client_priv,
        timeout=60,
    )


def test_the_guest_view_through_the_channel(guest):
    with _channel(guest) as ch:
        who = ch.run("id -u; id -g; id -G; hostname; echo $HOME $HTTPS_PROXY", check=True)
        uid, gid, groups, host, env = who.stdout.splitlines()
        assert (int(uid), int(gid)) == (AGENT_UID, AGENT_GID)
        assert groups.split() == [str(AGENT_GID)]  # in no other group
        assert host == "cowork-raw"
        assert env == "/home/agent http://127.0.0.1:3128"

        assert ch.run("cat /workspace/hello.txt", check=True).stdout == "hello from the host\n"
        ch.run("echo from-guest > /workspace/out.txt", check=True)
        assert (guest.ws / "out.txt").read_text() == "from-guest\n"
        assert (guest.ws / "out.txt").stat().st_uid == AGENT_UID  # passthrough keeps owners

        # The session's CA is trusted by the system bundle (what curl, git and Python use).
        probe = (
            "python3 -c 'import ssl; c = ssl.create_default_context(); "
            'print(sorted(str(x["subject"]) for x in c.get_ca_certs()))\''
        )
        assert "cowork raw boot test CA" in ch.run(probe, check=True).stdout

        # Read-only shares refuse writes even though the agent owns nothing there.
        for target in ("/workspace/.claude/x", "/home/agent/.claude/x"):
            r = ch.run(f"echo x > {target}")
            assert not r.ok
        assert not (guest.ws / ".claude" / "x").exists()

        # No way to root: no setuid/setgid file anywhere, no sudo, root-only seed and secrets.
        r = ch.run("find / -xdev -perm /6000 -type f 2>/dev/null | head", check=True)
        assert r.stdout == ""
        assert not ch.run("command -v sudo").ok
        assert not ch.run("head -c 16 /dev/vdb").ok
        assert not ch.run(f"cat {contract.GUEST_LOG}").ok
        assert not ch.run("cat /run/cowork/ssh/host_key").ok
        assert not ch.run("touch /run/cowork/ssh/authorized_keys").ok
        assert not ch.run("test -r /dev/vda || test -w /dev/vda").ok  # the root disk is root's
        port = f"/dev/virtio-ports/{contract.CHANNEL_PORT}"
        assert ch.run(f"test -L {port}").ok
        assert not ch.run(f"test -r {port} || test -w {port}").ok  # the channel is root's

        # What programs expect of /dev without udev: ptys, /dev/shm, /dev/fd.
        ch.run("diff <(echo a) <(echo a) && test -e /dev/stdin", check=True)
        ch.run("python3 -c 'import os; os.openpty()'", check=True)
        ch.run("python3 -c 'import multiprocessing as m; m.Lock()'", check=True)

        # No network device besides loopback, and loopback is up.
        links = ch.run("ls /sys/class/net", check=True).stdout.split()
        assert links == ["lo"]
        assert "UP" in ch.run("cat /sys/class/net/lo/operstate; ip -o link show lo").stdout


def _qmp(path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rwb")
        f.readline()  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while b'"return"' not in (line := f.readline()):
                assert line, "QMP closed"


def test_acpi_power_button_syncs_and_powers_off(guest):
    # Runs last: libvirt's graceful shutdown presses the ACPI power button; the guest's init
    # must turn that into a clean power-off (QEMU then exits on its own with status 0).
    _qmp(guest.dir / "qmp.sock", "system_powerdown")
    try:
        code = guest.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the guest ignored the power button:\n{guest.console_text()[-2000:]}")
    assert code == 0
    text = guest.console_text()
    assert "power button pressed" in text
    assert "powering off" in text


def test_a_share_that_cannot_be_mounted_stops_the_guest_before_ready(tmp_path):
    # Fail closed: the seed asks for a share QEMU does not export. The guest must not
    # announce itself ready without it; it says why on the console and powers off.
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    missing = contract.Mount("cw-missing", "/workspace/missing", True)
    g = Guest(tmp_path, extra_mounts=(missing,))
    try:
        text = g.wait_ready()
        code = g.proc.wait(timeout=60)
    finally:
        g.stop()
    assert "COWORK-READY" not in text
    assert re.search(r"^COWORK-FAILED .*cw-missing", g.console_text(), re.M), g.console_text()
    assert code == 0  # powered off by the guest, not killed
