"""The egress gateway: mitmproxy with only our addon, in its own process, one per session.

Contract:
- :meth:`Gateway.start` spawns a child process (``multiprocessing`` spawn) that runs the
  engine on ``127.0.0.1:<ephemeral>``; configuration, including the proxy token, travels over
  a pipe, never argv or environment. The child holds no policy: per request it asks the
  parent over a second pipe for the grants (so a policy reload applies to the next request),
  the DNS answers, the address verdicts and the credential value, and sends back events;
- those host services are concurrent and bounded: every call carries an id, the parent runs
  it on a small thread pool of its own kind (a slow resolver cannot take the keychain's or
  the grants' workers), and the child waits for each answer at most that service's timeout
  (:class:`GatewaySettings`). A call that times out denies its own request only; later
  calls are unaffected (no latch). Nothing fails open: no answer is a denial;
- the engine is configured fail closed: lazy upstream connections, no raw TCP relay, no
  HTTP/3, websockets only when enabled (and then only where a grant allows), a body size
  limit, upstream certificates verified against the system roots (or a CA file given through
  the Python API), no upstream-certificate sniffing;
- the resolver and the address check are injectable through the Python API only; the default
  address check is :func:`cowork.host.egress.floor.address_allowed`. Any failure in a parent
  service denies the request;
- every response from an upstream is reported to the parent before the guest gets it, and
  marks :attr:`Gateway.outbound` (see :mod:`cowork.host.egress.taint`); after a mark, a
  request that can carry data out waits on the parent's decision (the ``hold`` service);
- a fresh CA per gateway; the private key stays in a 0700 directory on the host that is
  removed by :meth:`Gateway.stop`. :attr:`Gateway.ca_cert_pem` is what the guest trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import secrets as _random
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowork.errors import CoworkError, EgressError
from cowork.host.egress import ca as ca_mod
from cowork.host.egress.floor import address_allowed
from cowork.host.egress.grants import Grant
from cowork.host.egress.taint import Outbound, OutboundHold
from cowork.host.events import EventBus, Kind
from cowork.host.secrets import Secrets

log = logging.getLogger(__name__)

GrantsProvider = Callable[[], Sequence[Grant]]
Resolver = Callable[[str, int], Sequence[str]]
AddressCheck = Callable[[str], bool]

PROXY_USER = "cowork"
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, Alpine
)
CA_ENV_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
)
#: Parent-side worker threads per host service: one kind cannot starve another (a request
#: held for a person's answer waits on its own pool).
_SERVICE_WORKERS = {
    "grants": 4, "resolve": 8, "address_allowed": 4, "secret": 4, "emit": 2, "hold": 8,
    "delivered": 4,
}  # fmt: skip
#: A held request waits for the person at most this long, then is refused.
_HOLD_TIMEOUT = 900.0
_ALLOWED_EVENT_KINDS = {str(Kind.EGRESS_ALLOWED), str(Kind.EGRESS_DENIED)}


def guest_environment(proxy_port: int, token: str, ca_path_in_guest: str) -> dict[str, str]:
    """Every variable a guest process needs to use the gateway and trust its CA.

    The token authorises only this session's gateway; it is fine in the guest, never in
    events, logs or argv on the host.
    """
    url = f"http://{PROXY_USER}:{token}@127.0.0.1:{proxy_port}"
    env: dict[str, str] = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = url
        env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    for name in CA_ENV_VARS:
        env[name] = ca_path_in_guest
    return env


def system_resolver(host: str, port: int) -> list[str]:
    """Addresses for ``host`` from the host's resolver, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


def system_ca_bundle() -> Path:
    for candidate in SYSTEM_CA_BUNDLES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise EgressError(
        "No system certificate bundle found (looked for "
        + ", ".join(SYSTEM_CA_BUNDLES)
        + "); install the ca-certificates package."
    )


