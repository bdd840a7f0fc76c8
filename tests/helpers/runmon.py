"""Helpers for `egresswatch run` tests: a monitor process in a namespace of its own.

Each test gets a fresh network namespace (``helpers.lab.Lab``), so the embedded
defaults (proxy 127.0.0.1:8080, metrics 127.0.0.1:9721) can be used as they are
without meeting other tests' listeners, and the "internet" server sits on a
documentation address on the namespace's loopback. Client code runs in a thread
that has joined the namespace (``os.setns`` changes only the calling thread).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import ROOT

from helpers.lab import Lab

#: RFC 5737 TEST-NET-2: the test server's address inside the namespace
SERVER = "198.51.100.20"
SERVER_PORT = 80


def in_netns[T](ns: str, fn: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """Run ``fn(*args)`` in a thread that joined network namespace ``ns``; return its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            os.setns(fd, os.CLONE_NEWNET)
        finally:
            os.close(fd)
        try:
            box["value"] = fn(*args)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{fn.__name__} did not finish in {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class RunProc:
    """A running ``egresswatch run`` and everything it printed so far."""

    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def follow(self) -> None:
        assert self.proc.stdout is not None

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def wait_line(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and self._reader and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}; output:\n" + "\n".join(self.lines[-40:]))

    def output(self) -> str:
        if self._reader is not None:
            self._reader.join(5)
        return "\n".join(self.lines)


def start_run(
    lab: Lab,
    ns: str,
    argv: list[str],
    env: dict[str, str],
    *,
    ready: str | None = "Ready.",
    timeout: float = 90,
) -> RunProc:
    """Start ``argv`` in ``ns``; with ``ready``, wait for that line (the banner's last)."""
    cmd = ["ip", "netns", "exec", ns, *argv]
    lab.commands.append(cmd)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=ROOT,
        start_new_session=True,
    )
    lab.procs.append(proc)
    rp = RunProc(proc)
    rp.follow()
    if ready:
        rp.wait_line(ready, timeout)
    return rp


def start_server(lab: Lab, ns: str, log: Path, port: int = SERVER_PORT) -> None:
    lab.add_addr(ns, f"{SERVER}/32")
    lab.spawn(
        ns,
        [
            sys.executable,
            str(ROOT / "tests/helpers/servers.py"),
            "--bind",
            SERVER,
            "--http",
            str(port),
            "--log",
            str(log),
        ],
        ready="READY",
    )


def run_env(tmp: Path) -> dict[str, str]:
    """A private HOME (mitmproxy CA) and XDG_DATA_HOME (database, pid file)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(tmp / "data"), "EGRESSWATCH_SENSOR": "t"}
    for name in ("EGRESSWATCH_CONFIG", "EGRESSWATCH_DB", "EGRESSWATCH_POLICY"):
        env[name] = ""
    return env


def proxied_get(
    path: str, proxy: tuple[str, int] = ("127.0.0.1", 8080), timeout: float = 10
) -> tuple[int, bytes]:
    """One plain-HTTP request through the proxy on a new connection."""
    conn = http.client.HTTPConnection(*proxy, timeout=timeout)
    try:
        conn.request("GET", f"http://{SERVER}:{SERVER_PORT}{path}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def flow_paths(db: Path) -> list[str]:
    """Request paths of the flows recorded in a SQLite database (read with the store API)."""
    from egresswatch.store import FlowFilter, open_store, query_flows

    store = open_store(f"sqlite:///{db}")
    try:
        return [
            (r.path or "").split("?")[0] for r in query_flows(store, FlowFilter(), limit=100_000)
        ]
    finally:
        store.close()


def flow_rows(db: Path) -> list[Any]:
    from egresswatch.store import FlowFilter, open_store, query_flows

    store = open_store(f"sqlite:///{db}")
    try:
        return list(query_flows(store, FlowFilter(), limit=100_000))
    finally:
        store.close()


SLOW_PORT = 8000
#: an HTTP/1.1 keep-alive server that answers after ``?delay=SECONDS`` (capped at 5 s), so a
#: test can have requests truly in flight when it signals the monitor
SLOW_SERVER = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        u = urlsplit(self.path)
        time.sleep(min(5.0, float(parse_qs(u.query).get("delay", ["0"])[0])))
        body = json.dumps({"path": u.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("READY", flush=True)
srv.serve_forever()
"""


def start_slow_server(lab: Lab, ns: str, port: int = SLOW_PORT) -> None:
    """The delaying server on SERVER:port (SERVER must already be on the namespace's lo)."""
    lab.spawn(ns, [sys.executable, "-c", SLOW_SERVER, SERVER, str(port)], ready="READY")
