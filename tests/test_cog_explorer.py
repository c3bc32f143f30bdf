"""The curve-of-growth explorer, its figures and the H-band physics behind them.

Given the packaged MOOG grid, when a slider of the explorer moves the way a student moves it, then the figure's
data sources change in place (the same Bokeh models) to exactly what :mod:`fehkit.physics.line_formation` computes
for the new settings; and the physics functions reproduce their published formulas and the grid.
"""

from __future__ import annotations

import numpy as np
import pytest

from fehkit.errors import GridRangeError, PlotInputError
from fehkit.lines import load_linelist
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.line_formation import (
    HMINUS_THRESHOLD_A,
    boltzmann_factor,
    cayrel_sigma_ew,
    detection_snr,
    hminus_opacity,
    line_profile,
    load_optical_comparison,
    reduced_curve_of_growth,
)
from fehkit.plots.cog import line_profile_figure, reduced_cog_figure
from fehkit.widgets import CurveOfGrowthExplorer


def _data(model, name: str) -> dict:
    return model.select_one({"name": name}).data_source.data


@pytest.fixture()
def explorer() -> CurveOfGrowthExplorer:
    return CurveOfGrowthExplorer(teff=4800, logg=1.5, vmic=2.0, feh=-3.0, snr=100)


# ---- the widget: a slider moves, the data sources change in place --------------------------------------------
def test_feh_slider_moves_the_points_and_curves_in_place(explorer: CurveOfGrowthExplorer) -> None:
    model = explorer.cog_plot._model
    source = model.select_one({"name": "tracks"}).data_source
    y_before = np.concatenate([_data(model, "detected")["y"], _data(model, "undetected")["y"]])
    xs_before = [np.array(x) for x in source.data["xs"]]

    explorer.feh.value = -2.0

    assert explorer.cog_plot._model is model  # the same figure: a zoom stays
    assert model.select_one({"name": "tracks"}).data_source is source
    y_after = np.concatenate([_data(model, "detected")["y"], _data(model, "undetected")["y"]])
    assert np.sort(y_after).mean() > np.sort(y_before).mean() + 0.5  # 1 dex more iron: every line stronger
    # the curves slide by the change of [Fe/H] along x (same absorbers as a log gf shifted by that much)
    assert np.allclose(np.array(source.data["xs"][0]), xs_before[0] - 1.0)
    expected = reduced_curve_of_growth(4800, 1.5, -2.0, 2.0, 100)
    assert len(_data(model, "detected")["x"]) == int(expected.detected.sum()) > 1
    assert np.allclose(np.sort(y_after), np.sort(expected.y))


def test_snr_slider_moves_the_detection_limit_and_the_detected_lines(explorer: CurveOfGrowthExplorer) -> None:
    model = explorer.cog_plot._model
    limit_before = _data(model, "limit")["y"][0]
    n_before = len(_data(model, "detected")["x"])
    noise_before = np.array(_data(explorer.profile_plot._model, "noise_band")["hi"])

    explorer.snr.value = 300

    limit_after = _data(model, "limit")["y"][0]
    assert limit_after == pytest.approx(limit_before - np.log10(3.0), abs=0.01)  # sigma_EW falls as 1 / (S/N)
    assert len(_data(model, "detected")["x"]) > n_before
    noise_after = np.array(_data(explorer.profile_plot._model, "noise_band")["hi"])
    assert noise_after[0] - 1 == pytest.approx((noise_before[0] - 1) / 3.0, rel=0.02)
    assert "S/N 300" in model.title.text


def test_teff_logg_vmic_sliders_change_the_lines(explorer: CurveOfGrowthExplorer) -> None:
    model = explorer.cog_plot._model
    x_before = np.sort(np.concatenate([_data(model, "detected")["x"], _data(model, "undetected")["x"]]))
    explorer.teff.value = 5400  # hotter: a smaller theta, so log gf - theta chi grows for every line
    x_after = np.sort(np.concatenate([_data(model, "detected")["x"], _data(model, "undetected")["x"]]))
    assert np.all(x_after > x_before)
    assert np.allclose(x_after, np.sort(load_linelist().eval("loggf - 5039.77 / 5400 * chi")))

    ew_before = explorer.result.ew_mA.copy()
    explorer.logg.value = 3.5
    assert not np.allclose(explorer.result.ew_mA, ew_before)
    explorer.feh.value = -1.0
    ew_before = explorer.result.ew_mA.copy()
    explorer.vmic.value = 3.0  # microturbulence widens the saturated cores: strong lines grow
    assert np.max(explorer.result.ew_mA / ew_before) > 1.05
    assert "vmic 3.0" in model.title.text


def test_line_picker_redraws_the_profile_and_the_ring(explorer: CurveOfGrowthExplorer) -> None:
    model = explorer.profile_plot._model
    source = model.select_one({"name": "model"}).data_source
    depth_before = 1 - np.min(source.data["flux"])
    weakest = int(np.argmin(explorer.result.ew_mA))
    explorer.line.value = weakest

    assert model.select_one({"name": "model"}).data_source is source
    depth_after = 1 - np.min(source.data["flux"])
    assert depth_after < depth_before / 3
    ring = _data(explorer.cog_plot._model, "selected")
    assert ring["x"][0] == pytest.approx(explorer.result.x[weakest])
    assert f"{explorer.result.wave_vac[weakest]:.2f}" in model.title.text
    assert f"{explorer.result.wave_vac[weakest]:.2f}" in explorer.details.value


