"""Recalibration on labelled stars: what a survey scientist checks before trusting a model trained on real stars.

A recalibration fits the ensemble to stars with reference [Fe/H] from high-resolution spectroscopy (a table in the
cross-match layout of :mod:`fehkit.data.crossmatch`, read by ``fehkit train --data TABLE``). Before its numbers are
trusted three questions are asked, and this module answers them with the library's own calls:

* do the residuals against the reference labels trend with Teff, log g, S/N or [Fe/H]? (:func:`binned_residuals`:
  the mean residual per bin with a bootstrap interval, so a trend can be told from noise);
* how far does a systematic error in the adopted Teff move [Fe/H]? (:class:`TeffSensitivity`: the prediction
  re-run from the spectra with every star's Teff shifted; the line strengths of Fe I, a neutral minority species,
  depend steeply on temperature, so a Teff scale offset between the reference catalogue and the stars to be
  predicted becomes an [Fe/H] offset that a recalibration must absorb);
* how do the other surveys' [Fe/H] compare? (:func:`attach_survey_feh` adds e.g. GALAH's value of each star by
  position; :func:`fehkit.evaluate.cross_survey_real` scores them).

Offline, :func:`write_standin_table` writes a **synthetic** stand-in table in the same layout (simulated apStar
files, noisy reference labels, ASPCAP-like and GALAH-like columns), marked synthetic everywhere, so the workflow
can be run and taught without a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import InputTableError
from fehkit.spectra import SpectrumBatch

#: The ASPCAP-like column of the stand-in table: the true [Fe/H] + ``offset`` + N(0, ``scatter``), empty below
#: ``floor``. ASPCAP's DR17 grid stops at [M/H] = -2.5, so real allStar rows of the most metal-poor stars have no
#: FE_H; the scatter is ASPCAP's stated [M/H] precision (0.05 dex, Garcia Perez et al. 2016, AJ 151, 144). The
#: offset is NOT a published value: it is set so that the comparison has a known answer to find.
STANDIN_ASPCAP = {"offset": 0.10, "scatter": 0.05, "floor": -2.5}

#: Columns of a stand-in table beyond :data:`fehkit.data.crossmatch.TRAINING_COLUMNS` and its provenance columns.
STANDIN_SURVEY_COLUMNS = ("aspcap_fe_h", "galah_fe_h")


def standin_table(truth: pd.DataFrame, seed: int = 0, *, spectra_folder: str = "spectra") -> pd.DataFrame:
    """Turn a synthetic benchmark's truth into a **synthetic** labelled table in the cross-match layout.

    Parameters
    ----------
    truth : DataFrame
        ``Simulation.truth`` of :func:`fehkit.synth.make_benchmark` (or its ``truth.csv``): ``file``, ``star_id``,
        ``feh``, the reference labels ``feh_ref``, ``feh_ref_err``, ``teff_ref``, ``logg_ref``, ``vmic_ref``,
        ``snr`` and the external survey's ``feh_ext``.
    seed : int
        Seed of the sky positions and of the ASPCAP-like column.
    spectra_folder : str
        Folder of the apStar files, relative to the table's own folder.

    Returns
    -------
    DataFrame
        :data:`~fehkit.data.crossmatch.TRAINING_COLUMNS` (the reference labels stand in for a high-resolution
        catalogue), provenance columns as :func:`~fehkit.data.crossmatch.crossmatch` writes them (the sky
        positions are random), ``aspcap_fe_h`` (:data:`STANDIN_ASPCAP`), ``galah_fe_h`` (the benchmark's
        ``feh_ext``: the truth + 0.015 +- 0.04 dex, like GALAH DR3 against high-resolution references) and
        ``synthetic`` (True).

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> t = standin_table(make_benchmark(6, seed=1).truth)
    >>> list(t.columns[:6]), bool(t["synthetic"].all())
    (['file', 'feh_ref', 'feh_ref_err', 'teff', 'logg', 'vmic'], True)
    """
    need = ("file", "star_id", "feh", "feh_ref", "teff_ref", "logg_ref", "vmic_ref", "snr", "feh_ext")
    missing = [c for c in need if c not in truth]
    if missing:
        raise InputTableError(f"truth: no column(s) {missing}; expected the truth table of "
                              "fehkit.synth.make_benchmark")
    n = len(truth)
    rng = np.random.default_rng([seed, 7])
    t = truth.reset_index(drop=True)
    feh_err = t["feh_ref_err"].to_numpy(float) if "feh_ref_err" in t else np.full(n, 0.05)
    table = pd.DataFrame({"file": [f"{spectra_folder}/{f}" for f in t["file"].astype(str)],
                          "feh_ref": t["feh_ref"].to_numpy(float), "feh_ref_err": feh_err,
                          "teff": t["teff_ref"].to_numpy(float), "logg": t["logg_ref"].to_numpy(float),
                          "vmic": t["vmic_ref"].to_numpy(float)})
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, n)))
    provenance = {"apogee_id": t["star_id"].astype(str).to_numpy(), "telescope": "SYNTHETIC", "field": "SYNTHETIC",
                  "snr": t["snr"].to_numpy(float), "ra": ra, "dec": dec,
                  "ref_id": [f"SYNTHETIC-REF-{i}" for i in range(n)], "ref_ra": ra, "ref_dec": dec,
                  "sep_arcsec": 0.0, "n_ref_within": 1, "teff_source": "reference", "logg_source": "reference",
                  "vmic_source": "reference",
                  "ref_catalog": "SYNTHETIC stand-in: noisy reference labels of simulated stars"}
    for col, values in provenance.items():
        table[col] = values
    aspcap = t["feh"].to_numpy(float) + STANDIN_ASPCAP["offset"] + rng.normal(0, STANDIN_ASPCAP["scatter"], n)
    table["aspcap_fe_h"] = np.where(aspcap < STANDIN_ASPCAP["floor"], np.nan, aspcap)
    table["galah_fe_h"] = t["feh_ext"].to_numpy(float)
    table["synthetic"] = True
    return table


def write_standin_table(out: str | os.PathLike[str], n: int = 80, seed: int = 0, *,
                        overwrite: bool = False) -> Path:
    """Write a **synthetic** stand-in for a real labelled table: ``out/spectra/`` and ``out/table.csv``.

    ``n`` benchmark stars are simulated (:func:`fehkit.synth.make_benchmark`) and written as apStar-format files
    (``SYNTHETI = T``, as ``fehkit simulate`` writes them), and :func:`standin_table` is written beside them, its
    first line a comment saying SYNTHETIC. The folder is written whole (temporary folder, then renamed).

    Returns
    -------
    Path
        ``out/table.csv``: what ``fehkit validate --data`` and ``fehkit train --data`` read.
    """
    from fehkit.files import atomic_folder, write_table
    from fehkit.synth import make_benchmark, write_benchmark

    if int(n) != n or n < 4:
        raise InputTableError(f"n = {n!r}: expected a whole number of stars >= 4")
    sim = make_benchmark(int(n), seed)
    with atomic_folder(out, kind="standin_table", overwrite=overwrite,
                       about={"synthetic": True, "n_stars": int(n), "seed": int(seed)}) as tmp:
        write_benchmark(sim, tmp / "spectra")
        write_table(standin_table(sim.truth, seed), tmp / "table.csv",
                    comment="SYNTHETIC stand-in table (simulated spectra, not observations) in the cross-match layout")
    return Path(out) / "table.csv"


def attach_survey_feh(table: pd.DataFrame, other: pd.DataFrame, name: str = "galah_fe_h", *,
                      radius_arcsec: float = 2.0, column: str = "feh_ref") -> pd.DataFrame:
    """Add another survey's [Fe/H] to a labelled table: the nearest star of ``other`` within ``radius_arcsec``.

    Parameters
    ----------
    table : DataFrame
        The labelled table (``ra``, ``dec`` in degrees).
    other : DataFrame
        The survey's stars: ``ra``, ``dec`` and ``column`` (e.g. :func:`fehkit.data.query_galah`'s ``feh_ref``).
    name : str
        The new column (:data:`fehkit.evaluate.CROSS_SURVEY_COLUMNS` names are scored by ``fehkit validate``).
    radius_arcsec : float
        Match radius; stars with no match get NaN.
    column : str
        The [Fe/H] column of ``other``.

    Returns
    -------
    DataFrame
        A copy of ``table`` with ``name`` added.

    Examples
    --------
    >>> t = pd.DataFrame({"ra": [10.0, 20.0], "dec": [0.0, 5.0]})
    >>> g = pd.DataFrame({"ra": [10.0002, 50.0], "dec": [0.0, 1.0], "feh_ref": [-2.1, -1.0]})
    >>> attach_survey_feh(t, g)["galah_fe_h"].tolist()
    [-2.1, nan]
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    for frame, what, cols in ((table, "table", ("ra", "dec")), (other, "other", ("ra", "dec", column))):
        missing = [c for c in cols if c not in frame]
        if missing:
            raise InputTableError(f"{what}: no column(s) {missing}; found {list(frame.columns)}")
    out = table.copy()
    values = np.full(len(out), np.nan)
    ra, dec = (pd.to_numeric(out[c], errors="coerce").to_numpy(float) for c in ("ra", "dec"))
    ora, odec = (pd.to_numeric(other[c], errors="coerce").to_numpy(float) for c in ("ra", "dec"))
    feh = pd.to_numeric(other[column], errors="coerce").to_numpy(float)
    ok, good = np.isfinite(ra) & np.isfinite(dec), np.isfinite(ora) & np.isfinite(odec) & np.isfinite(feh)
    if ok.any() and good.any():
        cat = SkyCoord(ora[good] * u.deg, odec[good] * u.deg)
        pos = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
        if len(cat) == 1:  # match_coordinates_sky needs two catalogue points
            idx, sep = np.zeros(len(pos), int), pos.separation(cat[0])
        else:
            idx, sep, _ = match_coordinates_sky(pos, cat)
        hit = sep.to_value(u.arcsec) <= radius_arcsec
        values[np.flatnonzero(ok)[hit]] = feh[good][np.asarray(idx)[hit]]
    out[name] = values
    return out


