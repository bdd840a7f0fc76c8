"""10,000 requests at concurrency 50: direct vs through `egresswatch run`, with peak RSS.

    .venv/bin/python bench/load.py [--requests 10000] [--concurrency 50] [--deadline 600]

Needs root (a network namespace of its own, removed afterwards). Inside it: a logging
HTTP server on a documentation address (198.51.100.20) and one `egresswatch run` on its
embedded defaults (proxy 127.0.0.1:8080, SQLite store, metrics). The same keep-alive load
(N client threads, one GET per request, bounded by count and deadline) runs once straight
to the server and once through the monitor. Prints, side by side: answered requests,
errors, seconds, requests/s and the ratio, rows in the store after a clean stop, and the
monitor's peak resident memory (VmRSS sampled every 0.2 s, and VmHWM).
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on sys.path, where bench/inspect.py shadows
# the standard library's `inspect`: drop it.
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("bench")]

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.lab import Lab  # noqa: E402
from helpers.load import LoadResult, RssSampler, drive, sqlite_paths  # noqa: E402
from helpers.runmon import SERVER, in_netns, run_env, start_run, start_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds per run, at most")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/load.py needs root (network namespaces)", file=sys.stderr)
        return 2
    exe = str(Path(sys.executable).with_name("egresswatch"))
    with tempfile.TemporaryDirectory(prefix="egw-load-") as td, Lab("bl") as lab:
        tmp = Path(td)
        ns = lab.netns("m")
        start_server(lab, ns, tmp / "server.jsonl")

        def load(proxy: tuple[str, int] | None, prefix: str) -> LoadResult:
            return in_netns(
                ns,
                lambda: drive(
                    SERVER,
                    total=args.requests,
                    concurrency=args.concurrency,
                    deadline=args.deadline,
                    proxy=proxy,
                    prefix=prefix,
                ),
                timeout=args.deadline + 60,
            )

        direct = load(None, "/direct/")
        rp = start_run(lab, ns, [exe, "run"], run_env(tmp))
        with RssSampler(rp.proc.pid) as rss:
            proxied = load(("127.0.0.1", 8080), "/load/")
        os.kill(rp.proc.pid, signal.SIGTERM)
        code = rp.proc.wait(120)
        rows = len(sqlite_paths(tmp / "data/egresswatch/egresswatch.db", "/load/"))

    print(f"{args.requests} requests at concurrency {args.concurrency}, one namespace, 2 sides")
    print(f"{'':24}{'direct':>12}{'egresswatch run':>18}")
    print(f"{'answered':24}{len(direct.answered):>12}{len(proxied.answered):>18}")
    print(f"{'errors':24}{sum(direct.errors.values()):>12}{sum(proxied.errors.values()):>18}")
    print(f"{'seconds':24}{direct.seconds:>12.1f}{proxied.seconds:>18.1f}")
    print(f"{'requests/s':24}{direct.rate:>12.0f}{proxied.rate:>18.0f}")
    ratio = proxied.rate / direct.rate if direct.rate else 0.0
    print(f"{'ratio (run / direct)':24}{'1.00':>12}{ratio:>18.2f}")
    print(f"{'rows in the store':24}{'-':>12}{rows:>18}")
    print(f"{'peak RSS MiB':24}{'-':>12}{rss.peak_mib:>18.0f}")
    print(f"monitor exit status {code}")
    ok = rows == len(proxied.answered) == args.requests and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
