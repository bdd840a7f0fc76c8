"""Plain HTTP/1.x request heads as the sniffer reads them."""

from __future__ import annotations

import pytest

from egresswatch.sniffer.http import looks_like_request, parse_request


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "2001:db8::1"),
        (b"GET http://proxy.example/x HTTP/1.1\r\n\r\n", "proxy.example"),
        (b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n", "api.example.com"),
        (b"GET /only-path HTTP/1.0\r\n\r\n", None),
    ],
)
def test_host(head: bytes, host: str | None) -> None:
    req = parse_request(head)
    assert req is not None and req.host == host


def test_body_start_is_bounded_and_content_length_kept() -> None:
    body = b"x" * 10_000
    req = parse_request(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 10000\r\n\r\n" + body,
        body_limit=4096,
    )
    assert req is not None
    assert req.method == "POST" and req.target == "/v1/chat/completions"
    assert req.body == body[:4096] and req.content_length == 10_000
    assert req.request_line == "POST /v1/chat/completions HTTP/1.1"


def test_incomplete_head_needs_more_and_garbage_raises() -> None:
    assert parse_request(b"GET / HTTP/1.1\r\nHost: a") is None
    with pytest.raises(ValueError):
        parse_request(b"GET /\r\n\r\n")
    with pytest.raises(ValueError):
        parse_request(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    with pytest.raises(ValueError):
        parse_request(b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000)


def test_looks_like_request() -> None:
    assert looks_like_request(b"POST /api/chat HTTP/1.1\r\n")
    assert not looks_like_request(b"\x16\x03\x01\x02\x00")
    assert not looks_like_request(b"PRI * HTTP/2.0\r\n")  # h2c prior knowledge: not HTTP/1
