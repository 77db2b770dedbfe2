"""Serving speed: the in-process floor, then the served service under a fixed-rate load.

Needs a built work folder (``leadscore demo --workdir DIR``). Steps, all in one run:

1. in-process floor: ``Predictor.predict_json`` of one submission (what ``POST /predict`` runs:
   online read + model + reasons + routing + log hand-off + JSON, no HTTP), ``--floor-calls``
   times: p50/p99;
2. starts ``bentoml serve serving.service:LeadScoring`` on a free 127.0.0.1 port (or uses
   ``--url``, which must be a loopback address) and waits for ``/readyz``;
3. single ``POST /predict`` at a fixed rate (``--rate`` per second for ``--duration`` s) over
   keep-alive connections, from a separate light load generator so that the client does not eat
   the server's CPU: ``wrk`` (``apt-get install -y wrk``; a Lua script paces requests on a fixed
   schedule, latency from send to answer) when it is installed, otherwise (or with
   ``--generator python``) a spawned process of ``http.client`` threads on the same schedule:
   p50/p99/max, achieved rate and errors;
4. ``POST /predict_batch`` of ``--batch-size`` leads, ``--batch-repeats`` times: p50/min;
5. ratio served p50 / floor p50; one JSON line (also written to ``reports/bench_serving.json``);
   with ``--baseline FILE`` (an earlier run's JSON) the figures side by side, before → after;
   ``--skip-single`` leaves out step 3 (batch figures only).

Batch path (issue: 1,000 leads in ≤ 150 ms), same command, same machine (2 cores shared with
other jobs: the server CPU per batch is the steadier figure)::

                                  before  batch fix  writers niced  lookup codes
    /predict_batch p50 (ms)       1154.6    264.8    143.9          155.8 → 137.3, 120.3
    /predict_batch min (ms)        801.0    145.2    118.2          128.6 → 108.9, 100.5
    server CPU per batch (ms)      904.5    282.7    235.4          238.2 → 249.1, 239.1
    spaced batch p50 / min (ms)        -        -    134.2 / 120.7  132.0 / 121.4 →
                                                                    116.9 / 106.8, 111.9 / 101.4
    /predict p50 / p99 (ms)     1.7 / 11.5  1.5 / 4.9  1.7 / 4.2    1.6 / 4.0 → 1.7 / 4.1

(back to back: each batch overlaps the previous one's background writes; server CPU includes
the writes' drain afterwards, ~half of it; spaced: 1 s apart, drained. "lookup codes": the last
column is the same-day run before → two runs after: tree decisions by per-feature value codes
and per (tree, feature) lookup tables, ``serving.fast_treeshap.TreeTables._build_lookups``; in
process the request path of a batch went ~100 → ~84 ms.)

    .venv/bin/python benchmarks/bench_serving.py --workdir DIR --rate 200 --duration 20 \
        --floor-calls 500 --baseline BEFORE.json

Step 4 runs twice: back to back (the harder figure: the lead recorder's ~100 ms of SQLite
upserts and the prediction log of batch k run while batch k+1 is answered) and ``--batch-gap``
seconds apart (a CRM sending a form batch now and then). Both count the server CPU until its
background writes are done (``background_drain_s``: how long that took after the last answer).
The background writer threads run niced (``serving.log_writer.BACKGROUND_NICE``), which took
most of the back-to-back penalty away; the single known person of the benchmark gains 500
leads per batch, so later batches carry a longer history (both in the request and the write).

Before, a batch was ~1 ms per lead: the on-demand view re-evaluated the person history of every
row (JSON parse + ``snapshot_at`` per row; a person with many leads in one batch cost most), the
tree tables compared floats per node, the online read built a ``ValueProto`` per cell, and each
record drew its request id from the system's random source. See
``features.history.at_request_time``, ``serving.fast_treeshap.TreeTables.codes``,
``FastSqliteOnlineStore.online_read_columns``.

Timings on a shared 2-core machine depend on what else runs: each served step also reports the
server's CPU time per request (all its threads, from ``/proc`` via psutil, when the benchmark
started the server) and the load average around it, which move much less with the neighbours.

Load goes only to 127.0.0.1, is bounded in count (rate × duration) and time (duration + 60 s).

    .venv/bin/python benchmarks/bench_serving.py --workdir /tmp/svc --rate 200 --duration 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
        predictor.predict_json([sub])
    times = []
    for sub in subs:
        started = time.perf_counter()
        predictor.predict_json([sub])
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


# wrk script: one thread, every connection asks delay() for the next slot of a fixed schedule
# (rate per second), so the offered load does not depend on how fast answers come back while a
# connection is free. Lead ids are unique; every other lead is a brand-new cookie-only person.
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = 1000 / __RATE__
local next_at = nil
local counter = 0
local known_body = [==[__KNOWN__]==]
local new_body = [==[__NEW__]==]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"

function delay()
  local now = now_ms()
  if next_at == nil then next_at = now end
  next_at = next_at + interval
  local wait = next_at - now
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function request()
  counter = counter + 1
  local template = (counter % 2 == 0) and known_body or new_body
  local lead = "L-wrk-__RUN__-" .. counter
  return wrk.format(nil, "/predict", nil, (template:gsub("__LEAD__", lead)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _template(known: bool) -> str:
    """A submission JSON with ``__LEAD__`` in place of the lead id (and of the cookie)."""
    return json.dumps(body("__LEAD__", known=known)).replace("bench-__lead__", "bench-__LEAD__")


def wrk_fixed_rate(url: str, rate: float, duration: float, connections: int) -> dict[str, Any]:
    """Fixed-rate load with ``wrk`` (one thread); latency from send to answer."""
    script = (WRK_SCRIPT.replace("__RATE__", repr(float(rate)))
              .replace("__KNOWN__", _template(True)).replace("__NEW__", _template(False))
              .replace("__KEY__", KEY).replace("__RUN__", uuid.uuid4().hex[:8]))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        warm = [shutil.which("wrk"), "-t1", "-c2", "-d2s", "-s", fh.name, url]
        warmed = subprocess.run(warm, capture_output=True, text=True, timeout=30, check=False)
        command = [shutil.which("wrk"), "-t1", f"-c{connections}", f"-d{duration:.0f}s",
                   "--timeout", "10s", "-s", fh.name, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60,
                              check=False)
    finally:
        os.unlink(fh.name)
    line = _wrk_summary(done.stdout)
    if line is None:
        raise SystemExit(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line)
    warm_line = _wrk_summary(warmed.stdout)
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    elapsed = raw["duration_us"] / 1e6
    return {"p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "n": raw["requests"], "offered_rate": rate,
            "achieved_rate": round(raw["requests"] / elapsed, 1),
            "requests": raw["requests"], "errors": errors, "generator": "wrk",
            "warmup_requests": json.loads(warm_line)["requests"] if warm_line else 0}


def _wrk_summary(stdout: str) -> str | None:
    """The JSON line the wrk script's ``done()`` prints, if any."""
    return next((ln for ln in stdout.splitlines() if ln.startswith('{"requests"')), None)


