"""Catalog matching speed: cached vs uncached, official vs lookalike vs unknown hosts.

    .venv/bin/python bench/catalog.py [--seconds 1]

The inspector calls ``Catalog.match`` once per name of every flow (Host, SNI,
DNS name), on the hot path of >= 20,000 decisions/s per core. Repeated hosts
must cost about as much as a dictionary lookup (goal: 1-2 us cached); the
first sighting of a host may cost more (normalisation, public-suffix lookup,
homograph skeleton). Prints each case's rate and its ratio to a plain dict
lookup measured in the same run, so numbers from different machines compare.
Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from egresswatch.catalog import Catalog, normalize_host

OFFICIAL = [
    "api.openai.com", "api.deepseek.com", "chat.deepseek.com", "cdn-lfs-us-1.huggingface.co",
    "bedrock-runtime.us-east-1.amazonaws.com", "myres.openai.azure.com", "o1.ingest.sentry.io",
    "registry.ollama.ai", "API.Anthropic.com:443", "router.huggingface.co",
]  # fmt: skip
LOOKALIKE = [
    "deepseek.chat", "kimi-k2.ai", "xn--nai-qdd8bm.com", "deepseek.com.evil.example",
    "0penai.com", "claude.io", "hollama.app", "deepseekagi.org",
]  # fmt: skip
UNKNOWN = [
    "pypi.org", "github.com", "files.pythonhosted.org", "example.com", "gemini.com",
    "www.wikipedia.org", "philanthropic.org", "s3.amazonaws.com",
]  # fmt: skip


def rate(fn: Callable[[str], object], hosts: list[str], seconds: float) -> float:
    """Calls per second of fn over hosts, for about `seconds` (bounded by time)."""
    calls = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for host in hosts:
            fn(host)
        calls += len(hosts)
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()

    t0 = time.perf_counter()
    cat = Catalog.load()
    load_ms = (time.perf_counter() - t0) * 1000
    baseline_dict = {h: h for h in OFFICIAL + LOOKALIKE + UNKNOWN}
    base = rate(baseline_dict.get, list(baseline_dict), args.seconds)

    def uncached(host: str) -> object:
        # Bypass the LRU: what a never-seen host costs.
        return cat._match_uncached(host)

    rows: list[tuple[str, float]] = [("dict.get (baseline)", base)]
    for label, hosts in (("official", OFFICIAL), ("lookalike", LOOKALIKE), ("unknown", UNKNOWN)):
        rows.append((f"match cached, {label}", rate(cat.match, hosts, args.seconds)))
        rows.append((f"match uncached, {label}", rate(uncached, hosts, args.seconds)))
    rows.append(("normalize_host", rate(normalize_host, OFFICIAL, args.seconds)))

    print(f"catalog: {len(cat.services)} services, loaded in {load_ms:.0f} ms")
    print(f"{'case':32} {'calls/s':>12} {'us/call':>9} {'x dict.get':>11}")
    for name, value in rows:
        print(f"{name:32} {value:12,.0f} {1e6 / value:9.2f} {base / value:11.1f}")


if __name__ == "__main__":
    main()
