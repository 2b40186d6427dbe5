"""The agent against a real sealed VM (libvirt + QEMU under TCG) and the offline model."""

import json
import os
import shutil
from pathlib import Path

import pytest

from cowork.host.agent.driver import AnthropicModel
from cowork.host.agent.loop import StopReason
from cowork.host.agent.offline import OfflineModel, load_script, parse_script
from cowork.host.agent.settings import AgentSettings, ApprovalMode
from cowork.host.agent.task import run_task
from cowork.host.agent.testing import ScriptedApprover
from cowork.host.events import EventBus, Kind, Recorder
from cowork.paths import Paths

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parents[1] / "data" / "scripts"
MARKER = "AKIACOWORKE2EMARKER00"


def _run(script, ws, tmp_path, approver, mode="auto", max_turns=30):
    from cowork.host.session import Session

    paths = Paths.under(tmp_path / "cw")
    bus = EventBus()
    rec = Recorder()
    bus.subscribe(rec)
    with OfflineModel(script) as server, Session.open(ws, paths=paths, events=bus) as s:
        settings = AgentSettings(base_url=server.base_url, max_turns=max_turns)
        summary = run_task(
            s.channel,
            "task",
            settings=settings,
            events=bus,
            approver=approver,
            model=AnthropicModel(settings, "test"),
            mode=mode,
        )
        guest_seen = s.channel.run(f"grep -r {MARKER} / --exclude-dir=proc --exclude-dir=sys -l")
    return summary, server, rec, guest_seen


def test_scripted_task_in_a_real_vm_changes_exactly_the_expected_files(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "draft.txt").write_text("Teh quick brown fox\n")
    (ws / "keep.txt").write_text("untouched\n")
    summary, server, _, _ = _run(
        load_script(SCRIPTS / "edit_task.json"), ws, tmp_path, ScriptedApprover(False)
    )
    assert server.problems == []
    assert summary.reason is StopReason.COMPLETED
    assert (ws / "draft.txt").read_text() == "The quick brown fox\n"
    assert (ws / "notes" / "summary.md").read_text() == "# Summary\n\nA fox jumps.\n"
    assert (ws / "keep.txt").read_text() == "untouched\n"
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()) == [
        "counts.txt", "draft.txt", "keep.txt", "notes/summary.md",
    ]  # fmt: skip


@pytest.fixture
def host_aws_marker():
    """A marker credential in the host user's real ~/.aws/credentials (restored after)."""
    aws = Path(os.path.expanduser("~/.aws"))
    cred = aws / "credentials"
    backup = cred.with_name("credentials.cowork-test-backup")
    existed = cred.exists()
    if existed:
        shutil.copy2(cred, backup)
    aws.mkdir(exist_ok=True)
    cred.write_text(f"[default]\naws_access_key_id = {MARKER}\n")
    yield cred
    if existed:
        shutil.move(backup, cred)
    else:
        cred.unlink()


def test_redteam_25_attempts_in_a_real_vm_even_when_the_person_says_yes(tmp_path, host_aws_marker):
    attempts = json.loads((SCRIPTS / "redteam.json").read_text())["attempts"]
    turns = [
        {"content": [{"type": "tool_use", "name": a["tool"], "input": a["input"]}]}
        for a in attempts
    ]
    turns.append({"content": [{"type": "text", "text": "done"}]})
    ws = tmp_path / "ws"
    ws.mkdir()
    _, server, rec, guest_seen = _run(
        parse_script({"turns": turns}),
        ws,
        tmp_path,
        ScriptedApprover(True),
        mode=str(ApprovalMode.AUTO),
    )
    assert MARKER not in json.dumps(server.requests)
    assert MARKER not in guest_seen.stdout
    assert all(MARKER not in p.read_text(errors="replace") for p in ws.rglob("*") if p.is_file())
    denials = [e for e in rec.of(Kind.ACTION_DECIDED) if e.fields["verdict"] == "refuse"]
    asked = rec.of(Kind.APPROVAL_ASKED)
    assert len(denials) + len(asked) == 25
