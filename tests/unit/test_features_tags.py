"""Unit tests of the tag functions on small hand-made frames (no Feast)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features import request, score2d
from features.build import compute_tables
from features.params import FeatureParams
from leadscore.config import Settings

T0 = pd.Timestamp("2026-03-02 02:00:00", tz="UTC")  # Monday 10:00 in China


def ts(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


def lead(lead_id: str, at: pd.Timestamp, **extra: object) -> dict[str, object]:
    row = {"lead_id": lead_id, "created_at": at, "channel": "sem", "campaign": "sem-spring",
           "landing_page": "/trial/math", "grade": "G9", "subject": "math", "city": "x",
           "city_tier": 1, "device": "ios", "funnel_step": "verified", "phone_valid": True,
           "email_domain_type": "free"}
    row.update(extra)
    return row


def event(lead_id: str, at: pd.Timestamp, event_type: str = "web_visit", url: str = "/"
          ) -> dict[str, object]:
    return {"event_id": f"E{lead_id}{at.value}{event_type}", "lead_id": lead_id,
            "event_type": event_type, "event_time": at, "url": url, "dwell_seconds": 10.0}


def frames(leads: list[dict], events: list[dict], persons: dict[str, str],
           orders: list[dict] | None = None, identifiers: dict[str, str] | None = None
           ) -> dict[str, pd.DataFrame]:
    ev = pd.DataFrame(events, columns=["event_id", "lead_id", "event_type", "event_time", "url",
                                       "dwell_seconds"])
    ev["event_time"] = pd.to_datetime(ev["event_time"], utc=True)
    orders_df = pd.DataFrame(orders or [], columns=["order_id", "id_hash", "ordered_at", "amount"])
    orders_df["ordered_at"] = pd.to_datetime(orders_df["ordered_at"], utc=True)
    return {
        "leads": pd.DataFrame(leads),
        "events": ev,
        "orders": orders_df,
        "lead_person": pd.DataFrame({"lead_id": list(persons),
                                     "person_id": list(persons.values())}),
        "identifier_person": pd.DataFrame(
            {"id_hash": list((identifiers or {}).keys()),
             "person_id": list((identifiers or {}).values())}, dtype=object),
    }


def model_rows(data: dict[str, pd.DataFrame], settings: Settings | None = None) -> pd.DataFrame:
    """Model features per lead exactly as the training path computes them (snapshot at t)."""
    settings = settings or Settings()
    tables, _ = compute_tables(data, settings)
    facts = tables["lead_facts"].set_index("lead_id")
    beh = tables["person_behaviour"].set_index(["person_id", "event_timestamp"])
    rfm = tables["person_rfm"].set_index(["person_id", "event_timestamp"])
    leads = data["leads"].set_index("lead_id")
    rows = {}
    for lead_id, fact in facts.iterrows():
        key = (fact["person_id"], fact["created_at"])
        inputs = {**beh.loc[key].to_dict(), **rfm.loc[key].to_dict()}
        for name in request.FORM_FIELDS:
            inputs[request.FORM_PREFIX + name] = leads.loc[lead_id].get(name)
        inputs["request_ts_s"] = fact["created_at"].timestamp()
        out = request.transform_request({k: [v] for k, v in inputs.items()},
                                        FeatureParams.from_settings(settings))
        rows[lead_id] = {k: v[0] for k, v in out.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# ---- request-time transformations -----------------------------------------------------------
def test_url_page_types() -> None:
    assert request.url_page_type("/pricing/annual") == "pricing"
    assert request.url_page_type("/trial/math") == "trial"
    assert request.url_page_type("/jobs/teacher") == "recruitment"
    assert request.url_page_type("/careers") == "recruitment"
    assert request.url_page_type("/free-material/exam-guide") == "download"
    assert request.url_page_type("/") == "home"
    assert request.url_page_type("app://x", "pricing_page") == "pricing"
    assert request.url_page_type(None) == "other"
    assert request.url_page_type(42) == "other"


def test_china_hour_and_weekday() -> None:
    # 2026-03-01 16:30 UTC is Monday 00:30 in Shanghai
    moment = pd.Timestamp("2026-03-01 16:30", tz="UTC").timestamp()
    assert request.china_hour(np.array([moment])) == [0]
    assert request.china_weekday(np.array([moment])) == [0]
    assert request.china_hour(np.array([np.nan])) == [-1]


def test_bad_and_missing_form_values_get_defaults() -> None:
    out = request.transform_request({
        "form_channel": ["SEM ", "tiktok", None], "form_grade": ["G13", None, "g5"],
        "form_city_tier": [7, None, "2"], "form_phone_valid": [None, "true", 1],
        "form_funnel_step": ["booked_trial", "??", None], "request_ts_s": [None, 1.7e9, 1.7e9],
    }, FeatureParams())
    assert out["channel"] == ["sem", "unknown", "unknown"]
    assert out["grade"] == ["unknown", "unknown", "G5"]
    assert out["city_tier"] == [0, 0, 2]
    assert out["phone_valid"] == [0, 1, 1]
    assert out["funnel_step_ordinal"] == [3, -1, -1]
    assert out["submit_hour_cn"][0] == -1
    assert out["days_since_last_touch"] == [9999.0] * 3
    assert out["rfm_segment"] == ["no_orders"] * 3
    assert out["campaign"] == ["unknown"] * 3
    for name, values in out.items():
        assert len(values) == 3, name
        assert all(v is not None and not (isinstance(v, float) and math.isnan(v))
                   for v in values), name
    assert list(out) == list(request.MODEL_FEATURES)


def test_intent_decays_to_request_time_exactly() -> None:
    day = 86400.0
    base = {"snap_ts_s": [1e9, 1e9], "snap_intent": [8.0, 8.0], "snap_has_history": [1, 1],
            "snap_last_touch_ts_s": [1e9 - day, 1e9 - day],
            "request_ts_s": [1e9, 1e9 + 14 * day]}
    out = request.transform_request(base, FeatureParams(half_life_days=14.0))
    assert out["intent_score"] == pytest.approx([8.0, 4.0])
    assert out["days_since_last_touch"] == pytest.approx([1.0, 15.0])


def test_prior_leads_from_own_or_older_snapshot() -> None:
    snap = {"snap_ts_s": [100.0, 100.0], "snap_leads_before": [2, 2], "snap_leads_upto": [3, 3],
            "snap_channels_before": [1, 1], "snap_channels_upto": [2, 2],
            "request_ts_s": [100.0, 500.0]}
    out = request.transform_request(snap, FeatureParams())
    assert out["prior_leads"] == [2, 3]
    assert out["prior_channels"] == [1, 2]


def test_rfm_segments() -> None:
    codes = request.rfm_segment_codes(
        np.array([10.0, 400.0, 9999.0]), np.array([3.0, 1.0, 0.0]), np.array([9000.0, 100.0, 0]),
        {"recency_days": 365, "frequency": 2, "monetary": 5000},
    )
    assert codes == ["R1F1M1", "R0F0M0", "no_orders"]


# ---- the 2-D score ------------------------------------------------------------------------
def test_fit_and_interest_points() -> None:
    tables = score2d.load_scoring_tables()
    fit = score2d.fit_score(tables, phone_valid=[1, 0], email_domain_type=["corporate", "free"],
                            city_tier=[1, 0], grade=["G9", "unknown"],
                            funnel_step=["booked_trial", "submitted"], channel=["seo", "x"])
    assert fit.tolist() == [5 + 15 + 20 + 35 + 10, -20 - 5]
    interest = score2d.interest_score(
        tables, offline_event_90d=[1, 0], live_class_90d=[1, 0], download_90d=[1, 0],
        email_open_90d=[2, 1], site_visits_180d=[1, 0], days_since_last_touch=[2.0, 9999.0])
    assert interest.tolist() == [50 + 30 + 10 + 10 + 20, -30]
    assert score2d.rule_grade(tables, [60.0, 59.9]) == ["sales", "nurture"]


def test_scoring_override_and_bad_table(tmp_path) -> None:
    good = tmp_path / "s.yaml"
    good.write_text("rule: {sales_threshold: 80}\n")
    assert score2d.load_scoring_tables(good).table("rule")["sales_threshold"] == 80
    assert score2d.load_scoring_tables(good).table("fit_points")["phone_invalid"] == -20
    bad = tmp_path / "b.yaml"
    bad.write_text("url_weights: {pricing: lots}\n")
    with pytest.raises(score2d.ScoringConfigError, match="url_weights.*pricing"):
        score2d.load_scoring_tables(bad)


# ---- lead facts, behaviour, RFM through the offline build --------------------------------
def test_lead_facts_and_person_visibility() -> None:
    """Leads of one person see each other only when the other lead came first."""
    data = frames(
        leads=[lead("A", ts(0), channel="sem"), lead("B", ts(5), channel="seo"),
               lead("C", ts(9), channel="sem")],
        events=[
            event("A", ts(-2), "pricing_page", "/pricing"),
            event("B", ts(-10), "live_class", "/live/math-open-class"),  # B's pre-submission
            event("B", ts(4)),
            event("A", ts(0) + pd.Timedelta(minutes=3)),  # logged 3 min after A: not for A
        ],
        persons={"A": "P1", "B": "P1", "C": "P1"},
    )
    rows = model_rows(data)
    assert rows.loc["A", "events_total"] == 1  # B (created later) is invisible to A
    assert rows.loc["A", "live_class_90d"] == 0
    assert rows.loc["A", "prior_leads"] == 0
    assert rows.loc["B", "events_total"] == 4  # A's events (incl. the late one) + its own
    assert rows.loc["B", "live_class_90d"] == 1
    assert rows.loc["B", "prior_leads"] == 1 and rows.loc["B", "prior_channels"] == 1
    assert rows.loc["C", "prior_leads"] == 2 and rows.loc["C", "prior_channels"] == 2
    assert rows.loc["A", "submit_hour_cn"] == 10 and rows.loc["A", "submit_weekday_cn"] == 0
    assert rows.loc["A", "days_since_last_touch"] == pytest.approx(2 / 24)
    assert rows.loc["B", "days_since_first_touch"] == pytest.approx(15 / 24)


def test_behaviour_windows_trend_and_intent() -> None:
    t = ts(0)
    data = frames(
        leads=[lead("A", t)],
        events=[
            event("A", t - pd.Timedelta(hours=1), "pricing_page", "/pricing"),
            event("A", t - pd.Timedelta(days=3), "web_visit", "/"),
            event("A", t - pd.Timedelta(days=10), "web_visit", "/about"),
            event("A", t - pd.Timedelta(days=60), "recruitment_page", "/jobs/teacher"),
        ],
        persons={"A": "P1"},
    )
    row = model_rows(data).loc["A"]
    assert (row["events_1d"], row["events_7d"], row["events_30d"], row["events_90d"]) == (
        1, 2, 3, 4)
    assert row["pricing_page_7d"] == 1 and row["recruitment_page_30d"] == 0
    assert row["urls_7d"] == 2 and row["urls_90d"] == 4
    r7, r21 = 2 / 7, 1 / 21
    assert row["engagement_trend"] == pytest.approx((r7 - r21) / (r7 + r21))
    tables = score2d.load_scoring_tables()
    hl = Settings().intent_half_life_days
    expected = (0.5 ** ((1 / 24) / hl) * 3.0 * 1.5 + 0.5 ** (3 / hl) * 0.5 * 1.0
                + 0.5 ** (10 / hl) * 0.5 * 1.0 + 0.5 ** (60 / hl) * -2.0 * 1.0)
    assert tables.table("url_weights")["recruitment"] < 0
    assert row["intent_score"] == pytest.approx(expected)


def test_brand_new_person_and_unresolved_lead_defaults() -> None:
    data = frames(leads=[lead("A", ts(0), grade=None, city_tier=None, channel="bogus"),
                         lead("Z", ts(1))],
                  events=[event("Z", ts(0)), event("nobody", ts(0))], persons={"A": "P1"})
    tables, counts = compute_tables(data, Settings())
    assert counts["leads_unresolved"] == 1 and counts["events_unknown_lead"] == 1
    rows = model_rows(data)
    a = rows.loc["A"]
    assert a["has_history"] == 0 and a["events_total"] == 0
    assert a["days_since_last_touch"] == 9999.0 and a["intent_score"] == 0.0
    assert (a["grade"], a["city_tier"], a["channel"]) == ("unknown", 0, "unknown")
    assert rows.loc["Z", "events_total"] == 1  # unresolved lead keeps its own history
    assert not rows.isna().any().any()


def test_rfm_counts_only_earlier_orders() -> None:
    data = frames(
        leads=[lead("A", ts(0)), lead("B", ts(48))], events=[], persons={"A": "P1", "B": "P1"},
        orders=[
            {"order_id": "O1", "id_hash": "phone:x", "ordered_at": ts(-24 * 400), "amount": 3000},
            {"order_id": "O2", "id_hash": "phone:x", "ordered_at": ts(0), "amount": 4000},
            {"order_id": "O3", "id_hash": "phone:nobody", "ordered_at": ts(-5), "amount": 1},
        ],
        identifiers={"phone:x": "P1"},
    )
    _, counts = compute_tables(data, Settings())
    assert counts["orders_unresolved"] == 1
    rows = model_rows(data)
    assert rows.loc["A", "frequency"] == 1  # O2 at the very submission time is not history
    assert rows.loc["A", "recency_days"] == pytest.approx(400)
    assert rows.loc["A", "rfm_segment"] == "R0F0M0"
    assert rows.loc["B", "frequency"] == 2 and rows.loc["B", "monetary"] == 7000
    assert rows.loc["B", "rfm_segment"] == "R1F1M1"
    assert rows.loc["B", "is_customer"] == 1


def test_missing_columns_are_named() -> None:
    data = frames(leads=[lead("A", ts(0))], events=[], persons={"A": "P1"})
    data["events"] = data["events"].drop(columns=["url"])
    with pytest.raises(ValueError, match="events table: missing column 'url'"):
        compute_tables(data, Settings())
    data = frames(leads=[lead("A", ts(0)), lead("A", ts(1))], events=[], persons={"A": "P1"})
    with pytest.raises(ValueError, match="'lead_id' is not unique"):
        compute_tables(data, Settings())


def test_docs_list_every_model_feature() -> None:
    from leadscore.config import PROJECT_ROOT

    text = (PROJECT_ROOT / "docs" / "features.md").read_text()
    missing = [name for name in request.MODEL_FEATURES if f"| `{name}` |" not in text]
    assert not missing
