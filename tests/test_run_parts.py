"""The supervisor's parts without root: the swappable inspector, shared sinks, reload,
start-up checks, the banner, the pid/state files and `status` against a real /metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.geoip import build_lab_db
from helpers.mitm import RecordingSink, fake_inspector, http_flow

from egresswatch import config as cfg
from egresswatch.cli import cli
from egresswatch.commands import status as status_cmd
from egresswatch.errors import ConfigError
from egresswatch.model import Mode, Observation, Sensor, Stage, Transport
from egresswatch.model import Protocol as Proto
from egresswatch.supervisor import (
    InFlight,
    LiveInspector,
    Monitor,
    RunError,
    SharedSink,
    running_pid,
    state_path,
)

OBS = Observation(
    sensor=Sensor.PROXY,
    transport=Transport.TCP,
    protocol=Proto.HTTPS,
    dst_addr="198.51.100.20",
    dst_port=443,
    stage=Stage.CLIENTHELLO,
    flow_id="f1",
    sni="api.openai.com",
)


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default pid file and database live under XDG_DATA_HOME: keep them in tmp."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def conf_for(tmp_path: Path, text: str = "", **env: str) -> cfg.RunConfig:
    base = {"XDG_DATA_HOME": str(tmp_path / "data")}
    path = None
    if text:
        path = tmp_path / "egresswatch.toml"
        path.write_text(text)
    return cfg.load(path, env={**base, **env})


def test_live_inspector_swaps_policy_for_the_next_flow() -> None:
    live = LiveInspector(fake_inspector(Mode.MONITOR))
    assert live.policy.mode is Mode.MONITOR
    before = live.inspect(OBS)
    live.swap(fake_inspector(Mode.ENFORCE))
    after = live.inspect(OBS)
    assert (before.verdict.mode, after.verdict.mode) == (Mode.MONITOR, Mode.ENFORCE)
    assert live.reloads == 1 and live.policy.mode is Mode.ENFORCE


def test_shared_sink_passes_on_but_never_closes() -> None:
    inner = RecordingSink()
    shared = SharedSink(inner)  # type: ignore[arg-type]
    decision = fake_inspector().inspect(OBS)
    shared.record(decision)
    shared.close()
    assert inner.decisions == [decision] and inner.closes == 0


def test_inflight_counts_requests_until_answered_or_failed() -> None:
    addon = InFlight()
    a, b = http_flow(), http_flow()
    addon.requestheaders(a)
    addon.requestheaders(b)
    assert addon._count() == 2
    addon.response(a)
    addon.error(b)
    assert addon._count() == 0


def test_reload_reads_the_policy_file_again(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('mode = "monitor"\napproved = ["EEA"]\n')
    monitor = Monitor(conf_for(tmp_path, f'[policy]\nfile = "{policy}"\n'))
    from egresswatch.runtime import build_inspector

    monitor.inspector = LiveInspector(build_inspector(monitor.settings))
    assert monitor.inspector.policy.mode is Mode.MONITOR
    policy.write_text('mode = "enforce"\napproved = ["EEA"]\n')
    assert monitor.reload_inspector().policy.mode is Mode.ENFORCE
    policy.write_text('mode = "enforce"\napproved = ["EEA"]\noutside = "explode"\n')
    with pytest.raises(ConfigError) as info:
        monitor.reload_inspector()
    assert info.value.path == str(policy) and info.value.line == 3


def test_nothing_to_run_is_an_error(tmp_path: Path) -> None:
    monitor = Monitor(conf_for(tmp_path, "[proxy]\nenabled = false\n"))
    with pytest.raises(RunError, match="nothing to run"):
        monitor.build()


def test_second_monitor_on_the_same_pid_file_refuses(tmp_path: Path) -> None:
    conf = conf_for(tmp_path)
    pid_file = conf.pid_file()
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getppid()}\n")  # a live process that is not us
    with pytest.raises(RunError, match=f"another egresswatch run is active \\(pid {os.getppid()}"):
        Monitor(conf).build()
    pid_file.write_text("999999999\n")  # stale: no such process
    assert running_pid(pid_file) is None


def test_banner_names_every_part(tmp_path: Path) -> None:
    db = build_lab_db(tmp_path / "lab.mmdb")
    text = (
        f'[geoip]\ncountry_db = "{db}"\n[proxy]\nconfdir = "{tmp_path / "mitm"}"\n'
        f'listen = "127.0.0.1:18099"\n[metrics]\nenabled = false\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "f.db"}"\n'
    )
    monitor = Monitor(conf_for(tmp_path, text, EGRESSWATCH_POLICY_MODE="enforce"))
    monitor.build()
    try:
        lines = monitor.banner()
    finally:
        assert monitor.sinks is not None
        monitor.sinks.close()
    text = "\n".join(lines)
    assert f"Config: {tmp_path / 'egresswatch.toml'}" in text
    assert "Proxy: regular on 127.0.0.1:18099" in text
    assert f"CA certificate: {tmp_path / 'mitm' / 'mitmproxy-ca-cert.pem'}" in text
    assert "Metrics: off" in text
    assert f"Database: {tmp_path / 'f.db'} (SQLite)" in text
    assert "Policy: shipped default, mode enforce (overridden)" in text
    assert "Sniffer: off" in text
    assert f"GeoIP: egresswatch-Country-ASN (country+asn) {db}, built " in text
    assert "0 days old" in text
    from egresswatch.geo.mmdb import registry_version

    assert f"GeoIP: RIR registry fallback (iptocc {registry_version()}: its data" in text


def test_status_reads_pid_state_metrics_and_database(tmp_path: Path) -> None:
    """A real /metrics listener and SQLite store built as `run` builds them."""
    from prometheus_client import CollectorRegistry

    from egresswatch import runtime

    conf = conf_for(
        tmp_path,
        f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n',
    )
    # Port 0: the listener picks a free port; give status the real one through the state file.
    inspector = fake_inspector(Mode.MONITOR)
    settings = dataclasses.replace(conf.settings(), metrics_listen=("127.0.0.1", 0))
    sinks = runtime.build_sinks(settings, CollectorRegistry(), None)
    try:
        for _ in range(3):  # now: OBS was made at import, maybe more than a minute ago
            sinks.record(inspector.inspect(dataclasses.replace(OBS, time=time.time())))
        assert sinks.writer is not None and sinks.writer.flush(10)
        assert sinks.server is not None
        pid_file = conf.pid_file()
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{os.getpid()}\n")
        state_path(pid_file).write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "started": time.time(),
                    "proxy": "regular 127.0.0.1:8080",
                    "metrics_url": f"http://127.0.0.1:{sinks.server.port}/metrics",
                    "database": f"sqlite:///{tmp_path / 's.db'}",
                    "policy": "shipped default",
                    "mode": "monitor",
                }
            )
        )
        st = status_cmd.collect(conf, pid_file)
        assert st.running and st.pid == os.getpid() and st.metrics_up
        assert st.metrics["egresswatch_decisions_total"] == 3
        assert st.metrics["egresswatch_store_queue_length"] == 0
        assert st.flows_last_minute == 3 and st.flows_per_minute_5m == pytest.approx(0.6)
        lines = status_cmd.render(st)
        assert lines[0].startswith(f"egresswatch run: running, pid {os.getpid()}")
        assert "  Decisions: 3, blocked: 0, alerts: 0 (since start)" in lines
        assert "  Flows: 3 in the last minute, 0.6/min over 5 min" in lines
        assert "  Last alert: none" in lines
    finally:
        sinks.close()
    st = status_cmd.collect(conf, pid_file)
    assert st.running  # our own pid is alive...
    assert not st.metrics_up and "refused" in (st.metrics_error or "").lower()
    pid_file.unlink()
    result = CliRunner().invoke(
        cli, ["status", "--pid-file", str(pid_file)], env={"XDG_DATA_HOME": str(tmp_path / "x")}
    )
    assert result.exit_code == 1 and "not running" in result.stdout


def test_check_loads_everything_and_starts_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--check", "--metrics-listen", "127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    assert "configuration check for sensor" in result.stderr
    assert "Metrics: http://127.0.0.1:9/metrics" in result.stderr  # reported, not opened
    assert result.stderr.rstrip().endswith("database load.")
    assert not (tmp_path / "data/egresswatch/egresswatch.pid").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "monitor"\napproved = ["XX-NOPE"]\n')
    result = CliRunner().invoke(cli, ["run", "--check", "--policy", str(bad)])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"egresswatch: error: {bad}:2")


def test_metrics_port_in_use_is_one_line_exit_4(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["run", "--metrics-listen", f"127.0.0.1:{port}", "--listen", "127.0.0.1:1"],
        )
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("egresswatch: error: ")
    assert str(port) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data/egresswatch/egresswatch.pid").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_failing_supervisor_stops_the_proxy_too(tmp_path: Path) -> None:
    """If the watcher itself breaks (here: the console), the proxy must not run unwatched."""
    import socket

    port = _free_port()
    conf = conf_for(
        tmp_path,
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nconfdir = "{tmp_path / "mitm"}"\n'
        f'[metrics]\nenabled = false\n[store]\nurl = "sqlite:///{tmp_path / "f.db"}"\n',
    )
    seen: list[str] = []

    def out(line: str) -> None:
        seen.append(line)
        if line.startswith("Proxy: regular on"):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # the proxy really listened before the failure
            raise BrokenPipeError("console went away")

    monitor = Monitor(conf, out=out)
    with pytest.raises(RunError, match="the supervisor failed: BrokenPipeError: console went"):
        monitor.run()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
    assert not conf.pid_file().exists()


def test_reload_reads_the_catalog_files_again(tmp_path: Path) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text("")
    monitor = Monitor(conf_for(tmp_path, f'[policy]\ncatalogs = ["{extra}"]\n'))
    from egresswatch.runtime import build_inspector

    monitor.inspector = LiveInspector(build_inspector(monitor.settings))
    assert monitor.inspector.catalog.match("llm.acme.example") is None
    extra.write_text(
        '[[service]]\nid = "acme-llm"\nname = "ACME internal LLM"\noperator = "ACME"\n'
        'operator_country = "NL"\ncategory = "chat-api"\ndomains = ["llm.acme.example"]\n'
    )
    new = monitor.reload_inspector()
    match = new.catalog.match("llm.acme.example")
    assert match is not None and match.service.id == "acme-llm"
    assert new.geo is monitor.inspector.geo  # GeoIP is kept, not reopened
