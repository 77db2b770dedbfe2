"""The weekly report: drift and business figures of a period's logged predictions.

A plain function over a work folder, :func:`run_weekly_report`; ``leadscore drift``
(``commands.drift``) and the main job call it.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_data.prediction_log import PredictionLog, load_outcomes, open_prediction_log
from leadscore.config import Settings
from monitoring.drift import (
    EXIT_DRIFT,
    DriftEnvironmentError,
    DriftInputError,
    drift_report,
    load_reference,
    log_to_mlflow,
    matured_cohort,
    os_problem,
)

if TYPE_CHECKING:
    import pandas as pd

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class Period:
    """A report period ``[since, until)`` in UTC and the name of its folder."""

    label: str
    since: datetime
    until: datetime

    @property
    def length(self) -> timedelta:
        return self.until - self.since


def iso_week(label: str) -> Period:
    """``2026-W47`` → Monday 00:00 UTC of that ISO week to the next Monday."""
    match = _WEEK.match(label.strip())
    if not match:
        raise DriftInputError(f"--week {label!r}: expected an ISO week like 2026-W47")
    year, week = int(match.group(1)), int(match.group(2))
    try:
        monday = date.fromisocalendar(year, week, 1)
    except ValueError:
        raise DriftInputError(f"--week {label!r}: {year} has no ISO week {week}") from None
    since = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return Period(f"{year}-W{week:02d}", since, since + timedelta(days=7))


def last_week(now: datetime | None = None) -> Period:
    """The last complete ISO week before ``now`` (UTC)."""
    year, week, _ = ((now or datetime.now(UTC)) - timedelta(days=7)).isocalendar()
    return iso_week(f"{year}-W{week:02d}")


def _instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DriftInputError(
            f"{option} {text!r}: expected a date (2026-11-16) or ISO datetime"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def custom_period(since: str, until: str) -> Period:
    """``--since/--until`` (dates or ISO datetimes; naive means UTC) as a period."""
    start, end = _instant(since, "--since"), _instant(until, "--until")
    if end <= start:
        raise DriftInputError(f"--until {until!r} must be after --since {since!r}")
    label = f"{start:%Y-%m-%d}_{end:%Y-%m-%d}"
    return Period(label, start, end)


def resolve_period(
    week: str | None, since: str | None, until: str | None, last: bool
) -> Period:
    """Exactly one of ``--week``, ``--since/--until`` or ``--last-week``."""
    chosen = sum([week is not None, since is not None or until is not None, last])
    if chosen != 1:
        raise DriftInputError("give exactly one of --week, --since/--until or --last-week")
    if week is not None:
        return iso_week(week)
    if last:
        return last_week()
    if since is None or until is None:
        raise DriftInputError("--since and --until go together")
    return custom_period(since, until)


@dataclass
class WeeklyReport:
    """What one run wrote and the exit code it calls for."""

    period: Period
    folder: Path
    exit_code: int
    drift: dict[str, Any]
    business: dict[str, Any]
    index_path: Path
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def retier_reference(
    reference: pd.DataFrame, current: pd.DataFrame, settings: Settings
) -> tuple[pd.DataFrame, str | None]:
    """The reference's tiers under the routing policy the period was served with.

    The reference was tiered with the cut-offs known at training time; an optimised policy
    moves them, which would read as tier drift although no lead changed. When the active
    policy's version is the one most of the period's predictions carry, its cut-offs re-tier
    the reference probabilities; otherwise the reference keeps its own tiers and a note says so.
    """
    from routing.policy import PolicyError, resolve_active_policy

    if "policy_version" not in current.columns or current.empty:
        return reference, None
    served = str(current["policy_version"].astype(str).value_counts().idxmax())
    try:
        policy = resolve_active_policy(settings).policy
    except PolicyError as exc:
        return reference, f"reference tiers kept: {exc}"
    if policy.version != served:
        return reference, (f"reference tiers kept: the period was served with policy {served}, "
                           f"the active policy is {policy.version}")
    tiers, _ = policy.assign(reference["probability"].to_numpy(dtype=float))
    return reference.assign(tier=tiers), None


def default_drift_root(settings: Settings) -> Path:
    return settings.reports_dir / "drift"


def run_weekly_report(
    settings: Settings,
    period: Period,
    out_root: Path | None = None,
    log: PredictionLog | None = None,
    log_mlflow: bool = True,
) -> WeeklyReport:
    """Read the log, write drift + business reports into ``out_root/<label>/``, update the index.

    Raises :class:`DriftInputError` for a missing reference or an empty period, and
    :class:`DriftEnvironmentError` when the report folder, the prediction log or MLflow cannot
    be written or opened (a read-only or full disk) — the folder checked before any work.
    """
    reference, info = load_reference(settings)
    threshold = float(settings.drift_share_threshold)
    if not 0.0 < threshold <= 1.0:
        raise DriftInputError(
            f"config field 'drift_share_threshold': {threshold} must lie in (0, 1]"
        )
    window = timedelta(days=settings.conversion_window_days)
    root = out_root or default_drift_root(settings)
    folder = root / period.label
    _check_writable(root)
    owns_log = log is None
    if log is None:
        try:
            log = open_prediction_log(settings)
        except (OSError, sqlite3.OperationalError) as exc:  # the disk, not the log's content
            raise DriftEnvironmentError(
                f"cannot open the prediction log: {os_problem(exc)} (SQLite writes a journal "
                "beside the log: is the work folder's disk full or read-only?)") from None
        except Exception as exc:  # a missing server or a corrupt file: say which, no trace
            raise DriftInputError(f"cannot open the prediction log: {exc}") from None
    try:
        current = log.read(period.since, period.until)
        if current.empty:
            raise DriftInputError(
                f"no predictions logged between {period.since:%Y-%m-%d %H:%M} and "
                f"{period.until:%Y-%m-%d %H:%M} UTC ({period.label}): nothing to report"
            )
        previous = log.read(period.since - period.length, period.since)
        maturing = log.read(period.since - window, period.until - window)
        from monitoring.routing_offpolicy import read_routing_rows

        routing_rows = read_routing_rows(log, period.since, period.until, window)
    finally:
        if owns_log:
            log.close()

    notes = []
    reference, tier_note = retier_reference(reference, current, settings)
    if tier_note:
        notes.append(tier_note)
    outcomes = load_outcomes(settings)
    if outcomes is None:
        notes.append("no outcomes table yet (data/raw/outcomes.parquet): cohort quality skipped")
    elif maturing.empty:
        notes.append(
            f"no logged lead's {settings.conversion_window_days}-day outcome window closed in "
            "this period: cohort quality skipped"
        )
    try:
        return _write_reports(settings, period, root, folder, reference, info, current,
                              previous, maturing, outcomes, threshold, notes, log_mlflow,
                              routing_rows)
    except OSError as exc:
        raise DriftEnvironmentError(
            f"cannot write the report in {folder}: {os_problem(exc)}") from None


def _lead_state_section(settings: Settings, period: Period, outcomes: pd.DataFrame | None,
                        folder: Path, notes: list[str], summarise: Any, file_name: str,
                        what: str, note_without_state: str | None) -> dict[str, Any] | None:
    """``summarise(store, outcomes, since, until, window_days)`` over the service's lead state,
    written to ``<folder>/<file_name>``; None (and a note) without a readable lead state."""
    import json

    from crm_data.lead_state import open_lead_state

    if settings.profile != "production" and not settings.lead_state_path.exists():
        if note_without_state:
            notes.append(note_without_state)
        return None
    try:
        with open_lead_state(settings) as store:
            summary = summarise(store, outcomes, period.since, period.until,
                                settings.conversion_window_days)
    except Exception as exc:  # noqa: BLE001 - a missing figure must not stop the drift report
        notes.append(f"{what} skipped: the lead state could not be read "
                     f"({type(exc).__name__})")
        return None
    (folder / file_name).write_text(json.dumps(summary, indent=2))
    return summary


def nurturing_section(settings: Settings, period: Period, outcomes: pd.DataFrame | None,
                      folder: Path, notes: list[str]) -> dict[str, Any] | None:
    """The nurturing figures (``monitoring.nurturing``) from the service's lead state, written
    to ``<folder>/nurturing.json``; None (and a note) when there is no lead state."""
    from monitoring.nurturing import nurturing_summary

    return _lead_state_section(
        settings, period, outcomes, folder, notes, nurturing_summary, "nurturing.json",
        "nurturing figures",
        "no lead state yet (the service has not scored a lead): nurturing figures skipped")


def stage_auc_section(settings: Settings, period: Period, outcomes: pd.DataFrame | None,
                      folder: Path, notes: list[str]) -> dict[str, Any] | None:
    """The matured leads' served AUC at submission and after each funnel step
    (``monitoring.stage_auc``), written to ``<folder>/auc_by_stage.json``; None (and a note)
    without a lead state."""
    from monitoring.stage_auc import stage_auc_summary

    return _lead_state_section(settings, period, outcomes, folder, notes, stage_auc_summary,
                               "auc_by_stage.json", "AUC by funnel stage", None)


def _check_writable(folder: Path) -> None:
    """Fail fast, before reading or measuring anything, when ``folder`` cannot be written
    (a read-only folder or file system, missing permissions, no inode or byte left)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise DriftEnvironmentError(
            f"cannot write the report folder {folder}: {os_problem(exc)}") from None


