"""What the egresswatch addon costs mitmproxy: bare mitmdump vs mitmdump + full pipeline.

    .venv/bin/python bench/proxy.py [--seconds 5] [--rounds 2] [--connections 4] [--scheme http]
    .venv/bin/python bench/proxy.py --seconds 1 --rounds 40 --control \
        --variant nostore:egresswatch_db=none   # + a second bare proxy and an addon variant
    .venv/bin/python bench/proxy.py --instructions 300     # load-independent, needs valgrind
    .venv/bin/python bench/proxy.py --embedded   # + egresswatch proxy against a bare master

Everything on loopback: one test server (HTTP and HTTPS, its own CA), two mitmdump
processes started in the same run with the same options (lazy connections, upstream
verification against the test CA) — one bare, one with ``-s addons/egresswatch.py``
and the full pipeline (GeoIP database, catalog, classification, an enforce policy,
SQLite store, Prometheus metrics). A keep-alive load generator sends 1 KiB JSON chat
requests (``Host: api.openai.com``, so the catalog and classifier do real work) over
N connections through each proxy in alternating rounds, for HTTP (absolute-form) and
HTTPS (CONNECT + TLS with SNI). Prints requests/s, p50/p99 latency, the throughput
ratio and the added latency. Bounded: rounds x seconds x proxies x 2 schemes, plus
start-up and the one-connection runs.

``--embedded`` adds the path of ``egresswatch proxy``: the addon added directly to an
embedded mitmproxy master that runs only the mitmproxy addons a sensor needs
(``egresswatch/mitmmaster.py``: no script loader, no dumper, none of the addons that
rewrite, replay or save traffic; mitmproxy's root logger left at WARNING). It is
compared with bare mitmdump (what a user gets running ``egresswatch proxy`` instead of
mitmproxy) and with the same master without the addon (the addon's own share).

Goal (issue #4): >= 0.9x bare mitmdump's throughput with egresswatch's full pipeline,
p99 added latency < 2 ms.
"""

from __future__ import annotations

import sys

# `python bench/x.py` puts bench/ first on sys.path, where bench/inspect.py shadows
# the standard library's `inspect`: drop it.
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("bench")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import mitm  # noqa: E402
from helpers.servers import make_pki  # noqa: E402

HOST = "api.openai.com"
POLICY = """
mode = "enforce"
approved = ["EU", "US"]
require = ["address", "operator"]
outside = "block"
[unknown]
address = "block"
operator = "alert"
[[rules]]
name = "bench-loopback"
action = "allow"
host = ["api.openai.com"]
"""


def chat_body(size: int = 1024) -> bytes:
    """A chat-completions request of exactly ``size`` bytes."""
    doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}
    base = len(json.dumps(doc).encode())
    words = "Please summarise the quarterly lab report and list the open questions. "
    doc["messages"][0]["content"] = (words * (size // len(words) + 1))[: size - base]
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited ({proc.returncode}): {proc.args}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} not listening after {timeout}s")


def proc_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system, all threads) of a process and its live children,
    and the system part of them (the kernel's work for its syscalls).

    The children count: the addon's store writer runs in one (store/remote.py), on
    the proxy's pinned core, and its CPU is part of what the addon costs.
    """
    total, system = _own_cpu_split(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):  # ended meanwhile
                t, s = _own_cpu_split(int(child))
                total, system = total + t, system + s
    return total, system


def _own_cpu(pid: int) -> float:
    return _own_cpu_split(pid)[0]


def _own_cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after "(comm)": state is field 3, utime field 14 and stime field 15 (proc(5))
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick


def proc_switches(pid: int) -> int:
    """Voluntary context switches of all a process's threads (a thread woken to do work)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended between listing and reading
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    #: CPU seconds the proxy process used during the runs
    cpu: float = 0.0
    #: of which in the kernel (system time)
    sys: float = 0.0
    #: voluntary context switches of the proxy's threads during the runs
    switches: int = 0

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / len(self.latencies) if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    proxy_port: int,
    scheme: str,
    server_port: int,
    body: bytes,
    ca: Path,
    stop: float,
    result: Result,
    count: int | None = None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    if scheme == "https":
        writer.write(
            f"CONNECT 127.0.0.1:{server_port} HTTP/1.1\r\nHost: 127.0.0.1:{server_port}"
            "\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["http/1.1"])
        await writer.start_tls(ctx, server_hostname=HOST)
        target = "/v1/chat/completions"
    else:
        target = f"http://127.0.0.1:{server_port}/v1/chat/completions"
    request = (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: OpenAI/Python 1.51.0\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        while time.monotonic() < stop and (count is None or len(result.latencies) < count):
            t = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            if status != 200:
                result.errors += 1
                continue
            result.latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


async def load(
    proxy_port: int,
    scheme: str,
    server_port: int,
    body: bytes,
    ca: Path,
    seconds: float,
    connections: int,
) -> Result:
    result = Result()
    start = time.monotonic()
    stop = start + seconds
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _connection(proxy_port, scheme, server_port, body, ca, stop, result)
                for _ in range(connections)
            )
        ),
        timeout=seconds + 30,
    )
    result.seconds = time.monotonic() - start
    return result


