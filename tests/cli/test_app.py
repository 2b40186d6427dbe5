import importlib.util
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from cowork.cli import COMMAND_MODULES, main


def test_app_is_a_command():
    assert COMMAND_MODULES[-1] == "app"


def test_missing_pyside6_gives_a_clear_message(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "PySide6" else real(name, *a)
    )
    assert main(["app"]) == 3
    err = capsys.readouterr().err
    assert "PySide6, which is not installed" in err and "pip install 'cowork[app]'" in err


def test_app_runs_and_draws_its_window(monkeypatch, tmp_path, qapp):
    pytest.importorskip("PySide6")
    from cowork.app import main as app_main
    from cowork.app.service import FakeService
    from cowork.paths import Paths

    paths = Paths.under(tmp_path / "cw")
    monkeypatch.setattr(app_main, "default_service", lambda p: FakeService())
    monkeypatch.setenv("COWORK_SCREENSHOT_DELAY_MS", "200")
    png = tmp_path / "app.png"
    assert app_main.run(paths=paths, screenshot=str(png)) == 0
    assert png.stat().st_size > 1000
