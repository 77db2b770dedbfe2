"""The synthetic CRM generator: determinism, schemas, privacy, mechanism, One ID design, drift."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from commands.generate import generate
from crm_data import generate_mechanism as m
from crm_data.generate import generate_crm, simulate_crm
from crm_data.validation import load_raw_tables
from leadscore.config import get_settings
from leadscore.schemas import (
    CHANNELS,
    FOLLOWUP_CHANNELS,
    RAW_TABLES,
    TRUTH_LEADS_COLUMNS,
)

SALT = "test-generate-salt"
START = date(2026, 5, 1)
DAYS, WINDOW = 150, 30
ARROW_TYPES = {
    "string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"), "int": pa.int64(),
    "float": pa.float64(), "bool": pa.bool_(),
}
HASH = re.compile(r"^(phone|wechat|email|cookie):[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def crm():
    """20,000 leads in memory (well under a second to draw)."""
    return simulate_crm(20_000, seed=11, salt=SALT, window_days=WINDOW)


@pytest.fixture(scope="module")
def frames(crm) -> dict[str, pd.DataFrame]:
    return {name: table.to_pandas() for name, table in crm.tables.items()}


@pytest.fixture(scope="module")
def lead_view(frames) -> pd.DataFrame:
    return (frames["leads"].merge(frames["outcomes"], on="lead_id")
            .merge(frames["truth"], on="lead_id"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_crm(tmp_path / name, 2_000, seed, salt=SALT, window_days=WINDOW)
        runs[name] = _files(tmp_path / name)
    expected = {f"raw/{t}.parquet" for t in RAW_TABLES} | {"truth/leads_truth.parquet"}
    assert set(runs["a"]) == expected
    assert runs["a"] == runs["b"]
    assert all(runs["a"][f] != runs["c"][f] for f in expected)


def test_written_tables_match_declared_schemas(tmp_path: Path) -> None:
    generate_crm(tmp_path, 2_000, 3, salt=SALT, window_days=WINDOW)
    for name, schema in RAW_TABLES.items():
        table = pq.read_table(tmp_path / "raw" / f"{name}.parquet")
        assert table.column_names == schema.column_names, name
        frame = table.to_pandas()
        for column in schema.columns:
            assert table.schema.field(column.name).type == ARROW_TYPES[column.dtype], column
            values = frame[column.name]
            if not column.nullable:
                assert values.notna().all(), f"{name}.{column.name} has nulls"
            if column.allowed is not None:
                assert set(values.dropna()) <= set(column.allowed), f"{name}.{column.name}"
            if column.unique:
                assert values.is_unique, f"{name}.{column.name} not unique"
    truth = pq.read_table(tmp_path / "truth" / "leads_truth.parquet")
    assert tuple(truth.column_names) == TRUTH_LEADS_COLUMNS
    # the project's own validation accepts the tables as they are
    loaded = load_raw_tables(tmp_path / "raw")
    assert len(loaded["leads"]) == 2_000


def test_optional_form_fields_have_a_few_nulls(frames) -> None:
    leads = frames["leads"]
    for column in ("grade", "subject", "city", "city_tier", "device"):
        share = leads[column].isna().mean()
        assert 0.005 < share < 0.1, column
    assert (leads["city"].isna() == leads["city_tier"].isna()).all()


def test_ids_are_unique_and_references_resolve(frames) -> None:
    lead_ids = set(frames["leads"].lead_id)
    assert len(lead_ids) == 20_000
    for name in ("identities", "events", "outcomes"):
        assert set(frames[name].lead_id) <= lead_ids, name
    assert set(frames["outcomes"].lead_id) == lead_ids == set(frames["truth"].lead_id)
    assert set(frames["orders"].id_hash) <= set(frames["identities"].id_hash)
    assert frames["events"].event_id.is_unique and frames["orders"].order_id.is_unique


def test_base_rate_is_between_five_and_ten_percent(crm, frames) -> None:
    rate = frames["outcomes"].converted.mean()
    assert 0.05 <= rate <= 0.10
    assert crm.summary.base_rate == pytest.approx(rate, abs=1e-6)


def test_no_raw_identifier_reaches_any_table(crm, frames) -> None:
    assert len(crm.raw_identifiers) > 10_000
    stripped = {v.strip().lower() for v in crm.raw_identifiers}
    digits = {re.sub(r"\D", "", v)[-11:] for v in crm.raw_identifiers if re.search(r"\d", v)}
    for name, frame in frames.items():
        for column in frame.columns:
            if not pd.api.types.is_object_dtype(frame[column]):
                continue
            values = set(frame[column].dropna().astype(str))
            assert not values & crm.raw_identifiers, f"{name}.{column}"
            assert not values & stripped, f"{name}.{column}"
            if column == "id_hash":
                assert all(HASH.match(v) for v in values)
                continue
            text = "\n".join(values)
            assert "@" not in text and "wx_" not in text, f"{name}.{column}"
            assert not re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", text), f"{name}.{column}"
            assert not values & digits, f"{name}.{column}"


def test_unusable_identifiers_are_dropped_and_counted(crm) -> None:
    counts = crm.summary.unusable_identifiers
    assert {"phone:placeholder_number", "email:malformed_email",
            "wechat:malformed_wechat_id"} <= set(counts)
    assert 0 < sum(counts.values()) < 0.1 * crm.summary.n_identities


def test_identifiers_recover_persons_by_connected_components(frames) -> None:
    """Two persons never share an identifier; a person's leads are chained by shared ones."""
    ids = frames["identities"].merge(frames["truth"], on="lead_id")
    assert ids.groupby("id_hash").true_person_id.nunique().max() == 1
    parent = {lead: lead for lead in frames["leads"].lead_id}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, leads in ids.groupby("id_hash").lead_id:
        first = root(leads.iloc[0])
        for other in leads.iloc[1:]:
            parent[root(other)] = first
    truth = frames["truth"].set_index("lead_id").true_person_id
    component = pd.Series({lead: root(lead) for lead in parent})
    pairs = pd.DataFrame({"person": truth, "component": component.reindex(truth.index)})

    def n_pairs(groups: pd.Series) -> float:
        sizes = groups.value_counts()
        return float((sizes * (sizes - 1) / 2).sum())

    both = n_pairs(pairs.person + "|" + pairs.component)
    assert both / n_pairs(pairs.person) >= 0.99  # recall
    assert both / n_pairs(pairs.component) >= 0.99  # precision
    assert frames["leads"].lead_id.isin(ids.lead_id).all()  # every lead has a usable id
    persons = truth.value_counts()
    assert (persons > 1).mean() > 0.2 and persons.max() >= 4


