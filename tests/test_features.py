"""The regressors' feature matrix (fehkit.features) built from a small SYNTHETIC benchmark's measured EWs."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

from fehkit.continuum import normalize
from fehkit.errors import FehkitWarning
from fehkit.ew import FLAGS, measure_ew
from fehkit.features import STAR_FEATURES, FeatureError, Features, build_features
from fehkit.physics.joint import JOINT_COLUMNS
from fehkit.synth import make_benchmark
from fehkit.training import reference_params

LINE_FEATURES = ("ew", "ew_err", "ew_sig", "ew_upper", "state")


@pytest.fixture(scope="module")
def measured() -> tuple:
    """40 stars: the EW table (every flag occurs) and the reference parameters an observer has."""
    sim = make_benchmark(40, seed=2)
    params = reference_params(sim.truth)
    ew = measure_ew(normalize(sim.batch).batch, params=params[["teff", "logg", "vmic"]], mc_draws=0)
    return sim, ew, params


def _build(ew, params, **kwargs) -> Features:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)  # a star or two off the grid's edge: clipped
        return build_features(ew, params, **kwargs)


@pytest.fixture(scope="module")
def feats(measured) -> Features:
    sim, ew, params = measured
    return _build(ew, params, snr=sim.truth["snr"].to_numpy())


def _tags(ew) -> list[str]:
    return [f"{w:.2f}" for w in ew.lines["wave_vac"]]


def _column(f: Features, name: str) -> np.ndarray:
    return f.X[:, f.names.index(name)]


# -- no silent zeros ---------------------------------------------------------------------------------------------------
def test_every_flag_occurs_in_the_fixture(measured):
    _, ew, _ = measured
    assert set(np.unique(ew.flag_code)) == set(range(len(FLAGS)))


def test_masked_lines_are_nan_never_zero(measured, feats):
    _, ew, _ = measured
    unusable = np.isin(ew.flag_code, [FLAGS.index("masked"), FLAGS.index("fit_failed")])
    for j, tag in enumerate(_tags(ew)):
        for kind in LINE_FEATURES:
            col = _column(feats, f"{kind}_{tag}")
            assert np.array_equal(np.isnan(col), unusable[:, j]), (kind, tag)


def test_non_detections_keep_their_measured_value_and_state_one(measured, feats):
    _, ew, _ = measured
    upper = ew.flag_code == FLAGS.index("upper_limit")
    values = np.column_stack([_column(feats, f"ew_{t}") for t in _tags(ew)])
    states = np.column_stack([_column(feats, f"state_{t}") for t in _tags(ew)])
    assert np.allclose(values[upper], ew.ew_mA[upper], rtol=1e-6)
    assert (values[upper] < 0).any()  # a negative EW is a measurement near zero, not a missing value
    assert (states[upper] == 1).all()
    assert (states[ew.flag_code == FLAGS.index("ok")] == 0).all()
    assert (states[ew.flag_code == FLAGS.index("blend_suspect")] == 2).all()


def test_ew_upper_is_the_three_sigma_limit_and_ew_sig_the_significance(measured, feats):
    _, ew, _ = measured
    ok = np.isfinite(ew.ew_mA)
    upper = np.column_stack([_column(feats, f"ew_upper_{t}") for t in _tags(ew)])
    sig = np.column_stack([_column(feats, f"ew_sig_{t}") for t in _tags(ew)])
    expected = np.maximum(ew.ew_mA, 0) + 3 * ew.ew_err_mA
    assert np.allclose(upper[ok], expected[ok], rtol=1e-5)
    assert np.allclose(sig[ok], (ew.ew_mA / ew.ew_err_mA)[ok], rtol=1e-5)


def test_the_classical_columns_are_features_and_star_columns(feats):
    assert set(JOINT_COLUMNS) <= set(feats.stars.columns)
    for k in STAR_FEATURES:
        assert np.allclose(_column(feats, k), feats.stars[k].to_numpy(float), equal_nan=True, rtol=1e-6)
    assert np.isfinite(_column(feats, "feh_cog")).all()
    assert feats.stars["snr"].notna().all() and feats.X.dtype == np.float32


# -- names ------------------------------------------------------------------------------------------------------------
def test_names_are_unique_and_match_the_columns(measured, feats):
    _, ew, _ = measured
    assert len(feats.names) == len(set(feats.names)) == feats.X.shape[1]
    assert feats.X.shape[0] == len(feats.stars) == 40
    assert list(feats.frame().columns) == feats.names
    assert len(feats.names) == 5 * ew.n_lines + 3 + len(STAR_FEATURES)
    assert feats.mask.shape == feats.X.shape


def test_log_ew_adds_log_columns(measured, feats):
    _, ew, params = measured
    f = _build(ew, params, log_ew=True)
    logs = [n for n in f.names if n.startswith("log_ew_")]
    assert len(logs) == ew.n_lines and set(feats.names) < set(f.names)
    assert not any(n.startswith("log_ew_") for n in feats.names)
    ok = ew.flag_code == FLAGS.index("ok")
    upper = ew.flag_code == FLAGS.index("upper_limit")
    got = np.column_stack([_column(f, f"log_ew_{t}") for t in _tags(ew)])
    assert np.allclose(got[ok], np.log10(ew.ew_mA[ok]), atol=1e-5)
    limit = np.maximum(ew.ew_mA, 0) + 3 * ew.ew_err_mA
    assert np.allclose(got[upper], np.log10(limit[upper]), atol=1e-5)


def test_include_params_drops_parameter_columns(measured, feats):
    _, ew, params = measured
    assert {"teff", "logg", "vmic"} <= set(feats.names)
    only_teff = _build(ew, params, include_params=("teff",))
    assert "teff" in only_teff.names and "logg" not in only_teff.names and "vmic" not in only_teff.names
    none = _build(ew, params, include_params=())
    assert not {"teff", "logg", "vmic"} & set(none.names)
    # the classical method still uses the parameters: its abundance does not change
    assert np.allclose(_column(none, "feh_cog"), _column(feats, "feh_cog"))
    with pytest.raises(FeatureError, match="'feh'"):
        _build(ew, params, include_params=("feh",))


# -- bad parameters ---------------------------------------------------------------------------------------------------
def test_a_missing_parameter_column_raises_naming_it(measured):
    _, ew, params = measured
    with pytest.raises(FeatureError, match="vmic"):
        build_features(ew, params.drop(columns="vmic"))


def test_a_nan_parameter_raises_naming_the_column_and_row(measured):
    _, ew, params = measured
    bad = params.copy()
    bad.loc[7, "logg"] = np.nan
    with pytest.raises(FeatureError, match=r"'logg'.*row 7"):
        build_features(ew, bad)


def test_a_wrong_row_count_raises(measured):
    _, ew, params = measured
    with pytest.raises(FeatureError, match=r"39 rows; expected .*\(40\)"):
        build_features(ew, params.iloc[:39])


def test_a_mapping_of_parameters_works_and_alpha_defaults(measured, feats):
    _, ew, params = measured
    f = _build(ew, {k: params[k].to_numpy() for k in ("teff", "logg", "vmic")})
    assert (f.stars["alpha_fe"] == 0.4).all()
    assert np.allclose(_column(f, "feh_cog"), _column(feats, "feh_cog"))


def test_two_lines_at_one_wavelength_are_refused(measured):
    _, ew, params = measured
    twin = copy.copy(ew)
    waves = ew.lines["wave_vac"].to_numpy().copy()
    waves[1] = waves[0]
    twin.lines = ew.lines.assign(wave_vac=waves)
    with pytest.raises(FeatureError, match="two lines at one wavelength"):
        _build(twin, params)


def test_parameter_error_columns_set_the_parameter_part_of_the_error(measured, feats):
    _, ew, params = measured
    bigger = params.assign(teff_err=300.0)
    f = _build(ew, bigger)
    assert (f.stars["teff_err"] == 300.0).all()
    assert np.nanmedian(f.stars["feh_cog_err_param"]) > 1.5 * np.nanmedian(feats.stars["feh_cog_err_param"])


# -- Features ---------------------------------------------------------------------------------------------------------
def test_select_takes_rows_of_x_and_stars_together(feats):
    mask = np.zeros(len(feats.X), bool)
    mask[[1, 4, 9]] = True
    for which in (mask, np.array([1, 4, 9])):
        sub = feats.select(which)
        assert np.array_equal(sub.X, feats.X[[1, 4, 9]], equal_nan=True)
        assert sub.stars["star_id"].tolist() == feats.stars["star_id"].iloc[[1, 4, 9]].tolist()
        assert sub.stars.index.tolist() == [0, 1, 2] and sub.names == feats.names


def test_the_star_table_is_built_when_first_asked_and_its_columns_read_without_it(measured):
    sim, ew, params = measured
    lazy = _build(ew, params, snr=sim.truth["snr"].to_numpy())
    early = lazy.star_columns(["star_id", "snr", "cog_clipped", "n_lines", "no_such_column"])
    sub = lazy.select(np.array([3, 1]))  # rows of the arrays, before any table exists
    assert dataclasses.replace(lazy, ew=None).stars.equals(lazy.stars)  # still a dataclass
    table = lazy.stars
    assert set(early) == {"star_id", "snr", "cog_clipped", "n_lines"}
    for k, v in early.items():
        assert v.tolist() == table[k].tolist(), k
    assert [type(v) for v in early["star_id"]] == [str] * len(table)
    pd.testing.assert_frame_equal(sub.stars, table.iloc[[3, 1]].reset_index(drop=True))
    assert table.dtypes.equals(_build(ew, params, snr=sim.truth["snr"].to_numpy()).stars.dtypes)
    table["snr"] = -1.0  # once built, the table is what a later reader sees
    assert (lazy.star_columns(["snr"])["snr"] == -1.0).all() and lazy.stars is table


def test_drop_removes_the_named_columns(feats):
    out = feats.drop(["logg", "vmic", "dfeh_logg"])
    assert out.X.shape == (feats.X.shape[0], feats.X.shape[1] - 3)
    assert not {"logg", "vmic", "dfeh_logg"} & set(out.names)
    kept = [feats.names.index(n) for n in out.names]
    assert np.array_equal(out.X, feats.X[:, kept], equal_nan=True)
    assert isinstance(out.frame(), pd.DataFrame) and len(feats.names) == feats.X.shape[1]  # the original is intact
