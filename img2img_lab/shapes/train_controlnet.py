"""Train the project's ControlNet for the embedded shapes-world model: the silhouette control.

::

    python -m img2img_lab.shapes.train_controlnet --out data/models/shapes-world-controlnet   # the shipped one

The control image is a scene's **silhouette**: the shape white on black (:func:`silhouette`), a segmentation map the
world's generator makes exactly, and that :func:`img2img_lab.shapes.oracle.subject_mask` reads back from any
embedded-model source (``control: {image: silhouette}``). Recipe, as in Zhang et al. 2023 ("Adding Conditional
Control to Text-to-Image Diffusion Models") at the embedded model's scale: :meth:`diffusers.ControlNetModel.from_unet`
copies the UNet's encoder and middle block, adds zero convolutions and a conditioning embedding that brings the 64 px
map to the 16x16 latent (two stride-2 stages: channels 16, 32, 64); the UNet, VAE and text encoder stay frozen and
the ControlNet learns the model's own objective (epsilon prediction under its scheduler's noise schedule) on the
world's scenes encoded by its own VAE and text encoder, with 10% empty captions (so classifier-free guidance keeps
working with the control), AdamW, batch 32, on CPU. The result is a diffusers ControlNet folder (fp16 safetensors,
``config.json``) with ``training.json`` (recipe, loss at start and end, wall time, size) beside it;
:func:`control_check` measures that outputs follow the control (its figures: ``evaluation.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: The conditioning embedding's channels: two stride-2 stages bring 64 px to the UNet's 16x16 latent.
CONDITIONING_CHANNELS = (16, 32, 64)


@dataclass
class ControlRecipe:
    """Every knob of the ControlNet's training (the shipped ControlNet's recipe by default)."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 5e-4
    dataset_size: int = 8000
    empty_caption_rate: float = 0.1  # as the model was trained: classifier-free guidance stays meaningful
    threads: int = 2


def silhouette(scene, *, size: int = 64) -> np.ndarray:
    """The control image of a scene: its shape white (255) on black, RGB uint8, ``size x size`` (the shape's
    coverage thresholded at one half, as :func:`img2img_lab.shapes.oracle.subject_mask` reads a source).

    >>> from img2img_lab.shapes.world import Scene
    >>> image = silhouette(Scene("square", "red", "blue"))
    >>> image.shape, image[32, 32].tolist(), image[0, 0].tolist()
    ((64, 64, 3), [255, 255, 255], [0, 0, 0])
    """
    from img2img_lab.shapes.world import shape_mask

    inside = shape_mask(scene, size=size) >= 0.5
    return np.repeat((inside * 255).astype(np.uint8)[..., None], 3, axis=2)


def encoded_dataset(pipe, recipe: ControlRecipe):
    """``(latents, control images, text embeddings, empty)`` of ``dataset_size`` scenes: their encodings
    (:func:`img2img_lab.shapes.train_lora.encode_scenes`) and their silhouettes as the pipeline gives them to the
    ControlNet (float in [0, 1], NCHW)."""
    import torch

    from img2img_lab.shapes.train_lora import encode_scenes
    from img2img_lab.shapes.world import make_dataset

    images, captions, scenes = make_dataset(recipe.dataset_size, seed=recipe.seed + 2)
    controls = torch.from_numpy(np.stack([silhouette(scene) for scene in scenes])).permute(0, 3, 1, 2).float() / 255
    latents, embeddings, empty = encode_scenes(pipe, images, captions)
    return latents, controls, embeddings, empty


def train_controlnet(pipe, recipe: ControlRecipe, *, log=print):
    """Train a ControlNet for ``pipe``'s UNet (left unchanged); returns ``(controlnet, record)``."""
    import torch
    from diffusers import ControlNetModel, DDPMScheduler

    from img2img_lab.shapes.train_lora import noised_batch

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    latents, controls, embeddings, empty = encoded_dataset(pipe, recipe)
    controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS).train()
    pipe.unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for step in range(recipe.steps):
        batch, noisy, timesteps, text, noise = noised_batch(latents, embeddings, empty, noise_schedule, generator,
                                                            batch_size=recipe.batch_size,
                                                            empty_caption_rate=recipe.empty_caption_rate)
        down, middle = controlnet(noisy, timesteps, text, controls[batch], return_dict=False)
        predicted = pipe.unet(noisy, timesteps, text, down_block_additional_residuals=down,
                              mid_block_additional_residual=middle).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == recipe.steps - 1:
            log(f"step {step + 1}/{recipe.steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    record = {"recipe": asdict(recipe), "conditioning_channels": list(CONDITIONING_CHANNELS),
              "seconds": round(time.perf_counter() - started, 1),
              "loss_first_100": sum(losses[:100]) / len(losses[:100]),
              "loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
              "parameters": sum(parameter.numel() for parameter in controlnet.parameters())}
    return controlnet.eval().requires_grad_(False), record


