"""The latent model behind ``leadscore generate``: vocabularies, effect sizes, propensities.

Everything that decides *why* a synthetic lead converts lives here, so the mechanism can be read
(and changed) in one place; ``crm_data.generate`` only draws from it and writes tables.

Conversion logit of a lead under the cheapest follow-up (``ai_bot``), ``logit_terms``::

    BASE_LOGIT + latent intent (seen only through behaviour and funnel step)
    + saturating behaviour score (time-decayed; the 20th page view adds little over the 5th)
    + saturating high-intent events in 30 days (pricing, live, trial) x active in the last 3 days
    + offline event in 90 days (step) - recruitment pages (saturating) - 30 idle days (step)
    + channel + persistent campaign + funnel step x channel trust (a booked trial from a
      purchased list is worth little, from WeChat private a lot)
    + pricing landing page x funnel step + night submission x channel
    + grade x subject fit (exam years with math/physics/chemistry; young children with
      coding/art) + city tier, device, e-mail, phone
    + RFM of earlier purchases (recency threshold) + returning customer x pricing visits (renewal)
    + earlier leads of the person (saturating) - wrong persona
    + season of the submission day (``SEASONS``: sign-up weeks convert more, exams and holidays
      less) + noise settled at submission (``LOGIT_NOISE_SD``)

The truth's propensity integrates over the noise of what happens after submission
(``OUTCOME_NOISE_SD``, ``marginal_probability``), so a model given the true propensities reaches
an AUC of about 0.9, not 0.98: the world keeps what nobody can know at submission.

Most of the signal is non-additive in the features a model sees (saturation, thresholds and
interactions), so a logistic regression on them is misspecified while a tree ensemble is not.
What a follow-up channel does is not a function of this logit alone: ``crm_data.channel_effects``
draws each lead's latent response segment (sure thing, persuadable, lost cause, sleeping dog)
from its attributes plus noise, scales the segment's effect by how soon the channel's team can
call (``hours_to_contact``), and decides which leads' follow-up history randomised (a salted
draw of the lead id, what a service with exploration logs). ``FOLLOWUP_ODDS_UPLIFT`` and
``followup_propensities`` (an effect rising with the lead's own logit, under which routing by
score is right by construction) are no longer used by the generator.

Time: only the funnel step is reached after ``created_at`` (the steps after the form, at their
own times, see below); every other term uses what existed
strictly before the lead, orders included: a lead's conversion is an order (time, amount) that
the person's later leads see as RFM history. Besides the season (lead volume and a logit shift
by calendar day, ``season``) no term depends on calendar time and campaigns run through the
whole period; ``--drift`` shifts the channel mix and behaviour of the late weeks (what a person
does), not how doing it converts. Every conversion falls inside its lead's window, so outcomes
of closed windows are complete up to the data end.

Funnel steps in time: a lead's funnel step (drawn from intent, channel and landing page) is the
step it *reaches* within its window, and the conversion logit reads that final step (the lead's
eventual engagement). The steps after the form happen later, each after the previous one
(``step_times``): ``verified`` minutes after the form (``VERIFY_DELAY``), ``followed_account``
hours after that (``FOLLOW_DELAY``), ``booked_trial`` a day or days later (``BOOK_DELAY``); all
before the lead's conversion when it converts, before its first trial class when it books one,
and inside its conversion window (a lead whose steps would not fit has them squeezed
proportionally into the time left). Some forms verify the phone at submission (an SMS code on
the form, an in-app or WeChat phone authorisation, an ad platform's pre-verified form):
``VERIFIED_AT_FORM_P`` by channel, for leads that verify at all. The leads table's
``funnel_step`` is the step the form records at submission (``submitted``, or ``verified``
for those forms); every later step is an event of the lead (``event_type`` = the step name, its
own ``event_time``), as the CRM sends it to ``POST /events``. The step times come from a
generator of their own (``[seed, STEP_STREAM]``), so the rest of the world (behaviour, outcomes,
follow-up, channel effects) is drawn exactly as before: the final step drives it as it did.

Identifiers (``crm_data.generate``): a person is a student. Siblings share the parent's phone,
the family WeChat account, the parent's e-mail and the home tablet (``SIBLING_SHARES``); school
and library computers give many persons one cookie (``PUBLIC_DEVICE_P``); numbers are re-issued
after a quiet period (``RECYCLED_PHONE_SHARE``); forms carry typos (``TYPO_P``) and wrong grades
(``GRADE_FORM_ERROR_P``). Optional fields are missing by channel, person and intent
(``NULL_*``: informative missingness). The truth (the true person of each lead) is written for
evaluation only; nothing in it is a feature.

What follows for monitoring: the history is not stationary even without ``--drift`` — the
customer base grows as conversions accumulate (RFM features), the season changes the mix of new
and returning persons, and a person's leads repeat its grade and subject, so a per-lead test
between a summer reference and an autumn week can flag columns that a per-person test does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leadscore.schemas import (
    CHANNELS,
    CITY_TIER_BY_NAME,
    EMAIL_DOMAIN_TYPES,
    EVENT_TYPES,
    FOLLOWUP_CHANNELS,
    FUNNEL_STEPS,
    GRADES,
    SUBJECTS,
)

SECONDS_PER_DAY = 86_400

# ---- people and leads ----------------------------------------------------------------------
# Leads per person (1..6): most people leave one lead, some come back through other channels.
LEADS_PER_PERSON_P = np.array([0.62, 0.20, 0.09, 0.05, 0.025, 0.015])
REPEAT_GAP_MEAN_DAYS = 12.0  # gap between a person's consecutive leads (mixture, see generate)
WRONG_PERSONA_SHARE = 0.03  # job seekers / teachers filling a course form
UNLINKABLE_PERSON_SHARE = 0.003  # multi-lead persons whose leads share no identifier
RETURNING_CUSTOMER_LOGIT = -2.3  # + 0.35 * intent: about 10% of persons bought before

CHANNEL_MIX = np.array([0.18, 0.20, 0.10, 0.07, 0.10, 0.10, 0.15, 0.10])
# --drift: the last third of the period buys much more feed_ads and list_purchase traffic.
CHANNEL_MIX_DRIFT = np.array([0.13, 0.32, 0.08, 0.17, 0.07, 0.07, 0.10, 0.06])
DRIFT_START_FRACTION = 2 / 3

CHANNEL_EFFECT = dict(
    sem=0.0, feed_ads=-0.35, channel_agent=-0.1, list_purchase=-0.9, seo=0.35, app=0.25,
    wechat_private=0.6, new_media=0.1,
)
CHANNEL_FUNNEL_EFFECT = dict(
    sem=0.0, feed_ads=-0.2, channel_agent=0.0, list_purchase=-0.6, seo=0.1, app=0.2,
    wechat_private=0.3, new_media=0.0,
)
# Probability that a lead from the channel carries each identifier (if the person has one).
PHONE_P = dict(
    sem=0.90, feed_ads=0.92, channel_agent=0.95, list_purchase=0.99, seo=0.85, app=0.80,
    wechat_private=0.55, new_media=0.75,
)
WECHAT_P = dict(
    sem=0.15, feed_ads=0.15, channel_agent=0.20, list_purchase=0.05, seo=0.15, app=0.25,
    wechat_private=0.98, new_media=0.40,
)
EMAIL_P = dict(
    sem=0.30, feed_ads=0.10, channel_agent=0.15, list_purchase=0.10, seo=0.35, app=0.15,
    wechat_private=0.10, new_media=0.15,
)
COOKIE_P = dict(
    sem=0.95, feed_ads=0.85, channel_agent=0.30, list_purchase=0.02, seo=0.95, app=0.95,
    wechat_private=0.30, new_media=0.60,
)
# Identifiers that several persons (students) share, as in K12 reality. A person is a student;
# identifiers are often the parent's or the household's, and public devices are everybody's.
# A second child of a household: same city, another grade (twins aside), and the parent's phone,
# the family WeChat account, the parent's e-mail and the home tablet with these probabilities.
SIBLING_SHARE = 0.12  # persons who are the sibling of another person
SIBLING_TWIN_P = 0.03  # siblings in the same grade
SIBLING_SHARES = dict(phone=0.8, wechat=0.7, email=0.5, home_device=0.4)
SIBLING_INTENT_SHARE = 0.5  # the parent decides: siblings' intents correlate
# Recycled numbers: an operator re-issues a number after a quiet period; the new owner's leads
# carry the number the old owner's leads carried.
RECYCLED_PHONE_SHARE = 0.015  # persons (first lead late enough) whose phone was recycled
RECYCLE_QUIET_DAYS = 90
# School and library computers: a lead's cookie is a public device's with this probability by
# channel (searches and the main site from a school lab; app and WeChat rarely); a public device
# serves about PUBLIC_DEVICE_LEADS leads of its city over the period.
PUBLIC_DEVICE_P = dict(
    sem=0.03, feed_ads=0.01, channel_agent=0.01, list_purchase=0.0, seo=0.04, app=0.0,
    wechat_private=0.005, new_media=0.01,
)
PUBLIC_DEVICE_LEADS = 25
# Typos on a form: a usable but wrong identifier (one digit of a phone, a letter of a WeChat id or
# an e-mail's local part), per identifier given; a phone that passed the SMS code (funnel step
# verified or later) has none.
TYPO_P = dict(phone=0.015, wechat=0.01, email=0.02, cookie=0.0)
# Grade picked wrongly on a form (a random grade instead of the child's).
GRADE_FORM_ERROR_P = 0.003
PERSON_HAS_PHONE2 = 0.06
PERSON_HAS_WECHAT = 0.65
PERSON_HAS_EMAIL = 0.45
COOKIES_PER_PERSON_P = np.array([0.55, 0.30, 0.15])  # 1, 2 or 3 devices
BAD_PHONE_BASE_LOGIT = -3.5  # - 0.8 * intent: placeholder numbers from reluctant people
BAD_EMAIL_P = 0.08
BAD_WECHAT_P = 0.02

SUBJECT_P = np.array([0.30, 0.28, 0.15, 0.08, 0.05, 0.08, 0.06])
SUBJECT_GROUP = dict(
    math="stem", english="lang", chinese="lang", physics="stem", chemistry="stem",
    coding="stem", art="arts",
)
GRADE_P = np.array([0.05, 0.06, 0.08, 0.09, 0.09, 0.10, 0.09, 0.10, 0.11, 0.07, 0.07, 0.09])
GRADE_EFFECT = dict(G1=-0.2, G2=-0.2, G6=0.1, G9=0.1, G12=0.1)  # + grade_subject_fit
CITIES: tuple[tuple[str, int], ...] = tuple(CITY_TIER_BY_NAME.items())  # the city table
CITY_TIER_P = np.array([0.35, 0.35, 0.20, 0.10])
CITY_TIER_EFFECT = np.array([0.3, 0.15, 0.0, -0.3])  # tiers 1..4
DEVICE_P = np.array([0.32, 0.40, 0.15, 0.06, 0.07])  # DEVICES order
DEVICE_EFFECT = np.array([0.1, 0.0, 0.05, 0.1, -0.2])
# Missing optional fields are informative: they depend on the channel (purchased lists and
# agents' bulk uploads lack fields, app profiles are complete), on the person (some parents skip
# every optional field: a latent reluctance) and on intent (keen parents fill the form in).
# P(null) = sigmoid(NULL_BASE_LOGIT[field] + NULL_CHANNEL_EFFECT[channel]
#                   + reluctance (sd NULL_RELUCTANCE_SD, per person) + NULL_INTENT_EFFECT * intent)
NULL_BASE_LOGIT = dict(grade=-4.3, subject=-4.7, city=-4.0, device=-4.8)
NULL_CHANNEL_EFFECT = dict(
    sem=0.0, feed_ads=0.5, channel_agent=0.9, list_purchase=2.0, seo=-0.2, app=-1.5,
    wechat_private=-0.6, new_media=0.4,
)
NULL_RELUCTANCE_SD = 1.2
NULL_INTENT_EFFECT = -0.5
EMAIL_FREE_SHARE, EMAIL_EDU_SHARE = 0.70, 0.08  # the rest corporate
EMAIL_TYPE_EFFECT = dict(none=0.0, invalid=-0.3, free=0.0, corporate=0.1, edu=0.15)

LANDING_HIGH = ("/trial/{subject}", "/pricing", "/live/{subject}-open-class")
LANDING_HIGH_P = np.array([0.5, 0.3, 0.2])
LANDING_LOW = ("/", "/course/{subject}", "/free-material", "/live/{subject}-open-class")
LANDING_LOW_P = np.array([0.10, 0.35, 0.35, 0.20])

# ---- funnel and follow-up --------------------------------------------------------------------
FUNNEL_INTENT_WEIGHT = 0.9
FUNNEL_NOISE_SD = 0.8
FUNNEL_TRIAL_LANDING_BONUS = 0.2
FUNNEL_THRESHOLDS = np.array([-0.25, 0.8, 1.65])  # ≈ 40% / 30% / 18% / 12%
FUNNEL_EFFECT = np.array([0.0, 0.3, 0.6, 1.2])  # FUNNEL_STEPS order
K12_FOLLOWUP = dict(
    submitted="ai_bot", verified="tmk", followed_account="sales", booked_trial="top_sales"
)
RANDOM_FOLLOWUP_SHARE = 0.25
# Steps in time (see the module docstring). Share of the leads that verify at all whose form
# verifies the phone at submission, by channel: app users are logged in with a verified phone,
# WeChat mini-programs authorise the phone, in-feed ad platforms pre-fill a verified number,
# search and site forms ask an SMS code on the form some of the time; agents' bulk uploads and
# purchased lists carry no verification.
VERIFIED_AT_FORM_P = dict(
    sem=0.30, feed_ads=0.45, channel_agent=0.05, list_purchase=0.0, seo=0.30, app=0.85,
    wechat_private=0.60, new_media=0.35,
)
# Delay of each later step after the previous one: log-normal (median seconds, sigma of log).
VERIFY_DELAY = (6 * 60.0, 1.2)  # minutes: the SMS code arrives, the parent types it
FOLLOW_DELAY = (3 * 3600.0, 1.1)  # hours: the caller or the thank-you page asks for a follow
BOOK_DELAY = (1.5 * SECONDS_PER_DAY, 0.8)  # a day or days: a trial class is booked
STEP_MIN_SECONDS = 30
STEP_STREAM = 0x57E95  # the step times' own random stream: [seed, STEP_STREAM]
FOLLOWUP_ODDS_UPLIFT = dict(ai_bot=1.0, tmk=1.6, sales=2.2, top_sales=2.6)

# ---- behaviour (events) ---------------------------------------------------------------------
HALF_LIFE_DAYS = 14.0  # matches settings.intent_half_life_days' default
INACTIVE_DAYS = 30
PRE_EVENTS_MEAN = 4.0
PRE_EVENTS_NO_COOKIE = 0.35  # without a cookie only e-mail/WeChat history is known
POST_EVENTS_MEAN = 5.0
POST_EVENTS_FUNNEL = np.array([1.0, 1.2, 1.5, 2.0])
PRE_ACTIVE_MEAN_DAYS = 5.0
PRE_DORMANT_MIN_DAYS, PRE_DORMANT_MEAN_DAYS = 30.0, 20.0
POST_MEAN_DAYS = 5.0

_T = {name: i for i, name in enumerate(EVENT_TYPES)}


def _type_p(**shares: float) -> np.ndarray:
    p = np.zeros(len(EVENT_TYPES))
    for name, share in shares.items():
        p[_T[name]] = share
    return p / p.sum()


EVENT_MIX_BROWSE = _type_p(
    web_visit=0.30, pricing_page=0.04, course_page=0.18, recruitment_page=0.02, email_open=0.12,
    email_click=0.04, whitepaper_download=0.05, live_class=0.03, offline_event=0.01,
    trial_class=0.01, wechat_read=0.12, app_open=0.08,
)
EVENT_MIX_HIGH = _type_p(
    web_visit=0.08, pricing_page=0.20, course_page=0.16, email_open=0.04, email_click=0.08,
    whitepaper_download=0.08, live_class=0.12, offline_event=0.05, trial_class=0.07,
    wechat_read=0.05, app_open=0.07,
)
EVENT_MIX_LOW = _type_p(
    web_visit=0.40, pricing_page=0.01, course_page=0.06, recruitment_page=0.30, email_open=0.10,
    email_click=0.01, whitepaper_download=0.02, live_class=0.01, wechat_read=0.07, app_open=0.02,
)


def drifted_mix(mix: np.ndarray) -> np.ndarray:
    """The late-weeks behaviour under --drift: fewer pricing visits, many more app opens."""
    p = mix.copy()
    p[_T["pricing_page"]] *= 0.4
    p[_T["app_open"]] *= 2.5
    return p / p.sum()


# Behaviour weight (WHAT) and typical dwell in seconds, per event type.
TYPE_WEIGHT = dict(
    web_visit=0.5, pricing_page=3.0, course_page=1.5, recruitment_page=0.0, email_open=0.4,
    email_click=1.0, whitepaper_download=1.0, live_class=3.0, offline_event=5.0,
    trial_class=5.0, wechat_read=0.6, app_open=0.8,
)
TYPE_DWELL_SECONDS = dict(
    web_visit=40, pricing_page=90, course_page=120, recruitment_page=60, email_open=15,
    email_click=45, whitepaper_download=30, live_class=1500, offline_event=5400,
    trial_class=2400, wechat_read=70, app_open=180,
)
DWELL_SIGMA = 0.8

# Pages (WHERE) per event type with their URL weight; "{subject}" expands to every subject.
URLS_BY_TYPE: dict[str, tuple[tuple[str, float], ...]] = dict(
    web_visit=(("/", 0.6), ("/about", 0.6), ("/teachers", 0.9), ("/blog/study-tips", 0.8),
               ("/blog/exam-news", 0.8)),
    pricing_page=(("/pricing", 1.0), ("/pricing/annual", 1.3), ("/pricing/small-class", 1.2)),
    course_page=(("/course/{subject}", 1.0),),
    recruitment_page=(("/jobs/teacher", 1.0), ("/jobs/tutor", 1.0), ("/careers", 1.0)),
    email_open=(("email://newsletter", 0.8), ("email://course-update", 1.0),
                ("email://promo", 0.9)),
    email_click=(("/promo/summer", 1.0), ("/promo/back-to-school", 1.0),
                 ("/free-material", 0.9)),
    whitepaper_download=(("/free-material/exam-guide", 1.1), ("/free-material/wordlist", 1.0),
                         ("/free-material/past-papers", 1.2)),
    live_class=(("/live/{subject}-open-class", 1.0),),
    offline_event=(("/events/open-day", 1.0), ("/events/parent-seminar", 1.1)),
    trial_class=(("/trial/{subject}", 1.2),),
    wechat_read=(("wechat://article/exam-tips", 1.0), ("wechat://article/parenting", 0.8),
                 ("wechat://article/course-intro", 1.2)),
    app_open=(("app://home", 0.8), ("app://course", 1.1), ("app://homework", 1.0)),
)


class UrlVocabulary:
    """All event URLs as one array; per event type an offset/count, subject pages per subject."""

    def __init__(self) -> None:
        urls: list[str] = []
        weights: list[float] = []
        self.offset = np.zeros(len(EVENT_TYPES), dtype=np.int64)
        self.count = np.zeros(len(EVENT_TYPES), dtype=np.int64)
        self.by_subject = np.zeros(len(EVENT_TYPES), dtype=bool)
        for t, name in enumerate(EVENT_TYPES):
            self.offset[t] = len(urls)
            for url, weight in URLS_BY_TYPE[name]:
                if "{subject}" in url:
                    self.by_subject[t] = True
                    urls.extend(url.format(subject=s) for s in SUBJECTS)
                    weights.extend([weight] * len(SUBJECTS))
                else:
                    urls.append(url)
                    weights.append(weight)
            self.count[t] = len(urls) - self.offset[t]
        self.urls = urls
        self.weight = np.array(weights)


# ---- conversion -----------------------------------------------------------------------------
BASE_LOGIT = -13.0
INTENT_WEIGHT = 0.6  # latent intent: seen by a model only through behaviour and the funnel step
# Behaviour saturates: BEHAVIOUR_MAX * (1 - exp(-score / BEHAVIOUR_SCALE)) on the decayed score
# (median ~4, 90th percentile ~30): the first few touches matter, later ones add little.
BEHAVIOUR_MAX, BEHAVIOUR_SCALE = 2.4, 3.0
# High-intent events (pricing page, live class, trial class) in the last 30 days, saturating,
# count only while the person is active (last touch within ACTIVE_DAYS): stale intent is gone.
HIGH_INTENT_MAX, HIGH_INTENT_SCALE = 2.5, 1.5
ACTIVE_DAYS, STALE_HIGH_INTENT_SHARE = 3.0, 0.0
OFFLINE_EVENT_EFFECT = 0.8  # attended an open day/seminar in the last 90 days: a step
RECRUITMENT_MAX, RECRUITMENT_SCALE = -0.9, 1.5  # recruitment pages in 30 days: job seekers
INACTIVE_EFFECT = -0.6  # threshold: no activity at all in the last INACTIVE_DAYS days
# Funnel step effect scaled by how much the channel's leads mean it: a trial booked by a
# purchased-list lead (often pushed by a caller) is worth far less than one from WeChat.
FUNNEL_EFFECT = np.array([0.0, 0.6, 1.4, 2.8])  # FUNNEL_STEPS order
CHANNEL_FUNNEL_TRUST = dict(
    sem=0.9, feed_ads=0.25, channel_agent=0.6, list_purchase=0.0, seo=1.3, app=1.4,
    wechat_private=2.0, new_media=0.7,
)
# Grade × subject fit: exam years with exam subjects convert far more; young children buy
# coding/art enrichment more than exam drill; senior-high art leads are mostly hobbyists.
EXAM_GRADES, EXAM_SUBJECTS = ("G9", "G12"), ("math", "physics", "chemistry")
EXAM_FIT_EFFECT = 2.0
PRE_EXAM_GRADES, PRE_EXAM_FIT_EFFECT = ("G8", "G11"), 0.8
YOUNG_GRADES, ENRICHMENT_SUBJECTS = ("G1", "G2", "G3"), ("coding", "art")
ENRICHMENT_FIT_EFFECT = 1.0
YOUNG_EXAM_DRILL_EFFECT = -1.0  # G1-G3 with physics/chemistry: wrong form or idle browsing
EXAM_YEAR_HOBBY_EFFECT = -1.0  # G9/G12 with coding/art: no time for hobbies in an exam year
# Submission hour (China time) × channel: in-feed ad forms sent between 0 and 6 h are mostly
# accidental taps; WeChat-private parents reading the account late at night are real buyers.
NIGHT_HOURS = 6
NIGHT_EFFECT = dict(
    sem=-0.3, feed_ads=-1.2, channel_agent=0.0, list_purchase=0.0, seo=0.0, app=0.0,
    wechat_private=0.5, new_media=-0.8,
)
# Landing on /pricing × funnel step: a price shopper who stops at the form converts less than an
# ordinary lead of the same step; one who goes on to book a trial has decided.
PRICING_LANDING_FUNNEL_EFFECT = np.array([-0.8, -0.3, 0.2, 0.6])  # FUNNEL_STEPS order
# Earlier leads of the person: the first return matters, more returns add little.
EARLIER_LEADS_EFFECT = np.array([0.0, 0.5, 0.65, 0.7])  # by min(earlier leads, 3)
WRONG_PERSONA_EFFECT = -1.5
NO_PHONE_EFFECT, BAD_PHONE_EFFECT = -0.2, -0.9
# Unobserved circumstances, in two parts. LOGIT_NOISE_SD: what no CRM records but is settled at
# submission (budget, a school's homework load); it is part of the truth's propensity.
# OUTCOME_NOISE_SD: what happens after submission (a competitor's offer, a family decision, the
# caller's day); it is not known at submission by anyone, so the truth's propensity integrates
# over it (``marginal_probability``): even a model given the true propensities ranks leads only
# as well as the world allows (AUC about 0.9, not 0.98).
LOGIT_NOISE_SD = 1.6
OUTCOME_NOISE_SD = 3.3
CAMPAIGN_EFFECT_SD = 0.2
# Persistent campaigns per channel (and subject group for the subject-targeted channels).
CAMPAIGN_THEMES = ("brand", "exam-prep", "trial-offer")
CAMPAIGN_THEME_P = np.array([0.45, 0.35, 0.20])
# Returning customers (RFM of orders before the lead): recency is a threshold, frequency and
# monetary saturate; a returning customer on the pricing page is renewing (strong), a returning
# customer without recent pricing visits converts only a little more than a new person.
RFM_ANY_ORDER = 0.2
RFM_FREQUENCY = 0.15  # on min(order count - 1, 2)
RFM_RECENT_DAYS, RFM_RECENT = 180, 0.35
RFM_MONETARY = 0.1  # on log(total / 3000), clipped to ±1
RENEWAL_PRICING_EFFECT = 2.0  # returning customer with a pricing-page visit in the last 30 days
ORDERS_EXTRA_MEAN = 0.7  # orders per returning customer: 1 + Poisson
PRICES = np.array([1999.0, 2999.0, 4999.0, 6999.0, 9999.0])
PRICE_P = np.array([0.25, 0.30, 0.25, 0.12, 0.08])
DISCOUNTS = np.array([1.0, 0.9, 0.8])
CONVERSION_DELAY_BETA = (1.3, 3.5)  # share of the conversion window


# ---- calendar: seasonality of lead volume and of conversion ---------------------------------
# Windows of the Chinese K12 year ((month, day) to (month, day), inclusive) with a lead-volume
# multiplier and a conversion-logit shift; outside every window: 1 and 0. Exams and holidays
# bring fewer leads that convert less; the sign-up weeks before summer, before the new school
# year and before winter break bring more leads that convert more.
SEASONS: tuple[tuple[str, tuple[int, int], tuple[int, int], float, float], ...] = (
    ("winter_break_signup", (1, 5), (1, 24), 1.3, 0.25),
    ("spring_festival", (1, 25), (2, 10), 0.5, -0.4),
    ("labour_day", (5, 1), (5, 5), 0.6, -0.4),
    ("exam_season", (6, 5), (6, 25), 0.75, -0.3),  # gaokao 7-9 June, zhongkao mid/late June
    ("summer_signup", (6, 26), (7, 31), 1.5, 0.35),
    ("back_to_school", (8, 20), (9, 15), 1.3, 0.2),
    ("national_day", (10, 1), (10, 7), 0.55, -0.45),
    ("double_eleven", (11, 1), (11, 11), 1.25, 0.15),
)


def season(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lead-volume multiplier, conversion-logit shift) per calendar day (``datetime64[D]``)."""
    days = np.asarray(days, dtype="datetime64[D]")
    month_start = days.astype("datetime64[M]")
    key = ((month_start.astype(np.int64) % 12) + 1) * 100 + (days - month_start.astype(
        "datetime64[D]")).astype(np.int64) + 1
    volume, shift = np.ones(days.shape), np.zeros(days.shape)
    for _name, (m0, d0), (m1, d1), v, s in SEASONS:
        inside = (key >= m0 * 100 + d0) & (key <= m1 * 100 + d1)
        volume[inside], shift[inside] = v, s
    return volume, shift


