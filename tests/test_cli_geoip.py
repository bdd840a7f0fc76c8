"""``egresswatch geoip lookup / info / build`` through click, and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import maxminddb
import pytest
from click.testing import CliRunner, Result
from conftest import ROOT, egresswatch_bin
from helpers.geoip import LAB_RANGES, build_lab_db

from egresswatch import geo
from egresswatch.cli import cli


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Invoke the real root group (so domain errors get their exit codes)."""
    env = {geo.GEOIP_DIR_ENV: "", **(env or {})}
    return CliRunner().invoke(cli, ["geoip", *map(str, args)], env=env, catch_exceptions=False)


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "geoip"
    build_lab_db(folder / "lab.mmdb")
    return folder


RANGES_CSV = """\
# test ranges
network,country,asn,org
203.0.112.0/22,US,64501,Wide US
203.0.113.0/24,CN,AS64500,"Test CN Cloud, Ltd"
2001:db8:1::/48,cn,,
"""


# --------------------------------------------------------------------------- lookup


def test_lookup_json(lab_dir: Path) -> None:
    result = run(
        "lookup", "--json", "--geoip-dir", lab_dir,
        "203.0.113.5", "2001:db8:3::1", "10.0.0.1", "8.8.8.8", "[::ffff:198.51.100.1]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"address": "203.0.113.5", "country": "CN", "asn": 64500, "org": "Test CN Cloud",
         "label": None, "source": "mmdb", "local": False},
        {"address": "2001:db8:3::1", "country": "DE", "asn": 64502, "org": "Test DE Cloud",
         "label": None, "source": "mmdb", "local": False},
        {"address": "10.0.0.1", "country": None, "asn": None, "org": None,
         "label": None, "source": "local", "local": True},
        {"address": "8.8.8.8", "country": "US", "asn": None, "org": None,
         "label": None, "source": "registry", "local": False},
        {"address": "[::ffff:198.51.100.1]", "country": "US", "asn": 64501, "org": "Test US Cloud",
         "label": None, "source": "mmdb", "local": False},
    ]  # fmt: skip


