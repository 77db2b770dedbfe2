"""LightGBM scores and SHAP contributions from precomputed per-tree tables (small trees).

``booster.predict(x, pred_contrib=True)`` runs TreeSHAP per row and tree: ~0.3-0.5 ms per row
for the champion (315 trees of 10 leaves), i.e. most of a 1,000-lead batch. For a tree with ``m``
internal nodes, a row's leaf and its whole SHAP vector depend only on which way the row goes at
each of the ``m`` nodes: an ``m``-bit *decision code*. ``TreeTables`` enumerates the ``2**m``
codes of every tree once, when the model is loaded, and stores per code the leaf value reached
and the tree's contribution to each feature it splits on. Scoring a batch is then one vectorised
pass: the decisions of all nodes, the codes, two table gathers and one sum per feature.

Contributions are the exact path-dependent TreeSHAP values LightGBM computes (same cover
fractions, ``internal_count``/``leaf_count``): for a leaf of value ``v`` whose path splits on the
features ``U`` (``|U| = d``), with ``o_j`` = the row follows every split on ``j`` along the path
and ``z_j`` = the product of the cover fractions of those splits, feature ``i`` in ``U`` gets
``v (o_i - z_i) ∫₀¹ Π_{j∈U, j≠i} (t o_j + (1 - t) z_j) dt`` (the Shapley weights written as a Beta
integral), which a Gauss-Legendre rule of ``d // 2 + 1`` points integrates exactly. Only the
float rounding differs from LightGBM's recursion (tests compare them to 1e-9).

Node decisions follow LightGBM's ``Tree::NumericalDecision`` and ``CategoricalDecision``:
numeric ``value <= threshold`` goes left; NaN counts as 0 unless the node's missing type is NaN,
and a missing value (NaN, or ~0 for missing type Zero) goes the default way; a categorical value
goes left when its integer code is in the node's category set, NaN and negatives go right.
Rather than node by node, the decisions are read from lookup tables: each row's value of a
feature becomes a small integer code (its rank among the feature's thresholds, NaN a sentinel;
or its category), and per (tree, feature) a table maps that code to the tree's decision bits of
the feature's nodes (``_build_lookups``; ``_node_codes`` is the node-by-node path).

Fast twin of LightGBM's ``predict`` + ``predict(pred_contrib=True)``, kept for the
``/predict_batch`` of 1,000 in ≤ 150 ms: LightGBM took 58 ms for 1,000 rows against 10.5 ms here
(5.5×; one row costs the same either way, and one path keeps single and batch answers equal).
Table and date: ``docs/scaling.md``, "Library paths and the fast twins we keep"
(``benchmarks/bench_library_paths.py``). Equivalence: ``tests/unit/test_treeshap.py``.

``TreeTables.build`` returns None for models it does not cover (multiclass, linear trees, a tree
with more than ``MAX_TREE_NODES`` splits, tables over ``MAX_TABLE_ENTRIES``): the caller then
uses LightGBM's own ``predict``.
"""

from __future__ import annotations

import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

PARALLEL_ROWS = 256  # batches from this size are split over two threads
MAX_TREE_NODES = 12  # 4,096 codes per tree
MAX_TABLE_ENTRIES = 16_000_000  # ~128 MB of float64 over all trees
ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold
MAX_CACHED_BINS = 4_000_000  # ``TreeTables._bins`` kept for a few batch sizes (~32 MB)


@dataclass(frozen=True)
class _Node:
    feature: int
    threshold: float
    categories: frozenset[int] | None
    default_left: bool
    missing_type: str
    count: float


@dataclass(frozen=True)
class _Leaf:
    value: float
    count: float
    path: tuple[tuple[int, bool], ...]  # (node position, went left) from the root


