"""The person store: masks made at the door, no raw identifier anywhere, portraits as the data
say, and audience SQL counting exactly what a naive pandas evaluation of the same tree does."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from crm_data.ingest import MASKS_FILE
from features.audience import (
    check_bounds,
    evaluate_pandas,
    parse_tree,
    run_count,
    run_members,
)
from features.portrait_store import PortraitStore, lookup_path
from leadscore.config import Settings
from tests.portrait_data import N_PERSONS, NOW, URLS, build_workdir, person_ids, phone_of


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_workdir(tmp_path_factory.mktemp("portrait"))


@pytest.fixture(scope="module")
def store(built: Settings) -> PortraitStore:
    store = PortraitStore(built.portrait_store_path)
    yield store
    store.close()


def test_masks_are_stored_beside_the_hashes_and_no_raw_identifier_is_stored(built: Settings
                                                                             ) -> None:
    masks = pd.read_parquet(built.raw_dir / MASKS_FILE)
    assert set(masks["id_type"]) == {"phone", "email", "wechat"}
    assert masks["id_hash"].is_unique
    assert set(masks.loc[masks["id_type"] == "phone", "masked"]) == {"138****8000"}
    raw = [phone_of(k).replace(" ", "")[3:] for k in range(N_PERSONS)]
    raw += [f"user{k}@example.com" for k in range(N_PERSONS)]
    raw += [f"wx_user{k:03d}" for k in range(N_PERSONS)]
    stored = [*built.raw_dir.glob("*.parquet"), *built.identity_dir.glob("*.parquet")]
    blob = b"".join(p.read_bytes() for p in stored) + built.portrait_store_path.read_bytes()
    text = "\n".join(pd.read_parquet(p).astype(str).to_csv() for p in stored)
    conn = duckdb.connect(str(built.portrait_store_path), read_only=True)
    for table in ("persons", "identifiers", "leads", "events", "predictions"):
        text += conn.execute(f"SELECT * FROM {table}").df().astype(str).to_csv()
    conn.close()
    lookup = sqlite3.connect(lookup_path(built.portrait_store_path))
    for table in ("persons", "identifiers", "leads", "timeline", "predictions"):
        text += pd.read_sql(f"SELECT * FROM {table}", lookup).astype(str).to_csv()
    lookup.close()
    blob += lookup_path(built.portrait_store_path).read_bytes()
    leaked = [value for value in raw if value in text or value.encode() in blob]
    assert not leaked, f"{len(leaked)} raw identifiers stored"


def test_a_portrait_holds_masked_identifiers_tags_leads_scores_and_a_paged_timeline(
        built: Settings, store: PortraitStore) -> None:
    events = store.frame("SELECT p.person_id, COUNT(*) AS n FROM events e JOIN persons p "
                         "USING (pk) GROUP BY p.person_id ORDER BY n DESC, p.person_id")
    person, n_events = events.iloc[0]["person_id"], int(events.iloc[0]["n"])
    first = store.portrait(person, page=1, page_size=3)
    assert {i["type"] for i in first["identifiers"]} >= {"phone"}
    assert all("****" in i["masked"] for i in first["identifiers"] if i["type"] == "phone")
    times = [e["event_time"] for e in first["timeline"]["events"]]
    assert times == sorted(times, reverse=True) and first["timeline"]["total"] == n_events
    second = store.portrait(person, page=2, page_size=3)
    assert second["timeline"]["events"][0]["event_time"] <= times[-1]
    pages = first["timeline"]["pages"]
    with pytest.raises(ValueError, match=f"page {pages + 1} is past the end"):
        store.portrait(person, page=pages + 1, page_size=3)
    leads = first["leads"]
    assert leads and all(len(lead["scores"]) == 2 for lead in leads)
    last = max((s for lead in leads for s in lead["scores"]), key=lambda s: s["scored_at"])
    assert first["tags"]["predictive"]["probability"] == pytest.approx(last["probability"])
    assert first["tags"]["rfm"]["segment"] == "no_orders"
    total = first["tags"]["score_2d"]
    assert total["total"] == pytest.approx(total["fit"] + total["interest"])
    assert store.portrait("P-0000000000000000") is None


def _random_leaf(rng: random.Random) -> dict:
    if rng.random() < 0.45:
        field = rng.choice(["tier", "source", "grade", "subject", "city_tier", "probability",
                            "lead_count", "rule_score", "funnel_step"])
        if field in ("probability", "lead_count", "rule_score"):
            value = {"probability": rng.random(), "lead_count": rng.randint(1, 3),
                     "rule_score": rng.choice([0, 30, 60])}[field]
            return {"type": "tag", "field": field, "op": rng.choice(["gt", "gte", "lt", "lte",
                                                                       "eq", "ne"]),
                    "value": value}
        values = {"tier": ["A", "C", "B"], "source": ["sem", "seo", "wechat_private"],
                  "grade": ["G1", "G2", "G5"], "subject": ["math", "english", "coding"],
                  "city_tier": [1, 2, 3], "funnel_step": ["submitted", "verified"]}[field]
        op = rng.choice(["eq", "ne", "in", "not_in"])
        value = rng.sample(values, 2) if op in ("in", "not_in") else rng.choice(values)
        return {"type": "tag", "field": field, "op": op, "value": value}
    leaf: dict = {"type": "behaviour", "event_type": rng.choice(
        ["web_visit", "pricing_page", "email_open", "live_class", "any"])}
    roll = rng.random()
    if roll < 0.3:
        leaf["url_prefix"] = rng.choice(["/course", "/pricing", "/trial"])
    elif roll < 0.5:
        leaf["url_glob"] = rng.choice(["/course/*", "*/book", "/c?urse/*", "*i*"])
    if rng.random() < 0.7:
        leaf["within_days"] = rng.choice([7, 14, 30, 60])
        leaf["min_count"] = rng.choice([1, 1, 2, 3])
    if rng.random() < 0.3:
        leaf[rng.choice(["last_before", "last_after"])] = (
            NOW - pd.Timedelta(days=rng.randint(5, 40))).isoformat()
    return leaf


def _random_tree(rng: random.Random, depth: int = 0) -> dict:
    if depth >= 2 or rng.random() < 0.35:
        return _random_leaf(rng)
    if rng.random() < 0.2:
        return {"type": "not", "rule": _random_tree(rng, depth + 1)}
    return {"type": rng.choice(["and", "or"]),
            "rules": [_random_tree(rng, depth + 1) for _ in range(rng.randint(1, 3))]}


def test_sql_counts_equal_a_naive_pandas_evaluation_on_random_trees(store: PortraitStore
                                                                    ) -> None:
    persons = store.frame("SELECT * FROM persons")
    events = store.frame("SELECT * FROM events")
    rng = random.Random(11)
    nonzero = 0
    for _ in range(60):
        parsed = parse_tree({"tree": _random_tree(rng)})
        as_of = check_bounds(parsed, store.bounds, store.built_at)
        mask = evaluate_pandas(parsed, as_of, persons, events)
        expected = set(persons.loc[mask.to_numpy(dtype=bool), "person_id"])
        result = run_count(store.cursor(), parsed, as_of)
        members, total = run_members(store.cursor(), parsed, as_of)
        assert result.total == len(expected) == total, parsed.model_dump(exclude_none=True)
        assert set(members) == expected
        nonzero += 0 < len(expected) < len(persons)
    assert nonzero >= 20  # the trees discriminate: most select some persons, not all or none


def test_counts_after_each_rule_are_cumulative(store: PortraitStore) -> None:
    rules = [{"type": "tag", "field": "subject", "op": "in", "value": ["math", "coding"]},
             {"type": "behaviour", "event_type": "any", "url_prefix": "/course",
              "within_days": 40},
             {"type": "tag", "field": "tier", "op": "eq", "value": "A"}]
    for combinator in ("and", "or"):
        parsed = parse_tree({"tree": {"type": combinator, "rules": rules}})
        result = run_count(store.cursor(), parsed, NOW)
        for i, step in enumerate(result.steps):
            alone = run_count(store.cursor(), parse_tree({"tree": rules[i]}), NOW).total
            prefix = run_count(store.cursor(), parse_tree(
                {"tree": {"type": combinator, "rules": rules[:i + 1]}}), NOW).total
            assert (step["matching"], step["cumulative"]) == (alone, prefix)
        assert result.total == result.steps[-1]["cumulative"]
        assert result.population == N_PERSONS


def test_members_page_through_the_audience_in_order(built: Settings, store: PortraitStore
                                                    ) -> None:
    parsed = parse_tree({"tree": {"type": "tag", "field": "lead_count", "op": "gte",
                                  "value": 1}})
    ids, total = run_members(store.cursor(), parsed, NOW, limit=7, offset=0)
    rest, _ = run_members(store.cursor(), parsed, NOW, limit=100, offset=7)
    assert total == N_PERSONS and ids + rest == sorted(person_ids(built))
    assert len(URLS) == 5
    assert Path(built.portrait_store_path).is_file()
