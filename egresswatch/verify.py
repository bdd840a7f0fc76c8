"""``egresswatch verify -- CMD``: run a command where nothing can leave, and list what it tried.

:func:`run_verify` builds two network namespaces for one run: the command's, whose
only way out is a veth to the gateway's, where :mod:`egresswatch.verifylab` answers
every attempt locally (DNS from a private pool, TCP through the transparent proxy
or the raw recorder, the sniffer watching all of it). The gateway has no route to
anywhere and forwarding off: nothing really leaves. Everything is removed again
when the command ends, is killed or times out.

:func:`aggregate` turns the gateway's records into one :class:`Destination` per
(name or address, port, transport) and decides whether each was allowed: by the
policy (only when one is given), an ``--allow`` pattern, or a profile from
``data/profiles.toml``. The verdict is PASS when every destination was allowed.
Renderers: :func:`to_json` (schema ``JSON_SCHEMA``), :func:`to_junit` (one test
case per destination), :func:`to_markdown`, :func:`render_terminal`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree as ET

from egresswatch.errors import ConfigError, EgressWatchError
from egresswatch.runtime import Settings

#: version of the JSON report; bumped on incompatible changes (docs/verify.md)
SCHEMA_ID = "egresswatch-verify/1"
#: the command<->gateway link is a /30 of link-local space (RFC 3927): see link_addresses
LINK_PREFIX = 30
PROXY_PORT, DNS_PORT, RAW_PORT = 18080, 18053, 18099
#: CA bundle variables honoured by OpenSSL, requests, curl and Node (their docs)
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
#: proxy variables dropped from the command's environment: inside the namespace they
#: would point at nothing, and every attempt is intercepted anyway
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
#: set in the environment of verify re-run inside a user namespace (see run_in_userns);
#: "force" outside makes root take that path too (tests)
USERNS_ENV = "EGRESSWATCH_VERIFY_USERNS"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
#: payload types that say nothing about what was sent
_OPAQUE = frozenset({"tls-opaque", "dns"})
_PROTO_RANK = {"https": 5, "http": 4, "websocket": 4, "tls": 3, "quic": 3, "raw": 2, "dns": 1}


class VerifyError(EgressWatchError):
    """verify could not set up or run its namespaces (exit 4)."""

    exit_code = 4


class CommandNotFound(EgressWatchError):
    """The command to verify does not exist or is not executable (a usage error)."""

    exit_code = 2


# -- profiles --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """One thing a tool is known to contact, when, and how to stop it."""

    hosts: tuple[str, ...]
    payload: tuple[str, ...]
    allow: bool
    what: str
    when: str = ""
    opt_out: str = ""

    def matches_host(self, host: str | None) -> bool:
        return host_matches(host, self.hosts)

    def covers(self, host: str | None, payload_type: str) -> bool:
        return self.matches_host(host) and (not self.payload or payload_type in self.payload)


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    expects: tuple[Expectation, ...]


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Profiles from ``path`` or the shipped ``data/profiles.toml``; ConfigError when malformed."""
    if path is None:
        text = resources.files("egresswatch").joinpath("data", "profiles.toml").read_text()
        where = "profiles.toml"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(e.strerror or str(e), path=str(path)) from e
        where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python 3.12's TOMLDecodeError has no lineno yet (3.14 adds it): read the message.
        found = re.search(r"line (\d+)", str(e))
        line = getattr(e, "lineno", None) or (int(found.group(1)) if found else None)
        raise ConfigError(str(e), path=where, line=line) from e
    out: dict[str, Profile] = {}
    for pid, body in (doc.get("profiles") or {}).items():
        expects: list[Expectation] = []
        for i, entry in enumerate(body.get("expect", [])):
            fld = f"profiles.{pid}.expect[{i}]"
            hosts = entry.get("hosts")
            if (
                not isinstance(hosts, list)
                or not hosts
                or not all(isinstance(h, str) for h in hosts)
            ):
                raise ConfigError(
                    "'hosts' must be a non-empty list of names", path=where, field=fld
                )
            if not isinstance(entry.get("allow"), bool) or not isinstance(entry.get("what"), str):
                raise ConfigError(
                    "'allow' (true/false) and 'what' are required", path=where, field=fld
                )
            expects.append(
                Expectation(
                    hosts=tuple(h.lower() for h in hosts),
                    payload=tuple(entry.get("payload", ())),
                    allow=entry["allow"],
                    what=entry["what"],
                    when=entry.get("when", ""),
                    opt_out=entry.get("opt_out", ""),
                )
            )
        out[pid] = Profile(pid, str(body.get("name", pid)), tuple(expects))
    return out


