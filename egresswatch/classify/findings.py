"""Sensitive findings: contact data, payment and identity numbers, secrets.

Every detector is two-staged because it sits on the proxy's hot path (≥ 20,000 decisions/s):

1. *candidates* come from C-speed primitives on the raw bytes: ``bytes.translate`` folds the
   body into a tiny alphabet (digits, capitals, separators; or "key characters"), after which
   literal substring searches and one simple regular expression find every place worth a look;
2. a validator only sees candidates: Luhn for cards, ISO 13616 MOD 97-10 for IBANs,
   GB 11643-1999 for Chinese resident identity numbers and the SSA's area/group/serial rules
   for US SSNs (all from python-stdnum), libphonenumber's metadata for phone numbers, a
   base64url JSON header for JWTs, known prefixes and randomness for keys.

A random 16-digit number, a UUID, a Unix timestamp or a version string is therefore not a
finding. Each finding keeps only a redacted value (see :mod:`egresswatch.classify.redact`), and
the caches on the hot path hold redacted answers keyed by hash, never a raw secret.
Pathological bodies are bounded: each detector looks at :data:`MAX_CANDIDATES` candidates at
most per scan and reports that it stopped.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Iterable

import phonenumbers
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.br import cpf as br_cpf
from stdnum.cn import ric as cn_ric
from stdnum.in_ import aadhaar as in_aadhaar
from stdnum.us import ssn as us_ssn

from egresswatch.classify.redact import redact
from egresswatch.model import Finding, FindingKind

# --- the scanning alphabet ---
# The body is scanned as bytes. One bytes.translate (C speed) folds every ASCII digit to "0",
# every upper-case letter to "A" and the separators people type inside numbers (space, "-",
# ".", "(", ")") to 0x01, so that the candidates of all number detectors are found by literal
# searches instead of character classes tried at every position (10x faster in CPython).
_FOLD = bytearray(range(256))
for _c in b"0123456789":
    _FOLD[_c] = ord("0")
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _FOLD[_c] = ord("A")
for _c in b" -.()":
    _FOLD[_c] = 1
_FOLD[1] = 2
FOLD_TABLE = bytes(_FOLD)
del _FOLD, _c

# A second fold for secrets: every character that can be part of a key or token becomes "w",
# so a run of 20 of them (every key format we know is at least that long) is one fast
# substring search for b"w" * 20 instead of a regex alternation tried at every position.
_WFOLD = bytearray(range(256))
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-":
    _WFOLD[_c] = ord("w")
_WFOLD[ord("w")] = ord("w")
WORD_TABLE = bytes(_WFOLD)
del _WFOLD, _c
_LONG_RUN = b"w" * 20
_RUN_END = re.compile(rb"w+")

_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
#: a number glued to these is part of an identifier, a version, a path or a UUID
_BAD_BEFORE = _WORD | frozenset(b".-/+@#$")
_BAD_AFTER = _WORD | frozenset(b"-")

# --- e-mail ---

_LOCAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# RFC 5321 §4.5.3.1 limits: local part ≤ 64 octets, labels ≤ 63. Narrower than RFC 5322's
# addr-spec on purpose (no quoted local parts): we look for addresses people type.
_DOMAIN = re.compile(
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
#: "icon@2x.png" is a retina asset, not an address: top-level labels that are file types.
_NOT_TLDS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "css", "js", "json", "py", "txt", "md"}
)
#: candidates examined per detector and scan: bounds the cost of pathological bodies (a
#: 256 KiB vector upload is 20,000 numbers); beyond it the scan stops and says so.
MAX_CANDIDATES = 1024

# --- digit runs: cards, identity numbers, phones ---

_RUN = re.compile(rb"0[0\x01]{5,}")
_MAX_RUN = 64
#: North American Numbering Plan shape (ITU-T E.164 country code 1): (NPA) NXX-XXXX.
_NANP = re.compile(r"^(?:\+?1[ .\-]?)?\(?[2-9]\d{2}\)?[ .\-]?[2-9]\d{2}[ .\-]\d{4}$")
#: Mainland China mobile numbers (MIIT numbering plan: 13x-19x), typed without separators.
_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")
#: US SSN as written: AAA-GG-SSSS (SSA, "The SSN Numbering Scheme").
_SSN_SHAPE = re.compile(r"^\d{3}-\d{2}-\d{4}$")
#: India's Aadhaar as printed on the card: 4-4-4 (UIDAI); Brazil's CPF: ddd.ddd.ddd-dd.
_AADHAAR_SHAPE = re.compile(r"^\d{4}([ \-])\d{4}\1\d{4}$")
_CPF_SHAPE = re.compile(r"^\d{3}\.\d{3}\.\d{3}-\d{2}$")
#: card numbers are grouped by 4 (4-6-5 for Amex) with one kind of separator, or not at all.
_CARD_SHAPE = re.compile(r"^\d{4}([ \-]?)\d{4,6}(?:\1\d{1,5}){1,3}$|^\d{13,19}$")


def _card_brand(digits: str) -> str | None:
    """Issuer from the IIN ranges of ISO/IEC 7812-1, as published by the card schemes."""
    n = len(digits)
    d2 = int(digits[:2])
    d3 = int(digits[:3])
    d4 = int(digits[:4])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= d2 <= 55 or 2221 <= d4 <= 2720) and n == 16:
        return "mastercard"
    if d2 in (34, 37) and n == 15:
        return "amex"
    if (d4 == 6011 or 644 <= d3 <= 649 or d2 == 65) and 16 <= n <= 19:
        return "discover"
    if 3528 <= d4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if d2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if (300 <= d3 <= 305 or d2 in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    return None


# --- IBAN ---

# ISO 13616-1: two letters, two check digits, up to 30 alphanumerics, printed in groups of four.
_IBAN = re.compile(rb"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?")

# --- keys and tokens ---

# Formats: OpenAI ("sk-", "sk-proj-", "sk-svcacct-", "sk-admin-"), Anthropic ("sk-ant-api03-",
# "sk-ant-admin01-"), AWS access key ids (IAM "Unique identifier prefixes": AKIA long-term,
# ASIA temporary; base32 alphabet), GitHub (2021 token formats ghp_/gho_/ghu_/ghs_/ghr_,
# fine-grained github_pat_), Hugging Face User Access Tokens (hf_), Google API keys (AIza + 35),
# Slack (xoxb-/xoxp-/xoxa-/xoxo-/xoxr-/xoxs-, app-level xapp-). Same families as gitleaks.
_KEYS = re.compile(
    rb"(?P<anthropic>sk-ant-[A-Za-z0-9_\-]{20,})"
    rb"|(?P<openai>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,})"
    rb"|(?P<aws>(?:AKIA|ASIA)[A-Z2-7]{16})(?![A-Za-z0-9])"
    rb"|(?P<github>gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
    rb"|(?P<hf>hf_[A-Za-z0-9]{30,})"
    rb"|(?P<google>AIza[0-9A-Za-z_\-]{35})(?![A-Za-z0-9_\-])"
    rb"|(?P<slack>xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})"
)
_KEY_BEFORE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

# RFC 7468 §10-11 (PKCS #8 "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"), the legacy "RSA/EC/DSA
# PRIVATE KEY", OpenSSH's "OPENSSH PRIVATE KEY" and RFC 4880 §6.2 "PGP PRIVATE KEY BLOCK".
_PEM = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")

# RFC 7519 §3 / RFC 7515 §7.1 compact serialisation: header "." payload "." signature, each
# base64url; a JSON object starts with '{"', which base64-encodes to "eyJ".
_JWT = re.compile(rb"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")

# --- secret-bearing field names ---

#: normalised (lower case, no "_" or "-") field names whose value is a password.
_PASSWORD_FIELDS = frozenset(
    {"password", "passwd", "pwd", "pass", "passphrase", "passcode", "pin", "userpassword"}
)
#: field names whose value is a secret other than a password. "api_key" and "token" are left
#: out on purpose: analytics SDKs (PostHog, Amplitude, Mixpanel) put their *public* project key
#: there; a real secret in such a field is still caught by its format.
_SECRET_FIELDS = frozenset(
    {
        "secret",
        "clientsecret",
        "secretkey",
        "apisecret",
        "awssecretaccesskey",
        "privatekey",
        "refreshtoken",
        "accesstoken",
        "idtoken",
        "authtoken",
        "sessiontoken",
        "bearertoken",
    }
)
# A JSON member with a string value: '"' ':' '"' (RFC 8259 §4), whitespace allowed.
_JSON_MEMBER = re.compile(rb'"[ \t\r\n]*:[ \t\r\n]*"')
#: the names of those members, collected in C by findall (no match objects on the hot path)
_JSON_MEMBER_NAME = re.compile(rb'"([^"\\\n]{1,48})"[ \t\r\n]*:[ \t\r\n]*"')
_MAX_VALUE = 1024

Findings = dict[tuple[FindingKind, str, str, str | None], Finding]


def _add(out: Findings, kind: FindingKind, value: str, where: str, detail: str | None) -> None:
    red = redact(kind, value, detail)
    key = (kind, red, where, detail)
    if key not in out:
        out[key] = Finding(kind=kind, redacted=red, where=where, detail=detail)


_ANY_DIGIT = re.compile(r"\d")


def _classes(s: str) -> int:
    """How many of lower case, upper case and digits ``s`` mixes (random keys mix all three)."""
    return (s != s.upper()) + (s != s.lower()) + (_ANY_DIGIT.search(s) is not None)


def _plausible(family: str, value: str) -> bool:
    """Real keys are random: reject "sk-learn-is-a-library-for-ml" and similar prose."""
    if family in ("openai", "anthropic", "slack", "github"):
        return _classes(value) >= 3
    if family == "hf":
        return _classes(value[3:]) >= 2
    return True


def _key(b: bytes, start: int, end: int, where: str, out: Findings) -> None:
    # Keys start a run ("Bearer sk-…", '"sk-…"', "KEY=sk-…"): one anchored match per run, so a
    # base64 image in a chat request costs one cheap test per run, not a search.
    m = _KEYS.match(b, start, end)
    if m is not None:
        family = m.lastgroup or "generic"
        value = m.group(0).decode("ascii")
        if _plausible(family, value):
            _add(out, FindingKind.API_KEY, value, where, family)


def _scan_secrets(b: bytes, where: str, out: Findings) -> bool:
    """Keys and JWTs: both live in runs of at least 20 key characters. True if cut short."""
    wfolded = b.translate(WORD_TABLE)
    pos = wfolded.find(_LONG_RUN)
    budget = MAX_CANDIDATES
    while pos >= 0:
        budget -= 1
        if budget < 0:
            return True
        start = pos
        while start and wfolded[start - 1] == 0x77:  # "w": back to the start of the run
            start -= 1
        m = _RUN_END.match(wfolded, pos)
        end = m.end() if m else pos + 20
        if start and b[start - 1] == 0x5C and b[start] in b"nrt":
            start += 1  # a JSON escape ("...key:\nsk-proj-...") is not part of the token
        if b.startswith(b"eyJ", start):
            _jwt(b, start, where, out)
        else:
            _key(b, start, end, where, out)
        pos = wfolded.find(_LONG_RUN, end)
    return False


def scan_keys(text: str, where: str, out: Findings) -> None:
    """Only the key, token and JWT formats (used on URL paths)."""
    _scan_secrets(text.encode("utf-8", "replace"), where, out)


def _b64url_json(part: bytes) -> object:
    padded = part + b"=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _jwt(b: bytes, start: int, where: str, out: Findings) -> None:
    m = _JWT.match(b, start)
    if m is None:
        return
    token = m.group(0)
    try:
        header = _b64url_json(token.split(b".", 1)[0])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(header, dict) or not ("alg" in header or "typ" in header):
        return
    alg = header.get("alg")
    detail = alg.lower()[:16] if isinstance(alg, str) else "jwt"
    _add(out, FindingKind.JWT, token.decode("ascii"), where, detail)


def _after_escape(b: bytes, i: int) -> bool:
    """True when ``b[i - 1]`` is the letter of a JSON escape (``\\n``, ``\\r``, ``\\t``)."""
    return i >= 2 and b[i - 1] in b"nrt" and b[i - 2] == 0x5C


def _scan_emails(b: bytes, where: str, out: Findings) -> bool:
    at = b.find(b"@")
    budget = MAX_CANDIDATES
    while at >= 0:
        budget -= 1
        if budget < 0:
            return True
        start = at
        while start > 0 and at - start < 64 and b[start - 1] in _LOCAL:
            start -= 1
        while start < at and b[start] not in _ALNUM:
            start += 1
        if _after_escape(b, start + 1):
            start += 1  # "...\njane@example.com" in JSON: the "n" belongs to the escape
        m = _DOMAIN.match(b, at + 1)
        if m and start < at:
            addr = b[start : m.end()].decode("ascii")
            if addr.rsplit(".", 1)[-1].lower() not in _NOT_TLDS:
                _add(out, FindingKind.EMAIL, addr, where, None)
        at = b.find(b"@", at + 1)
    return False


def _phone(span: str, digits: str) -> str | None:
    """Region code of a valid phone number written as ``span``, or None."""
    n = len(digits)
    if n < 7 or n > 15:
        return None
    if span.startswith("+"):
        region = None
    elif _NANP.match(span):
        region = "US"
    elif _CN_MOBILE.match(span):
        region = "CN"
    else:
        # A bare national number without a recognisable shape is as likely a timestamp or an
        # order number: not worth a false alarm.
        return None
    try:
        number = phonenumbers.parse(span, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.region_code_for_number(number) or "intl"


_Hit = tuple[FindingKind, str, str] | None


def _validate_number(span: str) -> _Hit:
    """(kind, value, detail) of one candidate number (digits and separators, maybe "+", "(",
    a final "X"), or None."""
    digits = "".join(c for c in span if c.isdigit())
    n = len(digits)
    if n < 7:
        return None
    if span[-1] in "Xx":
        compact = digits + "X"
        if n == 17 and span[:-1].isdigit() and cn_ric.is_valid(compact):
            return FindingKind.NATIONAL_ID, compact, "cn-ric"
        return None
    if n == 18 and span.isdigit() and cn_ric.is_valid(digits):
        return FindingKind.NATIONAL_ID, digits, "cn-ric"
    if n == 9 and _SSN_SHAPE.match(span):
        return (FindingKind.NATIONAL_ID, span, "us-ssn") if us_ssn.is_valid(span) else None
    # Written shapes only: bare 11- and 12-digit numbers are too common to be read as these.
    if n == 12 and _AADHAAR_SHAPE.match(span):  # Verhoeff check digit, no leading 0/1
        return (
            (FindingKind.NATIONAL_ID, digits, "in-aadhaar") if in_aadhaar.is_valid(digits) else None
        )
    if n == 11 and _CPF_SHAPE.match(span):  # two mod-11 check digits
        return (FindingKind.NATIONAL_ID, digits, "br-cpf") if br_cpf.is_valid(digits) else None
    if 13 <= n <= 19 and len(set(digits)) > 1 and _CARD_SHAPE.match(span):
        brand = _card_brand(digits)
        if brand and luhn.is_valid(digits):
            return FindingKind.PAYMENT_CARD, digits, brand
    region = _phone(span, digits)
    if region:
        return FindingKind.PHONE, span, region.lower()
    return None


#: Validated numbers by hash of their text (libphonenumber costs ~100 µs a number and chat
#: histories repeat the same few). Holds redacted answers only, never the number itself.
_NUMBER_CACHE: dict[int, tuple[FindingKind, str, str] | None] = {}
_NUMBER_CACHE_SIZE = 4096


def _number(span: str, where: str, out: Findings) -> bool:
    """Validate one candidate number and record it; True if it was one of ours."""
    key = hash(span)
    try:
        hit = _NUMBER_CACHE[key]
    except KeyError:
        found = _validate_number(span)
        hit = None if found is None else (found[0], redact(*found), found[2])
        if len(_NUMBER_CACHE) >= _NUMBER_CACHE_SIZE:
            _NUMBER_CACHE.clear()
        _NUMBER_CACHE[key] = hit
    if hit is None:
        return False
    kind, red, detail = hit
    out.setdefault((kind, red, where, detail), Finding(kind, red, where, detail))
    return True


def _number_windows(span: str, where: str, out: Findings) -> None:
    """A run like "4111 1111 1111 1111 123" (card and CVV): try runs of whole words in it."""
    words = span.split()
    if len(words) > 16:
        return
    i = 0
    while i < len(words):
        for j in range(min(len(words), i + 6), i, -1):
            if j - i == len(words):
                continue  # the whole span was tried already
            if _number(" ".join(words[i:j]), where, out):
                i = j - 1
                break
        i += 1


def _json_number(b: bytes, s: int) -> bool:
    """True when the number at ``s`` is a bare JSON value (after ':', '[' or ',')."""
    i = s - 1
    while i >= 0 and b[i] in b" \t\r\n":
        i -= 1
    return i >= 0 and b[i] in b":[,"


def _scan_digits(b: bytes, folded: bytes, where: str, out: Findings) -> bool:
    size = len(b)
    budget = MAX_CANDIDATES
    for m in _RUN.finditer(folded):
        budget -= 1
        if budget < 0:
            return True
        s, e = m.start(), m.end()
        while folded[e - 1] == 1:  # trailing separators end the number, they are not in it
            e -= 1
        after = b[e] if e < size else 32
        if after in b"Xx":
            # GB 11643-1999 check character X ends a Chinese resident identity number
            if e + 1 < size and b[e + 1] in _WORD:
                continue
            e += 1
        elif e == m.end() and after in _BAD_AFTER:
            continue  # glued to a word or a dash: an identifier, not a number
        if s and b[s - 1] in b"+(":
            s -= 1
        if s and b[s - 1] in _BAD_BEFORE and not _after_escape(b, s):
            continue
        if e - s > _MAX_RUN:
            continue
        if folded.count(1, s, e) == 1 and b.find(b".", s, e) >= 0:
            continue  # a decimal number (embedding vectors, prices): never one of ours
        if e - s == 11 and b[s:e].isdigit() and _json_number(b, s):
            continue  # {"n": 15000000000} is a count, not a Chinese mobile number (11 digits)
        span = b[s:e].decode("ascii")
        if not _number(span, where, out) and " " in span:
            _number_windows(span, where, out)
    return False


_IBAN_LETTERS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _mod97(iban: str) -> bool:
    """ISO 7064 MOD 97-10 as ISO 13616-1 uses it: cheap, so stdnum runs only on real hits."""
    digits = (iban[4:] + iban[:4]).translate(_IBAN_LETTERS)
    return digits.isdigit() and int(digits) % 97 == 1


def _scan_ibans(b: bytes, folded: bytes, where: str, out: Findings) -> bool:
    pos = folded.find(b"AA00")
    budget = MAX_CANDIDATES // 16
    while pos >= 0:
        nxt = pos + 1
        if not (pos and b[pos - 1] in _ALNUM) or _after_escape(b, pos):
            budget -= 1
            if budget < 0:
                return True
            m = _IBAN.match(b, pos)
            if m:
                compact = m.group(0).replace(b" ", b"").decode("ascii")
                # The last group may have swallowed a following word: shorten until valid.
                for length in range(len(compact), 14, -1):
                    iban = compact[:length]
                    if _mod97(iban) and std_iban.is_valid(iban):
                        _add(out, FindingKind.IBAN, iban, where, iban[:2].lower())
                        nxt = m.end()
                        break
        pos = folded.find(b"AA00", nxt)
    return False


def scan_bytes(b: bytes, where: str, out: Findings) -> bool:
    """Add every finding in ``b`` (UTF-8 or any ASCII-compatible text) to ``out``.

    Returns True when a detector stopped at :data:`MAX_CANDIDATES` (findings may be missing).
    """
    if not b:
        return False
    limited = False
    # bytes.find, not ``in``: ``needle in data`` first tries the needle as an integer
    # (``5 in b"..."`` is legal) and builds and drops a TypeError before it searches,
    # ~0.5 us a test here, which was more than the search of a 1 KiB body.
    if b.find(b"@") >= 0:
        limited = _scan_emails(b, where, out)
    if b.find(b"-----BEGIN ") >= 0:
        for m in _PEM.finditer(b):
            label = m.group(1).decode("ascii")
            detail = label.replace("PRIVATE KEY", "").replace("BLOCK", "").strip().lower()
            _add(out, FindingKind.PRIVATE_KEY, m.group(0).decode("ascii"), where, detail or "pkcs8")
    limited = _scan_secrets(b, where, out) or limited
    folded = b.translate(FOLD_TABLE)
    if folded.find(b"00") >= 0:
        limited = _scan_digits(b, folded, where, out) or limited
        if folded.find(b"AA00") >= 0:
            limited = _scan_ibans(b, folded, where, out) or limited
    return limited


def scan_text(text: str, where: str, out: Findings) -> bool:
    """Add every finding in ``text`` to ``out`` (keyed for deduplication); see scan_bytes."""
    return scan_bytes(text.encode("utf-8", "replace"), where, out)


def find_sensitive(text: str, where: str) -> list[Finding]:
    """All sensitive items in ``text``, deduplicated, each tagged with ``where``. Never raises."""
    out: Findings = {}
    # A detector bug must not take the flow down: the flow is still judged without it.
    with contextlib.suppress(Exception):
        scan_text(text, where, out)
    return list(out.values())


def _json_string(b: bytes, start: int) -> str | None:
    """The JSON string value whose first character is at ``start`` (unescaped), or None."""
    end = start
    limit = min(len(b), start + _MAX_VALUE)
    while True:
        end = b.find(b'"', end, limit)
        if end < 0:
            return None
        slashes = 0
        while b[end - 1 - slashes] == 0x5C:  # backslash
            slashes += 1
        if slashes % 2 == 0:
            break
        end += 1
    raw = b[start:end]
    if raw.find(b"\\") >= 0:
        try:
            value = json.loads(b'"' + raw + b'"')
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    return raw.decode("utf-8", "replace")


def scan_json(b: bytes, where: str, out: Findings) -> None:
    """Secret-named JSON members (``"password": "..."``) in raw JSON, also truncated or invalid."""
    if not any(_field_kind_bytes(name) for name in _JSON_MEMBER_NAME.findall(b)):
        return
    pairs: list[tuple[str, str]] = []
    for m in _JSON_MEMBER.finditer(b):
        key_end = m.start()
        quote = b.rfind(b'"', max(0, key_end - 48), key_end)
        if quote < 0 or _field_kind_bytes(b[quote + 1 : key_end]) is None:
            continue
        value = _json_string(b, m.end())
        if value is not None:
            pairs.append((b[quote + 1 : key_end].decode("utf-8", "replace"), value))
    if pairs:
        scan_fields(pairs, where, out)


_FIELD_CACHE: dict[bytes, FindingKind | None] = {}


def _field_kind_bytes(name: bytes) -> FindingKind | None:
    # JSON bodies repeat the same few keys ("role", "content"): remember the answers.
    try:
        return _FIELD_CACHE[name]
    except KeyError:
        pass
    kind = field_kind(name.decode("utf-8", "replace"))
    if len(_FIELD_CACHE) < 4096:
        _FIELD_CACHE[name] = kind
    return kind


def _norm_field(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def field_kind(name: str) -> FindingKind | None:
    """The finding kind a field of this name implies (``password`` -> PASSWORD), or None."""
    norm = _norm_field(name)
    if norm in _PASSWORD_FIELDS or norm.endswith("password"):
        return FindingKind.PASSWORD
    if norm in _SECRET_FIELDS:
        return FindingKind.API_KEY
    return None


def _is_placeholder(value: str) -> bool:
    v = value.strip()
    return not v or v in ("null", "None", "undefined") or set(v) <= {"*", "•", "x", "X"}


def scan_fields(pairs: Iterable[tuple[str, str]], where: str, out: Findings) -> None:
    """Findings implied by field names (form fields, multipart parts, JSON keys) and values."""
    for name, value in pairs:
        kind = field_kind(name)
        if kind is None or _is_placeholder(value):
            continue
        before = len(out)
        scan_text(value, where, out)
        if len(out) > before:
            continue  # the value has a format of its own (a JWT, an sk- key): already reported
        detail = _norm_field(name) if kind is FindingKind.PASSWORD else "field:" + name.lower()
        _add(out, kind, value, where, detail[:32])


def _scan_header(name: str, value: str, out: Findings) -> None:
    where = "header:" + name
    if name in ("authorization", "proxy-authorization"):
        scheme, _, cred = value.strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() == "basic" and cred:
            try:
                user, sep, password = base64.b64decode(cred, validate=True).decode().partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                user, sep, password = "", "", ""
            if sep and password:
                _add(out, FindingKind.PASSWORD, password, where, "basic-auth")
                if "@" in user:
                    scan_text(user, where, out)
                return
        token = cred or scheme
    else:
        token = value.strip()
    if not token:
        return
    before = len(out)
    # Headers hold tokens, not prose: only the key, token and JWT formats are looked for.
    _scan_secrets(token.encode("utf-8", "replace"), where, out)
    if len(out) == before and name != "cookie" and len(token) >= _MIN_GENERIC:
        # A header built to carry a secret carries one even in a format we do not know.
        _add(out, FindingKind.API_KEY, token, where, "generic")


#: Shorter header tokens are placeholders ("EMPTY" for vLLM, "ollama", "lm-studio").
_MIN_GENERIC = 12

#: Headers that carry credentials by design (RFC 9110 §11.6.2 Authorization, §11.7.2
#: Proxy-Authorization; vendor API key headers: OpenAI-compatible "api-key" (Azure),
#: Anthropic "x-api-key", Google "x-goog-api-key"; RFC 6265 Cookie).
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "x-auth-token",
        "x-access-token",
        "cookie",
    }
)


_HEADER_CACHE: dict[int, tuple[Finding, ...]] = {}
_HEADER_CACHE_SIZE = 2048


def scan_headers(headers: Iterable[tuple[str, str]], out: Findings) -> None:
    """Findings in the headers that carry secrets, with ``where="header:<name>"``.

    A client sends the same Authorization header with every request, so answers are cached,
    keyed by the hash of (name, value) only: the cache holds redacted findings, no secret.
    """
    for name, value in headers:
        if name not in SECRET_HEADERS:
            continue
        key = hash((name, value))
        cached = _HEADER_CACHE.get(key)
        if cached is None:
            found: Findings = {}
            _scan_header(name, value, found)
            cached = tuple(found.values())
            if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[key] = cached
        for finding in cached:
            out.setdefault((finding.kind, finding.redacted, finding.where, finding.detail), finding)
