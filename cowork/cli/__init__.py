"""The ``cowork`` command: a thin face over :mod:`cowork.host`.

Each command group lives in its own module with a ``register(subparsers)`` function that
adds its sub-commands; each sub-command sets ``func(args) -> int``. Errors from the library
(:class:`cowork.errors.CoworkError`) are printed as one plain message with the error's exit
status (2 for bad input); no traceback reaches the user unless ``COWORK_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from cowork import __version__
from cowork.errors import CoworkError

#: Command-group modules under ``cowork.cli``, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "vm",
    "image",
    "trust",
    "policy",
    "creds",
    "egress",
    "audit",
    "why",
    "activity",
    "changes",
    "doctor",
    "daemon",
    "app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowork",
        description="Hand a folder to an AI agent safely: every command runs in a sealed VM.",
    )
    parser.add_argument("--version", action="version", version=f"cowork {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"cowork.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except CoworkError as err:
        if os.environ.get("COWORK_DEBUG") == "1":
            raise
        print(f"cowork: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("cowork: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