def host_matches(host: str | None, patterns: Iterable[str]) -> bool:
    """``a.com`` covers itself and every name below it; ``*`` globs (``cdn-lfs*.x.co``)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if "*" in p:
            if fnmatch.fnmatchcase(host, p):
                return True
        elif host == p or host.endswith("." + p):
            return True
    return False


# -- the report ------------------------------------------------------------------------------


@dataclass
class Destination:
    """Everything the command tried towards one (name or address, port, transport)."""

    name: str | None
    address: str | None
    port: int | None
    transport: str
    protocol: str = "raw"
    service: dict[str, Any] | None = None
    address_country: str | None = None
    payload_types: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    count: int = 0
    lookups: int = 0
    first: float = 0.0
    last: float = 0.0
    first_bytes: str | None = None
    policy: str | None = None
    allowed_by: list[str] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return bool(self.allowed_by)

    @property
    def label(self) -> str:
        """``name:port/transport`` (or the address when there is no name)."""
        return f"{self.name or self.address or '?'}:{self.port}/{self.transport}"


@dataclass
class VerifyReport:
    command: list[str]
    destinations: list[Destination]
    started: float
    finished: float
    exit_status: int | None = None
    timed_out: bool = False
    profiles: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    policy: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d.allowed for d in self.destinations)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def _primary(rec: dict[str, Any]) -> bool:
    return rec.get("sensor") != "sniffer"


def _name(rec: dict[str, Any]) -> str | None:
    return rec.get("host") or rec.get("http_host") or rec.get("sni") or rec.get("dns_name")


def aggregate(
    records: Sequence[dict[str, Any]],
    *,
    allow: Sequence[str] = (),
    profiles: Sequence[Profile] = (),
    policy_given: bool = False,
) -> list[Destination]:
    """One Destination per target, with the allowance decided (see the module docstring).

    The proxy and raw recorder are the primary witnesses; the sniffer's records add
    only what they did not see (UDP other than DNS, TCP the proxy never got).
    """
    primary_ports = {(r.get("transport"), r.get("client_port")) for r in records if _primary(r)}
    # Who owned each client socket, as any sensor found it: the raw recorder may look
    # after a quick client closed, when the sniffer had already found it at the SYN.
    owners: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("pid") is not None:
            entry = {"pid": r["pid"], "name": r.get("process")}
            seen = owners.setdefault((r.get("transport"), r.get("client_port")), [])
            if entry not in seen:
                seen.append(entry)
    lookups: dict[str, int] = {}
    by_key: dict[tuple[str, int | None, str], Destination] = {}
    flows: dict[tuple[str, int | None, str], dict[str, set[str]]] = {}
    for rec in sorted(records, key=lambda r: r.get("time") or 0.0):
        proto = rec.get("protocol") or "raw"
        if proto == "dns" or rec.get("dst_port") == 53:
            if _primary(rec) and rec.get("dns_name"):
                lookups[rec["dns_name"]] = lookups.get(rec["dns_name"], 0) + 1
            continue
        if not _primary(rec):
            if (rec.get("transport"), rec.get("client_port")) in primary_ports:
                continue
            if is_link_address(rec.get("dst_addr")):
                continue  # a flow the sniffer picked up from its reply: seen from the wrong end

        name = _name(rec)
        key = (name or rec.get("dst_addr") or "?", rec.get("dst_port"), rec.get("transport", "tcp"))
        d = by_key.get(key)
        if d is None:
            d = by_key[key] = Destination(
                name=name,
                address=rec.get("dst_addr"),
                port=rec.get("dst_port"),
                transport=rec.get("transport", "tcp"),
                first=rec.get("time") or 0.0,
            )
            flows[key] = {"hello": set(), "other": set()}
        _merge(d, rec)
        for proc in owners.get((rec.get("transport"), rec.get("client_port")), ()):
            if proc not in d.processes:
                d.processes.append(proc)
        stage = "hello" if rec.get("stage") == "clienthello" else "other"
        flows[key][stage].add(str(rec.get("flow_id")))
    for key, d in by_key.items():
        f = flows[key]
        d.count = len(f["other"]) or len(f["hello"])
        if d.name:
            d.lookups = lookups.pop(d.name, 0)
        if len(d.payload_types) > 1:
            d.payload_types = [t for t in d.payload_types if t != "tls-opaque"]
    # Names looked up but never connected to: the query itself left (to a resolver).
    for name, n in lookups.items():
        d = Destination(name=name, address=None, port=53, transport="udp", protocol="dns")
        d.lookups = d.count = n
        d.payload_types = ["dns"]
        for rec in records:
            if rec.get("dns_name") == name and _primary(rec):
                d.first = d.first or rec.get("time") or 0.0
                _merge(d, rec)
        by_key[(name, 53, "dns")] = d
    out = sorted(by_key.values(), key=lambda d: (d.first, d.label))
    for d in out:
        _judge(d, allow, profiles, policy_given)
    return out


def _merge(d: Destination, rec: dict[str, Any]) -> None:
    proto = rec.get("protocol") or "raw"
    if _PROTO_RANK.get(proto, 0) > _PROTO_RANK.get(d.protocol, 0):
        d.protocol = proto
    if d.name is None and _name(rec):
        d.name = _name(rec)
    if d.address is None and rec.get("dst_addr") and rec.get("protocol") != "dns":
        d.address = rec["dst_addr"]
    if d.service is None and rec.get("service"):
        d.service = rec["service"]
    if d.address_country is None and rec.get("address_country"):
        d.address_country = rec["address_country"]
    for t in rec.get("payload_types") or ():
        if t not in d.payload_types:
            d.payload_types.append(t)
    for f in rec.get("findings") or ():
        if f not in d.findings:
            d.findings.append(f)
    if rec.get("method") and len(d.requests) < 20:
        line = f"{rec['method']} {rec.get('path') or '/'}"
        if line not in d.requests:
            d.requests.append(line)
    if rec.get("pid") is not None:
        proc = {"pid": rec["pid"], "name": rec.get("process")}
        if proc not in d.processes:
            d.processes.append(proc)
    sensor = str(rec.get("sensor"))
    if sensor not in d.sensors:
        d.sensors.append(sensor)
    if d.first_bytes is None and rec.get("first_bytes"):
        d.first_bytes = rec["first_bytes"]
    t = rec.get("time") or 0.0
    d.first = min(d.first, t) if d.first else t
    d.last = max(d.last, t)
    label = (rec.get("policy") or {}).get("label")
    if label and (d.policy is None or _SEVERITY.get(label, 0) > _SEVERITY.get(d.policy, 0)):
        d.policy = label


_SEVERITY = {"allow": 0, "alert": 1, "would-block": 2, "block": 2}


def record_allowed(
    rec: dict[str, Any],
    *,
    allow: Sequence[str] = (),
    profiles: Sequence[Profile] = (),
    policy_given: bool = False,
) -> bool:
    """Would this one attempt be allowed? (``--online`` forwards exactly those.)"""
    d = Destination(
        name=_name(rec),
        address=rec.get("dst_addr"),
        port=rec.get("dst_port"),
        transport=rec.get("transport", "tcp"),
    )
    _merge(d, rec)
    if len(d.payload_types) > 1:
        d.payload_types = [t for t in d.payload_types if t != "tls-opaque"]
    _judge(d, allow, profiles, policy_given)
    return d.allowed


def _judge(
    d: Destination, allow: Sequence[str], profiles: Sequence[Profile], policy_given: bool
) -> None:
    names = [n for n in (d.name, d.address) if n]
    for pattern in allow:
        if any(host_matches(n, [pattern]) for n in names):
            d.allowed_by.append(f"--allow {pattern}")
            break
    kinds = [t for t in d.payload_types if t not in _OPAQUE] or (
        ["dns"] if d.protocol == "dns" else ["tls-opaque"] if d.payload_types else ["other"]
    )
    for profile in profiles:
        relevant = [e for e in profile.expects if e.matches_host(d.name)]
        if not relevant:
            continue
        if d.protocol == "dns":
            ok = any(e.allow for e in relevant)
        else:
            ok = all(any(e.allow and e.covers(d.name, k) for e in relevant) for k in kinds)
        if ok:
            d.allowed_by.append(f"profile {profile.id}")
        for e in relevant:
            hit = d.protocol == "dns" or not e.payload or any(k in e.payload for k in kinds)
            if not hit:
                continue
            text = f"{profile.name}: {e.what}"
            if e.when:
                text += f" ({e.when})"
            if not e.allow and e.opt_out:
                text += f". To stop it: {e.opt_out}"
            elif e.allow:
                text += " [expected]"
            if text not in d.explanations:
                d.explanations.append(text)
    if policy_given and d.policy == "allow":
        d.allowed_by.append("policy")


# -- renderers -------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None


def destination_dict(d: Destination) -> dict[str, Any]:
    return {
        "name": d.name,
        "address": d.address,
        "port": d.port,
        "transport": d.transport,
        "protocol": d.protocol,
        "service": d.service,
        "operator_country": (d.service or {}).get("operator_country"),
        "address_country": d.address_country,
        "payload_types": d.payload_types,
        "findings": d.findings,
        "requests": d.requests,
        "processes": d.processes,
        "sensors": d.sensors,
        "count": d.count,
        "lookups": d.lookups,
        "first": _iso(d.first),
        "last": _iso(d.last),
        "first_bytes": d.first_bytes,
        "policy_verdict": d.policy,
        "allowed": d.allowed,
        "allowed_by": d.allowed_by,
        "explanations": d.explanations,
    }


def to_json(report: VerifyReport) -> dict[str, Any]:
    """The report as plain JSON (schema :data:`JSON_SCHEMA`, documented in docs/verify.md)."""
    return {
        "schema": SCHEMA_ID,
        "verdict": report.verdict,
        "command": report.command,
        "exit_status": report.exit_status,
        "timed_out": report.timed_out,
        "started": _iso(report.started),
        "finished": _iso(report.finished),
        "duration_seconds": round(report.finished - report.started, 3),
        "policy": report.policy,
        "allow": report.allow,
        "profiles": report.profiles,
        "destinations": [destination_dict(d) for d in report.destinations],
        "notes": report.notes,
    }


_STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
#: JSON Schema (draft 2020-12) of :func:`to_json`'s output
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "type": "object",
    "required": [
        "schema", "verdict", "command", "exit_status", "timed_out", "started", "finished",
        "duration_seconds", "policy", "allow", "profiles", "destinations", "notes",
    ],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "verdict": {"enum": ["PASS", "FAIL"]},
        "command": _STRINGS,
        "exit_status": {"type": ["integer", "null"]},
        "timed_out": {"type": "boolean"},
        "started": {"type": "string"},
        "finished": {"type": "string"},
        "duration_seconds": {"type": "number"},
        "policy": _STR_OR_NULL,
        "allow": _STRINGS,
        "profiles": _STRINGS,
        "notes": _STRINGS,
        "destinations": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "name", "address", "port", "transport", "protocol", "service",
                    "operator_country", "address_country", "payload_types", "findings",
                    "requests", "processes", "sensors", "count", "lookups", "first", "last",
                    "first_bytes", "policy_verdict", "allowed", "allowed_by", "explanations",
                ],
                "properties": {
                    "name": _STR_OR_NULL,
                    "address": _STR_OR_NULL,
                    "port": {"type": ["integer", "null"]},
                    "transport": {"enum": ["tcp", "udp"]},
                    "protocol": {"type": "string"},
                    "service": {
                        "type": ["object", "null"],
                        "required": ["id", "name", "operator", "operator_country"],
                        "properties": {
                            "id": {"type": "string"},
                            "name": {"type": "string"},
                            "operator": {"type": "string"},
                            "operator_country": {"type": "string"},
                        },
                    },
                    "operator_country": _STR_OR_NULL,
                    "address_country": _STR_OR_NULL,
                    "payload_types": _STRINGS,
                    "findings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind", "redacted", "where"],
                            "properties": {
                                "kind": {"type": "string"},
                                "redacted": {"type": "string"},
                                "where": {"type": "string"},
                                "detail": _STR_OR_NULL,
                            },
                        },
                    },
                    "requests": _STRINGS,
                    "processes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["pid", "name"],
                            "properties": {"pid": {"type": "integer"}, "name": _STR_OR_NULL},
                        },
                    },
                    "sensors": _STRINGS,
                    "count": {"type": "integer", "minimum": 0},
                    "lookups": {"type": "integer", "minimum": 0},
                    "first": _STR_OR_NULL,
                    "last": _STR_OR_NULL,
                    "first_bytes": _STR_OR_NULL,
                    "policy_verdict": _STR_OR_NULL,
                    "allowed": {"type": "boolean"},
                    "allowed_by": _STRINGS,
                    "explanations": _STRINGS,
                },
            },
        },
    },
}  # fmt: skip


def _summary(d: Destination) -> str:
    svc = d.service or {}
    parts = [
        f"{d.protocol} {d.label}",
        f"service {svc.get('name')} (operator in {svc.get('operator_country')})"
        if svc
        else "no catalogued service",
        f"payload {', '.join(d.payload_types) or '-'}",
        f"{d.count} attempt(s)",
    ]
    if d.findings:
        parts.append("findings " + ", ".join(f"{f['kind']} {f['redacted']}" for f in d.findings))
    if d.processes:
        parts.append("by " + ", ".join(f"{p['name']}[{p['pid']}]" for p in d.processes))
    return "; ".join(parts)


def to_junit(report: VerifyReport) -> str:
    """JUnit XML: one testsuite, one testcase per destination; a failure when not allowed."""
    failures = sum(1 for d in report.destinations if not d.allowed)
    suite = ET.Element(
        "testsuite",
        name="egresswatch verify",
        tests=str(len(report.destinations)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{report.finished - report.started:.3f}",
        timestamp=_iso(report.started) or "",
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="command", value=" ".join(report.command))
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    for d in report.destinations:
        case = ET.SubElement(
            suite, "testcase", classname=f"egress.{d.protocol}", name=d.label, time="0"
        )
        detail = _summary(d)
        if d.explanations:
            detail += "\n" + "\n".join(d.explanations)
        if d.allowed:
            ET.SubElement(
                case, "system-out"
            ).text = f"allowed by {', '.join(d.allowed_by)}\n{detail}"
        else:
            fail = ET.SubElement(
                case, "failure", message=f"egress not allowed: {d.label}", type="egress"
            )
            fail.text = detail
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: VerifyReport) -> str:
    """A Markdown summary (a CI job summary or a pull-request comment)."""
    icon = "✅" if report.passed else "❌"
    lines = [
        f"## egresswatch verify: {icon} {report.verdict}",
        "",
        f"Command: `{' '.join(report.command)}` (exit status {report.exit_status}"
        + (", timed out" if report.timed_out else "")
        + ")",
        "",
    ]
    if not report.destinations:
        lines.append("No egress was attempted.")
    else:
        lines += [
            "| | Destination | Service (operator country) | Payload | Findings | Count "
            "| Process | Allowed by |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in report.destinations:
            svc = d.service or {}
            lines.append(
                "| "
                + " | ".join(
                    _md(x)
                    for x in (
                        "✅" if d.allowed else "❌",
                        f"`{d.label}` {d.protocol}" + (f" ({d.address})" if d.address else ""),
                        f"{svc.get('name')} ({svc.get('operator_country')})" if svc else "-",
                        ", ".join(d.payload_types) or "-",
                        ", ".join(f"{f['kind']} `{f['redacted']}`" for f in d.findings) or "-",
                        d.count,
                        ", ".join(f"{p['name']}[{p['pid']}]" for p in d.processes) or "-",
                        ", ".join(d.allowed_by) or "not allowed",
                    )
                )
                + " |"
            )
        notes = [(d.label, e) for d in report.destinations for e in d.explanations]
        if notes:
            lines += ["", "### Why, and how to stop it", ""]
            lines += [f"- `{label}`: {_md(e)}" for label, e in notes]
    for note in report.notes:
        lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def render_terminal(report: VerifyReport, console: Any) -> None:
    """The report as a rich table on ``console``."""
    from rich.table import Table

    if report.destinations:
        table = Table(title="Egress attempts", show_lines=False)
        for col in (
            "",
            "destination",
            "service (country)",
            "payload",
            "findings",
            "n",
            "process",
            "allowed by",
        ):
            table.add_column(col)
        for d in report.destinations:
            svc = d.service or {}
            table.add_row(
                "[green]✓[/]" if d.allowed else "[red]✗[/]",
                f"{d.protocol} {d.label}" + (f"\n{d.address}" if d.address else ""),
                f"{svc.get('name')} ({svc.get('operator_country')})" if svc else "-",
                ", ".join(d.payload_types) or "-",
                "\n".join(f"{f['kind']} {f['redacted']}" for f in d.findings) or "-",
                str(d.count),
                "\n".join(f"{p['name']}[{p['pid']}]" for p in d.processes) or "-",
                ", ".join(d.allowed_by) or "[red]no[/]",
            )
        console.print(table)
        for d in report.destinations:
            for e in d.explanations:
                console.print(f"  {d.label}: {e}", markup=False, highlight=False)
    else:
        console.print("No egress was attempted.")
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    status = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    bad = sum(1 for d in report.destinations if not d.allowed)
    console.print(
        f"{status}: {len(report.destinations)} destination(s), {bad} not allowed; "
        f"command exit status {report.exit_status}" + (" (timed out)" if report.timed_out else "")
    )


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyConfig:
    """What :func:`run_verify` needs; built by the command."""

    command: tuple[str, ...]
    settings: Settings = field(default_factory=lambda: Settings(store=False, metrics_listen=None))
    allow: tuple[str, ...] = ()
    profiles: tuple[Profile, ...] = ()
    timeout: float | None = None
    online: bool = False
    confdir: Path = Path("~/.mitmproxy")
    sniffer: bool = True
    verbose: bool = False
    #: how long after the command ends late packets are still collected
    grace: float = 0.5


#: documentation ranges (RFC 5737 §3, RFC 3849): the internet does not route them (RFC
#: 5737 §4), so a default route through, or from, such an address reaches no internet.
_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
#: IPv6 sources that cannot reach the IPv6 internet: ULA (RFC 4193), link-local (RFC 4291)
_V6_LOCAL = (ipaddress.ip_network("fc00::/7"), ipaddress.ip_network("fe80::/10"))


def _ip_json(*args: str) -> list[dict[str, Any]]:
    try:
        res = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
        data = json.loads(res.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []
    return data if isinstance(data, list) else []


def _in(addr: str | None, nets: Iterable[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def internet_route() -> str | None:
    """None when a default route could reach the internet, else why not.

    Reads the routing table and interface addresses (``ip -j``); sends nothing. A
    default route counts only when its gateway is not a documentation address and its
    interface has a source address the internet could answer (IPv4: not documentation;
    private is fine behind NAT. IPv6: global, not ULA, not documentation).
    """
    routes = [(4, r) for r in _ip_json("-4", "route", "show", "default")]
    routes += [(6, r) for r in _ip_json("-6", "route", "show", "default")]
    if not routes:
        return "no default route"
    for family, route in routes:
        if _in(route.get("gateway"), _DOC_NETS):
            continue
        dev = route.get("dev")
        if not dev:
            continue
        addrs = [
            a.get("local")
            for link in _ip_json("addr", "show", "dev", str(dev))
            for a in link.get("addr_info", [])
            if a.get("family") == ("inet" if family == 4 else "inet6")
            and a.get("scope") == "global"
        ]
        bad = _DOC_NETS if family == 4 else (*_DOC_NETS, *_V6_LOCAL)
        if any(not _in(a, bad) for a in addrs):
            return None
    return (
        "the default routes go through or from documentation, unique-local or link-local "
        "addresses, which the internet does not route"
    )


def preflight(config: VerifyConfig) -> None:
    """Refuse early, with a message that says what to do."""
    if config.online:
        why = internet_route()
        if why is not None:
            raise VerifyError(
                "--online forwards allowed traffic to the internet, but this machine has "
                f"no route to it ({why}); run without --online to answer every attempt "
                "locally"
            )
    if os.geteuid() != 0:
        raise VerifyError(_no_root_message())
    for tool in ("ip", "nft", "setpriv"):
        if shutil.which(tool) is None:
            raise VerifyError(f"'{tool}' is not installed (Debian: iproute2, nftables, util-linux)")


def _no_root_message() -> str:
    userns = Path("/proc/sys/user/max_user_namespaces")
    try:
        allowed = int(userns.read_text().strip()) > 0
    except (OSError, ValueError):
        allowed = False
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    with contextlib.suppress(OSError, ValueError):
        allowed = allowed and int(clone.read_text().strip()) == 1
    if allowed:
        return (
            "verify needs root for its namespaces, and unprivileged user namespaces did not "
            "work here (unshare --user --map-root-user --net failed; a security module may "
            "restrict them): run it with sudo (the command then runs as you) or as root"
        )
    return (
        "verify needs root for its namespaces: run it with sudo (the command then runs as "
        "you) or as root; unprivileged user namespaces are disabled on this kernel"
    )


def userns_works() -> bool:
    """True when this user can make a user namespace with its own network (unshare -rn)."""
    if shutil.which("unshare") is None:
        return False
    try:
        res = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def run_in_userns(argv: Sequence[str]) -> int:
    """Run ``egresswatch ARGV`` again inside a new user+network+mount namespace; its exit code.

    Inside, the process is root of namespaces it owns (user_namespaces(7)): it can make
    network namespaces, veths and nftables tables there, and nothing it does reaches the
    host's network, which it cannot even see.
    """
    cmd = [
        "unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation", "private",
        "--", sys.executable, "-m", "egresswatch", *argv,
    ]  # fmt: skip
    env = {**os.environ, USERNS_ENV: "inside"}
    try:
        return subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:
        return 4


def _userns_mounts(work: Path, nameserver: str) -> bool:
    """Inside our own user+mount namespace: private /run/netns (and /etc/netns) for ip-netns.

    Returns True when /etc/netns is usable; else the command's resolv.conf is bound over
    /etc/resolv.conf of this private mount namespace (only verify and its children see it).
    """

    def mount(*args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise VerifyError(f"mount {' '.join(args)}: {res.stderr.strip()}")

    runns = Path("/run/netns")
    if not runns.is_dir():
        mount("-t", "tmpfs", "tmpfs", "/run")
        runns.mkdir()
    mount("-t", "tmpfs", "tmpfs", str(runns))
    if Path("/etc/netns").is_dir():
        mount("-t", "tmpfs", "tmpfs", "/etc/netns")
        return True
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")
    mount("--bind", str(resolv), "/etc/resolv.conf")
    return False


def _invoking_user() -> tuple[int, int, str] | None:
    """(uid, gid, home) of the user behind sudo, when run through sudo as root."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid or not uid.isdigit() or uid == "0":
        return None
    try:
        home = pwd.getpwuid(int(uid)).pw_dir
    except KeyError:
        home = "/"
    return int(uid), int(gid), home


