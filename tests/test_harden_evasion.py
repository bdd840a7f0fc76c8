"""Evasion (issue #8), each with a real client through the real proxy lab.

The lab is the one of tests/test_proxy_live.py (three namespaces, mitmdump with the
egresswatch addon in regular mode on 10.77.1.1:8080 and transparent mode behind our own
nftables table, logging servers on documentation addresses mapped to countries, the
enforce policy there: US/EU approved, CN blocked, card numbers blocked). The server's own
log is the witness that a blocked request never arrived.

- Domain fronting: SNI of an approved service, Host header of a blocked one.
- IP-literal HTTPS without SNI: judged by the address.
- Upper-case and trailing-dot host names: normalised to the catalogued service.
- A punycode IDN homograph of a known service: flagged as a lookalike.
- gzip / deflate / br / zstd request bodies and chunked transfer encoding: decoded before
  classification (the card-number rule still fires).
- A 1 GiB streamed upload: judged on its start, arrives intact, the proxy's memory bounded.

Already covered elsewhere: HTTP/2 and WebSocket are judged like HTTP/1.1
(test_proxy_live.py::test_http2_client_is_judged, ::test_websocket_messages_judged_one_by_one),
QUIC is dropped in transparent mode (::test_transparent_quic_dropped) and named by the
sniffer (test_sniffer_live.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import time
import zlib
from pathlib import Path

import brotli
import pytest
import test_proxy_live as live
import zstandard
from conftest import is_root
from helpers.lab import INTERNET_V4
from helpers.load import RssSampler
from test_proxy_live import CARD_CHAT, ProxyLab

plab = live.plab  # the lab fixture (module scope: one lab for this module)

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for namespaces and nftables"),
]


def _no_request(plab: ProxyLab, t0: float, path: str) -> None:
    time.sleep(0.5)
    seen = [e for e in plab.server_events(t0) if e.get("path") == path]
    assert seen == [], f"the server saw {seen}"


# -- domain fronting ------------------------------------------------------------------------


@pytest.mark.parametrize("transparent", [False, True], ids=["regular", "transparent"])
def test_domain_fronting_judged_by_the_stricter_name_and_flagged(
    plab: ProxyLab, transparent: bool
) -> None:
    t0 = time.time()
    path = f"/v1/chat/completions?front={int(transparent)}"
    code, out = plab.curl(
        "--http1.1",
        "-H",
        "Host: api.deepseek.com",  # the blocked (CN) service hidden behind...
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps({"model": "x", "messages": [{"role": "user", "content": "hello"}]}),
        "https://api.openai.com" + path,  # ...the SNI of an approved (US) one
        proxy=not transparent,
    )
    db = plab.db_transparent if transparent else plab.db_regular
    rows = plab.wait_rows(db, t0, lambda r: r.http_host == "api.deepseek.com")
    assert rows, "no row for the fronted request"
    row = rows[-1]
    assert row.sni == "api.openai.com"
    assert row.verdict == "block", row
    assert "name-mismatch" in row.flags, row.flags
    assert code == 0 and json.loads(out).get("rule"), out  # a readable 451 naming the rule
    _no_request(plab, t0, path)


# -- IP literal, no SNI --------------------------------------------------------------------


def test_ip_literal_https_without_sni_judged_by_address(plab: ProxyLab) -> None:
    t0 = time.time()
    cn = INTERNET_V4["cn"]
    code, _ = plab.curl("-k", f"https://{cn}/v1/chat/completions", proxy=False)
    assert code != 0  # blocked before any TLS handshake with the server
    rows = plab.wait_rows(plab.db_transparent, t0, lambda r: r.dst_addr == cn)
    assert rows and rows[0].sni is None and rows[0].country == "CN"
    assert rows[0].verdict == "block"
    time.sleep(0.5)
    assert [e for e in plab.server_events(t0) if e.get("local", [None])[0] == cn] == []


# -- host name spellings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["API.DEEPSEEK.COM", "api.deepseek.com.", "Api.DeepSeek.Com."], ids=str
)
def test_case_and_trailing_dot_normalised(plab: ProxyLab, host: str) -> None:
    t0 = time.time()
    path = f"/v1/models?spelling={host.replace('.', '_')}"
    code, out = plab.curl(f"http://{host}{path}")
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: (r.path or "").startswith("/v1/models"))
    assert rows, "no row"
    assert rows[0].service_id == "deepseek-api", rows[0]
    assert rows[0].host == "api.deepseek.com", rows[0].host
    assert rows[0].verdict == "block"
    assert code == 0 and json.loads(out).get("rule"), out
    _no_request(plab, t0, path)


def test_punycode_homograph_flagged_as_lookalike(plab: ProxyLab) -> None:
    t0 = time.time()
    host = "api.dееpseek.com".encode("idna").decode()  # Cyrillic 'е' (U+0435) twice
    assert host == "api.xn--dpseek-3ofa.com"
    code, out = plab.curl(f"http://{host}/v1/chat/completions")
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: "xn--" in (r.host or r.http_host or ""))
    assert rows, "no row"
    assert "lookalike" in rows[0].flags, rows[0].flags
    assert rows[0].service_match == "lookalike"
    assert rows[0].verdict == "block"
    assert code == 0 and json.loads(out).get("rule"), out


# -- encoded bodies -------------------------------------------------------------------------


def _encode(data: bytes, enc: str) -> bytes:
    return {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[enc](data)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("enc", ["identity", "gzip", "deflate", "br", "zstd"])
def test_encoded_and_chunked_bodies_decoded_before_classification(
    plab: ProxyLab, enc: str, chunked: bool
) -> None:
    t0 = time.time()
    raw = json.dumps(CARD_CHAT).encode()
    body = raw if enc == "identity" else _encode(raw, enc)
    blob = plab.tmp / f"card-{enc}-{int(chunked)}.bin"
    blob.write_bytes(body)
    path = f"/v1/chat/completions?enc={enc}&chunked={int(chunked)}"
    args = ["--http1.1", "-H", "content-type: application/json"]
    if enc != "identity":
        args += ["-H", f"content-encoding: {enc}"]
    if chunked:
        args += ["-H", "transfer-encoding: chunked"]
    code, out = plab.curl(*args, "--data-binary", f"@{blob}", "https://api.openai.com" + path)
    # query values are stored redacted: the request is the first such row since t0
    rows = plab.wait_rows(
        plab.db_regular, t0, lambda r: (r.path or "").startswith("/v1/chat/completions")
    )
    assert rows and rows[0].verdict == "block" and rows[0].rule == "no-card-numbers", rows
    if not chunked:
        assert code == 0, out
        assert json.loads(out)["rule"] == "no-card-numbers", out  # a readable 451
        _no_request(plab, t0, path)
        return
    # A chunked body has no length: the proxy streams it, holding back its first bytes until
    # judged (docs/proxy.md); the head went upstream, no body byte did, the client's
    # connection is closed (curl 52: empty reply).
    assert code == 52, (code, out)
    time.sleep(0.5)
    events = [e for e in plab.server_events(t0) if e.get("path") == path]
    assert events and all(e.get("body_len") in (None, 0) for e in events), events


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_http2_encoded_body_decoded_before_classification(plab: ProxyLab, enc: str) -> None:
    """The same card number, compressed, over HTTP/2 between client and proxy."""
    t0 = time.time()
    blob = plab.tmp / f"card-h2-{enc}.bin"
    blob.write_bytes(_encode(json.dumps(CARD_CHAT).encode(), enc))
    path = f"/v1/chat/completions?h2={enc}"
    code, out = plab.curl(
        "--http2",
        "-w",
        "\n%{http_version}",
        "-H",
        "content-type: application/json",
        "-H",
        f"content-encoding: {enc}",
        "--data-binary",
        f"@{blob}",
        "https://api.openai.com" + path,
    )
    body, version = out.rsplit("\n", 1)
    assert code == 0 and version == "2", out
    assert json.loads(body)["rule"] == "no-card-numbers", body
    _no_request(plab, t0, path)


def test_blocked_chunked_upload_never_completes_upstream(plab: ProxyLab) -> None:
    t0 = time.time()
    blob = plab.tmp / "card-chunked.json"
    blob.write_bytes(json.dumps(CARD_CHAT).encode())
    path = "/v1/chat/completions?complete=1"
    code, _ = plab.curl(
        "--http1.1",
        "-H",
        "content-type: application/json",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        f"@{blob}",
        "https://api.openai.com" + path,
    )
    assert code == 52
    time.sleep(0.5)
    events = [e for e in plab.server_events(t0) if e.get("path") == path]
    summary = [(e["event"], e.get("body_len")) for e in events]
    # a blocked request must not reach the server as a finished request (even an empty one)
    assert not [e for e in events if e["event"] == "request"], summary


# -- a 1 GiB streamed upload ---------------------------------------------------------------

GIB = 1 << 30
#: mitmdump idles at ~100 MiB; streaming keeps it near that. Buffering 1 GiB would not fit.
UPLOAD_RSS_BOUND_MIB = 400


def _proxy_pid(plab: ProxyLab) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", plab.net.gateway, "ss", "-Hltnp", "sport", "= :8080"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split("pid=")[1].split(",")[0])


def test_one_gib_streamed_upload_intact_memory_bounded(plab: ProxyLab, tmp_path: Path) -> None:
    blob = tmp_path / "1gib.bin"
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with blob.open("wb") as f:
        for i in range(GIB >> 20):
            # distinct blocks, so a dropped or repeated block changes the digest
            chunk = i.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    t0 = time.time()
    with RssSampler(_proxy_pid(plab)) as rss:
        started = time.monotonic()
        res = plab.net.lab.sh(
            "curl",
            "-s",
            "--max-time",
            "600",
            "--cacert",
            str(plab.ca),
            "-x",
            "http://10.77.1.1:8080",
            "-H",
            "content-type: application/octet-stream",
            "-X",
            "POST",
            "-T",  # streamed from the file (--data-binary would read 1 GiB into memory)
            str(blob),
            "https://api.openai.com/v1/uploads/big",
            ns=plab.net.client,
            check=False,
            timeout=660,
        )
        code, out = res.returncode, res.stdout
        secs = time.monotonic() - started
    blob.unlink()
    print(f"\n1 GiB upload: {secs:.1f} s, proxy peak RSS {rss.peak_mib:.0f} MiB")
    assert code == 0 and json.loads(out)["ok"], out
    reqs = [e for e in plab.server_events(t0, "request") if e["path"] == "/v1/uploads/big"]
    assert [r["body_len"] for r in reqs] == [GIB]
    assert reqs[0]["body_sha256"] == digest.hexdigest()
    rows = plab.wait_rows(plab.db_regular, t0, lambda r: r.path == "/v1/uploads/big")
    # judged on its first bytes, before the rest was streamed
    assert rows[0].stage == "request" and "body-truncated" in rows[0].flags
    assert rows[0].verdict == "allow"
    assert rss.peak_mib < UPLOAD_RSS_BOUND_MIB


# -- DNS over HTTPS / TLS, seen by the sniffer -----------------------------------------------

_HOLD_SERVER = """
import socket, sys, threading, time
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(8)
    while True:
        c, _ = s.accept(); c.settimeout(2)
        try: c.recv(65536)
        except OSError: pass
        c.close()
