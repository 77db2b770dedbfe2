"""The in-process scoring path: its fast pieces agree with the reference paths; faults degrade.

References: ``features.online.online_features`` (Feast's ``get_online_features``),
``LeadConversionModel.predict_with_reasons`` and ``routing.control.route_with_control``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore, RepoConfig
from service_fixtures import (
    ServiceWorkdir,
    service_workdir,  # noqa: F401 - session fixture
    submission,
)

from features.online import online_features
from features.store import get_store, repo_config_dict
from leadscore.prediction_log import PredictionRecord, SqlitePredictionLog
from routing.control import route_with_control
from serving.log_writer import BackgroundLogWriter
from serving.model_store import ModelUnavailableError
from serving.online_reader import OnlineFeatureReader, OnlineStoreError
from serving.predictor import DEGRADED_STORE, IdentityMaps, Predictor
from serving.schemas import Submission


@pytest.fixture(scope="module")
def predictor(service_workdir: ServiceWorkdir) -> Predictor:  # noqa: F811
    built = Predictor.from_settings(service_workdir.settings, background_log=False)
    assert built.ready(), built.load_error
    yield built
    built.close()


def _persons(settings, n: int = 6) -> list[str]:  # noqa: ANN001
    """Persons the online store knows: a snapshot before the materialized end (the main job
    loads the store only up to the start of its replayed traffic)."""
    from leadscore.demo import replay_start

    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet")
    known = behaviour[behaviour["event_timestamp"] <= pd.Timestamp(replay_start(settings))]
    return sorted(known["person_id"].unique())[:n]


def test_reader_matches_feast_get_online_features(
    predictor: Predictor, service_workdir: ServiceWorkdir  # noqa: F811
) -> None:
    store = get_store(service_workdir.settings)
    at = datetime.now(UTC) - timedelta(days=3)
    persons = [*_persons(service_workdir.settings), "P-nobody-at-all"]
    forms = [
        {"channel": "sem", "campaign": "x", "landing_page": "/pricing", "funnel_step": "verified",
         "grade": "G5", "subject": "math", "city_tier": 2, "device": "ios",
         "phone_valid": True, "email_domain_type": "free"},
        {"channel": "app", "funnel_step": "booked_trial"},
    ]
    for form in forms:
        reference = [online_features(store, form, person, at) for person in persons]
        from features.online import submission_request

        row = submission_request(form, at)
        request = {name: [value] * len(persons) for name, value in row.items()}
        fast, known = predictor.reader.features(request, persons)
        assert known == [True] * (len(persons) - 1) + [False]
        for i, expected in enumerate(reference):
            got = {name: fast[name][i] for name in expected}
            assert got == pytest.approx(expected), persons[i]


def test_fast_scorer_matches_predict_with_reasons(
    predictor: Predictor, service_workdir: ServiceWorkdir  # noqa: F811
) -> None:
    model = predictor.model
    assert model is not None and model.scorer.fast
    frame = pd.read_parquet(service_workdir.settings.data_dir / "training_set.parquet").head(200)
    frame = frame[model.python_model.feature_columns]
    expected = model.python_model.predict_with_reasons(frame, top_k=3)
    got = model.scorer.score({c: frame[c].tolist() for c in frame.columns}, top_k=3)
    assert [g["probability"] for g in got] == pytest.approx(
        [e["probability"] for e in expected], abs=1e-12)
    for g, e in zip(got, expected, strict=True):
        for side in ("positive_reasons", "negative_reasons"):
            assert [r["text"] for r in g[side]] == [r["text"] for r in e[side]]
            assert [r["contribution"] for r in g[side]] == [r["contribution"] for r in e[side]]


def test_routing_matches_route_with_control(predictor: Predictor) -> None:
    rng = np.random.default_rng(3)
    persons = [f"P-{i:05d}" for i in range(400)]
    probability = rng.random(400)
    rule = rng.uniform(-40, 120, 400)
    tiers, channels, control = predictor.route(persons, probability, rule)
    reference = route_with_control(
        pd.DataFrame({"person_id": persons, "probability": probability, "rule_score": rule}),
        predictor.policy)
    assert tiers == reference["tier"].tolist()
    assert channels == reference["channel"].tolist()
    assert control == reference["control"].tolist()
    assert any(control)


def test_unreachable_online_store_degrades(
    service_workdir: ServiceWorkdir, tmp_path: Path  # noqa: F811
) -> None:
    settings = service_workdir.settings
    config = repo_config_dict(settings)
    broken = tmp_path / "online_store_is_a_directory"
    broken.mkdir()
    config["online_store"]["path"] = str(broken)
    store = FeatureStore(config=RepoConfig(**config), repo_path=str(settings.feature_repo_dir))
    reader = OnlineFeatureReader(store, settings)
    with pytest.raises(OnlineStoreError):
        reader.read_snapshots(["P-x"])
    from routing.policy import load_policy

    log = SqlitePredictionLog(tmp_path / "log.sqlite")
    degraded = Predictor(settings, reader, IdentityMaps.load(settings), load_policy(None), log)
    degraded.reload()
    sub = Submission.model_validate(submission("L-degraded-1"))
    answer = degraded.predict([sub])[0]
    assert answer.degraded and answer.degraded_reason == DEGRADED_STORE
    assert degraded.degraded_counts[DEGRADED_STORE] == 1
    assert answer.tags["days_since_last_touch"] == 9999.0  # request alone: no history
    assert log.read()["degraded"].tolist() == [True]
    degraded.close()


def test_no_model_is_refused_not_guessed(
    service_workdir: ServiceWorkdir, tmp_path: Path  # noqa: F811
) -> None:
    import dataclasses

    settings = dataclasses.replace(service_workdir.settings, model_name="no-such-model")
    empty = Predictor.from_settings(settings, background_log=False)
    try:
        assert not empty.ready()
        assert "no-such-model" in (empty.load_error or "")
        with pytest.raises(ModelUnavailableError):
            empty.predict([Submission.model_validate(submission("L-no-model"))])
    finally:
        empty.close()


def test_reload_swaps_without_failing_requests(predictor: Predictor) -> None:
    subs = [Submission.model_validate(submission(f"L-reload-{i}")) for i in range(5)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                assert len(predictor.predict(subs)) == 5
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    for _ in range(2):
        assert predictor.reload() == "1"
    stop.set()
    thread.join()
    assert errors == []


def test_background_log_writer_stores_everything(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "log.sqlite")
    writer = BackgroundLogWriter(log, max_queued_batches=4)  # small queue: back-pressure
    now = datetime.now(UTC)

    def record(i: int) -> PredictionRecord:
        return PredictionRecord(
            request_id=f"r{i}", lead_id=f"L{i}", person_id="P-1", submitted_at=now,
            scored_at=now, probability=0.5, tier="B", channel="sales", control=False,
            degraded=False, model_name="m", model_version="1", policy_version="p",
            features={"x": i})

    threads = [threading.Thread(target=lambda k=k: [writer.append([record(k * 100 + j)])
                                                    for j in range(100)]) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(timeout=30)
    assert writer.pending == 0
    writer.close()  # drains and closes the log
    check = SqlitePredictionLog(tmp_path / "log.sqlite")
    assert check.count() == 400
    assert sorted(check.read()["lead_id"]) == sorted(f"L{i}" for i in range(400))
    check.close()
    with pytest.raises(RuntimeError):
        writer.append([record(9999)])


def test_predict_floor_is_milliseconds(predictor: Predictor) -> None:
    sub = Submission.model_validate(submission("L-floor"))
    for _ in range(5):
        predictor.predict([sub])
    started = time.perf_counter()
    for _ in range(50):
        predictor.predict([sub])
    per_call = (time.perf_counter() - started) / 50
    assert per_call < 0.05  # the Feast get_online_features path took ~60 ms here
