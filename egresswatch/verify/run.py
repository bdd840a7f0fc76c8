"""Running a command behind the verify gateway: checks, namespaces, the process, teardown."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egresswatch.errors import EgressWatchError
from egresswatch.runtime import Settings
from egresswatch.verify.net import (
    DNS_PORT,
    LINK_PREFIX,
    PROXY_PORT,
    RAW_PORT,
    Ports,
    free_port,
    gateway_ruleset,
    internet_route,
    link_addresses,
    online_ruleset,
)
from egresswatch.verify.profiles import Profile
from egresswatch.verify.report import VerifyReport, aggregate

#: CA bundle variables honoured by OpenSSL, requests, curl and Node (their docs)
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


#: proxy variables dropped from the command's environment: inside the namespace they
#: would point at nothing, and every attempt is intercepted anyway
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
#: set in the environment of verify re-run inside a user namespace (see run_in_userns);
#: "force" outside makes root take that path too (tests)
USERNS_ENV = "EGRESSWATCH_VERIFY_USERNS"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


class VerifyError(EgressWatchError):
    """verify could not set up or run its namespaces (exit 4)."""

    exit_code = 4


class CommandNotFound(EgressWatchError):
    """The command to verify does not exist or is not executable (a usage error)."""

    exit_code = 2


@dataclass(frozen=True)
class VerifyConfig:
    """What :func:`run_verify` needs; built by the command."""

    command: tuple[str, ...]
    settings: Settings = field(default_factory=lambda: Settings(store=False, metrics_listen=None))
    allow: tuple[str, ...] = ()
    profiles: tuple[Profile, ...] = ()
    timeout: float | None = None
    online: bool = False
    confdir: Path = Path("~/.mitmproxy")
    sniffer: bool = True
    verbose: bool = False
    #: how long after the command ends late packets are still collected
    grace: float = 0.5


def preflight(config: VerifyConfig) -> None:
    """Refuse early, with a message that says what to do."""
    if config.online:
        why = internet_route()
        if why is not None:
            raise VerifyError(
                "--online forwards allowed traffic to the internet, but this machine has "
                f"no route to it ({why}); run without --online to answer every attempt "
                "locally"
            )
    if os.geteuid() != 0:
        raise VerifyError(_no_root_message())
    for tool in ("ip", "nft", "setpriv"):
        if shutil.which(tool) is None:
            raise VerifyError(f"'{tool}' is not installed (Debian: iproute2, nftables, util-linux)")


def _no_root_message() -> str:
    userns = Path("/proc/sys/user/max_user_namespaces")
    try:
        allowed = int(userns.read_text().strip()) > 0
    except (OSError, ValueError):
        allowed = False
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    with contextlib.suppress(OSError, ValueError):
        allowed = allowed and int(clone.read_text().strip()) == 1
    if allowed:
        return (
            "verify needs root for its namespaces, and unprivileged user namespaces did not "
            "work here (unshare --user --map-root-user --net failed; a security module may "
            "restrict them): run it with sudo (the command then runs as you) or as root"
        )
    return (
        "verify needs root for its namespaces: run it with sudo (the command then runs as "
        "you) or as root; unprivileged user namespaces are disabled on this kernel"
    )


def userns_works() -> bool:
    """True when this user can make a user namespace with its own network (unshare -rn)."""
    if shutil.which("unshare") is None:
        return False
    try:
        res = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def run_in_userns(argv: Sequence[str]) -> int:
    """Run ``egresswatch ARGV`` again inside a new user+network+mount namespace; its exit code.

    Inside, the process is root of namespaces it owns (user_namespaces(7)): it can make
    network namespaces, veths and nftables tables there, and nothing it does reaches the
    host's network, which it cannot even see.
    """
    cmd = [
        "unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation", "private",
        "--", sys.executable, "-m", "egresswatch", *argv,
    ]  # fmt: skip
    env = {**os.environ, USERNS_ENV: "inside"}
    try:
        return subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:
        return 4


def _userns_mounts(work: Path, nameserver: str) -> bool:
    """Inside our own user+mount namespace: private /run/netns (and /etc/netns) for ip-netns.

    Returns True when /etc/netns is usable; else the command's resolv.conf is bound over
    /etc/resolv.conf of this private mount namespace (only verify and its children see it).
    """

    def mount(*args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise VerifyError(f"mount {' '.join(args)}: {res.stderr.strip()}")

    runns = Path("/run/netns")
    if not runns.is_dir():
        mount("-t", "tmpfs", "tmpfs", "/run")
        runns.mkdir()
    mount("-t", "tmpfs", "tmpfs", str(runns))
    if Path("/etc/netns").is_dir():
        mount("-t", "tmpfs", "tmpfs", "/etc/netns")
        return True
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")
    mount("--bind", str(resolv), "/etc/resolv.conf")
    return False


def _invoking_user() -> tuple[int, int, str] | None:
    """(uid, gid, home) of the user behind sudo, when run through sudo as root."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid or not uid.isdigit() or uid == "0":
        return None
    try:
        home = pwd.getpwuid(int(uid)).pw_dir
    except KeyError:
        home = "/"
    return int(uid), int(gid), home


