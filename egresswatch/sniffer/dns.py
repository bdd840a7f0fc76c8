"""DNS messages (RFC 1035) and the address → name cache that names later flows.

Answers feed the cache with the name the client *asked for* (the question), the
canonical name at the end of any CNAME chain, and the TTL. HTTPS/SVCB records
(RFC 9460 §7.3, ``ipv4hint``/``ipv6hint``) count as answers too: browsers
connect to hinted addresses without asking for A/AAAA. Parsers raise ValueError
on malformed messages and nothing else.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import NamedTuple

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_SVCB = 64  # RFC 9460 §14.1
TYPE_HTTPS = 65
#: SvcParamKeys carrying address hints (RFC 9460 §7.3)
SVC_IPV4HINT = 4
SVC_IPV6HINT = 6
TYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}


class Question(NamedTuple):
    name: str
    qtype: int


class Record(NamedTuple):
    """One answer record we understand; ``value`` is an address (raw bytes) or a name."""

    name: str
    rtype: int
    ttl: int
    value: bytes | str


class Message(NamedTuple):
    ident: int
    response: bool
    rcode: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed domain name (RFC 1035 §4.1.4): (name, position after it)."""
    labels: list[bytes] = []
    jumps = 0
    after = -1
    n = len(msg)
    total = 0
    while True:
        if pos >= n:
            raise ValueError("truncated name")
        ln = msg[pos]
        if ln == 0:
            pos += 1
            break
        if ln >= 0xC0:
            if pos + 1 >= n:
                raise ValueError("truncated pointer")
            if after < 0:
                after = pos + 2
            pos = (ln & 0x3F) << 8 | msg[pos + 1]
            jumps += 1
            if jumps > 32:
                raise ValueError("compression loop")
            continue
        if ln & 0xC0:
            raise ValueError("bad label type")
        end = pos + 1 + ln
        if end > n:
            raise ValueError("truncated label")
        labels.append(msg[pos + 1 : end])
        total += ln + 1
        if total > 255:
            raise ValueError("name too long")
        pos = end
    # one decode for the whole name: names are ASCII on the wire (RFC 1035 §2.3.1)
    return b".".join(labels).decode("ascii", "replace").lower(), (after if after >= 0 else pos)


def parse_message(msg: bytes) -> Message:
    """Parse a DNS message: header, questions, and the answer section's A/AAAA/CNAME/HTTPS/SVCB."""
    if len(msg) < 12:
        raise ValueError("DNS message shorter than its header")
    ident = msg[0] << 8 | msg[1]
    flags = msg[2] << 8 | msg[3]
    qd = msg[4] << 8 | msg[5]
    an = msg[6] << 8 | msg[7]
    if qd > 64 or an > 512:
        raise ValueError("implausible record counts")
    pos = 12
    questions: list[Question] = []
    for _ in range(qd):
        name, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise ValueError("truncated question")
        questions.append(Question(name, msg[pos] << 8 | msg[pos + 1]))
        pos += 4
    answers: list[Record] = []
    for _ in range(an):
        name, pos = read_name(msg, pos)
        if pos + 10 > len(msg):
            raise ValueError("truncated record")
        rtype = msg[pos] << 8 | msg[pos + 1]
        ttl = int.from_bytes(msg[pos + 4 : pos + 8], "big") & 0x7FFFFFFF  # RFC 2181 §8
        rdlen = msg[pos + 8] << 8 | msg[pos + 9]
        rd = pos + 10
        pos = rd + rdlen
        if pos > len(msg):
            raise ValueError("truncated rdata")
        if (rtype == TYPE_A and rdlen == 4) or (rtype == TYPE_AAAA and rdlen == 16):
            answers.append(Record(name, rtype, ttl, msg[rd:pos]))
        elif rtype == TYPE_CNAME:
            target, _ = read_name(msg, rd)
            answers.append(Record(name, rtype, ttl, target))
        elif rtype in (TYPE_HTTPS, TYPE_SVCB):
            answers.extend(_svcb_hints(msg, rd, pos, name, rtype, ttl))
    return Message(ident, bool(flags & 0x8000), flags & 0x000F, tuple(questions), tuple(answers))


