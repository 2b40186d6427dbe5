"""Request trailers against the real gateway: requests written frame by frame (HTTP/2) or
byte by byte (HTTP/1 chunked) through a real TLS tunnel to a real upstream on loopback.

The rules (``gate.check_trailers``): a credential-bound grant accepts no trailer at all; any
grant refuses a trailer that carries a credential. A refused request reaches nothing.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from cowork.host.egress.grants import Grant
from cowork.host.events import Kind

from .conftest import (
    ATTACKER,
    SECRET,
    UPSTREAM_IP,
    Env,
    Upstream,
    connect_tunnel,
    read_response,
    server_context,
    tls_wrap,
)


@pytest.fixture(scope="module")
def open_upstream(egress_env: Env) -> Iterator[Upstream]:
    """A second upstream behind a grant with no credential (the shared one has none such)."""
    pki_dir = egress_env.gateway_ca.parent
    up = Upstream(UPSTREAM_IP, server_context(pki_dir / "cert.pem", pki_dir / "key.pem"))
    grant = Grant(id="open", host="echo.allowed.test", port=up.port, methods=("POST",),
                  paths=("/upload",))  # fmt: skip
    egress_env.grants.append(grant)
    try:
        yield up
    finally:
        egress_env.grants.remove(grant)
        up.close()


def chunked(host: str, path: str, trailers: list[str]) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    body = "5\r\nhello\r\n0\r\n" + "".join(t + "\r\n" for t in trailers) + "\r\n"
    return (head + body).encode("latin-1")


def _tls(env: Env, port: int, alpn: list[str] | None = None) -> ssl.SSLSocket:
    status, sock = connect_tunnel(env, f"echo.allowed.test:{port}")
    assert status == 200
    tls = tls_wrap(env, sock, "echo.allowed.test", alpn)
    tls.settimeout(4)
    return tls


def _events(env: Env) -> str:
    return json.dumps([e.to_json() for e in env.recorder.events])


CREDENTIAL_TRAILERS = [
    ("authorization", f"Bearer {ATTACKER}"),
    ("proxy-authorization", f"Basic {ATTACKER}"),
    ("x-api-key", ATTACKER),
    ("cookie", "session=abc"),
]


# --- HTTP/1 ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [*CREDENTIAL_TRAILERS, ("x-checksum", "1234")])
def test_http1_trailers_never_reach_the_upstream(
    env: Env, open_upstream: Upstream, name: str, value: str
) -> None:
    """mitmproxy 11 does not implement HTTP/1 trailers: a chunked request that ends with any
    trailer is never handed on (not even to the gate), so nothing reaches the upstream and
    the client gets no success; other connections keep working."""
    open_upstream.reset()
    tls = _tls(env, open_upstream.port)
    try:
        authority = f"echo.allowed.test:{open_upstream.port}"
        tls.sendall(chunked(authority, "/upload", [f"{name}: {value}"]))
        try:
            status, _, _ = read_response(tls)
        except (TimeoutError, OSError):
            status = 0
    finally:
        tls.close()
    assert not 200 <= status < 300
    assert open_upstream.connections == [] and open_upstream.requests == []
    assert ATTACKER not in _events(env)
    # The gateway still serves the same request without the trailer.
    tls = _tls(env, open_upstream.port)
    try:
        tls.sendall(chunked(f"echo.allowed.test:{open_upstream.port}", "/upload", []))
        status, _, _ = read_response(tls)
    finally:
        tls.close()
    assert status == 200 and [r.body for r in open_upstream.requests] == [b"hello"]


# --- HTTP/2 (where the engine does read trailers, so the gate's rules decide) ---------------
def _h2_post(env: Env, port: int, path: str, trailers: list[tuple[str, str]]) -> tuple[int, bytes]:
    tls = _tls(env, port, ["h2"])
    try:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "https"), (":path", path),
            (":authority", f"echo.allowed.test:{port}"), ("content-type", "text/plain"),
            ("content-length", "5"),
        ])  # fmt: skip
        conn.send_data(sid, b"hello")
        if trailers:
            conn.send_headers(sid, trailers, end_stream=True)
        else:
            conn.end_stream(sid)
        tls.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = tls.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return status, body
            tls.sendall(conn.data_to_send())
        return status, body
    finally:
        tls.close()


@pytest.mark.parametrize(("name", "value"), CREDENTIAL_TRAILERS)
def test_http2_a_credential_in_a_trailer_is_refused_on_any_grant(
    env: Env, open_upstream: Upstream, name: str, value: str
) -> None:
    open_upstream.reset()
    status, body = _h2_post(env, open_upstream.port, "/upload", [(name, value)])
    assert status == 403, body
    assert b"trailer carries a credential" in body
    assert open_upstream.connections == [] and open_upstream.requests == []
    assert env.no_upstream_activity
    [denied] = env.recorder.of(Kind.EGRESS_DENIED)
    assert "trailer" in denied.fields["reason"]
    assert ATTACKER not in _events(env)


@pytest.mark.parametrize(("name", "value"), [("x-checksum", "1234"), CREDENTIAL_TRAILERS[0]])
def test_http2_a_credential_bound_grant_accepts_no_trailer(env: Env, name: str, value: str) -> None:
    status, body = _h2_post(env, env.upstream.port, "/echo", [(name, value)])
    assert status == 403, body
    assert b"trailer" in body
    assert env.no_upstream_activity
    assert SECRET not in _events(env) and ATTACKER not in _events(env)


def test_http2_without_trailers_passes(env: Env, open_upstream: Upstream) -> None:
    """The same request without a trailer is forwarded: the refusals above are the trailer's."""
    open_upstream.reset()
    status, body = _h2_post(env, open_upstream.port, "/upload", [])
    assert status == 200, body
    assert [r.body for r in open_upstream.requests] == [b"hello"]
