"""Honest numbers of ``train --csv`` on every real dataset: never worse than a baseline beyond
noise, calibration that never hurts, ECE <= 0.02.

For each dataset: the shipped model's ECE and log loss beside the uncalibrated ones (difference
with a paired-bootstrap 95% interval: "never worse beyond noise" means the interval's lower end
is at most 0), the model chosen on the training part, and the test AUC and log loss of the
shipped model and of the baselines with the paired-bootstrap interval of each difference
(shipped − baseline); ``checks`` says whether each target holds.

- ``olist``: ``train --csv`` with ``--time first_contact_date`` on the Olist marketing leads
  (label: the lead is among the closed deals), the issue's protocol (forward in time, with the
  random 5-fold check beside it);
- ``xeducation``: X Education, today's protocol (``bench_x_education.py``: the sales-filled
  columns dropped), random 5-fold;
- ``xeducation_submission``: X Education "at submission" (also ``Last Activity`` and ``Last
  Notable Activity`` dropped), random 5-fold;
- ``xeducation_forward``: X Education at submission, rows ordered by ``Lead Number``,
  ``--order-is-time`` (forward, with the random 5-fold check beside it);
- ``main``: the main job's training report (``--workdir`` of a ``leadscore demo`` run): the
  same figures from ``reports/training_report.json`` (test slice; no per-row intervals).

    nice -n 10 .venv/bin/python benchmarks/bench_calibration.py [--trials 30]
        [--only olist,xeducation,xeducation_submission,xeducation_forward] [--workdir DIR]

Last measured: see ``docs/csv_training.md`` (the numbers, with the command and load).
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

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from training.csv_train import bootstrap_auc_difference, train_csv  # noqa: E402
from training.evaluate import expected_calibration_error, paired_bootstrap  # noqa: E402

DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
X_EDUCATION_DROP = ("Lead Quality", "Lead Profile", "Asymmetrique Activity Index",
                    "Asymmetrique Profile Index", "Asymmetrique Activity Score",
                    "Asymmetrique Profile Score")
AT_SUBMISSION_DROP = (*X_EDUCATION_DROP, "Last Activity", "Last Notable Activity")
GOAL_ECE = 0.02
BASELINES = ("lightgbm_default", "logistic_regression")


def ece_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, float]:
    """ECE(a) − ECE(b) on the same resampled rows, with its 95% percentile interval."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        draws.append(expected_calibration_error(y[idx], a[idx])
                     - expected_calibration_error(y[idx], b[idx]))
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"difference": expected_calibration_error(y, a) - expected_calibration_error(y, b),
            "low": float(low), "high": float(high)}


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures from a ``train_csv`` report kept with its predictions."""
    pooled = report["_predictions"]
    y = pooled["y"].astype(float)
    shipped, raw = pooled["ours"], pooled["ours_uncalibrated"]
    out: dict[str, Any] = {
        "rows": int(y.size),
        "evaluation": report["evaluation"]["mode"],
        "chosen": report["model_choice"]["chosen"],
        "choice": report["model_choice"]["statement"],
        "calibration": report["calibration"]["methods"],
        "calibration_why": report["calibration"]["selections"],
        "ece_shipped": expected_calibration_error(y, shipped),
        "ece_uncalibrated": expected_calibration_error(y, raw),
        "ece_shipped_minus_uncalibrated": ece_difference(y, shipped, raw),
        "log_loss_shipped_minus_uncalibrated": paired_bootstrap(y, shipped, raw),
        "auc": {name: report["comparison"][name]["roc_auc"] for name in report["comparison"]},
        "auc_shipped_minus": {name: bootstrap_auc_difference(y, shipped, pooled[name])
                              for name in BASELINES},
        "log_loss_shipped_minus": {name: paired_bootstrap(y, shipped, pooled[name])
                                   for name in BASELINES},
        "guard_flagged": report["guard"]["flagged"],
        "warnings": report["warnings"],
        "seconds": report["seconds"],
    }
    agreement = report["evaluation"].get("agreement")
    if agreement:
        out["random_vs_forward"] = {"auc_random_minus_forward": agreement[
            "auc_random_minus_forward"], "by_model": agreement[
            "auc_by_model_on_forward_test_rows"], "statement": agreement["statement"]}
    out["checks"] = {
        "not_worse_than_a_baseline_beyond_noise": all(
            out["log_loss_shipped_minus"][b]["low"] <= 0
            and out["auc_shipped_minus"][b]["high"] >= 0 for b in BASELINES),
        "ece_not_worse_than_uncalibrated_beyond_noise":
            out["ece_shipped_minus_uncalibrated"]["low"] <= 0,
        f"ece_at_most_{GOAL_ECE}": out["ece_shipped"] <= GOAL_ECE,
    }
    return out


def olist(trials: int) -> dict[str, Any]:
    folder = DATASETS / "olist-marketing-leads"
    leads = pd.read_csv(folder / "olist_marketing_qualified_leads_dataset.csv")
    deals = pd.read_csv(folder / "olist_closed_deals_dataset.csv")
    leads["won"] = leads["mql_id"].isin(deals["mql_id"]).astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "olist_mql.csv"
        leads.to_csv(path, index=False)
        report = train_csv(path, "won", id_col="mql_id", time_col="first_contact_date",
                           n_trials=trials, log_to_mlflow=False, keep_predictions=True)
    return figures(report)


def xeducation(trials: int, drop: tuple[str, ...] = X_EDUCATION_DROP) -> dict[str, Any]:
    report = train_csv(DATASETS / "x-education-leads" / "Leads.csv", "Converted",
                       id_col="Prospect ID", drop=("Lead Number", *drop),
                       n_trials=trials, log_to_mlflow=False, keep_predictions=True)
    return figures(report)


def xeducation_submission(trials: int) -> dict[str, Any]:
    return xeducation(trials, AT_SUBMISSION_DROP)


def xeducation_forward(trials: int) -> dict[str, Any]:
    """At submission, rows in ``Lead Number`` order, evaluated forward (``--order-is-time``)."""
    leads = pd.read_csv(DATASETS / "x-education-leads" / "Leads.csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leads_by_number.csv"
        leads.sort_values("Lead Number", kind="stable").to_csv(path, index=False)
        report = train_csv(path, "Converted", id_col="Prospect ID",
                           drop=("Lead Number", *AT_SUBMISSION_DROP), order_is_time=True,
                           n_trials=trials, log_to_mlflow=False, keep_predictions=True)
    return figures(report)


DATASET_RUNS = {"olist": olist, "xeducation": xeducation,
                "xeducation_submission": xeducation_submission,
                "xeducation_forward": xeducation_forward}


def main_job(workdir: Path) -> dict[str, Any]:
    report = json.loads((workdir / "reports" / "training_report.json").read_text())
    side = report["metrics_side_by_side"]
    return {
        "chosen": report["chosen_model"], "choice": report["model_choice"]["reason"],
        "calibration": report["calibration"]["selection"],
        "ece_shipped": side["shipped"]["ece"], "ece_uncalibrated":
        side["shipped_uncalibrated"]["ece"], "log_loss_shipped": side["shipped"]["log_loss"],
        "log_loss_uncalibrated": side["shipped_uncalibrated"]["log_loss"],
        "auc": {name: m["roc_auc"] for name, m in side.items()},
        "tier_A": [t for t in report["test_metrics"]["shipped"]["tier_calibration"]
                   if t["tier"] == "A"][0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--only", default=",".join(DATASET_RUNS))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="a `leadscore demo` work folder: also report the main job")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        started = time.perf_counter()
        results[name] = DATASET_RUNS[name](args.trials)
        results[name]["wall_seconds"] = round(time.perf_counter() - started, 1)
        results[name]["load_average"] = round(os.getloadavg()[0], 2)
        print(json.dumps({name: results[name]}, default=float), file=sys.stderr, flush=True)
    if args.workdir:
        results["main"] = main_job(args.workdir)
    print(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