def _tree(structure: dict[str, Any]) -> tuple[list[_Node], list[_Leaf]]:
    """Internal nodes (in visiting order) and leaves with their paths, from ``dump_model``."""
    nodes: list[_Node] = []
    leaves: list[_Leaf] = []
    stack: list[tuple[dict[str, Any], tuple[tuple[int, bool], ...]]] = [(structure, ())]
    while stack:
        node, path = stack.pop()
        if "leaf_index" in node or "split_feature" not in node:
            leaves.append(_Leaf(float(node.get("leaf_value", 0.0)),
                                float(node.get("leaf_count", 0)), path))
            continue
        categorical = node["decision_type"] == "=="
        nodes.append(_Node(
            feature=int(node["split_feature"]),
            threshold=math.nan if categorical else float(node["threshold"]),
            categories=frozenset(int(c) for c in str(node["threshold"]).split("||"))
            if categorical else None,
            default_left=bool(node["default_left"]),
            missing_type=str(node["missing_type"]),
            count=float(node["internal_count"]),
        ))
        k = len(nodes) - 1
        stack.append((node["right_child"], (*path, (k, False))))
        stack.append((node["left_child"], (*path, (k, True))))
    return nodes, leaves


def _count(child: dict[str, Any]) -> float:
    return float(child["leaf_count"] if "leaf_index" in child else child["internal_count"])


def _child_counts(structure: dict[str, Any]) -> list[tuple[float, float]]:
    """(left count, right count) per internal node, in ``_tree``'s visiting order."""
    out: list[tuple[float, float]] = []
    stack = [structure]
    while stack:
        node = stack.pop()
        if "leaf_index" in node or "split_feature" not in node:
            continue
        out.append((_count(node["left_child"]), _count(node["right_child"])))
        stack.append(node["right_child"])
        stack.append(node["left_child"])
    return out


