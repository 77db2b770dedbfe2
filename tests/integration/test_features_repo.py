"""The Feast repo through the real ``feast`` CLI on a temporary work folder (and on the
production profile, ``services``), the single store configuration, the feature parameters
fixed per feature version, and the ``leadscore features`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from commands.features import features_app
from features.build import build_features, materialize
from features.online import online_features
from features.params import FeatureParams
from features.request import transform_request
from features.score2d import load_scoring_tables
from features.store import (
    feature_store_yaml_path,
    get_store,
    render_feature_store_yaml,
    repo_config_dict,
    write_feature_store_yaml,
)
from features.training_set import entity_frame, historical_features
from leadscore.config import PROJECT_ROOT, Settings, get_settings

FEAST = str(Path(sys.executable).with_name("feast"))
REPO = PROJECT_ROOT / "feature_repo"


def _tiny_crm(settings: Settings) -> None:
    """Three leads of two persons, a few events and one order, written as the raw tables."""
    settings.ensure_dirs()
    t = pd.Timestamp("2026-04-01 02:00", tz="UTC")
    leads = pd.DataFrame({
        "lead_id": ["A", "B", "C"], "created_at": [t, t + pd.Timedelta(days=2),
                                                   t + pd.Timedelta(days=3)],
        "channel": ["sem", "seo", "app"], "campaign": ["c1", "c2", "c3"],
        "landing_page": ["/pricing", "/", "/trial/math"], "grade": ["G9", None, "G3"],
        "subject": ["math", "art", None], "city": ["a", "b", None], "city_tier": [1, 2, None],
        "device": ["ios", "pc", "other"],
        "funnel_step": ["verified", "submitted", "booked_trial"],
        "phone_valid": [True, False, True], "email_domain_type": ["free", "none", "edu"],
    })
    events = pd.DataFrame({
        "event_id": ["E1", "E2", "E3"], "lead_id": ["A", "B", "C"],
        "event_type": ["pricing_page", "web_visit", "trial_class"],
        "event_time": [t - pd.Timedelta(hours=1), t + pd.Timedelta(days=1), t],
        "url": ["/pricing", "/", "/trial/math"], "dwell_seconds": [30.0, 5.0, 60.0]})
    orders = pd.DataFrame({"order_id": ["O1"], "id_hash": ["phone:p1"],
                           "ordered_at": [t - pd.Timedelta(days=100)], "amount": [6000.0]})
    outcomes = pd.DataFrame({"lead_id": ["A", "B", "C"], "converted": [True, False, False],
                             "converted_at": [t + pd.Timedelta(days=5), pd.NaT, pd.NaT],
                             "amount": [5000.0, 0.0, 0.0], "followup_channel": ["sales"] * 3})
    for name, frame in {"leads": leads, "events": events, "orders": orders,
                        "outcomes": outcomes}.items():
        frame.to_parquet(settings.raw_dir / f"{name}.parquet", index=False)
    pd.DataFrame({"lead_id": ["A", "B", "C"], "person_id": ["P1", "P1", "P2"]}).to_parquet(
        settings.identity_dir / "lead_person.parquet", index=False)
    pd.DataFrame({"id_hash": ["phone:p1"], "id_type": ["phone"], "person_id": ["P1"]}
                 ).to_parquet(settings.identity_dir / "identifier_person.parquet", index=False)


def test_committed_yaml_is_the_store_config() -> None:
    committed = yaml.safe_load((REPO / "feature_store.yaml").read_text())
    assert committed == repo_config_dict(Settings(), relative=True)
    assert (REPO / "feature_store.yaml").read_text() == render_feature_store_yaml(Settings())
    assert feature_store_yaml_path(Settings()) == REPO / "feature_store.yaml"


def test_production_profile_is_a_config_change() -> None:
    prod = Settings(profile="production", redis_url="redis://cache:6380/2",
                    postgres_url="postgresql://u:p@db:5432/feast")
    config = repo_config_dict(prod)
    assert config["online_store"]["type"] == "redis"
    assert config["online_store"]["redis_type"] == "redis"
    assert config["online_store"]["connection_string"] == "cache:6380,db=2"
    assert config["registry"]["registry_type"] == "sql"
    # the registry lives in its own database on the configured server
    assert config["registry"]["path"] == "postgresql+psycopg://u:p@db:5432/leadscore_feast"
    assert config["offline_store"] == {"type": "duckdb"}
    # the project folder's committed yaml stays the embedded one
    assert feature_store_yaml_path(prod) == REPO / "feature_store.production.yaml"


def test_written_yaml_names_no_password(tmp_path: Path) -> None:
    prod = Settings(workdir=tmp_path, profile="production",
                    redis_url="redis://:s3cret@cache:6380/2",
                    postgres_url="postgresql://u:hunter2@db:5432")
    path = write_feature_store_yaml(prod)
    assert path == tmp_path / "feature_repo" / "feature_store.yaml"
    text = path.read_text()
    assert "s3cret" not in text and "hunter2" not in text
    written = yaml.safe_load(text)
    assert written["registry"]["path"] == (
        "postgresql+psycopg://u:${LEADSCORE_FEAST_REGISTRY_PASSWORD}@db:5432/leadscore_feast")
    assert "password=${LEADSCORE_FEAST_REDIS_PASSWORD}" in written["online_store"][
        "connection_string"]


def _feast(repo: Path, *args: str) -> str:
    """Feast's own CLI on a work folder's repo folder, from another folder, no LEADSCORE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    done = subprocess.run([FEAST, "-c", str(repo), *args], capture_output=True, text=True,
                          env=env, timeout=180, cwd=repo.anchor)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


