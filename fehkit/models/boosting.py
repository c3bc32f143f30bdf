"""Gradient-boosting member: XGBoost's ``XGBRegressor`` with the method's defaults.

Boosted trees add small trees that each fit what the previous ones left; NaN features (masked lines) follow a
learned default branch. Saved as XGBoost's own JSON format, never as a pickle.
"""

from __future__ import annotations

from typing import Any

from xgboost import XGBRegressor

#: The method's defaults (400 trees, learning rate 0.05); override through ``FeHEnsemble(xgb=...)``. Depth 4 and
#: 64 histogram bins cross-validate as well as depth 6 / 256 bins on the training split, 5-10x faster; one
#: thread, because idle OpenMP threads busy-wait ("spin") before they sleep (OMP_WAIT_POLICY,
#: https://gcc.gnu.org/onlinedocs/libgomp/OMP_005fWAIT_005fPOLICY.html): with two threads on a 2-core machine
#: where another process holds a core, they fight it for the CPU and throughput collapses (30x, measured with two
#: torch OpenMP threads on such a machine while fehkit was built).
XGB_DEFAULTS: dict[str, Any] = {"n_estimators": 400, "learning_rate": 0.05, "max_depth": 4, "max_bin": 64,
                                "subsample": 0.8, "colsample_bytree": 0.8, "tree_method": "hist", "n_jobs": 1}


def make_boosting(seed: int = 0, **overrides: Any) -> XGBRegressor:
    """Make an XGBoost regressor with :data:`XGB_DEFAULTS` updated by ``overrides``."""
    return XGBRegressor(**{**XGB_DEFAULTS, **overrides, "random_state": seed})
