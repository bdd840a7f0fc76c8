"""QUIC Initial packets (v1 and v2): remove protection and read the CRYPTO stream.

Initial packets are encrypted with keys that anyone can derive from the client's
first Destination Connection ID (RFC 9001 §5.2), so a passive observer can read
the ClientHello inside. Constants and labels:

- v1 (RFC 9000 / RFC 9001 §5.2): version 0x00000001, initial salt
  0x38762cf7f55934b34d179ae6a4c80cadccbb7f0a, labels "quic key", "quic iv", "quic hp",
  long-header type bits 0b00 for Initial (RFC 9000 §17.2).
- v2 (RFC 9369 §3.3.1, §3.3.2, §3.2): version 0x6b3343cf, initial salt
  0x0dede3def700a6db819381be6e269dcbf9bd2ed9, labels "quicv2 key", "quicv2 iv",
  "quicv2 hp", Initial type bits 0b01.

Payload protection is AEAD_AES_128_GCM and header protection AES-128-ECB on a
16-byte sample (RFC 9001 §5.3, §5.4.3). Parsers raise ValueError on bad input.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")

#: version -> (salt, label prefix, long-header type bits of an Initial packet)
VERSIONS: dict[int, tuple[bytes, bytes, int]] = {
    QUIC_V1: (SALT_V1, b"quic ", 0b00),
    QUIC_V2: (SALT_V2, b"quicv2 ", 0b01),
}

# Frame types that may appear in Initial packets (RFC 9000 §12.4, Table 3)
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CLOSE = 0x1C


class InitialKeys(NamedTuple):
    """Client Initial keys for one connection (RFC 9001 §5.2)."""

    aead: AESGCM
    iv: bytes
    hp: bytes
    key: bytes
    #: AES-ECB encryptor of ``hp``, kept: building one costs more than decrypting a packet
    hp_ecb: Any


class InitialPacket(NamedTuple):
    """The parts of a decrypted Initial packet the sniffer uses."""

    version: int
    dcid: bytes
    scid: bytes
    packet_number: int
    #: CRYPTO frames as (offset, data)
    crypto: tuple[tuple[int, bytes], ...]
    #: bytes of the datagram this packet took (coalesced packets follow it)
    size: int


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2)."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1); length ≤ 32 needs one block."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def client_initial_secret(dcid: bytes, version: int = QUIC_V1) -> bytes:
    """client_initial_secret = HKDF-Expand-Label(HKDF-Extract(salt, DCID), "client in", "", 32)."""
    salt = VERSIONS[version][0]
    return hkdf_expand_label(hkdf_extract(salt, dcid), b"client in", 32)


def initial_keys(dcid: bytes, version: int = QUIC_V1) -> InitialKeys:
    """Derive the client's Initial packet protection keys from the first DCID."""
    prefix = VERSIONS[version][1]
    secret = client_initial_secret(dcid, version)
    key = hkdf_expand_label(secret, prefix + b"key", 16)
    iv = hkdf_expand_label(secret, prefix + b"iv", 12)
    hp = hkdf_expand_label(secret, prefix + b"hp", 16)
    return InitialKeys(
        AESGCM(key), iv, hp, key, Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    )


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """QUIC variable-length integer (RFC 9000 §16): (value, new position)."""
    if pos >= len(buf):
        raise ValueError("truncated varint")
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        raise ValueError("truncated varint")
    value = first & 0x3F
    for i in range(1, size):
        value = value << 8 | buf[pos + i]
    return value, pos + size


def encode_varint(value: int) -> bytes:
    """The shortest QUIC varint for ``value`` (used to build test packets)."""
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def looks_like_initial(datagram: bytes) -> int | None:
    """The version if ``datagram`` starts with a v1/v2 Initial long header, else None."""
    if len(datagram) < 7 or not datagram[0] & 0x80:
        return None
    version = int.from_bytes(datagram[1:5], "big")
    spec = VERSIONS.get(version)
    if spec is None or (datagram[0] >> 4) & 0x03 != spec[2]:
        return None
    return version


