"""The gateway's records: one JSON line per judged attempt, and the verdicts it hands back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from egresswatch.model import (
    Action,
    Decision,
    FlowClosed,
    Mode,
    Observation,
    Stage,
    Verdict,
)
from egresswatch.verify.owners import NetnsOwners
from egresswatch.verify.pool import NamePool

#: how many leading bytes of a raw stream are kept (hex), enough to tell the protocol
FIRST_BYTES = 16


#: records kept per run; later attempts are counted by nobody (the report says so)
MAX_RECORDS = 100_000
RULE = "verify"
REASON = "egresswatch verify answers every attempt locally"


def record_of(decision: Decision, *, first_bytes: bytes | None = None) -> dict[str, Any]:
    """One judged attempt as plain JSON: names, service, payload types, redacted findings."""
    a = decision.assessment
    o = a.observation
    svc = a.service.service if a.service is not None and a.service.official else None
    return {
        "time": o.time,
        "sensor": str(o.sensor),
        "stage": str(o.stage),
        "flow_id": o.flow_id,
        "transport": str(o.transport),
        "protocol": str(o.protocol),
        "dst_addr": o.dst_addr,
        "dst_port": o.dst_port,
        "client_port": o.client_port,
        "host": a.host,
        "sni": o.sni,
        "http_host": o.http_host,
        "dns_name": o.dns_name,
        "method": o.method,
        "path": _redact_path(o.path),
        "pid": o.client_pid,
        "process": o.client_process,
        "service": None
        if svc is None
        else {
            "id": svc.id,
            "name": svc.name,
            "operator": svc.operator,
            "operator_country": svc.operator_country,
        },
        "lookalike": a.service is not None and not a.service.official,
        "address_country": a.geo.country,
        "payload_types": [str(t) for t in a.payload_types],
        "findings": [
            {"kind": str(f.kind), "redacted": f.redacted, "where": f.where, "detail": f.detail}
            for f in a.findings
        ],
        "flags": list(a.flags),
        "policy": {
            "action": str(decision.verdict.action),
            "label": decision.verdict.label,
            "rule": decision.verdict.rule,
            "reason": decision.verdict.reason,
        },
        "first_bytes": first_bytes[:FIRST_BYTES].hex() if first_bytes else None,
    }


def _redact_path(path: str | None) -> str | None:
    from egresswatch.jsonable import redact_path

    return redact_path(path)


class Recorder:
    """Wraps the inspector: names from the pool, owners from /proc, one JSON line per attempt.

    The Decision handed back to the sensor is always a block in enforce mode, except
    at the ClientHello, where letting the handshake finish is what lets the proxy see
    the request (which is then answered 451).
    """

    def __init__(
        self,
        inspect: Callable[[Observation], Decision],
        out_path: Path,
        pool: NamePool,
        owners: NetnsOwners,
        *,
        skip_clients: frozenset[str] = frozenset(),
        permit: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self._inspect = inspect
        #: ``--online``: attempts this accepts are let through (forwarded for real)
        self.permit = permit
        self.pool = pool
        self.owners = owners
        self.skip_clients = skip_clients
        self._out = out_path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        #: flow_id -> first bytes, for raw flows (set by RawRecorder before judging)
        self.first_bytes: dict[str, bytes] = {}
        self.count = 0

    def enrich(self, obs: Observation) -> Observation:
        changes: dict[str, Any] = {}
        if obs.dns_name is None and obs.dst_addr is not None:
            name = self.pool.name(obs.dst_addr)
            if name:
                changes["dns_name"] = name
        if obs.client_pid is None and obs.client_port:
            owner = self.owners.owner(str(obs.transport), obs.client_port)
            if owner is not None:
                changes["client_pid"] = owner.pid
                changes["client_process"] = owner.name
        return replace(obs, **changes) if changes else obs

    def inspect(self, obs: Observation) -> Decision:
        obs = self.enrich(obs)
        decision = self._inspect(obs)
        rec = record_of(decision, first_bytes=self.first_bytes.pop(obs.flow_id, None))
        if obs.client_addr not in self.skip_clients:
            self.write(rec)
        if obs.stage is Stage.CLIENTHELLO:
            verdict = Verdict(Action.ALLOW, RULE, "intercepted to read the request", Mode.MONITOR)
        elif self.permit is not None and self.permit(rec):
            verdict = Verdict(Action.ALLOW, RULE, "allowed: forwarded (--online)", Mode.MONITOR)
        else:
            verdict = Verdict(Action.BLOCK, RULE, REASON, Mode.ENFORCE)
        return Decision(assessment=decision.assessment, verdict=verdict, id=decision.id)

    def write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, sort_keys=True)
        with self._lock:
            self.count += 1
            if self.count > MAX_RECORDS:  # bounded: a runaway loop must not fill the disk
                if self.count == MAX_RECORDS + 1:
                    self._out.write(json.dumps({"truncated": MAX_RECORDS}) + "\n")
                    self._out.flush()
                return
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.close()


class NullSink:
    """The sensors' sink: records are written by :class:`Recorder` already."""

    def record(self, decision: Decision) -> None:
        pass

    def flow_closed(self, event: FlowClosed) -> None:
        pass

    def close(self) -> None:
        pass
