"""The library path beside each hand-written fast twin, on the same data, in one run.

For every place where the project carries its own version of library code, this times the
library's own path and the twin side by side and prints one table (what, library figure, twin
figure, ratio, the target the twin was built for, whether the library path meets it):

* materialization into SQLite: Feast's stock ``SqliteOnlineStore`` with ``store.materialize`` /
  ``store.write_to_online_store`` vs ``FastSqliteOnlineStore`` with ``materialize_fast`` /
  ``write_frame_fast`` (``features/fast_online_store.py``, ``features/fast_materialize.py``);
  target: ≥ 10× Feast's stock rate on the same data;
* the same into Redis (Feast's ``RedisOnlineStore``, database ``--redis``, flushed before and
  after; ``--skip-redis`` leaves it out);
* the serving feature read: ``FeatureStore.get_online_features`` with the feature service vs
  ``serving.fast_online_reader.OnlineFeatureReader`` (one submission, and a batch), and inside the
  reader Feast's stock ``SqliteOnlineStore.online_read`` vs ``online_read_columns``;
* calibration: the fitted scikit-learn calibrator's ``predict`` (``IsotonicRegression`` /
  Platt ``LogisticRegression``) vs ``serving.fast_calibration``;
* scores and SHAP contributions: LightGBM ``predict`` + ``predict(pred_contrib=True)`` vs
  ``serving.fast_treeshap.TreeTables``;
* the logistic regression (alone or in a blend): the fitted scikit-learn pipeline's
  ``predict_proba`` + ``LogisticBaseline.contributions`` on a frame vs
  ``serving.fast_linear.FastLinear``; its note gives the in-process ``predict_json`` floors
  (one submission, a batch) with a LightGBM model and with a blend built from the same work
  folder (``blend_floors``);
* routing of ``POST /predict`` and ``/predict_batch`` through the service's ASGI app in process:
  BentoML's own routing and input parsing vs the fast route (``serving.fast_routes``).

The serving rows need a built work folder (``--workdir DIR``; ``--build`` first runs the main
job on ``--leads`` leads there). A serving twin matters only inside the request, so each row
also gives the request figure with the library path in place of the twin: today's served figure
of record (``--record-p50``/``--record-p99``/``--record-batch``) + the library's extra cost
measured here (library − twin, p50 and p99), which is what the target is compared with; "in
noise" says whether the library path would move today's p50 by at most ``--noise`` of it. The
two sides run call by call in turn, so a neighbour's load weighs on both alike.

    .venv/bin/python benchmarks/bench_library_paths.py --workdir /tmp/wd --build \\
        --out reports/bench_library_paths.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# today's served figures of record (issue "Serving" closing note, 60 s at 200/s, quiet machine):
# the base to which a library path's extra cost is added; in-process floors move with the load
RECORD_P50_MS, RECORD_P99_MS, RECORD_BATCH_MS = 1.72, 5.66, 134.8
SINGLE_P50_MS = 3.0  # issue "Serving": single /predict p50 ≤ 3 ms, p99 ≤ 10 ms at 200/s
SINGLE_P99_MS = 10.0
BATCH_MS = 150.0  # /predict_batch of 1,000 leads ≤ 150 ms
READ_P99_MS = 2.0  # issue "Feature store": one lead + its person online in ≤ 2 ms at p99
MATERIALIZE_SPEEDUP = 10.0  # issue "Feature store": ≥ 10× Feast's stock rate, same data
REDIS_DEFAULT = "127.0.0.1:6379,db=11"  # flushed before and after the Redis rows
API_KEY = "bench-library-paths-key"
FLOORS: dict[str, float] = {}  # in-process predict_json floors with every twin (context only)


@dataclass
class Row:
    """One line of the table: a library path and its twin on the same input."""

    what: str
    unit: str
    library: float
    twin: float
    ratio: float  # how many times the twin is faster (library time ÷ twin time)
    target: str
    library_estimate: float | None  # the target's figure with the library path in place
    library_meets: bool | None
    in_noise: bool | None = None  # library path within ``--noise`` of today's p50
    note: str = ""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def latencies(call: Callable[[int], object], calls: int, warmup: int = 20) -> np.ndarray:
    """Milliseconds of ``calls`` calls (after ``warmup``), garbage collector on."""
    for i in range(warmup):
        call(i)
    gc.collect()
    out = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        out[i] = (time.perf_counter() - started) * 1000.0
    return out


def paired(library: Callable[[int], object], twin: Callable[[int], object], calls: int,
           warmup: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds of the library path and the twin, call by call in turn (so that a drifting
    neighbour load or a growing history weighs on both alike)."""
    for i in range(warmup):
        library(i)
        twin(i)
    gc.collect()
    lib, fast = np.empty(calls), np.empty(calls)
    for i in range(calls):
        for call, out in ((library, lib), (twin, fast)) if i % 2 == 0 else \
                ((twin, fast), (library, lib)):
            started = time.perf_counter()
            call(i)
            out[i] = (time.perf_counter() - started) * 1000.0
    return lib, fast


