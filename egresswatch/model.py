"""Frozen values shared by every part of egresswatch.

Sensors build an :class:`Observation`; the inspector enriches it into an
:class:`Assessment` (where the data goes, what it is) and asks the policy for a
:class:`Verdict`; sinks receive the resulting :class:`Decision`, and later a
:class:`FlowClosed` with the final byte counts of the same flow.

Nothing here does I/O or imports a framework: this module is the contract
between the sensors, the core and the sinks.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

#: ISO 3166 code used for "unknown" in metrics and reports (ISO 3166 user-assigned).
UNKNOWN_COUNTRY = "ZZ"

# Ids are a random per-process prefix plus a counter: unique across sensors and restarts
# like a uuid4 (80 random bits per process), but without a getrandom() call per flow on
# the hot path.
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def _reseed() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(10).hex()
    _ID_COUNTER = itertools.count(1)


# a forked child must not repeat its parent's ids
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A 32-hex-digit id, unique across processes (random prefix) and within one (counter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


class _Factory:
    """Default of a field with a default_factory in a quick ``__init__`` (shown as <factory>)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def _quick_init[T](cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores through its slots.

    The ``__init__`` dataclasses generates for a frozen class calls ``object.__setattr__``
    once per field, looked up anew each time; this one calls each slot's own setter, bound
    once. Same parameters, defaults and factories, same frozen instances afterwards; about
    40% cheaper for the 25 fields of an Observation, built on every request (issue #2).
    """
    names: list[str] = []
    params: list[str] = []
    lines: list[str] = []
    env: dict[str, Any] = {"_FACTORY": _FACTORY}
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain init fields are supported")
        names.append(f.name)
        if f.default is not MISSING:
            env[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        elif f.default_factory is not MISSING:
            env[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            lines.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _f_{f.name}()")
        else:
            params.append(f.name)
        env[f"_s_{f.name}"] = cls.__dict__[f.name].__set__  # the slot's member descriptor
    lines += [f"    _s_{n}(self, {n})" for n in names]
    source = (
        f"def __make__({', '.join(env)}):\n"
        f"  def __init__(self, {', '.join(params)}) -> None:\n"
        + "\n".join("  " + line.replace("\n", "\n  ") for line in lines)
        + "\n  return __init__\n"
    )
    scope: dict[str, Any] = {}
    exec(compile(source, f"<quick __init__ of {cls.__name__}>", "exec"), scope)
    init = scope["__make__"](**env)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class Sensor(enum.StrEnum):
    """Which part of egresswatch saw a flow."""

    PROXY = "proxy"
    SNIFFER = "sniffer"
    EXPLAIN = "explain"
    VERIFY = "verify"


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Protocol(enum.StrEnum):
    """The application protocol as far as the sensor could tell."""

    HTTP = "http"
    HTTPS = "https"
    TLS = "tls"
    QUIC = "quic"
    DNS = "dns"
    WEBSOCKET = "websocket"
    RAW = "raw"


class Stage(enum.StrEnum):
    """The point of a flow at which an observation was made (DESIGN.md, 'where they bite')."""

    CONNECT = "connect"
    CLIENTHELLO = "clienthello"
    REQUEST_HEADERS = "requestheaders"
    REQUEST = "request"
    RESPONSE = "response"
    MESSAGE = "message"
    PACKET = "packet"


class PayloadType(enum.StrEnum):
    """What a flow carries. A flow can have several."""

    CHAT_PROMPT = "chat-prompt"
    COMPLETION = "completion"
    EMBEDDING_INPUT = "embedding-input"
    FILE_UPLOAD = "file-upload"
    AUDIO = "audio"
    IMAGE = "image"
    TELEMETRY = "telemetry"
    FEEDBACK = "feedback"
    ACCOUNT = "account"
    CREDENTIAL = "credential"
    MODEL_DOWNLOAD = "model-download"
    MODEL_UPLOAD = "model-upload"
    UPDATE_CHECK = "update-check"
    DNS = "dns"
    TLS_OPAQUE = "tls-opaque"
    OTHER = "other"


class FindingKind(enum.StrEnum):
    """Sensitive items inside a payload."""

    EMAIL = "email"
    PHONE = "phone"
    PAYMENT_CARD = "payment-card"
    IBAN = "iban"
    NATIONAL_ID = "national-id"
    PASSWORD = "password"
    API_KEY = "api-key"
    PRIVATE_KEY = "private-key"
    JWT = "jwt"


class Action(enum.StrEnum):
    ALLOW = "allow"
    ALERT = "alert"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        """Order for 'the stricter of two': allow < alert < block."""
        return _ACTION_SEVERITY[self]


_ACTION_SEVERITY = {Action.ALLOW: 0, Action.ALERT: 1, Action.BLOCK: 2}


class Mode(enum.StrEnum):
    MONITOR = "monitor"
    ENFORCE = "enforce"


class GeoSource(enum.StrEnum):
    """Which resolver in the chain gave an address its country."""

    LOCAL = "local"  # private, loopback, link-local ...: not egress
    OVERRIDE = "override"  # lab overrides file (CIDR -> label)
    MAXMIND = "mmdb"  # a MaxMind-format database
    REGISTRY = "registry"  # RIR delegation data (iptocc)
    NONE = "none"  # nobody knew


class MatchKind(enum.StrEnum):
    OFFICIAL = "official"
    LOOKALIKE = "lookalike"


@_quick_init
@dataclass(frozen=True, slots=True)
class Observation:
    """What a sensor saw, normalised. Bodies are bounded by the sensor."""

    sensor: Sensor
    transport: Transport
    protocol: Protocol
    dst_addr: str | None
    dst_port: int | None
    time: float = field(default_factory=time.time)
    stage: Stage = Stage.REQUEST
    flow_id: str = field(default_factory=new_id)
    client_addr: str | None = None
    client_port: int | None = None
    #: an app hint: User-Agent, or the process name when known
    client_app: str | None = None
    client_pid: int | None = None
    client_process: str | None = None
    sni: str | None = None
    http_host: str | None = None
    #: the name that DNS gave for dst_addr (learned by a sensor's DNS cache)
    dns_name: str | None = None
    alpn: tuple[str, ...] = ()
    ech: bool = False
    method: str | None = None
    #: path with query string, as sent; redacted before it is stored
    path: str | None = None
    #: header names in lower case, in order; repeated names repeat
    headers: tuple[tuple[str, str], ...] = ()
    #: the first bytes of the body, as sent (possibly content-encoded)
    body: bytes = b""
    body_truncated: bool = False
    bytes_out: int = 0
    bytes_in: int = 0
    #: what the sensor itself knows of the flow ("doh", "dot", "doq" ...); become flags
    tags: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        """First value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def names(self) -> tuple[str, ...]:
        """The distinct names this flow goes by, most authoritative first."""
        out: list[str] = []
        for name in (self.http_host, self.sni, self.dns_name):
            if name and name not in out:
                out.append(name)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class GeoAnswer:
    """The address's country and network, and who said so."""

    country: str | None
    source: GeoSource
    asn: int | None = None
    org: str | None = None
    #: free-form label from a lab override ("lab-eu", "vpn-exit") when one matched
    label: str | None = None

    @property
    def is_local(self) -> bool:
        return self.source is GeoSource.LOCAL

    @property
    def country_or_unknown(self) -> str:
        return self.country or UNKNOWN_COUNTRY


@dataclass(frozen=True, slots=True)
class Service:
    """A catalogued AI service or telemetry endpoint and the legal home of its operator."""

    id: str
    name: str
    operator: str
    operator_country: str
    category: str
    domains: tuple[str, ...]
    contracting_entity: str | None = None
    contracting_country: str | None = None
    residency: str | None = None
    #: API path prefixes or shapes this service uses ("/v1/chat/completions")
    api_paths: tuple[str, ...] = ()
    #: brand words used to spot lookalikes ("deepseek")
    brands: tuple[str, ...] = ()
    #: names of fields whose value is not verified against a primary source
    unverified: tuple[str, ...] = ()
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceMatch:
    """A host name matched to a catalogued service, officially or as a lookalike."""

    service: Service
    kind: MatchKind
    host: str
    #: the catalog domain (official) or brand (lookalike) that matched
    matched: str

    @property
    def official(self) -> bool:
        return self.kind is MatchKind.OFFICIAL


@_quick_init
@dataclass(frozen=True, slots=True)
class Finding:
    """A sensitive item in a payload, kept only in redacted form."""

    kind: FindingKind
    redacted: str
    #: where it was found: "body", "path", "header:authorization" ...
    where: str
    #: a finer label ("openai", "aws", "visa", "cn-ric", "us-ssn")
    detail: str | None = None


@_quick_init
@dataclass(frozen=True, slots=True)
class Assessment:
    """An observation enriched with where it goes and what it carries; the policy's input."""

    observation: Observation
    #: the normalised name the flow was judged by (None for bare addresses)
    host: str | None
    geo: GeoAnswer
    service: ServiceMatch | None
    payload_types: tuple[PayloadType, ...]
    findings: tuple[Finding, ...]
    #: notable facts for humans and rules: "lookalike", "name-mismatch", "ech", ...
    flags: tuple[str, ...] = ()

    @property
    def operator_country(self) -> str | None:
        """Legal home of the operator, only for official matches."""
        if self.service is not None and self.service.official:
            return self.service.service.operator_country
        return None


@_quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer: what to do, which rule said so, and why in one sentence."""

    action: Action
    rule: str
    reason: str
    mode: Mode

    @property
    def enforced(self) -> bool:
        """True when the sensor must actually stop the flow."""
        return self.action is Action.BLOCK and self.mode is Mode.ENFORCE

    @property
    def would_block(self) -> bool:
        """A block recorded in monitor mode: the flow went on."""
        return self.action is Action.BLOCK and self.mode is Mode.MONITOR

    @property
    def label(self) -> str:
        """allow | alert | block | would-block: the verdict as recorded and counted."""
        return "would-block" if self.would_block else str(self.action)


@_quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """What the inspector returns for one observation."""

    assessment: Assessment
    verdict: Verdict
    id: str = field(default_factory=new_id)
    #: seconds the inspector took
    elapsed: float = 0.0

    @property
    def observation(self) -> Observation:
        return self.assessment.observation


@_quick_init
@dataclass(frozen=True, slots=True)
class FlowClosed:
    """The end of a flow already decided: final byte counts for the sinks."""

    flow_id: str
    sensor: Sensor
    time: float
    bytes_out: int
    bytes_in: int
    duration: float
    #: HTTP status or a short error such as "reset", when known
    status: str | None = None
