"""The core imports no framework: it stays pure and testable without I/O (STYLE.md, Layering)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.fresh import fresh_python

PKG = Path(__file__).resolve().parent.parent / "egresswatch"
CORE = ["model.py", "ports.py", "errors.py", "inspector.py", "policy", "catalog.py", "classify"]
FORBIDDEN = {"mitmproxy", "scapy", "sqlalchemy", "prometheus_client", "click", "socket", "alembic"}


def _core_files() -> list[Path]:
    files: list[Path] = []
    for name in CORE:
        path = PKG / name
        if path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
        else:
            files.append(path)  # a renamed module must fail here, not be skipped silently
    return files


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(PKG)))
def test_core_imports_no_framework(path: Path) -> None:
    bad = _imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_checker_sees_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import socket\nfrom mitmproxy import http\n")
    assert _imported_roots(sample) & FORBIDDEN == {"socket", "mitmproxy"}


def test_proxy_options_load_without_mitmproxy() -> None:
    # the config file and the CLI check proxy options with these functions: checking a
    # pass-through pattern must not cost mitmproxy's import (~1 s)
    code = (
        "import sys\n"
        "from egresswatch import proxy_options\n"
        "from egresswatch import config\n"
        "proxy_options.parse_passthrough(['*.apple.com'])\n"
        "config.parse_host_pattern('*.apple.com')\n"
        "config.parse_size('64k')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mitmproxy'))\n"
    )
    out = fresh_python(code)
    assert out.strip() == "[]"
