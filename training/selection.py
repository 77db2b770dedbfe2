"""Choice by validation: which model ships, judged on out-of-time predictions, never the test.

``forward_blocks`` cuts the training period into time-ordered blocks; ``forward_predictions``
fits a model on the blocks before each block and predicts that block (forward chaining), so
every prediction is out of time. ``choose_model`` compares the candidates (tuned LightGBM,
default LightGBM, logistic regression, their blend) on the same out-of-time rows by log loss
and reports each one's difference to the chosen one with a paired-bootstrap interval; when a
simple model wins, the reason says so. The same predictions feed the calibration choice
(``training.calibration.fit_calibrator`` with ``blocks``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from leadscore.schemas import PROBABILITY_CLIP
from training.evaluate import paired_bootstrap, row_log_loss

TUNED = "tuned_lightgbm"
DEFAULT_LIGHTGBM = "default_lightgbm"
LOGISTIC = "logistic_regression"
BLEND = "blend"
CANDIDATES = (TUNED, DEFAULT_LIGHTGBM, LOGISTIC, BLEND)
SIMPLE = frozenset({DEFAULT_LIGHTGBM, LOGISTIC})
TIE = 1e-9  # log losses this close are equal (a blend of weight 0 is the logistic regression)
BLEND_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))
LABELS = {TUNED: "tuned LightGBM", DEFAULT_LIGHTGBM: "default LightGBM",
          LOGISTIC: "logistic regression", BLEND: "blend of tuned LightGBM and logistic regression"}

FitPredict = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]


def forward_blocks(times: Any, n_blocks: int) -> np.ndarray:
    """Block number (0 = oldest) per row: ``n_blocks`` blocks of about equal size in time
    order, cut only between distinct timestamps (rows sharing a time share a block)."""
    values = np.asarray(times)
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be at least 2, got {n_blocks}")
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cuts = []
    for k in range(1, n_blocks):
        target = int(round(len(values) * k / n_blocks))
        cut = int(np.searchsorted(ordered, ordered[min(target, len(values) - 1)], side="left"))
        cuts.append(max(cut, cuts[-1] if cuts else 0))
    positions = np.searchsorted(np.asarray(cuts), np.arange(len(values)), side="right")
    blocks = np.empty(len(values), dtype=int)
    blocks[order] = positions
    if np.unique(blocks).size < n_blocks:
        raise ValueError(
            f"cannot cut {len(values)} rows into {n_blocks} time blocks: too few distinct times")
    return blocks


def forward_predictions(blocks: np.ndarray, fit_predict: FitPredict) -> dict[str, np.ndarray]:
    """Out-of-time predictions: for each block after the first, ``fit_predict(fit_rows,
    predict_rows)`` (row positions; the fit rows are all earlier blocks) returns each
    model's predictions of the block. Rows of the first block stay NaN."""
    out: dict[str, np.ndarray] = {}
    for block in np.unique(blocks)[1:]:
        fit_rows, predict_rows = np.flatnonzero(blocks < block), np.flatnonzero(blocks == block)
        for name, values in fit_predict(fit_rows, predict_rows).items():
            out.setdefault(name, np.full(blocks.size, np.nan))[predict_rows] = values
    return out