def test_timestamps_respect_period_and_window(frames) -> None:
    end = pd.Timestamp(START, tz="UTC") + timedelta(days=DAYS + WINDOW)
    leads = frames["leads"].set_index("lead_id")
    assert leads.created_at.min() >= pd.Timestamp(START, tz="UTC")
    assert leads.created_at.max() < pd.Timestamp(START, tz="UTC") + timedelta(days=DAYS)
    for name, column in (("events", "event_time"), ("outcomes", "converted_at"),
                         ("orders", "ordered_at")):
        assert frames[name][column].max() <= end, name
        assert str(frames[name][column].dt.tz) == "UTC"
    out = frames["outcomes"].set_index("lead_id")
    created = leads.created_at.reindex(out.index)
    converted = out[out.converted]
    assert (converted.converted_at > created[converted.index]).all()
    assert (converted.converted_at <= created[converted.index] + timedelta(days=WINDOW)).all()
    assert out[~out.converted].converted_at.isna().all()
    assert (out[~out.converted].amount == 0).all() and (converted.amount > 0).all()
    assert datetime(2026, 11, 23, tzinfo=UTC) >= end.to_pydatetime()


def test_orders_precede_the_persons_leads(frames) -> None:
    ids = frames["identities"].merge(frames["truth"], on="lead_id")
    person_of_hash = ids.drop_duplicates("id_hash").set_index("id_hash").true_person_id
    first_lead = (frames["leads"].merge(frames["truth"], on="lead_id")
                  .groupby("true_person_id").created_at.min())
    orders = frames["orders"].assign(person=lambda o: o.id_hash.map(person_of_hash))
    assert orders.person.notna().all()
    assert (orders.ordered_at < orders.person.map(first_lead)).all()
    assert orders.id_hash.str.startswith("phone:").mean() > 0.8  # keyed by phone when possible


def test_events_per_lead_and_both_sides_of_submission(lead_view, frames) -> None:
    events = frames["events"].merge(frames["leads"][["lead_id", "created_at"]], on="lead_id")
    per_lead = len(events) / len(frames["leads"])
    assert 5 <= per_lead <= 30
    before = (events.event_time < events.created_at).mean()
    assert 0.2 < before < 0.6
    assert (events.dwell_seconds > 0).all()


def test_propensity_rises_with_costlier_followup(frames) -> None:
    truth = frames["truth"]
    columns = [f"propensity_{c}" for c in ("ai_bot", "tmk", "sales", "top_sales")]
    values = truth[columns].to_numpy()
    assert ((values > 0) & (values < 1)).all()
    assert (np.diff(values, axis=1) >= 0).all()
    unsaturated = values[:, -1] < 0.99
    assert (np.diff(values[unsaturated], axis=1) > 0).all()
    # uplift of top sales over the bot is larger for high-propensity leads (routing pays)
    base = truth.propensity_ai_bot
    lift = truth.propensity_top_sales - base
    assert lift[base > base.quantile(0.9)].mean() > 5 * lift[base < base.quantile(0.5)].mean()


