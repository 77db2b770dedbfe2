"""The stored person snapshot: its windows and columns, the schema shared by the offline build
(``features.behaviour``), the history re-evaluation (``features.history``) and the request-time
transformation (``features.request``).

A behaviour snapshot holds event counts over ``WINDOWS_DAYS`` (all events), ``TYPE_WINDOWS``
(per event type), distinct URLs over ``URL_WINDOWS_DAYS`` and site visits over
``SITE_WINDOW_DAYS``, each column prefixed ``snap_``; an RFM snapshot holds the person's orders.
"""

from __future__ import annotations

from leadscore import schemas

WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30, 90)
TYPE_WINDOWS: dict[int, tuple[str, ...]] = {
    7: ("web_visit", "pricing_page", "course_page", "email_click", "live_class", "trial_class"),
    30: schemas.EVENT_TYPES,
    90: (
        "pricing_page",
        "email_open",
        "whitepaper_download",
        "live_class",
        "offline_event",
        "trial_class",
    ),
}
URL_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
SITE_EVENT_TYPES: tuple[str, ...] = ("web_visit", "pricing_page", "course_page", "recruitment_page")
SITE_WINDOW_DAYS = 180

COUNT_FEATURES: tuple[str, ...] = (
    ("events_total",)
    + tuple(f"events_{w}d" for w in WINDOWS_DAYS)
    + tuple(f"{t}_{w}d" for w, types in sorted(TYPE_WINDOWS.items()) for t in types)
    + tuple(f"urls_{w}d" for w in URL_WINDOWS_DAYS)
    + (f"site_visits_{SITE_WINDOW_DAYS}d",)
)
SNAP_PREFIX = "snap_"
BEHAVIOUR_SNAPSHOT_FIELDS: dict[str, str] = {
    "snap_ts_s": "float",
    "snap_has_history": "int",
    **{SNAP_PREFIX + c: "int" for c in COUNT_FEATURES},
    "snap_last_touch_ts_s": "float",
    "snap_first_touch_ts_s": "float",
    "snap_engagement_trend": "float",
    "snap_intent": "float",
    "snap_leads_before": "int",
    "snap_leads_upto": "int",
    "snap_channels_before": "int",
    "snap_channels_upto": "int",
    # recent events and leads, for evaluating the snapshot at a later time (features.history)
    "snap_history": "string",
}
# When the offline build takes a person's snapshots: at each of its leads' ``created_at`` (the
# build's ``idx``: ``lead_id, person_id, created_us, channel``) and at each later funnel step of
# its leads (``LATER_STEP_TIMES``: ``person_id, t``, the step's time in epoch µs; a re-score
# reads the person at that time, ``features.behaviour.later_step_times``). SQL over both.
LATER_STEP_TIMES = "later_step_times"
SNAPSHOT_TIMES_SQL = (
    "SELECT person_id, created_us AS t FROM idx UNION "
    f"SELECT CAST(person_id AS VARCHAR), CAST(t AS BIGINT) FROM {LATER_STEP_TIMES}"
)
RFM_SNAPSHOT_FIELDS: dict[str, str] = {
    "snap_order_count": "int",
    "snap_order_amount": "float",
    "snap_last_order_ts_s": "float",
}