def mitmdump(
    tmp: Path, port: int, pki_ca: Path, addon: bool, metrics: int, extra: list[str]
) -> list[str]:
    cmd = [
        str(Path(sys.executable).with_name("mitmdump")),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp / 'mitm'}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={pki_ca}",
        "--set",
        "connection_strategy=lazy",
    ]
    if addon:
        ours = {
            "egresswatch_policy": str(tmp / "policy.toml"),
            "egresswatch_country_db": str(tmp / "lab.mmdb"),
            "egresswatch_asn_db": str(tmp / "lab.mmdb"),
            "egresswatch_geoip_dir": str(tmp),
            "egresswatch_db": f"sqlite:///{tmp / 'bench.db'}",
            "egresswatch_metrics_listen": f"127.0.0.1:{metrics}",
            "egresswatch_process_lookup": "true",
        }
        # --addon-set replaces a default: mitmproxy refuses an option given twice
        ours.update(item.split("=", 1) for item in extra)  # type: ignore[misc]
        cmd += ["-s", str(ROOT / "addons/egresswatch.py")]
        for name, value in ours.items():
            cmd += ["--set", f"{name}={value}"]
    return cmd


def bare_master(tmp: Path, port: int, pki_ca: Path) -> list[str]:
    """A bare mitmproxy master as ``egresswatch proxy`` builds it, without the addon.

    ``egresswatch proxy`` embeds a master with only the mitmproxy addons a sensor needs
    (``egresswatch.mitmmaster``) and adds the addon to it directly; ``mitmdump -s``
    reaches a script's addon through the script loader, the script and its module on
    every event (~113,000 instructions a request for an empty script,
    docs/performance.md). This is the baseline of the addon's own share on that path:
    the same master and options, no addon.
    """
    return [sys.executable, __file__, "--bare-master", str(port), str(tmp / "mitm"), str(pki_ca)]


def egresswatch_proxy(
    tmp: Path, port: int, pki_ca: Path, metrics: int, db: Path, extra: list[str]
) -> list[str]:
    """``egresswatch proxy`` with the bench's policy, lab GeoIP and store (the CLI path)."""
    cmd = [
        sys.executable,
        "-m",
        "egresswatch",
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--policy",
        str(tmp / "policy.toml"),
        "--country-db",
        str(tmp / "lab.mmdb"),
        "--asn-db",
        str(tmp / "lab.mmdb"),
        "--geoip-dir",
        str(tmp),
        "--db",
        f"sqlite:///{db}",
        "--metrics-listen",
        f"127.0.0.1:{metrics}",
        "--confdir",
        str(tmp / "mitm"),
        "--upstream-ca",
        str(pki_ca),
        "--set",
        "connection_strategy=lazy",
    ]
    for item in extra:
        name, _, value = item.partition("=")
        # The CLI builds its inspector and sinks from its own flags before mitmproxy's
        # options exist: an option they are built from goes as that flag (the last of a
        # repeated flag wins), one the addon reads while running goes as --set.
        if name in _CLI_FLAGS:
            cmd += _CLI_FLAGS[name](value)
        elif name in _CLI_BUILT:
            raise SystemExit(
                f"--addon-set {name}: egresswatch proxy takes it as a flag this bench does "
                "not pass; measure it with --variant (mitmdump) instead"
            )
        else:
            cmd += ["--set", item]
    return cmd


