"""The sealed VM, end to end: a real guest booted through libvirt + QEMU (TCG)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from cowork.guest import contract
from cowork.host.events import Kind
from tests.e2e.conftest import Booted, expected_owner, make_warm_paths, sample_folders

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["cold", "restore", "pool"])
def sealed(request, booted, warm_cache, tmp_path_factory) -> Iterator[Booted]:
    """The module's cold-booted guest, then a guest restored from a warm-start template,
    then one taken from a warm pool: the isolation checks below must hold for every way a
    session starts."""
    if request.param == "cold":
        yield booted
        return
    from cowork.host.events import EventBus, Recorder
    from cowork.host.session import Session, VMSettings

    root = tmp_path_factory.mktemp("e2e-restored")
    paths = make_warm_paths(root / "cowork", warm_cache)
    ws, claude, outside = sample_folders(root)
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    settings = VMSettings(claude_dir=claude, memory_mib=1024, start_mode="restore")
    pool = None
    if request.param == "pool":
        from cowork.host.warm import WarmPool

        pool = WarmPool(
            lambda: Session.open(ws, paths=paths, events=bus, settings=settings),
            size=1, guest_memory_mib=1024, memory_cap_mib=1024, events=bus,
        )  # fmt: skip
        assert pool.wait_ready(1, timeout=600)
        sess = pool.take()
        assert sess is not None
    else:
        sess = Session.open(ws, paths=paths, events=bus, settings=settings)
    try:
        assert sess.state.start_mode == request.param
        yield Booted(sess, ws, claude, outside, rec)
    finally:
        sess.close()
        if pool is not None:
            pool.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


def test_echo_round_trip(booted):
    result = booted.run("echo hi there")
    assert result.ok
    assert result.stdout == "hi there\n"
    assert result.stderr == ""


def test_exit_codes_and_stderr_propagate(booted):
    result = booted.run("echo oops >&2; exit 7")
    assert result.exited == 7
    assert not result.ok
    assert result.stderr == "oops\n"


def test_commands_run_as_the_unprivileged_agent_in_the_workspace(booted):
    result = booted.run("id -un; id -u; pwd; command -v sudo || echo no-sudo")
    name, uid, cwd, sudo = result.stdout.split()
    assert name == contract.AGENT_USER
    assert int(uid) == expected_owner()[0] != 0
    assert cwd == contract.WORKSPACE_MOUNT
    assert sudo == "no-sudo"
    setuid = booted.run("find / -xdev -perm /6000 -type f 2>/dev/null")
    assert setuid.stdout == "", f"setuid/setgid files give a way to root: {setuid.stdout}"


def test_the_seed_disk_is_not_readable_by_the_agent(booted):
    result = booted.run(
        "for d in /sys/block/*; do "
        f'  if [ "$(cat $d/serial 2>/dev/null)" = {contract.SEED_SERIAL} ]; then '
        "    head -c 16 /dev/$(basename $d); fi; done"
    )
    assert contract.SEED_MAGIC.decode() not in result.stdout
    assert result.exited != 0 or "Permission denied" in result.stderr


def test_guest_writes_appear_on_the_host_owned_by_the_host_user(booted):
    result = booted.run(
        "echo from-guest > made-in-guest.txt && chmod 640 made-in-guest.txt && "
        "ln -s hello.txt link-in-guest && mkdir -p sub/dir && echo x > sub/dir/f"
    )
    assert result.ok, result.stderr
    made = booted.workspace / "made-in-guest.txt"
    assert made.read_text() == "from-guest\n"
    st = made.stat()
    assert (st.st_uid, st.st_gid) == expected_owner()
    assert st.st_mode & 0o777 == 0o640
    link = booted.workspace / "link-in-guest"
    assert link.is_symlink() and os.readlink(link) == "hello.txt"
    assert (booted.workspace / "sub" / "dir" / "f").stat().st_uid == expected_owner()[0]


def test_host_writes_appear_in_the_guest(booted):
    (booted.workspace / "from-host.txt").write_text("written on the host\n")
    result = booted.run("cat from-host.txt hello.txt")
    assert result.stdout == "written on the host\nhello from the host\n"


def test_claude_folders_are_read_only_in_the_guest(sealed):
    booted = sealed
    home_claude = f"{contract.AGENT_HOME}/.claude"
    result = booted.run(f"cat {home_claude}/settings.json")
    assert result.stdout == '{"theme": "dark"}\n'
    for target in ("/workspace/.claude", home_claude):
        probe = booted.run(f"touch {target}/planted 2>&1; echo rc=$?")
        assert "rc=0" not in probe.stdout, f"{target} is writable"
        assert "Read-only file system" in probe.stdout
    # Even the guest's root cannot remount them writable: QEMU enforces read-only.
    assert not (booted.workspace / ".claude" / "planted").exists()
    assert not (booted.claude / "planted").exists()
    # And the workspace's .claude cannot be moved aside to plant a new one.
    moved = booted.run("mv /workspace/.claude /workspace/claude-moved 2>&1; echo rc=$?")
    assert "rc=0" not in moved.stdout
    assert (booted.workspace / ".claude").is_dir()


def test_no_network_interface_but_loopback(sealed):
    booted = sealed
    result = booted.run("ls /sys/class/net")
    assert result.stdout.split() == ["lo"]
    raw = booted.run(
        'python3 -c "import socket; s=socket.socket(); s.settimeout(3); '
        "s.connect(('10.0.2.2', 80))\" 2>&1; echo rc=$?"
    )
    assert "rc=0" not in raw.stdout
    assert "unreachable" in raw.stdout.lower() or "no route" in raw.stdout.lower()


def test_mount_table_holds_only_the_two_folders(sealed):
    booted = sealed
    result = booted.run("cat /proc/mounts")
    allowed_tags = {contract.TAG_WORKSPACE, contract.TAG_WORKSPACE_CLAUDE, contract.TAG_USER_CLAUDE}
    pseudo = {
        "proc", "sysfs", "devtmpfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
        "securityfs", "pstore", "debugfs", "tracefs", "bpf", "hugetlbfs", "configfs",
        "fusectl", "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "ramfs",
    }  # fmt: skip
    shares = []
    for line in result.stdout.splitlines():
        source, target, fstype = line.split()[:3]
        if fstype == "9p":
            assert source in allowed_tags, line
            shares.append((source, target))
        elif fstype in ("ext4", "ext2", "ext3"):
            assert source.startswith("/dev/vd"), line
        else:
            assert fstype in pseudo, f"unexpected mount: {line}"
    assert sorted(shares) == sorted(
        [
            (contract.TAG_WORKSPACE, "/workspace"),
            (contract.TAG_WORKSPACE_CLAUDE, "/workspace/.claude"),
            (contract.TAG_USER_CLAUDE, f"{contract.AGENT_HOME}/.claude"),
        ]
    )


def test_host_files_outside_the_workspace_are_invisible(sealed):
    booted = sealed
    marker_name = booted.outside.name
    found = booted.run(f"find / -xdev -name {marker_name} 2>/dev/null; ls {booted.outside}")
    assert marker_name not in found.stdout
    assert found.exited != 0


def test_a_symlink_to_a_host_file_does_not_reveal_it(booted):
    (booted.workspace / "sneaky").symlink_to(booted.outside)
    (booted.workspace / "sneaky-dir").symlink_to(booted.outside.parent)
    result = booted.run("cat sneaky sneaky-dir/" + booted.outside.name + " 2>&1")
    assert "OUTSIDE-MARKER" not in result.stdout
    assert result.exited != 0


def test_channel_reconnects_twenty_times_without_corruption(booted):
    from cowork.host.channel import Channel
    from cowork.paths import CHANNEL_SOCKET_FILE, CLIENT_KEY_FILE

    sess = booted.session
    sock = sess.paths.session_runtime(sess.name) / CHANNEL_SOCKET_FILE
    key = (sess.paths.session_dir(sess.name) / CLIENT_KEY_FILE).read_text()
    payload = "x" * 100_000
    expected_digest = hashlib.sha256(payload.encode()).hexdigest()
    sess.channel.close()
    try:
        for n in range(20):
            ch = Channel.connect(
                sock, host_key=sess.state.host_public_key, client_key=key,
                user=contract.AGENT_USER, timeout=60,
            )  # fmt: skip
            try:
                if n % 5 == 4:
                    # Abandon a large transfer midway: its bytes stay queued in the port.
                    ch.run("head -c 20000000 /dev/zero", timeout=0.5)
                result = ch.run(f"printf %s {payload} | sha256sum; echo {n}")
                assert result.ok, result.stderr
                lines = result.stdout.split("\n")
                assert lines[0].split()[0] == expected_digest
                assert lines[1] == str(n)
            finally:
                ch.close()
    finally:
        sess.channel = Channel.connect(
            sock, host_key=sess.state.host_public_key, client_key=key,
            user=contract.AGENT_USER, timeout=60,
        )  # fmt: skip


def test_a_command_that_times_out_is_killed_in_the_guest(booted):
    result = booted.run("sleep 1000 & sleep 1001; echo never", timeout=3)
    assert result.timed_out
    assert result.exited == 124
    assert "never" not in result.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = booted.run("pgrep -f 'sleep 100[01]' || true").stdout.strip()
        if not left:
            break
        time.sleep(0.5)
    assert left == "", f"processes survived the timeout: {left}"


def test_boot_emitted_events(booted):
    kinds = [e.kind for e in booted.recorder.events]
    assert Kind.VM_STARTED in kinds
    assert Kind.VM_READY in kinds
    ready = booted.recorder.of(Kind.VM_READY)[0]
    assert ready.fields["accel"] in ("tcg", "kvm")
