"""Packet sources for the sniffer: pcap/pcapng files and live Linux interfaces (scapy).

Offline files are read with scapy's raw readers (no dissection). Live capture
opens one scapy ``L2ListenSocket`` (AF_PACKET, CAP_NET_RAW is enough) per
interface with a BPF filter compiled by libpcap, reads raw frames, and reads the
kernel's drop counter (``PACKET_STATISTICS``, packet(7)) so drops are reported,
never silent. scapy and socket errors become :class:`CaptureError`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from egresswatch.errors import CaptureError
from egresswatch.sniffer.decode import LINKTYPE_ETHERNET, LINKTYPE_RAW, SUPPORTED_LINKTYPES
from egresswatch.sniffer.engine import Sniffer

#: Every TCP segment (reassembling a multi-segment ClientHello needs all of them, byte
#: counts too) and every UDP datagram except QUIC short-header packets on port 443:
#: those are encrypted 1-RTT data (RFC 9000 §17.3, header form bit 0) that never carry a
#: name and are most of a QUIC flow's packets. Offsets: udp[8] is the first payload byte
#: over IPv4; ip6[48] the same over IPv6 without extension headers (libpcap's udp[] is
#: IPv4-only). The whole filter is repeated behind ``vlan`` for tagged frames.
_CORE_BPF = (
    "tcp or (udp and not ("
    "(ip and udp port 443 and udp[8] & 0x80 = 0) or "
    "(ip6 and udp port 443 and ip6[6] = 17 and ip6[48] & 0x80 = 0)))"
)
DEFAULT_BPF = f"{_CORE_BPF} or (vlan and ({_CORE_BPF}))"

# packet(7): SOL_PACKET / PACKET_STATISTICS, struct tpacket_stats { u32 packets; u32 drops; }
SOL_PACKET = 263
PACKET_STATISTICS = 6
# if_arp.h hardware types -> link types
_ARPHRD_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}


def check_bpf(expr: str) -> None:
    """Compile a BPF expression with libpcap; raises ValueError with libpcap's message."""
    try:
        from scapy.arch.common import compile_filter

        compile_filter(expr, linktype=LINKTYPE_ETHERNET)
    except ImportError as e:
        raise ValueError(f"cannot compile BPF filters: {e} (install libpcap0.8)") from e
    except Exception as e:  # scapy raises Scapy_Exception with libpcap's text
        raise ValueError(str(e).strip() or "invalid BPF expression") from e


#: classic pcap magic numbers (pcap-savefile(5)): (struct byte order, fraction divisor)
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),  # nanosecond resolution
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
#: largest record we accept; pcap-savefile(5) snaplens are at most 262144
_MAX_RECORD = 262_144 * 4
_CHUNK = 4 * 1024 * 1024


def _linktype_check(linktype: int) -> None:
    if linktype not in SUPPORTED_LINKTYPES:
        raise CaptureError(
            f"link type {linktype} is not supported (supported: "
            + ", ".join(sorted(set(SUPPORTED_LINKTYPES.values())))
            + ")"
        )


