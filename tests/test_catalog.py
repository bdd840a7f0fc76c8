"""Service catalog: host normalisation, official and lookalike matching, shipped data, user files.

The CLI (``egresswatch catalog ...``) is tested through the root command and the
installed console script at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import egresswatch_bin
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.catalog import (
    CATEGORIES,
    CUSTOMER_REGION,
    ISO_COUNTRIES,
    RESIDENCY_REGIONS,
    Catalog,
    api_path_match,
    normalize_host,
    parse_catalog,
    skeleton,
)
from egresswatch.cli import cli
from egresswatch.errors import ConfigError
from egresswatch.model import MatchKind, Service
from egresswatch.ports import ServiceLookup

SHIPPED = Path(__file__).resolve().parent.parent / "egresswatch" / "data" / "catalog.toml"


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load()


def idna(text: str) -> str:
    """The punycode form of a Unicode name, the way a resolver or browser sends it."""
    return text.encode("idna").decode("ascii")


# ------------------------------------------------------------ normalize_host


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("api.deepseek.com", "api.deepseek.com"),
        ("API.DeepSeek.COM", "api.deepseek.com"),
        ("api.deepseek.com.", "api.deepseek.com"),
        ("api.deepseek.com:443", "api.deepseek.com"),
        ("API.DEEPSEEK.COM.:8443", "api.deepseek.com"),
        ("  api.openai.com  ", "api.openai.com"),
        ("localhost", "localhost"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("192.0.2.7", "192.0.2.7"),
        ("192.0.2.7:443", "192.0.2.7"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("ОРЕNAI.com", idna("ореnai.com")),  # upper-case Cyrillic folds like ASCII
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        ".",
        "..",
        "a..b",
        ".example.com",
        "exa mple.com",
        "example.com/path",
        "https://example.com",
        "example.com:",
        "example.com:port",
        "example.com:70000",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[not-an-address]",
        "-leading.example",
        "trailing-.example",
        "a" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "com",
        "*.example.com",
        "exa\x00mple.com",
        "ex\u200bample\u3002\u3002com",
        None,
        12,
        b"example.com",
    ],
)
def test_normalize_host_garbage_is_none(raw: object) -> None:
    assert normalize_host(raw) is None  # type: ignore[arg-type]


@given(st.text(max_size=80))
@settings(max_examples=400, deadline=None)
def test_normalize_host_never_raises_and_is_idempotent(raw: str) -> None:
    host = normalize_host(raw)
    if host is not None:
        assert host.isascii() and host == host.lower() and not host.endswith(".")
        assert normalize_host(host) == host


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
@settings(max_examples=300, deadline=None)
def test_match_never_raises(raw: str) -> None:
    cat = _SHARED
    result = cat.match(raw)
    assert result is None or result.kind in (MatchKind.OFFICIAL, MatchKind.LOOKALIKE)


_SHARED = Catalog.load()


# ---------------------------------------------------------- official matches


@pytest.mark.parametrize(
    ("host", "service", "matched"),
    [
        ("api.deepseek.com", "deepseek-api", "api.deepseek.com"),
        ("API.DeepSeek.com.", "deepseek-api", "api.deepseek.com"),
        ("api.deepseek.com:443", "deepseek-api", "api.deepseek.com"),
        ("chat.deepseek.com", "deepseek-chat", "deepseek.com"),
        ("deepseek.com", "deepseek-chat", "deepseek.com"),
        ("cdn.static.deepseek.com", "deepseek-chat", "deepseek.com"),
        ("api.moonshot.cn", "moonshot-cn", "moonshot.cn"),
        ("api.moonshot.ai", "moonshot-intl", "moonshot.ai"),
        ("kimi.moonshot.cn", "moonshot-cn", "moonshot.cn"),
        ("www.kimi.com", "kimi-cn", "kimi.com"),
        ("open.bigmodel.cn", "zhipu-cn", "bigmodel.cn"),
        ("api.z.ai", "zai-intl", "z.ai"),
        ("dashscope.aliyuncs.com", "dashscope-cn", "dashscope.aliyuncs.com"),
        ("dashscope-intl.aliyuncs.com", "dashscope-intl", "dashscope-intl.aliyuncs.com"),
        ("chat.qwen.ai", "qwen-chat", "qwen.ai"),
        ("ark.cn-beijing.volces.com", "volcengine-ark", "ark.cn-beijing.volces.com"),
        ("open.volces.com", "volcengine", "volces.com"),
        ("api.minimax.chat", "minimax-cn", "minimax.chat"),
        ("api.minimax.io", "minimax-intl", "minimax.io"),
        ("spark-api-open.xf-yun.com", "iflytek-spark", "spark-api-open.xf-yun.com"),
        ("api.openai.com", "openai-api", "api.openai.com"),
        ("eu.api.openai.com", "openai-api-eu", "eu.api.openai.com"),
        ("mtls-eu.api.openai.com", "openai-api-eu", "mtls-eu.api.openai.com"),
        ("mtls.api.openai.com", "openai-api", "api.openai.com"),
        ("in.api.openai.com", "openai-api-in", "in.api.openai.com"),
        ("chatgpt.com", "chatgpt", "chatgpt.com"),
        ("chat.openai.com", "chatgpt", "openai.com"),
        ("files.oaiusercontent.com", "chatgpt", "oaiusercontent.com"),
        (
            "chatgpt-async-webps-prod-eastus-7.webpubsub.azure.com",
            "chatgpt",
            "chatgpt-async-webps-prod-*.webpubsub.azure.com",
        ),
        ("myres.openai.azure.com", "azure-openai", "*.openai.azure.com"),
        ("a.b.openai.azure.com", "azure-openai", "*.openai.azure.com"),
        ("api.anthropic.com", "anthropic-api", "api.anthropic.com"),
        ("claude.ai", "claude-app", "claude.ai"),
        ("generativelanguage.googleapis.com", "gemini-api", "generativelanguage.googleapis.com"),
        ("gemini.google.com", "gemini-app", "gemini.google.com"),
        ("europe-west4-aiplatform.googleapis.com", "vertex-ai", "*-aiplatform.googleapis.com"),
        ("aiplatform.googleapis.com", "vertex-ai", "aiplatform.googleapis.com"),
        (
            "bedrock-runtime.eu-central-1.amazonaws.com",
            "aws-bedrock",
            "bedrock-runtime.*.amazonaws.com",
        ),
        ("api.x.ai", "xai-api", "api.x.ai"),
        ("api.groq.com", "groq", "groq.com"),
        ("openrouter.ai", "openrouter", "openrouter.ai"),
        ("huggingface.co", "hf-hub", "huggingface.co"),
        ("HuggingFace.co:443", "hf-hub", "huggingface.co"),
        ("datasets-server.huggingface.co", "hf-hub", "huggingface.co"),
        ("router.huggingface.co", "hf-inference", "router.huggingface.co"),
        ("cdn-lfs.huggingface.co", "hf-cdn", "cdn-lfs*.huggingface.co"),
        ("cdn-lfs-us-1.huggingface.co", "hf-cdn", "cdn-lfs*.huggingface.co"),
        ("cas-server.xethub.hf.co", "hf-cdn", "xethub.hf.co"),
        ("hf.co", "hf-hub", "hf.co"),
        ("someone-demo.hf.space", "hf-spaces", "hf.space"),
        ("registry.ollama.ai", "ollama-registry", "registry.ollama.ai"),
        ("ollama.com", "ollama-com", "ollama.com"),
        ("gateway.ai.cloudflare.com", "cloudflare-ai-gateway", "gateway.ai.cloudflare.com"),
        ("api2.cursor.sh", "cursor", "cursor.sh"),
        ("api.githubcopilot.com", "github-copilot", "githubcopilot.com"),
        (
            "copilot-telemetry.githubusercontent.com",
            "github-copilot-telemetry",
            "copilot-telemetry.githubusercontent.com",
        ),
        ("stats.vllm.ai", "vllm-stats", "stats.vllm.ai"),
        ("api.gradio.app", "gradio-analytics", "api.gradio.app"),
        ("o33249.ingest.sentry.io", "sentry", "sentry.io"),
        ("o1.ingest.us.sentry.io", "sentry", "sentry.io"),
        ("o1.ingest.de.sentry.io", "sentry-eu", "ingest.de.sentry.io"),
        ("us.i.posthog.com", "posthog", "posthog.com"),
        ("eu.i.posthog.com", "posthog-eu", "eu.i.posthog.com"),
        ("api.segment.io", "segment", "segment.io"),
        ("browser-intake-datadoghq.com", "datadog", "browser-intake-datadoghq.com"),
        ("static.cloudflareinsights.com", "cloudflare-insights", "cloudflareinsights.com"),
        ("www.google-analytics.com", "google-analytics", "google-analytics.com"),
        ("telemetry.crewai.com", "crewai-telemetry", "telemetry.crewai.com"),
        ("cdn.usefathom.com", "fathom", "usefathom.com"),
        ("oaistatsig.com", "openai-telemetry", "oaistatsig.com"),
        ("qwenlm.github.io", "qwen-chat", "qwenlm.github.io"),  # under a private suffix
        (
            "oai.endpoints.kepler.ai.cloud.ovh.net",
            "ovhcloud-ai",
            "endpoints.kepler.ai.cloud.ovh.net",
        ),
        ("api.scaleway.ai", "scaleway-ai", "api.scaleway.ai"),
        ("queue.fal.run", "fal", "fal.run"),
    ],
)
def test_official(cat: Catalog, host: str, service: str, matched: str) -> None:
    found = cat.match(host)
    assert found is not None, host
    assert (found.service.id, found.kind, found.matched) == (service, MatchKind.OFFICIAL, matched)
    assert found.official
    assert found.host == normalize_host(host)


@pytest.mark.parametrize(
    "host",
    [
        # label boundaries: a catalog domain is never a bare string suffix
        "notdeepseek.com",
        "xdeepseek.com",
        "deepseek.com.evil.example",
        "deepseek.co",
        "api-deepseek.com",
        # a wildcard label needs a label to stand for
        "openai.azure.com",
        # a glob stays inside its label
        "cdn.huggingface.co.example.net",
        "bedrock-runtime.amazonaws.com",
        "s3.amazonaws.com",
        "cas-server.hf.co.example.org",
    ],
)
def test_not_official(cat: Catalog, host: str) -> None:
    found = cat.match(host)
    assert found is None or found.kind is MatchKind.LOOKALIKE


def test_most_specific_domain_wins() -> None:
    svc = [
        _svc("wide", ["example.com"]),
        _svc("api", ["api.example.com"]),
        _svc("regional", ["*.api.example.com"]),
        _svc("glob", ["eu-*.api.example.com"]),
    ]
    cat = Catalog(svc)
    assert _id(cat, "www.example.com") == "wide"
    assert _id(cat, "api.example.com") == "api"
    assert _id(cat, "us.api.example.com") == "regional"
    assert _id(cat, "eu-west.api.example.com") == "glob"  # glob beats bare '*'
    assert _id(cat, "x.eu-west.api.example.com") == "glob"  # subdomains of a match match
    assert _id(cat, "example.com.example.net") is None


def _svc(sid: str, domains: list[str], **kw: object) -> Service:
    return Service(
        id=sid,
        name=sid,
        operator="Op",
        operator_country="US",
        category="chat-api",
        domains=tuple(domains),
        **kw,  # type: ignore[arg-type]
    )


def _id(cat: Catalog, host: str) -> str | None:
    found = cat.match(host)
    return found.service.id if found is not None and found.official else None


def test_catalog_satisfies_service_lookup(cat: Catalog) -> None:
    lookup: ServiceLookup = cat
    found = lookup.match("api.deepseek.com")
    assert found is not None and found.service.operator_country == "CN"


def test_addresses_match_nothing(cat: Catalog) -> None:
    for host in ("192.0.2.1", "[2001:db8::1]:443", "203.0.113.9:443"):
        assert cat.match(host) is None


# ---------------------------------------------------------------- lookalikes

LOOKALIKES = [
    # (host, service id it imitates, what matched)
    ("deepseek.chat", "deepseek-chat", "deepseek"),
    ("deepseekagi.org", "deepseek-chat", "deepseek"),
    ("www.deepseek-r1.app", "deepseek-chat", "deepseek"),
    ("notdeepseek.com", "deepseek-chat", "deepseek"),
    ("DeepSeek.Chat.", "deepseek-chat", "deepseek"),
    ("deep-seek.net", "deepseek-chat", "deepseek"),
    ("deepseek.com.cn", "deepseek-chat", "deepseek"),
    ("deepseek-ai.github.io", "deepseek-chat", "deepseek"),  # a private suffix is its own owner
    ("deepseek.com.evil.example", "deepseek-chat", "deepseek.com"),
    ("api.deepseek.com.evil.example", "deepseek-chat", "deepseek.com"),
    ("api-openai-com.evil.example", "chatgpt", "openai.com"),
    ("kimi-k2.ai", "moonshot-cn", "kimik2"),
    ("kimik2.org", "moonshot-cn", "kimik2"),
    ("kimi.chat", "kimi-cn", "kimi"),
    ("kimi.ai.evil.example", "kimi-intl", "kimi.ai"),
    ("login-kimi-ai.evil.example", "kimi-intl", "kimi.ai"),  # "kimi" is a brand label
    ("together.ai.evil.example", "together", "together.ai"),  # with dots any 4+ face counts
    ("chat.com.evil.example", "chatgpt", "chat.com"),
    ("claude.io", "claude-app", "claude"),
    ("claude-ai.app", "claude-app", "claudeai"),
    ("chatgpt-free.net", "chatgpt", "chatgpt"),
    ("openai-proxy.example", "openai-api", "openai"),
    ("anthropic-api.xyz", "anthropic-api", "anthropic"),
    ("huggingface.io", "hf-hub", "huggingface"),
    ("hollama.app", "ollama-registry", "ollama"),
    ("0penai.com", "chatgpt", "openai.com"),  # digit 0 for o
    ("deepseek1.com", "deepseek-chat", "deepseek"),
    ("groq.net", "groq", "groq"),
    ("doubao-ai.net", "doubao", "doubao"),
    ("qwen-chat.org", "qwen-chat", "qwen"),
]


@pytest.mark.parametrize(("host", "service", "matched"), LOOKALIKES)
def test_lookalike(cat: Catalog, host: str, service: str, matched: str) -> None:
    found = cat.match(host)
    assert found is not None, host
    assert (found.service.id, found.kind, found.matched) == (service, MatchKind.LOOKALIKE, matched)
    assert not found.official


# Homographs built the way an attacker would register them: Unicode letters from
# another script that render like the ASCII ones, sent on the wire as punycode.
HOMOGRAPHS = [
    ("ореnai.com", "chatgpt", "openai.com"),  # Cyrillic о, р, е
    ("οpenai.com", "chatgpt", "openai.com"),  # Greek omicron
    ("dеepseek.com", "deepseek-chat", "deepseek.com"),  # Cyrillic е
    ("deepsеек.com", "deepseek-chat", "deepseek.com"),  # Cyrillic е, к
    ("ԁeepseek.com", "deepseek-chat", "deepseek.com"),  # Cyrillic komi de
    ("аnthropic.com", "claude-app", "anthropic.com"),  # Cyrillic а
    ("сlaude.ai", "claude-app", "claude.ai"),  # Cyrillic с
    ("huggіngface.co", "hf-hub", "huggingface.co"),  # Cyrillic і
    ("kímí.com", "kimi-cn", "kimi.com"),  # Latin with acute accents
    ("chаtgpt.com", "chatgpt", "chatgpt.com"),  # Cyrillic а
    ("ollаma.com", "ollama-com", "ollama.com"),  # Cyrillic а
]


@pytest.mark.parametrize(("unicode_name", "service", "matched"), HOMOGRAPHS)
def test_homograph_in_punycode(cat: Catalog, unicode_name: str, service: str, matched: str) -> None:
    wire = idna(unicode_name)
    assert wire.startswith("xn--") and wire != matched
    for spelling in (wire, unicode_name, "www." + wire, wire.upper() + "."):
        found = cat.match(spelling)
        assert found is not None, spelling
        assert (found.service.id, found.kind, found.matched) == (
            service,
            MatchKind.LOOKALIKE,
            matched,
        )
        assert found.host == normalize_host(spelling)


def test_homograph_brand_in_longer_name(cat: Catalog) -> None:
    # Cyrillic а inside "chatgpt" in a longer label: caught by the brand on the skeleton.
    found = cat.match(idna("free-chаtgpt.net"))
    assert found is not None and found.kind is MatchKind.LOOKALIKE
    assert (found.service.id, found.matched) == ("chatgpt", "chatgpt")


@pytest.mark.parametrize(
    "host",
    [
        "pypi.org",
        "files.pythonhosted.org",
        "github.com",
        "raw.githubusercontent.com",
        "example.com",
        "www.example.org",
        "gemini.com",  # a crypto exchange, not Google Gemini
        "exchange.gemini.com",
        "claude-monet.com",  # Claude is a given name: only the whole label counts
        "claudette.fr",
        "kimi-shop.de",  # Kimi is a given name too
        "kimiko.jp",
        "moonshot.com",  # an ordinary English word
        "mistral.com",
        "philanthropic.org",  # contains "anthropic"
        "misanthropic.net",
        "openaircinema.ch",  # contains "openai"
        "openair-festival.de",
        "stepfunctions-demo.com",  # contains "stepfun"
        "cursor.io",
        "together.com",
        "replicate.io",
        "x-ai.example.net",  # x.ai is too short a face to spot inside other names
        "work-together-ai.example.com",  # hyphenated ordinary words are no embedded face
        "support-chat-com.example.net",
        "z-ai.example.net",
        "stepfun.com",  # the operator's own registrable domain, not catalogued as a whole
        "www.baidu.com",
        "aliyuncs.com",
        "oss-cn-hangzhou.aliyuncs.com",
        "s3.amazonaws.com",
        "ollama.example.com",  # a self-hosted Ollama behind a company's name
        "deepseek.mycorp.example",  # same for DeepSeek: the brand in a subdomain is no claim
        "scaleway.com",  # providers without brands: their other domains stay unknown
        "cerebras.net",
        "localhost",
        "wpad",
        "xn--bcher-kva.example",
        "xn--broken--.example",
    ],
)
def test_clean_hosts_not_flagged(cat: Catalog, host: str) -> None:
    assert cat.match(host) is None, cat.match(host)


def test_skeleton_folds_confusables() -> None:
    assert skeleton(idna("ореnai.com")) == "openai.com"
    assert skeleton(idna("dеepsеек.com")) == "deepseek.com"
    assert skeleton("0penai.com") == "openai.com"
    assert skeleton("c1aude.ai") == "claude.ai"
    assert skeleton("xn--bcher-kva.example") == "bucher.example"
    assert skeleton("xn--99999999.example") == "xn--99999999.example"  # undecodable: kept


def test_lookalike_rules_are_configurable() -> None:
    svc = _svc("acme", ["acme-ai.com"], brands=("acmeai", "acme"))
    plain = Catalog([svc])
    assert plain.match("acmeai-login.net") is not None
    assert plain.match("acmestore.net") is not None  # a substring brand matches anywhere
    words = Catalog([svc], whole_label_brands={"acme"})
    assert words.match("acmestore.net") is None
    found = words.match("acme.net")
    assert found is not None and found.matched == "acme"
    ignoring = Catalog([svc], ignore_words={"acmeair"})
    assert ignoring.match("acmeairlines.example") is None
    assert ignoring.match("acmeai.example") is not None


# ----------------------------------------------------------------- API paths


@pytest.mark.parametrize(
    ("sid", "path", "expected"),
    [
        ("openai-api", "/v1/chat/completions", "/v1/chat/completions"),
        ("openai-api", "/v1/chat/completions?stream=true", "/v1/chat/completions"),
        ("openai-api", "/v1/files/file-abc/content", "/v1/files"),
        ("openai-api", "/v1/filesystem", None),  # prefixes end on a segment boundary
        ("openai-api", "/v1/audio/transcriptions", "/v1/audio/"),
        ("openai-api", "/v2/chat/completions", None),
        ("gemini-api", "/v1beta/models/gemini-2.5-pro:generateContent",
         "/v1beta/models/*:generateContent"),
        ("gemini-api", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
         "/v1beta/models/*:streamGenerateContent"),
        ("gemini-api", "/v1beta/cachedContents", "/v1beta/"),
        ("hf-hub", "/Qwen/Qwen3-8B/resolve/main/model.safetensors", "/*/*/resolve/"),
        ("hf-hub", "/gpt2/resolve/main/config.json", "/*/resolve/"),
        ("hf-hub", "/datasets/org/name/resolve/main/train.parquet", "/datasets/*/*/resolve/"),
        ("hf-hub", "/api/telemetry/https%3A/api.gradio.app/gradio-launched-telemetry",
         "/api/telemetry/"),
        ("ollama-com", "/api/experimental/model-recommendations",
         "/api/experimental/model-recommendations"),
        ("ollama-registry", "/v2/library/llama3/manifests/latest", "/v2/"),
        ("cloudflare-ai-gateway", "/v1/acct/gw/openai/chat/completions", "/v1/*/*/*"),
        ("cloudflare-ai-gateway", "/v1/acct", None),
        ("aws-bedrock", "/model/anthropic.claude-3/converse-stream", "/model/*/converse-stream"),
    ],
)  # fmt: skip
def test_api_path_match(cat: Catalog, sid: str, path: str, expected: str | None) -> None:
    service = cat.get(sid)
    assert service is not None
    assert api_path_match(service, path) == expected


# ------------------------------------------------------------------- caching


def test_match_is_cached_and_bounded() -> None:
    cat = Catalog(Catalog.load().services, cache_size=64)
    first = cat.match("api.deepseek.com")
    assert cat.match("api.deepseek.com") is first
    for i in range(200):
        cat.match(f"h{i}.example.com")
    info = cat.cache_info()
    assert info.hits >= 1 and info.currsize <= 64 and info.maxsize == 64


def test_loading_and_matching_do_not_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def deny(*args: object, **kwargs: object) -> None:
        calls.append(repr(args))
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", deny)
    monkeypatch.setattr(socket, "getaddrinfo", deny)
    monkeypatch.setattr(socket, "create_connection", deny)
    import egresswatch.catalog as module

    module._psl.cache_clear()
    module._icann_psl.cache_clear()
    cat = Catalog.load()
    for host in ("api.deepseek.com", "deepseek.chat", idna("ореnai.com"), "example.com"):
        cat.match(host)
    assert calls == []


# ------------------------------------------------------------- shipped data

REQUIRED_IDS = {
    "deepseek-api", "deepseek-chat", "moonshot-cn", "moonshot-intl", "kimi-cn", "kimi-intl",
    "zhipu-cn", "zai-intl", "baidu-qianfan", "dashscope-cn", "dashscope-intl", "doubao",
    "volcengine-ark", "coze-cn", "minimax-cn", "minimax-intl", "tencent-hunyuan",
    "iflytek-spark", "baichuan", "01ai", "stepfun", "siliconflow", "qihoo360-ai",
    "openai-api", "chatgpt", "azure-openai", "anthropic-api", "claude-app", "gemini-api",
    "vertex-ai", "aws-bedrock", "xai-api", "mistral", "cohere", "perplexity-api", "groq",
    "together", "fireworks", "openrouter", "replicate", "deepinfra", "novita", "hf-hub",
    "hf-inference", "hf-cdn", "ollama-registry", "ollama-com", "cloudflare-ai-gateway",
    "cursor", "github-copilot", "github-copilot-telemetry", "windsurf", "vllm-stats",
    "gradio-analytics", "sentry", "posthog", "segment", "mixpanel", "amplitude", "datadog",
    "statsig", "cloudflare-insights", "google-analytics", "crewai-telemetry", "fathom", "scarf",
}  # fmt: skip


def test_shipped_catalog_is_complete_and_valid(cat: Catalog) -> None:
    services = cat.services
    assert len(services) >= 40
    assert {s.id for s in services} >= REQUIRED_IDS, REQUIRED_IDS - {s.id for s in services}
    seen: dict[str, str] = {}
    brands: dict[str, str] = {}
    for s in services:
        assert s.operator_country in ISO_COUNTRIES, s.id
        assert s.contracting_country is None or s.contracting_country in ISO_COUNTRIES, s.id
        if s.residency and s.residency != CUSTOMER_REGION:
            assert set(s.residency.split(",")) <= ISO_COUNTRIES | RESIDENCY_REGIONS, s.id
        assert s.category in CATEGORIES, s.id
        assert s.domains, s.id
        for domain in s.domains:
            assert domain not in seen, f"{domain} in {seen.get(domain)} and {s.id}"
            seen[domain] = s.id
        for brand in s.brands:
            assert brand not in brands, f"brand {brand} in {brands.get(brand)} and {s.id}"
            brands[brand] = s.id
        assert set(s.unverified) <= set(Service.__dataclass_fields__), s.id
        assert cat.references(s.id), f"{s.id} names no source"
        assert all(p.startswith("/") for p in s.api_paths), s.id
    # Every official domain matches its own service: no entry is shadowed by another.
    for domain, sid in seen.items():
        host = domain.replace("*", "x")
        assert _id(cat, host) == sid, domain
    # Chinese and non-Chinese operators are both there.
    assert {s.operator_country for s in services} >= {"CN", "US", "FR", "CA"}
    assert cat.sources == (str(SHIPPED),)


@pytest.mark.parametrize(
    ("sid", "fields"),
    [
        # marked unverified in /work/shared/reference/ai-services.md: stays marked
        ("moonshot-intl", {"domains"}),  # api.moonshot.ai "unverified host"
        ("minimax-intl", {"domains"}),  # api.minimax.io "unverified host"
        ("xai-api", {"operator_country"}),
        ("mistral", {"operator_country"}),
        ("cohere", {"operator_country"}),
        ("perplexity-api", {"operator_country"}),
        ("groq", {"operator_country"}),
        ("together", {"operator_country"}),
        ("openrouter", {"operator_country"}),
        ("hf-hub", {"operator_country"}),
        ("ollama-registry", {"operator_country"}),
        ("amplitude-eu", {"domains"}),
        ("scarf", {"domains"}),
        ("mixpanel", {"domains"}),
    ],
)
def test_unverified_facts_stay_marked(cat: Catalog, sid: str, fields: set[str]) -> None:
    service = cat.get(sid)
    assert service is not None
    assert fields <= set(service.unverified)


@pytest.mark.parametrize(
    ("sid", "operator_country", "contracting_country", "residency"),
    [
        ("deepseek-api", "CN", None, "CN"),
        ("zai-intl", "CN", "SG", "SG"),
        ("minimax-intl", "CN", "SG", "US"),
        ("dashscope-intl", "CN", "SG", "SG"),
        ("moonshot-intl", "CN", "SG", None),
        ("anthropic-api", "US", None, None),
        ("mistral", "FR", None, None),
        ("aws-bedrock", "US", None, CUSTOMER_REGION),
        ("openai-api-eu", "US", "IE", "EU"),
        ("openai-api-jp", "US", None, "JP"),
    ],
)
def test_jurisdiction_facts(
    cat: Catalog,
    sid: str,
    operator_country: str,
    contracting_country: str | None,
    residency: str | None,
) -> None:
    s = cat.get(sid)
    assert s is not None
    assert (s.operator_country, s.contracting_country, s.residency) == (
        operator_country,
        contracting_country,
        residency,
    )


def test_get_unknown_is_none(cat: Catalog) -> None:
    assert cat.get("no-such-service") is None


# ---------------------------------------------------------------- user files

USER = """\
[lookalike]
ignore = ["acmeairline"]