def test_conversion_carries_directional_signal(lead_view, frames) -> None:
    rate = lead_view.groupby("funnel_step").converted.mean()
    assert rate["booked_trial"] > 3 * rate["verified"] > 3 * rate["submitted"]
    by_channel = lead_view.groupby("channel").converted.mean()
    assert by_channel["wechat_private"] > 2 * by_channel["list_purchase"]
    assert by_channel["seo"] > by_channel["feed_ads"]
    # behaviour before the lead: leads with a pricing-page visit before submission convert more
    events = frames["events"].merge(lead_view[["lead_id", "created_at"]], on="lead_id")
    priced = events[(events.event_type == "pricing_page")
                    & (events.event_time < events.created_at)].lead_id.unique()
    with_pricing = lead_view.lead_id.isin(priced)
    converted = lead_view.converted
    assert converted[with_pricing].mean() > 1.5 * converted[~with_pricing].mean()
    # returning customers (orders) convert more
    ids = frames["identities"]
    buyers = ids[ids.id_hash.isin(frames["orders"].id_hash)].lead_id.unique()
    returning = lead_view.lead_id.isin(buyers)
    assert lead_view[returning].converted.mean() > lead_view[~returning].converted.mean()
    assert not lead_view.phone_valid.all()


def _logit(p: pd.Series) -> pd.Series:
    return np.log(p / (1 - p))


def test_conversion_is_not_additive_in_the_form_fields(lead_view) -> None:
    """Funnel step × channel and grade × subject interact (truth, no label noise)."""
    view = lead_view.assign(logit=_logit(lead_view.propensity_ai_bot))
    by_cell = view.groupby(["channel", "funnel_step"]).logit.mean()

    def booking_gain(channel: str) -> float:
        return by_cell[(channel, "booked_trial")] - by_cell[(channel, "submitted")]

    # a trial booked by a WeChat-private lead is worth far more than one from a purchased list
    assert booking_gain("wechat_private") > booking_gain("list_purchase") + 3.0

    exam_year = view.grade.isin(["G9", "G12"])
    young = view.grade.isin(["G1", "G2", "G3"])
    exam_subject = view.subject.isin(["math", "physics", "chemistry"])
    hobby = view.subject.isin(["coding", "art"])

    def gap(grades: pd.Series) -> float:
        return view[grades & exam_subject].logit.mean() - view[grades & hobby].logit.mean()

    assert gap(exam_year) > 1.5 and gap(young) < -0.5  # the subject effect flips with the grade


def test_mechanism_saturates_and_gates_on_recency() -> None:
    """Unit check of ``logit_terms``: saturation, recency gate, thresholds, renewal."""
    n = 6
    facts = m.LeadFacts(
        intent=np.zeros(n), behaviour=np.array([0.0, 5.0, 20.0, 0.0, 0.0, 0.0]),
        days_since_last_event=np.array([1.0, 1.0, 1.0, 1.0, 10.0, 40.0]),
        high_intent_30d=np.array([0, 0, 0, 3, 3, 0]), pricing_30d=np.array([0, 0, 0, 3, 3, 0]),
        recruitment_30d=np.zeros(n, dtype=int), offline_event_90d=np.zeros(n, dtype=int),
        channel=np.zeros(n, dtype=int), campaign_effect=np.zeros(n),
        funnel=np.zeros(n, dtype=int), landed_on_pricing=np.zeros(n, dtype=bool),
        submit_hour_cn=np.full(n, 12), grade=np.zeros(n, dtype=int),
        subject=np.zeros(n, dtype=int), city_tier=np.ones(n, dtype=int),
        device=np.zeros(n, dtype=int), email_type=np.zeros(n, dtype=int),
        phone_state=np.zeros(n, dtype=int), n_orders=np.array([0, 0, 0, 1, 1, 0]),
        order_total=np.full(n, 3000.0), days_since_order=np.full(n, 400.0),
        earlier_leads=np.zeros(n, dtype=int), wrong_persona=np.zeros(n, dtype=bool),
    )
    terms = m.logit_terms(facts)
    behaviour = terms["behaviour"]
    assert behaviour[2] - behaviour[1] < 0.3 * (behaviour[1] - behaviour[0])  # saturates
    high = terms["high_intent_x_recency"]
    assert high[3] > 1.5 and high[4] < 0.1 * high[3]  # stale high intent counts (almost) nil
    assert terms["inactive"][5] < 0 and terms["inactive"][4] == 0  # 30 idle days: a threshold
    assert terms["returning_x_pricing"][3] > 0 and terms["returning_x_pricing"][0] == 0
    logit = m.conversion_logit(facts, np.zeros(n))
    assert logit.shape == (n,) and np.isfinite(logit).all()


