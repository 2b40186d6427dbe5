import pytest

pytest.importorskip("PySide6")

from cowork.app import text as T
from cowork.app.settingsview import SettingsView


@pytest.fixture
def view(qtbot, fake):
    v = SettingsView(fake)
    qtbot.addWidget(v)
    v.resize(900, 600)
    v.show()
    v.load()
    return v


def test_layers_and_locks_are_shown_beside_each_value(view, shot):
    t = view.table
    rows = {t.item(i, 0).text(): (t.item(i, 1).text(), t.item(i, 2).text())
            for i in range(t.rowCount())}  # fmt: skip
    assert rows["vm.memory_mb"] == ("2048", T.LAYER["default"])
    assert rows["agent.model"][1] == T.LAYER["user"]
    assert rows["egress.allow_web"][1] == T.LOCKED
    assert not view.table.item(2, 2).icon().isNull()  # the padlock
    assert T.LOCKED == "Set by your organisation"
    shot(view, "settings")


def test_locked_values_cannot_be_edited(view, fake):
    view.table.setCurrentCell(2, 0)
    assert not view.edit.isEnabled()
    view.edit_current("true")
    assert fake.settings == {}
    assert view.message.text() == T.LOCKED


def test_own_values_are_editable_and_apply_to_new_tasks(view, fake):
    view.table.setCurrentCell(0, 0)
    assert view.edit.isEnabled()
    view.edit_current("4096")
    assert fake.settings == {"vm.memory_mb": "4096"}
    assert view.table.item(0, 1).text() == "4096"
    assert view.table.item(0, 2).text() == T.LAYER["user"]
    assert "new tasks" in view.message.text()


def test_trust_can_be_revoked_here(qtbot, fake, tmp_path):
    fake.trusted = {tmp_path / "a", tmp_path / "b"}
    v = SettingsView(fake)
    qtbot.addWidget(v)
    v.load()
    assert [v.trusted.item(i).text() for i in range(2)] == [
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    assert not v.untrust.isEnabled()
    v.trusted.setCurrentRow(0)
    v.untrust.click()
    assert fake.trusted == {tmp_path / "b"}
    assert str(tmp_path / "a") in v.message.text()
    v.trusted.setCurrentRow(0)
    v.untrust.click()
    assert v.trusted.item(0).text() == T.NO_TRUSTED and not v.untrust.isEnabled()
