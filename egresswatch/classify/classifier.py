"""The classifier: one :class:`~egresswatch.model.Observation` in, one :class:`Classification` out.

It puts together the body decoding (:mod:`.body`), the payload-type rules (:mod:`.payload`)
and the detectors (:mod:`.findings`). It is pure and never raises: whatever a client sends, the
inspector gets an answer (at worst ``other`` with the flag ``classify-error``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import NamedTuple
from urllib.parse import parse_qsl

from egresswatch.classify import body as bodymod
from egresswatch.classify import findings as fmod
from egresswatch.classify import payload as rules
from egresswatch.model import Finding, FindingKind, Observation, PayloadType, Protocol

P = PayloadType

_ORDER = {t: i for i, t in enumerate(PayloadType)}
#: Secrets whose presence *in the payload* makes it a ``credential`` payload.
_SECRET_KINDS = frozenset(
    {FindingKind.PASSWORD, FindingKind.API_KEY, FindingKind.PRIVATE_KEY, FindingKind.JWT}
)
#: Where a secret counts as payload (a key in the Authorization header of an API call does not).
_PAYLOAD_WHERE = frozenset({"body", "query", "path"})
_OPAQUE = frozenset({Protocol.TLS, Protocol.QUIC})
_SEND = frozenset({"POST", "PUT", "PATCH"})
#: query parameters bounded like bodies: a pathological URL is still judged quickly.
_MAX_QUERY_FIELDS = 256

# Markers of images and audio inside chat requests: OpenAI "image_url"/"input_image"/
# "input_audio" content parts, Ollama "images", Gemini inline_data / Live API realtimeInput
# mime types, data: URLs, OpenAI Realtime "input_audio_buffer.append" events.
_IMAGE_MARKERS = (b'"image_url"', b'"input_image"', b'"images"', b"data:image/", b'"image/')
_AUDIO_MARKERS = (b'"input_audio"', b"data:audio/", b'"audio/', b'"input_audio_buffer.append"')
#: With a password, one of these members anywhere in a JSON body makes it a sign-up or login.
_IDENTITY_MEMBERS = (b'"email"', b'"username"', b'"login"', b'"user_name"', b'"phone"')


class Classification(NamedTuple):
    """What a request carries: payload types (enum order, no duplicates), findings, flags.

    A NamedTuple rather than a frozen dataclass: it is built once per request on the hot
    path, and a frozen dataclass's ``__init__`` costs several times more.
    """

    payload_types: tuple[PayloadType, ...]
    findings: tuple[Finding, ...]
    flags: tuple[str, ...] = ()


def _host(obs: Observation) -> str:
    for name in (obs.http_host, obs.sni, obs.dns_name):
        if name:
            host = name.lower().rstrip(".")
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def _split_target(target: str) -> tuple[str, str]:
    """Path and query of a request target (origin-form or absolute-form, RFC 9112 §3.2)."""
    if target.startswith(("http://", "https://")):
        # by hand: urlsplit raises on a malformed authority ("http://[") and this must not
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path.partition("#")[0], query.partition("#")[0]


def _json_keys(text: bytes) -> frozenset[str]:
    """Top-level keys of a JSON object, or of the first object of a JSON array / batch."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested 100,000 deep
        return frozenset()
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]
    if not isinstance(doc, dict):
        return frozenset()
    keys = frozenset(k for k in doc if isinstance(k, str))
    batch = doc.get("batch")
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        keys |= frozenset(k for k in batch[0] if isinstance(k, str))
    return keys


class _Request:
    """Mutable scratch state of one classification."""

    __slots__ = ("findings", "flags", "method", "types")

    def __init__(self, method: str) -> None:
        self.method = method
        self.types: list[PayloadType] = []
        self.findings: fmod.Findings = {}
        self.flags: list[str] = []


def _media_type(kind: str, method: str) -> PayloadType:
    if kind == bodymod.AUDIO:
        return P.AUDIO
    if kind == bodymod.IMAGE:
        return P.IMAGE
    if kind == bodymod.MODEL:
        return P.MODEL_UPLOAD if method in _SEND else P.MODEL_DOWNLOAD
    return P.FILE_UPLOAD


