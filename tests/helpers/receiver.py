"""A real HTTP webhook receiver on 127.0.0.1 for alert tests.

It answers with scripted statuses (e.g. ``[500, 500, 200]``: fails twice then
recovers), can hold requests until released (a hung endpoint), and keeps every
request it received, in order.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Scripted behaviour; read ``requests`` (all) or ``delivered`` (answered 2xx)."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    #: when set, requests wait on this event before being answered
    hold: threading.Event | None = None
    requests: list[Received] = field(default_factory=list)
    #: requests that reached the handler (answered or still held)
    started: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def next_status(self) -> int:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else self.default_status

    def add(self, received: Received) -> None:
        with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()

    def start(self) -> None:
        with self._arrived:
            self.started += 1
            self._arrived.notify_all()

    def wait_started(self, n: int, timeout: float = 10.0) -> bool:
        """Block until ``n`` requests reached the handler, held or not."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.started >= n, timeout)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``n`` requests arrived (or the timeout passed); return them all."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def webhook_receiver(
    statuses: list[int] | None = None,
    *,
    default_status: int = 200,
    hold: threading.Event | None = None,
    port: int = 0,
) -> Iterator[Receiver]:
    """Run a receiver on 127.0.0.1 (``port``, or a free one) for the duration of the block."""
    state = Receiver(statuses=list(statuses or []), default_status=default_status, hold=hold)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.start()
            if state.hold is not None:
                state.hold.wait(30)
            status = state.next_status()
            state.add(Received(self.path, dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if hold is not None:
            hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
