"""Raw table validation and all-or-nothing ingest of CRM export batches."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from crm_data.identity import resolve_identities
from crm_data.ingest import ingest_batch
from crm_data.validation import (
    ValidationError,
    conform_table,
    load_raw_tables,
    validate_table,
)
from leadscore.identifiers import hash_identifier
from leadscore.schemas import EVENTS, IDENTITIES, LEADS, OUTCOMES, RAW_TABLES

SALT = "test-salt"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
RAW_VALUES = ["13800138000", "138 0013 8000", "mom@example.com", "Mom@Example.com",
              "wx_parent01", "device-0001", "13911112222"]


def good_leads(n: int = 3, start: int = 0) -> pd.DataFrame:
    ids = [f"L{i}" for i in range(start, start + n)]
    return pd.DataFrame({
        "lead_id": ids,
        "created_at": pd.date_range("2024-05-01", periods=n, freq="h", tz="UTC"),
        "channel": ["sem"] * n, "campaign": ["spring"] * n, "landing_page": ["/trial"] * n,
        "grade": ["G3"] * n, "subject": ["math"] * n, "city": ["Shanghai"] * n,
        "city_tier": [1] * n, "device": ["ios"] * n, "funnel_step": ["submitted"] * n,
        "phone_valid": [True] * n, "email_domain_type": ["free"] * n,
    })


def problems_of(df: pd.DataFrame, schema=LEADS) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate_table(df, schema, now=NOW)
    return caught.value


def test_good_table_passes() -> None:
    validate_table(good_leads(), LEADS, now=NOW)


@pytest.mark.parametrize(
    ("mutate", "column", "problem", "row"),
    [
        (lambda d: d.drop(columns=["channel"]), "channel", "missing required column", None),
        (lambda d: d.assign(city_tier=["1", "two", "3"]), "city_tier", "wrong type", "row 2"),
        (lambda d: d.assign(campaign=["a", None, "c"]), "campaign", "null values", "row 2"),
        (lambda d: d.assign(channel=["sem", "sem", "tv"]), "channel", "outside the allowed",
         "row 3"),
        (lambda d: d.assign(lead_id=["L0", "L0", "L2"]), "lead_id", "duplicate values", "row 1"),
        (lambda d: d.assign(created_at=d["created_at"].dt.tz_localize(None)), "created_at",
         "naive timestamps", "row 1"),
        (lambda d: d.assign(created_at=[d["created_at"][0], d["created_at"][1],
                                        pd.Timestamp("2024-06-01 00:10", tz="UTC")]),
         "created_at", "in the future", "row 3"),
        (lambda d: d.assign(phone_valid=["yes", "maybe", "no"]), "phone_valid", "wrong type",
         "row 2"),
    ],
)
def test_each_problem_kind_is_named(mutate, column: str, problem: str, row: str | None) -> None:
    error = problems_of(mutate(good_leads()))
    message = str(error)
    assert "table 'leads'" in message
    assert any(p.column == column and problem in p.problem for p in error.problems), message
    line = next(line for line in message.splitlines() if f"column '{column}'" in line)
    assert problem in line
    if row is not None:  # rows named by place (1-based), never by a value
        assert f"e.g. {row}" in line and "lead_id=" not in line


def test_clock_skew_tolerates_a_few_minutes() -> None:
    leads = good_leads(1).assign(created_at=[pd.Timestamp("2024-06-01 00:04", tz="UTC")])
    validate_table(leads, LEADS, now=NOW)


def test_all_problems_of_a_table_are_collected() -> None:
    leads = good_leads(7).assign(channel=["tv"] * 7, grade=[None] * 6 + ["G99"])
    leads = leads.drop(columns=["device"])
    error = problems_of(leads)
    kinds = {(p.column, p.problem.split(" (")[0]) for p in error.problems}
    assert ("device", "missing required column") in kinds
    assert ("channel", "values outside the allowed set") in kinds
    assert ("grade", "values outside the allowed set") in kinds
    channel = next(p for p in error.problems if p.column == "channel")
    assert channel.n_rows == 7 and len(channel.examples) == 5  # at most five rows named


def test_identifier_hash_columns_refuse_raw_values() -> None:
    good = hash_identifier("phone", "13800138000", SALT)[0]
    identities = pd.DataFrame({"lead_id": ["L0", "L1", "L2"],
                               "id_type": ["phone", "phone", "email"],
                               "id_hash": [good, "13800138000", good]})
    error = problems_of(identities, IDENTITIES)
    message = str(error)
    assert "not a salted identifier hash" in message and "e.g. row 2)" in message
    assert "does not match id_type" in message and "e.g. row 3)" in message
    assert "13800138000'" not in message  # the raw value is never echoed


def test_conform_reads_csv_text_and_assume_utc() -> None:
    text = pd.DataFrame({
        "lead_id": ["L0", "L1"], "converted": ["true", "0"],
        "converted_at": ["2024-05-02 10:00", None], "amount": ["1999.5", "0"],
        "followup_channel": ["sales", "tmk"],
    })
    with pytest.raises(ValidationError, match="naive timestamps"):
        conform_table(text, OUTCOMES, now=NOW)
    table = conform_table(text, OUTCOMES, now=NOW, assume_utc=True)
    assert str(table["converted_at"].dtype) == "datetime64[us, UTC]"
    assert table["converted_at"][0] == pd.Timestamp("2024-05-02 10:00", tz="UTC")
    assert list(table["converted"]) == [True, False]
    assert table["amount"].tolist() == [1999.5, 0.0]
    shifted = text.assign(converted_at=["2024-05-02T18:00:00+08:00", None])
    assert conform_table(shifted, OUTCOMES, now=NOW)["converted_at"][0] == table[
        "converted_at"][0]


def test_load_raw_tables_names_missing_files_and_bad_tables(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="leads.parquet"):
        load_raw_tables(tmp_path)
    good_leads().to_parquet(tmp_path / "leads.parquet")
    assert len(load_raw_tables(tmp_path, tables=["leads"], now=NOW)["leads"]) == 3
    good_leads().assign(channel="tv").to_parquet(tmp_path / "leads.parquet")
    with pytest.raises(ValidationError, match="column 'channel'"):
        load_raw_tables(tmp_path, tables=["leads"], now=NOW)


# ---- ingest ----------------------------------------------------------------------------------
def write_batch(folder: Path, **tables: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def leads_export(start: int, phones: list[str], emails: list[str]) -> pd.DataFrame:
    frame = good_leads(len(phones), start).drop(columns=["phone_valid", "email_domain_type"])
    frame["created_at"] = frame["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return frame.assign(phone=phones, email=emails, wechat_id=["wx_parent01"] + [""] * (
        len(phones) - 1), cookie_id=["device-0001"] * len(phones), crm_note=["vip"] * len(phones))


def stored_bytes(raw_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(raw_dir.iterdir())}


def test_ingest_hashes_identifiers_at_the_door(tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "b1", leads=leads_export(
        0, ["138 0013 8000", "+86-138-0013-8000", "555"], ["Mom@Example.com", "", "bad@"]))
    raw = tmp_path / "raw"
    result = ingest_batch(batch, raw, SALT, now=NOW)
    assert result.appended["leads"] == 3 and result.appended["identities"] == 7
    assert result.identifiers_rejected == {"email:malformed_email": 1,
                                           "phone:not_a_mobile_number": 1}
    assert result.dropped_columns == {"leads": ["crm_note"]}
    tables = load_raw_tables(raw, now=NOW)
    assert set(tables) == set(RAW_TABLES)
    leads = tables["leads"]
    assert list(leads["phone_valid"]) == [True, True, False]
    assert list(leads["email_domain_type"]) == ["corporate", "none", "invalid"]
    assert str(leads["created_at"].dtype) == "datetime64[us, UTC]"
    phones = tables["identities"].query("id_type == 'phone'")
    assert phones["id_hash"].nunique() == 1 and len(phones) == 2


def test_refused_batch_leaves_stored_files_byte_identical(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ingest_batch(write_batch(tmp_path / "b1", leads=leads_export(
        0, ["13800138000", "13911112222"], ["", ""])), raw, SALT, now=NOW)
    before = stored_bytes(raw)
    bad_leads = leads_export(5, ["13800138000", "13911112222"], ["", ""])
    bad_leads.loc[1, "channel"] = "tv"
    events = pd.DataFrame({"event_id": ["E1"], "lead_id": ["L5"], "event_type": ["web_visit"],
                           "event_time": ["2024-05-01 08:00"], "url": ["/"],
                           "dwell_seconds": ["12"]})
    with pytest.raises(ValidationError, match="column 'channel'"):
        ingest_batch(write_batch(tmp_path / "b2", leads=bad_leads, events=events), raw, SALT,
                     now=NOW)
    orphan = events.assign(lead_id="L404")
    with pytest.raises(ValidationError, match="neither stored nor in this batch"):
        ingest_batch(write_batch(tmp_path / "b3", events=orphan), raw, SALT, now=NOW)
    clash = leads_export(1, ["13800138000"], [""]).assign(channel="seo")
    with pytest.raises(ValidationError, match="already stored with different content"):
        ingest_batch(write_batch(tmp_path / "b4", leads=clash), raw, SALT, now=NOW)
    with pytest.raises(ValueError, match="not named after a raw table"):
        ingest_batch(write_batch(tmp_path / "b5", lead=bad_leads), raw, SALT, now=NOW)
    assert stored_bytes(raw) == before
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


def test_resending_identical_rows_is_idempotent(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    export = leads_export(0, ["13800138000", "13911112222"], ["", ""])
    ingest_batch(write_batch(tmp_path / "b1", leads=export), raw, SALT, now=NOW)
    events = pd.DataFrame({"event_id": ["E1"], "lead_id": ["L1"], "event_type": ["web_visit"],
                           "event_time": ["2024-05-01T08:00:00Z"], "url": ["/"],
                           "dwell_seconds": ["12.5"]})
    again = ingest_batch(write_batch(tmp_path / "b2", leads=export, events=events), raw, SALT,
                         now=NOW)
    assert again.appended == {"leads": 0, "identities": 0, "events": 1, "orders": 0,
                              "outcomes": 0}
    assert again.skipped_identical["leads"] == 2
    tables = load_raw_tables(raw, now=NOW)
    # two phones, one WeChat id, two cookies
    assert len(tables["leads"]) == 2 and len(tables["identities"]) == 5
    validate_table(tables["events"], EVENTS, now=NOW)


def test_no_raw_identifier_in_any_written_table(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ingest_batch(write_batch(tmp_path / "b1", leads=leads_export(
        0, RAW_VALUES[:3], RAW_VALUES[2:5])), raw, SALT, now=NOW)
    tables = load_raw_tables(raw, now=NOW)
    resolve_identities(tables["identities"], tables["leads"], tmp_path / "identity")
    written = list(raw.glob("*.parquet")) + list((tmp_path / "identity").glob("*.parquet"))
    # the 5 raw tables, the identifier masks and One ID's files
    assert len(written) >= 8 and (raw / "identifier_masks.parquet") in written
    forbidden = {v.strip().lower() for v in RAW_VALUES} | set(RAW_VALUES) | {"8613800138000"}
    for path in written:
        frame = pd.read_parquet(path)
        for column in frame.columns:
            assert column not in {"phone", "email", "wechat_id", "cookie_id"}, path
            cells = {str(v).strip().lower() for v in frame[column].dropna()}
            leaked = {c for c in cells if any(f in c for f in forbidden)}
            assert not leaked, f"{path.name}.{column} holds raw identifiers"
