"""Country codes and groups that policies use: ISO 3166-1 alpha-2 plus named groups."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType


def _codes(text: str) -> frozenset[str]:
    """Country codes written as a whitespace-separated block (easy to proofread)."""
    return frozenset(text.split())


#: ISO 3166-1 alpha-2 officially assigned codes (249, as published by the ISO 3166
#: Maintenance Agency; checked in tests against phonenumbers' region list).
ISO_COUNTRIES: frozenset[str] = _codes(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """
)

#: Codes outside the official list that GeoIP databases do return: Kosovo's user-assigned
#: "XK" (used by MaxMind, DB-IP and IPinfo).
EXTRA_COUNTRIES: frozenset[str] = frozenset({"XK"})

#: Common non-ISO spellings and the code to use instead.
COUNTRY_HINTS = {"UK": "GB", "EL": "GR"}

_EU = _codes(
    # The 27 member states since 2020-02-01 (europa.eu, "EU countries"); Greece is GR in ISO.
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"
)
_EFTA = frozenset({"CH", "IS", "LI", "NO"})  # efta.int, "The EFTA States"
#: EEA = EU + Iceland, Liechtenstein, Norway (EEA Agreement; Switzerland is not a party).
_EEA = _EU | {"IS", "LI", "NO"}
#: GDPR Art. 45 adequacy decisions (European Commission, "Adequacy decisions", as of 2026):
#: Andorra, Argentina, Canada (commercial organisations), Faroe Islands, Guernsey, Israel,
#: Isle of Man, Japan, Jersey, New Zealand, Republic of Korea, Switzerland, United Kingdom,
#: Uruguay. The United States is adequate only for organisations certified under the
#: EU-US Data Privacy Framework, which a network monitor cannot see, so US is NOT in this group.
_ADEQUATE = _EEA | _codes("AD AR CA FO GG IL IM JP JE NZ KR CH GB UY")

#: Built-in country groups usable wherever a country is expected.
COUNTRY_GROUPS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "EU": _EU,
        "EEA": _EEA,
        "EFTA": _EFTA,
        "EU-ADEQUATE": _ADEQUATE,
    }
)

#: A user group's name: never two letters, so it cannot be mistaken for a country.
GROUP_NAME = re.compile(r"^[A-Z][A-Z0-9-]{2,31}$")
