"""Client attribution: the /proc socket-owner lookup on real sockets, and its bounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egresswatch.clientinfo import ProcessLookup, _hex_endpoint, is_local_client, socket_inode


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_owner_of_a_real_local_socket_is_this_process(family: int, addr: str) -> None:
    with socket.socket(family) as server:
        server.bind((addr, 0))
        server.listen()
        with socket.socket(family) as client:
            client.connect(server.getsockname()[:2])
            host, port = client.getsockname()[:2]
            found = ProcessLookup().owner(host, port)
    assert found is not None
    assert found.pid == os.getpid()
    assert found.name == Path(f"/proc/{os.getpid()}/comm").read_text().strip()


def test_unknown_socket_has_no_owner_and_costs_no_scan() -> None:
    lookup = ProcessLookup()
    assert lookup.owner("127.0.0.1", 1) is None  # nothing bound there: no inode, no scan
    assert lookup.scans == 0


def test_one_scan_serves_every_socket_that_existed_before_it() -> None:
    lookup = ProcessLookup()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        try:
            owners = [lookup.owner(*c.getsockname()) for c in clients]
            assert [o.pid for o in owners if o] == [os.getpid()] * 3
            assert lookup.scans == 1
            # after the scan, from a process that owned a client before: its own fds are
            # looked at, no new scan of every process
            late = socket.create_connection(server.getsockname())
            try:
                assert lookup.owner(*late.getsockname()).pid == os.getpid()  # type: ignore[union-attr]
                assert lookup.scans == 1
            finally:
                late.close()
        finally:
            for c in clients:
                c.close()


def test_recent_owner_is_checked_newest_descriptor_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process with many open files: its new socket costs a few readlinks, not one each."""
    lookup = ProcessLookup()
    pairs = [socket.socketpair() for _ in range(40)]  # descriptors the lookup must not walk
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        try:
            with socket.create_connection(server.getsockname()) as first:
                assert lookup.owner(*first.getsockname()).pid == os.getpid()  # type: ignore[union-attr]
            links: list[str] = []
            real = os.readlink

            def counted(path: str) -> str:
                links.append(path)
                return real(path)

            monkeypatch.setattr(os, "readlink", counted)
            with socket.create_connection(server.getsockname()) as late:
                conn, _ = server.accept()
                with conn:
                    found = lookup.owner(*late.getsockname(), peer=conn.getsockname())
        finally:
            for a, b in pairs:
                a.close()
                b.close()
    assert found is not None and found.pid == os.getpid()
    assert lookup.scans == 1
    # the newest few of the ~90 descriptors open here (pytest holds some above them)
    assert 1 <= len(links) <= 6, links


@pytest.mark.parametrize(
    ("family", "listen", "connect"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET6, "::1", "::1"),
        (socket.AF_INET6, "::", "127.0.0.1"),  # dual-stack listener: the peer is ::ffff:...
    ],
)
def test_socket_inode_finds_exactly_that_socket(family: int, listen: str, connect: str) -> None:
    with socket.socket(family) as server:
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind((listen, 0))
        server.listen()
        clients = [socket.create_connection((connect, server.getsockname()[1])) for _ in range(2)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            for client, conn in zip(clients, accepted, strict=True):
                # as the proxy sees it: the client's address and the address it reached
                peer, here = conn.getpeername()[:2], conn.getsockname()[:2]
                assert socket_inode(peer, here) == os.fstat(client.fileno()).st_ino
                # the other direction is the proxy's own socket, not the client's
                assert socket_inode(here, peer) == os.fstat(conn.fileno()).st_ino
            assert socket_inode(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
            assert socket_inode(("not an address", 1), ("127.0.0.1", 2)) is None
        finally:
            for s in clients + accepted:
                s.close()


def test_owner_with_the_peer_needs_no_proc_net_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = ProcessLookup()

    def no_table(addr: str, port: int) -> None:
        raise AssertionError("read /proc/net/tcp although the peer was given")

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                monkeypatch.setattr(lookup, "_inode", no_table)
                found = lookup.owner(*client.getsockname(), peer=conn.getsockname())
    assert found is not None and found.pid == os.getpid()


def test_owner_of_another_process_after_a_recent_owner(tmp_path: Path) -> None:
    """The recent-owners shortcut must not attribute a new process's socket to an old one."""
    lookup = ProcessLookup()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as mine:
            conn, _ = server.accept()
            conn.close()
            assert lookup.owner(*mine.getsockname()).pid == os.getpid()  # type: ignore[union-attr]
        ready = tmp_path / "ready"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket, sys, time, pathlib\n"
                f"s = socket.create_connection(('127.0.0.1', {server.getsockname()[1]}))\n"
                f"pathlib.Path({str(ready)!r} + '.tmp').write_text('%s %d' % s.getsockname())\n"
                f"pathlib.Path({str(ready)!r} + '.tmp').rename({str(ready)!r})\n"
                "time.sleep(30)\n",
            ]
        )
        try:
            conn, _ = server.accept()
            with conn:
                deadline = time.monotonic() + 10
                while not ready.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                addr, port = ready.read_text().split()
                found = lookup.owner(addr, int(port), peer=conn.getsockname())
        finally:
            child.kill()
            child.wait()
    assert found is not None and found.pid == child.pid


def test_scan_is_bounded_by_process_count(tmp_path: Path) -> None:
    # A fake /proc with one socket owned by pid 7 beyond the max_pids bound.
    (tmp_path / "net").mkdir()
    # proc(5) layout: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    header = "  sl  local_address rem_address st ... inode\n"
    local = _hex_endpoint("127.0.0.1", 40000)
    line = f"   0: {local} 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 0 0 4242 1\n"
    (tmp_path / "net" / "tcp").write_text(header + line)
    for pid in (5, 7):
        fd = tmp_path / str(pid) / "fd"
        fd.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(f"proc{pid}\n")
    os.symlink("socket:[4242]", tmp_path / "7" / "fd" / "3")
    assert ProcessLookup(tmp_path).owner("127.0.0.1", 40000).name == "proc7"  # type: ignore[union-attr]
    # os.listdir order is arbitrary: bound to a single pid, the owner may be missed, never wrong.
    small = ProcessLookup(tmp_path, max_pids=1).owner("127.0.0.1", 40000)
    assert small is None or small.pid == 7


@pytest.mark.parametrize(
    ("addr", "local"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.77.1.2", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_is_local_client(addr: str | None, local: bool) -> None:
    assert is_local_client(addr) is local


def test_hex_endpoint_matches_proc_format() -> None:
    # /proc/net/tcp prints 127.0.0.1:8080 as 0100007F:1F90 (little-endian words, proc(5)).
    assert _hex_endpoint("127.0.0.1", 8080) == "0100007F:1F90"
    assert _hex_endpoint("::1", 443) == "00000000000000000000000001000000:01BB"
