import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from cowork.app import text as T
from cowork.app.service import SessionState
from cowork.app.taskview import TaskView
from cowork.app.timeline import STALL_AFTER
from cowork.host.events import Kind


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def view(qtbot, fake, clock, tmp_path):
    fake.clock = clock
    v = TaskView(fake, clock=clock)
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    v.set_folder(tmp_path)
    fake.subscribe(v.on_event)
    return v


def start(view, qtbot, text="Summarise the invoices"):
    qtbot.keyClicks(view.task_box, text)
    view.start_button.click()
    assert view.session is not None
    return view.session


def test_empty_task_is_not_started(view, fake):
    view.start_button.click()
    assert view.message.text() == T.TASK_EMPTY and fake.started == []


def test_boot_progress_with_elapsed_time(view, fake, qtbot, clock, shot):
    sid = start(view, qtbot)
    assert fake.started[0][1] == "Summarise the invoices"
    clock.now += 7
    view.tick()
    assert view.boot.isVisible() and view.boot_line.text() == T.BOOTING.format(time="7 s")
    assert view.state_label.text().endswith(T.STATE_LABEL[SessionState.STARTING])
    shot(view, "task-booting")
    fake.emit(Kind.VM_READY, sid, boot_seconds=7.0)
    assert not view.boot.isVisible()


def test_live_timeline_icons_details_and_refusals(view, fake, qtbot, clock, shot):
    sid = start(view, qtbot)
    clock.now += 12
    fake.emit(Kind.VM_READY, sid, boot_seconds=12.0)
    fake.emit(Kind.AGENT_TEXT, sid, text="I will read the invoices and add up the totals.")
    fake.emit(Kind.ACTION_DECIDED, sid, tool="list_files", action="List files matching *.txt in .",
              verdict="run")  # fmt: skip
    fake.emit(Kind.ACTION_DECIDED, sid, tool="read_file", action="Read the file march.txt",
              verdict="run")  # fmt: skip
    fake.emit(Kind.ACTION_DECIDED, sid, tool="bash", action="Run a command: python3 total.py",
              verdict="run")  # fmt: skip
    fake.emit(Kind.COMMAND_STARTED, sid, command="python3 total.py --in march.txt")
    fake.emit(Kind.COMMAND_FINISHED, sid, exited=0, timed_out=False)
    fake.emit(Kind.EGRESS_DENIED, sid, host="pastebin.com", method="POST", path="/api",
              reason="No grant allows this site. Ask your administrator.")  # fmt: skip
    fake.emit(Kind.ACTION_DECIDED, sid, tool="write_file",
              action="Write the file summary.md (512 bytes)", verdict="run")  # fmt: skip
    clock.now += 5
    texts = [view.list.item(i).text() for i in range(view.list.count())]
    assert texts[0] == "The sealed machine is ready (12 s)"
    assert texts[4] == "Run a command: python3 total.py — done"
    assert texts[5] == (
        "Blocked a web request to pastebin.com — Not allowed: No grant allows this site."
    )
    assert all("--in march.txt" not in t for t in texts)
    view.details.setChecked(True)
    assert "python3 total.py --in march.txt" in view.list.item(4).text()
    assert "POST pastebin.com/api" in view.list.item(5).text()
    icons = {view.list.item(i).icon().cacheKey() for i in range(view.list.count())}
    assert len(icons) == view.list.count()  # each kind, and the refusal, look different
    view.tick()
    assert view.clock_label.text() == "Elapsed 17 s · last activity 5 s ago"
    shot(view, "task-timeline")


def test_states_look_different(view, fake, qtbot, clock, shot):
    sid = start(view, qtbot)
    fake.emit(Kind.VM_READY, sid)
    styles = {}
    styles["working"] = view.state_label.styleSheet()
    clock.now += STALL_AFTER + 1
    view.tick()
    assert T.STATE_LABEL[SessionState.STALLED] in view.state_label.text()
    styles["stalled"] = view.state_label.styleSheet()
    shot(view, "task-stalled")
    fake.emit(Kind.APPROVAL_ASKED, sid, call_id="c1", action="Delete a.txt", reason="r")
    styles["waiting"] = view.state_label.styleSheet()
    assert T.STATE_LABEL[SessionState.WAITING] in view.state_label.text()
    with qtbot.waitSignal(view.finished):
        fake.emit(Kind.AGENT_FINISHED, sid, error="the model stopped answering")
    styles["failed"] = view.state_label.styleSheet()
    assert len(set(styles.values())) == 4
    assert "the model stopped answering" in view.list.item(view.list.count() - 1).text()


def test_stop_says_what_state_files_are_in_and_never_holds_focus(view, fake, qtbot):
    sid = start(view, qtbot)
    fake.emit(Kind.VM_READY, sid)
    assert view.stop_button.focusPolicy() == Qt.FocusPolicy.NoFocus
    view.activateWindow()
    view.details.setFocus()
    qtbot.waitUntil(view.details.hasFocus)
    reached = set()
    for _ in range(12):  # Tab round the whole view: Stop is never reached
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        reached.add(QApplication.focusWidget())
    assert view.stop_button not in reached and view.task_box in reached
    view.details.setFocus()
    with qtbot.waitSignal(view.finished):
        qtbot.mouseClick(view.stop_button, Qt.MouseButton.LeftButton)
    assert not view.stop_button.hasFocus()
    assert fake.stopped == [sid]
    assert view.message.text() == T.STOPPED_STAGED
    assert T.STATE_LABEL[SessionState.STOPPED] in view.state_label.text()
    assert not view.stop_button.isEnabled() and view.start_button.isEnabled()


def test_events_of_other_sessions_are_not_shown(view, fake, qtbot):
    start(view, qtbot)
    fake.emit(Kind.AGENT_TEXT, "other", text="not mine")
    assert view.list.count() == 0
