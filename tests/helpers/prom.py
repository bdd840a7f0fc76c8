"""Prometheus helpers for the deploy tests: the PromQL the repository ships, and a real server.

* :func:`shipped_expressions` lists every PromQL expression in ``deploy/`` (dashboard
  targets and alert rules), each with where it comes from, so a test can check names,
  syntax and answers expression by expression.
* :func:`grafana_to_promql` replaces Grafana's variables (``$sensor``, ``$__range`` ...)
  with values Prometheus understands.
* :class:`Prometheus` runs the Debian ``prometheus`` binary (loopback, a temporary TSDB),
  optionally inside a network namespace, and answers queries through its HTTP API. The
  lab notes say the first sample is queryable after ~6 s: poll with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "egresswatch.rules.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


@dataclass(frozen=True)
class Expr:
    """One shipped PromQL expression: ``origin`` says where (file, panel/rule, refId)."""

    origin: str
    expr: str
    #: "rule" or "panel"
    kind: str
    #: the alert name or the panel id
    key: str


def dashboards() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_panels(doc.get("panels", [])))


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def shipped_expressions() -> list[Expr]:
    out: list[Expr] = []
    for path, doc in dashboards().items():
        for p in dashboard_panels(doc):
            for t in p.get("targets", []):
                out.append(
                    Expr(
                        f"{path.name} panel {p['id']} {p['title']!r} {t['refId']}",
                        t["expr"],
                        "panel",
                        f"{p['id']}{t['refId']}",
                    )
                )
    for r in rules():
        name = r.get("alert") or r.get("record")
        out.append(Expr(f"{RULES.name} {name}", r["expr"], "rule", str(name)))
    return out


def grafana_to_promql(expr: str, *, rng: str = "5m", rate: str = "1m") -> str:
    """Grafana's variables as Prometheus sees them after Grafana's own substitution."""
    return (
        expr.replace("$__rate_interval", rate)
        .replace("$__range", rng)
        .replace("$__interval", "15s")
        .replace('=~"$sensor"', '=~".*"')
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus on 127.0.0.1 (of ``ns`` when given), its TSDB under ``directory``."""

    def __init__(
        self,
        config: Path,
        directory: Path,
        *,
        port: int = 9090,
        ns: str | None = None,
    ) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed (Debian package 'prometheus')")
        self.config = config
        self.directory = directory
        self.port = port
        self.ns = ns
        self.log = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        argv = [
            str(PROMETHEUS),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not self.wait(lambda: self._get("/-/ready") is not None, 30):
            raise RuntimeError(f"prometheus not ready: {self.tail()}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only what we started
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    # -- HTTP API --------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str] | None = None) -> str | None:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self.ns:
            # the server listens on the namespace's loopback: ask from inside it
            res = subprocess.run(
                ["ip", "netns", "exec", self.ns, "curl", "-s", "-f", "--max-time", "10", url],
                capture_output=True,
                text=True,
                timeout=20,
            )
            return res.stdout if res.returncode == 0 else None
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def api(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; a PromQL error is returned as the API's error document."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self.ns:
            res = subprocess.run(
                ["ip", "netns", "exec", self.ns, "curl", "-s", "--max-time", "10", url],
                capture_output=True,
                text=True,
                timeout=20,
            )
            text = res.stdout
        else:
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    text = resp.read().decode()
            except urllib.error.HTTPError as e:  # 400/422 carry the error document
                text = e.read().decode()
        doc: dict[str, Any] = json.loads(text)
        return doc

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises AssertionError on a PromQL error."""
        doc = self.api("query", {"query": expr})
        assert doc.get("status") == "success", f"{expr!r}: {doc.get('error')}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def query_range(self, expr: str, seconds: float = 60, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        doc = self.api(
            "query_range",
            {"query": expr, "start": f"{end - seconds:.3f}", "end": f"{end:.3f}", "step": step},
        )
        assert doc.get("status") == "success", f"{expr!r}: {doc.get('error')}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["data"]["alerts"]
        return alerts

    @staticmethod
    def wait(predicate: Callable[[], object], timeout: float, step: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(step)
        return bool(predicate())
