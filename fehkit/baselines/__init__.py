"""Peer methods fehkit is compared against: established data-driven label estimators, wrapped batch-first.

Each peer trains on the same continuum-normalized spectra and reference labels as fehkit and predicts the same
labels, so that a benchmark can put their [Fe/H] side by side. The wrapped packages are optional
(``pip install "fehkit[peers]"``) and imported only when a peer is trained.
"""

from fehkit.baselines.cannon import CannonError, CannonPeer, fit_cannon, predict_cannon

__all__ = ["CannonError", "CannonPeer", "fit_cannon", "predict_cannon"]