for p in (443, 853):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("READY", flush=True)
time.sleep(120)
"""
_DOT_CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((sys.argv[1], 853), timeout=5)
try: ctx.wrap_socket(s, server_hostname="dns.quad9.net")
except (OSError, ssl.SSLError): pass
print("DONE")
"""


def test_doh_and_dot_flagged_by_the_sniffer(tmp_path: Path) -> None:
    """curl's own DoH (``--doh-url https://dns.google/dns-query``) and a TLS client on port
    853 (RFC 7858) leave the lab past the gateway; the sniffer there marks both."""
    import signal as sig
    import sys

    from conftest import egresswatch_bin
    from helpers.lab import internet_lab, wait_for

    cn = INTERNET_V4["cn"]
    with internet_lab("hd", hosts={"dns.google": cn}, v6=False) as net:
        lab = net.lab
        lab.spawn(net.internet, [sys.executable, "-c", _HOLD_SERVER, cn], ready="READY")
        out, err = tmp_path / "flows.jsonl", tmp_path / "sniff.err"
        sniff = subprocess.Popen(
            ["ip", "netns", "exec", net.gateway, egresswatch_bin(), "sniff", "-i",
             net.client_iface, "--json", "--no-judge", "--duration", "60"],
            stdout=out.open("wb"),
            stderr=err.open("wb"),
            start_new_session=True,
        )  # fmt: skip
        lab.procs.append(sniff)
        assert wait_for(lambda: "capturing on" in err.read_text(), timeout=20), err.read_text()
        lab.sh(
            "curl", "-s", "--max-time", "5", "--doh-url", "https://dns.google/dns-query",
            "http://chat.lab.example/", ns=net.client, check=False,
        )  # fmt: skip
        res = lab.sh(sys.executable, "-c", _DOT_CLIENT, cn, ns=net.client, timeout=30)
        assert "DONE" in res.stdout
        time.sleep(0.5)
        sniff.send_signal(sig.SIGTERM)
        sniff.wait(timeout=30)
    flows = [json.loads(line) for line in out.read_text().splitlines()]
    marks = {(f["server"]["port"], f["sni"]): (f["encrypted_dns"], f["resolver"]) for f in flows}
    assert marks.get((443, "dns.google")) == ("doh", "Google"), marks
    assert marks.get((853, "dns.quad9.net"), (None,))[0] == "dot", marks