def _body_multipart(req: _Request, data: bytes, boundary: str | None) -> None:
    fields: list[tuple[str, str]] = []
    for part in bodymod.parse_multipart(data, boundary or ""):
        binary = bodymod.looks_binary(part.data)
        if part.filename or (part.content_type and not bodymod.is_text_type(part.content_type)):
            kind = bodymod.media_kind(part.content_type, part.filename, part.data)
            req.types.append(_media_type(kind, req.method))
            if binary or kind != bodymod.DOCUMENT:
                continue
            # an uploaded text file (notes, code, a .env): its secrets leave with it
            fmod.scan_bytes(part.data, "body", req.findings)
        elif not binary:
            value = bodymod.to_text(part.data)
            fields.append((part.name or "", value))
            fmod.scan_text(value, "body", req.findings)
    _fields(req, fields)


def _fields(req: _Request, fields: list[tuple[str, str]]) -> None:
    fmod.scan_fields(fields, "body", req.findings)
    has_password = any(fmod.field_kind(n) is FindingKind.PASSWORD for n, v in fields if v)
    if rules.field_account((n for n, _ in fields), has_password):
        req.types.append(P.ACCOUNT)
    for name, value in fields:
        if name == "grant_type" and value in ("password", "client_credentials"):
            req.types.append(P.ACCOUNT)


def _body_form(req: _Request, text: str) -> None:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        pairs = []
        req.flags.append("too-many-fields")
    for name, value in pairs:
        fmod.scan_text(value, "body", req.findings)
        if name == "data" and len(value) >= 16:
            # Mixpanel's /track and /engage send their JSON base64-encoded in a data= field.
            decoded = _base64_json(value)
            if decoded:
                fmod.scan_bytes(decoded, "body", req.findings)
    _fields(req, pairs)


def _base64_json(value: str) -> bytes | None:
    try:
        raw = base64.b64decode(value[: bodymod.MAX_BODY] + "=" * (-len(value) % 4), altchars=b"-_")
    except (ValueError, binascii.Error):
        return None
    return raw if raw[:1] in (b"{", b"[") else None


def _utf8(data: bytes, charset: str | None) -> bytes:
    """The body as UTF-8 bytes (the scanners' alphabet); a no-op for UTF-8 and ASCII."""
    if not charset or charset.lower().replace("-", "") in ("utf8", "usascii", "ascii"):
        return data
    return bodymod.to_text(data, charset).encode("utf-8", "replace")


def _body_json(req: _Request, data: bytes, path_typed: bool) -> None:
    if fmod.scan_bytes(data, "body", req.findings):
        req.flags.append("scan-limit")
    fmod.scan_json(data, "body", req.findings)
    if not path_typed:
        keys = _json_keys(data)
        req.types.extend(rules.json_types(keys))
        has_password = any(
            f.kind is FindingKind.PASSWORD and f.where == "body" for f in req.findings.values()
        )
        # identity and password may sit in a nested object ({"user": {"email", "password"}})
        if rules.field_account(keys, has_password) or (
            has_password and any(data.find(m) >= 0 for m in _IDENTITY_MEMBERS)
        ):
            req.types.append(P.ACCOUNT)
    if P.CHAT_PROMPT in req.types or P.COMPLETION in req.types:
        # one substring pass each in the common case (no media in the chat); find, not
        # ``in``, for bytes (see findings.scan_bytes)
        if data.find(b"image") >= 0 and any(data.find(m) >= 0 for m in _IMAGE_MARKERS):
            req.types.append(P.IMAGE)
        if data.find(b"audio") >= 0 and any(data.find(m) >= 0 for m in _AUDIO_MARKERS):
            req.types.append(P.AUDIO)


def _body(req: _Request, obs: Observation, path_typed: bool) -> None:
    decoded = bodymod.decode(obs.body, obs.header("content-encoding"))
    req.flags.extend(decoded.flags)
    data = decoded.data
    if not data:
        return
    mime, params = bodymod.split_content_type(obs.header("content-type"))
    charset = params.get("charset")
    if mime.startswith("multipart/"):
        _body_multipart(req, data, params.get("boundary"))
        return
    if mime == "application/x-www-form-urlencoded":
        _body_form(req, bodymod.to_text(data, charset))
        return
    head = data[:1]
    if bodymod.is_json_type(mime) or (head in (b"{", b"[") and not bodymod.looks_binary(data)):
        _body_json(req, _utf8(data, charset), path_typed)
        return
    kind = bodymod.sniff(data)
    if kind is None and mime.startswith(("audio/", "image/")):
        kind = bodymod.AUDIO if mime.startswith("audio/") else bodymod.IMAGE
    if kind is not None:
        req.types.append(_media_type(kind, req.method))
        return
    if bodymod.is_text_type(mime) or not bodymod.looks_binary(data):
        utf8 = _utf8(data, charset)
        if fmod.scan_bytes(utf8, "body", req.findings):
            req.flags.append("scan-limit")
        fmod.scan_json(utf8, "body", req.findings)
    elif (
        not path_typed
        and req.method in _SEND
        and mime
        not in (
            "application/x-protobuf",
            "application/protobuf",
            "application/grpc",
        )
    ):
        # Opaque bytes sent to an unknown path: somebody is uploading a file.
        req.types.append(P.FILE_UPLOAD)


