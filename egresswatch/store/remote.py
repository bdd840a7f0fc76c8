"""The store writer in a child process: the SQL runs beside the sensor, not inside it.

A :class:`StoreWriter` thread shares the sensor's GIL. Binding a row's 45 values
and running the insert is ~60,000 instructions per decision, nearly all of it with
the GIL held, so a proxy's event loop and the writer take turns, and a burst of
decisions is written at the speed of both together (bench/store.py: ~38,000/s).

:class:`RemoteWriter` is the same ``ports.Sink``, split in two:

- **In the sensor**, ``record()`` maps the decision to its rows (as ``StoreWriter``
  does, ~7 µs) and appends them to a bounded queue. A sender thread pickles a
  batch and writes it to the child's stdin; the pickling is ~3 µs a decision and
  the write lets go of the GIL.
- **In the child** (``python -m egresswatch.store.remote``), an ordinary
  ``StoreWriter`` commits each batch, spilling to its journal when the database
  is unreachable, and acknowledges it once it is committed or safely spilled.

Nothing is lost when the child dies: the sender keeps every batch until its
acknowledgement, starts a new child and sends the unacknowledged batches again,
in order; inserts are idempotent (``ON CONFLICT DO NOTHING``), so each decision is
stored once. When the sensor dies (even ``kill -9``), the child reads the end of
its stdin, commits what it has and exits. The child ignores SIGINT and SIGTERM
(a terminal's Ctrl-C and systemd's stop reach the whole group): it stops when
the sensor closes it or goes away, never before the sensor has handed it
everything.

Frames on both pipes are a 4-byte little-endian length and a pickle. Pickle is
safe here: both ends are this module, on a pipe only they hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import IO, Any

from egresswatch.errors import StoreError
from egresswatch.model import Decision, FlowClosed
from egresswatch.store.retention import Retention
from egresswatch.store.rows import SQLITE_NULL
from egresswatch.store.writer import (
    DnsAnswer,
    WriterStats,
    check_sizes,
    close_record,
    decision_record,
    dns_record,
)

log = logging.getLogger("egresswatch.store")

_HEADER = struct.Struct("<I")
#: seconds to wait for a new child to open the database
START_TIMEOUT = 60.0
#: back-off between restarts of a child that keeps dying: first and longest wait
RESTART_FIRST = 0.5
RESTART_MAX = 10.0


def _send(pipe: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_HEADER.pack(len(data)) + data)
    pipe.flush()


def _read_frame(pipe: IO[bytes]) -> bytes | None:
    """The next frame's bytes, or None at the end of the pipe."""
    head = pipe.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = pipe.read(size)
    return data if len(data) == size else None


def _receive(pipe: IO[bytes]) -> Any:
    """The next message, or None at the end of the pipe."""
    frame = _read_frame(pipe)
    return None if frame is None else pickle.loads(frame)