@dataclass(frozen=True)
class GatewaySettings:
    """Engine settings that policy may set (none of them can loosen the floor)."""

    allow_websockets: bool = False
    max_body_mib: int = 64
    start_timeout: float = 60.0
    #: Longest wait, in seconds, for each host service; past it the request is denied.
    service_timeouts: Mapping[str, float] = field(
        default_factory=lambda: {
            "grants": 10.0,
            "resolve": 10.0,
            "address_allowed": 5.0,
            "secret": 30.0,
            "emit": 5.0,
            "hold": _HOLD_TIMEOUT,  # a person may be asked
            "delivered": 10.0,
        }
    )
    auth_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    max_pending_connections: int = 32
    max_connections: int = 256
    requests_per_connection: int = 16


@dataclass(frozen=True, repr=False)
class _ChildConfig:
    listen_host: str
    confdir: str
    token: str
    websockets: bool
    body_limit: str
    upstream_ca_file: str
    service_timeouts: dict[str, float]
    limits: tuple[float, float, int, int, int, int]

    def __repr__(self) -> str:
        return f"_ChildConfig(listen_host={self.listen_host!r}, token=<hidden>)"


class Gateway:
    """One running gateway process. Use :meth:`start`; always :meth:`stop` (or ``with``)."""

    def __init__(self) -> None:  # use start()
        self._proc: Any = None
        self._ctl: multiprocessing.connection.Connection | None = None
        self._rpc: multiprocessing.connection.Connection | None = None
        self._broker: threading.Thread | None = None
        self._confdir: Path | None = None
        self._address: tuple[str, int] | None = None
        self._token = ""
        self._ca_cert_pem = b""
        self._stopped = False
        self._grants: GrantsProvider = list
        self._events: EventBus | None = None
        self._secrets: Secrets | None = None
        self._resolver: Resolver = system_resolver
        self._address_check: AddressCheck = address_allowed
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._send_lock = threading.Lock()
        #: The session's mark and the hold for data going out after outside content.
        self.outbound = OutboundHold()

    # --- public API -----------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        grants_provider: GrantsProvider,
        *,
        events: EventBus,
        secrets: Secrets,
        resolver: Resolver | None = None,
        address_check: AddressCheck | None = None,
        settings: GatewaySettings | None = None,
        upstream_ca_file: Path | None = None,
        runtime_dir: Path | None = None,
        outbound: OutboundHold | None = None,
    ) -> Gateway:
        """Start a gateway and wait until it listens. Raises :class:`EgressError`."""
        settings = settings or GatewaySettings()
        if settings.max_body_mib < 1:
            raise EgressError(f"egress.max_body_mib = {settings.max_body_mib}: must be >= 1")
        self = cls()
        self._grants = grants_provider
        self._events = events
        self._secrets = secrets
        self._resolver = resolver or system_resolver
        self._address_check = address_check or address_allowed
        self.outbound = outbound or OutboundHold()
        self._token = _random.token_urlsafe(32)
        ca_file = upstream_ca_file or system_ca_bundle()
        session_ca = ca_mod.generate_ca()
        self._ca_cert_pem = session_ca.cert_pem
        try:
            if runtime_dir is not None:
                runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            base = Path(tempfile.mkdtemp(prefix="cowork-egress-", dir=runtime_dir))
            self._confdir = base
            ca_mod.write_engine_confdir(session_ca, base / "ca")
            del session_ca
            self._spawn(
                _ChildConfig(
                    listen_host="127.0.0.1",
                    confdir=str(base / "ca"),
                    token=self._token,
                    websockets=settings.allow_websockets,
                    body_limit=f"{int(settings.max_body_mib)}m",
                    upstream_ca_file=str(ca_file),
                    service_timeouts=dict(settings.service_timeouts),
                    limits=(
                        settings.auth_timeout_s,
                        settings.idle_timeout_s,
                        settings.max_pending_connections,
                        settings.max_connections,
                        settings.requests_per_connection,
                        int(settings.max_body_mib) * 1024 * 1024,
                    ),
                ),
                settings.start_timeout,
            )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the gateway listens on, on the host's loopback."""
        if self._address is None:
            raise EgressError("the egress gateway is not running")
        return self._address

    @property
    def ca_cert_pem(self) -> bytes:
        return self._ca_cert_pem

    @property
    def proxy_token(self) -> str:
        return self._token

    @property
    def running(self) -> bool:
        return not self._stopped and self._proc is not None and self._proc.is_alive()

    def guest_environment(self, ca_path_in_guest: str, proxy_port: int = 3128) -> dict[str, str]:
        return guest_environment(proxy_port, self._token, ca_path_in_guest)

    def stop(self) -> None:
        """Stop the process and remove the CA key. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self._proc
        if self._ctl is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ctl.send(("stop",))
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in (self._ctl, self._rpc):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        if self._broker is not None:
            self._broker.join(5)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self._confdir is not None:
            shutil.rmtree(self._confdir, ignore_errors=True)
        self._address = None

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Gateway(address={self._address!r}, running={self.running})"

    # --- process and broker ---------------------------------------------------------------
    def _spawn(self, config: _ChildConfig, timeout: float) -> None:
        mp = multiprocessing.get_context("spawn")
        parent_ctl, child_ctl = mp.Pipe()
        parent_rpc, child_rpc = mp.Pipe()
        proc = mp.Process(
            target=_child_main, args=(child_ctl, child_rpc), name="cowork-egress", daemon=True
        )
        proc.start()
        child_ctl.close()
        child_rpc.close()
        self._proc, self._ctl, self._rpc = proc, parent_ctl, parent_rpc
        parent_ctl.send(config)
        if not parent_ctl.poll(timeout):
            raise EgressError(f"the egress gateway did not start within {timeout:.0f} s")
        try:
            msg = parent_ctl.recv()
        except EOFError:
            raise EgressError(
                "the egress gateway process exited during start-up; run with -v for its log"
            ) from None
        if msg[0] != "ready":
            raise EgressError(f"the egress gateway could not start: {msg[1]}")
        self._address = (str(msg[1]), int(msg[2]))
        self._broker = threading.Thread(
            target=self._serve_rpc, name="cowork-egress-broker", daemon=True
        )
        self._broker.start()

    def _serve_rpc(self) -> None:
        """Receive calls; run each on its service's pool; answer in any order, by id."""
        conn = self._rpc
        assert conn is not None
        self._pools = {
            name: ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"cowork-egress-{name}")
            for name, n in _SERVICE_WORKERS.items()
        }
        while True:
            try:
                call_id, name, args = conn.recv()
            except (EOFError, OSError, ValueError):
                return
            pool = self._pools.get(str(name))
            if pool is None:
                self._reply(call_id, (False, f"unknown egress service {name!r}"))
                continue
            try:
                pool.submit(self._run_call, call_id, str(name), tuple(args))
            except RuntimeError:  # shutting down
                return

    def _run_call(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            reply: tuple[bool, Any] = (True, self._dispatch(name, args))
        except CoworkError as exc:
            reply = (False, str(exc))
        except Exception as exc:
            log.warning("egress service %s failed: %s", name, type(exc).__name__)
            reply = (False, f"{name} failed ({type(exc).__name__})")
        self._reply(call_id, reply)

    def _reply(self, call_id: int, reply: tuple[bool, Any]) -> None:
        conn = self._rpc
        if conn is None:
            return
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            conn.send((call_id, *reply))

    def _dispatch(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "grants":
            grants = list(self._grants())
            if not all(isinstance(g, Grant) for g in grants):
                raise EgressError("the grants provider returned something that is not a Grant")
            return grants
        if name == "resolve":
            host, port = str(args[0]), int(args[1])
            return [str(a) for a in self._resolver(host, port)]
        if name == "address_allowed":
            try:
                return bool(self._address_check(str(args[0])))
            except Exception:
                return False
        if name == "secret":
            assert self._secrets is not None
            return self._secrets.get(str(args[0]))
        if name == "emit":
            kind, fields = str(args[0]), dict(args[1])
            if kind in _ALLOWED_EVENT_KINDS and self._events is not None:
                self._events.emit(Kind(kind), **fields)
            return None
        if name == "hold":
            return self._hold(Outbound(str(args[0]), str(args[1]), int(args[2]), str(args[3]),
                                       int(args[4]), str(args[5])))  # fmt: skip
        if name == "delivered":
            self._delivered(str(args[0]))
            return None
        raise EgressError(f"unknown egress service {name!r}")

    def _delivered(self, host: str) -> None:
        """A response from ``host`` is on its way to the guest: mark the session (armed only
        once an agent task ran in it) and say so the first time for each host."""
        first = self.outbound.mark_delivered(host)
        if first and self._events is not None:
            self._events.emit(
                Kind.SESSION_MARKED,
                origin="network",
                source=host,
                message=f"A program in the VM received a response from {host}, which the "
                "agent may read. From now on, anything that would send data out of this "
                "session is held and asked about first.",
            )

    def _hold(self, request: Outbound) -> tuple[bool, str]:
        verdict = self.outbound.decide(request)
        if self.outbound.marked and self._events is not None:
            self._events.emit(
                Kind.EGRESS_HELD,
                method=request.method,
                host=request.host,
                port=request.port,
                path=request.path,
                grant=request.grant_id,
                bytes_out=request.nbytes,
                allowed=verdict.allowed,
                asked=verdict.asked,
                reason=verdict.reason,
                message=("Allowed" if verdict.allowed else "Held and refused")
                + f": {request.plain()} — {verdict.reason}.",
            )
        return verdict.allowed, verdict.reason


# --- child process ------------------------------------------------------------------------


class _RpcServices:
    """The child's view of the parent's services. Concurrent: calls are matched to answers by
    id, each waits at most its own timeout, and a timeout fails that call only. Every failure
    raises (the addon denies)."""

    def __init__(
        self, conn: multiprocessing.connection.Connection, timeouts: Mapping[str, float]
    ) -> None:
        self._conn = conn
        self._timeouts = dict(timeouts)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._next = 0
        self._gone = False
        self._reader: threading.Thread | None = None

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._read, name="cowork-egress-rpc", daemon=True
                )
                self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = self._conn.recv()
            except (EOFError, OSError, ValueError):
                break
            with self._lock:
                entry = self._pending.pop(call_id, None)
            if entry is not None:
                loop, fut = entry
                loop.call_soon_threadsafe(_settle, fut, ok, value)
        with self._lock:
            self._gone = True
            pending, self._pending = list(self._pending.values()), {}
        for loop, fut in pending:
            loop.call_soon_threadsafe(_settle, fut, False, "the host services are gone")

    async def _call(self, name: str, *args: Any) -> Any:
        self._start_reader()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._gone:
                raise EgressError("the egress gateway lost its host services")
            self._next += 1
            call_id = self._next
            self._pending[call_id] = (loop, fut)
        try:
            with self._send_lock:
                self._conn.send((call_id, name, args))
            return await asyncio.wait_for(fut, self._timeouts.get(name, 10.0))
        except TimeoutError:
            raise EgressError(f"host service {name} timed out") from None
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    async def grants(self) -> Sequence[Grant]:
        return list(await self._call("grants"))

    async def resolve(self, host: str, port: int) -> list[str]:
        return list(await self._call("resolve", host, port))

    async def address_allowed(self, address: str) -> bool:
        return await self._call("address_allowed", address) is True

    async def secret(self, credential_id: str) -> str:
        return str(await self._call("secret", credential_id))

    async def emit(self, kind: str, fields: Mapping[str, Any]) -> None:
        await self._call("emit", kind, dict(fields))

    async def hold(
        self, method: str, host: str, port: int, path: str, nbytes: int, grant_id: str
    ) -> tuple[bool, str]:
        ok, reason = await self._call("hold", method, host, port, path, nbytes, grant_id)
        return ok is True, str(reason)

    async def delivered(self, host: str) -> None:
        await self._call("delivered", host)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(EgressError(str(value)))


class _GuardedReader:
    """A client's stream reader that reports end of stream once the gate says "no more":
    the engine then closes the connection instead of buffering without limit."""

    def __init__(self, inner: Any, may_read: Callable[[int], bool]) -> None:
        self._inner = inner
        self._may_read = may_read
        self._total = 0

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._inner.read(n)
        self._total += len(data)
        if data and not self._may_read(self._total):
            return b""
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _engine_options(config: _ChildConfig) -> dict[str, Any]:
    return {
        "mode": [f"regular@{config.listen_host}:0"],
        "confdir": config.confdir,
        "connection_strategy": "lazy",
        "rawtcp": False,
        "http3": False,
        "http2": True,
        "websocket": config.websockets,
        "body_size_limit": config.body_limit,
        "stream_large_bodies": None,
        "upstream_cert": False,
        "ssl_insecure": False,
        "ssl_verify_upstream_trusted_ca": config.upstream_ca_file,
        "validate_inbound_headers": True,
        "ignore_hosts": [],
        "allow_hosts": [],
        "tcp_hosts": [],
        "udp_hosts": [],
    }


def _child_main(
    ctl: multiprocessing.connection.Connection, rpc: multiprocessing.connection.Connection
) -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="cowork-egress: %(levelname)s %(message)s"
    )
    # passlib (imported by mitmproxy) logs a harmless traceback probing bcrypt's version.
    logging.getLogger("passlib").setLevel(logging.CRITICAL)
    config: _ChildConfig = ctl.recv()
    try:
        asyncio.run(_serve(config, _RpcServices(rpc, config.service_timeouts), ctl))
    except Exception as exc:
        with contextlib.suppress(OSError, ValueError):
            ctl.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