def marginal_probability(logit: np.ndarray) -> np.ndarray:
    """P(convert) given ``logit`` before the outcome noise (sd ``OUTCOME_NOISE_SD``) is drawn:
    the probit approximation of the logistic-normal integral."""
    return sigmoid(logit / np.sqrt(1.0 + np.pi * OUTCOME_NOISE_SD**2 / 8.0))


def grade_effect() -> np.ndarray:
    return np.array([GRADE_EFFECT.get(g, 0.0) for g in GRADES])


def by_channel(table: dict[str, float]) -> np.ndarray:
    """A per-channel dict as an array in ``CHANNELS`` order."""
    return np.array([table[c] for c in CHANNELS])


def email_type_effect() -> np.ndarray:
    return np.array([EMAIL_TYPE_EFFECT[t] for t in EMAIL_DOMAIN_TYPES])


def type_weight() -> np.ndarray:
    return np.array([TYPE_WEIGHT[t] for t in EVENT_TYPES])


def type_log_dwell() -> np.ndarray:
    return np.log([TYPE_DWELL_SECONDS[t] for t in EVENT_TYPES])


def k12_followup_index() -> np.ndarray:
    """Follow-up channel index (``FOLLOWUP_CHANNELS`` order) per funnel step."""
    return np.array([FOLLOWUP_CHANNELS.index(K12_FOLLOWUP[s]) for s in FUNNEL_STEPS])