[[service]]
id = "deepseek-chat"
name = "DeepSeek via our EU reseller"
operator = "Example Reseller GmbH"
operator_country = "DE"
residency = "DE"
category = "chat-app"
domains = ["deepseek.com"]
sources = ["contract 2026-17"]

[[service]]
id = "acme-llm"
name = "ACME internal LLM"
operator = "ACME"
operator_country = "NL"
category = "chat-api"
domains = ["llm.acme.example", "api.openai.com"]
brands = ["acmellm"]
"""


def test_user_file_overrides_and_adds(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(USER)
    cat = Catalog.load([user])
    assert cat.sources == (str(SHIPPED), str(user))
    replaced = cat.get("deepseek-chat")
    assert replaced is not None and replaced.operator_country == "DE"
    assert cat.references("deepseek-chat") == ("contract 2026-17",)
    assert replaced.brands == ()  # replaced whole: the shipped brands went with it
    assert _id(cat, "chat.deepseek.com") == "deepseek-chat"
    assert _id(cat, "llm.acme.example") == "acme-llm"
    # a later file's domain is taken from the service that had it
    assert _id(cat, "api.openai.com") == "acme-llm"
    openai = cat.get("openai-api")
    assert openai is not None and "api.openai.com" not in openai.domains
    assert len(cat.services) == len(Catalog.load().services) + 1
    found = cat.match("acmellm-login.example")
    assert found is not None and found.service.id == "acme-llm"
    # str paths work as well as Path
    assert Catalog.load([str(user)]).get("acme-llm") is not None


def test_later_user_file_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(USER)
    b.write_text(USER.replace('operator_country = "NL"', 'operator_country = "BE"'))
    acme = Catalog.load([a, b]).get("acme-llm")
    assert acme is not None and acme.operator_country == "BE"


def _line_of(text: str, needle: str) -> int:
    """1-based line of the last occurrence of needle (the edits below touch the last service)."""
    return text[: text.rindex(needle)].count("\n") + 1


GOOD = """\
schema = 1

