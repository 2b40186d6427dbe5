"""Shared fixtures for the app's tests: offscreen Qt, a FakeService, and screenshots.

Screenshots go to ``$COWORK_SCREENSHOTS`` when set, else to ``screenshots/`` beside this
run's pytest temporary folders (printed at the end of the run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("COWORK_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def fake():
    from cowork.app.service import FakeService

    return FakeService()


@pytest.fixture
def shot(screenshot_dir: Path, qtbot):
    """Save a real rendering of a widget as ``NAME.png`` once its layout has settled."""

    def save(widget, name: str) -> Path:
        qtbot.wait(20)
        path = screenshot_dir / f"{name}.png"
        assert widget.grab().save(str(path))
        return path

    return save
