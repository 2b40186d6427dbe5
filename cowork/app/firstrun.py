"""First run: named readiness checks with a fix each, the image build, the model key."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from cowork.app import text as T
from cowork.app.qt import Relay, button, in_background, label
from cowork.app.service import BuildProgress, CheckId, ReadinessCheck, Service
from cowork.errors import CoworkError


class KeyPanel(QFrame):
    """Asks for the model key once (masked), or the labelled demo model."""

    saved = Signal()

    def __init__(self, service: Service, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.service = service
        self.setFrameShape(QFrame.Shape.StyledPanel)
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.KEY_TITLE, heading=True))
        lay.addWidget(label(T.KEY_INTRO))
        row = QHBoxLayout()
        self.field = QLineEdit()
        self.field.setEchoMode(QLineEdit.EchoMode.Password)
        self.field.setAccessibleName(T.KEY_FIELD)
        self.field.setPlaceholderText("sk-ant-…")
        self.save = button(T.KEY_SAVE)
        row.addWidget(self.field, 1)
        row.addWidget(self.save)
        lay.addLayout(row)
        self.demo = button(T.USE_DEMO)
        lay.addWidget(self.demo)
        lay.addWidget(label(T.DEMO_NOTE))
        self.status = label("", "key status")
        lay.addWidget(self.status)
        self.save.clicked.connect(self.submit)
        self.field.returnPressed.connect(self.submit)
        self.demo.clicked.connect(self.choose_demo)

    def submit(self) -> None:
        key = self.field.text().strip()
        if not key:
            self.status.setText(T.KEY_EMPTY)
            return
        try:
            self.service.set_api_key(key)
        except CoworkError as exc:  # the typed key stays in the field: nothing is lost
            self.status.setText(str(exc))
            return
        self.field.clear()  # never shown again
        self.status.setText(T.KEY_SAVED)
        self.saved.emit()

    def choose_demo(self) -> None:
        try:
            self.service.use_demo_model()
        except CoworkError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(T.DEMO_ON)
        self.saved.emit()


class FirstRunView(QWidget):
    ready = Signal()

    def __init__(self, service: Service, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.service = service
        lay = QVBoxLayout(self)
        lay.addWidget(label(T.FIRST_RUN_TITLE, heading=True))
        lay.addWidget(label(T.FIRST_RUN_INTRO))
        self.grid = QGridLayout()
        lay.addLayout(self.grid)
        self.rows: dict[CheckId, tuple[QLabel, QLabel, QPushButton]] = {}
        for i, cid in enumerate(CheckId):
            name = label(T.CHECK_TITLES[cid], wrap=False)
            state = label("…", f"{T.CHECK_TITLES[cid]} state")
            fix = button(T.CHECK_FIX[cid], f"{T.CHECK_FIX[cid]} ({T.CHECK_TITLES[cid]})")
            fix.clicked.connect(lambda _=False, c=cid: self.fix(c))
            self.grid.addWidget(name, i, 0)
            self.grid.addWidget(state, i, 1)
            self.grid.addWidget(fix, i, 2)
            self.rows[cid] = (name, state, fix)
        self.grid.setColumnStretch(1, 1)
        self.build_note = label(T.IMAGE_SIZE_NOTE)
        self.progress = QProgressBar()
        self.progress.setAccessibleName(T.A11Y_BUILD_PROGRESS)
        self.progress.setRange(0, 100)
        self.build_line = label("", "build step")
        for w in (self.build_note, self.progress, self.build_line):
            lay.addWidget(w)
            w.hide()
        self.key_panel = KeyPanel(service)
        self.key_panel.hide()
        self.key_panel.saved.connect(self.recheck)
        lay.addWidget(self.key_panel)
        buttons = QHBoxLayout()
        self.recheck_button = button(T.RECHECK)
        self.continue_button = button(T.CONTINUE)
        self.recheck_button.clicked.connect(self.recheck)
        self.continue_button.clicked.connect(self.ready.emit)
        buttons.addStretch(1)
        buttons.addWidget(self.recheck_button)
        buttons.addWidget(self.continue_button)
        lay.addLayout(buttons)
        lay.addStretch(1)
        self.checks: list[ReadinessCheck] = []
        self._progress_relay = Relay(self._on_progress, self)
        self.building = False

    def recheck(self) -> None:
        try:
            self.checks = self.service.readiness()
        except CoworkError as exc:
            self.checks = [ReadinessCheck(CheckId.DAEMON, False, str(exc))]
        by_id = {c.id: c for c in self.checks}
        for cid, (_name, state, fix) in self.rows.items():
            check = by_id.get(cid)
            ok = check is not None and check.ok
            detail = "" if check is None or check.ok else f" — {check.detail}"
            state.setText(("✔ " + T.CHECK_OK) if ok else ("✘ " + T.CHECK_FAILED + detail))
            state.setStyleSheet("color: #1b7a1b;" if ok else "color: #b00020;")
            state.setAccessibleName(f"{T.CHECK_TITLES[cid]}: {state.text()}")
            fix.setVisible(not ok)
        self.key_panel.setVisible(not by_id.get(CheckId.MODEL_KEY, _FAILED).ok)
        self.continue_button.setEnabled(self.all_ok)

    @property
    def all_ok(self) -> bool:
        return (
            bool(self.checks)
            and all(c.ok for c in self.checks)
            and len(self.checks) == len(CheckId)
        )

    def fix(self, cid: CheckId) -> None:
        if cid is CheckId.IMAGE:
            self.start_build()
        elif cid is CheckId.MODEL_KEY:
            self.key_panel.show()
            self.key_panel.field.setFocus()
        elif cid is CheckId.DAEMON:
            in_background(
                self, self.service.start_service, lambda _r: self.recheck(), self._start_failed
            )
        else:
            self.build_line.setText(T.LIBVIRT_HELP)
            self.build_line.show()
            self.recheck()

    def _start_failed(self, exc: BaseException) -> None:
        self.recheck()
        self.build_line.setText(str(exc))
        self.build_line.show()

    def start_build(self) -> None:
        if self.building:
            return
        self.building = True
        for w in (self.build_note, self.progress, self.build_line):
            w.show()
        self.build_line.setText(T.BUILD_STARTING)
        self.progress.setValue(0)
        self._started = time.monotonic()
        in_background(
            self,
            lambda: self.service.build_image(self._progress_relay.value.emit),
            lambda _r: self._build_done(None),
            lambda exc: self._build_done(exc),
        )

    def _on_progress(self, p: BuildProgress) -> None:
        self.progress.setValue(int(p.percent))
        self.build_line.setText(
            T.build_line(p.step, p.step_number, p.steps, p.elapsed, p.remaining)
        )

    def _build_done(self, exc: BaseException | None) -> None:
        self.building = False
        if exc is not None:
            self.build_line.setText(T.BUILD_FAILED.format(why=exc))
        self.recheck()


_FAILED = ReadinessCheck(CheckId.MODEL_KEY, False, "")
