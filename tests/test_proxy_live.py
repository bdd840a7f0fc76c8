"""The proxy sensor end to end: real mitmdump with the addon, real clients, real servers.

Everything runs in the three-namespace lab (tests/helpers/lab.py): clients in the
client namespace, mitmdump (regular on 10.77.1.1:8080, transparent on :8081 behind
our own nftables table) in the gateway, logging HTTPS/HTTP/WebSocket servers on
documentation addresses in the "internet" namespace, mapped to countries by the
lab GeoIP database. Each blocking test proves from the server's own log that
nothing reached it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, is_root
from helpers.geoip import build_lab_db
from helpers.lab import (
    INTERNET_V4,
    INTERNET_V6,
    InternetLab,
    internet_lab,
    transparent_ruleset,
    wait_for,
)
from helpers.servers import LabPKI, make_pki, read_log

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for namespaces and nftables"),
]

HOSTS = {
    "api.openai.com": INTERNET_V4["us"],
    "huggingface.co": INTERNET_V4["us"],
    "api.deepseek.com": INTERNET_V4["cn"],
    "ollama.lab.internal": INTERNET_V4["de"],
    "pinned.lab.internal": INTERNET_V4["de"],
}
POLICY = """
mode = "enforce"
approved = ["EU", "US"]
require = ["address", "operator"]
outside = "block"
passthrough_hosts = ["pinned.lab.internal"]

[unknown]
address = "block"
operator = "alert"

[[rules]]
name = "local-model-servers"
action = "allow"
host = ["*.lab.internal"]

