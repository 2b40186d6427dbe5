"""``cowork doctor``, ``cowork image prune`` and ``cowork reset`` through the real command,
with every cowork folder (the image cache too) under a temporary home."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowork.host import image


@pytest.fixture
def home(cli) -> Path:
    cli.env["XDG_CACHE_HOME"] = str(cli.root / "cache")  # never the real image cache
    images = cli.root / "cache" / "cowork" / "images"
    for recipe in (image.recipe_hash(), "0" * 64):
        (images / recipe).mkdir(parents=True)
        (images / recipe / "base.qcow2").write_bytes(b"b" * 65536)
    trust = cli.root / "data" / "cowork" / "trust.json"
    trust.parent.mkdir(parents=True)
    trust.write_text("{}")
    return images


def test_doctor_disk_report(cli, home: Path) -> None:
    proc = cli("doctor", "--disk")
    assert proc.returncode == 0, proc.stderr
    assert "images" in proc.stdout and str(home) in proc.stdout
    assert "reclaimable with `cowork image prune`" in proc.stdout


def test_image_prune_keeps_the_current_recipe(cli, home: Path) -> None:
    proc = cli("image", "prune")
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {home / ('0' * 64)}" in proc.stdout
    assert sorted(p.name for p in home.iterdir() if p.is_dir()) == [image.recipe_hash()]


def test_reset_without_a_terminal_or_yes_deletes_nothing(cli, home: Path) -> None:
    proc = cli("reset", input="y\n")
    assert proc.returncode == 2
    assert "--yes" in proc.stderr
    assert len([p for p in home.iterdir() if p.is_dir()]) == 2


def test_reset_yes_deletes_images_and_keeps_trust(cli, home: Path) -> None:
    proc = cli("reset", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert [p for p in home.iterdir() if p.is_dir()] == []
    assert (cli.root / "data" / "cowork" / "trust.json").read_text() == "{}"
    assert "freed" in proc.stdout


@pytest.mark.parametrize(("answer", "code", "left"), [("n\n", 1, 2), ("y\n", 0, 0)])
def test_reset_asks_on_a_terminal(cli, home: Path, answer: str, code: int, left: int) -> None:
    import os
    import subprocess
    import sys

    main, sub = os.openpty()
    try:
        os.write(main, answer.encode())
        proc = subprocess.run(
            [sys.executable, "-m", "cowork", "reset"], stdin=sub, capture_output=True,
            text=True, env=cli.env, cwd=cli.root, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.close(main)
        os.close(sub)
    assert proc.returncode == code, proc.stderr
    assert len([p for p in home.iterdir() if p.is_dir()]) == left
    assert (cli.root / "data" / "cowork" / "trust.json").exists()
