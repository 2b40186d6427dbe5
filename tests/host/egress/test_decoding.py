"""Bounded decoding of content codings: the module itself, then decompression bombs against
the real gateway (a real TLS upstream on loopback serving them to a credential-bound grant,
whose responses the gateway must decode to look for the credential).

The gateway's peak memory is read from the kernel (``VmHWM``, reset through ``clear_refs``
before each attack): a bomb decoded without a bound would raise it by its full size.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import ssl
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard

from cowork.host.egress import decoding
from cowork.host.egress.grants import Grant
from cowork.host.events import Kind

from .conftest import SECRET, UPSTREAM_IP, Env, Upstream, server_context

MIB = 1024 * 1024
LIMIT = MIB  # the test gateway's max_body_mib
BOMB = 512 * MIB  # what each bomb expands to
#: Allowed growth of the gateway's peak memory during one attack (the bound plus slack);
#: a bomb decoded in one piece would add at least BOMB.
PEAK_SLACK = 160 * MIB


# --- the module ------------------------------------------------------------------------------
@cache
def zeros_gzip(n: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    return b"".join(c.compress(block) for _ in range(n // MIB)) + c.flush()


@cache
def zeros_br(n: int) -> bytes:
    return brotli.compress(bytes(n), quality=5)


@cache
def zeros_zstd(n: int) -> bytes:
    c = zstandard.ZstdCompressor(level=3).compressobj()
    block = bytes(MIB)
    return b"".join(c.compress(block) for _ in range(n // MIB)) + c.flush()


SAMPLE = os.urandom(4096) + b"plain text " * 20000

ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "identity": lambda b: b,
}


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_each_coding_round_trips(coding: str) -> None:
    assert decoding.decode_body(ENCODERS[coding](SAMPLE), coding.upper(), 10 * MIB) == SAMPLE


def test_raw_deflate_and_gzip_members_and_padding() -> None:
    assert decoding.decode_one(zlib.compress(SAMPLE)[2:-4], "deflate", 10 * MIB) == SAMPLE
    two = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0\0\0"
    assert decoding.decode_one(two, "gzip", 100) == b"one two"


def test_several_codings_are_undone_last_first() -> None:
    data = brotli.compress(gzip.compress(SAMPLE))
    assert decoding.decode_body(data, "gzip, br", 10 * MIB) == SAMPLE
    with pytest.raises(decoding.Undecodable, match="more than 3"):
        decoding.decode_body(data, "identity, identity, gzip, br", 10 * MIB)


@pytest.mark.parametrize(
    ("coding", "bomb"),
    [("gzip", lambda: zeros_gzip(64 * MIB)), ("br", lambda: zeros_br(64 * MIB)),
     ("zstd", lambda: zeros_zstd(64 * MIB)), ("identity", lambda: bytes(LIMIT + 1))],
)  # fmt: skip
def test_a_bomb_stops_at_the_limit(coding: str, bomb) -> None:
    with pytest.raises(decoding.TooLarge):
        decoding.decode_one(bomb(), coding, LIMIT)


def test_the_limit_is_exact() -> None:
    assert decoding.decode_one(gzip.compress(bytes(LIMIT)), "gzip", LIMIT) == bytes(LIMIT)
    with pytest.raises(decoding.TooLarge):
        decoding.decode_one(gzip.compress(bytes(LIMIT + 1)), "gzip", LIMIT)
    # Each of several codings is bounded, the inner one included.
    with pytest.raises(decoding.TooLarge):
        decoding.decode_body(gzip.compress(zeros_gzip(64 * MIB)), "gzip, gzip", LIMIT)


@pytest.mark.parametrize(
    ("data", "coding"),
    [(b"not gzip", "gzip"), (gzip.compress(SAMPLE)[:-9], "gzip"), (b"\x00\x01", "deflate"),
     (brotli.compress(SAMPLE)[:-3], "br"), (b"abc", "zstd"), (bz2.compress(b"x"), "bz2"),
     (b"eA==", "base64"), (b"x", "zlib"), (b"x", "compress")],
)  # fmt: skip
def test_invalid_or_unknown_codings_are_undecodable(data: bytes, coding: str) -> None:
    with pytest.raises(decoding.Undecodable):
        decoding.decode_one(data, coding, 10 * MIB)


def test_a_zstd_window_larger_than_http_allows_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    big = c.compress(os.urandom(64) * 1000) + c.flush()
    assert zstandard.get_frame_parameters(big).window_size == 128 * MIB
    with pytest.raises(decoding.Undecodable):
        decoding.decode_one(big, "zstd", 10 * MIB)


def test_brotli_is_fed_in_small_pieces_when_the_budget_is_small() -> None:
    assert decoding.brotli_piece(LIMIT) == 8
    assert decoding.brotli_piece(64 * MIB) == 32
    assert decoding.brotli_piece(1 << 40) == 64 * 1024


# --- against the real gateway ----------------------------------------------------------------
class BombUpstream(Upstream):
    """Answers ``/b/<name>`` with a prepared body and headers."""

    routes: dict[str, tuple[list[tuple[str, str]], bytes]] = {}

    def _respond(self, conn, method, target, headers, body) -> None:  # type: ignore[no-untyped-def]
        extra, payload = self.routes.get(target, ([], b"ok"))
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra)
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        conn.sendall(head.encode("latin-1") + payload)


@pytest.fixture(scope="module")
def bombs(egress_env: Env) -> Iterator[BombUpstream]:
    pki_dir = egress_env.gateway_ca.parent
    up = BombUpstream(UPSTREAM_IP, server_context(pki_dir / "cert.pem", pki_dir / "key.pem"))
    grant = Grant(
        id="bombs", host="echo.allowed.test", port=up.port, methods=("GET", "POST"),
        paths=("/b/**",), credential="anthropic",
    )  # fmt: skip
    egress_env.grants.append(grant)
    try:
        yield up
    finally:
        egress_env.grants.remove(grant)
        up.close()


def _gateway_pid(env: Env) -> int:
    return int(env.gateway._proc.pid)


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _client(env: Env) -> httpx.Client:
    host, port = env.gateway.address
    ctx = ssl.create_default_context(cafile=str(env.gateway_ca))
    return httpx.Client(
        proxy=f"http://cowork:{env.gateway.proxy_token}@{host}:{port}", verify=ctx, timeout=60
    )


def _events(env: Env) -> str:
    return json.dumps([e.to_json() for e in env.recorder.events])


def _serve(up: BombUpstream, env: Env, name: str, headers, payload: bytes) -> str:
    assert len(payload) < LIMIT  # within the raw body limit: only decoding could blow up
    up.routes[f"/b/{name}"] = (headers, payload)
    return f"https://echo.allowed.test:{up.port}/b/{name}"


RESPONSE_BOMBS = {
    "gzip": lambda: ([("Content-Encoding", "gzip")], zeros_gzip(BOMB)),
    "br": lambda: ([("Content-Encoding", "br")], zeros_br(BOMB)),
    "zstd": lambda: ([("Content-Encoding", "zstd")], zeros_zstd(BOMB)),
    # Double encoding, both named in the header: each layer is bounded.
    "gzip-gzip": lambda: ([("Content-Encoding", "gzip, gzip")], gzip.compress(zeros_gzip(BOMB))),
    # Two headers, as two codings.
    "two-headers": lambda: (
        [("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")],
        gzip.compress(zeros_gzip(BOMB)),
    ),
}


@pytest.mark.parametrize("kind", sorted(RESPONSE_BOMBS))
def test_a_response_bomb_is_refused_without_expanding_it(
    env: Env, bombs: BombUpstream, kind: str
) -> None:
    headers, payload = RESPONSE_BOMBS[kind]()
    target = _serve(bombs, env, kind, headers, payload)
    pid = _gateway_pid(env)
    _reset_peak(pid)
    before = _rss(pid)
    with _client(env) as c:
        r = c.get(target, headers={"Accept-Encoding": "identity"})
    grew = _peak(pid) - before
    print(f"\n{kind}: {len(payload)} bytes expanding to {BOMB}; gateway peak grew {grew} bytes")
    assert r.status_code == 502, r.text
    assert "expands beyond the gateway's body limit" in r.text
    assert grew < PEAK_SLACK
    [denied] = [e for e in env.recorder.of(Kind.EGRESS_DENIED) if e.fields.get("grant") == "bombs"]
    assert "expands beyond" in denied.fields["reason"]
    assert SECRET not in r.text + _events(env)


def test_a_bomb_nested_inside_the_body_is_refused_without_expanding_it(
    env: Env, bombs: BombUpstream
) -> None:
    """A small gzip body whose content is a brotli bomb: the reflection check looks inside
    nested compression, and that look is bounded too (br and zstd included)."""
    for inner in (zeros_br(BOMB), zeros_zstd(BOMB)):
        payload = gzip.compress(inner)
        target = _serve(bombs, env, "nested", [("Content-Encoding", "gzip")], payload)
        pid = _gateway_pid(env)
        _reset_peak(pid)
        before = _rss(pid)
        with _client(env) as c:
            r = c.get(target, headers={"Accept-Encoding": "identity"})
        grew = _peak(pid) - before
        print(f"\nnested: {len(payload)} bytes; gateway peak grew {grew} bytes")
        assert r.status_code == 502, r.text
        assert grew < PEAK_SLACK


@pytest.mark.parametrize("coding", ["bz2", "zlib", "base64", "gzip, gzip, gzip, gzip"])
def test_a_coding_the_gateway_does_not_decode_is_refused(
    env: Env, bombs: BombUpstream, coding: str
) -> None:
    """mitmproxy would hand these to Python's codecs (bz2 and zlib without a bound)."""
    payload = {"bz2": bz2.compress(bytes(BOMB // 4))}.get(coding, b"eyJ4IjogMX0=")
    target = _serve(bombs, env, "other", [("Content-Encoding", coding)], payload)
    pid = _gateway_pid(env)
    _reset_peak(pid)
    before = _rss(pid)
    with _client(env) as c:
        r = c.get(target, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 502
    assert "could not be checked" in r.text
    assert _peak(pid) - before < PEAK_SLACK


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
def test_a_normal_compressed_response_passes_and_is_still_scrubbed(
    env: Env, bombs: BombUpstream, coding: str
) -> None:
    clean = json.dumps({"note": "nothing to see", "pad": "x" * 5000}).encode()
    target = _serve(bombs, env, f"clean-{coding}", [("Content-Encoding", coding)],
                    ENCODERS[coding](clean))  # fmt: skip
    with _client(env) as c:
        r = c.get(target)
    assert r.status_code == 200, r.text
    assert r.content == clean  # the client undid the coding the gateway passed through
    leak = json.dumps({"note": SECRET.upper()}).encode()
    target = _serve(bombs, env, f"leak-{coding}", [("Content-Encoding", coding)],
                    ENCODERS[coding](leak))  # fmt: skip
    with _client(env) as c:
        r = c.get(target)
    assert r.status_code == 502
    assert "reflected the injected credential" in r.text
    assert SECRET.upper() not in r.text and SECRET not in _events(env)


def test_a_request_bomb_from_the_guest_is_refused_before_the_upstream(
    env: Env, bombs: BombUpstream
) -> None:
    body = zeros_gzip(BOMB)
    bombs.reset()
    pid = _gateway_pid(env)
    _reset_peak(pid)
    before = _rss(pid)
    with _client(env) as c:
        r = c.post(
            f"https://echo.allowed.test:{bombs.port}/b/upload",
            content=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    assert r.status_code == 413, r.text
    assert "request body expands beyond" in r.text
    assert _peak(pid) - before < PEAK_SLACK
    assert bombs.requests == [] and bombs.connections == []
