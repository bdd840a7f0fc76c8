"""GeoIP fixtures: a lab database that places the documentation ranges in countries.

``build_lab_db(path)`` writes a real MaxMind DB (with egresswatch's own builder)
that maps the ranges test "internet" servers live on:

=================  =======  ========  ==================
network            country  ASN       organisation
=================  =======  ========  ==================
203.0.113.0/24     CN       AS64500   Test CN Cloud
198.51.100.0/24    US       AS64501   Test US Cloud
192.0.2.0/24       DE       AS64502   Test DE Cloud
2001:db8:1::/48    CN       AS64500   Test CN Cloud
2001:db8:2::/48    US       AS64501   Test US Cloud
2001:db8:3::/48    DE       AS64502   Test DE Cloud
=================  =======  ========  ==================

The documentation ranges are RFC 5737 / RFC 3849 (never routed on the
internet); AS64500-64502 are from the documentation ASN block (RFC 5398).
Anything else is not in the file (the registry fallback or "unknown" answers).

Use::

    from helpers.geoip import build_lab_db, lab_chain
    db = build_lab_db(tmp_path / "lab.mmdb")
    chain = GeoChain.from_paths(country_db=db, asn_db=db, geoip_dir=tmp_path)
"""

from __future__ import annotations

from pathlib import Path

from egresswatch.geo import GeoChain, build_mmdb

#: (network, country, asn, org) rows written by build_lab_db
LAB_RANGES: tuple[tuple[str, str, int, str], ...] = (
    ("203.0.113.0/24", "CN", 64500, "Test CN Cloud"),
    ("198.51.100.0/24", "US", 64501, "Test US Cloud"),
    ("192.0.2.0/24", "DE", 64502, "Test DE Cloud"),
    ("2001:db8:1::/48", "CN", 64500, "Test CN Cloud"),
    ("2001:db8:2::/48", "US", 64501, "Test US Cloud"),
    ("2001:db8:3::/48", "DE", 64502, "Test DE Cloud"),
)

#: one address per lab country, handy for parametrized tests
LAB_ADDRESSES: dict[str, tuple[str, str]] = {
    "CN": ("203.0.113.10", "2001:db8:1::10"),
    "US": ("198.51.100.10", "2001:db8:2::10"),
    "DE": ("192.0.2.10", "2001:db8:3::10"),
}


def build_lab_db(path: Path) -> Path:
    """Write the lab database (see the module docstring) to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_mmdb(LAB_RANGES, path, description="egresswatch test lab ranges")
    return path


def lab_chain(folder: Path, *, registry: bool = True, cache_size: int = 1024) -> GeoChain:
    """A GeoChain over a fresh lab database in ``folder`` (and nothing else from disk)."""
    db = build_lab_db(Path(folder) / "lab.mmdb")
    return GeoChain.from_paths(
        country_db=db, asn_db=db, geoip_dir=folder, registry=registry, cache_size=cache_size
    )