[[rules]]
name = "no-card-numbers"
action = "block"
finding = ["payment-card"]
reason = "payment card numbers never leave the lab"
"""
CARD_CHAT = {
    "model": "x",
    "messages": [{"role": "user", "content": "charge my card 4111 1111 1111 1111 please"}],
}
PY = sys.executable
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))


@dataclass
class ProxyLab:
    net: InternetLab
    tmp: Path
    pki: LabPKI
    server_log: Path
    ca: Path
    db_regular: Path
    db_transparent: Path

    def client(
        self, scenario: str, base: str, *, proxy: bool = True, timeout: float = 60
    ) -> dict[str, Any]:
        env = [
            f"SSL_CERT_FILE={self.ca}",
            f"REQUESTS_CA_BUNDLE={self.ca}",
            "NO_PROXY=",
            "no_proxy=",
            f"HOME={self.tmp}",
            "HF_HUB_DISABLE_TELEMETRY=0",
        ]
        if proxy:
            env += ["HTTPS_PROXY=http://10.77.1.1:8080", "HTTP_PROXY=http://10.77.1.1:8080"]
        else:
            env += ["HTTPS_PROXY=", "HTTP_PROXY=", "https_proxy=", "http_proxy="]
        res = self.net.lab.sh(
            "env",
            *env,
            PY,
            str(ROOT / "tests/helpers/clients.py"),
            scenario,
            "--base",
            base,
            ns=self.net.client,
            timeout=timeout,
        )
        return json.loads(res.stdout.strip().splitlines()[-1])

    def curl(self, *args: str, proxy: bool = True) -> tuple[int, str]:
        extra = ["-x", "http://10.77.1.1:8080"] if proxy else ["--noproxy", "*"]
        res = self.net.lab.sh(
            "curl",
            "-s",
            "--max-time",
            "10",
            "--cacert",
            str(self.ca),
            *extra,
            *args,
            ns=self.net.client,
            check=False,
        )
        return res.returncode, res.stdout

    def server_events(self, since: float, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in read_log(self.server_log)
            if e["t"] >= since and (event is None or e["event"] == event)
        ]

    def rows(self, db: Path, since: float) -> list[Any]:
        from egresswatch.store import FlowFilter, open_store, query_flows

        store = open_store(f"sqlite:///{db}")
        try:
            return list(query_flows(store, FlowFilter(since=since), limit=500))
        finally:
            store.close()

    def wait_rows(self, db: Path, since: float, pred: Any, timeout: float = 10) -> list[Any]:
        """Rows are written by a batching thread: poll until one satisfies ``pred``."""
        found: list[Any] = []

        def ok() -> bool:
            nonlocal found
            found = [r for r in self.rows(db, since) if pred(r)]
            return bool(found)

        wait_for(ok, timeout=timeout, step=0.2)
        return found

    def metrics(self) -> str:
        return self.net.lab.sh(
            "curl", "-s", "http://127.0.0.1:9722/metrics", ns=self.net.gateway
        ).stdout


def _mitmdump(lab: ProxyLab, mode: str, port: int, db: Path, metrics: int) -> list[str]:
    return [
        MITMDUMP,
        "-q",
        "-s",
        str(ROOT / "addons/egresswatch.py"),
        "--mode",
        mode,
        "--listen-host",
        "" if mode == "transparent" else "10.77.1.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={lab.tmp / 'mitm'}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={lab.pki.ca_cert}",
        "--set",
        f"egresswatch_policy={lab.tmp / 'policy.toml'}",
        "--set",
        f"egresswatch_country_db={lab.tmp / 'lab.mmdb'}",
        "--set",
        f"egresswatch_asn_db={lab.tmp / 'lab.mmdb'}",
        "--set",
        f"egresswatch_geoip_dir={lab.tmp}",
        "--set",
        f"egresswatch_db=sqlite:///{db}",
        "--set",
        f"egresswatch_metrics_listen=127.0.0.1:{metrics}",
        "--set",
        "egresswatch_sensor_name=lab-gw",
        "--set",
        "egresswatch_body_limit=64k",
        "--set",
        "egresswatch_stream_above=512k",
    ]


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLab]:
    tmp = tmp_path_factory.mktemp("proxylab")
    addresses = [*INTERNET_V4.values(), *INTERNET_V6.values()]
    pki = make_pki(tmp / "pki", list(HOSTS), addresses)
    build_lab_db(tmp / "lab.mmdb")
    (tmp / "policy.toml").write_text(POLICY)
    with internet_lab("px", hosts=HOSTS) as net:
        lab = net.lab
        log = tmp / "server.jsonl"
        lab.spawn(
            net.internet,
            [
                PY,
                str(ROOT / "tests/helpers/servers.py"),
                *[a for addr in addresses for a in ("--bind", addr)],
                "--http",
                "80",
                "--http",
                "11434",
                "--https",
                "443",
                "--cert",
                str(pki.cert),
                "--key",
                str(pki.key),
                "--log",
                str(log),
            ],
            ready="READY",
        )
        pl = ProxyLab(
            net,
            tmp,
            pki,
            log,
            tmp / "mitm" / "mitmproxy-ca-cert.pem",
            tmp / "regular.db",
            tmp / "transparent.db",
        )
        regular = lab.spawn(
            net.gateway,
            _mitmdump(pl, "regular", 8080, pl.db_regular, 9722),
            log=tmp / "mitm-regular.log",
        )
        lab.wait_listen(net.gateway, 8080, proc=regular, timeout=30)
        transparent = lab.spawn(
            net.gateway,
            _mitmdump(pl, "transparent", 8081, pl.db_transparent, 9723),
            log=tmp / "mitm-transparent.log",
        )
        lab.wait_listen(net.gateway, 8081, proc=transparent, timeout=30)
        lab.nft(
            net.gateway,
            transparent_ruleset("egresswatch_px", net.client_iface, 8081),
            "egresswatch_px",
        )
        assert pl.ca.exists()
        yield pl


# -- regular mode: real clients ---------------------------------------------------------


def test_openai_chat_allowed_and_recorded(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("openai-chat", "https://api.openai.com")
    assert r == {"ok": True, "status": 200, "detail": "hello from the lab"}
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/chat/completions")
    row = rows[0]
    assert row.verdict == "allow" and row.service_id == "openai-api"
    assert row.country == "US" and row.dst_addr == INTERNET_V4["us"]
    assert row.client_app == "openai-python" and row.client_addr == "10.77.1.2"
    assert "chat-prompt" in row.payload_types
    reqs = plab.server_events(t0, "request")
    assert [e["path"] for e in reqs] == ["/v1/chat/completions"]


def test_deepseek_blocked_at_clienthello_no_connection(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("openai-chat", "https://api.deepseek.com")
    assert not r["ok"] and r["status"] is None  # no TLS handshake: a connection error
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.stage == "clienthello")
    assert rows[0].verdict == "block" and rows[0].sni == "api.deepseek.com"
    assert rows[0].operator_country == "CN" and rows[0].country == "CN"
    time.sleep(0.5)
    assert plab.server_events(t0) == [], "the blocked server saw a connection"


def test_body_block_451_and_server_saw_no_request(plab: ProxyLab) -> None:
    t0 = time.time()
    code, out = plab.curl(
        "https://api.openai.com/v1/chat/completions",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(CARD_CHAT),
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["rule"] == "no-card-numbers" and doc["service"] == "OpenAI API"
    assert doc["address_country"] == "US" and "chat-prompt" in doc["payload_types"]
    time.sleep(0.5)
    # connection_strategy=lazy: the first request of the connection was blocked, so the
    # server saw neither a request nor even a TCP connection.
    assert plab.server_events(t0) == []
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.stage == "request")
    assert rows[0].verdict == "block" and rows[0].findings >= 1


def test_openai_embeddings_and_file_upload(plab: ProxyLab) -> None:
    t0 = time.time()
    assert plab.client("openai-embed", "https://api.openai.com")["ok"]
    up = plab.client("openai-file", "https://api.openai.com")
    assert up["ok"] and up["detail"] > 1000
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/files")
    assert "file-upload" in rows[0].payload_types
    emb = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/embeddings")
    assert "embedding-input" in emb[0].payload_types
    paths = [e["path"] for e in plab.server_events(t0, "request")]
    assert paths == ["/v1/embeddings", "/v1/files"]


def test_ollama_client_to_lab_model_server(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("ollama-chat", "http://ollama.lab.internal:11434")
    assert r["ok"], r
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/api/chat")
    assert rows[0].verdict == "allow" and rows[0].client_app == "ollama"
    assert rows[0].country == "DE"


def test_huggingface_download_and_telemetry(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("hf-download", "https://huggingface.co")
    assert r["ok"], r
    assert "TestModel" in r["detail"]
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path and "/api/telemetry" in r.path)
    assert "telemetry" in rows[0].payload_types
    dl = plab.wait_rows(plab.db_regular, t0, lambda r: r.path and "/resolve/" in r.path)
    assert dl and all(r.client_app == "huggingface_hub" for r in dl)
    assert any("model-download" in r.payload_types for r in dl)


def test_http2_client_is_judged(plab: ProxyLab) -> None:
    t0 = time.time()
    code, out = plab.curl(
        "--http2",
        "-w",
        "\n%{http_version}",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(CARD_CHAT),
        "https://api.openai.com/v1/chat/completions",
    )
    body, version = out.rsplit("\n", 1)
    assert code == 0 and version == "2"  # h2 between client and proxy
    assert json.loads(body)["rule"] == "no-card-numbers"  # judged, and blocked, over h2
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.verdict == "block")
    assert rows[0].stage == "request" and rows[0].path == "/v1/chat/completions"
    time.sleep(0.3)
    assert plab.server_events(t0) == []
    ok = plab.client("httpx-h2", "https://api.openai.com")
    assert ok["ok"], ok


def test_websocket_messages_judged_one_by_one(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("ws", "https://api.openai.com")  # a prompt, then a card number
    assert r["ok"], r
    assert r["detail"][0] == 'echo: {"prompt": "hello lab"}' and r["detail"][1] is None
    time.sleep(0.3)
    msgs = plab.server_events(t0, "ws-message")
    assert [m["data"] for m in msgs] == ['{"prompt": "hello lab"}'], "card message got through"
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.protocol == "websocket")
    rows = plab.wait_rows(
        plab.db_regular, t0, lambda r: r.protocol == "websocket" and r.verdict == "block"
    )
    assert rows[0].stage == "message"


def test_curl_blocked_destination(plab: ProxyLab) -> None:
    t0 = time.time()
    code, _ = plab.curl("https://api.deepseek.com/v1/models")
    assert code != 0  # TLS refused: curl reports a handshake failure
    time.sleep(0.3)
    assert plab.server_events(t0) == []


def test_metrics_count_verdicts(plab: ProxyLab) -> None:
    t0 = time.time()
    plab.curl("https://api.deepseek.com/")
    plab.wait_rows(plab.db_regular, t0, lambda r: r.verdict == "block")
    text = plab.metrics()
    blocks = [
        line
        for line in text.splitlines()
        if line.startswith("egresswatch_decisions_total{") and 'verdict="block"' in line
    ]
    assert blocks and sum(float(line.rsplit(" ", 1)[1]) for line in blocks) >= 1
    assert 'country="CN"' in "".join(blocks)


def test_large_upload_streamed_intact(plab: ProxyLab) -> None:
    t0 = time.time()
    blob = plab.tmp / "upload-ok.bin"
    data = (b"lab measurement row, nothing sensitive here\n" * 30000)[: 1024 * 1024]
    blob.write_bytes(data)
    code, out = plab.curl(
        "-H",
        "content-type: application/octet-stream",
        "--data-binary",
        f"@{blob}",
        "https://api.openai.com/v1/uploads/x",
    )
    assert code == 0 and json.loads(out)["ok"]
    reqs = plab.server_events(t0, "request")
    assert [r["body_len"] for r in reqs] == [len(data)]
    assert reqs[0]["body_sha256"] == hashlib.sha256(data).hexdigest()
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/uploads/x")
    assert rows[0].verdict == "allow" and rows[0].stage == "request"
    assert "body-truncated" in rows[0].flags  # judged on its first 64 KiB


def test_buffered_upload_blocked_451_and_nothing_left(plab: ProxyLab) -> None:
    t0 = time.time()
    blob = plab.tmp / "upload-card-300k.csv"
    blob.write_bytes(b"customer,card\nalice,4111 1111 1111 1111\n" + b"x" * (300 * 1024))
    code, out = plab.curl(
        "-H",
        "content-type: text/csv",
        "--data-binary",
        f"@{blob}",
        "https://api.openai.com/v1/uploads/buffered",
    )
    assert code == 0 and json.loads(out)["rule"] == "no-card-numbers"
    time.sleep(0.3)
    assert plab.server_events(t0) == []  # not even a connection


def test_streamed_upload_blocked_on_its_head_sends_no_body_byte(plab: ProxyLab) -> None:
    t0 = time.time()
    blob = plab.tmp / "upload-card.csv"
    blob.write_bytes(b"customer,card\nalice,4111 1111 1111 1111\n" + b"x" * (1024 * 1024))
    # Above egresswatch_stream_above the body is streamed: the verdict comes after the
    # headers left, so the client gets no 451 (it waits; --max-time bounds it).
    plab.net.lab.sh(
        "curl",
        "-s",
        "--max-time",
        "4",
        "--cacert",
        str(plab.ca),
        "-x",
        "http://10.77.1.1:8080",
        "-H",
        "content-type: text/csv",
        "--data-binary",
        f"@{blob}",
        "https://api.openai.com/v1/uploads/y",
        ns=plab.net.client,
        check=False,
    )
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/uploads/y")
    assert rows[0].verdict == "block" and rows[0].rule == "no-card-numbers"
    time.sleep(0.5)
    events = plab.server_events(t0)
    # The request line and headers left when streaming began (documented); no body byte did.
    assert [e["event"] for e in events if e["event"].startswith("request")][:1] == ["request-head"]
    assert not [e for e in events if e["event"] == "request"], events
    partial = [e for e in events if e["event"] == "request-incomplete"]
    assert all(e["body_len"] == 0 for e in partial), partial


def test_passthrough_host_not_intercepted_but_recorded(plab: ProxyLab) -> None:
    t0 = time.time()
    # The client trusts only the server's own CA: this works only without interception.
    res = plab.net.lab.sh(
        "curl",
        "-s",
        "--max-time",
        "10",
        "--cacert",
        str(plab.pki.ca_cert),
        "-x",
        "http://10.77.1.1:8080",
        "https://pinned.lab.internal/pinned",
        ns=plab.net.client,
        check=False,
    )
    assert res.returncode == 0 and json.loads(res.stdout)["path"] == "/pinned"
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.sni == "pinned.lab.internal")
    assert rows[0].stage == "clienthello" and rows[0].verdict == "allow"
    assert rows[0].country == "DE"


HOLDING_TLS_CLIENT = """
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
c = http.client.HTTPSConnection("10.77.1.1", 8080, context=ctx, timeout=10)
c.set_tunnel("api.openai.com", 443)
c.request("GET", "/local-client", headers={"user-agent": "curl/8.0"})
print(c.getresponse().status, flush=True)
sys.stdin.readline()
"""


def test_local_client_attributed_to_its_process(plab: ProxyLab) -> None:
    import subprocess

    t0 = time.time()
    # A client in the gateway namespace talks to the proxy on the same host and keeps its
    # connection (and itself) until its row is recorded: the /proc lookup cannot race an
    # exit (a curl that is gone before the lookup runs was attributed to nobody under load).
    client = subprocess.Popen(
        ["ip", "netns", "exec", plab.net.gateway, sys.executable, "-c", HOLDING_TLS_CLIENT,
         str(plab.ca)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "200"
        rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/local-client")
    finally:
        client.communicate("bye\n", timeout=10)
    assert rows[0].client_pid == client.pid  # `ip netns exec` execs python in place
    assert (rows[0].client_process or "").startswith("python")
    assert rows[0].client_app == "curl"  # the User-Agent's app hint


# -- transparent mode -------------------------------------------------------------------


def test_transparent_client_knows_no_proxy(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("openai-chat", "https://api.openai.com", proxy=False)
    assert r["ok"], r
    rows = plab.wait_rows(plab.db_transparent, t0, lambda r: r.path == "/v1/chat/completions")
    assert rows[0].dst_addr == INTERNET_V4["us"] and rows[0].country == "US"
    peers = {e["peer"][0] for e in plab.server_events(t0, "connect")}
    assert peers == {"10.77.2.1"}, "the server must see the gateway (mitmproxy), not the client"


def test_transparent_clienthello_block_no_connection(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("openai-chat", "https://api.deepseek.com", proxy=False)
    assert not r["ok"]
    rows = plab.wait_rows(plab.db_transparent, t0, lambda r: r.stage == "clienthello")
    assert rows[0].verdict == "block" and rows[0].dst_addr == INTERNET_V4["cn"]
    time.sleep(0.3)
    assert plab.server_events(t0) == []


def test_transparent_plain_http_blocked_at_headers(plab: ProxyLab) -> None:
    t0 = time.time()
    code, out = plab.curl("http://api.deepseek.com/v1/chat/completions", proxy=False)
    assert code == 0 and json.loads(out)["operator_country"] == "CN"
    time.sleep(0.3)
    assert plab.server_events(t0) == []


def test_transparent_websocket_and_http2_judged(plab: ProxyLab) -> None:
    t0 = time.time()
    r = plab.client("ws", "https://api.openai.com", proxy=False)
    assert r["ok"] and r["detail"][1] is None, r  # the card message was dropped
    time.sleep(0.3)
    assert [m["data"] for m in plab.server_events(t0, "ws-message")] == ['{"prompt": "hello lab"}']
    code, out = plab.curl(
        "--http2",
        "-w",
        "\n%{http_version}",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(CARD_CHAT),
        "https://api.openai.com/v1/chat/completions",
        proxy=False,
    )
    body, version = out.rsplit("\n", 1)
    assert code == 0 and version == "2" and json.loads(body)["rule"] == "no-card-numbers"
    for proto in ("websocket", "https"):
        rows = plab.wait_rows(
            plab.db_transparent, t0, lambda r, p=proto: r.verdict == "block" and r.protocol == p
        )
        assert rows, proto


def test_transparent_ipv6_judged_by_address(plab: ProxyLab) -> None:
    t0 = time.time()
    us, cn = INTERNET_V6["us"], INTERNET_V6["cn"]
    code, out = plab.curl(f"https://[{us}]/v6", proxy=False)
    assert code == 0 and json.loads(out)["path"] == "/v6"
    rows = plab.wait_rows(plab.db_transparent, t0, lambda r: r.path == "/v6")
    assert rows[0].dst_addr == us and rows[0].country == "US"
    t1 = time.time()
    code, _ = plab.curl(f"https://[{cn}]/v6", proxy=False)
    assert code != 0  # no SNI, but the address is in a CN range: refused at the ClientHello
    rows = plab.wait_rows(plab.db_transparent, t1, lambda r: r.dst_addr == cn)
    assert rows[0].stage == "clienthello" and rows[0].verdict == "block"
    time.sleep(0.3)
    assert [e for e in plab.server_events(t1) if e["event"] == "connect"] == []


_RAW_TCP = """
import socket, sys
s = socket.create_connection((sys.argv[1], 443), timeout=5)
s.sendall(b"SSH-2.0-OpenSSH_9.6 lab\\r\\n")
try:
    print("REPLY", s.recv(100))
