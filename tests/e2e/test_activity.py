"""The guest activity monitor in a real VM: a command's process tree, file changes and a raw
socket attempt reach the host as events tied to the tool call; the agent cannot see, kill or
ptrace the monitor; a monitor that stops reporting (the guest frozen) or is killed by root in
the guest is noticed within the heartbeat bound, and the session is stopped or marked as the
policy says."""

from __future__ import annotations

import time

import pytest

from cowork.guest import contract
from cowork.host.events import Kind
from tests.e2e.conftest import make_paths, make_workspace
from tests.waiting import wait_until

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


def test_a_command_tree_files_and_a_raw_socket_appear_with_the_tool_call(booted):
    sess, rec = booted.session, booted.recorder
    assert sess.monitor is not None
    assert wait_until(lambda: sess.monitor.hello is not None, 30), "the monitor never said hello"
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
    assert wait_until(lambda: wanted <= files(), 30), files()
    assert wait_until(lambda: bool(new(Kind.GUEST_SOCKET)), 30), "no failed socket reported"
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
    assert wait_until(lambda: sess.monitor.hello is not None, 30)
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
    assert wait_until(lambda: sess.monitor.lost_reason is not None, timeout=30)
    assert "stopped reporting" in sess.monitor.lost_reason
    lost = booted.recorder.of(Kind.MONITOR_LOST)
    assert lost and lost[0].session == sess.name
    assert wait_until(lambda: backend.status(sess.name).state.value != "running", timeout=30)


# --- the monitor killed by root inside the guest -----------------------------------------------
#: How long after the monitor starts the test's root step kills it: long enough for the host to
#: have connected and seen the monitor's hello under TCG, short enough for a quick test.
KILL_AFTER_S = 20.0
KILLED_MARKER = "COWORK-TEST-MONITOR-KILLED"

#: Appended to the guest's init (only in the seed these tests build): wraps the step that starts
#: the monitor so that, as root, a forked child SIGKILLs the monitor KILL_AFTER_S later and says
#: so on the console. No product code path can add a step like this: the guest code comes from
#: the host's own package (``contract.guest_code_files``), which only the tests replace here.
_ROOT_KILL_STEP = f'''

_start_activity_monitor = start_activity_monitor


def start_activity_monitor(log):
    pid = _start_activity_monitor(log)
    if pid is not None and os.fork() == 0:
        try:
            time.sleep({KILL_AFTER_S!r})
            os.kill(pid, signal.SIGKILL)
            console("{KILLED_MARKER} %d uid %d" % (pid, os.getuid()))
        finally:
            os._exit(0)
    return pid
'''
_REAL_GUEST_CODE = contract.guest_code_files
_MAIN = 'if __name__ == "__main__":\n    main()\n'


def _guest_code_with_a_root_kill_step() -> dict[str, str]:
    files = _REAL_GUEST_CODE()
    init = files["cowork/guest/init.py"]
    assert init.endswith(_MAIN), "init.py no longer ends with its __main__ block"
    files["cowork/guest/init.py"] = init[: -len(_MAIN)] + _ROOT_KILL_STEP + "\n\n" + _MAIN
    return files


def _open_with_monitor_killer(tmp_path, monkeypatch, mode: str):
    from cowork.host.events import EventBus, Recorder
    from cowork.host.session import Session, VMSettings

    monkeypatch.setattr(contract, "guest_code_files", _guest_code_with_a_root_kill_step)
    paths = make_paths(tmp_path / "cowork")
    paths.admin.mkdir(parents=True)
    paths.admin_policy_file.write_text(f'[audit]\nmonitor_lost = "{mode}"\n')
    ws = make_workspace(tmp_path)
    claude = tmp_path / "user-claude"
    claude.mkdir()
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    sess = Session.open(
        ws, paths=paths, events=bus, settings=VMSettings(claude_dir=claude, memory_mib=1024)
    )
    return sess, rec, paths


def _killed_at(console_log, timeout: float) -> float:
    """Host clock when the guest's root step reported the kill on the console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = console_log.read_text(errors="replace")
        except OSError:
            text = ""
        if KILLED_MARKER in text:
            return time.time()
        time.sleep(0.05)
    raise AssertionError(f"the root step never killed the monitor:\n{text[-2000:]}")


@pytest.mark.parametrize("mode", ["stop", "mark"])
def test_killing_the_monitor_as_root_in_the_guest_is_noticed(
    image_ready, tmp_path, monkeypatch, mode
):
    import shutil

    from cowork.guest.monitor import HEARTBEAT_S
    from cowork.host.activity import HEARTBEAT_TIMEOUT_S
    from cowork.paths import CONSOLE_LOG_FILE

    sess, rec, paths = _open_with_monitor_killer(tmp_path, monkeypatch, mode)
    try:
        assert sess.monitor is not None
        assert wait_until(lambda: sess.monitor.hello is not None, 30), (
            "the monitor never said hello"
        )
        assert sess.monitor.lost_reason is None, sess.monitor.lost_reason
        killed = _killed_at(paths.session_dir(sess.name) / CONSOLE_LOG_FILE, KILL_AFTER_S + 60)
        assert f"{KILLED_MARKER} {sess.monitor.hello['pid']} uid 0" in (
            paths.session_dir(sess.name) / CONSOLE_LOG_FILE
        ).read_text(errors="replace")
        bound = HEARTBEAT_TIMEOUT_S + HEARTBEAT_S + 2.0  # + the console poll and a loaded host
        assert wait_until(lambda: bool(rec.of(Kind.MONITOR_LOST)), timeout=bound + 30)
        (lost,) = rec.of(Kind.MONITOR_LOST)
        assert lost.session == sess.name
        assert "stopped reporting" in lost.fields["reason"], lost.fields
        noticed = lost.time - killed
        print(f"monitor killed -> monitor.lost on the host: {noticed:.2f} s ({mode})")
        assert noticed <= bound, f"noticed {noticed:.1f} s after the kill (bound {bound} s)"
        state = lambda: sess.backend.status(sess.name).state.value  # noqa: E731
        if mode == "stop":
            # Fail closed: the VM is stopped, nothing more runs in it.
            assert wait_until(lambda: state() != "running", timeout=30), state()
        else:
            # Marked: the session goes on, and the loss stands in the event stream.
            time.sleep(2)
            assert state() == "running"
            assert sess.channel.run("echo still-here", timeout=60).stdout.strip() == "still-here"
            assert len(rec.of(Kind.MONITOR_LOST)) == 1
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)
