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

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from crm_data.log_journal import LogJournal, replay_orphans
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


CLOSE_DRAIN_SECONDS = 5.0  # how long a closing writer keeps retrying a failing write

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
        self._close_deadline = float("inf")
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

    def close(self, drain_seconds: float = CLOSE_DRAIN_SECONDS) -> None:
        """Store everything queued, stop the thread and close the target. A write that still
        fails ``drain_seconds`` after the close began is given up (logged and counted in
        ``dropped``), so a full or read-only disk cannot hold a stopping service."""
        if self._closed:
            return
        self._close_deadline = time.monotonic() + drain_seconds
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
                closing_too_long = self._closed and time.monotonic() > self._close_deadline
                if self._gives_up_on(exc) or closing_too_long:
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


Receipt = Future  # of bool: True when the records were durable (fsync'd) before the answer


def _reason(exc: BaseException) -> str:
    """A short, value-free description of a write failure (type and first line)."""
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BackgroundLogWriter:
    """The prediction log's front: journal first (fsync'd, on the request's behalf), log later.

    ``append`` never blocks on I/O: it validates the records, hands them to the journal thread
    and returns a :data:`Receipt`. The journal thread appends everything handed over since its
    last write in one write + ``fdatasync`` (group commit) and resolves the receipts: True when
    the records are on disk (with ``fsync``), False when the journal could not be written (or
    ``fsync`` is off). The log thread (niced) stores journaled records in the log, a linger's
    worth per transaction, deletes journal segments the log holds, retries a failing log with
    back-off (re-opening it) and replays what a dead process left in the journal at start-up.

    Bounded: at most ``max_memory_records`` records wait in memory for the log; beyond that the
    journal alone holds them and they are read back from it when the log works again. A record
    that neither the journal nor memory can hold is lost, counted in ``lost`` and logged (its
    answer said it was not durable). ``status()`` says whether the log is healthy, with the
    reason when not (``/readyz``); ``close`` drains for at most ``drain_seconds``.
    """

    def __init__(self, log: PredictionLog | Callable[[], PredictionLog],
                 journal: LogJournal | None = None, fsync: bool = True,
                 max_memory_records: int = 20_000, max_records_per_write: int = 2_000,
                 linger_seconds: float = 0.02, drain_seconds: float = 5.0,
                 retry_max_seconds: float = 2.0, max_pending: int = 20_000) -> None:
        if callable(log) and not isinstance(log, PredictionLog):
            self._factory: Callable[[], PredictionLog] | None = log
            self.log: PredictionLog | None = None
        else:
            self._factory = None
            self.log = log
        self.journal = journal
        self.fsync = fsync and journal is not None
        self._max_memory = max_memory_records
        self._max_records = max_records_per_write
        self._max_pending = max_pending
        self._linger = linger_seconds
        self._drain_seconds = drain_seconds
        self._retry_max = retry_max_seconds
        self._cond = threading.Condition()
        self._incoming: list[tuple[list[PredictionRecord], Receipt]] = []
        self._incoming_n = 0
        self._memory: deque[tuple[int | None, PredictionRecord]] = deque()
        self._spilled: deque[list[int]] = deque()  # [first, last] seqs on disk only
        self._inflight_low: int | None = None
        self.appended = 0
        self.stored = 0
        self.lost = 0
        self.write_failures = 0
        self.journal_failures = 0
        self._log_error: str | None = None
        self._journal_error: str | None = None
        self._replaying = journal is not None
        self._closing = False
        self._deadline = float("inf")
        self._closed = False
        self._journal_thread = threading.Thread(target=self._run_journal,
                                                name="prediction-log-journal", daemon=True)
        self._log_thread = threading.Thread(target=self._run_log, name="prediction-log-writer",
                                            daemon=True)
        if journal is not None:
            self._journal_thread.start()
        self._log_thread.start()

    # ---- producer side -------------------------------------------------------------------
    @property
    def waits_for_durability(self) -> bool:
        """True when a receipt means "fsync'd": the service waits for it before answering."""
        return self.fsync

    def append(self, records: Sequence[PredictionRecord]) -> Receipt:
        """Hand ``records`` (validated now) over; never blocks on I/O."""
        if self._closed:
            raise RuntimeError("the prediction log writer is closed")
        batch = [record.validated() for record in records]
        receipt: Receipt = Future()
        if not batch:
            receipt.set_result(True)
            return receipt
        with self._cond:
            self.appended += len(batch)
            if self.journal is not None and self._incoming_n < self._max_pending:
                self._incoming.append((batch, receipt))
                self._incoming_n += len(batch)
                self._cond.notify_all()
                return receipt
            self._to_memory(None, batch)  # no journal, or its thread is far behind
            self._cond.notify_all()
        receipt.set_result(False)
        return receipt

    def _to_memory(self, first: int | None, batch: list[PredictionRecord]) -> None:
        """Queue ``batch`` for the log (under the lock): in memory while there is room, else
        as a journal range (``first`` set) or lost."""
        room = self._max_memory - len(self._memory)
        if first is not None and (room < len(batch) or self._spilled):
            if self._spilled and self._spilled[-1][1] == first - 1:
                self._spilled[-1][1] = first + len(batch) - 1
            else:
                self._spilled.append([first, first + len(batch) - 1])
            return
        keep = batch if room >= len(batch) else batch[:max(room, 0)]
        for i, record in enumerate(keep):
            self._memory.append((None if first is None else first + i, record))
        if len(keep) < len(batch):
            self.lost += len(batch) - len(keep)
            logger.error("prediction log: %d record(s) lost (the journal cannot be written and "
                         "%d wait in memory for the log); their answers said not durable",
                         len(batch) - len(keep), len(self._memory))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record appended so far is stored (or lost); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self.appended
            while self.stored + self.lost < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is None else min(remaining, 0.5))
        return True

    @property
    def pending(self) -> int:
        """Records appended but not in the log yet (journaled or in memory)."""
        with self._cond:
            return self.appended - self.stored - self.lost

    def status(self) -> tuple[bool, str | None]:
        """(healthy, reason): False while the log cannot be written, the journal cannot be
        written, or a dead process's journal is being replayed."""
        with self._cond:
            pending = self.appended - self.stored - self.lost
            if self._journal_error is not None:
                return False, (f"prediction journal unwritable ({self._journal_error}); answers "
                               "are not durable")
            if self._log_error is not None:
                return False, (f"prediction log unwritable ({self._log_error}); {pending} "
                               "record(s) held in the journal until it works again")
            if self._replaying:
                return False, "replaying the prediction journal of an earlier run"
        return True, None

    def wait_replayed(self, timeout: float | None = None) -> bool:
        """Wait until what dead processes left in the journal is in the log (True), or
        ``timeout`` seconds (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._replaying, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Store what can be stored within ``timeout`` (default ``drain_seconds``) and stop;
        what is left stays in the journal for the next start."""
        if self._closed:
            return
        wait = self._drain_seconds if timeout is None else timeout
        with self._cond:
            self._closed = self._closing = True
            self._deadline = time.monotonic() + wait
            self._cond.notify_all()
        if self.journal is not None:
            self._journal_thread.join(timeout=max(wait, 1.0))
        self._log_thread.join(timeout=max(self._deadline - time.monotonic(), 0) + 1.0)
        with self._cond:
            left = self.appended - self.stored - self.lost
            memory_only = sum(1 for seq, _ in self._memory if seq is None)
            self.lost += memory_only
        if left:
            logger.error("prediction log writer stopped with %d record(s) not in the log: %d "
                         "stay in the journal (stored at the next start), %d lost", left,
                         left - memory_only, memory_only)
        if self.journal is not None:
            self.journal.close(everything_stored=left == 0 and not self._journal_thread.is_alive())
        if not self._log_thread.is_alive() and self.log is not None:
            with contextlib.suppress(Exception):
                self.log.close()

    # ---- journal thread ------------------------------------------------------------------
    def _run_journal(self) -> None:
        assert self.journal is not None
        while True:
            with self._cond:
                while not self._incoming and not self._closing:
                    self._cond.wait()
                if not self._incoming:
                    return
                items, self._incoming, self._incoming_n = self._incoming, [], 0
            batch = [record for records, _ in items for record in records]
            first: int | None = None
            try:
                first, _ = self.journal.write(batch, fsync=self.fsync)
            except OSError as exc:
                self._journal_failed(exc)
            with self._cond:
                if first is not None and self._journal_error is not None:
                    logger.warning("prediction journal writable again")
                    self._journal_error = None
                self._to_memory(first, batch)
                self._cond.notify_all()
            durable = first is not None and self.fsync
            for _, receipt in items:
                receipt.set_result(durable)

    def _journal_failed(self, exc: OSError) -> None:
        with self._cond:
            self.journal_failures += 1
            if self._journal_error is None:
                logger.error("prediction journal %s cannot be written (%s): answers are not "
                             "durable until it can", self.journal.directory, _reason(exc))
            self._journal_error = _reason(exc)

    # ---- log thread ----------------------------------------------------------------------
    def _run_log(self) -> None:
        lower_thread_priority()
        if self.journal is not None:
            self._replay_orphans()
        while True:
            with self._cond:
                while not (self._memory or self._spilled or self._closing):
                    self._cond.wait()
                if not (self._memory or self._spilled) or self._past_deadline():
                    return
                closing = self._closing
            if self._linger > 0 and not closing:
                time.sleep(self._linger)
            with self._cond:
                batch, span = self._take()
            if span is not None:  # a journal range: read outside the lock
                batch = self._read_span(*span)
            if not self._store(batch, dedup=span is not None):
                return  # closing with the log still failing: the journal keeps them

    def _past_deadline(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    def _take(self) -> tuple[list[tuple[int | None, PredictionRecord]], tuple[int, int] | None]:
        """The next batch (under the lock): from memory, else a journal range to read."""
        if self._memory:
            n = min(self._max_records, len(self._memory))
            batch = [self._memory.popleft() for _ in range(n)]
            seqs = [seq for seq, _ in batch if seq is not None]
            self._inflight_low = min(seqs) if seqs else None
            return batch, None
        first, last = self._spilled[0]
        end = min(last, first + self._max_records - 1)
        if end == last:
            self._spilled.popleft()
        else:
            self._spilled[0][0] = end + 1
        self._inflight_low = first
        return [], (first, end)

    def _read_span(self, first: int, last: int) -> list[tuple[int | None, PredictionRecord]]:
        """Records ``first..last`` read back from the journal (damaged lines count as lost)."""
        assert self.journal is not None
        batch: list[tuple[int | None, PredictionRecord]] = list(
            self.journal.read_range(first, last))
        missing = (last - first + 1) - len(batch)
        if missing:
            with self._cond:
                self.lost += missing
        return batch

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` (cut short by ``close``'s deadline); False once past it."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closing:
                    end = min(end, self._deadline)
                if now >= end:
                    return not self._past_deadline()
                self._cond.wait(end - now)

    def _store(self, batch: list[tuple[int | None, PredictionRecord]], dedup: bool) -> bool:
        """Store ``batch``, retrying with back-off; False when closing stopped the retries."""
        records = [record for _, record in batch]
        delay = 0.05
        while True:
            try:
                log = self._open_log()
                if dedup:
                    present = log.existing_request_ids([r.request_id for r in records])
                    records = [r for r in records if r.request_id not in present]
                log.append(records, prevalidated=True)
            except Exception as exc:  # noqa: BLE001 - read-only file, database down …: retried
                self._log_failed(exc)
                if not self._pause(delay):
                    with self._cond:
                        self._give_back(batch)
                    return False
                delay = min(delay * 2, self._retry_max)
                dedup = True  # a failed commit may have landed after all
                continue
            with self._cond:
                self.stored += len(batch)
                self._inflight_low = None
                if self._log_error is not None:
                    logger.warning("prediction log writable again; storing the journaled "
                                   "records")
                    self._log_error = None
                self._forget_stored()
                self._cond.notify_all()
            return True

    def _give_back(self, batch: list[tuple[int | None, PredictionRecord]]) -> None:
        """Put an unstored batch back in front (under the lock) so ``close`` counts it."""
        self._memory.extendleft(reversed(batch))
        self._inflight_low = None

    def _forget_stored(self) -> None:
        """Delete the journal segments the log holds entirely (under the lock)."""
        if self.journal is None:
            return
        low = self.journal.next_seq
        for seq, _ in self._memory:
            if seq is not None:
                low = min(low, seq)
                break
        if self._spilled:
            low = min(low, self._spilled[0][0])
        if self._inflight_low is not None:
            low = min(low, self._inflight_low)
        self.journal.forget_below(low)

    def _open_log(self) -> PredictionLog:
        if self.log is None:
            assert self._factory is not None
            self.log = self._factory()
        return self.log

    def _log_failed(self, exc: Exception) -> None:
        with self._cond:
            self.write_failures += 1
            first = self._log_error is None
            self._log_error = _reason(exc)
        if first:
            logger.error("prediction log write failed (%s); records stay in the journal and are "
                         "retried", _reason(exc))
        if self._factory is not None and self.log is not None:  # re-open on the next try
            with contextlib.suppress(Exception):
                self.log.close()
            self.log = None

    def _replay_orphans(self) -> None:
        """Store what dead processes left in the journal (retried until it works or close)."""
        assert self.journal is not None
        delay = 0.05
        while True:
            try:
                replay_orphans(self.journal.directory, self._open_log(), own_run=self.journal.run)
            except Exception as exc:  # noqa: BLE001 - the log is not writable yet: retry
                self._log_failed(exc)
                if self._closing or not self._pause(delay):
                    return
                delay = min(delay * 2, self._retry_max)
                continue
            with self._cond:
                self._replaying = False
                self._cond.notify_all()
                if self._log_error is not None:
                    logger.warning("prediction log writable again")
                    self._log_error = None
            return
