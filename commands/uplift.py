"""``leadscore uplift``: learn what each arm of a randomised experiment does for whom, and
recommend an arm per row. Thin Typer commands over :mod:`training.uplift_csv`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from commands.common import WorkdirOption, console, err_console, fail, settings_for

app = typer.Typer(
    name="uplift",
    help="Uplift models from randomised experiments: per-arm effects, recommended arm per row.",
    no_args_is_help=True,
)


@app.command("train")
def train_command(
    csv: Annotated[Path | None, typer.Option(
        "--csv", dir_okay=False, help="Flat experiment export (one row per unit). Without it: "
        "the follow-up channels on the work folder's randomised leads.")] = None,
    treatment: Annotated[str | None, typer.Option(
        "--treatment", help="Column of the randomised arm (--csv).")] = None,
    control: Annotated[str | None, typer.Option(
        "--control", help="The reference arm's value in --treatment (--csv).")] = None,
    outcome: Annotated[str | None, typer.Option(
        "--outcome", help="Binary outcome column (0/1) (--csv).")] = None,
    model_out: Annotated[Path | None, typer.Option(
        "--model-out", file_okay=False, help="Folder to write the model to (without --csv: "
        "models/lead_uplift).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", dir_okay=False, help="Report JSON to write (without --csv: "
        "reports/uplift_leads.json).")] = None,
    id_col: Annotated[str | None, typer.Option("--id", help="Identifier column (never a "
                                               "feature; copied into recommendations).")] = None,
    cost: Annotated[list[str] | None, typer.Option(
        "--cost", help="ARM=AMOUNT: money per unit treated by an arm (repeatable; default 0).")
    ] = None,
    value: Annotated[float, typer.Option(
        "--value", help="Money per positive outcome: the policy maximises value × uplift − "
        "cost.")] = 1.0,
    drop: Annotated[list[str] | None, typer.Option(
        "--drop", help="Column(s) that are not features, e.g. other outcomes measured after "
        "the treatment (repeatable).")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, max=20,
                                       help="Cross-fitting folds.")] = 5,
    trials: Annotated[int, typer.Option("--trials", min=1,
                                        help="Optuna trials per fold.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="Registered model name (default: uplift-<file stem>).")] = None,
    register: Annotated[bool, typer.Option(
        "--register/--no-register", help="Log and register the model in MLflow.")] = True,
    promote: Annotated[bool, typer.Option(
        "--promote/--no-promote", help="Move the champion alias when the gate says so.")] = True,
    encoding: Annotated[str | None, typer.Option(
        "--encoding", help="The file's text encoding (default UTF-8).")] = None,
    workdir: WorkdirOption = None,
) -> None:
    """Cross-fit, tune and evaluate an uplift model; save it; register and gate it in MLflow."""
    from training.uplift_csv import parse_costs, train_uplift_csv

    settings = settings_for(workdir, services=())
    if csv is None:
        given = [name for name, v in (("--treatment", treatment), ("--control", control),
                                      ("--outcome", outcome), ("--id", id_col)) if v is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} need(s) --csv; without --csv the "
                                     "work folder's follow-up channels are the arms")
        _train_work_folder(settings, model_out, report, folds, trials, seed, register,
                           promote)
        return
    missing = [name for name, v in (("--treatment", treatment), ("--control", control),
                                    ("--outcome", outcome), ("--model-out", model_out),
                                    ("--report", report)) if v is None]
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)} required with --csv")
    _check_registry(settings, register)
    try:
        costs = parse_costs(cost or [])
        with _training_progress() as bar:
            task = bar.add_task("reading", total=folds + 2)
            result = train_uplift_csv(
                csv, treatment, control, outcome, model_out=model_out, report_path=report,
                settings=settings, id_col=id_col, costs=costs, value=value, drop=drop or [],
                folds=folds, trials=trials, seed=seed, register=register, promote=promote,
                model_name=model_name, encoding=encoding,
                progress=lambda step: bar.update(task, advance=1, description=step))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _print_result(result)
    diff = result["learned_minus_everyone_best_arm"]
    console.print(f"learned policy − everyone {escape(diff['best_arm'])}: "
                  f"{diff['value_per_row']:+.5f} per row [{diff['ci'][0]:+.5f}, "
                  f"{diff['ci'][1]:+.5f}]", soft_wrap=True)


def _train_work_folder(settings, model_out: Path | None, report: Path | None, folds: int,
                       trials: int, seed: int, register: bool, promote: bool) -> None:
    """The follow-up channels' uplift model on the work folder's randomised leads."""
    from pipelines.routing_jobs import run_uplift_train
    from routing.policy import PolicyError

    _check_registry(settings, register)
    try:
        with _training_progress() as bar:
            task = bar.add_task("reading", total=folds + 1)
            result = run_uplift_train(
                settings, folds=folds, trials=trials, seed=seed, register=register,
                promote=promote, model_out=model_out, report_path=report,
                progress=lambda step: bar.update(task, advance=1, description=step))
    except (ValueError, FileNotFoundError, PolicyError) as exc:
        fail(str(exc))
    evidence = result["evidence"]
    sources = evidence.get("sources") or {}
    console.print(f"{evidence['randomised_leads']} randomised leads before "
                  f"{result['trained_until']} ({sources.get('history', 0)} from the history, "
                  f"{sources.get('prediction_log', 0)} from the prediction log's exploration); "
                  f"conversions per channel {evidence['positives_per_channel']}",
                  soft_wrap=True)
    _print_result(result)


def _check_registry(settings, register: bool) -> None:
    """Fail before any work when the model is to be registered and MLflow cannot be reached."""
    if not register:
        return
    from training.train import check_training_services

    try:
        check_training_services(settings, None)
    except ConnectionError as exc:
        fail(f"cannot register the uplift model: {exc}")


def _training_progress() -> Any:
    """The progress bar of ``uplift train`` (on standard error, gone when done)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]uplift train[/]"), BarColumn(),
                    TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=err_console, transient=True)


