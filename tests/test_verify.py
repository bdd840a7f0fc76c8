"""Unit tests of egresswatch verify: profiles, aggregation, renderers, the gateway's parts, CLI.

Records are made by the real inspector (shipped catalog, policy and classifier) from
Observations, through the same ``record_of`` the gateway uses; the live runs are in
test_verify_live.py.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner
from conftest import egresswatch_bin, needs_root
from helpers.verify import assert_schema, schema_errors

from egresswatch import verify as v
from egresswatch.cli import cli
from egresswatch.errors import ConfigError
from egresswatch.model import Observation, Protocol, Sensor, Stage, Transport
from egresswatch.runtime import Settings, build_inspector
from egresswatch.verify.addons import _ptr_address
from egresswatch.verify.pool import NamePool
from egresswatch.verify.raw import raw_observation
from egresswatch.verify.recorder import record_of


@pytest.fixture(scope="module")
def inspector() -> Any:
    return build_inspector(Settings(store=False, metrics_listen=None))


def rec(inspector: Any, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sensor": Sensor.PROXY,
        "transport": Transport.TCP,
        "protocol": Protocol.HTTPS,
        "dst_addr": "198.18.0.1",
        "dst_port": 443,
        "client_addr": v.link_addresses(1).cmd,
        "client_port": 40000,
    }
    base.update(kw)
    first = base.pop("first_bytes", None)
    return record_of(inspector.inspect(Observation(**base)), first_bytes=first)


# -- profiles ---------------------------------------------------------------------------


def test_shipped_profiles() -> None:
    profiles = v.load_profiles()
    assert set(profiles) == {"huggingface", "vllm", "ollama", "gradio", "lmstudio"}
    vllm = profiles["vllm"]
    stats = [e for e in vllm.expects if e.matches_host("stats.vllm.ai")]
    assert stats and not stats[0].allow
    assert "VLLM_NO_USAGE_STATS=1" in stats[0].opt_out and "DO_NOT_TRACK=1" in stats[0].opt_out
    assert any(e.allow for e in profiles["ollama"].expects if e.matches_host("registry.ollama.ai"))
    assert all(p.expects for p in profiles.values())


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[profiles.x]\n[[profiles.x.expect]]\nhosts = []\nallow = true\nwhat = 'a'\n",
         "profiles.x.expect[0]"),
        ("[profiles.x]\n[[profiles.x.expect]]\nhosts = ['a.com']\nwhat = 'a'\n",
         "profiles.x.expect[0]"),
    ],
)  # fmt: skip
def test_bad_profile_file(tmp_path: Path, text: str, field: str) -> None:
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        v.load_profiles(p)
    assert e.value.field == field and e.value.path == str(p)


def test_profile_file_syntax_error_has_line(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text("[profiles.x]\nname = \n")
    with pytest.raises(ConfigError) as e:
        v.load_profiles(p)
    assert e.value.line == 2


@pytest.mark.parametrize(
    ("host", "patterns", "hit"),
    [
        ("huggingface.co", ["huggingface.co"], True),
        ("cdn-lfs-us-1.huggingface.co", ["cdn-lfs*.huggingface.co"], True),
        ("x.hf.co", ["*.hf.co"], True),
        ("hf.co", ["*.hf.co"], False),
        ("evilhuggingface.co", ["huggingface.co"], False),
        ("API.DeepSeek.com.", ["api.deepseek.com"], True),
        (None, ["a.com"], False),
    ],
)
def test_host_matches(host: str | None, patterns: list[str], hit: bool) -> None:
    assert v.host_matches(host, patterns) is hit


# -- aggregation ------------------------------------------------------------------------


def hf_records(inspector: Any) -> list[dict[str, Any]]:
    hub = {"sni": "huggingface.co", "http_host": "huggingface.co", "dns_name": "huggingface.co"}
    return [
        rec(inspector, sensor=Sensor.VERIFY, protocol=Protocol.DNS, dst_addr=None, dst_port=53,
            transport=Transport.UDP, dns_name="huggingface.co", client_port=5000),
        rec(inspector, stage=Stage.CLIENTHELLO, protocol=Protocol.TLS, flow_id="c1",
            sni="huggingface.co"),
        rec(inspector, method="HEAD", path="/gpt2/resolve/main/config.json?token=x",
            flow_id="r1", client_pid=42, client_process="python", **hub),
        rec(inspector, method="HEAD", path="/api/telemetry/gradio/launched", flow_id="r2", **hub),
        # the sniffer saw the same connection: not counted again
        rec(inspector, sensor=Sensor.SNIFFER, protocol=Protocol.TLS, stage=Stage.PACKET,
            sni="huggingface.co", client_pid=42, client_process="python"),
    ]  # fmt: skip


def test_aggregate_one_destination_per_target(inspector: Any) -> None:
    dests = v.aggregate(hf_records(inspector))
    assert len(dests) == 1
    d = dests[0]
    assert (d.name, d.address, d.port, d.transport, d.protocol) == (
        "huggingface.co", "198.18.0.1", 443, "tcp", "https"
    )  # fmt: skip
    assert d.count == 2  # two requests; the ClientHello and the sniffer's view are not extra
    assert d.lookups == 1
    assert set(d.payload_types) == {"model-download", "telemetry"}
    assert "tls-opaque" not in d.payload_types
    assert d.service is not None and d.service["operator_country"] == "US"
    assert d.processes == [{"pid": 42, "name": "python"}]
    assert "HEAD /gpt2/resolve/main/config.json?token=…" in d.requests  # query values cut
    assert d.sensors == ["proxy"]
    assert not d.allowed


def test_profile_allows_downloads_only(inspector: Any) -> None:
    prof = v.load_profiles()["huggingface"]
    records = hf_records(inspector)
    downloads = [r for r in records if "telemetry" not in r["payload_types"]]
    [d] = v.aggregate(downloads, profiles=[prof])
    assert d.allowed_by == ["profile huggingface"]
    [d] = v.aggregate(records, profiles=[prof])
    assert not d.allowed
    assert any("HF_HUB_DISABLE_TELEMETRY=1" in e for e in d.explanations)


def test_allow_flag_and_policy(inspector: Any) -> None:
    records = hf_records(inspector)
    [d] = v.aggregate(records, allow=["huggingface.co"])
    assert d.allowed_by == ["--allow huggingface.co"]
    # The shipped policy's verdict only counts when a policy is given.
    assert d.policy in ("allow", "alert", "would-block", "block")
    [d2] = v.aggregate(records, policy_given=True)
    assert d2.allowed is (d.policy == "allow")


def test_lookup_only_names_are_destinations(inspector: Any) -> None:
    records = [
        rec(inspector, sensor=Sensor.VERIFY, protocol=Protocol.DNS, dst_addr=None, dst_port=53,
            transport=Transport.UDP, dns_name="stats.vllm.ai"),
    ]  # fmt: skip
    [d] = v.aggregate(records, profiles=[v.load_profiles()["vllm"]])
    assert (d.name, d.port, d.protocol, d.lookups) == ("stats.vllm.ai", 53, "dns", 1)
    assert not d.allowed
    assert any("VLLM_NO_USAGE_STATS=1" in e for e in d.explanations)


def test_sniffer_only_udp_and_reversed_views(inspector: Any) -> None:
    records = [
        rec(inspector, sensor=Sensor.SNIFFER, transport=Transport.UDP, protocol=Protocol.RAW,
            dst_port=8125, dns_name="metrics.example.org", client_port=1234,
            first_bytes=b"ping-udp"),
        # a flow the sniffer saw from its reply: destination is the command's own address
        rec(inspector, sensor=Sensor.SNIFFER, protocol=Protocol.RAW,
            dst_addr=v.link_addresses(7).cmd, dst_port=40000, client_port=5432),
    ]  # fmt: skip
    [d] = v.aggregate(records)
    assert (d.name, d.port, d.transport, d.sensors) == (
        "metrics.example.org", 8125, "udp", ["sniffer"]
    )  # fmt: skip
    assert d.first_bytes == b"ping-udp".hex()


# -- renderers --------------------------------------------------------------------------


def deepseek_report(inspector: Any) -> v.VerifyReport:
    body = json.dumps(
        {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "mail jane.doe@example.com the plan"}],
        }
    ).encode()
    records = [
        rec(inspector, method="POST", path="/chat/completions", http_host="api.deepseek.com",
            sni="api.deepseek.com", headers=(("content-type", "application/json"),), body=body),
    ]  # fmt: skip
    dests = v.aggregate(records) + v.aggregate(hf_records(inspector), allow=["huggingface.co"])
    return v.VerifyReport(["python", "app.py"], dests, 1000.0, 1002.5, exit_status=0)


def test_json_matches_schema_and_schema_can_fail(inspector: Any) -> None:
    doc = v.to_json(deepseek_report(inspector))
    assert_schema(doc)
    json.dumps(doc)  # plain JSON
    assert doc["verdict"] == "FAIL" and doc["schema"] == v.SCHEMA_ID
    ds = doc["destinations"][0]
    assert ds["operator_country"] == "CN" and "chat-prompt" in ds["payload_types"]
    assert ds["findings"] and "jane.doe@example.com" not in json.dumps(doc)
    broken = json.loads(json.dumps(doc))
    del broken["destinations"][0]["allowed"]
    broken["verdict"] = "MAYBE"
    errors = schema_errors(broken, v.JSON_SCHEMA)
    assert any("missing 'allowed'" in e for e in errors)
    assert any("MAYBE" in e for e in errors)


def test_junit_one_case_per_destination(inspector: Any) -> None:
    report = deepseek_report(inspector)
    root = ET.fromstring(v.to_junit(report).split("?>", 1)[1])
    cases = root.findall("testcase")
    assert [c.get("name") for c in cases] == [d.label for d in report.destinations]
    assert root.get("tests") == "2" and root.get("failures") == "1"
    failing = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failing] == ["api.deepseek.com:443/tcp"]
    assert "CN" in (failing[0].find("failure").text or "")  # type: ignore[union-attr]
    passing = [c for c in cases if c.find("failure") is None]
    assert "--allow huggingface.co" in (passing[0].find("system-out").text or "")  # type: ignore[union-attr]


def test_markdown(inspector: Any) -> None:
    md = v.to_markdown(deepseek_report(inspector))
    assert md.startswith("## egresswatch verify: ❌ FAIL")
    assert "`api.deepseek.com:443/tcp`" in md and "(CN)" in md
    assert "jane.doe@example.com" not in md
    empty = v.to_markdown(v.VerifyReport(["true"], [], 1.0, 2.0, exit_status=0))
    assert "✅ PASS" in empty and "No egress was attempted." in empty


def test_redact_command() -> None:
    argv = ["curl", "-H", "authorization: Bearer sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
            "--data", "mail jane.doe@example.com", "https://api.openai.com/v1/models"]  # fmt: skip
    out = v.redact_command(argv)
    assert out[0] == "curl" and out[-1] == "https://api.openai.com/v1/models"
    assert out[2].startswith("<redacted api-key ") and "abcdefghijklmnop" not in out[2]
    assert out[4].startswith("<redacted email ") and "jane.doe@" not in out[4]


# -- gateway parts ----------------------------------------------------------------------


def test_gateway_addons_expose_only_hooks() -> None:
    """mitmproxy calls any public method named like a hook: ours have only hooks."""
    import mitmproxy.proxy.layers  # noqa: F401  (registers the HTTP, TCP, UDP and DNS hooks)
    from mitmproxy import hooks

    from egresswatch.verify.addons import OnlineUpstream, PoolDns

    for addon in (PoolDns, OnlineUpstream):
        public = {n for n in vars(addon) if not n.startswith("_") and callable(vars(addon)[n])}
        assert public and public <= set(hooks.all_hooks), (addon, public - set(hooks.all_hooks))


def test_name_pool_round_trip() -> None:
    pool = NamePool("198.18.0.0/30")
    a = pool.address("Huggingface.co.")
    assert a == "198.18.0.1" and pool.address("huggingface.co") == a
    assert pool.name(a) == "huggingface.co"
    assert pool.address("b.example") == "198.18.0.2"
    with pytest.raises(ValueError):
        pool.address("c.example")  # /30: .3 is the broadcast address
    assert _ptr_address("1.0.18.198.in-addr.arpa") == "198.18.0.1"
    assert _ptr_address("example.com") is None


def client_hello(name: str) -> bytes:
    """A real ClientHello from Python's ssl module (nothing is sent anywhere)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_raw_observation_parses_tls_http_and_bytes() -> None:
    tls = raw_observation(client_hello("api.deepseek.com"), ("198.18.0.5", 8443), ("x", 1))
    assert tls.protocol is Protocol.TLS and tls.sni == "api.deepseek.com"
    assert tls.dst_port == 8443 and tls.stage is Stage.REQUEST
    http = raw_observation(
        b"POST /v1/x HTTP/1.1\r\nHost: stats.vllm.ai:8000\r\nContent-Length: 2\r\n\r\n{}",
        ("198.18.0.6", 8000),
        None,
    )
    assert (http.protocol, http.http_host, http.method, http.body) == (
        Protocol.HTTP, "stats.vllm.ai", "POST", b"{}"
    )  # fmt: skip
    raw = raw_observation(b"SSH-2.0-x\r\n", ("198.18.0.7", 22), None)
    assert raw.protocol is Protocol.RAW and raw.bytes_out == 11
    silent = raw_observation(b"", ("198.18.0.7", 25), None)
    assert silent.stage is Stage.CONNECT


