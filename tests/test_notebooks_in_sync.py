"""Each tutorial notebook is stored twice: ``notebooks/NN_name.ipynb``, which students open and nbval runs, and its
jupytext twin ``notebooks/NN_name.py`` (percent format), which is what gets edited, reviewed and linted.

Edit the ``.py`` and run ``jupytext --sync notebooks/*.py`` (or edit the ``.ipynb`` in JupyterLab with jupytext
installed, which saves both). These tests fail when one side was edited alone, when a notebook lacks its twin,
and when an ``.ipynb`` stores outputs or execution counts (the repository keeps no executed outputs).
"""

import json
import shutil
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
FORMATS = "ipynb,py:percent"
PY_FILES = sorted(NOTEBOOKS.glob("*.py"))
IPYNB_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))


def _first_line(source: str) -> str:
    return source.splitlines()[0] if source else "<empty>"


def pair_differences(py_path: Path) -> list[str]:
    """What differs between a jupytext ``.py`` and its paired ``.ipynb`` (an empty list: in sync)."""
    ipynb_path = py_path.with_suffix(".ipynb")
    if not ipynb_path.exists():
        return [f"{py_path.name} has no paired {ipynb_path.name}"]
    text, nb = jupytext.read(py_path), jupytext.read(ipynb_path)
    problems = []
    for path, notebook in [(py_path, text), (ipynb_path, nb)]:
        formats = notebook.metadata.get("jupytext", {}).get("formats")
        if formats != FORMATS:
            problems.append(f"{path.name}: jupytext formats {formats!r}, expected {FORMATS!r}")
    if len(text.cells) != len(nb.cells):
        problems.append(f"{py_path.name} has {len(text.cells)} cells, {ipynb_path.name} has {len(nb.cells)}")
    for i, (a, b) in enumerate(zip(text.cells, nb.cells, strict=False)):
        if a.cell_type != b.cell_type:
            problems.append(f"cell {i}: {a.cell_type} in {py_path.name}, {b.cell_type} in {ipynb_path.name}")
        elif a.source != b.source:
            problems.append(f"cell {i} ({a.cell_type}, {_first_line(b.source)!r}): source differs")
    return problems


def stored_outputs(ipynb_path: Path) -> list[str]:
    """The code cells of an ``.ipynb`` that store outputs or an execution count (read as raw JSON)."""
    cells = json.loads(ipynb_path.read_text(encoding="utf-8"))["cells"]
    return [
        f"cell {i} ({cell.get('id', '?')}): {len(cell.get('outputs', []))} outputs, "
        f"execution_count {cell.get('execution_count')}"
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def test_there_are_notebooks():
    assert len(PY_FILES) >= 5 and len(IPYNB_FILES) >= 5


@pytest.mark.parametrize("py_path", PY_FILES, ids=lambda p: p.name)
def test_py_and_ipynb_hold_the_same_cells(py_path):
    problems = pair_differences(py_path)
    assert not problems, (
        f"{py_path.name} and its .ipynb are out of sync; edit the .py, then run "
        f"`jupytext --sync notebooks/{py_path.name}`:\n" + "\n".join(problems)
    )


@pytest.mark.parametrize("ipynb_path", IPYNB_FILES, ids=lambda p: p.name)
def test_every_ipynb_has_its_py_twin(ipynb_path):
    assert ipynb_path.with_suffix(".py").exists(), (
        f"{ipynb_path.name} has no jupytext twin; create it with "
        f"`jupytext --set-formats {FORMATS} notebooks/{ipynb_path.name}`"
    )


@pytest.mark.parametrize("ipynb_path", IPYNB_FILES, ids=lambda p: p.name)
def test_ipynb_stores_no_outputs(ipynb_path):
    problems = stored_outputs(ipynb_path)
    assert not problems, (
        f"{ipynb_path.name} stores executed outputs; clear them "
        f"(`jupyter nbconvert --clear-output --inplace notebooks/{ipynb_path.name}`):\n" + "\n".join(problems)
    )


@pytest.fixture
def pair_copy(tmp_path):
    """A copy of the quick-start pair, to edit one side of."""
    for suffix in (".py", ".ipynb"):
        shutil.copy2(NOTEBOOKS / f"00_quickstart{suffix}", tmp_path / f"00_quickstart{suffix}")
    return tmp_path / "00_quickstart.py", tmp_path / "00_quickstart.ipynb"


def test_checks_pass_on_an_untouched_copy(pair_copy):
    py_path, ipynb_path = pair_copy
    assert pair_differences(py_path) == []
    assert stored_outputs(ipynb_path) == []


def test_an_edit_of_the_py_alone_is_caught(pair_copy):
    py_path, _ = pair_copy
    text = py_path.read_text(encoding="utf-8")
    assert text.count("batch.summary()") == 1
    py_path.write_text(text.replace("batch.summary()", "batch.summary().head()"), encoding="utf-8")
    problems = pair_differences(py_path)
    assert len(problems) == 1 and "source differs" in problems[0]


def test_an_edit_of_the_ipynb_alone_is_caught(pair_copy):
    py_path, ipynb_path = pair_copy
    nb = json.loads(ipynb_path.read_text(encoding="utf-8"))
    nb["cells"][0]["source"][0] = "# fehkit quick start, retitled\n"
    nb["cells"].append({"cell_type": "markdown", "id": "00-99", "metadata": {}, "source": ["A new cell."]})
    ipynb_path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    problems = pair_differences(py_path)
    assert any("source differs" in p and p.startswith("cell 0 ") for p in problems)
    assert any("cells," in p for p in problems)  # 14 against 15 cells


def test_a_changed_cell_type_a_missing_pairing_and_a_missing_ipynb_are_caught(pair_copy):
    py_path, ipynb_path = pair_copy
    nb = json.loads(ipynb_path.read_text(encoding="utf-8"))
    code = next(i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code")
    nb["cells"][code] = {"cell_type": "raw", "id": nb["cells"][code]["id"], "metadata": {},
                         "source": nb["cells"][code]["source"]}
    del nb["metadata"]["jupytext"]
    ipynb_path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    problems = pair_differences(py_path)
    assert any(p.startswith(f"cell {code}: code in") for p in problems)
    assert any("jupytext formats None" in p for p in problems)
    ipynb_path.unlink()
    assert pair_differences(py_path) == [f"{py_path.name} has no paired {ipynb_path.name}"]


def test_stored_outputs_are_caught(pair_copy):
    _, ipynb_path = pair_copy
    nb = json.loads(ipynb_path.read_text(encoding="utf-8"))
    code = next(cell for cell in nb["cells"] if cell["cell_type"] == "code")
    code["execution_count"] = 1
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["2 spectra\n"]}]
    ipynb_path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    assert len(stored_outputs(ipynb_path)) == 1