def ca_bundle(ca: Path, dest: Path) -> Path:
    """The system's trusted roots plus egresswatch's CA, in one PEM file clients can read."""
    parts: list[str] = []
    for cand in SYSTEM_BUNDLES:
        with contextlib.suppress(OSError):
            parts.append(Path(cand).read_text())
            break
    else:
        with contextlib.suppress(ImportError, OSError):
            import certifi

            parts.append(Path(certifi.where()).read_text())
    parts.append(ca.read_text())
    dest.write_text("\n".join(p.rstrip() + "\n" for p in parts))
    dest.chmod(0o644)
    return dest


def command_env(
    base: dict[str, str], bundle: Path, user: tuple[int, int, str] | None
) -> dict[str, str]:
    """The command's environment: the CA bundle in every variable clients read, no proxies."""
    env = {k: v for k, v in base.items() if k.lower() not in PROXY_VARS}
    for var in CA_VARS:
        env[var] = str(bundle)
    if user is not None:
        name = _user_name(user[0])
        env.update(HOME=user[2], USER=name, LOGNAME=name)
    return env


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def gateway_ruleset(table: str, iface: str) -> str:
    """The gateway's one nftables table: everything from the command is answered here.

    REDIRECT (nft ``redirect``) rewrites to the incoming interface's address; the
    listeners bind every address. Forwarding is dropped: nothing passes the gateway.
    """
    return (
        f"table inet {table} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{iface}" udp dport 53 redirect to :{DNS_PORT}\n'
        f'        iifname "{iface}" tcp dport 53 redirect to :{RAW_PORT}\n'
        f'        iifname "{iface}" tcp dport {{ 80, 443 }} redirect to :{PROXY_PORT}\n'
        f'        iifname "{iface}" meta l4proto tcp redirect to :{RAW_PORT}\n'
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy drop;\n"
        "    }\n"
        "}\n"
    )


