"""The namespace lab helper: what it builds, that nothing leaks out, and teardown on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import is_root
from helpers.lab import INTERNET_V4, Lab, LabError, internet_lab, lab_fixture, transparent_ruleset

from egresswatch.netns import NetnsError, NetnsSet

pytestmark = [pytest.mark.root, pytest.mark.skipif(not is_root(), reason="needs root")]

net = lab_fixture("lt")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_ruleset_is_valid_nft_and_names_our_table() -> None:
    rules = transparent_ruleset("egresswatch_t", "eth9", 8080)
    assert rules.startswith("table inet egresswatch_t {")
    assert "udp dport 443 drop" in rules
    assert "udp dport 443" not in transparent_ruleset("t", "eth9", 8080, block_quic=False)
    with Lab("lc") as lab:
        ns = lab.netns("x")
        # iifname matches by name: the interface need not exist
        lab.nft(ns, rules, "egresswatch_t")
        listed = lab.sh("nft", "list", "table", "inet", "egresswatch_t", ns=ns).stdout
        assert "redirect to :8080" in listed
    assert ns not in _namespaces()


def test_internet_lab_routes_only_documentation_ranges(net) -> None:  # type: ignore[no-untyped-def]
    routes = net.lab.sh("ip", "-n", net.gateway, "route", "show").stdout
    assert "default" not in routes  # nothing can leave the lab
    for prefix in ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"):
        assert prefix in routes
    # A closed port answers with a reset: routed. Anything else has no route at all.
    assert _connect(net, INTERNET_V4["de"]) == "ConnectionRefusedError"
    assert _connect(net, "198.18.0.1") == "OSError:101"  # ENETUNREACH


def test_lab_is_the_verify_plumbing_with_numbered_veths(net) -> None:  # type: ignore[no-untyped-def]
    # The teardown the tests rely on is egresswatch verify's own (egresswatch.netns).
    assert isinstance(net.lab, NetnsSet) and LabError is NetnsError
    tag = net.lab.tag
    assert net.client_iface == f"{tag}v1"  # client <-> gateway: v0/v1, gateway <-> internet: v2/v3
    gw_links = net.lab.sh("ip", "-o", "link", "show", ns=net.gateway).stdout
    assert f"{tag}v1@" in gw_links and f"{tag}v2@" in gw_links
    hosts = Path(f"/etc/netns/{net.client}/hosts").read_text()
    assert hosts.startswith("127.0.0.1 localhost\n::1 localhost\n")


def _connect(net, addr: str) -> str:  # type: ignore[no-untyped-def]
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{addr}', 9), timeout=3)\n"
        "    print('connected')\n"
        "except ConnectionRefusedError:\n"
        "    print('ConnectionRefusedError')\n"
        "except OSError as e:\n"
        "    print(f'OSError:{e.errno}')\n"
    )
    return net.lab.sh(sys.executable, "-c", code, ns=net.client).stdout.strip()


def test_teardown_happens_on_failure() -> None:
    names: list[str] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        internet_lab("lf", hosts={"a.test": "192.0.2.30"}) as n,
    ):
        names = [n.client, n.gateway, n.internet]
        n.lab.spawn(n.internet, ["sleep", "60"])
        assert Path(f"/etc/netns/{n.client}/hosts").read_text().count("a.test") == 1
        raise RuntimeError("boom")
    listed = _namespaces()
    assert names and not any(name in listed for name in names)
    assert not any(Path(f"/etc/netns/{name}").exists() for name in names)


def test_commands_are_recorded_and_failures_are_clear() -> None:
    with Lab("le") as lab, pytest.raises(LabError, match="no-such-command"):
        lab.sh("ip", "no-such-command")
    assert ["ip", "no-such-command"] in lab.commands
