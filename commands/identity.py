"""Typer commands ``leadscore identity`` (One ID) and ``leadscore ingest`` (raw exports).

Plain functions; ``commands.main`` registers them with ``app.command(...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from commands.common import WorkdirOption, console, fail, settings_for
from crm_data.identity import resolve_identities
from crm_data.ingest import ingest_batch
from crm_data.validation import ValidationError, load_raw_tables


def _summary_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def identity_command(
    workdir: WorkdirOption = None,
    truth: Annotated[
        bool,
        typer.Option("--truth/--no-truth",
                     help="Report pairwise precision/recall against the generator's "
                     "truth/leads_truth.parquet when it exists."),
    ] = True,
) -> None:
    """Resolve leads into persons (One ID) and update the identity state."""
    settings = settings_for(workdir, services=())
    try:
        tables = load_raw_tables(settings.raw_dir, tables=("leads", "identities"))
    except (FileNotFoundError, ValidationError) as exc:
        fail(str(exc))
    truth_path = settings.truth_dir / "leads_truth.parquet"
    truth_frame = None
    if truth and truth_path.is_file():
        truth_frame = pd.read_parquet(truth_path, columns=["lead_id", "true_person_id"])
    try:
        with console.status("resolving identities…"):
            result = resolve_identities(tables["identities"], tables["leads"],
                                        settings.identity_dir, truth=truth_frame)
    except ValueError as exc:
        fail(str(exc))
    rows: list[tuple[str, object]] = [
        ("leads given", result.leads), ("already resolved", result.known),
        ("new persons", result.new), ("leads joining a known person", result.joined),
        ("persons merged", result.merged), ("leads without usable identifier",
                                            result.no_identifier),
        ("identifier rows rejected", result.rejected),
    ]
    rows += [(f"  rejected: {reason}", n) for reason, n in result.rejected_reasons.items()]
    rows += [("persons (total)", result.persons), ("leads (total)", result.resolved_leads),
             ("largest person (leads)", result.largest_person)]
    if result.precision is not None:
        rows += [("pairwise precision", result.precision), ("pairwise recall", result.recall),
                 ("truth's largest person (leads)", result.true_largest_person)]
    elif truth:
        rows += [("precision/recall", f"no truth file at {truth_path}")]
    rows += [("seconds", f"{result.seconds:.2f}")]
    console.print(_summary_table("One ID", rows))
    console.print(f"state written to {settings.identity_dir}")


def ingest_command(
    source: Annotated[
        Path,
        typer.Option("--from", help="Folder of CRM exports named after the tables "
                     "(leads.csv, identities.parquet, …).", file_okay=False, dir_okay=True),
    ],
    workdir: WorkdirOption = None,
    encoding: Annotated[
        str | None,
        typer.Option("--encoding", help="Text encoding of the CSV files (a Python codec name, "
                     "e.g. gbk, gb18030, cp1252). Default: UTF-8, read strictly."),
    ] = None,
) -> None:
    """Validate a batch of CRM exports and append it to the raw tables (all or nothing).

    Exit 0 appended; 2 the batch was refused (a damaged or undecodable file, a validation
    problem; each named by file, line and column, never by value) and nothing stored changed;
    4 the raw tables could not be written (read-only folder, full disk).
    """
    settings = settings_for(workdir, services=())
    try:
        with console.status("validating and appending the batch…"):
            result = ingest_batch(source, settings.raw_dir, settings.hash_salt,
                                  encoding=encoding)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        fail(f"batch refused, nothing stored changed:\n{exc}")
    except OSError as exc:
        fail(f"cannot write the raw tables in {settings.raw_dir}: "
             f"{exc.strerror or type(exc).__name__}; nothing stored changed", code=4)
    rows: list[tuple[str, object]] = [
        (f"{name}: rows appended", n) for name, n in result.appended.items()
    ]
    rows += [(f"{name}: identical rows already stored", n)
             for name, n in result.skipped_identical.items() if n]
    rows += [("identifiers hashed", result.identifiers_hashed)]
    rows += [(f"identifier rejected: {reason}", n)
             for reason, n in result.identifiers_rejected.items()]
    rows += [(f"{name}: columns dropped", ", ".join(cols))
             for name, cols in result.dropped_columns.items()]
    console.print(_summary_table(f"Ingested {source}", rows))
