"""The main job: the whole pipeline on a generated CRM history, stage by stage.

Each stage is a plain function taking the run's context and returning the key figures that go
into ``summary.json``. Stages run in order; a failing stage stops the run with a clear message
and the summary written so far.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    drift: bool = False
    replay_weeks: int = 2
    results: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[DemoContext], dict[str, Any]]


def stage_generate(ctx: DemoContext) -> dict[str, Any]:
    """Generate a synthetic CRM history into the data folder."""
    from crm_data.generate import generate_crm

    summary = generate_crm(ctx.settings.data_dir, n_leads=ctx.n_leads, seed=ctx.seed,
                           drift=ctx.drift, salt=ctx.settings.hash_salt)
    return summary.to_dict()


def stage_identity(ctx: DemoContext) -> dict[str, Any]:
    """Validate the raw tables, resolve leads into persons (One ID), score against the truth."""
    import pandas as pd

    from crm_data.identity import resolve_identities
    from crm_data.validation import load_raw_tables

    tables = load_raw_tables(ctx.settings.raw_dir)
    truth = pd.read_parquet(ctx.settings.truth_dir / "leads_truth.parquet",
                            columns=["lead_id", "true_person_id"])
    result = resolve_identities(tables["identities"], tables["leads"],
                                ctx.settings.identity_dir, truth=truth)
    figures = result.to_dict()
    figures["validated_tables"] = {name: len(frame) for name, frame in tables.items()}
    return figures


REPLAY_WEEKS = 2  # library default (tests); the command line replays CLI_REPLAY_WEEKS
CLI_REPLAY_WEEKS = 6  # enough for the last week's report to rate leads whose outcome closed


def replay_start(settings: Settings, weeks: int = REPLAY_WEEKS) -> datetime:
    """Monday 00:00 UTC about ``weeks`` weeks before the last lead: the demo's replayed
    traffic starts there."""
    import pandas as pd

    created = pd.read_parquet(settings.raw_dir / "leads.parquet", columns=["created_at"])
    last = created["created_at"].max().to_pydatetime()
    start = (last - timedelta(days=7 * weeks)).replace(hour=0, minute=0, second=0,
                                                         microsecond=0)
    return start - timedelta(days=start.weekday())


def stage_features(ctx: DemoContext) -> dict[str, Any]:
    """Build the offline feature tables, apply the Feast repo, materialize, training set.

    The online store is loaded up to the start of the replayed traffic only, so the service
    answers replayed leads from what was known before them; the training set holds the leads
    whose conversion window had closed by then, so the model never saw the replayed weeks nor
    any outcome recorded after they start.
    """
    from features.build import build_features, materialize
    from features.training_set import build_training_set

    build = build_features(ctx.settings).to_dict()
    served_from = replay_start(ctx.settings, ctx.replay_weeks)
    materialized = materialize(ctx.settings, end=served_from)
    # trained as it could have been when the replayed traffic starts: outcomes known by then
    training_set = build_training_set(ctx.settings, as_of=served_from)
    return {
        "build_seconds": build.get("seconds"),
        "tables": build.get("rows", build.get("tables")),
        "materialize_seconds": materialized.get("seconds"),
        "training_as_of": served_from.isoformat(),
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
    from pipelines.routing_jobs import run_optimize, run_simulate

    policy_path, optimize_report = run_optimize(ctx.settings)
    report = run_simulate(ctx.settings, ctx.settings.reports_dir / "routing_simulation.json")
    return {
        "policy": str(policy_path),
        "policies": report.get("policies"),
        "goal": report.get("goal"),
        "drivers": report.get("drivers"),
    }


def stage_serve(ctx: DemoContext) -> dict[str, Any]:
    """Serve the champion with BentoML and replay the last two weeks as the CRM would: the
    behaviour events (``POST /events``) and form submissions (``/predict``) in time order,
    after recording the events the live service would have received before (the backlog)."""
    import httpx

    from pipelines.demo_traffic import load_backlog, replay_plan
    from serving.launcher import ServedService
    from serving.model_store import bentoml_home, import_champion

    settings = ctx.settings
    # the imported champion belongs to this work folder's BentoML store, as the service's does
    os.environ.setdefault("BENTOML_HOME", bentoml_home(settings))
    tag, version = import_champion(settings)
    plan = replay_plan(settings, ctx.seed, since=replay_start(settings, ctx.replay_weeks),
                       singles=SAMPLE_ANSWERS,
                       drift=ctx.drift)
    backlog_persons = load_backlog(settings, plan)
    key = "demo-" + ctx.settings.hash_salt[:8]
    log_path = settings.reports_dir / "service.log"
    answers: list[dict[str, Any]] = []
    events = {"accepted": 0, "calls": 0, "rejected": 0}
    with ServedService(settings.workdir, log_path, key) as service:
        service.wait_until("/readyz", timeout=180)
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=60) as client:
            for step in plan.steps:
                for body in step.events:
                    pushed = _post(client, "/events", body)
                    events["calls"] += 1
                    events["accepted"] += pushed["accepted"]
                    events["rejected"] += sum(pushed["rejected"].values())
                if not step.submissions:  # the last steps of leads, after every form
                    continue
                if len(step.submissions) == 1 and len(answers) < SAMPLE_ANSWERS:
                    answers.append(_post(client, "/predict", step.submissions[0]))
                else:
                    _post(client, "/predict_batch", {"submissions": step.submissions})
    for answer in answers:
        console.print(
            f"  {answer['lead_id']}: p={answer['probability']:.3f} tier {answer['tier']} → "
            f"{answer['channel']}; "
            + "; ".join(r["text"] for r in answer["reasons"]["positive"][:2])
        )
    return {"bento_model": tag, "registry_version": version,
            "submissions": plan.submissions, "backlog_events": len(plan.backlog),
            "backlog_persons": backlog_persons, "events_pushed": events["accepted"],
            "events_rejected": events["rejected"], "event_calls": events["calls"],
            "replay_steps": len(plan.steps),
            "sample_answers": answers}


SAMPLE_ANSWERS = 3


def _post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` and return the JSON answer (an HTTP error stops the stage)."""
    reply = client.post(path, json=body)
    reply.raise_for_status()
    return reply.json()


