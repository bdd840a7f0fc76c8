"""A recording HTTP server on 127.0.0.1 that answers like the AI APIs real clients call.

Real client libraries (openai, ollama, huggingface_hub) are pointed at it; it stores every raw
request (method, target, headers, body) so tests can feed exactly what those clients send to
egresswatch's classifier, proxy or sniffer. Answers are just plausible enough for the clients
to accept them (shapes from the OpenAI API reference, Ollama docs/api.md, huggingface_hub
file_download.py).

    with Recorder() as rec:
        client = openai.OpenAI(base_url=rec.url + "/v1", api_key="sk-test")
        ...
        obs = rec.observation(rec.requests[-1])
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from egresswatch.model import Observation, Protocol, Sensor, Transport

#: what the fake hub serves for any file: deterministic bytes, so ETag and size are stable
HUB_FILE = b'{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}\n'
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
#: requests bodies above this are cut (the recorder is for clients, not for load)
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Recorded:
    """One request exactly as a client sent it (header names lower-cased, in order)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _embedding(req: dict[str, Any]) -> list[float] | str:
    vector = [0.1, 0.2, 0.3]
    if req.get("encoding_format") == "base64":  # openai-python asks for base64 by default
        return base64.b64encode(struct.pack("<3f", *vector)).decode()
    return vector


def _answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, extra headers and body for a request."""
    route = path.split("?", 1)[0]
    req = _json_body(body) if body[:1] == b"{" else {}
    now = int(time.time())
    doc: Any = {}
    if route.endswith("/chat/completions"):
        doc = {
            "id": "chatcmpl-rec",
            "object": "chat.completion",
            "created": now,
            "model": req.get("model", "m"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    elif route.endswith("/completions"):
        doc = {
            "id": "cmpl-rec",
            "object": "text_completion",
            "created": now,
            "model": req.get("model", "m"),
            "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}],
        }
    elif route.endswith("/embeddings"):
        doc = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": _embedding(req)}],
            "model": req.get("model", "m"),
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
    elif route.endswith("/files"):
        doc = {
            "id": "file-rec",
            "object": "file",
            "bytes": len(body),
            "created_at": now,
            "filename": "upload",
            "purpose": "assistants",
            "status": "processed",
        }
    elif route.endswith(("/audio/transcriptions", "/audio/translations")):
        doc = {"text": "hello"}
    elif route.endswith("/images/generations"):
        doc = {"created": now, "data": [{"b64_json": base64.b64encode(b"\x89PNG").decode()}]}
    elif route == "/api/chat":
        doc = {
            "model": req.get("model", "m"),
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "hello"},
            "done": True,
            "done_reason": "stop",
        }
    elif route == "/api/generate":
        doc = {
            "model": req.get("model", "m"),
            "created_at": "2026-01-01T00:00:00Z",
            "response": "hello",
            "done": True,
        }
    elif route in ("/api/embed", "/api/embeddings"):
        doc = {"model": req.get("model", "m"), "embeddings": [[0.1, 0.2, 0.3]]}
    elif route in ("/api/pull", "/api/push"):
        doc = {"status": "success"}
    elif "/resolve/" in route:
        etag = hashlib.sha256(HUB_FILE).hexdigest()
        headers = {
            "X-Repo-Commit": HUB_COMMIT,
            "ETag": f'"{etag}"',
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, HUB_FILE
    elif route.startswith("/api/models/"):
        doc = {"id": route.split("/", 3)[-1], "sha": HUB_COMMIT, "siblings": []}
    return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests stay quiet

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunk = self.rfile.read(size)
                self.rfile.readline()
                total += len(chunk)
                if total <= MAX_BODY:
                    chunks.append(chunk)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        return data[:MAX_BODY]

    def _handle(self) -> None:
        body = self._read_body()
        headers = tuple((k.lower(), v) for k, v in self.headers.items())
        self.server.record(Recorded(self.command, self.path, headers, body))
        status, extra, payload = _answer(self.command, self.path, body)
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def record(self, req: Recorded) -> None:
        with self.arrived:
            self.requests.append(req)
            self.arrived.notify_all()


class Recorder:
    """Context manager: a recording server on 127.0.0.1 (random port) in a daemon thread."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Recorded]:
        with self._server.lock:
            return list(self._server.requests)

    def clear(self) -> None:
        with self._server.lock:
            self._server.requests.clear()

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 10.0) -> Recorded:
        """The first request matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._server.arrived:
            while True:
                for req in self._server.requests:
                    if predicate(req):
                        return req
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching request recorded")
                self._server.arrived.wait(left)

    def observation(self, req: Recorded, host: str | None = None) -> Observation:
        """The request as the proxy would hand it to the inspector."""
        return Observation(
            sensor=Sensor.PROXY,
            transport=Transport.TCP,
            protocol=Protocol.HTTP,
            dst_addr="127.0.0.1",
            dst_port=self.port,
            client_addr="127.0.0.1",
            client_app=req.header("user-agent"),
            http_host=host or req.header("host"),
            method=req.method,
            path=req.path,
            headers=req.headers,
            body=req.body,
            bytes_out=len(req.body),
        )

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
