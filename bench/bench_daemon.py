"""Memory of the cowork service: idle, with one idle session, and host memory per session.

Prints one JSON object. Run: ``.venv/bin/python bench/bench_daemon.py [--memory-mib 2048]``.
The service runs as its own process over temporary folders (the real image cache). Host
memory per idle session = QEMU's RSS + the gateway's RSS + what the service itself grew by;
the goal is at most 1.1 x the guest's RAM + 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchlib import bench_paths, workspace

from cowork.daemon import protocol as p
from cowork.daemon.client import Client, DaemonUnavailable
from cowork.paths import Paths

REPO = Path(__file__).resolve().parents[1]


def start_service(paths: Paths) -> subprocess.Popen[bytes]:
    spec = json.dumps({k: str(v) for k, v in asdict(paths).items()})
    code = (
        "import json, sys; from pathlib import Path; from cowork.paths import Paths; "
        "from cowork.daemon.server import serve; "
        "serve(Paths(**{k: Path(v) for k, v in json.loads(sys.argv[1]).items()}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, spec], env=env)
    for _ in range(600):
        try:
            Client.connect(paths.daemon_socket).close()
            return proc
        except DaemonUnavailable:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the service did not start")


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-mib", type=int, default=2048, help="guest RAM (vm.memory_mib)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds idle before measuring")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowork-bench-"))
    paths = bench_paths(root / "cowork")
    ws = workspace(root / "ws")
    claude = root / "claude"
    claude.mkdir()
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text(
        f'version = 1\n[vm]\nmemory_mib = {args.memory_mib}\n[mounts]\nclaude_dir = "{claude}"\n'
    )
    proc = start_service(paths)
    try:
        with Client.connect(paths.daemon_socket) as c:
            time.sleep(2)
            idle = c.call(p.DaemonStatus()).rss_kib
            c.call(p.VmUp(workspace=str(ws)))
            time.sleep(args.settle)
            status = c.call(p.DaemonStatus())
            s = status.sessions[0]
            per_session_kib = (
                (s.qemu_rss_kib or 0) + (s.gateway_rss_kib or 0) + (status.rss_kib - idle)
            )
            goal_mib = 1.1 * args.memory_mib + 60
            result = {
                "guest_ram_mib": args.memory_mib,
                "accel": s.accel,
                "daemon_rss_idle_mib": mib(idle),
                "daemon_rss_one_session_mib": mib(status.rss_kib),
                "qemu_rss_mib": mib(s.qemu_rss_kib),
                "gateway_rss_mib": mib(s.gateway_rss_kib),
                "host_mib_per_idle_session": mib(per_session_kib),
                "goal_mib": round(goal_mib, 1),
                "within_goal": per_session_kib / 1024 <= goal_mib,
            }
            c.call(p.VmDown(name=s.name))
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        proc.wait(300)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(paths.runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
