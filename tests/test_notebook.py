"""The Colab notebook runs end to end on CPU in its quick mode, and is committed without outputs."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import CONFIG_DIR

NOTEBOOK = os.path.join(os.path.dirname(CONFIG_DIR), "experiments", "notebooks",
                        "ssd300_colab_tpu.ipynb")


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
  # The committed notebook targets the real run; only the environment switches it to quick mode.
  switch = 'QUICK_CPU_RUN = os.environ.get("SSD_JAX_NOTEBOOK_CPU", "0") == "1"'
  assert switch in notebook.cells[1].source


@pytest.mark.slow
def test_notebook_runs_on_cpu_in_quick_mode(monkeypatch):
  monkeypatch.setenv("SSD_JAX_NOTEBOOK_CPU", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.outputs)
  assert "mesh: {'data': 1}" in text and "trained to step 8" in text and "mAP " in text
  figures = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs if "image/png" in output.get("data", {})]
  assert len(figures) == 2  # the loss curve and the detections
