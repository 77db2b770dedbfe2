"""The prediction log's journal: an append-only, fsync'd file of answered records.

The service writes every answered prediction here before (or, with ``log_durability: none``,
while) it answers, then stores it in the prediction log (``crm_data.prediction_log``) from a
background thread (``serving.log_writer``). A record is deleted from the journal only when the
log holds it, so a killed process, a read-only log or an unreachable PostgreSQL loses nothing:
the next start (or the log's recovery) replays what the log lacks.

Layout: ``<journal_dir>/<run>/`` per service process, holding ``lock`` (an ``flock`` held while
the process lives: a run whose lock can be taken belongs to a dead process) and segments
``000001.jsonl``, ``000002.jsonl`` … Each line is ``<crc32 hex> <json>\\n``; the JSON has the
run's sequence number ``s`` and the record ``r`` (timestamps as UTC microseconds). A line whose
checksum does not match (a torn write) is skipped with a warning naming file and line; such a
line was never acknowledged as durable.

Replay is idempotent: :func:`replay_orphans` skips records whose ``request_id`` the log already
holds (:meth:`PredictionLog.existing_request_ids`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic_core import to_json

from crm_data.prediction_log import PredictionLog, PredictionRecord

logger = logging.getLogger("crm_data.prediction_log")

SEGMENT_BYTES = 8 * 1024 * 1024  # a new segment after this many bytes
LOCK_FILE = "lock"
SEGMENT_SUFFIX = ".jsonl"
REPLAY_CHUNK = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIELDS = tuple(f.name for f in fields(PredictionRecord))


def _micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode(seq: int, record: PredictionRecord) -> bytes:
    """One journal line of a (validated, UTC) record."""
    body = {name: getattr(record, name) for name in _FIELDS}
    body["submitted_at"] = _micros(record.submitted_at)
    body["scored_at"] = _micros(record.scored_at)
    payload = to_json({"s": seq, "r": body}, inf_nan_mode="null")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode(line: bytes) -> tuple[int, PredictionRecord] | None:
    """(sequence number, record) of a journal line; None when it is torn or damaged."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        data = json.loads(payload)
        body = data["r"]
        body["submitted_at"] = _EPOCH + timedelta(microseconds=body["submitted_at"])
        body["scored_at"] = _EPOCH + timedelta(microseconds=body["scored_at"])
        return int(data["s"]), PredictionRecord(**body)
    except (ValueError, KeyError, TypeError):
        return None


def read_segment(path: Path) -> Iterator[tuple[int, PredictionRecord]]:
    """The records of one segment file in order; damaged lines are skipped and logged."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            decoded = decode(line)
            if decoded is None:
                logger.warning("prediction journal %s line %d: damaged or torn line skipped "
                               "(never acknowledged as durable)", path, number)
                continue
            yield decoded


def _segments(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("*" + SEGMENT_SUFFIX) if p.is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    index: int
    path: Path
    first_seq: int
    last_seq: int = -1


@dataclass
class LogJournal:
    """This process's journal run under ``directory`` (created on the first write).

    One thread calls :meth:`write`; another may call :meth:`forget_below` and
    :meth:`read_range` meanwhile (the list of segments has its own lock).
    """

    directory: Path
    segment_bytes: int = SEGMENT_BYTES
    run: str = field(default_factory=lambda: f"{time.time_ns():x}-{os.getpid()}")
    next_seq: int = 1
    _fd: int | None = None
    _lock_fd: int | None = None
    _size: int = 0
    _segments: list[_Segment] = field(default_factory=list)
    _seg_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run_dir(self) -> Path:
        return self.directory / self.run

    def _open_run(self) -> None:
        if self._lock_fd is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = lock_fd
        _fsync_dir(self.directory)

    def _open_segment(self) -> None:
        self._open_run()
        index = (self._segments[-1].index + 1) if self._segments else 1
        path = self.run_dir / f"{index:06d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _fsync_dir(self.run_dir)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0
        with self._seg_lock:
            self._segments.append(_Segment(index, path, self.next_seq))

    def write(self, records: Sequence[PredictionRecord], fsync: bool = True) -> tuple[int, int]:
        """Append ``records`` (one write, then ``fdatasync`` unless ``fsync`` is False);
        their (first, last) sequence numbers. An ``OSError`` means they may not be on disk:
        the segment is abandoned and the next write starts a new one."""
        if self._fd is None or self._size >= self.segment_bytes:
            self._close_fd()
            self._open_segment()
        first = self.next_seq
        data = b"".join(encode(first + i, r) for i, r in enumerate(records))
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if fsync:
                os.fdatasync(self._fd)
        except OSError:
            # after a failed write or fsync the file's state is unknown: never reuse it
            self._close_fd()
            self._advance(len(records))
            raise
        self._size += len(data)
        self._advance(len(records))
        return first, self.next_seq - 1

    def _advance(self, n: int) -> None:
        with self._seg_lock:
            self.next_seq += n
            self._segments[-1].last_seq = self.next_seq - 1

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def forget_below(self, seq: int) -> None:
        """Delete the finished segments whose records all have sequence numbers below ``seq``
        (the log holds them); the segment being written stays."""
        with self._seg_lock:
            done = [s for s in self._segments[:-1] if s.last_seq < seq]
            if self._segments and self._fd is None and self._segments[-1].last_seq < seq:
                done.append(self._segments[-1])
            self._segments = [s for s in self._segments if s not in done]
        for segment in done:
            with contextlib.suppress(OSError):
                segment.path.unlink()

    def read_range(self, first: int, last: int) -> Iterator[tuple[int, PredictionRecord]]:
        """The records with ``first <= seq <= last`` from this run's segments."""
        with self._seg_lock:
            segments = list(self._segments)
        for segment in segments:
            if segment.last_seq < first or segment.first_seq > last:
                continue
            with contextlib.suppress(FileNotFoundError):
                for seq, record in read_segment(segment.path):
                    if first <= seq <= last:
                        yield seq, record
                    if seq >= last:  # later lines may still be being written
                        return

    def close(self, everything_stored: bool) -> None:
        """Close the files; with ``everything_stored`` delete this run's folder."""
        self._close_fd()
        if everything_stored and self._lock_fd is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


