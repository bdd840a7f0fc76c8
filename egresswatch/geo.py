"""Address -> country, ASN and organisation: the GeoIP resolver chain.

The chain answers in this order, and every answer says which part gave it
(:class:`~egresswatch.model.GeoSource`):

1. **local**: loopback, RFC 1918, link-local, CGNAT, ULA, multicast ... never a
   foreign country. Defined explicitly below, *not* with ``ipaddress.is_private``,
   which also counts the documentation ranges (RFC 5737, RFC 3849) as private;
   egresswatch's tests and labs use those ranges as "the internet".
2. **override**: a lab's CSV file (CIDR -> country and/or label, optional ASN).
3. **mmdb**: MaxMind-format databases read with ``maxminddb`` (GeoLite2/GeoIP2,
   DB-IP Lite, IPinfo Lite, or files made by :func:`build_mmdb`).
4. **registry**: the RIR delegation country from ``iptocc``, which ships its data
   in the wheel, so a fresh install answers offline.

Database files are opened once (by :meth:`GeoChain.from_paths` or by the caller)
and answers are kept in a bounded LRU cache: a repeated lookup costs a dict hit.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import iptocc
import maxminddb
from maxminddb.errors import InvalidDatabaseError

from egresswatch.errors import ConfigError, GeoIPError
from egresswatch.model import GeoAnswer, GeoSource

if TYPE_CHECKING:
    from egresswatch.ports import GeoResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: environment variable naming the folder searched for ``*.mmdb`` files
GEOIP_DIR_ENV = "EGRESSWATCH_GEOIP_DIR"
#: folder used by an installed (non-checkout) egresswatch
SYSTEM_GEOIP_DIR = Path("/var/lib/egresswatch/geoip")
#: overrides file picked up from the GeoIP folder when none is given
OVERRIDES_NAME = "overrides.csv"
#: databases older than this are reported as stale. GeoLite2 is rebuilt twice a
#: week and DB-IP Lite monthly, so 60 days means updates have stopped.
STALE_DAYS = 60
#: bounded cache: ~64k answers is a few MB and covers a busy lab's destinations
DEFAULT_CACHE_SIZE = 65536
#: ``database_type`` written by :func:`build_mmdb`
BUILD_DATABASE_TYPE = "egresswatch-Country-ASN"

HOWTO = (
    "get a free GeoLite2-Country.mmdb (and GeoLite2-ASN.mmdb) from MaxMind, a DB-IP Lite "
    "or IPinfo Lite .mmdb file, or build one from a CSV with `egresswatch geoip build`; "
    "see geoip/README.md"
)

ROLE_COUNTRY = "country"
ROLE_ASN = "asn"

# --------------------------------------------------------------------------- local ranges

#: Address blocks that are "local": traffic to them does not leave the site, so
#: they never get a country. Sources: IANA IPv4/IPv6 Special-Purpose Address
#: Registries (RFC 6890) and the RFC cited per line. The documentation ranges
#: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (RFC 5737) and 2001:db8::/32
#: (RFC 3849) are deliberately absent.
LOCAL_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network (RFC 1122 §3.2.1.3)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space / CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122 §3.2.1.3)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    # benchmarking nets (RFC 2544) are lab gear and fake-IP DNS of local proxies
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
    ("::/128", "unspecified (RFC 4291 §2.5.2)"),
    ("::1/128", "loopback (RFC 4291 §2.5.3)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291 §2.5.6)"),
    ("fec0::/10", "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291 §2.7)"),
)

#: NAT64 well-known prefix: the last 32 bits are the IPv4 destination (RFC 6052 §2.1)
_NAT64_PREFIX = int(ipaddress.IPv6Address("64:ff9b::")) >> 32


class PrefixTable[V]:
    """Longest-prefix match over a few networks: one dict probe per distinct prefix length.

    A handful of prefix lengths make this a few hundred nanoseconds, with no
    dependency; the big tables live in the mmdb files.
    """

    def __init__(self, entries: Iterable[tuple[IPNetwork, V]]) -> None:
        self._maps: dict[tuple[int, int], dict[int, V]] = {}
        for net, value in entries:
            bits = net.max_prefixlen
            key = int(net.network_address) >> (bits - net.prefixlen)
            self._maps.setdefault((net.version, net.prefixlen), {})[key] = value
        self._lengths: dict[int, list[tuple[int, int, dict[int, V]]]] = {4: [], 6: []}
        for (version, plen), table in sorted(self._maps.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._lengths[version].append((bits - plen, plen, table))

    def match(self, ip: IPAddress) -> V | None:
        """The value of the longest network containing ``ip``, or None."""
        return self.match_value(ip.version, int(ip))

    def match_value(self, version: int, value: int) -> V | None:
        """:meth:`match` for an address given as (4 or 6, integer value)."""
        for shift, _plen, table in self._lengths[version]:
            hit = table.get(value >> shift)
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        return sum(len(t) for t in self._maps.values())


_LOCAL_BLOCKS = tuple(ipaddress.ip_network(net) for net, _ in LOCAL_NETWORKS)
_LOCAL = PrefixTable(zip(_LOCAL_BLOCKS, (reason for _, reason in LOCAL_NETWORKS), strict=True))


_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def _parse(addr: str) -> tuple[int, int, str] | None:
    """(4 or 6, integer value, text for the C lookups) or None; see :func:`parse_address`.

    ``socket.inet_pton`` is C and about ten times faster than ``ipaddress`` here,
    which matters for uncached lookups on the proxy's hot path.
    """
    text = addr.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return 4, int.from_bytes(socket.inet_pton(_AF_INET, text)), text
    except (OSError, ValueError):
        pass
    text = text.split("%", 1)[0]  # zone id (RFC 4007 §11): same address
    try:
        packed = socket.inet_pton(_AF_INET6, text)
    except (OSError, ValueError):
        return None
    value = int.from_bytes(packed)
    top = value >> 32
    if top == 0xFFFF or top == _NAT64_PREFIX:
        v4 = packed[12:]
        return 4, int.from_bytes(v4), socket.inet_ntop(_AF_INET, v4)
    return 6, value, text


def parse_address(addr: str) -> IPAddress | None:
    """Parse an address as sensors give it; None when it is not an IP address.

    Accepts ``[v6]`` brackets and zone ids (``fe80::1%eth0``). IPv4-mapped IPv6
    (``::ffff:a.b.c.d``, RFC 4291 §2.5.5.2) and NAT64 well-known-prefix addresses
    (``64:ff9b::a.b.c.d``, RFC 6052 §2.1) are judged as the IPv4 address they carry.
    """
    parsed = _parse(addr)
    if parsed is None:
        return None
    version, value, _ = parsed
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def local_reason(addr: str | IPAddress) -> str | None:
    """Why an address is local ("private (RFC 1918)"), or None when it is not."""
    ip = parse_address(addr) if isinstance(addr, str) else addr
    if ip is None:
        return None
    return _LOCAL.match(ip)


def is_local(addr: str | IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, ULA, multicast ... (see LOCAL_NETWORKS)."""
    return local_reason(addr) is not None


