"""What ``egresswatch verify`` costs: wall time of a command bare vs. under verify.

    sudo .venv/bin/python bench/verify.py [--rounds 3]

Three commands, each run bare and under verify (root needed), best of ``--rounds``:
``true`` (pure set-up and teardown: namespaces, nft, gateway start with mitmproxy and
the sniffer), a Python start, and a Python program making 20 HTTPS requests to one
pool name (each answered 451 by the gateway: the cost of interception per request).
Prints both times side by side and their ratio, so machines compare; for the requests,
the cost per intercepted request against the Python start under verify. The requests go
to a name only the gateway's pool answers; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "egresswatch"
REQUESTS = """
import httpx
with httpx.Client(timeout=10) as c:
    for _ in range(20):
        c.post("https://api.example-llm.test/v1/chat/completions", json={"q": "x"})
"""


def best(cmd: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/verify.py needs root (namespaces)")
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "requests.py"
        prog.write_text(REQUESTS)
        cases = {
            "true": ["true"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "20 HTTPS requests": [sys.executable, str(prog)],
        }
        verify = [str(BIN), "verify", "-q", "--confdir", str(Path(tmp) / "ca"), "--"]
        print(f"{'case':22} {'bare s':>8} {'verify s':>9} {'ratio':>7} {'overhead s':>11}")
        under: dict[str, float] = {}
        for name, cmd in list(cases.items())[:2]:
            bare = best(cmd, args.rounds)
            under[name] = best([*verify, *cmd], args.rounds)
            print(
                f"{name:22} {bare:8.3f} {under[name]:9.3f} {under[name] / bare:7.1f} "
                f"{under[name] - bare:11.3f}"
            )
        # Bare, the test name does not resolve here, so only the verify run means anything:
        # compare it with the Python start under verify for the cost per intercepted request.
        name = "20 HTTPS requests"
        under[name] = best([*verify, *cases[name]], args.rounds)
        per = (under[name] - under["python -c pass"]) / 20
        print(f"{name:22} {'-':>8} {under[name]:9.3f} {'-':>7} {per * 1000:8.1f} ms/request")
    print(f"CPUs: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
