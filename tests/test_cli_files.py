"""What the commands write: folders written whole, replaced only when fehkit wrote them, and CSV precision.

Nothing lost (a user's folder is never replaced), nothing mixed (an interrupted run leaves the old result or the new
one, never new metrics beside an old report). Cheap: the demo's run is replaced by a stub where only the writing
is under test.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import fehkit.benchmark
import fehkit.report.results
from fehkit import __version__
from fehkit.benchmark import write_outputs
from fehkit.cli import main
from fehkit.errors import OutputError
from fehkit.files import MARKER, atomic_folder, read_marker
from fehkit.lines import load_linelist


class _StubEnsemble:
    def save(self, path, card=None, overwrite=False):
        path.mkdir()
        (path / "card.json").write_text(json.dumps(card))


def stub_run(tag: str) -> SimpleNamespace:
    """What write_outputs reads of a BenchmarkRun, without running the benchmark."""
    truth = pd.DataFrame({"split": ["train", "train", "test"], "feh_ref": [-2.0, -2.5, -3.0]})
    metrics = {"synthetic": True, "seed": 5, "label": "feh_ref", "n_test": 1, "n_upper_limits": 0, "n_headline": 1,
               "headline_subset": "all", "models": {}, "coverage_68": 0.68, "weights": {}, "targets": [], "tag": tag}
    return SimpleNamespace(
        metrics=metrics, predictions=pd.DataFrame({"star_id": ["SYN-1"], "feh": [-3.123456789], "tag": [tag]}),
        features=SimpleNamespace(select=lambda mask: SimpleNamespace(X=np.zeros((int(np.sum(mask)), 2)))),
        sim=SimpleNamespace(truth=truth), ensemble=_StubEnsemble())


def _fake_report(metrics, predictions, path):
    path.write_text(f"report {metrics['tag']}")


@pytest.fixture
def quick_report(monkeypatch):
    monkeypatch.setattr(fehkit.report.results, "feh_report", _fake_report)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_outputs_writes_one_marked_folder_with_seed_command_and_version(tmp_path, quick_report):
    out = write_outputs(stub_run("a"), tmp_path / "demo", command="fehkit demo --out demo --seed 5")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "metrics.json", "model", "predictions.csv", "report.html"]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["seed"], m["command"], m["fehkit_version"]) == (5, "fehkit demo --out demo --seed 5", __version__)
    assert read_marker(out)["kind"] == "demo"
    text = (out / "predictions.csv").read_text()
    assert text.startswith("# SYNTHETIC") and "-3.12346" in text


@pytest.mark.parametrize("where", ["report", "model", "interrupt"])
def test_a_failure_while_writing_leaves_the_old_folder_untouched(tmp_path, quick_report, monkeypatch, where):
    out = write_outputs(stub_run("old"), tmp_path / "demo")
    before = _snapshot(out)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt if where == "interrupt" else RuntimeError("disk on fire")

    if where == "model":
        monkeypatch.setattr(_StubEnsemble, "save", boom)
    else:
        monkeypatch.setattr(fehkit.report.results, "feh_report", boom)
    with pytest.raises(KeyboardInterrupt if where == "interrupt" else RuntimeError):
        write_outputs(stub_run("new"), out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary folder left behind"


def _demo(monkeypatch, tmp_path, tag, *extra):
    monkeypatch.setattr(fehkit.benchmark, "run_benchmark", lambda *a, **k: stub_run(tag))
    return main(["demo", "--out", str(tmp_path / "demo"), "--no-cannon", "--quiet", *extra])


def test_demo_replaces_the_folder_it_wrote_without_overwrite(tmp_path, quick_report, monkeypatch, capsys):
    assert _demo(monkeypatch, tmp_path, "first") == 0
    assert _demo(monkeypatch, tmp_path, "second", "--seed", "7") == 0
    out = tmp_path / "demo"
    assert (out / "report.html").read_text() == "report second"
    m = json.loads((out / "metrics.json").read_text())
    assert m["command"] == f"fehkit demo --out {out} --no-cannon --quiet --seed 7"
    assert read_marker(out)["command"] == m["command"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


@pytest.mark.parametrize("kind", ["inspect", "benchmark", "model"])
def test_demo_needs_overwrite_for_a_folder_another_command_wrote(tmp_path, quick_report, monkeypatch, capsys, kind):
    with atomic_folder(tmp_path / "demo", kind=kind) as tmp:
        (tmp / "summary.csv").write_text("star_id\n")
    monkeypatch.setattr(fehkit.benchmark, "run_benchmark", lambda *a, **k: pytest.fail("work started"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-cannon"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "demo" / "summary.csv").exists()
    assert _demo(monkeypatch, tmp_path, "new", "--overwrite") == 0
    assert not (tmp_path / "demo" / "summary.csv").exists()


def test_demo_never_replaces_a_folder_fehkit_did_not_write(tmp_path, monkeypatch, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "metrics.json").write_text("{}")  # looks like a demo folder, but has no marker
    monkeypatch.setattr(fehkit.benchmark, "run_benchmark", lambda *a, **k: pytest.fail("work started"))
    for extra in ([], ["--overwrite"]):
        assert main(["demo", "--out", str(tmp_path / "demo"), *extra]) == 2
        assert str(tmp_path / "demo") in capsys.readouterr().err
    assert (tmp_path / "demo" / "metrics.json").read_text() == "{}"


def test_simulate_overwrite_with_fewer_stars_leaves_no_stale_spectra(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["simulate", "--n", "5", "--seed", "1", "--no-html", "--out", str(out)]) == 0
    assert len(list(out.glob("apStar-*.fits"))) == 5
    assert main(["simulate", "--n", "2", "--seed", "2", "--no-html", "--out", str(out)]) == 2  # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["simulate", "--n", "2", "--seed", "2", "--no-html", "--out", str(out), "--overwrite"]) == 0
    truth = pd.read_csv(out / "truth.csv", comment="#")
    assert sorted(p.name for p in out.glob("apStar-*.fits")) == sorted(truth.file)
    assert len(truth) == 2
    marker = read_marker(out)
    assert marker["kind"] == "benchmark" and marker["seed"] == 2 and "--overwrite" in marker["command"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]


def test_simulate_may_fill_an_empty_folder_with_overwrite(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    assert main(["simulate", "--n", "2", "--no-html", "--out", str(out)]) == 2
    assert main(["simulate", "--n", "2", "--no-html", "--out", str(out), "--overwrite"]) == 0
    assert (out / "truth.csv").is_file() and (out / MARKER).is_file()


def test_inspect_replaces_only_its_own_kind_of_folder_with_overwrite(tmp_path, capsys, examples):
    out = tmp_path / "inspect"
    assert main(["inspect", str(examples[1]), "--no-html", "--out", str(out)]) == 0
    assert main(["inspect", str(examples[0]), "--no-html", "--out", str(out)]) == 2
    assert main(["inspect", str(examples[0]), "--no-html", "--out", str(out), "--overwrite"]) == 0
    assert pd.read_csv(out / "summary.csv")["star_id"].tolist() == ["2M17335483-2753043"]
    assert read_marker(out)["kind"] == "inspect"


def test_atomic_folder_refuses_a_user_folder_even_with_overwrite(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not written by fehkit"), \
            atomic_folder(tmp_path / "mine", kind="demo", overwrite=True):
        pytest.fail("must not get here")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def test_ew_line_wave_reads_back_to_the_line_list(tmp_path, capsys, examples):
    out = tmp_path / "ew.csv"
    assert main(["ew", str(examples[1]), "--mc-draws", "0", "--out", str(out)]) == 0
    text = out.read_text()
    assert "15211.682," in text  # Fe I 15211.682 A, not 15212
    table = pd.read_csv(out)
    lines = load_linelist()
    np.testing.assert_array_equal(table["line_wave"].to_numpy(), lines["wave_vac"].to_numpy(float))
    assert (np.round(table["line_wave"], 3) == table["line_wave"]).all()
    ok = table["flag"] == "ok"
    assert ok.any() and (table.loc[ok, "ew_mA"] > 0).all()
    # the widths keep 0.001 mA (6 significant digits below 1000 mA)
    written = pd.read_csv(out)["ew_mA"].dropna().astype(str)
    assert written.map(lambda v: len(v.replace("-", "").replace(".", "").lstrip("0"))).max() >= 5


def test_truth_ew_line_wave_matches_the_line_list(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["simulate", "--n", "2", "--no-html", "--out", str(out)]) == 0
    ew = pd.read_csv(out / "truth_ew.csv", comment="#")
    assert set(ew["line_wave"]) == set(load_linelist()["wave_vac"].astype(float))


def test_an_interrupted_demo_keeps_the_old_results(tmp_path, quick_report, monkeypatch, capsys):
    assert _demo(monkeypatch, tmp_path, "old") == 0
    before = _snapshot(tmp_path / "demo")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fehkit.report.results, "feh_report", interrupt)  # Ctrl-C while the report is written
    capsys.readouterr()
    assert _demo(monkeypatch, tmp_path, "new") == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "fehkit demo: error: interrupted; outputs are left as they were before this run"]
    assert _snapshot(tmp_path / "demo") == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
