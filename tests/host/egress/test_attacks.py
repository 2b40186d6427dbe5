"""Second-round attacks on the gateway (issue 10), one section per class, against the real
gateway and real TLS upstreams on loopback (see conftest.py).

Each refused attack asserts that nothing reached an upstream (no connection, no DNS query)
and that no secret reached the client or the events.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from cowork.host.egress.gateway import Gateway, GatewaySettings
from cowork.host.egress.grants import Grant
from cowork.host.events import Kind

from .conftest import (
    ATTACKER,
    SECRET,
    UPSTREAM_IP,
    Env,
    basic,
    connect_tunnel,
    read_response,
    tunnel_request,
)

TOKEN_SHAPED = "sk-ant-api03-" + "Q" * 40


def client(env: Env, gateway: Gateway | None = None, timeout: float = 30) -> httpx.Client:
    gw = gateway or env.gateway
    host, port = gw.address
    ctx = ssl.create_default_context(cafile=str(env.gateway_ca if gateway is None else _ca(gw)))
    return httpx.Client(
        proxy=f"http://cowork:{gw.proxy_token}@{host}:{port}", verify=ctx, timeout=timeout
    )


_CA_FILES: dict[int, str] = {}


def _ca(gw: Gateway) -> str:
    import tempfile

    key = id(gw)
    if key not in _CA_FILES:
        f = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)  # noqa: SIM115
        f.write(gw.ca_cert_pem)
        f.close()
        _CA_FILES[key] = f.name
    return _CA_FILES[key]


def url(env: Env, host: str, path: str) -> str:
    return f"https://{host}:{env.upstream.port}{path}"


def events_text(env: Env) -> str:
    return json.dumps([e.to_json() for e in env.recorder.events])


def assert_nothing_left(env: Env) -> None:
    assert env.no_upstream_activity
    text = events_text(env)
    assert SECRET not in text
    assert env.gateway.proxy_token not in text


def raw_request(env: Env, host: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    status, _, data = tunnel_request(env, host, head.encode("latin-1") + b"\r\n" + body)
    return status, data


@pytest.fixture
def extra_grants(env: Env) -> Iterator[list[Grant]]:
    added: list[Grant] = []
    yield added
    for g in added:
        env.grants.remove(g)


def add(env: Env, extra: list[Grant], grant: Grant, answer: list[str] | None = None) -> None:
    env.grants.append(grant)
    extra.append(grant)
    env.resolver.table[grant.host] = answer or [UPSTREAM_IP]


# 1. path normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages/..;/files",  # Tomcat/Spring path parameter
        "/v1/messages/x;jsessionid=1/../files",
        "/v1/messages/%252e%252e/files",  # double encoding
        "/v1/messages/%25%32%65%25%32%65/files",
        "/v1/messages/%c0%ae%c0%ae/files",  # overlong UTF-8 dots
        "/v1/messages/%c0%af..%c0%affiles",  # overlong UTF-8 slash
        "/v1/messages/%e0%80%ae",  # 3-byte overlong dot
        "/v1/messages/..%2Ffiles",  # encoded slash
        "/v1/messages/..%5cfiles",  # encoded backslash
        "/v1/messages/%2e%2e",  # encoded dots
        "/v1/messages/%00",  # NUL
        "/v1/messages/a%0d%0aX:1",  # CRLF
        "/v1/messages/%ef%bc%8f..%ef%bc%8ffiles",  # full-width solidus
        "/v1/messages/%e2%88%95..",  # division slash (best-fit mapping)
        "/v1/messages/%6d",  # needless encoding: a second spelling of "m"
        "/v1/messages/x.",  # trailing dot (Windows drops it)
        "/v1/messages/%ed%a0%80",  # UTF-16 surrogate in UTF-8
        "/v1/messages/%e2%80%8b",  # zero-width space
        "/v1/messages/%",  # malformed escape
        "/v1/messages/a\\..\\files",
    ],
)
def test_path_tricks_are_refused_before_anything_leaves(env: Env, path: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: api.allowed.test:{env.upstream.port}\r\n"
        "Content-Length: 2\r\n"
    )
    status, body = raw_request(env, "api.allowed.test", head, b"{}")
    assert status in (400, 403), body
    assert_nothing_left(env)


def test_canonical_non_ascii_path_is_allowed(env: Env) -> None:
    with client(env) as c:
        r = c.post(url(env, "api.allowed.test", "/v1/messages/%E2%82%AC"), content=b"{}")
    assert r.status_code == 200
    assert [s.target for s in env.upstream.requests] == ["/v1/messages/%E2%82%AC"]


# 2. method override -----------------------------------------------------------------------------
def _ro(env: Env, extra: list[Grant]) -> None:
    add(
        env,
        extra,
        Grant(
            id="readonly",
            host="ro.allowed.test",
            port=env.upstream.port,
            methods=("GET",),
            credential="anthropic",
        ),
    )


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"X-HTTP-Method-Override": "DELETE"}, ""),
        ({"X-HTTP-Method": "PUT"}, ""),
        ({"X-Method-Override": "PATCH"}, ""),
        ({"x-http-method-override": "delete"}, ""),
        ({"X-Original-Method": "POST"}, ""),
        ({"X-HTTP-Method-Override": "GET, DELETE"}, ""),
        ({}, "?_method=DELETE"),
        ({}, "?_method=delete"),
        ({}, "?x=1;_method=PUT"),
        ({}, "?%5Fmethod=DELETE"),
        ({}, "?_HttpMethod=PATCH"),
        ({}, "?x-http-method-override=DELETE"),
    ],
)
def test_method_override_on_get_only_grant_is_refused(
    env: Env, extra_grants: list[Grant], headers: dict[str, str], query: str
) -> None:
    _ro(env, extra_grants)
    with client(env) as c:
        r = c.get(url(env, "ro.allowed.test", "/items" + query), headers=headers)
    assert r.status_code == 403, r.text
    assert "method override" in r.text
    assert_nothing_left(env)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"a=1&_method=DELETE"),
        ("application/x-www-form-urlencoded", b"a=1;_method=PUT"),
        ("application/json", b'{"_method": "DELETE", "a": 1}'),
        ("application/json", b'{"X-HTTP-Method-Override": "PATCH"}'),
        ("", b'{"_method": "DELETE"}'),
    ],
)
def test_method_override_in_body_is_refused(env: Env, content_type: str, body: bytes) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with client(env) as c:
        r = c.post(url(env, "echo.allowed.test", "/echo/x"), headers=headers, content=body)
    assert r.status_code == 403, r.text
    assert_nothing_left(env)


def test_override_to_a_granted_method_passes_but_is_not_forwarded(env: Env) -> None:
    with client(env) as c:
        r = c.post(
            url(env, "api.allowed.test", "/v1/messages"),
            headers={"X-HTTP-Method-Override": "GET"},
            content=b"{}",
        )
    assert r.status_code == 200
    names = [k for k, _ in env.upstream.requests[0].headers]
    assert "x-http-method-override" not in names  # not on the grant's header list


# 3. foreign credentials -------------------------------------------------------------------------
def test_only_allowed_headers_reach_a_credential_bound_upstream(env: Env) -> None:
    sent = {
        "Signature": f"keyId={ATTACKER}",
        "X-Vendor-Id": ATTACKER,
        "X-Client": ATTACKER,
        "Api-Id": ATTACKER,
        "From": ATTACKER,
        "Accept": "application/json",
        "User-Agent": "test-agent/1",
    }
    with client(env) as c:
        r = c.post(url(env, "api.allowed.test", "/v1/messages"), headers=sent, content=b"{}")
    assert r.status_code == 200
    seen = env.upstream.requests[0]
    names = {k for k, _ in seen.headers}
    assert names <= {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "user-agent",
        "x-api-key",
    }, names
    assert ("user-agent", "test-agent/1") in seen.headers
    assert not any(ATTACKER.encode() in raw for raw in env.upstream.raw)


def test_configured_extra_header_is_forwarded(env: Env, extra_grants: list[Grant]) -> None:
    add(
        env,
        extra_grants,
        Grant(
            id="ro-extra",
            host="ro.allowed.test",
            port=env.upstream.port,
            credential="anthropic",
            forward_headers=("x-github-*", "x-tenant"),
        ),
    )
    with client(env) as c:
        r = c.get(
            url(env, "ro.allowed.test", "/x"),
            headers={"X-GitHub-Api-Version": "2022", "X-Tenant": "t1", "X-Other": "o"},
        )
    assert r.status_code == 200
    names = {k for k, _ in env.upstream.requests[0].headers}
    assert {"x-github-api-version", "x-tenant"} <= names
    assert "x-other" not in names


@pytest.mark.parametrize(
    "query",
    [
        f"?x=1;key={ATTACKER}",
        f"?x=1;access_token={ATTACKER}",
        f"?key%00={ATTACKER}",
        f"?%00key={ATTACKER}",
        f"?%256Bey={ATTACKER}",  # double-encoded "key"
        f"?ke%79={ATTACKER}",
        f"?api%5Fkey={ATTACKER}",
        f"?X-Amz-Signature={ATTACKER}",
        f"?client_secret={ATTACKER}",
    ],
)
def test_query_credentials_in_any_spelling_are_refused(env: Env, query: str) -> None:
    head = f"GET /v1/messages{query} HTTP/1.1\r\nHost: api.allowed.test:{env.upstream.port}\r\n"
    status, _ = raw_request(env, "api.allowed.test", head)
    assert status == 403
    assert_nothing_left(env)


@pytest.mark.parametrize(
    ("content_type", "body", "encoding"),
    [
        ("application/json", json.dumps({"api_key": ATTACKER}).encode(), None),
        ("application/json", json.dumps({"client_secret": ATTACKER}).encode(), None),
        ("application/json", json.dumps({"auth": {"access_token": ATTACKER}}).encode(), None),
        ("application/json", json.dumps({"q": TOKEN_SHAPED}).encode(), None),
        ("application/json", b'{"a": 1, "a": 2}', None),  # duplicate keys: ambiguous
        ("application/json", b'{"api_key": "x"', None),  # does not parse
        ("application/x-www-form-urlencoded", f"client_secret={ATTACKER}".encode(), None),
        ("application/x-www-form-urlencoded", f"x=1;api_key={ATTACKER}".encode(), None),
        ("application/x-www-form-urlencoded", f"grant=x&Api-Key={ATTACKER}".encode(), None),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\n'
            + ATTACKER.encode()
            + b"\r\n--b--\r\n",
            None,
        ),
        ("text/plain", f"token: {TOKEN_SHAPED}".encode(), None),
        ("", f"token={TOKEN_SHAPED}".encode(), None),
        ("application/json", json.dumps({"api_key": ATTACKER}).encode(), "gzip"),
        ("application/json", b"{}", "x-unknown"),
        ("application/octet-stream", b"\x00\x01binary", None),  # not in body_types
    ],
)
def test_body_credentials_are_refused(
    env: Env, content_type: str, body: bytes, encoding: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    if encoding == "gzip":
        body = gzip.compress(body)
    if encoding:
        headers["content-encoding"] = encoding
    with client(env) as c:
        r = c.post(url(env, "api.allowed.test", "/v1/messages"), headers=headers, content=body)
    assert r.status_code == 403, r.text
    assert ATTACKER not in r.text and TOKEN_SHAPED not in r.text
    assert_nothing_left(env)
    assert ATTACKER not in events_text(env) and TOKEN_SHAPED not in events_text(env)


def test_plain_json_body_passes(env: Env) -> None:
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"password": "x"}]})
    with client(env) as c:
        r = c.post(
            url(env, "api.allowed.test", "/v1/messages"),
            headers={"content-type": "application/json"},
            content=body.encode(),
        )
    assert r.status_code == 200


# 4. response reflection ---------------------------------------------------------------------------
REFLECTIONS = [
    "raw",
    "header",
    "reason",
    "upper",
    "swapcase",
    "pct",
    "pct-all",
    "b64-0",
    "b64-1",
    "b64-2",
    "b64url-0",
    "b64url-1",
    "b64url-2",
    "hex",
    "HEX",
    "utf16le",
    "utf16be",
    "jsonu",
    "jsonu-mixed",
    "html",
    "half",
    "gzip",
    "gzip-gzip",
    "deflate",
    "gzip-b64",
    "br",
    "zstd",
    "outer-gzip",
]


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    out = [secret, secret.upper(), secret.swapcase(), raw.hex(), raw.hex().upper()]
    out += [base64.b64encode(b"x" * k + raw).decode()[2:-2] for k in range(3)]
    return out


@pytest.mark.parametrize("mode", REFLECTIONS)
def test_response_reflecting_the_secret_is_refused(env: Env, mode: str) -> None:
    with client(env) as c:
        r = c.get(url(env, "echo.allowed.test", f"/echo/reflect/{mode}"))
    assert len(env.upstream.requests) == 1  # it did go out, with the credential ...
    assert r.status_code == 502, (mode, r.status_code)  # ... and the answer was refused
    assert "reflected the injected credential" in r.text
    text = r.text + json.dumps(dict(r.headers))
    for form in _forms(SECRET):
        assert form not in text
    assert SECRET not in events_text(env)


def test_clean_response_passes(env: Env) -> None:
    with client(env) as c:
        r = c.get(url(env, "echo.allowed.test", "/echo/reflect/clean"))
    assert r.status_code == 200
    assert r.json() == {"note": "nothing to see"}


# 5. resource use before authentication --------------------------------------------------------
@pytest.fixture(scope="module")
def tight(egress_env: Env) -> Iterator[Gateway]:
    assert egress_env.start_gateway is not None
    gw = egress_env.start_gateway(
        GatewaySettings(
            max_body_mib=1,
            auth_timeout_s=2.0,
            idle_timeout_s=3.0,
            max_pending_connections=8,
            service_timeouts={
                "grants": 5.0,
                "resolve": 1.0,
                "address_allowed": 5.0,
                "secret": 5.0,
                "emit": 5.0,
            },
        )
    )
    try:
        yield gw
    finally:
        gw.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_unauthenticated_body_is_never_read(env: Env) -> None:
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sock.sendall(
        (
            f"POST http://plain.allowed.test:{env.plain.port}/x HTTP/1.1\r\n"
            f"Host: plain.allowed.test:{env.plain.port}\r\n"
            "Content-Length: 100000000\r\n\r\n"
        ).encode()
    )
    # Closed at once, with the body not sent: nothing waits for 100 MB.
    assert _closed_within(sock, 10)
    sock.close()
    assert env.no_upstream_activity


def test_unauthenticated_bad_token_with_body_is_dropped(env: Env) -> None:
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sock.sendall(
        (
            f"POST http://plain.allowed.test:{env.plain.port}/x HTTP/1.1\r\n"
            f"Host: plain.allowed.test:{env.plain.port}\r\n"
            f"Proxy-Authorization: {basic('wrong')}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    assert _closed_within(sock, 10)
    sock.close()
    assert env.no_upstream_activity


def test_silent_connection_is_closed_without_a_token(env: Env, tight: Gateway) -> None:
    sock = socket.create_connection(tight.address, timeout=10)
    sock.sendall(b"GET http://plain.allowed.test/ HTTP/1.1\r\n")  # never finishes
    assert _closed_within(sock, 30)
    sock.close()


def test_idle_authenticated_tunnel_is_closed(env: Env, tight: Gateway) -> None:
    sock = socket.create_connection(tight.address, timeout=10)
    authority = f"api.allowed.test:{env.upstream.port}"
    sock.sendall(
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        f"Proxy-Authorization: {basic(tight.proxy_token)}\r\n\r\n".encode()
    )
    status, _, _ = read_response(sock)
    assert status == 200
    assert _closed_within(sock, 30)
    sock.close()


def test_a_flood_of_idle_connections_does_not_starve_a_good_client(
    env: Env, tight: Gateway
) -> None:
    bad: list[socket.socket] = []
    try:
        for i in range(60):  # far more than max_pending_connections
            s = socket.create_connection(tight.address, timeout=10)
            if i % 2:
                s.sendall(b"CONNECT api.allowed.test:1 HTTP/1.1\r\n")  # headers never end
            bad.append(s)
        with client(env, tight) as c:
            for _ in range(3):
                r = c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}")
                assert r.status_code == 200
        # Most of the flood is gone already: only the newest few may still wait.
        open_now = sum(1 for s in bad if not _closed_within(s, 0.05))
        assert open_now <= 8
    finally:
        for s in bad:
            s.close()


def test_a_slowloris_with_the_token_does_not_starve_a_good_client(env: Env, tight: Gateway) -> None:
    slow = socket.create_connection(tight.address, timeout=10)
    try:
        slow.sendall(
            (
                f"POST http://plain.allowed.test:{env.plain.port}/x HTTP/1.1\r\n"
                f"Host: plain.allowed.test:{env.plain.port}\r\n"
                f"Proxy-Authorization: {basic(tight.proxy_token)}\r\n"
                "Content-Length: 500000\r\n\r\n"
            ).encode()
            + b"a" * 1000
        )
        with client(env, tight) as c:
            r = c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}")
        assert r.status_code == 200
    finally:
        slow.close()


# 6. host services: a slow resolver --------------------------------------------------------------
def test_slow_lookup_does_not_delay_other_requests(env: Env, extra_grants: list[Grant]) -> None:
    release = threading.Event()

    def slow() -> list[str]:
        release.wait(60)
        return [UPSTREAM_IP]

    add(env, extra_grants, Grant(id="slow", host="slow.allowed.test", port=env.upstream.port))
    env.resolver.table["slow.allowed.test"] = slow
    result: list[int] = []

    def slow_request() -> None:
        with client(env) as c:
            result.append(c.get(url(env, "slow.allowed.test", "/")).status_code)

    t = threading.Thread(target=slow_request)
    t.start()
    try:
        for _ in range(200):
            if "slow.allowed.test" in env.resolver.queries:
                break
            time.sleep(0.05)
        assert "slow.allowed.test" in env.resolver.queries
        with client(env) as c:
            codes = [
                c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}").status_code
                for _ in range(3)
            ]
        assert codes == [200, 200, 200]
        assert t.is_alive() and not result  # the slow one is still waiting meanwhile
    finally:
        release.set()
        t.join(60)
    assert result == [200]


def test_lookup_past_its_timeout_denies_and_does_not_latch(
    env: Env, tight: Gateway, extra_grants: list[Grant]
) -> None:
    release = threading.Event()

    def stuck() -> list[str]:
        release.wait(30)
        return [UPSTREAM_IP]

    add(env, extra_grants, Grant(id="slow", host="slow.allowed.test", port=env.upstream.port))
    env.resolver.table["slow.allowed.test"] = stuck
    try:
        with client(env, tight) as c:
            r = c.get(url(env, "slow.allowed.test", "/"))
            assert r.status_code == 502  # no answer in time: denied, never failed open
            ok = [
                c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}").status_code
                for _ in range(3)
            ]
        assert ok == [200, 200, 200]
        assert not [s for s in env.upstream.requests if s.sni == "slow.allowed.test"]
    finally:
        release.set()


# 7. floor gaps through the gateway -------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "::127.0.0.1",
        "::ffff:0:127.0.0.1",
        "0.0.0.0",  # noqa: S104 - an answer under test
        "0.1.2.3",
        "100.64.0.1",
        "198.18.0.1",
        "224.0.0.1",
        "ff02::1",
        "fe80::1",
        "64:ff9b::7f00:1",
        "64:ff9b:1::7f00:1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "2001:db8::1",
        "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "fec0::1",
        "fd00::1",
    ],
)
def test_granted_name_resolving_into_special_space_is_refused(
    env: Env, extra_grants: list[Grant], answer: str
) -> None:
    add(
        env,
        extra_grants,
        Grant(id="floor", host="floor.allowed.test", port=env.upstream.port),
        [answer],
    )
    with client(env) as c:
        r = c.get(url(env, "floor.allowed.test", "/"))
    assert r.status_code == 502
    assert not env.upstream.connections and not env.loopback_upstream.connections
    assert "loopback, private or reserved" in json.dumps(
        [e.fields.get("reason") for e in env.recorder.of(Kind.EGRESS_DENIED)]
    )


# 8. the model API as a way out -------------------------------------------------------------
def _model(env: Env, extra: list[Grant], allow: tuple[str, ...] = ()) -> None:
    add(
        env,
        extra,
        Grant(
            id="model",
            host="model.allowed.test",
            port=env.upstream.port,
            methods=("POST",),
            paths=("/v1/messages", "/v1/messages/**"),
            credential="anthropic",
            inject_header="x-api-key",
            inject_format="{credential}",
            body_policy="anthropic-messages",
            allow_server_tools=allow,
        ),
    )


BASE = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {**BASE, "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
        ("/v1/messages", {**BASE, "tools": [{"type": "web_search_20250305", "name": "s"}]}),
        ("/v1/messages", {**BASE, "tools": [{"type": "code_execution_20250825", "name": "c"}]}),
        ("/v1/messages", {**BASE, "tools": [{"type": "future_tool_2031", "name": "f"}]}),
        ("/v1/messages", {**BASE, "tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]}),
        (
            "/v1/messages",
            {**BASE, "mcp_servers": [{"type": "url", "url": "https://evil.test/mcp", "name": "e"}]},
        ),
        ("/v1/messages", {**BASE, "container": {"skills": []}}),
        (
            "/v1/messages/batches",
            {
                "requests": [
                    {"custom_id": "a", "params": {**BASE, "tools": [{"type": "web_fetch_1"}]}}
                ]
            },
        ),
        ("/v1/messages/count_tokens", {**BASE, "tools": [{"type": "web_search_20250305"}]}),
    ],
)
def test_server_side_tools_are_refused(
    env: Env, extra_grants: list[Grant], path: str, body: dict[str, object]
) -> None:
    _model(env, extra_grants)
    with client(env) as c:
        r = c.post(url(env, "model.allowed.test", path), json=body)
    assert r.status_code == 403, r.text
    assert "not allowed by policy" in r.text
    assert_nothing_left(env)


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (b'{"tools": [], "tools": [{"type": "web_fetch_20250910"}]}', None),  # duplicate key
        (b"not json", None),
        (json.dumps({**BASE, "tools": [{"type": "web_fetch_20250910"}]}).encode(), "gzip"),
    ],
)
def test_disguised_model_bodies_are_refused(
    env: Env, extra_grants: list[Grant], raw: bytes, encoding: str | None
) -> None:
    _model(env, extra_grants)
    headers = {"content-type": "application/json"}
    if encoding:
        raw = gzip.compress(raw)
        headers["content-encoding"] = encoding
    with client(env) as c:
        r = c.post(url(env, "model.allowed.test", "/v1/messages"), content=raw, headers=headers)
    assert r.status_code == 403, r.text
    assert_nothing_left(env)


def test_client_tools_pass_and_policy_can_allow_a_server_tool(
    env: Env, extra_grants: list[Grant]
) -> None:
    _model(env, extra_grants, allow=("web_search",))
    client_tool = {"name": "read", "description": "d", "input_schema": {"type": "object"}}
    bodies = [
        {**BASE, "tools": [client_tool, {"type": "bash_20250124", "name": "bash"}]},
        {**BASE, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    ]
    with client(env) as c:
        codes = [
            c.post(
                url(env, "model.allowed.test", "/v1/messages"),
                json=b,
                headers={"anthropic-version": "2023-06-01"},
            ).status_code
            for b in bodies
        ]
    assert codes == [200, 200]
    names = {k for k, _ in env.upstream.requests[0].headers}
    assert "anthropic-version" in names  # the body policy's headers are forwarded


def test_credential_bound_wildcard_or_http_grant_cannot_exist(env: Env) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exact host"):
        Grant(id="w", host="*.allowed.test", credential="anthropic")
    with pytest.raises(ValidationError, match="in clear"):
        Grant(id="h", scheme="http", host="plain.allowed.test", credential="anthropic")


def test_connect_to_unknown_port_still_makes_no_query(env: Env) -> None:
    status, sock = connect_tunnel(env, "model.allowed.test:1")
    sock.close()
    assert status == 403
    assert_nothing_left(env)


def test_refused_and_reflected_requests_do_not_use_up_a_connection(env: Env) -> None:
    with client(env) as c:
        codes = [c.post(url(env, "api.allowed.test", "/v1/files"), content=b"{}").status_code]
        codes += [
            c.get(url(env, "echo.allowed.test", "/echo/reflect/raw")).status_code for _ in range(20)
        ]
        codes += [c.post(url(env, "api.allowed.test", "/v1/files"), content=b"{}").status_code]
        last = c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}")
    assert set(codes) == {403, 502}
    assert last.status_code == 200


def test_a_stuck_audit_log_does_not_stall_the_gateway(env: Env) -> None:
    assert env.bus is not None
    release = threading.Event()

    def stuck(event: object) -> None:
        release.wait(60)

    unsubscribe = env.bus.subscribe(stuck)
    try:
        with client(env) as c:
            codes = [
                c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}").status_code
                for _ in range(3)
            ]
            codes.append(c.post(url(env, "api.allowed.test", "/v1/files")).status_code)
        assert codes == [200, 200, 200, 403]
    finally:
        release.set()
        unsubscribe()
    for _ in range(200):  # delivered once the log recovers
        if len(env.recorder.events) >= 4:
            break
        time.sleep(0.05)
    kinds = sorted(str(e.kind) for e in env.recorder.events)
    assert kinds == ["egress.allowed"] * 3 + ["egress.denied"]


def test_an_endless_header_block_without_a_token_is_cut_off(env: Env) -> None:
    sock = socket.create_connection(env.gateway.address, timeout=10)
    sent = 0
    try:
        sock.sendall(b"GET http://plain.allowed.test/ HTTP/1.1\r\n")
        line = b"X-Fill: " + b"a" * 8000 + b"\r\n"
        while sent < 64 * 1024 * 1024:  # the gateway stops reading long before this
            sock.sendall(line)
            sent += len(line)
    except OSError:
        pass
    assert sent < 64 * 1024 * 1024
    assert _closed_within(sock, 10)
    sock.close()
    with client(env) as c:  # and everyone else is still served
        r = c.post(url(env, "api.allowed.test", "/v1/messages"), content=b"{}")
    assert r.status_code == 200


@pytest.mark.parametrize("grant_host", ["api.allowed.test", "plain.allowed.test"])
@pytest.mark.parametrize(
    "header",
    [
        ("X-Vendor", TOKEN_SHAPED),
        ("Signature", "ghp_" + "a" * 36),
        ("X-Amz-Date", "AKIAABCDEFGHIJKLMNOP"),
        ("From", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdHRhY2tlciJ9.c2ln"),
    ],
)
def test_token_shaped_header_values_are_refused_on_any_grant(
    env: Env, grant_host: str, header: tuple[str, str]
) -> None:
    with client(env) as c:
        if grant_host == "plain.allowed.test":  # a GET-only grant without a credential
            r = c.get(f"http://plain.allowed.test:{env.plain.port}/x", headers=dict([header]))
        else:
            r = c.post(url(env, grant_host, "/v1/messages"), headers=dict([header]), content=b"{}")
    assert r.status_code == 403
    assert "did not issue" in r.text
    assert_nothing_left(env)
    assert header[1] not in events_text(env)
