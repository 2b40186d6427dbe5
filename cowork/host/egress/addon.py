"""The mitmproxy addon that enforces the gate. With ``gateway.py``, the only mitmproxy importer.

Every hook fails closed: an exception inside a hook refuses the request (a 403 set before
mitmproxy would forward it) or aborts the upstream connection; mitmproxy itself would log the
exception and carry on. Two independent gates must both pass before an upstream connection:

1. ``http_connect`` / ``request`` decide with :mod:`cowork.host.egress.gate` and record the
   approved (host, port) for that client connection;
2. ``server_connect`` refuses any destination not approved for that client, resolves the
   name itself (through the injected resolver), checks every answer against the floor and
   pins the connection to the checked address, so a rebinding answer cannot be used.

Secrets are fetched per request, kept on the flow's state only until its response is sent,
and scrubbed (exact bytes) from the response before it reaches the guest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from cowork.host.egress.gate import (
    RequestFacts,
    decide_connect,
    decide_request,
    is_auth_header,
    is_auth_query_param,
    redact_path,
)
from cowork.host.egress.grants import Grant
from cowork.host.egress.taint import carries_data_out

log = logging.getLogger(__name__)

PROXY_USER = "cowork"
REDACTED = b"[redacted by cowork]"
_CONNECT_REFUSED = "cowork egress refused the connection: "


class Services(Protocol):
    """What the addon needs from the host. Every call may block; every call may raise."""

    def grants(self) -> Sequence[Grant]: ...

    def resolve(self, host: str, port: int) -> list[str]: ...

    def address_allowed(self, address: str) -> bool: ...

    def secret(self, credential_id: str) -> str: ...

    def emit(self, kind: str, fields: dict[str, Any]) -> None: ...

    def hold(
        self, method: str, host: str, port: int, path: str, nbytes: int, grant_id: str
    ) -> tuple[bool, str]: ...


@dataclass
class _FlowState:
    grant_id: str
    host: str
    method: str
    path: str
    websocket: bool
    secret: str | None = field(default=None, repr=False)


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


def _kill(flow: http.HTTPFlow) -> None:
    flow.kill()  # type: ignore[no-untyped-call]


def _scrub_variants(secret: str) -> list[bytes]:
    raw = secret.encode()
    variants = {raw, quote(secret, safe="").encode(), base64.b64encode(raw)}
    return sorted((v for v in variants if v), key=len, reverse=True)


def _scrub(data: bytes, variants: Sequence[bytes]) -> bytes:
    for v in variants:
        data = data.replace(v, REDACTED)
    return data


class GateAddon:
    """Enforces grants, the floor, the proxy token and credential injection."""

    def __init__(self, services: Services, *, token: str, websockets: bool) -> None:
        self._services = services
        self._token = token
        self._websockets = websockets
        self._authed: set[str] = set()
        self._tunnels: dict[str, tuple[str, int]] = {}
        self._approved: dict[str, set[tuple[str, int]]] = {}
        self._flows: dict[str, _FlowState] = {}
        self._pinned: dict[str, tuple[str, str, int]] = {}

    # --- helpers ------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _emit(self, kind: str, **fields: Any) -> None:
        try:
            await self._call(self._services.emit, kind, fields)
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
                "host": req.host,
                "port": req.port,
                "path": redact_path(req.path) if req.method != "CONNECT" else "",
            }
        except Exception:
            return {}

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
        self._authed.add(client.id)
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
        )
        decision = decide_request(facts, grants)
        if not decision.allowed or decision.grant is None or decision.host is None:
            await self._deny(flow, 403, decision.reason, grant=decision.grant_id, **desc)
            return
        grant = decision.grant
        if carries_data_out(req.method, req.path, facts.headers):  # asked only after a mark
            held = await self._call(
                self._services.hold, req.method, decision.host, req.port,
                redact_path(req.path), len(req.raw_content or b""), grant.id,
            )  # fmt: skip
            if not (isinstance(held, tuple) and held[0] is True):
                await self._deny(flow, 403, str(held[1]), grant=grant.id, **desc)
                return
        state = _FlowState(
            grant_id=grant.id,
            host=decision.host,
            method=req.method,
            path=redact_path(req.path),
            websocket=grant.websocket and self._websockets,
        )
        # Remove every credential-shaped thing the guest sent (placeholders included).
        for name in {k.lower() for k in req.headers if is_auth_header(k)}:
            req.headers.pop(name, None)
        query = list(req.query.items(multi=True))
        if any(is_auth_query_param(k) for k, _ in query):
            req.query = [(k, v) for k, v in query if not is_auth_query_param(k)]
        if grant.credential is not None:
            secret = await self._call(self._services.secret, grant.credential)
            if not isinstance(secret, str) or not secret or any(ord(c) < 0x20 for c in secret):
                await self._deny(flow, 403, "credential value unusable", grant=grant.id, **desc)
                return
            req.headers[grant.inject_header] = grant.inject_format.replace("{credential}", secret)
            state.secret = secret
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
        state = self._flows.get(flow.id)
        if state is None:
            return
        try:
            if state.secret is not None and flow.response is not None:
                self._scrub_response(flow.response, _scrub_variants(state.secret))
        except Exception:
            log.error("egress: could not scrub a response; replaced with an error")
            self._refuse(flow, 502, "response could not be checked for credentials")
        if not (state.websocket and flow.websocket is not None):
            self._flows.pop(flow.id, None)
        await self._emit(
            "egress.allowed",
            grant=state.grant_id,
            method=state.method,
            host=state.host,
            path=state.path,
            status=flow.response.status_code if flow.response else None,
            bytes_sent=len(flow.request.raw_content or b""),
            bytes_received=len(flow.response.raw_content or b"") if flow.response else 0,
        )

    @staticmethod
    def _scrub_response(resp: http.Response, variants: Sequence[bytes]) -> None:
        resp.headers.fields = tuple(
            (_scrub(k, variants), _scrub(v, variants)) for k, v in resp.headers.fields
        )
        resp.reason = _scrub(resp.reason.encode(), variants).decode(errors="replace")
        content = resp.get_content(strict=True)  # decoded; raises on unknown encodings
        if content is not None:
            cleaned = _scrub(content, variants)
            if cleaned != content:
                resp.content = cleaned
        if resp.trailers is not None:
            resp.trailers.fields = tuple(
                (_scrub(k, variants), _scrub(v, variants)) for k, v in resp.trailers.fields
            )

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        if state is None or state.secret is None or flow.websocket is None:
            return
        try:
            msg = flow.websocket.messages[-1]
            if not msg.from_client:
                msg.content = _scrub(msg.content, _scrub_variants(state.secret))
        except Exception:
            log.error("egress: could not scrub a websocket message; closing")
            _kill(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._flows.pop(flow.id, None)

    async def error(self, flow: http.HTTPFlow) -> None:
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
