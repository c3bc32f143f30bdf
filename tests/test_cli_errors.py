"""Bad input to every `fehkit` subcommand: exit status 2, one line naming the input, no traceback, no work done.

Each case fails before any spectrum is measured or any model trained, so the whole module runs in seconds.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from fehkit.cli import main, warning_lines
from fehkit.errors import FehkitWarning
from fehkit.files import MARKER

REPO = Path(__file__).parents[1]


@pytest.fixture
def inputs(tmp_path):
    """Small bad inputs: a plain file, a folder fehkit did not write, tables lacking columns, garbage bytes."""
    d = tmp_path
    (d / "table.csv").write_text("a,b\n1,2\n")
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("my own notes")
    (d / "empty").mkdir()
    (d / "garbage.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20)
    (d / "params_no_vmic.csv").write_text("star_id,teff,logg\n2M17335483-2753043,4800,1.5\n")
    (d / "params_ok.csv").write_text("star_id,teff,logg,vmic\n2M17335483-2753043,4800,1.5,1.8\n")
    (d / "params_text.csv").write_text("star_id,teff,logg,vmic\n2M17335483-2753043,hot,1.5,1.8\n")
    (d / "train_no_label.csv").write_text("file,teff,logg,vmic\na.fits,4800,1.5,1.8\n")
    (d / "train_text.csv").write_text("file,feh_ref,teff,logg,vmic\na.fits,-3.1,warm,1.5,1.8\n")
    (d / "train_split.csv").write_text("file,feh_ref,teff,logg,vmic,split\na.fits,-3.1,4800,1.5,1.8,holdout\n")
    (d / "bench_no_snr").mkdir()
    (d / "bench_no_snr" / "truth.csv").write_text("file,feh,teff,logg,vmic\na.fits,-3,4800,1.5,1.8\n")
    (d / "bench_ok").mkdir()
    (d / "bench_ok" / "truth.csv").write_text("file,feh,teff,logg,vmic,snr,teff_ref,logg_ref,vmic_ref,feh_ref\n"
                                              "a.fits,-3,4800,1.5,1.8,50,4800,1.5,1.8,-3\n")
    (d / "model_empty").mkdir()
    return d


# Each case: id -> (argv with {d} for the inputs folder, words the error line names)
CASES = {
    # inspect
    "inspect: missing file": (["inspect", "{d}/nope.fits", "--out", "{d}/o"], ["nope.fits", "no such file"]),
    "inspect: out is a file": (["inspect", "--examples", "--out", "{d}/table.csv"], ["table.csv", "is a file"]),
    "inspect: out exists": (["inspect", "--examples", "--out", "{d}/empty"], ["empty", "--overwrite"]),
    "inspect: out is a user's folder": (["inspect", "--examples", "--out", "{d}/mine", "--overwrite"],
                                        ["mine", "not written by fehkit"]),
    "inspect: negative max-plots": (["inspect", "--examples", "--max-plots", "-3"], ["--max-plots", "-3", ">= 0"]),
    "inspect: no input": (["inspect", "--out", "{d}/o"], ["expected FILE arguments or --examples"]),
    "inspect: garbage file": (["inspect", "{d}/garbage.csv", "--out", "{d}/o"], ["garbage.csv", "expected"]),
    # ew
    "ew: out is a folder": (["ew", "--examples", "--out", "{d}/mine"], ["mine", "is a folder"]),
    "ew: out inside a file": (["ew", "--examples", "--out", "{d}/table.csv/ew.csv"], ["table.csv", "is a file"]),
    "ew: params lack every column": (["ew", "--examples", "--params", "{d}/table.csv"],
                                     ["table.csv", "no column teff, logg, vmic or feh"]),
    "ew: params unreadable": (["ew", "--examples", "--params", "{d}/garbage.csv"], ["garbage.csv", "cannot read"]),
    "ew: params missing": (["ew", "--examples", "--params", "{d}/nope.csv"], ["nope.csv", "No such file"]),
    "ew: params not numbers": (["ew", "--examples", "--params", "{d}/params_text.csv"], ["'teff'", "'hot'"]),
    "ew: line list without columns": (["ew", "--examples", "--linelist", "{d}/table.csv"], ["table.csv", "wave_vac"]),
    "ew: negative mc draws": (["ew", "--examples", "--mc-draws", "-1"], ["--mc-draws", ">= 0"]),
    "ew: zero rv tolerance": (["ew", "--examples", "--rv-tolerance", "0"], ["--rv-tolerance", "> 0"]),
    "ew: nan rv tolerance": (["ew", "--examples", "--rv-tolerance", "nan"], ["--rv-tolerance", "> 0"]),
    "ew: unknown torch device": (["ew", "--examples", "--backend", "torch", "--device", "gpu7", "--out", "{d}/e.csv"],
                                 ["--device", "gpu7"]),
    # simulate
    "simulate: negative seed": (["simulate", "--n", "3", "--seed", "-1", "--out", "{d}/s"], ["--seed", "-1"]),
    "simulate: no stars": (["simulate", "--n", "0", "--out", "{d}/s"], ["--n", ">= 1"]),
    "simulate: not a number": (["simulate", "--n", "ten", "--out", "{d}/s"], ["--n", "'ten'", "whole number"]),
    "simulate: out is a file": (["simulate", "--n", "3", "--out", "{d}/table.csv"], ["table.csv", "is a file"]),
    "simulate: out exists": (["simulate", "--n", "3", "--out", "{d}/mine"], ["mine", "--overwrite"]),
    "simulate: out is a user's folder": (["simulate", "--n", "3", "--out", "{d}/mine", "--overwrite"],
                                         ["mine", "not written by fehkit"]),
    "simulate: bad split": (["simulate", "--n", "3", "--split", "0.5", "0.5", "-1", "--out", "{d}/s"],
                            ["--split", ">= 0"]),
    # demo
    "demo: too few stars": (["demo", "--n-stars", "10", "--out", "{d}/d"], ["--n-stars 10", "at least 50"]),
    "demo: negative seed": (["demo", "--seed", "-1", "--out", "{d}/d"], ["--seed", "-1"]),
    "demo: negative errors": (["demo", "--param-errors", "-1", "0.2", "0.2", "--out", "{d}/d"], ["--param-errors"]),
    "demo: out is a file": (["demo", "--out", "{d}/table.csv"], ["table.csv", "is a file"]),
    "demo: out is a user's folder": (["demo", "--out", "{d}/mine", "--overwrite"], ["mine", "not written by fehkit"]),
    "demo: out is the current folder": (["demo", "--out", ".", "--overwrite"], ["current folder"]),
    # train
    "train: out is the current folder": (["train", "--data", "{d}/table.csv", "--out", ".", "--overwrite"],
                                         ["current folder"]),
    "train: out exists": (["train", "--data", "{d}/table.csv", "--out", "{d}/empty"], ["empty", "--overwrite"]),
    "train: out is a user's folder": (["train", "--data", "{d}/table.csv", "--out", "{d}/mine", "--overwrite"],
                                      ["mine", "not written by fehkit"]),
    "train: data missing": (["train", "--data", "{d}/nope", "--out", "{d}/m"], ["nope", "not found"]),
    "train: folder without truth": (["train", "--data", "{d}/empty", "--out", "{d}/m"], ["empty", "truth.csv"]),
    "train: table without labels": (["train", "--data", "{d}/train_no_label.csv", "--out", "{d}/m"], ["feh_ref"]),
    "train: table with text": (["train", "--data", "{d}/train_text.csv", "--out", "{d}/m"],
                               ["train_text.csv", "'teff'", "'warm'", "a.fits"]),
    "train: unknown split": (["train", "--data", "{d}/train_split.csv", "--out", "{d}/m"], ["holdout", "train, val"]),
    "train: table unreadable": (["train", "--data", "{d}/garbage.csv", "--out", "{d}/m"],
                                ["garbage.csv", "cannot read"]),
    "train: grid not JSON": (["train", "--data", "{d}/table.csv", "--out", "{d}/m", "--grid-search", "{rf"],
                             ["--grid-search", "not valid JSON"]),
    "train: negative seed": (["train", "--data", "{d}/table.csv", "--out", "{d}/m", "--seed", "-5"], ["--seed"]),
    "train: no out": (["train", "--data", "{d}/table.csv"], ["--out", "required"]),
    # predict
    "predict: out is a folder": (["predict", "{d}/a.fits", "--model", "{d}/m", "--params", "{d}/table.csv", "--out",
                                  "{d}/mine"], ["mine", "is a folder"]),
    "predict: params lack vmic": (["predict", "{d}/a.fits", "--model", "{d}/m", "--params",
                                   "{d}/params_no_vmic.csv", "--out", "{d}/r.csv"], ["params_no_vmic.csv", "vmic"]),
    "predict: params not numbers": (["predict", "{d}/a.fits", "--model", "{d}/m", "--params", "{d}/params_text.csv",
                                     "--out", "{d}/r.csv"], ["'teff'", "'hot'"]),
    "predict: params unreadable": (["predict", "{d}/a.fits", "--model", "{d}/m", "--params", "{d}/garbage.csv",
                                    "--out", "{d}/r.csv"], ["garbage.csv", "cannot read"]),
    "predict: not a model folder": (["predict", "{d}/a.fits", "--model", "{d}/model_empty", "--params",
                                     "{d}/params_ok.csv", "--out", "{d}/r.csv"], ["model_empty", "card.json"]),
    # evaluate
    "evaluate: table without labels": (["evaluate", "--model", "{d}/m", "--data", "{d}/table.csv", "--out",
                                        "{d}/e"], ["table.csv", "feh_ref"]),
    "evaluate: folder without truth": (["evaluate", "--model", "{d}/m", "--data", "{d}/empty", "--out",
                                        "{d}/m.json"], ["empty", "truth.csv"]),
    "evaluate: truth without snr": (["evaluate", "--model", "{d}/m", "--data", "{d}/bench_no_snr", "--out",
                                     "{d}/m.json"], ["truth.csv", "snr"]),
    "evaluate: not a model folder": (["evaluate", "--model", "{d}/model_empty", "--data", "{d}/bench_ok",
                                      "--out", "{d}/m.json"], ["model_empty", "card.json"]),
    "evaluate: out is a folder": (["evaluate", "--model", "{d}/m", "--data", "{d}/empty", "--out", "{d}/mine"],
                                  ["mine", "is a folder"]),
    # validate
    "validate: table without labels": (["validate", "--data", "{d}/table.csv", "--out", "{d}/v"],
                                       ["table.csv", "feh_ref"]),
    "validate: out exists": (["validate", "--data", "{d}/table.csv", "--out", "{d}/empty"], ["empty", "--overwrite"]),
    # fetch
    "fetch: unknown product": (["fetch", "product", "no_such_product"], ["no_such_product", "expected one of"]),
    "fetch: bad field": (["fetch", "product", "apstar_dr17", "--field", "telescope"], ["--field", "KEY=VALUE"]),
    "fetch: missing manifest": (["fetch", "list", "--manifest", "{d}/nope.yaml"], ["nope.yaml", "no such file"]),
    "fetch: table missing": (["fetch", "spectra", "{d}/nope.csv"], ["nope.csv", "no such file"]),
    "fetch: table without columns": (["fetch", "spectra", "{d}/table.csv", "--cache", "{d}/cache"],
                                     ["TELESCOPE", "FIELD", "FILE"]),
    "fetch: out is a folder": (["fetch", "spectra", "{d}/table.csv", "--out", "{d}/mine"], ["mine", "is a folder"]),
    "fetch: no workers": (["fetch", "spectra", "{d}/table.csv", "--workers", "0"], ["--workers", ">= 1"]),
    "fetch: negative retries": (["fetch", "list", "--retries", "-1"], ["--retries", ">= 0"]),
}


def run_cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, out, err, command, words):
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"fehkit {command}")
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    argv, words = CASES[case]
    argv = [a.replace("{d}", str(inputs)) for a in argv]
    before = sorted(p.name for p in inputs.iterdir())
    code, out, err = run_cli(capsys, argv)
    assert_one_error_line(code, out, err, argv[0], [w.replace("{d}", str(inputs)) for w in words])
    assert sorted(p.name for p in inputs.iterdir()) == before, "nothing written, no temporary folder left"
    assert (inputs / "mine" / "notes.txt").read_text() == "my own notes"


def test_every_subcommand_is_covered():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands == {"inspect", "ew", "simulate", "demo", "train", "predict", "evaluate", "validate", "fetch"}


def test_params_that_match_no_spectrum_name_the_first(tmp_path, capsys, monkeypatch, examples):
    """predict: a parameter CSV for other stars is refused before the model is used."""
    from fehkit.models import FeHEnsemble

    monkeypatch.setattr(FeHEnsemble, "load", classmethod(lambda cls, path, **kw: object()))
    params = tmp_path / "p.csv"
    params.write_text("star_id,teff,logg,vmic\n2M00000000+0000000,4800,1.5,1.8\n")
    code, out, err = run_cli(capsys, ["predict", *map(str, examples), "--model", str(tmp_path), "--params",
                                      str(params), "--out", str(tmp_path / "r.csv")])
    line = assert_one_error_line(code, out, err, "predict", ["p.csv", "no teff for 2 of 2 spectra",
                                                             "2M17335483-2753043", "star_id"])
    assert "expected a row with teff, logg, vmic for every spectrum" in line
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_parent_is_refused_before_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for argv in (["simulate", "--n", "3", "--out", str(ro / "s")], ["ew", "--examples", "--out", str(ro / "e.csv")],
                     ["demo", "--out", str(ro / "d")], ["train", "--data", str(tmp_path), "--out", str(ro / "m")]):
            code, out, err = run_cli(capsys, argv)
            assert_one_error_line(code, out, err, argv[0], ["permission denied"])
    finally:
        ro.chmod(0o755)


def test_an_unwritable_location_is_refused_before_work(tmp_path, capsys, monkeypatch):
    """The same check as above where the tests run as root: os.access says the folder cannot be written."""
    import fehkit.files
    import fehkit.synth

    real_access = os.access
    monkeypatch.setattr(fehkit.files.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else
                        real_access(p, mode))
    monkeypatch.setattr(fehkit.synth, "make_benchmark", lambda *a, **k: pytest.fail("work started"))
    for argv in (["simulate", "--n", "3", "--out", str(tmp_path / "s")],
                 ["ew", "--examples", "--out", str(tmp_path / "e.csv")],
                 ["predict", str(tmp_path / "a.fits"), "--model", "m", "--params", "p.csv", "--out",
                  str(tmp_path / "r.csv")],
                 ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]):
        code, out, err = run_cli(capsys, argv)
        assert_one_error_line(code, out, err, argv[0], [str(tmp_path), "permission denied"])


def test_train_into_the_current_folder_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("file,feh_ref,teff,logg,vmic\na.fits,-3,4800,1.5,1.8\n")
    code, out, err = run_cli(capsys, ["train", "--data", "t.csv", "--out", ".", "--overwrite"])
    assert_one_error_line(code, out, err, "train", ["current folder"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
    assert not any(p.name.startswith("..old") for p in tmp_path.parent.iterdir())


def test_an_os_error_while_working_is_one_line(tmp_path, capsys, monkeypatch):
    """A failure the checks cannot foresee (the disk fills up) is still one line naming the file."""
    import fehkit.synth

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "s" / "truth.csv"))

    monkeypatch.setattr(fehkit.synth, "write_benchmark", full_disk)
    code, out, err = run_cli(capsys, ["simulate", "--n", "2", "--no-html", "--out", str(tmp_path / "s")])
    assert_one_error_line(code, out, err, "simulate", ["truth.csv", "No space left on device"])


def outside_references(text):
    """What a text cites that the repository does not hold.

    A document named ``*.md`` with no file of that name in the repository, a path that leaves it (``../``), or an
    issue number: a user reading the help has none of them.
    """
    held = {q.name for folder in (REPO, REPO / "docs", REPO / "fehkit") for q in folder.rglob("*.md")
            if ".venv" not in q.parts}
    found = [name for name in re.findall(r"[\w./-]+\.md\b", text) if Path(name).name not in held]
    found += re.findall(r"\.\./\S+", text) + re.findall(r"\bissue\s*#?\d+", text, flags=re.IGNORECASE)
    return found


def test_outside_references_are_found():
    assert outside_references("see docs/cli.md and fehkit/physics/README.md") == []
    assert outside_references("see NOTES.md, ../notes/x and issue #5") == ["NOTES.md", "../notes/x", "issue #5"]


def test_help_of_every_subcommand_names_no_internal_document(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    for command in ("inspect", "ew", "simulate", "demo", "train", "predict", "evaluate", "validate", "fetch"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert outside_references(text) == [], command
    import fehkit.cli

    assert outside_references(fehkit.cli.__doc__) == []


def test_demo_help_documents_its_replace_rule(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A folder an earlier fehkit demo wrote is replaced without --overwrite" in text
    assert MARKER in text


def test_warnings_are_grouped_by_kind_with_a_count():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (1, 2, 2):
            warnings.warn(f"curve of growth: clipped to the grid edge: teff: {n} value(s) outside 3900..6600",
                          FehkitWarning, stacklevel=1)
        warnings.warn("background: clipped to the grid edge: logg: 1 value(s) outside 0..5", FehkitWarning,
                      stacklevel=1)
        for _ in range(2):
            warnings.warn("skipped a.fits: empty file", FehkitWarning, stacklevel=1)
        warnings.warn("few members", UserWarning, stacklevel=1)
    lines = warning_lines("fehkit predict", caught, skip=["skipped a.fits: empty file"])
    assert lines == [
        "fehkit predict: warning (3 times, first shown): curve of growth: clipped to the grid edge: teff: 1 value(s) "
        "outside 3900..6600",
        "fehkit predict: warning: background: clipped to the grid edge: logg: 1 value(s) outside 0..5",
        "fehkit predict: warning: UserWarning: few members",
    ]


def test_warnings_of_a_failing_command_come_before_its_error(tmp_path, capsys, monkeypatch):
    import fehkit.synth

    def warn_then_fail(*args, **kwargs):
        warnings.warn("curve of growth: clipped to the grid edge: teff: 2 value(s) outside 3900..6600", FehkitWarning,
                      stacklevel=1)
        raise fehkit.synth.SimulationError("n = 3: expected something else")

    monkeypatch.setattr(fehkit.synth, "make_benchmark", warn_then_fail)
    code, out, err = run_cli(capsys, ["simulate", "--n", "3", "--out", str(tmp_path / "s")])
    line = assert_one_error_line(code, out, err, "simulate", ["n = 3"])
    assert err.splitlines() == ["fehkit simulate: warning: curve of growth: clipped to the grid edge: teff: 2 "
                                "value(s) outside 3900..6600", line]
