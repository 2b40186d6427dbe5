from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QSystemTrayIcon,
)

from cowork.app import text as T
from cowork.app.service import ChangeKind, FileChange, TrustItem
from cowork.app.traymodel import TrayLook
from cowork.app.window import MainWindow
from cowork.host.events import Kind


@pytest.fixture
def win(qtbot, fake, tmp_path):
    fake.checks = dict.fromkeys(fake.checks, True)
    asked = []
    w = MainWindow(
        fake,
        recent_file=tmp_path / "recent.json",
        arm_ms=0,
        trust_prompt=lambda d: asked.append(d) or False,
    )
    w.asked = asked
    qtbot.addWidget(w)
    w.show()
    w.start()
    return w


@pytest.fixture
def work(tmp_path) -> Path:
    w = tmp_path / "Invoices"
    w.mkdir()
    (w / "march.txt").write_text("total 10")
    return w


def test_no_system_tray_here_and_the_window_still_works(win, fake, work, qtbot):
    assert not QSystemTrayIcon.isSystemTrayAvailable()  # offscreen: no tray
    assert win.tray.icon is None
    assert win.tray.notify(win.notes[0] if win.notes else _note()) is False
    assert win.tray.items[0].action == "open"  # the model is still kept
    win.folder.check(work)
    win.folder.use.click()
    assert win.tabs.currentWidget() is win.task
    qtbot.keyClicks(win.task.task_box, "Add up the totals")
    win.task.start_button.click()
    assert fake.started == [(work.resolve(), "Add up the totals")]
    win.close()  # without a tray, closing the window is quitting
    assert not win.isVisible()


def pump(qtbot):
    qtbot.wait(10)  # events reach the window through a queued signal


def _note():
    from cowork.app.traymodel import Notification

    return Notification("approval", "t", "b")


def test_whole_flow_with_approval_and_review(win, fake, work, qtbot, shot):
    assert win.tabs.currentWidget() is win.folder
    fake.next_changes = (
        FileChange("march.txt", ChangeKind.EDITED, "total 10", "total 12"),
        FileChange("summary.md", ChangeKind.ADDED, None, "All paid."),
    )
    win.folder.check(work)
    win.folder.use.click()
    qtbot.keyClicks(win.task.task_box, "Add up the totals")
    win.task.start_button.click()
    sid = win.task.session
    win.poll()
    fake.emit(Kind.VM_READY, sid, boot_seconds=11.0)
    pump(qtbot)
    fake.emit(Kind.APPROVAL_ASKED, sid, call_id="c1", action="Delete the file old.txt",
              reason="Deleting cannot be undone.")  # fmt: skip
    pump(qtbot)
    assert win.tray.look is TrayLook.WAITING
    assert T.TRAY_PENDING.format(n=1) in [i.text for i in win.tray.items]
    dialog = win.approvals.current
    assert (
        dialog is not None
        and str(work.resolve()) in dialog.findChildren(type(win.banner))[2].text()
    )
    qtbot.waitUntil(lambda: dialog.armed)
    shot(win, "window-waiting")
    shot(dialog, "window-approval")
    dialog.allow.click()
    assert fake.answers == [(sid, "c1", True)]
    assert win.approvals.pending == []
    fake.emit(Kind.AGENT_FINISHED, sid, error=None)
    pump(qtbot)
    assert win.tabs.currentWidget() is win.review
    assert win.review.summary.text() == "1 edited, 1 added"
    win.review.keep.click()
    assert fake._sessions[sid].applied == ["march.txt", "summary.md"]


def test_folder_with_configuration_asks_for_trust_default_no(win, fake, work):
    fake.trust_items[work.resolve()] = (TrustItem(".mcp.json", "mcp-server", "runs x"),)
    win.folder.check(work)
    win.folder.use.click()
    assert len(win.asked) == 1 and fake.trusted == set()
    assert win.tabs.currentWidget() is win.task


def test_folder_without_configuration_gets_no_dialog(win, work):
    win.folder.check(work)
    win.folder.use.click()
    assert win.asked == []


def test_daemon_dies_then_comes_back(win, fake, work, qtbot, shot):
    sid = fake.start_task(work, "t")
    fake.emit(Kind.APPROVAL_ASKED, sid, call_id="c9", action="Send the report", reason="r")
    pump(qtbot)
    fake.set_alive(False)
    win.poll()
    assert win.banner.isVisible() and win.banner.text() == T.DISCONNECTED
    assert win.tray.look is TrayLook.ERROR
    shot(win, "window-disconnected")
    win.approvals.current.deny.click()  # answering while it is down: still a clear message
    assert win.banner.isVisible()
    win.poll()
    assert not win.connected
    fake.set_alive(True)
    win.poll()
    assert win.connected and win.banner.text() == T.RECONNECTED
    assert win.tray.look is not TrayLook.ERROR
    # subscribed again: new events reach the window
    fake.emit(Kind.APPROVAL_ASKED, sid, call_id="c10", action="Send it again", reason="r")
    pump(qtbot)
    assert any(a.call_id == "c10" for a in win.approvals.pending)


def test_service_not_running_at_start_is_not_called_stopped(qtbot, fake, tmp_path):
    fake.set_alive(False)
    w = MainWindow(fake, recent_file=tmp_path / "r.json", arm_ms=0)
    qtbot.addWidget(w)
    w.show()
    w.start()
    assert w.banner.isVisible() and w.banner.text() == T.NOT_CONNECTED
    assert w.tabs.currentWidget() is w.firstrun
    fake.set_alive(True)
    w.poll()
    assert w.connected and not w.banner.isVisible()


def test_hidden_window_notifies_approval_differently_from_finished(win, fake, work, qtbot):
    sid = fake.start_task(work, "t")
    win.poll()
    win.hide()
    fake.emit(Kind.APPROVAL_ASKED, sid, call_id="c1", action="Delete a.txt", reason="r")
    pump(qtbot)
    fake.emit(Kind.AGENT_FINISHED, sid, error=None)
    pump(qtbot)
    assert [n.kind for n in win.notes] == ["approval", "finished"]
    assert win.notes[0].title != win.notes[1].title


def test_tray_actions(win, fake, work, qtbot):
    sid = fake.start_task(work, "t")
    fake.emit(Kind.VM_READY, sid)
    pump(qtbot)
    win.poll()
    assert win.tray.look is TrayLook.WORKING
    assert [i.action for i in win.tray.items] == ["open", f"session:{sid}", "stop_all", "quit"]
    win.hide()
    win.tray_action(f"session:{sid}")
    assert win.isVisible() and win.tabs.currentWidget() is win.task
    win.tray_action("stop_all")
    assert fake.stopped == [sid]
    assert win.tray.look is TrayLook.IDLE
    win.tray.menu.actions()[0].trigger()  # the real menu is built from the model
    assert win.isVisible()


def test_every_control_has_an_accessible_name_and_keyboard_reach(win):
    kinds = (QAbstractButton, QLineEdit, QPlainTextEdit, QProgressBar, QAbstractItemView)
    for kind in kinds:
        for w in win.findChildren(kind):
            if w.objectName().startswith("qt_"):  # Qt's own internal parts
                continue
            name = w.accessibleName() or (w.text() if isinstance(w, QAbstractButton) else "")
            assert name, f"{type(w).__name__} {w.objectName()} has no accessible name"


def test_alt_number_shortcuts_switch_sections(win, qtbot):
    from PySide6.QtCore import Qt

    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow)
    qtbot.keyClick(win, Qt.Key.Key_5, Qt.KeyboardModifier.AltModifier)
    assert win.tabs.currentWidget() is win.settings
