"""``leadscore train`` and ``leadscore score``: thin Typer commands over ``training``.

Wire into the main CLI with::

    from commands.train import score_command, train_command
    app.command("train")(train_command)
    app.command("score")(score_command)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from commands.common import WorkdirOption, console, err_console, fail, settings_for

SERVICE_DOWN_EXIT = 2  # like every command's failure (cli_common.fail)


def _fail_service(exc: ConnectionError) -> None:
    """Report an unreachable service on one unwrapped line (however narrow the terminal or log)
    and exit ``SERVICE_DOWN_EXIT``."""
    err_console.print(f"[bold red]error:[/] cannot train: {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(SERVICE_DOWN_EXIT)


def _print_metrics(summary: dict) -> None:
    table = Table(title="test slice (newest leads)", title_justify="left")
    for column in ("model", "roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, metrics in summary["metrics"].items():
        table.add_row(name, *(
            "-" if metrics[k] is None else f"{metrics[k]:.4f}"
            for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")
        ))
    console.print(table)


def train_command(
    workdir: WorkdirOption = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials.")] = 30,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=1, help="Stop tuning after this many seconds.")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna storage URL for a persistent/shared study "
        "(default: SQLite in <workdir>/mlruns/optuna.db; production: PostgreSQL "
        "database leadscore_optuna).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Tuning processes on the one Optuna study (--trials are "
        "split between them; LightGBM threads = cores // workers; default 1). With --csv: "
        "processes evaluating the splits in parallel (default: one per core, at most 2).")] = None,
    promote: Annotated[bool, typer.Option(
        "--promote/--no-promote",
        help="Move the champion alias when the new model beats the champion.")] = True,
    report: Annotated[Path | None, typer.Option(
        "--report", dir_okay=False,
        help="Report JSON (default: <workdir>/reports/training_report.json).")] = None,
    csv: Annotated[Path | None, typer.Option(
        "--csv", dir_okay=False, help="Train on a flat CRM export (CSV) instead of the "
        "feature store; see --label, --id, --time, --drop, --allow.")] = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="--csv: binary outcome column.")] = None,
    id_col: Annotated[str | None, typer.Option(
        "--id", help="--csv: identifier column (never a feature).")] = None,
    time_col: Annotated[str | None, typer.Option(
        "--time", help="--csv: timestamp column (evaluate forward in time; random k-fold "
        "beside it).")] = None,
    order_is_time: Annotated[bool, typer.Option(
        "--order-is-time", help="--csv: the rows are in time order (no date column): evaluate "
        "forward in row order; random k-fold beside it.")] = False,
    random_check: Annotated[bool, typer.Option(
        "--random-check/--no-random-check", help="--csv with --time or --order-is-time: also "
        "run random k-fold and warn when it disagrees with the forward figure.")] = True,
    drop: Annotated[list[str] | None, typer.Option(
        "--drop", help="--csv: column(s) to leave out (repeatable).")] = None,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="--csv: column(s) the leakage guard must keep (repeatable).")] = None,
    guard_threshold: Annotated[float, typer.Option(
        "--guard-threshold", help="--csv: stand-alone AUC treated as a leak.")] = 0.90,
    encoding: Annotated[str | None, typer.Option(
        "--encoding", help="--csv: the file's text encoding (a Python codec name, e.g. gbk, "
        "cp1252). Default: UTF-8, read strictly.")] = None,
) -> None:
    """Tune, train, calibrate and evaluate the lead-conversion model; register it in MLflow.

    The services it writes to (production: PostgreSQL; MLflow store, Optuna storage) are checked
    first; when one is unreachable the command exits 2 with a one-line error before doing
    anything.
    """
    if csv is not None:
        from training.train import check_training_services

        if label is None:
            fail("--csv needs --label (the binary outcome column)")
        if time_col and order_is_time:
            fail("--time and --order-is-time exclude each other: give the time column, or say "
                 "that the rows are in time order, not both")
        settings = settings_for(workdir, services=())  # checked next: training needs no Redis
        try:
            check_training_services(settings, storage)
        except ConnectionError as exc:
            _fail_service(exc)
        code = train_csv_command(
            csv_path=csv, label=label,
            report=report or settings.reports_dir / "csv_training_report.json",
            id_col=id_col, time_col=time_col, drop=drop, allow=allow,
            guard_threshold=guard_threshold, trials=trials, timeout=timeout, workdir=workdir,
            encoding=encoding, order_is_time=order_is_time, random_check=random_check,
            storage=storage, workers=workers,
        )
        if code:
            raise typer.Exit(code)
        return
    csv_only = {"--label": label, "--id": id_col, "--time": time_col, "--drop": drop,
                "--allow": allow, "--encoding": encoding, "--order-is-time": order_is_time,
                "--no-random-check": not random_check}
    given = [name for name, value in csv_only.items() if value]
    if given:
        fail(f"{', '.join(given)} only apply with --csv")

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from training.train import train_model

    settings = settings_for(workdir, services=())  # train_model checks what training uses
    try:
        with Progress(SpinnerColumn(), TextColumn("[bold]train[/] {task.description}"),
                      TimeElapsedColumn(), console=err_console, transient=True) as bar:
            task = bar.add_task("starting", total=None)
            summary = train_model(
                settings, trials=trials, timeout=timeout, storage=storage, promote=promote,
                report_path=report, workers=workers or 1,
                progress=lambda step: bar.update(task, description=step),
            )
    except ConnectionError as exc:
        _fail_service(exc)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    _print_metrics(summary)
    console.print(
        f"model [bold]{summary['model_name']}[/] v{summary['model_version']} "
        f"({'champion' if summary['promoted'] else 'challenger'}): {summary['promotion_reason']}"
    )
    if summary.get("simple_model_wins"):
        console.print(f"[bold]the simple model wins and ships:[/] {summary['chosen_model']}")
    console.print(f"model choice: {summary['choice_reason']}", soft_wrap=True)
    console.print(f"ECE {summary['ece_before_calibration']:.4f} → "
                  f"{summary['ece_after_calibration']:.4f} after calibration "
                  f"({summary['calibration_selection']})", soft_wrap=True)
    console.print(f"embargo: {summary['embargo_days']:g} days (the conversion window) before "
                  f"the test slice; {summary['embargo_rows_dropped']} leads in the gaps left out")
    if summary["tuning_workers"] > 1:
        console.print(f"tuning: {summary['trials_complete']} trials complete in study "
                      f"{summary['study_name']} by {summary['tuning_workers']} processes")
    console.print(f"report: {summary['report_path']}")


def score_command(
    workdir: WorkdirOption = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="First creation date/time to score (ISO; UTC if no zone).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="Score leads created before this date/time (ISO; exclusive).")] = None,
) -> None:
    """Score a period's leads with the champion and publish the predictive tags to Feast."""
    from training.score import score_leads

    settings = settings_for(workdir)
    try:
        with console.status("[bold]scoring leads[/] …"):
            summary = score_leads(settings, since=since, until=until)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    console.print_json(json.dumps(summary.to_dict()))


