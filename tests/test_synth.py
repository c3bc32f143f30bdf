"""The synthetic forward model and the EMP benchmark (fehkit.synth). Everything here is synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fehkit.cli import main as cli
from fehkit.io import read_apogee
from fehkit.lines import load_linelist
from fehkit.physics import CurveOfGrowth
from fehkit.spectra import CHIPS, apstar_wavelength
from fehkit.synth import (
    REF_ERRORS,
    TRUTH_COLUMNS,
    Simulation,
    SimulationError,
    make_benchmark,
    simulate,
)

DATA = Path(__file__).parent / "data"
GIANT = {"teff": [4800.0], "logg": [1.5], "feh": [-1.0], "vmic": [2.0], "alpha_fe": [0.4], "rv_shift": [0.0]}


@pytest.fixture(scope="module")
def bench() -> Simulation:
    return make_benchmark(1500, seed=11)


def _noiseless(params: dict, **kw) -> Simulation:
    opts = dict(continuum=False, background=False, tellurics=False, masks=False, noise=False)
    opts.update(kw)
    return simulate(params, seed=0, **opts)


def test_direct_integration_of_noiseless_fe_lines_matches_the_grid():
    rng = np.random.default_rng(5)
    n = 40
    params = {"teff": rng.uniform(4000, 6400, n), "logg": rng.uniform(1.0, 4.5, n), "feh": rng.uniform(-3.5, -1, n),
              "vmic": rng.uniform(0.8, 2.8, n), "alpha_fe": 0.4, "rv_shift": rng.normal(0, 1.0, n)}
    sim = _noiseless(params)
    w = apstar_wavelength()
    dw = np.gradient(w)
    ll = sim.lines
    for k, lam in enumerate(ll.wave_vac):
        # integrate over +-9 A, but only where no other packaged line falls within 20 A
        if np.sort(np.abs(ll.wave_vac - lam))[1] < 20:
            continue
        sel = np.abs(w - lam) < 9.0
        ew = ((1 - sim.batch.flux[:, sel]) * dw[sel]).sum(axis=1) * 1e3
        strong = sim.ew[:, k] > 5
        np.testing.assert_allclose(ew[strong], sim.ew[strong, k], rtol=0.02)


def test_agrees_with_a_full_moog_synthesis_of_the_same_star():
    """A [Fe/H] = -1 giant: our forward model vs MOOG synth with every line (made by the physics build tool)."""
    with np.load(DATA / "moog_fullsynth_t4800_g1.5_m-1.0.npz", allow_pickle=False) as z:
        ref = z["flux"].astype(float)
        assert (float(z["teff"]), float(z["logg"]), float(z["feh"])) == (4800.0, 1.5, -1.0)
    sim = _noiseless({**GIANT, "vmic": [2.0]}, background=True)
    ours = sim.batch.flux[0].astype(float)
    w = apstar_wavelength()
    on_chip = np.zeros(w.size, bool)
    for lo, hi in CHIPS.values():
        on_chip |= (w > lo + 5) & (w < hi - 5)
    rms = np.sqrt(np.mean((ours - ref)[on_chip] ** 2))
    assert rms < 0.01, rms
    # and the lines are really there: the spectrum is far from flat
    assert np.sqrt(np.mean((1 - ref[on_chip]) ** 2)) > 3 * rms


def test_masks_gaps_and_noise_look_like_real_files(bench):
    b = bench.batch
    nan_frac = (~np.isfinite(b.flux)).mean(axis=1)
    flagged = (b.bitmask != 0).mean(axis=1)
    assert 0.08 <= np.median(nan_frac) <= 0.105
    assert 0.11 <= np.median(flagged) <= 0.18 and flagged.max() <= 0.19
    # chip gaps: no data between the detectors
    w = b.wave
    gap = (w > 15822) & (w < 15845)  # the gap moves with the star's velocity (+-140 km/s = +-7.5 A)
    assert np.all(~np.isfinite(b.flux[:, gap]))
    # flagged pixels are masked by the reader's default bad bits, as in real files (~5-10% of the pixels)
    masked = b.mask.mean(axis=1) - nan_frac
    assert 0.02 < np.median(masked) < 0.12


def test_noise_is_what_ivar_says():
    params = {"teff": [4800.0] * 30, "logg": [1.5] * 30, "feh": [-2.0] * 30, "vmic": [1.8] * 30,
              "snr": np.geomspace(30, 300, 30), "rv_shift": 0.0, "vhelio": 0.0}
    noisy = simulate(params, seed=4)
    clean = simulate(params, seed=4, noise=False)
    good = ~noisy.batch.mask
    pulls = ((noisy.batch.flux - clean.batch.flux) * np.sqrt(noisy.batch.ivar))[good]
    assert abs(np.std(pulls) - 1) < 0.01 and abs(np.mean(pulls)) < 0.01
    # S/N per pixel at the continuum equals the request
    snr = np.nanmedian(np.where(good, clean.continuum * np.sqrt(noisy.batch.ivar), np.nan), axis=1)
    np.testing.assert_allclose(snr, params["snr"], rtol=0.05)


def test_same_seed_same_spectra():
    p = {"teff": [4500.0, 5200.0], "logg": [1.0, 2.8], "feh": [-3.0, -2.0], "vmic": [2.0, 1.5]}
    a, b, c = simulate(p, seed=9), simulate(p, seed=9), simulate(p, seed=10)
    np.testing.assert_array_equal(a.batch.flux, b.batch.flux)
    assert not np.array_equal(np.nan_to_num(a.batch.flux), np.nan_to_num(c.batch.flux))


def test_bad_parameters_raise_naming_the_column():
    with pytest.raises(SimulationError, match="missing column"):
        simulate({"teff": [4800], "logg": [1.5]})
    with pytest.raises(SimulationError, match="'feh' row 1"):
        simulate({"teff": [4800, 4800], "logg": [1.5, 1.5], "feh": [-2, np.nan], "vmic": [2, 2]})
    with pytest.raises(SimulationError, match="'teff' row 0 .* expected a number in 3900..6600"):
        simulate({"teff": [9000], "logg": [1.5], "feh": [-2], "vmic": [2]})


def test_population_is_an_emp_halo(bench):
    t = bench.truth
    assert len(t) == 1500
    assert t.feh.between(-4.5, -1.0).all() and (t.feh < -2.5).mean() >= 0.5
    giants = t.population == "giant"
    assert 0.75 <= giants.mean() <= 0.85
    assert t.teff[giants].between(4000, 5500).all() and t.logg[giants].between(0.5, 3.5).all()
    assert t.teff[~giants].max() <= 6500 and t.logg[~giants].min() >= 3.4
    # no warm low-gravity stars
    assert not ((t.teff > 5000) & (t.logg < 2.0)).any()
    # metal-poor RGB: Teff rises with log g
    assert np.corrcoef(t.teff[giants], t.logg[giants])[0, 1] > 0.8
    assert abs(t.alpha_fe.mean() - 0.4) < 0.02 and abs(t.alpha_fe.std() - 0.1) < 0.02
    assert t.snr.between(30, 300).all()
    # log-uniform: median S/N ~ sqrt(30 * 300) = 95
    assert 80 < t.snr.median() < 110
    # vmic follows log g
    assert np.corrcoef(t.vmic, t.logg)[0, 1] < -0.7


def test_reference_labels_and_external_survey(bench):
    t = bench.truth
    for col, err in REF_ERRORS.items():
        d = t[f"{col}_ref"] - t[col]
        if col == "vmic":
            d = d[(t.vmic_ref > 0.5) & (t.vmic_ref < 3.5)]
        assert abs(d.std() / err - 1) < 0.1, col
        assert abs(d.mean()) < 3 * err / np.sqrt(len(d)) + 1e-9, col
    d = t.feh_ext - t.feh
    assert abs(d.mean() - 0.015) < 0.005 and abs(d.std() - 0.04) < 0.004


def test_split_is_70_15_15_and_stratified(bench):
    t = bench.truth
    frac = t.split.value_counts(normalize=True)
    assert abs(frac["train"] - 0.70) < 0.01 and abs(frac["val"] - 0.15) < 0.01 and abs(frac["test"] - 0.15) < 0.01
    for lo in np.arange(-4.5, -1.0, 0.5):
        in_bin = t.feh.between(lo, lo + 0.5, inclusive="left")
        f = t.split[in_bin].value_counts(normalize=True)
        assert abs(f.get("test", 0) - 0.15) < 0.03, lo
    again = make_benchmark(60, seed=11)
    assert list(again.truth.split) == list(make_benchmark(60, seed=11).truth.split)


def test_true_ews_come_from_the_grid(bench):
    t = bench.truth.iloc[:20]
    cog = CurveOfGrowth.load()
    idx = cog.line_index(load_linelist().wave_vac.to_numpy())
    expect = cog.ew(t.teff, t.logg, t.feh, t.vmic, t.alpha_fe, lines=idx)
    np.testing.assert_allclose(bench.ew[:20], expect)
    assert len(bench.ew_table()) == 1500 * 30


def test_fehkit_simulate_writes_files_the_reader_reads_back(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli(["simulate", "--n", "6", "--seed", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed
    truth = pd.read_csv(out / "truth.csv", comment="#")
    assert list(truth.columns[: len(TRUTH_COLUMNS)]) == list(TRUTH_COLUMNS)
    assert truth.synthetic.all() and len(truth) == 6
    assert (out / "truth.csv").read_text().startswith("# SYNTHETIC")
    files = [out / f for f in truth.file]
    batch = read_apogee(files)
    sim = make_benchmark(6, seed=2)
    np.testing.assert_allclose(batch.flux, sim.batch.flux, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(batch.mask, sim.batch.mask)
    assert list(batch.meta.star_id) == list(truth.star_id)
    from astropy.io import fits

    assert fits.getheader(files[0])["SYNTHETI"] is True
    html = (out / "simulate.html").read_text()
    assert "SYNTHETIC" in html and "real DR17" in html
    ew = pd.read_csv(out / "truth_ew.csv", comment="#")
    assert len(ew) == 6 * 30 and set(ew.columns) == {"star_id", "line_wave", "ew_true_mA"}
    # a second run into the same folder refuses to overwrite
    assert cli(["simulate", "--n", "6", "--out", str(out)]) == 2


def test_sig_telluric_marks_the_stars_own_telluric_absorption():
    t = pd.DataFrame({"teff": [4800.0] * 20, "logg": [1.5] * 20, "feh": [-2.0] * 20, "vmic": [1.8] * 20})
    flagged = simulate(t, seed=4).batch.bitmask >> 13 & 1
    assert 0.03 < flagged.mean() < 0.08            # ~5%, as in the real DR17 combined rows
    none = simulate(t, seed=4, tellurics=False).batch.bitmask >> 13 & 1
    assert none.sum() == 0                         # no telluric spectrum, no telluric flag
