"""Continuum normalization (fehkit.continuum) on SYNTHETIC spectra whose true continuum is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fehkit.continuum import ContinuumError, normalize
from fehkit.spectra import CHIPS, SpectrumBatch, apstar_wavelength
from fehkit.synth import draw_population, simulate

#: Where the torch engine is checked against NumPy: CPU tensors everywhere, and a GPU when there is one.
TORCH_DEVICES = ["cpu"] + (["cuda"] if __import__("torch").cuda.is_available() else [])


def _population(n: int, snr: float, seed: int) -> pd.DataFrame:
    t = draw_population(n, np.random.default_rng(seed))
    t["snr"] = snr
    return t


def _median_error(cont: np.ndarray, true: np.ndarray, usable: np.ndarray) -> np.ndarray:
    err = np.abs(cont / true - 1)
    return np.array([np.median(err[i, usable[i]]) for i in range(len(err))])


@pytest.mark.parametrize(("snr", "limit"), [(50, 0.005), (200, 0.002)])
def test_continuum_is_recovered_within_the_method_promise(snr, limit):
    # given synthetic EMP stars (blends, tellurics, masks, noise) with a known continuum
    sim = simulate(_population(60, snr, seed=snr), seed=snr)
    # when normalized
    norm_batch, cont, diag = normalize(sim.batch)
    # then the median |continuum error| over the usable pixels is below the promise
    med = _median_error(cont, sim.continuum, ~norm_batch.mask)
    assert np.median(med) < limit
    assert (diag.flag == "ok").all()
    assert norm_batch.flux_unit == ""


def test_normalized_flux_and_ivar_are_consistent():
    sim = simulate(_population(3, 100, seed=1), seed=1)
    nb, cont, _ = normalize(sim.batch)
    good = ~nb.mask
    assert np.allclose(nb.flux[good], sim.batch.flux[good] / cont[good], rtol=1e-5)
    assert np.allclose(nb.ivar[good], sim.batch.ivar[good] * cont[good] ** 2, rtol=1e-4)
    # the normalized continuum sits at 1: the median of the line-free flux is ~1
    assert abs(np.median(nb.flux[good]) - 1) < 0.01


def test_what_the_division_leaves_without_finite_flux_or_positive_ivar_is_masked(monkeypatch):
    """Flux that overflows float32 when divided, ivar that underflows to 0: masked, on the compiled path as on the
    NumPy one (where the batch itself adds them); the same mask from both."""
    import fehkit.continuum as continuum

    sim = simulate(_population(2, 100, seed=3), seed=3)
    flux, ivar = sim.batch.flux * np.float32(1e-3), sim.batch.ivar * np.float32(1e6)  # a continuum of ~1e-3
    flux[0, 1000:1003] = 3e38   # / 1e-3: beyond float32
    ivar[1, 2000:2003] = 1e-44  # * 1e-6: below the smallest float32
    batch = SpectrumBatch(sim.batch.wave, flux, ivar, sim.batch.mask)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(continuum, "USE_NUMBA", compiled)
        nb = normalize(batch).batch
        assert nb.mask[0, 1000:1003].all() and nb.mask[1, 2000:2003].all()
        assert (nb.mask | np.isfinite(nb.flux) & (nb.ivar > 0)).all()
        results.append(nb)
    assert np.array_equal(results[0].mask, results[1].mask)
    good = ~results[0].mask
    for name in ("flux", "ivar"):  # the two fits agree to float rounding
        np.testing.assert_allclose(getattr(results[0], name)[good], getattr(results[1], name)[good], rtol=1e-5)


def test_chip_gaps_have_no_continuum_and_are_masked():
    sim = simulate(_population(2, 100, seed=2), seed=2)
    nb, cont, _ = normalize(sim.batch)
    wave = sim.batch.wave
    in_gap = (wave > CHIPS["blue"][1]) & (wave < CHIPS["green"][0])
    assert np.isnan(cont[:, in_gap]).all()
    assert nb.mask[:, in_gap].all()
    on_chip = (wave > CHIPS["blue"][0]) & (wave < CHIPS["blue"][1])
    assert np.isfinite(cont[:, on_chip]).all()


def test_masked_pixels_do_not_enter_the_fit():
    sim = simulate(_population(2, 100, seed=3), seed=3)
    _, cont, _ = normalize(sim.batch)
    broken = sim.batch.select([0, 1])
    rng = np.random.default_rng(0)
    bad = rng.uniform(size=broken.flux.shape) < 0.05
    broken.flux = np.where(bad, 50.0 * broken.flux, broken.flux)  # wild values ...
    broken.mask = broken.mask | bad                                # ... on masked pixels
    _, cont2, _ = normalize(broken)
    ok = np.isfinite(cont)
    assert np.allclose(cont2[ok], cont[ok], rtol=2e-3)


def test_clipping_is_asymmetric_deep_absorption_does_not_pull_the_fit_down():
    wave = apstar_wavelength()
    rng = np.random.default_rng(4)
    n = 4
    true = np.tile(1000 * (1 + 0.05 * (wave - 16000) / 1000), (n, 1)).astype(np.float32)
    flux = true.copy()
    for centre in rng.uniform(15200, 16900, 300):     # 300 lines 30% deep: much more than an EMP star has
        flux *= 1 - 0.3 * np.exp(-0.5 * ((wave - centre) / 0.35) ** 2)
    sigma = true / 200
    flux += sigma * rng.standard_normal(flux.shape).astype(np.float32)
    batch = SpectrumBatch(wave, flux, 1 / sigma**2, np.zeros(flux.shape, bool))
    nb, cont, _ = normalize(batch)
    err = _median_error(cont, true, ~nb.mask)
    assert np.all(err < 0.003)
    # a symmetric clip sits lower
    _, cont_sym, _ = normalize(batch, low=3.0, high=3.0)
    assert np.median(cont_sym[~nb.mask] / true[~nb.mask]) < np.median(cont[~nb.mask] / true[~nb.mask])


def test_wrong_ivar_scale_is_absorbed_by_the_noise_scale():
    sim = simulate(_population(3, 80, seed=5), seed=5)
    _, cont, diag = normalize(sim.batch)
    off = sim.batch.select([0, 1, 2])
    off.ivar = off.ivar * 9.0                 # errors claimed 3x too small
    _, cont_off, diag_off = normalize(off)
    ok = np.isfinite(cont)
    assert np.median(np.abs(cont_off[ok] / cont[ok] - 1)) < 5e-4
    assert np.allclose(diag_off.noise_scale / diag.noise_scale, 3.0, rtol=0.1)


def test_batch_result_equals_one_spectrum_at_a_time():
    sim = simulate(_population(5, 60, seed=6), seed=6)
    _, cont, diag = normalize(sim.batch)
    for i in range(5):
        _, c1, _ = normalize(sim.batch.select([i]))
        assert np.allclose(c1, cont[i : i + 1], rtol=1e-5, equal_nan=True)
    assert list(diag.columns[:8]) == ["star_id", "chip", "n_pixels", "n_used", "n_iter", "converged",
                                      "noise_scale", "flag"]
    assert len(diag) == 15


def test_a_detector_without_data_is_flagged_not_raised():
    sim = simulate(_population(2, 100, seed=7), seed=7)
    b = sim.batch.select([0, 1])
    lo, hi = CHIPS["red"]
    red = (b.wave >= lo) & (b.wave <= hi)
    b.flux[0, red] = np.nan
    b.mask[0, red] = True
    nb, cont, diag = normalize(b)
    row = diag[(diag.star_id == b.meta.star_id[0]) & (diag.chip == "red")].iloc[0]
    assert row.flag == "too_few_pixels"
    assert np.isnan(cont[0, red]).all() and nb.mask[0, red].all()
    assert np.isfinite(cont[1, red]).all()


@pytest.mark.parametrize("kw", [{"order": -1}, {"order": 2.5}, {"low": 0}, {"high": -1}])
def test_bad_arguments_name_the_argument(kw):
    sim = simulate(_population(1, 100, seed=8), seed=8)
    with pytest.raises(ContinuumError, match=next(iter(kw))):
        normalize(sim.batch, **kw)


def test_blocks_and_early_finishers_do_not_change_the_fit(monkeypatch):
    import fehkit.continuum as continuum

    sim = simulate(_population(12, 40, seed=9), seed=9)
    _, cont, diag = normalize(sim.batch, max_iter=4)        # some spectra stop at the iteration limit
    assert (~diag["converged"]).any() and diag["converged"].any()
    monkeypatch.setattr(continuum, "_BLOCK", 5)
    _, cont5, diag5 = normalize(sim.batch, max_iter=4)
    assert np.allclose(cont5, cont, rtol=1e-6, equal_nan=True)
    for col in ("n_pixels", "n_used", "n_iter", "converged", "flag"):
        assert (diag5[col] == diag[col]).all(), col
    assert np.allclose(diag5["noise_scale"], diag["noise_scale"], rtol=1e-5)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_the_torch_fit_gives_the_numpy_fit(monkeypatch, device):
    """The torch engine (a GPU's; on CPU tensors too) against the NumPy reference: same clipping, same continuum."""
    import fehkit.continuum as continuum

    sim = simulate(_population(24, 40, seed=10), seed=10)
    b = sim.batch.select(np.arange(24))
    lo, hi = CHIPS["red"]
    b.flux[0, (b.wave >= lo) & (b.wave <= hi)] = np.nan     # a detector without data
    b.mask[0, (b.wave >= lo) & (b.wave <= hi)] = True
    monkeypatch.setattr(continuum, "USE_NUMBA", False)
    ref = normalize(b, max_iter=4)                          # some spectra stop at the iteration limit
    got = normalize(b, max_iter=4, device=device)
    assert (~ref.diagnostics["converged"]).any() and (ref.diagnostics["flag"] == "too_few_pixels").sum() == 1
    assert (np.isnan(got.continuum) == np.isnan(ref.continuum)).all()
    assert np.allclose(got.continuum, ref.continuum, rtol=1e-6, atol=0, equal_nan=True)
    for col in ("n_pixels", "n_used", "n_iter", "converged", "flag"):
        assert (got.diagnostics[col] == ref.diagnostics[col]).all(), col
    assert np.allclose(got.diagnostics["noise_scale"], ref.diagnostics["noise_scale"], rtol=1e-5)
    assert (got.batch.mask == ref.batch.mask).all()
    assert np.allclose(got.batch.flux, ref.batch.flux, rtol=1e-6, equal_nan=True)
    assert np.allclose(got.batch.ivar, ref.batch.ivar, rtol=1e-5)


def test_diagnostics_are_built_when_asked_and_travel_in_a_pickle():
    import pickle

    sim = simulate({"teff": [4800, 5200], "logg": [1.5, 2.5], "feh": [-2.5, -3.0], "vmic": [1.8, 1.5],
                    "snr": [200, 80]}, seed=3)
    result = normalize(sim.batch)
    again = pickle.loads(pickle.dumps(result))                  # e.g. a Dask worker's result
    pd.testing.assert_frame_equal(again.diagnostics, result.diagnostics)
    assert list(result.diagnostics.chip) == list(CHIPS) * 2 and (result.diagnostics.flag == "ok").all()
    batch, continuum, diag = again                              # still unpacks
    assert np.array_equal(continuum, result.continuum, equal_nan=True) and diag is again.diagnostics
    # a range given as a list: the same fit
    as_lists = normalize(sim.batch, chips={k: list(v) for k, v in CHIPS.items()})
    assert np.array_equal(as_lists.continuum, result.continuum, equal_nan=True)
