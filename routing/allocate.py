"""Allocation under capacity: each day's leads get the follow-up channel that maximises the
expected incremental conversions minus λ × cost, within every team's daily capacity.

The day's problem is a linear program (SciPy's HiGHS, ``scipy.optimize.linprog``)::

    maximise   Σ_i Σ_c x[i, c] · (effect[i, c] − λ · cost[c])
    subject to Σ_c x[i, c] = 1                    every lead gets one channel
               Σ_i x[i, c] ≤ capacity[c]           every channel with a finite capacity
               0 ≤ x[i, c] ≤ 1,  x[i, c] = 1 for a lead forced to c (control, exploration)

``effect[i, c]`` is what channel ``c`` adds to lead ``i``'s conversion over a reference channel
(the reference's column is 0), e.g. from ``training.uplift``; λ converts money into conversions
(1 / the value of a conversion). The constraint matrix is that of a transportation problem, so
with whole capacities the optimal vertex is whole: every lead gets exactly one channel (checked;
should a solver ever return a fractional point, the same program is solved with integrality by
``scipy.optimize.milp``).

The duals of the capacity constraints (HiGHS's marginals) are the **shadow prices**: what one
more slot of a channel would add to the day's objective. A lead that arrives alone (the
one-at-a-time service) takes ``argmax_c effect[c] − λ · cost[c] − shadow[c]`` among the channels
with room left; with the shadow prices of the day's own program that rule reproduces the
program's assignment (complementary slackness; ties aside), and with those of recent days
(:func:`shadow_prices_over_days`) single decisions follow the same solution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

_INTEGRAL_TOLERANCE = 1e-6


class AllocationError(ValueError):
    """The allocation problem is malformed or infeasible; the message names the field."""


@dataclass(frozen=True)
class Allocation:
    """One day's optimal assignment.

    ``channel_index[i]`` is lead ``i``'s channel (a position in ``channels``);
    ``shadow_prices[c]`` is the objective gained by one more slot of ``c`` (0 for a channel
    with room left or without a limit), in the objective's unit (incremental conversions).
    """

    channels: tuple[str, ...]
    channel_index: np.ndarray
    objective: float
    incremental_conversions: float
    total_cost: float
    shadow_prices: dict[str, float]
    counts: dict[str, int]
    capacities: dict[str, float]
    solver: str = "highs"
    notes: list[str] = field(default_factory=list)

    @property
    def assigned(self) -> np.ndarray:
        """Channel name per lead."""
        return np.asarray(self.channels, dtype=object)[self.channel_index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "incremental_conversions": self.incremental_conversions,
            "total_cost": self.total_cost,
            "shadow_prices": dict(self.shadow_prices),
            "counts": dict(self.counts),
            "capacities": {k: (None if math.isinf(v) else v) for k, v in self.capacities.items()},
            "solver": self.solver,
        }


def _check_inputs(
    effects: Any, channels: Sequence[str], costs: Mapping[str, float],
    capacities: Mapping[str, float | None], cost_weight: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = tuple(channels)
    if not names:
        raise AllocationError("channels: at least one channel is needed")
    if len(set(names)) != len(names):
        raise AllocationError(f"channels: duplicate names in {list(names)}")
    matrix = np.asarray(effects, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise AllocationError(
            f"effects: expected a (leads × {len(names)}) matrix, one column per channel "
            f"{list(names)}, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise AllocationError("effects: contains missing or infinite values")
    if not math.isfinite(cost_weight) or cost_weight < 0:
        raise AllocationError(f"cost_weight (λ): must be a finite number ≥ 0, got {cost_weight}")
    unknown = sorted(set(costs) - set(names)) + sorted(set(capacities) - set(names))
    if unknown:
        raise AllocationError(f"costs/capacities: unknown channel(s) {unknown}; "
                              f"channels are {list(names)}")
    cost = np.zeros(len(names))
    for j, name in enumerate(names):
        value = float(costs.get(name, 0.0))
        if not math.isfinite(value) or value < 0:
            raise AllocationError(f"costs.{name}: must be a finite amount ≥ 0, got {value}")
        cost[j] = value
    cap = np.full(len(names), np.inf)
    for j, name in enumerate(names):
        value = capacities.get(name)
        if value is None:
            continue
        value = float(value)
        if math.isnan(value) or value < 0:
            raise AllocationError(f"capacities.{name}: must be ≥ 0 leads/day or null "
                                  f"(unlimited), got {value}")
        cap[j] = math.floor(value) if math.isfinite(value) else math.inf
    return matrix, cost, cap


def _forced_index(forced: Sequence[str | None] | None, n: int, names: tuple[str, ...]
                  ) -> np.ndarray:
    """Position of each lead's forced channel, -1 where free."""
    if forced is None:
        return np.full(n, -1)
    values = list(forced)
    if len(values) != n:
        raise AllocationError(f"forced: expected one entry per lead ({n}), got {len(values)}")
    position = {name: j for j, name in enumerate(names)}
    out = np.full(n, -1)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if value not in position:
            raise AllocationError(f"forced: lead {i} is forced to unknown channel {value!r}; "
                                  f"channels are {list(names)}")
        out[i] = position[value]
    return out


