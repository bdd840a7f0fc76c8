"""Python bytecodes per request in each of bench/proxy.py's proxies, by file or function.

    .venv/bin/python bench/bytecodes.py [--requests 200] [--scheme http]
        [--proxies bare,addon,master,cli] [--by file|function] [--top 25]

Callgrind (``bench/proxy.py --instructions``) counts a proxy's instructions but names
only C functions: for Python code, the interpreter. This names the Python. Each proxy
of ``bench/proxy.py`` (same options, lab GeoIP, policy, store and test server) runs
under a small runner that counts the bytecodes each code object executes, and its
calls, with ``sys.monitoring`` (Python 3.12). Counting starts after a warm-up of 100
requests and stops after ``--requests`` more on one keep-alive connection: a signal
switches it on and another switches it off and writes the counts.

Prints each proxy's bytecodes and calls per request, then for each pair (bare/addon,
master/cli, bare/cli, as far as both were run) the files or functions whose count
changed most. The counts repeat exactly from run to run; they leave out what C code
does (TLS, SQLite, sockets, the kernel). Counting slows the proxies down a lot:
~1 minute per proxy at 200 requests here.
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on sys.path: keep it from shadowing modules
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("bench")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.benchmod import bench_module  # noqa: E402

PROXIES = ("bare", "addon", "master", "cli")
PAIRS = (("bare", "addon"), ("master", "cli"), ("bare", "cli"))
WHAT = {
    "bare": "mitmdump",
    "addon": "mitmdump -s addons/egresswatch.py",
    "master": "the master egresswatch proxy embeds, without the addon",
    "cli": "egresswatch proxy",
}
#: real-time signals: mitmproxy takes SIGUSR1 and SIGUSR2 for its debug dumps
START, STOP = signal.SIGRTMIN + 3, signal.SIGRTMIN + 4
WARMUP = 100


def _bench_proxy() -> Any:
    """bench/proxy.py as a module: its proxies' command lines, test server and load."""
    return bench_module("proxy")


def counted(out: Path, argv: list[str]) -> None:
    """Run ``argv`` (a script, or ``-m MODULE ...``) in this process, counting on signals."""
    import runpy

    mon = sys.monitoring
    tool = mon.PROFILER_ID
    instructions: collections.Counter[Any] = collections.Counter()
    calls: collections.Counter[Any] = collections.Counter()

    def on_instruction(code: Any, offset: int) -> None:
        instructions[code] += 1

    def on_start(code: Any, offset: int) -> None:
        calls[code] += 1

    def start(*_: object) -> None:
        mon.use_tool_id(tool, "bench-bytecodes")
        mon.register_callback(tool, mon.events.INSTRUCTION, on_instruction)
        mon.register_callback(tool, mon.events.PY_START, on_start)
        mon.set_events(tool, mon.events.INSTRUCTION | mon.events.PY_START)

    def stop(*_: object) -> None:
        mon.set_events(tool, 0)
        mon.free_tool_id(tool)
        rows = [
            [code.co_filename, code.co_qualname, n, calls[code]] for code, n in instructions.items()
        ]
        tmp = out.with_suffix(".part")
        tmp.write_text(json.dumps(rows))
        tmp.rename(out)  # whole or absent: the parent waits for the name

    signal.signal(START, start)
    signal.signal(STOP, stop)
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


def _python_argv(cmd: list[str]) -> list[str]:
    """``cmd`` (a proxy's command line) as the runner's arguments: without the interpreter."""
    if cmd[0] == sys.executable:
        return cmd[1:]
    return cmd  # a console script (mitmdump): a Python file run_path can run


