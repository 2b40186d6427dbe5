"""Helpers for the tests that build cowork's packages (a wheel, a .deb) and install them.

Installs come from ``requirements/lock.txt`` through a wheelhouse kept between runs under
``~/.cache/cowork-tests/`` (keyed by the lock's hash), so only the first run downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
#: Build requirements of cowork and of the sdists in the lock, for installs without an index.
BUILD_REQUIREMENTS = ("setuptools>=77", "wheel")


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH, so nothing from this checkout is importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", clean_env())
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def wheelhouse() -> Path:
    """Every file the lock names for this machine, plus build requirements (downloaded once)."""
    key = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cowork-tests"
    house = base / f"wheelhouse-{key}"
    if (house / ".complete").exists():
        return house
    tmp = base / f".wheelhouse-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(tmp)]
    _run([*pip, "--require-hashes", "--no-deps", "-r", str(LOCK)])
    _run([*pip, *BUILD_REQUIREMENTS])
    (tmp / ".complete").touch()
    for old in base.glob("wheelhouse-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(house)
    return house


def build_wheel(out: Path) -> Path:
    """cowork's wheel, built from this checkout without an index."""
    house = wheelhouse()
    _run(
        [
            sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
            "--find-links", str(house), "-w", str(out), str(ROOT),
        ]
    )  # fmt: skip
    (wheel,) = out.glob("cowork-*.whl")
    return wheel


def make_venv(venv: Path, wheel: Path) -> Path:
    """A fresh venv with the locked packages and cowork's wheel; returns its python."""
    house = wheelhouse()
    _run(["/usr/bin/python3", "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    offline = ["--no-index", "--find-links", str(house)]
    _run([str(py), "-m", "pip", "install", "-q", *offline, "--require-hashes", "-r", str(LOCK)])
    _run([str(py), "-m", "pip", "install", "-q", *offline, "--no-deps", str(wheel)])
    _run([str(py), "-m", "pip", "check"])
    return py


@pytest.fixture(scope="session")
def cowork_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))
