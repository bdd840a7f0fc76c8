"""Request bodies: bounded decompression, content types, multipart parts, media sniffing.

Everything here works on the *first bytes* of a body as a sensor handed them over, so every
function accepts truncated input and returns what it could read. Decompression is bounded by
its **output** size, never by its input, so a 1 KiB zip bomb costs at most ``limit`` bytes.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import brotli
import zstandard

#: How much decoded body the classifier looks at (DESIGN.md: bodies are bounded).
MAX_BODY = 256 * 1024

#: gzip (RFC 1952 §2.3.1: ID1 ID2 CM=8) and zstd (RFC 8878 §3.1.1 magic 0xFD2FB528, LE) magics.
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGICS = (_GZIP_MAGIC, _ZSTD_MAGIC)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A body after content decoding, with what went wrong on the way."""

    data: bytes
    flags: tuple[str, ...] = ()


def _gzip_or_zlib(data: bytes, limit: int, wbits: int) -> tuple[bytes, bool]:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit + 1)
    return out[:limit], len(out) > limit or bool(d.unconsumed_tail)


def _inflate(data: bytes, limit: int) -> tuple[bytes, bool]:
    # RFC 9110 §8.4.1.2: "deflate" is zlib (RFC 1950) framing, but some clients send raw
    # RFC 1951 data; browsers accept both, so do we.
    try:
        return _gzip_or_zlib(data, limit, 15)
    except zlib.error:
        return _gzip_or_zlib(data, limit, -15)


def _unbrotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    d = brotli.Decompressor()
    out = d.process(data, output_buffer_limit=limit + 1)
    return out[:limit], len(out) > limit or not d.can_accept_more_data()


