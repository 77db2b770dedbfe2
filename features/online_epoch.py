"""The online store's load epoch: proof that the store holds a complete load of the offline tables.

A full load (``features.build.materialize``: ``--full``, or any run that finds no epoch) writes a
new epoch into the online store itself once every view is loaded; nothing else writes it. A store
that lost its data (Redis restarted without persistence or flushed, the SQLite file deleted or
replaced by an empty one) lost the epoch with it, so

* the service's reader (``serving.fast_online_reader``) answers every prediction as degraded
  (``online_store_reset``) while the epoch is missing — on Redis the epoch travels in the same
  pipeline as the person reads, on SQLite it is one primary-key lookup on the read's connection;
* the lead recorder and ``/events`` (``serving.events``) refuse to write a person's row unless the
  same epoch was there before and after they read the stored row, so no row built from nothing is
  ever written into a store that lost its data;
* the next ``materialize`` reloads everything, overwriting whatever is stored, then writes the
  epoch.

Where it lives: Redis key ``leadscore:online_epoch:<project>`` (a string); SQLite table
``leadscore_online_epoch`` (``project``, ``epoch``, ``loaded_at``) in the online store's file.
Other online stores are not tracked (``read`` gives ``UNTRACKED``: never reported as reset).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from feast.infra.online_stores.online_store import OnlineStore
from feast.repo_config import RepoConfig

REDIS_KEY_PREFIX = "leadscore:online_epoch:"
SQLITE_TABLE = "leadscore_online_epoch"
UNTRACKED = "untracked"
"""What ``read`` gives for online stores that cannot hold an epoch (never a reset)."""


class OnlineStoreReset(RuntimeError):
    """The online store holds no load epoch: it lost its data, or was never loaded in full."""


def new_epoch() -> str:
    """A fresh epoch: the load's UTC time and a random suffix (two loads never share one)."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"


def redis_key(project: str) -> str:
    """The Redis key holding the epoch of ``project`` (beside Feast's binary entity keys)."""
    return REDIS_KEY_PREFIX + project


def kind_of(online: OnlineStore) -> str:
    """``redis``, ``sqlite`` or ``other``: how the epoch is kept in this online store."""
    if hasattr(online, "_get_client") and type(online).__name__.startswith("Redis"):
        return "redis"
    if hasattr(online, "_get_conn") and "Sqlite" in type(online).__name__:
        return "sqlite"
    return "other"


def _sqlite(online: OnlineStore, config: RepoConfig) -> sqlite3.Connection:
    return online._get_conn(config)  # type: ignore[attr-defined]


def _redis(online: OnlineStore, config: RepoConfig) -> Any:
    return online._get_client(config.online_store)  # type: ignore[attr-defined]


def read_epoch(online: OnlineStore, config: RepoConfig) -> str | None:
    """The stored epoch, None when the store has none (lost or never fully loaded).

    Raises what the store raises when it cannot be reached (callers treat that as unavailable).
    """
    kind = kind_of(online)
    if kind == "redis":
        value = _redis(online, config).get(redis_key(config.project))
        return value.decode() if isinstance(value, bytes) else value
    if kind == "sqlite":
        try:
            row = _sqlite(online, config).execute(
                f"SELECT epoch FROM {SQLITE_TABLE} WHERE project = ?", (config.project,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else str(row[0])
    return UNTRACKED


def write_epoch(online: OnlineStore, config: RepoConfig, epoch: str | None = None) -> str:
    """Record a complete load (a new epoch unless ``epoch`` is given); returns the epoch."""
    epoch = epoch or new_epoch()
    kind = kind_of(online)
    if kind == "redis":
        _redis(online, config).set(redis_key(config.project), epoch)
    elif kind == "sqlite":
        conn = _sqlite(online, config)
        with conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SQLITE_TABLE} (project TEXT PRIMARY KEY, "
                "epoch TEXT NOT NULL, loaded_at TEXT NOT NULL)"
            )
            conn.execute(
                f"INSERT INTO {SQLITE_TABLE} (project, epoch, loaded_at) VALUES (?, ?, ?) "
                "ON CONFLICT(project) DO UPDATE SET epoch = excluded.epoch, "
                "loaded_at = excluded.loaded_at",
                (config.project, epoch, datetime.now(UTC).isoformat()),
            )
    return epoch


def clear_epoch(online: OnlineStore, config: RepoConfig) -> None:
    """Forget the epoch (tests and drills: what a store that lost its data looks like)."""
    kind = kind_of(online)
    if kind == "redis":
        _redis(online, config).delete(redis_key(config.project))
    elif kind == "sqlite":
        conn = _sqlite(online, config)
        try:
            with conn:
                conn.execute(f"DELETE FROM {SQLITE_TABLE} WHERE project = ?", (config.project,))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
