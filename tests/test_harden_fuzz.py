"""Hostile input to the pure core (issue #8): Hypothesis fuzzing, decompression bombs.

- ``classify`` never raises by contract (it turns an exception into a ``classify-error``
  flag); here a fuzzed request must not even reach that fallback: a swallowed exception is
  a request judged as ``other``, i.e. a hole.
- The whole ``Inspector`` (geo + catalog + classify + policy) returns a Decision for any
  observation, with hostile host names, addresses, paths, headers and bodies.
- The policy and catalog loaders raise nothing but ``ConfigError`` on any text, and a
  ConfigError names the file (and a line or field where the text has one).
- Decompression bombs (gzip, deflate, br, zstd; 1 GiB of zeros each) cost bounded time and
  memory: the decoder stops at its output limit (egresswatch/classify/body.py).

The number of examples is ``FUZZ_EXAMPLES`` per test (env ``EGRESSWATCH_FUZZ_EXAMPLES``,
default 300); the sniffer's byte parsers are fuzzed in tests/test_sniffer_fuzz.py.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import tracemalloc
import zlib
from functools import cache

import brotli
import pytest
import zstandard
from helpers.bombs import bomb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.catalog import Catalog, parse_catalog
from egresswatch.classify import MAX_BODY, classify
from egresswatch.errors import ConfigError
from egresswatch.inspector import Inspector
from egresswatch.model import Decision, Observation, Protocol, Sensor, Stage, Transport
from egresswatch.policy import Policy

FUZZ_EXAMPLES = int(os.environ.get("EGRESSWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies -----------------------------------------------------------------------------

_HOSTS = st.one_of(
    st.sampled_from(
        [
            "api.openai.com",
            "API.OPENAI.COM",
            "api.openai.com.",
            "api.openai.com..",
            "xn--pi-7ka.openai.com",  # a punycode label
            "аpi.openai.com",  # Cyrillic 'а': an IDN homograph
            "xn--",
            "api.deepseek.com:443",
            "[2001:db8::1]",
            "[2001:db8::1]:8443",
            "203.0.113.7",
            "0x7f.1",
            "." * 300,
            "a" * 64 + ".com",
            "\x00evil.com",
            "huggingface.co\r\nX-Injected: 1",
            "",
        ]
    ),
    st.text(max_size=300),
)
_ADDRS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "203.0.113.7",
            "2001:db8::7",
            "198.51.100.20",
            "::ffff:192.0.2.1",
            "fe80::1%eth0",
            "999.1.1.1",
            "not-an-address",
            "",
        ]
    ),
    st.ip_addresses().map(str),
)
_CTYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=nonsense",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=XyZ",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/plain; charset=utf-8",
        "application/octet-stream",
        "audio/wav",
        "image/png",
        "application/grpc",
        "",
    ]
)
_ENCODINGS = st.sampled_from(
    ["", "gzip", "deflate", "br", "zstd", "gzip, br", "identity", "x-bogus"]
)


def _encode(body: bytes, enc: str) -> bytes:
    if enc == "gzip":
        return gzip.compress(body)
    if enc == "deflate":
        return zlib.compress(body)
    if enc == "br":
        return brotli.compress(body)
    if enc == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "prompt",
                    "input",
                    "model",
                    "password",
                    "api_key",
                    "content",
                    "role",
                    "file",
                    "email",
                    "token",
                    "x",
                ]
            )
            | st.text(max_size=10),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    kind = draw(st.sampled_from(["json", "bytes", "text", "deep"]))
    if kind == "json":
        raw = json.dumps(draw(_JSONISH)).encode()
    elif kind == "text":
        raw = draw(st.text(max_size=2000)).encode("utf-8", "surrogatepass")
    elif kind == "deep":
        depth = draw(st.integers(1, 50_000))
        raw = b'{"a":' * depth + b"1" + b"}" * draw(st.integers(0, depth))
    else:
        raw = draw(st.binary(max_size=4000))
    enc = draw(_ENCODINGS)
    encoded = _encode(raw, enc) if draw(st.booleans()) else raw  # sometimes lie about it
    if draw(st.booleans()):
        encoded = encoded[: draw(st.integers(0, len(encoded)))]  # truncated by the sensor
    return encoded, enc, draw(_CTYPES)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    body, enc, ctype = draw(bodies())
    headers: list[tuple[str, str]] = []
    if ctype:
        headers.append(("content-type", ctype))
    if enc:
        headers.append(("content-encoding", enc))
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "authorization",
                        "user-agent",
                        "x-api-key",
                        "cookie",
                        "content-type",
                        "content-encoding",
                        "transfer-encoding",
                    ]
                )
                | st.text(max_size=20),
                st.text(max_size=200),
            ),
            max_size=6,
        )
    )
    path = draw(
        st.one_of(
            st.sampled_from(
                [
                    "/v1/chat/completions",
                    "/v1/embeddings?key=sk-abc",
                    "/api/chat",
                    "/%ff%fe",
                    "//..//..",
                    "*",
                    "/" + "a/" * 2000,
                    "/v1/files?" + "&".join(["x=1"] * 500),
                ]
            ),
            st.text(max_size=300),
        )
    )
    return Observation(
        sensor=draw(st.sampled_from(list(Sensor))),
        transport=draw(st.sampled_from(list(Transport))),
        protocol=draw(st.sampled_from(list(Protocol))),
        dst_addr=draw(_ADDRS),
        dst_port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        stage=draw(st.sampled_from(list(Stage))),
        sni=draw(st.one_of(st.none(), _HOSTS)),
        http_host=draw(st.one_of(st.none(), _HOSTS)),
        dns_name=draw(st.one_of(st.none(), _HOSTS)),
        method=draw(
            st.one_of(
                st.none(), st.sampled_from(["GET", "POST", "PUT", "CONNECT"]), st.text(max_size=10)
            )
        ),
        path=path,
        headers=tuple(headers),
        body=body,
        body_truncated=draw(st.booleans()),
        bytes_out=len(body),
    )


# -- classify and the inspector -----------------------------------------------------------

_COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    _COUNTS[name] = _COUNTS.get(name, 0) + 1


@FUZZ
@given(
    observations(),
    st.one_of(
        st.none(),
        st.sampled_from(["chat-api", "telemetry", "model-hub", "update-service", "bogus"]),
    ),
)
def test_classify_fuzz_no_swallowed_exception(obs: Observation, category: str | None) -> None:
    _count("classify")
    c = classify(obs, category)
    assert "classify-error" not in c.flags, obs
    assert c.payload_types


@cache
def _inspector() -> Inspector:
    from egresswatch.geo.chain import GeoChain

    return Inspector(GeoChain.from_paths(), Catalog.load(), Policy.example())


@FUZZ
@given(observations())
def test_inspector_fuzz_always_decides(obs: Observation) -> None:
    _count("inspector")
    d = _inspector().inspect(obs)
    assert isinstance(d, Decision)
    assert d.verdict.action is not None
    assert "classify-error" not in d.assessment.flags


# -- policy and catalog loaders ----------------------------------------------------------

_POLICY_KEYS = [
    "mode",
    "approved",
    "require",
    "outside",
    "passthrough_hosts",
    "unknown",
    "rules",
    "name",
    "action",
    "lookalike",
    "reason",
    "country",
    "service",
    "payload",
    "operator",
    "address",
    "bogus",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            '"monitor"',
            '"enforce"',
            '"block"',
            '"alert"',
            '"allow"',
            '["EEA"]',
            '["US", "XX"]',
            "true",
            "1",
            '"*"',
            '""',
            "[]",
            "{}",
            '"CN"',
            '"chat-prompt"',
            '"\\u0000"',
            "1e999",
            '"' + "x" * 500 + '"',
        ]
    ),
    st.text(max_size=30).map(json.dumps),
)


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append("[unknown]")
        elif choice == 1:
            lines.append("[[rules]]")
        elif choice == 2:
            lines.append(draw(st.text(max_size=40)))  # garbage line
        else:
            lines.append(f"{draw(st.sampled_from(_POLICY_KEYS))} = {draw(_VALUES)}")
    return "\n".join(lines)


def _check_config_error(e: ConfigError, source: str) -> None:
    assert e.path == source
    assert str(e).startswith(source)
    assert e.line is not None or e.field is not None, f"no line or field: {e}"


@FUZZ
@given(policy_texts())
def test_policy_loader_fuzz_only_config_errors(text: str) -> None:
    _count("policy")
    try:
        Policy.from_text(text, source="fuzz-policy.toml")
    except ConfigError as e:
        _check_config_error(e, "fuzz-policy.toml")


_CATALOG_KEYS = [
    "id",
    "name",
    "operator",
    "country",
    "category",
    "domains",
    "api_paths",
    "lookalike",
    "schema",
    "bogus",
    "aliases",
    "jurisdiction",
]


@st.composite
def catalog_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 14))):
        choice = draw(st.integers(0, 9))
        if choice <= 1:
            lines.append("[[service]]")
        elif choice == 2:
            lines.append(draw(st.text(max_size=40)))
        elif choice == 3:
            lines.append(f"domains = [{json.dumps(draw(_HOSTS))}]")
        else:
            lines.append(f"{draw(st.sampled_from(_CATALOG_KEYS))} = {draw(_VALUES)}")
    return "\n".join(lines)


@FUZZ
@given(catalog_texts())
def test_catalog_loader_fuzz_only_config_errors(text: str) -> None:
    _count("catalog")
    try:
        parse_catalog(text, "fuzz-catalog.toml")
    except ConfigError as e:
        _check_config_error(e, "fuzz-catalog.toml")


def test_policy_file_not_utf8_names_file_and_line(tmp_path: pytest.TempPathFactory) -> None:
    p = tmp_path / "p.toml"  # type: ignore[operator]
    p.write_bytes(b'mode = "monitor"\napproved = ["EEA"]\nreason = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as ei:
        Policy.load(p)
    assert ei.value.path == str(p) and ei.value.line == 3


# -- decompression bombs -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd"])
def test_decompression_bomb_bounded(enc: str) -> None:
    data = bomb(enc)
    assert len(data) < 8 << 20  # a real bomb: ≥128x
    obs = Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr="203.0.113.7",
        dst_port=443,
        http_host="api.openai.com",
        method="POST",
        path="/v1/chat/completions",
        headers=(("content-type", "application/json"), ("content-encoding", enc)),
        body=data,
        bytes_out=len(data),
    )
    inspector = _inspector()  # built (once) outside the measurement
    tracemalloc.start()
    t0 = time.process_time()
    try:
        d = inspector.inspect(obs)
        cpu = time.process_time() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{enc} bomb: {len(data)} bytes -> 1 GiB; {cpu:.3f} s CPU, peak {peak >> 20} MiB")
    assert isinstance(d, Decision) and "classify-error" not in d.assessment.flags
    # Bounded work: decoding stops at MAX_BODY (256 KiB) of output, so memory stays a small
    # multiple of it and of the compressed input; 1 GiB would need ~4000x MAX_BODY.
    assert peak < 64 * MAX_BODY + 4 * len(data), peak


# -- the run configuration file -------------------------------------------------------------


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    from egresswatch.config import FIELDS

    keys = [f.key for f in FIELDS] + ["proxy.bogus", "nosection.key"]
    sections = sorted({k.split(".")[0] for k in keys})
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        choice = draw(st.integers(0, 9))
        if choice <= 1:
            lines.append(f"[{draw(st.sampled_from(sections))}]")
        elif choice == 2:
            lines.append(draw(st.text(max_size=40)))
        else:
            key = draw(st.sampled_from(keys)).split(".")[-1]
            lines.append(f"{key} = {draw(_VALUES)}")
    return "\n".join(lines)


@FUZZ
@given(config_texts())
def test_config_loader_fuzz_only_config_errors(text: str) -> None:
    import tempfile
    from pathlib import Path

    from egresswatch import config

    _count("config")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "egresswatch.toml"
        p.write_text(text, encoding="utf-8")
        try:
            config.load(p, env={})
        except ConfigError as e:
            _check_config_error(e, str(p))


def test_config_file_not_utf8_names_file_and_line(tmp_path: pytest.TempPathFactory) -> None:
    from egresswatch import config

    p = tmp_path / "egresswatch.toml"  # type: ignore[operator]
    p.write_bytes(b'[proxy]\nlisten = "127.0.0.1:8080"\nconfdir = "\xff"\n')
    with pytest.raises(ConfigError) as ei:
        config.load(p, env={})
    assert ei.value.path == str(p) and ei.value.line == 3


def test_fuzz_examples_ran() -> None:
    """The counts (printed with -s) are the figure reported for issue #8."""
    print(f"\nfuzz examples run: {_COUNTS}")
    if _COUNTS:  # only when the fuzz tests above ran in this process
        assert all(n >= 1 for n in _COUNTS.values())