class _Flush:
    """A flush request: done once every batch sent before it is acknowledged."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.seq = -1


@dataclasses.dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    reader: threading.Thread
    spill_path: Path


class RemoteWriter:
    """A ``ports.Sink`` that writes decisions through a child process (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        dialect: str,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        queue_size: int = 100_000,
        spill_path: Path,
        node: str,
        retention: Retention | None = None,
        raw_bodies: int = 0,
    ) -> None:
        check_sizes(batch_size, queue_size, flush_interval, raw_bodies)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.node = node
        self.retention = retention  # applied by the child's writer
        self.raw_bodies = raw_bodies
        # what a missing value is in a row: see StoreWriter (rows.SQLITE_NULL)
        self._absent = None if dialect == "postgresql" else SQLITE_NULL
        self._config: dict[str, Any] = {
            "url": url,
            "batch_size": batch_size,
            "flush_interval": flush_interval,
            "spill_path": str(spill_path),
            "node": node,
            "retention": retention,
            "raw_bodies": raw_bodies,
        }
        self._queue: deque[Any] = deque()
        self._queue_size = queue_size
        self._lock = threading.Lock()  # guards what the reader and the sender share
        #: seq -> (records, decisions) sent and not yet acknowledged, oldest first
        self._unacked: OrderedDict[int, tuple[list[Any], int]] = OrderedDict()
        self._in_flight = 0  # records in _unacked
        self._seq = itertools.count(1)
        self._last_sent = 0
        self._acked = 0
        self._markers: list[_Flush] = []
        self._child_stats: dict[str, Any] = {}
        # counters that sensor threads advance: next() on a count is atomic, += is not
        self._queued = itertools.count(1)
        self._dropped = itertools.count(1)
        self._n_queued = 0
        self._n_dropped = 0
        self._restarts = 0
        self._unmapped = 0
        self._lost = 0
        self._error: str | None = None
        self._closed = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._puts = itertools.count(1)
        self._child: _Child | None = self._start()  # a database that cannot open fails here
        self._sender = threading.Thread(
            target=self._send_loop, name="egresswatch-store-sender", daemon=True
        )
        self._sender.start()

    # -- the Sink interface (called from sensors' threads) -----------------------------

    def record(self, decision: Decision) -> None:
        """Queue a decision as its rows; never blocks. A full queue counts a drop."""
        if self._refuse():
            return
        try:
            rec = decision_record(decision, self.node, self._absent, self.raw_bodies)
        except Exception:  # a mapping bug must not reach the sensor: counted and logged
            self._unmapped += 1
            log.exception("store: decision %s could not be mapped to rows", decision.id)
            return
        self._queue.append(rec)
        self._n_queued = next(self._queued)
        if next(self._puts) % self.batch_size == 0:
            self._wake.set()  # a batch's worth: no need to wait for the interval

    def flow_closed(self, event: FlowClosed) -> None:
        """Queue the final byte counts of a flow; never blocks."""
        if not self._refuse():
            self._queue.append(close_record(event))
            if next(self._puts) % self.batch_size == 0:
                self._wake.set()

    def dns_answer(self, answer: DnsAnswer) -> None:
        """Queue a DNS answer seen by the sniffer; never blocks."""
        if not self._refuse():
            self._queue.append(dns_record(answer, self.node))
            if next(self._puts) % self.batch_size == 0:
                self._wake.set()

    def _refuse(self) -> bool:
        if not self._closed and len(self._queue) + self._in_flight < self._queue_size:
            return False
        n = self._n_dropped = next(self._dropped)
        if not self._closed and (n in (1, 10, 100) or n % 10_000 == 0):
            log.warning("store queue full: %d events dropped so far", n)
        return True

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued before this call is committed or safely spilled."""
        if self._closed or not self._sender.is_alive():
            return False
        marker = _Flush()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Hand everything to the child, let it commit (or spill) and stop it. Safe twice."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._closed = True
        self._stopping.set()
        self._wake.set()
        self._sender.join(max(0.0, deadline - time.monotonic()))
        child = self._child
        if self._unacked and (child is None or child.proc.poll() is not None):
            # the child died after the last batch was sent: one more to take them
            self._restart()
            child = self._child
        if child is None:
            self._lose()  # no process to hand them to: none could be started
            return
        with contextlib.suppress(OSError, ValueError):
            assert child.proc.stdin is not None
            _send(child.proc.stdin, ("close",))
            child.proc.stdin.close()
        try:
            child.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("store writer process did not finish within %.0f s", timeout)
            return
        child.reader.join(5)
        self._lose()

    def _lose(self) -> None:
        """At close: count what no child took (still queued, or never acknowledged)."""
        n = sum(1 for r in self._queue if type(r) is tuple)
        n += sum(decisions for _, decisions in self._unacked.values())
        if n:
            self._lost += n
            log.error("store: %d decisions lost: no store writer process took them", n)

    @property
    def stats(self) -> WriterStats:
        """Current counters: the child's (as of its last acknowledgement) and the queue's."""
        c = self._child_stats
        return WriterStats(
            queued=self._n_queued,
            written=c.get("written", 0),
            dropped=self._n_dropped + c.get("dropped", 0),
            spilled=c.get("spilled", 0),
            replayed=c.get("replayed", 0),
            failed=c.get("failed", 0) + self._unmapped,
            lost=c.get("lost", 0) + self._lost,
            write_errors=c.get("write_errors", 0) + self._restarts,
            closes_pending=c.get("closes_pending", 0),
            queue_length=len(self._queue) + self._in_flight,
            queue_capacity=self._queue_size,
            spill_bytes=c.get("spill_bytes", 0),
            spill_records=c.get("spill_records", 0),
            spilling=c.get("spilling", False),
            last_error=self._error or c.get("last_error"),
        )

    @property
    def spill_path(self) -> Path:
        child = self._child
        return child.spill_path if child is not None else Path(self._config["spill_path"])

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        child = self._child
        return child.proc.pid if child is not None else None

    # -- the child ----------------------------------------------------------------------

    def _start(self) -> _Child:
        """Start a child and wait until it has opened the database. Raises StoreError."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "egresswatch.store.remote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # stderr: inherited, its log lines join the sensor's
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, ("config", self._config))
            answer = _receive_with_timeout(proc, START_TIMEOUT)
        except OSError as e:
            answer = ("error", f"store writer process: {e}")
        if not answer or answer[0] != "ready":
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            why = answer[1] if answer and answer[0] == "error" else "it exited while starting"
            raise StoreError(str(why))
        reader = threading.Thread(
            target=self._read_loop, args=(proc,), name="egresswatch-store-acks", daemon=True
        )
        child = _Child(proc, reader, Path(answer[1]))
        reader.start()
        return child

    def _read_loop(self, proc: subprocess.Popen[bytes]) -> None:
        """Acknowledgements from one child, until its stdout ends."""
        assert proc.stdout is not None
        while True:
            try:
                msg = _receive(proc.stdout)
            except (OSError, pickle.UnpicklingError, EOFError):
                msg = None
            if msg is None:
                return
            kind = msg[0]
            if kind in ("ack", "closed"):
                with self._lock:
                    if kind == "ack":
                        seq = msg[1]
                        while self._unacked and next(iter(self._unacked)) <= seq:
                            _, (records, _n) = self._unacked.popitem(last=False)
                            self._in_flight -= len(records)
                        self._acked = max(self._acked, seq)
                    self._child_stats = msg[-1]
                    done = [m for m in self._markers if m.seq <= self._acked]
                    self._markers = [m for m in self._markers if m.seq > self._acked]
                for m in done:
                    m.done.set()

    # -- the sender thread ---------------------------------------------------------------

    def _send_loop(self) -> None:
        restart_wait = RESTART_FIRST
        while True:
            if len(self._queue) < self.batch_size and not self._stopping.is_set():
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            batch, markers = self._take()
            child = self._child
            if child is None or child.proc.poll() is not None:
                if not self._restart():
                    # no child yet: keep what was taken, in order, for the next try
                    for item in reversed(batch + markers):  # back in front, in order
                        self._queue.appendleft(item)
                    with self._lock:
                        self._in_flight -= len(batch)
                    if self._stopping.is_set():
                        return
                    time.sleep(restart_wait)
                    restart_wait = min(restart_wait * 2, RESTART_MAX)
                    continue
                restart_wait = RESTART_FIRST
            if batch:
                seq = next(self._seq)
                decisions = sum(1 for r in batch if type(r) is tuple)
                with self._lock:
                    self._unacked[seq] = (batch, decisions)  # counted in _in_flight by _take
                self._last_sent = seq
                self._ship(seq, batch)
            if markers:
                with self._lock:
                    for m in markers:
                        m.seq = self._last_sent
                        if m.seq <= self._acked:
                            m.done.set()
                        else:
                            self._markers.append(m)
            if self._stopping.is_set() and not self._queue:
                return

    def _take(self) -> tuple[list[Any], list[_Flush]]:
        """Up to a batch from the queue; a flush marker ends the batch.

        Each item is counted in ``_in_flight`` before it leaves the queue, and
        record() reads the queue's length before ``_in_flight``: the bound it
        checks may count an item twice for a moment, never zero times.
        """
        batch: list[Any] = []
        markers: list[_Flush] = []
        q = self._queue
        with self._lock:
            while len(batch) < self.batch_size:
                self._in_flight += 1
                try:
                    item = q.popleft()
                except IndexError:
                    self._in_flight -= 1
                    break
                if isinstance(item, _Flush):
                    self._in_flight -= 1
                    markers.append(item)
                    break
                batch.append(item)
        return batch, markers

    def _ship(self, seq: int, batch: list[Any]) -> None:
        child = self._child
        if child is None:
            return
        try:
            assert child.proc.stdin is not None
            _send(child.proc.stdin, ("records", seq, batch))
        except (OSError, ValueError) as e:
            # the child is gone: the batch stays unacknowledged and goes to the next one
            self._error = f"store writer process: {e}"

    def _restart(self) -> bool:
        """Start a new child and send it every unacknowledged batch, oldest first."""
        old = self._child
        if old is not None:
            code = old.proc.poll()
            self._error = f"store writer process exited ({code}); starting a new one"
            log.error("%s with %d batches to send again", self._error, len(self._unacked))
            with contextlib.suppress(OSError):
                if old.proc.stdin is not None:
                    old.proc.stdin.close()
            old.reader.join(5)
            self._child = None
        self._restarts += 1
        try:
            child = self._start()
        except (StoreError, OSError) as e:
            self._error = f"store writer process could not start again: {e}"
            log.error("%s", self._error)
            return False
        self._child = child
        with self._lock:
            pending = list(self._unacked.items())
        for seq, (records, _n) in pending:
            self._ship(seq, records)
        self._error = None
        return True


