"""Policy.decide throughput: shipped policies and a long rule list, side by side.

    .venv/bin/python bench/policy.py [--seconds 2]

The whole inspector must make >= 20,000 decisions per second on one core, so
the policy gets a small share of that 50 µs budget. Prints decisions per
second for a do-nothing baseline (the cost of the loop and the call), the
shipped default and example policies, and a 200-rule policy where no rule
matches (the worst case: every rule is tried), with ratios to the baseline and
the share of the inspector's per-decision budget. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from egresswatch.model import (
    Action,
    Assessment,
    Finding,
    FindingKind,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Mode,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Service,
    ServiceMatch,
    Transport,
    Verdict,
)
from egresswatch.policy import Policy

BUDGET_PER_SECOND = 20_000  # inspector goal, decisions per second per core


def _service(id_: str, name: str, operator: str, cc: str, category: str) -> Service:
    return Service(id_, name, operator, cc, category, (f"{id_}.example",))


_DEEPSEEK = _service("deepseek", "DeepSeek API", "Hangzhou DeepSeek AI", "CN", "chat-api")
_OPENAI = _service("openai", "OpenAI API", "OpenAI", "US", "chat-api")
_SENTRY = _service("sentry", "Sentry", "Functional Software", "US", "telemetry")


def _assess(
    host: str | None,
    addr: str,
    cc: str | None,
    svc: Service | None,
    *,
    kind: MatchKind = MatchKind.OFFICIAL,
    payload: tuple[PayloadType, ...] = (PayloadType.CHAT_PROMPT,),
    findings: tuple[Finding, ...] = (),
    source: GeoSource = GeoSource.MAXMIND,
) -> Assessment:
    obs = Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr=addr,
        dst_port=443,
        http_host=host,
        client_addr="127.0.0.1",
        client_app="OpenAI/Python 1.40",
    )
    match = ServiceMatch(svc, kind, host or "", svc.domains[0]) if svc else None
    flags = ("lookalike",) if kind is MatchKind.LOOKALIKE else ()
    return Assessment(obs, host, GeoAnswer(cc, source), match, payload, findings, flags)


def mix() -> list[Assessment]:
    """A gateway's mix: approved APIs, a CN operator, secrets, lookalikes, plain web, local."""
    key = Finding(FindingKind.API_KEY, "sk-...abcd", "header:authorization", "openai")
    email = Finding(FindingKind.EMAIL, "j***@example.com", "body")
    return [
        _assess("api.openai.com", "198.51.100.20", "US", _OPENAI, findings=(key,)),
        _assess("api.openai.com", "198.51.100.20", "US", _OPENAI),
        _assess("api.deepseek.com", "203.0.113.10", "CN", _DEEPSEEK, findings=(email, key)),
        _assess("deepseek.chat", "198.51.100.8", "US", _DEEPSEEK, kind=MatchKind.LOOKALIKE),
        _assess(
            "o1.ingest.sentry.io", "198.51.100.32", "US", _SENTRY, payload=(PayloadType.TELEMETRY,)
        ),
        _assess("pypi.org", "198.51.100.40", "US", None, payload=(PayloadType.OTHER,)),
        _assess("api.openai.com", "192.0.2.5", None, _OPENAI),
        _assess("localhost", "127.0.0.1", None, None, source=GeoSource.LOCAL),
    ]


def long_policy(rules: int) -> Policy:
    """`rules` rules that never match the mix (each tries several matchers first)."""
    parts = ['mode = "enforce"\napproved = ["EU", "US"]\n']
    for i in range(rules):
        parts.append(
            f'[[rules]]\nname = "r{i}"\naction = "block"\n'
            f'address_country = ["US", "DE"]\npayload = ["chat-prompt", "other", "telemetry"]\n'
            f'host = ["*.never{i}.example", "x{i}.example"]\n'
        )
    return Policy.from_text("".join(parts), source=f"<{rules} rules>")


class _Fixed:
    """Baseline: a PolicyLike that does nothing but return one verdict."""

    mode = Mode.ENFORCE
    _verdict = Verdict(Action.ALLOW, "default", "baseline", Mode.ENFORCE)

    def decide(self, assessment: Assessment) -> Verdict:
        return self._verdict


def rate(fn: Callable[[], int], seconds: float, rounds: int = 15) -> float:
    """Best operations per CPU second of fn (which returns how many it did), over rounds.

    CPU time (``time.process_time``) and the best round, because this machine is shared:
    wall time and slower rounds measure the neighbours, not the code.
    """
    fn()  # warm up
    best = 0.0
    per_round = seconds / rounds
    for _ in range(rounds):
        done, started = 0, time.process_time()
        deadline = time.perf_counter() + per_round
        while time.perf_counter() < deadline:
            done += fn()
        used = time.process_time() - started
        if used > 0:
            best = max(best, done / used)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    assessments = mix()
    contenders: list[tuple[str, object]] = [
        ("baseline (fixed verdict)", _Fixed()),
        ("shipped default (1 rule)", Policy.default()),
        ("shipped example (5 rules)", Policy.example()),
        ("20 rules, none match", long_policy(20)),
        ("200 rules, none match", long_policy(200)),
    ]
    results: list[tuple[str, float]] = []
    for label, policy in contenders:
        decide = policy.decide  # type: ignore[attr-defined]

        def run(decide: Callable[[Assessment], Verdict] = decide) -> int:
            for a in assessments:
                decide(a)
            return len(assessments)

        results.append((label, rate(run, args.seconds)))

    base = results[0][1]
    print(
        f"python {sys.version.split()[0]}, one thread, {len(assessments)} assessment shapes, "
        "per CPU second (best of 15 rounds)"
    )
    print(
        f"{'policy':<30}{'decisions/s':>14}{'µs each':>10}{'vs baseline':>13}{'budget share':>14}"
    )
    for label, per_second in results:
        micro = 1e6 / per_second
        share = micro / (1e6 / BUDGET_PER_SECOND)
        print(
            f"{label:<30}{per_second:>14,.0f}{micro:>10.2f}{per_second / base:>12.3f}x"
            f"{share:>13.1%}"
        )
    print(
        f"budget: {1e6 / BUDGET_PER_SECOND:.0f} µs per decision for the whole inspector "
        f"({BUDGET_PER_SECOND:,}/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
