"""The gateway against real TLS upstreams on loopback (see conftest.py).

Every attack ends denied with no upstream connection and no DNS query unless stated.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess

import httpx
import pytest

from cowork.host.egress.grants import Grant
from cowork.host.events import Kind

from .conftest import (
    ATTACKER,
    SECRET,
    Env,
    basic,
    connect_tunnel,
    read_response,
    tls_wrap,
    tunnel_request,
)


def client(env: Env, token: str | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(env.gateway_ca))
    return httpx.Client(proxy=env.proxy_url(token), verify=ctx, timeout=20)


def curl(env: Env, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["curl", "-sS", "--proxy", env.proxy_url(), "--cacert", str(env.gateway_ca), *args, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def api(env: Env, path: str = "/v1/messages", host: str = "api.allowed.test") -> str:
    return f"https://{host}:{env.upstream.port}{path}"


def all_events_text(env: Env) -> str:
    return json.dumps([e.to_json() for e in env.recorder.events])


def assert_no_leak(env: Env) -> None:
    text = all_events_text(env)
    assert SECRET not in text
    assert env.gateway.proxy_token not in text


def denied_reasons(env: Env) -> list[str]:
    return [str(e.fields.get("reason")) for e in env.recorder.of(Kind.EGRESS_DENIED)]


# 15. positive controls ----------------------------------------------------------------------
def _assert_injected_once(env: Env) -> None:
    assert len(env.upstream.requests) == 1
    seen = env.upstream.requests[0]
    assert seen.sni == "api.allowed.test"
    assert [v for k, v in seen.headers if k == "x-api-key"] == [SECRET]
    assert not [k for k, _ in seen.headers if k in ("authorization", "proxy-authorization")]
    assert seen.body == b'{"q":1}'
    assert env.resolver.queries == ["api.allowed.test"]
    allowed = env.recorder.of(Kind.EGRESS_ALLOWED)
    assert len(allowed) == 1
    assert allowed[0].fields["grant"] == "api-messages"
    assert allowed[0].fields["status"] == 200
    assert_no_leak(env)


def test_granted_route_works_over_http1(env: Env) -> None:
    with client(env) as c:
        r = c.post(api(env), headers={"x-api-key": "cowork-managed"}, content=b'{"q":1}')
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/1.1"
    _assert_injected_once(env)


def test_granted_route_works_over_http2(env: Env) -> None:
    r = curl(
        env,
        api(env),
        "--http2",
        "-H",
        "x-api-key: cowork-managed",
        "--data-binary",
        '{"q":1}',
        "-w",
        "\\n%{http_version} %{http_code}",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "2 200"
    _assert_injected_once(env)


def test_plain_http_grant_works(env: Env) -> None:
    with client(env) as c:
        r = c.get(f"http://plain.allowed.test:{env.plain.port}/anything?x=1")
    assert r.status_code == 200
    assert [s.target for s in env.plain.requests] == ["/anything?x=1"]
    assert not [k for k, _ in env.plain.requests[0].headers if k == "proxy-authorization"]


def test_upstream_certificate_is_verified(env: Env) -> None:
    env.resolver.table["untrusted.allowed.test"] = ["127.0.0.10"]
    env.grants.append(Grant(id="untrusted", host="untrusted.allowed.test", port=env.upstream.port))
    try:
        with client(env) as c:
            r = c.get(api(env, "/", host="untrusted.allowed.test"))
        assert r.status_code == 502
        assert not env.upstream.requests  # the TLS handshake failed before any request
    finally:
        env.grants.pop()


# 1-4. credentials --------------------------------------------------------------------------
def test_attacker_key_is_refused_and_real_key_not_sent(env: Env) -> None:
    with client(env) as c:
        r = c.post(api(env), headers={"x-api-key": ATTACKER}, content=b"{}")
    assert r.status_code == 403
    assert "credential cowork did not issue" in r.text
    assert env.no_upstream_activity
    assert ATTACKER not in all_events_text(env)
    assert_no_leak(env)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": f"Bearer {ATTACKER}"}, ""),
        ({"Cookie": f"session={ATTACKER}"}, ""),
        ({"x-goog-api-key": ATTACKER}, ""),
        ({}, f"?key={ATTACKER}"),
        ({}, f"?access_token={ATTACKER}"),
    ],
)
def test_foreign_credential_in_any_form_is_refused(
    env: Env, headers: dict[str, str], query: str
) -> None:
    with client(env) as c:
        r = c.post(api(env, "/v1/messages" + query), headers=headers, content=b"{}")
    assert r.status_code == 403
    assert env.no_upstream_activity


def test_placeholders_are_stripped_and_only_injected_credential_sent(env: Env) -> None:
    with client(env) as c:
        r = c.post(
            api(env, "/v1/messages?key=cowork-managed&x=1"),
            headers={"Authorization": "Bearer cowork-managed", "x-api-key": "cowork-managed"},
            content=b"{}",
        )
    assert r.status_code == 200
    seen = env.upstream.requests[0]
    auth = [(k, v) for k, v in seen.headers if k in ("authorization", "x-api-key")]
    assert auth == [("x-api-key", SECRET)]
    assert seen.target == "/v1/messages?x=1"


def test_echo_endpoint_never_returns_the_secret(env: Env) -> None:
    with client(env) as c:
        r = c.get(f"https://echo.allowed.test:{env.upstream.port}/echo")
    # The upstream did receive it (injection happened) ...
    seen = env.upstream.requests[0]
    assert ("authorization", f"Bearer {SECRET}") in seen.headers
    # ... but the response reflecting it is refused whole: nothing of it reaches the guest.
    assert r.status_code == 502
    assert "reflected the injected credential" in r.text
    assert SECRET not in r.text
    assert all(SECRET not in v for v in r.headers.values())
    assert "x-echo-authorization" not in r.headers
    assert_no_leak(env)
    denied = env.recorder.of(Kind.EGRESS_DENIED)
    assert len(denied) == 1 and denied[0].fields["grant"] == "echo"


# 3. method / path -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"),
        ("DELETE", "/v1/messages"),
        ("POST", "/v1/messages/../files"),
        ("POST", "/v1/messages/%2e%2e/files"),
        ("POST", "/v1/messages/a/b"),
        ("POST", "//v1/messages"),
    ],
)
def test_method_or_path_outside_grant_is_refused(env: Env, method: str, path: str) -> None:
    raw = (
        f"{method} {path} HTTP/1.1\r\nHost: api.allowed.test:{env.upstream.port}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    status, _, _ = tunnel_request(env, "api.allowed.test", raw)
    assert status == 403
    assert env.no_upstream_activity
    assert len(env.recorder.of(Kind.EGRESS_DENIED)) == 1


# 5. CONNECT without a grant --------------------------------------------------------------------
@pytest.mark.parametrize(
    "authority", ["evil.test:443", "c2VjcmV0LWRhdGE.attacker.test:443", "api.allowed.test:22"]
)
def test_connect_without_grant_makes_no_dns_query(env: Env, authority: str) -> None:
    status, sock = connect_tunnel(env, authority)
    sock.close()
    assert status == 403
    assert env.no_upstream_activity
    ev = env.recorder.of(Kind.EGRESS_DENIED)
    assert len(ev) == 1 and ev[0].fields["method"] == "CONNECT"


# 6. SNI / Host / CONNECT mismatches -----------------------------------------------------------
def test_sni_differs_from_connect_host(env: Env) -> None:
    raw = f"POST /v1/messages HTTP/1.1\r\nHost: api.allowed.test:{env.upstream.port}\r\n\r\n"
    status, _, _ = tunnel_request(env, "api.allowed.test", raw.encode(), sni="echo.allowed.test")
    assert status == 403
    assert env.no_upstream_activity


def test_host_header_differs_from_connect_host(env: Env) -> None:
    raw = f"GET /echo HTTP/1.1\r\nHost: echo.allowed.test:{env.upstream.port}\r\n\r\n"
    status, _, _ = tunnel_request(env, "api.allowed.test", raw.encode(), sni="api.allowed.test")
    assert status == 403
    assert env.no_upstream_activity


def test_absolute_form_with_mismatched_host(env: Env) -> None:
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sock.sendall(
        (
            f"GET http://plain.allowed.test:{env.plain.port}/ HTTP/1.1\r\n"
            f"Host: evil.test\r\nProxy-Authorization: {basic(env.gateway.proxy_token)}\r\n\r\n"
        ).encode()
    )
    status, _, _ = read_response(sock)
    sock.close()
    assert status in (400, 403)
    assert env.no_upstream_activity


# 7. IP literals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "127.0.0.10",
    ],
)
def test_ip_literals_are_refused(env: Env, host: str) -> None:
    status, sock = connect_tunnel(env, f"{host}:443")
    sock.close()
    assert status in (400, 403)
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sock.sendall(
        (
            f"GET http://{host}:{env.plain.port}/ HTTP/1.1\r\nHost: {host}:{env.plain.port}\r\n"
            f"Proxy-Authorization: {basic(env.gateway.proxy_token)}\r\n\r\n"
        ).encode()
    )
    status, _, _ = read_response(sock)
    sock.close()
    assert status in (400, 403)
    assert env.no_upstream_activity


# 8. resolution to forbidden addresses, rebinding ------------------------------------------------
@pytest.mark.parametrize("host", ["loopback.allowed.test", "private.allowed.test"])
def test_granted_name_resolving_to_forbidden_space(env: Env, host: str) -> None:
    with client(env) as c:
        r = c.get(api(env, "/", host=host))
    assert r.status_code == 502
    assert env.resolver.queries == [host]  # it had to ask, once
    assert not env.loopback_upstream.connections
    assert not env.upstream.connections
    reasons = denied_reasons(env)
    assert reasons and "loopback, private or reserved" in reasons[0]


def test_rebinding_answer_is_never_connected(env: Env) -> None:
    with client(env) as c:
        first = c.get(api(env, "/", host="rebind.allowed.test"))
    with client(env) as c:
        second = c.get(api(env, "/", host="rebind.allowed.test"))
    assert first.status_code == 200
    assert second.status_code == 502
    # one connection to the checked address; none to the rebinding answer
    assert len(env.upstream.connections) == 1
    assert not env.loopback_upstream.connections


# 9. hostname tricks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authority",
    [
        "api.allowed.test.:{port}",
        "api.allowed.test.evil.test:{port}",
        "evil-api.allowed.test:{port}",
        "\u0430pi.allowed.test:{port}",  # Cyrillic a
        "xn--pi-7lc.allowed.test:{port}",
        "api.allowed.test%00.evil.test:{port}",
        "*.allowed.test:{port}",
    ],
)
def test_hostname_tricks_are_refused(env: Env, authority: str) -> None:
    status, sock = connect_tunnel(env, authority.format(port=env.upstream.port))
    sock.close()
    assert status in (400, 403)
    assert env.no_upstream_activity


@pytest.mark.parametrize("raw", [b"\x00", b"\r\nX-Injected: 1\r\n"])
def test_nul_and_crlf_in_request_line(env: Env, raw: bytes) -> None:
    port = env.upstream.port
    sock = socket.create_connection(env.gateway.address, timeout=10)
    line = b"CONNECT api.allowed.test" + raw + b".evil.test:%d HTTP/1.1\r\n" % port
    sock.sendall(line + f"Proxy-Authorization: {basic(env.gateway.proxy_token)}\r\n\r\n".encode())
    status, _, _ = read_response(sock)
    sock.close()
    assert status != 200
    assert env.no_upstream_activity


def test_mixed_case_is_the_same_host(env: Env) -> None:
    with client(env) as c:
        r = c.post(api(env, host="API.Allowed.Test"), content=b"{}")
    assert r.status_code == 200
    assert env.resolver.queries == ["api.allowed.test"]


# 10. non-HTTP after CONNECT, upgrades -----------------------------------------------------------
def test_non_http_bytes_after_connect_are_not_relayed(env: Env) -> None:
    status, sock = connect_tunnel(env, f"api.allowed.test:{env.upstream.port}")
    assert status == 200
    sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02 binary junk\n")
    sock.settimeout(5)
    try:
        data = sock.recv(65536)
    except (TimeoutError, OSError):
        data = b""
    sock.close()
    assert not data.startswith(b"SSH")
    assert env.no_upstream_activity


def test_non_http_bytes_inside_tls_are_not_relayed(env: Env) -> None:
    status, sock = connect_tunnel(env, f"api.allowed.test:{env.upstream.port}")
    assert status == 200
    tls = tls_wrap(env, sock, "api.allowed.test")
    tls.sendall(b"\x16\x03\x01 not http at all\n\n")
    tls.settimeout(5)
    with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
        tls.recv(65536)
    tls.close()
    assert env.no_upstream_activity


@pytest.mark.parametrize(
    "upgrade",
    [
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "Upgrade: raw-tcp\r\nConnection: Upgrade\r\n",
    ],
)
def test_upgrades_without_websocket_grant_are_refused(env: Env, upgrade: str) -> None:
    raw = (
        f"GET /v1/messages HTTP/1.1\r\nHost: api.allowed.test:{env.upstream.port}\r\n{upgrade}\r\n"
    ).encode()
    status, _, _ = tunnel_request(env, "api.allowed.test", raw)
    assert status == 403
    assert env.no_upstream_activity


def test_websocket_with_grant_is_allowed(env: Env) -> None:
    raw = (
        f"GET /ws HTTP/1.1\r\nHost: ws.allowed.test:{env.upstream.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    status, _, _ = tunnel_request(env, "ws.allowed.test", raw)
    assert status == 101
    assert [s.target for s in env.upstream.requests] == ["/ws"]


# 11. smuggling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        "GET /smuggled HTTP/1.1\r\nHost: plain.allowed.test\r\n\r\n",
        "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    ],
)
def test_request_smuggling_yields_at_most_one_well_formed_request(env: Env, framing: str) -> None:
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sock.sendall(
        (
            f"POST http://plain.allowed.test:{env.plain.port}/x HTTP/1.1\r\n"
            f"Host: plain.allowed.test:{env.plain.port}\r\n"
            f"Proxy-Authorization: {basic(env.gateway.proxy_token)}\r\n{framing}"
        ).encode()
    )
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        read_response(sock)
    sock.close()
    assert len(env.plain.requests) <= 1
    for seen in env.plain.requests:
        names = [k for k, _ in seen.headers]
        assert seen.target == "/x"
        assert names.count("content-length") + names.count("transfer-encoding") <= 1
        assert "x-folded" not in names or "\n" not in dict(seen.headers)["x-folded"]
    assert not any(b"/smuggled" in raw for raw in env.plain.raw)


# 12. the gateway itself and host loopback services ------------------------------------------------
def test_gateway_own_listener_and_loopback_services_unreachable(env: Env) -> None:
    gw_host, gw_port = env.gateway.address
    env.resolver.table["self.allowed.test"] = [gw_host]
    env.grants.append(Grant(id="self", host="self.allowed.test", port=gw_port))
    try:
        with client(env) as c:
            r = c.get(f"https://self.allowed.test:{gw_port}/")
        assert r.status_code == 502
        for authority in (f"127.0.0.1:{gw_port}", f"localhost:{gw_port}", "localhost:443"):
            status, sock = connect_tunnel(env, authority)
            sock.close()
            assert status in (400, 403)
    finally:
        env.grants.pop()
        env.resolver.table.pop("self.allowed.test")
    assert not env.loopback_upstream.connections


# 13. injected faults deny ---------------------------------------------------------------------
def test_fault_inside_the_gate_denies(env: Env) -> None:
    env.fault[0] = True
    status, sock = connect_tunnel(env, f"api.allowed.test:{env.upstream.port}")
    sock.close()
    assert status == 403
    with client(env) as c:
        r = c.get(f"http://plain.allowed.test:{env.plain.port}/")
    assert r.status_code == 403
    assert env.no_upstream_activity
    assert all("internal error" in r for r in denied_reasons(env))


def test_missing_credential_denies(env: Env) -> None:
    env.keyring.delete_password("cowork", "anthropic")
    try:
        with client(env) as c:
            r = c.post(api(env), content=b"{}")
        assert r.status_code == 403
        assert env.no_upstream_activity
    finally:
        env.keyring.set_password("cowork", "anthropic", SECRET)


# 14. proxy token ----------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_missing_or_wrong_token_is_refused(env: Env, token: str) -> None:
    status, sock = connect_tunnel(env, f"api.allowed.test:{env.upstream.port}", token=token)
    sock.close()
    assert status == 407
    sock = socket.create_connection(env.gateway.address, timeout=10)
    auth = f"Proxy-Authorization: {basic(token)}\r\n" if token else ""
    sock.sendall(
        (
            f"GET http://plain.allowed.test:{env.plain.port}/ HTTP/1.1\r\n"
            f"Host: plain.allowed.test:{env.plain.port}\r\n{auth}\r\n"
        ).encode()
    )
    status, _, _ = read_response(sock)
    sock.close()
    assert status == 407
    assert env.no_upstream_activity
    assert_no_leak(env)


def test_many_requests_on_one_tunnel_reuse_the_checked_connection(env: Env) -> None:
    with client(env) as c:
        codes = [c.post(api(env), content=b"{}").status_code for _ in range(8)]
    assert codes == [200] * 8
    assert len(env.upstream.connections) == 1
    assert env.resolver.queries == ["api.allowed.test"]
