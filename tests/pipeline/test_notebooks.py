"""The notebooks are stored without outputs and run from top to bottom (in their quick
settings: SLADE_NOTEBOOK_QUICK=1)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import DATA

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

NEEDS = {
    "quickstart.ipynb": "fashion_mnist_root",
    "paper_ablations.ipynb": "omniglot_root",
    "deploy.ipynb": "fashion_mnist_root",
    "own_model.ipynb": "fashion_mnist_root",
}


def _outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs_in_quick_settings(name, tmp_path, monkeypatch, request):
    request.getfixturevalue(NEEDS[name])  # fails, saying how to get it, when the data is absent
    monkeypatch.setenv("SLADE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("SLADE_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("SLADE_DATA", str(DATA))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    text = _outputs_text(notebook)
    assert "MAP@R" in text
    if name == "quickstart.ipynb":
        assert "student, SLADE" in text and "purity" in text
        images = [
            o
            for c in notebook.cells
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        assert len(images) == 3
        assert (tmp_path / "out" / "results.json").is_file()
    elif name == "own_model.ipynb":
        assert "'student_round1': 'TorchStudentTrainer'" in text and "ResNet-18 teacher, weights from a file" in text
        assert "same weights to 1e-5: True" in text
        assert (tmp_path / "out" / "small" / "results.json").is_file()
    elif name == "deploy.ipynb":
        assert "same embeddings without slade" in text and "of its class" in text
        outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs)
        assert (tmp_path / "out" / "model.onnx.json").is_file()
    else:
        for row in ("student, + basis + mining", "global_ce", "local_ce", "k = 6", "k = 12"):
            assert row in text
