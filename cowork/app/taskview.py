"""The task window: the task box, the live timeline, state, elapsed time, Stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.qt import button, entry_icon, label
from cowork.app.service import Service, SessionState
from cowork.app.timeline import Entry, Timeline
from cowork.errors import CoworkError
from cowork.host.events import Event

STATE_STYLE = {
    SessionState.STARTING: "background:#e8eef7; color:#1d3b63;",
    SessionState.WORKING: "background:#e3f1e3; color:#1b5e20;",
    SessionState.WAITING: "background:#fff3cd; color:#6d4c00; font-weight:bold;",
    SessionState.STALLED: "background:#fde7d9; color:#8a3b00; font-weight:bold;",
    SessionState.FAILED: "background:#fde0e0; color:#b00020; font-weight:bold;",
    SessionState.FINISHED: "background:#e3f1e3; color:#1b5e20; font-weight:bold;",
    SessionState.STOPPED: "background:#eeeeee; color:#333333;",
}
STATE_MARK = {
    SessionState.STARTING: "◌",
    SessionState.WORKING: "●",
    SessionState.WAITING: "❚❚",
    SessionState.STALLED: "⚠",
    SessionState.FAILED: "✘",
    SessionState.FINISHED: "✔",
    SessionState.STOPPED: "■",
}


class TaskView(QWidget):
    finished = Signal(str)  # session id, when the task ends (finished, failed or stopped)

    def __init__(
        self,
        service: Service,
        parent: QWidget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(parent)
        self.service = service
        self.clock = clock
        self.folder: Path | None = None
        self.session: str | None = None
        self.timeline = Timeline()
        self._items: dict[int, QListWidgetItem] = {}
        lay = QVBoxLayout(self)
        self.folder_line = label("", "folder in use")
        lay.addWidget(self.folder_line)
        lay.addWidget(label(T.TASK_TITLE, heading=True))
        self.task_box = QPlainTextEdit()
        self.task_box.setAccessibleName(T.TASK_TITLE)
        self.task_box.setPlaceholderText(T.TASK_PLACEHOLDER)
        self.task_box.setTabChangesFocus(True)
        self.task_box.setMaximumHeight(110)
        lay.addWidget(self.task_box)
        row = QHBoxLayout()
        self.start_button = button(T.TASK_START)
        self.start_button.clicked.connect(self.start)
        self.stop_button = button(T.STOP)
        # Stop never keeps keyboard focus: a stray Enter or Space cannot cancel the task.
        self.stop_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.state_label = label("", "task state", wrap=False)
        self.state_label.setContentsMargins(8, 4, 8, 4)
        self.clock_label = label("", "elapsed time and last activity", wrap=False)
        row.addWidget(self.start_button)
        row.addWidget(self.state_label)
        row.addWidget(self.clock_label, 1)
        row.addWidget(self.stop_button)
        lay.addLayout(row)
        self.boot = QProgressBar()
        self.boot.setAccessibleName(T.A11Y_BOOT)
        self.boot.setRange(0, 0)  # busy: boot time is not predictable under emulation
        self.boot.setTextVisible(True)
        self.boot_line = label("", "machine start progress")
        lay.addWidget(self.boot)
        lay.addWidget(self.boot_line)
        self.boot.hide()
        self.boot_line.hide()
        self.message = label("", "task message")
        lay.addWidget(self.message)
        self.details = QCheckBox(T.DETAILS)
        self.details.setAccessibleName(T.A11Y_DETAILS)
        self.details.toggled.connect(self._redraw)
        lay.addWidget(self.details)
        self.list = QListWidget()
        self.list.setAccessibleName(T.A11Y_TIMELINE)
        self.list.setWordWrap(True)
        self.list.setAlternatingRowColors(True)
        lay.addWidget(self.list, 1)
        self.ticker = QTimer(self)
        self.ticker.setInterval(1000)
        self.ticker.timeout.connect(self.tick)

    def set_folder(self, folder: Path) -> None:
        self.folder = folder
        self.folder_line.setText(T.FOLDER_LINE.format(path=folder))

    def start(self) -> str | None:
        task = self.task_box.toPlainText().strip()
        if not task:
            self.message.setText(T.TASK_EMPTY)
            return None
        if self.folder is None:
            self.message.setText(T.PICK_FIRST)
            return None
        self.timeline = Timeline()
        self.timeline.started_at = self.clock()
        self.timeline.last_activity = self.timeline.started_at
        self._items.clear()
        self.list.clear()
        self.message.setText("")
        try:
            self.session = self.service.start_task(self.folder, task)
        except CoworkError as exc:
            self.message.setText(str(exc))
            return None
        self.start_button.setEnabled(False)
        self.task_box.setReadOnly(True)
        self.stop_button.setEnabled(True)
        self.ticker.start()
        self.tick()
        return self.session

    def stop(self) -> None:
        if self.session is None:
            return
        try:
            mode = self.service.stop_task(self.session)
        except CoworkError as exc:
            self.message.setText(str(exc))
            return
        self.message.setText(T.STOPPED_STAGED if mode == "staged" else T.STOPPED_DIRECT)

    def on_event(self, event: Event) -> None:
        if self.session is None or event.session != self.session:
            return
        before = self.timeline.state
        entry = self.timeline.apply(event)
        if entry is not None:
            self._show(entry)
        self.tick()
        ended = (SessionState.FINISHED, SessionState.FAILED, SessionState.STOPPED)
        if self.timeline.state in ended and before not in ended:
            self.ticker.stop()
            self.stop_button.setEnabled(False)
            self.start_button.setEnabled(True)
            self.task_box.setReadOnly(False)
            self.finished.emit(self.session)

    def _text(self, e: Entry) -> str:
        line = e.text
        if e.outcome:
            line += f" — {e.outcome}"
        if self.details.isChecked() and e.details:
            line += f"\n    {e.details}"
        return line

    def _show(self, e: Entry) -> None:
        item = self._items.get(id(e))
        if item is None:
            item = QListWidgetItem()
            self.list.addItem(item)
            self._items[id(e)] = item
        item.setText(self._text(e))
        item.setIcon(entry_icon(e.kind, e.refused))
        item.setData(Qt.ItemDataRole.AccessibleTextRole, f"{e.kind}: {self._text(e)}")
        if e.refused:
            item.setForeground(QColor("#b00020"))
        self.list.scrollToBottom()

    def _redraw(self) -> None:
        for e in self.timeline.entries:
            self._show(e)

    def tick(self) -> None:
        now = self.clock()
        state = self.timeline.shown_state(now)
        self.state_label.setText(f"{STATE_MARK[state]} {T.STATE_LABEL[state]}")
        self.state_label.setMinimumWidth(self.state_label.sizeHint().width())
        self.state_label.setStyleSheet(STATE_STYLE[state] + " padding: 4px; border-radius: 4px;")
        self.state_label.setAccessibleName(T.A11Y_TASK_STATE.format(s=T.STATE_LABEL[state]))
        started = self.timeline.started_at or now
        last = self.timeline.last_activity or now
        self.clock_label.setText(
            T.ELAPSED.format(time=T.duration(now - started))
            + " · "
            + T.LAST_ACTIVITY.format(time=T.duration(now - last))
        )
        booting = state is SessionState.STARTING and self.session is not None
        self.boot.setVisible(booting)
        self.boot_line.setVisible(booting)
        if booting:
            self.boot_line.setText(T.BOOTING.format(time=T.duration(now - started)))
