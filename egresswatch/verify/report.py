"""From the gateway's records to one :class:`Destination` per target, and what allowed it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from egresswatch.verify.net import is_link_address
from egresswatch.verify.profiles import Profile, host_matches

#: payload types that say nothing about what was sent
_OPAQUE = frozenset({"tls-opaque", "dns"})


_PROTO_RANK = {"https": 5, "http": 4, "websocket": 4, "tls": 3, "quic": 3, "raw": 2, "dns": 1}


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
