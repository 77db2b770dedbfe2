"""Synthetic CRM history: latent persons leaving leads, identifiers, behaviour, orders, outcomes.

``generate_crm`` writes the raw tables of ``leadscore.schemas`` to ``out_dir/raw/`` and the
ground truth to ``out_dir/truth/leads_truth.parquet``. The mechanism (effect sizes, vocabularies,
propensities) is in ``crm_data.generate_mechanism``; this module draws from it, vectorised with
one ``numpy.random.Generator`` so that the same seed gives byte-identical files.

Raw identifiers (phones, WeChat ids, e-mails, cookies) are formatted in varied ways, hashed with
``leadscore.identifiers.hash_identifier`` and dropped: only ``<type>:<hash>`` values are written.
Persons are students: siblings share the household's phone, WeChat, e-mail and tablet, school
computers share cookies, numbers are recycled, forms carry typos (``_slot_index``), so an
identifier is not a person. A conversion is also an order (time, amount) of the person.
"""

from __future__ import annotations

import calendar
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crm_data import channel_effects
from crm_data import generate_mechanism as m
from leadscore.config import get_settings
from leadscore.identifiers import hash_identifier
from leadscore.schemas import (
    CHANNELS,
    DEVICES,
    EMAIL_DOMAIN_TYPES,
    EVENT_TYPES,
    FOLLOWUP_CHANNELS,
    FUNNEL_STEPS,
    GRADES,
    RAW_TABLES,
    STEP_EVENT_TYPES,
    SUBJECTS,
    TRUTH_LEADS_COLUMNS,
    TableSchema,
)

DAY = m.SECONDS_PER_DAY
DEFAULT_START = date(2026, 5, 1)
PARQUET_OPTIONS: dict[str, Any] = dict(
    compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
    version="2.6", row_group_size=1 << 20,
)
_ARROW_TYPES = {
    "string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"), "int": pa.int64(),
    "float": pa.float64(), "bool": pa.bool_(),
}

# Identifier slots of a person, as bits of a per-lead mask.
PHONE1, PHONE2, WECHAT, EMAIL, COOKIE0, PRIVATE_PHONE = 0, 1, 2, 3, 4, 7
PHONE_BITS = (1 << PHONE1) | (1 << PHONE2) | (1 << PRIVATE_PHONE)
SLOT_TYPE = {0: "phone", 1: "phone", 2: "wechat", 3: "email", 4: "cookie", 5: "cookie",
             6: "cookie", 7: "phone"}
# When a lead shares nothing with the person's previous lead, it gets this slot of it.
CHAIN_PRIORITY = (PHONE1, WECHAT, COOKIE0, COOKIE0 + 1, COOKIE0 + 2, EMAIL, PHONE2)
PHONE_PREFIXES = (
    130, 131, 132, 133, 135, 136, 137, 138, 139, 150, 151, 152, 153, 155, 156, 157, 158, 159,
    166, 170, 176, 177, 178, 180, 181, 182, 183, 186, 188, 199,
)
PLACEHOLDER_PHONES = (
    "13800000000", "13888888888", "18888888888", "19999999999", "00000000000", "12345678901",
    "1380013800",
)
BAD_WECHAT_VALUES = ("同手机号", "微信同号", "无")
SURNAMES = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu",
            "sun", "ma", "zhu", "hu", "guo", "he", "lin", "gao", "luo")
GIVEN_NAMES = ("wei", "fang", "na", "min", "jing", "qiang", "lei", "jun", "yong", "yan", "jie",
               "tao", "ming", "chao", "xiu", "xia", "ping", "hua", "hao", "yu")
FREE_DOMAINS = ("qq.com", "163.com", "126.com", "gmail.com", "foxmail.com", "sina.com",
                "outlook.com")
CORPORATE_DOMAINS = ("huawei.com", "tencent.com", "alibaba-inc.com", "bytedance.com",
                     "ctrip.com", "sany.com.cn", "midea.com", "cmbchina.com")
EDU_DOMAINS = ("pku.edu.cn", "tsinghua.edu.cn", "zju.edu.cn", "fudan.edu.cn", "whu.edu.cn")
_AFFINE_MULTIPLIER = 2_654_435_761  # prime, coprime with the phone number space


@dataclass
class GenerationSummary:
    """What one generation produced (``seconds`` is the only wall-clock value)."""

    out_dir: str
    seed: int
    start: str
    days: int
    drift: bool
    window_days: int
    data_end: str
    n_leads: int
    n_persons: int
    n_identities: int
    n_events: int
    n_orders: int
    n_converted: int
    base_rate: float
    n_returning_persons: int
    n_multi_lead_persons: int
    n_unlinkable_persons: int
    unusable_identifiers: dict[str, int] = field(default_factory=dict)
    shared_identifiers: dict[str, int] = field(default_factory=dict)
    n_conversion_orders: int = 0
    n_step_events: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyntheticCrm:
    """An in-memory generation: Arrow tables by name (raw tables and ``truth``).

    ``raw_identifiers`` holds every raw identifier string drawn, in memory only, so that tests
    can prove none of them reaches a table; it is never written.
    """

    tables: dict[str, pa.Table]
    summary: GenerationSummary
    raw_identifiers: frozenset[str] = field(repr=False, default=frozenset())


Progress = Callable[[str], None]


