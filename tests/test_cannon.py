"""The Cannon peer: it learns [Fe/H] from spectra, and its wrapper keeps thecannon's habits away from the user.

The accuracy test trains on the blue detector of a small synthetic benchmark (thecannon's training costs ~1 ms per
pixel whatever the number of spectra, so a third of the pixels keeps the test quick); the rest use a toy model
whose spectra are exactly quadratic in the labels, on 60 pixels.
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

from fehkit.baselines import cannon
from fehkit.baselines.cannon import CannonError, fit_cannon, predict_cannon
from fehkit.errors import FehkitError, SpectrumShapeError
from fehkit.spectra import CHIPS, SpectrumBatch

LABELS = ["teff", "logg", "feh"]


@pytest.fixture(scope="module")
def thecannon():
    return pytest.importorskip("TheCannon")


def toy_spectra(n: int, seed: int, n_pix: int = 60, snr: float = 200.0) -> tuple[SpectrumBatch, pd.DataFrame]:
    """Normalized spectra that are exactly quadratic in (teff, logg, feh), plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"teff": rng.uniform(4200, 5400, n), "logg": rng.uniform(0.5, 3.5, n),
                           "feh": rng.uniform(-3.5, -1.0, n)})
    x = (labels.to_numpy() - [4800, 2.0, -2.25]) / [300, 0.75, 0.6]
    lvec = np.hstack([x, np.stack([x[:, i] * x[:, j] for i in range(3) for j in range(i, 3)], axis=1)])
    # the same "physics" every call: mostly linear in the labels, as real lines are, so each spectrum has one best fit
    size = np.repeat([0.03, 0.004], [3, 6])[:, None]
    theta = np.random.default_rng(12345).normal(0, 1, (lvec.shape[1], n_pix)) * size
    flux = 0.9 + lvec @ theta + rng.normal(0, 1 / snr, (n, n_pix))
    wave = np.linspace(15200.0, 15213.0, n_pix)
    batch = SpectrumBatch(wave, flux, np.full(flux.shape, snr**2), np.zeros(flux.shape, bool), flux_unit="")
    return batch, labels


@pytest.fixture(scope="module")
def toy(thecannon):
    train, train_labels = toy_spectra(80, seed=1)
    test, test_labels = toy_spectra(20, seed=2)
    return fit_cannon(train, train_labels), train, train_labels, test, test_labels


@pytest.fixture(scope="module")
def benchmark(thecannon):
    from fehkit.continuum import normalize
    from fehkit.synth import make_benchmark

    sim = make_benchmark(200, seed=3)
    spectra = normalize(sim.batch).batch
    lo, hi = CHIPS["blue"]
    blue = (spectra.wave >= lo) & (spectra.wave <= hi)
    spectra = SpectrumBatch(spectra.wave[blue], spectra.flux[:, blue], spectra.ivar[:, blue], spectra.mask[:, blue],
                            spectra.meta, flux_unit="")
    train = (sim.truth.split == "train").to_numpy()
    labels = sim.truth[["teff_ref", "logg_ref", "feh_ref"]].rename(columns=lambda c: c.removesuffix("_ref"))
    peer = fit_cannon(spectra[train], labels[train])
    return peer, spectra[~train], sim.truth[~train].reset_index(drop=True)


def test_held_out_feh_beats_the_mean_by_far(benchmark):
    # given a Cannon trained on reference labels of 141 synthetic stars
    peer, test, truth = benchmark
    # when it predicts 59 stars it never saw
    result = predict_cannon(peer, test)
    # then for stars with [Fe/H] > -2.5 it is far better than guessing the mean [Fe/H]
    rich = truth.feh > -2.5
    mae = (result.feh[rich] - truth.feh[rich]).abs().mean()
    assert rich.sum() >= 20
    assert mae < 0.5 * truth.feh[rich].std()
    assert list(result.columns) == LABELS + [f"{name}_err" for name in LABELS] + ["chi2"]
    assert result.index.equals(pd.RangeIndex(test.n_spectra))


def test_labels_of_a_quadratic_toy_come_back_with_honest_errors(toy):
    # given spectra that follow The Cannon's own model exactly
    peer, _, _, test, truth = toy
    # when their labels are inferred
    result = predict_cannon(peer, test)
    # then they come back, and the errors, in label units (not thecannon's scaled ones), match the residuals
    for name in LABELS:
        pull = (result[name] - truth[name]) / result[f"{name}_err"]
        assert 0.5 < pull.std() < 2.0, name
    assert (result.feh - truth.feh).abs().max() < 0.1
    assert np.all(result.chi2 > 0)


def test_fit_and_predict_leave_their_inputs_untouched(thecannon):
    # given spectra with masked pixels and labels
    train, labels = toy_spectra(40, seed=4)
    train.mask[:, :5] = True
    train.ivar[:, :5] = 0.0
    before = (train.flux.copy(), train.ivar.copy(), train.mask.copy(), labels.copy())
    # when a Cannon is trained on them and predicts them (thecannon writes into the arrays it is handed)
    peer = fit_cannon(train, labels)
    predict_cannon(peer, train)
    # then nothing the caller owns has changed
    np.testing.assert_array_equal(train.flux, before[0])
    np.testing.assert_array_equal(train.ivar, before[1])
    np.testing.assert_array_equal(train.mask, before[2])
    pd.testing.assert_frame_equal(labels, before[3])