# --------------------------------------------------------------------------- CSV ranges


@dataclass(frozen=True, slots=True)
class RangeRow:
    """One line of a ranges/overrides CSV file, validated."""

    network: IPNetwork
    country: str | None
    asn: int | None = None
    org: str | None = None
    label: str | None = None
    line: int = 0


_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_ASN_RE = re.compile(r"^(?:AS)?(\d{1,10})$", re.IGNORECASE)
_COLUMNS = ("network", "country", "asn", "org", "label")
#: column order when a file has no header row
BUILD_COLUMNS = ("network", "country", "asn", "org")
OVERRIDE_COLUMNS = ("network", "country", "label", "asn", "org")


def parse_network(text: str) -> IPNetwork:
    """``203.0.113.0/24`` or a bare address (a /32 or /128). Raises ValueError saying why."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network (write e.g. 203.0.113.0/24)") from e
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from e


def parse_country(text: str) -> str:
    """An ISO 3166-1 alpha-2 code, upper-cased. Raises ValueError."""
    code = text.strip().upper()
    if not _COUNTRY_RE.match(code):
        raise ValueError(f"{text!r} is not a two-letter ISO 3166 country code")
    return code


def parse_asn(text: str | int) -> int:
    """``64500`` or ``AS64500`` -> 64500 (32-bit, RFC 6793). Raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _ASN_RE.match(str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not an AS number (write 64500 or AS64500)")
        value = int(m.group(1))
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"AS number {value} is out of range (0..4294967295)")
    return value


