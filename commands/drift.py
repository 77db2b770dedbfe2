"""``leadscore drift``: the weekly drift and business report from the prediction log.

Exit codes (for a weekly cron job): 0 quiet; 3 drift (drift share >= threshold);
2 bad input or missing data (bad period, empty period, no reference model, a production
service down); 4 the report cannot be written or the log opened (read-only or full disk).
Every failure is one line on stderr, never a traceback.
A thin command over :func:`pipelines.weekly_report.run_weekly_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from commands.common import WorkdirOption, console, fail, settings_for
from monitoring.drift import (
    EXIT_BAD_INPUT,
    EXIT_DRIFT,
    EXIT_ENVIRONMENT,
    EXIT_QUIET,
    DriftEnvironmentError,
    DriftInputError,
    os_problem,
)
from pipelines.weekly_report import WeeklyReport, resolve_period, run_weekly_report


def _print_summary(report: WeeklyReport) -> None:
    from rich.table import Table

    d, b = report.drift, report.business
    table = Table(title=f"drift report {report.period.label}", show_header=False,
                  title_justify="left")
    table.add_row("predictions", str(d["n_current"]))
    table.add_row("drift share", f"{d['drift_share']:.3f} (threshold {d['threshold']})")
    table.add_row("drifted columns", ", ".join(c["column"] for c in d["drifted_columns"]) or "–")
    pd_ = d["prediction_drift"]
    table.add_row("probability drift", f"{pd_['probability']['score']:.3f} "
                  f"({pd_['probability']['method']}, drifted={pd_['probability']['drifted']})")
    cohort = d["cohort"]
    if cohort:
        auc = "–" if cohort["auc"] is None else f"{cohort['auc']:.3f}"
        ece = "–" if cohort["ece"] is None else f"{cohort['ece']:.3f}"
        table.add_row("cohort", f"n={cohort['n']} AUC={auc} ECE={ece}")
    lvr = b["lvr"]["lvr_percent"]
    table.add_row("LVR", "–" if lvr is None else f"{lvr:+.1f}%")
    table.add_row("folder", str(report.folder))
    table.add_row("index", str(report.index_path))
    if report.mlflow_run_id:
        table.add_row("MLflow run", report.mlflow_run_id)
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.exit_code == EXIT_DRIFT:
        console.print("[bold red]drift detected[/] (exit 3)")


def drift(
    week: Annotated[str | None, typer.Option(
        "--week", help="ISO week to report, e.g. 2026-W47 (Monday 00:00 UTC, 7 days).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Start of a custom period (date or ISO datetime, UTC).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="End (exclusive) of a custom period.")] = None,
    last: Annotated[bool, typer.Option(
        "--last-week", help="The last complete ISO week.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the dated report folders (default: reports/drift).",
        file_okay=False)] = None,
    workdir: WorkdirOption = None,
) -> None:
    """Weekly drift + business report of the logged predictions against the champion.

    Exit 0 quiet, 3 drift (drift share >= drift_share_threshold), 2 bad input or missing data,
    4 the report cannot be written or the prediction log opened (read-only or full disk).
    """
    try:
        settings = settings_for(workdir)
    except OSError as exc:  # the work folder's own folders cannot be made
        fail(f"cannot prepare the work folder: {os_problem(exc)}", code=EXIT_ENVIRONMENT)
    try:
        period = resolve_period(week, since, until, last)
        with console.status(f"building the {period.label} report…"):
            report = run_weekly_report(settings, period, out.resolve() if out else None)
    except DriftEnvironmentError as exc:
        fail(str(exc), code=EXIT_ENVIRONMENT)
    except (DriftInputError, FileNotFoundError, ValueError) as exc:
        fail(str(exc), code=EXIT_BAD_INPUT)
    except OSError as exc:  # any other failure of the disk: still one line and exit 4
        fail(f"cannot make the report: {os_problem(exc)}", code=EXIT_ENVIRONMENT)
    _print_summary(report)
    if report.exit_code != EXIT_QUIET:
        raise typer.Exit(report.exit_code)
