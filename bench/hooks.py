"""Instructions per request in the addon's hooks, in process, side by side by sinks.

    .venv/bin/python bench/hooks.py [--requests 1000] [--sinks none,metrics,full]

Runs the real ``EgressWatch`` addon's ``requestheaders``, ``request`` and ``response``
with the full pipeline (lab GeoIP database, catalog, classification, bench/proxy.py's
policy) on 1 KiB JSON chat requests: once with N requests and once with none, each
under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, and prints
(instructions(N) - instructions(0)) / N for each set of sinks:

- ``none``: the inspector only (a sink that drops everything)
- ``metrics``: + Prometheus metrics
- ``full``: + alerts and the store, written by a thread in batches of the writer's
  size (never by its timer: callgrind runs ~50x slower than the real pace, and timed
  batches would be a few decisions each)

Runs of the same code repeat to within ~0.5%, whatever else the machine does, so a
change of 1% in the hooks shows; ``bench/proxy.py --instructions`` measures a whole
mitmdump instead (±1%). Needs valgrind (Debian: ``valgrind``). ~2 minutes per set
of sinks with two CPUs.
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on sys.path: keep it from shadowing modules
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("bench")]

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.benchmod import bench_module  # noqa: E402

SINKS = ("none", "metrics", "full")
#: flows made in every run, whatever N: making them is then not part of the difference
FLOWS = 2000


def _bench_proxy() -> Any:
    """bench/proxy.py as a module: its policy, request body and hook driver."""
    return bench_module("proxy")


def child(n: int, sinks: str, work: Path) -> None:
    """Drive N requests through the hooks (run under callgrind by main())."""
    import gc

    from prometheus_client import CollectorRegistry

    from egresswatch import runtime
    from egresswatch.metrics import Metrics
    from egresswatch.proxy import EgressWatch

    bp = _bench_proxy()
    from helpers import mitm  # bench/proxy.py put tests/ on sys.path
    from mitmproxy.test import tflow

    db = f"sqlite:///{work}/hooks-{os.getpid()}.db"
    settings = bp.lab_settings(work, db, store_process=False)
    inspector = runtime.build_inspector(settings)
    made: Any
    if sinks == "none":
        made = bp._NullSink()
    elif sinks == "metrics":
        made = Metrics(CollectorRegistry(), sensor_name="bench")
    else:
        made = runtime.build_sinks(settings, CollectorRegistry(), inspector)
        made.writer.flush_interval = 1e6  # batches by count only (see the module)
    addon = EgressWatch(inspector, made)
    tctx = mitm.context(addon)
    tctx.configure(addon, egresswatch_process_lookup=False)
    body = bp.chat_body()
    resp = tflow.tresp()
    flows = [mitm.http_flow(host=bp.HOST, addr="198.51.100.20", body=body) for _ in range(FLOWS)]
    warm, flows = flows[:50], flows[50:]
    loop = tctx.master.event_loop
    loop.run_until_complete(bp._drive(addon, warm, resp))  # caches, first-use imports
    writer = getattr(made, "writer", None)
    if writer is not None:
        writer.flush()
    gc.collect()
    gc.freeze()
    loop.run_until_complete(bp._drive(addon, flows[:n], resp))
    if writer is not None:
        writer.flush()
    made.close()


def _count(n: int, sinks: str, work: Path) -> int:
    out = work / f"callgrind.{sinks}.{n}"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            str(n),
            sinks,
            str(work),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        timeout=1800,
    )
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction total in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="N (1-1900)")
    ap.add_argument(
        "--sinks", default="none,metrics,full", help="comma-separated: none, metrics, full"
    )
    ap.add_argument("--child", nargs=3, metavar=("N", "SINKS", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], Path(args.child[2]))
        return
    chosen = [s.strip() for s in args.sinks.split(",") if s.strip()]
    if not chosen or any(s not in SINKS for s in chosen):
        raise SystemExit(f"--sinks: a comma-separated choice of {', '.join(SINKS)}")
    if not 0 < args.requests <= FLOWS - 100:
        raise SystemExit(f"--requests: 1-{FLOWS - 100}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.geoip import build_lab_db

    bp = _bench_proxy()
    n = args.requests
    print(
        f"instructions per request in the addon's hooks (requestheaders + request + response), "
        f"in process, callgrind, {n} requests"
    )
    with tempfile.TemporaryDirectory(prefix="ew-hooks-") as d:
        work = Path(d)
        build_lab_db(work / "lab.mmdb")
        (work / "policy.toml").write_text(bp.POLICY)
        first: int | None = None
        for sinks in chosen:
            with ThreadPoolExecutor(2) as pool:  # N and 0 side by side
                with_n, without = pool.map(lambda k, s=sinks: _count(k, s, work), (n, 0))
            per = (with_n - without) / n
            first = first or int(per)
            print(f"  {sinks:8} {per:12,.0f}   x{per / first:5.2f} of {chosen[0]}")


if __name__ == "__main__":
    main()
