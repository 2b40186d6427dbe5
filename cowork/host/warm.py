"""Warm start: sessions restored from a saved template guest instead of a cold boot.

A **template** is a guest booted once per :class:`TemplateKey` (image recipe, guest code,
VM size and share layout) with a *template seed*: its init loads its kernel modules, prints
``COWORK-TEMPLATE <name>`` and waits for a session seed on the same disk, before it reads a
key, mounts a share or starts sshd. The host then saves it with its memory
(``backend.save``) and keeps, under ``Paths.templates/<key digest>/``: the saved state, the
frozen root disk (a qcow2 over the image's base disk), the template seed and a manifest.

A session restores it (``backend.restore``) with its own overlay over the frozen disk, its
own shares, channel socket and console log, a fresh UUID and VM generation ID, and a fresh
session seed (same size as the template's: the guest's disk size is part of its saved
state). The session seed carries the session's keys, mounts and environment as for a cold
boot, plus fresh host entropy; the guest mixes it in and forces a reseed (and checks the
vmgenid driver) before anything else, and refuses to serve otherwise. The seed disk may be
empty at the restore (:func:`placeholder_seed`): the guest polls it until the host writes
the session seed in place (:func:`write_seed_in_place`), so what the seed needs (the egress
gateway's token and CA) can be made while the VM is being restored.

Contract:
- A template is used only when its manifest records exactly the key asked for; a template of
  another image, guest code or size is never used (its folder has another name, and the
  manifest is checked too).
- A template that cannot be built or restored, or a restored guest that is not ready in
  time, falls back to a cold boot with one notice (a ``vm.warm`` event and a progress line);
  a template that failed to restore is removed so the next session rebuilds it.
- Nothing session-specific is in a template: its seed has no keys, mounts or environment.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cowork.errors import BackendError, ChannelError, CoworkError
from cowork.guest import contract
from cowork.host.events import EventBus, Kind
from cowork.host.vm.backend import SaveRestoreBackend, VMBackend
from cowork.host.vm.spec import Accel, Share, VMSpec
from cowork.paths import CHANNEL_SOCKET_FILE, CONSOLE_LOG_FILE, MONITOR_SOCKET_FILE, Paths

if TYPE_CHECKING:
    from cowork.host.channel import Channel
    from cowork.host.image import ImageInfo
    from cowork.host.session import Session

#: Bumped when the template layout or the guest's wait protocol changes.
TEMPLATE_FORMAT = 3
#: Every seed disk of a warm start has this size: the restored guest keeps the disk size it
#: saw when the template was saved.
WARM_SEED_BYTES = 4 * 1024 * 1024
STATE_FILE = "state.save"
DISK_FILE = "disk.qcow2"
SEED_FILE = "seed.img"
MANIFEST_FILE = "template.json"
#: A session's scratch copy of the template's state while it is being restored.
RESTORE_WORK_FILE = "restore.save"
SHARES_DIR = "shares"
#: Kernel options of a template guest: memory the kernel frees (the unpacked initrd, boot-time
#: buffers) is zeroed, and a saved state leaves zero pages out.
TEMPLATE_CMDLINE = "init_on_free=1"
#: How long a template guest may take to reach its waiting point.
TEMPLATE_BOOT_TIMEOUT = 300.0
#: How long a restored guest may take to become ready before we fall back to a cold boot.
RESTORE_READY_TIMEOUT = 90.0
#: Start modes recorded in a session's state.
COLD, RESTORE = "cold", "restore"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TemplateKey:
    """Everything a template's saved state depends on."""

    image_recipe: str
    guest_code: str
    cpus: int
    memory_mib: int
    accel: str
    shares: tuple[tuple[str, bool], ...]  # (tag, read-only) in device order
    #: The image build (ImageInfo.identity): a template's saved memory holds the page cache
    #: of one base disk, so a rebuild with the same recipe needs a new template.
    image_build: str = ""
    format: int = TEMPLATE_FORMAT

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = json.loads(json.dumps(asdict(self)))  # tuples as lists
        return out


def guest_code_hash(files: dict[str, str] | None = None) -> str:
    """sha256 of the guest code a seed carries (every file, path and text)."""
    files = contract.guest_code_files() if files is None else files
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def template_key(
    image_recipe: str,
    *,
    cpus: int,
    memory_mib: int,
    accel: Accel,
    shares: tuple[Share, ...],
    guest_code: str | None = None,
    image_build: str = "",
) -> TemplateKey:
    return TemplateKey(
        image_recipe=image_recipe,
        image_build=image_build,
        guest_code=guest_code or guest_code_hash(),
        cpus=cpus,
        memory_mib=memory_mib,
        accel=accel.value,
        shares=tuple((s.tag, s.readonly) for s in shares),
    )


