"""Starting the app: the QApplication, the service, the window and the tray."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from PySide6.QtWidgets import QApplication

from cowork.app import text as T
from cowork.app.qt import tray_icon
from cowork.app.service import Service
from cowork.app.traymodel import TrayLook
from cowork.app.window import MainWindow
from cowork.paths import Paths, default_paths

RECENT_FILE = "app-recent.json"


def default_service(paths: Paths) -> Service:
    from cowork.app.daemon_service import DaemonService

    return DaemonService(paths)


def run(
    argv: Sequence[str] = (),
    *,
    service: Service | None = None,
    paths: Paths | None = None,
    tray_only: bool = False,
    screenshot: str | None = None,
) -> int:
    """Run the app until it quits. ``tray_only`` starts hidden in the tray (login); where
    there is no tray the window is shown anyway. ``screenshot`` saves the window as PNG once
    it has drawn, then quits (used to check the app under a real X server)."""
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    assert isinstance(app, QApplication)
    app.setApplicationName("cowork")
    app.setApplicationDisplayName(T.APP_NAME)
    app.setDesktopFileName("cowork")
    app.setWindowIcon(tray_icon(TrayLook.WORKING))
    paths = paths or default_paths()
    window = MainWindow(service or default_service(paths), recent_file=paths.config / RECENT_FILE)
    window.start()
    has_tray = window.tray.icon is not None
    app.setQuitOnLastWindowClosed(not has_tray)
    if not (tray_only and has_tray):
        window.show()
    if screenshot:
        from PySide6.QtCore import QTimer

        def shoot() -> None:
            window.grab().save(screenshot)
            window.quit()

        QTimer.singleShot(int(os.environ.get("COWORK_SCREENSHOT_DELAY_MS", "1500")), shoot)
    return int(app.exec())
