"""The quick ``__init__`` of the hot model classes behaves like the one dataclasses writes."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from egresswatch import model
from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    Finding,
    FindingKind,
    FlowClosed,
    GeoAnswer,
    GeoSource,
    Mode,
    Observation,
    Protocol,
    Sensor,
    Transport,
    Verdict,
)

QUICK = [Observation, Finding, Assessment, Verdict, Decision, FlowClosed]


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_signature_matches_the_fields(cls: type[Any]) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        if f.default is not dataclasses.MISSING:
            assert p.default is f.default
        elif f.default_factory is not dataclasses.MISSING:
            assert repr(p.default) == "<factory>"
        else:
            assert p.default is inspect.Parameter.empty
    assert cls.__init__.__qualname__ == f"{cls.__name__}.__init__"


def _obs(**kw: Any) -> Observation:
    return Observation(Sensor.PROXY, Transport.TCP, Protocol.HTTPS, "198.51.100.1", 443, **kw)


def test_factories_run_per_instance_and_explicit_values_win() -> None:
    a, b = _obs(), _obs()
    assert a.flow_id != b.flow_id and len(a.flow_id) == 32
    assert a.time > 0
    c = _obs(flow_id="f1", time=5.0, sni="x.example")
    assert (c.flow_id, c.time, c.sni, c.stage, c.headers) == (
        "f1",
        5.0,
        "x.example",
        model.Stage.REQUEST,
        (),
    )


def test_instances_stay_frozen_equal_hashable_and_picklable() -> None:
    obs = _obs(flow_id="f", time=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.sni = "other"  # type: ignore[misc]
    assert obs == _obs(flow_id="f", time=1.0) and hash(obs) == hash(_obs(flow_id="f", time=1.0))
    assert pickle.loads(pickle.dumps(obs)) == obs
    assert dataclasses.replace(obs, sni="y").sni == "y"
    finding = Finding(FindingKind.EMAIL, "j***@example.com", "body")
    verdict = Verdict(Action.BLOCK, "r", "why", Mode.ENFORCE)
    a = Assessment(obs, "x", GeoAnswer("CN", GeoSource.MAXMIND), None, (), (finding,))
    d = Decision(a, verdict)
    assert d.verdict.enforced and d.assessment.flags == () and d.elapsed == 0.0 and d.id
    assert FlowClosed("f", Sensor.PROXY, 1.0, 2, 3, 0.5).status is None


def test_wrong_arguments_are_type_errors_as_before() -> None:
    with pytest.raises(TypeError, match="missing 4 required positional"):
        Observation(Sensor.PROXY)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        _obs(bogus=1)
    with pytest.raises(TypeError, match="multiple values"):
        Observation(Sensor.PROXY, Transport.TCP, Protocol.HTTP, None, None, sensor=Sensor.PROXY)  # type: ignore[misc]
