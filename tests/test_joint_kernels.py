"""The compiled classical method (fehkit.physics.joint_kernels) against the NumPy reference, and the fallback."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import fehkit.physics
import fehkit.physics.cog as cog_module
import fehkit.physics.joint as joint
from fehkit.errors import FehkitWarning
from fehkit.physics import CurveOfGrowth
from fehkit.physics.joint import joint_abundance, parameter_error, per_line_median, physics_systematic

pytest.importorskip("numba")


@pytest.fixture(scope="module")
def cog() -> CurveOfGrowth:
    return CurveOfGrowth.load()


@pytest.fixture
def numpy_path(monkeypatch):
    """Switch the compiled kernels off inside ``with numpy_path():``."""
    class Switch:
        def __enter__(self):
            monkeypatch.setattr(joint, "USE_NUMBA", False)
            monkeypatch.setattr(cog_module, "USE_NUMBA", False)

        def __exit__(self, *exc):
            monkeypatch.setattr(joint, "USE_NUMBA", True)
            monkeypatch.setattr(cog_module, "USE_NUMBA", True)

    return Switch


def _stars(cog: CurveOfGrowth, n: int = 40, seed: int = 4):
    """Noisy EWs of n stars: detections, non-detections, a star without lines, one above the grid, one off it."""
    rng = np.random.default_rng(seed)
    teff, logg = rng.uniform(4000, 6400, n), rng.uniform(0.5, 4.5, n)
    vmic, alpha = rng.uniform(0.8, 2.8, n), rng.choice([0.0, 0.2, 0.4], n)
    feh = rng.uniform(-5.5, -1.0, n)
    feh[0], teff[1] = -0.5, 3700.0  # EWs at the top of the grid (made stronger below); Teff below the grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        ew = cog.ew(teff, logg, feh, vmic, alpha)
    err = rng.uniform(1.0, 8.0, ew.shape)
    ew = ew + err * rng.normal(size=ew.shape)
    ew[0] *= 1.5
    use = rng.random(ew.shape) > 0.1
    use[2] = False  # no usable line
    return ew, err, use, teff, logg, vmic, alpha


def test_interpolation_is_scipys_to_the_bit(cog, numpy_path):
    rng = np.random.default_rng(1)
    for grid in (cog, CurveOfGrowth.load("sme")):
        pts = [rng.uniform(3500, 7000, 50), rng.uniform(-0.5, 5.5, 50), rng.uniform(0.2, 4.0, 50),
               rng.uniform(-0.3, 0.7, 50)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FehkitWarning)
            fast, filled = grid.curves(*pts), grid.in_filled_region(*pts)
            with numpy_path():
                ref, filled_ref = grid.curves(*pts), grid.in_filled_region(*pts)
        assert np.array_equal(fast, ref) and np.array_equal(filled, filled_ref)


def test_compiled_joint_likelihood_equals_the_numpy_one(cog, numpy_path):
    ew, err, use, *params = _stars(cog)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        fast = joint_abundance(ew, err, use, *params, cog=cog)
        with numpy_path():
            ref = joint_abundance(ew, err, use, *params, cog=cog)
    assert list(fast.columns) == list(ref.columns)
    for col in ("cog_detected", "cog_n_lines", "cog_at_grid_edge"):
        assert (fast[col] == ref[col]).all(), col
    assert ref["cog_at_grid_edge"].any() and not ref["cog_detected"].all()
    for col in ("feh_cog", "feh_cog_err", "feh_cog_upper", "cog_signal_sigma", "cog_chi2_red"):
        np.testing.assert_allclose(fast[col], ref[col], rtol=0, atol=1e-8, err_msg=col)


def test_compiled_search_finds_the_numpy_grid_points(cog):
    ew, err, use, *params = _stars(cog, n=60, seed=8)
    e, s, u = joint._inputs(ew, err, use, cog, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        for full in (True, False):
            ref = joint._search_numpy(e, s, u, *params, cog, None, 0.05, 1.0, full)
            for stride in (30, 150, 600):
                joint.FIRST_STRIDE, keep = stride, joint.FIRST_STRIDE
                try:
                    fast = joint._search_compiled(e, s, u, *params, cog, None, 0.05, 1.0, full)
                finally:
                    joint.FIRST_STRIDE = keep
                assert np.array_equal(fast["k"], ref["k"])
                np.testing.assert_allclose(fast["near"], ref["near"], rtol=1e-12)
                if full:
                    for key in ("lo1", "hi1", "hi9", "chi2"):
                        np.testing.assert_allclose(fast[key], ref[key], rtol=0, atol=1e-9, err_msg=key)
                assert fast["n_eval"].max() <= joint.FEH_GRID.size


def test_compiled_parameter_error_median_and_systematic_equal_the_numpy_ones(cog, numpy_path):
    ew, err, use, *params = _stars(cog, n=20, seed=5)
    errors = {"teff": 100.0, "logg": 0.2, "vmic": 0.2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        fast = (parameter_error(ew, err, use, *params, errors=errors, cog=cog)[1],
                per_line_median(ew, err, use, *params, cog=cog), physics_systematic(ew, err, use, *params))
        with numpy_path():
            ref = (parameter_error(ew, err, use, *params, errors=errors, cog=cog)[1],
                   per_line_median(ew, err, use, *params, cog=cog), physics_systematic(ew, err, use, *params))
    for a, b in zip(fast, ref, strict=True):
        for col in b:
            if b[col].dtype.kind == "f":
                np.testing.assert_allclose(a[col], b[col], rtol=0, atol=1e-8, err_msg=col)
            else:
                assert (a[col] == b[col]).all(), col


def test_numpy_fallback_when_numba_cannot_be_imported(cog, monkeypatch):
    ew, err, use, *params = _stars(cog, n=10, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        fast = joint_abundance(ew, err, use, *params, cog=cog)
        monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ImportError
        monkeypatch.delitem(sys.modules, "fehkit.physics.joint_kernels", raising=False)
        monkeypatch.delattr(fehkit.physics, "joint_kernels", raising=False)
        fehkit.threads.compiled.cache_clear()
        try:
            assert cog_module._kernels() is None
            ref = joint_abundance(ew, err, use, *params, cog=cog)
        finally:
            fehkit.threads.compiled.cache_clear()
    np.testing.assert_allclose(fast["feh_cog"], ref["feh_cog"], rtol=0, atol=1e-8)
    assert (fast["cog_detected"] == ref["cog_detected"]).all()


def test_compiled_inversion_is_numpys_to_the_bit(cog, numpy_path):
    ew, err, use, teff, logg, vmic, alpha = _stars(cog, n=30, seed=7)
    ew[3, :4] = [-1.0, 0.0, np.nan, 1e4]  # no abundance, none, none, above the grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        fast = cog.abundance(ew, teff, logg, vmic, alpha, ew_err=err)
        with numpy_path():
            ref = cog.abundance(ew, teff, logg, vmic, alpha, ew_err=err)
    for a, b in zip(fast, ref, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_pchip_coefficients_are_numpys_to_the_bit(cog):
    from fehkit.physics.cog import pchip_coefficients
    from fehkit.physics.joint_kernels import pchip

    curves = cog.curves([4000.0, 5500.0, 6600.0], [0.5, 2.5, 4.5], [0.5, 1.8, 3.5], [0.0, 0.2, 0.4])
    curves[1, 5:8, 3] = curves[1, 5, 3]  # flat pieces: zero slopes
    ref = pchip_coefficients(cog.feh, curves)
    for i in range(len(curves)):
        coef = np.empty((4, cog.feh.size - 1, cog.n_lines))
        pchip(cog.feh, curves[i], coef)
        assert np.array_equal(coef, ref[:, i])


def test_feature_table_is_the_numpy_one(cog, numpy_path):
    from types import SimpleNamespace

    import pandas as pd

    from fehkit.ew import FLAGS
    from fehkit.features import build_features

    ew, err, use, teff, logg, vmic, alpha = _stars(cog, n=12, seed=9)
    rng = np.random.default_rng(9)
    flag = rng.choice([FLAGS.index(f) for f in ("ok", "ok", "upper_limit", "blend_suspect", "masked")], ew.shape)
    table = SimpleNamespace(star_id=np.array([f"s{i}" for i in range(len(ew))]), flag_code=flag,
                            ew_mA=np.where(flag == FLAGS.index("masked"), np.nan, ew), ew_err_mA=err,
                            lines=pd.DataFrame({"wave_vac": cog.wave_vac}), detection_sigma=3.0)
    params = pd.DataFrame({"teff": teff, "logg": logg, "vmic": vmic, "alpha_fe": alpha})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        fast = build_features(table, params)
        with numpy_path():
            ref = build_features(table, params)
    assert fast.names == ref.names
    np.testing.assert_allclose(fast.X, ref.X, rtol=0, atol=1e-6)
    for col in ref.stars:
        if ref.stars[col].dtype.kind == "f":
            np.testing.assert_allclose(fast.stars[col], ref.stars[col], rtol=0, atol=1e-8, err_msg=col)
        else:
            assert (fast.stars[col] == ref.stars[col]).all(), col


def test_block_sum_is_numpys_row_sum_to_the_bit():
    from fehkit.physics import joint_kernels

    rng = np.random.default_rng(8)
    for m in (*range(1, 40), 127, 128, 129, 136, 255, 256, 257, 300, 1000):
        a = rng.normal(size=(2, m)) * 10 ** rng.uniform(-4, 4, size=(2, m))
        assert [joint_kernels.block_sum(row) for row in a] == np.sum(a, axis=1).tolist(), m


def test_clipped_statistics_are_astropys_and_numpys_to_the_bit(numpy_path):
    """The compiled sigma clipping against astropy's SigmaClip with NumPy's median and std: outliers, ties, NaN,
    inf, rows with one value and rows without any."""
    rng = np.random.default_rng(9)
    for t in range(300):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 160))
        x = rng.normal(-2.0, 0.3, (n, m))
        far = rng.random((n, m)) < 0.08
        x[far] += rng.choice([-2.0, 2.0, 5.0], far.sum())
        x[rng.random((n, m)) < rng.uniform(0, 0.9)] = np.nan
        if t % 5 == 0:
            x = np.round(x, 1)  # ties
        if t % 7 == 0:
            x[0] = np.nan
        if t % 13 == 0:
            x[rng.random((n, m)) < 0.05] = np.inf
        fast = joint._clipped_stats(x, 3.0)
        with numpy_path():
            ref = joint._clipped_stats(x, 3.0)
        for a, b in zip(fast, ref, strict=True):
            assert np.array_equal(a, b, equal_nan=True), (t, a, b)
    one = joint._clipped_stats(np.array([[np.nan, -2.5, np.nan]]), 3.0)
    assert one[0].tolist() == [-2.5] and one[1].tolist() == [0.0]