@dataclass
class OrphanRun:
    """The journal of a process that is gone (its lock is held by us now)."""

    path: Path
    lock_fd: int

    def records(self) -> Iterator[tuple[int, PredictionRecord]]:
        for segment in _segments(self.path):
            yield from read_segment(segment)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def orphan_runs(directory: Path, own_run: str | None = None) -> list[OrphanRun]:
    """Journal runs under ``directory`` whose process is gone, locked for the caller."""
    if not directory.is_dir():
        return []
    found = []
    for run_dir in sorted(p for p in directory.iterdir() if p.is_dir() and p.name != own_run):
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:  # a read-only folder: try to read it anyway, without a lock
            fd = os.open(os.devnull, os.O_RDONLY)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process writes it
                os.close(fd)
                continue
        found.append(OrphanRun(run_dir, fd))
    return found


def pending_count(directory: Path) -> int:
    """Records in the journal runs under ``directory`` (live or not): a count for reports."""
    if not directory.is_dir():
        return 0
    return sum(1 for run_dir in directory.iterdir() if run_dir.is_dir()
               for segment in _segments(run_dir) for _ in read_segment(segment))


def replay_records(records: Iterator[tuple[int, PredictionRecord]], log: PredictionLog,
                   chunk: int = REPLAY_CHUNK) -> int:
    """Store in ``log`` the records it lacks (by ``request_id``), ``chunk`` per transaction;
    the number stored. Raises what the log raises (nothing is lost: call again)."""
    stored = 0
    batch: list[PredictionRecord] = []

    def flush() -> int:
        present = log.existing_request_ids([r.request_id for r in batch])
        fresh = [r for r in batch if r.request_id not in present]
        if fresh:
            log.append(fresh)
        batch.clear()
        return len(fresh)

    for _, record in records:
        batch.append(record)
        if len(batch) >= chunk:
            stored += flush()
    if batch:
        stored += flush()
    return stored


def replay_orphans(directory: Path, log: PredictionLog, own_run: str | None = None) -> int:
    """Replay every dead process's journal under ``directory`` into ``log``, then delete it;
    the number of records the log lacked. Raises what the log raises (the rest stays)."""
    stored = 0
    for run in orphan_runs(directory, own_run):
        try:
            count = replay_records(run.records(), log)
        except BaseException:
            run.release()
            raise
        run.remove()
        stored += count
        if count:
            logger.warning("replayed %d journaled prediction(s) of journal run %s into the "
                           "prediction log", count, run.path.name)
    return stored
