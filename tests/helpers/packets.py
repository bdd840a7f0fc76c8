"""Packet builders for sniffer tests and the benchmark (scapy for headers, bytes for TLS/QUIC).

ClientHellos are assembled byte by byte (RFC 8446 §4.1.2) so a test controls
every length; QUIC Initials are protected here with the RFC 9001 §5 algorithm,
independently of the sniffer's decrypting code, from keys whose derivation the
tests check against RFC 9001 Appendix A and RFC 9369 Appendix A.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSVCB, SvcParam
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter

CLIENT_MAC = "02:00:00:00:00:01"
GW_MAC = "02:00:00:00:00:02"

# RFC 9001 §5.2 and RFC 9369 §3.3.1
SALT = {
    1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    0x6B3343CF: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABEL = {1: b"quic ", 0x6B3343CF: b"quicv2 "}
INITIAL_TYPE = {1: 0b00, 0x6B3343CF: 0b01}  # RFC 9000 §17.2.2, RFC 9369 §3.2


# ---------------------------------------------------------------- TLS ClientHello bytes


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _ext(etype: int, body: bytes) -> bytes:
    return _u16(etype) + _u16(len(body)) + body


def client_hello(
    sni: str | None = "api.example.com",
    alpn: Sequence[str] = ("h2", "http/1.1"),
    *,
    ech: bool = False,
    key_share: int = 1216,
    quic: bool = False,
    grease_ech: bool = False,
    padding_to: int = 0,
) -> bytes:
    """A TLS 1.3 ClientHello handshake message (type 1 + 3-byte length + body).

    Shaped like a current browser's: an X25519MLKEM768 key share of ``key_share``
    bytes (1184-byte ML-KEM-768 key + 32-byte X25519, draft-ietf-tls-ecdhe-mlkem
    §4.1) next to a plain X25519 share, signature algorithms, and the GREASE ECH
    extension browsers send when they have no ECH config (draft-ietf-tls-esni
    §6.2); together past one 1460-byte TCP segment.
    """
    exts = b""
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + _u16(len(name)) + name  # host_name (RFC 6066 §3)
        exts += _ext(0x0000, _u16(len(entry)) + entry)
    exts += _ext(0x000A, _u16(4) + _u16(0x11EC) + _u16(0x001D))  # supported_groups
    exts += _ext(0x002B, b"\x02\x03\x04")  # supported_versions: TLS 1.3
    if alpn:
        lst = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        exts += _ext(0x0010, _u16(len(lst)) + lst)
    ks = _u16(0x11EC) + _u16(key_share) + os.urandom(key_share)  # X25519MLKEM768 share
    ks += _u16(0x001D) + _u16(32) + os.urandom(32)  # X25519 share
    exts += _ext(0x0033, _u16(len(ks)) + ks)
    sigalgs = bytes.fromhex("0403080404010503080505010806060102010201")
    exts += _ext(0x000D, _u16(len(sigalgs)) + sigalgs)  # signature_algorithms
    if ech or grease_ech:
        # outer ECH: type outer(0), KDF/AEAD ids, config id, enc, payload (draft-ietf-tls-esni §5)
        payload = os.urandom(200)
        body = b"\x00" + _u16(1) + _u16(1) + b"\x07" + _u16(32) + os.urandom(32)
        exts += _ext(0xFE0D, body + _u16(len(payload)) + payload)
    if quic:
        exts += _ext(0x0039, b"\x01\x04\x80\x00\x75\x30")  # quic_transport_parameters
    body = (
        b"\x03\x03"  # legacy_version TLS 1.2
        + os.urandom(32)  # random
        + b"\x20"
        + os.urandom(32)  # legacy_session_id
        + _u16(6)
        + b"\x13\x01\x13\x02\x13\x03"  # cipher suites
        + b"\x01\x00"  # compression: null
    )
    if padding_to:
        pad = max(0, padding_to - (len(body) + 2 + len(exts) + 4 + 4))
        exts += _ext(0x0015, b"\x00" * pad)  # padding (RFC 7685)
    body += _u16(len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_records(handshake: bytes, record_size: int = 16384) -> bytes:
    """Wrap handshake bytes in TLS records of at most ``record_size`` bytes each."""
    out = b""
    for i in range(0, len(handshake), record_size):
        chunk = handshake[i : i + record_size]
        out += b"\x16\x03\x01" + _u16(len(chunk)) + chunk  # handshake, TLS 1.0 record version
    return out


# ---------------------------------------------------------------- QUIC Initial protection


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """RFC 8446 §7.1 HKDF-Expand-Label (SHA-256), written here separately from the product."""
    full = b"tls13 " + label
    info = _u16(length) + bytes([len(full)]) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def client_keys(dcid: bytes, version: int = 1) -> tuple[bytes, bytes, bytes, bytes]:
    """(client_initial_secret, key, iv, hp) for a DCID (RFC 9001 §5.2 / RFC 9369 §3.3)."""
    initial = hmac.new(SALT[version], dcid, hashlib.sha256).digest()
    secret = hkdf_expand_label(initial, b"client in", 32)
    lab = LABEL[version]
    return (
        secret,
        hkdf_expand_label(secret, lab + b"key", 16),
        hkdf_expand_label(secret, lab + b"iv", 12),
        hkdf_expand_label(secret, lab + b"hp", 16),
    )


def varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return (v | 0x4000).to_bytes(2, "big")
    return (v | 0x80000000).to_bytes(4, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data  # RFC 9000 §19.6


def quic_initial(
    frames: bytes,
    dcid: bytes,
    *,
    scid: bytes = b"\x11\x22\x33\x44",
    version: int = 1,
    pn: int = 0,
    pn_len: int = 2,
    size: int = 1200,
) -> bytes:
    """A protected client Initial packet carrying ``frames``, padded to ``size`` bytes."""
    _, key, iv, hp = client_keys(dcid, version)
    first = 0xC0 | (INITIAL_TYPE[version] << 4) | (pn_len - 1)
    head = bytes([first]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + varint(0)  # no token
    # payload + 16-byte tag, padded so the datagram reaches ``size`` (RFC 9000 §14.1)
    length_field_size = 2
    pad = size - (len(head) + length_field_size + pn_len + len(frames) + 16)
    payload = frames + b"\x00" * max(0, pad)
    length = pn_len + len(payload) + 16
    head += (length | 0x4000).to_bytes(2, "big")
    pn_bytes = pn.to_bytes(pn_len, "big")
    header = head + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    pn_off = len(head)
    sample = sealed[4 - pn_len : 20 - pn_len]  # RFC 9001 §5.4.2: 4 bytes after PN start
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def quic_initials_for_hello(
    hello: bytes, dcid: bytes, *, version: int = 1, packets: int = 1, shuffle: bool = False
) -> list[bytes]:
    """Split a ClientHello over ``packets`` Initials (CRYPTO frames), optionally out of order."""
    per = -(-len(hello) // packets)
    chunks = [(i, hello[i : i + per]) for i in range(0, len(hello), per)]
    if shuffle:
        chunks.reverse()
    out = []
    for pn, (off, chunk) in enumerate(chunks):
        # two CRYPTO frames per packet, second half first, as Chrome does
        half = len(chunk) // 2
        frames = crypto_frame(off + half, chunk[half:]) + b"\x01" + crypto_frame(off, chunk[:half])
        out.append(
            quic_initial(frames, dcid, version=version, pn=pn, size=max(1200, len(frames) + 80))
        )
    return out


# ---------------------------------------------------------------- flows as scapy packets


def ip_layer(src: str, dst: str, ext: bool = False) -> Packet:
    if ":" in src:
        layer = IPv6(src=src, dst=dst)
        if ext:
            layer = (
                layer / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[])
            )
        return layer
    return IP(src=src, dst=dst)


def tcp_flow(
    client: str,
    server: str,
    cport: int,
    sport: int,
    client_data: bytes,
    *,
    server_data: bytes = b"",
    mss: int = 1460,
    ether: bool = True,
    vlan: Sequence[int] = (),
    ext: bool = False,
    reorder: bool = False,
    close: str = "fin",
) -> list[Packet]:
    """A TCP connection: handshake, client data in ``mss``-sized segments, server reply, close."""
    isn_c, isn_s = 1000, 5000

    def mk(src: str, dst: str, sp: int, dp: int, **kw: object) -> Packet:
        pkt = ip_layer(src, dst, ext) / TCP(sport=sp, dport=dp, **kw)  # type: ignore[arg-type]
        if ether:
            l2 = Ether(src=CLIENT_MAC, dst=GW_MAC)
            for tag in vlan:
                l2 = l2 / Dot1Q(vlan=tag)
            pkt = l2 / pkt
        return pkt

    c = lambda **kw: mk(client, server, cport, sport, **kw)  # noqa: E731
    s = lambda **kw: mk(server, client, sport, cport, **kw)  # noqa: E731
    pkts = [
        c(flags="S", seq=isn_c),
        s(flags="SA", seq=isn_s, ack=isn_c + 1),
        c(flags="A", seq=isn_c + 1, ack=isn_s + 1),
    ]
    segs = []
    seq = isn_c + 1
    for i in range(0, len(client_data), mss):
        chunk = client_data[i : i + mss]
        segs.append(c(flags="PA", seq=seq, ack=isn_s + 1) / Raw(chunk))
        seq += len(chunk)
    if reorder and len(segs) > 1:
        segs = segs[1:] + segs[:1]
    pkts += segs
    sseq = isn_s + 1
    if server_data:
        for i in range(0, len(server_data), mss):
            chunk = server_data[i : i + mss]
            pkts.append(s(flags="PA", seq=sseq, ack=seq) / Raw(chunk))
            sseq += len(chunk)
    if close == "fin":
        pkts += [
            c(flags="FA", seq=seq, ack=sseq),
            s(flags="FA", seq=sseq, ack=seq + 1),
            c(flags="A", seq=seq + 1, ack=sseq + 1),
        ]
    elif close == "rst":
        pkts.append(c(flags="R", seq=seq))
    return pkts


def udp_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    ether: bool = True,
    ext: bool = False,
) -> Packet:
    pkt = ip_layer(src, dst, ext) / UDP(sport=sport, dport=dport) / Raw(payload)
    return Ether(src=CLIENT_MAC, dst=GW_MAC) / pkt if ether else pkt


def dns_query(name: str, qtype: str = "A", ident: int = 7) -> bytes:
    return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def dns_response(
    name: str,
    chain: Sequence[str] = (),
    v4: Iterable[str] = (),
    v6: Iterable[str] = (),
    *,
    qtype: str = "A",
    ttl: int = 300,
    https_hints: tuple[Sequence[str], Sequence[str]] | None = None,
    ident: int = 7,
) -> bytes:
    """A response to ``name`` following CNAMEs ``chain`` to the address records."""
    rrs: list[Packet] = []
    owner = name
    for target in chain:
        rrs.append(DNSRR(rrname=owner, type="CNAME", ttl=ttl, rdata=target))
        owner = target
    for a in v4:
        rrs.append(DNSRR(rrname=owner, type="A", ttl=ttl, rdata=a))
    for a in v6:
        rrs.append(DNSRR(rrname=owner, type="AAAA", ttl=ttl, rdata=a))
    if https_hints is not None:
        h4, h6 = https_hints
        params = [SvcParam(key="alpn", value=["h3", "h2"])]
        if h4:
            params.append(SvcParam(key="ipv4hint", value=list(h4)))
        if h6:
            params.append(SvcParam(key="ipv6hint", value=list(h6)))
        rrs.append(
            DNSRRSVCB(
                rrname=owner,
                type="HTTPS",
                ttl=ttl,
                svc_priority=1,
                target_name=".",
                svc_params=params,
            )
        )
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype=qtype), an=rrs or None))


def write_pcap(
    path: Path,
    packets: Iterable[Packet],
    *,
    linktype: int = 1,
    ng: bool = False,
    t0: float = 1_700_000_000.0,
    step: float = 0.001,
) -> Path:
    """Write packets with increasing timestamps (pcap or pcapng)."""
    writer_cls = PcapNgWriter if ng else PcapWriter
    w = writer_cls(str(path), linktype=linktype, sync=False) if not ng else PcapNgWriter(str(path))
    t = t0
    for p in packets:
        p.time = t
        w.write(p)
        t += step
    w.close()
    return path


# ---------------------------------------------------------------- feeding and fakes


def feed(
    sniffer: object,
    packets: Iterable[Packet | bytes],
    *,
    t0: float = 1000.0,
    step: float = 0.001,
    linktype: int = 1,
) -> float:
    """Feed packets to a sniffer with increasing timestamps; returns the last timestamp."""
    t = t0
    for p in packets:
        sniffer.feed(t, p if isinstance(p, bytes) else bytes(p), linktype)  # type: ignore[attr-defined]
        t += step
    return t


class RecordingSink:
    """A Sink (egresswatch.ports.Sink) that keeps what it is given."""

    def __init__(self) -> None:
        self.decisions: list[object] = []
        self.closed: list[object] = []
        self.closed_calls = 0

    def record(self, decision: object) -> None:
        self.decisions.append(decision)

    def flow_closed(self, event: object) -> None:
        self.closed.append(event)

    def close(self) -> None:
        self.closed_calls += 1
