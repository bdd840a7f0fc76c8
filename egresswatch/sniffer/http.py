"""Plain HTTP/1.x request heads (RFC 9112 §3): method, target, headers, body start.

Local model servers (Ollama, llama.cpp, vLLM) speak plain HTTP, so the sniffer
reads prompts going to them without any TLS in the way. Only the head and the
first bytes of the body are kept (bounded by the caller).
"""

from __future__ import annotations

from typing import NamedTuple

#: request methods we recognise at the start of a client stream (RFC 9110 §9 plus PATCH)
METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)
_PREFIXES = frozenset(m[:4] for m in METHODS)
#: largest request head we buffer before giving up on the flow
MAX_HEAD = 16 * 1024


class Request(NamedTuple):
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Content-Length if given (None for chunked or absent)
    content_length: int | None

    @property
    def host(self) -> str | None:
        """The Host header's host; else the authority of an absolute or CONNECT target
        (RFC 9112 §3.2.2, §3.2.3: what a forward proxy is asked for)."""
        for k, v in self.headers:
            if k == "host":
                return host_only(v)
        target = self.target
        if "://" in target:
            target = target.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        elif self.method != "CONNECT":
            return None
        return host_only(target)

    def header_value(self, name: str) -> str | None:
        """First value of a header (name in lower case)."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} {self.version}"


def looks_like_request(data: bytes | bytearray) -> bool:
    """Cheap check on the first bytes of a client stream."""
    return bytes(data[:4]) in _PREFIXES and any(data.startswith(m) for m in METHODS)


def host_only(value: str) -> str | None:
    """The host of a Host header value, without port or brackets, lower case."""
    v = value.strip().lower()
    if v.startswith("["):
        v = v[1 : v.find("]")] if "]" in v else v[1:]
    elif v.count(":") == 1:
        v = v.split(":", 1)[0]
    v = v.rstrip(".")
    return v or None


def parse_request(data: bytes | bytearray, body_limit: int = 4096) -> Request | None:
    """Parse a request head; None while the head is incomplete. Raises ValueError if not HTTP/1."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise ValueError("request head too large")
        return None
    head = bytes(data[:end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1 request line")
    headers: list[tuple[str, str]] = []
    clen: int | None = None
    for line in lines[1:65]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        key = name.lower()
        val = value.strip()
        headers.append((key, val))
        if key == "content-length" and val.isdigit():
            clen = int(val)
    body = bytes(data[end + 4 : end + 4 + body_limit])
    return Request(parts[0], parts[1], parts[2], tuple(headers), body, clen)