def _write_reports(
    settings: Settings, period: Period, root: Path, folder: Path, reference: pd.DataFrame,
    info: Any, current: pd.DataFrame, previous: pd.DataFrame, maturing: pd.DataFrame,
    outcomes: pd.DataFrame | None, threshold: float, notes: list[str], log_mlflow: bool,
    routing_rows: Any = None,
) -> WeeklyReport:
    from monitoring.business import business_report
    from monitoring.index_page import write_index

    result = drift_report(
        current, reference, info.feature_columns, info.categorical_columns, outcomes, folder,
        threshold, cohort_predictions=maturing, since=period.since, until=period.until,
        week=period.label, model={"name": info.model_name, "version": info.model_version},
        conversion_window_days=settings.conversion_window_days,
    )
    cohort = matured_cohort(maturing, outcomes, period.until, settings.conversion_window_days)
    header = {"week": period.label, "since": period.since.isoformat(),
              "until": period.until.isoformat()}
    business = business_report(current, previous, cohort, folder, settings, header)
    business["nurturing"] = nurturing_section(settings, period, outcomes, folder, notes)
    business["auc_by_stage"] = stage_auc_section(settings, period, outcomes, folder, notes)
    from monitoring.routing_offpolicy import routing_section

    business["routing"] = routing_section(settings, cohort, folder, notes, routing_rows,
                                          outcomes, period.until, period.label)
    index_path = (settings.reports_dir / "index.html" if root == default_drift_root(settings)
                  else root / "index.html")
    write_index(root, index_path)
    run_id = None
    if log_mlflow:
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        files = [folder / name for name in ("drift.json", "drift.html", "business.json",
                                            "business.png", "cohort.html", "routing.json",
                                            "routing.html", "routing.png", "nurturing.json",
                                            "auc_by_stage.json")]
        try:
            run_id = log_to_mlflow(settings, period.label, result.summary, files)
        except (OSError, sqlite3.Error, SQLAlchemyError, MlflowException) as exc:
            verdict = "drift detected" if result.exit_code == EXIT_DRIFT else "no drift"
            problem = os_problem(exc).splitlines()[0]
            raise DriftEnvironmentError(
                f"the report is written in {folder} ({verdict}), but recording it in MLflow "
                f"failed: {problem}") from None
    return WeeklyReport(period, folder, result.exit_code, result.summary, business, index_path,
                        run_id, notes)
