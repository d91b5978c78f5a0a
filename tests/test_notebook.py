"""extract_wikipedia_data.ipynb runs headless, top to bottom, on a small synthetic corpus.

The parameters cell (tagged "parameters", as papermill expects) is rewritten to point at a local JSON
lines file; everything else runs as stored. The kernel is this test's own Python: a kernelspec naming
sys.executable is installed into a temporary folder put first on JUPYTER_PATH, so neither a kernel
installed elsewhere on the machine nor an `ipykernel install` step is involved.
"""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from scripts import extract_wikipedia as ew, make_synthetic_wiki

NOTEBOOK = ROOT / "extract_wikipedia_data.ipynb"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    from ipykernel.kernelspec import install

    name = "extract-wikipedia-test"
    install(kernel_name=name, prefix=str(tmp_path / "jupyter"))  # argv[0] is sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    return name


def parameters_cell(nb):
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return cell


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "num_articles = 236_370" in parameters_cell(nb).source  # the defaults are the reference run


@pytest.mark.slow
def test_notebook_runs_and_writes_the_dump(tmp_path, monkeypatch, kernel_name):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    source = tmp_path / "wiki.jsonl"
    make_synthetic_wiki.write(make_synthetic_wiki.generate(150, seed=5), source)
    output = tmp_path / "out" / "dump.txt"

    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters_cell(nb).source = "\n".join([
        f"source = {str(source)!r}",
        "config = None",
        "num_articles = 100",
        "seed = 7",
        "min_words = 3",
        "pack_words = 0",
        f"output = {str(output)!r}",
        "num_proc = 2",
    ])
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(nb, kernel_name=kernel_name, timeout=120, resources={"metadata": {"path": str(ROOT)}}).execute()

    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable
    lines = output.read_text(encoding="utf-8").splitlines()
    stats = json.loads(ew.stats_path(output).read_text())
    assert stats["articles"] == 100 and stats["articles_available"] == 150
    assert stats["lines"] == len(lines) > 0 and stats["args"]["seed"] == 7
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the sentence-length plot