def ca_bundle(ca: Path, dest: Path) -> Path:
    """The system's trusted roots plus egresswatch's CA, in one PEM file clients can read."""
    parts: list[str] = []
    for cand in SYSTEM_BUNDLES:
        with contextlib.suppress(OSError):
            parts.append(Path(cand).read_text())
            break
    else:
        with contextlib.suppress(ImportError, OSError):
            import certifi

            parts.append(Path(certifi.where()).read_text())
    parts.append(ca.read_text())
    dest.write_text("\n".join(p.rstrip() + "\n" for p in parts))
    dest.chmod(0o644)
    return dest


def command_env(
    base: dict[str, str], bundle: Path, user: tuple[int, int, str] | None
) -> dict[str, str]:
    """The command's environment: the CA bundle in every variable clients read, no proxies."""
    env = {k: v for k, v in base.items() if k.lower() not in PROXY_VARS}
    for var in CA_VARS:
        env[var] = str(bundle)
    if user is not None:
        name = _user_name(user[0])
        env.update(HOME=user[2], USER=name, LOGNAME=name)
    return env


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_verify(config: VerifyConfig) -> VerifyReport:
    """Run ``config.command`` in a fresh namespace behind the verify gateway; return the report.

    Raises VerifyError (setup, gateway start) and ConfigError (policy, catalog, GeoIP).
    Namespaces, veths, the nft table, ``/etc/netns`` files, processes and the work
    directory are removed before this returns or raises, also on SIGINT/SIGTERM.
    """
    from egresswatch import runtime
    from egresswatch.commands.proxy import CA_FILE, ensure_ca
    from egresswatch.netns import NetnsSet

    preflight(config)
    if shutil.which(config.command[0]) is None:
        raise CommandNotFound(f"command not found: {config.command[0]}")
    # The policy, catalog and GeoIP are checked here (ConfigError, exit 3) while the
    # namespaces are built and the gateway starts: both take about a second.
    checked: list[BaseException] = []

    def check() -> None:
        try:
            runtime.build_inspector(config.settings)
        except BaseException as e:  # handed to the main thread
            checked.append(e)

    checker = threading.Thread(target=check, name="verify-config-check", daemon=True)
    checker.start()

    def config_ok() -> None:
        checker.join()
        if checked:
            raise checked[0]

    ca = config.confdir.expanduser() / CA_FILE
    if not ca.exists():  # made once, here: gateways starting at once must not race for it
        ca = ensure_ca(config.confdir)
    user = _invoking_user()
    work = Path(tempfile.mkdtemp(prefix="egresswatch-verify-"))
    work.chmod(0o755)
    records_path = work / "records.jsonl"
    restore = _terminate_as_interrupt()
    started = time.time()
    status: int | None = None
    timed_out = False
    notes: list[str] = []
    try:
        etc_ok = True
        link = link_addresses(os.getpid())
        if os.environ.get(USERNS_ENV) == "inside":
            etc_ok = _userns_mounts(work, link.gw)
            notes.append("ran in an unprivileged user namespace")
        with NetnsSet("ewv") as lab:
            cmd_ns = lab.netns("c")
            # Offline the gateway gets a namespace with no route anywhere; online it lives
            # in ours (the host's), so allowed traffic can really leave.
            gw_ns = None if config.online else lab.netns("g")
            c_if, g_if = lab.veth(cmd_ns, "c", gw_ns, "g")
            lab.addr(cmd_ns, f"{link.cmd}/{LINK_PREFIX}", c_if)
            lab.addr(gw_ns, f"{link.gw}/{LINK_PREFIX}", g_if)
            lab.route(cmd_ns, "default", "via", link.gw)
            if not config.online:
                lab.addr(cmd_ns, f"{link.cmd6}/64", c_if)
                lab.addr(gw_ns, f"{link.gw6}/64", g_if)
                lab.sh("ip", "-n", cmd_ns, "-6", "route", "add", "default", "via", link.gw6)
            host = os.uname().nodename
            if etc_ok:
                cmd_etc = {
                    "resolv.conf": f"nameserver {link.gw}\noptions timeout:2 attempts:1\n",
                    "hosts": f"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {host}\n",
                }
                lab.etc(cmd_ns, cmd_etc)
                if gw_ns is not None:
                    lab.etc(
                        gw_ns, {"resolv.conf": "nameserver 127.0.0.1\n", "hosts": cmd_etc["hosts"]}
                    )
            if config.online:
                ports = Ports(
                    free_port(link.gw, socket.SOCK_STREAM),
                    free_port(link.gw, socket.SOCK_DGRAM),
                    free_port(link.gw, socket.SOCK_STREAM),
                )
                lab.nft(None, online_ruleset(lab.tag, g_if, ports), lab.tag)
            else:
                ports = Ports(PROXY_PORT, DNS_PORT, RAW_PORT)
                lab.nft(gw_ns, gateway_ruleset(lab.tag, g_if), lab.tag)
            cfg = {
                "records": str(records_path),
                "iface": g_if,
                "command_netns": f"/run/netns/{cmd_ns}",
                "proxy_port": ports.proxy,
                "dns_port": ports.dns,
                "raw_port": ports.raw,
                "listen": [link.gw] if config.online else None,
                "online": {
                    "allow": list(config.allow),
                    "profiles": [p.id for p in config.profiles],
                    "policy_given": config.settings.policy is not None,
                }
                if config.online
                else None,
                "confdir": str(config.confdir.expanduser()),
                "sniffer": config.sniffer,
                "verbose": config.verbose,
                "policy": str(config.settings.policy) if config.settings.policy else None,
                "catalogs": [str(p) for p in config.settings.catalogs],
                "geoip_dir": _opt(config.settings.geoip_dir),
                "country_db": _opt(config.settings.country_db),
                "asn_db": _opt(config.settings.asn_db),
                "geo_overrides": _opt(config.settings.geo_overrides),
            }
            (work / "gateway.json").write_text(json.dumps(cfg))
            gw_log = (work / "gateway.log").open("wb")
            gateway = lab.popen(
                gw_ns,
                [sys.executable, "-m", "egresswatch.verify.gateway", str(work / "gateway.json")],
                stdout=subprocess.PIPE,
                stderr=gw_log,
                env=dict(os.environ),
            )
            try:
                _wait_ready(gateway, work / "gateway.log", timeout=60)
            except VerifyError:
                config_ok()  # a configuration error explains a failed start best
                raise
            config_ok()
            bundle = ca_bundle(ca, work / "ca-bundle.pem")
            env = command_env(dict(os.environ), bundle, user)
            try:
                proc = lab.popen(
                    cmd_ns,
                    list(config.command),
                    env=env,
                    user=user[0] if user else None,
                    group=user[1] if user else None,
                )
            except EgressWatchError as e:
                raise VerifyError(str(e)) from e
            try:
                status = proc.wait(config.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                notes.append(
                    f"the command did not finish within {config.timeout:g} s and was killed"
                )
                lab.stop(proc, timeout=2)
                status = proc.returncode
            # Whatever the command left running in its namespace goes now (daemons ...).
            lab.kill_all(cmd_ns)
            time.sleep(config.grace)
            lab.stop(gateway)
            gw_log.close()
            if gateway.returncode not in (0, -signal.SIGTERM, None):
                notes.append(f"the gateway exited with status {gateway.returncode}")
            if status == 127 and not records_path.exists():
                notes.append(f"the command could not be started: {config.command[0]}")
        records = _read_records(records_path)
        if records and "truncated" in records[-1]:
            notes.append(
                f"more than {records.pop()['truncated']} attempts: the rest were not recorded"
            )
    except KeyboardInterrupt:
        raise VerifyError("interrupted; the namespaces and processes were removed") from None
    finally:
        restore()
        if os.environ.get("EGRESSWATCH_VERIFY_KEEP"):  # debugging: keep the gateway's log
            print(f"egresswatch verify: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = VerifyReport(
        command=redact_command(config.command),
        destinations=aggregate(
            records,
            allow=config.allow,
            profiles=config.profiles,
            policy_given=config.settings.policy is not None,
        ),
        started=started,
        finished=time.time(),
        exit_status=status,
        timed_out=timed_out,
        profiles=[p.id for p in config.profiles],
        allow=list(config.allow),
        policy=str(config.settings.policy) if config.settings.policy else None,
        notes=notes,
    )
    return report


def redact_command(argv: Sequence[str]) -> list[str]:
    """The command line for reports: an argument carrying a secret is replaced whole.

    Command lines carry keys too (``-H 'authorization: Bearer sk-…'``); the report keeps
    only the classifier's redacted form of what it found there.
    """
    from egresswatch.classify.findings import Findings, find_sensitive, scan_headers

    out: list[str] = []
    for arg in argv:
        found = find_sensitive(arg, "argv")
        name, sep, value = arg.partition(":")
        if sep and name.strip() and " " not in name.strip():
            # curl -H / wget --header: a secret header is judged as the header it becomes
            headers: Findings = {}
            with contextlib.suppress(Exception):
                scan_headers([(name.strip().lower(), value.strip())], headers)
            found += [f for f in headers.values() if f not in found]
        if found:
            out.append("<redacted " + ", ".join(f"{f.kind} {f.redacted}" for f in found) + ">")
        else:
            out.append(arg)
    return out


def _opt(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _read_records(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Wait for the gateway's READY line; VerifyError with its log when it fails."""
    assert proc.stdout is not None
    ready = threading.Event()
    stdout = proc.stdout

    def reader() -> None:
        for line in iter(stdout.readline, b""):
            if line.strip() == b"READY":
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True, name="verify-gateway-out").start()
    if not ready.wait(timeout) or proc.poll() is not None:
        tail = ""
        with contextlib.suppress(OSError):
            tail = log_path.read_text(errors="replace")[-2000:].strip()
        raise VerifyError(f"the verify gateway did not start: {tail or 'no output'}")


def _terminate_as_interrupt() -> Any:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so teardown runs. Returns a restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
