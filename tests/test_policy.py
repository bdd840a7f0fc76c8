"""Policy: loading, validation with file/line/field, and decisions on built assessments."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import phonenumbers
import pytest
from helpers.policy import assess
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.errors import ConfigError
from egresswatch.inspector import Inspector
from egresswatch.model import (
    Action,
    Assessment,
    MatchKind,
    Mode,
    Observation,
    Protocol,
    Sensor,
    Transport,
)
from egresswatch.policy import (
    BUILTIN_RULES,
    COUNTRY_GROUPS,
    EXTRA_COUNTRIES,
    ISO_COUNTRIES,
    MATCHERS,
    Policy,
    Rule,
)
from egresswatch.ports import PolicyLike

DATA = Path(__file__).resolve().parent.parent / "egresswatch" / "data"

# A policy that exercises every matcher. Line numbers matter to nothing here.
RULES_POLICY = """
mode = "enforce"
approved = ["EU", "US"]

[unknown]
address = "block"
operator = "alert"

[[rules]]
name = "lab-ollama"
action = "allow"
host = ["*.lab.internal"]
port = [11434]

[[rules]]
name = "local-secrets"
action = "alert"
local = true
finding = ["private-key"]

[[rules]]
name = "cn-operators"
action = "block"
operator_country = ["CN"]

[[rules]]
name = "lookalikes"
action = "block"
lookalike = true

[[rules]]
name = "hf-downloads"
action = "allow"
service = ["huggingface"]
payload = ["model-download"]

[[rules]]
name = "telemetry"
action = "block"
category = ["telemetry"]

[[rules]]
name = "sniffer-eea"
action = "alert"
sensor = ["sniffer"]
port = ["443", "8443-8444"]
address_country = ["EEA"]

[[rules]]
name = "ci-runner"
action = "allow"
client = ["10.9.*", "ci-bot/*"]

[[rules]]
name = "fronting"
action = "block"
flag = ["name-mismatch"]

[[rules]]
name = "secrets"
action = "alert"
finding = ["api-key", "private-key"]

[[rules]]
name = "unknown-op-in-us"
action = "allow"
operator_country = "ZZ"
address_country = "US"
host = "*.unknown-op.example"

