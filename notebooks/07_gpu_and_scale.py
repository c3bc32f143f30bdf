# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # GPU and scale: `fehkit.infer` on a CPU or a GPU, then a catalogue on a Dask cluster
#
# **All spectra here are SYNTHETIC** (simulated EMP stars), and so is the model: the speeds are what fehkit does with any spectrum, but no accuracy shown here is about survey data.
#
# A survey recalibration runs the same path on 10^5-10^6 spectra. fehkit has one call for it, `fehkit.infer(spectra, model, params, device="auto")`: on a machine with a CUDA GPU it runs the continuum fit, the EW fits, the classical method and the three members as torch tensor operations on the GPU; without one, NumPy and compiled (numba) kernels on every CPU core. For catalogues bigger than one machine, `fehkit.batch.run_catalog` spreads chunks of files over a Dask cluster and writes Parquet part by part, so an interrupted run resumes where it stopped.
#
# On a GPU JupyterHub install the CUDA build of torch before fehkit (see the README); nothing in this notebook changes: `device="auto"` finds the GPU.

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bokeh.io import output_notebook, show
from bokeh.plotting import figure
from bokeh.resources import INLINE

from fehkit import infer
from fehkit.infer import resolve_device
from fehkit.models import FeHEnsemble
from fehkit.synth import make_benchmark
from fehkit.training import reference_params, spectra_features

