"""Held-out evaluation on a labelled table: fehkit validate, fehkit evaluate --data TABLE, fehkit train --holdout.

The labelled table is a SYNTHETIC stand-in in the cross-match layout (fehkit.data.crossmatch): simulated apStar
files (SYNTHETI = T), the training columns, provenance columns, an ASPCAP FE_H column (offset, empty below -2.5 as
ASPCAP's grid is) and a GALAH column; the table itself says synthetic. Tiny ensembles keep it fast.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from fehkit.cli import main
from fehkit.data.crossmatch import PROVENANCE_COLUMNS, TRAINING_COLUMNS
from fehkit.evaluate import cross_survey_columns, cross_survey_real, evaluate
from fehkit.files import read_marker
from fehkit.training import holdout_mask, stratified_folds

TINY = '{"n_folds": 3, "rf": {"n_estimators": 20}, "xgb": {"n_estimators": 20}, "dnn": {"max_epochs": 20, ' \
       '"hidden": [16, 8]}}'
N_STARS = 45


def labelled_table(root, n: int = N_STARS, seed: int = 3) -> pd.DataFrame:
    """Write root/spectra (simulated apStar files) and root/table.csv in the cross-match layout; return the table."""
    from fehkit.synth import make_benchmark, write_benchmark

    write_benchmark(make_benchmark(n, seed), root / "spectra")
    t = pd.read_csv(root / "spectra" / "truth.csv", comment="#")
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"file": "spectra/" + t["file"], "feh_ref": t["feh_ref"], "feh_ref_err": t["feh_ref_err"],
                          "teff": t["teff_ref"], "logg": t["logg_ref"], "vmic": t["vmic_ref"]})
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-60, 60, n)
    provenance = {"apogee_id": t["star_id"], "telescope": "apo25m", "field": "SYNTHETIC", "snr": t["snr"], "ra": ra,
                  "dec": dec, "ref_id": [f"SYN-{i}" for i in range(n)], "ref_ra": ra, "ref_dec": dec,
                  "sep_arcsec": 0.0, "n_ref_within": 1, "teff_source": "reference", "logg_source": "reference",
                  "vmic_source": "reference", "ref_catalog": "SYNTHETIC stand-in (simulated spectra)"}
    for col, values in provenance.items():
        table[col] = values
    aspcap = t["feh"] + 0.10 + rng.normal(0, 0.05, n)
    table["FE_H"] = np.where(aspcap < -2.5, np.nan, aspcap)  # ASPCAP's DR17 grid floor
    table["feh_galah"] = t["feh"] - 0.05 + rng.normal(0, 0.08, n)
    table["synthetic"] = True
    table.to_csv(root / "table.csv", index=False)
    return table


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The table, then fehkit validate, train --holdout and evaluate --data TABLE on it (their outputs)."""
    root = tmp_path_factory.mktemp("validate")
    table = labelled_table(root)
    capture = {}
    for name, argv in {
        "validate": ["validate", "--data", str(root / "table.csv"), "--folds", "3", "--out", str(root / "val"),
                     "--quiet", "--ensemble", TINY],
        "train": ["train", "--data", str(root / "table.csv"), "--holdout", "0.2", "--out", str(root / "model"),
                  "--quiet", "--ensemble", TINY],
        "evaluate": ["evaluate", "--model", str(root / "model"), "--data", str(root / "table.csv"), "--out",
                     str(root / "eval")],
    }.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        capture[name] = (code, out.getvalue(), err.getvalue())
    return root, table, capture


def test_the_stand_in_table_has_the_cross_match_layout(runs):
    _, table, _ = runs
    assert list(table.columns[:len(TRAINING_COLUMNS)]) == list(TRAINING_COLUMNS)
    assert set(PROVENANCE_COLUMNS) - {"url", "ref_citation", "ref_licence", "apogee_source"} <= set(table.columns)
    assert table["FE_H"].isna().any() and table["FE_H"].notna().any()


