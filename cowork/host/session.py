"""The composition root: one workspace = one sealed VM (+ its channel, later its gateway).

``Session.open(workspace)`` checks the folders (refusing bad input before anything starts),
verifies the guest image, writes a per-session overlay and seed disk, boots the VM through a
backend, and waits for the private channel with a watchdog: a guest that is not ready in
time is destroyed (under some nested hypervisors QEMU pauses instead of exiting, so waiting
for it to die is not enough). ``close()`` destroys the VM and deletes the overlay, the seed
and the session's keys, unless asked to keep the overlay.

A session started with ``cowork vm up`` (or ``exec --keep``) outlives the command that
started it: its state is in ``Paths.session_dir(name)/session.json`` and ``Session.attach``
reconnects to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cowork.errors import BackendError, BootTimeout, ChannelError, CoworkError, UsageError
from cowork.guest import contract
from cowork.host import image as image_mod
from cowork.host import workspace as ws_mod
from cowork.host.channel import Channel
from cowork.host.egress.gateway import Gateway, GatewaySettings
from cowork.host.egress.grants import Grant
from cowork.host.egress.taint import OutboundHold
from cowork.host.events import EventBus, Kind
from cowork.host.vm.accel import detect_accel
from cowork.host.vm.backend import DiskFormat, UnsupportedError, VMBackend
from cowork.host.vm.spec import VMSpec
from cowork.paths import (
    CHANNEL_SOCKET_FILE,
    CLIENT_KEY_FILE,
    CONSOLE_LOG_FILE,
    OVERLAY_FILE,
    SEED_FILE,
    SESSION_STATE_FILE,
    Paths,
)

if TYPE_CHECKING:
    from cowork.host.policy import Policy, PolicyWatcher
    from cowork.host.secrets import Secrets

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class VMSettings:
    """What the effective policy says about VMs (see ``cowork.host.policy``)."""

    cpus: int = 2
    memory_mib: int = 2048
    accel: str = "auto"  # "auto" | "kvm" | "tcg"
    libvirt_uri: str | None = None
    keep_overlay: bool = False
    boot_timeout_s: float = 300.0
    claude_dir: Path | None = None  # None: ~/.claude
    claude_writable: bool = False
    workspace_writable: bool = True

    @classmethod
    def from_policy(cls, policy: Policy) -> VMSettings:
        vm, mounts = policy.vm, policy.mounts
        return cls(
            cpus=vm.cpus,
            memory_mib=vm.memory_mib,
            accel=vm.accel,
            libvirt_uri=vm.libvirt_uri,
            keep_overlay=vm.keep_overlay,
            boot_timeout_s=float(vm.boot_timeout_s),
            claude_dir=Path(mounts.claude_dir).expanduser() if mounts.claude_dir else None,
            claude_writable=mounts.claude_writable,
            workspace_writable=mounts.workspace_writable,
        )


@dataclass(frozen=True)
class EgressSettings:
    """The session's way out: a gateway enforcing grants. Without it the guest has none.

    ``grants_provider`` is asked on every request, so a policy reload applies to the next
    request. ``resolver``, ``address_check`` and ``upstream_ca_file`` exist for tests (through
    the Python API only); they default to the system's resolver, the built-in address floor
    and the system's CA bundle.
    """

    grants_provider: Callable[[], Sequence[Grant]]
    allow_websockets: bool = False
    max_body_mib: int = 64
    secrets: Secrets | None = None
    resolver: Callable[[str, int], Sequence[str]] | None = None
    address_check: Callable[[str], bool] | None = None
    upstream_ca_file: Path | None = None
    #: The hold after outside content (default: ask, with nobody to ask until a task runs).
    outbound: OutboundHold | None = None

    @classmethod
    def from_policy(cls, current: Callable[[], Policy], **overrides: Any) -> EgressSettings:
        """Grants from whatever policy ``current()`` returns at the time of each request."""
        policy = current()
        overrides.setdefault(
            "outbound", OutboundHold(mode=lambda: current().agent.after_outside_content)
        )
        return cls(
            grants_provider=lambda: current().egress.grants,
            allow_websockets=policy.egress.allow_websockets,
            max_body_mib=policy.egress.max_body_mib,
            **overrides,
        )


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


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug or "ws")[:24].strip("-") or "ws"


def new_session_name(workspace: Path) -> str:
    return f"cowork-{_slug(workspace.name)}-{secrets.token_hex(3)}"


def _ed25519_pair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def _write_private(path: Path, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)


def create_overlay(base: Path, overlay: Path) -> None:
    """A copy-on-write qcow2 over the read-only base image."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise BackendError("qemu-img is not installed: install the Debian package qemu-utils")
    proc = subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BackendError(f"could not create the session disk {overlay}: {proc.stderr.strip()}")


