"""The trust gate: pinned hashes, lapse on change, safe summary, fail closed."""

from __future__ import annotations

import json
import os

import pytest

from cowork.errors import TrustError
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.trust import TrustState, TrustStore, show, snapshot, summarize


@pytest.fixture
def store(tmp_path):
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    s = TrustStore(tmp_path / "data" / "trust.json", bus)
    s.recorder = rec  # type: ignore[attr-defined]
    return s


@pytest.fixture
def ws(tmp_path):
    w = tmp_path / "ws"
    (w / ".claude").mkdir(parents=True)
    (w / ".claude" / "settings.json").write_text(
        json.dumps(
            {
                "hooks": {"Stop": [{"matcher": "*", "hooks": [{"command": "make lint"}]}]},
                "env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "FOO": "bar"},
                "permissions": {"defaultMode": "acceptEdits", "allow": ["Bash(ls)"]},
                "apiKeyHelper": "get-key.sh",
            }
        )
    )
    (w / ".mcp.json").write_text(
        json.dumps({"mcpServers": {"db": {"command": "db-mcp", "args": ["--ro"]}}})
    )
    (w / ".cowork.toml").write_text("[vm]\ncpus = 1\n[agent]\nbase_url = 'https://x.example'\n")
    return w


def test_summary_lists_every_item_in_plain_language(ws):
    text = "\n".join(summarize(snapshot(ws)).lines())
    assert "hook on Stop (matching *) runs the command `make lint` inside the VM" in text
    assert "MCP server db runs `db-mcp --ro` inside the VM" in text
    assert "ANTHROPIC_BASE_URL = http://127.0.0.1:1 (cowork never applies this on the host)" in text
    assert "sets environment variable FOO = bar" in text
    assert "permission mode acceptEdits" in text
    assert "apiKeyHelper runs the command `get-key.sh`" in text
    assert "vm.cpus = 1 (applied only where it narrows)" in text
    assert "agent.base_url = https://x.example (a workspace cannot set this; ignored)" in text


def test_summary_escapes_terminal_control_characters():
    assert show("a\x1b[2Jb\x07") == "a\\x1b[2Jb\\x07"
    assert len(show("x" * 10000)) <= 300


def test_untrusted_then_trusted_then_lapsed_on_change(store, ws):
    assert store.status(ws).state is TrustState.UNTRUSTED
    store.trust(summarize(snapshot(ws)))
    assert store.status(ws).trusted
    assert store.verified_snapshot(ws) is not None
    (ws / ".mcp.json").write_text(json.dumps({"mcpServers": {}}))
    status = store.status(ws)
    assert status.state is TrustState.LAPSED and status.changed == (".mcp.json",)
    assert store.verified_snapshot(ws) is None
    assert store.recorder.of(Kind.TRUST_GRANTED) and store.recorder.of(Kind.TRUST_LAPSED)


@pytest.mark.parametrize(
    "rel", [".claude/settings.local.json", ".cowork.toml", ".claude/settings.json"]
)
def test_adding_or_removing_any_config_file_lapses_trust(store, ws, rel):
    store.trust(summarize(snapshot(ws)))
    path = ws / rel
    if path.exists():
        path.unlink()
    else:
        path.write_text("{}")
    assert store.status(ws).state is TrustState.LAPSED


def test_trust_pins_what_was_shown_not_what_is_there_later(store, ws):
    summary = summarize(snapshot(ws))
    (ws / ".cowork.toml").write_text("[vm]\ncpus = 1\n# changed after the user looked\n")
    store.trust(summary)
    assert store.status(ws).state is TrustState.LAPSED


def test_untrust_and_list(store, ws):
    store.trust(summarize(snapshot(ws)))
    assert [r.workspace for r in store.records()] == [ws.resolve()]
    assert store.untrust(ws) is True and store.untrust(ws) is False
    assert store.status(ws).state is TrustState.UNTRUSTED
    assert store.recorder.of(Kind.TRUST_REVOKED)
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"


def test_config_with_problems_cannot_be_trusted(store, ws):
    (ws / ".mcp.json").write_text('{"mcpServers": {}, "mcpServers": {"x": {"command": "evil"}}}')
    summary = summarize(snapshot(ws))
    assert any("appears more than once" in p for p in summary.problems)
    with pytest.raises(TrustError, match="problems"):
        store.trust(summary)


def test_symlinked_or_special_config_files_are_never_followed(store, ws, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text('{"k": "host secret"}')
    (ws / ".mcp.json").unlink()
    (ws / ".mcp.json").symlink_to(secret)
    os.mkfifo(ws / ".cowork.toml.fifo")
    (ws / ".cowork.toml").unlink()
    os.mkfifo(ws / ".cowork.toml")
    snap = snapshot(ws)  # must not block on the FIFO
    summary = summarize(snap)
    assert "host secret" not in "\n".join(summary.lines())
    assert any("symbolic link" in p for p in summary.problems)
    assert any("not a regular file" in p for p in summary.problems)


def test_damaged_store_fails_closed(store, ws):
    store.trust(summarize(snapshot(ws)))
    store.path.write_text("{not json")
    assert store.status(ws).state is TrustState.UNTRUSTED
    assert store.verified_snapshot(ws) is None
    with pytest.raises(TrustError, match="damaged"):
        store.records()


def test_any_exception_in_the_check_denies(store, ws, monkeypatch):
    store.trust(summarize(snapshot(ws)))

    def broken(workspace):
        raise RuntimeError("unexpected")

    monkeypatch.setattr("cowork.host.trust.snapshot", broken)
    assert store.status(ws).state is TrustState.UNTRUSTED
    assert store.verified_snapshot(ws) is None
