"""`egresswatch run` for real: the README's `make run` on defaults, SIGTERM, SIGHUP, failures.

Every monitor runs in a network namespace of its own (tests/helpers/runmon.py),
so the embedded defaults (proxy 127.0.0.1:8080, metrics 127.0.0.1:9721) are
used exactly as a user gets them. Traffic goes only to a logging test server on
a documentation address inside that namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, egresswatch_bin, is_root
from helpers.lab import Lab
from helpers.runmon import (
    SERVER,
    SERVER_PORT,
    SLOW_PORT,
    flow_paths,
    flow_rows,
    http_get,
    in_netns,
    proxied_get,
    run_env,
    start_run,
    start_server,
    start_slow_server,
)
from helpers.servers import read_log

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("rn") as lab:
        yield lab


@pytest.fixture
def ns(lab: Lab, tmp_path: Path) -> str:
    name = lab.netns("m")
    start_server(lab, name, tmp_path / "server.jsonl")
    return name


def make_run_command() -> list[str]:
    """The recipe of the Makefile's `run` target (what the README's `make run` executes)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^run:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, "Makefile has no run target"
    return shlex.split(m.group(1).strip().splitlines()[-1])


def db_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "egresswatch" / "egresswatch.db"


def stop(rp: object, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    proc = rp.proc  # type: ignore[attr-defined]
    os.kill(proc.pid, sig)
    return int(proc.wait(timeout))


def test_make_run_starts_on_defaults(lab: Lab, ns: str, tmp_path: Path) -> None:
    argv = make_run_command()
    assert argv[-1] == "run" and argv[0].endswith("egresswatch")
    env = run_env(tmp_path)
    rp = start_run(lab, ns, argv, env)
    out = rp.output()
    # The banner says where everything is.
    for text in (
        "Proxy: regular on 127.0.0.1:8080",
        f"CA certificate: {tmp_path}/home/.mitmproxy/mitmproxy-ca-cert.pem",
        "export HTTPS_PROXY=http://127.0.0.1:8080",
        "Metrics: http://127.0.0.1:9721/metrics",
        f"Database: {db_file(tmp_path)} (SQLite)",
        "Policy: shipped default, mode monitor",
        "GeoIP: RIR registry fallback",
    ):
        assert text in out, f"{text!r} not in banner:\n{out}"
    assert (tmp_path / "home/.mitmproxy/mitmproxy-ca-cert.pem").is_file()

    status, body = in_netns(ns, http_get, "http://127.0.0.1:9721/metrics")
    assert status == 200 and b"egresswatch_build_info" in body
    status, body = in_netns(ns, proxied_get, "/defaults-check")
    assert status == 200 and b"/defaults-check" in body
    assert any(e.get("path") == "/defaults-check" for e in read_log(tmp_path / "server.jsonl"))

    # status sees it running, with the flow in the last minute once the writer committed it
    deadline = time.monotonic() + 20
    while True:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, egresswatch_bin(), "status", "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)
        if st["flows_last_minute"] or time.monotonic() > deadline:
            break
    assert st["running"] and st["pid"] == rp.proc.pid and st["metrics_up"]
    assert st["flows_last_minute"] >= 1, st
    assert st["metrics"]["egresswatch_decisions_total"] >= 1
    assert st["state"]["proxy"] == "regular 127.0.0.1:8080"
    state_file = tmp_path / "data/egresswatch/egresswatch.pid.json"
    assert state_file.stat().st_mode & 0o777 == 0o600  # may hold a database password

    assert stop(rp) == 0, rp.output()
    assert "/defaults-check" in flow_paths(db_file(tmp_path))
    assert not (tmp_path / "data/egresswatch/egresswatch.pid").exists()
    res = subprocess.run(
        [egresswatch_bin(), "status"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "EGRESSWATCH_METRICS_LISTEN": "127.0.0.1:1"},
        timeout=60,
    )
    assert res.returncode == 1 and "not running" in res.stdout


def _traffic(answered: list[tuple[str, float, float]], start: threading.Event) -> None:
    """Four keep-alive clients (threads inherit this thread's namespace), bounded in count
    and time, against the delaying server (0.2 s per request); each records the paths it got
    an answer for, with when it sent and when the answer came."""
    deadline = time.monotonic() + 60

    def client(n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        refused = 0
        for i in range(500):
            if time.monotonic() > deadline or refused > 20:
                return
            path = f"/term-{n}-{i}"
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
                conn.request("GET", f"http://{SERVER}:{SLOW_PORT}{path}?delay=0.2")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    answered.append((path, sent, time.monotonic()))
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                refused = 0
            except ConnectionRefusedError:
                refused += 1
                conn = None
                time.sleep(0.02)
            except (OSError, http.client.HTTPException):
                conn = None
            if len(answered) >= 40:
                start.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_sigterm_during_traffic_loses_no_decision(lab: Lab, ns: str, tmp_path: Path) -> None:
    start_slow_server(lab, ns)
    env = run_env(tmp_path)
    rp = start_run(lab, ns, [egresswatch_bin(), "run"], env)
    answered: list[tuple[str, float, float]] = []
    start = threading.Event()
    worker = threading.Thread(
        target=in_netns, args=(ns, _traffic, answered, start), kwargs={"timeout": 90}
    )
    worker.start()
    assert start.wait(60), "traffic did not get going"
    at_signal = len(answered)
    signalled = time.monotonic()
    os.kill(rp.proc.pid, signal.SIGTERM)
    code = rp.proc.wait(60)
    worker.join(90)
    out = rp.output()
    assert code == 0, out
    assert "SIGTERM: finishing flows in flight, flushing the store" in out
    # Requests that were at the server when the signal came were answered, not cut off.
    in_flight = [p for p, sent, got in answered if sent < signalled < got]
    assert in_flight, "no request was in flight at the signal"
    recorded = set(flow_paths(db_file(tmp_path)))
    missing = [p for p, _, _ in answered if p not in recorded]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests not recorded"
    assert len(answered) >= at_signal >= 40
    # Keep-alive clients were told to close: the drain does not wait for the 10 s grace.
    drained = rp.wait_line("egresswatch: no request in flight (")
    print(
        f"answered {len(answered)} ({at_signal} before SIGTERM, {len(in_flight)} in flight), "
        f"recorded {len(recorded)}; {drained}"
    )


POLICY = """
mode = "{mode}"
approved = ["EEA", "US"]
outside = "block"

[unknown]
address = "allow"
operator = "allow"

[[rules]]
name = "no-plain-http-test"
action = "block"
port = [80]
reason = "test: plain HTTP to port 80"
"""


def test_sighup_switches_to_enforce_without_dropping_a_connection(
    lab: Lab, ns: str, tmp_path: Path
) -> None:
    # The policy comes from a config file found through EGRESSWATCH_CONFIG, by a path
    # relative to that file.
    etc = tmp_path / "etc"
    etc.mkdir()
    policy = etc / "policy.toml"
    policy.write_text(POLICY.format(mode="monitor"))
    (etc / "egresswatch.toml").write_text('[policy]\nfile = "policy.toml"\n')
    env = {**run_env(tmp_path), "EGRESSWATCH_CONFIG": str(etc / "egresswatch.toml")}
    rp = start_run(lab, ns, [egresswatch_bin(), "run"], env)
    assert f"Config: {etc / 'egresswatch.toml'}" in rp.output()
    assert "Policy: " + str(policy) + ", mode monitor" in rp.output()

    def session() -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
        seen: dict[str, object] = {}

        def get(path: str) -> int:
            conn.request("GET", f"http://{SERVER}:{SERVER_PORT}{path}")
            resp = conn.getresponse()
            resp.read()
            return resp.status

        seen["first"] = get("/hup-1")
        sock, local = conn.sock, conn.sock.getsockname()
        # A broken policy: reported, the running one kept.
        policy.write_text("mode = \n")
        os.kill(rp.proc.pid, signal.SIGHUP)
        rp.wait_line("reload failed, keeping the current policy")
        seen["after_bad"] = get("/hup-2")
        policy.write_text(POLICY.format(mode="enforce"))
        os.kill(rp.proc.pid, signal.SIGHUP)
        rp.wait_line("mode enforce")
        seen["after_reload"] = get("/hup-3")
        seen["same_socket"] = conn.sock is sock and conn.sock.getsockname() == local
        conn.close()
        return seen

    seen = in_netns(ns, session)
    assert seen == {"first": 200, "after_bad": 200, "after_reload": 451, "same_socket": True}
    served = {e.get("path") for e in read_log(tmp_path / "server.jsonl")}
    assert {"/hup-1", "/hup-2"} <= served and "/hup-3" not in served
    assert stop(rp) == 0, rp.output()
    verdicts = {r.path: r.verdict for r in flow_rows(db_file(tmp_path))}
    assert verdicts["/hup-1"] == "would-block"
    assert verdicts["/hup-2"] == "would-block"
    assert verdicts["/hup-3"] == "block"


def test_proxy_that_cannot_start_ends_the_monitor(lab: Lab, ns: str, tmp_path: Path) -> None:
    def occupy() -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 8080))
        s.listen()
        return s

    holder = in_netns(ns, occupy)
    try:
        rp = start_run(lab, ns, [egresswatch_bin(), "run"], run_env(tmp_path), ready=None)
        code = rp.proc.wait(90)
        out = rp.output()
    finally:
        holder.close()
    assert code == 4, out
    assert "egresswatch: error: the regular proxy on 127.0.0.1:8080 could not start" in out
    assert "Ready." not in out
    assert not (tmp_path / "data/egresswatch/egresswatch.pid").exists()


