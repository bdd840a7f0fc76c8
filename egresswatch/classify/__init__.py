"""What a flow carries: payload types and sensitive findings (a core module: no I/O).

Public API::

    classify(obs, category=None) -> Classification
    find_sensitive(text, where) -> list[Finding]
    redact(kind, value) -> str

See docs/classification.md for the rules, the detectors and their limits.
"""

from __future__ import annotations

from egresswatch.classify.body import MAX_BODY
from egresswatch.classify.classifier import Classification, classify
from egresswatch.classify.findings import find_sensitive
from egresswatch.classify.redact import redact

__all__ = ["MAX_BODY", "Classification", "classify", "find_sensitive", "redact"]
