"""Neural-network member: a PyTorch multilayer perceptron (256-128-64, ReLU, MSE loss, early stopping).

Inputs are standardized with the training set's mean and scale; a missing value (NaN: a masked line) becomes the
mean (0 after standardizing) and a 0/1 indicator column tells the network it was missing. Training stops when the
validation loss has not improved for ``patience`` epochs and the best weights are kept. The same code runs on CPU
or CUDA through ``device``; weights are saved as safetensors (:mod:`fehkit.models.persist`). ``fit`` can report
each epoch's training and validation loss to a callback (:class:`EpochRecord`), e.g. to draw the loss curves live;
the callback only reads numbers the loop computes anyway, so training is the same with or without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from fehkit.models.base import check_fitted

#: The method's defaults; override through ``FeHEnsemble(dnn=...)``.
DNN_DEFAULTS: dict[str, Any] = {"hidden": (256, 128, 64), "lr": 1e-3, "weight_decay": 1e-4,
                                "batch_size": 64, "max_epochs": 400, "patience": 10, "val_fraction": 0.15,
                                "dropout": 0.0, "device": "cpu"}


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of :meth:`TorchMLPRegressor.fit`, as its ``epoch_callback`` receives it.

    Losses are mean squared errors of the standardized target (the target minus its training mean, divided by its
    training standard deviation): 1.0 is what predicting the mean would give.

    Attributes
    ----------
    epoch : int
        The epoch just finished, counted from 1.
    train_loss : float
        Mean loss over the epoch's mini-batches (each weighted by its size), as the optimizer saw them while the
        weights changed.
    val_loss : float
        Loss on the validation rows after the epoch: the number early stopping watches.
    best_epoch : int
        The epoch with the lowest validation loss so far: the weights ``fit`` keeps if training stopped now.
    last : bool
        True on the epoch after which training stops (``patience`` epochs without improvement, or ``max_epochs``).
    fit : str
        Which fit this is, where a caller trains several (:meth:`fehkit.models.FeHEnsemble.fit` sets
        ``"fold 2 of 5"`` or ``"final fit"``); empty otherwise.
    """

    epoch: int
    train_loss: float
    val_loss: float
    best_epoch: int
    last: bool
    fit: str = ""


#: What ``fit`` calls after each epoch.
EpochCallback = Callable[[EpochRecord], None]


