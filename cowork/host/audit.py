"""Verifying the audit log: its hash chain and the anchors kept outside the agent's reach.

The audit log (:class:`cowork.host.events.AuditLog`) chains every line to the one before it:
``prev`` is the previous line's ``hash``, ``hash`` is sha256 of the line's canonical JSON
without ``hash``, ``seq`` is the line number. A chain alone proves order and integrity only
against someone who cannot rewrite the whole file. Anchors close that gap: when a session
ends, its ``session.ended`` line's ``seq`` and ``hash`` are written to an anchor file in
cowork's state folder (never shared into a VM; 0600 in a 0700 folder) and sent to the
organisation's collector with the exported event. A log rewritten from some line onward no
longer matches the anchors after that line; lines appended to a session after its anchor,
and lines cut from the end before an anchor, are reported too.

:func:`verify` returns the *first* bad line with a plain explanation, or ``None``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cowork.errors import UsageError
from cowork.host.events import GENESIS, _line_hash


@dataclass(frozen=True)
class Anchor:
    log: str
    seq: int
    hash: str
    session: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "seq": self.seq,
            "hash": self.hash,
            "session": self.session,
            "time": self.time,
        }


@dataclass(frozen=True)
class Problem:
    """The first bad line of a log and what is wrong with it."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Report:
    path: Path
    lines: int
    anchors: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _log_key(path: Path) -> str:
    return str(path.expanduser().resolve())


def write_anchor(anchors: Path, log_path: Path, line: Mapping[str, Any]) -> Anchor:
    """Record ``line`` (a written ``session.ended`` line) as an anchor of ``log_path``."""
    anchor = Anchor(
        log=_log_key(log_path),
        seq=int(line["seq"]),
        hash=str(line["hash"]),
        session=line.get("session"),
        time=float(line["time"]),
    )
    anchors.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(anchors, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(anchor.to_json(), sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)
    return anchor


def read_anchors(anchors: Path, log_path: Path) -> list[Anchor]:
    """Anchors recorded for ``log_path``, in line order."""
    if not anchors.exists():
        return []
    key = _log_key(log_path)
    out: list[Anchor] = []
    with anchors.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                anchor = Anchor(
                    log=str(obj["log"]),
                    seq=int(obj["seq"]),
                    hash=str(obj["hash"]),
                    session=obj.get("session"),
                    time=float(obj["time"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(
                    f"{anchors}: line {n} is not a valid anchor ({exc}); "
                    "the anchor file itself was damaged, keep a copy and report it"
                ) from exc
            if anchor.log == key:
                out.append(anchor)
    return sorted(out, key=lambda a: a.seq)


def _raw_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, raw in enumerate(fh, start=1):
            yield n, raw.rstrip("\n")


def verify(path: Path, anchors: Path | None = None) -> Report:
    """Check ``path``'s hash chain, then its anchors; report the first bad line."""
    if not path.exists():
        raise UsageError(f"{path}: no audit log there; give the path of an audit log")
    found = read_anchors(anchors, path) if anchors is not None else []
    hashes: list[str] = []
    sessions: list[str | None] = []
    problem: Problem | None = None
    prev = GENESIS
    for n, raw in _raw_lines(path):
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError:
            problem = Problem(n, "is not a valid log line (edited or damaged)")
            break
        claimed = obj.pop("hash", None)
        if obj.get("prev") != prev:
            problem = Problem(
                n,
                f"does not follow line {n - 1}: a line was removed, inserted or reordered here",
            )
            break
        if claimed != _line_hash(obj):
            problem = Problem(n, "was edited after it was written (its hash does not match)")
            break
        if "seq" in obj and obj["seq"] != n:
            problem = Problem(n, f"says it is line {obj['seq']}: lines were removed or reordered")
            break
        prev = str(claimed)
        hashes.append(prev)
        session = obj.get("session")
        sessions.append(session if isinstance(session, str) else None)
    total = len(hashes) if problem is None else problem.line - 1
    if problem is None:
        problem = _check_anchors(found, hashes, sessions)
    return Report(path=path, lines=total, anchors=len(found), problem=problem)


def _check_anchors(
    anchors: list[Anchor], hashes: list[str], sessions: list[str | None]
) -> Problem | None:
    problems: list[Problem] = []
    for anchor in anchors:
        if anchor.seq > len(hashes):
            problems.append(
                Problem(
                    len(hashes) + 1,
                    f"is missing: the log ends at line {len(hashes)} but session "
                    f"{anchor.session}'s anchor says line {anchor.seq} was written "
                    "(lines were cut from the end)",
                )
            )
            continue
        if hashes[anchor.seq - 1] != anchor.hash:
            problems.append(
                Problem(
                    anchor.seq,
                    f"does not match session {anchor.session}'s anchor: the log was rewritten "
                    "at or before this line",
                )
            )
            continue
        if anchor.session is not None:
            for n in range(anchor.seq + 1, len(hashes) + 1):
                if sessions[n - 1] == anchor.session:
                    problems.append(
                        Problem(
                            n,
                            f"was added to session {anchor.session} after the session ended "
                            f"(anchored at line {anchor.seq})",
                        )
                    )
                    break
    return min(problems, key=lambda p: p.line) if problems else None


def find_line(path: Path, seq: int) -> dict[str, Any]:
    """The audit log line numbered ``seq`` (as written, with ``hash``)."""
    if not path.exists():
        raise UsageError(f"{path}: no audit log there yet; nothing has been recorded")
    for n, raw in _raw_lines(path):
        if n == seq:
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise UsageError(
                    f"{path}: line {seq} is damaged; run 'cowork audit verify'"
                ) from exc
            if not isinstance(obj, dict):
                raise UsageError(f"{path}: line {seq} is damaged; run 'cowork audit verify'")
            return obj
    raise UsageError(
        f"event {seq} is not in {path}; use the number shown beside a refusal (shown as 'event N')"
    )
