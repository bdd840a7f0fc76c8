"""The GeoIP resolver chain: local ranges, overrides, MaxMind-format files, registry.

Every database here is a real .mmdb file written by egresswatch's builder and
read back by ``maxminddb``; the registry answers come from the real ``iptocc``.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import maxminddb
import pytest
from conftest import ROOT
from helpers.geoip import LAB_ADDRESSES, LAB_RANGES, build_lab_db, lab_chain
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch import geo
from egresswatch.errors import ConfigError, GeoIPError
from egresswatch.geo import GeoChain, GeoDatabase, build_mmdb, write_mmdb
from egresswatch.model import GeoAnswer, GeoSource

# --------------------------------------------------------------------------- local or not

LOCAL = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT, RFC 6598
    "100.127.255.255",
    "169.254.169.254",  # link-local (cloud metadata)
    "198.18.0.1",  # benchmarking, RFC 2544
    "224.0.0.251",  # mDNS multicast
    "239.255.255.250",  # SSDP
    "255.255.255.255",
    "::",
    "::1",
    "[::1]",
    "fe80::1",
    "fe80::1%eth0",
    "fd00::1",  # ULA
    "fc00::1",
    "fec0::1",
    "ff02::fb",
    "::ffff:10.0.0.1",  # IPv4-mapped private
    "::ffff:127.0.0.1",
    "64:ff9b::c0a8:0101",  # NAT64 of 192.168.1.1
]

NOT_LOCAL = [
    # documentation ranges: ipaddress calls them private, egresswatch must not
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "2001:db8::1",
    "2001:db8:1::10",
    "::ffff:203.0.113.1",
    # edges just outside local blocks
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "11.0.0.1",
    "8.8.8.8",
    "2a00:1450:4001::1",
    "fbff:ffff::1",
    "fe00::1",
]


@pytest.mark.parametrize("addr", LOCAL)
def test_local_addresses_are_local(addr: str) -> None:
    assert geo.is_local(addr), geo.local_reason(addr)
    assert geo.local_reason(addr)


@pytest.mark.parametrize("addr", NOT_LOCAL)
def test_public_and_documentation_addresses_are_not_local(addr: str) -> None:
    assert not geo.is_local(addr), geo.local_reason(addr)


@pytest.mark.parametrize(
    "net", ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
)
def test_the_trap_ipaddress_calls_documentation_private_we_do_not(net: str) -> None:
    first = ipaddress.ip_network(net).network_address
    assert first.is_private  # the stdlib's view (RFC 6890 "not globally reachable")
    assert not geo.is_local(str(first))


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("203.0.113.5", "203.0.113.5"),
        (" 203.0.113.5 ", "203.0.113.5"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("::ffff:cb00:7105", "203.0.113.5"),
        ("64:ff9b::203.0.113.5", "203.0.113.5"),
        ("", None),
        ("example.com", None),
        ("1.2.3", None),
        ("256.1.1.1", None),
        ("1.2.3.4/24", None),
        ("1.2.3.4:80", None),
        ("::g", None),
        ("1.2.3.4\x00", None),
        ("\udcff", None),
    ],
)
def test_parse_address(addr: str, expected: str | None) -> None:
    parsed = geo.parse_address(addr)
    assert (str(parsed) if parsed is not None else None) == expected


# --------------------------------------------------------------------------- lab database


@pytest.fixture
def lab(tmp_path: Path) -> GeoChain:
    chain = lab_chain(tmp_path)
    yield chain
    chain.close()


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
@pytest.mark.parametrize("country", sorted(LAB_ADDRESSES))
def test_lab_database_places_documentation_ranges(lab: GeoChain, country: str, family: int) -> None:
    addr = LAB_ADDRESSES[country][family]
    answer = lab.lookup(addr)
    asn, org = {r[1]: (r[2], r[3]) for r in LAB_RANGES}[country]
    assert answer == GeoAnswer(country, GeoSource.MAXMIND, asn=asn, org=org)
    assert not answer.is_local


def test_lab_database_is_a_real_maxmind_file(tmp_path: Path) -> None:
    path = build_lab_db(tmp_path / "x" / "lab.mmdb")
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        assert meta.database_type == geo.BUILD_DATABASE_TYPE
        assert meta.ip_version == 6
        record, prefix = reader.get_with_prefix_len("203.0.113.77")
        assert prefix == 24
        assert record == {
            "country": {"iso_code": "CN"},
            "autonomous_system_number": 64500,
            "autonomous_system_organization": "Test CN Cloud",
        }
        record6, prefix6 = reader.get_with_prefix_len("2001:db8:3::1")
        assert prefix6 == 48 and record6["country"]["iso_code"] == "DE"  # type: ignore[index]
        assert reader.get("203.0.114.1") is None
        assert {str(net) for net, _ in reader} == {r[0] for r in LAB_RANGES}


@pytest.mark.parametrize(
    "mode", [maxminddb.MODE_MMAP_EXT, maxminddb.MODE_FILE, maxminddb.MODE_MEMORY]
)
def test_built_file_reads_the_same_in_c_and_pure_python_readers(tmp_path: Path, mode: int) -> None:
    """libmaxminddb (C) and maxminddb's pure-Python decoder are independent readers."""
    path = build_lab_db(tmp_path / "lab.mmdb")
    with maxminddb.open_database(str(path), mode) as reader:
        for network, country, asn, org in LAB_RANGES:
            first = str(ipaddress.ip_network(network)[1])
            record, prefix = reader.get_with_prefix_len(first)
            assert prefix == ipaddress.ip_network(network).prefixlen
            assert record == {
                "country": {"iso_code": country},
                "autonomous_system_number": asn,
                "autonomous_system_organization": org,
            }


