"""The service catalog: which AI service or telemetry endpoint a host name belongs to.

A shipped TOML file (``egresswatch/data/catalog.toml``, format in ``docs/catalog.md``)
maps domains to services and to the legal home of each operator; users add or
override entries with their own files. :meth:`Catalog.match` answers the
inspector's question "whose host is this?" in three ways:

* **official**: the host is, or is a subdomain of, a catalogued domain. The most
  specific catalogued domain wins (``router.huggingface.co`` beats
  ``huggingface.co``); matching is on label boundaries, so ``notdeepseek.com``
  is not ``deepseek.com``.
* **lookalike**: the host is not official but carries a service's brand in its
  registrable label (``deepseek.chat``), is a homograph of an official domain
  (``xn--...`` that reads ``openai.com``), or embeds an official domain in its
  subdomains (``deepseek.com.evil.example``).
* ``None``: nothing known.

This is a core module: no sockets, no frameworks. The public-suffix list comes
from the ``publicsuffixlist`` wheel (its bundled copy; nothing is fetched).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from publicsuffixlist import PublicSuffixList

from egresswatch.errors import ConfigError
from egresswatch.model import MatchKind, Service, ServiceMatch
from egresswatch.policy.countries import ISO_COUNTRIES

__all__ = [
    "CATEGORIES",
    "CUSTOMER_REGION",
    "ISO_COUNTRIES",
    "RESIDENCY_REGIONS",
    "Catalog",
    "api_path_match",
    "normalize_host",
    "skeleton",
]

#: The fixed set of service categories (docs/catalog.md). The classifier derives
#: payload types from some of them (telemetry -> telemetry, model-hub -> downloads).
CATEGORIES: Mapping[str, str] = {
    "chat-api": "an LLM API called by programs (chat, completions, embeddings)",
    "chat-app": "a chat product used by people (web, desktop, mobile)",
    "model-hub": "model and dataset hosting and its download CDN",
    "model-registry": "a registry that serves model weights to a local runtime",
    "inference-gateway": "a router or aggregator that forwards to other providers",
    "cloud-ai": "a cloud platform's AI service; region chosen by the customer",
    "coding-assistant": "an AI coding assistant and its backend",
    "telemetry": "usage statistics, analytics, error reporting, feature flags",
    "update-service": "version checks and software updates",
}

#: ``residency`` value for services whose customer picks the region (Azure, Bedrock, Vertex).
CUSTOMER_REGION = "customer-region"

#: Residency codes besides ISO 3166-1 alpha-2: "EU" is ISO 3166's exceptionally reserved
#: code for the European Union, which is how vendors declare EU data residency.
RESIDENCY_REGIONS: frozenset[str] = frozenset({"EU"})

# Faces with a shorter first label (x.ai, z.ai, hf.co) are too short to flag when
# they appear inside other names' subdomains ("x-ai.example.net" is no imitation).
_MIN_EMBEDDED_LABEL = 4

#: Bound of the match cache: distinct host strings remembered (LRU).
DEFAULT_CACHE_SIZE = 65536

_SHIPPED = "catalog.toml"
_SERVICE_FIELDS = frozenset(Service.__dataclass_fields__)
_STR_FIELDS = (
    "id",
    "name",
    "operator",
    "operator_country",
    "category",
    "contracting_entity",
    "contracting_country",
    "residency",
    "notes",
)
_LIST_FIELDS = ("domains", "api_paths", "brands", "brand_labels", "unverified", "sources")
_REQUIRED = ("id", "name", "operator", "operator_country", "category", "domains")
_ALLOWED_KEYS = frozenset(_STR_FIELDS) | frozenset(_LIST_FIELDS)
_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
_BRAND_RE = re.compile(r"[a-z0-9]{4,63}\Z")
# A host label after IDNA: letters, digits, hyphen; underscore is not valid in
# host names (RFC 952/1123) but appears in real SRV-ish and misconfigured names.
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_PATTERN_LABEL_RE = re.compile(r"(?:\*|[a-z0-9_*](?:[a-z0-9_*-]{0,61}[a-z0-9_*])?)\Z")
_TOML_LINE_RE = re.compile(r"at line (\d+)")
# A whole host already in canonical form: lower-case labels, no port, no trailing dot.
_PLAIN_HOST_RE = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z"
)
_ALL_DIGITS_RE = re.compile(r"[0-9.]*\Z")  # dotted digits: an address, normalised by ipaddress


# --------------------------------------------------------------------- hosts


def normalize_host(name: str) -> str | None:
    """Canonical ASCII form of a host name or address, or None for garbage. Never raises.

    Lower-cases, strips one trailing dot, a ``:port`` and IPv6 brackets, and
    IDNA-encodes Unicode names to punycode (the ASCII form is canonical, so
    ``ореnai.com`` in Cyrillic becomes ``xn--...``). Addresses come back in
    their compressed standard form.
    """
    if not isinstance(name, str):
        return None
    if len(name) <= 253 and _PLAIN_HOST_RE.match(name) and not _ALL_DIGITS_RE.match(name):
        return name  # fast path: already canonical (the common case on the hot path)
    try:
        return _normalize_cached(name)
    except Exception:  # any odd input is garbage, never an exception (ports.py)
        return None


@functools.lru_cache(maxsize=16384)
def _normalize_cached(name: str) -> str | None:
    host = name.strip()
    if not host or len(host) > 1024:
        return None
    if host.startswith("["):  # [v6] or [v6]:port (RFC 3986 section 3.2.2)
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return _address(host[1:end])
    if host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit() or int(port) > 65535:
            return None
    elif ":" in host:  # a bare IPv6 address, no port possible
        return _address(host)
    if host.endswith("."):
        host = host[:-1]
    if not host or host.startswith(".") or ".." in host:
        return None
    if not host.isascii():
        try:
            # Python's codec is IDNA 2003 (RFC 3490): nameprep folds case and
            # compatibility forms, then punycode. It raises on empty or long labels.
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = host.lower()
    if len(host) > 253:  # RFC 1035 section 2.3.4
        return None
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        return _address(host)
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    return host


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def _is_address(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


# Letters from other scripts that render like ASCII letters (a subset of Unicode
# TR39 confusables.txt that matters for host names: Cyrillic, Greek, Latin IPA),
# plus the digits 0 and 1 that pass for o and l.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "о": "o", "р": "p", "с": "c", "у": "y",
        "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
        "ԝ": "w", "ӏ": "l", "к": "k", "ɡ": "g", "ү": "y", "ո": "n", "ս": "u",
        # Greek
        "α": "a", "ο": "o", "ρ": "p", "ν": "v", "υ": "u", "ι": "i", "κ": "k", "ε": "e",
        "χ": "x", "γ": "y", "η": "n", "τ": "t",
        # Latin look-alikes
        "ı": "i", "ɩ": "i", "ℓ": "l", "ǀ": "l", "ɑ": "a", "ɒ": "a", "ȷ": "j",
        # digits
        "0": "o", "1": "l",
    }
)  # fmt: skip


def skeleton(host: str) -> str:
    """The ASCII 'reads as' form of a normalised host, for homograph comparison.

    Punycode labels are decoded, NFKC-normalised, stripped of diacritics, and
    confusable Cyrillic/Greek letters and the digits 0/1 folded to ASCII
    (``xn--nai-...com`` for Cyrillic ``ореnai.com`` -> ``openai.com``).
    """
    out = []
    for label in host.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError):  # a broken xn-- label stays as it is
                label = label[4:].encode("ascii").decode("punycode") or label
        label = unicodedata.normalize("NFKC", label).lower()
        label = "".join(
            ch for ch in unicodedata.normalize("NFKD", label) if not unicodedata.combining(ch)
        )
        out.append(label.translate(_CONFUSABLES))
    return ".".join(out)


@functools.cache
def _psl() -> PublicSuffixList:
    # The list bundled in the wheel (publicsuffixlist.PSLFILE); PublicSuffixList()
    # with no source reads that file and never touches the network.
    return PublicSuffixList()


@functools.cache
def _icann_psl() -> PublicSuffixList:
    # ICANN section only: what nobody but a registry controls ("com", "co.uk").
    return PublicSuffixList(only_icann=True)


def registrable_domain(host: str) -> str | None:
    """The registrable domain ("eTLD+1", private suffixes included) of a host, or None.

    Private suffixes count (``deepseek.github.io`` is its own registrable
    domain), as browsers do for cookies and origins.
    """
    if _is_address(host):
        return None
    reg = _psl().privatesuffix(host)
    return reg if isinstance(reg, str) else None


def _owned(suffix: str) -> str:
    """The registrable domain a catalog domain's operator controls.

    A catalog domain may itself be a private public suffix (``oaiusercontent.com``
    is one, so that user content is isolated): then the operator owns it whole.
    """
    return registrable_domain(suffix) or suffix


# ------------------------------------------------------------------ patterns


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A domain with wildcards: the literal suffix indexes it, the left labels match."""

    domain: str
    left: tuple[re.Pattern[str] | None, ...]  # None: exactly this literal label ...
    literal: tuple[str, ...]  # ... given here
    rank: tuple[int, int, int]

    def matches(self, labels: Sequence[str]) -> bool:
        if len(labels) != len(self.left):
            return False
        for label, rx, lit in zip(labels, self.left, self.literal, strict=True):
            if rx is None:
                if label != lit:
                    return False
            elif not rx.fullmatch(label):
                return False
        return True


