"""One chat request through a running ``egresswatch proxy``, then its clean stop."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SERVERS = Path(__file__).resolve().parent / "servers.py"


def start_server(port: int, log: Path | str = "/dev/null") -> subprocess.Popen[bytes]:
    """The loopback test server (servers.py), plain HTTP on ``port``."""
    return subprocess.Popen(
        [
            sys.executable,
            str(SERVERS),
            *("--bind", "127.0.0.1", "--http", str(port), "--log", str(log)),
        ],
        stdout=subprocess.DEVNULL,
    )


def kill_all(*procs: subprocess.Popen[bytes]) -> None:
    """Kill and reap whatever is still running (a test's ``finally``)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def count_flows(db: Path) -> int:
    """Rows in a SQLite store's ``flows`` table (0 while the file does not exist)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM flows").fetchone()[0])


def post_chat(proxy_port: int, server_port: int, body: str) -> None:
    """curl POSTs ``body`` as JSON to the loopback server's chat path through the proxy."""
    subprocess.run(
        [
            *("curl", "-s", "-m", "10", "-x", f"http://127.0.0.1:{proxy_port}"),
            *("-H", "content-type: application/json", "-d", body),
            f"http://127.0.0.1:{server_port}/v1/chat/completions",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )


def stop_when_recorded(proxy: subprocess.Popen[bytes], db: Path, timeout: float = 10) -> str:
    """Wait for the request's row, stop the proxy with SIGTERM (it flushes the store);
    its stderr. A SIGTERM right after the response lost the decision (the proxy's
    shutdown path, not the store's), hence the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not count_flows(db):
        time.sleep(0.1)
    proxy.send_signal(signal.SIGTERM)
    _, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 0, err.decode()
    return err.decode()