[[rules]]
name = "bare-doc-net"
action = "block"
host = ["192.0.2.*"]
"""

_RULES = Policy.from_text(RULES_POLICY, source="rules.toml")

# (id, assessment, expected action, expected rule)
RULE_CASES = [
    ("deepseek-cn", assess(service="deepseek"), "block", "cn-operators"),
    ("deepseek-behind-us-cdn", assess(service="deepseek", country="US"), "block", "cn-operators"),
    (
        "openai-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-de-address",
        assess("api.openai.com", "192.0.2.1", "DE", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-cn-address",
        assess("api.openai.com", "203.0.113.9", "CN", service="openai"),
        "block",
        "jurisdiction",
    ),
    (
        "mistral-fr",
        assess("api.mistral.ai", "192.0.2.3", "FR", service="mistral"),
        "allow",
        "default",
    ),
    (
        "openai-unknown-address",
        assess("api.openai.com", "198.51.100.1", None, service="openai"),
        "block",
        "unknown-address",
    ),
    ("uncatalogued-us", assess("example.org", "198.51.100.7", "US"), "alert", "unknown-operator"),
    (
        "uncatalogued-unknown-address",
        assess("example.org", "198.51.100.7", None),
        "block",
        "unknown-address",
    ),
    (
        "lookalike-match",
        assess("deepseek.chat", "198.51.100.8", "US", service="deepseek", lookalike=True),
        "block",
        "lookalikes",
    ),
    (
        "lookalike-flag-only",
        assess("deepseek.chat", "198.51.100.8", "US", flags=("lookalike",)),
        "block",
        "lookalikes",
    ),
    (
        "hf-download",
        assess(
            "huggingface.co",
            "198.51.100.9",
            "US",
            service="huggingface",
            payload=("model-download",),
        ),
        "allow",
        "hf-downloads",
    ),
    # an allow rule is final: it is the user's explicit exception
    (
        "hf-download-cn-cdn",
        assess(
            "huggingface.co",
            "203.0.113.4",
            "CN",
            service="huggingface",
            payload=("model-download",),
        ),
        "allow",
        "hf-downloads",
    ),
    (
        "hf-chat",
        assess("huggingface.co", "198.51.100.9", "US", service="huggingface"),
        "allow",
        "default",
    ),
    (
        "hf-lookalike-not-service",
        assess(
            "huggingface.co.evil.example",
            "198.51.100.9",
            "US",
            service="huggingface",
            lookalike=True,
            payload=("model-download",),
        ),
        "block",
        "lookalikes",
    ),
    (
        "sentry-telemetry",
        assess(
            "o1.ingest.sentry.io", "198.51.100.2", "US", service="sentry", payload=("telemetry",)
        ),
        "block",
        "telemetry",
    ),
    (
        "lab-ollama",
        assess("gpu1.lab.internal", "198.51.100.5", None, port=11434),
        "allow",
        "lab-ollama",
    ),
    (
        "lab-host-upper-dot",
        assess("GPU1.Lab.Internal.", "198.51.100.5", None, port=11434),
        "allow",
        "lab-ollama",
    ),
    (
        "lab-wrong-port",
        assess("gpu1.lab.internal", "198.51.100.5", None, port=8080),
        "block",
        "unknown-address",
    ),
    (
        "lab-no-port",
        assess("gpu1.lab.internal", "198.51.100.5", None, port=None),
        "block",
        "unknown-address",
    ),
    ("local", assess("localhost", "127.0.0.1", None, local=True), "allow", "local"),
    (
        "local-private-key",
        assess("localhost", "127.0.0.1", None, local=True, findings=("private-key",)),
        "alert",
        "local-secrets",
    ),
    # a `local = true` rule never sees egress: the next matching rule does
    (
        "egress-private-key",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", findings=("private-key",)),
        "alert",
        "secrets",
    ),
    (
        "local-cn-operator-not-egress",
        assess(service="deepseek", addr="10.0.0.5", local=True),
        "allow",
        "local",
    ),
    (
        "sniffer-de-443",
        assess("api.openai.com", "192.0.2.1", "DE", service="openai", sensor=Sensor.SNIFFER),
        "alert",
        "sniffer-eea",
    ),
    (
        "sniffer-range",
        assess(
            "api.openai.com", "192.0.2.1", "DE", service="openai", sensor=Sensor.SNIFFER, port=8444
        ),
        "alert",
        "sniffer-eea",
    ),
    # NO is in the EEA (the rule matches) but not in the EU: the alert does not exempt it
    (
        "sniffer-no-escalates",
        assess("api.openai.com", "192.0.2.1", "NO", service="openai", sensor=Sensor.SNIFFER),
        "block",
        "jurisdiction",
    ),
    (
        "sniffer-out-of-range",
        assess(
            "api.openai.com", "192.0.2.1", "DE", service="openai", sensor=Sensor.SNIFFER, port=8445
        ),
        "allow",
        "default",
    ),
    (
        "sniffer-us-not-eea",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", sensor=Sensor.SNIFFER),
        "allow",
        "default",
    ),
    (
        "proxy-not-sniffer",
        assess("api.openai.com", "192.0.2.1", "DE", service="openai"),
        "allow",
        "default",
    ),
    (
        "ci-app",
        assess("pypi.org", "198.51.100.7", "US", client_app="ci-bot/1.2"),
        "allow",
        "ci-runner",
    ),
    (
        "ci-app-case",
        assess("pypi.org", "198.51.100.7", "US", client_app="CI-Bot/2"),
        "allow",
        "ci-runner",
    ),
    (
        "ci-addr",
        assess("pypi.org", "198.51.100.7", "US", client_addr="10.9.0.7"),
        "allow",
        "ci-runner",
    ),
    (
        "ci-process",
        assess("pypi.org", "198.51.100.7", "US", client_addr=None, client_process="ci-bot/worker"),
        "allow",
        "ci-runner",
    ),
    (
        "not-ci",
        assess("pypi.org", "198.51.100.7", "US", client_addr="10.8.0.7", client_app="curl/8"),
        "alert",
        "unknown-operator",
    ),
    (
        "fronting",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", flags=("name-mismatch",)),
        "block",
        "fronting",
    ),
    (
        "api-key-to-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", findings=("api-key",)),
        "alert",
        "secrets",
    ),
    (
        "api-key-to-cn-address",
        assess("api.openai.com", "203.0.113.1", "CN", service="openai", findings=("api-key",)),
        "block",
        "jurisdiction",
    ),
    (
        "api-key-unknown-address",
        assess("example.org", "198.51.100.1", None, findings=("api-key", "email")),
        "block",
        "unknown-address",
    ),
    (
        "api-key-uncatalogued-us",
        assess("example.org", "198.51.100.1", "US", findings=("api-key",)),
        "alert",
        "secrets",
    ),
    (
        "zz-operator-us",
        assess("x.unknown-op.example", "198.51.100.3", "US"),
        "allow",
        "unknown-op-in-us",
    ),
    (
        "zz-operator-wrong-country",
        assess("x.unknown-op.example", "192.0.2.3", "DE"),
        "alert",
        "unknown-operator",
    ),
    (
        "zz-official-operator-not-zz",
        assess("x.unknown-op.example", "198.51.100.3", "US", service="openai"),
        "allow",
        "default",
    ),
    ("bare-address", assess(None, "192.0.2.50", "DE"), "block", "bare-doc-net"),
    ("bare-address-other", assess(None, "198.51.100.50", "US"), "alert", "unknown-operator"),
    ("no-address-no-host", assess(None, None, None), "block", "unknown-address"),
]


def _ids(cases: list[tuple[object, ...]]) -> list[str]:
    return [str(c[0]) for c in cases]


@pytest.mark.parametrize(("case", "a", "action", "rule"), RULE_CASES, ids=_ids(RULE_CASES))
def test_rules_policy(case: str, a: object, action: str, rule: str) -> None:
    verdict = _RULES.decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule), verdict.reason
    assert verdict.mode is Mode.ENFORCE


@pytest.mark.parametrize(("case", "a", "action", "rule"), RULE_CASES, ids=_ids(RULE_CASES))
def test_monitor_mode_same_answer_recorded_as_would_block(
    case: str, a: object, action: str, rule: str
) -> None:
    verdict = _RULES.with_mode(Mode.MONITOR).decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule)
    assert not verdict.enforced
    assert verdict.label == ("would-block" if action == "block" else action)


REQUIRE_CASES = [
    # require = ["operator"]: the address country does not matter
    (
        "operator",
        assess("api.openai.com", "203.0.113.1", "CN", service="openai"),
        "allow",
        "default",
    ),
    (
        "operator",
        assess("api.openai.com", "203.0.113.1", None, service="openai"),
        "allow",
        "default",
    ),
    ("operator", assess(service="deepseek", country="US"), "block", "jurisdiction"),
    ("operator", assess("example.org", "198.51.100.1", "US"), "alert", "unknown-operator"),
    # require = ["address"]: the operator does not matter
    ("address", assess(service="deepseek", country="US"), "allow", "default"),
    ("address", assess(service="deepseek", country="CN"), "block", "jurisdiction"),
    ("address", assess("example.org", "198.51.100.1", "US"), "allow", "default"),
    ("address", assess("example.org", "198.51.100.1", None), "block", "unknown-address"),
    # require = []: only rules and the default decide
    ("", assess(service="deepseek"), "allow", "default"),
]


@pytest.mark.parametrize(("require", "a", "action", "rule"), REQUIRE_CASES)
def test_require(require: str, a: object, action: str, rule: str) -> None:
    listed = f'["{require}"]' if require else "[]"
    policy = Policy.from_text(
        f'mode = "enforce"\napproved = ["EU", "US"]\nrequire = {listed}\n'
        '[unknown]\naddress = "block"\noperator = "alert"\n'
    )
    verdict = policy.decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule)


EXAMPLE_CASES = [
    ("deepseek", assess(service="deepseek"), "block", "block-cn-operators"),
    ("deepseek-us-cdn", assess(service="deepseek", country="US"), "block", "block-cn-operators"),
    (
        "openai-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai"),
        "allow",
        "default",
    ),
    (
        "mistral-fr",
        assess("api.mistral.ai", "192.0.2.3", "FR", service="mistral"),
        "allow",
        "default",
    ),
    (
        "openai-jp-address",
        assess("api.openai.com", "198.51.100.1", "JP", service="openai"),
        "block",
        "jurisdiction",
    ),
    (
        "lookalike",
        assess("deepseek.chat", "198.51.100.8", "US", service="deepseek", lookalike=True),
        "block",
        "block-lookalikes",
    ),
    (
        "api-key-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", findings=("api-key",)),
        "alert",
        "alert-secrets",
    ),
    (
        "private-key-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", findings=("private-key",)),
        "alert",
        "alert-secrets",
    ),
    (
        "credential-payload",
        assess("api.openai.com", "198.51.100.1", "US", service="openai", payload=("credential",)),
        "alert",
        "alert-credentials",
    ),
    (
        "secret-to-jp-blocked",
        assess("api.openai.com", "198.51.100.1", "JP", service="openai", findings=("api-key",)),
        "block",
        "jurisdiction",
    ),
    (
        "local-ollama",
        assess("localhost", "127.0.0.1", None, local=True, port=11434),
        "allow",
        "local",
    ),
    (
        "lab-model-server",
        assess("gpu.lab.internal", "192.0.2.77", None, port=11434),
        "allow",
        "local-model-servers",
    ),
    (
        "lab-vllm-range",
        assess("gpu.lab.internal", "192.0.2.77", None, port=8081),
        "allow",
        "local-model-servers",
    ),
    (
        "unknown-address",
        assess("api.openai.com", "198.51.100.1", None, service="openai"),
        "block",
        "unknown-address",
    ),
    ("uncatalogued-us", assess("pypi.org", "198.51.100.1", "US"), "alert", "unknown-operator"),
]


@pytest.mark.parametrize(("case", "a", "action", "rule"), EXAMPLE_CASES, ids=_ids(EXAMPLE_CASES))
def test_example_policy(case: str, a: object, action: str, rule: str) -> None:
    verdict = Policy.example().decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule), verdict.reason
    assert verdict.mode is Mode.ENFORCE


DEFAULT_CASES = [
    ("deepseek", assess(service="deepseek"), "block", "jurisdiction"),
    ("deepseek-us-cdn", assess(service="deepseek", country="US"), "block", "jurisdiction"),
    (
        "openai-us",
        assess("api.openai.com", "198.51.100.1", "US", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-gb",
        assess("api.openai.com", "198.51.100.1", "GB", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-ch",
        assess("api.openai.com", "198.51.100.1", "CH", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-no",
        assess("api.openai.com", "198.51.100.1", "NO", service="openai"),
        "allow",
        "default",
    ),
    (
        "openai-ru-address",
        assess("api.openai.com", "198.51.100.1", "RU", service="openai"),
        "block",
        "jurisdiction",
    ),
    ("uncatalogued", assess("pypi.org", "198.51.100.1", "US"), "allow", "unknown-operator"),
    ("unknown-address", assess("pypi.org", "198.51.100.1", None), "alert", "unknown-address"),
    (
        "lookalike",
        assess("deepseek.chat", "198.51.100.8", "US", service="deepseek", lookalike=True),
        "block",
        "lookalike-service",
    ),
    ("local", assess("localhost", "127.0.0.1", None, local=True), "allow", "local"),
]


@pytest.mark.parametrize(("case", "a", "action", "rule"), DEFAULT_CASES, ids=_ids(DEFAULT_CASES))
def test_default_policy(case: str, a: object, action: str, rule: str) -> None:
    verdict = Policy.default().decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule), verdict.reason
    assert verdict.mode is Mode.MONITOR
    assert not verdict.enforced


# ------------------------------------------------------------------ reasons


def test_reason_names_service_operator_countries_payload_and_redacted_findings() -> None:
    policy = Policy.from_text('mode = "enforce"\napproved = ["US", "EU"]\n')
    a = assess(service="deepseek", findings=("email", "phone"))
    verdict = policy.decide(a)
    assert verdict.action is Action.BLOCK and verdict.enforced
    assert verdict.rule == "jurisdiction"
    assert verdict.reason == (
        "DeepSeek API (operator Hangzhou DeepSeek Artificial Intelligence Fundamental Technology "
        "Research Co., Ltd., CN) is outside the approved jurisdictions (US, EU): chat-prompt "
        "carrying email j***@example.com, phone +1 ***-***-0123 to 203.0.113.10 (CN)"
    )
    assert "\n" not in verdict.reason


def test_reason_says_when_only_the_address_is_outside() -> None:
    policy = Policy.from_text('approved = ["EU", "US"]\n')
    a = assess("api.openai.com", "203.0.113.9", "CN", service="openai", payload=())
    reason = policy.decide(a).reason
    assert reason.startswith("the address of OpenAI API (operator OpenAI, US) is outside")
    assert reason.endswith("traffic to 203.0.113.9 (CN)")


@pytest.mark.parametrize(
    ("a", "fragments"),
    [
        (
            assess("deepseek.chat", "198.51.100.8", "US", service="deepseek", lookalike=True),
            [
                "deepseek.chat (a lookalike of DeepSeek API)",
                "not operated by Hangzhou DeepSeek",
                "to 198.51.100.8 (US)",
            ],
        ),
        (
            assess("example.org", "198.51.100.7", "US"),
            ["example.org (not in the catalog) has no known operator", "(US)"],
        ),
        (
            assess("example.org", "198.51.100.7", None),
            ["address country of example.org", "is unknown", "(country unknown)"],
        ),
        (
            assess("localhost", "127.0.0.1", None, local=True),
            ["localhost is a local destination, not egress", "127.0.0.1 (local)"],
        ),
        (assess(None, None, None), ["an unnamed destination", "to an unknown address"]),
        (
            assess(
                "api.openai.com",
                "198.51.100.1",
                "US",
                service="openai",
                findings=("email", "phone", "api-key", "private-key", "email", "phone"),
            ),
            [
                "OpenAI API (operator OpenAI, US) is inside the approved jurisdictions (EU, US)",
                "sk-...abcd",
                "and 2 more",
            ],
        ),
    ],
)
def test_reason_fragments(a: object, fragments: list[str]) -> None:
    policy = Policy.from_text('approved = ["EU", "US"]\n[unknown]\noperator = "alert"\n')
    reason = policy.decide(a).reason  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in reason, reason


def test_rule_reason_and_escalation_keep_both_names() -> None:
    a = assess("api.openai.com", "203.0.113.1", "CN", service="openai", findings=("api-key",))
    verdict = Policy.example().decide(a)
    assert verdict.rule == "jurisdiction"
    assert "also matched alert rule 'alert-secrets'" in verdict.reason
    cn = Policy.example().decide(assess(service="deepseek"))
    assert "operators under PRC law are not approved" in cn.reason
    assert "(rule 'block-cn-operators')" in cn.reason


# ------------------------------------------------------------------ shipped files and API


def test_shipped_files_load_from_disk_and_package() -> None:
    default = Policy.load(DATA / "policy-default.toml")
    example = Policy.load(DATA / "policy-example.toml")
    assert default.mode is Mode.MONITOR and example.mode is Mode.ENFORCE
    assert default.summary()["rules"] == Policy.default().summary()["rules"]
    assert Policy.example().summary()["approved"] == ["EU", "US"]
    assert Policy.example().source.endswith("policy-example.toml")
    assert Policy.load(DATA / "policy-example.toml").source == str(DATA / "policy-example.toml")


def test_policy_satisfies_the_port() -> None:
    policy: PolicyLike = Policy.default()
    assert policy.mode is Mode.MONITOR
    assert policy.decide(assess()).mode is Mode.MONITOR


def test_with_mode() -> None:
    enforce = Policy.default().with_mode("enforce")
    assert enforce.mode is Mode.ENFORCE
    assert Policy.default().mode is Mode.MONITOR  # the original is unchanged
    verdict = enforce.decide(assess(service="deepseek"))
    assert verdict.enforced and verdict.label == "block"
    with pytest.raises(ConfigError, match="unknown mode 'strict'"):
        Policy.default().with_mode("strict")


def test_summary() -> None:
    s = Policy.from_text(
        'approved = ["eea", "US", "EU"]\nrequire = ["operator"]\n'
        '[groups]\nDACH = ["DE", "AT", "CH"]\n'
        '[[rules]]\nname = "r"\naction = "alert"\nport = [443, "8000-8001"]\n',
        source="s.toml",
    ).summary()
    assert s["source"] == "s.toml"
    assert s["mode"] == "monitor"  # a file without `mode` monitors
    assert s["approved"] == ["EEA", "US", "EU"]
    assert len(s["approved_countries"]) == 31
    assert s["require"] == ["operator"]
    assert s["unknown"] == {"address": "block", "operator": "block"}
    assert s["groups"] == {"DACH": ["AT", "CH", "DE"]}
    assert s["rules"] == [
        {"name": "r", "action": "alert", "line": 5, "match": {"port": [443, "8000-8001"]}}
    ]


def test_passthrough_hosts() -> None:
    p = Policy.from_text(
        'approved = []\npassthrough_hosts = ["*.Push.Apple.com", "pinned.example"]'
    )
    assert p.passthrough_hosts == ("*.push.apple.com", "pinned.example")
    assert p.is_passthrough("1-courier.push.apple.com")
    assert p.is_passthrough("PINNED.example.")
    assert not p.is_passthrough("push.apple.com.evil.example")
    assert not p.is_passthrough(None)


def test_user_groups_can_use_groups() -> None:
    p = Policy.from_text(
        'approved = ["HOME"]\n[groups]\nDACH = ["DE", "AT", "CH"]\nHOME = ["DACH", "EFTA", "GB"]\n'
    )
    assert p.approved_countries == {"DE", "AT", "CH", "IS", "LI", "NO", "GB"}


def test_country_tables() -> None:
    # phonenumbers' regions are ISO 3166 codes plus AC/TA (reserved) and XK, minus the
    # uninhabited territories without telephone plans.
    regions = set(phonenumbers.SUPPORTED_REGIONS) - {"AC", "TA", "XK"}
    assert regions | {"AQ", "BV", "GS", "HM", "PN", "TF", "UM"} == ISO_COUNTRIES
    assert len(ISO_COUNTRIES) == 249
    assert {"XK"} == EXTRA_COUNTRIES
    assert len(COUNTRY_GROUPS["EU"]) == 27
    assert COUNTRY_GROUPS["EEA"] == COUNTRY_GROUPS["EU"] | {"IS", "LI", "NO"}
    assert COUNTRY_GROUPS["EFTA"] == {"CH", "IS", "LI", "NO"}
    assert COUNTRY_GROUPS["EEA"] < COUNTRY_GROUPS["EU-ADEQUATE"]
    assert "US" not in COUNTRY_GROUPS["EU-ADEQUATE"]
    assert "GB" not in COUNTRY_GROUPS["EU"] and "GR" in COUNTRY_GROUPS["EU"]
    for group in COUNTRY_GROUPS.values():
        assert group <= ISO_COUNTRIES


# ------------------------------------------------------------------ errors


def _t(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# (id, text, line, field, fragment of the message)
ERROR_CASES = [
    ("toml-syntax", 'approved = ["EU"\nmode = "monitor"\n', 2, None, "not valid TOML"),
    ("toml-eof", "approved = [\n", 1, None, "at the end of the file"),
    (
        "unknown-top",
        'approved = ["EU"]\naproved = ["US"]\n',
        2,
        "aproved",
        "did you mean 'approved'",
    ),
    ("missing-approved", 'mode = "monitor"\n', None, "approved", "missing"),
    ("bad-mode", 'approved = []\n\nmode = "strict"\n', 3, "mode", "unknown mode 'strict'"),
    ("mode-type", "approved = []\nmode = 1\n", 2, "mode", "must be a string"),
    (
        "bad-country",
        'mode = "enforce"\napproved = ["EU", "XX"]\n',
        2,
        "approved",
        "'XX' is not an ISO 3166",
    ),
    ("uk-hint", 'approved = ["UK"]\n', 1, "approved", "the ISO 3166 code is 'GB'"),
    ("group-typo", 'approved = ["EEE"]\n', 1, "approved", "did you mean 'EEA'"),
    ("zz-approved", 'approved = ["ZZ"]\n', 1, "approved", "ZZ means unknown"),
    ("approved-type", "approved = [1, 2]\n", 1, "approved", "got an integer 1"),
    (
        "multiline-item",
        _t("""
        approved = [
          "EU",
          "US",
          "QQ",
        ]
        """),
        4,
        "approved",
        "'QQ'",
    ),
    (
        "require-bad",
        'approved = []\nrequire = ["adress"]\n',
        2,
        "require",
        "'adress' is not a jurisdiction",
    ),
    ("outside-bad", 'approved = []\noutside = "deny"\n', 2, "outside", "'deny' is spelled 'block'"),
    ("default-type", "approved = []\ndefault = true\n", 2, "default", "must be a string"),
    (
        "unknown-table-key",
        _t("""
        approved = []
        [unknown]
        address = "block"
        operatr = "alert"
        """),
        4,
        "unknown.operatr",
        "did you mean 'operator'",
    ),
    (
        "unknown-action",
        _t("""
        approved = []

        [unknown]
        operator = "alert"
        address = "ignore"
        """),
        5,
        "unknown.address",
        "unknown action 'ignore'",
    ),
    (
        "unknown-dotted",
        'approved = []\nunknown.address = "maybe"\n',
        2,
        "unknown.address",
        "unknown action 'maybe'",
    ),
    ("unknown-not-table", 'approved = []\nunknown = "block"\n', 2, "unknown", "must be a table"),
    ("group-lowercase", 'approved = []\n[groups]\nlab = ["DE"]\n', 3, "groups.lab", "upper-case"),
    ("group-builtin", 'approved = []\n[groups]\nEEA = ["DE"]\n', 3, "groups.EEA", "built-in"),
    (
        "group-member",
        'approved = []\n[groups]\nLAB = ["DE", "Germany"]\n',
        3,
        "groups.LAB",
        "'Germany'",
    ),
    (
        "passthrough-url",
        'approved = []\npassthrough_hosts = ["https://x.example/"]\n',
        2,
        "passthrough_hosts",
        "no scheme",
    ),
    ("rules-not-tables", 'approved = []\nrules = ["a"]\n', 2, "rules", "[[rules]]"),
    ("rules-single-table", 'approved = []\n\n[rules]\nname = "a"\n', 3, "rules", "[[rules]]"),
    (
        "rule-unknown-field",
        _t("""
        approved = []

        [[rules]]
        name = "one"
        action = "block"

        [[rules]]
        name = "two"
        action = "alert"
        services = ["deepseek"]
        """),
        10,
        "rules[2].services",
        "did you mean 'service'",
    ),
    (
        "rule-missing-name",
        _t("""
        approved = []
        [[rules]]
        name = "one"
        action = "block"
        [[rules]]
        action = "block"
        """),
        5,
        "rules[2].name",
        "missing",
    ),
    (
        "rule-missing-action",
        _t("""
        approved = []
        [[rules]]   # first
        name = "one"
        """),
        2,
        "rules[1].action",
        "missing",
    ),
    (
        "rule-duplicate",
        _t("""
        approved = []
        [[rules]]
        name = "same"
        action = "block"
        [[rules]]
        action = "alert"
        name = "same"
        """),
        7,
        "rules[2].name",
        "already used by rule 1",
    ),
    (
        "rule-builtin-name",
        'approved = []\n[[rules]]\nname = "default"\naction = "allow"\n',
        3,
        "rules[1].name",
        "built-in verdict",
    ),
    (
        "rule-bad-name",
        'approved = []\n[[rules]]\nname = "has space"\naction = "allow"\n',
        3,
        "rules[1].name",
        "a rule name is",
    ),
    (
        "rule-bad-action",
        'approved = []\n[[rules]]\nname = "a"\naction = "drop"\n',
        4,
        "rules[1].action",
        "unknown action 'drop'",
    ),
    (
        "rule-payload",
        _t("""
        approved = []
        [[rules]]
        name = "a"
        action = "block"
        payload = [
            "telemetry",
            "chat",
        ]
        """),
        7,
        "rules[1].payload",
        "did you mean 'chat-prompt'",
    ),
    (
        "rule-finding",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nfinding = "ssn"\n',
        5,
        "rules[1].finding",
        "'ssn' is not a finding kind",
    ),
    (
        "rule-sensor",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nsensor = ["pcap"]\n',
        5,
        "rules[1].sensor",
        "'pcap' is not a sensor",
    ),
    (
        "rule-country",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\noperator_country = ["China"]\n',
        5,
        "rules[1].operator_country",
        "'China'",
    ),
    (
        "rule-port-zero",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nport = [0]\n',
        5,
        "rules[1].port",
        "not a port",
    ),
    (
        "rule-port-range",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nport = ["9000-8000"]\n',
        5,
        "rules[1].port",
        "not a port",
    ),
    (
        "rule-port-big",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nport = 70000\n',
        5,
        "rules[1].port",
        "not a port",
    ),
    (
        "rule-port-bool",
        'approved = []\n[[rules]]\nname = "a"\naction = "alert"\nport = true\n',
        5,
        "rules[1].port",
        "not a port",
    ),
    (
        "rule-lookalike-type",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\nlookalike = "yes"\n',
        5,
        "rules[1].lookalike",
        "true or false",
    ),
    (
        "rule-empty-list",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\nhost = []\n',
        5,
        "rules[1].host",
        "empty list matches nothing",
    ),
    (
        "rule-service-id",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\nservice = ["DeepSeek API"]\n',
        5,
        "rules[1].service",
        "not a catalog service id",
    ),
    (
        "rule-host-space",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\nhost = ["a b"]\n',
        5,
        "rules[1].host",
        "not a host pattern",
    ),
    (
        "rule-reason-type",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\nreason = 3\n',
        5,
        "rules[1].reason",
        "non-empty string",
    ),
    (
        "rule-quoted-key",
        'approved = []\n[[rules]]\nname = "a"\naction = "block"\n"payload" = ["x"]\n',
        5,
        "rules[1].payload",
        "'x' is not a payload type",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "field", "fragment"), ERROR_CASES, ids=_ids(ERROR_CASES)
)
def test_errors_name_file_line_field(
    case: str, text: str, line: int | None, field: str | None, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    e = info.value
    assert (e.path, e.line, e.field) == (str(path), line, field), str(e)
    assert fragment in str(e)
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert str(e).startswith(prefix)
    assert e.exit_code == 3


def test_from_text_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^<string>:1: approved: "):
        Policy.from_text('approved = "XX"')


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda p: None, "no such policy file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b'approved = ["EU"]\n# caf\xe9\n'), "not UTF-8"),
    ],
    ids=["missing", "directory", "latin1"],
)
def test_unreadable_files(setup: object, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    setup(path)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=fragment) as info:
        Policy.load(path)
    assert info.value.path == str(path)
    if fragment == "not UTF-8":
        assert info.value.line == 2


def test_every_matcher_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    for key in MATCHERS:
        assert f"`{key}`" in doc, key
    for name in BUILTIN_RULES:
        assert f"`{name}`" in doc, name


# ------------------------------------------------------------------ properties

_countries = st.sampled_from([None, "CN", "US", "DE", "JP", "RU", "NO", "FR"])
_assessments = st.builds(
    assess,
    host=st.sampled_from(
        [
            None,
            "api.deepseek.com",
            "api.openai.com",
            "x.lab.internal",
            "GPU.Lab.Internal.",
            "a.b",
            "x.unknown-op.example",
            "localhost",
            "1-courier.push.apple.com",
        ]
    ),
    addr=st.sampled_from([None, "203.0.113.1", "198.51.100.2", "192.0.2.7", "2001:db8::1"]),
    country=_countries,
    service=st.sampled_from([None, "deepseek", "openai", "huggingface", "sentry"]),
    lookalike=st.booleans(),
    payload=st.lists(
        st.sampled_from(["chat-prompt", "telemetry", "model-download", "credential"]),
        max_size=3,
    ).map(tuple),
    findings=st.lists(
        st.sampled_from(["email", "phone", "api-key", "private-key"]), max_size=6
    ).map(tuple),
    flags=st.lists(st.sampled_from(["name-mismatch", "ech", "lookalike"]), max_size=2).map(tuple),
    port=st.sampled_from([None, 443, 1234, 8000, 8080, 8081, 8082, 11434, 8444]),
    client_addr=st.sampled_from([None, "127.0.0.1", "10.9.0.7"]),
    client_app=st.sampled_from([None, "CI-Bot/2", "curl/8", "OpenAI/Python 1.40"]),
    client_process=st.sampled_from([None, "ci-bot/worker", "python3"]),
    local=st.booleans(),
    sensor=st.sampled_from(list(Sensor)),
)


@settings(max_examples=300, deadline=None)
@given(a=_assessments)
def test_any_assessment_gets_one_sentence_verdict(a: object) -> None:
    for policy in (_RULES, Policy.example(), Policy.default()):
        verdict = policy.decide(a)  # type: ignore[arg-type]
        names = {r.name for r in policy.rules} | BUILTIN_RULES
        assert verdict.rule in names
        assert verdict.mode is policy.mode
        assert "\n" not in verdict.reason and verdict.reason
        addr = a.observation.dst_addr  # type: ignore[attr-defined]
        if addr:
            assert addr in verdict.reason
        # the mode never changes the answer, only whether it bites
        other = policy.with_mode(
            Mode.MONITOR if policy.mode is Mode.ENFORCE else Mode.ENFORCE
        ).decide(a)  # type: ignore[arg-type]
        assert (other.action, other.rule, other.reason) == (
            verdict.action,
            verdict.rule,
            verdict.reason,
        )


@pytest.mark.parametrize(
    ("text", "a", "action", "rule"),
    [
        # outside / default / unknown settings change the built-in answers
        (
            'approved = ["EU"]\noutside = "alert"\n',
            assess(service="deepseek"),
            "alert",
            "jurisdiction",
        ),
        ('approved = ["CN"]\ndefault = "alert"\n', assess(service="deepseek"), "alert", "default"),
        # without [unknown], unknown is blocked
        (
            'approved = ["US"]\n',
            assess("example.org", "198.51.100.1", "US"),
            "block",
            "unknown-operator",
        ),
        (
            'approved = ["US"]\n',
            assess("api.openai.com", "198.51.100.1", None, service="openai"),
            "block",
            "unknown-address",
        ),
        # unknown operator and outside address: the stricter wins, the tie goes to jurisdiction
        (
            'approved = ["US"]\n[unknown]\noperator = "block"\n',
            assess("example.org", "203.0.113.1", "CN"),
            "block",
            "jurisdiction",
        ),
        (
            'approved = ["US"]\noutside = "alert"\n[unknown]\noperator = "block"\n',
            assess("example.org", "203.0.113.1", "CN"),
            "block",
            "unknown-operator",
        ),
        # an alert rule on a flow the checks allow keeps the rule's name
        (
            'approved = ["US"]\n[[rules]]\nname = "watch"\naction = "alert"\n'
            'host = "*.openai.com"\n',
            assess("api.openai.com", "198.51.100.1", "US", service="openai"),
            "alert",
            "watch",
        ),
        # a catch-all rule (no matchers) decides everything that is egress
        (
            'approved = []\n[[rules]]\nname = "all"\naction = "allow"\n',
            assess(service="deepseek"),
            "allow",
            "all",
        ),
        (
            'approved = []\n[[rules]]\nname = "all"\naction = "block"\n',
            assess("localhost", "127.0.0.1", None, local=True),
            "allow",
            "local",
        ),
        (
            'approved = []\n[[rules]]\nname = "eg"\naction = "allow"\nlocal = false\n',
            assess(service="deepseek"),
            "allow",
            "eg",
        ),
    ],
)
def test_settings_change_builtin_answers(text: str, a: object, action: str, rule: str) -> None:
    verdict = Policy.from_text(text).decide(a)  # type: ignore[arg-type]
    assert (verdict.action.value, verdict.rule) == (action, rule), verdict.reason


def test_shipped_policies_are_parsed_once() -> None:
    assert Policy.default() is Policy.default()
    assert Policy.example() is Policy.example()


def test_unknown_references_name_the_line_of_each_item() -> None:
    text = _t("""
        approved = ["EU"]
        [[rules]]
        name = "a"
        action = "block"
        service = [
          "deepseek-api",
          "deepsek-api",
        ]
        [[rules]]
        name = "b"
        action = "alert"
        category = "telemetri"
        """)
    policy = Policy.from_text(text, source="p.toml")
    problems = policy.unknown_references(["deepseek-api", "openai-api"], ["telemetry", "chat-api"])
    assert [(e.path, e.line, e.field) for e in problems] == [
        ("p.toml", 7, "rules[1].service"),
        ("p.toml", 12, "rules[2].category"),
    ]
    assert "did you mean 'deepseek-api'" in str(problems[0])
    assert "did you mean 'telemetry'" in str(problems[1])
    assert policy.unknown_references(["deepseek-api", "deepsek-api"], ["telemetri"]) == []


def test_shipped_policies_reference_only_catalogued_names() -> None:
    from egresswatch.catalog import CATEGORIES, Catalog

    ids = [s.id for s in Catalog.load().services]
    for policy in (Policy.default(), Policy.example()):
        assert policy.unknown_references(ids, CATEGORIES) == []


def _naive_matches(rule: Rule, a: Assessment) -> bool:
    """An independent, obviously-correct reading of the matchers (docs/policy.md)."""
    import fnmatch

    m = a.service
    official = m.service if m is not None and m.kind is MatchKind.OFFICIAL else None
    obs = a.observation
    host = (a.host or obs.dst_addr or "").lower().rstrip(".")
    tests = {
        "service": lambda: official is not None and official.id in rule.service,
        "category": lambda: official is not None and official.category in rule.category,
        "operator_country": lambda: (
            (official.operator_country if official else "ZZ") in rule.operator_country
        ),
        "address_country": lambda: (a.geo.country or "ZZ") in rule.address_country,
        "payload": lambda: any(p in rule.payload for p in a.payload_types),
        "finding": lambda: any(f.kind in rule.finding for f in a.findings),
        "flag": lambda: any(f in rule.flag for f in a.flags),
        "sensor": lambda: obs.sensor in rule.sensor,
        "port": lambda: (
            obs.dst_port is not None and any(lo <= obs.dst_port <= hi for lo, hi in rule.port)
        ),
        "lookalike": lambda: (
            rule.lookalike
            == ((m is not None and m.kind is MatchKind.LOOKALIKE) or "lookalike" in a.flags)
        ),
        "host": lambda: any(fnmatch.fnmatchcase(host, p) for p in rule.host.patterns),
        "client": lambda: any(
            v is not None and fnmatch.fnmatchcase(v.lower(), p)
            for v in (obs.client_addr, obs.client_app, obs.client_process)
            for p in rule.client.patterns
        ),
    }
    return all(test() for key, test in tests.items() if getattr(rule, key) is not None)


@settings(max_examples=400, deadline=None)
@given(a=_assessments)
def test_compiled_rules_agree_with_a_naive_reading(a: Assessment) -> None:
    for policy in (_RULES, Policy.example(), Policy.default()):
        for rules, chain in (
            (policy._egress_rules, policy._egress_first),
            (policy._local_rules, policy._local_first),
        ):
            expected = next((i for i, r in enumerate(rules) if _naive_matches(r, a)), -1)
            got = chain(a) if chain is not None else -1
            assert got == expected, (policy.source, rules[max(got, expected)].name)
            for rule in rules:
                assert rule.matches(a) == _naive_matches(rule, a)


_BAD_VALUES = {
    "payload": ('"chat"', "chat"),
    "finding": ('"ssn"', "ssn"),
    "sensor": ('"pcap"', "pcap"),
    "address_country": ('"XX"', "XX"),
    "port": ("0", "0"),
}


@settings(max_examples=150, deadline=None)
@given(
    rules=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_error_line_is_exact_wherever_the_mistake_is(rules: int, data: st.DataObject) -> None:
    """Build a file line by line, put one bad value somewhere, expect exactly that line."""
    bad_rule = data.draw(st.integers(min_value=0, max_value=rules - 1), label="bad rule")
    key = data.draw(st.sampled_from(sorted(_BAD_VALUES)), label="field")
    multiline = data.draw(st.booleans(), label="multi-line array")
    lines = ["# policy", 'mode = "enforce"', 'approved = ["EU"]', ""]
    expected = 0
    for n in range(rules):
        if data.draw(st.booleans(), label="comment"):
            lines.append(f"# rule {n}")
        lines += ["[[rules]]", f'name = "r{n}"', 'action = "block"']
        good = {
            "payload": '"telemetry"',
            "finding": '"email"',
            "sensor": '"proxy"',
            "address_country": '"DE"',
            "port": "10",  # contains the bad 0: items are matched as whole tokens
        }[key]
        value = _BAD_VALUES[key][0] if n == bad_rule else good
        if multiline:
            lines += [f"{key} = [", f"  {good},", f"  {value},", "]"]
            if n == bad_rule:
                expected = len(lines) - 1
        else:
            lines.append(f"{key} = [{good}, {value}]")
            if n == bad_rule:
                expected = len(lines)
        if data.draw(st.booleans(), label="blank"):
            lines.append("")
    with pytest.raises(ConfigError) as info:
        Policy.from_text("\n".join(lines) + "\n", source="gen.toml")
    assert info.value.line == expected, "\n".join(lines)
    assert info.value.field == f"rules[{bad_rule + 1}].{key}"
    assert _BAD_VALUES[key][1] in str(info.value)


def test_country_list_agrees_with_the_catalogs() -> None:
    from egresswatch import catalog

    assert catalog.ISO_COUNTRIES == ISO_COUNTRIES


def test_policy_package_imports_no_framework() -> None:
    """tests/test_layering.py lists policy.py; the package's modules are checked here too."""
    import ast

    forbidden = {
        "mitmproxy",
        "scapy",
        "sqlalchemy",
        "prometheus_client",
        "click",
        "socket",
        "alembic",
    }
    package = Path(__file__).resolve().parent.parent / "egresswatch" / "policy"
    files = sorted(package.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "loader.py", "rules.py", "countries.py"}
    for path in files:
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        assert not roots & forbidden, f"{path.name} imports {sorted(roots & forbidden)}"


