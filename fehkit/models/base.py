"""What every model of :mod:`fehkit.models` shares: its errors and the check that it was fitted.

The models are scikit-learn estimators; :func:`check_fitted` runs scikit-learn's ``check_is_fitted`` and turns its
error into :class:`NotFittedError`, which is both a :class:`~fehkit.errors.FehkitError` (so ``except FehkitError``
catches it) and scikit-learn's ``NotFittedError`` (so scikit-learn's tools recognise it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from fehkit.errors import FehkitError

#: The members of the ensemble, in the order of the prediction columns ``feh_rf``, ``feh_xgb``, ``feh_dnn``.
MEMBERS = ("rf", "xgb", "dnn")


class EnsembleError(FehkitError, ValueError):
    """A model got features, labels or settings it cannot use."""


class NotFittedError(EnsembleError, SklearnNotFittedError):
    """A model was asked to predict before it was fitted (or loaded)."""


def check_fitted(estimator: Any, attributes: Sequence[str], hint: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has every fitted attribute in ``attributes``.

    Examples
    --------
    >>> from fehkit.models import FeHEnsemble
    >>> check_fitted(FeHEnsemble(), ["weights_"], "call fit(X, y) first")
    Traceback (most recent call last):
    ...
    fehkit.models.base.NotFittedError: this FeHEnsemble is not fitted yet: call fit(X, y) first
    """
    try:
        check_is_fitted(estimator, list(attributes))
    except SklearnNotFittedError:
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: {hint}") from None
