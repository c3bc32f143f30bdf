"""One call from spectra to [Fe/H] on one device: :func:`infer`.

The same path as ``fehkit predict`` (:func:`fehkit.training.predict_spectra`), chunk by chunk:

1. read the files of a chunk: with more than one chunk, later chunks are read ahead in other processes while
   this one measures the current chunk (astropy's FITS parsing is mostly Python, so threads would share one core);
2. normalize the continuum (:func:`fehkit.continuum.normalize`);
3. measure the EWs (:func:`fehkit.ew.measure_ew`);
4. build the features and run the classical method (:func:`fehkit.features.build_features`): its joint
   likelihoods, their parameter shifts and second physics, and the per-line inversions;
5. run the three members: the forest and the boosted trees as packed tensors
   (:class:`fehkit.models.trees.TensorTrees`), the MLP as it is;
6. fuse them, and compute errors and flags with :meth:`fehkit.models.FeHEnsemble.predict` -- the same code as the
   scikit-learn/XGBoost path, so the two agree to float rounding (tested).

On a GPU (``device="auto"`` takes CUDA when torch sees one) steps 2-5 run as torch tensor operations on it
(``engine="torch"``); what stays on the CPU is reading the files, interpolating each star's curve of growth in the
physics grid and the sigma-clipped median of the per-line values (microseconds a star), and the final table.
Without a GPU the CPU runs NumPy and the compiled kernels (``engine="numpy"``), faster there than torch; the torch
engine also runs on the CPU, which is how it is tested against the NumPy one.

While a chunk is measured, Python's cyclic garbage collector is paused (:data:`_collector_paused`): the chunk's
short-lived containers would otherwise set off full collections over every object of the process.

The module itself is callable: ``fehkit.infer(spectra, model, params, device="auto")`` is :func:`infer`.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fehkit.errors import UsageError
from fehkit.models.ensemble import FeHEnsemble
from fehkit.spectra import SpectrumBatch
from fehkit.threads import SharedSetting

__all__ = ["CompiledMembers", "TorchMembers", "infer", "infer_chunks", "resolve_device"]

#: Spectra per chunk by default: bounds the memory (~0.3 MB a spectrum through the path) and feeds a GPU well.
DEFAULT_BATCH_SIZE = 2048
#: Files per chunk when ``infer`` reads files and no ``batch_size`` is given: small enough that reading
#: processes start on the second chunk early, large enough that a chunk still runs the kernels efficiently.
FILE_BATCH_SIZE = 256


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU; any other torch device name as given (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"device {device!r}: {err}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: torch sees no CUDA GPU here; expected 'cpu' or 'auto'")
    return dev


class TorchMembers:
    """The ensemble's members as torch modules on one device: what :meth:`FeHEnsemble.predict` needs of them.

    Parameters
    ----------
    ensemble : FeHEnsemble
        A fitted or loaded ensemble.
    device : str or torch.device
        Where the members run.
    dtype : torch.dtype
        Arithmetic of the leaf sums and the comparison inputs of the trees (float64 reproduces scikit-learn and
        XGBoost to float rounding; float32 is faster on a GPU). The MLP runs in float32 as it was trained.
    """

    def __init__(self, ensemble: FeHEnsemble, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        from fehkit.models.trees import TensorTrees

        self.device = resolve_device(device)
        self.dtype = dtype
        self.trees: dict[str, TensorTrees] = {}
        self.mlp = None
        for name, est in ensemble.members_.items():
            if name in ("rf", "xgb"):  # a copy on the device of the trees packed once per fitted model
                self.trees[name] = _packed_trees(name, est).to(self.device)
            elif name == "dnn":  # a copy on the device: the caller's model stays where it was
                on = next(est.module_.parameters()).device
                self.mlp = est if on == self.device else copy.deepcopy(est).to(str(self.device))
        self.names = tuple(ensemble.members_)

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's raw output (what its own ``predict`` returns) for the feature matrix ``X``."""
        out: dict[str, np.ndarray] = {}
        if self.trees:
            xt = torch.as_tensor(np.asarray(X, np.float64), device=self.device, dtype=self.dtype)
            with torch.no_grad():
                for name, trees in self.trees.items():
                    out[name] = trees.forward(xt, dtype=self.dtype).double().cpu().numpy()
        if self.mlp is not None:
            out["dnn"] = self.mlp.predict(X)
        return {m: out[m] for m in self.names}


