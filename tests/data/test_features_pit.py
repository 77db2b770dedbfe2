"""Point-in-time correctness through Feast on a small generated CRM: no leakage from later
events, orders or leads, earlier-lead visibility, and no training/serving skew."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from crm_data.identity import load_identity_state, resolve_identities, version_members
from features.build import build_features, materialize
from features.online import online_features
from features.request import MODEL_FEATURES
from features.store import get_store
from features.training_rows import (
    SNAPSHOT_COLUMN,
    SNAPSHOT_TIME_COLUMN,
    SUBMISSION,
    SUBMISSION_FIXED_FEATURES,
    submission_rows,
)
from features.training_set import ID_COLUMNS, feature_service_version
from features.training_set import build_training_set as build_all_rows
from leadscore.config import Settings, get_settings

N_LEADS = 1200


def build_training_set(settings: Settings, **kwargs: object) -> pd.DataFrame:
    """The training set's rows at submission (one per lead; the later steps' rows are tested
    on their own below)."""
    return submission_rows(build_all_rows(settings, **kwargs))


def _generate(settings: Settings) -> None:
    from crm_data.generate import generate_crm
    from crm_data.identity import resolve_identities

    generate_crm(settings.data_dir, n_leads=N_LEADS, seed=11, salt=settings.hash_salt)
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
    resolve_identities(identities, leads, settings.identity_dir)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("features_pit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEADSCORE_WORKDIR", str(root))
        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_dirs()
        _generate(settings)
        build_features(settings)
        training = build_training_set(settings)
        yield settings, training
    get_settings.cache_clear()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def test_training_set_shape_and_defaults(workdir) -> None:
    settings, training = workdir
    summary = training.attrs["summary"]
    assert len(training) + summary["excluded_open_window"] == N_LEADS
    assert summary["excluded_open_window"] > 0
    assert [c for c in training.columns if c not in ID_COLUMNS] == list(MODEL_FEATURES)
    assert not training[list(MODEL_FEATURES)].isna().any().any()
    assert set(training["label"].unique()) <= {0, 1}
    assert summary["feature_service_version"].startswith(settings.feature_service + "@")
    on_disk = pd.read_parquet(settings.data_dir / "training_set.parquet")
    assert len(on_disk) == summary["rows"] and len(training) == summary["leads"]
    assert (training[SNAPSHOT_COLUMN] == SUBMISSION).all()


def test_leads_see_only_earlier_leads_of_their_person(workdir) -> None:
    """Earlier leads of the lead's person as One ID knew it at the lead's time (its version:
    own leads and those a merge brought in)."""
    settings, training = workdir
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    state = load_identity_state(settings.identity_dir)
    members = version_members(state)
    merged = leads.merge(members, on="lead_id")
    own = state.lead_person.set_index("lead_id")["asof_person_id"]
    expected = {}
    for key, group in merged.groupby("asof_person_id"):
        times = group["created_at"].to_numpy()
        for lead_id, t in zip(group["lead_id"], times, strict=True):
            if own[lead_id] != key:
                continue
            earlier = group[times < t]
            expected[lead_id] = (len(earlier), earlier["channel"].nunique())
    got = training.set_index("lead_id")[["prior_leads", "prior_channels"]]
    mismatches = [lid for lid, row in got.iterrows()
                  if (row["prior_leads"], row["prior_channels"]) != expected[lid]]
    assert not mismatches
    assert got["prior_leads"].max() >= 1  # the data has repeat persons at all


def test_later_event_order_and_lead_never_change_earlier_rows(workdir, tmp_path) -> None:
    settings, training = workdir
    other = Settings().with_workdir(tmp_path / "planted")
    shutil.copytree(settings.data_dir, other.data_dir)
    (other.data_dir / "training_set.parquet").unlink()
    shutil.rmtree(other.features_dir)
    raw, ident = other.raw_dir, other.identity_dir
    leads = pd.read_parquet(raw / "leads.parquet")
    lp = pd.read_parquet(ident / "lead_person.parquet")
    idp = pd.read_parquet(ident / "identifier_person.parquet")
    # a person with several leads and a known identifier; plant right after its first lead
    merged = leads.merge(lp[["lead_id", "person_id", "asof_person_id"]], on="lead_id"
                         ).sort_values("created_at")
    counts = merged.groupby("person_id")["lead_id"].transform("size")
    unmerged = merged.groupby("person_id")["asof_person_id"].transform(
        lambda keys: (keys == keys.name).all())
    person = merged.loc[(counts >= 2) & unmerged & merged["person_id"].isin(idp["person_id"]),
                        "person_id"].iloc[0]
    first = merged[merged["person_id"] == person].iloc[0]
    plant_at = first["created_at"] + pd.Timedelta(minutes=1)
    assert not ((merged["person_id"] == person) & (merged["created_at"] > first["created_at"])
                & (merged["created_at"] <= plant_at)).any()

    new_lead = leads[leads["lead_id"] == first["lead_id"]].copy()
    new_lead["lead_id"], new_lead["created_at"] = "PLANTED", plant_at
    new_lead["channel"] = "seo" if first["channel"] != "seo" else "app"
    pd.concat([leads, new_lead]).to_parquet(raw / "leads.parquet", index=False)
    new_lp = lp.iloc[:1].copy()
    new_lp["lead_id"], new_lp["person_id"], new_lp["asof_person_id"] = "PLANTED", person, person
    pd.concat([lp, new_lp]).to_parquet(ident / "lead_person.parquet", index=False)
    events = pd.read_parquet(raw / "events.parquet")
    planted_events = events.iloc[:2].copy()
    planted_events["event_id"] = ["PE1", "PE2"]
    planted_events["lead_id"] = [first["lead_id"], "PLANTED"]
    planted_events["event_type"] = ["offline_event", "trial_class"]
    planted_events["url"] = ["/events/open-day", "/trial/math"]
    # PE1: the first lead's own event, after its submission; PE2: the planted lead's
    # pre-submission event dated BEFORE the first lead: neither may reach the first lead
    planted_events["event_time"] = [plant_at, first["created_at"] - pd.Timedelta(days=1)]
    pd.concat([events, planted_events]).to_parquet(raw / "events.parquet", index=False)
    orders = pd.read_parquet(raw / "orders.parquet")
    planted_order = pd.DataFrame({
        "order_id": ["PO1"], "id_hash": [idp.loc[idp["person_id"] == person, "id_hash"].iloc[0]],
        "ordered_at": [plant_at], "amount": [99999.0]}).astype(orders.dtypes.to_dict())
    pd.concat([orders, planted_order]).to_parquet(raw / "orders.parquet", index=False)

    build_features(other)
    replanted = build_training_set(other).set_index("lead_id")
    before = training.set_index("lead_id")
    earlier = before.index[before["created_at"] < plant_at]
    pd.testing.assert_frame_equal(before.loc[earlier], replanted.loc[earlier])
    later_of_person = [lid for lid in replanted.index
                       if lid in before.index and replanted.loc[lid, "person_id"] == person
                       and replanted.loc[lid, "created_at"] > plant_at]
    if "PLANTED" in replanted.index:
        assert replanted.loc["PLANTED", "prior_leads"] >= 1
        assert replanted.loc["PLANTED", "trial_class_90d"] >= 1
    changed = [lid for lid in later_of_person
               if replanted.loc[lid, "prior_leads"] != before.loc[lid, "prior_leads"]]
    assert changed or "PLANTED" in replanted.index, "the plant had no visible effect at all"


def test_online_features_equal_training_rows(workdir) -> None:
    settings, training = workdir
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet").set_index("lead_id")
    rng = np.random.default_rng(3)
    pools = [training[training["prior_leads"] > 0], training[training["has_history"] == 1],
             training[training["is_customer"] == 1], training]
    picks = pd.concat([p.sample(min(2, len(p)), random_state=int(rng.integers(1e6)))
                       for p in pools if len(p)]).drop_duplicates("lead_id")
    picks = picks.sort_values("created_at")
    assert len(picks) >= 5
    store = get_store(settings)
    assert feature_service_version(store) == training.attrs["summary"][
        "feature_service_version"]
    for _, row in picks.iterrows():
        at = row["created_at"].to_pydatetime()
        materialize(settings, end=at)
        store = get_store(settings)
        submission = leads.loc[row["lead_id"]].to_dict()
        served = online_features(store, submission, row["person_id"], at)
        assert list(served) == list(MODEL_FEATURES)
        diffs = {k: (v, row[k]) for k, v in served.items() if not _same(v, row[k])}
        assert not diffs, f"lead {row['lead_id']}: {diffs}"


def test_online_unknown_person_gets_defaults(workdir) -> None:
    settings, _ = workdir
    store = get_store(settings)
    at = pd.Timestamp("2026-06-01 08:00", tz="UTC").to_pydatetime()
    served = online_features(store, {"channel": "sem", "grade": 99}, None, at)
    assert served["has_history"] == 0 and served["events_total"] == 0
    assert served["days_since_last_touch"] == 9999.0
    assert served["rfm_segment"] == "no_orders" and served["grade"] == "unknown"
    assert all(v is not None for v in served.values())
    with pytest.raises(ValueError, match="timezone-aware"):
        online_features(store, {}, None, at.replace(tzinfo=None))


def test_training_set_as_of_uses_only_outcomes_known_then(workdir, tmp_path) -> None:
    settings, training = workdir
    created = pd.to_datetime(training["created_at"], utc=True)
    as_of = created.quantile(0.8).floor("D")
    window = pd.Timedelta(days=settings.conversion_window_days)
    earlier = build_training_set(settings, out=tmp_path / "as_of.parquet", as_of=as_of)
    earlier_created = pd.to_datetime(earlier["created_at"], utc=True)
    # only leads whose outcome window had closed by then
    assert len(earlier) < len(training)
    assert (earlier_created + window <= as_of).all()
    expected = training[created + window <= as_of]
    assert sorted(earlier["lead_id"]) == sorted(expected["lead_id"])
    # their labels need no outcome recorded after as_of: the same as with the full data
    labels = training.set_index("lead_id")["label"]
    assert (earlier.set_index("lead_id")["label"] == labels.loc[earlier["lead_id"]]).all()
    assert earlier.attrs["summary"]["data_end"] == as_of.isoformat()


@pytest.mark.slow  # two more resolutions and feature builds (about 25 s on a quiet machine)
def test_a_later_leads_identifier_never_changes_an_earlier_leads_features(workdir,
                                                                          tmp_path) -> None:
    """A lead's features use only the identifier links One ID knew at its time: resolving and
    building on the history cut at T gives every lead created by T the same features as the
    full history, although later leads bring identifiers that link an order to their person
    (planted here: an order keyed by an identifier only a lead after T carries)."""
    settings, training = workdir
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    ids = pd.read_parquet(settings.raw_dir / "identities.parquet")
    lp = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    cut = leads["created_at"].sort_values().iloc[int(0.6 * len(leads))]
    seen = ids.merge(leads[["lead_id", "created_at"]], on="lead_id").merge(
        lp[["lead_id", "person_id"]], on="lead_id")
    owners = seen.groupby("id_hash")["person_id"].nunique()
    first = seen.groupby(["person_id", "id_hash"], as_index=False)["created_at"].min()
    person_first = leads.merge(lp, on="lead_id").groupby("person_id")["created_at"].min()
    late = first[(first["created_at"] > cut) & first["id_hash"].map(owners).eq(1)
                 & first["person_id"].map(person_first).lt(cut)]
    assert len(late), "the data must hold a person whose identifier comes after the cut"
    person, id_hash, arrives = late.iloc[0][["person_id", "id_hash", "created_at"]]
    ordered_at = person_first[person] - pd.Timedelta(days=10)
    full_end = pd.Timestamp(training.attrs["summary"]["data_end"])

    def copy(name: str, keep: pd.Series | None) -> Settings:
        other = Settings().with_workdir(tmp_path / name)
        shutil.copytree(settings.raw_dir, other.raw_dir)
        raw = other.raw_dir
        orders = pd.read_parquet(raw / "orders.parquet")
        plant = pd.DataFrame({"order_id": ["PLANTED"], "id_hash": [id_hash],
                              "ordered_at": [ordered_at], "amount": [7777.0]}
                             ).astype(orders.dtypes.to_dict())
        pd.concat([orders, plant]).to_parquet(raw / "orders.parquet", index=False)
        if keep is not None:
            for table in ("leads", "identities", "events", "outcomes"):
                frame = pd.read_parquet(raw / f"{table}.parquet")
                frame[frame["lead_id"].isin(keep)].to_parquet(raw / f"{table}.parquet",
                                                              index=False)
        resolve_identities(pd.read_parquet(raw / "identities.parquet"),
                           pd.read_parquet(raw / "leads.parquet"), other.identity_dir)
        build_features(other)
        return other

    full = build_training_set(copy("full", None)).set_index("lead_id")
    early_ids = leads.loc[leads["created_at"] <= cut, "lead_id"]
    cut_rows = build_training_set(copy("cut", early_ids), as_of=full_end).set_index("lead_id")
    assert len(cut_rows) > 100
    columns = list(MODEL_FEATURES)
    pd.testing.assert_frame_equal(full.loc[cut_rows.index, columns], cut_rows[columns])
    # the planted order is visible from the lead that brought its identifier on, never before
    of_person = full[full["person_id"].isin({person}) | full.index.isin(
        lp.loc[lp["person_id"] == person, "lead_id"])]
    later = of_person[pd.to_datetime(of_person["created_at"], utc=True) > arrives]
    earlier = of_person[pd.to_datetime(of_person["created_at"], utc=True) < arrives]
    assert len(earlier) and (earlier["monetary"] < 7777).all()
    if len(later):
        assert (later["monetary"] >= 7777).all()


def test_no_row_sees_a_funnel_step_reached_after_its_time(workdir) -> None:
    """Each row's funnel step was reached by the row's time: the form's step at submission,
    a later step only from its step event on; every later step a lead reached has its row, and
    the features describing the submission stay the submission row's."""
    settings, training = workdir
    rows = pd.read_parquet(settings.data_dir / "training_set.parquet")
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet").set_index("lead_id")
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    steps = events[events["event_type"].isin(["verified", "followed_account", "booked_trial"])]
    step_at = steps.set_index(["lead_id", "event_type"])["event_time"]
    assert len(steps) > 50 and set(rows[SNAPSHOT_COLUMN]) == {
        SUBMISSION, "verified", "followed_account", "booked_trial"}
    at = pd.to_datetime(rows[SNAPSHOT_TIME_COLUMN], utc=True)
    first = rows[SNAPSHOT_COLUMN] == SUBMISSION
    # at submission: the step the form recorded (submitted, or verified by the form itself)
    assert (rows.loc[first, "funnel_step"].to_numpy()
            == leads.loc[rows.loc[first, "lead_id"], "funnel_step"].to_numpy()).all()
    assert set(rows.loc[first, "funnel_step"]) == {"submitted", "verified"}
    assert (at[first] == pd.to_datetime(rows.loc[first, "created_at"], utc=True)).all()
    # later rows: their step, reached at (and not after) their time
    later = rows[~first]
    assert (later["funnel_step"] == later[SNAPSHOT_COLUMN]).all()
    reached = pd.to_datetime(step_at.reindex(pd.MultiIndex.from_arrays(
        [later["lead_id"], later["funnel_step"]])).to_numpy(), utc=True)
    assert not pd.isna(reached).any()
    assert (reached <= at[~first].to_numpy()).all()
    assert (at[~first].to_numpy() > pd.to_datetime(later["created_at"], utc=True).to_numpy()).all()
    # every step event of a closed lead has its row; nothing else does
    closed = steps[steps["lead_id"].isin(set(training["lead_id"]))]
    assert len(later) == len(closed)
    # the submission's own features are kept; the label is the lead's
    base = rows[first].set_index("lead_id")
    for name in (*SUBMISSION_FIXED_FEATURES, "label", "created_at"):
        assert (later[name].to_numpy() == base.loc[later["lead_id"], name].to_numpy()).all(), name
    # the comparison rows (a lead's final step sent at submission) are not training rows
    final = pd.read_parquet(settings.data_dir / "training_set_final_step.parquet")
    assert len(final) == len(training) and SNAPSHOT_COLUMN not in final.columns
    order = {s: i for i, s in enumerate(("submitted", "verified", "followed_account",
                                         "booked_trial"))}
    assert (final.set_index("lead_id")["funnel_step"].map(order)
            >= base["funnel_step"].map(order).reindex(final["lead_id"]).to_numpy()).all()


