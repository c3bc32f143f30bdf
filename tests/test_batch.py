"""fehkit batch / fehkit.batch.run_catalog: a catalogue of 2,000 SYNTHETIC apStar files on a 2-worker LocalCluster.

Every star once in results.parquet, a bad file as a flagged row, a worker killed mid-run, a rerun that reuses the
finished parts, the output-folder rules, bad input, and the command line. Offline: the cluster is on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from fehkit.batch import BATCH_COLUMNS, local_cluster, read_catalog, run_catalog  # noqa: E402
from fehkit.cli import main  # noqa: E402
from fehkit.errors import InputTableError, OutputError, UsageError  # noqa: E402
from fehkit.files import MARKER  # noqa: E402
from fehkit.flags import has_flag  # noqa: E402

N_BASE = 100  # simulated spectra
N_FILES = 2000  # files written from them (hard links or copies), each under its own star id
BAD = {7: "apStar-BAD-empty.fits", 1501: "apStar-BAD-text.fits"}  # catalogue row -> a file that cannot be read
CHUNK = 50


@pytest.fixture(scope="module")
def sim():
    """120 SYNTHETIC stars: the model's training set, and the spectra the catalogue's files are made of."""
    from fehkit.synth import make_benchmark

    return make_benchmark(120, seed=4)


@pytest.fixture(scope="module")
def model(sim, tmp_path_factory):
    """A small ensemble trained on the 120 stars (a model folder, as fehkit train writes it)."""
    from fehkit.models import FeHEnsemble
    from fehkit.training import reference_params, spectra_features

    feats = spectra_features(sim.batch, reference_params(sim.truth))
    ens = FeHEnsemble(n_folds=3, rf={"n_estimators": 30}, xgb={"n_estimators": 30}, dnn={"max_epochs": 40},
                      label_error=0.05).fit(feats, sim.truth["feh_ref"].to_numpy(float))
    path = tmp_path_factory.mktemp("batch_model") / "model"
    ens.save(path, card={"synthetic": True})
    return path


@pytest.fixture(scope="module")
def catalog(sim, tmp_path_factory):
    """catalog.csv (path relative to its folder, teff, logg, vmic) of 2,000 readable files and 2 bad ones.

    100 of the spectra are written once without a star id in their headers; the 2,000 files are links to them
    named apStar-2M%08d.fits, so that each reads back with its own star id (from its name).
    """
    from fehkit.io import write_apstar

    root = tmp_path_factory.mktemp("batch_catalog")
    batch = sim.batch.select(np.arange(N_BASE))
    batch.meta["star_id"] = ""
    base = write_apstar(batch, root / "base", names=[f"apStar-base-{i:03d}.fits" for i in range(N_BASE)])
    files = root / "files"
    files.mkdir()
    rows = []
    for j in range(N_FILES):
        name = f"apStar-2M{j:08d}.fits"
        try:
            os.link(base[j % N_BASE], files / name)
        except OSError:
            shutil.copyfile(base[j % N_BASE], files / name)
        t = sim.truth.iloc[j % N_BASE]
        rows.append({"path": f"files/{name}", "teff": t.teff_ref, "logg": t.logg_ref, "vmic": t.vmic_ref})
    (files / BAD[7]).write_bytes(b"")
    (files / BAD[1501]).write_text("not a spectrum")
    for at, name in sorted(BAD.items()):
        rows.insert(at, {"path": f"files/{name}", "teff": 4800.0, "logg": 1.5, "vmic": 1.8})
    table = pd.DataFrame(rows)
    table.to_csv(root / "catalog.csv", index=False)
    return root / "catalog.csv", table


@pytest.fixture(scope="module")
def client():
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def first_run(catalog, model, client, tmp_path_factory):
    path, _ = catalog
    out = tmp_path_factory.mktemp("batch_runs") / "run"
    return run_catalog(path, model, client, out=out, chunk_size=CHUNK, progress=False)


def expected_ids(table):
    return [Path(p).name.removeprefix("apStar-").removesuffix(".fits") for p in table["path"]]


def check_complete(out, table, n_good=N_FILES):
    res = pd.read_parquet(out / "results.parquet")
    assert list(res.columns) == list(BATCH_COLUMNS)
    assert res["path"].tolist() == table["path"].tolist()  # every file once, in the catalogue's order
    assert res["star_id"].tolist() == expected_ids(table)
    assert res["star_id"].is_unique
    good = res["error"] == ""
    assert good.sum() == n_good
    assert res.loc[good, "flag"].notna().all() and (res.loc[good, "n_lines"] > 0).any()
    assert np.isfinite(res.loc[good & ~has_flag(res["flag"], "upper_limit"), "feh"]).all()
    return res


def test_every_star_once_and_bad_files_are_flagged_rows(first_run, catalog):
    _, table = catalog
    out = first_run.out
    res = check_complete(out, table)
    for at, name in BAD.items():
        row = res.iloc[at]
        assert row["path"] == f"files/{name}" and row["star_id"] == Path(name).stem.removeprefix("apStar-")
        assert row["flag"] == "no_usable_lines" and np.isnan(row["feh"]) and row["n_lines"] == 0
        assert row["error"].startswith("cannot read the file: ") and row["error"] == row["flag_reason"]
    assert "empty" in res.iloc[7]["error"] and "FITS" in res.iloc[1501]["error"]
    # the copies of one simulated spectrum get the same [Fe/H]: the chunks are independent of the worker
    feh = res.loc[res["error"] == "", "feh"].to_numpy()
    assert np.allclose(feh[:N_BASE], feh[N_BASE:2 * N_BASE], equal_nan=True)
    n_chunks = -(-len(table) // CHUNK)
    assert sorted(p.name for p in (out / "parts").iterdir()) == [f"part-{k:05d}.parquet" for k in range(n_chunks)]
    info = json.loads((out / "run.json").read_text())
    assert info["n"] == len(table) and info["n_chunks"] == n_chunks and info["chunks_computed"] == n_chunks
    assert info["n_errors"] == 2 and info["workers"] == 2 and info["spectra_per_s_per_worker"] > 0
    assert json.loads((out / MARKER).read_text())["kind"] == "batch"


def test_a_worker_killed_mid_run_still_gives_the_whole_catalogue(catalog, model, client, tmp_path):
    path, table = catalog
    table = table.iloc[:600].assign(path=lambda t: [str(path.parent / p) for p in t["path"]])
    out = tmp_path / "run"
    victim = next(iter(client.run(os.getpid).values()))
    done, killed = threading.Event(), []

    def kill_after_first_parts():
        while not done.is_set():
            parts = list((out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []
            if len(parts) >= 2:
                os.kill(victim, signal.SIGKILL)
                killed.append(len(parts))
                return
            time.sleep(0.02)

    thread = threading.Thread(target=kill_after_first_parts)
    thread.start()
    try:
        run = run_catalog(table, model, client, out=out, chunk_size=25, progress=False)
    finally:
        done.set()
        thread.join()
    assert killed and killed[0] < run.info["n_chunks"]  # the kill came mid-run
    assert victim not in client.run(os.getpid).values()
    check_complete(out, table, n_good=599)  # row 7 is a bad file
    assert not list((out / "parts").glob(".*.tmp"))  # a part the killed worker left half-written is gone


def test_a_rerun_reuses_the_finished_parts(first_run, catalog, model, client):
    path, table = catalog
    out, parts = first_run.out, first_run.out / "parts"
    (out / "results.parquet").unlink()
    (parts / "part-00003.parquet").unlink()
    (parts / "part-00017.parquet").unlink()
    data = (parts / "part-00030.parquet").read_bytes()
    (parts / "part-00030.parquet").write_bytes(data[: len(data) // 2])  # cut short: recomputed, not trusted
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    # resumed through the scheduler's address, without --overwrite: a folder fehkit batch wrote
    run = run_catalog(path, model, client.scheduler.address, out=out, chunk_size=CHUNK, progress=False)
    assert run.info["chunks_computed"] == 3 and run.info["chunks_reused"] == run.info["n_chunks"] - 3
    assert run.info["spectra_computed"] == 3 * CHUNK
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert {k for k in after if after[k] != before.get(k)} == {"part-00003.parquet", "part-00017.parquet",
                                                                "part-00030.parquet"}
    res = check_complete(out, table)
    pd.testing.assert_frame_equal(res, first_run.results)


def test_changed_parameters_recompute_only_their_chunk(catalog, model, client, tmp_path):
    path, table = catalog
    small = table.iloc[20:80].assign(path=[str(path.parent / p) for p in table["path"][20:80]])
    out = tmp_path / "run"
    out.mkdir()  # an empty folder is used
    run_catalog(small, model, client, out=out, chunk_size=20, progress=False)
    changed = small.copy()
    changed.loc[45, "teff"] += 50
    run = run_catalog(changed, model, client, out=out, chunk_size=20, progress=False)
    assert run.info["chunks_computed"] == 1 and run.info["chunks_reused"] == 2
    run = run_catalog(changed, model, client, out=out, chunk_size=20, progress=False, overwrite=True)
    assert run.info["chunks_computed"] == 3  # overwrite: starts afresh


def test_a_folder_fehkit_did_not_write_is_refused(catalog, model, tmp_path):
    path, _ = catalog
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not written by fehkit"):
            run_catalog(path, model, out=mine, overwrite=overwrite, progress=False)
    assert (mine / "notes.txt").read_text() == "my notes" and sorted(os.listdir(mine)) == ["notes.txt"]
    with pytest.raises(OutputError, match="pass --overwrite"):  # another kind of fehkit folder: the model
        run_catalog(path, model, out=model, progress=False)


def test_bad_input_is_named(catalog, tmp_path):
    path, table = catalog
    with pytest.raises(InputTableError, match="no path column"):
        read_catalog(table.rename(columns={"path": "where"}))
    bad = table.iloc[:5].astype({"teff": object})
    bad.loc[3, "teff"] = "hot"
    with pytest.raises(InputTableError, match=r"'teff' holds 'hot' for files/apStar-2M00000003.fits \(row 4\)"):
        read_catalog(bad)
    with pytest.raises(InputTableError, match="listed 2 times"):
        read_catalog(pd.concat([table.iloc[:3], table.iloc[:1]]))
    with pytest.raises(InputTableError, match="has teff = 100000"):
        read_catalog(table.iloc[:3].assign(teff=1e5))
    with pytest.raises(UsageError, match="no stellar parameters"):
        read_catalog(["a.fits", "b.fits"])
    with pytest.raises(InputTableError, match="not found"):
        read_catalog(tmp_path / "missing.csv")
    cat, by_star = read_catalog(path)
    assert cat["abspath"].iloc[0] == str(path.parent / table["path"].iloc[0]) and by_star is None


def test_cli_files_with_params_on_its_own_local_cluster(catalog, model, tmp_path, capsys):
    path, table = catalog
    files = [str(path.parent / p) for p in table["path"][:30]]
    params = table.iloc[:30].assign(star_id=expected_ids(table.iloc[:30]))[["star_id", "teff", "logg", "vmic"]]
    params = params.drop(index=[7])  # the bad file: no parameters needed
    params.to_csv(tmp_path / "params.csv", index=False)
    out = tmp_path / "out"
    assert main(["batch", *files, "--model", str(model), "--params", str(tmp_path / "params.csv"), "--out", str(out),
                 "--workers", "1", "--chunk-size", "8", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "results.parquet: 30 spectra" in captured.out
    assert "1 file(s) could not be predicted" in captured.err and BAD[7] in captured.err
    assert "trained on SYNTHETIC spectra" in captured.err  # as fehkit predict says it
    res = pd.read_parquet(out / "results.parquet")
    assert res["path"].tolist() == files and (res["error"] != "").sum() == 1
    info = json.loads((out / "run.json").read_text())
    assert info["workers"] == 1 and info["command"].startswith("fehkit batch ")
    assert info["model_synthetic"] is True


def test_cli_table_on_a_scheduler_and_its_errors(catalog, model, client, tmp_path, capsys):
    path, table = catalog
    small = tmp_path / "small.csv"
    table.iloc[:40].assign(path=[str(path.parent / p) for p in table["path"][:40]]).to_csv(small, index=False)
    out = tmp_path / "out"
    args = ["batch", str(small), "--model", str(model), "--out", str(out), "--chunk-size", "16", "--quiet"]
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    assert len(pd.read_parquet(out / "results.parquet")) == 40
    capsys.readouterr()
    assert main(["batch", str(tmp_path / "none.csv"), "--model", str(model), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fehkit batch: error: ") and "none.csv: not found" in err
    assert not (tmp_path / "o2").exists()
    assert main(["batch", str(small), "--model", str(tmp_path), "--out", str(tmp_path / "o3")]) == 2
    assert str(tmp_path) in capsys.readouterr().err and not (tmp_path / "o3").exists()
    assert main([*args[:-1], "--chunk-size", "0"]) == 2
    assert "--chunk-size" in capsys.readouterr().err


def test_parameters_come_from_the_table_or_a_parameter_table(catalog, tmp_path):
    path, table = catalog
    files = [str(path.parent / p) for p in table["path"][:4]]
    by_file = pd.DataFrame({"file": [Path(f).name for f in files], "teff": [4500.0, 4600, 4700, 4800],
                            "logg": 1.0, "vmic": 1.5})
    cat, by_star = read_catalog(files, by_file)  # matched on the file name, before any work
    assert by_star is None and cat["teff"].tolist() == [4500.0, 4600, 4700, 4800]
    assert cat["path"].tolist() == files and np.isnan(cat["alpha_fe"]).all()
    by_id = by_file.rename(columns={"file": "star_id"}).assign(star_id=expected_ids(table.iloc[:4]))
    cat, by_star = read_catalog(files, by_id)  # star ids are in the headers: matched in the workers
    assert np.isnan(cat["teff"]).all() and by_star.loc[expected_ids(table.iloc[:4])[2], "teff"] == 4700
    with_ids = table.iloc[:4].drop(columns=["teff", "logg", "vmic"]).assign(star_id=expected_ids(table.iloc[:4]))
    with_ids.to_parquet(path.parent / "ids.parquet")
    cat, by_star = read_catalog(path.parent / "ids.parquet", by_id)  # the table names its stars: matched here
    assert by_star is None and cat["teff"].tolist() == [4500.0, 4600, 4700, 4800]
    partial = table.iloc[:4].copy()
    partial.loc[1, "teff"] = np.nan  # an empty cell: filled from the parameter table
    by_file.to_csv(tmp_path / "p.csv", index=False)
    cat, _ = read_catalog(partial, tmp_path / "p.csv")
    assert cat["teff"].tolist() == [partial["teff"][0], 4600.0, partial["teff"][2], partial["teff"][3]]
    with pytest.raises(InputTableError, match="star_id 2M00000001 has 2 rows"):
        read_catalog(files, pd.concat([by_id, by_id.iloc[[1]]]))
