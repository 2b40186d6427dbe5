"""Warm pools kept by the service: guests restored ahead of time, each used for one session.

Contract:
- A pool belongs to one :class:`PoolKey`: the workspace folder, its changes mode
  (``direct`` or ``staged``), a digest of the effective policy for that folder, a digest of
  the guest image (recipe and built files) and the guest code. A waiting guest is handed out
  only while the key computed *now* equals the key it was made for. Otherwise its pool is
  stale: the waiting guests are destroyed (``vm.warm`` ``pool-stale``), the session starts
  normally, and a pool with the new key is filled instead.
- Pools exist only while ``vm.pool_size`` > 0 (the default 0 is off). The service asks for
  a pool for a folder once a session for it has started (:meth:`Pools.want`), so the *next*
  session there is quick. Pooled guests are restored from the quick-start template whatever
  ``vm.start_mode`` says (:func:`cowork.host.session.open_session` with ``pool=True``).
- ``vm.pool_memory_mib`` bounds the memory of every guest waiting in every pool together. A
  pool holds ``min(pool_size, pool_memory_mib // memory_mib)`` guests; a folder whose pool does
  not fit beside the others pushes out the pools of the folders used least recently.
- A guest is handed out once (:meth:`Pools.take`) and never goes back. Before it is handed
  out its VM must still run, its folder is checked again as for a new session (the folder is
  acceptable, ``mounts.secret_files``; warnings go to the taker), and a staged session takes
  its baseline again, so changes are compared with the folder as it is when the session
  starts. A guest that fails any of this is destroyed and the session starts normally.
- Nothing about a pool is ever fatal to a session: every failure means "start normally".
  Fills that fail back off (:class:`cowork.host.warm.WarmPool`) with an event and a notice.
- :meth:`Pools.close` destroys every waiting guest (the service stops).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from cowork.errors import BackendError, CoworkError
from cowork.host import warm
from cowork.host.events import EventBus, Kind

if TYPE_CHECKING:
    from cowork.host.policy import Policy
    from cowork.host.session import Session
    from cowork.paths import Paths

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: How often the pools look for stale keys and guests whose VM died while waiting.
CHECK_SECONDS = 5.0
#: The wait after a first failed fill (it doubles with every failure in a row).
RETRY_SECONDS = 15.0
MAX_RETRY_SECONDS = 600.0
#: How long a pool waits after a take before it restores the next guest (the restore would
#: otherwise slow the first commands of the session just handed out).
REFILL_DELAY_SECONDS = 3.0


@dataclass(frozen=True)
class PoolKey:
    """Everything a waiting guest depends on; a guest is used only under its own key."""

    workspace: str
    changes: str
    policy: str
    image: str
    guest_code: str


@dataclass(frozen=True)
class PoolPlan:
    """What policy says about the pool for one key."""

    key: PoolKey
    size: int  # vm.pool_size
    guest_memory_mib: int  # vm.memory_mib
    memory_cap_mib: int  # vm.pool_memory_mib

    @property
    def guests(self) -> int:
        """How many guests this pool holds (0: no pool)."""
        return max(0, min(self.size, self.memory_cap_mib // max(1, self.guest_memory_mib)))


@dataclass(frozen=True)
class PoolStatus:
    """One pool as a face shows it."""

    workspace: str
    changes: str
    size: int
    waiting: int
    guests: tuple[str, ...]
    failures: int = 0
    retry_in_s: float = 0.0
    last_error: str = ""


def policy_digest(policy: Policy) -> str:
    """sha256 of the effective policy's values (and why admin policy was refused, if so)."""
    text = policy.doc.model_dump_json() + json.dumps(list(policy.problems))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def plan(paths: Paths, workspace: str, changes_default: str) -> PoolPlan:
    """The key and size of the pool for ``workspace`` now, from the effective policy (the
    folder's own layer only if trusted), the built image and the guest code. Raises
    CoworkError when the policy or the image cannot be read: then there is no pool."""
    from cowork.host import image
    from cowork.host.policy.effective import build
    from cowork.host.trust import TrustStore

    policy = build(paths, Path(workspace), TrustStore(paths.trust_store))
    mode = policy.changes_mode(cast(Literal["staged", "direct"], changes_default))
    key = PoolKey(
        workspace=workspace,
        changes=mode,
        policy=policy_digest(policy),
        image=image.find(paths).identity(),
        guest_code=warm.guest_code_hash(),
    )
    vm = policy.vm
    return PoolPlan(key, vm.pool_size, vm.memory_mib, vm.pool_memory_mib)


def running(sess: Session) -> bool:
    """Whether the session's VM still runs."""
    return str(sess.backend.status(sess.name).state.value) == "running"


