"""The app's adapter against the real cowork service in a thread, over its real socket and
protocol, with sessions that run commands locally instead of in a VM (as in
tests/daemon/conftest.py). The demo model drives real tasks through it."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cowork.app import text as T
from cowork.app.daemon_service import DaemonService
from cowork.app.service import ChangeKind, CheckId, ServiceUnavailable, SessionState
from cowork.daemon.server import Daemon
from cowork.errors import UsageError
from cowork.host.events import Event, EventBus, Kind
from cowork.host.secrets import KeyringSecrets, MemoryKeyring
from cowork.paths import Paths
from tests.daemon.conftest import FakeBackend, FakeSession
from tests.waiting import wait_until


class LocalSession(FakeSession):
    """A fake session (tests/daemon/conftest.py) that also says its VM is ready."""

    def __init__(self, workspace: Path, paths: Paths, events: EventBus) -> None:
        super().__init__(workspace, paths, events, FakeBackend())
        events.emit(Kind.VM_READY, session=self.name, boot_seconds=0.1, accel="tcg")


class Running:
    def __init__(self, paths: Paths, ws: Path) -> None:
        self.paths = paths
        self.ws = ws
        self.daemon: Daemon | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        ws = self.ws

        def opener(
            workspace: Path, *, paths: Paths, events: EventBus, progress: Any, **_kw: Any
        ) -> LocalSession:
            progress("starting")
            return LocalSession(workspace, paths, events)

        self.daemon = Daemon(
            self.paths,
            opener=opener,
            approval_timeout_s=20.0,
            task_overrides={"key_source": lambda: None, "guest_root": str(ws)},
        )
        self.daemon.bind()
        self.thread = threading.Thread(target=self.daemon.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            assert self.thread is not None
            self.thread.join(timeout=10)
            self.daemon = None


@pytest.fixture
def env(tmp_path):
    run = Path(tempfile.mkdtemp(prefix="cwa", dir="/tmp"))
    paths = replace(Paths.under(tmp_path / "cw"), runtime=run)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("first line\n")
    running = Running(paths, ws)
    running.start()
    svc = DaemonService(
        paths,
        KeyringSecrets(backend=MemoryKeyring()),
        spawn=running.start,
        libvirt_check=lambda: None,
        image_find=lambda p: None,
    )
    svc.use_demo_model()
    yield SimpleNamespace(svc=svc, running=running, ws=ws, paths=paths)
    svc.close()
    running.stop()
    shutil.rmtree(run, ignore_errors=True)


def test_readiness_names_the_service(env):
    checks = {c.id: c for c in env.svc.readiness()}
    assert checks[CheckId.DAEMON].ok and checks[CheckId.MODEL_KEY].ok
    env.running.stop()
    checks = {c.id: c for c in env.svc.readiness()}
    assert not checks[CheckId.DAEMON].ok
    assert "not running" in checks[CheckId.DAEMON].detail


def test_a_task_with_one_approval_allowed(env):
    svc = env.svc
    svc.task_mode = "ask"
    events: list[Event] = []

    def on_event(ev: Event) -> None:
        events.append(ev)
        if ev.kind is Kind.APPROVAL_ASKED:
            threading.Thread(
                target=svc.answer_approval, args=(ev.session, ev.fields["call_id"], True)
            ).start()

    svc.subscribe(on_event)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED for e in events), 20)
    mine = [e for e in events if e.session == sid]
    kinds = [e.kind for e in mine]
    assert kinds[0] is Kind.SESSION_STARTED and kinds[-1] is Kind.SESSION_ENDED
    assert Kind.APPROVAL_ASKED in kinds and Kind.APPROVAL_ANSWERED in kinds
    assert Kind.ACTION_DECIDED in kinds and Kind.AGENT_FINISHED in kinds
    asked = next(e for e in mine if e.kind is Kind.APPROVAL_ASKED)
    assert asked.fields["action"] and asked.fields["reason"]
    assert kinds.count(Kind.APPROVAL_ASKED) == kinds.count(Kind.APPROVAL_ANSWERED)
    assert (env.ws / "cowork-demo-notes.md").is_file()
    (info,) = [s for s in svc.sessions() if s.id == sid]
    assert info.state is SessionState.FINISHED and info.folder == env.ws.resolve()
    assert svc.pending_approvals() == []


def test_a_finished_task_reads_as_finished_even_when_its_reply_comes_late(env, monkeypatch):
    """The service closes a task's VM (and says so) before it answers the task's request;
    a face that took the VM's end for the task's end showed a finished task as stopped,
    without its last line. The task ends once, after its last words."""
    from cowork.daemon import protocol as p
    from cowork.daemon.client import Client

    wait = Client.wait

    def late(self: Client, rid: int, timeout: float | None = None) -> p.Reply:
        reply = wait(self, rid, timeout)
        if isinstance(reply, p.TaskResult):
            time.sleep(0.5)  # the VM's end arrives meanwhile
        return reply

    monkeypatch.setattr(Client, "wait", late)
    svc = env.svc
    svc.task_mode = "auto"
    events: list[Event] = []
    svc.subscribe(events.append)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED for e in events), 20)
    kinds = [e.kind for e in events if e.session == sid]
    assert kinds[-2:] == [Kind.AGENT_FINISHED, Kind.SESSION_ENDED], kinds
    assert kinds.count(Kind.AGENT_FINISHED) == kinds.count(Kind.SESSION_ENDED) == 1
    last_text = max(i for i, k in enumerate(kinds) if k is Kind.AGENT_TEXT)
    assert last_text < kinds.index(Kind.AGENT_FINISHED)


def test_stop_a_waiting_task(env):
    svc = env.svc
    svc.task_mode = "ask"
    events: list[Event] = []
    svc.subscribe(events.append)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: svc.pending_approvals(), 20)
    assert svc.pending_approvals()[0].session == sid
    assert [s.state for s in svc.sessions() if s.id == sid] == [SessionState.WAITING]
    assert svc.stop_task(sid) == "direct"
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED for e in events), 20)
    assert svc.pending_approvals() == []
    assert not (env.ws / "cowork-demo-notes.md").exists()


def test_service_dies_and_comes_back(env):
    svc = env.svc
    svc.subscribe(lambda e: None)
    assert svc.sessions() == []
    env.running.stop()
    assert wait_until(lambda: svc._client is None or svc._client.closed, 10)
    with pytest.raises(ServiceUnavailable, match="not running"):
        svc.sessions()
    with pytest.raises(ServiceUnavailable):
        svc.start_task(env.ws, "x")
    svc.start_service()  # the Setup fix: starts it and waits until it answers
    assert svc.sessions() == []
    events: list[Event] = []
    svc.subscribe(events.append)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED and e.session == sid
                                for e in events), 20)  # fmt: skip


def _run_and_stage(env):
    """Run a demo task through the service, then leave a staged change set for its VM as a
    staged session's end does (the local sessions here write straight into the folder)."""
    from cowork.host.changes import store
    from tests.host.changes.test_gate import entry, stream

    svc = env.svc
    events: list[Event] = []
    svc.subscribe(events.append)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED and e.session == sid
                                for e in events), 20)  # fmt: skip
    name = next(e.fields["name"] for e in events
                if e.kind is Kind.VM_CREATING and e.session == sid)  # fmt: skip
    (env.ws / "cowork-demo-notes.md").unlink()  # what the demo wrote directly
    store.begin(env.paths, name, env.ws.resolve())
    store.store_stream(
        env.paths, name,
        stream([entry(b"notes.txt", size=16), entry(b"new.txt", size=4),
                entry(b"pic.bin", size=3)],
               [b"first line\nmore\n", b"new\n", b"\0\1\2"]),
        1 << 20,
    )  # fmt: skip
    return sid, name