def p(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 4)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# ---- materialization ---------------------------------------------------------------------------
def materialization_rows(rows: int, features: int, redis: str | None) -> list[Row]:
    """Stock Feast writes vs ``materialize_fast`` / ``write_frame_fast`` on one frame, into
    SQLite (stock vs fast store) or, with ``redis``, into Feast's Redis store."""
    from bench_materialize import (
        FAST_STORE,
        REDIS_STORE,
        STOCK_STORE,
        _window,
        build_demo_repo,
        flush_redis,
        make_frame,
    )

    from features.fast_materialize import materialize_fast, write_frame_fast

    frames = (make_frame("lead_id", "lead", rows, features, seed=1),
              make_frame("person_id", "person", 1, 1, seed=2))
    lead_frame = frames[0]
    start, end = _window()
    out: list[Row] = []
    backends = ([("Redis", REDIS_STORE, REDIS_STORE, {"connection_string": redis})] if redis
                else [("SQLite", STOCK_STORE, FAST_STORE, None)])
    for label, stock_type, fast_type, options in backends:
        figures: dict[str, float] = {}
        for name, store_type, action in (
            ("stock materialize", stock_type,
             lambda r: r.store.materialize(start, end, feature_views=["lead_stats"])),
            ("materialize_fast", fast_type,
             lambda r: materialize_fast(r.store, start, end, feature_views=["lead_stats"])),
            ("stock write_to_online_store", stock_type,
             lambda r: r.store.write_to_online_store("lead_stats", lead_frame)),
            ("write_frame_fast", fast_type,
             lambda r: write_frame_fast(r.store, "lead_stats", lead_frame)),
        ):
            if options:
                flush_redis(options["connection_string"])
            with (tempfile.TemporaryDirectory(prefix="bench-twins-") as tmp,
                  contextlib.redirect_stdout(sys.stderr)):  # Feast's progress lines
                repo = build_demo_repo(Path(tmp), rows, features, online_store_type=store_type,
                                       frames=frames, online_options=options)
                seconds = timed(lambda repo=repo, action=action: action(repo))
            figures[name] = rows / seconds
            progress(f"{label} {name}: {rows:,} rows in {seconds:.2f} s = "
                     f"{figures[name]:,.0f} rows/s")
        if options:
            flush_redis(options["connection_string"])
        for library, twin in (("stock materialize", "materialize_fast"),
                              ("stock write_to_online_store", "write_frame_fast")):
            ratio = figures[twin] / figures[library]
            sqlite = label == "SQLite"
            out.append(Row(
                what=f"{label}: {library} vs {twin} ({rows:,} rows × {features} floats)",
                unit="rows/s", library=round(figures[library]), twin=round(figures[twin]),
                ratio=round(ratio, 2),
                target=(f"≥ {MATERIALIZE_SPEEDUP:g}× Feast's stock rate" if sqlite
                        else "none stated (capacity estimate only)"),
                library_estimate=None, library_meets=False if sqlite else None,
                note="" if sqlite else "same stock online_write_batch on both sides",
            ))
    return out


# ---- serving parts ----------------------------------------------------------------------------
def submission_body(lead_id: str, known: bool = True) -> dict[str, Any]:
    """A form submission as the CRM sends it: the serving benchmark's own."""
    from bench_serving import body  # same folder

    return body(lead_id, known)


