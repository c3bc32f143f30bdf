"""The curve of growth: equivalent width of each Fe I line as a function of the star and its iron abundance.

A line's equivalent width grows linearly with the number of absorbers while the line is weak, then
flattens as its core saturates. Where a line sits on that curve depends on the atmosphere (Teff, log g),
on the microturbulence (vmic, which widens the saturated core) and slightly on [alpha/Fe] (Mg and Si give
electrons, and electrons set the H- continuum). fehkit ships this curve for every line of the packaged list,
computed once with MOOG (``ewfind``) on atmosnet model atmospheres by ``scripts/physics/build_physics_grid.py``
(``fehkit/physics/README.md`` says how, and what was done at the grid's edges). A second grid of the same lines,
computed with SME on the same atmospheres over the metal-poor domain (``scripts/physics/build_sme_grid.py``), is
loaded with ``CurveOfGrowth.load("sme")``: an independent physics (``docs/second_physics.md``).

:class:`CurveOfGrowth` interpolates it (multilinear in Teff, log g, vmic and [alpha/Fe]; a monotone cubic,
PCHIP, in [Fe/H], on log EW) and inverts it: EW -> [Fe/H] line by line, the classical curve-of-growth method.
Where numba imports, both run as compiled kernels (:mod:`fehkit.physics.joint_kernels`) that give the same numbers.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import RegularGridInterpolator

from fehkit.arrays import per_grid
from fehkit.errors import FehkitWarning, GridRangeError, PhysicsGridError
from fehkit.threads import compiled, numba_wanted

#: File name of the packaged grid inside ``fehkit/physics/data``.
DEFAULT_GRID = "cog_fe1.npz"

#: The packaged grids by name: ``"moog"`` (MOOG ``ewfind``, the default) and ``"sme"`` (SME via pysme-astro, on
#: the same atmospheres, a sub-grid over the metal-poor domain; ``fehkit/physics/README.md``).
GRIDS = {"moog": DEFAULT_GRID, "sme": "cog_fe1_sme.npz"}

#: [alpha/Fe] range the grid may be linearly extended to (atmosnet's grid stops at [alpha/M] = +0.6; the
#: shipped nodes are 0.0 and +0.4, and the off-node test shows the extension to +0.6 holds to ~1%).
ALPHA_RANGE = (-0.2, 0.6)

#: Interpolate and invert with the compiled kernels of :mod:`fehkit.physics.joint_kernels` when numba imports (the
#: same numbers, ~10 times faster); False (or ``FEHKIT_NUMBA=0`` in the environment): always scipy and NumPy, the
#: reference.
USE_NUMBA = numba_wanted()


class CurveOfGrowth:
    """EW (mA) of each Fe I line on a grid of Teff, log g, [Fe/H], vmic and [alpha/Fe], with interpolation.

    Parameters
    ----------
    teff, logg, feh, vmic, alpha_fe : numpy.ndarray
        Grid axes (K, dex cgs, dex, km/s, dex), each increasing.
    log10_ew : numpy.ndarray
        log10 EW (mA), shaped (teff, logg, feh, vmic, alpha_fe, line).
    wave_vac : numpy.ndarray
        Vacuum wavelength (A) of each line, in the order of the last axis.
    filled : numpy.ndarray, optional
        True for nodes whose atmosphere MOOG could not use, filled along log g (shape of the first five axes).
    meta : dict, optional
        Provenance written by the build tool.
    """

    def __init__(
        self,
        teff: np.ndarray,
        logg: np.ndarray,
        feh: np.ndarray,
        vmic: np.ndarray,
        alpha_fe: np.ndarray,
        log10_ew: np.ndarray,
        wave_vac: np.ndarray,
        filled: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.teff, self.logg, self.feh = (np.asarray(a, float) for a in (teff, logg, feh))
        self.vmic, self.alpha_fe = np.asarray(vmic, float), np.asarray(alpha_fe, float)
        self.wave_vac = np.asarray(wave_vac, float)
        self.log10_ew = np.asarray(log10_ew, np.float64)
        shape = tuple(len(a) for a in (self.teff, self.logg, self.feh, self.vmic, self.alpha_fe))
        if self.log10_ew.shape != (*shape, len(self.wave_vac)):
            raise PhysicsGridError(
                f"log10_ew has shape {self.log10_ew.shape}; expected {(*shape, len(self.wave_vac))} "
                "(teff, logg, feh, vmic, alpha_fe, line)"
            )
        if np.any(np.diff(self.log10_ew, axis=2) <= 0):
            raise PhysicsGridError("log10_ew must grow with [Fe/H] at every node; the grid is not a curve of growth")
        self.filled = np.zeros(shape, bool) if filled is None else np.asarray(filled, bool)
        self.meta = meta or {}
        #: Off-node points the build tool computed directly with MOOG: params (n, 5: teff, logg, feh, vmic,
        #: alpha_fe) and EW (n, n_lines), for testing the interpolation.
        self.validation_params = np.empty((0, 5))
        self.validation_ew = np.empty((0, len(self.wave_vac)))
        # (teff, logg, vmic, alpha, feh, line): the four "atmosphere" axes first, for RegularGridInterpolator
        values = np.moveaxis(self.log10_ew, 2, 4)
        filled_values = np.moveaxis(self.filled, 2, 4).astype(float)
        # an axis with a single node (the SME grid's [alpha/Fe]) is held constant: two identical planes
        axes = []
        for j, ax in enumerate((self.teff, self.logg, self.vmic, self.alpha_fe)):
            if ax.size == 1:
                ax = np.array([ax[0] - 0.5, ax[0] + 0.5])
                values, filled_values = (np.repeat(v, 2, axis=j) for v in (values, filled_values))
            axes.append(ax)
        # contiguous once here: the interpolator would otherwise copy the whole grid at every call
        values = np.ascontiguousarray(values)
        self._rgi = RegularGridInterpolator(tuple(axes), values, bounds_error=False, fill_value=None)
        self._filled_rgi = RegularGridInterpolator(tuple(axes), filled_values, bounds_error=False, fill_value=None)
        # the same grids for the compiled interpolation: (n_teff, n_logg, n_vmic, n_alpha, values per node)
        self._axes = tuple(np.ascontiguousarray(ax, float) for ax in axes)
        self._values = values.reshape(*values.shape[:4], -1)
        self._filled_values = np.ascontiguousarray(filled_values).reshape(*filled_values.shape[:4], -1)
        #: the grid's axes and values as torch tensors, per device they were used on (``curves(device=...)``)
        self._on_device: dict[str, Any] = {}
        #: :meth:`line_index` of the last few line lists
        self._line_indices: dict = {}
        #: the edges that :meth:`curves` clips Teff, log g, vmic and [alpha/Fe] to, and those it warns beyond
        #: (1e-9 of slack for the three axes)
        lo = np.array([self.teff[0], self.logg[0], self.vmic[0], ALPHA_RANGE[0]])
        hi = np.array([self.teff[-1], self.logg[-1], self.vmic[-1], ALPHA_RANGE[1]])
        slack = np.array([1e-9, 1e-9, 1e-9, 0.0])
        self._edges = (lo, hi, lo - slack, hi + slack)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> CurveOfGrowth:
        """Load a packaged grid by name (``"moog"``, the default, or ``"sme"``) or a grid file by path.

        Examples
        --------
        >>> cog = CurveOfGrowth.load()
        >>> cog.n_lines, float(cog.feh.min()), float(cog.feh.max())
        (30, -5.0, -0.5)
        >>> CurveOfGrowth.load("sme").meta["tool"]
        'scripts/physics/build_sme_grid.py'
        """
        if path is None or (isinstance(path, str) and path in GRIDS):
            return _packaged(GRIDS[path or "moog"])
        if isinstance(path, str) and not path.endswith(".npz") and not Path(path).exists():
            raise PhysicsGridError(f"{path!r}: no such grid; expected a packaged grid name {sorted(GRIDS)} or the "
                                   "path of an .npz grid file")
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise PhysicsGridError(f"{path}: cannot read a curve-of-growth grid ({exc}); expected an .npz file "
                                 "written by scripts/physics/build_physics_grid.py") from exc
        missing = {"teff", "logg", "feh", "vmic", "alpha_fe", "log10_ew", "wave_vac"} - set(d)
        if missing:
            raise PhysicsGridError(f"{path}: lacks {sorted(missing)}; expected a curve-of-growth grid file")
        meta = json.loads(str(d["meta"])) if "meta" in d else {}
        cog = cls(d["teff"], d["logg"], d["feh"], d["vmic"], d["alpha_fe"], d["log10_ew"], d["wave_vac"],
                  d.get("filled"), meta)
        cog.validation_params = d.get("validation_params", np.empty((0, 5)))
        cog.validation_ew = d.get("validation_ew", np.empty((0, cog.n_lines)))
        return cog

    @property
    def n_lines(self) -> int:
        """Number of lines in the grid."""
        return len(self.wave_vac)

    def line_index(self, wave_vac: np.ndarray) -> np.ndarray:
        """Return the indices of the grid lines nearest to the given vacuum wavelengths (within 0.05 A), else raise."""
        wave_vac = np.atleast_1d(np.asarray(wave_vac, float))

        def find() -> np.ndarray:
            idx = np.abs(self.wave_vac[None, :] - wave_vac[:, None]).argmin(axis=1)
            off = np.abs(self.wave_vac[idx] - wave_vac)
            if np.any(off > 0.05):
                bad = wave_vac[off > 0.05]
                raise GridRangeError(f"lines {np.round(bad, 3).tolist()} A are not in the curve-of-growth grid; "
                                     f"expected wavelengths of {self.meta.get('linelist', 'the packaged line list')}")
            return idx

        # kept for the last few line lists (~65 us a call, for one spectrum): a copy, callers may change it
        return per_grid(self._line_indices, wave_vac.tobytes(), wave_vac, find, keep=4).copy()

    # ---- interpolation ------------------------------------------------------------------------------
    @staticmethod
    def _stacked(teff: Any, logg: Any, vmic: Any, alpha_fe: Any) -> np.ndarray:
        """Return the four parameters broadcast together as the columns of an (n, 4) float array (n >= 1)."""
        values = [np.asarray(a, float) for a in (teff, logg, vmic, alpha_fe)]
        shape = np.broadcast_shapes(*(v.shape for v in values)) or (1,)
        pts = np.empty((*shape, 4))
        for j, v in enumerate(values):
            pts[..., j] = v
        return pts.reshape(-1, 4)

    def _points(self, teff: Any, logg: Any, vmic: Any, alpha_fe: Any) -> np.ndarray:
        pts = self._stacked(teff, logg, vmic, alpha_fe)
        if not np.isfinite(pts).all():
            raise GridRangeError("teff, logg, vmic and alpha_fe must be finite; found NaN or inf")
        # all four columns at once: the grid's edges and [alpha/Fe]'s range
        lo, hi, warn_lo, warn_hi = self._edges
        beyond = (pts < warn_lo) | (pts > warn_hi)
        np.clip(pts, lo, hi, out=pts)
        if beyond.any():
            n_out = beyond.sum(axis=0)
            outside = [f"{name}: {n_out[j]} value(s) outside {lo[j]:g}..{hi[j]:g}"
                       for j, name in enumerate(("teff", "logg", "vmic", "alpha_fe")) if n_out[j]]
            warnings.warn("curve of growth: clipped to the grid edge: " + "; ".join(outside), FehkitWarning,
                          stacklevel=3)
        return pts

    def curves(
        self, teff: Any, logg: Any, vmic: Any, alpha_fe: Any = 0.4, lines: np.ndarray | None = None,
        device: str | None = None,
    ) -> np.ndarray:
        """log10 EW (mA) at every [Fe/H] node of the grid, for each star: shape (n_stars, n_feh, n_lines).

        Parameters are arrays of one value per star (or scalars). ``lines`` selects grid lines by index.
        Teff, log g and vmic outside the grid are clipped to its edge with a :class:`FehkitWarning`. With a torch
        ``device``, the interpolation runs there and a float64 tensor on it is returned.
        """
        points = self._points(teff, logg, vmic, alpha_fe)
        if device is not None:
            out = self._interpolate_torch(points, device)
            return out if lines is None else out[..., out.new_tensor(np.asarray(lines), dtype=int)]
        out = self._interpolate(self._rgi, self._values, points)
        return out if lines is None else out[..., lines]

    def _interpolate_torch(self, points: np.ndarray, device: str) -> Any:
        """Run the multilinear interpolation of :meth:`_interpolate` as torch operations on ``device``: (n, F, L).

        The compiled kernel's steps (each axis's cell, its fraction, the 16 corners summed in the same order), so
        the same numbers to rounding.
        """
        import torch

        dev = torch.device(device)
        key = str(dev)
        if key not in self._on_device:  # the grid is copied to a device once
            self._on_device[key] = (tuple(torch.as_tensor(ax, device=dev) for ax in self._axes),
                                    torch.as_tensor(self._values, device=dev))
        axes, values = self._on_device[key]
        pts = torch.as_tensor(points, dtype=torch.float64, device=dev)
        idx, frac = [], []
        for d, ax in enumerate(axes):
            j = torch.clamp(torch.searchsorted(ax, pts[:, d].contiguous(), right=True) - 1, 0, ax.numel() - 2)
            idx.append(j)
            frac.append((pts[:, d] - ax[j]) / (ax[j + 1] - ax[j]))
        out = torch.zeros((pts.shape[0], values.shape[4]), dtype=torch.float64, device=dev)
        for corner in range(16):  # itertools.product order: the first axis varies slowest
            weight = torch.ones(pts.shape[0], dtype=torch.float64, device=dev)
            c = []
            for d in range(4):
                upper = (corner >> (3 - d)) & 1
                c.append(idx[d] + upper)
                weight = weight * (frac[d] if upper else 1.0 - frac[d])
            out = out + values[c[0], c[1], c[2], c[3]] * weight[:, None]
        return out.reshape(pts.shape[0], *self._rgi.values.shape[4:])

    def _interpolate(self, rgi: RegularGridInterpolator, values: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Run ``rgi`` at ``points`` (n, 4), or the compiled kernel on the same grid (``values``) where numba imports.

        The kernel gives the same numbers (same weights, same order of the sum over the corners), ~10 times faster.
        """
        kernels = _kernels() if USE_NUMBA else None
        if kernels is None:
            return rgi(points)
        out = kernels.interpolate4(*self._axes, values, np.ascontiguousarray(points, float))
        return out.reshape(len(points), *rgi.values.shape[4:])

    def clipped(self, teff: Any, logg: Any, vmic: Any, alpha_fe: Any = 0.4) -> np.ndarray:
        """Tell, per star, what :meth:`curves` clips to the grid's edge: ``""`` or e.g. ``"teff 3677 -> 3900"``.

        The same rule as the interpolation (Teff, log g, vmic to the grid's axes, [alpha/Fe] to
        :data:`ALPHA_RANGE`), without a warning: an object array of one text per star, parts joined by ``"; "``.

        Examples
        --------
        >>> CurveOfGrowth.load().clipped([3677, 4800], [0.53, 1.5], 1.8).tolist()
        ['teff 3677 -> 3900', '']
        """
        pts = self._stacked(teff, logg, vmic, alpha_fe)
        lo, hi = self._edges[:2]
        beyond = (pts < lo - 1e-9) | (pts > hi + 1e-9)
        if not beyond.any():
            return np.full(len(pts), "", dtype=object)
        parts: list[list[str]] = [[] for _ in range(len(pts))]
        for j, name in enumerate(("teff", "logg", "vmic", "alpha_fe")):
            for i in np.flatnonzero(beyond[:, j]):
                parts[i].append(f"{name} {pts[i, j]:g} -> {np.clip(pts[i, j], lo[j], hi[j]):g}")
        return np.array(["; ".join(p) for p in parts], dtype=object)

    def filled_nodes(self) -> pd.DataFrame:
        """List the filled nodes (no usable atmosphere, or the code failed): one row per ([alpha/Fe], Teff, log g).

        Columns ``alpha_fe``, ``teff``, ``logg``, ``n_filled`` (of ``n_nodes`` = [Fe/H] x vmic nodes there),
        ``feh`` (the filled [Fe/H] nodes as ranges of consecutive nodes, for any vmic) and ``vmic`` (``"all"``
        or the vmic nodes that have any filled node).

        Examples
        --------
        >>> t = CurveOfGrowth.load().filled_nodes()
        >>> t.loc[(t.teff == 4800) & (t.logg == 0.5) & (t.alpha_fe == 0.4), "feh"].item()
        '-5..-3.5, -2.75..-2.25'
        """
        rows = []
        for ia, a in enumerate(self.alpha_fe):
            for it, t in enumerate(self.teff):
                for ig, g in enumerate(self.logg):
                    f = self.filled[it, ig, :, :, ia]  # (feh, vmic)
                    if not f.any():
                        continue
                    fe = np.flatnonzero(f.any(axis=1))
                    runs = np.split(fe, np.flatnonzero(np.diff(fe) > 1) + 1)
                    vm = self.vmic[f.any(axis=0)]
                    rows.append({"alpha_fe": a, "teff": t, "logg": g, "n_filled": int(f.sum()), "n_nodes": f.size,
                                 "feh": ", ".join(f"{self.feh[r[0]]:g}" + (f"..{self.feh[r[-1]]:g}" if r.size > 1
                                                                           else "") for r in runs),
                                 "vmic": "all" if vm.size == self.vmic.size else ", ".join(f"{v:g}" for v in vm)})
        return pd.DataFrame(rows, columns=["alpha_fe", "teff", "logg", "n_filled", "n_nodes", "feh", "vmic"])

    def in_filled_region(self, teff: Any, logg: Any, vmic: Any, alpha_fe: Any = 0.4) -> np.ndarray:
        """Tell where interpolation draws on nodes filled along log g (no usable atmosphere there).

        Shape (n_stars, n_feh): a value per star and [Fe/H] node.
        """
        return self._interpolate(self._filled_rgi, self._filled_values, self._points(teff, logg, vmic, alpha_fe)) > 0

    def touches_filled(self, teff: Any, logg: Any, feh: Any, vmic: Any, alpha_fe: Any = 0.4) -> np.ndarray:
        """Tell, per star, whether its interpolated EWs draw on filled nodes (no usable MOOG atmosphere there).

        Such values are extrapolations from neighbouring nodes (``fehkit/physics/README.md``): less accurate.
        """
        feh = np.atleast_1d(np.asarray(feh, float)).ravel()
        near = self.in_filled_region(teff, logg, vmic, alpha_fe)
        if near.shape[0] == 1 and feh.size > 1:
            near = np.repeat(near, feh.size, axis=0)
        k = np.clip(np.searchsorted(self.feh, np.clip(feh, self.feh[0], self.feh[-1]), side="right") - 1, 0,
                    len(self.feh) - 2)
        rows = np.arange(feh.size)
        return near[rows, k] | near[rows, k + 1]

    def ew(
        self, teff: Any, logg: Any, feh: Any, vmic: Any, alpha_fe: Any = 0.4, lines: np.ndarray | None = None
    ) -> np.ndarray:
        """Equivalent width (mA) of each line for each star: shape (n_stars, n_lines).

        Below the grid's lowest [Fe/H] (-5) the lines are on the linear part of the curve of growth and are
        extended with EW proportional to the iron abundance; above its top (-0.5) the result is NaN.

        Examples
        --------
        >>> cog = CurveOfGrowth.load()
        >>> i = cog.line_index([15298.7])  # Fe I 15294.56 air, the strongest line of the list
        >>> ew = cog.ew(4800, 1.5, [-1.0, -2.0, -3.0], 2.0, 0.4, lines=i)
        >>> np.round(ew[:, 0], 1).tolist()
        [224.7, 104.8, 19.2]
        """
        feh = np.atleast_1d(np.asarray(feh, float)).ravel()
        curves = self.curves(teff, logg, vmic, alpha_fe, lines)
        if curves.shape[0] == 1 and feh.size > 1:
            curves = np.repeat(curves, feh.size, axis=0)
        if feh.size != curves.shape[0]:
            raise GridRangeError(f"feh has {feh.size} values; expected one per star ({curves.shape[0]})")
        return 10.0 ** self._eval_feh(curves, feh)

    def _eval_feh(self, curves: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """Monotone cubic (PCHIP) in [Fe/H] of log EW, each star at its own [Fe/H]."""
        coef = pchip_coefficients(self.feh, curves)  # (4, n_stars, n_feh - 1, n_lines)
        x = np.clip(feh, self.feh[0], self.feh[-1])
        k = np.clip(np.searchsorted(self.feh, x, side="right") - 1, 0, len(self.feh) - 2)
        dx = (x - self.feh[k])[:, None]
        c = coef[:, np.arange(len(feh)), k, :]
        val = ((c[0] * dx + c[1]) * dx + c[2]) * dx + c[3]
        below = feh < self.feh[0]
        val[below] = curves[below, 0, :] + (feh[below] - self.feh[0])[:, None]  # EW proportional to N(Fe)
        val[feh > self.feh[-1] + 1e-9] = np.nan
        return val

    # ---- inversion: the classical curve-of-growth method ---------------------------------------------
    def abundance(
        self,
        ew: np.ndarray,
        teff: Any,
        logg: Any,
        vmic: Any,
        alpha_fe: Any = 0.4,
        lines: np.ndarray | None = None,
        ew_err: np.ndarray | None = None,
        device: str | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Invert the curve of growth line by line: the [Fe/H] at which each line has the measured EW.

        Parameters
        ----------
        ew : numpy.ndarray
            EW (mA) shaped (n_stars, n_lines) (lines of the grid, or those chosen by ``lines``).
        teff, logg, vmic, alpha_fe : array_like
            One value per star.
        lines : numpy.ndarray, optional
            Grid line indices the columns of ``ew`` refer to.
        ew_err : numpy.ndarray, optional
            EW errors (mA); if given, the [Fe/H] errors from the local slope of the curve of growth are
            returned too.
        device : str, optional
            A torch device: run the inversion (the same bisection) as tensor operations there. Default: NumPy
            (or the compiled kernel) on the CPU.

        Returns
        -------
        numpy.ndarray or tuple of numpy.ndarray
            [Fe/H] per star and line, NaN where EW <= 0 or not finite (no abundance: the line is not
            detected) or where the EW is stronger than the curve reaches at [Fe/H] = -0.5. Below [Fe/H] = -5
            the linear part of the curve is extended. With ``ew_err``: ``(feh, feh_err)``.

        Examples
        --------
        >>> cog = CurveOfGrowth.load()
        >>> ew = cog.ew(4800, 1.5, -2.3, 1.8, 0.4)
        >>> feh = cog.abundance(ew, 4800, 1.5, 1.8, 0.4)
        >>> bool(np.allclose(feh, -2.3, atol=1e-6))
        True
        """
        curves = self.curves(teff, logg, vmic, alpha_fe, lines, device=device)
        ew = np.atleast_2d(np.asarray(ew, float))
        if ew.shape[0] != curves.shape[0] and curves.shape[0] == 1:
            curves = curves.repeat(ew.shape[0], 1, 1) if device is not None else np.repeat(curves, ew.shape[0], axis=0)
        if ew.shape != (curves.shape[0], curves.shape[2]):
            raise GridRangeError(f"ew has shape {ew.shape}; expected (n_stars, n_lines) = "
                                 f"{(curves.shape[0], curves.shape[2])}")
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(np.isfinite(ew) & (ew > 0), np.log10(ew), np.nan)
        kernels = _kernels() if USE_NUMBA and device is None else None
        if device is not None:
            feh, slope = self._invert(curves, y, device)
        elif kernels is not None:
            feh, slope = np.empty_like(y), np.empty_like(y)
            kernels.invert(np.ascontiguousarray(curves), self.feh, y, feh, slope)
        else:
            feh, slope = self._invert(curves, y)
        if ew_err is None:
            return feh
        with np.errstate(divide="ignore", invalid="ignore"):
            feh_err = np.asarray(ew_err, float) / (ew * np.log(10) * slope)
        return feh, np.where(np.isnan(feh), np.nan, feh_err)

    def _invert(self, curves: Any, y: np.ndarray, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return where each curve (n, F, L) reaches log EW ``y`` (n, L): [Fe/H] and d log EW / d [Fe/H].

        NaN where ``y`` is NaN or above the curve's top; below its bottom the linear part, slope 1. NumPy, or with
        a torch ``device`` (``curves`` a tensor there) the same steps as tensor operations there.
        """
        if device is None:
            xp, to = np, np.asarray
            coef, curves_x, y_x, nodes = pchip_coefficients(self.feh, curves), curves, y, self.feh
        else:
            import torch

            xp = torch
            dev = torch.device(device)

            def to(a: Any) -> Any:
                return torch.as_tensor(a, dtype=torch.float64, device=dev)

            coef, curves_x = pchip_coefficients(self.feh, curves), curves
            y_x, nodes = to(y), to(self.feh)
        nf = len(self.feh)
        # the interval of each (star, line): curves are increasing in [Fe/H]
        k = xp.clip((curves_x <= y_x[:, None, :]).sum(axis=1) - 1, 0, nf - 2)
        s, li = np.meshgrid(np.arange(y.shape[0]), np.arange(y.shape[1]), indexing="ij")
        if device is not None:
            s, li = torch.as_tensor(s, device=dev), torch.as_tensor(li, device=dev)
        c = coef[:, s, k, li]  # (4, n_stars, n_lines)
        lo = xp.zeros_like(y_x)
        hi = (nodes[1:] - nodes[:-1])[k] + lo
        for _ in range(40):  # bisection on a monotone cubic: 2**-40 of 0.25 dex
            mid = 0.5 * (lo + hi)
            f = ((c[0] * mid + c[1]) * mid + c[2]) * mid + c[3]
            up = f < y_x
            lo = xp.where(up, mid, lo)
            hi = xp.where(up, hi, mid)
        feh = nodes[k] + 0.5 * (lo + hi)
        first, last = curves_x[:, 0, :], curves_x[:, -1, :]
        feh = xp.where(y_x < first, nodes[0] + (y_x - first), feh)
        feh = xp.where(y_x > last, xp.nan, feh)
        feh = xp.where(xp.isnan(y_x), xp.nan, feh)
        d = 0.5 * (lo + hi)
        slope = xp.where(y_x < first, 1.0, (3 * c[0] * d + 2 * c[1]) * d + c[2])  # d log EW / d [Fe/H]
        if device is not None:
            return feh.cpu().numpy(), slope.cpu().numpy()
        return to(feh), to(slope)


def pchip_coefficients(x: np.ndarray, y: Any) -> Any:
    """Return the coefficients of the monotone cubic (PCHIP) through ``y`` (n, len(x), m) along axis 1.

    Shape (4, n, len(x) - 1, m): the numbers ``scipy.interpolate.PchipInterpolator(x, y, axis=1).c`` holds (same
    formulas in the same order: bit for bit), with the stars first and no interpolator object. Piece ``i`` of star
    ``s`` is ``c[0] d**3 + c[1] d**2 + c[2] d + c[3]`` at ``d = x' - x[i]``. ``y`` may be a torch tensor: the same
    steps then run on its device (the torch engine's curves of growth).
    """
    x = np.asarray(x, float)
    if isinstance(y, np.ndarray) or not hasattr(y, "device"):
        xp, y = np, np.asarray(y, float)
        h = np.diff(x)[None, :, None]
    else:
        import torch

        xp = torch
        h = torch.as_tensor(np.diff(x), dtype=y.dtype, device=y.device)[None, :, None]
    m = (y[:, 1:] - y[:, :-1]) / h                         # slope of each piece
    d = xp.zeros_like(y)                                  # derivative at each node: weighted harmonic mean
    if x.size == 2:
        d[:, 0] = d[:, 1] = m[:, 0]
    else:
        h0, h1 = h[:, :-1], h[:, 1:]
        sign = xp.sign(m)
        flat = (sign[:, 1:] != sign[:, :-1]) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
        w1, w2 = 2 * h1 + h0, h1 + 2 * h0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (w1 / m[:, :-1] + w2 / m[:, 1:]) / (w1 + w2)
            d[:, 1:-1] = xp.where(flat, 0.0, 1.0 / mean)
        steps = np.diff(x)
        d[:, 0] = _pchip_end(xp, steps[0], steps[1], m[:, 0], m[:, 1])
        d[:, -1] = _pchip_end(xp, steps[-1], steps[-2], m[:, -1], m[:, -2])
    t = (d[:, :-1] + d[:, 1:] - 2 * m) / h
    return xp.stack((t / h, (m - d[:, :-1]) / h - t, d[:, :-1], y[:, :-1]))


def _pchip_end(xp: Any, h0: float, h1: float, m0: Any, m1: Any) -> Any:
    """One-sided three-point derivative at an end, kept monotone (as scipy's PCHIP does); ``xp`` numpy or torch."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    wrong = xp.sign(d) != xp.sign(m0)
    steep = (xp.sign(m0) != xp.sign(m1)) & (xp.abs(d) > 3.0 * xp.abs(m0))
    return xp.where(wrong, 0.0, xp.where(steep, 3.0 * m0, d))


def _kernels() -> Any:
    """Return :mod:`fehkit.physics.joint_kernels` (numba imported on first use), or None without numba."""
    return compiled("fehkit.physics.joint_kernels")


@lru_cache(maxsize=len(GRIDS))
def _packaged(name: str = DEFAULT_GRID) -> CurveOfGrowth:
    path = resources.files("fehkit.physics") / "data" / name
    with resources.as_file(path) as p:
        if not Path(p).exists():
            raise PhysicsGridError(f"{p}: the packaged curve-of-growth grid is missing; expected it in the "
                                 "installed package (rebuild with scripts/physics/"
                                 f"{'build_sme_grid.py' if name == GRIDS['sme'] else 'build_physics_grid.py'})")
        return CurveOfGrowth.load(p)
