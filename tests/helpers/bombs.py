"""Decompression bombs for the hardening tests: 1 GiB of zeros as gzip, deflate, br, zstd.

Built once per test process (``functools.cache``) and streamed chunk by chunk, so the
test itself never holds the decoded gibibyte. The DEFLATE data is compressed once and
framed twice: gzip (RFC 1952 §2.3: 10-byte header, data, CRC-32 and size, little-endian)
and zlib (RFC 1950 §2.2: CMF/FLG header, data, Adler-32 big-endian), which is what HTTP's
``Content-Encoding: deflate`` means (RFC 9110 §8.4.1.2).
"""

from __future__ import annotations

import struct
import zlib
from functools import cache

import brotli
import zstandard

GIB = 1 << 30
_CHUNK = bytes(1 << 20)


@cache
def _raw_deflate(size: int) -> tuple[bytes, int, int]:
    """Raw DEFLATE of ``size`` zero bytes, with the CRC-32 and Adler-32 of the input."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    crc, adler = 0, 1
    parts = []
    for _ in range(size // len(_CHUNK)):
        parts.append(c.compress(_CHUNK))
        crc = zlib.crc32(_CHUNK, crc)
        adler = zlib.adler32(_CHUNK, adler)
    parts.append(c.flush())
    return b"".join(parts), crc, adler


@cache
def bomb(enc: str, size: int = GIB) -> bytes:
    """``size`` zero bytes compressed with ``enc`` (gzip, deflate, br or zstd)."""
    if enc in ("gzip", "deflate"):
        raw, crc, adler = _raw_deflate(size)
        if enc == "gzip":
            # ID1 ID2 CM=8 FLG=0 MTIME=0 XFL=0 OS=255 (unknown)
            header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
            return header + raw + struct.pack("<II", crc, size & 0xFFFFFFFF)
        # CMF 0x78 (deflate, 32 KiB window), FLG 0x9c (default level, check bits)
        return b"\x78\x9c" + raw + struct.pack(">I", adler)
    if enc == "zstd":
        z = zstandard.ZstdCompressor(level=3).compressobj()
        return b"".join(z.compress(_CHUNK) for _ in range(size // len(_CHUNK))) + z.flush()
    if enc == "br":
        b = brotli.Compressor(quality=5)
        return b"".join(b.process(_CHUNK) for _ in range(size // len(_CHUNK))) + b.finish()
    raise ValueError(enc)