@pytest.mark.parametrize(
    ("addr", "country", "source"),
    [
        ("::ffff:203.0.113.9", "CN", GeoSource.MAXMIND),  # mapped -> the IPv4 tree
        ("64:ff9b::198.51.100.9", "US", GeoSource.MAXMIND),  # NAT64 -> the IPv4 tree
        ("[2001:db8:2::9]", "US", GeoSource.MAXMIND),
        ("2001:db8:9::1", None, GeoSource.NONE),  # doc range not in the lab file
        ("240.0.0.1", None, GeoSource.NONE),  # reserved (RFC 1112), never delegated
        ("8.8.8.8", "US", GeoSource.REGISTRY),  # ARIN delegation, from iptocc
        ("10.1.2.3", None, GeoSource.LOCAL),
        ("not an address", None, GeoSource.NONE),
        ("", None, GeoSource.NONE),
    ],
)
def test_chain_answers_and_sources(
    lab: GeoChain, addr: str, country: str | None, source: GeoSource
) -> None:
    answer = lab.lookup(addr)
    assert (answer.country, answer.source) == (country, source)


def test_registry_can_be_turned_off(tmp_path: Path) -> None:
    with lab_chain(tmp_path, registry=False) as chain:
        assert chain.lookup("8.8.8.8") == GeoAnswer(None, GeoSource.NONE)
        assert chain.lookup("203.0.113.1").source is GeoSource.MAXMIND


def test_registry_alone_works_offline(tmp_path: Path) -> None:
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        assert chain.databases() == []
        assert chain.lookup("8.8.8.8") == GeoAnswer("US", GeoSource.REGISTRY)
        assert chain.lookup("2001:4860:4860::8888").country == "US"
        assert chain.lookup("203.0.113.1").source is GeoSource.NONE  # not delegated


# --------------------------------------------------------------------------- precedence

OVERRIDES_CSV = """\
# lab overrides: most specific network wins
network,country,label,asn,org
203.0.113.0/25,JP,lab-jp,64999,Lab JP
203.0.113.64/26,,lab-quiet
8.8.8.0/24,,dns-google
192.0.2.128/25,NL,
10.20.0.0/16,,lab-vpn
2001:db8:1:1::/64,FR,lab-fr
"""