# ------------------------------------------------------------------ the real pipeline


def _request(
    host: str,
    addr: str,
    path: str = "/v1/chat/completions",
    *,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    port: int = 443,
) -> Observation:
    return Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr=addr,
        dst_port=port,
        http_host=host,
        sni=host,
        method="POST",
        path=path,
        headers=(("host", host), ("content-type", "application/json"), *headers),
        body=body,
        client_addr="127.0.0.1",
    )


_CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Mail me at jane.doe@example.com"}]}
).encode()
_KEY = (("authorization", "Bearer sk-proj-" + "a1B2c3D4" * 6),)

PIPELINE_CASES = [
    (
        "deepseek-cn",
        _request("api.deepseek.com", "203.0.113.10", "/chat/completions", body=_CHAT),
        "block",
        "block-cn-operators",
    ),
    (
        "deepseek-behind-us-cdn",
        _request("api.deepseek.com", "198.51.100.10", "/chat/completions", body=_CHAT),
        "block",
        "block-cn-operators",
    ),
    ("openai-us", _request("api.openai.com", "198.51.100.10", body=_CHAT), "allow", "default"),
    (
        "openai-us-with-key",
        _request("api.openai.com", "198.51.100.10", body=_CHAT, headers=_KEY),
        "alert",
        "alert-secrets",
    ),
    (
        "openai-cn-address",
        _request("api.openai.com", "2001:db8:1::10", body=_CHAT),
        "block",
        "jurisdiction",
    ),
    ("mistral-de", _request("api.mistral.ai", "192.0.2.10", body=_CHAT), "allow", "default"),
    (
        "lookalike",
        _request("deepseek.chat", "198.51.100.10", "/api/chat", body=_CHAT),
        "block",
        "block-lookalikes",
    ),
    (
        "uncatalogued",
        _request("pypi.org", "198.51.100.10", "/simple/"),
        "alert",
        "unknown-operator",
    ),
    (
        "unknown-address",
        _request("api.openai.com", "2001:db8:9::1", body=_CHAT),
        "block",
        "unknown-address",
    ),
    (
        "local-ollama",
        _request("localhost", "127.0.0.1", "/api/chat", body=_CHAT, port=11434),
        "allow",
        "local",
    ),
]


