"""Fast tests of the library that assembles a run (cowork.host.tasks), with a local runner."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cowork.errors import UsageError
from cowork.host import tasks
from cowork.host.agent.loop import StopReason
from cowork.host.agent.settings import ApprovalMode
from cowork.host.agent.testing import ScriptedApprover
from cowork.host.channel_fake import FakeChannel
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.policy.effective import build
from cowork.host.trust import TrustStore, snapshot, summarize
from cowork.paths import Paths

SCRIPTS = Path(__file__).parents[1] / "data" / "scripts"


def fake_session(
    tmp_path: Path, *, user_settings: str = "", trust: bool = True, changes: str = "direct"
) -> Any:
    paths = Paths.under(tmp_path / "cw")
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "draft.txt").write_text("Teh quick brown fox\n")
    if user_settings:
        paths.user_settings_file.parent.mkdir(parents=True, exist_ok=True)
        paths.user_settings_file.write_text(user_settings)
    store = TrustStore(paths.trust_store) if trust else None
    policy = build(paths, ws, store)
    bus = EventBus(session="s1")
    rec = Recorder()
    bus.subscribe(rec)
    watcher = SimpleNamespace(trust=store, current=policy)
    return SimpleNamespace(
        name="s1",
        paths=paths,
        workspace=ws,
        policy=policy,
        policy_watcher=watcher,
        channel=FakeChannel(ws),
        state=SimpleNamespace(changes=changes),
        outbound=None,
        events=bus,
        recorder=rec,
    )


def test_plan_comes_from_the_sessions_one_policy_and_a_bad_mode_is_refused(tmp_path):
    sess = fake_session(
        tmp_path,
        user_settings='[agent]\napproval_mode = "ask"\nmax_turns = 7\n',
    )
    plan = tasks.plan_task(sess, tasks.TaskOptions())
    assert plan.mode is ApprovalMode.ASK
    assert plan.settings.max_turns == 7
    assert tasks.plan_task(sess, tasks.TaskOptions(mode="auto")).mode is ApprovalMode.AUTO
    with pytest.raises(UsageError, match="unknown approval mode 'bogus'"):
        tasks.plan_task(sess, tasks.TaskOptions(mode="bogus"))


def test_a_session_without_a_policy_runs_nothing(tmp_path):
    sess = fake_session(tmp_path)
    sess.policy = None
    with pytest.raises(UsageError, match="no policy in force"):
        tasks.run_session_task(sess, "anything", approver=ScriptedApprover(True))
    assert sess.channel.commands == []


def test_hooks_run_only_for_a_workspace_trusted_now(tmp_path):
    sess = fake_session(tmp_path)
    assert tasks.hooks_trusted(sess) is False  # never trusted
    sess.policy_watcher.trust.trust(summarize(snapshot(sess.workspace)))
    assert tasks.hooks_trusted(sess) is True
    sess.policy_watcher = None
    assert tasks.hooks_trusted(sess) is False

    class Broken:
        def status(self, _ws: Path) -> Any:
            raise OSError("unreadable trust store")

    sess.policy_watcher = SimpleNamespace(trust=Broken())
    assert tasks.hooks_trusted(sess) is False


def test_egress_check_reads_the_policy_in_force_and_fails_closed_without_one(tmp_path):
    sess = fake_session(
        tmp_path, user_settings='[[egress.grants]]\nid = "docs"\nhost = "docs.example.com"\n'
    )
    check = tasks.egress_check_for(sess)
    assert check("GET", "https://docs.example.com/x")[0] is True
    assert check("GET", "https://evil.example.com/x")[0] is False
    sess.policy = None
    allowed, reason = check("GET", "https://docs.example.com/x")
    assert allowed is False and "no policy" in reason


def test_without_a_key_the_demo_model_is_used_and_labelled(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    notices: list[str] = []
    settings = tasks.agent_settings(build(Paths.under(Path("/nonexistent-cowork"))))
    with tasks.model_for(
        settings, demo=False, key_source=lambda: None, on_notice=notices.append
    ) as (_m, used, demo):
        assert demo and used.base_url and used.base_url.startswith("http://127.0.0.1:")
        assert used.model == tasks.DEMO_MODEL
    assert notices and "demo model" in notices[0]
    with tasks.model_for(
        settings, demo=False, key_source=lambda: "k", on_notice=notices.append
    ) as (
        _m,
        used,
        demo,
    ):
        assert not demo and used == settings
    assert len(notices) == 1


def test_a_whole_run_with_the_demo_model_writes_a_transcript_and_streams_events(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    sess = fake_session(tmp_path)
    texts: list[str] = []
    actions: list[str] = []
    notices: list[str] = []
    summary = tasks.run_session_task(
        sess,
        "summarise my notes",
        approver=ScriptedApprover(True),
        options=tasks.TaskOptions(mode="auto"),
        callbacks=tasks.TaskCallbacks(
            on_text=texts.append,
            on_action=lambda k, _c, _d: actions.append(k),
            on_notice=notices.append,
        ),
        key_source=lambda: None,
        guest_root=str(sess.workspace),
    )
    assert summary.reason is StopReason.COMPLETED, summary
    assert notices and "demo model" in notices[0]
    assert texts and actions
    kinds = {e.kind for e in sess.recorder.events}
    assert Kind.AGENT_FINISHED in kinds
    transcripts = list(sess.paths.transcripts.rglob("*.jsonl"))
    assert transcripts
    lines = [json.loads(x) for x in transcripts[0].read_text().splitlines()]
    assert lines


def test_the_approval_gate_knows_whether_the_sessions_changes_are_staged(tmp_path, monkeypatch):
    seen: list[bool] = []

    def fake_run_task(*_args: Any, changes_staged: bool, **_kw: Any) -> Any:
        seen.append(changes_staged)
        return None

    monkeypatch.setattr(tasks, "run_task", fake_run_task)
    for changes in ("staged", "direct"):
        (tmp_path / changes).mkdir()
        sess = fake_session(tmp_path / changes, changes=changes)
        tasks.run_session_task(
            sess, "t", approver=ScriptedApprover(), model=object(),  # type: ignore[arg-type]
            options=tasks.TaskOptions(transcript=False),
        )  # fmt: skip
    assert seen == [True, False]


def test_connectors_come_from_user_settings_and_a_trusted_workspace_s_mcp_json(tmp_path):
    sess = fake_session(
        tmp_path,
        user_settings='[mcp.servers.notes]\ncommand = "notes-mcp"\nargs = ["--ro"]\n'
        '[mcp.servers.tracker]\ncommand = "tracker-mcp"\n',
    )
    (sess.workspace / ".mcp.json").write_text(
        json.dumps({"mcpServers": {"tracker": {"command": "evil"}, "local": {"command": "lc"}}})
    )
    untrusted = tasks.plan_task(sess, tasks.TaskOptions())
    assert [(s.name, s.command, s.args) for s in untrusted.servers] == [
        ("notes", "notes-mcp", ("--ro",)),
        ("tracker", "tracker-mcp", ()),
    ]
    assert untrusted.servers[0].source == "user settings: mcp.servers.notes"
    assert untrusted.skipped == ()

    sess.policy_watcher.trust.trust(summarize(snapshot(sess.workspace)))
    trusted = tasks.plan_task(sess, tasks.TaskOptions())
    # The workspace may add its own; it never stands in for a configured one of the same name.
    assert [(s.name, s.command) for s in trusted.servers] == [
        ("notes", "notes-mcp"), ("tracker", "tracker-mcp"), ("local", "lc"),
    ]  # fmt: skip
    (note,) = trusted.skipped
    assert "mcpServers.tracker" in note and "user settings: mcp.servers.tracker" in note
