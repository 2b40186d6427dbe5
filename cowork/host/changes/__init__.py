"""Staged changes: what the agent changed in its overlay, reviewed and applied on the host.

The API (also what the daemon exposes), by session name:
:func:`list_sets`, :func:`show`, :func:`apply`, :func:`discard`, :func:`undo`,
:func:`recover` (call before any of them), and :func:`end_of_run` for ``cowork run``.
Change-set types are plain dataclasses (:mod:`cowork.host.changes.model`) that serialise
to JSON with ``to_json()``.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from typing import TextIO

from cowork.host.changes import gate, store
from cowork.host.changes.gate import ApplyError
from cowork.host.changes.model import (
    ApplyResult,
    ChangeSet,
    FileChange,
    Refusal,
    UndoResult,
    summary,
)
from cowork.host.changes.wire import ChangeSetError
from cowork.paths import Paths

__all__ = [
    "ApplyError",
    "ApplyResult",
    "ChangeSet",
    "ChangeSetError",
    "FileChange",
    "Refusal",
    "UndoResult",
    "apply",
    "discard",
    "end_of_run",
    "list_sets",
    "recover",
    "show",
    "summary",
    "undo",
]


def recover(paths: Paths) -> list[str]:
    """Roll back applies that were interrupted; returns their record ids."""
    return gate.recover(paths)


def list_sets(paths: Paths, *, pending_only: bool = False) -> list[ChangeSet]:
    out = [store.load(paths, name) for name in store.list_sessions(paths)]
    return [cs for cs in out if cs.state == "pending"] if pending_only else out


def show(paths: Paths, session: str) -> ChangeSet:
    return store.load(paths, session)


def diff(paths: Paths, session: str, change: FileChange) -> str:
    return store.diff(paths, session, change)


def apply(
    paths: Paths,
    session: str,
    selection: list[str] | None = None,
    *,
    overwrite: bool = False,
    quota_mib: int = 2048,
    max_age_days: int = 30,
    hook: gate.Hook | None = None,
) -> ApplyResult:
    """Apply the pending changes of ``session`` (all, or ``selection``). Conflicts are left
    alone and returned unless ``overwrite`` (ask the person first)."""
    cs = store.load(paths, session)
    if cs.state != "pending":
        raise ApplyError(f"the changes of {session} were already {cs.state}")
    result = gate.apply(paths, cs, selection, overwrite=overwrite, hook=hook)
    store.prune(paths, quota_mib, max_age_days)
    return result


def discard(paths: Paths, session: str) -> None:
    """Forget the staged changes of ``session`` (the host folder is not touched)."""
    sdir = store.set_dir(paths, session)
    store.load(paths, session)  # a clear error for an unknown session
    store.set_state(paths, session, state="discarded")
    shutil.rmtree(sdir / "blobs", ignore_errors=True)


def undo(paths: Paths, record: str | None = None) -> UndoResult:
    """Undo the apply ``record`` (default: the latest one that can be undone)."""
    if record is None:
        records = undo_records(paths)
        if not records:
            raise ApplyError("there is nothing to undo")
        record = records[-1]
    result = gate.undo(paths, record)
    # What was put back is pending again in its change set (if that set is still kept).
    session = store.read_json(store.records_dir(paths) / record / "plan.json")["session"]
    with contextlib.suppress(OSError, ValueError, KeyError):
        store.unapply(paths, session, list(result.restored))
    return result


def undo_records(paths: Paths) -> list[str]:
    rdir = store.records_dir(paths)
    if not rdir.is_dir():
        return []
    out = []
    for rec in sorted(rdir.iterdir()):
        try:
            if store.read_json(rec / "state.json").get("state") == "committed":
                out.append(rec.name)
        except (OSError, ValueError):
            continue
    return out


def end_of_run(
    paths: Paths,
    session: str,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> ApplyResult | None:
    """What ``cowork run`` does last: say what changed and ask keep/discard on a terminal.
    Without a terminal nothing is kept; the message says how to apply later."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if not (store.set_dir(paths, session) / "meta.json").exists():
        return None  # the session wrote straight into the folder (direct mode)
    recover(paths)
    try:
        cs = store.load(paths, session)
    except Exception as exc:
        print(f"\nThe changes could not be read: {exc}", file=out)
        return None
    pending = cs.pending()
    if not pending:
        print("\nNo changes to your folder.", file=out)
        return None
    print(f"\nChanges waiting for you in {cs.workspace}: {summary(pending)}.", file=out)
    for c in pending[:20]:
        extra = f" (was {c.renamed_from})" if c.renamed_from else ""
        print(f"  {c.kind:9} {c.path}{extra}{'  [changed on your side too]' if c.conflict else ''}",
              file=out)  # fmt: skip
    if len(pending) > 20:
        print(f"  … and {len(pending) - 20} more (`cowork changes show {session}`)", file=out)
    tty = interactive if interactive is not None else stdin.isatty()
    later = (
        f"Review them with `cowork changes show {session}`, keep them with "
        f"`cowork changes apply {session}` or drop them with "
        f"`cowork changes discard {session}`."
    )
    if not tty:
        print(f"Nothing was changed in your folder. {later}", file=out)
        return None
    print("Keep these changes? [k]eep all / [d]iscard / [l]ater: ", end="", file=out, flush=True)
    answer = (stdin.readline() or "").strip().lower()
    if answer in ("k", "keep", "y", "yes"):
        result = apply(paths, session)
        print(f"Kept {len(result.applied)} change(s). Undo with `cowork changes undo`.", file=out)
        for c in result.conflicts:
            print(f"  not kept: {c.path} {c.conflict}", file=out)
        return result
    if answer in ("d", "discard"):
        discard(paths, session)
        print("Discarded. Your folder was not changed.", file=out)
        return None
    print(f"Nothing was changed in your folder. {later}", file=out)
    return None