def blend(p_lgbm: Any, p_linear: Any, weight: float) -> np.ndarray:
    """Blend on the logit scale: weight × LightGBM + (1 − weight) × logistic regression."""
    clip = (PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return expit(weight * logit(np.clip(p_lgbm, *clip))
                 + (1 - weight) * logit(np.clip(p_linear, *clip)))


def choose_blend_weight(y: np.ndarray, p_lgbm: np.ndarray, p_linear: np.ndarray) -> float:
    """The LightGBM weight (grid 0..1) with the lowest log loss (ties: more LightGBM)."""
    losses = {w: float(row_log_loss(y, blend(p_lgbm, p_linear, w)).mean())
              for w in BLEND_WEIGHTS}
    best = min(losses.values())
    return max(w for w, loss in losses.items() if loss <= best + 1e-12)


def cross_fitted_blend(
    y: np.ndarray, p_lgbm: np.ndarray, p_linear: np.ndarray, blocks: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Blend predictions whose weight, per block, was chosen on the other blocks (so the
    blend is judged on rows that did not choose its weight), and the weight on all rows."""
    out = np.empty_like(p_lgbm, dtype=float)
    for block in np.unique(blocks):
        mine = blocks == block
        weight = choose_blend_weight(y[~mine], p_lgbm[~mine], p_linear[~mine])
        out[mine] = blend(p_lgbm[mine], p_linear[mine], weight)
    return out, choose_blend_weight(y, p_lgbm, p_linear)


@dataclass
class ModelChoice:
    """The chosen candidate, every candidate's figures on the same rows, and why."""

    chosen: str
    rows: int
    scheme: str
    candidates: dict[str, dict[str, Any]]
    reason: str
    blend_weight: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def simple_model_wins(self) -> bool:
        return self.chosen in SIMPLE

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "simple_model_wins": self.simple_model_wins,
                "reason": self.reason, "rows": self.rows, "scheme": self.scheme,
                "rule": "lowest out-of-time log loss (never the test rows)",
                "blend_weight_lightgbm": self.blend_weight, "candidates": self.candidates,
                **self.extra}


def choose_model(
    y: Any, predictions: Mapping[str, Any], *, scheme: str, order: Sequence[str] = CANDIDATES,
    blend_weight: float | None = None, seed: int = 0, n_boot: int = 1000,
) -> ModelChoice:
    """The candidate with the lowest log loss on these out-of-sample rows (ties: earlier in
    ``order``), with each candidate's log loss, AUC and log-loss difference to the chosen one
    (paired bootstrap, 95%)."""
    y_arr = np.asarray(y, dtype=float).ravel()
    names = [n for n in order if n in predictions] + [n for n in predictions if n not in order]
    if not names:
        raise ValueError("choose_model needs at least one candidate")
    losses = {n: float(row_log_loss(y_arr, predictions[n]).mean()) for n in names}
    best = min(losses.values())
    chosen = next(n for n in names if losses[n] <= best + TIE)  # ties: earlier in ``order``
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        p = np.asarray(predictions[name], dtype=float)
        entry: dict[str, Any] = {"log_loss": losses[name],
                                 "roc_auc": float(roc_auc_score(y_arr, p))}
        if name != chosen:
            diff = paired_bootstrap(y_arr, p, predictions[chosen], n_boot=n_boot, seed=seed)
            entry["log_loss_minus_chosen"] = {k: diff[k] for k in ("difference", "low", "high")}
        table[name] = entry
    runner_up = min((n for n in names if n != chosen), key=lambda n: losses[n], default=None)
    reason = f"{LABELS.get(chosen, chosen)} ships: lowest out-of-time log loss " \
             f"{losses[chosen]:.4f} on {y_arr.size} rows ({scheme})"
    if runner_up is not None:
        d = table[runner_up]["log_loss_minus_chosen"]
        beyond = "beyond noise" if d["low"] > 0 else "within noise"
        reason += (f"; next {LABELS.get(runner_up, runner_up)} {losses[runner_up]:.4f} "
                   f"(+{d['difference']:.4f}, 95% interval [{d['low']:+.4f}, {d['high']:+.4f}],"
                   f" {beyond})")
    if chosen in SIMPLE and TUNED in table:
        d = table[TUNED]["log_loss_minus_chosen"]
        reason += (f". The simple model wins: the tuned LightGBM is worse by "
                   f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
    return ModelChoice(chosen=chosen, rows=int(y_arr.size), scheme=scheme, candidates=table,
                       reason=reason, blend_weight=blend_weight)


# ---- the product's training (``training.train``): candidates, choice, calibration, package ----
TRAIN_BLOCKS = 4  # time blocks of the train slice; the validation slice is one more block
DEFAULT_LGBM_ROUNDS = 100  # LightGBM's own default number of boosting rounds


@dataclass
class Selection:
    """The model choice, the calibrator fitted for the chosen model, and what they saw."""

    choice: ModelChoice
    calibrator: Any
    rows: int
    blocks: int


def _lgb_fit(params: Mapping[str, Any], x: Any, y: np.ndarray, cats: Sequence[str],
             rounds: int) -> Any:
    import lightgbm as lgb

    from training.tune import DEFAULT_MAX_BIN, threads_for

    dataset = lgb.Dataset(x, label=y.astype(float),
                          categorical_feature=[c for c in cats if c in x.columns] or "auto",
                          params={"max_bin": DEFAULT_MAX_BIN, "verbosity": -1,
                                  "feature_pre_filter": False})
    full = {**params, "n_jobs": threads_for(len(x), int(params.get("n_jobs", 2)))}
    full.pop("metric", None)
    return lgb.train(full, dataset, num_boost_round=rounds)


def train_default_lightgbm(x: Any, y: np.ndarray, cats: Sequence[str], seed: int) -> Any:
    """LightGBM with its default parameters (100 rounds) on prepared features."""
    from training.search_space import BASE_PARAMS

    return _lgb_fit({**BASE_PARAMS, "seed": seed}, x, y, cats, DEFAULT_LGBM_ROUNDS)


def choose_and_calibrate(
    split: Any, features: Sequence[str], cats: Sequence[str], tuned_params: Mapping[str, Any],
    rounds: int, seed: int, label: str = "label",
) -> Selection:
    """Forward chaining over the training period (train slice in ``TRAIN_BLOCKS`` time blocks,
    then the validation slice): each candidate is fitted on the blocks before a block and
    predicts it; the model is chosen on those out-of-time rows (``choose_model``) and its
    calibrator fitted on its out-of-time predictions (``fit_calibrator`` with the blocks,
    identity unless a calibrator gains beyond noise). The test slice is never seen."""
    import pandas as pd

    from training.baselines import LogisticBaseline
    from training.calibration import fit_calibrator
    from training.model import categorical_levels, prepare_features
    from training.search_space import BASE_PARAMS

    development = pd.concat([split.train, split.valid], ignore_index=True)
    y = development[label].astype(int).to_numpy()
    blocks = np.concatenate([forward_blocks(split.train[split.time_col].to_numpy(), TRAIN_BLOCKS),
                             np.full(len(split.valid), TRAIN_BLOCKS)])

    def fit_predict(fit_rows: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        if np.unique(y[fit_rows]).size < 2:
            return {}
        past, block = development.iloc[fit_rows], development.iloc[rows]
        levels = categorical_levels(past, cats)
        x_past, x_block = (prepare_features(f, features, levels) for f in (past, block))
        tuned = _lgb_fit({**tuned_params, "seed": seed}, x_past, y[fit_rows], cats, rounds)
        default = _lgb_fit({**BASE_PARAMS, "seed": seed}, x_past, y[fit_rows], cats,
                           DEFAULT_LGBM_ROUNDS)
        linear = LogisticBaseline(features, cats, seed=seed).fit(past, y[fit_rows])
        return {TUNED: tuned.predict(x_block), DEFAULT_LIGHTGBM: default.predict(x_block),
                LOGISTIC: linear.predict_proba(block)}

    oot = forward_predictions(blocks, fit_predict)
    scored = ~np.isnan(oot[TUNED]) if TUNED in oot else np.zeros(len(y), dtype=bool)
    if scored.sum() == 0 or np.unique(y[scored]).size < 2:
        raise ValueError("the training period holds too few converted leads to choose a model "
                         "forward in time: need both outcomes in its earliest block")
    y_s, blocks_s = y[scored], blocks[scored]
    predictions = {name: values[scored] for name, values in oot.items()}
    predictions[BLEND], weight = cross_fitted_blend(
        y_s, predictions[TUNED], predictions[LOGISTIC], blocks_s)
    scheme = (f"forward in time: {TRAIN_BLOCKS} blocks of the train slice and the validation "
              "slice, each predicted by models fitted on the blocks before it")
    choice = choose_model(y_s, predictions, scheme=scheme, blend_weight=weight, seed=seed)
    calibrator = fit_calibrator(predictions[choice.chosen], y_s, blocks=blocks_s, seed=seed)
    return Selection(choice=choice, calibrator=calibrator, rows=int(scored.sum()),
                     blocks=int(np.unique(blocks_s).size))


def package_model(
    choice: ModelChoice, calibrator: Any, *, booster: Any, default_booster: Any, linear: Any,
    features: Sequence[str], levels: Mapping[str, Sequence[str]], metadata: Mapping[str, Any],
) -> Any:
    """The packaged pyfunc model of the chosen candidate (fitted on the train slice)."""
    from training.explain import REASON_TEMPLATES
    from training.model import BlendedLeadModel, LeadConversionModel

    common = {"calibrator": calibrator, "feature_columns": features, "levels": levels,
              "reason_templates": REASON_TEMPLATES, "metadata": metadata}
    tuned_string = booster.model_to_string(num_iteration=booster.best_iteration)
    if choice.chosen == TUNED:
        return LeadConversionModel(model_string=tuned_string, **common)
    if choice.chosen == DEFAULT_LIGHTGBM:
        return LeadConversionModel(model_string=default_booster.model_to_string(), **common)
    if choice.chosen == LOGISTIC:
        return BlendedLeadModel(linear=linear, weight=0.0, **common)
    if choice.chosen == BLEND:
        return BlendedLeadModel(linear=linear, weight=float(choice.blend_weight or 0.0),
                                model_string=tuned_string, **common)
    raise ValueError(f"unknown model choice {choice.chosen!r}")
