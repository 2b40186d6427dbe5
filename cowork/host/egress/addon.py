"""The mitmproxy addon that enforces the gate. With ``gateway.py``, the only mitmproxy importer.

Every hook fails closed: an exception inside a hook refuses the request (a 403 set before
mitmproxy would forward it) or aborts the upstream connection; mitmproxy itself would log the
exception and carry on. Two independent gates must both pass before an upstream connection:

1. ``http_connect`` / ``request`` decide with :mod:`cowork.host.egress.gate` and record the
   approved (host, port) for that client connection;
2. ``server_connect`` refuses any destination not approved for that client, resolves the
   name itself (through the injected resolver), checks every answer against the floor and
   pins the connection to the checked address, so a rebinding answer cannot be used.

Secrets are fetched per request and kept on the flow's state only until its response is sent.
A response that reflects the secret in any form :mod:`cowork.host.egress.reflection` detects
is replaced by a 502 before it reaches the guest (refused, not edited).

Outside content: every response from an upstream that is about to be delivered to the guest is
reported to the host first (:meth:`Services.delivered`), which marks the session (see
:mod:`cowork.host.egress.taint`); a response that cannot be reported is replaced by a 502, so
nothing from outside reaches the guest unrecorded. Responses the gateway writes itself
(refusals) are not reported.

Resources before authentication: the proxy token is checked in ``http_connect`` and
``requestheaders``, before any request body is read; an unauthenticated request that
announces a body is dropped unread. Per client connection the addon bounds the time to present
the token (:attr:`Limits.auth_timeout`), idle time once authenticated, requests in flight
(so buffered bodies are at most ``flows_per_client`` x the body limit), and the number of
connections: when too many connections have not yet authenticated, the oldest is closed, so a
client that opens connections and sends nothing cannot keep a well-behaved one out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from cowork.host.egress import bodies, decoding
from cowork.host.egress.gate import (
    RequestFacts,
    decide_connect,
    decide_request,
    headers_to_forward,
    is_auth_query_param,
    redact_path,
)
from cowork.host.egress.grants import Grant
from cowork.host.egress.reflection import MAX_EXPANDED, Needles, TooLargeToCheck, reflects
from cowork.host.egress.taint import carries_data_out

log = logging.getLogger(__name__)

PROXY_USER = "cowork"
_CONNECT_REFUSED = "cowork egress refused the connection: "


class Services(Protocol):
    """What the addon needs from the host. Every call may wait (bounded by its own timeout,
    concurrently with the others) and may raise; the addon denies on any exception."""

    async def grants(self) -> Sequence[Grant]: ...

    async def resolve(self, host: str, port: int) -> list[str]: ...

    async def address_allowed(self, address: str) -> bool: ...

    async def secret(self, credential_id: str) -> str: ...

    async def emit(self, kind: str, fields: dict[str, Any]) -> None: ...

    async def hold(
        self, method: str, host: str, port: int, path: str, nbytes: int, grant_id: str
    ) -> tuple[bool, str]:
        """After outside content: may this request carry data out? (May wait for a person.)"""
        ...

    async def delivered(self, host: str) -> None:
        """A response from ``host`` is about to reach the guest: outside content enters the
        session. Returns once it is recorded; raises when it could not be."""
        ...


MAX_PENDING_EVENTS = 1024
EVENT_WAIT = 1.0


@dataclass(frozen=True)
class Limits:
    """Per-client bounds of the gateway (seconds, counts)."""

    auth_timeout: float = 10.0  # to present the proxy token after connecting
    idle_timeout: float = 300.0  # an authenticated connection with no traffic
    max_pending: int = 32  # connections that have not authenticated yet
    max_clients: int = 256  # authenticated connections
    flows_per_client: int = 16  # requests in flight on one connection
    max_unauthenticated_bytes: int = 64 * 1024  # read from a client before its token
    max_decoded_bytes: int = 64 * 1024 * 1024  # a body with its Content-Encoding undone


@dataclass
class _Client:
    connected: float
    seq: int = 0  # arrival order (clock readings can tie)
    authed: bool = False
    flows: int = 0
    doomed: bool = False  # to be closed; retried until the engine reports it gone


def _decompressors() -> dict[str, Callable[[bytes], bytes]]:
    """Brotli and zstd for looking inside nested compression, bounded like gzip and deflate
    (which the reflection module brings): past :data:`MAX_EXPANDED` the body is refused."""
    out: dict[str, Callable[[bytes], bytes]] = {}
    for kind in ("br", "zstd"):

        def fn(data: bytes, kind: str = kind) -> bytes:
            try:
                return decoding.decode_one(data, kind, MAX_EXPANDED)
            except decoding.TooLarge:
                raise TooLargeToCheck("compressed response expands too far to check") from None

        out[kind] = fn
    return out


_DECOMPRESSORS = _decompressors()


@dataclass
class _FlowState:
    grant_id: str
    host: str
    method: str
    path: str
    websocket: bool
    secret: str | None = field(default=None, repr=False)
    needles: Needles | None = field(default=None, repr=False)


def proxy_auth_ok(values: Sequence[str], token: str) -> bool:
    """True when exactly one ``Proxy-Authorization: Basic`` header carries the session token."""
    if len(values) != 1:
        return False
    scheme, _, encoded = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        user, sep, password = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok_user = hmac.compare_digest(user.encode(), PROXY_USER.encode())
    ok_pass = hmac.compare_digest(password.encode(), token.encode())
    return bool(sep) and ok_user and ok_pass


_REFLECTED = "the response reflected the injected credential"
_REQUEST_EXPANDS = "the request body expands beyond the gateway's body limit when decompressed"
_RESPONSE_EXPANDS = "the response expands beyond the gateway's body limit when decompressed"


def _decoded(msg: http.Message, limit: int) -> bytes | None:
    """``msg``'s body with its Content-Encoding undone, bounded by ``limit``; raises
    :class:`decoding.TooLarge` or :class:`decoding.Undecodable`."""
    if msg.raw_content is None:
        return None
    coding = ", ".join(msg.headers.get_all("content-encoding"))
    return decoding.decode_body(msg.raw_content, coding, limit)


def _kill(flow: http.HTTPFlow) -> None:
    flow.kill()  # type: ignore[no-untyped-call]


def _param_has_auth(name: str) -> bool:
    try:
        return any(is_auth_query_param(k) for k, _ in bodies.query_pairs(name + "="))
    except ValueError:
        return True


class GateAddon:
    """Enforces grants, the floor, the proxy token and credential injection."""

    def __init__(
        self,
        services: Services,
        *,
        token: str,
        websockets: bool,
        limits: Limits | None = None,
        close_client: Callable[[str], bool] | None = None,
        last_activity: Callable[[str], float | None] | None = None,
        guard_reads: Callable[[str, Callable[[int], bool]], None] | None = None,
    ) -> None:
        self._services = services
        self._token = token
        self._websockets = websockets
        self._limits = limits or Limits()
        self._close_client = close_client
        self._last_activity = last_activity
        self._guard_reads = guard_reads
        self._clients: dict[str, _Client] = {}
        self._authed: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._seq = 0
        self._pending_events: set[asyncio.Task[None]] = set()
        self._tunnels: dict[str, tuple[str, int]] = {}
        self._approved: dict[str, set[tuple[str, int]]] = {}
        self._flows: dict[str, _FlowState] = {}
        self._pinned: dict[str, tuple[str, str, int]] = {}

    # --- helpers ------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        return await fn(*args)

    async def _emit(self, kind: str, **fields: Any) -> None:
        """Send an event, waiting at most :data:`EVENT_WAIT` seconds for it: normally it is
        recorded before the response leaves; a slow audit log delays a request by at most
        that, and delivery goes on in the background.

        At most :data:`MAX_PENDING_EVENTS` are in flight; beyond that one is dropped and said
        so in the gateway's log (the decision itself is never affected)."""
        if len(self._pending_events) >= MAX_PENDING_EVENTS:
            log.error("egress: the event log is not keeping up; an event (%s) was dropped", kind)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(kind, fields))
        self._pending_events.add(task)
        task.add_done_callback(self._pending_events.discard)
        await asyncio.wait({task}, timeout=EVENT_WAIT)

    async def _deliver(self, kind: str, fields: dict[str, Any]) -> None:
        try:
            await self._services.emit(kind, fields)
        except Exception:
            log.warning("could not deliver an egress event (%s)", kind)

    @staticmethod
    def _refuse(flow: http.HTTPFlow, status: int, reason: str) -> None:
        try:
            headers = {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"}
            if status == 407:
                headers["Proxy-Authenticate"] = 'Basic realm="cowork"'
            flow.response = http.Response.make(
                status, f"cowork egress: denied: {reason}\n".encode(), headers
            )
        except Exception:
            _kill(flow)

    async def _deny(self, flow: http.HTTPFlow, status: int, reason: str, **fields: Any) -> None:
        self._refuse(flow, status, reason)
        await self._emit("egress.denied", reason=reason, **fields)

    @staticmethod
    def _describe(flow: http.HTTPFlow) -> dict[str, Any]:
        try:
            req = flow.request
            return {
                "method": req.method,
                "scheme": req.scheme if req.method != "CONNECT" else "https",
                "host": req.host,
                "port": req.port,
                "path": redact_path(req.path) if req.method != "CONNECT" else "",
            }
        except Exception:
            return {}

    # --- client connections and their bounds ----------------------------------------------
    def running(self) -> None:
        if self._close_client is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def client_connected(self, client: connection.Client) -> None:
        try:
            self._seq += 1
            self._clients[client.id] = _Client(connected=time.monotonic(), seq=self._seq)
            if self._guard_reads is not None:
                cid = client.id
                self._guard_reads(cid, lambda total: self.may_read(cid, total))
            pending = sorted(
                (c.seq, cid) for cid, c in self._clients.items() if not c.authed and not c.doomed
            )
            # Too many connections without a token: close the oldest, never the newest, so a
            # flood of idle connections cannot keep out a client that authenticates at once.
            for _, cid in pending[: max(0, len(pending) - self._limits.max_pending)]:
                self._close(cid, "too many connections waiting to authenticate")
        except Exception:
            log.exception("egress client_connected hook failed; connection closed")
            client.error = "internal error in the egress gate"

    def may_read(self, client_id: str, total: int) -> bool:
        """Whether the engine may take more bytes from a client that has sent ``total``.

        Before the token, at most ``max_unauthenticated_bytes``: mitmproxy itself puts no
        limit on a request's header block."""
        if client_id in self._authed:
            return True
        return total <= self._limits.max_unauthenticated_bytes

    def _close(self, client_id: str, why: str) -> None:
        state = self._clients.get(client_id)
        if state is None or self._close_client is None:
            return
        state.doomed = True
        try:
            if self._close_client(client_id):
                return
        except Exception:
            log.warning("egress: could not close a client connection (%s)", why)
        # Not closable yet (its handler is still starting): the sweep tries again.

    def _mark_authed(self, client: connection.Client) -> bool:
        """Record that ``client`` presented the token; False when over the client limit."""
        state = self._clients.setdefault(client.id, _Client(connected=time.monotonic()))
        if not state.authed:
            authed = sum(1 for c in self._clients.values() if c.authed)
            if authed >= self._limits.max_clients:
                return False
            state.authed = True
        self._authed.add(client.id)
        return True

    def sweep(self, now: float | None = None) -> None:
        """Close connections past their deadline (called every half second)."""
        now = time.monotonic() if now is None else now
        for cid, c in list(self._clients.items()):
            if c.doomed:
                self._close(cid, "closing")
                continue
            if not c.authed:
                if now - c.connected > self._limits.auth_timeout:
                    self._close(cid, "no proxy token in time")
                continue
            if c.flows:
                continue
            last = self._last_activity(cid) if self._last_activity is not None else None
            if last is not None and time.time() - last > self._limits.idle_timeout:
                self._close(cid, "idle")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self.sweep()
            except Exception:
                log.exception("egress: connection sweep failed")

    # --- CONNECT --------------------------------------------------------------------------
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            await self._on_connect(flow)
        except Exception:
            log.exception("egress CONNECT hook failed; denied")
            await self._deny(flow, 403, "internal error in the egress gate", **self._describe(flow))

    async def _on_connect(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        desc = self._describe(flow)
        if not proxy_auth_ok(flow.request.headers.get_all("proxy-authorization"), self._token):
            await self._deny(flow, 407, "missing or wrong proxy token", **desc)
            return
        if not self._mark_authed(client):
            await self._deny(flow, 503, "too many connections", **desc)
            return
        if client.id in self._tunnels:
            await self._deny(flow, 403, "only one CONNECT per connection", **desc)
            return
        grants = await self._call(self._services.grants)
        decision = decide_connect(flow.request.host, flow.request.port, grants)
        if not decision.allowed or decision.host is None:
            await self._deny(flow, 403, decision.reason, grant=decision.grant_id, **desc)
            return
        self._tunnels[client.id] = (decision.host, flow.request.port)

    # --- requests -----------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before the body is read: the token, and the client's requests in flight."""
        try:
            client = flow.client_conn
            req = flow.request
            if client.id not in self._authed and client.id not in self._tunnels:
                if proxy_auth_ok(req.headers.get_all("proxy-authorization"), self._token):
                    if not self._mark_authed(client):
                        _kill(flow)
                        return
                else:
                    announces_body = (
                        req.headers.get("content-length", "0").strip() not in ("", "0")
                        or "transfer-encoding" in req.headers
                        or "expect" in req.headers
                    )
                    if announces_body:
                        _kill(flow)  # never read the body of an unauthenticated request
                    return  # no body: ``request`` answers 407
            state = self._clients.get(client.id)
            if state is not None:
                if state.flows >= self._limits.flows_per_client:
                    _kill(flow)
                    return
                state.flows += 1
                flow.metadata["cowork.counted"] = True
        except Exception:
            log.exception("egress requestheaders hook failed; flow killed")
            _kill(flow)

    def _flow_done(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop("cowork.counted", False):
            state = self._clients.get(flow.client_conn.id)
            if state is not None and state.flows > 0:
                state.flows -= 1

    async def request(self, flow: http.HTTPFlow) -> None:
        try:
            await self._on_request(flow)
        except Exception:
            log.exception("egress request hook failed; denied")
            self._flows.pop(flow.id, None)
            await self._deny(flow, 403, "internal error in the egress gate", **self._describe(flow))

    async def _on_request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # already answered (e.g. refused earlier)
            return
        client = flow.client_conn
        req = flow.request
        desc = self._describe(flow)
        tunnel = self._tunnels.get(client.id)
        auth_values = req.headers.get_all("proxy-authorization")
        if tunnel is None and client.id not in self._authed:
            if not proxy_auth_ok(auth_values, self._token):
                await self._deny(flow, 407, "missing or wrong proxy token", **desc)
                return
            self._authed.add(client.id)
        if client.id not in self._authed:
            await self._deny(flow, 407, "missing or wrong proxy token", **desc)
            return
        req.headers.pop("proxy-authorization", None)

        grants = await self._call(self._services.grants)
        body: bytes | None
        undecodable = False
        try:  # Content-Encoding undone, bounded (never mitmproxy's unbounded decoding)
            body = _decoded(req, self._limits.max_decoded_bytes)
        except decoding.TooLarge:
            await self._deny(flow, 413, _REQUEST_EXPANDS, **desc)
            return
        except decoding.Undecodable:
            body, undecodable = None, True
        facts = RequestFacts(
            scheme=req.scheme,
            host=req.host,
            port=req.port,
            method=req.method,
            path=req.path,
            headers=tuple(req.headers.items(multi=True)),  # type: ignore[no-untyped-call]
            host_header=req.host_header,
            tunnel=tunnel,
            sni=client.sni,
            websockets_enabled=self._websockets,
            body=body or None,
            body_undecodable=undecodable,
            trailers=tuple(req.trailers.items(multi=True)) if req.trailers else (),  # type: ignore[no-untyped-call]
        )
        decision = decide_request(facts, grants)
        if not decision.allowed or decision.grant is None or decision.host is None:
            await self._deny(flow, 403, decision.reason, grant=decision.grant_id, **desc)
            return
        grant = decision.grant
        nbytes = len(req.raw_content or b"")
        if carries_data_out(req.method, req.path, facts.headers, nbytes):  # asked after a mark
            held = await self._call(
                self._services.hold, req.method, decision.host, req.port,
                redact_path(req.path), nbytes, grant.id,
            )  # fmt: skip
            if not (isinstance(held, tuple) and len(held) == 2 and held[0] is True):
                reason = str(held[1]) if isinstance(held, tuple) and len(held) == 2 else "held"
                await self._deny(flow, 403, reason, grant=grant.id, **desc)
                return
        state = _FlowState(
            grant_id=grant.id,
            host=decision.host,
            method=req.method,
            path=redact_path(req.path),
            websocket=grant.websocket and self._websockets,
        )
        # Forward only what the grant allows: for a credential-bound grant its header list;
        # for any grant never a credential-shaped header or parameter (placeholders included).
        sent: list[tuple[str, str]] = list(req.headers.items(multi=True))  # type: ignore[no-untyped-call]
        kept = headers_to_forward(grant, sent)
        req.headers.clear()
        for name, value in kept:
            req.headers.add(name, value)
        query = list(req.query.items(multi=True))
        if any(
            is_auth_query_param(k) for k, _ in bodies.query_pairs("&".join(k for k, _ in query))
        ):
            req.query = [(k, v) for k, v in query if not _param_has_auth(k)]
        if grant.credential is not None:
            secret = await self._call(self._services.secret, grant.credential)
            if not isinstance(secret, str) or not secret or any(ord(c) < 0x20 for c in secret):
                await self._deny(flow, 403, "credential value unusable", grant=grant.id, **desc)
                return
            req.headers[grant.inject_header] = grant.inject_format.replace("{credential}", secret)
            state.secret = secret
            state.needles = Needles(secret)
        self._flows[flow.id] = state
        self._approved.setdefault(client.id, set()).add((decision.host, req.port))

    # --- upstream connections -------------------------------------------------------------
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            await self._on_server_connect(data)
        except Exception:
            log.exception("egress server_connect hook failed; connection refused")
            data.server.error = _CONNECT_REFUSED + "internal error in the egress gate"

    async def _on_server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None:
            server.error = _CONNECT_REFUSED + "no destination"
            return
        host, port = str(server.address[0]).lower(), int(server.address[1])
        if (host, port) not in self._approved.get(data.client.id, set()):
            server.error = _CONNECT_REFUSED + "destination was not approved by the gate"
            return
        answers = await self._call(self._services.resolve, host, port)
        if not answers:
            server.error = _CONNECT_REFUSED + "name does not resolve"
            return
        for address in answers:
            if not await self._call(self._services.address_allowed, address):
                server.error = (
                    _CONNECT_REFUSED + "name resolves to a loopback, private or reserved address"
                )
                return
        server.address = (answers[0], port)
        self._pinned[server.id] = (host, answers[0], port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        pinned = self._pinned.get(server.id)
        if pinned is None or server.peername is None:
            return
        try:
            same = ipaddress.ip_address(server.peername[0]) == ipaddress.ip_address(pinned[1])
        except ValueError:
            same = False
        if not same:  # cannot happen: the address connected to is the one checked above
            log.error("egress: upstream peer differs from the checked address")
            return
        # Give the open connection its name back so the engine reuses it for the next request
        # to the same host (mitmproxy caps open connections per address at 5; without reuse a
        # busy tunnel would stall). mitmproxy guards this attribute on open connections only
        # to catch accidental redirects; this one is deliberate and already checked.
        object.__setattr__(server, "address", (pinned[0], pinned[2]))

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._pinned.pop(data.server.id, None)

    def client_disconnected(self, client: connection.Client) -> None:
        self._clients.pop(client.id, None)
        self._authed.discard(client.id)
        self._tunnels.pop(client.id, None)
        self._approved.pop(client.id, None)

    # --- responses ----------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is not None and flow.response.status_code == 101:
                state = self._flows.get(flow.id)
                if state is None or not state.websocket:
                    _kill(flow)
            if flow.response is not None:
                flow.response.stream = False
        except Exception:
            log.exception("egress responseheaders hook failed; flow killed")
            _kill(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        self._flow_done(flow)
        state = self._flows.get(flow.id)
        if state is None:
            return
        refused: str | None = None
        try:
            resp = flow.response
            if (
                state.needles is not None
                and resp is not None
                and self._reflects(resp, state.needles)
            ):
                refused = _REFLECTED
        except decoding.TooLarge:
            refused = _RESPONSE_EXPANDS
        except Exception:
            log.error("egress: could not check a response for the credential; refused")
            refused = "the response could not be checked for the injected credential"
        if not refused and flow.response is not None:
            try:  # outside content enters the session: recorded before the guest sees it
                await self._call(self._services.delivered, state.host)
            except Exception:
                log.error("egress: could not record a response as outside content; refused")
                refused = "the response could not be recorded as outside content"
        if refused:
            self._refuse(flow, 502, refused)
        if not (state.websocket and flow.websocket is not None) or refused:
            self._flows.pop(flow.id, None)
        await self._emit(
            "egress.denied" if refused else "egress.allowed",
            grant=state.grant_id,
            method=state.method,
            host=state.host,
            path=state.path,
            status=flow.response.status_code if flow.response else None,
            bytes_sent=len(flow.request.raw_content or b""),
            bytes_received=len(flow.response.raw_content or b"") if flow.response else 0,
            **({"reason": refused} if refused else {}),
        )

    def _reflects(self, resp: http.Response, needles: Needles) -> bool:
        """Whether any part of ``resp`` reflects the secret. Raises on undecodable bodies and
        :class:`decoding.TooLarge` on one that expands beyond the body limit."""
        parts = [resp.reason.encode("utf-8", "replace")]
        parts += [k + b": " + v for k, v in resp.headers.fields]
        content = _decoded(resp, self._limits.max_decoded_bytes)
        if content:
            parts.append(content)
        if resp.trailers is not None:
            parts += [k + b": " + v for k, v in resp.trailers.fields]
        return reflects(parts, needles, _DECOMPRESSORS)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        if state is None or state.needles is None or flow.websocket is None:
            return
        try:
            msg = flow.websocket.messages[-1]
            if not msg.from_client and reflects([msg.content], state.needles, _DECOMPRESSORS):
                log.warning("egress: a websocket message reflected the credential; closed")
                msg.drop()  # type: ignore[no-untyped-call]
                _kill(flow)
        except Exception:
            log.error("egress: could not check a websocket message; closing")
            _kill(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._flows.pop(flow.id, None)

    async def error(self, flow: http.HTTPFlow) -> None:
        self._flow_done(flow)
        state = self._flows.pop(flow.id, None)
        if state is None:
            return
        msg = flow.error.msg if flow.error is not None else ""
        if _CONNECT_REFUSED in msg:
            reason = msg.split(_CONNECT_REFUSED, 1)[1].strip()
            kind = "egress.denied"
        else:
            reason = "upstream error"
            kind = "egress.allowed"
        await self._emit(
            kind,
            grant=state.grant_id,
            method=state.method,
            host=state.host,
            path=state.path,
            reason=reason,
            status=None,
        )
