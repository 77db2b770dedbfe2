"""Helpers of the integration tests: a small real work folder, a served ``bentoml serve``
process and production-profile settings on isolated stores.

``build_service_workdir`` (behind the session fixture ``service_workdir`` of this tier's
conftest) runs the product's pipeline (``pipelines.demo.run_demo``:
generate → One ID → features + materialize → train with 2 trials → routing) on 3,000 leads, then
links one made-up raw phone (``KNOWN_PHONE``) to an existing person who has behaviour in the
online store, as One ID would after that person left the phone on an earlier form.
``ServedService`` runs the service (``python -m serving.launcher``: ``bentoml serve``) on a free
loopback port with its output captured to a file (for the tests that grep the logs).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from leadscore.config import Settings, get_settings, load_settings
from leadscore.profiles import require_services
from serving import launcher

API_KEY = "test-key-0123456789abcdef"
KNOWN_PHONE = "+86 139 1234 5678"
KNOWN_PHONE_DIGITS = "13912345678"
N_LEADS = 3000


@dataclass(frozen=True)
class ServiceWorkdir:
    """A built work folder and the person the known phone belongs to."""

    settings: Settings
    known_person: str


def build_service_workdir(root: Path) -> ServiceWorkdir:
    """Run the pipeline on ``N_LEADS`` leads in ``root`` and link ``KNOWN_PHONE`` to a person."""
    from crm_data.identity import IDENTIFIER_PERSON_FILE
    from leadscore.identifiers import hash_identifier
    from pipelines.demo import run_demo

    settings = Settings().with_workdir(root)
    # BentoML reads its home on first use: keep this session's imports inside the work folder
    os.environ["BENTOML_HOME"] = str(settings.workdir / "bentoml_home")
    run_demo(settings, n_leads=N_LEADS, seed=11, trials=2)
    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet")
    active = behaviour[behaviour["snap_events_30d"] > 0].sort_values("person_id")
    person = str(active["person_id"].iloc[0])
    id_hash, reason = hash_identifier("phone", KNOWN_PHONE, settings.hash_salt)
    assert reason is None, reason
    path = settings.identity_dir / IDENTIFIER_PERSON_FILE
    table = pd.read_parquet(path)
    extra = pd.DataFrame({"id_hash": [id_hash], "id_type": ["phone"], "person_id": [person]})
    pd.concat([table, extra], ignore_index=True).to_parquet(path, index=False)
    return ServiceWorkdir(settings, person)


def submission(lead_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid ``POST /predict`` body (the issue's example, submitted a minute ago)."""
    body: dict[str, Any] = {
        "lead_id": lead_id,
        "submitted_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "channel": "sem",
        "campaign": "winter-math-2026",
        "landing_page": "/trial/math",
        "funnel_step": "verified",
        "form": {"grade": "G5", "subject": "math", "city": "Hangzhou"},
        "identifiers": {"phone": KNOWN_PHONE, "wechat_id": "wx_abc123", "email": None,
                        "cookie_id": "c-9f8e7d"},
    }
    body.update(overrides)
    return body


class ServedService(launcher.ServedService):
    """The package's launcher with the test key; a start failure fails the test."""

    def __init__(self, workdir: Path, log_path: Path, target: str = launcher.SERVICE_TARGET,
                 **extra_env: str) -> None:
        super().__init__(workdir, log_path, API_KEY, target, **extra_env)

    def wait_until(self, path: str = "/readyz", timeout: float = 120.0) -> None:
        try:
            super().wait_until(path, timeout)
        except launcher.ServiceStartError as exc:
            pytest.fail(str(exc))


def run_served(service_workdir: ServiceWorkdir, tmp_path_factory: pytest.TempPathFactory,
               name: str) -> Iterator[ServedService]:
    """Serve ``service_workdir`` for one test module; its log under a fresh ``name`` folder."""
    log_path = tmp_path_factory.mktemp(name) / "service.log"
    service = ServedService(service_workdir.settings.workdir, log_path)
    service.wait_until("/readyz")
    yield service
    service.stop()


# ---- the production profile on isolated stores ---------------------------------------------
def production_env(prefix: str, redis_url: str, workdir: Path) -> dict[str, str]:
    """``LEADSCORE_*`` variables selecting the production profile on isolated stores."""
    return {
        "LEADSCORE_PROFILE": "production",
        "LEADSCORE_DATABASE_PREFIX": prefix,
        "LEADSCORE_REDIS_URL": redis_url,
        "LEADSCORE_WORKDIR": str(workdir),
    }


def unique_prefix(name: str) -> str:
    """A database prefix no other test run uses."""
    return f"t_{name}_{uuid.uuid4().hex[:8]}"


def production_settings(monkeypatch: pytest.MonkeyPatch, workdir: Path, prefix: str,
                        redis_url: str) -> Settings:
    """Settings (and this process's environment, inherited by the served service) for the
    production profile on ``prefix`` databases and ``redis_url``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LEADSCORE_MLFLOW_TRACKING_URI", raising=False)
    for key, value in production_env(prefix, redis_url, workdir).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BENTOML_HOME", str(workdir / "bentoml_home"))
    get_settings.cache_clear()
    settings = load_settings()
    require_services(settings, services=("postgres",))  # creates the databases, as the CLI does
    return settings