except OSError as e:
    print("ERR", e)
"""


def test_transparent_raw_tcp_judged_by_address(plab: ProxyLab) -> None:
    # Not TLS, not HTTP on port 443: mitmproxy relays it as raw TCP, judged by address.
    t0 = time.time()
    plab.net.lab.sh(PY, "-c", _RAW_TCP, INTERNET_V4["cn"], ns=plab.net.client, check=False)
    rows = plab.wait_rows(plab.db_transparent, t0, lambda r: r.protocol == "raw")
    assert rows[0].verdict == "block" and rows[0].dst_addr == INTERNET_V4["cn"]
    time.sleep(0.3)
    assert [e for e in plab.server_events(t0) if e["event"] == "connect"] == []


_UDP_PROBE = """
import select, socket, sys, time
socks = {}
for port in (443, 4443):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    socks[s] = port
print("READY", flush=True)
got = set()
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    ready, _, _ = select.select(list(socks), [], [], 0.1)
    for s in ready:
        s.recvfrom(100)
        got.add(socks[s])
print("GOT", sorted(got), flush=True)
"""
_UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in (443, 4443):
    s.sendto(b"quic-initial", (sys.argv[1], port))
"""


def test_transparent_quic_dropped(plab: ProxyLab) -> None:
    # UDP/443 from the client is dropped by our table (clients fall back to TCP, where
    # they are inspected); UDP to another port still passes, so the path itself works.
    lab, us = plab.net.lab, INTERNET_V4["us"]
    probe = lab.spawn(plab.net.internet, [PY, "-c", _UDP_PROBE, us], ready="READY")
    lab.sh(PY, "-c", _UDP_SEND, us, ns=plab.net.client)
    assert probe.stdout is not None
    assert probe.stdout.readline().strip() == b"GOT [4443]"


def test_nft_table_is_ours(plab: ProxyLab) -> None:
    res = plab.net.lab.sh("nft", "list", "tables", ns=plab.net.gateway)
    assert "inet egresswatch_px" in res.stdout