def _rank(domain: str) -> tuple[int, int, int]:
    """Specificity: more labels, then more literal labels, then more literal characters."""
    labels = domain.split(".")
    return (len(labels), sum("*" not in lab for lab in labels), len(domain.replace("*", "")))


def _split_pattern(domain: str) -> tuple[str, _Pattern | None]:
    """Literal right-hand suffix of a catalog domain and, if it has wildcards, its pattern."""
    labels = domain.split(".")
    cut = len(labels)
    while cut > 0 and "*" not in labels[cut - 1]:
        cut -= 1
    suffix = ".".join(labels[cut:])
    if cut == 0:
        return suffix, None
    left = labels[:cut]
    rxs: list[re.Pattern[str] | None] = []
    for lab in left:
        if "*" not in lab:
            rxs.append(None)
        elif lab == "*":
            rxs.append(re.compile(r"[a-z0-9_-]+"))
        else:
            rxs.append(re.compile("[a-z0-9_-]*".join(re.escape(p) for p in lab.split("*"))))
    return suffix, _Pattern(domain, tuple(rxs), tuple(left), _rank(domain))


# ------------------------------------------------------------------- catalog


class Catalog:
    """Services by domain, with official and lookalike matching. Implements ``ports.ServiceLookup``.

    Build one with :meth:`load` (shipped file plus user files, validated) or
    directly from :class:`~egresswatch.model.Service` values (not validated: for
    tests and embedding). Immutable after construction;
    ``match`` is cached (bounded LRU) and safe to call from several threads.
    """

    def __init__(
        self,
        services: Iterable[Service],
        *,
        whole_label_brands: Iterable[str] = (),
        ignore_words: Iterable[str] = (),
        references: Mapping[str, Sequence[str]] | None = None,
        sources: Sequence[str] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._services: dict[str, Service] = {}
        for service in services:
            self._services[service.id] = service
        self._references = {k: tuple(v) for k, v in (references or {}).items()}
        self._sources = tuple(sources)
        self._whole_label = frozenset(whole_label_brands)
        self._ignore = tuple(sorted(set(ignore_words), key=len, reverse=True))

        # Official index: literal domains in a dict, wildcard ones under their literal suffix.
        self._exact: dict[str, Service] = {}
        self._patterns: dict[str, list[tuple[_Pattern, Service]]] = {}
        # Registrable domains owned by catalogued operators: never lookalikes.
        self._own_registrables: set[str] = set()
        # Registrables that a service lists as a whole domain: its "face", which
        # homographs and embedded copies imitate. Keyed by skeleton.
        self._faces: dict[str, tuple[str, Service]] = {}
        self._embeddable: set[str] = set()
        self._embeddable_hyphen: set[str] = set()
        self._substring_brands: list[tuple[str, Service]] = []
        self._label_brands: dict[str, Service] = {}
        for service in self._services.values():
            for domain in service.domains:
                suffix, pattern = _split_pattern(domain)
                if pattern is None:
                    self._exact[suffix] = service
                else:
                    self._patterns.setdefault(suffix, []).append((pattern, service))
                reg = _owned(suffix)
                self._own_registrables.add(reg)
                if reg == domain:
                    self._faces.setdefault(skeleton(reg), (reg, service))
                    if len(reg.split(".", 1)[0]) >= _MIN_EMBEDDED_LABEL:
                        self._embeddable.add(skeleton(reg))
            for brand in service.brands:
                if brand in self._whole_label:
                    self._label_brands.setdefault(brand, service)
                else:
                    self._substring_brands.append((brand, service))
        all_brands = {b for s in self._services.values() for b in s.brands}
        for key in self._embeddable:
            label = key.split(".", 1)[0]
            if label in all_brands or any(b in label for b, _ in self._substring_brands):
                self._embeddable_hyphen.add(key)
        # Longest brand first, so "kimik2" is reported before a shorter brand inside it.
        self._substring_brands.sort(key=lambda item: len(item[0]), reverse=True)
        for patterns in self._patterns.values():
            patterns.sort(key=lambda item: item[0].rank, reverse=True)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._match_uncached)

    # -- loading

    @classmethod
    def load(cls, extra: Sequence[str | Path] = (), *, shipped: bool = True) -> Catalog:
        """The shipped catalog plus user files, in order; a later entry with the same id wins.

        A domain claimed by a later file's service is taken away from an earlier
        service. Raises :class:`~egresswatch.errors.ConfigError` naming file, line
        and field on any problem.
        """
        entries: dict[str, _Entry] = {}
        ignore: set[str] = set()
        sources: list[str] = []
        texts: list[tuple[str, str]] = []
        if shipped:
            shipped_file = resources.files("egresswatch").joinpath("data", _SHIPPED)
            texts.append((str(shipped_file), shipped_file.read_text(encoding="utf-8")))
        for path in extra:
            texts.append((str(path), _read(Path(path))))
        for path, text in texts:
            parsed = parse_catalog(text, path)
            sources.append(path)
            ignore.update(parsed.ignore)
            for entry in parsed.entries:
                claimed = set(entry.service.domains)
                for other_id, other in list(entries.items()):
                    if other_id != entry.service.id and claimed & set(other.service.domains):
                        kept = tuple(d for d in other.service.domains if d not in claimed)
                        entries[other_id] = other.with_domains(kept)
                entries[entry.service.id] = entry
        return cls(
            (e.service for e in entries.values()),
            whole_label_brands={b for e in entries.values() for b in e.label_brands},
            ignore_words=ignore,
            references={e.service.id: e.references for e in entries.values()},
            sources=sources,
        )

    # -- queries

    @property
    def services(self) -> tuple[Service, ...]:
        """All services, in file order (overrides keep the first position)."""
        return tuple(self._services.values())

    @property
    def sources(self) -> tuple[str, ...]:
        """The catalog files loaded, shipped file first."""
        return self._sources

    def get(self, service_id: str) -> Service | None:
        """The service with this id, or None."""
        return self._services.get(service_id)

    def references(self, service_id: str) -> tuple[str, ...]:
        """Where the facts of a service come from (the entry's ``sources`` list)."""
        return self._references.get(service_id, ())

    def is_label_brand(self, brand: str) -> bool:
        """True when a brand counts only as a whole registrable label (``brand_labels``)."""
        return brand in self._whole_label

    def match(self, host: str) -> ServiceMatch | None:
        """The service a host belongs to (official), imitates (lookalike), or None.

        Accepts any host spelling (upper case, trailing dot, port, Unicode);
        never raises. Cached: repeated hosts cost one dictionary lookup.
        """
        return self._cached(host)

    def match_official(self, host: str) -> ServiceMatch | None:
        """Official match only, on an already normalised host."""
        labels = host.split(".")
        best: tuple[tuple[int, int, int], str, Service] | None = None
        n = len(labels)
        for i in range(n):
            suffix = ".".join(labels[i:]) if i else host
            service = self._exact.get(suffix)
            if service is not None:
                rank = _rank(suffix)
                if best is None or rank > best[0]:
                    best = (rank, suffix, service)
            for pattern, psvc in self._patterns.get(suffix, ()):
                if (best is None or pattern.rank > best[0]) and pattern.matches(
                    labels[i - len(pattern.left) : i] if i >= len(pattern.left) else ()
                ):
                    best = (pattern.rank, pattern.domain, psvc)
                    break  # sorted by rank: the first hit is this suffix's best
        if best is None:
            return None
        return ServiceMatch(service=best[2], kind=MatchKind.OFFICIAL, host=host, matched=best[1])

    def lookalike(self, host: str) -> ServiceMatch | None:
        """Lookalike match only, on an already normalised host that is not official."""
        if _is_address(host):
            return None
        reg = registrable_domain(host)
        if reg is None or reg in self._own_registrables:
            return None
        # 1. a homograph of an official registrable domain (xn--..., 0penai.com)
        face = self._faces.get(skeleton(reg))
        if face is not None:
            return self._lookalike(face[1], host, face[0])
        # 2. an official domain embedded in the subdomains: deepseek.com.evil.example,
        #    api-openai-com.evil.example (combosquatting).
        if len(host) > len(reg):
            sub = skeleton(host[: -len(reg) - 1])
            # With dots, any face of 4+ letters; with hyphens ("together-ai" is an
            # ordinary phrase), only faces whose label is a brand.
            for parts, allowed in (
                (sub.split("."), self._embeddable),
                (sub.replace("-", ".").split("."), self._embeddable_hyphen),
            ):
                for width in (3, 2):
                    for j in range(len(parts) - width + 1):
                        key = ".".join(parts[j : j + width])
                        if key in allowed:
                            reg_face, imitated = self._faces[key]
                            return self._lookalike(imitated, host, reg_face)
        # 3. a brand in the registrable label, raw or read as its skeleton
        label = reg.split(".", 1)[0]
        for form in dict.fromkeys((label, skeleton(label))):
            flat = form.replace("-", "")
            named = self._label_brands.get(flat)
            if named is not None:
                return self._lookalike(named, host, flat)
            for word in self._ignore:
                flat = flat.replace(word, "#")
            for brand, owner in self._substring_brands:
                if brand in flat:
                    return self._lookalike(owner, host, brand)
        return None

    # -- internals

    def _match_uncached(self, host: str) -> ServiceMatch | None:
        norm = normalize_host(host)
        if norm is None or _is_address(norm):
            return None
        return self.match_official(norm) or self.lookalike(norm)

    @staticmethod
    def _lookalike(service: Service, host: str, matched: str) -> ServiceMatch:
        return ServiceMatch(service=service, kind=MatchKind.LOOKALIKE, host=host, matched=matched)

    def cache_info(self) -> Any:
        """Hits, misses and size of the match cache (functools.lru_cache statistics)."""
        return self._cached.cache_info()


