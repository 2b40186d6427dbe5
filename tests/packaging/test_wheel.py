"""cowork's wheel carries the image recipe: installed into a fresh venv (from the lock, no
index), it builds the guest image outside the checkout, into a temporary cache. Slow (the
image build takes a minute or more): marked ``install``."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from cowork.host import image

from .conftest import clean_env, make_venv

pytestmark = pytest.mark.install


def test_the_wheel_holds_the_recipe(cowork_wheel: Path) -> None:
    names = set(zipfile.ZipFile(cowork_wheel).namelist())
    recipe = image.recipe_dir()
    for path in image._recipe_files(recipe):
        rel = f"cowork/host/images/{path.relative_to(recipe).as_posix()}"
        assert rel in names, f"{rel} is missing from {cowork_wheel.name}"


def test_an_installed_wheel_builds_the_image_outside_the_checkout(
    cowork_wheel: Path, tmp_path: Path
) -> None:
    py = make_venv(tmp_path / "venv", cowork_wheel)
    where = tmp_path / "elsewhere"
    where.mkdir()
    xdg = {k: str(tmp_path / "xdg" / k.lower()) for k in ("XDG_CACHE_HOME", "XDG_DATA_HOME")}
    xdg |= {k: str(tmp_path / "xdg" / k.lower()) for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME")}
    env = clean_env() | xdg
    probe = subprocess.run(
        [str(py), "-c", "import json, cowork.host.image as i; "
         "print(json.dumps([str(i.recipe_dir()), i.recipe_hash()]))"],
        cwd=where, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    recipe, rhash = json.loads(probe.stdout)
    assert Path(recipe).is_relative_to(tmp_path / "venv"), recipe
    assert rhash == image.recipe_hash(), "the installed recipe differs from the checkout's"

    cowork = tmp_path / "venv" / "bin" / "cowork"
    built = subprocess.run(
        [str(cowork), "image", "build"], cwd=where, env=env, capture_output=True, text=True,
        check=False, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    out = Path(built.stdout.strip().splitlines()[-1])
    assert out == Path(xdg["XDG_CACHE_HOME"]) / "cowork" / "images" / rhash
    info = image.verify(out)
    assert info.recipe_hash == rhash
    status = subprocess.run(
        [str(cowork), "image", "info"], cwd=where, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "verified:     ok" in status.stdout
