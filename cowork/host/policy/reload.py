"""Hot reload of the effective policy.

Contract: :class:`PolicyWatcher` watches the admin files, the user settings file and (when it
has a workspace) the workspace's config files. On a change it rebuilds the policy completely
(validate, then swap): a valid result replaces :attr:`PolicyWatcher.current` and emits
``POLICY_RELOADED``; any error keeps the previous policy in force, emits ``POLICY_REJECTED``
and logs every problem. A change to a trusted workspace's config makes its trust lapse, so
the rebuilt policy no longer includes that workspace's layer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cowork.errors import CoworkError
from cowork.host.events import EventBus, Kind
from cowork.host.policy.effective import build, load_effective
from cowork.host.policy.merge import Policy
from cowork.host.watch import FileWatcher
from cowork.paths import WORKSPACE_CONFIG_FILES, Paths

if TYPE_CHECKING:
    from cowork.host.trust import TrustStore

log = logging.getLogger(__name__)


class PolicyWatcher:
    """Holds the current policy and keeps it up to date while started."""

    def __init__(
        self,
        paths: Paths,
        workspace: Path | None = None,
        trust: TrustStore | None = None,
        bus: EventBus | None = None,
        *,
        settle_s: float = 0.1,
    ) -> None:
        self.paths = paths
        self.workspace = workspace
        self.trust = trust
        self.bus = bus or EventBus()
        self._lock = threading.Lock()
        self._current = load_effective(paths, workspace, trust, self.bus)
        self._listeners: list[Callable[[Policy], None]] = []
        files = [paths.admin_policy_file, paths.user_settings_file]
        if workspace is not None:
            files += [workspace / rel for rel in WORKSPACE_CONFIG_FILES]
        self._watcher = FileWatcher(
            files,
            [paths.admin_policy_dropins],
            on_change=self._changed,
            settle_s=settle_s,
        )

    def _changed(self, paths: frozenset[Path]) -> None:
        log.info("policy files changed: %s", ", ".join(sorted(map(str, paths))))
        self.reload()

    @property
    def current(self) -> Policy:
        """The policy in force now; read it for every new action."""
        with self._lock:
            return self._current

    def on_reload(self, fn: Callable[[Policy], None]) -> None:
        self._listeners.append(fn)

    def reload(self) -> bool:
        """Rebuild now; True when the new policy is in force."""
        try:
            policy = build(self.paths, self.workspace, self.trust, strict=True)
        except CoworkError as exc:
            problems = list(getattr(exc, "problems", []) or [str(exc)])
            log.error(
                "policy change rejected; the previous policy stays in force:\n%s",
                "\n".join(f"  - {p}" for p in problems),
            )
            self.bus.emit(Kind.POLICY_REJECTED, problems=problems, kept_previous=True)
            return False
        except Exception as exc:
            log.exception("policy reload failed; the previous policy stays in force")
            self.bus.emit(Kind.POLICY_REJECTED, problems=[type(exc).__name__], kept_previous=True)
            return False
        with self._lock:
            self._current = policy
        self.bus.emit(Kind.POLICY_RELOADED, sources=[str(s.path) for s in policy.sources])
        for fn in list(self._listeners):
            try:
                fn(policy)
            except Exception:
                log.exception("policy listener failed")
        return True

    def start(self) -> PolicyWatcher:
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._watcher.stop()

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
