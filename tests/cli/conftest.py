from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class CLI:
    """Runs ``python -m cowork`` with cowork's per-user folders under a temporary home.

    The image cache stays the real one (built once); config, data and state are temporary.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state")):
            self.env[var] = str(root / sub)
        # A short private runtime folder: the cowork service's socket lives there.
        self.runtime = Path(tempfile.mkdtemp(prefix="cwc", dir="/tmp"))
        self.env["XDG_RUNTIME_DIR"] = str(self.runtime)
        # A normal user's libvirt (qemu:///session) is found through XDG_RUNTIME_DIR, so a
        # private one starts a libvirt daemon of its own, which keeps its sockets under
        # XDG_CONFIG_HOME: that path must stay short (unix socket paths are limited).
        # ``root / "config"`` leads there too.
        config = self.runtime / "config"
        config.mkdir()
        (root / "config").symlink_to(config)
        self.env["XDG_CONFIG_HOME"] = str(config)
        self.env["PYTHONPATH"] = str(REPO)
        if "XDG_CACHE_HOME" not in self.env:
            self.env["XDG_CACHE_HOME"] = str(Path.home() / ".cache")

    def close(self) -> None:
        """Stop the cowork service the commands started (if any) and remove its folder."""
        if (self.runtime / "cowork" / "daemon.sock").exists():
            self("daemon", "stop", timeout=120)
        shutil.rmtree(self.runtime, ignore_errors=True)

    @property
    def state_dir(self) -> Path:
        return self.root / "state" / "cowork"

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cowork", *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.env,
            timeout=timeout,
            cwd=self.root,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    c = CLI(tmp_path / "home")
    try:
        yield c
    finally:
        c.close()
