"""Which process in the command's namespace owns a socket (attribution)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    name: str


class NetnsOwners:
    """Finds the process in the command's namespace that owns a socket with a local port.

    The gateway runs in another namespace, so its own ``/proc/net/*`` shows other
    sockets: the tables are read through ``/proc/<pid>/net/`` of a process inside
    the command namespace (proc(5)); socket inodes are global, so the fd scan
    works from here. Only processes in that namespace are considered.
    """

    def __init__(self, netns_path: str | None, proc: str = "/proc", max_pids: int = 4096) -> None:
        self.proc = Path(proc)
        self.max_pids = max_pids
        self.ns_ino: int | None = None
        if netns_path:
            with contextlib.suppress(OSError):
                self.ns_ino = os.stat(netns_path).st_ino

    def _members(self) -> list[int]:
        if self.ns_ino is None:
            return []
        out: list[int] = []
        try:
            pids = [int(p) for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return out
        for pid in pids[: self.max_pids]:
            try:
                if os.stat(self.proc / str(pid) / "ns" / "net").st_ino == self.ns_ino:
                    out.append(pid)
            except OSError:
                continue
        return out

    def owner(self, transport: str, port: int | None) -> Owner | None:
        """The owner of the command-side socket bound to local ``port`` (tcp or udp)."""
        if not port:
            return None
        members = self._members()
        if not members:
            return None
        inodes = self._inodes(members[0], transport, port)
        if not inodes:
            return None
        for pid in members:
            fd_dir = self.proc / str(pid) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    return Owner(pid, _comm(self.proc, pid))
        return None

    def _inodes(self, anchor: int, transport: str, port: int) -> set[int]:
        want = f":{port:04X}"
        found: set[int] = set()
        for table in (transport, transport + "6"):
            try:
                lines = (self.proc / str(anchor) / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                if len(f) > 9 and f[1].endswith(want) and f[9] != "0":
                    found.add(int(f[9]))
        return found


def _comm(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"