# ---- small helpers --------------------------------------------------------------------------
def _within_group_cumsum(
    values: np.ndarray, group_start: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """Inclusive cumulative sum of ``values`` restarting at each group (rows grouped, in order)."""
    cs = np.cumsum(values)
    before = np.concatenate(([0.0], cs))[group_start]
    return cs - np.repeat(before, sizes)


def _choice(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn from the discrete distribution ``p`` (inverse CDF, int64)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)


def _by_mix(rng: np.random.Generator, mixes: list[np.ndarray], which: np.ndarray) -> np.ndarray:
    """Per row, an index drawn from ``mixes[which[row]]``."""
    u = rng.random(which.size)
    out = np.zeros(which.size, dtype=np.int64)
    for k, p in enumerate(mixes):
        rows = np.flatnonzero(which == k)
        cdf = np.cumsum(p) / np.sum(p)
        out[rows] = np.minimum(np.searchsorted(cdf, u[rows], side="right"), len(p) - 1)
    return out


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _timestamps(start_epoch: int, seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    micros = (start_epoch + seconds.astype(np.int64)) * 1_000_000
    return pa.array(micros, type=_ARROW_TYPES["timestamp"], mask=mask)


def _vocab(values: tuple[str, ...] | list[str], index: np.ndarray,
           mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(list(values), pa.string()).take(pa.array(index, pa.int64(), mask=mask))


def _base36(n: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


# ---- people and their leads -----------------------------------------------------------------
@dataclass
class _People:
    n: int
    leads: np.ndarray  # leads per person
    start: np.ndarray  # first row of the person's leads
    intent: np.ndarray
    wrong_persona: np.ndarray
    grade: np.ndarray
    subject: np.ndarray
    city: np.ndarray
    device: np.ndarray
    sibling_of: np.ndarray  # the other child of the household, -1 for an only lead-leaving child
    reluctance: np.ndarray  # latent: skips optional form fields


def _draw_people(rng: np.random.Generator, n_leads: int) -> _People:
    k = rng.choice(len(m.LEADS_PER_PERSON_P), size=n_leads, p=m.LEADS_PER_PERSON_P) + 1
    cum = np.cumsum(k)
    n = int(np.searchsorted(cum, n_leads)) + 1
    k = k[:n].copy()
    k[-1] -= cum[n - 1] - n_leads
    city_tier = np.array([tier for _, tier in m.CITIES])
    tier = _choice(rng, m.CITY_TIER_P, n)
    # a city within the drawn tier
    city_rank = rng.random(n)
    city = np.empty(n, dtype=np.int64)
    for t in range(4):
        members = np.flatnonzero(city_tier == t + 1)
        rows = tier == t
        city[rows] = members[(city_rank[rows] * members.size).astype(np.int64)]
    wrong = rng.random(n) < m.WRONG_PERSONA_SHARE
    intent = rng.standard_normal(n) - 1.5 * wrong
    grade = _choice(rng, m.GRADE_P, n)
    # Households: a share of persons are the second child of another person's household (same
    # city, usually another grade, correlated intent); each elder child has one sibling at most.
    sibling_of = np.full(n, -1, dtype=np.int64)
    candidates = rng.permutation(n)
    n_pairs = min(int(round(m.SIBLING_SHARE * n)), n // 2)
    younger, elder = candidates[:n_pairs], candidates[n_pairs:2 * n_pairs]
    sibling_of[younger], sibling_of[elder] = elder, younger
    city[younger] = city[elder]
    redraw = _choice(rng, m.GRADE_P, n_pairs)
    same = redraw == grade[elder]
    redraw[same] = (redraw[same] + 1 + rng.integers(0, len(GRADES) - 1, int(same.sum()))) % len(
        GRADES)
    twin = rng.random(n_pairs) < m.SIBLING_TWIN_P
    grade[younger] = np.where(twin, grade[elder], redraw)
    share = m.SIBLING_INTENT_SHARE
    intent[younger] = share * intent[elder] + np.sqrt(1 - share**2) * intent[younger]
    return _People(
        n=n, leads=k, start=np.concatenate(([0], np.cumsum(k)[:-1])), intent=intent,
        wrong_persona=wrong, grade=grade,
        subject=_choice(rng, m.SUBJECT_P, n), city=city, device=_choice(rng, m.DEVICE_P, n),
        sibling_of=sibling_of, reluctance=rng.normal(0.0, m.NULL_RELUCTANCE_SD, n),
    )


def _lead_times(rng: np.random.Generator, people: _People, days: int,
                start: date) -> tuple[np.ndarray, ...]:
    """Seconds since start of each lead (rows grouped by person, in time order), its position
    within the person and the gap to the person's previous lead (inf for the first). A person's
    first lead falls on a day drawn by the season's lead volume (``m.season``)."""
    n_leads = int(people.leads.sum())
    person = np.repeat(np.arange(people.n), people.leads)
    pos = np.arange(n_leads) - np.repeat(people.start, people.leads)
    short = rng.random(n_leads) < 0.3
    gap = np.where(short, rng.uniform(0.01, 2.0, n_leads),
                   rng.exponential(m.REPEAT_GAP_MEAN_DAYS, n_leads))
    gap[pos == 0] = 0.0
    span = np.bincount(person, gap, minlength=people.n)
    max_span = 0.85 * days
    scale = np.minimum(1.0, max_span / np.maximum(span, 1e-9))
    gap *= scale[person]
    volume, _ = m.season(np.datetime64(start, "D") + np.arange(days))
    cum = np.concatenate(([0.0], np.cumsum(volume)))
    upper = np.interp(days - span * scale, np.arange(days + 1), cum)
    first = np.interp(rng.random(people.n) * upper, cum, np.arange(days + 1, dtype=float))
    t_days = first[person] + _within_group_cumsum(gap, people.start, people.leads)
    # Time of day: evenings and late mornings Beijing time (UTC+8), some at any hour.
    kind = _choice(rng, np.array([0.45, 0.35, 0.20]), n_leads)
    hour = np.select(
        [kind == 0, kind == 1],
        [rng.normal(12.0, 2.5, n_leads), rng.normal(3.0, 2.0, n_leads)],
        rng.uniform(0, 24, n_leads),
    ) % 24
    t = np.floor(t_days).astype(np.int64) * DAY + (hour * 3600).astype(np.int64)
    order = np.lexsort((t, person))
    t = t[order]
    for p in range(1, int(people.leads.max())):  # strictly increasing within a person
        rows = np.flatnonzero(pos == p)
        t[rows] = np.maximum(t[rows], t[rows - 1] + 60)
    t = np.minimum(t, days * DAY - 1)
    gap_prev = np.full(n_leads, np.inf)
    later = pos > 0
    gap_prev[later] = (t[later] - t[np.flatnonzero(later) - 1]) / DAY
    return t, pos, gap_prev


# ---- leads ----------------------------------------------------------------------------------
@dataclass
class _Leads:
    person: np.ndarray
    pos: np.ndarray
    t: np.ndarray  # seconds since start
    gap_prev_days: np.ndarray
    intent: np.ndarray
    channel: np.ndarray
    campaign: np.ndarray
    campaign_names: list[str]
    campaign_effect: np.ndarray
    landing: np.ndarray
    landing_names: list[str]
    landed_on_pricing: np.ndarray
    grade: np.ndarray
    subject: np.ndarray
    city: np.ndarray
    device: np.ndarray
    funnel: np.ndarray
    nulls: dict[str, np.ndarray]
    season_shift: np.ndarray


def _campaigns(seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Persistent campaign names per (channel, theme, subject group) and their hidden quality
    effects. Campaigns run through the whole period, so the newest leads come from campaigns
    that older leads came from too (no unseen campaign level in the newest slice)."""
    groups = ("stem", "lang", "arts")
    subject_channels = {"sem", "feed_ads", "new_media"}
    names: list[str] = []
    themes = m.CAMPAIGN_THEMES
    index = np.zeros((len(CHANNELS), len(themes), len(groups)), dtype=np.int64)
    for c, channel in enumerate(CHANNELS):
        for s, theme in enumerate(themes):
            for g, group in enumerate(groups):
                if channel in subject_channels:
                    names.append(f"{channel}-{theme}-{group}")
                elif g > 0:
                    index[c, s, g] = index[c, s, 0]
                    continue
                else:
                    names.append(f"{channel}-{theme}")
                index[c, s, g] = len(names) - 1
    effect = np.random.default_rng([seed, 7]).normal(0.0, m.CAMPAIGN_EFFECT_SD, len(names))
    return names, index, effect


def _landing_pages() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Landing page names and, per template (high then low), the index per subject."""
    names: list[str] = []
    templates = m.LANDING_HIGH + m.LANDING_LOW
    index = np.zeros((len(templates), len(SUBJECTS)), dtype=np.int64)
    for i, template in enumerate(templates):
        for s, subject in enumerate(SUBJECTS):
            page = template.format(subject=subject)
            if page not in names:
                names.append(page)
            index[i, s] = names.index(page)
    return names, index, np.array([t.startswith("/trial") for t in templates])


def _draw_leads(rng: np.random.Generator, people: _People, days: int, drift: bool,
                seed: int, start: date) -> _Leads:
    t, pos, gap_prev = _lead_times(rng, people, days, start)
    n = t.size
    person = np.repeat(np.arange(people.n), people.leads)
    intent = people.intent[person] + 0.15 * np.minimum(pos, 3) + rng.normal(0, 0.45, n)
    late = (t >= m.DRIFT_START_FRACTION * days * DAY) if drift else np.zeros(n, dtype=bool)
    channel = _by_mix(rng, [m.CHANNEL_MIX, m.CHANNEL_MIX_DRIFT], late.astype(np.int64))

    subject = np.where(rng.random(n) < 0.75, people.subject[person],
                       _choice(rng, m.SUBJECT_P, n))
    grade = np.where(rng.random(n) < m.GRADE_FORM_ERROR_P, _choice(rng, m.GRADE_P, n),
                     people.grade[person])
    device = np.where(rng.random(n) < 0.8, people.device[person], _choice(rng, m.DEVICE_P, n))
    city = people.city[person]

    theme = _choice(rng, m.CAMPAIGN_THEME_P, n)
    group_of = {"stem": 0, "lang": 1, "arts": 2}
    subject_group = np.array([group_of[m.SUBJECT_GROUP[s]] for s in SUBJECTS])[subject]
    campaign_names, campaign_index, campaign_effect = _campaigns(seed)
    campaign = campaign_index[channel, theme, subject_group]

    landing_names, landing_index, landing_is_trial = _landing_pages()
    high = rng.random(n) < m.sigmoid(0.8 * intent - 1.2)
    template = np.where(high, _choice(rng, m.LANDING_HIGH_P, n),
                        len(m.LANDING_HIGH) + _choice(rng, m.LANDING_LOW_P, n))
    landing = landing_index[template, subject]

    funnel_score = (m.FUNNEL_INTENT_WEIGHT * intent + m.by_channel(m.CHANNEL_FUNNEL_EFFECT)[channel]
                    + m.FUNNEL_TRIAL_LANDING_BONUS * landing_is_trial[template]
                    + rng.normal(0, m.FUNNEL_NOISE_SD, n))
    null_logit = (m.by_channel(m.NULL_CHANNEL_EFFECT)[channel] + people.reluctance[person]
                  + m.NULL_INTENT_EFFECT * intent)
    nulls = {name: rng.random(n) < m.sigmoid(base + null_logit)
             for name, base in m.NULL_BASE_LOGIT.items()}
    _, season_shift = m.season(np.datetime64(start, "D") + t // DAY)
    return _Leads(
        person=person, pos=pos, t=t, gap_prev_days=gap_prev, intent=intent, channel=channel,
        campaign=campaign, campaign_names=campaign_names, campaign_effect=campaign_effect,
        landing=landing, landing_names=landing_names,
        landed_on_pricing=template == m.LANDING_HIGH.index("/pricing"), grade=grade,
        subject=subject, city=city, device=device, funnel=m.funnel_index(funnel_score), nulls=nulls,
        season_shift=season_shift,
    )


# ---- identifiers ----------------------------------------------------------------------------
_ID_TYPE_NAMES = ("phone", "wechat", "email", "cookie")
TYPO = 8  # variant bit: the identifier given with a typo


@dataclass
class _Slots:
    mask: np.ndarray  # uint8 per lead: usable identifier slots
    bad_phone: np.ndarray
    bad_email: np.ndarray
    bad_wechat: np.ndarray
    unlinkable_person: np.ndarray
    n_cookies: np.ndarray  # per person
    email_kind: np.ndarray  # per person: 0 free, 1 corporate, 2 edu
    # Whose identifier a person's slot holds (a sibling's household phone, a recycled number's
    # former owner): per person, the person index the identifier is drawn from.
    phone_owner: np.ndarray
    wechat_owner: np.ndarray
    email_owner: np.ndarray
    home_device_owner: np.ndarray  # first cookie slot
    public_device: np.ndarray  # per lead: a school/library computer's number, -1 for none
    n_public_devices: int
    typo: np.ndarray  # per lead: bit per id type (_ID_TYPE_NAMES order) given with a typo
    recycled: np.ndarray  # per person: phone number formerly another person's


def _shared_owners(rng: np.random.Generator, people: _People, leads: _Leads
                   ) -> dict[str, np.ndarray]:
    """Per person and shared slot, the person whose identifier it holds: siblings take the
    household's (the elder's) with ``m.SIBLING_SHARES``; recycled phones take the number of a
    person without siblings whose last lead is ``m.RECYCLE_QUIET_DAYS`` before the first."""
    n = people.n
    owners = {name: np.arange(n) for name in ("phone", "wechat", "email", "home_device")}
    younger = np.flatnonzero((people.sibling_of >= 0) & (np.arange(n) > people.sibling_of))
    for name, p in m.SIBLING_SHARES.items():
        take = younger[rng.random(younger.size) < p]
        owners[name][take] = people.sibling_of[take]
    first_t = leads.t[people.start]
    last_t = leads.t[people.start + people.leads - 1]
    quiet = m.RECYCLE_QUIET_DAYS * DAY
    alone = people.sibling_of < 0
    donors = np.flatnonzero(alone)
    donors = donors[np.argsort(last_t[donors], kind="stable")]
    late = alone & (first_t >= quiet + last_t.min())
    share = min(1.0, m.RECYCLED_PHONE_SHARE * n / max(int(late.sum()), 1))
    eligible = np.flatnonzero(late & (rng.random(n) < share))
    available = np.searchsorted(last_t[donors], first_t[eligible] - quiet, side="right")
    eligible, available = eligible[available > 0], available[available > 0]
    pick = donors[(rng.random(eligible.size) * available).astype(np.int64)]
    pick, first = np.unique(pick, return_index=True)  # a number is re-issued once
    keep = (pick != eligible[first])
    owners["phone"][eligible[first][keep]] = pick[keep]
    owners["recycled"] = np.zeros(n, dtype=bool)
    owners["recycled"][eligible[first][keep]] = True
    return owners


def _draw_slots(rng: np.random.Generator, people: _People, leads: _Leads) -> _Slots:
    n, person, ch = leads.t.size, leads.person, leads.channel
    has_phone2 = rng.random(people.n) < m.PERSON_HAS_PHONE2
    has_wechat = rng.random(people.n) < m.PERSON_HAS_WECHAT
    has_email = rng.random(people.n) < m.PERSON_HAS_EMAIL
    n_cookies = _choice(rng, m.COOKIES_PER_PERSON_P, people.n) + 1
    email_kind = _choice(rng, np.array([m.EMAIL_FREE_SHARE,
                                        1 - m.EMAIL_FREE_SHARE - m.EMAIL_EDU_SHARE,
                                        m.EMAIL_EDU_SHARE]), people.n)

    phone = rng.random(n) < m.by_channel(m.PHONE_P)[ch]
    phone_slot = np.where(has_phone2[person] & (rng.random(n) < 0.35), PHONE2, PHONE1)
    bad_phone = phone & (rng.random(n) < m.sigmoid(m.BAD_PHONE_BASE_LOGIT - 0.8 * leads.intent))
    wechat = has_wechat[person] & (rng.random(n) < m.by_channel(m.WECHAT_P)[ch])
    bad_wechat = wechat & (rng.random(n) < m.BAD_WECHAT_P)
    email = has_email[person] & (rng.random(n) < m.by_channel(m.EMAIL_P)[ch])
    bad_email = email & (rng.random(n) < m.BAD_EMAIL_P)
    cookie = rng.random(n) < m.by_channel(m.COOKIE_P)[ch]
    cookie_slot = COOKIE0 + (rng.random(n) * n_cookies[person]).astype(np.int64)

    mask = np.zeros(n, dtype=np.int64)
    mask |= np.where(phone & ~bad_phone, 1 << phone_slot, 0)
    mask |= np.where(wechat & ~bad_wechat, 1 << WECHAT, 0)
    mask |= np.where(email & ~bad_email, 1 << EMAIL, 0)
    mask |= np.where(cookie, 1 << cookie_slot, 0)

    multi = people.leads >= 2
    unlinkable = multi & (rng.random(people.n) < m.UNLINKABLE_PERSON_SHARE)
    lone = unlinkable[person]
    mask[lone] = 1 << PRIVATE_PHONE
    for flag in (bad_phone, bad_wechat, bad_email):
        flag[lone] = False

    # Every lead keeps one usable contact; a person's leads are chained by a shared one.
    empty = (mask == 0) & ~lone
    mask[empty] = 1 << PHONE1
    for p in range(1, int(people.leads.max())):
        rows = np.flatnonzero((leads.pos == p) & ~lone)
        prev = mask[rows - 1]
        broken = (mask[rows] & prev) == 0
        pick = np.full(rows.size, -1)
        for bit in CHAIN_PRIORITY:
            pick = np.where((pick < 0) & ((prev >> bit) & 1 == 1), bit, pick)
        fix = rows[broken]
        mask[fix] |= 1 << pick[broken]
    bad_phone &= (mask & PHONE_BITS) == 0
    bad_email &= (mask & (1 << EMAIL)) == 0
    bad_wechat &= (mask & (1 << WECHAT)) == 0

    owners = _shared_owners(rng, people, leads)
    # public devices: per city, one device per PUBLIC_DEVICE_LEADS public leads
    has_cookie = (mask >> COOKIE0) & 0b111 != 0
    public = has_cookie & ~lone & (rng.random(n) < m.by_channel(m.PUBLIC_DEVICE_P)[ch])
    public_device = np.full(n, -1, dtype=np.int64)
    n_public = 0
    for c in np.unique(leads.city[public]):
        rows = np.flatnonzero(public & (leads.city == c))
        k = max(1, round(rows.size / m.PUBLIC_DEVICE_LEADS))
        public_device[rows] = n_public + rng.integers(0, k, rows.size)
        n_public += k
    typo = np.zeros(n, dtype=np.int64)
    for code, name in enumerate(_ID_TYPE_NAMES):
        typo |= (rng.random(n) < m.TYPO_P[name]).astype(np.int64) << code
    verified = leads.funnel >= FUNNEL_STEPS.index("verified")  # the phone passed an SMS code
    typo &= ~np.where(verified, 1 << _ID_TYPE_NAMES.index("phone"), 0)
    return _Slots(mask=mask.astype(np.uint8), bad_phone=bad_phone, bad_email=bad_email,
                  bad_wechat=bad_wechat, unlinkable_person=unlinkable, n_cookies=n_cookies,
                  email_kind=email_kind, phone_owner=owners["phone"],
                  wechat_owner=owners["wechat"], email_owner=owners["email"],
                  home_device_owner=owners["home_device"], public_device=public_device,
                  n_public_devices=n_public, typo=typo,
                  recycled=owners["recycled"])


class _RawIdentifiers:
    """Formats raw identifier strings (in memory only) for identifier slots of persons."""

    def __init__(self, rng: np.random.Generator, n_persons: int, email_kind: np.ndarray,
                 n_public_devices: int = 0) -> None:
        self.email_kind = email_kind
        self.phone_space = len(PHONE_PREFIXES) * 10**8
        self.name_offset = int(rng.integers(0, 36**6))
        self.surname = rng.integers(0, len(SURNAMES), n_persons)
        self.given = rng.integers(0, len(GIVEN_NAMES), n_persons)
        self.wx_style = rng.random(n_persons) < 0.4
        self.domain = rng.integers(0, 1 << 30, n_persons)
        self.cookie_style = rng.random(3 * n_persons + n_public_devices) < 0.6
        self.cookie_salt = rng.integers(0, 1 << 40, 3 * n_persons + n_public_devices)

    def value(self, type_name: str, index: int, variant: int) -> str:
        """The raw string of identifier ``index`` of ``type_name`` in format ``variant``
        (``variant & TYPO``: with a typo)."""
        if variant & TYPO:
            return self.typo(type_name, index, variant & ~TYPO)
        if type_name == "phone":
            return self.phone(index, variant)
        if type_name == "wechat":
            return self.wechat(index, variant)
        if type_name == "email":
            return self.email(index, variant)
        return self.cookie(index, variant)

    def _scramble(self, index: int, space: int) -> int:
        """An affine bijection of [0, space): the multiplier is coprime with every space used
        (products of 2, 3 and 5), so distinct indices give distinct, random-looking codes."""
        return (index * _AFFINE_MULTIPLIER + self.name_offset) % space

    def phone_number(self, index: int) -> str:
        """11-digit mobile number of phone index (persons' first, second, then lead-private)."""
        value = self._scramble(index, self.phone_space)
        prefix, suffix = divmod(value, 10**8)
        if suffix % 11_111_111 == 0:  # would normalise as a placeholder number
            suffix = (suffix + 12_345) % 10**8
        return f"{PHONE_PREFIXES[prefix]}{suffix:08d}"

    def phone(self, index: int, variant: int) -> str:
        s = self.phone_number(index)
        a, b, c = s[:3], s[3:7], s[7:]
        return (s, f"+86 {a} {b} {c}", f"0086-{a}-{b}-{c}", f"{a}-{b}-{c}", f"(+86){s}",
                f" {a} {b} {c} ")[variant % 6]

    def wechat(self, person: int, variant: int) -> str:
        code = _base36(self._scramble(person, 36**6), 6)
        name = ("wx_" + code if self.wx_style[person]
                else f"{SURNAMES[self.surname[person]]}{GIVEN_NAMES[self.given[person]]}_{code}")
        return (name, name.upper(), f"  {name} ")[variant % 3]

    def email_parts(self, person: int) -> tuple[str, str]:
        kind = int(self.email_kind[person])
        digits = self._scramble(person, 10**8)
        local = f"{SURNAMES[self.surname[person]]}.{GIVEN_NAMES[self.given[person]]}{digits}"
        domains = (FREE_DOMAINS, CORPORATE_DOMAINS, EDU_DOMAINS)[kind]
        return local, domains[self.domain[person] % len(domains)]

    def email(self, person: int, variant: int) -> str:
        local, domain = self.email_parts(person)
        return (f"{local}@{domain}", f"{local.title()}@{domain.upper()}",
                f" {local}@{domain}\t")[variant % 3]

    def cookie(self, index: int, variant: int) -> str:
        if self.cookie_style[index]:
            value = (f"GA1.2.{self._scramble(index, 10**10):010d}."
                     f"{1_700_000_000 + self.cookie_salt[index] % 10**8}")
        else:
            a = f"{self.cookie_salt[index]:010x}"  # random
            b = f"{self._scramble(index, 16**12):012x}"  # unique per cookie
            value = f"{a[:8]}-{a[8:]}{b[:2]}-4{b[2:5]}-a{b[5:8]}-{b[8:]}{a[:8]}"
        return (value.lower(), value.upper())[variant % 2]

    def typo(self, type_name: str, index: int, variant: int) -> str:
        """The identifier mistyped: one digit of a phone, two letters of a WeChat id swapped,
        a letter of an e-mail's local part dropped (still well-formed, so it is hashed)."""
        if type_name == "phone":
            s = self.phone_number(index)
            at = 3 + index % 8
            s = f"{s[:at]}{(int(s[at]) + 1 + index % 9) % 10}{s[at + 1:]}"
            if len(set(s[3:])) == 1:  # would be a placeholder: mistype another digit
                s = f"{s[:-1]}{(int(s[-1]) + 1) % 10}"
            return s
        if type_name == "wechat":
            name = self.wechat(index, 0)
            return name[:-2] + name[-1] + name[-2] if name[-1] != name[-2] else name[:-1] + "x"
        if type_name == "email":
            local, domain = self.email_parts(index)
            return f"{local[:2]}{local[3:]}@{domain}"
        return self.cookie(index, variant)

    def malformed_email(self, person: int, r: int) -> str:
        local, domain = self.email_parts(person)
        return (f"{local}@{domain.split('.')[0]}", f"{local} {domain}",
                f"{local}@@{domain}")[r % 3]


_SLOT_TYPE_CODE = np.array([_ID_TYPE_NAMES.index(SLOT_TYPE[b]) for b in range(8)])
_VARIANT_P = {
    "phone": np.array([0.45, 0.20, 0.10, 0.15, 0.05, 0.05]),
    "wechat": np.array([0.7, 0.15, 0.15]),
    "email": np.array([0.7, 0.15, 0.15]),
    "cookie": np.array([0.8, 0.2]),
}


def _slot_index(
    bit: np.ndarray, person: np.ndarray, lead: np.ndarray, n_persons: int, slots: _Slots
) -> np.ndarray:
    """Index of a slot's identifier within its type: one per person slot (per lead for the
    private phones of unlinkable persons), drawn from the slot's owner (``_shared_owners``:
    siblings share the household's, a recycled number its former owner's); a lead on a public
    device carries that device's cookie."""
    cookie = np.where(bit == COOKIE0, 3 * slots.home_device_owner[person],
                      3 * person + bit - COOKIE0)
    public = (bit >= COOKIE0) & (bit < PRIVATE_PHONE) & (slots.public_device[lead] >= 0)
    cookie = np.where(public, 3 * n_persons + slots.public_device[lead], cookie)
    return np.select(
        [bit == PHONE1, bit == PHONE2, bit == PRIVATE_PHONE, bit == WECHAT, bit == EMAIL,
         bit >= COOKIE0],
        [slots.phone_owner[person], n_persons + person, 2 * n_persons + lead,
         slots.wechat_owner[person], slots.email_owner[person], cookie],
        person,
    )


@dataclass
class _Identities:
    lead: np.ndarray
    type_code: np.ndarray
    id_hash: pa.Array
    raw_values: set[str]
    unusable: dict[str, int]


def _hash_identities(rng: np.random.Generator, people: _People, leads: _Leads, slots: _Slots,
                     raw: _RawIdentifiers, salt: str) -> _Identities:
    """One (lead, id_type, id_hash) row per usable identifier of a lead; unusable ones counted."""
    bits = [np.flatnonzero((slots.mask >> bit) & 1) for bit in range(8)]
    lead_of = np.concatenate(bits)
    bit_of = np.concatenate([np.full(rows.size, bit) for bit, rows in enumerate(bits)])
    type_code = _SLOT_TYPE_CODE[bit_of]
    index = _slot_index(bit_of, leads.person[lead_of], lead_of, people.n, slots)
    variant = np.zeros(lead_of.size, dtype=np.int64)
    for code, name in enumerate(_ID_TYPE_NAMES):
        rows = np.flatnonzero(type_code == code)
        variant[rows] = _choice(rng, _VARIANT_P[name], rows.size)
    private = bit_of == PRIVATE_PHONE
    variant |= np.where(((slots.typo[lead_of] >> type_code) & 1 == 1) & ~private, TYPO, 0)
    key = (type_code.astype(np.int64) << 56) | (index.astype(np.int64) << 4) | variant
    unique_keys, inverse = np.unique(key, return_inverse=True)

    raw_values: set[str] = set()
    hashes: list[str] = []
    for k in unique_keys.tolist():
        type_name = _ID_TYPE_NAMES[k >> 56]
        value = raw.value(type_name, (k >> 4) & ((1 << 52) - 1), k & 15)
        hashed, reason = hash_identifier(type_name, value, salt)
        if hashed is None:
            raise RuntimeError(f"a generated {type_name} identifier was rejected ({reason})")
        raw_values.add(value)
        hashes.append(hashed)
    id_hash = pa.array(hashes, pa.string()).take(pa.array(inverse.ravel(), pa.int64()))

    # Unusable identifiers typed on forms: drawn, refused by the normaliser, never kept.
    unusable: Counter[str] = Counter()
    makers: tuple[tuple[str, np.ndarray, Callable[[int, int], str]], ...] = (
        ("phone", slots.bad_phone, lambda lead, r: PLACEHOLDER_PHONES[r % len(PLACEHOLDER_PHONES)]),
        ("wechat", slots.bad_wechat, lambda lead, r: BAD_WECHAT_VALUES[r % len(BAD_WECHAT_VALUES)]),
        ("email", slots.bad_email,
         lambda lead, r: raw.malformed_email(int(leads.person[lead]), r)),
    )
    for type_name, flag, make in makers:
        rows = np.flatnonzero(flag)
        for lead, r in zip(rows.tolist(), rng.integers(0, 1 << 20, rows.size).tolist(),
                           strict=True):
            value = make(lead, r)
            hashed, reason = hash_identifier(type_name, value, salt)
            if hashed is not None:
                raise RuntimeError(f"an unusable {type_name} identifier was accepted")
            raw_values.add(value)
            unusable[f"{type_name}:{reason}"] += 1
    return _Identities(lead=lead_of, type_code=type_code, id_hash=id_hash,
                       raw_values=raw_values, unusable=dict(sorted(unusable.items())))


def _key_hashes(bits: np.ndarray, persons: np.ndarray, leads: np.ndarray, people: _People,
                slots: _Slots, raw: _RawIdentifiers, salt: str) -> list[str]:
    """Hashes of the identifiers in slots ``bits`` of ``persons`` (``leads``: for lead-private
    slots), as typed correctly (an order system holds the number the buyer paid with)."""
    index = _slot_index(bits, persons, leads, people.n, slots)
    cache: dict[tuple[int, int], str] = {}
    out = []
    for bit, idx in zip(bits.tolist(), index.tolist(), strict=True):
        hashed = cache.get((bit, idx))
        if hashed is None:
            hashed, _ = hash_identifier(SLOT_TYPE[bit], raw.value(SLOT_TYPE[bit], idx, 0), salt)
            cache[(bit, idx)] = hashed
        out.append(hashed)
    return out


def _order_key_hashes(persons: np.ndarray, people: _People, slots: _Slots,
                      raw: _RawIdentifiers, salt: str) -> list[str]:
    """Hash that keys a person's earlier orders: the phone when some lead of the person carries
    it (perhaps only a later lead), else a usable identifier of the person's first lead."""
    person_mask = np.bitwise_or.reduceat(slots.mask.astype(np.int64), people.start)[persons]
    first_lead = people.start[persons]
    first_mask = slots.mask[first_lead].astype(np.int64)
    key_bit = np.where((person_mask >> PHONE1) & 1 == 1, PHONE1, -1)
    for bit in (*CHAIN_PRIORITY, PRIVATE_PHONE):
        key_bit = np.where((key_bit < 0) & ((first_mask >> bit) & 1 == 1), bit, key_bit)
    return _key_hashes(key_bit, persons, first_lead, people, slots, raw, salt)


def _conversion_key_hashes(leads_converted: np.ndarray, people: _People, leads: _Leads,
                           slots: _Slots, raw: _RawIdentifiers, salt: str) -> list[str]:
    """Hash that keys the order of a converted lead: the phone the lead carries (its first,
    second or private one), else the person's first phone (given at payment)."""
    mask = slots.mask[leads_converted].astype(np.int64)
    key_bit = np.full(leads_converted.size, PHONE1)
    for bit in (PRIVATE_PHONE, PHONE2, PHONE1):
        key_bit = np.where((mask >> bit) & 1 == 1, bit, key_bit)
    return _key_hashes(key_bit, leads.person[leads_converted], leads_converted, people, slots,
                       raw, salt)


# ---- behaviour ------------------------------------------------------------------------------
@dataclass
class _Events:
    lead: np.ndarray
    t: np.ndarray
    type: np.ndarray
    url: np.ndarray
    dwell: np.ndarray
    weight: np.ndarray  # behaviour weight × page weight × depth (before time decay)
    recruitment: np.ndarray


def _draw_events(rng: np.random.Generator, people: _People, leads: _Leads, slots: _Slots,
                 urls: m.UrlVocabulary, days: int, window_days: int, drift: bool) -> _Events:
    """Cookie history before each lead and activity after it, driven by the lead's intent."""
    n, z, funnel = leads.t.size, leads.intent, leads.funnel
    has_cookie = ((slots.mask.astype(np.int64) >> COOKIE0) & 0b111) != 0
    lam_pre = (m.PRE_EVENTS_MEAN * np.exp(0.45 * z)
               * np.where(has_cookie, 1.0, m.PRE_EVENTS_NO_COOKIE))
    lam_post = m.POST_EVENTS_MEAN * np.exp(0.4 * z) * m.POST_EVENTS_FUNNEL[funnel]
    pre_lead = np.repeat(np.arange(n), rng.poisson(lam_pre))
    post_lead = np.repeat(np.arange(n), rng.poisson(lam_post))
    trial_lead = np.flatnonzero(funnel == FUNNEL_STEPS.index("booked_trial"))

    # Before the lead: recent for active people, > 30 days back for dormant ones; never before
    # the person's previous lead (that history belongs to the earlier lead's era).
    dormant = (rng.random(n) < m.sigmoid(-1.3 - 0.6 * z))[pre_lead]
    offset = np.where(
        dormant,
        m.PRE_DORMANT_MIN_DAYS + rng.exponential(m.PRE_DORMANT_MEAN_DAYS, pre_lead.size),
        rng.exponential(m.PRE_ACTIVE_MEAN_DAYS, pre_lead.size),
    )
    offset = np.minimum(offset, 120.0)
    gap = leads.gap_prev_days[pre_lead]
    offset = np.where(offset >= gap, gap * rng.uniform(0.02, 0.98, pre_lead.size), offset)
    pre_t = leads.t[pre_lead] - np.maximum(1, (offset * DAY).astype(np.int64))
    # After the lead: a decaying rate within the conversion window.
    window = float(window_days)
    u = rng.random(post_lead.size)
    offset = -m.POST_MEAN_DAYS * np.log1p(-u * (1 - np.exp(-window / m.POST_MEAN_DAYS)))
    post_t = leads.t[post_lead] + np.clip((offset * DAY).astype(np.int64), 60, window_days * DAY)
    trial_t = leads.t[trial_lead] + np.minimum(
        (rng.uniform(1, 7, trial_lead.size) * DAY).astype(np.int64), window_days * DAY)

    lead = np.concatenate((pre_lead, post_lead, trial_lead))
    t = np.concatenate((pre_t, post_t, trial_t))
    after = np.concatenate((np.zeros(pre_lead.size, bool), np.ones(post_lead.size, bool),
                            np.ones(trial_lead.size, bool)))
    zl = z[lead]
    w_high = m.sigmoid(1.1 * zl - 1.2 + np.where(after, 0.3 * funnel[lead], 0.0))
    w_low = np.where(people.wrong_persona[leads.person[lead]], 0.7,
                     m.sigmoid(-1.1 * zl - 2.2))
    component = np.where(rng.random(t.size) < w_high, 1,
                         np.where(rng.random(t.size) < w_low, 2, 0))
    mixes = [m.EVENT_MIX_BROWSE, m.EVENT_MIX_HIGH, m.EVENT_MIX_LOW]
    if drift:
        component += 3 * (t >= m.DRIFT_START_FRACTION * days * DAY)
        mixes += [m.drifted_mix(p) for p in mixes]
    etype = _by_mix(rng, mixes, component)
    etype[pre_lead.size + post_lead.size:] = EVENT_TYPES.index("trial_class")

    within = np.where(urls.by_subject[etype], leads.subject[lead],
                      (rng.random(t.size) * urls.count[etype]).astype(np.int64))
    url = urls.offset[etype] + within
    log_dwell = m.type_log_dwell()[etype]
    dwell = np.round(np.exp(log_dwell + 0.15 * zl + m.DWELL_SIGMA * rng.standard_normal(t.size)),
                     1)
    depth = np.sqrt(np.clip(dwell / np.exp(log_dwell), 0.3, 3.0))
    weight = m.type_weight()[etype] * urls.weight[url] * depth
    return _Events(lead=lead, t=t, type=etype, url=url, dwell=dwell, weight=weight,
                   recruitment=etype == EVENT_TYPES.index("recruitment_page"))


@dataclass
class _History:
    """Per lead, what the person did strictly before the lead's creation."""

    behaviour: np.ndarray  # time-decayed weighted behaviour score
    days_since_last: np.ndarray  # inf without any earlier event
    high_intent_30d: np.ndarray  # pricing-page, live-class and trial-class events
    pricing_30d: np.ndarray
    recruitment_30d: np.ndarray
    offline_event_90d: np.ndarray


_HIGH_INTENT_TYPES = np.isin(EVENT_TYPES, ("pricing_page", "live_class", "trial_class"))


def _person_history(people: _People, leads: _Leads, events: _Events) -> _History:
    """Decayed sums and window counts over the person's events before each lead (exponential
    decay factorises, so one cumulative sum per person's time-sorted events answers every lead;
    a window count is a difference of cumulative counts at two searched positions)."""
    rate = np.log(2) / (m.HALF_LIFE_DAYS * DAY)
    ev_person = leads.person[events.lead]
    t0 = min(int(events.t.min(initial=0)), int(leads.t.min()))
    span = max(int(events.t.max(initial=0)), int(leads.t.max())) - t0 + 1
    key = ev_person * span + (events.t - t0)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    t_ref = leads.t[people.start][ev_person[order]]
    grow = np.exp((events.t[order] - t_ref) * rate)
    cum_w = np.concatenate(([0.0], np.cumsum(events.weight[order] * grow)))
    lead_key = leads.person * span + (leads.t - t0)
    before = np.searchsorted(sorted_key, lead_key, side="left")
    first = np.searchsorted(sorted_key, leads.person * span, side="left")
    decay = np.exp(-(leads.t - leads.t[people.start][leads.person]) * rate)
    behaviour = np.maximum((cum_w[before] - cum_w[first]) * decay, 0.0)
    sorted_t = events.t[order]
    last = sorted_t[np.maximum(before - 1, 0)] if sorted_t.size else np.zeros(leads.t.size)
    days_since_last = np.where(before > first, (leads.t - last) / DAY, np.inf)

    sorted_type = events.type[order]
    since = {w: np.maximum(first, np.searchsorted(sorted_key, lead_key - w * DAY, side="right"))
             for w in (30, 90)}

    def count(flag: np.ndarray, window_days: int) -> np.ndarray:
        cum = np.concatenate(([0], np.cumsum(flag, dtype=np.int64)))
        return cum[before] - cum[np.minimum(since[window_days], before)]

    return _History(
        behaviour=behaviour, days_since_last=days_since_last,
        high_intent_30d=count(_HIGH_INTENT_TYPES[sorted_type], 30),
        pricing_30d=count(sorted_type == EVENT_TYPES.index("pricing_page"), 30),
        recruitment_30d=count(sorted_type == EVENT_TYPES.index("recruitment_page"), 30),
        offline_event_90d=count(sorted_type == EVENT_TYPES.index("offline_event"), 90),
    )


# ---- orders and outcomes --------------------------------------------------------------------
@dataclass
class _Orders:
    person: np.ndarray
    t: np.ndarray
    amount: np.ndarray
    lead: np.ndarray | None = None  # the converted lead of a conversion order, -1 for earlier

    def extended(self, person: np.ndarray, t: np.ndarray, amount: np.ndarray,
                 lead: np.ndarray) -> _Orders:
        own = np.full(self.t.size, -1, dtype=np.int64) if self.lead is None else self.lead
        return _Orders(np.concatenate((self.person, person)), np.concatenate((self.t, t)),
                       np.concatenate((self.amount, amount)), np.concatenate((own, lead)))


def _draw_orders(rng: np.random.Generator, people: _People, leads: _Leads) -> _Orders:
    """Earlier purchases of returning customers, all before the person's first lead."""
    returning = rng.random(people.n) < m.sigmoid(m.RETURNING_CUSTOMER_LOGIT
                                                 + 0.35 * people.intent)
    persons = np.flatnonzero(returning)
    person = np.repeat(persons, 1 + rng.poisson(m.ORDERS_EXTRA_MEAN, persons.size))
    first_t = leads.t[people.start][person]
    t = first_t - (rng.uniform(3, 720, person.size) * DAY).astype(np.int64)
    return _Orders(person=person, t=t, amount=_prices(rng, person.size),
                   lead=np.full(person.size, -1, dtype=np.int64))


def _prices(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.round(m.PRICES[_choice(rng, m.PRICE_P, size)]
                    * m.DISCOUNTS[rng.integers(0, len(m.DISCOUNTS), size)], 2)


def _rfm(leads: _Leads, orders: _Orders, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per lead of ``rows``: the person's order count, total amount and days since the last
    order, over the person's orders strictly before the lead (inf days without one)."""
    t0 = min(int(orders.t.min(initial=0)), int(leads.t.min()))
    span = max(int(orders.t.max(initial=0)), int(leads.t.max())) - t0 + 2
    key = orders.person * span + (orders.t - t0)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    cum_amount = np.concatenate(([0.0], np.cumsum(orders.amount[order])))
    person, t = leads.person[rows], leads.t[rows]
    first = np.searchsorted(sorted_key, person * span, side="left")
    before = np.searchsorted(sorted_key, person * span + (t - t0), side="left")
    count = before - first
    last = orders.t[order][np.maximum(before - 1, 0)] if orders.t.size else np.zeros(rows.size)
    days_since = np.where(count > 0, (t - last) / DAY, np.inf)
    return count, cum_amount[before] - cum_amount[first], days_since


def _email_type(leads: _Leads, slots: _Slots) -> np.ndarray:
    kind_name = np.array([EMAIL_DOMAIN_TYPES.index(k) for k in ("free", "corporate", "edu")])
    has_email = ((slots.mask.astype(np.int64) >> EMAIL) & 1) == 1
    return np.select(
        [slots.bad_email, has_email],
        [EMAIL_DOMAIN_TYPES.index("invalid"), kind_name[slots.email_kind[leads.person]]],
        EMAIL_DOMAIN_TYPES.index("none"),
    )


@dataclass
class _Outcomes:
    propensity: np.ndarray  # (n, 4) in FOLLOWUP_CHANNELS order
    followup: np.ndarray
    converted: np.ndarray
    converted_t: np.ndarray
    amount: np.ndarray


def _draw_outcomes(rng: np.random.Generator, people: _People, leads: _Leads, slots: _Slots,
                   history: _History, orders: _Orders, email_type: np.ndarray,
                   window_days: int) -> tuple[_Outcomes, _Orders]:
    """Outcomes lead position by position, so that a conversion becomes an order (amount, time)
    that the person's later leads see as RFM history; returns the outcomes and all orders."""
    n = leads.t.size
    has_phone = (slots.mask.astype(np.int64) & PHONE_BITS) != 0
    city_tier = np.array([tier for _, tier in m.CITIES])[leads.city]
    propensity = np.zeros((n, len(FOLLOWUP_CHANNELS)))
    followup = np.zeros(n, dtype=np.int64)
    converted = np.zeros(n, dtype=bool)
    converted_t = np.zeros(n, dtype=np.int64)
    amount = np.zeros(n)
    # the CRM's randomised follow-up: a salted draw of each lead's id (its creation-order
    # number, as the leads table numbers it), recomputable from the data
    # (crm_data.channel_effects.historical_arms)
    number = np.empty(n, dtype=np.int64)
    number[np.lexsort((leads.person, leads.t))] = np.arange(n)
    explored, drawn = channel_effects.historical_draws(number)
    for position in range(int(people.leads.max())):
        rows = np.flatnonzero(leads.pos == position)
        n_orders, order_total, days_since_order = _rfm(leads, orders, rows)
        facts = m.LeadFacts(
            intent=leads.intent[rows], behaviour=history.behaviour[rows],
            days_since_last_event=history.days_since_last[rows],
            high_intent_30d=history.high_intent_30d[rows], pricing_30d=history.pricing_30d[rows],
            recruitment_30d=history.recruitment_30d[rows],
            offline_event_90d=history.offline_event_90d[rows], channel=leads.channel[rows],
            campaign_effect=leads.campaign_effect[leads.campaign[rows]],
            funnel=leads.funnel[rows], landed_on_pricing=leads.landed_on_pricing[rows],
            submit_hour_cn=(leads.t[rows] // 3600 + 8) % 24, grade=leads.grade[rows],
            subject=leads.subject[rows], city_tier=city_tier[rows],
            device=leads.device[rows], email_type=email_type[rows],
            phone_state=np.select([slots.bad_phone[rows], ~has_phone[rows]], [2, 1], 0),
            n_orders=n_orders, order_total=order_total, days_since_order=days_since_order,
            earlier_leads=leads.pos[rows], wrong_persona=people.wrong_persona[leads.person[rows]],
            season_shift=leads.season_shift[rows],
        )
        k = rows.size
        logit = m.conversion_logit(facts, rng.normal(0.0, m.LOGIT_NOISE_SD, k))
        propensity[rows], _ = channel_effects.channel_propensities(
            logit, facts, rng, m.marginal_probability)
        followup[rows] = np.where(explored[rows], drawn[rows],
                                  m.k12_followup_index()[leads.funnel[rows]])
        converted[rows] = rng.random(k) < propensity[rows, followup[rows]]
        delay = (rng.beta(*m.CONVERSION_DELAY_BETA, k) * window_days * DAY).astype(np.int64)
        converted_t[rows] = leads.t[rows] + np.clip(delay, 600, window_days * DAY)
        amount[rows] = np.where(converted[rows], _prices(rng, k), 0.0)
        won = rows[converted[rows]]
        orders = orders.extended(leads.person[won], converted_t[won], amount[won], won)
    outcomes = _Outcomes(propensity=propensity, followup=followup, converted=converted,
                         converted_t=converted_t, amount=amount)
    return outcomes, orders


# ---- funnel steps in time -------------------------------------------------------------------
@dataclass
class _Steps:
    form_step: np.ndarray  # per lead: the step the form records (0 submitted, 1 verified)
    lead: np.ndarray  # per step event: the lead
    step: np.ndarray  # per step event: its FUNNEL_STEPS index (1..3)
    t: np.ndarray  # per step event: seconds since start


def _draw_steps(seed: int, leads: _Leads, events: _Events, outcomes: _Outcomes,
                window_days: int) -> _Steps:
    """The form's step and the times of the later steps (``generate_mechanism.step_times``):
    before the conversion of a converted lead, before the first trial class of a lead that books
    one, inside the window. Drawn from their own stream, so nothing else moves."""
    n = leads.t.size
    bound = leads.t + window_days * DAY
    bound = np.where(outcomes.converted, np.minimum(bound, outcomes.converted_t), bound)
    trial = (events.type == EVENT_TYPES.index("trial_class")) & (events.t > leads.t[events.lead])
    first_trial = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_trial, events.lead[trial], events.t[trial])
    booked = leads.funnel == FUNNEL_STEPS.index("booked_trial")
    bound = np.where(booked, np.minimum(bound, first_trial), bound)
    bound = np.maximum(bound, leads.t + 2 * len(FUNNEL_STEPS))
    rng = np.random.default_rng([seed, m.STEP_STREAM])
    form_step, times = m.step_times(rng, leads.funnel, leads.channel, leads.t, bound)
    lead, step = np.nonzero(times >= 0)
    return _Steps(form_step=form_step, lead=lead, step=step, t=times[lead, step])


# ---- tables ---------------------------------------------------------------------------------
def _arrow_schema(table: TableSchema) -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.dtype], nullable=c.nullable)
                      for c in table.columns])


def _table(schema: TableSchema, columns: dict[str, pa.Array]) -> pa.Table:
    return pa.Table.from_arrays([columns[name] for name in schema.column_names],
                                schema=_arrow_schema(schema))


def _validate_arguments(n_leads: int, seed: int, days: int, window_days: int, salt: str) -> None:
    problems = []
    if not isinstance(n_leads, int) or n_leads < 1:
        problems.append(f"n_leads must be a positive whole number, got {n_leads!r}")
    if not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative whole number, got {seed!r}")
    if not isinstance(days, int) or days < 1:
        problems.append(f"days must be a positive whole number, got {days!r}")
    if not isinstance(window_days, int) or window_days < 1:
        problems.append(f"window_days must be a positive whole number, got {window_days!r}")
    if not salt:
        problems.append("salt must not be empty")
    if problems:
        raise ValueError("; ".join(problems))


def simulate_crm(
    n_leads: int,
    seed: int,
    start: date = DEFAULT_START,
    days: int = 150,
    drift: bool = False,
    salt: str | None = None,
    window_days: int | None = None,
    progress: Progress | None = None,
) -> SyntheticCrm:
    """Draw a synthetic CRM history in memory (see ``generate_crm``; nothing is written)."""
    settings = get_settings()
    salt = settings.hash_salt if salt is None else salt
    window_days = settings.conversion_window_days if window_days is None else window_days
    _validate_arguments(n_leads, seed, days, window_days, salt)
    began = time.perf_counter()
    say = progress or (lambda _stage: None)
    rng = np.random.default_rng(seed)

    say("persons and leads")
    people = _draw_people(rng, n_leads)
    leads = _draw_leads(rng, people, days, drift, seed, start)
    slots = _draw_slots(rng, people, leads)
    say("behaviour events")
    urls = m.UrlVocabulary()
    events = _draw_events(rng, people, leads, slots, urls, days, window_days, drift)
    orders = _draw_orders(rng, people, leads)
    say("conversion mechanism")
    history = _person_history(people, leads, events)
    email_type = _email_type(leads, slots)
    outcomes, orders = _draw_outcomes(rng, people, leads, slots, history, orders, email_type,
                                      window_days)
    steps = _draw_steps(seed, leads, events, outcomes, window_days)
    say("identifier hashing")
    raw = _RawIdentifiers(rng, people.n, slots.email_kind, slots.n_public_devices)
    identities = _hash_identities(rng, people, leads, slots, raw, salt)
    earlier = orders.lead < 0
    earlier_persons = np.unique(orders.person[earlier])
    per_person = _order_key_hashes(earlier_persons, people, slots, raw, salt)
    order_hashes = np.empty(orders.t.size, dtype=object)
    order_hashes[earlier] = np.asarray(per_person, dtype=object)[
        np.searchsorted(earlier_persons, orders.person[earlier])]
    order_hashes[~earlier] = _conversion_key_hashes(orders.lead[~earlier], people, leads, slots,
                                                    raw, salt)

    say("tables")
    start_epoch = calendar.timegm(start.timetuple())
    tables = _build_tables(people, leads, slots, events, orders, outcomes, identities,
                           order_hashes, email_type, urls, start_epoch, steps)
    n_converted = int(outcomes.converted.sum())
    summary = GenerationSummary(
        out_dir="", seed=seed, start=start.isoformat(), days=days, drift=drift,
        window_days=window_days,
        data_end=(start + timedelta(days=days + window_days)).isoformat(),
        n_leads=n_leads, n_persons=people.n, n_identities=tables["identities"].num_rows,
        n_events=tables["events"].num_rows, n_orders=tables["orders"].num_rows,
        n_converted=n_converted, base_rate=round(n_converted / n_leads, 6),
        n_returning_persons=int(np.unique(orders.person[orders.lead < 0]).size),
        n_multi_lead_persons=int((people.leads >= 2).sum()),
        n_unlinkable_persons=int(slots.unlinkable_person.sum()),
        unusable_identifiers=identities.unusable,
        shared_identifiers={
            "sibling_persons": int((people.sibling_of >= 0).sum()),
            "recycled_phones": int(slots.recycled.sum()),
            "public_devices": slots.n_public_devices,
            "public_device_leads": int((slots.public_device >= 0).sum()),
            "typo_leads": int((slots.typo != 0).sum()),
        },
        n_conversion_orders=int((orders.lead >= 0).sum()),
        n_step_events=int(steps.t.size),
        seconds=round(time.perf_counter() - began, 3),
    )
    return SyntheticCrm(tables=tables, summary=summary,
                        raw_identifiers=frozenset(identities.raw_values))


def _build_tables(people: _People, leads: _Leads, slots: _Slots, events: _Events,
                  orders: _Orders, outcomes: _Outcomes, identities: _Identities,
                  order_hashes: np.ndarray, email_type: np.ndarray, urls: m.UrlVocabulary,
                  start_epoch: int, steps: _Steps) -> dict[str, pa.Table]:
    n = leads.t.size
    out = np.lexsort((leads.person, leads.t))  # lead ids follow creation time
    number = np.empty(n, dtype=np.int64)
    number[out] = np.arange(n)
    lead_ids = _ids("L", np.arange(n), 8)
    city_null = leads.nulls["city"][out]
    city_names = [name for name, _ in m.CITIES]
    city_tier = np.array([tier for _, tier in m.CITIES])[leads.city[out]]
    has_phone = (slots.mask.astype(np.int64) & PHONE_BITS) != 0
    leads_table = _table(RAW_TABLES["leads"], {
        "lead_id": lead_ids,
        "created_at": _timestamps(start_epoch, leads.t[out]),
        "channel": _vocab(CHANNELS, leads.channel[out]),
        "campaign": _vocab(leads.campaign_names, leads.campaign[out]),
        "landing_page": _vocab(leads.landing_names, leads.landing[out]),
        "grade": _vocab(GRADES, leads.grade[out], leads.nulls["grade"][out]),
        "subject": _vocab(SUBJECTS, leads.subject[out], leads.nulls["subject"][out]),
        "city": _vocab(city_names, leads.city[out], city_null),
        "city_tier": pa.array(city_tier, pa.int64(), mask=city_null),
        "device": _vocab(DEVICES, leads.device[out], leads.nulls["device"][out]),
        "funnel_step": _vocab(FUNNEL_STEPS, steps.form_step[out]),  # as the form records it
        "phone_valid": pa.array(has_phone[out], pa.bool_()),
        "email_domain_type": _vocab(EMAIL_DOMAIN_TYPES, email_type[out]),
    })

    id_order = np.lexsort((identities.type_code, number[identities.lead]))
    identities_table = _table(RAW_TABLES["identities"], {
        "lead_id": lead_ids.take(pa.array(number[identities.lead][id_order])),
        "id_type": _vocab(_ID_TYPE_NAMES, identities.type_code[id_order]),
        "id_hash": identities.id_hash.take(pa.array(id_order)),
    })

    # behaviour events, then the funnel steps after the form as events of their lead (type =
    # the step's name, no page, no dwell), all in time order
    ev_lead = np.concatenate((events.lead, steps.lead))
    ev_t = np.concatenate((events.t, steps.t))
    ev_type = np.concatenate((events.type, len(EVENT_TYPES) - 1 + steps.step))
    ev_url = np.concatenate((events.url, np.full(steps.t.size, len(urls.urls))))
    ev_dwell = np.concatenate((events.dwell, np.zeros(steps.t.size)))
    t0 = int(ev_t.min(initial=0))
    ev_order = np.argsort((ev_t - t0) * n + number[ev_lead], kind="stable")
    events_table = _table(RAW_TABLES["events"], {
        "event_id": _ids("E", np.arange(ev_t.size), 10),
        "lead_id": lead_ids.take(pa.array(number[ev_lead][ev_order])),
        "event_type": _vocab(EVENT_TYPES + STEP_EVENT_TYPES, ev_type[ev_order]),
        "event_time": _timestamps(start_epoch, ev_t[ev_order]),
        "url": _vocab([*urls.urls, ""], ev_url[ev_order]),
        "dwell_seconds": pa.array(ev_dwell[ev_order], pa.float64()),
    })

    o_order = np.lexsort((orders.person, orders.t))
    orders_table = _table(RAW_TABLES["orders"], {
        "order_id": _ids("O", np.arange(orders.t.size), 8),
        "id_hash": pa.array(order_hashes[o_order].tolist(), pa.string()),
        "ordered_at": _timestamps(start_epoch, orders.t[o_order]),
        "amount": pa.array(orders.amount[o_order], pa.float64()),
    })

    converted = outcomes.converted[out]
    outcomes_table = _table(RAW_TABLES["outcomes"], {
        "lead_id": lead_ids,
        "converted": pa.array(converted, pa.bool_()),
        "converted_at": _timestamps(start_epoch, outcomes.converted_t[out], ~converted),
        "amount": pa.array(outcomes.amount[out], pa.float64()),
        "followup_channel": _vocab(FOLLOWUP_CHANNELS, outcomes.followup[out]),
    })

    truth = {"lead_id": lead_ids, "true_person_id": _ids("P", leads.person[out], 8)}
    for j, channel in enumerate(FOLLOWUP_CHANNELS):
        truth[f"propensity_{channel}"] = pa.array(outcomes.propensity[out, j], pa.float64())
    truth_table = pa.table({name: truth[name] for name in TRUTH_LEADS_COLUMNS})
    return {"leads": leads_table, "identities": identities_table, "events": events_table,
            "orders": orders_table, "outcomes": outcomes_table, "truth": truth_table}


def write_crm(crm: SyntheticCrm, out_dir: Path) -> dict[str, Path]:
    """Write the tables as Parquet (deterministic writer options) under ``out_dir``."""
    paths = {name: Path(out_dir) / "raw" / f"{name}.parquet" for name in RAW_TABLES}
    paths["truth"] = Path(out_dir) / "truth" / "leads_truth.parquet"
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(crm.tables[name], path, **PARQUET_OPTIONS)
    return paths


def generate_crm(
    out_dir: Path,
    n_leads: int,
    seed: int,
    start: date = DEFAULT_START,
    days: int = 150,
    drift: bool = False,
    salt: str | None = None,
    window_days: int | None = None,
    progress: Progress | None = None,
) -> GenerationSummary:
    """Generate a synthetic CRM history and write it under ``out_dir`` (normally
    ``settings.data_dir``): ``raw/{leads,identities,events,orders,outcomes}.parquet`` and
    ``truth/leads_truth.parquet``. ``salt`` and ``window_days`` default to the settings'.

    Leads are created in ``[start, start + days)``; no timestamp passes
    ``start + days + window_days``. With ``drift`` the last third of the period shifts channel
    mix and behaviour. Same arguments → byte-identical files.
    """
    began = time.perf_counter()
    crm = simulate_crm(n_leads, seed, start, days, drift, salt, window_days, progress)
    if progress:
        progress("writing parquet")
    write_crm(crm, out_dir)
    crm.summary.out_dir = str(out_dir)
    crm.summary.seconds = round(time.perf_counter() - began, 3)
    return crm.summary


def data_end_is_future(summary: GenerationSummary) -> bool:
    """True when the generated period plus window reaches past today (UTC)."""
    return date.fromisoformat(summary.data_end) > datetime.now(UTC).date()
