"""The classical method done fully (fehkit.physics.joint) on EWs from the curve of growth itself, with known noise."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fehkit.errors import GridRangeError
from fehkit.physics import CurveOfGrowth
from fehkit.physics.joint import (
    FEH_GRID,
    JOINT_COLUMNS,
    joint_abundance,
    likelihood_profile,
    parameter_error,
    per_line_median,
)

GIANT = dict(teff=4800.0, logg=1.5, vmic=2.0)
NO_MODEL_ERROR = dict(model_fraction=0.0, model_floor_mA=0.0)


@pytest.fixture(scope="module")
def cog() -> CurveOfGrowth:
    return CurveOfGrowth.load()


def _all(shape: tuple[int, int]) -> np.ndarray:
    return np.ones(shape, bool)


def _giant(ew: np.ndarray, err: np.ndarray | float, cog: CurveOfGrowth, **kwargs):
    ew = np.atleast_2d(ew)
    err = np.broadcast_to(np.asarray(err, float), ew.shape)
    return joint_abundance(ew, err, _all(ew.shape), GIANT["teff"], GIANT["logg"], GIANT["vmic"], cog=cog, **kwargs)


# -- noiseless EWs give back the input --------------------------------------------------------------------------------
def test_noiseless_ews_give_back_feh_for_several_stars_at_once(cog):
    feh = np.array([-1.5, -2.0, -2.7, -3.3, -4.0])
    teff = np.array([4500.0, 4800.0, 5100.0, 4700.0, 4900.0])
    logg = np.array([1.0, 1.5, 2.0, 1.2, 1.8])
    vmic = np.array([1.8, 2.0, 1.6, 2.1, 1.9])
    ew = cog.ew(teff, logg, feh, vmic)
    out = joint_abundance(ew, np.full(ew.shape, 3.0), _all(ew.shape), teff, logg, vmic, cog=cog)
    assert list(out.columns) == list(JOINT_COLUMNS)
    assert np.allclose(out["feh_cog"], feh, atol=0.01)
    assert (out["cog_n_lines"] == 30).all() and not out["cog_at_grid_edge"].any()
    # the error grows as the lines weaken: the line strength is what carries the information
    assert np.all(np.diff(out["feh_cog_err"].to_numpy()) > 0)
    assert out["cog_detected"].to_numpy()[:4].all()


def test_noiseless_ews_are_recovered_in_chunks(cog):
    feh = np.linspace(-3.5, -1.0, 7)
    ew = cog.ew(4800, 1.5, feh, 2.0)
    one = _giant(ew, 3.0, cog)
    chunked = _giant(ew, 3.0, cog, chunk=2)
    assert np.allclose(one["feh_cog"], chunked["feh_cog"]) and np.allclose(one["feh_cog"], feh, atol=0.01)


# -- errors: pulls of many noisy draws of the same star ---------------------------------------------------------------
def test_pulls_have_unit_scatter_when_the_ew_noise_is_the_only_error(cog):
    truth, n = -2.5, 400
    ew = cog.ew(4800, 1.5, truth, 2.0) + np.random.default_rng(3).normal(0, 3.0, (n, 30))
    out = _giant(ew, 3.0, cog, **NO_MODEL_ERROR)
    pull = (out["feh_cog"] - truth) / out["feh_cog_err"]
    assert out["cog_detected"].all()
    assert 0.88 <= pull.std() <= 1.12, pull.std()
    assert abs(pull.mean()) < 0.15


def test_pulls_have_unit_scatter_when_the_model_error_is_in_the_ews_too(cog):
    truth, n = -2.2, 400
    clean = cog.ew(4800, 1.5, truth, 2.0)
    sigma = np.sqrt(3.0**2 + (0.05 * clean) ** 2 + 1.0**2)  # EW noise + the model's 5% and 1 mA terms
    ew = clean + np.random.default_rng(4).normal(size=(n, 30)) * sigma
    out = _giant(ew, 3.0, cog)
    pull = (out["feh_cog"] - truth) / out["feh_cog_err"]
    assert 0.8 <= pull.std() <= 1.25, pull.std()
    assert abs(pull.mean()) < 0.15


# -- detection and upper limits ---------------------------------------------------------------------------------------
def test_noise_only_star_is_an_upper_limit_in_the_sensible_range(cog):
    rng = np.random.default_rng(5)
    ew = np.vstack([np.zeros(30), rng.normal(0, 3.0, (1000, 30))])
    out = _giant(ew, 3.0, cog)
    assert not out["cog_detected"].iloc[0] and out["cog_signal_sigma"].iloc[0] == 0.0
    # a 3-sigma threshold on pure noise: ~0.1% false detections (one-sided), certainly below 0.5%
    assert out["cog_detected"].sum() <= 5
    out = out[~out["cog_detected"]]
    # 30 lines at 3 mA (S/N ~200) on a 4800 K giant: the 3-sigma limit sits between -4 and -2 (~ -3.5 at S/N 120-300
    # in docs/information_limit.md)
    assert out["feh_cog_upper"].between(-4.0, -2.0).all(), out["feh_cog_upper"].describe()
    assert (out["feh_cog_upper"] > out["feh_cog"]).all()


def test_a_star_at_its_upper_limit_is_a_three_sigma_detection(cog):
    limit = float(_giant(np.zeros(30), 3.0, cog)["feh_cog_upper"].iloc[0])
    at_limit = _giant(cog.ew(4800, 1.5, limit, 2.0), 3.0, cog)
    assert 2.5 <= at_limit["cog_signal_sigma"].iloc[0] <= 3.5


def test_sub_threshold_lines_add_up_to_a_detection(cog):
    ew = cog.ew(4800, 1.5, -2.5, 2.0)
    err = ew / 1.5  # every line alone at 1.5 sigma: none detected on its own
    out = joint_abundance(ew, err, _all(ew.shape), **GIANT, cog=cog)
    assert out["cog_signal_sigma"].iloc[0] > 3.0 and out["cog_detected"].iloc[0]
    assert abs(out["feh_cog"].iloc[0] + 2.5) < 0.01
    alone = per_line_median(ew, err, _all(ew.shape), **GIANT, cog=cog)
    assert alone["cog_median_n_lines"].iloc[0] == 0 and np.isnan(alone["feh_cog_median"].iloc[0])


def test_detection_sigma_sets_the_detection_threshold(cog):
    ew = np.full((1, 30), 4.5)  # a flat 1.5-sigma EW in every line: about 5 sigma jointly
    default = _giant(ew, 3.0, cog)
    assert 3.0 < default["cog_signal_sigma"].iloc[0] < 10.0 and default["cog_detected"].iloc[0]
    strict = _giant(ew, 3.0, cog, detection_sigma=20.0)
    assert not strict["cog_detected"].iloc[0]
    assert strict["cog_signal_sigma"].iloc[0] == default["cog_signal_sigma"].iloc[0]


# -- which lines enter ------------------------------------------------------------------------------------------------
def test_unusable_lines_are_ignored(cog):
    ew = cog.ew(4800, 1.5, [-2.0, -3.0], 2.0)
    err = np.full(ew.shape, 3.0)
    usable = _all(ew.shape)
    usable[:, ::3] = False
    base = joint_abundance(ew, err, usable, **GIANT, cog=cog)
    changed = ew.copy()
    changed[:, ::3] = 500.0  # wildly wrong EWs in lines that do not count
    again = joint_abundance(changed, err, usable, **GIANT, cog=cog)
    assert np.array_equal(base.to_numpy(), again.to_numpy())
    assert (base["cog_n_lines"] == 20).all()
    assert np.allclose(base["feh_cog"], [-2.0, -3.0], atol=0.01)


def test_nan_ews_and_zero_errors_are_not_used(cog):
    ew = cog.ew(4800, 1.5, -2.0, 2.0)
    err = np.full(ew.shape, 3.0)
    ew[0, :5] = np.nan
    err[0, 5:8] = 0.0
    out = joint_abundance(ew, err, _all(ew.shape), **GIANT, cog=cog)
    assert out["cog_n_lines"].iloc[0] == 22 and abs(out["feh_cog"].iloc[0] + 2.0) < 0.01


def test_a_star_without_usable_lines_has_no_abundance(cog):
    ew = cog.ew(4800, 1.5, [-2.0, -2.0], 2.0)
    usable = _all(ew.shape)
    usable[1] = False
    out = joint_abundance(ew, np.full(ew.shape, 3.0), usable, **GIANT, cog=cog)
    assert out["cog_n_lines"].tolist() == [30, 0]
    assert np.isnan(out[["feh_cog", "feh_cog_err", "feh_cog_upper"]].to_numpy()[1]).all()
    assert not out["cog_detected"].iloc[1]


@pytest.mark.parametrize(
    "ew_shape, err_shape, usable_shape",
    [((2, 30), (2, 29), (2, 30)), ((2, 30), (2, 30), (3, 30)), ((2, 30), (1, 30), (2, 30))],
    ids=["err-lines", "usable-stars", "err-stars"],
)
def test_shape_mismatch_raises_grid_range_error(cog, ew_shape, err_shape, usable_shape):
    with pytest.raises(GridRangeError, match="expected one shape"):
        joint_abundance(np.ones(ew_shape), np.ones(err_shape), np.ones(usable_shape, bool), **GIANT, cog=cog)


def test_ews_of_fewer_lines_than_the_grid_raise_grid_range_error(cog):
    with pytest.raises(GridRangeError):
        joint_abundance(np.ones((2, 29)), np.ones((2, 29)), _all((2, 29)), **GIANT, cog=cog)


def test_a_subset_of_lines_is_chosen_by_grid_index(cog):
    lines = np.array([0, 2, 7, 13, 26])
    ew = cog.ew(4800, 1.5, -2.4, 2.0, lines=lines)
    out = joint_abundance(ew, np.full(ew.shape, 1.0), _all(ew.shape), **GIANT, cog=cog, lines=lines)
    assert abs(out["feh_cog"].iloc[0] + 2.4) < 0.01 and out["cog_n_lines"].iloc[0] == 5


# -- the textbook per-line median beside it ---------------------------------------------------------------------------
def test_per_line_median_matches_the_per_line_inversion_for_noiseless_ews(cog):
    feh = np.array([-1.5, -2.0, -2.6])
    ew = cog.ew(4800, 1.5, feh, 2.0)
    err = np.full(ew.shape, 1.0)
    out = per_line_median(ew, err, _all(ew.shape), **GIANT, cog=cog)
    inverted = cog.abundance(np.where(ew >= 3 * err, ew, np.nan), **GIANT)
    assert np.allclose(out["feh_cog_median"], np.nanmedian(inverted, axis=1), atol=1e-6)
    assert np.allclose(out["feh_cog_median"], feh, atol=1e-4)
    assert out["cog_median_n_lines"].tolist() == np.sum(ew >= 3 * err, axis=1).tolist()


def test_per_line_median_is_nan_when_no_line_is_detected(cog):
    ew = np.random.default_rng(6).normal(0, 1.0, (2, 30))
    out = per_line_median(ew, np.full(ew.shape, 3.0), _all(ew.shape), **GIANT, cog=cog)
    assert np.isnan(out["feh_cog_median"]).all() and np.isnan(out["feh_cog_median_err"]).all()
    assert (out["cog_median_n_lines"] == 0).all()


# -- stellar-parameter errors -----------------------------------------------------------------------------------------
def test_parameter_error_grows_with_the_teff_error(cog):
    ew = cog.ew(4800, 1.5, -2.0, 2.0)
    err, usable = np.full(ew.shape, 3.0), _all(ew.shape)
    total = []
    for dteff in (50.0, 100.0, 200.0):
        e, d = parameter_error(ew, err, usable, **GIANT, errors={"teff": dteff, "logg": 0.0, "vmic": 0.0}, cog=cog)
        assert list(d.columns) == ["dfeh_teff", "dfeh_logg", "dfeh_vmic"]
        assert d["dfeh_logg"].iloc[0] == 0.0 and d["dfeh_vmic"].iloc[0] == 0.0
        assert np.isclose(e[0], abs(d["dfeh_teff"].iloc[0]))
        total.append(e[0])
    assert total[0] < total[1] < total[2]
    # a hotter star ionizes more Fe: Fe I lines weaken, so the inferred [Fe/H] rises by ~0.05 dex per 100 K
    assert 0.03 <= total[1] <= 0.08, total


def test_parameter_error_is_the_quadrature_sum_of_the_shifts(cog):
    ew = cog.ew([4600, 5000], [1.2, 2.2], [-2.0, -2.0], [2.0, 1.6])
    err, usable = np.full(ew.shape, 3.0), _all(ew.shape)
    e, d = parameter_error(ew, err, usable, [4600, 5000], [1.2, 2.2], [2.0, 1.6],
                           errors={"teff": 100.0, "logg": 0.2, "vmic": 0.2}, cog=cog)
    assert e.shape == (2,) and np.allclose(e, np.sqrt((d.to_numpy() ** 2).sum(axis=1)))
    assert (d["dfeh_teff"] > 0).all()


# -- the likelihood itself --------------------------------------------------------------------------------------------
def test_likelihood_profile_minimum_is_the_joint_abundance(cog):
    rng = np.random.default_rng(7)
    feh = np.array([-1.8, -2.4, -3.0])
    ew = cog.ew(4800, 1.5, feh, 2.0) + rng.normal(0, 3.0, (3, 30))
    err = np.full(ew.shape, 3.0)
    prof = likelihood_profile(ew, err, _all(ew.shape), **GIANT, cog=cog)
    out = joint_abundance(ew, err, _all(ew.shape), **GIANT, cog=cog)
    step = FEH_GRID[1] - FEH_GRID[0]
    assert prof["m2lnl"].shape == (3, FEH_GRID.size) and prof["model_ew"].shape == (3, FEH_GRID.size, 30)
    assert np.allclose(prof["m2lnl"].min(axis=1), 0.0)
    at_min = prof["feh_grid"][prof["m2lnl"].argmin(axis=1)]
    assert np.all(np.abs(at_min - out["feh_cog"].to_numpy()) <= step + 1e-9)
    assert np.allclose(np.sqrt(np.clip(prof["m2lnl_none"], 0, None)), out["cog_signal_sigma"])


# -- the coarse-to-fine search gives what the whole grid gives ---------------------------------------------------------
def _mixed_stars(cog: CurveOfGrowth, n: int = 120, seed: int = 11):
    """Detections, non-detections, flat and one-sided profiles, a star with no line and one above the grid."""
    rng = np.random.default_rng(seed)
    teff, logg, vmic = rng.uniform(4000, 6300, n), rng.uniform(0.5, 4.5, n), rng.uniform(1.0, 2.8, n)
    feh = rng.uniform(-6.3, -0.7, n)
    err = rng.uniform(0.5, 15.0, (n, cog.n_lines))
    ew = cog.ew(teff, logg, feh, vmic) + rng.normal(size=err.shape) * err
    usable = rng.random(err.shape) > 0.15
    usable[0] = False                      # no usable line
    ew[1] = 3 * ew[1] + 300.0              # stronger than the grid reaches
    ew[2] = -np.abs(ew[2])                 # all negative: the minimum at the lower edge
    return ew, err, usable, teff, logg, vmic


def test_the_search_finds_the_whole_grid_minimum_and_crossings(cog):
    from fehkit.physics.joint import _crossing, _joint

    ew, err, usable, teff, logg, vmic = _mixed_stars(cog)
    out = joint_abundance(ew, err, usable, teff, logg, vmic, cog=cog, chunk=50)
    prof = likelihood_profile(ew, err, usable, teff, logg, vmic, cog=cog)
    delta = prof["m2lnl"]                  # the whole grid, relative to its minimum
    k = np.argmin(delta, axis=1)
    rows = np.arange(len(k))
    kk = np.clip(k, 1, FEH_GRID.size - 2)
    y0, y1, y2 = delta[rows, kk - 1], delta[rows, kk], delta[rows, kk + 1]
    curv = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where((curv > 0) & (k == kk), 0.5 * (y0 - y2) / curv, 0.0)
    feh = FEH_GRID[k] + np.clip(off, -0.5, 0.5) * (FEH_GRID[1] - FEH_GRID[0])
    lo1, hi1 = _crossing(delta, k, 1.0)
    _, hi9 = _crossing(delta, k, 9.0)
    has = out["cog_n_lines"].to_numpy() > 0
    assert not has[0] and has[1:].all()
    assert out["cog_at_grid_edge"].iloc[1] and out["feh_cog"].iloc[2] < -6.4
    for name, expected in (("feh_cog", feh), ("feh_cog_err", 0.5 * (hi1 - lo1)), ("feh_cog_upper", hi9),
                           ("cog_signal_sigma", np.sqrt(np.clip(prof["m2lnl_none"], 0, None)))):
        assert np.allclose(out[name].to_numpy()[has], expected[has], rtol=0, atol=1e-9), name
    assert (out["cog_at_grid_edge"].to_numpy() == ((k == FEH_GRID.size - 1) & has)).all()
    # the short search (parameter shifts, second physics) finds the same minimum
    short = _joint(ew, err, usable, teff, logg, vmic, 0.4, cog=cog, full=False)
    pd.testing.assert_frame_equal(pd.DataFrame(short), out[list(short)])


def test_parameter_error_in_one_batch_equals_one_shift_at_a_time(cog):
    ew, err, usable, teff, logg, vmic = _mixed_stars(cog, n=40, seed=12)
    errors = {"teff": np.full(40, 120.0), "logg": 0.25, "vmic": 0.3}
    _, d = parameter_error(ew, err, usable, teff, logg, vmic, errors=errors, cog=cog)
    base = joint_abundance(ew, err, usable, teff, logg, vmic, cog=cog)["feh_cog"].to_numpy()
    for name, moved in (("teff", (teff + 120.0, logg, vmic)), ("logg", (teff, logg + 0.25, vmic)),
                        ("vmic", (teff, logg, vmic + 0.3))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a shifted star may leave the grid: clipped, as in parameter_error
            one = joint_abundance(ew, err, usable, *moved, cog=cog)["feh_cog"].to_numpy() - base
        assert np.allclose(d[f"dfeh_{name}"].to_numpy(), one, rtol=0, atol=1e-12, equal_nan=True), name


def test_physics_systematic_reuses_a_given_reference_fit(cog):
    from fehkit.physics.joint import physics_systematic

    ew, err, usable, teff, logg, vmic = _mixed_stars(cog, n=40, seed=13)
    alpha = np.where(np.arange(40) % 3 == 0, 0.2, 0.4)  # a third are refitted at the SME grid's +0.4
    base = joint_abundance(ew, err, usable, teff, logg, vmic, alpha, cog=cog)
    plain = physics_systematic(ew, err, usable, teff, logg, vmic, alpha, reference=cog)
    reused = physics_systematic(ew, err, usable, teff, logg, vmic, alpha, reference=cog, base=base)
    pd.testing.assert_frame_equal(plain, reused)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if __import__("torch").cuda.is_available() else []))
def test_the_torch_grid_gives_the_search_results(cog, device):
    """The torch engine evaluates the whole grid (a GPU's way): the same minimum, crossings and detections."""
    from fehkit.physics.joint import _joint

    ew, err, usable, teff, logg, vmic = _mixed_stars(cog, n=60, seed=13)
    ref = joint_abundance(ew, err, usable, teff, logg, vmic, cog=cog)
    got = joint_abundance(ew, err, usable, teff, logg, vmic, cog=cog, device=device, chunk=25)
    assert list(got.columns) == list(ref.columns)
    for col in ref.columns:
        a, b = ref[col].to_numpy(float), got[col].to_numpy(float)
        assert np.allclose(a, b, rtol=0, atol=1e-8, equal_nan=True), col
    short = _joint(ew, err, usable, teff, logg, vmic, 0.4, cog=cog, full=False, device=device)
    assert np.allclose(short["feh_cog"], ref["feh_cog"], rtol=0, atol=1e-8, equal_nan=True)
    med = per_line_median(ew, err, usable, teff, logg, vmic, cog=cog)
    med_t = per_line_median(ew, err, usable, teff, logg, vmic, cog=cog, device=device)
    for col in med.columns:
        assert np.allclose(med[col].to_numpy(float), med_t[col].to_numpy(float), rtol=0, atol=1e-10,
                           equal_nan=True), col
