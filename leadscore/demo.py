"""The main job: the whole pipeline on a generated CRM history, stage by stage.

Each stage is a plain function taking the run's context and returning the key figures that go
into ``summary.json``. Stages run in order; a failing stage stops the run with a clear message
and the summary written so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leadscore.config import Settings

console = Console()


@dataclass
class DemoContext:
    """What the stages share: settings, the run's options and what earlier stages produced."""

    settings: Settings
    n_leads: int
    seed: int
    trials: int
    results: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[DemoContext], dict[str, Any]]


def stage_generate(ctx: DemoContext) -> dict[str, Any]:
    """Generate a synthetic CRM history into the data folder."""
    from leadscore.generate import generate_crm

    summary = generate_crm(ctx.settings.data_dir, n_leads=ctx.n_leads, seed=ctx.seed,
                           salt=ctx.settings.hash_salt)
    return summary.to_dict()


def stage_identity(ctx: DemoContext) -> dict[str, Any]:
    """Validate the raw tables, resolve leads into persons (One ID), score against the truth."""
    import pandas as pd

    from leadscore.identity import resolve_identities
    from leadscore.validation import load_raw_tables

    tables = load_raw_tables(ctx.settings.raw_dir)
    truth = pd.read_parquet(ctx.settings.truth_dir / "leads_truth.parquet",
                            columns=["lead_id", "true_person_id"])
    result = resolve_identities(tables["identities"], tables["leads"],
                                ctx.settings.identity_dir, truth=truth)
    figures = result.to_dict()
    figures["validated_tables"] = {name: len(frame) for name, frame in tables.items()}
    return figures


def stage_features(ctx: DemoContext) -> dict[str, Any]:
    """Build the offline feature tables, apply the Feast repo, materialize, training set."""
    from features.build import build_features, materialize
    from features.training_set import build_training_set

    build = build_features(ctx.settings).to_dict()
    materialized = materialize(ctx.settings)
    training_set = build_training_set(ctx.settings)
    return {
        "build_seconds": build.get("seconds"),
        "tables": build.get("rows", build.get("tables")),
        "materialize_seconds": materialized.get("seconds"),
        "training_rows": len(training_set),
        "positive_rate": float(training_set["label"].mean()),
    }


def stage_train(ctx: DemoContext) -> dict[str, Any]:
    """Tune (Optuna), train, calibrate, evaluate against baselines, register (MLflow)."""
    from training.train import train_model

    summary = train_model(ctx.settings, trials=ctx.trials)
    return summary


def stage_route(ctx: DemoContext) -> dict[str, Any]:
    """Optimise tier cut-offs under capacity, then simulate against the rule policies."""
    from routing.cli import run_optimize, run_simulate

    policy_path, optimize_report = run_optimize(ctx.settings)
    report = run_simulate(ctx.settings, ctx.settings.reports_dir / "routing_simulation.json")
    return {
        "policy": str(policy_path),
        "policies": report.get("policies"),
        "goal": report.get("goal"),
        "drivers": report.get("drivers"),
    }


STAGES: list[tuple[str, Stage]] = [
    ("generate", stage_generate),
    ("identity", stage_identity),
    ("features", stage_features),
    ("train", stage_train),
    ("route", stage_route),
]


def _print_stage(name: str, figures: dict[str, Any]) -> None:
    table = Table(title=f"{name}", show_header=False, title_justify="left")
    for key, value in figures.items():
        if isinstance(value, dict | list):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    console.print(table)


def run_demo(settings: Settings, n_leads: int, seed: int, trials: int) -> dict[str, Any]:
    """Run every stage; write and return ``summary.json`` in the work folder."""
    settings.ensure_dirs()
    ctx = DemoContext(settings=settings, n_leads=n_leads, seed=seed, trials=trials)
    summary: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "workdir": str(settings.workdir),
        "leads": n_leads,
        "seed": seed,
        "stages": {},
    }
    summary_path = settings.workdir / "summary.json"
    t_all = time.perf_counter()
    try:
        for name, stage in STAGES:
            t0 = time.perf_counter()
            with console.status(f"[bold]{name}[/] …"):
                figures = stage(ctx)
            figures = {**figures, "stage_seconds": round(time.perf_counter() - t0, 2)}
            ctx.results[name] = figures
            summary["stages"][name] = figures
            _print_stage(name, figures)
    finally:
        summary["total_seconds"] = round(time.perf_counter() - t_all, 2)
        summary["completed"] = list(summary["stages"])
        _write_json(summary_path, summary)
    console.print(f"[green]summary written to[/] {summary_path}")
    return summary


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
