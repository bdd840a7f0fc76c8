"""``egresswatch sniff`` offline, run as the real console script on generated captures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import egresswatch_bin
from helpers.packets import (
    client_hello,
    dns_query,
    dns_response,
    tcp_flow,
    tls_records,
    udp_packet,
    write_pcap,
)
from scapy.layers.inet import IP
from scapy.layers.l2 import CookedLinuxV2

HTTP = b"POST /api/chat HTTP/1.1\r\nHost: ollama.lab.example:11434\r\nContent-Length: 2\r\n\r\n{}"


def _mixed() -> list:  # type: ignore[type-arg]
    pk = [
        udp_packet("192.0.2.1", "198.51.100.53", 40000, 53, dns_query("api.deepseek.com")),
        udp_packet(
            "198.51.100.53",
            "192.0.2.1",
            53,
            40000,
            dns_response("api.deepseek.com", ["edge.example.net"], ["203.0.113.10"]),
        ),
    ]
    pk += tcp_flow(
        "192.0.2.1",
        "203.0.113.10",
        50000,
        443,
        tls_records(client_hello("api.deepseek.com", ("h2",))),
        mss=700,
    )
    pk += tcp_flow("192.0.2.1", "203.0.113.20", 50001, 11434, HTTP)
    return pk


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [egresswatch_bin(), "sniff", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_offline_json_one_object_per_flow(tmp_path: Path, ng: bool) -> None:
    path = write_pcap(tmp_path / ("c.pcapng" if ng else "c.pcap"), _mixed(), ng=ng)
    res = run("-r", str(path), "--json", "--no-judge")
    assert res.returncode == 0, res.stderr
    flows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [f["protocol"] for f in flows] == ["dns", "tls", "http"]
    dns, tls, http = flows
    assert dns["dns"]["queries"] == [{"name": "api.deepseek.com", "type": "A"}]
    assert dns["dns"]["answers"][0]["chain"] == ["api.deepseek.com", "edge.example.net"]
    assert tls["sni"] == "api.deepseek.com" and tls["alpn"] == ["h2"] and tls["ech"] is False
    assert tls["client"] == {"addr": "192.0.2.1", "port": 50000}
    assert tls["server"] == {"addr": "203.0.113.10", "port": 443}
    assert tls["dns_name"]["name"] == "api.deepseek.com"
    assert tls["bytes"]["out"] == len(tls_records(client_hello("api.deepseek.com", ("h2",))))
    assert tls["decision"] is None
    assert http["http"] == {"host": "ollama.lab.example", "requests": ["POST /api/chat HTTP/1.1"]}
    assert "3 flows, 0 malformed" in res.stderr


def test_offline_judged_by_the_real_inspector(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", _mixed())
    res = run("-r", str(path), "--json")
    assert res.returncode == 0, res.stderr
    flows = [json.loads(line) for line in res.stdout.splitlines()]
    for f in flows:
        d = f["decision"]
        assert d["sensor"] == "sniffer" and d["flow_id"] == f["flow_id"]
        assert d["verdict"]["action"] in ("allow", "alert", "block")
    tls = flows[1]
    assert tls["decision"]["destination"]["names"]["sni"] == "api.deepseek.com"


def test_human_table(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", _mixed())
    res = run("-r", str(path), "--no-judge")
    assert res.returncode == 0, res.stderr
    assert "api.deepseek.com (sni)" in res.stdout
    assert "ollama.lab.example (http-host)" in res.stdout


def test_sll2_capture(tmp_path: Path) -> None:
    pkts = [CookedLinuxV2(proto=0x0800) / p[IP] for p in _mixed()]
    path = write_pcap(tmp_path / "any.pcap", pkts, linktype=276)
    res = run("-r", str(path), "--json", "--no-judge")
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["sni"] for x in res.stdout.splitlines()][1] == "api.deepseek.com"


def test_truncated_file_keeps_what_was_read(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", _mixed())
    data = path.read_bytes()
    path.write_bytes(data[:-30])  # cut inside the last record
    res = run("-r", str(path), "--json", "--no-judge")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 3
    assert "truncated-file: 1" in res.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-r", "/etc/hostname"], 4, "not a readable pcap"),
        (["-r", "/nonexistent.pcap"], 2, "does not exist"),
        ([], 2, "give either -r FILE or at least one -i IFACE"),
        (["-i", "lo", "--bpf", "tcp or"], 2, "not a valid BPF filter"),
        (["-i", "nosuchif0", "--duration", "1", "--no-judge"], 4, "capture on nosuchif0"),
        (["-r", "/etc/hostname", "-i", "lo"], 2, "either"),
        (["-r", "/etc/hostname", "--bpf", "tcp"], 2, "--bpf applies to live capture"),
    ],
)
def test_errors_are_one_line_with_exit_codes(args: list[str], code: int, message: str) -> None:
    res = run(*args)
    assert res.returncode == code, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_unsupported_link_type(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", [IP(src="192.0.2.1", dst="192.0.2.2")], linktype=147)
    res = run("-r", str(path))
    assert res.returncode == 4 and "link type 147 is not supported" in res.stderr


def test_record_writes_decisions_to_a_real_sqlite_store(tmp_path: Path) -> None:
    import sqlite3

    path = write_pcap(tmp_path / "c.pcap", _mixed())
    db = tmp_path / "ew.sqlite"
    res = run("-r", str(path), "--json", "--record", "--db", f"sqlite:///{db}")
    assert res.returncode == 0, res.stderr
    flows = [json.loads(line) for line in res.stdout.splitlines()]
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT flow_id, sensor, protocol, sni, dst_port FROM flows ORDER BY ts"
        ).fetchall()
    assert {r[0] for r in rows} == {f["flow_id"] for f in flows}
    assert {(r[1], r[2]) for r in rows} == {
        ("sniffer", "dns"),
        ("sniffer", "tls"),
        ("sniffer", "http"),
    }
    assert ("api.deepseek.com", 443) in {(r[3], r[4]) for r in rows}


def test_record_needs_judging() -> None:
    res = run("-r", "/etc/hostname", "--record", "--no-judge")
    assert res.returncode == 2 and "--record needs judging" in res.stderr