def step_times(rng: np.random.Generator, funnel: np.ndarray, channel: np.ndarray,
               created: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step each lead's form records (0 or 1) and the time of every step after it.

    ``funnel`` is the final step index, ``created`` the lead's time (seconds), ``bound`` the
    latest time its steps may take (strictly after ``created``). Returns ``form_step`` (per lead)
    and ``times`` (shape (n, len(FUNNEL_STEPS)); seconds; ``-1`` where the step is not an event:
    reached at the form, or never reached). Each step follows the previous one; steps that would
    pass ``bound`` are squeezed proportionally into ``(created, bound)``.
    """
    n = funnel.size
    at_form = (funnel >= 1) & (rng.random(n) < by_channel(VERIFIED_AT_FORM_P)[channel])
    form_step = np.where(at_form, 1, 0).astype(np.int8)
    delays = np.zeros((n, len(FUNNEL_STEPS)))
    for k, (median, sigma) in enumerate((VERIFY_DELAY, FOLLOW_DELAY, BOOK_DELAY), start=1):
        draw = np.exp(np.log(median) + sigma * rng.standard_normal(n))
        delays[:, k] = np.where((funnel >= k) & (form_step < k),
                                np.maximum(draw, STEP_MIN_SECONDS), 0.0)
    offsets = np.cumsum(delays, axis=1)
    room = np.maximum(bound - created, 2).astype(float)
    last = offsets[:, -1]
    scale = np.where(last >= room, (room - 1) / np.maximum(last, 1.0), 1.0)
    offsets = np.maximum(np.floor(offsets * scale[:, None]), np.arange(len(FUNNEL_STEPS)))
    times = np.where(delays > 0, created[:, None] + offsets.astype(np.int64), -1)
    # squeezing may tie two steps of a short window: keep them in order, one second apart
    for k in range(2, len(FUNNEL_STEPS)):
        tied = (times[:, k] >= 0) & (times[:, k - 1] >= 0) & (times[:, k] <= times[:, k - 1])
        times[tied, k] = times[tied, k - 1] + 1
    return form_step, times


def funnel_index(score: np.ndarray) -> np.ndarray:
    """Ordinal funnel step (0 = submitted .. 3 = booked_trial) from a latent funnel score."""
    return np.searchsorted(FUNNEL_THRESHOLDS, score).astype(np.int8)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def saturating(x: np.ndarray, scale: float) -> np.ndarray:
    """``1 - exp(-x / scale)``: 0 at 0, 63% at ``scale``, 1 in the limit."""
    return -np.expm1(-np.maximum(x, 0.0) / scale)


def grade_subject_fit() -> np.ndarray:
    """Grade × subject interaction, shape (len(GRADES), len(SUBJECTS))."""
    out = np.zeros((len(GRADES), len(SUBJECTS)))
    for g, grade in enumerate(GRADES):
        for s, subject in enumerate(SUBJECTS):
            if subject in EXAM_SUBJECTS and grade in EXAM_GRADES:
                out[g, s] = EXAM_FIT_EFFECT
            elif subject in EXAM_SUBJECTS and grade in PRE_EXAM_GRADES:
                out[g, s] = PRE_EXAM_FIT_EFFECT
            elif subject in ENRICHMENT_SUBJECTS and grade in YOUNG_GRADES:
                out[g, s] = ENRICHMENT_FIT_EFFECT
            elif subject in ("physics", "chemistry") and grade in YOUNG_GRADES:
                out[g, s] = YOUNG_EXAM_DRILL_EFFECT
            elif subject in ENRICHMENT_SUBJECTS and grade in EXAM_GRADES:
                out[g, s] = EXAM_YEAR_HOBBY_EFFECT
    return out


@dataclass
class LeadFacts:
    """What the mechanism reads per lead (arrays of one length; indices in schema order).

    Behaviour fields describe the person's events strictly before the lead; order fields the
    person's purchases before it.
    """

    intent: np.ndarray
    behaviour: np.ndarray  # time-decayed weighted behaviour score
    days_since_last_event: np.ndarray  # inf without any earlier event
    high_intent_30d: np.ndarray  # pricing-page, live-class and trial-class events
    pricing_30d: np.ndarray
    recruitment_30d: np.ndarray
    offline_event_90d: np.ndarray
    channel: np.ndarray
    campaign_effect: np.ndarray
    funnel: np.ndarray
    landed_on_pricing: np.ndarray
    submit_hour_cn: np.ndarray  # 0..23, China time
    grade: np.ndarray
    subject: np.ndarray
    city_tier: np.ndarray  # 1..4
    device: np.ndarray
    email_type: np.ndarray
    phone_state: np.ndarray  # 0 usable, 1 none given, 2 unusable
    n_orders: np.ndarray
    order_total: np.ndarray
    days_since_order: np.ndarray
    earlier_leads: np.ndarray
    wrong_persona: np.ndarray
    season_shift: np.ndarray | None = None  # conversion-logit shift of the submission day


def logit_terms(f: LeadFacts) -> dict[str, np.ndarray]:
    """The conversion logit under ``ai_bot`` by term (noise and base excluded)."""
    active = f.days_since_last_event <= ACTIVE_DAYS
    returning = f.n_orders > 0
    monetary = np.clip(np.log(np.maximum(f.order_total, 1.0) / 3000.0), -1.0, 1.0)
    return {
        "intent": INTENT_WEIGHT * f.intent,
        "behaviour": BEHAVIOUR_MAX * saturating(f.behaviour, BEHAVIOUR_SCALE),
        "high_intent_x_recency": HIGH_INTENT_MAX * saturating(f.high_intent_30d, HIGH_INTENT_SCALE)
        * np.where(active, 1.0, STALE_HIGH_INTENT_SHARE),
        "offline_event": OFFLINE_EVENT_EFFECT * (f.offline_event_90d > 0),
        "recruitment": RECRUITMENT_MAX * saturating(f.recruitment_30d, RECRUITMENT_SCALE),
        "inactive": INACTIVE_EFFECT * (f.days_since_last_event > INACTIVE_DAYS),
        "channel": by_channel(CHANNEL_EFFECT)[f.channel],
        "campaign": f.campaign_effect,
        "funnel_x_channel": FUNNEL_EFFECT[f.funnel] * by_channel(CHANNEL_FUNNEL_TRUST)[f.channel],
        "pricing_landing_x_funnel": PRICING_LANDING_FUNNEL_EFFECT[f.funnel] * f.landed_on_pricing,
        "night_x_channel": by_channel(NIGHT_EFFECT)[f.channel] * (f.submit_hour_cn < NIGHT_HOURS),
        "grade": grade_effect()[f.grade],
        "grade_x_subject": grade_subject_fit()[f.grade, f.subject],
        "city_tier": CITY_TIER_EFFECT[f.city_tier - 1],
        "device": DEVICE_EFFECT[f.device],
        "email": email_type_effect()[f.email_type],
        "phone": np.array([0.0, NO_PHONE_EFFECT, BAD_PHONE_EFFECT])[f.phone_state],
        "rfm": np.where(
            returning,
            RFM_ANY_ORDER + RFM_FREQUENCY * np.minimum(f.n_orders - 1, 2)
            + RFM_MONETARY * monetary + RFM_RECENT * (f.days_since_order <= RFM_RECENT_DAYS),
            0.0,
        ),
        "returning_x_pricing": RENEWAL_PRICING_EFFECT * (returning & (f.pricing_30d > 0)),
        "earlier_leads": EARLIER_LEADS_EFFECT[np.minimum(f.earlier_leads, 3)],
        "wrong_persona": WRONG_PERSONA_EFFECT * f.wrong_persona,
        "season": (np.zeros(np.shape(f.intent)) if f.season_shift is None
                   else np.asarray(f.season_shift, dtype=float)),
    }


def conversion_logit(f: LeadFacts, noise: np.ndarray) -> np.ndarray:
    """Conversion logit under the cheapest follow-up (``ai_bot``): base + terms + noise."""
    total = BASE_LOGIT + noise
    for term in logit_terms(f).values():
        total = total + term
    return total


def followup_propensities(base_logit: np.ndarray) -> np.ndarray:
    """Conversion probability under each follow-up channel, shape (n, 4) in FOLLOWUP_CHANNELS
    order. Odds scale by uplift ** h with h in (0.4, 1.6) rising with the ai_bot logit; the
    outcome noise is integrated out (``marginal_probability``)."""
    h = 0.4 + 1.2 * sigmoid(base_logit + 2.5)
    out = np.empty((base_logit.size, len(FOLLOWUP_CHANNELS)))
    for j, channel in enumerate(FOLLOWUP_CHANNELS):
        out[:, j] = marginal_probability(base_logit + h * np.log(FOLLOWUP_ODDS_UPLIFT[channel]))
    return out
