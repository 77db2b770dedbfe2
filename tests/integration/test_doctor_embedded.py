"""``leadscore doctor`` on the embedded profile: a fresh, a broken and a ready work folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def _doctor_app():
    import typer

    from commands.doctor import doctor

    app = typer.Typer()
    app.command("doctor")(doctor)
    return app


@pytest.fixture
def embedded_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from leadscore.config import get_settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    monkeypatch.setenv("LEADSCORE_PROFILE", "embedded")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _invoke(*args: str):
    import json

    from typer.testing import CliRunner

    result = CliRunner().invoke(_doctor_app(), [*args, "--json"])
    return result.exit_code, {row["component"]: row for row in json.loads(result.stdout)}


def test_doctor_on_a_fresh_workdir_says_what_is_missing(embedded_env: Path) -> None:
    from typer.testing import CliRunner

    workdir = embedded_env / "fresh"
    code, rows = _invoke("--workdir", str(workdir))
    assert code == 1
    assert rows["work folders"]["status"] == "ok"
    assert rows["MLflow tracking store"]["status"] == "ok"  # created on first use
    assert rows["Feast registry (file)"]["status"] == "missing"
    champion = rows["champion of lead-conversion"]
    assert champion["status"] == "missing" and "leadscore demo" in champion["hint"]
    assert not workdir.exists(), "the doctor only looks: it must not create folders"

    human = CliRunner().invoke(_doctor_app(), ["--workdir", str(workdir)])
    text = " ".join(human.stdout.split())
    assert human.exit_code == 1
    assert "2 problem(s)" in text and "no model registered yet" in text


def test_doctor_reports_unwritable_folders_and_broken_sqlite_files(embedded_env: Path) -> None:
    workdir = embedded_env / "broken"
    (workdir / "mlruns").mkdir(parents=True)
    (workdir / "mlruns" / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    (workdir / "data").write_text("a file where the data folder should be")
    code, rows = _invoke("--workdir", str(workdir))
    assert code == 1
    assert rows["work folders"]["status"] == "fail"
    assert "is a file, not a folder" in rows["work folders"]["detail"]
    assert rows["MLflow tracking store"]["status"] == "fail"
    assert "not a readable SQLite database" in rows["MLflow tracking store"]["detail"]


def test_doctor_passes_once_feast_is_applied_and_a_champion_exists(embedded_env: Path) -> None:
    from mlflow.tracking import MlflowClient

    from features.store import ensure_applied, get_store
    from leadscore.config import get_settings

    settings = get_settings()
    settings.ensure_dirs()
    ensure_applied(get_store(settings), settings)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    client.create_registered_model(settings.model_name)
    version = client.create_model_version(
        settings.model_name, source=(settings.mlruns_dir / "artifacts" / "model").as_uri()
    )
    client.set_registered_model_alias(settings.model_name, "champion", version.version)

    code, rows = _invoke()
    assert code == 0, rows
    assert rows["champion of lead-conversion"]["detail"] == f"version {version.version}"
    assert rows["Feast registry (file)"]["status"] == "ok"
