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

import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowork.errors import BootTimeout, ChannelError, CoworkError, UsageError
from cowork.guest import contract
from cowork.host import disks, keys, warm
from cowork.host import image as image_mod
from cowork.host import session_store as store
from cowork.host import workspace as ws_mod
from cowork.host.channel import Channel
from cowork.host.egress import selftest
from cowork.host.egress.gateway import Gateway, GatewaySettings
from cowork.host.egress.grants import Grant
from cowork.host.egress.taint import OutboundHold
from cowork.host.events import EventBus, Kind
from cowork.host.session_store import (
    SessionState,
    find_for_workspace,
    iter_states,
    load_state,
)
from cowork.host.vm.accel import detect_accel
from cowork.host.vm.backend import DiskFormat, UnsupportedError, VMBackend
from cowork.host.vm.spec import VMSpec
from cowork.paths import (
    CHANNEL_SOCKET_FILE,
    CLIENT_KEY_FILE,
    CONSOLE_LOG_FILE,
    MONITOR_SOCKET_FILE,
    OVERLAY_FILE,
    SEED_FILE,
    Paths,
)

if TYPE_CHECKING:
    from cowork.host.activity import MonitorReader
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
    start_mode: str = "cold"  # "cold" | "restore" (cowork.host.warm)
    secret_files: str = "warn"  # noqa: S105 ("warn" | "refuse": credential-looking files)
    #: "staged": read-only share + overlay in the guest (cowork.host.changes); "direct".
    workspace_changes: str = "direct"
    undo_quota_mib: int = 2048

    @classmethod
    def from_policy(cls, policy: Policy, changes_default: str = "direct") -> VMSettings:
        """``changes_default`` is the command's own default for ``workspace.changes``."""
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
            start_mode=vm.start_mode,
            secret_files=mounts.secret_files,
            workspace_changes=policy.changes_mode(changes_default),  # type: ignore[arg-type]
            undo_quota_mib=policy.doc.workspace.undo_quota_mib,
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


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug or "ws")[:24].strip("-") or "ws"


