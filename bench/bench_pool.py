"""The service's warm pool against a normal start, through the service as a face uses it.

    flock /tmp/cowork-vm.lock .venv/bin/python bench/bench_pool.py [--n 5] [--memory 1024]

Runs a real service (in this process) over temporary Paths with the real image cache, and
times ``exec`` requests from a client: from sending the request until the command's first
output arrives (``echo ready``). First with ``vm.pool_size = 0`` (every request starts its
VM: ``cold``), then with ``vm.pool_size = 1`` (each request takes the waiting VM; the bench
waits for the refill between requests, which is not counted). The quick-start template is
built once before the pool samples, in a temporary cache. Prints JSON: medians, samples, the
ratio, how each VM started (from the service's notices), and the QEMU resident memory and
overlay disk of a waiting VM; ``take_median_s`` is the service's own figure for handing a
waiting VM over (the rest of the time to first output is the command itself). Not run in
CI; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchlib import bench_paths, private_cache, workspace

from cowork.daemon import protocol as p
from cowork.daemon.client import Client
from cowork.daemon.server import Daemon, _qemu_pid, _rss_kib
from cowork.paths import OVERLAY_FILE, Paths


def _settings(paths: Paths, claude: Path, memory: int, pool_size: int) -> None:
    paths.config.mkdir(parents=True, exist_ok=True)
    paths.user_settings_file.write_text(
        f"version = 1\n[vm]\nmemory_mib = {memory}\npool_size = {pool_size}\n"
        f'pool_memory_mib = {memory * max(1, pool_size)}\n[mounts]\nclaude_dir = "{claude}"\n'
    )


TAKEN = re.compile(r"taken from the warm pool in ([0-9.]+) s")
#: The service's own figure for each take (its part of the time to first output).
TAKES: list[float] = []


def _one(client: Client, ws: Path) -> tuple[float, str]:
    """Seconds from the request to the first output, and how the VM started."""
    first: list[float] = []
    started: list[str] = []

    def out(_data: bytes) -> None:
        if not first:
            first.append(time.perf_counter())

    def event(ev: p.Event) -> None:
        if isinstance(ev, p.Notice) and ev.message.startswith("VM "):
            taken = TAKEN.search(ev.message)
            started.append("pool" if taken else "started")
            if taken:
                TAKES.append(float(taken.group(1)))

    t0 = time.perf_counter()
    result = client.exec(
        p.Exec(workspace=str(ws), command="echo ready"),
        on_stdout=out, on_stderr=lambda _d: None, on_event=event,
    )  # fmt: skip
    assert result.exit_code == 0 and first, "the command did not run"
    return first[0] - t0, started[0] if started else "?"


def _pools(client: Client) -> list[p.PoolInfo]:
    info: p.DaemonInfo = client.call(p.DaemonStatus())
    return info.pools


def _wait_waiting(client: Client, timeout: float = 900.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        guests = [g for pool in _pools(client) for g in pool.guests]
        if guests:
            return guests
        time.sleep(0.2)
    raise SystemExit(f"the pool did not fill in {timeout:.0f} s: {_pools(client)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowork-bench-pool-"))
    paths = bench_paths(root / "cw", private_cache(root))
    ws = workspace(root / "ws")
    claude = root / "claude"
    claude.mkdir()
    _settings(paths, claude, args.memory, 0)
    daemon = Daemon(paths)
    daemon.bind()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        with Client.connect(paths.daemon_socket) as client:
            cold = [_one(client, ws) for _ in range(args.n)]
            _settings(paths, claude, args.memory, 1)
            t0 = time.perf_counter()
            _one(client, ws)  # a normal start; then the pool fills (the template is built)
            _wait_waiting(client)
            first_fill = time.perf_counter() - t0
            waiting_name = _wait_waiting(client)[0]
            qemu_rss = _rss_kib(_qemu_pid(waiting_name))
            overlay = paths.session_dir(waiting_name) / OVERLAY_FILE
            overlay_bytes = overlay.stat().st_blocks * 512 if overlay.exists() else None
            pooled = []
            TAKES.clear()
            for _ in range(args.n):
                _wait_waiting(client)
                pooled.append(_one(client, ws))
        cold_s = statistics.median(s for s, _ in cold)
        pool_s = statistics.median(s for s, _ in pooled)
        report = {
            "n": args.n,
            "memory_mib": args.memory,
            "path": "service exec request -> first output",
            "cold_median_s": round(cold_s, 2),
            "pool_take_median_s": round(pool_s, 3),
            "pool_over_cold": round(pool_s / cold_s, 4),
            "take_median_s": round(statistics.median(TAKES), 3) if TAKES else None,
            "pool_goal": 0.05,
            "first_fill_incl_template_build_s": round(first_fill, 1),
            "samples_s": {
                "cold": [round(s, 2) for s, _ in cold],
                "pool": [round(s, 3) for s, _ in pooled],
            },
            "started_by": {
                "cold": sorted({m for _, m in cold}),
                "pool": sorted({m for _, m in pooled}),
            },
            "waiting_vm_qemu_rss_kib": qemu_rss,
            "waiting_vm_overlay_bytes": overlay_bytes,
        }
        print(json.dumps(report, indent=2))
    finally:
        daemon.stop()
        thread.join(timeout=300)
        shutil.rmtree(paths.runtime, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
