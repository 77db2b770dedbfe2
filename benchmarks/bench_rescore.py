"""Re-scoring speed: the batch path, event → webhook latency, and /predict beside the events.

Needs a built work folder (``leadscore demo --workdir DIR``). Steps, all in one run:

1. batch path, in process: ``Rescorer.rescore`` of ``--batch-leads`` leads (the work folder's
   own leads, their persons' online rows, the champion) in chunks of 500, then the same with
   the lead-state transaction (``apply_rescores``): leads/s;
2. starts the service (``python -m serving.launcher``) on a free 127.0.0.1 port with its
   webhook pointed at a real HTTP receiver in this process (loopback only, signature checked,
   de-duplicated by idempotency key), and registers ``--leads`` fresh leads through
   ``/predict_batch`` (at the form's step, on persons of the work folder);
3. ``/predict`` alone at ``--predict-rate`` per second for ``--predict-duration`` s (a spawned
   process of ``http.client`` threads: ``bench_serving.python_fixed_rate``);
4. events alone at ``--event-rate`` per second for ``--duration`` s (another spawned process:
   single-event ``POST /events``, half funnel steps moving a lead forward, half behaviour
   events of the lead's person): p50/p99/max of event accepted (its 200) → webhook received,
   over the events whose re-score changed a tier or channel; events accepted vs notifications
   queued vs received (none may be missing);
5. ``/predict`` at ``--predict-rate`` while the events of step 4 run again: p99 side by side
   with step 3.

Each figure carries the 1-minute load average before and after (``os.getloadavg``): the CPU is
shared with other jobs. One JSON line (also ``reports/bench_rescore.json``).

    nice -n 10 .venv/bin/python benchmarks/bench_rescore.py --workdir DIR \\
        --event-rate 200 --duration 60 --predict-rate 200 --predict-duration 30

Last measured (2026-12-07, quiet 2-core machine, load 0.6 -> 1.6; the 20,000-lead main job's
work folder; docs/scaling.md, "Re-scoring on events and the CRM webhook"), beside the targets:

    batch path               2,915 leads/s wall, 4,329/CPU-s (5,180/s with store)  >= 2,000/s
    event -> webhook         p50 30 ms, p99 67 ms, max 94 ms (200/s, 60 s)         p99 <= 1 s
    notifications lost       0 (3,752 delivered, each key once, 0 dead)            0
    /predict 200/s alone     200/s achieved, p50 8.8 ms, p99 62 ms                 p99 <= 10 ms
    /predict + 200 events/s  176/s achieved, p50 44 ms, p99 85 ms (missed: the service, two
                             Python load generators and the receiver share 2 cores)

Load goes only to 127.0.0.1, bounded in count (rate × duration) and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serving  # noqa: E402 - the /predict load generator and the shared key

SECRET = "bench-webhook-" + uuid.uuid4().hex[:8]
STEPS = ("verified", "followed_account", "booked_trial")
BEHAVIOUR = ("web_visit", "pricing_page", "course_page", "live_class", "trial_class")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "n": len(values)}


# ---- 1. the batch path --------------------------------------------------------------------------
def work_leads(settings: Any, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` leads of the work folder: form fields and their persons (One ID)."""
    import pandas as pd

    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    persons = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    leads = leads.merge(persons, on="lead_id").sample(n=min(n, len(leads)), random_state=seed)
    out = []
    for row in leads.itertuples():
        out.append({
            "lead_id": row.lead_id, "person_id": row.person_id,
            "form": {"channel": row.channel, "campaign": row.campaign,
                     "landing_page": row.landing_page, "grade": row.grade,
                     "subject": row.subject, "city_tier": None if pd.isna(row.city_tier)
                     else int(row.city_tier), "device": row.device, "funnel_step": "submitted",
                     "phone_valid": bool(row.phone_valid),
                     "email_domain_type": row.email_domain_type}})
    return out


