"""``egresswatch run``: the proxy, the sniffer, the store, metrics and alerts in one process.

One :class:`Monitor` builds the parts once (inspector, sinks with the store
writer, alert channels and the /metrics listener), then runs mitmproxy on the
main thread's event loop and the sniffer's capture loop on a thread of its own,
and watches them:

- a sniffer whose capture fails is restarted (``run.restarts`` times per
  :data:`RESTART_WINDOW`), then the whole monitor exits with the reason;
- a proxy that stops on its own ends the whole monitor with the reason (exit 4):
  never a half-running monitor that looks healthy.

Signals (installed on the event loop, so handlers never run mid-hook):

- SIGTERM / SIGINT: stop the sniffer, stop accepting connections, wait up to
  ``run.shutdown_grace`` seconds for requests in flight, then flush the store and
  deliver pending alerts; exit 0. A second signal skips the wait.
- SIGHUP: reload the policy and catalog files and swap them in for new flows;
  open connections stay up. A broken file is reported and the old policy kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egresswatch.bypass import BypassWatch
from egresswatch.errors import EgressWatchError
from egresswatch.model import Decision, FlowClosed, Mode, Observation

if TYPE_CHECKING:
    from egresswatch.config import RunConfig
    from egresswatch.inspector import Inspector
    from egresswatch.runtime import Settings, Sinks
    from egresswatch.sniffer import Sniffer
    from egresswatch.sniffer.capture import LiveCapture

#: seconds over which sniffer restarts are counted against ``run.restarts``
RESTART_WINDOW = 300.0
#: how often the supervisor looks at its parts
WATCH_INTERVAL = 0.25


class RunError(EgressWatchError):
    """A part of the monitor could not start or stopped on its own."""

    exit_code = 4


class LiveInspector:
    """The inspector the sensors hold: one reference swapped on reload (SIGHUP).

    The proxy addon and the sniffer call :meth:`inspect` and read ``policy``; a swap
    is one attribute assignment, atomic for both the event loop and the capture
    thread, so a flow is judged wholly by the old or wholly by the new policy.
    """

    def __init__(self, inspector: Inspector) -> None:
        self._current = inspector
        self.reloads = 0

    @property
    def current(self) -> Inspector:
        return self._current

    @property
    def policy(self) -> Any:
        return self._current.policy

    @property
    def catalog(self) -> Any:
        return self._current.catalog

    @property
    def geo(self) -> Any:
        return self._current.geo

    def inspect(self, obs: Observation) -> Decision:
        return self._current.inspect(obs)

    def swap(self, inspector: Inspector) -> None:
        self._current = inspector
        self.reloads += 1


class SharedSink:
    """The sinks as each sensor sees them: ``close`` is a no-op, the monitor closes once.

    mitmproxy's ``done`` hook closes the addon's sink; with two sensors feeding one
    store, the writer must be flushed only after both have stopped.
    """

    def __init__(self, sinks: Sinks | BypassWatch) -> None:
        self._sinks = sinks

    def record(self, decision: Decision) -> None:
        self._sinks.record(decision)

    def flow_closed(self, event: FlowClosed) -> None:
        self._sinks.flow_closed(event)

    def close(self) -> None:
        pass


class InFlight:
    """mitmproxy addon: HTTP requests between their headers and their answer (or error).

    While draining (after SIGTERM), answers carry ``Connection: close`` (RFC 9112 section
    9.6), so a keep-alive client finishes the request it sent and then goes away instead
    of keeping the drain busy with new requests until the grace time runs out.
    """

    def __init__(self) -> None:
        self._flows: dict[str, float] = {}
        self._draining = False

    def requestheaders(self, flow: Any) -> None:
        self._flows[flow.id] = time.monotonic()

    def responseheaders(self, flow: Any) -> None:
        self._close_after(flow)

    def response(self, flow: Any) -> None:
        self._close_after(flow)
        self._flows.pop(flow.id, None)

    def error(self, flow: Any) -> None:
        self._flows.pop(flow.id, None)

    def _close_after(self, flow: Any) -> None:
        if (
            self._draining
            and flow.response is not None
            and flow.request.http_version
            in (
                "HTTP/1.1",
                "HTTP/1.0",
            )
        ):
            flow.response.headers["connection"] = "close"

    def _count(self) -> int:
        return len(self._flows)


@dataclass
class _SnifferPart:
    """The capture thread and what is needed to restart it."""

    sniffer: Sniffer
    interfaces: list[str]
    bpf: str
    capture: LiveCapture | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None
    restarts: list[float] = field(default_factory=list)

    def open(self) -> None:
        """Open the capture sockets: no permission, no interface, a bad filter raise here."""
        from egresswatch.sniffer.capture import LiveCapture

        cap = LiveCapture(self.sniffer, self.interfaces, self.bpf)
        cap.open()
        self.capture, self.error = cap, None

    def start(self) -> None:
        """Capture on a thread (opening the sockets first if they are not open)."""
        if self.capture is None:
            self.open()
        self.thread = threading.Thread(target=self._loop, name="egresswatch-sniffer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        cap = self.capture
        assert cap is not None
        try:
            cap.run()
        except BaseException as e:  # reported and acted on by the watcher
            self.error = e
        finally:
            cap.close()
            self.capture = None  # a restart opens new sockets

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        cap = self.capture
        if cap is not None:
            cap.stop()
        if self.thread is not None:
            self.thread.join(timeout)
        if cap is not None and not self.alive():
            cap.close()  # opened but never run (run --check), or already closed: harmless
            self.capture = None


class Monitor:
    """Builds and supervises every part of ``egresswatch run`` (see the module docstring)."""

    def __init__(
        self, config: RunConfig, *, out: Callable[[str], None] = print, verbose: bool = False
    ) -> None:
        self.config = config
        self.settings: Settings = config.settings()
        self.out = out
        self.verbose = verbose
        self.inspector: LiveInspector | None = None
        self.sinks: Sinks | None = None
        #: with both sensors: the sinks behind the bypass watch (what the sensors feed)
        self.bypass: BypassWatch | None = None
        self.sniff: _SnifferPart | None = None
        self.inflight = InFlight()
        self.master: Any = None
        self.ca: Path | None = None
        self._stop = asyncio.Event()
        self._hurry = False
        self._failure: str | None = None
        self._reloading = False
        self._closed = False
        #: when the banner was printed (UNIX time), for ``status``
        self._started = 0.0
        self._aborting: asyncio.Future[None] | None = None

    # -- building ----------------------------------------------------------------------

    def build(self, *, check: bool = False) -> None:
        """Load data and open the store, metrics and alerts; raises EgressWatchError.

        ``check``: load and open everything but listen on nothing (``run --check`` next to
        a running monitor must not fight it for the metrics port).
        """
        from prometheus_client import CollectorRegistry

        from egresswatch import runtime

        c = self.config
        if not check:
            check_not_running(c.pid_file())
        if not c["proxy.enabled"] and not c["sniffer.interfaces"]:
            raise RunError(
                "nothing to run: the proxy is disabled and no sniffer interface is configured"
            )
        try:
            inspector = runtime.build_inspector(self.settings)
        except EgressWatchError:
            raise
        except (OSError, ValueError) as e:  # a data file the loaders did not wrap
            raise EgressWatchError(f"cannot load the inspector's data: {e}") from e
        self.inspector = LiveInspector(inspector)
        if c["proxy.enabled"]:
            from egresswatch.commands.proxy import ensure_ca

            self.ca = ensure_ca(c["proxy.confdir"])
        settings = (
            dataclasses.replace(self.settings, metrics_listen=None) if check else self.settings
        )
        self.sinks = runtime.build_sinks(settings, CollectorRegistry(), inspector)
        if c["proxy.enabled"] and c["sniffer.interfaces"]:
            self.bypass = BypassWatch(self.sinks, self._on_bypass)
        try:
            self._open_sniffer()
        except BaseException:
            self.sinks.close()
            raise

    def _feed(self) -> Sinks | BypassWatch:
        """What the sensors hand their decisions to."""
        assert self.sinks is not None
        return self.bypass if self.bypass is not None else self.sinks

    def _on_bypass(self, decision: Decision) -> None:
        """A flow went around the proxy: alert (the store records the alert) and count it."""
        assert self.sinks is not None
        if self.sinks.alerts is not None:
            self.sinks.alerts.record(decision)
        self.sinks.metrics.bypass(decision)

    def _proxy_config(self) -> Any:
        from egresswatch.commands.proxy import ProxyConfig

        c = self.config
        return ProxyConfig(
            settings=self.settings,
            mode=c["proxy.mode"],
            listen=c["proxy.listen"],
            dns_listen=c["proxy.dns_listen"],
            confdir=c["proxy.confdir"],
            passthrough=tuple(c["proxy.passthrough"]),
            allow_quic=c["proxy.allow_quic"],
            process_lookup=c["proxy.process_lookup"],
            upstream_ca=c["proxy.upstream_ca"],
            verbose=self.verbose,
        )

    def _open_sniffer(self) -> None:
        """Build the sniffer and open its sockets (at build time: errors before anything runs)."""
        from egresswatch.sniffer import Sniffer, SnifferConfig
        from egresswatch.sniffer.capture import DEFAULT_BPF

        c = self.config
        if not c["sniffer.interfaces"]:
            return
        assert self.inspector is not None and self.sinks is not None
        sniffer = Sniffer(
            self.inspector.inspect,
            SharedSink(self._feed()),
            config=SnifferConfig(
                idle_timeout=c["sniffer.idle_timeout"], max_flows=c["sniffer.max_flows"]
            ),
        )
        self.sniff = _SnifferPart(
            sniffer, list(c["sniffer.interfaces"]), c["sniffer.bpf"] or DEFAULT_BPF
        )
        self.sinks.metrics.watch_sniffer(lambda: self.sniff.sniffer.stats if self.sniff else None)
        self.sniff.open()

    # -- running -----------------------------------------------------------------------

    def run(self) -> int:
        """Build, run until a signal or a failure, shut down cleanly. Returns the exit code."""
        self.build()
        try:
            asyncio.run(self._main())
        except SystemExit as e:  # mitmproxy's errorcheck exits on start-up errors
            if e.code not in (0, None):
                self._failure = self._failure or self._proxy_start_error()
        except EgressWatchError as e:  # a part failed while starting (capture, options)
            self._failure = self._failure or str(e)
        except Exception as e:  # a bug in a part: still one clear line, and a clean close
            self._failure = self._failure or f"a part stopped unexpectedly: {type(e).__name__}: {e}"
        finally:
            self.close()
        if self._failure:
            raise RunError(self._failure)
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            if self.sniff is not None:
                self.sniff.start()
            if self.config["proxy.enabled"]:
                from egresswatch.commands.proxy import build_master

                assert self.sinks is not None
                self.master = build_master(
                    self._proxy_config(), self.inspector, SharedSink(self._feed())
                )
                self.master.addons.add(self.inflight)
                watcher = asyncio.create_task(self._watch())
                watcher.add_done_callback(self._watcher_done)
                try:
                    await self.master.run()
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                if not self._stop.is_set():
                    self._failure = self._failure or self._proxy_start_error()
            else:
                await self._watch()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _watch(self) -> None:
        """Wait until the parts are up, announce them, then supervise until told to stop."""
        if self.master is not None:
            while not self._proxy_listening():
                if self._stop.is_set():
                    break
                await asyncio.sleep(0.02)
        if not self._stop.is_set():
            self.announce()
            self._write_state()
        while not self._stop.is_set():
            self._check_sniffer()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), WATCH_INTERVAL)
        await self._drain()

    def _watcher_done(self, task: asyncio.Task[None]) -> None:
        """The supervisor itself failed: stop the proxy too rather than run unwatched."""
        if task.cancelled() or task.exception() is None:
            return
        e = task.exception()
        self._failure = self._failure or f"the supervisor failed: {type(e).__name__}: {e}"
        self._stop.set()
        self._hurry = True
        self._aborting = asyncio.ensure_future(self._drain())

    def _proxy_listening(self) -> bool:
        ps = self.master.addons.get("proxyserver")
        return bool(ps is not None and ps.is_running and ps.listen_addrs())

    def _proxy_start_error(self) -> str:
        listen = self.config["proxy.listen"]
        where = f"{self.config['proxy.mode']} proxy on {listen[0]}:{listen[1]}"
        ec = self.master.addons.get("errorcheck") if self.master is not None else None
        records = getattr(getattr(ec, "logger", None), "has_errored", None) or []
        details = "; ".join(r.getMessage() for r in records)
        if details:
            return f"the {where} could not start: {details}"
        return f"the {where} stopped on its own"

    def _check_sniffer(self) -> None:
        part = self.sniff
        if part is None or part.alive():
            return
        now = time.monotonic()
        part.restarts = [t for t in part.restarts if now - t < RESTART_WINDOW]
        reason = f"{part.error}" if part.error else "the capture loop ended"
        if len(part.restarts) >= self.config["run.restarts"]:
            self._fail(
                f"the sniffer on {', '.join(part.interfaces)} failed "
                f"{len(part.restarts) + 1} times in {RESTART_WINDOW:.0f} s; last: {reason}"
            )
            return
        part.restarts.append(now)
        self.out(f"egresswatch: sniffer stopped ({reason}); restarting")
        try:
            part.start()
        except EgressWatchError as e:
            part.error = e  # counted on the next look

    def _fail(self, message: str) -> None:
        self._failure = message
        self.out(f"egresswatch: {message}; stopping everything")
        self._hurry = True
        self._stop.set()

    def request_stop(self, why: str = "stop") -> None:
        """Begin a clean shutdown (signal handler); a second request skips the grace wait."""
        if self._stop.is_set():
            self._hurry = True
            return
        self.out(f"egresswatch: {why}: finishing flows in flight, flushing the store")
        self._stop.set()  # the watcher drains, then shuts mitmproxy down

    async def _drain(self) -> None:
        """Stop capture and listening, let requests in flight finish, stop mitmproxy."""
        if self.sniff is not None:
            await asyncio.to_thread(self.sniff.stop)
        if self.master is None:
            return
        self.inflight._draining = True
        ps = self.master.addons.get("proxyserver")
        if ps is not None and ps.is_running:
            with contextlib.suppress(Exception):
                await ps.servers.update([])  # closes the listening sockets only
        started = time.monotonic()
        deadline = started + self.config["run.shutdown_grace"]
        while self.inflight._count() and not self._hurry and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = self.inflight._count()
        took = time.monotonic() - started
        if left:
            self.out(
                f"egresswatch: {left} request(s) still in flight after {took:.1f} s; closing them"
            )
        else:
            self.out(f"egresswatch: no request in flight ({took:.2f} s after closing the listener)")
        self.master.shutdown()

    def request_reload(self) -> None:
        """SIGHUP: reload policy and catalog off the event loop, then swap them in."""
        if self._reloading or self._stop.is_set():
            return
        self._reloading = True
        task = asyncio.get_running_loop().create_task(self._reload())
        task.add_done_callback(lambda _: setattr(self, "_reloading", False))

    async def _reload(self) -> None:
        try:
            new = await asyncio.to_thread(self.reload_inspector)
        except EgressWatchError as e:
            self.out(f"egresswatch: reload failed, keeping the current policy: {e}")
            return
        assert self.inspector is not None
        self.inspector.swap(new)
        mode = getattr(new.policy, "mode", None)
        if mode is Mode.ENFORCE and self.master is not None:
            # No upstream contact before a verdict (lab-notes.md); applies to new connections.
            self.master.options.update(connection_strategy="lazy")
        self.out(
            f"egresswatch: reloaded policy ({self._policy_name()}, mode {mode}) and catalog "
            f"({len(getattr(new.catalog, 'services', ()))} services)"
        )
        self._write_state()

    def reload_inspector(self) -> Inspector:
        """A new inspector with freshly read policy and catalog files, same GeoIP."""
        from egresswatch.catalog import Catalog
        from egresswatch.inspector import Inspector
        from egresswatch.runtime import load_policy

        assert self.inspector is not None
        try:
            catalog = Catalog.load(self.settings.catalogs)
            policy = load_policy(self.settings)
        except EgressWatchError:
            raise
        except (OSError, ValueError) as e:
            raise EgressWatchError(f"cannot reload: {e}") from e
        return Inspector(self.inspector.geo, catalog, policy)

    def close(self) -> None:
        """Stop the sniffer, hand its open flows to the store, flush and close the sinks."""
        if self._closed:
            return
        self._closed = True
        if self.sniff is not None:
            self.sniff.stop()
            self.sniff.sniffer.close()  # finishes open flows: their decisions reach the store
        if self.bypass is not None:
            self.bypass.close()  # decides the flows it still holds, then closes the sinks
        elif self.sinks is not None:
            self.sinks.close()
        self._remove_state()

    # -- what the console and `status` see -------------------------------------------------

    def _policy_name(self) -> str:
        p = self.config["policy.file"]
        return str(p) if p else "shipped default"

    def banner(self, *, check: bool = False) -> list[str]:
        """Where everything is: proxy, CA and how to trust it, metrics, database, policy, GeoIP.

        ``check``: the same report for ``run --check``, which starts nothing.
        """
        from egresswatch.store.engine import default_url

        c, s = self.config, self.settings
        assert self.inspector is not None
        lines = [
            f"egresswatch {_version()} "
            + (
                f"configuration check for sensor {s.sensor_name!r}"
                if check
                else f"running as sensor {s.sensor_name!r} (pid {os.getpid()})"
            )
        ]
        if c.path is not None:
            lines.append(f"Config: {c.path}")
        else:
            lines.append("Config: none (embedded defaults; see egresswatch run --print-config)")
        if c["proxy.enabled"]:
            from egresswatch.commands.proxy import trust_hints

            host, port = c["proxy.listen"]
            lines.append(f"Proxy: {c['proxy.mode']} on {_hostport(host, port)}")
            if self.ca is not None:
                lines += trust_hints(self.ca, c["proxy.listen"], c["proxy.mode"].split(":")[0])
                lines.append("More platforms: egresswatch ca --help")
            if c["proxy.dns_listen"] is not None:
                lines.append(
                    f"DNS: serving on {_hostport(*c['proxy.dns_listen'])} (UDP and TCP; "
                    "DoH canary answered NXDOMAIN)"
                )
        else:
            lines.append("Proxy: off")
        if c["sniffer.interfaces"]:
            lines.append(f"Sniffer: capturing on {', '.join(c['sniffer.interfaces'])}")
        else:
            lines.append("Sniffer: off (no sniffer.interfaces configured)")
        if s.metrics_listen:
            lines.append(f"Metrics: http://{_hostport(*s.metrics_listen)}/metrics")
        else:
            lines.append("Metrics: off")
        if s.store:
            from egresswatch import runtime

            writer = getattr(self.sinks, "writer", None)
            lines.append(
                f"Database: {_display_url(s.db_url or default_url())}"
                + (f", {runtime.writer_description(writer, s)}" if writer is not None else "")
            )
        else:
            lines.append("Database: off (nothing is recorded)")
        policy = self.inspector.policy
        lines.append(
            f"Policy: {self._policy_name()}, mode {getattr(policy, 'mode', '?')}"
            + (" (overridden)" if s.mode is not None else "")
        )
        catalogs = ", ".join(str(p) for p in s.catalogs)
        lines.append(
            f"Catalog: {len(self.inspector.catalog.services)} services"
            + (f" (shipped + {catalogs})" if catalogs else " (shipped)")
        )
        lines += self._geoip_lines()
        if check:
            lines.append("Check passed: configuration, policy, catalog, GeoIP and database load.")
        else:
            lines.append("Ready. SIGTERM/Ctrl-C stops cleanly; SIGHUP reloads policy and catalog.")
        return lines

    def _geoip_lines(self) -> list[str]:
        assert self.inspector is not None
        geo = self.inspector.geo
        out: list[str] = []
        dbs = geo.databases() if hasattr(geo, "databases") else []
        for db in dbs:
            roles = "+".join(db.roles)
            out.append(
                f"GeoIP: {db.type} ({roles}) {db.path}, built {db.built:%Y-%m-%d}, "
                f"{db.age_days:.0f} days old" + (" - STALE, update it" if db.stale else "")
            )
        overrides = getattr(getattr(geo, "overrides", None), "path", None)
        if overrides:
            out.append(f"GeoIP: overrides {overrides}")
        if getattr(geo, "registry", False):
            from egresswatch.geo.mmdb import registry_version

            out.append(
                f"GeoIP: RIR registry fallback (iptocc {registry_version()}: its data is as "
                "old as the installed package)"
                + ("" if dbs else " only - see 'egresswatch geoip --help' for databases")
            )
        if not out:
            out.append("GeoIP: none (every address country is unknown)")
        return out

    def announce(self) -> None:
        for line in self.banner():
            self.out(line)

    def state(self) -> dict[str, Any]:
        """What ``egresswatch status`` reads beside the pid file."""
        from egresswatch.store.engine import default_url

        c, s = self.config, self.settings
        policy = self.inspector.policy if self.inspector else None
        return {
            "pid": os.getpid(),
            "started": self._started,
            "sensor": s.sensor_name,
            "config": str(c.path) if c.path else None,
            "proxy": (
                f"{c['proxy.mode']} {_hostport(*c['proxy.listen'])}" if c["proxy.enabled"] else None
            ),
            "sniffer": list(c["sniffer.interfaces"]),
            "metrics_url": (
                f"http://{_hostport(*s.metrics_listen)}/metrics" if s.metrics_listen else None
            ),
            "database": (s.db_url or default_url()) if s.store else None,
            "policy": self._policy_name(),
            "mode": str(getattr(policy, "mode", "")),
            "reloads": self.inspector.reloads if self.inspector else 0,
            "ca": str(self.ca) if self.ca else None,
        }

    def _write_state(self) -> None:
        self._started = self._started or time.time()
        pid_file = self.config.pid_file()
        try:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{os.getpid()}\n")
            # 0600: a server database URL may carry a password (as the config file does).
            fd = os.open(state_path(pid_file), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.state(), indent=2) + "\n")
        except OSError as e:
            self.out(f"egresswatch: cannot write {pid_file}: {e} ('status' will not find us)")

    def _remove_state(self) -> None:
        pid_file = self.config.pid_file()
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text().split()[0]) == os.getpid():
                pid_file.unlink()
                state_path(pid_file).unlink(missing_ok=True)


def state_path(pid_file: Path) -> Path:
    """The JSON beside the pid file: addresses, database, policy of the running monitor."""
    return pid_file.with_name(pid_file.name + ".json")


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive (a stale file answers None)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def check_not_running(pid_file: Path) -> None:
    pid = running_pid(pid_file)
    if pid is not None and pid != os.getpid():
        raise RunError(
            f"another egresswatch run is active (pid {pid}, {pid_file}); stop it or give "
            "this one its own run.pid_file"
        )


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _display_url(url: str) -> str:
    """A database URL for the console: the file for SQLite, no password for servers."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///") + " (SQLite)"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _version() -> str:
    from egresswatch import __version__

    return __version__
