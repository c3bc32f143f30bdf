"""The continuum and EW figures and widgets: they build, they follow their controls, and synthetic data says so.

Given a few simulated stars and the two real DR17 examples, when the figure builders and the widgets are used the way
the notebook uses them, then they draw what they claim and label every synthetic thing SYNTHETIC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from jupyter_bokeh import BokehModel

from fehkit.continuum import normalize
from fehkit.ew import measure_ew
from fehkit.io import read_apogee
from fehkit.plots import (
    continuum_figure,
    ew_comparison_figure,
    line_fit_figure,
    spectrum_figure,
    spectrum_label,
    update_line_fit_figure,
)
from fehkit.synth import make_benchmark, simulate
from fehkit.widgets import ContinuumExplorer, LineInspector, SpectrumViewer

FE_15298 = 2  # Fe I 15298.74, one of the strongest H-band Fe lines


@pytest.fixture(scope="module")
def sim():
    return make_benchmark(4, seed=11)


@pytest.fixture(scope="module")
def measured(sim):
    norm = normalize(sim.batch)
    return norm, measure_ew(norm.batch, mc_draws=0)


@pytest.fixture(scope="module")
def real(examples):
    batch = read_apogee(examples)
    norm = normalize(batch)
    return batch, norm, measure_ew(norm.batch, mc_draws=0)


def _legend(fig) -> list[str]:
    """The legend entries shown (an entry of something the figure has no data for is hidden)."""
    return [item.label.value for legend in fig.legend for item in legend.items if item.visible]


def _texts(fig) -> str:
    return " | ".join(t.text for t in [fig.title, *fig.above, *fig.below] if hasattr(t, "text"))


# -- figure builders --------------------------------------------------------------------------------------------
def test_continuum_figure_shows_fit_truth_and_chip_gaps(sim, measured):
    norm, _ = measured
    fig = continuum_figure(sim.batch, norm.continuum, 1, true_continuum=sim.continuum)
    assert fig.title.text.startswith("SYNTHETIC SYN0011-00001")
    assert {"flux", "fitted continuum", "true continuum (SYNTHETIC truth)", "chip gap (no data)"} <= set(_legend(fig))
    line = fig.select_one({"name": "continuum"})
    np.testing.assert_array_equal(line.data_source.data["continuum"], norm.continuum[1].astype(float))
    # the continuum is NaN in the chip gaps, so its line breaks there, and the gaps are shaded
    assert np.isnan(line.data_source.data["continuum"]).sum() > 100
    gaps = [r for r in fig.renderers if "left" in r.data_source.data]
    assert len(gaps[0].data_source.data["left"]) == 2


def test_continuum_figure_of_real_data_makes_no_synthetic_claim(real):
    batch, norm, _ = real
    fig = continuum_figure(batch, norm.continuum, 0)
    assert "SYNTHETIC" not in fig.title.text + " ".join(_legend(fig))
    assert fig.select_one({"name": "true_continuum"}) is None


def test_continuum_figure_rejects_a_continuum_of_the_wrong_shape(sim):
    with pytest.raises(ValueError, match="continuum: expected shape"):
        continuum_figure(sim.batch, sim.continuum[:1], 0)


def test_line_fit_figure_shows_the_window_model_and_flag(sim, measured):
    norm, table = measured
    i = int(np.argmax(sim.ew[:, FE_15298]))
    fig = line_fit_figure(norm.batch, table, i, FE_15298)
    text = _texts(fig)
    assert "SYNTHETIC" in fig.title.text and "Fe I 15298.74 Å" in fig.title.text
    assert f"EW {table.ew_mA[i, FE_15298]:.1f} ± {table.ew_err_mA[i, FE_15298]:.1f} mÅ" in text
    assert f"flag: {table.flag[i, FE_15298]}" in text
    assert {"data", "±1σ", "fitted profile", "line centre", "local continuum"} <= set(_legend(fig))
    data = next(r for r in fig.renderers if "err" in r.data_source.data).data_source.data
    assert 30 <= len(data["wave"]) <= 41  # the +-20 pixel window, less masked pixels
    BokehModel(fig)  # serializes (NaN and all)


def test_line_fit_figure_of_an_unmeasured_line_lists_its_reasons(real):
    _, norm, table = real
    i, k = np.argwhere(np.isin(table.flag, ["fit_failed", "masked"]))[0]
    fig = line_fit_figure(norm.batch, table, int(i), int(k))
    text = _texts(fig)
    assert "no EW" in text and table.flag[i, k] in text
    for reason in table.reasons[i, k].split("; "):
        assert reason in text
    assert "fitted profile" not in _legend(fig)
    assert "SYNTHETIC" not in text


def test_line_fit_figure_marks_masked_pixels(sim, measured):
    norm, table = measured
    batch = norm.batch.select([0])
    batch.mask[0, np.argmin(np.abs(batch.wave - 15298.74)) + 5] = True
    fig = line_fit_figure(batch, table.select([0]), 0, FE_15298)
    assert "masked pixel" in _legend(fig)


def test_line_fit_figure_needs_the_normalized_batch(sim, measured):
    _, table = measured
    with pytest.raises(ValueError, match="norm_batch: expected continuum-normalized"):
        line_fit_figure(sim.batch, table, 0, FE_15298)


def test_ew_comparison_figure_drops_unmeasured_lines_and_says_synthetic(sim, measured):
    _, table = measured
    fig = ew_comparison_figure(table.ew_mA, table.ew_err_mA, sim.ew, flag=table.flag)
    n = int(np.isfinite(table.ew_mA).sum())
    assert fig.title.text == f"SYNTHETIC: measured vs true EW ({n} lines)"
    shown = sum(len(r.data_source.data["true"]) for r in fig.renderers if "flag" in r.data_source.data)
    assert shown == n
    assert set(_legend(fig)) - {"measured = true"} <= set(np.unique(table.flag))
    assert not ew_comparison_figure([1.0], [1.0], [1.0], synthetic=False).title.text.startswith("SYNTHETIC")


# -- widgets ----------------------------------------------------------------------------------------------------
def test_continuum_explorer_refits_on_each_slider_and_keeps_the_figure(sim):
    explorer = ContinuumExplorer(sim.batch, true_continuum=sim.continuum)
    fig = explorer.plot._model
    line = fig.select_one({"name": "continuum"})
    before = np.array(line.data_source.data["continuum"])
    for slider, value in ((explorer.order, 6), (explorer.low, 0.75), (explorer.high, 1.5)):
        slider.value = value
    assert explorer.plot._model is fig  # updated in place: the user's zoom survives
    after = np.array(line.data_source.data["continuum"])
    assert not np.allclose(before, after, equal_nan=True)
    expected = normalize(sim.batch.select([0]), order=6, low=0.75, high=1.5).continuum[0]
    np.testing.assert_allclose(after, expected, rtol=1e-6)
    assert "order 6" in explorer.details.value and "SYNTHETIC truth" in explorer.details.value
    assert list(explorer.diagnostics.chip) == ["blue", "green", "red"]


def test_continuum_explorer_residual_panel_follows_the_sliders(sim):
    explorer = ContinuumExplorer(sim.batch, true_continuum=sim.continuum)
    median = explorer.residual_figure.select_one({"name": "residual_median"}).data_source
    offset = explorer.residual_figure.select_one({"name": "truth_offset"}).data_source
    assert explorer.residual_figure.x_range is explorer.figure.x_range  # one zoom for both panels
    before = np.array(median.data["median"])
    explorer.order.value = 1
    # (flux - fit) / fit of the new fit, and its offset from the true continuum
    fit = explorer.result.continuum[0].astype(float)
    good = ~sim.batch.mask[0] & (fit > 0)
    resid = explorer.residual_figure.select_one({"name": "residual"}).data_source.data["residual"]
    np.testing.assert_allclose(resid[good], sim.batch.flux[0][good] / fit[good] - 1, rtol=1e-5)
    np.testing.assert_allclose(offset.data["offset"][good], sim.continuum[0][good] / fit[good] - 1, rtol=1e-5)
    assert np.nanmax(np.abs(np.array(median.data["median"]) - before)) > 1e-3


def test_continuum_explorer_switches_spectrum_in_place(sim):
    explorer = ContinuumExplorer(sim.batch, true_continuum=sim.continuum)
    plot, fig = explorer.plot, explorer.figure
    flux = fig.select_one({"name": "flux"}).data_source
    explorer.figure.x_range.update(start=15300.0, end=15400.0)  # the user's zoom
    explorer.select.value = 3
    assert explorer.plot is plot and plot._model.children[0] is fig  # nothing rebuilt
    assert fig.title.text.startswith("SYNTHETIC SYN0011-00003")
    np.testing.assert_array_equal(flux.data["flux"][~np.isnan(flux.data["flux"])],
                                  sim.batch.flux[3][np.isfinite(sim.batch.flux[3])].astype(float))
    truth = fig.select_one({"name": "true_continuum"}).data_source.data["continuum"]
    np.testing.assert_array_equal(truth, sim.continuum[3].astype(float))
    assert (fig.x_range.start, fig.x_range.end) == (15300.0, 15400.0)
    assert explorer.diagnostics.star_id.unique().tolist() == ["SYN0011-00003"]
    assert explorer.select.label == spectrum_label(sim.batch, 3)


def test_continuum_explorer_on_real_data_has_no_truth_column(real):
    batch, _, _ = real
    explorer = ContinuumExplorer(batch)
    explorer.select.value = 1
    assert "SYNTHETIC" not in explorer.details.value + explorer.select.label


def test_line_inspector_follows_both_dropdowns(sim, measured):
    norm, table = measured
    inspector = LineInspector(norm.batch, table, truth_ew=sim.ew)
    inspector.line.value = FE_15298
    assert "Fe I 15298.74" in inspector.plot._model.title.text
    assert "true EW (SYNTHETIC truth)" in inspector.details.value
    assert f"{sim.ew[0, FE_15298]:.1f} mÅ" in inspector.details.value
    plot, fig = inspector.plot, inspector.figure
    pixels = fig.select_one({"name": "pixels"}).data_source
    before = np.array(pixels.data["flux"])
    inspector.select.value = 2
    assert inspector.line.value == FE_15298  # the same line, now in the other star
    assert inspector.plot is plot and plot._model is fig  # updated in place, not rebuilt
    assert fig.title.text.startswith("SYNTHETIC SYN0011-00002")
    assert not np.allclose(before, pixels.data["flux"])
    assert inspector.line.label == f"15298.74 Å: {table.flag[2, FE_15298]}"
    assert inspector.plot in inspector.children[1].children
    x0 = fig.x_range.start
    inspector.line.value = FE_15298 + 1  # another line: its window
    assert fig.x_range.start > x0 and f"Fe I {table.lines.wave_vac[FE_15298 + 1]:.2f}" in fig.title.text


def test_line_inspector_shows_an_upper_limit_only_for_undetected_lines(sim, measured):
    norm, table = measured
    inspector = LineInspector(norm.batch, table)
    i, k = np.argwhere(table.flag == "ok")[0]
    inspector.select.value, inspector.line.value = int(i), int(k)
    assert "upper limit" not in inspector.details.value
    assert "upper limit" not in _texts(inspector.figure)
    i, k = np.argwhere(table.flag == "upper_limit")[0]
    inspector.select.value, inspector.line.value = int(i), int(k)
    assert f"&lt; {table.ew_upper_mA[i, k]:.1f} mÅ" in inspector.details.value
    assert f"EW < {table.ew_upper_mA[i, k]:.1f} mÅ" in _texts(inspector.figure)


def test_line_fit_figure_updates_in_place_with_no_model_left_behind(sim, measured):
    norm, table = measured
    fig = line_fit_figure(norm.batch, table, 0, FE_15298)
    model = BokehModel(fig)
    n_models = len(list(fig.document.models))
    i, k = np.argwhere(np.isin(table.flag, ["ok"]))[-1]
    update_line_fit_figure(fig, norm.batch, table, int(i), int(k))
    assert len(list(fig.document.models)) == n_models and model._model is fig
    assert fig.title.text == line_fit_figure(norm.batch, table, int(i), int(k)).title.text
    assert len(fig.select_one({"name": "pixels"}).data_source.data["wave"]) > 20


def test_line_inspector_on_real_data(real):
    _, norm, table = real
    inspector = LineInspector(norm.batch, table)
    labels = [label for label, _ in inspector.line.options]
    assert len(labels) == table.n_lines and all(label.split(": ")[1] in table.flag[0] for label in labels)
    inspector.select.value = 1
    inspector.line.value = table.n_lines - 1
    assert "SYNTHETIC" not in inspector.details.value + inspector.plot._model.title.text


def test_line_inspector_checks_its_inputs(sim, measured):
    norm, table = measured
    with pytest.raises(ValueError, match="table: expected one row per spectrum"):
        LineInspector(norm.batch, table.select([0]))
    with pytest.raises(ValueError, match="truth_ew: expected shape"):
        LineInspector(norm.batch, table, truth_ew=sim.ew[:1])


def test_line_fit_figure_marks_the_pixels_the_fit_dropped():
    t = pd.DataFrame({"teff": [4600.0], "logg": [1.2], "feh": [-1.5], "vmic": [2.0], "snr": [150.0]})
    nb = normalize(simulate(t, seed=6, background=False, tellurics=False, masks=False).batch).batch
    k = 2
    centre = int(np.argmin(np.abs(nb.wave - 15298.74)))
    nb.flux[0, centre + 1] += 0.8                        # a cosmic ray next to the line centre
    table = measure_ew(nb, mc_draws=0)
    assert table.used is not None and not table.used[0, k].all()
    fig = line_fit_figure(nb, table, 0, k)
    assert "dropped by the fit" in _legend(fig)


def test_spectrum_viewer_switches_spectrum_in_place(real, examples):
    batch, _, _ = real
    viewer = SpectrumViewer(batch)
    fig = viewer.figure
    fig.x_range.update(start=15500.0, end=15600.0)  # the user's zoom
    viewer.select.value = 1
    assert viewer.plot._model is fig and viewer.children[1] is viewer.plot
    flux = fig.select_one({"name": "flux"}).data_source.data["flux"]
    fresh = spectrum_figure(batch, 1).select_one({"name": "flux"}).data_source.data["flux"]
    np.testing.assert_array_equal(flux, fresh)
    assert (fig.x_range.start, fig.x_range.end) == (15500.0, 15600.0)
    assert fig.title.text.startswith(str(batch.meta.star_id[1]))


def test_flag_reasons_read_as_words_not_parameter_names(measured):
    _, table = measured
    reasons = table.reasons[table.flag == "upper_limit"]
    assert reasons.size and all(f"not detected at {table.detection_sigma:g}σ" in r for r in reasons)
    assert not any("detection_sigma" in r or "{" in r for r in table.reasons.ravel())
