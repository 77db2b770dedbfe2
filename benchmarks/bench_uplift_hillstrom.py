"""Uplift on real randomised data: the Hillstrom e-mail experiment (64,000 customers, men's
e-mail / women's e-mail / no e-mail, 1/3 each).

Protocol. ``training.uplift.fit_uplift`` (EconML X-learner, LightGBM, Optuna per fold) is
cross-fitted on all rows for ``visit`` (the policy's outcome) and for ``conversion`` (its
per-arm outcome models serve the DR estimate of conversions). Every figure is out-of-fold:

* Qini coefficient and AUUC per e-mail against no e-mail (both outcomes).
* Off-policy value per 1,000 customers — visits, conversions, and spend minus $0.10 per e-mail
  sent — by doubly-robust (DR: out-of-fold per-arm outcome models; for spend the per-arm mean
  of the other folds) and inverse-propensity (IPS, propensity 1/3) estimators, paired
  bootstrap 95% intervals over customers, of these policies:
  ``learned@B``: e-mail the share ``B`` of customers with the largest predicted visit uplift,
  each with the e-mail whose uplift is larger; ``best_rule@B``: the best single-column rule at
  the same budget — rank by one column (either direction; ties broken at random), e-mail the
  top share ``B`` with one e-mail — chosen by DR visits on the *other* folds and applied to
  each fold; ``random@B``: a random share ``B``, e-mail chosen at random; ``everyone_best_arm``
  (the e-mail with the larger DR visits, to everyone), ``no_one``, ``random_arm`` (each of the
  three arms with probability 1/3).
* The target: ``learned@B − best_rule@B`` in DR visits with an interval above 0.
* ``--timing-rows N``: wall time of ``fit_uplift`` on N rows (resampled with replacement from
  the file), the default protocol (5 folds, 8 trials per fold).

    nice -n 10 .venv/bin/python benchmarks/bench_uplift_hillstrom.py [--rows N] [--trials 8] \
        [--timing-rows 100000] [--out reports/bench_uplift_hillstrom.json]

Last measured (seed 42, 5 folds, 8 trials; shared 2 cores at load 7.5; full tables in
docs/uplift.md). Visit Qini: men's +0.00007 (nil), women's +0.00318. DR visits per 1,000,
learned vs best single-column rule at the same budget: 25% 127.1 vs 127.9 (−0.8 [−4.4, +2.7]),
50% 144.7 vs 147.6 (−2.9 [−7.9, +1.7]), 75% 163.6 vs 164.4 (−0.7 [−5.6, +4.0]); random at 25%
119.3, no one 106.3, everyone men's e-mail 182.5, learned without budget 183.3. The target
(learned beats the rule, interval above 0) is not met: the men's e-mail's effect is flat across
customers and the women's never exceeds it. Default parameters only (``--trials 1``): men's
Qini −0.00017, women's +0.00313, learned − rule at 50% −4.3 [−9.3, +0.2]. ``fit_uplift`` on
100,000 rows: 209 s wall at load 7.4, 76 s CPU (one LightGBM thread).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from training.uplift import fit_uplift
from training.uplift_metrics import bootstrap_mean, dr_scores

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/datasets/hillstrom-email/hillstrom.csv"
CONTROL = "No E-Mail"
FEATURES = ("recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie",
            "channel")
CATEGORICAL = ("history_segment", "zip_code", "channel")
RULE_COLUMNS = ("recency", "history", "mens", "womens", "newbie")
EMAIL_COST = 0.10
BUDGETS = (0.25, 0.5, 0.75)


def load(path: Path, rows: int | None, seed: int, replace: bool = False) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if rows:
        frame = frame.sample(n=rows, random_state=seed, replace=replace).reset_index(drop=True)
    for column in CATEGORICAL:
        frame[column] = frame[column].astype("category")
    return frame


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % folds)


def top_share(score: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of the ``share`` rows with the largest score (ties broken at random)."""
    k = int(round(share * score.size))
    order = np.lexsort((rng.uniform(size=score.size), -score))
    mask = np.zeros(score.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def rule_choice(frame: pd.DataFrame, column: str, sign: int, arm: int, share: float,
                rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = sign * frame[column].to_numpy(dtype=float)[rows]
    return np.where(top_share(values, share, rng), arm, 0)


def best_rule_policy(frame: pd.DataFrame, dr_visit: np.ndarray, folds: np.ndarray,
                     share: float, seed: int, arms: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per fold, the single-column rule with the largest DR visits on the other folds."""
    choice = np.zeros(len(frame), dtype=int)
    picked = []
    for k in np.unique(folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        best, best_value = None, -np.inf
        for column in RULE_COLUMNS:
            for sign in (1, -1):
                for arm in (1, 2):
                    c = rule_choice(frame, column, sign, arm, share, train,
                                    np.random.default_rng(seed))
                    value = dr_visit[train, c].mean()
                    if value > best_value:
                        best, best_value = (column, sign, arm), value
        column, sign, arm = best
        choice[test] = rule_choice(frame, column, sign, arm, share, test,
                                   np.random.default_rng(seed + int(k)))
        picked.append(f"{'top' if sign > 0 else 'bottom'} {column} → {arms[arm]}")
    return choice, picked


def spend_mu(spend: np.ndarray, arm: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Per-arm mean spend of the other folds (a constant, cross-fitted outcome model)."""
    mu = np.zeros((spend.size, 3))
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        for a in range(3):
            mu[test, a] = spend[train & (arm == a)].mean()
    return mu


def run(args: argparse.Namespace) -> dict:
    frame = load(args.csv, args.rows, args.seed)
    X = frame[list(FEATURES)]
    started = time.perf_counter()
    fits = {outcome: fit_uplift(X, frame["segment"].astype(str).tolist(),
                                frame[outcome].to_numpy(), control=CONTROL,
                                categorical=CATEGORICAL, trials=args.trials, folds=args.folds,
                                seed=args.seed, treatment_column="segment",
                                outcome_column=outcome)
            for outcome in ("visit", "conversion")}
    fit_seconds = time.perf_counter() - started
    visit_fit = fits["visit"]
    arms = visit_fit.model.arms
    arm = visit_fit.arm
    n = arm.size
    propensity = np.bincount(arm, minlength=3) / n
    folds = fold_of(n, args.folds, args.seed)
    emailed_cost = np.array([0.0, EMAIL_COST, EMAIL_COST])
    spend = frame["spend"].to_numpy(dtype=float)
    scores = {
        "dr": {"visits": visit_fit.dr,
               "conversions": fits["conversion"].dr,
               "net_spend": dr_scores(spend, arm, spend_mu(spend, arm, folds), propensity)
               - emailed_cost},
        "ips": {"visits": dr_scores(frame["visit"], arm, np.zeros((n, 3)), propensity),
                "conversions": dr_scores(frame["conversion"], arm, np.zeros((n, 3)),
                                         propensity),
                "net_spend": dr_scores(spend, arm, np.zeros((n, 3)), propensity)
                - emailed_cost},
    }
    rng = np.random.default_rng(args.seed)
    uplift = visit_fit.oof_uplift
    best_email = 1 + int(np.argmax([visit_fit.dr[:, a].mean() for a in (1, 2)]))
    policies: dict[str, np.ndarray] = {
        "everyone_best_arm": np.full(n, best_email),
        "no_one": np.zeros(n, dtype=int),
        "random_arm": rng.integers(0, 3, n),
        "learned_free": np.where(uplift.max(axis=1) > 0, uplift.argmax(axis=1), 0),
    }
    rules = {}
    best_of = 1 + uplift[:, 1:].argmax(axis=1)
    for share in BUDGETS:
        mask = top_share(uplift.max(axis=1), share, rng)
        policies[f"learned@{share:g}"] = np.where(mask, best_of, 0)
        policies[f"best_rule@{share:g}"], rules[f"{share:g}"] = best_rule_policy(
            frame, visit_fit.dr, folds, share, args.seed, arms)
        random_mask = top_share(rng.uniform(size=n), share, rng)
        policies[f"random@{share:g}"] = np.where(random_mask, rng.integers(1, 3, n), 0)

    rows = np.arange(n)
    values: dict[str, dict] = {}
    for estimator, by_outcome in scores.items():
        for outcome, gamma in by_outcome.items():
            per_policy = np.column_stack([gamma[rows, c] for c in policies.values()])
            point, (low, high) = bootstrap_mean(per_policy, seed=args.seed,
                                                resamples=args.resamples)
            for i, name in enumerate(policies):
                values.setdefault(name, {}).setdefault(estimator, {})[outcome] = {
                    "per_1000": 1000 * float(point[i]),
                    "ci": [1000 * float(low[i]), 1000 * float(high[i])]}
    comparisons = {}
    for share in BUDGETS:
        for estimator, by_outcome in scores.items():
            for outcome, gamma in by_outcome.items():
                diff = (gamma[rows, policies[f"learned@{share:g}"]]
                        - gamma[rows, policies[f"best_rule@{share:g}"]])
                point, (low, high) = bootstrap_mean(diff, seed=args.seed,
                                                    resamples=args.resamples)
                comparisons.setdefault(f"learned@{share:g} - best_rule@{share:g}", {}).setdefault(
                    estimator, {})[outcome] = {"per_1000": 1000 * point,
                                               "ci": [1000 * low, 1000 * high]}
    result = {
        "rows": n, "arms": arms, "folds": args.folds, "trials": args.trials, "seed": args.seed,
        "fit_seconds_both_outcomes": round(fit_seconds, 1),
        "machine_load_1min": os.getloadavg()[0],
        "uplift_scores": {outcome: fit.report["per_arm"] for outcome, fit in fits.items()},
        "effect_by_predicted_quintile": {outcome: fit.report["effect_intervals"]
                                         for outcome, fit in fits.items()},
        "tuning": {outcome: fit.report["tuning"] for outcome, fit in fits.items()},
        "best_single_arm": arms[best_email],
        "rules_picked_per_fold": rules,
        "emailed_share": {name: float(np.mean(c > 0)) for name, c in policies.items()},
        "policy_values": values,
        "learned_minus_best_rule": comparisons,
    }
    return result


def timing(args: argparse.Namespace) -> dict:
    frame = load(args.csv, args.timing_rows, args.seed, replace=True)
    started = time.perf_counter()
    fit = fit_uplift(frame[list(FEATURES)], frame["segment"].astype(str).tolist(),
                     frame["visit"].to_numpy(), control=CONTROL, categorical=CATEGORICAL,
                     seed=args.seed)
    seconds = time.perf_counter() - started
    return {"rows": args.timing_rows, "seconds": round(seconds, 1),
            "cpu_seconds": fit.report["cpu_seconds"],
            "per_fold_seconds": [t["seconds"] for t in fit.report["tuning"]],
            "machine_load_1min": os.getloadavg()[0]}


def print_summary(result: dict) -> None:
    for outcome, per_arm in result["uplift_scores"].items():
        for arm, s in per_arm.items():
            print(f"{outcome:10s} {arm:14s} qini {s['qini']:+.5f}  auuc {s['auuc']:.5f} "
                  f"(random {s['auuc_random']:.5f})  DR effect {s['dr_average_effect']:+.4f} "
                  f"[{s['dr_average_effect_ci'][0]:+.4f}, {s['dr_average_effect_ci'][1]:+.4f}]")
    print(f"{'policy':22s} {'e-mailed':>8s}  " + "  ".join(
        f"{o + ' (DR)':>26s}" for o in ("visits", "conversions", "net_spend")))
    for name, by_estimator in result["policy_values"].items():
        cells = []
        for outcome in ("visits", "conversions", "net_spend"):
            v = by_estimator["dr"][outcome]
            cells.append(f"{v['per_1000']:8.1f} [{v['ci'][0]:7.1f},{v['ci'][1]:7.1f}]")
        print(f"{name:22s} {result['emailed_share'][name]:8.2f}  " + "  ".join(
            f"{c:>26s}" for c in cells))
    for name, by_estimator in result["learned_minus_best_rule"].items():
        for estimator in ("dr", "ips"):
            v = by_estimator[estimator]["visits"]
            print(f"{name} ({estimator}, visits per 1000): {v['per_1000']:+.1f} "
                  f"[{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]")
    print("rules picked:", json.dumps(result["rules_picked_per_fold"], ensure_ascii=False))
    for arm, bins in result["effect_by_predicted_quintile"]["visit"].items():
        print(f"visit, {arm}: DR effect by quintile of predicted uplift "
              + ", ".join(f"{p:+.3f}→{e:+.3f} [{lo:+.3f},{hi:+.3f}]" for p, e, lo, hi in zip(
                  bins["predicted_effect"], bins["dr_effect"], bins["low"], bins["high"],
                  strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--rows", type=int, default=None, help="subsample (default: all)")
    parser.add_argument("--trials", type=int, default=8, help="Optuna trials per fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--timing-rows", type=int, default=0,
                        help="also time fit_uplift on this many rows (0: skip)")
    parser.add_argument("--skip-policies", action="store_true",
                        help="only the timing (with --timing-rows)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    result: dict = {}
    if not args.skip_policies:
        result = run(args)
        print_summary(result)
    if args.timing_rows:
        result["timing"] = timing(args)
        print(f"fit_uplift on {args.timing_rows} rows: {result['timing']['seconds']} s wall, "
              f"{result['timing']['cpu_seconds']} s CPU "
              f"(load {result['timing']['machine_load_1min']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
