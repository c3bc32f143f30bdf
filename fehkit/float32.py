"""Float64 thresholds as float32 numbers that decide every float32 comparison the same way.

Data held as float32 (fluxes, features) are compared with thresholds computed in float64. Rounding a threshold to
the *nearest* float32 can flip the comparison for a value equal to the rounded threshold; rounding it *down* (for
``x > t`` and ``x <= t``) or *up* (for ``x < t`` and ``x >= t``) never does, so the comparison can run in float32
with the same outcome for every float32 ``x``. The continuum's clipping and the tensor trees use this.
"""

from __future__ import annotations

import numpy as np

__all__ = ["at_least", "at_most"]


def at_most(t: np.ndarray) -> np.ndarray:
    """Return the largest float32 <= each value: for float32 x, ``x <= t`` and ``x <= result`` agree (and ``>``)."""
    with np.errstate(over="ignore"):
        t32 = np.asarray(t).astype(np.float32)
    return np.where(t32 > t, np.nextafter(t32, np.float32(-np.inf)), t32)


def at_least(t: np.ndarray) -> np.ndarray:
    """Return the smallest float32 >= each value: for float32 x, ``x < t`` and ``x < result`` agree (and ``>=``)."""
    with np.errstate(over="ignore"):
        t32 = np.asarray(t).astype(np.float32)
    return np.where(t32 < t, np.nextafter(t32, np.float32(np.inf)), t32)