def _print_result(result: dict) -> None:
    table = Table(title=f"cross-fitted, against {escape(result['reference_arm'])}",
                  title_justify="left")
    for column in ("arm", "qini", "auuc", "auuc_random", "DR effect [95% CI]"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, values in result["per_arm"].items():
        low, high = values["dr_average_effect_ci"]
        table.add_row(escape(arm), f"{values['qini']:.5f}", f"{values['auuc']:.5f}",
                      f"{values['auuc_random']:.5f}",
                      f"{values['dr_average_effect']:+.4f} [{low:+.4f}, {high:+.4f}]")
    console.print(table)
    registry = result.get("registry")
    if registry:
        console.print(f"model {escape(registry['model_name'])} v{registry['model_version']} "
                      f"({'champion' if registry['promoted'] else 'challenger'}): "
                      f"{escape(registry['promotion_reason'])}", soft_wrap=True)
    console.print(f"model: {result['model_out']}\nreport: {result['report_path']}")


@app.command("recommend")
def recommend_command(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `uplift "
                                        "train --model-out`.")],
    csv: Annotated[Path, typer.Option("--csv", dir_okay=False, help="Rows to recommend for.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Output CSV.")],
    id_col: Annotated[str | None, typer.Option(
        "--id", help="Identifier column to copy (default: the training export's).")] = None,
    encoding: Annotated[str | None, typer.Option(
        "--encoding", help="The file's text encoding (default UTF-8).")] = None,
) -> None:
    """One output row per input row, in order: id, recommended_arm, uplift_<arm> per arm."""
    from training.uplift_csv import recommend_csv

    try:
        summary = recommend_csv(model, csv, out, id_col=id_col, encoding=encoding)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    shares = ", ".join(f"{escape(k)}: {v}" for k, v in summary["recommended"].items())
    console.print(f"{summary['rows']} rows → {summary['out']} ({shares})")
