"""The served service routing by learned effects: a policy recording ``source: uplift`` and a
small uplift model trained here on the work folder's leads (2 folds, 1 trial, distilled).

Policy-arm leads must get the channel ``routing.allocate.choose_one`` picks on the model's
effects for the features the service logged (computed here through ``Booster.predict``, the
reference the service's ``serving.fast_forest`` path must equal); control leads keep the rule's
channel and exploration leads their drawn one (propensity 1/4); every answer carries its arm.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from crm_data.prediction_log import feature_column, open_prediction_log
from features.params import FeatureParams
from features.training_set import categorical_feature_columns, model_feature_columns
from leadscore.schemas import FOLLOWUP_CHANNELS
from routing.allocate import choose_one
from routing.control import exploration_channels
from routing.policy import RoutingPolicy, resolve_active_policy, save_policy
from routing.rules import rule_2d_channels
from tests.integration.service_fixtures import ServedService, ServiceWorkdir, submission
from training.uplift import UpliftModel, fit_uplift
from training.uplift_registry import load_uplift_model, save_uplift_outputs

# a model trained and a service started for this module: tens of seconds
pytestmark = pytest.mark.slow

N_LEADS = 36
# the bot is never worth its slot here: by learned effects a policy lead never gets it, which
# routing by the tiers would give the many low-probability new persons below
SHADOW_PRICES = {"top_sales": 0.0, "sales": 0.0, "tmk": 0.0, "ai_bot": 1.0}
COST_WEIGHT = 0.0001


def _train_model(service_workdir: ServiceWorkdir, folder: Path) -> Path:
    """A small uplift model on the work folder's training leads (random arms), saved as the
    work-folder path saves one (distilled boosters included)."""
    settings = service_workdir.settings
    frame = pd.read_parquet(settings.data_dir / "training_set.parquet")
    columns = [c for c in model_feature_columns(settings) if c in frame.columns]
    categorical = [c for c in categorical_feature_columns(settings) if c in columns]
    rng = np.random.default_rng(4)
    arms = rng.choice(list(FOLLOWUP_CHANNELS), len(frame))
    features = frame[columns].reset_index(drop=True)
    result = fit_uplift(features, arms.tolist(), frame["label"].to_numpy(), control="ai_bot",
                        categorical=categorical, folds=2, trials=1, seed=3)
    result.model.distil(features, rounds=30)
    out = folder / "lead_uplift"
    save_uplift_outputs(settings, result, features, out, {}, folder / "uplift.json", 0.0,
                        register=False, model_name="lead-uplift", promote=False, run_params={})
    return out


def _policy(service_workdir: ServiceWorkdir, model: Path, folder: Path) -> RoutingPolicy:
    active = resolve_active_policy(service_workdir.settings).policy
    return dataclasses.replace(
        active, control_share=0.25, exploration_share=0.25,
        optimization={**active.optimization, "allocation": {
            "source": "uplift", "model": str(model), "cost_weight": COST_WEIGHT,
            "shadow_prices": SHADOW_PRICES}})


@pytest.fixture(scope="module")
def routed(service_workdir: ServiceWorkdir, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("uplift_routing")
    model_path = _train_model(service_workdir, folder)
    policy = _policy(service_workdir, model_path, folder)
    policy_path = save_policy(policy, folder / "policy.yaml")
    service = ServedService(service_workdir.settings.workdir, folder / "service.log",
                            LEADSCORE_ROUTING_POLICY=str(policy_path))
    run = uuid.uuid4().hex[:8]
    answers = []
    try:
        service.wait_until("/readyz")
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as http:
            for i in range(N_LEADS):
                body = submission(f"L-UP-{run}-{i}",
                                  identifiers={"cookie_id": f"c-up-{run}-{i}"})
                answer = http.post("/predict", json=body)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
            # a funnel step re-scores its lead: policy leads must stay routed by the effects
            rescored = _rescore_policy_leads(http, answers)
    finally:
        service.stop()  # drains the prediction log
    log = open_prediction_log(service_workdir.settings)
    try:
        records = log.read()
    finally:
        log.close()
    records = records[records["lead_id"].isin([a["lead_id"] for a in answers])]
    yield {"answers": answers, "records": records.set_index("lead_id"), "policy": policy,
           "rescored": rescored,
           "model": load_uplift_model(model_path), "log": service.log_text()}


def _rescore_policy_leads(http: httpx.Client, answers: list[dict[str, Any]]
                          ) -> list[dict[str, Any]]:
    """Send a ``booked_trial`` step for every policy lead; the lead states once re-scored."""
    policy_leads = [a["lead_id"] for a in answers if a["arm"] == "policy"]
    at = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    events = [{"lead_id": lead, "event_type": "booked_trial", "event_time": at}
              for lead in policy_leads]
    got = http.post("/events", json={"events": events})
    assert got.status_code == 200, got.text
    states = []
    for lead in policy_leads:
        deadline = time.monotonic() + 15
        while True:
            state = http.get(f"/leads/{lead}")
            if state.status_code == 200 and len(state.json()["history"]) >= 2:
                states.append(state.json())
                break
            assert time.monotonic() < deadline, f"{lead} not re-scored: {state.text}"
            time.sleep(0.05)
    return states


def _expected_channel(model: UpliftModel, policy: RoutingPolicy, row: pd.Series) -> str:
    """``choose_one`` on the model's effects (Booster.predict) for the logged features."""
    columns = {}
    for name in model.feature_columns:
        value = row.get(feature_column(name))
        columns[name] = [None if value is None or value != value else value]
    positions = [model.arms.index(c) for c in FOLLOWUP_CHANNELS]
    effects = model.fast_uplift(columns)[0, positions]
    costs = {c: policy.channels[c].cost_per_lead for c in FOLLOWUP_CHANNELS}
    return choose_one(effects, FOLLOWUP_CHANNELS, costs, SHADOW_PRICES, COST_WEIGHT)


