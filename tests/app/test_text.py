from cowork.app import text as T
from cowork.app.service import ChangeKind, FileChange, FolderWarning, WarningKind


def test_duration_reads_naturally():
    assert T.duration(0) == "0 s"
    assert T.duration(59.4) == "59 s"
    assert T.duration(65) == "1 min 5 s"
    assert T.duration(300) == "5 min"
    assert T.duration(3 * 3600 + 120) == "3 h 2 min"
    assert T.duration(-3) == "0 s"


def test_size():
    assert T.size(12) == "12 bytes"
    assert T.size(2048) == "2.0 KB"
    assert T.size(5 * 1024**3) == "5.0 GB"


def test_change_summary_counts_each_kind_in_order():
    files = [FileChange(f"e{i}", ChangeKind.EDITED) for i in range(3)]
    files += [FileChange("a1", ChangeKind.ADDED), FileChange("a2", ChangeKind.ADDED)]
    files += [FileChange("d", ChangeKind.DELETED)]
    assert T.change_summary(files) == "3 edited, 2 added, 1 deleted"
    assert T.change_summary([]) == T.REVIEW_NONE


def test_secret_warning_names_files_and_says_what_to_do():
    w = FolderWarning(WarningKind.SECRETS, (".env", "a.pem", "b.key", "c.key"))
    text = T.warning_text(w)
    assert ".env, a.pem, b.key and others" in text
    assert "Move them out" in text


def test_every_warning_kind_has_text():
    for kind in WarningKind:
        assert T.warning_text(FolderWarning(kind), "Desktop")


def test_build_line_has_step_elapsed_and_time_left():
    line = T.build_line("Install the system", 2, 3, 65, 30)
    assert line == "Step 2 of 3: Install the system — 1 min 5 s elapsed, about 30 s left"
    assert "left" not in T.build_line("x", 1, 3, 1, None)
    assert T.build_line("done", 3, 3, 95, 0) == "Finished in 1 min 35 s"


def test_change_kinds_and_states_all_have_words():
    from cowork.app.service import SessionState

    assert set(T.CHANGE_KIND) == set(ChangeKind)
    assert set(T.STATE_LABEL) == set(SessionState)
