"""bench/proxy.py still runs: every proxy it compares starts, passes its requests, and
the figures it prints come from them.

A smoke run of the real benchmark (loopback only: its test server, mitmdump bare and
with the addon, a second bare one, and with ``--embedded`` the bare embedded master and
``egresswatch proxy``), short enough for CI. It checks that the figures exist and are
plausible, not what they are: speed is the benchmark's business, not a test's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXIES = ("bare", "addon", "control", "master", "cli")


def test_bench_proxy_runs_every_proxy_including_egresswatch_proxy() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/proxy.py"),
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--scheme",
            "http",
            "--control",
            "--embedded",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        # scheme proxy req/s p50 p99 errors cpu/req sys/req wakeups/req
        m = re.match(r"http\s+(\w+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)", line)
        if m and m.group(1) in PROXIES:
            rows[m.group(1)] = m.groups()[1:]
    assert set(rows) == set(PROXIES), out.stdout
    for name, (rps, p50, p99, errors, cpu, sys_cpu) in rows.items():
        assert int(errors) == 0, (name, out.stdout)
        assert int(rps) > 0, (name, out.stdout)
        assert 0 < float(p50) <= float(p99), (name, out.stdout)
        assert int(cpu) > 0 and int(sys_cpu) <= int(cpu), (name, out.stdout)
    # the ratio lines for the control and the embedded pair, against their own baselines
    assert re.search(r"^http\s+A/A\s+[\d.]+x\s+bare/control", out.stdout, re.M), out.stdout
    assert re.search(
        r"^http\s+cli\s+([\d.]+)x\s+master/cli .*median of 1 rounds \(95% interval \1-\1;",
        out.stdout,
        re.M,
    ), out.stdout
    lone = re.findall(
        r"^http\s+1 conn\s+(\w+) p50 .* ms, (\w+) p50 .*errors 0/0\)$", out.stdout, re.M
    )
    # egresswatch proxy against bare mitmdump: what a user gets instead of mitmproxy
    assert re.search(
        r"^http\s+cli\s+([\d.]+)x\s+bare/cli .*median of 1 rounds \(95% interval \1-\1;",
        out.stdout,
        re.M,
    ), out.stdout
    assert lone == [("bare", "addon"), ("master", "cli"), ("bare", "cli")], out.stdout
    recorded = re.search(r"decisions recorded by the addon's store: (\d+)", out.stdout)
    assert recorded and int(recorded.group(1)) > 0, out.stdout
    # egresswatch proxy judged and recorded too: not a bare master under another name
    cli = re.search(r"decisions recorded by the other stores: .*\bcli (\d+)", out.stdout)
    assert cli and int(cli.group(1)) > 0, out.stdout