def use_workdir(workdir: Path) -> Any:
    os.environ["LEADSCORE_WORKDIR"] = str(workdir)
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml_home"))
    os.environ["LEADSCORE_API_KEY"] = API_KEY
    from leadscore.config import get_settings

    get_settings.cache_clear()
    return get_settings()


def compare(what: str, lib: np.ndarray, twin: np.ndarray, single: bool, batch: int,
            record: tuple[float, float, float], noise: float, note: str = "") -> Row:
    """A serving row: today's figure of record + the library's extra cost vs the target."""
    record_p50, record_p99, record_batch = record
    extra = p(lib, 50) - p(twin, 50)
    if single:
        estimate = round(record_p50 + extra, 3)
        extra_p99 = p(lib, 99) - p(twin, 99)
        meets = estimate <= SINGLE_P50_MS and record_p99 + extra_p99 <= SINGLE_P99_MS
        target = f"/predict p50 ≤ {SINGLE_P50_MS:g} ms, p99 ≤ {SINGLE_P99_MS:g} ms"
        base = record_p50
        note = note or f"p99 {p(lib, 99)} vs {p(twin, 99)} ms"
    else:
        estimate = round(record_batch + extra, 3)
        meets = estimate <= BATCH_MS
        target = f"/predict_batch of {batch:,} ≤ {BATCH_MS:g} ms"
        base = record_batch
    return Row(what=what, unit="ms p50", library=p(lib, 50), twin=p(twin, 50),
               ratio=round(p(lib, 50) / max(p(twin, 50), 1e-9), 1), target=target,
               library_estimate=estimate, library_meets=bool(meets),
               in_noise=bool(extra <= noise * base), note=note)


