"""The prediction log on SQLite (embedded); ``check_roundtrip`` and ``hammer`` are shared with
the PostgreSQL twin in ``tests/integration/test_prediction_log_postgres.py``."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from crm_data.prediction_log import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
    SqlitePredictionLog,
    feature_column,
    join_outcomes,
    load_outcomes,
    open_prediction_log,
    postgres_dsn,
)
from leadscore.config import Settings

T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


def record(i: int, submitted_at: datetime = T0, **changes: object) -> PredictionRecord:
    values: dict = dict(
        request_id=f"req-{i}", lead_id=f"L{i}", person_id=f"P{i % 7}",
        submitted_at=submitted_at, scored_at=submitted_at + timedelta(milliseconds=40),
        probability=(i % 100) / 100, tier="ABCD"[i % 4], channel="tmk", control=i % 10 == 0,
        degraded=False, model_name="lead-conversion", model_version="3", policy_version="p1",
        features={"channel": "sem", "intent_score": i * 0.5, "grade": None, "phone_valid": 1},
    )
    values.update(changes)
    return PredictionRecord(**values)


def check_roundtrip(log: PredictionLog) -> None:
    log.append([record(i, T0 + timedelta(hours=i)) for i in range(5)])
    log.append([record(99, T0 + timedelta(days=10), degraded=True, arm="exploration",
                       propensity=0.25)])
    assert log.count() == 6

    frame = log.read()
    assert len(frame) == 6
    assert str(frame["submitted_at"].dt.tz) == "UTC"
    assert frame["submitted_at"].iloc[1] == pd.Timestamp(T0 + timedelta(hours=1))
    # a feature named like a record field keeps its own column
    assert feature_column("channel") == "feature.channel"
    assert set(frame["feature.channel"]) == {"sem"} and set(frame["channel"]) == {"tmk"}
    assert frame["intent_score"].tolist()[:3] == [0.0, 0.5, 1.0]
    assert frame["grade"].isna().all()
    assert frame["control"].dtype == bool and frame["control"].iloc[0]
    assert frame["degraded"].tolist() == [False] * 5 + [True]
    assert frame["arm"].tolist() == ["policy"] * 5 + ["exploration"]
    assert frame["propensity"].tolist() == [1.0] * 5 + [0.25]

    window = log.read(T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    assert window["lead_id"].tolist() == ["L1", "L2"]  # since inclusive, until exclusive
    assert log.read(T0 + timedelta(days=30)).empty


def hammer(log: PredictionLog, threads: int = 8, batches: int = 25) -> int:
    """Concurrent appends from ``threads`` threads; returns how many records were sent."""
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for b in range(batches):
                size = 1 + (t + b) % 3
                log.append([record(10_000 * t + 100 * b + k) for k in range(size)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    return sum(1 + (t + b) % 3 for t in range(threads) for b in range(batches))


def test_sqlite_roundtrip_and_time_window(tmp_path: Path) -> None:
    with SqlitePredictionLog(tmp_path / "log.sqlite") as log:
        check_roundtrip(log)


def test_sqlite_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    with SqlitePredictionLog(tmp_path / "log.sqlite") as log:
        sent = hammer(log)
        assert log.count() == sent
        assert log.read()["request_id"].is_unique


def test_sqlite_second_connection_and_reopen_see_every_row(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    writer_a, writer_b = SqlitePredictionLog(path), SqlitePredictionLog(path)
    threads = [threading.Thread(target=hammer, args=(w, 3, 10)) for w in (writer_a, writer_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = 2 * sum(1 + (t + b) % 3 for t in range(3) for b in range(10))
    writer_a.close()
    writer_b.close()
    with SqlitePredictionLog(path) as log:
        assert log.count() == expected
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"submitted_at": datetime(2026, 11, 16, 9)}, "submitted_at"),
        ({"probability": 1.5}, "probability"),
        ({"features": {"x": [1, 2]}}, "features"),
        ({"lead_id": 7}, "lead_id"),
    ],
)
def test_bad_record_names_the_field_and_stores_nothing(
    tmp_path: Path, changes: dict, field: str
) -> None:
    with SqlitePredictionLog(tmp_path / "log.sqlite") as log:
        with pytest.raises(PredictionLogError, match=field):
            log.append([record(1), record(2, **changes)])
        assert log.count() == 0


def test_timestamps_are_stored_as_utc(tmp_path: Path) -> None:
    beijing = timezone(timedelta(hours=8))
    with SqlitePredictionLog(tmp_path / "log.sqlite") as log:
        log.append([record(1, datetime(2026, 11, 16, 17, 0, tzinfo=beijing))])
        assert log.read()["submitted_at"].iloc[0] == pd.Timestamp(T0)


def test_open_prediction_log_embedded_uses_the_settings_path(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    log = open_prediction_log(settings)
    try:
        assert isinstance(log, SqlitePredictionLog)
        assert log.path == settings.prediction_log_path
    finally:
        log.close()


def test_join_outcomes_counts_only_conversions_inside_the_window(tmp_path: Path) -> None:
    predictions = pd.DataFrame({
        "lead_id": ["a", "b", "c", "d", "a"],
        "submitted_at": pd.to_datetime([T0] * 5, utc=True),
        "probability": [0.1, 0.2, 0.3, 0.4, 0.9],
    })
    outcomes = pd.DataFrame({
        "lead_id": ["a", "b", "c"],
        "converted": [True, True, False],
        "converted_at": pd.to_datetime([T0 + timedelta(days=3), T0 + timedelta(days=45), None],
                                       utc=True),
    })
    joined = join_outcomes(predictions, outcomes, conversion_window_days=30)
    assert joined.set_index("lead_id")["converted"].to_dict() == {"a": 1, "b": 0, "c": 0}
    assert joined.set_index("lead_id")["probability"]["a"] == 0.1  # first prediction kept

    settings = Settings().with_workdir(tmp_path)
    assert load_outcomes(settings) is None
    settings.raw_dir.mkdir(parents=True)
    outcomes.to_parquet(settings.raw_dir / "outcomes.parquet")
    assert len(load_outcomes(settings)) == 3


def test_postgres_dsn_replaces_the_database() -> None:
    assert postgres_dsn("postgresql://u@h:5432", "leadscore") == "postgresql://u@h:5432/leadscore"
    assert postgres_dsn("postgresql://u@h:5432/other", "x") == "postgresql://u@h:5432/x"
    with pytest.raises(PredictionLogError, match="postgres_url"):
        postgres_dsn("mysql://h", "x")


def test_a_log_written_before_arms_existed_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    SqlitePredictionLog(path).append([record(1)])
    with sqlite3.connect(path) as conn:  # the table as the first release created it
        conn.execute("ALTER TABLE predictions DROP COLUMN arm")
        conn.execute("ALTER TABLE predictions DROP COLUMN propensity")
    log = SqlitePredictionLog(path)
    log.append([record(2, arm="exploration", propensity=0.25)])
    frame = log.read()
    assert frame["arm"].tolist() == ["policy", "exploration"]
    assert frame["propensity"].tolist() == [1.0, 0.25]


@pytest.mark.parametrize(("changes", "field"), [
    ({"arm": "random"}, "arm"), ({"propensity": 0.0}, "propensity"),
    ({"propensity": 1.5}, "propensity"),
])
def test_bad_arm_or_propensity_is_refused(changes: dict, field: str) -> None:
    with pytest.raises(PredictionLogError, match=f"field '{field}'"):
        record(1, **changes).validated()
