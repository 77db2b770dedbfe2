"""Faults of the prediction log path: never frozen, nothing answered lost.

The log writer (``serving.log_writer.BackgroundLogWriter``) journals every record (fsync'd,
``crm_data.log_journal``) before the answer and stores it in the log later. Checked here on the
real things: a read-only SQLite log (the file made immutable with ``chattr +i``, which stops
root too), an unreachable PostgreSQL (a port nothing listens on, then the real server), an
unwritable journal, and the served service killed with SIGKILL under load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from crm_data.log_journal import LogJournal, pending_count, replay_orphans
from crm_data.prediction_log import (
    PostgresPredictionLog,
    PredictionLog,
    PredictionRecord,
    SqlitePredictionLog,
    open_prediction_log,
    postgres_dsn,
)
from leadscore.config import Settings
from leadscore.profiles import ensure_databases
from serving import launcher
from serving.log_writer import BackgroundLogWriter
from tests.integration.service_fixtures import API_KEY, ServiceWorkdir, submission

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
SQLITE_FILES = ("predictions.sqlite", "predictions.sqlite-wal", "predictions.sqlite-shm")
# made immutable to make the log read-only: not the -shm file, which SQLite maps into memory
# (a write to an immutable mapped page is a SIGBUS, not an error)
READ_ONLY_FILES = SQLITE_FILES[:2]


def record(i: int, run: str = "r") -> PredictionRecord:
    now = datetime.now(UTC)
    return PredictionRecord(
        request_id=f"{run}-{i}", lead_id=f"L-{run}-{i}", person_id="P-1", submitted_at=now,
        scored_at=now, probability=0.5, tier="B", channel="sales", control=False,
        degraded=False, model_name="m", model_version="1", policy_version="p",
        features={"x": i, "grade": "G5", "nan": float("nan")})


def _chattr(flag: str, paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """The files can be neither written nor replaced (root included) while inside."""
    _chattr("+i", paths)
    try:
        yield
    finally:
        _chattr("-i", paths)


@pytest.fixture(scope="module")
def can_make_immutable(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless ``chattr +i`` works here (root with CAP_LINUX_IMMUTABLE, ext4/xfs/…)."""
    probe = tmp_path_factory.mktemp("chattr") / "probe"
    probe.write_text("x")
    try:
        _chattr("+i", [probe])
        _chattr("-i", [probe])
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot make a file immutable here (chattr +i needs root and a file "
                    "system that supports it): no read-only log to test against")


