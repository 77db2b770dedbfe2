"""The parameters of the feature contract: a fixed fact of each feature version.

The request-time transformation (``features.request.transform_request``), the offline build and
the service's history writer all take one ``FeatureParams``: the intent half-life and the scoring
tables. Nothing in the feature functions reads the process settings; the callers build the
value once (``FeatureParams.from_settings``) and pass it.

The on-demand feature view carries its parameters in its own source text, a literal call
``feature_params(<half-life>, '<scoring overrides as JSON>')`` (see ``features.store``):
Feast stores that text in the registry and runs it both for training sets and online, so the
two paths use one set of parameters, and a change of parameters is a change of the view that
``feast plan`` shows. The feature service records them as tags (``half_life_days``,
``scoring_digest``) and ``feature_service_version`` hashes them.

Scoring overrides are the tables of the user's scoring file (``settings.scoring_config``) as
written there, laid key by key over the shipped ``leadscore/defaults/scoring.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from features.score2d import ScoringTables, read_overlay, tables_with_overlay
from leadscore.config import Settings

# the settings' defaults (one place: leadscore.config.Settings)
DEFAULT_HALF_LIFE_DAYS = float(Settings.model_fields["intent_half_life_days"].default)
# the feature service declared in feature_repo/definitions.py (settings.feature_service renames it)
DECLARED_FEATURE_SERVICE = str(Settings.model_fields["feature_service"].default)
NO_OVERRIDES = "{}"


class FeatureParamsError(ValueError):
    """The feature parameters are malformed; the message names the field."""


def _canonical_json(overlay: dict[str, Any]) -> str:
    return json.dumps(overlay, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FeatureParams:
    """Intent half-life (days) and scoring overrides (canonical JSON) of one feature version."""

    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    scoring_overrides: str = NO_OVERRIDES

    def __post_init__(self) -> None:
        value = self.half_life_days
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise FeatureParamsError(
                f"feature params 'half_life_days': must be a positive number of days, "
                f"got {value!r}")
        object.__setattr__(self, "half_life_days", float(value))
        if not isinstance(self.scoring_overrides, str):
            raise FeatureParamsError(
                "feature params 'scoring_overrides': must be the JSON text of a mapping")
        self.tables  # noqa: B018 - check the overrides now (clear error naming the table)

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureParams:
        """The parameters the settings configure (half-life, the scoring file's tables)."""
        overlay = read_overlay(settings.scoring_config)
        return feature_params(settings.intent_half_life_days, _canonical_json(overlay))

    @cached_property
    def tables(self) -> ScoringTables:
        """The scoring tables: the shipped defaults with the overrides laid over them."""
        return tables_with_overlay(self.scoring_overrides)

    @property
    def digest(self) -> str:
        """Short hash of the parameters (half-life and the merged tables)."""
        raw = json.dumps({"half_life_days": self.half_life_days,
                          "scoring": self.tables.digest}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]

    def tags(self) -> dict[str, str]:
        """The parameters as Feast tags (string values) of the feature service."""
        return {"half_life_days": repr(self.half_life_days),
                "scoring_digest": self.tables.digest,
                "feature_params": self.digest}

    def call_source(self) -> str:
        """The literal Python call that rebuilds these parameters (for the view's source)."""
        if self == FeatureParams():
            return "feature_params()"
        return f"feature_params({self.half_life_days!r}, {self.scoring_overrides!r})"


@lru_cache(maxsize=64)
def feature_params(half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
                   scoring_overrides: str = NO_OVERRIDES) -> FeatureParams:
    """``FeatureParams(half_life_days, scoring_overrides)``, built once per distinct value (the
    on-demand view calls this for every batch)."""
    return FeatureParams(half_life_days, scoring_overrides)
