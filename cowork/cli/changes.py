"""``cowork changes list|show|apply|discard|undo``: review what the agent changed (staged)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cowork.errors import UsageError
from cowork.paths import Paths


def _paths() -> Paths:
    return Paths()


def _latest(paths: Paths, session: str | None) -> str:
    from cowork.host import changes

    if session:
        return session
    pending = sorted(changes.list_sets(paths, pending_only=True), key=lambda c: c.created_at)
    if not pending:
        raise UsageError("there are no staged changes waiting; see `cowork changes list`")
    return pending[-1].session


def _limits(paths: Paths) -> tuple[int, int]:
    from cowork.host.policy import load_policy

    ws = load_policy(paths).doc.workspace
    return ws.undo_quota_mib, ws.undo_max_age_days


def _list(args: argparse.Namespace) -> int:
    from cowork.host import changes

    paths = _paths()
    changes.recover(paths)
    sets = changes.list_sets(paths)
    if args.json:
        out = {"sets": [cs.to_json() for cs in sets], "undo": changes.undo_records(paths)}
        print(json.dumps(out, indent=2))
        return 0
    if not sets:
        print("No staged changes.")
    for cs in sets:
        print(f"{cs.session}  {cs.state:9}  {cs.workspace}  {changes.summary(cs.pending())}")
    records = changes.undo_records(paths)
    if records:
        print(f"Can be undone (latest last): {', '.join(records)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cowork.host import changes

    paths = _paths()
    changes.recover(paths)
    cs = changes.show(paths, _latest(paths, args.session))
    if args.json:
        print(json.dumps(cs.to_json(), indent=2))
        return 0
    print(f"{cs.session} ({cs.state}) in {cs.workspace}: {changes.summary(cs.pending())}")
    for c in cs.pending():
        extra = f" (was {c.renamed_from})" if c.renamed_from else ""
        note = f"  [{c.conflict}]" if c.conflict else ""
        print(f"  {c.kind:9} {c.type:7} {c.path}{extra}  {c.description}{note}")
        if args.diff and c.type == "file" and c.kind in ("added", "modified", "renamed"):
            text = changes.diff(paths, cs.session, c)
            print("    " + text.replace("\n", "\n    "))
    for r in cs.refused:
        print(f"  refused   {r.path}: {r.reason}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from cowork.host import changes

    paths = _paths()
    changes.recover(paths)
    quota, age = _limits(paths)
    session = _latest(paths, args.session)
    result = changes.apply(
        paths,
        session,
        list(args.paths) or None,
        overwrite=args.overwrite,
        quota_mib=quota,
        max_age_days=age,
    )
    print(f"Applied {len(result.applied)} change(s) to the folder.")
    if result.record:
        print(f"Undo with `cowork changes undo {result.record}`.")
    for c in result.conflicts:
        print(f"  not applied: {c.path} {c.conflict} (apply it with --overwrite)")
    for r in result.refused:
        print(f"  not applied: {r.path} {r.reason}")
    return 1 if result.conflicts or result.refused else 0


def _discard(args: argparse.Namespace) -> int:
    from cowork.host import changes

    paths = _paths()
    session = _latest(paths, args.session)
    changes.discard(paths, session)
    print(f"Discarded the staged changes of {session}; your folder was not changed.")
    return 0


def _undo(args: argparse.Namespace) -> int:
    from cowork.host import changes

    paths = _paths()
    changes.recover(paths)
    result = changes.undo(paths, args.record)
    print(f"Restored {len(result.restored)} file(s) as they were before apply {result.record}.")
    for r in result.refused:
        print(f"  not restored: {r.path} {r.reason}")
    return 1 if result.refused else 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "changes", help="review, keep or drop what the agent changed (staged mode)"
    )
    sub = parser.add_subparsers(dest="changes_command", metavar="SUBCOMMAND", required=True)
    lst = sub.add_parser("list", help="staged change sets and applies that can be undone")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_list)
    show = sub.add_parser("show", help="what keeping a session's changes would do")
    show.add_argument("session", nargs="?", help="default: the latest with pending changes")
    show.add_argument("--diff", action="store_true", help="show a diff of each text file")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)
    app = sub.add_parser("apply", help="keep changes (all, or the listed paths)")
    app.add_argument("session", nargs="?", help="default: the latest with pending changes")
    app.add_argument("paths", nargs="*", metavar="PATH", help="only these (as `show` lists them)")
    app.add_argument(
        "--overwrite", action="store_true", help="also replace files you changed meanwhile"
    )
    app.set_defaults(func=_apply)
    dis = sub.add_parser("discard", help="drop a session's staged changes")
    dis.add_argument("session", nargs="?", help="default: the latest with pending changes")
    dis.set_defaults(func=_discard)
    undo = sub.add_parser("undo", help="put back what an apply replaced or deleted")
    undo.add_argument("record", nargs="?", help="default: the latest apply")
    undo.set_defaults(func=_undo)


__all__ = ["register"]
