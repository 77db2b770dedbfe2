"""The served service survives its Redis online store going away and coming back.

Own ``redis-server`` on a free port (never the shared one), production profile on unique
PostgreSQL databases: answers are from Redis; with Redis killed ``/predict`` still answers 200
quickly with ``degraded: true``; after a restart + re-materialization (Redis kept nothing)
answers are from Redis again, without restarting the service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from leadscore.config import Settings, get_settings
from leadscore.profiles import drop_databases
from pipelines.demo import STAGES, DemoContext, replay_start
from serving.launcher import free_port
from serving.predictor import DEGRADED_STORE
from tests.integration.service_fixtures import (
    ServedService,
    production_settings,
    submission,
    unique_prefix,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

N_LEADS = 3000
BUILD_STAGES = ("generate", "identity", "features", "train")
MAX_DEGRADED_SECONDS = 1.0


class OwnRedis:
    """A throw-away ``redis-server`` (no persistence) on ``port``; stop/start at will."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        import redis

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start; "
                                       f"see {self.log_path}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """Kill the server (SIGKILL: no goodbye to the clients)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """This test's own redis-server; skipped (failed under CI) when the binary is missing."""
    if shutil.which("redis-server") is None:
        message = "redis-server binary not found (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    server = OwnRedis(free_port(), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def production_workdir(postgres_available: None, own_redis: OwnRedis, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A small production-profile work folder (features in ``own_redis``, champion in
    PostgreSQL MLflow on unique databases, dropped after)."""
    settings = production_settings(monkeypatch, tmp_path / "work", unique_prefix("faults"),
                                   f"redis://127.0.0.1:{own_redis.port}/0")
    try:
        settings.ensure_dirs()
        ctx = DemoContext(settings=settings, n_leads=N_LEADS, seed=11, trials=2)
        for name, stage in STAGES:
            if name in BUILD_STAGES:
                ctx.results[name] = stage(ctx)
        yield settings
    finally:
        drop_databases(settings)
        get_settings.cache_clear()


def known_lead(settings: Settings) -> str:
    """A lead whose person has behaviour rows in the online store."""
    from crm_data.identity import LEAD_PERSON_FILE

    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet")
    active = set(behaviour.loc[behaviour["snap_events_30d"] > 0, "person_id"].astype(str))
    leads = pd.read_parquet(settings.identity_dir / LEAD_PERSON_FILE)
    return str(leads.loc[leads["person_id"].astype(str).isin(active), "lead_id"].sort_values()
               .iloc[0])


def predict(client: httpx.Client, lead: str) -> tuple[dict, float]:
    """``POST /predict`` for ``lead`` (status 200 asserted): the answer and its seconds."""
    t0 = time.perf_counter()
    response = client.post("/predict", json=submission(lead, identifiers={}))
    seconds = time.perf_counter() - t0
    assert response.status_code == 200, response.text
    return response.json(), seconds


def test_service_degrades_and_recovers_with_redis(production_workdir: Settings,
                                                  own_redis: OwnRedis, tmp_path: Path) -> None:
    from features.build import materialize

    settings = production_workdir
    lead = known_lead(settings)
    with ServedService(settings.workdir, tmp_path / "service.log") as service:
        service.wait_until("/readyz", timeout=180)
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            for _ in range(3):
                answer, _ = predict(client, lead)
                assert answer["degraded"] is False, answer

            own_redis.kill()
            for _ in range(5):
                answer, seconds = predict(client, lead)
                assert answer["degraded"] is True, answer.get("degraded_reason")
                assert answer["degraded_reason"] == DEGRADED_STORE, answer
                assert seconds < MAX_DEGRADED_SECONDS, seconds

            own_redis.start()  # empty: no persistence
            # Redis came back empty: reload it all (an incremental run would see nothing new)
            materialize(settings, end=replay_start(settings), full=True)
            answers = [predict(client, lead)[0] for _ in range(3)]
            assert [a["degraded"] for a in answers] == [False] * 3, [
                a.get("degraded_reason") for a in answers]