def _unzstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            chunk = reader.read(min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except zstandard.ZstdError:
        if not chunks:  # nothing readable at all: a real error, not a truncated frame
            raise
    out = b"".join(chunks)
    return out[:limit], total > limit


def _gunzip(data: bytes, limit: int) -> tuple[bytes, bool]:
    return _gzip_or_zlib(data, limit, 47)  # 32+15: zlib picks gzip or zlib framing by header


_Decoder = Callable[[bytes, int], tuple[bytes, bool]]


def _decoder(name: str) -> _Decoder | None:
    if name in ("gzip", "x-gzip"):
        return _gunzip
    if name == "deflate":
        return _inflate
    if name == "br":
        return _unbrotli
    if name == "zstd":
        return _unzstd
    return None


def decode(body: bytes, content_encoding: str | None, limit: int = MAX_BODY) -> Decoded:
    """Undo Content-Encoding (RFC 9110 §8.4: codings listed in the order applied). Never raises.

    gzip, deflate, br and zstd are understood. Flags: ``decode-limit`` when the output was cut
    at ``limit`` (a bomb or simply a big body), ``decode-error`` when the data is not what the
    header says (the raw bytes are returned), ``unknown-encoding`` for codings we cannot read.
    Bodies without a header that start with a gzip or zstd magic number are decoded too: some
    analytics SDKs (PostHog's ``compression=gzip-js``) send them that way.
    """
    if not content_encoding and len(body) <= limit and not body.startswith(_MAGICS):
        return Decoded(body)  # the common case: nothing to undo
    flags: list[str] = []
    codings = [
        c.strip().lower()
        for c in (content_encoding or "").split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if not codings:
        if body.startswith(_GZIP_MAGIC):
            codings = ["gzip"]
        elif body.startswith(_ZSTD_MAGIC):
            codings = ["zstd"]
    data = body
    for coding in reversed(codings):
        fn = _decoder(coding)
        if fn is None:
            flags.append("unknown-encoding")
            return Decoded(data[:limit], tuple(flags))
        try:
            data, cut = fn(data, limit)
        except Exception:  # zlib.error, brotli.error, ZstdError, and whatever else they raise
            flags.append("decode-error")
            return Decoded(data[:limit], tuple(flags))
        if cut:
            flags.append("decode-limit")
    if len(data) > limit:
        data = data[:limit]
        flags.append("body-truncated")
    return Decoded(data, tuple(dict.fromkeys(flags)))


# --- content types ---

_PARAM = re.compile(r';\s*([A-Za-z0-9_\-*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def split_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``'multipart/form-data; boundary=x'`` -> ``('multipart/form-data', {'boundary': 'x'})``."""
    if not value:
        return "", {}
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    if rest:
        for m in _PARAM.finditer(";" + rest):
            params[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return mime.strip().lower(), params


def is_json_type(mime: str) -> bool:
    """application/json and its RFC 6839 ``+json`` relatives (and ndjson)."""
    return mime.endswith("json") or mime == "text/json"


def is_text_type(mime: str) -> bool:
    """Types whose body is readable text worth scanning for findings."""
    return (
        mime.startswith("text/")
        or is_json_type(mime)
        or mime
        in (
            "application/x-www-form-urlencoded",
            "application/xml",
            "application/x-sentry-envelope",
            "application/graphql",
        )
        or mime.endswith("+xml")
    )


def to_text(data: bytes, charset: str | None = None) -> str:
    """Bytes to str without ever failing (unknown charsets fall back to UTF-8)."""
    if charset:
        try:
            return data.decode(charset, "replace")
        except LookupError:
            pass
    return data.decode("utf-8", "replace")


def looks_binary(data: bytes) -> bool:
    """True when the first bytes hold NULs or many control bytes (not text in any charset)."""
    head = data[:512]
    if not head:
        return False
    if head.find(b"\x00") >= 0:  # find, not ``in`` (see findings.scan_bytes)
        return True
    ctrl = sum(1 for b in head if b < 9 or 13 < b < 32)
    return ctrl * 10 > len(head)


# --- multipart (RFC 7578) ---


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart/form-data body (possibly cut short)."""

    name: str | None
    filename: str | None
    content_type: str
    data: bytes


#: parts beyond this number are not looked at (a form with thousands of fields is still judged).
MAX_PARTS = 64


def parse_multipart(data: bytes, boundary: str) -> list[Part]:
    """Parts of a multipart body (RFC 7578 §4, RFC 2046 §5.1.1). Truncated input is fine."""
    if not boundary or len(boundary) > 200:
        return []
    delim = b"--" + boundary.encode("latin-1", "replace")
    chunks = data.split(delim)
    parts: list[Part] = []
    for chunk in chunks[1 : MAX_PARTS + 1]:
        if chunk.startswith(b"--"):
            break  # close-delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        name = filename = None
        ctype = ""
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-disposition":
                _, params = split_content_type(value)
                name = params.get("name")
                filename = params.get("filename") or params.get("filename*")
            elif key == "content-type":
                ctype, _ = split_content_type(value)
        parts.append(Part(name, filename, ctype, content))
    return parts


# --- media sniffing (WHATWG MIME Sniffing §6 signatures, plus model formats) ---

AUDIO = "audio"
IMAGE = "image"
DOCUMENT = "document"
MODEL = "model"


def sniff(data: bytes) -> str | None:
    """What the first bytes are: audio, image, document, model weights, or None."""
    head = data[:16]
    if len(head) < 4:
        return None
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")):
        return IMAGE
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return IMAGE
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return AUDIO
    if head.startswith((b"ID3", b"fLaC", b"OggS", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")):
        return AUDIO
    if head[4:8] == b"ftyp":  # ISO BMFF (ISO/IEC 14496-12 §4.3): brand says what it holds
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return AUDIO
        if brand in (b"heic", b"heix", b"avif", b"mif1"):
            return IMAGE
        return DOCUMENT
    if head.startswith((b"%PDF-", b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        return DOCUMENT
    if head.startswith(b"GGUF"):  # ggml's GGUF spec: magic "GGUF"
        return MODEL
    # safetensors: u64 little-endian header size, then the JSON header '{"'
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 1 << 27:
        return MODEL
    return None


_EXT_KIND = {
    **dict.fromkeys(("wav", "mp3", "m4a", "flac", "ogg", "oga", "opus", "webm", "mpga"), AUDIO),
    **dict.fromkeys(("png", "jpg", "jpeg", "gif", "webp", "heic", "avif", "bmp"), IMAGE),
    **dict.fromkeys(("gguf", "safetensors", "onnx", "pt", "pth", "ckpt", "bin"), MODEL),
}


def media_kind(content_type: str, filename: str | None, data: bytes) -> str:
    """Audio / image / model / document for a file-like payload, from type, name and bytes."""
    kind = sniff(data)
    if kind:
        return kind
    if content_type.startswith("audio/"):
        return AUDIO
    if content_type.startswith("image/"):
        return IMAGE
    if filename and "." in filename:
        ext = filename.rsplit(".", 1)[1].lower()
        return _EXT_KIND.get(ext, DOCUMENT)
    return DOCUMENT
