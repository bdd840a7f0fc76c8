"""Network namespaces that are always removed again: the plumbing under ``egresswatch verify``.

A :class:`NetnsSet` owns what it creates (namespaces, veth pairs made directly
inside them, one nftables table per namespace, ``/etc/netns/NS`` files and the
processes it starts) and removes all of it in :meth:`NetnsSet.close`, also when
the caller raised or was interrupted. Every command goes through
:meth:`NetnsSet.sh` (one place that shells out, recorded in ``commands`` so tests
can check exactly what ran), in the manner of sshuttle's firewall backends.

Names are ``<tag>-<role>`` for namespaces and ``<tag><role>`` for interfaces; the
tag is unique per process (prefix + pid) and short enough for IFNAMSIZ (15
characters, ``include/uapi/linux/if.h``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from egresswatch.errors import EgressWatchError

#: where ``ip netns exec`` finds per-namespace resolv.conf/hosts (ip-netns(8))
ETC_NETNS = Path("/etc/netns")
#: IFNAMSIZ - 1 (include/uapi/linux/if.h)
MAX_IFNAME = 15


class NetnsError(EgressWatchError):
    """A namespace, veth or nftables step failed (not root, or a kernel feature missing)."""

    exit_code = 4


@dataclass
class NetnsSet:
    """Namespaces, veths, nft tables and processes of one run, removed together."""

    prefix: str = "ew"
    tag: str = ""
    commands: list[list[str]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    tables: list[tuple[str | None, str]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = self.tag or f"{self.prefix}{os.getpid() % 100000}"
        if len(self.tag) + 2 > MAX_IFNAME:
            raise NetnsError(f"namespace tag too long for interface names: {self.tag!r}")

    # -- building ---------------------------------------------------------------------------

    def sh(
        self,
        *argv: str,
        ns: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 20,
    ) -> subprocess.CompletedProcess[str]:
        """Run one command (inside namespace ``ns``); raise NetnsError when it fails."""
        cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        self.commands.append(cmd)
        try:
            res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetnsError(f"{' '.join(cmd)}: {e}") from e
        if check and res.returncode != 0:
            raise NetnsError(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.returncode}")
        return res

    def netns(self, role: str) -> str:
        """Create namespace ``<tag>-<role>`` with loopback up."""
        name = f"{self.tag}-{role}"
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, name_a: str, ns_b: str | None, name_b: str) -> tuple[str, str]:
        """A veth pair created inside the two namespaces (``ns_b`` None: this process's own).

        Deleting ``ns_a`` deletes the pair, also the end that lives elsewhere.
        """
        a, b = f"{self.tag}{name_a}", f"{self.tag}{name_b}"
        for ifname in (a, b):
            if len(ifname) > MAX_IFNAME:
                raise NetnsError(f"interface name too long: {ifname!r}")
        # "netns PID" names the namespace of that process (ip-link(8)): ours.
        peer_ns = ns_b if ns_b is not None else str(os.getpid())
        self.sh(
            "ip", "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", peer_ns
        )
        self.sh("ip", "-n", ns_a, "link", "set", a, "up")
        if ns_b is None:
            self.sh("ip", "link", "set", b, "up")
        else:
            self.sh("ip", "-n", ns_b, "link", "set", b, "up")
        return a, b

    def addr(self, ns: str | None, cidr: str, dev: str) -> None:
        # nodad: an address in a two-host link needs no duplicate detection (RFC 4862 §5.4)
        extra = ["nodad"] if ":" in cidr else []
        where = ["-n", ns] if ns is not None else []
        self.sh("ip", *where, "addr", "add", cidr, "dev", dev, *extra)

    def route(self, ns: str, *spec: str) -> None:
        self.sh("ip", "-n", ns, "route", "add", *spec)

    def etc(self, ns: str, files: Mapping[str, str]) -> None:
        """Files ``ip netns exec`` bind-mounts over /etc inside ``ns`` (resolv.conf, hosts)."""
        d = ETC_NETNS / ns
        try:
            d.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (d / name).write_text(text)
        except OSError as e:
            raise NetnsError(f"cannot write {d}: {e.strerror or e}") from e

    def nft(self, ns: str | None, ruleset: str, table: str, family: str = "inet") -> None:
        """Load a ruleset defining ``family table``; close() deletes that one table."""
        self.tables.append((ns, f"{family} {table}"))
        self.sh("nft", "-f", "-", ns=ns, input=ruleset)

    def popen(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns`` in its own session (so it can be killed as a group).

        ``user``/``group``: drop to this uid/gid after entering the namespace (the
        namespace is entered as root by ``ip netns exec``; the program runs as them).
        """
        enter = ["ip", "netns", "exec", ns] if ns is not None else []
        cmd = [*enter, *argv]
        if user is not None:
            # setpriv(1) drops uid, gid and supplementary groups in one exec.
            cmd = [
                *enter,
                "setpriv", f"--reuid={user}", f"--regid={group if group is not None else user}",
                "--clear-groups", "--", *argv,
            ]  # fmt: skip
        self.commands.append(cmd)
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=stdout,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as e:
            raise NetnsError(f"cannot start {argv[0]}: {e.strerror or e}") from e
        self.procs.append(proc)
        return proc

    # -- teardown ---------------------------------------------------------------------------

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout`` seconds."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def pids(self, ns: str) -> list[int]:
        """Processes running inside ``ns``."""
        out = self.sh("ip", "netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self, ns: str) -> None:
        """SIGKILL everything left in ``ns`` (all of it was started inside it by this run)."""
        for _ in range(3):
            pids = self.pids(ns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def close(self) -> None:
        """Remove everything; keeps going past errors and raises NetnsError at the end."""
        errors: list[str] = []
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as e:  # keep tearing down
                errors.append(f"stop {proc.args!r}: {e}")
        self.procs.clear()
        for ns, table in reversed(self.tables):
            self.sh("nft", "delete", "table", *table.split(), ns=ns, check=False)
        self.tables.clear()
        for ns in reversed(self.namespaces):
            self.kill_all(ns)
            res = self.sh("ip", "netns", "del", ns, check=False)
            if res.returncode != 0:
                errors.append(res.stderr.strip())
            shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        self.namespaces.clear()
        if errors:
            raise NetnsError("teardown: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
