"""TLS ClientHello parsing: SNI, ALPN and Encrypted Client Hello, across records.

A ClientHello may span several TLS records (RFC 8446 §5.1: handshake messages may
be fragmented across records) and several TCP segments: post-quantum key shares
(X25519MLKEM768, about 1.2 KB) push modern ClientHellos past one segment. The
caller hands in the client's reassembled byte stream; :func:`handshake_from_records`
joins the handshake bytes of consecutive records.

Every parser here raises :class:`ValueError` on malformed input and nothing else
(truncated input that may still grow is reported as ``None``, "need more").
"""

from __future__ import annotations

from typing import NamedTuple

#: TLS record content type handshake (RFC 8446 §5.1)
CONTENT_HANDSHAKE = 0x16
#: handshake type client_hello (RFC 8446 §4)
HS_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0x0000  # RFC 6066 §3
EXT_ALPN = 0x0010  # RFC 7301 §3.1
#: encrypted_client_hello (draft-ietf-tls-esni-22 §5; IANA TLS ExtensionType 0xfe0d)
EXT_ECH = 0xFE0D
#: quic_transport_parameters (RFC 9001 §8.2), marks a QUIC ClientHello
EXT_QUIC_TP = 0x0039
#: upper bound on a ClientHello we are willing to buffer (records are ≤ 16 KiB, RFC 8446 §5.1)
MAX_CLIENT_HELLO = 64 * 1024


class ClientHello(NamedTuple):
    """What a ClientHello says about where the client wants to go."""

    sni: str | None
    alpn: tuple[str, ...]
    #: an encrypted_client_hello extension was present: the SNI is the outer, public name
    ech: bool
    #: the legacy_version field (0x0303 for TLS 1.2 and 1.3)
    version: int
    length: int


def handshake_from_records(stream: bytes | bytearray) -> bytes | None:
    """Join the handshake bytes of the TLS records at the start of ``stream``.

    Returns the bytes of the first complete handshake message (header included),
    ``None`` when more stream is needed, and raises ValueError when the stream
    is not a TLS handshake.
    """
    out = bytearray()
    pos = 0
    n = len(stream)
    need: int | None = None
    while True:
        if need is not None and len(out) >= need:
            return bytes(out[:need])
        if pos + 5 > n:
            return None
        if stream[pos] != CONTENT_HANDSHAKE:
            raise ValueError("not a handshake record")
        if stream[pos + 1] != 3:
            raise ValueError("bad record version")
        rlen = stream[pos + 3] << 8 | stream[pos + 4]
        if rlen == 0 or rlen > 16384 + 2048:
            raise ValueError("bad record length")
        out += stream[pos + 5 : pos + 5 + rlen]
        complete = pos + 5 + rlen <= n
        pos += 5 + rlen
        if need is None and len(out) >= 4:
            if out[0] != HS_CLIENT_HELLO:
                raise ValueError("first handshake message is not a ClientHello")
            need = 4 + (out[1] << 16 | out[2] << 8 | out[3])
            if need > MAX_CLIENT_HELLO:
                raise ValueError("ClientHello too large")
        if not complete:
            if need is not None and len(out) >= need:
                return bytes(out[:need])
            return None


def handshake_message(data: bytes | bytearray) -> bytes | None:
    """The first handshake message in ``data`` (QUIC CRYPTO stream), None if incomplete."""
    if len(data) < 4:
        return None
    if data[0] != HS_CLIENT_HELLO:
        raise ValueError("first handshake message is not a ClientHello")
    need = 4 + (data[1] << 16 | data[2] << 8 | data[3])
    if need > MAX_CLIENT_HELLO:
        raise ValueError("ClientHello too large")
    if len(data) < need:
        return None
    return bytes(data[:need])


def parse_client_hello(msg: bytes) -> ClientHello:
    """Parse a complete ClientHello handshake message (4-byte header included).

    RFC 8446 §4.1.2 layout: legacy_version(2) random(32) session_id<0..32>
    cipher_suites<2..2^16-2> compression_methods<1..2^8-1> extensions<8..2^16-1>.
    """
    n = len(msg)
    if n < 4 or msg[0] != HS_CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    end = 4 + (msg[1] << 16 | msg[2] << 8 | msg[3])
    if end > n:
        raise ValueError("truncated ClientHello")
    if end < 4 + 2 + 32 + 1:
        raise ValueError("ClientHello too short")
    version = msg[4] << 8 | msg[5]
    pos = 4 + 2 + 32
    pos += 1 + msg[pos]  # session id
    if pos + 2 > end:
        raise ValueError("truncated cipher suites")
    pos += 2 + (msg[pos] << 8 | msg[pos + 1])
    if pos + 1 > end:
        raise ValueError("truncated compression methods")
    pos += 1 + msg[pos]
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    ech = False
    if pos == end:  # no extensions at all (SSL 3 era clients)
        return ClientHello(None, (), False, version, end)
    if pos + 2 > end:
        raise ValueError("truncated extensions")
    ext_end = pos + 2 + (msg[pos] << 8 | msg[pos + 1])
    if ext_end > end:
        raise ValueError("extensions overrun the ClientHello")
    pos += 2
    while pos + 4 <= ext_end:
        etype = msg[pos] << 8 | msg[pos + 1]
        elen = msg[pos + 2] << 8 | msg[pos + 3]
        body = pos + 4
        pos = body + elen
        if pos > ext_end:
            raise ValueError("extension overruns the list")
        if etype == EXT_SERVER_NAME:
            sni = _server_name(msg, body, pos)
        elif etype == EXT_ALPN:
            alpn = _alpn(msg, body, pos)
        elif etype == EXT_ECH:
            ech = True
    if pos != ext_end:
        raise ValueError("trailing bytes in extensions")
    return ClientHello(sni, alpn, ech, version, end)


def _server_name(msg: bytes, pos: int, end: int) -> str | None:
    """RFC 6066 §3: ServerNameList of (name_type, HostName); only host_name (0) is defined."""
    if pos + 2 > end:
        raise ValueError("truncated server_name")
    lend = pos + 2 + (msg[pos] << 8 | msg[pos + 1])
    if lend > end:
        raise ValueError("server_name list overruns")
    pos += 2
    while pos + 3 <= lend:
        ntype = msg[pos]
        nlen = msg[pos + 1] << 8 | msg[pos + 2]
        name = msg[pos + 3 : pos + 3 + nlen]
        if pos + 3 + nlen > lend:
            raise ValueError("server name overruns")
        pos += 3 + nlen
        if ntype == 0:
            return clean_name(name)
    return None


def _alpn(msg: bytes, pos: int, end: int) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolNameList of length-prefixed names."""
    if pos + 2 > end:
        raise ValueError("truncated ALPN")
    lend = pos + 2 + (msg[pos] << 8 | msg[pos + 1])
    if lend > end:
        raise ValueError("ALPN list overruns")
    pos += 2
    out: list[str] = []
    while pos < lend:
        plen = msg[pos]
        if pos + 1 + plen > lend or plen == 0:
            raise ValueError("bad ALPN entry")
        out.append(msg[pos + 1 : pos + 1 + plen].decode("ascii", "replace"))
        pos += 1 + plen
    return tuple(out)


def clean_name(raw: bytes) -> str:
    """A host name as text: ASCII, lower case, no trailing dot. Raises ValueError if not one."""
    try:
        name = raw.decode("ascii").rstrip(".").lower()
    except UnicodeDecodeError as e:
        raise ValueError("host name is not ASCII") from e
    if not name or len(name) > 253 or not name.isprintable() or " " in name:
        raise ValueError("not a host name")
    return name
