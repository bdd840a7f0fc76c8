"""Live capture in a namespace lab: the sniffer on the gateway names the client's flows.

client --veth (TSO/GSO off)-- gateway [egresswatch sniff -i <veth>] -- "internet" namespace.
The client resolves names with the lab DNS server (UDP and TCP), makes a real TLS
handshake, sends a post-quantum-sized ClientHello that the kernel segments at a
536-byte MSS, sends QUIC v1 (split over three Initials) and v2 Initials, and opens a
raw TCP flow that only DNS can name. Every address is a documentation address
inside the lab's own namespaces.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, egresswatch_bin, needs_root
from helpers.lab import internet_lab, wait_for

SNIFFLAB = str(ROOT / "tests" / "helpers" / "snifflab.py")

pytestmark = [needs_root, pytest.mark.root, pytest.mark.slow]


def _client_iface(lab, ns: str) -> str:  # type: ignore[no-untyped-def]
    out = lab.sh("ip", "-o", "link", "show", ns=ns).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return next(n for n in names if n != "lo")


def test_gateway_sniffer_names_dns_tls_and_quic(tmp_path: Path) -> None:
    with internet_lab("sn") as net:
        lab = net.lab
        for extra in ("203.0.113.11/32", "203.0.113.12/32"):
            lab.add_addr(net.internet, extra)
        c_if = _client_iface(lab, net.client)
        # real segmentation: no TCP/generic segmentation offload on the client's veth
        lab.sh("ethtool", "-K", c_if, "tso", "off", "gso", "off", ns=net.client)
        assert (
            "tcp-segmentation-offload: off" in lab.sh("ethtool", "-k", c_if, ns=net.client).stdout
        )
        lab.spawn(
            net.internet,
            [sys.executable, SNIFFLAB, "server", "--pki", str(tmp_path)],
            ready="READY",
        )
        out = tmp_path / "flows.jsonl"
        err = tmp_path / "sniff.err"
        sniff = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                net.gateway,
                egresswatch_bin(),
                "sniff",
                "-i",
                net.client_iface,
                "--json",
                "--no-judge",
                "--duration",
                "90",
            ],
            stdout=out.open("wb"),
            stderr=err.open("wb"),
            start_new_session=True,
        )
        lab.procs.append(sniff)
        assert wait_for(lambda: "capturing on" in err.read_text(), timeout=20), err.read_text()
        client = lab.sh(
            sys.executable,
            SNIFFLAB,
            "client",
            "--ca",
            str(tmp_path / "ca.pem"),
            ns=net.client,
            timeout=60,
        )
        assert "DONE" in client.stdout, client.stderr
        time.sleep(0.5)  # let the last packets through the gateway
        sniff.send_signal(signal.SIGTERM)  # a clean stop: every flow is finished and printed
        sniff.wait(timeout=30)
        assert sniff.returncode == 0, err.read_text()
    flows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = err.read_text()
    assert "0 malformed" in summary and "dropped" in summary, summary
    by = {}
    for f in flows:
        by.setdefault((f["protocol"], f["server"]["port"], f["sni"]), []).append(f)

    # DNS over UDP and over TCP, with the answers learned
    dns = [f for f in flows if f["protocol"] == "dns"]
    assert {f["transport"] for f in dns} == {"udp", "tcp"}
    answered = {a["name"]: a["addr"] for f in dns for a in (f["dns"] or {}).get("answers", [])}
    assert answered["chat.lab.example"] == "203.0.113.10"
    assert answered["h3.lab.example"] == "203.0.113.11"

    # the real TLS handshake: SNI, ALPN, and the DNS name of the address
    (tls,) = by[("tls", 443, "chat.lab.example")]
    assert tls["alpn"] == ["h2", "http/1.1"]
    assert {"name": "chat.lab.example", "source": "sni"} in tls["names"]
    assert tls["dns_name"]["chain"] == ["chat.lab.example", "edge.chat.lab.example"]
    assert tls["bytes"]["out"] > 0 and tls["bytes"]["in"] > 0

    # the segmented post-quantum hello: reassembled from several real segments
    (big,) = by[("tls", 8443, "big.lab.example")]
    assert big["packets"]["out"] >= 4 and big["ech"] is True

    # IPv6 from the client's ULA to a documentation address
    (v6,) = by[("tls", 8443, "v6.lab.example")]
    assert v6["server"]["addr"] == "2001:db8:1::10"

    # QUIC v1 over three Initials and QUIC v2
    (v1,) = by[("quic", 443, "h3.lab.example")]
    assert v1["quic_version"] == "0x00000001" and v1["alpn"] == ["h3"]
    (v2,) = by[("quic", 443, "v2.lab.example")]
    assert v2["quic_version"] == "0x6b3343cf"

    # a flow with no name of its own, named by the DNS answer seen earlier
    (raw,) = [f for f in flows if f["server"]["port"] == 9000]
    assert raw["protocol"] == "raw"
    assert raw["names"] == [{"name": "raw.lab.example", "source": "dns"}]
