"""What each follow-up channel does for a synthetic lead, and which leads history randomised.

The channel effect is **not** a function of the lead's base propensity alone. Every lead belongs
to one latent response segment, drawn per lead from scores on its attributes plus Gumbel noise
(``SEGMENT_NOISE``), so a model sees the segment only partly:

* ``sure_thing``: converts anyway; a human call adds little (top sales +0.15 log-odds). More
  likely the higher the lead's own conversion logit (returning, booked trials) — the leads that
  "route by probability" sends to the dearest channels;
* ``persuadable``: a human call matters most (TMK +1.0, sales +1.5, top sales +1.8). More likely
  for exam-year grades, pricing-page landings, verified / followed funnel steps, tier-1/2 cities
  and a middling base logit;
* ``lost_cause``: nothing changes them (effects about 0). More likely with a low base logit and a
  wrong persona;
* ``sleeping_dog``: a call annoys them (TMK −0.9, sales −0.5, top sales −0.3). Mostly
  purchased-list leads (``list_purchase``), some channel-agent leads.

Effects are on the log-odds of the *marginal* conversion probability (the truth's propensity,
outcome noise integrated out) relative to the AI bot, which stays the reference (effect 0).
A human channel needs a usable phone: with none given or an unusable one its effect is 0.

**Time to contact.** The human teams work ``WORK_START_HOUR``–``WORK_END_HOUR`` China time; a
lead submitted outside waits for the next morning, and each team's queue adds
``QUEUE_HOURS[channel]`` (dearer teams are smaller, so their queues are longer). The effect is
multiplied by ``exp(-hours / FADE_HOURS)``: contact within the hour keeps 90% of it, a day later
about 9% (ten times less). The wait is known from the submission hour, so the truth's propensity
already holds it.

**Historical randomisation.** Before the service, the CRM drew the follow-up of a share of its
leads at random (``RANDOM_FOLLOWUP_SHARE``). Which leads, is what a service with exploration
would have logged: one salted SHA-256 draw of the lead id (the scheme of
``routing.control.control_draw``; salt ``HISTORY_SALT``) below the share → arm ``exploration``,
channel drawn uniformly by a second draw of ``explore:<lead_id>``, propensity 1/4; every other
lead → arm ``policy``, the K12 routing by funnel step, propensity 1. :func:`historical_arms`
recomputes both from the lead ids alone, so learning and off-policy evaluation use exactly those
leads (history randomised per lead; the live service randomises per person).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from leadscore.schemas import CHANNELS, FOLLOWUP_CHANNELS, GRADES

SEGMENTS: tuple[str, ...] = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")
# log-odds effect over the AI bot at immediate contact, per segment
SEGMENT_EFFECT: dict[str, dict[str, float]] = {
    "sure_thing": {"top_sales": 0.15, "sales": 0.10, "tmk": 0.05, "ai_bot": 0.0},
    "persuadable": {"top_sales": 1.8, "sales": 1.5, "tmk": 1.0, "ai_bot": 0.0},
    "lost_cause": {"top_sales": 0.05, "sales": 0.05, "tmk": 0.0, "ai_bot": 0.0},
    "sleeping_dog": {"top_sales": -0.3, "sales": -0.5, "tmk": -0.9, "ai_bot": 0.0},
}
SEGMENT_NOISE = 1.0  # Gumbel scale of the segment draw (1: the attributes tell only part)
WORK_START_HOUR, WORK_END_HOUR = 9, 21  # China time, the human teams' working day
QUEUE_HOURS: dict[str, float] = {"top_sales": 3.0, "sales": 1.5, "tmk": 0.5, "ai_bot": 0.0}
FADE_HOURS = 10.0
RANDOM_FOLLOWUP_SHARE = 0.25
HISTORY_SALT = "leadscore-followup-history"
_SCALE = float(2**64)
EXAM_GRADES = ("G9", "G12")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def hours_to_contact(submit_hour_cn: np.ndarray) -> np.ndarray:
    """Hours from submission to the first contact per channel (leads × FOLLOWUP_CHANNELS)."""
    hour = np.asarray(submit_hour_cn, dtype=float) + 0.5
    open_now = (hour >= WORK_START_HOUR) & (hour < WORK_END_HOUR)
    wait = np.where(open_now, 0.0, (WORK_START_HOUR - hour) % 24)
    return np.column_stack([np.where(QUEUE_HOURS[c] > 0, wait + QUEUE_HOURS[c], 0.0)
                            for c in FOLLOWUP_CHANNELS])


def segment_scores(base_marginal_logit: np.ndarray, facts: Any) -> np.ndarray:
    """Unnormalised log-weights of the segments per lead (leads × SEGMENTS), before noise."""
    b = np.asarray(base_marginal_logit, dtype=float)
    channel = np.asarray(facts.channel)
    grade = np.asarray(facts.grade)
    funnel = np.asarray(facts.funnel)
    exam = np.isin(grade, [GRADES.index(g) for g in EXAM_GRADES])
    listed = channel == CHANNELS.index("list_purchase")
    agent = channel == CHANNELS.index("channel_agent")
    middle_funnel = (funnel == 1) | (funnel == 2)
    big_city = np.asarray(facts.city_tier) <= 2
    # anchors on the generated world's base logit: median about -4.2 (1.6%), 90th percentile
    # -1.6 (17%), 99th +0.5 (63%): sure things are the top few percent, persuadables peak
    # around the 75th-85th percentile, lost causes are the bulk below the median
    sure = 2.0 * (b + 1.2)
    persuadable = (1.0 + 0.7 * exam + 0.5 * np.asarray(facts.landed_on_pricing, dtype=float)
                   + 0.6 * middle_funnel + 0.3 * big_city - 0.8 * listed
                   - 0.25 * (b + 2.5) ** 2)
    lost = -1.2 * (b + 3.5) + 0.8 * np.asarray(facts.wrong_persona, dtype=float)
    dog = -1.5 + 3.5 * listed + 1.2 * agent
    return np.column_stack([sure, persuadable, lost, dog])


def draw_segments(base_marginal_logit: np.ndarray, facts: Any,
                  rng: np.random.Generator) -> np.ndarray:
    """Segment index per lead: argmax of the scores plus Gumbel noise (a softmax draw)."""
    scores = segment_scores(base_marginal_logit, facts)
    return (scores + SEGMENT_NOISE * rng.gumbel(size=scores.shape)).argmax(axis=1)


def channel_propensities(base_logit: np.ndarray, facts: Any, rng: np.random.Generator,
                         marginal: Any) -> tuple[np.ndarray, np.ndarray]:
    """True conversion probability under each channel (leads × FOLLOWUP_CHANNELS) and the
    segment index per lead. ``marginal`` maps a logit to the probability with the outcome
    noise integrated out (``generate_mechanism.marginal_probability``)."""
    base_p = marginal(np.asarray(base_logit, dtype=float))
    b = _logit(base_p)
    segment = draw_segments(b, facts, rng)
    effect = np.array([[SEGMENT_EFFECT[s][c] for c in FOLLOWUP_CHANNELS] for s in SEGMENTS])
    callable_ = np.asarray(facts.phone_state) == 0
    fade = np.exp(-hours_to_contact(facts.submit_hour_cn) / FADE_HOURS)
    human = np.array([c != "ai_bot" for c in FOLLOWUP_CHANNELS])
    lift = effect[segment] * fade * np.where(human[None, :], callable_[:, None], 1.0)
    return 1.0 / (1.0 + np.exp(-(b[:, None] + lift))), segment


def _draw(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def historical_arms(lead_ids: Sequence[Any], funnel_channel: Sequence[str] | None = None,
                    share: float = RANDOM_FOLLOWUP_SHARE, salt: str = HISTORY_SALT,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arm, channel, propensity) per lead of the generated history (module docstring).

    ``funnel_channel``: the K12 channel per lead for the ``policy`` arm (None: left empty)."""
    if not 0.0 <= share <= 0.5:
        raise ValueError(f"exploration_share: {share} lies outside [0, 0.5]")
    ids = [str(x) for x in lead_ids]
    n_channels = len(FOLLOWUP_CHANNELS)
    explore = np.array([_draw(x, salt) < share for x in ids], dtype=bool)
    drawn = np.array([FOLLOWUP_CHANNELS[min(int(_draw(f"explore:{x}", salt) * n_channels),
                                            n_channels - 1)] for x in ids], dtype=object)
    base = (np.asarray(list(funnel_channel), dtype=object) if funnel_channel is not None
            else np.full(len(ids), None, dtype=object))
    channel = np.where(explore, drawn, base)
    arm = np.where(explore, "exploration", "policy").astype(object)
    propensity = np.where(explore, 1.0 / n_channels, 1.0)
    return arm, channel, propensity


def lead_id(number: int) -> str:
    """The generated lead id of the ``number``-th lead by creation time (``L00000042``)."""
    return f"L{int(number):08d}"


def historical_draws(lead_numbers: np.ndarray, share: float = RANDOM_FOLLOWUP_SHARE,
                     salt: str = HISTORY_SALT) -> tuple[np.ndarray, np.ndarray]:
    """For the generator: per lead (by its creation-order number) whether its follow-up was
    randomised, and the drawn channel's index in FOLLOWUP_CHANNELS (-1 when not randomised;
    :func:`historical_arms`)."""
    arm, channel, _ = historical_arms([lead_id(x) for x in lead_numbers], None, share, salt)
    index = {c: i for i, c in enumerate(FOLLOWUP_CHANNELS)}
    drawn = np.array([index.get(c, -1) for c in channel], dtype=np.int64)
    return arm == "exploration", drawn
