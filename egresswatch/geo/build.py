"""Writing MaxMind DB files: ``egresswatch geoip build``, lab and test databases."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from egresswatch.errors import GeoIPError
from egresswatch.geo.addresses import IPNetwork
from egresswatch.geo.ranges import RangeRow, parse_asn, parse_country, parse_network

#: ``database_type`` written by :func:`build_mmdb`
BUILD_DATABASE_TYPE = "egresswatch-Country-ASN"


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