def run_file(sniffer: Sniffer, path: Path, limit: int | None = None) -> int:
    """Feed a whole pcap/pcapng file to the sniffer, then finish every flow. Returns packets fed.

    Classic pcap is read in large chunks with one ``struct`` call per record:
    scapy's ``RawPcapReader`` makes two small reads and a namedtuple per record,
    which on a busy 2-core machine was measured between 70,000 and 290,000
    records/s (bench/sniffer.py prints it) -- too close to the 100,000 packets/s
    the whole sniffer must sustain. pcapng (several interfaces and link types per
    file, options, block types) goes through scapy's ``RawPcapNgReader``.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from e
    try:
        if magic in _PCAP_MAGIC:
            return _run_classic(sniffer, path, limit)
        return _run_scapy(sniffer, path, limit)
    finally:
        sniffer.close()


def _run_classic(sniffer: Sniffer, path: Path, limit: int | None) -> int:
    feed = sniffer.feed
    n = 0
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise CaptureError(f"{path}: truncated pcap header")
        order, div = _PCAP_MAGIC[head[:4]]
        # the upper bits of the link-type field carry FCS information (pcap-savefile(5))
        linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
        _linktype_check(linktype)
        rec = struct.Struct(order + "IIII")
        unpack = rec.unpack_from
        buf = fh.read(_CHUNK)
        pos = 0
        size = len(buf)
        while True:
            if pos + 16 > size:
                buf = buf[pos:] + fh.read(_CHUNK)
                pos, size = 0, len(buf)
                if size < 16:
                    if size:
                        sniffer.stats.malformed["truncated-file"] += 1
                    return n
            sec, frac, caplen, _wire = unpack(buf, pos)
            if caplen > _MAX_RECORD:
                sniffer.stats.malformed["capture-file"] += 1
                raise CaptureError(
                    f"{path}: record {n + 1} claims {caplen} bytes; the file is damaged "
                    f"(stopped after {n} packets)"
                )
            end = pos + 16 + caplen
            if end > size:
                buf = buf[pos:] + fh.read(max(_CHUNK, caplen + 16))
                pos, size = 0, len(buf)
                end = 16 + caplen
                if end > size:
                    sniffer.stats.malformed["truncated-file"] += 1
                    return n
            feed(sec + frac / div, buf[pos + 16 : end], linktype)
            pos = end
            n += 1
            if limit is not None and n >= limit:
                return n


def _run_scapy(sniffer: Sniffer, path: Path, limit: int | None) -> int:
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    try:
        reader: Any = RawPcapReader(str(path))
    except (Scapy_Exception, OSError, EOFError) as e:
        raise CaptureError(f"{path}: not a readable pcap or pcapng file ({e})") from e
    feed = sniffer.feed
    n = 0
    ng = isinstance(reader, RawPcapNgReader)
    if not ng:
        _linktype_check(reader.linktype)
    try:
        while limit is None or n < limit:
            try:
                data, meta = reader._read_packet()  # the raw record, no dissection
            except EOFError:
                break
            if ng:
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                feed(ts, data, meta.linktype)
            else:
                feed(meta.sec + meta.usec / (1e9 if reader.nano else 1e6), data, reader.linktype)
            n += 1
    except Scapy_Exception as e:
        sniffer.stats.malformed["capture-file"] += 1
        raise CaptureError(f"{path}: stopped after {n} packets: {e}") from e
    finally:
        reader.close()
    return n


class LiveCapture:
    """Live capture on one or more interfaces into one sniffer.

    Needs CAP_NET_RAW (AF_PACKET sockets); nothing is ever sent. ``stop()`` may
    be called from another thread or a signal handler.
    """

    def __init__(
        self,
        sniffer: Sniffer,
        ifaces: list[str],
        bpf: str | None = DEFAULT_BPF,
        buffer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.sniffer = sniffer
        #: kernel receive buffer per socket: absorbs bursts while Python is busy
        self.buffer_bytes = buffer_bytes
        self.ifaces = ifaces
        self.bpf = bpf
        self._stop = threading.Event()
        self._socks: list[tuple[Any, int]] = []

    def open(self) -> None:
        """Open the sockets; raises CaptureError for permission, interface and filter problems."""
        import scapy.layers.l2  # noqa: F401  (registers Ether, else scapy warns per socket)
        from scapy.arch.linux import L2ListenSocket
        from scapy.error import Scapy_Exception

        for iface in self.ifaces:
            try:
                sock = L2ListenSocket(iface=iface, filter=self.bpf, promisc=False)
            except PermissionError as e:
                self.close()
                raise CaptureError(
                    f"capture on {iface}: permission denied; run as root or grant CAP_NET_RAW "
                    "(setcap cap_net_raw+ep on the Python binary)"
                ) from e
            except OSError as e:
                self.close()
                raise CaptureError(f"capture on {iface}: {e.strerror or e}") from e
            except ValueError as e:  # scapy: "Interface 'x' not found !"
                self.close()
                raise CaptureError(f"capture on {iface}: no such interface") from e
            except Scapy_Exception as e:
                self.close()
                raise CaptureError(f"capture on {iface}: {e}") from e
            hatype = sock.ins.getsockname()[3]
            linktype = _ARPHRD_LINKTYPE.get(hatype)
            if linktype is None:
                sock.close()
                self.close()
                raise CaptureError(f"capture on {iface}: hardware type {hatype} is not supported")
            _grow_buffer(sock.ins, self.buffer_bytes)
            sock.ins.setblocking(False)
            self._socks.append((sock, linktype))

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None, count: int | None = None) -> int:
        """Capture until stop(), ``duration`` seconds or ``count`` packets. Returns packets read."""
        if not self._socks:
            self.open()
        deadline = None if duration is None else time.monotonic() + duration
        feed = self.sniffer.feed
        by_fd = {s.ins.fileno(): (s, lt) for s, lt in self._socks}
        n = 0
        next_stats = time.monotonic() + 1.0
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_stats:
                self.read_kernel_stats()
                next_stats = now + 1.0
                self.sniffer.tick(time.time())  # idle flows end even when nothing arrives
            ready, _, _ = select.select(list(by_fd), [], [], 0.2)
            for fd in ready:
                sock, linktype = by_fd[fd]
                # Read the AF_PACKET socket directly: scapy's recv_raw parses ancillary data
                # (VLAN re-insertion, per-packet timestamps) at several times our cost per
                # packet. One clock reading per drained batch is precise enough for flows.
                recv = sock.ins.recv
                ts = time.time()
                while True:
                    try:
                        data = recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        raise CaptureError(f"capture on {sock.iface}: {e.strerror or e}") from e
                    feed(ts, data, linktype)
                    n += 1
                    if count is not None and n >= count:
                        self._stop.set()
                        break
        self.read_kernel_stats()
        return n

    def read_kernel_stats(self) -> None:
        """Add the kernel's received/dropped counters (they reset on every read)."""
        st = self.sniffer.stats
        for sock, _ in self._socks:
            try:
                raw = sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            except OSError:
                continue
            packets, drops = struct.unpack("II", raw)
            st.kernel_packets += packets
            st.kernel_drops += drops

    def close(self) -> None:
        for sock, _ in self._socks:
            with contextlib.suppress(OSError, socket.error):
                sock.close()
        self._socks = []


#: socket(7) SO_RCVBUFFORCE: as root (CAP_NET_ADMIN), exceeds net.core.rmem_max
_SO_RCVBUFFORCE = 33


def _grow_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a large receive buffer; with CAP_NET_ADMIN past rmem_max, else up to it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
