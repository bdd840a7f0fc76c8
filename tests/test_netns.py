"""egresswatch.netns: what it runs, and that everything it made is gone after close()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_root

from egresswatch.netns import ETC_NETNS, NetnsError, NetnsSet


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_tag_must_fit_interface_names() -> None:
    with pytest.raises(NetnsError):
        NetnsSet(tag="x" * 14)
    assert len(NetnsSet("ewv").tag) <= 13


@needs_root
def test_builds_and_removes_everything() -> None:
    lab = NetnsSet("nst")
    try:
        a, b = lab.netns("a"), lab.netns("b")
        ia, ib = lab.veth(a, "a", b, "b")
        lab.addr(a, "169.254.200.1/30", ia)
        lab.addr(b, "169.254.200.2/30", ib)
        lab.etc(a, {"resolv.conf": "nameserver 169.254.200.2\n"})
        rules = f"table inet {lab.tag} {{\n chain c {{\n  type filter hook input priority 0;\n"
        rules += " }\n}\n"
        lab.nft(b, rules, lab.tag)
        sleeper = lab.popen(a, ["sleep", "300"])
        # b answers across the veth: a connection to a closed port is refused (a RST came back).
        probe = (
            "import socket\ntry:\n socket.create_connection(('169.254.200.2', 9), 3)\n"
            "except ConnectionRefusedError:\n print('refused')"
        )
        assert lab.sh(sys.executable, "-c", probe, ns=a).stdout.strip() == "refused"
        assert {a, b} <= netns_names()
        assert (ETC_NETNS / a / "resolv.conf").exists()
        assert sleeper.poll() is None
        # The exact commands, in order (sshuttle-style: one place shells out).
        assert lab.commands[0] == ["ip", "netns", "add", a]
        assert ["ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib,
                "netns", b] in lab.commands  # fmt: skip
    finally:
        lab.close()
    assert not {a, b} & netns_names()
    assert not (ETC_NETNS / a).exists()
    assert sleeper.poll() is not None
    assert lab.namespaces == [] and lab.tables == [] and lab.procs == []
    assert ["ip", "netns", "exec", b, "nft", "delete", "table", "inet", lab.tag] in lab.commands


@needs_root
def test_close_kills_what_was_left_in_a_namespace(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    with NetnsSet("nsk") as lab:
        ns = lab.netns("x")
        # A daemon that escaped its parent's process group: found through `ip netns pids`.
        lab.sh("sh", "-c", f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {marker}", ns=ns)
        pid = int(marker.read_text())
        assert lab.pids(ns) and pid in lab.pids(ns)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_errors_are_domain_errors() -> None:
    lab = NetnsSet("nse")
    with pytest.raises(NetnsError) as e:
        lab.sh("false")
    assert e.value.exit_code == 4 and "false" in str(e.value)