def test_regime_strips_follow_the_star(explorer: CurveOfGrowthExplorer) -> None:
    model = explorer.cog_plot._model
    linear = _data(model, "linear")
    assert len(linear["x1"]) == 1 and np.isfinite(linear["x1"][0])
    # every line of a [Fe/H] = -3 giant is on the linear part, left of where the curves bend
    assert np.all(explorer.result.x < _data(model, "saturated")["x0"][0])
    explorer.feh.value = -1.0
    assert set(explorer.result.regime) == {"transition", "saturated"}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(PlotInputError, match="teff"):
        CurveOfGrowthExplorer(teff=3000)
    with pytest.raises(PlotInputError, match="not a packaged Fe I line"):
        CurveOfGrowthExplorer(line=15000.0)
    with pytest.raises(PlotInputError, match="860"):
        reduced_cog_figure(reduced_curve_of_growth(4800, 1.5, -3.0, 2.0, 100), width=1200)


# ---- the physics -------------------------------------------------------------------------------------------
def test_reduced_curve_uses_the_grid_and_cayrel() -> None:
    r = reduced_curve_of_growth(4800, 1.5, -3.0, 2.0, snr=100)
    cog = CurveOfGrowth.load()
    assert np.allclose(r.ew_mA, cog.ew(4800, 1.5, -3.0, 2.0, 0.4, lines=cog.line_index(r.wave_vac))[0])
    # Cayrel at 15,800 A, S/N 100: 5.9 mA (docs/information_limit.md)
    assert float(cayrel_sigma_ew(15800.0, 100.0)) == pytest.approx(5.9, abs=0.05)
    assert np.allclose(r.sigma_ew_mA / r.wave_vac, r.sigma_ew_mA[0] / r.wave_vac[0])
    assert r.limit_y == pytest.approx(np.log10(3 * r.sigma_ew_mA[0] * 1e-3 / r.wave_vac[0]))
    assert r.joint_sigma == pytest.approx(np.sqrt(np.sum((r.ew_mA / r.sigma_ew_mA) ** 2)))
    # below the grid's [Fe/H] = -5 the curve stays linear: slope 1
    assert np.allclose(r.track_slope[:, r.track_feh < -5.1], 1.0, atol=1e-6)


def test_detection_snr_is_where_the_signal_reaches_3_sigma() -> None:
    snr = detection_snr(4800, 1.5, -3.5, 2.0)
    assert reduced_curve_of_growth(4800, 1.5, -3.5, 2.0, snr * 1.001).joint_sigma >= 3.0
    assert reduced_curve_of_growth(4800, 1.5, -3.5, 2.0, snr * 0.95).joint_sigma < 3.0
    assert detection_snr(4800, 1.5, -3.5, 2.0, joint=False) > snr  # one line alone needs more


def test_boltzmann_and_hminus_opacity() -> None:
    # 10**(-theta chi): the H-band lower levels (5.3 eV) hold ~3e-6 of a ground level's atoms at 4800 K
    assert float(boltzmann_factor(5.304, 4800.0)) == pytest.approx(10 ** (-5039.77 / 4800 * 5.304))
    wave = np.arange(4000.0, 25000.0, 50.0)
    for teff in (4000.0, 4800.0, 6300.0):
        k = hminus_opacity(wave, teff)
        assert 15500 <= wave[np.argmin(k["total"])] <= HMINUS_THRESHOLD_A  # the opacity minimum: the H band
        assert np.all(k["bf"][wave > HMINUS_THRESHOLD_A] == 0)
        # Pe scales both parts alike
        assert np.allclose(hminus_opacity(wave, teff, 10.0)["total"], 10 * k["total"])
    with pytest.raises(GridRangeError, match="2250"):
        hminus_opacity([1000.0], 4800.0)


def test_line_profile_integrates_to_its_ew() -> None:
    p = line_profile(15298.74, 50.0, 4800, 1.5, -2.5, 2.0, snr=100, half_width_pix=60)
    ew = np.trapezoid(1 - p["flux"], p["offset"]) * 1e3
    assert ew == pytest.approx(50.0, rel=0.02)  # the Lorentz wings beyond +-13 A hold the rest
    again = line_profile(15298.74, 50.0, 4800, 1.5, -2.5, 2.0, snr=200, half_width_pix=60)
    # the same draw at every S/N, scaled by 1 / (S/N): the difference of the pixels is that draw over 200
    draw = np.random.default_rng(0).standard_normal(p["pixel_flux"].size)
    assert np.allclose(p["pixel_flux"] - again["pixel_flux"], draw / 200, atol=1e-12)


def test_optical_lines_share_the_grid_physics() -> None:
    t = load_optical_comparison()
    assert set(t.band) == {"optical", "H"} and set(t.star) == {"giant", "dwarf"}
    h = t[t.band == "H"]
    cog = CurveOfGrowth.load()
    for star, g in h.groupby("star"):
        s = g.iloc[0]
        for feh in (-4.0, -2.5, -1.0):
            rows = g[g.feh == feh]
            grid = cog.ew(s.teff, s.logg, feh, s.vmic, s.alpha_fe, lines=cog.line_index(rows.wave_vac))[0]
            assert np.allclose(rows.ew_mA, grid, rtol=1e-4), star
    giant = t[(t.star == "giant") & (t.feh == -3.0)]
    ew = dict(zip(giant.wave_air.round(2), giant.ew_mA, strict=True))
    # the resonance line is saturated where the strongest H-band line is still weak
    assert ew[3859.91] > 150 > 25 > ew[15294.56]
    frame = reduced_cog_figure(reduced_curve_of_growth(4800, 1.5, -3.0, 2.0, 100))
    assert frame.width <= 860
    assert line_profile_figure(line_profile(15298.74, 19.2, 4800, 1.5, -3.0, 2.0, 100)).width <= 860