[[service]]
id = "first"
name = "First"
operator = "Op"
operator_country = "US"
category = "chat-api"
domains = ["first.example"]

[[service]]
id = "second"
name = "Second"
operator = "Op"
operator_country = "US"
category = "chat-api"
domains = ["second.example"]
"""


@pytest.mark.parametrize(
    ("old", "new", "field", "needle", "message"),
    [
        ('operator_country = "US"\ncategory = "chat-api"\ndomains = ["second',
         'operator_country = "China"\ncategory = "chat-api"\ndomains = ["second',
         "operator_country", '"China"', "ISO 3166-1"),
        ('category = "chat-api"\ndomains = ["second', 'category = "chat"\ndomains = ["second',
         "category", '"chat"', "unknown category"),
        ('domains = ["second.example"]', 'domains = ["co.uk"]', "domains", "co.uk",
         "public suffix"),
        ('domains = ["second.example"]', 'domains = ["*.com"]', "domains", "*.com",
         "public suffix"),
        ('domains = ["second.example"]', 'domains = ["bad domain.example"]', "domains",
         "bad domain", "not a domain"),
        ('domains = ["second.example"]', 'domains = []', "domains", "domains = []",
         "at least one"),
        ('domains = ["second.example"]', 'domains = ["first.example"]', "domains",
         'domains = ["first.example"]', "already listed by 'first'"),
        ('domains = ["second.example"]', 'domains = ["b.example", "B.example."]', "domains",
         "B.example", "listed twice"),
        ('id = "second"', 'id = "first"', "id", 'id = "first"', "duplicate id"),
        ('id = "second"', 'id = "Second Service"', "id", "Second Service", "lower-case"),
        ('name = "Second"', 'name = "Second"\ndomain = ["x.example"]', "domain", "domain = [",
         "unknown field"),
        ('name = "Second"\n', "", "name", "[[service]]", "missing required field"),
        ('domains = ["second.example"]', 'domains = "second.example"', "domains",
         'domains = "second', "list of non-empty strings"),
        ('name = "Second"', 'name = "Second"\nbrands = ["ai"]', "brands", "brands =",
         "4+ lower-case"),
        ('name = "Second"', 'name = "Second"\nunverified = ["country"]', "unverified",
         "unverified =", "not a field name"),
        ('name = "Second"', 'name = "Second"\nresidency = "Europe"', "residency", "residency =",
         "ISO 3166-1"),
        ('name = "Second"', 'name = "Second"\nresidency = "DE,XX"', "residency", "residency =",
         "'XX'"),
        ('name = "Second"', 'name = "Second"\napi_paths = ["v1/chat"]', "api_paths",
         "api_paths =", "starts with '/'"),
        ("schema = 1", "schema = 2", "schema", "schema = 2", "unsupported schema"),
        ("schema = 1", "schema = 1\nservices = []", "services", "services = []",
         "unknown top-level key"),
        ("schema = 1", 'schema = 1\n[lookalike]\nignore = ["ok-no"]', "lookalike.ignore",
         "ignore =", "lower-case words"),
    ],
)  # fmt: skip
def test_bad_user_file_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, needle: str, message: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1) if old.startswith("schema") else _replace_last(GOOD, old, new)
    path = tmp_path / "user.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Catalog.load([path])
    err = info.value
    assert err.path == str(path)
    assert err.field == field
    assert message in str(err)
    assert err.line == _line_of(text, needle), (text, err)
    assert str(err).startswith(f"{path}:{err.line}: {field}: ")


def _replace_last(text: str, old: str, new: str) -> str:
    head, sep, tail = text.rpartition(old)
    assert sep
    return head + new + tail


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = GOOD.replace('name = "Second"', 'name = "Second', 1)
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Catalog.load([path])
    assert info.value.line == _line_of(text, 'name = "Second')
    assert "not valid TOML" in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such catalog file"):
        Catalog.load([tmp_path / "nope.toml"])
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        Catalog.load([binary])


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),
            st.sampled_from(["delete", "duplicate", "value", "key", "truncate"]),
            st.text(max_size=12),
        ),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=300, deadline=None)
def test_mangled_catalog_gives_a_catalog_or_config_error(
    edits: list[tuple[int, str, str]],
) -> None:
    """Any edit of a valid file: a parsed catalog or a ConfigError with a line, nothing else."""
    lines = USER.splitlines()
    for index, action, junk in edits:
        i = index % len(lines)
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + json.dumps(junk)
        elif action == "key" and "=" in lines[i]:
            lines[i] = junk + " =" + lines[i].split("=", 1)[1]
        elif action == "truncate":
            lines[i] = lines[i][: len(junk)]
        if not lines:
            lines = ["schema = 1"]
    text = "\n".join(lines) + "\n"
    try:
        parsed = parse_catalog(text, "mangled.toml")
    except ConfigError as e:
        assert e.path == "mangled.toml"
        assert e.line is None or 1 <= e.line <= len(lines)
        assert str(e).startswith("mangled.toml")
    else:
        assert all(s.operator_country in ISO_COUNTRIES for s in parsed.services)
        Catalog(parsed.services).match("llm.acme.example")


def test_parse_catalog_accepts_the_shipped_text() -> None:
    parsed = parse_catalog(SHIPPED.read_text(), str(SHIPPED))
    assert len(parsed.services) >= 40
    assert "openair" in parsed.ignore


def test_wildcard_in_unicode_domain_is_refused() -> None:
    text = GOOD.replace('domains = ["second.example"]', 'domains = ["*.bücher.example"]')
    with pytest.raises(ConfigError, match="without wildcards"):
        parse_catalog(text, "x.toml")
    ok = parse_catalog(GOOD.replace("second.example", "bücher.example"), "x.toml")
    assert ok.services[1].domains == ("xn--bcher-kva.example",)


# ----------------------------------------------------------------------- CLI


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_list_filters_and_json() -> None:
    code, out, _ = run("catalog", "list", "--country", "cn", "--json")
    assert code == 0
    rows = json.loads(out)
    assert rows and {r["operator_country"] for r in rows} == {"CN"}
    assert "deepseek-api" in {r["id"] for r in rows}
    deepseek = next(r for r in rows if r["id"] == "deepseek-chat")
    assert deepseek["brands"] == ["deepseek"] and deepseek["sources"]
    kimi = next(r for r in rows if r["id"] == "kimi-cn")
    assert kimi["brand_labels"] == ["kimi"] and kimi["brands"] == []
    code, out, _ = run("catalog", "list", "--category", "TELEMETRY", "--json")
    assert code == 0 and {r["category"] for r in json.loads(out)} == {"telemetry"}
    code, out, _ = run("catalog", "list", "--category", "telemetry", "--country", "CA")
    assert code == 0 and "fathom" in out and "sentry" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--country", "China"], "not an ISO 3166-1"),
        (["--country", "ZZ"], "not an ISO 3166-1"),
        (["--category", "chatbots"], "not a category"),
    ],
)
def test_cli_list_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    code, _, err = run("catalog", "list", *args)
    assert code == 2 and message in err


def test_cli_match() -> None:
    code, out, _ = run(
        "catalog", "match", "--json", "https://API.deepseek.com:443/v1/chat/completions",
        "deepseek.chat", "pypi.org", idna("ореnai.com"),
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert [(r["host"], r["kind"], r.get("service")) for r in rows] == [
        ("api.deepseek.com", "official", "deepseek-api"),
        ("deepseek.chat", "lookalike", "deepseek-chat"),
        ("pypi.org", None, None),
        (idna("ореnai.com"), "lookalike", "chatgpt"),
    ]
    assert rows[0]["operator_country"] == "CN" and rows[0]["residency"] == "CN"
    assert rows[1]["operator_country"] is None  # a lookalike is not the brand's operator
    assert rows[0]["api_path"] == "/v1/chat/completions"
    code, out, _ = run("catalog", "match", "api.anthropic.com", "kimi-k2.ai")
    assert code == 0 and "official" in out and "lookalike" in out


def test_cli_show() -> None:
    code, out, _ = run("catalog", "show", "--json", "zai-intl")
    assert code == 0
    data = json.loads(out)
    assert (data["operator_country"], data["contracting_country"], data["residency"]) == (
        "CN",
        "SG",
        "SG",
    )
    assert data["sources"] and data["domains"] == ["z.ai"]
    code, out, _ = run("catalog", "show", "moonshot-intl")
    assert code == 0 and "Moonshot AI Pte. Ltd." in out and "domains*" in out
    assert "('" not in out  # lists shown as text, not as Python tuples
    code, _, err = run("catalog", "show", "deepseek")
    assert code == 2 and "did you mean deepseek-api, deepseek-chat" in err


def test_cli_match_bad_host_is_usage_error() -> None:
    code, _, err = run("catalog", "match", "not a host")
    assert code == 2 and "not a host name" in err


def test_cli_uses_extra_catalog(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(USER)
    code, out, _ = run("catalog", "--catalog", str(user), "match", "--json", "llm.acme.example")
    assert code == 0 and json.loads(out)[0]["service"] == "acme-llm"


def test_cli_check_valid(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(USER)
    code, out, _ = run("catalog", "check", "--json", str(user))
    assert code == 0
    summary = json.loads(out)
    assert summary["valid"] and summary["services"] == 2
    assert summary["added"] == ["acme-llm"] and summary["replaced"] == ["deepseek-chat"]
    assert summary["domains_taken"] == [
        {"domain": "api.openai.com", "from": "openai-api", "to": "acme-llm"}
    ]
    code, out, _ = run("catalog", "check", str(user))
    assert code == 0 and "valid" in out and "api.openai.com moves from openai-api" in out


def test_cli_check_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('operator_country = "US"', 'operator_country = "USA"', 1))
    code, _, err = run("catalog", "check", str(path))
    assert code == 3
    assert err.strip() == (
        f"egresswatch: error: {path}:7: operator_country: service 'first': "
        "'USA' is not an ISO 3166-1 alpha-2 code in upper case (e.g. CN)"
    )
    code, out, _ = run("catalog", "check", "--json", str(path))
    assert code == 3
    error = json.loads(out)["error"]
    assert (error["line"], error["field"]) == (7, "operator_country")
    code, _, err = run("catalog", "check", str(tmp_path / "missing.toml"))
    assert code == 2 and "does not exist" in err


def test_console_script_end_to_end(tmp_path: Path) -> None:
    """The installed ``egresswatch`` binary, as a user runs it."""
    exe = egresswatch_bin()
    done = subprocess.run(
        [exe, "catalog", "match", "--json", "cdn-lfs-us-1.huggingface.co", "deepseekagi.org"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["service"], r["kind"]) for r in rows] == [
        ("hf-cdn", "official"),
        ("deepseek-chat", "lookalike"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('id = "first"', "id = 1"))
    done = subprocess.run(
        [exe, "catalog", "check", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert f"{bad}:4: id:" in done.stderr
    done = subprocess.run([exe, "catalog", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "legal home" in done.stdout
