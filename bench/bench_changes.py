"""Staged changes: apply throughput against a plain copy, and I/O inside the staged view
against the direct 9p mount. Prints JSON.

    .venv/bin/python bench/bench_changes.py [--files 2000] [--big-mib 64] [--no-vm]

Apply: a crafted change set of ``--files`` small files plus one ``--big-mib`` file is applied
to a fresh folder with :func:`cowork.host.changes.apply` and, for comparison, copied with
``shutil.copyfile``. VM: one staged and one direct guest (run under
``flock /tmp/cowork-vm.lock``) each write and read a ``--big-mib`` file and create small
files in ``/workspace`` with ``dd``. Numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import bench_paths, workspace

from cowork.guest.changes import MAGIC, TRAILER
from cowork.host import changes
from cowork.host.changes import store
from cowork.paths import Paths


def _stream(files: int, big: int) -> io.BytesIO:
    entries: list[dict[str, Any]] = [
        {"path": base64.b64encode(b"d").decode(), "kind": "dir", "mode": 0o755, "size": 0}
    ]
    body = []
    for i in range(files):
        entries.append({"path": base64.b64encode(b"d/f%d" % i).decode(), "kind": "file",
                        "mode": 0o644, "size": 100})  # fmt: skip
        body.append(b"x" * 100)
    entries.append({"path": base64.b64encode(b"big").decode(), "kind": "file", "mode": 0o644,
                    "size": big})  # fmt: skip
    body.append(os.urandom(big))
    head = {"entries": entries, "truncated": False, "contents": True}
    return io.BytesIO(MAGIC + json.dumps(head).encode() + b"\n" + b"".join(body) + TRAILER)


def bench_apply(files: int, big_mib: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    try:
        paths = Paths.under(root / "cowork")
        ws = root / "ws"
        ws.mkdir()
        store.begin(paths, "bench", ws)
        big = big_mib * 2**20
        store.store_stream(paths, "bench", _stream(files, big), 1 << 40)
        t0 = time.perf_counter()
        result = changes.apply(paths, "bench")
        applied = time.perf_counter() - t0
        blobs = store.set_dir(paths, "bench") / "blobs"
        plain = root / "plain"
        (plain / "d").mkdir(parents=True)
        t0 = time.perf_counter()
        for i in range(files):
            shutil.copyfile(blobs / str(i), plain / "d" / f"f{i}")
        shutil.copyfile(blobs / str(files), plain / "big")
        os.sync()
        copied = time.perf_counter() - t0
        total = files * 100 + big
        return {
            "files": files + 1,
            "bytes": total,
            "applied": len(result.applied),
            "apply_s": round(applied, 3),
            "apply_mb_s": round(total / 2**20 / applied, 1),
            "apply_files_s": round((files + 1) / applied, 1),
            "plain_copy_s": round(copied, 3),
            "plain_copy_mb_s": round(total / 2**20 / copied, 1),
            "plain_copy_files_s": round((files + 1) / copied, 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_vm(big_mib: int) -> dict[str, Any]:
    from cowork.host.events import EventBus
    from cowork.host.session import Session, VMSettings

    out: dict[str, Any] = {}
    script = (
        f"s=$(date +%s.%N); dd if=/dev/zero of=big bs=1M count={big_mib} conv=fsync 2>/dev/null;"
        " m=$(date +%s.%N); cat big > /dev/null; e=$(date +%s.%N);"
        " mkdir small; f=$(date +%s.%N); for i in $(seq 200); do echo x > small/$i; done;"
        " g=$(date +%s.%N); echo $s $m $e $f $g"
    )
    for mode in ("direct", "staged"):
        root = Path(tempfile.mkdtemp(prefix="cw-bench-vm-"))
        paths = bench_paths(root / "cowork")
        try:
            ws = workspace(root / "ws")
            settings = VMSettings(claude_dir=None, memory_mib=1024, workspace_changes=mode)
            with Session.open(ws, paths=paths, events=EventBus(), settings=settings) as sess:
                r = sess.channel.run(script, check=True)
                s, m, e, f, g = (float(x) for x in r.stdout.split())
                out[mode] = {
                    "write_mb_s": round(big_mib / (m - s), 1),
                    "read_mb_s": round(big_mib / (e - m), 1),
                    "small_files_s": round(200 / (g - f), 1),
                }
        finally:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(paths.runtime, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--no-vm", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"apply": bench_apply(args.files, args.big_mib)}
    if not args.no_vm:
        report["vm"] = bench_vm(args.big_mib)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
