"""Payload types from the shape of a request: method, path, host, content and catalog category.

The rules are tables, checked in a fixed order, each a cheap test:

1. **API paths** (one compiled alternation, matched on the lower-cased path): OpenAI-compatible
   APIs under any prefix (``/v1``, ``/api/paas/v4``, ``/compatible-mode/v1``, vLLM, LM Studio,
   DeepSeek, Moonshot ...), Anthropic, Gemini, Ollama, the Hugging Face hub, OCI registries,
   analytics intakes, feedback, account and update endpoints.
2. **Hosts** of analytics and model-file CDNs (label-boundary suffix match).
3. **Body shapes** (top-level JSON keys; multipart parts; form fields; magic numbers).
4. **Catalog category** of the matched service as a hint.

Sources for paths: OpenAI API reference (platform.openai.com/docs/api-reference), Anthropic
Messages API, Gemini API reference (``models.generateContent`` etc.), Ollama ``docs/api.md``,
huggingface_hub ``file_download.py`` / ``hf_api.py`` / ``utils/_telemetry.py``, OCI Distribution
Spec v1.1 §"Endpoints", Sentry "Envelopes" developer docs, PostHog/Segment/Mixpanel/Amplitude
HTTP API docs, Datadog browser-intake docs, OTLP/HTTP (opentelemetry-proto ``otlp.md``),
vLLM ``vllm/usage/usage_lib.py``, gradio ``analytics.py`` (see /work/shared/reference).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from egresswatch.model import PayloadType as P

_ANY = None
_SEND = frozenset({"POST", "PUT", "PATCH"})
_READ = frozenset({"GET", "HEAD"})
_WRITE = frozenset({"POST", "PUT", "PATCH"})

# (pattern on the lower-cased path without query, methods or None for any, payload types).
# First match wins, so more specific shapes come first.
_PATH_RULES: tuple[tuple[str, frozenset[str] | None, tuple[P, ...]], ...] = (
    # --- telemetry and analytics (also when they borrow an API host) ---
    # huggingface_hub utils/_telemetry.py: HEAD {ENDPOINT}/api/telemetry/<topic>; gradio rides it.
    (r"/api/telemetry(?:/|$)", _ANY, (P.TELEMETRY,)),
    (r"/gradio-[a-z\-]*(?:analytics|telemetry)", _ANY, (P.TELEMETRY,)),
    # Sentry: /api/<project>/envelope/ (current SDKs), /store/, /minidump/, /security/.
    (
        r"^/api/\d+/(?:envelope|store|minidump|security|csp-report|unreal)(?:/|$)",
        _ANY,
        (P.TELEMETRY,),
    ),
    (r"^/api/\d+/user-feedback(?:/|$)", _ANY, (P.FEEDBACK,)),
    # Datadog browser intake: /api/v2/rum, /api/v2/logs, /api/v2/replay (dd-trace-js, rum SDK).
    (r"^/api/v2/(?:rum|logs|replay|spans)(?:/|$)", _SEND, (P.TELEMETRY,)),
    # OTLP/HTTP: POST /v1/traces, /v1/metrics, /v1/logs (CrewAI, many SDKs).
    (r"^/v1/(?:traces|metrics|logs)$", _SEND, (P.TELEMETRY,)),
    # Statsig SDKs; Amplitude HTTP V2 API; Google Analytics (gtag and Measurement Protocol).
    (r"^/v1/(?:rgstr|log_event|sdk_exception)(?:/|$)", _ANY, (P.TELEMETRY,)),
    (r"^/(?:2/httpapi|batch/2|httpapi)(?:/|$)", _SEND, (P.TELEMETRY,)),
    (r"^/(?:g|mp|j)/collect$", _ANY, (P.TELEMETRY,)),
    (r"/(?:telemetry|analytics|usage[_\-]?stats)(?:/|$)", _ANY, (P.TELEMETRY,)),
    # --- feedback ---
    (r"/(?:message_)?feedback(?:s)?(?:/|$)|/ratings?(?:/|$)", _ANY, (P.FEEDBACK,)),
    # --- chat, completions, embeddings (OpenAI-compatible under any prefix) ---
    (r"/chat/completions$", _SEND, (P.CHAT_PROMPT,)),
    (r"/responses$", _SEND, (P.CHAT_PROMPT,)),
    # Anthropic /v1/messages (+count_tokens, batches); OpenAI Assistants /threads/<id>/messages.
    (r"/messages(?:/count_tokens|/batches)?$", _SEND, (P.CHAT_PROMPT,)),
    (r"/threads(?:/runs)?$", _SEND, (P.CHAT_PROMPT,)),
    # Gemini: models/<m>:generateContent, :streamGenerateContent, :countTokens (REST) and
    # …GenerativeService/GenerateContent (gRPC); Vertex publishers' :rawPredict /
    # :streamRawPredict (Anthropic on Vertex).
    (
        r"[:/](?:stream)?generatecontent$|[:/]counttokens$|:(?:stream)?rawpredict$",
        _SEND,
        (P.CHAT_PROMPT,),
    ),
    (r"[:/](?:batch)?embedcontents?$|:embedtext$", _SEND, (P.EMBEDDING_INPUT,)),
    # AWS Bedrock runtime: /model/<id>/invoke, invoke-with-response-stream, converse(-stream).
    (
        r"^/model/[^/]+/(?:invoke|invoke-with-response-stream|converse|converse-stream)$",
        _SEND,
        (P.CHAT_PROMPT,),
    ),
    # Vendors' own chat shapes: Baidu ERNIE (wenxinworkshop/chat/<model>), MiniMax
    # (text/chatcompletion_v2), DashScope native (services/aigc/*-generation/generation).
    (
        r"/wenxinworkshop/chat/[^/]+$|/chatcompletion(?:_v2|_pro)?$"
        r"|/services/aigc/(?:text|multimodal)-generation/generation$",
        _SEND,
        (P.CHAT_PROMPT,),
    ),
    (r"/services/embeddings/", _SEND, (P.EMBEDDING_INPUT,)),
    (r":predict$|:generatetext$|:generatemessage$", _SEND, (P.COMPLETION,)),
    # Realtime sessions over WebSocket: OpenAI /v1/realtime, Gemini Live API
    # (…GenerativeService.BidiGenerateContent); each client message is judged on its own.
    (r"/realtime$|bidigeneratecontent$", _SEND, (P.CHAT_PROMPT,)),
    # Ollama docs/api.md.
    (r"^/api/chat$", _SEND, (P.CHAT_PROMPT,)),
    (r"^/api/generate$", _SEND, (P.COMPLETION,)),
    (r"^/api/embed(?:dings)?$", _SEND, (P.EMBEDDING_INPUT,)),
    (r"^/api/pull$", _SEND, (P.MODEL_DOWNLOAD,)),
    (r"^/api/(?:push|create)$", _SEND, (P.MODEL_UPLOAD,)),
    (r"^/api/blobs/sha256[:\-][0-9a-f]+$", frozenset({"POST", "PUT", "HEAD"}), (P.MODEL_UPLOAD,)),
    (r"/(?:v1/)?complete$|/completions$", _SEND, (P.COMPLETION,)),
    # Cohere (/v1/chat, /v2/chat), iFlytek Spark (/v3.5/chat over WebSocket) and the like.
    (r"/chat$", _SEND, (P.CHAT_PROMPT,)),
    # Hugging Face TGI (/generate, /generate_stream), Replicate (/predictions).
    (r"/generate(?:_stream)?$|/predictions$", _SEND, (P.COMPLETION,)),
    (r"/embeddings?$|/embed$", _SEND, (P.EMBEDDING_INPUT,)),
    # Rerank (Cohere, Jina, Voyage): a query and the documents to rank leave for retrieval.
    (r"/rerank$", _SEND, (P.EMBEDDING_INPUT,)),
    # --- media and files ---
    (r"/audio/(?:transcriptions|translations|speech)$|/audio$", _SEND, (P.AUDIO,)),
    (r"/images/(?:generations|edits|variations)$", _SEND, (P.IMAGE,)),
    (r"/files$|/uploads(?:/[^/]+/parts)?$|^/upload/.*/files$", _SEND, (P.FILE_UPLOAD,)),
    # --- model hubs and registries ---
    # huggingface_hub: {ENDPOINT}/{repo_id}/resolve/{revision}/{filename} (HEAD for metadata,
    # then GET), datasets/ and spaces/ prefixes; hf_api's model_info and listing calls.
    (r"/resolve/[^/]+/.", _READ, (P.MODEL_DOWNLOAD,)),
    (
        r"^/api/(?:models|datasets|spaces)/[^/]+/[^/]+/(?:preupload|commit)/",
        _WRITE,
        (P.MODEL_UPLOAD,),
    ),
    (r"^/api/repos/create$|\.git/info/lfs/objects/batch$", _WRITE, (P.MODEL_UPLOAD,)),
    (
        r"^/api/(?:models|datasets|spaces)/[^/]+(?:/[^/]+)?(?:/(?:revision|tree|paths-info)/.*)?$",
        _READ,
        (P.MODEL_DOWNLOAD,),
    ),
    (r"^/api/(?:models|datasets|spaces)/[^/]+/[^/]+/paths-info/", _WRITE, (P.MODEL_DOWNLOAD,)),
    # OCI Distribution Spec (registry.ollama.ai and others).
    (r"^/v2/.+/blobs/uploads/", _ANY, (P.MODEL_UPLOAD,)),
    (r"^/v2/.+/(?:manifests|blobs)/[^/]+$", _READ, (P.MODEL_DOWNLOAD,)),
    (r"^/v2/.+/manifests/[^/]+$", _WRITE, (P.MODEL_UPLOAD,)),
    (
        r"\.(?:safetensors|gguf|ggml|onnx|ckpt|pth?|h5|tflite|mlmodel|msgpack|npz)$",
        _READ,
        (P.MODEL_DOWNLOAD,),
    ),
    (
        r"\.(?:safetensors|gguf|ggml|onnx|ckpt|pth?|h5|tflite|mlmodel|msgpack|npz)$",
        _WRITE,
        (P.MODEL_UPLOAD,),
    ),
    # --- update checks ---
    # Ollama app updater (/api/update), its model recommendations, gradio /pkg-version,
    # Electron/Squirrel feeds, Sparkle appcasts, GitHub "latest release", PyPI JSON API.
    # huggingface_hub ≥ 1.x: utils/_detect_agent.py fetches the agent-harness registry daily.
    (
        r"^/api/update$|/api/experimental/model-recommendations$|/pkg-version$"
        r"|^/api/agent-harnesses$",
        _READ,
        (P.UPDATE_CHECK,),
    ),
    (
        r"/releases/latest$|/latest(?:-[a-z]+)?\.(?:yml|json)$|/appcast\.xml$|/releases$"
        r"|/check[_\-]?updates?$|^/pypi/[^/]+/json$|/updates?(?:\.json)?$",
        _READ,
        (P.UPDATE_CHECK,),
    ),
    # --- account: sign-up, login, profile, token exchange ---
    (
        r"/(?:signup|sign[_\-]up|register|registration|login|log[_\-]in|signin|sign[_\-]in|logout"
        r"|oauth2?/token|auth/token|token/refresh|password(?:[_\-]reset)?|reset[_\-]password"
        r"|profile|accounts?|users/me|me|whoami(?:-v2)?|session)(?:/|$)",
        _ANY,
        (P.ACCOUNT,),
    ),
)


def _top_level_alternatives(pattern: str) -> list[str]:
    """Split a pattern at the "|" that are not inside (...) or [...]."""
    out: list[str] = []
    depth = 0
    in_class = False
    start = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _branches(index: int, pattern: str) -> tuple[list[str], list[str]]:
    """Anchored and unanchored branches of a rule, each tagged with an empty named group.

    CPython's regex engine skips ahead to the possible first characters of a search only when
    every branch of the alternation starts with a plain literal; a named group, a class or
    "^" in front makes it try every branch at every position (45 µs a path instead of a few).
    So each branch gets its group *after* its first literal, "[:/]x" becomes ":x" and "/x",
    and "^" branches go to a separate pattern used with match().
    """
    anchored: list[str] = []
    floating: list[str] = []
    for k, alt in enumerate(_top_level_alternatives(pattern)):
        tag = f"(?P<r{index}_{k}>)"
        if alt.startswith("^"):
            anchored.append(tag + alt[1:])
        elif alt.startswith("[:/]"):
            floating.append(":" + tag + alt[4:])
            floating.append("/" + f"(?P<r{index}_{k}b>)" + alt[4:])
        elif alt.startswith("\\"):
            floating.append(alt[:2] + tag + alt[2:])
        else:
            floating.append(alt[:1] + tag + alt[1:])
    return anchored, floating


def _compile_for(method: str | None) -> tuple[re.Pattern[str], re.Pattern[str]]:
    # One pair of alternations per method: the rules that do not apply are left out.
    anchored: list[str] = []
    floating: list[str] = []
    for i, (pat, methods, _) in enumerate(_PATH_RULES):
        if methods is None or (method is not None and method in methods):
            a, f = _branches(i, pat)
            anchored += a
            floating += f
    return re.compile("|".join(anchored)), re.compile("|".join(floating))


_PATH_RES: dict[str | None, tuple[re.Pattern[str], re.Pattern[str]]] = {
    m: _compile_for(m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", None)
}


def _rule_index(m: re.Match[str] | None) -> int:
    if m is None or m.lastgroup is None:
        return len(_PATH_RULES)
    return int(m.lastgroup[1:].split("_", 1)[0])


_PATH_CACHE: dict[tuple[str, str], tuple[P, ...]] = {}
_CACHE_SIZE = 4096


def path_types(method: str, path: str) -> tuple[P, ...]:
    """Payload types implied by an API path (lower case, no query) and the method."""
    key = (method, path)
    hit = _PATH_CACHE.get(key)
    if hit is not None:
        return hit
    anchored, floating = _PATH_RES.get(method) or _PATH_RES[None]
    # The leftmost shape wins, ties go to the earlier rule; "^" rules sit at position 0.
    first = _rule_index(anchored.match(path))
    later = floating.search(path)
    if later is not None and (later.start() == 0 or first == len(_PATH_RULES)):
        first = min(first, _rule_index(later))
    types = _PATH_RULES[first][2] if first < len(_PATH_RULES) else ()
    if len(_PATH_CACHE) >= _CACHE_SIZE:
        _PATH_CACHE.clear()  # API clients reuse a handful of paths: a refill is cheap
    _PATH_CACHE[key] = types
    return types


# --- hosts ---

#: Registrable suffixes of analytics and crash-report intakes (ai-services.md §4).
_TELEMETRY_HOSTS = frozenset(
    {
        "ingest.sentry.io",
        "ingest.us.sentry.io",
        "ingest.de.sentry.io",
        "posthog.com",
        "i.posthog.com",
        "segment.io",
        "api.segment.io",
        "mixpanel.com",
        "amplitude.com",
        "browser-intake-datadoghq.com",
        "browser-intake-datadoghq.eu",
        "browser-intake-us3-datadoghq.com",
        "browser-intake-us5-datadoghq.com",
        "stats.vllm.ai",
        "statsig.com",
        "statsigapi.net",
        "oaistatsig.com",
        "google-analytics.com",
        "cloudflareinsights.com",
        "scarf.sh",
        "telemetry.crewai.com",
        "usefathom.com",
        "copilot-telemetry.githubusercontent.com",
        "copilot-telemetry-service.githubusercontent.com",
    }
)

#: Hosts that only serve model files (huggingface_hub LFS/Xet CDNs, Ollama's registry).
_MODEL_FILE_HOSTS = frozenset(
    {
        "cdn-lfs.huggingface.co",
        "cdn-lfs.hf.co",
        "cdn-lfs-us-1.hf.co",
        "cdn-lfs-eu-1.hf.co",
        "xethub.hf.co",
        "cas-bridge.xethub.hf.co",
        "registry.ollama.ai",
    }
)


def _suffixes(host: str) -> Iterable[str]:
    start = 0
    while True:
        yield host[start:]
        dot = host.find(".", start)
        if dot < 0:
            return
        start = dot + 1


_HOST_CACHE: dict[str, str] = {}


def _host_kind(host: str) -> str:
    hit = _HOST_CACHE.get(host)
    if hit is not None:
        return hit
    kind = ""
    for suffix in _suffixes(host):
        if suffix in _TELEMETRY_HOSTS:
            kind = "telemetry"
            break
        if suffix in _MODEL_FILE_HOSTS or suffix.startswith("cdn-lfs"):
            kind = "model"
            break
    if len(_HOST_CACHE) >= _CACHE_SIZE:
        _HOST_CACHE.clear()
    _HOST_CACHE[host] = kind
    return kind


def host_types(method: str, host: str) -> tuple[P, ...]:
    """Payload types implied by the destination host alone."""
    if not host:
        return ()
    kind = _host_kind(host)
    if kind == "telemetry":
        return (P.TELEMETRY,)
    if kind == "model":
        return (P.MODEL_DOWNLOAD,) if method in _READ else (P.MODEL_UPLOAD,)
    return ()


# --- body shapes ---

_ACCOUNT_IDS = frozenset({"email", "username", "user", "login", "user_name", "phone", "mobile"})
_FEEDBACK_KEYS = frozenset({"feedback", "rating", "thumbs_up", "thumbs", "score", "vote"})
_CHAT_KEYS = frozenset({"messages", "contents", "conversation", "history"})


def json_types(keys: frozenset[str]) -> tuple[P, ...]:
    """Payload types from the top-level keys of a JSON object (or of a batch's first item)."""
    out: list[P] = []
    if (
        # vLLM usage_lib.py: {"uuid", "provider", "num_cpu", ..., "vllm_version", "log_time"}
        "vllm_version" in keys
        or {"uuid", "log_time"} <= keys
        # PostHog capture/batch: "distinct_id" with "event"/"batch"/"api_key"
        or ("distinct_id" in keys and keys & {"event", "batch", "api_key", "events"})
        # Segment HTTP tracking API: "anonymousId"/"userId" with "event"/"type"/"writeKey"
        or (
            keys & {"anonymousId", "userId", "writeKey"}
            and keys & {"event", "type", "batch", "traits", "writeKey"}
        )
        # Amplitude HTTP V2 API: {"api_key", "events"}; Mixpanel /track: {"event", "properties"}
        or {"api_key", "events"} <= keys
        or {"event", "properties"} <= keys
    ):
        out.append(P.TELEMETRY)
    if keys & _CHAT_KEYS:
        out.append(P.CHAT_PROMPT)
    elif "prompt" in keys or "inputs" in keys:  # "inputs": HF Inference API and TGI
        out.append(P.COMPLETION)
    if keys & _FEEDBACK_KEYS and keys & {
        "message_id",
        "conversation_id",
        "run_id",
        "trace_id",
        "comment",
        "response_id",
        "feedback",
    }:
        out.append(P.FEEDBACK)
    return tuple(out)


def field_account(names: Iterable[str], has_password: bool) -> bool:
    """A form or object with an identity field and a password is a sign-up or login."""
    return has_password and any(n.lower() in _ACCOUNT_IDS for n in names)


# --- catalog categories (catalog.md: the fixed, documented set) ---

_CHAT_CATEGORIES = frozenset(
    {"chat-api", "chat-app", "inference-gateway", "coding-assistant", "cloud-ai"}
)
_HUB_CATEGORIES = frozenset({"model-hub", "model-registry"})


def category_types(category: str | None, method: str, has_body: bool) -> tuple[P, ...]:
    """Payload types a catalog category implies when the request's shape said nothing."""
    if not category:
        return ()
    if category == "telemetry":
        return (P.TELEMETRY,)
    if category == "update-service":
        return (P.UPDATE_CHECK,)
    if category in _HUB_CATEGORIES:
        if method in _READ:
            return (P.MODEL_DOWNLOAD,)
        if has_body and method in _WRITE:
            return (P.MODEL_UPLOAD,)
    if category in _CHAT_CATEGORIES and has_body and method in _SEND:
        # Data sent to a chat service on a path we do not know is most likely a prompt.
        return (P.CHAT_PROMPT,)
    return ()
