"""Address -> country, ASN and organisation: the GeoIP resolver chain.

The chain answers in this order, and every answer says which part gave it
(:class:`~egresswatch.model.GeoSource`):

1. **local**: loopback, RFC 1918, link-local, CGNAT, ULA, multicast ... never a
   foreign country. Defined explicitly (:mod:`egresswatch.geo.addresses`), *not*
   with ``ipaddress.is_private``, which also counts the documentation ranges
   (RFC 5737, RFC 3849) as private; egresswatch's tests and labs use those
   ranges as "the internet".
2. **override**: a lab's CSV file (CIDR -> country and/or label, optional ASN),
   :mod:`egresswatch.geo.ranges`.
3. **mmdb**: MaxMind-format databases read with ``maxminddb`` (GeoLite2/GeoIP2,
   DB-IP Lite, IPinfo Lite, or files made by :func:`build_mmdb`),
   :mod:`egresswatch.geo.mmdb`.
4. **registry**: the RIR delegation country from ``iptocc``, which ships its data
   in the wheel, so a fresh install answers offline.

Database files are opened once (by :meth:`GeoChain.from_paths` or by the caller)
and answers are kept in a bounded LRU cache: a repeated lookup costs a dict hit
(:mod:`egresswatch.geo.chain`). :mod:`egresswatch.geo.build` writes databases.
"""

from __future__ import annotations

from egresswatch.geo.addresses import (
    LOCAL_NETWORKS,
    IPAddress,
    IPNetwork,
    PrefixTable,
    is_local,
    local_reason,
    network_is_local,
    parse_address,
)
from egresswatch.geo.build import BUILD_DATABASE_TYPE, build_mmdb, iter_rows, write_mmdb
from egresswatch.geo.chain import DEFAULT_CACHE_SIZE, GeoChain
from egresswatch.geo.mmdb import (
    GEOIP_DIR_ENV,
    HOWTO,
    ROLE_ASN,
    ROLE_COUNTRY,
    STALE_DAYS,
    SYSTEM_GEOIP_DIR,
    DatabaseInfo,
    GeoDatabase,
    default_geoip_dir,
    discover,
    extract,
    registry_version,
)
from egresswatch.geo.ranges import (
    BUILD_COLUMNS,
    OVERRIDE_COLUMNS,
    OVERRIDES_NAME,
    Overrides,
    RangeRow,
    parse_asn,
    parse_country,
    parse_network,
    read_ranges_csv,
)

__all__ = [
    "BUILD_COLUMNS",
    "BUILD_DATABASE_TYPE",
    "DEFAULT_CACHE_SIZE",
    "GEOIP_DIR_ENV",
    "HOWTO",
    "LOCAL_NETWORKS",
    "OVERRIDES_NAME",
    "OVERRIDE_COLUMNS",
    "ROLE_ASN",
    "ROLE_COUNTRY",
    "STALE_DAYS",
    "SYSTEM_GEOIP_DIR",
    "DatabaseInfo",
    "GeoChain",
    "GeoDatabase",
    "IPAddress",
    "IPNetwork",
    "Overrides",
    "PrefixTable",
    "RangeRow",
    "build_mmdb",
    "default_geoip_dir",
    "discover",
    "extract",
    "is_local",
    "iter_rows",
    "local_reason",
    "network_is_local",
    "parse_address",
    "parse_asn",
    "parse_country",
    "parse_network",
    "read_ranges_csv",
    "registry_version",
    "write_mmdb",
]
