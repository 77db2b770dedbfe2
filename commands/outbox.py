"""``leadscore outbox status | retry | purge-delivered``: operate the CRM webhook's outbox.

Thin commands over :class:`crm_data.lead_state.LeadStateStore` (SQLite in the work folder, or
PostgreSQL in the production profile). The running service delivers; these commands only read
and change the outbox rows, so they are safe while it runs.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from commands.common import WorkdirOption, console, fail, settings_for

app = typer.Typer(help="The CRM webhook's outbox: status, retry dead messages, purge.",
                  no_args_is_help=True)


def _store(workdir: object):  # noqa: ANN202 - a LeadStateStore
    from crm_data.lead_state import open_lead_state

    settings = settings_for(workdir, services=("postgres",))
    if settings.profile != "production" and not settings.lead_state_path.exists():
        fail(f"no lead state in {settings.workdir}: the service has not scored a lead there")
    try:
        return open_lead_state(settings)
    except Exception as exc:  # noqa: BLE001 - a locked or unreadable store: say which
        fail(f"cannot open the lead state: {type(exc).__name__}: {exc}")


@app.command("status")
def status(
    workdir: WorkdirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Messages by status (pending, delivered, dead), the oldest pending one's age, the last
    errors, and the leads by status."""
    with _store(workdir) as store:
        summary = store.outbox_status() | {"leads": store.status_counts(),
                                           "rescore_queue": store.queue_length()}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    counts = summary["counts"]
    console.print(f"outbox: {counts['pending']} pending, {counts['delivered']} delivered, "
                  f"{counts['dead']} dead")
    age = summary["oldest_pending_age_seconds"]
    if age is not None:
        console.print(f"oldest pending: {age:.1f} s")
    for error, n in summary["last_errors"].items():
        console.print(f"  {n} × {error}")
    console.print("leads: " + ", ".join(f"{n} {s}" for s, n in summary["leads"].items())
                  + f"; re-scores queued: {summary['rescore_queue']}")


@app.command("retry")
def retry(
    workdir: WorkdirOption = None,
    lead_id: Annotated[str | None, typer.Option(help="Only this lead's dead messages.")] = None,
) -> None:
    """Put dead messages back to pending (attempts reset, due now): the running service sends
    them again."""
    with _store(workdir) as store:
        n = store.retry_dead(lead_id)
    console.print(f"{n} dead message(s) back to pending")


@app.command("purge-delivered")
def purge_delivered(
    workdir: WorkdirOption = None,
    older_than_days: Annotated[float, typer.Option(
        min=0, help="Delete delivered messages older than this many days.")] = 30.0,
) -> None:
    """Delete delivered messages (pending and dead ones are never deleted)."""
    from crm_data.lead_state import DAY_US, now_us

    with _store(workdir) as store:
        n = store.purge_delivered(now_us() - int(older_than_days * DAY_US))
    console.print(f"{n} delivered message(s) deleted")
