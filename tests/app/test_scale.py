"""The app at 200% scale (QT_SCALE_FACTOR=2), in its own process so the factor applies."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("PySide6")

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cowork.app.main import run
    from cowork.app.service import FakeService
    from cowork.paths import Paths

    fake = FakeService()
    if sys.argv[3] == "task":
        fake.checks = dict.fromkeys(fake.checks, True)
    sys.exit(run(service=fake, paths=Paths.under(Path(sys.argv[1])), screenshot=sys.argv[2]))
    """
)


@pytest.mark.parametrize("screen", ["setup", "task"])
def test_readable_at_double_scale(tmp_path, screenshot_dir, screen):
    from PySide6.QtGui import QImage

    png = screenshot_dir / f"scale-200-{screen}.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR="2",
               COWORK_SCREENSHOT_DELAY_MS="300")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "cw"), str(png), screen],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    image = QImage(str(png))
    assert image.width() >= 1800 and image.height() >= 1300  # 900x680 at 2x
