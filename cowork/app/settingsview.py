"""Settings: the effective policy, read-only, with each value's layer and its locks; the
user's own values editable where the organisation did not lock them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.qt import button, label, lock_icon
from cowork.app.service import EffectivePolicy, Service
from cowork.errors import CoworkError


class SettingsView(QWidget):
    def __init__(self, service: Service, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.service = service
        self.policy: EffectivePolicy | None = None
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.SETTINGS_TITLE, heading=True))
        lay.addWidget(label(T.SETTINGS_INTRO))
        self.table = QTableWidget(0, 3)
        self.table.setAccessibleName(T.A11Y_SETTINGS_TABLE)
        self.table.setHorizontalHeaderLabels(list(T.SETTING_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setAccessibleName(T.A11Y_COLUMN_HEADINGS)
        self.table.verticalHeader().setAccessibleName(T.A11Y_ROW_NUMBERS)
        self.table.currentCellChanged.connect(lambda *_: self._update_edit())
        lay.addWidget(self.table, 1)
        self.message = label("", "settings message")
        lay.addWidget(self.message)
        row = QHBoxLayout()
        row.addStretch(1)
        self.edit = button(T.EDIT_SETTING, T.A11Y_EDIT_SETTING)
        self.edit.clicked.connect(self.edit_current)
        row.addWidget(self.edit)
        lay.addLayout(row)
        lay.addWidget(label(T.TRUSTED_FOLDERS, wrap=False))
        self.trusted = QListWidget()
        self.trusted.setAccessibleName(T.TRUSTED_FOLDERS)
        self.trusted.setMaximumHeight(120)
        self.trusted.currentRowChanged.connect(lambda _r: self._update_untrust())
        lay.addWidget(self.trusted)
        row2 = QHBoxLayout()
        row2.addStretch(1)
        self.untrust = button(T.UNTRUST, T.A11Y_UNTRUST)
        self.untrust.clicked.connect(self.untrust_current)
        row2.addWidget(self.untrust)
        lay.addLayout(row2)
        self.folders: list[Path] = []

    def load(self) -> None:
        try:
            self.policy = self.service.effective_policy()
        except CoworkError as exc:
            self.message.setText(str(exc))
            return
        rows = self.policy.rows
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            who = T.LAYER.get(r.layer, r.layer)
            cells = [r.key, r.value, T.LOCKED if r.locked else who]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if r.locked:
                    item.setForeground(QBrush(QColor("#6d4c00")))
                    item.setToolTip(T.LOCKED)
                    if j == 2:
                        item.setIcon(lock_icon())
                self.table.setItem(i, j, item)
        notes = list(self.policy.problems) + list(self.policy.notes)
        self.message.setText("\n".join(notes))
        self._update_edit()
        self.load_trusted()

    def load_trusted(self) -> None:
        try:
            self.folders = self.service.trusted_folders()
        except CoworkError as exc:
            self.message.setText(str(exc))
            return
        self.trusted.clear()
        for folder in self.folders:
            self.trusted.addItem(QListWidgetItem(str(folder)))
        if not self.folders:
            hint = QListWidgetItem(T.NO_TRUSTED)
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
            self.trusted.addItem(hint)
        self._update_untrust()

    def _update_untrust(self) -> None:
        self.untrust.setEnabled(0 <= self.trusted.currentRow() < len(self.folders))

    def untrust_current(self) -> None:
        row = self.trusted.currentRow()
        if not 0 <= row < len(self.folders):
            return
        folder = self.folders[row]
        try:
            self.service.untrust(folder)
        except CoworkError as exc:
            self.message.setText(str(exc))
            return
        self.load_trusted()
        self.message.setText(T.UNTRUSTED.format(path=folder))

    def current_row(self) -> int:
        return self.table.currentRow()

    def _update_edit(self) -> None:
        row = self.current_row()
        ok = self.policy is not None and 0 <= row < len(self.policy.rows)
        self.edit.setEnabled(ok and self.policy is not None and not self.policy.rows[row].locked)

    def edit_current(self, value: str | None = None) -> None:
        row = self.current_row()
        if self.policy is None or not 0 <= row < len(self.policy.rows):
            return
        r = self.policy.rows[row]
        if r.locked:
            self.message.setText(T.LOCKED)
            return
        if value is None:
            value, ok = QInputDialog.getText(self, T.EDIT_SETTING, r.key, text=r.value)
            if not ok:
                return
        try:
            self.service.set_user_setting(r.key, value)
        except CoworkError as exc:
            self.message.setText(str(exc))
            return
        self.load()
        self.table.setCurrentCell(row, 0)
        self.message.setText(T.SETTING_SAVED)
