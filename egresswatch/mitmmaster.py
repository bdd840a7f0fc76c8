"""The mitmproxy master that egresswatch runs: the addons a sensor needs, and no others.

mitmdump's ``DumpMaster`` loads 34 addons. mitmproxy asks every top-level addon about
every event, and an HTTP request raises eight: ``requestheaders``, ``request``,
``responseheaders`` and ``response``, each followed by an ``update``. 21 of those
addons do nothing for a sensor, but they still cost ~38% of the Python a bare mitmdump
runs per request (docs/performance.md, "Eighth pass"). They are also things a sensor
should not do: rewrite requests (``map_remote``, ``modify_headers``, ``anticache``,
the sticky cookie and auth addons ...), replay them (client and server playback), or
write raw flows to disk (``save_stream_file``, HAR), where egresswatch keeps only
redacted evidence.

``egresswatch proxy``, ``egresswatch run`` and the verify gateway build their master here.
``mitmdump -s addons/egresswatch.py`` keeps every mitmproxy addon; a user who needs
one of the others runs that.
"""

from __future__ import annotations

from typing import Any

from egresswatch.errors import EgressWatchError

#: mitmproxy's addons that a sensor keeps, by class name. The rest of
#: ``mitmproxy.addons.default_addons()`` is left out.
KEPT = (
    "Core",  # options, commands and their checks
    "Block",  # block_global / block_private: refuses clients from where it should not serve
    "StripDnsHttpsRecords",  # DNS mode: no ECH keys to clients, so SNI stays readable
    "DisableH2C",  # h2c upgrades and prior knowledge, which mitmproxy cannot proxy
    "Onboarding",  # http://mitm.it/: how a client gets the CA certificate
    "ProxyAuth",  # proxyauth: a password on the listener
    "Proxyserver",  # the listeners and connections
    "DnsResolver",  # DNS mode's resolver
    "NextLayer",  # protocol detection, TLS pass-through (ignore_hosts)
    "TlsConfig",  # certificates, client and upstream TLS
    "UpstreamAuth",  # upstream:URL mode with upstream_auth
    "UpdateAltSvc",  # reverse mode: Alt-Svc pointing back at the proxy
)


def sensor_addons() -> list[Any]:
    """New instances of the mitmproxy addons a sensor runs, in mitmproxy's own order.

    Raises EgressWatchError when this mitmproxy lacks one of :data:`KEPT` (an upgrade
    that renamed it): the sensor would otherwise start without it, unnoticed.
    """
    from mitmproxy import version
    from mitmproxy.addons import default_addons
    from mitmproxy.addons.errorcheck import ErrorCheck

    kept = [a for a in default_addons() if type(a).__name__ in KEPT]
    missing = set(KEPT) - {type(a).__name__ for a in kept}
    if missing:
        raise EgressWatchError(
            f"mitmproxy {version.VERSION} has no {', '.join(sorted(missing))} addon, which "
            "egresswatch needs: install the mitmproxy version pyproject.toml names"
        )
    # mitmdump's start-up check: a listener that failed to bind stops the run
    return [*kept, ErrorCheck()]


def sensor_master(opts: Any, *, verbose: bool = False) -> Any:
    """A mitmproxy master with :func:`sensor_addons`; mitmproxy's log on stderr if ``verbose``.

    Must be called with an event loop running (mitmproxy binds its master to it).
    """
    from mitmproxy.master import Master

    master = Master(opts, with_termlog=verbose)
    master.addons.add(*sensor_addons())
    return master


def left_out_option(name: str) -> bool:
    """Whether ``name`` is an option of a mitmproxy addon that :func:`sensor_master` leaves out.

    For the error a user gets on ``--set map_remote=...``. Builds a scratch master
    with the other addons: call it only on that error's path, with a loop running.
    """
    from mitmproxy.addons import default_addons
    from mitmproxy.addons.keepserving import KeepServing
    from mitmproxy.addons.readfile import ReadFileStdin
    from mitmproxy.master import Master
    from mitmproxy.options import Options

    opts = Options()
    scratch = Master(opts)
    scratch.addons.add(*(a for a in default_addons() if type(a).__name__ not in KEPT))
    scratch.addons.add(KeepServing(), ReadFileStdin())  # mitmdump's own two
    return name in opts