def _receive_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> Any:
    """The child's first message, or None when it exits or says nothing in time."""
    box: list[Any] = []
    assert proc.stdout is not None
    out = proc.stdout
    t = threading.Thread(target=lambda: box.append(_receive(out)), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        with contextlib.suppress(OSError):
            proc.kill()
        t.join(5)
        return ("error", f"the store writer process did not start within {timeout:.0f} s")
    return box[0] if box else None


# -- the child process ------------------------------------------------------------------------


def _child_main() -> int:
    """Run one StoreWriter fed from stdin; acknowledge batches on stdout."""
    # Ctrl-C in a terminal and systemd's SIGTERM reach the whole group: the sensor
    # decides when this process stops (close, or the end of stdin)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="egresswatch store writer: %(levelname)s %(message)s"
    )
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # nothing else may write to the frame pipe
    sys.stdout = sys.stderr
    msg = _receive(inp)
    if msg is None or msg[0] != "config":
        return 2  # not started by a RemoteWriter
    cfg = msg[1]
    from egresswatch.store import open_store
    from egresswatch.store.writer import StoreWriter

    try:
        store = open_store(cfg["url"])
        writer = StoreWriter(
            store,
            batch_size=cfg["batch_size"],
            flush_interval=cfg["flush_interval"],
            queue_size=1,  # nothing is queued: process() writes each batch as it comes
            spill_path=Path(cfg["spill_path"]),
            node=cfg["node"],
            retention=cfg["retention"],
            raw_bodies=cfg["raw_bodies"],
            thread=False,
        )
    except Exception as e:  # a clear message for the sensor, which raises it
        _send(out, ("error", str(e) or type(e).__name__))
        return 1
    _send(out, ("ready", str(writer.spill_path)))
    # A thread only reads frames (the read lets go of the GIL); this one unpickles and
    # writes, then acknowledges: one thread doing the work, not two taking turns.
    frames: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        while True:
            try:
                frame = _read_frame(inp)
            except OSError:
                frame = None
            frames.put(frame)
            if frame is None:
                return

    threading.Thread(target=read, name="egresswatch-store-reader", daemon=True).start()
    try:
        while True:
            try:
                frame = frames.get(timeout=writer.flush_interval)
            except queue.Empty:
                writer.process([])  # the journal's replay and the pruning, when due
                continue
            if frame is None:
                break  # the sensor is gone: what it sent is written, nothing else comes
            msg = pickle.loads(frame)
            if msg[0] == "close":
                break
            if msg[0] == "records":
                writer.process(msg[2])
                _send(out, ("ack", msg[1], dataclasses.asdict(writer.stats)))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ValueError):
            _send(out, ("closed", dataclasses.asdict(writer.stats)))
        store.close()
    return 0


if __name__ == "__main__":
    # the child's own name in ps/top, after the interpreter's
    with contextlib.suppress(OSError):
        Path(f"/proc/{os.getpid()}/comm").write_text("egw-store")
    try:
        code = _child_main()
    except BaseException:  # logged like any crash; the sensor starts a new child
        log.exception("store writer process failed")
        code = 1
    # Everything is committed (or spilled) and acknowledged by now. Leave without the
    # interpreter's shutdown: the reader thread may still be blocked on stdin, and
    # finalizing a buffered stdin another thread holds is a fatal error.
    sys.stderr.flush()
    os._exit(code)
