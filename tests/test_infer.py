"""fehkit.infer: the one CPU/GPU helper gives the predict table of the library path, from memory or from files,
with the members run as torch tensors or by their own libraries; and fehkit bench reports its keys."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import fehkit.infer
import fehkit.models.trees
from fehkit.cli import main
from fehkit.errors import CorruptFileError, FehkitWarning, UsageError
from fehkit.examples import example_paths
from fehkit.infer import TorchMembers, _read_chunks, infer, resolve_device
from fehkit.io import read_apogee, write_apstar
from fehkit.synth import make_benchmark
from fehkit.training import PREDICT_COLUMNS, predict_spectra, reference_params, spectra_features

SMALL = dict(rf={"n_estimators": 40, "max_depth": 10}, xgb={"n_estimators": 60}, dnn={"max_epochs": 20,
             "hidden": (32, 16)}, n_folds=3)
MEMBER_COLUMNS = ("feh_rf", "feh_xgb", "feh_dnn")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _quiet(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        return f(*args, **kwargs)


@pytest.fixture(scope="module")
def setup(small_model):
    """The small model of conftest and its folder; 60 other SYNTHETIC stars, their parameters, the library's table."""
    ens, path = small_model
    sim = make_benchmark(60, seed=32)
    params = reference_params(sim.truth)
    expected = _quiet(predict_spectra, ens, sim.batch, params)
    return ens, path, sim, params, expected


def _same(a: pd.DataFrame, b: pd.DataFrame, member_tol: float, fused_tol: float) -> None:
    assert list(a.columns) == list(b.columns) == list(PREDICT_COLUMNS)
    assert (a["star_id"].to_numpy() == b["star_id"].to_numpy()).all()
    assert (a["flag"].to_numpy() == b["flag"].to_numpy()).all()
    for col in MEMBER_COLUMNS:
        assert np.allclose(a[col], b[col], rtol=0, atol=member_tol, equal_nan=True), col
    for col in ("feh", "feh_err", "feh_upper"):
        assert np.allclose(a[col], b[col], rtol=0, atol=fused_tol, equal_nan=True), col
    for col in ("feh_cog", "feh_sys", "n_lines"):
        assert np.allclose(a[col].to_numpy(float), b[col].to_numpy(float), equal_nan=True), col


def test_infer_on_the_cpu_gives_the_library_table(setup):
    ens, _, sim, params, expected = setup
    got = _quiet(infer, sim.batch, ens, params, device="cpu", batch_size=25)  # three chunks, the last one short
    # chunks change only the MLP's float32 matrix products (another BLAS blocking): rounding, no more
    _same(expected, got, 1e-6, 1e-6)


def test_fehkit_infer_is_the_helper_itself(setup):
    import fehkit

    ens, _, sim, params, expected = setup
    got = _quiet(fehkit.infer, sim.batch.select(np.arange(5)), ens, params.iloc[:5], device="cpu")
    pd.testing.assert_frame_equal(got, _quiet(infer, sim.batch.select(np.arange(5)), ens, params.iloc[:5],
                                               device="cpu"))


def test_members_as_float64_tensors_equal_scikit_learn_and_xgboost(setup):
    """The float64 check of the tensor trees: 1e-5 dex per member and 1e-4 dex fused at most (both far smaller)."""
    ens, _, sim, params, expected = setup
    got = _quiet(infer, sim.batch, ens, params, device="cpu", trees="tensor", dtype=torch.float64)
    _same(expected, got, 1e-5, 1e-4)
    diff = np.nanmax(np.abs(expected["feh_rf"] - got["feh_rf"]))
    assert diff < 1e-12  # the forest's leaf means in float64: the same sums


@pytest.mark.skipif(not fehkit.models.trees.compiled_available(), reason="the compiled walk needs numba")
def test_compiled_trees_equal_scikit_learn_and_xgboost(setup):
    """The CPU default: the forest and the boosted trees through the compiled walk, the libraries' numbers."""
    ens, _, sim, params, expected = setup
    got = _quiet(infer, sim.batch, ens, params, device="cpu", trees="compiled")
    _same(expected, got, 1e-5, 1e-4)
    assert np.nanmax(np.abs(expected["feh_rf"] - got["feh_rf"])) < 1e-12  # the forest's float64 leaf means
    library = _quiet(infer, sim.batch, ens, params, device="cpu", trees="library")
    pd.testing.assert_frame_equal(library, expected)
    with pytest.raises(UsageError, match="trees 'bogus': expected 'auto', 'tensor', 'compiled' or 'library'"):
        infer(sim.batch, ens, params, device="cpu", trees="bogus")


