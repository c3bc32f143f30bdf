"""Result objects print as a short summary in a terminal and as a small table in a notebook, never as arrays."""

from __future__ import annotations

import pytest

from fehkit import normalize
from fehkit.synth import make_benchmark
from fehkit.training import reference_params, spectra_features


@pytest.fixture(scope="module")
def results():
    sim = make_benchmark(40, seed=5)
    norm = normalize(sim.batch)
    feats = spectra_features(sim.batch, reference_params(sim.truth), normalized=norm.batch)
    return {"Simulation": sim, "Normalized": norm, "Features": feats, "EWTable": feats.ew}


@pytest.mark.parametrize("name", ["Simulation", "Normalized", "Features", "EWTable"])
def test_repr_is_one_short_line_with_counts(results, name):
    text = repr(results[name])
    assert text.startswith(f"<{name} ") and "\n" not in text
    assert len(text) < 200
    assert "array" not in text and "[" not in text.split("=", 1)[0]
    assert "40" in text  # the number of stars or spectra


@pytest.mark.parametrize("name", ["Simulation", "Normalized", "Features", "EWTable"])
def test_notebook_html_is_a_small_table(results, name):
    page = results[name]._repr_html_()
    assert page.startswith("<div>") and "<table>" in page and len(page) < 2000


def test_simulation_says_synthetic(results):
    assert "synthetic=True" in repr(results["Simulation"])
    assert "SYNTHETIC" in results["Simulation"]._repr_html_()


def test_ew_table_repr_counts_flags(results):
    table = results["EWTable"]
    assert "flags=" in repr(table) and "upper_limit" in repr(table)
    assert f"lines={table.n_lines}" in repr(table)
