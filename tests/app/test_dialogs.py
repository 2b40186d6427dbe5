from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QLineEdit

from cowork.app import text as T
from cowork.app.dialogs import ApprovalDialog, ApprovalQueue, TrustDialog
from cowork.app.service import Approval, TrustInfo, TrustItem, TrustState


def approval(session="s1", call="c1", timeout=300.0):
    return Approval(session, call, "Delete the file old-report.pdf (2.1 MB)",
                    "Deleting cannot be undone.", 0.0, timeout)  # fmt: skip


def test_trust_dialog_lists_items_and_defaults_to_dont_trust(qtbot, shot):
    info = TrustInfo(
        Path("/w/project"),
        TrustState.UNTRUSTED,
        (
            TrustItem(".claude/settings.json", "hook", "hook on PostToolUse runs `make lint`"),
            TrustItem(".mcp.json", "mcp-server", "MCP server docs runs `node docs.js`"),
        ),
    )
    d = TrustDialog(info)
    qtbot.addWidget(d)
    d.show()
    assert d.items.count() == 2
    assert d.items.item(0).text().startswith("Runs automatically (.claude/settings.json)")
    assert d.no.isDefault() and not d.yes.isDefault() and not d.yes.autoDefault()
    shot(d, "trust-dialog")
    qtbot.keyClick(d, Qt.Key.Key_Escape)
    assert d.result() == TrustDialog.DialogCode.Rejected


def test_trust_dialog_enter_means_dont_trust(qtbot):
    info = TrustInfo(Path("/w"), TrustState.LAPSED, (TrustItem("f", "env", "sets X"),))
    d = TrustDialog(info)
    qtbot.addWidget(d)
    d.show()
    qtbot.keyClick(d.no, Qt.Key.Key_Return)
    assert d.result() == TrustDialog.DialogCode.Rejected


def test_problems_block_trusting(qtbot):
    info = TrustInfo(Path("/w"), TrustState.UNTRUSTED, (), ("f: is a symbolic link",))
    d = TrustDialog(info)
    qtbot.addWidget(d)
    assert not d.yes.isEnabled()


def test_keystroke_in_flight_is_not_an_answer_and_default_is_dont_allow(qtbot, shot):
    d = ApprovalDialog(approval(), arm_ms=200)
    qtbot.addWidget(d)
    answers = []
    d.answered.connect(lambda a, allow: answers.append(allow))
    d.show()
    qtbot.keyClick(d, Qt.Key.Key_Return)  # typed before the person could read it
    qtbot.keyClick(d.allow, Qt.Key.Key_Space)
    assert answers == [] and not d.armed
    qtbot.waitUntil(lambda: d.armed, timeout=3000)
    shot(d, "approval")
    assert d.deny.isDefault() and not d.allow.autoDefault()
    qtbot.keyClick(d, Qt.Key.Key_Return)
    assert answers == [False]


@pytest.mark.parametrize("how", ["escape", "close", "timeout"])
def test_escape_close_and_timeout_mean_dont_allow(qtbot, how):
    d = ApprovalDialog(approval(), arm_ms=0, timeout_ms=100 if how == "timeout" else None)
    qtbot.addWidget(d)
    with qtbot.waitSignal(d.answered, timeout=3000) as got:
        d.show()
        if how == "escape":
            qtbot.keyClick(d, Qt.Key.Key_Escape)
        elif how == "close":
            d.close()
    assert got.args[1] is False


def test_allow_only_by_a_deliberate_click(qtbot):
    d = ApprovalDialog(approval(), arm_ms=0)
    qtbot.addWidget(d)
    d.show()
    qtbot.waitUntil(lambda: d.armed)
    with qtbot.waitSignal(d.answered) as got:
        qtbot.mouseClick(d.allow, Qt.MouseButton.LeftButton)
    assert got.args[1] is True


def test_prompt_does_not_take_focus_from_typing(qtbot):
    edit = QLineEdit()
    qtbot.addWidget(edit)
    edit.show()
    edit.activateWindow()
    edit.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is edit)
    d = ApprovalDialog(approval(), arm_ms=5000)
    qtbot.addWidget(d)
    assert d.testAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)
    d.show()
    qtbot.keyClicks(edit, "still typing")
    assert QApplication.focusWidget() is edit
    assert edit.text() == "still typing"


def test_queue_shows_one_at_a_time_across_sessions(qtbot):
    answered = []
    q = ApprovalQueue(lambda a, allow: answered.append((a.key, allow)), arm_ms=0)
    q.add(approval("s1", "a"))
    q.add(approval("s2", "b"))
    q.add(approval("s1", "a"))  # same approval twice: once
    assert len(q.pending) == 2 and q.current is not None
    assert q.current.approval.key == ("s1", "a")
    assert q.current.queue.text() == T.APPROVAL_QUEUE.format(n=1)
    qtbot.waitUntil(lambda: q.current.armed)
    q.current.allow.click()
    assert answered == [(("s1", "a"), True)]
    assert q.current is not None and q.current.approval.key == ("s2", "b")
    assert q.current.queue.text() == ""
    q.drop("s2")  # the session stopped: its prompt goes away unanswered
    assert q.current is None and q.pending == []
    assert answered == [(("s1", "a"), True)]
