"""RFM of returning customers: recency, frequency and monetary value of earlier orders.

Orders are keyed by an identifier hash; One ID's ``identifier_person`` maps them to a person.
The snapshot of person P at time t (one per distinct lead ``created_at``, like the behaviour
snapshots, and one just after each of P's orders, 1 µs later, so that the online store loaded up
to any time knows every customer's orders by then, leads or not) counts P's orders with
``ordered_at < t`` (strictly: an order placed at the very moment of the submission is not
history yet) whose identifier P knew before t: One ID gives, per person as of each lead's time
(``asof_person_id``), the time its first lead carrying the identifier came (``known_us``), so an
identifier that only a later lead brings never makes an earlier lead a customer; and, as an order
counts only after it is placed, an order linked by a lead's own identifier counts only after that
lead (the service links orders through the store it was loaded with, not at the door). Orders whose
identifier resolves to nobody are dropped and counted.

Stored (``person_rfm`` table): ``snap_order_count``, ``snap_order_amount`` (sum, RMB) and
``snap_last_order_ts_s`` (0 when none). The request transformation turns them into the model
features ``is_customer``, ``recency_days`` (days from the last order to the request; 9999 when
there is none), ``frequency``, ``monetary`` and ``rfm_segment``: ``"R<r>F<f>M<m>"`` with 1 for
high (recency ≤ ``rfm_thresholds.recency_days``, frequency ≥ ``frequency``, monetary ≥
``monetary``; scoring.yaml) — eight groups — or ``"no_orders"`` for a person without orders.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from features.tags import from_epoch_us, to_epoch_us


def prepare_orders(
    orders: pd.DataFrame, identifier_person: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Orders mapped to persons (``person_id, ordered_us, amount, known_us``) and the count of
    orders whose identifier resolves to nobody. ``identifier_person`` may map a hash to several
    persons, each from ``known_us`` (epoch µs) on; without that column, from always (0)."""
    for col in ("id_hash", "ordered_at", "amount"):
        if col not in orders.columns:
            raise ValueError(f"orders table: missing column '{col}'")
    for col in ("id_hash", "person_id"):
        if col not in identifier_person.columns:
            raise ValueError(f"identifier_person table: missing column '{col}'")
    if "known_us" in identifier_person.columns:
        mapping = identifier_person[["id_hash", "person_id", "known_us"]]
    else:
        mapping = identifier_person.drop_duplicates("id_hash")[["id_hash", "person_id"]].assign(
            known_us=0)
    amount = pd.to_numeric(orders["amount"], errors="coerce").fillna(0.0)
    frame = pd.DataFrame({
        "id_hash": orders["id_hash"].to_numpy(dtype=object),
        "ordered_us": to_epoch_us(orders["ordered_at"], "orders.ordered_at"),
        "amount": amount.to_numpy(dtype=float),
    })
    prepared = frame.merge(mapping, on="id_hash", how="inner")
    unresolved = int((~frame["id_hash"].isin(mapping["id_hash"])).sum())
    prepared = pd.DataFrame({
        "person_id": prepared["person_id"].astype(str).to_numpy(),
        "ordered_us": prepared["ordered_us"].to_numpy(dtype="int64"),
        "amount": prepared["amount"].to_numpy(dtype=float),
        "known_us": prepared["known_us"].to_numpy(dtype="int64"),
    })
    return prepared, unresolved


def person_rfm(
    index: pd.DataFrame, orders: pd.DataFrame, identifier_person: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The ``person_rfm`` table (``person_id, event_timestamp`` + order snapshot fields) and the
    number of orders whose identifier resolves to nobody."""
    prepared, unresolved = prepare_orders(orders, identifier_person)
    sql = """
        WITH snaps AS (SELECT person_id, created_us AS t FROM idx
                       UNION SELECT person_id, greatest(ordered_us, known_us) + 1 AS t FROM ord)
        SELECT s.person_id, s.t AS snapshot_us,
               count(o.ordered_us) AS snap_order_count,
               coalesce(sum(o.amount), 0.0) AS snap_order_amount,
               coalesce(max(o.ordered_us), 0) / 1e6 AS snap_last_order_ts_s
        FROM snaps s LEFT JOIN ord o ON o.person_id = s.person_id AND o.ordered_us < s.t
                                     AND o.known_us < s.t
        GROUP BY s.person_id, s.t
    """
    con = duckdb.connect()
    try:
        con.register("idx", index[["person_id", "created_us"]])
        con.register("ord", prepared)
        snap = con.execute(sql).df()
    finally:
        con.close()
    out = pd.DataFrame({"person_id": snap["person_id"].astype(str)})
    out["event_timestamp"] = from_epoch_us(snap["snapshot_us"]).array
    out["snap_order_count"] = snap["snap_order_count"].astype("int64").to_numpy()
    out["snap_order_amount"] = snap["snap_order_amount"].astype(float).to_numpy()
    out["snap_last_order_ts_s"] = snap["snap_last_order_ts_s"].astype(float).to_numpy()
    return out, unresolved