def _svcb_hints(msg: bytes, pos: int, end: int, owner: str, rtype: int, ttl: int) -> list[Record]:
    """Address hints of an HTTPS/SVCB record (RFC 9460 §2.2 wire format), as A/AAAA-like records."""
    if pos + 2 > end:
        raise ValueError("truncated SVCB")
    pos += 2  # SvcPriority; 0 is AliasMode, which carries no params
    _target, pos = read_name(msg, pos)  # uncompressed per §2.2, read_name accepts both
    out: list[Record] = []
    while pos + 4 <= end:
        key = msg[pos] << 8 | msg[pos + 1]
        vlen = msg[pos + 2] << 8 | msg[pos + 3]
        v = pos + 4
        pos = v + vlen
        if pos > end:
            raise ValueError("SvcParam overruns the record")
        # hints keep the record's type (HTTPS/SVCB) with an address value
        if key == SVC_IPV4HINT:
            out.extend(Record(owner, rtype, ttl, msg[i : i + 4]) for i in range(v, pos - 3, 4))
        elif key == SVC_IPV6HINT:
            out.extend(Record(owner, rtype, ttl, msg[i : i + 16]) for i in range(v, pos - 15, 16))
    return out


_VIA = {TYPE_A: "A", TYPE_AAAA: "AAAA", TYPE_HTTPS: "HTTPS-hint", TYPE_SVCB: "SVCB-hint"}


class Resolution(NamedTuple):
    """What the cache knows about an address."""

    #: the name the client asked for
    name: str
    #: the CNAME chain from the question to the owner of the address record (question first)
    chain: tuple[str, ...]
    expires: float
    #: "A", "AAAA", "HTTPS-hint" or "SVCB-hint"
    via: str


def address_names(message: Message) -> list[tuple[bytes, str, tuple[str, ...], int, str]]:
    """(address, asked name, chain, ttl, via) for every address in a response's answers."""
    if not message.questions:
        return []
    cnames = {r.name: r for r in message.answers if r.rtype == TYPE_CNAME}
    out = []
    for q in message.questions:
        # walk the chain from the question (bounded: a loop would otherwise spin)
        chain = [q.name]
        ttl_floor = None
        while chain[-1] in cnames and len(chain) < 16:
            rec = cnames[chain[-1]]
            ttl_floor = rec.ttl if ttl_floor is None else min(ttl_floor, rec.ttl)
            assert isinstance(rec.value, str)
            if rec.value in chain:
                break
            chain.append(rec.value)
        owners = set(chain)
        for r in message.answers:
            if r.name in owners and isinstance(r.value, bytes):
                ttl = r.ttl if ttl_floor is None else min(r.ttl, ttl_floor)
                via = _VIA.get(r.rtype, "A")
                upto = chain[: chain.index(r.name) + 1]
                out.append((r.value, q.name, tuple(upto), ttl, via))
    return out


_ADDR_TEXT: dict[bytes, str] = {}


def addr_text(raw: bytes) -> str:
    """Raw 4- or 16-byte address as text (RFC 5952 form for IPv6), memoised (bounded)."""
    text = _ADDR_TEXT.get(raw)
    if text is None:
        v4 = len(raw) == 4
        text = ".".join(map(str, raw)) if v4 else socket.inet_ntop(socket.AF_INET6, raw)
        if len(_ADDR_TEXT) >= 65536:
            _ADDR_TEXT.clear()
        _ADDR_TEXT[raw] = text
    return text


class DnsCache:
    """Address → name, with TTLs and a bound; the oldest entry goes first when full.

    ``grace`` keeps a name usable that long after its TTL ran out: clients keep
    using addresses past the TTL (connection pools, stub caches), and a stale name
    is far more useful to a witness than none. Times are capture times.
    """

    def __init__(self, max_entries: int = 65536, grace: float = 60.0) -> None:
        self.max_entries = max_entries
        self.grace = grace
        self._entries: OrderedDict[bytes, Resolution] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, message: Message, now: float) -> list[tuple[str, Resolution]]:
        """Store every address in a response; returns (address text, resolution) learned."""
        learned = []
        for addr, name, chain, ttl, via in address_names(message):
            res = Resolution(name, chain, now + ttl, via)
            self._entries[addr] = res
            self._entries.move_to_end(addr)
            learned.append((addr_text(addr), res))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
        return learned

    def lookup(self, addr: bytes, now: float) -> Resolution | None:
        """The name for a raw address, if learned and not expired (plus grace)."""
        res = self._entries.get(addr)
        if res is None or res.expires + self.grace < now:
            return None
        return res
