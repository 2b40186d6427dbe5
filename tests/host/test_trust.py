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


# --- races: what is hashed is what is read, through descriptors opened once -----------------


def _swap_claude_for_link(ws, tmp_path, *, same_content: bool):
    """Replace ws/.claude by a symlink to a look-alike folder elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere).mkdir(exist_ok=True)
    original = (ws / ".claude" / "settings.json").read_bytes()
    (ws / ".claude").rename(tmp_path / "moved-away")
    data = original if same_content else b'{"hooks": {"Stop": [{"command": "evil"}]}}'
    (elsewhere / "settings.json").write_bytes(data)
    (ws / ".claude").symlink_to(elsewhere)


@pytest.mark.parametrize("same_content", [True, False])
def test_claude_swapped_for_a_symlink_between_check_and_snapshot_is_refused(
    store, ws, tmp_path, same_content
):
    from cowork.host import workspace as ws_mod
    from cowork.paths import Paths

    store.trust(summarize(snapshot(ws)))
    # The workspace check sees a real .claude folder ...
    ws_mod.check_workspace(ws, paths=Paths.under(tmp_path / "cw"))
    steps: list[str] = []

    def swap(name: str) -> None:
        steps.append(name)
        if name == "open .claude":  # ... and it is swapped just before the snapshot opens it
            _swap_claude_for_link(ws, tmp_path, same_content=same_content)

    assert store.verified_snapshot(ws, step=swap) is None
    assert "open .claude" in steps
    snap = snapshot(ws)
    summary = summarize(snap)
    assert any(".claude is a symbolic link" in p for p in summary.problems)
    assert store.status(ws, snap).state is TrustState.LAPSED
    with pytest.raises(TrustError):
        store.trust(summary)


def test_a_swap_after_the_folder_is_opened_does_not_change_what_is_read(store, ws, tmp_path):
    original = (ws / ".claude" / "settings.json").read_bytes()
    store.trust(summarize(snapshot(ws)))

    def swap(name: str) -> None:
        if name == "open .claude/settings.json":
            _swap_claude_for_link(ws, tmp_path, same_content=False)

    snap = snapshot(ws, step=swap)
    # The descriptor of the real folder was already open: the attacker's file is never read.
    assert snap.file(".claude/settings.json").data == original
    assert snap.file(".claude/settings.local.json").present is False


def test_a_file_swapped_for_a_symlink_is_refused(store, ws, tmp_path):
    store.trust(summarize(snapshot(ws)))
    (tmp_path / "copy.json").write_bytes((ws / ".mcp.json").read_bytes())

    def swap(name: str) -> None:
        if name == "open .mcp.json":
            (ws / ".mcp.json").unlink()
            (ws / ".mcp.json").symlink_to(tmp_path / "copy.json")

    assert store.verified_snapshot(ws, step=swap) is None
    assert any("symbolic link" in p for p in summarize(snapshot(ws)).problems)


def test_a_workspace_swapped_for_a_symlink_fails_closed(store, ws, tmp_path):
    store.trust(summarize(snapshot(ws)))
    other = tmp_path / "other"

    def swap(name: str) -> None:
        if name == "open workspace":
            ws.rename(other)
            ws.symlink_to(other)

    assert store.verified_snapshot(ws, step=swap) is None  # ELOOP: fails closed
    assert store.status(ws).state is not TrustState.TRUSTED


def test_a_claude_that_is_a_file_is_a_problem(ws):
    import shutil

    shutil.rmtree(ws / ".claude")
    (ws / ".claude").write_text("x")
    snap = snapshot(ws)
    assert any(".claude is not a folder" in (f.problem or "") for f in snap.files)
