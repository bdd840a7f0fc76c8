"""mitmproxy addons of the gateway: the pool resolver (``dns`` mode) and ``--online`` upstreams."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from egresswatch.model import (
    Observation,
    Protocol,
    Sensor,
    Stage,
    Transport,
)
from egresswatch.verify.pool import NamePool
from egresswatch.verify.recorder import Recorder

#: TTL of pool answers: short, the pool lives only as long as the run
POOL_TTL = 5


class OnlineUpstream:
    """mitmproxy addon (``--online``): a request that was let through goes to the real name.

    The command connected to a pool address; the name it stands for is resolved by the
    host's resolver when mitmproxy connects (``connection_strategy=lazy``: only now).
    Runs after the egresswatch addon, which has answered 451 to everything not allowed.
    """

    def __init__(self, pool: NamePool) -> None:
        self.pool = pool

    def request(self, flow: Any) -> None:
        if not flow.live or flow.response is not None:
            return
        addr = flow.server_conn.address
        name = self.pool.name(addr[0]) if addr else None
        if name:
            flow.request.host = name  # the Host header already names it


# -- DNS -------------------------------------------------------------------------------------


class PoolDns:
    """mitmproxy addon for the ``dns`` mode: answer every query from the pool, ask nobody."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def dns_request(self, flow: Any) -> None:
        from mitmproxy import dns

        if not flow.live or flow.response is not None:
            return
        answers: list[Any] = []
        q = flow.request.questions[0] if flow.request.questions else None
        if q is None:
            flow.response = flow.request.fail(dns.response_codes.FORMERR)
            return
        name = q.name.rstrip(".").lower()
        if q.type == dns.types.A:
            answers.append(
                dns.ResourceRecord.A(
                    q.name, ipaddress.IPv4Address(self.recorder.pool.address(name)), ttl=POOL_TTL
                )
            )
        elif q.type == dns.types.PTR:
            target = _ptr_address(name)
            back = self.recorder.pool.name(target)
            if back is None:
                flow.response = flow.request.fail(dns.response_codes.NXDOMAIN)
                return
            answers.append(dns.ResourceRecord.PTR(q.name, back, ttl=POOL_TTL))
        # AAAA, HTTPS, SVCB ...: NOERROR with no data (RFC 2308 §2.2), so clients use A.
        flow.response = flow.request.succeed(answers)
        if q.type != dns.types.PTR:
            self._record(flow, name, dns.types.to_str(q.type))

    def _record(self, flow: Any, name: str, qtype: str) -> None:
        client = flow.client_conn.peername
        server = flow.server_conn.address if flow.server_conn else None
        obs = Observation(
            sensor=Sensor.VERIFY,
            transport=Transport.UDP,
            protocol=Protocol.DNS,
            dst_addr=server[0] if server else None,
            dst_port=server[1] if server else 53,
            stage=Stage.REQUEST,
            client_addr=client[0] if client else None,
            client_port=client[1] if client else None,
            dns_name=name,
            headers=(("dns-query", f"{name} {qtype}"),),
        )
        with contextlib.suppress(Exception):
            self.recorder.inspect(obs)


def _ptr_address(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4`` (RFC 1035 §3.5)."""
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[: -len(".in-addr.arpa")].split(".")
    return ".".join(reversed(parts)) if len(parts) == 4 else None
