"""Lead fact tags: what is known about a lead at its submission (``created_at``).

One row per lead, keyed by ``lead_id`` + ``created_at`` (the ``lead_facts`` table):
channel, campaign, landing page (and its page type), grade, subject, city tier, device,
funnel step (and its ordinal), phone validity, e-mail domain type, hour and weekday of
submission in China time (Asia/Shanghai, UTC+8 all year), and how many earlier leads the
person left and through how many distinct channels. "Earlier" means strictly before this
lead's ``created_at``; a lead never counts itself.

Defaults: a category outside its vocabulary (``leadscore.schemas``) or missing is
``"unknown"``; an unknown city tier is 0; an unknown funnel step has ordinal -1; a missing phone
validity counts as invalid (0). A lead that One ID did not map to a person becomes its own
person ``lead:<lead_id>`` (counted in the build summary), so it has no earlier leads.
The normalisation itself lives in ``features.request`` so the on-demand feature view applies
exactly the same rules to a live submission.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from features import request
from features.snapshot import LATER_STEP_TIMES, SNAPSHOT_TIMES_SQL

UNRESOLVED_PREFIX = "lead:"
AS_OF_PERSON = "asof_person_id"  # One ID's person of a lead as of the lead's time


def to_epoch_us(values: pd.Series, column: str) -> np.ndarray:
    """UTC timestamps as int64 microseconds since the epoch; naive timestamps count as UTC."""
    try:
        ts = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column '{column}': not readable as timestamps ({exc})") from None
    if ts.isna().any():
        raise ValueError(f"column '{column}': {int(ts.isna().sum())} missing timestamp(s)")
    return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()


def from_epoch_us(values: np.ndarray | pd.Series) -> pd.Series:
    """int64 epoch microseconds back to ``datetime64[us, UTC]``."""
    stamps = pd.to_datetime(np.asarray(values, dtype="int64"), unit="us", utc=True)
    return pd.Series(stamps).astype("datetime64[us, UTC]")


def lead_index(leads: pd.DataFrame, lead_person: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``lead_id, person_id, created_us, channel`` for every lead; and how many were unresolved.

    Leads missing from ``lead_person`` get their own person ``lead:<lead_id>``. When One ID
    gives each lead its person as of the lead's time (``asof_person_id``), that is the person
    the lead's features are keyed by (``crm_data.identity``: a later merge never reaches back).
    """
    for col in ("lead_id", "created_at", "channel"):
        if col not in leads.columns:
            raise ValueError(f"leads table: missing column '{col}'")
    for col in ("lead_id", "person_id"):
        if col not in lead_person.columns:
            raise ValueError(f"lead_person table: missing column '{col}'")
    if leads["lead_id"].duplicated().any():
        dup = leads.loc[leads["lead_id"].duplicated(), "lead_id"].iloc[0]
        raise ValueError(f"leads table: column 'lead_id' is not unique (e.g. {dup!r})")
    key = AS_OF_PERSON if AS_OF_PERSON in lead_person.columns else "person_id"
    mapping = lead_person.drop_duplicates("lead_id").set_index("lead_id")[key]
    person = leads["lead_id"].map(mapping)
    unresolved = person.isna()
    person = person.where(~unresolved, UNRESOLVED_PREFIX + leads["lead_id"].astype(str))
    index = pd.DataFrame(
        {
            "lead_id": leads["lead_id"].astype(str).to_numpy(),
            "person_id": person.astype(str).to_numpy(),
            "created_us": to_epoch_us(leads["created_at"], "leads.created_at"),
            "channel": request.normalise_category(leads["channel"].tolist(), "channel"),
        }
    )
    return index, int(unresolved.sum())


def register_later_step_times(con: duckdb.DuckDBPyConnection,
                              step_times: pd.DataFrame | None) -> None:
    """Register ``step_times`` (``person_id, t``: snapshot times at later funnel steps, see
    ``features.snapshot.SNAPSHOT_TIMES_SQL``; None: none) on ``con``."""
    if step_times is None:
        step_times = pd.DataFrame({"person_id": pd.Series([], dtype=object),
                                   "t": pd.Series([], dtype="int64")})
    con.register(LATER_STEP_TIMES, step_times[["person_id", "t"]])


def person_lead_history(index: pd.DataFrame,
                        step_times: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per distinct (person, time t) of a lead, and of a later funnel step of one
    (``step_times``: ``person_id, t``): earlier leads and channels of that person.

    ``leads_before`` / ``channels_before`` count leads created strictly before t;
    ``leads_upto`` / ``channels_upto`` also count those created at t (they become "earlier"
    for any later request, which lets the on-demand view use a stored snapshot exactly).
    """
    sql = f"""
        WITH snaps AS ({SNAPSHOT_TIMES_SQL})
        SELECT s.person_id, s.t AS snapshot_us,
               count(*) FILTER (WHERE l.created_us < s.t) AS leads_before,
               count(DISTINCT l.channel) FILTER (WHERE l.created_us < s.t) AS channels_before,
               count(*) AS leads_upto,
               count(DISTINCT l.channel) AS channels_upto
        FROM snaps s JOIN idx l ON l.person_id = s.person_id AND l.created_us <= s.t
        GROUP BY ALL
    """
    con = duckdb.connect()
    try:
        con.register("idx", index[["person_id", "created_us", "channel"]])
        register_later_step_times(con, step_times)
        return con.execute(sql).df()
    finally:
        con.close()


def lead_facts(leads: pd.DataFrame, index: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """The ``lead_facts`` table: normalised fact tags per lead (see module docstring)."""
    facts = request.normalise_submission(
        {
            col: leads[col].tolist() if col in leads.columns else [None] * len(leads)
            for col in request.FORM_FIELDS
        }
    )
    out = pd.DataFrame(facts)
    out.insert(0, "lead_id", index["lead_id"].to_numpy())
    out.insert(1, "person_id", index["person_id"].to_numpy())
    created = from_epoch_us(index["created_us"])
    out.insert(2, "created_at", created.array)
    ts_s = index["created_us"].to_numpy() / 1e6
    out["submit_hour_cn"] = request.china_hour(ts_s)
    out["submit_weekday_cn"] = request.china_weekday(ts_s)
    keyed = index[["person_id", "created_us"]].merge(
        history,
        left_on=["person_id", "created_us"],
        right_on=["person_id", "snapshot_us"],
        how="left",
    )
    out["prior_leads"] = keyed["leads_before"].fillna(0).astype("int64").to_numpy()
    out["prior_channels"] = keyed["channels_before"].fillna(0).astype("int64").to_numpy()
    return out