def test_gateway_ruleset_redirects_and_forwards_nothing() -> None:
    rules = v.gateway_ruleset("ewv1", "ewv1g")
    assert f"udp dport 53 redirect to :{v.DNS_PORT}" in rules
    assert f"tcp dport {{ 80, 443 }} redirect to :{v.PROXY_PORT}" in rules
    assert f"meta l4proto tcp redirect to :{v.RAW_PORT}" in rules
    assert "hook forward priority filter; policy drop;" in rules


def test_command_env(tmp_path: Path) -> None:
    env = v.command_env(
        {"PATH": "/bin", "HTTPS_PROXY": "http://x:1", "no_proxy": "a"},
        tmp_path / "b.pem",
        (1000, 1000, "/home/u"),
    )
    for var in v.CA_VARS:
        assert env[var] == str(tmp_path / "b.pem")
    assert "HTTPS_PROXY" not in env and "no_proxy" not in env
    assert env["HOME"] == "/home/u" and env["PATH"] == "/bin"


def test_ca_bundle_includes_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n")
    out = v.ca_bundle(ca, tmp_path / "bundle.pem")
    text = out.read_text()
    assert text.rstrip().endswith("TEST\n-----END CERTIFICATE-----")
    assert text.count("BEGIN CERTIFICATE") > 1  # the system roots too
    assert oct(out.stat().st_mode & 0o777) == "0o644"


