"""[Fe/H] of a whole catalogue of spectrum files on a dask.distributed cluster: ``fehkit batch``.

:func:`run_catalog` splits a catalogue (a list of files, or a table with a path column and the stars' Teff, log g,
vmic) into chunks of rows in the catalogue's order; each chunk is one task that reads its files, predicts with
the saved model (loaded once per worker process) and writes ``OUT/parts/part-NNNNN.parquet`` atomically. At the
end the parts are joined, in the catalogue's order, into ``OUT/results.parquet``, beside ``run.json`` (counts,
time, workers, spectra per second). The table has the columns of ``fehkit predict``
(:data:`fehkit.training.PREDICT_COLUMNS`) plus ``path`` and ``error``: a file that cannot be read, or a star
without parameters, is a row with flag ``no_usable_lines``, no numbers and ``error`` saying why, never a failed
run.

A run can be interrupted (a killed worker is replaced and its task retried by distributed) and started again on
the same folder: a part that is complete -- valid Parquet holding the chunk's paths, made from the same files,
parameters and model -- is reused, so only the missing chunks are computed. ``OUT`` follows fehkit's rules for
output folders: only a folder fehkit wrote (its marker file) is ever reused or replaced.

The extra ``fehkit[dask]`` (dask.distributed and pyarrow) is needed; it is imported only when a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import FehkitError, FehkitWarning, InputTableError, UsageError
from fehkit.files import MARKER, atomic_output, check_output_folder, is_fehkit_folder, jsonable, read_marker
from fehkit.threads import THREADS_ENV
from fehkit.training import PREDICT_COLUMNS

__all__ = ["BATCH_COLUMNS", "BatchError", "BatchRun", "local_cluster", "read_catalog", "run_catalog"]

#: Columns of ``results.parquet`` and of every part: those of ``fehkit predict``, then the file and what went wrong.
BATCH_COLUMNS = (*PREDICT_COLUMNS, "path", "error")
#: Stellar-parameter columns a catalogue or a parameter table may carry (the first three are needed for a star).
PARAM_COLUMNS = ("teff", "logg", "vmic", "alpha_fe", "teff_err", "logg_err", "vmic_err")
REQUIRED_PARAMS = ("teff", "logg", "vmic")
#: File suffixes read as a catalogue table rather than as one spectrum file.
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
#: The marker kind of a batch output folder.
KIND = "batch"
#: Times distributed re-runs a chunk whose task raised (a worker that dies is replaced and its task rescheduled
#: anyway).
RETRIES = 2

_FLOAT_COLUMNS = ("feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "feh_sys")
_TEXT_COLUMNS = ("star_id", "flag", "flag_reason", "path", "error")
_ERROR_FLAG = "no_usable_lines"  # no measurement and no limit: what a row that could not be predicted is


class BatchError(FehkitError, RuntimeError):
    """A chunk of a batch run failed as a whole (after its retries), or the joined result is not the catalogue."""


@dataclass
class BatchRun:
    """What :func:`run_catalog` did.

    Attributes
    ----------
    results : DataFrame
        One row per catalogue row, in its order (:data:`BATCH_COLUMNS`), as written to ``results.parquet``.
    info : dict
        The content of ``run.json``: ``n``, ``n_chunks``, ``chunk_size``, ``chunks_computed``, ``chunks_reused``,
        ``n_errors``, ``flags``, ``seconds``, ``workers``, ``spectra_per_s``, ``spectra_per_s_per_worker``,
        ``model_synthetic`` (the model was trained on synthetic spectra), ...
    out : Path
        The output folder.
    """

    results: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    out: Path = Path()

    def __repr__(self) -> str:
        i = self.info
        return (f"BatchRun: {i.get('n')} spectra in {i.get('n_chunks')} chunks ({i.get('chunks_computed')} computed, "
                f"{i.get('chunks_reused')} reused), {i.get('n_errors')} errors, {i.get('spectra_per_s')} spectra/s on "
                f"{i.get('workers')} workers; {self.out}")


# ---------------------------------------------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------------------------------------------
def read_catalog(paths_or_table: Any, params: Any = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Turn the input of :func:`run_catalog` into one row per spectrum file, checked before any work.

    Returns ``(catalog, by_star)``: ``catalog`` has ``path`` (as given), ``abspath`` (resolved; a table's relative
    paths are relative to the table's folder, a DataFrame's to the current folder), ``star_id`` (the table's, else
    empty) and the parameter columns (NaN where unknown); ``by_star`` is the parameter table indexed by star id when
    its stars can only be matched once the files' headers are read, else None.

    Raises :class:`~fehkit.errors.InputTableError` for a table that cannot be read, lacks a path column, repeats a
    file, holds a value that is not a number or one no star has; :class:`~fehkit.errors.UsageError` for no input
    or no stellar parameters at all.
    """
    table, root, where = _input_table(paths_or_table)
    col = "path" if "path" in table else "file" if "file" in table else None
    if col is None:
        raise InputTableError(f"{where}: no path column; expected a column 'path' (or 'file') naming each spectrum "
                              f"file, found {list(table.columns)}")
    if len(table) == 0:
        raise InputTableError(f"{where}: no rows; expected one row per spectrum file")
    given = table[col]
    empty = given.isna().to_numpy() | (given.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0]) + 1
        raise InputTableError(f"{where}: column {col!r} is empty in row {row}; expected a file path in every row")
    shown = given.astype(str).tolist()
    absolute = [str((root / p).expanduser().resolve()) if not Path(p).expanduser().is_absolute()
                else str(Path(p).expanduser().resolve()) for p in shown]
    cat = pd.DataFrame({"path": shown, "abspath": absolute})
    twice = cat["abspath"].duplicated(keep=False).to_numpy()
    if twice.any():
        first = cat["abspath"][twice].iloc[0]
        rows = [int(i) + 1 for i in np.flatnonzero(cat["abspath"].to_numpy() == first)]
        raise InputTableError(f"{where}: file {shown[rows[0] - 1]} is listed {len(rows)} times (rows "
                              f"{', '.join(map(str, rows[:10]))}); expected each file once")
    cat["star_id"] = table["star_id"].fillna("").astype(str).str.strip().to_numpy() if "star_id" in table else ""
    own = [c for c in PARAM_COLUMNS if c in table]
    if own:
        lacking = [c for c in REQUIRED_PARAMS if c not in table]
        if lacking:
            raise InputTableError(f"{where}: has {', '.join(c for c in own if c in REQUIRED_PARAMS)} but no "
                                  f"{', '.join(lacking)}; expected teff, logg and vmic together")
        for c in own:
            cat[c] = _numbers(table[c], c, where, shown)
        _check_values(cat, where)
    by_star = None
    if params is not None:
        ptable, pwhere = _param_table(params)
        cat, by_star = _match_params(cat, ptable, pwhere)
    elif not own:
        raise UsageError(f"{where}: no stellar parameters; expected teff, logg, vmic columns in the table or a "
                         "parameter table (params, --params: star_id or file and teff, logg, vmic), as fehkit "
                         "predict needs them")
    for c in PARAM_COLUMNS:
        if c not in cat:
            cat[c] = np.nan
    return cat.reset_index(drop=True), by_star