def test_lookup_table_for_humans(lab_dir: Path) -> None:
    result = run("lookup", "--geoip-dir", lab_dir, "192.0.2.1", "fe80::1", "240.0.0.1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if "192.0.2.1" in line)
    for cell in ("DE", "AS64502", "Test DE Cloud", "mmdb"):
        assert cell in row
    assert "local" in next(line for line in lines if "fe80::1" in line)
    assert "unknown" in next(line for line in lines if "240.0.0.1" in line)


def test_lookup_with_overrides_and_environment_folder(lab_dir: Path, tmp_path: Path) -> None:
    overrides = tmp_path / "o.csv"
    overrides.write_text("network,country,label\n203.0.113.0/28,JP,lab-jp\n")
    result = run(
        "lookup", "--json", "--overrides", overrides, "203.0.113.1", "203.0.113.99",
        env={geo.GEOIP_DIR_ENV: str(lab_dir)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = [(a["country"], a["source"], a["label"]) for a in json.loads(result.stdout)]
    assert got == [("JP", "override", "lab-jp"), ("CN", "mmdb", None)]


def test_lookup_no_registry(tmp_path: Path) -> None:
    result = run("lookup", "--json", "--no-registry", "--geoip-dir", tmp_path, "8.8.8.8")
    assert json.loads(result.stdout)[0]["source"] == "none"
    result = run("lookup", "--json", "--geoip-dir", tmp_path, "8.8.8.8")
    assert json.loads(result.stdout)[0]["source"] == "registry"


@pytest.mark.parametrize("bad", ["bogus", "1.2.3", "203.0.113.0/24", "example.com", "1.2.3.4:80"])
def test_lookup_bad_address_is_a_usage_error(bad: str, tmp_path: Path) -> None:
    result = run("lookup", "--geoip-dir", tmp_path, "8.8.8.8", bad)
    assert result.exit_code == 2
    assert f"{bad!r} is not an IPv4 or IPv6 address" in result.stderr
    assert "Traceback" not in result.output


def test_lookup_needs_an_address() -> None:
    result = run("lookup")
    assert result.exit_code == 2 and "ADDR" in result.stderr


def test_lookup_corrupt_database_one_line_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "GeoLite2-Country.mmdb"
    bad.write_bytes(b"<html>403 Forbidden</html>")  # what a failed download looks like
    result = run("lookup", "--country-db", bad, "--geoip-dir", tmp_path, "8.8.8.8")
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert (
        line.startswith("egresswatch: error: ") and str(bad) in line and "geoip/README.md" in line
    )
    assert "Traceback" not in result.output


def test_lookup_wrong_type_exit_3(lab_dir: Path, tmp_path: Path) -> None:
    asn = tmp_path / "asn.mmdb"
    geo.write_mmdb(
        [("192.0.2.0/24", {"autonomous_system_number": 1})], asn, database_type="GeoLite2-ASN"
    )
    result = run("lookup", "--country-db", asn, "--geoip-dir", lab_dir, "192.0.2.1")
    assert result.exit_code == 3
    assert (
        "'GeoLite2-ASN' database" in result.stderr and "country database is needed" in result.stderr
    )


def test_lookup_missing_folder_exit_3(tmp_path: Path) -> None:
    result = run("lookup", "8.8.8.8", env={geo.GEOIP_DIR_ENV: str(tmp_path / "nope")})
    assert result.exit_code == 3
    assert "does not exist" in result.stderr and "EGRESSWATCH_GEOIP_DIR" in result.stderr


def test_lookup_missing_country_db_file_is_usage_error(tmp_path: Path) -> None:
    result = run("lookup", "--country-db", tmp_path / "none.mmdb", "8.8.8.8")
    assert result.exit_code == 2 and "does not exist" in result.stderr


# --------------------------------------------------------------------------- info


def test_info_json_and_stale_warning(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    old = datetime.now(UTC) - timedelta(days=90)
    geo.build_mmdb([("192.0.2.0/24", "DE", None, None)], folder / "old.mmdb",
                   database_type="GeoLite2-Country", build_time=old)  # fmt: skip
    build_lab_db(folder / "fresh.mmdb")
    (folder / "overrides.csv").write_text("network,label\n10.0.0.0/8,lab\n")

    result = run("info", "--json", "--geoip-dir", folder)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["geoip_dir"] == str(folder) and data["geoip_dir_exists"]
    assert [(d["path"], d["type"], d["roles"], d["stale"]) for d in data["databases"]] == [
        (str(folder / "fresh.mmdb"), geo.BUILD_DATABASE_TYPE, ["country", "asn"], False),
        (str(folder / "old.mmdb"), "GeoLite2-Country", ["country"], True),
    ]
    assert data["databases"][1]["age_days"] == pytest.approx(90, abs=0.1)
    assert data["overrides"] == {"path": str(folder / "overrides.csv"), "networks": 1}
    assert data["registry"]["source"] == "iptocc" and data["stale_days"] == 60

    human = run("info", "--geoip-dir", folder)
    assert human.exit_code == 0
    assert "STALE" in human.stdout and "fresh.mmdb" in human.stdout
    assert "warning:" in human.stderr and "old.mmdb" in human.stderr and "90 days" in human.stderr


def test_info_without_databases_says_how_to_get_one(tmp_path: Path) -> None:
    result = run("info", "--geoip-dir", tmp_path)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "no MaxMind-format database found" in text and "geoip/README.md" in text
    assert "registry fallback" in text
    data = json.loads(run("info", "--json", "--geoip-dir", tmp_path, "--no-registry").stdout)
    assert data["databases"] == [] and data["registry"] is None


# --------------------------------------------------------------------------- build


def test_build_then_lookup(tmp_path: Path) -> None:
    csv_path = tmp_path / "ranges.csv"
    csv_path.write_text(RANGES_CSV)
    out = tmp_path / "out.mmdb"
    result = run("build", "--csv", csv_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "3 networks" in result.stdout
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().database_type == geo.BUILD_DATABASE_TYPE
        assert reader.get("203.0.113.1") == {
            "country": {"iso_code": "CN"},
            "autonomous_system_number": 64500,
            "autonomous_system_organization": "Test CN Cloud, Ltd",
        }
        assert reader.get("203.0.112.1")["country"]["iso_code"] == "US"  # type: ignore[index]
    looked = run(
        "lookup", "--json", "--country-db", out, "--asn-db", out, "203.0.115.1", "2001:db8:1::1"
    )
    assert [(a["country"], a["asn"]) for a in json.loads(looked.stdout)] == [
        ("US", 64501),
        ("CN", None),
    ]


def test_build_custom_type_and_example_file(tmp_path: Path) -> None:
    out = tmp_path / "lab.mmdb"
    example = ROOT / "geoip" / "overrides.example.csv"
    # the example has label rows without a country: build needs countries
    result = run("build", "--csv", example, "-o", out)
    assert result.exit_code == 3 and "country: missing" in result.stderr
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("192.0.2.0/24,DE\n")
    result = run(
        "build", "--csv", csv_path, "-o", out, "--type", "Lab-Country", "--description", "x"
    )
    assert result.exit_code == 0, result.output
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().database_type == "Lab-Country"
        assert reader.metadata().description == {"en": "x"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("203.0.113.1/24,CN\n", "r.csv:1: network: '203.0.113.1/24' has host bits set"),
        ("network,country\n203.0.113.0/24,XYZ\n", "r.csv:2: country: 'XYZ' is not a two-letter"),
        ("# only comments\n", "no networks to write"),
    ],
)
def test_build_bad_csv_one_line_exit_3(tmp_path: Path, text: str, where: str) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(text)
    out = tmp_path / "out.mmdb"
    result = run("build", "--csv", csv_path, "-o", out)
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert where in line
    assert not out.exists()


def test_build_flags_are_validated(tmp_path: Path) -> None:
    result = run("build", "-o", tmp_path / "x.mmdb")
    assert result.exit_code == 2 and "--csv" in result.stderr
    result = run("build", "--csv", tmp_path / "missing.csv", "-o", tmp_path / "x.mmdb")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "r.csv").write_text("192.0.2.0/24,DE\n")
    result = run("build", "--csv", tmp_path / "r.csv", "-o", tmp_path / "no" / "x.mmdb")
    assert result.exit_code == 3 and "cannot write" in result.stderr


def test_help_explains() -> None:
    for args in (["--help"], ["lookup", "--help"], ["info", "--help"], ["build", "--help"]):
        result = run(*args)
        assert result.exit_code == 0
    assert "geoip/README.md" in run("--help").stdout
    assert "EGRESSWATCH_GEOIP_DIR" in run("lookup", "--help").stdout
    assert "60 days" in run("info", "--help").stdout


# --------------------------------------------------------------------------- real process


def test_real_process_build_then_lookup_json(tmp_path: Path) -> None:
    csv_path = tmp_path / "lab.csv"
    csv_path.write_text("".join(f"{n},{c},{a},{o}\n" for n, c, a, o in LAB_RANGES))
    out = tmp_path / "geoip" / "lab.mmdb"
    out.parent.mkdir()
    env = {**os.environ, geo.GEOIP_DIR_ENV: str(out.parent)}
    exe = egresswatch_bin()
    built = subprocess.run(
        [exe, "geoip", "build", "--csv", str(csv_path), "-o", str(out)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "6 networks" in built.stdout
    looked = subprocess.run(
        [exe, "geoip", "lookup", "--json", "203.0.113.9", "2001:db8:2::9", "127.0.0.1", "nonsense"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert looked.returncode == 2 and "'nonsense' is not an IPv4 or IPv6 address" in looked.stderr
    looked = subprocess.run(
        [exe, "geoip", "lookup", "--json", "203.0.113.9", "2001:db8:2::9", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert looked.returncode == 0, looked.stderr
    answers = json.loads(looked.stdout)
    assert [(a["country"], a["asn"], a["source"]) for a in answers] == [
        ("CN", 64500, "mmdb"),
        ("US", 64501, "mmdb"),
        (None, None, "local"),
    ]


def test_build_notes_local_ranges_but_writes_them(tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("network,country\n10.0.0.0/8,CN\n192.0.2.0/24,DE\n")
    out = tmp_path / "out.mmdb"
    result = run("build", "--csv", csv_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "line 2: 10.0.0.0/8 is a local range" in result.stdout
    assert "192.0.2.0/24" not in result.stdout.split("wrote", 1)[1].split("\n", 1)[1]
    with maxminddb.open_database(str(out)) as reader:
        assert reader.get("10.1.2.3") == {"country": {"iso_code": "CN"}}  # other readers see it
    looked = run("lookup", "--json", "--country-db", out, "--geoip-dir", tmp_path, "10.1.2.3")
    assert json.loads(looked.stdout)[0]["source"] == "local"


def test_info_with_a_corrupt_file_in_the_folder_exit_3(lab_dir: Path) -> None:
    (lab_dir / "GeoLite2-Country.mmdb").write_bytes(b"\x1f\x8b\x08\x00 half a download")
    result = run("info", "--geoip-dir", lab_dir)
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert "GeoLite2-Country.mmdb" in line and "gzip-compressed" in line
    assert result.stdout == ""
