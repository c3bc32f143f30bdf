"""The blend background: every H-band absorption line that is not one of the packaged Fe I lines.

Real APOGEE spectra of metal-poor stars hold, besides the Fe I lines fehkit measures, lines of Mg, Si, Ca,
Ti, ..., the hydrogen Brackett series, CO, CN, OH-free molecular bands and other, weaker Fe lines. They blend
into the Fe windows and shape what the continuum fit sees. ``scripts/physics/build_physics_grid.py``
computes them once with MOOG ``synth`` on a coarse grid of Teff, log g and [M/H] (atoms plus the shipped
molecular lists except H2O, [alpha/Fe] = +0.4, vmic 1.5 km/s), convolves them with the APOGEE line-spread
function (Gaussian, R = 22,500) and samples them on the apStar grid. fehkit stores the optical-depth-like
``tau = -ln(F / F_cont)`` and interpolates log10(tau) multilinearly, which is linear in [M/H] for weak lines,
so the 0.5-1 dex [M/H] steps interpolate well.
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

from fehkit.errors import FehkitWarning, GridRangeError, PhysicsGridError
from fehkit.spectra import APSTAR_NPIX

#: File name of the packaged background library inside ``fehkit/physics/data``.
DEFAULT_BACKGROUND = "background.npz"

_TAU_FLOOR = 1e-7


class BackgroundLibrary:
    """LSF-convolved, apStar-sampled optical depth of all non-packaged lines on a (Teff, log g, [M/H]) grid.

    Parameters
    ----------
    teff, logg, mh : numpy.ndarray
        Grid axes, increasing.
    tau : numpy.ndarray
        ``-ln(F / F_cont)`` shaped (teff, logg, mh, 8575).
    filled : numpy.ndarray, optional
        True for nodes filled along log g (no usable atmosphere).
    meta : dict, optional
        Provenance written by the build tool.
    """

    def __init__(
        self,
        teff: np.ndarray,
        logg: np.ndarray,
        mh: np.ndarray,
        tau: np.ndarray,
        filled: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.teff, self.logg, self.mh = (np.asarray(a, float) for a in (teff, logg, mh))
        tau = np.asarray(tau, np.float32)
        if tau.shape != (len(self.teff), len(self.logg), len(self.mh), APSTAR_NPIX):
            raise PhysicsGridError(f"tau has shape {tau.shape}; expected (teff, logg, mh, {APSTAR_NPIX})")
        self.filled = np.zeros(tau.shape[:3], bool) if filled is None else np.asarray(filled, bool)
        self.meta = meta or {}
        self._logtau = np.log10(tau + np.float32(_TAU_FLOOR))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> BackgroundLibrary:
        """Load a background file written by the build tool (default: the packaged one)."""
        if path is None:
            return _packaged()
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise PhysicsGridError(f"{path}: cannot read a background library ({exc}); expected an .npz file "
                                   "written by scripts/physics/build_physics_grid.py") from exc
        missing = {"teff", "logg", "mh", "tau"} - set(d)
        if missing:
            raise PhysicsGridError(f"{path}: lacks {sorted(missing)}; expected a background library file")
        meta = json.loads(str(d["meta"])) if "meta" in d else {}
        return cls(d["teff"], d["logg"], d["mh"], d["tau"], d.get("filled"), meta)

    def tau(self, teff: Any, logg: Any, mh: Any, warn: bool = True) -> np.ndarray:
        """Background optical depth for each star on the apStar grid: shape (n_stars, 8575), float32.

        Below the lowest [M/H] the lines are weak and tau is scaled with the metal abundance (10**d[M/H]);
        Teff and log g outside the grid, and [M/H] above it, are clipped to its edge (with a
        :class:`FehkitWarning` unless ``warn`` is False).
        """
        cols = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, float)) for a in (teff, logg, mh)))
        pts = np.stack([c.ravel() for c in cols], axis=-1)
        if not np.all(np.isfinite(pts)):
            raise GridRangeError("background: teff, logg and mh must be finite; found NaN or inf")
        below = np.minimum(pts[:, 2] - self.mh[0], 0.0)
        pts[:, 2] = np.maximum(pts[:, 2], self.mh[0])
        outside = []
        for j, (name, axis) in enumerate(zip(("teff", "logg", "mh"), (self.teff, self.logg, self.mh), strict=True)):
            n_out = int(np.sum((pts[:, j] < axis[0] - 1e-9) | (pts[:, j] > axis[-1] + 1e-9)))
            if n_out:
                outside.append(f"{name}: {n_out} value(s) outside {axis[0]:g}..{axis[-1]:g}")
            pts[:, j] = np.clip(pts[:, j], axis[0], axis[-1])
        if outside and warn:
            warnings.warn("background: clipped to the grid edge: " + "; ".join(outside), FehkitWarning, stacklevel=2)
        out = self._interp(pts)
        out -= np.float32(_TAU_FLOOR)
        np.maximum(out, 0, out=out)
        out *= (10.0 ** below).astype(np.float32)[:, None]
        return out

    def _interp(self, pts: np.ndarray) -> np.ndarray:
        """Interpolate log10 tau trilinearly, in float32 and in chunks.

        scipy's RegularGridInterpolator works in float64 on all 8575 pixels at once: 4x the memory and ~3x the
        time here.
        """
        out = np.empty((len(pts), APSTAR_NPIX), np.float32)
        grid = self._logtau
        axes = (self.teff, self.logg, self.mh)
        for start in range(0, len(pts), 256):
            p = pts[start:start + 256]
            idx, w = [], []
            for j, axis in enumerate(axes):
                i = np.clip(np.searchsorted(axis, p[:, j], side="right") - 1, 0, len(axis) - 2)
                idx.append(i)
                w.append(((p[:, j] - axis[i]) / (axis[i + 1] - axis[i])).astype(np.float32))
            acc = np.zeros((len(p), APSTAR_NPIX), np.float32)
            for a in (0, 1):
                for b in (0, 1):
                    for c in (0, 1):
                        wt = (w[0] if a else 1 - w[0]) * (w[1] if b else 1 - w[1]) * (w[2] if c else 1 - w[2])
                        acc += wt[:, None] * grid[idx[0] + a, idx[1] + b, idx[2] + c]
            out[start:start + 256] = np.power(np.float32(10.0), acc)
        return out


@lru_cache(maxsize=1)
def _packaged() -> BackgroundLibrary:
    path = resources.files("fehkit.physics") / "data" / DEFAULT_BACKGROUND
    with resources.as_file(path) as p:
        if not Path(p).exists():
            raise PhysicsGridError(f"{p}: the packaged background library is missing; expected it in the installed "
                                   "package (rebuild with scripts/physics/build_physics_grid.py)")
        return BackgroundLibrary.load(p)
