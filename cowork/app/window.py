"""The main window: setup, folder, task, review and settings, the approval queue, the tray,
and the connection to the service (with a clear message and reconnection when it stops)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QApplication, QMainWindow, QTabWidget, QVBoxLayout, QWidget

from cowork.app import text as T
from cowork.app import traymodel
from cowork.app.dialogs import ApprovalQueue, TrustDialog
from cowork.app.firstrun import FirstRunView
from cowork.app.folders import RecentFolders
from cowork.app.folderview import FolderView
from cowork.app.qt import Relay, label, tray_icon
from cowork.app.review import ReviewView
from cowork.app.service import (
    Approval,
    FolderReport,
    Service,
    ServiceUnavailable,
    SessionInfo,
    TrustState,
)
from cowork.app.settingsview import SettingsView
from cowork.app.taskview import TaskView
from cowork.app.tray import Tray
from cowork.app.traymodel import TrayLook
from cowork.errors import CoworkError
from cowork.host.events import Event, Kind

POLL_MS = 2000


class MainWindow(QMainWindow):
    def __init__(
        self,
        service: Service,
        *,
        recent_file: Path | None = None,
        arm_ms: int | None = None,
        clock: Callable[[], float] = time.time,
        trust_prompt: Callable[[TrustDialog], bool] | None = None,
    ) -> None:
        super().__init__()
        self.service = service
        self.clock = clock
        self.connected = True
        self.ever_connected = False
        self.sessions: list[SessionInfo] = []
        self.notes: list[traymodel.Notification] = []
        self.trust_prompt = trust_prompt or (lambda d: d.exec() == TrustDialog.DialogCode.Accepted)
        self.setWindowTitle(T.WINDOW_TITLE)
        self.setWindowIcon(tray_icon(TrayLook.WORKING))
        self.setAccessibleName(T.APP_NAME)
        central = QWidget()
        lay = QVBoxLayout(central)
        self.banner = label("", "connection status")
        self.banner.setStyleSheet("background:#fde0e0; color:#8a0010; padding:8px;")
        self.banner.hide()
        lay.addWidget(self.banner)
        self.tabs = QTabWidget()
        self.tabs.setAccessibleName(T.A11Y_SECTIONS)
        lay.addWidget(self.tabs)
        self.setCentralWidget(central)
        self.firstrun = FirstRunView(service)
        self.folder = FolderView(service, RecentFolders(recent_file))
        self.task = TaskView(service, clock=clock)
        self.review = ReviewView(service)
        self.settings = SettingsView(service)
        for view, name in (
            (self.firstrun, T.NAV_SETUP),
            (self.folder, T.NAV_FOLDER),
            (self.task, T.NAV_TASK),
            (self.review, T.REVIEW_TITLE),
            (self.settings, T.NAV_SETTINGS),
        ):
            view.setAccessibleName(name)
            self.tabs.addTab(view, name)
        for i in range(self.tabs.count()):
            QShortcut(QKeySequence(f"Alt+{i + 1}"), self, lambda i=i: self.tabs.setCurrentIndex(i))
        self.firstrun.ready.connect(lambda: self.tabs.setCurrentWidget(self.folder))
        self.folder.chosen.connect(self.use_folder)
        self.task.finished.connect(self.task_finished)
        self.approvals = ApprovalQueue(self._answer, self, folder_of=self._folder_of, arm_ms=arm_ms)
        self.approvals.changed.connect(lambda _n: self.refresh_tray())
        self.tray = Tray(self.tray_action, self)
        self._relay = Relay(self.on_event, self)
        self._unsubscribe: Callable[[], None] | None = None
        self.poller = QTimer(self)
        self.poller.setInterval(POLL_MS)
        self.poller.timeout.connect(self.poll)
        self.quitting = False
        self.resize(900, 680)

    # --- start-up and connection ----------------------------------------------------------
    def start(self) -> None:
        self.firstrun.recheck()
        self.settings.load()
        self.connect_service()
        self.tabs.setCurrentWidget(self.folder if self.firstrun.all_ok else self.firstrun)
        self.poller.start()

    def connect_service(self) -> bool:
        try:
            if self._unsubscribe is None:
                self._unsubscribe = self.service.subscribe(self._relay.value.emit)
            self.sessions = self.service.sessions()
            for a in self.service.pending_approvals():
                self.approvals.add(a)
        except CoworkError as exc:
            self._lost(exc)
            return False
        first = not self.ever_connected
        self.ever_connected = True
        if not self.connected and first:
            self.connected = True
            self.banner.hide()
        elif not self.connected:
            self.connected = True
            self.banner.setText(T.RECONNECTED)
            self.banner.setStyleSheet("background:#e3f1e3; color:#1b5e20; padding:8px;")
            QTimer.singleShot(4000, self._hide_banner_if_connected)
            self.firstrun.recheck()
        self.refresh_tray()
        return True

    def _hide_banner_if_connected(self) -> None:
        if self.connected:
            self.banner.hide()

    def _lost(self, exc: BaseException) -> None:
        was = self.connected
        self.connected = False
        if self._unsubscribe is not None:
            with contextlib.suppress(Exception):  # the connection is gone already
                self._unsubscribe()
            self._unsubscribe = None
        text = T.DISCONNECTED if self.ever_connected else T.NOT_CONNECTED
        if not isinstance(exc, ServiceUnavailable):
            text += f"\n({exc})"
        self.banner.setText(text)
        self.banner.setStyleSheet("background:#fde0e0; color:#8a0010; padding:8px;")
        self.banner.show()
        if was:
            self.refresh_tray()

    def poll(self) -> None:
        if not self.connected:
            self.connect_service()
            return
        try:
            self.sessions = self.service.sessions()
        except CoworkError as exc:
            self._lost(exc)
            return
        self.refresh_tray()

    # --- events ---------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        self.task.on_event(event)
        if event.kind is Kind.APPROVAL_ASKED and event.session is not None:
            f = event.fields
            self.approvals.add(
                Approval(
                    session=event.session,
                    call_id=str(f.get("call_id", "")),
                    action=str(f.get("action", "")),
                    reason=str(f.get("reason", "")),
                    asked_at=event.time,
                    timeout=float(f.get("timeout", 300.0)),
                )
            )
        elif event.kind is Kind.APPROVAL_ANSWERED and event.session is not None:
            self.approvals.drop(event.session, str(event.fields.get("call_id", "")))
        elif event.kind is Kind.SESSION_ENDED and event.session is not None:
            self.approvals.drop(event.session)
        if not self.isVisible() or self.isMinimized():
            note = traymodel.notification(event, self._folder_of(event.session or ""))
            if note is not None:
                self.notes.append(note)
                self.tray.notify(note)
        if event.kind in (Kind.SESSION_STARTED, Kind.SESSION_ENDED, Kind.AGENT_FINISHED):
            self.poll()

    def _answer(self, approval: Approval, allow: bool) -> None:
        try:
            self.service.answer_approval(approval.session, approval.call_id, allow)
        except CoworkError as exc:
            self._lost(exc)

    def _folder_of(self, session: str) -> str:
        for s in self.sessions:
            if s.id == session:
                return str(s.folder)
        return ""

    # --- flow -----------------------------------------------------------------------------
    def use_folder(self, report: FolderReport) -> None:
        assert report.real_path is not None
        folder = report.real_path
        try:
            info = self.service.trust_info(folder)
        except CoworkError as exc:
            self.folder.refusal.setText(str(exc))
            return
        if info.state in (TrustState.UNTRUSTED, TrustState.LAPSED):
            dialog = TrustDialog(info, self)
            if self.trust_prompt(dialog):
                self.service.trust(folder)
        self.task.set_folder(folder)
        self.tabs.setCurrentWidget(self.task)
        self.task.task_box.setFocus()

    def task_finished(self, session: str) -> None:
        self.review.changes = None
        self.review.load(session)
        if self.review.changes is None:  # the service could not say what changed: say why
            self.task.message.setText(self.review.result.text())
        elif self.review.changes.files:
            self.tabs.setCurrentWidget(self.review)

    # --- tray -----------------------------------------------------------------------------
    def refresh_tray(self) -> None:
        self.tray.refresh(self.sessions, len(self.approvals.pending), self.connected)

    def tray_action(self, action: str) -> None:
        if action == "open" or action.startswith("session:"):
            self.showNormal()
            self.raise_()
            self.activateWindow()
            if action.startswith("session:"):
                self.tabs.setCurrentWidget(self.task)
        elif action == "stop_all":
            self.stop_all()
        elif action == "quit":
            self.quit()

    def stop_all(self) -> None:
        for s in self.sessions:
            if s.state in traymodel.RUNNING:
                try:
                    self.service.stop_task(s.id)
                except CoworkError as exc:
                    self._lost(exc)
                    return
        self.poll()

    def quit(self) -> None:
        self.stop_all()
        self.quitting = True
        self.close()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def closeEvent(self, event: QCloseEvent) -> None:
        # With a tray, closing the window keeps tasks running in the background; without
        # one, closing is quitting (tasks keep running in the service, which owns them).
        if self.tray.icon is not None and not self.quitting:
            event.ignore()
            self.hide()
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.poller.stop()
        event.accept()
