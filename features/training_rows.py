"""The kinds of rows of a training set: at submission, and after each later funnel step.

A lead has one row at its submission (``snapshot`` = ``submission``: the funnel step its form
recorded, features as of ``created_at``) and one row per funnel step it reached after the form
(``snapshot`` = the step's name, features as of the step's time ``snapshot_at``, the features
that describe the submission itself kept from it, as the service's re-scoring keeps them). All
rows of a lead share its ``created_at`` and label, so a time split by ``created_at`` keeps a
lead's rows together. Light on imports: training reads it without loading Feast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore.schemas import FUNNEL_STEPS

SNAPSHOT_COLUMN = "snapshot"
SNAPSHOT_TIME_COLUMN = "snapshot_at"
SUBMISSION = "submission"
SNAPSHOT_VALUES: tuple[str, ...] = (SUBMISSION, *FUNNEL_STEPS[1:])
# features that describe the submission itself: a later row keeps the submission row's values
# (``serving.rescoring.FIXED_FEATURES`` keeps them the same way)
SUBMISSION_FIXED_FEATURES: tuple[str, ...] = ("submit_hour_cn", "submit_weekday_cn",
                                              "prior_leads", "prior_channels")
# the comparison rows of yesterday's replay: features at submission with the lead's final step
FINAL_STEP_FILE = "training_set_final_step.parquet"


def submission_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at submission (one per lead); a frame without ``snapshot`` is all of them."""
    if SNAPSHOT_COLUMN not in frame.columns:
        return frame
    rows = frame[frame[SNAPSHOT_COLUMN].astype(str) == SUBMISSION].reset_index(drop=True)
    rows.attrs = dict(frame.attrs)
    return rows


def stage_rank(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the funnel stage it reflects for choosing a lead's row at a stage: 0 for the
    row at submission (whatever its form recorded), the step's index for a later step's row."""
    if SNAPSHOT_COLUMN not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    rank = {SUBMISSION: 0, **{step: i for i, step in enumerate(FUNNEL_STEPS) if i}}
    return frame[SNAPSHOT_COLUMN].astype(str).map(rank).fillna(0).astype(np.int64).to_numpy()


def rows_at_stage(frame: pd.DataFrame, step: str) -> pd.DataFrame:
    """One row per lead: what is known once ``step`` is reached or passed — the lead's latest
    row at a stage up to ``step`` (the row at submission for ``submitted``; a lead that never
    reached ``step`` keeps its latest earlier row)."""
    limit = FUNNEL_STEPS.index(step)
    rank = stage_rank(frame)
    eligible = frame.assign(_rank=rank)[rank <= limit]
    order = [c for c in ("lead_id", "_rank", SNAPSHOT_TIME_COLUMN) if c in eligible.columns]
    chosen = eligible.sort_values(order, kind="stable").groupby("lead_id", sort=False).tail(1)
    return chosen.drop(columns="_rank").reset_index(drop=True)