def control_check(pipe, *, count: int = 96, scales=(0.0, 0.5, 1.0), strength: float = 1.0, steps: int = 20,
                  guidance: float = 2.0, seed: int = 1000) -> dict:
    """Does the embedded model follow the silhouette? ``count`` held-out scenes (drawn from ``seed``, never trained
    on), each generated from **another** scene's render as the img2img source, with its own caption as the prompt
    and its own silhouette as the control image, at ``strength``, per conditioning scale: the share of outputs whose
    shape covers the control (:func:`img2img_lab.shapes.oracle.follows_silhouette`, overlap >= 0.5), the mean
    overlap, and the share where the oracle reads the prompt's shape. Scale 0 is the bare model: what chance gives.

    >>> check = control_check(controlled, count=2, scales=(0.0,), steps=2)  # doctest: +SKIP
    """
    import torch
    from PIL import Image

    from img2img_lab.shapes.oracle import read_image, silhouette_overlap
    from img2img_lab.shapes.world import caption, random_scene, render

    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    sources = [Image.fromarray(render(random_scene(rng))) for _ in range(count)]
    controls = [Image.fromarray(silhouette(scene)) for scene in scenes]
    prompts = [caption(scene) for scene in scenes]
    results = {}
    for scale in scales:
        outputs = pipe(prompt=prompts, image=sources, control_image=controls, strength=strength,
                       num_inference_steps=steps, guidance_scale=guidance, controlnet_conditioning_scale=float(scale),
                       generator=[torch.Generator().manual_seed(seed + index) for index in range(count)]).images
        overlaps = [silhouette_overlap(control, output) for control, output in zip(controls, outputs)]
        results[f"{scale:g}"] = {
            "follows": float(np.mean([overlap >= 0.5 for overlap in overlaps])),
            "mean_overlap": float(np.mean(overlaps)),
            "shape_read": float(np.mean([read_image(output).shape == scene.shape
                                         for output, scene in zip(outputs, scenes)]))}
    return {"count": count, "strength": strength, "steps": steps, "guidance": guidance, "seed": seed,
            "scales": results}


def main(argv: list[str] | None = None) -> int:
    import torch

    from img2img_lab.models.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/models/shapes-world-controlnet", help="the ControlNet folder to write")
    parser.add_argument("--evaluate-only", action="store_true", help="only run the control check of --out")
    for name, value in asdict(ControlRecipe()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = ControlRecipe(**{name: getattr(args, name) for name in asdict(ControlRecipe())})
    torch.set_num_threads(recipe.threads)
    if args.evaluate_only:
        print(json.dumps(evaluate_saved(args.out), indent=2))
        return 0
    pipe = load_model(device="cpu").pipe
    controlnet, record = train_controlnet(pipe, recipe)
    out = Path(args.out)
    controlnet.to(torch.float16).save_pretrained(out)
    record["bytes"] = sum(path.stat().st_size for path in out.iterdir())
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    evaluation = evaluate_saved(out)
    print("control check:", json.dumps(evaluation["scales"]))
    print(f"wrote {out} ({record['bytes'] / 1e6:.1f} MB) in {record['seconds']:.0f} s; loss "
          f"{record['loss_first_100']:.4f} -> {record['loss_last_100']:.4f}")
    return 0


def evaluate_saved(folder, **options) -> dict:
    """:func:`control_check` of the ControlNet saved in ``folder`` on the embedded model, written to
    ``folder/evaluation.json`` (with the wall time) and returned."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    from img2img_lab.models.loading import EMBEDDED_MODEL_DIR

    started = time.perf_counter()
    controlnet = ControlNetModel.from_pretrained(str(folder), dtype=torch.float32)
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(str(EMBEDDED_MODEL_DIR), controlnet=controlnet,
                                                                    dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    evaluation = control_check(pipe, **options)
    evaluation["seconds"] = round(time.perf_counter() - started, 1)
    (Path(folder) / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return evaluation


if __name__ == "__main__":
    raise SystemExit(main())
