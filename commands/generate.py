"""Typer command ``leadscore generate``: write a synthetic CRM history (raw tables + truth).

A plain function; ``commands.main`` registers it with ``app.command("generate")(generate)``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from commands.common import WorkdirOption, console, fail, settings_for
from crm_data.generate import DEFAULT_START, data_end_is_future, generate_crm

STAGES = ("persons and leads", "behaviour events", "conversion mechanism", "identifier hashing",
          "tables", "writing parquet")


def _parse_start(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--start: {value!r} is not a date in YYYY-MM-DD form")
        raise  # unreachable: fail() exits


def generate(
    workdir: WorkdirOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", file_okay=False, dir_okay=True,
                     help="Folder receiving raw/ and truth/. Default: the work folder's data/."),
    ] = None,
    leads: Annotated[int, typer.Option("--leads", help="Number of leads to generate.")] = 20_000,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed. Default: the settings' seed.")
    ] = None,
    start: Annotated[
        str, typer.Option("--start", help="First day of the period (YYYY-MM-DD, UTC).")
    ] = DEFAULT_START.isoformat(),
    days: Annotated[int, typer.Option("--days", help="Length of the period in days.")] = 150,
    drift: Annotated[
        bool,
        typer.Option("--drift/--no-drift",
                     help="Shift channel mix and behaviour in the last third of the period."),
    ] = False,
) -> None:
    """Generate a synthetic CRM history: leads, identities, events, orders, outcomes, truth."""
    settings = settings_for(workdir, services=())
    first_day = _parse_start(start)
    if leads < 1:
        fail(f"--leads: must be a positive number of leads, got {leads}")
    if days < 1:
        fail(f"--days: must be a positive number of days, got {days}")
    if seed is not None and seed < 0:
        fail(f"--seed: must not be negative, got {seed}")
    out_dir = (out.expanduser().resolve() if out else settings.data_dir)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    try:
        with progress:
            task = progress.add_task("generating", total=len(STAGES))

            def on_stage(stage: str) -> None:
                done = STAGES.index(stage) if stage in STAGES else 0
                progress.update(task, completed=done, description=stage)

            summary = generate_crm(
                out_dir, n_leads=leads, seed=settings.seed if seed is None else seed,
                start=first_day, days=days, drift=drift, salt=settings.hash_salt,
                window_days=settings.conversion_window_days, progress=on_stage,
            )
            progress.update(task, completed=len(STAGES))
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write under {out_dir}: {exc.strerror or exc}")

    table = Table(title=f"generated CRM history in {out_dir}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in summary.to_dict().items():
        if key == "unusable_identifiers":
            value = sum(value.values())
            key = "unusable identifiers dropped"
        elif key == "out_dir":
            continue
        table.add_row(key.replace("_", " "), f"{value:.4f}" if isinstance(value, float)
                      else str(value))
    console.print(table)
    if data_end_is_future(summary):
        console.print(f"[yellow]warning:[/] the period plus conversion window ends "
                      f"{summary.data_end}, after today: validation will reject future "
                      "timestamps")
