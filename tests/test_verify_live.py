"""``egresswatch verify`` for real: real programs in real namespaces behind the real gateway.

Each test runs the console script as root (namespaces, nftables). Nothing can reach
the host's network: the gateway namespace verify builds has no route and drops
forwarding; the programs below talk to names that only the gateway's pool answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from conftest import egresswatch_bin, needs_root
from helpers.verify import assert_schema

pytestmark = needs_root

PY = sys.executable
#: a secret-looking prompt: findings must show up redacted, the prompt itself never
PROMPT = "Summarise the contract for jane.doe@example.com, call +49 30 12345678"


def leftovers() -> dict[str, list[str]]:
    """Namespaces, /etc/netns entries and nft tables that a verify run would own."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    etc = Path("/etc/netns")
    tmp = Path(tempfile.gettempdir())
    return {
        "gateways": marker_procs("egresswatch.verify.gateway"),
        "workdirs": sorted(p.name for p in tmp.glob("egresswatch-verify-*")),
        "netns": sorted(line.split()[0] for line in ns.splitlines() if line.startswith("ewv")),
        "etc": sorted(p.name for p in etc.iterdir() if p.name.startswith("ewv"))
        if etc.exists()
        else [],
    }


def marker_procs(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify-ca")


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], out: Path) -> None:
        self.proc = proc
        self.out = out
        self.code = proc.returncode

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "report.json").read_text())
        return data

    @property
    def junit(self) -> ET.Element:
        return ET.parse(self.out / "report.xml").getroot()

    @property
    def markdown(self) -> str:
        return (self.out / "report.md").read_text()

    def dest(self, name: str, port: int | None = None) -> dict[str, Any]:
        for d in self.json["destinations"]:
            if d["name"] == name and (port is None or d["port"] == port):
                return d
        names = [x["name"] for x in self.json["destinations"]]
        raise AssertionError(f"{name}:{port} not in {names}")


def verify(
    tmp: Path,
    confdir: Path,
    program: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> Run:
    script = tmp / "program.py"
    script.write_text(textwrap.dedent(program))
    before = leftovers()
    cmd = [
        egresswatch_bin(), "verify", "--confdir", str(confdir),
        "--json", str(tmp / "report.json"), "--junit", str(tmp / "report.xml"),
        "--markdown", str(tmp / "report.md"), *args, "--", PY, str(script),
    ]  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DO_NOT_TRACK"))}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})}
    )
    assert leftovers() == before, "verify left namespaces or /etc/netns files behind"
    run = Run(proc, tmp)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert_schema(run.json)
    cases = run.junit.findall("testcase")
    assert len(cases) == len(run.json["destinations"])
    assert int(run.junit.get("failures", "-1")) == sum(
        1 for d in run.json["destinations"] if not d["allowed"]
    )
    return run


HF_PROGRAM = """
    import os, sys
    from huggingface_hub import hf_hub_download
    try:
        hf_hub_download("openai-community/gpt2", "config.json", cache_dir=sys.argv[0] + ".cache")
    except Exception as e:
        print("download failed:", type(e).__name__)
    import time; time.sleep(1.0)  # let the telemetry thread, if any, send
"""


def test_huggingface_download_fails_and_names_the_hub(tmp_path: Path, confdir: Path) -> None:
    run = verify(tmp_path, confdir, HF_PROGRAM, env={"HF_HOME": str(tmp_path / "hf")})
    assert run.code == 1, run.proc.stdout
    assert run.json["verdict"] == "FAIL"
    hub = run.dest("huggingface.co", 443)
    assert "model-download" in hub["payload_types"]
    assert hub["service"]["id"] == "hf-hub"
    assert hub["protocol"] == "https"
    assert hub["allowed"] is False
    assert any(r.startswith(("HEAD", "GET")) and "/resolve/" in r for r in hub["requests"])
    assert hub["processes"] and hub["processes"][0]["name"].startswith("python")
    assert hub["lookups"] >= 1 and hub["address"].startswith("198.18.")
    # The junit failure names the destination.
    failed = [c.get("name") for c in run.junit.findall("testcase") if c.find("failure") is not None]
    assert "huggingface.co:443/tcp" in failed