def test_conversion_given_the_form_is_stationary_and_campaigns_persist(lead_view) -> None:
    """The newest leads convert like older leads of the same channel and funnel step, and come
    from campaigns older leads came from too (no unseen level in the newest slice)."""
    view = lead_view.sort_values("created_at", kind="stable")
    n = len(view)
    old, new = view.iloc[: int(0.7 * n)], view.iloc[int(0.85 * n):]
    assert new.campaign.isin(set(old.campaign)).all()
    cells = ["channel", "funnel_step"]
    weights = new.groupby(cells).size() / len(new)
    standardised_old = (old.groupby(cells).propensity_ai_bot.mean() * weights).sum()
    assert new.propensity_ai_bot.mean() == pytest.approx(standardised_old, rel=0.15)


def test_followup_mostly_follows_the_k12_rule_but_covers_every_cell(lead_view) -> None:
    rule = {"booked_trial": "top_sales", "followed_account": "sales", "verified": "tmk",
            "submitted": "ai_bot"}
    follows = (lead_view.funnel_step.map(rule) == lead_view.followup_channel).mean()
    assert 0.75 < follows < 0.88
    cells = lead_view.groupby(["funnel_step", "followup_channel"]).size()
    assert len(cells) == 16 and cells.min() > 20
    assert set(lead_view.followup_channel) == set(FOLLOWUP_CHANNELS)


def test_drift_moves_channel_mix_and_behaviour_in_late_weeks() -> None:
    late_start = pd.Timestamp(START, tz="UTC") + timedelta(days=DAYS * 2 / 3)
    shares = {}
    for drift in (False, True):
        crm = simulate_crm(8_000, seed=2, drift=drift, salt=SALT, window_days=WINDOW)
        leads = crm.tables["leads"].to_pandas()
        events = crm.tables["events"].to_pandas()
        late = leads[leads.created_at >= late_start]
        early = leads[leads.created_at < late_start]
        late_events = events[events.event_time >= late_start]
        shares[drift] = {
            "late_paid": late.channel.isin(["feed_ads", "list_purchase"]).mean(),
            "early_paid": early.channel.isin(["feed_ads", "list_purchase"]).mean(),
            "late_pricing": (late_events.event_type == "pricing_page").mean(),
            "late_app": (late_events.event_type == "app_open").mean(),
        }
    assert shares[True]["late_paid"] > shares[False]["late_paid"] + 0.15
    assert shares[True]["early_paid"] == pytest.approx(shares[False]["early_paid"], abs=0.03)
    assert shares[True]["late_pricing"] < 0.7 * shares[False]["late_pricing"]
    assert shares[True]["late_app"] > 1.5 * shares[False]["late_app"]
    assert set(CHANNELS) == set(leads.channel)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_leads": 0}, "n_leads"), ({"days": 0}, "days"), ({"window_days": -1}, "window_days"),
     ({"seed": -3}, "seed"), ({"salt": ""}, "salt")],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    arguments = {"n_leads": 10, "seed": 1, "salt": SALT, "window_days": WINDOW} | kwargs
    with pytest.raises(ValueError, match=message):
        simulate_crm(**arguments)


@pytest.fixture
def isolated_settings(monkeypatch: pytest.MonkeyPatch):
    """The command exports --workdir to the environment: restore it and the settings cache."""
    monkeypatch.delenv("LEADSCORE_WORKDIR", raising=False)
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("LEADSCORE_WORKDIR", raising=False)
    get_settings.cache_clear()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(generate)
    return app


def test_cli_writes_into_the_work_folder(tmp_path: Path, isolated_settings: None) -> None:
    result = CliRunner().invoke(
        _cli(), ["--workdir", str(tmp_path), "--leads", "300", "--seed", "4", "--days", "60"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "raw" / "events.parquet").is_file()
    assert (tmp_path / "data" / "truth" / "leads_truth.parquet").is_file()
    assert pq.read_table(tmp_path / "data" / "raw" / "leads.parquet").num_rows == 300


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--start", "2026-13-01"], "--start"), (["--leads", "0"], "--leads"),
     (["--days", "0"], "--days")],
)
def test_cli_reports_bad_options_cleanly(
    tmp_path: Path, args: list[str], message: str, isolated_settings: None
) -> None:
    result = CliRunner().invoke(_cli(), ["--workdir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
