"""Helpers shared by the CLI's command modules: progress output and the event bus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cowork.host.events import AuditLog, EventBus
from cowork.paths import Paths


def progress(message: str) -> None:
    """Progress goes to stderr so that a command's own output on stdout stays clean."""
    print(f"cowork: {message}", file=sys.stderr, flush=True)


def audit_log_path(paths: Paths) -> Path:
    """``audit.log_path`` from admin/user policy, else the default in cowork's data folder."""
    from cowork.host.policy import load_policy

    configured = load_policy(paths).audit.log_path
    return Path(configured).expanduser() if configured is not None else paths.audit_log


def event_bus(paths: Paths, session: str | None = None) -> EventBus:
    """A bus whose events are also appended to the audit log."""
    bus = EventBus(session=session)
    bus.subscribe(AuditLog(audit_log_path(paths)))
    return bus


def add_workspace_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--workspace",
        "-w",
        type=Path,
        required=required,
        metavar="DIR",
        help="the folder to share with the VM (read-write at /workspace)",
    )


def add_daemon_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        help="run in this process instead of in the cowork service (scripts, tests)",
    )
