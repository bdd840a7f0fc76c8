"""Shared test helpers. mitmproxy's test helpers have no stable API: wrap them here."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def egresswatch_bin() -> str:
    """Path to the installed console script next to the running interpreter."""
    path = BIN / "egresswatch"
    return str(path) if path.exists() else shutil.which("egresswatch") or "egresswatch"


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root for namespaces/nftables")
