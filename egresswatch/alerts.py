"""Alerts: a sink that raises deduplicated alerts and delivers them off the hot path.

A decision whose verdict is ``alert``, ``block`` or ``would-block`` raises an
alert. Occurrences with the same rule, client and service inside ``window``
seconds fold into **one** alert with a count: the first occurrence is
delivered at once (a security alert must not wait a minute), and when the
window ends with more occurrences folded in, one follow-up with the same alert
id and the final count is delivered (``update: true``). Nothing is lost, and a
burst of 10,000 blocked requests is two notifications, not 10,000.

Threads: :meth:`AlertSink.record` only puts a small tuple on a bounded queue
(never blocks; a full queue is counted in ``dropped``). One dispatcher thread
deduplicates; each channel has its own delivery thread with a bounded retry
heap, so a webhook that hangs or fails delays neither traffic nor the other
channels. Failed attempts are retried with exponential backoff; every state
change (pending, retrying, delivered, failed, dropped) is reported to the
callbacks registered with :meth:`AlertSink.on_state` (the store, the metrics).

Channels: :class:`LogChannel` (JSON lines), :class:`WebhookChannel` (JSON POST,
or a Slack incoming-webhook body) and :class:`SyslogChannel` (RFC 5424).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import heapq
import itertools
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from egresswatch.errors import ConfigError
from egresswatch.model import UNKNOWN_COUNTRY, Action, Decision, FlowClosed

if TYPE_CHECKING:
    from egresswatch.store import Store

#: occurrences waiting for the dispatcher; beyond this record() counts a drop
DEFAULT_QUEUE_SIZE = 10_000
#: alerts waiting (or being retried) per channel; beyond this an alert is "dropped"
DEFAULT_CHANNEL_QUEUE = 1_000
#: occurrences that only fold into an open window wait for the dispatcher's next pass;
#: at this many waiting, record() wakes it anyway (bounds the queue and the lag)
WAKE_BATCH = 256
#: seconds: an occurrence this close to its window's end wakes the dispatcher, so it
#: is folded before the window expires (the dispatcher drains, then expires)
FOLD_GUARD = 0.1
#: seconds: the longest the dispatcher sleeps when occurrences are still queued after a
#: pass (one appended between its drain and a window's expiry has no wake-up of its own)
FOLD_TICK = 0.5


class Severity(enum.StrEnum):
    """``warning`` for an alert verdict, ``critical`` for a block or would-block."""

    WARNING = "warning"
    CRITICAL = "critical"


class DeliveryState(enum.StrEnum):
    """Where one alert stands on one channel."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    DROPPED = "dropped"


