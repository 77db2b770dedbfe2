"""Fixtures of the integration tier: one small real work folder shared by the serving tests."""

from __future__ import annotations

import pytest

from tests.integration.service_fixtures import ServiceWorkdir, build_service_workdir


@pytest.fixture(scope="session")
def service_workdir(tmp_path_factory: pytest.TempPathFactory) -> ServiceWorkdir:
    """One small real work folder for every serving test of the session (built on first use)."""
    return build_service_workdir(tmp_path_factory.mktemp("service_workdir"))