def allocate(
    effects: Any,
    channels: Sequence[str],
    costs: Mapping[str, float],
    capacities: Mapping[str, float | None],
    cost_weight: float = 0.0,
    forced: Sequence[str | None] | None = None,
) -> Allocation:
    """Solve one day's program (module docstring); return the assignment and shadow prices.

    ``effects``: leads × channels incremental conversions; ``costs``: money per lead handled;
    ``capacities``: leads/day (None or absent = unlimited; fractions are floored);
    ``cost_weight``: λ, conversions per unit of money; ``forced``: per lead a channel it must
    get (control or exploration leads) or None. Forced leads use up capacity first.

    Raises :class:`AllocationError` naming the field when the input is malformed, when a
    channel's capacity cannot hold the leads forced to it, or when the capacities together
    cannot hold the day's leads.
    """
    names = tuple(channels)
    matrix, cost, cap = _check_inputs(effects, names, costs, capacities, cost_weight)
    n, k = matrix.shape
    forced_at = _forced_index(forced, n, names)
    forced_counts = np.bincount(forced_at[forced_at >= 0], minlength=k)
    for j, name in enumerate(names):
        if forced_counts[j] > cap[j]:
            raise AllocationError(
                f"capacities.{name}: {cap[j]:g} leads/day cannot hold the {forced_counts[j]} "
                f"lead(s) forced to {name} (control or exploration) on this day")
    free = np.flatnonzero(forced_at < 0)
    residual = cap - forced_counts
    if np.isfinite(residual).all() and residual.sum() < free.size:
        raise AllocationError(
            f"capacities: together {int(cap.sum())} leads/day, fewer than the day's {n} leads "
            f"({int(forced_counts.sum())} forced); give one channel no limit (null) or more "
            "capacity")
    net = matrix - cost_weight * cost
    index = forced_at.copy()
    shadow = np.zeros(k)
    solver = "none (all leads forced)" if free.size == 0 else "highs"
    if free.size:
        chosen, shadow, solver = _solve(net[free], residual)
        index[free] = chosen
    counts = np.bincount(index, minlength=k)
    rows = np.arange(n)
    gained = float(matrix[rows, index].sum())
    spent = float(cost[index].sum())
    return Allocation(
        channels=names, channel_index=index,
        objective=float(net[rows, index].sum()), incremental_conversions=gained,
        total_cost=spent,
        shadow_prices={name: float(shadow[j]) for j, name in enumerate(names)},
        counts={name: int(counts[j]) for j, name in enumerate(names)},
        capacities={name: float(cap[j]) for j, name in enumerate(names)},
        solver=solver,
    )


