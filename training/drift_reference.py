"""The drift reference of the champion: what training writes on promotion, what drift reads.

* ``settings.reports_dir / "reference.parquet"``: a sample of the validation/test rows scored by
  the champion — the model's feature columns (same names as the ``features`` dict the service
  logs) plus ``probability`` (float in [0, 1]) and ``tier`` (A/B/C/D). No identifiers.
* ``settings.reports_dir / "reference.json"``::

      {"model_name": "lead-conversion", "model_version": "3",
       "feature_columns": ["channel", "intent_score", ...],
       "categorical_columns": ["channel", ...]}

Written only when a model is promoted (:func:`write_reference`, called by training), so a
challenger that lost never becomes the baseline; ``monitoring.drift.load_reference`` checks the
version against the registry's champion on every read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from leadscore.config import Settings

PREDICTION_COLUMNS = ("probability", "tier")


class ReferenceFileError(ValueError):
    """The reference files are missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class ReferenceInfo:
    """What ``reference.json`` says about the champion and its feature columns."""

    model_name: str
    model_version: str
    feature_columns: list[str]
    categorical_columns: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "feature_columns": list(self.feature_columns),
            "categorical_columns": list(self.categorical_columns),
        }


def reference_paths(settings: Settings) -> tuple[Path, Path]:
    """``(reference.parquet, reference.json)`` under the reports folder."""
    return settings.reports_dir / "reference.parquet", settings.reports_dir / "reference.json"


def _check_reference(frame: pd.DataFrame, info: ReferenceInfo, source: str) -> None:
    if not info.feature_columns:
        raise ReferenceFileError(f"{source}: 'feature_columns' is empty")
    clashing = sorted(set(info.feature_columns) & set(PREDICTION_COLUMNS))
    if clashing:
        raise ReferenceFileError(f"{source}: feature column(s) {clashing} clash with predictions")
    unknown = sorted(set(info.categorical_columns) - set(info.feature_columns))
    if unknown:
        raise ReferenceFileError(
            f"{source}: categorical column(s) {unknown} are not in 'feature_columns'"
        )
    missing = [c for c in [*info.feature_columns, *PREDICTION_COLUMNS] if c not in frame.columns]
    if missing:
        raise ReferenceFileError(f"{source}: reference.parquet lacks column(s) {missing}")
    if frame.empty:
        raise ReferenceFileError(f"{source}: reference.parquet has no rows")


def write_reference(
    settings: Settings,
    frame: pd.DataFrame,
    model_name: str,
    model_version: str,
    feature_columns: list[str],
    categorical_columns: list[str],
) -> tuple[Path, Path]:
    """Write the champion's reference sample and its description (the contract above).

    The one writer: training calls it when ``model_version`` becomes the champion."""
    info = ReferenceInfo(model_name, str(model_version), list(feature_columns),
                         list(categorical_columns))
    _check_reference(frame, info, "write_reference")
    parquet_path, json_path = reference_paths(settings)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    frame[[*info.feature_columns, *PREDICTION_COLUMNS]].to_parquet(parquet_path, index=False)
    json_path.write_text(json.dumps(info.to_dict(), indent=2))
    return parquet_path, json_path


def read_reference(settings: Settings) -> tuple[pd.DataFrame, ReferenceInfo]:
    """The reference sample and its description as written; clear error when absent."""
    parquet_path, json_path = reference_paths(settings)
    if not parquet_path.exists() or not json_path.exists():
        raise ReferenceFileError(
            f"no reference: train a model first (expected {parquet_path} and {json_path})"
        )
    try:
        raw = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ReferenceFileError(f"{json_path} is not valid JSON: {exc}") from None
    missing = [k for k in ("model_name", "model_version", "feature_columns") if k not in raw]
    if missing:
        raise ReferenceFileError(f"{json_path} lacks key(s) {missing}")
    info = ReferenceInfo(
        model_name=str(raw["model_name"]),
        model_version=str(raw["model_version"]),
        feature_columns=[str(c) for c in raw["feature_columns"]],
        categorical_columns=[str(c) for c in raw.get("categorical_columns", [])],
    )
    frame = pd.read_parquet(parquet_path)
    _check_reference(frame, info, str(json_path))
    return frame, info
