"""End to end: the desktop app on a real X server (Xvfb) drives the real cowork service,
which boots a real sealed VM and runs the demo model on a copy of the sample folder. One
action is approved through the app's prompt. The task is staged: the folder is unchanged
until the review's "Keep selected"; undo and keeping again end with the demo's notes file
added and every other file byte-for-byte as it was. One VM for the whole flow.

Run under ``xvfb-run -a`` (without a display it falls back to Qt's offscreen platform).
Screenshots go to ``$COWORK_SCREENSHOTS`` or ``screenshots/`` beside the run's temp folders.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
os.environ.setdefault("QT_QPA_PLATFORM", "xcb" if os.environ.get("DISPLAY") else "offscreen")

from cowork.app.daemon_service import DaemonService
from cowork.app.service import CheckId
from cowork.daemon.server import Daemon
from cowork.host.secrets import KeyringSecrets, MemoryKeyring
from tests.e2e.conftest import ROOT_RUN_WORKSPACE_OWNER, make_paths, make_workspace

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-workspace"


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    where = os.environ.get("COWORK_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def service(image_ready, tmp_path) -> Iterator[tuple[DaemonService, Path]]:
    paths = make_paths(tmp_path / "cowork")
    ws = make_workspace(tmp_path, "sample")
    shutil.copytree(SAMPLE, ws, dirs_exist_ok=True)
    if os.getuid() == 0:
        for path in [ws, *ws.rglob("*")]:
            os.chown(path, *ROOT_RUN_WORKSPACE_OWNER)
    daemon = Daemon(paths, approval_timeout_s=600.0)
    daemon.bind()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    svc = DaemonService(paths, KeyringSecrets(backend=MemoryKeyring()))
    svc.use_demo_model()
    svc.task_mode = "ask"
    try:
        yield svc, ws
    finally:
        svc.close()
        daemon.stop()  # removes every VM this service started
        thread.join(timeout=60)
        shutil.rmtree(paths.runtime, ignore_errors=True)


def test_pick_run_approve_review_and_keep_in_the_app(service, qtbot, screens):
    from PySide6.QtCore import Qt

    from cowork.app import text as T
    from cowork.app.window import MainWindow

    svc, ws = service
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    win = MainWindow(svc, recent_file=ws.parent / "recent.json", arm_ms=500)
    qtbot.addWidget(win)
    win.show()
    win.start()
    checks = {c.id: c for c in win.firstrun.checks}
    assert all(checks[c].ok for c in CheckId), checks
    assert win.tabs.currentWidget() is win.folder
    report = win.folder.check(ws)
    assert report.usable and report.file_count == len(before)
    win.grab().save(str(screens / "e2e-folder.png"))
    win.folder.use.click()
    qtbot.keyClicks(win.task.task_box, "Summarise the files in this folder")
    win.task.start_button.click()
    qtbot.waitUntil(lambda: win.approvals.current is not None, timeout=600_000)
    win.grab().save(str(screens / "e2e-waiting.png"))
    answered = 0
    while win.approvals.current is not None:
        dialog = win.approvals.current
        qtbot.waitUntil(lambda d=dialog: d.armed, timeout=5000)
        dialog.grab().save(str(screens / f"e2e-approval-{answered}.png"))
        dialog.allow.click()
        answered += 1
        qtbot.waitUntil(
            lambda: win.approvals.current is not None or not win.task.stop_button.isEnabled(),
            timeout=600_000,
        )
    assert answered >= 1
    texts = [win.task.list.item(i).text() for i in range(win.task.list.count())]
    assert texts[-1] == "The assistant has finished.", texts
    assert any(t.startswith("The sealed machine is ready") for t in texts), texts
    win.tabs.setCurrentWidget(win.task)
    qtbot.wait(100)  # let the layout settle before the picture
    win.grab().save(str(screens / "e2e-finished.png"))

    # Staged: nothing reached the folder; the review lists the new file with its text.
    notes = ws / "cowork-demo-notes.md"
    assert not notes.exists()
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before
    review = win.review
    qtbot.waitUntil(
        lambda: review.changes is not None and bool(review.changes.files), timeout=60_000
    )
    assert review.changes is not None
    paths = [f.path for f in review.changes.files]
    assert "cowork-demo-notes.md" in paths, paths
    row = paths.index("cowork-demo-notes.md")
    review.files.setCurrentRow(row)
    assert "Notes on this folder" in review.preview.toPlainText()
    # Keep only the notes file (anything else the task left stays unticked).
    for i in range(review.files.count()):
        item = review.files.item(i)
        keep = item.data(Qt.ItemDataRole.UserRole) == "cowork-demo-notes.md"
        item.setCheckState(Qt.CheckState.Checked if keep else Qt.CheckState.Unchecked)
    assert review.selected() == ["cowork-demo-notes.md"]
    win.tabs.setCurrentWidget(review)
    qtbot.wait(100)
    win.grab().save(str(screens / "e2e-review.png"))
    review.keep.click()
    assert review.result.text() == T.kept(1), review.result.text()
    assert review.summary.text() == T.REVIEW_ALL_DONE
    assert notes.read_text().startswith("# Notes on this folder")
    assert "notes.txt" in notes.read_text()
    qtbot.wait(100)
    win.grab().save(str(screens / "e2e-kept.png"))

    # Undo puts the folder back; keeping again ends with the notes file added.
    assert review.undo.isEnabled()
    review.undo.click()
    assert review.result.text() == T.undone(1), review.result.text()
    assert not notes.exists()
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before
    assert "cowork-demo-notes.md" in [f.path for f in review.changes.files]
    for i in range(review.files.count()):
        item = review.files.item(i)
        keep = item.data(Qt.ItemDataRole.UserRole) == "cowork-demo-notes.md"
        item.setCheckState(Qt.CheckState.Checked if keep else Qt.CheckState.Unchecked)
    review.keep.click()
    after = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    assert set(after) == set(before) | {notes}
    for path, data in before.items():  # the demo only adds its notes file
        assert after[path] == data