def _python_load(url: str, key: str, rate: float, duration: float, connections: int,
                 out: Any) -> None:
    """Load-generator process: ``connections`` threads, each with a keep-alive connection,
    send request i at start + i / rate (thread i mod connections); results go to ``out``."""
    target = urlparse(url)
    total = int(rate * duration)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    templates = (_template(True), _template(False))
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    began = time.perf_counter() + 0.5
    deadline = began + duration + 60

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        for i in range(first, total, connections):
            at = began + i / rate
            if at > deadline:
                break
            pause = at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            payload = templates[i % 2].replace("__LEAD__", f"L-py-{run}-{i}").encode()
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                status = type(exc).__name__
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((latencies, errors, time.perf_counter() - began))


def python_fixed_rate(url: str, rate: float, duration: float, connections: int
                      ) -> dict[str, Any]:
    """Fixed-rate load from a spawned process of ``http.client`` threads (no wrk needed)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_python_load,
                              args=(url, KEY, rate, duration, connections, out))
    process.start()
    latencies, errors, elapsed = out.get(timeout=duration + 120)
    process.join(timeout=30)
    result = percentiles(latencies) if latencies else {"n": 0}
    result.update({"offered_rate": rate, "achieved_rate": round(len(latencies) / elapsed, 1),
                   "requests": int(rate * duration), "errors": errors, "generator": "python"})
    return result


def fixed_rate(url: str, rate: float, duration: float, connections: int, generator: str
               ) -> dict[str, Any]:
    """Single ``/predict`` at a fixed rate with ``generator`` (``auto``: wrk when installed)."""
    if generator == "wrk" or (generator == "auto" and shutil.which("wrk")):
        if not shutil.which("wrk"):
            raise SystemExit("wrk is not installed (apt-get install -y wrk)")
        return wrk_fixed_rate(url, rate, duration, connections)
    return python_fixed_rate(url, rate, duration, connections)


def batch_timing(url: str, size: int, repeats: int, gap: float = 0.0) -> dict[str, Any]:
    """``POST /predict_batch`` of ``size`` leads, ``repeats`` times, sequentially; with ``gap``
    seconds of quiet before each one (the server's background writes of the previous batch,
    lead recorder and prediction log, have drained), else back to back (they overlap the next
    batch: the harder figure)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    times = []
    run = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        for r in range(repeats + 1):
            batch = {"submissions": [body(f"L-batch-{run}-{r}-{i}", known=i % 2 == 0)
                                     for i in range(size)]}
            if gap:
                time.sleep(gap)
            started = time.perf_counter()
            response = client.post("/predict_batch", json=batch)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or len(response.json()["predictions"]) != size:
                raise SystemExit(f"batch failed: {response.status_code} {response.text[:200]}")
            if r:  # the first one warms up
                times.append(elapsed)
    return {"p50_ms": round(statistics.median(times) * 1000, 1),
            "min_ms": round(min(times) * 1000, 1), "max_ms": round(max(times) * 1000, 1),
            "size": size, "repeats": repeats, "gap_s": gap,
            "mode": f"spaced ({gap:g} s apart)" if gap else "back to back"}


