"""The container every fehkit stage passes along: a batch of spectra on one wavelength grid.

A :class:`SpectrumBatch` holds ``n_spec`` spectra sampled on one shared vacuum, rest-frame wavelength grid
(for APOGEE, the apStar log-linear grid of 8,575 pixels), as plain numpy arrays so that every stage can work on
all spectra at once. Pixels that must not be used (no data, zero or infinite error, bad APOGEE pixel bits) are
``True`` in :attr:`SpectrumBatch.mask`. Conversion to and from :class:`specutils.Spectrum` keeps the door open to
the astropy ecosystem without carrying its objects through the hot paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fehkit.arrays import LazyTable
from fehkit.errors import SpectrumShapeError
from fehkit.threads import map_parts

# The apStar grid: lambda_i = 10**(CRVAL1 + CDELT1 * i) Angstrom, vacuum, rest frame (all DR12-DR17 apStar files).
APSTAR_CRVAL1 = 4.179
APSTAR_CDELT1 = 6e-6
APSTAR_NPIX = 8575

#: Vacuum wavelength ranges (Angstrom) that each APOGEE detector covers on the apStar grid: pixels
#: 202-3319, 3538-6125 and 6295-8377, the coverage common to both DR17 example files (their B/G/ROVERMIN/MAX
#: header keys). Outside them apStar rows are NaN (combined rows) or zero (visit rows). In the rest frame the
#: edges move with the star's radial velocity by ~0.05 A per km/s.
CHIPS: dict[str, tuple[float, float]] = {
    "blue": (15143.0, 15809.35),
    "green": (15857.25, 16434.25),
    "red": (16472.9, 16953.6),
}

#: Flux unit of apStar/apVisit files.
APOGEE_FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"


_APSTAR_WAVE = 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 * np.arange(APSTAR_NPIX))


def apstar_wavelength() -> np.ndarray:
    """Return the DR17 apStar wavelength grid.

    Returns
    -------
    wave : (8575,) float64
        Vacuum rest-frame wavelengths in Angstrom, 15100.80-16999.81.

    Examples
    --------
    >>> w = apstar_wavelength()
    >>> w.shape, round(float(w[0]), 2), round(float(w[-1]), 2)
    ((8575,), 15100.8, 16999.81)
    """
    return _APSTAR_WAVE.copy()  # a copy: callers may change theirs


def chip_of(wave: np.ndarray | float) -> np.ndarray:
    """Name the APOGEE detector that records each wavelength.

    Parameters
    ----------
    wave : float or array of float
        Vacuum wavelengths in Angstrom.

    Returns
    -------
    chip : array of str
        ``"blue"``, ``"green"``, ``"red"``, or ``""`` for wavelengths in a gap or off the detectors.
    """
    wave = np.asarray(wave, dtype=float)
    chip = np.full(wave.shape, "", dtype="<U5")
    for name, (lo, hi) in CHIPS.items():
        chip[(wave >= lo) & (wave <= hi)] = name
    return chip


@dataclass
class SpectrumBatch:
    """A batch of spectra on one shared wavelength grid.

    Parameters
    ----------
    wave : (n_pix,) float64
        Vacuum rest-frame wavelength in Angstrom, strictly increasing.
    flux : (n_spec, n_pix) float32
        Flux density (``flux_unit``), NaN where there is no data.
    ivar : (n_spec, n_pix) float32
        Inverse variance of ``flux``; 0 where there is no usable data.
    mask : (n_spec, n_pix) bool
        True for pixels not to be used. Non-finite flux and non-positive ``ivar`` are always added to it.
    meta : pandas.DataFrame
        One row per spectrum (``file``, ``star_id``, ``snr``, ``nvisits``, ...). Given as a mapping of 1-D arrays
        (one value per spectrum), the table is built when first asked for (:meth:`meta_columns` reads the arrays
        without it: for one spectrum, building the table costs ~0.5-1 ms, a good part of a request's time).
    bitmask : (n_spec, n_pix) int64, optional
        The APOGEE pixel bitmask (APOGEE_PIXMASK) the mask was derived from, if any.
    flux_unit : str
        Unit of ``flux`` as an astropy unit string; ``""`` for continuum-normalized flux.
    skipped : list of tuple(str, str)
        Files that a reader skipped with ``on_error="skip"``, as (path, reason).

    Examples
    --------
    >>> import numpy as np
    >>> wave = apstar_wavelength()
    >>> flux = np.ones((2, wave.size), dtype=np.float32)
    >>> b = SpectrumBatch(wave, flux, ivar=np.full_like(flux, 1e4), mask=np.zeros(flux.shape, bool))
    >>> b.n_spectra, b.n_pixels
    (2, 8575)
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    meta: pd.DataFrame = LazyTable(("_meta", "_meta_arrays"), lambda b: b.n_spectra, optional=True,
                                   error=SpectrumShapeError)  # type: ignore[assignment]
    bitmask: np.ndarray | None = None
    flux_unit: str = APOGEE_FLUX_UNIT
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._validate(mask_complete=False)

    def _validate(self, mask_complete: bool) -> None:
        """Check and convert the fields; add the unusable pixels to the mask unless it has them (``mask_complete``)."""
        self.wave = np.asarray(self.wave, dtype=np.float64)
        if self.wave.ndim != 1 or self.wave.size < 2:
            raise SpectrumShapeError(f"wave: expected a 1-D array of >=2 wavelengths, found shape {self.wave.shape}")
        if not np.all(np.diff(self.wave) > 0):
            raise SpectrumShapeError("wave: expected strictly increasing wavelengths")
        n_pix = self.wave.size
        self.flux = _as_2d("flux", self.flux, np.float32, n_pix)
        n_spec = self.flux.shape[0]
        self.ivar = _as_2d("ivar", self.ivar, np.float32, n_pix, n_spec)
        self.mask = _as_2d("mask", self.mask, bool, n_pix, n_spec)
        if self.bitmask is not None:
            self.bitmask = _as_2d("bitmask", self.bitmask, np.int64, n_pix, n_spec)
        # A pixel without finite flux or positive inverse variance carries no information, whatever else says.
        if not mask_complete:
            self.mask = _with_unusable(self.mask, self.flux, self.ivar)
        if self._meta_arrays is not None:  # columns as arrays: the table is built when first read
            for name, column in self._meta_arrays.items():
                if column.size != n_spec:
                    raise SpectrumShapeError(f"meta column {name!r}: expected {n_spec} values (one per spectrum), "
                                             f"found {column.size}")
            return
        if self._meta is None or len(self._meta.columns) == 0:
            self._meta = pd.DataFrame(index=range(n_spec))
        if len(self._meta) != n_spec:
            raise SpectrumShapeError(f"meta: expected {n_spec} rows (one per spectrum), found {len(self._meta)}")
        self._meta = self._meta.reset_index(drop=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "meta" in state:  # pickled by a fehkit that kept the table itself
            state["_meta"], state["_meta_arrays"] = state.pop("meta"), None
        self.__dict__.update(state)

    def meta_columns(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Return the named columns of :attr:`meta` that exist (default: all), as arrays by name.

        The table is not built when the batch was given its columns as arrays; those arrays are returned as they
        are (no copies): read them, do not change them.
        """
        return _META.columns(self, names)

    def with_arrays(self, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, flux_unit: str, *,
                    mask_complete: bool = False) -> SpectrumBatch:
        """Return the same spectra (meta, bitmask, skipped files) with new flux, ivar, mask and flux unit.

        The new batch has its own meta table (or shares the read-only column arrays it was given). With
        ``mask_complete``, the caller vouches that ``mask`` is True wherever ``flux`` is not finite or ``ivar`` not
        positive, so that is not worked out again (a pass over the whole batch; the compiled normalization makes
        its mask so).
        """
        out = SpectrumBatch.__new__(SpectrumBatch)
        out.__dict__.update(self.__dict__)  # every field as this batch's, then the new ones, checked as ever
        out.flux, out.ivar, out.mask = flux, ivar, mask
        out.meta = _META.source(self)
        out.flux_unit, out.skipped = flux_unit, list(self.skipped)
        out._validate(mask_complete)
        return out

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def n_spectra(self) -> int:
        """Number of spectra in the batch."""
        return int(self.flux.shape[0])

    @property
    def n_pixels(self) -> int:
        """Number of pixels per spectrum."""
        return int(self.wave.size)

    def __len__(self) -> int:
        return self.n_spectra

    def __repr__(self) -> str:
        ids = list(self.meta["star_id"]) if "star_id" in self.meta else []
        shown = ", ".join(map(str, ids[:3])) + (", ..." if len(ids) > 3 else "")
        return (
            f"<SpectrumBatch {self.n_spectra} spectra x {self.n_pixels} px, "
            f"{self.wave[0]:.2f}-{self.wave[-1]:.2f} A" + (f": {shown}" if shown else "") + ">"
        )

    # -- selection and joining -----------------------------------------------------------------------------
    def select(self, index: int | slice | Sequence[int] | np.ndarray) -> SpectrumBatch:
        """Return the spectra picked by ``index`` (int, slice, integer or boolean array) as a new batch."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        rows = np.arange(self.n_spectra)[index]
        return SpectrumBatch(
            wave=self.wave,
            flux=self.flux[rows],
            ivar=self.ivar[rows],
            mask=self.mask[rows],
            meta=_META.rows(self, rows),
            bitmask=None if self.bitmask is None else self.bitmask[rows],
            flux_unit=self.flux_unit,
        )

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> SpectrumBatch:
        return self.select(index)

    @classmethod
    def concat(cls, batches: Sequence[SpectrumBatch]) -> SpectrumBatch:
        """Join batches that share one wavelength grid and flux unit.

        Raises
        ------
        SpectrumShapeError
            If the batches are on different grids or in different units.
        """
        batches = list(batches)
        if not batches:
            raise SpectrumShapeError("concat: expected at least one SpectrumBatch, found none")
        first = batches[0]
        for i, b in enumerate(batches[1:], start=1):
            if b.wave.shape != first.wave.shape or not np.allclose(b.wave, first.wave, rtol=1e-9, atol=0):
                raise SpectrumShapeError(
                    f"concat: batch {i} is on a different wavelength grid ({b.n_pixels} px, "
                    f"{b.wave[0]:.2f}-{b.wave[-1]:.2f} A) than batch 0 ({first.n_pixels} px, "
                    f"{first.wave[0]:.2f}-{first.wave[-1]:.2f} A); resample it first"
                )
            if b.flux_unit != first.flux_unit:
                raise SpectrumShapeError(
                    f"concat: batch {i} has flux unit {b.flux_unit!r}, expected {first.flux_unit!r}"
                )
        with_bits = all(b.bitmask is not None for b in batches)
        return cls(
            wave=first.wave,
            flux=np.concatenate([b.flux for b in batches]),
            ivar=np.concatenate([b.ivar for b in batches]),
            mask=np.concatenate([b.mask for b in batches]),
            meta=pd.concat([b.meta for b in batches], ignore_index=True),
            bitmask=np.concatenate([b.bitmask for b in batches]) if with_bits else None,  # type: ignore[misc]
            flux_unit=first.flux_unit,
            skipped=[s for b in batches for s in b.skipped],
        )

    # -- what the data cover -------------------------------------------------------------------------------
    def masked_fraction(self) -> np.ndarray:
        """Fraction of masked pixels per spectrum, shape (n_spec,)."""
        return self.mask.mean(axis=1)

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last wavelength with usable data per spectrum (NaN for a fully masked spectrum).

        Returns
        -------
        wave_min, wave_max : (n_spec,) float64
        """
        good = ~self.mask
        has = good.any(axis=1)
        first = np.argmax(good, axis=1)
        last = self.n_pixels - 1 - np.argmax(good[:, ::-1], axis=1)
        return (np.where(has, self.wave[first], np.nan), np.where(has, self.wave[last], np.nan))

    def data_gaps(self, min_pixels: int = 20) -> list[list[tuple[float, float]]]:
        """Wavelength intervals without data inside each spectrum's coverage: the chip gaps.

        A gap is a run of at least ``min_pixels`` consecutive pixels without data, bounded by data on both
        sides. "Without data" is non-finite flux (how apStar combined rows mark the gaps) or zero flux with zero
        inverse variance (visit rows); pixels with flux but a bad flag or a huge error are masked, not gaps.

        Parameters
        ----------
        min_pixels : int
            Shortest run counted as a gap; APOGEE's chip gaps are ~170-220 pixels.

        Returns
        -------
        gaps : list (one per spectrum) of lists of (lo, hi)
            The last wavelength with data before each gap and the first after it, in Angstrom.
        """
        nodata = ~np.isfinite(self.flux) | ((self.flux == 0) & ~(self.ivar > 0))
        gaps: list[list[tuple[float, float]]] = []
        for row in nodata:
            edges = np.flatnonzero(np.diff(row.astype(np.int8)))
            # starts: data -> no data; ends: no data -> data (index of the last no-data pixel)
            starts = edges[~row[edges]] + 1
            ends = edges[row[edges]]
            spans = []
            for s in starts:
                after = ends[ends >= s]
                if after.size and after[0] - s + 1 >= min_pixels:
                    spans.append((float(self.wave[s - 1]), float(self.wave[after[0] + 1])))
            gaps.append(spans)
        return gaps

    def summary(self) -> pd.DataFrame:
        """One row per spectrum: id, SNR, visits, wavelength range, masked fraction and chip gaps."""
        wmin, wmax = self.coverage()
        gaps = self.data_gaps()
        meta = self.meta
        return pd.DataFrame(
            {
                "star_id": meta.get("star_id", pd.Series([""] * self.n_spectra)),
                "file": meta.get("file", pd.Series([""] * self.n_spectra)),
                "row": meta.get("row", pd.Series([0] * self.n_spectra)),
                "snr": meta.get("snr", pd.Series([np.nan] * self.n_spectra)),
                "nvisits": meta.get("nvisits", pd.Series([np.nan] * self.n_spectra)),
                "wave_min": wmin,
                "wave_max": wmax,
                "masked_fraction": self.masked_fraction(),
                "chip_gaps": ["; ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in g) for g in gaps],
            }
        )

    # -- astropy / specutils interchange -------------------------------------------------------------------
    def to_specutils(self) -> Any:
        """Return the batch as one :class:`specutils.Spectrum` with 2-D flux (n_spec, n_pix).

        Uncertainty is an :class:`astropy.nddata.InverseVariance`, ``mask`` is carried over and ``meta`` holds
        the per-spectrum table as ``meta["spectra"]`` (a list of dicts).
        """
        import astropy.units as u
        from astropy.nddata import InverseVariance
        from specutils import Spectrum

        unit = u.Unit(self.flux_unit) if self.flux_unit else u.dimensionless_unscaled
        return Spectrum(
            flux=self.flux * unit,
            spectral_axis=self.wave * u.AA,
            uncertainty=InverseVariance(self.ivar / unit**2),
            mask=self.mask.copy(),
            meta={"spectra": self.meta.to_dict(orient="records"), "frame": "vacuum, rest"},
        )

    @classmethod
    def from_specutils(cls, spectra: Any, meta: pd.DataFrame | None = None) -> SpectrumBatch:
        """Build a batch from a :class:`specutils.Spectrum` (1-D or 2-D flux) or a list of them on one grid.

        The spectral axis is converted to Angstrom and put in increasing order; it is taken to be vacuum
        wavelength in the star's rest frame, as in apStar files. A missing uncertainty means unit weights
        are *not* invented: ``ivar`` is then 0 and every pixel is masked, so pass uncertainties.
        """
        import astropy.units as u
        from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

        items = list(spectra) if isinstance(spectra, (list, tuple)) else [spectra]
        if not items:
            raise SpectrumShapeError("from_specutils: expected at least one Spectrum, found none")
        waves, fluxes, ivars, masks, metas = [], [], [], [], []
        unit = items[0].flux.unit
        for k, sp in enumerate(items):
            wave = sp.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
            flux = np.atleast_2d(sp.flux.to_value(unit))
            unc = sp.uncertainty
            if unc is None:
                ivar = np.zeros_like(flux)
            elif isinstance(unc, InverseVariance):
                ivar = np.atleast_2d(unc.quantity.to_value(unit**-2))
            elif isinstance(unc, StdDevUncertainty):
                sd = np.atleast_2d(unc.quantity.to_value(unit))
                with np.errstate(divide="ignore"):
                    ivar = np.where(sd > 0, 1.0 / sd**2, 0.0)
            elif isinstance(unc, VarianceUncertainty):
                var = np.atleast_2d(unc.quantity.to_value(unit**2))
                with np.errstate(divide="ignore"):
                    ivar = np.where(var > 0, 1.0 / var, 0.0)
            else:
                raise SpectrumShapeError(
                    f"from_specutils: spectrum {k} has uncertainty type {type(unc).__name__}; expected "
                    "InverseVariance, StdDevUncertainty or VarianceUncertainty"
                )
            mask = np.zeros(flux.shape, bool) if sp.mask is None else np.atleast_2d(np.asarray(sp.mask, bool))
            if wave[0] > wave[-1]:
                wave, flux, ivar, mask = wave[::-1], flux[:, ::-1], ivar[:, ::-1], mask[:, ::-1]
            waves.append(wave)
            fluxes.append(flux)
            ivars.append(ivar)
            masks.append(mask)
            rows = sp.meta.get("spectra") if isinstance(sp.meta, dict) else None
            metas.append(pd.DataFrame(rows) if rows else pd.DataFrame(index=range(flux.shape[0])))
        for k, w in enumerate(waves[1:], start=1):
            if w.shape != waves[0].shape or not np.allclose(w, waves[0], rtol=1e-9, atol=0):
                raise SpectrumShapeError(
                    f"from_specutils: spectrum {k} is on a different wavelength grid than spectrum 0; resample first"
                )
        table = pd.concat(metas, ignore_index=True) if meta is None else meta
        return cls(
            wave=waves[0],
            flux=np.concatenate(fluxes),
            ivar=np.concatenate(ivars),
            mask=np.concatenate(masks),
            meta=table,
            flux_unit="" if unit == u.dimensionless_unscaled else unit.to_string(),
        )


def is_synthetic(data: SpectrumBatch | pd.DataFrame, index: int | None = None) -> bool:
    """Return True when spectra or a results table are simulated, by their ``synthetic`` column.

    ``data`` is a :class:`SpectrumBatch` (its ``meta``) or a table such as ``predictions.csv``; a CSV read back
    holds the flag as text ("True", "1", "yes"). With ``index``, only that row counts; without, any simulated row
    makes the whole set synthetic, so that a mix of real and simulated stars is never presented as real.

    Examples
    --------
    >>> is_synthetic(pd.DataFrame({"synthetic": ["True", "False"]})), is_synthetic(pd.DataFrame({"x": [1]}))
    (True, False)
    """
    table = data.meta if isinstance(data, SpectrumBatch) else data
    if "synthetic" not in table or len(table) == 0:
        return False
    values = table["synthetic"]
    if not (pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values)):
        values = values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))
    flags = values.fillna(False).astype(bool).to_numpy()
    return bool(flags[index]) if index is not None else bool(flags.any())


#: The :attr:`SpectrumBatch.meta` field.
_META: LazyTable = SpectrumBatch.__dict__["meta"]


def _with_unusable(mask: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Return ``mask | ~isfinite(flux) | ~(ivar > 0)``: a new array, made in blocks of rows in threads.

    Blocks of a few hundred kB stay in the cache, and NumPy releases the GIL in its loops, so a large batch's
    mask takes a fraction of the time of the one-line expression's three full-size temporaries.
    """
    out = np.empty(mask.shape, bool)

    def block(rows: slice) -> None:
        out[rows] = mask[rows] | ~np.isfinite(flux[rows]) | ~(ivar[rows] > 0)

    map_parts(block, mask.shape[0], min_rows=16, max_rows=64)
    return out


def _as_2d(name: str, arr: Any, dtype: Any, n_pix: int, n_spec: int | None = None) -> np.ndarray:
    """Coerce ``arr`` to a (n_spec, n_pix) array of ``dtype`` with a message naming the field on failure."""
    a = np.asarray(arr)
    if a.ndim == 1:
        a = a[None, :]
    expected = f"({'n_spec' if n_spec is None else n_spec}, {n_pix})"
    if a.ndim != 2 or a.shape[1] != n_pix or (n_spec is not None and a.shape[0] != n_spec):
        raise SpectrumShapeError(f"{name}: expected shape {expected}, found {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)