def test_a_step_rows_features_are_what_the_service_computes_at_the_step(workdir) -> None:
    """A later step's row equals what the live path gives the lead at the step's time: the
    online store loaded at the lead's submission, then every event of the person visible by
    the step sent through the service's own snapshot update (``POST /events``,
    ``serving.events.BehaviourUpdater``) and every later lead of the person recorded (as
    ``/predict`` records it), then the lead read online at the step's time with the step in its
    form (orders as the store's next load gives them). The features describing the
    submission itself are the submission row's on both sides
    (``serving.rescoring.FIXED_FEATURES``), so they are left out here."""
    from features.fast_materialize import materialize_fast
    from features.request import normalise_category
    from leadscore.identifiers import scrub_url
    from serving.events import BehaviourUpdater, PersonEvent, PersonLead, epoch_us

    settings, training = workdir
    rows = pd.read_parquet(settings.data_dir / "training_set.parquet")
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    lp = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    behaviour = events[~events["event_type"].isin(["verified", "followed_account",
                                                   "booked_trial"])]
    # persons One ID never merged: their events are those of their own leads
    unmerged = lp.groupby("person_id")["asof_person_id"].transform(
        lambda keys: (keys == keys.name).all())
    own = lp[unmerged].merge(leads[["lead_id", "created_at", "channel"]], on="lead_id")
    seen = behaviour.merge(own, on="lead_id")
    seen["visible_at"] = seen[["event_time", "created_at"]].max(axis=1)

    later = rows[(rows[SNAPSHOT_COLUMN] != SUBMISSION) & rows["person_id"].isin(own["person_id"])]
    at = pd.to_datetime(later[SNAPSHOT_TIME_COLUMN], utc=True)
    created = pd.to_datetime(later["created_at"], utc=True)
    pending = [seen[(seen["person_id"] == p) & (seen["visible_at"] > c) & (seen["visible_at"] <= a)]
               for p, c, a in zip(later["person_id"], created, at, strict=True)]
    n_pending = np.array([len(p) for p in pending])
    # steps after behaviour the submission did not see: the rows the old build got wrong
    active = later[n_pending > 0]
    assert len(active) >= 5, "too few step rows with behaviour since the submission"
    picks = pd.concat([active.sample(5, random_state=5),
                       later[(later[SNAPSHOT_COLUMN] == "booked_trial") & (n_pending > 0)]
                       .head(1)]).drop_duplicates(["lead_id", SNAPSHOT_COLUMN])
    base = rows[rows[SNAPSHOT_COLUMN] == SUBMISSION].set_index("lead_id")
    compared = [c for c in MODEL_FEATURES if c not in SUBMISSION_FIXED_FEATURES]
    form_of = leads.set_index("lead_id")
    grew = 0
    for _, row in picks.iterrows():
        person = row["person_id"]
        submitted = pd.Timestamp(row["created_at"]).to_pydatetime()
        step_at = pd.Timestamp(row[SNAPSHOT_TIME_COLUMN]).to_pydatetime()
        materialize(settings, end=submitted, full=True)  # the store as of the submission
        mine = seen[(seen["person_id"] == person) & (seen["visible_at"] > submitted)
                    & (seen["visible_at"] <= step_at)].sort_values(["visible_at", "event_time"])
        later_leads = own[(own["person_id"] == person) & (own["created_at"] > submitted)
                          & (own["created_at"] <= step_at)]
        updater = BehaviourUpdater.from_settings(settings)
        try:
            updater.record_leads([PersonLead(person, lead_id, epoch_us(t.to_pydatetime()), ch)
                                  for lead_id, t, ch in zip(
                                      later_leads["lead_id"], later_leads["created_at"],
                                      normalise_category(later_leads["channel"].tolist(),
                                                         "channel"), strict=True)])
            updater.apply([PersonEvent(person, e.event_type, epoch_us(e.event_time.to_pydatetime()),
                                       scrub_url(e.url) if isinstance(e.url, str) else "")
                           for e in mine.itertuples(index=False)])
        finally:
            updater.close()
        # orders: the live path learns one linked by a later lead's identifier at the next
        # load of the store (the known gap of tests/integration/test_event_replay.py)
        materialize_fast(get_store(settings), submitted, step_at, feature_views=["person_rfm"])
        form = {**form_of.loc[row["lead_id"]].to_dict(), "funnel_step": row[SNAPSHOT_COLUMN]}
        served = online_features(get_store(settings), form, person, step_at)
        diffs = {k: (served[k], row[k]) for k in compared if not _same(served[k], row[k])}
        assert not diffs, f"lead {row['lead_id']} at {row[SNAPSHOT_COLUMN]}: {diffs}"
        grew += int(row["events_total"] > base.loc[row["lead_id"], "events_total"])
    assert grew >= 3, "the step rows should count the behaviour since the submission"
