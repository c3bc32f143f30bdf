"""The model's domain of applicability: the training domain in the model card, the flags of every prediction,
and the inputs no star has (fehkit.flags, fehkit.models.domain).

A small ensemble trained on 160 SYNTHETIC stars; the two packaged real DR17 stars (solar metallicity, outside it)
with their header parameters must come out flagged, a synthetic star inside it must come out ``ok``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from fehkit.cli import main
from fehkit.errors import InputTableError
from fehkit.examples import example_paths
from fehkit.features import check_param_values
from fehkit.flags import FLAGS, detected, has_flag, is_ok, join, split, tally
from fehkit.io import read_apogee
from fehkit.models import FeHEnsemble
from fehkit.models.domain import check_domain
from fehkit.models.ensemble import EnsembleError
from fehkit.synth import simulate
from fehkit.training import predict_spectra, spectra_features
from tests.test_infer import _quiet

from .conftest import fit_small_ensemble

TINY = dict(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 20, "hidden": (16,)}, n_folds=3)
#: The packaged real stars and their header parameters (ASPCAP-like Teff, log g; a typical vmic).
GIANT, DWARF = "2M17335483-2753043", "2M19485057+5005279"
REAL_PARAMS = pd.DataFrame({"star_id": [GIANT, DWARF], "teff": [3677.0, 5226.0], "logg": [0.53, 5.0],
                            "vmic": [1.8, 1.0]})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny ensemble trained on 160 SYNTHETIC stars, saved once; its training features."""
    return fit_small_ensemble(160, 21, TINY, 0, tmp_path_factory.mktemp("domain") / "model", {"synthetic": True})


@pytest.fixture(scope="module")
def real(model):
    ens, _, _ = model
    batch = read_apogee(example_paths())
    params = REAL_PARAMS.set_index("star_id").loc[batch.meta["star_id"].astype(str)].reset_index()
    return _quiet(predict_spectra, ens, batch, params).set_index("star_id")


# -- the flags helper ------------------------------------------------------------------------------------------------
def test_flags_have_a_fixed_order_and_are_read_by_name():
    assert FLAGS == ("upper_limit", "no_usable_lines", "out_of_domain", "grid_edge", "grid_extrapolated")
    assert join({"grid_edge": True, "out_of_domain": True}) == "out_of_domain;grid_edge"
    assert join([False] * 5) == "ok"
    flags = pd.Series(["ok", "upper_limit;grid_extrapolated", "out_of_domain;grid_edge", "no_usable_lines"])
    assert has_flag(flags, "grid_edge").tolist() == [False, False, True, False]
    assert is_ok(flags).tolist() == [True, False, False, False]
    assert detected(flags).tolist() == [True, False, True, False]
    assert split("out_of_domain;grid_edge") == ["out_of_domain", "grid_edge"] and split("ok") == []
    assert tally(flags) == {"ok": 1, "upper_limit": 1, "no_usable_lines": 1, "out_of_domain": 1, "grid_edge": 1,
                            "grid_extrapolated": 1}
    with pytest.raises(ValueError, match="no_lines"):
        has_flag(flags, "no_lines")


# -- the training domain -----------------------------------------------------------------------------------------
def test_the_model_card_records_the_training_domain(model):
    ens, path, feats = model
    domain = json.loads((path / "card.json").read_text())["ensemble"]["domain"]
    assert set(domain["ranges"]) == {"teff", "logg", "vmic", "feh", "snr"}
    lo, hi = domain["ranges"]["teff"]
    assert lo == pytest.approx(feats.stars["teff"].min()) and hi == pytest.approx(feats.stars["teff"].max())
    assert domain["ranges"]["snr"] == pytest.approx([feats.stars["snr"].min(), feats.stars["snr"].max()])
    d = domain["distance"]
    assert d["features"] == ["teff", "logg", "vmic", "feh_cog", "feh_cog_err"] and d["threshold"] > 0
    assert np.asarray(d["precision"]).shape == (5, 5)
    assert check_domain(domain) is None
    loaded = FeHEnsemble.load(path)
    assert loaded.domain_ == json.loads(json.dumps(ens.domain_))


def test_a_bad_domain_in_the_card_is_named():
    good = {"ranges": {"feh": [-4.0, -1.0]}, "tolerance": {}, "distance": None}
    assert check_domain(good) is None
    assert "ranges.teff" in check_domain({**good, "ranges": {"feh": [-4.0, -1.0], "teff": [6000, 4000]}})
    assert "feh" in check_domain({**good, "ranges": {}})
    assert "precision" in check_domain({**good, "distance": {"features": ["teff"], "log10": [], "center": [1.0],
                                                             "scale": [1.0], "precision": [[1.0, 2.0]],
                                                             "threshold": 3.0}})


# -- the packaged real stars -------------------------------------------------------------------------------------
def test_the_m_giant_is_out_of_domain_and_at_the_grid_edge(real, model):
    p = real.loc[GIANT]
    names = split(p["flag"])
    assert {"out_of_domain", "grid_edge"} <= set(names)
    assert names == [f for f in FLAGS if f in names]  # in the fixed order
    lo, hi = model[0].domain_["ranges"]["teff"]
    assert f"teff 3677 K outside the training range {lo:.0f}..{hi:.0f} K;" in p["flag_reason"]
    assert "teff 3677 -> 3900 (clipped to the curve-of-growth grid)" in p["flag_reason"]
    assert ("no_usable_lines" in names) == (p["n_lines"] == 0 and not np.isfinite(p["feh_cog"]))


