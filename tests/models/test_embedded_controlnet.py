"""The embedded model's ControlNet (issue #41): shipped, loaded by name, swept like a plain diffusers call with the
source's silhouette as the control image, repaired from the folder, and followed (the oracle's check)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from img2img_lab.models.loading import EMBEDDED_MODEL_DIR, load_model
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.resources import embedded_controlnet_dir
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep

SOURCE = "data/sources/products/red_circle_on_blue.png"


def _plain_pipeline():
    """What a user types: the embedded model's folder with the shipped ControlNet (no img2img-lab code)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    controlnet = ControlNetModel.from_pretrained(str(embedded_controlnet_dir()), dtype=torch.float32)
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(str(EMBEDDED_MODEL_DIR), controlnet=controlnet,
                                                                    dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_shipped_controlnet_is_small_recorded_and_checked():
    folder = embedded_controlnet_dir()
    files = {path.name: path.stat().st_size for path in folder.iterdir()}
    assert sum(files.values()) <= 5_000_000 and "diffusion_pytorch_model.safetensors" in files
    training = json.loads((folder / "training.json").read_text())
    assert training["loss_last_100"] < training["loss_first_100"] and training["recipe"]["steps"] >= 1000
    evaluation = json.loads((folder / "evaluation.json").read_text())
    scales = evaluation["scales"]
    assert evaluation["count"] >= 96 and scales["1"]["follows"] >= 2 * scales["0"]["follows"] + 0.3


def test_a_controlled_sweep_is_the_plain_call_batched_and_repairs_from_its_folder(tmp_path):
    model = load_model("embedded-controlnet", threads=1)
    assert type(model.pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline" and model.family.name == "sd"
    plan = SweepPlan(images=[SOURCE], prompts=["a red circle on a white background"], strengths=[0.5, 1.0],
                     guidance_scales=[2.0], steps=[6], control={"image": "silhouette", "conditioning_scales": [0.0, 1.0]})
    run = tmp_path / "run"
    table = run_sweep(plan, run, pipe=model, progress=False)
    assert len(table) == 4 and table.control_hash.nunique() == 1 and set(table.engine) == {"batched"}
    source = Image.open(SOURCE).convert("RGB")
    from img2img_lab.metrics.masks import oracle_subject_mask

    silhouette = Image.fromarray(np.repeat(oracle_subject_mask(source)[..., None] * 255, 3, axis=2).astype(np.uint8))
    assert RunStore.open(run).load_source(table.control_hash.iloc[0]).tobytes() == silhouette.tobytes()
    pipe = _plain_pipeline()
    for row in table.to_dict("records"):
        plain = pipe(image=source, control_image=silhouette, prompt=row["prompt"], strength=row["strength"],
                     num_inference_steps=6, guidance_scale=2.0,
                     controlnet_conditioning_scale=row["controlnet_conditioning_scale"],
                     generator=torch.Generator("cpu").manual_seed(0)).images[0]
        stored = Image.open(run / row["output_path"]).convert("RGB")  # batched: within the engine's float32 level
        difference = np.abs(np.asarray(stored, np.int16) - np.asarray(plain, np.int16)).max()
        assert difference <= 1, row["cell_key"]
    victim = table[(table.strength == 1.0) & (table.controlnet_conditioning_scale == 1.0)].iloc[0]
    (run / victim["output_path"]).unlink()
    from img2img_lab.sweep.verify import verify_run

    assert verify_run(run, sample=1, repair=True, pipe=model).ok
    assert RunStore.open(run).read_table().set_index("cell_key").loc[victim["cell_key"], "output_hash"] == \
        victim["output_hash"]


def test_outputs_follow_the_silhouette_where_the_bare_model_does_not():
    from img2img_lab.shapes.train_controlnet import control_check

    torch.set_num_threads(1)
    check = control_check(_plain_pipeline(), count=16, scales=(0.0, 1.0), steps=10, seed=2000)
    follows = {scale: values["follows"] for scale, values in check["scales"].items()}
    assert follows["1"] >= 0.6 and follows["0"] <= 0.3, follows
