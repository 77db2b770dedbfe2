"""Writing the prediction log off the request path, without ever dropping a record.

``BackgroundLogWriter.append`` validates the records (a malformed one raises at once, in the
request) and hands them to one writer thread through a bounded queue. The thread wakes on the
first record, sleeps ``linger_seconds`` (20 ms) while more queue up, then appends them all in one
transaction: the writer's Python work runs under the GIL, so a few larger writes take less of it
from the requests than one write (and one thread wake-up) per prediction. When the queue is full
``append`` blocks until there is room (back-pressure slows requests down rather than losing
records). A failed write is retried with back-off and never discarded while the writer runs;
``close`` (service shutdown) drains the queue before it returns, and ``flush`` waits until
everything appended so far is stored.

The thread, queue, linger, retry and drain live in ``BatchingWriter``, which other background
stores (``serving.events.BackgroundLeadRecorder``) reuse with their own ``_store``.

The writer thread lowers its own scheduling priority (``nice``, Linux: a thread's own niceness;
``BACKGROUND_NICE``): its work is never what a client waits for, and on a machine with few
cores its SQLite writes (which run without the GIL) would otherwise take a core from the
requests' work. It still gets all the CPU that nothing more urgent wants.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from crm_data.prediction_log import PredictionLog, PredictionRecord

logger = logging.getLogger("crm_data.prediction_log")

_STOP = object()
BACKGROUND_NICE = 10  # added to the writer threads' niceness (0 leaves it as it is)


def lower_thread_priority(increment: int = BACKGROUND_NICE) -> bool:
    """Add ``increment`` to the calling thread's niceness (Linux schedules threads one by one;
    elsewhere, or without the right, nothing happens); True when it changed."""
    if increment <= 0 or not hasattr(os, "setpriority") or not hasattr(threading,
                                                                        "get_native_id"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError:
        return False
    return True


class BatchingWriter:
    """One background thread storing queued items in order, a linger's worth per write.

    Subclasses implement ``_store(batch)`` (one transaction; raising means "retry") and may
    override ``_close_target`` (called once the queue is drained on ``close``) and
    ``_gives_up_on`` (a failure that drops the batch instead of retrying it; none by default).
    """

    what = "record"
    logger = logger

    def __init__(self, max_queued_batches: int = 10_000, max_records_per_write: int = 2_000,
                 linger_seconds: float = 0.02, name: str = "batching-writer",
                 nice: int = BACKGROUND_NICE) -> None:
        self._linger = linger_seconds
        self._nice = nice
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_batches)
        self._max_records = max_records_per_write
        self._cond = threading.Condition()
        self._appended = 0  # items handed to _enqueue()
        self._stored = 0  # items stored
        self.write_failures = 0
        self.dropped = 0  # items given up on (``_gives_up_on``)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- producer side -------------------------------------------------------------------
    def _enqueue(self, batch: list[Any]) -> None:
        """Queue ``batch`` (in order after everything queued before); blocks while full."""
        if self._closed:
            raise RuntimeError(f"the {type(self).__name__} is closed")
        if not batch:
            return
        with self._cond:
            self._appended += len(batch)
        self._queue.put(batch)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item queued so far is stored; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._appended
            while self._stored < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    @property
    def pending(self) -> int:
        """Items queued but not stored yet."""
        with self._cond:
            return self._appended - self._stored

    def close(self) -> None:
        """Store everything queued, stop the thread and close the target."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._close_target()

    def _close_target(self) -> None:
        """Release what ``_store`` writes to (nothing by default)."""

    def _store(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def _gives_up_on(self, exc: Exception) -> bool:
        """True when a failed batch is dropped rather than retried (never, by default)."""
        return False

    # ---- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        lower_thread_priority(self._nice)
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = list(item)
            # let items gather for the linger (asleep: a request's put wakes nobody), then
            # take them, up to one write's worth: at 200 single predictions/s that is a few
            # items per transaction and one wake-up of this thread, not one each
            if self._linger > 0:
                time.sleep(self._linger)
            while len(batch) < self._max_records:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.extend(more)
            self._write(batch)

    def _write(self, batch: list[Any]) -> None:
        delay = 0.05
        while True:
            try:
                self._store(batch)
            except Exception as exc:  # disk full, database locked …: retried (see _gives_up_on)
                self.write_failures += 1
                if self._gives_up_on(exc):
                    self.logger.warning("%s gave up %d %s(s) (%s)", type(self).__name__,
                                        len(batch), self.what, type(exc).__name__)
                    with self._cond:
                        self.dropped += len(batch)
                        self._stored += len(batch)  # handled: flush() must not wait for them
                        self._cond.notify_all()
                    return
                self.logger.error("%s write of %d %s(s) failed (%s); retrying", type(self).__name__,
                             len(batch), self.what, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            with self._cond:
                self._stored += len(batch)
                self._cond.notify_all()
            return


class BackgroundLogWriter(BatchingWriter):
    """A ``PredictionLog`` front that stores records from a background thread."""

    def __init__(self, log: PredictionLog, max_queued_batches: int = 10_000,
                 max_records_per_write: int = 2_000, linger_seconds: float = 0.02) -> None:
        self.log = log
        super().__init__(max_queued_batches, max_records_per_write, linger_seconds,
                         name="prediction-log-writer")

    def append(self, records: Sequence[PredictionRecord]) -> None:
        """Queue ``records`` (validated now); blocks while the queue is full."""
        if self._closed:
            raise RuntimeError("the prediction log writer is closed")
        self._enqueue([record.validated() for record in records])

    def _store(self, batch: list[PredictionRecord]) -> None:
        self.log.append(batch, prevalidated=True)  # append() validated them

    def _close_target(self) -> None:
        self.log.close()
