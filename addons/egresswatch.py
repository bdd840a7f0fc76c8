"""mitmproxy entry script: ``mitmdump -s addons/egresswatch.py --set egresswatch_policy=...``.

All logic lives in :mod:`egresswatch.proxy`; see ``docs/proxy.md`` for the options.
"""

from egresswatch.proxy import EgressWatch

addons = [EgressWatch()]
