"""The in-process scoring path: its fast pieces agree with the reference paths; faults degrade.

References: ``features.online.online_features`` (Feast's ``get_online_features``),
``LeadConversionModel.predict_with_reasons`` / ``BlendedLeadModel.predict_with_reasons`` (each
kind of model training may ship, whichever the work folder's training chose) and
``routing.control.route_with_control``.
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

from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from features.online import online_features
from features.store import get_store, repo_config_dict
from leadscore.config import Settings
from routing.control import route_with_control
from serving.fast_online_reader import OnlineFeatureReader, OnlineStoreError
from serving.log_writer import BackgroundLogWriter
from serving.model_store import LoadedModel, ModelUnavailableError
from serving.predictor import DEGRADED_STORE, IdentityMaps, Predictor
from serving.schemas import Submission
from tests.integration.service_fixtures import (
    ServiceWorkdir,
    submission,
)


@pytest.fixture(scope="module")
def predictor(service_workdir: ServiceWorkdir) -> Predictor:
    built = Predictor.from_settings(service_workdir.settings, background_log=False)
    assert built.ready(), built.load_error
    yield built
    built.close()


MODEL_KINDS = ["lightgbm", "blend", "logistic_regression"]


def _model_of_kind(settings: Settings, champion, kind: str):  # noqa: ANN001, ANN202
    """A packaged model of ``kind`` from the work folder's champion and training set: its
    booster (or a default LightGBM when the champion has none), its calibrator and a logistic
    regression fitted on the training set."""
    from training.baselines import LogisticBaseline
    from training.model import BlendedLeadModel, LeadConversionModel, prepare_features
    from training.selection import train_default_lightgbm

    features, levels = champion.feature_columns, champion.levels
    common = {"calibrator": champion.calibrator, "feature_columns": features,
              "levels": levels, "reason_templates": champion.reason_templates}
    frame = pd.read_parquet(settings.data_dir / "training_set.parquet")
    model_string = champion.model_string
    if model_string is None:
        booster = train_default_lightgbm(prepare_features(frame, features, levels),
                                         frame["label"].to_numpy(), list(levels), 0)
        model_string = booster.model_to_string()
    if kind == "lightgbm":
        return LeadConversionModel(model_string=model_string, **common)
    linear = LogisticBaseline(features, list(levels)).fit(frame, frame["label"])
    if kind == "blend":
        return BlendedLeadModel(linear, weight=0.6, model_string=model_string, **common)
    return BlendedLeadModel(linear, weight=0.0, **common)


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request: pytest.FixtureRequest, predictor: Predictor,
               service_workdir: ServiceWorkdir) -> str:
    """The predictor serving a model of each kind (its loaded champion swapped for the test)."""
    from serving.scoring import FastScorer

    loaded = predictor.model
    assert loaded is not None
    model = _model_of_kind(service_workdir.settings, loaded.python_model, request.param)
    predictor._model = LoadedModel(model, loaded.name, loaded.version, loaded.source,
                                   FastScorer(model))
    yield request.param
    predictor._model = loaded


def _persons(settings, n: int = 6) -> list[str]:  # noqa: ANN001
    """Persons the online store knows: a snapshot before the materialized end (the main job
    loads the store only up to the start of its replayed traffic)."""
    from pipelines.demo import replay_start

    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet")
    known = behaviour[behaviour["event_timestamp"] <= pd.Timestamp(replay_start(settings))]
    return sorted(known["person_id"].unique())[:n]


def test_reader_matches_feast_get_online_features(
    predictor: Predictor, service_workdir: ServiceWorkdir
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
    predictor: Predictor, service_workdir: ServiceWorkdir, model_kind: str
) -> None:
    model = predictor.model
    assert model is not None and model.scorer.fast, model_kind
    frame = pd.read_parquet(service_workdir.settings.data_dir / "training_set.parquet").head(200)
    frame = frame[model.python_model.feature_columns]
    expected = model.python_model.predict_with_reasons(frame, top_k=3)
    columns = {c: frame[c].tolist() for c in frame.columns}
    got = model.scorer.score(columns, top_k=3)
    assert [g["probability"] for g in got] == pytest.approx(
        [e["probability"] for e in expected], abs=1e-12)
    for g, e in zip(got, expected, strict=True):
        for side in ("positive_reasons", "negative_reasons"):
            assert [r["text"] for r in g[side]] == [r["text"] for r in e[side]]
            assert [r["contribution"] for r in g[side]] == [r["contribution"] for r in e[side]]
    singles = [model.scorer.score({c: [v[i]] for c, v in columns.items()}, top_k=3)[0]
               for i in range(0, 200, 9)]
    assert singles == got[::9]


def test_routing_matches_route_with_control(predictor: Predictor) -> None:
    rng = np.random.default_rng(3)
    persons = [f"P-{i:05d}" for i in range(400)]
    probability = rng.random(400)
    rule = rng.uniform(-40, 120, 400)
    leads = [f"L-{i:05d}" for i in range(400)]
    routed = predictor.route(persons, probability, rule, leads)
    reference = route_with_control(
        pd.DataFrame({"lead_id": leads, "person_id": persons, "probability": probability,
                      "rule_score": rule}), predictor.policy)
    assert routed.tiers.tolist() == reference["tier"].tolist()
    assert routed.channels.tolist() == reference["channel"].tolist()
    assert routed.control.tolist() == reference["control"].tolist()
    assert routed.arms.tolist() == reference["arm"].tolist()
    assert routed.propensities.tolist() == reference["propensity"].tolist()
    assert routed.control.any() and (routed.arms == "exploration").any()


def unreachable_store(settings: Settings, tmp_path: Path) -> FeatureStore:
    """The work folder's Feast store with its SQLite online store path made unusable."""
    config = repo_config_dict(settings)
    broken = tmp_path / "online_store_is_a_directory"
    broken.mkdir()
    config["online_store"]["path"] = str(broken)
    return FeatureStore(config=RepoConfig(**config), repo_path=str(settings.feature_repo_dir))


