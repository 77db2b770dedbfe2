"""Which causal-ML library carries the uplift model: causalml vs EconML on the Hillstrom e-mail
experiment, LightGBM as every base learner, same folds, same parameters.

Cross-fitted (seeded 5-fold, stratified by arm × outcome): each learner is fitted on four folds
and predicts the uplift of both e-mails over no e-mail on the fifth; Qini coefficient and AUUC
per arm on the pooled out-of-fold predictions (``training.uplift_metrics``), fit time summed
over folds (one LightGBM thread; wall and CPU time — on a shared machine the CPU time is the
fairer comparison). A plain LightGBM T-learner without any library is the floor.

    .venv/bin/python benchmarks/bench_uplift_libraries.py [--outcome visit] [--rows N]
    # causalml is not a project dependency; to rerun its rows install it aside, e.g.
    # pip install --target /tmp/cml_site --no-deps causalml==0.18.0 forestci==0.6 \
    #   pathos==0.2.9 multiprocess==0.70.19 pox==0.3.7 ppft==1.7.8 pydot==4.0.1 \
    #   seaborn==0.13.2 xgboost==3.2.0 graphviz==0.21
    # PYTHONPATH=/tmp/cml_site .venv/bin/python benchmarks/bench_uplift_libraries.py

Last measured (visit, all 64,000 rows, shared 2 cores at load 7–13; CPU seconds over 5 folds):
Qini men's / women's — plain LightGBM T −0.00003 / +0.00309 (6.8 s), causalml T −0.00003 /
+0.00309 (9.9 s), EconML T +0.00009 / +0.00291 (9.2 s), causalml X −0.00022 / +0.00318
(18.5 s), EconML X −0.00015 / +0.00313 (17.1 s), causalml DR +0.00103 / +0.00242 (30.3 s;
unseeded, −0.00020 / +0.00255 in an earlier run), EconML DR −0.00047 / +0.00249 (27.9 s).
Within noise of one another; conversion table in docs/uplift.md.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.model_selection import StratifiedKFold

from training.uplift_metrics import uplift_scores

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/datasets/hillstrom-email/hillstrom.csv"
ARMS = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
FEATURES = ("recency", "history", "mens", "womens", "zip_code", "newbie", "channel")
LGBM = {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 15,
        "min_child_samples": 100, "verbose": -1, "n_jobs": 1, "random_state": 0}

Learner = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def load(path: Path, outcome: str, rows: int | None, seed: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.read_csv(path)
    if rows:
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    X = frame[list(FEATURES)].copy()
    for column in ("zip_code", "channel"):
        X[column] = X[column].astype("category").cat.codes
    arm = frame["segment"].map({name: i for i, name in enumerate(ARMS)}).to_numpy()
    return X.to_numpy(dtype=float), arm.astype(int), frame[outcome].to_numpy(dtype=int)


def plain_t_learner(X, arm, y, X_test):
    """No library: one LightGBM classifier per arm, uplift = p_arm - p_control."""
    p = [LGBMClassifier(**LGBM).fit(X[arm == a], y[arm == a]).predict_proba(X_test)[:, 1]
         for a in range(len(ARMS))]
    return np.column_stack([p[a] - p[0] for a in range(1, len(ARMS))])


def causalml_learner(kind: str) -> Learner:
    def fit_predict(X, arm, y, X_test):
        from causalml.inference.meta import (
            BaseDRLearner,
            BaseTClassifier,
            BaseXClassifier,
        )

        names = np.asarray(ARMS, dtype=object)[arm]
        shares = {name: float(np.mean(names == name)) for name in ARMS[1:]}
        if kind == "T":
            model = BaseTClassifier(learner=LGBMClassifier(**LGBM), control_name=ARMS[0])
            model.fit(X, names, y)
            return np.asarray(model.predict(X_test))
        if kind == "X":
            model = BaseXClassifier(outcome_learner=LGBMClassifier(**LGBM),
                                    effect_learner=LGBMRegressor(**LGBM), control_name=ARMS[0])
            p = {name: np.full(len(X), share) for name, share in shares.items()}
            model.fit(X, names, y, p=p)
            p_test = {name: np.full(len(X_test), share) for name, share in shares.items()}
            return np.asarray(model.predict(X_test, p=p_test))
        model = BaseDRLearner(learner=LGBMRegressor(**LGBM), control_name=ARMS[0])
        p = {name: np.full(len(X), share) for name, share in shares.items()}
        model.fit(X, names, y.astype(float), p=p)
        return np.asarray(model.predict(X_test))

    return fit_predict


def econml_learner(kind: str) -> Learner:
    def fit_predict(X, arm, y, X_test):
        from econml.dr import DRLearner
        from econml.metalearners import TLearner, XLearner
        from sklearn.dummy import DummyClassifier

        if kind == "T":
            model = TLearner(models=LGBMRegressor(**LGBM))
        elif kind == "X":
            model = XLearner(models=LGBMRegressor(**LGBM),
                             propensity_model=DummyClassifier(strategy="prior"))
        else:
            model = DRLearner(model_propensity=DummyClassifier(strategy="prior"),
                              model_regression=LGBMClassifier(**LGBM),
                              model_final=LGBMRegressor(**LGBM), discrete_outcome=True,
                              categories=list(range(len(ARMS))), cv=2, random_state=0)
        model.fit(y.astype(float) if kind != "DR" else y, arm, X=X)
        effects = [model.effect(X_test, T0=0, T1=a) for a in range(1, len(ARMS))]
        return np.column_stack(effects)

    return fit_predict


def evaluate(learners: dict[str, Learner], X, arm, y, seed: int) -> dict[str, dict]:
    folds = StratifiedKFold(5, shuffle=True, random_state=seed).split(X, arm * 2 + y)
    folds = list(folds)
    out = {}
    for name, learner in learners.items():
        uplift = np.zeros((len(y), len(ARMS) - 1))
        seconds = cpu = 0.0
        try:
            for train, test in folds:
                started, cpu_started = time.perf_counter(), time.process_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    uplift[test] = learner(X[train], arm[train], y[train], X[test])
                seconds += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
        except ImportError as exc:
            out[name] = {"error": f"not installed: {exc}"}
            print(f"{name:24s} skipped ({exc})")
            continue
        row = {"fit_seconds": round(seconds, 1), "fit_cpu_seconds": round(cpu, 1)}
        for a in range(1, len(ARMS)):
            keep = (arm == a) | (arm == 0)
            scores = uplift_scores(y[keep], arm[keep] == a, uplift[keep, a - 1])
            row[ARMS[a]] = {k: round(v, 6) for k, v in scores.items() if k != "rows"}
        out[name] = row
        print(f"{name:24s} " + "  ".join(
            f"{ARMS[a]}: qini {row[ARMS[a]]['qini']:.5f} auuc {row[ARMS[a]]['auuc']:.5f}"
            for a in range(1, len(ARMS))) + f"  fit {seconds:.1f}s (cpu {cpu:.1f}s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--outcome", default="visit", choices=("visit", "conversion"))
    parser.add_argument("--rows", type=int, default=None, help="subsample (default: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    X, arm, y = load(args.csv, args.outcome, args.rows, args.seed)
    learners: dict[str, Learner] = {"plain LightGBM T": plain_t_learner}
    for kind in ("T", "X", "DR"):
        learners[f"causalml {kind}"] = causalml_learner(kind)
        learners[f"econml {kind}"] = econml_learner(kind)
    result = evaluate(learners, X, arm, y, args.seed)
    if args.out:
        args.out.write_text(json.dumps({"outcome": args.outcome, "rows": int(len(y)),
                                        "learners": result}, indent=2))


if __name__ == "__main__":
    main()
