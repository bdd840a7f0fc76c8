"""Security of egresswatch itself (issue #8), checked on a real `egresswatch run`.

One monitor per test in a network namespace of its own (tests/helpers/runmon.py), a
logging server on a documentation address inside it, real HTTP clients.

- Every listener of the monitor is on loopback (embedded defaults).
- /metrics names no address, host name, path, user agent or payload.
- The database (and its -wal/-shm), its folder, the alert log and the CA private key are
  created 0600 (folder 0700).
- Secrets sent through the proxy (API keys in headers, query, path and body, a password, a
  bearer JWT, a cookie) appear unredacted in none of: the database file bytes and its SQL
  dump, the monitor's output, the alert log, `flows --format json`, every `report` format,
  `status --json`, /metrics.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import egresswatch_bin, is_root
from helpers.lab import Lab
from helpers.runmon import SERVER, SERVER_PORT, http_get, in_netns, run_env, start_run, start_server
from helpers.servers import read_log

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
]

# Made-up secrets in the shapes real services issue (none is a live credential).
OPENAI_KEY = "sk-proj-" + "Q7vR2mXk9LpT4wZb8NcY1dHf6JsG3aEu0iOq5yWt" + "Kx2Zr7Vn"
GITHUB_TOKEN = "ghp_" + "Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Df3Gh5J"
ANTHROPIC_KEY = "sk-ant-api03-" + "Zq8Wm3Rt6Yu1Io4Pa7Sd0Fg2Hj5Kl8Zx1Cv4Bn7Mq0We3Rt6Yu9Io2Pa5Sd8FgAA"
PASSWORD = "Tr0ub4dor&3-horse-BATTERY"
HF_TOKEN = "hf_" + "VbNmQwErTyUiOpAsDfGhJkLzXcVbNmQwEr"
SESSION = "s3ss10n-" + "c0ok1e-v4lue-9f8e7d6c5b4a"


def _jwt() -> str:
    def b64(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return (
        b64({"alg": "HS256", "typ": "JWT"})
        + "."
        + b64({"sub": "user-4711", "name": "Jane Roe", "iat": 1700000000})
        + ".Hx9QmT3kLw8ZrV2nY6bJ4cF1dS7gA0eU5iO-pK_qWzE"
    )


JWT = _jwt()
SECRETS = {
    "openai-key": OPENAI_KEY,
    "github-token": GITHUB_TOKEN,
    "anthropic-key": ANTHROPIC_KEY,
    "password": PASSWORD,
    "hf-token": HF_TOKEN,
    "jwt": JWT,
    "cookie": SESSION,
}


def _needles(secret: str) -> list[bytes]:
    """The secret, and its middle third: a redaction keeps at most a short prefix/suffix."""
    n = len(secret)
    return [secret.encode(), secret[n // 3 : 2 * n // 3].encode()]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("hs") as lab:
        yield lab


@pytest.fixture
def ns(lab: Lab, tmp_path: Path) -> str:
    name = lab.netns("m")
    start_server(lab, name, tmp_path / "server.jsonl")
    return name


def _send_secrets() -> list[int]:
    """Requests that carry every secret in every place a client puts one."""
    import http.client

    statuses = []
    base = f"http://{SERVER}:{SERVER_PORT}"
    requests: list[tuple[str, str, dict[str, str], bytes]] = [
        (
            "POST",
            "/v1/chat/completions",
            {"Authorization": f"Bearer {OPENAI_KEY}", "Content-Type": "application/json"},
            json.dumps(
                {
                    "model": "gpt-4o",
                    "messages": [
                        {
                            "role": "user",
                            "content": f"my github token is {GITHUB_TOKEN} and my "
                            f"password is {PASSWORD}, keep them safe",
                        }
                    ],
                }
            ).encode(),
        ),
        (
            "POST",
            "/v1/messages",
            {"x-api-key": ANTHROPIC_KEY, "Content-Type": "application/json"},
            json.dumps(
                {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
        ),
        ("GET", f"/api/models?token={HF_TOKEN}&api_key={OPENAI_KEY}", {}, b""),
        (
            "POST",
            "/login",
            {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"session={SESSION}"},
            f"username=jane&password={PASSWORD}".encode(),
        ),
        (
            "POST",
            "/api/profile",
            {"Authorization": f"Bearer {JWT}", "Content-Type": "application/json"},
            json.dumps({"token": JWT, "github": GITHUB_TOKEN, "hf": HF_TOKEN}).encode(),
        ),
    ]
    for method, path, headers, body in requests:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=20)
        try:
            conn.request(method, base + path, body=body or None, headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        finally:
            conn.close()
    return statuses


def _cli(ns: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, egresswatch_bin(), *args],
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
    )


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _listeners(ns: str, pid: int) -> list[str]:
    """Local addresses of the sockets ``pid`` listens on (TCP) or has bound (UDP)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hlntup"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]