def test_unreachable_online_store_degrades(
    service_workdir: ServiceWorkdir, tmp_path: Path
) -> None:
    settings = service_workdir.settings
    store = unreachable_store(settings, tmp_path)
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
    service_workdir: ServiceWorkdir, tmp_path: Path
) -> None:
    settings = service_workdir.settings.with_(model_name="no-such-model")
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
    writer = BackgroundLogWriter(log)  # no journal: held in memory until stored
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


def test_predict_floor_is_milliseconds(predictor: Predictor, model_kind: str) -> None:
    sub = Submission.model_validate(submission("L-floor"))
    for _ in range(5):
        predictor.predict([sub])
    started = time.perf_counter()
    for _ in range(50):
        predictor.predict([sub])
    per_call = (time.perf_counter() - started) / 50
    assert per_call < 0.05  # the Feast get_online_features path took ~60 ms here


class _CapturedLog:
    """A prediction log that keeps the records it is handed."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def append(self, records: list[PredictionRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


def _quiet_predictor(settings, reader=None) -> Predictor:  # noqa: ANN001
    """A predictor that records no leads (its scoring state stays fixed), logging in memory."""
    from routing.policy import load_policy

    if reader is None:
        built = Predictor.from_settings(settings, background_log=False)
        built.log.close()
        built.recorder.close()
        built.recorder = built.updater = None
        built.log = _CapturedLog()
    else:
        built = Predictor(settings, reader, IdentityMaps.load(settings), load_policy(None),
                          _CapturedLog())
        built.reload()
    assert built.ready(), built.load_error
    return built


def _mixed_batch() -> list[Submission]:
    """A known person with a history (three times: windows and lead counts differ), new
    persons, two new leads sharing a cookie (the second joins the first's person), unusable
    identifiers, form variants."""
    now = datetime.now(UTC)

    def at(delta: timedelta) -> str:
        return (now - delta).isoformat()

    bodies = [
        submission("L-mix-known-1"),
        submission("L-mix-new-1", identifiers={"cookie_id": "c-mix-shared"},
                   form={"grade": "G9", "city_tier": 1, "device": "ios"}),
        submission("L-mix-known-2", submitted_at=at(timedelta(days=2, hours=3))),
        submission("L-mix-bad-ids", channel="app", funnel_step="submitted",
                   identifiers={"phone": "not a phone", "email": 12345, "wechat_id": ["x"],
                                "cookie_id": "c-mix-bad"}),
        submission("L-mix-new-2", identifiers={"cookie_id": "c-mix-shared",
                                               "email": "someone@qq.com"},
                   form={"city": "nowhere-ville"}),
        submission("L-mix-known-3", submitted_at=at(timedelta(days=40)), campaign="",
                   landing_page="/pricing?x=1", form={}),
        submission("L-mix-new-3", identifiers={}, submitted_at=at(timedelta(hours=5))),
        submission("L-mix-known-4", submitted_at=at(timedelta(days=2, hours=3, seconds=1))),
    ]
    return [Submission.model_validate(body) for body in bodies]


def _comparable(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "scored_at"}


def test_batch_answers_equal_single_answers(service_workdir: ServiceWorkdir) -> None:
    settings = service_workdir.settings
    subs = _mixed_batch()
    batch_predictor = _quiet_predictor(settings)
    single_predictor = _quiet_predictor(settings)
    try:
        batch = batch_predictor.answers(subs)
        singles = [single_predictor.answers([sub])[0] for sub in subs]
        assert [a["lead_id"] for a in batch] == [s.lead_id for s in subs]
        assert [_comparable(a) for a in batch] == [_comparable(a) for a in singles]
        # the known person (history re-evaluated at three request times), new persons, the
        # shared cookie's second lead joining the first one's person, a person_unknown answer
        persons = [a["person_id"] for a in batch]
        assert persons[0] == persons[2] == persons[5] == service_workdir.known_person
        assert persons[4] == persons[1] != persons[6]
        assert not batch[0]["degraded"] and batch[1]["degraded_reason"] == "person_unknown"
        assert batch[0]["tags"] != batch[5]["tags"]
        assert set(batch[3]["identifiers_rejected"]) == {"phone", "email", "wechat_id"}
        # one log record per lead, in order, as the single path logs them
        logged = batch_predictor.log.records
        assert [r.lead_id for r in logged] == [s.lead_id for s in subs]
        assert len({r.request_id for r in logged}) == len(subs)
        assert [r.features for r in logged] == [r.features for r in single_predictor.log.records]
        # the JSON the API sends: no raw identifier anywhere
        body = batch_predictor.predict_json(subs, batch=True).decode()
        for raw in ("139 1234 5678", "c-mix-shared", "someone@qq.com", "not a phone", "wx_abc"):
            assert raw not in body
    finally:
        batch_predictor.close()
        single_predictor.close()


def test_degraded_batch_equals_degraded_singles(
    service_workdir: ServiceWorkdir, tmp_path: Path
) -> None:
    settings = service_workdir.settings
    store = unreachable_store(settings, tmp_path)
    subs = _mixed_batch()
    batch_predictor = _quiet_predictor(settings, OnlineFeatureReader(store, settings))
    single_predictor = _quiet_predictor(settings, OnlineFeatureReader(store, settings))
    try:
        batch = batch_predictor.answers(subs)
        singles = [single_predictor.answers([sub])[0] for sub in subs]
        assert [_comparable(a) for a in batch] == [_comparable(a) for a in singles]
        assert {a["degraded_reason"] for a in batch} == {DEGRADED_STORE}
    finally:
        batch_predictor.close()
        single_predictor.close()
