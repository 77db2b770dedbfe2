"""``bentoml build`` packages the service with the imported champion, and the Bento serves.

The main job (``service_workdir``) imported the champion into the work folder's BentoML store;
``bentoml build`` (the project's ``bentofile.yaml``) makes a Bento of it, whose model labels
name the registry version; ``bentoml serve <bento tag>`` answers ``/readyz`` and ``/predict``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import yaml

from leadscore.config import PROJECT_ROOT
from tests.integration.service_fixtures import (
    ServedService,
    ServiceWorkdir,
    submission,
)

pytestmark = pytest.mark.slow  # ``bentoml build`` of the service takes about half a minute


@pytest.fixture(scope="module")
def bento_tag(service_workdir: ServiceWorkdir) -> str:
    env = {**os.environ, "BENTOML_HOME": str(service_workdir.settings.workdir / "bentoml_home"),
           "BENTOML_DO_NOT_TRACK": "True"}
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=PROJECT_ROOT,
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("lead-scoring:"), built.stdout[-500:]
    return tag


@pytest.fixture(scope="module")
def served_bento(service_workdir: ServiceWorkdir, bento_tag: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedService]:
    log_path = tmp_path_factory.mktemp("bento") / "service.log"
    service = ServedService(service_workdir.settings.workdir, log_path, target=bento_tag)
    service.wait_until("/readyz")
    yield service
    service.stop()


def test_bento_records_the_registry_version(service_workdir: ServiceWorkdir,
                                            bento_tag: str) -> None:
    from mlflow import MlflowClient

    home = service_workdir.settings.workdir / "bentoml_home"
    name, version = bento_tag.split(":")
    bento = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())
    model_name, model_version = bento["models"][0]["tag"].split(":")
    assert model_name == "lead-conversion"
    model = yaml.safe_load(
        (home / "models" / model_name / model_version / "model.yaml").read_text())
    champion = MlflowClient(service_workdir.settings.tracking_uri).get_model_version_by_alias(
        "lead-conversion", "champion")
    assert model["labels"]["registry_version"] == str(champion.version)


def test_built_bento_answers_predict(served_bento: ServedService) -> None:
    reply = httpx.post(served_bento.url + "/predict", headers=served_bento.headers,
                       json=submission("L-BENTO-1"), timeout=30)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["lead_id"] == "L-BENTO-1"
    assert 0.0 <= answer["probability"] <= 1.0
    assert answer["tier"] in {"A", "B", "C", "D"}
    assert answer["model"]["name"] == "lead-conversion"
    unauthorised = httpx.post(served_bento.url + "/predict", json=submission("L-BENTO-2"),
                              timeout=30)
    assert unauthorised.status_code == 401
