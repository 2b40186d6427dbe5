"""The guest activity monitor in a real VM: a command's process tree, file changes and a raw
socket attempt reach the host as events tied to the tool call; the agent cannot see, kill or
ptrace the monitor; a monitor that stops reporting is noticed and the VM is stopped."""

from __future__ import annotations

import time

from cowork.host.events import Kind

COMMAND = r"""
set -e
mkdir -p act
sh -c 'sleep 0.4; echo tree-child-one' &
sh -c 'sleep 0.4; echo tree-child-two' &
wait
echo data > act/a.txt
mv act/a.txt act/b.txt
rm act/b.txt
python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' \
  2>/dev/null || echo raw-socket-refused
"""


def _wait(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_a_command_tree_files_and_a_raw_socket_appear_with_the_tool_call(booted):
    sess, rec = booted.session, booted.recorder
    assert sess.monitor is not None
    assert _wait(lambda: sess.monitor.hello is not None), "the monitor never said hello"
    sess.events.emit(Kind.ACTION_DECIDED, call_id="toolu_act1", verdict="run", action="test")
    before = len(rec.events)
    result = booted.run(COMMAND, timeout=120)
    assert result.exited == 0, result.stderr
    assert "raw-socket-refused" in result.stdout

    def new(kind: Kind) -> list:
        return [e for e in rec.events[before:] if e.kind == kind]

    def files() -> set[tuple[str, str, str | None]]:
        return {
            (e.fields["op"], e.fields["path"], e.fields.get("to")) for e in new(Kind.GUEST_FILE)
        }

    wanted = {
        ("created", "/workspace/act/a.txt", None),
        ("modified", "/workspace/act/a.txt", None),
        ("renamed", "/workspace/act/a.txt", "/workspace/act/b.txt"),
        ("deleted", "/workspace/act/b.txt", None),
    }
    assert _wait(lambda: wanted <= files()), files()
    assert _wait(lambda: bool(new(Kind.GUEST_SOCKET))), "no failed socket reported"
    (hello,) = [sess.monitor.hello]
    assert hello["net"] == "audit", hello
    sock = next(e for e in new(Kind.GUEST_SOCKET) if e.fields.get("syscall") == "socket")
    assert sock.fields["errno"] == 1 and sock.fields["uid"] != 0
    assert "python3" in sock.fields["exe"] and sock.fields["call_id"] == "toolu_act1"

    procs = new(Kind.GUEST_PROCESS)
    info = [p.fields for p in procs]

    def argv(p) -> list[str]:
        return list(p.fields.get("argv") or [""])

    children = [p for p in procs if argv(p)[0] == "sh" and "tree-child" in " ".join(argv(p))]
    assert len(children) == 2, info
    parents = {p.fields["ppid"] for p in children}
    assert len(parents) == 1, info  # both forked by the command's shell
    shell = [p for p in procs if p.fields["pid"] in parents]
    assert shell and shell[0].fields["exe"].endswith("bash"), info
    sleeps = [p for p in procs if argv(p)[0] == "sleep"]
    assert {p.fields["ppid"] for p in sleeps} >= {p.fields["pid"] for p in children}, info
    for event in [*procs, *new(Kind.GUEST_FILE)]:
        if event.fields.get("uid", 1) != 0:
            assert event.fields.get("call_id") == "toolu_act1", event.fields
    for p in [*children, *sleeps]:
        assert p.fields["uid"] != 0 and p.fields["call_id"] == "toolu_act1"
        assert p.fields["job"]


def test_the_agent_cannot_see_kill_or_trace_the_monitor(booted):
    sess = booted.session
    assert _wait(lambda: sess.monitor.hello is not None)
    pid = sess.monitor.hello["pid"]
    seen = booted.run("ps -eo pid,user,args; ls /proc", timeout=60)
    assert "cowork.guest.monitor" not in seen.stdout
    assert f"\n{pid}\n" not in "\n" + seen.stdout.replace(" ", "\n") + "\n"
    assert booted.run(f"kill -9 {pid}", timeout=60).exited != 0
    assert booted.run(f"kill -STOP {pid}", timeout=60).exited != 0
    traced = booted.run(
        "python3 -c 'import ctypes,sys; "
        f"sys.exit(0 if ctypes.CDLL(None).ptrace(16, {pid}, 0, 0) == -1 else 1)'",
        timeout=60,
    )
    assert traced.exited == 0, "ptrace attach to the monitor succeeded"
    hb = sess.monitor.last_seen
    time.sleep(3)
    assert sess.monitor.last_seen > hb and sess.monitor.lost_reason is None


def test_a_monitor_that_stops_reporting_is_noticed_and_the_vm_stopped(booted):
    """Last in the module: freezes the guest (nothing in it runs, the monitor included)."""
    sess = booted.session
    backend = sess.backend
    dom = backend._require(sess.name)  # type: ignore[attr-defined]
    dom.suspend()
    assert _wait(lambda: sess.monitor.lost_reason is not None, timeout=30)
    assert "stopped reporting" in sess.monitor.lost_reason
    lost = booted.recorder.of(Kind.MONITOR_LOST)
    assert lost and lost[0].session == sess.name
    assert _wait(lambda: backend.status(sess.name).state.value != "running", timeout=30)
