"""The event path has no training/serving skew: after the events and leads before time t reach
the online store (``POST /events``, ``/predict``), a request at t gets the offline row at t.

A small generated CRM; the online store is loaded up to ``since`` as the main job does, then the
demo's replay (``pipelines.demo_traffic.replay_plan``) is run through the service's in-process
pieces (``Predictor.push_events``, ``Predictor.features``, ``BehaviourUpdater``) and every served
row is compared with the point-in-time row of the Feast offline store.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from crm_data.identity import load_identity_state, lookup_person
from features import history
from features.build import build_features, materialize
from features.request import BEHAVIOUR_SNAPSHOT_FIELDS, MODEL_FEATURES
from features.score2d import load_scoring_tables
from features.store import get_store
from features.training_set import entity_frame, historical_features
from leadscore.config import Settings, get_settings
from leadscore.schemas import STEP_EVENT_TYPES
from pipelines.demo_traffic import load_backlog, replay_plan, replay_submissions
from serving.events import PersonEvent, PersonLead, next_row
from serving.predictor import Predictor, identifier_hashes
from serving.schemas import Event, Submission
from tests.integration.service_fixtures import (
    ServiceWorkdir,
    submission,
)

N_LEADS = 1500
SEED = 11
ORDER_FEATURES = {"is_customer", "recency_days", "frequency", "monetary", "rfm_segment"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    from crm_data.generate import generate_crm
    from crm_data.identity import resolve_identities

    root = tmp_path_factory.mktemp("event_replay")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEADSCORE_WORKDIR", str(root))
        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_dirs()
        generate_crm(settings.data_dir, n_leads=N_LEADS, seed=SEED, salt=settings.hash_salt)
        leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
        identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
        resolve_identities(identities, leads, settings.identity_dir)
        build_features(settings)
        yield settings
    get_settings.cache_clear()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _offline_rows(settings: Settings, lead_ids: list[str]) -> pd.DataFrame:
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    lead_person = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    entities = entity_frame(leads[leads["lead_id"].isin(lead_ids)].reset_index(drop=True),
                            lead_person)
    return historical_features(get_store(settings), entities).set_index("lead_id")


def test_history_reproduces_every_offline_snapshot(workdir: Settings) -> None:
    table = pd.read_parquet(workdir.features_dir / "person_behaviour.parquet")
    fields = [f for f in BEHAVIOUR_SNAPSHOT_FIELDS if f != history.HISTORY_FIELD]
    assert table[history.HISTORY_FIELD].notna().all()
    for row in table.to_dict("records"):
        doc = history.loads(row[history.HISTORY_FIELD])
        got = history.snapshot_at(doc, round(row["snap_ts_s"] * 1e6),
                                  workdir.intent_half_life_days)
        diffs = {f: (got[f], row[f]) for f in fields if not _same(got[f], row[f])}
        assert not diffs, (row["person_id"], diffs)


def test_windows_age_and_late_events_stay_hidden() -> None:
    tables = load_scoring_tables(Settings().scoring_config)
    t = datetime(2026, 6, 1, tzinfo=UTC)
    us = round(t.timestamp() * 1e6)
    day = history.DAY_US
    events = [PersonEvent("P", "pricing_page", us - int(6.5 * day), "/pricing"),
              PersonEvent("P", "web_visit", us + day, "/")]
    row = next_row(None, events, [PersonLead("P", "L1", us - 3 * day, "sem")], tables, 7.0)
    assert row["snap_ts_s"] == pytest.approx((us + day) / 1e6)  # the latest thing recorded
    doc = history.loads(row[history.HISTORY_FIELD])
    at_t = history.snapshot_at(doc, us, 7.0)
    assert (at_t["snap_events_7d"], at_t["snap_events_total"]) == (1, 1)  # later visit hidden
    assert at_t["snap_leads_before"] == 1
    week_later = history.snapshot_at(doc, us + 7 * day, 7.0)
    assert week_later["snap_pricing_page_7d"] == 0  # aged out of the window
    assert week_later["snap_pricing_page_90d"] == 1 and week_later["snap_events_total"] == 2
    # events older than the horizon fold into the base and keep totals and intent exact
    old = [PersonEvent("P", "email_open", us - (history.HORIZON_DAYS + 5) * day, "")]
    full = history.loads(next_row(None, old + events, [], tables, 7.0)[history.HISTORY_FIELD])
    assert full["n0"] == 1 and len(full["t"]) == 2
    unpruned = history.empty_history()
    history.add_events(unpruned, [(e.time_us, e.event_type, e.url, 1.0) for e in old + events])
    for name, value in history.snapshot_at(unpruned, us, 7.0).items():
        if name != "snap_intent":  # weights differ (1.0 here)
            assert _same(history.snapshot_at(full, us, 7.0)[name], value), name


def test_replayed_events_and_leads_give_the_offline_rows(workdir: Settings) -> None:
    leads = pd.read_parquet(workdir.raw_dir / "leads.parquet")
    created = leads["created_at"].sort_values()
    since = created.iloc[int(len(created) * 0.8)].floor("D").to_pydatetime()
    until = since + timedelta(days=10)
    materialize(workdir, end=since)
    plan = replay_plan(workdir, SEED, since, until, max_batch=200, singles=2)
    assert plan.submissions >= 50 and plan.events > 0 and len(plan.backlog) > 0
    load_backlog(workdir, plan)
    offline = _offline_rows(workdir, [s["lead_id"] for step in plan.steps
                                      for s in step.submissions])
    predictor = Predictor.from_settings(workdir, background_log=False, load_model=False)
    served = []
    try:
        for step in plan.steps:
            for body in step.events:
                # behaviour goes to the person's snapshot; a funnel step re-scores its lead
                # (serving.rescoring), it is no behaviour
                behaviour = [e for e in body["events"] if e["event_type"] not in STEP_EVENT_TYPES]
                if not behaviour:
                    continue
                answer = predictor.push_events([Event.model_validate(e) for e in behaviour])
                assert answer.accepted == len(behaviour) and not answer.rejected
            subs = [Submission.model_validate(s) for s in step.submissions]
            resolved = [predictor.resolve(s) for s in subs]
            columns, _ = predictor.features(subs, resolved)
            # what Predictor.predict does once the answers are computed (off the request
            # path: the recorder stores them within a linger; flush waits for that)
            predictor.recorder.record_submissions(subs, [r.person_id for r in resolved])
            predictor.recorder.flush()
            for i, sub in enumerate(subs):
                served.append((sub.lead_id, resolved[i].person_id,
                               {name: columns[name][i] for name in MODEL_FEATURES}))
    finally:
        predictor.close()
    mismatches, linked_in_window = {}, []
    served_persons: set[str] = set()
    for lead_id, person, row in served:
        expected = offline.loc[lead_id]
        assert person == expected["person_id"]
        diffs = {k: (v, expected[k]) for k, v in row.items() if not _same(v, expected[k])}
        # the one known gap: an order linked to the person by an identifier of an earlier lead
        # of the replayed window reaches the online store at the next load, not at once
        if diffs and set(diffs) <= ORDER_FEATURES and person in served_persons:
            linked_in_window.append(lead_id)
        elif diffs:
            mismatches[lead_id] = diffs
        served_persons.add(person)
    assert not mismatches, f"{len(mismatches)} of {len(served)} rows differ: " + str(
        list(mismatches.items())[:3])
    assert len(linked_in_window) <= max(1, 0.02 * len(served)), linked_in_window
    # the comparison covered the skew-prone cases
    frame = offline.loc[[lead_id for lead_id, _, _ in served]]
    assert (frame["prior_leads"] > 0).sum() >= 5
    assert (frame["events_1d"] > 0).sum() >= 5 and (frame["has_history"] == 0).sum() >= 1
    assert (frame["is_customer"] > 0).sum() >= 1


def test_a_lead_one_id_placed_is_served_as_its_person(workdir: Settings) -> None:
    """A submission of a lead One ID has placed gets that person, even when an identifier's
    latest owner is another person (a sibling's shared phone, a re-issued number): otherwise
    the lead is scored with the other person's history, and that person's later leads count
    it (prior_leads) where the offline rows do not."""
    leads = pd.read_parquet(workdir.raw_dir / "leads.parquet")
    bodies = replay_submissions(workdir, SEED, leads["created_at"].min().to_pydatetime())
    state = load_identity_state(workdir.identity_dir)
    own = dict(zip(state.lead_person["lead_id"], state.lead_person["person_id"], strict=True))
    latest_owner = state.identifier_map()
    predictor = Predictor.from_settings(workdir, background_log=False, load_model=False)
    try:
        subs = [Submission.model_validate(body) for body in bodies]
        served = {sub.lead_id: predictor.resolve(sub).person_id for sub in subs}
        events = {sub.lead_id: predictor.find_person(sub.identifiers, sub.lead_id)
                  for sub in subs}
        hashes = {sub.lead_id: identifier_hashes(sub.identifiers, workdir.hash_salt)[0]
                  for sub in subs}
    finally:
        predictor.close()
    assert len(served) == len(leads)
    elsewhere = [lead for lead, h in hashes.items()
                 if lookup_person(h, latest_owner) not in (None, own[lead])]
    assert len(elsewhere) >= 5  # the case is covered
    wrong = {lead: (person, own[lead]) for lead, person in served.items() if person != own[lead]}
    assert not wrong, f"{len(wrong)} of {len(served)}: {list(wrong.items())[:3]}"
    assert events == served  # POST /events finds the same person


def test_replay_never_shows_a_submission_a_later_event(workdir: Settings) -> None:
    leads = pd.read_parquet(workdir.raw_dir / "leads.parquet")
    created = leads["created_at"].sort_values()
    since = created.iloc[int(len(created) * 0.7)].floor("D").to_pydatetime()
    plan = replay_plan(workdir, SEED, since, since + timedelta(days=14), max_batch=50)
    lead_time = leads.set_index("lead_id")["created_at"]
    lead_person = pd.read_parquet(workdir.identity_dir / "lead_person.parquet")
    person_of = lead_person.set_index("lead_id")["person_id"]
    assert (plan.backlog["event_time"] < pd.Timestamp(since)).all()
    pushed: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []  # person, event time, visible
    for step in plan.steps:
        for body in step.events:
            for event in body["events"]:
                time = pd.Timestamp(event["event_time"])
                visible = max(time, lead_time[event["lead_id"]])
                pushed.append((person_of[event["lead_id"]], time, visible))
        for sub in step.submissions:
            at, person = pd.Timestamp(sub["submitted_at"]), person_of[sub["lead_id"]]
            leaks = [e for e in pushed if e[0] == person and e[1] <= at < e[2]]
            assert not leaks, (sub["lead_id"], leaks[:3])
        if step.submissions:  # the last step may hold the last leads' funnel steps alone
            last = pd.Timestamp(step.submissions[-1]["submitted_at"])
            assert all(visible <= last for _, _, visible in pushed)


def test_replay_sends_the_forms_step_and_later_steps_as_events(workdir: Settings) -> None:
    """/predict carries the step the form recorded; every later step of a replayed lead reached
    by the last submission arrives as an event of the lead, after the lead's submission, at
    its own time — never in the backlog, never the final step in the form."""
    leads = pd.read_parquet(workdir.raw_dir / "leads.parquet").set_index("lead_id")
    events = pd.read_parquet(workdir.raw_dir / "events.parquet")
    created = leads["created_at"].sort_values()
    since = created.iloc[int(len(created) * 0.7)].floor("D").to_pydatetime()
    plan = replay_plan(workdir, SEED, since, since + timedelta(days=14), max_batch=50)
    assert not plan.backlog["event_type"].isin(STEP_EVENT_TYPES).any()
    submitted: dict[str, pd.Timestamp] = {}
    sent: list[dict] = []
    for step in plan.steps:
        for body in step.events:
            for event in body["events"]:
                if event["event_type"] in STEP_EVENT_TYPES:
                    assert event["lead_id"] in submitted, event  # its lead was scored before
                    assert pd.Timestamp(event["event_time"]) > submitted[event["lead_id"]]
                    sent.append(event)
        for sub in step.submissions:
            assert sub["funnel_step"] == leads.loc[sub["lead_id"], "funnel_step"]
            submitted[sub["lead_id"]] = pd.Timestamp(sub["submitted_at"])
    forms = pd.Series({lead: leads.loc[lead, "funnel_step"] for lead in submitted})
    assert set(forms) <= {"submitted", "verified"} and (forms == "submitted").any()
    last = max(submitted.values())
    steps = events[events["event_type"].isin(STEP_EVENT_TYPES)
                   & events["lead_id"].isin(set(submitted))
                   & (events["event_time"] <= last)]
    assert len(steps) >= 10
    got = sorted((e["lead_id"], e["event_type"], pd.Timestamp(e["event_time"])) for e in sent)
    want = sorted(zip(steps["lead_id"], steps["event_type"], steps["event_time"], strict=True))
    assert got == want
    assert all(Event.model_validate(e).lead_id for e in sent)


def test_a_scored_submission_is_an_earlier_lead_of_the_next(
    service_workdir: ServiceWorkdir,
) -> None:
    predictor = Predictor.from_settings(service_workdir.settings, background_log=False)
    assert predictor.ready(), predictor.load_error
    now = datetime.now(UTC)
    ids = {"phone": None, "wechat_id": None, "email": None, "cookie_id": "c-replay-hook-1"}
    first = submission("L-hook-1", identifiers=ids, channel="sem",
                       submitted_at=(now - timedelta(hours=2)).isoformat())
    second = submission("L-hook-2", identifiers=ids, channel="app",
                        submitted_at=(now - timedelta(hours=1)).isoformat())
    try:
        answer = predictor.predict([Submission.model_validate(first)])[0]
        assert answer.degraded_reason == "person_unknown"  # nothing known before it
        assert answer.tags["prior_leads"] == 0
        for _ in range(2):  # a retried submission is one lead
            predictor.predict([Submission.model_validate(first)])
        assert predictor.recorder.flush(timeout=30)  # leads are recorded off the request path
        later = predictor.predict([Submission.model_validate(second)])[0]
    finally:
        predictor.close()
    assert later.person_id == answer.person_id and not later.degraded
    assert later.tags["prior_leads"] == 1
