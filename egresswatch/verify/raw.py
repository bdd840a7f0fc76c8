"""Raw TCP: the original destination, the first bytes (TLS/HTTP parsed), and ``--online`` relays."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time
from dataclasses import replace
from typing import Any

from egresswatch.model import (
    Observation,
    Protocol,
    Sensor,
    Stage,
    Transport,
)
from egresswatch.verify.recorder import Recorder

#: getsockopt(SOL_IP, SO_ORIGINAL_DST) (linux/netfilter_ipv4.h) and its IPv6 twin
#: IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): both 80.
SO_ORIGINAL_DST = 80


#: how long the raw recorder waits for a client's first bytes
RAW_READ_TIMEOUT = 1.5
RAW_READ_LIMIT = 16 * 1024


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of a redirected TCP connection (SO_ORIGINAL_DST)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return socket.inet_ntop(socket.AF_INET, packed), port
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        addr = ipaddress.IPv6Address(packed)
        return str(addr.ipv4_mapped or addr), port
    except OSError:
        return None


def raw_observation(
    data: bytes, dst: tuple[str, int] | None, client: tuple[str, int] | None
) -> Observation:
    """An Observation of a raw TCP stream from its first bytes (TLS and HTTP/1 are parsed)."""
    from egresswatch.sniffer import http as httpmod
    from egresswatch.sniffer import tls as tlsmod

    fields: dict[str, Any] = {"protocol": Protocol.RAW}
    if data[:1] == b"\x16":
        with contextlib.suppress(ValueError, IndexError):
            msg = tlsmod.handshake_from_records(data)
            if msg is not None:
                hello = tlsmod.parse_client_hello(msg)
                fields.update(protocol=Protocol.TLS, sni=hello.sni, alpn=tuple(hello.alpn))
    elif httpmod.looks_like_request(data):
        with contextlib.suppress(ValueError):
            req = httpmod.parse_request(data)
            if req is not None:
                fields.update(
                    protocol=Protocol.HTTP,
                    http_host=req.host,
                    method=req.method,
                    path=req.target,
                    headers=req.headers,
                    body=req.body,
                    body_truncated=req.content_length is not None
                    and len(req.body) < req.content_length,
                )
    return Observation(
        sensor=Sensor.VERIFY,
        transport=Transport.TCP,
        dst_addr=dst[0] if dst else None,
        dst_port=dst[1] if dst else None,
        stage=Stage.REQUEST if data else Stage.CONNECT,
        client_addr=client[0] if client else None,
        client_port=client[1] if client else None,
        bytes_out=len(data),
        **fields,
    )


class RawRecorder:
    """Accepts redirected TCP on any other port, keeps the first bytes, judges, closes."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        dst = original_dst(sock) if sock is not None else None
        peer = writer.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if peer else None
        # Look up the owner while the socket is surely open.
        obs0 = Observation(
            sensor=Sensor.VERIFY, transport=Transport.TCP, protocol=Protocol.RAW,
            dst_addr=None, dst_port=None, client_port=client[1] if client else None,
        )  # fmt: skip
        owner = await asyncio.to_thread(self.recorder.enrich, obs0)
        data = b""
        deadline = time.monotonic() + RAW_READ_TIMEOUT
        with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
            while len(data) < RAW_READ_LIMIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(RAW_READ_LIMIT - len(data)), left)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
        obs = raw_observation(data, dst, client)
        obs = replace(obs, client_pid=owner.client_pid, client_process=owner.client_process)
        self.recorder.first_bytes[obs.flow_id] = data
        decision = None
        with contextlib.suppress(Exception):
            decision = await asyncio.to_thread(self.recorder.inspect, obs)
        if decision is not None and not decision.verdict.enforced and dst is not None:
            target = self.recorder.pool.name(dst[0]) or dst[0]
            await _relay(reader, writer, data, (target, dst[1]))
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    target: tuple[str, int],
    idle: float = 300.0,
) -> None:
    """``--online``: connect to the real target, send what was read, then pipe both ways."""
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), 15)
    except (OSError, TimeoutError):
        return
    up_w.write(first)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            while chunk := await asyncio.wait_for(src.read(65536), idle):
                dst.write(chunk)
                await dst.drain()
        with contextlib.suppress(OSError):
            if dst.can_write_eof():
                dst.write_eof()

    await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
    up_w.close()


def _complete(data: bytes) -> bool:
    """Enough to judge: a whole ClientHello, an HTTP head, or any non-TLS/HTTP bytes."""
    from egresswatch.sniffer import http as httpmod
    from egresswatch.sniffer import tls as tlsmod

    if data[:1] == b"\x16":
        try:
            return tlsmod.handshake_from_records(data) is not None
        except ValueError:
            return True
    if httpmod.looks_like_request(data):
        return b"\r\n\r\n" in data
    return True
