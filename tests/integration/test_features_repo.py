"""The Feast repo through the real ``feast`` CLI in a temporary work folder, the single store
configuration, and the ``leadscore features`` commands."""

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
from features.store import render_feature_store_yaml, repo_config_dict, write_feature_store_yaml
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


def test_production_profile_is_a_config_change() -> None:
    prod = Settings().with_(profile="production", redis_url="redis://cache:6380/2",
                            postgres_url="postgresql://u:p@db:5432/feast")
    config = repo_config_dict(prod)
    assert config["online_store"]["type"] == "redis"
    assert config["online_store"]["redis_type"] == "redis"
    assert config["online_store"]["connection_string"] == "cache:6380,db=2"
    assert config["registry"]["registry_type"] == "sql"
    # the registry lives in its own database on the configured server
    assert config["registry"]["path"] == "postgresql+psycopg://u:p@db:5432/leadscore_feast"
    assert config["offline_store"] == {"type": "duckdb"}


@pytest.mark.slow
def test_feast_cli_apply_list_and_materialize(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    _tiny_crm(settings)
    runner = CliRunner()
    try:
        built = runner.invoke(features_app, ["build", "--workdir", str(tmp_path)])
    finally:
        os.environ.pop("LEADSCORE_WORKDIR", None)
        get_settings.cache_clear()
    assert built.exit_code == 0, built.output
    assert (settings.features_dir / "person_behaviour.parquet").exists()
    fs_yaml = write_feature_store_yaml(settings, tmp_path / "feature_store.yaml",
                                       relative=False)
    env = {**os.environ, "LEADSCORE_WORKDIR": str(tmp_path)}

    def feast(*args: str) -> str:
        done = subprocess.run([FEAST, "-c", str(REPO), "-f", str(fs_yaml), *args],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    feast("apply")
    assert (settings.feast_state_dir / "registry.db").exists()
    listed = feast("feature-views", "list")
    for name in ("lead_facts", "person_behaviour", "person_rfm", "lead_request_features"):
        assert name in listed
    # only the views this build feeds (lead_predictive_tags is filled by `leadscore score`)
    feast("materialize-incremental", "2026-04-05T00:00:00",
          "--views", "person_behaviour", "--views", "person_rfm")
    assert (settings.feast_state_dir / "online_store.db").exists()
    from features.store import get_store

    assert get_store(settings).get_feature_service("lead_conversion_v1") is not None


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
