"""Whether a response reflects an injected secret, in any form cowork can detect.

Pure functions; the decompressors are passed in by the caller (the addon owns mitmproxy, which
brings brotli and zstd). The gateway refuses a response that reflects the secret instead of
editing it: a 502 reaches the guest, never a partly scrubbed body.

Detected, in response headers, trailers, the (decoded) body and websocket messages:

- the raw secret, and any window of its random part (what follows a readable prefix such as
  ``sk-ant-api03-``) of half that part's length or 12 characters, whichever is longer, in
  any letter case;
- percent-encoding (either hex case, ``+`` or ``%20`` for space), JSON ``\\u``/``\\x``
  escapes and HTML character references, also mixed and nested up to three levels;
- hexadecimal (either case);
- base64 and base64url, at each of the three alignments (a secret inside a longer encoded
  value);
- UTF-16 (little and big endian), in any letter case;
- any of the above inside a body that is itself compressed again (gzip, zlib/deflate,
  brotli, zstd), nested up to three levels, up to :data:`MAX_EXPANDED` bytes; a body that
  expands beyond that is treated as reflecting (refused).

Not detected (limits, documented in the README): encryption or any keyed transform, other
encodings (base32, base85, decimal character codes, ROT13, XOR, reversed text), a secret split
across several responses or websocket messages, or interleaved with other characters, images,
and windows of the random part shorter than described above. Refusing reflection is a second
line; the first is that credentials are bound to hosts that do not echo them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote, quote_plus

#: Most bytes a body may expand to while looking inside nested compression.
MAX_EXPANDED = 64 * 1024 * 1024
MAX_NESTING = 3
MIN_WINDOW = 12
_PREFIX_RE = re.compile(r"^(?:[A-Za-z]+[0-9]*[-_])+")

Decompressor = Callable[[bytes], bytes]
log = logging.getLogger(__name__)


def _zlib(wbits: int) -> Decompressor:
    def fn(data: bytes) -> bytes:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, MAX_EXPANDED + 1)
        if len(out) > MAX_EXPANDED:
            raise TooLargeToCheck("compressed response expands too far to check")
        return out

    return fn


#: The decompressors in the standard library, bounded; callers may add brotli and zstd.
STDLIB_DECOMPRESSORS: dict[str, Decompressor] = {"gzip": _zlib(31), "deflate": _zlib(15)}


class TooLargeToCheck(ValueError):
    """A nested compressed body expands beyond :data:`MAX_EXPANDED`."""


def _b64_windows(raw: bytes) -> set[bytes]:
    """The base64 (and base64url) characters fully determined by ``raw`` at each alignment."""
    out: set[bytes] = set()
    n = len(raw)
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw + b"\0\0")
        start = -(-8 * k // 6)  # ceil
        end = (8 * (k + n)) // 6
        piece = enc[start:end]
        if len(piece) >= 4:
            out.add(piece)
            out.add(piece.replace(b"+", b"-").replace(b"/", b"_"))
    return out


class Needles:
    """Everything searched for, prepared once per secret."""

    def __init__(self, secret: str) -> None:
        raw = secret.encode()
        windows: set[str] = {secret}
        m = _PREFIX_RE.match(secret)
        rand = secret[m.end() :] if m else secret
        size = max(MIN_WINDOW, len(rand) // 2)
        if len(rand) > size:
            windows.update(rand[i : i + size] for i in range(0, len(rand) - size + 1))
        caseless: set[bytes] = set()
        for w in windows:
            wb = w.encode()
            caseless.update(
                {
                    wb.lower(),
                    quote(w, safe="").encode().lower(),
                    quote_plus(w, safe="").encode().lower(),
                    binascii.hexlify(wb),
                    w.lower().encode("utf-16-le"),
                    w.lower().encode("utf-16-be"),
                }
            )
        self.caseless = sorted((c for c in caseless if c), key=len)
        self.exact = sorted(_b64_windows(raw), key=len)

    def found_in(self, data: bytes) -> bool:
        if any(e in data for e in self.exact):
            return True
        low = data.lower()
        if any(c in low for c in self.caseless):
            return True
        # UTF-16 text lower-cased byte-wise keeps its zero bytes, so the search above holds.
        unescaped = _unescape(data)
        if unescaped != data:
            low = unescaped.lower()
            if any(c in low for c in self.caseless) or any(e in unescaped for e in self.exact):
                return True
        return False


_ESCAPES = re.compile(
    rb"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})|&#[xX]([0-9a-fA-F]{1,6});|&#([0-9]{1,7});"
)


def _unescape(data: bytes) -> bytes:
    """``data`` with JSON, percent and HTML escapes undone, repeatedly (three levels)."""

    def one(m: re.Match[bytes]) -> bytes:
        u, x, p, hx, dec = m.groups()
        if u is not None:
            cp = int(u, 16)
        elif x is not None:
            cp = int(x, 16)
        elif p is not None:
            return bytes([int(p, 16)])
        elif hx is not None:
            cp = int(hx, 16)
        else:
            cp = int(dec)
        try:
            return chr(cp).encode("utf-8", errors="replace")
        except (ValueError, OverflowError):
            return b"?"

    for _ in range(3):
        new = _ESCAPES.sub(one, data)
        if new == data:
            break
        data = new
    return data


_MAGIC = re.compile(rb"\x1f\x8b\x08|\x28\xb5\x2f\xfd|\x78[\x01\x5e\x9c\xda]")
#: Most places inside one part where a compressed stream is tried.
MAX_CANDIDATES = 32


def _candidates(data: bytes) -> list[tuple[str, bytes]]:
    """(kind, data from there) for every place a compressed stream may start, at any offset."""
    out: list[tuple[str, bytes]] = []
    for m in _MAGIC.finditer(data):
        kind = {b"\x1f": "gzip", b"\x28": "zstd"}.get(m.group()[:1], "deflate")
        out.append((kind, data[m.start() :]))
        if len(out) >= MAX_CANDIDATES:
            break
    # Brotli has no magic number: try it on a whole part that does not look like text.
    if data and not data[:64].isascii():
        out.append(("br", data))
    return out


def _expansions(
    data: bytes, decompressors: Mapping[str, Decompressor], depth: int, budget: list[int]
) -> Iterable[bytes]:
    if depth >= MAX_NESTING:
        return
    for kind, tail in _candidates(data):
        fn = decompressors.get(kind)
        if fn is None:
            continue
        try:
            inner = fn(tail)
        except TooLargeToCheck:
            raise
        except Exception:  # not actually compressed this way
            log.debug("not %s-compressed", kind)
            continue
        budget[0] -= len(inner)
        if budget[0] < 0:
            raise TooLargeToCheck("compressed response expands too far to check")
        yield inner
        yield from _expansions(inner, decompressors, depth + 1, budget)


def reflects(
    parts: Iterable[bytes],
    needles: Needles,
    decompressors: Mapping[str, Decompressor] | None = None,
) -> bool:
    """True when any of ``parts`` holds the secret in a detected form. Fails closed:
    a body too large to expand counts as reflecting."""
    budget = [MAX_EXPANDED]
    decompressors = {**STDLIB_DECOMPRESSORS, **(decompressors or {})}
    for part in parts:
        if needles.found_in(part):
            return True
        try:
            for inner in _expansions(part, decompressors, 0, budget):
                if needles.found_in(inner):
                    return True
        except TooLargeToCheck:
            return True
    return False
