"""Compiled rules: the matchers of one ``[[rules]]`` table, and the rule chain.

The whole rule list of a policy is compiled into one generated function
(:func:`compile_chain`) that returns the index of the first matching rule.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egresswatch.model import (
    UNKNOWN_COUNTRY,
    Action,
    Assessment,
    FindingKind,
    MatchKind,
    Observation,
    PayloadType,
    Sensor,
)

#: Names a rule may not take: they are the built-in verdict rules.
BUILTIN_RULES = frozenset(
    {"jurisdiction", "unknown-address", "unknown-operator", "local", "default"}
)

GLOB_CHARS = frozenset("*?[")

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


class Glob:
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
            if not GLOB_CHARS & set(p):
                literals.append(p)
            elif p.startswith("*") and not GLOB_CHARS & set(p[1:]):
                suffixes.append(p[1:])
            elif p.endswith("*") and not GLOB_CHARS & set(p[:-1]):
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
    client: Glob | None = None
    host: Glob | None = None
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
        return compile_chain((self,), self.name)(a) == 0


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
    # the costlier values start unset and are computed where a rule first needs them
    ("pm", (), "pm = -1"),
    ("km", (), "km = -1"),
    ("host", (), "host = None"),
    ("hsfx", (), "hsfx = None"),
)

#: How a condition reads a lazily computed value: computed on first use, then reused.
_PM = "(pm if pm >= 0 else (pm := _payload_mask(a)))"
_KM = "(km if km >= 0 else (km := _finding_mask(a)))"
_HOST = "(host if host is not None else (host := _host(a)))"
_HSFX = f"(hsfx if hsfx is not None else (hsfx := _label_suffixes({_HOST})))"


def _payload_mask(a: Assessment) -> int:
    mask = 0
    for payload in a.payload_types:
        mask |= _PAYLOAD_BITS[payload._value_]
    return mask


def _finding_mask(a: Assessment) -> int:
    mask = 0
    for finding in a.findings:
        mask |= _FINDING_BITS[finding.kind._value_]
    return mask


def _host(a: Assessment) -> str:
    """The name the flow was judged by (or its address), lower-case; '' when neither."""
    host = a.host or a.observation.dst_addr
    return host.lower().rstrip(".") if host else ""


def _label_suffixes(host: str) -> set[str]:
    """Every '.label...' suffix of a host: '*.example.com' becomes one set lookup."""
    out: set[str] = set()
    i = host.find(".")
    while i >= 0:
        out.add(host[i:])
        i = host.find(".", i + 1)
    return out


def compile_chain(rules: Sequence[Rule], label: str) -> Callable[[Assessment], int]:
    """One function returning the index of the first rule that matches, or -1.

    Each rule becomes one ``if`` of inlined tests (set lookups, bit masks, string
    tests), and the values they test are computed at most once per assessment (the
    costlier ones only when a rule gets to them), so a rule that does not match costs
    a few bytecodes rather than a chain of calls: a policy with hundreds of rules
    stays within the inspector's budget.

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
        "_payload_mask": _payload_mask,
        "_finding_mask": _finding_mask,
        "_host": _host,
        "_label_suffixes": _label_suffixes,
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
            conds.append(f"{_PM} & {bind('pt', _mask(_PAYLOAD_BITS, r.payload))}")
        if r.finding is not None:
            need.add("km")
            conds.append(f"{_KM} & {bind('fk', _mask(_FINDING_BITS, r.finding))}")
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


def _host_test(glob: Glob, bind: Callable[[str, Any], str], need: set[str]) -> str:
    """The inlined host test: set lookups for literals and '*.domain' patterns.

    ``str.endswith`` and regexes cost several set lookups each, and a long rule list
    repeats them for every flow; the rest of the patterns still go through the glob.
    """
    need.add("host")  # hsfx reads host through _HOST
    label_suffixes = [p[1:] for p in glob.patterns if p.startswith("*.") and _plain(p[1:])]
    rest = [p for p in glob.patterns if not _plain(p) and p[1:] not in label_suffixes]
    parts: list[str] = []
    if glob.literals:
        parts.append(f"{_HOST} in {bind('hl', glob.literals)}")
    if len(label_suffixes) == 1:
        need.add("hsfx")
        parts.append(f"{bind('hs', label_suffixes[0])} in {_HSFX}")
    elif label_suffixes:
        need.add("hsfx")
        parts.append(f"not {bind('hs', frozenset(label_suffixes))}.isdisjoint({_HSFX})")
    if rest:
        parts.append(f"{bind('hg', Glob(rest).match)}({_HOST})")
    return f"({' or '.join(parts)})"


def _plain(pattern: str) -> bool:
    return not GLOB_CHARS & set(pattern)


def _mask(bits: Mapping[str, int], members: Iterable[enum.Enum]) -> int:
    mask = 0
    for member in members:
        mask |= bits[member.value]
    return mask


def _client_matcher(glob: Glob) -> Callable[[Observation], bool]:
    """Client globs test the address, the app hint and the process name, lower-cased."""
    match = glob.match

    def test(obs: Observation) -> bool:
        for value in (obs.client_addr, obs.client_app, obs.client_process):
            if value is not None and match(value.lower()):
                return True
        return False

    return test


def is_lookalike(a: Assessment) -> bool:
    return (a.service is not None and a.service.kind is MatchKind.LOOKALIKE) or (
        "lookalike" in a.flags
    )