def test_end_to_end_secrets_never_stored_or_shown_and_files_private(
    lab: Lab, ns: str, tmp_path: Path
) -> None:
    env = run_env(tmp_path)
    rp = start_run(lab, ns, [egresswatch_bin(), "run"], env)
    pid = rp.proc.pid

    # Listeners: loopback only, on the embedded defaults.
    addrs = _listeners(ns, pid)
    assert addrs, "ss saw no listener of the monitor"
    for a in addrs:
        host = a.rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::1"), f"listener on {a}: {addrs}"

    statuses = in_netns(ns, _send_secrets)
    assert all(s == 200 for s in statuses), statuses
    served = [e for e in read_log(tmp_path / "server.jsonl") if e["event"] == "request"]
    assert len(served) == 5  # the secrets really went through (monitor mode)

    # Wait until all five are committed (status reads the store).
    db = tmp_path / "data" / "egresswatch" / "egresswatch.db"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            if con.execute("SELECT count(*) FROM flows").fetchone()[0] >= 5:
                break
        finally:
            con.close()
        time.sleep(0.2)

    outputs: dict[str, bytes] = {}
    _, metrics = in_netns(ns, http_get, "http://127.0.0.1:9721/metrics")
    outputs["metrics"] = metrics
    st = _cli(ns, env, "status", "--json")
    assert st.returncode == 0, st.stderr
    outputs["status"] = st.stdout + st.stderr
    fl = _cli(ns, env, "flows", "--all", "--format", "json")
    assert fl.returncode == 0, fl.stderr
    outputs["flows"] = fl.stdout + fl.stderr
    assert len(json.loads(fl.stdout)) >= 5
    for fmt in ("text", "markdown", "json", "html"):
        rep = _cli(ns, env, "report", "--since", "all", "--format", fmt)
        assert rep.returncode == 0, rep.stderr
        outputs[f"report-{fmt}"] = rep.stdout + rep.stderr

    # /metrics: bounded labels only: no address, host, path, user agent or payload.
    text = metrics.decode()
    assert "egresswatch_decisions_total" in text
    for leak in (
        SERVER,
        "/v1/chat/completions",
        "/login",
        "/api/profile",
        "Python-urllib",
        "username=jane",
        "127.0.0.1:8080",
    ):
        assert leak not in text, f"/metrics exposes {leak!r}"

    os.kill(pid, signal.SIGTERM)
    assert rp.proc.wait(60) == 0, rp.output()
    outputs["monitor-output"] = rp.output().encode()

    data = db.parent
    alert_logs = list(data.glob("*.jsonl")) + list(data.glob("*alert*"))
    assert alert_logs, f"no alert log in {sorted(p.name for p in data.iterdir())}"
    for p in alert_logs:
        outputs[f"alerts:{p.name}"] = p.read_bytes()
    assert any(outputs[f"alerts:{p.name}"].strip() for p in alert_logs), "no alert was written"
    for p in data.iterdir():
        if p.name.startswith(db.name):
            outputs[f"file:{p.name}"] = p.read_bytes()
    con = sqlite3.connect(db)
    try:
        outputs["sql-dump"] = "\n".join(con.iterdump()).encode()
    finally:
        con.close()

    found = [
        f"{name} in {where}"
        for name, secret in SECRETS.items()
        for needle in _needles(secret)
        for where, blob in outputs.items()
        if needle in blob
    ]
    assert not found, "secrets leaked: " + "; ".join(sorted(set(found)))

    # The findings were made (the test is about redaction, not about missing them).
    dump = outputs["sql-dump"].decode()
    assert "credential" in dump

    # File modes.
    assert _mode(data) == 0o700
    for p in data.iterdir():
        if p.name.startswith(db.name) or p in alert_logs:
            assert _mode(p) == 0o600, f"{p} is {oct(_mode(p))}"
    ca_key = tmp_path / "home" / ".mitmproxy" / "mitmproxy-ca.pem"
    assert ca_key.is_file() and b"PRIVATE KEY" in ca_key.read_bytes()
    assert _mode(ca_key) & 0o077 == 0, f"CA key is {oct(_mode(ca_key))}"


def test_metrics_and_proxy_listen_where_configured_only(lab: Lab, ns: str, tmp_path: Path) -> None:
    """A listener moves only when told: the configured address is the only one used."""
    env = run_env(tmp_path)
    env["EGRESSWATCH_METRICS_LISTEN"] = f"{SERVER}:9722"
    rp = start_run(lab, ns, [egresswatch_bin(), "run"], env)
    addrs = sorted(_listeners(ns, rp.proc.pid))
    os.kill(rp.proc.pid, signal.SIGTERM)
    assert rp.proc.wait(60) == 0, rp.output()
    assert f"{SERVER}:9722" in addrs and "127.0.0.1:8080" in addrs, addrs
    assert all(a.startswith(("127.0.0.1:", f"{SERVER}:", "[::1]:")) for a in addrs), addrs