ALL_VIEWS = ("lead_facts", "person_behaviour", "person_rfm", "lead_predictive_tags",
             "lead_request_features")


@pytest.mark.slow
def test_feast_cli_on_a_work_folder(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    _tiny_crm(settings)
    runner = CliRunner()
    try:
        built = runner.invoke(features_app, ["build", "--workdir", str(tmp_path)])
    finally:
        os.environ.pop("LEADSCORE_WORKDIR", None)
        get_settings.cache_clear()
    assert built.exit_code == 0, built.output
    work_repo = tmp_path / "feature_repo"
    assert (work_repo / "feature_store.yaml").exists()
    listed = _feast(work_repo, "feature-views", "list")
    for name in ALL_VIEWS:
        assert name in listed
    described = _feast(work_repo, "feature-services", "describe", "lead_conversion_v1")
    assert "scoring_digest" in described and "half_life_days" in described
    # Feast's parser reads the plain declarations (no settings): nothing to change
    plan = subprocess.run([FEAST, "-c", str(REPO), "-f", str(work_repo / "feature_store.yaml"),
                           "plan"], capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("LEADSCORE_")})
    assert plan.returncode == 0, plan.stderr[-2000:]
    # only the views this build feeds (lead_predictive_tags is filled by `leadscore score`)
    _feast(work_repo, "materialize-incremental", "2026-04-05T00:00:00",
           "--views", "person_behaviour", "--views", "person_rfm")
    assert (settings.feast_state_dir / "online_store.db").exists()
    store = get_store(settings)
    assert store.get_feature_view("person_rfm").most_recent_end_time is not None


