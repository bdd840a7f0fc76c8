"""The verify report as JSON (with its schema), JUnit XML, Markdown and a rich table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from egresswatch.verify.report import Destination, VerifyReport

#: version of the JSON report; bumped on incompatible changes (docs/verify.md)
SCHEMA_ID = "egresswatch-verify/1"


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
