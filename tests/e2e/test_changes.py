"""Staged changes end to end: a real guest whose /workspace is an overlay on a read-only share."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.host import changes
from cowork.host.changes import store
from cowork.host.events import EventBus
from tests.e2e.conftest import make_paths, make_workspace

pytestmark = pytest.mark.e2e


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root`` with its type, mode and content hash (links: target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o777, "")
            else:
                out[rel] = ("file", st.st_mode & 0o777, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def staged(image_ready, tmp_path_factory) -> Iterator[tuple]:
    from cowork.host.session import Session, VMSettings

    root = tmp_path_factory.mktemp("staged")
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    (ws / "notes.txt").write_text("line one\nline two\n")
    (ws / "keep.txt").write_text("keep me\n")
    (ws / "old-name.txt").write_text("renamed content\n")
    (ws / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "deep.bin").write_bytes(bytes(range(256)) * 10)
    if os.getuid() == 0:
        for p in [ws, *ws.rglob("*")]:
            os.lchown(p, 4321, 4321)
    claude = root / "user-claude"
    claude.mkdir()
    sess = Session.open(
        ws,
        paths=paths,
        events=EventBus(),
        settings=VMSettings(claude_dir=claude, memory_mib=1024, workspace_changes="staged"),
    )
    try:
        yield sess, ws, paths
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


def test_agent_changes_stay_in_the_vm_until_applied(staged):
    sess, ws, paths = staged
    before = tree(ws)
    r = sess.channel.run(
        "set -e; echo rewritten > notes.txt; mv old-name.txt new-name.txt; mkdir -p made/inner;"
        " echo new > made/inner/file.txt; chmod 755 script.sh; ln -s notes.txt link-to-notes;"
        " rm -rf sub; touch probe && rm probe; cat notes.txt; ls -a"
    )
    assert r.ok, r.stderr
    assert "rewritten" in r.stdout and "new-name.txt" in r.stdout
    mounts = sess.channel.run("grep ' /workspace ' /proc/mounts").stdout
    assert mounts.startswith("cowork-staged /workspace overlay")
    assert tree(ws) == before  # byte for byte: nothing reached the host

    cs = store.collect(paths, sess.name, sess.channel, 1 << 30)
    kinds = {(c.kind, c.path) for c in cs.changes}
    assert ("modified", "notes.txt") in kinds
    assert ("renamed", "new-name.txt") in kinds
    assert ("added", "made/inner/file.txt") in kinds
    assert ("mode", "script.sh") in kinds
    assert ("added", "link-to-notes") in kinds
    assert ("deleted", "sub/deep.bin") in kinds and ("deleted", "sub") in kinds
    assert not any(c.path == "probe" for c in cs.changes)
    assert tree(ws) == before


def test_rm_rf_everything_is_staged(staged):
    sess, ws, paths = staged
    before = tree(ws)
    r = sess.channel.run("rm -rf /workspace/* ; ls -A /workspace")
    assert r.stdout.split() == [".claude"]  # the read-only .claude share stays
    assert tree(ws) == before
    cs = store.collect(paths, sess.name, sess.channel, 1 << 30)
    deleted = {c.path for c in cs.changes if c.kind == "deleted"}
    assert {"keep.txt", "notes.txt", "script.sh", "old-name.txt"} <= deleted
    assert tree(ws) == before


def test_apply_selection_then_undo_restores_originals(staged, tmp_path):
    sess, ws, paths = staged
    original = tree(ws)
    assert sess.channel.run("echo rewritten > notes.txt; echo again > keep.txt").ok
    cs = store.collect(paths, sess.name, sess.channel, 1 << 30)
    assert {"keep.txt", "notes.txt"} <= {c.path for c in cs.changes}
    result = changes.apply(paths, sess.name, ["notes.txt"])
    assert result.applied == ("notes.txt",)
    now = tree(ws)
    assert (ws / "notes.txt").read_text() == "rewritten\n"
    assert {k: v for k, v in now.items() if k != "notes.txt"} == {
        k: v for k, v in original.items() if k != "notes.txt"
    }
    undone = changes.undo(paths)
    assert undone.restored == ("notes.txt",) and not undone.refused
    assert tree(ws) == original

    changes.discard(paths, sess.name)
    assert tree(ws) == original
    assert changes.show(paths, sess.name).state == "discarded"


def test_the_agent_cannot_reach_the_layers_or_write_the_share(staged):
    sess, _ws, _paths = staged
    r = sess.channel.run(
        "ls /var/lib/cowork-staged/upper 2>&1; echo x > /var/lib/cowork-staged/lower/x 2>&1;"
        " stat -c %U:%a /var/lib/cowork-staged"
    )
    assert "Permission denied" in r.stdout
    assert r.stdout.strip().endswith("root:700")
    assert "cw-ws /var/lib/cowork-staged/lower 9p ro" in sess.channel.run("cat /proc/mounts").stdout


def test_staged_changes_survive_the_end_of_the_session(staged):
    sess, ws, paths = staged
    assert sess.channel.run("echo last > last.txt").ok
    sess.close()  # the fixture's close later is a no-op
    assert not (ws / "last.txt").exists()
    # Copied to the host before the VM went (this set was discarded above, so read the store).
    entries = store.read_json(store.set_dir(paths, sess.name) / "entries.json")
    assert any(e["path"] == "last.txt" and e["kind"] == "file" for e in entries)
    assert sess.name not in [s.name for s in sess.backend.list()]
