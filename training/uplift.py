"""Uplift model: per lead, the outcome under each arm (follow-up channel, e-mail …) and the
incremental effect of each arm over a reference arm, learned from randomised rows only.

Learner: EconML's X-learner (``econml.metalearners.XLearner``) with LightGBM as every base
learner — per-arm outcome models (LightGBM classifiers, probabilities), effect models (LightGBM
regressors on the imputed effects) and the known randomisation shares as propensities (why
EconML and why the X-learner: ``docs/uplift.md``). Arms are positions 0…K−1, the reference
(control) arm first.

Protocol (:func:`fit_uplift`), all seeded:

1. **Cross-fitting**: ``folds`` stratified folds (by arm × outcome). In each, Optuna tunes the
   LightGBM parameters on the fold's *training part only* (``tune_rows`` rows of it at most,
   one inner 2/3-1/3 split stratified the same way; objective: the mean over arms of the Qini
   coefficient on the inner held-out rows, ``training.uplift_metrics``), the learner is
   fitted on the training part with the best parameters, and predicts the held-out fold.
   Every row thus gets an out-of-fold uplift per arm and an out-of-fold outcome per arm.
2. **Evaluation** on the out-of-fold predictions: Qini / AUUC per arm against the reference;
   doubly-robust scores (the out-of-fold per-arm outcomes as ``mu``, the arm shares as
   propensities) give each arm's average effect with a bootstrap interval and the value of the
   learned policy (argmax over arms of ``value × uplift − cost``) against treating everyone
   with the best arm and treating no one; the out-of-fold uplift split in quintiles per arm,
   each with its DR-estimated effect and interval, is what :meth:`UpliftModel.intervals`
   returns for a new row ("leads like this one": the interval of its quintile).
3. **The shipped model** averages the ``folds`` fold learners (each fitted on (K−1)/K of the
   rows): no extra fit, and the averaging steadies a noisy effect estimate.

``training.uplift_registry`` logs, registers and gates it in MLflow; ``fit_uplift_csv`` is the
flat-export path of ``leadscore uplift train``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow.pyfunc
import numpy as np
import optuna
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import StratifiedKFold, train_test_split

from training.uplift_metrics import (
    bootstrap_mean,
    dr_scores,
    policy_rows,
    qini_curve,
    uplift_curve,
    uplift_scores,
)

DEFAULT_FOLDS = 5
DEFAULT_TRIALS = 8
DEFAULT_TUNE_ROWS = 12_000
MIN_ROWS_PER_OUTCOME_PER_ARM = 10
INTERVAL_BINS = 5
YES_NO = {"yes": 1.0, "true": 1.0, "y": 1.0, "no": 0.0, "false": 0.0, "n": 0.0}
LGBM_FIXED: dict[str, Any] = {"verbose": -1, "n_jobs": 1, "subsample_freq": 1}
# Strongly regularised: per-lead effects are weak signals in noisy 0/1 outcomes, and shallow,
# slow, heavily pooled trees find them best (on a generated world with known effects: correlation
# with the true effects 0.53 / 0.54 / 0.43 against 0.40 / 0.41 / 0.27 with 15 leaves and 100
# rows per leaf; benchmarks/bench_causal_routing.py, docs/uplift.md)
DEFAULT_LGBM: dict[str, Any] = {
    "n_estimators": 200, "learning_rate": 0.01, "num_leaves": 4, "min_child_samples": 800,
    "colsample_bytree": 0.7, "subsample": 0.7, "reg_lambda": 30.0,
}

ProgressCallback = Callable[[str], None]


class UpliftInputError(ValueError):
    """Bad input for the uplift model; the message names the column, arm or option at fault."""


class ProbabilityRegressor(BaseEstimator, RegressorMixin):
    """A LightGBM classifier seen as a regressor of a 0/1 outcome: ``predict`` returns the
    probability (what the X-learner's per-arm outcome models must give)."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return dict(self.params)

    def set_params(self, **params: Any) -> ProbabilityRegressor:
        self.params.update(params)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray) -> ProbabilityRegressor:
        y_arr = np.asarray(y).ravel()
        self.constant_ = None
        if np.unique(y_arr).size < 2:  # an arm's fold without positives: its rate
            self.constant_ = float(y_arr.mean()) if y_arr.size else 0.0
            return self
        self.model_ = LGBMClassifier(**self.params).fit(X, y_arr.astype(int))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.constant_ is not None:
            return np.full(len(X), self.constant_)
        return self.model_.predict_proba(X)[:, 1]


