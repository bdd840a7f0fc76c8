"""A bench/ script as a module, for the benches that drive another's parts.

bench/ is not a package, and it must not be on ``sys.path`` (its ``inspect.py``
would shadow the standard library's), so its scripts are loaded by file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


def bench_module(name: str) -> ModuleType:
    """``bench/NAME.py`` as the module ``bench_NAME`` (loaded once per process)."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module
