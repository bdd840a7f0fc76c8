"""A fake inspector for sniffer tests, built on the real model types (no mocks)."""

from __future__ import annotations

from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    GeoAnswer,
    GeoSource,
    Mode,
    Observation,
    PayloadType,
    Verdict,
)


def decision_for(obs: Observation, action: Action = Action.ALLOW) -> Decision:
    """A Decision that allows (or ``action``s) any observation, naming its first name."""
    names = obs.names
    assessment = Assessment(
        observation=obs,
        host=names[0] if names else None,
        geo=GeoAnswer(country=None, source=GeoSource.NONE),
        service=None,
        payload_types=(PayloadType.OTHER,),
        findings=(),
    )
    return Decision(assessment, Verdict(action, "test", "test verdict", Mode.MONITOR))


class RecordingInspector:
    """Keeps every observation it judged; returns ``decision_for`` each."""

    def __init__(self, action: Action = Action.ALLOW) -> None:
        self.seen: list[Observation] = []
        self.action = action

    def inspect(self, obs: Observation) -> Decision:
        self.seen.append(obs)
        return decision_for(obs, self.action)