def test_sniffer_that_keeps_failing_ends_the_monitor(lab: Lab, ns: str, tmp_path: Path) -> None:
    lab.sh("ip", "-n", ns, "link", "add", "rsv0", "type", "veth", "peer", "name", "rsv1")
    lab.sh("ip", "-n", ns, "link", "set", "rsv0", "up")
    argv = [egresswatch_bin(), "run", "--no-proxy", "-i", "rsv0", "--restarts", "1"]
    rp = start_run(lab, ns, argv, run_env(tmp_path))
    assert "Sniffer: capturing on rsv0" in rp.output()
    assert "Proxy: off" in rp.output()
    lab.sh("ip", "-n", ns, "link", "del", "rsv0")
    code = rp.proc.wait(60)
    out = rp.output()
    assert code == 4, out
    assert "sniffer stopped" in out and "restarting" in out
    assert "egresswatch: error: the sniffer on rsv0 failed 2 times" in out


def test_sniffer_only_monitor_reloads_records_and_stops_cleanly(
    lab: Lab, ns: str, tmp_path: Path
) -> None:
    argv = [egresswatch_bin(), "run", "--no-proxy", "-i", "lo", "--sensor-name", "snf"]
    rp = start_run(lab, ns, argv, run_env(tmp_path))
    os.kill(rp.proc.pid, signal.SIGHUP)
    rp.wait_line("reloaded policy (shipped default, mode monitor)")

    def direct() -> tuple[int, bytes]:  # no proxy: only the sniffer sees it
        return http_get(f"http://{SERVER}:{SERVER_PORT}/sniffed-only")

    assert in_netns(ns, direct)[0] == 200
    assert stop(rp) == 0, rp.output()
    rows = [r for r in flow_rows(db_file(tmp_path)) if r.sensor == "sniffer"]
    hosts = {(r.dst_addr, r.dst_port, r.http_host, r.node) for r in rows}
    assert (SERVER, SERVER_PORT, SERVER, "snf") in hosts, hosts
