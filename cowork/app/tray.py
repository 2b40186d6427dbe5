"""The tray icon, built from :mod:`cowork.app.traymodel`; absent where there is no tray."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from cowork.app import traymodel
from cowork.app.qt import tray_icon
from cowork.app.service import SessionInfo
from cowork.app.traymodel import Notification, TrayLook


def tray_available() -> bool:
    return QSystemTrayIcon.isSystemTrayAvailable()


class Tray(QObject):
    """Wraps QSystemTrayIcon. ``icon`` is None where the desktop has no tray: then every
    method still works (the model is kept) and nothing is shown."""

    def __init__(self, on_action: Callable[[str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.on_action = on_action
        self.look = TrayLook.IDLE
        self.items: list[traymodel.MenuItem] = []
        self.tooltip = ""
        self.icon: QSystemTrayIcon | None = None
        self.menu = QMenu()
        if tray_available():
            self.icon = QSystemTrayIcon(tray_icon(self.look), self)
            self.icon.setContextMenu(self.menu)
            self.icon.activated.connect(lambda _reason: self.on_action("open"))
            self.icon.show()

    def refresh(self, sessions: Sequence[SessionInfo], pending: int, connected: bool) -> None:
        self.look = traymodel.look(sessions, pending, connected)
        self.items = traymodel.menu(sessions, pending, connected)
        self.tooltip = traymodel.tooltip(sessions, pending, connected)
        self.menu.clear()
        for item in self.items:
            act = self.menu.addAction(item.text)
            act.setEnabled(item.enabled and bool(item.action))
            if item.action:
                act.triggered.connect(lambda _=False, a=item.action: self.on_action(a))
        if self.icon is not None:
            self.icon.setIcon(tray_icon(self.look))
            self.icon.setToolTip(self.tooltip)

    def notify(self, note: Notification) -> bool:
        """Show a notification; False where there is no tray to show it."""
        if self.icon is None or not QSystemTrayIcon.supportsMessages():
            return False
        kind = (
            QSystemTrayIcon.MessageIcon.Warning
            if note.kind == "approval"
            else QSystemTrayIcon.MessageIcon.Information
        )
        self.icon.showMessage(note.title, note.body, kind, 15000)
        return True
