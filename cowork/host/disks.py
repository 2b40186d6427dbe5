"""Session disks: the copy-on-write overlay over the read-only guest image (qemu-img)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cowork.errors import BackendError


def create_overlay(base: Path, overlay: Path) -> None:
    """A copy-on-write qcow2 over the read-only base image."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise BackendError("qemu-img is not installed: install the Debian package qemu-utils")
    proc = subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BackendError(f"could not create the session disk {overlay}: {proc.stderr.strip()}")
