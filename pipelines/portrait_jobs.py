"""Portrait and audience jobs as plain functions (the ``leadscore portrait``, ``audience``,
``access-log`` and ``agent-token`` commands call them; so can a scheduler).

* ``build_store`` — the person store (``features.portrait_store``), and in the production
  profile its persons and events copied into PostgreSQL (schema ``audience``);
* ``assign_from_file`` — an ingestable assignments table into the workspace;
* ``count_audience`` / ``export_audience`` — a tree (or a saved audience) evaluated; the export
  writes person ids and tags (no identifier, masked or not) to CSV or Parquet and is logged;
* ``read_access_log`` — the access log, filtered;
* ``agent_token`` — a signed agent token (for integration tests and support; the CRM mints its
  own with the same secret).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from crm_data.access import AccessEvent, open_workspace, read_assignments_file
from features.audience import AudienceError, check_bounds, compile_members, parse_tree, run_count
from features.portrait_store import (
    PortraitStore,
    build_portrait_store,
    copy_store_to_postgres,
)
from leadscore.config import Settings, production_service_url
from serving.agent_auth import mint_agent_token, token_secret
from serving.auth import resolve_api_key

EXPORT_COLUMNS = ("person_id", "source", "grade", "subject", "city_tier", "funnel_step",
                  "rfm_segment", "fit_score", "interest_score", "rule_score", "probability",
                  "tier", "channel")
EXPORT_FORMATS = (".csv", ".parquet")


@dataclass
class ExportResult:
    path: Path
    rows: int
    audience: str
    as_of: datetime


def build_store(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """Build the person store; in production also load it into PostgreSQL."""
    result = build_portrait_store(settings, now)
    summary: dict[str, Any] = {"path": str(result.path), "persons": result.persons,
                               "events": result.events, "predictions": result.predictions,
                               "masked_identifiers": result.masked_identifiers,
                               "seconds": round(result.seconds, 1)}
    if settings.profile == "production":
        summary["postgres_rows"] = copy_store_to_postgres(
            result.path, production_service_url(settings, "prediction_log"))
    return summary


def assign_from_file(settings: Settings, path: Path, assigned_by: str) -> int:
    """Append the ownership rows of an assignments file; the number added."""
    rows = read_assignments_file(path)
    workspace = open_workspace(settings)
    try:
        added = workspace.assign(rows, assigned_by=assigned_by)
        workspace.log_access(AccessEvent(assigned_by, "admin", None, "assignments_added", "ok",
                                         detail=f"{added} rows from {Path(path).name}"))
    finally:
        workspace.close()
    return added


def load_tree(tree_file: Path | None, audience_id: int | None, settings: Settings
              ) -> tuple[dict, str, int | None]:
    """The request body ``{"tree": …, "as_of"?: …}`` of a tree file or a saved audience, and
    its name."""
    if (tree_file is None) == (audience_id is None):
        raise ValueError("give either --tree FILE or --id AUDIENCE_ID")
    if tree_file is not None:
        try:
            body = json.loads(Path(tree_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"tree file {tree_file} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"tree file {tree_file} is not JSON: {exc}") from None
        if isinstance(body, dict) and "tree" not in body and "type" in body:
            body = {"tree": body}
        return body, Path(tree_file).name, None
    workspace = open_workspace(settings)
    try:
        saved = workspace.audience(audience_id)
    finally:
        workspace.close()
    if saved is None:
        raise ValueError(f"no audience with id {audience_id}")
    return {"tree": saved["tree"]}, f"{saved['name']} v{saved['version']}", audience_id


def count_audience(settings: Settings, body: dict, as_of: datetime | None = None
                   ) -> dict[str, Any]:
    """Total and the counts after each top-level rule (``AudienceError`` names bad nodes)."""
    store = PortraitStore(settings.portrait_store_path)
    try:
        if as_of is not None:
            body = {**body, "as_of": as_of.isoformat()}
        parsed = parse_tree(body)
        when = check_bounds(parsed, store.bounds, store.built_at)
        return run_count(store.cursor(), parsed, when).to_dict()
    finally:
        store.close()


def export_audience(settings: Settings, body: dict, out: Path, operator: str, name: str,
                    audience_id: int | None = None, as_of: datetime | None = None
                    ) -> ExportResult:
    """Write the audience's persons (ids and tags, never an identifier) to ``out`` (.csv or
    .parquet) and log the export."""
    out = Path(out)
    if out.suffix not in EXPORT_FORMATS:
        raise ValueError(f"--out {out.name}: write a .csv or a .parquet file")
    store = PortraitStore(settings.portrait_store_path)
    try:
        if as_of is not None:
            body = {**body, "as_of": as_of.isoformat()}
        parsed = parse_tree(body)
        when = check_bounds(parsed, store.bounds, store.built_at)
        compiled = compile_members(parsed, when)
        columns = ", ".join("p." + c for c in EXPORT_COLUMNS)
        sql = (f"WITH members AS ({compiled.sql}) SELECT {columns}"
               " FROM members m JOIN persons p ON p.person_id = m.person_id "
               "ORDER BY p.person_id")
        frame = store.cursor().execute(sql, compiled.params).df()
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".csv":
        frame.to_csv(temp, index=False)
    else:
        frame.to_parquet(temp, index=False)
    temp.replace(out)
    workspace = open_workspace(settings)
    try:
        workspace.log_access(AccessEvent(operator, "admin", None, "audience_export", "ok",
                                         audience_id=audience_id,
                                         detail=f"{name}: {len(frame)} persons to {out.name}"))
    finally:
        workspace.close()
    return ExportResult(out, len(frame), name, when)


def read_access_log(settings: Settings, **filters: Any) -> pd.DataFrame:
    """Access-log rows, newest first (``crm_data.access.Workspace.read_access`` filters)."""
    workspace = open_workspace(settings)
    try:
        return workspace.read_access(**filters)
    finally:
        workspace.close()


def agent_token(settings: Settings, agent_id: str, role: str, team: str | None,
                hours: float) -> str:
    """A token signed with the service's agent-token secret."""
    if not 0 < hours <= settings.agent_token_max_hours:
        raise ValueError(f"--hours must be in (0, {settings.agent_token_max_hours:g}] "
                         "(agent_token_max_hours)")
    key, _ = resolve_api_key(settings, create=False)
    return mint_agent_token(token_secret(settings.agent_token_secret, key), agent_id, role,
                            team, int(hours * 3600))


__all__ = ["AudienceError", "ExportResult", "agent_token", "assign_from_file", "build_store",
           "count_audience", "export_audience", "load_tree", "read_access_log"]