@dataclass(frozen=True)
class Template:
    dir: Path
    key: TemplateKey

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def disk(self) -> Path:
        return self.dir / DISK_FILE

    @property
    def seed(self) -> Path:
        return self.dir / SEED_FILE

    def size_bytes(self) -> int:
        """Disk space the template takes (state, frozen disk, seed), allocated blocks."""
        total = 0
        for path in (self.state_file, self.disk, self.seed):
            with contextlib.suppress(OSError):
                total += path.stat().st_blocks * 512
        return total


def template_dir(paths: Paths, key: TemplateKey) -> Path:
    return paths.templates / key.digest()


def find_template(paths: Paths, key: TemplateKey) -> Template | None:
    """The template for ``key`` if one is complete and records exactly ``key``; else None."""
    directory = template_dir(paths, key)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key.to_json():
        return None
    template = Template(directory, key)
    if not all(p.is_file() for p in (template.state_file, template.disk, template.seed)):
        return None
    return template


def remove_template(paths: Paths, key: TemplateKey) -> None:
    shutil.rmtree(template_dir(paths, key), ignore_errors=True)


def prune_stale(paths: Paths, current: TemplateKey) -> list[Path]:
    """Remove templates of another image (recipe or build) or guest code than ``current``
    (they can never be used again: each such change makes new ones). Other sizes are kept."""
    removed: list[Path] = []
    if not paths.templates.is_dir():
        return removed
    for directory in paths.templates.iterdir():
        if not directory.is_dir() or directory.name.startswith("."):
            continue
        try:
            key = json.loads((directory / MANIFEST_FILE).read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a template we understand: leave it alone
        if (key.get("image_recipe"), key.get("image_build", ""), key.get("guest_code")) != (
            current.image_recipe,
            current.image_build,
            current.guest_code,
        ):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def seed_bytes(seed: contract.Seed) -> bytes:
    """The seed disk for a warm start, padded to :data:`WARM_SEED_BYTES`."""
    data = contract.encode_seed(seed)
    if len(data) > WARM_SEED_BYTES:
        raise BackendError(
            f"the session seed is {len(data)} bytes, more than the {WARM_SEED_BYTES} a warm "
            "start can carry"
        )
    return data + b"\0" * (WARM_SEED_BYTES - len(data))


def placeholder_seed() -> bytes:
    """A seed disk with no seed on it yet: a restored guest keeps polling it (see
    :func:`write_seed_in_place`)."""
    return b"\0" * WARM_SEED_BYTES


def write_seed_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the seed disk file ``path`` that a restored VM already has open
    (same size, never truncated). The guest polls the disk past its page cache; a read
    during the write finds no complete seed and is simply repeated."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size != len(data):
            raise BackendError(f"the seed disk {path} is {size} bytes, not {len(data)}")
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
    finally:
        os.close(fd)


def session_seed(seed: contract.Seed) -> contract.Seed:
    """``seed`` with fresh host entropy and the generation ID flag, for a restored guest."""
    entropy = base64.b64encode(secrets.token_bytes(contract.ENTROPY_BYTES)).decode()
    return replace(seed, entropy=entropy, vmgenid=True, template=False, host_time=time.time())


def cold_seed(seed: contract.Seed) -> contract.Seed:
    """``seed`` for a cold boot after a failed restore: a booted kernel has its own random
    state, so nothing is asked of a generation ID device it may not have."""
    return replace(seed, entropy="", vmgenid=False, host_time=0.0)


def template_seed(name: str) -> contract.Seed:
    """A seed with nothing session-specific: no keys, mounts, environment or entropy."""
    return contract.Seed(
        session=name,
        host_key="",
        authorized_key="",
        agent_uid=1000,
        agent_gid=1000,
        mounts=(),
        guest_code=contract.guest_code_files(),
        template=True,
    )


@contextlib.contextmanager
def _build_lock(paths: Paths, key: TemplateKey) -> Iterator[None]:
    paths.templates.mkdir(parents=True, exist_ok=True)
    with open(paths.templates / f"{key.digest()}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def wait_for_marker(console_log: Path, line: str, timeout: float) -> None:
    """Wait until ``line`` appears on its own in ``console_log``; BackendError on timeout or
    when the guest reports a failure first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = console_log.read_text(errors="replace")
        except OSError:
            text = ""
        lines = text.splitlines()
        if line in (ln.strip() for ln in lines):
            return
        failed = [ln for ln in lines if ln.startswith("COWORK-FAILED")]
        if failed:
            raise BackendError(f"the template guest failed: {failed[-1]}")
        time.sleep(0.1)
    raise BackendError(f"the template guest did not reach its waiting point in {timeout:.0f} s")


def build_template(
    paths: Paths,
    info: ImageInfo,
    key: TemplateKey,
    backend: SaveRestoreBackend,
    *,
    create_overlay: Callable[[Path, Path], None],
    events: EventBus | None = None,
) -> Template:
    """Boot a template guest for ``key``, save it, and install it (atomically)."""
    with _build_lock(paths, key):
        found = find_template(paths, key)
        if found is not None:
            return found
        digest = key.digest()
        name = f"cowork-tpl-{digest[:12]}-{secrets.token_hex(2)}"
        work = Path(tempfile.mkdtemp(prefix=f".build-{digest[:12]}-", dir=paths.templates))
        rdir = paths.runtime / name
        defined = False
        t0 = time.monotonic()
        try:
            rdir.mkdir(parents=True, mode=0o700)
            shares = []
            for tag, readonly in key.shares:
                src = work / SHARES_DIR / tag
                src.mkdir(parents=True)
                shares.append(Share(tag, src, readonly))
            seed_path = work / SEED_FILE
            seed_path.write_bytes(seed_bytes(template_seed(name)))
            create_overlay(info.base_disk, work / DISK_FILE)
            console_log = work / CONSOLE_LOG_FILE
            spec = VMSpec(
                name=name,
                kernel=info.kernel,
                initrd=info.initrd,
                disk=work / DISK_FILE,
                seed=seed_path,
                channel_socket=rdir / CHANNEL_SOCKET_FILE,
                monitor_socket=rdir / MONITOR_SOCKET_FILE,
                console_log=console_log,
                shares=tuple(shares),
                cmdline=f"{info.kernel_cmdline} {TEMPLATE_CMDLINE}",
                cpus=key.cpus,
                memory_mib=key.memory_mib,
                accel=Accel(key.accel),
            ).validate()
            backend.create(spec)
            defined = True
            backend.start(name)
            wait_for_marker(
                console_log, f"{contract.TEMPLATE_MARKER} {name}", TEMPLATE_BOOT_TIMEOUT
            )
            time.sleep(0.5)  # let the guest settle into its poll loop
            backend.save(name, work / STATE_FILE)
            backend.destroy(name)
            defined = False
            manifest = {
                "key": key.to_json(),
                "name": name,
                "built_at": time.time(),
                "build_seconds": round(time.monotonic() - t0, 2),
            }
            (work / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
            final = template_dir(paths, key)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(work, final)
            prune_stale(paths, key)
        except BaseException:
            if defined:
                with contextlib.suppress(CoworkError):
                    backend.destroy(name)
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(rdir, ignore_errors=True)
        if events is not None:
            events.emit(
                Kind.VM_WARM,
                phase="template-built",
                template=digest,
                seconds=manifest["build_seconds"],
            )
        return Template(final, key)


def notice(events: EventBus, say: Progress, reason: str, session: str | None = None) -> None:
    """The one-line notice of a fallback to a cold boot."""
    message = f"quick start unavailable, booting normally: {reason}"
    say(message)
    events.emit(Kind.VM_WARM, session=session, phase="fallback", reason=reason)


def prepare(
    paths: Paths,
    info: ImageInfo,
    key: TemplateKey,
    backend: VMBackend,
    *,
    create_overlay: Callable[[Path, Path], None],
    events: EventBus,
    say: Progress,
) -> Template | None:
    """The template to restore from (built now if missing), or None with a notice."""
    if not backend.capabilities.save_restore or not isinstance(backend, SaveRestoreBackend):
        notice(events, say, f"the {backend.capabilities.name} backend cannot save a VM")
        return None
    found = find_template(paths, key)
    if found is not None:
        return found
    say("preparing a quick-start template for this VM size (once per image)…")
    try:
        return build_template(
            paths, info, key, backend, create_overlay=create_overlay, events=events
        )
    except CoworkError as exc:
        notice(events, say, f"the template could not be built ({exc})")
        return None


__all__ = [
    "COLD",
    "POOL",
    "RESTORE",
    "Template",
    "TemplateKey",
    "WarmPool",
    "build_template",
    "find_template",
    "guest_code_hash",
    "mark_taken",
    "placeholder_seed",
    "prepare",
    "prune_stale",
    "remove_template",
    "restore",
    "seed_bytes",
    "session_seed",
    "template_key",
    "template_seed",
    "write_seed_in_place",
]


def restore(
    template: Template,
    spec: VMSpec,
    backend: VMBackend,
    *,
    connect: Callable[[float], Channel],
    paths: Paths,
    events: EventBus,
    say: Progress,
    arm: Callable[[], None] | None = None,
) -> Channel | None:
    """Restore ``spec`` from ``template`` and connect; None (with a notice, the VM gone and
    the template removed) when the restore fails or the guest is not ready in time.

    ``arm()``, when given, runs once the VM is restored and before connecting: it writes the
    session seed (:func:`write_seed_in_place`) that the guest has been waiting for, so that
    what the seed needs (the egress gateway) can start beside the restore. Whatever it
    raises destroys the VM and propagates (no fallback: a cold boot would need it too)."""
    if not isinstance(backend, SaveRestoreBackend):
        notice(events, say, f"the {backend.capabilities.name} backend cannot restore a VM")
        return None
    say(f"restoring the sealed VM {spec.name} from its quick-start template…")
    try:
        backend.restore(template.state_file, spec, spec.disk.with_name(RESTORE_WORK_FILE))
    except CoworkError as exc:
        remove_template(paths, template.key)
        notice(events, say, f"the template could not be restored ({exc})", spec.name)
        return None
    try:
        if arm is not None:
            arm()
    except BaseException:
        with contextlib.suppress(CoworkError):
            backend.destroy(spec.name)
        raise
    try:
        channel = connect(min(RESTORE_READY_TIMEOUT, TEMPLATE_BOOT_TIMEOUT))
    except ChannelError as exc:
        with contextlib.suppress(CoworkError):
            backend.destroy(spec.name)
        remove_template(paths, template.key)
        notice(events, say, f"the restored guest did not become ready ({exc})", spec.name)
        return None
    except BaseException:
        with contextlib.suppress(CoworkError):
            backend.destroy(spec.name)
        raise
    events.emit(Kind.VM_WARM, session=spec.name, phase="restored", template=template.key.digest())
    return channel


# --- the pool ---------------------------------------------------------------------------------
#: The start mode recorded for a session taken from a pool.
POOL = "pool"


class WarmPool:
    """Sessions restored and ready ahead of time, for one workspace and one set of settings;
    kept by a long-running owner of sessions (the daemon, through :mod:`cowork.host.pool`).

    ``opener()`` opens one fresh session (normally ``open_session(..., pool=True)``): every
    guest in the pool was restored with its own keys, token, shares and entropy, like any
    other session. :meth:`take` hands one over (never the same twice) and the pool refills in
    its background thread; :meth:`close` destroys every guest still waiting.

    ``size`` 0 means off. ``memory_cap_mib`` bounds the memory of the guests waiting
    (``size`` is lowered to fit, each guest counting ``guest_memory_mib``).

    A fill that fails is never fatal: it emits ``vm.warm`` ``pool-fill-failed`` (with the
    reason and when the next try is), calls ``on_failure`` with a one-line notice, and the
    next try waits ``retry_seconds``, doubling after each failure in a row up to
    ``max_retry_seconds``. A fill that succeeds resets the wait. After a take the refill
    waits ``refill_delay_seconds``, so the restore does not compete for the CPU with the
    first commands of the session just handed out.
    """

    def __init__(
        self,
        opener: Callable[[], Session],
        *,
        size: int,
        guest_memory_mib: int,
        memory_cap_mib: int,
        events: EventBus | None = None,
        retry_seconds: float = 30.0,
        max_retry_seconds: float = 600.0,
        on_failure: Progress | None = None,
        label: str = "",
        refill_delay_seconds: float = 0.0,
    ) -> None:
        import threading

        self._opener = opener
        self.size = max(0, min(size, memory_cap_mib // max(1, guest_memory_mib)))
        self.guest_memory_mib = guest_memory_mib
        self.label = label
        self._events = events
        self._retry = retry_seconds
        self._max_retry = max(retry_seconds, max_retry_seconds)
        self._on_failure = on_failure
        self._refill_delay = refill_delay_seconds
        self._ready: list[Session] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        #: Fills that failed in a row, the last reason, and when the next fill may start.
        self.failures = 0
        self.last_error = ""
        self._next_try = 0.0
        self._thread: threading.Thread | None = None
        if self.size > 0:
            self._thread = threading.Thread(target=self._fill, name="warm-pool", daemon=True)
            self._thread.start()
            self._wake.set()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._ready)

    @property
    def guests(self) -> list[str]:
        """Names of the guests waiting, oldest first."""
        with self._lock:
            return [s.name for s in self._ready]

    @property
    def retry_in(self) -> float:
        """Seconds until the next fill may start (0 when not backing off)."""
        return max(0.0, self._next_try - time.monotonic()) if self.failures else 0.0

    def pop(self) -> Session | None:
        """The oldest waiting session, removed from the pool as it is (None when empty).
        The pool refills in the background; the caller owns the session from now on."""
        with self._lock:
            sess = self._ready.pop(0) if self._ready else None
            if sess is not None:
                self._next_try = max(self._next_try, time.monotonic() + self._refill_delay)
        self._wake.set()
        return sess

    def take(self) -> Session | None:
        """A ready session, removed from the pool and recorded as started by the pool
        (None when the pool is empty or off)."""
        t0 = time.monotonic()
        sess = self.pop()
        if sess is None:
            return None
        mark_taken(sess, time.monotonic() - t0, self._events)
        return sess

    def discard(self, alive: Callable[[Session], bool]) -> list[str]:
        """Close every waiting guest for which ``alive`` is false (its VM died while it
        waited); return their names."""
        with self._lock:
            dead = [s for s in self._ready if not _safe(alive, s)]
            self._ready = [s for s in self._ready if s not in dead]
        for sess in dead:
            with contextlib.suppress(CoworkError):
                sess.close()
        if dead:
            self._wake.set()
        return [s.name for s in dead]

    def wait_ready(self, count: int, timeout: float) -> bool:
        """Block until ``count`` guests wait in the pool (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.waiting >= count:
                return True
            time.sleep(0.1)
        return False

    def _fill(self) -> None:
        while not self._closed:
            delay = self._next_try - time.monotonic()
            if delay > 0:  # backing off: a take does not cut the wait short
                self._wake.wait(timeout=delay)
                self._wake.clear()
                continue
            if self.waiting >= self.size:
                self._wake.wait(timeout=self._retry)
                self._wake.clear()
                continue
            try:
                sess = self._opener()
            except Exception as exc:  # the pool is an optimisation: never fatal
                self._failed(exc)
                continue
            self.failures, self.last_error = 0, ""
            with self._lock:
                if not self._closed:
                    self._ready.append(sess)
                    continue
            with contextlib.suppress(CoworkError):
                sess.close()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        wait = min(self._max_retry, self._retry * 2 ** (self.failures - 1))
        self._next_try = time.monotonic() + wait
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.last_error = reason
        if self._events is not None:
            self._events.emit(
                Kind.VM_WARM, phase="pool-fill-failed", reason=reason,
                failures=self.failures, retry_s=round(wait, 2), workspace=self.label or None,
            )  # fmt: skip
        if self._on_failure is not None:
            where = f" for {self.label}" if self.label else ""
            self._on_failure(
                f"warm pool{where}: could not get a VM ready ({reason}); "
                f"trying again in {wait:.0f} s"
            )

    def close(self, wait: bool = True) -> None:
        """Stop refilling and destroy every guest still waiting. Idempotent. With ``wait``
        false a fill under way is not waited for (it closes its guest when it ends)."""
        self._closed = True
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=TEMPLATE_BOOT_TIMEOUT)
        with self._lock:
            ready, self._ready = self._ready, []
        for sess in ready:
            with contextlib.suppress(CoworkError):
                sess.close()


def _safe(alive: Callable[[Session], bool], sess: Session) -> bool:
    try:
        return alive(sess)
    except Exception:
        return False


def mark_taken(sess: Session, seconds: float, events: EventBus | None) -> None:
    """Record ``sess`` as started by the pool, ``seconds`` after it was asked for, and no
    longer waiting (so it shows as an ordinary session from now on)."""
    from cowork.host.session_store import save_state

    took = round(seconds, 3)
    sess.state = replace(
        sess.state, start_mode=POOL, boot_seconds=took, created_at=time.time(), pooled=False
    )
    save_state(sess.paths, sess.state)
    if events is not None:
        events.emit(Kind.VM_WARM, session=sess.name, phase="taken", seconds=took)
