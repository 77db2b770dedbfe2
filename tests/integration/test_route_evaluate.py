"""``leadscore route evaluate`` and the work-folder ``uplift train`` on a real small work folder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from commands.main import app
from tests.integration.service_fixtures import ServiceWorkdir

POLICIES = {"probability_tiers", "rule_2d", "rule_2d_optimised", "rule_funnel",
            "rule_funnel_optimised", "everyone_to_top_sales", "everyone_to_sales",
            "everyone_to_tmk", "everyone_to_ai_bot"}


def test_route_evaluate_reports_every_policy_by_every_estimator(
        service_workdir: ServiceWorkdir, tmp_path: Path) -> None:
    workdir = str(service_workdir.settings.workdir)
    report = tmp_path / "evaluate.json"
    result = CliRunner().invoke(app, ["route", "evaluate", "--workdir", workdir, "--report",
                                      str(report), "--n-boot", "200", "--tuning-share", "0.3"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert set(data["policies"]) >= POLICIES
    assert data["judged_randomised_leads"] > 0
    for name, entry in data["policies"].items():
        for estimator in ("ips", "snips", "truth"):
            figures = entry[estimator]
            assert {"conversions", "total_cost", "cost_per_conversion",
                    "cost_per_conversion_ci"} <= set(figures), (name, estimator)
        assert entry["capacity_violations"] >= 0
    # everyone to the AI bot costs what the bot costs per lead, whatever the estimator
    bot = data["policies"]["everyone_to_ai_bot"]
    assert bot["ips"]["total_cost"] == bot["truth"]["total_cost"]


def test_uplift_train_below_the_evidence_floor_is_refused_and_writes_nothing(
        service_workdir: ServiceWorkdir, tmp_path: Path) -> None:
    workdir = str(service_workdir.settings.workdir)
    out = tmp_path / "uplift_model"
    result = CliRunner().invoke(app, ["uplift", "train", "--workdir", workdir, "--model-out",
                                      str(out), "--report", str(tmp_path / "uplift.json"),
                                      "--trials", "1", "--folds", "2"])
    assert result.exit_code == 2, result.output
    assert "randomised" in result.output
    assert not out.exists() and not (tmp_path / "uplift.json").exists()


def test_route_optimize_prints_the_allocation_it_records(
        service_workdir: ServiceWorkdir, tmp_path: Path) -> None:
    workdir = str(service_workdir.settings.workdir)
    out = tmp_path / "policy.yaml"
    result = CliRunner().invoke(app, ["route", "optimize", "--workdir", workdir, "--out",
                                      str(out), "--grid-size", "6"])
    assert result.exit_code == 0, result.output
    recorded = json.loads(out.with_suffix(".report.json").read_text())["allocation"]
    text = " ".join(result.output.split())
    assert f"allocation: {recorded['source']}" in text
    if recorded["source"] == "cold_start_prior":
        assert recorded["reason"] in text
        lines = result.output.splitlines()
        for channel, value in recorded["relative_conversion"].items():
            assert any(f" {channel} " in line and f" {value:.3f} " in line for line in lines)