def new_session_name(workspace: Path) -> str:
    return f"cowork-{_slug(workspace.name)}-{secrets.token_hex(3)}"


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
        #: Reads the guest activity monitor (set where the session is opened or attached).
        self.monitor: MonitorReader | None = None

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
        pooled: bool = False,
    ) -> Session:
        """Boot a fresh sealed VM for ``workspace`` and connect to it.

        Every check of user input happens before anything is created; on any failure
        after that, everything created is removed again. ``pooled`` records the session as
        waiting in a warm pool (no command finds it until the pool hands it over).
        """
        paths = paths or Paths()
        settings = settings or VMSettings()
        events = events or EventBus()
        say = progress or (lambda _msg: None)

        resolved = ws_mod.check_workspace(workspace, paths=paths)
        warn_only = settings.secret_files == "warn"  # noqa: S105 (anything else: the stricter)
        for line in ws_mod.check_secret_files(
            resolved, "warn" if warn_only else "refuse"
        ).messages():
            say(f"warning: {line}")
            events.emit(Kind.VM_WARNING, message=line)
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
        gateway_start: concurrent.futures.Future[Gateway] | None = None
        channel: Channel | None = None
        monitor: MonitorReader | None = None
        try:
            sdir.mkdir(parents=True, mode=0o700)
            created.append(sdir)
            rdir.mkdir(parents=True, mode=0o700)
            created.append(rdir)
            ws_mod.ensure_workspace_claude(resolved)
            staged = settings.workspace_changes == "staged"
            if staged:
                from cowork.host import changes as changes_mod

                changes_mod.store.begin(paths, name, resolved)
                created.append(changes_mod.store.set_dir(paths, name))
            shares = ws_mod.shares_for(
                resolved,
                claude,
                workspace_writable=settings.workspace_writable and not staged,
                claude_writable=settings.claude_writable,
            )
            ws_mod.check_shares_enforceable(shares, backend.capabilities)
            if backend.capabilities.disk_format is not DiskFormat.QCOW2:
                raise UnsupportedError(
                    f"the {backend.capabilities.name} VM backend boots a "
                    f"{backend.capabilities.disk_format} root disk; cowork only makes qcow2 "
                    "session disks so far"
                )

            template = None
            if settings.start_mode == warm.RESTORE:
                template = warm.prepare(
                    paths, info,
                    warm.template_key(info.recipe_hash, cpus=settings.cpus,
                                      memory_mib=settings.memory_mib, accel=choice.accel,
                                      shares=shares, image_build=info.identity()),
                    backend, create_overlay=disks.create_overlay, events=events, say=say,
                )  # fmt: skip
            if egress is not None and template is not None:
                # The gateway process takes about a second to start: it starts beside the
                # restore, and the restored guest waits for its seed (written by arm()).
                pending = concurrent.futures.ThreadPoolExecutor(1, "cowork-gateway-start")
                gateway_start = pending.submit(start_gateway, egress, events, sdir)
                pending.shutdown(wait=False)
            elif egress is not None:
                gateway = start_gateway(egress, events, sdir)
            host_priv, host_pub = keys.ed25519_pair()
            client_priv, client_pub = keys.ed25519_pair()
            keys.write_private(sdir / CLIENT_KEY_FILE, client_priv)
            seed = contract.Seed(
                session=name,
                host_key=host_priv,
                authorized_key=f"{client_pub} cowork-host",
                agent_uid=identity.uid,
                agent_gid=identity.gid,
                mounts=ws_mod.guest_mounts(shares),
                guest_code=contract.guest_code_files(),
                staged=staged,
            )
            del host_priv

            def with_gateway(seed: contract.Seed) -> contract.Seed:
                """``seed`` with the way out (proxy and CA) of the session's gateway."""
                nonlocal gateway
                if gateway_start is not None and gateway is None:
                    gateway = gateway_start.result()
                if gateway is None:
                    return seed
                return replace(
                    seed,
                    env=gateway.guest_environment(GUEST_CA_BUNDLE, contract.PROXY_PORT),
                    ca_certs=(gateway.ca_cert_pem.decode(),),
                )

            def arm() -> None:
                nonlocal seed
                seed = warm.session_seed(with_gateway(seed))
                warm.write_seed_in_place(sdir / SEED_FILE, warm.seed_bytes(seed))

            if template is not None:
                keys.write_private(sdir / SEED_FILE, warm.placeholder_seed())
            else:
                seed = with_gateway(seed)
                keys.write_private(sdir / SEED_FILE, contract.encode_seed(seed))
            overlay = sdir / OVERLAY_FILE
            disks.create_overlay(template.disk if template else info.base_disk, overlay)

            spec = VMSpec(
                name=name,
                kernel=info.kernel,
                initrd=info.initrd,
                disk=overlay,
                seed=sdir / SEED_FILE,
                channel_socket=rdir / CHANNEL_SOCKET_FILE,
                monitor_socket=rdir / MONITOR_SOCKET_FILE,
                console_log=sdir / CONSOLE_LOG_FILE,
                shares=shares,
                cmdline=info.kernel_cmdline,
                cpus=settings.cpus,
                memory_mib=settings.memory_mib,
                accel=choice.accel,
            ).validate()
            t0 = time.monotonic()
            start_mode = warm.COLD
            if template is not None:
                channel = warm.restore(
                    template, spec, backend, paths=paths, events=events, say=say, arm=arm,
                    connect=lambda timeout: Channel.connect(
                        spec.channel_socket, host_key=host_pub, client_key=client_priv,
                        user=contract.AGENT_USER, timeout=timeout, events=events,
                    ),
                )  # fmt: skip
                if channel is None:  # fell back: boot cold over the image's own disk
                    seed = warm.cold_seed(with_gateway(seed))
                    keys.write_private(sdir / SEED_FILE, contract.encode_seed(seed))
                    overlay.unlink()
                    disks.create_overlay(info.base_disk, overlay)
                else:
                    defined, start_mode = True, warm.RESTORE
            if channel is None:
                say(f"starting the sealed VM {name} ({choice.accel.value})…")
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
                        f"the VM {name} did not become ready within "
                        f"{settings.boot_timeout_s:.0f} s ({exc}); it has been destroyed. "
                        f"Last console lines:\n{tail}"
                    ) from exc
            boot_seconds = time.monotonic() - t0
            monitor = _watch_monitor(name, rdir / MONITOR_SOCKET_FILE, events, backend, paths)
            if gateway is not None and egress is not None:
                channel.reverse_forward(contract.PROXY_PORT, target=gateway.address)
                say("checking the VM's network protection…")
                report = selftest.check(
                    channel, token=gateway.proxy_token, grants=egress.grants_provider(),
                    proxy_port=contract.PROXY_PORT,
                )  # fmt: skip
                events.emit(Kind.EGRESS_SELFTEST, session=name, seconds=round(report.seconds, 2))
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
                start_mode=start_mode,
                changes=settings.workspace_changes,
                undo_quota_mib=settings.undo_quota_mib,
                pooled=pooled,
            )  # fmt: skip
            store.save_state(paths, state)
            events.emit(
                Kind.VM_READY, session=name, boot_seconds=state.boot_seconds, accel=state.accel,
                start_mode=state.start_mode,
            )  # fmt: skip
            sess = cls(
                state=state,
                paths=paths,
                backend=backend,
                channel=channel,
                events=events,
                keep_overlay=settings.keep_overlay,
                gateway=gateway,
            )
            sess.monitor, monitor = monitor, None
            return sess
        except BaseException as exc:
            if gateway_start is not None and gateway is None:
                with contextlib.suppress(Exception):
                    gateway = gateway_start.result()
            if monitor is not None:
                monitor.stop()
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
                shutil.copyfile(console, paths.last_failed_console)
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
        sess = cls(
            state=state, paths=paths, backend=backend, channel=channel, events=events,
            keep_overlay=False,
        )  # fmt: skip
        mon = paths.session_runtime(name) / MONITOR_SOCKET_FILE
        if mon.exists():  # sessions started before the monitor existed have no port
            sess.monitor = _watch_monitor(name, mon, events, backend, paths, attached=True)
        return sess

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
        keep = self.keep_overlay
        try:
            if self.state.changes == "staged":
                keep = not self.save_changes() or keep
            self.channel.close()
            self._stop_services()
        finally:
            destroy_session(
                self.name, paths=self.paths, backend=self.backend, events=self.events,
                keep_overlay=keep,
            )  # fmt: skip

    def save_changes(self) -> bool:
        """Copy the staged change set to the host store before the VM goes. False (and the
        session disk is kept) if it could not be read."""
        from cowork.host import changes as changes_mod

        try:
            changes_mod.store.collect(
                self.paths, self.name, self.channel,
                changes_mod.store.quota_bytes(self.state.undo_quota_mib),
            )  # fmt: skip
            return True
        except CoworkError as exc:
            log.warning("could not save the staged changes of %s: %s", self.name, exc)
            return False

    def _stop_services(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
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
    changes_default: str = "direct",
    egress_overrides: dict[str, Any] | None = None,
    pool: bool = False,
) -> Session:
    """A session configured by the effective policy, kept current while it runs.

    ``pool`` opens a guest to wait in a warm pool (:mod:`cowork.host.pool`): it is restored
    from the quick-start template whatever ``vm.start_mode`` says (a cold boot only when
    that is not possible), and recorded as waiting so that no command finds it.

    ``changes_default`` is the calling command's default for ``workspace.changes``
    (``staged`` for ``cowork run`` and the app, ``direct`` for ``exec``/``shell``); policy
    that sets the key overrides it.

    The workspace is checked first; its own config is read only if the user trusts it.
    The VM's settings come from the policy at start; egress grants are read from the
    policy in force at each request (hot reload). ``egress_overrides`` sets the test-only
    fields of :class:`EgressSettings` (resolver, address check, upstream CA, secrets).
    """
    from cowork.host.policy import PolicyWatcher
    from cowork.host.trust import TrustStore

    resolved = ws_mod.check_workspace(workspace, paths=paths)
    watcher = PolicyWatcher(paths, resolved, TrustStore(paths.trust_store, bus=events), events)
    watcher.start()
    try:
        policy = watcher.current
        settings = VMSettings.from_policy(policy, changes_default)
        if pool:
            settings = dataclasses.replace(settings, start_mode=warm.RESTORE)
        sess = Session.open(
            resolved,
            paths=paths,
            events=events,
            settings=settings,
            pooled=pool,
            backend=backend,
            progress=progress,
            egress=EgressSettings.from_policy(lambda: watcher.current, **(egress_overrides or {})),
        )
    except BaseException:
        watcher.stop()
        raise
    sess.policy_watcher = watcher
    return sess


def _watch_monitor(
    name: str,
    socket_path: Path,
    events: EventBus,
    backend: VMBackend,
    paths: Paths,
    attached: bool = False,
) -> MonitorReader:
    from cowork.host.activity import watch_session
    from cowork.host.policy import load_policy

    return watch_session(
        name, socket_path, events, stop_vm=lambda: backend.destroy(name),
        mode=load_policy(paths).audit.monitor_lost, attached=attached,
    )  # fmt: skip


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
        kept = paths.kept_overlays / name
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
