"""Bokeh figure builders: data in, figure out, no science inside.

Figures are standalone Bokeh models, so they render in static HTML, in notebooks (``bokeh.io.show`` or
``jupyter_bokeh.BokehModel``) and under nbval alike; nothing here needs a Bokeh server. One module per subject:

* :mod:`~fehkit.plots.spectra` -- whole spectra, masks and chip gaps, the fitted continuum;
* :mod:`~fehkit.plots.line_fits` -- one line's Voigt fit, measured against true equivalent widths;
* :mod:`~fehkit.plots.results` -- [Fe/H] of many stars: 1:1, residuals, members, binned errors;
* :mod:`~fehkit.plots.likelihood` -- one star: its joint likelihood and its lines on the curve of growth;
* :mod:`~fehkit.plots.training` -- how the ensemble learns and fuses: loss curves, out-of-fold residuals, weights,
  fusion metrics, feature importances;
* :mod:`~fehkit.plots.style` -- the models' names and colours, titles and legends every results figure shares.
"""

from fehkit.plots.likelihood import likelihood_figure, line_ew_figure, update_likelihood_figure, update_line_ew_figure
from fehkit.plots.line_fits import ew_comparison_figure, line_fit_figure, update_line_fit_figure
from fehkit.plots.results import (
    bin_label,
    binned_mae_figure,
    members_figure,
    model_stats,
    one_to_one_figure,
    residual_histogram_figure,
    residual_vs_figure,
)
from fehkit.plots.spectra import (
    comparison_figure,
    continuum_figure,
    continuum_residual_figure,
    display_continuum,
    spectrum_figure,
    spectrum_label,
    update_continuum_figure,
    update_continuum_residual_figure,
    update_spectrum_figure,
)
from fehkit.plots.style import model_color, model_column, model_label

__all__ = [
    "bin_label",
    "binned_mae_figure",
    "comparison_figure",
    "continuum_figure",
    "continuum_residual_figure",
    "display_continuum",
    "ew_comparison_figure",
    "likelihood_figure",
    "line_ew_figure",
    "line_fit_figure",
    "members_figure",
    "model_color",
    "model_column",
    "model_label",
    "model_stats",
    "one_to_one_figure",
    "residual_histogram_figure",
    "residual_vs_figure",
    "spectrum_figure",
    "spectrum_label",
    "update_continuum_figure",
    "update_continuum_residual_figure",
    "update_likelihood_figure",
    "update_line_ew_figure",
    "update_line_fit_figure",
    "update_spectrum_figure",
]