def binned_residuals(x: Any, residual: Any, n_bins: int = 5, *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Return the mean residual in bins of ``x`` with a bootstrap interval, to tell a trend from noise.

    The bins hold equal numbers of stars (quantiles of ``x`` over the finite pairs), so each mean rests on the
    same count; the interval is the percentile interval of the bin's mean over ``n_boot`` resamples of its stars.

    Parameters
    ----------
    x, residual : (n,) float
        E.g. Teff and predicted minus reference [Fe/H]; pairs with a NaN are left out.
    n_bins : int
        Number of bins (fewer when there are fewer than two stars per bin).
    n_boot : int
        Bootstrap resamples.
    level : float
        Coverage of the interval (0.95: the 2.5th to 97.5th percentile).
    seed : int
        Seed of the resampling.

    Returns
    -------
    DataFrame
        One row per bin: ``lo``, ``hi`` (edges), ``x`` (median x of its stars), ``n``, ``mean``, ``band_lo``,
        ``band_hi``.

    Examples
    --------
    >>> b = binned_residuals(np.arange(40.0), np.r_[np.zeros(20), np.ones(20)], n_bins=2, n_boot=200)
    >>> b[["n", "mean", "band_lo", "band_hi"]].to_numpy().tolist()
    [[20.0, 0.0, 0.0, 0.0], [20.0, 1.0, 1.0, 1.0]]
    """
    x, r = np.asarray(x, float), np.asarray(residual, float)
    if x.shape != r.shape:
        raise InputTableError(f"x and residual: shapes {x.shape} and {r.shape}; expected the same (one per star)")
    if not 0 < level < 1:
        raise InputTableError(f"level = {level!r}: expected a fraction between 0 and 1")
    ok = np.isfinite(x) & np.isfinite(r)
    x, r = x[ok], r[ok]
    columns = ["lo", "hi", "x", "n", "mean", "band_lo", "band_hi"]
    k = int(min(n_bins, x.size // 2))
    if k < 1:
        return pd.DataFrame(columns=columns, dtype=float)
    edges = np.quantile(x, np.linspace(0, 1, k + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, k - 1)
    rng = np.random.default_rng(seed)
    tail = 100 * (1 - level) / 2
    rows = []
    for b in range(k):
        rb = r[which == b]
        if rb.size == 0:
            continue
        means = rb[rng.integers(0, rb.size, size=(n_boot, rb.size))].mean(axis=1)
        lo, hi = np.percentile(means, [tail, 100 - tail])
        rows.append([edges[b], edges[b + 1], float(np.median(x[which == b])), rb.size, float(rb.mean()),
                     float(lo), float(hi)])
    return pd.DataFrame(rows, columns=columns, dtype=float)


class TeffSensitivity:
    """How a trained model's [Fe/H] of given stars moves when their adopted Teff is off by a constant.

    The spectra are normalized once; each :meth:`shift` re-runs the rest of the prediction (EW fits with the line
    widths at the shifted parameters, the features, the classical joint likelihood, the ensemble:
    :func:`fehkit.training.spectra_features` and :func:`fehkit.training.predict_features`) with every star's Teff
    moved by ``dteff``, so the response includes everything that depends on Teff, nothing assumed. Results are
    cached per offset.

    Parameters
    ----------
    model : FeHEnsemble
        The trained model.
    batch : SpectrumBatch
        The stars' spectra.
    params : DataFrame
        One row per spectrum: ``teff``, ``logg``, ``vmic`` (and ``alpha_fe``, errors) as the model is given them.

    Examples
    --------
    >>> sens = TeffSensitivity.from_table(model, "standin/table.csv")  # doctest: +SKIP
    >>> sens.delta(100).mean()  # mean change of the ensemble [Fe/H] for Teff + 100 K  # doctest: +SKIP
    """

    def __init__(self, model: Any, batch: SpectrumBatch, params: pd.DataFrame) -> None:
        from fehkit.continuum import normalize

        if len(params) != batch.n_spectra:
            raise InputTableError(f"params: {len(params)} rows for {batch.n_spectra} spectra; expected one row per "
                                  "spectrum, in the batch's order")
        if "teff" not in params:
            raise InputTableError(f"params: no column 'teff'; found {list(params.columns)}")
        self.model = model
        self.batch = batch
        self.params = params.reset_index(drop=True)
        self._normalized = normalize(batch).batch
        self._cache: dict[float, pd.DataFrame] = {}
        self.base = self.shift(0.0)

    @classmethod
    def from_table(cls, model: Any, table: str | os.PathLike[str]) -> TeffSensitivity:
        """Build it for the stars of a labelled table (what ``fehkit train --data`` reads), in the table's order."""
        from fehkit.training import read_training_data

        batch, params, _, _ = read_training_data(table, need_train=False)
        return cls(model, batch, params)

    @property
    def n_stars(self) -> int:
        """Number of stars."""
        return self.batch.n_spectra

    def shift(self, dteff: float) -> pd.DataFrame:
        """Return the results table (``fehkit predict``'s columns) with every star's Teff moved by ``dteff`` K."""
        import warnings

        from fehkit.errors import FehkitWarning
        from fehkit.training import predict_features, spectra_features

        key = float(dteff)
        if not np.isfinite(key):
            raise InputTableError(f"dteff = {dteff!r}: expected a finite number of kelvin")
        if key not in self._cache:
            params = self.params.assign(teff=self.params["teff"].to_numpy(float) + key)
            with warnings.catch_warnings():
                # a shifted Teff clipped at the grid edge is flagged per star in the results (grid_edge)
                warnings.simplefilter("ignore", FehkitWarning)
                feats = spectra_features(self.batch, params, normalized=self._normalized)
            self._cache[key] = predict_features(self.model, feats)
        return self._cache[key]

    def delta(self, dteff: float, column: str = "feh") -> np.ndarray:
        """Return the (n_stars,) change of ``column`` (``feh``, ``feh_cog``, ...) for Teff + ``dteff``.

        NaN where either prediction is missing (an upper limit).
        """
        if column not in self.base:
            raise InputTableError(f"column {column!r}: not a results column; expected one of {list(self.base)}")
        return self.shift(dteff)[column].to_numpy(float) - self.base[column].to_numpy(float)

    def __repr__(self) -> str:
        done = sorted(k for k in self._cache if k)
        return f"TeffSensitivity: {self.n_stars} stars, offsets computed: {done or 'none yet'} K"