@pytest.fixture
def ranked(tmp_path: Path) -> GeoChain:
    (tmp_path / "overrides.csv").write_text(OVERRIDES_CSV)
    chain = lab_chain(tmp_path)  # picks overrides.csv up from the folder
    assert chain.overrides is not None and len(chain.overrides) == 6
    yield chain
    chain.close()


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        # override beats the mmdb, with its own ASN
        ("203.0.113.1", GeoAnswer("JP", GeoSource.OVERRIDE, 64999, "Lab JP", "lab-jp")),
        # more specific label-only override: label, country from the wider override
        ("203.0.113.70", GeoAnswer("CN", GeoSource.MAXMIND, 64500, "Test CN Cloud", "lab-quiet")),
        # outside the overrides: the mmdb
        ("203.0.113.200", GeoAnswer("CN", GeoSource.MAXMIND, 64500, "Test CN Cloud")),
        # override without ASN: country from override, ASN still from the mmdb
        ("192.0.2.200", GeoAnswer("NL", GeoSource.OVERRIDE, 64502, "Test DE Cloud")),
        ("192.0.2.1", GeoAnswer("DE", GeoSource.MAXMIND, 64502, "Test DE Cloud")),
        # label-only override over the registry
        ("8.8.8.8", GeoAnswer("US", GeoSource.REGISTRY, label="dns-google")),
        # local stays local, but carries the lab's label
        ("10.20.1.1", GeoAnswer(None, GeoSource.LOCAL, label="lab-vpn")),
        ("10.21.1.1", GeoAnswer(None, GeoSource.LOCAL)),
        ("2001:db8:1:1::5", GeoAnswer("FR", GeoSource.OVERRIDE, 64500, "Test CN Cloud", "lab-fr")),
        ("2001:db8:1:2::5", GeoAnswer("CN", GeoSource.MAXMIND, 64500, "Test CN Cloud")),
    ],
)
def test_overrides_then_mmdb_then_registry(
    ranked: GeoChain, addr: str, expected: GeoAnswer
) -> None:
    assert ranked.lookup(addr) == expected


def test_label_only_override_with_nobody_placing_it(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("network,label\n2001:db8:9::/48,lab-nowhere\n")
    with GeoChain.from_paths(overrides=tmp_path / "o.csv", geoip_dir=tmp_path) as chain:
        assert chain.lookup("2001:db8:9::1") == GeoAnswer(
            None, GeoSource.OVERRIDE, label="lab-nowhere"
        )


def test_override_cannot_give_a_local_range_a_country(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("network,country\n192.168.0.0/24,CN\n")
    with pytest.raises(ConfigError) as e:
        GeoChain.from_paths(overrides=tmp_path / "o.csv", geoip_dir=tmp_path)
    assert e.value.line == 2 and e.value.field == "country"
    assert "local" in str(e.value) and "RFC 1918" in str(e.value)


def test_example_overrides_file_loads() -> None:
    example = ROOT / "geoip" / "overrides.example.csv"
    overrides = geo.Overrides.load(example)
    assert len(overrides) >= 3


# --------------------------------------------------------------------------- other layouts

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _dbip(tmp_path: Path) -> tuple[Path, Path]:
    """DB-IP Lite: a GeoLite2-compatible country file and an ASN file (their real types)."""
    country = write_mmdb(
        [
            (
                "203.0.113.0/24",
                {
                    "continent": {"code": "AS", "names": {"en": "Asia"}},
                    "country": {
                        "iso_code": "CN",
                        "is_in_european_union": False,
                        "names": {"en": "China"},
                    },
                },
            ),
            ("2001:db8:3::/48", {"country": {"iso_code": "DE", "is_in_european_union": True}}),
        ],
        tmp_path / "dbip-country-lite-2026-11.mmdb",
        database_type="DBIP-Country-Lite",
    )
    asn = write_mmdb(
        [
            (
                "203.0.113.0/24",
                {"autonomous_system_number": 64500, "autonomous_system_organization": "DB CN"},
            ),
            (
                "2001:db8:3::/48",
                {"autonomous_system_number": 64502, "autonomous_system_organization": "DB DE"},
            ),
        ],
        tmp_path / "dbip-asn-lite-2026-11.mmdb",
        database_type="DBIP-ASN-Lite (compat=GeoLite2-ASN)",
    )
    assert country == asn == 2
    return tmp_path / "dbip-country-lite-2026-11.mmdb", tmp_path / "dbip-asn-lite-2026-11.mmdb"


def test_dbip_lite_pair_discovered_by_type(tmp_path: Path) -> None:
    _dbip(tmp_path)
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        roles = {d.path.name: d.roles for d in chain.databases()}
        assert roles == {
            "dbip-asn-lite-2026-11.mmdb": ("asn",),
            "dbip-country-lite-2026-11.mmdb": ("country",),
        }
        assert chain.lookup("203.0.113.4") == GeoAnswer("CN", GeoSource.MAXMIND, 64500, "DB CN")
        assert chain.lookup("2001:db8:3::4") == GeoAnswer("DE", GeoSource.MAXMIND, 64502, "DB DE")


@pytest.mark.parametrize(
    ("database_type", "record"),
    [
        # IPinfo Lite: country name in "country", code in "country_code", "AS" prefix
        (
            "ipinfo lite.mmdb",
            {
                "asn": "AS64500",
                "as_name": "IPinfo CN",
                "as_domain": "example.cn",
                "country": "China",
                "country_code": "CN",
                "continent": "Asia",
                "continent_code": "AS",
            },
        ),
        # IPinfo's older free country_asn file: two-letter code in "country"
        (
            "ipinfo generic_country_asn_free.mmdb",
            {"asn": "AS64500", "as_name": "IPinfo CN", "country": "CN", "country_name": "China"},
        ),
        # a type name that says nothing: roles come from the records
        ("GeoIP", {"asn": "AS64500", "as_name": "IPinfo CN", "country_code": "cn"}),
    ],
)
def test_ipinfo_layouts(tmp_path: Path, database_type: str, record: dict[str, str]) -> None:
    write_mmdb([("203.0.113.0/24", record)], tmp_path / "ipinfo.mmdb", database_type=database_type)
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        [info] = chain.databases()
        assert info.roles == ("country", "asn")
        assert chain.lookup("203.0.113.1") == GeoAnswer("CN", GeoSource.MAXMIND, 64500, "IPinfo CN")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"country": {"iso_code": "DE"}}, ("DE", None, None)),
        (
            {"registered_country": {"iso_code": "FR"}, "continent": {"code": "EU"}},
            ("FR", None, None),
        ),
        (
            {"country": {"iso_code": "DE"}, "registered_country": {"iso_code": "FR"}},
            ("DE", None, None),
        ),
        ({"continent": {"code": "EU"}}, (None, None, None)),  # continent-only networks
        ({"autonomous_system_number": 1, "autonomous_system_organization": "A"}, (None, 1, "A")),
        (
            {
                "traits": {"autonomous_system_number": 7, "autonomous_system_organization": "E"},
                "country": {"iso_code": "US"},
            },
            ("US", 7, "E"),
        ),  # GeoIP2-Enterprise
        (
            {"asn": "AS13335", "as_name": "Cloudflare", "country_code": "US"},
            ("US", 13335, "Cloudflare"),
        ),
        ({"asn": "bogus", "country_code": "USA"}, (None, None, None)),
        ({"country": {"iso_code": 5}}, (None, None, None)),
        ({"autonomous_system_number": True}, (None, None, None)),
        ("a string", (None, None, None)),
        (None, (None, None, None)),
        ([1, 2], (None, None, None)),
    ],
)
def test_extract_layouts(record: object, expected: tuple[object, ...]) -> None:
    assert geo.extract(record) == expected


