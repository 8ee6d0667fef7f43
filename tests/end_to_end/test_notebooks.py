"""The notebooks: committed without outputs, only calls into img2img_lab, and each executes headlessly.

Execution uses papermill (the notebooks' ``parameters`` cells take small values here) on the embedded
model, offline; each notebook's wall time is printed and written to ``test-artifacts/notebook_times.json``.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ARTIFACTS = REPO / "test-artifacts"

nbformat = pytest.importorskip("nbformat")

#: Small parameters per notebook for the headless run (each notebook's defaults are for people).
SMALL = {
    "01_quickstart.ipynb": {"STRENGTHS": [0.3, 0.8], "SEEDS": [0]},
    "02_strength_explorer.ipynb": {"STRENGTH": 0.6},
    "03_strength_calibration.ipynb": {"OVERRIDES": {
        "images": ["../sources/red_circle_on_blue.png", "../sources/green_triangle_on_yellow.png"],
        "seeds": [0, 1], "strengths": [0.0, 0.5, 1.0], "guidance_scales": [2.0, 3.0], "refine_rounds": 1,
        "n_resamples": 500}},
}


def _code_cells(path: Path):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_the_issue_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    assert "01_quickstart.ipynb" in names and "02_strength_explorer.ipynb" in names
    assert "03_strength_calibration.ipynb" in names
    assert set(SMALL) >= set(names) - {"04_report.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear outputs before committing"
    assert notebook.metadata.get("widgets") is None, f"{path.name}: saved widget state; clear it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_holds_no_logic_only_calls_into_the_library(path):
    cells = _code_cells(path)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in cells) == 1, "one papermill parameters cell"
    for cell in cells:
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While,
                                         ast.Lambda, ast.ListComp, ast.DictComp, ast.GeneratorExp, ast.With)), (
                f"{path.name}: {type(node).__name__} in a notebook cell; move the logic into img2img_lab"
            )
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] == "img2img_lab" for alias in node.names), ast.unparse(node)
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] == "img2img_lab", ast.unparse(node)


def _record_time(name: str, seconds: float) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "notebook_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[name] = round(seconds, 2)
    path.write_text(json.dumps(times, indent=2))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL), ids=str)
def test_notebook_executes_headlessly(name, tmp_path, capsys):
    papermill = pytest.importorskip("papermill")
    parameters = {**SMALL[name], "RUN_DIR": str(tmp_path / "run")}
    output = tmp_path / name
    started = time.perf_counter()
    papermill.execute_notebook(str(REPO / "notebooks" / name), str(output), parameters=parameters,
                               cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
                               log_output=False, execution_timeout=300)
    seconds = time.perf_counter() - started
    _record_time(name, seconds)
    with capsys.disabled():
        print(f"\n[notebook] {name} executed headlessly in {seconds:.1f} s")
    executed = nbformat.read(output, as_version=4)
    outputs = [item for cell in executed.cells if cell.cell_type == "code" for item in cell.outputs]
    assert not [item for item in outputs if item.output_type == "error"]
    streamed = "".join(item.get("text", "") for item in outputs if item.output_type == "stream")
    assert "Loading pipeline components" not in streamed and "Loading weights" not in streamed  # no third-party bars
    kinds = {mime for item in outputs for mime in item.get("data", {})}
    if name != "02_strength_explorer.ipynb":  # the grid explorer, with its static grid for nbconvert
        explorers = [item["data"] for item in outputs if "application/vnd.jupyter.widget-view+json" in item.get("data", {})
                     and "i2i-header-text" in item["data"].get("text/html", "")]  # (progress bars are widgets too)
        assert len(explorers) == 1 and "data:image/png;base64," in explorers[0]["text/html"]
    if name == "01_quickstart.ipynb":
        assert {"image/png", "text/html"} <= kinds  # the grid / curve and the metrics table
        from img2img_lab.store.run_store import RunStore

        table = RunStore.open(tmp_path / "run").read_table()
        assert len(table) == 2 and set(table["strength"]) == {0.3, 0.8} and table["ssim"].notna().all()
    elif name == "03_strength_calibration.ipynb":
        assert {"image/png", "text/html"} <= kinds
        saved = tmp_path / "run" / "calibration"
        assert (saved / "reference_table.csv").is_file() and (saved / "calibration.html").is_file()
        html = "".join(item["data"].get("text/html", "") for item in outputs if "data" in item)
        assert "Strength reference table" in html and "Folklore vs measured" in html
    else:
        assert "application/vnd.jupyter.widget-view+json" in kinds  # the explorer app
        from img2img_lab.store.run_store import RunStore

        table = RunStore.open(tmp_path / "run").read_table()
        assert len(table) == 1 and table["strength"].iloc[0] == 0.6 and table["executed_steps"].iloc[0] == 12


def test_parameters_cells_name_run_dir():
    for path in NOTEBOOKS:
        source = next(cell.source for cell in _code_cells(path) if "parameters" in cell.metadata.get("tags", []))
        assert "RUN_DIR" in source, path.name
