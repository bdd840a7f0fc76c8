"""Passive sensor: capture, dissection of the first flight, flow table, DNS cache.

The sniffer cannot block; it is the witness for flows that bypass the proxy
(QUIC, DNS over HTTPS, direct addresses on other ports). Headers are parsed with
plain byte indexing on the hot path (:mod:`.decode`); only the few packets that
carry names go deeper (:mod:`.tls`, :mod:`.quic`, :mod:`.dns`, :mod:`.http`).
"""

from egresswatch.sniffer.engine import DnsAnswer, InspectFn, Sniffer, SnifferConfig, SnifferStats
from egresswatch.sniffer.flows import FlowSummary

__all__ = ["DnsAnswer", "FlowSummary", "InspectFn", "Sniffer", "SnifferConfig", "SnifferStats"]
