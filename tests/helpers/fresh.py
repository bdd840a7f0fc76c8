"""Run a snippet in a fresh interpreter: for checks that would change the test process itself
(what a module imports, the garbage collector's state)."""

from __future__ import annotations

import subprocess
import sys


def fresh_python(code: str, timeout: float = 120) -> str:
    """The snippet's standard output; its standard error in the failure if it fails."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise AssertionError(f"snippet exited with {out.returncode}:\n{out.stderr[-3000:]}")
    return out.stdout
