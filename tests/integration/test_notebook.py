"""Execute notebooks/model_analysis.ipynb on a small trained work folder so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from leadscore.config import PROJECT_ROOT, Settings
from training.train import train_model

NOTEBOOK = PROJECT_ROOT / "notebooks" / "model_analysis.ipynb"


@pytest.fixture(scope="module")
def small_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with a champion trained on a small synthetic training set."""
    from tests.synthetic import synthetic_training_set

    workdir = tmp_path_factory.mktemp("notebook")
    settings = Settings().with_workdir(workdir)
    settings.ensure_dirs()
    synthetic_training_set(2000, seed=5).to_parquet(settings.data_dir / "training_set.parquet")
    train_model(settings, trials=2, max_rounds=100)
    return workdir


def test_model_analysis_notebook_runs(small_workdir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(small_workdir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(small_workdir)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "lead-conversion v1" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # calibration, gains, run plots (2), SHAP
