import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt

from cowork.app import text as T
from cowork.app.review import ReviewView
from cowork.app.service import ChangeKind, FileChange

CHANGES = (
    FileChange("report.md", ChangeKind.EDITED, "Total: 10 euros\nDone.", "Total: 12 euros\nDone."),
    FileChange("notes.txt", ChangeKind.EDITED, "a", "b"),
    FileChange("scan.pdf", ChangeKind.EDITED, size_before=1000, size_after=2000),
    FileChange("summary.md", ChangeKind.ADDED, None, "# Summary\nAll paid."),
    FileChange("draft.md", ChangeKind.ADDED, None, "draft"),
    FileChange("old.txt", ChangeKind.DELETED, "obsolete", None),
)


@pytest.fixture
def view(qtbot, fake, tmp_path):
    fake.next_changes = CHANGES
    sid = fake.start_task(tmp_path, "t")
    v = ReviewView(fake)
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    v.load(sid)
    return v


def test_summary_list_and_readable_preview(view, shot):
    assert view.summary.text() == "3 edited, 2 added, 1 deleted"
    assert view.files.count() == 6
    assert all(view.files.item(i).checkState() == Qt.CheckState.Checked for i in range(6))
    html = view.preview.toHtml()
    assert "report.md" in html and "10" in html and "12" in html
    shot(view, "review")
    view.files.setCurrentRow(2)
    assert "not text" in view.preview.toPlainText()


def test_keep_selected_then_undo(view, fake, qtbot):
    view.files.item(1).setCheckState(Qt.CheckState.Unchecked)
    view.files.item(5).setCheckState(Qt.CheckState.Unchecked)
    with qtbot.waitSignal(view.done):
        view.keep.click()
    kept = ["report.md", "scan.pdf", "summary.md", "draft.md"]
    assert fake._sessions[view.session].applied == kept
    assert view.result.text() == T.kept(4) == T.KEPT.format(n=4)
    assert view.files.count() == 2  # what was not kept is still there to decide on
    assert view.undo.isEnabled()
    view.undo.click()
    assert fake._sessions[view.session].applied == []
    assert view.result.text() == T.undone(4) == T.UNDONE.format(n=4)
    assert not view.undo.isEnabled()


def test_failed_keep_is_listed_never_reported_as_done(view, fake, monkeypatch):
    from cowork.app.service import ApplyResult

    monkeypatch.setattr(
        fake,
        "apply_changes",
        lambda s, p, o=False: ApplyResult(
            ("report.md",), (("notes.txt", "changed on disk meanwhile"),)
        ),
    )
    view.keep.click()
    assert T.kept(1) in view.result.text()
    assert "Could not keep notes.txt: changed on disk meanwhile" in view.result.text()


def test_discard_all(view, fake):
    view.discard.click()
    assert fake.discarded == [view.session]
    assert view.result.text() == T.DISCARDED
    assert view.summary.text() == T.REVIEW_ALL_DONE and not view.keep.isEnabled()


def test_service_gone_while_keeping_loses_nothing(view, fake):
    fake.set_alive(False)
    view.keep.click()
    assert "not running" in view.result.text()
    assert view.files.count() == 6


def test_a_file_changed_meanwhile_is_marked(qtbot, fake, tmp_path):
    fake.next_changes = (
        FileChange("notes.txt", ChangeKind.EDITED, diff="@@ -1 +1 @@\n-a\n+b\n", conflict="x"),
    )
    sid = fake.start_task(tmp_path, "t")
    v = ReviewView(fake)
    qtbot.addWidget(v)
    v.load(sid)
    assert T.CONFLICT_MARK in v.files.item(0).text()
    assert T.CONFLICT in v.preview.toPlainText()


def test_undo_names_the_files_it_left_alone(view, fake, monkeypatch):
    from cowork.app.service import ApplyResult

    view.keep.click()
    monkeypatch.setattr(
        fake,
        "undo_last",
        lambda s: ApplyResult(("report.md",), (("draft.md", "changed since it was kept"),)),
    )
    view.undo.click()
    lines = view.result.text().splitlines()
    refused = T.UNDO_REFUSED.format(path="draft.md", why="changed since it was kept")
    assert lines == [T.undone(1), refused]


def test_files_changed_meanwhile_are_kept_only_when_asked(qtbot, fake, tmp_path):
    fake.next_changes = (
        FileChange("notes.txt", ChangeKind.EDITED, "a", "b", conflict="changed"),
        FileChange("new.txt", ChangeKind.ADDED, None, "new"),
    )
    sid = fake.start_task(tmp_path, "t")
    v = ReviewView(fake)
    qtbot.addWidget(v)
    v.show()
    v.load(sid)
    assert not v.replace.isVisible()
    v.keep.click()
    assert fake._sessions[sid].applied == ["new.txt"]
    assert "Could not keep notes.txt" in v.result.text()
    assert v.replace.isVisible() and v.conflicts == ["notes.txt"]
    assert [v.files.item(i).data(Qt.ItemDataRole.UserRole) for i in range(v.files.count())] == [
        "notes.txt"
    ]
    v.replace.click()
    assert fake._sessions[sid].applied == ["new.txt", "notes.txt"]
    assert v.result.text() == T.kept(1) and not v.replace.isVisible()
    assert v.files.count() == 0
