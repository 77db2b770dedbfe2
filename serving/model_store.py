"""Moving the champion from the MLflow registry into BentoML's model store.

An import is a snapshot: the BentoML model carries the registry version it was taken from as a
label, so a running service (and a built Bento) always says which version it serves.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from leadscore.config import Settings

if TYPE_CHECKING:
    from serving.predictor import LoadedModel

BENTO_MODEL_NAME = "lead-conversion"


def bentoml_home(settings: Settings) -> str:
    """BentoML's home for this work folder (``BENTOML_HOME`` wins when set)."""
    return os.environ.get("BENTOML_HOME") or str(settings.workdir / "bentoml_home")


def import_champion(settings: Settings) -> tuple[str, str]:
    """Import ``models:/<name>@champion`` into the BentoML store; return (bento tag, version)."""
    import bentoml
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    version = mlflow.MlflowClient().get_model_version_by_alias(settings.model_name, "champion")
    for existing in bentoml.models.list(BENTO_MODEL_NAME):
        if existing.info.labels.get("registry_version") == str(version.version):
            return str(existing.tag), str(version.version)
    model = bentoml.mlflow.import_model(
        BENTO_MODEL_NAME,
        model_uri=f"models:/{settings.model_name}/{version.version}",
        labels={"registry_name": settings.model_name, "registry_version": str(version.version)},
        metadata={"run_id": version.run_id or ""},
    )
    return str(model.tag), str(version.version)


def load_bento_champion(settings: Settings) -> LoadedModel | None:
    """The newest imported champion from the BentoML store, or None when none was imported."""
    import bentoml

    from serving.predictor import LoadedModel

    try:
        model = bentoml.models.get(f"{BENTO_MODEL_NAME}:latest")
    except bentoml.exceptions.NotFound:
        return None
    pyfunc = bentoml.mlflow.load_model(model)
    version = model.info.labels.get("registry_version", str(model.tag.version))
    return LoadedModel(pyfunc.unwrap_python_model(), settings.model_name, version)
