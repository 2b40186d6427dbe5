"""``cowork why`` and ``cowork request-exception`` through the command line."""

from __future__ import annotations

import json

from cowork.host.events import AuditLog, EventBus, Kind


def test_why_and_request_exception(cli, tmp_path):
    log = cli.root / "data" / "cowork" / "audit.jsonl"
    bus = EventBus(session="s")
    bus.subscribe(AuditLog(log))
    bus.emit(Kind.AGENT_TEXT, text="hello")
    bus.emit(
        Kind.EGRESS_DENIED, reason="no grant for this host", method="GET", scheme="http",
        host="example.com", port=80, path="/data.csv",
    )  # fmt: skip
    proc = cli("why", "2")
    assert proc.returncode == 0, proc.stderr
    assert "GET example.com:80/data.csv was refused" in proc.stdout
    assert 'paths = ["/data.csv"]' in proc.stdout
    proc = cli("why", "1")
    assert proc.returncode == 2 and "not a refusal" in proc.stderr
    proc = cli("why", "x")
    assert proc.returncode == 2 and "event number" in proc.stderr

    proc = cli("request-exception", "2", "--note", "need the data")
    assert proc.returncode == 2 and "exception_inbox" in proc.stderr
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = cli.root / "config" / "cowork" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(f'[audit]\nexception_inbox = "{inbox}"\n')
    proc = cli("request-exception", "2", "--note", "need the data")
    assert proc.returncode == 0, proc.stderr
    (req,) = inbox.iterdir()
    data = json.loads(req.read_text())
    assert data["note"] == "need the data" and "[[egress.grants]]" in data["snippet"]
    snippet = tmp_path / "snippet.toml"
    snippet.write_text(data["snippet"])
    proc = cli("policy", "check", str(snippet))
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_refusals_are_shown_with_their_event_number(tmp_path, capsys):
    from cowork.cli.common import event_bus
    from cowork.paths import Paths

    bus = event_bus(Paths.under(tmp_path))
    bus.emit(Kind.AGENT_TEXT, text="hello")
    bus.emit(Kind.EGRESS_DENIED, reason="no grant for this host", host="a.example.com")
    err = capsys.readouterr().err
    assert "event 2: 'cowork why 2' explains it" in err
    assert "event 1" not in err
