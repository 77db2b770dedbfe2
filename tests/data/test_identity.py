"""One ID: merges, incremental joins and merges, stable ids, metrics, atomic state, CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from commands.identity import identity_command, ingest_command
from crm_data.identity import (
    IDENTIFIER_PERSON_FILE,
    LEAD_PERSON_FILE,
    PERSON_VERSIONS_FILE,
    component_persons,
    load_identity_state,
    lookup_person,
    new_person_id,
    pairwise_precision_recall,
    resolve_identities,
)
from leadscore.identifiers import hash_identifier

SALT = "test-salt"
T0 = pd.Timestamp("2024-03-01 09:00", tz="UTC")


def h(id_type: str, raw: str) -> str:
    value, reason = hash_identifier(id_type, raw, SALT)
    assert value is not None, reason
    return value


def leads_frame(*rows: tuple[str, int]) -> pd.DataFrame:
    """Leads from (lead_id, hours after T0)."""
    return pd.DataFrame({
        "lead_id": [r[0] for r in rows],
        "created_at": [T0 + pd.Timedelta(hours=r[1]) for r in rows],
    })


def ids_frame(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """Identities from (lead_id, id_type, raw value)."""
    return pd.DataFrame(
        [(lead, id_type, h(id_type, raw)) for lead, id_type, raw in rows],
        columns=["lead_id", "id_type", "id_hash"],
    )


def person_of(state_dir: Path) -> dict[str, str]:
    lead_person = load_identity_state(state_dir).lead_person
    return dict(zip(lead_person["lead_id"], lead_person["person_id"], strict=True))


def test_chain_of_shared_identifiers_is_one_person(tmp_path: Path) -> None:
    leads = leads_frame(("A", 0), ("B", 1), ("C", 2), ("D", 3))
    ids = ids_frame(("A", "phone", "13800138000"), ("B", "phone", "13800138000"),
                    ("B", "cookie", "dev-0001"), ("C", "cookie", "dev-0001"),
                    ("D", "email", "d@school.edu"))
    truth = pd.DataFrame({"lead_id": list("ABCD"), "true_person_id": [7, 7, 7, 8]})
    result = resolve_identities(ids, leads, tmp_path, truth=truth)
    persons = person_of(tmp_path)
    assert persons["A"] == persons["B"] == persons["C"] == new_person_id("A")
    assert persons["D"] == new_person_id("D")
    assert (result.persons, result.new, result.merged, result.rejected) == (2, 2, 0, 0)
    assert (result.precision, result.recall) == (1.0, 1.0)
    identifier_person = load_identity_state(tmp_path).identifier_person
    assert set(identifier_person["person_id"]) == {new_person_id("A"), new_person_id("D")}
    assert result.to_dict()["persons"] == 2


def test_founder_is_the_earliest_lead_not_the_smallest_id(tmp_path: Path) -> None:
    leads = leads_frame(("Z-early", 0), ("A-late", 5))
    ids = ids_frame(("Z-early", "wechat", "wx_parent01"), ("A-late", "wechat", "wx_parent01"))
    resolve_identities(ids, leads, tmp_path)
    assert set(person_of(tmp_path).values()) == {new_person_id("Z-early")}


def test_simultaneous_leads_found_the_person_of_the_smallest_id(tmp_path: Path) -> None:
    leads = leads_frame(("L-b", 0), ("L-c", 0), ("L-a", 0), ("L-solo", 0))
    ids = ids_frame(("L-b", "cookie", "tablet-77"), ("L-c", "cookie", "tablet-77"),
                    ("L-a", "cookie", "tablet-77"), ("L-solo", "cookie", "laptop-01"))
    resolve_identities(ids, leads, tmp_path)
    persons = person_of(tmp_path)
    assert {persons["L-a"], persons["L-b"], persons["L-c"]} == {new_person_id("L-a")}
    assert persons["L-solo"] == new_person_id("L-solo")


def test_new_lead_joins_existing_person(tmp_path: Path) -> None:
    resolve_identities(ids_frame(("A", "phone", "13900001111")), leads_frame(("A", 0)),
                       tmp_path)
    result = resolve_identities(ids_frame(("B", "phone", "139 0000 1111")),
                                leads_frame(("B", 10)), tmp_path)
    persons = person_of(tmp_path)
    assert persons["B"] == persons["A"] == new_person_id("A")
    assert (result.joined, result.new, result.merged, result.persons) == (1, 0, 0, 1)


def test_bridging_lead_merges_persons_and_the_older_id_survives(tmp_path: Path) -> None:
    # the older person has the lexicographically larger id: survival is by age, not by id
    first = resolve_identities(
        ids_frame(("L-old", "phone", "13700002222"), ("L-young", "email", "kid@qq.com")),
        leads_frame(("L-young", 5), ("L-old", 1)), tmp_path)
    before = person_of(tmp_path)
    assert first.persons == 2 and before["L-old"] != before["L-young"]
    older = before["L-old"]

    result = resolve_identities(
        ids_frame(("L-bridge", "phone", "+86 137 0000 2222"), ("L-bridge", "email", "KID@qq.com")),
        leads_frame(("L-bridge", 9)), tmp_path)
    after = person_of(tmp_path)
    assert after["L-old"] == after["L-young"] == after["L-bridge"] == older
    assert (result.merged, result.joined, result.new, result.persons) == (1, 1, 0, 1)
    identifier_person = load_identity_state(tmp_path).identifier_person
    assert set(identifier_person["person_id"]) == {older}


def test_ids_are_stable_across_reruns_and_batching(tmp_path: Path) -> None:
    leads = leads_frame(*[(f"L{i:02d}", i) for i in range(12)])
    rng = np.random.default_rng(3)
    phones = [f"1380000{1000 + k}" for k in rng.integers(0, 5, size=12)]
    ids = ids_frame(*[(f"L{i:02d}", "phone", phones[i]) for i in range(12)])

    once = tmp_path / "once"
    resolve_identities(ids, leads, once)
    files = {name: (once / name).read_bytes() for name in (LEAD_PERSON_FILE,
                                                            IDENTIFIER_PERSON_FILE)}
    rerun = resolve_identities(ids, leads, once)
    assert rerun.known == 12 and rerun.new == 0 and rerun.merged == 0
    assert {name: (once / name).read_bytes() for name in files} == files

    fresh = tmp_path / "fresh"
    resolve_identities(ids, leads, fresh)
    assert person_of(fresh) == person_of(once)

    batched = tmp_path / "batched"
    for part in (slice(0, 4), slice(4, 9), slice(9, 12)):
        resolve_identities(ids[ids["lead_id"].isin(leads["lead_id"][part])],
                           leads[part], batched)
    assert person_of(batched) == person_of(once)


def test_identifier_normalisation_links_formats_and_case(tmp_path: Path) -> None:
    assert h("phone", "138-0013-8000") == h("phone", "+86 138 0013 8000") == h(
        "phone", "008613800138000")
    assert h("email", " Mom@Example.COM ") == h("email", "mom@example.com")
    ids = ids_frame(("A", "phone", "(138) 0013-8000"), ("B", "phone", "+8613800138000"),
                    ("C", "email", "Mom@Example.com"), ("D", "email", "mom@example.com "))
    resolve_identities(ids, leads_frame(("A", 0), ("B", 1), ("C", 2), ("D", 3)), tmp_path)
    persons = person_of(tmp_path)
    assert persons["A"] == persons["B"] != persons["C"] == persons["D"]


def test_bad_identifiers_are_counted_not_raised(tmp_path: Path) -> None:
    leads = leads_frame(("A", 0), ("B", 1), ("C", 2))
    good = h("cookie", "device-42")
    ids = pd.DataFrame(
        [("A", "cookie", good), ("B", "phone", "13800138000"),  # raw value, not a hash
         ("B", "email", good),  # prefix says cookie
         ("C", "cookie", None), ("ghost", "cookie", good)],
        columns=["lead_id", "id_type", "id_hash"],
    )
    result = resolve_identities(ids, leads, tmp_path)
    assert result.rejected_reasons == {"malformed_hash": 1, "type_mismatch": 1,
                                       "missing_hash": 1, "unknown_lead": 1}
    assert result.rejected == 4
    assert result.no_identifier == 2  # B and C are persons of their own
    assert result.persons == 3
    stored = load_identity_state(tmp_path).identifier_person
    assert list(stored["id_hash"]) == [good]


def test_pairwise_precision_recall_on_known_example() -> None:
    pred = pd.Series(["p", "p", "p", "q", "q"], index=list("abcde"))
    true = pd.Series([1, 1, 2, 2, 2], index=list("abcde"))
    # predicted pairs: ab ac bc de (4); true pairs: ab cd ce de (4); both: ab de (2)
    assert pairwise_precision_recall(pred, true) == (0.5, 0.5)
    singletons = pd.Series(list("abcde"), index=list("abcde"))
    assert pairwise_precision_recall(singletons, true) == (1.0, 0.0)


def test_pairwise_precision_recall_matches_pair_enumeration() -> None:
    rng = np.random.default_rng(11)
    pred = pd.Series(rng.integers(0, 6, size=40))
    true = pd.Series(rng.integers(0, 5, size=40))
    pairs = list(itertools.combinations(range(40), 2))
    same_pred = {(i, j) for i, j in pairs if pred[i] == pred[j]}
    same_true = {(i, j) for i, j in pairs if true[i] == true[j]}
    both = len(same_pred & same_true)
    precision, recall = pairwise_precision_recall(pred, true)
    assert precision == pytest.approx(both / len(same_pred))
    assert recall == pytest.approx(both / len(same_true))


def test_serving_helpers_agree_with_batch_resolution(tmp_path: Path) -> None:
    resolve_identities(ids_frame(("A", "phone", "13512345678")), leads_frame(("A", 0)),
                       tmp_path)
    mapping = load_identity_state(tmp_path).identifier_map()
    unseen = h("email", "new@corp.cn")
    assert lookup_person([unseen, h("phone", "135 1234 5678")], mapping) == new_person_id("A")
    assert lookup_person([unseen], mapping) is None
    result = resolve_identities(ids_frame(("N", "email", "new@corp.cn")),
                                leads_frame(("N", 3)), tmp_path)
    assert result.new == 1 and person_of(tmp_path)["N"] == new_person_id("N")


def test_failed_write_leaves_previous_state_intact(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_identities(ids_frame(("A", "phone", "13800138000")), leads_frame(("A", 0)),
                       tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_to_parquet = pd.DataFrame.to_parquet
    calls = {"n": 0}

    def fail_on_second_file(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_to_parquet(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        resolve_identities(ids_frame(("B", "phone", "13800138000")), leads_frame(("B", 1)),
                           tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_leads_input_is_a_clear_error(tmp_path: Path) -> None:
    ids = ids_frame(("A", "phone", "13800138000"))
    with pytest.raises(ValueError, match="lacks column.*created_at"):
        resolve_identities(ids, pd.DataFrame({"lead_id": ["A"]}), tmp_path)
    naive = pd.DataFrame({"lead_id": ["A"], "created_at": [pd.Timestamp("2024-01-01")]})
    with pytest.raises(ValueError, match="created_at.*timezone-aware"):
        resolve_identities(ids, naive, tmp_path)


def _cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("identity")(identity_command)
    app.command("ingest")(ingest_command)
    return app


def test_cli_ingest_then_identity_reports_precision_recall(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    pd.DataFrame({
        "lead_id": ["A", "B", "C"],
        "created_at": ["2024-03-01 09:00", "2024-03-02T10:00:00+08:00", "2024-03-03"],
        "channel": ["sem", "seo", "app"], "campaign": ["c1"] * 3, "landing_page": ["/p"] * 3,
        "grade": ["G3", "", "G3"], "subject": ["math"] * 3, "city": ["Beijing"] * 3,
        "city_tier": ["1", "", "2"], "device": ["ios"] * 3,
        "funnel_step": ["submitted", "verified", "booked_trial"],
        "phone": ["138 0013 8000", "+86 13800138000", "12345"],
        "email": ["", "b@corp.cn", "B@CORP.CN"],
    }).to_csv(batch / "leads.csv", index=False)
    work = tmp_path / "work"
    runner = CliRunner()
    ingested = runner.invoke(_cli_app(), ["ingest", "--from", str(batch),
                                          "--workdir", str(work)])
    assert ingested.exit_code == 0, ingested.output
    assert "phone:not_a_mobile_number" in ingested.output
    truth_dir = work / "data" / "truth"
    pd.DataFrame({"lead_id": ["A", "B", "C"], "true_person_id": ["x", "x", "y"]}).to_parquet(
        truth_dir / "leads_truth.parquet")
    resolved = runner.invoke(_cli_app(), ["identity", "--workdir", str(work)])
    assert resolved.exit_code == 0, resolved.output
    assert "pairwise precision" in resolved.output
    persons = person_of(work / "data" / "identity")
    assert len(set(persons.values())) == 1  # A–B by phone, B–C by e-mail
    no_truth = runner.invoke(_cli_app(), ["identity", "--workdir", str(work), "--no-truth"])
    assert no_truth.exit_code == 0 and "pairwise precision" not in no_truth.output


def test_cli_identity_without_raw_tables_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli_app(), ["identity", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "leads.parquet" in result.output and "Traceback" not in result.output


def test_generated_crm_resolves_well_and_leaks_no_raw_identifier(tmp_path: Path) -> None:
    from crm_data.generate import simulate_crm, write_crm
    from crm_data.validation import load_raw_tables

    crm = simulate_crm(3000, seed=5, salt=SALT)
    write_crm(crm, tmp_path)
    tables = load_raw_tables(tmp_path / "raw")  # the generator's tables pass validation
    truth = pd.read_parquet(tmp_path / "truth" / "leads_truth.parquet")
    result = resolve_identities(tables["identities"], tables["leads"], tmp_path / "identity",
                                truth=truth)
    assert result.resolved_leads == 3000 and result.rejected == 0
    assert result.precision >= 0.97 and result.recall >= 0.95
    # linking on every shared identifier merges siblings and school computers' users
    components = component_persons(tables["identities"], tables["leads"]["lead_id"])
    naive, _ = pairwise_precision_recall(components, truth.set_index("lead_id")["true_person_id"])
    assert naive < result.precision - 0.2
    assert crm.raw_identifiers
    raw = {v.strip().lower() for v in crm.raw_identifiers} | set(crm.raw_identifiers)
    for path in (tmp_path / "identity").glob("*.parquet"):
        frame = pd.read_parquet(path)
        for column in frame.columns:
            cells = set(frame[column].dropna().astype(str))
            assert not cells & raw, f"{path.name}.{column} holds raw identifiers"


def test_cli_ingest_refuses_a_bad_batch_cleanly(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    pd.DataFrame({"lead_id": ["A"], "id_type": ["phone"], "id_hash": ["13800138000"]}).to_csv(
        batch / "identities.csv", index=False)
    result = CliRunner().invoke(_cli_app(), ["ingest", "--from", str(batch),
                                             "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 2
    assert "batch refused" in result.output and "column 'id_hash'" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "work" / "data" / "raw").glob("*.parquet"))


def evidence_frame(*rows: tuple[str, int, str | None, str | None]) -> pd.DataFrame:
    """Leads from (lead_id, hours after T0, grade, city)."""
    frame = leads_frame(*[(r[0], r[1]) for r in rows])
    frame["grade"] = [r[2] for r in rows]
    frame["city"] = [r[3] for r in rows]
    return frame


def test_siblings_under_one_parent_phone_and_family_wechat_stay_two_persons(
        tmp_path: Path) -> None:
    leads = evidence_frame(("elder-1", 0, "G9", "hangzhou"), ("younger-1", 5, "G4", "hangzhou"),
                           ("elder-2", 9, "G9", "hangzhou"), ("younger-2", 30, "G4", None),
                           ("no-grade", 40, None, "hangzhou"))
    ids = ids_frame(*[(lead, "phone", "13800138000") for lead in leads["lead_id"]],
                    ("elder-1", "wechat", "wx_family01"), ("younger-1", "wechat", "wx_family01"),
                    ("elder-2", "cookie", "laptop-elder"), ("younger-2", "cookie", "pad-kid2"))
    truth = pd.DataFrame({"lead_id": leads["lead_id"], "true_person_id": [1, 2, 1, 2, 1]})
    result = resolve_identities(ids, leads, tmp_path, truth=truth)
    persons = person_of(tmp_path)
    assert persons["elder-1"] == persons["elder-2"] != persons["younger-1"] == persons["younger-2"]
    assert persons["no-grade"] in {persons["elder-1"], persons["younger-1"]}
    assert result.persons == 2
    # linking on any shared identifier would make them one person
    assert component_persons(ids, leads["lead_id"]).nunique() == 1


def test_a_school_computer_does_not_merge_its_users(tmp_path: Path) -> None:
    rows = [(f"kid{i}", i, f"G{1 + i % 12}", "wuhan") for i in range(8)]
    leads = evidence_frame(*rows, ("kid0-again", 20, "G1", "wuhan"))
    ids = ids_frame(*[(f"kid{i}", "cookie", "library-pc-07") for i in range(8)],
                    *[(f"kid{i}", "phone", f"1390000{1000 + i}") for i in range(8)],
                    ("kid0-again", "phone", "13900001000"))
    resolve_identities(ids, leads, tmp_path)
    persons = person_of(tmp_path)
    assert len({persons[f"kid{i}"] for i in range(8)}) == 8
    assert persons["kid0-again"] == persons["kid0"]


def test_a_recycled_number_starts_a_new_person(tmp_path: Path) -> None:
    leads = evidence_frame(("old-owner", 0, "G7", "beijing"),
                           ("new-owner", 24 * 150, "G2", "chengdu"),
                           ("new-owner-2", 24 * 151, "G2", "chengdu"))
    ids = ids_frame(*[(lead, "phone", "13700007777") for lead in leads["lead_id"]])
    resolve_identities(ids, leads, tmp_path)
    persons = person_of(tmp_path)
    assert persons["old-owner"] != persons["new-owner"] == persons["new-owner-2"]
    # a live submission with the number finds its latest owner
    mapping = load_identity_state(tmp_path).identifier_map()
    assert lookup_person([h("phone", "13700007777")], mapping) == persons["new-owner"]


def test_a_bridging_lead_merges_only_from_its_time_on(tmp_path: Path) -> None:
    leads = evidence_frame(("A1", 0, "G5", "xian"), ("B1", 1, "G5", "xian"),
                           ("A2", 2, "G5", "xian"), ("bridge", 3, "G5", "xian"),
                           ("after", 4, "G5", "xian"))
    ids = ids_frame(("A1", "phone", "13511112222"), ("A2", "phone", "13511112222"),
                    ("B1", "email", "kid@school.cn"), ("bridge", "phone", "13511112222"),
                    ("bridge", "email", "kid@school.cn"), ("after", "email", "kid@school.cn"))
    result = resolve_identities(ids, leads, tmp_path)
    state = load_identity_state(tmp_path)
    lp = state.lead_person.set_index("lead_id")
    person = new_person_id("A1")
    assert set(lp["person_id"]) == {person} and result.merged == 1
    asof = lp["asof_person_id"]
    # before the bridge, A's and B's leads were two persons (sealed versions); from the bridge
    # on, the merged person's live version holds all of them
    assert asof["A1"] == asof["A2"] == f"{person}~1"
    assert asof["B1"] == f"{new_person_id('B1')}~1"
    assert asof["bridge"] == asof["after"] == person
    inherited = pd.read_parquet(tmp_path / PERSON_VERSIONS_FILE)
    assert set(inherited.loc[inherited["asof_person_id"] == person, "lead_id"]) == {
        "A1", "A2", "B1"}
    known = state.version_hashes.set_index(["id_hash", "asof_person_id"])["known_at"]
    email = h("email", "kid@school.cn")
    assert known[(email, f"{new_person_id('B1')}~1")] == T0 + pd.Timedelta(hours=1)
    assert (email, f"{person}~1") not in known.index  # A's leads never carried the e-mail
    assert known[(email, person)] == T0 + pd.Timedelta(hours=1)
