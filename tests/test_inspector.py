"""The inspector with fakes built on the ports: enrichment, name handling, stricter-of-names."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from egresswatch.inspector import Inspector
from egresswatch.model import (
    Action,
    Assessment,
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


def _service(sid: str, country: str, category: str = "chat-api") -> Service:
    return Service(
        id=sid,
        name=sid.title(),
        operator=f"{sid} Inc.",
        operator_country=country,
        category=category,
        domains=(f"{sid}.example",),
    )


DEEPSEEK = _service("deepseek", "CN")
OPENAI = _service("openai", "US")


class FakeGeo:
    def __init__(self, table: dict[str, GeoAnswer]) -> None:
        self.table = table
        self.asked: list[str] = []

    def lookup(self, addr: str) -> GeoAnswer:
        self.asked.append(addr)
        return self.table.get(addr, GeoAnswer(None, GeoSource.NONE))


class FakeCatalog:
    def __init__(self, table: dict[str, tuple[Service, MatchKind]]) -> None:
        self.table = table

    def match(self, host: str) -> ServiceMatch | None:
        hit = self.table.get(host)
        if hit is None:
            return None
        return ServiceMatch(service=hit[0], kind=hit[1], host=host, matched=host)


class CnBlockPolicy:
    """Blocks official matches operated from CN and lookalikes; alerts on findings."""

    mode = Mode.ENFORCE

    def decide(self, a: Assessment) -> Verdict:
        if a.operator_country == "CN":
            return Verdict(Action.BLOCK, "no-cn", f"{a.host} is CN", self.mode)
        if "lookalike" in a.flags:
            return Verdict(Action.BLOCK, "lookalike", f"{a.host} looks alike", self.mode)
        if a.findings:
            return Verdict(Action.ALERT, "findings", "sensitive", self.mode)
        return Verdict(Action.ALLOW, "default", "fine", self.mode)


@dataclass(frozen=True)
class FakeClassification:
    payload_types: tuple[PayloadType, ...]
    findings: tuple[Finding, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass
class FakeClassifier:
    result: FakeClassification = field(
        default_factory=lambda: FakeClassification((PayloadType.CHAT_PROMPT,))
    )
    categories: list[str | None] = field(default_factory=list)

    def __call__(self, obs: Observation, category: str | None) -> FakeClassification:
        self.categories.append(category)
        return self.result


def _obs(**kw: object) -> Observation:
    base: dict[str, object] = dict(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr="203.0.113.10",
        dst_port=443,
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def _inspector(classifier: FakeClassifier | None = None) -> tuple[Inspector, FakeGeo]:
    geo = FakeGeo({"203.0.113.10": GeoAnswer("CN", GeoSource.MAXMIND, asn=64500)})
    catalog = FakeCatalog(
        {
            "api.deepseek.com": (DEEPSEEK, MatchKind.OFFICIAL),
            "api.openai.com": (OPENAI, MatchKind.OFFICIAL),
            "deepseek.chat": (DEEPSEEK, MatchKind.LOOKALIKE),
        }
    )
    inspector = Inspector(
        geo,
        catalog,
        CnBlockPolicy(),
        classifier=classifier or FakeClassifier(),
        normalizer=lambda h: h.lower().rstrip(".") or None,
    )
    return inspector, geo


def test_enriches_with_geo_service_and_payload() -> None:
    classifier = FakeClassifier()
    inspector, geo = _inspector(classifier)
    d = inspector.inspect(_obs(http_host="API.DeepSeek.com."))
    assert geo.asked == ["203.0.113.10"]
    assert d.assessment.geo.country == "CN"
    assert d.assessment.host == "api.deepseek.com"
    assert d.assessment.service is not None and d.assessment.service.service.id == "deepseek"
    assert d.assessment.payload_types == (PayloadType.CHAT_PROMPT,)
    assert d.verdict.action is Action.BLOCK and d.verdict.rule == "no-cn"
    assert d.verdict.enforced
    assert classifier.categories == ["chat-api"]
    assert d.elapsed > 0


def test_no_address_means_unknown_geo_not_a_lookup() -> None:
    inspector, geo = _inspector()
    d = inspector.inspect(_obs(dst_addr=None, http_host="api.openai.com"))
    assert geo.asked == []
    assert d.assessment.geo.source is GeoSource.NONE
    assert d.verdict.action is Action.ALLOW


@pytest.mark.parametrize(
    ("sni", "host", "want_action", "want_host"),
    [
        # domain fronting: an approved SNI in front of a blocked Host, and the reverse
        ("api.openai.com", "api.deepseek.com", Action.BLOCK, "api.deepseek.com"),
        ("api.deepseek.com", "api.openai.com", Action.BLOCK, "api.deepseek.com"),
        ("api.openai.com", "unknown.example", Action.ALLOW, "unknown.example"),
    ],
)
def test_stricter_of_names_wins_and_is_flagged(
    sni: str, host: str, want_action: Action, want_host: str
) -> None:
    inspector, _ = _inspector()
    d = inspector.inspect(_obs(sni=sni, http_host=host))
    assert d.verdict.action is want_action
    assert d.assessment.host == want_host
    assert "name-mismatch" in d.assessment.flags


def test_same_service_under_two_names_is_not_a_mismatch() -> None:
    inspector, _ = _inspector()
    d = inspector.inspect(_obs(sni="api.openai.com", http_host="API.OPENAI.COM"))
    assert "name-mismatch" not in d.assessment.flags


def test_lookalike_and_ech_flags_and_no_category_hint_for_lookalikes() -> None:
    classifier = FakeClassifier()
    inspector, _ = _inspector(classifier)
    d = inspector.inspect(_obs(sni="deepseek.chat", ech=True, protocol=Protocol.TLS))
    assert {"lookalike", "ech"} <= set(d.assessment.flags)
    assert d.verdict.rule == "lookalike"
    assert classifier.categories == [None]


def test_classifier_flags_and_findings_reach_the_policy() -> None:
    finding = Finding(FindingKind.EMAIL, "j***@example.com", "body")
    classifier = FakeClassifier(
        FakeClassification((PayloadType.CHAT_PROMPT,), (finding,), ("body-truncated",))
    )
    inspector, _ = _inspector(classifier)
    d = inspector.inspect(_obs(dst_addr="198.51.100.20", http_host="api.openai.com"))
    assert d.assessment.findings == (finding,)
    assert "body-truncated" in d.assessment.flags
    assert d.verdict.action is Action.ALERT


def test_bare_address_without_names_is_judged() -> None:
    inspector, _ = _inspector()
    d = inspector.inspect(_obs(protocol=Protocol.RAW, dst_port=5432))
    assert d.assessment.host is None and d.assessment.service is None
    assert d.verdict.action is Action.ALLOW


def test_with_policy_swaps_only_the_policy() -> None:
    inspector, _ = _inspector()

    class AllowAll:
        mode = Mode.MONITOR

        def decide(self, a: Assessment) -> Verdict:
            return Verdict(Action.BLOCK, "all", "x", self.mode)

    other = inspector.with_policy(AllowAll())
    d = other.inspect(_obs(http_host="api.openai.com"))
    assert d.verdict.would_block and d.verdict.label == "would-block"
    assert other.geo is inspector.geo and other.catalog is inspector.catalog


def test_ids_are_unique_within_a_process_and_after_fork() -> None:
    import os

    from egresswatch.model import new_id

    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave without running pytest's atexit
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    parent_next = new_id()
    assert child_id[:20] != parent_next[:20]
    assert child_id not in ids
