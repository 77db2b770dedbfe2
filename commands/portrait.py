"""Typer commands: ``leadscore portrait build | assign``, ``leadscore audience count | export``,
``leadscore access-log`` and ``leadscore agent-token`` (thin wrappers over
``pipelines.portrait_jobs``)."""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from commands.common import WorkdirOption, console, fail, settings_for
from crm_data.access import ACTIONS, ROLES, WorkspaceError
from features.audience import AudienceError
from features.portrait_store import PortraitStoreError
from pipelines import portrait_jobs

portrait_app = typer.Typer(help="The person store behind portraits and audiences; ownership.",
                           no_args_is_help=True)
audience_app = typer.Typer(help="Audiences: count a condition tree, export its persons.",
                           no_args_is_help=True)

TreeOption = Annotated[Path | None, typer.Option(
    "--tree", help="JSON file with the condition tree ({\"tree\": …} or the tree itself).",
    dir_okay=False)]
IdOption = Annotated[int | None, typer.Option("--id", help="A saved audience's id.", min=1)]
AsOfOption = Annotated[datetime | None, typer.Option(
    "--as-of", help="Evaluate as of this UTC time (default: when the store was built).")]
OperatorOption = Annotated[str, typer.Option(
    "--operator", help="Who runs this (the access log's 'who'; default: the OS user).")]


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


@portrait_app.command("build")
def build_command(workdir: WorkdirOption = None) -> None:
    """Build the person store (tags, masked identifiers, leads, timeline, scores)."""
    settings = settings_for(workdir, services=("postgres",))
    try:
        with console.status("building the person store…"):
            summary = portrait_jobs.build_store(settings)
    except (PortraitStoreError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print_json(json.dumps(summary))


@portrait_app.command("assign")
def assign_command(
    file: Annotated[Path, typer.Argument(help="Assignments table: CSV or Parquet with "
                                        "person_id, agent_id, team [, assigned_at].",
                                        dir_okay=False)],
    workdir: WorkdirOption = None,
    operator: OperatorOption = "",
) -> None:
    """Append ownership rows (who owns whom) from the CRM's assignments table."""
    settings = settings_for(workdir, services=())
    try:
        added = portrait_jobs.assign_from_file(settings, file, operator or getpass.getuser())
    except (WorkspaceError, ValueError) as exc:
        fail(str(exc))
    console.print(f"{added} assignment(s) added")


@audience_app.command("count")
def count_command(tree: TreeOption = None, audience_id: IdOption = None,
                  as_of: AsOfOption = None, workdir: WorkdirOption = None) -> None:
    """Audience size: total and the count after each top-level rule."""
    settings = settings_for(workdir, services=())
    try:
        body, name, _ = portrait_jobs.load_tree(tree, audience_id, settings)
        result = portrait_jobs.count_audience(settings, body, _utc(as_of))
    except (AudienceError, PortraitStoreError, WorkspaceError, ValueError) as exc:
        fail(str(exc))
    table = Table(title=f"{name}: {result['total']:,} of {result['population']:,} persons "
                        f"(as of {result['as_of'][:16]})")
    for column in ("#", "rule", "own count", "after this rule", "change"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for step in result["steps"]:
        table.add_row(str(step["rule"] + 1), step["label"], f"{step['matching']:,}",
                      f"{step['cumulative']:,}", f"{step['change']:+,}")
    console.print(table)


@audience_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Output file: .csv or .parquet.",
                                      dir_okay=False)],
    tree: TreeOption = None, audience_id: IdOption = None, as_of: AsOfOption = None,
    operator: OperatorOption = "", workdir: WorkdirOption = None,
) -> None:
    """Write an audience's persons (ids and tags; no identifier) to CSV or Parquet; logged."""
    settings = settings_for(workdir, services=())
    try:
        body, name, saved_id = portrait_jobs.load_tree(tree, audience_id, settings)
        result = portrait_jobs.export_audience(settings, body, out,
                                               operator or getpass.getuser(), name, saved_id,
                                               _utc(as_of))
    except (AudienceError, PortraitStoreError, WorkspaceError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}", code=4)
    console.print(f"{result.rows:,} persons of {result.audience} (as of "
                  f"{result.as_of:%Y-%m-%d %H:%M} UTC) written to {result.path}")


def access_log_command(
    since: Annotated[datetime | None, typer.Option(help="From this UTC time.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this UTC time.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's accesses.")] = None,
    person: Annotated[str | None, typer.Option(help="Only accesses to this person id.")] = None,
    action: Annotated[str | None, typer.Option(
        help=f"Only this action: {', '.join(ACTIONS)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="Rows at most.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")
                       ] = False,
    workdir: WorkdirOption = None,
) -> None:
    """Who looked at whom, when, and what (portrait reads and refusals, member pages,
    exports), newest first."""
    if action is not None and action not in ACTIONS:
        raise typer.BadParameter(f"{action!r} is not one of {', '.join(ACTIONS)}",
                                 param_hint="--action")
    settings = settings_for(workdir, services=())
    try:
        frame = portrait_jobs.read_access_log(settings, since=_utc(since), until=_utc(until),
                                              agent_id=agent, person_id=person, action=action,
                                              limit=limit)
    except WorkspaceError as exc:
        fail(str(exc))
    if as_json:
        for row in frame.to_dict(orient="records"):
            row["at"] = row["at"].isoformat()
            typer.echo(json.dumps({k: (None if v != v else v) for k, v in row.items()},
                                  default=str))
        return
    table = Table(title=f"access log: {len(frame)} row(s), newest first")
    for column in ("at", "agent_id", "role", "team", "action", "person_id", "audience_id",
                   "outcome", "detail"):
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(f"{row.at:%Y-%m-%d %H:%M:%S}", row.agent_id, row.role, row.team or "",
                      row.action, row.person_id or "",
                      "" if row.audience_id is None or row.audience_id != row.audience_id
                      else str(int(row.audience_id)), row.outcome, row.detail or "")
    console.print(table)


def agent_token_command(
    agent: Annotated[str, typer.Option(help="Employee id (token 'sub', the watermark).")],
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")] = "agent",
    team: Annotated[str | None, typer.Option(help="The employee's team.")] = None,
    hours: Annotated[float, typer.Option(help="Lifetime in hours.")] = 8.0,
    workdir: WorkdirOption = None,
) -> None:
    """Print a signed agent token (what the CRM sends as 'Authorization: Bearer …')."""
    if role not in ROLES:
        raise typer.BadParameter(f"{role!r} is not one of {', '.join(ROLES)}",
                                 param_hint="--role")
    settings = settings_for(workdir, services=())
    try:
        typer.echo(portrait_jobs.agent_token(settings, agent, role, team, hours))
    except ValueError as exc:
        fail(str(exc))
    except RuntimeError as exc:  # no API key configured (MissingApiKeyError)
        fail(str(exc))