def read_ranges_csv(
    path: str | Path,
    *,
    columns: Sequence[str] = BUILD_COLUMNS,
    need_country: bool = True,
) -> list[RangeRow]:
    """Read and validate a ranges CSV; errors name the file, line and field.

    Lines starting with ``#`` and blank lines are skipped. A first row starting
    with ``network`` is a header naming the columns (any of network, country,
    asn, org, label); otherwise ``columns`` gives the order. With
    ``need_country`` every row needs a country, else a country or a label.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", path=str(p)) from e
    rows: list[RangeRow] = []
    seen: dict[IPNetwork, int] = {}
    header: Sequence[str] = columns
    first = True
    for lineno, cells in enumerate(csv.reader(text.splitlines()), start=1):
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in cells]
        if first and cells[0].lower() == "network":
            first = False
            header = [c.lower() for c in cells]
            for name in header:
                if name not in _COLUMNS:
                    raise ConfigError(
                        f"unknown column {name!r} (known: {', '.join(_COLUMNS)})",
                        path=str(p),
                        line=lineno,
                        field=name,
                    )
            continue
        first = False
        if len(cells) > len(header):
            raise ConfigError(
                f"{len(cells)} fields, expected at most {len(header)} ({', '.join(header)})",
                path=str(p),
                line=lineno,
            )
        values = dict(zip(header, cells, strict=False))
        rows.append(_range_row(values, p, lineno, need_country, seen))
    return rows


def _range_row(
    values: dict[str, str], p: Path, lineno: int, need_country: bool, seen: dict[IPNetwork, int]
) -> RangeRow:
    """Validate one CSV row (see :func:`read_ranges_csv`)."""

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(message, path=str(p), line=lineno, field=field)

    try:
        network = parse_network(values.get("network", ""))
    except ValueError as e:
        raise fail("network", str(e)) from None
    if network in seen:
        raise fail("network", f"{network} already given on line {seen[network]}")
    seen[network] = lineno
    country = None
    if values.get("country"):
        try:
            country = parse_country(values["country"])
        except ValueError as e:
            raise fail("country", str(e)) from None
    label = values.get("label") or None
    if country is None and (need_country or label is None):
        raise fail("country", "missing" if need_country else "give a country, a label or both")
    asn = None
    if values.get("asn"):
        try:
            asn = parse_asn(values["asn"])
        except ValueError as e:
            raise fail("asn", str(e)) from None
    return RangeRow(network, country, asn, values.get("org") or None, label, lineno)


# --------------------------------------------------------------------------- overrides


class Overrides:
    """Lab overrides: CIDR -> country and/or label (and optionally ASN, organisation).

    The most specific network wins. A local network (RFC 1918 ...) may carry a
    label but not a country: local stays local.
    """

    def __init__(self, rows: Iterable[RangeRow], path: str | None = None) -> None:
        self.rows = tuple(rows)
        self.path = path
        for row in self.rows:
            if row.country and network_is_local(row.network):
                raise ConfigError(
                    f"{row.network} is a local range ({local_reason(row.network.network_address)})"
                    "; it stays local: give it a label, not a country",
                    path=path,
                    line=row.line or None,
                    field="country",
                )
        self._table = PrefixTable((row.network, row) for row in self.rows)

    @classmethod
    def load(cls, path: str | Path) -> Overrides:
        """Read an overrides CSV (header ``network,country,label,asn,org``)."""
        rows = read_ranges_csv(path, columns=OVERRIDE_COLUMNS, need_country=False)
        return cls(rows, str(path))

    def match(self, ip: IPAddress) -> RangeRow | None:
        """The most specific override containing ``ip``."""
        return self._table.match(ip)

    def match_value(self, version: int, value: int) -> RangeRow | None:
        """:meth:`match` for (4 or 6, integer value)."""
        return self._table.match_value(version, value)

    def __len__(self) -> int:
        return len(self.rows)


def network_is_local(net: IPNetwork) -> bool:
    """True when the whole network lies inside one local block (see LOCAL_NETWORKS)."""
    return any(
        net.version == block.version and net.subnet_of(block)  # type: ignore[arg-type]
        for block in _LOCAL_BLOCKS
    )


# --------------------------------------------------------------------------- mmdb files


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """What ``geoip info`` shows about one database file."""

    path: Path
    #: the file's ``database_type`` metadata ("GeoLite2-Country", "DBIP-ASN-Lite" ...)
    type: str
    built: datetime
    age_days: float
    stale: bool
    #: what the chain uses it for: ("country",), ("asn",) or both
    roles: tuple[str, ...]
    ip_version: int
    description: str | None = None


def _roles_from_type(database_type: str) -> set[str]:
    """Roles implied by the ``database_type`` metadata (GeoLite2-*, GeoIP2-*, DBIP-*...)."""
    t = database_type.lower()
    roles: set[str] = set()
    if "asn" in t or "isp" in t:
        roles.add(ROLE_ASN)
    if "country" in t or "city" in t or "enterprise" in t:
        roles.add(ROLE_COUNTRY)
    if "enterprise" in t:
        roles.add(ROLE_ASN)  # GeoIP2-Enterprise carries traits.autonomous_system_number
    return roles


def _roles_from_record(record: Any) -> set[str]:
    """Roles seen in one record's keys, for types the names do not tell (IPinfo Lite ...)."""
    roles: set[str] = set()
    if isinstance(record, dict):
        if {"country", "country_code", "registered_country"} & record.keys():
            roles.add(ROLE_COUNTRY)
        if {"autonomous_system_number", "asn"} & record.keys():
            roles.add(ROLE_ASN)
    return roles