def test_ipv4_only_database_skips_ipv6(tmp_path: Path) -> None:
    write_mmdb(
        [("203.0.113.0/24", {"country": {"iso_code": "CN"}})],
        tmp_path / "v4.mmdb",
        database_type="GeoLite2-Country",
        ip_version=4,
    )
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        assert chain.databases()[0].ip_version == 4
        assert chain.lookup("203.0.113.1").country == "CN"
        assert chain.lookup("2001:db8:1::1") == GeoAnswer(None, GeoSource.NONE)
        assert chain.errors == 0


def test_folder_discovery_and_roles(tmp_path: Path) -> None:
    write_mmdb(
        [("192.0.2.0/24", {"country": {"iso_code": "SE"}})],
        tmp_path / "b-country.mmdb",
        database_type="GeoLite2-Country",
    )
    write_mmdb(
        [("192.0.2.0/24", {"autonomous_system_number": 3301})],
        tmp_path / "a-asn.mmdb",
        database_type="GeoLite2-ASN",
    )
    write_mmdb(
        [("192.0.2.0/24", {"is_anonymous": True})],
        tmp_path / "c-anon.mmdb",
        database_type="GeoIP2-Anonymous-IP",
    )
    (tmp_path / "notes.txt").write_text("not a database")
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        assert [(d.path.name, d.type, d.roles) for d in chain.databases()] == [
            ("a-asn.mmdb", "GeoLite2-ASN", ("asn",)),
            ("b-country.mmdb", "GeoLite2-Country", ("country",)),
        ]
        assert chain.lookup("192.0.2.3") == GeoAnswer("SE", GeoSource.MAXMIND, 3301)


