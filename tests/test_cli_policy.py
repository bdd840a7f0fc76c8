"""`egresswatch policy check|show`: exit codes, messages, JSON, through the real root command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import egresswatch_bin

from egresswatch.cli import cli

DATA = Path(__file__).resolve().parent.parent / "egresswatch" / "data"
EXAMPLE = DATA / "policy-example.toml"

BAD = """\
mode = "enforce"
approved = ["EU"]

[[rules]]
name = "x"
action = "block"
payload = ["chat"]
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


@pytest.mark.parametrize("name", ["policy-example.toml", "policy-default.toml"])
def test_check_valid_shipped_files(name: str) -> None:
    code, out, err = run("policy", "check", str(DATA / name))
    assert code == 0, err
    assert out.startswith("valid: ")
    assert name in out
    mode = "enforce" if "example" in name else "monitor"
    assert f"{mode} mode" in out
    assert "rules (first match wins)" in out


def test_check_summary_lists_rules_and_settings() -> None:
    code, out, _ = run("policy", "check", str(EXAMPLE))
    assert code == 0
    for text in (
        "block-cn-operators",
        "block-lookalikes",
        "alert-secrets",
        "EU, US",
        "*.push.apple.com",
        "operator_country=CN",
    ):
        assert text in out, text


def test_check_invalid_exits_3_with_file_line_field(bad_file: Path) -> None:
    code, out, err = run("policy", "check", str(bad_file))
    assert code == 3
    assert out == ""
    assert err.startswith(f"egresswatch: error: {bad_file}:7: rules[1].payload: 'chat' is not")
    assert "did you mean 'chat-prompt'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_check_json_valid() -> None:
    code, out, _ = run("policy", "check", "--json", str(EXAMPLE))
    assert code == 0
    data = json.loads(out)
    assert data["valid"] is True
    assert data["mode"] == "enforce"
    assert data["approved"] == ["EU", "US"]
    assert [r["name"] for r in data["rules"]][:2] == ["local-model-servers", "block-cn-operators"]
    assert data["unknown"] == {"address": "block", "operator": "alert"}


def test_check_json_invalid(bad_file: Path) -> None:
    code, out, _ = run("policy", "check", "--json", str(bad_file))
    assert code == 3
    data = json.loads(out)
    assert data["valid"] is False
    assert data["error"]["path"] == str(bad_file)
    assert data["error"]["line"] == 7
    assert data["error"]["field"] == "rules[1].payload"
    assert "'chat' is not a payload type" in data["error"]["message"]


def test_check_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('mode = "enforce"\napproved = ["EU"\n\n')
    code, _, err = run("policy", "check", str(path))
    assert code == 3
    assert f"{path}:" in err and "not valid TOML" in err


@pytest.mark.parametrize("args", [["policy", "check"], ["policy", "check", "/nonexistent.toml"]])
def test_check_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    code, _, err = run(*args)
    assert code == 2
    assert "Usage:" in err


def test_check_directory_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run("policy", "check", str(tmp_path))
    assert code == 2
    assert "directory" in err


def test_show_default() -> None:
    code, out, _ = run("policy", "show")
    assert code == 0
    assert "policy-default.toml" in out
    assert "monitor" in out and "would-block" in out
    assert "EEA, EU-ADEQUATE, US" in out
    assert "lookalike-service" in out


def test_show_file_with_mode_json() -> None:
    code, out, _ = run(
        "policy", "show", str(DATA / "policy-default.toml"), "--mode", "enforce", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["mode"] == "enforce"
    assert "valid" not in data
    assert len(data["approved_countries"]) == 45


def test_show_bad_mode_is_usage_error() -> None:
    code, _, err = run("policy", "show", "--mode", "strict")
    assert code == 2
    assert "'strict' is not a mode" in err


def test_show_invalid_file_exits_3(bad_file: Path) -> None:
    code, _, err = run("policy", "show", str(bad_file))
    assert code == 3
    assert f"{bad_file}:7:" in err


def test_help_explains() -> None:
    code, out, _ = run("policy", "--help")
    assert code == 0
    assert "check" in out and "show" in out and "jurisdictions" in out
    code, out, _ = run("policy", "check", "--help")
    assert code == 0
    assert "Exit status" in out and "--json" in out


def test_installed_console_script(bad_file: Path) -> None:
    """The real entry point, in a real process: exit codes reach the shell."""
    exe = egresswatch_bin()
    ok = subprocess.run(
        [exe, "policy", "check", "--json", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    bad = subprocess.run(
        [exe, "policy", "check", str(bad_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 3
    assert bad.stderr.startswith(f"egresswatch: error: {bad_file}:7: rules[1].payload:")


TYPO = """\
approved = ["EU"]
[[rules]]
name = "a"
action = "block"
service = ["deepsek-api", "lab-llm"]
"""

USER_CATALOG = """\
schema = 1

[[service]]
id = "lab-llm"
name = "Lab LLM"
operator = "Example Lab GmbH"
operator_country = "DE"
category = "chat-api"
domains = ["llm.lab.example"]
"""


@pytest.fixture
def typo_file(tmp_path: Path) -> Path:
    path = tmp_path / "typo.toml"
    path.write_text(TYPO)
    return path


def test_check_warns_about_unknown_service_ids(typo_file: Path) -> None:
    code, out, err = run("policy", "check", str(typo_file))
    assert code == 0
    lines = err.strip().splitlines()
    assert lines == [
        f"egresswatch: warning: {typo_file}:5: rules[1].service: 'deepsek-api' is not a service "
        "id in the catalog, so this never matches; did you mean 'deepseek-api'?",
        f"egresswatch: warning: {typo_file}:5: rules[1].service: 'lab-llm' is not a service "
        "id in the catalog, so this never matches",
    ]
    assert "2 warnings" in out


def test_check_user_catalog_and_strict(typo_file: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "lab-catalog.toml"
    catalog.write_text(USER_CATALOG)
    code, _, err = run("policy", "check", "--catalog", str(catalog), str(typo_file))
    assert code == 0
    assert "lab-llm" not in err and "deepsek-api" in err
    code, _, err = run("policy", "check", "--strict", "--catalog", str(catalog), str(typo_file))
    assert code == 3
    assert err.strip().splitlines()[-1] == (
        f"egresswatch: error: {typo_file}: 1 rule reference(s) the catalog does not know (--strict)"
    )
    code, out, _ = run("policy", "check", "--strict", "--json", str(typo_file))
    assert code == 3
    data = json.loads(out)
    assert data["valid"] is False
    assert [w["line"] for w in data["warnings"]] == [5, 5]


def test_check_bad_user_catalog_exits_3(typo_file: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "bad-catalog.toml"
    catalog.write_text("schema = 1\n[[service]]\nid = 'x'\n")
    code, _, err = run("policy", "check", "--catalog", str(catalog), str(typo_file))
    assert code == 3
    assert str(catalog) in err
    code, out, _ = run("policy", "check", "--json", "--catalog", str(catalog), str(typo_file))
    assert code == 3
    assert json.loads(out)["error"]["path"] == str(catalog)