def extract(record: Any) -> tuple[str | None, int | None, str | None]:
    """(country, asn, org) from one record in any supported layout.

    GeoLite2/GeoIP2 and DB-IP Lite: ``country.iso_code`` (else
    ``registered_country.iso_code``), ``autonomous_system_number``,
    ``autonomous_system_organization`` (GeoIP2-Enterprise: under ``traits``).
    IPinfo Lite: ``country_code``, ``asn`` ("AS13335"), ``as_name``; IPinfo's
    older country_asn file: ``country`` as a two-letter code.
    """
    # exact type checks and the GeoLite2 layout first: this runs on every
    # uncached lookup, and isinstance/regex chains cost microseconds here
    if type(record) is not dict:
        return _NOTHING
    get = record.get
    country: Any = None
    c = get("country")
    if type(c) is dict:
        country = c.get("iso_code")
    if country is None:
        country = get("country_code")
        if country is None:
            if type(c) is str and len(c) == 2:
                country = c
            else:
                rc = get("registered_country")
                if type(rc) is dict:
                    country = rc.get("iso_code")
    if country is not None:
        if type(country) is str and len(country) == 2 and country.isalpha():
            country = country.upper()
        else:
            country = None
    asn: Any = get("autonomous_system_number")
    org: Any = None
    if asn is not None:
        org = get("autonomous_system_organization")
    else:
        traits = get("traits")
        if type(traits) is dict and "autonomous_system_number" in traits:
            asn = traits.get("autonomous_system_number")
            org = traits.get("autonomous_system_organization")
        else:
            asn = get("asn")
            if asn is not None:
                org = get("as_name")
                if type(asn) is str:
                    m = _ASN_RE.match(asn)
                    asn = int(m.group(1)) if m else None
    if type(asn) is not int:
        asn = None
    if type(org) is not str or not org:
        org = None
    if country is None and asn is None:
        return _NOTHING
    return country, asn, org


_NOTHING: tuple[None, None, None] = (None, None, None)


