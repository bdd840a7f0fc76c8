"""Client attribution: the /proc socket-owner lookup on real sockets, and its bounds."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from egresswatch.clientinfo import ProcessLookup, _hex_endpoint, is_local_client


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
            late = socket.create_connection(server.getsockname())  # after the scan: rescans
            try:
                assert lookup.owner(*late.getsockname()).pid == os.getpid()  # type: ignore[union-attr]
                assert lookup.scans == 2
            finally:
                late.close()
        finally:
            for c in clients:
                c.close()


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
