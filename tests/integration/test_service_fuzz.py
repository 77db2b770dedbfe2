"""No client input causes a server error, and every answer is what the spec says: schemathesis
against the service's own OpenAPI spec.

The spec is read from the served process (``GET /docs.json``); every operation gets generated
valid and invalid requests (schemathesis' positive and negative modes) with the API key, at
least ``MIN_CASES`` (1,000) in all. Each answer is checked with ``CHECKS``: never a 5xx, a status
the spec lists for the operation, the content type and the response schema it declares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.service_fixtures import (
    API_KEY,
    ServedService,
    ServiceWorkdir,
    run_served,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MIN_CASES = 1000
PER_MODE = 170  # per POST operation and generation mode: 4 × 2 × 170 = 1,360 body cases
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
CASES: Counter = Counter()
STATUSES: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_served(service_workdir: ServiceWorkdir, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServedService]:
    yield from run_served(service_workdir, tmp_path_factory, "fuzz_logs")


def _recent(body: object) -> None:
    """Move every request time in a generated body into the accepted window (a minute ago), so
    that valid bodies reach a prediction and its 200 answer is checked against the spec too."""
    if isinstance(body, dict):
        for key in ("submitted_at", "event_time", "time"):
            if isinstance(body.get(key), str):
                body[key] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        for value in body.values():
            _recent(value)
    elif isinstance(body, list):
        for value in body:
            _recent(value)


def _cases(operation, mode: GenerationMode, examples: int) -> None:  # noqa: ANN001
    @given(case=operation.as_strategy(generation_mode=mode), fresh=st.booleans())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None, phases=[Phase.generate])
    def run(case, fresh: bool) -> None:  # noqa: ANN001 - a schemathesis Case
        if fresh and mode == GenerationMode.POSITIVE:  # half the valid bodies: times now
            _recent(case.body)
        response = case.call(base_url=BASE_URL[0], headers=AUTH, timeout=30)
        CASES[f"{case.method.upper()} {case.path}"] += 1
        STATUSES[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    run()


BASE_URL: list[str] = []
PREDICTION_API = ("/predict", "/predict_batch", "/events", "/outcomes", "/reload")


@pytest.mark.slow
def test_no_input_causes_a_server_error(fuzz_served: ServedService) -> None:
    BASE_URL[:] = [fuzz_served.url]
    schema = schemathesis.openapi.from_url(f"{fuzz_served.url}/docs.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        is_api = operation.method.upper() == "POST"
        if is_api and operation.path != "/reload":  # valid and invalid bodies
            _cases(operation, GenerationMode.POSITIVE, PER_MODE)
            _cases(operation, GenerationMode.NEGATIVE, PER_MODE)
        elif is_api:  # /reload takes no body and reloads the model: a few calls suffice
            _cases(operation, GenerationMode.POSITIVE, 5)
            _cases(operation, GenerationMode.NEGATIVE, 5)
        else:  # parameterless GETs (health, metrics): nothing to make invalid
            _cases(operation, GenerationMode.POSITIVE, 5)
    total = sum(CASES.values())
    posts = {label: n for label, n in CASES.items()
             if label.split(" ", 1)[0] == "POST" and label.split(" ", 1)[1] in PREDICTION_API}
    assert total >= MIN_CASES, f"only {total} generated cases: {dict(CASES)}"
    assert len(posts) == 5, dict(CASES)
    # the mounted apps' operations (portraits, assignments, audiences) are fuzzed too
    assert {"POST /assignments", "POST /audiences/count", "POST /audiences"} <= set(CASES)
    assert min(n for label, n in posts.items() if "reload" not in label) >= 300, dict(CASES)
    assert not any(status >= 500 for status in STATUSES), dict(STATUSES)
    assert STATUSES[200] >= 100 and STATUSES[422] > 0, dict(STATUSES)
    print(f"schemathesis: {total} cases {dict(CASES)} statuses {dict(STATUSES)}")