#: egresswatch_* options -> the egresswatch proxy flags that set the same thing
_CLI_FLAGS: dict[str, Any] = {
    "egresswatch_store_process": lambda v: ["--store-process", v],
    "egresswatch_db": lambda v: ["--no-store"] if v == "none" else ["--db", v],
    "egresswatch_metrics_listen": lambda v: ["--metrics-listen", v] if v else ["--no-metrics"],
    "egresswatch_body_limit": lambda v: ["--body-limit", v],
}
#: options the CLI builds its parts from, with flags the bench has no mapping for
_CLI_BUILT = {
    "egresswatch_policy",
    "egresswatch_mode",
    "egresswatch_catalog",
    "egresswatch_geoip_dir",
    "egresswatch_country_db",
    "egresswatch_asn_db",
    "egresswatch_overrides",
    "egresswatch_sensor_name",
}


def _run_bare_master(port: int, confdir: str, pki_ca: str) -> None:
    """The child of bare_master(): runs until SIGTERM or SIGINT."""
    import signal

    from mitmproxy import options

    from egresswatch.mitmmaster import sensor_master

    async def run() -> None:
        master = sensor_master(options.Options())
        master.options.update(
            listen_host="127.0.0.1",
            listen_port=port,
            confdir=confdir,
            ssl_verify_upstream_trusted_ca=pki_ca,
            connection_strategy="lazy",
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        await master.run()

    asyncio.run(run())


class _NullSink:
    def record(self, decision: object) -> None:
        pass

    def flow_closed(self, event: object) -> None:
        pass

    def close(self) -> None:
        pass


async def _drive(addon: Any, flows: list[Any], resp: Any) -> float:
    t = time.perf_counter()
    for f in flows:
        await mitm.hook(addon.requestheaders(f))
        addon.request(f)
        f.response = resp
        addon.response(f)
    return time.perf_counter() - t


def lab_settings(tmp: Path, db_url: str, **extra: Any) -> Any:
    """The addon's settings in process: the lab GeoIP database and policy in ``tmp``."""
    from egresswatch import runtime

    return runtime.Settings(
        policy=tmp / "policy.toml",
        country_db=tmp / "lab.mmdb",
        asn_db=tmp / "lab.mmdb",
        geoip_dir=tmp,
        db_url=db_url,
        metrics_listen=None,
        **extra,
    )


def hook_cost(tmp: Path, n: int) -> None:
    """CPU per request spent in the addon's hooks, in process (no sockets, real pipeline)."""
    from mitmproxy.test import tflow
    from prometheus_client import CollectorRegistry

    from egresswatch import runtime
    from egresswatch.metrics import Metrics
    from egresswatch.proxy import EgressWatch

    settings = lab_settings(tmp, f"sqlite:///{tmp / 'hooks.db'}")
    inspector = runtime.build_inspector(settings)
    body = chat_body()
    variants = {
        "inspector only (null sink)": lambda: _NullSink(),
        "+ metrics": lambda: Metrics(CollectorRegistry(), sensor_name="bench"),
        "+ metrics, store, alerts": lambda: runtime.build_sinks(
            settings, CollectorRegistry(), inspector
        ),
    }
    print(
        f"addon hook cost per request (requestheaders + request + response, {n} requests, "
        f"in process; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)"
    )
    for label, make in variants.items():
        sinks = make()
        addon = EgressWatch(inspector, sinks)  # type: ignore[arg-type]
        tctx = mitm.context(addon)
        tctx.configure(addon, egresswatch_process_lookup=False)
        flows = []
        for _ in range(n):
            f = mitm.http_flow(host=HOST, addr="198.51.100.20", body=body)
            flows.append(f)
        resp = tflow.tresp()

        writer = getattr(sinks, "writer", None)
        child = getattr(writer, "pid", None)  # the store's writer process (store/remote.py)
        child_cpu = _own_cpu(child) if child else 0.0
        cpu = time.process_time()
        elapsed = tctx.master.event_loop.run_until_complete(_drive(addon, flows, resp))
        if child:
            writer.flush()  # type: ignore[union-attr]
            child_cpu = _own_cpu(child) - child_cpu
        sinks.close()  # joins the store writer: its rows are in the CPU figure
        cpu = time.process_time() - cpu
        print(
            f"  {label:30} {elapsed / n * 1e6:8.1f} us/request wall, "
            f"{cpu / n * 1e6:6.1f} us CPU (all threads, incl. flush)"
            + (f" + {child_cpu / n * 1e6:.1f} us in the store process" if child else "")
        )


def start_server(pki: Any, http_port: int, https_port: int) -> subprocess.Popen[bytes]:
    """The test server (tests/helpers/servers.py) on loopback, HTTP and HTTPS."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/helpers/servers.py"),
            "--bind",
            "127.0.0.1",
            "--http",
            str(http_port),
            "--https",
            str(https_port),
            "--cert",
            str(pki.cert),
            "--key",
            str(pki.key),
            "--log",
            "/dev/null",
        ],
        stdout=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate, wait up to ``timeout`` seconds, then kill."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _callgrind_total(path: Path) -> int:
    """The instruction total of a callgrind output file (its ``totals:`` line).

    Not ``summary:``, which callgrind writes as 0 when counting started switched off.
    """
    totals = [
        int(line.split()[1])
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("totals:")
    ]
    if not totals:
        raise SystemExit(f"no totals in {path}: did callgrind finish?")
    return sum(totals)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _callgrind_toggle(pids: list[int], on: bool) -> None:
    for pid in pids:
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )


def command(name: str, tmp: Path, port: int, pki_ca: Path, extra: list[str]) -> list[str]:
    """The command line of one of the bench's proxies, by its role.

    ``bare`` and ``control``: mitmdump; ``addon``: mitmdump -s addons/egresswatch.py;
    ``master``: the bare embedded master; ``cli``: egresswatch proxy. ``extra``:
    egresswatch_* options for the proxies with the addon.
    """
    if name in ("bare", "control"):
        return mitmdump(tmp, port, pki_ca, False, free_port(), [])
    if name == "master":
        return bare_master(tmp, port, pki_ca)
    if name == "cli":
        return egresswatch_proxy(tmp, port, pki_ca, free_port(), tmp / "cli.db", extra)
    return mitmdump(tmp, port, pki_ca, True, free_port(), extra)


#: (baseline, with egresswatch): mitmdump's script path, egresswatch proxy's embedded one
#: against its own master without the addon, and egresswatch proxy against bare mitmdump
PAIRS = (("bare", "addon"), ("master", "cli"), ("bare", "cli"))


def instructions(
    tmp: Path, pki: Any, n: int, schemes: list[str], extra: list[str], embedded: bool = False
) -> None:
    """Instructions per request through bare and addon mitmdump, counted by callgrind.

    Load-independent (the box's speed changes nothing here): each mitmdump runs under
    ``valgrind --tool=callgrind`` with counting off; after a warm-up, counting is
    switched on in the proxy and in its children (the addon's store process), ``n``
    requests go through one keep-alive connection, and counting is switched off.
    Kernel time is not counted, nor anything the CPU's caches add.

    The store process's figure is an upper bound: under callgrind the proxy passes
    ~10 requests/s, so the store's batches (every 0.5 s) hold a few decisions and
    each batch's commit and acknowledgement is shared by few. Fed directly, the
    store process costs ~105,000 instructions a decision plus ~360,000 a batch
    (docs/performance.md): ~110,000 a decision at 100 a batch.
    """
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    http_port, https_port = free_port(), free_port()
    server = start_server(pki, http_port, https_port)
    body = chat_body()
    pairs = PAIRS if embedded else PAIRS[:1]
    #: (scheme, proxy) -> (own, children) instructions per request: each proxy runs once
    counted: dict[tuple[str, str], tuple[float, float]] = {}
    print(f"instructions per request (callgrind), {n} requests, one keep-alive connection")
    print(
        f"{'scheme':16} {'bare':>12} {'addon':>12} {'store proc':>12} {'added':>8} {'ratio':>7}"
        f" {'proxy process only':>19}"
    )
    try:
        wait_port(https_port, server)
        for scheme, (base, ours) in [(s, p) for p in pairs for s in schemes]:
            sport = http_port if scheme == "http" else https_port
            for name in (base, ours):
                if (scheme, name) in counted:
                    continue
                port = free_port()
                out = tmp / f"callgrind.{scheme}.{name}"
                out.mkdir()
                cmd = [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    "--trace-children=yes",
                    f"--callgrind-out-file={out}/%p",
                    *command(name, tmp, port, pki.ca_cert, extra),
                ]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_port(port, proc, timeout=600)
                    ca = tmp / "mitm" / "mitmproxy-ca-cert.pem"
                    asyncio.run(_count(port, scheme, sport, body, ca, 40))
                    pids = [proc.pid, *_children(proc.pid)]
                    _callgrind_toggle(pids, True)
                    done = asyncio.run(_count(port, scheme, sport, body, ca, n))
                    _callgrind_toggle(pids, False)
                finally:
                    _stop(proc, 300)
                for pid in pids[1:]:  # a child writes its counts when it exits
                    deadline = time.monotonic() + 300
                    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                        time.sleep(0.2)
                if done.errors or len(done.latencies) != n:
                    raise SystemExit(f"{scheme} {name}: {done.errors} errors")
                own = _callgrind_total(out / str(proc.pid))
                others = sum(_callgrind_total(f) for f in out.iterdir() if f.name != str(proc.pid))
                counted[scheme, name] = (own / n, others / n)
            bare = sum(counted[scheme, base])
            addon_own, child = counted[scheme, ours]
            added = addon_own + child - bare
            label = scheme if ours == "addon" else f"{scheme}/{base}/cli"
            print(
                f"{label:16} {bare:12,.0f} {addon_own:12,.0f} {child:12,.0f} "
                f"{added / bare:+8.1%} {bare / (addon_own + child):6.3f}x "
                f"{(addon_own - bare) / bare:+10.1%} {bare / addon_own:6.3f}x"
            )
        print(
            "ratio: bare/(addon + store process), the throughput ratio of one core doing"
            " both;\nthe store process's count is an upper bound at callgrind's pace"
            " (see instructions() in this file)"
        )
        if embedded:
            print(
                "/master/cli: egresswatch proxy (the addon added to a master with the mitmproxy"
                " addons a sensor\nneeds) against the same master without it; /bare/cli:"
                " egresswatch proxy against bare mitmdump;\nthe other rows: mitmdump -s"
                " addons/egresswatch.py against mitmdump"
            )
    finally:
        server.terminate()
        server.wait(10)


async def _count(
    proxy_port: int, scheme: str, server_port: int, body: bytes, ca: Path, n: int
) -> Result:
    result = Result()
    stop = time.monotonic() + 600
    await asyncio.wait_for(
        _connection(proxy_port, scheme, server_port, body, ca, stop, result, n), timeout=900
    )
    return result


def _variant(text: str) -> tuple[str, list[str]]:
    """``"process:egresswatch_store_process=true"`` -> (name, [option, ...])."""
    name, sep, opts = text.partition(":")
    items = [o.strip() for o in opts.split(",") if o.strip()]
    if not sep or not name or name in ("bare", "addon", "control", "master", "cli") or not items:
        raise SystemExit(f"--variant {text!r}: use NAME:OPT=VALUE[,OPT=VALUE]")
    if any("=" not in o or not o.startswith("egresswatch_") for o in items):
        raise SystemExit(f"--variant {text!r}: options are egresswatch_NAME=VALUE")
    return name, items


def median_interval(ratios: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of per-round ratios (fixed seed: repeatable).

    On a shared VM single rounds range over ±30%; the interval says how far the median
    itself could move, so a figure near the goal reads as "not shown either way".
    """
    import random

    rng = random.Random(0)
    n = len(ratios)
    medians = sorted(statistics.median(rng.choices(ratios, k=n)) for _ in range(max(1, resamples)))
    return medians[int(0.025 * len(medians))], medians[int(0.975 * len(medians)) - 1]


def cpu_split(pin: bool) -> tuple[set[int], set[int]]:
    """(CPUs for the proxies, CPUs for the load generator and server); empty: no pinning.

    On a shared box the scheduler moves three busy processes across the cores and
    the proxy's CPU per request swings by 10-15% between rounds. With the proxy
    alone on one core (all its threads, the store writer's too), its CPU per request
    is the cost being compared, and throughput is that core's.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return set(), set()
    return {cpus[-1]}, set(cpus[:-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating bare/addon rounds")
    ap.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    ap.add_argument("--hooks-only", action="store_true", help="only the in-process hook cost")
    ap.add_argument(
        "--scheme",
        choices=("http", "https", "both"),
        default="both",
        help="plain HTTP (absolute-form), HTTPS (CONNECT + TLS), or both (default)",
    )
    ap.add_argument(
        "--addon-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra option for every proxy with the addon (egresswatch_db=none ...); "
        "egresswatch proxy (--embedded) gets the matching flag where the option has one",
    )
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the proxies to their own core (default: pinned when >= 2 CPUs)",
    )
    ap.add_argument(
        "--control",
        action="store_true",
        help="also run a second bare mitmdump and print bare/control: the noise floor",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:OPT=VALUE[,OPT=VALUE]",
        help="also run an addon mitmdump with these options in the same rounds, e.g. "
        "nostore:egresswatch_db=none or process:egresswatch_store_process=true (pinned to "
        "one core, the addon's default writes from a thread)",
    )
    ap.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="instead: count instructions per request under callgrind, bare vs addon, N "
        "requests (1-2000; ~4 min for 300); needs valgrind",
    )
    ap.add_argument(
        "--embedded",
        action="store_true",
        help="also compare egresswatch proxy (the addon added to an embedded mitmproxy "
        "master with the addons a sensor needs) with bare mitmdump and with the same master "
        "bare, in the same rounds (or with --instructions)",
    )
    ap.add_argument("--bare-master", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_master:
        _run_bare_master(int(args.bare_master[0]), args.bare_master[1], args.bare_master[2])
        return
    if not 0 < args.seconds <= 60 or not 0 < args.rounds <= 40 or not 0 < args.connections <= 64:
        raise SystemExit("bounds: seconds 0-60, rounds 1-40, connections 1-64")

    from helpers.geoip import build_lab_db

    body = chat_body()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ew-bench-") as d:
        tmp = Path(d)
        pki = make_pki(tmp / "pki", [HOST], ["127.0.0.1"])
        build_lab_db(tmp / "lab.mmdb")
        (tmp / "policy.toml").write_text(POLICY)
        if args.instructions is not None:
            if not 0 < args.instructions <= 2000:
                raise SystemExit("bounds: --instructions 1-2000")
            schemes = ["http", "https"] if args.scheme == "both" else [args.scheme]
            instructions(tmp, pki, args.instructions, schemes, args.addon_set, args.embedded)
            return
        hook_cost(tmp, 3000)
        if args.hooks_only:
            return
        http_port, https_port = free_port(), free_port()
        proxy_cpus, other_cpus = cpu_split(args.pin)
        if other_cpus:
            os.sched_setaffinity(0, other_cpus)  # the load generator; the server inherits it
        try:
            server = start_server(pki, http_port, https_port)
            procs.append(server)
            wait_port(https_port, server)
            variants = dict(_variant(v) for v in args.variant)
            names = [
                "bare",
                "addon",
                *(["control"] if args.control else []),
                *variants,
                *(["master", "cli"] if args.embedded else []),
            ]
            ports = {name: free_port() for name in names}
            pids: dict[str, int] = {}
            for name, port in ports.items():
                p = subprocess.Popen(
                    command(
                        name,
                        tmp,
                        port,
                        pki.ca_cert,
                        # a variant's store is its own: no two proxies share a SQLite file
                        [
                            *(
                                [f"egresswatch_db=sqlite:///{tmp / name}.db"]
                                if name in variants
                                else []
                            ),
                            *args.addon_set,
                            *variants.get(name, []),
                        ],
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                procs.append(p)
                if proxy_cpus:
                    # before mitmdump has started any thread: they all inherit it
                    os.sched_setaffinity(p.pid, proxy_cpus)
                pids[name] = p.pid
                wait_port(port, p)
            ca = tmp / "mitm" / "mitmproxy-ca-cert.pem"
            print(
                f"mitmproxy bare vs + egresswatch (full pipeline), {args.connections} "
                f"keep-alive connections, {len(body)} B JSON chat bodies, "
                f"{args.rounds} x {args.seconds:g} s per cell, loopback"
            )
            if proxy_cpus:
                print(
                    f"proxies pinned to CPU {sorted(proxy_cpus)}, load generator and server "
                    f"to CPU {sorted(other_cpus)} (--no-pin to let them float)"
                )
            header = (
                f"{'scheme':6} {'proxy':6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
                f" {'proxy CPU us/req':>17} {'of it sys':>9} {'wakeups/req':>12}"
            )
            print(header)
            schemes = (("http", http_port), ("https", https_port))
            for scheme, sport in [x for x in schemes if args.scheme in (x[0], "both")]:
                merged = {name: Result() for name in names}
                # warm-up: certificates, connection pools, caches
                for name in merged:
                    asyncio.run(load(ports[name], scheme, sport, body, ca, 1.0, 2))
                round_ratios: list[float] = []
                #: baseline/name CPU per request, per round, for the control, the variants
                #: and the embedded pair (egresswatch proxy against the bare master)
                other_ratios: dict[str, list[float]] = {n: [] for n in names[2:]}
                baseline = {n: "master" if n == "cli" else "bare" for n in names}
                if args.embedded:  # egresswatch proxy against bare mitmdump, too
                    other_ratios["cli/bare"] = []
                    baseline["cli/bare"] = "bare"
                for i in range(args.rounds):
                    per_request: dict[str, float] = {}
                    # each round starts with another proxy: a box that speeds up or slows
                    # down during a round favours none of them over the run
                    for name in names[i % len(names) :] + names[: i % len(names)]:
                        cpu, sys_cpu = proc_cpu(pids[name])
                        switches = proc_switches(pids[name])
                        r = asyncio.run(
                            load(
                                ports[name], scheme, sport, body, ca, args.seconds, args.connections
                            )
                        )
                        m = merged[name]
                        total, sys_after = proc_cpu(pids[name])
                        used = total - cpu
                        per_request[name] = used / max(1, len(r.latencies))
                        m.cpu += used
                        m.sys += sys_after - sys_cpu
                        m.switches += proc_switches(pids[name]) - switches
                        m.latencies += r.latencies
                        m.errors += r.errors
                        m.seconds += r.seconds
                    if per_request["addon"] > 0:
                        round_ratios.append(per_request["bare"] / per_request["addon"])
                    for other, ratios in other_ratios.items():
                        ours = other.partition("/")[0]
                        if per_request[ours] > 0:
                            ratios.append(per_request[baseline[other]] / per_request[ours])
                for name, r in merged.items():
                    print(
                        f"{scheme:6} {name:6} {r.rps:8.0f} {r.pct(50) * 1e3:8.2f} "
                        f"{r.pct(99) * 1e3:8.2f} {r.errors:6d} {r.cpu_per_request * 1e6:17.0f}"
                        f" {r.sys / max(1, len(r.latencies)) * 1e6:9.0f}"
                        f" {r.switches / max(1, len(r.latencies)):12.2f}"
                    )
                bare, add = merged["bare"], merged["addon"]
                ratio = add.rps / bare.rps if bare.rps else float("nan")
                print(
                    f"{scheme:6} ratio  {ratio:8.2f}x  added p50 "
                    f"{(add.pct(50) - bare.pct(50)) * 1e3:+.2f} ms, added p99 "
                    f"{(add.pct(99) - bare.pct(99)) * 1e3:+.2f} ms   "
                    f"(goal: >= 0.90x, p99 < +2 ms)"
                )
                # Throughput on a shared box follows the load; CPU per request does not: the
                # ratio bare/addon CPU per request is the throughput ratio one core would give.
                cpu_ratio = bare.cpu_per_request / add.cpu_per_request
                print(
                    f"{scheme:6} CPU    {cpu_ratio:8.2f}x  (bare/addon proxy CPU per request: "
                    f"the throughput ratio when the proxy is CPU-bound; load average "
                    f"{os.getloadavg()[0]:.2f})"
                )
                if round_ratios:
                    # each round compares two runs a few seconds apart: its ratio is less
                    # exposed to drift in the box's load than the totals are
                    low, high = median_interval(round_ratios)
                    print(
                        f"{scheme:6} CPU    {statistics.median(round_ratios):8.2f}x  median of "
                        f"{len(round_ratios)} rounds (95% interval {low:.2f}-{high:.2f}; range "
                        f"{min(round_ratios):.2f}-{max(round_ratios):.2f})"
                    )
                for other, ratios in other_ratios.items():
                    if not ratios:
                        continue
                    what = {
                        "control": "a second bare mitmdump: the noise floor of the ratios above",
                        "master": "the mitmproxy master egresswatch proxy embeds, no addon",
                        "cli": "egresswatch proxy against that master: the addon's own share",
                        "cli/bare": "egresswatch proxy against bare mitmdump (goal: >= 0.90x)",
                    }.get(other) or "addon with " + " ".join(variants[other])
                    ours = other.partition("/")[0]
                    base = merged[baseline[other]]
                    low, high = median_interval(ratios)
                    label = {"control": "A/A", "cli/bare": "cli"}.get(other, other[:6])
                    print(
                        f"{scheme:6} {label:6} "
                        f"{statistics.median(ratios):8.2f}x  "
                        f"{baseline[other]}/{ours} CPU per request, median of {len(ratios)} "
                        f"rounds (95% interval {low:.2f}-{high:.2f}; range "
                        f"{min(ratios):.2f}-{max(ratios):.2f}; totals "
                        f"{base.cpu_per_request / merged[ours].cpu_per_request:.2f}x): {what}"
                    )
                # Latency without queueing: one connection, one request at a time. Under the
                # saturating load above, a request waits behind the others, so p99 there
                # grows with any per-request cost (2 ms at 20 ms is 10%); this is the time the
                # addon adds to a request the proxy has capacity for.
                for base_name, ours in PAIRS if args.embedded else PAIRS[:1]:
                    lone = {base_name: Result(), ours: Result()}
                    for i in range(args.rounds):
                        for name in (base_name, ours) if i % 2 == 0 else (ours, base_name):
                            r = asyncio.run(
                                load(ports[name], scheme, sport, body, ca, args.seconds / 2, 1)
                            )
                            lone[name].latencies += r.latencies
                            lone[name].errors += r.errors
                            lone[name].seconds += r.seconds
                    b1, a1 = lone[base_name], lone[ours]
                    print(
                        f"{scheme:6} 1 conn  {base_name} p50 {b1.pct(50) * 1e3:.2f} p99 "
                        f"{b1.pct(99) * 1e3:.2f} ms, {ours} p50 {a1.pct(50) * 1e3:.2f} p99 "
                        f"{a1.pct(99) * 1e3:.2f} ms: added p50 "
                        f"{(a1.pct(50) - b1.pct(50)) * 1e3:+.2f} ms, p99 "
                        f"{(a1.pct(99) - b1.pct(99)) * 1e3:+.2f} ms  ({len(b1.latencies)}/"
                        f"{len(a1.latencies)} requests, errors {b1.errors}/{a1.errors})"
                    )
        finally:
            for p in reversed(procs):
                _stop(p, 10)
        print(f"decisions recorded by the addon's store: {_recorded(tmp / 'bench.db')}")
        # the other proxies with the addon write their own files (variants, egresswatch proxy)
        others = {
            name: _recorded(tmp / f"{name}.db")
            for name in [*dict(_variant(v) for v in args.variant), "cli"]
            if (tmp / f"{name}.db").exists()
        }
        if others:
            print(
                "decisions recorded by the other stores: "
                + ", ".join(f"{name} {rows}" for name, rows in others.items())
            )


def _recorded(db: Path) -> int:
    """Rows in a store's ``flows`` table; 0 when the file was never written."""
    if not db.exists():
        return 0
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        return int(c.execute("select count(*) from flows").fetchone()[0])


if __name__ == "__main__":
    main()