def _input_table(obj: Any) -> tuple[pd.DataFrame, Path, str]:
    """Return the catalogue as (table, folder its relative paths start from, name for messages)."""
    if isinstance(obj, pd.DataFrame):
        return obj.reset_index(drop=True), Path.cwd(), "catalogue table"
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if path.name.lower().endswith(TABLE_SUFFIXES):
            return _read_table(path, "the catalogue table"), path.expanduser().resolve().parent, str(path)
        obj = [path]
    try:
        items = list(obj)
    except TypeError:
        raise UsageError(f"catalogue: {type(obj).__name__}; expected a list of spectrum files, a CSV/Parquet table "
                         "or a DataFrame with a path column") from None
    bad = [p for p in items if not isinstance(p, str | os.PathLike)]
    if bad:
        raise UsageError(f"catalogue: {bad[0]!r} is not a file path; expected a list of spectrum files")
    if not items:
        raise UsageError("catalogue: no files; expected at least one spectrum file")
    return pd.DataFrame({"path": [os.fspath(p) for p in items]}), Path.cwd(), "catalogue"


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "not found"
        raise InputTableError(f"{path}: {found}; expected {what} (CSV or Parquet)")
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, comment="#")
    except (OSError, ValueError, ImportError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InputTableError(f"{path}: cannot read {what} ({reason}); expected a CSV or Parquet table") from None


def _numbers(values: pd.Series, col: str, where: str, names: Sequence[str]) -> np.ndarray:
    """Return a column as floats (empty cells NaN); an error names the first value that is not a number."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    bad = numbers.isna().to_numpy() & values.notna().to_numpy()
    bad &= ~(values.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputTableError(f"{where}: column {col!r} holds {values.iloc[i]!r} for {names[i]} (row {i + 1}); "
                              "expected a number (or an empty cell)")
    return numbers.to_numpy()


def _check_values(table: pd.DataFrame, where: str) -> None:
    from fehkit.features import check_param_values

    ids = table["star_id"] if "star_id" in table and (table["star_id"] != "").all() else \
        table.get("path", pd.Series(range(len(table))))
    check_param_values(table[[c for c in REQUIRED_PARAMS if c in table]], where, ids=list(ids))


def _param_table(params: Any) -> tuple[pd.DataFrame, str]:
    """Read and check a parameter table as ``fehkit predict --params`` does (star_id or file; teff, logg, vmic)."""
    if isinstance(params, pd.DataFrame):
        table, where = params.reset_index(drop=True), "params"
    elif isinstance(params, str | os.PathLike):
        table, where = _read_table(Path(params), "the parameter table"), str(params)
    else:
        raise UsageError(f"params: {type(params).__name__}; expected a CSV/Parquet file or a DataFrame of stellar "
                         "parameters")
    key = "star_id" if "star_id" in table else "file" if "file" in table else None
    if key is None:
        raise InputTableError(f"{where}: expected a star_id or file column to match the spectra, found "
                              f"{list(table.columns)}")
    missing = [c for c in REQUIRED_PARAMS if c not in table]
    if missing:
        raise InputTableError(f"{where}: no column {', '.join(missing)}; expected star_id or file, and teff, logg, "
                              "vmic")
    table = table.copy()
    names = table[key].astype(str).tolist()
    for c in PARAM_COLUMNS:
        if c in table:
            table[c] = _numbers(table[c], c, where, names)
    from fehkit.features import check_param_values

    check_param_values(table[[key, *[c for c in PARAM_COLUMNS if c in table]]], where)  # also: two rows, one star
    table[key] = table[key].astype(str).str.strip() if key == "star_id" else \
        table[key].astype(str).map(lambda f: Path(f).name)
    return table, where


def _match_params(cat: pd.DataFrame, table: pd.DataFrame, where: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Fill the catalogue's missing parameters from a parameter table (on star_id, like predict, else file name)."""
    cols = [c for c in PARAM_COLUMNS if c in table]
    if "star_id" in table:
        by_star = table.set_index("star_id")[cols]
        if not (cat["star_id"] != "").all():
            return cat, by_star  # matched in the workers, once the headers give the star ids
        found = by_star.reindex(cat["star_id"].to_numpy())
    else:
        found = table.set_index("file")[cols].reindex([Path(p).name for p in cat["path"]])
    for c in cols:
        mine = cat[c].to_numpy(float) if c in cat else np.full(len(cat), np.nan)
        cat[c] = np.where(np.isfinite(mine), mine, found[c].to_numpy(float))
    return cat, None


# ---------------------------------------------------------------------------------------------------------------
# one chunk (runs in a worker)
# ---------------------------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _model(path: str, fingerprint: str) -> Any:
    """Return the saved model, loaded once per worker process (cached by path and content)."""
    key = (path, fingerprint)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from fehkit.models import FeHEnsemble

            _MODELS.clear()
            ens = FeHEnsemble.load(path)
            # one core per task: a worker is one process per core, and joblib in a dask worker process warns
            # at every call when asked for all cores (the forest's n_jobs=-1)
            for est in getattr(ens, "members_", {}).values():
                if "n_jobs" in getattr(est, "get_params", dict)():
                    est.set_params(n_jobs=1)
            _MODELS[key] = ens
        return _MODELS[key]


def _predict_chunk(model: Any, paths: Sequence[str], params: pd.DataFrame,
                   by_star: pd.DataFrame | None = None, star_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and predict one chunk: one row per path, in order (:data:`BATCH_COLUMNS` less ``path``).

    The only place where a batch run measures spectra (:func:`fehkit.infer.infer` on the worker's CPU); ``params``
    has one row per path (``teff``, ``logg``, ``vmic``, ...; NaN where unknown, then looked up in ``by_star`` by the
    header's star id). A file that cannot be read, or a star without parameters, is a row with flag
    ``no_usable_lines`` and ``error``.
    """
    from fehkit.infer import infer
    from fehkit.io import _as_batch, _id_from_name, _read_one, bad_bits_value

    n = len(paths)
    params = params.reset_index(drop=True)
    have_all = params[list(REQUIRED_PARAMS)].to_numpy(float)  # read once: a pandas row lookup per file costs ~1 ms
    teff_known = np.isfinite(params["teff"].to_numpy(float))
    bad = bad_bits_value()
    rows: list[dict[str, Any] | None] = [None] * n
    spectra: list[Any] = []  # each file's spectra, made into one batch at the end (as read_apogee does)
    good: list[int] = []
    for i, path in enumerate(paths):
        hint = star_ids[i] if star_ids is not None and star_ids[i] else _id_from_name(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FehkitWarning)
                one = _read_one(os.fspath(path), kind="auto", rows="combined", bad=bad, rv=None)
        except (FehkitError, OSError) as err:  # the path is in the row: the reason without it
            reason = getattr(err, "problem", None) or getattr(err, "strerror", None) or str(err)
            rows[i] = _error_row(hint, f"cannot read the file: {' '.join(str(reason).split())}")
            continue
        sid = str(one.records[0].get("star_id", hint))
        have = have_all[i]
        if by_star is not None and not teff_known[i] and sid in by_star.index:
            for c in by_star.columns:
                params.loc[i, c] = float(by_star.loc[sid, c])
            have = params.loc[i, list(REQUIRED_PARAMS)].to_numpy(float)
        if not np.isfinite(have).all():
            lacking = [c for c, v in zip(REQUIRED_PARAMS, have, strict=True) if not np.isfinite(v)]
            rows[i] = _error_row(sid, f"no {', '.join(lacking)} for star {sid}; expected teff, logg, vmic in the "
                                      "catalogue or the parameter table")
            continue
        spectra.append(one)
        good.append(i)
    if good:
        from fehkit.features import DEFAULT_PARAM_ERRORS

        p = params.loc[good, [c for c in PARAM_COLUMNS if c in params]].reset_index(drop=True).astype(float)
        # optional values a row lacks: those fehkit predict assumes when its table has no such column
        defaults = {"alpha_fe": 0.4, **{f"{k}_err": v for k, v in DEFAULT_PARAM_ERRORS.items()}}
        for c, v in defaults.items():
            p[c] = p[c].fillna(v) if c in p else v
        try:
            pred = infer(_as_batch(spectra), model, p, device="cpu", progress=False)
            for j, i in enumerate(good):
                rows[i] = pred.iloc[j].to_dict()
        except FehkitError:  # one spectrum spoils the chunk (another flux unit, ...): predict them one by one
            for j, i in enumerate(good):
                try:
                    rows[i] = infer(_as_batch([spectra[j]]), model, p.iloc[[j]], device="cpu",
                                    progress=False).iloc[0].to_dict()
                except FehkitError as err:
                    rows[i] = _error_row(str(spectra[j].records[0].get("star_id", "")),
                                         f"cannot predict: {' '.join(str(err).split())}")
    out = pd.DataFrame(rows, columns=[*PREDICT_COLUMNS, "error"])
    out["error"] = out["error"].fillna("")
    return out


def _error_row(star_id: str, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: np.nan for c in PREDICT_COLUMNS}
    row.update(star_id=star_id, n_lines=0, flag=_ERROR_FLAG, flag_reason=error, error=error)
    return row


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of :data:`BATCH_COLUMNS` in order, one dtype each, so that parts join into one table."""
    out = pd.DataFrame(index=range(len(frame)))
    for c in BATCH_COLUMNS:
        values = frame[c] if c in frame else pd.Series([None] * len(frame))
        if c in _FLOAT_COLUMNS:
            out[c] = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        elif c == "n_lines":
            out[c] = pd.to_numeric(values, errors="coerce").fillna(0).astype("int64").to_numpy()
        else:
            out[c] = values.fillna("").astype(str).to_numpy()
    return out


def _run_chunk(k: int, chunk: pd.DataFrame, model_path: str, fingerprint: str, parts_dir: str, key: str,
               by_star: pd.DataFrame | None) -> dict[str, Any]:
    """One task: predict chunk ``k`` and write ``parts_dir/part-k.parquet`` atomically; return its numbers."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FehkitWarning)
        model = _model(model_path, fingerprint)
        t1 = time.perf_counter()
        star_ids = chunk["star_id"].tolist()
        pred = _predict_chunk(model, chunk["abspath"].tolist(), chunk[list(PARAM_COLUMNS)], by_star,
                              star_ids=star_ids)
    pred["path"] = chunk["path"].to_numpy()
    part = _typed(pred)
    _write_part(part, Path(parts_dir) / _part_name(k), key)
    messages = sorted({" ".join(str(w.message).split()) for w in caught if issubclass(w.category, FehkitWarning)})
    return {"chunk": k, "n": len(part), "n_errors": int((part["error"] != "").sum()), "load_s": t1 - t0,
            "seconds": time.perf_counter() - t1, "pid": os.getpid(), "warnings": messages}


def _part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _write_part(part: pd.DataFrame, path: Path, key: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(part, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"fehkit_chunk": key.encode()})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def _part_ok(path: Path, key: str, paths: Sequence[str]) -> bool:
    """Whether a part file is complete: valid Parquet, made from this chunk's input, holding its paths in order."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"fehkit_chunk", b"").decode() != key:
            return False
        table = pq.read_table(path, columns=["path", "star_id"])
    except Exception:  # noqa: BLE001 - any unreadable part is recomputed
        return False
    return table.column("path").to_pylist() == list(paths) and None not in table.column("star_id").to_pylist()


def _chunk_key(fingerprint: str, chunk: pd.DataFrame, by_star: pd.DataFrame | None) -> str:
    """Hash what a part is made from: the model, the chunk's files and parameters, the star-id lookup."""
    h = hashlib.sha256(fingerprint.encode())
    cols = ["path", "abspath", "star_id", *PARAM_COLUMNS]
    h.update(json.dumps(chunk[cols].astype(object).where(chunk[cols].notna(), None).values.tolist(),
                        default=str).encode())
    if by_star is not None:
        h.update(pd.util.hash_pandas_object(by_star, index=True).to_numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """SHA-256 naming a saved model's content (of its ``checksums.sha256``, else of ``card.json``)."""
    folder = Path(model)
    for name in ("checksums.sha256", "card.json"):
        if (folder / name).is_file():
            return hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def run_catalog(paths_or_table: Any, model: str | os.PathLike[str], client: Any = None, *,
                out: str | os.PathLike[str] = "fehkit-batch", chunk_size: int = 100, params: Any = None,
                overwrite: bool = False, progress: bool = True, workers: int | None = None,
                command: str | None = None) -> BatchRun:
    """[Fe/H] of every spectrum of a catalogue, in chunks on a dask.distributed cluster; resumable.

    Parameters
    ----------
    paths_or_table : list of paths, path of a CSV/Parquet table, or DataFrame
        The spectrum files; a table has a ``path`` (or ``file``) column, optionally ``star_id`` and the stellar
        parameters ``teff``, ``logg``, ``vmic`` (and ``alpha_fe``, ``teff_err``, ``logg_err``, ``vmic_err``), as
        ``fehkit predict --params`` has them. A table's relative paths start at its folder.
    model : path
        A model folder (``fehkit train``, or ``model/`` of ``fehkit demo``).
    client : distributed.Client, str or None
        None starts a ``LocalCluster`` (:func:`local_cluster`: ``workers`` processes, default one per core, one
        thread each) and closes it at the end; a scheduler address (``"tcp://host:8786"``) is connected to; a
        ``Client`` is used as it is. The workers must see the files and ``out`` at the same paths.
    out : path
        Output folder: ``parts/part-NNNNN.parquet`` (chunk ``k`` holds rows ``k*chunk_size`` onwards),
        ``results.parquet`` (all rows, in the catalogue's order) and ``run.json``. A new or empty folder is
        used; a folder an earlier batch run wrote is resumed (its complete parts reused), or emptied first with
        ``overwrite``; another folder fehkit wrote needs ``overwrite``; any other folder is refused.
    chunk_size : int
        Spectra per task.
    params : path or DataFrame, optional
        Stellar parameters as ``fehkit predict --params`` reads them (``star_id`` or ``file``; ``teff``, ``logg``,
        ``vmic``, ...) for the rows whose catalogue holds none.
    overwrite : bool
        Start afresh in an existing folder fehkit wrote.
    progress : bool
        Print the dashboard link and a progress bar over the chunks.
    workers : int, optional
        Workers of the ``LocalCluster`` started when ``client`` is None.
    command : str, optional
        The command line, recorded in ``run.json`` and the folder's marker.

    Returns
    -------
    BatchRun
        ``results`` (the table of ``results.parquet``), ``info`` (``run.json``) and ``out``.
    """
    try:
        import distributed
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise UsageError(f"fehkit batch needs dask.distributed and pyarrow ({err}); install them with "
                         "pip install \"fehkit[dask]\"") from None
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise UsageError(f"chunk_size = {chunk_size!r}: expected a whole number >= 1")
    chunk_size = int(chunk_size)
    if workers is not None and (int(workers) != workers or workers < 1):
        raise UsageError(f"workers = {workers!r}: expected a whole number >= 1")
    cat, by_star = read_catalog(paths_or_table, params)
    model_path = Path(model).expanduser().resolve()
    synthetic = _check_model(model, model_path)
    target = _prepare_folder(out, overwrite, about={"command": command, "model": str(model_path), "n": len(cat),
                                                     "chunk_size": chunk_size})
    parts = target / "parts"
    parts.mkdir(exist_ok=True)
    _remove_temporaries(parts)

    fingerprint = model_fingerprint(model_path)
    n_chunks = -(-len(cat) // chunk_size)
    chunks = [cat.iloc[k * chunk_size:(k + 1) * chunk_size].reset_index(drop=True) for k in range(n_chunks)]
    keys = [_chunk_key(fingerprint, c, by_star) for c in chunks]
    todo = [k for k in range(n_chunks) if not _part_ok(parts / _part_name(k), keys[k], chunks[k]["path"].tolist())]

    t_start = time.perf_counter()
    stats: list[dict[str, Any]] = []
    seconds = 0.0
    with _connect(distributed, client, workers) as c:
        n_workers = len(c.scheduler_info().get("workers", {}))
        address = c.scheduler.address if c.scheduler else None
        dashboard = _dashboard(c)
        if progress:
            print(f"fehkit batch: {len(cat)} spectra in {n_chunks} chunks of {chunk_size} on {n_workers} workers "
                  f"({len(todo)} to compute, {n_chunks - len(todo)} done before)"
                  + (f"; dashboard {dashboard}" if dashboard else ""))
        if todo:
            t0 = time.perf_counter()
            stats = _compute(distributed, c, todo, chunks, keys, str(model_path), fingerprint, str(parts), by_star,
                             progress, n_chunks)
            seconds = time.perf_counter() - t0
        n_workers = max(n_workers, len(c.scheduler_info().get("workers", {})))
    total = time.perf_counter() - t_start

    results = _join(parts, chunks, keys, cat)
    for message in sorted({m for s in stats for m in s["warnings"]}):
        warnings.warn(message, FehkitWarning, stacklevel=2)
    _remove_temporaries(parts)
    for stale in parts.glob("part-*.parquet"):
        if stale.name not in {_part_name(k) for k in range(n_chunks)}:
            stale.unlink(missing_ok=True)
    with atomic_output(target / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    info = _info(results, stats, n_chunks, chunk_size, seconds, n_workers, address, dashboard, model_path,
                 fingerprint, command)
    info["total_seconds"] = total
    info["model_synthetic"] = synthetic
    with atomic_output(target / "run.json") as tmp:
        tmp.write_text(json.dumps(jsonable(info), indent=2) + "\n")
    return BatchRun(results, info, target)


def _check_model(given: Any, path: Path) -> bool:
    """Load the model once here, so a missing or damaged model folder is an error before any work.

    Returns whether its card says it was trained on synthetic spectra.
    """
    from fehkit.models import FeHEnsemble

    if not path.is_dir():
        found = "is a file" if path.exists() else "not found"
        raise UsageError(f"--model {given}: {found}; expected a model folder (fehkit train, or model/ of fehkit demo)")
    return bool(getattr(FeHEnsemble.load(path), "card_", {}).get("synthetic"))


def _prepare_folder(out: Any, overwrite: bool, about: dict[str, Any]) -> Path:
    """Check and mark the output folder; an earlier batch run's folder is kept (resumed) unless ``overwrite``."""
    folder = Path(out)
    is_dir = folder.is_dir()
    kind = (read_marker(folder) or {}).get("kind") if is_dir else None
    resume = kind == KIND and not overwrite
    empty = is_dir and not any(folder.iterdir())
    foreign = is_dir and not empty and not is_fehkit_folder(folder)  # refused below, whatever ``overwrite`` says
    target = check_output_folder(out, overwrite=overwrite or resume or empty or foreign)
    if target.is_dir() and not resume and any(target.iterdir()):  # a folder fehkit wrote, replaced: emptied first
        for item in target.iterdir():
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    target.mkdir(parents=True, exist_ok=True)
    old = read_marker(target) or {}
    from fehkit import __version__

    marker = {"written_by": "fehkit", "fehkit_version": __version__, "kind": KIND,
              "created": old.get("created") or datetime.now(UTC).isoformat(timespec="seconds"), **about}
    with atomic_output(target / MARKER) as tmp:
        tmp.write_text(json.dumps(jsonable(marker), indent=2) + "\n")
    return target


def _remove_temporaries(parts: Path) -> None:
    """Remove half-written parts (a temporary file a killed worker left behind)."""
    for tmp in parts.glob(".part-*.tmp"):
        tmp.unlink(missing_ok=True)


def local_cluster(n_workers: int | None = None) -> Any:
    """Start the ``distributed.LocalCluster`` that :func:`run_catalog` uses when given no client.

    ``n_workers`` processes (default one per core available to this process) of one thread each, the dashboard on
    a free port; each worker's compiled kernels get its share of the cores (``FEHKIT_THREADS``,
    :mod:`fehkit.threads`). distributed sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its worker processes (memory
    handed back to the system early); the many short-lived arrays of a chunk then cost page faults, about 1.5
    times the time of a chunk, so here that is left to glibc. Close it (or use it in a ``with`` block) when done.
    """
    import dask
    import distributed

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = int(n_workers or cores or 1)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    # the cores shared out: each worker's compiled kernels use the threads (fehkit.threads) its share allows
    environ.setdefault(THREADS_ENV, str(max(1, (cores or 1) // n)))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")


class _connect:
    """Context manager: the Client to use, and what to close afterwards (only what this run started)."""

    def __init__(self, distributed: Any, client: Any, workers: int | None) -> None:
        self.distributed, self.client, self.workers = distributed, client, workers
        self.owned: list[Any] = []

    def __enter__(self) -> Any:
        d = self.distributed
        if isinstance(self.client, d.Client):
            return self.client
        if isinstance(self.client, str):
            try:
                c = d.Client(self.client, timeout="20s")
            except (OSError, TimeoutError, ValueError) as err:
                raise UsageError(f"scheduler {self.client}: cannot connect ({' '.join(str(err).split())}); expected "
                                 "the address of a running dask scheduler, e.g. tcp://host:8786") from None
            self.owned.append(c)
            return c
        if self.client is not None:
            raise UsageError(f"client: {type(self.client).__name__}; expected None, a distributed.Client or a "
                             "scheduler address")
        cluster = local_cluster(self.workers)
        self.owned.append(cluster)
        c = d.Client(cluster)
        self.owned.append(c)
        return c

    def __exit__(self, *exc: object) -> None:
        for thing in reversed(self.owned):
            thing.close()


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
    except Exception:  # noqa: BLE001 - the link is a convenience
        return None


def _compute(distributed: Any, client: Any, todo: Iterable[int], chunks: Sequence[pd.DataFrame],
             keys: Sequence[str], model_path: str, fingerprint: str, parts: str, by_star: pd.DataFrame | None,
             progress: bool, n_chunks: int) -> list[dict[str, Any]]:
    """Submit the chunks still to compute; wait for them in completion order (with a progress bar)."""
    todo = list(todo)
    import uuid

    lookup = client.scatter(by_star, broadcast=True) if by_star is not None else None
    run = uuid.uuid4().hex[:12]  # keys of this run only: a scheduler never hands back an earlier run's result
    futures = {}
    for k in todo:
        f = client.submit(_run_chunk, k, chunks[k], model_path, fingerprint, parts, keys[k], lookup,
                          key=f"fehkit-batch-{run}-{k:05d}", retries=RETRIES, pure=False)
        futures[f] = k
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks, initial=n_chunks - len(todo), desc="chunks", unit="chunk")
    stats = []
    try:
        for f in distributed.as_completed(list(futures)):
            k = futures[f]
            try:
                stats.append(f.result())
            except Exception as err:  # noqa: BLE001 - named with its chunk; the finished parts stay for a rerun
                first = chunks[k]["path"].iloc[0]
                raise BatchError(f"chunk {k} (rows {k * len(chunks[0]) + 1}.., first file {first}) failed after "
                                 f"{RETRIES} retries: {type(err).__name__}: {' '.join(str(err).split())}; the "
                                 "finished parts are kept: run again to resume") from err
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        client.cancel([f for f in futures if not f.done()])
    return stats


def _join(parts: Path, chunks: Sequence[pd.DataFrame], keys: Sequence[str], cat: pd.DataFrame) -> pd.DataFrame:
    """All parts in chunk order, checked: every catalogue row exactly once, in its order."""
    frames = []
    for k, chunk in enumerate(chunks):
        path = parts / _part_name(k)
        if not _part_ok(path, keys[k], chunk["path"].tolist()):
            raise BatchError(f"{path}: missing or incomplete after the run; expected the rows of chunk {k} (first "
                             f"file {chunk['path'].iloc[0]}); run again to recompute it")
        frames.append(pd.read_parquet(path))
    results = _typed(pd.concat(frames, ignore_index=True))
    if results["path"].tolist() != cat["path"].tolist():
        raise BatchError(f"results: {len(results)} rows do not match the catalogue's {len(cat)} files in order; "
                         "expected every file exactly once")
    return results


def _info(results: pd.DataFrame, stats: Sequence[dict[str, Any]], n_chunks: int, chunk_size: int, seconds: float,
          n_workers: int, address: str | None, dashboard: str | None, model: Path, fingerprint: str,
          command: str | None) -> dict[str, Any]:
    """Return the content of ``run.json``."""
    from fehkit import __version__
    from fehkit.flags import tally

    computed = int(sum(s["n"] for s in stats))
    task_s = float(sum(s["seconds"] for s in stats))
    errors = results["error"] != ""
    return {
        "n": len(results), "n_chunks": n_chunks, "chunk_size": chunk_size, "chunks_computed": len(stats),
        "chunks_reused": n_chunks - len(stats), "spectra_computed": computed, "n_errors": int(errors.sum()),
        "flags": tally(results["flag"]), "seconds": seconds, "workers": n_workers,
        "worker_processes": len({s["pid"] for s in stats}),
        "spectra_per_s": computed / seconds if computed and seconds > 0 else None,
        "spectra_per_s_per_worker": computed / task_s if computed and task_s > 0 else None,
        "task_seconds": task_s, "model_load_seconds": float(sum(s["load_s"] for s in stats)),
        "scheduler": address, "dashboard": dashboard, "model": str(model), "model_sha256": fingerprint,
        "command": command, "fehkit_version": __version__,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
