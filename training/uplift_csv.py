"""``leadscore uplift train`` / ``recommend`` on a flat experiment export (CSV).

The export holds one row per randomised unit (a lead, a customer): the features known before
the treatment, the randomised arm (``--treatment``, its reference value ``--control``) and a
0/1 outcome (``--outcome``). Reading and cleaning are those of ``train --csv``
(``training.csv_train``: strict decoding, damaged files refused, placeholders → missing,
text → categories), the leakage guard drops identifier-like columns and columns that alone
predict the outcome. Other outcome columns of the experiment (measured after the treatment,
e.g. ``spend`` beside ``visit``) are not features: name them with ``--drop``.

Order of the writes, so that nothing is left half-written: every check on the input comes
first (before anything is fitted); the model is saved to a temporary folder beside
``--model-out``; then logged, registered and gated in MLflow; then the folder is moved into
place and the report written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leadscore.config import Settings
from training.csv_train import _check_columns, clean_export, parse_label, read_export
from training.leakage import run_guard
from training.uplift import (
    DEFAULT_FOLDS,
    DEFAULT_TRIALS,
    DEFAULT_TUNE_ROWS,
    ProgressCallback,
    UpliftInputError,
    check_arms,
    check_costs,
    fit_uplift,
)
from training.uplift_registry import load_uplift_model, save_uplift_outputs


def parse_costs(values: Sequence[str]) -> dict[str, float]:
    """``ARM=AMOUNT`` options → {arm: amount}; refuses malformed ones naming the option."""
    out: dict[str, float] = {}
    for raw in values:
        arm, sep, amount = raw.partition("=")
        if not sep or not arm.strip():
            raise UpliftInputError(f"--cost {raw!r}: expected ARM=AMOUNT, e.g. 'Mens E-Mail=0.1'")
        try:
            out[arm.strip()] = float(amount)
        except ValueError:
            raise UpliftInputError(f"--cost {raw!r}: {amount!r} is not a number") from None
    return out


def prepare_experiment(
    frame: pd.DataFrame, treatment: str, control: str, outcome: str,
    id_col: str | None = None, drop: Sequence[str] = (), costs: Mapping[str, float] = (),
) -> dict[str, Any]:
    """Check the options against the export and split it into features, arms and outcomes."""
    _check_columns(frame, "--treatment", [treatment])
    _check_columns(frame, "--outcome", [outcome])
    _check_columns(frame, "--id", [id_col] if id_col else [])
    _check_columns(frame, "--drop", drop)
    if treatment == outcome:
        raise UpliftInputError(f"--treatment and --outcome name the same column {outcome!r}")
    for option, names in (("--id", [id_col]), ("--drop", list(drop))):
        for name in (treatment, outcome):
            if name in names:
                raise UpliftInputError(f"{option} names the {name!r} column, which is the "
                                       "treatment or the outcome")
    y_all, present = parse_label(frame[outcome])
    rows = frame.loc[present].reset_index(drop=True)
    y = y_all[present]
    arms, _ = check_arms(rows[treatment].tolist(), y, str(control), treatment, outcome)
    cost = check_costs(dict(costs), arms)
    data = clean_export(rows, outcome, id_col=id_col, drop=[treatment, *drop])
    return {"data": data, "arm_names": rows[treatment].astype(str).str.strip().tolist(),
            "y": y, "arms": arms, "costs": cost,
            "ids": rows[id_col].tolist() if id_col else None,
            "rows_without_outcome": int((~present).sum())}


def train_uplift_csv(
    csv_path: Path | str, treatment: str, control: str, outcome: str, *,
    model_out: Path | str, report_path: Path | str, settings: Settings,
    id_col: str | None = None, costs: Mapping[str, float] | None = None, value: float = 1.0,
    drop: Sequence[str] = (), folds: int = DEFAULT_FOLDS, trials: int = DEFAULT_TRIALS,
    tune_rows: int = DEFAULT_TUNE_ROWS, seed: int = 42, register: bool = True,
    promote: bool = True, model_name: str | None = None, encoding: str | None = None,
    guard_threshold: float = 0.90, progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fit, evaluate, save, register and gate an uplift model on an export; return the report
    (also written to ``report_path``)."""
    say = progress or (lambda _step: None)
    started = time.perf_counter()
    file = Path(csv_path)
    out_dir = Path(model_out)
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir())
                                                      or (out_dir / "MLmodel").is_file())):
        raise UpliftInputError(f"--model-out {out_dir} exists and is not an uplift model "
                               "folder: choose a new or empty folder")
    frame = read_export(file, encoding)
    prepared = prepare_experiment(frame, treatment, str(control), outcome, id_col, drop,
                                  costs or {})
    del frame
    data = prepared["data"]
    guard = run_guard(data.features, data.y, guard_threshold, seed=seed)
    kept = guard.kept
    if not kept:
        raise UpliftInputError(f"the leakage guard left no feature column (dropped: "
                               f"{sorted(guard.dropped)})")
    features = data.features[kept]
    say("data read")
    result = fit_uplift(
        features, prepared["arm_names"], prepared["y"], control=str(control),
        categorical=[c for c in data.categorical if c in kept], costs=prepared["costs"],
        value=value, folds=folds, trials=trials, tune_rows=tune_rows, seed=seed,
        treatment_column=treatment, outcome_column=outcome, progress=say,
    )
    result.model.metadata.update({"id_column": id_col, "source_file": file.name})
    report = {
        "source": {"file": file.name, "treatment": treatment, "control": str(control),
                   "outcome": outcome, "id_column": id_col, "seed": seed,
                   "rows_in_file": data.rows_in_file,
                   "rows_without_outcome": prepared["rows_without_outcome"]},
        "columns_dropped": {**data.dropped, **guard.dropped},
        "guard": guard.to_dict(),
        **result.report,
    }
    report = save_uplift_outputs(
        settings, result, features, out_dir, report, Path(report_path), started,
        register=register, model_name=model_name or f"uplift-{file.stem}", promote=promote,
        run_params={"source_file": file.name, "treatment": treatment, "outcome": outcome,
                    "folds": folds, "trials": trials, "seed": seed,
                    "rows": int(result.y.size)})
    say("registered")
    return report


def recommend_csv(model_path: Path | str, csv_path: Path | str, out_path: Path | str,
                  id_col: str | None = None, encoding: str | None = None) -> dict[str, Any]:
    """One output row per input row, in order: the id (``id_col``, default the training
    export's), ``recommended_arm``, ``uplift_<arm>`` and ``conversion_<arm>`` per arm, and the
    effect interval of the row's quintile (``uplift_<arm>_low`` / ``_high``)."""
    model = load_uplift_model(model_path)
    frame = read_export(Path(csv_path), encoding)
    id_column = id_col or model.metadata.get("id_column")
    if id_col:
        _check_columns(frame, "--id", [id_col])
    out = model.recommend(frame)
    out = pd.concat([out, model.intervals(frame)], axis=1)
    if id_column and id_column in frame.columns:
        out.insert(0, id_column, frame[id_column].to_numpy())
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    counts = out["recommended_arm"].value_counts().to_dict()
    return {"rows": int(len(out)), "out": str(path),
            "recommended": {str(k): int(v) for k, v in counts.items()},
            "arms": model.arms}
