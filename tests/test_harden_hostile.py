"""Hostile HTTP through a real `egresswatch run` (issue #8): bounded work, a decision, no crash.

A monitor in a network namespace of its own (tests/helpers/runmon.py) gets, on raw sockets:
malformed request lines and headers, invalid chunk sizes, oversized headers, thousands of
headers, invalid UTF-8 in the path, headers and body, 100,000-deep JSON, and 1 GiB
gzip/br/zstd decompression bombs. After all of it the monitor is alive, answers a normal
request, has recorded a decision for every request that could be parsed, printed no
traceback, kept its memory bounded, and stops cleanly with exit 0.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import egresswatch_bin, is_root
from helpers.bombs import bomb
from helpers.lab import Lab
from helpers.load import RssSampler, sqlite_paths
from helpers.runmon import SERVER, in_netns, proxied_get, run_env, start_run, start_server

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
]

#: the monitor idles at ~100 MiB; a bomb decoded in full would add 1 GiB
RSS_BOUND_MIB = 512
T = f"http://{SERVER}"


def _req(method: str, path: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    head = [method.encode() + b" " + T.encode() + path + b" HTTP/1.1", f"Host: {SERVER}".encode()]
    head += headers
    if body and not any(h.lower().startswith(b"transfer-encoding") for h in headers):
        head.append(f"Content-Length: {len(body)}".encode())
    head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _exchange(raw: bytes, timeout: float = 60) -> bytes:
    """Send raw bytes to the proxy, read until it closes (bounded by time and size)."""
    s = socket.create_connection(("127.0.0.1", 8080), timeout=timeout)
    try:
        s.sendall(raw)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < 1 << 20:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            out += data
        return out
    finally:
        s.close()


def _status(resp: bytes) -> int | None:
    if not resp.startswith(b"HTTP/"):
        return None
    return int(resp.split(b" ", 2)[1])


# (name, raw request, answer: "200" it must pass, "reject" a 4xx or a close, "any" either;
# whatever the proxy forwarded (200, or 502 when the test server chokes on it) has a row)
def _cases() -> list[tuple[str, bytes, str]]:
    deep = b'{"messages":' + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}"
    return [
        ("garbage", b"\x00\x01\x02 not http at all\r\n\r\n", "reject"),
        ("bad-version", b"GET " + T.encode() + b"/hostile/v HTTP/9.9\r\n\r\n", "any"),
        ("no-colon", _req("GET", b"/hostile/nc", [b"Broken header line"]), "reject"),
        (
            "bad-chunk",
            _req("POST", b"/hostile/chunk", [b"Transfer-Encoding: chunked"], b"ZZZ\r\nabc\r\n"),
            "reject",
        ),
        ("huge-header", _req("GET", b"/hostile/hh", [b"X-Big: " + b"a" * 512 * 1024]), "any"),
        (
            "many-headers",
            _req("GET", b"/hostile/many", [f"X-H{i}: {i}".encode() for i in range(3000)]),
            "any",
        ),
        ("utf8-path", _req("GET", b"/hostile/caf\xe9/\xff\xfe?q=\xc3\x28", []), "any"),
        (
            "utf8-headers",
            _req("GET", b"/hostile/uh", [b"User-Agent: \xff\xfe\xc3\x28", b"X-Note: \xed\xa0\x80"]),
            "200",
        ),
        (
            "utf8-body",
            _req(
                "POST",
                b"/hostile/ub",
                [b"Content-Type: application/json; charset=utf-8"],
                b'{"prompt": "\xff\xfe\xc3\x28 \xed\xa0\x80 ok"}',
            ),
            "200",
        ),
        (
            "deep-json",
            _req("POST", b"/hostile/deep", [b"Content-Type: application/json"], deep),
            "200",
        ),
        *[
            (
                f"bomb-{enc}",
                _req(
                    "POST",
                    f"/hostile/bomb-{enc}".encode(),
                    [b"Content-Type: application/json", f"Content-Encoding: {enc}".encode()],
                    bomb(enc),
                ),
                "200",
            )
            for enc in ("gzip", "br", "zstd")
        ],
        (
            "bomb-gzip-json",
            _req(
                "POST",
                b"/hostile/bomb-json",
                [b"Content-Type: application/json", b"Content-Encoding: gzip"],
                gzip.compress(
                    b'{"messages":[{"role":"user","content":"' + b"A" * (64 << 20) + b'"}]}'
                ),
            ),
            "200",
        ),
    ]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("hh") as lab:
        yield lab


def test_hostile_http_bounded_recorded_no_crash(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("m")
    start_server(lab, ns, tmp_path / "server.jsonl")
    env = run_env(tmp_path)
    rp = start_run(lab, ns, [egresswatch_bin(), "run"], env)
    cases = _cases()
    answers: dict[str, int | None] = {}
    with RssSampler(rp.proc.pid) as rss:
        for name, raw, _ in cases:
            t0 = time.monotonic()
            answers[name] = _status(in_netns(ns, _exchange, raw, timeout=120))
            print(f"\n{name}: {answers[name]} in {time.monotonic() - t0:.2f} s", end="")
            assert rp.proc.poll() is None, f"the monitor died on {name}:\n{rp.output()}"
        status, _ = in_netns(ns, proxied_get, "/hostile/after")
    print(f"\nhostile: peak RSS {rss.peak_mib:.0f} MiB")
    assert status == 200

    for name, _, want in cases:
        got = answers[name]
        if want == "200":
            assert got == 200, f"{name}: {got}"
        elif want == "reject":
            assert got is None or 400 <= got < 500, f"{name}: {got}"

    time.sleep(1.5)  # two flush windows of the store writer
    os.kill(rp.proc.pid, signal.SIGTERM)
    assert rp.proc.wait(60) == 0, rp.output()
    out = rp.output()
    assert "Traceback" not in out, out

    db = tmp_path / "data" / "egresswatch" / "egresswatch.db"
    recorded = set(sqlite_paths(db, "/hostile/"))
    for name, raw, _ in cases:
        if answers[name] in (200, 502):
            path = raw.split(b" ", 2)[1].decode("latin-1").removeprefix(T)
            prefix = path.split("?")[0][:12]
            assert any(p.startswith(prefix) for p in recorded), f"{name}: no row ({recorded})"
    assert "/hostile/after" in recorded
    assert rss.peak_mib < RSS_BOUND_MIB
