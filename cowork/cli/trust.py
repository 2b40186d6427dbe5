"""``cowork trust DIR``, ``cowork trust --list``, ``cowork untrust DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cowork.errors import UsageError
from cowork.host.trust import TrustState, TrustStore, show, snapshot, summarize
from cowork.paths import Paths, default_paths


def _paths() -> Paths:
    return default_paths()


def _ask(question: str) -> bool:
    """Ask yes/no on the terminal; only an explicit yes counts."""
    sys.stdout.write(question + " [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _trust(args: argparse.Namespace) -> int:
    store = TrustStore(_paths().trust_store)
    if args.list:
        records = store.records()
        if not records:
            print("No workspace is trusted.")
        for r in records:
            state = store.status(r.workspace).state
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.trusted_at))
            print(f"{show(str(r.workspace))}  trusted {when}  now: {state}")
        return 0
    if not args.dir:
        raise UsageError("name a folder to trust: cowork trust DIR (or cowork trust --list)")
    workspace = Path(args.dir)
    if not workspace.is_dir():
        raise UsageError(f"{workspace}: is not a folder")
    before = store.status(workspace)
    summary = summarize(snapshot(workspace))
    if before.state is TrustState.LAPSED:
        print("Trust for this folder lapsed: its configuration changed since you trusted it")
        print(f"(changed: {', '.join(before.changed)}). This is what it would do now:")
    for line in summary.lines():
        print(line)
    print(
        "Hooks and MCP servers only ever run inside the sealed VM. Trusting lets this "
        "folder's settings narrow cowork's behaviour; they can never widen it."
    )
    if summary.problems:
        print("This folder cannot be trusted until the problems above are fixed.")
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "cowork trust needs a terminal to ask you; after reading the summary above, "
                "run it again with --yes to trust without asking"
            )
        if not _ask("Trust this folder's configuration?"):
            print("Not trusted.")
            return 1
    store.trust(summary)
    print(f"Trusted {show(str(summary.workspace))}.")
    return 0


def _untrust(args: argparse.Namespace) -> int:
    store = TrustStore(_paths().trust_store)
    if store.untrust(Path(args.dir)):
        print(f"No longer trusted: {show(str(Path(args.dir).resolve()))}")
    else:
        print(f"{show(args.dir)} was not trusted.")
    return 0


def register(subparsers: Any) -> None:
    trust = subparsers.add_parser("trust", help="review a folder's own configuration and trust it")
    trust.add_argument("dir", nargs="?", metavar="DIR")
    trust.add_argument("--list", action="store_true", help="list trusted folders")
    trust.add_argument(
        "--yes", action="store_true", help="trust without asking (after reading the summary)"
    )
    trust.set_defaults(func=_trust)
    untrust = subparsers.add_parser("untrust", help="stop trusting a folder's configuration")
    untrust.add_argument("dir", metavar="DIR")
    untrust.set_defaults(func=_untrust)