class GeoDatabase:
    """One opened MaxMind-format file and what the chain uses it for."""

    def __init__(self, reader: maxminddb.Reader, path: Path, roles: Iterable[str]) -> None:
        self.reader = reader
        self.path = path
        self.roles = frozenset(roles)
        meta = reader.metadata()
        self.database_type = str(meta.database_type)
        self.ip_version = int(meta.ip_version)
        self.build_epoch = int(meta.build_epoch)
        desc = meta.description
        self.description = desc.get("en") or next(iter(desc.values()), None) if desc else None
        self.has_country = ROLE_COUNTRY in self.roles
        self.has_asn = ROLE_ASN in self.roles
        #: lookups that hit a damaged record in this file
        self.errors = 0

    @classmethod
    def open(cls, path: str | Path, want: str | None = None) -> GeoDatabase:
        """Open and identify a database; GeoIPError with a how-to when that fails.

        ``want`` ("country" or "asn") checks the file can serve that role.
        """
        p = Path(path)
        if not p.is_file():
            what = "is a folder, not a file" if p.is_dir() else "not found"
            raise GeoIPError(f"GeoIP database {p} {what}: {HOWTO}")
        hint = _what_is(p)
        if hint is not None:
            # checked first: a tar holding an .mmdb even opens (maxminddb finds the
            # inner file's metadata marker) and then answers garbage
            raise GeoIPError(f"{p} is not a valid MaxMind DB file ({hint}); {HOWTO}")
        try:
            reader = maxminddb.open_database(str(p))
        except (InvalidDatabaseError, ValueError, UnicodeDecodeError) as e:
            raise GeoIPError(
                f"{p} is not a valid MaxMind DB file (corrupt, truncated or another "
                f"format: {e}); "
                f"download it again or {HOWTO}"
            ) from e
        except OSError as e:
            raise GeoIPError(f"cannot open GeoIP database {p}: {e.strerror or e}") from e
        try:
            meta = reader.metadata()
            roles = _roles_from_type(str(meta.database_type))
            if not roles:
                roles = _roles_from_record(_first_record(reader))
        except (InvalidDatabaseError, ValueError, UnicodeDecodeError) as e:
            reader.close()
            raise GeoIPError(f"{p} is corrupt ({e}); download it again or {HOWTO}") from e
        db = cls(reader, p, roles)
        if want is not None and want not in db.roles:
            db.close()
            has = ", ".join(sorted(roles)) or "neither country nor ASN data"
            raise GeoIPError(
                f"{p} is a {meta.database_type!r} database ({has}); a {want} database is needed "
                "here, such as "
                + (
                    "GeoLite2-Country, DB-IP Country Lite or IPinfo Lite"
                    if want == ROLE_COUNTRY
                    else "GeoLite2-ASN, DB-IP ASN Lite or IPinfo Lite"
                )
            )
        return db

    def record(
        self, ip: IPAddress | str, version: int | None = None
    ) -> tuple[str | None, int | None, str | None]:
        """(country, asn, org) for an address from this file; Nones when it has no entry."""
        if version is None:
            version = 4 if isinstance(ip, str) and ":" not in ip else 6
            if not isinstance(ip, str):
                version = ip.version
        if version == 6 and self.ip_version == 4:
            return None, None, None  # maxminddb raises on v6 in an IPv4-only file
        try:
            record = self.reader.get(ip)
        except (InvalidDatabaseError, ValueError, UnicodeDecodeError):
            # a damaged record: this file does not know, the rest of the chain may
            self.errors += 1
            return None, None, None
        return extract(record)

    def info(self, now: datetime | None = None) -> DatabaseInfo:
        """Build date, age and staleness (older than STALE_DAYS)."""
        now = now or datetime.now(UTC)
        built = datetime.fromtimestamp(self.build_epoch, UTC)
        age = (now - built).total_seconds() / 86400
        return DatabaseInfo(
            path=self.path,
            type=self.database_type,
            built=built,
            age_days=age,
            stale=age > STALE_DAYS,
            roles=tuple(r for r in (ROLE_COUNTRY, ROLE_ASN) if r in self.roles),
            ip_version=self.ip_version,
            description=self.description,
        )

    def close(self) -> None:
        """Unmap the file."""
        self.reader.close()


def _what_is(path: Path) -> str | None:
    """A hint from the first bytes for the usual wrong files, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if not head:
        return "the file is empty"
    if head.startswith(b"\x1f\x8b"):  # gzip magic, RFC 1952 §2.3.1
        return "it is gzip-compressed: extract the .mmdb from the .tar.gz / .gz first"
    if head[257:262] == b"ustar":  # POSIX tar header magic at offset 257
        return "it is a tar archive: extract the .mmdb from it first"
    if head.startswith(b"PK\x03\x04"):  # zip local file header
        return "it is a zip archive: extract the .mmdb from it first"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"{")):
        return "it is a web page or an API answer, not a database: the download failed"
    return None


def _first_record(reader: maxminddb.Reader) -> Any:
    """The first record of a file (iteration walks the tree lazily)."""
    for _network, record in reader:
        return record
    return None


def discover(folder: Path) -> list[GeoDatabase]:
    """Open every ``*.mmdb`` in ``folder`` (sorted by name) that has country or ASN data."""
    found: list[GeoDatabase] = []
    try:
        for path in sorted(folder.glob("*.mmdb")):
            db = GeoDatabase.open(path)
            if db.roles:
                found.append(db)
            else:  # e.g. GeoIP2-Anonymous-IP: nothing for us
                db.close()
    except BaseException:
        for db in found:
            db.close()
        raise
    return found


def _dir_origin(geoip_dir: str | Path | None) -> str:
    """Where a GeoIP folder setting came from, for error messages."""
    env = os.environ.get(GEOIP_DIR_ENV)
    if env and (geoip_dir is None or Path(env) == Path(geoip_dir)):
        return "$" + GEOIP_DIR_ENV
    return "the geoip_dir setting / --geoip-dir"


def default_geoip_dir() -> Path:
    """The GeoIP folder: $EGRESSWATCH_GEOIP_DIR, the checkout's geoip/, or the system one."""
    env = os.environ.get(GEOIP_DIR_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "geoip").is_dir():
        return checkout / "geoip"
    return SYSTEM_GEOIP_DIR


