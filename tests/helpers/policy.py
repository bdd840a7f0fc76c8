"""Builders for policy tests: Assessment objects made directly from model.py."""

from __future__ import annotations

from egresswatch.model import (
    Assessment,
    Finding,
    FindingKind,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Service,
    ServiceMatch,
    Transport,
)

DEEPSEEK = Service(
    id="deepseek",
    name="DeepSeek API",
    operator="Hangzhou DeepSeek Artificial Intelligence Fundamental Technology Research Co., Ltd.",
    operator_country="CN",
    category="chat-api",
    domains=("deepseek.com",),
    brands=("deepseek",),
)
OPENAI = Service(
    id="openai",
    name="OpenAI API",
    operator="OpenAI",
    operator_country="US",
    category="chat-api",
    domains=("openai.com",),
    brands=("openai",),
)
MISTRAL = Service(
    id="mistral",
    name="Mistral AI",
    operator="Mistral AI",
    operator_country="FR",
    category="chat-api",
    domains=("mistral.ai",),
)
HF = Service(
    id="huggingface",
    name="Hugging Face Hub",
    operator="Hugging Face",
    operator_country="US",
    category="model-hub",
    domains=("huggingface.co",),
)
SENTRY = Service(
    id="sentry",
    name="Sentry",
    operator="Functional Software, Inc.",
    operator_country="US",
    category="telemetry",
    domains=("sentry.io",),
)
SERVICES = {s.id: s for s in (DEEPSEEK, OPENAI, MISTRAL, HF, SENTRY)}

EMAIL = Finding(FindingKind.EMAIL, "j***@example.com", "body")
PHONE = Finding(FindingKind.PHONE, "+1 ***-***-0123", "body")
API_KEY = Finding(FindingKind.API_KEY, "sk-...abcd", "header:authorization", "openai")
PRIVATE_KEY = Finding(FindingKind.PRIVATE_KEY, "-----BEGIN ... KEY-----", "body")
FINDINGS = {f.kind.value: f for f in (EMAIL, PHONE, API_KEY, PRIVATE_KEY)}


def assess(
    host: str | None = "api.deepseek.com",
    addr: str | None = "203.0.113.10",
    country: str | None = "CN",
    *,
    service: str | None = None,
    lookalike: bool = False,
    payload: tuple[str, ...] = ("chat-prompt",),
    findings: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    port: int | None = 443,
    local: bool = False,
    sensor: Sensor = Sensor.PROXY,
    client_addr: str | None = "127.0.0.1",
    client_app: str | None = None,
    client_process: str | None = None,
) -> Assessment:
    """One assessment. ``service`` is an id from SERVICES; ``lookalike`` makes it a lookalike."""
    obs = Observation(
        sensor=sensor,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr=addr,
        dst_port=port,
        http_host=host,
        client_addr=client_addr,
        client_app=client_app,
        client_process=client_process,
    )
    if local:
        geo = GeoAnswer(None, GeoSource.LOCAL)
    elif country is None:
        geo = GeoAnswer(None, GeoSource.NONE)
    else:
        geo = GeoAnswer(country, GeoSource.MAXMIND)
    match = None
    if service is not None:
        svc = SERVICES[service]
        kind = MatchKind.LOOKALIKE if lookalike else MatchKind.OFFICIAL
        matched = svc.brands[0] if lookalike and svc.brands else svc.domains[0]
        match = ServiceMatch(svc, kind, host or "", matched)
        if lookalike and "lookalike" not in flags:
            flags = (*flags, "lookalike")
    return Assessment(
        observation=obs,
        host=host,
        geo=geo,
        service=match,
        payload_types=tuple(PayloadType(p) for p in payload),
        findings=tuple(FINDINGS[f] for f in findings),
        flags=flags,
    )
