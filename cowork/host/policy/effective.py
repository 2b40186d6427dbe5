"""Reading every layer from its location and producing the effective :class:`Policy`.

Contract:
- Locations come only from a :class:`cowork.paths.Paths` passed in by the caller; no
  environment variable or command-line flag can move the admin location or loosen a lock.
- Admin policy that cannot be trusted (symlink, wrong owner or mode, invalid content) gives
  the lockdown policy: built-in defaults with every key locked, ``Policy.problems`` saying
  why, and a ``POLICY_REJECTED`` event. Invalid user settings raise :class:`ConfigError`.
- A workspace layer is read only when a :class:`cowork.host.trust.TrustStore` says the
  workspace is trusted and its pinned hashes match; the bytes parsed are the bytes hashed.
  Otherwise the workspace's config files are not even opened.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowork.errors import ConfigError
from cowork.host.events import EventBus, Kind
from cowork.host.policy.load import (
    Layer,
    PolicySource,
    admin_file_problems,
    admin_files,
    merge_admin_tables,
    parse_json,
    parse_toml,
    read_limited,
    validate_table,
)
from cowork.host.policy.merge import Policy, lockdown, merge
from cowork.paths import Paths

if TYPE_CHECKING:
    from cowork.host.trust import Snapshot, TrustStore

log = logging.getLogger(__name__)

WORKSPACE_POLICY_FILE = ".cowork.toml"


def read_admin(paths: Paths) -> Layer:
    """The admin layer; raises ConfigError (every problem) if it cannot be trusted."""
    files, problems = admin_files(paths.admin, paths.admin_policy_file, paths.admin_policy_dropins)
    if problems:
        raise ConfigError("admin policy refused", problems)
    tables: list[tuple[Path, dict[str, Any]]] = []
    for f in files:
        data = read_limited(f)
        if data is None:
            continue
        table, lines = parse_toml(f, data)
        validate_table(f, table, lines)  # report problems against the file they are in
        tables.append((f, table))
    merged = merge_admin_tables(tables)
    where = files[0] if len(files) == 1 else paths.admin
    doc, keys = validate_table(where, merged)
    sources = tuple(PolicySource("admin", f) for f, _ in tables)
    return Layer("admin", doc, keys, sources)


def read_user(paths: Paths) -> Layer:
    path = paths.user_settings_file
    data = read_limited(path)
    if data is None:
        return Layer.empty("user")
    table, lines = parse_toml(path, data)
    doc, keys = validate_table(path, table, lines)
    return Layer("user", doc, keys, (PolicySource("user", path),))


def read_workspace(snap: Snapshot) -> Layer:
    """The workspace layer from a trusted snapshot (only ``.cowork.toml`` is policy)."""
    f = snap.file(WORKSPACE_POLICY_FILE)
    path = snap.root / WORKSPACE_POLICY_FILE
    if f.data is None:
        return Layer.empty("workspace")
    table, lines = parse_toml(path, f.data)
    doc, keys = validate_table(path, table, lines)
    return Layer("workspace", doc, keys, (PolicySource("workspace", path),))


def build(
    paths: Paths,
    workspace: Path | None = None,
    trust: TrustStore | None = None,
    *,
    strict: bool = False,
) -> Policy:
    """Read and merge every layer. With ``strict``, refused admin policy raises instead of
    locking down (used by reload, which then keeps the previous policy)."""
    try:
        admin = read_admin(paths)
    except ConfigError as exc:
        if strict:
            raise
        return lockdown(exc.problems or [str(exc)])
    user = read_user(paths)
    ws_layer = None
    notes: list[str] = []
    if workspace is not None:
        snap = trust.verified_snapshot(workspace) if trust is not None else None
        if snap is None:
            notes.append(f"workspace {workspace}: its configuration is not trusted; ignored")
        else:
            ws_layer = read_workspace(snap)
    policy = merge(admin, user, ws_layer, workspace_root=workspace)
    if notes:
        policy = dataclasses.replace(policy, notes=(*notes, *policy.notes))
    return policy


def load_effective(
    paths: Paths,
    workspace: Path | None = None,
    trust: TrustStore | None = None,
    bus: EventBus | None = None,
) -> Policy:
    """The effective policy for a session on ``workspace`` (or none); see module contract."""
    policy = build(paths, workspace, trust)
    if bus is not None:
        _emit_ignored(bus, policy.notes, workspace)
        if policy.locked_down:
            bus.emit(Kind.POLICY_REJECTED, layer="admin", problems=list(policy.problems))
        bus.emit(
            Kind.POLICY_LOADED,
            sources=[str(s.path) for s in policy.sources],
            locked_down=policy.locked_down,
            workspace=str(workspace) if workspace else None,
        )
    if policy.locked_down:
        log.error(
            "admin policy refused; using built-in defaults with every key locked:\n%s",
            "\n".join(f"  - {p}" for p in policy.problems),
        )
    return policy


_LOCKED_NOTE = re.compile(r"^(?P<layer>\w+): (?P<key>[a-z_]+\.[a-z_]+) is locked by admin policy")
_UNTRUSTED_NOTE = re.compile(r"^workspace (?P<ws>.*): its configuration is not trusted; ignored$")


def _emit_ignored(bus: EventBus, notes: tuple[str, ...], workspace: Path | None) -> None:
    """A ``policy.ignored`` refusal event for each setting a lock or missing trust dropped."""
    for note in notes:
        locked = _LOCKED_NOTE.match(note)
        if locked:
            bus.emit(
                Kind.POLICY_IGNORED,
                cause="lock",
                layer=locked["layer"],
                key=locked["key"],
                reason=note,
            )
        elif _UNTRUSTED_NOTE.match(note):
            bus.emit(
                Kind.POLICY_IGNORED,
                cause="trust",
                workspace=str(workspace) if workspace else None,
                reason=note,
            )


def load_policy(paths: Paths, bus: EventBus | None = None) -> Policy:
    """Admin + user policy, no workspace layer."""
    return load_effective(paths, None, None, bus)


def check_file(path: Path, paths: Paths | None = None) -> list[str]:
    """Every problem in one policy file (TOML) or Claude settings file (JSON)."""
    problems: list[str] = []
    try:
        if paths is not None and path.parent in (paths.admin, paths.admin_policy_dropins):
            problems += admin_file_problems(path)
        data = read_limited(path)
        if data is None:
            return [f"{path}: does not exist"]
        if path.suffix == ".json":
            parse_json(path, data)
        else:
            table, lines = parse_toml(path, data)
            validate_table(path, table, lines)
    except ConfigError as exc:
        problems += exc.problems or [str(exc)]
    return problems
