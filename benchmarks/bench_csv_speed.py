"""Speed of ``train --csv``: the former search and fit settings beside today's, in one run.

Two exports, each trained twice in the same process — ``PREVIOUS_SPEED`` (learning rate 0.06,
early stopping 50, 4 inner folds, AUC evaluated every round, every training row in the inner
folds, one process) and the default ``CsvSpeed()`` (learning rate 0.1, early stopping 30, 3
inner folds, log loss alone each round, at most 12,000 rows in the inner folds that score the
trials, the splits in 2 processes) — with the same folds, seed and trials:

- ``xeducation``: X Education's export, today's protocol (``bench_x_education.py``), random
  stratified 5-fold, 30 trials per fold;
- ``export40k``: a generated 40,000-row telemarketing export (``tests/flat_export.py``: rows in
  time order, month shocks, the post-call duration dropped), random stratified 5-fold.

Wall seconds, CPU seconds of the process and its workers, the load average (``os.getloadavg``)
at start and end, ROC-AUC and ECE of the shipped model.

    nice -n 10 .venv/bin/python benchmarks/bench_csv_speed.py [--only xeducation,export40k]
        [--trials 30] [--settings previous,default] [--json PATH]

Profile of the former settings (cProfile, X Education, 30 trials, 507 s under a load average
of 5-7 on 2 cores): Optuna trials 65% (``lgb.cv``: 150 searches; inside them the boosting
rounds 296 s and the per-round evaluation of log loss and AUC 51 s), the models fitted after
tuning 25% (LightGBM 67 s, the logistic regressions 47 s, LightGBM predictions 28 s), the rest
reading, the guard and the report.

Last measured (this machine, 2 cores shared with other jobs: load average 10-14, so wall
times are several times an idle machine's; CPU seconds are the comparable figure):

| export | settings | wall s | CPU s | load | ROC-AUC | ECE |
|---|---|---|---|---|---|---|
| xeducation | previous | 1024.7 | 231.7 | 10.0 -> 13.5 | 0.9105 | 0.0116 |
| xeducation | default | 394.2 | 132.7 | 12.5 -> 14.4 | 0.9099 | 0.0150 |
| export40k | default | 592.4 | 158.0 | 10.9 -> 14.9 | 0.7568 | 0.0033 |
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from tests.flat_export import POST_OUTCOME_COLUMN, telemarketing_export  # noqa: E402
from training.csv_train import PREVIOUS_SPEED, CsvSpeed, train_csv  # noqa: E402

X_EDUCATION = PROJECT_ROOT.parent / "shared" / "datasets" / "x-education-leads" / "Leads.csv"
TODAY_DROP = ("Lead Quality", "Lead Profile", "Asymmetrique Activity Index",
              "Asymmetrique Profile Index", "Asymmetrique Activity Score",
              "Asymmetrique Profile Score")
SETTINGS = {"previous": PREVIOUS_SPEED, "default": CsvSpeed()}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(path: Path, label: str, drop: tuple[str, ...], speed: CsvSpeed,
            trials: int) -> dict[str, Any]:
    """One ``train_csv`` run: wall and CPU seconds, load, AUC and ECE."""
    load_before = os.getloadavg()[0]
    cpu = _cpu_seconds()
    started = time.perf_counter()
    report = train_csv(path, label, drop=drop, n_trials=trials, log_to_mlflow=False,
                       speed=speed)
    seconds = time.perf_counter() - started
    ours = report["comparison"]["ours"]
    cpu = _cpu_seconds() - cpu  # workers are the fork server's children: add their own count
    if report["speed"]["workers_used"] > 1:
        cpu += report["speed"]["splits_cpu_seconds"]
    return {"wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "roc_auc": round(ours["roc_auc"], 4), "ece": round(ours["ece"], 4),
            "default_lightgbm_auc": round(report["comparison"]["lightgbm_default"]["roc_auc"], 4),
            "chosen": report["model_choice"]["counts"], "rows": report["data"]["rows"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="xeducation,export40k")
    parser.add_argument("--settings", default="previous,default")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the generated export")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-csv-speed-") as tmp:
        exports = {"xeducation": (X_EDUCATION, "Converted", TODAY_DROP)}
        if "export40k" in args.only:
            path = Path(tmp) / "telemarketing.csv"
            telemarketing_export(args.rows, seed=0).to_csv(path, index=False)
            exports["export40k"] = (path, "subscribed", (POST_OUTCOME_COLUMN,))
        for name in args.only.split(","):
            path, label, drop = exports[name]
            for setting in args.settings.split(","):
                result = measure(path, label, drop, SETTINGS[setting], args.trials)
                results.setdefault(name, {})[setting] = result
                print(f"{name:11s} {setting:9s} wall {result['wall_seconds']:7.1f} s  "
                      f"CPU {result['cpu_seconds']:7.1f} s  load {result['load_before']:.1f}"
                      f"->{result['load_after']:.1f}  AUC {result['roc_auc']:.4f}  "
                      f"ECE {result['ece']:.4f}  (default LightGBM AUC "
                      f"{result['default_lightgbm_auc']:.4f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
