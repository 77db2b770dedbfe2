"""Fault scenarios against the real service: what it answered, what it got wrong, what it lost.

Needs a built work folder (``leadscore demo --workdir DIR``). Each scenario copies it into a
scratch folder (the original is never served or written), starts the real service on it
(``serving.launcher.ServedService``: ``bentoml serve`` on a free 127.0.0.1 port), injects its
fault under load and returns one row:

* ``answered``   — requests answered 200;
* ``wrong``      — answers that were wrong (a scenario's own check, e.g. not degraded while
  the person's features are incomplete);
* ``lost``       — answered predictions missing from the prediction log afterwards;
* ``recovery_s`` — seconds from the end of the fault until the service was ready again;
* ``notes``      — a short free text (figures that belong to this fault only).

Scenarios live in ``SCENARIOS`` (name → function of a :class:`FaultContext` returning such a
dict). To add one, write ``def my_fault(ctx: FaultContext) -> dict[str, Any]`` and register it
in ``SCENARIOS``; the helpers ``ctx.scratch()``, ``ctx.serve()``, ``ctx.load()`` and
``logged_lead_ids()`` do the common work.

    .venv/bin/python benchmarks/bench_faults.py --workdir DIR            # every scenario
    .venv/bin/python benchmarks/bench_faults.py --workdir DIR --only kill9_under_load \\
        --rate 200 --duration 20

Load goes only to 127.0.0.1 and is bounded (rate × duration, at most 100,000 requests).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.launcher import ServedService, free_port  # noqa: E402

KEY = "fault-key-" + uuid.uuid4().hex
DURABLE_HEADER = "x-leadscore-durable"  # see docs/api.md, "Durability of the prediction log"
ROW_FIELDS = ("answered", "wrong", "lost", "recovery_s")


# ---- helpers shared by the scenarios ---------------------------------------------------------
def submission(lead_id: str, known: bool = True) -> dict[str, Any]:
    """A valid ``/predict`` body (the serving benchmark's); ``known=False`` gives a brand-new
    cookie-only person."""
    from bench_serving import body  # same folder

    return body(lead_id, known)


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    """p50/p99/max in milliseconds (None without values)."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


@dataclass
class LoadResult:
    """What a fixed-rate load saw: per answered-200 lead id its latency and durability."""

    answered: dict[str, float] = field(default_factory=dict)  # lead id → seconds
    not_durable: set[str] = field(default_factory=set)  # answered 200 without durability
    errors: dict[str, int] = field(default_factory=dict)  # status or exception → count
    sent: int = 0

    def latency(self) -> dict[str, float | None]:
        return percentiles(list(self.answered.values()))


class Load:
    """``/predict`` at a fixed rate from ``connections`` threads (keep-alive), in the background.

    Request i goes at start + i / rate; every other lead is a brand-new person. ``stop()`` ends
    it early; ``join()`` waits and returns the :class:`LoadResult`.
    """

    def __init__(self, url: str, rate: float, duration: float, connections: int = 8,
                 timeout: float = 10.0, prefix: str | None = None) -> None:
        self.url, self.rate, self.duration = url, rate, duration
        self.connections, self.timeout = connections, timeout
        self.prefix = prefix or "L-fault-" + uuid.uuid4().hex[:8]
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._worker, args=(t,), daemon=True)
                         for t in range(connections)]
        self._began = time.perf_counter() + 0.2
        for thread in self._threads:
            thread.start()

    def _worker(self, first: int) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        total = int(self.rate * self.duration)
        for i in range(first, total, self.connections):
            if self._stop.is_set():
                break
            pause = self._began + i / self.rate - time.perf_counter()
            if pause > 0 and self._stop.wait(pause):
                break
            lead = f"{self.prefix}-{i}"
            payload = json.dumps(submission(lead, known=i % 2 == 0)).encode()
            started = time.perf_counter()
            durable = None
            try:
                conn.request("POST", "/predict", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                status: str | int = response.status
                durable = response.getheader(DURABLE_HEADER)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
                status = type(exc).__name__
            elapsed = time.perf_counter() - started
            with self._lock:
                self.result.sent += 1
                if status == 200:
                    self.result.answered[lead] = elapsed
                    if durable == "false":
                        self.result.not_durable.add(lead)
                else:
                    self.result.errors[str(status)] = self.result.errors.get(str(status), 0) + 1
        conn.close()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> LoadResult:
        for thread in self._threads:
            thread.join(timeout=self.duration + 2 * self.timeout + 30)
        return self.result


def probe(url: str, path: str, timeout: float = 2.0) -> tuple[int | str, float, str]:
    """(status or exception name, seconds, body) of ``GET path``."""
    started = time.perf_counter()
    try:
        response = httpx.get(url + path, timeout=timeout)
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - started, ""
    return response.status_code, time.perf_counter() - started, response.text


def wait_for(url: str, path: str, status: int, timeout: float, tick: float = 0.1
             ) -> float | None:
    """Seconds until ``GET path`` answers ``status`` (None: not within ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe(url, path, timeout=min(2.0, timeout))[0] == status:
            return round(time.monotonic() - started, 2)
        time.sleep(tick)
    return None


def logged_lead_ids(workdir: Path, **env: str) -> set[str]:
    """Lead ids in the work folder's prediction log (read in a child process: the settings of
    ``workdir`` and ``env``, not this process's)."""
    code = ("import json,sys\n"
            "from leadscore.config import load_settings\n"
            "from crm_data.prediction_log import open_prediction_log\n"
            "log = open_prediction_log(load_settings())\n"
            "print(json.dumps(sorted(set(log.read()['lead_id']))))\n"
            "log.close()\n")
    environment = dict(os.environ, LEADSCORE_WORKDIR=str(workdir), PYTHONWARNINGS="ignore", **env)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cannot read the prediction log of {workdir}: {done.stderr[-800:]}")
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@dataclass
class FaultContext:
    """What a scenario gets: the options, the built work folder and a scratch root."""

    args: argparse.Namespace
    workdir: Path
    root: Path

    def scratch(self, name: str) -> Path:
        """A fresh copy of the built work folder (its own prediction log, no journal)."""
        target = self.root / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.workdir, target, symlinks=True,
                        ignore=shutil.ignore_patterns("bench_*.log", "journal"))
        for stale in ("predictions.sqlite", "predictions.sqlite-wal", "predictions.sqlite-shm"):
            (target / "data" / stale).unlink(missing_ok=True)
        return target

    def serve(self, workdir: Path, name: str, **env: str) -> ServedService:
        """The service on ``workdir``, ready (``/readyz`` 200) or raising with its log tail."""
        service = ServedService(workdir, self.root / f"{name}.log", KEY, **env)
        service.wait_until("/readyz", timeout=180)
        return service

    def load(self, url: str, rate: float | None = None, duration: float | None = None,
             **kwargs: Any) -> Load:
        """A fixed-rate ``/predict`` load, running in the background."""
        return Load(url, rate or self.args.rate, duration or self.args.duration, **kwargs)


