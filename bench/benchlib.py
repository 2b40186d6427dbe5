"""What the benchmarks share: cowork folders under a temporary root that use the real image
cache, and folders a guest can write to."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from cowork.paths import Paths

#: Owner of bench workspaces when run as root (the agent never runs as root).
ROOT_RUN_WORKSPACE_OWNER = (4321, 4321)


def bench_paths(root: Path, cache: Path | None = None) -> Paths:
    """cowork's folders under ``root``, with the real image cache (or ``cache``) and a short
    runtime folder under /tmp (unix socket paths are short); the caller removes
    ``paths.runtime``."""
    return replace(
        Paths.under(root),
        cache=cache or Paths().cache,
        runtime=Path(tempfile.mkdtemp(prefix="cwb", dir="/tmp")),
    )


def private_cache(root: Path) -> Path:
    """A cache of its own under ``root`` (templates built there do not touch the user's) that
    uses the real images."""
    cache = root / "cache"
    cache.mkdir()
    (cache / "images").symlink_to(Paths().images, target_is_directory=True)
    return cache


def workspace(path: Path) -> Path:
    """A new folder at ``path`` the guest's agent user can write to."""
    path.mkdir(parents=True)
    if os.getuid() == 0:
        os.chown(path, *ROOT_RUN_WORKSPACE_OWNER)
    return path
