"""The policy: which jurisdictions data may go to, and what each flow gets.

A policy is a TOML file (see ``docs/policy.md`` and the shipped
``egresswatch/data/policy-example.toml``)::

    mode = "enforce"                  # or "monitor": blocks are recorded as would-block
    approved = ["EU", "US"]           # ISO 3166 alpha-2 codes and groups
    require = ["address", "operator"] # which jurisdictions must be approved
    outside = "block"                 # what a flow leaving the approved set gets

    [unknown]                         # what a flow gets when a country is unknown
    address = "block"
    operator = "alert"

    [[rules]]                         # ordered; the first match wins
    name = "block-cn-operators"
    action = "block"
    operator_country = ["CN"]

:meth:`Policy.decide` answers in this order:

1. a local destination (loopback, private ...) is not egress: only rules with
   ``local = true`` see it, else the built-in rule ``local`` allows it;
2. the first rule whose matchers all match (lists are any-of). ``allow`` and
   ``block`` are final; an ``alert`` rule never weakens the checks below: the
   stricter of the two answers wins;
3. the jurisdiction checks (``jurisdiction``, ``unknown-address``,
   ``unknown-operator``), and when all pass the built-in ``default``.

The module is part of the pure core: it reads its file once at load and then
decides without I/O. Rules are compiled to frozensets and regular expressions at
load, so :meth:`Policy.decide` costs a few microseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import functools
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from egresswatch.errors import ConfigError
from egresswatch.model import (
    UNKNOWN_COUNTRY,
    Action,
    Assessment,
    FindingKind,
    GeoSource,
    MatchKind,
    Mode,
    Observation,
    PayloadType,
    Sensor,
    Verdict,
)

# --------------------------------------------------------------------------- countries


#: ISO 3166-1 alpha-2 officially assigned codes (249, as published by the ISO 3166
#: Maintenance Agency; checked in tests against phonenumbers' region list).
def _codes(text: str) -> frozenset[str]:
    """Country codes written as a whitespace-separated block (easy to proofread)."""
    return frozenset(text.split())


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
_COUNTRY_HINTS = {"UK": "GB", "EL": "GR"}

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
COUNTRY_GROUPS: Mapping[str, frozenset[str]] = {
    "EU": _EU,
    "EEA": _EEA,
    "EFTA": _EFTA,
    "EU-ADEQUATE": _ADEQUATE,
}

_GROUP_NAME = re.compile(r"^[A-Z][A-Z0-9-]{2,31}$")

# --------------------------------------------------------------------------- rule fields

#: Names a rule may not take: they are the built-in verdict rules.
BUILTIN_RULES = frozenset(
    {"jurisdiction", "unknown-address", "unknown-operator", "local", "default"}
)

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SERVICE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_GLOB_CHARS = frozenset("*?[")

#: Matcher keys of a rule, with a one-line description for errors and docs.
MATCHERS: Mapping[str, str] = {
    "service": "catalog service ids (official matches only)",
    "category": "catalog categories (official matches only)",
    "operator_country": "operator's country: ISO codes or groups, ZZ for unknown",
    "address_country": "address country: ISO codes or groups, ZZ for unknown",
    "payload": "payload types",
    "finding": "finding kinds",
    "flag": "assessment flags such as 'lookalike', 'name-mismatch', 'ech'",
    "client": "globs on the client address, app hint or process name",
    "host": "globs on the host name (or the address when there is no name)",
    "port": "destination ports: numbers or 'low-high' ranges",
    "sensor": "sensors: proxy, sniffer, explain, verify",
    "lookalike": "true: only lookalikes of a catalogued brand; false: never",
    "local": "true: the rule applies only to local (non-egress) destinations",
}
_RULE_KEYS = frozenset({"name", "action", "reason", *MATCHERS})
_TOP_KEYS = frozenset(
    {
        "mode",
        "approved",
        "require",
        "outside",
        "default",
        "unknown",
        "groups",
        "rules",
        "passthrough_hosts",
    }
)
_UNKNOWN_KEYS = frozenset({"address", "operator"})
_REQUIRE = ("address", "operator")

#: Built-in verdicts for a policy file that does not say: unknown is a first-class answer,
#: and the safe default for it is to block (DESIGN.md); in monitor mode a block is only
#: recorded as would-block.
_DEFAULT_UNKNOWN = Action.BLOCK

#: How many findings a reason sentence spells out before "and N more".
_REASON_FINDINGS = 4


# --------------------------------------------------------------------------- locating lines


class _Locator:
    """Finds the line of a key in raw TOML text (tomllib reports no positions).

    Good enough for policy files as people write them: ``[table]`` / ``[[array]]``
    headers, ``key = value`` lines, dotted top-level keys (``unknown.address``) and
    multi-line arrays whose items sit on their own lines.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]#]+?)\s*(\]\]?)\s*(?:#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        #: (line number, table name, is array-of-tables)
        self.headers: list[tuple[int, str, bool]] = []
        for number, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m:
                name = m.group(2).replace('"', "").replace("'", "").strip()
                self.headers.append((number, name, m.group(1) == "[["))

    def section(self, table: str | None, index: int | None = None) -> tuple[int, int] | None:
        """(first line, last line) of a table's body; table None is the top level."""
        if table is None:
            end = self.headers[0][0] - 1 if self.headers else len(self.lines)
            return (1, end)
        seen = 0
        for pos, (number, name, is_array) in enumerate(self.headers):
            if name != table or is_array != (index is not None):
                continue
            if index is None or seen == index:
                nxt = (
                    self.headers[pos + 1][0] - 1 if pos + 1 < len(self.headers) else len(self.lines)
                )
                return (number, nxt)
            seen += 1
        return None

    def find(
        self, table: str | None, key: str | None, index: int | None = None, item: Any = None
    ) -> int | None:
        """The line of ``key`` (or of one ``item`` of its array) in a table, best effort."""
        if table is None and key is None:
            return None  # a missing top-level setting has no line
        span = self.section(table, index)
        if span is not None:
            first, last = span
            if key is None:
                return first
            pattern = re.compile(r"^\s*(?:" + _key_pattern(key) + r")\s*=")
            for number in range(first, last + 1):
                if pattern.match(self.lines[number - 1]):
                    return self._item_line(number, last, item) if item is not None else number
        if table is None and key is not None:
            # `[rules]` written where `[[rules]]` was meant, `[mode]` ...: the header's line
            for number, name, _ in self.headers:
                if name == key or name.startswith(key + "."):
                    return number
        if table is not None and index is None:
            # dotted keys at the top level: `unknown.address = ...`, `unknown = {...}`
            dotted = f"{table}.{key}" if key else table
            line = self.find(None, dotted, item=item) or self.find(None, table)
            if line is not None:
                return line
        return span[0] if span is not None and table is not None else None

    def _item_line(self, start: int, last: int, item: Any) -> int:
        """The line where an array item is written, for multi-line arrays."""
        if isinstance(item, str):
            text = re.escape(item)
            token = re.compile(f"\"{text}\"|'{text}'")
        else:  # a number or boolean: whole tokens only, so 0 does not match 10
            token = re.compile(rf"(?<![\w.+-]){re.escape(str(item).lower())}(?![\w.])")
        if token.search(self.lines[start - 1]):
            return start
        for number in range(start + 1, last + 1):
            line = self.lines[number - 1]
            if "=" in line.split("#", 1)[0] and not line.lstrip().startswith(('"', "'")):
                break  # the next key: the item was not on a line of its own
            if token.search(line):
                return number
        return start


