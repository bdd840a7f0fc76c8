"""What a flow carries: payload types and sensitive findings (a core module: no I/O).

Public API::

    classify(obs, category=None) -> Classification
    find_sensitive(text, where) -> list[Finding]
    redact(kind, value) -> str

See docs/classification.md for the rules, the detectors and their limits.

The names are imported on first use (PEP 562): ``egresswatch.classify.redact`` is
needed by the store and the reports, which have no use for the detectors' patterns
(compiling them was 80 ms of every `egresswatch flows`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager: it is light, and the submodule of the same name would otherwise shadow the function
# once anything imported egresswatch.classify.redact.
from egresswatch.classify.redact import redact

if TYPE_CHECKING:
    from egresswatch.classify.body import MAX_BODY
    from egresswatch.classify.classifier import Classification, classify
    from egresswatch.classify.findings import find_sensitive

__all__ = ["MAX_BODY", "Classification", "classify", "find_sensitive", "redact"]

_HOME = {
    "MAX_BODY": "egresswatch.classify.body",
    "Classification": "egresswatch.classify.classifier",
    "classify": "egresswatch.classify.classifier",
    "find_sensitive": "egresswatch.classify.findings",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