def test_explicit_files_replace_discovery_for_their_role(tmp_path: Path) -> None:
    folder = tmp_path / "geoip"
    folder.mkdir()
    build_lab_db(folder / "lab.mmdb")  # CN for 203.0.113.0/24, both roles
    other = write_mmdb(
        [("203.0.113.0/24", {"country": {"iso_code": "KR"}})],
        tmp_path / "kr.mmdb",
        database_type="GeoLite2-Country",
    )
    assert other == 1
    with GeoChain.from_paths(country_db=tmp_path / "kr.mmdb", geoip_dir=folder) as chain:
        # country from the named file; the folder's file still serves ASN
        assert chain.lookup("203.0.113.1") == GeoAnswer(
            "KR", GeoSource.MAXMIND, 64500, "Test CN Cloud"
        )
        assert [d.roles for d in chain.databases()] == [("country",), ("asn",)]


def test_environment_variable_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_lab_db(tmp_path / "lab.mmdb")
    monkeypatch.setenv(geo.GEOIP_DIR_ENV, str(tmp_path))
    assert geo.default_geoip_dir() == tmp_path
    with GeoChain.from_paths() as chain:
        assert chain.geoip_dir == tmp_path
        assert chain.lookup("198.51.100.1").country == "US"


def test_default_folder_is_the_checkout_geoip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(geo.GEOIP_DIR_ENV, raising=False)
    assert geo.default_geoip_dir() == ROOT / "geoip"


# --------------------------------------------------------------------------- errors


def _howto(message: str) -> None:
    assert "geoip/README.md" in message and "GeoLite2" in message


def test_missing_database_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError) as e:
        GeoChain.from_paths(country_db=tmp_path / "GeoLite2-Country.mmdb", geoip_dir=tmp_path)
    assert "not found" in str(e.value)
    _howto(str(e.value))


