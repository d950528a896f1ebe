"""The tutorial notebooks as committed: the course's shape, and the outputs of a clean run.

Executing them is nbmake's job (``pytest --nbmake notebooks/``, the second half of the README's
test command); these checks are about what a reader opens on GitHub or Colab.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = ["00_quickstart", "01_noise_space_and_inversion", "02_faces", "03_cats", "04_cars", "05_art",
          "06_composing_edits", "07_measuring_directions"]
MAX_BYTES = 1_500_000


def _cells(name):
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def test_the_course_is_complete_and_ordered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == COURSE


@pytest.mark.parametrize("name", COURSE)
def test_each_notebook_has_the_course_shape(name):
    cells = _cells(name)
    opening = _source(cells[0])
    assert opening.startswith("# ") and "What you will learn" in opening and "Prerequisites" in opening
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    assert "find_spec(\"noiseclr_lite\")" in code[0], "the first code cell installs the library on Colab"
    assert any(re.match(r"MODEL = None\b", c) for c in code), "a settings cell holds the one switch MODEL = None"
    assert "## Exercises" in _source([c for c in cells if c["cell_type"] == "markdown"][-1])


@pytest.mark.parametrize("name", COURSE)
def test_no_cell_hides_an_error(name):
    for cell in _cells(name):
        if cell["cell_type"] == "code":
            assert not re.search(r"except\s*(Exception\s*)?:", _source(cell)), _source(cell)


@pytest.mark.parametrize("name", COURSE)
def test_committed_with_the_outputs_of_a_clean_run_and_small(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.stat().st_size < MAX_BYTES, f"{path} is {path.stat().st_size} bytes; keep it under {MAX_BYTES}"
    counts = [c["execution_count"] for c in _cells(name) if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path} is not the output of one clean top-to-bottom run (execution counts {counts}); refresh it with "
        f"`jupyter nbconvert --to notebook --execute --inplace {path.relative_to(NOTEBOOKS.parent)}`")
    for cell in _cells(name):
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"{path} was committed with an error output"
