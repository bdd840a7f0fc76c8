"""AlertSink wakes its dispatcher only for occurrences that may raise an alert.

Occurrences that fold into an open deduplication window raise nothing new: they
wait in the queue and are counted in batches (at ``WAKE_BATCH`` waiting, and
before the window expires), so a stream of blocked requests is not a thread
wake-up per request. These tests use the real dispatcher thread and a log channel.
"""

from __future__ import annotations

import io
import json
import threading
import time

from helpers.sinks import decision

from egresswatch.alerts import WAKE_BATCH, AlertSink, LogChannel
from egresswatch.model import Action, Decision, Mode


def _block(**kw: object) -> Decision:
    kw.setdefault("rule", "no-cn")
    return decision(action=Action.BLOCK, mode=Mode.ENFORCE, **kw)  # type: ignore[arg-type]


def _wait(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


class _CountingEvent(threading.Event):
    """An Event that counts set() calls which actually wake (it was clear)."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def set(self) -> None:
        if not self.is_set():
            self.wakes += 1
        super().set()


def _sink(out: io.StringIO, window: float = 60.0) -> tuple[AlertSink, _CountingEvent]:
    sink = AlertSink([LogChannel(out)], window=window)
    ev = _CountingEvent()
    # the dispatcher is blocked on the first event: swap in the counting one, release it
    first, sink._wake = sink._wake, ev
    first.set()
    sink.record(_block(client="10.0.0.99"))  # wakes it once, so it now waits on ev
    assert _wait(lambda: sink.raised == 1)
    return sink, ev


def test_folding_occurrences_do_not_wake_the_dispatcher() -> None:
    out = io.StringIO()
    sink, ev = _sink(out)
    sink.record(_block())  # a new key: raises an alert, so it wakes the dispatcher
    assert _wait(lambda: sink.raised == 2)
    wakes = ev.wakes
    for _ in range(50):
        sink.record(_block())  # same rule, client, service: folds into the open window
    time.sleep(0.3)
    assert ev.wakes == wakes  # no wake-up for occurrences that raise nothing
    assert sink.folded == 0  # still queued, counted at the dispatcher's next pass
    sink.close()
    assert sink.folded == 50
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    mine = [(x["count"], x["update"]) for x in lines if x["client"] == "10.1.2.3"]
    assert mine == [(1, False), (51, True)]  # nothing lost: the follow-up has every one


def test_a_batch_of_folding_occurrences_wakes_it_once() -> None:
    out = io.StringIO()
    sink, ev = _sink(out)
    wakes = ev.wakes
    for _ in range(WAKE_BATCH):
        sink.record(_block(client="10.0.0.99"))
    assert _wait(lambda: sink.folded == WAKE_BATCH)  # taken without waiting for the window
    assert ev.wakes - wakes <= 2
    sink.close()


def test_an_occurrence_near_the_window_end_is_folded_before_expiry() -> None:
    out = io.StringIO()
    sink, _ = _sink(out, window=0.5)
    for _ in range(5):
        sink.record(_block(client="10.0.0.99"))
        time.sleep(0.05)
    # the window expires by itself; its follow-up counts every occurrence in it
    assert _wait(lambda: len(out.getvalue().splitlines()) >= 2)
    sink.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["count"], x["update"]) for x in lines] == [(1, False), (6, True)]
