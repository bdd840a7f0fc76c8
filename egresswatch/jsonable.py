"""Plain-JSON forms of decisions, for ``--json`` outputs, alerts and reports.

Only redacted evidence appears here: findings are already redacted by the
classifier, bodies are never included, and query strings are cut from paths
unless the caller asks otherwise.
"""

from __future__ import annotations

from typing import Any

from egresswatch.classify.redact import redact_path
from egresswatch.model import Decision, GeoAnswer, ServiceMatch

__all__ = ["decision_to_dict", "geo_to_dict", "redact_path", "service_to_dict"]


def geo_to_dict(geo: GeoAnswer) -> dict[str, Any]:
    return {
        "country": geo.country,
        "source": str(geo.source),
        "asn": geo.asn,
        "org": geo.org,
        "label": geo.label,
    }


def service_to_dict(match: ServiceMatch | None) -> dict[str, Any] | None:
    if match is None:
        return None
    s = match.service
    return {
        "id": s.id,
        "name": s.name,
        "match": str(match.kind),
        "matched": match.matched,
        "operator": s.operator,
        "operator_country": s.operator_country,
        "contracting_entity": s.contracting_entity,
        "contracting_country": s.contracting_country,
        "residency": s.residency,
        "category": s.category,
        "unverified": list(s.unverified),
    }


def decision_to_dict(decision: Decision) -> dict[str, Any]:
    """A JSON-ready dict of one decision (stable keys; documented in README, 'JSON output')."""
    a = decision.assessment
    o = a.observation
    v = decision.verdict
    return {
        "id": decision.id,
        "flow_id": o.flow_id,
        "time": o.time,
        "sensor": str(o.sensor),
        "stage": str(o.stage),
        "client": {
            "address": o.client_addr,
            "port": o.client_port,
            "app": o.client_app,
            "pid": o.client_pid,
            "process": o.client_process,
        },
        "destination": {
            "address": o.dst_addr,
            "port": o.dst_port,
            "transport": str(o.transport),
            "protocol": str(o.protocol),
            "host": a.host,
            "names": {"sni": o.sni, "http_host": o.http_host, "dns": o.dns_name},
            "geo": geo_to_dict(a.geo),
        },
        "request": {"method": o.method, "path": redact_path(o.path)},
        "service": service_to_dict(a.service),
        "operator_country": a.operator_country,
        "payload_types": [str(t) for t in a.payload_types],
        "findings": [
            {"kind": str(f.kind), "value": f.redacted, "where": f.where, "detail": f.detail}
            for f in a.findings
        ],
        "flags": list(a.flags),
        "verdict": {
            "action": str(v.action),
            "label": v.label,
            "enforced": v.enforced,
            "mode": str(v.mode),
            "rule": v.rule,
            "reason": v.reason,
        },
        "bytes": {"out": o.bytes_out, "in": o.bytes_in},
    }
