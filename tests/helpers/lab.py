"""Network-namespace labs for tests that need real routing, nftables and "internet" servers.

Reusable by every sensor's tests (proxy, sniffer, verify)::

    with Lab("px") as lab:                       # names: px<pid>-<role>, veths px<pid>v<n>
        ns = lab.netns("inet")
        lab.add_addr(ns, "203.0.113.10/32")
        proc = lab.spawn(ns, [sys.executable, "server.py"], ready="READY")
    # namespaces, veths, nft tables, /etc/netns files and processes are gone here,
    # also when the body raised.

:class:`Lab` is :class:`egresswatch.netns.NetnsSet`, the plumbing under
``egresswatch verify``: it builds, records (``lab.commands``) and removes the
namespaces, veths, nft tables, /etc/netns files and processes, so the tests exercise
the same teardown the product relies on. Lab adds only what tests want on top:
numbered veths, /etc/hosts from a name map, sysctl, servers that print a ready line
and a wait for a listening port.

:func:`internet_lab` builds the three-namespace layout of ``lab-notes.md``
(client -> gateway -> "internet"), with the gateway given **no default route**, so
nothing from the lab can reach the host's real network.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from egresswatch.netns import NetnsError, NetnsSet

#: documentation addresses (RFC 5737 / RFC 3849) put on the "internet" namespace's lo;
#: the lab GeoIP database maps them: 203.0.113/24 CN, 198.51.100/24 US, 192.0.2/24 DE.
INTERNET_V4 = {"cn": "203.0.113.10", "us": "198.51.100.20", "de": "192.0.2.30"}
INTERNET_V6 = {"cn": "2001:db8:1::10", "us": "2001:db8:2::20", "de": "2001:db8:3::30"}
DOC_ROUTES_V4 = ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")
DOC_ROUTES_V6 = ("2001:db8:1::/48", "2001:db8:2::/48", "2001:db8:3::/48")

#: what a failed lab step raises (every command runs through NetnsSet.sh)
LabError = NetnsError


@dataclass
class Lab(NetnsSet):
    """A NetnsSet with test conveniences; removes everything it made on close."""

    prefix: str = "lab"
    _veths: int = 0

    def veth(self, ns_a: str, ns_b: str) -> tuple[str, str]:  # type: ignore[override]
        """A veth pair ``<tag>v<n>``, ``<tag>v<n+1>`` created directly inside the two namespaces."""
        n, self._veths = self._veths, self._veths + 2
        return super().veth(ns_a, f"v{n}", ns_b, f"v{n + 1}")

    def add_addr(self, ns: str, cidr: str, dev: str = "lo") -> None:
        """Add an address (by default to the namespace's loopback)."""
        self.addr(ns, cidr, dev)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set one sysctl inside ``ns`` (per-namespace keys such as ip_forward)."""
        self.sh("sysctl", "-qw", f"{key}={value}", ns=ns)

    def etc(self, ns: str, hosts: Mapping[str, str]) -> None:
        """Per-namespace /etc/hosts (``hosts``: name -> address) and resolv.conf.

        resolv.conf points at loopback, so a name missing from ``hosts`` fails locally
        instead of producing a DNS query towards a real resolver.
        """
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{addr} {name}" for name, addr in hosts.items()]
        super().etc(
            ns,
            {
                "hosts": "\n".join(lines) + "\n",
                "resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            },
        )

    def spawn(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        ready: str | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        timeout: float = 30,
    ) -> subprocess.Popen[bytes]:
        """Start a process (in ``ns``); if ``ready`` is given, wait for that line on stdout.

        Without ``ready`` the output goes to ``log`` (or nowhere).
        """
        full_env = {**os.environ, **(env or {})}
        if not ready:
            with log.open("wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
                return self.popen(ns, argv, env=full_env, stdout=out, stderr=out)
        proc = self.popen(ns, argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if ready.encode() in line:
                return proc
        raise LabError(f"{argv[0]} not ready: {b''.join(seen[-20:]).decode(errors='replace')}")

    def wait_listen(
        self,
        ns: str | None,
        port: int,
        *,
        udp: bool = False,
        timeout: float = 20,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Poll ``ss`` until something listens on ``port`` (no fixed sleeps)."""
        flag = "-Hlun" if udp else "-Hltn"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.sh("ss", flag, f"sport = :{port}", ns=ns, check=False)
            if res.stdout.strip():
                return
            if proc is not None and proc.poll() is not None:
                raise LabError(f"process exited with {proc.returncode} before listening")
            time.sleep(0.05)
        raise LabError(f"nothing listens on port {port} in {ns or 'root ns'}")


@dataclass
class InternetLab:
    """The three-namespace lab: who is where."""

    lab: Lab
    client: str
    gateway: str
    internet: str
    #: gateway's interface towards the client, and its address there
    client_iface: str
    gateway_addr: str = "10.77.1.1"
    client_addr: str = "10.77.1.2"


@contextlib.contextmanager
def internet_lab(
    prefix: str = "lab", *, hosts: dict[str, str] | None = None, v6: bool = True
) -> Iterator[InternetLab]:
    """client --(10.77.1.0/24)-- gateway --(10.77.2.0/24)-- internet (doc addresses on lo).

    The client's default route is the gateway; the gateway routes only the
    documentation ranges to the internet namespace and has no default route.
    ``hosts`` goes into the client's and the gateway's /etc/hosts.
    """
    with Lab(prefix) as lab:
        client, gw, inet = lab.netns("c"), lab.netns("g"), lab.netns("i")
        c_if, gc_if = lab.veth(client, gw)
        gi_if, i_if = lab.veth(gw, inet)
        lab.add_addr(client, "10.77.1.2/24", c_if)
        lab.add_addr(gw, "10.77.1.1/24", gc_if)
        lab.add_addr(gw, "10.77.2.1/24", gi_if)
        lab.add_addr(inet, "10.77.2.2/24", i_if)
        lab.route(client, "default", "via", "10.77.1.1")
        lab.route(inet, "10.77.1.0/24", "via", "10.77.2.1")
        for addr in INTERNET_V4.values():
            lab.add_addr(inet, f"{addr}/32")
        for dst in DOC_ROUTES_V4:
            lab.route(gw, dst, "via", "10.77.2.2")
        if v6:
            lab.add_addr(client, "fd77:1::2/64", c_if)
            lab.add_addr(gw, "fd77:1::1/64", gc_if)
            lab.add_addr(gw, "fd77:2::1/64", gi_if)
            lab.add_addr(inet, "fd77:2::2/64", i_if)
            lab.sh("ip", "-n", client, "-6", "route", "add", "default", "via", "fd77:1::1")
            lab.sh("ip", "-n", inet, "-6", "route", "add", "fd77:1::/64", "via", "fd77:2::1")
            for addr in INTERNET_V6.values():
                lab.add_addr(inet, f"{addr}/128")
            for dst in DOC_ROUTES_V6:
                lab.sh("ip", "-n", gw, "-6", "route", "add", dst, "via", "fd77:2::2")
            lab.sysctl(gw, "net.ipv6.conf.all.forwarding", "1")
        lab.sysctl(gw, "net.ipv4.ip_forward", "1")
        for ns in (client, gw):
            lab.etc(ns, hosts or {})
        yield InternetLab(lab, client, gw, inet, gc_if)


def transparent_ruleset(
    table: str, client_iface: str, port: int, *, block_quic: bool = True
) -> str:
    """nftables rules of our own table: redirect the client's web traffic to mitmproxy.

    UDP/443 (QUIC, RFC 9000) is dropped by default: mitmproxy's transparent mode does not
    take UDP, so dropping it makes clients fall back to TCP, where they are inspected.
    """
    quic = f'        iifname "{client_iface}" udp dport 443 drop\n' if block_quic else ""
    return (
        f"table inet {table} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{client_iface}" tcp dport {{ 80, 443 }} redirect to :{port}\n'
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy accept;\n"
        f"{quic}"
        "    }\n"
        "}\n"
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10, step: float = 0.05) -> bool:
    """Poll until ``predicate()`` is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def lab_fixture(prefix: str, *, scope: str = "module", **kwargs: object) -> object:
    """A pytest fixture (factory) yielding an :class:`InternetLab`, removed after ``scope``::

    net = lab_fixture("sn", scope="session")   # in a test module or conftest
    def test_x(net): ...
    """
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[misc]
    def _lab() -> Iterator[InternetLab]:
        with internet_lab(prefix, **kwargs) as net:  # type: ignore[arg-type]
            yield net

    return _lab
