"""What the tray shows, as data (no Qt): its icon, tooltip, menu and notifications."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from cowork.app import text as T
from cowork.app.service import SessionInfo, SessionState
from cowork.host.events import Event, Kind

RUNNING = frozenset({SessionState.STARTING, SessionState.WORKING, SessionState.WAITING,
                     SessionState.STALLED})  # fmt: skip


class TrayLook(enum.StrEnum):
    IDLE = "idle"
    WORKING = "working"
    WAITING = "waiting"
    ERROR = "error"


@dataclass(frozen=True)
class MenuItem:
    action: str  # "open", "stop_all", "quit", "session:<id>", "" for a label
    text: str
    enabled: bool = True


@dataclass(frozen=True)
class Notification:
    kind: str  # "approval" or "finished"
    title: str
    body: str


def look(sessions: Sequence[SessionInfo], pending: int, connected: bool = True) -> TrayLook:
    if not connected or any(s.state is SessionState.FAILED for s in sessions):
        return TrayLook.ERROR
    if pending or any(s.state is SessionState.WAITING for s in sessions):
        return TrayLook.WAITING
    if any(s.state in RUNNING for s in sessions):
        return TrayLook.WORKING
    return TrayLook.IDLE


def tooltip(sessions: Sequence[SessionInfo], pending: int, connected: bool = True) -> str:
    if not connected:
        return T.DISCONNECTED
    running = [s for s in sessions if s.state in RUNNING]
    if not running and not pending:
        return T.TRAY_IDLE
    parts = [T.TRAY_RUNNING.format(n=len(running))]
    if pending:
        parts.append(T.TRAY_PENDING.format(n=pending))
    return "cowork — " + ", ".join(parts)


def menu(sessions: Sequence[SessionInfo], pending: int, connected: bool = True) -> list[MenuItem]:
    items: list[MenuItem] = [MenuItem("open", T.TRAY_OPEN)]
    running = [s for s in sessions if s.state in RUNNING]
    if pending:
        items.append(MenuItem("", T.TRAY_PENDING.format(n=pending), enabled=False))
    if running:
        for s in running:
            label = f"{s.folder.name}: {T.STATE_LABEL[s.state]}"
            items.append(MenuItem(f"session:{s.id}", label))
    else:
        items.append(MenuItem("", T.TRAY_NO_SESSIONS, enabled=False))
    items.append(MenuItem("stop_all", T.TRAY_STOP_ALL, enabled=bool(running) and connected))
    items.append(MenuItem("quit", T.TRAY_QUIT))
    return items


def notification(event: Event, folder: str = "") -> Notification | None:
    """The notification for an event when the window is hidden (approvals differ from
    finished tasks in kind, title and body)."""
    if event.kind is Kind.APPROVAL_ASKED:
        return Notification("approval", T.NOTIFY_APPROVAL, str(event.fields.get("action", "")))
    if event.kind is Kind.AGENT_FINISHED:
        error = event.fields.get("error")
        body = T.FINISHED_ERROR.format(error=error) if error else T.FINISHED_OK
        return Notification("finished", T.NOTIFY_FINISHED, f"{folder}: {body}" if folder else body)
    return None
