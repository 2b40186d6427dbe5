"""The host side of the activity monitor: records become events tied to the running tool
call; a silent or restarted monitor is noticed; the timeline reads in plain words."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from cowork.host.activity import MonitorReader, timeline
from cowork.host.events import AuditLog, EventBus, Kind, Recorder
from tests.waiting import wait_until


class FakePort:
    """The host end QEMU would bind: a unix socket server; the test plays the guest."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.conn: socket.socket | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.conn, _ = self.server.accept()

    def send(self, *records: dict) -> None:
        while self.conn is None:
            time.sleep(0.01)
        self.conn.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in records))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def test_records_become_events_with_the_tool_call(tmp_path):
    port = FakePort(tmp_path / "m.sock")
    bus, rec = EventBus(session="s"), Recorder()
    bus.subscribe(rec)
    bus.subscribe(AuditLog(tmp_path / "audit.jsonl"))
    lost: list[str] = []
    reader = MonitorReader(tmp_path / "m.sock", bus, "s", on_lost=lost.append)
    try:
        port.send({"t": "hello", "pid": 5, "time": 1.0})
        bus.emit(Kind.ACTION_DECIDED, call_id="toolu_1", verdict="run", action="run ls")
        bus.emit(Kind.COMMAND_STARTED, command="ls", job="j1")
        port.send(
            {"t": "proc", "pid": 9, "ppid": 5, "uid": 1000, "argv": ["ls"], "time": 2.0},
            {
                "t": "file",
                "op": "renamed",
                "path": "/workspace/a",
                "to": "/workspace/b",
                "dir": False,
                "time": 2.1,
            },
            {
                "t": "net",
                "syscall": "socket",
                "pid": 9,
                "uid": 1000,
                "exe": "/usr/bin/python3",
                "error": "Operation not permitted",
                "errno": 1,
                "time": 2.2,
            },
            {"t": "hb", "seq": 1, "time": 2.3},
        )
        assert wait_until(lambda: len(rec.of(Kind.GUEST_SOCKET)) == 1)
        # the audit log subscriber runs after the recorder: wait for its line too
        assert wait_until(lambda: "guest.socket" in (tmp_path / "audit.jsonl").read_text())
        (proc,) = rec.of(Kind.GUEST_PROCESS)
        assert proc.fields["call_id"] == "toolu_1" and proc.fields["job"] == "j1"
        assert proc.fields["argv"] == ["ls"] and proc.fields["guest_time"] == 2.0
        (f,) = rec.of(Kind.GUEST_FILE)
        assert f.fields["to"] == "/workspace/b" and f.fields["call_id"] == "toolu_1"
        assert lost == []
        text = "\n".join(
            timeline(json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines())
        )
        assert "the agent started 'ls' (pid 9, parent 5) (tool call toolu_1)" in text
        assert "file /workspace/a renamed to /workspace/b" in text
        assert "/usr/bin/python3 (pid 9) tried a network socket outside the proxy" in text
    finally:
        reader.stop()
        port.close()


def test_a_silent_monitor_is_lost_and_the_handler_runs(tmp_path):
    port = FakePort(tmp_path / "m.sock")
    bus, rec = EventBus(session="s"), Recorder()
    bus.subscribe(rec)
    lost: list[str] = []
    reader = MonitorReader(
        tmp_path / "m.sock", bus, "s", on_lost=lost.append, heartbeat_timeout=1.0
    )
    try:
        port.send({"t": "hello", "pid": 5, "time": 1.0})
        for _ in range(3):
            port.send({"t": "hb"})
            time.sleep(0.3)
        assert lost == []
        assert wait_until(lambda: bool(lost))  # then nothing: the monitor died
        assert "stopped reporting" in lost[0]
        (ev,) = rec.of(Kind.MONITOR_LOST)
        assert ev.fields["reason"] == lost[0]
    finally:
        reader.stop()
        port.close()


def test_a_monitor_that_never_starts_or_restarts_is_lost(tmp_path):
    port = FakePort(tmp_path / "m.sock")
    bus = EventBus(session="s")
    lost: list[str] = []
    reader = MonitorReader(tmp_path / "m.sock", bus, "s", on_lost=lost.append, hello_timeout=0.5)
    try:
        assert wait_until(lambda: bool(lost))
        assert "never started" in lost[0]
    finally:
        reader.stop()
        port.close()
    port = FakePort(tmp_path / "m2.sock")
    lost2: list[str] = []
    reader = MonitorReader(tmp_path / "m2.sock", bus, "s", on_lost=lost2.append)
    try:
        port.send({"t": "hello", "pid": 5}, {"t": "hello", "pid": 6})
        assert wait_until(lambda: bool(lost2))
        assert "restarted" in lost2[0]
    finally:
        reader.stop()
        port.close()


def test_an_attached_reader_needs_no_hello_but_still_a_heartbeat(tmp_path):
    port = FakePort(tmp_path / "m.sock")
    lost: list[str] = []
    reader = MonitorReader(
        tmp_path / "m.sock", EventBus(session="s"), "s", on_lost=lost.append,
        heartbeat_timeout=1.0, hello_timeout=5.0, attached=True,
    )  # fmt: skip
    try:
        port.send({"t": "hb", "seq": 7, "cpu_s": 0.5})
        assert wait_until(lambda: reader.last_hb is not None)
        assert reader.last_hb["cpu_s"] == 0.5 and lost == []
        assert wait_until(lambda: bool(lost))
        assert "stopped reporting" in lost[0]
    finally:
        reader.stop()
        port.close()


def test_task_and_tool_call_ends_read_in_plain_words():
    from cowork.host.activity import describe

    def line(kind: Kind, **fields: object) -> dict:
        return {"kind": str(kind), "fields": fields}

    assert describe(line(Kind.AGENT_STARTED, task_id="ab12")) == "task ab12 started"
    assert describe(
        line(Kind.TOOL_FINISHED, call_id="c1", tool="bash", outcome="error", seconds=0.5)
    ) == ("tool call c1 (bash) finished: error after 0.5 s")
    assert describe(line(Kind.AGENT_FINISHED, task_id="ab12", reason="completed")) == (
        "task ab12 finished: completed"
    )
    assert describe(line(Kind.AGENT_FINISHED, task_id="ab12", reason="x", error="no key")) == (
        "task ab12 finished: no key"
    )
