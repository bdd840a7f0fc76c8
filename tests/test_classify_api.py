"""egresswatch.classify's public names resolve to the functions, imported lazily or not."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_redact_is_the_function_even_after_its_module_was_imported() -> None:
    code = (
        "import egresswatch.classify.redact, types\n"
        "from egresswatch.classify import redact\n"
        "print(isinstance(redact, types.FunctionType))"
    )
    assert _run(code) == "True"


def test_the_store_does_not_load_the_detectors() -> None:
    code = (
        "import sys, egresswatch.store.rows\n"
        "print('egresswatch.classify.classifier' in sys.modules)\n"
        "from egresswatch.classify import MAX_BODY, Classification, classify, find_sensitive\n"
        "print(callable(classify) and callable(find_sensitive) and MAX_BODY > 0)"
    )
    assert _run(code).split() == ["False", "True"]
