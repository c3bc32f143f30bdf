"""Explore the curve of growth: how Teff, log g, vmic, [Fe/H] and S/N decide which Fe I lines APOGEE can see."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np
from jupyter_bokeh import BokehModel

from fehkit.errors import PlotInputError
from fehkit.lines import load_linelist
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.line_formation import (
    LINEAR_SLOPE,
    SATURATED_SLOPE,
    ReducedCurveOfGrowth,
    boltzmann_factor,
    line_profile,
    reduced_curve_of_growth,
)
from fehkit.plots.cog import (
    line_profile_figure,
    reduced_cog_figure,
    update_line_profile_figure,
    update_reduced_cog_figure,
)
from fehkit.widgets._bokeh import ensure_bokehjs

#: The slider ranges: the MOOG grid's Teff, log g and vmic; [Fe/H] down to -6 (the linear extension below -5).
RANGES = {"teff": (3900.0, 6600.0, 50.0), "logg": (0.0, 5.0, 0.1), "vmic": (0.5, 3.5, 0.1),
          "feh": (-6.0, -0.5, 0.05), "snr": (10.0, 1000.0)}


class CurveOfGrowthExplorer(widgets.VBox):
    """A notebook widget: the packaged Fe I lines of one star on the reduced curve of growth, and one line's profile.

    Sliders set Teff, log g, vmic, [Fe/H] and the S/N per pixel; a drop-down picks the line whose profile is drawn.
    The upper figure (:func:`fehkit.plots.cog.reduced_cog_figure`) places every line at log gf - theta chi and
    log10(EW / lambda), with the EWs of fehkit's MOOG grid, the linear and saturated parts of the curve shaded and
    Cayrel's 3-sigma detection limit at that S/N; the lower one (:func:`fehkit.plots.cog.line_profile_figure`) is
    the picked line as APOGEE would record it, with noise of that S/N. Every change redraws both figures in place
    (their data sources change, the figures stay, so a zoom is kept); the numbers come from
    :mod:`fehkit.physics.line_formation`, the widget computes nothing itself. Loads BokehJS by itself.

    Parameters
    ----------
    teff, logg, vmic, feh, snr : float
        The starting values (K, dex, km/s, dex, per pixel); default a metal-poor red giant at S/N 100.
    alpha_fe : float
        [alpha/Fe] (fixed).
    line : float, optional
        Vacuum wavelength (A) of the line shown first (default: the strongest at this Teff).
    seed : int
        Seed of the noise drawn on the profile's pixels.

    Attributes
    ----------
    result : fehkit.physics.line_formation.ReducedCurveOfGrowth
        The lines at the current settings.
    profile : dict
        :func:`~fehkit.physics.line_formation.line_profile` of the picked line.

    Examples
    --------
    >>> explorer = CurveOfGrowthExplorer(feh=-3.0, snr=100)
    >>> int(explorer.result.detected.sum())
    1
    >>> explorer.snr.value = 300
    >>> int(explorer.result.detected.sum())
    5
    """

    def __init__(self, teff: float = 4800.0, logg: float = 1.5, vmic: float = 2.0, feh: float = -3.0,
                 snr: float = 100.0, alpha_fe: float = 0.4, line: float | None = None, seed: int = 0) -> None:
        for name, value in (("teff", teff), ("logg", logg), ("vmic", vmic), ("feh", feh), ("snr", snr)):
            lo, hi = RANGES[name][:2]
            if not (lo <= float(value) <= hi):
                raise PlotInputError(f"{name}: expected a value in {lo:g}..{hi:g}, found {value}")
        ensure_bokehjs()
        self.alpha_fe = float(alpha_fe)
        self.seed = int(seed)
        self._cog = CurveOfGrowth.load()
        self._lines = load_linelist()
        slider: dict[str, Any] = dict(continuous_update=False, style={"description_width": "90px"},
                                      layout=widgets.Layout(width="300px"))
        self.teff = widgets.FloatSlider(value=teff, min=RANGES["teff"][0], max=RANGES["teff"][1],
                                        step=RANGES["teff"][2], description="Teff (K)", readout_format=".0f",
                                        **slider)
        self.logg = widgets.FloatSlider(value=logg, min=RANGES["logg"][0], max=RANGES["logg"][1],
                                        step=RANGES["logg"][2], description="log g", readout_format=".1f", **slider)
        self.vmic = widgets.FloatSlider(value=vmic, min=RANGES["vmic"][0], max=RANGES["vmic"][1],
                                        step=RANGES["vmic"][2], description="vmic (km/s)", readout_format=".1f",
                                        **slider)
        self.feh = widgets.FloatSlider(value=feh, min=RANGES["feh"][0], max=RANGES["feh"][1],
                                       step=RANGES["feh"][2], description="[Fe/H]", readout_format="+.2f", **slider)
        self.snr = widgets.FloatLogSlider(value=snr, base=10, min=1.0, max=3.0, step=0.01, description="S/N",
                                          readout_format=".0f", **slider)
        waves = self._lines["wave_vac"].to_numpy(float)
        labels = [f"Fe I {w:.2f} Å (χ {c:.2f} eV, log gf {g:+.2f})"
                  for w, c, g in zip(waves, self._lines["chi"], self._lines["loggf"], strict=True)]
        first = int(np.argmax(self._lines["loggf"] - 5040.0 / teff * self._lines["chi"])) if line is None else \
            self._find(line)
        self.line = widgets.Dropdown(options=list(zip(labels, range(len(labels)), strict=True)), value=first,
                                     description="line", layout=widgets.Layout(width="460px"))
        self.details = widgets.HTML()
        self.result = self._compute()
        self.profile = self._profile()
        self.cog_plot = BokehModel(reduced_cog_figure(self.result, self.index))
        self.profile_plot = BokehModel(line_profile_figure(self.profile, title=self._profile_title()))
        self.details.value = self._details_html()
        for control in (self.teff, self.logg, self.vmic, self.feh, self.snr):
            control.observe(self._update, names="value")
        self.line.observe(self._new_line, names="value")
        controls = widgets.VBox([widgets.HBox([self.teff, self.logg, self.vmic]), widgets.HBox([self.feh, self.snr]),
                                 self.line])
        super().__init__([controls, self.cog_plot, widgets.HBox([self.profile_plot]), self.details])

    @property
    def index(self) -> int:
        """Index of the picked line in the packaged line list."""
        return int(self.line.value)

    def _find(self, wave: float) -> int:
        waves = self._lines["wave_vac"].to_numpy(float)
        k = int(np.argmin(np.abs(waves - float(wave))))
        if abs(waves[k] - float(wave)) > 0.05:
            raise PlotInputError(f"line: {wave} A is not a packaged Fe I line; expected one of "
                                 f"{np.round(waves, 2).tolist()[:5]} ... (vacuum A)")
        return k

    def _compute(self) -> ReducedCurveOfGrowth:
        return reduced_curve_of_growth(float(self.teff.value), float(self.logg.value), float(self.feh.value),
                                       float(self.vmic.value), float(self.snr.value), self.alpha_fe, self._cog,
                                       self._lines)

    def _profile(self) -> dict[str, np.ndarray]:
        k = self.index
        return line_profile(float(self.result.wave_vac[k]), float(self.result.ew_mA[k]), float(self.teff.value),
                            float(self.logg.value), float(self.feh.value), float(self.vmic.value),
                            float(self.snr.value), seed=self.seed)

    def _profile_title(self) -> str:
        r, k = self.result, self.index
        return (f"Fe I {r.wave_vac[k]:.2f} Å: EW {r.ew_mA[k]:.2f} mÅ, {r.ew_mA[k] / r.sigma_ew_mA[k]:.1f}σ at "
                f"S/N {r.snr:.0f} (σ_EW {r.sigma_ew_mA[k]:.1f} mÅ), {r.regime[k]} part of the curve")

    def _update(self, change: dict) -> None:
        self.result = self._compute()
        self._redraw()

    def _new_line(self, change: dict) -> None:
        self._redraw()

    def _redraw(self) -> None:
        self.profile = self._profile()
        # the same figures, new data: BokehModel sends only the changes to the browser
        update_reduced_cog_figure(self.cog_plot._model, self.result, self.index)
        update_line_profile_figure(self.profile_plot._model, self.profile, title=self._profile_title())
        self.details.value = self._details_html()

    def _details_html(self) -> str:
        r, k = self.result, self.index
        rows = [
            ("picked line", f"Fe I {r.wave_vac[k]:.2f} Å (vacuum), χ = {r.chi[k]:.2f} eV, log gf = {r.loggf[k]:+.3f}"),
            ("Boltzmann factor 10^(−θχ)", f"{float(boltzmann_factor(r.chi[k], r.teff)):.2e} of a ground-level line's"),
            ("EW (MOOG grid) / 3σ limit", f"{r.ew_mA[k]:.2f} mÅ / {3 * r.sigma_ew_mA[k]:.1f} mÅ"),
            ("d log EW / d [Fe/H]", f"{r.slope[k]:.2f} (linear ≥ {LINEAR_SLOPE}, saturated ≤ {SATURATED_SLOPE})"),
            ("lines above 3σ", f"{int(r.detected.sum())} of {r.wave_vac.size}"),
            ("all lines together", f"{r.joint_sigma:.1f}σ " + ("(iron detected)" if r.joint_sigma >= 3
                                                              else "(below 3σ: an upper limit)")),
        ]
        body = "".join(f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(b)}</b></td></tr>" for a, b in rows)
        return (f"<div style='font-size:90%'><table>{body}</table>EWs: fehkit's MOOG curve-of-growth grid; "
                "noise: Cayrel (1988) at the S/N per pixel.</div>")
