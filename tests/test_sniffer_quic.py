"""QUIC Initial decryption (v1, v2) against the RFC test vectors, and through the sniffer."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from helpers.packets import client_hello, client_keys, crypto_frame, feed, quic_initial, udp_packet
from helpers.packets import quic_initials_for_hello as initials
from helpers.sniffer_fakes import RecordingInspector

from egresswatch.sniffer import Sniffer
from egresswatch.sniffer.quic import (
    QUIC_V1,
    QUIC_V2,
    CryptoStream,
    decode_packet_number,
    decrypt_initial,
    initial_keys,
)

RFC_DCID = bytes.fromhex("8394c8f03e515708")  # RFC 9001 Appendix A, RFC 9369 Appendix A

# (version, client_initial_secret, key, iv, hp, HP sample, first 5 mask bytes)
VECTORS = [
    (
        QUIC_V1,  # RFC 9001 A.1 and A.2
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
        "d1b1c98dd7689fb8ec11d242b123dc9b",
        "437b9aec36",
    ),
    (
        QUIC_V2,  # RFC 9369 A.1 and A.2
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
        "8b1a0bc121284290a29e0971b5cd045d",
        "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9",
        "ffe67b6abcdb4298b485dd04de806071",
        "94a0c95e80",
    ),
]


@pytest.mark.parametrize(("version", "secret", "key", "iv", "hp", "sample", "mask"), VECTORS)
def test_key_derivation_matches_rfc_vectors(
    version: int, secret: str, key: str, iv: str, hp: str, sample: str, mask: str
) -> None:
    k = initial_keys(RFC_DCID, version)
    assert (k.key.hex(), k.iv.hex(), k.hp.hex()) == (key, iv, hp)
    # the test helper's independent derivation agrees too
    h_secret, h_key, h_iv, h_hp = client_keys(RFC_DCID, version)
    assert (h_secret.hex(), h_key.hex(), h_iv.hex(), h_hp.hex()) == (secret, key, iv, hp)
    enc = Cipher(algorithms.AES(k.hp), modes.ECB()).encryptor()
    assert (enc.update(bytes.fromhex(sample)) + enc.finalize())[:5].hex() == mask


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_decrypt_one_initial(version: int) -> None:
    hello = client_hello("quic.example.com", ("h3",), quic=True)
    dcid = os.urandom(8)
    pkt, _ = decrypt_initial(quic_initial(crypto_frame(0, hello), dcid, version=version, pn=3))
    assert pkt.version == version and pkt.dcid == dcid and pkt.packet_number == 3
    assert pkt.crypto == ((0, hello),)


def test_wrong_key_and_tampering_raise_valueerror() -> None:
    dg = bytearray(quic_initial(crypto_frame(0, b"\x01\x00\x00\x00"), os.urandom(8)))
    dg[-3] ^= 0xFF  # AEAD tag no longer matches
    with pytest.raises(ValueError):
        decrypt_initial(bytes(dg))
    with pytest.raises(ValueError):
        decrypt_initial(b"\xc0\x00\x00\x00\x01")  # truncated
    with pytest.raises(ValueError):
        decrypt_initial(b"\xc0\xff\x00\x00\x1d" + b"\x00" * 40)  # draft version: not ours


def test_packet_number_decoding_rfc9000_a3() -> None:
    # RFC 9000 A.3 example: largest 0xa82f30ea, truncated 0x9b32 (2 bytes) -> 0xa82f9b32
    assert decode_packet_number(0x9B32, 2, 0xA82F30EA) == 0xA82F9B32
    assert decode_packet_number(0, 1, -1) == 0


def test_crypto_stream_reassembles_out_of_order() -> None:
    s = CryptoStream()
    s.add(5, b"world")
    assert bytes(s.buf) == b""
    s.add(0, b"hello")
    s.add(3, b"lowor")  # overlap
    assert bytes(s.buf) == b"helloworld"


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
@pytest.mark.parametrize(("packets", "shuffle"), [(1, False), (3, False), (3, True)])
def test_sniffer_reads_sni_from_initials(version: int, packets: int, shuffle: bool) -> None:
    """A ClientHello spread over several Initials and CRYPTO frames, possibly reversed."""
    insp = RecordingInspector()
    sn = Sniffer(insp.inspect)
    hello = client_hello("h3.example.org", ("h3",), quic=True, grease_ech=True)
    dgs = initials(hello, os.urandom(8), version=version, packets=packets, shuffle=shuffle)
    assert len(dgs) == packets
    pkts = [udp_packet("192.0.2.1", "203.0.113.20", 50000, 443, d) for d in dgs]
    # server Initials (protected with server keys) are ignored without complaint
    pkts.insert(1, udp_packet("203.0.113.20", "192.0.2.1", 443, 50000, os.urandom(1200)))
    feed(sn, pkts)
    sn.close()
    assert [(o.sni, str(o.protocol), str(o.transport)) for o in insp.seen] == [
        ("h3.example.org", "quic", "udp")
    ]
    assert insp.seen[0].alpn == ("h3",)
    assert sn.stats.malformed == {}
    assert sn.stats.names["quic-sni"] == 1


def test_coalesced_initial_then_garbage_in_one_datagram() -> None:
    insp = RecordingInspector()
    sn = Sniffer(insp.inspect)
    hello = client_hello("co.example.org", ("h3",), quic=True)
    dg = quic_initial(crypto_frame(0, hello), os.urandom(8), size=1600) + os.urandom(60)
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.20", 50001, 443, dg)])
    sn.close()
    assert [o.sni for o in insp.seen] == ["co.example.org"]


def test_undecryptable_initial_is_counted_and_flow_still_judged() -> None:
    insp = RecordingInspector()
    sn = Sniffer(insp.inspect)
    dg = bytearray(quic_initial(crypto_frame(0, client_hello("x.example")), os.urandom(8)))
    dg[40] ^= 1
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.20", 50002, 443, bytes(dg))])
    sn.close()
    assert sn.stats.malformed["quic-initial"] == 1
    assert len(insp.seen) == 1 and insp.seen[0].sni is None