def stage_drift(ctx: DemoContext) -> dict[str, Any]:
    """Weekly Evidently drift and business report of the last replayed week."""
    from pipelines.weekly_report import iso_week, run_weekly_report

    last_week = timedelta(days=7 * (ctx.replay_weeks - 1))
    start = replay_start(ctx.settings, ctx.replay_weeks) + last_week
    year, week, _ = start.isocalendar()
    report = run_weekly_report(ctx.settings, iso_week(f"{year}-W{week:02d}"))
    drift = report.drift
    return {
        "week": report.period.label,
        "folder": str(report.folder),
        "exit_code": report.exit_code,
        "dataset_drift": drift.get("dataset_drift"),
        "drift_share": drift.get("drift_share"),
        "n_current": drift.get("n_current"),
        "cohort": drift.get("cohort"),
        "cohort_n": (drift.get("cohort") or {}).get("n"),
        "cohort_auc": (drift.get("cohort") or {}).get("auc"),
        "cohort_ece": (drift.get("cohort") or {}).get("ece"),
        "served_auc_by_stage": {stage: figures["auc"] for stage, figures in (
            (report.business.get("auc_by_stage") or {}).get("stages") or {}).items()},
        "index": str(report.index_path),
    }


def stage_portrait(ctx: DemoContext) -> dict[str, Any]:
    """The person store behind portraits and audiences (``GET /persons``, ``/audiences``)."""
    from pipelines.portrait_jobs import build_store

    return build_store(ctx.settings)


STAGES: list[tuple[str, Stage]] = [
    ("generate", stage_generate),
    ("identity", stage_identity),
    ("features", stage_features),
    ("train", stage_train),
    ("route", stage_route),
    ("serve", stage_serve),
    ("portrait", stage_portrait),
    ("drift", stage_drift),
]


def _print_stage(name: str, figures: dict[str, Any]) -> None:
    table = Table(title=f"{name}", show_header=False, title_justify="left")
    for key, value in figures.items():
        if isinstance(value, dict | list):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    console.print(table)


def run_demo(
    settings: Settings, n_leads: int, seed: int, trials: int, drift: bool = False,
    replay_weeks: int = REPLAY_WEEKS,
) -> dict[str, Any]:
    """Run every stage; write and return ``summary.json`` in the work folder.

    With ``drift`` the generated history shifts in its last third (``generate_crm(drift=True)``).
    """
    settings.ensure_dirs()
    # library deprecation chatter hides the figures people read; errors still surface
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if replay_weeks < 1:
        raise ValueError("replay_weeks: must be at least 1")
    ctx = DemoContext(settings=settings, n_leads=n_leads, seed=seed, trials=trials, drift=drift,
                      replay_weeks=replay_weeks)
    summary: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "workdir": str(settings.workdir),
        "leads": n_leads,
        "seed": seed,
        "drift": drift,
        "replay_weeks": replay_weeks,
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
