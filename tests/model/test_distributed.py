"""LightGBM on a 2-worker Dask LocalCluster: same quality as single-process LightGBM."""

from __future__ import annotations

from collections.abc import Iterator

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.distributed import Client
from lightgbm import LGBMClassifier
from sklearn.metrics import roc_auc_score

from training.distributed import (
    DEFAULT_PARAMS,
    DistributedTrainingError,
    dask_client,
    to_dask,
    train_distributed,
)

PARAMS = {"n_estimators": 40, "num_leaves": 15, "categorical_feature": ["segment"]}


def _leads(n: int, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """A small lead-like frame whose label depends on two numbers and one category."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "visits": rng.poisson(3, n).astype(float),
        "score": rng.normal(size=n),
        "segment": rng.integers(0, 6, n),
        "noise": rng.normal(size=n),
    })
    logit = -2.0 + 0.4 * frame["visits"] + 1.2 * frame["score"] + 1.5 * (frame["segment"] == 4)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, label


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with dask_client(n_workers=2) as dask:
        yield dask


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    X, y = _leads(8_000)
    cut = 6_000  # rows are in time order: test on the later rows
    return X.iloc[:cut], y[:cut], X.iloc[cut:], y[cut:]


def test_two_workers_match_single_process_quality(client: Client, split) -> None:
    X_train, y_train, X_test, y_test = split
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
    model, seconds = train_distributed(X_train, y_train, PARAMS, client=client)
    assert isinstance(model, LGBMClassifier)
    assert model.booster_.num_trees() == PARAMS["n_estimators"]
    assert seconds > 0
    auc = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])

    local_params = {k: v for k, v in PARAMS.items() if k != "categorical_feature"}
    reference = LGBMClassifier(**{**DEFAULT_PARAMS, **local_params}, n_jobs=1)
    reference.fit(X_train, y_train, categorical_feature=PARAMS["categorical_feature"])
    reference_auc = roc_auc_score(y_test, reference.predict_proba(X_test)[:, 1])
    assert auc > 0.75
    assert abs(auc - reference_auc) < 0.03
    # the informative features carry the model, the noise column does not
    importance = dict(zip(model.feature_name_, model.feature_importances_, strict=True))
    assert importance["score"] > importance["noise"]


def test_dask_dataframe_input(client: Client, split) -> None:
    X_train, y_train, X_test, y_test = split
    dX, dy = to_dask(X_train, y_train, npartitions=4)
    assert dX.npartitions == 4 and isinstance(dX, dd.DataFrame)
    model, _ = train_distributed(dX, dy, PARAMS, client=client)
    assert roc_auc_score(y_test, model.predict_proba(X_test)[:, 1]) > 0.75


@pytest.mark.parametrize(
    ("X", "y", "problem"),
    [
        (pd.DataFrame({"a": [1.0, 2.0]}), np.array([0, 1, 1]), "y: 3 labels for 2 rows"),
        (pd.DataFrame({"a": [1.0, 2.0]}), np.array([1, 1]), "both classes"),
        (pd.DataFrame({"a": [1.0, 2.0]}), np.array([0, 2]), "binary labels"),
        (pd.DataFrame({"a": ["x", "y"]}), np.array([0, 1]), r"column\(s\) \['a'\]"),
        (np.zeros((2, 1)), np.array([0, 1]), "X: expected a pandas or dask DataFrame"),
        (pd.DataFrame({"a": []}), np.array([]), "X: no rows"),
    ],
)
def test_bad_input_is_named(X, y, problem: str) -> None:
    with pytest.raises(DistributedTrainingError, match=problem):
        train_distributed(X, y, PARAMS, n_workers=1)


def test_worker_count_must_be_positive() -> None:
    with pytest.raises(DistributedTrainingError, match="n_workers"), dask_client(n_workers=0):
        pass
