"""The [Fe/H] commands: fehkit demo, train, predict, evaluate (their documented files), on small SYNTHETIC sets."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fehkit import __version__
from fehkit.cli import main
from fehkit.files import read_marker
from fehkit.flags import has_flag

PREDICT_COLUMNS = ["star_id", "feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "feh_sys",
                   "n_lines", "flag", "flag_reason"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 160-star synthetic benchmark folder, a model trained on it, and a parameter CSV of its reference labels."""
    root = tmp_path_factory.mktemp("feh_cli")
    assert main(["simulate", "--n", "160", "--seed", "4", "--out", str(root / "bench"), "--no-html"]) == 0
    assert main(["train", "--data", str(root / "bench"), "--out", str(root / "model"), "--quiet"]) == 0
    truth = pd.read_csv(root / "bench" / "truth.csv", comment="#")
    params = truth[["file", "teff_ref", "logg_ref", "vmic_ref"]].set_axis(["file", "teff", "logg", "vmic"], axis=1)
    params.to_csv(root / "params.csv", index=False)
    return root, truth


def test_train_writes_a_model_card_that_says_synthetic(bench):
    root, _ = bench
    card = json.loads((root / "model" / "card.json").read_text())
    assert card["synthetic"] is True
    assert len(card["training_set_sha256"]) == 64
    assert set(card["files"]) == {"rf.skops", "xgb.json", "dnn.safetensors"}


def test_predict_writes_the_design_columns_one_row_per_file(bench, capsys):
    root, truth = bench
    files = [str(root / "bench" / f) for f in truth["file"][:6]]
    out = root / "results.csv"
    assert main(["predict", *files, "--model", str(root / "model"), "--params", str(root / "params.csv"),
                 "--out", str(out)]) == 0
    res = pd.read_csv(out)
    assert list(res.columns) == PREDICT_COLUMNS
    assert list(res.star_id) == list(truth.star_id[:6])
    assert not has_flag(res.flag, "no_usable_lines").any()
    upper = has_flag(res.flag, "upper_limit")
    assert res.feh_upper[upper].notna().all() and res.feh_upper[~upper].isna().all()
    assert "SYNTHETIC" in capsys.readouterr().err