def measure(bp: Any, tmp: Path, name: str, n: int, scheme: str, sport: int, pki: Any) -> Path:
    """Counts of one proxy for ``n`` requests, written by its runner to a JSON file."""
    port = bp.free_port()
    out = tmp / f"{name}.json"
    cmd = bp.command(name, tmp, port, pki.ca_cert, ["egresswatch_store_process=false"])
    proc = subprocess.Popen(
        [sys.executable, __file__, "--counted", str(out), *_python_argv(cmd)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bp.wait_port(port, proc, timeout=120)
        ca = tmp / "mitm" / "mitmproxy-ca-cert.pem"
        body = bp.chat_body()
        asyncio.run(bp._count(port, scheme, sport, body, ca, WARMUP))
        proc.send_signal(START)
        time.sleep(0.5)  # the handler runs when the proxy's main thread next runs Python
        done = asyncio.run(bp._count(port, scheme, sport, body, ca, n))
        proc.send_signal(STOP)
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        bp._stop(proc, 60)
    if done.errors or len(done.latencies) != n:
        raise SystemExit(f"{name}: {done.errors} errors, {len(done.latencies)}/{n} answers")
    if not out.exists():
        raise SystemExit(f"{name}: the runner wrote no counts (did the proxy stop early?)")
    return out


def _key(filename: str, qualname: str, by: str) -> str:
    short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    if "/lib/python3" in short:  # the standard library
        short = "std:" + short.split("/lib/python3", 1)[1].partition("/")[2]
    return short if by == "file" else f"{short}:{qualname}"


def load(path: Path, by: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
    codes: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for filename, qualname, n, c in json.loads(path.read_text()):
        key = _key(filename, qualname, by)
        codes[key] += n
        calls[key] += c
    return codes, calls


def main() -> None:
    if sys.argv[1:2] == ["--counted"]:  # the runner: --counted OUT COMMAND...
        counted(Path(sys.argv[2]), sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="counted requests (1-2000)")
    ap.add_argument("--scheme", choices=("http", "https"), default="http")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="of " + ", ".join(PROXIES))
    ap.add_argument("--by", choices=("file", "function"), default="file")
    ap.add_argument("--top", type=int, default=25, help="rows per pair")
    args = ap.parse_args()
    names = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if not names or any(p not in PROXIES for p in names):
        raise SystemExit(f"--proxies: a comma-separated choice of {', '.join(PROXIES)}")
    if not 0 < args.requests <= 2000 or not 0 < args.top <= 500:
        raise SystemExit("bounds: --requests 1-2000, --top 1-500")

    bp = _bench_proxy()
    from helpers.geoip import build_lab_db

    n = args.requests
    with tempfile.TemporaryDirectory(prefix="ew-bytecodes-") as d:
        tmp = Path(d)
        pki = bp.make_pki(tmp / "pki", [bp.HOST], ["127.0.0.1"])
        build_lab_db(tmp / "lab.mmdb")
        (tmp / "policy.toml").write_text(bp.POLICY)
        http_port, https_port = bp.free_port(), bp.free_port()
        server = bp.start_server(pki, http_port, https_port)
        try:
            bp.wait_port(https_port, server)
            sport = http_port if args.scheme == "http" else https_port
            results = {}
            for name in names:
                print(f"counting {name} ...", file=sys.stderr, flush=True)
                results[name] = load(measure(bp, tmp, name, n, args.scheme, sport, pki), args.by)
        finally:
            server.terminate()
            server.wait(10)

    print(f"Python bytecodes per request, {args.scheme}, {n} requests, one keep-alive connection")
    for name, (codes, calls) in results.items():
        print(
            f"  {name:7} {sum(codes.values()) / n:10,.0f} bytecodes {sum(calls.values()) / n:8,.0f}"
            f" calls   {WHAT[name]}"
        )
    for base, ours in PAIRS:
        if base not in results or ours not in results:
            continue
        (a, ac), (b, bc) = results[base], results[ours]
        total_a, total_b = sum(a.values()) / n, sum(b.values()) / n
        print(
            f"\n{base} -> {ours}: {total_b - total_a:+,.0f} bytecodes a request "
            f"({(total_b - total_a) / total_a:+.1%}); by {args.by}, largest changes:"
        )
        print(f"  {'change':>9} {base:>9} {ours:>9} {'calls':>15}  {args.by}")
        keys = sorted(set(a) | set(b), key=lambda k: (-abs(b[k] - a[k]), k))
        for key in keys[: args.top]:
            print(
                f"  {(b[key] - a[key]) / n:+9,.0f} {a[key] / n:9,.0f} {b[key] / n:9,.0f}"
                f" {ac[key] / n:7.1f} {bc[key] / n:7.1f}  {key}"
            )


if __name__ == "__main__":
    main()