def build_network(n_in: int, hidden: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU(-dropout) layers of the given widths, then one linear output that starts at zero.

    A zero output layer makes the untrained network predict the mean target: for the ensemble's residual target
    that is the classical abundance itself, so training starts from the physics and early stopping keeps what
    the data support.
    """
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    out = nn.Linear(width, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


class TorchMLPRegressor(RegressorMixin, BaseEstimator):
    """A scikit-learn regressor around a torch MLP (``get_params``, ``set_params``, ``clone`` and ``score`` work).

    Parameters
    ----------
    hidden : sequence of int
        Hidden layer widths (default 256, 128, 64).
    lr, weight_decay : float
        Adam learning rate and L2 weight decay.
    batch_size, max_epochs, patience : int
        Mini-batch size, epoch limit, and epochs without validation improvement before stopping.
    dropout : float
        Dropout probability after each hidden layer (0: none).
    val_fraction : float
        Share of the training rows held out for early stopping when ``fit`` gets no ``X_val``.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    seed : int
        Seeds the weight initialization, the shuffling and the validation split.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3)).astype(np.float32)
    >>> y = X @ np.array([0.5, -1.0, 0.2])
    >>> m = TorchMLPRegressor(hidden=(32, 16), max_epochs=200).fit(X, y)
    >>> bool(np.mean(np.abs(m.predict(X) - y)) < 0.1)
    True
    """

    def __init__(self, hidden: Sequence[int] = (256, 128, 64), lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 64, max_epochs: int = 400, patience: int = 10, val_fraction: float = 0.15,
                 dropout: float = 0.0, device: str = "cpu", seed: int = 0) -> None:
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.dropout = dropout
        self.device = device
        self.seed = seed

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN is a missing value: imputed, with an indicator column
        return tags

    # ---- fitting ----------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, *, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, epoch_callback: EpochCallback | None = None) -> TorchMLPRegressor:
        """Fit on (X, y); stop early on (X_val, y_val), or on a held-out ``val_fraction`` of the rows.

        ``epoch_callback``, if given, is called after every epoch with an :class:`EpochRecord` (the losses, the
        best epoch so far, whether training stops there). The losses are recorded either way, in ``history_``
        (validation) and ``train_history_`` (training); ``best_epoch_`` is the epoch whose weights are kept.
        """
        X = np.asarray(X, np.float32)
        y = np.asarray(y, np.float32).ravel()
        rng = np.random.default_rng(self.seed)
        if X_val is None:
            order = rng.permutation(len(X))
            n_val = max(1, int(round(self.val_fraction * len(X))))
            X_val, y_val = X[order[:n_val]], y[order[:n_val]]
            X, y = X[order[n_val:]], y[order[n_val:]]
        self.x_mean_ = np.nan_to_num(np.nanmean(X, axis=0)).astype(np.float32)
        scale = np.nan_to_num(np.nanstd(X, axis=0))
        self.x_scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        self.missing_cols_ = np.flatnonzero(np.isnan(X).any(axis=0) | np.isnan(np.asarray(X_val)).any(axis=0))
        self.y_mean_ = float(np.mean(y))
        self.y_scale_ = float(np.std(y)) or 1.0
        self.n_features_in_ = X.shape[1]

        torch.manual_seed(self.seed)
        dev = torch.device(self.device)
        net = build_network(self._n_inputs(), self.hidden, self.dropout).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        xt, yt = self._tensor(X, dev), torch.as_tensor((y - self.y_mean_) / self.y_scale_, device=dev)
        xv = self._tensor(np.asarray(X_val, np.float32), dev)
        yv = torch.as_tensor((np.asarray(y_val, np.float32).ravel() - self.y_mean_) / self.y_scale_, device=dev)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        best, best_state, waited, self.history_, self.train_history_ = np.inf, None, 0, [], []
        best_epoch = 0
        for epoch in range(1, int(self.max_epochs) + 1):
            net.train()
            # summed on the device and read once per epoch: no extra host-device synchronization per batch
            seen = torch.zeros((), device=dev)
            for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                idx = idx.to(dev)
                opt.zero_grad()
                loss = torch.mean((net(xt[idx]).squeeze(1) - yt[idx]) ** 2)
                loss.backward()
                opt.step()
                seen += loss.detach() * len(idx)
            net.eval()
            with torch.no_grad():
                val = float(torch.mean((net(xv).squeeze(1) - yv) ** 2))
            self.history_.append(val)
            self.train_history_.append(float(seen) / len(xt))
            stop = False
            if val < best - 1e-6:
                best, waited, best_epoch = val, 0, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                stop = waited >= self.patience
            if epoch_callback is not None:
                epoch_callback(EpochRecord(epoch, self.train_history_[-1], val, best_epoch,
                                           stop or epoch == int(self.max_epochs)))
            if stop:
                break
        net.load_state_dict(best_state)
        self.module_ = net.eval()
        self.n_epochs_ = len(self.history_)
        self.best_epoch_ = best_epoch
        return self

    # ---- prediction ----------------------------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for each row of X: (n,) float64."""
        check_fitted(self, ["module_"], "call fit(X, y) first")
        dev = next(self.module_.parameters()).device
        with torch.no_grad():
            out = self.module_(self._tensor(np.asarray(X, np.float32), dev)).squeeze(1)
        return out.cpu().numpy().astype(float) * self.y_scale_ + self.y_mean_

    def to(self, device: str) -> TorchMLPRegressor:
        """Move the network to another device (for inference)."""
        self.device = device
        self.module_ = self.module_.to(torch.device(device))
        return self

    def _n_inputs(self) -> int:
        return int(self.n_features_in_ + len(self.missing_cols_))

    def _tensor(self, X: np.ndarray, dev: torch.device) -> torch.Tensor:
        z = (X - self.x_mean_) / self.x_scale_
        missing = np.isnan(z)
        ind = missing[:, self.missing_cols_].astype(np.float32)
        z = np.where(missing, 0.0, z).astype(np.float32)
        return torch.as_tensor(np.concatenate([z, ind], axis=1), device=dev)
