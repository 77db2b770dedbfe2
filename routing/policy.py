"""The routing policy file: channels (cost, capacity, relative conversion), tiers, cut-offs.

A policy is a versioned YAML file (the packaged default is
``leadscore/defaults/routing_policy.yaml``, which documents every field). ``load_policy`` reads
and validates it; ``RoutingPolicy.assign`` turns calibrated probabilities into tiers A–D and
follow-up channels, and ``CapacityLedger`` routes a day's overflow down to the next cheaper
channel at serving time, the same rule the simulation and the optimiser apply.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS, FUNNEL_CLASS, FUNNEL_STEPS, TIERS

CUTOFF_TIERS: tuple[str, ...] = TIERS[:3]  # D is everything below C's cut-off
CUTOFF_MODES: tuple[str, ...] = ("fixed", "optimized")
REFERENCE_FUNNEL_STEP = "funnel_step"
# The K12 routing by funnel step (booked_trial → top_sales …), via the class letters A–D.
K12_TIER_CHANNEL: dict[str, str] = {"A": "top_sales", "B": "sales", "C": "tmk", "D": "ai_bot"}
K12_FUNNEL_CHANNEL: dict[str, str] = {
    step: K12_TIER_CHANNEL[letter] for step, letter in FUNNEL_CLASS.items()
}
_TOP_KEYS = {
    "version", "channels", "tiers", "cutoffs", "control_share", "control_salt",
    "exploration_share", "probability_reference", "historical_followup", "capacity_day_timezone",
    "expected_daily_leads", "optimization",
}
MAX_EXPLORATION_SHARE = 0.5  # beyond it the policy would be mostly a random draw
_CHANNEL_KEYS = {"cost_per_lead", "daily_capacity", "capacity_share", "relative_conversion"}


class PolicyError(ValueError):
    """The routing policy is malformed; the message names the field and the problem."""


@dataclass(frozen=True)
class ChannelSpec:
    """One follow-up channel: RMB per lead handled, leads per day, conversion vs the AI bot."""

    name: str
    cost_per_lead: float
    relative_conversion: float
    daily_capacity: float | None = None  # None: unlimited (or sized by capacity_share)
    capacity_share: float | None = None  # share of the expected daily lead volume

    def capacity(self, daily_leads: float | None) -> float:
        """Absolute leads/day: ``daily_capacity``, else ``ceil(share × daily_leads)``, else inf."""
        if self.daily_capacity is not None:
            return float(self.daily_capacity)
        if self.capacity_share is not None:
            if daily_leads is None or daily_leads <= 0:
                raise PolicyError(
                    f"channels.{self.name}.capacity_share needs a daily lead volume: set "
                    "expected_daily_leads in the policy or pass leads to size it from"
                )
            return float(max(1, math.ceil(self.capacity_share * daily_leads)))
        return math.inf


def check_probabilities(probabilities: Any) -> np.ndarray:
    """The probabilities as a flat float array; ValueError when one is missing or outside
    [0, 1]."""
    p = np.asarray(probabilities, dtype=float).ravel()
    if np.isnan(p).any():
        raise ValueError("probability: contains missing values (NaN)")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probability: values must lie in [0, 1]")
    return p


@dataclass(frozen=True)
class RoutingPolicy:
    """A validated routing policy. Build it with :func:`load_policy` or :func:`policy_from_dict`."""

    version: str
    channels: dict[str, ChannelSpec]
    tier_channel: dict[str, str]
    cutoffs: dict[str, float]
    cutoff_mode: str = "fixed"
    control_share: float = 0.05
    control_salt: str = "leadscore-routing-control"
    # persons (same salted draw as the control group, the next slice of it) whose leads get a
    # channel drawn at random: the randomised outcomes the channel effects are learned from
    exploration_share: float = 0.10
    probability_reference: str = "ai_bot"
    historical_followup: dict[str, str] = field(default_factory=lambda: dict(K12_FUNNEL_CHANNEL))
    capacity_day_timezone: str = "UTC"
    expected_daily_leads: float | None = None
    optimization: dict[str, Any] = field(default_factory=dict)

    # ---- routing -----------------------------------------------------------------------------
    def assign(self, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tier and channel per probability (vectorised): A if p ≥ cut-off A, else B if p ≥ B, …

        Cut-offs are ordered (A ≥ B ≥ C), so a higher probability never gets a lower tier.
        """
        p = check_probabilities(probabilities)
        c = self.cutoffs
        tiers = np.select([p >= c["A"], p >= c["B"], p >= c["C"]], ["A", "B", "C"], default="D")
        lookup = np.array([self.tier_channel[t] for t in TIERS], dtype=object)
        channels = lookup[np.searchsorted(np.array(TIERS), tiers)]
        return tiers.astype(object), channels

    def tier_of_channel(self, channel: str) -> str:
        """The highest tier routed to ``channel`` (used to label rule-routed control leads)."""
        for tier in TIERS:
            if self.tier_channel[tier] == channel:
                return tier
        raise KeyError(f"no tier routes to channel {channel!r}")

    @property
    def channels_by_cost(self) -> tuple[str, ...]:
        """Channels from the most to the least expensive: the overflow order."""
        order = sorted(
            FOLLOWUP_CHANNELS,
            key=lambda name: (-self.channels[name].cost_per_lead, FOLLOWUP_CHANNELS.index(name)),
        )
        return tuple(order)

    def capacities(self, daily_leads: float | None = None) -> dict[str, float]:
        """Absolute daily capacity per channel (``inf`` when unlimited)."""
        volume = self.expected_daily_leads if self.expected_daily_leads else daily_leads
        return {name: spec.capacity(volume) for name, spec in self.channels.items()}

    def reference_conversion(self, funnel_steps: Any = None, n: int | None = None) -> np.ndarray:
        """Relative conversion of the follow-up the calibrated probability refers to, per lead."""
        if self.probability_reference != REFERENCE_FUNNEL_STEP:
            size = n if n is not None else len(funnel_steps)
            return np.full(size, self.channels[self.probability_reference].relative_conversion)
        if funnel_steps is None:
            raise ValueError("funnel_step: needed because probability_reference is funnel_step")
        steps = np.asarray(funnel_steps, dtype=object)
        unknown = sorted(set(steps) - set(FUNNEL_STEPS))
        if unknown:
            raise ValueError(f"funnel_step: unknown value(s) {unknown[:5]}; known: {FUNNEL_STEPS}")
        rel = {s: self.channels[c].relative_conversion for s, c in self.historical_followup.items()}
        return np.array([rel[s] for s in steps], dtype=float)

    # ---- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The policy as a YAML-ready mapping (the file format of :func:`load_policy`)."""
        channels: dict[str, Any] = {}
        for name in FOLLOWUP_CHANNELS:
            spec = self.channels[name]
            entry: dict[str, Any] = {
                "cost_per_lead": spec.cost_per_lead,
                "relative_conversion": spec.relative_conversion,
            }
            if spec.capacity_share is not None:
                entry["capacity_share"] = spec.capacity_share
            else:
                entry["daily_capacity"] = (
                    None if spec.daily_capacity is None else _plain_number(spec.daily_capacity)
                )
            channels[name] = entry
        out: dict[str, Any] = {
            "version": self.version,
            "channels": channels,
            "tiers": dict(self.tier_channel),
            "cutoffs": {"mode": self.cutoff_mode, **{t: self.cutoffs[t] for t in CUTOFF_TIERS}},
            "control_share": self.control_share,
            "control_salt": self.control_salt,
            "exploration_share": self.exploration_share,
            "probability_reference": self.probability_reference,
            "historical_followup": dict(self.historical_followup),
            "capacity_day_timezone": self.capacity_day_timezone,
            "expected_daily_leads": self.expected_daily_leads,
        }
        if self.optimization:
            out["optimization"] = self.optimization
        return out

    def with_cutoffs(
        self, cutoffs: Mapping[str, float], version: str, optimization: dict[str, Any]
    ) -> RoutingPolicy:
        """A copy with optimised cut-offs, a new version and the optimisation record."""
        values = {t: float(cutoffs[t]) for t in CUTOFF_TIERS}
        _check_cutoffs(values)
        return replace(
            self, cutoffs=values, cutoff_mode="optimized", version=version,
            optimization=optimization,
        )

    def with_absolute_capacities(self, daily_leads: float | None) -> RoutingPolicy:
        """A copy whose share-based capacities are resolved to leads/day (what serving needs)."""
        capacities = self.capacities(daily_leads)
        channels = {
            name: replace(
                spec,
                daily_capacity=None if math.isinf(capacities[name]) else capacities[name],
                capacity_share=None,
            )
            for name, spec in self.channels.items()
        }
        return replace(self, channels=channels)


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def bump_version(version: str) -> str:
    """``2026.11-1`` → ``2026.11-2``; a version without a ``-N`` suffix gets ``-1``."""
    match = re.fullmatch(r"(.*-)(\d+)", version)
    if match:
        return f"{match.group(1)}{int(match.group(2)) + 1}"
    return f"{version}-1"


