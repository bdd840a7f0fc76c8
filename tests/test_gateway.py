"""`egresswatch gateway`: the exact commands without root, then for real in a namespace lab.

The lab test runs `gateway setup` inside the gateway namespace (`ip netns exec`),
`egresswatch run` in transparent mode there, and a client that is not configured
for any proxy: its HTTPS request is inspected and recorded all the same. After
`gateway teardown` no table is left and the client talks to the server directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import egresswatch_bin, is_root

from egresswatch import gateway as gw
from egresswatch.cli import cli

# -- the commands, without root ----------------------------------------------------------

FULL_RULESET = """\
add table inet egresswatch
delete table inet egresswatch
table inet egresswatch {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth1" tcp dport { 80, 443 } redirect to :8081
        iifname "eth1" meta l4proto { tcp, udp } th dport 53 redirect to :5353
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "eth1" udp dport 443 drop
    }
}
"""


def test_full_plan_commands_exactly() -> None:
    plan = gw.GatewayPlan(lan="eth1", proxy_port=8081, block_quic=True, dns=True, dns_port=5353)
    assert gw.setup_commands(plan) == [
        gw.Command(("ip", "-o", "link", "show", "dev", "eth1")),
        gw.Command(("sysctl", "-qw", "net.ipv4.ip_forward=1")),
        gw.Command(("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")),
        gw.Command(("nft", "-f", "-"), FULL_RULESET),
    ]


def test_minimal_plan_has_no_dns_or_quic_rules_and_no_ipv6() -> None:
    plan = gw.GatewayPlan(lan="lan0", ipv6=False)
    cmds = gw.setup_commands(plan)
    assert [c.argv for c in cmds] == [
        ("ip", "-o", "link", "show", "dev", "lan0"),
        ("sysctl", "-qw", "net.ipv4.ip_forward=1"),
        ("nft", "-f", "-"),
    ]
    script = cmds[-1].input or ""
    assert 'iifname "lan0" tcp dport { 80, 443 } redirect to :8080' in script
    assert "53" not in script and "drop" not in script


def test_teardown_is_one_delete_table() -> None:
    assert gw.teardown_command() == gw.Command(("nft", "delete", "table", "inet", "egresswatch"))
    assert str(gw.teardown_command("gw2")) == "nft delete table inet gw2"


class FakeRunner:
    """Answers like the real programs would; records what was asked."""

    def __init__(self, fail: dict[str, gw.Result] | None = None, table: bool = True) -> None:
        self.calls: list[gw.Command] = []
        self.fail = fail or {}
        self.table = table

    def __call__(self, cmd: gw.Command) -> gw.Result:
        self.calls.append(cmd)
        key = cmd.argv[0] + " " + cmd.argv[1]
        if key in self.fail:
            return self.fail[key]
        if cmd.argv[:2] == ("nft", "list"):
            return gw.Result(0 if self.table else 1, "table inet egresswatch {}\n", "")
        return gw.Result(0, "", "")


def test_setup_runs_the_commands_in_order() -> None:
    run = FakeRunner()
    plan = gw.GatewayPlan(lan="eth1")
    assert gw.setup(plan, run) == run.calls == gw.setup_commands(plan)


@pytest.mark.parametrize(
    ("failing", "result", "message"),
    [
        ("ip -o", gw.Result(1, "", 'Device "eth9" does not exist.'), "no interface 'eth1' here"),
        (
            "sysctl -qw",
            gw.Result(255, "", "sysctl: permission denied on key 'net.ipv4.ip_forward'"),
            "needs root",
        ),
        (
            "nft -f",
            gw.Result(1, "", "Error: Operation not permitted"),
            "needs root (CAP_NET_ADMIN)",
        ),
        ("nft -f", gw.Result(1, "", "Error: syntax error"), "nft -f - failed: Error: syntax error"),
    ],
)
def test_setup_stops_at_the_first_failure(failing: str, result: gw.Result, message: str) -> None:
    run = FakeRunner(fail={failing: result})
    with pytest.raises(gw.GatewayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gw.setup(gw.GatewayPlan(lan="eth1"), run)
    assert " ".join(run.calls[-1].argv).startswith(failing)


def test_teardown_without_a_table_deletes_nothing() -> None:
    run = FakeRunner(table=False)
    assert gw.teardown("egresswatch", run) is False
    assert [c.argv[:2] for c in run.calls] == [("nft", "list")]
    run = FakeRunner(table=True)
    assert gw.teardown("egresswatch", run) is True
    assert run.calls[-1] == gw.teardown_command()


def test_cli_dry_run_prints_commands_and_ruleset() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "gateway",
            "setup",
            "--lan",
            "eth1",
            "--proxy-port",
            "8081",
            "--block-quic",
            "--dns",
            "--dns-port",
            "5353",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ip -o link show dev eth1\nsysctl -qw net.ipv4.ip_forward=1\n")
    assert "nft -f - <<'EOF'\n" + FULL_RULESET + "EOF\n" in result.stdout
    result = CliRunner().invoke(cli, ["gateway", "teardown", "--dry-run", "--table", "gw_b"])
    assert result.stdout == "nft delete table inet gw_b\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lan", "a b"], "is not a network interface name"),
        (["--lan", "averyveryverylongname"], "is not a network interface name"),
        (["--lan", "eth0", "--proxy-port", "0"], "0 is not in the range 1<=x<=65535"),
        (["--lan", "eth0", "--table", "bad-name"], "is not a table name"),
        ([], "Missing option '--lan'"),
    ],
)
def test_cli_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["gateway", "setup", "--dry-run", *args])
    assert result.exit_code == 2
    assert message in result.stderr


# -- for real, in the namespace lab -------------------------------------------------------

lab_only = pytest.mark.skipif(not is_root(), reason="needs root for namespaces and nftables")


def _in(ns: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@lab_only
@pytest.mark.root
def test_setup_and_teardown_for_real_idempotent(tmp_path: Path) -> None:
    from helpers.lab import Lab

    with Lab("gwt") as lab:
        ns = lab.netns("g")
        lab.sh("ip", "-n", ns, "link", "add", "gwl0", "type", "veth", "peer", "name", "gwl1")
        lab.sysctl(ns, "net.ipv4.ip_forward", "0")
        lab.tables.append((ns, "inet egresswatch"))  # removed by the lab even if we fail
        argv = [egresswatch_bin(), "gateway", "setup", "--lan", "gwl0", "--block-quic", "--dns"]
        for _ in range(2):  # idempotent: the second run replaces the table
            res = _in(ns, *argv)
            assert res.returncode == 0, res.stderr
        listed = _in(ns, "nft", "list", "ruleset").stdout
        assert listed.count("table inet egresswatch") == 1
        assert listed.count("redirect to :8080") == 1
        assert 'iifname "gwl0" udp dport 443 drop' in listed
        assert _in(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        shown = _in(ns, egresswatch_bin(), "gateway", "show")
        assert shown.returncode == 0 and "chain prerouting" in shown.stdout
        res = _in(ns, egresswatch_bin(), "gateway", "teardown")
        assert res.returncode == 0 and "deleted" in res.stderr
        assert "egresswatch" not in _in(ns, "nft", "list", "tables").stdout
        res = _in(ns, egresswatch_bin(), "gateway", "teardown")
        assert res.returncode == 0 and "nothing to do" in res.stderr
        assert _in(ns, egresswatch_bin(), "gateway", "show").returncode == 1
        res = _in(ns, egresswatch_bin(), "gateway", "setup", "--lan", "nope0")
        assert res.returncode == 4 and "no interface 'nope0' here" in res.stderr
        assert "egresswatch" not in _in(ns, "nft", "list", "tables").stdout


@lab_only
@pytest.mark.root
@pytest.mark.slow
def test_client_behind_gateway_is_inspected_without_proxy_settings(tmp_path: Path) -> None:
    from helpers.geoip import build_lab_db
    from helpers.lab import INTERNET_V4, internet_lab
    from helpers.runmon import RunProc, flow_rows, start_run
    from helpers.servers import make_pki, read_log

    hosts = {"api.openai.com": INTERNET_V4["us"]}
    pki = make_pki(tmp_path / "pki", list(hosts), list(INTERNET_V4.values()))
    geo = build_lab_db(tmp_path / "lab.mmdb")
    server_log = tmp_path / "server.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "EGRESSWATCH_CONFIG": "",
        "EGRESSWATCH_DB": "",
        "EGRESSWATCH_POLICY": "",
    }
    db = tmp_path / "data" / "egresswatch" / "egresswatch.db"
    with internet_lab("gwl", hosts=hosts) as net:
        lab = net.lab
        lab.spawn(
            net.internet,
            [
                sys.executable,
                str(Path(__file__).parent / "helpers/servers.py"),
                "--bind",
                INTERNET_V4["us"],
                "--https",
                "443",
                "--cert",
                str(pki.cert),
                "--key",
                str(pki.key),
                "--log",
                str(server_log),
            ],
            ready="READY",
        )
        lab.tables.append((net.gateway, "inet egresswatch"))
        res = _in(
            net.gateway,
            egresswatch_bin(),
            "gateway",
            "setup",
            "--lan",
            net.client_iface,
            "--block-quic",
        )
        assert res.returncode == 0, res.stderr
        rp: RunProc = start_run(
            lab,
            net.gateway,
            [
                egresswatch_bin(),
                "run",
                "--proxy-mode",
                "transparent",
                "--listen",
                "0.0.0.0:8080",
                "--upstream-ca",
                str(pki.ca_cert),
                "--country-db",
                str(geo),
                "--metrics-listen",
                "127.0.0.1:9721",
                # the sniffer too, on the client side of the gateway: one process, two sensors
                "-i",
                net.client_iface,
            ],
            env,
        )
        assert f"Sniffer: capturing on {net.client_iface}" in rp.output()
        ca = home / ".mitmproxy" / "mitmproxy-ca-cert.pem"
        assert "Proxy: transparent on 0.0.0.0:8080" in rp.output()
        # The client has no proxy settings at all: its packets are redirected.
        curl = [
            "curl",
            "-sS",
            "--max-time",
            "15",
            "--noproxy",
            "*",
            "--cacert",
            str(ca),
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            "https://api.openai.com/v1/chat/completions",
        ]
        res = _in(net.client, *curl)
        assert res.returncode == 0, res.stderr
        assert "chat.completion" in res.stdout
        reqs = [e for e in read_log(server_log) if e["event"] == "request"]
        assert any(e["path"] == "/v1/chat/completions" for e in reqs)
        # One QUIC flow around the proxy (UDP/443 is not redirected; --block-quic drops it
        # at the forward hook, after the sniffer on the LAN side has seen it leave).
        here = str(Path(__file__).parent)
        res = _in(net.client, sys.executable, "-c", QUIC_CLIENT, INTERNET_V4["cn"], here)
        assert res.returncode == 0, res.stderr
        os.kill(rp.proc.pid, 15)
        assert rp.proc.wait(60) == 0, rp.output()
        # Bypass: exactly the QUIC flow, named, with its client; the proxied HTTPS
        # connection the sniffer also saw is not one.
        alerts_log = db.with_name(db.name + ".alerts.jsonl")
        alerts = [json.loads(line) for line in alerts_log.read_text().splitlines()]
        bypass = [a for a in alerts if a["rule"] == "bypass"]
        assert len(bypass) == 1, alerts
        assert bypass[0]["client"] == net.client_addr
        assert bypass[0]["host"] == "chat.deepseek.com"
        assert bypass[0]["country"] == "CN"
        assert all(a.get("host") != "api.openai.com" for a in bypass)
        rows = [r for r in flow_rows(db) if r.path == "/v1/chat/completions"]
        assert rows, "the redirected request was not recorded"
        row = rows[0]
        assert (row.sensor, row.host, row.country, row.dst_addr) == (
            "proxy",
            "api.openai.com",
            "US",
            INTERNET_V4["us"],
        )
        assert row.client_addr == net.client_addr
        assert (row.service_id, row.operator_country) == ("openai-api", "US")
        # The sniffer saw the same connection before NAT, by its ClientHello, and the
        # supervisor flushed its open flows into the same store at SIGTERM.
        sniffed = [r for r in flow_rows(db) if r.sensor == "sniffer" and r.sni == "api.openai.com"]
        assert sniffed, [(r.sensor, r.host, r.dst_port) for r in flow_rows(db)]
        assert {(r.dst_addr, r.dst_port, r.country) for r in sniffed} == {
            (INTERNET_V4["us"], 443, "US")
        }
        # Teardown: one delete, no table left, and the client now reaches the server itself
        # (so mitmproxy's CA no longer verifies the server's certificate).
        res = _in(net.gateway, egresswatch_bin(), "gateway", "teardown")
        assert res.returncode == 0, res.stderr
        assert "egresswatch" not in _in(net.gateway, "nft", "list", "tables").stdout
        res = _in(net.client, *curl)
        assert res.returncode != 0 and "certificate" in res.stderr.lower()
        res = _in(net.client, *curl[:-1], "--cacert", str(pki.ca_cert), curl[-1])
        assert res.returncode == 0, res.stderr


QUIC_CLIENT = """
import os, socket, sys
sys.path.insert(0, sys.argv[2])
from helpers.packets import client_hello, quic_initials_for_hello
hello = client_hello("chat.deepseek.com", ("h3",), quic=True)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for dg in quic_initials_for_hello(hello, os.urandom(8), packets=2):
        s.sendto(dg, (sys.argv[1], 443))
