"""``egresswatch verify -- CMD``: run a command where nothing can leave, and list what it tried.

:func:`run_verify` (:mod:`.run`) builds two network namespaces for one run: the
command's, whose only way out is a veth to the gateway's, where
:mod:`egresswatch.verify.gateway` answers every attempt locally (DNS from a private pool,
TCP through the transparent proxy or the raw recorder, the sniffer watching all of
it). The gateway has no route to anywhere and forwarding off: nothing really leaves.
Everything is removed again when the command ends, is killed or times out.

:func:`aggregate` (:mod:`.report`) turns the gateway's records into one
:class:`Destination` per (name or address, port, transport) and decides whether each
was allowed: by the policy (only when one is given), an ``--allow`` pattern, or a
profile (:mod:`.profiles`, ``data/profiles.toml``). The verdict is PASS when every
destination was allowed. Renderers (:mod:`.render`): :func:`to_json` (schema
``JSON_SCHEMA``), :func:`to_junit` (one test case per destination),
:func:`to_markdown`, :func:`render_terminal`. Addresses, ports and nftables rules:
:mod:`.net`. The gateway process: :mod:`.gateway` (entry point), with the name pool
(:mod:`.pool`), attribution (:mod:`.owners`), the records (:mod:`.recorder`), its
mitmproxy addons (:mod:`.addons`) and the raw TCP recorder (:mod:`.raw`).
"""

from __future__ import annotations

from egresswatch.verify.net import (
    DNS_PORT,
    LINK_PREFIX,
    PROXY_PORT,
    RAW_PORT,
    Link,
    Ports,
    free_port,
    gateway_ruleset,
    internet_route,
    is_link_address,
    link_addresses,
    online_ruleset,
)
from egresswatch.verify.profiles import Expectation, Profile, host_matches, load_profiles
from egresswatch.verify.render import (
    JSON_SCHEMA,
    SCHEMA_ID,
    destination_dict,
    render_terminal,
    to_json,
    to_junit,
    to_markdown,
)
from egresswatch.verify.report import Destination, VerifyReport, aggregate, record_allowed
from egresswatch.verify.run import (
    CA_VARS,
    PROXY_VARS,
    USERNS_ENV,
    CommandNotFound,
    VerifyConfig,
    VerifyError,
    ca_bundle,
    command_env,
    preflight,
    redact_command,
    run_in_userns,
    run_verify,
    userns_works,
)

__all__ = [
    "CA_VARS", "DNS_PORT", "JSON_SCHEMA", "LINK_PREFIX", "PROXY_PORT", "PROXY_VARS",
    "RAW_PORT", "SCHEMA_ID", "USERNS_ENV", "CommandNotFound", "Destination", "Expectation",
    "Link", "Ports", "Profile", "VerifyConfig", "VerifyError", "VerifyReport", "aggregate",
    "ca_bundle", "command_env", "destination_dict", "free_port", "gateway_ruleset",
    "host_matches", "internet_route", "is_link_address", "link_addresses", "load_profiles",
    "online_ruleset", "preflight", "record_allowed", "redact_command", "render_terminal",
    "run_in_userns", "run_verify", "to_json", "to_junit", "to_markdown", "userns_works",
]  # fmt: skip
