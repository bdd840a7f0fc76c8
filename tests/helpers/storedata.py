"""Realistic decisions for the store's tests and bench (built on the real model types)."""

from __future__ import annotations

import random
import time

from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    Finding,
    FindingKind,
    FlowClosed,
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
    Stage,
    Transport,
    Verdict,
)

SERVICES = [
    Service("openai", "OpenAI API", "OpenAI, L.L.C.", "US", "chat-api", ("api.openai.com",)),
    Service(
        "deepseek", "DeepSeek API", "Hangzhou DeepSeek", "CN", "chat-api", ("api.deepseek.com",)
    ),
    Service("mistral", "Mistral AI", "Mistral AI SAS", "FR", "chat-api", ("api.mistral.ai",)),
    Service("hf", "Hugging Face Hub", "Hugging Face, Inc.", "US", "model-hub", ("huggingface.co",)),
]
COUNTRIES = ["US", "CN", "FR", "DE", "SG", None]
TYPES = [
    (PayloadType.CHAT_PROMPT,),
    (PayloadType.TELEMETRY,),
    (PayloadType.CHAT_PROMPT, PayloadType.FILE_UPLOAD),
    (PayloadType.MODEL_DOWNLOAD,),
    (PayloadType.TLS_OPAQUE,),
    (),
]
VERDICTS = [
    Verdict(Action.ALLOW, "allow-eu", "operator and address in approved countries", Mode.ENFORCE),
    Verdict(Action.ALERT, "alert-telemetry", "telemetry to a US operator", Mode.ENFORCE),
    Verdict(Action.BLOCK, "block-cn", "operator's legal home CN is not approved", Mode.ENFORCE),
    Verdict(Action.BLOCK, "block-cn", "operator's legal home CN is not approved", Mode.MONITOR),
]


def make_decision(
    i: int,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
    sensor: Sensor = Sensor.PROXY,
    flow_id: str | None = None,
    ts: float | None = None,
    findings: int | None = None,
    path: str | None = None,
    country: str | None = "",
    service: int | None = None,
    verdict: int | None = None,
    client: str | None = None,
    decision_id: str | None = None,
) -> Decision:
    """Decision number ``i``: id ``d%08d``, deterministic given ``i`` and ``rng``."""
    rng = rng or random.Random(i)
    now = time.time() if now is None else now
    svc = SERVICES[service if service is not None else i % len(SERVICES)]
    ctry = country if country != "" else COUNTRIES[i % len(COUNTRIES)]
    v = VERDICTS[verdict if verdict is not None else i % len(VERDICTS)]
    nfind = findings if findings is not None else (1 if i % 7 == 0 else 0)
    obs = Observation(
        sensor=sensor,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr=f"203.0.113.{i % 250 + 1}",
        dst_port=443,
        time=ts if ts is not None else now - rng.random() * 3600,
        stage=Stage.REQUEST,
        flow_id=flow_id or f"f{i:08d}",
        client_addr=client or f"192.0.2.{i % 20 + 1}",
        client_port=40000 + i % 20000,
        client_app="python-httpx/0.27",
        sni=svc.domains[0],
        http_host=svc.domains[0],
        method="POST",
        path=path if path is not None else "/v1/chat/completions?api-key=sk-secret&stream=true",
        bytes_out=1000 + i % 5000,
        bytes_in=200 + i % 900,
    )
    finds = tuple(Finding(FindingKind.EMAIL, "j***@example.com", "body") for _ in range(nfind))
    assessment = Assessment(
        observation=obs,
        host=svc.domains[0],
        geo=GeoAnswer(
            ctry, GeoSource.MAXMIND if ctry else GeoSource.NONE, 64500 + i % 10, "AS-DOC"
        ),
        service=ServiceMatch(svc, MatchKind.OFFICIAL, svc.domains[0], svc.domains[0]),
        payload_types=TYPES[i % len(TYPES)],
        findings=finds,
        flags=("lookalike",) if i % 11 == 0 else (),
    )
    return Decision(assessment=assessment, verdict=v, id=decision_id or f"d{i:08d}", elapsed=0.0002)


def make_close(d: Decision, bytes_out: int = 12345, bytes_in: int = 678) -> FlowClosed:
    """The close of a decision's flow with given totals."""
    o = d.observation
    return FlowClosed(o.flow_id, o.sensor, o.time + 1.5, bytes_out, bytes_in, 1.5, "200")
