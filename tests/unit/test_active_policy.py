"""One answer to "which routing policy is in force", for serving, simulation and reports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from leadscore.config import Settings
from routing.policy import (
    BASE_DIGEST_KEY,
    default_policy_path,
    file_digest,
    load_policy,
    optimised_policy_path,
    resolve_active_policy,
    save_policy,
)


def _optimised_from(base: Path, settings: Settings, version: str) -> Path:
    policy = load_policy(base)
    policy = replace(policy, version=version,
                     optimization={BASE_DIGEST_KEY: file_digest(base)})
    return save_policy(policy, optimised_policy_path(settings))


def test_packaged_default_when_nothing_else(tmp_path: Path) -> None:
    active = resolve_active_policy(Settings().with_workdir(tmp_path))
    assert active.source == "packaged default" and active.path == default_policy_path()


def test_optimised_policy_wins_when_derived_from_todays_base(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    _optimised_from(default_policy_path(), settings, "opt-1")
    active = resolve_active_policy(settings)
    assert (active.source, active.policy.version, active.note) == ("optimised", "opt-1", None)


def test_configured_base_with_its_own_optimised_policy(tmp_path: Path) -> None:
    base = tmp_path / "my_policy.yaml"
    base.write_bytes(default_policy_path().read_bytes())
    settings = Settings().with_workdir(tmp_path).with_(routing_policy=base)
    _optimised_from(base, settings, "opt-2")
    assert resolve_active_policy(settings).policy.version == "opt-2"


def test_stale_optimised_policy_is_passed_over_with_a_note(tmp_path: Path) -> None:
    base = tmp_path / "my_policy.yaml"
    base.write_bytes(default_policy_path().read_bytes())
    settings = Settings().with_workdir(tmp_path).with_(routing_policy=base)
    _optimised_from(base, settings, "opt-3")
    base.write_text(base.read_text().replace("cost_per_lead: 15", "cost_per_lead: 16"))
    active = resolve_active_policy(settings)
    assert active.source == "configured" and active.path == base
    assert active.note and "passed over" in active.note


def test_serving_simulation_and_reports_read_the_same_policy(tmp_path: Path) -> None:
    """The four readers of the policy go through the one resolver (no second order)."""
    from monitoring.business import load_channel_costs

    settings = Settings().with_workdir(tmp_path)
    _optimised_from(default_policy_path(), settings, "opt-4")
    costs, source = load_channel_costs(settings)
    assert source == str(optimised_policy_path(settings)) and costs


def test_explicit_file_wins(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    _optimised_from(default_policy_path(), settings, "opt-5")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_bytes(default_policy_path().read_bytes())
    assert resolve_active_policy(settings, explicit).source == "explicit"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_active_policy(settings, tmp_path / "missing.yaml")