def suggest_uplift_params(trial: optuna.Trial) -> dict[str, Any]:
    """The LightGBM search space of the uplift learners (small: effects are weak signals)."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 100, 600, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.05, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 2, 16, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 100, 2000, log=True),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 50.0, log=True),
    }


def make_learner(params: Mapping[str, Any], seed: int) -> Any:
    """EconML's X-learner with LightGBM base learners and the randomisation's shares as
    propensities (a prior-only classifier: in a randomised experiment they are known)."""
    from econml.metalearners import XLearner

    merged = {**LGBM_FIXED, **params, "random_state": seed}
    return XLearner(models=ProbabilityRegressor(**merged),
                    cate_models=LGBMRegressor(**merged),
                    propensity_model=DummyClassifier(strategy="prior"))


@dataclass
class FittedFold:
    """One cross-fitting fold: its learner, held-out rows and tuning record."""

    learner: Any
    test_rows: np.ndarray
    params: dict[str, Any]
    tuning_objective: float | None
    seconds: float


def _fit_learner(params: Mapping[str, Any], X: np.ndarray, arm: np.ndarray, y: np.ndarray,
                 seed: int) -> Any:
    # rows per leaf scale with the data: at most 1/40 of the rows (small experiments still grow
    # trees; 800 is reached from 32,000 rows)
    floor = max(20, len(X) // 40)
    params = {**params, "min_child_samples": min(int(params.get("min_child_samples", 20)),
                                                 floor)}
    learner = make_learner(params, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner.fit(y.astype(float), arm, X=X)
    return learner


def learner_uplift(learner: Any, X: np.ndarray, n_arms: int) -> np.ndarray:
    """Uplift of arms 1…K−1 over arm 0 (rows × (K−1))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        effect = np.asarray(learner.const_marginal_effect(X), dtype=float)
    return effect.reshape(len(X), n_arms - 1)


def learner_outcomes(learner: Any, X: np.ndarray) -> np.ndarray:
    """Outcome per arm from the learner's per-arm models (rows × K)."""
    return np.column_stack([model.predict(X) for model in learner.models])


def mean_qini(y: np.ndarray, arm: np.ndarray, uplift: np.ndarray) -> float:
    """Mean over arms 1…K−1 of the Qini coefficient against arm 0."""
    values = []
    for a in range(1, uplift.shape[1] + 1):
        keep = (arm == a) | (arm == 0)
        values.append(uplift_scores(y[keep], arm[keep] == a, uplift[keep, a - 1])["qini"])
    return float(np.mean(values))


def tune(
    X: np.ndarray, arm: np.ndarray, y: np.ndarray, n_arms: int, *, trials: int, seed: int,
    tune_rows: int = DEFAULT_TUNE_ROWS, timeout: float | None = None,
) -> tuple[dict[str, Any], float | None, int]:
    """Optuna (TPE, seeded; the first trial is the default parameters) on one inner split of
    at most ``tune_rows`` rows; returns (best parameters, best mean Qini, trials run)."""
    strata = arm * 2 + y
    rows = np.arange(len(y))
    if rows.size > tune_rows:
        rows, _ = train_test_split(rows, train_size=tune_rows, stratify=strata, random_state=seed)
    fit_rows, valid_rows = train_test_split(rows, test_size=1 / 3, stratify=strata[rows],
                                            random_state=seed)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_uplift_params(trial)
        learner = _fit_learner(params, X[fit_rows], arm[fit_rows], y[fit_rows], seed)
        uplift = learner_uplift(learner, X[valid_rows], n_arms)
        return mean_qini(y[valid_rows], arm[valid_rows], uplift)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(DEFAULT_LGBM)
    study.optimize(objective, n_trials=trials, timeout=timeout)
    best = {**DEFAULT_LGBM, **study.best_params}
    return best, float(study.best_value), len(study.trials)


