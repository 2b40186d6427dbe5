"""``cowork policy show|check|schema``: the effective policy, file checks, the JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cowork.host.policy import check_file, json_schema_text, load_effective
from cowork.host.trust import TrustStore
from cowork.paths import Paths, default_paths


def _paths() -> Paths:
    return default_paths()


def _show(args: argparse.Namespace) -> int:
    paths = _paths()
    workspace = Path(args.workspace).resolve() if args.workspace else None
    trust = TrustStore(paths.trust_store) if workspace is not None else None
    policy = load_effective(paths, workspace, trust)
    rows = [
        {"key": k, "value": v, "layer": layer, "locked": locked}
        for k, v, layer, locked in policy.plain_rows()
    ]
    if args.json:
        out = {"values": rows, "notes": list(policy.notes), "problems": list(policy.problems)}
        out["sources"] = [{"layer": s.layer, "path": str(s.path)} for s in policy.sources]
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        lock = "  [locked]" if r["locked"] else ""
        value = json.dumps(r["value"])
        if r["key"] == "workspace.changes" and r["value"] is None:
            value = "unset: staged for `cowork run`, direct for `cowork exec`/`shell`"
        print(f"{r['key']:<{width}}  {value}  ({r['layer']}){lock}")
    if policy.sources:
        print("\nread from:")
        for s in policy.sources:
            print(f"  {s.layer:<9} {s.path}")
    if policy.notes:
        print("\nnotes:")
        for note in policy.notes:
            print(f"  - {note}")
    if policy.problems:
        print("\nadmin policy refused:", file=sys.stderr)
        for p in policy.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    paths = _paths()
    bad = 0
    for name in args.files:
        problems = check_file(Path(name), paths)
        if problems:
            bad += 1
            print(f"{name}: invalid")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"{name}: ok")
    return 1 if bad else 0


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema_text())
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="show and check policy and settings")
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="the effective policy, with where each value came from")
    show.add_argument("--workspace", metavar="DIR", help="include a trusted workspace's config")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)
    check = sub.add_parser("check", help="check policy files; exit 1 if any is invalid")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check)
    schema = sub.add_parser("schema", help="print the JSON Schema of policy files")
    schema.set_defaults(func=_schema)
