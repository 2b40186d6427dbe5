"""Benchmarks of the sealed VM: cold boot, exec round trip, shared-folder throughput.

Prints one JSON object. Run: ``.venv/bin/python bench/bench_vm.py [--boots 5] [--execs 100]``.
Figures under TCG (software emulation) are what the development machines can do; with KVM
expect boot and exec to be several times faster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import bench_paths, workspace

from cowork.host.session import Session, VMSettings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(pct(values, 0.95) * 1000, 2),
        "n": len(values),
    }


def open_session(root: Path) -> Session:
    paths = bench_paths(root / "cowork")
    ws = workspace(root / "ws") if not (root / "ws").exists() else root / "ws"
    return Session.open(ws, paths=paths, settings=VMSettings(claude_dir=root / "no-claude"))


def bench_boot(boots: int) -> dict[str, object]:
    times = []
    for _ in range(boots):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            sess = open_session(Path(tmp))
            try:
                assert sess.channel.run("true").ok
                times.append(time.monotonic() - t0)
            finally:
                sess.close()
    return {
        "cold_boot_to_first_exec_s": {
            "median": round(statistics.median(times), 2),
            "min": round(min(times), 2),
            "max": round(max(times), 2),
            "n": len(times),
        }
    }


def throughput(sess: Session, host_dir: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    mb = 100
    # Guest side, on the 9p workspace share.
    r = sess.channel.run(
        f"python3 - <<'EOF'\n"
        f"import os, time, json\n"
        f"buf = os.urandom(1 << 20)\n"
        f"t = time.monotonic()\n"
        f"with open('/workspace/big.bin', 'wb') as f:\n"
        f"    for _ in range({mb}): f.write(buf)\n"
        f"    f.flush(); os.fsync(f.fileno())\n"
        f"w = time.monotonic() - t\n"
        f"os.system('echo 3 > /proc/sys/vm/drop_caches 2>/dev/null')\n"
        f"t = time.monotonic()\n"
        f"with open('/workspace/big.bin', 'rb') as f:\n"
        f"    while f.read(1 << 20): pass\n"
        f"r = time.monotonic() - t\n"
        f"os.makedirs('/workspace/small', exist_ok=True)\n"
        f"t = time.monotonic()\n"
        f"for i in range(1000):\n"
        f"    with open(f'/workspace/small/{{i}}.txt', 'w') as f: f.write('x' * 100)\n"
        f"s = time.monotonic() - t\n"
        f"t = time.monotonic()\n"
        f"for i in range(1000):\n"
        f"    with open(f'/workspace/small/{{i}}.txt') as f: f.read()\n"
        f"sr = time.monotonic() - t\n"
        f"print(json.dumps([w, r, s, sr]))\n"
        f"EOF",
        timeout=600,
    )
    w, rd, s, sr = json.loads(r.stdout.strip().splitlines()[-1])
    out["guest_9p"] = {
        "write_100MB_MBps": round(mb / w, 1),
        "read_100MB_MBps": round(mb / rd, 1),
        "create_1000_small_files_s": round(s, 3),
        "read_1000_small_files_s": round(sr, 3),
    }
    # Host side, same work on the host disk.
    buf = os.urandom(1 << 20)
    big = host_dir / "big-host.bin"
    t = time.monotonic()
    with big.open("wb") as f:
        for _ in range(mb):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    w = time.monotonic() - t
    t = time.monotonic()
    with big.open("rb") as f:
        while f.read(1 << 20):
            pass
    rd = time.monotonic() - t
    small = host_dir / "small-host"
    small.mkdir()
    t = time.monotonic()
    for i in range(1000):
        (small / f"{i}.txt").write_text("x" * 100)
    s = time.monotonic() - t
    t = time.monotonic()
    for i in range(1000):
        (small / f"{i}.txt").read_text()
    sr = time.monotonic() - t
    out["host_disk"] = {
        "write_100MB_MBps": round(mb / w, 1),
        "read_100MB_MBps": round(mb / rd, 1) if rd else None,
        "create_1000_small_files_s": round(s, 3),
        "read_1000_small_files_s": round(sr, 3),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--execs", type=int, default=100)
    args = ap.parse_args()
    result: dict[str, object] = {"accel": None}
    result.update(bench_boot(args.boots))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sess = open_session(root)
        try:
            result["accel"] = sess.state.accel
            guest = []
            for _ in range(args.execs):
                t = time.monotonic()
                sess.channel.run("true")
                guest.append(time.monotonic() - t)
            local = []
            for _ in range(args.execs):
                t = time.monotonic()
                subprocess.run(["true"], check=True)
                local.append(time.monotonic() - t)
            result["exec_round_trip"] = {"guest": summary_ms(guest), "local": summary_ms(local)}
            host_dir = root / "host-bench"
            host_dir.mkdir()
            result.update(throughput(sess, host_dir))
        finally:
            sess.close()
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
