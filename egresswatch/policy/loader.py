"""Reading a policy file: TOML in, validated and compiled settings out.

tomllib reports no positions, so errors are located in the raw text
(:class:`_Locator`) and name the file, the line and the field.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Sequence
from typing import Any

from egresswatch.errors import ConfigError
from egresswatch.model import UNKNOWN_COUNTRY, Action, FindingKind, Mode, PayloadType, Sensor
from egresswatch.policy.countries import (
    COUNTRY_GROUPS,
    COUNTRY_HINTS,
    EXTRA_COUNTRIES,
    GROUP_NAME,
    ISO_COUNTRIES,
)
from egresswatch.policy.rules import BUILTIN_RULES, MATCHERS, Glob, Rule

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SERVICE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
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


def parse(text: str, source: str) -> dict[str, Any]:
    """Parse and validate policy TOML text into the fields of a ``Policy``.

    Raises ConfigError naming ``source``, the line and the field.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(e, source, last_line=len(text.rstrip().splitlines()) or 1) from e
    return _Builder(data, _Locator(text), source).build()


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


def _toml_error(
    e: tomllib.TOMLDecodeError, source: str, last_line: int | None = None
) -> ConfigError:
    """tomllib puts the position in its message: '... (at line 3, column 7)', or
    '(at end of document)' when the text ends inside a value or key (then the error is
    reported on ``last_line``, the last line with text: issue #8 wants a line for every
    error)."""
    msg = str(e)
    m = re.search(r"\(at line (\d+), column \d+\)$", msg)
    line = int(m.group(1)) if m else None
    if m:
        msg = msg[: m.start()].rstrip()
    elif msg.endswith("(at end of document)"):
        msg = msg.removesuffix("(at end of document)").rstrip() + " at the end of the file"
        line = last_line
    return ConfigError(f"not valid TOML: {msg}", path=source, line=line)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest choice (or a prefix match), else ''."""
    ordered = sorted(choices)
    close = difflib.get_close_matches(word, ordered, n=1)
    if not close:  # 'chat' -> 'chat-prompt': difflib's ratio is too low for a prefix
        close = [c for c in ordered if c.startswith(word.lower())][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


class _Builder:
    """Validates parsed TOML and compiles it into the fields of a ``Policy``."""

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

    def build(self) -> dict[str, Any]:
        data = self.data
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail("unknown setting" + did_you_mean(key, _TOP_KEYS), key, key=key)
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
            code = item.strip().upper()
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
                    "unknown setting" + did_you_mean(key, _UNKNOWN_KEYS),
                    f"unknown.{key}",
                    table="unknown",
                    key=key,
                )
        rules = self.rules()
        return dict(
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
            if not GROUP_NAME.match(name):
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
        if code in COUNTRY_HINTS:
            hint = f"; the ISO 3166 code is {COUNTRY_HINTS[code]!r}"
        else:
            hint = did_you_mean(code, [*COUNTRY_GROUPS, *self.groups]) if len(code) > 2 else ""
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
                    "unknown rule field" + did_you_mean(key, _RULE_KEYS),
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
            return Glob(pats)
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
                    + did_you_mean(item, names)
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
