import json
from pathlib import Path

import anthropic
import pytest

from cowork.host.agent.driver import AnthropicModel, resolve_api_key
from cowork.host.agent.loop import CallModel, StopReason
from cowork.host.agent.offline import OfflineModel, demo_script, load_script, sse_events
from cowork.host.agent.settings import AgentSettings
from cowork.host.agent.task import run_task
from cowork.host.agent.testing import ScriptedApprover
from cowork.host.agent.transcript import Transcript
from cowork.host.channel_fake import FakeChannel
from cowork.host.events import EventBus, Kind, Recorder
from cowork.paths import Paths

SCRIPTS = Path(__file__).parents[2] / "data" / "scripts"


def snapshot(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "draft.txt").write_text("Teh quick brown fox\n")
    (root / "keep.txt").write_text("untouched\n")
    return root


def run_script(script, ws, tmp_path, *, approver=None, runner=None, max_turns=10, **kw):
    bus = EventBus(session="t")
    rec = Recorder()
    bus.subscribe(rec)
    sleeps = []
    with OfflineModel(script) as server:
        settings = AgentSettings(base_url=server.base_url, max_turns=max_turns)
        model = AnthropicModel(settings, "test-key", sleep=sleeps.append)
        transcript = Transcript.create(Paths.under(tmp_path / "cw"), ws)
        summary = run_task(
            runner or FakeChannel(ws),
            "Fix the typo and write a summary",
            settings=settings,
            events=bus,
            approver=approver or ScriptedApprover(False),
            model=model,
            transcript=transcript,
            root=str(ws),
            state_dir=str(tmp_path / "state"),
            **kw,
        )
        return summary, server, rec, sleeps, transcript


def test_scripted_task_through_the_real_sdk_changes_exactly_the_expected_files(ws, tmp_path):
    before = snapshot(ws)
    summary, server, rec, sleeps, transcript = run_script(
        load_script(SCRIPTS / "edit_task.json"), ws, tmp_path
    )
    assert server.problems == []
    assert summary.reason is StopReason.COMPLETED
    assert (summary.ran, summary.asked, summary.refused) == (4, 0, 0)
    after = snapshot(ws)
    assert after["draft.txt"] == b"The quick brown fox\n"
    assert after["notes/summary.md"] == b"# Summary\n\nA fox jumps.\n"
    assert after["counts.txt"].decode().split() == [
        "4", "draft.txt", "5", "notes/summary.md", "9", "total",
    ]  # fmt: skip
    changed = {k for k in after if after.get(k) != before.get(k)}
    assert changed == {"draft.txt", "notes/summary.md", "counts.txt"}
    # Rate limit and overload were retried with the server's retry-after (0 s).
    assert sleeps == [0.0, 0.0]
    # Every request streamed and carried the tools; the key never reached the transcript.
    assert all(r["stream"] is True and r["tools"] for r in server.requests)
    assert len(rec.of(Kind.ACTION_DECIDED)) == 4
    finished = rec.of(Kind.AGENT_FINISHED)[0].fields
    assert (finished["ran"], finished["asked"], finished["refused"]) == (4, 0, 0)
    # the task's start and each tool call's end are events too (the export's spans)
    (started,) = rec.of(Kind.AGENT_STARTED)
    assert started.fields["task_id"] == finished["task_id"] and len(finished["task_id"]) == 16
    assert "typo" not in repr(started.fields)  # never the task's text
    ended = rec.of(Kind.TOOL_FINISHED)
    decided = rec.of(Kind.ACTION_DECIDED)
    assert [e.fields["call_id"] for e in ended] == [e.fields["call_id"] for e in decided]
    assert [e.fields["tool"] for e in ended] == [e.fields["tool"] for e in decided]
    assert all(e.fields["outcome"] in ("ok", "error") and e.fields["seconds"] >= 0 for e in ended)
    kinds = [e.kind for e in rec.events]
    assert kinds.index(Kind.AGENT_STARTED) < kinds.index(Kind.ACTION_DECIDED)
    # Transcript in cowork's data directory, not in the workspace.
    assert transcript.path.is_relative_to(tmp_path / "cw" / "data" / "transcripts")
    kinds = [r["kind"] for r in transcript.read()]
    assert kinds[0] == "task" and kinds[-1] == "finished"
    assert "test-key" not in transcript.path.read_text()
    assert "# Summary" not in transcript.path.read_text().split('"tool"')[1][:200]


def test_demo_script_runs_on_any_folder(tmp_path):
    ws = tmp_path / "sample"
    ws.mkdir()
    (ws / "shopping.txt").write_text("Milk\nEggs\n")
    (ws / "letter.md").write_text("\nDear Sam,\n")
    summary, server, _, _, _ = run_script(demo_script(), ws, tmp_path)
    assert server.problems == []
    assert summary.ok and "demo model" in server.script.turns[0].content[0]["text"]
    notes = (ws / "cowork-demo-notes.md").read_text()
    assert "- **letter.md**: Dear Sam," in notes
    assert "- **shopping.txt**: Milk" in notes
    assert sorted(p.name for p in ws.iterdir()) == [
        "cowork-demo-notes.md",
        "letter.md",
        "shopping.txt",
    ]


