"""``egresswatch status``: is ``egresswatch run`` running, and how is it doing.

Three witnesses, each optional: the pid file (and the state file beside it that
``run`` writes), the /metrics endpoint (queue, drops, decisions), and the
database (flows per minute, the last alert). Exit 0 when the monitor runs and
answers, 1 when it does not.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from egresswatch import config as cfg
from egresswatch.supervisor import running_pid, state_path

#: /metrics is on loopback by default; a scrape that takes longer is reported as down
SCRAPE_TIMEOUT = 3.0


@dataclass
class Status:
    """Everything ``status`` found; ``--json`` prints it as is."""

    running: bool
    pid: int | None = None
    pid_file: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    metrics_url: str | None = None
    metrics_up: bool = False
    metrics_error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    database: str | None = None
    flows_last_minute: int | None = None
    flows_per_minute_5m: float | None = None
    last_alert: dict[str, Any] | None = None
    database_error: str | None = None


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT) -> dict[str, float]:
    """Sum each ``egresswatch_*`` sample family over its labels (``_total`` kept in the name)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # our own endpoint
        text = resp.read().decode("utf-8", "replace")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("egresswatch_") and not sample.name.endswith("_created"):
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums


def from_store(url: str | None, st: Status, now: float | None = None) -> None:
    """Flows in the last minute and last five, and the newest alert (reads only)."""
    from egresswatch.store import open_store
    from egresswatch.store.engine import default_url
    from egresswatch.store.queries import FlowFilter, count_flows, list_alerts

    url = url or default_url()
    st.database = url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        st.database_error = "no database file yet"
        return
    now = time.time() if now is None else now
    try:
        store = open_store(url)
    except Exception as e:  # a status report never dies on its database
        st.database_error = str(e)
        return
    try:
        st.flows_last_minute = count_flows(store, FlowFilter(since=now - 60))
        st.flows_per_minute_5m = count_flows(store, FlowFilter(since=now - 300)) / 5
        alerts = list_alerts(store, limit=1)
        if alerts:
            a = alerts[0]
            st.last_alert = {
                "time": a.last_ts or a.ts,
                "rule": a.rule,
                "severity": a.severity,
                "summary": a.summary,
                "count": a.count,
                "delivery": a.delivery_state,
            }
    except Exception as e:
        st.database_error = str(e)
    finally:
        store.close()


def collect(conf: cfg.RunConfig, pid_file: Path) -> Status:
    """Look at the pid file, /metrics and the database."""
    pid = running_pid(pid_file)
    st = Status(running=pid is not None, pid=pid, pid_file=str(pid_file))
    if pid is not None:
        try:
            st.state = json.loads(state_path(pid_file).read_text())
        except (OSError, ValueError):
            st.state = {}
    metrics_url = st.state.get("metrics_url")
    if metrics_url is None and conf["metrics.enabled"] and not st.state:
        host, port = conf["metrics.listen"]
        metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    st.metrics_url = metrics_url
    if metrics_url:
        try:
            st.metrics = scrape(metrics_url)
            st.metrics_up = True
        except (OSError, urllib.error.URLError, ValueError) as e:
            st.metrics_error = str(getattr(e, "reason", e))
    if "database" in st.state:
        db = st.state["database"]
        if db:
            from_store(db, st)
    elif conf["store.enabled"]:
        from_store(conf["store.url"], st)
    # A monitor found only by its endpoint (another pid file, a container) still counts.
    if not st.running and st.metrics_up:
        st.running = True
    return st


def _ago(ts: float) -> str:
    secs = max(0.0, time.time() - ts)
    if secs < 120:
        return f"{secs:.0f} s ago"
    if secs < 7200:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"


def render(st: Status) -> list[str]:
    m = st.metrics
    lines: list[str] = []
    if st.pid is not None:
        since = st.state.get("started")
        lines.append(
            f"egresswatch run: running, pid {st.pid}"
            + (
                f", up since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
                if since
                else ""
            )
        )
        for key, label in (("proxy", "Proxy"), ("policy", "Policy"), ("mode", "Mode")):
            if st.state.get(key):
                lines.append(f"  {label}: {st.state[key]}")
        if st.state.get("sniffer"):
            lines.append(f"  Sniffer: {', '.join(st.state['sniffer'])}")
        if st.state.get("reloads"):
            lines.append(f"  Reloads: {st.state['reloads']}")
    elif st.running:
        lines.append(f"egresswatch: no pid file at {st.pid_file}, but {st.metrics_url} answers")
    else:
        lines.append(f"egresswatch run: not running (no live pid in {st.pid_file})")
    if st.metrics_url:
        if st.metrics_up:
            lines.append(f"  Metrics: {st.metrics_url} up")
            queue = m.get("egresswatch_store_queue_length")
            cap = m.get("egresswatch_store_queue_capacity")
            if queue is not None:
                lines.append(f"  Store queue: {queue:.0f}" + (f" of {cap:.0f}" if cap else ""))
            lines.append(
                f"  Dropped: {m.get('egresswatch_store_dropped_total', 0):.0f}, "
                f"spilled waiting: {m.get('egresswatch_store_spill_records', 0):.0f}"
            )
            lines.append(
                f"  Decisions: {m.get('egresswatch_decisions_total', 0):.0f}, "
                f"blocked: {m.get('egresswatch_blocked_total', 0):.0f}, "
                f"alerts: {m.get('egresswatch_alerts_total', 0):.0f} (since start)"
            )
        else:
            lines.append(f"  Metrics: {st.metrics_url} DOWN ({st.metrics_error})")
    if st.database:
        lines.append(f"  Database: {st.database.split('@')[-1]}")
    if st.database_error:
        lines.append(f"  Database: {st.database_error}")
    if st.flows_last_minute is not None:
        lines.append(
            f"  Flows: {st.flows_last_minute} in the last minute, "
            f"{st.flows_per_minute_5m:.1f}/min over 5 min"
        )
    if st.last_alert:
        a = st.last_alert
        lines.append(
            f"  Last alert: {a['rule']} ({a['severity']}) {_ago(a['time'])}"
            + (f": {a['summary']}" if a.get("summary") else "")
        )
    elif st.database and not st.database_error:
        lines.append("  Last alert: none")
    return lines


@click.command("status")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The egresswatch.toml the monitor runs with (env EGRESSWATCH_CONFIG).",
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The monitor's pid file (default: run.pid_file of the config).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: Path | None, pid_file: Path | None, as_json: bool) -> None:
    """Is the monitor running? Flows per minute, store queue, drops, last alert.

    Exit status 0 if it runs (pid file or /metrics answering), 1 if not.
    """
    conf = cfg.load(cfg.find_config(config_path))
    st = collect(conf, pid_file or conf.pid_file())
    if as_json:
        click.echo(json.dumps(asdict(st), indent=2, default=str))
    else:
        console = Console(highlight=False, soft_wrap=True)
        for line in render(st):
            console.print(escape(line))
    if not st.running:
        raise SystemExit(1)