def test_evaluate_scores_the_test_split(bench):
    root, truth = bench
    out = root / "metrics.json"
    assert main(["evaluate", "--model", str(root / "model"), "--data", str(root / "bench"), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["synthetic"] is True
    assert m["n_test"] == int((truth.split == "test").sum())
    assert {"rf", "xgb", "dnn", "ensemble", "cog"} <= set(m["models"])


def test_predict_without_stellar_parameters_names_the_missing_column(bench, capsys):
    root, truth = bench
    (root / "bad.csv").write_text("file,teff,logg\n" + "".join(f"{f},4800,1.5\n" for f in truth.file[:2]))
    files = [str(root / "bench" / f) for f in truth["file"][:2]]
    assert main(["predict", *files, "--model", str(root / "model"), "--params", str(root / "bad.csv")]) == 2
    assert "vmic" in capsys.readouterr().err


def test_a_tampered_model_is_refused_by_predict(bench, tmp_path, capsys):
    import shutil

    root, truth = bench
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    data = bytearray((model / "xgb.json").read_bytes())
    data[100] = ord("7") if data[100] != ord("7") else ord("8")
    (model / "xgb.json").write_bytes(bytes(data))
    files = [str(root / "bench" / truth.file[0])]
    assert main(["predict", *files, "--model", str(model), "--params", str(root / "params.csv"),
                 "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert "xgb.json" in err and "SHA-256" in err
    assert not (tmp_path / "r.csv").exists()


def test_train_refuses_a_folder_without_truth(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert "truth.csv" in capsys.readouterr().err


def test_demo_writes_every_file_of_the_contract(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-stars", "150", "--seed", "2", "--no-cannon", "--no-ablation",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text and "coverage_68" in text
    for name in ("metrics.json", "predictions.csv", "report.html", "model/card.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["seed"] == 2 and m["fehkit_version"] == __version__
    assert m["command"] == f"fehkit demo --out {out} --n-stars 150 --seed 2 --no-cannon --no-ablation --quiet"
    assert read_marker(out)["kind"] == "demo" and read_marker(out)["command"] == m["command"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary folder left behind"
    pred = pd.read_csv(out / "predictions.csv", comment="#")
    assert m["n_test"] == len(pred)
    assert (out / "predictions.csv").read_text().startswith("# SYNTHETIC")
    for col in (*PREDICT_COLUMNS, "true_feh", "true_teff", "true_logg", "true_vmic", "snr", "feh_ref", "teff_ref"):
        assert col in pred, col


def test_demo_refuses_too_few_stars(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--n-stars", "10"]) == 2
    assert "--n-stars" in capsys.readouterr().err


def test_train_takes_a_table_of_stars_like_the_crossmatch_writes(bench, tmp_path):
    """The real-data path: file, feh_ref, feh_ref_err, teff, logg, vmic (here pointing at synthetic files)."""
    root, truth = bench
    table = truth[["file", "feh_ref", "feh_ref_err", "teff_ref", "logg_ref", "vmic_ref"]].set_axis(
        ["file", "feh_ref", "feh_ref_err", "teff", "logg", "vmic"], axis=1)
    table["file"] = [str(root / "bench" / f) for f in table.file]
    table.to_csv(tmp_path / "train.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["n_train"] == len(table)
    assert card["synthetic"] is True  # the files say SYNTHETI = T, whatever the table claims


def test_train_table_without_labels_names_the_missing_column(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("file,teff,logg,vmic\na.fits,4800,1.5,1.8\n")
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "m")]) == 2
    assert "feh_ref" in capsys.readouterr().err


def test_train_with_a_bounded_grid_search_records_the_choice(bench, tmp_path):
    root, _ = bench
    grid = '{"xgb": {"max_depth": [2, 4]}}'
    assert main(["train", "--data", str(root / "bench"), "--out", str(tmp_path / "m"), "--grid-search", grid,
                 "--quiet"]) == 0
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    chosen = card["grid_search"]["best"]["xgb"]["max_depth"]
    assert chosen in (2, 4)
    assert len(card["grid_search"]["scores"]) == 2
    assert card["ensemble"]["member_params"]["xgb"]["max_depth"] == chosen


@pytest.mark.parametrize("grid, expected", [("{rf", "not valid JSON"), ('{"svm": {}}', "rf, xgb or dnn"),
                                            ('{"rf": {"max_depth": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}}',
                                             "at most 16")])
def test_a_bad_or_unbounded_grid_is_refused(bench, tmp_path, capsys, grid, expected):
    root, _ = bench
    assert main(["train", "--data", str(root / "bench"), "--out", str(tmp_path / "m"), "--grid-search", grid]) == 2
    assert expected in capsys.readouterr().err


def test_predict_on_the_real_examples_reports_the_grid_edge_clipping_once(bench, tmp_path, capsys, examples):
    """The M giant's Teff (3677 K) is below the curve-of-growth grid: clipped, and the command says so, once."""
    root, _ = bench
    params = tmp_path / "p.csv"
    params.write_text("star_id,teff,logg,vmic\n2M17335483-2753043,3677,0.8,2.0\n2M19485057+5005279,5200,4.4,1.0\n")
    assert main(["predict", *map(str, examples), "--model", str(root / "model"), "--params", str(params),
                 "--out", str(tmp_path / "r.csv")]) == 0
    err = capsys.readouterr().err
    clipped = [line for line in err.splitlines() if "clipped to the grid edge" in line]
    assert len(clipped) == 1, err
    assert clipped[0].startswith("fehkit predict: warning") and "teff" in clipped[0] and "3900" in clipped[0]
    assert "Traceback" not in err
    res = pd.read_csv(tmp_path / "r.csv")
    assert list(res.columns) == PREDICT_COLUMNS and len(res) == 2


def test_predict_results_keep_their_precision(bench, tmp_path, capsys):
    root, truth = bench
    files = [str(root / "bench" / f) for f in truth["file"][:2]]
    out = tmp_path / "r.csv"
    assert main(["predict", *files, "--model", str(root / "model"), "--params", str(root / "params.csv"),
                 "--out", str(out)]) == 0
    feh = pd.read_csv(out, dtype=str)["feh"]
    assert feh.map(lambda v: len(v.split(".")[-1])).min() >= 4  # 1e-4 dex or better, not %.5g of -1.4754


def test_train_overwrite_refuses_a_folder_it_did_not_write(bench, tmp_path, capsys):
    root, _ = bench
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    assert main(["train", "--data", str(root / "bench"), "--out", str(tmp_path / "m"), "--overwrite"]) == 2
    assert "not written by fehkit" in capsys.readouterr().err
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