def test_missing_explicit_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GeoIPError, match="does not exist"):
        GeoChain.from_paths(geoip_dir=tmp_path / "nope")
    monkeypatch.setenv(geo.GEOIP_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(GeoIPError, match="EGRESSWATCH_GEOIP_DIR"):
        GeoChain.from_paths()


def _corrupt_variants(tmp_path: Path) -> dict[str, Path]:
    good_path = build_lab_db(tmp_path / "good.mmdb")
    good = good_path.read_bytes()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:  # what MaxMind's .tar.gz holds
        tar.add(good_path, arcname="GeoLite2-Country_20261101/GeoLite2-Country.mmdb")
    variants = {
        "empty": b"",
        "text": b"network,country\n203.0.113.0/24,CN\n",
        "random": os.urandom(4096),
        "truncated": good[: len(good) // 2],  # metadata marker is at the end: gone
        "no-metadata": good.replace(b"\xab\xcd\xefMaxMind.com", b"\x00" * 14),
        "gzip": gzip.compress(archive.getvalue()),
        "tar": archive.getvalue(),
        "html": b"<!DOCTYPE html><html><body>401 Unauthorized</body></html>",
    }
    out = {}
    for name, data in variants.items():
        path = tmp_path / f"{name}.mmdb"
        path.write_bytes(data)
        out[name] = path
    return out


@pytest.mark.parametrize(
    ("variant", "hint"),
    [
        ("empty", "empty"),
        ("text", None),
        ("random", None),
        ("truncated", None),
        ("no-metadata", None),
        ("gzip", "gzip-compressed: extract the .mmdb"),
        ("tar", "tar archive"),
        ("html", "the download failed"),
    ],
)
def test_corrupt_file_is_a_clear_geoip_error(
    tmp_path: Path, variant: str, hint: str | None
) -> None:
    path = _corrupt_variants(tmp_path)[variant]
    with pytest.raises(GeoIPError) as e:
        GeoChain.from_paths(country_db=path, geoip_dir=tmp_path)
    message = str(e.value)
    assert str(path) in message
    assert "not a valid MaxMind DB" in message
    if hint:
        assert hint in message
    _howto(message)


def test_damaged_record_falls_through_to_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "d.mmdb"
    write_mmdb(
        [("8.8.8.0/24", {"country": {"iso_code": "XX"}, "pad": "p" * 64})],
        path,
        database_type="GeoLite2-Country",
    )
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        tree = meta.node_count * meta.record_size * 2 // 8
    data = bytearray(path.read_bytes())
    end = data.rindex(b"\xab\xcd\xefMaxMind.com")
    data[tree + 16 : end] = b"\xff" * (end - tree - 16)  # data section: garbage types
    path.write_bytes(bytes(data))
    with GeoChain.from_paths(country_db=path, geoip_dir=tmp_path) as chain:
        assert chain.lookup("8.8.8.8") == GeoAnswer("US", GeoSource.REGISTRY)
        assert chain.errors == 1  # counted, not raised


def test_corrupt_file_in_folder_is_reported(tmp_path: Path) -> None:
    build_lab_db(tmp_path / "a.mmdb")
    (tmp_path / "b.mmdb").write_bytes(b"half a download")
    with pytest.raises(GeoIPError, match=r"b\.mmdb"):
        GeoChain.from_paths(geoip_dir=tmp_path)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="is a folder"):
        GeoDatabase.open(tmp_path)


@pytest.mark.parametrize(
    ("database_type", "record", "flag", "needed"),
    [
        ("GeoLite2-ASN", {"autonomous_system_number": 1}, "country_db", "country database"),
        ("GeoLite2-Country", {"country": {"iso_code": "DE"}}, "asn_db", "asn database"),
        ("GeoIP2-Anonymous-IP", {"is_anonymous": True}, "country_db", "country database"),
    ],
)
def test_wrong_database_type(
    tmp_path: Path, database_type: str, record: dict[str, object], flag: str, needed: str
) -> None:
    path = tmp_path / "x.mmdb"
    write_mmdb([("192.0.2.0/24", record)], path, database_type=database_type)
    with pytest.raises(GeoIPError) as e:
        GeoChain.from_paths(geoip_dir=tmp_path, **{flag: path})
    assert database_type in str(e.value) and needed in str(e.value)


def test_same_file_for_both_roles_must_have_both(tmp_path: Path) -> None:
    path = tmp_path / "c.mmdb"
    write_mmdb(
        [("192.0.2.0/24", {"country": {"iso_code": "DE"}})], path, database_type="GeoLite2-Country"
    )
    with pytest.raises(GeoIPError, match="asn database"):
        GeoChain.from_paths(country_db=path, asn_db=path, geoip_dir=tmp_path)


# --------------------------------------------------------------------------- CSV input

CSV_ERRORS = [
    ("203.0.113.5/24,CN\n", 1, "network", "host bits set; did you mean 203.0.113.0/24"),
    ("example.com,CN\n", 1, "network", "not a network"),
    ("203.0.113.0/24,China\n", 1, "country", "two-letter"),
    ("203.0.113.0/24,\n", 1, "country", "missing"),
    ("# c\n203.0.113.0/24,CN\n203.0.113.0/24,US\n", 3, "network", "already given on line 2"),
    ("203.0.113.0/24,CN,ASX\n", 1, "asn", "not an AS number"),
    ("203.0.113.0/24,CN,4294967296\n", 1, "asn", "AS number"),
    ("203.0.113.0/24,CN,1,org,extra\n", 1, None, "5 fields"),
    ("network,country,city\n", 1, "city", "unknown column"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), CSV_ERRORS)
def test_ranges_csv_errors_name_line_and_field(
    tmp_path: Path, text: str, line: int, field: str | None, message: str
) -> None:
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        geo.read_ranges_csv(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), line, field)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8::1", "2001:db8::1/128"),
        ("::ffff:203.0.113.0/120", "203.0.113.0/24"),  # mapped: judged as IPv4
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("::/96", "::/96"),  # IPv4-compatible (deprecated) is not mapped
    ],
)
def test_parse_network(text: str, expected: str) -> None:
    assert str(geo.parse_network(text)) == expected


def test_mapped_override_matches_ipv4_lookups(tmp_path: Path) -> None:
    (tmp_path / "overrides.csv").write_text("network,country\n::ffff:203.0.113.0/120,JP\n")
    with GeoChain.from_paths(geoip_dir=tmp_path) as chain:
        assert chain.lookup("203.0.113.1").country == "JP"
        assert chain.lookup("::ffff:203.0.113.1").country == "JP"


def test_ranges_csv_forms(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "\ufeff# positional: network,country,asn,org\n"
        "\n"
        '203.0.113.0/24, cn ,AS64500,"Test, CN"\n'
        "2001:db8::1,US\n"
    )
    rows = geo.read_ranges_csv(path)
    assert [(str(r.network), r.country, r.asn, r.org, r.line) for r in rows] == [
        ("203.0.113.0/24", "CN", 64500, "Test, CN", 3),
        ("2001:db8::1/128", "US", None, None, 4),
    ]
    with pytest.raises(ConfigError, match="file not found"):
        geo.read_ranges_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- builder


