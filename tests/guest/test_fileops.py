"""The file tools' guest program, called directly and as the script the guest runs."""

import json
import subprocess
import sys
from pathlib import Path

from cowork.guest import contract, fileops


def test_a_path_leaving_the_root_is_refused_after_resolving_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    (root / "link").symlink_to(tmp_path / "secret")
    for path in ("../secret", "link", str(tmp_path / "secret")):
        reply = fileops.handle(json.dumps({"op": "read_file", "root": str(root), "path": path}))
        assert reply["ok"] is False
        assert "outside the workspace" in reply["text"]


def test_workspace_alias_maps_onto_the_root(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    req = {"op": "read_file", "root": str(tmp_path), "path": "/workspace/a.txt"}
    assert fileops.handle(json.dumps(req)) == {"ok": True, "text": "     1\tone"}


def test_bad_requests_are_replies_not_crashes(tmp_path: Path) -> None:
    assert fileops.handle("not json")["ok"] is False
    assert fileops.handle("[1]")["text"] == "the request is not a JSON object"
    assert fileops.handle(json.dumps({"op": "read_file"}))["text"] == "missing input 'root'"
    assert fileops.handle(json.dumps({"op": "nope", "root": "/"}))["ok"] is False


def test_the_shipped_script_runs_isolated_with_the_standard_library_only(tmp_path: Path) -> None:
    # As the guest has it: unpacked from what the seed carries, run with python3 -I.
    lib = tmp_path / "lib"
    for rel, text in contract.guest_code_files().items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text(text)
    ws = tmp_path / "ws"
    ws.mkdir()
    req = {"op": "write_file", "root": str(ws), "path": "d/new.txt", "content": "hé"}
    proc = subprocess.run(
        [sys.executable, "-I", str(lib / "cowork/guest/fileops.py")],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert json.loads(proc.stdout) == {"ok": True, "text": "created d/new.txt (3 bytes)"}
    assert (ws / "d" / "new.txt").read_text() == "hé"