def wait_until(condition, timeout: float, tick: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(tick)
    return condition()


# ---- the writer in process -------------------------------------------------------------------
def test_read_only_log_keeps_answering_and_replays(tmp_path: Path, can_make_immutable: None
                                                   ) -> None:
    path = tmp_path / "predictions.sqlite"
    writer = BackgroundLogWriter(lambda: SqlitePredictionLog(path), LogJournal(tmp_path / "j"))
    assert all(writer.append([record(i)]).result(timeout=5) for i in range(50))
    assert writer.flush(timeout=10) and writer.status() == (True, None)
    files = [tmp_path / name for name in READ_ONLY_FILES]
    with immutable(files):
        started = time.monotonic()
        receipts = [writer.append([record(i)]) for i in range(50, 3050)]
        handed_over = time.monotonic() - started
        assert all(r.result(timeout=10) for r in receipts)  # durable: in the journal
        assert handed_over < 2.0  # never waits for the log
        assert wait_until(lambda: not writer.status()[0], 10)
        healthy, reason = writer.status()
        assert "prediction log unwritable" in reason and "journal" in reason
        assert not writer.flush(timeout=0.5)
        assert pending_count(tmp_path / "j") >= 3000 - writer.stored + 50
    assert writer.flush(timeout=30), writer.status()
    assert writer.status() == (True, None)
    writer.close()
    with SqlitePredictionLog(path) as log:
        assert log.count() == 3050
        assert log.read()["request_id"].is_unique
    assert not any((tmp_path / "j").iterdir())  # everything stored: the journal is gone


def test_memory_is_bounded_and_the_journal_holds_the_rest(tmp_path: Path,
                                                          can_make_immutable: None) -> None:
    path = tmp_path / "predictions.sqlite"
    SqlitePredictionLog(path).close()
    writer = BackgroundLogWriter(lambda: SqlitePredictionLog(path), LogJournal(tmp_path / "j"),
                                 max_memory_records=100, max_records_per_write=64)
    with immutable([tmp_path / name for name in READ_ONLY_FILES]):
        receipts = [writer.append([record(i), record(i + 100_000)]) for i in range(1000)]
        assert all(r.result(timeout=10) for r in receipts)
        assert len(writer._memory) <= 100  # the rest waits in the journal, not in memory
    assert writer.flush(timeout=30), writer.status()
    writer.close()
    with SqlitePredictionLog(path) as log:
        assert log.count() == 2000 and log.read()["request_id"].is_unique


def test_unwritable_journal_says_not_durable_and_never_blocks(tmp_path: Path,
                                                              can_make_immutable: None) -> None:
    journal_dir = tmp_path / "j"
    journal_dir.mkdir()
    path = tmp_path / "predictions.sqlite"
    with immutable([journal_dir]):  # no run folder can be made in it
        writer = BackgroundLogWriter(lambda: SqlitePredictionLog(path), LogJournal(journal_dir))
        receipts = [writer.append([record(i)]) for i in range(100)]
        assert [r.result(timeout=5) for r in receipts] == [False] * 100
        healthy, reason = writer.status()
        assert not healthy and "journal unwritable" in reason and "not durable" in reason
        assert writer.flush(timeout=10)  # the log itself still works
        writer.close()
    with SqlitePredictionLog(path) as log:
        assert log.count() == 100


def test_close_is_bounded_and_the_next_start_replays(tmp_path: Path, can_make_immutable: None
                                                     ) -> None:
    path = tmp_path / "predictions.sqlite"
    SqlitePredictionLog(path).close()
    files = [tmp_path / name for name in READ_ONLY_FILES]
    with immutable(files):
        writer = BackgroundLogWriter(lambda: SqlitePredictionLog(path), LogJournal(tmp_path / "j"),
                                     drain_seconds=1.0)
        assert all(writer.append([record(i)]).result(timeout=5) for i in range(200))
        started = time.monotonic()
        writer.close()
        assert time.monotonic() - started < 5.0
        assert writer.lost == 0
    assert pending_count(tmp_path / "j") == 200
    again = BackgroundLogWriter(lambda: SqlitePredictionLog(path), LogJournal(tmp_path / "j"))
    assert wait_until(lambda: again.status()[0], 20), again.status()
    again.close()
    with SqlitePredictionLog(path) as log:
        assert log.count() == 200
    assert pending_count(tmp_path / "j") == 0


def test_replay_skips_what_the_log_already_holds(tmp_path: Path) -> None:
    """A process killed between the log's commit and the journal's clean-up: no duplicates."""
    journal = LogJournal(tmp_path / "j")
    journal.write([record(i) for i in range(10)])
    journal.close(everything_stored=False)  # as a killed process leaves it
    with SqlitePredictionLog(tmp_path / "p.sqlite") as log:
        log.append([record(i) for i in range(4)])
        assert replay_orphans(tmp_path / "j", log) == 6
        assert log.count() == 10 and log.read()["request_id"].is_unique
        assert replay_orphans(tmp_path / "j", log) == 0


def test_torn_last_line_is_skipped_with_file_and_line(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    journal = LogJournal(tmp_path / "j")
    journal.write([record(i) for i in range(3)])
    journal.close(everything_stored=False)
    segment = next((tmp_path / "j").rglob("*.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b"0badc0de {\"s\": 4, \"r\": {\"request_")  # cut mid-write
    with SqlitePredictionLog(tmp_path / "p.sqlite") as log:
        assert replay_orphans(tmp_path / "j", log) == 3
    assert f"{segment} line 4" in caplog.text


def test_live_journal_of_another_process_is_left_alone(tmp_path: Path) -> None:
    live = LogJournal(tmp_path / "j")
    live.write([record(1)])
    with SqlitePredictionLog(tmp_path / "p.sqlite") as log:
        assert replay_orphans(tmp_path / "j", log, own_run="someone-else") == 0
        assert log.count() == 0
    live.close(everything_stored=True)


# ---- PostgreSQL unreachable (production profile, a wrong port) -------------------------------
@pytest.fixture
def postgres_database(postgres_available: None) -> Iterator[str]:
    name = f"leadscore_test_{uuid.uuid4().hex[:10]}"
    ensure_databases(Settings().with_(postgres_url=POSTGRES_URL), [name])
    yield name
    with psycopg.connect(postgres_dsn(POSTGRES_URL, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.services
def test_postgres_unreachable_keeps_answering_and_replays(tmp_path: Path,
                                                         postgres_database: str) -> None:
    wrong = Settings().with_(profile="production", database_prefix=postgres_database,
                             postgres_url=f"postgresql://postgres@127.0.0.1:{launcher.free_port()}",
                             workdir=tmp_path)
    settings = {"now": wrong}
    writer = BackgroundLogWriter(lambda: open_prediction_log(settings["now"]),
                                 LogJournal(wrong.prediction_journal_dir))
    started = time.monotonic()
    receipts = [writer.append([record(i)]) for i in range(500)]
    assert time.monotonic() - started < 2.0
    assert all(r.result(timeout=10) for r in receipts)
    assert wait_until(lambda: not writer.status()[0], 10)
    assert "prediction log unwritable" in writer.status()[1]
    settings["now"] = wrong.with_(postgres_url=POSTGRES_URL)  # the server is back
    assert writer.flush(timeout=30), writer.status()
    assert writer.status() == (True, None)
    writer.close()
    with PostgresPredictionLog(postgres_dsn(POSTGRES_URL, postgres_database)) as log:
        assert log.count() == 500 and log.read()["request_id"].is_unique


# ---- the served service ----------------------------------------------------------------------
@pytest.fixture
def own_workdir(service_workdir: ServiceWorkdir, tmp_path: Path) -> Path:
    """A copy of the built work folder with an empty prediction log and journal."""
    target = tmp_path / "work"
    shutil.copytree(service_workdir.settings.workdir, target, symlinks=True,
                    ignore=shutil.ignore_patterns("journal", "*.log"))
    for name in SQLITE_FILES:
        (target / "data" / name).unlink(missing_ok=True)
    return target


def logged_leads(workdir: Path) -> set[str]:
    with SqlitePredictionLog(workdir / "data" / "predictions.sqlite") as log:
        return set(log.read()["lead_id"])


class Traffic:
    """``/predict`` from a few threads until stopped; answered-200 lead ids and latencies."""

    def __init__(self, url: str, rate: float, threads: int = 4) -> None:
        self.url, self.rate = url, rate
        self.answered: dict[str, float] = {}
        self.not_durable: set[str] = set()
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._run = uuid.uuid4().hex[:6]
        self._threads = [threading.Thread(target=self._work, args=(t, threads), daemon=True)
                         for t in range(threads)]
        self._began = time.perf_counter()
        for thread in self._threads:
            thread.start()

    def _work(self, first: int, step: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            i = first
            while not self._stop.is_set():
                pause = self._began + i / self.rate - time.perf_counter()
                if pause > 0 and self._stop.wait(pause):
                    break
                lead = f"L-fault-{self._run}-{i}"
                started = time.perf_counter()
                try:
                    response = client.post("/predict", json=submission(lead))
                except httpx.HTTPError:
                    with self._lock:
                        self.failures += 1
                    i += step
                    continue
                elapsed = time.perf_counter() - started
                with self._lock:
                    if response.status_code == 200:
                        self.answered[lead] = elapsed
                        if response.headers.get("x-leadscore-durable") != "true":
                            self.not_durable.add(lead)
                    else:
                        self.failures += 1
                i += step

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _readyz(url: str) -> tuple[int, str]:
    response = httpx.get(url + "/readyz", timeout=2)
    return response.status_code, response.text


def test_served_read_only_log_503_then_replayed(own_workdir: Path, tmp_path: Path,
                                                can_make_immutable: None) -> None:
    files = [own_workdir / "data" / name for name in READ_ONLY_FILES]
    with launcher.ServedService(own_workdir, tmp_path / "served.log", API_KEY) as served:
        served.wait_until("/readyz", timeout=180)
        traffic = Traffic(served.url, rate=50)
        time.sleep(1.0)
        with immutable(files):
            assert wait_until(lambda: _readyz(served.url)[0] == 503, 10)
            status, body = _readyz(served.url)
            assert "prediction log unwritable" in body
            before = len(traffic.answered)
            time.sleep(3.0)
            assert len(traffic.answered) - before >= 20  # still answering
            assert httpx.get(served.url + "/healthz", timeout=2).status_code == 200
        assert wait_until(lambda: _readyz(served.url)[0] == 200, 15)
        traffic.stop()
        assert not traffic.not_durable
        slowest = max(traffic.answered.values())
        assert slowest < 5.0, f"an answer took {slowest:.1f} s while the log was read-only"
        answered = set(traffic.answered)
        assert wait_until(lambda: answered <= logged_leads(own_workdir), 20)
        # the log read-only again, then SIGTERM: a prompt stop, the rest kept in the journal
        extra = [f"L-term-{i}" for i in range(200)]
        with immutable(files):
            assert wait_until(lambda: _readyz(served.url)[0] == 200, 5)
            for lead in extra:
                assert httpx.post(served.url + "/predict", json=submission(lead),
                                  headers=served.headers, timeout=5).status_code == 200
            started = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            served.process.wait(timeout=30)
            assert time.monotonic() - started < 15.0
    with launcher.ServedService(own_workdir, tmp_path / "served2.log", API_KEY) as again:
        again.wait_until("/readyz", timeout=180)  # ready once the journal is replayed
    logged = logged_leads(own_workdir)
    assert answered | set(extra) <= logged
    assert len(logged) == len(answered) + len(extra)  # each once


@pytest.mark.slow
def test_served_sigkill_under_load_loses_no_answered_record(own_workdir: Path, tmp_path: Path
                                                            ) -> None:
    served = launcher.ServedService(own_workdir, tmp_path / "served.log", API_KEY)
    served.wait_until("/readyz", timeout=180)
    traffic = Traffic(served.url, rate=200, threads=8)
    wait_until(lambda: len(traffic.answered) >= 400, 120, tick=0.01)  # a busy machine is slow
    os.killpg(served.process.pid, signal.SIGKILL)
    served.process.wait(timeout=30)
    traffic.stop()
    served.stop()
    answered = set(traffic.answered)
    assert len(answered) > 300 and not traffic.not_durable
    with launcher.ServedService(own_workdir, tmp_path / "served2.log", API_KEY) as again:
        again.wait_until("/readyz", timeout=180)
    missing = answered - logged_leads(own_workdir)
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions lost"


def test_log_protocol_has_the_replay_lookup() -> None:
    assert isinstance(SqlitePredictionLog(":memory:"), PredictionLog)
