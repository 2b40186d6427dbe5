"""The change set's types: plain dataclasses that serialise to JSON (``asdict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["added", "modified", "deleted", "mode", "renamed"]
EntryType = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Entry:
    """One validated entry of the guest's upper layer (see :mod:`cowork.guest.changes`)."""

    path: str  # relative, "/"-separated, valid UTF-8, no control characters
    kind: Literal["file", "dir", "symlink", "whiteout"]
    mode: int
    size: int
    target: str | None = None
    opaque: bool = False
    blob: int | None = None  # index of the file's bytes in the stored set


@dataclass(frozen=True)
class FileChange:
    """What keeping one change would do to the folder on the host."""

    path: str
    kind: Kind
    type: EntryType
    size: int = 0
    old_size: int | None = None
    mode: int | None = None
    old_mode: int | None = None
    target: str | None = None  # symlinks
    renamed_from: str | None = None
    description: str = ""
    conflict: str | None = None  # why the host copy changed since the session started
    blob: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Refusal:
    """An entry of the change set that will never be applied, and why (for people)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ChangeSet:
    session: str
    workspace: str
    state: Literal["pending", "applied", "discarded"]
    created_at: float
    changes: tuple[FileChange, ...] = ()
    refused: tuple[Refusal, ...] = ()
    applied: tuple[str, ...] = field(default=())

    def pending(self) -> tuple[FileChange, ...]:
        done = set(self.applied)
        return tuple(c for c in self.changes if c.path not in done)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ApplyResult:
    record: str  # the undo record's id ("" when nothing was written)
    applied: tuple[str, ...]
    conflicts: tuple[FileChange, ...]
    refused: tuple[Refusal, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UndoResult:
    record: str
    restored: tuple[str, ...]
    refused: tuple[Refusal, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary(changes: tuple[FileChange, ...] | list[FileChange]) -> str:
    """``edited 3 files, added 2, deleted 1`` (what a person reads at the end of a run)."""
    counts = {"modified": 0, "added": 0, "deleted": 0, "renamed": 0, "mode": 0}
    for c in changes:
        if c.type == "dir" and c.kind != "deleted":
            continue
        counts[c.kind] += 1
    parts = []
    if counts["modified"]:
        parts.append(f"edited {counts['modified']} file{'s' if counts['modified'] != 1 else ''}")
    if counts["added"]:
        parts.append(f"added {counts['added']}")
    if counts["deleted"]:
        parts.append(f"deleted {counts['deleted']}")
    if counts["renamed"]:
        parts.append(f"renamed {counts['renamed']}")
    if counts["mode"]:
        parts.append(f"changed permissions of {counts['mode']}")
    return ", ".join(parts) if parts else "no changes"
