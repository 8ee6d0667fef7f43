"""LoRA adapters as a sweep axis (issue #40): every cell equals a plain diffusers call with the same adapter setting,
adapters never leak between cells or out of the sweep, the run folder keeps the files, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import random_lora_file, save_tiny_family
from conftest import structured_image

STRENGTHS = [0.5, 1.0]
STEPS = 4
SCALES = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def lora_world(tmp_path_factory):
    """Tiny SD, SDXL and FLUX.1 pipelines saved offline, a random LoRA for each, and a 32 px source."""
    root = tmp_path_factory.mktemp("lora-world")
    structured_image(32).save(root / "source.png")
    world = {"source": root / "source.png"}
    for name in ("sd1", "sdxl", "flux-dev"):
        folder = save_tiny_family(name, root / name)
        pipe = load_pipeline(str(folder), device="cpu", threads=1)
        world[name] = {"folder": folder, "lora": random_lora_file(pipe, root / f"{name}-style.safetensors", seed=1)}
    return world


def _plan(world, name: str, loras, **extra) -> SweepPlan:
    return SweepPlan(images=[str(world["source"])], prompts=["a red cat"], strengths=STRENGTHS,
                     guidance_scales=[3.0], steps=[STEPS], max_side=None, loras=loras, **{"seeds": [0], **extra})


def _plain(folder, source, *, strength: float, lora=None, scale: float | None = None) -> np.ndarray:
    """What a user types: a fresh pipeline, ``load_lora_weights`` and ``set_adapters`` (no img2img-lab code)."""
    pipe = load_pipeline(str(folder), device="cpu", threads=1)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="style")
        pipe.set_adapters(["style"], adapter_weights=[scale])
    kwargs = dict(image=source, prompt="a red cat", strength=strength, num_inference_steps=STEPS,
                  guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(0))
    if "Flux" in type(pipe).__name__:
        kwargs.update(height=source.height, width=source.width)
    return np.asarray(pipe(**kwargs).images[0], dtype=np.int16)


def _stored(run, row) -> np.ndarray:
    return np.asarray(Image.open(run / row["output_path"]).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name", ["sd1", "sdxl", "flux-dev"])
def test_every_lora_cell_equals_a_plain_call_with_that_adapter(name, lora_world, tmp_path, capsys):
    """SD / SDXL (UNet and text-encoder LoRA) and FLUX.1 (transformer LoRA): each cell of none and of scales 0, 0.5
    and 1 against a plain call; scale 0 and none equal the bare model; the model has no adapter afterwards."""
    world = lora_world[name]
    pipe = load_pipeline(str(world["folder"]), device="cpu", threads=1)
    fingerprint = as_model(pipe).fingerprint()["fingerprint"]
    loras = [{"file": str(world["lora"]), "scales": SCALES}, "none"]  # the bare cells run after the LoRA cells
    table = run_sweep(_plan(lora_world, name, loras), tmp_path / "run", pipe=pipe, engine="per-cell",
                      progress=False)
    assert len(table) == len(STRENGTHS) * (len(SCALES) + 1)
    source = Image.open(lora_world["source"]).convert("RGB")
    bare = {strength: _plain(world["folder"], source, strength=strength) for strength in STRENGTHS}
    differences = {}
    for row in table.to_dict("records"):
        scale = None if row["lora"] == "none" else float(row["lora_scales"])
        plain = bare[row["strength"]] if scale is None else \
            _plain(world["folder"], source, strength=row["strength"], lora=world["lora"], scale=scale)
        differences[(row["lora"], row["strength"])] = int(np.abs(_stored(tmp_path / "run", row) - plain).max())
        if scale is not None:
            assert row["lora"] == f"{world['lora'].stem} {scale:g}" and len(row["lora_hashes"]) == 16
    assert max(differences.values()) <= 1, differences
    with capsys.disabled():
        print(f"\n[lora] {name}: {len(differences)} cells, max |sweep - plain call| {max(differences.values())}/255")
    by_setting = {(row["lora"], row["strength"]): _stored(tmp_path / "run", row) for row in table.to_dict("records")}
    stem = world["lora"].stem
    for strength in STRENGTHS:  # scale 0 and none are the bare model; scale 1 is not
        assert np.array_equal(by_setting[(f"{stem} 0", strength)], by_setting[("none", strength)])
        assert not np.array_equal(by_setting[(f"{stem} 1", strength)], by_setting[("none", strength)])
    assert pipe.get_list_adapters() == {} and as_model(pipe).fingerprint()["fingerprint"] == fingerprint


@pytest.mark.parametrize("name", ["sd1", "sdxl"])  # FLUX.1 runs per cell (no batched conditioning)
def test_batched_lora_cells_equal_per_cell_within_one_level(name, lora_world, tmp_path, capsys):
    world = lora_world[name]
    pipe = load_pipeline(str(world["folder"]), device="cpu", threads=1)
    plan = _plan(lora_world, name, ["none", {"file": str(world["lora"]), "scales": [0.5, 1.0]}], seeds=[0, 1])
    batched = run_sweep(plan, tmp_path / "batched", pipe=pipe, engine="batched", progress=False)
    per_cell = run_sweep(plan, tmp_path / "per-cell", pipe=pipe, engine="per-cell", progress=False)
    assert set(batched["engine"]) == {"batched"} and batched["batch_id"].notna().all()
    for frame in (batched, per_cell):
        frame.set_index(["lora", "seed", "strength"], inplace=True)
    assert batched.index.nunique() == 12
    # one batch never mixes adapter settings
    assert batched.reset_index().groupby("batch_id")["lora"].nunique().max() == 1
    worst = max(int(np.abs(_stored(tmp_path / "batched", batched.loc[index]) -
                           _stored(tmp_path / "per-cell", per_cell.loc[index])).max()) for index in batched.index)
    assert worst <= 1
    with capsys.disabled():
        print(f"\n[lora] {name} batched: {len(batched)} cells in {batched['batch_id'].nunique()} batches, max |batched - "
              f"per cell| {worst}/255")


def test_a_cell_after_lora_cells_equals_the_same_cell_run_alone(lora_world, tmp_path):
    """No leak: the bare cells of a LoRA sweep equal a sweep that never loaded one (the text encoder's memo
    included), and the sweep records and keeps the adapter file."""
    world = lora_world["sd1"]
    pipe = load_pipeline(str(world["folder"]), device="cpu", threads=1)
    mixed = run_sweep(_plan(lora_world, "sd1", [{"file": str(world["lora"]), "scales": [1.0]}, "none"]),
                      tmp_path / "mixed", pipe=pipe, engine="per-cell", progress=False, metrics=["ssim"])
    alone = run_sweep(_plan(lora_world, "sd1", ["none"]), tmp_path / "alone", pipe=pipe, engine="per-cell",
                      progress=False)
    after = mixed[mixed["lora"] == "none"].set_index("strength")["output_hash"]
    assert after.to_dict() == alone.set_index("strength")["output_hash"].to_dict()
    manifest = RunStore.open(tmp_path / "mixed").read_manifest()
    (file_hash, record), = manifest["adapters"].items()
    assert record["name"] == world["lora"].stem and record["bytes"] == world["lora"].stat().st_size
    assert (tmp_path / "mixed" / "adapters" / f"{file_hash}.safetensors").read_bytes() == world["lora"].read_bytes()
    assert "lora" not in alone.columns or set(alone["lora"]) == {"none"}
    # a calibration's summary never pools adapter settings: one row per setting and strength
    from img2img_lab.calibration.stats import strength_summary

    summary = strength_summary(mixed, ["ssim"], n_resamples=100)
    assert sorted(zip(summary["lora"], summary["strength"])) == sorted(
        (setting, strength) for setting in ("none", f"{world['lora'].stem} 1") for strength in STRENGTHS)


def test_verify_repair_rebuilds_a_deleted_lora_cell_from_the_folders_copy(lora_world, tmp_path):
    from img2img_lab.sweep.verify import verify_run

    world = lora_world["sd1"]
    adapter = tmp_path / "style.safetensors"
    adapter.write_bytes(world["lora"].read_bytes())
    pipe = load_pipeline(str(world["folder"]), device="cpu", threads=1)
    table = run_sweep(_plan(lora_world, "sd1", [{"file": str(adapter), "scales": [0.5]}]), tmp_path / "run",
                      pipe=pipe, engine="per-cell", progress=False)
    adapter.unlink()  # the repair has only the run folder's copy
    row = table[table["strength"] == 1.0].iloc[0]
    (tmp_path / "run" / row["output_path"]).unlink()
    report = verify_run(tmp_path / "run", sample=2, repair=True, pipe=pipe)
    assert report.ok, report
    assert (tmp_path / "run" / row["output_path"]).is_file()
    repaired = RunStore.open(tmp_path / "run").read_table().set_index("cell_key")
    assert repaired.loc[row["cell_key"], "output_hash"] == row["output_hash"]


def test_the_lora_axis_keys_by_content_and_labels_by_name(lora_world, tmp_path):
    """A renamed copy of the file keeps every cell key; the settings read back from rows; a plan round-trips through
    its record (what the manifest keeps)."""
    world = lora_world["sd1"]
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(world["lora"].read_bytes())
    first = _plan(lora_world, "sd1", [{"file": str(world["lora"]), "scales": [0.5, 1]}])
    second = _plan(lora_world, "sd1", [{"file": str(renamed), "scales": [0.5, 1]}])
    from img2img_lab.plan.axes import key_payload

    assert [key_payload(cell)["lora"] for cell in first.cells()] == [key_payload(cell)["lora"]
                                                                     for cell in second.cells()]
    assert first.cells()[0].label().endswith(f"LoRA {world['lora'].stem} 0.5")
    again = SweepPlan.from_dict(json.loads(json.dumps(first.to_dict())))
    assert again.loras == first.loras and again.adapters == first.adapters


BAD_INPUT = {
    "missing": (lambda world, tmp: str(tmp / "nowhere.safetensors"), "does not exist"),
    "not a LoRA": (lambda world, tmp: _checkpoint_file(tmp), "no LoRA weights in it"),
    "not safetensors": (lambda world, tmp: str(world["source"]), "not a safetensors file"),
    "another architecture": (lambda world, tmp: str(world["flux-dev"]["lora"]),
                             "Fix: use a LoRA trained for this model"),
    "hub id": (lambda world, tmp: "someone/pastel-lora", "looks like a hub id and the hub is offline"),
}


def _checkpoint_file(tmp) -> str:
    from safetensors.numpy import save_file

    save_file({"unet.conv_in.weight": np.zeros((4, 4), np.float32)}, tmp / "model.safetensors")
    return str(tmp / "model.safetensors")


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_lora_input_is_one_line_exit_2_and_no_folder(case, lora_world, tmp_path, capsys):
    from img2img_lab.cli.main import main

    make, expected = BAD_INPUT[case]
    config = tmp_path / "sweep.yaml"
    config.write_text(f"images: [{lora_world['source']}]\nprompts: [a red cat]\nstrengths: [0.5]\nsteps: 2\n"
                      f"max_side: null\n")
    code = main(["sweep", str(config), "--model", str(lora_world["sd1"]["folder"]), "--out", str(tmp_path / "run"),
                 "--lora", make(lora_world, tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_scale_outside_the_range_and_scales_without_a_file_are_refused(lora_world, tmp_path, capsys):
    from img2img_lab.cli.main import main

    config = tmp_path / "sweep.yaml"
    config.write_text(f"images: [{lora_world['source']}]\nprompts: [a red cat]\nstrengths: [0.5]\n")
    for extra, expected in ((["--lora", str(lora_world["sd1"]["lora"]), "--lora-scales", "0.5,5"],
                             "outside [-4, 4]"),
                            (["--lora-scales", "0.5"], "--lora-scales needs at least one --lora FILE")):
        code = main(["sweep", str(config), "--model", str(lora_world["sd1"]["folder"]), "--out",
                     str(tmp_path / "run"), "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["pastel#0123456789abcdef@-", "pastel#0123@0.5", "pastel#0123456789abcdef@0.5+"])
def test_a_malformed_setting_text_is_a_plan_error(text):
    """A setting's text from a hand-edited config or manifest: one PlanError line (a bare '-' scale was a ValueError)."""
    from img2img_lab.errors import PlanError

    with pytest.raises(PlanError, match="is not 'none' or name#hash@scale"):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], loras=[text])
