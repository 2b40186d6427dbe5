"""``cowork changes`` and the ``workspace.changes`` row of ``cowork policy show``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cowork.host.changes import store
from cowork.paths import Paths
from tests.host.changes.test_gate import entry, stream


def _paths(cli) -> Paths:
    return Paths(
        cache=Path("/nonexistent"),
        config=cli.root / "config" / "cowork",
        data=cli.root / "data" / "cowork",
        state=cli.root / "state" / "cowork",
        runtime=cli.root / "run",
        admin=cli.root / "admin",
    )


def test_list_show_apply_undo_discard(cli, tmp_path):
    paths = _paths(cli)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("old\n")
    store.begin(paths, "cowork-ws-1", ws)
    store.store_stream(
        paths, "cowork-ws-1",
        stream([entry(b"a.txt", size=4), entry(b"b.txt", size=2)], [b"new\n", b"b\n"]), 1 << 20,
    )  # fmt: skip
    out = cli("changes", "list")
    assert out.returncode == 0, out.stderr
    assert "cowork-ws-1" in out.stdout and "edited 1 file, added 1" in out.stdout
    shown = cli("changes", "show", "--diff")
    assert "-old" in shown.stdout and "+new" in shown.stdout
    data = json.loads(cli("changes", "show", "cowork-ws-1", "--json").stdout)
    assert {c["path"] for c in data["changes"]} == {"a.txt", "b.txt"}
    applied = cli("changes", "apply", "cowork-ws-1", "b.txt")
    assert applied.returncode == 0, applied.stderr
    assert (ws / "b.txt").read_text() == "b\n" and (ws / "a.txt").read_text() == "old\n"
    undone = cli("changes", "undo")
    assert undone.returncode == 0 and "Restored 1" in undone.stdout
    assert not (ws / "b.txt").exists()
    again = json.loads(cli("changes", "show", "cowork-ws-1", "--json").stdout)
    assert again["applied"] == []  # b.txt is pending again
    assert cli("changes", "discard").returncode == 0
    assert (ws / "a.txt").read_text() == "old\n"
    nothing = cli("changes", "apply")
    assert nothing.returncode == 2 and "no staged changes" in nothing.stderr


def test_unknown_session_is_a_clear_error(cli):
    out = cli("changes", "show", "nope")
    assert out.returncode == 2 and "no staged changes for 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_policy_show_explains_the_unset_changes_mode(cli):
    out = cli("policy", "show")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("workspace.changes"))
    assert "staged for `cowork run`" in line
    assert os.environ.get("COWORK_DEBUG") != "1"