output_notebook(INLINE, hide_banner=True)
device = resolve_device("auto")
print("torch", torch.__version__, "| CUDA GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "| device='auto' ->", device)

# %% [markdown]
# ## A small model
#
# A real recalibration loads a trained model folder (`FeHEnsemble.load("fehkit-demo/model")`). To run anywhere in a few minutes, this notebook trains a small one on 300 synthetic stars (fewer and shallower trees, a short MLP run than `fehkit demo` uses). The first call also compiles fehkit's CPU kernels (~30 s once per installation; they are cached on disk).

# %%
train = make_benchmark(300, seed=71)
feats = spectra_features(train.batch, reference_params(train.truth))
model = FeHEnsemble(rf={"n_estimators": 60, "max_depth": 10}, xgb={"n_estimators": 80},
                    dnn={"max_epochs": 30, "hidden": (64, 32)}, n_folds=3, seed=1)
model.fit(feats, train.truth["feh_ref"].to_numpy(float))
workdir = Path(tempfile.mkdtemp(prefix="fehkit-scale-"))
model.save(workdir / "model", card={"synthetic": True})
print("trained on", len(train.truth), "SYNTHETIC stars; saved to", workdir / "model")

# %% [markdown]
# ## Throughput on this machine
#
# 2,000 new synthetic spectra, in memory. Each call is timed in the cell; the first lines print what ran. `engine="numpy"` is the CPU path (compiled kernels on every core); on a GPU, `device="cuda"` runs the torch engine. Without a GPU the torch engine still runs on CPU tensors (the same code the GPU runs, much slower on a CPU than the compiled kernels), here on 100 spectra to show that it gives the same numbers.

# %%
sim = make_benchmark(2000, seed=72)
params = reference_params(sim.truth)


def timed(**kwargs: object) -> tuple:
    """Run infer on the 2,000 spectra; return the table and spectra per second."""
    n = kwargs.pop("n", sim.batch.n_spectra)
    batch, rows = sim.batch.select(np.arange(n)), params.iloc[:n]
    start = time.perf_counter()
    table = infer(batch, model, rows, progress=False, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return table, n / (time.perf_counter() - start)


infer(sim.batch.select(np.arange(20)), model, params.iloc[:20], device="cpu", progress=False)  # warm up
runs = {}
cpu_table, runs["CPU (numpy engine)"] = timed(device="cpu")
if torch.cuda.is_available():
    infer(sim.batch.select(np.arange(20)), model, params.iloc[:20], device="cuda", progress=False)  # warm up
    gpu_table, runs["GPU (torch engine)"] = timed(device="cuda")
    diff = np.nanmax(np.abs(gpu_table["feh"] - cpu_table["feh"]))
    print(f"GPU against CPU: largest |difference| in [Fe/H] {diff:.1e} dex (float32 on the GPU)")
else:
    torch_table, runs["CPU (torch engine, 100 spectra)"] = timed(device="cpu", engine="torch", dtype=torch.float64,
                                                                  n=100)
    diff = np.nanmax(np.abs(torch_table["feh"] - cpu_table["feh"].iloc[:100]))
    print(f"no GPU here; torch engine on CPU tensors against the numpy engine: largest |difference| {diff:.1e} dex")
for name, rate in runs.items():
    print(f"{name:<34} {rate:>9,.0f} spectra/s  ({1e3 / rate:.2f} ms a spectrum)")

# %%
names = list(runs)
fig = figure(y_range=names[::-1], height=80 + 40 * len(names), sizing_mode="stretch_width", max_width=800,
             title="fehkit.infer throughput on this machine (SYNTHETIC spectra)", x_axis_label="spectra per second",
             toolbar_location=None)
fig.hbar(y=names, right=[runs[k] for k in names], height=0.6, color="#4c72b0")
show(fig)

# %% [markdown]
# The table is the one `fehkit predict` writes: [Fe/H] with its error, the upper limit where there is no detectable iron, each member's value, the classical one, and a flag with its reason.

# %%
cpu_table[["star_id", "feh", "feh_err", "feh_upper", "feh_cog", "n_lines", "flag"]].head()

# %% [markdown]
# ## A catalogue on a Dask cluster
#
# `run_catalog` takes a list of files or a table (a `path` column and the stellar parameters), reads and measures them in chunks on the workers, and writes `parts/part-NNNNN.parquet` as each chunk finishes, then `results.parquet` and `run.json`. Rerun it on the same folder and the finished parts are reused. Without a `client` it starts a `LocalCluster` (here 2 workers) and prints its dashboard link: open it to watch the tasks. On a real cluster pass the scheduler's address (`client="tcp://host:8786"`, or `fehkit batch --scheduler tcp://host:8786` in a terminal).

# %%
from fehkit.batch import run_catalog
from fehkit.io import write_apstar

files = write_apstar(sim.batch.select(np.arange(200)), workdir / "spectra")
catalog = params.iloc[:200].assign(path=[str(f) for f in files], star_id=sim.truth["star_id"].iloc[:200].to_numpy())
run = run_catalog(catalog, workdir / "model", out=workdir / "batch", chunk_size=50, workers=2)  # prints the link
info = run.info
print(f"{info['n']} SYNTHETIC spectra in {info['n_chunks']} chunks on {info['workers']} workers: {info['seconds']:.1f} s, "
      f"{info['spectra_per_s_per_worker']:.0f} spectra/s per worker")
run.results[["star_id", "feh", "feh_err", "flag", "error"]].head()

# %% [markdown]
# Every star comes back exactly once, and its [Fe/H] is what `infer` gave in memory (the files store the flux as float32, so the numbers agree to that rounding):

# %%
assert sorted(run.results["star_id"]) == sorted(catalog["star_id"])
merged = run.results.merge(cpu_table[["star_id", "feh"]], on="star_id", suffixes=("_batch", "_memory"))
print("largest |difference|:", f"{np.nanmax(np.abs(merged['feh_batch'] - merged['feh_memory'])):.1e} dex")

# %% [markdown]
# ## Exercise: how long would 10^6 spectra take?
#
# Each worker measured `spectra_per_s_per_worker` spectra a second while it worked (reading the files included). Estimate the hours that 10^6 spectra need on 64 such workers (ignore start-up and staging the files). Replace the value of `hours` with your formula of `info["spectra_per_s_per_worker"]`; the cell checks it.

# %%
hours = 1e6 / (64 * info["spectra_per_s_per_worker"]) / 3600  # your answer here
expected = 1e6 / (64 * info["spectra_per_s_per_worker"]) / 3600
assert abs(hours - expected) < 1e-3 * expected, f"{hours:.3f} h is not it: per worker x 64 workers x 3600 s"
print(f"10^6 spectra on 64 workers: {hours:.2f} h ({hours * 64:.1f} worker-hours)")

# %% [markdown]
# The model, the files and the batch folder were written to a temporary folder; remove it:

# %%
import shutil

shutil.rmtree(workdir)
