"""Who is talking: an app hint from the User-Agent and, for local clients, the owning process.

The process lookup follows what ``ss -p`` does: find the socket's inode, then find
the process holding ``socket:[inode]`` among ``/proc/<pid>/fd``.

- The inode: when both ends of the connection are known, one exact NETLINK_SOCK_DIAG
  request (sock_diag(7)) asks the kernel for that one socket (~0.1 ms). Otherwise,
  or where netlink is refused, ``/proc/net/tcp`` / ``/proc/net/tcp6`` (proc(5)) are
  read: the kernel walks its whole socket table for them, ~5 ms each here however
  few sockets there are.
- The process: the processes that owned earlier clients' sockets are looked at first
  (an SDK opens its connections from one process), then every process. One full scan
  builds an inode -> pid map that is reused until it goes stale; scans are bounded in
  processes and time. Callers run all of it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import struct
import threading
import time
from collections import OrderedDict
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


# sock_diag(7): one exact lookup (no NLM_F_DUMP) of a TCP socket by its four-tuple
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_TCPF_ALL = 0xFFF
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_PORTS = struct.Struct("!HH")  # source and destination port, network order
_IF_COOKIE = struct.Struct("=III")  # interface, cookie (INET_DIAG_NOCOOKIE: all ones)
#: inet_diag_msg: family state timer retrans, sockid (48 bytes), expires rqueue wqueue uid
_INODE_AT = _NLMSG_HDR.size + 4 + 48 + 16
_PROC = Path("/proc")
#: processes whose fds are looked at before a full scan: the owners of recent clients
RECENT_OWNERS = 8


def _diag_address(addr: str) -> tuple[int, bytes] | None:
    """(family, 16-byte network-order address) as sock_diag wants it; v4-mapped as v4."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # the client's own socket is IPv4 (proxy on a dual-stack listener)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed.ljust(16, b"\0")


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket ``local`` -> ``remote`` in this network namespace.

    One sock_diag(7) request for exactly that socket: the kernel finds it through
    its hash instead of printing every socket. None when there is no such socket,
    or netlink is not available (not Linux, or refused by a sandbox).
    """
    src, dst = _diag_address(local[0]), _diag_address(remote[0])
    if src is None or dst is None or src[0] != dst[0]:
        return None
    request = (
        _DIAG_REQ.pack(src[0], socket.IPPROTO_TCP, 0, _TCPF_ALL)
        + _PORTS.pack(local[1], remote[1])
        + src[1]
        + dst[1]
        + _IF_COOKIE.pack(0, 0xFFFFFFFF, 0xFFFFFFFF)
    )
    size = _NLMSG_HDR.size + len(request)
    header = _NLMSG_HDR.pack(size, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(header + request)
            reply = nl.recv(8192)
    except (OSError, AttributeError):  # AttributeError: no AF_NETLINK on this platform
        return None
    if len(reply) < _INODE_AT + 4:
        return None  # NLMSG_ERROR (ENOENT: no such socket) or a short answer
    length, kind = struct.unpack_from("=IH", reply)
    if kind != _SOCK_DIAG_BY_FAMILY or length < _INODE_AT + 4:
        return None
    inode = int(struct.unpack_from("=I", reply, _INODE_AT)[0])
    return inode or None


class ProcessLookup:
    """Finds the local process owning a TCP socket. Thread-safe; bounded; cached.

    ``max_pids`` and ``budget`` bound one scan of ``/proc``. One scan's inode map serves
    every socket that existed when it began; a socket it missed is first looked for
    among the processes that owned recent clients' sockets, then by one new scan, and
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
        #: pids that owned clients' sockets, most recent last
        self._recent: OrderedDict[int, None] = OrderedDict()

    def owner(
        self, addr: str, port: int, peer: tuple[str, int] | None = None
    ) -> ProcessInfo | None:
        """The process whose socket has local endpoint ``addr:port``, or None.

        ``peer``: the other end of that connection (the proxy's address the client
        connected to), when known: it makes finding the socket one netlink request.
        """
        called = time.monotonic()
        inode = None
        if peer is not None and self.proc == _PROC:
            inode = socket_inode((addr, port), peer)
        if inode is None:
            inode = self._inode(addr, port)
        if inode is None:
            return None
        found = self._owner_of(inode, called)
        if found is not None:
            with self._lock:
                self._recent.pop(found.pid, None)
                self._recent[found.pid] = None
                if len(self._recent) > RECENT_OWNERS:
                    self._recent.popitem(last=False)
        return found

    def _owner_of(self, inode: int, called: float) -> ProcessInfo | None:
        with self._lock:
            hit = self._owners.get(inode)
            recent = list(reversed(self._recent))
        if hit is not None:
            return hit
        for pid in recent:  # a few fd directories, instead of every process's
            found = self._holder(pid, inode)
            if found is not None:
                return found
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
        try:
            # Newest first: a client that just connected is most often a recent process,
            # and the budget may run out before the oldest ones.
            pids = sorted(
                (int(p) for p in os.listdir(self.proc) if p.isdigit() and int(p) >= min_pid),
                reverse=True,
            )
        except OSError:
            return {}
        if min_pid == 0:
            self.scans += 1
            if pids:
                self._max_pid = max(self._max_pid, pids[0])
        return self._scan_pids(pids[: self.max_pids])

    def _holder(self, pid: int, inode: int) -> ProcessInfo | None:
        """Process ``pid`` if it holds socket ``inode``, else None.

        Its descriptors newest (highest) first, stopping at the match: a client that
        just connected holds its socket in one of its latest, so a process with many
        open files costs one or two readlinks, not one per descriptor (a map of all of
        them, as a scan builds, took ~1.3 ms of CPU per connection here).
        """
        fd_dir = f"{self.proc}/{pid}/fd"
        try:
            fds = sorted((int(fd) for fd in os.listdir(fd_dir) if fd.isdigit()), reverse=True)
        except OSError:  # gone, or not ours to read
            return None
        wanted = f"socket:[{inode}]"
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == wanted:
                    return ProcessInfo(pid=pid, name=_process_name(self.proc, pid))
            except OSError:
                continue
        return None

    def _scan_pids(self, pids: list[int]) -> dict[int, ProcessInfo]:
        """inode -> owner for the sockets of these processes, within the time budget."""
        owners: dict[int, ProcessInfo] = {}
        deadline = time.monotonic() + self.budget
        proc = str(self.proc)
        for pid in pids:
            if time.monotonic() > deadline:
                break
            # plain strings: a pathlib join per descriptor was most of a scan's time
            fd_dir = f"{proc}/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # gone, or not ours to read
                continue
            name: str | None = None
            for fd in fds:
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
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