# ----------------------------------------------------------------- API paths


@functools.lru_cache(maxsize=1024)
def _path_regex(shape: str) -> re.Pattern[str]:
    # '*' stands for part or all of one path segment; the shape is a prefix that
    # ends on a segment boundary (or ends with '/', ':' or '*' itself).
    body = "[^/?#]*".join(re.escape(part) for part in shape.split("*"))
    tail = "" if shape.endswith(("/", ":", "*")) else r"(?=$|[/?#:])"
    return re.compile(body + tail)


def api_path_match(service: Service, path: str) -> str | None:
    """The service's ``api_paths`` entry a request path matches, most specific first, or None.

    An entry is a path prefix on a segment boundary (``/v1/files`` matches
    ``/v1/files/abc`` but not ``/v1/filesystem``); ``*`` stands for part or all
    of one segment (``/v1beta/models/*:generateContent``). The query string is ignored.
    """
    best: str | None = None
    for shape in service.api_paths:
        if (best is None or len(shape) > len(best)) and _path_regex(shape).match(path):
            best = shape
    return best


# ------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Entry:
    service: Service
    label_brands: tuple[str, ...]
    references: tuple[str, ...]

    def with_domains(self, domains: tuple[str, ...]) -> _Entry:
        return _Entry(
            dataclasses.replace(self.service, domains=domains), self.label_brands, self.references
        )