def test_nested_networks_most_specific_wins_in_any_order(tmp_path: Path) -> None:
    rows = [
        ("203.0.113.128/25", "FR", None, None),
        ("0.0.0.0/0", "ZZ", None, None),
        ("203.0.112.0/22", "US", None, None),
        ("203.0.113.0/24", "CN", None, None),
        ("203.0.113.7/32", "JP", None, None),
        ("2001:db8::/32", "DE", None, None),
        ("2001:db8:1::/48", "CN", None, None),
    ]
    path = tmp_path / "n.mmdb"
    assert build_mmdb(rows, path) == 7
    with GeoChain.from_paths(country_db=path, geoip_dir=tmp_path, registry=False) as chain:
        expect = {
            "203.0.113.7": "JP",
            "203.0.113.8": "CN",
            "203.0.113.200": "FR",
            "203.0.112.1": "US",
            "203.0.115.255": "US",
            "203.0.116.1": "ZZ",
            "8.8.8.8": "ZZ",
            "2001:db8:1::1": "CN",
            "2001:db8:2::1": "DE",
            "2001:db9::1": None,
        }
        assert {a: chain.lookup(a).country for a in expect} == expect


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no networks"),
        ([("203.0.113.0/24", "CHN", None, None)], "two-letter"),
        ([("203.0.113.0/24", "CN", -1, None)], "out of range"),
        ([("203.0.113.1/24", "CN", None, None)], "host bits"),
        ([("203.0.113.0/24", "CN", None, None), ("203.0.113.0/24", "US", None, None)], "twice"),
    ],
)
def test_build_rejects_bad_rows(
    tmp_path: Path, rows: list[tuple[str, str, int | None, str | None]], message: str
) -> None:
    out = tmp_path / "bad.mmdb"
    with pytest.raises(GeoIPError, match=message):
        build_mmdb(rows, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_build_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="cannot write"):
        build_mmdb([("192.0.2.0/24", "DE", None, None)], tmp_path / "no" / "x.mmdb")


def test_build_replaces_atomically_and_keeps_metadata(tmp_path: Path) -> None:
    out = tmp_path / "x.mmdb"
    build_mmdb([("192.0.2.0/24", "DE", None, None)], out)
    with maxminddb.open_database(str(out)) as old:
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        build_mmdb(
            [("192.0.2.0/24", "FR", 1, "x")],
            out,
            database_type="Lab-Country",
            description="d",
            build_time=when,
        )
        assert old.get("192.0.2.1") == {"country": {"iso_code": "DE"}}  # old mapping untouched
    with maxminddb.open_database(str(out)) as new:
        meta = new.metadata()
        assert (meta.database_type, meta.description, meta.build_epoch) == (
            "Lab-Country",
            {"en": "d"},
            int(when.timestamp()),
        )
        assert new.get("192.0.2.1")["country"]["iso_code"] == "FR"  # type: ignore[index]
    assert oct(out.stat().st_mode & 0o777) == "0o644"


# --------------------------------------------------------------------------- ages


@pytest.mark.parametrize(("days", "stale"), [(0, False), (59, False), (61, True), (400, True)])
def test_database_age_and_staleness(tmp_path: Path, days: int, stale: bool) -> None:
    path = tmp_path / "x.mmdb"
    build_mmdb([("192.0.2.0/24", "DE", None, None)], path, build_time=NOW - timedelta(days=days))
    with GeoChain.from_paths(country_db=path, geoip_dir=tmp_path) as chain:
        [info] = chain.databases(now=NOW)
    assert info.built == NOW - timedelta(days=days)
    assert info.age_days == pytest.approx(days)
    assert info.stale is stale
    assert info.path == path and info.description == "egresswatch lab GeoIP database"


# --------------------------------------------------------------------------- cache, lifetime


def test_cache_hits_and_bound(tmp_path: Path) -> None:
    with lab_chain(tmp_path, cache_size=2) as chain:
        first = chain.lookup("203.0.113.1")
        assert chain.lookup("203.0.113.1") is first
        info = chain.cache_info()
        assert info is not None and (info.hits, info.misses) == (1, 1)
        for addr in ("203.0.113.2", "203.0.113.3", "203.0.113.4", "8.8.8.8"):
            chain.lookup(addr)
        info = chain.cache_info()
        assert info is not None and info.currsize == 2


