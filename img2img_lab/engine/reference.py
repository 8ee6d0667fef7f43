"""Run cells: the per-cell reference runner.

:func:`run_cell` generates one cell exactly as a plain diffusers call would::

    pipe.scheduler = <the cell's scheduler>
    pipe(image=source, prompt=cell.prompt, negative_prompt=cell.negative_prompt or None,
         strength=cell.strength, num_inference_steps=cell.num_inference_steps,
         guidance_scale=cell.guidance_scale, generator=torch.Generator("cpu").manual_seed(cell.seed),
         height=source.height, width=source.width)   # height/width where the family takes them (SD3, FLUX.1)

(:meth:`img2img_lab.models.handle.ModelHandle.call_arguments` builds these arguments for the model's family)

so any cell of a sweep can be reproduced bit for bit outside img2img-lab. The per-cell CPU generator
is what makes that work: diffusers samples the VAE latent and then the noise from the call's generator.

Zero-step cells (see :mod:`img2img_lab.plan.sweep_plan`) are not sent to the pipeline, which would crash for most
schedulers; :func:`vae_roundtrip` returns the source encoded (latent sampled with the same generator)
and decoded by the model's VAE: what the model makes of the image with no denoising at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from img2img_lab.models.handle import as_model, cell_generator  # noqa: F401 - cell_generator re-exported
from img2img_lab.plan.sweep_plan import Cell
from img2img_lab.plan.schema import Produced


@dataclass
class CellOutput:
    """What running a cell produced: the image, wall time, how it was made, and the safety flag."""

    image: "PIL.Image.Image"  # noqa: F821
    seconds: float
    produced: str  # a Produced value: "diffusion" or "vae_roundtrip"
    nsfw_flagged: bool | None = None


def use_scheduler(pipe, name: str):
    """Put the named scheduler on the pipeline, reusing one instance per name (as a user would)."""
    return as_model(pipe).use_scheduler(name)


def vae_roundtrip(pipe, source, *, generator=None):
    """Encode ``source`` with the pipeline's VAE (sampling the latent with ``generator``) and decode it.

    This is the floor every img2img output sits on: even strength 0 cannot be closer to the source.

    >>> floor = vae_roundtrip(pipe, source, generator=cell_generator(0))
    >>> floor.size == source.size
    True
    """
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    with torch.no_grad():
        if upcast:
            vae.to(torch.float32)
        try:
            work_dtype = torch.float32 if upcast else dtype
            pixels = pipe.image_processor.preprocess(source).to(device=vae.device, dtype=work_dtype)
            video = type(vae).__name__ == "AutoencoderKLQwenImage"  # a video VAE: one frame, (B, C, T, H, W)
            latents = retrieve_latents(vae.encode(pixels.unsqueeze(2) if video else pixels), generator=generator)
            decoded = vae.decode(latents, return_dict=False)[0]
            decoded = decoded[:, :, 0] if video else decoded
        finally:
            if upcast:
                vae.to(dtype)
    return pipe.image_processor.postprocess(decoded.float(), output_type="pil")[0]


def pipeline_kwargs(pipe, cell: Cell, source, condition: dict | None = None) -> dict:
    """The keyword arguments of the plain diffusers call that generates ``cell`` (see the module doc).

    >>> arguments = pipeline_kwargs(pipe, cell, source)
    >>> arguments["strength"], arguments["num_inference_steps"]
    (0.5, 10)
    >>> pipe(**arguments).images[0].size
    (64, 64)
    """
    return as_model(pipe).for_mode(cell.mode).call_arguments(cell, source, condition)


def run_cell(pipe, cell: Cell, source, *, on_step=None, condition: dict | None = None) -> CellOutput:
    """Generate one cell with the reference (per-cell) runner.

    ``source`` is the prepared RGB PIL image (:func:`img2img_lab.images.load_image`); ``condition`` its
    ``mask_image`` / ``control_image`` where the cell's mode and pipeline take them. ``on_step``, if
    given, is called as ``on_step(done, total)`` after every denoising step (diffusers'
    ``callback_on_step_end``, which leaves the latents untouched), e.g. to drive a progress bar.

    >>> output = run_cell(pipe, plan.cells()[1], source)
    >>> output.produced, output.image.size
    ('diffusion', (64, 64))
    """
    runner = as_model(pipe).for_mode(cell.mode)
    runner.use_scheduler(cell.scheduler)
    started = time.perf_counter()
    if cell.zero_step:
        image = vae_roundtrip(runner.pipe, source, generator=cell_generator(cell.seed))
        return CellOutput(image=image, seconds=time.perf_counter() - started, produced=Produced.VAE_ROUNDTRIP.value)
    kwargs = runner.call_arguments(cell, source, condition)
    if on_step is not None:
        def report_step(pipeline, index, timestep, tensors):
            on_step(index + 1, int(getattr(pipeline, "num_timesteps", 0) or cell.executed_steps))
            return tensors

        kwargs["callback_on_step_end"] = report_step
    result = runner.pipe(**kwargs)
    flagged = getattr(result, "nsfw_content_detected", None)
    return CellOutput(
        image=result.images[0],
        seconds=time.perf_counter() - started,
        produced=Produced.DIFFUSION.value,
        nsfw_flagged=None if flagged is None else bool(flagged[0]),
    )
