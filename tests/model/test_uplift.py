"""Uplift model: recovers a planted heterogeneous effect, evaluates out-of-fold, refuses bad
experiments naming the field, and its CLI trains, registers, gates and recommends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from commands.main import app
from leadscore.config import Settings
from training.uplift import UpliftInputError, fit_uplift
from training.uplift_csv import parse_costs, prepare_experiment
from training.uplift_metrics import bootstrap_mean, dr_scores, uplift_scores
from training.uplift_registry import decide_uplift_promotion

HILLSTROM = Path(__file__).resolve().parents[3] / "shared/datasets/hillstrom-email/hillstrom.csv"
ARMS = ("bot", "call", "visit")


def planted(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """A randomised table whose effects do *not* follow the base rate: a call helps only when
    x1 > 0, a visit only segment "a" (and slightly hurts the rest)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    segment = rng.choice(["a", "b", "c"], n)
    arm = rng.choice(ARMS, n)
    base = 0.2 + 0.1 * x2
    effects = np.column_stack([np.zeros(n), np.where(x1 > 0, 0.3, 0.0),
                               np.where(segment == "a", 0.25, -0.05)])
    truth = np.clip(base[:, None] + effects, 0, 1)
    y = (rng.uniform(size=n) < truth[np.arange(n), [ARMS.index(a) for a in arm]]).astype(int)
    return pd.DataFrame({"x1": x1, "x2": x2, "segment": segment}), arm, y, truth


@pytest.fixture(scope="module")
def planted_fit():
    X, arm, y, truth = planted(3000, seed=1)
    result = fit_uplift(X, arm, y, control="bot", categorical=["segment"], folds=3, trials=2,
                        seed=3)
    return X, truth, result


def test_recovers_the_planted_heterogeneous_effect(planted_fit) -> None:
    X, truth, result = planted_fit
    assert result.model.arms == ["bot", "call", "visit"]
    for j in (1, 2):
        true_effect = truth[:, j] - truth[:, 0]
        assert np.corrcoef(result.oof_uplift[:, j], true_effect)[0, 1] > 0.6
        assert result.report["per_arm"][ARMS[j]]["qini"] > 0.005
    # the learned policy (out of fold) is worth more, by the truth, than any single arm
    rows = np.arange(len(X))
    learned = truth[rows, result.policy_choice()].mean()
    assert learned > truth.mean(axis=0).max() + 0.03
    # the shipped model (fold learners averaged) ranks new rows the same way
    fresh, _, _, fresh_truth = planted(1000, seed=9)
    uplift = result.model.uplift(fresh)
    assert np.corrcoef(uplift[:, 1], fresh_truth[:, 1] - fresh_truth[:, 0])[0, 1] > 0.6


def test_effect_intervals_separate_the_leads_a_call_helps(planted_fit) -> None:
    X, _, result = planted_fit
    fresh, _, _, _ = planted(2000, seed=9)
    intervals = result.model.intervals(fresh)
    helped = fresh["x1"].to_numpy() > 0.5  # true effect of a call 0.3
    unhelped = fresh["x1"].to_numpy() < -0.5  # true effect 0
    assert (intervals.loc[helped, "uplift_call_low"] > 0).mean() > 0.8
    assert (intervals.loc[unhelped, "uplift_call_high"] < 0.3).mean() > 0.9
    recommended = result.model.recommend(X.head(7))
    assert list(recommended.index) == list(range(7))
    assert {"recommended_arm", "uplift_call", "uplift_visit", "conversion_bot"} <= set(
        recommended.columns)


def test_costs_move_the_recommendation_to_cheaper_arms(planted_fit) -> None:
    X, _, result = planted_fit
    model = result.model
    free = model.recommend(X)["recommended_arm"].value_counts()
    model_costs, model.costs = dict(model.costs), {"bot": 0.0, "call": 0.2, "visit": 0.2}
    try:
        costly = model.recommend(X)["recommended_arm"].value_counts()
    finally:
        model.costs = model_costs
    assert costly.get("bot", 0) > free.get("bot", 0) + 500


def test_qini_and_dr_on_a_known_case() -> None:
    # a perfect ranking of a deterministic effect beats a reversed one; DR with exact mu and
    # known propensities returns the arm means
    y = np.array([1, 1, 0, 0, 0, 0, 0, 1])
    treated = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    good = uplift_scores(y, treated, np.array([4, 3, 2, 1, 4, 3, 2, 1]))
    bad = uplift_scores(y, treated, np.array([1, 2, 3, 4, 1, 2, 3, 4]))
    assert good["qini"] > 0 > bad["qini"]
    assert good["average_effect"] == pytest.approx(0.25)
    arm = np.array([0, 1] * 4)
    mu = np.column_stack([np.full(8, 0.5), np.full(8, 0.5)])
    scores = dr_scores(y, arm, mu, [0.5, 0.5])
    assert scores[:, 1].mean() == pytest.approx(0.5 + (y[arm == 1].mean() - 0.5))
    mean, (low, high) = bootstrap_mean(np.arange(100.0), seed=0)
    assert mean == pytest.approx(49.5) and low < mean < high


