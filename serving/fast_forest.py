"""Raw scores of several LightGBM regression boosters at once, from flat arrays of their trees.

``Booster.predict`` on one row pays a fixed cost per call (argument checks, a ``ctypes`` call,
the predictor's set-up) whatever the model: routing by learned effects asked three of them per
lead (the uplift model's distilled per-channel boosters, ``training.uplift.UpliftModel.distil``).
``ForestWalker`` reads the trees of all the boosters once, when the model is loaded (through
``serving.fast_treeshap._tree``, the same reading of ``dump_model``), into flat arrays, and a
call is one vectorised pass over every node of every tree, with no loop over levels (the exit
leaf as in QuickScorer, Lucchese et al., SIGIR 2015):

1. every node's decision for every row: ``value <= threshold`` for a numeric node, the
   membership of the value's integer code in the node's category set for a categorical one;
2. per tree a 32-bit (64-bit past 32 leaves) set of the leaves still reachable (bit ``j``: the
   ``j``-th leaf from the left): every node the row does *not* go left at clears the bits of
   the leaves of its left subtree (one ``bitwise_and.reduceat`` over the nodes, tree by tree);
   the leftmost leaf left is the one the row reaches;
3. the leaf values summed per booster, in tree order.

Decisions follow LightGBM's ``Tree::NumericalDecision`` and ``CategoricalDecision``, as
``serving.fast_treeshap`` does: NaN counts as 0.0 unless the node's missing type is NaN, and a
missing value (NaN; for missing type Zero also |value| ≤ 1e-35) goes the default way; a
categorical value is truncated to an integer, NaN and negatives go right. Leaf values are those
``dump_model`` prints (17 significant digits: the stored doubles), so the scores equal
``Booster.predict``'s up to the order of the additions (``tests/unit/test_fast_forest.py``
holds them to 1e-9 with missing values and categorical splits;
``benchmarks/bench_allocation_latency.py`` times both).

Kept for routing by learned effects (target: it adds ≤ 0.3 ms to the ``/predict`` p50): one
lead's three channels in 0.042 ms against 0.111 ms for three ``Booster.predict`` (2.6×;
docs/uplift.md, "Serving latency").

``ForestWalker.build`` returns None for boosters it does not cover (a tree of more than 64
leaves, more than one tree per iteration, linear trees, random-forest averaging, an objective
whose prediction is not the raw score, a booster without trees): the caller then keeps
``Booster.predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.fast_treeshap import ZERO_THRESHOLD, _has_linear, _Leaf, _Node, _tree

# objectives whose prediction is the raw score (``predict`` applies no link function)
IDENTITY_OBJECTIVES = frozenset({"regression", "regression_l1", "huber", "fair", "quantile",
                                 "mape"})
MAX_LEAVES = 64  # one 64-bit set of reachable leaves per tree


class ForestWalker:
    """The trees of several boosters as flat arrays; :meth:`predict` gives rows × boosters."""

    def __init__(self, forests: Sequence[Sequence[tuple[list[_Node], list[_Leaf]]]],
                 n_features: int) -> None:
        self.n_features = n_features
        self.n_boosters = len(forests)
        trees = [tree for forest in forests for tree in forest]
        self.n_trees = len(trees)
        features: list[int] = []
        thresholds: list[float] = []
        default_left: list[bool] = []
        zero_missing: list[bool] = []
        nan_left: list[bool] = []
        masks: list[int] = []
        categorical: list[tuple[int, frozenset[int]]] = []
        tree_starts: list[int] = []
        leaf_starts: list[int] = []
        leaf_values: list[float] = []
        for nodes, leaves in trees:
            if len(leaves) > MAX_LEAVES:
                raise ValueError(f"a tree has {len(leaves)} leaves (at most {MAX_LEAVES})")
            tree_starts.append(len(features))
            leaf_starts.append(len(leaf_values))
            # per node the bits of the leaves of its left subtree (leaves come left to right)
            left_leaves = [0] * len(nodes)
            for j, leaf in enumerate(leaves):
                for k, went_left in leaf.path:
                    if went_left:
                        left_leaves[k] |= 1 << j
                leaf_values.append(leaf.value)
            for k, node in enumerate(nodes):
                g = len(features)
                features.append(node.feature)
                default_left.append(node.default_left)
                masks.append(~left_leaves[k])
                if node.categories is not None:
                    categorical.append((g, node.categories))
                    thresholds.append(np.nan)
                    zero_missing.append(False)
                    nan_left.append(False)
                else:
                    thresholds.append(node.threshold)
                    zero_missing.append(node.missing_type == "Zero")
                    # NaN: the default way for missing types NaN and Zero (NaN counts as 0.0,
                    # which is missing there), else as 0.0 compares
                    nan_left.append(node.default_left if node.missing_type in ("NaN", "Zero")
                                    else node.threshold >= 0.0)
            # one node that clears nothing, so that a tree of a single leaf has a node too
            features.append(0)
            thresholds.append(np.nan)
            default_left.append(False)
            zero_missing.append(False)
            nan_left.append(False)
            masks.append(-1)
        self.n_nodes = len(features)
        self.feature = np.array(features, dtype=np.intp)
        self.threshold = np.array(thresholds, dtype=float)
        self.default_left = np.array(default_left, dtype=bool)
        self.zero_missing = np.array(zero_missing, dtype=bool)
        self.any_zero_missing = bool(self.zero_missing.any())
        self.nan_left = np.array(nan_left, dtype=bool)
        # 32-bit sets when every tree has at most 32 leaves (LightGBM's default is 31)
        widest = max((len(leaves) for _, leaves in trees), default=1)
        self.mask_dtype = np.uint32 if widest <= 32 else np.uint64
        full = (1 << (32 if widest <= 32 else 64)) - 1
        self.masks = np.array([m & full for m in masks], dtype=self.mask_dtype)
        self.one = self.mask_dtype(1)
        self.tree_starts = np.array(tree_starts, dtype=np.intp)
        self.leaf_starts = np.array(leaf_starts, dtype=np.intp)
        self.leaf_values = np.array(leaf_values, dtype=float)
        counts = [len(forest) for forest in forests]
        self.booster_starts = np.cumsum([0, *counts[:-1]]).astype(np.intp)
        # categorical nodes: "goes left" per integer code; the last column for NaN, negative
        # codes and codes that no node lists
        self.cat_nodes = np.array([g for g, _ in categorical], dtype=np.intp)
        top = max((max(c) for _, c in categorical if c), default=-1) + 1
        self.cat_top = top
        self.cat_lut = np.zeros((len(categorical), top + 1), dtype=bool)
        for i, (_, cats) in enumerate(categorical):
            self.cat_lut[i, sorted(cats)] = True
        self.cat_rows = np.arange(len(categorical), dtype=np.intp)
        self.used = np.unique(self.feature)  # the NaN step only when one of these is NaN

    @classmethod
    def build(cls, boosters: Sequence[Any]) -> ForestWalker | None:
        """Flat trees of ``boosters`` (the iterations ``predict`` uses by default), or None."""
        forests = []
        n_features = 0
        for booster in boosters:
            best = int(getattr(booster, "best_iteration", 0) or 0)
            dump = booster.dump_model(num_iteration=best if best > 0 else None)
            objective = str(dump.get("objective", "")).split(" ")[0]
            if (dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output")
                    or objective not in IDENTITY_OBJECTIVES):
                return None
            trees = []
            for info in dump["tree_info"]:
                structure = info["tree_structure"]
                if _has_linear(structure):
                    return None
                nodes, leaves = _tree(structure)
                if len(leaves) > MAX_LEAVES:
                    return None
                trees.append((nodes, leaves))
            if not trees:
                return None
            forests.append(trees)
            n_features = max(n_features, int(booster.num_feature()))
        return cls(forests, n_features)

    def decisions(self, x: np.ndarray) -> np.ndarray:
        """Whether every row goes left at every node (rows × nodes)."""
        values = np.take(x, self.feature, axis=1)
        left = values <= self.threshold  # NaN (and categorical nodes) compare False
        if np.isnan(x[:, self.used]).any():
            left |= np.isnan(values) & self.nan_left
        if self.any_zero_missing:
            zero = (np.abs(values) <= ZERO_THRESHOLD) & self.zero_missing
            left = np.where(zero, self.default_left, left)
        if len(self.cat_nodes):
            raw = np.trunc(values[:, self.cat_nodes])  # C's cast to int
            ok = (raw >= 0) & (raw < self.cat_top)  # NaN compares False: right
            index = np.where(ok, raw, self.cat_top).astype(np.intp)
            left[:, self.cat_nodes] = self.cat_lut[self.cat_rows, index]
        return left

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The leaf every row reaches in every tree, counted from the tree's leftmost leaf
        (rows × trees)."""
        # a node gone left clears nothing: its mask becomes all ones (0 - 1 wraps around)
        masks = self.masks | np.negative(self.decisions(x).astype(self.mask_dtype))
        reachable = np.bitwise_and.reduceat(masks, self.tree_starts, axis=1)
        lowest = reachable & (~reachable + self.one)  # the lowest bit set
        return np.frexp(lowest.astype(float))[1] - 1

    def predict(self, x: Any) -> np.ndarray:
        """Raw score of every booster for every row (rows × boosters), as ``predict``."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x: expected rows of {self.n_features} feature values, got the "
                             f"shape {x.shape}")
        leaf = np.take(self.leaf_values, self.leaves(x) + self.leaf_starts)
        return np.add.reduceat(leaf, self.booster_starts, axis=1)


class DistilledEffects:
    """The uplift model's effect of every follow-up channel (leads × ``channels``, the
    reference arm 0) from the service's feature columns: ``UpliftModel.encode_columns``, then
    its distilled per-arm boosters through one :class:`ForestWalker` — the numbers of
    ``UpliftModel.fast_uplift`` (which asks ``Booster.predict`` once per arm). A model without
    distilled boosters, or with boosters the walker does not cover, keeps ``fast_uplift``."""

    def __init__(self, model: Any, channels: Sequence[str]) -> None:
        self.model = model
        self.positions = np.array([model.arms.index(c) for c in channels], dtype=np.intp)
        boosters = getattr(model, "serving_models", None) or []
        self.walker = ForestWalker.build(boosters) if boosters else None
        if self.walker is not None and self.walker.n_features != len(model.feature_columns):
            self.walker = None

    def __call__(self, columns: Any) -> np.ndarray:
        if self.walker is None:
            return self.model.fast_uplift(columns)[:, self.positions]
        scores = self.walker.predict(self.model.encode_columns(columns))  # rows × arms[1:]
        # arm k > 0 is the walker's column k - 1; the reference arm's column is 0
        full = np.concatenate([np.zeros((len(scores), 1)), scores], axis=1)
        return full[:, self.positions]