# -- CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope", "--", "true"], "unknown profile 'nope'"),
        (["--timeout", "-1", "--", "true"], "timeout must be between"),
        (["--allow", "http://x/", "--", "true"], "is not a host name"),
        ([], "Missing argument"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["verify", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_online_refuses_without_route() -> None:
    why = v.internet_route()
    if why is None:
        pytest.skip("this machine has a route to the internet: --online would not refuse")
    res = subprocess.run(
        [egresswatch_bin(), "verify", "--online", "--", "true"], capture_output=True, text=True
    )
    assert res.returncode == 4
    assert "--online" in res.stderr and "no route" in res.stderr and why in res.stderr
    assert "Traceback" not in res.stderr


def test_preflight_without_root_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(v.VerifyError) as e:
        v.preflight(v.VerifyConfig(command=("true",)))
    assert "needs root" in str(e.value) and "sudo" in str(e.value)
    assert e.value.exit_code == 4


@needs_root
def test_unprivileged_user_namespace_path(tmp_path: Path) -> None:
    """The path taken without root (unshare -rn), forced here: same report, nothing left."""
    if not v.userns_works():
        pytest.skip("user namespaces are not available on this kernel")
    out = tmp_path / "r.json"

    def ours() -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line.startswith("ewv")]

    before = ours()
    res = subprocess.run(
        [egresswatch_bin(), "verify", "--confdir", str(tmp_path / "ca"), "--json", str(out),
         "--", "bash", "-c", "getent hosts stats.vllm.ai; echo hi >/dev/tcp/stats.vllm.ai/9"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, v.USERNS_ENV: "force"},
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    doc = json.loads(out.read_text())
    assert "ran in an unprivileged user namespace" in doc["notes"]
    [d] = doc["destinations"]
    assert (d["name"], d["port"], d["address"][:7]) == ("stats.vllm.ai", 9, "198.18.")
    assert bytes.fromhex(d["first_bytes"]) == b"hi\n"
    assert ours() == before


@needs_root
def test_bad_policy_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text('mode = "enforce"\n[[rules]]\nname = 1\n')
    res = subprocess.run(
        [egresswatch_bin(), "verify", "--confdir", str(tmp_path), "--policy", str(bad),
         "--", "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert str(bad) in res.stderr and "Traceback" not in res.stderr


@needs_root
def test_missing_command_is_a_usage_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [egresswatch_bin(), "verify", "--confdir", str(tmp_path), "--", "no-such-program-x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2
    assert "command not found: no-such-program-x" in res.stderr


@needs_root
def test_not_root_is_a_clear_message(tmp_path: Path) -> None:
    # setpriv drops to nobody; the venv must be readable by it, else skip.
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", egresswatch_bin(),
         "--version"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"the venv is not usable by nobody here: {probe.stderr.strip()[:200]}")
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", egresswatch_bin(),
         "verify", "--confdir", str(tmp_path), "--", "true"],
        capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert res.returncode == 4
    assert "needs root" in res.stderr and "sudo" in res.stderr
    assert "Traceback" not in res.stderr


@needs_root
def test_sudo_runs_the_command_as_the_invoking_user(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = subprocess.run(
        [egresswatch_bin(), "verify", "--confdir", str(tmp_path / "ca"), "--json", str(out),
         "--", "sh", "-c", 'id -u; id -g; echo "home=$HOME"; head -1 "$SSL_CERT_FILE"'],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == ["65534", "65534"]
    assert any(line.startswith("home=") and line != "home=/root" for line in lines)
    assert "-----BEGIN CERTIFICATE-----" in res.stdout  # the bundle is readable as them
    assert json.loads(out.read_text())["verdict"] == "PASS"
