"""The champion model: from the MLflow registry, through BentoML's model store, into the service.

An import is a snapshot: the BentoML model ``lead-conversion`` carries the registry name and
version it was taken from as labels, so a running service (and a built Bento) always says which
version it serves. ``load_champion`` asks the registry for the current champion and imports it
when the store lacks that version; where no registry is reachable (inside a built Bento) it
serves the newest imported model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from leadscore.config import Settings
from leadscore.schemas import CHAMPION_ALIAS

logger = logging.getLogger("leadscore.model_store")

BENTO_MODEL_NAME = "lead-conversion"


class ModelUnavailableError(RuntimeError):
    """No champion model could be loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """The model the service answers with (and its fast scorer); swapped as one object."""

    python_model: Any
    name: str
    version: str
    source: str
    scorer: Any


def bentoml_home(settings: Settings) -> str:
    """BentoML's home for this work folder (``BENTOML_HOME`` wins when set)."""
    return os.environ.get("BENTOML_HOME") or str(settings.workdir / "bentoml_home")


def registry_champion(settings: Settings) -> Any:
    """The champion's ``ModelVersion`` in the MLflow registry (raises when there is none)."""
    import mlflow

    from training.registry import point_mlflow_at

    point_mlflow_at(settings)  # the import below resolves models:/ URIs through it
    return mlflow.MlflowClient().get_model_version_by_alias(settings.model_name, CHAMPION_ALIAS)


def import_champion(settings: Settings) -> tuple[str, str]:
    """Import the registry's champion into the BentoML store (once per version).

    Returns ``(BentoML tag, registry version)``.
    """
    import bentoml

    version = registry_champion(settings)
    try:
        imported = bentoml.models.list(BENTO_MODEL_NAME)
    except bentoml.exceptions.NotFound:  # nothing imported yet
        imported = []
    for existing in imported:
        labels = existing.info.labels
        if (labels.get("registry_name") == settings.model_name
                and labels.get("registry_version") == str(version.version)):
            return str(existing.tag), str(version.version)
    model = bentoml.mlflow.import_model(
        BENTO_MODEL_NAME,
        model_uri=f"models:/{settings.model_name}/{version.version}",
        labels={"registry_name": settings.model_name, "registry_version": str(version.version),
                "registry_alias": CHAMPION_ALIAS},
        metadata={"run_id": version.run_id or "", "tracking_uri": settings.tracking_uri},
    )
    return str(model.tag), str(version.version)


def _loaded(pyfunc_model: Any, name: str, version: str, source: str) -> LoadedModel:
    from serving.scoring import FastScorer

    python_model = pyfunc_model.unwrap_python_model()
    return LoadedModel(python_model, name, version, source, FastScorer(python_model))


def load_bento_model(tag: str) -> LoadedModel:
    """A model of the BentoML store by tag (e.g. ``lead-conversion:latest``)."""
    import bentoml

    model = bentoml.models.get(tag)
    labels = model.info.labels
    return _loaded(bentoml.mlflow.load_model(model),
                   labels.get("registry_name", BENTO_MODEL_NAME),
                   labels.get("registry_version", str(model.tag.version)), f"bentoml:{model.tag}")


def newest_import(settings: Settings) -> str:
    """Tag of the newest BentoML model imported from ``settings.model_name`` (or NotFound)."""
    import bentoml

    models = [m for m in bentoml.models.list(BENTO_MODEL_NAME)
              if m.info.labels.get("registry_name") == settings.model_name]
    if not models:
        raise bentoml.exceptions.NotFound(f"no import of '{settings.model_name}'")
    return str(max(models, key=lambda m: m.info.creation_time).tag)


def load_champion(settings: Settings) -> LoadedModel:
    """The current champion: registry version via the BentoML store, else the newest import."""
    import mlflow

    try:
        version = registry_champion(settings)
    except Exception as registry_error:  # no registry here, or no champion in it
        try:
            return load_bento_model(newest_import(settings))
        except Exception:  # noqa: BLE001 - the store is empty too
            raise ModelUnavailableError(
                f"no champion of '{settings.model_name}' in the MLflow registry "
                f"({type(registry_error).__name__}) and none imported into BentoML; "
                "run `leadscore train`, then reload"
            ) from None
    try:
        tag, _ = import_champion(settings)
        return load_bento_model(tag)
    except Exception as exc:  # noqa: BLE001 - BentoML store unusable: load from MLflow
        logger.warning("BentoML import of the champion failed (%s); loading from MLflow",
                       type(exc).__name__)
    uri = f"models:/{settings.model_name}/{version.version}"
    return _loaded(mlflow.pyfunc.load_model(uri), settings.model_name, str(version.version),
                   f"mlflow:{uri}")
