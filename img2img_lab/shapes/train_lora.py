"""Train the project's LoRA for the embedded shapes-world model: the outlined style.

::

    python -m img2img_lab.shapes.train_lora --out data/adapters   # the shipped adapter: 1500 steps, rank 8, ~10 min

The adapter teaches one style the oracle can read: each shape inside a ring of a third palette colour
(:func:`img2img_lab.shapes.world.render` with ``outlined=True``; :func:`img2img_lab.shapes.oracle.outline_share`
reads it). The captions stay the world's own, so the style comes from the adapter, not the prompt. Recipe: a PEFT
LoRA (``init_lora_weights``: Gaussian A, zero B, so scale 0 and the untrained adapter are the bare model) on the
UNet's attention projections, feed-forward layers and ResNet convolutions, trained with the embedded model's own
objective (epsilon prediction under its scheduler's noise schedule) on outlined renders encoded by its own VAE and
text encoder (10% of captions empty, as in the model's own training, so classifier-free guidance stays
meaningful), AdamW, batch 32, on CPU in about ten minutes (575 s on 2 threads for the shipped adapter, whose
record is ``data/adapters/outline.json``; an earlier rank-4, 1,000-step run read the style in at most 17% of
outputs at any scale and strength, this one in up to 33%: docs/how-to/lora.md). It is saved with
``StableDiffusionPipeline.save_lora_weights`` (diffusers' format: what ``pipe.load_lora_weights`` and a ``loras:``
axis read) as ``outline.safetensors`` beside ``outline.json`` (recipe, steps, loss at start and end, wall time, file
size).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: The UNet layers the adapter adapts.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")


@dataclass
class LoraRecipe:
    """Every knob of the adapter's training (the shipped adapter's recipe by default)."""

    seed: int = 0
    steps: int = 1500
    rank: int = 8
    batch_size: int = 32
    learning_rate: float = 2e-3
    dataset_size: int = 4000
    empty_caption_rate: float = 0.1  # as the model was trained: classifier-free guidance stays meaningful
    threads: int = 2


def encoded_dataset(pipe, recipe: LoraRecipe):
    """``(latents, text embeddings, empty)`` of ``dataset_size`` outlined scenes (:func:`encode_scenes`)."""
    from img2img_lab.shapes.world import make_dataset

    images, captions, _ = make_dataset(recipe.dataset_size, seed=recipe.seed + 1, outlined=True)
    return encode_scenes(pipe, images, captions)


def encode_scenes(pipe, images, captions):
    """``(latents, text embeddings, empty)`` of rendered scenes: the VAE's latent means times its scaling factor
    (what the img2img pipeline starts from), the text encoder's embeddings of their captions, and the embedding of
    the empty caption."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(pixels[start:start + 256]).latent_dist.mean
                             for start in range(0, len(pixels), 256)]) * pipe.vae.config.scaling_factor
        unique = sorted(set(captions)) + [""]
        embeddings = pipe.encode_prompt(unique, "cpu", 1, False)[0]
    index = {text: position for position, text in enumerate(unique)}
    return latents, embeddings[np.asarray([index[text] for text in captions])], embeddings[-1]


def noised_batch(latents, embeddings, empty, noise_schedule, generator, *, batch_size: int,
                 empty_caption_rate: float):
    """One batch of the model's own objective: ``(indices, noisy latents, timesteps, text embeddings, noise)`` —
    random scenes noised at random training timesteps, a share of captions replaced by the empty one."""
    import torch

    batch = torch.randint(0, len(latents), (batch_size,), generator=generator)
    noise = torch.randn(latents[batch].shape, generator=generator)
    timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,), generator=generator)
    noisy = noise_schedule.add_noise(latents[batch], noise, timesteps)
    dropped = torch.rand(batch_size, generator=generator) < empty_caption_rate
    return batch, noisy, timesteps, torch.where(dropped[:, None, None], empty[None], embeddings[batch]), noise


def train_lora(pipe, recipe: LoraRecipe, *, log=print) -> tuple[dict, dict]:
    """Train the adapter on ``pipe``'s UNet (left without it afterwards); returns ``(unet LoRA state, record)``."""
    import copy

    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    latents, embeddings, empty = encoded_dataset(pipe, recipe)
    unet = copy.deepcopy(pipe.unet).train()
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=recipe.rank, target_modules=list(TARGETS),
                                init_lora_weights="gaussian"))
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for step in range(recipe.steps):
        _, noisy, timesteps, text, noise = noised_batch(latents, embeddings, empty, noise_schedule, generator,
                                                        batch_size=recipe.batch_size,
                                                        empty_caption_rate=recipe.empty_caption_rate)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, text).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == recipe.steps - 1:
            log(f"step {step + 1}/{recipe.steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    record = {"recipe": asdict(recipe), "targets": list(TARGETS), "seconds": round(time.perf_counter() - started, 1),
              "loss_first_100": sum(losses[:100]) / len(losses[:100]),
              "loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
              "trainable_parameters": sum(parameter.numel() for parameter in parameters)}
    return get_peft_model_state_dict(unet), record


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import StableDiffusionPipeline

    from img2img_lab.models.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/adapters", help="folder for outline.safetensors and outline.json")
    for name, value in asdict(LoraRecipe()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = LoraRecipe(**{name: getattr(args, name) for name in asdict(LoraRecipe())})
    torch.set_num_threads(recipe.threads)
    pipe = load_model(device="cpu").pipe
    state, record = train_lora(pipe, recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers={key: value.to(torch.float16)
                                                                          for key, value in state.items()},
                                              weight_name="outline.safetensors")
    record["bytes"] = (out / "outline.safetensors").stat().st_size
    (out / "outline.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'outline.safetensors'} ({record['bytes'] / 1e3:.0f} kB) in {record['seconds']:.0f} s; loss "
          f"{record['loss_first_100']:.4f} -> {record['loss_last_100']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
