"""The guest's skills program: names and descriptions from frontmatter, bodies on request."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cowork.guest import skills
from cowork.host.agent.content import skills_prompt
from cowork.host.agent.loop import ToolCall
from cowork.host.agent.tools import GuestTools
from cowork.host.channel_fake import FakeChannel


def _skill(root: Path, dirname: str, text: str) -> None:
    (root / "skills" / dirname).mkdir(parents=True)
    (root / "skills" / dirname / "SKILL.md").write_text(text)


def test_frontmatter() -> None:
    fields, body = skills.frontmatter(
        '---\nname: pdf\ndescription: "Fill PDF forms"\n  and more\n---\n\nBody\n'
    )
    assert fields == {"name": "pdf", "description": "Fill PDF forms and more"}
    assert body == "Body"
    assert skills.frontmatter("no frontmatter") == ({}, "no frontmatter")
    assert skills.frontmatter("---\nname: x\nnever closed") == ({}, "---\nname: x\nnever closed")


def test_list_and_read_in_root_order(tmp_path: Path) -> None:
    user, ws = tmp_path / "user", tmp_path / "ws"
    _skill(user, "notes", "---\nname: notes\ndescription: Take notes\n---\nUSER BODY")
    _skill(ws, "notes", "---\nname: notes\ndescription: Workspace notes\n---\nWS BODY")
    _skill(ws, "deploy", "---\nname: deploy\ndescription: Ship it\n---\nDEPLOY BODY")
    (ws / "skills" / "deploy" / "run.sh").write_text("echo")
    listed = skills.list_skills([str(user), str(ws)])
    assert [(s["name"], s["description"]) for s in listed] == [
        ("notes", "Take notes"), ("deploy", "Ship it"),
    ]  # fmt: skip
    assert "USER BODY" in skills.read_skill([str(user), str(ws)], "notes")["text"]
    deploy = skills.read_skill([str(user), str(ws)], "deploy")
    assert "DEPLOY BODY" in deploy["text"] and "run.sh" in deploy["text"]
    assert "---" not in deploy["text"].split("\n", 2)[2]
    assert not skills.read_skill([str(user)], "deploy")["ok"]


def test_symlinks_and_odd_names_are_ignored(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _skill(outside, "secret", "---\nname: secret\ndescription: x\n---\nOUTSIDE")
    (root / "skills").mkdir(parents=True)
    os.symlink(outside / "skills" / "secret", root / "skills" / "secret")
    _skill(root, "ok", "---\nname: ../../etc\ndescription: x\n---\nbody")
    assert skills.list_skills([str(root)]) == []
    assert not skills.read_skill([str(root)], "secret")["ok"]


def test_guest_tools_list_and_use_only_their_roots(tmp_path: Path) -> None:
    user, ws_claude = tmp_path / "user", tmp_path / "ws" / ".claude"
    _skill(user, "notes", "---\nname: notes\ndescription: Take notes\n---\nUSER BODY")
    _skill(ws_claude, "evil", "---\nname: evil\ndescription: Run me\n---\nEVIL BODY")
    runner = FakeChannel(tmp_path / "ws")
    untrusted = GuestTools(runner, skill_roots=(str(user),))
    assert untrusted.list_skills() == [{"name": "notes", "description": "Take notes"}]
    outcome = untrusted.execute(ToolCall("1", "use_skill", {"name": "evil"}))
    assert outcome.is_error and "EVIL" not in outcome.text
    trusted = GuestTools(runner, skill_roots=(str(user), str(ws_claude)))
    assert [s["name"] for s in trusted.list_skills()] == ["notes", "evil"]
    assert "EVIL BODY" in trusted.execute(ToolCall("2", "use_skill", {"name": "evil"})).text
    prompt = skills_prompt(trusted.list_skills())
    assert "- notes: Take notes" in prompt and "- evil: Run me" in prompt
    assert skills_prompt([]) == ""
    json.dumps(prompt)
