"""The batched Voigt EW engine (fehkit.ew, fehkit.profiles) on SYNTHETIC spectra of known EW, and on bad spectra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import voigt_profile, wofz
from scipy.stats import norm

from fehkit.cli import main as cli
from fehkit.continuum import normalize
from fehkit.ew import EW_COLUMNS, FLAGS, EWError, EWTable, measure_ew, static_blends
from fehkit.lines import load_linelist
from fehkit.profiles import faddeeva, voigt, voigt_and_derivatives
from fehkit.spectra import CHIPS, SpectrumBatch, apstar_wavelength
from fehkit.synth import draw_population, simulate

CLEAN = dict(continuum=False, background=False, tellurics=False, masks=False)


def _population(n: int, snr: float | np.ndarray, seed: int, feh: tuple[float, float] = (-4.5, -1.0)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = draw_population(n, rng)
    t["feh"] = rng.uniform(*feh, n)
    t["snr"] = snr
    return t


def _assert_flags_explain_nans(table: EWTable) -> None:
    """No unflagged NaN: ew is NaN exactly where the flag is masked or fit_failed, and finite elsewhere."""
    unusable = np.isin(table.flag, ["masked", "fit_failed"])
    assert np.array_equal(np.isnan(table.ew_mA), unusable)
    assert np.isfinite(table.ew_err_mA[~unusable]).all() and np.isfinite(table.ew_upper_mA[~unusable]).all()


# -- profiles --------------------------------------------------------------------------------------------------------
def test_faddeeva_matches_scipy_in_float32_and_float64():
    x = np.linspace(-15, 15, 3001)
    for y in (0.0, 1e-3, 0.05, 1.0, 5.0):
        for dtype in (np.float32, np.float64):
            re, im = faddeeva(x.astype(dtype), np.full(x.size, y, dtype))
            w = wofz(x + 1j * y)
            assert np.max(np.abs(re - w.real)) < 1e-5 and np.max(np.abs(im - w.imag)) < 1e-5


def test_voigt_derivatives_match_finite_differences():
    x, s, g, h = np.linspace(-3, 3, 121), 0.3, 0.02, 1e-6
    v, dx, ds, dg = voigt_and_derivatives(x, s, g)
    assert np.allclose(v, voigt_profile(x, s, g), atol=2e-5)
    for d, f in ((dx, lambda e: voigt(x + e, s, g)), (ds, lambda e: voigt(x, s + e, g)),
                 (dg, lambda e: voigt(x, s, g + e))):
        assert np.allclose(d, (f(h) - f(-h)) / (2 * h), atol=1e-4 * np.abs(d).max())


def test_voigt_runs_on_torch_and_matches_numpy():
    torch = pytest.importorskip("torch")
    x = np.linspace(-3, 3, 61, dtype=np.float32)
    a = voigt(x, np.float32(0.3), np.float32(0.01))
    b = voigt(torch.from_numpy(x), torch.tensor(0.3), torch.tensor(0.01)).numpy()
    assert np.allclose(a, b, atol=1e-6)


# -- accuracy on clean synthetic lines: the engine's errors are the whole error --------------------------------------
@pytest.fixture(scope="module")
def clean() -> tuple:
    snr = np.repeat([30.0, 60.0, 100.0, 200.0], 60)
    sim = simulate(_population(snr.size, snr, seed=1), seed=1, **CLEAN)
    return sim, measure_ew(sim.batch, mc_draws=30, seed=1)


def test_pulls_have_unit_scatter_at_every_snr(clean):
    sim, table = clean
    pull = (table.ew_mA - sim.ew) / table.ew_err_mA
    snr = sim.truth.snr.to_numpy()
    for s in np.unique(snr):
        p = pull[snr == s]
        p = p[np.isfinite(p)]
        assert 0.9 <= p.std() <= 1.1, (s, p.std())
        assert abs(p.mean()) < 0.1


def test_strong_lines_are_unbiased_and_errors_follow_cayrel(clean):
    sim, table = clean
    snr = sim.truth.snr.to_numpy()[:, None] * np.ones(sim.ew.shape)
    diff = table.ew_mA - sim.ew
    strong = (sim.ew >= 20) & (snr >= 60) & np.isfinite(diff)
    assert abs(np.median(diff[strong])) <= 1.0
    # Cayrel (1988): sigma_EW ~ 1.5 sqrt(FWHM x pixel) / SNR ~ 6 mA at S/N 100 for FWHM 0.7 A, pixel 0.22 A
    weak100 = (snr == 100) & (sim.ew < 10) & np.isfinite(diff)
    assert 4.5 < np.median(table.ew_err_mA[weak100]) < 8.0


def test_detections_follow_the_three_sigma_rule(clean):
    sim, table = clean
    ratio = sim.ew / table.ew_err_mA
    det = table.detected
    ok = np.isfinite(ratio)
    assert det[ok & (ratio >= 5)].mean() >= 0.95
    for lo, hi in ((0, 1), (2, 4), (4, 5)):
        sel = ok & (ratio >= lo) & (ratio < hi)
        expected = norm.cdf(ratio[sel] - 3).mean()
        assert abs(det[sel].mean() - expected) < 0.06, (lo, hi)
    assert np.array_equal(table.flag == "upper_limit", ~det & np.isfinite(table.ew_mA))


def test_monte_carlo_and_jacobian_errors_agree(clean):
    _, table = clean
    agree = table.error_agreement()
    assert 0.9 < agree["median_ratio"] < 1.1
    assert agree["n"] > 5000


def test_ew_below_detection_is_reported_and_unbiased(clean):
    sim, table = clean
    faint = (sim.ew < 2.0) & np.isfinite(table.ew_mA)        # essentially no line
    assert (table.ew_mA[faint] < 0).mean() > 0.35            # negative values are kept
    pull = (table.ew_mA[faint] - sim.ew[faint]) / table.ew_err_mA[faint]
    assert abs(pull.mean()) < 0.1
    upper = table.ew_upper_mA[faint]
    assert np.allclose(upper, np.maximum(table.ew_mA[faint], 0) + 3 * table.ew_err_mA[faint], rtol=1e-5)


def test_batched_result_does_not_depend_on_the_chunk(clean):
    sim, table = clean
    sub = sim.batch.select(np.arange(0, 240, 37))
    again = measure_ew(sub, mc_draws=0, chunk=3)
    ref = table.select(np.arange(0, 240, 37))
    assert np.allclose(again.ew_mA, ref.ew_mA, atol=1e-3, equal_nan=True)


# -- the realistic benchmark: blends, tellurics, masks, continuum ----------------------------------------------------
@pytest.fixture(scope="module")
def realistic() -> tuple:
    sim = simulate(_population(300, np.exp(np.random.default_rng(2).uniform(np.log(30), np.log(300), 300)), seed=2),
                   seed=2)
    return sim, measure_ew(sim.batch, mc_draws=0)


def test_realistic_spectra_never_give_unflagged_nans(realistic):
    _, table = realistic
    _assert_flags_explain_nans(table)
    assert set(np.unique(table.flag)) <= set(FLAGS)


def test_realistic_strong_lines_are_unbiased(realistic):
    sim, table = realistic
    snr = sim.truth.snr.to_numpy()[:, None] * np.ones(sim.ew.shape)
    good = np.isin(table.flag, ["ok", "upper_limit"])
    strong = good & (sim.ew >= 20) & (snr >= 60)
    assert abs(np.median((table.ew_mA - sim.ew)[strong])) <= 1.0


# -- backends and the baseline ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("damping", ["tied", "shared"])
def test_torch_backend_matches_numpy_within_0_1_mA(damping):
    pytest.importorskip("torch")
    sim = simulate(_population(40, 100.0, seed=3), seed=3)
    a = measure_ew(sim.batch, mc_draws=0, damping=damping)
    b = measure_ew(sim.batch, backend="torch", device="cpu", mc_draws=0, damping=damping)
    assert np.array_equal(a.flag_code, b.flag_code)
    assert np.nanmax(np.abs(a.ew_mA - b.ew_mA)) < 0.1
    assert np.allclose(a.shared_gamma_A, b.shared_gamma_A, atol=1e-4)
    assert b.info["device"] == "cpu"


def _independent_lines(ew_mA: float, wing: float, snr: float, n: int, seed: int) -> SpectrumBatch:
    """SYNTHETIC normalized spectra made without fehkit's forward model: every packaged line a scipy Voigt of
    ``ew_mA``, Gaussian sigma of R = 22,500 plus a 4800 K / 1.8 km/s Doppler core, and extra Lorentz wings."""
    wave = apstar_wavelength()
    lam0 = load_linelist()["wave_vac"].to_numpy(float)
    flux = np.ones((n, wave.size))
    for lam in lam0:
        sig = np.hypot(lam / (22500 * 2.3548), lam / 2.998e5 * np.sqrt(0.008314 * 4800 / 55.845 + 0.5 * 1.8**2))
        near = np.abs(wave - lam) < 40
        flux[:, near] -= ew_mA * 1e-3 * voigt_profile(wave[near] - lam, sig, 0.002 + wing)
    flux += np.random.default_rng(seed).standard_normal(flux.shape) / snr
    return SpectrumBatch(wave=wave, flux=flux.astype(np.float32), ivar=np.full(flux.shape, snr**2, np.float32),
                         mask=np.zeros(flux.shape, bool), flux_unit="")


def test_shared_damping_measures_lines_with_broad_wings_within_1_percent():
    batch = _independent_lines(80.0, 0.05, 300.0, n=6, seed=5)
    shared = measure_ew(batch, mc_draws=0, damping="shared")
    tied = measure_ew(batch, mc_draws=0, damping="tied")
    assert abs(np.nanmedian(shared.ew_mA) / 80.0 - 1) < 0.01
    assert np.nanmedian(tied.ew_mA) / 80.0 - 1 < -0.03          # the fixed damping misses the wings' area
    assert abs(np.median(shared.shared_gamma_A) - 0.052) < 0.015   # per star it scatters by ~0.02 A
    pull = (shared.ew_mA - 80.0) / shared.ew_err_mA
    assert 0.6 < np.nanstd(pull) < 1.5


def test_torch_cuda_matches_numpy_within_0_1_mA():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sim = simulate(_population(40, 100.0, seed=3), seed=3)
    a = measure_ew(sim.batch, mc_draws=0)
    b = measure_ew(sim.batch, backend="torch", device="cuda", mc_draws=20)
    assert b.info["device"].startswith("cuda")
    assert np.array_equal(a.flag_code, b.flag_code)
    assert np.nanmax(np.abs(a.ew_mA - b.ew_mA)) < 0.1


def test_curve_fit_baseline_agrees_on_strong_lines():
    from fehkit.baselines.curve_fit import curve_fit_baseline

    sim = simulate(_population(4, 150.0, seed=4, feh=(-1.8, -1.2)), seed=4, **CLEAN)
    fast = measure_ew(sim.batch, mc_draws=0, damping="tied")      # the baseline's model: damping tied
    slow = curve_fit_baseline(sim.batch)
    strong = (sim.ew > 40) & np.isfinite(slow.ew_mA) & np.isfinite(fast.ew_mA)
    assert strong.sum() > 20
    assert np.median(np.abs(fast.ew_mA - slow.ew_mA)[strong]) < 0.5
    assert np.allclose(fast.ew_err_fit_mA[strong], slow.ew_err_fit_mA[strong], rtol=0.1)


def test_already_normalized_and_flux_unit_batches_give_the_same_ews():
    sim = simulate(_population(5, 120.0, seed=5), seed=5)
    a = measure_ew(sim.batch, mc_draws=0)
    b = measure_ew(normalize(sim.batch).batch, mc_draws=0)
    assert np.allclose(a.ew_mA, b.ew_mA, equal_nan=True)


# -- bad spectra: flagged, never raised, never an unflagged NaN ------------------------------------------------------
@pytest.fixture
def star() -> tuple:
    """One bright [Fe/H] = -1.5 giant with strong lines (noise, no blends), normalized."""
    t = pd.DataFrame({"teff": [4600.0], "logg": [1.2], "feh": [-1.5], "vmic": [2.0], "snr": [150.0],
                      "rv_shift": [0.0], "vhelio": [0.0]})
    sim = simulate(t, seed=6, **CLEAN)
    return sim, measure_ew(sim.batch, mc_draws=0)


def _pixels(batch: SpectrumBatch, lam: float, half: float) -> np.ndarray:
    return np.flatnonzero(np.abs(batch.wave - lam) <= half)


def _measure(batch: SpectrumBatch) -> EWTable:
    table = measure_ew(batch, mc_draws=10)
    _assert_flags_explain_nans(table)
    return table


def test_fully_masked_window_is_flagged_masked(star):
    sim, _ = star
    b = sim.batch.select([0])
    k = 2
    pix = _pixels(b, sim.lines.wave_vac[k], 5.0)
    b.mask[0, pix] = True
    assert _measure(b).flag[0, k] == "masked"


def test_nan_flux_and_zero_ivar_are_flagged_masked(star):
    sim, _ = star
    b = sim.batch.select([0])
    b.flux[0, _pixels(b, sim.lines.wave_vac[2], 5.0)] = np.nan
    b.ivar[0, _pixels(b, sim.lines.wave_vac[7], 5.0)] = 0.0
    b = SpectrumBatch(b.wave, b.flux, b.ivar, b.mask, b.meta, flux_unit="")   # the container re-derives the mask
    table = _measure(b)
    assert table.flag[0, 2] == "masked" and table.flag[0, 7] == "masked"


def test_line_at_a_chip_edge_is_measured_or_flagged(star):
    sim, ref = star
    lines = sim.lines.copy()
    lam = CHIPS["green"][1] - 1.5                 # a line 1.5 A from the end of the green detector
    lines.loc[0, ["wave_vac", "window_lo", "window_hi"]] = [lam, lam - 4.3, lam + 4.3]
    table = measure_ew(sim.batch, lines, mc_draws=0)
    _assert_flags_explain_nans(table)
    assert table.flag[0, 0] in ("masked", "upper_limit", "ok", "fit_failed")
    assert table.n_pix[0, 0] < 41


def test_cosmic_ray_in_the_core_is_clipped(star):
    sim, ref = star
    b = sim.batch.select([0])
    k = 2
    centre = _pixels(b, sim.lines.wave_vac[k], 0.12)[0]
    b.flux[0, centre + 1] += 0.8                  # a spike 120 sigma high next to the line centre
    table = _measure(b)
    assert table.flag[0, k] in ("ok", "blend_suspect")
    assert abs(table.ew_mA[0, k] - ref.ew_mA[0, k]) < 3 * ref.ew_err_mA[0, k]


def test_emission_line_gives_no_detection(star):
    sim, _ = star
    b = sim.batch.select([0])
    k = 5
    lam = sim.lines.wave_vac[k]
    b.flux[0] = np.where(np.abs(b.wave - lam) < 3, 1 + 0.3 * np.exp(-0.5 * ((b.wave - lam) / 0.3) ** 2),
                         b.flux[0]).astype(np.float32)
    table = _measure(b)
    assert table.flag[0, k] in ("upper_limit", "fit_failed")
    assert not table.detected[0, k]


def test_rv_offset_beyond_the_tolerance_fails_the_strong_lines(star):
    sim, _ = star
    t = sim.truth.copy()
    t["rv_shift"] = 35.0                          # the apStar rest frame is off by 35 km/s
    shifted = simulate(t[["teff", "logg", "feh", "vmic", "snr", "rv_shift", "vhelio"]], seed=6, **CLEAN)
    table = _measure(shifted.batch)
    strong = sim.ew[0] > 60
    assert (table.flag[0, strong] == "fit_failed").mean() > 0.8
    assert "centre or width at its bound" in table.reasons[0, np.flatnonzero(strong)[0]]


def test_saturated_flat_bottomed_line_fails(star):
    sim, _ = star
    b = sim.batch.select([0])
    k = 2
    lam = sim.lines.wave_vac[k]
    core = np.abs(b.wave - lam) < 0.6
    b.flux[0, core] = 0.01
    assert _measure(b).flag[0, k] == "fit_failed"


def test_negative_flux_fails(star):
    sim, _ = star
    b = sim.batch.select([0])
    k = 9
    b.flux[0, _pixels(b, sim.lines.wave_vac[k], 1.0)] = -0.5
    table = _measure(b)
    assert table.flag[0, k] == "fit_failed"
    assert "negative" in table.reasons[0, k]


def test_a_spectrum_of_zeros_and_nans_is_all_flagged():
    wave = apstar_wavelength()
    flux = np.zeros((2, wave.size), np.float32)
    flux[1] = np.nan
    b = SpectrumBatch(wave, flux, np.ones_like(flux), np.zeros(flux.shape, bool))
    table = _measure(b)
    assert np.isin(table.flag, ["masked", "fit_failed"]).all()


def test_telluric_flagged_pixels_count_as_noisier(star):
    sim, ref = star
    b = sim.batch.select([0])
    b.bitmask = np.zeros(b.flux.shape, np.int64)
    k = 2
    b.bitmask[0, _pixels(b, sim.lines.wave_vac[k], 1.0)] = 1 << 13      # SIG_TELLURIC over the line core
    flagged = measure_ew(b, mc_draws=0)
    plain = measure_ew(b, mc_draws=0, telluric_sigma=0.0)
    assert flagged.ew_err_fit_mA[0, k] > 1.2 * plain.ew_err_fit_mA[0, k]
    others = np.arange(30) != k
    # the other lines change only through the star's shared shape, which line k helps to set (its Lorentz width
    # too, which moves all EWs together by a fraction of a per cent)
    assert np.allclose(flagged.ew_mA[0, others], plain.ew_mA[0, others], rtol=0.01, atol=0.2, equal_nan=True)


def test_static_blends_follow_the_line_list_notes():
    lines = load_linelist()
    flagged = lines.wave_vac[static_blends(lines)].round(1).tolist()
    assert 15536.0 in flagged and 15399.9 in flagged          # Fe I neighbours inside the profile
    assert 15211.7 not in flagged


def test_bad_arguments_raise_clear_errors(star):
    sim, _ = star
    with pytest.raises(EWError, match="backend"):
        measure_ew(sim.batch, backend="jax")
    with pytest.raises(EWError, match="rv_tolerance"):
        measure_ew(sim.batch, rv_tolerance=0)
    lines = sim.lines.copy()
    lines.loc[0, "wave_vac"] = 17500.0
    with pytest.raises(EWError, match="off the spectra's wavelength grid"):
        measure_ew(sim.batch, lines)
    with pytest.raises(EWError, match="params"):
        measure_ew(sim.batch, params=pd.DataFrame({"teff": [4000.0, 4100.0]}))


# -- the command -----------------------------------------------------------------------------------------------------
def test_fehkit_ew_writes_the_design_contract_on_real_spectra(tmp_path, capsys):
    out = tmp_path / "ew.csv"
    assert cli(["ew", "--examples", "--out", str(out), "--mc-draws", "20"]) == 0
    table = pd.read_csv(out)
    assert tuple(table.columns[: len(EW_COLUMNS)]) == EW_COLUMNS
    assert len(table) == 2 * 30
    assert set(table.star_id) == {"2M17335483-2753043", "2M19485057+5005279"}
    unusable = table.flag.isin(["masked", "fit_failed"])
    assert table.loc[~unusable, ["ew_mA", "ew_err_mA", "ew_upper_mA"]].notna().all().all()
    assert table.loc[unusable, "ew_mA"].isna().all()
    assert table.reason[table.flag != "ok"].str.len().gt(0).all()
    assert "wrote" in capsys.readouterr().out


def test_fehkit_ew_takes_parameters_from_a_csv(tmp_path):
    params = tmp_path / "params.csv"
    pd.DataFrame({"star_id": ["2M17335483-2753043"], "teff": [3700.0], "logg": [0.8], "vmic": [2.2],
                  "feh": [-0.2]}).to_csv(params, index=False)
    assert cli(["ew", "--examples", "--out", str(tmp_path / "ew.csv"), "--params", str(params),
                "--mc-draws", "0"]) == 0
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"name": ["x"], "teff": [4000]}).to_csv(bad, index=False)
    assert cli(["ew", "--examples", "--out", str(tmp_path / "ew2.csv"), "--params", str(bad)]) == 2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_no_spectra_give_an_empty_table(clean, backend):
    """A batch of no spectra (an empty chunk of a pipeline) gives a table of no rows, every line a column."""
    sim, _ = clean
    table = measure_ew(sim.batch.select(np.arange(0)), backend=backend, device="cpu")
    assert table.ew_mA.shape == table.flag.shape == (0, len(table.lines))
    assert len(table.lines) > 0
