"""``cowork audit verify [LOG]``: check the audit log's hash chain and its anchors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cowork.cli.common import audit_log_path
from cowork.host.audit import verify
from cowork.paths import Paths, default_paths


def _paths() -> Paths:
    return default_paths()


def _verify(args: argparse.Namespace) -> int:
    paths = _paths()
    log = Path(args.log).expanduser() if args.log else audit_log_path(paths)
    report = verify(log, paths.audit_anchors)
    if args.json:
        out = {
            "log": str(report.path),
            "ok": report.ok,
            "lines": report.lines,
            "anchors": report.anchors,
            "first_bad_line": report.problem.line if report.problem else None,
            "problem": report.problem.message if report.problem else None,
        }
        print(json.dumps(out, indent=2))
    elif report.ok:
        print(f"{log}: intact ({report.lines} lines, {report.anchors} session anchors match)")
    else:
        assert report.problem is not None
        print(f"{log}: TAMPERED: {report.problem}")
        print(f"  lines 1-{report.problem.line - 1} are intact; do not trust anything after.")
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    parser = sub.add_parser("audit", help="check the audit log")
    cmds = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    p = cmds.add_parser("verify", help="check the audit log's hash chain and session anchors")
    p.add_argument("log", nargs="?", help="audit log to check (default: the configured one)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_verify)