def test_validate_writes_out_of_fold_predictions_for_every_star(runs):
    root, table, capture = runs
    code, out, _ = capture["validate"]
    assert code == 0, capture["validate"]
    assert "SYNTHETIC stand-in table" in out and "feh - aspcap_fe_h" in out
    assert read_marker(root / "val")["kind"] == "validate"
    assert read_marker(root / "val")["synthetic"] is True
    assert (root / "val" / "predictions.csv").read_text().startswith("# SYNTHETIC")
    pred = pd.read_csv(root / "val" / "predictions.csv", comment="#")
    assert len(pred) == len(table) and list(pred["file"]) == list(table["file"])
    assert np.allclose(pred["feh_ref"], table["feh_ref"])
    assert sorted(pred["fold"].unique()) == [0, 1, 2]
    # stratified: each fold spans the [Fe/H] range
    for _, fold in pred.groupby("fold"):
        assert fold["feh_ref"].min() < -3.0 and fold["feh_ref"].max() > -2.0
    assert {"aspcap_fe_h", "galah_fe_h", "synthetic"} <= set(pred.columns)
    assert pred["synthetic"].all()


def test_validate_metrics_score_against_the_reference_labels_and_the_other_surveys(runs):
    root, table, _ = runs
    m = json.loads((root / "val" / "metrics.json").read_text())
    assert m["synthetic"] is True
    assert m["truth"] == "feh_ref (reference labels)"
    assert m["validation"]["folds"] == 3
    assert m["n_test"] == len(table)
    assert m["models"]["ensemble"]["n"] > 5 and m["models"]["ensemble"]["mae"] < 0.3
    cross = m["cross_survey_real"]
    assert set(cross) == {"aspcap_fe_h", "galah_fe_h"}
    assert cross["aspcap_fe_h"]["n_missing"] == int(table["FE_H"].isna().sum())
    # ASPCAP was made 0.10 dex high: fehkit - ASPCAP is negative, like the reference labels - ASPCAP
    assert cross["aspcap_fe_h"]["bias"] < -0.03 and cross["aspcap_fe_h"]["bias_ref"] < -0.03
    assert cross["galah_fe_h"]["bias"] > 0
    assert sum(b["n"] for b in cross["galah_fe_h"]["by_feh"]) == cross["galah_fe_h"]["n"]
    page = (root / "val" / "report.html").read_text()
    assert "SYNTHETIC" in page and "Cross-survey check on the labelled stars" in page
    assert "feh_ref (reference labels)" in page


def test_train_holdout_keeps_stars_out_and_records_them_in_the_card(runs):
    from fehkit.models import FeHEnsemble

    root, table, capture = runs
    code, out, _ = capture["train"]
    assert code == 0, capture["train"]
    assert "held out 9 stars" in out and "MAE" in out
    card = json.loads((root / "model" / "card.json").read_text())
    h = card["holdout"]
    assert h["n"] == 9 and h["fraction"] == 0.2 and h["truth"] == "feh_ref (reference labels)"
    assert card["n_train"] == len(table) - 9
    held = {p["file"] for p in h["predictions"]}
    assert len(held) == 9 and held <= set(table["file"])
    assert h["mae"] is None or h["mae"] < 0.5
    FeHEnsemble.load(root / "model")  # the model folder still passes its integrity check


def test_evaluate_on_a_table_writes_a_folder_and_warns_when_in_sample(runs):
    root, table, capture = runs
    code, out, err = capture["evaluate"]
    assert code == 0, capture["evaluate"]
    assert {p.name for p in (root / "eval").iterdir()} == {".fehkit-output.json", "metrics.json",
                                                            "predictions.csv", "report.html"}
    m = json.loads((root / "eval" / "metrics.json").read_text())
    assert m["synthetic"] is True and m["model"]["trained_on_this_table"] is True
    assert "cross_survey_real" in m
    assert "in-sample" in err
    assert len(pd.read_csv(root / "eval" / "predictions.csv", comment="#")) == len(table)


