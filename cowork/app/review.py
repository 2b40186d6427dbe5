"""Review at the end of a task: summary, files with check boxes and previews, keep/discard,
and undo of the last kept changes."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.preview import preview_html
from cowork.app.qt import button, label
from cowork.app.service import ChangeSet, Service
from cowork.errors import CoworkError


class ReviewView(QWidget):
    done = Signal()

    def __init__(self, service: Service, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.service = service
        self.changes: ChangeSet | None = None
        self.session: str | None = None
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.REVIEW_TITLE, heading=True))
        self.summary = label("", "summary of changes")
        lay.addWidget(self.summary)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.files = QListWidget()
        self.files.setAccessibleName(T.A11Y_CHANGED_FILES)
        self.files.currentRowChanged.connect(self._preview)
        self.preview = QTextBrowser()
        self.preview.setAccessibleName(T.A11Y_PREVIEW)
        split.addWidget(self.files)
        split.addWidget(self.preview)
        split.setStretchFactor(1, 2)
        lay.addWidget(split, 1)
        self.result = label("", "result of keeping")
        lay.addWidget(self.result)
        row = QHBoxLayout()
        self.undo = button(T.UNDO_LAST)
        self.undo.setEnabled(False)
        self.keep = button(T.KEEP_SELECTED)
        self.discard = button(T.DISCARD_ALL)
        self.replace = button(T.REPLACE_MINE)
        self.replace.setVisible(False)
        self.conflicts: list[str] = []  # not kept by the last keep: changed in the folder
        row.addWidget(self.undo)
        row.addStretch(1)
        row.addWidget(self.replace)
        row.addWidget(self.discard)
        row.addWidget(self.keep)
        lay.addLayout(row)
        self.keep.clicked.connect(self.keep_selected)
        self.discard.clicked.connect(self.discard_all)
        self.undo.clicked.connect(self.undo_last)
        self.replace.clicked.connect(self.replace_mine)

    def load(self, session: str, *, after_action: bool = False) -> None:
        """Show the pending changes of ``session``; ``after_action``: reloaded after keep,
        discard or undo (an empty list then means nothing is left, not no changes)."""
        self.session = session
        if not after_action:
            self.conflicts = []
            self.replace.setVisible(False)
        try:
            self.changes = self.service.change_set(session)
        except CoworkError as exc:
            self.result.setText(str(exc))
            return
        self.files.clear()
        for change in self.changes.files:
            kind = T.CHANGE_KIND[change.kind]
            if change.conflict:
                kind = f"{kind}; {T.CONFLICT_MARK}"
            item = QListWidgetItem(f"{change.path}  ({kind})")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            item.setData(Qt.ItemDataRole.UserRole, change.path)
            self.files.addItem(item)
        summary = T.change_summary(self.changes.files)
        if after_action and not self.changes.files:
            summary = T.REVIEW_ALL_DONE
        self.summary.setText(summary)
        has = bool(self.changes.files)
        self.keep.setEnabled(has)
        self.discard.setEnabled(has)
        if has:
            self.files.setCurrentRow(0)
        else:
            self.preview.clear()

    def _preview(self, row: int) -> None:
        if self.changes is not None and 0 <= row < len(self.changes.files):
            self.preview.setHtml(preview_html(self.changes.files[row]))

    def selected(self) -> list[str]:
        out = []
        for i in range(self.files.count()):
            item = self.files.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(str(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def keep_selected(self) -> None:
        self._keep(self.selected(), overwrite=False)

    def replace_mine(self) -> None:
        """Keep the files the last keep left alone because the person changed them too."""
        self._keep(list(self.conflicts), overwrite=True)

    def _keep(self, paths: list[str], *, overwrite: bool) -> None:
        if self.session is None:
            return
        try:
            result = self.service.apply_changes(self.session, paths, overwrite)
        except CoworkError as exc:
            self.result.setText(str(exc))
            return
        lines = [T.kept(len(result.kept))]
        lines += [T.KEEP_FAILED.format(path=p, why=w) for p, w in result.failed]
        self.result.setText("\n".join(lines))
        self.conflicts = list(result.conflicts)
        self.replace.setVisible(bool(self.conflicts))
        if result.kept:
            self.undo.setEnabled(True)
        self.load(self.session, after_action=True)
        self.done.emit()

    def discard_all(self) -> None:
        if self.session is None:
            return
        try:
            self.service.discard_changes(self.session)
        except CoworkError as exc:
            self.result.setText(str(exc))
            return
        self.result.setText(T.DISCARDED)
        self.conflicts = []
        self.replace.setVisible(False)
        self.load(self.session, after_action=True)
        self.done.emit()

    def undo_last(self) -> None:
        if self.session is None:
            return
        try:
            result = self.service.undo_last(self.session)
        except CoworkError as exc:
            self.result.setText(str(exc))
            return
        lines = [T.undone(len(result.kept))]
        lines += [T.UNDO_REFUSED.format(path=p, why=w) for p, w in result.failed]
        self.result.setText("\n".join(lines))
        self.undo.setEnabled(False)
        self.conflicts = []
        self.replace.setVisible(False)
        self.load(self.session, after_action=True)