def test_gate_promotes_only_beyond_noise() -> None:
    rng = np.random.default_rng(0)
    net = rng.normal(0, 1, (2000, 2))
    net[:, 1] += 0.3  # arm 1 is better by 0.3 per row
    better = decide_uplift_promotion(net, np.ones(2000), np.zeros(2000), "1", seed=0)
    assert better.promote and better.interval[0] > 0 and "beats" in better.reason
    same = decide_uplift_promotion(net, np.ones(2000), np.ones(2000), "1", seed=0)
    assert not same.promote and "not better beyond noise" in same.reason
    old = decide_uplift_promotion(net, np.ones(2000), np.ones(2000), "1", seed=0,
                                  champion_age_days=40, max_age_days=30, margin=0.01)
    assert old.promote and "days old" in old.reason
    first = decide_uplift_promotion(net, np.ones(2000), None)
    assert first.promote and "first model" in first.reason


# ---- bad input -------------------------------------------------------------------------------

def experiment(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer": [f"c{i}" for i in range(n)], "recency": rng.integers(1, 12, n),
        "channel": rng.choice(["Web", "Phone"], n), "arm": rng.choice(["none", "mail"], n),
        "visit": rng.integers(0, 2, n), "spend": rng.gamma(1, 10, n),
    })


@pytest.mark.parametrize(("change", "kwargs", "message"), [
    (lambda f: f.assign(arm="mail"), {}, r"treatment column 'arm' has a single value \['mail'\]"),
    (lambda f: f.assign(visit=np.where(f["arm"] == "mail", 0, f["visit"])), {},
     r"outcome column 'visit': arm 'mail' has 0 positive"),
    (lambda f: f, {"costs": {"sms": 1.0}}, r"--cost names unknown arm\(s\) \['sms'\]"),
    (lambda f: f, {"control": "nothing"}, r"--control 'nothing' is not a value of treatment"),
    (lambda f: f, {"treatment": "segment"}, r"--treatment names column\(s\) not in the CSV"),
    (lambda f: f, {"drop": ["visit"]}, r"--drop names the 'visit' column"),
    (lambda f: f.assign(arm=f["arm"].where(f.index > 5)), {},
     r"treatment column 'arm' is empty on 6 row"),
])
def test_bad_experiments_name_the_field(change, kwargs, message) -> None:
    args = {"treatment": "arm", "control": "none", "outcome": "visit", "id_col": "customer",
            **kwargs}
    with pytest.raises(ValueError, match=message):
        prepare_experiment(change(experiment()), **args)


def test_cost_options_are_parsed_or_refused() -> None:
    assert parse_costs(["Mens E-Mail=0.1", "sms = 2"]) == {"Mens E-Mail": 0.1, "sms": 2.0}
    with pytest.raises(UpliftInputError, match="expected ARM=AMOUNT"):
        parse_costs(["0.1"])
    with pytest.raises(UpliftInputError, match="is not a number"):
        parse_costs(["mail=ten"])


# ---- the command line on Hillstrom rows ------------------------------------------------------

@pytest.fixture(scope="module")
def hillstrom_csv(tmp_path_factory) -> Path:
    if not HILLSTROM.exists():
        pytest.skip("shared Hillstrom dataset not present")
    frame = pd.read_csv(HILLSTROM).sample(1500, random_state=0).reset_index(drop=True)
    frame.insert(0, "customer_id", [f"cust-{i:05d}" for i in range(len(frame))])
    path = tmp_path_factory.mktemp("hillstrom") / "hillstrom_small.csv"
    frame.to_csv(path, index=False)
    return path


def test_hillstrom_smoke_without_registry(hillstrom_csv, tmp_path) -> None:
    from training.uplift_csv import recommend_csv, train_uplift_csv

    report = train_uplift_csv(
        hillstrom_csv, "segment", "No E-Mail", "visit", model_out=tmp_path / "model",
        report_path=tmp_path / "report.json", settings=Settings().with_workdir(tmp_path),
        id_col="customer_id", drop=["conversion", "spend"], folds=2, trials=1, register=False)
    assert "registry" not in report and (tmp_path / "model/MLmodel").is_file()
    assert set(report["per_arm"]) == {"Mens E-Mail", "Womens E-Mail"}
    for values in report["per_arm"].values():
        assert np.isfinite(values["qini"]) and values["dr_average_effect_ci"][0] < values[
            "dr_average_effect_ci"][1]
    summary = recommend_csv(tmp_path / "model", hillstrom_csv, tmp_path / "rec.csv")
    assert summary["rows"] == 1500


