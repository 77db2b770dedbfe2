"""Real-data benchmark of ``train --csv`` on the X Education leads export: two protocols and a
forward-in-time check.

- ``today``: the protocol of the dataset's README: drop ``Lead Quality``, ``Lead Profile`` and
  the four ``Asymmetrique *`` columns (filled in by sales after contact), keep everything else
  including ``Tags``, which the leakage guard must flag on its own; seeded stratified 5-fold;
- ``submission``: "at submission": also drop ``Last Activity`` and ``Last Notable Activity``
  (the last thing that happened with the lead, sales actions included — "SMS Sent" converts
  69%): only what a form submission knows; seeded stratified 5-fold;
- ``forward``: at submission, rows ordered by ``Lead Number`` (numbers grow with time), newest
  20% tested by models fitted on the older rows (``--order-is-time``), random 5-fold beside it.

Out-of-fold metrics; ours, default LightGBM and one-hot logistic regression come from the same
run and the same folds; differences with paired-bootstrap 95% intervals
(``bench_calibration.figures``).

    nice -n 10 .venv/bin/python benchmarks/bench_x_education.py [--trials 30]
        [--only today,submission,forward] [--json PATH]

Targets: today ROC-AUC >= 0.910; at submission >= default LightGBM + 0.01 on the same folds;
everywhere the shipped model not worse than the best baseline beyond its interval, ECE <= 0.02
and not worse than uncalibrated beyond noise. Last measured: ``docs/csv_training.md``.

Earlier experiments on today's protocol (former settings: learning rate 0.06, 4 inner folds;
plateau about 0.910 for a single model with fixed parameters, 0.9105 for the product), each
within +-0.0005, i.e. fold noise:

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
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_calibration import (  # noqa: E402
    AT_SUBMISSION_DROP,
    X_EDUCATION_DROP,
    figures,
)

from training.csv_train import CsvTrainingError, train_csv  # noqa: E402

DEFAULT_CSV = PROJECT_ROOT.parent / "shared" / "datasets" / "x-education-leads" / "Leads.csv"
HONEST_DROP = X_EDUCATION_DROP  # today's protocol
GOAL_TODAY_AUC = 0.910
GOAL_OVER_DEFAULT = 0.01
GOAL_ECE = 0.02
PROTOCOLS = {
    "today": {"drop": HONEST_DROP, "order_is_time": False},
    "submission": {"drop": AT_SUBMISSION_DROP, "order_is_time": False},
    "forward": {"drop": AT_SUBMISSION_DROP, "order_is_time": True},
}


def run_protocol(csv: Path, name: str, trials: int, seed: int) -> dict[str, Any]:
    """``train_csv`` under one protocol; the report's figures with intervals."""
    protocol = PROTOCOLS[name]
    with tempfile.TemporaryDirectory(prefix="bench-x-education-") as tmp:
        path = csv
        if protocol["order_is_time"]:
            path = Path(tmp) / "leads_by_number.csv"
            pd.read_csv(csv).sort_values("Lead Number", kind="stable").to_csv(path, index=False)
        started = time.perf_counter()
        report = train_csv(
            path, "Converted", id_col="Prospect ID", drop=("Lead Number", *protocol["drop"]),
            order_is_time=protocol["order_is_time"], n_trials=trials, seed=seed,
            plots_dir=tmp, log_to_mlflow=False, keep_predictions=True,
        )
        seconds = time.perf_counter() - started
    out = figures(report)
    out["comparison"] = report["comparison"]
    out["guard_dropped"] = report["guard"]["dropped"]
    out["wall_seconds"] = round(seconds, 1)
    out["load_average"] = round(os.getloadavg()[0], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--trials", type=int, default=30, help="Optuna trials per split")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", default=",".join(PROTOCOLS))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    for name in args.only.split(","):
        try:
            result = run_protocol(args.csv, name, args.trials, args.seed)
        except CsvTrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results[name] = result
        print(f"\n== {name}: {result['evaluation']}, {result['rows']} test rows, "
              f"{args.trials} trials per split, {result['wall_seconds']} s "
              f"(load {result['load_average']})")
        print(f"{'model':22s} {'ROC-AUC':>8s} {'PR-AUC':>8s} {'log loss':>9s} {'ECE':>7s}")
        for model, values in result["comparison"].items():
            print(f"{model:22s} {values['roc_auc']:8.4f} {values['pr_auc']:8.4f} "
                  f"{values['log_loss']:9.4f} {values['ece']:7.4f}")
        for baseline, diff in result["auc_shipped_minus"].items():
            loss = result["log_loss_shipped_minus"][baseline]
            print(f"ours - {baseline}: AUC {diff['difference']:+.4f} [{diff['low']:+.4f}, "
                  f"{diff['high']:+.4f}], log loss {loss['difference']:+.4f} "
                  f"[{loss['low']:+.4f}, {loss['high']:+.4f}]")
        ece = result["ece_shipped_minus_uncalibrated"]
        print(f"calibration {result['calibration']}: ECE {result['ece_uncalibrated']:.4f} -> "
              f"{result['ece_shipped']:.4f} ({ece['difference']:+.4f} [{ece['low']:+.4f}, "
              f"{ece['high']:+.4f}])")
        print(f"model choice: {result['choice']}")
        print(f"guard dropped: {', '.join(result['guard_dropped'])}; flagged: "
              f"{', '.join(result['guard_flagged']) or 'nothing'}")
        if "random_vs_forward" in result:
            print(f"random vs forward: {result['random_vs_forward']['statement']}")
        checks = dict(result["checks"])
        auc = result["auc"]
        if name == "today":
            checks[f"auc_at_least_{GOAL_TODAY_AUC}"] = auc["ours"] >= GOAL_TODAY_AUC
            checks["tags_dropped"] = "Tags" in result["guard_dropped"]
        if name == "submission":
            checks[f"auc_at_least_default_plus_{GOAL_OVER_DEFAULT}"] = (
                auc["ours"] >= auc["lightgbm_default"] + GOAL_OVER_DEFAULT)
        result["checks"] = checks
        print("checks: " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                     for k, v in checks.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
