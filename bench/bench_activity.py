"""Benchmark of the guest activity monitor: events per second it sustains from the guest to
the host's event bus, its CPU cost in the guest, and event latency.

Prints one JSON object. Run under the VM lock:
``flock /tmp/cowork-vm.lock .venv/bin/python bench/bench_activity.py [--files 2000] [--procs 300]``.

- throughput: a guest command creates, writes and deletes N files (3 events each) and starts
  M short processes; events/s = guest.* events that reached the host bus / wall time from the
  command's start to the last event's arrival.
- CPU: the monitor's own user+system seconds (from its heartbeats) spent over the run, per
  1000 events, and as a share of the run's wall time.
- latency: host arrival clock minus the guest's record clock, per event. Guest and host
  clocks are separate (the guest's runs from the emulated RTC), so the offset measured on
  idle heartbeats is subtracted; reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import bench_paths, workspace

from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.session import Session, VMSettings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = bench_paths(root / "cowork")
        ws = workspace(root / "ws")
        bus, rec = EventBus(), Recorder()
        bus.subscribe(rec)
        sess = Session.open(ws, paths=paths, events=bus, settings=VMSettings(claude_dir=root / "n"))
        try:
            mon = sess.monitor
            assert mon is not None
            arrivals: list[tuple[dict[str, Any], float]] = []
            lock = threading.Lock()

            def on_record(r: dict[str, Any], at: float) -> None:
                with lock:
                    arrivals.append((r, at))

            mon.on_record = on_record
            deadline = time.monotonic() + 60
            while mon.last_hb is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.5)
            with lock:
                offsets = [at - r["time"] for r, at in arrivals if r.get("t") == "hb"]
                arrivals.clear()
            offset = statistics.median(offsets) if offsets else 0.0
            cpu0 = float((mon.last_hb or {}).get("cpu_s", 0.0))
            before = len(rec.events)
            script = (
                f"mkdir -p b && for i in $(seq {args.files}); do echo x > b/f$i; done; "
                f"rm -r b; for i in $(seq {args.procs}); do /bin/true; done"
            )
            t0 = time.time()
            result = sess.channel.run(script, timeout=3600)
            expected = 0
            last_count, stable_since = -1, time.monotonic()
            while time.monotonic() - stable_since < 3:
                n = sum(1 for e in rec.events[before:] if str(e.kind).startswith("guest."))
                if n != last_count:
                    last_count, stable_since = n, time.monotonic()
                time.sleep(0.2)
            guest = [e for e in rec.events[before:] if str(e.kind).startswith("guest.")]
            with lock:
                data = [(r, at) for r, at in arrivals if r.get("t") in ("proc", "file", "net")]
            last_arrival = max(at for _, at in data) if data else time.time()
            time.sleep(1.5)
            cpu1 = float((mon.last_hb or {}).get("cpu_s", cpu0))
            latencies = [at - r["time"] - offset for r, at in data if "time" in r]
            expected = args.files * 3 + 1 + args.procs
            wall = last_arrival - t0
            out = {
                "command_exit": result.exited,
                "command_seconds": round(result.duration, 2),
                "events_on_bus": len(guest),
                "events_expected_at_least": expected,
                "by_kind": {
                    str(k): sum(1 for e in guest if e.kind == k)
                    for k in (Kind.GUEST_PROCESS, Kind.GUEST_FILE, Kind.GUEST_SOCKET)
                },
                "events_per_second": round(len(guest) / wall, 1) if wall > 0 else None,
                "monitor_cpu_seconds": round(cpu1 - cpu0, 3),
                "monitor_cpu_share_of_wall": round((cpu1 - cpu0) / wall, 3) if wall > 0 else None,
                "monitor_cpu_ms_per_1000_events": round(
                    (cpu1 - cpu0) * 1e6 / max(1, len(guest)), 1
                ),
                "latency_ms": {
                    "median": round(statistics.median(latencies) * 1000, 1) if latencies else None,
                    "p95": round(pct(latencies, 0.95) * 1000, 1) if latencies else None,
                    "max": round(max(latencies) * 1000, 1) if latencies else None,
                    "clock_offset_ms_subtracted": round(offset * 1000, 1),
                },
                "lost": mon.lost_reason,
                "proc_filter_in_kernel": (mon.hello or {}).get("proc_filter"),
            }
            print(json.dumps(out, indent=2))
        finally:
            sess.close()


if __name__ == "__main__":
    main()