def batch_path(workdir: Path, n: int) -> dict[str, Any]:
    """Leads/s of ``Rescorer.rescore`` and of rescore + the lead-state transaction."""
    import tempfile

    from crm_data.lead_state import LeadRow, LeadStateStore, now_us
    from leadscore.config import load_settings
    from serving.predictor import Predictor
    from serving.rescoring import Rescorer

    settings = load_settings().with_workdir(workdir)
    predictor = Predictor.from_settings(settings, background_log=False)
    rows = work_leads(settings, n)
    now = now_us()
    with tempfile.TemporaryDirectory() as tmp:
        store = LeadStateStore.sqlite(Path(tmp) / "lead_state.sqlite")
        rescorer = Rescorer(predictor, settings, store)
        leads = [LeadRow(r["lead_id"], r["person_id"], now - 3_600_000_000, r["form"],
                         {}, "submitted", "open", 0.05, "C", "tmk", False, "0", 0.05, "C",
                         now - 3_600_000_000, "C", "tmk") for r in rows]
        store.register(leads, [])
        at = {lead.lead_id: now for lead in leads}
        causes = {lead.lead_id: ("booked_trial", now) for lead in leads}
        for lead in leads[: len(leads) // 2]:
            lead.funnel_step = "booked_trial"
        rescorer.rescore(leads[:100], at, causes)  # warm-up
        began, cpu = time.perf_counter(), time.process_time()
        results = [rescorer.rescore(leads[i:i + 500], at, causes)
                   for i in range(0, len(leads), 500)]
        score_s, score_cpu = time.perf_counter() - began, time.process_time() - cpu
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(leads), 500):
            result = rescorer.rescore(leads[i:i + 500], at, causes)
            store.apply_rescores(result.leads, result.history, result.messages, [])
        stored_s, stored_cpu = time.perf_counter() - began, time.process_time() - cpu
        changed = sum(len(r.messages) for r in results)
        store.close()
    predictor.close()
    # per CPU-second: what one free core gives, whatever else the machine runs
    return {"leads": len(leads), "rescore_leads_per_s": round(len(leads) / score_s),
            "rescore_leads_per_cpu_s": round(len(leads) / score_cpu),
            "rescore_and_store_leads_per_s": round(len(leads) / stored_s),
            "rescore_and_store_leads_per_cpu_s": round(len(leads) / stored_cpu),
            "notifications": changed, "load": load()}


# ---- the service and its load -------------------------------------------------------------------
def register_leads(url: str, n: int) -> list[str]:
    """``n`` fresh leads at the form's step (varied forms, new persons), through
    /predict_batch."""
    import httpx

    from tests.integration.webhook_receiver import varied_submissions

    run = uuid.uuid4().hex[:6]
    ids = [f"L-bench-{run}-{i}" for i in range(n)]
    subs = varied_submissions(ids, seed=3)
    for start in range(0, n, 1000):
        answer = httpx.post(url + "/predict_batch", json={"submissions": subs[start:start + 1000]},
                            timeout=120, headers={"Authorization": f"Bearer {bench_serving.KEY}"})
        answer.raise_for_status()
    return ids


def event_plan(lead_ids: list[str], total: int, seed: int = 5) -> list[dict[str, Any]]:
    """Events without times: half funnel steps (each lead moves forward), half behaviour."""
    rng = random.Random(seed)
    step_of = {lead: 0 for lead in lead_ids}
    plan = []
    for _ in range(total):
        lead = rng.choice(lead_ids)
        if rng.random() < 0.5 and step_of[lead] < len(STEPS):
            plan.append({"lead_id": lead, "event_type": STEPS[step_of[lead]]})
            step_of[lead] += 1
        else:
            plan.append({"lead_id": lead, "event_type": rng.choice(BEHAVIOUR),
                         "url": "/pricing" if rng.random() < 0.3 else "/course/math"})
    return plan


def _events_load(url: str, key: str, rate: float, plan: list[dict[str, Any]],
                 connections: int, out: Any) -> None:
    """Load-generator process: event i at start + i / rate; (event_us, accepted_at, status)."""
    target = urlparse(url)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    results: list[tuple[int, float, int | str]] = []
    lock = threading.Lock()
    began = time.perf_counter() + 0.5

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        for i in range(first, len(plan), connections):
            pause = began + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            now = datetime.now(UTC)
            event = {**plan[i], "event_time": now.isoformat()}
            event_us = int(round(now.timestamp() * 1e6))
            try:
                conn.request("POST", "/events", body=json.dumps({"events": [event]}),
                             headers=headers)
                response = conn.getresponse()
                response.read()
                status: int | str = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                status = type(exc).__name__
            with lock:
                results.append((event_us, time.time(), status))
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((results, time.perf_counter() - began))


