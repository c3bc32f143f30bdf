"""Random-forest member: scikit-learn's ``RandomForestRegressor`` with the method's defaults.

A forest averages many deep trees grown on bootstrap samples: robust, nearly free of tuning, and blind to
feature scaling. scikit-learn's trees route missing values (NaN: masked lines) to the better side of each split.
"""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import RandomForestRegressor

#: The method's defaults (500 trees, depth 12); anything here can be overridden through ``FeHEnsemble(rf=...)``.
#: Each split looks at sqrt(n_features) features: as accurate as all of them in cross-validation on the training
#: split of the synthetic benchmark, and 5x faster.
RF_DEFAULTS: dict[str, Any] = {"n_estimators": 500, "max_depth": 12, "min_samples_leaf": 1, "max_features": "sqrt",
                               "n_jobs": -1}


def make_forest(seed: int = 0, **overrides: Any) -> RandomForestRegressor:
    """Make a random forest with :data:`RF_DEFAULTS` updated by ``overrides``."""
    return RandomForestRegressor(**{**RF_DEFAULTS, **overrides, "random_state": seed})