def _key_pattern(key: str) -> str:
    parts = key.split(".")
    return r"\s*\.\s*".join(
        rf"(?:{re.escape(p)}|\"{re.escape(p)}\"|'{re.escape(p)}')" for p in parts
    )


# --------------------------------------------------------------------------- compiled rules


class _Glob:
    """Shell-style patterns (callers lower-case both sides).

    The common shapes skip the regex engine: literals are a set lookup, ``*suffix`` and
    ``prefix*`` one ``str.endswith``/``startswith`` call with a tuple; the rest is one regex.
    """

    __slots__ = ("literals", "match", "patterns", "prefixes", "regex", "suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        literals: list[str] = []
        suffixes: list[str] = []
        prefixes: list[str] = []
        globs: list[str] = []
        for p in self.patterns:
            if not _GLOB_CHARS & set(p):
                literals.append(p)
            elif p.startswith("*") and not _GLOB_CHARS & set(p[1:]):
                suffixes.append(p[1:])
            elif p.endswith("*") and not _GLOB_CHARS & set(p[:-1]):
                prefixes.append(p[:-1])
            else:
                globs.append(p)
        self.literals = frozenset(literals)
        self.suffixes = tuple(suffixes)
        self.prefixes = tuple(prefixes)
        self.regex = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None

        self.match = self._matcher()

    def _matcher(self) -> Callable[[str], bool]:
        """The test for these patterns, specialised for the usual one-shape case."""
        lits, sufs, pres, rx = self.literals, self.suffixes, self.prefixes, self.regex
        if not (sufs or pres or rx):
            return lambda v: v in lits
        if sufs and not (pres or rx):
            return lambda v: v in lits or v.endswith(sufs)

        def match(v: str) -> bool:
            return (
                v in lits
                or bool(sufs and v.endswith(sufs))
                or bool(pres and v.startswith(pres))
                or (rx is not None and rx.match(v) is not None)
            )

        return match


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled ``[[rules]]`` entry. ``None`` matchers are absent (match anything)."""

    name: str
    action: Action
    line: int | None
    reason: str | None = None
    service: frozenset[str] | None = None
    category: frozenset[str] | None = None
    #: expanded to ISO codes; UNKNOWN_COUNTRY stands for "unknown"
    operator_country: frozenset[str] | None = None
    address_country: frozenset[str] | None = None
    payload: frozenset[PayloadType] | None = None
    finding: frozenset[FindingKind] | None = None
    flag: frozenset[str] | None = None
    client: _Glob | None = None
    host: _Glob | None = None
    port: tuple[tuple[int, int], ...] | None = None
    sensor: frozenset[Sensor] | None = None
    lookalike: bool | None = None
    local: bool | None = None
    #: the matchers as written, for summaries
    written: tuple[tuple[str, Any], ...] = ()
    #: (matcher, value, line) of each catalog reference (service ids, categories)
    references: tuple[tuple[str, str, int | None], ...] = ()

    def matches(self, a: Assessment) -> bool:
        """True when every matcher present matches (lists are any-of).

        Compiles this one rule on each call: for tools and tests. ``Policy.decide`` runs
        all rules through one chain compiled at load.
        """
        return _compile_chain((self,), self.name)(a) == 0


_OFFICIAL = MatchKind.OFFICIAL
_LOOKALIKE = MatchKind.LOOKALIKE
# Enum sets become bit masks keyed by the member's plain string value: hashing an Enum
# member runs Python code (Enum.__hash__), a str hashes in C.
_PAYLOAD_BITS = {m.value: 1 << i for i, m in enumerate(PayloadType)}
_FINDING_BITS = {m.value: 1 << i for i, m in enumerate(FindingKind)}
_SENSOR_BITS = {m.value: 1 << i for i, m in enumerate(Sensor)}

#: Per-assessment values a rule chain may need, in dependency order: (name, needs, code).
_PROLOGUE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("match", (), "match = a.service"),
    ("obs", (), "obs = a.observation"),
    (
        "official",
        ("match",),
        "off = match.service if match is not None and match.kind is _OFFICIAL else None",
    ),
    ("sid", ("official",), "sid = off.id if off is not None else None"),
    ("cat", ("official",), "cat = off.category if off is not None else None"),
    ("opcc", ("official",), "opcc = off.operator_country if off is not None else _ZZ"),
    ("addrcc", (), "addrcc = a.geo.country or _ZZ"),
    (
        "lookalike",
        ("match",),
        "lookalike = (match is not None and match.kind is _LOOKALIKE) or 'lookalike' in a.flags",
    ),
    ("sensor", ("obs",), "sensor = _SENSOR_BITS[obs.sensor._value_]"),
    ("port", ("obs",), "port = obs.dst_port"),
    (
        "pm",
        (),
        "pm = 0\n    for x in a.payload_types:\n        pm |= _PAYLOAD_BITS[x._value_]",
    ),
    (
        "km",
        (),
        "km = 0\n    for x in a.findings:\n        km |= _FINDING_BITS[x.kind._value_]",
    ),
    (
        "host",
        ("obs",),
        "host = a.host or obs.dst_addr\n    host = host.lower().rstrip('.') if host else ''",
    ),
    (
        # every '.label...' suffix of the host: '*.example.com' becomes one set lookup
        "hsfx",
        ("host",),
        "hsfx = set()\n    i = host.find('.')\n    while i >= 0:\n"
        "        hsfx.add(host[i:])\n        i = host.find('.', i + 1)",
    ),
)


def _compile_chain(rules: Sequence[Rule], label: str) -> Callable[[Assessment], int]:
    """One function returning the index of the first rule that matches, or -1.

    Each rule becomes one ``if`` of inlined tests (set lookups, bit masks, string
    tests), and the values they test are computed once per assessment, so a rule
    that does not match costs a few bytecodes rather than a chain of calls: a policy
    with hundreds of rules stays within the inspector's budget.

    The generated source holds only the fixed templates above and generated names
    (``ac3``, ``pl2_0``); every value from the policy file is bound through the
    namespace, never written into the code.
    """
    ns: dict[str, Any] = {
        "_OFFICIAL": _OFFICIAL,
        "_LOOKALIKE": _LOOKALIKE,
        "_ZZ": UNKNOWN_COUNTRY,
        "_PAYLOAD_BITS": _PAYLOAD_BITS,
        "_FINDING_BITS": _FINDING_BITS,
        "_SENSOR_BITS": _SENSOR_BITS,
    }
    need: set[str] = set()
    body: list[str] = []
    for i, r in enumerate(rules):
        conds: list[str] = []

        def bind(tag: str, value: Any, i: int = i) -> str:
            name = f"{tag}{i}"
            ns[name] = value
            return name

        if r.lookalike is not None:
            need.add("lookalike")
            conds.append("lookalike" if r.lookalike else "not lookalike")
        if r.service is not None:
            need.add("sid")
            conds.append(f"sid in {bind('sv', r.service)}")
        if r.category is not None:
            need.add("cat")
            conds.append(f"cat in {bind('ca', r.category)}")
        if r.operator_country is not None:
            need.add("opcc")
            conds.append(f"opcc in {bind('oc', r.operator_country)}")
        if r.address_country is not None:
            need.add("addrcc")
            conds.append(f"addrcc in {bind('ac', r.address_country)}")
        if r.sensor is not None:
            need.add("sensor")
            conds.append(f"sensor & {bind('se', _mask(_SENSOR_BITS, r.sensor))}")
        if r.port is not None:
            need.add("port")
            ranges = []
            for j, (lo, hi) in enumerate(r.port):
                ranges.append(f"{bind(f'pl{j}_', lo)} <= port <= {bind(f'ph{j}_', hi)}")
            conds.append(f"(port is not None and ({' or '.join(ranges)}))")
        if r.payload is not None:
            need.add("pm")
            conds.append(f"pm & {bind('pt', _mask(_PAYLOAD_BITS, r.payload))}")
        if r.finding is not None:
            need.add("km")
            conds.append(f"km & {bind('fk', _mask(_FINDING_BITS, r.finding))}")
        if r.flag is not None:
            conds.append(f"not {bind('fl', r.flag)}.isdisjoint(a.flags)")
        if r.host is not None:
            conds.append(_host_test(r.host, bind, need))
        if r.client is not None:
            need.add("obs")
            conds.append(f"{bind('cl', _client_matcher(r.client))}(obs)")
        body.append(f"    if {' and '.join(conds) or 'True'}:\n        return {i}")

    wanted = set(need)
    for name, deps, _ in reversed(_PROLOGUE):  # close over dependencies
        if name in wanted:
            wanted.update(deps)
    prologue = [f"    {code}" for name, _, code in _PROLOGUE if name in wanted]
    src = "\n".join(["def _first(a):", *prologue, *body, "    return -1", ""])
    exec(compile(src, f"<policy rules: {label}>", "exec"), ns)
    first: Callable[[Assessment], int] = ns["_first"]
    return first


def _host_test(glob: _Glob, bind: Callable[[str, Any], str], need: set[str]) -> str:
    """The inlined host test: set lookups for literals and '*.domain' patterns.

    ``str.endswith`` and regexes cost several set lookups each, and a long rule list
    repeats them for every flow; the rest of the patterns still go through the glob.
    """
    need.add("host")
    label_suffixes = [p[1:] for p in glob.patterns if p.startswith("*.") and _plain(p[1:])]
    rest = [p for p in glob.patterns if not _plain(p) and p[1:] not in label_suffixes]
    parts: list[str] = []
    if glob.literals:
        parts.append(f"host in {bind('hl', glob.literals)}")
    if len(label_suffixes) == 1:
        need.add("hsfx")
        parts.append(f"{bind('hs', label_suffixes[0])} in hsfx")
    elif label_suffixes:
        need.add("hsfx")
        parts.append(f"not {bind('hs', frozenset(label_suffixes))}.isdisjoint(hsfx)")
    if rest:
        parts.append(f"{bind('hg', _Glob(rest).match)}(host)")
    return f"({' or '.join(parts)})"


def _plain(pattern: str) -> bool:
    return not _GLOB_CHARS & set(pattern)


def _mask(bits: Mapping[str, int], members: Iterable[enum.Enum]) -> int:
    mask = 0
    for member in members:
        mask |= bits[member.value]
    return mask


def _client_matcher(glob: _Glob) -> Callable[[Observation], bool]:
    """Client globs test the address, the app hint and the process name, lower-cased."""
    match = glob.match

    def test(obs: Observation) -> bool:
        for value in (obs.client_addr, obs.client_app, obs.client_process):
            if value is not None and match(value.lower()):
                return True
        return False

    return test


def _is_lookalike(a: Assessment) -> bool:
    return (a.service is not None and a.service.kind is MatchKind.LOOKALIKE) or (
        "lookalike" in a.flags
    )


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, validated policy. Implements :class:`egresswatch.ports.PolicyLike`."""

    mode: Mode
    #: the approved entries as written (codes and groups), for humans
    approved: tuple[str, ...]
    #: the approved entries expanded to ISO codes
    approved_countries: frozenset[str]
    require_address: bool
    require_operator: bool
    outside: Action
    unknown_address: Action
    unknown_operator: Action
    default_action: Action
    rules: tuple[Rule, ...]
    #: hosts that pin certificates: the proxy passes their TLS through, still judged by SNI
    passthrough_hosts: tuple[str, ...]
    #: user-defined country groups, expanded
    groups: Mapping[str, frozenset[str]]
    #: the file the policy came from ("<default>", "<string>" or a path)
    source: str
    #: rules split by where they apply (``local = true`` rules see only local flows)
    _local_rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False, default=())
    _egress_rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False, default=())
    _local_first: Callable[[Assessment], int] | None = field(
        init=False, repr=False, compare=False, default=None
    )
    _egress_first: Callable[[Assessment], int] | None = field(
        init=False, repr=False, compare=False, default=None
    )
    _approved_text: str = field(init=False, repr=False, compare=False, default="")
    _passthrough: _Glob | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_local_rules", tuple(r for r in self.rules if r.local is True))
        object.__setattr__(
            self, "_egress_rules", tuple(r for r in self.rules if r.local is not True)
        )
        if self._local_rules:
            chain = _compile_chain(self._local_rules, f"{self.source} local")
            object.__setattr__(self, "_local_first", chain)
        if self._egress_rules:
            chain = _compile_chain(self._egress_rules, self.source)
            object.__setattr__(self, "_egress_first", chain)
        object.__setattr__(self, "_approved_text", ", ".join(self.approved) or "none")
        if self.passthrough_hosts:
            object.__setattr__(self, "_passthrough", _Glob(self.passthrough_hosts))

    # ---- loading

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy file; errors name the file, line and field."""
        name = str(path)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError("no such policy file", path=name) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, not a policy file", path=name) from None
        except OSError as e:
            raise ConfigError(f"cannot read the policy file: {e.strerror}", path=name) from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError("the policy file is not UTF-8 text", path=name, line=line) from e
        return cls.from_text(text, source=name)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Policy:
        """Parse and validate policy TOML text; ``source`` names it in errors."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _toml_error(e, source) from e
        return _Builder(data, _Locator(text), source).build()

    @classmethod
    def default(cls) -> Policy:
        """The shipped default policy (monitor mode), ``egresswatch/data/policy-default.toml``."""
        return cls._shipped("policy-default.toml")

    @classmethod
    def example(cls) -> Policy:
        """The shipped example policy (enforce mode), ``egresswatch/data/policy-example.toml``."""
        return cls._shipped("policy-example.toml")

    @classmethod
    def _shipped(cls, name: str) -> Policy:
        return _shipped(name)

    def with_mode(self, mode: Mode | str) -> Policy:
        """The same policy in another mode (``--mode`` on the command line)."""
        try:
            new = Mode(mode)
        except ValueError:
            raise ConfigError(
                f"unknown mode {mode!r}; choose from {', '.join(m.value for m in Mode)}",
                field="mode",
            ) from None
        return dataclasses.replace(self, mode=new)

    def is_passthrough(self, host: str | None) -> bool:
        """True when the host is listed for TLS pass-through (globs, case-insensitive)."""
        if not host or self._passthrough is None:
            return False
        return self._passthrough.match(host.lower().rstrip("."))

    # ---- deciding

    def decide(self, assessment: Assessment) -> Verdict:
        """The verdict for one assessment: pure, no I/O."""
        a = assessment
        if a.geo.source is GeoSource.LOCAL:
            if self._local_first is not None:
                i = self._local_first(a)
                if i >= 0:
                    return self._rule_verdict(self._local_rules[i], a)
            return Verdict(Action.ALLOW, "local", _local_reason(a), self.mode)

        if self._egress_first is not None:
            i = self._egress_first(a)
            if i < 0:
                return self._check(a)
            rule = self._egress_rules[i]
            if rule.action is not Action.ALERT:
                return self._rule_verdict(rule, a)
            # An alert marks a flow; it must not exempt it from the jurisdiction checks.
            checked = self._check(a)
            if checked.action.severity > Action.ALERT.severity:
                return dataclasses.replace(
                    checked, reason=f"{checked.reason}; it also matched alert rule '{rule.name}'"
                )
            return self._rule_verdict(rule, a)
        return self._check(a)

    def _rule_verdict(self, rule: Rule, a: Assessment) -> Verdict:
        if rule.reason:
            text = f"{_subject(a)}: {rule.reason} (rule '{rule.name}'): {_cargo(a)}"
        else:
            text = f"{_subject(a)} matched rule '{rule.name}': {_cargo(a)}"
        return Verdict(rule.action, rule.name, text, self.mode)

    def _check(self, a: Assessment) -> Verdict:
        """The built-in jurisdiction and unknown checks, then the default."""
        best: tuple[Action, str] | None = None
        addr_outside = op_outside = False
        if self.require_operator:
            cc = a.operator_country
            if cc is None:
                best = (self.unknown_operator, "unknown-operator")
            elif cc not in self.approved_countries:
                op_outside = True
                best = _stricter(best, (self.outside, "jurisdiction"))
        if self.require_address:
            cc = a.geo.country
            if cc is None:
                best = _stricter(best, (self.unknown_address, "unknown-address"))
            elif cc not in self.approved_countries:
                addr_outside = True
                best = _stricter(best, (self.outside, "jurisdiction"))
        if best is None:
            text = (
                f"{_subject(a)} is inside the approved jurisdictions ({self._approved_text}): "
                f"{_cargo(a)}"
            )
            return Verdict(self.default_action, "default", text, self.mode)
        action, rule = best
        approved = self._approved_text
        if rule == "jurisdiction":
            if op_outside:
                text = f"{_subject(a)} is outside the approved jurisdictions ({approved})"
            else:
                assert addr_outside
                text = (
                    f"the address of {_subject(a)} is outside the approved jurisdictions "
                    f"({approved})"
                )
        elif rule == "unknown-address":
            text = f"the address country of {_subject(a)} is unknown"
        elif _is_lookalike(a) and a.service is not None:
            text = (
                f"{_subject(a)} is not operated by {a.service.service.operator}, "
                "so its operator is unknown"
            )
        else:
            text = f"{_subject(a)} has no known operator"
        return Verdict(action, rule, f"{text}: {_cargo(a)}", self.mode)

    # ---- describing

    def unknown_references(
        self, services: Iterable[str], categories: Iterable[str]
    ) -> list[ConfigError]:
        """Rule service ids and categories a catalog does not know: typos that never match.

        Not raised: the caller (``policy check``) decides whether they are warnings or
        errors, because a policy may be written for a catalog with user entries.
        """
        known = {"service": set(services), "category": set(categories)}
        problems: list[ConfigError] = []
        for number, rule in enumerate(self.rules, 1):
            for key, value, line in rule.references:
                if value in known[key]:
                    continue
                what = "service id" if key == "service" else "category"
                problems.append(
                    ConfigError(
                        f"{value!r} is not a {what} in the catalog, so this never matches"
                        + _did_you_mean(value, known[key]),
                        path=self.source,
                        line=line,
                        field=f"rules[{number}].{key}",
                    )
                )
        return problems

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of the effective policy (``policy check``, banners)."""
        return {
            "source": self.source,
            "mode": self.mode.value,
            "approved": list(self.approved),
            "approved_countries": sorted(self.approved_countries),
            "require": [
                r
                for r, on in zip(
                    _REQUIRE, (self.require_address, self.require_operator), strict=True
                )
                if on
            ],
            "outside": self.outside.value,
            "unknown": {
                "address": self.unknown_address.value,
                "operator": self.unknown_operator.value,
            },
            "default": self.default_action.value,
            "groups": {k: sorted(v) for k, v in self.groups.items()},
            "rules": [
                {
                    "name": r.name,
                    "action": r.action.value,
                    "line": r.line,
                    "match": {k: v for k, v in r.written},
                    **({"reason": r.reason} if r.reason else {}),
                }
                for r in self.rules
            ],
            "passthrough_hosts": list(self.passthrough_hosts),
        }


@functools.cache
def _shipped(name: str) -> Policy:
    """A shipped policy, parsed once per process (policies are immutable)."""
    ref = resources.files("egresswatch").joinpath("data", name)
    return Policy.from_text(ref.read_text(encoding="utf-8"), source=str(ref))


def _stricter(
    current: tuple[Action, str] | None, candidate: tuple[Action, str]
) -> tuple[Action, str]:
    if current is None or candidate[0].severity > current[0].severity:
        return candidate
    # on a tie a known country outside the approved set says more than "unknown"
    if candidate[0] is current[0] and candidate[1] == "jurisdiction":
        return candidate
    return current


# --------------------------------------------------------------------------- reasons


def _subject(a: Assessment) -> str:
    """'DeepSeek API (operator Hangzhou DeepSeek ..., CN)' or the host and what is unknown."""
    match = a.service
    name = a.host or a.observation.dst_addr or "an unnamed destination"
    if match is None:
        return f"{name} (not in the catalog)"
    svc = match.service
    if match.kind is MatchKind.LOOKALIKE:
        return f"{name} (a lookalike of {svc.name})"
    return f"{svc.name} (operator {svc.operator}, {svc.operator_country})"


def _cargo(a: Assessment) -> str:
    """'chat-prompt carrying email j***@example.com to 203.0.113.10 (CN)'."""
    # PayloadType and FindingKind are StrEnums: their members are the strings themselves
    what = ", ".join(a.payload_types) or "traffic"
    if a.findings:
        shown = [f.kind + " " + f.redacted for f in a.findings[:_REASON_FINDINGS]]
        more = len(a.findings) - len(shown)
        what += " carrying " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    return f"{what} {_destination(a)}"


def _destination(a: Assessment) -> str:
    addr = a.observation.dst_addr
    place = a.geo.country or "country unknown"
    if a.geo.is_local:
        place = "local"
    if addr is None:
        return f"to an unknown address ({place})"
    return f"to {addr} ({place})"


def _local_reason(a: Assessment) -> str:
    name = a.host or a.observation.dst_addr or "the destination"
    return f"{name} is a local destination, not egress: {_cargo(a)}"


# --------------------------------------------------------------------------- validation


def _toml_error(e: tomllib.TOMLDecodeError, source: str) -> ConfigError:
    """tomllib puts the position in its message: '... (at line 3, column 7)'."""
    msg = str(e)
    m = re.search(r"\(at line (\d+), column \d+\)$", msg)
    line = int(m.group(1)) if m else None
    if m:
        msg = msg[: m.start()].rstrip()
    elif msg.endswith("(at end of document)"):
        msg = msg.removesuffix("(at end of document)").rstrip() + " at the end of the file"
    return ConfigError(f"not valid TOML: {msg}", path=source, line=line)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    ordered = sorted(choices)
    close = difflib.get_close_matches(word, ordered, n=1)
    if not close:  # 'chat' -> 'chat-prompt': difflib's ratio is too low for a prefix
        close = [c for c in ordered if c.startswith(word.lower())][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


class _Builder:
    """Validates parsed TOML and compiles it into a :class:`Policy`."""

    def __init__(self, data: dict[str, Any], locator: _Locator, source: str) -> None:
        self.data = data
        self.loc = locator
        self.source = source
        self.groups: dict[str, frozenset[str]] = {}

    # -- errors

    def fail(
        self,
        message: str,
        field: str,
        *,
        table: str | None = None,
        key: str | None = None,
        index: int | None = None,
        item: Any = None,
    ) -> ConfigError:
        line = self.loc.find(table, key, index, item)
        return ConfigError(message, path=self.source, line=line, field=field)

    # -- the file

    def build(self) -> Policy:
        data = self.data
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail("unknown setting" + _did_you_mean(key, _TOP_KEYS), key, key=key)
        mode = self.mode()
        self.groups = self.user_groups()
        if "approved" not in data:
            raise self.fail(
                'missing; list the countries data may go to, e.g. approved = ["EU", "US"]',
                "approved",
            )
        approved_raw = self.str_list(data["approved"], "approved", key="approved")
        approved: list[str] = []
        countries: set[str] = set()
        for item in approved_raw:
            code = item.upper()
            if code == UNKNOWN_COUNTRY:
                raise self.fail(
                    f"{UNKNOWN_COUNTRY} means unknown; say what unknown gets in [unknown]",
                    "approved",
                    key="approved",
                    item=item,
                )
            countries |= self.countries(item, "approved", key="approved")
            if code not in approved:
                approved.append(code)
        require = self.require()
        unknown = data.get("unknown", {})
        if not isinstance(unknown, dict):
            raise self.fail(
                "must be a table: [unknown] with address = ... and operator = ...",
                "unknown",
                key="unknown",
            )
        for key in unknown:
            if key not in _UNKNOWN_KEYS:
                raise self.fail(
                    "unknown setting" + _did_you_mean(key, _UNKNOWN_KEYS),
                    f"unknown.{key}",
                    table="unknown",
                    key=key,
                )
        rules = self.rules()
        return Policy(
            mode=mode,
            approved=tuple(approved),
            approved_countries=frozenset(countries),
            require_address="address" in require,
            require_operator="operator" in require,
            outside=self.action(data.get("outside", "block"), "outside", key="outside"),
            unknown_address=self.action(
                unknown.get("address", _DEFAULT_UNKNOWN.value),
                "unknown.address",
                table="unknown",
                key="address",
            ),
            unknown_operator=self.action(
                unknown.get("operator", _DEFAULT_UNKNOWN.value),
                "unknown.operator",
                table="unknown",
                key="operator",
            ),
            default_action=self.action(data.get("default", "allow"), "default", key="default"),
            rules=rules,
            passthrough_hosts=self.passthrough(),
            groups=dict(self.groups),
            source=self.source,
        )

    def mode(self) -> Mode:
        value = self.data.get("mode", Mode.MONITOR.value)
        choices = ", ".join(m.value for m in Mode)
        if not isinstance(value, str):
            raise self.fail(f"must be a string: one of {choices}", "mode", key="mode")
        try:
            return Mode(value)
        except ValueError:
            raise self.fail(
                f"unknown mode {value!r}; choose from {choices}", "mode", key="mode"
            ) from None

    def require(self) -> set[str]:
        value = self.data.get("require", list(_REQUIRE))
        items = self.str_list(value, "require", key="require")
        for item in items:
            if item not in _REQUIRE:
                raise self.fail(
                    f"{item!r} is not a jurisdiction; choose from {', '.join(_REQUIRE)}",
                    "require",
                    key="require",
                    item=item,
                )
        return set(items)

    def user_groups(self) -> dict[str, frozenset[str]]:
        table = self.data.get("groups", {})
        if not isinstance(table, dict):
            raise self.fail(
                'must be a table: [groups] with NAME = ["DE", "FR"]', "groups", key="groups"
            )
        out: dict[str, frozenset[str]] = {}
        for name, members in table.items():
            field = f"groups.{name}"
            if not _GROUP_NAME.match(name):
                raise self.fail(
                    "a group name is 3-32 upper-case letters, digits or '-', "
                    "so it never looks like a country code",
                    field,
                    table="groups",
                    key=name,
                )
            if name in COUNTRY_GROUPS:
                raise self.fail(
                    f"{name} is a built-in group; pick another name",
                    field,
                    table="groups",
                    key=name,
                )
            codes: set[str] = set()
            for item in self.str_list(members, field, table="groups", key=name):
                # user groups may use built-in groups and groups defined above them
                self.groups = out
                codes |= self.countries(item, field, table="groups", key=name)
            out[name] = frozenset(codes)
        return out

    def passthrough(self) -> tuple[str, ...]:
        value = self.data.get("passthrough_hosts", [])
        hosts = self.str_list(value, "passthrough_hosts", key="passthrough_hosts")
        out: list[str] = []
        for host in hosts:
            norm = host.strip().lower().rstrip(".")
            if not norm or any(c.isspace() or c in "/:@" for c in norm):
                raise self.fail(
                    f"{host!r} is not a host name or glob (write 'api.example.com' or "
                    "'*.example.com', no scheme, port or path)",
                    "passthrough_hosts",
                    key="passthrough_hosts",
                    item=host,
                )
            out.append(norm)
        return tuple(out)

    # -- values

    def str_list(
        self,
        value: Any,
        field: str,
        *,
        table: str | None = None,
        key: str | None = None,
        index: int | None = None,
    ) -> list[str]:
        """A string or a list of strings, as a list."""
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str):
                raise self.fail(
                    f"expected a string or a list of strings, got {_tomltype(item)} {item!r}",
                    field,
                    table=table,
                    key=key,
                    index=index,
                    item=item,
                )
        return list(items)

    def countries(
        self,
        item: str,
        field: str,
        *,
        table: str | None = None,
        key: str | None = None,
        index: int | None = None,
        allow_unknown: bool = False,
    ) -> frozenset[str]:
        """One country code or group name, expanded to ISO codes."""
        code = item.strip().upper()
        if code in COUNTRY_GROUPS:
            return COUNTRY_GROUPS[code]
        if code in self.groups:
            return self.groups[code]
        if code in ISO_COUNTRIES or code in EXTRA_COUNTRIES:
            return frozenset({code})
        if allow_unknown and code == UNKNOWN_COUNTRY:
            return frozenset({code})
        if code in _COUNTRY_HINTS:
            hint = f"; the ISO 3166 code is {_COUNTRY_HINTS[code]!r}"
        else:
            hint = _did_you_mean(code, [*COUNTRY_GROUPS, *self.groups]) if len(code) > 2 else ""
        groups = ", ".join([*COUNTRY_GROUPS, *self.groups])
        raise self.fail(
            f"{item!r} is not an ISO 3166 alpha-2 country code or a group ({groups}){hint}",
            field,
            table=table,
            key=key,
            index=index,
            item=item,
        )

    def action(
        self,
        value: Any,
        field: str,
        *,
        table: str | None = None,
        key: str | None = None,
        index: int | None = None,
    ) -> Action:
        choices = ", ".join(a.value for a in Action)
        if not isinstance(value, str):
            raise self.fail(
                f"must be a string: one of {choices}", field, table=table, key=key, index=index
            )
        try:
            return Action(value)
        except ValueError:
            hint = " ('deny' is spelled 'block')" if value in ("deny", "drop", "reject") else ""
            raise self.fail(
                f"unknown action {value!r}; choose from {choices}{hint}",
                field,
                table=table,
                key=key,
                index=index,
            ) from None

    # -- rules

    def rules(self) -> tuple[Rule, ...]:
        value = self.data.get("rules", [])
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise self.fail(
                "rules are written as [[rules]] tables, one per rule", "rules", key="rules"
            )
        out: list[Rule] = []
        names: dict[str, int] = {}
        for index, table in enumerate(value):
            rule = self.rule(index, table)
            if rule.name in names:
                raise self.fail(
                    f"rule name {rule.name!r} is already used by rule {names[rule.name]}; "
                    "names must be unique (they are the verdict's rule)",
                    f"rules[{index + 1}].name",
                    table="rules",
                    key="name",
                    index=index,
                )
            names[rule.name] = index + 1
            out.append(rule)
        return tuple(out)

    def rule(self, index: int, table: dict[str, Any]) -> Rule:
        number = index + 1

        def field(key: str) -> str:
            return f"rules[{number}].{key}"

        for key in table:
            if key not in _RULE_KEYS:
                raise self.fail(
                    "unknown rule field" + _did_you_mean(key, _RULE_KEYS),
                    field(key),
                    table="rules",
                    key=key,
                    index=index,
                )
        header = self.loc.find("rules", None, index)
        if "name" not in table:
            raise ConfigError(
                "missing: every rule needs a unique name (it becomes the verdict's rule)",
                path=self.source,
                line=header,
                field=field("name"),
            )
        name = table["name"]
        if not isinstance(name, str) or not _RULE_NAME.match(name):
            raise self.fail(
                "a rule name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit",
                field("name"),
                table="rules",
                key="name",
                index=index,
            )
        if name in BUILTIN_RULES:
            raise self.fail(
                f"{name!r} is the name of a built-in verdict; pick another name",
                field("name"),
                table="rules",
                key="name",
                index=index,
            )
        if "action" not in table:
            raise ConfigError(
                "missing: allow, alert or block",
                path=self.source,
                line=header,
                field=field("action"),
            )
        action = self.action(
            table["action"], field("action"), table="rules", key="action", index=index
        )
        reason = table.get("reason")
        if reason is not None and (not isinstance(reason, str) or not reason.strip()):
            raise self.fail(
                "must be a non-empty string",
                field("reason"),
                table="rules",
                key="reason",
                index=index,
            )

        compiled: dict[str, Any] = {}
        written: list[tuple[str, Any]] = []
        for key in MATCHERS:
            if key not in table:
                continue
            value = table[key]
            kw: dict[str, Any] = {"table": "rules", "key": key, "index": index}
            f = field(key)
            if key in ("lookalike", "local"):
                if not isinstance(value, bool):
                    raise self.fail(f"must be true or false, got {value!r}", f, **kw)
                compiled[key] = value
                written.append((key, value))
                continue
            if key == "port":
                compiled[key] = self.ports(value, f, kw)
                written.append((key, value if isinstance(value, list) else [value]))
                continue
            items = self.str_list(value, f, **kw)
            if not items:
                raise self.fail(
                    "an empty list matches nothing; remove the field to match anything", f, **kw
                )
            written.append((key, items))
            compiled[key] = self.matcher(key, items, f, kw)
        references = tuple(
            (key, item, self.loc.find("rules", key, index, item))
            for key, items in written
            if key in ("service", "category")
            for item in items
        )
        return Rule(
            name=name,
            action=action,
            line=header,
            reason=reason.strip() if isinstance(reason, str) else None,
            written=tuple(written),
            references=references,
            **compiled,
        )

    def matcher(self, key: str, items: list[str], f: str, kw: dict[str, Any]) -> Any:
        if key in ("operator_country", "address_country"):
            codes: set[str] = set()
            for item in items:
                codes |= self.countries(item, f, allow_unknown=True, **kw)
            return frozenset(codes)
        if key == "payload":
            return frozenset(self.enum(PayloadType, items, f, kw, "payload type"))
        if key == "finding":
            return frozenset(self.enum(FindingKind, items, f, kw, "finding kind"))
        if key == "sensor":
            return frozenset(self.enum(Sensor, items, f, kw, "sensor"))
        if key in ("service", "category"):
            for item in items:
                if not _SERVICE_ID.match(item):
                    raise self.fail(
                        f"{item!r} is not a catalog {key} id (lower-case letters, digits, "
                        "'.', '_', '-'; see `egresswatch catalog list`)",
                        f,
                        item=item,
                        **kw,
                    )
            return frozenset(items)
        if key == "flag":
            return frozenset(i.strip().lower() for i in items)
        if key in ("host", "client"):
            pats = []
            for item in items:
                pat = item.strip().lower()
                if key == "host":
                    pat = pat.rstrip(".")
                if not pat or any(c.isspace() for c in pat):
                    raise self.fail(f"{item!r} is not a {key} pattern", f, item=item, **kw)
                pats.append(pat)
            return _Glob(pats)
        raise AssertionError(key)  # pragma: no cover - MATCHERS and this switch agree

    def enum(
        self, kind: Any, items: Sequence[str], f: str, kw: dict[str, Any], what: str
    ) -> list[Any]:
        out = []
        for item in items:
            try:
                out.append(kind(item))
            except ValueError:
                names = [m.value for m in kind]
                raise self.fail(
                    f"{item!r} is not a {what}"
                    + _did_you_mean(item, names)
                    + f" (choose from {', '.join(names)})",
                    f,
                    item=item,
                    **kw,
                ) from None
        return out

    def ports(self, value: Any, f: str, kw: dict[str, Any]) -> tuple[tuple[int, int], ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(
                "an empty list matches nothing; remove the field to match anything", f, **kw
            )
        out: list[tuple[int, int]] = []
        for item in items:
            lo = hi = None
            if isinstance(item, int) and not isinstance(item, bool):
                lo = hi = item
            elif isinstance(item, str):
                m = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", item)
                if m:
                    lo = int(m.group(1))
                    hi = int(m.group(2)) if m.group(2) else lo
            if lo is None or hi is None or not (0 < lo <= hi <= 65535):
                raise self.fail(
                    f'{item!r} is not a port (1-65535) or a range such as "8000-8100"',
                    f,
                    item=item,
                    **kw,
                )
            out.append((lo, hi))
        return tuple(out)


def _tomltype(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        dict: "a table",
        list: "an array",
    }.get(type(value), type(value).__name__)
