"""``cowork app``: the desktop app (and ``--tray`` for the login item)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

MISSING = (
    "cowork app needs the desktop toolkit PySide6, which is not installed. Install it with "
    "`pip install 'cowork[app]'` (or your system's cowork desktop package), then run "
    "`cowork app` again."
)


def _app(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("PySide6") is None:
        print(f"cowork: {MISSING}", file=sys.stderr)
        return 3
    from cowork.app.main import run

    return run(tray_only=args.tray, screenshot=args.screenshot)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("app", help="open the desktop app")
    parser.add_argument(
        "--tray", action="store_true", help="start in the system tray (used at login)"
    )
    parser.add_argument("--screenshot", metavar="PNG", help=argparse.SUPPRESS)
    parser.set_defaults(func=_app)
