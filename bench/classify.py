"""Classifier speed: one request's payload types and findings, next to json.loads of its body.

    .venv/bin/python bench/classify.py [--seconds 1]

The inspector's budget is >= 20,000 decisions/s per core, so ``classify`` should take about
25 µs or less on a typical 1 KiB chat request without findings. Absolute times depend on the
machine (and on its load), so each case is also printed as a ratio to ``json.loads`` of a
1 KiB JSON body measured in the same run: numbers from different machines compare. CPU time
of this process is measured (not wall time), so a busy machine disturbs less. The last rows
are pathological 256 KiB bodies: they must stay bounded (milliseconds), not fast.
Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import random
import sys
import time
from collections.abc import Callable
from functools import partial

from egresswatch.classify import classify
from egresswatch.model import Observation, Protocol, Sensor, Transport

KEY = "sk-proj-" + "a1B2c3D4" * 6


def _obs(
    method: str, host: str, path: str, body: bytes = b"", *headers: tuple[str, str]
) -> Observation:
    return Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr="198.51.100.20",
        dst_port=443,
        http_host=host,
        method=method,
        path=path,
        headers=(("host", host), *headers),
        body=body,
    )


def _chat(size: int, extra: str = "") -> bytes:
    filler = "Plan a three day trip to Rome with a budget of 1500 euros for 2 people. "
    text = (filler * (size // len(filler) + 1))[: size - 120 - len(extra)] + extra
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    ).encode()


JSON = ("content-type", "application/json")
AUTH = ("authorization", f"Bearer {KEY}")
CHAT_1K = _chat(1024)


def cases() -> list[tuple[str, Observation]]:
    rnd = random.Random(7)
    image = base64.b64encode(rnd.randbytes(150_000)).decode()
    return [
        ("chat 1 KiB, no findings", _obs("POST", "api.openai.com", "/v1/chat/completions",
                                          CHAT_1K, JSON, AUTH)),
        ("chat 4 KiB, no findings", _obs("POST", "api.openai.com", "/v1/chat/completions",
                                          _chat(4096), JSON, AUTH)),
        ("chat 1 KiB, e-mail + phone", _obs("POST", "api.deepseek.com", "/chat/completions",
                                             _chat(1024, " mail jane@example.com, +1 202 555 0143"),
                                             JSON, AUTH)),
        ("chat 1 KiB, gzip", _obs("POST", "api.openai.com", "/v1/chat/completions",
                                  gzip.compress(CHAT_1K), JSON, AUTH,
                                  ("content-encoding", "gzip"))),
        ("hub download (GET)", _obs("GET", "huggingface.co",
                                    "/Qwen/Qwen2.5-0.5B/resolve/main/config.json")),
        ("telemetry HEAD", _obs("HEAD", "huggingface.co", "/api/telemetry/gradio/launched",
                                b"", ("user-agent", "gradio/5; hf_hub/0.26; python/3.12"))),
        ("login form", _obs("POST", "app.example", "/login", b"username=ann&password=hunter2",
                            ("content-type", "application/x-www-form-urlencoded"))),
        ("256 KiB base64 image chat", _obs("POST", "api.openai.com", "/v1/chat/completions",
                                           json.dumps({"messages": [{"role": "user", "content": [
                                               {"type": "image_url", "image_url": {
                                                   "url": "data:image/png;base64," + image}}]}]}
                                                      ).encode(), JSON)),
        ("256 KiB of floats", _obs("POST", "vectors.example", "/upsert", json.dumps(
            {"vector": [round(rnd.random(), 10) for _ in range(19_000)]}).encode(), JSON)),
    ]  # fmt: skip


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """CPU seconds per call of fn, best of a few rounds within about `seconds`."""
    fn()  # warm caches and lazy imports
    best = float("inf")
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        n = 0
        started = time.process_time()
        while n < 50 or time.process_time() - started < 0.05:
            fn()
            n += 1
        best = min(best, (time.process_time() - started) / n)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU time per case")
    args = parser.parse_args()
    base = per_call(lambda: json.loads(CHAT_1K), args.seconds)
    print(f"python {sys.version.split()[0]}; json.loads of a 1 KiB body: {base * 1e6:.2f} µs")
    print(f"{'case':34}{'µs/call':>11}{'x json.loads':>14}{'calls/s':>12}")
    for name, obs in cases():
        t = per_call(partial(classify, obs, "chat-api"), args.seconds)
        print(f"{name:34}{t * 1e6:11.1f}{t / base:14.1f}{1 / t:12,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