def run_events(url: str, rate: float, plan: list[dict[str, Any]], receiver: Any,
               connections: int = 8) -> dict[str, Any]:
    """Send ``plan`` at ``rate``; join accepted events with webhook arrivals by event time."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    before = load()
    seen_before = set(receiver.deliveries)
    process = context.Process(target=_events_load,
                              args=(url, bench_serving.KEY, rate, plan, connections, out))
    process.start()
    results, elapsed = out.get(timeout=len(plan) / rate + 600)
    process.join(timeout=30)
    accepted = {event_us: at for event_us, at, status in results if status == 200}
    errors: dict[str, int] = {}
    for _, _, status in results:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    time.sleep(3)  # the last notifications
    latencies = []
    new = [d for key, d in list(receiver.deliveries.items()) if key not in seen_before]
    for delivery in new:
        cause = datetime.fromisoformat(delivery.body["cause"]["event_time"])
        event_us = int(round(cause.timestamp() * 1e6))
        if event_us in accepted:
            latencies.append(delivery.received - accepted[event_us])
    return {"events": len(plan), "accepted": len(accepted), "errors": errors,
            "offered_rate": rate, "achieved_rate": round(len(results) / elapsed, 1),
            "notifications_received": len(new),
            "accepted_to_webhook": percentiles(latencies), "load_before": before,
            "load_after": load()}


def outbox_counts(workdir: Path) -> dict[str, Any]:
    from crm_data.lead_state import LeadStateStore

    with LeadStateStore.sqlite(workdir / "data" / "lead_state.sqlite") as store:
        return store.outbox_status()["counts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--batch-leads", type=int, default=3000)
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--event-rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--predict-rate", type=float, default=200.0)
    parser.add_argument("--predict-duration", type=float, default=30.0)
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    # SIGTERM stops the service this run started too (the ``finally`` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from serving.launcher import ServedService
    from tests.integration.webhook_receiver import WebhookReceiver

    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    if not args.skip_batch:
        report["batch_path"] = batch_path(workdir, args.batch_leads)
        print(json.dumps({"batch_path": report["batch_path"]}), flush=True)
    log_path = workdir / "reports" / "bench_rescore_service.log"
    with WebhookReceiver(SECRET) as receiver:
        service = ServedService(workdir, log_path, bench_serving.KEY,
                                LEADSCORE_WEBHOOK_URL=receiver.url,
                                LEADSCORE_WEBHOOK_SECRET=SECRET)
        try:
            service.wait_until("/readyz", timeout=180)
            lead_ids = register_leads(service.url, args.leads)
            time.sleep(2)
            report["predict_alone"] = {
                **bench_serving.python_fixed_rate(service.url, args.predict_rate,
                                                  args.predict_duration, 8),
                "load_after": load()}
            print(json.dumps({"predict_alone": report["predict_alone"]}), flush=True)
            total = int(args.event_rate * args.duration)
            report["events"] = run_events(service.url, args.event_rate,
                                          event_plan(lead_ids, total), receiver)
            print(json.dumps({"events": report["events"]}), flush=True)
            # /predict while events are re-scored: both loads at once
            plan = event_plan(lead_ids, int(args.event_rate * (args.predict_duration + 5)), 9)
            side: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: side.update(
                run_events(service.url, args.event_rate, plan, receiver)))
            thread.start()
            time.sleep(2)
            report["predict_with_events"] = {
                **bench_serving.python_fixed_rate(service.url, args.predict_rate,
                                                  args.predict_duration, 8),
                "load_after": load()}
            thread.join()
            report["events_beside_predict"] = side
            time.sleep(2)
            report["outbox"] = outbox_counts(workdir)
            report["receiver"] = {"distinct": len(receiver.deliveries),
                                  "duplicates": receiver.duplicates,
                                  "bad_signatures": receiver.bad_signatures}
        finally:
            service.stop()
    line = json.dumps(report)
    print(line)
    (workdir / "reports").mkdir(exist_ok=True)
    (workdir / "reports" / "bench_rescore.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