class DeliveryError(Exception):
    """A channel could not deliver an alert this time; the worker may retry."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One deduplicated alert, as delivered on one channel.

    ``summary`` is built from classifications only (payload types, finding
    kinds, service, countries): no body, no query string, no secret.
    """

    id: str
    rule: str
    severity: Severity
    #: alert | block | would-block
    verdict: str
    #: client address, or "unknown"
    client: str
    #: catalog service id (official or lookalike), or None
    service: str | None
    service_name: str | None
    host: str | None
    #: destination address country, ``ZZ`` when unknown
    country: str
    operator_country: str | None
    summary: str
    count: int
    first: float
    last: float
    #: proxy | sniffer | ...
    sensor: str
    decision_id: str
    #: True for the follow-up sent when a window closes with more occurrences
    update: bool = False
    #: channel name (log | webhook | slack | syslog) once handed to a channel
    channel: str | None = None
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (times as UNIX seconds and RFC 3339)."""
        out = dataclasses.asdict(self)
        out["severity"] = str(self.severity)
        out["state"] = str(self.state)
        out["first_time"] = _rfc3339(self.first)
        out["last_time"] = _rfc3339(self.last)
        return out


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarize(decision: Decision) -> str:
    """One redacted line for humans: what went where, from whom, and which rule said so."""
    a = decision.assessment
    what = ", ".join(str(p) for p in a.payload_types) or "traffic"
    if a.service is not None:
        to = a.service.service.name
        if not a.service.official:
            to += f" lookalike ({a.host})"
    else:
        to = a.host or decision.observation.dst_addr or "unknown destination"
    where = f"address in {a.geo.country or UNKNOWN_COUNTRY}"
    if a.operator_country:
        where += f", operator in {a.operator_country}"
    client = decision.observation.client_addr or "unknown client"
    line = f"{decision.verdict.label}: {what} to {to} ({where}) from {client}"
    kinds = sorted({str(f.kind) for f in a.findings})
    if kinds:
        line += f"; findings: {', '.join(kinds)}"
    return f"{line} [rule {decision.verdict.rule}]"


def alert_from(decision: Decision) -> Alert:
    """A fresh alert (count 1) for a decision that raises one."""
    a = decision.assessment
    obs = decision.observation
    severity = Severity.CRITICAL if decision.verdict.action is Action.BLOCK else Severity.WARNING
    return Alert(
        id=uuid.uuid4().hex,
        rule=decision.verdict.rule,
        severity=severity,
        verdict=decision.verdict.label,
        client=obs.client_addr or "unknown",
        service=a.service.service.id if a.service else None,
        service_name=a.service.service.name if a.service else None,
        host=a.host,
        country=a.geo.country or UNKNOWN_COUNTRY,
        operator_country=a.operator_country,
        summary=summarize(decision),
        count=1,
        first=obs.time,
        last=obs.time,
        sensor=str(obs.sensor),
        decision_id=decision.id,
    )


# -- channels --------------------------------------------------------------------------


class Channel(Protocol):
    """Where alerts go. ``send`` raises :class:`DeliveryError` on a failure worth retrying."""

    #: bounded name used as a metrics label and in the store: log | webhook | slack | syslog
    name: str
    #: further attempts after the first one fails
    retries: int
    #: first retry delay in seconds; doubles each time up to ``max_backoff``
    backoff: float
    max_backoff: float

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


class LogChannel:
    """Appends one JSON object per line to a file (created 0600) or a text stream."""

    name = "log"

    def __init__(
        self, target: str | Path | IO[str], *, retries: int = 2, backoff: float = 0.5
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = 30.0
        self._own = False
        if isinstance(target, str | Path):
            path = Path(target)
            try:
                # 0600: alerts name clients and destinations (privacy by default)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as e:
                raise ConfigError(f"cannot open alert log: {e.strerror}", path=str(path)) from e
            self._stream: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
            self._own = True
        else:
            self._stream = target

    def send(self, alert: Alert) -> None:
        try:
            self._stream.write(json.dumps(alert.to_dict(), sort_keys=True) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as e:  # disk full, closed stream
            raise DeliveryError(str(e)) from e

    def close(self) -> None:
        if self._own:
            self._stream.close()


def slack_body(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (api.slack.com/messaging/webhooks): text + blocks."""
    icon = ":no_entry:" if alert.severity is Severity.CRITICAL else ":warning:"
    times = f" ×{alert.count}" if alert.count > 1 else ""
    text = f"{icon} egresswatch {alert.severity}{times}: {alert.summary}"
    fields = [
        f"*Rule*\n{alert.rule}",
        f"*Verdict*\n{alert.verdict}",
        f"*Client*\n{alert.client}",
        f"*Service*\n{alert.service_name or alert.host or 'unknown'}",
        f"*Country*\n{alert.country}",
        f"*Operator country*\n{alert.operator_country or 'unknown'}",
    ]
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{alert.count} occurrence(s), {_rfc3339(alert.first)}"
                        f" – {_rfc3339(alert.last)} · alert {alert.id}",
                    }
                ],
            },
        ],
    }


