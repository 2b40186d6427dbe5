from cowork.app.preview import preview_html, tracked
from cowork.app.service import ChangeKind, FileChange


def test_tracked_changes_mark_words_not_lines():
    out = tracked("The total is 10 euros.\nSigned.", "The total is 12 euros.\nSigned.")
    assert '<s style="color:#b00020;background:#fde0e0">10</s>' in out
    assert '<u style="color:#1b5e20;background:#e3f1e3">12</u>' in out
    assert out.startswith("The total is ") and "<br>Signed." in out


def test_markup_in_files_is_escaped():
    out = tracked("<b>a</b>", "<script>x</script>")
    assert "<script" not in out and "<b>" not in out and "&lt;" in out


def test_added_deleted_and_binary():
    added = preview_html(FileChange("n.txt", ChangeKind.ADDED, None, "new"))
    assert "n.txt — added" in added and "<u" in added and "new" in added
    gone = preview_html(FileChange("o.txt", ChangeKind.DELETED, "old", None))
    assert "<s" in gone and "old" in gone
    binary = preview_html(FileChange("p.png", ChangeKind.EDITED, size_before=10, size_after=2048))
    assert "not text: 10 bytes → 2.0 KB" in binary


def test_a_diff_from_the_service_reads_like_tracked_changes():
    from cowork.app import text as T

    diff = (
        "--- a/n.txt\n+++ b/n.txt\n@@ -1,2 +1,2 @@\n keep\n-<old>\n+new\n"
        "\\ No newline at end of file\n"
    )
    out = preview_html(FileChange("n.txt", ChangeKind.EDITED, diff=diff, conflict="changed"))
    assert "keep<br>" in out and "&lt;old&gt;</s>" in out and "new</u>" in out
    assert "a/n.txt" not in out and "@@" not in out and "No newline" not in out
    assert T.CONFLICT in out
    note = preview_html(FileChange("p.png", ChangeKind.ADDED, size_after=9, note="PNG image"))
    assert "PNG image" in note and "not text" not in note