def _list_option(values: Sequence[str] | None) -> list[str]:
    """Option values, also accepting comma-separated lists (``--drop a,b``)."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def train_csv_command(
    csv_path: Path, label: str, report: Path, id_col: str | None = None,
    time_col: str | None = None, drop: list[str] | None = None, allow: list[str] | None = None,
    guard_threshold: float = 0.90, trials: int = 30, timeout: float | None = None,
    workdir: Path | None = None, encoding: str | None = None, order_is_time: bool = False,
    random_check: bool = True, storage: str | None = None, workers: int | None = None,
) -> int:
    """``train --csv``: train and evaluate on a flat CRM export with a progress bar; write the
    report; return the exit code (2 on bad input — a damaged or undecodable file included —
    with the error printed on one line)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from training.csv_train import CsvSpeed, CsvTrainingError, train_csv

    settings = settings_for(workdir)
    report_path = Path(report)
    try:
        with Progress(
            TextColumn("[bold]train --csv[/]"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=err_console, transient=True,
        ) as bar:
            task = bar.add_task("reading", total=100)

            def advance(step: str, fraction: float) -> None:
                bar.update(task, completed=100 * fraction, description=escape(step))

            result = train_csv(
                csv_path, label, id_col=id_col, time_col=time_col, drop=_list_option(drop),
                allow=_list_option(allow), guard_threshold=guard_threshold, n_trials=trials,
                timeout=timeout, settings=settings,
                plots_dir=report_path.parent / f"{report_path.stem}_plots", progress=advance,
                encoding=encoding, order_is_time=order_is_time, random_check=random_check,
                storage=storage, speed=CsvSpeed(workers=workers),
            )
    except CsvTrainingError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=2))
    _print_csv_result(result, report_path)
    return 0


def _print_csv_result(result: dict, report_path: Path) -> None:
    evaluation = result["evaluation"]
    title = {"cross-validation": "random 5-fold cross-validation (out-of-fold)",
             "time": "forward in time (newest 20% of the rows)",
             "order": "forward in row order (newest 20% of the rows)"}[evaluation["mode"]]
    table = Table(title=title, title_justify="left")
    for column in ("model", "roc_auc", "pr_auc", "log_loss", "ece"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, values in result["comparison"].items():
        table.add_row(name, *(f"{values[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss",
                                                           "ece")))
    console.print(table)
    agreement = evaluation.get("agreement")
    if agreement:
        by_model = agreement["auc_by_model_on_forward_test_rows"]
        console.print("AUC on the newest rows, random k-fold vs forward: " + ", ".join(
            f"{name} {v['random']:.3f} vs {v['forward']:.3f}" for name, v in by_model.items()),
            soft_wrap=True)
    choice = result.get("model_choice", {})
    if choice:
        console.print(("[bold]" if choice["simple_model_wins"] else "") + "model choice: "
                      + ("[/]" if choice["simple_model_wins"] else "")
                      + escape(choice["statement"]), soft_wrap=True)
    calibration = result["calibration"]
    console.print(f"calibration: {', '.join(calibration['methods'])} "
                  f"(ECE {calibration['ece_before']:.4f} → {calibration['ece_after']:.4f})")
    dropped = result["guard"]["dropped"]
    console.print(f"guard dropped: {escape(', '.join(dropped)) if dropped else 'nothing'}",
                  soft_wrap=True)
    for note in result.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(note)}", soft_wrap=True)
    console.print(f"report: {report_path}")
