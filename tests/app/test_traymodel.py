from pathlib import Path

from cowork.app import text as T
from cowork.app import traymodel
from cowork.app.service import SessionInfo, SessionState
from cowork.app.traymodel import TrayLook
from cowork.host.events import Event, Kind


def s(i, state):
    return SessionInfo(f"s{i}", Path(f"/w/folder{i}"), "task", state, 0.0, 0.0)


def test_look_by_priority():
    assert traymodel.look([], 0) is TrayLook.IDLE
    assert traymodel.look([s(1, SessionState.FINISHED)], 0) is TrayLook.IDLE
    assert traymodel.look([s(1, SessionState.WORKING)], 0) is TrayLook.WORKING
    assert traymodel.look([s(1, SessionState.WORKING)], 1) is TrayLook.WAITING
    assert traymodel.look([s(1, SessionState.WAITING)], 0) is TrayLook.WAITING
    assert traymodel.look([s(1, SessionState.FAILED), s(2, SessionState.WAITING)], 1) is (
        TrayLook.ERROR
    )
    assert traymodel.look([], 0, connected=False) is TrayLook.ERROR


def test_menu_lists_running_sessions_pending_and_actions():
    items = traymodel.menu(
        [s(1, SessionState.WORKING), s(2, SessionState.WAITING), s(3, SessionState.FINISHED)], 2
    )
    assert [i.action for i in items] == ["open", "", "session:s1", "session:s2", "stop_all", "quit"]
    assert items[1].text == "2 waiting for your answer" and not items[1].enabled
    assert items[2].text == "folder1: Working"
    assert items[3].text == "folder2: Waiting for you"
    assert items[4].enabled


def test_menu_when_idle_or_disconnected():
    items = traymodel.menu([], 0)
    assert [i.text for i in items] == [
        T.TRAY_OPEN,
        T.TRAY_NO_SESSIONS,
        T.TRAY_STOP_ALL,
        T.TRAY_QUIT,
    ]
    assert not items[2].enabled
    items = traymodel.menu([s(1, SessionState.WORKING)], 0, connected=False)
    assert not next(i for i in items if i.action == "stop_all").enabled


def test_tooltip():
    assert traymodel.tooltip([], 0) == T.TRAY_IDLE
    assert traymodel.tooltip([s(1, SessionState.WORKING)], 1) == (
        "cowork — 1 running, 1 waiting for your answer"
    )
    assert traymodel.tooltip([], 0, connected=False) == T.DISCONNECTED


def test_approval_notification_differs_from_finished():
    ask = traymodel.notification(Event(Kind.APPROVAL_ASKED, {"action": "Delete a.txt"}))
    done = traymodel.notification(Event(Kind.AGENT_FINISHED, {}), "/w/folder1")
    failed = traymodel.notification(Event(Kind.AGENT_FINISHED, {"error": "boom"}))
    assert ask is not None and done is not None and failed is not None
    assert (ask.kind, ask.title, ask.body) == ("approval", T.NOTIFY_APPROVAL, "Delete a.txt")
    assert (done.kind, done.title) == ("finished", T.NOTIFY_FINISHED)
    assert done.body == f"/w/folder1: {T.FINISHED_OK}"
    assert "boom" in failed.body
    assert traymodel.notification(Event(Kind.AGENT_TEXT, {"text": "x"})) is None
