"""The practitioners' two-dimensional lead score, and the scoring tables it shares.

``fit`` (explicit: who the lead is) + ``interest`` (implicit: what the person did) =
``rule_score``; ``rule_grade`` is ``"sales"`` at or above ``rule.sales_threshold`` (60),
else ``"nurture"``. Points come from ``leadscore/defaults/scoring.yaml`` (``fit_points``,
``interest_points``), overridable by ``settings.scoring_config``. The score is both a model
feature and the baseline the model has to beat.

Defaults: a category outside a point table scores the table's ``unknown`` entry (0 if absent);
a missing count scores as 0; "no interaction in 30 days" applies when the last event is more than
30 days before the request time (brand-new persons included: their days-since is the 9999
sentinel).
All functions are vectorised over equal-length sequences so the on-demand feature view scores
one request or a million training rows with the same code.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_SCORING_PATH = (
    Path(__file__).resolve().parent.parent / "leadscore" / "defaults" / ("scoring.yaml")
)
REQUIRED_TABLES = (
    "url_weights",
    "behaviour_weights",
    "rfm_thresholds",
    "fit_points",
    "interest_points",
    "rule",
)


class ScoringConfigError(ValueError):
    """The scoring tables are malformed; the message names the table and key."""


@dataclass(frozen=True)
class ScoringTables:
    """Weight and point tables (see scoring.yaml for the meaning of each)."""

    tables: dict[str, Any]

    def table(self, name: str) -> dict[str, Any]:
        return self.tables[name]

    @property
    def rule_threshold(self) -> float:
        """The 2-D rule score at or above which a lead goes to sales (``rule.sales_threshold``)."""
        return float(self.tables["rule"]["sales_threshold"])

    @property
    def digest(self) -> str:
        """Short hash of the tables: changes whenever a weight or point changes."""
        raw = json.dumps(self.tables, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()[:12]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ScoringConfigError(f"scoring config {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ScoringConfigError(f"scoring config {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ScoringConfigError(f"scoring config {path} must hold a mapping of table: values")
    return loaded


def _check_numeric(name: str, table: dict[str, Any]) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _check_numeric(f"{name}.{key}", value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ScoringConfigError(
                f"scoring table '{name}': value of '{key}' must be a number, got {value!r}"
            )


def _merged(extra: dict[str, Any], origin: str) -> ScoringTables:
    """The default tables with the tables of ``extra`` laid over them, key by key (checked)."""
    tables = _read_yaml(DEFAULT_SCORING_PATH)
    if extra:
        unknown = sorted(set(extra) - set(REQUIRED_TABLES))
        if unknown:
            raise ScoringConfigError(
                f"{origin}: unknown table(s) {unknown}; known: {list(REQUIRED_TABLES)}"
            )
        tables = copy.deepcopy(tables)
        for name, values in extra.items():
            if not isinstance(values, dict):
                raise ScoringConfigError(f"scoring table '{name}' must be a mapping")
            tables[name] = {**tables.get(name, {}), **values}
    for name in REQUIRED_TABLES:
        if not isinstance(tables.get(name), dict):
            raise ScoringConfigError(f"scoring table '{name}' is missing or not a mapping")
        _check_numeric(name, tables[name])
    return ScoringTables(tables)


@lru_cache(maxsize=8)
def _load_cached(override: str | None, mtime: float | None) -> ScoringTables:
    if not override:
        return _merged({}, "default scoring tables")
    return _merged(_read_yaml(Path(override)), f"scoring config {override}")


def load_scoring_tables(scoring_config: Path | str | None = None) -> ScoringTables:
    """The default tables, with the tables of ``scoring_config`` (if given) laid over them."""
    if scoring_config is None:
        return _load_cached(None, None)
    path = Path(scoring_config)
    mtime = path.stat().st_mtime if path.exists() else None
    return _load_cached(str(path), mtime)


def read_overlay(scoring_config: Path | str | None) -> dict[str, Any]:
    """The tables of a scoring override file as written there ({} for none), checked."""
    if scoring_config is None:
        return {}
    load_scoring_tables(scoring_config)  # clear errors naming the table and key
    return _read_yaml(Path(scoring_config))


@lru_cache(maxsize=32)
def tables_with_overlay(overlay_json: str) -> ScoringTables:
    """The default tables with the JSON mapping ``overlay_json`` laid over them."""
    try:
        extra = json.loads(overlay_json)
    except ValueError as exc:
        raise ScoringConfigError(f"scoring overrides are not valid JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise ScoringConfigError("scoring overrides must be a mapping of table: values")
    return _merged(extra, "scoring overrides")


def _points(values: Sequence[Any], table: dict[str, Any]) -> np.ndarray:
    unknown = float(table.get("unknown", 0))
    return np.array([float(table.get(str(v), unknown)) for v in values], dtype=float)


def fit_score(
    tables: ScoringTables,
    *,
    phone_valid: Sequence[int],
    email_domain_type: Sequence[str],
    city_tier: Sequence[int],
    grade: Sequence[str],
    funnel_step: Sequence[str],
    channel: Sequence[str],
) -> np.ndarray:
    """Explicit fit points from the submitted form (normalised categories, 0 = unknown tier)."""
    pts = tables.table("fit_points")
    tiers = ["unknown" if int(t) == 0 else str(int(t)) for t in city_tier]
    score = np.where(np.asarray(phone_valid, dtype=int) == 1, 0.0, float(pts["phone_invalid"]))
    score = score + _points(email_domain_type, pts["email_domain_type"])
    score = score + _points(tiers, pts["city_tier"])
    score = score + _points(grade, pts["grade"])
    score = score + _points(funnel_step, pts["funnel_step"])
    score = score + _points(channel, pts["channel"])
    return score


def interest_score(
    tables: ScoringTables,
    *,
    offline_event_90d: Sequence[float],
    live_class_90d: Sequence[float],
    download_90d: Sequence[float],
    email_open_90d: Sequence[float],
    site_visits_180d: Sequence[float],
    days_since_last_touch: Sequence[float],
) -> np.ndarray:
    """Implicit interest points from the person's behaviour before the request."""
    pts = tables.table("interest_points")

    def has(values: Sequence[float], at_least: float = 1) -> np.ndarray:
        return np.asarray(values, dtype=float) >= at_least

    score = np.where(has(offline_event_90d), pts["offline_event_90d"], 0.0)
    score = score + np.where(has(live_class_90d), pts["live_class_90d"], 0.0)
    score = score + np.where(has(download_90d), pts["download_90d"], 0.0)
    score = score + np.where(has(email_open_90d, 2), pts["email_open_twice_90d"], 0.0)
    score = score + np.where(has(site_visits_180d), pts["visited_site_180d"], 0.0)
    quiet = np.asarray(days_since_last_touch, dtype=float) > 30.0
    score = score + np.where(quiet, pts["no_interaction_30d"], 0.0)
    return score


def rule_grade(tables: ScoringTables, rule_score: Sequence[float]) -> list[str]:
    """``"sales"`` when the rule score reaches the threshold, else ``"nurture"``."""
    threshold = tables.rule_threshold
    return ["sales" if s >= threshold else "nurture" for s in rule_score]