class CompiledMembers:
    """The forest and the boosted trees through the compiled CPU walk, the MLP as it is: the CPU member predictor.

    The trees are packed as for :class:`TorchMembers` and walked by
    :meth:`fehkit.models.trees.TensorTrees.predict_compiled`: the libraries' leaves, their values summed in
    float64 (scikit-learn's forest to ~1e-14; XGBoost, which sums in float32, to ~1e-6). For a whole batch the
    forest runs several times faster than scikit-learn's own ``predict``, and for one spectrum in a fraction of a
    millisecond where scikit-learn's threads take milliseconds. Needs numba.

    Parameters
    ----------
    ensemble : FeHEnsemble
        A fitted or loaded ensemble.
    """

    def __init__(self, ensemble: FeHEnsemble) -> None:
        self.ensemble = ensemble
        self.trees: dict[str, Any] | None = None  # packed at the first call

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's raw output (what its own ``predict`` returns) for the feature matrix ``X``."""
        members = self.ensemble.members_
        if self.trees is None:
            self.trees = {name: _packed_trees(name, est) for name, est in members.items() if name in ("rf", "xgb")}
        from fehkit.models.trees import walk_columns

        Xa = np.asarray(X, np.float64)
        columns = walk_columns(Xa) if self.trees else None  # what every tree member reads, made once
        out = {name: trees.predict_compiled(Xa, columns=columns) for name, trees in self.trees.items()}
        if "dnn" in members:
            out["dnn"] = members["dnn"].predict(X)
        return {m: out[m] for m in members}


#: Packed trees of fitted members, by member: packing 900 trees takes a few hundred ms, so it is done once per
#: fitted model, not at every infer call. An entry holds the fitted trees it was made from (the forest's tree_
#: objects, XGBoost's booster), and is used only while the member still has those very objects: a refit makes new
#: ones, and so a new entry.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packed_trees(name: str, est: Any) -> Any:
    """Return the :class:`~fehkit.models.trees.TensorTrees` of the member ``name`` ("rf" or "xgb"), packed once."""
    from fehkit.models.trees import TensorTrees

    if name == "rf":
        objects, extra = tuple(tree.tree_ for tree in est.estimators_), ()
    else:
        booster = est.get_booster() if hasattr(est, "get_booster") else est
        objects, extra = (booster,), (booster.num_boosted_rounds(), getattr(est, "best_iteration", None))
    cached = _PACKED.get(est)
    if cached is not None and cached[1] == extra and len(cached[0]) == len(objects) and all(
            a is b for a, b in zip(cached[0], objects, strict=True)):
        return cached[2]
    trees = TensorTrees.from_sklearn_forest(est) if name == "rf" else TensorTrees.from_xgboost(est)
    _PACKED[est] = (objects, extra, trees)
    return trees


