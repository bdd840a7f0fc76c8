"""The name pool: each name its own address, so a connection is tied back to its name."""

from __future__ import annotations

import ipaddress
import threading

#: RFC 2544 §C.2.2 / RFC 5735: 198.18.0.0/15 is for benchmarking and never routed publicly.
DEFAULT_POOL = "198.18.0.0/15"


class NamePool:
    """Each name its own address from ``cidr``; thread-safe; both directions."""

    def __init__(self, cidr: str = DEFAULT_POOL) -> None:
        self.net = ipaddress.IPv4Network(cidr)
        self._next = 1
        self._by_name: dict[str, str] = {}
        self._by_addr: dict[str, str] = {}
        self._lock = threading.Lock()

    def address(self, name: str) -> str:
        """The pool address of ``name`` (allocated on first use)."""
        key = name.lower().rstrip(".")
        with self._lock:
            addr = self._by_name.get(key)
            if addr is None:
                if self._next >= self.net.num_addresses - 1:
                    raise ValueError("name pool exhausted")
                addr = str(self.net.network_address + self._next)
                self._next += 1
                self._by_name[key] = addr
                self._by_addr[addr] = key
            return addr

    def name(self, addr: str | None) -> str | None:
        """The name that was given ``addr``, or None."""
        if addr is None:
            return None
        with self._lock:
            return self._by_addr.get(addr)

    def contains(self, addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in self.net
        except ValueError:
            return False