Scenario = Callable[[FaultContext], dict[str, Any]]


def kill_hard(service: ServedService) -> None:
    """SIGKILL the service's whole process group (no shutdown hook runs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=30)
    service.stop()  # closes its log file


# ---- the scenarios ---------------------------------------------------------------------------
def _serve_kill_restart(ctx: FaultContext, name: str, durability: str) -> dict[str, Any]:
    """Serve ``--duration`` s of load at ``--rate`` with ``log_durability`` = ``durability``;
    SIGKILL at 70 % of it; restart (the journal is replayed before /readyz); count."""
    workdir = ctx.scratch(name)
    env = {"LEADSCORE_LOG_DURABILITY": durability}
    service = ctx.serve(workdir, name, **env)
    load = ctx.load(service.url)
    time.sleep(0.2 + 0.7 * ctx.args.duration)
    kill_hard(service)
    load.stop()
    seen = load.join()
    restarted = time.monotonic()
    again = ctx.serve(workdir, name + "-restart", **env)
    recovery = round(time.monotonic() - restarted, 2)
    again.stop()
    lost = set(seen.answered) - logged_lead_ids(workdir)
    return {"answered": len(seen.answered), "lost": len(lost), "recovery_s": recovery,
            "not_durable": len(seen.not_durable), **seen.latency()}


def _latency_at_rate(ctx: FaultContext, name: str, durability: str) -> dict[str, Any]:
    """p50/p99 of ``/predict`` at ``--rate`` for ``--duration`` s, no fault."""
    workdir = ctx.scratch(name)
    service = ctx.serve(workdir, name, LEADSCORE_LOG_DURABILITY=durability)
    try:
        ctx.load(service.url, duration=2.0).join()  # warm-up
        seen = ctx.load(service.url).join()
    finally:
        service.stop()
    return {"answered": len(seen.answered), "errors": sum(seen.errors.values()),
            **seen.latency()}


def kill9_under_load(ctx: FaultContext) -> dict[str, Any]:
    """SIGKILL at ``--rate`` /s, restart; answered-200 lead ids vs the log after replay.

    Run twice: answers waiting for their record's fsync'd journal line (``fsync``, the
    default) and without waiting (``none``: the cost of durability is the p50/p99 difference,
    measured without a fault, one after the other in this run).
    """
    durable = _serve_kill_restart(ctx, "kill9-fsync", "fsync")
    unsafe = _serve_kill_restart(ctx, "kill9-none", "none")
    cost = {mode: _latency_at_rate(ctx, f"latency-{mode}", mode) for mode in ("none", "fsync")}
    return {
        "answered": durable["answered"], "wrong": 0, "lost": durable["lost"],
        "recovery_s": durable["recovery_s"],
        "notes": (f"lost without waiting for fsync: {unsafe['lost']} of {unsafe['answered']}; "
                  f"/predict at {ctx.args.rate:g}/s p50/p99 ms: no wait "
                  f"{cost['none']['p50_ms']}/{cost['none']['p99_ms']}, fsync'd "
                  f"{cost['fsync']['p50_ms']}/{cost['fsync']['p99_ms']}"),
        "detail": {"fsync": durable, "none": unsafe, "latency": cost},
    }


def _make_immutable(paths: list[Path], on: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", "+i" if on else "-i", *existing], check=True,
                       capture_output=True)


def log_unwritable(ctx: FaultContext) -> dict[str, Any]:
    """The SQLite prediction log made read-only under load (``chattr +i`` of the database and
    its WAL: stops root too; needs root) for ``--duration`` s: /readyz 503 within seconds,
    answers keep coming, then the journaled records stored once it is writable again."""
    workdir = ctx.scratch("log-unwritable")
    files = [workdir / "data" / name for name in ("predictions.sqlite", "predictions.sqlite-wal")]
    service = ctx.serve(workdir, "log-unwritable")
    try:
        load = ctx.load(service.url, duration=ctx.args.duration + 10)
        time.sleep(2.0)
        _make_immutable(files, True)
        try:
            to_503 = wait_for(service.url, "/readyz", 503, timeout=15)
            health = probe(service.url, "/healthz")
            time.sleep(max(0.0, ctx.args.duration - (to_503 or 0)))
        finally:
            _make_immutable(files, False)
        recovery = wait_for(service.url, "/readyz", 200, timeout=60)
        load.stop()
        seen = load.join()
        time.sleep(1.0)
    finally:
        service.stop()
    lost = set(seen.answered) - logged_lead_ids(workdir)
    return {"answered": len(seen.answered), "wrong": 0, "lost": len(lost),
            "recovery_s": recovery,
            "notes": (f"/readyz 503 after {to_503} s; /healthz {health[0]} in "
                      f"{health[1] * 1000:.0f} ms; errors {seen.errors or 0}; p50/p99 ms "
                      f"{seen.latency()['p50_ms']}/{seen.latency()['p99_ms']}")}


def postgres_down(ctx: FaultContext) -> dict[str, Any]:
    """The production log's PostgreSQL stopped: a second server started here (initdb +
    pg_ctl on a free port, never the shared one), the log writer in process over it, stopped
    for ``--duration`` s while records keep coming, then started again."""
    import psycopg

    from crm_data.log_journal import LogJournal
    from crm_data.prediction_log import PostgresPredictionLog, postgres_dsn
    from serving.log_writer import BackgroundLogWriter

    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not binaries:
        return {"notes": "skipped: no PostgreSQL server binaries (pg_ctl) here"}
    bin_dir = binaries[-1].parent
    data = ctx.root / "pg-data"
    port = free_port()
    user = _pg_user()
    run = ([] if user is None else ["runuser", "-u", user, "--"])
    data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(data, user)
        shutil.chown(ctx.root, user)
    subprocess.run([*run, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A",
                    "trust"], check=True, capture_output=True)
    pg_ctl = [*run, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-o",
              f"-p {port} -k {data} -c listen_addresses=127.0.0.1"]
    subprocess.run([*pg_ctl, "-l", str(data / "server.log"), "start"], check=True,
                   capture_output=True)
    base = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        with psycopg.connect(postgres_dsn(base, "postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
        dsn = postgres_dsn(base, "faults")
        writer = BackgroundLogWriter(lambda: PostgresPredictionLog(dsn, connect_timeout=2),
                                     LogJournal(ctx.root / "pg-journal"))
        sent, not_durable, slowest = 0, 0, 0.0
        interval = 1.0 / ctx.args.rate

        def feed(seconds: float) -> None:
            nonlocal sent, not_durable, slowest
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                receipt = writer.append([_record(sent)])
                durable = receipt.result(timeout=10)
                slowest = max(slowest, time.perf_counter() - started)
                not_durable += not durable
                sent += 1
                time.sleep(interval)

        feed(2.0)
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=True, capture_output=True)
        feed(1.0)
        unhealthy = writer.status()
        feed(max(ctx.args.duration - 1.0, 0.0))
        subprocess.run([*pg_ctl, "-l", str(data / "server.log"), "start"], check=True,
                       capture_output=True)
        back = time.monotonic()
        flushed = writer.flush(timeout=60)
        recovery = round(time.monotonic() - back, 2)
        writer.close()
        with PostgresPredictionLog(dsn) as log:
            stored = log.count()
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
    return {"answered": sent, "wrong": 0, "lost": sent - stored,
            "recovery_s": recovery if flushed else None,
            "notes": (f"while down: healthy={unhealthy[0]} ({(unhealthy[1] or '')[:60]}…); "
                      f"not durable {not_durable}; slowest hand-off "
                      f"{slowest * 1000:.1f} ms")}


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: the account to run it as (None: we are not root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no 'postgres' account to run a PostgreSQL server")


def _record(i: int) -> Any:
    from crm_data.prediction_log import PredictionRecord

    now = datetime.now(UTC)
    return PredictionRecord(
        request_id=f"pg-{uuid.uuid4().hex}-{i}", lead_id=f"L-pg-{i}", person_id="P-1",
        submitted_at=now, scored_at=now, probability=0.5, tier="B", channel="sales",
        control=False, degraded=False, model_name="m", model_version="1", policy_version="p",
        features={"x": i})


def _store_persons(workdir: Path, count: int) -> list[tuple[str, str]]:
    """(first lead, made-up phone) of ``count`` persons with recent behaviour, each phone
    linked to its person in One ID's table (as One ID would after a form), so new leads with
    the phone reach a person with history."""
    import pandas as pd

    from crm_data.identity import IDENTIFIER_PERSON_FILE, LEAD_PERSON_FILE
    from leadscore.config import Settings
    from leadscore.identifiers import hash_identifier

    settings = Settings().with_workdir(workdir)
    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet",
                                columns=["person_id", "snap_events_30d"])
    active = set(behaviour.loc[behaviour["snap_events_30d"] > 0, "person_id"].astype(str))
    leads = pd.read_parquet(settings.identity_dir / LEAD_PERSON_FILE)
    leads = leads[leads["person_id"].astype(str).isin(active)].sort_values("lead_id")
    firsts = leads.drop_duplicates("person_id").head(count)
    chosen, rows = [], []
    for i, (lead, person) in enumerate(zip(firsts["lead_id"], firsts["person_id"],
                                           strict=True)):
        phone = f"1390000{i + 1:04d}"
        id_hash, _ = hash_identifier("phone", phone, settings.hash_salt)
        rows.append({"id_hash": id_hash, "id_type": "phone", "person_id": str(person)})
        chosen.append((str(lead), phone))
    path = settings.identity_dir / IDENTIFIER_PERSON_FILE
    pd.concat([pd.read_parquet(path), pd.DataFrame(rows)], ignore_index=True).to_parquet(
        path, index=False)
    return chosen


def store_lost(ctx: FaultContext) -> dict[str, Any]:
    """The online store lost under load (the embedded SQLite file, its WAL and SHM deleted: what
    a Redis restart without persistence is to the production profile), then recovered with
    ``leadscore features materialize`` (it notices the lost epoch and reloads in full).

    Besides ``--rate`` load, persons with history are probed every 50 ms with new leads (the
    lead recorder sees them). ``wrong``: answers after the loss that say ``degraded: false``
    while the person's features are incomplete (fewer prior leads or another intent than
    before the loss) — and the first answer after the reload must equal the one of before
    exactly, else it counts too. ``recovery_s``: from the start of the reload to that answer.
    """
    workdir = ctx.scratch("store-lost")
    persons = _store_persons(workdir, 5)
    _materialize(workdir, full=True)  # the online rows of the build, nothing recorded since
    service = ctx.serve(workdir, "store-lost")
    base = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    url, headers = service.url, {"Authorization": f"Bearer {KEY}"}
    client = httpx.Client(base_url=url, headers=headers, timeout=10)

    def ask(lead: str, phone: str | None = None) -> dict[str, Any]:
        body = submission(lead) | {"submitted_at": base,
                                   "identifiers": {"phone": phone} if phone else {}}
        answer = client.post("/predict", json=body)
        answer.raise_for_status()
        return answer.json()

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        keys = ("probability", "tier", "tags", "reasons", "degraded")
        return all(a[k] == b[k] for k in keys)

    reference = {lead: ask(lead) for lead, _ in persons}
    asked: list[str] = list(reference)
    wrong, degraded_reset, probes = 0, 0, 0
    wrong_seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def probe_new_leads() -> None:
        nonlocal wrong, degraded_reset, probes
        i = 0
        while not stop.is_set():
            for lead, phone in persons:
                new_lead = f"L-lost-{i}-{uuid.uuid4().hex[:6]}"
                answer = ask(new_lead, phone)
                asked.append(new_lead)
                ref = reference[lead]
                probes += 1
                degraded_reset += answer["degraded_reason"] == "online_store_reset"
                intent, ref_intent = answer["tags"]["intent_score"], ref["tags"]["intent_score"]
                if not answer["degraded"] and (
                        answer["tags"]["prior_leads"] < ref["tags"]["prior_leads"]
                        or abs(intent - ref_intent) > 1e-9 * max(1.0, abs(ref_intent))):
                    wrong += 1
                    wrong_seen.append({k: answer["tags"][k] for k in (
                        "prior_leads", "intent_score", "days_since_last_touch")})
            i += 1
            stop.wait(0.05)

    load = ctx.load(url)
    try:
        time.sleep(1.0)
        online = workdir / "feature_repo" / "data"
        for path in online.glob("online_store.db*"):
            path.unlink()
        prober = threading.Thread(target=probe_new_leads, daemon=True)
        prober.start()
        time.sleep(max(ctx.args.duration / 2, 2.0))
        stop.set()
        prober.join(timeout=30)
        reload_started = time.monotonic()
        _materialize(workdir)  # incremental: it notices the lost epoch and reloads in full
        recovery = None
        while time.monotonic() - reload_started < 60:
            after = {lead: ask(lead) for lead, _ in persons}
            if all(same(after[lead], reference[lead]) for lead in after):
                recovery = round(time.monotonic() - reload_started, 2)
                break
            if any(not a["degraded"] for a in after.values()):
                wrong += sum(not same(after[k], reference[k]) for k in after)
                break
            time.sleep(0.05)
        load.stop()
        seen = load.join()
    finally:
        stop.set()
        client.close()
        service.stop()
    answered = set(seen.answered) | set(asked)
    lost = answered - logged_lead_ids(workdir)
    return {"answered": len(answered), "wrong": wrong, "lost": len(lost),
            "recovery_s": recovery,
            "notes": (f"probes of persons with history during the loss: {probes}, "
                      f"online_store_reset {degraded_reset}; load errors {seen.errors or 0}"),
            "detail": {"wrong": wrong_seen[:10]}}


def _materialize(workdir: Path, full: bool = False) -> None:
    """``leadscore features materialize`` up to the end of the demo's own online load."""
    from leadscore.config import Settings
    from pipelines.demo import replay_start

    end = replay_start(Settings().with_workdir(workdir)).isoformat()
    command = [str(Path(sys.executable).parent / "leadscore"), "features", "materialize",
               "--workdir", str(workdir), "--end", end, *(["--full"] if full else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"materialize failed: {done.stderr[-400:]}")


def _random_paths(n: int, seed: int = 14) -> list[str]:
    """Paths a scanner or a careless client sends: phone-like, e-mail-like, random, long."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        paths.append(rng.choice([
            f"/{phone}", f"/u/+86{phone}/profile", f"/lead/{phone}?phone={phone}",
            f"/x{uuid.UUID(int=rng.getrandbits(128)).hex}", f"/mail/user{i}@example.com",
            f"/wp-admin/{i}/setup.php", f"/predict/{i}", f"/{'a' * rng.randrange(50, 400)}{i}",
        ]))
    return paths


def _flood(url: str, paths: list[str], connections: int = 4) -> dict[str, int]:
    """GET every path without a key from ``connections`` keep-alive threads; status → count."""
    host, port = url.removeprefix("http://").split(":")
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for path in paths[first::connections]:
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                status = type(exc).__name__
            with lock:
                counts[status] = counts.get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def metrics_flood(ctx: FaultContext) -> dict[str, Any]:
    """10,000 unauthenticated GETs to random (phone-like …) paths: ``/metrics`` size and
    ``/predict`` p99 at ``--rate`` before and after, and path text leaked onto ``/metrics``
    (counted as ``wrong``)."""
    workdir = ctx.scratch("metrics-flood")
    service = ctx.serve(workdir, "metrics-flood")
    try:
        ctx.load(service.url, duration=2.0).join()  # warm-up
        _flood(service.url, ["/warm-up-path"], connections=1)
        size_before = len(httpx.get(service.url + "/metrics", timeout=30).content)
        before = ctx.load(service.url).join()
        paths = _random_paths(10_000)
        started = time.monotonic()
        statuses = _flood(service.url, paths)
        flood_s = time.monotonic() - started
        page = httpx.get(service.url + "/metrics", timeout=30).text
        after = ctx.load(service.url).join()
    finally:
        service.stop()
    leaked = sum(path.split("?")[0] in page for path in paths)
    b, a = before.latency(), after.latency()
    return {
        "answered": len(before.answered) + len(after.answered), "wrong": leaked,
        "notes": (f"/metrics {size_before:,} → {len(page.encode()):,} bytes; /predict p50/p99 ms "
                  f"{b['p50_ms']}/{b['p99_ms']} → {a['p50_ms']}/{a['p99_ms']}; flood "
                  f"{len(paths):,} GETs in {flood_s:.1f} s {statuses}"),
        "detail": {"metrics_bytes": [size_before, len(page.encode())], "before": b, "after": a,
                   "flood_statuses": statuses},
    }


@contextlib.contextmanager
def _tmpfs(where: Path, size_mb: int) -> Any:
    """A tmpfs of ``size_mb`` MiB at ``where`` (raises RuntimeError when mounting fails)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def _worker_pids(service: ServedService) -> set[int]:
    """Process ids of the service's workers (children of the launcher)."""
    done = subprocess.run(["pgrep", "-P", str(service.process.pid)], capture_output=True,
                          text=True, check=False)
    return {int(pid) for pid in done.stdout.split()}


def disk_full(ctx: FaultContext) -> dict[str, Any]:
    """The work folder's disk (a tmpfs mounted here) fills up under load, then 2,000 random
    paths arrive: worker restarts, /healthz latency, then room again: seconds until /readyz is
    200, and answered predictions missing from the log once the service has stopped."""
    used = sum(f.stat().st_blocks * 512 for f in ctx.workdir.rglob("*") if f.is_file())
    with contextlib.ExitStack() as stack:
        try:
            mount = stack.enter_context(_tmpfs(ctx.root / "disk-full-mount",
                                               used // 2**20 + 64))
        except RuntimeError as exc:
            return {"notes": f"skipped: {exc}"}
        workdir = mount / "work"
        shutil.copytree(ctx.workdir, workdir, symlinks=True,
                        ignore=shutil.ignore_patterns("bench_*.log", "journal"))
        service = ctx.serve(workdir, "disk-full")
        try:
            workers = _worker_pids(service)
            load = ctx.load(service.url)
            time.sleep(0.2 + 0.3 * ctx.args.duration)
            _fill(mount)
            flood = _flood(service.url, _random_paths(2_000, seed=5))
            seen = load.join()
            health = probe(service.url, "/healthz", timeout=5)
            restarted = _worker_pids(service) != workers
            (mount / "filler").unlink()
            freed = time.monotonic()
            ready = wait_for(service.url, "/readyz", 200, timeout=60)
            recovery = None if ready is None else round(time.monotonic() - freed, 2)
            not_ready = "" if ready is not None else probe(service.url, "/readyz")[2][:160]
        finally:
            service.stop()
        lost = set(seen.answered) - logged_lead_ids(workdir)
    return {
        "answered": len(seen.answered), "lost": len(lost), "recovery_s": recovery,
        "notes": (f"worker restarted: {restarted}; /healthz after the flood: {health[0]} in "
                  f"{health[1] * 1000:.0f} ms; load errors {seen.errors}; flood {flood}"
                  + (f"; /readyz 60 s after room returned: {not_ready}" if not_ready else "")),
    }


SCENARIOS: dict[str, Scenario] = {
    "kill9_under_load": kill9_under_load,
    "log_unwritable": log_unwritable,
    "postgres_down": postgres_down,
    "store_lost": store_lost,
    "disk_full": disk_full,
    "metrics_flood": metrics_flood,
}


# ---- the table -------------------------------------------------------------------------------
def run(names: list[str], ctx: FaultContext) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        try:
            row = SCENARIOS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others
            row = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        row = {"fault": name, **row, "seconds": round(time.monotonic() - started, 1),
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    cells = [f"{row['fault']:<20}"]
    cells += [f"{_cell(row.get(name)):>10}" for name in ROW_FIELDS]
    cells.append(f"load {row['load_average'][0]}→{row['load_average'][1]}")
    notes = row.get("error") or row.get("notes") or ""
    return "  ".join(cells) + (f"  {notes}" if notes else "")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="a built work folder (leadscore demo); copied, never written")
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--rate", type=float, default=200.0, help="/predict per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per step")
    parser.add_argument("--scratch", type=Path, help="where the copies go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if args.rate * args.duration > 100_000:
        raise SystemExit("refusing more than 100,000 requests in one step")
    workdir = args.workdir.expanduser().resolve()
    if not (workdir / "mlruns").is_dir():
        raise SystemExit(f"{workdir} is not a built work folder (run `leadscore demo` first)")
    root = (args.scratch or Path(tempfile.mkdtemp(prefix="bench_faults_"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"{'fault':<20}  " + "  ".join(f"{name:>10}" for name in ROW_FIELDS))
    try:
        rows = run(names, FaultContext(args, workdir, root))
    finally:
        if not args.keep and args.scratch is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
