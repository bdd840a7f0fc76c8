"""Range CSV files (``network,country,label,asn,org``) and the lab overrides built on them."""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egresswatch.errors import ConfigError
from egresswatch.geo.addresses import (
    IPAddress,
    IPNetwork,
    PrefixTable,
    local_reason,
    network_is_local,
)

#: overrides file picked up from the GeoIP folder when none is given
OVERRIDES_NAME = "overrides.csv"


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
ASN_RE = re.compile(r"^(?:AS)?(\d{1,10})$", re.IGNORECASE)
_COLUMNS = ("network", "country", "asn", "org", "label")
#: column order when a file has no header row
BUILD_COLUMNS = ("network", "country", "asn", "org")
OVERRIDE_COLUMNS = ("network", "country", "label", "asn", "org")


def parse_network(text: str) -> IPNetwork:
    """``203.0.113.0/24`` or a bare address (a /32 or /128). Raises ValueError saying why.

    IPv4-mapped networks (``::ffff:203.0.113.0/120``) become the IPv4 network
    they stand for: lookups judge mapped addresses as IPv4 (RFC 4291 §2.5.5.2),
    so a mapped entry would otherwise never match.
    """
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network (write e.g. 203.0.113.0/24)") from e
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from e
    if (
        isinstance(net, ipaddress.IPv6Network)
        and net.prefixlen >= 96
        and net.network_address.ipv4_mapped is not None
    ):
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


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
        m = ASN_RE.match(str(text).strip())
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
