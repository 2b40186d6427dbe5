"""Private channel round trips against the local relay + sshd harness (no VM); prints JSON.

    .venv/bin/python bench/bench_channel.py [--n 100]

Compares ``Channel.run("true")`` (through the relay, sshd and the job wrapper) with a raw
SSH exec of ``true`` on the same transport and with a local ``subprocess.run(["true"])``;
also reports connect time and bulk stdout throughput. Numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable

from cowork.host.channel import Channel
from cowork.host.channel_fake import temporary_guest


def _stats(fn: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)] * 1000, 2),
        "n": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    guest, cleanup = temporary_guest()
    try:
        start = time.perf_counter()
        ch = Channel.connect(guest.socket_path, timeout=60, **guest.connect_kwargs())  # type: ignore[arg-type]
        connect_s = time.perf_counter() - start
        with ch:
            transport = ch._transport

            def raw_exec() -> None:
                chan = transport.open_session()
                chan.exec_command("true")
                chan.recv_exit_status()
                chan.close()

            size = 20_000_000
            start = time.perf_counter()
            r = ch.run(f"head -c {size} /dev/zero | tr '\\0' x")
            bulk_s = time.perf_counter() - start
            assert len(r.stdout) == size
            report = {
                "connect_s": round(connect_s, 3),
                "channel_run_true": _stats(lambda: ch.run("true", check=True), args.n),
                "ssh_exec_true": _stats(raw_exec, args.n),
                "local_subprocess_true": _stats(lambda: subprocess.run(["true"]), args.n),
                "stdout_mb_per_s": round(size / bulk_s / 1e6, 1),
            }
    finally:
        cleanup()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
