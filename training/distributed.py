"""LightGBM trained across machines with Dask (``lightgbm.dask.DaskLGBMClassifier``).

The same call runs on a ``dask.distributed.LocalCluster`` of ``n_workers`` processes on this
machine and on a real Dask cluster given its scheduler address (``tcp://host:8786``): every
worker trains on its own partitions and LightGBM's socket-based network combines the histograms,
so one model comes out, identical in form to a single-machine ``LGBMClassifier``.

Categorical columns should be integer codes named in ``params["categorical_feature"]`` (or
pandas ``category`` columns with the same categories in every partition).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.distributed import Client, LocalCluster
from lightgbm import LGBMClassifier
from lightgbm.dask import DaskLGBMClassifier

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "n_estimators": 200,
    "learning_rate": 0.1,
    "num_leaves": 63,
    "min_child_samples": 50,
    "verbose": -1,
}
PARTITIONS_PER_WORKER = 2


class DistributedTrainingError(ValueError):
    """Bad input to distributed training; the message names the argument or column."""


@contextmanager
def dask_client(
    n_workers: int = 2, scheduler_address: str | None = None, threads_per_worker: int = 1
) -> Iterator[Client]:
    """A Dask client: to ``scheduler_address`` when given, else to a new ``LocalCluster`` of
    ``n_workers`` worker processes (closed on exit)."""
    if scheduler_address:
        with Client(scheduler_address, timeout="10s") as client:
            yield client
        return
    if n_workers < 1:
        raise DistributedTrainingError(f"n_workers must be at least 1, got {n_workers}")
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,  # no dashboard; the scheduler's HTTP routes on a free port:
        scheduler_kwargs={"dashboard_address": ":0"},
    ) as cluster, Client(cluster) as client:
        yield client


def _check_inputs(X: Any, y: Any) -> None:
    if not isinstance(X, pd.DataFrame | dd.DataFrame):
        raise DistributedTrainingError(
            f"X: expected a pandas or dask DataFrame, got {type(X).__name__}"
        )
    if not isinstance(y, pd.Series | dd.Series | np.ndarray):
        raise DistributedTrainingError(
            f"y: expected a pandas/dask Series or numpy array, got {type(y).__name__}"
        )
    if isinstance(X, pd.DataFrame):
        if len(X) == 0:
            raise DistributedTrainingError("X: no rows to train on")
        if len(y) != len(X):
            raise DistributedTrainingError(f"y: {len(y)} labels for {len(X)} rows of X")
        labels = set(pd.unique(np.asarray(y)))
        if not labels <= {0, 1} or len(labels) < 2:
            raise DistributedTrainingError(
                f"y: expected binary labels with both classes 0 and 1, got {sorted(labels)}"
            )
        bad = [c for c in X.columns
               if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])
                       or isinstance(X[c].dtype, pd.CategoricalDtype))]
        if bad:
            raise DistributedTrainingError(
                f"X: column(s) {bad} are neither numeric, boolean nor categorical"
            )


def to_dask(X: pd.DataFrame, y: Any, npartitions: int,
            client: Client | None = None) -> tuple[dd.DataFrame, dd.Series]:
    """Split a pandas frame and its labels into ``npartitions`` aligned Dask partitions.

    With ``client`` the partitions are scattered to the workers first (no large task graph)."""
    frame = X.reset_index(drop=True).copy()
    label = "__label__"
    frame[label] = np.asarray(y).astype(np.int8)
    npartitions = max(1, min(npartitions, len(frame)))
    if client is None:
        dask_frame = dd.from_pandas(frame, npartitions=npartitions)
    else:
        bounds = np.linspace(0, len(frame), npartitions + 1).astype(int)
        chunks = [frame.iloc[start:stop] for start, stop in zip(bounds[:-1], bounds[1:],
                                                                  strict=True)]
        futures = client.scatter(chunks)
        dask_frame = dd.from_delayed(futures, meta=frame.iloc[:0])
    return dask_frame.drop(columns=[label]), dask_frame[label]


def train_distributed(
    X: pd.DataFrame | dd.DataFrame,
    y: pd.Series | dd.Series | np.ndarray,
    params: dict[str, Any] | None = None,
    n_workers: int = 2,
    scheduler_address: str | None = None,
    client: Client | None = None,
) -> tuple[LGBMClassifier, float]:
    """Train a LightGBM classifier on Dask; returns the model (as a local ``LGBMClassifier``)
    and the training seconds (data scattered to workers + boosting; cluster start excluded).

    ``params``: LightGBM parameters (``DEFAULT_PARAMS`` fill the gaps; ``categorical_feature``
    is passed to ``fit``). ``scheduler_address`` (``tcp://host:8786``) trains on that cluster
    instead of a local one of ``n_workers`` processes; ``client``: an open client to reuse.
    """
    _check_inputs(X, y)
    if client is not None:
        return _fit(client, X, y, params)
    with dask_client(n_workers, scheduler_address) as new_client:
        return _fit(new_client, X, y, params)


def _fit(client: Client, X: Any, y: Any, params: dict[str, Any] | None
         ) -> tuple[LGBMClassifier, float]:
    merged = {**DEFAULT_PARAMS, **(params or {})}
    categorical = merged.pop("categorical_feature", "auto")
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    began = time.perf_counter()
    if isinstance(X, pd.DataFrame):
        dX, dy = to_dask(X, y, npartitions=workers * PARTITIONS_PER_WORKER, client=client)
    else:
        dX, dy = X, y
    dX, dy = client.persist([dX, dy])
    model = DaskLGBMClassifier(client=client, **merged)
    with warnings.catch_warnings():  # lightgbm.dask sets the threads per worker itself
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(dX, dy, categorical_feature=categorical)
    seconds = time.perf_counter() - began
    return model.to_local(), seconds
