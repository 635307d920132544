"""The notebooks run top to bottom in emulation.

With nbclient (and an ipykernel) installed they run as Jupyter runs them;
without, their code cells run in order in one namespace, which is what a
kernel does for these notebooks (no magics, no widgets). Either way a failing
cell fails the test with the cell's index and source."""

from __future__ import annotations

import json
import os

import pytest
from harness import REPO_ROOT as ROOT

NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))


def _run_in_process(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    with open(path) as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        try:
            exec(compile(src, f"{os.path.basename(path)}[cell {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{os.path.basename(path)} cell {i} failed: {e!r}\n{src}") from e
    ov = namespace.get("ov")
    if ov is not None:
        ov.close()


def test_notebooks_are_generated_from_make_notebooks(tmp_path):
    """The checked-in notebooks are exactly what make_notebooks.py writes (no stale outputs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", os.path.join(NB_DIR, "make_notebooks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.NOTEBOOKS) == set(NOTEBOOKS)
    for name, cells in mod.NOTEBOOKS.items():
        with open(os.path.join(NB_DIR, name)) as f:
            assert json.load(f) == mod.notebook(cells), f"{name} is stale: run python3 notebooks/make_notebooks.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_emulation(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    path = os.path.join(NB_DIR, name)
    try:
        import nbclient
        import nbformat
    except ImportError:
        _run_in_process(path)
        return
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