def test_the_torch_engine_in_float64_gives_the_cpu_table(setup):
    """The whole GPU path (continuum, EWs, classical method, trees as tensors) on CPU tensors, in float64."""
    ens, _, sim, params, expected = setup
    got = _quiet(infer, sim.batch, ens, params, device="cpu", engine="torch", trees="tensor", dtype=torch.float64)
    _same(expected, got, 1e-5, 1e-4)
    for col in ("feh_cog", "feh_sys"):
        assert np.allclose(expected[col], got[col], rtol=0, atol=1e-6, equal_nan=True), col


def test_torch_members_return_each_members_raw_output(setup):
    ens, _, sim, params, _ = setup
    feats = _quiet(spectra_features, sim.batch, params)
    assert list(feats.names) == list(ens.feature_names_in_)
    X = np.asarray(feats.X, float)
    raw = TorchMembers(ens, "cpu", torch.float64)(X)
    assert list(raw) == list(ens.members_)
    for name, est in ens.members_.items():
        assert np.allclose(raw[name], est.predict(X), rtol=0, atol=1e-5)


def test_infer_reads_files_and_loads_a_model_folder(setup, tmp_path):
    ens, path, sim, params, expected = setup
    files = write_apstar(sim.batch.select(np.arange(12)), tmp_path)
    got = _quiet(infer, files, path, params.iloc[:12], device="cpu", batch_size=5, read_threads=3)
    # apStar files store float32 flux: the same spectra, so the same table to float32 rounding of the input
    ref = expected.iloc[:12].reset_index(drop=True)
    assert (got["star_id"].to_numpy() == ref["star_id"].to_numpy()).all()
    assert np.allclose(got["feh"], ref["feh"], atol=1e-4, equal_nan=True)


def test_reading_processes_give_the_same_table_and_name_a_bad_file(setup, tmp_path):
    """Chunks read ahead in other processes: the same rows in the same order; a bad file's error names it."""
    ens, _, sim, params, _ = setup
    files = write_apstar(sim.batch.select(np.arange(9)), tmp_path)
    here = _quiet(infer, files, ens, params.iloc[:9], device="cpu", batch_size=2, read_processes=0)
    ahead = _quiet(infer, files, ens, params.iloc[:9], device="cpu", batch_size=2, read_processes=2)
    _same(here, ahead, 1e-12, 1e-12)  # the forest sums its trees in threads, in varying order
    files[6].write_bytes(files[6].read_bytes()[:5000])  # read here or in a reading process, whichever is first
    with pytest.raises(CorruptFileError, match=files[6].name):
        _quiet(infer, files, ens, params.iloc[:9], device="cpu", batch_size=2, read_processes=2)
    with pytest.raises(UsageError, match="read_processes = -1"):
        infer(files, ens, params.iloc[:9], device="cpu", batch_size=2, read_processes=-1)


def test_params_matched_per_chunk_by_a_function_give_the_same_table(setup, tmp_path):
    """fehkit predict's way: each chunk's rows found by the star ids read from its files, in any table order."""
    ens, _, sim, params, _ = setup
    files = write_apstar(sim.batch.select(np.arange(7)), tmp_path)
    ordered = _quiet(infer, files, ens, params.iloc[:7], device="cpu", batch_size=3, read_processes=0)
    table = params.iloc[:7].assign(star_id=sim.truth["star_id"].to_numpy()[:7]).iloc[::-1]

    def match(meta: pd.DataFrame) -> pd.DataFrame:
        return meta[["star_id"]].merge(table, on="star_id", how="left").drop(columns="star_id")

    matched = _quiet(infer, files, ens, match, device="cpu", batch_size=3, read_processes=0)
    _same(ordered, matched, 1e-12, 1e-12)  # the forest sums its trees in threads, in varying order
    with pytest.raises(UsageError, match="gave 1 rows for a chunk of 3 spectra"):
        _quiet(infer, files, ens, lambda meta: table.iloc[:1], device="cpu", batch_size=3, read_processes=0)


