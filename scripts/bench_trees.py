"""Rows per second: the forest and the boosted trees as torch tensors vs scikit-learn's and XGBoost's predict.

Fits fehkit's members with their default settings (RF_DEFAULTS: 500 trees of depth 12; XGB_DEFAULTS: 400 trees of
depth 4) on random data with NaNs, then times predict on --rows rows (best of --repeat), on the CPU and, where
CUDA is available, on the GPU (synchronized; the rows already on the device).

    .venv/bin/python scripts/bench_trees.py [--rows 10000] [--features 40] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from fehkit.models.boosting import make_boosting
from fehkit.models.forest import make_forest
from fehkit.models.trees import TensorTrees


def best_time(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # scikit-learn's own forest internals warn about joblib's config propagation once per tree here: not ours
    warnings.filterwarnings("ignore", message=".*sklearn.utils.parallel.delayed.*")

    rng = np.random.default_rng(0)

    def data(n: int) -> np.ndarray:
        X = rng.normal(size=(n, args.features)).astype(np.float32)
        X[rng.uniform(size=X.shape) < 0.05] = np.nan
        return X

    X, Xp = data(args.train), data(args.rows)
    Z = np.nan_to_num(X)
    y = Z[:, 0] - 0.5 * Z[:, 1] ** 2 + np.sin(3 * Z[:, 2]) + 0.1 * rng.normal(size=len(X))
    rf, xgbm = make_forest(0).fit(X, y), make_boosting(0).fit(X, y)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rows} rows x {args.features} "
          f"features, 5% NaN")
    x64 = torch.from_numpy(Xp.astype(np.float64))
    for name, model, trees in (("forest (500 x depth 12)", rf, TensorTrees.from_sklearn_forest(rf)),
                               ("xgboost (400 x depth 4)", xgbm, TensorTrees.from_xgboost(xgbm))):
        lib = best_time(lambda m=model: m.predict(Xp), args.repeat)
        ten = best_time(lambda t=trees: t(x64), args.repeat)
        diff = np.abs(trees(x64).numpy() - model.predict(Xp)).max()
        print(f"{name}: {trees}")
        print(f"  library predict   {args.rows / lib:12,.0f} rows/s")
        print(f"  tensor, CPU       {args.rows / ten:12,.0f} rows/s  ({lib / ten:.2f}x; max diff {diff:.2g})")
        if torch.cuda.is_available():
            gpu, xg = trees.to("cuda"), x64.cuda()

            def on_gpu(g=gpu, x=xg) -> None:
                g(x)
                torch.cuda.synchronize()

            t = best_time(on_gpu, args.repeat)
            print(f"  tensor, CUDA      {args.rows / t:12,.0f} rows/s  ({lib / t:.2f}x)")


if __name__ == "__main__":
    main()
