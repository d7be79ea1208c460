"""Every notebook in examples/notebooks runs clean, top to bottom, in a fresh kernel (as CI runs them).

A failure names the notebook, the cell (index, id and first line) and the error. Notebooks that start a
cluster are marked e2e; the simulator study has no cluster and runs in every test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "examples" / "notebooks"
CELL_TIMEOUT_S = 240
WITHOUT_CLUSTER = {"04_simulator_study.ipynb"}


# Notebooks with a backend switch (LLUMNIX_DASK_BACKEND) that also run on vLLM engines.
WITH_BACKEND_SWITCH = {"01_quickstart.ipynb"}


def _params():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        marks = [pytest.mark.timeout(600)]
        if path.name not in WITHOUT_CLUSTER:
            marks.append(pytest.mark.e2e)
        yield pytest.param(path, "nano", id=path.stem, marks=marks)
        if path.name in WITH_BACKEND_SWITCH:
            yield pytest.param(path, "vllm", id=f"{path.stem}-vllm", marks=[*marks, pytest.mark.vllm])


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} >= {
        "01_quickstart.ipynb", "02_rescheduling.ipynb", "03_priorities_slo.ipynb", "04_simulator_study.ipynb"
    }


@pytest.mark.parametrize("path,backend", list(_params()))
def test_notebook_runs_clean(path: Path, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    book = nbformat.read(path, as_version=4)
    # The kernel runs in a scratch directory so nothing lands in the repo; plots use the inline backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("LLUMNIX_DASK_BACKEND", backend)
    client = nbclient.NotebookClient(
        book, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with client.setup_kernel():
        for index, cell in enumerate(book.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError) as exc:
                first = (cell.source.strip().splitlines() or [""])[0]
                pytest.fail(
                    f"{path.name}: cell {index} (id {cell.get('id')!r}, starting {first!r}) failed:\n{exc}",
                    pytrace=False,
                )
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
