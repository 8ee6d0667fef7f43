"""The per-cell reference runner: one plain diffusers call per cell.

:func:`run_cell` generates one cell exactly as a plain diffusers call would::

    pipe.scheduler = <the cell's scheduler>
    pipe(image=source, prompt=cell.prompt, negative_prompt=cell.negative_prompt or None,
         strength=cell.strength, num_inference_steps=cell.num_inference_steps,
         guidance_scale=cell.guidance_scale, generator=torch.Generator("cpu").manual_seed(cell.seed),
         height=source.height, width=source.width)   # height/width where the family takes them (SD3, FLUX.1)

(:meth:`img2img_lab.models.handle.ModelHandle.call_arguments` builds these arguments for the model's family)

so any cell of a sweep can be reproduced bit for bit outside img2img-lab (an inpainting cell's mask blur and
compositing as :mod:`img2img_lab.engine.inpaint_options` writes them). The per-cell CPU generator
is what makes that work: diffusers samples the VAE latent and then the noise from the call's generator.

Zero-step cells (see :mod:`img2img_lab.plan.sweep_plan`) are not sent to the pipeline, which would crash for most
schedulers; the family's VAE round trip (:meth:`img2img_lab.models.families.base.Family.vae_roundtrip`) returns the
source encoded (latent sampled with the same generator) and decoded: what the model makes of the image with no
denoising at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from img2img_lab.engine.inpaint_options import cell_condition, composited
from img2img_lab.models.handle import as_model, cell_generator
from img2img_lab.plan.sweep_plan import Cell
from img2img_lab.plan.schema import Produced


@dataclass
class CellOutput:
    """What running a cell produced: the image, wall time, how it was made, and the safety flag."""

    image: "PIL.Image.Image"  # noqa: F821
    seconds: float
    produced: str  # a Produced value: "diffusion" or "vae_roundtrip"
    nsfw_flagged: bool | None = None


def run_cell(model, cell: Cell, source, *, on_step=None, condition: dict | None = None) -> CellOutput:
    """Generate one cell with the reference (per-cell) runner; ``model`` is a model handle or a diffusers pipeline.

    ``source`` is the prepared RGB PIL image (:func:`img2img_lab.images.load_image`); ``condition`` its
    ``mask_image`` / ``control_image`` where the cell's mode and pipeline take them. ``on_step``, if
    given, is called as ``on_step(done, total)`` after every denoising step (diffusers'
    ``callback_on_step_end``, which leaves the latents untouched), e.g. to drive a progress bar.

    >>> output = run_cell(pipe, plan.cells()[1], source)
    >>> output.produced, output.image.size
    ('diffusion', (64, 64))
    """
    runner = as_model(model).for_mode(cell.mode)
    runner.use_scheduler(cell.scheduler)
    started = time.perf_counter()
    condition = cell_condition(cell, condition)
    if cell.zero_step:
        image = runner.family.vae_roundtrip(source, generator=cell_generator(cell.seed))
        image = composited(runner.pipe, cell, source, condition, image, pipeline_pasted=False)
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
        image=composited(runner.pipe, cell, source, condition, result.images[0]),
        seconds=time.perf_counter() - started,
        produced=Produced.DIFFUSION.value,
        nsfw_flagged=None if flagged is None else bool(flagged[0]),
    )
