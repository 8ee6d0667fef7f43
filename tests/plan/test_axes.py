"""One table of axes (issue #38): the cell keys of run folders written before it are unchanged, a folder written
then finds every cell cached, and an axis added as one row reaches the plan, the cell, the table, the key, the label,
the command line, the batched engine's chunk key and the pipeline call."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from img2img_lab.cli.main import main
from img2img_lab.plan.axes import AXES, EXPANSION, chunk_key, key_payload, yaml_aliases
from img2img_lab.plan.schema import COLUMNS, PARAMETER_COLUMNS, cell_key
from img2img_lab.plan.sweep_plan import Cell, SweepPlan
from img2img_lab.store.run_store import RunStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = FIXTURES.parents[1]


def test_cell_keys_are_the_ones_e9218e3_wrote():
    """tests/fixtures/cell-keys-e9218e3.jsonl: 192 cells over every kind of axis value (modes, negative prompts,
    guidance, schedulers, ControlNet settings, engines, a zero strength), keyed by e9218e3's ``cell_key`` before the
    axis table existed (the script is this test's loop, run there with ``Cell(**row["cell"])``)."""
    rows = [json.loads(line) for line in (FIXTURES / "cell-keys-e9218e3.jsonl").read_text().splitlines()]
    assert len(rows) == 192
    mismatched = [row["key"] for row in rows if cell_key(Cell(**row["cell"]), **row["arguments"]) != row["key"]]
    assert mismatched == []


def test_a_run_folder_written_before_the_axis_table_finds_every_cell_cached(tmp_path, capsys):
    """An img2img + inpaint sweep of the embedded model written by e9218e3 (tests/fixtures/run-format-e9218e3): the
    same config swept again into a copy (its finished-sweep record removed, so every cell is keyed anew) generates
    nothing."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-format-e9218e3", run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.pop("completed")
    (run / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "config.yaml"
    config.write_text((FIXTURES / "run-format-e9218e3.yaml").read_text().replace("REPO", str(REPO)))
    assert main(["sweep", str(config), "--out", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "16 cells (0 generated, 0 duplicate strengths reused, 16 already done)" in printed, printed
    assert RunStore.open(run).read_manifest()["counts"]["generated"] == 0


def test_everything_that_lists_axes_is_derived_from_the_table():
    top = [axis for axis in AXES if axis.section is None]
    assert {axis.plural for axis in top} <= {name for name in SweepPlan.__dataclass_fields__}
    assert {axis.name for axis in AXES} <= set(Cell.__dataclass_fields__)
    assert PARAMETER_COLUMNS == tuple(column for axis in AXES for column in axis.table_columns)
    assert COLUMNS[1:1 + len(PARAMETER_COLUMNS)] == list(PARAMETER_COLUMNS)
    assert yaml_aliases()["strength"] == "strengths" and yaml_aliases()["guidance"] == "guidance_scales"
    assert EXPANSION[-1].name == "strength" and EXPANSION[0].name == "mode"
    cell = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], modes=["inpaint"],
                     control={"image": "canny", "conditioning_scales": [0.5]}).cells()[0]
    assert key_payload(cell)["mode"] == "inpaint" and key_payload(cell)["controlnet_conditioning_scale"] == "0.5"
    assert chunk_key(cell) == (20, "default", "inpaint", 0.5, None, None, None, False, 0, None, "none")
    assert cell.label() == ("a.png · 'p' · strength 0.5 · seed 0 · guidance 7.5 · 20 steps · default · inpaint · "
                            "control scale 0.5")


ETA_ROW = '''    Axis("eta", "etas", float, _control_check("etas"), default=(None,), nest=65, baseline=None, call="eta",
         batchable=False, label="eta {:g}", cli="comma-separated DDIM etas, instead of the config's"),
)'''


def test_an_axis_added_as_one_row_reaches_every_place_that_lists_axes(tmp_path):
    """DDIM's ``eta`` added as one row of AXES in a copy of the package (nothing else changed): a config's ``etas``
    expand into cells, the table has an ``eta`` column, the key holds it (and a cell at its baseline keeps its key),
    the label names it, ``sweep --etas`` exists, cells of different etas never share a batch, and the plain call the
    per-cell runner makes passes ``eta`` to the pipeline."""
    package = tmp_path / "img2img_lab"
    shutil.copytree(REPO / "img2img_lab", package, ignore=shutil.ignore_patterns("__pycache__"))
    axes = package / "plan" / "axes.py"
    text = axes.read_text()
    marker = '         key_of=lora_key, columns_of=lora_columns, from_row=lora_from_row, words=lora_words),\n)'
    assert marker in text
    axes.write_text(text.replace(marker, marker[:-1] + ETA_ROW))
    script = '''
import json, sys
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.plan.schema import COLUMNS, cell_key
from img2img_lab.plan.axes import chunk_key
from img2img_lab.cli.main import build_parser
from img2img_lab.models.handle import as_model
from img2img_lab.models.registry import tiny_pipeline
from PIL import Image
plan = SweepPlan.from_dict({"images": ["a.png"], "prompts": ["p"], "strengths": [0.5], "etas": [0.0, 1.0]})
plain = SweepPlan.from_dict({"images": ["a.png"], "prompts": ["p"], "strengths": [0.5]})
cells, base = plan.cells(), plain.cells()[0]
arguments = dict(fingerprint="f", scheduler_config={}, source_hash="h", width=32, height=32, dtype="float32",
                 device_type="cpu", versions={})
model = as_model(tiny_pipeline("sd1"))
call = model.call_arguments(cells[1], Image.new("RGB", (32, 32)))
print(json.dumps({"etas": [cell.eta for cell in cells], "column": "eta" in COLUMNS,
                  "keys": len({cell_key(cell, **arguments) for cell in cells}),
                  "baseline_key": cell_key(base, **arguments), "label": cells[1].label(),
                  "chunks": len({chunk_key(cell) for cell in cells}), "call_eta": call.get("eta"),
                  "cli": "--etas" in build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()}))
'''
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    plain = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5]).cells()[0]
    baseline_key = cell_key(plain, fingerprint="f", scheduler_config={}, source_hash="h", width=32, height=32,
                            dtype="float32", device_type="cpu", versions={})
    assert seen == {"etas": [0.0, 1.0], "column": True, "keys": 2, "baseline_key": baseline_key,
                    "label": "a.png · 'p' · strength 0.5 · seed 0 · guidance 7.5 · 20 steps · default · eta 1",
                    "chunks": 2, "call_eta": 1.0, "cli": True}


@pytest.mark.parametrize("option, expected", [(["--strengths", "0.2,0.4"], {"strengths": [0.2, 0.4]}),
                                              (["--prompt", "a cat", "--prompt", "a, dog"],
                                               {"prompts": ["a cat", "a, dog"]}),
                                              (["--seeds", "3", "--schedulers", "ddim,euler"],
                                               {"seeds": [3], "schedulers": ["ddim", "euler"]})])
def test_sweep_options_override_a_config_axis(option, expected):
    from img2img_lab.cli.main import build_parser
    from img2img_lab.cli.support import axis_overrides

    args = build_parser().parse_args(["sweep", "quick", "--out", "x", *option])
    assert axis_overrides(args) == expected
