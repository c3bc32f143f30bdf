"""The forest and the boosted trees as torch tensor operations: every tree, every row, at once, on any device.

:class:`TensorTrees` packs a batch of binary regression trees into tensors of shape ``(n_trees, n_nodes)``, every
tree padded to the largest node count:

* ``feature`` (int64) -- the column a split reads;
* ``threshold`` (float32) -- go left when ``x <= threshold`` (see the float32 rule below);
* ``children`` (int64, ``(n_trees, n_nodes, 2)``) -- left and right child, node indices within the tree;
* ``missing_left`` (bool) -- where a missing value (NaN) goes: left if True, right if False;
* ``value`` (float64) -- the leaf values (zero at inner nodes);
* ``node_id`` (int64) -- the node's index in the library's own tree (what ``apply`` / ``pred_leaf`` report).

Nodes are renumbered breadth first so that siblings are neighbours (right child = left child + 1), and a leaf, like
each padding node, is its own child on both sides, so a row that reaches it stays there. Evaluation is then a
fixed number of vectorized steps -- the depth of the deepest tree -- each one, for all (row, tree) pairs at once,
a gather of the node's column, a gather of the feature value, a comparison and a gather of the next node
(``node = left[node] + go_right``; no Python loop over trees or rows); then the leaf values are summed over the
trees, divided by their number for a forest, and added to a base score for boosting. NaN costs no extra step: the
walk reads an augmented matrix of three blocks of columns, ``X`` with NaN as -inf (read by nodes that send NaN
left), ``X`` with NaN as +inf (nodes that send it right) and ``isnan(X)`` (nodes whose threshold is +inf and that
send NaN right: "every number left, NaN right", which scikit-learn makes), and goes right when the value read is
``> threshold``. That is the decision of the libraries' compiled walks for every float32 value, +-inf included
(though both libraries' ``predict`` refuse infinite input).

The float32 rule: both libraries compare features in single precision. scikit-learn casts ``X`` to float32
before it walks a tree ("Internally, its dtype will be converted to ``dtype=np.float32``", the ``X`` parameter of
``DecisionTreeRegressor.predict`` / ``RandomForestRegressor.predict``) and tests the float32 value, widened to
double, against a float64 threshold: ``x <= threshold``, NaN to the side in ``missing_go_to_left`` (scikit-learn
1.3 and later; "Missing values support" in the user guide's decision-tree section: a feature without NaN in
training sends NaN at prediction to the child with the most samples, which the fitted flag already records).
XGBoost stores float32 thresholds and goes left when ``x < threshold`` with ``x`` as float32 (its text dumps print a
split as ``[f<threshold]``), NaN to the node's ``default_left`` (the JSON model's ``split_conditions`` and
``default_left`` arrays; "How to deal with missing values" in the XGBoost FAQ: the branch a missing value takes is
learned in training). For a float32 ``x`` both tests are one float32 test, ``x <= t32``, with ``t32`` the largest
float32 that passes: for scikit-learn ``t32`` is the float64 threshold rounded *down* to float32 (a midpoint of
two float32 values is not a float32, and rounding it to nearest would flip rows that equal the upper one); for
XGBoost it is the float32 just below the threshold. So the tensors hold float32 thresholds and the comparisons
run in float32 on any device, with the libraries' decisions bit for bit, ties included.

Leaf values sum in float64 when ``X`` is float64 (or as ``dtype`` asks): a forest then matches scikit-learn to the
order of summation (~1e-14 for 500 trees). XGBoost adds its float32 leaves to the float32 base score one tree at a
time, in float32, so the float64 sum differs from its ``predict`` by that rounding (a few 1e-6 for 400 trees and
predictions of a few units); the leaves reached are the same.

On a CPU, :meth:`TensorTrees.predict_compiled` walks the same flat tables in a compiled loop
(:mod:`fehkit.models.tree_kernels`, numba): the same leaves, for a few rows in microseconds, for many rows several
times faster than scikit-learn's forest; what :func:`fehkit.infer.infer` and the HTTP service use on a CPU.

Examples
--------
>>> import numpy as np, torch
>>> from sklearn.ensemble import RandomForestRegressor
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 3)); y = X[:, 0] - 2 * X[:, 1]
>>> rf = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
>>> trees = TensorTrees.from_sklearn_forest(rf)
>>> trees  # doctest: +ELLIPSIS
TensorTrees(5 trees, ... nodes each, depth ..., forest, cpu)
>>> bool(np.allclose(trees(torch.from_numpy(X)).numpy(), rf.predict(X), rtol=0, atol=1e-12))
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fehkit.float32 import at_most

__all__ = ["TensorTrees", "compiled_available"]

#: XGBoost objectives whose prediction is the raw margin (identity link): the only ones converted.
IDENTITY_OBJECTIVES = ("reg:squarederror", "reg:squaredlogerror", "reg:pseudohubererror", "reg:absoluteerror",
                       "reg:quantileerror")

#: Largest (rows x trees) evaluated in one chunk: bounds the memory of the per-step index tensors.
CHUNK_ELEMENTS = 1 << 19


class TensorTrees:
    """A batch of binary regression trees as tensors, evaluated for all trees and rows at once.

    Build one with :meth:`from_sklearn_forest` or :meth:`from_xgboost`; call it (or :meth:`forward`) on a
    ``(n_rows, n_features)`` tensor, or :meth:`predict` on an array.

    Parameters
    ----------
    feature, threshold, children, missing_left, value
        The packed trees (see the module docstring); arrays or tensors of shapes ``(n_trees, n_nodes)``, and
        ``(n_trees, n_nodes, 2)`` for ``children``. ``threshold`` must already follow the float32 rule; an inner
        node's right child must be its left child + 1, and a leaf must be its own child on both sides.
    depth : int
        Steps that bring every row to a leaf in every tree (the depth of the deepest tree).
    node_id : array or tensor, optional
        Each node's index in the library's tree (default: its index here), what :meth:`leaves` reports.
    average : bool
        Divide the sum over trees by their number (a forest) rather than keep it (boosting).
    base_score : float
        Added to every prediction (XGBoost's base score; 0 for a forest).
    n_features : int, optional
        Columns ``X`` must have (checked at evaluation).
    device : str or torch.device
        Where the tensors live.
    """

    def __init__(self, feature: Any, threshold: Any, children: Any, missing_left: Any, value: Any, *, depth: int,
                 node_id: Any = None, average: bool = False, base_score: float = 0.0, n_features: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        self.feature = torch.as_tensor(feature, dtype=torch.int64, device=device)
        self.threshold = torch.as_tensor(threshold, dtype=torch.float32, device=device)
        self.children = torch.as_tensor(children, dtype=torch.int64, device=device)
        self.missing_left = torch.as_tensor(missing_left, dtype=torch.bool, device=device)
        self.value = torch.as_tensor(value, dtype=torch.float64, device=device)
        n_trees, n_nodes = self.feature.shape
        if node_id is None:
            node_id = torch.arange(n_nodes, device=device).expand(n_trees, -1)
        self.node_id = torch.as_tensor(node_id, dtype=torch.int64, device=device)
        for name in ("threshold", "missing_left", "value", "node_id"):
            if getattr(self, name).shape != (n_trees, n_nodes):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}; expected "
                                 f"{(n_trees, n_nodes)} like feature")
        if self.children.shape != (n_trees, n_nodes, 2):
            raise ValueError(f"children has shape {tuple(self.children.shape)}; expected {(n_trees, n_nodes, 2)}")
        left, right = self.children[..., 0], self.children[..., 1]
        own = torch.arange(n_nodes, device=device)
        leaf = (left == own) & (right == own)
        if not bool(torch.all(leaf | (right == left + 1))):
            raise ValueError("children: an inner node's right child must follow its left child (right = left + 1)")
        self.depth = int(depth)
        self.average = bool(average)
        self.base_score = float(base_score)
        self.n_features = int(self.feature.max()) + 1 if n_features is None else int(n_features)
        # the walk's flat tables: node k of tree t is entry t * n_nodes + k. Each node reads one column of the
        # augmented matrix (see _augment) and goes right when the value is > its threshold; leaves read column 0
        # (no NaN there) against +inf, so they never move.
        n = self.n_features
        every_number_left = ~self.missing_left & (self.threshold == np.inf) & ~leaf
        column = torch.where(self.missing_left, self.feature, self.feature + n)
        column = torch.where(every_number_left, self.feature + 2 * n, column)
        column = torch.where(leaf, 0, column)
        threshold = torch.where(every_number_left, 0.5, self.threshold)
        threshold = torch.where(leaf, np.inf, threshold)
        offsets = torch.arange(n_trees, device=device, dtype=torch.int64) * n_nodes
        self._root = offsets
        self._column = column.reshape(-1).contiguous()
        self._threshold = threshold.to(torch.float32).reshape(-1).contiguous()
        self._left = (left + offsets[:, None]).reshape(-1).contiguous()
        self._value = self.value.reshape(-1)
        self._node_id = self.node_id.reshape(-1)
        self._tables: tuple[np.ndarray, ...] | None = None  # their numpy copies, for predict_compiled

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_sklearn_forest(cls, forest: Any, *, device: str | torch.device = "cpu") -> TensorTrees:
        """Pack a fitted scikit-learn forest (``RandomForestRegressor``, ``ExtraTreesRegressor``) or one tree.

        The prediction is the mean of the trees' leaf values, as ``forest.predict``; thresholds are rounded down
        to float32 (the float32 rule); NaN follows each node's ``missing_go_to_left`` where the trees have it
        (scikit-learn 1.3 and later), otherwise goes right, as ``x <= threshold`` is false for NaN.
        """
        if hasattr(forest, "estimators_"):
            estimators = list(forest.estimators_)
        elif hasattr(forest, "tree_"):
            estimators = [forest]
        else:
            raise ValueError(f"{type(forest).__name__}: not a fitted scikit-learn tree or forest (no estimators_ "
                             "or tree_); fit it first")
        trees = []
        for est in estimators:
            t = est.tree_
            if t.n_outputs != 1:
                raise ValueError(f"a tree has {t.n_outputs} outputs; only single-output regression is supported")
            left = np.asarray(t.children_left, np.int64)
            right = np.asarray(t.children_right, np.int64)
            missing = getattr(t, "missing_go_to_left", None)
            missing = np.zeros(len(left), bool) if missing is None else np.asarray(missing).astype(bool)
            trees.append({"feature": np.asarray(t.feature, np.int64), "left": left, "right": right,
                          "threshold": at_most(np.asarray(t.threshold, np.float64)),
                          "missing_left": missing, "value": np.asarray(t.value, np.float64)[:, 0, 0]})
        n_features = getattr(forest, "n_features_in_", None)
        return cls._pack(trees, average=True, base_score=0.0, n_features=n_features, device=device)

    @classmethod
    def from_xgboost(cls, model: Any, *, iteration_range: tuple[int, int] | None = None,
                     device: str | torch.device = "cpu") -> TensorTrees:
        """Pack an XGBoost ``Booster`` or ``XGBRegressor`` from its own JSON model.

        Trees come from ``learner.gradient_booster.model.trees`` (``gbtree``; ``dart`` with its tree weights);
        a leaf's value is its ``split_conditions`` entry (the learning rate already applied), and
        ``learner.learner_model_param.base_score`` (a string such as ``"[5E-1]"`` in XGBoost 3) is added.

        Parameters
        ----------
        model : xgboost.Booster or xgboost.XGBModel
            A fitted single-target regression model with an identity link (see :data:`IDENTITY_OBJECTIVES`).
        iteration_range : (int, int), optional
            Boosting rounds to use, as in ``predict(iteration_range=...)``; ``(0, 0)`` is all of them. By default
            what ``predict`` uses: for the scikit-learn wrapper the rounds up to ``best_iteration`` after early
            stopping, for a ``Booster`` all rounds.
        """
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        if iteration_range is None:
            iteration_range = (0, 0)
            if booster is not model:  # the scikit-learn wrapper predicts with the best iteration when there is one
                try:
                    iteration_range = (0, int(model.best_iteration) + 1)
                except AttributeError:
                    pass
        learner = json.loads(bytes(booster.save_raw("json")))["learner"]
        objective = learner["objective"]["name"]
        if objective not in IDENTITY_OBJECTIVES:
            raise ValueError(f"XGBoost objective {objective!r}: only identity-link regression objectives are "
                             f"supported ({', '.join(IDENTITY_OBJECTIVES)})")
        param = learner["learner_model_param"]
        if int(param.get("num_class", 0)) > 0 or int(param.get("num_target", 1)) > 1:
            raise ValueError("XGBoost model with several outputs (num_class / num_target): only single-target "
                             "regression is supported")
        base_score = _parse_base_score(param["base_score"])
        gb = learner["gradient_booster"]
        weights = None
        if gb["name"] == "dart":
            weights = np.asarray(gb["weight_drop"], np.float64)
            gb = gb["gbtree"]
        elif gb["name"] != "gbtree":
            raise ValueError(f"XGBoost booster {gb['name']!r}: only tree boosters (gbtree, dart) are supported")
        raw = gb["model"]["trees"]
        indptr = gb["model"].get("iteration_indptr")
        if indptr is None:  # older files: num_parallel_tree trees per round
            per_round = int(gb["model"]["gbtree_model_param"].get("num_parallel_tree", 1))
            indptr = list(range(0, len(raw) + 1, per_round))
        first, last = iteration_range
        last = len(indptr) - 1 if last == 0 else last
        if not 0 <= first < last <= len(indptr) - 1:
            raise ValueError(f"iteration_range {iteration_range}: the model has {len(indptr) - 1} rounds")
        keep = range(indptr[first], indptr[last])
        trees = []
        for i in keep:
            t = raw[i]
            if any(int(s) != 0 for s in t.get("split_type", [])):
                raise ValueError("XGBoost tree with categorical splits: only numerical splits are supported")
            left = np.asarray(t["left_children"], np.int64)
            cond = np.asarray(t["split_conditions"], np.float64).astype(np.float32)
            leaf = left == -1
            # go left when x < t  <=>  x <= the float32 just below t (x is a float32)
            below = np.nextafter(cond, np.float32(-np.inf), dtype=np.float32)
            value = np.where(leaf, cond.astype(np.float64), 0.0)
            if weights is not None:
                value = value * weights[i]
            trees.append({"feature": np.asarray(t["split_indices"], np.int64), "left": left,
                          "right": np.asarray(t["right_children"], np.int64), "threshold": below,
                          "missing_left": np.asarray(t["default_left"]).astype(bool), "value": value})
        return cls._pack(trees, average=False, base_score=base_score, n_features=int(param["num_feature"]),
                         device=device)

    @classmethod
    def _pack(cls, trees: Sequence[dict], *, average: bool, base_score: float, n_features: int | None,
              device: str | torch.device) -> TensorTrees:
        """Renumber each tree breadth first (siblings neighbours), pad to a common node count, leaves to themselves."""
        if not trees:
            raise ValueError("no trees to pack")
        n_trees, n_nodes = len(trees), max(len(t["left"]) for t in trees)
        feature = np.zeros((n_trees, n_nodes), np.int64)
        threshold = np.full((n_trees, n_nodes), np.inf, np.float32)
        missing_left = np.ones((n_trees, n_nodes), bool)
        value = np.zeros((n_trees, n_nodes), np.float64)
        node_id = np.broadcast_to(np.arange(n_nodes), (n_trees, n_nodes)).copy()
        children = np.stack([node_id, node_id], axis=-1)
        depth = 0
        for k, t in enumerate(trees):
            left, right = t["left"], t["right"]
            order, new_left, tree_depth = _breadth_first(left, right)
            m = len(order)
            inner = left[order] >= 0
            node_id[k, :m] = order
            feature[k, :m] = np.where(inner, t["feature"][order], 0)
            threshold[k, :m] = np.where(inner, t["threshold"][order], np.float32(np.inf))
            missing_left[k, :m] = np.where(inner, t["missing_left"][order], True)
            value[k, :m] = np.where(inner, 0.0, t["value"][order])
            children[k, :m, 0] = np.where(inner, new_left, np.arange(m))
            children[k, :m, 1] = np.where(inner, new_left + 1, np.arange(m))
            depth = max(depth, tree_depth)
        return cls(feature, threshold, children, missing_left, value, depth=depth, node_id=node_id,
                   average=average, base_score=base_score, n_features=n_features, device=device)

    # ---- evaluation ------------------------------------------------------------------------------------------
    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.feature.shape[0])

    @property
    def n_nodes(self) -> int:
        """Nodes per tree after padding."""
        return int(self.feature.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.feature.device

    def to(self, device: str | torch.device) -> TensorTrees:
        """Return a copy on ``device`` (thresholds stay float32, leaf values float64)."""
        return type(self)(self.feature.to(device), self.threshold.to(device), self.children.to(device),
                          self.missing_left.to(device), self.value.to(device), depth=self.depth,
                          node_id=self.node_id.to(device), average=self.average, base_score=self.base_score,
                          n_features=self.n_features, device=device)

    def leaves(self, X: torch.Tensor) -> torch.Tensor:
        """Return the leaf each row reaches in each tree, ``(n_rows, n_trees)``, as the library numbers its nodes."""
        x32 = self._features(X)
        out = [self._node_id[self._walk(chunk)] for chunk in x32.split(self._chunk_rows())]
        return torch.cat(out) if out else torch.empty((0, self.n_trees), dtype=torch.int64, device=self.device)

    def forward(self, X: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Predict for the rows of ``X`` (``(n_rows, n_features)``), on the trees' device.

        Features are compared as float32 (the float32 rule); the leaf values are summed in ``dtype``: by default
        float64 when ``X`` is float64, float32 otherwise. Returns a ``(n_rows,)`` tensor of that dtype.
        """
        if dtype is None:
            dtype = torch.float64 if torch.is_tensor(X) and X.dtype == torch.float64 else torch.float32
        x32 = self._features(X)
        out = []
        for chunk in x32.split(self._chunk_rows()):
            total = self._value[self._walk(chunk)].to(dtype).sum(dim=1)
            if self.average:
                total = total / self.n_trees
            out.append(total + self.base_score if self.base_score else total)
        return torch.cat(out) if out else torch.empty(0, dtype=dtype, device=self.device)

    __call__ = forward

    def predict(self, X: Any) -> np.ndarray:
        """Predict for an array-like ``X``: float64 numpy values (leaf values summed in float64)."""
        X = torch.as_tensor(np.asarray(X, np.float64))
        return self.forward(X, dtype=torch.float64).cpu().numpy()

    def predict_compiled(self, X: Any, *, columns: np.ndarray | None = None) -> np.ndarray:
        """:meth:`predict` on the CPU through the compiled walk (:mod:`fehkit.models.tree_kernels`), in threads.

        The same leaves as :meth:`forward`, the leaf values summed in float64 tree by tree (the same numbers to
        ~1e-14); for a few rows it costs microseconds where the tensor walk and the libraries' own ``predict``
        cost milliseconds. Needs numba (:func:`compiled_available`). ``columns``: :func:`walk_columns` of ``X``,
        if made already (several members of one ensemble read the same).
        """
        from fehkit.threads import map_parts

        kernels = _tree_kernels()
        if kernels is None:
            raise RuntimeError("the compiled tree walk needs numba (and FEHKIT_NUMBA not 0); use predict()")
        x = np.asarray(X)
        self._check_shape(x.shape)
        xa = walk_columns(x) if columns is None else columns
        if xa.shape != (x.shape[0], 3 * x.shape[1]) or xa.dtype != np.float32:
            raise ValueError(f"columns: shape {xa.shape} {xa.dtype}; expected walk_columns(X), "
                             f"{(x.shape[0], 3 * x.shape[1])} float32")
        tables = self._numpy_tables()
        out = np.empty(len(xa))

        def part(rows: slice) -> None:
            kernels.tree_sums(xa[rows], *tables, self.depth, out[rows])

        map_parts(part, len(xa), min_rows=32)
        if self.average:
            out /= self.n_trees
        return out + self.base_score if self.base_score else out

    def _numpy_tables(self) -> tuple[np.ndarray, ...]:
        """Return the walk's flat tables as numpy arrays (root, column, threshold, left, value), made once."""
        if self._tables is None:
            int32 = self._left.numel() < 2**31  # half the memory the walk reads, so more of it stays in the cache
            index = np.int32 if int32 else np.int64
            self._tables = (self._root.cpu().numpy().astype(index), self._column.cpu().numpy().astype(index),
                            np.ascontiguousarray(self._threshold.cpu().numpy()),
                            self._left.cpu().numpy().astype(index), np.ascontiguousarray(self._value.cpu().numpy()))
        return self._tables

    def _features(self, X: Any) -> torch.Tensor:
        x = torch.as_tensor(X)
        self._check_shape(tuple(x.shape))
        return x.to(device=self.device, dtype=torch.float32)  # round to nearest, like numpy's astype(float32)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise ValueError(f"X has shape {tuple(shape)}; expected (n_rows, n_features)")
        if self.n_features is not None and shape[1] != self.n_features:
            raise ValueError(f"X has {shape[1]} features; the trees were fitted on {self.n_features}")

    def _chunk_rows(self) -> int:
        return max(1, CHUNK_ELEMENTS // self.n_trees)

    def _walk(self, x32: torch.Tensor) -> torch.Tensor:
        """Flat node index of the leaf each row reaches in each tree: ``depth`` steps of gathers."""
        xa = _augment(x32)
        node = self._root.expand(x32.shape[0], -1)  # (rows, trees), the roots
        for _ in range(self.depth):
            go_right = xa.gather(1, self._column[node]) > self._threshold[node]
            node = self._left[node] + go_right
        return node

    def __repr__(self) -> str:
        kind = "forest" if self.average else f"boosted, base_score {self.base_score:.6g}"
        return (f"TensorTrees({self.n_trees} trees, {self.n_nodes} nodes each, depth {self.depth}, {kind}, "
                f"{self.device})")


def compiled_available() -> bool:
    """Whether :meth:`TensorTrees.predict_compiled` can run: numba imports and ``FEHKIT_NUMBA`` is not ``0``."""
    return _tree_kernels() is not None


def _tree_kernels() -> Any:
    from fehkit.threads import compiled, numba_wanted

    return compiled("fehkit.models.tree_kernels") if numba_wanted() else None


def walk_columns(X: Any) -> np.ndarray:
    """Return the float32 columns the compiled walk reads: ``[X with NaN as -inf, X with NaN as +inf, isnan(X)]``.

    :func:`_augment` made in NumPy (for a few rows torch's per-call cost would dominate), ``X`` rounded to float32
    to nearest as the tensor walk rounds it.
    """
    x32 = np.asarray(X).astype(np.float32)
    nan = np.isnan(x32)
    return np.concatenate([np.where(nan, np.float32(-np.inf), x32), np.where(nan, np.float32(np.inf), x32),
                           nan.astype(np.float32)], axis=1)


def _augment(x32: torch.Tensor) -> torch.Tensor:
    """``[X with NaN as -inf, X with NaN as +inf, isnan(X)]``: the columns the walk reads (float32)."""
    nan = torch.isnan(x32)
    return torch.cat([x32.masked_fill(nan, -np.inf), x32.masked_fill(nan, np.inf), nan.to(x32.dtype)], dim=1)


def _breadth_first(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Renumber a tree breadth first, one level at a time, siblings side by side.

    Returns the old index of each new node, the new index of each new node's left child (its right child is the
    next one; meaningless at leaves) and the tree's depth (root alone: 0). Unreachable nodes are dropped.
    """
    order, new_left = [np.array([0])], []
    level, start, depth = np.array([0]), 1, 0
    while True:
        inner = level[left[level] >= 0]
        first = np.full(len(level), -1)
        first[left[level] >= 0] = start + 2 * np.arange(len(inner))
        new_left.append(first)
        if not len(inner):
            break
        level = np.stack([left[inner], right[inner]], axis=1).reshape(-1)
        order.append(level)
        start += len(level)
        depth += 1
        if start > len(left):
            raise ValueError("child arrays that do not form a tree (a node reached twice)")
    return np.concatenate(order), np.concatenate(new_left), depth


def _parse_base_score(raw: Any) -> float:
    """XGBoost's base score from the JSON model: a number, or a string like ``"5E-1"`` or ``"[5E-1]"`` (3.x)."""
    if isinstance(raw, int | float):
        return float(np.float32(raw))
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan", str(raw), flags=re.IGNORECASE)
    if len(numbers) != 1:
        raise ValueError(f"XGBoost base_score {raw!r}: expected one number (a single-target model)")
    return float(np.float32(numbers[0]))