def serving_rows(workdir: Path, calls: int, batch: int, batch_repeats: int,
                 noise: float, record: tuple[float, float, float]) -> list[Row]:
    """Per-request cost of each serving twin beside its library path."""
    import pandas as pd
    from feast import RepoConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    from features.online import submission_request
    from features.store import get_store, repo_config_dict
    from serving.fast_calibration import fast_calibration
    from serving.predictor import Predictor
    from serving.schemas import Submission
    from training.calibration import fit_calibrator

    settings = use_workdir(workdir)
    predictor = Predictor.from_settings(settings)
    if not predictor.ready():
        raise SystemExit(f"no model in {workdir}: {predictor.load_error} (use --build)")
    model = predictor.model
    scorer = model.scorer
    rows: list[Row] = []

    # in-process request floors with every twin in place (what the library figures replace)
    progress(f"in-process floor: predict_json of one submission × {calls}, "
             f"of {batch} × {batch_repeats}")
    singles = [Submission.model_validate(submission_body(f"L-twins-{i}"))
               for i in range(calls + 20)]
    floor = latencies(lambda i: predictor.predict_json([singles[i]]), calls)
    batches = [[Submission.model_validate(submission_body(f"L-twins-b{k}-{i}", i % 2 == 0))
                for i in range(batch)] for k in range(batch_repeats + 1)]
    batch_floor = latencies(lambda k: predictor.predict_json(batches[k], batch=True),
                            batch_repeats, warmup=1)
    floor_p50, floor_p99, batch_p50 = p(floor, 50), p(floor, 99), p(batch_floor, 50)
    progress(f"floor p50 {floor_p50} ms, p99 {floor_p99} ms; batch p50 {batch_p50} ms")
    FLOORS.update(single_p50_ms=floor_p50, single_p99_ms=floor_p99, batch_p50_ms=batch_p50)

    def serving_row(what: str, lib: np.ndarray, twin: np.ndarray, single: bool,
                    note: str = "") -> Row:
        return compare(what, lib, twin, single, batch, record, noise, note)

    # 1. the feature read: get_online_features vs the resolved reader
    store = get_store(settings)
    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet",
                                columns=["person_id"])
    persons = behaviour["person_id"].drop_duplicates().sort_values().tolist()
    rng = np.random.default_rng(7)
    picks = [persons[i] for i in rng.integers(0, len(persons), max(calls, batch) + 20)]
    form = {"channel": "sem", "campaign": "winter-math-2026", "landing_page": "/trial/math",
            "funnel_step": "verified", "grade": "G5", "subject": "math", "city_tier": 1,
            "device": "ios", "phone_valid": True, "email_domain_type": "free"}
    at = datetime.now(UTC) - timedelta(days=1)
    service = store.get_feature_service(settings.feature_service)
    reader = predictor.reader
    request_row = submission_request(form, at)

    def library_read(persons_: list[str]) -> dict[str, list[Any]]:
        entity_rows = [{**request_row, "person_id": pid} for pid in persons_]
        return store.get_online_features(features=service, entity_rows=entity_rows).to_dict()

    def twin_read(persons_: list[str]) -> tuple[dict[str, list[Any]], list[bool]]:
        request = {name: [value] * len(persons_) for name, value in request_row.items()}
        return reader.features(request, persons_)

    progress(f"feature read of one submission × {calls}: get_online_features vs reader")
    lib, twin = paired(lambda i: library_read([picks[i]]), lambda i: twin_read([picks[i]]),
                       calls)
    rows.append(serving_row("serving features, 1 submission: get_online_features vs "
                            "OnlineFeatureReader", lib, twin, single=True))
    repeats = max(3, batch_repeats)
    progress(f"feature read of {batch} submissions × {repeats}")
    lib, twin = paired(lambda i: library_read(picks[i:i + batch]),
                       lambda i: twin_read(picks[i:i + batch]), repeats, warmup=1)
    rows.append(serving_row(f"serving features, {batch:,} submissions: get_online_features "
                            "vs OnlineFeatureReader", lib, twin, single=False))

    # 2. inside the reader: Feast's stock SQLite read vs the fast store's columnar read
    online = store.config.online_store
    if getattr(online, "type", "").endswith("FastSqliteOnlineStore"):
        stock_reader = copy.copy(reader)
        stock_config = RepoConfig(**{**repo_config_dict(settings),
                                     "online_store": {"type": "sqlite", "path": online.path}})
        stock_config.repo_path = settings.feature_repo_dir
        stock_reader.config = stock_config
        stock_reader.online_store = SqliteOnlineStore()
        progress(f"online store read of one person × {calls}: SqliteOnlineStore vs fast store")
        lib, twin = paired(lambda i: stock_reader.read_snapshots([picks[i]]),
                           lambda i: reader.read_snapshots([picks[i]]), calls)
        read_row = serving_row("online read of 1 person: SqliteOnlineStore.online_read vs "
                               "FastSqliteOnlineStore.online_read_columns", lib, twin,
                               single=True)
        read_row.target += f"; read p99 ≤ {READ_P99_MS:g} ms"
        read_row.library_meets = bool(read_row.library_meets and p(lib, 99) <= READ_P99_MS)
        rows.append(read_row)
        lib, twin = paired(lambda i: stock_reader.read_snapshots(picks[i:i + batch]),
                           lambda i: reader.read_snapshots(picks[i:i + batch]), repeats,
                           warmup=1)
        rows.append(serving_row(f"online read of {batch:,} persons: "
                                "SqliteOnlineStore.online_read vs online_read_columns",
                                lib, twin, single=False))
        stock_reader.online_store._conn = None  # type: ignore[attr-defined]

    # 3. calibration: the fitted scikit-learn model's predict vs the precomputed map
    columns = list(scorer.columns)
    frame = pd.read_parquet(settings.data_dir / "training_set.parquet").head(batch)
    features = {c: frame[c].tolist() for c in columns}
    x_batch = scorer.matrix(features)
    x_single = [x_batch[i:i + 1] for i in range(len(x_batch))]
    raw_batch, _ = scorer.booster_output(x_batch)
    rng = np.random.default_rng(3)
    p_fit = rng.uniform(0.001, 0.999, 5000)
    y_fit = (rng.uniform(size=5000) < p_fit ** 1.3).astype(float)
    calibrators = [("champion's " + model.python_model.calibrator.method,
                    model.python_model.calibrator)]
    for method in ("isotonic", "sigmoid"):
        calibrators.append((method, fit_calibrator(p_fit, y_fit, method=method)))
    one = [raw_batch[i:i + 1] for i in range(len(raw_batch))]
    for label, calibrator in calibrators:
        fast = fast_calibration(calibrator)
        if fast is None:
            continue
        progress(f"calibration ({label}) of one score × {calls} and of {batch}")
        lib, twin = paired(lambda i, c=calibrator: c.predict(one[i % len(one)]),
                           lambda i, f=fast: f(one[i % len(one)]), calls)
        rows.append(serving_row(f"calibration ({label}), 1 score: scikit-learn predict vs "
                                "fast_calibration", lib, twin, single=True))
        lib, twin = paired(lambda i, c=calibrator: c.predict(raw_batch),
                           lambda i, f=fast: f(raw_batch), calls)
        rows.append(serving_row(f"calibration ({label}), {batch:,} scores", lib, twin,
                                single=False))

    # 4. scores + SHAP contributions: LightGBM vs the tree tables
    booster, tables = scorer.booster, scorer.tables
    if tables is not None:
        def lightgbm(x: np.ndarray) -> None:
            threads = 1 if len(x) < 64 else 0  # as FastScorer.booster_output without tables
            booster.predict(x, num_threads=threads)
            booster.predict(x, pred_contrib=True, num_threads=threads)

        trees = booster.num_trees()
        progress(f"scores + SHAP ({trees} trees) of one row × {calls} and of {batch}")
        lib, twin = paired(lambda i: lightgbm(x_single[i % len(x_single)]),
                           lambda i: tables.predict(x_single[i % len(x_single)]), calls)
        rows.append(serving_row(f"scores + SHAP, 1 row ({trees} trees): LightGBM pred_contrib "
                                "vs TreeTables", lib, twin, single=True))
        lib, twin = paired(lambda i: lightgbm(x_batch), lambda i: tables.predict(x_batch),
                           repeats, warmup=2)
        rows.append(serving_row(f"scores + SHAP, {len(x_batch):,} rows", lib, twin,
                                single=False))
    # 5. the logistic regression: scikit-learn's pipeline vs the linear twin, and the floors
    rows.extend(linear_rows(settings, predictor, features, calls, repeats, singles, batches,
                            serving_row))
    predictor.close()

    # 6. routing: BentoML's routing and parsing vs the request guard's fast route
    rows.extend(routing_rows(calls, batch, repeats, noise, record))
    return rows


