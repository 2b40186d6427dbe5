"""How long the per-boot image work takes: recipe hash, manifest load, full verify.

    .venv/bin/python bench/bench_image.py [--repeat N]

Prints one JSON object. Needs a built image (``cowork image build``). The page cache is
not dropped (that would slow down everything else on the machine), so the verify numbers are
the warm case; the first verify after a reboot reads the whole base disk from storage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from cowork.host import image
from cowork.paths import Paths


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(runs), 4), "max_s": round(max(runs), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = Paths()
    info = image.find(paths)
    out: dict[str, Any] = {
        "image": str(info.dir),
        "sizes_bytes": {name: (info.dir / name).stat().st_size for name in sorted(info.files)},
        "recipe_hash": timed(image.recipe_hash, args.repeat),
        "load_manifest": timed(lambda: image.load(info.dir), args.repeat),
        "verify_full_sha256": timed(lambda: image.verify(info.dir), args.repeat),
    }
    total = sum(out["sizes_bytes"].values())
    median = out["verify_full_sha256"]["median_s"]
    out["verify_mb_per_s"] = round(total / 2**20 / median, 1) if median else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
