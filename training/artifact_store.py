"""A relocatable work folder: the embedded MLflow store rebased onto the folder it is opened in.

MLflow records absolute artifact locations (an experiment's, each run's, each logged model's and
model version's) and resolves a relative one against the current folder when it is created, so a
copied or moved work folder would log new runs into — and load its champion from — the original.
Its proxied ``mlflow-artifacts:`` URIs need a tracking server, which the embedded profile has not.
So the store is rewritten on open, as MLflow's own ``mlflow db move-resources`` retargets
experiment roots: ``relocate_artifact_store`` (called by ``training.registry.point_mlflow_at``,
through which every MLflow use of the product goes) rewrites every URI under another folder's
``…/mlruns/artifacts`` under this one's, in one SQLite transaction. Artifacts themselves are not
touched: they were copied with the folder.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from leadscore.config import Settings

# (table, column) of the embedded store holding artifact URIs
ARTIFACT_URI_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)
_DEFAULT_EXPERIMENT_SUFFIX = "/mlruns/0"


def embedded_store(settings: Settings) -> Path | None:
    """The SQLite file of the embedded MLflow store, or None when the store is elsewhere
    (a tracking URI or an artifact root configured) or not created yet."""
    db = settings.mlruns_dir / "mlflow.db"
    if settings.artifact_root is not None or not db.is_file() or (
            settings.tracking_uri != f"sqlite:///{db}"):
        return None
    return db


def relocate_artifact_store(settings: Settings) -> int:
    """Rebase the embedded store onto ``settings.workdir``; the number of rows rewritten (0 when
    nothing points elsewhere — the common case costs one small query).

    Rewritten: URIs under another root ``file://…/mlruns/artifacts`` its experiments were created
    with, and the Default experiment's location when MLflow put it under the folder the store
    was first opened from. A store that cannot be written raises ``RuntimeError`` naming it.
    """
    db = embedded_store(settings)
    if db is None:
        return 0
    new_root = settings.artifact_location
    suffix = "/" + "/".join(Path(new_root.removeprefix("file://")).parts[-2:])
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
            if not foreign_roots(conn, new_root, suffix):
                return 0
            conn.execute("BEGIN IMMEDIATE")  # re-read under the write lock, then rewrite
            try:
                changed = _rebase(conn, foreign_roots(conn, new_root, suffix), new_root)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return changed
    except sqlite3.Error as exc:
        raise RuntimeError(
            f"the MLflow store {db} was moved or copied from another work folder and its "
            f"artifact locations cannot be updated ({exc}); make it writable and run the "
            "command again") from None


def foreign_roots(conn: sqlite3.Connection, new_root: str, suffix: str) -> list[str]:
    """Artifact roots of the store's experiments that are not ``new_root``."""
    rows = conn.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
    roots = set()
    for experiment_id, location in rows:
        location = str(location or "")
        if str(experiment_id) == "0":
            if location != f"{new_root}/0" and location.endswith(_DEFAULT_EXPERIMENT_SUFFIX):
                roots.add(location)
        elif location != new_root and location.startswith("file://") and location.endswith(
                suffix):
            roots.add(location)
    return sorted(roots)


def _rebase(conn: sqlite3.Connection, roots: list[str], new_root: str) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    changed = 0
    for old in roots:
        if old.endswith(_DEFAULT_EXPERIMENT_SUFFIX):  # the Default experiment's own location
            changed += conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (f"{new_root}/0",)).rowcount
            continue
        for table, column in ARTIFACT_URI_COLUMNS:
            if table in tables:
                changed += conn.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (new_root, len(old) + 1, old, len(old) + 1, old + "/")).rowcount
        if "trace_tags" in tables:
            changed += conn.execute(
                "UPDATE trace_tags SET value = ? || substr(value, ?) "
                "WHERE key = 'mlflow.artifactLocation' AND substr(value, 1, ?) = ?",
                (new_root, len(old) + 1, len(old) + 1, old + "/")).rowcount
    return changed
