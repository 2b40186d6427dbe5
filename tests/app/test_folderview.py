import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtWidgets import QFileDialog

from cowork.app import text as T
from cowork.app.folders import RecentFolders
from cowork.app.folderview import FolderView


@pytest.fixture
def view(qtbot, fake, tmp_path):
    v = FolderView(fake, RecentFolders(tmp_path / "recent.json"))
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    return v


@pytest.fixture
def work(tmp_path) -> Path:
    w = tmp_path / "Invoices"
    w.mkdir()
    (w / "march.txt").write_text("total 10")
    (w / ".env").write_text("TOKEN=x")
    return w


def test_pick_through_the_native_dialog_shows_the_check(view, work, monkeypatch, shot):
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(work))
    view.pick.click()
    assert view.verdict.text() == "✔ " + T.FOLDER_OK
    assert view.where.text() == T.REAL_PATH.format(path=work.resolve())
    assert view.size_line.text() == "2 files, 15 bytes in total"
    assert ".env" in view.warnings.text() and "passwords or keys" in view.warnings.text()
    assert view.use.isEnabled()
    shot(view, "folder-check")


def test_cancelled_dialog_changes_nothing(view, monkeypatch):
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: "")
    view.pick.click()
    assert view.report is None and not view.use.isEnabled()


def test_refused_folder_is_explained_and_cannot_be_used(view, shot):
    view.check(Path.home())
    assert view.verdict.text() == "✘ " + T.FOLDER_REFUSED
    assert "home folder" in view.refusal.text()
    assert not view.use.isEnabled()
    shot(view, "folder-refused")


def test_use_adds_to_recent_and_recent_picks_again(view, work, qtbot, tmp_path):
    assert view.recent_list.item(0).text() == T.NO_RECENT
    view.recent_list.itemActivated.emit(view.recent_list.item(0))
    assert view.report is None
    view.check(work)
    with qtbot.waitSignal(view.chosen) as got:
        view.use.click()
    assert got.args[0].real_path == work.resolve()
    assert view.recent_list.count() == 1 and view.recent_list.item(0).text() == str(work)
    view.report = None
    view.recent_list.itemActivated.emit(view.recent_list.item(0))
    assert view.report is not None and view.report.usable
    again = FolderView(view.service, RecentFolders(tmp_path / "recent.json"))
    qtbot.addWidget(again)
    assert again.recent_list.count() == 1


def test_folder_that_vanishes_after_picking_is_caught_on_use(view, work, qtbot):
    view.check(work)
    assert view.use.isEnabled()
    shutil.rmtree(work)
    with qtbot.assertNotEmitted(view.chosen):
        view.use.click()
    assert view.verdict.text() == "✘ " + T.FOLDER_REFUSED
    assert "no longer there" in view.refusal.text() and str(work) in view.refusal.text()
    assert not view.use.isEnabled()
