"""Shared pieces of the Typer commands: the ``--workdir`` option and error reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from leadscore.config import ConfigError, Settings, get_settings, load_settings

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
    """Settings rooted at ``workdir`` (passed on explicitly: nothing is written to the
    environment; a service process gets its own, ``serving.launcher.service_env``).

    In the production profile the named ``services`` are checked first (missing databases are
    created), so a command fails with one clear line before doing any work when one is down.
    """
    from leadscore.profiles import require_services

    try:
        settings = get_settings() if workdir is None else load_settings().with_workdir(
            Path(workdir).expanduser().resolve())
        require_services(settings, services)
    except (ConfigError, ConnectionError) as exc:
        fail(str(exc))
    settings.ensure_dirs()
    return settings


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no stack trace; lines never wrapped, brackets shown as written) and
    exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)