async def _serve(
    config: _ChildConfig, services: _RpcServices, ctl: multiprocessing.connection.Connection
) -> None:
    from mitmproxy import options
    from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    from cowork.host.egress.addon import GateAddon, Limits

    # mitmproxy's own API is untyped; keep it at arm's length.
    master: Any = Master(options.Options(), with_termlog=False)
    ps: Any = proxyserver.Proxyserver()  # type: ignore[no-untyped-call]

    def close_client(client_id: str) -> bool:
        """Close a client connection; False when it cannot be closed yet (try again)."""
        handler = ps.connections.get(client_id)
        if handler is None:
            return False
        io = handler.transports.get(handler.client)
        if io is not None and io.writer is not None:
            # Close the socket itself: the engine then sees the peer gone and cleans up.
            # (Cancelling its task is not enough: a task cancelled before its first step
            # never closes the socket.)
            io.writer.close()
            return True
        # Still in its client_connected hook: the engine closes it right after.
        handler.client.error = "closed by cowork egress"
        return False

    def last_activity(client_id: str) -> float | None:
        handler = ps.connections.get(client_id)
        return None if handler is None else float(handler.timeout_watchdog.last_activity)

    def guard_reads(client_id: str, may_read: Callable[[int], bool]) -> None:
        handler = ps.connections.get(client_id)
        io = None if handler is None else handler.transports.get(handler.client)
        if io is not None and io.reader is not None:
            io.reader = _GuardedReader(io.reader, may_read)

    auth_t, idle_t, pending, clients, flows, decoded = config.limits
    gate = GateAddon(
        services,
        token=config.token,
        websockets=config.websockets,
        limits=Limits(
            auth_t,
            idle_t,
            int(pending),
            int(clients),
            int(flows),
            max_decoded_bytes=int(decoded),
        ),
        close_client=close_client,
        last_activity=last_activity,
        guard_reads=guard_reads,
    )

    class _Ready:
        def running(self) -> None:
            addrs = ps.listen_addrs()
            if addrs:
                host, port = addrs[0][0], addrs[0][1]
                ctl.send(("ready", host, port))
            else:
                ctl.send(("error", "could not listen on the loopback interface"))
                master.shutdown()

    master.addons.add(core.Core(), ps, next_layer.NextLayer(), tlsconfig.TlsConfig(), gate)
    master.addons.add(_Ready())
    master.options.update(**_engine_options(config))

    def watch_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            ctl.recv()
        master.shutdown()

    threading.Thread(target=watch_parent, name="cowork-egress-ctl", daemon=True).start()
    await master.run()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("start the gateway with cowork.host.egress.gateway.Gateway.start()")