@functools.lru_cache(maxsize=64)
def _gauss_legendre(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``points``-point Gauss-Legendre rule on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return (nodes + 1.0) / 2.0, weights / 2.0


def _add_leaf(out: np.ndarray, leaf: _Leaf, nodes: list[_Node],
              counts: list[tuple[float, float]], bits: np.ndarray) -> None:
    """Add one leaf's contribution to every feature, per decision code, to ``out``
    (codes × features). Computed once per pattern of the decisions on the leaf's own path
    (``2**depth`` of them), then spread over the tree's codes."""
    if not leaf.path or leaf.value == 0.0:
        return
    depth = len(leaf.path)
    patterns = np.arange(2 ** depth)
    path_bits = ((patterns[:, None] >> np.arange(depth)) & 1).astype(bool)  # patterns × depth
    features: list[int] = []
    follows: list[np.ndarray] = []
    fractions: list[float] = []
    for step, (k, left) in enumerate(leaf.path):
        node = nodes[k]
        parent = node.count
        fraction = (counts[k][0] if left else counts[k][1]) / parent if parent else 0.0
        agrees = path_bits[:, step] if left else ~path_bits[:, step]
        if node.feature in features:  # repeated feature: merge as LightGBM's unwinding does
            j = features.index(node.feature)
            follows[j] = follows[j] & agrees
            fractions[j] *= fraction
        else:
            features.append(node.feature)
            follows.append(agrees)
            fractions.append(fraction)
    d = len(features)
    o = np.stack(follows, axis=1).astype(float)  # patterns × d
    z = np.asarray(fractions)
    t, w = _gauss_legendre(d // 2 + 1)
    g = t[None, None, :] * o[:, :, None] + (1.0 - t[None, None, :]) * z[None, :, None]
    # product over j != i by prefix and suffix products (no division by a factor near 0)
    ones = np.ones((g.shape[0], 1, g.shape[2]))
    prefix = np.cumprod(np.concatenate([ones, g[:, :-1, :]], axis=1), axis=1)
    suffix = np.cumprod(np.concatenate([ones, g[:, :0:-1, :]], axis=1), axis=1)[:, ::-1, :]
    integral = (prefix * suffix) @ w  # patterns × d
    contribution = leaf.value * (o - z[None, :]) * integral
    steps = np.array([k for k, _ in leaf.path])
    pattern_of_code = bits[:, steps].astype(np.intp) @ (1 << np.arange(depth))
    per_code = contribution[pattern_of_code]
    for j, feature in enumerate(features):
        out[:, feature] += per_code[:, j]


class TreeTables:
    """Leaf values and SHAP contributions of every tree, tabulated by decision code."""

    def __init__(self, trees: list[tuple[list[_Node], list[_Leaf], list[tuple[float, float]]]],
                 n_features: int, sigmoid: float) -> None:
        self.n_features = n_features
        self.sigmoid = sigmoid
        width = max((len(nodes) for nodes, _, _ in trees), default=0)
        self.width = width
        n_trees = len(trees)
        # node arrays padded to ``width`` per tree (padding: feature 0, never left, bit unused)
        feature = np.zeros((n_trees, width), dtype=np.intp)
        threshold = np.full((n_trees, width), -np.inf)
        default_left = np.zeros((n_trees, width), dtype=bool)
        nan_missing = np.zeros((n_trees, width), dtype=bool)
        zero_missing = np.zeros((n_trees, width), dtype=bool)
        real = np.zeros((n_trees, width), dtype=bool)
        categorical: list[tuple[int, int, frozenset[int]]] = []
        slot_features: list[list[int]] = []
        leaf_offsets = np.zeros(n_trees, dtype=np.intp)
        leaf_tables: list[np.ndarray] = []
        contrib_tables: list[np.ndarray] = []
        offset = 0
        for t, (nodes, leaves, counts) in enumerate(trees):
            for k, node in enumerate(nodes):
                real[t, k] = True
                feature[t, k] = node.feature
                default_left[t, k] = node.default_left
                nan_missing[t, k] = node.missing_type == "NaN"
                zero_missing[t, k] = node.missing_type == "Zero"
                if node.categories is None:
                    threshold[t, k] = node.threshold
                else:
                    categorical.append((t, k, node.categories))
            m = len(nodes)
            codes = np.arange(2 ** m, dtype=np.int64)
            bits = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
            values = np.zeros(2 ** m)
            contrib = np.zeros((2 ** m, n_features))
            for leaf in leaves:
                reached = np.ones(2 ** m, dtype=bool)
                for k, left in leaf.path:
                    reached &= bits[:, k] if left else ~bits[:, k]
                values = np.where(reached, leaf.value, values)
                _add_leaf(contrib, leaf, nodes, counts, bits)
            used = sorted({node.feature for node in nodes})
            slot_features.append(used)
            leaf_offsets[t] = offset
            offset += 2 ** m
            leaf_tables.append(values)
            contrib_tables.append(contrib[:, used])
        self.feature = feature
        self.threshold = threshold
        self.default_left = default_left
        self.nan_missing = nan_missing
        self.zero_missing = zero_missing
        self.real = real
        self.any_nan_missing = bool(nan_missing.any())
        self.any_zero_missing = bool(zero_missing.any())
        self.pow2 = (1 << np.arange(width, dtype=np.int32)) if width else np.zeros(0, np.int32)
        self.offsets = leaf_offsets
        self.leaf_values = np.concatenate(leaf_tables) if leaf_tables else np.zeros(0)
        # categorical nodes: a lookup table of "goes left" per category code
        self.cat_pos = np.array([(t, k) for t, k, _ in categorical], dtype=np.intp).reshape(-1, 2)
        top = max((max(c) for _, _, c in categorical if c), default=0) + 2
        self.cat_lut = np.zeros((len(categorical), top), dtype=bool)  # last column: NaN/neg/big
        for i, (_, _, cats) in enumerate(categorical):
            self.cat_lut[i, sorted(cats)] = True
        self.cat_rows = np.arange(len(categorical), dtype=np.intp)
        # contributions: per tree a block of ``2**m`` codes × ``u_t`` used features, gathered
        # into slots ``u_max`` wide, then summed per feature through a 0/1 matrix
        u_max = max((len(u) for u in slot_features), default=0)
        self.u_max = u_max
        table = np.zeros((offset, u_max))
        start = 0
        to_feature = np.zeros((n_trees * u_max, n_features))
        for t, (used, block) in enumerate(zip(slot_features, contrib_tables, strict=True)):
            table[start:start + block.shape[0], :len(used)] = block
            for s, f in enumerate(used):
                to_feature[t * u_max + s, f] = 1.0
            start += block.shape[0]
        self.contrib_table = table
        self.to_feature = to_feature
        # the feature of each slot (padding: a spare index past the last feature)
        self.slot_feature = np.where(to_feature.any(axis=1), to_feature.argmax(axis=1),
                                     n_features)
        # where a NaN goes: the default way (missing type NaN, or Zero: NaN counts as 0.0,
        # which is missing there), else as 0.0 would
        self.nan_left = np.where(nan_missing | zero_missing, default_left, threshold >= 0.0)
        self._build_ranks()
        self._build_lookups(slot_features)

    @classmethod
    def build(cls, booster: Any) -> TreeTables | None:
        """Tables of ``booster`` (all its trees, as ``predict`` uses them), or None."""
        dump = booster.dump_model()
        objective = str(dump.get("objective", ""))
        if (dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output")
                or not objective.startswith("binary")):
            return None
        sigmoid = 1.0
        for part in objective.split()[1:]:
            if part.startswith("sigmoid:"):
                sigmoid = float(part.split(":", 1)[1])
        trees = []
        entries = 0
        for info in dump["tree_info"]:
            structure = info["tree_structure"]
            if "leaf_coeff" in structure or _has_linear(structure):
                return None
            nodes, leaves = _tree(structure)
            if len(nodes) > MAX_TREE_NODES:
                return None
            entries += 2 ** len(nodes) * max(1, len({n.feature for n in nodes}))
            if entries > MAX_TABLE_ENTRIES:
                return None
            trees.append((nodes, leaves, _child_counts(structure)))
        return cls(trees, int(dump["max_feature_idx"]) + 1, sigmoid)

    def _build_ranks(self) -> None:
        """Per feature, the sorted distinct thresholds of its numeric nodes, and per node the
        position of its threshold there: ``value <= threshold`` is then ``rank(value) <=
        position`` with ``rank`` = ``searchsorted(thresholds, value, "left")`` (NaN ranks past
        every threshold: never left by the comparison, as NaN compares False)."""
        numeric = self.real.copy()
        if len(self.cat_pos):
            numeric[self.cat_pos[:, 0], self.cat_pos[:, 1]] = False
        position = np.full(self.feature.shape, -1, dtype=np.int64)
        thresholds: list[np.ndarray] = []
        for f in range(self.n_features):
            nodes = numeric & (self.feature == f)
            levels = np.unique(self.threshold[nodes])
            thresholds.append(levels)
            position[nodes] = np.searchsorted(levels, self.threshold[nodes])
        longest = max((len(levels) for levels in thresholds), default=0)
        self.rank_dtype = np.int16 if longest < np.iinfo(np.int16).max else np.int32
        self.rank_thresholds = thresholds
        self.rank_position = position.astype(self.rank_dtype)  # -1: padding/categorical

    def _build_lookups(self, slot_features: list[list[int]]) -> None:
        """Per-feature value codes and per (tree, feature) lookup tables of decision bits.

        A row's value of feature ``f`` is first reduced to a small integer, its *value code*:
        for a numeric feature the rank ``searchsorted(thresholds + [inf], value, "left")``
        (``0 .. L``; NaN, which sorts after ``inf``, gets ``L + 1``), for a categorical feature
        its category code when ``0 <= value < top_f`` (``top_f``: one past the largest category
        any of its nodes lists), else ``top_f`` (NaN, negatives, unseen codes: right). Every
        node's decision is a function of the code of its feature, and so is the sum of
        ``2**k`` over the nodes ``k`` of one tree that split on that feature (they never share
        a bit): ``pair_lut`` holds that sum per (tree, feature) pair and value code, and a tree's
        decision code is the sum of its pairs' entries. Models with zero-as-missing nodes or a
        feature split both ways keep ``_node_codes`` (``self.lookup`` False)."""
        numeric = self.real.copy()
        if len(self.cat_pos):
            numeric[self.cat_pos[:, 0], self.cat_pos[:, 1]] = False
        cat_features = {int(f) for f in self.feature[self.cat_pos[:, 0], self.cat_pos[:, 1]]}
        num_features = {int(f) for f in self.feature[numeric]}
        self.lookup = not self.any_zero_missing and not (cat_features & num_features)
        if not self.lookup:
            return
        categories: dict[tuple[int, int], frozenset[int]] = {}
        for i, (t, k) in enumerate(self.cat_pos.tolist()):
            categories[(t, k)] = frozenset(np.flatnonzero(self.cat_lut[i]).tolist())
        top = {f: 0 for f in cat_features}
        for (t, k), cats in categories.items():
            f = int(self.feature[t, k])
            top[f] = max(top[f], max(cats, default=-1) + 1)
        size = np.ones(self.n_features, dtype=np.intp)
        for f in num_features:
            size[f] = len(self.rank_thresholds[f]) + 2
        for f, c in top.items():
            size[f] = c + 1
        self.value_levels = [np.append(levels, np.inf) for levels in self.rank_thresholds]
        self.numeric_features = sorted(num_features)
        self.cat_top = sorted(top.items())
        # trees by their number of features, most first: pair slot ``s`` covers a prefix
        n_trees = len(slot_features)
        order = sorted(range(n_trees), key=lambda t: -len(slot_features[t]))
        self.tree_order = np.array(order, dtype=np.intp)
        self.tree_unorder = np.argsort(self.tree_order).astype(np.intp)
        self.sorted_offsets = self.offsets[self.tree_order]
        luts: list[np.ndarray] = []
        start = 0
        slots: list[tuple[np.ndarray, np.ndarray, int]] = []
        for s in range(max((len(u) for u in slot_features), default=0)):
            features: list[int] = []
            bases: list[int] = []
            for t in order:
                if len(slot_features[t]) <= s:
                    break
                f = slot_features[t][s]
                codes = np.arange(size[f])
                bits = np.zeros(size[f], dtype=np.intp)
                for k in np.flatnonzero(self.real[t] & (self.feature[t] == f)).tolist():
                    if (t, k) in categories:
                        left = np.isin(codes, list(categories[(t, k)]))
                    else:
                        left = codes <= self.rank_position[t, k]
                        left[-1] = self.nan_left[t, k]  # NaN
                    bits += left.astype(np.intp) << k
                features.append(f)
                bases.append(start)
                luts.append(bits)
                start += len(bits)
            slots.append((np.array(features, dtype=np.intp), np.array(bases, dtype=np.intp),
                          len(features)))
        self.pair_slots = slots
        self.pair_lut = np.concatenate(luts) if luts else np.zeros(0, dtype=np.intp)

    def value_codes(self, x: np.ndarray) -> np.ndarray:
        """Value code (see ``_build_lookups``) of every feature and row (features × rows)."""
        out = np.zeros((self.n_features, len(x)), dtype=np.intp)
        for f in self.numeric_features:
            out[f] = np.searchsorted(self.value_levels[f], x[:, f], side="left")
        for f, top in self.cat_top:
            raw = x[:, f]
            out[f] = np.where((raw >= 0) & (raw < top), raw, top)  # NaN compares False: top
        return out

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Decision code of every row in every tree (rows × trees)."""
        return self._tree_index(x).T - self.offsets

    def _tree_index(self, x: np.ndarray) -> np.ndarray:
        """Row of every row's code in the tables, per tree (trees × rows, C order).

        Through the lookup tables of ``_build_lookups`` where the model allows them: per
        feature one value code per row, then per (tree, feature) pair one gather from
        ``pair_lut``, summed per tree (integers: exact, in any order). Else ``_node_codes``.
        """
        if not self.lookup:
            return np.ascontiguousarray((self._node_codes(x) + self.offsets).T)
        values = self.value_codes(x)
        code = np.empty((len(self.tree_order), len(x)), dtype=np.intp)  # trees by ``order``
        code[:] = self.sorted_offsets[:, None]
        lut = self.pair_lut
        for features, bases, count in self.pair_slots:
            index = np.take(values, features, axis=0)  # pairs × rows
            index += bases[:, None]
            code[:count] += np.take(lut, index)
        return np.take(code, self.tree_unorder, axis=0)

    def _node_codes(self, x: np.ndarray) -> np.ndarray:
        """``codes`` node by node: the decision of every row at every node, then packed (the
        path of models ``_build_lookups`` does not cover: zero-as-missing nodes, a feature with
        numeric and categorical splits).

        Numeric decisions compare small integer ranks (rows × features, one ``searchsorted``
        per feature) gathered per node instead of the float values, which is the same
        comparison: per feature the thresholds are sorted, and ``value <= t_k`` exactly when
        fewer than ``k + 1`` thresholds lie below ``value``.
        """
        ranks = np.empty((len(x), self.n_features), dtype=self.rank_dtype)
        for f, levels in enumerate(self.rank_thresholds):
            ranks[:, f] = np.searchsorted(levels, x[:, f], side="left")
        left = np.take(ranks, self.feature, axis=1) <= self.rank_position  # rows × trees × width
        missing = np.isnan(x)
        if missing.any():  # NaN: the default way (missing type NaN) or as 0.0 (the others)
            left = np.where(np.take(missing, self.feature, axis=1), self.nan_left, left)
        if self.any_zero_missing:
            zero = np.take(np.abs(x) <= ZERO_THRESHOLD, self.feature, axis=1) & self.zero_missing
            left = np.where(zero, self.default_left, left)
        if len(self.cat_pos):
            t, k = self.cat_pos[:, 0], self.cat_pos[:, 1]
            raw = np.take(x, self.feature[t, k], axis=1)  # rows × categorical nodes
            top = self.cat_lut.shape[1] - 1
            ok = (raw >= 0) & (raw < top)  # NaN compares False: goes right
            index = np.where(ok, raw, top).astype(np.intp)
            left[:, t, k] = self.cat_lut[self.cat_rows, index]
        left &= self.real  # padding never sets a bit
        return np.einsum("ntw,w->nt", left.view(np.uint8), self.pow2)

    def predict(self, x: np.ndarray, raw_score: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """(probability as ``booster.predict``, or with ``raw_score`` the margin as
        ``booster.predict(raw_score=True)``; contributions rows × features, no bias).

        Large batches run as two halves on two threads (numpy releases the GIL in the array
        work), as LightGBM's own ``predict`` used both cores for them. Every row's values are
        those of scoring it alone (the same sums in the same order).
        """
        if len(x) < PARALLEL_ROWS:
            return self._predict(x, raw_score)
        half = len(x) // 2
        parts = list(_pool().map(functools.partial(self._predict, raw_score=raw_score),
                                 (x[:half], x[half:])))
        return (np.concatenate([p for p, _ in parts]),
                np.concatenate([c for _, c in parts], axis=0))

    def _predict(self, x: np.ndarray, raw_score: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        index = self._tree_index(x)  # trees × rows
        margin = np.ascontiguousarray(np.take(self.leaf_values, index).T).sum(axis=1)
        probability = margin if raw_score else 1.0 / (1.0 + np.exp(-self.sigmoid * margin))
        slots = np.take(self.contrib_table, index, axis=0)  # trees × rows × u_max
        # per row and feature, the sum of its slots in tree order (``bincount`` adds in input
        # order, here tree by tree): one row gives the bits it gives inside any batch
        n, width = len(x), self.n_features + 1
        contrib = np.bincount(self._bins(n), weights=slots.ravel(), minlength=n * width)
        return probability, contrib.reshape(n, width)[:, :self.n_features]

    def _bins(self, n: int) -> np.ndarray:
        """``bincount``'s bin of every slot of ``n`` rows (trees × rows × u_max, flat): row ×
        (features + 1) + the slot's feature; kept per ``n`` (up to ``MAX_CACHED_BINS``)."""
        cache: dict[int, np.ndarray] = self.__dict__.setdefault("_bins_cache", {})
        bins = cache.get(n)
        if bins is None:
            width = self.n_features + 1
            slot_feature = self.slot_feature.reshape(len(self.offsets), 1, self.u_max)
            rows = np.arange(n, dtype=np.intp)[None, :, None] * width
            bins = (rows + slot_feature).ravel()
            bins.flags.writeable = False
            if sum(map(len, cache.values())) + len(bins) > MAX_CACHED_BINS:
                cache.clear()
            cache[n] = bins
        return bins


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Two worker threads for the halves of large batches, started once."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(2, thread_name_prefix="treeshap")
        return _POOL


def _has_linear(structure: dict[str, Any]) -> bool:
    stack = [structure]
    while stack:
        node = stack.pop()
        if "leaf_coeff" in node:
            return True
        for side in ("left_child", "right_child"):
            if side in node:
                stack.append(node[side])
    return False