def test_custom_parameters_are_fixed_in_the_registry(tmp_path: Path) -> None:
    """Half-life and scoring file of a work folder: bound into the on-demand view's source, the
    same values through the training path and the online path."""
    scoring = tmp_path / "scoring.yaml"
    scoring.write_text("rule: {sales_threshold: -100}\nrfm_thresholds: {frequency: 1}\n")
    settings = Settings(workdir=tmp_path, intent_half_life_days=3.0, scoring_config=scoring)
    _tiny_crm(settings)
    build_features(settings)
    params = FeatureParams.from_settings(settings)
    store = get_store(settings)
    odfv = store.get_on_demand_feature_view("lead_request_features")
    assert params.call_source() in odfv.feature_transformation.udf_string
    service = store.get_feature_service(settings.feature_service)
    assert service.tags["half_life_days"] == "3.0"
    assert service.tags["scoring_digest"] == load_scoring_tables(scoring).digest
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    lead_person = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    offline = historical_features(store, entity_frame(leads, lead_person)).set_index("lead_id")
    assert set(offline["rule_grade"]) == {"sales"}  # every score reaches -100
    direct = transform_request({"snap_ts_s": [0.0], "snap_intent": [8.0],
                                "request_ts_s": [3 * 86400.0]}, params)
    assert direct["intent_score"] == pytest.approx([4.0])  # one 3-day half-life
    at = pd.Timestamp("2026-04-05", tz="UTC").to_pydatetime()
    materialize(settings, end=at)
    store = get_store(settings)
    for lead_id, person_id in (("B", "P1"), ("C", "P2")):
        form = leads.set_index("lead_id").loc[lead_id].to_dict()
        created = pd.Timestamp(form["created_at"]).to_pydatetime()
        online = online_features(store, form, person_id, created)
        row = offline.loc[lead_id]
        diffs = {k: (v, row[k]) for k, v in online.items()
                 if not (v == row[k] or (isinstance(v, float) and v == pytest.approx(row[k])))}
        assert not diffs, (lead_id, diffs)
    default = Settings().with_workdir(tmp_path)
    assert FeatureParams.from_settings(default) == FeatureParams()


@pytest.mark.services
def test_feast_cli_on_the_production_profile(postgres_available: None, redis_available: None,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from leadscore.profiles import drop_databases, redis_client
    from tests.integration.service_fixtures import production_settings, unique_prefix

    settings = production_settings(monkeypatch, tmp_path, unique_prefix("feastcli"),
                                   "redis://127.0.0.1:6379/12")
    client = redis_client(settings)
    try:
        _tiny_crm(settings)
        build_features(settings)
        work_repo = tmp_path / "feature_repo"
        written = yaml.safe_load((work_repo / "feature_store.yaml").read_text())
        assert written["registry"]["registry_type"] == "sql"
        listed = _feast(work_repo, "feature-views", "list")
        for name in ALL_VIEWS:
            assert name in listed
    finally:
        client.flushdb()
        client.close()
        drop_databases(settings)
        get_settings.cache_clear()


def test_cli_training_set_and_clean_errors(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    runner = CliRunner()
    try:
        missing = runner.invoke(features_app, ["build", "--workdir", str(tmp_path)])
        assert missing.exit_code == 2
        assert "raw table 'leads' not found" in missing.output
        _tiny_crm(settings)
        assert runner.invoke(features_app, ["build", "--workdir", str(tmp_path)]).exit_code == 0
        out = tmp_path / "ts.parquet"
        made = runner.invoke(features_app, ["training-set", "--workdir", str(tmp_path),
                                            "--out", str(out)])
        assert made.exit_code == 0, made.output
        bad_end = runner.invoke(features_app, ["materialize", "--workdir", str(tmp_path),
                                               "--end", "yesterday"])
        assert bad_end.exit_code == 2 and "--end" in bad_end.output
    finally:
        os.environ.pop("LEADSCORE_WORKDIR", None)
        get_settings.cache_clear()
    frame = pd.read_parquet(out)
    # data ends 2026-04-04: no 30-day window has closed, so every lead is excluded
    assert len(frame) == 0


@pytest.mark.parametrize("window", [1])
def test_labels_respect_the_window(window: int) -> None:
    from features.training_set import label_leads

    t = pd.Timestamp("2026-01-01", tz="UTC")
    leads = pd.DataFrame({"lead_id": ["A", "B", "C", "D"], "created_at": [t] * 3 + [
        t + pd.Timedelta(days=5)]})
    outcomes = pd.DataFrame({"lead_id": ["A", "B", "D"], "converted": [True, True, False],
                             "converted_at": [t + pd.Timedelta(hours=5),
                                              t + pd.Timedelta(days=3), pd.NaT]})
    labels = label_leads(leads, outcomes, window, t + pd.Timedelta(days=2)).set_index("lead_id")
    assert labels["label"].to_dict() == {"A": 1, "B": 0, "C": 0, "D": 0}
    assert labels["window_closed"].to_dict() == {"A": True, "B": True, "C": True, "D": False}
