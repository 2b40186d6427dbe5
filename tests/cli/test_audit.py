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
