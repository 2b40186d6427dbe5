import json

from cowork.host.events import AuditLog, EventBus, Kind, Recorder, read_log, verify_log


def test_bus_delivers_to_subscribers_and_survives_a_failing_one(tmp_path):
    bus = EventBus(session="s1")
    rec = Recorder()

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(rec)
    bus.emit(Kind.VM_STARTED, accel="tcg")
    unsubscribe()
    bus.emit(Kind.VM_STOPPED)
    assert [e.kind for e in rec.events] == [Kind.VM_STARTED]
    assert rec.events[0].session == "s1"
    assert rec.events[0].fields == {"accel": "tcg"}


def test_audit_log_chain_detects_edits(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    bus = EventBus()
    bus.subscribe(log)
    for n in range(3):
        bus.emit(Kind.COMMAND_FINISHED, exited=n)
    assert verify_log(path) == []
    # A second writer continues the same chain.
    AuditLog(path).append(read_log(path)[0])
    assert verify_log(path) == []
    assert [e.fields.get("exited") for e in read_log(path)] == [0, 1, 2, 0]

    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["fields"]["exited"] = 99
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    assert any("line 2 was modified" in p for p in verify_log(path))

    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    assert any("does not follow" in p for p in verify_log(path))