def decode_packet_number(truncated: int, pn_len: int, largest: int) -> int:
    """RFC 9000 Appendix A.3: the full packet number closest to largest + 1."""
    expected = largest + 1
    win = 1 << (pn_len * 8)
    hwin = win // 2
    mask = win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def decrypt_initial(
    datagram: bytes,
    pos: int = 0,
    keys: InitialKeys | None = None,
    largest_pn: int = -1,
) -> tuple[InitialPacket, InitialKeys]:
    """Unprotect and decrypt the Initial packet at ``datagram[pos:]``.

    ``keys`` are the connection's client keys (from its first DCID); when None
    they are derived from this packet's DCID. Raises ValueError if the packet is
    not a decryptable client Initial.
    """
    pkt = datagram[pos:] if pos else datagram
    version = looks_like_initial(pkt)
    if version is None:
        raise ValueError("not a QUIC v1/v2 Initial")
    p = 5
    dcid_len = pkt[p]
    if dcid_len > 20:
        raise ValueError("DCID longer than 20 bytes")
    dcid = pkt[p + 1 : p + 1 + dcid_len]
    p += 1 + dcid_len
    if p >= len(pkt):
        raise ValueError("truncated header")
    scid_len = pkt[p]
    if scid_len > 20:
        raise ValueError("SCID longer than 20 bytes")
    scid = pkt[p + 1 : p + 1 + scid_len]
    p += 1 + scid_len
    token_len, p = read_varint(pkt, p)
    p += token_len
    length, pn_off = read_varint(pkt, p)
    end = pn_off + length
    if end > len(pkt) or length < 20:
        raise ValueError("truncated Initial packet")
    if keys is None:
        keys = initial_keys(bytes(dcid), version)
    # header protection (RFC 9001 §5.4.2): sample starts 4 bytes after the PN offset
    sample = pkt[pn_off + 4 : pn_off + 20]
    mask = keys.hp_ecb.update(bytes(sample))  # ECB: one block in, one block out
    first = pkt[0] ^ (mask[0] & 0x0F)  # long header: low 4 bits protected
    pn_len = (first & 0x03) + 1
    truncated = 0
    for i in range(pn_len):
        truncated = truncated << 8 | (pkt[pn_off + i] ^ mask[1 + i])
    header = bytearray(pkt[: pn_off + pn_len])
    header[0] = first
    header[pn_off:] = truncated.to_bytes(pn_len, "big")
    pn = decode_packet_number(truncated, pn_len, largest_pn)
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    try:
        plain = keys.aead.decrypt(nonce, bytes(pkt[pn_off + pn_len : end]), bytes(header))
    except InvalidTag as e:
        raise ValueError("Initial packet does not decrypt (not a client Initial?)") from e
    return (
        InitialPacket(version, bytes(dcid), bytes(scid), pn, parse_frames(plain), end),
        keys,
    )


def parse_frames(plain: bytes) -> tuple[tuple[int, bytes], ...]:
    """CRYPTO frames of a decrypted Initial payload; stops at a frame Initials may not carry."""
    crypto: list[tuple[int, bytes]] = []
    pos = 0
    n = len(plain)
    while pos < n:
        ftype = plain[pos]
        if ftype == FRAME_PADDING:
            # a run of PADDING fills most Initials (RFC 9000 §14.1): skip it at C speed
            pos = n - len(plain[pos:].lstrip(b"\x00"))
        elif ftype == FRAME_PING:
            pos += 1
        elif ftype == FRAME_CRYPTO:
            off, pos = read_varint(plain, pos + 1)
            ln, pos = read_varint(plain, pos)
            if pos + ln > n:
                raise ValueError("CRYPTO frame overruns the packet")
            crypto.append((off, plain[pos : pos + ln]))
            pos += ln
        elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
            # RFC 9000 §19.3: largest, delay, range count, first range, ranges, [ECN counts]
            _, pos = read_varint(plain, pos + 1)
            _, pos = read_varint(plain, pos)
            count, pos = read_varint(plain, pos)
            _, pos = read_varint(plain, pos)
            for _ in range(min(count, 256)):
                _, pos = read_varint(plain, pos)
                _, pos = read_varint(plain, pos)
            if ftype == FRAME_ACK_ECN:
                for _ in range(3):
                    _, pos = read_varint(plain, pos)
        elif ftype == FRAME_CLOSE:
            break
        else:
            raise ValueError(f"frame type {ftype:#x} not allowed in an Initial")
    return tuple(crypto)


class CryptoStream:
    """Reassembles CRYPTO frame data by offset (frames arrive split and out of order)."""

    __slots__ = ("buf", "pending")

    #: cap on buffered crypto data; a ClientHello is far smaller
    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pending: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes) -> None:
        """Place ``data`` at ``offset``; contiguous bytes from 0 collect in ``buf``."""
        if offset + len(data) > self.LIMIT:
            raise ValueError("CRYPTO data beyond the buffer limit")
        if len(self.pending) > 64:
            raise ValueError("too many CRYPTO fragments")
        self.pending[offset] = max(data, self.pending.get(offset, b""), key=len)
        progressed = True
        while progressed:
            progressed = False
            have = len(self.buf)
            for off in sorted(self.pending):
                if off <= have:
                    chunk = self.pending.pop(off)
                    if off + len(chunk) > have:
                        self.buf += chunk[have - off :]
                    progressed = True
                    break
