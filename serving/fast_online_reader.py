"""Fast twin of ``FeatureStore.get_online_features`` for serving: resolved once, read per call.

Kept for: single ``POST /predict`` (p50 ≤ 3 ms, p99 ≤ 10 ms at 200/s) and ``/predict_batch``
of 1,000 (≤ 150 ms). ``get_online_features`` with the feature service took 6.3 ms for one
submission and 938 ms for 1,000, against 0.94 ms and 148 ms here
(``benchmarks/bench_library_paths.py``: 6.8× and 6.4×; table and date in
``docs/scaling.md``). Equivalence: ``tests/integration/test_predictor.py``
(``test_reader_matches_feast_get_online_features``).

``features.online.online_features`` goes through ``FeatureStore.get_online_features``, which
re-parses the registry's feature service and views from protobuf on every call (most of its
cost per request is registry parsing and type checks). The service instead
resolves, at start-up, the feature service, the on-demand view behind it, the feature views it
reads and the model's column list, then per request:

1. reads the person's rows of those views with the online store's own ``online_read`` (one
   query per view for the whole batch);
2. runs the on-demand view's transformation (``OnDemandFeatureView.transform_dict``, i.e.
   ``features.request.transform_request``) on the request columns + snapshots.

The values are those of ``features.online.online_features`` (tests compare them). A store that
fails raises ``OnlineStoreError``; the predictor then answers from the request alone. A store
without its load epoch (``features.online_epoch``: it lost its data, e.g. Redis restarted empty,
and is not reloaded yet) raises ``OnlineStoreResetError``: whatever rows it holds are not the
person's whole history. The epoch costs no extra round trip: on Redis it is one more command in
the pipeline that reads every view's rows (one round trip for the whole batch, as Feast's
``get_online_features`` batches its views), on SQLite one primary-key lookup on the read's
connection.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features.fast_online_store import string_entity_keys
from features.online_epoch import kind_of, read_epoch, redis_key
from features.training_set import model_feature_columns
from leadscore.config import Settings

PERSON_JOIN_KEY = "person_id"
# Feast's RedisOnlineStore methods the one-pipeline read uses (else one online_read per view)
_REDIS_HELPERS = ("_get_client", "_generate_hset_keys_for_features",
                  "_convert_redis_values_to_protobuf")


class OnlineStoreError(RuntimeError):
    """The online store could not be read (unreachable, locked, missing tables …)."""


class OnlineStoreResetError(OnlineStoreError):
    """The online store lost its data (no load epoch) and is not reloaded yet."""

    public_message = ("the online feature store lost its data and is not reloaded yet "
                      "(`leadscore features materialize`); retry later")


@dataclass(frozen=True)
class _ViewRead:
    view: FeatureView
    features: tuple[str, ...]


def _python_value(value: ValueProto) -> Any:
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(value, kind)


# Redis online store: a dead server must cost a request milliseconds, not redis-py's default
# 3 retries with exponential backoff (~4 s): short timeouts, one immediate retry (a connection
# left stale by a Redis restart reconnects on it); the pool reconnects on the next call.
REDIS_CONNECT_TIMEOUT_S = 0.25
REDIS_SOCKET_TIMEOUT_S = 0.5


def _fail_fast_redis(online_store: Any, config: Any) -> None:
    """Give Feast's Redis client short timeouts and no backoff (single-node Redis only)."""
    if getattr(config, "type", None) != "redis" or not hasattr(online_store, "_get_client"):
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = getattr(online_store._get_client(config), "connection_pool", None)
    if pool is not None:  # RedisCluster keeps per-node pools: left as Feast makes them
        pool.connection_kwargs.update(socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                                      socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                                      retry=Retry(NoBackoff(), 1))


