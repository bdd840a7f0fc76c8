"""Bypass detection: a flow the sniffer saw leave that the proxy never handled.

With both sensors on one gateway, every connection that the gateway redirects to
the transparent proxy is seen twice: by the sniffer on the LAN side (pre-NAT, the
original destination) and by the proxy (``SO_ORIGINAL_DST``). A connection only
the sniffer saw went around the proxy: QUIC, DNS over HTTPS on another port, a
hard-coded address on a port that is not redirected. DESIGN.md calls that a
**bypass**; it raises an alert naming the client and the destination.

:class:`BypassWatch` sits in front of the shared sinks: it forwards everything,
remembers the connections the proxy handled, and holds each egress flow the
sniffer reported for a grace period before deciding that the proxy never saw it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from egresswatch.model import Action, Decision, FlowClosed, Sensor, Verdict
from egresswatch.ports import Sink

#: The proxy judges a connection at its ClientHello or first request, within moments of
#: the sniffer's ClientHello; 5 s also covers a proxy busy under load.
DEFAULT_GRACE = 5.0
#: Connections remembered on each side (bounded; the oldest are forgotten first).
DEFAULT_CAPACITY = 100_000

Key = tuple[str, int, str, int, str]


def _addr(addr: str | None) -> str:
    # a dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (RFC 4291 §2.5.5.2)
    if addr and addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr or ""


def connection_key(decision: Decision) -> Key:
    """(client address, client port, destination address, destination port, transport)."""
    o = decision.observation
    return (
        _addr(o.client_addr),
        o.client_port or 0,
        _addr(o.dst_addr),
        o.dst_port or 0,
        str(o.transport),
    )


def bypass_decision(decision: Decision) -> Decision:
    """The alert-worthy decision for a sniffer flow that went around the proxy."""
    a = decision.assessment
    o = a.observation
    dest = f"{o.dst_addr}:{o.dst_port}/{o.transport}"
    name = a.host or o.sni or o.dns_name
    if name:
        dest = f"{name} ({dest})"
    client = o.client_addr or "an unknown client"
    reason = (
        f"{client} sent {o.protocol} to {dest} around the proxy: the sniffer saw it leave "
        f"and the proxy never handled it"
    )
    if a.service is not None:
        service = a.service.service
        reason += f" ({service.name}, operator country {service.operator_country})"
    flags = a.flags if "bypass" in a.flags else (*a.flags, "bypass")
    return Decision(
        assessment=replace(a, flags=flags),
        verdict=Verdict(Action.ALERT, "bypass", reason, decision.verdict.mode),
    )


class BypassWatch:
    """A ``ports.Sink`` for two sensors: forwards to ``sinks``, reports bypasses to ``on_bypass``.

    ``on_bypass`` receives the bypass decision (rule ``bypass``, flag ``bypass``);
    ``run`` hands it to the alert sink and the bypass counter. Only flows whose
    destination is not local are candidates: traffic to the gateway itself (DNS
    to the local resolver, the proxy port in regular mode) is not egress.
    """

    def __init__(
        self,
        sinks: Sink,
        on_bypass: Callable[[Decision], None],
        *,
        grace: float = DEFAULT_GRACE,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
        tick: float | None = 1.0,
    ) -> None:
        self.sinks = sinks
        self.on_bypass = on_bypass
        self.grace = grace
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._proxied: OrderedDict[Key, float] = OrderedDict()
        self._pending: OrderedDict[Key, tuple[float, Decision]] = OrderedDict()
        #: bypasses reported, and candidates forgotten because the table was full
        self.reported = 0
        self.evicted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if tick is not None:
            self._thread = threading.Thread(
                target=self._tick, args=(tick,), name="egresswatch-bypass", daemon=True
            )
            self._thread.start()

    def record(self, decision: Decision) -> None:
        self.sinks.record(decision)
        sensor = decision.observation.sensor
        if sensor is Sensor.PROXY:
            key = connection_key(decision)
            with self._lock:
                self._proxied[key] = self._clock()
                self._proxied.move_to_end(key)
                self._pending.pop(key, None)
                while len(self._proxied) > self.capacity:
                    self._proxied.popitem(last=False)
        elif sensor is Sensor.SNIFFER and not decision.assessment.geo.is_local:
            key = connection_key(decision)
            with self._lock:
                if key not in self._proxied and key not in self._pending:
                    self._pending[key] = (self._clock() + self.grace, decision)
                    while len(self._pending) > self.capacity:
                        self._pending.popitem(last=False)
                        self.evicted += 1
        self.sweep()

    def flow_closed(self, event: FlowClosed) -> None:
        self.sinks.flow_closed(event)

    def sweep(self, *, everything: bool = False) -> int:
        """Report the held sniffer flows whose grace has passed; returns how many."""
        now = self._clock()
        due: list[Decision] = []
        with self._lock:
            while self._pending:
                key, (deadline, decision) = next(iter(self._pending.items()))
                if deadline > now and not everything:
                    break
                del self._pending[key]
                if key not in self._proxied:
                    due.append(decision)
        for decision in due:
            self.reported += 1
            self.on_bypass(bypass_decision(decision))
        return len(due)

    def close(self) -> None:
        """Decide every held flow (the proxy has stopped: it will see nothing more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sweep(everything=True)
        self.sinks.close()

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            self.sweep()