def test_huggingface_profile_explains_phone_home(tmp_path: Path, confdir: Path) -> None:
    run = verify(
        tmp_path, confdir, HF_PROGRAM, "--profile", "huggingface",
        env={"HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    hub = run.dest("huggingface.co", 443)
    # With telemetry on, the hub library also phones home (agent registry / telemetry):
    # the profile keeps that failing and says how to stop it.
    extra = {"update-check", "telemetry"} & set(hub["payload_types"])
    assert extra, hub
    assert hub["allowed"] is False and run.code == 1
    assert any("HF_HUB_DISABLE_TELEMETRY=1" in e for e in hub["explanations"])
    assert any("To stop it" in e for e in hub["explanations"])
    assert "HF_HUB_DISABLE_TELEMETRY=1" in run.markdown


def test_huggingface_profile_allows_downloads_without_telemetry(
    tmp_path: Path, confdir: Path
) -> None:
    run = verify(
        tmp_path, confdir, HF_PROGRAM, "--profile", "huggingface",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"},
    )  # fmt: skip
    hub = run.dest("huggingface.co", 443)
    assert hub["payload_types"] == ["model-download"], hub
    assert hub["allowed_by"] == ["profile huggingface"], json.dumps(hub)
    assert run.code == 0 and run.json["verdict"] == "PASS"
    assert any("[expected]" in e for e in hub["explanations"])


def test_huggingface_offline_passes(tmp_path: Path, confdir: Path) -> None:
    run = verify(
        tmp_path, confdir, HF_PROGRAM,
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.code == 0, run.proc.stdout
    assert run.json["verdict"] == "PASS"
    assert run.json["destinations"] == []
    assert "download failed" in run.proc.stdout  # the program really ran, offline
    assert run.junit.findall("testcase") == []


LOOPBACK_PROGRAM = """
    import json, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import httpx

    class Model(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            body = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    r = httpx.post(f"http://127.0.0.1:{srv.server_port}/v1/chat/completions",
                   json={"model": "local", "messages": [{"role": "user", "content": "hello"}]})
    print("local answer:", r.json()["choices"][0]["message"]["content"])
"""


def test_local_model_server_on_loopback_passes(tmp_path: Path, confdir: Path) -> None:
    run = verify(tmp_path, confdir, LOOPBACK_PROGRAM)
    assert "local answer: hi" in run.proc.stdout
    assert run.code == 0
    assert run.json["verdict"] == "PASS" and run.json["destinations"] == []
    assert run.json["exit_status"] == 0


DEEPSEEK_PROGRAM = f"""
    from openai import OpenAI
    client = OpenAI(base_url="https://api.deepseek.com",
                    api_key="sk-verify0000000000000000000000", max_retries=0)
    try:
        client.chat.completions.create(
            model="deepseek-chat", messages=[{{"role": "user", "content": {PROMPT!r}}}])
    except Exception as e:
        print("refused:", type(e).__name__, getattr(e, "status_code", None))
"""


def test_deepseek_chat_fails_cn_redacted(tmp_path: Path, confdir: Path) -> None:
    run = verify(tmp_path, confdir, DEEPSEEK_PROGRAM)
    assert run.code == 1
    assert "refused: " in run.proc.stdout and "451" in run.proc.stdout
    d = run.dest("api.deepseek.com", 443)
    assert d["operator_country"] == "CN"
    assert d["service"]["id"] == "deepseek-api"
    assert "chat-prompt" in d["payload_types"]
    kinds = {f["kind"] for f in d["findings"]}
    assert {"email", "phone"} <= kinds, d["findings"]
    for f in d["findings"]:
        assert "jane.doe@example.com" not in f["redacted"]
        assert "12345678" not in f["redacted"]
    # The prompt and its secrets appear nowhere: not in any report, not on the terminal.
    outputs = [(tmp_path / n).read_text() for n in ("report.json", "report.xml", "report.md")] + [
        run.proc.stdout,
        run.proc.stderr,
    ]
    for text in outputs:
        assert "Summarise the contract" not in text
        assert "jane.doe@example.com" not in text
        assert "sk-verify0000" not in text
    assert "CN" in run.markdown and "api.deepseek.com" in run.markdown


RAW_PROGRAM = """
    import socket
    addr = socket.gethostbyname("telemetry.example.net")
    s = socket.create_connection((addr, 7000), timeout=5)
    s.sendall(b"HELLO raw protocol\\n")
    try:
        s.recv(10)
    except OSError:
        pass
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"ping-udp", (socket.gethostbyname("metrics.example.org"), 8125))
    import time; time.sleep(0.3)
    print("sent", addr)
"""


def test_raw_tcp_recorded_with_name_and_first_bytes(tmp_path: Path, confdir: Path) -> None:
    run = verify(tmp_path, confdir, RAW_PROGRAM, "--allow", "metrics.example.org")
    assert run.code == 1
    d = run.dest("telemetry.example.net", 7000)
    assert d["transport"] == "tcp" and d["protocol"] == "raw"
    assert d["address"].startswith("198.18.")
    assert bytes.fromhex(d["first_bytes"]).startswith(b"HELLO raw")
    assert d["count"] == 1
    # UDP nobody answers is seen by the sniffer, tied to its name by the pool.
    u = run.dest("metrics.example.org", 8125)
    assert u["transport"] == "udp" and u["sensors"] == ["sniffer"]
    assert bytes.fromhex(u["first_bytes"]) == b"ping-udp"
    assert u["allowed_by"] == ["--allow metrics.example.org"]


def test_timeout_kills_everything(tmp_path: Path, confdir: Path) -> None:
    marker = f"ewvmark{os.getpid()}"
    program = f"""
        import subprocess, time
        subprocess.Popen(["sh", "-c", "sleep 300; : {marker}"], start_new_session=True)
        time.sleep(300)
    """
    started = time.monotonic()
    run = verify(tmp_path, confdir, program, "--timeout", "3")
    assert time.monotonic() - started < 60
    assert run.json["timed_out"] is True
    assert run.code == 0  # no egress: PASS; the timeout is in the report
    assert any("did not finish" in n for n in run.json["notes"])
    assert marker_procs(marker) == []


def test_sigterm_removes_everything(tmp_path: Path, confdir: Path) -> None:
    marker = f"ewvterm{os.getpid()}"
    flag = tmp_path / "started"
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, subprocess, time
        subprocess.Popen(["sh", "-c", "sleep 300; : {marker}"], start_new_session=True)
        pathlib.Path({str(flag)!r}).write_text("x")
        time.sleep(300)
        """)
    )
    before = leftovers()
    proc = subprocess.Popen(
        [egresswatch_bin(), "verify", "--confdir", str(confdir), "--", PY, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if not flag.exists():
            raise AssertionError(proc.communicate(timeout=30)[1] or "the program did not start")
        assert leftovers() != before  # the namespaces exist while it runs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4
    assert "interrupted" in err
    assert leftovers() == before
    assert marker_procs(marker) == []


UPSTREAM = """
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

log = open(sys.argv[1], "a", buffering=1)

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(self.headers.get("host", "") + " " + self.path + "\\n")
        body = b"real upstream"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

def echo():
    srv = socket.create_server(("203.0.113.10", 7000))
    while True:
        c, _ = srv.accept()
        data = c.recv(100)
        log.write("echo " + data.decode().strip() + "\\n")
        c.sendall(data)
        c.close()

threading.Thread(target=echo, daemon=True).start()
srv = HTTPServer(("203.0.113.10", 80), H)
print("READY", flush=True)
srv.serve_forever()
"""

ONLINE_PROGRAM = """
    import socket, urllib.request
    body = urllib.request.urlopen("http://models.example/v1/models", timeout=10).read()
    print("allowed:", body.decode())
    try:
        urllib.request.urlopen("http://other.example/steal", timeout=10)
    except Exception as e:
        print("other:", e)
    s = socket.create_connection(("models.example", 7000), timeout=10)
    s.sendall(b"echo me\\n")
    print("echo:", s.recv(100))
    s.close()
"""


def test_online_forwards_only_allowed(tmp_path: Path, confdir: Path) -> None:
    """--online inside a lab 'host' whose default route leads to a lab 'internet' namespace.

    The host namespace's only route goes to our own internet namespace (100.64.7.0/30,
    RFC 6598 shared space), whose servers sit on a documentation address: nothing here
    can reach a real network.
    """
    from helpers.lab import Lab

    with Lab("vo") as lab:
        host, inet = lab.netns("h"), lab.netns("i")
        h_if, i_if = lab.veth(host, inet)
        lab.add_addr(host, "100.64.7.2/30", h_if)
        lab.add_addr(inet, "100.64.7.1/30", i_if)
        lab.add_addr(inet, "203.0.113.10/32")
        lab.sh("ip", "-n", host, "route", "add", "default", "via", "100.64.7.1")
        lab.etc(host, {"models.example": "203.0.113.10", "other.example": "203.0.113.10"})
        seen = tmp_path / "upstream.log"
        server = tmp_path / "upstream.py"
        server.write_text(UPSTREAM)
        lab.spawn(inet, [PY, str(server), str(seen)], ready="READY")
        # In the lab host, a route to the "internet" exists; on this machine it may not.
        probe = lab.sh(
            PY, "-c", "from egresswatch.verify import internet_route; print(internet_route())",
            ns=host,
        )  # fmt: skip
        assert probe.stdout.strip() == "None"
        script = tmp_path / "program.py"
        script.write_text(textwrap.dedent(ONLINE_PROGRAM))
        out = tmp_path / "report.json"
        res = subprocess.run(
            ["ip", "netns", "exec", host, egresswatch_bin(), "verify", "--online",
             "--confdir", str(confdir), "--allow", "models.example", "--json", str(out),
             "--", PY, str(script)],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        # the run's veth end and nft table in the lab host are gone with it
        left = lab.sh("ip", "link", ns=host).stdout
        left += lab.sh("nft", "list", "tables", ns=host).stdout
    assert "allowed: real upstream" in res.stdout, res.stdout + res.stderr
    assert "other: HTTP Error 451" in res.stdout
    assert "echo: b'echo me\\n'" in res.stdout
    log = seen.read_text().splitlines()
    assert "models.example /v1/models" in log
    assert "echo echo me" in log
    assert not any("steal" in line for line in log)  # the refused request never left
    assert res.returncode == 1
    doc = json.loads(out.read_text())
    assert_schema(doc)
    by = {d["name"]: d for d in doc["destinations"]}
    assert by["models.example"]["allowed_by"] == ["--allow models.example"]
    assert by["other.example"]["allowed"] is False
    assert "ewv" not in left


NODE_FETCH = (
    'fetch("https://api.anthropic.com/v1/messages", {method: "POST", '
    'headers: {"content-type": "application/json"}, body: JSON.stringify({model: "claude", '
    'messages: [{role: "user", content: "hi there"}]})})'
    '.then(r => console.log("status", r.status)).catch(e => console.log("error", e.message))'
)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_three_runs_at_once_curl_and_node_trust_the_bundle(tmp_path: Path, confdir: Path) -> None:
    """Parallel CI jobs: each run has its own namespaces and link; curl reads CURL_CA_BUNDLE,
    Node NODE_EXTRA_CA_CERTS."""
    before = leftovers()
    runs = []
    for i, cmd in enumerate(
        [
            ["curl", "-s", "-o", "/dev/null", "-w", "code=%{http_code}\\n",
             "-H", "authorization: Bearer sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
             "https://api.openai.com/v1/models"],
            [PY, "-c", "import socket; socket.create_connection(('db.example.net', 5432), 5)"
             ".sendall(b'PGSQL')"],
            ["node", "-e", NODE_FETCH],
        ]
    ):  # fmt: skip
        out = tmp_path / f"r{i}.json"
        proc = subprocess.Popen(
            [egresswatch_bin(), "verify", "--confdir", str(confdir), "--json", str(out),
             "--", *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        runs.append((proc, out))
    results = [(proc.communicate(timeout=180), proc.returncode, out) for proc, out in runs]
    assert leftovers() == before
    (curl_out, _), code, out = results[0]
    assert code == 1 and "code=451" in curl_out
    [d] = json.loads(out.read_text())["destinations"]
    assert d["name"] == "api.openai.com" and d["service"]["operator_country"] == "US"
    assert any(f["kind"] == "api-key" for f in d["findings"])
    assert "abcdefghijklmnopqrstuvwxyz" not in out.read_text()
    assert d["processes"] and d["processes"][0]["name"] == "curl"
    _, code, out = results[1]
    [d] = json.loads(out.read_text())["destinations"]
    assert code == 1 and (d["name"], d["port"]) == ("db.example.net", 5432)
    (node_out, _), code, out = results[2]
    assert code == 1 and "status 451" in node_out
    [d] = json.loads(out.read_text())["destinations"]
    assert (d["name"], d["protocol"], d["payload_types"]) == (
        "api.anthropic.com", "https", ["chat-prompt"]
    )  # fmt: skip
    assert d["processes"][0]["name"] == "node"


VLLM_STATS_PROGRAM = """
    # What vllm/usage/usage_lib.py sends at start (fields abridged), with requests.
    import requests
    try:
        requests.post("https://stats.vllm.ai", json={
            "uuid": "0f8e2c54-5ad5-4bbf-9c1e-6a4f0e3d2b11", "provider": "GCP",
            "num_cpu": 8, "gpu_count": 1, "gpu_type": "NVIDIA L4", "model_architecture": "Llama",
            "vllm_version": "0.6.0", "context": "OPENAI_API_SERVER", "log_time": 1730000000,
        }, timeout=10)
    except Exception as e:
        print("error", type(e).__name__)
"""


def test_vllm_usage_stats_explained_by_profile(tmp_path: Path, confdir: Path) -> None:
    run = verify(tmp_path, confdir, VLLM_STATS_PROGRAM, "--profile", "vllm")
    assert run.code == 1
    d = run.dest("stats.vllm.ai", 443)
    assert d["allowed"] is False and d["protocol"] == "https"
    assert any(
        "usage statistics" in e and "VLLM_NO_USAGE_STATS=1 or DO_NOT_TRACK=1" in e
        for e in d["explanations"]
    ), d["explanations"]
    assert "VLLM_NO_USAGE_STATS=1" in run.markdown
    failure = next(
        c for c in run.junit.findall("testcase") if c.get("name") == d["name"] + ":443/tcp"
    )
    assert "VLLM_NO_USAGE_STATS=1" in (failure.find("failure").text or "")  # type: ignore[union-attr]
