"""The `fehkit` command: `fehkit inspect` on the real example spectra, and its handling of bad input."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from fehkit.cli import main


def test_inspect_examples_prints_one_line_per_star_and_writes_the_page(tmp_path, capsys):
    assert main(["inspect", "--examples", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    tmp_path = tmp_path / "out"
    assert "2M17335483-2753043     0  154.2      3" in out
    assert "2M19485057+5005279     0  137.5      1" in out
    assert "15809.3-15857.0; 16434.3-16472.9" in out  # the chip gaps
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["star_id"].tolist() == ["2M17335483-2753043", "2M19485057+5005279"]
    assert summary["masked_fraction"].between(0.09, 0.2).all()
    page = (tmp_path / "inspect.html").read_text()
    assert "2M19485057+5005279" in page and "Fe I fit window" in page and "masked pixel" in page
    assert "cdn.bokeh.org" not in page  # BokehJS is inlined: the page opens offline


def test_inspect_visits_without_html(tmp_path, capsys, examples):
    out = tmp_path / "out"
    assert main(["inspect", str(examples[0]), "--rows", "visits", "--no-html", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "summary.csv")) == 3
    assert not (out / "inspect.html").exists()


def test_inspect_bad_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "apStar-empty.fits"
    bad.write_bytes(b"")
    assert main(["inspect", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fehkit inspect: error: ") and str(bad) in err and "empty file" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_inspect_skip_reports_bad_files_and_goes_on(tmp_path, capsys, examples):
    bad = tmp_path / "apStar-text.fits"
    bad.write_text("not a spectrum")
    out = tmp_path / "out"
    assert main(["inspect", str(bad), str(examples[1]), "--on-error", "skip", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2M19485057+5005279" in captured.out and f"skipped: {bad}" in captured.err
    assert "warning" not in captured.err  # the skipped file is listed once, not again as a warning
    assert "1 files skipped" in (out / "inspect.html").read_text()


def test_inspect_without_input_is_an_error(capsys):
    assert main(["inspect"]) == 2
    assert "expected FILE arguments or --examples" in capsys.readouterr().err


def test_console_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fehkit", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("fehkit ")


def test_inspect_page_plots_at_most_max_plots(tmp_path, capsys, examples):
    out = tmp_path / "out"
    assert main(["inspect", str(examples[0]), "--rows", "all", "--max-plots", "2", "--out", str(out)]) == 0
    page = (out / "inspect.html").read_text()
    assert "Plots of the first 2 of 5 spectra." in page
    assert len(pd.read_csv(out / "summary.csv")) == 5