def models_of_both_kinds(settings: Any, champion: Any) -> tuple[Any, Any]:
    """(a LightGBM model, a blend) from the champion: its booster (a default LightGBM when it
    has none) and calibrator; the blend is the champion when it is one (with a booster), else
    weight 0.5 with a logistic regression fitted on the work folder's training set."""
    import pandas as pd

    from training.baselines import LogisticBaseline
    from training.model import BlendedLeadModel, LeadConversionModel, prepare_features
    from training.selection import train_default_lightgbm

    features, levels = champion.feature_columns, champion.levels
    common = {"calibrator": champion.calibrator, "feature_columns": features,
              "levels": levels, "reason_templates": champion.reason_templates}
    frame = pd.read_parquet(settings.data_dir / "training_set.parquet")
    model_string = champion.model_string or train_default_lightgbm(
        prepare_features(frame, features, levels), frame["label"].to_numpy(), list(levels),
        0).model_to_string()
    lightgbm = LeadConversionModel(model_string=model_string, **common)
    if getattr(champion, "weight", 0) > 0:
        return lightgbm, champion
    linear = getattr(champion, "linear", None) or LogisticBaseline(
        features, list(levels)).fit(frame, frame["label"])
    return lightgbm, BlendedLeadModel(linear, weight=0.5, model_string=model_string, **common)


def linear_rows(settings: Any, predictor: Any, features: dict[str, list[Any]], calls: int,
                repeats: int, singles: list[Any], batches: list[list[Any]],
                serving_row: Callable[..., Row]) -> list[Row]:
    """The logistic regression's library path vs ``FastLinear`` (1 row, a batch), and the
    in-process floors of a LightGBM model and a blend, measured call by call in turn."""
    import pandas as pd

    from serving.fast_linear import FastLinear
    from serving.model_store import LoadedModel
    from serving.scoring import FastScorer

    loaded = predictor.model
    lightgbm, blend = models_of_both_kinds(settings, loaded.python_model)
    linear = blend.linear
    fast = FastLinear.from_baseline(linear)
    if fast is None:
        return []
    one = [{c: [v[i]] for c, v in features.items()} for i in range(len(features[fast.columns[0]]))]

    def library(columns: dict[str, list[Any]]) -> None:
        frame = pd.DataFrame(columns)  # the general path's frame
        linear.predict_proba(frame)
        linear.contributions(frame)

    progress(f"logistic regression of one row × {calls} and of {len(one)}: scikit-learn "
             "pipeline vs FastLinear")
    lib, twin = paired(lambda i: library(one[i % len(one)]),
                       lambda i: fast.predict(one[i % len(one)]), calls)
    rows = [serving_row("logistic regression, 1 row: scikit-learn pipeline predict_proba + "
                        "contributions vs FastLinear", lib, twin, single=True)]
    lib, twin = paired(lambda i: library(features), lambda i: fast.predict(features), repeats,
                       warmup=2)
    rows.append(serving_row(f"logistic regression, {len(one):,} rows", lib, twin,
                            single=False))

    kinds = {kind: LoadedModel(model, loaded.name, loaded.version, loaded.source,
                               FastScorer(model))
             for kind, model in (("lightgbm", lightgbm), ("blend", blend))}

    def served(kind: str, subs: list[Any], batch: bool) -> Callable[[int], object]:
        def call(i: int) -> object:
            predictor._model = kinds[kind]
            return predictor.predict_json(subs[i] if batch else [subs[i]], batch=batch)
        return call

    progress(f"in-process floors, LightGBM vs blend (weight {blend.weight:g}): one submission "
             f"× {calls}, a batch × {repeats}")
    lgb_one, blend_one = paired(served("lightgbm", singles, False), served("blend", singles, False),
                                calls)
    lgb_many, blend_many = paired(served("lightgbm", batches, True),
                                  served("blend", batches, True), min(repeats, len(batches) - 1),
                                  warmup=1)
    predictor._model = loaded
    FLOORS.update(blend_floors={
        "blend_weight": blend.weight, "single_p50_ms": [p(lgb_one, 50), p(blend_one, 50)],
        "batch_p50_ms": [p(lgb_many, 50), p(blend_many, 50)], "order": ["lightgbm", "blend"]})
    rows[-1].note = (f"predict_json floors LightGBM vs blend (weight {blend.weight:g}): 1 "
                     f"submission {p(lgb_one, 50)} vs {p(blend_one, 50)} ms, batch "
                     f"{p(lgb_many, 50)} vs {p(blend_many, 50)} ms p50")
    return rows


def routing_rows(calls: int, batch: int, repeats: int, noise: float,
                 record: tuple[float, float, float]) -> list[Row]:
    """``POST /predict`` and ``/predict_batch`` through the service's ASGI app, in process."""
    from starlette.testclient import TestClient

    from serving import service as service_module

    headers = {"Authorization": f"Bearer {API_KEY}"}
    single = {fast: [submission_body(f"L-route-{int(fast)}-{i}") for i in range(calls + 20)]
              for fast in (False, True)}
    batches = [{"submissions": [submission_body(f"L-route-b{k}-{i}", i % 2 == 0)
                                for i in range(batch)]} for k in range(2 * repeats + 2)]
    progress(f"routing: POST /predict × {calls} and /predict_batch × {repeats} in process, "
             "BentoML routing vs fast route")
    with TestClient(service_module.LeadScoring.to_asgi()) as client:
        fast_routes = dict(service_module.FAST_ROUTES)
        if not fast_routes:
            raise SystemExit("the service registered no fast routes")

        def post(path: str, payload: dict) -> None:
            answer = client.post(path, json=payload, headers=headers)
            if answer.status_code != 200:
                raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:200]}")

        def routed(fast: bool, path: str, payloads: list[dict]) -> Callable[[int], None]:
            def call(i: int) -> None:
                service_module.FAST_ROUTES.clear()
                if fast:
                    service_module.FAST_ROUTES.update(fast_routes)
                post(path, payloads[2 * i + fast] if path.endswith("batch") else payloads[i])
            return call

        try:
            lib_one, twin_one = paired(routed(False, "/predict", single[False]),
                                       routed(True, "/predict", single[True]), calls)
            lib_many, twin_many = paired(routed(False, "/predict_batch", batches),
                                         routed(True, "/predict_batch", batches), repeats,
                                         warmup=1)
        finally:
            service_module.FAST_ROUTES.clear()
            service_module.FAST_ROUTES.update(fast_routes)
    return [
        compare("POST /predict in process: BentoML routing vs fast route", lib_one, twin_one,
                True, batch, record, noise),
        compare(f"POST /predict_batch of {batch:,} in process: BentoML routing vs fast route",
                lib_many, twin_many, False, batch, record, noise,
                note=f"p99 {p(lib_many, 99)} vs {p(twin_many, 99)} ms"),
    ]