"""


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("READY", flush=True)
with open(sys.argv[3], "a", buffering=1) as log:
    while True:
        data, peer = s.recvfrom(2048)
        log.write(data.decode(errors="replace") + "\\n")
"""


def _send_udp(ns: str, addr: str, port: int, payload: str) -> None:
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "[s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2]))) for _ in range(3)]"
    )
    res = _in(ns, sys.executable, "-c", code, addr, str(port), payload)
    assert res.returncode == 0, res.stderr


def _wait_lines(path: Path, want: str, timeout: float = 5.0) -> bool:
    from helpers.lab import wait_for

    return wait_for(lambda: path.exists() and want in path.read_text(), timeout)


@lab_only
@pytest.mark.root
@pytest.mark.slow
def test_dns_redirect_and_quic_drop_for_real(tmp_path: Path) -> None:
    """--dns sends a query for any resolver to the gateway; --block-quic drops UDP/443."""
    from helpers.lab import INTERNET_V4, internet_lab

    us = INTERNET_V4["us"]
    with internet_lab("gwu", v6=False) as net:
        lab = net.lab
        gw_dns, quic = tmp_path / "gw-dns.txt", tmp_path / "quic.txt"
        lab.spawn(
            net.gateway,
            [sys.executable, "-c", UDP_SINK, "0.0.0.0", "5353", str(gw_dns)],
            ready="READY",
        )
        lab.spawn(
            net.internet, [sys.executable, "-c", UDP_SINK, us, "443", str(quic)], ready="READY"
        )
        lab.tables.append((net.gateway, "inet egresswatch"))
        res = _in(
            net.gateway,
            egresswatch_bin(),
            "gateway",
            "setup",
            "--lan",
            net.client_iface,
            "--block-quic",
            "--dns",
            "--dns-port",
            "5353",
        )
        assert res.returncode == 0, res.stderr
        # A query addressed to a resolver on the "internet" lands on the gateway's port 5353.
        _send_udp(net.client, us, 53, "dns-query-1")
        assert _wait_lines(gw_dns, "dns-query-1")
        # QUIC to the server is dropped at the gateway...
        _send_udp(net.client, us, 443, "quic-1")
        assert not _wait_lines(quic, "quic-1", timeout=1.5)
        res = _in(net.gateway, egresswatch_bin(), "gateway", "teardown")
        assert res.returncode == 0, res.stderr
        # ...and passes once the table is gone; DNS is no longer redirected.
        _send_udp(net.client, us, 443, "quic-2")
        assert _wait_lines(quic, "quic-2")
        _send_udp(net.client, us, 53, "dns-query-2")
        assert not _wait_lines(gw_dns, "dns-query-2", timeout=1.0)
