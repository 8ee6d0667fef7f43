"""The batched runner: many img2img cells stepped together, reproducing the per-cell runner.

A strength sweep run one cell at a time leaves the hardware mostly idle: a 64-pixel image, or even one
512-pixel image, does not fill a GPU (or a CPU's vector units). :func:`run_cells_batched` runs all cells that
share a model, image size, number of steps and scheduler configuration along their common timestep grid:

* every source is VAE-encoded once and every (prompt, negative prompt) text-encoded once;
* each cell joins the loop at its own ``t_start`` (its strength); cells with the same ``t_start`` form a
  *start group* stepped by its own scheduler instance, so multistep (DPM++, UniPC, PNDM) and ancestral
  (Euler a, DDPM) schedulers keep correct per-group state;
* at each timestep every active cell goes into one UNet call (chunked by ``max_batch_size`` samples), with
  its own prompt embeddings and guidance scale; cells with guidance <= 1 skip the unconditional half;
* every cell has its own CPU generator consuming random numbers in exactly the per-cell order (VAE latent
  sample, initial noise, then the scheduler's per-step noise), so seeds mean the same thing;
* decoding is batched; on CUDA out-of-memory the batch size is halved and the step retried.

The result equals :func:`img2img_lab.engine.run_cell` up to floating-point differences of batched kernels
(tests: max |difference| <= 1/255 per pixel for DDIM, Euler, Euler a, DPM++ 2M, PNDM and UniPC).

Supported: diffusers' ``StableDiffusionImg2ImgPipeline`` family (SD 1.x/2.x and fine-tunes, the embedded
model). Other pipelines (SDXL, Flux, ...) and UNets with a guidance embedding (LCM) use the per-cell runner;
:func:`batching_supported` says which and why.

>>> images = run_cells_batched(pipe, cells, sources)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import img2img_lab  # noqa: F401  - torchvision shim first
from img2img_lab.engine import CellOutput, cell_generator, use_scheduler, vae_roundtrip
from img2img_lab.plan import Cell

#: Default UNet samples per call (a cell with guidance > 1 is two samples).
DEFAULT_MAX_BATCH = {"cuda": 32, "cpu": 16, "mps": 8}


def batching_supported(pipe) -> tuple[bool, str]:
    """``(supported, reason)``: whether :func:`run_cells_batched` reproduces this pipeline's calls.

    >>> batching_supported(pipe)  # doctest: +SKIP
    (True, 'StableDiffusionImg2ImgPipeline')
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    if not isinstance(pipe, StableDiffusionImg2ImgPipeline):
        return False, f"{type(pipe).__name__} is run per cell (batching covers StableDiffusionImg2ImgPipeline)"
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        return False, "the UNet has a guidance embedding (LCM-style): run per cell"
    if getattr(pipe, "cross_attention_kwargs", None) or getattr(pipe, "_cross_attention_kwargs", None):
        return False, "cross-attention kwargs (LoRA scale) are set: run per cell"
    return True, type(pipe).__name__


@dataclass
class _Active:
    """One cell in flight."""

    index: int  # position in the caller's list
    cell: Cell
    generator: object
    prompt_key: tuple
    cfg: bool
    latents: object = None


def _accepts(function, name: str) -> bool:
    return name in set(inspect.signature(function).parameters)


def _encode_prompts(pipe, keys, device):
    """``{(prompt, negative): (positive_embeds, negative_embeds)}``, each text encoded once."""
    import torch

    embeds = {}
    with torch.no_grad():
        for prompt, negative in keys:
            positive, negative_embeds = pipe.encode_prompt(prompt, device, 1, True, negative or None)
            embeds[(prompt, negative)] = (positive, negative_embeds)
    return embeds


def _encode_sources(pipe, sources, dtype, device):
    """``{source index: latent distribution}`` for every source (one VAE encoder pass each)."""
    import torch

    distributions = {}
    with torch.no_grad():
        for index, source in sources.items():
            pixels = pipe.image_processor.preprocess(source).to(device=device, dtype=dtype)
            distributions[index] = pipe.vae.encode(pixels).latent_dist
    return distributions


