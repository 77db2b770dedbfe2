"""Serving speed: the in-process floor, then the served service under a fixed-rate load.

Needs a built work folder (``leadscore demo --workdir DIR``). Steps, all in one run:

1. in-process floor: ``Predictor.predict`` of one submission (online read + model + reasons +
   routing + log hand-off, no HTTP), ``--floor-calls`` times: p50/p99;
2. starts ``bentoml serve serving.service:LeadScoring`` on a free 127.0.0.1 port (or uses
   ``--url``, which must be a loopback address) and waits for ``/readyz``;
3. single ``POST /predict`` at a fixed rate (``--rate`` per second for ``--duration`` s; an
   open-loop schedule, so a slow answer does not slow the offered load) from this process over
   keep-alive connections: p50/p99/max and errors;
4. ``POST /predict_batch`` of ``--batch-size`` leads, ``--batch-repeats`` times: p50/min;
5. ratio served p50 / floor p50; one JSON line (also written to ``reports/bench_serving.json``).

Load goes only to 127.0.0.1, is bounded in count (rate × duration) and time (duration + 60 s).

    .venv/bin/python benchmarks/bench_serving.py --workdir /tmp/svc --rate 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "bench-key-" + uuid.uuid4().hex


def body(lead_id: str, known: bool = True) -> dict[str, Any]:
    """One submission (the issue's example); ``known=False`` gives a brand-new cookie only."""
    identifiers: dict[str, Any] = (
        {"phone": "+86 138 0013 8000", "wechat_id": "wx_abc123", "email": None,
         "cookie_id": "c-9f8e7d"} if known else {"cookie_id": f"bench-{lead_id.lower()}"})
    return {
        "lead_id": lead_id,
        "submitted_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "channel": "sem", "campaign": "winter-math-2026", "landing_page": "/trial/math",
        "funnel_step": "verified", "form": {"grade": "G5", "subject": "math", "city": "Hangzhou"},
        "identifiers": identifiers,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ms = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "n": len(values)}


def measure_floor(workdir: Path, calls: int) -> dict[str, Any]:
    """``Predictor.predict`` of one submission, in this process."""
    os.environ["LEADSCORE_WORKDIR"] = str(workdir)
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml_home"))
    from leadscore.config import get_settings

    get_settings.cache_clear()
    from serving.predictor import Predictor
    from serving.schemas import Submission

    predictor = Predictor.from_settings(get_settings())
    if not predictor.ready():
        raise SystemExit(f"no model in {workdir}: {predictor.load_error}")
    subs = [Submission.model_validate(body(f"L-floor-{i}")) for i in range(calls)]
    for sub in subs[:50]:
        predictor.predict([sub])
    times = []
    for sub in subs:
        started = time.perf_counter()
        predictor.predict([sub])
        times.append(time.perf_counter() - started)
    predictor.close()
    return percentiles(times)


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    """``bentoml serve`` on a free loopback port; returns the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, LEADSCORE_WORKDIR=str(workdir), LEADSCORE_API_KEY=KEY,
               BENTOML_HOME=os.environ.get("BENTOML_HOME", str(workdir / "bentoml_home")),
               BENTOML_DO_NOT_TRACK="True", PYTHONWARNINGS="ignore")
    log = open(workdir / "bench_serving_server.log", "wb")  # noqa: SIM115 - lives with the server
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:LeadScoring",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise SystemExit(f"the service did not become ready; see {workdir}/bench_serving_server.log")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def fixed_rate(url: str, rate: float, duration: float, connections: int
                     ) -> dict[str, Any]:
    """Open-loop load: request i is sent at start + i / rate; latencies of all answers."""
    total = int(rate * duration)
    headers = {"Authorization": f"Bearer {KEY}"}
    payloads = [json.dumps(body(f"L-bench-{uuid.uuid4().hex[:12]}", known=i % 2 == 0))
                for i in range(total)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10,
                                 headers={**headers, "Content-Type": "application/json"}
                                 ) as client:
        for _ in range(20):  # warm up connections and the service
            await client.post("/predict", content=payloads[0])

        async def one(i: int, at: float) -> None:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.perf_counter()
            try:
                response = await client.post("/predict", content=payloads[i])
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    return
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - started)

        began = time.perf_counter() + 0.2
        tasks = [asyncio.create_task(one(i, began + i / rate)) for i in range(total)]
        done, pending = await asyncio.wait(tasks, timeout=duration + 60)
        for task in pending:  # bounded in time: what is still waiting counts as an error
            task.cancel()
        if pending:
            errors["unanswered_at_deadline"] = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
        elapsed = min(time.perf_counter() - began, duration + 60)
    result = percentiles(latencies) if latencies else {"n": 0}
    result.update({"offered_rate": rate, "achieved_rate": round(len(latencies) / elapsed, 1),
                   "requests": total, "errors": errors})
    return result


def batch_timing(url: str, size: int, repeats: int) -> dict[str, Any]:
    """``POST /predict_batch`` of ``size`` leads, ``repeats`` times, sequentially."""
    headers = {"Authorization": f"Bearer {KEY}"}
    times = []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        for r in range(repeats + 1):
            batch = {"submissions": [body(f"L-batch-{r}-{i}", known=i % 2 == 0)
                                     for i in range(size)]}
            started = time.perf_counter()
            response = client.post("/predict_batch", json=batch)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or len(response.json()["predictions"]) != size:
                raise SystemExit(f"batch failed: {response.status_code} {response.text[:200]}")
            if r:  # the first one warms up
                times.append(elapsed)
    return {"p50_ms": round(statistics.median(times) * 1000, 1),
            "min_ms": round(min(times) * 1000, 1), "size": size, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--url", help="a running service on 127.0.0.1 (default: start one)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-repeats", type=int, default=10)
    parser.add_argument("--floor-calls", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    workdir = args.workdir.expanduser().resolve()
    if args.url and urlparse(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("--url must be a loopback address (127.0.0.1)")
    if args.rate * args.duration > 100_000:
        raise SystemExit("refusing more than 100,000 requests in one run")

    floor = measure_floor(workdir, args.floor_calls)
    print(f"in-process floor (Predictor.predict, 1 lead): {floor}")
    process = None
    url = args.url
    if url is None:
        process, url = start_server(workdir)
    elif args.url:
        global KEY
        KEY = os.environ.get("LEADSCORE_API_KEY", "")
    try:
        single = asyncio.run(fixed_rate(url, args.rate, args.duration, args.connections))
        print(f"POST /predict at {args.rate:.0f}/s for {args.duration:.0f}s: {single}")
        batch = batch_timing(url, args.batch_size, args.batch_repeats)
        print(f"POST /predict_batch of {args.batch_size}: {batch}")
    finally:
        if process is not None:
            stop_server(process)
    result = {
        "floor": floor, "single": single, "batch": batch,
        "served_p50_over_floor_p50": round(single.get("p50_ms", float("nan"))
                                           / floor["p50_ms"], 2),
        "targets": {"single_p50_ms": 3, "single_p99_ms": 10, "batch_1000_ms": 150},
        "machine_cpus": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(),
    }
    (workdir / "reports").mkdir(parents=True, exist_ok=True)
    (workdir / "reports" / "bench_serving.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
