"""The notebooks run top to bottom, offline, and are stored without outputs.

Each notebook is executed with nbclient in a kernel of this interpreter (the venv's), from
``notebooks/`` as its working directory, as a user opening it in Jupyter would. Jupyter's
and IPython's directories point into a temporary directory, so the test reads no user
configuration and writes nothing outside it: the ``python3`` kernel spec there names
``sys.executable``, and a probe checks that the kernel really runs it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private Jupyter/IPython home whose ``python3`` kernel is this interpreter."""
    home = tmp_path_factory.mktemp("jupyter")
    spec_dir = home / "data" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (agent-server venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(home / "data"))
        patch.setenv("JUPYTER_DATA_DIR", str(home / "data"))
        patch.setenv("JUPYTER_CONFIG_DIR", str(home / "config"))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
        patch.setenv("IPYTHONDIR", str(home / "ipython"))
        patch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's frozen-modules note
        yield


def execute(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    return notebook


def output_text(cell: nbformat.NotebookNode) -> str:
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            data = output.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(jupyter_env: None) -> dict[str, tuple[nbformat.NotebookNode, str]]:
    """Every notebook executed once: name -> (notebook, text of all its outputs)."""
    results: dict[str, tuple[nbformat.NotebookNode, str]] = {}
    for path in NOTEBOOKS:
        notebook = execute(nbformat.read(path, as_version=4))
        results[path.stem] = (notebook, "\n".join(output_text(c) for c in notebook.cells))
    return results


def test_notebooks_exist() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "custom_tool", "rag"}


def test_the_kernel_is_this_interpreter(jupyter_env: None) -> None:
    probe = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())")
        ]
    )
    lines = output_text(execute(probe).cells[0]).splitlines()
    assert lines == [sys.executable, str(NOTEBOOK_DIR)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(
    path: Path, executed: dict[str, tuple[nbformat.NotebookNode, str]]
) -> None:
    notebook, _ = executed[path.stem]
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {cell.get('id')} did not run"
        errors = [o for o in cell.outputs if o["output_type"] == "error"]
        assert not errors, f"cell {cell.get('id')} raised: {errors[0]['ename']}"
        stderr = "".join(o["text"] for o in cell.outputs if o.get("name") == "stderr")
        assert "Traceback" not in stderr, stderr


def test_quickstart_computes_with_the_calculator(
    executed: dict[str, tuple[nbformat.NotebookNode, str]],
) -> None:
    _, text = executed["quickstart"]
    # The tool_end frame, in-process and then over SSE from the server.
    assert len(re.findall(r"\b\d+ tool_end\s+calculator -> 84\n", text)) == 2, text
    assert "The calculator tool returned 84." in text  # the streamed answer
    assert "long_task finished 3 steps" in text
    assert "human: and what is 2+2?" in text  # the second turn, read back from the thread


def test_custom_tool_output_is_streamed(
    executed: dict[str, tuple[nbformat.NotebookNode, str]],
) -> None:
    _, text = executed["custom_tool"]
    assert "tool_end   word_count output='9'" in text
    assert "The word_count tool returned 9." in text
    assert text.count("custom progress:") == 4
    assert "tool_end slow_sum 10.0" in text


def test_rag_shows_sources_before_the_answer(
    executed: dict[str, tuple[nbformat.NotebookNode, str]],
) -> None:
    _, text = executed["rag"]
    match = re.search(r"sources frame: seq (\d+); first token: seq (\d+)", text)
    assert match, text
    assert int(match[1]) < int(match[2])
    assert "1. Tools" in text  # the best source for a question about tool progress
    assert "data/corpus/tools.md" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook: Any = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {cell.get('id')} has outputs"
            assert cell.execution_count is None, f"{path.name}: cell {cell.get('id')} has a count"
