"""Payload types from request shapes, content decoding, flags, and "never raises"."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Mapping

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.classify import MAX_BODY, Classification, classify
from egresswatch.classify import body as bodymod
from egresswatch.model import FindingKind, Observation, PayloadType, Protocol, Sensor, Transport

P = PayloadType
K = FindingKind
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
GHP = "ghp_" + "R2l0SHViVG9rZW4" * 3 + "a1"
GOOGLE = "AIza" + "SyA-" + "1234567890abcdefghijklmnopqrs" + "tu"


def obs(
    method: str | None,
    path: str | None,
    host: str | None = None,
    body: bytes | str | Mapping[str, object] | list[object] = b"",
    headers: tuple[tuple[str, str], ...] = (),
    protocol: Protocol = Protocol.HTTPS,
    truncated: bool = False,
) -> Observation:
    if isinstance(body, Mapping | list):
        data = json.dumps(body).encode()
        if not any(k == "content-type" for k, _ in headers):
            headers = (*headers, ("content-type", "application/json"))
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    return Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=protocol,
        dst_addr="203.0.113.10",
        dst_port=443,
        http_host=host,
        sni=host,
        method=method,
        path=path,
        headers=(("host", host or "example.test"), *headers),
        body=data,
        body_truncated=truncated,
    )


CHAT: dict[str, object] = {
    "model": "m",
    "messages": [{"role": "user", "content": "Plan a 3 day trip to Rome."}],
}
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
FORM = ("content-type", "application/x-www-form-urlencoded")


def multipart(*parts: tuple[str, str | None, str, bytes]) -> tuple[tuple[str, str], bytes]:
    boundary = "----egresswatch-test-boundary"
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return ("content-type", f"multipart/form-data; boundary={boundary}"), out


_MP_DOC = multipart(("purpose", None, "", b"assistants"), ("file", "a.pdf", "", b"%PDF-1.7 x"))
_MP_MEDIA = multipart(
    ("a", "x.png", "image/png", PNG), ("b", "y.wav", "audio/wav", WAV), ("c", "z.png", "", PNG)
)
_MP_GGUF = multipart(("model", "m.gguf", "application/octet-stream", b"GGUF\x03\x00\x00\x00"))
_MP_LOGIN = multipart(("email", None, "", b"ann@example.com"), ("password", None, "", b"hunter2"))

CASES: list[tuple[str, Observation, str | None, tuple[PayloadType, ...]]] = [
    # --- chat, completions, embeddings across vendors ---
    (
        "anthropic",
        obs("POST", "/v1/messages", "api.anthropic.com", CHAT),
        "chat-api",
        (P.CHAT_PROMPT,),
    ),
    (
        "anthropic-count",
        obs("POST", "/v1/messages/count_tokens", "api.anthropic.com", CHAT),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "gemini",
        obs(
            "POST",
            f"/v1beta/models/gemini-2.0-flash:generateContent?key={GOOGLE}",
            "generativelanguage.googleapis.com",
            {"contents": [{"parts": [{"text": "hi"}]}]},
        ),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "gemini-stream",
        obs(
            "POST",
            "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse",
            "generativelanguage.googleapis.com",
            {"contents": []},
        ),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "gemini-embed",
        obs(
            "POST",
            "/v1beta/models/text-embedding-004:embedContent",
            "generativelanguage.googleapis.com",
            {"content": {}},
        ),
        None,
        (P.EMBEDDING_INPUT,),
    ),
    (
        "gemini-batch-embed",
        obs("POST", "/v1beta/models/e:batchEmbedContents", None, {}),
        None,
        (P.EMBEDDING_INPUT,),
    ),
    (
        "deepseek",
        obs("POST", "/chat/completions", "api.deepseek.com", CHAT),
        "chat-api",
        (P.CHAT_PROMPT,),
    ),
    (
        "moonshot",
        obs("POST", "/v1/chat/completions", "api.moonshot.cn", CHAT),
        "chat-api",
        (P.CHAT_PROMPT,),
    ),
    (
        "zhipu",
        obs("POST", "/api/paas/v4/chat/completions", "open.bigmodel.cn", CHAT),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "vllm-completion",
        obs(
            "POST",
            "/v1/completions",
            "127.0.0.1:8000",
            {"model": "m", "prompt": "Once"},
            protocol=Protocol.HTTP,
        ),
        None,
        (P.COMPLETION,),
    ),
    (
        "lmstudio-embed",
        obs("POST", "/v1/embeddings", "localhost:1234", {"input": "x"}, protocol=Protocol.HTTP),
        None,
        (P.EMBEDDING_INPUT,),
    ),
    (
        "responses",
        obs("POST", "/v1/responses", "api.openai.com", {"input": "hi"}),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "absolute-form",
        obs("POST", "http://api.openai.com/v1/chat/completions", None, CHAT),
        None,
        (P.CHAT_PROMPT,),
    ),
    (
        "chat-with-image",
        obs(
            "POST",
            "/v1/chat/completions",
            "api.openai.com",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,iVBO"},
                            }
                        ],
                    }
                ]
            },
        ),
        None,
        (P.CHAT_PROMPT, P.IMAGE),
    ),
    (
        "chat-with-audio",
        obs(
            "POST",
            "/v1/chat/completions",
            "api.openai.com",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "UklG", "format": "wav"},
                            }
                        ],
                    }
                ]
            },
        ),
        None,
        (P.CHAT_PROMPT, P.AUDIO),
    ),
    (
        "ollama-chat-images",
        obs(
            "POST",
            "/api/chat",
            "127.0.0.1:11434",
            {
                "model": "llava",
                "messages": [{"role": "user", "content": "what?", "images": ["iVBO"]}],
            },
            protocol=Protocol.HTTP,
        ),
        None,
        (P.CHAT_PROMPT, P.IMAGE),
    ),
    ("openai-models-list", obs("GET", "/v1/models", "api.openai.com"), None, (P.OTHER,)),
    (
        "chat-get-is-not-a-prompt",
        obs("GET", "/v1/chat/completions", "api.openai.com"),
        None,
        (P.OTHER,),
    ),
    (
        "unknown-path-chat-category",
        obs(
            "POST", "/backend-api/conversation", "chatgpt.com", {"action": "next", "parts": ["hi"]}
        ),
        "chat-app",
        (P.CHAT_PROMPT,),
    ),
    ("unknown-path-json-shape", obs("POST", "/x/y", "example.test", CHAT), None, (P.CHAT_PROMPT,)),
    # --- model hubs and registries ---
    (
        "ollama-push",
        obs("POST", "/api/push", "127.0.0.1:11434", {"model": "me/m"}),
        None,
        (P.MODEL_UPLOAD,),
    ),
    (
        "registry-manifest",
        obs("GET", "/v2/library/llama3.2/manifests/latest", "registry.ollama.ai"),
        "model-registry",
        (P.MODEL_DOWNLOAD,),
    ),
    (
        "registry-blob",
        obs("GET", "/v2/library/llama3.2/blobs/sha256:abcd", "registry.ollama.ai"),
        None,
        (P.MODEL_DOWNLOAD,),
    ),
    (
        "registry-upload",
        obs("POST", "/v2/me/m/blobs/uploads/", "registry.ollama.ai"),
        None,
        (P.MODEL_UPLOAD,),
    ),
    (
        "hf-revision",
        obs("GET", "/api/models/openai-community/gpt2/revision/main", "huggingface.co"),
        None,
        (P.MODEL_DOWNLOAD,),
    ),
    (
        "hf-resolve-head",
        obs("HEAD", "/gpt2/resolve/main/model.safetensors", "huggingface.co"),
        None,
        (P.MODEL_DOWNLOAD,),
    ),
    (
        "hf-dataset-resolve",
        obs("GET", "/datasets/squad/resolve/main/train.parquet", "huggingface.co"),
        None,
        (P.MODEL_DOWNLOAD,),
    ),
    (
        "hf-commit",
        obs("POST", "/api/models/me/m/commit/main", "huggingface.co", {"summary": "up"}),
        None,
        (P.MODEL_UPLOAD,),
    ),
    ("hf-cdn", obs("GET", "/repos/ab/cd/0123", "cdn-lfs-us-1.hf.co"), None, (P.MODEL_DOWNLOAD,)),
    ("hf-whoami", obs("GET", "/api/whoami-v2", "huggingface.co"), "model-hub", (P.ACCOUNT,)),
    (
        "model-file-put",
        obs("PUT", "/bucket/model.gguf", "storage.example", b"GGUF\x03"),
        None,
        (P.MODEL_UPLOAD,),
    ),
    (
        "hub-category-get",
        obs("GET", "/some/file", "huggingface.co"),
        "model-hub",
        (P.MODEL_DOWNLOAD,),
    ),
    # --- telemetry and analytics ---
    (
        "hf-telemetry-gradio",
        obs(
            "HEAD",
            "/api/telemetry/https%3A/api.gradio.app/gradio-launched-telemetry",
            "huggingface.co",
        ),
        "model-hub",
        (P.TELEMETRY,),
    ),
    (
        "gradio-direct",
        obs("POST", "/gradio-initiated-analytics/", "api.gradio.app", {"ip_address": "x"}),
        None,
        (P.TELEMETRY,),
    ),
    (
        "vllm-usage",
        obs(
            "POST",
            "/",
            "stats.vllm.ai",
            {
                "uuid": "u",
                "provider": "AWS",
                "num_cpu": 8,
                "gpu_type": "A100",
                "vllm_version": "0.6.0",
                "log_time": 1,
            },
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "vllm-usage-body-only",
        obs(
            "POST", "/", "203.0.113.5", {"uuid": "u", "log_time": 1, "model_architecture": "Llama"}
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "sentry-envelope",
        obs(
            "POST",
            "/api/4507/envelope/",
            "o1.ingest.us.sentry.io",
            b'{"event_id":"x"}\n{"type":"event"}\n{"user":{}}',
            (("content-type", "application/x-sentry-envelope"),),
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "posthog",
        obs(
            "POST",
            "/i/v0/e/",
            "us.i.posthog.com",
            {"api_key": "phc_x", "event": "$pageview", "distinct_id": "u1"},
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "posthog-batch-body-only",
        obs(
            "POST",
            "/batch/",
            None,
            {"api_key": "phc_x", "batch": [{"event": "e", "distinct_id": "d"}]},
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "segment",
        obs("POST", "/v1/track", "api.segment.io", {"userId": "u", "event": "x"}),
        None,
        (P.TELEMETRY,),
    ),
    (
        "segment-body-only",
        obs("POST", "/v1/t", None, {"anonymousId": "a", "type": "track"}),
        None,
        (P.TELEMETRY,),
    ),
    (
        "mixpanel",
        obs("POST", "/track", "api-js.mixpanel.com", "data=eyJldmVudCI6InRlc3QifQ", (FORM,)),
        None,
        (P.TELEMETRY,),
    ),
    (
        "amplitude",
        obs(
            "POST",
            "/2/httpapi",
            "api2.amplitude.com",
            {"api_key": "k", "events": [{"event_type": "x"}]},
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "datadog-rum",
        obs(
            "POST",
            "/api/v2/rum?ddsource=browser",
            "browser-intake-datadoghq.com",
            b'{"type":"view"}',
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "otlp",
        obs(
            "POST",
            "/v1/traces",
            "telemetry.crewai.com:4319",
            b"\x0a\x02\x08\x01",
            (("content-type", "application/x-protobuf"),),
        ),
        None,
        (P.TELEMETRY,),
    ),
    (
        "statsig",
        obs("POST", "/v1/rgstr", "featureassets.org", {"events": []}),
        None,
        (P.TELEMETRY,),
    ),
    (
        "telemetry-category",
        obs("POST", "/collect/v9", "metrics.vendor.example", b"x"),
        "telemetry",
        (P.TELEMETRY,),
    ),
    # --- feedback, account, update checks ---
    (
        "feedback",
        obs(
            "POST",
            "/backend-api/conversation/message_feedback",
            "chatgpt.com",
            {"message_id": "m", "rating": "thumbsDown"},
        ),
        "chat-app",
        (P.FEEDBACK,),
    ),
    ("feedback-body", obs("POST", "/x", None, {"run_id": "r", "score": 1}), None, (P.FEEDBACK,)),
    (
        "signup",
        obs(
            "POST",
            "/api/auth/signup",
            "app.example",
            {"email": "ann@example.com", "password": "hunter2"},
        ),
        None,
        (P.ACCOUNT, P.CREDENTIAL),
    ),
    (
        "login-form",
        obs("POST", "/login", "app.example", "username=ann&password=hunter2", (FORM,)),
        None,
        (P.ACCOUNT, P.CREDENTIAL),
    ),
    (
        "login-json-unknown-path",
        obs("POST", "/x", None, {"username": "ann", "password": "pw"}),
        None,
        (P.ACCOUNT, P.CREDENTIAL),
    ),
    (
        "oauth-password-grant",
        obs(
            "POST",
            "/oauth/token",
            "auth.example",
            "grant_type=password&username=ann&password=pw",
            (FORM,),
        ),
        None,
        (P.ACCOUNT, P.CREDENTIAL),
    ),
    ("profile", obs("GET", "/v1/me", "api.example"), None, (P.ACCOUNT,)),
    (
        "login-multipart",
        obs("POST", "/x", None, _MP_LOGIN[1], (_MP_LOGIN[0],)),
        None,
        (P.ACCOUNT, P.CREDENTIAL),
    ),
    (
        "ollama-update",
        obs("GET", "/api/update?os=linux&arch=amd64&version=0.5.7", "ollama.com"),
        None,
        (P.UPDATE_CHECK,),
    ),
    (
        "ollama-recommendations",
        obs("GET", "/api/experimental/model-recommendations", "ollama.com"),
        None,
        (P.UPDATE_CHECK,),
    ),
    ("gradio-version", obs("GET", "/pkg-version", "api.gradio.app"), None, (P.UPDATE_CHECK,)),
    ("pypi", obs("GET", "/pypi/vllm/json", "pypi.org"), None, (P.UPDATE_CHECK,)),
    (
        "update-category",
        obs("GET", "/feed/x", "updates.vendor.example"),
        "update-service",
        (P.UPDATE_CHECK,),
    ),
    # --- files and media ---
    (
        "multipart-doc",
        obs("POST", "/upload", "files.example", _MP_DOC[1], (_MP_DOC[0],)),
        None,
        (P.FILE_UPLOAD,),
    ),
    (
        "multipart-media",
        obs("POST", "/upload", "files.example", _MP_MEDIA[1], (_MP_MEDIA[0],)),
        None,
        (P.AUDIO, P.IMAGE),
    ),
    (
        "multipart-gguf",
        obs("POST", "/upload", "files.example", _MP_GGUF[1], (_MP_GGUF[0],)),
        None,
        (P.MODEL_UPLOAD,),
    ),
    (
        "raw-octets",
        obs(
            "PUT",
            "/blob/1",
            "files.example",
            bytes(range(256)) * 4,
            (("content-type", "application/octet-stream"),),
        ),
        None,
        (P.FILE_UPLOAD,),
    ),
    ("raw-png", obs("POST", "/x", None, PNG, (("content-type", "image/png"),)), None, (P.IMAGE,)),
    ("raw-wav-no-type", obs("POST", "/x", None, WAV), None, (P.AUDIO,)),
    (
        "gemini-file-upload",
        obs("POST", "/upload/v1beta/files", None, b"%PDF-1.4"),
        None,
        (P.FILE_UPLOAD,),
    ),
    (
        "openai-speech",
        obs("POST", "/v1/audio/speech", None, {"input": "hi", "voice": "x"}),
        None,
        (P.AUDIO,),
    ),
    # --- credentials in the payload ---
    (
        "key-pasted-in-prompt",
        obs(
            "POST",
            "/v1/chat/completions",
            "api.openai.com",
            {"messages": [{"role": "user", "content": f"why does {AWS} fail?"}]},
        ),
        None,
        (P.CHAT_PROMPT, P.CREDENTIAL),
    ),
    (
        "token-in-query",
        obs("GET", f"/repos/x/y?access_token={GHP}", "api.github.com"),
        None,
        (P.CREDENTIAL,),
    ),
    (
        "private-key-upload",
        obs(
            "POST",
            "/x",
            None,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n",
            (("content-type", "text/plain"),),
        ),
        None,
        (P.CREDENTIAL,),
    ),
    # --- not HTTP ---
    ("dns", obs(None, None, "huggingface.co", protocol=Protocol.DNS), None, (P.DNS,)),
    (
        "tls-opaque",
        obs(None, None, "api.deepseek.com", protocol=Protocol.TLS),
        "chat-api",
        (P.TLS_OPAQUE,),
    ),
    (
        "tls-opaque-telemetry",
        obs(None, None, "o1.ingest.sentry.io", protocol=Protocol.QUIC),
        None,
        (P.TELEMETRY, P.TLS_OPAQUE),
    ),
    (
        "tls-opaque-telemetry-category",
        obs(None, None, "x.example", protocol=Protocol.TLS),
        "telemetry",
        (P.TELEMETRY, P.TLS_OPAQUE),
    ),
    ("nothing", obs("GET", "/", "example.com"), None, (P.OTHER,)),
]


# More vendors' own shapes (gRPC, Bedrock, Chinese native APIs, Cohere, TGI, Replicate).
CASES += [
    ("gemini-grpc", obs("POST", "/google.ai.generativelanguage.v1beta.GenerativeService/"
                        "GenerateContent", "generativelanguage.googleapis.com", b"\x0a\x01x",
                        (("content-type", "application/grpc"),)), None, (P.CHAT_PROMPT,)),
    ("bedrock-converse", obs("POST", "/model/anthropic.claude-3-5-sonnet/converse",
                             "bedrock-runtime.us-east-1.amazonaws.com", CHAT), None,
     (P.CHAT_PROMPT,)),
    ("ernie", obs("POST", "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/completions_pro",
                  "aip.baidubce.com", CHAT), None, (P.CHAT_PROMPT,)),
    ("minimax", obs("POST", "/v1/text/chatcompletion_v2", "api.minimax.chat", CHAT), None,
     (P.CHAT_PROMPT,)),
    ("dashscope-native", obs("POST", "/api/v1/services/aigc/text-generation/generation",
                             "dashscope.aliyuncs.com", {"input": {"messages": []}}), None,
     (P.CHAT_PROMPT,)),
    ("dashscope-embed", obs("POST",
                            "/api/v1/services/embeddings/text-embedding/text-embedding",
                            "dashscope.aliyuncs.com", {"input": {"texts": ["x"]}}), None,
     (P.EMBEDDING_INPUT,)),
    ("hunyuan", obs("POST", "/", "hunyuan.tencentcloudapi.com", CHAT,
                    (("x-tc-action", "ChatCompletions"),)), None, (P.CHAT_PROMPT,)),
    ("cohere-chat", obs("POST", "/v2/chat", "api.cohere.com", CHAT), None, (P.CHAT_PROMPT,)),
    ("cohere-rerank", obs("POST", "/v2/rerank", "api.cohere.com", {"query": "q"}), None,
     (P.EMBEDDING_INPUT,)),
    ("tgi-generate", obs("POST", "/generate", "tgi.lab.example", {"inputs": "Once"}), None,
     (P.COMPLETION,)),
    ("hf-inference-legacy", obs("POST", "/models/gpt2", "api-inference.huggingface.co",
                                {"inputs": "Once"}), None, (P.COMPLETION,)),
    ("replicate", obs("POST", "/v1/predictions", "api.replicate.com",
                      {"version": "v", "input": {"prompt": "x"}}), None, (P.COMPLETION,)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "observation", "category", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_payload_types(
    name: str, observation: Observation, category: str | None, expected: tuple[PayloadType, ...]
) -> None:
    result = classify(observation, category)
    assert result.payload_types == expected, (name, result)


def _kinds(result: Classification) -> set[tuple[FindingKind, str]]:
    return {(f.kind, f.where) for f in result.findings}


def test_api_key_in_header_is_a_finding_but_not_a_credential_payload() -> None:
    o = obs(
        "POST",
        "/v1/messages",
        "api.anthropic.com",
        CHAT,
        (("x-api-key", "sk-ant-api03-" + "Qm9vbGVhbg" * 8 + "-AA"),),
    )
    result = classify(o, "chat-api")
    assert result.payload_types == (P.CHAT_PROMPT,)
    assert _kinds(result) == {(K.API_KEY, "header:x-api-key")}


def test_google_key_parameter_is_authentication_not_payload() -> None:
    o = CASES[2][1]
    result = classify(o)
    assert P.CREDENTIAL not in result.payload_types
    assert _kinds(result) == {(K.API_KEY, "query:key")}


def test_findings_in_query_form_and_multipart_text() -> None:
    mp_head, mp_body = multipart(("note", None, "", b"reach me at +44 20 7946 0958"))
    result = classify(obs("POST", "/x?email=ann%40example.com", None, mp_body, (mp_head,)))
    assert _kinds(result) == {(K.EMAIL, "query"), (K.PHONE, "body")}
    form = classify(obs("POST", "/x", None, "card=4111+1111+1111+1111&x=1", (FORM,)))
    assert _kinds(form) == {(K.PAYMENT_CARD, "body")}


def test_types_are_deduplicated_and_in_enum_order() -> None:
    result = classify(CASES[[c[0] for c in CASES].index("multipart-media")][1])
    assert result.payload_types == (P.AUDIO, P.IMAGE)  # two PNG parts, one type
    order = list(PayloadType)
    for _, o, cat, _ in CASES:
        types = classify(o, cat).payload_types
        assert list(types) == sorted(set(types), key=order.index)
        assert P.OTHER not in types or types == (P.OTHER,)


# --- content decoding -------------------------------------------------------------------------

_SECRET_CHAT = json.dumps(
    {"messages": [{"role": "user", "content": "mail ann@example.com"}]}
).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(_SECRET_CHAT)),
        ("x-gzip", gzip.compress(_SECRET_CHAT)),
        ("deflate", zlib.compress(_SECRET_CHAT)),
        ("deflate", _raw_deflate(_SECRET_CHAT)),
        ("br", brotli.compress(_SECRET_CHAT)),
        ("zstd", zstandard.ZstdCompressor().compress(_SECRET_CHAT)),
        ("gzip, br", brotli.compress(gzip.compress(_SECRET_CHAT))),
        ("identity", _SECRET_CHAT),
        ("", gzip.compress(_SECRET_CHAT)),  # gzip-js style: no header, gzip magic
    ],
)
def test_encoded_bodies_are_decoded_first(coding: str, encoded: bytes) -> None:
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    if coding:
        headers = (*headers, ("content-encoding", coding))
    result = classify(obs("POST", "/v1/chat/completions", "api.openai.com", encoded, headers))
    assert result.payload_types == (P.CHAT_PROMPT,)
    assert _kinds(result) == {(K.EMAIL, "body")}
    assert result.flags == ()


_BOMB = b"{" + b" " * (64 * 1024 * 1024)


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(_BOMB, 9)),
        ("deflate", zlib.compress(_BOMB, 9)),
        ("br", brotli.compress(_BOMB, quality=5)),
        ("zstd", zstandard.ZstdCompressor(level=3).compress(_BOMB)),
    ],
)
def test_decompression_is_bounded(coding: str, encoded: bytes) -> None:
    assert len(encoded) < 1024 * 1024  # a small body that would inflate to 64 MiB
    decoded = bodymod.decode(encoded, coding)
    assert len(decoded.data) == MAX_BODY
    assert "decode-limit" in decoded.flags
    result = classify(obs("POST", "/x", None, encoded, (("content-encoding", coding),)))
    assert "decode-limit" in result.flags


def test_truncated_compressed_body_still_read() -> None:
    text = ("ann@example.com " + "filler " * 4000).encode()
    cut = gzip.compress(text)[:600]
    result = classify(obs("POST", "/x", None, cut, (("content-encoding", "gzip"),), truncated=True))
    assert (K.EMAIL, "body") in _kinds(result)
    assert "body-truncated" in result.flags
    assert "decode-error" not in result.flags


@pytest.mark.parametrize(
    ("coding", "flag"),
    [
        ("gzip", "decode-error"),
        ("br", "decode-error"),
        ("zstd", "decode-error"),
        ("compress", "unknown-encoding"),
    ],
)
def test_undecodable_bodies_are_flagged(coding: str, flag: str) -> None:
    result = classify(
        obs(
            "POST",
            "/v1/chat/completions",
            None,
            b"\x00garbage" * 10,
            (("content-encoding", coding),),
        )
    )
    assert flag in result.flags
    assert result.payload_types == (P.CHAT_PROMPT,)


# --- never raises -----------------------------------------------------------------------------

_names = st.sampled_from(
    [
        "content-type",
        "content-encoding",
        "authorization",
        "cookie",
        "x-api-key",
        "user-agent",
        "host",
        "api-key",
    ]
)
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "gzip",
            "br",
            "zstd",
            "deflate",
            "gzip, br",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain; charset=utf-16",
            "text/plain; charset=no-such",
            "Basic !!!",
            "Bearer eyJ.eyJ.",
        ]
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.one_of(
        st.none(), st.sampled_from(["GET", "POST", "HEAD", "PUT", "BREW"]), st.text(max_size=8)
    ),
    path=st.one_of(
        st.none(),
        st.text(max_size=120),
        st.sampled_from(["/v1/chat/completions?x=%zz&&=", "http://[::1", "/?"]),
    ),
    headers=st.lists(st.tuples(_names, _values), max_size=6),
    body=st.one_of(
        st.binary(max_size=3000),
        st.sampled_from(
            [
                b"--x\r\n\r\n",
                b'--x\r\nContent-Disposition: form-data; name="password"\r\n\r\npw\r\n--x--',
                b"\x1f\x8b\x08",
                b"\x28\xb5\x2f\xfd",
                b'{"password": "\\u12',
            ]
        ),
    ),
    category=st.one_of(
        st.none(), st.text(max_size=12), st.sampled_from(["telemetry", "model-hub", "chat-api"])
    ),
    protocol=st.sampled_from(list(Protocol)),
    host=st.one_of(st.none(), st.text(max_size=40), st.just("[::1]:443")),
)
def test_classify_never_raises(
    method: str | None,
    path: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
    category: str | None,
    protocol: Protocol,
    host: str | None,
) -> None:
    o = Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=protocol,
        dst_addr=None,
        dst_port=None,
        method=method,
        path=path,
        headers=tuple(headers),
        body=body,
        http_host=host,
    )
    result = classify(o, category)
    assert result.payload_types
    assert "classify-error" not in result.flags, result


def test_pathological_bodies_are_cut_short_and_flagged() -> None:
    # 20,000 addresses: the scan stops at the candidate budget and says so, the flow is judged
    body = json.dumps({"messages": [{"role": "user", "content": "a@example.com " * 20000}]})
    result = classify(
        obs(
            "POST",
            "/v1/chat/completions",
            "api.openai.com",
            body.encode(),
            (("content-type", "application/json"),),
        )
    )
    assert result.payload_types == (P.CHAT_PROMPT,)
    assert "scan-limit" in result.flags
    assert _kinds(result) == {(K.EMAIL, "body")}


def _ws(path: str, host: str, message: dict[str, object]) -> Observation:
    # As the proxy builds it: the handshake's method, target and headers, the message as body.
    return obs("GET", path, host, json.dumps(message).encode(), protocol=Protocol.WEBSOCKET)


@pytest.mark.parametrize(
    ("observation", "category", "expected"),
    [
        (
            _ws(
                "/v1/realtime?model=gpt-4o-realtime-preview",
                "api.openai.com",
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    },
                },
            ),
            "chat-api",
            (P.CHAT_PROMPT,),
        ),
        (
            _ws(
                "/v1/realtime",
                "api.openai.com",
                {"type": "input_audio_buffer.append", "audio": "UklGRg=="},
            ),
            None,
            (P.CHAT_PROMPT, P.AUDIO),
        ),
        (
            _ws(
                "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
                "generativelanguage.googleapis.com",
                {"realtimeInput": {"mediaChunks": [{"mimeType": "image/jpeg", "data": "/9j/"}]}},
            ),
            None,
            (P.CHAT_PROMPT, P.IMAGE),
        ),
        (_ws("/socket", "chat.example", {"text": "hello"}), "chat-app", (P.CHAT_PROMPT,)),
        (_ws("/socket", "example.com", {"text": "hello"}), None, (P.OTHER,)),
    ],
)
def test_websocket_messages(
    observation: Observation, category: str | None, expected: tuple[PayloadType, ...]
) -> None:
    assert classify(observation, category).payload_types == expected


def test_websocket_handshake_without_message_is_not_a_prompt() -> None:
    o = obs("GET", "/v1/realtime", "api.openai.com", protocol=Protocol.WEBSOCKET)
    assert classify(o, "chat-api").payload_types == (P.OTHER,)


def test_nested_login_and_mixpanel_data_field() -> None:
    nested = classify(
        obs(
            "POST",
            "/graphql",
            "app.example",
            {"variables": {"user": {"email": "a@example.com", "password": "pw1"}}},
        )
    )
    assert nested.payload_types == (P.ACCOUNT, P.CREDENTIAL)
    data = base64.b64encode(
        json.dumps(
            [{"event": "Signed up", "properties": {"$email": "ann@example.com", "token": "t"}}]
        ).encode()
    ).decode()
    mixpanel = classify(obs("POST", "/track", "api-js.mixpanel.com", f"data={data}", (FORM,)))
    assert mixpanel.payload_types == (P.TELEMETRY,)
    assert _kinds(mixpanel) == {(K.EMAIL, "body")}


def test_password_in_query_is_a_credential() -> None:
    result = classify(obs("GET", "/api/login?user=ann&password=hunter2", "app.example"))
    assert result.payload_types == (P.ACCOUNT, P.CREDENTIAL)
    assert {(f.kind, f.where, f.redacted) for f in result.findings} == {
        (K.PASSWORD, "query", "********")
    }


# --- the compiled path rules agree with the rule table -------------------------------------

_FRAGMENTS = [
    "/v1", "/chat", "/completions", "/api", "/telemetry", "/resolve", "/main", "/x.gguf",
    "/models", "/gpt2", "/org", "/messages", ":generatecontent", ":embedcontent", "/v2",
    "/manifests", "/blobs", "/uploads", "/login", "/me", "/feedback", "/42", "/envelope",
    "/update", "/releases", "/latest", "/embeddings", "/files", "/audio", "/speech",
    "/images", "/generations", "/realtime", "/model", "/converse", "/rerank", "/generate",
]  # fmt: skip


def _reference(method: str, path: str) -> tuple[PayloadType, ...]:
    """The table read naively: the leftmost match of any rule's own pattern, ties by order."""
    import re

    from egresswatch.classify import payload as rules

    best: tuple[int, int] | None = None
    for index, (pattern, methods, _) in enumerate(rules._PATH_RULES):
        if methods is None or method in methods:
            m = re.search(pattern, path)
            if m is not None and (best is None or (m.start(), index) < best):
                best = (m.start(), index)
    return () if best is None else rules._PATH_RULES[best[1]][2]


@settings(max_examples=400)
@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
    st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=5),
)
def test_compiled_path_rules_match_the_table(method: str, parts: list[str]) -> None:
    from egresswatch.classify import payload as rules

    path = "".join(parts)
    assert rules.path_types(method, path) == _reference(method, path), path


def test_deeply_nested_json_is_judged() -> None:
    result = classify(
        obs("POST", "/x", None, b"[" * 200_000, (("content-type", "application/json"),))
    )
    assert result.payload_types == (P.OTHER,)
    assert "classify-error" not in result.flags