def test_chunks_read_by_warm_reading_processes_come_in_order_and_name_a_bad_file(tmp_path, monkeypatch):
    """A slow consumer lets the reading processes start: later chunks come from them, in order."""
    sim = make_benchmark(8, 3)
    files = write_apstar(sim.batch, tmp_path)
    files[-1].write_bytes(files[-1].read_bytes()[:2880 * 20])
    here, read_here = [], fehkit.infer._read_here
    monkeypatch.setattr(fehkit.infer, "_read_here", lambda paths, n: here.append(paths) or read_here(paths, n))
    got = []
    with pytest.raises(CorruptFileError, match=files[-1].name):
        for batch in _read_chunks([[f] for f in files], None, 2):
            got.append(batch.meta["file"].iloc[0])
            time.sleep(0.6)
    assert got == [str(f) for f in files[:-1]]
    assert 1 <= len(here) < len(got)  # the first chunk here (the processes were starting), later ones in them


def test_infer_on_the_real_dr17_files_flags_them(setup):
    ens, _, _, _, _ = setup
    batch = read_apogee(example_paths())
    params = pd.DataFrame({"star_id": ["2M17335483-2753043", "2M19485057+5005279"], "teff": [3677.0, 5226.0],
                           "logg": [0.53, 5.0], "vmic": [1.8, 1.0]}).set_index("star_id")
    params = params.loc[batch.meta["star_id"].astype(str)].reset_index()
    out = _quiet(infer, batch, ens, params, device="cpu")
    assert len(out) == 2 and (out["flag"] != "ok").all()
    assert out["flag"].str.contains("out_of_domain").all()


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "device 'tpu'"),
    ({"batch_size": 0}, "batch_size = 0"),
    ({"trees": "onnx"}, "trees 'onnx'"),
    ({"engine": "jax"}, "engine 'jax'"),
])
def test_bad_settings_are_clear_errors(setup, kwargs, message):
    ens, _, sim, params, _ = setup
    with pytest.raises(UsageError, match=message):
        infer(sim.batch, ens, params, **kwargs)


def test_params_must_have_one_row_per_spectrum(setup):
    ens, _, sim, params, _ = setup
    with pytest.raises(UsageError, match="params: 59 rows for 60 spectra"):
        infer(sim.batch, ens, params.iloc[:59])


@pytest.mark.skipif(torch.cuda.is_available(), reason="only without a GPU")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@cuda
def test_infer_on_cuda_agrees_with_the_cpu(setup):
    ens, _, sim, params, expected = setup
    got = _quiet(infer, sim.batch, ens, params, device="cuda")
    assert got["flag"].tolist() == expected["flag"].tolist()
    for col in MEMBER_COLUMNS:
        assert np.allclose(expected[col], got[col], atol=2e-3, equal_nan=True), col  # float32 EWs and trees
    assert np.allclose(expected["feh"], got["feh"], atol=2e-3, equal_nan=True)
    # in float64 the GPU gives the CPU's numbers to rounding
    got64 = _quiet(infer, sim.batch, ens, params, device="cuda", dtype=torch.float64)
    _same(expected, got64, 1e-5, 1e-4)


def test_predict_cli_takes_a_device(setup, tmp_path):
    ens, path, sim, params, expected = setup
    files = write_apstar(sim.batch.select(np.arange(6)), tmp_path / "spectra")
    table = params.iloc[:6].assign(file=[f.name for f in files])
    table.to_csv(tmp_path / "params.csv", index=False)
    out = tmp_path / "results.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        assert main(["predict", *map(str, files), "--model", str(path), "--params", str(tmp_path / "params.csv"),
                     "--out", str(out), "--device", "cpu"]) == 0
    got = pd.read_csv(out, comment="#")
    assert np.allclose(got["feh"], expected["feh"].iloc[:6], atol=1e-4, equal_nan=True)
    assert main(["predict", *map(str, files), "--model", str(path), "--params", str(tmp_path / "params.csv"),
                 "--out", str(out), "--device", "nonsense"]) == 2


