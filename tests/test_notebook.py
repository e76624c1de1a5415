"""examples/lab.ipynb, the lab as its students meet it: executed top to bottom in its quick
setting, offline, as `make notebook` does; any cell that raises fails the test."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import LAB_DATA, ROOT, needs_lab_data

NOTEBOOK = ROOT / "examples" / "lab.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert len(code) >= 12
    assert not any(cell.outputs or cell.execution_count for cell in code)


def _texts(nb) -> str:
    """Every text the executed notebook shows: streams, results, errors."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.data.get("text/markdown", "") + out.data.get("text/plain", ""))
    return "\n".join(parts)


@needs_lab_data
@pytest.mark.slow
def test_the_lab_notebook_runs_top_to_bottom_in_its_quick_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("LORALAB_DATA", str(LAB_DATA))  # the kernel inherits this environment
    monkeypatch.setenv("LORALAB_LAB_SIZE", "quick")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:  # the executed copy, to read when a cell failed
        nbformat.write(nb, tmp_path / "lab.executed.ipynb")
    text = _texts(nb)
    # The lab's figures on its own architecture, computed in the notebook.
    for figure in ("66,955,010 (the lab: 66,955,010)", "592,130 (the lab: 592,130)",
                   "7,087,104 (the lab: 7,087,104)", "702,722 (the lab: 702,722)"):
        assert figure in text
    assert "PROBLEM" not in text and text.count("all checks passed") == 6  # every check in the notebook
    assert "restored exactly: True" in text
    assert "Every Transformer method is above the majority class" in text, text[-3000:]
    assert any(out.output_type == "display_data" and "image/png" in out.data
               for cell in nb.cells for out in cell.get("outputs", []))  # plots inline
    assert "\x1b[" not in text and "\r" not in text.replace("\r\n", "\n")  # no raw escape codes or carriage returns
