"""The JSON form of a decision shows only redacted evidence."""

from __future__ import annotations

import pytest

from egresswatch.jsonable import decision_to_dict, redact_path
from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    Finding,
    FindingKind,
    GeoAnswer,
    GeoSource,
    Mode,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Transport,
    Verdict,
)


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/models?key=AIzaSyA-secret&alt=json", "/v1/models?key=…&alt=…"),
        # a bare value is itself a token: only that it was there is kept
        ("/hook?sk-proj-abcdef0123456789", "/hook?…"),
        ("/page#access_token=secret", "/page"),
        (None, None),
    ],
)
def test_paths_keep_keys_and_lose_values(path: str | None, want: str | None) -> None:
    assert redact_path(path) == want


def test_decision_json_has_no_body_no_query_value_and_only_redacted_findings() -> None:
    secret = "sk-proj-" + "Z" * 40
    obs = Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr="203.0.113.10",
        dst_port=443,
        http_host="api.deepseek.com",
        method="POST",
        path=f"/chat/completions?api_key={secret}",
        body=b'{"messages":[{"content":"jane.doe@example.com"}]}',
    )
    finding = Finding(FindingKind.EMAIL, "j***@example.com", "body")
    a = Assessment(obs, "api.deepseek.com", GeoAnswer("CN", GeoSource.MAXMIND), None,
                   (PayloadType.CHAT_PROMPT,), (finding,))
    d = decision_to_dict(Decision(a, Verdict(Action.BLOCK, "r", "why", Mode.ENFORCE)))
    text = repr(d)
    assert secret not in text and "jane.doe" not in text
    assert d["request"]["path"] == "/chat/completions?api_key=…"
    assert d["findings"] == [
        {"kind": "email", "value": "j***@example.com", "where": "body", "detail": None}
    ]
    assert d["verdict"]["enforced"] is True and d["verdict"]["label"] == "block"
