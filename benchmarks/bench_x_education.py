"""Real-data benchmark of ``train --csv`` on the X Education leads export (honest protocol).

The protocol of the dataset's README: drop ``Lead Quality``, ``Lead Profile`` and the four
``Asymmetrique *`` columns (filled in by sales after contact), keep everything else including
``Tags``, which the leakage guard must flag on its own. Out-of-fold metrics of a seeded
stratified 5-fold cross-validation; ours, default LightGBM and one-hot logistic regression
come from the same run and the same folds.

    .venv/bin/python benchmarks/bench_x_education.py [--trials 30] [--csv PATH] [--mlflow]

Last measured (seed 42, 30 trials, ~140 s under ``nice`` on 2 cores): ours ROC-AUC 0.9106,
ECE 0.0092; default LightGBM 0.9041; logistic regression 0.8960; ``Tags`` flagged (stand-alone
AUC 0.919), the two identifiers dropped. The goal of 0.915 is not met: every honest idea
below lands within +-0.0005 of the same plateau (about 0.910 for a single model with fixed
parameters, 0.9105 for the product), i.e. fold noise:

* the fixed learning rate + median pruning + 3-seed bagging per inner fold: +0.0031
  (0.9075 -> 0.9106), kept; learning rate 0.03 instead of 0.06: 0.9104; 5 inner folds:
  0.9107; tuning on inner AUC instead of log loss: 0.9106; ``max_cat_to_onehot=32``: 0.9103.
* fixed-parameter 5-fold checks (two fold seeds; reference 0.9093 with the share columns):
  ``Select``-vs-blank indicators 0.9097, Lead Origin x Lead Source and Last Activity x Last
  Notable Activity crosses 0.9096, both plus feature_fraction 0.3 0.9104, missing-pattern
  category 0.9095, time per visit and total page views 0.9089, nested in-fold target encoding
  0.9100, dropping the weak columns 0.9103, extra_trees 0.9090, path_smooth 0.9093,
  linear_tree 0.9090, learning rate 0.01 0.9106, monotone Total Time 0.9096, one full-part
  model instead of the inner-fold average 0.9100.
* other learners blended with LightGBM (logit or rank average, weights 0.5-0.9): a spline +
  one-hot logistic regression (0.9028 alone), random forest (0.9033), extra trees (0.9001),
  an MLP (0.9011): at most +0.0002.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from leadscore.config import get_settings  # noqa: E402
from training.csv_train import CsvTrainingError, train_csv  # noqa: E402

DEFAULT_CSV = PROJECT_ROOT.parent / "shared" / "datasets" / "x-education-leads" / "Leads.csv"
HONEST_DROP = (
    "Lead Quality",
    "Lead Profile",
    "Asymmetrique Activity Index",
    "Asymmetrique Profile Index",
    "Asymmetrique Activity Score",
    "Asymmetrique Profile Score",
)
GOAL_AUC = 0.915
GOAL_ECE = 0.02


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--trials", type=int, default=30, help="Optuna trials per outer fold")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--report", type=Path, default=None, help="also write the JSON report")
    parser.add_argument("--mlflow", action="store_true", help="log the run to MLflow")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-x-education-") as plots:
        try:
            report = train_csv(
                args.csv, "Converted", drop=HONEST_DROP, n_trials=args.trials, seed=args.seed,
                settings=get_settings(), plots_dir=plots, log_to_mlflow=args.mlflow,
            )
        except CsvTrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    seconds = time.perf_counter() - started

    print(f"X Education leads: {report['data']['rows']} rows, "
          f"{report['data']['positives']} converted; trials per fold: {args.trials}")
    print(f"{'model':22s} {'ROC-AUC':>8s} {'PR-AUC':>8s} {'log loss':>9s} {'ECE':>7s}")
    for name, values in report["comparison"].items():
        print(f"{name:22s} {values['roc_auc']:8.4f} {values['pr_auc']:8.4f} "
              f"{values['log_loss']:9.4f} {values['ece']:7.4f}")
    print("guard dropped:")
    for column, reason in report["guard"]["dropped"].items():
        print(f"  {column}: {reason}")
    folds = report["evaluation"]["folds"]
    print("per fold: " + "; ".join(
        f"AUC {f['test_roc_auc']:.4f}, blend w={f['blend_weight_lightgbm']}, "
        f"{f['calibrator']['method']}" for f in folds
    ))
    ours = report["comparison"]["ours"]
    tags_flagged = "Tags" in report["guard"]["dropped"]
    goal = ours["roc_auc"] >= GOAL_AUC and ours["ece"] <= GOAL_ECE and tags_flagged
    print(f"goal (AUC >= {GOAL_AUC}, ECE <= {GOAL_ECE}, Tags flagged): "
          f"{'met' if goal else 'not met'} (AUC {ours['roc_auc']:.4f}, ECE {ours['ece']:.4f}, "
          f"Tags flagged: {tags_flagged})")
    print(f"seconds: {seconds:.1f}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
