"""MaxMind-format database files: open, identify, read any supported layout."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from egresswatch.errors import GeoIPError
from egresswatch.geo.addresses import IPAddress
from egresswatch.geo.ranges import ASN_RE

#: environment variable naming the folder searched for ``*.mmdb`` files
GEOIP_DIR_ENV = "EGRESSWATCH_GEOIP_DIR"
#: folder used by an installed (non-checkout) egresswatch
SYSTEM_GEOIP_DIR = Path("/var/lib/egresswatch/geoip")
#: databases older than this are reported as stale. GeoLite2 is rebuilt twice a
#: week and DB-IP Lite monthly, so 60 days means updates have stopped.
STALE_DAYS = 60


HOWTO = (
    "get a free GeoLite2-Country.mmdb (and GeoLite2-ASN.mmdb) from MaxMind, a DB-IP Lite "
    "or IPinfo Lite .mmdb file, or build one from a CSV with `egresswatch geoip build`; "
    "see geoip/README.md"
)

ROLE_COUNTRY = "country"
ROLE_ASN = "asn"


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
                    m = ASN_RE.match(asn)
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
        self.description = (desc.get("en") or next(iter(desc.values()), None)) if desc else None
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
        except OSError as e:
            raise GeoIPError(
                f"cannot open GeoIP database {p}: {e.strerror or e} (check its permissions)"
            ) from e
        except Exception as e:  # InvalidDatabaseError, ValueError ...: all mean "bad file"
            raise GeoIPError(
                f"{p} is not a valid MaxMind DB file (corrupt, truncated or another "
                f"format: {e}); download it again or {HOWTO}"
            ) from e
        try:
            meta = reader.metadata()
            roles = _roles_from_type(str(meta.database_type))
            if not roles:
                roles = _roles_from_record(_first_record(reader))
            db = cls(reader, p, roles)
        except Exception as e:  # metadata of the wrong types, a damaged first record
            reader.close()
            raise GeoIPError(f"{p} is corrupt ({e}); download it again or {HOWTO}") from e
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
        try:
            built = datetime.fromtimestamp(self.build_epoch, UTC)
        except (OverflowError, OSError, ValueError):  # a nonsense epoch: treat as ancient
            built = datetime.fromtimestamp(0, UTC)
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
    checkout = Path(__file__).resolve().parents[2]  # egresswatch/geo/mmdb.py -> the checkout
    if (checkout / "pyproject.toml").is_file() and (checkout / "geoip").is_dir():
        return checkout / "geoip"
    return SYSTEM_GEOIP_DIR


def registry_version() -> str:
    """The installed iptocc version (its RIR data is as fresh as the wheel)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iptocc")
    except PackageNotFoundError:
        return "unknown"