class OnlineFeatureReader:
    """Model features for submissions, from the online store and the on-demand view."""

    def __init__(self, store: FeatureStore, settings: Settings) -> None:
        try:
            service = store.get_feature_service(settings.feature_service)
        except Exception as exc:  # noqa: BLE001 - Feast raises several "not found" types
            raise OnlineStoreError(
                f"feature service '{settings.feature_service}' is not registered "
                f"({type(exc).__name__}); run `leadscore features build`"
            ) from None
        self.config = store.config
        self.odfvs: list[OnDemandFeatureView] = []
        reads: dict[str, set[str]] = {}
        for projection in service.feature_view_projections:
            odfv = store.get_on_demand_feature_view(projection.name)
            self.odfvs.append(odfv)
            for name, source in odfv.source_feature_view_projections.items():
                reads.setdefault(name, set()).update(f.name for f in source.features)
        self.views = [
            _ViewRead(store.get_feature_view(name), tuple(sorted(features)))
            for name, features in sorted(reads.items())
        ]
        for read in self.views:
            keys = [e.name for e in read.view.entity_columns]
            if keys != [PERSON_JOIN_KEY]:
                raise OnlineStoreError(
                    f"feature view '{read.view.name}' is keyed by {keys}; serving reads "
                    f"person snapshots keyed by '{PERSON_JOIN_KEY}' only"
                )
        self.columns: list[str] = model_feature_columns(store, settings.feature_service)
        self.online_store = get_online_store_from_config(store.config.online_store)
        _fail_fast_redis(self.online_store, store.config.online_store)
        self.redis_pipeline = kind_of(self.online_store) == "redis" and all(
            hasattr(self.online_store, name) for name in _REDIS_HELPERS)
        # one SQLite connection is shared by the service's threads: one read at a time
        self._lock = threading.Lock()

    def _reset(self) -> OnlineStoreResetError:
        return OnlineStoreResetError(
            "the online store holds no load epoch (it lost its data, or a full load has not "
            "finished): run `leadscore features materialize`")

    def _redis_rows(self, unique: Sequence[str]) -> tuple[Any, list[list[Any]]]:
        """Every view's rows of ``unique`` persons and the load epoch, in one Redis pipeline
        (the commands Feast's ``online_read`` sends per view, plus a GET of the epoch)."""
        store, config = self.online_store, self.config
        # Feast's Redis keys: the serialised entity key, then the project's name
        project = config.project.encode("utf-8")
        redis_keys = [key + project for key in string_entity_keys(
            PERSON_JOIN_KEY, list(unique), config.entity_key_serialization_version)]
        plans = []
        client = store._get_client(config.online_store)
        with client.pipeline(transaction=False) as pipe:
            pipe.get(redis_key(config.project))
            for read in self.views:
                names, fields = store._generate_hset_keys_for_features(
                    read.view, list(read.features))
                for key in redis_keys:
                    pipe.hmget(key, fields)
                plans.append((read, names))
            replies = pipe.execute()
        n = len(redis_keys)
        rows = [store._convert_redis_values_to_protobuf(
                    replies[1 + i * n:1 + (i + 1) * n], read.view.name, names)
                for i, (read, names) in enumerate(plans)]
        return replies[0], rows

    def read_snapshots(self, person_ids: Sequence[str]) -> tuple[dict[str, list[Any]], list[bool]]:
        """Snapshot columns (``snap_*`` …) per person, and whether any view knew the person."""
        # each distinct person is read and converted once (a batch often repeats persons)
        slot: dict[str, int] = {}
        positions = [slot.setdefault(pid, len(slot)) for pid in person_ids]
        unique = list(slot)
        n = len(unique)
        columnar = getattr(self.online_store, "online_read_columns", None)
        fast_read = getattr(self.online_store, "online_read_serialized", None)
        if fast_read is not None:
            keys: list[Any] = string_entity_keys(
                PERSON_JOIN_KEY, unique, self.config.entity_key_serialization_version)
        else:
            fast_read = self.online_store.online_read
            keys = [EntityKeyProto(join_keys=[PERSON_JOIN_KEY],
                                   entity_values=[ValueProto(string_val=pid)])
                    for pid in unique]
        columns: dict[str, list[Any]] = {}
        known = [False] * n
        now = datetime.now(UTC)
        results: list[Any] = []
        try:
            with self._lock:
                if self.redis_pipeline:
                    epoch, results = self._redis_rows(unique)
                else:
                    epoch = read_epoch(self.online_store, self.config)
                    for read in self.views:
                        if epoch is None:
                            break
                        if columnar is not None:  # the fast SQLite store: columns of values
                            results.append(columnar(self.config, read.view, keys,
                                                    list(read.features)))
                        else:
                            results.append(fast_read(self.config, read.view, keys,
                                                     list(read.features)))
        except Exception as exc:  # sqlite3/redis errors: the store is not usable
            raise OnlineStoreError(f"online read failed: {type(exc).__name__}") from exc
        if epoch is None:
            raise self._reset()
        for read, result in zip(self.views, results, strict=True):
            ttl = read.view.ttl
            if columnar is not None and not self.redis_pipeline:
                stamps, found, values_of = result
                for name in read.features:
                    columns[name] = values_of[name]
                for i, event_ts in enumerate(stamps):
                    if not found[i]:
                        continue
                    if ttl and event_ts is not None and now - event_ts > ttl:
                        for name in read.features:  # too old: as if the store had nothing
                            columns[name][i] = None
                        continue
                    known[i] = True
                continue
            for name in read.features:
                columns[name] = [None] * n
            for i, (event_ts, values) in enumerate(result):
                if values is None:
                    continue
                if ttl and event_ts is not None:
                    stamp = event_ts if event_ts.tzinfo else event_ts.replace(tzinfo=UTC)
                    if now - stamp > ttl:
                        continue
                known[i] = True
                for name in read.features:
                    proto = values.get(name)
                    if proto is not None:
                        columns[name][i] = _python_value(proto)
        if n == len(person_ids):
            return columns, known
        return ({name: [values[i] for i in positions] for name, values in columns.items()},
                [known[i] for i in positions])

    def transform(self, request_columns: dict[str, list[Any]],
                  snapshots: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The on-demand view(s) on request columns + snapshots: model columns, in order."""
        inputs = {**request_columns, **snapshots}
        out: dict[str, list[Any]] = {}
        for odfv in self.odfvs:
            out.update(odfv.transform_dict(inputs))
        return {name: list(out[name]) for name in self.columns}

    def features(self, request_columns: dict[str, list[Any]], person_ids: Sequence[str]
                 ) -> tuple[dict[str, list[Any]], list[bool]]:
        """Model features of a batch (columns of equal length) and which persons were known."""
        snapshots, known = self.read_snapshots(person_ids)
        return self.transform(request_columns, snapshots), known

    def request_only(self, request_columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Model features from the request alone (no snapshots: brand-new-person defaults)."""
        snapshot_names = [name for read in self.views for name in read.features]
        n = len(next(iter(request_columns.values()), []))
        return self.transform(request_columns, {name: [None] * n for name in snapshot_names})

    def close(self) -> None:
        """Close the online store's connection, when it has one."""
        conn = getattr(self.online_store, "_conn", None)
        if conn is not None:
            conn.close()
            self.online_store._conn = None
