"""``egresswatch proxy``: flag validation, and a real run on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import ROOT, egresswatch_bin
from helpers.ports import free_port, wait_port
from helpers.servers import read_log

from egresswatch.cli import cli
from egresswatch.commands.proxy import ProxyConfig, build_master, trust_hints
from egresswatch.runtime import Settings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "bogus"], "is not a proxy mode"),
        (["--mode", "local"], "not supported here"),
        (["--mode", "regular@8081"], "with --listen"),
        (["--listen", "nope"], "is not HOST:PORT"),
        (["--body-limit", "lots"], "not a size"),
        (["--passthrough", "a b"], "not a host pattern"),
        (["--set", "novalue"], "is not NAME=VALUE"),
        (["--body-limit", "1m", "--stream-above", "64k"], "must not be below --body-limit"),
        (["--policy", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["proxy", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_bad_policy_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "sometimes"\n')
    res = CliRunner().invoke(cli, ["proxy", "--policy", str(bad), "--no-store", "--no-metrics"])
    assert res.exit_code == 3, res.output
    assert "bad.toml" in res.output and "Traceback" not in res.output


def test_help_explains_modes_and_safe_default() -> None:
    res = CliRunner().invoke(cli, ["proxy", "--help"])
    assert res.exit_code == 0
    for word in ("transparent", "wireguard", "upstream:URL", "127.0.0.1:8080", "Loopback"):
        assert word in res.output


def test_listen_star_means_every_address() -> None:
    from egresswatch.commands.proxy import ListenType

    assert ListenType().convert("*:8080", None, None) == ("", 8080)
    assert ListenType().convert("[::1]:8080", None, None) == ("::1", 8080)


def test_trust_hints_name_python_variables(tmp_path: Path) -> None:
    lines = "\n".join(trust_hints(tmp_path / "ca.pem", ("127.0.0.1", 8080), "regular"))
    assert f"SSL_CERT_FILE={tmp_path / 'ca.pem'}" in lines
    assert "REQUESTS_CA_BUNDLE=" in lines and "HTTPS_PROXY=http://127.0.0.1:8080" in lines


async def test_build_master_sets_lazy_in_enforce_mode(tmp_path: Path) -> None:
    from egresswatch.model import Mode

    settings = Settings(mode=Mode.ENFORCE, store=False, metrics_listen=None)
    master = build_master(
        ProxyConfig(
            settings=settings,
            confdir=tmp_path,
            listen=("127.0.0.1", 0),
            extra=(("ssl_insecure", "false"),),
        )
    )
    assert master.options.connection_strategy == "lazy"
    assert master.options.egresswatch_body_limit == str(settings.body_limit)
    assert master.addons.get("egresswatch") is not None
    master.addons.get("egresswatch").done()


async def test_master_runs_only_the_addons_a_sensor_needs(tmp_path: Path) -> None:
    from mitmproxy.addons import default_addons

    from egresswatch.mitmmaster import KEPT

    settings = Settings(store=False, metrics_listen=None)
    master = build_master(ProxyConfig(settings=settings, confdir=tmp_path, listen=("127.0.0.1", 0)))
    try:
        names = {type(a).__name__ for a in master.addons.chain}
        # the kept ones, mitmdump's start-up check and ours: nothing else
        assert names == {*KEPT, "ErrorCheck", "EgressWatch"}
        dropped = {type(a).__name__ for a in default_addons()} - set(KEPT)
        # what rewrites, replays or saves traffic is not there, nor mitmdump's dumper
        for name in ("MapRemote", "ModifyHeaders", "ClientPlayback", "Save", "ScriptLoader"):
            assert name in dropped and name not in names
        assert "Dumper" not in names and "KeepServing" not in names
        assert len(dropped) == 19  # default_addons(): 31, of them 12 kept
        # the options of the kept ones are there, and set through --set as before
        master.options.set("proxyauth=user:secret")
        assert master.options.block_global is True
    finally:
        master.addons.get("egresswatch").done()


def test_a_mitmproxy_without_a_kept_addon_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import mitmproxy.addons

    from egresswatch.errors import EgressWatchError
    from egresswatch.mitmmaster import sensor_addons

    full = mitmproxy.addons.default_addons
    monkeypatch.setattr(
        mitmproxy.addons,
        "default_addons",
        lambda: [a for a in full() if type(a).__name__ != "TlsConfig"],
    )
    with pytest.raises(EgressWatchError, match="has no TlsConfig addon"):
        sensor_addons()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("map_remote", "map_remote belongs to a mitmproxy addon that egresswatch proxy does not"),
        ("scripts", "scripts belongs to a mitmproxy addon that egresswatch proxy does not load"),
        ("no_such_option", "no_such_option"),  # unknown to mitmproxy: its own error
    ],
)
async def test_an_option_of_a_left_out_addon_says_why(
    tmp_path: Path, option: str, says: str
) -> None:
    from egresswatch.commands.proxy import ProxyError

    config = ProxyConfig(
        settings=Settings(store=False, metrics_listen=None),
        confdir=tmp_path,
        listen=("127.0.0.1", 0),
        extra=((option, "x"),),
    )
    with pytest.raises(ProxyError) as bad:
        build_master(config)
    assert says in str(bad.value)
    left_out = option != "no_such_option"
    assert ("mitmdump -s addons/egresswatch.py" in str(bad.value)) is left_out


def test_left_out_option_via_the_command_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            egresswatch_bin(),
            "proxy",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--confdir",
            str(tmp_path / "conf"),
            "--no-store",
            "--no-metrics",
            "--set",
            f"save_stream_file={tmp_path / 'flows'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "save_stream_file belongs to a mitmproxy addon" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "flows").exists()


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


HOLDING_CLIENT = """
import http.client, json, sys
proxy_port, server_port = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
body = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
c.request("POST", f"http://127.0.0.1:{server_port}/v1/chat/completions", body,
          {"content-type": "application/json", "user-agent": "egresswatch-test-client/1"})