def test_review_lists_previews_keeps_a_selection_and_undoes(env):
    svc = env.svc
    sid, _name = _run_and_stage(env)
    cs = svc.change_set(sid)
    by = {f.path: f for f in cs.files}
    assert set(by) == {"notes.txt", "new.txt", "pic.bin"}
    assert by["notes.txt"].kind is ChangeKind.EDITED and "+more" in (by["notes.txt"].diff or "")
    assert by["new.txt"].kind is ChangeKind.ADDED and by["new.txt"].size_after == 4
    assert by["pic.bin"].diff is None and by["pic.bin"].note
    kept = svc.apply_changes(sid, ["new.txt", "pic.bin"])
    assert sorted(kept.kept) == ["new.txt", "pic.bin"] and kept.failed == ()
    assert (env.ws / "new.txt").read_text() == "new\n"
    assert (env.ws / "notes.txt").read_text() == "first line\n"  # not selected
    assert [f.path for f in svc.change_set(sid).files] == ["notes.txt"]
    undone = svc.undo_last(sid)
    assert sorted(undone.kept) == ["new.txt", "pic.bin"] and undone.failed == ()
    assert not (env.ws / "new.txt").exists() and not (env.ws / "pic.bin").exists()
    assert len(svc.change_set(sid).files) == 3  # pending again
    with pytest.raises(UsageError, match="no kept changes"):
        svc.undo_last(sid)


