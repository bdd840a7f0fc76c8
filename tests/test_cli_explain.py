"""`egresswatch explain`, run as a real process on the shipped catalog, classifier and policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import egresswatch_bin
from helpers.geoip import build_lab_db

CHAT = {
    "model": "deepseek-chat",
    "messages": [
        {
            "role": "user",
            "content": "Write to jane.doe@example.com or call +1 202 555 0143 about my order.",
        }
    ],
}

US_EU_ENFORCE = """\
mode = "enforce"
approved = ["US", "EU"]
require = ["address", "operator"]
"""


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lab_db(tmp_path_factory.mktemp("geo") / "lab.mmdb")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [egresswatch_bin(), "explain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def geo_args(db: Path) -> list[str]:
    return ["--country-db", str(db), "--asn-db", str(db), "--geoip-dir", str(db.parent)]


def test_deepseek_chat_with_contact_data_is_blocked_with_a_reason(
    tmp_path: Path, geo_db: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(US_EU_ENFORCE)
    body = tmp_path / "chat.json"
    body.write_text(json.dumps(CHAT))
    proc = run(
        "POST", "https://api.deepseek.com/chat/completions",
        "--address", "203.0.113.10", "--policy", str(policy), "--body", f"@{body}",
        "-H", "Authorization: Bearer sk-test-not-a-real-key-0000000000000000",
        "--json", *geo_args(geo_db),
    )
    assert proc.returncode == 1, proc.stderr
    d = json.loads(proc.stdout)
    assert d["verdict"]["action"] == "block" and d["verdict"]["enforced"] is True
    assert d["service"]["id"] == "deepseek-api" and d["service"]["operator_country"] == "CN"
    assert d["destination"]["geo"]["country"] == "CN"
    assert d["destination"]["geo"]["source"] == "mmdb"
    assert "chat-prompt" in d["payload_types"]
    kinds = {f["kind"]: f["value"] for f in d["findings"]}
    assert {"email", "phone"} <= set(kinds)
    reason = d["verdict"]["reason"]
    assert "CN" in reason and "chat-prompt" in reason
    assert kinds["email"] in reason and kinds["phone"] in reason
    # privacy: only redacted forms anywhere in the output
    assert "jane.doe@example.com" not in proc.stdout
    assert "202 555 0143" not in proc.stdout and "2025550143" not in proc.stdout


def test_same_request_to_an_approved_operator_in_an_approved_country_is_allowed(
    tmp_path: Path, geo_db: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(US_EU_ENFORCE)
    proc = run(
        "POST", "https://api.openai.com/v1/chat/completions",
        "--address", "198.51.100.20", "--policy", str(policy),
        "--body", json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        *geo_args(geo_db),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ALLOW")
    assert "OpenAI" in proc.stdout and "chat-prompt" in proc.stdout


def test_human_output_names_verdict_service_and_match_kind(geo_db: Path) -> None:
    proc = run(
        "POST", "https://api.deepseek.com/chat/completions", "--address", "203.0.113.10",
        "--body", json.dumps(CHAT), *geo_args(geo_db),
    )
    # the shipped default policy is monitor mode: a block is a would-block
    assert "monitor mode" in proc.stdout
    assert "[official]" in proc.stdout
    assert "j***@example.com" in proc.stdout


def test_lookalike_host_is_reported_as_lookalike(geo_db: Path) -> None:
    proc = run("GET", "https://deepseek.chat/", "--address", "203.0.113.10", "--json",
               *geo_args(geo_db))
    d = json.loads(proc.stdout)
    assert d["service"]["match"] == "lookalike"
    assert "lookalike" in d["flags"]
    assert d["operator_country"] is None  # a lookalike has no trustworthy operator
    human = run("GET", "https://deepseek.chat/", "--address", "203.0.113.10", *geo_args(geo_db))
    text = " ".join(human.stdout.split())  # the table wraps at the terminal width
    assert "lookalike of DeepSeek" in text and "operator unknown" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["GET", "ftp://example.com/"], "http:// or https://"),
        (["GET", "https://example.com/", "-H", "no colon here"], "Name: value"),
        (["GET", "https://example.com/", "--address", "999.1.1.1"], "not an IPv4 or IPv6"),
        (["GET", "https://example.com/", "--body", "@/nonexistent/body.json"], "cannot read"),
        (["GET", "https://example.com/", "--mode", "strict"], "strict"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_broken_policy_names_file_line_and_field(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text(
        'mode = "enforce"\napproved = ["US"]\n\n[[rules]]\nname = "x"\naction = "nuke"\n'
    )
    proc = run("GET", "https://api.openai.com/", "--policy", str(policy))
    assert proc.returncode == 3
    assert f"{policy}:6" in proc.stderr and "action" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_geoip_folder_says_how_to_get_a_database(tmp_path: Path) -> None:
    proc = run("GET", "https://api.openai.com/", "--geoip-dir", str(tmp_path / "nope"))
    assert proc.returncode == 3
    assert "geoip/README.md" in proc.stderr