def parse_webhook_url(url: str) -> str:
    """Accept http(s) URLs with a host; anything else is a configuration error."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{url!r} is not an http:// or https:// URL with a host", field="alert webhook"
        )
    return url


class WebhookChannel:
    """POSTs each alert as JSON (``format="json"``) or as a Slack message (``"slack"``).

    Any 2xx answer is success; other statuses and network errors are retried.
    Environment proxies are ignored on purpose: alerts go where the URL says.
    """

    def __init__(
        self,
        url: str,
        format: str = "json",
        timeout: float = 5.0,
        retries: int = 5,
        *,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if format not in ("json", "slack"):
            raise ConfigError(f"unknown format {format!r}; use json or slack", field="format")
        self.url = parse_webhook_url(url)
        self.format = format
        self.name = "slack" if format == "slack" else "webhook"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def body(self, alert: Alert) -> bytes:
        payload = slack_body(alert) if self.format == "slack" else alert.to_dict()
        return json.dumps(payload).encode()

    def send(self, alert: Alert) -> None:
        request = urllib.request.Request(
            self.url,
            data=self.body(alert),
            headers={"Content-Type": "application/json", "User-Agent": "egresswatch-alerts"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                resp.read(4096)
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeliveryError(str(reason)) from e

    def close(self) -> None:
        pass


#: RFC 5424 section 6.2.1, table 1 (facilities) and table 2 (severities)
SYSLOG_FACILITIES = {
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}
_SYSLOG_SEVERITY = {Severity.WARNING: 4, Severity.CRITICAL: 2}
#: RFC 5612: enterprise number 32473 is reserved for documentation and examples
SD_ID = "egresswatch@32473"


def _sd_escape(value: str) -> str:
    # RFC 5424 section 6.3.3: '"', '\' and ']' must be escaped inside PARAM-VALUE
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogChannel:
    """Sends RFC 5424 messages to a local socket (``/dev/log``) or over UDP (RFC 5426).

    ``address`` is a path to a Unix datagram socket or a ``(host, port)`` pair;
    by default ``/dev/log`` when it exists, else ``127.0.0.1:514``.
    """

    name = "syslog"

    def __init__(
        self,
        address: str | Path | tuple[str, int] | None = None,
        *,
        facility: str = "local0",
        app_name: str = "egresswatch",
        hostname: str | None = None,
        retries: int = 2,
        backoff: float = 0.5,
    ) -> None:
        if facility not in SYSLOG_FACILITIES:
            raise ConfigError(
                f"unknown facility {facility!r}; one of {', '.join(SYSLOG_FACILITIES)}",
                field="syslog facility",
            )
        if address is None:
            address = "/dev/log" if os.path.exists("/dev/log") else ("127.0.0.1", 514)
        self.address = address
        self.facility = SYSLOG_FACILITIES[facility]
        self.app_name = app_name
        self.hostname = hostname or socket.gethostname() or "-"
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = 30.0

    def format(self, alert: Alert) -> bytes:
        """The RFC 5424 message for an alert (section 6: HEADER SD MSG)."""
        pri = self.facility * 8 + _SYSLOG_SEVERITY[alert.severity]
        params = {
            "id": alert.id,
            "rule": alert.rule,
            "verdict": alert.verdict,
            "client": alert.client,
            "service": alert.service or "-",
            "country": alert.country,
            "count": str(alert.count),
        }
        sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
        header = (
            f"<{pri}>1 {_rfc3339(alert.last)} {self.hostname[:255]} {self.app_name[:48]} "
            f"{os.getpid()} alert"
        )
        # section 6.4: a UTF-8 MSG starts with the byte order mark
        return f"{header} {sd} ".encode() + b"\xef\xbb\xbf" + alert.summary.encode()

    def send(self, alert: Alert) -> None:
        data = self.format(alert)
        try:
            if isinstance(self.address, tuple):
                host, port = self.address
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.sendto(data, (host, port))
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.sendto(data, str(self.address))
        except OSError as e:
            raise DeliveryError(e.strerror or str(e)) from e

    def close(self) -> None:
        pass


# -- delivery ----------------------------------------------------------------------------

StateCallback = Callable[[Alert], None]


class _Worker:
    """One channel's delivery thread: a bounded heap of (due time, alert) with retries."""

    def __init__(self, channel: Channel, notify: Callable[[Alert], None], capacity: int) -> None:
        self.channel = channel
        self._notify = notify
        self._capacity = capacity
        self._heap: list[tuple[float, int, Alert]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(
            target=self._run, name=f"egresswatch-alerts-{channel.name}", daemon=True
        )
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Queue an alert; called by the dispatcher thread only (one producer)."""
        alert = dataclasses.replace(alert, channel=self.channel.name, state=DeliveryState.PENDING)
        with self._cond:
            full = len(self._heap) >= self._capacity or self._closing
        if full:
            self._notify(
                dataclasses.replace(alert, state=DeliveryState.DROPPED, error="queue full")
            )
            return
        # report "pending" before the worker can see the alert, so that callbacks
        # (the store) always get a channel's states in order
        self._notify(alert)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic(), next(self._seq), alert))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            alert: Alert | None = None
            leftover: list[Alert] = []
            with self._cond:
                while alert is None:
                    now = time.monotonic()
                    if self._closing and (not self._heap or now >= self._deadline):
                        leftover = [item[2] for item in self._heap]
                        self._heap.clear()
                        break
                    if self._heap and self._heap[0][0] <= now:
                        alert = heapq.heappop(self._heap)[2]
                        break
                    wait = self._heap[0][0] - now if self._heap else None
                    if self._closing:
                        wait = min(float("inf") if wait is None else wait, self._deadline - now)
                    self._cond.wait(wait)
            if alert is None:
                for left in leftover:
                    self._notify(
                        dataclasses.replace(
                            left, state=DeliveryState.FAILED, error="shut down before delivery"
                        )
                    )
                return
            self._attempt(alert)

    def _attempt(self, alert: Alert) -> None:
        attempts = alert.attempts + 1
        try:
            self.channel.send(alert)
        except Exception as e:  # any channel bug is a failed delivery, never a dead thread
            error = str(e) or type(e).__name__
            if attempts > self.channel.retries:
                self._notify(
                    dataclasses.replace(
                        alert, state=DeliveryState.FAILED, attempts=attempts, error=error
                    )
                )
                return
            retry = dataclasses.replace(
                alert, state=DeliveryState.RETRYING, attempts=attempts, error=error
            )
            self._notify(retry)
            delay = min(self.channel.max_backoff, self.channel.backoff * 2 ** (attempts - 1))
            delay *= 1 + random.uniform(0, 0.25)  # jitter: several sensors don't retry in step
            with self._cond:
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), retry))
                self._cond.notify()
            return
        self._notify(
            dataclasses.replace(alert, state=DeliveryState.DELIVERED, attempts=attempts, error=None)
        )

    def close(self, deadline: float) -> None:
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        with contextlib.suppress(Exception):
            self.channel.close()


@dataclass(slots=True)
class _Open:
    """A deduplication window: the alert as first raised and what was folded in since."""

    alert: Alert
    opened: float
    count: int
    last: float
    sent_count: int = 1


class AlertSink:
    """A :class:`~egresswatch.ports.Sink` that raises deduplicated alerts on channels.

    ``window`` is the deduplication window in seconds, counted from an alert's
    first occurrence. ``queue_size`` bounds the occurrences waiting for the
    dispatcher; ``channel_queue`` bounds each channel's pending deliveries.
    """

    def __init__(
        self,
        channels: list[Channel],
        window: float = 60.0,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        channel_queue: int = DEFAULT_CHANNEL_QUEUE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 0:
            raise ConfigError("must not be negative", field="alert window")
        self.window = window
        self._clock = clock
        self._callbacks: list[StateCallback] = []
        self._cb_lock = threading.Lock()
        #: occurrences lost because the queue was full (reported, never silent)
        self.dropped = 0
        #: alerts raised after deduplication, and occurrences folded into them (counted
        #: when the dispatcher takes them: at the latest when their window ends)
        self.raised = 0
        self.folded = 0
        # record() appends to a deque (atomic under the GIL, no lock) and sets an event
        # only when the dispatcher sleeps: a queue.Queue costs a lock and a notify per put.
        # An occurrence that folds into an open window raises nothing new, so it does not
        # wake the dispatcher (a wake-up per request is a GIL hand-off per request for the
        # proxy's event loop); the dispatcher takes such occurrences in batches: when
        # WAKE_BATCH wait, when anything else wakes it, and before any window expires.
        self._pending: deque[tuple[Decision, tuple[str, str, str], float]] = deque()
        self._queue_size = queue_size
        self._wake_batch = max(1, min(WAKE_BATCH, queue_size // 2))
        self._wake = threading.Event()
        self._stopping = False
        self._workers = [_Worker(c, self._emit_state, channel_queue) for c in channels]
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._closed = False
        self._thread = threading.Thread(
            target=self._dispatch, name="egresswatch-alerts", daemon=True
        )
        self._thread.start()

    def on_state(self, callback: StateCallback) -> None:
        """Call ``callback(alert)`` on every delivery state change (from worker threads)."""
        with self._cb_lock:
            self._callbacks.append(callback)

    def _emit_state(self, alert: Alert) -> None:
        with self._cb_lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            with contextlib.suppress(Exception):  # a broken callback must not stop delivery
                cb(alert)

    # -- Sink ------------------------------------------------------------------------

    def record(self, decision: Decision) -> None:
        if decision.verdict.action is Action.ALLOW or self._closed:
            return
        pending = self._pending
        if len(pending) >= self._queue_size:
            self.dropped += 1
            return
        at = self._clock()
        key = self._key(decision)
        pending.append((decision, key, at))
        if self._wake.is_set():
            return
        # read without a lock: a dict lookup is atomic, and a window seen open here
        # cannot expire before FOLD_GUARD seconds pass, while the dispatcher drains the
        # queue before it expires windows
        o = self._open.get(key)
        if (
            o is not None
            and at + FOLD_GUARD < o.opened + self.window
            and len(pending) < self._wake_batch
        ):
            return  # folds into an open window: counted at the dispatcher's next pass
        self._wake.set()

    def flow_closed(self, event: FlowClosed) -> None:
        return None

    def close(self, timeout: float = 10.0) -> None:
        """Flush open windows, deliver what can be delivered within ``timeout`` seconds."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        for worker in self._workers:
            worker.close(deadline)

    # -- dispatcher ------------------------------------------------------------------

    @staticmethod
    def _key(decision: Decision) -> tuple[str, str, str]:
        a = decision.assessment
        obs = decision.observation
        service = a.service.service.id if a.service else (a.host or obs.dst_addr or "?")
        return (decision.verdict.rule, obs.client_addr or "unknown", service)

    def _dispatch(self) -> None:
        while True:
            timeout = None
            if self._open:
                # windows open in arrival order and a re-opened key moves to the end,
                # so the dict's first entry is always the next to expire
                oldest = next(iter(self._open.values())).opened
                timeout = max(0.0, oldest + self.window - self._clock())
            if self._pending:  # occurrences that did not wake us: take them in a while
                timeout = FOLD_TICK if timeout is None else min(timeout, FOLD_TICK)
            self._wake.wait(timeout)
            self._wake.clear()  # before draining: an append after this sets it again
            while self._pending:
                decision, key, at = self._pending.popleft()
                self._occurrence(decision, key, at)
            now = self._clock()
            while self._open:
                key, o = next(iter(self._open.items()))
                if now - o.opened < self.window:
                    break
                self._expire(key)
            if self._stopping and not self._pending:
                for key in list(self._open):
                    self._expire(key)
                return

    def _occurrence(self, decision: Decision, key: tuple[str, str, str], at: float) -> None:
        current = self._open.get(key)
        if current is not None and at - current.opened < self.window:
            current.count += 1
            current.last = max(current.last, decision.observation.time)
            self.folded += 1
            return
        if current is not None:
            self._expire(key)
        alert = alert_from(decision)
        self._open[key] = _Open(alert, opened=at, count=1, last=alert.last)
        self.raised += 1
        self._deliver(alert)

    def _expire(self, key: tuple[str, str, str]) -> None:
        o = self._open.pop(key)
        if o.count > o.sent_count:
            self._deliver(dataclasses.replace(o.alert, count=o.count, last=o.last, update=True))

    def _deliver(self, alert: Alert) -> None:
        for worker in self._workers:
            worker.submit(alert)


#: alerts whose store row id the recorder remembers
RECORDER_ROWS = 100_000


class StoreAlertRecorder:
    """An ``on_state`` callback that records each alert and its delivery in the store.

    One row per alert and channel (the ``sink`` column): inserted when the
    alert is first queued, updated on every state change, and when the window's
    follow-up arrives its count and last time are folded in. Runs on the
    delivery threads, never on the traffic path; a database error is counted
    in ``errors`` and never stops delivery.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.errors = 0
        # (alert id, channel) -> row id; bounded, oldest forgotten first (a follow-up
        # for a forgotten alert then gets its own row, nothing is lost)
        # value: (row id, highest count, latest time) — states of the first alert and of
        # its follow-up can arrive interleaved, and a count must never go down
        self._rows: OrderedDict[tuple[str, str], tuple[int, int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, alert: Alert) -> None:
        from egresswatch.store import AlertRecord, insert_alert, update_alert

        channel = alert.channel or "none"
        key = (alert.id, channel)
        delivered_ts = time.time() if alert.state is DeliveryState.DELIVERED else None
        try:
            with self._lock:
                row = self._rows.get(key)
                if row is None:
                    if len(self._rows) >= RECORDER_ROWS:
                        self._rows.popitem(last=False)
                    row_id = insert_alert(
                        self.store,
                        AlertRecord(
                            ts=alert.first,
                            last_ts=alert.last,
                            rule=alert.rule,
                            severity=str(alert.severity),
                            count=alert.count,
                            decision_id=alert.decision_id,
                            sensor=alert.sensor,
                            client_addr=alert.client,
                            service_id=alert.service,
                            country=alert.country,
                            summary=alert.summary,
                            sink=channel,
                            delivery_state=str(alert.state),
                            attempts=alert.attempts,
                            last_error=alert.error,
                            delivered_ts=delivered_ts,
                        ),
                    )
                    self._rows[key] = (row_id, alert.count, alert.last)
                    return
                row_id, count, last = row
                count, last = max(count, alert.count), max(last, alert.last)
                self._rows[key] = (row_id, count, last)
                update_alert(
                    self.store,
                    row_id,
                    delivery_state=str(alert.state),
                    attempts=alert.attempts,
                    last_error=alert.error,
                    delivered_ts=delivered_ts,
                    count=count,
                    last_ts=last,
                )
        except Exception:
            self.errors += 1


def channels_from(
    *,
    log: str | Path | None = None,
    webhook: str | None = None,
    webhook_format: str = "json",
    syslog: bool | str | tuple[str, int] = False,
) -> list[Channel]:
    """The channels a configuration asks for (``Settings.alert_*``), validated up front.

    ``syslog`` is True for the default target, or a socket path / ``(host, port)``.
    Raises :class:`~egresswatch.errors.ConfigError` for a bad URL, format or path,
    so a mistake fails at start, never mid-traffic.
    """
    channels: list[Channel] = []
    if log is not None:
        channels.append(LogChannel(log))
    if webhook:
        channels.append(WebhookChannel(webhook, format=webhook_format))
    if syslog is True:
        channels.append(SyslogChannel())
    elif syslog:
        channels.append(SyslogChannel(syslog))
    return channels
