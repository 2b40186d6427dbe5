"""Bounded decoding of HTTP content codings: gzip, deflate, br and zstd.

mitmproxy's own decoding (``Message.get_content``) expands a body in one call with no limit
on the output, and hands any coding it does not know to Python's ``codecs`` (which include
``zlib`` and ``bz2``): a few kilobytes from a granted upstream, or from the guest, could
expand to gigabytes inside the gateway. The addon therefore never lets mitmproxy decode; it
decodes here, incrementally, and stops as soon as the output passes the limit.

Contract:
- :func:`decode_body` undoes a ``Content-Encoding`` header value (a list of codings, applied
  in order, undone last first; at most :data:`MAX_CODINGS`) and returns the decoded bytes,
  never more than ``limit``;
- it raises :class:`TooLarge` as soon as the decoded output would pass ``limit`` (each coding
  is bounded by the same limit), :class:`Undecodable` for a coding outside
  :data:`CODINGS` or data that is not valid in its coding (truncated streams included);
- memory use while decoding is bounded: gzip and deflate decode in steps of at most
  :data:`STEP` bytes of output; zstd reads at most :data:`STEP` bytes at a time with a window
  of at most :data:`ZSTD_MAX_WINDOW`; brotli's Python binding has no output bound per call, so
  its input is fed in pieces of :func:`brotli_piece` bytes, small enough that one piece
  cannot expand past the limit by more than about 32 MiB (a brotli meta-block holds at most
  16 MiB and takes several bytes to describe).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import brotli
import zstandard

#: Content codings cowork can decode (``x-gzip`` is gzip's old name).
CODINGS = ("identity", "gzip", "x-gzip", "deflate", "br", "zstd")
#: Most codings in one ``Content-Encoding`` value (``gzip, gzip`` is two).
MAX_CODINGS = 3
#: Most output bytes produced by one decompression step.
STEP = 256 * 1024
#: Largest zstd window accepted (RFC 9659 caps it at 8 MiB for HTTP).
ZSTD_MAX_WINDOW = 8 * 1024 * 1024


class Undecodable(ValueError):
    """The body is not valid in its content coding, or the coding is not supported."""


class TooLarge(ValueError):
    """The decoded body would be larger than the limit."""


def codings(content_encoding: str | None) -> list[str]:
    """The codings named by a ``Content-Encoding`` value, in the order they were applied."""
    return [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]


def decode_body(data: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``data`` with every coding of ``content_encoding`` undone, at most ``limit`` bytes."""
    names = codings(content_encoding)
    if len(names) > MAX_CODINGS:
        raise Undecodable(f"more than {MAX_CODINGS} content codings ({len(names)})")
    for name in reversed(names):
        data = decode_one(data, name, limit)
    return data


def decode_one(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from one ``coding``, at most ``limit`` bytes."""
    fn = _DECODERS.get(coding.strip().lower())
    if fn is None:
        raise Undecodable(f"content coding {coding[:40]!r} is not supported")
    if not data:
        return b""
    return fn(data, limit)


def _identity(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise TooLarge(f"body is larger than {limit} bytes")
    return data


class _Output:
    """Decoded pieces and their total; joined once at the end (no doubling while growing)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: list[bytes] = []
        self.size = 0

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            self.pieces.clear()
            raise TooLarge(f"body expands beyond {self.limit} bytes")
        if piece:
            self.pieces.append(piece)

    def value(self) -> bytes:
        return b"".join(self.pieces)


def _inflate(data: bytes, wbits: int, out: _Output) -> bytes:
    """One zlib stream from ``data`` appended to ``out``; returns what follows the stream."""
    d = zlib.decompressobj(wbits)
    pending = data
    while True:
        try:
            chunk = d.decompress(pending, STEP)
        except zlib.error as exc:
            raise Undecodable(f"not valid compressed data ({exc})") from None
        out.add(chunk)
        if d.eof:
            return d.unused_data
        pending = d.unconsumed_tail
        if not pending and not chunk:
            raise Undecodable("compressed data ends before its end marker")


def _gzip(data: bytes, limit: int) -> bytes:
    out = _Output(limit)
    rest = data
    while True:
        rest = _inflate(rest, 31, out)
        # Members may follow one another; padding with NUL bytes after the last is tolerated.
        if not rest.strip(b"\0"):
            return out.value()


def _deflate(data: bytes, limit: int) -> bytes:
    out = _Output(limit)
    try:
        _inflate(data, 15, out)  # zlib-wrapped, as the standard says
    except Undecodable:
        out = _Output(limit)
        _inflate(data, -15, out)  # raw deflate, as some servers send it
    return out.value()


def brotli_piece(remaining: int) -> int:
    """Input bytes to feed the brotli decoder at once with ``remaining`` bytes of budget."""
    return max(8, min(64 * 1024, remaining >> 21))


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = _Output(limit)
    view = memoryview(data)
    i = 0
    try:
        while i < len(view):
            piece = brotli_piece(limit - out.size)
            out.add(d.process(bytes(view[i : i + piece])))
            i += piece
        finished = d.is_finished()
    except brotli.error as exc:
        raise Undecodable(f"not valid brotli data ({exc})") from None
    if not finished:
        raise Undecodable("brotli data ends before its end marker")
    return out.value()


def _zstd(data: bytes, limit: int) -> bytes:
    out = _Output(limit)
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(STEP)
                if not chunk:
                    break
                out.add(chunk)
    except zstandard.ZstdError as exc:
        raise Undecodable(f"not valid zstd data ({exc})") from None
    return out.value()


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "identity": _identity,
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