def test_refused_and_declined_actions_are_events_and_never_run(ws, tmp_path):
    script = {
        "turns": [
            {
                "content": [
                    {"type": "tool_use", "name": "bash", "input": {"command": "rm -r keep"}},
                    {"type": "tool_use", "name": "read_file", "input": {"path": "/etc/passwd"}},
                ]
            },
            {"expect": ["declined", "refused"], "content": [{"type": "text", "text": "ok"}]},
        ]
    }
    from cowork.host.agent.offline import parse_script

    (ws / "keep").mkdir()
    runner = FakeChannel(ws)
    approver = ScriptedApprover(False)
    summary, server, rec, _, _ = run_script(
        parse_script(script), ws, tmp_path, approver=approver, runner=runner
    )
    assert server.problems == []
    assert (summary.ran, summary.asked, summary.refused) == (0, 1, 2)
    assert (ws / "keep").is_dir()
    assert [c for c in runner.commands if "guest/skills.py" not in c] == []  # only the skill list
    assert [e.fields["approved"] for e in rec.of(Kind.APPROVAL_ANSWERED)] == [False]
    verdicts = [e.fields["verdict"] for e in rec.of(Kind.ACTION_DECIDED)]
    assert verdicts == ["refused-by-user", "refuse"]


def test_ctrl_c_during_a_command_stops_it_and_ends_the_run(ws, tmp_path):
    script = {
        "turns": [
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "sleep 30"}}]},
            {"content": [{"type": "text", "text": "never reached"}]},
        ]
    }
    from cowork.host.agent.offline import parse_script

    runner = FakeChannel(ws, interrupt_when=lambda cmd: "sleep 30" in cmd)
    summary, server, _, _, _ = run_script(parse_script(script), ws, tmp_path, runner=runner)
    assert summary.reason is StopReason.INTERRUPTED
    assert len(server.requests) == 1
    # The driver asked the guest to stop the command's process group.
    assert any("kill -TERM" in c for c in runner.commands)
    [(proc, reaper)] = runner.interrupted
    reaper.join(timeout=20)
    assert proc.returncode is not None and proc.returncode < 0  # killed by a signal


def test_workspace_hooks_run_in_the_guest_and_can_block(ws, tmp_path):
    (ws / ".claude").mkdir()
    (ws / ".claude" / "settings.json").write_text(
        json.dumps(
            {
                "hooks": {
                    "PreToolUse": [
                        {
                            "matcher": "Write|Edit",
                            "hooks": [
                                {
                                    "type": "command",
                                    "command": "cat > hook-input.json; "
                                    "echo 'drafts are frozen' >&2; exit 2",
                                }
                            ],
                        }
                    ]
                }
            }
        )
    )
    _, server, _, _, _ = run_script(
        load_script(SCRIPTS / "edit_task.json"), ws, tmp_path, hooks_trusted=True
    )
    assert (ws / "draft.txt").read_text() == "Teh quick brown fox\n"
    hook_input = json.loads((ws / "hook-input.json").read_text())
    assert hook_input["tool_name"] == "Write" and hook_input["hook_event_name"] == "PreToolUse"
    assert any("drafts are frozen" in p for p in server.problems)  # the model saw the block


def test_untrusted_workspace_hooks_do_not_run(ws, tmp_path):
    (ws / ".claude").mkdir()
    (ws / ".claude" / "settings.json").write_text(
        json.dumps(
            {"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": "touch ran"}]}]}}
        )
    )
    run_script(load_script(SCRIPTS / "edit_task.json"), ws, tmp_path)
    assert not (ws / "ran").exists()


def test_non_streaming_requests_and_sse_order_through_the_sdk():
    script = load_script(SCRIPTS / "edit_task.json")
    with OfflineModel(script) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)
        msg = client.messages.create(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.stop_reason == "tool_use"
        assert msg.content[1].input == {"path": "draft.txt"}
    reply = {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "t", "name": "bash", "input": {"command": "ls"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    names = [name for name, _ in sse_events(reply)]
    assert names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip


def test_persistent_overload_becomes_a_plain_error(tmp_path):
    from cowork.errors import AgentError
    from cowork.host.agent.offline import parse_script

    script = parse_script({"turns": [{"fail_first": [529, 529, 529], "content": []}]})
    with OfflineModel(script) as server:
        model = AnthropicModel(
            AgentSettings(base_url=server.base_url), "k", max_attempts=3, sleep=lambda s: None
        )
        with pytest.raises(AgentError, match="529 3 times"):
            model.complete(CallModel(1, "s", ({"role": "user", "content": "x"},)), print)


def test_api_key_keychain_first_then_environment(monkeypatch):
    from cowork.errors import SecretError

    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    assert resolve_api_key(lambda: "from-keychain") == "from-keychain"
    assert resolve_api_key(lambda: None) == "from-env"

    def locked():
        raise SecretError("locked")

    assert resolve_api_key(locked) == "from-env"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert resolve_api_key(None) is None