# ---- validation ------------------------------------------------------------------------------
def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where}: expected a number, got {value!r}")
    if math.isnan(float(value)):
        raise PolicyError(f"{where}: must not be NaN")
    return float(value)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise PolicyError(f"{where}{key}: missing required key")
    return mapping[key]


def _check_cutoffs(values: Mapping[str, float]) -> None:
    for tier in CUTOFF_TIERS:
        if not 0.0 <= values[tier] <= 1.0:
            raise PolicyError(f"cutoffs.{tier}: {values[tier]} lies outside [0, 1]")
    if not values["A"] >= values["B"] >= values["C"]:
        raise PolicyError(
            "cutoffs: out of order, A ≥ B ≥ C required "
            f"(got A={values['A']}, B={values['B']}, C={values['C']})"
        )


def _parse_channel(name: str, raw: Any) -> ChannelSpec:
    where = f"channels.{name}"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping of {sorted(_CHANNEL_KEYS)}")
    unknown = sorted(set(raw) - _CHANNEL_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; known: {sorted(_CHANNEL_KEYS)}")
    cost = _number(_require(raw, "cost_per_lead", f"{where}."), f"{where}.cost_per_lead")
    if cost < 0:
        raise PolicyError(f"{where}.cost_per_lead: must not be negative (got {cost})")
    rel = _number(
        _require(raw, "relative_conversion", f"{where}."), f"{where}.relative_conversion"
    )
    if rel <= 0:
        raise PolicyError(f"{where}.relative_conversion: must be positive (got {rel})")
    if "daily_capacity" in raw and "capacity_share" in raw:
        raise PolicyError(f"{where}: give daily_capacity or capacity_share, not both")
    capacity = share = None
    if raw.get("daily_capacity") is not None:
        capacity = _number(raw["daily_capacity"], f"{where}.daily_capacity")
        if capacity <= 0:
            raise PolicyError(
                f"{where}.daily_capacity: must be > 0 leads/day (got {capacity}); "
                "use null for unlimited"
            )
    elif "capacity_share" in raw:
        share = _number(raw["capacity_share"], f"{where}.capacity_share")
        if not 0.0 < share <= 1.0:
            raise PolicyError(f"{where}.capacity_share: must lie in (0, 1] (got {share})")
    elif "daily_capacity" not in raw:
        raise PolicyError(f"{where}.daily_capacity: missing required key (null = unlimited)")
    return ChannelSpec(name, cost, rel, capacity, share)


def policy_from_dict(raw: Any, source: str = "policy") -> RoutingPolicy:
    """Validate a policy mapping (as read from YAML); errors name the offending field."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    version = _require(raw, "version", "")
    if not isinstance(version, str | int | float) or not str(version).strip():
        raise PolicyError("version: must be a non-empty string such as '2026.11-1'")

    raw_channels = _require(raw, "channels", "")
    if not isinstance(raw_channels, Mapping):
        raise PolicyError("channels: expected a mapping channel → settings")
    unknown = sorted(set(raw_channels) - set(FOLLOWUP_CHANNELS))
    if unknown:
        raise PolicyError(f"channels: unknown channel(s) {unknown}; known: {FOLLOWUP_CHANNELS}")
    missing = [c for c in FOLLOWUP_CHANNELS if c not in raw_channels]
    if missing:
        raise PolicyError(f"channels: missing channel(s) {missing}")
    channels = {name: _parse_channel(name, raw_channels[name]) for name in FOLLOWUP_CHANNELS}

    tiers = _require(raw, "tiers", "")
    if not isinstance(tiers, Mapping):
        raise PolicyError("tiers: expected a mapping tier → channel, e.g. {A: top_sales, …}")
    unknown_tiers = sorted(set(map(str, tiers)) - set(TIERS))
    if unknown_tiers:
        raise PolicyError(f"tiers: unknown tier(s) {unknown_tiers}; known: {TIERS}")
    for tier in TIERS:
        channel = _require(tiers, tier, "tiers.")
        if channel not in FOLLOWUP_CHANNELS:
            raise PolicyError(
                f"tiers.{tier}: unknown channel {channel!r}; known: {FOLLOWUP_CHANNELS}"
            )

    raw_cutoffs = _require(raw, "cutoffs", "")
    if not isinstance(raw_cutoffs, Mapping):
        raise PolicyError("cutoffs: expected {mode: fixed|optimized, A: …, B: …, C: …}")
    mode = raw_cutoffs.get("mode", "fixed")
    if mode not in CUTOFF_MODES:
        raise PolicyError(f"cutoffs.mode: {mode!r} is not one of {CUTOFF_MODES}")
    cutoffs = {
        t: _number(_require(raw_cutoffs, t, "cutoffs."), f"cutoffs.{t}") for t in CUTOFF_TIERS
    }
    _check_cutoffs(cutoffs)

    share = _number(raw.get("control_share", 0.05), "control_share")
    if not 0.0 <= share <= 1.0:
        raise PolicyError(f"control_share: {share} lies outside [0, 1]")
    salt = str(raw.get("control_salt", "leadscore-routing-control"))
    if not salt:
        raise PolicyError("control_salt: must not be empty")
    exploration = _number(raw.get("exploration_share", 0.10), "exploration_share")
    if not 0.0 <= exploration <= MAX_EXPLORATION_SHARE:
        raise PolicyError(
            f"exploration_share: {exploration} lies outside [0, {MAX_EXPLORATION_SHARE}]")
    if share + exploration > 1.0:
        raise PolicyError(f"exploration_share: control_share + exploration_share = "
                          f"{share + exploration:g} exceeds 1")

    reference = raw.get("probability_reference", "ai_bot")
    if reference not in (*FOLLOWUP_CHANNELS, REFERENCE_FUNNEL_STEP):
        raise PolicyError(
            f"probability_reference: {reference!r} is not a channel {FOLLOWUP_CHANNELS} "
            f"or '{REFERENCE_FUNNEL_STEP}'"
        )
    historical = raw.get("historical_followup") or dict(K12_FUNNEL_CHANNEL)
    if not isinstance(historical, Mapping):
        raise PolicyError("historical_followup: expected a mapping funnel_step → channel")
    bad_steps = sorted(set(historical) ^ set(FUNNEL_STEPS))
    if bad_steps:
        raise PolicyError(
            f"historical_followup: steps {bad_steps} unknown or missing; need {FUNNEL_STEPS}"
        )
    for step, channel in historical.items():
        if channel not in FOLLOWUP_CHANNELS:
            raise PolicyError(f"historical_followup.{step}: unknown channel {channel!r}")

    timezone = str(raw.get("capacity_day_timezone", "UTC"))
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PolicyError(f"capacity_day_timezone: unknown time zone {timezone!r}") from None

    expected = raw.get("expected_daily_leads")
    if expected is not None:
        expected = _number(expected, "expected_daily_leads")
        if expected <= 0:
            raise PolicyError("expected_daily_leads: must be > 0 (or null)")
    optimization = raw.get("optimization") or {}
    if not isinstance(optimization, Mapping):
        raise PolicyError("optimization: expected a mapping (written by `route optimize`)")

    return RoutingPolicy(
        version=str(version),
        channels=channels,
        tier_channel={t: str(tiers[t]) for t in TIERS},
        cutoffs=cutoffs,
        cutoff_mode=str(mode),
        control_share=share,
        control_salt=salt,
        exploration_share=exploration,
        probability_reference=str(reference),
        historical_followup={s: str(historical[s]) for s in FUNNEL_STEPS},
        capacity_day_timezone=timezone,
        expected_daily_leads=expected,
        optimization=dict(optimization),
    )


def default_policy_path() -> Path:
    """The packaged default policy file."""
    return Path(str(resources.files("leadscore") / "defaults" / "routing_policy.yaml"))


def load_policy(path: Path | str | None = None) -> RoutingPolicy:
    """Read and validate a policy YAML file (the packaged default when ``path`` is None)."""
    path = default_policy_path() if path is None else Path(path)
    if not path.exists():
        raise PolicyError(f"routing policy file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolicyError(f"routing policy file {path} is not valid YAML: {exc}") from None
    try:
        return policy_from_dict(raw, source=str(path))
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


OPTIMISED_POLICY_FILE = "routing_policy.yaml"  # under the work folder's reports/
BASE_DIGEST_KEY = "base_policy_sha256"  # in ``optimization``: the file the cut-offs came from


@dataclass(frozen=True)
class ActivePolicy:
    """The routing policy in force, where it came from, and why the others were passed over."""

    policy: RoutingPolicy
    path: Path
    source: str  # "explicit", "optimised", "configured" or "packaged default"
    note: str | None = None


def file_digest(path: Path | str) -> str:
    """SHA-256 of a policy file's bytes: ties an optimised policy to the file it came from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def base_policy_path(settings: Settings) -> Path:
    """The policy the user configures (``routing_policy`` setting), else the packaged default:
    the costs and capacities that ``route optimize`` starts from."""
    return Path(settings.routing_policy) if settings.routing_policy else default_policy_path()


def optimised_policy_path(settings: Settings) -> Path:
    """Where ``route optimize`` writes the policy with optimised cut-offs."""
    return settings.reports_dir / OPTIMISED_POLICY_FILE


def resolve_active_policy(settings: Settings, explicit: Path | str | None = None) -> ActivePolicy:
    """The one answer to "which routing policy is in force" for serving, simulation and reports.

    Order: an ``explicit`` file; else the optimised policy in ``reports/`` when it was derived
    from today's base policy (its recorded ``optimization.base_policy_sha256`` equals the base
    file's digest); else the base policy (:func:`base_policy_path`). An optimised file derived
    from another base (the user changed costs or capacities, or points the setting elsewhere)
    is stale: it is passed over and ``note`` says so. Raises :class:`PolicyError`.
    """
    if explicit is not None:
        return ActivePolicy(load_policy(explicit), Path(explicit), "explicit")
    base = base_policy_path(settings)
    base_source = "configured" if settings.routing_policy else "packaged default"
    optimised = optimised_policy_path(settings)
    note = None
    if optimised.exists():
        candidate = load_policy(optimised)
        recorded = candidate.optimization.get(BASE_DIGEST_KEY)
        if recorded is None and not settings.routing_policy:
            return ActivePolicy(candidate, optimised, "optimised")
        if base.exists() and recorded == file_digest(base):
            return ActivePolicy(candidate, optimised, "optimised")
        note = (f"optimised policy {optimised} passed over: it was derived from another base "
                f"policy than {base}; run `leadscore route optimize` again")
    return ActivePolicy(load_policy(base), base, base_source, note)


def save_policy(policy: RoutingPolicy, path: Path | str, header: str = "") -> Path:
    """Write ``policy`` as YAML (with an optional comment header); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    body = yaml.safe_dump(policy.to_dict(), sort_keys=False, allow_unicode=True)
    path.write_text(comment + body, encoding="utf-8")
    return path


class CapacityLedger:
    """Serving-time daily capacity: a full channel sends the lead to the next cheaper one.

    One in-process counter per (day, channel); the same first-come-first-served rule as the
    simulation (:func:`routing.simulate.apply_daily_capacity`). Days are calendar days in the
    policy's ``capacity_day_timezone``. Returns the cheapest channel when every channel is full
    (a capacity violation, counted in ``violations``).
    """

    def __init__(self, policy: RoutingPolicy, daily_leads: float | None = None) -> None:
        self.order = policy.channels_by_cost
        self.capacity = policy.capacities(daily_leads)
        self.timezone = policy.capacity_day_timezone
        self.counts: dict[tuple[str, str], int] = {}
        self.violations = 0

    def route(self, channel: str, day: str) -> str:
        """The channel that takes a lead assigned to ``channel`` on ``day`` (ISO date)."""
        if channel not in self.order:
            raise ValueError(f"channel: unknown {channel!r}; known: {FOLLOWUP_CHANNELS}")
        for candidate in self.order[self.order.index(channel):]:
            used = self.counts.get((day, candidate), 0)
            if used < self.capacity[candidate]:
                self.counts[(day, candidate)] = used + 1
                return candidate
        last = self.order[-1]
        self.counts[(day, last)] = self.counts.get((day, last), 0) + 1
        self.violations += 1
        return last