def _query(req: _Request, query: str) -> None:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        pairs = []
        req.flags.append("too-many-fields")
    for name, value in pairs:
        # Google APIs take the API key as ?key= (cloud.google.com/docs/authentication/api-keys):
        # that is authentication like a header, not a secret carried as payload.
        where = "query:key" if name == "key" else "query"
        fmod.scan_text(value, where, req.findings)
    fmod.scan_fields(((n, v) for n, v in pairs if n != "key"), "query", req.findings)


def _classify(obs: Observation, category: str | None) -> Classification:
    if obs.protocol is Protocol.WEBSOCKET and obs.body:
        # A client's WebSocket message is data sent, whatever the handshake's method was.
        method = "POST"
    else:
        method = (obs.method or "").upper()
    req = _Request(method)
    if obs.body_truncated:
        req.flags.append("body-truncated")

    if obs.protocol is Protocol.DNS:
        req.types.append(P.DNS)
    elif not method and obs.protocol in _OPAQUE:
        # The sniffer sees only names and volume: telemetry and update services are still
        # recognisable by whom they talk to.
        req.types.append(P.TLS_OPAQUE)
        if category in ("telemetry", "update-service"):
            req.types.extend(rules.category_types(category, method, False))
        req.types.extend(t for t in rules.host_types("", _host(obs)) if t is P.TELEMETRY)
    else:
        path, query = _split_target(obs.path or "")
        ptypes = rules.path_types(method, path.lower())
        if not ptypes and obs.header("x-tc-action") == "ChatCompletions":
            # Tencent Cloud API 3.0 (Hunyuan) names the action in a header, the path is "/".
            ptypes = (P.CHAT_PROMPT,)
        req.types.extend(ptypes)
        req.types.extend(rules.host_types(method, _host(obs)))
        if obs.body:
            _body(req, obs, bool(ptypes))
        if query:
            _query(req, query)
        if len(path) >= 20:  # no key or token format is shorter
            fmod.scan_keys(path, "path", req.findings)
        fmod.scan_headers(obs.headers, req.findings)
        if not req.types or category in ("telemetry", "update-service"):
            req.types.extend(rules.category_types(category, method, bool(obs.body)))
        if P.TELEMETRY in req.types:
            ua = obs.header("user-agent") or ""
            # huggingface_hub packs the telemetry data into the User-Agent (_headers.py).
            if ua.count(";") >= 2 and ua.count("/") >= 2:
                req.flags.append("data-in-user-agent")

    if any(f.kind in _SECRET_KINDS and f.where in _PAYLOAD_WHERE for f in req.findings.values()):
        req.types.append(P.CREDENTIAL)
    types = req.types
    if not types:
        ordered: tuple[PayloadType, ...] = (P.OTHER,)
    elif len(types) == 1:
        ordered = (types[0],)
    else:
        ordered = tuple(sorted(dict.fromkeys(types), key=_ORDER.__getitem__))
    return Classification(
        ordered,
        tuple(req.findings.values()) if req.findings else (),
        tuple(dict.fromkeys(req.flags)) if req.flags else (),
    )


def classify(obs: Observation, category: str | None = None) -> Classification:
    """Payload types, sensitive findings and flags of one observation. Never raises.

    ``category`` is the catalog category of the matched service ("telemetry", "model-hub",
    "update-service", "chat-api" ...), used as a hint where the request's shape says nothing.
    """
    try:
        return _classify(obs, category)
    except Exception:  # never let one odd request take the inspector down
        return Classification((P.OTHER,), (), ("classify-error",))