def test_policy_leads_are_routed_by_the_learned_effects(routed: dict[str, Any],
                                                        service_workdir: ServiceWorkdir) -> None:
    answers, records, policy, model = (routed[k] for k in ("answers", "records", "policy",
                                                          "model"))
    assert "not loaded" not in routed["log"], routed["log"][-2000:]
    assert len(records) == N_LEADS
    arms = {a["arm"] for a in answers}
    assert arms == {"policy", "control", "exploration"}, arms
    threshold = FeatureParams.from_settings(service_workdir.settings).tables.rule_threshold
    by_tiers_differs = 0
    for answer in answers:
        record = records.loc[answer["lead_id"]]
        assert record["arm"] == answer["arm"]
        assert answer["tier"] == policy.tier_of_channel(answer["channel"])
        if answer["arm"] == "policy":
            assert answer["control"] is False
            assert answer["channel"] == _expected_channel(model, policy, record), answer
            assert record["propensity"] == 1.0
            _, by_tiers = policy.assign([answer["probability"]])
            by_tiers_differs += by_tiers[0] != answer["channel"]
        elif answer["arm"] == "control":
            assert answer["control"] is True
            rule = rule_2d_channels([record["rule_score"]], threshold)[0]
            assert answer["channel"] == rule
            assert record["propensity"] == 1.0
        else:
            drawn, share = exploration_channels([answer["lead_id"]], policy)
            assert answer["channel"] == drawn[0]
            assert record["propensity"] == pytest.approx(share) == 0.25
    # the service did not route policy leads by the tiers
    assert by_tiers_differs > 0


def test_a_rescored_policy_lead_stays_routed_by_the_learned_effects(
        routed: dict[str, Any]) -> None:
    """Re-scoring routes as /predict does: with the bot's shadow price above any effect, a
    policy lead never lands on the bot — which routing the re-score by tiers gives every lead
    whose probability stays in the lowest tier."""
    rescored, policy = routed["rescored"], routed["policy"]
    assert rescored, "no policy lead to re-score"
    for lead in rescored:
        causes = [h["cause"] for h in lead["history"]]
        assert causes[-1] == "booked_trial", causes
        channels = [h["channel"] for h in lead["history"]]
        assert "ai_bot" not in channels, lead
    # the same leads by tiers: at least one would have been sent to the bot
    by_tiers = policy.assign([lead["history"][-1]["probability"] for lead in rescored])[1]
    assert "ai_bot" in set(by_tiers), by_tiers
