"""``leadscore train`` with a backing service down: one clear line, exit 2, nothing done.

The services are pointed at closed loopback ports (port 1); no test stops a shared service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from commands.train import SERVICE_DOWN_EXIT, train_command
from leadscore.config import get_settings, load_settings
from leadscore.profiles import MLFLOW_DATABASE, postgres_url
from tests.services import service_reachable
from tests.synthetic import synthetic_training_set

SECRET = "s3cret-pw"
DEAD_POSTGRES = f"postgresql://postgres:{SECRET}@127.0.0.1:1"
REAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A work folder holding only a small training set (and a CSV export of it)."""
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LEADSCORE_MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "data").mkdir()
    frame = synthetic_training_set(600)
    frame.to_parquet(tmp_path / "data" / "training_set.parquet", index=False)
    frame.to_csv(tmp_path / "export.csv", index=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _real_registry_versions() -> int | None:
    """Model versions in the shared production MLflow registry (None when not checkable)."""
    if not service_reachable("127.0.0.1", 5432):
        return None
    settings = load_settings({"LEADSCORE_POSTGRES_URL": REAL_POSTGRES})
    try:
        with psycopg.connect(postgres_url(settings, MLFLOW_DATABASE, driver=None),
                             connect_timeout=2) as conn:
            return int(conn.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    except psycopg.Error:  # no such database or table yet: nothing registered there
        return None


def _train_fails(workdir: Path, *args: str) -> str:
    """Run ``train`` expecting the service failure; return its one error line."""
    app = typer.Typer()
    app.command()(train_command)
    before = _files(workdir)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "--trials", "2", *args])
    seconds = time.perf_counter() - started
    assert result.exit_code == SERVICE_DOWN_EXIT, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    # nothing was written: no Optuna or MLflow database, no run, no report, no artifacts
    assert _files(workdir) == before
    assert seconds < 30, f"the failure took {seconds:.1f}s (timeouts are 2 s)"
    return lines[0]


def test_production_train_with_postgres_down_fails_before_any_work(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_PROFILE", "production")
    monkeypatch.setenv("LEADSCORE_POSTGRES_URL", DEAD_POSTGRES)
    monkeypatch.setenv("LEADSCORE_REDIS_URL", "redis://127.0.0.1:1/0")
    versions_before = _real_registry_versions()
    line = _train_fails(workdir, "--workers", "2")
    assert line.startswith("error: cannot train: PostgreSQL at ")
    assert "postgresql://postgres:***@127.0.0.1:1/postgres" in line
    assert "not reachable" in line and "leadscore doctor" in line
    assert "Redis" not in line  # down too, but training does not need the online store
    assert _real_registry_versions() == versions_before


@pytest.mark.parametrize(("option", "env", "expected"), [
    (["--storage", f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/leadscore_optuna"], {},
     "Optuna storage at postgresql+psycopg://postgres:***@127.0.0.1:1/leadscore_optuna"),
    ([], {"LEADSCORE_MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
     "MLflow tracking store at http://127.0.0.1:1"),
    (["--csv", "export.csv", "--label", "label"],
     {"LEADSCORE_MLFLOW_TRACKING_URI": f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/mlflow"},
     "MLflow tracking store at postgresql+psycopg://u:***@127.0.0.1:1/mlflow"),
    (["--csv", "export.csv", "--label", "label", "--storage",
      f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/leadscore_optuna"], {},
     "Optuna storage at postgresql+psycopg://postgres:***@127.0.0.1:1/leadscore_optuna"),
], ids=["optuna-storage", "mlflow-server", "csv-mlflow-database", "csv-optuna-storage"])
def test_embedded_train_names_the_unreachable_store(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, option: list[str], env: dict[str, str],
        expected: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [str(workdir / a) if a.endswith(".csv") else a for a in option]
    line = _train_fails(workdir, *args)
    assert line.startswith("error: cannot train: ") and expected in line
    assert "is not usable" in line


def test_time_and_order_is_time_together_are_refused(workdir: Path) -> None:
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "--csv",
                                      str(workdir / "export.csv"), "--label", "label",
                                      "--time", "created", "--order-is-time"])
    assert result.exit_code == 2
    assert "--time and --order-is-time exclude each other" in result.output