@pytest.fixture(scope="module")
def lab_inspector(tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    """The real inspector: a real lab GeoIP database, the shipped catalog and classifier."""
    from helpers.geoip import lab_chain

    from egresswatch.catalog import Catalog

    geo = lab_chain(tmp_path_factory.mktemp("geo"), registry=False)
    return Inspector(geo, Catalog.load(), Policy.example())


@pytest.mark.parametrize(
    ("case", "obs", "action", "rule"), PIPELINE_CASES, ids=_ids(PIPELINE_CASES)
)
def test_example_policy_in_the_real_pipeline(
    lab_inspector: Inspector, case: str, obs: Observation, action: str, rule: str
) -> None:
    decision = lab_inspector.inspect(obs)
    verdict = decision.verdict
    assert (verdict.action.value, verdict.rule) == (action, rule), verdict.reason
    assert verdict.enforced is (action == "block")
    assert "jane.doe@example.com" not in verdict.reason  # redacted forms only
    if obs.body == _CHAT and action != "allow" and rule != "local":
        assert "email" in verdict.reason


_MATCHER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "service": st.sampled_from(['"deepseek"', '"openai"', '["huggingface", "sentry"]']),
    "category": st.sampled_from(['"chat-api"', '["telemetry", "model-hub"]']),
    "operator_country": st.sampled_from(['"CN"', '["US", "ZZ"]', '"EU"', '["EEA", "JP"]']),
    "address_country": st.sampled_from(['"CN"', '["US", "ZZ"]', '"EU"', '["NO"]']),
    "payload": st.sampled_from(['"chat-prompt"', '["telemetry", "credential"]']),
    "finding": st.sampled_from(['"email"', '["api-key", "private-key"]']),
    "flag": st.sampled_from(['"ech"', '["name-mismatch", "lookalike"]']),
    "client": st.sampled_from(['"ci-bot/*"', '["10.9.*", "*python*"]', '"127.0.0.1"']),
    "host": st.sampled_from(
        [
            '"*.openai.com"',
            '["api.deepseek.com", "*.internal"]',
            '"*lab*"',
            '"a.b"',
            '["*.com", "192.0.2.*", "x?.lab.internal"]',
            '"*"',
            '"*example"',
        ]
    ),
    "port": st.sampled_from(["443", '[1234, "8000-8081"]', '"11434"']),
    "sensor": st.sampled_from(['"proxy"', '["sniffer", "verify"]']),
    "lookalike": st.sampled_from(["true", "false"]),
    "local": st.sampled_from(["true", "false"]),
}


