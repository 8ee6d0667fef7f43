"""Memory controls (issue #39): each control's sweep equals the same sweep without it within its documented tolerance
(and is keyed apart where it can change pixels), a memory budget sizes the batched engine's batches by measured
footprints, and what this machine or pipeline cannot do is refused in one line before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import structured_image
from img2img_lab.cli.main import main
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep

#: The documented tolerances (docs/how-to/scale-out.md), in levels of 255: slicing computes the same numbers in
#: pieces (float rounding), tiling decodes an image larger than one VAE tile tile by tile (an approximation).
TOLERANCE = {"vae_slicing": 1, "attention_slicing": 1}


def _sweep(tmp_path, name, size, engine, **memory):
    from img2img_lab.testing import make_tiny_family

    source = tmp_path / f"source-{size}.png"
    if not source.exists():
        structured_image(size).save(source)
    plan = SweepPlan(images=[str(source)], prompts=["a red cat"], strengths=[0.3, 0.6, 1.0], seeds=[0, 1],
                     steps=[6], guidance_scales=[3.0], max_side=None)
    table = run_sweep(plan, tmp_path / name, pipe=make_tiny_family("sd1"), progress=False, engine=engine,
                      memory=memory)
    return table, [np.asarray(Image.open(tmp_path / name / path).convert("RGB"), np.int16)
                   for path in table["output_path"]]


@pytest.mark.parametrize("engine", ["per-cell", "batched"])
@pytest.mark.parametrize("control", ["vae_slicing", "attention_slicing"])
def test_slicing_equals_the_sweep_without_it_within_one_level(control, engine, tmp_path, capsys):
    base_table, base = _sweep(tmp_path, "base", 64, engine)
    table, images = _sweep(tmp_path, control, 64, engine, **{control: True})
    worst = max(int(np.abs(a - b).max()) for a, b in zip(base, images))
    with capsys.disabled():
        print(f"\n[memory] {control} ({engine}): max |with - without| = {worst}/255")
    assert worst <= TOLERANCE[control]
    assert not set(table["cell_key"]) & set(base_table["cell_key"])  # keyed apart: pixels may differ by a level
    assert set(table["memory_controls"]) == {control} and set(base_table["memory_controls"]) == {""}
    assert RunStore.open(tmp_path / control).read_manifest()["memory"][control] is True


def test_vae_tiling_is_exact_within_one_tile_and_keyed_apart_above(tmp_path, capsys):
    """Tiling decodes (and encodes) an image larger than the VAE's tile (the tiny VAE's: 32 px) tile by tile, the seams
    blended: an approximation (here up to 65/255; the embedded model at 3x its size: 16 levels on average), so a tiled
    cell is never reused for an untiled one. Within one tile nothing is tiled: the same pixels."""
    _, small = _sweep(tmp_path, "small", 32, "per-cell")
    _, small_tiled = _sweep(tmp_path, "small-tiled", 32, "per-cell", vae_tiling=True)
    assert all(np.array_equal(a, b) for a, b in zip(small, small_tiled))
    base_table, base = _sweep(tmp_path, "large", 64, "per-cell")
    table, tiled = _sweep(tmp_path, "large-tiled", 64, "per-cell", vae_tiling=True)
    with capsys.disabled():
        print(f"\n[memory] vae_tiling at 64 px (tiles of 32): max |tiled - untiled| = "
              f"{max(int(np.abs(a - b).max()) for a, b in zip(base, tiled))}/255")
    assert not set(table["cell_key"]) & set(base_table["cell_key"]) and set(table["memory_controls"]) == {"vae_tiling"}


def test_a_memory_budget_sizes_the_batches_by_measured_footprints(tmp_path):
    """A budget of three samples' measured footprint gives batches of three; the batch records and the manifest
    say so, and the pixels are the default sweep's within one level."""
    from img2img_lab.engine.batch_limits import sample_footprints
    from img2img_lab.models.handle import as_model
    from img2img_lab.testing import make_tiny_family

    model = as_model(make_tiny_family("sd1"))
    denoiser, decoder = sample_footprints(model, structured_image(64))
    budget = 3 * max(denoiser, (decoder + 1) // 2)
    base_table, base = _sweep(tmp_path, "default", 64, "batched")
    table, images = _sweep(tmp_path, "budget", 64, "batched", memory_budget=budget)
    store = RunStore.open(tmp_path / "budget")
    manifest = store.read_manifest()
    limit = manifest["memory"]["batch_limit"]
    assert manifest["memory"]["memory_budget"] == budget and 1 <= limit < 16
    assert limit == manifest["memory"]["fitted"]["limit"] <= budget // manifest["memory"]["fitted"]["sample_footprint"]
    assert {store.read_batch(batch_id)["max_batch_size"] for batch_id in store.batch_ids()} == {limit}
    assert max(int(np.abs(a - b).max()) for a, b in zip(base, images)) <= 1
    assert set(table["cell_key"]) == set(base_table["cell_key"])  # a budget only sizes batches: same keys


def _tree(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else None


@pytest.mark.parametrize("options, message", [
    (["--offload", "disk"], "error: unknown offload mode 'disk'. Fix: use none, model or sequential."),
    (["--offload", "model"], "error: offload: model moves each component to an accelerator only while it runs, "
                             "and torch sees none here"),
    (["--memory-budget", "1MB"], "error: memory_budget 1 MB is below one sample's footprint"),
    (["--memory-budget", "lots"], "error: memory size 'lots' is not a size. Fix: write e.g. 6GB or 512MiB."),
])
def test_bad_memory_settings_are_one_line_exit_2_and_write_nothing(options, message, tiny_model_dir, tmp_path,
                                                                   capsys):
    out = tmp_path / "run"
    code = main(["sweep", "quick", "--model", str(tiny_model_dir), "--out", str(out), "--no-progress", *options])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Loading" not in line]
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


def test_offload_without_accelerate_says_how_to_install_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    assert main(["sweep", "quick", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--no-progress",
                 "--offload", "sequential"]) == 2
    assert "offload: sequential needs the accelerate package, which is not installed. Fix: pip install accelerate" \
        in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_config_s_memory_settings_are_checked_recorded_and_rerun_by_repair(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "source.png"
    structured_image(32).save(source)
    config = tmp_path / "sweep.yaml"
    config.write_text(f"images: [{source}]\nprompts: [a cat]\nstrengths: [0.5, 1.0]\nsteps: 4\nmax_side: null\n"
                      f"memory: {{attention_slicing: true, memory_budget: auto}}\n")
    out = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(out), "--model", str(tiny_model_dir), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["memory"]["attention_slicing"] is True and manifest["memory"]["memory_budget"] == "auto"
    assert manifest["plans"][0]["plan"]["memory"]["attention_slicing"] is True
    victim = out / RunStore.open(out).read_table()["output_path"][1]
    expected = victim.read_bytes()
    victim.unlink()
    assert main(["verify", str(out), "--repair"]) == 0 and victim.read_bytes() == expected
    config.write_text(config.read_text().replace("memory: {", "memory: {tiles: 4, "))
    assert main(["sweep", str(config), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "unknown memory setting 'tiles'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
