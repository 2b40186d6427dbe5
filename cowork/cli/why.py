"""``cowork why EVENT`` and ``cowork request-exception EVENT --note ...``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cowork.cli.common import audit_log_path, event_bus
from cowork.errors import UsageError
from cowork.host.why import explain, request_exception
from cowork.paths import Paths, default_paths


def _paths() -> Paths:
    return default_paths()


def _event(value: str) -> int:
    try:
        seq = int(value.removeprefix("event").strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give the event number shown beside a refusal, e.g. 'cowork why 42'"
        ) from None
    if seq < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: event numbers start at 1")
    return seq


def _why(args: argparse.Namespace) -> int:
    paths = _paths()
    ex = explain(audit_log_path(paths), args.event)
    print(json.dumps(ex.to_json(), indent=2) if args.json else ex.text())
    return 0


def _request(args: argparse.Namespace) -> int:
    from cowork.host.policy import load_policy

    paths = _paths()
    audit = load_policy(paths).audit
    inbox = audit.exception_inbox.expanduser() if audit.exception_inbox is not None else None
    if args.note is None:
        raise UsageError("--note is required: say in a sentence why you need this")
    req = request_exception(
        audit_log_path(paths),
        args.event,
        args.note,
        inbox=inbox,
        bus=event_bus(paths),
        exporting=audit.otel_endpoint is not None,
    )
    where = str(req.path) if req.path else "your organisation's collector"
    print(f"Request for event {args.event} sent to {where}.")
    if req.explanation.snippet is None:
        print("Note: no policy can allow this; the administrator will see your note.")
    return 0


def register(sub: Any) -> None:
    why = sub.add_parser("why", help="explain why something was blocked")
    why.add_argument("event", type=_event, metavar="EVENT", help="event number of a refusal")
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.set_defaults(func=_why)
    req = sub.add_parser(
        "request-exception", help="ask your administrator to allow something that was blocked"
    )
    req.add_argument("event", type=_event, metavar="EVENT", help="event number of a refusal")
    req.add_argument("--note", metavar="TEXT", help="why you need it (the admin reads this)")
    req.set_defaults(func=_request)
