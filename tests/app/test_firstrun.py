import pytest

pytest.importorskip("PySide6")

from PySide6.QtWidgets import QLineEdit

from cowork.app import text as T
from cowork.app.firstrun import FirstRunView
from cowork.app.service import CheckId


@pytest.fixture
def view(qtbot, fake):
    v = FirstRunView(fake)
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    v.recheck()
    return v


def test_each_check_is_named_with_state_and_fix(view, fake):
    for cid, (name, state, fix) in view.rows.items():
        assert name.text() == T.CHECK_TITLES[cid]
        ok = cid is not CheckId.MODEL_KEY
        assert state.text().startswith("✔" if ok else "✘")
        assert fix.isVisible() is (not ok)
    assert view.key_panel.isVisible()
    assert not view.continue_button.isEnabled()


def test_key_is_masked_stored_once_and_never_shown_again(view, fake, qtbot):
    field = view.key_panel.field
    assert field.echoMode() is QLineEdit.EchoMode.Password
    qtbot.keyClicks(field, "sk-ant-good")
    with qtbot.waitSignal(view.key_panel.saved):
        qtbot.keyClick(field, "\r")
    assert fake.stored_key == "sk-ant-good"
    assert field.text() == ""
    assert view.key_panel.status.text() == T.KEY_SAVED
    assert not view.key_panel.isVisible()
    assert view.continue_button.isEnabled()


def test_rejected_key_gives_a_clear_message_and_loses_nothing(view, fake, qtbot, shot):
    fake.reject_keys.add("sk-ant-typo")
    qtbot.keyClicks(view.key_panel.field, "sk-ant-typo")
    view.key_panel.save.click()
    assert fake.stored_key is None
    assert "refused this key" in view.key_panel.status.text()
    assert view.key_panel.field.text() == "sk-ant-typo"  # still there to correct
    assert view.key_panel.isVisible()
    shot(view, "first-run-key-rejected")


def test_empty_key_is_not_sent(view, fake):
    view.key_panel.save.click()
    assert view.key_panel.status.text() == T.KEY_EMPTY and fake.stored_key is None


def test_demo_model_is_labelled_and_counts_as_ready(view, fake):
    assert "not an AI" in T.DEMO_NOTE
    view.key_panel.demo.click()
    assert fake.demo and view.key_panel.status.text() == T.DEMO_ON
    assert view.all_ok


def test_image_build_shows_real_progress_then_rechecks(view, fake, qtbot, shot):
    fake.checks[CheckId.IMAGE] = False
    seen = []
    view.recheck()
    image_fix = view.rows[CheckId.IMAGE][2]
    assert image_fix.isVisible()
    view.progress.valueChanged.connect(seen.append)
    seen_lines = []
    view._progress_relay.value.connect(lambda p: seen_lines.append(view.build_line.text()))
    image_fix.click()
    assert view.build_note.isVisible() and "1 GB" in view.build_note.text()
    qtbot.waitUntil(lambda: not view.building, timeout=5000)
    assert seen[-1] == 100 and sorted(seen) == seen and len(seen) >= 3
    assert any(t.startswith("Step 3 of 3: Seal the image —") for t in seen_lines), seen_lines
    assert view.build_line.text().startswith("Finished in")
    assert view.rows[CheckId.IMAGE][1].text().startswith("✔")
    shot(view, "first-run-build")


def test_failed_build_says_why(view, fake, qtbot):
    fake.set_alive(False)
    view.start_build()
    qtbot.waitUntil(lambda: not view.building, timeout=5000)
    assert "The build failed" in view.build_line.text()
    assert "background service is not running" in view.build_line.text()


def test_every_control_has_an_accessible_name(view):
    from PySide6.QtWidgets import QAbstractButton, QLineEdit, QProgressBar

    for w in (
        view.findChildren(QAbstractButton)
        + view.findChildren(QLineEdit)
        + view.findChildren(QProgressBar)
    ):
        assert w.accessibleName(), w


def test_service_fix_starts_it_and_rechecks(view, fake, qtbot):
    fake.set_alive(False)
    view.recheck()
    _name, state, fix = view.rows[CheckId.DAEMON]
    assert fix.isVisible() and fix.text() == T.CHECK_FIX[CheckId.DAEMON]
    fix.click()
    qtbot.waitUntil(lambda: state.text().startswith("✔"), timeout=5000)
    assert fake.alive and not fix.isVisible()


def test_libvirt_fix_says_what_to_do(view, fake):
    fake.checks[CheckId.LIBVIRT] = False
    view.recheck()
    view.rows[CheckId.LIBVIRT][2].click()
    assert view.build_line.text() == T.LIBVIRT_HELP
