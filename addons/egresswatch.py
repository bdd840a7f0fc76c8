"""mitmproxy entry script: ``mitmdump -s addons/egresswatch.py --set egresswatch_policy=...``.

All logic lives in :mod:`egresswatch.proxy`; see ``docs/proxy.md`` for the options.
"""

import os
import sys

# mitmproxy puts this script's folder first on sys.path, where this file would shadow
# the egresswatch package it imports: look the package up without that folder.
_here = os.path.dirname(os.path.abspath(__file__))
_saved = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("egresswatch"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["egresswatch"]
try:
    from egresswatch.proxy import EgressWatch
finally:
    sys.path[:] = _saved

# exit_on_bad_options: a bad --set ends start-up with one line instead of a traceback
addons = [EgressWatch(exit_on_bad_options=True)]