def _train_args(csv: Path, out: Path, workdir: Path, *extra: str) -> list[str]:
    return ["uplift", "train", "--csv", str(csv), "--treatment", "segment", "--control",
            "No E-Mail", "--outcome", "visit", "--id", "customer_id", "--drop", "conversion",
            "--drop", "spend", "--cost", "Mens E-Mail=0.01", "--cost", "Womens E-Mail=0.01",
            "--folds", "2", "--trials", "1", "--model-out", str(out / "model"),
            "--report", str(out / "report.json"), "--workdir", str(workdir), *extra]


@pytest.mark.slow
def test_cli_trains_registers_gates_and_recommends(hillstrom_csv, tmp_path) -> None:
    runner = CliRunner()
    workdir = tmp_path / "work"
    first = runner.invoke(app, _train_args(hillstrom_csv, tmp_path / "a", workdir))
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert report["arms"] == ["No E-Mail", "Mens E-Mail", "Womens E-Mail"]
    assert report["registry"]["promoted"] and report["registry"]["model_version"] == "1"
    assert {"customer_id", "conversion", "spend", "segment", "visit"}.isdisjoint(
        report["data"]["features"])
    assert "cust-0" not in json.dumps(report)  # no identifier values in the report

    second = runner.invoke(app, _train_args(hillstrom_csv, tmp_path / "b", workdir,
                                            "--seed", "7"))
    assert second.exit_code == 0, second.output
    decision = json.loads((tmp_path / "b/report.json").read_text())["registry"]["decision"]
    assert decision["champion_version"] == "1" and len(decision["interval"]) == 2
    settings = Settings().with_workdir(workdir)
    client = MlflowClient(tracking_uri=settings.tracking_uri,
                          registry_uri=settings.tracking_uri)
    champion = client.get_model_version_by_alias("uplift-hillstrom_small", "champion")
    assert str(champion.version) == ("2" if decision["promote"] else "1")
    run = client.get_run(champion.run_id)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/qini_Mens_E-Mail.png", "plots/qini_Womens_E-Mail.png"} <= plots

    out = tmp_path / "recommended.csv"
    rec = runner.invoke(app, ["uplift", "recommend", "--model", str(tmp_path / "a/model"),
                              "--csv", str(hillstrom_csv), "--out", str(out)])
    assert rec.exit_code == 0, rec.output
    recommended = pd.read_csv(out)
    source = pd.read_csv(hillstrom_csv)
    assert list(recommended["customer_id"]) == list(source["customer_id"])  # same rows, order
    assert {"recommended_arm", "uplift_Mens E-Mail", "uplift_Womens E-Mail"} <= set(
        recommended.columns)
    assert set(recommended["recommended_arm"]) <= set(report["arms"])


def test_cli_bad_input_exits_2_naming_the_field_and_registers_nothing(hillstrom_csv,
                                                                       tmp_path) -> None:
    runner = CliRunner()
    workdir = tmp_path / "work"
    result = runner.invoke(app, _train_args(hillstrom_csv, tmp_path, workdir, "--cost",
                                            "Kids E-Mail=1"))
    assert result.exit_code == 2
    assert "--cost names unknown arm(s) ['Kids E-Mail']" in " ".join(result.output.split())
    assert not (tmp_path / "model").exists() and not (tmp_path / "report.json").exists()
    settings = Settings().with_workdir(workdir)
    client = MlflowClient(tracking_uri=settings.tracking_uri,
                          registry_uri=settings.tracking_uri)
    assert client.search_registered_models() == []
    missing = runner.invoke(app, ["uplift", "recommend", "--model", str(tmp_path / "none"),
                                  "--csv", str(hillstrom_csv), "--out", str(tmp_path / "o.csv")])
    assert missing.exit_code == 2 and "is not an uplift model folder" in missing.output


def test_logged_propensities_replace_the_shares_and_are_checked() -> None:
    from training.uplift import logged_propensities

    arm = np.array([0, 1, 2, 1])
    shares = np.array([0.25, 0.5, 0.25])
    assert np.allclose(logged_propensities(None, arm, shares)[1], shares)
    logged = logged_propensities([0.5, 0.2, 0.1, 0.4], arm, shares)
    assert logged[1, 1] == 0.2 and logged[2, 2] == 0.1 and logged[3, 1] == 0.4
    with pytest.raises(UpliftInputError, match="propensity: expected one probability"):
        logged_propensities([0.5, 0.0, 0.1, 0.4], arm, shares)
    with pytest.raises(UpliftInputError, match="propensity"):
        logged_propensities([0.5], arm, shares)