def _sample_latent(distribution, generator):
    """Exactly ``retrieve_latents(encoder_output, generator)``: mean + std * randn(generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    sample = randn_tensor(distribution.mean.shape, generator=generator, device=distribution.parameters.device,
                          dtype=distribution.parameters.dtype)
    return distribution.mean + distribution.std * sample


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


class _BatchSize:
    """The current UNet batch limit; halves on CUDA out-of-memory."""

    def __init__(self, value: int):
        self.value = max(1, int(value))
        self.halvings = 0

    def halve(self) -> None:
        import torch

        if self.value == 1:
            raise RuntimeError("out of memory even with a batch of one sample")
        self.value = max(1, self.value // 2)
        self.halvings += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _unet_outputs(pipe, inputs, timestep, embeddings, limit: _BatchSize, counters: dict):
    """Run the UNet over ``inputs`` (N, C, H, W) with ``embeddings`` (N, L, D) in chunks of ``limit.value``."""
    import torch

    outputs, start = [], 0
    while start < inputs.shape[0]:
        size = limit.value
        try:
            with torch.no_grad():
                chunk = pipe.unet(inputs[start:start + size], timestep,
                                  encoder_hidden_states=embeddings[start:start + size], return_dict=False)[0]
        except (RuntimeError, MemoryError) as error:
            if pipe.device.type == "cuda" and _is_oom(error):
                limit.halve()
                continue
            raise
        outputs.append(chunk)
        counters["unet_calls"] += 1
        counters["unet_samples"] += chunk.shape[0]
        start += size
    return torch.cat(outputs)


def run_cells_batched(pipe, cells: list[Cell], sources: list, *, max_batch_size: int | None = None,
                      on_step=None, stats: dict | None = None) -> list[CellOutput]:
    """Generate ``cells`` (one scheduler name and steps value) with the batched runner; return one
    :class:`~img2img_lab.engine.CellOutput` per cell, in order.

    ``sources[cell.image_index]`` is each cell's prepared source; all sources must have one size. Zero-step
    cells store the VAE round trip, as in the per-cell runner. ``on_step(done, total)`` is called after every
    timestep of the shared loop. ``stats`` (a dict), if given, receives ``unet_calls``, ``unet_samples``,
    ``batch_halvings`` and ``seconds``.

    >>> outputs = run_cells_batched(pipe, plan.cells(), sources)  # doctest: +SKIP
    """
    import torch

    if not cells:
        return []
    supported, reason = batching_supported(pipe)
    if not supported:
        raise ValueError(f"batched runner: {reason}")
    names = {cell.scheduler for cell in cells}
    steps_values = {cell.num_inference_steps for cell in cells}
    sizes = {sources[cell.image_index].size for cell in cells}
    if len(names) != 1 or len(steps_values) != 1 or len(sizes) != 1:
        raise ValueError("run_cells_batched needs one scheduler, one steps value and one image size per call "
                         f"(got {sorted(names)}, {sorted(steps_values)}, {sorted(sizes)}); group cells first.")
    started = time.perf_counter()
    use_scheduler(pipe, cells[0].scheduler)
    base = pipe.scheduler
    steps = cells[0].num_inference_steps
    device = pipe._execution_device
    dtype = pipe.unet.dtype
    outputs: list[CellOutput | None] = [None] * len(cells)
    limit = _BatchSize(max_batch_size or DEFAULT_MAX_BATCH.get(device.type, 16))
    counters = {"unet_calls": 0, "unet_samples": 0}

    for index, cell in enumerate(cells):  # zero-step cells: the VAE round trip, exactly as per cell
        if cell.zero_step:
            began = time.perf_counter()
            image = vae_roundtrip(pipe, sources[cell.image_index], generator=cell_generator(cell.seed))
            outputs[index] = CellOutput(image=image, seconds=time.perf_counter() - began, produced="vae_roundtrip")
    active_cells = [(index, cell) for index, cell in enumerate(cells) if not cell.zero_step]
    if active_cells:
        _denoise(pipe, base, active_cells, sources, outputs, steps=steps, device=device, dtype=dtype, limit=limit,
                 counters=counters, on_step=on_step, started=started)
    if stats is not None:
        stats.update(counters, batch_halvings=limit.halvings, seconds=time.perf_counter() - started,
                     max_batch_size=limit.value)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return outputs


def _denoise(pipe, base, active_cells, sources, outputs, *, steps, device, dtype, limit, counters, on_step, started):
    import torch

    prompt_keys = sorted({(cell.prompt, cell.negative_prompt) for _, cell in active_cells})
    embeds = _encode_prompts(pipe, prompt_keys, device)
    distributions = _encode_sources(pipe, {cell.image_index: sources[cell.image_index] for _, cell in active_cells},
                                    dtype, device)

    # One scheduler instance per start group, set up exactly as the pipeline does for that strength.
    groups: dict[int, dict] = {}
    for index, cell in active_cells:
        group = groups.get(cell.t_start)
        if group is None:
            scheduler = type(base).from_config(base.config)
            scheduler.set_timesteps(steps, device=device)
            order = scheduler.order
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(cell.t_start * order)
            timesteps = scheduler.timesteps[cell.t_start * order:]
            extra = {}
            if _accepts(scheduler.step, "eta"):
                extra["eta"] = 0.0
            group = groups[cell.t_start] = {"scheduler": scheduler, "offset": cell.t_start * order,
                                            "timesteps": timesteps, "members": [], "extra": extra,
                                            "uses_generator": _accepts(scheduler.step, "generator")}
        generator = cell_generator(cell.seed)
        member = _Active(index=index, cell=cell, generator=generator, prompt_key=(cell.prompt, cell.negative_prompt),
                         cfg=cell.guidance_scale > 1.0)
        # prepare_latents: the VAE latent sample, then the noise, from the cell's own generator.
        with torch.no_grad():
            init_latents = pipe.vae.config.scaling_factor * _sample_latent(distributions[cell.image_index], generator)
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
            member.latents = group["scheduler"].add_noise(init_latents, noise, group["timesteps"][:1])
        group["members"].append(member)

    all_timesteps = type(base).from_config(base.config)
    all_timesteps.set_timesteps(steps, device=device)
    grid = all_timesteps.timesteps
    total = len(grid)
    first = min(group["offset"] for group in groups.values())
    for position in range(first, total):
        live = [group for group in groups.values() if group["offset"] <= position]
        if not live:
            continue
        t = grid[position]
        inputs, embeddings, layout = [], [], []
        for group in live:
            members = group["members"]
            latents = torch.cat([member.latents for member in members])
            scaled = group["scheduler"].scale_model_input(latents, t)
            for row, member in enumerate(members):
                positive, negative = embeds[member.prompt_key]
                sample = scaled[row:row + 1]
                if member.cfg:
                    inputs += [sample, sample]
                    embeddings += [negative, positive]
                    layout.append((member, 2))
                else:
                    inputs.append(sample)
                    embeddings.append(positive)
                    layout.append((member, 1))
        noise = _unet_outputs(pipe, torch.cat(inputs), t, torch.cat(embeddings), limit, counters)
        predictions, cursor = {}, 0
        for member, width in layout:
            if width == 2:
                uncond, text = noise[cursor:cursor + 1], noise[cursor + 1:cursor + 2]
                predictions[member.index] = uncond + member.cell.guidance_scale * (text - uncond)
            else:
                predictions[member.index] = noise[cursor:cursor + 1]
            cursor += width
        for group in live:
            members = group["members"]
            prediction = torch.cat([predictions[member.index] for member in members])
            latents = torch.cat([member.latents for member in members])
            kwargs = dict(group["extra"])
            if group["uses_generator"]:
                kwargs["generator"] = [member.generator for member in members] if len(members) > 1 \
                    else members[0].generator
            with torch.no_grad():
                stepped = group["scheduler"].step(prediction, t, latents, **kwargs, return_dict=False)[0]
            for row, member in enumerate(members):
                member.latents = stepped[row:row + 1]
        if on_step is not None:  # progress over the timesteps this batch actually runs
            on_step(position + 1 - first, total - first)

    members = [member for group in groups.values() for member in group["members"]]
    elapsed = time.perf_counter() - started
    decode_size = max(1, limit.value // 2)
    start = 0
    while start < len(members):
        chunk = members[start:start + decode_size]
        try:
            with torch.no_grad():
                latents = torch.cat([member.latents for member in chunk])
                decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
                decoded, flagged = pipe.run_safety_checker(decoded, device, embeds[chunk[0].prompt_key][0].dtype)
        except (RuntimeError, MemoryError) as error:
            if device.type == "cuda" and _is_oom(error) and decode_size > 1:
                decode_size //= 2
                continue
            raise
        denormalize = [True] * decoded.shape[0] if flagged is None else [not value for value in flagged]
        images = pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=denormalize)
        share = elapsed / max(1, len(members))
        for row, (member, image) in enumerate(zip(chunk, images)):
            outputs[member.index] = CellOutput(image=image, seconds=share, produced="diffusion",
                                               nsfw_flagged=None if flagged is None else bool(flagged[row]))
        start += len(chunk)
