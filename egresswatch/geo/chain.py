"""The resolver chain: local -> overrides -> mmdb files -> registry, with a bounded cache."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

import iptocc

from egresswatch.errors import GeoIPError
from egresswatch.geo.addresses import _LOCAL, _parse
from egresswatch.geo.mmdb import (
    GEOIP_DIR_ENV,
    HOWTO,
    ROLE_ASN,
    ROLE_COUNTRY,
    DatabaseInfo,
    GeoDatabase,
    _dir_origin,
    default_geoip_dir,
    discover,
)
from egresswatch.geo.ranges import OVERRIDES_NAME, Overrides
from egresswatch.model import GeoAnswer, GeoSource

if TYPE_CHECKING:
    from egresswatch.ports import GeoResolver

#: bounded cache: ~64k answers is a few MB and covers a busy lab's destinations
DEFAULT_CACHE_SIZE = 65536


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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy: GeoChain satisfies the port the inspector takes
    _resolver: GeoResolver = GeoChain()
