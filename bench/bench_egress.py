"""Added latency and throughput of HTTPS requests through the egress gateway vs direct.

Prints JSON: median and p95 latency (ms) direct and via the gateway, and requests/s at
concurrency 1 and 10. Upstream: a local TLS server on 127.0.0.10 with its own CA; the address
check is loosened for that one address through the Python API, as in the tests.

    .venv/bin/python bench/bench_egress.py [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import json
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cowork.host.egress.floor import address_allowed
from cowork.host.egress.gateway import Gateway
from cowork.host.egress.grants import Grant
from cowork.host.events import EventBus
from cowork.host.secrets import KeyringSecrets, MemoryKeyring

IP = "127.0.0.10"
NAME = "bench.allowed.test"


def pki(d: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    n = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ck = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(n("bench CA"))
        .issuer_name(n("bench CA"))
        .public_key(ck.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ck, hashes.SHA256())
    )
    k = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(n(NAME))
        .issuer_name(ca.subject)
        .public_key(k.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(ck, hashes.SHA256())
    )
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every response and swamp what is being measured.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def measure(make_client, url: str, n: int, concurrency: int) -> dict[str, float]:
    lat: list[float] = []
    local = threading.local()

    def one(_: int) -> None:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = make_client()
        t = time.perf_counter()
        r = c.get(url)
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(n)))
    wall = time.perf_counter() - start
    lat.sort()
    return {
        "median_ms": round(statistics.median(lat), 2),
        "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
        "req_per_s": round(n / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cowork-bench-"))
    ca, cert, key = pki(tmp)
    srv = http.server.ThreadingHTTPServer((IP, 0), Handler)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    srv.socket = sctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    grants = [Grant(id="bench", host=NAME, port=port)]
    gw = Gateway.start(
        lambda: grants,
        events=EventBus(),
        secrets=KeyringSecrets(backend=MemoryKeyring()),
        resolver=lambda h, p: [IP] if h == NAME else [],
        address_check=lambda a: a == IP or address_allowed(a),
        upstream_ca_file=ca,
    )
    try:
        gw_ca = tmp / "gw.pem"
        gw_ca.write_bytes(gw.ca_cert_pem)
        host, gport = gw.address
        proxy = f"http://cowork:{gw.proxy_token}@{host}:{gport}"
        url = f"https://{NAME}:{port}/"

        def via() -> httpx.Client:
            return httpx.Client(proxy=proxy, verify=ssl.create_default_context(cafile=str(gw_ca)))

        direct_url = f"https://{IP}:{port}/"

        def direct_client() -> httpx.Client:
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False  # connecting by IP; the certificate chain is still verified
            return httpx.Client(verify=ctx)

        out = {"requests": args.requests}
        for conc in (1, 10):
            out[f"direct_c{conc}"] = measure(direct_client, direct_url, args.requests, conc)
            out[f"gateway_c{conc}"] = measure(via, url, args.requests, conc)
            print(conc, "done", file=sys.stderr)
        out["added_median_ms_c1"] = round(
            out["gateway_c1"]["median_ms"] - out["direct_c1"]["median_ms"], 2
        )
        print(json.dumps(out, indent=2))
    finally:
        gw.stop()
        srv.shutdown()


if __name__ == "__main__":
    main()