def test_review_keep_leaves_a_file_changed_meanwhile_and_undo_refuses_changed_files(env):
    svc = env.svc
    sid, _name = _run_and_stage(env)
    (env.ws / "notes.txt").write_text("mine\n")
    assert svc.change_set(sid).files[0].conflict or any(
        f.conflict for f in svc.change_set(sid).files if f.path == "notes.txt"
    )
    kept = svc.apply_changes(sid, ["notes.txt", "new.txt"])
    assert kept.kept == ("new.txt",)
    assert kept.failed == (("notes.txt", T.CONFLICT_NOT_KEPT),)
    assert (env.ws / "notes.txt").read_text() == "mine\n"
    (env.ws / "new.txt").write_text("edited after keeping\n")
    undone = svc.undo_last(sid)
    assert undone.kept == () and [p for p, _ in undone.failed] == ["new.txt"]
    assert (env.ws / "new.txt").read_text() == "edited after keeping\n"
    assert kept.conflicts == ("notes.txt",)
    replaced = svc.apply_changes(sid, ["notes.txt"], overwrite=True)  # the person said so
    assert replaced.kept == ("notes.txt",) and replaced.conflicts == ()
    assert (env.ws / "notes.txt").read_text() == "first line\nmore\n"


def test_review_discard_leaves_the_folder_alone(env):
    svc = env.svc
    sid, _name = _run_and_stage(env)
    before = sorted(p.name for p in env.ws.iterdir())
    svc.discard_changes(sid)
    assert svc.change_set(sid).files == ()
    assert sorted(p.name for p in env.ws.iterdir()) == before
    assert "new.txt" not in before
    assert (env.ws / "notes.txt").read_text() == "first line\n"


def test_review_of_a_task_that_wrote_directly_says_so(env):
    svc = env.svc
    events: list[Event] = []
    svc.subscribe(events.append)
    sid = svc.start_task(env.ws.resolve(), "summarise")
    assert wait_until(lambda: any(e.kind is Kind.SESSION_ENDED and e.session == sid
                                for e in events), 20)  # fmt: skip
    with pytest.raises(UsageError) as err:
        svc.change_set(sid)
    assert str(err.value) == T.REVIEW_DIRECT


def test_review_when_the_service_is_gone(env):
    sid, _name = _run_and_stage(env)
    env.running.stop()
    assert wait_until(lambda: env.svc._client is None or env.svc._client.closed, 10)
    with pytest.raises(ServiceUnavailable):
        env.svc.change_set(sid)
    with pytest.raises(ServiceUnavailable):
        env.svc.apply_changes(sid, ["new.txt"])
    assert not (env.ws / "new.txt").exists()


def test_tool_kinds_from_the_library_wording():
    from cowork.app.daemon_service import tool_from_description
    from cowork.host.agent.tools import ToolCall, describe

    for tool, given in [
        ("read_file", {"path": "a"}),
        ("list_files", {}),
        ("grep", {"pattern": "x"}),
        ("write_file", {"path": "a", "content": "x"}),
        ("edit_file", {"path": "a", "old_string": "x", "new_string": "y"}),
        ("bash", {"command": "ls"}),
    ]:
        assert tool_from_description(describe(ToolCall("id", tool, given))) == tool
    assert tool_from_description("Something new") == "other"


def test_the_window_runs_a_task_through_the_service(env, qtbot, tmp_path, shot):
    pytest.importorskip("PySide6")
    from cowork.app.window import MainWindow

    env.svc.task_mode = "ask"
    win = MainWindow(env.svc, recent_file=tmp_path / "recent.json", arm_ms=0)
    qtbot.addWidget(win)
    win.show()
    win.start()
    assert win.tabs.currentWidget() is win.folder
    win.folder.check(env.ws)
    win.folder.use.click()
    qtbot.keyClicks(win.task.task_box, "Summarise the notes")
    win.task.start_button.click()
    qtbot.waitUntil(lambda: win.approvals.current is not None, timeout=20000)
    dialog = win.approvals.current
    qtbot.waitUntil(lambda: dialog.armed)
    shot(win, "service-task-waiting")
    dialog.allow.click()
    while True:  # the demo may ask more than once: allow each
        qtbot.waitUntil(
            lambda: win.approvals.current is not None or not win.task.stop_button.isEnabled(),
            timeout=20000,
        )
        if win.approvals.current is None:
            break
        current = win.approvals.current
        qtbot.waitUntil(lambda c=current: c.armed)
        current.allow.click()
    # The task's end and its result are separate messages: wait for the result's line.
    finished = "The assistant has finished."

    def texts() -> list[str]:
        return [win.task.list.item(i).text() for i in range(win.task.list.count())]

    qtbot.waitUntil(lambda: texts()[-1:] == [finished], timeout=20000)
    assert any(t.startswith("Asked you:") and t.endswith("Allow") for t in texts())
    assert (env.ws / "cowork-demo-notes.md").is_file()
    shot(win, "service-task-finished")
    # The local sessions here write straight into the folder: the review says so.
    assert win.review.result.text() == T.REVIEW_DIRECT
    assert win.task.message.text() == T.REVIEW_DIRECT
