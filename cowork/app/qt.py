"""Small Qt helpers shared by the app's screens: thread hand-off, icons, accessible widgets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QLabel, QPushButton, QWidget

from cowork.app.timeline import EntryKind
from cowork.app.traymodel import TrayLook


class Relay(QObject):
    """Carries a value from any thread to the GUI thread (queued signal)."""

    value = Signal(object)

    def __init__(self, fn: Callable[[Any], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.value.connect(fn, Qt.ConnectionType.QueuedConnection)


def in_background(
    parent: QObject,
    work: Callable[[], Any],
    done: Callable[[Any], None],
    failed: Callable[[BaseException], None],
) -> threading.Thread:
    """Run ``work`` on a thread; ``done(result)`` or ``failed(exc)`` run on the GUI thread."""
    ok = Relay(done, parent)
    bad = Relay(failed, parent)

    def main() -> None:
        try:
            result = work()
        except BaseException as exc:
            bad.value.emit(exc)
        else:
            ok.value.emit(result)

    thread = threading.Thread(target=main, name="cowork-app-worker", daemon=True)
    thread.start()
    return thread


KIND_COLOURS = {
    EntryKind.SAY: ("#5b6b7f", "…"),
    EntryKind.READ: ("#2f6fb3", "R"),
    EntryKind.WRITE: ("#2e8b57", "W"),
    EntryKind.COMMAND: ("#6a4fb3", ">"),
    EntryKind.WEB: ("#b36b00", "@"),
    EntryKind.ASK: ("#c27c0e", "?"),
    EntryKind.SYSTEM: ("#555555", "i"),
}
LOOK_COLOURS = {
    TrayLook.IDLE: "#8a8f98",
    TrayLook.WORKING: "#2f6fb3",
    TrayLook.WAITING: "#e0a100",
    TrayLook.ERROR: "#c62828",
}
CROSS = "\u00d7"  # multiplication sign: a cross drawn as text
REFUSED_COLOUR = "#c62828"


def badge(colour: str, letter: str, size: int = 32) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setBrush(QColor(colour))
    p.setPen(Qt.PenStyle.NoPen)
    p.drawEllipse(QRectF(1, 1, size - 2, size - 2))
    p.setPen(QColor("white"))
    font = QFont()
    font.setBold(True)
    font.setPixelSize(int(size * 0.55))
    p.setFont(font)
    p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, letter)
    p.end()
    return QIcon(pix)


def entry_icon(kind: EntryKind, refused: bool = False) -> QIcon:
    colour, letter = KIND_COLOURS[kind]
    return badge(REFUSED_COLOUR if refused else colour, CROSS if refused else letter)


def tray_icon(look: TrayLook, size: int = 64) -> QIcon:
    """Distinct shapes as well as colours (not colour alone): idle ring, working dot,
    waiting exclamation, error cross."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor(LOOK_COLOURS[look])
    p.setBrush(colour)
    p.setPen(Qt.PenStyle.NoPen)
    p.drawRoundedRect(QRectF(2, 2, size - 4, size - 4), size / 4, size / 4)
    p.setPen(QColor("white"))
    p.setBrush(QColor("white"))
    c = size / 2
    if look is TrayLook.IDLE:
        p.setBrush(Qt.BrushStyle.NoBrush)
        pen = p.pen()
        pen.setWidthF(size / 10)
        p.setPen(pen)
        p.drawEllipse(QPointF(c, c), size / 5, size / 5)
    elif look is TrayLook.WORKING:
        for dx in (-size / 5, 0, size / 5):
            p.drawEllipse(QPointF(c + dx, c), size / 14, size / 14)
    else:
        font = QFont()
        font.setBold(True)
        font.setPixelSize(int(size * 0.7))
        p.setFont(font)
        glyph = "!" if look is TrayLook.WAITING else CROSS
        p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, glyph)
    p.end()
    return QIcon(pix)


def button(text: str, name: str | None = None, parent: QWidget | None = None) -> QPushButton:
    b = QPushButton(text, parent)
    b.setAccessibleName(name or text)
    return b


def label(text: str = "", name: str | None = None, *, wrap: bool = True, heading: bool = False,
          parent: QWidget | None = None) -> QLabel:  # fmt: skip
    lab = QLabel(text, parent)
    lab.setWordWrap(wrap)
    lab.setAccessibleName(name or text or "label")
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if heading:
        font = lab.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        lab.setFont(font)
    return lab


def lock_icon(size: int = 32, colour: str = "#6d4c00") -> QIcon:
    """A padlock drawn in code (no emoji font is needed)."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = p.pen()
    pen.setColor(QColor(colour))
    pen.setWidthF(size / 10)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawArc(QRectF(size * 0.28, size * 0.1, size * 0.44, size * 0.5), 0, 180 * 16)
    p.drawLine(QPointF(size * 0.28, size * 0.35), QPointF(size * 0.28, size * 0.45))
    p.drawLine(QPointF(size * 0.72, size * 0.35), QPointF(size * 0.72, size * 0.45))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(colour))
    p.drawRoundedRect(QRectF(size * 0.18, size * 0.45, size * 0.64, size * 0.45), 3, 3)
    p.end()
    return QIcon(pix)
