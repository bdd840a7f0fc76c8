"""``egresswatch flows``, ``tail`` and ``db`` against a real SQLite file, through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import egresswatch_bin
from helpers import pg as pg_helpers
from helpers.storedata import make_decision

from egresswatch.cli import cli
from egresswatch.commands._storeopts import parse_duration, parse_time
from egresswatch.model import Decision
from egresswatch.store import open_store


def made_at(ds: list[Decision]) -> float:
    """The fixture's "now": rows sit 60 s off every 2-minute boundary of it."""
    return ds[0].observation.time + 60


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, list[Decision]]:
    path = tmp_path / "flows.db"
    now = time.time()
    store = open_store(str(path))
    w = store.writer(spill_path=tmp_path / "spill.jsonl", node="lab-gw", flush_interval=0.05)
    decisions = [
        make_decision(i, ts=now - 60 - i * 120, findings=1 if i % 4 == 0 else 0) for i in range(60)
    ]
    for d in decisions:
        w.record(d)
    w.close()
    store.close()
    return str(path), decisions


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [egresswatch_bin(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_flows_json_filters_match(db: tuple[str, list[Decision]]) -> None:
    path, ds = db
    code, out, _ = invoke(
        "flows",
        "--db",
        path,
        "--format",
        "json",
        "--all",
        "--country",
        "cn",
        "--country",
        "US",
        "--verdict",
        "block",
        "--verdict",
        "would-block",
    )
    assert code == 0
    got = [r["decision_id"] for r in json.loads(out)]
    want = [
        d.id for d in ds if d.assessment.geo.country in ("CN", "US") and d.verdict.action == "block"
    ]
    assert got == want  # newest first, as recorded
    assert want


def test_flows_since_type_service_client_sensor(db: tuple[str, list[Decision]]) -> None:
    path, ds = db
    code, out, _ = invoke(
        "flows",
        "--db",
        path,
        "--format",
        "json",
        "--all",
        "--since",
        "62m",
        "--type",
        "chat-prompt",
        "--service",
        "openai",
        "--service",
        "DeepSeek API",
        "--sensor",
        "lab-gw",
    )
    assert code == 0
    got = {r["decision_id"] for r in json.loads(out)}
    want = {
        d.id
        for d in ds
        if d.observation.time >= made_at(ds) - 62 * 60
        and "chat-prompt" in d.assessment.payload_types
        and d.assessment.service.service.id in ("openai", "deepseek")  # type: ignore[union-attr]
    }
    assert got == want and want
    client = ds[1].observation.client_addr  # decisions 1, 21, 41: all DeepSeek (CN)
    assert client is not None
    code, out, _ = invoke(
        "flows",
        "--db",
        path,
        "--format",
        "json",
        "--all",
        "--client",
        client,
        "--operator-country",
        "cn",
    )
    rows = json.loads(out)
    assert rows and all(r["client_addr"] == client and r["operator_country"] == "CN" for r in rows)


def test_flows_csv_and_table(db: tuple[str, list[Decision]]) -> None:
    path, ds = db
    proc = run("flows", "--db", path, "--format", "csv", "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["decision_id"] for r in rows] == [d.id for d in ds[:5]]
    assert rows[2]["payload_types"] == ";".join(str(p) for p in ds[2].assessment.payload_types)
    assert rows[0]["path"] == "/v1/chat/completions?api-key=…&stream=…"
    assert rows[0]["time"].endswith("+00:00")
    proc = run("flows", "--db", path, "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert ds[0].assessment.host in proc.stdout and ds[0].verdict.label in proc.stdout
    assert "newest 3 shown" in proc.stdout
    empty = run("flows", "--db", path, "--country", "JP")
    assert empty.returncode == 0 and "no flows match" in empty.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "3x"], "is neither a duration"),
        (["--since", "0h"], "longer than zero"),
        (["--country", "China"], "not a two-letter country code"),
        (["--verdict", "deny"], "'deny' is not one of"),
        (["--type", "prompt"], "'prompt' is not one of"),
        (["--since", "1h", "--until", "2h"], "--until must be later than --since"),
        (["--limit", "0"], "0 is not in the range"),
    ],
)
def test_flows_bad_flags_are_usage_errors(
    db: tuple[str, list[Decision]], args: list[str], message: str
) -> None:
    proc = run("flows", "--db", db[0], *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_and_unreachable_databases_are_one_line_errors(tmp_path: Path) -> None:
    proc = run("flows", "--db", str(tmp_path / "typo.db"))
    assert proc.returncode == 4
    assert proc.stderr.strip() == (
        f"egresswatch: error: no database at {tmp_path / 'typo.db'}: nothing recorded yet, "
        "or pass --db / set EGRESSWATCH_DB"
    )
    assert not (tmp_path / "typo.db").exists()
    from helpers.pg import free_port

    proc = run("flows", "--db", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert proc.returncode == 4
    assert proc.stderr.startswith("egresswatch: error: cannot connect to PostgreSQL at ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_db_upgrade_info_prune(tmp_path: Path, db: tuple[str, list[Decision]]) -> None:
    fresh = tmp_path / "fresh.db"
    proc = run("db", "upgrade", "--db", str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert "revision (empty) -> 0005" in proc.stdout
    assert "already at revision 0005" in run("db", "upgrade", "--db", str(fresh)).stdout

    path, ds = db
    info = json.loads(run("db", "info", "--db", path, "--json").stdout)
    assert (info["flows"], info["findings"], info["revision"]) == (60, 15, "0005")
    assert "flows" in run("db", "info", "--db", path).stdout

    args = ["db", "prune", "--db", path, "--older-than", "60m", "--findings-older-than", "30m"]
    now = made_at(ds)
    old_flows = sum(1 for d in ds if d.observation.time < now - 3600)
    old_findings = sum(len(d.assessment.findings) for d in ds if d.observation.time < now - 1800)
    dry = json.loads(run(*args, "--dry-run", "--json").stdout)
    assert (dry["flows"], dry["findings"], dry["dry_run"]) == (old_flows, old_findings, True)
    assert json.loads(run("db", "info", "--db", path, "--json").stdout)["flows"] == 60
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"deleted: {old_flows} flows, {old_findings} findings")
    info = json.loads(run("db", "info", "--db", path, "--json").stdout)
    assert info["flows"] == 60 - old_flows
    bad = run("db", "prune", "--db", path, "--older-than", "thirty days")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


def test_db_option_from_environment(db: tuple[str, list[Decision]]) -> None:
    path, _ = db
    result = CliRunner(env={"EGRESSWATCH_DB": path}).invoke(cli, ["db", "info", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["flows"] == 60


def test_tail_follows_new_decisions(tmp_path: Path, db: tuple[str, list[Decision]]) -> None:
    path, _ = db
    proc = subprocess.Popen(
        [
            egresswatch_bin(),
            "tail",
            "--db",
            path,
            "-n",
            "0",
            "--interval",
            "0.2s",
            "--format",
            "json",
            "--verdict",
            "block",
            "--max",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    new: list[Decision] = []
    try:
        store = open_store(path)
        w = store.writer(spill_path=tmp_path / "spill2.jsonl", flush_interval=0.05)
        # keep recording until tail has seen 4 blocks and quit (it starts after whatever
        # was there when it started, which on a busy machine may be a while)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            d = make_decision(1000 + len(new), ts=time.time())
            w.record(d)
            w.flush()
            new.append(d)
            time.sleep(0.05)
        w.close()
        store.close()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    got = [json.loads(line)["decision_id"] for line in out.splitlines()]
    blocks = [d.id for d in new if d.verdict.label == "block"]
    assert len(got) == 4
    start = blocks.index(got[0])
    assert got == blocks[start : start + 4]  # consecutive matching decisions, in order


def test_tail_backlog_lines(db: tuple[str, list[Decision]]) -> None:
    path, ds = db
    proc = run("tail", "--db", path, "-n", "3", "--max", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    # oldest of the three first, like tail
    assert [d.assessment.host in line for d, line in zip(ds[2::-1], lines, strict=True)]
    assert ds[0].verdict.label in lines[-1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("30d", 2_592_000),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 1_209_600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 10M ", 600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10", "10x", "1h 30m", "-5m", "0s", "1h30"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_time() -> None:
    assert parse_time("1h", now=10_000.0) == 6400.0
    assert parse_time("2026-11-28T14:00:00Z") == 1795874400.0
    with pytest.raises(ValueError, match="neither a duration"):
        parse_time("yesterday")


pg_server = pg_helpers.pg_server  # fixtures: the same CLI on SQLite and PostgreSQL
store_url = pg_helpers.store_url


def test_same_cli_on_sqlite_and_postgresql(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    w = store.writer(spill_path=tmp_path / "spill.jsonl", node="central-1")
    now = time.time()
    decisions = [make_decision(i, ts=now - 60 - i * 600, findings=i % 2) for i in range(12)]
    for d in decisions:
        w.record(d)
    w.close()
    store.close()
    proc = run(
        "flows", "--db", store_url, "--format", "json", "--since", "62m", "--sensor", "central-1"
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["decision_id"] for r in json.loads(proc.stdout)] == [
        d.id for d in decisions if d.observation.time >= now - 62 * 60
    ]
    info = json.loads(run("db", "info", "--db", store_url, "--json").stdout)
    assert (info["flows"], info["findings"], info["dialect"]) == (
        12,
        6,
        store_url.split(":")[0].split("+")[0],
    )
    pruned = json.loads(
        run("db", "prune", "--db", store_url, "--older-than", "62m", "--json").stdout
    )
    assert pruned["flows"] == sum(1 for d in decisions if d.observation.time < now - 62 * 60)
    tail = run("tail", "--db", store_url, "-n", "2", "--max", "2", "--format", "json")
    assert [json.loads(x)["decision_id"] for x in tail.stdout.splitlines()] == [
        decisions[1].id,
        decisions[0].id,
    ]