def infer(
    spectra: SpectrumBatch | str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    model: FeHEnsemble | str | os.PathLike[str],
    params: pd.DataFrame | Mapping[str, Any] | Callable[[pd.DataFrame], pd.DataFrame],
    *,
    device: str = "auto",
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
    read_threads: int | None = None,
    read_processes: int | None = None,
    trees: str = "auto",
    engine: str = "auto",
) -> pd.DataFrame:
    """[Fe/H] of every spectrum: the ``fehkit predict`` table, computed chunk by chunk on one device.

    Parameters
    ----------
    spectra : SpectrumBatch, path or iterable of paths
        Spectra in memory, or APOGEE files (read a chunk at a time, with ``read_threads`` threads).
    model : FeHEnsemble or path
        A fitted ensemble or a saved model folder.
    params : DataFrame, mapping or function
        One row per spectrum, in order: ``teff``, ``logg``, ``vmic`` (and optionally ``alpha_fe``, ``teff_err``,
        ``logg_err``, ``vmic_err``), as for :func:`fehkit.training.predict_spectra`. Or a function called with
        each chunk's ``meta`` (``star_id``, ``file``, ... as read) that returns those rows for the chunk's spectra,
        in order: a table matched on star ids that are only known once the files are read (``fehkit predict``).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    batch_size : int, optional
        Spectra per chunk (default 2048 in memory, :data:`FILE_BATCH_SIZE` when reading files).
    dtype : torch.dtype, optional
        Arithmetic of the trees and of the torch engine's EW fits (default float64 on the CPU, float32 on a GPU;
        the compiled CPU kernels always fit in float64). float64 on a GPU gives the CPU's numbers to rounding.
    progress : bool, optional
        A tqdm bar over the spectra (default: when there is more than one chunk).
    read_threads : int, optional
        Threads reading the files of a chunk when no reading process is used (default: the number of CPUs, at
        most 8).
    read_processes : int, optional
        Processes reading the next chunks of files ahead while this one measures the current chunk. Default: one
        per CPU (at most 8; reading a file takes ~10 times as long as measuring it) when the files make more than
        one chunk, none otherwise, and none inside a daemon process (a Dask or multiprocessing worker, which may
        not start processes of its own). ``0``: read each chunk in threads, in this process. A reading process's
        warnings are raised again here.
    trees : {"auto", "tensor", "compiled", "library"}
        How the forest and the boosted trees run: as torch tensors on the device (``"tensor"``), through fehkit's
        compiled CPU walk (``"compiled"``, :class:`CompiledMembers`; needs numba), or through scikit-learn and
        XGBoost themselves on the CPU (``"library"``). ``"auto"``: tensors on a GPU; on the CPU the compiled walk
        (several times faster than scikit-learn's forest) when numba is there, else the libraries. All give the
        same numbers (to float rounding; tested).
    engine : {"auto", "torch", "numpy"}
        How the continuum, the EW fits and the classical method run: torch tensor operations on the device
        (``"torch"``), or NumPy and the compiled kernels on the CPU (``"numpy"``). ``"auto"``: torch on a GPU,
        NumPy on the CPU. The EW fits agree to float32 rounding, the rest to float64 rounding (tested).

    Returns
    -------
    DataFrame
        :data:`fehkit.training.PREDICT_COLUMNS`, one row per spectrum in input order.

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> from fehkit.training import reference_params
    >>> sim = make_benchmark(60, seed=4)
    >>> # infer(sim.batch, "fehkit-demo/model", reference_params(sim.truth), device="auto")
    """
    from fehkit.training import PREDICT_COLUMNS

    if batch_size is not None and int(batch_size) < 1:
        raise UsageError(f"batch_size = {batch_size}: expected a positive number of spectra per chunk")
    run = _Runner(model, device, dtype, trees, engine)
    if isinstance(spectra, SpectrumBatch):
        n, paths = spectra.n_spectra, None
    else:
        paths = [Path(spectra)] if isinstance(spectra, str | os.PathLike) else [Path(p) for p in spectra]
        n = len(paths)
    batch_size = int(batch_size or (DEFAULT_BATCH_SIZE if paths is None else FILE_BATCH_SIZE))
    if callable(params):
        match = params
    else:
        table = pd.DataFrame(params).reset_index(drop=True)
        if len(table) != n:
            raise UsageError(f"params: {len(table)} rows for {n} spectra; expected one row per spectrum, in order")
        match = None
    starts = range(0, n, int(batch_size))
    show = len(starts) > 1 if progress is None else progress
    bar = _bar(n, show)
    spans = [(start, min(start + int(batch_size), n)) for start in starts]
    parts = []
    if paths is None:
        # one chunk of the whole batch is the batch itself (the path reads it and writes new arrays), not a copy
        chunks: Iterable[SpectrumBatch] = (spectra if (a, b) == (0, n) else spectra.select(np.arange(a, b))
                                           for a, b in spans)
    else:
        chunks = _read_chunks([paths[a:b] for a, b in spans], read_threads, read_processes)
    for (start, stop), batch in zip(spans, chunks, strict=True):
        rows = table.iloc[start:stop].reset_index(drop=True) if match is None else _matched(match, batch)
        parts.append(run(batch, rows))
        bar.update(stop - start)
    bar.close()
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("star_id", "flag", "flag_reason") else float)
                             for c in PREDICT_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def infer_chunks(
    chunks: Iterable[tuple[SpectrumBatch, pd.DataFrame]],
    model: FeHEnsemble | str | os.PathLike[str],
    *,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    trees: str = "auto",
    engine: str = "auto",
    progress: bool = False,
    total: int | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream: for each ``(batch, params)`` of ``chunks``, yield its results table (as :func:`infer` makes it).

    Only one chunk is held at a time, so a catalogue of any size runs in the memory of one chunk (plus the
    model): e.g. a generator that reads or simulates spectra a chunk at a time. ``total`` (spectra) sizes the
    progress bar. ``device``, ``dtype``, ``trees`` and ``engine`` as for :func:`infer`.
    """
    run = _Runner(model, device, dtype, trees, engine)
    bar = _bar(total, progress)
    for batch, params in chunks:
        params = pd.DataFrame(params).reset_index(drop=True)
        if len(params) != batch.n_spectra:
            raise UsageError(f"params: {len(params)} rows for a chunk of {batch.n_spectra} spectra; expected one "
                             "row per spectrum, in order")
        yield run(batch, params)
        bar.update(batch.n_spectra)
    bar.close()


class _Runner:
    """The model on its device, and the path from one chunk of spectra to its results table."""

    def __init__(self, model: FeHEnsemble | str | os.PathLike[str], device: str, dtype: torch.dtype | None,
                 trees: str, engine: str = "auto") -> None:
        from fehkit.models.trees import compiled_available

        if trees not in ("auto", "tensor", "compiled", "library"):
            raise UsageError(f"trees {trees!r}: expected 'auto', 'tensor', 'compiled' or 'library'")
        if engine not in ("auto", "torch", "numpy"):
            raise UsageError(f"engine {engine!r}: expected 'auto', 'torch' or 'numpy'")
        self.device = resolve_device(device)
        self.ensemble = model if isinstance(model, FeHEnsemble) else FeHEnsemble.load(model, device=str(self.device))
        on_cpu = self.device.type == "cpu"
        if trees == "auto":
            trees = "tensor" if not on_cpu else "compiled" if compiled_available() else "library"
        if trees == "compiled" and not (on_cpu and compiled_available()):
            raise UsageError(f"trees 'compiled' on {self.device}: the compiled walk runs on the CPU and needs numba "
                             "(FEHKIT_NUMBA not 0); expected 'tensor' or 'library' here")
        default = torch.float64 if on_cpu else torch.float32
        self.members: TorchMembers | CompiledMembers | None = (
            TorchMembers(self.ensemble, self.device, dtype or default) if trees == "tensor"
            else CompiledMembers(self.ensemble) if trees == "compiled" else None)
        torch_engine = engine == "torch" or (engine == "auto" and self.device.type != "cpu")
        self.ew_backend = "torch" if torch_engine else "numpy"
        self.float64 = (dtype or default) == torch.float64

    def __call__(self, batch: SpectrumBatch, params: pd.DataFrame) -> pd.DataFrame:
        from fehkit.training import predict_spectra

        with _collector_paused():
            return predict_spectra(self.ensemble, batch, params, member_predictor=self.members,
                                   backend=self.ew_backend, device=str(self.device), float64=self.float64)


def _pause_collector() -> Callable[[], None] | None:
    """Pause Python's cyclic garbage collector (as :mod:`timeit` does while it times); return what restarts it.

    A chunk makes no reference cycles to speak of, but its many short-lived containers (pandas objects, each
    star's lists of flag reasons) would set off a full collection every few chunks, which walks every object of
    the process: ~0.4 million once torch, numba and a model are loaded, ~0.2 s on a 2-core machine. A collector
    that was off stays off (None: nothing to restart).
    """
    if not gc.isenabled():
        return None
    gc.disable()
    return gc.enable


#: ``with _collector_paused():`` pauses the collector inside, restored after; calls from several threads at once
#: share one pause, begun by the first to enter and ended by the last to leave.
_collector_paused = SharedSetting(_pause_collector)


def _matched(match: Callable[[pd.DataFrame], pd.DataFrame], batch: SpectrumBatch) -> pd.DataFrame:
    """Return the parameters ``match`` gives a chunk: one row per spectrum (checked)."""
    rows = pd.DataFrame(match(batch.meta)).reset_index(drop=True)
    if len(rows) != batch.n_spectra:
        raise UsageError(f"params: the function gave {len(rows)} rows for a chunk of {batch.n_spectra} spectra; "
                         "expected one row per spectrum, in order")
    return rows


def _read_chunks(chunks: Sequence[Sequence[Path]], threads: int | None,
                 processes: int | None) -> Iterator[SpectrumBatch]:
    """Yield each chunk of files read into one batch, in order (a bad file raises, naming it).

    With reading processes, up to one chunk per process is read ahead while the caller works on the current one.
    Otherwise each chunk is read when asked for, in threads; their warnings reach the caller as any warning does
    (Python's warning capture is one global state, not a thing for threads to enter and leave).
    """
    cpus = os.cpu_count() or 1
    if not chunks:
        return
    if processes is None:
        daemon = multiprocessing.current_process().daemon
        processes = 0 if daemon or len(chunks) < 2 else min(8, cpus)
    if int(processes) < 0:
        raise UsageError(f"read_processes = {processes}: expected 0 (read in this process) or more")
    if int(processes) == 0:
        for paths in chunks:
            yield _read_here(paths, threads)
        return
    # spawn, not fork: a forked copy of a process that runs torch's and BLAS's threads can hang
    from fehkit.io import read_apogee_recorded, reader_ready

    n_proc = int(processes)
    pool = ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn"))
    try:
        # A spawned process takes a second or more to start and import the readers; until one has, this process
        # reads the chunks itself, so a short run never waits for them.
        ready = [pool.submit(reader_ready) for _ in range(n_proc)]
        ahead: dict[int, Future] = {}
        for i, paths in enumerate(chunks):
            warm = sum(f.done() and f.exception() is None for f in ready)
            for j in range(i + 1, len(chunks)):  # the warm processes read the next chunks meanwhile
                if len(ahead) - (i in ahead) >= warm:
                    break
                if j not in ahead:
                    ahead[j] = pool.submit(read_apogee_recorded, list(chunks[j]))
            if i in ahead:
                batch, caught = ahead.pop(i).result()
                for message, category in caught:
                    warnings.warn(message, category, stacklevel=3)
            else:
                batch = _read_here(paths, threads)
            yield batch
    finally:  # on an error (or when the caller stops early) the chunks not yet read are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _read_here(paths: Sequence[Path], threads: int | None) -> SpectrumBatch:
    """Read files into one batch in this process, in threads (default one per CPU, at most 8), in order."""
    from fehkit.io import read_apogee

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        batches = list(pool.map(read_apogee, paths))
    return SpectrumBatch.concat(batches) if len(batches) > 1 else batches[0]


def _bar(total: int, show: bool) -> Any:
    from fehkit.models.ensemble import _progress

    return _progress(total, show, "fehkit.infer")


class _CallableModule(types.ModuleType):
    """The module, callable: ``fehkit.infer(...)`` is :func:`infer` (``from fehkit.infer import infer`` works too)."""

    def __call__(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        return infer(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