class ServerCpu:
    """CPU seconds of a started server's process tree (psutil), per unit of a measured step."""

    def __init__(self, process: subprocess.Popen | None) -> None:
        self.process = process

    def _seconds(self) -> float | None:
        if self.process is None:
            return None
        try:
            import psutil

            root = psutil.Process(self.process.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
            return total
        except Exception:  # noqa: BLE001 - no psutil, a process gone: no CPU figure
            return None

    def idle_ms_per_second(self, seconds: float) -> float | None:
        """Server CPU ms per second while no request is sent, over ``seconds``."""
        before = self._seconds()
        time.sleep(seconds)
        after = self._seconds()
        if before is None or after is None:
            return None
        return round((after - before) * 1000 / seconds, 2)

    def settle(self, limit: float = 15.0, tick: float = 0.25) -> float | None:
        """Wait until the server's CPU stops moving (its background writes are done: less than
        2 ms of CPU in a ``tick``); the seconds waited (None without a CPU figure)."""
        started = time.monotonic()
        last = self._seconds()
        if last is None:
            return None
        while time.monotonic() - started < limit:
            time.sleep(tick)
            now = self._seconds()
            if now is None or now - last < 0.002:
                break
            last = now
        return round(time.monotonic() - started - tick, 2)

    def measure(self, step: Any, units: Any, name: str, drain: bool = False) -> dict[str, Any]:
        """Run ``step()``; add CPU ms per ``units(result)`` and the load average around it.
        With ``drain``, the CPU counted runs until the server's background work after the step
        is done too (``settle``), and ``background_drain_s`` says how long that took after the
        last answer."""
        before, load_before = self._seconds(), os.getloadavg()[0]
        result = step()
        load_after = os.getloadavg()[0]
        if drain:
            waited = self.settle()
            if waited is not None:
                result["background_drain_s"] = max(0.0, waited)
        after = self._seconds()
        if before is not None and after is not None and units(result):
            result[name] = round((after - before) * 1000 / units(result), 2)
        result["load_average"] = [round(load_before, 2), round(load_after, 2)]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--url", help="a running service on 127.0.0.1 (default: start one)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed, else python)")
    parser.add_argument("--skip-floor", action="store_true", help="no in-process floor")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-repeats", type=int, default=10)
    parser.add_argument("--floor-calls", type=int, default=2000)
    parser.add_argument("--batch-gap", type=float, default=1.0,
                        help="seconds between the spaced batches (after the back-to-back "
                             "ones; 0: back to back only)")
    parser.add_argument("--skip-single", action="store_true",
                        help="no fixed-rate /predict step (batch figures only)")
    parser.add_argument("--baseline", type=Path,
                        help="an earlier run's JSON (reports/bench_serving.json): print the "
                             "figures side by side")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    workdir = args.workdir.expanduser().resolve()
    if args.url and urlparse(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("--url must be a loopback address (127.0.0.1)")
    if args.rate * args.duration > 100_000:
        raise SystemExit("refusing more than 100,000 requests in one run")
    baseline = None
    if args.baseline is not None:  # read before the run, not after a minute of load
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(
                f"--baseline {args.baseline}: not a readable JSON file ({exc})") from None

    floor = {"p50_ms": float("nan")} if args.skip_floor else measure_floor(workdir,
                                                                           args.floor_calls)
    print(f"in-process floor (Predictor.predict_json, 1 lead): {floor}", flush=True)
    process = None
    url = args.url
    if url is None:
        process, url = start_server(workdir)
    elif args.url:
        global KEY
        KEY = os.environ.get("LEADSCORE_API_KEY", "")
    cpu = ServerCpu(process)
    try:
        single: dict[str, Any] = {"skipped": True}
        if not args.skip_single:
            single = cpu.measure(
                lambda: fixed_rate(url, args.rate, args.duration, args.connections,
                                   args.generator),
                lambda r: r["requests"] + r.get("warmup_requests", 0),
                "server_cpu_ms_per_request")
            print(f"POST /predict at {args.rate:.0f}/s for {args.duration:.0f}s: {single}")
        cpu.settle()
        batch = cpu.measure(lambda: batch_timing(url, args.batch_size, args.batch_repeats),
                            lambda r: r["repeats"] + 1, "server_cpu_ms_per_batch", drain=True)
        print(f"POST /predict_batch of {args.batch_size}, back to back (each batch overlaps "
              f"the background writes of the one before): {batch}", flush=True)
        spaced: dict[str, Any] = {"skipped": True}
        if args.batch_gap > 0:
            idle = cpu.idle_ms_per_second(2.0)
            spaced = cpu.measure(
                lambda: batch_timing(url, args.batch_size, args.batch_repeats, args.batch_gap),
                lambda r: r["repeats"] + 1, "server_cpu_ms_per_batch", drain=True)
            if idle is not None and "server_cpu_ms_per_batch" in spaced:
                # the idle server's own ticking during the gaps is not the batches' work
                spaced["server_idle_cpu_ms_per_s"] = idle
                spaced["server_cpu_ms_per_batch_net_of_idle"] = round(
                    spaced["server_cpu_ms_per_batch"] - idle * args.batch_gap, 2)
            print(f"POST /predict_batch of {args.batch_size}, spaced {args.batch_gap:g} s apart "
                  f"(background writes drained): {spaced}", flush=True)
    finally:
        if process is not None:
            stop_server(process)
    result = {
        "floor": floor, "single": single, "batch": batch, "batch_spaced": spaced,
        "served_p50_over_floor_p50": round(single.get("p50_ms", float("nan"))
                                           / floor["p50_ms"], 2),
        "targets": {"single_p50_ms": 3, "single_p99_ms": 10, "batch_1000_ms": 150},
        "machine_cpus": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(),
    }
    if baseline is not None:
        result["baseline"] = side_by_side(baseline, result)
    (workdir / "reports").mkdir(parents=True, exist_ok=True)
    (workdir / "reports" / "bench_serving.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


FIGURES = (
    ("batch", "p50_ms", "/predict_batch p50 (ms)"),
    ("batch", "min_ms", "/predict_batch min (ms)"),
    ("batch", "server_cpu_ms_per_batch", "server CPU per batch (ms)"),
    ("batch_spaced", "p50_ms", "spaced batch p50 (ms)"),
    ("batch_spaced", "min_ms", "spaced batch min (ms)"),
    ("batch_spaced", "server_cpu_ms_per_batch_net_of_idle", "spaced: server CPU/batch (ms)"),
    ("single", "p50_ms", "/predict p50 (ms)"),
    ("single", "p99_ms", "/predict p99 (ms)"),
    ("single", "server_cpu_ms_per_request", "server CPU per request (ms)"),
    ("floor", "p50_ms", "in-process floor p50 (ms)"),
)


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Print ``before`` and ``after`` figures in two columns; return them as a dict."""
    rows: dict[str, Any] = {}
    print(f"{'':32s}{'before':>10s}{'after':>10s}")
    for step, key, label in FIGURES:
        old, new = before.get(step, {}).get(key), after.get(step, {}).get(key)
        rows[label] = {"before": old, "after": new}
        print(f"{label:32s}{_cell(old):>10s}{_cell(new):>10s}")
    rows["before_at"] = before.get("at")
    return rows


def _cell(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


if __name__ == "__main__":
    main()
