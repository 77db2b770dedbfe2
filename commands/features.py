"""``leadscore features …``: build the offline tables, load the online store, make a training set.

Wire into the main CLI with ``app.add_typer(features_app, name="features")``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from commands.common import WorkdirOption, console, fail, settings_for

features_app = typer.Typer(
    name="features",
    help="Feature store: fact, behaviour, RFM and 2-D score tags in Feast; training sets.",
    no_args_is_help=True,
)


def _parse_end(end: str | None) -> datetime | None:
    if end is None:
        return None
    try:
        parsed = datetime.fromisoformat(end)
    except ValueError:
        fail(f"--end: {end!r} is not an ISO timestamp (e.g. 2026-06-30T23:59:59+00:00)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@features_app.command("build")
def build_command(workdir: WorkdirOption = None) -> None:
    """Compute the offline feature tables from the raw data and One ID; register them in Feast."""
    from features.build import build_features

    settings = settings_for(workdir)
    try:
        with console.status("[bold]building feature tables[/] …"):
            summary = build_features(settings)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print_json(json.dumps(summary.to_dict()))


@features_app.command("materialize")
def materialize_command(
    workdir: WorkdirOption = None,
    end: Annotated[str | None, typer.Option(
        "--end", help="Load snapshots up to this ISO timestamp (UTC if no zone); default now.")
    ] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Reload every snapshot, overwriting what the online store holds "
        "(rows the service recorded since the build included), then mark the store loaded. "
        "A run that finds the store lost its data (e.g. Redis restarted without persistence) "
        "does this by itself.")] = False,
) -> None:
    """Load the online store incrementally up to --end (--full, or a store that lost its
    data: everything again; the service answers degraded until the load has finished)."""
    from features.build import materialize

    settings = settings_for(workdir)
    try:
        with console.status("[bold]materializing[/] …"):
            report = materialize(settings, end=_parse_end(end), full=full)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print_json(json.dumps(report, default=str))


@features_app.command("training-set")
def training_set_command(
    workdir: WorkdirOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output Parquet file (default: <workdir>/data/training_set.parquet).",
        dir_okay=False)] = None,
) -> None:
    """Point-in-time training set: one row per lead at its created_at, with its label."""
    from features.training_set import build_training_set

    settings = settings_for(workdir)
    try:
        with console.status("[bold]building training set[/] …"):
            frame = build_training_set(settings, out=out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print_json(json.dumps(frame.attrs["summary"], default=str))
