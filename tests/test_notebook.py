"""notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel and shows metrics and plots."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs_offline_and_shows_metrics_and_images():
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    # The kernel imports this checkout's llmtune, whatever is installed; conftest already made the environment offline.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()  # the "python3" kernel is ipykernel on this interpreter

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3, "loss curve, validation metric and confusion matrix"
    assert "'accuracy':" in texts and "'macro_f1':" in texts and "test reviews misclassified" in texts
    accuracy = float(texts.split("'accuracy': ", 2)[2].split(",")[0])  # the test split's, printed by evaluate
    # LoRA on 320 reviews for 2 epochs learns the task: 0.85 here (with the earlier lr 5e-4 it stayed at chance, 0.48).
    assert accuracy >= 0.78
    mistakes = int(texts.split(" test reviews misclassified")[0].rsplit("\n", 1)[-1].split()[0])
    assert mistakes == round((1 - accuracy) * 200)  # the notebook's own count agrees with the metric
    labels = [line.split()[0] for line in texts.splitlines() if line.strip().endswith(("film.", "waiter.", "anyone."))]
    assert len(labels) == 3 and labels[:2] == ["positive", "negative"]  # the negated third one is a hard case
