"""The on-disk record of running sessions: ``Paths.session_dir(name)/session.json``.

A session started by ``vm up`` (or ``exec --keep``) outlives the command that started it;
this record is how a later command finds and reattaches to it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cowork.errors import UsageError
from cowork.paths import SESSION_STATE_FILE, Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionState:
    """What is persisted about a running session (no secrets but the session's own key)."""

    name: str
    workspace: str
    created_at: float
    boot_seconds: float
    accel: str
    uri: str
    mounts: list[dict[str, Any]]
    host_public_key: str
    agent_uid: int
    agent_gid: int
    image_recipe: str
    start_mode: str = "cold"  # how the VM started: "cold" boot, "restore" of a template, "pool"
    changes: str = "direct"  # "staged": the workspace is read-only, changes wait for review
    undo_quota_mib: int = 2048
    #: Waiting in the service's warm pool: not for any command to use until the pool hands
    #: it to one session (``cowork.host.pool``).
    pooled: bool = False


def save_state(paths: Paths, state: SessionState) -> None:
    """Write the record whole (temp file + rename): a crash never leaves half of one."""
    path = paths.session_dir(state.name) / SESSION_STATE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


def load_state(paths: Paths, name: str) -> SessionState:
    path = paths.session_dir(name) / SESSION_STATE_FILE
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"there is no cowork VM named {name!r}; see `cowork vm list`") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"the state of VM {name!r} in {path} is unreadable: {exc}") from exc
    return SessionState(**obj)


def iter_states(paths: Paths) -> Iterator[SessionState]:
    if not paths.sessions.is_dir():
        return
    for sdir in sorted(paths.sessions.iterdir()):
        if (sdir / SESSION_STATE_FILE).is_file():
            try:
                yield load_state(paths, sdir.name)
            except UsageError as exc:
                log.warning("%s", exc)


def find_for_workspace(paths: Paths, workspace: Path) -> SessionState | None:
    resolved = str(workspace.expanduser().resolve())
    for state in iter_states(paths):
        if state.workspace == resolved and not state.pooled:
            return state
    return None
