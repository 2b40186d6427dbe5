"""Picking a folder: native dialog, recent folders, and the plain-language folder check."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.folders import RecentFolders
from cowork.app.qt import button, label
from cowork.app.service import FolderReport, Service
from cowork.errors import CoworkError


class FolderView(QWidget):
    chosen = Signal(object)  # FolderReport of a usable folder

    def __init__(
        self, service: Service, recent: RecentFolders, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.service = service
        self.recent = recent
        self.report: FolderReport | None = None
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.PICK_TITLE, heading=True))
        lay.addWidget(label(T.PICK_INTRO))
        self.pick = button(T.PICK_BUTTON)
        self.pick.clicked.connect(self.open_dialog)
        row = QHBoxLayout()
        row.addWidget(self.pick)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(label(T.RECENT, wrap=False))
        self.recent_list = QListWidget()
        self.recent_list.setAccessibleName(T.RECENT)
        self.recent_list.setMaximumHeight(140)
        self.recent_list.itemActivated.connect(self._recent_chosen)
        lay.addWidget(self.recent_list)
        self.verdict = label("", "folder verdict", heading=True)
        self.where = label("", "real location")
        self.size_line = label("", "folder size")
        self.warnings = label("", "folder warnings")
        self.warnings.setStyleSheet("color: #8a5300;")
        self.refusal = label("", "why the folder cannot be used")
        self.refusal.setStyleSheet("color: #b00020;")
        for w in (self.verdict, self.refusal, self.where, self.size_line, self.warnings):
            lay.addWidget(w)
            w.hide()
        self.use = button(T.USE_FOLDER)
        self.use.setEnabled(False)
        self.use.clicked.connect(self.confirm)
        row2 = QHBoxLayout()
        row2.addStretch(1)
        row2.addWidget(self.use)
        lay.addLayout(row2)
        lay.addStretch(1)
        self.refresh_recent()

    def refresh_recent(self) -> None:
        self.recent_list.clear()
        folders = self.recent.load()
        for p in folders:
            self.recent_list.addItem(QListWidgetItem(str(p)))
        if not folders:
            hint = QListWidgetItem(T.NO_RECENT)
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent_list.addItem(hint)

    def _recent_chosen(self, item: QListWidgetItem) -> None:
        if item.flags() & Qt.ItemFlag.ItemIsEnabled:
            self.check(Path(item.text()))

    def _set(self, widget: QLabel, text: str) -> None:
        widget.setText(text)
        widget.setVisible(bool(text))

    def open_dialog(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, T.PICK_BUTTON, str(Path.home()))
        if chosen:
            self.check(Path(chosen))

    def check(self, folder: Path) -> FolderReport:
        report = self.service.check_folder(folder)
        self.show_report(report)
        return report

    def show_report(self, report: FolderReport) -> None:
        self.report = report
        self.use.setEnabled(report.usable)
        if not report.usable:
            self._set(self.verdict, "✘ " + T.FOLDER_REFUSED)
            self.verdict.setStyleSheet("color: #b00020;")
            text = report.refusal or ""
            self._set(self.refusal, text[:1].upper() + text[1:])
            for w in (self.where, self.size_line, self.warnings):
                self._set(w, "")
            return
        assert report.real_path is not None
        self._set(self.verdict, "✔ " + T.FOLDER_OK)
        self.verdict.setStyleSheet("color: #1b5e20;")
        self._set(self.refusal, "")
        self._set(self.where, T.REAL_PATH.format(path=report.real_path))
        line = T.SIZE_LINE if report.counted_all else T.SIZE_LINE_PARTIAL
        self._set(
            self.size_line, line.format(files=report.file_count, size=T.size(report.size_bytes))
        )
        self._set(
            self.warnings,
            "\n\n".join("⚠ " + T.warning_text(w, report.real_path.name) for w in report.warnings),
        )

    def confirm(self) -> None:
        """Checks again at the moment of use: a folder that vanished since is caught here."""
        if self.report is None:
            return
        try:
            report = self.service.check_folder(self.report.given)
        except CoworkError as exc:
            self._set(self.refusal, str(exc))
            return
        if not report.usable:
            if not report.given.exists():
                report = FolderReport(
                    report.given, None, T.FOLDER_VANISHED.format(path=report.given)
                )
            self.show_report(report)
            return
        assert report.real_path is not None
        self.recent.add(report.real_path)
        self.refresh_recent()
        self.chosen.emit(report)
