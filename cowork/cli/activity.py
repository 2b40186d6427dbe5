"""``cowork activity [--session S] [--follow] [--json]``: what happened, in plain words."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cowork.cli.common import audit_log_path
from cowork.host.activity import describe, timeline
from cowork.paths import Paths, default_paths


def _paths() -> Paths:
    return default_paths()


def _lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    out = []
    for raw in complete.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out, offset + len(complete)


def _print(lines: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        for line in lines:
            wanted = args.session is None or line.get("session") == args.session
            if wanted and describe(line) is not None:
                print(json.dumps(line, sort_keys=True), flush=True)
    else:
        for text in timeline(lines, args.session):
            print(text, flush=True)


def _activity(args: argparse.Namespace) -> int:
    path = audit_log_path(_paths())
    lines, offset = _lines(path, 0)
    _print(lines, args)
    while args.follow:
        time.sleep(0.25)
        lines, offset = _lines(path, offset)
        _print(lines, args)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("activity", help="what happened inside the VM, in plain words")
    p.add_argument("--session", metavar="S", help="only this session")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new activity")
    p.add_argument("--json", action="store_true", help="one JSON audit line per event")
    p.set_defaults(func=_activity)