@dataclass(frozen=True, slots=True)
class ParsedCatalog:
    """One catalog file, validated: its services in order and its lookalike ignore words."""

    path: str
    entries: tuple[_Entry, ...]
    ignore: tuple[str, ...]

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(e.service for e in self.entries)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such catalog file", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read catalog file: {e}", path=str(path)) from e


class _Locator:
    """Line numbers for TOML keys, found in the raw text (tomllib keeps no positions)."""

    _HEADER = re.compile(r"^\s*\[")
    _SERVICE = re.compile(r"^\s*\[\[\s*service\s*\]\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.service_starts = [i for i, ln in enumerate(self.lines) if self._SERVICE.match(ln)]

    def service(self, index: int, key: str | None = None) -> int | None:
        """1-based line of the index-th ``[[service]]`` (0-based index), or of its key."""
        if index >= len(self.service_starts):
            return None
        start = self.service_starts[index]
        if key is None:
            return start + 1
        key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start + 1, len(self.lines)):
            if self._HEADER.match(self.lines[i]):
                break
            if key_re.match(self.lines[i]):
                return i + 1
        return start + 1

    def top(self, key: str) -> int | None:
        """1-based line of a top-level key or table header."""
        key_re = re.compile(rf"^\s*(\[\s*{re.escape(key)}\s*\]|{re.escape(key)}\s*=)")
        for i, line in enumerate(self.lines):
            if key_re.match(line):
                return i + 1
        return None


