"""Real AI clients, one scenario per run, for the proxy's live tests.

Run inside a lab namespace::

    ip netns exec NS python tests/helpers/clients.py openai-chat --base https://api.openai.com

Proxy and trust come from the environment, as for any user (``HTTPS_PROXY``,
``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``). Prints one JSON line: ``{"ok": ...,
"status": ..., "detail": ...}``; a refused request is a result, not a crash.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

CHAT = [{"role": "user", "content": "Summarise our Q3 plan for the lab."}]
SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {}


def scenario(
    name: str,
) -> Callable[[Callable[[str], dict[str, Any]]], Callable[[str], dict[str, Any]]]:
    def register(func: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
        SCENARIOS[name] = func
        return func

    return register


def _openai(base: str) -> Any:
    import openai

    return openai.OpenAI(
        base_url=base.rstrip("/") + "/v1", api_key="sk-lab-test-key", max_retries=0, timeout=15
    )


def _status_error(e: Exception) -> dict[str, Any]:
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    return {"ok": False, "status": status, "detail": body if body is not None else str(e)[:300]}


@scenario("openai-chat")
def openai_chat(base: str) -> dict[str, Any]:
    import openai

    try:
        r = _openai(base).chat.completions.create(model="test", messages=CHAT)  # type: ignore[arg-type]
    except openai.APIStatusError as e:
        return _status_error(e)
    except openai.APIConnectionError as e:
        return {"ok": False, "status": None, "detail": f"connection: {e.__cause__ or e}"[:300]}
    return {"ok": True, "status": 200, "detail": r.choices[0].message.content}


@scenario("openai-embed")
def openai_embed(base: str) -> dict[str, Any]:
    import openai

    try:
        r = _openai(base).embeddings.create(model="test", input="lab notebook page 4")
    except openai.APIStatusError as e:
        return _status_error(e)
    return {"ok": True, "status": 200, "detail": len(r.data[0].embedding)}


@scenario("openai-file")
def openai_file(base: str) -> dict[str, Any]:
    import openai

    data = b"".join(
        json.dumps({"messages": [{"role": "user", "content": f"row {i}"}]}).encode() + b"\n"
        for i in range(50)
    )
    try:
        r = _openai(base).files.create(
            file=("train.jsonl", data, "application/jsonl"), purpose="fine-tune"
        )
    except openai.APIStatusError as e:
        return _status_error(e)
    return {"ok": True, "status": 200, "detail": r.bytes}


@scenario("ollama-chat")
def ollama_chat(base: str) -> dict[str, Any]:
    import ollama

    try:
        r = ollama.Client(host=base, timeout=15).chat(model="test", messages=CHAT)
    except ollama.ResponseError as e:
        return {"ok": False, "status": e.status_code, "detail": e.error[:300]}
    return {"ok": True, "status": 200, "detail": r.message.content}


@scenario("hf-download")
def hf_download(base: str) -> dict[str, Any]:
    import tempfile

    os.environ["HF_ENDPOINT"] = base
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "0"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import send_telemetry

    with tempfile.TemporaryDirectory() as cache:
        try:
            path = hf_hub_download("lab/test-model", "config.json", cache_dir=cache, endpoint=base)
            with open(path, "rb") as fh:
                content = fh.read().decode()
        except Exception as e:
            return {
                "ok": False,
                "status": getattr(getattr(e, "response", None), "status_code", None),
                "detail": str(e)[:300],
            }
        send_telemetry("egresswatch-test", library_name="egresswatch-lab", library_version="0")
        time.sleep(1.5)  # the telemetry request runs in a background thread
    return {"ok": True, "status": 200, "detail": content}


@scenario("httpx-post")
def httpx_post(base: str) -> dict[str, Any]:
    import httpx

    r = httpx.post(base + "/v1/chat/completions", json={"model": "x", "messages": CHAT}, timeout=15)
    return {"ok": r.status_code == 200, "status": r.status_code, "detail": r.text[:300]}


@scenario("httpx-h2")
def httpx_h2(base: str) -> dict[str, Any]:
    import httpx

    with httpx.Client(http2=True, timeout=15) as c:
        r = c.post(base + "/v1/chat/completions", json={"model": "x", "messages": CHAT})
    return {"ok": r.status_code == 200, "status": r.status_code, "detail": r.http_version}


@scenario("ws")
def ws(base: str) -> dict[str, Any]:
    """A WebSocket over TLS (RFC 6455), through HTTPS_PROXY if set, sending two messages."""
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname or "", url.port or 443
    proxy = os.environ.get("HTTPS_PROXY")
    if proxy:
        p = urllib.parse.urlsplit(proxy)
        raw = socket.create_connection((p.hostname, p.port or 8080), timeout=10)
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        if b" 200" not in raw.recv(4096).split(b"\r\n")[0]:
            return {"ok": False, "status": None, "detail": "CONNECT refused"}
    else:
        raw = socket.create_connection((host, port), timeout=10)
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: lab-ws/1\r\n\r\n"
        ).encode()
    )
    head = s.recv(4096)
    if b" 101 " not in head.split(b"\r\n")[0]:
        return {"ok": False, "status": head.split(b"\r\n")[0].decode(), "detail": ""}
    replies = []
    for text in (b'{"prompt": "hello lab"}', b'{"text": "card 4111 1111 1111 1111"}'):
        s.sendall(_frame(text))
        s.settimeout(2)
        try:
            replies.append(_read_frame(s).decode())
        except (TimeoutError, OSError):
            replies.append(None)
    s.close()
    return {"ok": True, "status": 101, "detail": replies}


def _frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    )
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def _read_frame(s: ssl.SSLSocket) -> bytes:
    b = s.recv(2)
    n = b[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", s.recv(2))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--base", required=True)
    args = ap.parse_args()
    try:
        result = SCENARIOS[args.scenario](args.base)
    except Exception as e:  # a refusal is a result for the test to judge
        result = {"ok": False, "status": None, "detail": f"{type(e).__name__}: {e}"[:400]}
    print(json.dumps(result, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
