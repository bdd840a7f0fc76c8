"""Who is talking: an app hint from the User-Agent and, for local clients, the owning process.

The process lookup follows what ``ss -p`` does: find the socket's inode in
``/proc/net/tcp`` / ``/proc/net/tcp6`` (proc(5), "/proc/net/tcp"), then find the
process holding ``socket:[inode]`` among ``/proc/<pid>/fd``. Scanning every
process is the expensive part, so one scan builds a full inode -> pid map that is
reused until it goes stale, scans are bounded in processes and time, and callers
run it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: (regex on the User-Agent, hint). First match wins; SDKs before the HTTP libraries they use.
_UA_HINTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), hint)
    for pattern, hint in (
        (r"^OpenAI/Python", "openai-python"),  # openai-python: "OpenAI/Python 1.x"
        (r"^OpenAI/JS", "openai-node"),
        (r"^Anthropic/Python", "anthropic-python"),
        (r"^Anthropic/JS", "anthropic-node"),
        (r"ollama-python|^ollama/", "ollama"),
        # huggingface_hub >= 0.x: "unknown/None; hf_hub/1.2.3; python/3.12; ..." (_headers.py)
        (r"huggingface_hub|\bhf_hub/", "huggingface_hub"),
        (r"^google-genai|google-api-python-client", "google-genai"),
        (r"^mistralai", "mistral"),
        (r"^LangChain", "langchain"),
        (r"^curl/", "curl"),
        (r"^Wget/", "wget"),
        (r"^python-httpx/", "httpx"),
        (r"^python-requests/", "requests"),
        (r"^Python-urllib/", "urllib"),
        (r"^aiohttp|Python/3\.\d+ aiohttp", "aiohttp"),
        (r"^node-fetch|^undici|^node$", "node"),
        (r"^Go-http-client/", "go-http"),
        (r"Edg/", "browser:edge"),  # Edge also says Chrome/ and Safari/: test it first
        (r"OPR/|Opera", "browser:opera"),
        (r"Firefox/", "browser:firefox"),
        (r"Chrome/|Chromium/", "browser:chrome"),
        (r"Safari/", "browser:safari"),
        (r"^Mozilla/", "browser"),
    )
)


@functools.lru_cache(maxsize=1024)
def app_hint(user_agent: str | None) -> str | None:
    """A short, bounded name for the client app behind a User-Agent, or None.

    >>> app_hint("OpenAI/Python 1.51.0")
    'openai-python'
    """
    if not user_agent:
        return None
    for pattern, hint in _UA_HINTS:
        if pattern.search(user_agent):
            return hint
    return None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The process that owns a local socket."""

    pid: int
    name: str


def _hex_endpoint(addr: str, port: int) -> str | None:
    """The ``ADDR:PORT`` form of /proc/net/tcp*: address words in host (little-endian) order."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    packed = ip.packed
    # /proc prints each 32-bit word of the address as a native-endian integer (proc(5)).
    words = [packed[i : i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    return f"{''.join(words)}:{port:04X}"


def _endpoints(addr: str, port: int) -> list[str]:
    out = [e for e in (_hex_endpoint(addr, port),) if e]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return out
    # A v4 client of a dual-stack listener appears as ::ffff:a.b.c.d in tcp6, and vice versa.
    if isinstance(ip, ipaddress.IPv4Address):
        mapped = _hex_endpoint(f"::ffff:{ip}", port)
    else:
        mapped = _hex_endpoint(str(ip.ipv4_mapped), port) if ip.ipv4_mapped else None
    if mapped:
        out.append(mapped)
    return out


class ProcessLookup:
    """Finds the local process owning a TCP socket. Thread-safe; bounded; cached.

    ``max_pids`` and ``budget`` bound one scan of ``/proc``. One scan's inode map serves
    every socket that existed when it began; a socket it missed triggers one new scan, and
    callers queued behind a scan reuse it instead of scanning again.
    """

    def __init__(
        self,
        proc: str | Path = "/proc",
        *,
        max_pids: int = 4096,
        budget: float = 1.0,
    ) -> None:
        self.proc = Path(proc)
        self.max_pids = max_pids
        self.budget = budget
        self._lock = threading.Lock()
        self._owners: dict[int, ProcessInfo] = {}
        self._scan_started = float("-inf")
        #: highest pid seen by the last full scan (pids grow until they wrap at pid_max)
        self._max_pid = 0
        self.scans = 0

    def owner(self, addr: str, port: int) -> ProcessInfo | None:
        """The process whose socket has local endpoint ``addr:port``, or None."""
        called = time.monotonic()
        inode = self._inode(addr, port)
        if inode is None:
            return None
        # Fast path, without waiting for a full scan that may be running: a client that just
        # connected is usually a process started since the last scan (short-lived ones such
        # as curl may be gone by the time a queued full scan reaches them).
        if self._max_pid:
            fresh = self._scan(min_pid=self._max_pid + 1)
            if inode in fresh:
                return fresh[inode]
        with self._lock:
            hit = self._owners.get(inode)
            if hit is not None:
                return hit
            if self._scan_started > called:
                return None  # a scan that began after this socket existed did not find it
            self._scan_started = time.monotonic()
            self._owners = self._scan()
            return self._owners.get(inode)

    def _inode(self, addr: str, port: int) -> int | None:
        wanted = set(_endpoints(addr, port))
        if not wanted:
            return None
        for table in ("net/tcp", "net/tcp6"):
            try:
                lines = (self.proc / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                if len(fields) > 9 and fields[1] in wanted and fields[9] != "0":
                    return int(fields[9])
        return None

    def _scan(self, min_pid: int = 0) -> dict[int, ProcessInfo]:
        """inode -> owner for the sockets of processes with pid >= ``min_pid``."""
        owners: dict[int, ProcessInfo] = {}
        deadline = time.monotonic() + self.budget
        try:
            # Newest first: a client that just connected is most often a recent process,
            # and the budget may run out before the oldest ones.
            pids = sorted(
                (int(p) for p in os.listdir(self.proc) if p.isdigit() and int(p) >= min_pid),
                reverse=True,
            )
        except OSError:
            return owners
        if min_pid == 0:
            self.scans += 1
            if pids:
                self._max_pid = max(self._max_pid, pids[0])
        for pid in pids[: self.max_pids]:
            if time.monotonic() > deadline:
                break
            fd_dir = self.proc / str(pid) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # gone, or not ours to read
                continue
            name: str | None = None
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    if name is None:
                        name = _process_name(self.proc, pid)
                    owners[int(target[8:-1])] = ProcessInfo(pid=pid, name=name)
        return owners


def _process_name(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def is_local_client(addr: str | None) -> bool:
    """True for loopback clients (the only ones whose process we can see)."""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback
