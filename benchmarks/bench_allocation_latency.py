"""What routing by learned effects adds to one /predict: today's path (tiers by probability)
side by side with the uplift path (the uplift model's effects for the lead's features, then
``choose_one``'s rule with the policy file's shadow prices), in one run, calls interleaved.

    nice -n 10 .venv/bin/python benchmarks/bench_allocation_latency.py \\
        --model /tmp/causal_bench/models/lead_uplift \\
        --features /tmp/causal_bench/data/training_set.parquet [--workdir DIR]

1. The routing step of one lead (``routing.control.route_leads``), in process: today's tiers;
   the served uplift path (``serving.fast_forest.DistilledEffects``: ``encode_columns``, then
   the distilled per-channel boosters through one ``ForestWalker``, and the policy's
   ``LearnedAllocation`` read once at load); the same with ``Booster.predict`` per channel
   (``UpliftModel.fast_uplift``) and the allocation read per call (the path before); and the
   parts: encoding, ``ForestWalker.predict`` beside three ``Booster.predict``, the allocation
   rule beside ``routing.allocate.choose_one``, the full cross-fitted model. The walker's
   scores are checked against ``Booster.predict`` on every benchmark row (max |difference|).
2. With ``--workdir`` (a built work folder with a served conversion model, e.g. the one
   ``bench_causal_routing.py`` builds): ``Predictor.predict_json`` of one submission with the
   work folder's policy and with the same policy recording ``source: uplift`` and ``--model``,
   two predictors in this process; then the same through HTTP: two services
   (``python -m serving.launcher``) on 127.0.0.1, one per policy, ``POST /predict`` sent to
   them in turn, one request at a time (``--http-calls`` each).

Every figure is a p50 / p95 of wall time with the mean CPU time per call beside it (this
process's CPU for the in-process steps; the server's for HTTP, from ``/proc`` via psutil), and
the load average before and after. Last measured: docs/uplift.md, "Serving latency".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from leadscore.schemas import FOLLOWUP_CHANNELS  # noqa: E402
from routing.allocate import choose_one  # noqa: E402
from routing.control import LearnedAllocation, route_leads  # noqa: E402
from routing.policy import RoutingPolicy, load_policy  # noqa: E402
from serving.fast_forest import DistilledEffects  # noqa: E402
from training.uplift_registry import load_uplift_model  # noqa: E402

COST_WEIGHT = 0.003
SHADOW_PRICE = 0.01


def with_allocation(policy: RoutingPolicy, model: str | None = None) -> RoutingPolicy:
    """``policy`` recording a learned allocation (``source: uplift``)."""
    allocation: dict[str, Any] = {"source": "uplift", "cost_weight": COST_WEIGHT,
                                  "shadow_prices": {c: SHADOW_PRICE for c in FOLLOWUP_CHANNELS}}
    if model is not None:
        allocation["model"] = model
    return policy.with_cutoffs(policy.cutoffs, policy.version,
                               {**policy.optimization, "allocation": allocation})


def interleaved(steps: dict[str, Callable[[int], Any]], repeats: int,
                cpu: Callable[[str], float] | None = None) -> dict[str, dict[str, float]]:
    """Each step ``repeats`` times, the steps in turn (call ``i`` of every step before call
    ``i + 1`` of any, the order rotating): p50 / p95 wall ms and mean CPU ms per call
    (``cpu(step)``: CPU seconds so far; default this process's)."""
    if cpu is None:
        def cpu(_name: str) -> float:
            return time.process_time()
    names = list(steps)
    wall: dict[str, list[float]] = {n: [] for n in names}
    used: dict[str, float] = dict.fromkeys(names, 0.0)
    for i in range(repeats):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            c0, t0 = cpu(name), time.perf_counter()
            steps[name](i)
            wall[name].append(time.perf_counter() - t0)
            used[name] += cpu(name) - c0
    return {n: {"p50_ms": float(np.percentile(wall[n], 50)) * 1e3,
                "p95_ms": float(np.percentile(wall[n], 95)) * 1e3,
                "cpu_ms": used[n] / repeats * 1e3} for n in names}


def show(title: str, results: dict[str, dict[str, float]], base: str | None = None,
         against: str | None = None) -> None:
    print(f"\n{title}  (load {os.getloadavg()[0]:.2f})")
    for name, r in results.items():
        print(f"  {name:44s} p50 {r['p50_ms']:8.3f} ms  p95 {r['p95_ms']:8.3f} ms  "
              f"cpu {r['cpu_ms']:7.3f} ms/call")
    if base and against:
        print(f"  added at p50: {results[against]['p50_ms'] - results[base]['p50_ms']:.3f} ms "
              f"(cpu {results[against]['cpu_ms'] - results[base]['cpu_ms']:.3f} ms)")


def routing_step(model: Any, rows: pd.DataFrame, repeats: int) -> None:
    """Part 1: one lead's routing step, in process."""
    policy = with_allocation(load_policy())
    served = DistilledEffects(model, FOLLOWUP_CHANNELS)
    if served.walker is None:
        raise SystemExit("the model has no distilled boosters the walker covers")
    allocation = LearnedAllocation(policy)
    positions = [model.arms.index(c) for c in FOLLOWUP_CHANNELS]
    n = len(rows)
    columns = [{c: [rows[c].iloc[i]] for c in model.feature_columns} for i in range(n)]
    matrices = [model.encode_columns(one) for one in columns]
    probability, score = np.array([0.2]), np.array([50.0])
    costs = {c: float(policy.channels[c].cost_per_lead) for c in FOLLOWUP_CHANNELS}
    shadow = {c: SHADOW_PRICE for c in FOLLOWUP_CHANNELS}
    effects = [served(one) for one in columns]
    boosters = model.serving_models

    # agreement of the walker with Booster.predict on every row, alone and as one batch
    batch = np.vstack(matrices)
    reference = np.column_stack([b.predict(batch, num_threads=1) for b in boosters])
    alone = np.vstack([served.walker.predict(x) for x in matrices])
    print(f"ForestWalker vs Booster.predict on {n} rows: max |difference| "
          f"{np.abs(served.walker.predict(batch) - reference).max():.2e} (batch), "
          f"{np.abs(alone - reference).max():.2e} (one row at a time); "
          f"{served.walker.n_trees} trees, {served.walker.n_nodes} nodes")
    chosen = [choose_one(e[0], FOLLOWUP_CHANNELS, costs, shadow, COST_WEIGHT) for e in effects]
    ours = [allocation.names[allocation.choose(e)[0]] for e in effects]
    print(f"allocation rule == choose_one on {n} leads: {chosen == ours}")

    def lead(i: int) -> int:
        return i % n

    steps = {
        "today: tiers": lambda i: route_leads(["P1"], probability, score, policy,
                                              lead_ids=["L1"]),
        "uplift, served (walker, allocation at load)": lambda i: route_leads(
            ["P1"], probability, score, policy, lead_ids=["L1"],
            effects=served(columns[lead(i)]), allocation=allocation),
        "uplift, Booster.predict, allocation per call": lambda i: route_leads(
            ["P1"], probability, score, policy, lead_ids=["L1"],
            effects=model.fast_uplift(columns[lead(i)])[:, positions]),
    }
    for step in steps.values():  # warm up
        for i in range(20):
            step(i)
    show("routing step of one lead", interleaved(steps, repeats), "today: tiers",
         "uplift, served (walker, allocation at load)")
    parts = {
        "encode_columns": lambda i: model.encode_columns(columns[lead(i)]),
        "ForestWalker.predict (3 channels)": lambda i: served.walker.predict(matrices[lead(i)]),
        "3 x Booster.predict": lambda i: [b.predict(matrices[lead(i)], num_threads=1)
                                          for b in boosters],
        "LearnedAllocation.choose": lambda i: allocation.choose(effects[lead(i)]),
        "choose_one": lambda i: choose_one(effects[lead(i)][0], FOLLOWUP_CHANNELS, costs,
                                           shadow, COST_WEIGHT),
    }
    show("parts", interleaved(parts, repeats))
    full = {"effects by the full cross-fitted model": lambda i: model.uplift(
        pd.DataFrame(columns[lead(i)]))}
    show("the model the boosters were distilled from", interleaved(full, max(20, repeats // 20)))


def submission(lead_id: str) -> dict[str, Any]:
    """A ``POST /predict`` body of a new person (its arm drawn from its new person id)."""
    return {
        "lead_id": lead_id,
        "submitted_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "channel": "sem", "campaign": "winter-math-2026", "landing_page": "/trial/math",
        "funnel_step": "verified", "form": {"grade": "G5", "subject": "math", "city": "Hangzhou"},
        "identifiers": {"cookie_id": f"bench-{lead_id.lower()}"},
    }


def end_to_end(workdir: Path, model_path: Path, calls: int, http_calls: int) -> None:
    """Part 2: ``Predictor.predict_json`` and ``POST /predict``, tiers beside uplift."""
    import httpx
    import psutil

    from leadscore.config import Settings
    from routing.policy import resolve_active_policy, save_policy
    from serving.launcher import ServedService
    from serving.predictor import Predictor
    from serving.schemas import Submission

    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml_home"))
    settings = Settings().with_workdir(workdir)
    active = resolve_active_policy(settings).policy
    folder = Path(tempfile.mkdtemp(prefix="bench-allocation-"))
    files = {"tiers": save_policy(active, folder / "tiers.yaml"),
             "uplift": save_policy(with_allocation(active, str(model_path)),
                                   folder / "uplift.yaml")}

    predictors = {}
    for name, path in files.items():
        predictors[name] = Predictor.from_settings(
            settings.with_(routing_policy=path, journal_dir=folder / f"journal-{name}"))
        if not predictors[name].ready():
            raise SystemExit(f"no model in {workdir}: {predictors[name].load_error}")
    if predictors["uplift"].uplift is None:
        raise SystemExit(f"the uplift model {model_path} did not load (see the log above)")
    run = uuid.uuid4().hex[:6]
    subs = [Submission.model_validate(submission(f"L-{run}-{i}")) for i in range(calls + 50)]
    for i in range(50):
        for predictor in predictors.values():
            predictor.predict_json([subs[i]])
    # inside each request: the routing step as the request runs it (warm or not), i.e.
    # ``channel_effects`` + ``route`` (tiers: ``route`` alone, channel_effects is None)
    inside: dict[str, list[float]] = {name: [] for name in predictors}
    for name, predictor in predictors.items():
        def timed(method: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    spent.append(time.perf_counter() - started)
            return call

        spent: list[float] = []
        predictor.channel_effects = timed(predictor.channel_effects, spent)
        predictor.route = timed(predictor.route, spent)
        inside[name] = spent
    steps = {f"{name}: Predictor.predict_json": (
        lambda i, p=predictor: p.predict_json([subs[50 + i]]))
        for name, predictor in predictors.items()}
    results = interleaved(steps, calls)
    for name, spent in inside.items():  # two timed calls per request
        per_request = np.add(spent[0::2], spent[1::2]) * 1e3
        results[f"{name}: of which effects + route"] = {
            "p50_ms": float(np.percentile(per_request, 50)),
            "p95_ms": float(np.percentile(per_request, 95)), "cpu_ms": float("nan")}
    show("one submission end to end in process", results,
         "tiers: Predictor.predict_json", "uplift: Predictor.predict_json")
    added = (results["uplift: of which effects + route"]["p50_ms"]
             - results["tiers: of which effects + route"]["p50_ms"])
    print(f"  routing step inside the request, added at p50: {added:.3f} ms")
    for predictor in predictors.values():
        predictor.close()

    key = "bench-" + uuid.uuid4().hex
    services = {name: ServedService(workdir, folder / f"{name}.log", key,
                                    LEADSCORE_ROUTING_POLICY=str(path),
                                    LEADSCORE_JOURNAL_DIR=str(folder / f"served-{name}"))
                for name, path in files.items()}
    try:
        for service in services.values():
            service.wait_until("/readyz", timeout=180)
        clients = {name: httpx.Client(base_url=s.url, headers=s.headers, timeout=30)
                   for name, s in services.items()}
        servers = {name: psutil.Process(s.process.pid) for name, s in services.items()}

        def server_cpu(name: str) -> float:
            total = 0.0
            for proc in [servers[name], *servers[name].children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    continue
            return total

        arms: dict[str, dict[str, int]] = {name: {} for name in services}

        def post(name: str, i: int) -> None:
            answer = clients[name].post("/predict", json=submission(f"H-{run}-{name}-{i}"))
            answer.raise_for_status()
            arm = answer.json()["arm"]
            arms[name][arm] = arms[name].get(arm, 0) + 1

        for i in range(50):
            for name in services:
                post(name, -1 - i)
        steps = {f"{name}: POST /predict": (lambda i, name=name: post(name, i))
                 for name in services}
        results = interleaved(steps, http_calls,
                              cpu=lambda step: server_cpu(step.split(":")[0]))
        show("POST /predict through HTTP (cpu: the server's)", results,
             "tiers: POST /predict", "uplift: POST /predict")
        print(f"  arms answered: {arms}")
        for client in clients.values():
            client.close()
    finally:
        for service in services.values():
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=500, help="benchmark leads (cycled)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=500, help="in-process submissions each")
    parser.add_argument("--http-calls", type=int, default=500)
    args = parser.parse_args()
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores")
    model = load_uplift_model(args.model)
    rows = pd.read_parquet(args.features, columns=model.feature_columns).head(args.rows)
    routing_step(model, rows, args.repeats)
    if args.workdir is not None:
        end_to_end(args.workdir.resolve(), args.model.resolve(), args.calls, args.http_calls)
    print(f"\nload after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