def test_the_dwarf_is_out_of_domain_and_its_likelihood_at_the_grid_top(real, model):
    ens, _, _ = model
    p = real.loc[DWARF]
    assert {"out_of_domain", "grid_edge"} <= set(split(p["flag"]))
    assert "the joint likelihood peaked at the grid edge [Fe/H] = -0.5" in p["flag_reason"]
    # the classical -0.5 lies above every training label: the clip of the members' starting value is said
    lo, hi = ens.domain_["ranges"]["feh"]
    assert f"classical [Fe/H] -0.50 clipped to the training range {lo:.2f}..{hi:.2f};" in p["flag_reason"]


def test_flags_do_not_depend_on_how_the_features_are_passed(model):
    ens, _, _ = model
    feats = _quiet(spectra_features, read_apogee(example_paths()), REAL_PARAMS)
    a, b = ens.predict(feats), _quiet(ens.predict, feats.frame())
    assert a["flag"].tolist() == b["flag"].tolist()


def test_the_training_stars_are_inside_their_own_domain(model):
    ens, _, feats = model
    pred = ens.predict(feats)
    # a training star is out of the domain only by the distance (~1% of those it was fitted on lie above its 99th
    # percentile) or a classical [Fe/H] just above the highest label (clipped to it: said, never silent)
    ood = has_flag(pred["flag"], "out_of_domain")
    assert ood.mean() <= 0.05
    assert pred["flag_reason"][ood].str.match("(feature-space distance|classical .Fe/H. -[01])").all()
    upper = has_flag(pred["flag"], "upper_limit")
    assert np.array_equal(upper, feats.stars["cog_signal_sigma"].to_numpy() < 3)
    assert pred["flag_reason"][upper].str.contains("feh_upper is the 3-sigma upper limit").all()
    assert (pred["flag_reason"] == "").tolist() == is_ok(pred["flag"]).tolist()


def test_a_synthetic_star_inside_the_domain_is_ok(model):
    ens, _, _ = model
    sim = simulate({"teff": [4800.0], "logg": [2.0], "feh": [-2.5], "vmic": [1.7], "snr": [150.0]}, seed=3)
    params = sim.truth[["teff", "logg", "vmic"]]
    pred = _quiet(predict_spectra, ens, sim.batch, params)
    assert pred["flag"].tolist() == ["ok"] and pred["flag_reason"].tolist() == [""]


def test_a_star_without_usable_lines_is_flagged_so(model):
    ens, _, feats = model
    X = feats.frame().iloc[:3].copy()
    X["cog_n_lines"] = 0.0
    pred = _quiet(ens.predict, X)
    assert has_flag(pred["flag"], "no_usable_lines").all() and not has_flag(pred["flag"], "upper_limit").any()
    assert pred["feh_upper"].isna().all()


def test_predict_prints_the_flags_and_writes_them(model, tmp_path, capsys, real):
    _, path, _ = model
    REAL_PARAMS.to_csv(tmp_path / "params.csv", index=False)
    out = tmp_path / "results.csv"
    assert main(["predict", *map(str, example_paths()), "--model", str(path), "--params",
                 str(tmp_path / "params.csv"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = lines[-1]
    assert summary.startswith("flags: ") and "out_of_domain 2" in summary and "grid_edge 2" in summary
    res = pd.read_csv(out, keep_default_na=False).set_index("star_id")
    assert list(res.columns[-2:]) == ["flag", "flag_reason"]
    assert res["flag"].to_dict() == real["flag"].to_dict()
    assert res["flag_reason"].to_dict() == real["flag_reason"].to_dict()


# -- inputs no star has ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("column", "value"), [("teff", 100000.0), ("teff", 0.0), ("logg", -5.0), ("logg", 6.5),
                                               ("vmic", 0.0)])
def test_parameters_no_star_has_are_an_error(model, tmp_path, capsys, column, value):
    _, path, _ = model
    params = REAL_PARAMS.copy()
    params.loc[1, column] = value
    params.to_csv(tmp_path / "params.csv", index=False)
    assert main(["predict", *map(str, example_paths()), "--model", str(path), "--params",
                 str(tmp_path / "params.csv"), "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert f"star {DWARF} has {column} = {value:g}" in err and "expected" in err
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(InputTableError, match=re.escape(f"star {DWARF} has {column}")):
        _quiet(predict_spectra, model[0], read_apogee(example_paths()), params.drop(columns="star_id"))


def test_two_rows_for_one_star_are_an_error(model, tmp_path, capsys):
    _, path, _ = model
    params = pd.concat([REAL_PARAMS, REAL_PARAMS.iloc[[1]].assign(teff=5300.0)], ignore_index=True)
    params.to_csv(tmp_path / "params.csv", index=False)
    assert main(["predict", *map(str, example_paths()), "--model", str(path), "--params",
                 str(tmp_path / "params.csv"), "--out", str(tmp_path / "r.csv")]) == 2
    assert f"star_id {DWARF} has 2 rows (rows 2, 3); expected one row per star" in capsys.readouterr().err
    with pytest.raises(InputTableError, match="file a.fits has 2 rows"):
        check_param_values(pd.DataFrame({"file": ["a.fits", "b.fits", "a.fits"], "teff": 5000.0}), "t.csv")


def test_training_refuses_labels_without_spread(model):
    _, _, feats = model
    with pytest.raises(EnsembleError, match=r"spread .* expected at least 0.05 dex"):
        FeHEnsemble(**TINY).fit(feats, np.full(len(feats.X), -2.0))