# ---- output --------------------------------------------------------------------------------------
def print_table(rows: list[Row]) -> None:
    """A Markdown table of the rows."""
    def yes(value: bool | None) -> str:
        return "–" if value is None else ("yes" if value else "**no**")

    print("| what | library | twin | ratio | target | with the library path | "
          "meets target | in noise | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        estimate = "–" if r.library_estimate is None else f"{r.library_estimate:g} ms"
        print(f"| {r.what} | {r.library:g} {r.unit} | {r.twin:g} {r.unit} | {r.ratio:g}× | "
              f"{r.target} | {estimate} | {yes(r.library_meets)} | {yes(r.in_noise)} | "
              f"{r.note} |")


def build_workdir(workdir: Path, leads: int) -> None:
    """The main job on ``leads`` leads in ``workdir`` (a small, real work folder)."""
    from leadscore.config import Settings
    from pipelines.demo import run_demo

    os.environ["LEADSCORE_WORKDIR"] = str(workdir)  # the feature repo resolves its sources here
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml_home"))
    progress(f"building a work folder of {leads:,} leads in {workdir} (main job, 2 trials)")
    run_demo(Settings().with_workdir(workdir), n_leads=leads, seed=11, trials=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, help="a built work folder (serving rows)")
    parser.add_argument("--build", action="store_true",
                        help="run the main job in --workdir first (when it has no model)")
    parser.add_argument("--leads", type=int, default=3000, help="leads for --build")
    parser.add_argument("--rows", type=int, default=10_000,
                        help="entity rows materialized into SQLite")
    parser.add_argument("--redis-rows", type=int, default=3_000,
                        help="entity rows materialized into Redis")
    parser.add_argument("--features", type=int, default=40, help="float features per row")
    parser.add_argument("--redis", default=REDIS_DEFAULT,
                        help="Feast connection string of a Redis database this run may flush")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-materialize", action="store_true")
    parser.add_argument("--calls", type=int, default=400, help="single calls per serving row")
    parser.add_argument("--batch", type=int, default=1000, help="batch size")
    parser.add_argument("--batch-repeats", type=int, default=5, help="batches per serving row")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="share of today's p50 counted as noise (in-noise column)")
    parser.add_argument("--record-p50", type=float, default=RECORD_P50_MS,
                        help="today's served /predict p50 (ms), base of the estimates")
    parser.add_argument("--record-p99", type=float, default=RECORD_P99_MS)
    parser.add_argument("--record-batch", type=float, default=RECORD_BATCH_MS,
                        help="today's served /predict_batch p50 (ms)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    load_start = os.getloadavg()
    started = datetime.now(UTC)
    rows: list[Row] = []
    if not args.skip_materialize:
        progress(f"materialization: {args.rows:,} rows into SQLite")
        rows += materialization_rows(args.rows, args.features, None)
        if not args.skip_redis:
            progress(f"materialization: {args.redis_rows:,} rows into Redis ({args.redis})")
            rows += materialization_rows(args.redis_rows, args.features, args.redis)
    if args.workdir is not None:
        workdir = args.workdir.resolve()
        if args.build and not (workdir / "summary.json").exists():
            build_workdir(workdir, args.leads)
        rows += serving_rows(workdir, args.calls, args.batch, args.batch_repeats, args.noise,
                             (args.record_p50, args.record_p99, args.record_batch))
    else:
        progress("no --workdir: serving rows skipped")
    load_end = os.getloadavg()
    print_table(rows)
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, load average {load_start[0]:.2f} → {load_end[0]:.2f}"
          + (f"; in-process floors with the twins: {FLOORS}" if FLOORS else ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "started": started.isoformat(), "load_average": [load_start[0], load_end[0]],
            "in_process_floors_ms": FLOORS,
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
        }, indent=2))
        progress(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