def _levels(frame: pd.DataFrame, categorical: Sequence[str]) -> dict[str, list[str]]:
    return {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in categorical}


def encode_features(frame: pd.DataFrame, columns: Sequence[str],
                    levels: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Model matrix: numeric columns as floats, categorical ones as the position of their
    level (unknown or missing → NaN, which LightGBM routes on its own)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UpliftInputError(f"the data lack the model's feature column(s) {missing}")
    out = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        if column in levels:
            codes = {v: float(i) for i, v in enumerate(levels[column])}
            values = frame[column].astype(object).where(frame[column].notna(), None)
            out[:, j] = [codes.get(str(v), np.nan) if v is not None else np.nan for v in values]
        else:
            values = frame[column]
            if values.dtype == object:  # yes/no text, as the export cleaning reads it
                lowered = values.astype(str).str.strip().str.lower()
                values = values.where(~lowered.isin(YES_NO), lowered.map(YES_NO))
            values = pd.to_numeric(values, errors="coerce")
            bad = values.isna() & frame[column].notna()
            if bad.any():
                raise UpliftInputError(
                    f"column {column!r} must be numeric (as in training); found "
                    f"{frame.loc[bad, column].astype(str).unique()[:3].tolist()}")
            out[:, j] = values.to_numpy(dtype=float)
    return out


class UpliftModel(mlflow.pyfunc.PythonModel):
    """The shipped uplift model: the fold learners averaged, with per-arm outcome, uplift,
    the net value of each arm and the recommended arm per row (an ``mlflow.pyfunc`` model)."""

    def __init__(
        self, learners: Sequence[Any], arms: Sequence[str], feature_columns: Sequence[str],
        levels: Mapping[str, Sequence[str]], costs: Mapping[str, float], value: float,
        interval_bins: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.learners = list(learners)
        self.arms = [str(a) for a in arms]
        self.feature_columns = list(feature_columns)
        self.levels = {k: list(v) for k, v in levels.items()}
        self.costs = {a: float(costs.get(a, 0.0)) for a in self.arms}
        self.value = float(value)
        self.interval_bins = dict(interval_bins or {})
        self.metadata = dict(metadata or {})

    @property
    def reference(self) -> str:
        return self.arms[0]

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return encode_features(frame, self.feature_columns, self.levels)

    def uplift(self, frame: pd.DataFrame) -> np.ndarray:
        """Uplift of each arm over the reference (rows × K; the reference's column is 0)."""
        X = self.matrix(frame)
        effects = np.mean([learner_uplift(m, X, len(self.arms)) for m in self.learners], axis=0)
        return np.column_stack([np.zeros(len(X)), effects])

    def outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        """Outcome rate per arm: the reference's modelled rate plus each arm's uplift."""
        X = self.matrix(frame)
        base = np.mean([learner_outcomes(m, X)[:, 0] for m in self.learners], axis=0)
        effects = np.mean([learner_uplift(m, X, len(self.arms)) for m in self.learners], axis=0)
        return np.column_stack([base, base[:, None] + effects])

    def net_values(self, uplift: np.ndarray) -> np.ndarray:
        """``value × uplift − cost`` per arm, relative to the reference arm's cost."""
        cost = np.array([self.costs[a] for a in self.arms])
        return self.value * uplift - (cost - cost[0])

    def recommend(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row: ``recommended_arm``, ``uplift_<arm>`` and ``conversion_<arm>`` per arm."""
        uplift = self.uplift(frame)
        X = self.matrix(frame)
        base = np.mean([learner_outcomes(m, X)[:, 0] for m in self.learners], axis=0)
        choice = self.net_values(uplift).argmax(axis=1)
        out = {"recommended_arm": np.asarray(self.arms, dtype=object)[choice]}
        for j, arm in enumerate(self.arms):
            out[f"uplift_{arm}"] = uplift[:, j]
        for j, arm in enumerate(self.arms):
            out[f"conversion_{arm}"] = np.clip(base + uplift[:, j], 0.0, 1.0)
        return pd.DataFrame(out, index=frame.index)

    def intervals(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row and arm, the DR-estimated effect interval of the out-of-fold quintile its
        predicted uplift falls in (``uplift_<arm>_low`` / ``_high``)."""
        uplift = self.uplift(frame)
        out = {}
        for j, arm in enumerate(self.arms[1:], start=1):
            bins = self.interval_bins.get(arm)
            if not bins:
                continue
            edges = np.asarray(bins["edges"], dtype=float)
            position = np.clip(np.searchsorted(edges, uplift[:, j], side="right") - 1,
                               0, len(bins["low"]) - 1)
            out[f"uplift_{arm}_low"] = np.asarray(bins["low"])[position]
            out[f"uplift_{arm}_high"] = np.asarray(bins["high"])[position]
        return pd.DataFrame(out, index=frame.index)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """MLflow entry point: :meth:`recommend`."""
        return self.recommend(model_input)

    # ---- serving: one LightGBM booster per arm distilled from the effects --------------------
    def distil(self, frame: pd.DataFrame, rounds: int = 100, seed: int = 42) -> list[float]:
        """Fit one LightGBM regression per non-reference arm on this model's own uplift over
        ``frame`` (the serving path, :meth:`fast_uplift`); returns each booster's correlation
        with the effects it imitates (on ``frame``)."""
        import lightgbm as lgb

        X = self.matrix(frame)
        effects = self.uplift(frame)
        params = {"objective": "regression", "num_leaves": 31, "learning_rate": 0.1,
                  "min_data_in_leaf": 20, "verbose": -1, "num_threads": 1, "seed": seed}
        self.serving_models = [lgb.train(params, lgb.Dataset(X, effects[:, j]), rounds)
                               for j in range(1, len(self.arms))]
        fitted = np.column_stack([b.predict(X, num_threads=1) for b in self.serving_models])
        return [float(np.corrcoef(fitted[:, j - 1], effects[:, j])[0, 1])
                for j in range(1, len(self.arms))]

    def encode_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """:func:`encode_features` for column lists (a request's features), without pandas:
        per column a list of floats, one array at the end (a request's one row costs a few
        tens of microseconds)."""
        plan = getattr(self, "_plan", None)
        if plan is None:  # per feature column its level codes (None: numeric), read once
            plan = self._plan = [
                (name, {v: float(i) for i, v in enumerate(self.levels[name])}
                 if name in self.levels else None) for name in self.feature_columns]
        n = len(next(iter(columns.values()))) if columns else 0
        nan = math.nan
        encoded: list[list[float]] = []
        for name, mapping in plan:
            values = columns.get(name)
            if values is None:
                encoded.append([nan] * n)
            elif mapping is not None:
                encoded.append([nan if v is None or v != v else mapping.get(str(v), nan)
                                for v in values])
            else:
                column: list[float] = []
                for v in values:
                    if v is None or v != v:
                        column.append(nan)
                        continue
                    try:
                        column.append(float(v))
                    except (TypeError, ValueError):
                        column.append(nan)
                encoded.append(column)
        if not encoded:
            return np.empty((n, 0))
        return np.ascontiguousarray(np.array(encoded, dtype=float).T)

    def fast_uplift(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Uplift per arm (rows × K, reference 0) from the distilled boosters; the full model
        when none were distilled."""
        boosters = getattr(self, "serving_models", None)
        if not boosters:
            return self.uplift(pd.DataFrame({c: columns.get(c) for c in self.feature_columns}))
        X = self.encode_columns(columns)
        return np.column_stack([np.zeros(len(X))]
                               + [b.predict(X, num_threads=1) for b in boosters])


@dataclass
class UpliftResult:
    """A fitted uplift model with its cross-fitted evaluation (see the module docstring)."""

    model: UpliftModel
    report: dict[str, Any]
    oof_uplift: np.ndarray  # rows × K (reference column 0)
    oof_outcomes: np.ndarray  # rows × K
    dr: np.ndarray  # rows × K doubly-robust scores of the outcome
    arm: np.ndarray
    y: np.ndarray
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def policy_choice(self, uplift: np.ndarray | None = None) -> np.ndarray:
        """Arm position per row of the learned policy (on the out-of-fold uplift by default)."""
        return self.model.net_values(self.oof_uplift if uplift is None else uplift).argmax(1)

    def net_dr(self) -> np.ndarray:
        """Per row and arm, the DR score of ``value × outcome − cost`` (rows × K)."""
        cost = np.array([self.model.costs[a] for a in self.model.arms])
        return self.model.value * self.dr - cost


def check_arms(arm_names: Sequence[Any], y: np.ndarray, control: str, treatment_column: str,
               outcome_column: str) -> tuple[list[str], np.ndarray]:
    """Arm list (control first, then the others sorted) and each row's arm position; refuses a
    single arm, a missing control, missing arms and an arm without both outcomes."""
    names = pd.Series(arm_names, dtype=object)
    if names.isna().any():
        raise UpliftInputError(f"treatment column {treatment_column!r} is empty on "
                               f"{int(names.isna().sum())} row(s)")
    names = names.astype(str).str.strip()
    found = sorted(names.unique().tolist())
    if len(found) < 2:
        raise UpliftInputError(f"treatment column {treatment_column!r} has a single value "
                               f"{found}: an uplift model needs the control and at least one "
                               "other arm")
    if control not in found:
        raise UpliftInputError(f"--control {control!r} is not a value of treatment column "
                               f"{treatment_column!r}; values are {found}")
    arms = [control] + [a for a in found if a != control]
    position = {a: i for i, a in enumerate(arms)}
    index = names.map(position).to_numpy(dtype=int)
    for i, a in enumerate(arms):
        rows = index == i
        positives = int(y[rows].sum())
        negatives = int(rows.sum()) - positives
        if min(positives, negatives) < MIN_ROWS_PER_OUTCOME_PER_ARM:
            raise UpliftInputError(
                f"outcome column {outcome_column!r}: arm {a!r} has {positives} positive and "
                f"{negatives} negative row(s); every arm needs at least "
                f"{MIN_ROWS_PER_OUTCOME_PER_ARM} of each")
    return arms, index


def check_costs(costs: Mapping[str, float], arms: Sequence[str]) -> dict[str, float]:
    """Costs per arm (0 where not given); refuses unknown arms and negative amounts."""
    unknown = sorted(set(costs) - set(arms))
    if unknown:
        raise UpliftInputError(f"--cost names unknown arm(s) {unknown}; arms are {list(arms)}")
    out = {}
    for a in arms:
        value = float(costs.get(a, 0.0))
        if not math.isfinite(value) or value < 0:
            raise UpliftInputError(f"--cost {a}: must be a finite amount ≥ 0, got {value}")
        out[a] = value
    return out


def logged_propensities(propensity: Sequence[float] | None, arm: np.ndarray,
                        shares: np.ndarray) -> np.ndarray:
    """Rows × arms propensities for the DR scores: the logged probability of each row's drawn
    arm (only that entry is used), or the arm shares when none was logged."""
    if propensity is None:
        return np.broadcast_to(shares, (arm.size, shares.size))
    p = np.asarray(propensity, dtype=float).ravel()
    if p.size != arm.size or not np.isfinite(p).all() or ((p <= 0) | (p > 1)).any():
        raise UpliftInputError(f"propensity: expected one probability in (0, 1] per row "
                               f"({arm.size}), got {p.size} value(s) "
                               f"{'' if p.size != arm.size else 'with some outside (0, 1]'}")
    out = np.ones((arm.size, shares.size))
    out[np.arange(arm.size), arm] = p
    return out


def _interval_bins(uplift: np.ndarray, dr: np.ndarray, arms: Sequence[str], seed: int
                   ) -> dict[str, Any]:
    bins: dict[str, Any] = {}
    for j, arm in enumerate(arms[1:], start=1):
        edges = np.unique(np.quantile(uplift[:, j], np.linspace(0, 1, INTERVAL_BINS + 1)))
        if edges.size < 2:
            continue
        position = np.clip(np.searchsorted(edges, uplift[:, j], side="right") - 1,
                           0, edges.size - 2)
        lows, highs, means, predicted, counts = [], [], [], [], []
        for b in range(edges.size - 1):
            rows = position == b
            effect = dr[rows, j] - dr[rows, 0]
            mean, (low, high) = bootstrap_mean(effect, seed=seed, resamples=400)
            means.append(mean)
            lows.append(low)
            highs.append(high)
            predicted.append(float(uplift[rows, j].mean()))
            counts.append(int(rows.sum()))
        edges[0], edges[-1] = -np.inf, np.inf
        bins[arm] = {"edges": edges.tolist(), "low": lows, "high": highs, "dr_effect": means,
                     "predicted_effect": predicted, "rows": counts}
    return bins


def fit_uplift(
    X: pd.DataFrame,
    arm_names: Sequence[Any],
    y: Any,
    *,
    control: str,
    categorical: Sequence[str] = (),
    costs: Mapping[str, float] | None = None,
    value: float = 1.0,
    folds: int = DEFAULT_FOLDS,
    trials: int = DEFAULT_TRIALS,
    tune_rows: int = DEFAULT_TUNE_ROWS,
    timeout: float | None = None,
    seed: int = 42,
    treatment_column: str = "treatment",
    outcome_column: str = "outcome",
    propensity: Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
) -> UpliftResult:
    """Cross-fit, tune, evaluate and package an uplift model on randomised rows (module
    docstring). ``X`` holds the features only; ``arm_names`` each row's randomised arm;
    ``y`` the 0/1 outcome; ``costs`` money per row treated by an arm; ``value`` money per
    positive outcome (the policy maximises ``value × uplift − cost``). ``propensity``: per row,
    the probability with which its arm was drawn, as logged (exploration among the channels
    with room left varies it); default: each arm's share of the rows (a fixed randomisation)."""
    say = progress or (lambda _step: None)
    started, cpu_started = time.perf_counter(), time.process_time()
    y_arr = np.asarray(y, dtype=int).ravel()
    if len(X) != y_arr.size or len(arm_names) != y_arr.size:
        raise UpliftInputError(f"features, arms and outcomes differ in length: {len(X)}, "
                               f"{len(arm_names)}, {y_arr.size}")
    if folds < 2:
        raise UpliftInputError(f"--folds must be at least 2, got {folds}")
    if trials < 1:
        raise UpliftInputError(f"--trials must be at least 1, got {trials}")
    if not math.isfinite(value) or value <= 0:
        raise UpliftInputError(f"--value must be a positive amount, got {value}")
    arms, arm = check_arms(arm_names, y_arr, control, treatment_column, outcome_column)
    cost = check_costs(costs or {}, arms)
    columns = list(X.columns)
    levels = _levels(X, [c for c in categorical if c in columns])
    matrix = encode_features(X, columns, levels)
    n_arms = len(arms)
    strata = arm * 2 + y_arr
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    oof_uplift = np.zeros((y_arr.size, n_arms))
    oof_outcomes = np.zeros((y_arr.size, n_arms))
    fitted: list[FittedFold] = []
    budget = None if timeout is None else timeout / folds
    for k, (train, test) in enumerate(splitter.split(matrix, strata), start=1):
        fold_started = time.perf_counter()
        params, objective, _ = tune(matrix[train], arm[train], y_arr[train], n_arms,
                                    trials=trials, seed=seed + k, tune_rows=tune_rows,
                                    timeout=budget)
        learner = _fit_learner(params, matrix[train], arm[train], y_arr[train], seed + k)
        oof_uplift[test, 1:] = learner_uplift(learner, matrix[test], n_arms)
        oof_outcomes[test] = learner_outcomes(learner, matrix[test])
        fitted.append(FittedFold(learner, test, params, objective,
                                 time.perf_counter() - fold_started))
        say(f"fold {k}/{folds}")

    shares = np.bincount(arm, minlength=n_arms) / arm.size
    dr = dr_scores(y_arr, arm, oof_outcomes, logged_propensities(propensity, arm, shares))
    report, curves = _evaluate(arms, arm, y_arr, oof_uplift, dr, cost, value, seed)
    bins = _interval_bins(oof_uplift, dr, arms, seed)
    model = UpliftModel(
        [f.learner for f in fitted], arms, columns, levels, cost, value, bins,
        metadata={"treatment_column": treatment_column, "outcome_column": outcome_column,
                  "learner": "econml.metalearners.XLearner + LightGBM", "folds": folds},
    )
    report.update({
        "data": {"rows": int(y_arr.size), "features": columns,
                 "categorical_features": list(levels),
                 "rows_per_arm": {a: int((arm == i).sum()) for i, a in enumerate(arms)},
                 "positive_rate_per_arm": {a: float(y_arr[arm == i].mean())
                                           for i, a in enumerate(arms)},
                 "randomisation_shares": {a: float(shares[i]) for i, a in enumerate(arms)}},
        "arms": arms, "reference_arm": control, "costs": cost, "value": value,
        "learner": model.metadata["learner"],
        "protocol": (
            f"seeded stratified {folds}-fold cross-fitting (arm × outcome, seed {seed}); per "
            f"fold Optuna ({trials} trials, TPE, the first the default parameters) on one inner "
            f"2/3-1/3 split of at most {tune_rows} training rows, objective the mean Qini "
            "coefficient over arms; every figure below is out-of-fold; the shipped model "
            "averages the fold learners"),
        "tuning": [{"fold": k, "params": f.params, "inner_mean_qini": f.tuning_objective,
                    "seconds": round(f.seconds, 1)} for k, f in enumerate(fitted, start=1)],
        "effect_intervals": {a: {k: v for k, v in b.items() if k != "edges"}
                             for a, b in bins.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
    })
    return UpliftResult(model, report, oof_uplift, oof_outcomes, dr, arm, y_arr, curves)


def _evaluate(arms: Sequence[str], arm: np.ndarray, y: np.ndarray, uplift: np.ndarray,
              dr: np.ndarray, cost: Mapping[str, float], value: float, seed: int
              ) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    per_arm: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"qini": {}, "uplift": {}}
    for j, name in enumerate(arms[1:], start=1):
        keep = (arm == j) | (arm == 0)
        scores = uplift_scores(y[keep], arm[keep] == j, uplift[keep, j])
        effect, (low, high) = bootstrap_mean(dr[:, j] - dr[:, 0], seed=seed)
        per_arm[name] = {**scores, "dr_average_effect": effect,
                         "dr_average_effect_ci": [low, high]}
        curves["qini"][name] = qini_curve(y[keep], arm[keep] == j, uplift[keep, j])
        curves["uplift"][name] = uplift_curve(y[keep], arm[keep] == j, uplift[keep, j])
    cost_vec = np.array([cost[a] for a in arms])
    net = value * dr - cost_vec
    rel = value * uplift - (cost_vec - cost_vec[0])
    learned = rel.argmax(axis=1)
    best_single = int(net.mean(axis=0).argmax())
    policies = {"learned": learned, "everyone_best_arm": np.full(y.size, best_single),
                "no_one": np.zeros(y.size, dtype=int)}
    values = np.column_stack([policy_rows(net, c) for c in policies.values()])
    point, (low, high) = bootstrap_mean(values, seed=seed)
    diff_point, (diff_low, diff_high) = bootstrap_mean(values[:, 0:1] - values[:, 1:2],
                                                       seed=seed)
    report = {
        "per_arm": per_arm,
        "policy_value": {
            name: {"value_per_row": float(point[i]), "ci": [float(low[i]), float(high[i])],
                   "arm_shares": {a: float(np.mean(choice == j)) for j, a in enumerate(arms)}}
            for i, (name, choice) in enumerate(policies.items())},
        "learned_minus_everyone_best_arm": {
            "value_per_row": float(diff_point[0]),
            "ci": [float(diff_low[0]), float(diff_high[0])], "best_arm": arms[best_single]},
        "estimator": "doubly robust (out-of-fold per-arm outcome models, randomisation shares "
                     "as propensities), paired bootstrap 95% intervals over rows",
    }
    return report, curves
