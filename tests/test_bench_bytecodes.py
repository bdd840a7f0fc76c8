"""bench/bytecodes.py still runs: it counts the Python of real proxies and names the addon's.

A smoke run (loopback only: the test server, the master egresswatch proxy embeds and
``egresswatch proxy`` itself), short enough for CI. It checks that the counts exist and
that the difference between the two names egresswatch's own code, not what they are.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_bytecodes_counts_the_addon_in_egresswatch_proxy() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/bytecodes.py"),
            "--requests",
            "20",
            "--proxies",
            "master,cli",
            "--top",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    totals = dict(re.findall(r"^  (master|cli)\s+([\d,]+) bytecodes", out.stdout, re.M))
    assert set(totals) == {"master", "cli"}, out.stdout
    master, cli = (int(totals[k].replace(",", "")) for k in ("master", "cli"))
    assert 0 < master < cli, out.stdout
    diff = out.stdout.split("master -> cli:", 1)[1]
    # the addon's hooks and the classifier ran in egresswatch proxy, not in the bare master
    for name in ("egresswatch/proxy.py", "egresswatch/classify/classifier.py"):
        row = re.search(r"^\s+\+([\d,]+)\s+0\s+[\d,]+\s.*" + re.escape(name) + "$", diff, re.M)
        assert row and int(row.group(1).replace(",", "")) > 0, (name, out.stdout)
