"""``cowork audit verify`` prints the first bad line and exits 1; 0 when intact."""

from __future__ import annotations

import json

from cowork.host.events import AuditLog, EventBus, Kind


def test_audit_verify_reports_the_first_bad_line(cli, tmp_path):
    log = tmp_path / "audit.jsonl"
    bus = EventBus(session="s")
    bus.subscribe(AuditLog(log))
    for i in range(3):
        bus.emit(Kind.AGENT_TEXT, text=str(i))
    proc = cli("audit", "verify", str(log))
    assert proc.returncode == 0, proc.stderr
    assert "intact (3 lines" in proc.stdout
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[2])
    proc = cli("audit", "verify", str(log), "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["first_bad_line"] == 2 and not out["ok"]
    proc = cli("audit", "verify", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "no audit log" in proc.stderr


def test_the_cli_bus_exports_when_policy_names_a_collector(tmp_path):
    from cowork.cli import common
    from cowork.paths import Paths
    from tests.host.test_export import HttpReceiver, _free_port

    receiver = HttpReceiver(_free_port())
    receiver.start()
    try:
        paths = Paths.under(tmp_path)
        paths.user_settings_file.parent.mkdir(parents=True)
        paths.user_settings_file.write_text(f'[audit]\notel_endpoint = "{receiver.endpoint}"\n')
        bus = common.event_bus(paths, "s9")
        bus.emit(Kind.SESSION_STARTED)
        bus.emit(Kind.SESSION_ENDED)
        exporter = common._EXPORTERS.pop(paths.export_queue)
        assert exporter.flush(30)
        exporter.close()
        assert receiver.received.seqs() == [1, 2]
        assert receiver.received.records[0]["resource"]["cowork.session"] == "s9"
    finally:
        receiver.stop()
