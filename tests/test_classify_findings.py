"""Sensitive findings: what is found, what is not, and that only redacted forms come out."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.cn import ric as cn_ric
from stdnum.us import ssn as us_ssn

from egresswatch.classify import find_sensitive, redact
from egresswatch.classify import findings as fmod
from egresswatch.model import Finding, FindingKind

K = FindingKind


def _jwt(header: dict[str, str], payload: dict[str, object], sig: bytes = b"signature!") -> str:
    def enc(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([enc(json.dumps(header).encode()), enc(json.dumps(payload).encode()), enc(sig)])


JWT = _jwt({"alg": "HS256", "typ": "JWT"}, {"sub": "1234567890", "name": "Ann"})
# Key-shaped strings built from parts so that no scanner mistakes this file for a leak.
OPENAI = "sk-" + "proj-" + "T3BlbkFJ" * 5 + "Zx9"
ANTHROPIC = "sk-" + "ant-api03-" + "Qm9vbGVhbg" * 8 + "-AA"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "R2l0SHViVG9rZW4" * 3 + "a1"
HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"
GOOGLE = "AIza" + "SyA-" + "1234567890abcdefghijklmnopqrs" + "tu"
SLACK = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"


def _one(text: str) -> Finding:
    found = find_sensitive(text, "body")
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("text", "kind", "detail", "redacted"),
    [
        ("mail john.doe@example.com today", K.EMAIL, None, "j***@example.com"),
        ('{"to": "Ann.Lee+ai@Sub.Example.org"}', K.EMAIL, None, "A***@sub.example.org"),
        ("card 4242 4242 4242 4242 exp 12/30", K.PAYMENT_CARD, "visa", "**** **** **** 4242"),
        ("card 4111111111111111 cvv 123", K.PAYMENT_CARD, "visa", "**** **** **** 1111"),
        ("mc 5555-5555-5555-4444.", K.PAYMENT_CARD, "mastercard", "**** **** **** 4444"),
        ("amex 3782 822463 10005", K.PAYMENT_CARD, "amex", "**** **** **** 0005"),
        ("unionpay 6212345678901265", K.PAYMENT_CARD, "unionpay", "**** **** **** 1265"),
        ("IBAN DE89 3704 0044 0532 0130 00 thanks", K.IBAN, "de", "DE** …3000"),
        ("GB82WEST12345698765432", K.IBAN, "gb", "GB** …5432"),
        ("ssn: 536-90-4399", K.NATIONAL_ID, "us-ssn", "***-**-4399"),
        ("身份证 11010519491231002X 谢谢", K.NATIONAL_ID, "cn-ric", "**************002X"),
        ("call +44 20 7946 0958 now", K.PHONE, "gb", "+**********58"),
        ("office (650) 253-0000", K.PHONE, "us", "********00"),
        ("office 650.253.0000.", K.PHONE, "us", "********00"),
        ("手机13812345678", K.PHONE, "cn", "*********78"),
        ("tel:+8613812345678", K.PHONE, "cn", "+***********78"),
        (f"key={OPENAI}", K.API_KEY, "openai", "sk-proj-…" + OPENAI[-4:]),
        (f'"x": "{ANTHROPIC}"', K.API_KEY, "anthropic", "sk-ant-api03-…" + ANTHROPIC[-4:]),
        (AWS, K.API_KEY, "aws", "AKIA…MPLE"),
        (f"token {GITHUB}", K.API_KEY, "github", "ghp_…" + GITHUB[-4:]),
        (f"HF_TOKEN={HF}", K.API_KEY, "hf", "hf_…" + HF[-4:]),
        (f"?key={GOOGLE}&x=1", K.API_KEY, "google", "AIza…" + GOOGLE[-4:]),
        (SLACK, K.API_KEY, "slack", "xoxb-…" + SLACK[-4:]),
        (PEM, K.PRIVATE_KEY, "rsa", "<RSA PRIVATE KEY>"),
        (json.dumps({"k": PEM.replace("RSA ", "")}), K.PRIVATE_KEY, "pkcs8", "<PRIVATE KEY>"),
        (f"Bearer {JWT}", K.JWT, "hs256", "eyJ…" + JWT[-4:]),
        (json.dumps({"c": f"my token:\n{JWT}"}), K.JWT, "hs256", "eyJ…" + JWT[-4:]),
        (json.dumps({"c": f"key:\n{AWS}\tok"}), K.API_KEY, "aws", "AKIA…MPLE"),
        (json.dumps({"c": "mail:\njane@example.com"}), K.EMAIL, None, "j***@example.com"),
        (json.dumps({"c": "iban:\nGB82WEST12345698765432"}), K.IBAN, "gb", "GB** …5432"),
        (
            json.dumps({"c": "card:\n4111111111111111"}),
            K.PAYMENT_CARD,
            "visa",
            "**** **** **** 1111",
        ),
    ],
)
def test_finds_and_redacts(text: str, kind: FindingKind, detail: str | None, redacted: str) -> None:
    found = _one(text)
    assert (found.kind, found.detail, found.redacted, found.where) == (
        kind,
        detail,
        redacted,
        "body",
    )


@pytest.mark.parametrize(
    "text",
    [
        "random 16 digits 1234567812345678 and 9876543210987654",
        "uuid 123e4567-e89b-12d3-a456-426614174000 and 12345678-1234-1234-1234-123456789012",
        "unix 1700000000 and millis 1700000000123 and 2024-01-15T10:30:00Z",
        "versions 1.2.3, 10.0.19041.1, v2.14.0-rc.1, torch==2.3.1+cu121",
        "addresses 192.168.100.200 and 2001:db8::1 port 8080",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "order #123456789 and invoice 2024-000123",
        "not a card: 4242 4242 4242 4241 (bad Luhn)",
        "not an iban: DE88 3704 0044 0532 0130 00",
        "not ssns: 000-12-3456, 666-12-3456, 912-12-3456, 123-00-4567, 123-45-0000",
        "not a RIC: 110105194912310021",
        "prose: sk-learn-is-a-great-library-for-machine-learning",
        "assets: icon@2x.png logo@3x.webp",
        "short: Bearer ollama, 555-1234",
        "eyJ not a jwt: eyJhbGciOiJ.eyJzdWIiOi.abc",
        "base64 blob: QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
        "embedding [0.0123456789, -0.9876543210, 0.5555555555]",
        '{"tokens": 15000000000, "ids": [13812345678, 18600000000]}',
    ],
)
def test_no_false_findings(text: str) -> None:
    assert find_sensitive(text, "body") == []


def test_findings_are_deduplicated_and_tagged_with_where() -> None:
    text = "a@example.com a@example.com b@example.com"
    found = find_sensitive(text, "query")
    assert sorted(f.redacted for f in found) == ["a***@example.com", "b***@example.com"]
    assert {f.where for f in found} == {"query"}


def test_raw_values_never_appear_in_findings() -> None:
    text = f"{OPENAI} {AWS} 4111111111111111 john.doe@example.com {JWT} 536-90-4399"
    for found in find_sensitive(text, "body"):
        for raw in (OPENAI, AWS, "4111111111111111", "john.doe", JWT, "536-90-4399"):
            assert raw not in found.redacted


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (K.EMAIL, "john@example.com", "j***@example.com"),
        ("email", "x@Example.COM", "x***@example.com"),
        (K.API_KEY, "sk-abcdefghijklmnopqrstuvwxyzabcd", "sk-…abcd"),
        (K.API_KEY, "unknownformat1234567890wxyz", "…wxyz"),
        (K.API_KEY, "short", "…"),
        (K.PAYMENT_CARD, "4242-4242-4242-4242", "**** **** **** 4242"),
        (K.PASSWORD, "hunter2", "********"),
        (K.PRIVATE_KEY, "-----BEGIN OPENSSH PRIVATE KEY-----", "<OPENSSH PRIVATE KEY>"),
        ("no-such-kind", "secret", "********"),
    ],
)
def test_redact(kind: FindingKind | str, value: str, expected: str) -> None:
    assert redact(kind, value) == expected


def _fields(body: str) -> set[tuple[FindingKind, str | None, str]]:
    out: fmod.Findings = {}
    fmod.scan_json(body.encode(), "body", out)
    return {(f.kind, f.detail, f.redacted) for f in out.values()}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"username": "ann", "password": "hunter2"}', {(K.PASSWORD, "password", "********")}),
        (
            '{"user": {"new_password":"a \\"quoted\\" pw"}}',
            {(K.PASSWORD, "newpassword", "********")},
        ),
        ('{"client_secret": "abc123def456"}', {(K.API_KEY, "field:client_secret", "…")}),
        (f'{{"access_token": "{JWT}"}}', {(K.JWT, "hs256", "eyJ…" + JWT[-4:])}),
        ('{"password": ""}', set()),
        ('{"password": "********"}', set()),
        ('{"api_key": "phc_public_project_key_123", "event": "x"}', set()),
        ('{"max_tokens": 1000, "prompt": "my password is long"}', set()),
        ('{"pin": "1234", "truncat', {(K.PASSWORD, "pin", "********")}),
    ],
)
def test_secret_named_json_fields(body: str, expected: set[tuple[FindingKind, str, str]]) -> None:
    assert _fields(body) == expected


def _headers(*pairs: tuple[str, str]) -> set[tuple[FindingKind, str | None, str, str]]:
    out: fmod.Findings = {}
    fmod.scan_headers(pairs, out)
    return {(f.kind, f.detail, f.redacted, f.where) for f in out.values()}


def test_secret_headers() -> None:
    basic = base64.b64encode(b"ann@example.com:hunter2").decode()
    found = _headers(
        ("authorization", f"Basic {basic}"),
        ("x-api-key", ANTHROPIC),
        ("x-goog-api-key", GOOGLE),
        ("cookie", f"session={JWT}; theme=dark"),
        ("api-key", "0123456789abcdef0123456789abcdef"),
        ("user-agent", f"curl {OPENAI}"),  # not a secret-carrying header: not looked at
    )
    assert found == {
        (K.PASSWORD, "basic-auth", "********", "header:authorization"),
        (K.EMAIL, None, "a***@example.com", "header:authorization"),
        (K.API_KEY, "anthropic", "sk-ant-api03-…" + ANTHROPIC[-4:], "header:x-api-key"),
        (K.API_KEY, "google", "AIza…" + GOOGLE[-4:], "header:x-goog-api-key"),
        (K.JWT, "hs256", "eyJ…" + JWT[-4:], "header:cookie"),
        (K.API_KEY, "generic", "…cdef", "header:api-key"),
    }


def test_placeholder_bearer_tokens_are_not_findings() -> None:
    assert _headers(("authorization", "Bearer EMPTY"), ("authorization", "Bearer ollama")) == set()


def test_header_answers_are_cached_without_changing_them() -> None:
    first = _headers(("authorization", f"Bearer {OPENAI}"))
    second = _headers(("authorization", f"Bearer {OPENAI}"))
    assert (
        first
        == second
        == {(K.API_KEY, "openai", redact(K.API_KEY, OPENAI), "header:authorization")}
    )


# --- property tests ---------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_find_sensitive_never_raises_on_text(text: str) -> None:
    for found in find_sensitive(text, "body"):
        assert isinstance(found, Finding)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_scanners_never_raise_on_bytes(data: bytes) -> None:
    out: fmod.Findings = {}
    fmod.scan_bytes(data, "body", out)
    fmod.scan_json(data, "body", out)
    fmod.scan_headers((("authorization", data.decode("latin-1")),), out)


_CARD_PREFIXES = st.sampled_from(
    ["4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "3530"]
)


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix = draw(_CARD_PREFIXES)
    length = 15 if prefix in ("34", "37") else 16
    body = prefix + draw(
        st.text("0123456789", min_size=length - 1 - len(prefix), max_size=length - 1 - len(prefix))
    )
    return body + luhn.calc_check_digit(body)


@given(cards(), st.sampled_from(["", " ", "-"]))
def test_generated_luhn_cards_are_found_and_broken_ones_are_not(card: str, sep: str) -> None:
    if len(set(card)) == 1:
        return
    shown = sep.join(card[i : i + 4] for i in range(0, len(card), 4))
    found = find_sensitive(f"pay with {shown} please", "body")
    assert [(f.kind, f.redacted) for f in found] == [
        (K.PAYMENT_CARD, "**** **** **** " + card[-4:])
    ]
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    broken = sep.join(wrong[i : i + 4] for i in range(0, len(wrong), 4))
    assert all(f.kind is not K.PAYMENT_CARD for f in find_sensitive(f"pay {broken} x", "body"))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country, size = draw(st.sampled_from([("DE", 18), ("FR", 23), ("NL", 14), ("GB", 18)]))
    if country == "NL":
        bban = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4)) + draw(
            st.text("0123456789", min_size=10, max_size=10)
        )
    elif country == "GB":
        bban = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4)) + draw(
            st.text("0123456789", min_size=14, max_size=14)
        )
    elif country == "FR":
        bban = draw(st.text("0123456789", min_size=size, max_size=size))
    else:
        bban = draw(st.text("0123456789", min_size=size, max_size=size))
    return country + std_iban.calc_check_digits(country + "00" + bban) + bban


@given(ibans(), st.booleans())
def test_generated_ibans_are_found_and_broken_ones_are_not(iban: str, spaced: bool) -> None:
    if not std_iban.is_valid(iban):  # national BBAN checks (FR RIB key) may reject a draw
        return
    shown = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if spaced else iban
    found = find_sensitive(f"send to {shown} today", "body")
    assert [(f.kind, f.redacted) for f in found if f.kind is K.IBAN] == [
        (K.IBAN, iban[:2] + "** …" + iban[-4:])
    ]
    check = int(iban[2:4])
    wrong = iban[:2] + f"{(check + 1) % 97 or 2:02d}" + iban[4:]
    assert all(f.kind is not K.IBAN for f in find_sensitive(f"send to {wrong} today", "body"))


_REGIONS = ["110105", "310101", "330106", "110101"]


@st.composite
def rics(draw: st.DrawFn) -> str:
    born = draw(st.dates(min_value=dt.date(1930, 1, 1), max_value=dt.date(2020, 12, 31)))
    body = draw(st.sampled_from(_REGIONS)) + born.strftime("%Y%m%d")
    body += draw(st.text("0123456789", min_size=3, max_size=3))
    return body + cn_ric.calc_check_digit(body + "?")  # it reads all but the last character


@given(rics())
def test_generated_chinese_identity_numbers_are_found_and_broken_ones_are_not(ric: str) -> None:
    assume(cn_ric.is_valid(ric))  # stdnum also knows when each county code existed
    found = find_sensitive(f"身份证号码：{ric}。", "body")
    assert [(f.kind, f.detail, f.redacted) for f in found] == [
        (K.NATIONAL_ID, "cn-ric", "*" * 14 + ric[-4:])
    ]
    digits = "0123456789X"
    wrong = ric[:-1] + digits[(digits.index(ric[-1]) + 1) % 11]
    assert find_sensitive(f"身份证号码：{wrong}。", "body") == []


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    return f"{area:03d}-{group:02d}-{serial:04d}"


@given(ssns())
def test_generated_ssns_are_found(ssn: str) -> None:
    found = find_sensitive(f"SSN {ssn}.", "body")
    if us_ssn.is_valid(ssn):
        assert [(f.kind, f.redacted) for f in found] == [(K.NATIONAL_ID, "***-**-" + ssn[-4:])]
    else:  # on the SSA's list of numbers never issued or made public (e.g. 078-05-1120)
        assert found == []


@given(st.integers(0, 999), st.integers(0, 99), st.integers(0, 9999))
def test_ssns_with_invalid_components_are_not_found(area: int, group: int, serial: int) -> None:
    ssn = f"{area:03d}-{group:02d}-{serial:04d}"
    if area in (0, 666) or area >= 900 or group == 0 or serial == 0:
        assert all(f.kind is not K.NATIONAL_ID for f in find_sensitive(f"SSN {ssn}.", "body"))


@given(st.integers(10**15, 10**16 - 1))
def test_random_16_digit_numbers_are_rarely_cards(number: int) -> None:
    # Only a Luhn-valid number with a real issuer prefix may be reported, never anything else.
    digits = str(number)
    found = find_sensitive(f"id {digits} end", "body")
    if found:
        assert luhn.is_valid(digits)
        assert [f.kind for f in found] == [K.PAYMENT_CARD]


@given(st.text("0123456789", min_size=11, max_size=11).filter(lambda d: d[0] not in "01"))
def test_generated_aadhaar_numbers_are_found_and_broken_ones_are_not(body: str) -> None:
    from stdnum import verhoeff
    from stdnum.in_ import aadhaar

    number = body + verhoeff.calc_check_digit(body)
    assume(aadhaar.is_valid(number))  # not a palindrome
    shown = f"{number[:4]} {number[4:8]} {number[8:]}"
    found = find_sensitive(f"Aadhaar: {shown}.", "body")
    assert [(f.kind, f.detail, f.redacted) for f in found] == [
        (K.NATIONAL_ID, "in-aadhaar", "********" + number[-4:])
    ]
    wrong = shown[:-1] + str((int(shown[-1]) + 1) % 10)
    assert find_sensitive(f"Aadhaar: {wrong}.", "body") == []


def _cpf_digit(digits: str) -> str:
    # Receita Federal's rule: weights n+1 .. 2, remainder mod 11 below 2 gives 0.
    total = sum(int(d) * w for d, w in zip(digits, range(len(digits) + 1, 1, -1), strict=True))
    rest = total % 11
    return "0" if rest < 2 else str(11 - rest)


@given(st.text("0123456789", min_size=9, max_size=9).filter(lambda d: len(set(d)) > 1))
def test_generated_cpf_numbers_are_found_and_broken_ones_are_not(body: str) -> None:
    first = _cpf_digit(body)
    number = body + first + _cpf_digit(body + first)
    shown = f"{number[:3]}.{number[3:6]}.{number[6:9]}-{number[9:]}"
    found = find_sensitive(f"CPF {shown}", "body")
    assert [(f.kind, f.detail, f.redacted) for f in found] == [
        (K.NATIONAL_ID, "br-cpf", "*******" + number[-4:])
    ]
    wrong = shown[:-1] + str((int(shown[-1]) + 1) % 10)
    assert find_sensitive(f"CPF {wrong}", "body") == []
