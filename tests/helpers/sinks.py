"""Build real Decision values for the sink tests (metrics, alerts, report)."""

from __future__ import annotations

import time
import uuid

from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    Finding,
    FindingKind,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Mode,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Service,
    ServiceMatch,
    Transport,
    Verdict,
)

DEEPSEEK = Service(
    id="deepseek",
    name="DeepSeek API",
    operator="Hangzhou DeepSeek Artificial Intelligence Co., Ltd.",
    operator_country="CN",
    category="chat-api",
    domains=("api.deepseek.com",),
)
OPENAI = Service(
    id="openai",
    name="OpenAI API",
    operator="OpenAI, L.L.C.",
    operator_country="US",
    category="chat-api",
    domains=("api.openai.com",),
)


def decision(
    *,
    service: Service | None = DEEPSEEK,
    kind: MatchKind = MatchKind.OFFICIAL,
    host: str = "api.deepseek.com",
    country: str | None = "CN",
    action: Action = Action.ALLOW,
    mode: Mode = Mode.ENFORCE,
    rule: str = "default",
    payload_types: tuple[PayloadType, ...] = (PayloadType.CHAT_PROMPT,),
    findings: tuple[Finding, ...] = (),
    client: str = "10.1.2.3",
    client_app: str | None = "python-httpx/0.27",
    dst_addr: str = "203.0.113.7",
    path: str = "/v1/chat/completions?key=s3cret",
    sensor: Sensor = Sensor.PROXY,
    flow_id: str | None = None,
    elapsed: float = 0.0004,
    at: float | None = None,
    bytes_out: int = 0,
) -> Decision:
    """One decision with the given facts; everything else plausible."""
    obs = Observation(
        sensor=sensor,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr=dst_addr,
        dst_port=443,
        time=time.time() if at is None else at,
        flow_id=flow_id or uuid.uuid4().hex,
        client_addr=client,
        client_app=client_app,
        sni=host,
        http_host=host,
        method="POST",
        path=path,
        bytes_out=bytes_out,
    )
    match = ServiceMatch(service, kind, host, host) if service is not None else None
    assessment = Assessment(
        observation=obs,
        host=host,
        geo=GeoAnswer(country=country, source=GeoSource.MAXMIND if country else GeoSource.NONE),
        service=match,
        payload_types=payload_types,
        findings=findings,
    )
    reason = f"{rule}: {action} for {host}"
    return Decision(assessment, Verdict(action, rule, reason, mode), elapsed=elapsed)


def email_finding() -> Finding:
    return Finding(FindingKind.EMAIL, "j***@example.com", "body")


def new_id() -> str:
    return uuid.uuid4().hex