def _solve(net: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The free leads' program: (channel per lead, shadow price per channel, solver used)."""
    n, k = net.shape
    limited = np.flatnonzero(np.isfinite(capacity))
    # x is row-major (lead, channel): x[i * k + c]
    one_each = sparse.kron(sparse.eye(n, format="csr"), np.ones((1, k)), format="csr")
    a_ub = sparse.kron(np.ones((1, n)), sparse.eye(k, format="csr")[limited], format="csr") \
        if limited.size else None
    b_ub = capacity[limited] if limited.size else None
    result = linprog(
        -net.ravel(), A_ub=a_ub, b_ub=b_ub, A_eq=one_each, b_eq=np.ones(n), bounds=(0, 1),
        method="highs",
    )
    if result.status != 0:
        raise AllocationError(f"capacities: the day's program has no solution ({result.message})")
    x = result.x.reshape(n, k)
    shadow = np.zeros(k)
    if limited.size:
        # marginals of the ≤ rows of a minimisation are ≤ 0: one more slot lowers -objective
        shadow[limited] = np.maximum(-np.asarray(result.ineqlin.marginals, dtype=float), 0.0)
    if np.abs(x - np.round(x)).max() <= _INTEGRAL_TOLERANCE:
        return x.argmax(axis=1), shadow, "highs"
    # a fractional vertex (not expected for this matrix): the integral program instead
    constraints = [LinearConstraint(one_each, 1, 1)]
    if limited.size:
        constraints.append(LinearConstraint(a_ub, -np.inf, b_ub))
    exact = milp(-net.ravel(), constraints=constraints, integrality=np.ones(n * k),
                 bounds=Bounds(0, 1))
    if exact.status != 0:
        raise AllocationError(f"capacities: the day's program has no whole solution "
                              f"({exact.message})")
    return exact.x.reshape(n, k).argmax(axis=1), shadow, "highs (milp)"


def allocate_days(
    effects: Any,
    days: Any,
    channels: Sequence[str],
    costs: Mapping[str, float],
    capacities: Mapping[str, float | None],
    cost_weight: float = 0.0,
    forced: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, dict[Any, Allocation]]:
    """One program per day (capacities are per day): (channel name per lead, day → allocation)."""
    matrix = np.asarray(effects, dtype=float)
    day_values = np.asarray(days, dtype=object)
    if day_values.shape[0] != matrix.shape[0]:
        raise AllocationError(f"days: expected one day per lead ({matrix.shape[0]}), "
                              f"got {day_values.shape[0]}")
    forced_values = None if forced is None else np.asarray(list(forced), dtype=object)
    out = np.empty(matrix.shape[0], dtype=object)
    by_day: dict[Any, Allocation] = {}
    for day in sorted(set(day_values.tolist())):
        rows = np.flatnonzero(day_values == day)
        result = allocate(matrix[rows], channels, costs, capacities, cost_weight,
                          None if forced_values is None else forced_values[rows].tolist())
        out[rows] = result.assigned
        by_day[day] = result
    return out, by_day


def shadow_prices_over_days(allocations: Mapping[Any, Allocation]) -> dict[str, float]:
    """Mean shadow price per channel over days' allocations (for one-at-a-time routing)."""
    if not allocations:
        raise AllocationError("allocations: no day to take shadow prices from")
    names = next(iter(allocations.values())).channels
    return {name: float(np.mean([a.shadow_prices[name] for a in allocations.values()]))
            for name in names}


def choose_one(
    effects: Any,
    channels: Sequence[str],
    costs: Mapping[str, float],
    shadow_prices: Mapping[str, float],
    cost_weight: float = 0.0,
    available: Sequence[bool] | None = None,
) -> str:
    """The channel for one lead: ``argmax_c effect[c] − λ · cost[c] − shadow[c]`` among the
    channels with room left (``available``; all when None)."""
    names = tuple(channels)
    row = np.asarray(effects, dtype=float).ravel()
    if row.size != len(names) or not np.isfinite(row).all():
        raise AllocationError(f"effects: expected {len(names)} finite values (one per channel "
                              f"{list(names)}), got {row.tolist()}")
    score = np.array([row[j] - cost_weight * float(costs.get(name, 0.0))
                      - float(shadow_prices.get(name, 0.0)) for j, name in enumerate(names)])
    if available is not None:
        mask = np.asarray(list(available), dtype=bool)
        if mask.size != len(names):
            raise AllocationError(f"available: expected {len(names)} flags, got {mask.size}")
        if not mask.any():
            raise AllocationError("available: no channel has room left")
        score = np.where(mask, score, -np.inf)
    return names[int(np.argmax(score))]


def policy_channels(policy: Any, daily_leads: float | None = None
                    ) -> tuple[tuple[str, ...], dict[str, float], dict[str, float | None]]:
    """(channels, cost per lead, daily capacity or None) of a ``routing.policy.RoutingPolicy``,
    share-based capacities resolved against ``daily_leads``: the inputs of :func:`allocate`."""
    names = tuple(policy.channels)
    capacities = policy.capacities(daily_leads)
    return (names, {n: float(policy.channels[n].cost_per_lead) for n in names},
            {n: None if math.isinf(capacities[n]) else float(capacities[n]) for n in names})
