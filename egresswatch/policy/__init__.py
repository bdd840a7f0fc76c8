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

The package is part of the pure core: it reads its file once at load and then
decides without I/O. ``loader`` validates the TOML (errors name file, line and
field), ``countries`` holds the ISO codes and groups, ``rules`` compiles the rule
list into one function, so :meth:`Policy.decide` costs a few microseconds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from egresswatch.errors import ConfigError
from egresswatch.model import (
    Action,
    Assessment,
    GeoSource,
    MatchKind,
    Mode,
    Verdict,
)
from egresswatch.policy.countries import COUNTRY_GROUPS, EXTRA_COUNTRIES, ISO_COUNTRIES
from egresswatch.policy.loader import did_you_mean, parse
from egresswatch.policy.rules import (
    BUILTIN_RULES,
    MATCHERS,
    Glob,
    Rule,
    compile_chain,
    is_lookalike,
)

__all__ = [
    "BUILTIN_RULES",
    "COUNTRY_GROUPS",
    "EXTRA_COUNTRIES",
    "ISO_COUNTRIES",
    "MATCHERS",
    "Policy",
    "Rule",
]

#: How many findings a reason sentence spells out before "and N more".
_REASON_FINDINGS = 4

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
    _passthrough: Glob | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_local_rules", tuple(r for r in self.rules if r.local is True))
        object.__setattr__(
            self, "_egress_rules", tuple(r for r in self.rules if r.local is not True)
        )
        if self._local_rules:
            chain = compile_chain(self._local_rules, f"{self.source} local")
            object.__setattr__(self, "_local_first", chain)
        if self._egress_rules:
            chain = compile_chain(self._egress_rules, self.source)
            object.__setattr__(self, "_egress_first", chain)
        object.__setattr__(self, "_approved_text", ", ".join(self.approved) or "none")
        if self.passthrough_hosts:
            object.__setattr__(self, "_passthrough", Glob(self.passthrough_hosts))

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
            text = raw.decode("utf-8-sig")  # editors on Windows may write a BOM
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError("the policy file is not UTF-8 text", path=name, line=line) from e
        return cls.from_text(text, source=name)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Policy:
        """Parse and validate policy TOML text; ``source`` names it in errors."""
        return cls(**parse(text, source))

    @classmethod
    def default(cls) -> Policy:
        """The shipped default policy (monitor mode), ``egresswatch/data/policy-default.toml``."""
        return _shipped("policy-default.toml")

    @classmethod
    def example(cls) -> Policy:
        """The shipped example policy (enforce mode), ``egresswatch/data/policy-example.toml``."""
        return _shipped("policy-example.toml")

    def with_mode(self, mode: Mode | str) -> Policy:
        """The same policy in another mode (``--mode`` on the command line)."""
        try:
            new = Mode(mode)
        except ValueError:
            raise ConfigError(
                f"unknown mode {mode!r}; choose from {', '.join(m.value for m in Mode)}",
                field="mode",
            ) from None
        if new is self.mode:
            return self
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
            if i >= 0:
                rule = self._egress_rules[i]
                if rule.action is not Action.ALERT:
                    return self._rule_verdict(rule, a)
                # An alert marks a flow; it must not exempt it from the jurisdiction checks.
                judged = self._judge(a)
                if judged[0].severity <= Action.ALERT.severity:
                    return self._rule_verdict(rule, a)
                also = f"; it also matched alert rule '{rule.name}'"
                return self._builtin_verdict(a, judged, also)
        return self._builtin_verdict(a, self._judge(a))

    def _rule_verdict(self, rule: Rule, a: Assessment) -> Verdict:
        if rule.reason:
            text = f"{_subject(a)}: {rule.reason} (rule '{rule.name}'): {_cargo(a)}"
        else:
            text = f"{_subject(a)} matched rule '{rule.name}': {_cargo(a)}"
        return Verdict(rule.action, rule.name, text, self.mode)

    def _judge(self, a: Assessment) -> tuple[Action, str, bool]:
        """The built-in checks: (action, built-in rule, whether the operator is outside).

        Unknown gets what ``[unknown]`` says, a country outside the approved set gets
        ``outside``, the strictest answer wins; with no problem, ``default``.
        """
        best: tuple[Action, str] | None = None
        op_outside = False
        if self.require_operator:
            cc = a.operator_country
            if cc is None:
                best = (self.unknown_operator, "unknown-operator")
            elif cc not in self.approved_countries:
                op_outside = True
                best = (self.outside, "jurisdiction")
        if self.require_address:
            cc = a.geo.country
            if cc is None:
                best = _stricter(best, (self.unknown_address, "unknown-address"))
            elif cc not in self.approved_countries:
                best = _stricter(best, (self.outside, "jurisdiction"))
        if best is None:
            return (self.default_action, "default", False)
        return (best[0], best[1], op_outside)

    def _builtin_verdict(
        self, a: Assessment, judged: tuple[Action, str, bool], also: str = ""
    ) -> Verdict:
        """The one-sentence reason for a built-in answer (see docs/policy.md)."""
        action, rule, op_outside = judged
        approved = self._approved_text
        if rule == "default":
            text = f"{_subject(a)} is inside the approved jurisdictions ({approved})"
        elif rule == "jurisdiction" and op_outside:
            text = f"{_subject(a)} is outside the approved jurisdictions ({approved})"
        elif rule == "jurisdiction":
            text = (
                f"the address of {_subject(a)} is outside the approved jurisdictions ({approved})"
            )
        elif rule == "unknown-address":
            text = f"the address country of {_subject(a)} is unknown"
        elif is_lookalike(a) and a.service is not None:
            text = (
                f"{_subject(a)} is not operated by {a.service.service.operator}, "
                "so its operator is unknown"
            )
        else:
            text = f"{_subject(a)} has no known operator"
        return Verdict(action, rule, f"{text}: {_cargo(a)}{also}", self.mode)

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
                        + did_you_mean(value, known[key]),
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
                name
                for name, on in (
                    ("address", self.require_address),
                    ("operator", self.require_operator),
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