# --------------------------------------------------------------------------- the chain

_NO_ANSWER = GeoAnswer(None, GeoSource.NONE)
_LOCAL_ANSWER = GeoAnswer(None, GeoSource.LOCAL)
#: bound on interned answers; distinct (country, ASN, org) triples number about 100k worldwide
_INTERN_MAX = 65536


class GeoChain:
    """The resolver chain (local -> overrides -> mmdb files -> registry); a ``ports.GeoResolver``.

    Takes already-opened parts; :meth:`from_paths` finds and opens them.
    ``lookup`` never raises and caches up to ``cache_size`` answers
    (``cache_size=0`` turns the cache off, for benchmarks).
    """

    def __init__(
        self,
        databases: Sequence[GeoDatabase] = (),
        overrides: Overrides | None = None,
        *,
        registry: bool = True,
        cache_size: int = DEFAULT_CACHE_SIZE,
        geoip_dir: Path | None = None,
    ) -> None:
        self._dbs = tuple(databases)
        self._country_dbs = tuple(db for db in self._dbs if db.has_country)
        self._asn_dbs = tuple(db for db in self._dbs if db.has_asn)
        self.overrides = overrides
        self.registry = registry
        self.geoip_dir = geoip_dir
        self.cache_size = cache_size
        self._errors = 0
        self._interned: dict[tuple[object, ...], GeoAnswer] = {}
        self._cached = (
            functools.lru_cache(maxsize=cache_size)(self._resolve) if cache_size > 0 else None
        )

    @classmethod
    def from_paths(
        cls,
        country_db: str | Path | None = None,
        asn_db: str | Path | None = None,
        overrides: str | Path | None = None,
        geoip_dir: str | Path | None = None,
        registry: bool = True,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> GeoChain:
        """Find and open the parts; raises GeoIPError/ConfigError saying how to fix it.

        Explicit ``country_db`` / ``asn_db`` files are used for their role;
        otherwise every ``*.mmdb`` in the GeoIP folder is used for the roles its
        ``database_type`` metadata (or, failing that, its records) shows. The
        folder is ``geoip_dir``, else ``$EGRESSWATCH_GEOIP_DIR``, else the
        checkout's ``geoip/``, else ``/var/lib/egresswatch/geoip``; an explicitly
        named folder must exist, the default one may be absent. ``overrides``
        defaults to ``overrides.csv`` in that folder when present.
        """
        explicit_dir = geoip_dir is not None or bool(os.environ.get(GEOIP_DIR_ENV))
        folder = Path(geoip_dir) if geoip_dir is not None else default_geoip_dir()
        if explicit_dir and not folder.is_dir():
            raise GeoIPError(
                f"GeoIP folder {folder} does not exist (from {_dir_origin(geoip_dir)}); "
                f"create it and put .mmdb files there: {HOWTO}"
            )
        opened: list[GeoDatabase] = []
        try:
            same = (
                country_db is not None
                and asn_db is not None
                and Path(country_db).resolve() == Path(asn_db).resolve()
            )
            if country_db is not None:
                db = GeoDatabase.open(country_db, ROLE_COUNTRY)
                if same and ROLE_ASN not in db.roles:
                    db.close()
                    GeoDatabase.open(asn_db or country_db, ROLE_ASN)  # raises: wrong type
                # a file named for one role serves only that role, unless it is named
                # for both or no ASN file is named (IPinfo Lite as --country-db)
                keep = {ROLE_COUNTRY} | ({ROLE_ASN} if same or asn_db is None else set())
                opened.append(GeoDatabase(db.reader, db.path, db.roles & keep))
            if asn_db is not None and not same:
                db = GeoDatabase.open(asn_db, ROLE_ASN)
                opened.append(GeoDatabase(db.reader, db.path, {ROLE_ASN}))
            if (country_db is None or asn_db is None) and folder.is_dir():
                named = {db.path.resolve() for db in opened}
                for db in discover(folder):
                    # an explicit file replaces discovery for its role
                    roles = set(db.roles) if db.path.resolve() not in named else set()
                    if country_db is not None:
                        roles.discard(ROLE_COUNTRY)
                    if asn_db is not None:
                        roles.discard(ROLE_ASN)
                    if roles:
                        opened.append(GeoDatabase(db.reader, db.path, roles))
                    else:
                        db.close()
            ov = None
            if overrides is not None:
                ov = Overrides.load(overrides)
            elif (folder / OVERRIDES_NAME).is_file():
                ov = Overrides.load(folder / OVERRIDES_NAME)
        except BaseException:
            for db in opened:
                db.close()
            raise
        return cls(opened, ov, registry=registry, cache_size=cache_size, geoip_dir=folder)

    def lookup(self, addr: str) -> GeoAnswer:
        """Country, ASN and organisation of an address, and which source said so.

        Never raises: a malformed address gives ``GeoAnswer(None, GeoSource.NONE)``.
        """
        try:
            if self._cached is not None:
                return self._cached(addr)
            return self._resolve(addr)
        except Exception:  # a resolver failure must never take a flow down
            self._errors += 1
            return _NO_ANSWER

    @property
    def errors(self) -> int:
        """Lookups that failed (a caller's non-string, a damaged database record).

        Such lookups are answered as unknown, or by the rest of the chain, and
        counted here so that a sensor can report them.
        """
        return self._errors + sum(db.errors for db in self._dbs)

    def _resolve(self, addr: str) -> GeoAnswer:
        parsed = _parse(addr)
        if parsed is None:
            return _NO_ANSWER
        version, value, ip = parsed
        overrides = self.overrides
        override = overrides.match_value(version, value) if overrides is not None else None
        if _LOCAL.match_value(version, value) is not None:
            if override is None or override.label is None:
                return _LOCAL_ANSWER
            return self._answer(None, GeoSource.LOCAL, None, None, override.label)
        country: str | None = None
        source = GeoSource.NONE
        asn: int | None = None
        org: str | None = None
        label: str | None = None
        if override is not None:
            label = override.label
            if override.country:
                country, source = override.country, GeoSource.OVERRIDE
            if override.asn is not None:
                asn, org = override.asn, override.org
        asked: list[GeoDatabase] = []
        if country is None:
            for db in self._country_dbs:
                c, a, o = db.record(ip, version)
                asked.append(db)
                if asn is None and a is not None and db.has_asn:
                    asn, org = a, o  # IPinfo Lite and our own files carry both
                if c is not None:
                    country, source = c, GeoSource.MAXMIND
                    break
        if asn is None:
            for db in self._asn_dbs:
                if db in asked:
                    continue  # its record had no ASN a moment ago
                _, a, o = db.record(ip, version)
                if a is not None:
                    asn, org = a, o
                    break
        if country is None and self.registry:
            c = iptocc.country_code(ip)
            if c:
                country, source = c.upper(), GeoSource.REGISTRY
        if country is None and label is not None:
            source = GeoSource.OVERRIDE  # the override named it, nobody placed it
        if source is GeoSource.NONE and asn is None:
            return _NO_ANSWER
        return self._answer(country, source, asn, org, label)

    def _answer(
        self,
        country: str | None,
        source: GeoSource,
        asn: int | None,
        org: str | None,
        label: str | None,
    ) -> GeoAnswer:
        """One shared GeoAnswer per distinct content: building a frozen dataclass costs
        about 2 µs, a dict hit a tenth of that, and many addresses share an answer."""
        key = (country, source, asn, org, label)
        answer = self._interned.get(key)
        if answer is None:
            if len(self._interned) >= _INTERN_MAX:
                self._interned.clear()
            answer = self._interned[key] = GeoAnswer(country, source, asn, org, label)
        return answer

    def cache_info(self) -> functools._CacheInfo | None:
        """Hits, misses and size of the answer cache (None when it is off)."""
        return self._cached.cache_info() if self._cached is not None else None

    def cache_clear(self) -> None:
        """Forget cached answers (after replacing a database file)."""
        if self._cached is not None:
            self._cached.cache_clear()

    def databases(self, now: datetime | None = None) -> list[DatabaseInfo]:
        """The open database files, in the order they are asked."""
        return [db.info(now) for db in self._dbs]

    def close(self) -> None:
        """Close the database files; later lookups answer from overrides/registry or unknown."""
        self.cache_clear()
        for db in self._dbs:
            db.close()
        self._dbs = self._country_dbs = self._asn_dbs = ()

    def __enter__(self) -> GeoChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- building


def build_mmdb(
    rows: Iterable[tuple[str, str, int | None, str | None]],
    out: Path,
    *,
    database_type: str = BUILD_DATABASE_TYPE,
    description: str = "egresswatch lab GeoIP database",
    build_time: datetime | None = None,
) -> int:
    """Write a MaxMind DB mapping networks to country (and ASN/organisation).

    Records use the GeoLite2 layout (``{"country": {"iso_code": ...}}``,
    ``autonomous_system_number``, ``autonomous_system_organization``), so the
    same reader path serves real GeoLite2 files and ours. Returns the number of
    networks written; raises GeoIPError on bad rows (see :func:`write_mmdb`).
    """
    from mmdb_writer import MmdbU32

    records: list[tuple[str, dict[str, Any]]] = []
    for n, (network, country, asn, org) in enumerate(rows, start=1):
        try:
            record: dict[str, Any] = {"country": {"iso_code": parse_country(country)}}
            if asn is not None:
                # GeoLite2-ASN stores the number as uint32
                record["autonomous_system_number"] = MmdbU32(parse_asn(asn))
            if org:
                record["autonomous_system_organization"] = str(org)
        except (ValueError, TypeError, AttributeError) as e:
            raise GeoIPError(f"row {n} ({network!r}): {e}") from None
        records.append((network, record))
    return write_mmdb(
        records,
        out,
        database_type=database_type,
        description=description,
        build_time=build_time,
    )


def write_mmdb(
    records: Iterable[tuple[str, dict[str, Any]]],
    out: Path,
    *,
    database_type: str,
    description: str = "egresswatch GeoIP database",
    build_time: datetime | None = None,
    ip_version: int = 6,
) -> int:
    """Write (network, record) pairs in any layout to a MaxMind DB file.

    With ``ip_version=6`` IPv4 networks live in the ``::/96`` subtree, as in
    MaxMind's own files. The more specific network wins where networks nest.
    The file is written beside ``out`` and renamed over it, so a reader never
    sees half a file. Returns the number of networks; raises GeoIPError.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    parsed: dict[IPNetwork, dict[str, Any]] = {}
    for n, (network, record) in enumerate(records, start=1):
        try:
            net = parse_network(network)
        except ValueError as e:
            raise GeoIPError(f"row {n}: {e}") from None
        if net in parsed:
            raise GeoIPError(f"row {n}: {net} is given twice")
        if net.version == 6 and ip_version == 4:
            raise GeoIPError(f"row {n}: {net} is IPv6 but the database is IPv4-only")
        parsed[net] = record
    if not parsed:
        raise GeoIPError("no networks to write")

    epoch = int((build_time or datetime.now(UTC)).timestamp())

    class _Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            return {**super()._build_meta(), "build_epoch": epoch}

    writer = _Writer(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description=description,
    )

    def tree_prefixlen(net: IPNetwork) -> int:
        return net.prefixlen + (96 if net.version == 4 and ip_version == 6 else 0)

    # mmdb-writer lets a later, wider network overwrite narrower ones already
    # inserted, so insert from widest to narrowest: the more specific wins.
    for net in sorted(parsed, key=tree_prefixlen):
        writer.insert_network(IPSet([str(net)]), parsed[net])
    out = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    except OSError as e:
        raise GeoIPError(f"cannot write {out}: {e.strerror or e}") from e
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; services read it as another user
        os.replace(tmp, out)
    except OSError as e:
        raise GeoIPError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(parsed)


def iter_rows(rows: Iterable[RangeRow]) -> Iterator[tuple[str, str, int | None, str | None]]:
    """CSV rows (from :func:`read_ranges_csv`) as :func:`build_mmdb` input."""
    for row in rows:
        yield str(row.network), row.country or "", row.asn, row.org


def registry_version() -> str:
    """The installed iptocc version (its RIR data is as fresh as the wheel)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iptocc")
    except PackageNotFoundError:
        return "unknown"


if TYPE_CHECKING:  # mypy: GeoChain satisfies the port the inspector takes
    _resolver: GeoResolver = GeoChain()