@st.composite
def _random_policy(draw: st.DrawFn) -> str:
    lines = ['approved = ["EU", "US"]']
    for n in range(draw(st.integers(min_value=1, max_value=8))):
        lines += ["[[rules]]", f'name = "r{n}"', 'action = "block"']
        keys = draw(st.lists(st.sampled_from(sorted(_MATCHER_VALUES)), max_size=4, unique=True))
        lines += [f"{key} = {draw(_MATCHER_VALUES[key])}" for key in keys]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(text=_random_policy(), a=_assessments)
def test_random_policies_compile_to_the_naive_reading(text: str, a: Assessment) -> None:
    policy = Policy.from_text(text)
    local = a.geo.is_local
    rules = policy._local_rules if local else policy._egress_rules
    chain = policy._local_first if local else policy._egress_first
    expected = next((i for i, r in enumerate(rules) if _naive_matches(r, a)), -1)
    assert (chain(a) if chain is not None else -1) == expected, text
    verdict = policy.decide(a)
    if expected >= 0:
        assert verdict.rule == rules[expected].name
    else:
        assert verdict.rule in BUILTIN_RULES


def test_bom_and_crlf_files_load(tmp_path: Path) -> None:
    path = tmp_path / "windows.toml"
    path.write_bytes(
        b'\xef\xbb\xbfmode = "enforce"\r\napproved = ["EU"]\r\n\r\n[[rules]]\r\n'
        b'name = "a"\r\naction = "block"\r\npayload = "chat"\r\n'
    )
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    assert (info.value.line, info.value.field) == (7, "rules[1].payload")
    path.write_bytes(path.read_bytes().replace(b'"chat"', b'"chat-prompt"'))
    assert Policy.load(path).mode is Mode.ENFORCE


def test_the_whole_file_in_the_docs_is_valid() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    block = doc.split("## A whole file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    policy = Policy.from_text(block, source="docs/policy.md")
    assert policy.mode is Mode.ENFORCE
    assert [r.name for r in policy.rules] == ["block-cn-operators"]
    assert policy.groups == {"DACH": {"DE", "AT", "CH"}}
