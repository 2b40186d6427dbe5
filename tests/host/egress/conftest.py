"""Real TLS upstreams on loopback, a recording fake resolver, and a running gateway.

The upstreams listen on 127.0.0.10 (and 127.0.0.20 for plain HTTP). The only loosening of
the floor is the address check passed through the gateway's Python API, which accepts exactly
those two addresses and defers to the real floor for everything else, so "resolves to
loopback" (127.0.0.1) is still refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import gzip
import json
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cowork.host.egress.floor import address_allowed
from cowork.host.egress.gateway import Gateway, GatewaySettings
from cowork.host.egress.grants import Grant
from cowork.host.events import EventBus, Recorder
from cowork.host.secrets import KeyringSecrets, MemoryKeyring

UPSTREAM_IP = "127.0.0.10"
PLAIN_IP = "127.0.0.20"
SECRET = "sk-real-7f3a9c1e5b2d4f6a8c0e"
ATTACKER = "sk-attacker-0000"
NAMES = [
    "api.allowed.test",
    "echo.allowed.test",
    "ws.allowed.test",
    "loopback.allowed.test",
    "private.allowed.test",
    "rebind.allowed.test",
    "self.allowed.test",
    "evil.test",
    "ro.allowed.test",
    "slow.allowed.test",
    "model.allowed.test",
    "floor.allowed.test",
]


# --- certificates ---------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class UpstreamPKI:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> UpstreamPKI:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test upstream CA"))
        .issuer_name(_name("test upstream CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("api.allowed.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = UpstreamPKI(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The TLS server side of a test upstream, presenting ``cert_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


# --- upstream server --------------------------------------------------------------------------
@dataclass
class Seen:
    """One request as the upstream parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    sni: str | None


