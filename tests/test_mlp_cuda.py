"""The MLP member on a GPU: the same code, selected by ``device`` (skipped where CUDA is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fehkit.models.mlp import TorchMLPRegressor

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_mlp_trains_and_predicts_on_cuda_like_on_cpu():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 20)).astype(np.float32)
    X[rng.uniform(size=X.shape) < 0.05] = np.nan  # masked lines: the missing-value path runs on the GPU too
    y = np.nan_to_num(X[:, :3]) @ np.array([0.5, -1.0, 0.2]) + 0.05 * rng.normal(size=600)
    gpu = TorchMLPRegressor(hidden=(64, 32), max_epochs=60, device="cuda").fit(X, y)
    assert next(gpu.module_.parameters()).is_cuda
    pred = gpu.predict(X)
    assert np.mean(np.abs(pred - y)) < 0.15
    cpu = gpu.to("cpu").predict(X)  # the same weights on the CPU give the same numbers
    np.testing.assert_allclose(cpu, pred, atol=1e-4)