def parse_catalog(text: str, path: str = "<catalog>") -> ParsedCatalog:
    """Parse and validate one catalog file's text; ConfigError names file, line and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_LINE_RE.search(str(e))
        # no "at line N": tomllib says "(at end of document)": name the last line with text
        line = int(m.group(1)) if m else len(text.rstrip().splitlines()) or 1
        raise ConfigError(f"not valid TOML: {e}", path=path, line=line) from None
    loc = _Locator(text)
    for key in data:
        if key not in ("schema", "lookalike", "service"):
            raise ConfigError(
                "unknown top-level key (expected schema, lookalike, service)",
                path=path,
                line=loc.top(key),
                field=key,
            )
    schema = data.get("schema", 1)
    if schema != 1:
        raise ConfigError(
            f"unsupported schema {schema!r} (this egresswatch reads 1)",
            path=path,
            line=loc.top("schema"),
            field="schema",
        )
    ignore: tuple[str, ...] = ()
    look = data.get("lookalike", {})
    if not isinstance(look, dict) or set(look) - {"ignore"}:
        raise ConfigError(
            "expected a table with one key, ignore = [words]",
            path=path,
            line=loc.top("lookalike"),
            field="lookalike",
        )
    if "ignore" in look:
        words = look["ignore"]
        if not isinstance(words, list) or not all(
            isinstance(w, str) and _BRAND_RE.match(w) for w in words
        ):
            raise ConfigError(
                "expected a list of lower-case words of 4+ letters or digits",
                path=path,
                line=loc.top("ignore"),
                field="lookalike.ignore",
            )
        ignore = tuple(words)
    raw = data.get("service", [])
    if not isinstance(raw, list):
        raise ConfigError(
            "write each service as a [[service]] table",
            path=path,
            line=loc.top("service"),
            field="service",
        )
    entries: list[_Entry] = []
    ids: dict[str, int] = {}
    domains: dict[str, str] = {}
    for index, table in enumerate(raw):
        entry = _parse_service(table, index, path, loc)
        sid = entry.service.id
        if sid in ids:
            raise ConfigError(
                f"duplicate id {sid!r} (first at service #{ids[sid] + 1})",
                path=path,
                line=loc.service(index, "id"),
                field="id",
            )
        ids[sid] = index
        for domain in entry.service.domains:
            if domain in domains:
                raise ConfigError(
                    f"service {sid!r}: domain {domain!r} is already listed by {domains[domain]!r}",
                    path=path,
                    line=loc.service(index, "domains"),
                    field="domains",
                )
            domains[domain] = sid
        entries.append(entry)
    return ParsedCatalog(path, tuple(entries), ignore)


def _parse_service(table: Any, index: int, path: str, loc: _Locator) -> _Entry:
    def fail(message: str, key: str | None) -> ConfigError:
        sid = table.get("id") if isinstance(table, dict) else None
        who = f"service {sid!r}" if isinstance(sid, str) else f"service #{index + 1}"
        return ConfigError(f"{who}: {message}", path=path, line=loc.service(index, key), field=key)

    if not isinstance(table, dict):
        raise fail("expected a table", None)
    for key in table:
        if key not in _ALLOWED_KEYS:
            raise fail(f"unknown field (allowed: {', '.join(sorted(_ALLOWED_KEYS))})", key)
    for key in _REQUIRED:
        if key not in table:
            raise fail("missing required field", key)
    for key in _STR_FIELDS:
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            raise fail("expected a non-empty string", key)
    for key in _LIST_FIELDS:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail("expected a list of non-empty strings", key)

    sid: str = table["id"]
    if not _ID_RE.match(sid):
        raise fail("id must be lower-case letters, digits and hyphens", "id")
    for key in ("operator_country", "contracting_country"):
        cc = table.get(key)
        if cc is not None and cc not in ISO_COUNTRIES:
            raise fail(f"{cc!r} is not an ISO 3166-1 alpha-2 code in upper case (e.g. CN)", key)
    residency = table.get("residency")
    if residency is not None and residency != CUSTOMER_REGION:
        codes = [c.strip() for c in residency.split(",")]
        bad = [c for c in codes if c not in ISO_COUNTRIES and c not in RESIDENCY_REGIONS]
        if bad:
            raise fail(
                f"{bad[0]!r}: expected ISO 3166-1 alpha-2 codes or EU, comma-separated, "
                f"or {CUSTOMER_REGION!r}",
                "residency",
            )
        residency = ",".join(codes)
    if table["category"] not in CATEGORIES:
        raise fail(f"unknown category (known: {', '.join(CATEGORIES)})", "category")
    if not table["domains"]:
        raise fail("at least one domain is needed", "domains")
    domains: list[str] = []
    for raw_domain in table["domains"]:
        domain, problem = _check_domain(raw_domain)
        if problem:
            raise fail(f"{raw_domain!r}: {problem}", "domains")
        if domain in domains:
            raise fail(f"{domain!r} is listed twice", "domains")
        domains.append(domain)
    for key in ("brands", "brand_labels"):
        for brand in table.get(key, []):
            if not _BRAND_RE.match(brand):
                raise fail(f"{brand!r}: a brand is 4+ lower-case letters or digits", key)
    for name in table.get("unverified", []):
        if name not in _SERVICE_FIELDS:
            raise fail(f"{name!r} is not a field name", "unverified")
    for api_path in table.get("api_paths", []):
        if not api_path.startswith("/"):
            raise fail(f"{api_path!r}: an API path starts with '/'", "api_paths")

    labels = tuple(table.get("brand_labels", []))
    service = Service(
        id=sid,
        name=table["name"].strip(),
        operator=table["operator"].strip(),
        operator_country=table["operator_country"],
        category=table["category"],
        domains=tuple(domains),
        contracting_entity=table.get("contracting_entity"),
        contracting_country=table.get("contracting_country"),
        residency=residency,
        api_paths=tuple(table.get("api_paths", [])),
        brands=tuple(dict.fromkeys([*table.get("brands", []), *labels])),
        unverified=tuple(table.get("unverified", [])),
        notes=table.get("notes"),
    )
    return _Entry(service, labels, tuple(table.get("sources", [])))


def _check_domain(raw: str) -> tuple[str, str | None]:
    """A catalog domain in canonical form, or a reason it is not acceptable."""
    text = raw.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    if not text.isascii():
        norm = normalize_host(text.replace("*", "wildcard"))
        if norm is None or "*" in text:
            return text, "not a valid domain (write Unicode names without wildcards)"
        text = norm
    labels = text.split(".")
    if len(labels) < 2 or not all(_PATTERN_LABEL_RE.match(lab) for lab in labels):
        return text, "not a domain or domain pattern (labels of a-z 0-9 - and '*')"
    suffix, _ = _split_pattern(text)
    if not suffix or _icann_psl().privatesuffix(suffix) is None:
        return text, (
            "the part right of any '*' must contain a registrable domain, "
            "not a public suffix such as 'com' or 'co.uk'"
        )
    return text, None


def shipped_path() -> str:
    """Where the shipped catalog file lives (for messages and docs)."""
    return str(resources.files("egresswatch").joinpath("data", _SHIPPED))