def test_a_real_table_is_never_called_synthetic(runs, tmp_path, examples):
    """The two packaged real DR17 spectra as a labelled table: no SYNTHETIC anywhere."""
    import shutil

    root, _, _ = runs
    for path in examples:
        shutil.copy(path, tmp_path / path.name)
    pd.DataFrame({"file": [p.name for p in examples], "feh_ref": [-0.1, 0.0], "feh_ref_err": [0.1, 0.1],
                  "teff": [3677.0, 5226.0], "logg": [0.53, 5.0], "vmic": [1.5, 1.0],
                  "fe_h": [-0.15, 0.05]}).to_csv(tmp_path / "real.csv", index=False)
    assert main(["evaluate", "--model", str(root / "model"), "--data", str(tmp_path / "real.csv"), "--out",
                 str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["synthetic"] is False and m["truth"] == "feh_ref (reference labels)"
    assert m["model"]["synthetic"] is True  # the model was, and the metrics say so separately
    assert set(m["cross_survey_real"]) == {"aspcap_fe_h"}
    assert not (tmp_path / "out" / "predictions.csv").read_text().startswith("#")
    assert "SYNTHETIC benchmark (not observations)" not in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(("argv", "words"), [
    (["validate", "--data", "{d}/table.csv", "--folds", "1"], ["--folds", "1"]),
    (["validate", "--data", "{d}/small.csv", "--folds", "3", "--out", "{d}/v"], ["small.csv", "stars for 3 folds"]),
    (["validate", "--data", "{d}/nope.csv", "--out", "{d}/v"], ["nope.csv", "not found"]),
    (["validate", "--data", "{d}/table.csv", "--ensemble", "{{rf"], ["--ensemble", "not valid JSON"]),
    (["validate", "--data", "{d}/table.csv", "--ensemble", '{{"trees": 3}}'], ["--ensemble", "trees"]),
    (["train", "--data", "{d}/table.csv", "--out", "{d}/m", "--holdout", "1.5"], ["--holdout", "out of range"]),
    (["evaluate", "--model", "{d}/m", "--data", "{d}/bad.csv", "--out", "{d}/e"], ["bad.csv", "feh_ref"]),
])
def test_bad_input_is_one_line_and_exit_2(runs, argv, words, capsys):
    root, table, _ = runs
    table.head(4).to_csv(root / "small.csv", index=False)
    (root / "bad.csv").write_text("a,b\n1,2\n")
    assert main([a.format(d=root) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    for word in words:
        assert word.format(d=root) in err[0]


def test_folds_and_holdout_are_stratified_in_feh():
    y = np.linspace(-4.5, -1.0, 50)
    folds = stratified_folds(y, 5, seed=1)
    assert np.bincount(folds).tolist() == [10] * 5
    for k in range(5):
        assert y[folds == k].min() < -4.0 and y[folds == k].max() > -1.5
    assert np.array_equal(folds, stratified_folds(y, 5, seed=1))
    held = holdout_mask(y, 0.2, seed=2)
    assert held.sum() == 10 and y[held].min() < -4.0 and y[held].max() > -1.5


def test_cross_survey_real_by_hand():
    pred = pd.DataFrame({"feh": [-3.0, -2.0, -1.5, -3.5], "flag": ["ok", "ok", "ok", "upper_limit"],
                         "feh_ref": [-3.1, -2.1, -1.6, -3.6], "aspcap_fe_h": [np.nan, -2.2, -1.7, -3.0]})
    c = cross_survey_real(pred, ["aspcap_fe_h"])["aspcap_fe_h"]
    assert c["n"] == 2 and c["n_missing"] == 1 and c["n_upper_limits"] == 1
    assert c["bias"] == pytest.approx(0.2) and c["bias_ref"] == pytest.approx(0.1)
    assert c["label"].startswith("ASPCAP")
    assert cross_survey_columns(["FE_H", "M_H", "GALAH_FE_H"]) == {"aspcap_fe_h": "FE_H", "aspcap_m_h": "M_H",
                                                                  "galah_fe_h": "GALAH_FE_H"}


def test_evaluate_accepts_reference_labels_as_truth():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-4, -1, 30)
    pred = pd.DataFrame({"feh": ref + 0.05, "feh_err": 0.1, "flag": "ok", "feh_cog": ref, "feh_ref": ref,
                         "teff": 4800.0, "snr": 80.0})
    m = evaluate(pred, synthetic=False, truth_column="feh_ref", n_boot=50)
    assert m["synthetic"] is False and m["truth"] == "feh_ref (reference labels)"
    assert m["models"]["ensemble"]["bias"] == pytest.approx(0.05)