class Link(NamedTuple):
    """Addresses of the command<->gateway link of one run."""

    cmd: str
    gw: str
    cmd6: str
    gw6: str


def link_addresses(seed: int) -> Link:
    """A /30 in 169.254.0.0/16 (RFC 3927 link-local: never routed) chosen by ``seed``.

    Offline each run has its own gateway namespace and any /30 would do; online the
    gateway end lives in the host's namespace, so concurrent runs need distinct links.
    Blocks 1..8191 of 169.254.0.0/17 are used: clear of 169.254.169.254 (cloud metadata).
    """
    block = seed % 8191 + 1
    base = int(ipaddress.IPv4Address("169.254.0.0")) + block * 4
    six = f"fd65:7776:{block:x}::"
    return Link(
        str(ipaddress.IPv4Address(base + 2)),
        str(ipaddress.IPv4Address(base + 1)),
        six + "2",
        six + "1",
    )


def is_link_address(addr: str | None) -> bool:
    """True for the command link's own addresses (a sniffer view from the wrong end)."""
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return ip in _LINK_NETS[0] if ip.version == 4 else ip in _LINK_NETS[1]


_LINK_NETS = (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fd65:7776::/32"))


class Ports(NamedTuple):
    proxy: int
    dns: int
    raw: int


def free_port(addr: str, kind: int) -> int:
    """A port the kernel says is free on ``addr`` now (online: we share the host's ports)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


def online_ruleset(table: str, iface: str, ports: Ports) -> str:
    """``--online``: the gateway shares the host's namespace; only our listeners are reachable.

    The command may reach nothing of the host's but the three listeners, and nothing is
    forwarded from or to its link: allowed traffic leaves only through the proxy or the
    raw relay, which connect on their own. A drop verdict is final in nftables, so these
    hold whatever other tables accept.
    """
    return (
        f"table inet {table} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{iface}" udp dport 53 redirect to :{ports.dns}\n'
        f'        iifname "{iface}" tcp dport {{ 80, 443 }} redirect to :{ports.proxy}\n'
        f'        iifname "{iface}" meta l4proto tcp redirect to :{ports.raw}\n'
        "    }\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy accept;\n"
        f'        iifname "{iface}" tcp dport {{ {ports.proxy}, {ports.raw} }} accept\n'
        f'        iifname "{iface}" udp dport {ports.dns} accept\n'
        f'        iifname "{iface}" drop\n'
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy accept;\n"
        f'        iifname "{iface}" drop\n'
        f'        oifname "{iface}" drop\n'
        "    }\n"
        "}\n"
    )


def run_verify(config: VerifyConfig) -> VerifyReport:
    """Run ``config.command`` in a fresh namespace behind the verify gateway; return the report.

    Raises VerifyError (setup, gateway start) and ConfigError (policy, catalog, GeoIP).
    Namespaces, veths, the nft table, ``/etc/netns`` files, processes and the work
    directory are removed before this returns or raises, also on SIGINT/SIGTERM.
    """
    from egresswatch import runtime
    from egresswatch.commands.proxy import ensure_ca
    from egresswatch.netns import NetnsSet

    preflight(config)
    if shutil.which(config.command[0]) is None:
        raise CommandNotFound(f"command not found: {config.command[0]}")
    runtime.build_inspector(config.settings)  # config errors before any namespace exists
    ca = ensure_ca(config.confdir)
    user = _invoking_user()
    work = Path(tempfile.mkdtemp(prefix="egresswatch-verify-"))
    work.chmod(0o755)
    records_path = work / "records.jsonl"
    restore = _terminate_as_interrupt()
    started = time.time()
    status: int | None = None
    timed_out = False
    notes: list[str] = []
    try:
        bundle = ca_bundle(ca, work / "ca-bundle.pem")
        etc_ok = True
        link = link_addresses(os.getpid())
        if os.environ.get(USERNS_ENV) == "inside":
            etc_ok = _userns_mounts(work, link.gw)
            notes.append("ran in an unprivileged user namespace")
        with NetnsSet("ewv") as lab:
            cmd_ns = lab.netns("c")
            # Offline the gateway gets a namespace with no route anywhere; online it lives
            # in ours (the host's), so allowed traffic can really leave.
            gw_ns = None if config.online else lab.netns("g")
            c_if, g_if = lab.veth(cmd_ns, "c", gw_ns, "g")
            lab.addr(cmd_ns, f"{link.cmd}/{LINK_PREFIX}", c_if)
            lab.addr(gw_ns, f"{link.gw}/{LINK_PREFIX}", g_if)
            lab.route(cmd_ns, "default", "via", link.gw)
            if not config.online:
                lab.addr(cmd_ns, f"{link.cmd6}/64", c_if)
                lab.addr(gw_ns, f"{link.gw6}/64", g_if)
                lab.sh("ip", "-n", cmd_ns, "-6", "route", "add", "default", "via", link.gw6)
            host = os.uname().nodename
            if etc_ok:
                cmd_etc = {
                    "resolv.conf": f"nameserver {link.gw}\noptions timeout:2 attempts:1\n",
                    "hosts": f"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {host}\n",
                }
                lab.etc(cmd_ns, cmd_etc)
                if gw_ns is not None:
                    lab.etc(
                        gw_ns, {"resolv.conf": "nameserver 127.0.0.1\n", "hosts": cmd_etc["hosts"]}
                    )
            if config.online:
                ports = Ports(
                    free_port(link.gw, socket.SOCK_STREAM),
                    free_port(link.gw, socket.SOCK_DGRAM),
                    free_port(link.gw, socket.SOCK_STREAM),
                )
                lab.nft(None, online_ruleset(lab.tag, g_if, ports), lab.tag)
            else:
                ports = Ports(PROXY_PORT, DNS_PORT, RAW_PORT)
                lab.nft(gw_ns, gateway_ruleset(lab.tag, g_if), lab.tag)
            cfg = {
                "records": str(records_path),
                "iface": g_if,
                "command_netns": f"/run/netns/{cmd_ns}",
                "proxy_port": ports.proxy,
                "dns_port": ports.dns,
                "raw_port": ports.raw,
                "listen": [link.gw] if config.online else None,
                "online": {
                    "allow": list(config.allow),
                    "profiles": [p.id for p in config.profiles],
                    "policy_given": config.settings.policy is not None,
                }
                if config.online
                else None,
                "confdir": str(config.confdir.expanduser()),
                "sniffer": config.sniffer,
                "verbose": config.verbose,
                "policy": str(config.settings.policy) if config.settings.policy else None,
                "catalogs": [str(p) for p in config.settings.catalogs],
                "geoip_dir": _opt(config.settings.geoip_dir),
                "country_db": _opt(config.settings.country_db),
                "asn_db": _opt(config.settings.asn_db),
                "geo_overrides": _opt(config.settings.geo_overrides),
            }
            (work / "gateway.json").write_text(json.dumps(cfg))
            gw_log = (work / "gateway.log").open("wb")
            gateway = lab.popen(
                gw_ns,
                [sys.executable, "-m", "egresswatch.verifylab", str(work / "gateway.json")],
                stdout=subprocess.PIPE,
                stderr=gw_log,
                env=dict(os.environ),
            )
            _wait_ready(gateway, work / "gateway.log", timeout=60)
            env = command_env(dict(os.environ), bundle, user)
            try:
                proc = lab.popen(
                    cmd_ns,
                    list(config.command),
                    env=env,
                    user=user[0] if user else None,
                    group=user[1] if user else None,
                )
            except EgressWatchError as e:
                raise VerifyError(str(e)) from e
            try:
                status = proc.wait(config.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                notes.append(
                    f"the command did not finish within {config.timeout:g} s and was killed"
                )
                lab.stop(proc, timeout=2)
                status = proc.returncode
            # Whatever the command left running in its namespace goes now (daemons ...).
            lab.kill_all(cmd_ns)
            time.sleep(config.grace)
            lab.stop(gateway)
            gw_log.close()
            if gateway.returncode not in (0, -signal.SIGTERM, None):
                notes.append(f"the gateway exited with status {gateway.returncode}")
            if status == 127 and not records_path.exists():
                notes.append(f"the command could not be started: {config.command[0]}")
        records = _read_records(records_path)
        if records and "truncated" in records[-1]:
            notes.append(
                f"more than {records.pop()['truncated']} attempts: the rest were not recorded"
            )
    except KeyboardInterrupt:
        raise VerifyError("interrupted; the namespaces and processes were removed") from None
    finally:
        restore()
        if os.environ.get("EGRESSWATCH_VERIFY_KEEP"):  # debugging: keep the gateway's log
            print(f"egresswatch verify: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = VerifyReport(
        command=redact_command(config.command),
        destinations=aggregate(
            records,
            allow=config.allow,
            profiles=config.profiles,
            policy_given=config.settings.policy is not None,
        ),
        started=started,
        finished=time.time(),
        exit_status=status,
        timed_out=timed_out,
        profiles=[p.id for p in config.profiles],
        allow=list(config.allow),
        policy=str(config.settings.policy) if config.settings.policy else None,
        notes=notes,
    )
    return report


def redact_command(argv: Sequence[str]) -> list[str]:
    """The command line for reports: an argument carrying a secret is replaced whole.

    Command lines carry keys too (``-H 'authorization: Bearer sk-…'``); the report keeps
    only the classifier's redacted form of what it found there.
    """
    from egresswatch.classify.findings import Findings, find_sensitive, scan_headers

    out: list[str] = []
    for arg in argv:
        found = find_sensitive(arg, "argv")
        name, sep, value = arg.partition(":")
        if sep and name.strip() and " " not in name.strip():
            # curl -H / wget --header: a secret header is judged as the header it becomes
            headers: Findings = {}
            with contextlib.suppress(Exception):
                scan_headers([(name.strip().lower(), value.strip())], headers)
            found += [f for f in headers.values() if f not in found]
        if found:
            out.append("<redacted " + ", ".join(f"{f.kind} {f.redacted}" for f in found) + ">")
        else:
            out.append(arg)
    return out


def _opt(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _read_records(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Wait for the gateway's READY line; VerifyError with its log when it fails."""
    assert proc.stdout is not None
    ready = threading.Event()
    stdout = proc.stdout

    def reader() -> None:
        for line in iter(stdout.readline, b""):
            if line.strip() == b"READY":
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True, name="verify-gateway-out").start()
    if not ready.wait(timeout) or proc.poll() is not None:
        tail = ""
        with contextlib.suppress(OSError):
            tail = log_path.read_text(errors="replace")[-2000:].strip()
        raise VerifyError(f"the verify gateway did not start: {tail or 'no output'}")


def _terminate_as_interrupt() -> Any:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so teardown runs. Returns a restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
