"""Redaction: the only form in which a sensitive item leaves the classifier.

egresswatch must not become the leak it watches for (DESIGN.md, "What the data is"), so every
:class:`~egresswatch.model.Finding` carries a redacted string that is enough for a human to
recognise *which* item it was (the last digits of a card, the domain of an address, the
family of a key) and never enough to use it.
"""

from __future__ import annotations

from egresswatch.model import FindingKind

#: Known key prefixes, longest first, shown in clear: they name the issuer, not the secret.
#: Sources: OpenAI and Anthropic key formats as printed in their consoles; AWS IAM
#: "Unique identifier prefixes"; GitHub "About authentication: token formats" (2021 blog post
#: "Behind GitHub's new authentication token formats"); Hugging Face "User access tokens";
#: Google API keys ("AIza"); Slack "Token types".
KEY_PREFIXES: tuple[str, ...] = (
    "sk-ant-admin01-",
    "sk-ant-api03-",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "hf_",
    "AKIA",
    "ASIA",
    "AIza",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxo-",
    "xoxr-",
    "xoxs-",
    "xapp-",
)

_MASK = "*"
_ELLIPSIS = "…"


def _tail(value: str, n: int = 4) -> str:
    return value[-n:] if len(value) >= 4 * n else ""  # never more than a quarter


def redact_email(value: str) -> str:
    """``john@example.com`` -> ``j***@example.com`` (the domain stays: it says whose mail)."""
    local, _, domain = value.rpartition("@")
    if not local:
        return "***@" + domain
    return local[0] + "***@" + domain.lower()


def redact_key(value: str) -> str:
    """``sk-proj-…abcd``: the issuer's prefix and the last four characters."""
    for prefix in KEY_PREFIXES:
        if value.startswith(prefix):
            return prefix + _ELLIPSIS + _tail(value[len(prefix) :])
    return _ELLIPSIS + _tail(value)


def redact_card(value: str) -> str:
    """``4242424242424242`` -> ``**** **** **** 4242`` (PCI DSS 3.4 allows the last four)."""
    digits = "".join(c for c in value if c.isdigit())
    return "**** **** **** " + digits[-4:]


def redact_phone(value: str) -> str:
    """Keep a leading ``+`` with the first digit group and the last two digits."""
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) < 4:
        return _MASK * len(digits)
    hidden = _MASK * (len(digits) - 2) + digits[-2:]
    if value.lstrip().startswith("+"):
        return "+" + hidden
    return hidden


def redact_iban(value: str) -> str:
    """``DE89 3704 0044 0532 0130 00`` -> ``DE** …3000``: country and the last four."""
    compact = "".join(value.split()).upper()
    return compact[:2] + "** " + _ELLIPSIS + compact[-4:]


def redact_national_id(value: str, detail: str | None = None) -> str:
    """US SSN ``***-**-6789``; other identity numbers keep only their last four characters."""
    compact = "".join(c for c in value if c.isalnum()).upper()
    if detail == "us-ssn":
        return "***-**-" + compact[-4:]
    return _MASK * max(len(compact) - 4, 0) + compact[-4:]


def redact_jwt(value: str) -> str:
    """``eyJ…abcd``: that it is a JWT and the last four characters of its signature."""
    return "eyJ" + _ELLIPSIS + _tail(value)


def redact_private_key(value: str) -> str:
    """Only the PEM label (``-----BEGIN RSA PRIVATE KEY-----`` -> ``<RSA PRIVATE KEY>``)."""
    start = value.find("BEGIN ")
    end = value.find("-----", start + 6) if start >= 0 else -1
    if start < 0 or end < 0:
        return "<PRIVATE KEY>"
    return "<" + value[start + 6 : end].strip() + ">"


def redact(kind: FindingKind | str, value: str, detail: str | None = None) -> str:
    """Return the redacted form of ``value`` for a finding of ``kind``. Never raises.

    ``kind`` is a :class:`FindingKind` or its string value; an unknown kind is fully masked.
    """
    try:
        k = FindingKind(kind)
    except ValueError:
        return _MASK * 8
    try:
        if k is FindingKind.EMAIL:
            return redact_email(value)
        if k is FindingKind.PAYMENT_CARD:
            return redact_card(value)
        if k is FindingKind.PHONE:
            return redact_phone(value)
        if k is FindingKind.IBAN:
            return redact_iban(value)
        if k is FindingKind.NATIONAL_ID:
            return redact_national_id(value, detail)
        if k is FindingKind.API_KEY:
            return redact_key(value)
        if k is FindingKind.JWT:
            return redact_jwt(value)
        if k is FindingKind.PRIVATE_KEY:
            return redact_private_key(value)
    except Exception:  # redaction must not be the reason a flow goes unrecorded
        return _MASK * 8
    # PASSWORD and anything else: nothing of the value is worth keeping.
    return _MASK * 8


#: what replaces each query-string value in a stored or printed path
QUERY_VALUE_REDACTED = "…"


def redact_path(path: str | None) -> str | None:
    """Drop the fragment and replace every query-string value, keeping the keys.

    ``/v1/search?q=secret&key=sk-1`` -> ``/v1/search?q=…&key=…``. Keys are kept
    because they tell what kind of data went out; values are what must not be
    stored (RFC 3986 section 3.4: the query is opaque data; ``&``/``=`` splitting is
    the application/x-www-form-urlencoded convention everyone uses).
    """
    if path is None:
        return None
    if "?" not in path and "#" not in path:
        return path  # the common case, without building anything
    path = path.split("#", 1)[0]
    if "?" not in path:
        return path
    base, query = path.split("?", 1)
    parts = []
    for pair in query.split("&"):
        if not pair:
            continue
        key, sep, _value = pair.partition("=")
        # a bare value without '=' may itself be a token: keep only that it was there
        parts.append(f"{key}={QUERY_VALUE_REDACTED}" if sep else QUERY_VALUE_REDACTED)
    return base + "?" + "&".join(parts) if parts else base
