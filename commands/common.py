"""Shared pieces of the Typer commands: the ``--workdir`` option and error reporting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from leadscore.config import ConfigError, Settings, get_settings

console = Console()
err_console = Console(stderr=True)

WorkdirOption = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        help="Folder holding all state (data, feature_repo/data, mlruns, reports). "
        "Default: the project folder, or LEADSCORE_WORKDIR.",
        file_okay=False,
        dir_okay=True,
    ),
]


def settings_for(
    workdir: Path | None, services: tuple[str, ...] = ("postgres", "redis")
) -> Settings:
    """Settings rooted at ``workdir``; exported to the environment so subprocesses agree.

    In the production profile the named ``services`` are checked first (missing databases are
    created), so a command fails with one clear line before doing any work when one is down.
    """
    from leadscore.profiles import require_services

    try:
        if workdir is not None:
            os.environ["LEADSCORE_WORKDIR"] = str(Path(workdir).expanduser().resolve())
            get_settings.cache_clear()
        settings = get_settings()
        require_services(settings, services)
    except (ConfigError, ConnectionError) as exc:
        fail(str(exc))
    settings.ensure_dirs()
    return settings


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no stack trace) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