def test_cache_off_gives_the_same_answers(tmp_path: Path) -> None:
    cached = lab_chain(tmp_path / "a")
    uncached = lab_chain(tmp_path / "b", cache_size=0)
    with cached, uncached:
        assert uncached.cache_info() is None
        for addr in [*LOCAL, *NOT_LOCAL, "bogus"]:
            assert cached.lookup(addr) == uncached.lookup(addr)


def test_files_are_opened_once(tmp_path: Path) -> None:
    chain = lab_chain(tmp_path, cache_size=0)
    (tmp_path / "lab.mmdb").unlink()  # the open mapping keeps answering
    assert chain.lookup("192.0.2.1").country == "DE"
    chain.close()
    # closed: the file's part drops out, the rest of the chain still answers
    assert chain.lookup("192.0.2.1") == GeoAnswer(None, GeoSource.NONE)
    assert chain.lookup("8.8.8.8").source is GeoSource.REGISTRY
    assert chain.databases() == []


# --------------------------------------------------------------------------- never raises


@pytest.fixture(scope="module")
def shared_chain(tmp_path_factory: pytest.TempPathFactory) -> GeoChain:
    folder = tmp_path_factory.mktemp("geo")
    (folder / "overrides.csv").write_text(OVERRIDES_CSV)
    chain = lab_chain(folder)
    yield chain
    chain.close()


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_lookup_never_raises_on_any_text(shared_chain: GeoChain, text: str) -> None:
    answer = shared_chain.lookup(text)
    assert isinstance(answer, GeoAnswer)
    assert shared_chain.errors == 0


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%[]/ ffff", max_size=45))
def test_lookup_never_raises_on_address_like_text(shared_chain: GeoChain, text: str) -> None:
    answer = shared_chain.lookup(text)
    assert answer.source in GeoSource
    parsed = geo.parse_address(text)
    if parsed is None:
        assert answer == GeoAnswer(None, GeoSource.NONE)
    elif geo.is_local(parsed):
        assert answer.is_local and answer.country is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_any_real_address_gets_an_answer_consistent_with_is_local(
    shared_chain: GeoChain, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    answer = shared_chain.lookup(str(ip))
    assert answer.is_local == geo.is_local(str(ip))
    if answer.country is not None:
        assert len(answer.country) == 2 and answer.country.isupper()


def test_lookup_of_non_strings_does_not_raise(tmp_path: Path) -> None:
    with lab_chain(tmp_path) as chain:
        for value in (None, 5, b"1.2.3.4", ["1.2.3.4"], object()):
            assert chain.lookup(value) == GeoAnswer(None, GeoSource.NONE)  # type: ignore[arg-type]
        assert chain.errors == 5  # a caller's bug is counted, never raised


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list('0123456789abcdef:./,#\n" ASCNUSxyz-%')), max_size=120)
)
def test_ranges_csv_gives_rows_or_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("csv") / "r.csv"
    path.write_text(text)
    try:
        rows = geo.read_ranges_csv(path, columns=geo.OVERRIDE_COLUMNS, need_country=False)
    except ConfigError as e:
        assert e.path == str(path)
        return
    for row in rows:
        assert row.country is not None or row.label is not None


@pytest.fixture(scope="module")
def lab_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_lab_db(tmp_path_factory.mktemp("labbytes") / "lab.mmdb").read_bytes()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_damaged_database_opens_or_raises_geoip_error_and_never_breaks_lookup(
    tmp_path_factory: pytest.TempPathFactory, lab_bytes: bytes, data: st.DataObject
) -> None:
    """Flip, truncate and append bytes of a real file: GeoIPError at open, or answers."""
    blob = bytearray(lab_bytes)
    for _ in range(data.draw(st.integers(0, 8), label="patches")):
        at = data.draw(st.integers(0, len(blob) - 1), label="offset")
        blob[at] = data.draw(st.integers(0, 255), label="byte")
    blob = blob[: data.draw(st.integers(len(blob) // 2, len(blob)), label="length")]
    blob += data.draw(st.binary(max_size=64), label="tail")
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "d.mmdb"
    path.write_bytes(bytes(blob))
    try:
        chain = GeoChain.from_paths(country_db=path, asn_db=path, geoip_dir=folder, cache_size=0)
    except GeoIPError as e:
        assert str(path) in str(e)
        return
    with chain:
        for addr in ("203.0.113.1", "2001:db8:2::1", "192.0.2.200", "8.8.8.8", "10.0.0.1"):
            assert isinstance(chain.lookup(addr), GeoAnswer)
        for info in chain.databases():
            assert info.path == path
