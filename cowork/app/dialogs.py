"""The trust dialog and the approval prompt with its queue."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QKeyEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.qt import button, label
from cowork.app.service import Approval, TrustInfo, TrustState


class TrustDialog(QDialog):
    """Item by item what trusting would switch on; "Don't trust" is the default."""

    def __init__(self, info: TrustInfo, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(T.TRUST_TITLE)
        self.setAccessibleName(T.TRUST_TITLE)
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.TRUST_TITLE, heading=True))
        lay.addWidget(label(T.TRUST_INTRO.format(path=info.folder)))
        if info.state is TrustState.LAPSED:
            lay.addWidget(label(T.TRUST_LAPSED))
        self.items = QListWidget()
        self.items.setAccessibleName(T.A11Y_TRUST_ITEMS)
        self.items.setWordWrap(True)
        for item in info.items:
            kind = T.TRUST_KIND.get(item.kind, T.TRUST_KIND["setting"])
            QListWidgetItem(f"{kind} ({item.file}): {item.text}", self.items)
        lay.addWidget(self.items, 1)
        if info.problems:
            lay.addWidget(label(T.TRUST_PROBLEMS))
            lay.addWidget(label("\n".join(f"• {p}" for p in info.problems), "trust problems"))
        row = QHBoxLayout()
        row.addStretch(1)
        self.yes = button(T.TRUST_YES)
        self.no = button(T.TRUST_NO)
        self.yes.setAutoDefault(False)
        self.no.setDefault(True)
        self.yes.setEnabled(not info.problems)
        row.addWidget(self.yes)
        row.addWidget(self.no)
        lay.addLayout(row)
        self.yes.clicked.connect(self.accept)
        self.no.clicked.connect(self.reject)
        self.resize(640, 420)
        self.no.setFocus()


class ApprovalDialog(QDialog):
    """One approval. Never takes focus when it appears; its buttons wake up only after
    ``arm_ms`` so a keystroke already in flight cannot answer it; Enter, Escape, closing and
    the timeout all mean Don't allow."""

    answered = Signal(object, bool)

    ARM_MS = 1000

    def __init__(
        self,
        approval: Approval,
        waiting_behind: int = 0,
        *,
        folder: str = "",
        arm_ms: int | None = None,
        timeout_ms: int | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.approval = approval
        self._done = False
        self.setWindowTitle(T.APPROVAL_TITLE)
        self.setAccessibleName(T.APPROVAL_TITLE)
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating, True)
        self.setWindowModality(Qt.WindowModality.NonModal)
        self.setMinimumWidth(520)
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.APPROVAL_TITLE, heading=True))
        self.action = label(approval.action, "action to approve")
        font = self.action.font()
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.action.setFont(font)
        lay.addWidget(self.action)
        if folder:
            lay.addWidget(label(T.APPROVAL_FOLDER.format(folder=folder)))
        lay.addWidget(label(T.APPROVAL_WHY.format(why=approval.reason), "why cowork asks"))
        lay.addWidget(label(T.APPROVAL_TIMEOUT.format(time=T.duration(approval.timeout))))
        self.queue = label(
            T.APPROVAL_QUEUE.format(n=waiting_behind) if waiting_behind else "", "queue"
        )
        lay.addWidget(self.queue)
        self.queue.setVisible(bool(waiting_behind))
        row = QHBoxLayout()
        row.addStretch(1)
        self.allow = button(T.ALLOW)
        self.deny = button(T.DONT_ALLOW)
        self.allow.setAutoDefault(False)
        self.deny.setDefault(True)
        for b in (self.allow, self.deny):
            b.setEnabled(False)
            row.addWidget(b)
        lay.addLayout(row)
        self.allow.clicked.connect(lambda: self._answer(True))
        self.deny.clicked.connect(lambda: self._answer(False))
        QTimer.singleShot(self.ARM_MS if arm_ms is None else arm_ms, self._arm)
        timeout = int(approval.timeout * 1000) if timeout_ms is None else timeout_ms
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(lambda: self._answer(False))
        self.timer.start(timeout)

    def _arm(self) -> None:
        if not self._done:
            self.allow.setEnabled(True)
            self.deny.setEnabled(True)

    @property
    def armed(self) -> bool:
        return self.allow.isEnabled()

    def _answer(self, allow: bool) -> None:
        if self._done:
            return
        self._done = True
        self.timer.stop()
        self.answered.emit(self.approval, allow)
        self.hide()
        self.deleteLater()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self._answer(False)
            return
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not self.armed:
            return  # a keystroke in flight is not an answer
        super().keyPressEvent(event)

    def reject(self) -> None:
        self._answer(False)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._answer(False)
        event.accept()


class ApprovalQueue(QObject):
    """Approvals from every session, one prompt at a time, oldest first."""

    changed = Signal(int)

    def __init__(
        self,
        answer: Callable[[Approval, bool], None],
        parent: QWidget | None = None,
        *,
        folder_of: Callable[[str], str] = lambda _s: "",
        arm_ms: int | None = None,
    ) -> None:
        super().__init__(parent)
        self._answer = answer
        self._parent = parent
        self._folder_of = folder_of
        self._arm_ms = arm_ms
        self.pending: list[Approval] = []
        self.current: ApprovalDialog | None = None

    def add(self, approval: Approval) -> None:
        if any(a.key == approval.key for a in self.pending):
            return
        self.pending.append(approval)
        self._show_next()
        self._refresh()

    def drop(self, session: str, call_id: str | None = None) -> None:
        """Forget approvals answered elsewhere (or of a stopped session)."""
        keep = [a for a in self.pending
                if not (a.session == session and call_id in (None, a.call_id))]  # fmt: skip
        if self.current is not None and self.current.approval not in keep:
            self.current._done = True
            self.current.timer.stop()
            self.current.hide()
            self.current.deleteLater()
            self.current = None
        self.pending = keep
        self._show_next()
        self._refresh()

    def _refresh(self) -> None:
        if self.current is not None:
            behind = len(self.pending) - 1
            self.current.queue.setText(T.APPROVAL_QUEUE.format(n=behind) if behind else "")
            self.current.queue.setVisible(bool(behind))
        self.changed.emit(len(self.pending))

    def _show_next(self) -> None:
        if self.current is not None or not self.pending:
            return
        approval = self.pending[0]
        dialog = ApprovalDialog(
            approval,
            len(self.pending) - 1,
            folder=self._folder_of(approval.session),
            arm_ms=self._arm_ms,
            parent=self._parent,
        )
        dialog.answered.connect(self._answered)
        self.current = dialog
        dialog.show()

    def _answered(self, approval: Approval, allow: bool) -> None:
        self.current = None
        self.pending = [a for a in self.pending if a.key != approval.key]
        try:
            self._answer(approval, allow)
        finally:
            self._show_next()
            self._refresh()
