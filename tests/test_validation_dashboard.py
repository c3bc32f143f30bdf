"""The recalibration checks and the validation dashboard.

Given a SYNTHETIC stand-in labelled table (simulated apStar files in the cross-match layout, ASPCAP-like and
GALAH-like columns), its cross-validated predictions (fehkit validate), a model trained on it and a few robustness
scenarios (tiny ensembles keep it fast): the stand-in says synthetic everywhere, the binned residual bands find a
trend that is there, the Teff response is the library's prediction re-run with shifted Teff, and each control of the
dashboard changes the data of its figures in place.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from bokeh.models import ColumnDataSource, GlyphRenderer
from jupyter_bokeh import BokehModel

from fehkit.data.crossmatch import TRAINING_COLUMNS
from fehkit.errors import FehkitWarning, InputTableError, PlotInputError
from fehkit.evaluate import cross_survey_columns
from fehkit.flags import detected
from fehkit.plots.validation import RESIDUAL_AXES, band_data, robustness_figure, validation_data
from fehkit.recalibration import (
    STANDIN_ASPCAP,
    TeffSensitivity,
    attach_survey_feh,
    binned_residuals,
    write_standin_table,
)
from fehkit.robustness import run_robustness
from fehkit.training import predict_spectra, read_training_data, train_model, validate_table
from fehkit.widgets import ValidationDashboard

TINY = {"n_folds": 3, "rf": {"n_estimators": 20}, "xgb": {"n_estimators": 20},
        "dnn": {"max_epochs": 20, "hidden": [16, 8]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The stand-in table, its 3-fold validation, a model trained on all of it, its Teff response, two scenarios."""
    root = tmp_path_factory.mktemp("recal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        table = write_standin_table(root / "standin", n=45, seed=4)
        res = validate_table(table, folds=3, ensemble=TINY)
        model = train_model(table, root / "model", ensemble=TINY)
        sens = TeffSensitivity.from_table(model, table)
        rob = run_robustness(model, n=12, seed=1, scenarios=["standard", "gf_errors"])
    return table, res, model, sens, rob


@pytest.fixture
def dash(setup):
    _, res, _, sens, rob = setup
    return ValidationDashboard(res, sens, rob, n_boot=200)


def _renderer(layout, name: str) -> GlyphRenderer:
    return layout.select_one({"name": name, "type": GlyphRenderer})


# ---- the library -------------------------------------------------------------------------------------------------
def test_the_stand_in_table_is_synthetic_and_in_the_cross_match_layout(setup):
    table_path, res, _, _, _ = setup
    assert table_path.read_text().startswith("# SYNTHETIC stand-in table")
    table = pd.read_csv(table_path, comment="#")
    assert list(table.columns[:len(TRAINING_COLUMNS)]) == list(TRAINING_COLUMNS)
    assert table["synthetic"].all() and (table["field"] == "SYNTHETIC").all()
    assert set(cross_survey_columns(table.columns)) == {"aspcap_fe_h", "galah_fe_h"}
    # ASPCAP's grid floor: no value below it, and the most metal-poor stars have none
    aspcap = table["aspcap_fe_h"]
    assert (aspcap.dropna() >= STANDIN_ASPCAP["floor"]).all() and aspcap.isna().any()
    assert aspcap[table["feh_ref"] < -3.2].isna().all()
    _, _, _, synthetic = read_training_data(table_path, need_train=False)
    assert synthetic and res.synthetic
    # the ASPCAP-like column was made 0.10 dex high: fehkit validate finds it against fehkit's [Fe/H]
    cross = res.metrics["cross_survey_real"]
    assert cross["aspcap_fe_h"]["bias"] == pytest.approx(-STANDIN_ASPCAP["offset"], abs=0.06)
    assert cross["aspcap_fe_h"]["n_missing"] == int(aspcap.isna().sum())
    assert abs(cross["galah_fe_h"]["bias"]) < 0.06


def test_write_standin_table_refuses_an_existing_folder_and_a_tiny_n(setup, tmp_path):
    table_path = setup[0]
    with pytest.raises(Exception, match="exists"):
        write_standin_table(table_path.parent, n=5)
    with pytest.raises(InputTableError, match="n = 2"):
        write_standin_table(tmp_path / "x", n=2)


def test_binned_residuals_find_a_real_trend_and_not_a_false_one():
    rng = np.random.default_rng(1)
    teff = rng.uniform(4000, 5500, 400)
    noise = rng.normal(0, 0.05, 400)
    trend = binned_residuals(teff, 1e-4 * (teff - 4750) + noise, 4, n_boot=300)
    flat = binned_residuals(teff, noise, 4, n_boot=300)
    assert trend["n"].tolist() == [100, 100, 100, 100]
    assert (np.diff(trend["mean"]) > 0).all()
    # the end bins' bands exclude zero for the trend (+-0.06 dex at the ends) ...
    assert trend["band_hi"].iloc[0] < 0 < trend["band_lo"].iloc[-1]
    # ... and every band of pure noise holds zero
    assert ((flat["band_lo"] < 0) & (flat["band_hi"] > 0)).all()
    assert (trend["band_lo"] <= trend["mean"]).all() and (trend["mean"] <= trend["band_hi"]).all()


def test_binned_residuals_leave_out_nan_and_check_their_input():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    r = np.array([0.1, np.nan, 0.3, 0.4, 0.5, 0.6])
    b = binned_residuals(x, r, 2, n_boot=50)
    assert b["n"].sum() == 4
    assert binned_residuals([1.0], [0.1]).empty
    with pytest.raises(InputTableError, match="shapes"):
        binned_residuals([1.0, 2.0], [0.1])


def test_teff_sensitivity_is_the_prediction_re_run_with_shifted_teff(setup):
    table_path, _, model, sens, _ = setup
    batch, params, _, _ = read_training_data(table_path, need_train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        direct = predict_spectra(model, batch, params.assign(teff=params["teff"] + 150.0))
    shifted = sens.shift(150)
    assert np.allclose(shifted["feh"], direct["feh"], equal_nan=True, atol=1e-6)
    assert np.allclose(shifted["feh_cog"], direct["feh_cog"], equal_nan=True, atol=1e-6)
    assert sens.shift(150) is shifted  # cached
    assert np.nanmax(np.abs(sens.delta(0))) == 0
    # hotter adopted Teff weakens the predicted Fe I lines: more iron is needed for the same EWs
    up, down = np.nanmean(sens.delta(150)), np.nanmean(sens.delta(-150))
    assert up > 0.02 and down < -0.02
    with pytest.raises(InputTableError, match="not a results column"):
        sens.delta(100, "feh_nope")


def test_attach_survey_feh_matches_by_position(setup):
    table = pd.read_csv(setup[0], comment="#")
    other = pd.DataFrame({"ra": table["ra"].to_numpy()[:3] + 0.3 / 3600, "dec": table["dec"].to_numpy()[:3],
                          "feh_ref": [-2.0, -2.5, -3.0]})
    out = attach_survey_feh(table, other, "galah_fe_h")
    assert out["galah_fe_h"].iloc[:3].tolist() == [-2.0, -2.5, -3.0]
    assert out["galah_fe_h"].iloc[3:].isna().all()
    assert "galah_fe_h" in table and not np.allclose(table["galah_fe_h"].iloc[:3], [-2.0, -2.5, -3.0])
    with pytest.raises(InputTableError, match="no column"):
        attach_survey_feh(table.drop(columns="ra"), other)


# ---- the dashboard -----------------------------------------------------------------------------------------------
def test_every_star_panel_draws_from_one_source_so_selections_link(dash):
    names = ["stars", "upper_limits", "shifted", "dfeh", *(f"resid_{x}" for x in RESIDUAL_AXES)]
    sources = {id(_renderer(dash.grid, n).data_source) for n in names}
    assert sources == {id(dash.source)}
    assert isinstance(dash.plot, BokehModel) and dash.plot._model is dash.grid
    # every panel fits a notebook's width: two columns of 425 px, the toolbar above
    figs = [dash.grid.select_one({"name": f"panel_{n}"}) for n in ("one_to_one", "teff_offset",
                                                                    *(f"resid_{x}" for x in RESIDUAL_AXES))]
    assert all(f.width <= 430 for f in figs)
    assert all(f.title.text.startswith("SYNTHETIC") for f in figs)
    assert all(len(f.title.text) <= 40 for f in figs)  # longer titles are cut at 425 px


def test_the_teff_offset_slider_moves_the_stars_by_the_library_response(dash, setup):
    sens = setup[3]
    data = dash.source.data
    assert np.isnan(np.asarray(data["dfeh"], float)).all()
    dash.teff_offset.value = 100
    measured = detected(dash.predictions["flag"])
    expected = np.where(measured, sens.delta(100, "feh"), np.nan)
    got = np.asarray(dash.source.data["dfeh"], float)
    assert np.allclose(got, expected, equal_nan=True)
    assert np.isfinite(got).sum() > 5 and np.nanmean(got) > 0.01
    y = np.asarray(dash.source.data["y"], float)
    assert np.allclose(np.asarray(dash.source.data["y_shift"], float), y + expected, equal_nan=True)
    assert dash.grid.select_one({"name": "dfeh_mean"}).location == pytest.approx(np.nanmean(expected))
    title = dash.grid.select_one({"name": "panel_teff_offset"}).title.text
    assert "Teff +100 K" in title and len(title) <= 40
    assert "Teff +100 K" in dash.summary.value and "recalibration must absorb" in dash.summary.value
    dash.teff_offset.value = 0
    assert np.isnan(np.asarray(dash.source.data["dfeh"], float)).all()


def test_the_model_menu_redraws_stars_and_bands_in_place(dash):
    source, band = dash.source, _renderer(dash.grid, "band_teff").data_source
    before = np.asarray(band.data["mean"], float).copy()
    dash.model.value = "feh_cog"
    assert dash.source is source and _renderer(dash.grid, "band_teff").data_source is band
    measured = detected(dash.predictions["flag"])
    cog = np.where(measured, dash.predictions["feh_cog"].to_numpy(float), np.nan)
    assert np.allclose(np.asarray(source.data["y"], float), cog, equal_nan=True)
    resid = cog - dash.predictions["feh_ref"].to_numpy(float)
    expected = band_data(binned_residuals(dash.predictions["teff"].to_numpy(float), resid, 5, n_boot=200))
    assert np.allclose(np.asarray(band.data["mean"], float), expected["mean"])
    assert not np.allclose(np.asarray(band.data["mean"], float), before)
    assert "curve of growth" in dash.summary.value
    assert "curve of growth" in dash.grid.select_one({"name": "panel_one_to_one"}).yaxis[0].axis_label


def test_a_selection_shows_the_selected_stars_numbers(dash):
    assert "Select stars" in dash.selection.value
    rows = np.flatnonzero(np.isfinite(np.asarray(dash.source.data["y"], float)))[:4]
    dash.select(rows)  # what a box selection in the browser sends back to the source
    assert dash.source.selected.indices == rows.tolist()
    assert "4 selected" in dash.selection.value and "4 measured" in dash.selection.value
    resid = np.asarray(dash.source.data["resid"], float)[rows]
    assert f"bias {resid.mean():+.3f}" in dash.selection.value


def test_the_robustness_row_draws_the_scenarios_side_by_side(dash, setup):
    rob = setup[4]
    assert isinstance(dash.robustness_plot, BokehModel)
    row = dash.robustness_plot._model
    mae = _renderer(row, "mae_ensemble").data_source.data
    bias = _renderer(row, "bias_cog").data_source.data
    assert list(mae["scenario"]) == ["standard", "gf_errors"]
    assert np.allclose(mae["ensemble"], [rob[k]["mae"] for k in ("standard", "gf_errors")])
    assert np.allclose(bias["cog"], [rob[k]["bias_cog"] for k in ("standard", "gf_errors")])
    assert sum(f.width for f in row.children) <= 860


def test_without_a_sensitivity_the_slider_is_off_and_bad_input_is_named(setup):
    _, res, _, sens, _ = setup
    plain = ValidationDashboard(res.predictions, n_boot=50)
    assert plain.teff_offset.disabled and plain.robustness_plot is None
    assert "not available" in plain.summary.value
    with pytest.raises(PlotInputError, match="feh_ref"):
        ValidationDashboard(res.predictions.drop(columns="feh_ref"))
    with pytest.raises(PlotInputError, match="same stars"):
        ValidationDashboard(res.predictions.iloc[::-1].reset_index(drop=True), sens)
    with pytest.raises(PlotInputError, match="expected fehkit.training.validate_table"):
        ValidationDashboard([1, 2, 3])


def test_plot_builders_name_what_they_lack():
    with pytest.raises(PlotInputError, match="snr"):
        validation_data(pd.DataFrame({"feh_ref": [-2.0], "feh": [-2.1], "flag": ["ok"], "teff": [4500.0],
                                      "logg": [1.0]}))
    with pytest.raises(PlotInputError, match="'mae' or 'bias'"):
        robustness_figure({"standard": {"mae": 0.1}}, "r")
    fig = robustness_figure({"standard": {"n": 10, "mae": 0.05, "mae_cog": 0.06},
                             "sme_physics": {"skipped": "no grid"}})
    data = fig.select_one({"name": "mae_ensemble", "type": GlyphRenderer}).data_source.data
    assert list(data["scenario"]) == ["standard", "sme_physics (skipped)"] and np.isnan(data["ensemble"][1])
    assert isinstance(fig.select_one({"name": "mae_cog", "type": GlyphRenderer}).data_source, ColumnDataSource)
