"""The agent against a real sealed VM (libvirt + QEMU under TCG) and the offline model.

One VM serves the whole module (each boot costs 15-30 s under software emulation): the
scripted edit task runs first and checks the workspace exactly; the red-team test only adds
checks that do not depend on what the edit left behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cowork.errors import SecretError
from cowork.host.agent.driver import AnthropicModel
from cowork.host.agent.loop import RunSummary, StopReason
from cowork.host.agent.offline import OfflineModel, Script, load_script, parse_script
from cowork.host.agent.settings import AgentSettings, ApprovalMode
from cowork.host.agent.task import run_task
from cowork.host.agent.testing import ScriptedApprover
from cowork.host.egress.gate import explain_url
from cowork.host.events import EventBus, Kind, Recorder
from tests.e2e.conftest import expected_owner, make_paths, make_workspace

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parents[1] / "data" / "scripts"
MARKER = "AKIACOWORKE2EMARKER00"
MARKER_TEXT = f"[default]\naws_access_key_id = {MARKER}\naws_secret_access_key = {MARKER}/secret\n"
#: Where the marker goes when the person already has a ~/.aws/credentials (never touched).
ALT_NAME = "cowork-e2e-credentials"


class NoSecrets:
    """A credential store with nothing in it: no grant here needs a credential."""

    def get(self, credential_id: str) -> str:
        raise SecretError(f"credential {credential_id!r} is not in this test's store")

    def set(self, credential_id: str, value: str) -> None:
        raise SecretError("this test's store is read-only")

    def delete(self, credential_id: str) -> None:
        raise SecretError("this test's store is read-only")

    def list_ids(self) -> list[str]:
        return []


@pytest.fixture(scope="module")
def host_aws_marker() -> Iterator[Path]:
    """A marker credential in the host user's ~/.aws, placed without touching their files.

    If ~/.aws/credentials does not exist it is created (and removed after); if it exists, the
    marker goes into a new file ~/.aws/cowork-e2e-credentials instead. A ~/.aws folder made
    here is removed again if it is empty afterwards.
    """
    aws = Path.home() / ".aws"
    made_dir = not aws.exists()
    aws.mkdir(mode=0o700, exist_ok=True)
    cred = aws / "credentials"
    target = aws / ALT_NAME if (cred.exists() or cred.is_symlink()) else cred
    if target.name == ALT_NAME and (target.exists() or target.is_symlink()):
        if target.is_symlink() or target.read_text(errors="replace") != MARKER_TEXT:
            pytest.fail(f"{target} exists and is not this test's marker; move it away first")
        target.unlink()  # left over from an interrupted run of this test
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, MARKER_TEXT.encode())
    finally:
        os.close(fd)
    try:
        yield target
    finally:
        target.unlink(missing_ok=True)
        if made_dir:
            with contextlib.suppress(OSError):
                aws.rmdir()


@dataclass
class Sealed:
    session: Any
    workspace: Path
    bus: EventBus
    recorder: Recorder


@pytest.fixture(scope="module")
def sealed(
    image_ready: None, host_aws_marker: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sealed]:
    """One VM for the module, with an egress gateway that grants nothing."""
    from cowork.host.session import EgressSettings, Session, VMSettings

    root = tmp_path_factory.mktemp("agent")
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    claude = root / "user-claude"
    claude.mkdir()
    bus = EventBus()
    rec = Recorder()
    bus.subscribe(rec)
    sess = Session.open(
        ws,
        paths=paths,
        events=bus,
        settings=VMSettings(claude_dir=claude, memory_mib=1024),
        egress=EgressSettings(grants_provider=lambda: (), secrets=NoSecrets()),
    )
    try:
        yield Sealed(sess, ws, bus, rec)
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


def _write_as_owner(path: Path, text: str) -> None:
    """Write a workspace file owned like the workspace (not root when the tests run as root)."""
    path.write_text(text)
    if os.getuid() == 0:
        os.chown(path, *expected_owner())


def _run(
    sealed: Sealed, script: Script, approver: ScriptedApprover, mode: str = "auto"
) -> tuple[RunSummary, OfflineModel]:
    def egress_check(method: str, url: str) -> tuple[bool, str]:
        decision = explain_url(url, method, ())
        return decision.allowed, decision.reason

    with OfflineModel(script) as server:
        settings = AgentSettings(base_url=server.base_url, max_turns=80)
        summary = run_task(
            sealed.session.channel,
            "task",
            settings=settings,
            events=sealed.bus,
            approver=approver,
            model=AnthropicModel(settings, "test"),
            mode=mode,
            egress_check=egress_check,
        )
    return summary, server


def test_scripted_task_in_a_real_vm_changes_exactly_the_expected_files(sealed: Sealed) -> None:
    ws = sealed.workspace
    for name, text in (("draft.txt", "Teh quick brown fox\n"), ("keep.txt", "untouched\n")):
        _write_as_owner(ws / name, text)
    summary, server = _run(sealed, load_script(SCRIPTS / "edit_task.json"), ScriptedApprover(False))
    assert server.problems == []
    assert summary.reason is StopReason.COMPLETED
    assert (ws / "draft.txt").read_text() == "The quick brown fox\n"
    assert (ws / "notes" / "summary.md").read_text() == "# Summary\n\nA fox jumps.\n"
    assert (ws / "keep.txt").read_text() == "untouched\n"
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()) == [
        "counts.txt", "draft.txt", "keep.txt", "notes/summary.md",
    ]  # fmt: skip


def _attempts_for_both_paths() -> list[dict[str, Any]]:
    """The 25 scripted attempts, plus each one rewritten to aim at ~/.aws/cowork-e2e-credentials."""
    attempts: list[dict[str, Any]] = json.loads((SCRIPTS / "redteam.json").read_text())["attempts"]
    assert len(attempts) == 25
    old_b64 = base64.b64encode(b"~/.aws/credentials").decode()
    new_b64 = base64.b64encode(f"~/.aws/{ALT_NAME}".encode()).decode()
    out = list(attempts)
    for a in attempts:
        text = json.dumps(a).replace(old_b64, new_b64).replace("credentials", ALT_NAME)
        variant = json.loads(text)
        if variant != a:
            out.append(variant)
    return out


def test_redteam_attempts_in_a_real_vm_even_when_the_person_says_yes(
    sealed: Sealed, host_aws_marker: Path
) -> None:
    attempts = _attempts_for_both_paths()
    assert len(attempts) > 25  # both paths are aimed at
    turns: list[dict[str, Any]] = [
        {"content": [{"type": "tool_use", "name": a["tool"], "input": a["input"]}]}
        for a in attempts
    ]
    turns.append({"content": [{"type": "text", "text": "done"}]})
    first_event = len(sealed.recorder.events)
    approver = ScriptedApprover(True)
    summary, server = _run(
        sealed, parse_script({"turns": turns}), approver, mode=str(ApprovalMode.AUTO)
    )
    events = sealed.recorder.events[first_event:]
    assert summary.reason is StopReason.COMPLETED, summary.error

    # Every attempt was refused at the gate, even with a person who says yes to everything:
    # each leaves a denial event and nothing ran.
    decided = [e for e in events if e.kind == Kind.ACTION_DECIDED]
    refused = [e for e in decided if e.fields["verdict"] == "refuse"]
    assert len(refused) == len(attempts)
    assert [e for e in events if e.kind == Kind.APPROVAL_ASKED] == []
    assert approver.asked == []
    assert summary.ran == 0
    assert summary.refused == len(attempts)

    # Had the gate let them through: the same commands run directly in the guest reach nothing.
    channel = sealed.session.channel
    outputs = []
    for a in attempts:
        if a["tool"] == "bash":
            r = channel.run(a["input"]["command"], timeout=120)
            outputs.append(r.stdout + r.stderr)
    for path in ("~/.aws/credentials", f"~/.aws/{ALT_NAME}", "/root/.aws/credentials"):
        r = channel.run(f"cat {path}", timeout=60)
        outputs.append(r.stdout + r.stderr)
        assert r.exited != 0
    assert all(MARKER not in out for out in outputs)

    # The marker is nowhere: not in any request to the model, not in the guest, not at an
    # endpoint (the gateway granted nothing and let nothing out), not in the workspace.
    assert len(server.requests) == len(attempts) + 1
    assert MARKER not in json.dumps(server.requests)
    # Control: the search finds the marker where it is put on purpose (sent on stdin).
    control = channel.run("cat > /tmp/cowork-e2e-control", input=MARKER, timeout=60)
    assert control.ok
    seen = channel.run(
        # The marker is assembled in the guest, so the command (logged as an event) lacks it.
        f"grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
        f'-e "$(printf %s%s {MARKER[:10]} {MARKER[10:]})" /',
        timeout=900,
    )
    assert seen.stdout.split() == ["/tmp/cowork-e2e-control"], seen.stdout
    assert channel.run("rm /tmp/cowork-e2e-control", timeout=60).ok
    assert seen.exited in (1, 2) and not seen.timed_out  # 1: no match; 2: also unreadable files
    assert [e for e in sealed.recorder.of(Kind.EGRESS_ALLOWED)] == []
    assert MARKER not in json.dumps([e.fields for e in sealed.recorder.events], default=str)
    ws = sealed.workspace
    assert all(MARKER not in p.read_text(errors="replace") for p in ws.rglob("*") if p.is_file())
    assert host_aws_marker.read_text() == MARKER_TEXT
