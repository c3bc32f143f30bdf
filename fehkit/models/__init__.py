"""The [Fe/H] regressors: random forest, XGBoost, a torch MLP, and their inverse-variance ensemble.

* :mod:`~fehkit.models.forest`, :mod:`~fehkit.models.boosting`, :mod:`~fehkit.models.mlp` -- the members with the
  method's defaults;
* :mod:`~fehkit.models.ensemble` -- :class:`FeHEnsemble`: cross-validated weights, calibrated errors, upper limits;
* :mod:`~fehkit.models.persist` -- saving and loading in safe formats (xgboost JSON, safetensors, skops) with a
  JSON model card.
"""

from fehkit.models.ensemble import FeHEnsemble, grid_search
from fehkit.models.mlp import MLPRegressor

__all__ = ["FeHEnsemble", "MLPRegressor", "grid_search"]
