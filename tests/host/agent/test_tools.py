import os
import threading
import time

import pytest

from cowork.host.agent.loop import ToolCall
from cowork.host.agent.tools import GuestTools, describe, truncate
from cowork.host.channel_fake import FakeChannel


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "notes.txt").write_text("alpha\nbeta\ngamma\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('hi')\n# TODO: tidy\n")
    return root


@pytest.fixture
def tools(ws, tmp_path):
    runner = FakeChannel(ws)
    return GuestTools(runner, root=str(ws), state_dir=str(tmp_path / "state"))


def call(name, **input_):
    return ToolCall(id=f"id-{name}", name=name, input=input_)


def test_read_file_numbers_lines_and_accepts_workspace_paths(tools):
    out = tools.execute(call("read_file", path="notes.txt"))
    assert not out.is_error
    assert "     2\tbeta" in out.text
    same = tools.execute(call("read_file", path="/workspace/notes.txt"))
    assert same.text == out.text


def test_write_creates_folders_and_replaces_atomically(tools, ws):
    out = tools.execute(call("write_file", path="docs/new.md", content="# New\n"))
    assert not out.is_error and "created" in out.text
    assert (ws / "docs" / "new.md").read_text() == "# New\n"
    os.chmod(ws / "notes.txt", 0o640)
    out = tools.execute(call("write_file", path="notes.txt", content="replaced\n"))
    assert "replaced" in out.text
    assert (ws / "notes.txt").read_text() == "replaced\n"
    assert (ws / "notes.txt").stat().st_mode & 0o777 == 0o640
    assert not [p for p in ws.rglob(".cowork-*")]


def test_content_travels_on_stdin_not_argv(tools):
    runner = tools.runner
    tools.execute(call("write_file", path="s.txt", content="UNIQUE-CONTENT-4711"))
    assert not any("UNIQUE-CONTENT-4711" in c for c in runner.commands)


def test_edit_file_exact_replace(tools, ws):
    out = tools.execute(call("edit_file", path="notes.txt", old_string="beta", new_string="BETA"))
    assert not out.is_error
    assert (ws / "notes.txt").read_text() == "alpha\nBETA\ngamma\n"
    missing = tools.execute(call("edit_file", path="notes.txt", old_string="zzz", new_string="y"))
    assert missing.is_error and "not found" in missing.text
    (ws / "dup.txt").write_text("x x")
    dup = tools.execute(call("edit_file", path="dup.txt", old_string="x", new_string="y"))
    assert dup.is_error and "2 times" in dup.text
    both = tools.execute(
        call("edit_file", path="dup.txt", old_string="x", new_string="y", replace_all=True)
    )
    assert not both.is_error and (ws / "dup.txt").read_text() == "y y"


def test_list_files_and_grep(tools):
    listed = tools.execute(call("list_files", pattern="**/*.py"))
    assert listed.text.strip() == "src/app.py"
    found = tools.execute(call("grep", pattern="todo", ignore_case=True))
    assert found.text.strip() == "src/app.py:2:# TODO: tidy"


def test_a_symlink_in_the_workspace_cannot_reach_a_file_outside(tools, ws, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("HOST-SECRET-MARKER")
    (ws / "link.txt").symlink_to(secret)
    (ws / "linkdir").symlink_to(tmp_path)
    for c in (
        call("read_file", path="link.txt"),
        call("read_file", path="linkdir/host-secret.txt"),
        call("read_file", path="../host-secret.txt"),
        call("read_file", path=str(secret)),
        call("grep", pattern="MARKER", path="linkdir"),
        call("write_file", path="link.txt", content="overwrite"),
        call("edit_file", path="link.txt", old_string="HOST", new_string="X"),
    ):
        out = tools.execute(c)
        assert out.is_error, c
        assert "outside the workspace" in out.text
        assert "HOST-SECRET-MARKER" not in out.text
    grep_all = tools.execute(call("grep", pattern="MARKER"))
    assert "HOST-SECRET-MARKER" not in grep_all.text
    assert secret.read_text() == "HOST-SECRET-MARKER"


def test_bash_output_is_truncated_with_a_note(ws, tmp_path):
    tools = GuestTools(
        FakeChannel(ws), root=str(ws), state_dir=str(tmp_path / "s"), max_output_chars=1000
    )
    out = tools.execute(call("bash", command="seq 1 5000"))
    assert len(out.text) < 1200
    assert "characters of output omitted" in out.text
    assert out.text.startswith("1\n2\n") and out.text.rstrip().endswith("5000")


def test_bash_exit_code_and_stderr_are_reported(tools):
    out = tools.execute(call("bash", command="echo out; echo err >&2; exit 3"))
    assert out.is_error
    assert "out" in out.text and "[stderr]\nerr" in out.text and "[exit code 3]" in out.text


def test_bash_timeout_stops_the_command(ws, tmp_path):
    tools = GuestTools(FakeChannel(ws), root=str(ws), state_dir=str(tmp_path / "s"))
    out = tools.execute(call("bash", command="sleep 30", timeout=1))
    assert out.is_error and "took too long" in out.text


def test_interrupt_kills_the_running_command_group(ws, tmp_path):
    state = tmp_path / "s"
    runner = FakeChannel(ws)
    tools = GuestTools(runner, root=str(ws), state_dir=str(state))
    c = call("bash", command="sleep 60 & sleep 60; echo finished > done.txt")
    worker = threading.Thread(target=tools.execute, args=(c,), daemon=True)
    worker.start()
    pidfile = state / "id-bash.pid"
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    tools.interrupt(c)
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert not (ws / "done.txt").exists()
    assert not pidfile.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unknown_tool_and_bad_input_are_errors_not_crashes(tools):
    assert tools.execute(call("format_disk")).is_error
    assert tools.execute(call("bash", command="")).is_error
    assert tools.execute(call("read_file")).is_error


def test_describe_and_truncate():
    assert describe(call("bash", command="ls   -la")) == "Run a command: ls -la"
    written = describe(call("write_file", path="a.md", content="abc"))
    assert written == "Write the file a.md (3 bytes)"
    assert truncate("abc", 10) == "abc"