def test_bench_reports_every_key_it_promises(setup, tmp_path, capsys):
    from fehkit.bench import run_bench

    ens, path, _, _, _ = setup
    filters = list(warnings.filters)
    res = run_bench(24, device="cpu", model=ens, baseline_n=2, cannon=False, files=True, seed=3)
    assert warnings.filters == filters  # its quiet grid-edge warnings stay inside it
    for key in ("device", "n", "stages", "end_to_end_spectra_per_s", "files_per_s", "baseline_spectra_per_s",
                "speedup_vs_baseline", "ew_agreement_mA", "peak_rss_mb", "synthetic"):
        assert key in res, key
    assert set(res["stages"]) == {"normalize", "ew", "features", "predict"}
    assert all(s["spectra_per_s"] > 0 for s in res["stages"].values())
    assert res["synthetic"] is True and res["n"] == 24 and res["device"] == "cpu"
    assert main(["bench", "--n", "12", "--device", "cpu", "--model", str(path), "--baseline-n", "1", "--no-cannon",
                 "--no-files", "--json", str(tmp_path / "bench.json")]) == 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["n"] == 12 and "files_per_s" not in saved
    assert "SYNTHETIC" in capsys.readouterr().out


def test_infer_chunks_streams_one_table_per_chunk(setup):
    from fehkit.infer import infer_chunks

    ens, _, sim, params, expected = setup
    chunks = ((sim.batch.select(np.arange(a, a + 20)), params.iloc[a:a + 20]) for a in range(0, 60, 20))
    tables = list(_quiet(lambda: list(infer_chunks(chunks, ens, device="cpu"))))
    assert [len(t) for t in tables] == [20, 20, 20]
    _same(expected, pd.concat(tables, ignore_index=True), 1e-6, 1e-6)
    with pytest.raises(UsageError, match="19 rows for a chunk of 20"):
        list(infer_chunks([(sim.batch.select(np.arange(20)), params.iloc[:19])], ens, device="cpu"))


def test_packed_trees_are_reused_until_a_refit():
    """infer packs a member's trees once per fitted model; refitting the same estimator object packs them again."""
    from sklearn.ensemble import RandomForestRegressor
    from xgboost import XGBRegressor

    from fehkit.infer import _packed_trees

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    for name, est in (("rf", RandomForestRegressor(n_estimators=5, random_state=0)),
                      ("xgb", XGBRegressor(n_estimators=5, max_depth=3))):
        est.fit(X, X[:, 0])
        first = _packed_trees(name, est)
        assert _packed_trees(name, est) is first
        est.fit(X, -X[:, 1])  # the same object, new trees
        again = _packed_trees(name, est)
        assert again is not first
        np.testing.assert_allclose(again.predict(X), est.predict(X), rtol=0, atol=1e-5)


def test_the_garbage_collector_is_paused_while_a_chunk_is_measured_and_restored_after(setup, monkeypatch):
    """Every chunk runs with the cyclic collector off; after the call (or an error) it is as it was before."""
    import gc

    import fehkit.training

    ens, _, sim, params, _ = setup
    seen = []
    through = fehkit.training.predict_spectra

    def watched(*args, **kwargs):
        seen.append(gc.isenabled())
        if len(args[1]) == 7:  # a chunk of 7 spectra fails
            raise RuntimeError("chunk failed")
        return through(*args, **kwargs)

    monkeypatch.setattr(fehkit.training, "predict_spectra", watched)
    small, rows = sim.batch.select(np.arange(20)), params.iloc[:20]
    assert gc.isenabled()
    assert len(_quiet(infer, small, ens, rows, device="cpu", batch_size=10)) == 20
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(RuntimeError, match="chunk failed"):
        _quiet(infer, small.select(np.arange(7)), ens, rows.iloc[:7], device="cpu")
    assert gc.isenabled()
    gc.disable()
    try:  # a collector the caller turned off stays off
        _quiet(infer, small, ens, rows, device="cpu", batch_size=20)
        assert not gc.isenabled()
    finally:
        gc.enable()