def check_taken(sess: Session, say: Progress) -> None:
    """The checks a waiting guest passes before it is handed out (see the module contract).
    Raises CoworkError when it must not be used."""
    from cowork.host import workspace as ws_mod

    resolved = ws_mod.check_workspace(sess.workspace, paths=sess.paths)
    policy = sess.policy
    mode = policy.mounts.secret_files if policy is not None else "refuse"
    for line in ws_mod.check_secret_files(resolved, mode).messages():
        say(f"warning: {line}")
        sess.events.emit(Kind.VM_WARNING, message=line)
    if sess.state.changes == "staged":
        from cowork.host.changes import store

        store.begin(sess.paths, sess.name, resolved)


@dataclass
class _Entry:
    plan: PoolPlan
    changes_default: str
    pool: warm.WarmPool
    used: float


def _keyed(key: PoolKey) -> Callable[[_Entry], bool]:
    return lambda e: e.plan.key == key


class Pools:
    """Every warm pool of one service (see the module contract).

    ``opener(key)`` opens one guest to wait in the pool of ``key`` (the service passes
    ``open_session(..., pool=True)``); ``planner(workspace, changes_default)`` gives the
    :class:`PoolPlan` for now (default :func:`plan`). ``alive`` and ``check`` are the checks
    of a waiting guest (defaults :func:`running` and :func:`check_taken`).
    """

    def __init__(
        self,
        opener: Callable[[PoolKey], Session],
        planner: Callable[[str, str], PoolPlan],
        *,
        events: EventBus | None = None,
        notice: Progress | None = None,
        alive: Callable[[Session], bool] = running,
        check: Callable[[Session, Progress], None] = check_taken,
        check_seconds: float = CHECK_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        max_retry_seconds: float = MAX_RETRY_SECONDS,
        refill_delay_seconds: float | None = None,
    ) -> None:
        self._opener = opener
        self._planner = planner
        self._events = events or EventBus()
        self._notice = notice or (lambda _m: None)
        self._alive = alive
        self._check = check
        self._check_seconds = check_seconds
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._refill_delay = (
            REFILL_DELAY_SECONDS if refill_delay_seconds is None else refill_delay_seconds
        )
        self._lock = threading.Lock()
        self._entries: dict[PoolKey, _Entry] = {}
        self._closers: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._keeper: threading.Thread | None = None

    def start(self) -> Pools:
        """Look for stale pools and dead guests every ``check_seconds`` from now on."""
        self._keeper = threading.Thread(target=self._keep, name="warm-pools", daemon=True)
        self._keeper.start()
        return self

    # --- what the service calls ----------------------------------------------------------
    def want(self, workspace: str, changes_default: str) -> None:
        """Keep a pool for ``workspace`` (when policy turns pools on); never raises."""
        try:
            now = self._planner(workspace, changes_default)
        except Exception as exc:
            log.info("no warm pool for %s: %s", workspace, exc)
            self._drop_where(lambda e: e.plan.key.workspace == workspace, str(exc))
            return
        self._drop_where(
            lambda e: (
                e.plan.key.workspace == workspace
                and e.changes_default == changes_default
                and e.plan.key != now.key
            ),
            "its settings, image or guest code changed",
        )
        self._ensure(now, changes_default)

    def take(self, workspace: str, changes_default: str, say: Progress) -> Session | None:
        """A ready guest for ``workspace``, handed out once and recorded as started by the
        pool; None when there is no pool, it is empty or stale, or the guest fails a check
        (the caller then starts a session normally). Never raises."""
        t0 = time.monotonic()
        try:
            now = self._planner(workspace, changes_default)
        except Exception as exc:
            self._drop_where(lambda e: e.plan.key.workspace == workspace, str(exc))
            return None
        stale = self._drop_where(
            lambda e: (
                e.plan.key.workspace == workspace
                and e.plan.key.changes == now.key.changes
                and e.plan.key != now.key
            ),
            "its settings, image or guest code changed",
        )
        if stale:
            say("the warm pool for this folder was out of date; starting normally")
        with self._lock:
            entry = self._entries.get(now.key)
            if entry is not None:
                entry.used = time.monotonic()
        if entry is None:
            return None
        sess = entry.pool.pop()
        if sess is None:
            self._events.emit(Kind.VM_WARM, phase="pool-empty", workspace=workspace)
            return None
        try:
            if not self._alive(sess):
                raise BackendError("its VM is no longer running")
            self._check(sess, say)
            warm.mark_taken(sess, time.monotonic() - t0, self._events)
        except Exception as exc:
            self._events.emit(
                Kind.VM_WARM, session=sess.name, phase="pool-discarded", reason=str(exc)
            )
            say(f"a waiting VM could not be used ({exc}); starting normally")
            self._close_later([sess])
            return None
        return sess

    def refresh(self) -> None:
        """Destroy guests whose VM died while waiting, and pools whose key is no longer the
        key of now (refilled under the new key when policy still wants a pool)."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            for name in entry.pool.discard(self._alive):
                self._events.emit(
                    Kind.VM_WARM, session=name, phase="pool-discarded",
                    reason="its VM stopped while it waited",
                )  # fmt: skip
            old = entry.plan.key
            try:
                now = self._planner(old.workspace, entry.changes_default)
            except Exception as exc:
                self._drop_where(_keyed(old), str(exc))
                continue
            if now.key != old:
                self._drop_where(_keyed(old), "its settings, image or guest code changed")
                self._ensure(now, entry.changes_default)

    def status(self) -> list[PoolStatus]:
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: -e.used)
        return [
            PoolStatus(
                workspace=e.plan.key.workspace,
                changes=e.plan.key.changes,
                size=e.pool.size,
                waiting=e.pool.waiting,
                guests=tuple(e.pool.guests),
                failures=e.pool.failures,
                retry_in_s=round(e.pool.retry_in, 1),
                last_error=e.pool.last_error,
            )
            for e in entries
        ]

    def close(self) -> None:
        """Stop every pool and destroy every waiting guest (waits for fills under way)."""
        self._stopped.set()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.pool.close()
        for thread in list(self._closers):
            thread.join(timeout=warm.TEMPLATE_BOOT_TIMEOUT)
        if self._keeper is not None:
            self._keeper.join(timeout=warm.TEMPLATE_BOOT_TIMEOUT)

    # --- inside ----------------------------------------------------------------------------
    def _ensure(self, now: PoolPlan, changes_default: str) -> None:
        if now.guests == 0:
            return
        evicted: list[_Entry] = []
        with self._lock:
            if self._stopped.is_set():
                return
            entry = self._entries.get(now.key)
            if entry is not None:
                entry.used = time.monotonic()
                return
            need = now.guests * now.guest_memory_mib
            for other in sorted(self._entries.values(), key=lambda e: e.used):
                held = sum(e.pool.size * e.plan.guest_memory_mib for e in self._entries.values())
                if held + need <= now.memory_cap_mib:
                    break
                del self._entries[other.plan.key]
                evicted.append(other)
            pool = warm.WarmPool(
                lambda: self._open(now.key),
                size=now.guests,
                guest_memory_mib=now.guest_memory_mib,
                memory_cap_mib=now.memory_cap_mib,
                events=self._events,
                retry_seconds=self._retry,
                max_retry_seconds=self._max_retry,
                on_failure=self._notice,
                label=now.key.workspace,
                refill_delay_seconds=self._refill_delay,
            )
            self._entries[now.key] = _Entry(now, changes_default, pool, time.monotonic())
        for old in evicted:
            self._events.emit(
                Kind.VM_WARM, phase="pool-evicted", workspace=old.plan.key.workspace,
                reason=f"vm.pool_memory_mib = {now.memory_cap_mib} leaves no room beside "
                f"the pool for {now.key.workspace}",
            )  # fmt: skip
            self._close_pool_later(old.pool)

    def _open(self, key: PoolKey) -> Session:
        sess = self._opener(key)
        policy = getattr(sess, "policy", None)
        if policy is not None and policy_digest(policy) != key.policy:
            # The policy changed while this guest started: it was made for another key.
            with contextlib.suppress(CoworkError):
                sess.close()
            raise BackendError("the policy changed while the VM started")
        return sess

    def _drop_where(self, match: Callable[[_Entry], bool], reason: str) -> int:
        """Remove the pools that ``match``; their guests are destroyed in the background.
        Returns how many pools were removed."""
        with self._lock:
            gone = [e for e in self._entries.values() if match(e)]
            for e in gone:
                del self._entries[e.plan.key]
        for e in gone:
            self._events.emit(
                Kind.VM_WARM, phase="pool-stale", workspace=e.plan.key.workspace,
                guests=list(e.pool.guests), reason=reason,
            )  # fmt: skip
            self._close_pool_later(e.pool)
        return len(gone)

    def _close_pool_later(self, pool: warm.WarmPool) -> None:
        self._later(lambda: pool.close(wait=True))

    def _close_later(self, sessions: list[Session]) -> None:
        def close() -> None:
            for sess in sessions:
                with contextlib.suppress(CoworkError):
                    sess.close()

        self._later(close)

    def _later(self, fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn, name="warm-pool-close", daemon=True)
        self._closers = [t for t in self._closers if t.is_alive()] + [thread]
        thread.start()

    def _keep(self) -> None:
        while not self._stopped.wait(self._check_seconds):
            try:
                self.refresh()
            except Exception:
                log.exception("checking the warm pools failed")


__all__ = [
    "PoolKey",
    "PoolPlan",
    "PoolStatus",
    "Pools",
    "check_taken",
    "plan",
    "policy_digest",
    "running",
]