class Upstream:
    """A threaded HTTP/1.1 server (TLS or plain) that records every connection and request.

    ``/echo`` reflects the request headers in the body and in ``x-echo-*`` response headers;
    ``/ws`` answers an upgrade with 101; everything else answers 200 "ok".
    """

    def __init__(self, ip: str, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.sock = socket.create_server((ip, 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.connections: list[tuple[str, int]] = []
        self.requests: list[Seen] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.address[1]

    def reset(self) -> None:
        with self._lock:
            self.connections.clear()
            self.requests.clear()
            self.raw.clear()

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections.append(peer[:2])
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        sni_box: list[str | None] = [None]
        try:
            conn.settimeout(10)
            if self.tls is not None:
                ctx = self.tls

                def cb(sslobj: ssl.SSLObject, name: str | None, _c: Any) -> None:
                    sni_box[0] = name

                ctx.sni_callback = cb  # type: ignore[assignment]
                conn = ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb")
            while True:
                line = f.readline(65536)
                if not line:
                    return
                raw = bytearray(line)
                method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = f.readline(65536)
                    raw += h
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers.append((k.strip().lower(), v.strip()))
                hd = dict(headers)
                body = b""
                if "content-length" in hd:
                    body = f.read(int(hd["content-length"]))
                elif hd.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(f.readline().strip(), 16)
                        chunk = f.read(size + 2)[:size]
                        body += chunk
                        if size == 0:
                            break
                raw += body
                with self._lock:
                    self.raw.append(bytes(raw))
                    self.requests.append(Seen(method, target, headers, body, sni_box[0]))
                self._respond(conn, method, target, headers, body)
        except (OSError, ValueError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _respond(
        self,
        conn: socket.socket,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        extra: list[tuple[str, str]] = []
        status = "200 OK"
        if target.startswith("/echo/reflect/"):
            cred = dict(headers).get("authorization", "").removeprefix("Bearer ")
            mode = target.split("/")[3].split("?")[0]
            payload, extra = reflect(cred, mode)
        elif target.startswith("/echo"):
            payload = json.dumps({"headers": headers, "body": body.decode("latin-1")}).encode()
            extra = [(f"x-echo-{k}", v) for k, v in headers]
        elif target.startswith("/ws"):
            status = "101 Switching Protocols"
            key = dict(headers).get("sec-websocket-key", "")
            import hashlib

            accept = base64.b64encode(
                hashlib.sha1(  # noqa: S324 - the websocket handshake mandates SHA-1
                    (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
                ).digest()
            ).decode()
            extra = [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept),
            ]
            payload = b""
        else:
            payload = b"ok"
        head = f"HTTP/1.1 {status}\r\n"
        for k, v in extra:
            head += f"{k}: {v}\r\n"
        if not status.startswith("101"):
            head += f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n"
        head += "\r\n"
        conn.sendall(head.encode("latin-1") + payload)
        if status.startswith("101"):
            # Hold the connection a moment so the proxy can relay frames, then close.
            conn.settimeout(2)
            try:
                data = conn.recv(65536)
                if data:
                    conn.sendall(b"\x81\x02hi")
            except OSError:
                pass
            raise OSError("websocket done")


def reflect(cred: str, mode: str) -> tuple[bytes, list[tuple[str, str]]]:
    """A body (and headers) that hand ``cred`` back in the transform ``mode``."""
    from urllib.parse import quote

    raw = cred.encode()
    wrap = b'{"note": "%s"}'
    if mode == "raw":
        return wrap % raw, []
    if mode == "header":
        return b"{}", [("x-debug", cred)]
    if mode == "reason":
        return b"{}", [("x-trace", quote(cred, safe=""))]
    if mode == "upper":
        return wrap % raw.upper(), []
    if mode == "swapcase":
        return wrap % cred.swapcase().encode(), []
    if mode == "pct":
        return wrap % quote(cred, safe="").encode(), []
    if mode == "pct-all":
        return wrap % "".join(f"%{b:02x}" for b in raw).encode(), []
    if mode.startswith("b64-"):
        k = int(mode[-1])
        return wrap % base64.b64encode(b"x" * k + raw), []
    if mode.startswith("b64url-"):
        k = int(mode[-1])
        return wrap % base64.urlsafe_b64encode(b"xy"[:k] + raw).rstrip(b"="), []
    if mode == "hex":
        return wrap % binascii.hexlify(raw), []
    if mode == "HEX":
        return wrap % binascii.hexlify(raw).upper(), []
    if mode == "utf16le":
        return cred.encode("utf-16-le"), []
    if mode == "utf16be":
        return cred.upper().encode("utf-16-be"), []
    if mode == "jsonu":
        return wrap % "".join(f"\\u{ord(c):04x}" for c in cred).encode(), []
    if mode == "jsonu-mixed":
        return wrap % "".join(
            f"\\u{ord(c):04X}" if i % 2 else c for i, c in enumerate(cred)
        ).encode(), []
    if mode == "html":
        return wrap % "".join(f"&#{ord(c)};" for c in cred).encode(), []
    if mode == "half":
        return wrap % raw[len(raw) // 2 :], []
    if mode == "gzip":
        return gzip.compress(wrap % raw), []
    if mode == "gzip-gzip":
        return gzip.compress(gzip.compress(wrap % raw)), []
    if mode == "deflate":
        return zlib.compress(wrap % raw), []
    if mode == "gzip-b64":
        return gzip.compress(wrap % base64.b64encode(b"x" + raw)), []
    if mode == "br":
        import brotli

        return brotli.compress(wrap % raw), []
    if mode == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(wrap % raw), []
    if mode == "outer-gzip":
        return gzip.compress(gzip.compress(wrap % raw)), [("Content-Encoding", "gzip")]
    if mode == "clean":
        return b'{"note": "nothing to see"}', []
    raise ValueError(mode)


# --- resolver ---------------------------------------------------------------------------------
class FakeResolver:
    """Answers from a table; records every query. A list of lists answers in turn (rebinding)."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.queries: list[str] = []
        self._lock = threading.Lock()
        self._turn: dict[str, int] = {}

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.queries.append(host)
            answer = self.table.get(host, [])
        if callable(answer):
            return list(answer())
        with self._lock:
            if answer and isinstance(answer[0], list):
                i = self._turn.get(host, 0)
                self._turn[host] = i + 1
                return list(answer[min(i, len(answer) - 1)])
            return list(answer)


def test_address_check(address: str) -> bool:
    """The floor, plus exactly the two test upstream addresses."""
    return address in (UPSTREAM_IP, PLAIN_IP) or address_allowed(address)


test_address_check.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Env:
    gateway: Gateway
    upstream: Upstream
    plain: Upstream
    loopback_upstream: Upstream
    resolver: FakeResolver
    grants: list[Grant]
    recorder: Recorder
    keyring: MemoryKeyring
    gateway_ca: Path
    fault: list[bool] = field(default_factory=lambda: [False])
    start_gateway: Callable[[GatewaySettings], Gateway] | None = None
    bus: EventBus | None = None

    def reset(self) -> None:
        for u in (self.upstream, self.plain, self.loopback_upstream):
            u.reset()
        self.resolver.queries.clear()
        self.recorder.events.clear()

    @property
    def no_upstream_activity(self) -> bool:
        return (
            not self.upstream.connections
            and not self.plain.connections
            and not self.loopback_upstream.connections
            and not self.resolver.queries
        )

    def proxy_url(self, token: str | None = None) -> str:
        host, port = self.gateway.address
        tok = self.gateway.proxy_token if token is None else token
        return f"http://cowork:{tok}@{host}:{port}"


def default_grants(port: int, plain_port: int) -> list[Grant]:
    return [
        Grant(
            id="api-messages",
            host="api.allowed.test",
            port=port,
            methods=("POST", "GET"),
            paths=("/v1/messages", "/v1/messages/*"),
            credential="anthropic",
            inject_header="x-api-key",
            inject_format="{credential}",
        ),
        Grant(
            id="echo",
            host="echo.allowed.test",
            port=port,
            methods=("GET", "POST"),
            paths=("/echo", "/echo/**"),
            credential="anthropic",
        ),
        Grant(id="ws", host="ws.allowed.test", port=port, paths=("/ws",), websocket=True),
        Grant(id="loopback", host="loopback.allowed.test", port=port),
        Grant(id="private", host="private.allowed.test", port=port),
        Grant(id="rebind", host="rebind.allowed.test", port=port),
        Grant(id="plain", scheme="http", host="plain.allowed.test", port=plain_port),
    ]


@pytest.fixture(scope="session")
def egress_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("egress")
    pki = make_pki(tmp)
    upstream = Upstream(UPSTREAM_IP, server_context(pki.cert_file, pki.key_file))
    # A service on host loopback at 127.0.0.1 with the same port as the granted upstream:
    # reached only if the gateway connected to a loopback answer.
    try:
        loopback_upstream = Upstream("127.0.0.1", server_context(pki.cert_file, pki.key_file))
    except OSError:
        pytest.skip("cannot listen on 127.0.0.1")
    plain = Upstream(PLAIN_IP, None)
    resolver = FakeResolver(
        {
            "api.allowed.test": [UPSTREAM_IP],
            "echo.allowed.test": [UPSTREAM_IP],
            "ws.allowed.test": [UPSTREAM_IP],
            "plain.allowed.test": [PLAIN_IP],
            "loopback.allowed.test": ["127.0.0.1"],
            "private.allowed.test": ["10.1.2.3"],
            "rebind.allowed.test": [[UPSTREAM_IP], ["127.0.0.1"]],
        }
    )
    kr = MemoryKeyring()
    secrets = KeyringSecrets(backend=kr)
    secrets.set("anthropic", SECRET)
    grants = default_grants(upstream.port, plain.port)
    bus = EventBus(session="test")
    recorder = Recorder()
    bus.subscribe(recorder)
    fault = [False]

    def provider() -> list[Grant]:
        if fault[0]:
            raise RuntimeError("injected fault in the grants provider")
        return list(grants)

    def start_gateway(settings: GatewaySettings) -> Gateway:
        """Another gateway on the same upstreams, resolver, keyring and events."""
        return Gateway.start(
            provider,
            events=bus,
            secrets=secrets,
            resolver=resolver,
            address_check=test_address_check,
            settings=settings,
            upstream_ca_file=pki.ca_file,
            runtime_dir=tmp / "run",
        )

    gw = start_gateway(GatewaySettings(allow_websockets=True, max_body_mib=1))
    ca_path = tmp / "gateway-ca.pem"
    ca_path.write_bytes(gw.ca_cert_pem)
    env = Env(
        gw,
        upstream,
        plain,
        loopback_upstream,
        resolver,
        grants,
        recorder,
        kr,
        ca_path,
        fault,
        start_gateway,
        bus,
    )
    try:
        yield env
    finally:
        gw.stop()
        for u in (upstream, plain, loopback_upstream):
            u.close()


@pytest.fixture
def env(egress_env: Env) -> Iterator[Env]:
    egress_env.reset()
    egress_env.fault[0] = False
    yield egress_env
    egress_env.fault[0] = False


# --- raw client helpers ----------------------------------------------------------------------
def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"cowork:{token}".encode()).decode()


def read_response(sock: socket.socket | ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (headers + Content-Length body) from a socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head:
        return 0, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def connect_tunnel(
    env: Env, authority: str, token: str | None = None, extra: str = ""
) -> tuple[int, socket.socket]:
    """Send CONNECT; return (status, socket)."""
    sock = socket.create_connection(env.gateway.address, timeout=10)
    tok = env.gateway.proxy_token if token is None else token
    auth = f"Proxy-Authorization: {basic(tok)}\r\n" if token != "" else ""
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}{extra}\r\n".encode())
    status, _, _ = read_response(sock)
    return status, sock


def tls_wrap(
    env: Env, sock: socket.socket, sni: str | None, alpn: list[str] | None = None
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(env.gateway_ca))
    if sni is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(sock, server_hostname=sni)


def tunnel_request(
    env: Env,
    host: str,
    raw_request: bytes,
    sni: str | None = None,
    connect_host: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """CONNECT to host:port, TLS with SNI, send raw bytes, read one response."""
    port = env.upstream.port
    status, sock = connect_tunnel(env, f"{connect_host or host}:{port}")
    if status != 200:
        sock.close()
        raise AssertionError(f"CONNECT answered {status}")
    tls = tls_wrap(env, sock, sni if sni is not None else host)
    try:
        tls.sendall(raw_request)
        return read_response(tls)
    finally:
        tls.close()


Fetch = Callable[..., Any]