print(c.getresponse().read().decode(), flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_real_run_on_loopback_records_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server_port, proxy_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "server.jsonl"
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/helpers/servers.py"),
            "--bind",
            "127.0.0.1",
            "--http",
            str(server_port),
            "--log",
            str(log),
        ],
        stdout=subprocess.PIPE,
    )
    db = tmp_path / "flows.db"
    proxy = subprocess.Popen(
        [
            egresswatch_bin(),
            "proxy",
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--confdir",
            str(tmp_path / "conf"),
            "--db",
            f"sqlite:///{db}",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_port(proxy_port, proxy)
        # a client app in its own process, on the same host; it keeps its connection (and
        # itself) alive until the proxy has stopped, so the /proc lookup cannot race its exit
        client = subprocess.Popen(
            [sys.executable, "-c", HOLDING_CLIENT, str(proxy_port), str(server_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        answer = client.stdout.readline()
        r = subprocess.CompletedProcess(client.args, 0, answer, "")
        assert json.loads(r.stdout)["object"] == "chat.completion"
        assert [e["path"] for e in read_log(log) if e["event"] == "request"] == [
            "/v1/chat/completions"
        ]
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "egresswatch_decisions_total" in metrics
        proxy.send_signal(signal.SIGTERM)  # as systemd stops it: must flush and exit 0
        _, err = proxy.communicate(timeout=20)
        client.communicate("bye\n", timeout=10)
        assert proxy.returncode == 0, err.decode()
        text = err.decode()
        ca = tmp_path / "conf" / "mitmproxy-ca-cert.pem"
        assert ca.exists() and f"SSL_CERT_FILE={ca}" in text
        assert f"HTTPS_PROXY=http://127.0.0.1:{proxy_port}" in text
    finally:
        for p in (proxy, server, *([client] if "client" in locals() else [])):
            if p.poll() is None:
                p.kill()
                p.wait()
    from egresswatch.store import FlowFilter, open_store, query_flows

    store = open_store(f"sqlite:///{db}")
    try:
        rows = list(query_flows(store, FlowFilter(), limit=10))
    finally:
        store.close()
    assert [r.path for r in rows] == ["/v1/chat/completions"]
    # an unknown User-Agent is no app hint: the process name stands in for it
    assert (rows[0].client_app or "").startswith("python")
    # same host: the /proc lookup names the client's own process
    assert rows[0].client_pid == client.pid
    assert (rows[0].client_process or "").startswith("python")


@pytest.mark.slow
def test_port_in_use_is_a_runtime_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [
                egresswatch_bin(),
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--confdir",
                str(tmp_path / "conf"),
                "--no-store",
                "--no-metrics",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 4, res.stderr
    assert "egresswatch: error: mitmproxy could not start" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "mode", ["regular", "transparent", "wireguard", "upstream:http://127.0.0.1:3128", "socks5"]
)
def test_supported_modes_are_accepted(mode: str) -> None:
    from egresswatch.commands.proxy import ProxyModeType

    assert ProxyModeType().convert(mode, None, None) == mode
