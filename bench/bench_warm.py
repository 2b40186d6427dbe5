"""Cold boot against warm start (restore of a saved template), to first successful exec.

    flock /tmp/cowork-vm.lock .venv/bin/python bench/bench_warm.py [--n 5] [--memory 1024]

Boots real guests (libvirt + QEMU) under temporary Paths with the real image cache; builds
one template in a temporary cache first. Prints JSON: the median and all samples of each
start mode (``Session.open`` until ``run("true")`` succeeded; for the pool, a take from the
service's pools, :class:`cowork.host.pool.Pools`, until then), the ratios to a cold boot,
the QEMU resident memory of a guest of each mode, and the disk a template and a session
take. ``bench/bench_pool.py`` measures the pool through the running service instead. Not
run in CI; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import bench_paths, private_cache, workspace

from cowork.daemon.server import _rss_kib
from cowork.host import warm
from cowork.host.events import EventBus
from cowork.host.pool import PoolKey, PoolPlan, Pools
from cowork.host.session import Session, VMSettings
from cowork.paths import OVERLAY_FILE


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512 if path.exists() else 0


def _start(root: Path, cache: Path, mode: str, memory: int, i: int) -> dict[str, object]:
    paths = bench_paths(root / f"{mode}-{i}", cache)
    ws = workspace(root / f"ws-{mode}-{i}")
    claude = root / f"claude-{mode}-{i}"
    claude.mkdir()
    settings = VMSettings(claude_dir=claude, memory_mib=memory, start_mode=mode)
    t0 = time.perf_counter()
    sess = Session.open(ws, paths=paths, events=EventBus(), settings=settings)
    try:
        result = sess.channel.run("true")
        seconds = time.perf_counter() - t0
        assert result.ok, result.stderr
        status = sess.backend.status(sess.name)
        return {
            "seconds": seconds,
            "mode": sess.state.start_mode,
            "rss_kib": _rss_kib(status.pid),
            "overlay_bytes": _allocated(sess.dir / OVERLAY_FILE),
        }
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


def _pool_takes(root: Path, cache: Path, memory: int, n: int) -> list[dict[str, object]]:
    """Take from a one-guest pool ``n`` times, waiting for the refill in between."""
    paths = bench_paths(root / "pool", cache)
    ws = workspace(root / "ws-pool")
    claude = root / "claude-pool"
    claude.mkdir()
    settings = VMSettings(claude_dir=claude, memory_mib=memory, start_mode="restore")
    key = PoolKey(str(ws.resolve()), "direct", "bench", "bench", "bench")
    # The service's pools (cowork.host.pool), with one fixed key: a take runs the same
    # checks as in the service. bench/bench_pool.py measures the whole service path.
    pools = Pools(
        lambda _key: Session.open(ws, paths=paths, events=EventBus(), settings=settings,
                                  pooled=True),
        lambda _ws, _changes: PoolPlan(key, 1, memory, memory),
    )  # fmt: skip
    pools.want(key.workspace, "direct")
    out: list[dict[str, object]] = []
    try:
        for _ in range(n):
            deadline = time.monotonic() + 600
            while not any(s.waiting for s in pools.status()):
                assert time.monotonic() < deadline, "the pool did not fill"
                time.sleep(0.1)
            t0 = time.perf_counter()
            sess = pools.take(key.workspace, "direct", lambda _m: None)
            assert sess is not None
            try:
                result = sess.channel.run("true")
                seconds = time.perf_counter() - t0
                assert result.ok, result.stderr
                status = sess.backend.status(sess.name)
                out.append({
                    "seconds": seconds, "mode": sess.state.start_mode,
                    "rss_kib": _rss_kib(status.pid),
                    "overlay_bytes": _allocated(sess.dir / OVERLAY_FILE),
                })  # fmt: skip
            finally:
                sess.close()
    finally:
        pools.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowork-bench-warm-"))
    cache = private_cache(root)
    try:
        t0 = time.perf_counter()
        first = _start(root, cache, "restore", args.memory, 0)  # builds the template
        build_and_first = time.perf_counter() - t0
        runs: dict[str, list[dict[str, object]]] = {"cold": [], "restore": []}
        for i in range(1, args.n + 1):
            for mode in ("cold", "restore"):
                runs[mode].append(_start(root, cache, mode, args.memory, i))
        runs["pool"] = _pool_takes(root, cache, args.memory, args.n)
        templates = [d for d in (cache / "templates").iterdir() if d.is_dir()]
        tdir = templates[0]
        medians = {
            m: statistics.median(float(str(r["seconds"])) for r in rs) for m, rs in runs.items()
        }
        report = {
            "n": args.n,
            "memory_mib": args.memory,
            "first_restore_incl_template_build_s": round(build_and_first, 2),
            "first_restore_mode": first["mode"],
            "cold_median_s": round(medians["cold"], 2),
            "restore_median_s": round(medians["restore"], 2),
            "restore_over_cold": round(medians["restore"] / medians["cold"], 3),
            "restore_goal": 0.2,
            "pool_take_median_s": round(medians["pool"], 3),
            "pool_over_cold": round(medians["pool"] / medians["cold"], 4),
            "pool_goal": 0.05,
            "samples_s": {
                m: [round(float(str(r["seconds"])), 2) for r in rs] for m, rs in runs.items()
            },
            "modes_seen": {m: sorted({str(r["mode"]) for r in rs}) for m, rs in runs.items()},
            "qemu_rss_kib": {m: [r["rss_kib"] for r in rs] for m, rs in runs.items()},
            "session_overlay_bytes": {
                m: [r["overlay_bytes"] for r in rs] for m, rs in runs.items()
            },
            "template_bytes": {
                "state": _allocated(tdir / warm.STATE_FILE),
                "disk": _allocated(tdir / warm.DISK_FILE),
                "seed": _allocated(tdir / warm.SEED_FILE),
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
