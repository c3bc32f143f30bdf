"""Compiled (numba) walk of packed trees: the CPU fast path of :class:`fehkit.models.trees.TensorTrees`.

scikit-learn's forest ``predict`` walks each tree over all rows in its compiled code, but hands the 500 trees to
joblib threads one by one and sums their outputs under a lock, which for a few rows costs far more than the walk
(and its result loop waits in steps of 10 ms). XGBoost's ``inplace_predict`` has a fixed cost per call too. This
kernel takes the flat tables that :class:`~fehkit.models.trees.TensorTrees` builds (the augmented feature matrix,
each node's column, float32 threshold, left child and leaf value) and does the tensor walk's steps in one compiled
loop: a block of rows goes through one tree at a time (the tree's nodes stay in the cache), ``depth`` steps of
"go right when the value read is ``> threshold``" (a leaf is its own child, so a row that reaches one stays), and
the leaf values are added in float64, tree after tree. The decisions are the tensor walk's, so the libraries' own,
bit for bit; the sums differ from the tensor walk's only in their order (~1e-14).

Importing this module imports numba; :mod:`fehkit.models.trees` imports it on first use, and only when numba is
wanted (``FEHKIT_NUMBA`` is not ``0``). Without numba it imports all the same and ``numba`` is None here.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # no numba: TensorTrees runs its torch walk
    numba = None


def _njit(func):  # noqa: ANN001, ANN202 - a decorator
    return func if numba is None else numba.njit(func, cache=True, nogil=True, error_model="numpy")


#: Rows walked together through one tree at a time: the tree's nodes stay in the cache while they are read, and
#: the rows' walks, independent of each other, overlap in the processor instead of waiting on each other's loads.
BLOCK = 64


@_njit
def tree_sums(xa: np.ndarray, root: np.ndarray, column: np.ndarray, threshold: np.ndarray, left: np.ndarray,
              value: np.ndarray, depth: int, out: np.ndarray) -> None:
    """Write into ``out[i]`` the sum over the trees of the leaf value that row ``i`` of ``xa`` reaches.

    ``xa`` (float32, ``(rows, 3 n_features)``) is the augmented matrix; ``root`` each tree's root; ``column``,
    ``threshold``, ``left`` and ``value`` the flat node tables (a leaf's left child is itself and its threshold
    +inf, so a row that reaches it stays there); ``depth`` steps bring every row to its leaf. Rows go through the
    trees a block at a time, each block through one tree after the other, so every row's sum is taken in tree
    order.
    """
    n = xa.shape[0]
    node = np.empty(BLOCK, root.dtype)
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        for j in range(m):
            out[start + j] = 0.0
        for t in range(root.shape[0]):
            for j in range(m):
                node[j] = root[t]
            for _ in range(depth):
                for j in range(m):
                    k = node[j]
                    node[j] = left[k] + (xa[start + j, column[k]] > threshold[k])
            for j in range(m):
                out[start + j] += value[node[j]]
