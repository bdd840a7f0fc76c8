"""Bounded HTTP load through a proxy, and the memory figures of the process under load.

Used by ``tests/test_harden_load.py`` and ``bench/load.py``. Every loop here is bounded
twice: by a request count and by a wall-clock deadline, so a stuck proxy ends the load
instead of the test run. Requests go only to the address the caller names (a
documentation address inside a namespace the caller created).
"""

from __future__ import annotations

import http.client
import itertools
import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LoadResult:
    """What a load run did: answered paths, errors by kind, and how long it took."""

    requested: int = 0
    answered: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.answered) / self.seconds if self.seconds else 0.0


def drive(
    target: str,
    *,
    total: int,
    concurrency: int,
    deadline: float,
    proxy: tuple[str, int] | None = ("127.0.0.1", 8080),
    prefix: str = "/load/",
    stop: threading.Event | None = None,
    progress: threading.Event | None = None,
    progress_at: int = 0,
) -> LoadResult:
    """Send ``total`` GETs to ``http://target{prefix}N`` from ``concurrency`` keep-alive clients.

    Through ``proxy`` (absolute-form request target) or directly when ``proxy`` is None.
    Stops early at ``deadline`` seconds or when ``stop`` is set; sets ``progress`` once
    ``progress_at`` requests were answered. Threads started here inherit the calling
    thread's network namespace.
    """
    counter = itertools.count()
    lock = threading.Lock()
    res = LoadResult()
    t0 = time.monotonic()
    end = t0 + deadline
    host, _, port = target.partition(":")

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while time.monotonic() < end and not (stop and stop.is_set()):
            with lock:
                i = next(counter)
                if i >= total:
                    break
                res.requested += 1
            path = f"{prefix}{i}"
            try:
                if conn is None:
                    if proxy:
                        conn = http.client.HTTPConnection(*proxy, timeout=30)
                    else:
                        conn = http.client.HTTPConnection(host, int(port or 80), timeout=30)
                url = f"http://{target}{path}" if proxy else path
                conn.request("GET", url)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    res.answered.append(path)
                    res.statuses[resp.status] += 1
                    if progress is not None and len(res.answered) == progress_at:
                        progress.set()
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    res.errors[type(e).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + 35)
    res.seconds = time.monotonic() - t0
    return res


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmHWM`` is the peak resident set size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """Samples VmRSS of a process every ``step`` seconds; keeps the maximum seen.

    VmHWM would be enough for a live process, but it disappears with the process;
    a sampler also gives the figure for one killed with SIGKILL.
    """

    def __init__(self, pid: int, step: float = 0.2) -> None:
        self.pid = pid
        self.step = step
        self.peak_kib = 0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
                self.hwm_kib = max(self.hwm_kib, proc_status_kib(self.pid, "VmHWM"))
            except (OSError, KeyError):
                return
            self._stop.wait(self.step)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_kib, self.hwm_kib) / 1024


def sqlite_paths(db: Path, prefix: str) -> list[str]:
    """Request paths starting with ``prefix`` in a SQLite store, read-only (one row each)."""
    uri = f"file:{db}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT path FROM flows WHERE path LIKE ? ESCAPE '\\'",
            (prefix.replace("_", "\\_").replace("%", "\\%") + "%",),
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        con.close()


def sqlite_integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file ('ok' when sound)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
