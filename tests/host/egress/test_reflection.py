from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from cowork.host.egress.reflection import MAX_EXPANDED, Needles, reflects

SECRET = "sk-ant-api03-Zx81Qp0LmN4vT7rB2yKc9WdE"
RAW = SECRET.encode()


@pytest.mark.parametrize(
    "data",
    [
        RAW,
        RAW.upper(),
        SECRET.swapcase().encode(),
        b"x=" + SECRET.replace("-", "%2D").encode(),
        b"".join(b"%%%02X" % b for b in RAW),
        RAW.hex().encode(),
        RAW.hex().upper().encode(),
        base64.b64encode(RAW),
        base64.b64encode(b"a" + RAW),
        base64.b64encode(b"ab" + RAW),
        base64.urlsafe_b64encode(b"a" + RAW),
        SECRET.encode("utf-16-le"),
        SECRET.upper().encode("utf-16-be"),
        "".join(f"\\u{ord(c):04x}" for c in SECRET).encode(),
        "".join(f"&#x{ord(c):x};" for c in SECRET).encode(),
        SECRET[13:30].encode(),  # a window of the random part
        gzip.compress(gzip.compress(RAW)),
        zlib.compress(base64.b64encode(b"a" + RAW)),
    ],
)
def test_detected(data: bytes) -> None:
    assert reflects([b"prefix " + data + b" suffix"], Needles(SECRET))


@pytest.mark.parametrize(
    "data",
    [
        b"sk-ant-api03-",  # the readable prefix alone
        b"hello world",
        SECRET[13:22].encode(),  # too short a window
        base64.b32encode(RAW),  # not a detected encoding (documented limit)
    ],
)
def test_not_detected(data: bytes) -> None:
    assert not reflects([data], Needles(SECRET))


def test_a_bomb_counts_as_reflecting() -> None:
    bomb = gzip.compress(b"\0" * (MAX_EXPANDED + 10))
    assert reflects([bomb], Needles(SECRET))