def test_importing_thecannon_leaves_matplotlib_settings_alone(thecannon, monkeypatch):
    # given a user without LaTeX, and thecannon not imported yet (it sets text.usetex when imported)
    for name in [m for m in sys.modules if m == "TheCannon" or m.startswith("TheCannon.")]:
        monkeypatch.delitem(sys.modules, name)
    train, labels = toy_spectra(40, seed=5)
    with matplotlib.rc_context({"text.usetex": False, "font.family": "sans-serif"}):
        # when the peer is trained and used
        predict_cannon(fit_cannon(train, labels), train)
        # then the user's settings are still in force
        assert matplotlib.rcParams["text.usetex"] is False
        assert matplotlib.rcParams["font.family"] == ["sans-serif"]


def test_masked_and_nan_pixels_give_finite_labels(toy):
    # given test spectra with a NaN stretch that is masked, and one whose NaN flux nobody masked
    peer, _, _, test, truth = toy
    clean = predict_cannon(peer, test)
    flux = test.flux.copy()
    flux[:, 10:25] = np.nan
    holed = SpectrumBatch(test.wave, flux, test.ivar, test.mask, flux_unit="")
    holed.flux[0, 40] = np.nan  # edited after the batch built its mask
    # when their labels are inferred
    result = predict_cannon(peer, holed)
    # then every label is finite and close to the one from the whole spectrum
    assert np.isfinite(result[LABELS].to_numpy()).all()
    assert (result.feh - clean.feh).abs().max() < 0.1


def test_a_spectrum_without_data_gets_nan_and_the_rest_do_not(toy):
    # given a batch where one spectrum is masked entirely
    peer, _, _, test, _ = toy
    test = test.select(range(4))
    test.mask[2] = True
    # when predicted
    result = predict_cannon(peer, test)
    # then that row is NaN and the others are not
    assert result.loc[2, LABELS].isna().all()
    assert np.isfinite(result.drop(index=2)[LABELS].to_numpy()).all()


def test_training_in_pixel_blocks_gives_the_model_of_one_block(toy, monkeypatch):
    # given the toy training set, trained in one block of pixels
    peer, train, labels, _, _ = toy
    # when it is trained again in blocks of 7 pixels
    monkeypatch.setattr(cannon, "_PIXEL_BLOCK", 7)
    blocked = fit_cannon(train, labels)
    # then the model is the same (every pixel is fitted on its own)
    np.testing.assert_allclose(blocked.model.coeffs, peer.model.coeffs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(blocked.model.scatters, peer.model.scatters, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.drop(columns="logg"), ["missing", "logg"]),
        (lambda t: t.assign(feh=t.feh.where(t.index != 3)), ["labels['feh']", "row 3", "finite"]),
        (lambda t: t.assign(teff=t.teff.astype(object).where(t.index != 0, "hot")), ["labels['teff']", "'hot'"]),
        (lambda t: t.iloc[:-1], ["40 values", "(39,)"]),
        (lambda t: t.assign(logg=2.0), ["labels['logg']", "spread"]),
        (lambda t: t.to_numpy(), ["labels", "DataFrame", "ndarray"]),
    ],
    ids=["missing-column", "nan", "not-a-number", "too-short", "no-spread", "bare-array"],
)
def test_bad_labels_are_named_in_the_error(edit, words):
    # given 40 spectra and labels with one thing wrong
    train, labels = toy_spectra(40, seed=6)
    # when training, then the error says which field and what was expected
    with pytest.raises(CannonError) as err:
        fit_cannon(train, edit(labels))
    assert isinstance(err.value, FehkitError)
    for word in words:
        assert word in str(err.value)


def test_labels_may_be_a_plain_mapping_and_other_bad_arguments_are_caught(thecannon):
    train, labels = toy_spectra(40, seed=7)
    peer = fit_cannon(train, {name: labels[name].to_numpy() for name in LABELS})
    assert peer.label_names == tuple(LABELS)
    with pytest.raises(CannonError, match="order"):
        fit_cannon(train, labels, order=1)
    with pytest.raises(CannonError, match="more training spectra"):
        fit_cannon(train.select(range(8)), labels.iloc[:8])
    raw = SpectrumBatch(train.wave, train.flux, train.ivar, train.mask)  # APOGEE flux units, not normalized
    with pytest.raises(CannonError, match="continuum-normalized"):
        fit_cannon(raw, labels)
    other_grid = SpectrumBatch(train.wave + 1.0, train.flux, train.ivar, train.mask, flux_unit="")
    with pytest.raises(SpectrumShapeError, match="training grid"):
        predict_cannon(peer, other_grid)


def test_missing_thecannon_says_how_to_install_it(monkeypatch):
    # given an environment without thecannon
    monkeypatch.setitem(sys.modules, "TheCannon", None)
    train, labels = toy_spectra(40, seed=8)
    # when the peer is trained, then the error says what to install
    with pytest.raises(ImportError, match=r'pip install "fehkit\[peers\]"'):
        fit_cannon(train, labels)
