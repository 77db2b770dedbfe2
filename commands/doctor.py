"""``leadscore doctor``: check the active profile's backing services and state, say what is wrong.

The checks live in :mod:`leadscore.service_checks`; this module renders them. ``commands.main``
registers :func:`doctor` with ``app.command("doctor")(doctor)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from commands.common import WorkdirOption, console, fail
from leadscore.config import ConfigError, Settings, load_settings
from leadscore.profiles import ensure_databases
from leadscore.service_checks import (
    FAIL,
    MISSING,
    OK,
    SKIPPED,
    TIMEOUT_SECONDS,
    CheckResult,
    run_checks,
)

STATUS_STYLE = {OK: "green", MISSING: "yellow", FAIL: "bold red", SKIPPED: "dim"}


def render(results: list[CheckResult], profile: str) -> Table:
    """A rich table of the results."""
    table = Table(title=f"leadscore doctor — profile {profile}", show_lines=False)
    for column in ("component", "URL", "status", "detail", "hint"):
        table.add_column(column, overflow="fold")
    for r in results:
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(r.component, r.url, f"[{style}]{r.status}[/]", r.detail, r.hint)
    return table


def _settings(workdir: Path | None) -> Settings:
    """Settings like ``settings_for`` but without creating folders (the doctor only looks)."""
    try:
        settings = load_settings()
        return settings if workdir is None else settings.with_workdir(
            Path(workdir).expanduser().resolve())
    except ConfigError as exc:
        fail(f"configuration: {exc}", code=1)
        raise  # unreachable: fail() exits


def doctor(
    workdir: WorkdirOption = None,
    create_databases: Annotated[
        bool,
        typer.Option("--create-databases",
                     help="Production: create the missing PostgreSQL databases first."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check the active profile's services and state; exit 1 when anything is missing or wrong."""
    settings = _settings(workdir)
    if create_databases and settings.profile == "production":
        try:
            created = ensure_databases(settings, connect_timeout=TIMEOUT_SECONDS)
        except (ConnectionError, ConfigError) as exc:
            fail(str(exc), code=1)
        if created and not as_json:
            console.print(f"created database(s): {', '.join(created)}")
    results = run_checks(settings)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        console.print(render(results, settings.profile))
    bad = [r for r in results if not r.ok]
    if bad:
        if not as_json:
            console.print(f"[bold red]{len(bad)} problem(s):[/] "
                          + "; ".join(f"{r.component}: {r.detail}" for r in bad))
        raise typer.Exit(1)
    if not as_json:
        console.print("[green]all checks passed[/]")