#: The guest's CA bundle: system roots plus the session's interception CA (added by the init).
GUEST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def start_gateway(egress: EgressSettings, events: EventBus, runtime_dir: Path) -> Gateway:
    secrets = egress.secrets
    if secrets is None:
        from cowork.host.secrets import default_secrets

        secrets = default_secrets()
    return Gateway.start(
        egress.grants_provider,
        events=events,
        secrets=secrets,
        resolver=egress.resolver,
        address_check=egress.address_check,
        settings=GatewaySettings(
            allow_websockets=egress.allow_websockets, max_body_mib=egress.max_body_mib
        ),
        upstream_ca_file=egress.upstream_ca_file,
        runtime_dir=runtime_dir,
        outbound=egress.outbound,
    )


def console_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no console output)"


def default_backend(settings: VMSettings, events: EventBus) -> VMBackend:
    from cowork.host.vm.libvirt import LibvirtBackend

    return LibvirtBackend(uri=settings.libvirt_uri, events=events)


class Session:
    """One running sealed VM for one workspace."""

    def __init__(
        self,
        *,
        state: SessionState,
        paths: Paths,
        backend: VMBackend,
        channel: Channel,
        events: EventBus,
        keep_overlay: bool,
        gateway: Gateway | None = None,
    ) -> None:
        self.gateway = gateway
        #: Set by :func:`open_session`: keeps the effective policy current while we run.
        self.policy_watcher: PolicyWatcher | None = None
        self.state = state
        self.paths = paths
        self.backend = backend
        self.channel = channel
        self.events = events
        self.keep_overlay = keep_overlay
        self._closed = False

    # --- properties --------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def workspace(self) -> Path:
        return Path(self.state.workspace)

    @property
    def dir(self) -> Path:
        return self.paths.session_dir(self.name)

    @property
    def outbound(self) -> OutboundHold | None:
        """The hold after outside content, when this session has a way out."""
        return self.gateway.outbound if self.gateway is not None else None

    # --- lifecycle ---------------------------------------------------------------
    @classmethod
    def open(
        cls,
        workspace: Path,
        *,
        paths: Paths | None = None,
        events: EventBus | None = None,
        settings: VMSettings | None = None,
        backend: VMBackend | None = None,
        progress: Progress | None = None,
        egress: EgressSettings | None = None,
    ) -> Session:
        """Boot a fresh sealed VM for ``workspace`` and connect to it.

        Every check of user input happens before anything is created; on any failure
        after that, everything created is removed again.
        """
        paths = paths or Paths()
        settings = settings or VMSettings()
        events = events or EventBus()
        say = progress or (lambda _msg: None)

        resolved = ws_mod.check_workspace(workspace, paths=paths)
        claude_src = settings.claude_dir or Path.home() / ".claude"
        claude = ws_mod.check_claude_dir(claude_src)
        identity = ws_mod.agent_identity(resolved)
        choice = detect_accel(settings.accel)
        if choice.warning:
            say(choice.warning)
            events.emit(Kind.VM_WARNING, message=choice.warning)

        info = image_mod.ensure(paths, progress=say)
        backend = backend or default_backend(settings, events)

        name = new_session_name(resolved)
        sdir = paths.session_dir(name)
        rdir = paths.session_runtime(name)
        created: list[Path] = []
        defined = False
        gateway: Gateway | None = None
        channel: Channel | None = None
        try:
            sdir.mkdir(parents=True, mode=0o700)
            created.append(sdir)
            rdir.mkdir(parents=True, mode=0o700)
            created.append(rdir)
            ws_mod.ensure_workspace_claude(resolved)
            shares = ws_mod.shares_for(
                resolved,
                claude,
                workspace_writable=settings.workspace_writable,
                claude_writable=settings.claude_writable,
            )
            ws_mod.check_shares_enforceable(shares, backend.capabilities)
            if backend.capabilities.disk_format is not DiskFormat.QCOW2:
                raise UnsupportedError(
                    f"the {backend.capabilities.name} VM backend boots a "
                    f"{backend.capabilities.disk_format} root disk; cowork only makes qcow2 "
                    "session disks so far"
                )

            seed_env: dict[str, str] = {}
            ca_certs: tuple[str, ...] = ()
            if egress is not None:
                gateway = start_gateway(egress, events, sdir)
                seed_env = gateway.guest_environment(GUEST_CA_BUNDLE, contract.PROXY_PORT)
                ca_certs = (gateway.ca_cert_pem.decode(),)
            host_priv, host_pub = _ed25519_pair()
            client_priv, client_pub = _ed25519_pair()
            _write_private(sdir / CLIENT_KEY_FILE, client_priv)
            seed = contract.Seed(
                session=name,
                host_key=host_priv,
                authorized_key=f"{client_pub} cowork-host",
                agent_uid=identity.uid,
                agent_gid=identity.gid,
                mounts=ws_mod.guest_mounts(shares),
                env=seed_env,
                ca_certs=ca_certs,
                guest_code=contract.guest_code_files(),
            )
            _write_private(sdir / SEED_FILE, contract.encode_seed(seed))
            del host_priv
            overlay = sdir / OVERLAY_FILE
            create_overlay(info.base_disk, overlay)

            spec = VMSpec(
                name=name,
                kernel=info.kernel,
                initrd=info.initrd,
                disk=overlay,
                seed=sdir / SEED_FILE,
                channel_socket=rdir / CHANNEL_SOCKET_FILE,
                console_log=sdir / CONSOLE_LOG_FILE,
                shares=shares,
                cmdline=info.kernel_cmdline,
                cpus=settings.cpus,
                memory_mib=settings.memory_mib,
                accel=choice.accel,
            ).validate()
            say(f"starting the sealed VM {name} ({choice.accel.value})…")
            t0 = time.monotonic()
            backend.validate(spec)
            backend.create(spec)
            defined = True
            backend.start(name)
            events.emit(Kind.VM_STARTED, session=name, accel=choice.accel.value)
            say("waiting for the guest to boot (under software emulation this takes a while)…")
            try:
                channel = Channel.connect(
                    spec.channel_socket,
                    host_key=host_pub,
                    client_key=client_priv,
                    user=contract.AGENT_USER,
                    timeout=settings.boot_timeout_s,
                    events=events,
                )
            except ChannelError as exc:
                tail = console_tail(spec.console_log)
                raise BootTimeout(
                    f"the VM {name} did not become ready within {settings.boot_timeout_s:.0f} s "
                    f"({exc}); it has been destroyed. Last console lines:\n{tail}"
                ) from exc
            boot_seconds = time.monotonic() - t0
            if gateway is not None:
                channel.reverse_forward(contract.PROXY_PORT, target=gateway.address)
            state = SessionState(
                name=name,
                workspace=str(resolved),
                created_at=time.time(),
                boot_seconds=round(boot_seconds, 2),
                accel=choice.accel.value,
                uri=backend.capabilities.location,
                mounts=[asdict(m) | {"source": str(s.source)} for m, s in
                        zip(seed.mounts, shares, strict=True)],
                host_public_key=host_pub,
                agent_uid=identity.uid,
                agent_gid=identity.gid,
                image_recipe=info.recipe_hash,
            )  # fmt: skip
            (sdir / SESSION_STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
            events.emit(
                Kind.VM_READY, session=name, boot_seconds=state.boot_seconds, accel=state.accel
            )
            return cls(
                state=state,
                paths=paths,
                backend=backend,
                channel=channel,
                events=events,
                keep_overlay=settings.keep_overlay,
                gateway=gateway,
            )
        except BaseException as exc:
            if channel is not None:
                channel.close()
            if gateway is not None:
                gateway.stop()
            if defined:
                try:
                    backend.destroy(name)
                except CoworkError as cleanup_exc:
                    log.warning("could not destroy %s after a failed start: %s", name, cleanup_exc)
            console = sdir / CONSOLE_LOG_FILE
            if console.exists() and not isinstance(exc, KeyboardInterrupt):
                paths.state.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(console, paths.state / "last-failed-console.log")
            for path in reversed(created):
                shutil.rmtree(path, ignore_errors=True)
            raise

    @classmethod
    def attach(
        cls, name: str, *, paths: Paths | None = None, events: EventBus | None = None,
        backend: VMBackend | None = None, timeout: float = 60.0,
    ) -> Session:  # fmt: skip
        """Reconnect to a session started by an earlier command (``vm up``, ``exec --keep``)."""
        paths = paths or Paths()
        events = events or EventBus(session=name)
        state = load_state(paths, name)
        backend = backend or default_backend(VMSettings(libvirt_uri=state.uri or None), events)
        status = backend.status(name)
        if status.state.value != "running":
            raise UsageError(
                f"VM {name} is {status.state.value}, not running. "
                f"Remove it with `cowork vm down {name}`."
            )
        client_priv = (paths.session_dir(name) / CLIENT_KEY_FILE).read_text()
        channel = Channel.connect(
            paths.session_runtime(name) / CHANNEL_SOCKET_FILE,
            host_key=state.host_public_key,
            client_key=client_priv,
            user=contract.AGENT_USER,
            timeout=timeout,
            events=events,
        )
        return cls(
            state=state, paths=paths, backend=backend, channel=channel, events=events,
            keep_overlay=False,
        )  # fmt: skip

    def detach(self) -> None:
        """Close the channel but leave the VM running (``--keep``).

        The egress gateway belongs to this process and stops with it: a VM left running has
        no way out until a later command attaches with a gateway of its own.
        """
        if not self._closed:
            self._closed = True
            try:
                self.channel.close()
            finally:
                self._stop_services()

    def close(self) -> None:
        """Destroy the VM and delete the session's files (the overlay unless kept)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.channel.close()
            self._stop_services()
        finally:
            destroy_session(
                self.name, paths=self.paths, backend=self.backend, events=self.events,
                keep_overlay=self.keep_overlay,
            )  # fmt: skip

    def _stop_services(self) -> None:
        try:
            if self.gateway is not None:
                self.gateway.stop()
        finally:
            if self.policy_watcher is not None:
                self.policy_watcher.stop()

    @property
    def policy(self) -> Policy | None:
        return self.policy_watcher.current if self.policy_watcher is not None else None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(
    workspace: Path,
    *,
    paths: Paths,
    events: EventBus,
    progress: Progress | None = None,
    backend: VMBackend | None = None,
) -> Session:
    """A session configured by the effective policy, kept current while it runs.

    The workspace is checked first; its own config is read only if the user trusts it.
    The VM's settings come from the policy at start; egress grants are read from the
    policy in force at each request (hot reload).
    """
    from cowork.host.policy import PolicyWatcher
    from cowork.host.trust import TrustStore

    resolved = ws_mod.check_workspace(workspace, paths=paths)
    watcher = PolicyWatcher(paths, resolved, TrustStore(paths.trust_store, bus=events), events)
    watcher.start()
    try:
        policy = watcher.current
        sess = Session.open(
            resolved,
            paths=paths,
            events=events,
            settings=VMSettings.from_policy(policy),
            backend=backend,
            progress=progress,
            egress=EgressSettings.from_policy(lambda: watcher.current),
        )
    except BaseException:
        watcher.stop()
        raise
    sess.policy_watcher = watcher
    return sess


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
        if state.workspace == resolved:
            return state
    return None


def destroy_session(
    name: str,
    *,
    paths: Paths,
    backend: VMBackend | None = None,
    events: EventBus | None = None,
    keep_overlay: bool = False,
) -> None:
    """Force the VM off, undefine it, and delete its session files. Idempotent."""
    events = events or EventBus(session=name)
    if backend is None:
        uri = None
        with contextlib.suppress(UsageError):
            uri = load_state(paths, name).uri or None
        backend = default_backend(VMSettings(libvirt_uri=uri), events)
    backend.destroy(name)
    sdir = paths.session_dir(name)
    if keep_overlay and (sdir / OVERLAY_FILE).exists():
        kept = paths.state / "kept" / name
        kept.mkdir(parents=True, exist_ok=True)
        shutil.move(str(sdir / OVERLAY_FILE), kept / OVERLAY_FILE)
    shutil.rmtree(sdir, ignore_errors=True)
    shutil.rmtree(paths.session_runtime(name), ignore_errors=True)
    events.emit(Kind.SESSION_ENDED, session=name, overlay_kept=keep_overlay)


__all__ = [
    "Session",
    "SessionState",
    "VMSettings",
    "destroy_session",
    "find_for_workspace",
    "iter_states",
    "load_state",
    "open_session",
]
