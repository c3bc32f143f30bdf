"""The [Fe/H] regressors: random forest, XGBoost, a torch MLP, and their inverse-variance ensemble.

* :mod:`~fehkit.models.forest`, :mod:`~fehkit.models.boosting`, :mod:`~fehkit.models.mlp` -- the members with the
  method's defaults;
* :mod:`~fehkit.models.ensemble` -- :class:`FeHEnsemble`: cross-validated weights, calibrated errors, upper limits;
  a scikit-learn estimator (``clone``, ``set_params``, ``GridSearchCV``), with the bounded :func:`grid_search`;
* :mod:`~fehkit.models.persist` -- model folders in safe formats (xgboost JSON, safetensors, skops) with a JSON
  model card and the SHA-256 of every file;
* :mod:`~fehkit.models.base` -- the errors they share and the fitted-check.
"""

from fehkit.models.base import EnsembleError, NotFittedError
from fehkit.models.ensemble import FeHEnsemble, grid_search
from fehkit.models.mlp import TorchMLPRegressor

__all__ = ["EnsembleError", "FeHEnsemble", "NotFittedError", "TorchMLPRegressor", "grid_search"]
