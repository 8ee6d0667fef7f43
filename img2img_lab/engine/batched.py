"""The batched runner: many img2img cells stepped together, reproducing the per-cell runner.

A strength sweep run one cell at a time leaves the hardware mostly idle: a 64-pixel image, or even one
512-pixel image, does not fill a GPU (or a CPU's vector units). :func:`run_cells_batched` runs all cells that
share a model, image size, number of steps and scheduler configuration along their common timestep grid:

* every source is VAE-encoded once and every (prompt, negative prompt) text-encoded once;
* each cell joins the loop at its own ``t_start`` (its strength); cells with the same ``t_start`` form a
  *start group* stepped by its own scheduler instance, so multistep (DPM++, UniPC, PNDM) and ancestral
  (Euler a, DDPM) schedulers keep correct per-group state;
* at each timestep every active cell goes into one denoiser call (chunked by ``max_batch_size`` samples; samples
  whose inputs differ in shape, e.g. Qwen-Image prompts of different lengths, in one call per shape), with its own
  prompt embeddings, guidance, mask or control image; cells without classifier-free guidance send one sample;
* every cell has its own CPU generator consuming random numbers in exactly the per-cell order (VAE latent
  sample, initial noise, then the scheduler's per-step noise), so seeds mean the same thing;
* decoding is batched; on CUDA out-of-memory the batch size is halved and the step retried.

The result equals :func:`img2img_lab.engine.per_cell.run_cell` up to floating-point differences of batched kernels
(tests, float32: max |difference| <= 1/255 per pixel for DDIM, Euler, Euler a, DPM++ 2M, PNDM and UniPC, and for
every batched family below; half precision on a GPU differs more, see :data:`BATCHED_TOLERANCE`).

What a family needs here — how a prompt is encoded, how a VAE latent becomes the initial latent, which samples a cell
sends and what the denoiser takes per sample, how its guidance combines their predictions, what happens after a step,
and how latents are decoded — its family module declares as its *batched conditioning*
(:meth:`img2img_lab.models.families.base.Family.batched_conditioning`):

* Stable Diffusion 1.x/2.x and SDXL img2img (the embedded model too; SDXL's pooled embeddings and added time ids,
  its VAE upcast where the model asks), their ControlNet img2img (each sample's control image, and its conditioning
  scale at each of its own steps), their inpainting (a 4-channel UNet's latent blend after every step; a
  9-channel UNet's mask and masked-source channels), ControlNet inpainting (both: the ControlNet on 4 channels), SDXL's
  union ControlNet (ControlNet++: each sample's maps and modes, :mod:`img2img_lab.models.families.controlnet`) and
  PAG (img2img, inpainting and ControlNet: a perturbed sample per cell, :mod:`img2img_lab.models.families.pag`);
* the flow-matching families: SD3 / 3.5 (classifier-free guidance; PAG too), FLUX.1 dev and schnell (the guidance
  embedding per sample, packed latents), Chroma (true CFG, per-sample attention masks), Qwen-Image (true CFG with
  its norm rescale, prompts of their own lengths) and Z-Image (``pos + g (pos - neg)`` from g > 0, list inputs),
  each with its inpainting pipeline (FLUX.1's latent blend,
  :class:`~img2img_lab.models.families.flow_inpaint.FlowInpaint`); FLUX.1 Control img2img and inpainting (each
  cell's control latents concatenated); FLUX.1 ControlNet img2img and inpainting (one ControlNet or several; a union
  one with each sample's mode).

LCM's strength shortens its own schedule, so its strengths share few timesteps: they step in lockstep instead, each
sample at its own timestep (the conditioning's ``per_sample_timesteps``). Other pipelines (a UNet with a guidance
embedding, a guidance-distilled Qwen-Image, a LoRA scale or an IP-Adapter set) use the per-cell runner;
:func:`batching_supported` says which and why (the manifest records it). Cells cropped around their mask run batched
on their crops (:mod:`img2img_lab.engine.mask_crop`).

>>> outputs = run_cells_batched(model, cells, sources)
>>> [output.produced for output in outputs[:3]]
['vae_roundtrip', 'diffusion', 'diffusion']
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field

from img2img_lab.engine.batch_limits import DEFAULT_MAX_BATCH
from img2img_lab.engine.denoiser_calls import BatchSize, grouped_outputs, is_oom
from img2img_lab.engine.inpaint_options import cell_condition, composited
from img2img_lab.engine.per_cell import CellOutput
from img2img_lab.models.families.stable_diffusion import TextConditioning
from img2img_lab.models.handle import ModelHandle, cell_generator
from img2img_lab.plan.axes import chunk_key
from img2img_lab.plan.sweep_plan import Cell
from img2img_lab.plan.schema import Produced

#: The engine's documented tolerance, per dtype: a batched cell's pixels differ from the per-cell reference's by at
#: most this many levels (of 255). Measured worst cells: float32 1/255 (CPU: the embedded model, every tiny family);
#: float16 4/255 and bfloat16 31/255 (an H100, random-weight SD 1.5- and SDXL-sized pipelines, 20 steps,
#: ``benchmarks/gpu_speed.py``: half precision rounds differently in each batch's kernels and the steps amplify it),
#: so half precision's entries are twice the worst seen. Regenerating a batched cell with its recorded batch is
#: bit-identical (on that H100 as well); ``verify`` applies this tolerance only where the recorded batch cannot be
#: regenerated (its record or a member's row is elsewhere).
BATCHED_TOLERANCE = {"float32": 1, "float64": 1, "float16": 8, "bfloat16": 62}


def batched_tolerance(dtype) -> int:
    """:data:`BATCHED_TOLERANCE` for a dtype (a torch dtype or its name; an unknown one gets the largest).

    >>> import torch
    >>> batched_tolerance(torch.float32), batched_tolerance("float16"), batched_tolerance("torch.bfloat16")
    (1, 8, 62)
    """
    return BATCHED_TOLERANCE.get(str(dtype).replace("torch.", ""), max(BATCHED_TOLERANCE.values()))


def batching_supported(model: ModelHandle) -> tuple[bool, str]:
    """``(supported, reason)``: whether :func:`run_cells_batched` reproduces this model's calls (its family declares
    a batched conditioning, and no LoRA scale or IP-Adapter changes the call).

    >>> batching_supported(model)
    (True, 'StableDiffusionImg2ImgPipeline')
    """
    conditioning, reason = model.family.batched_conditioning()
    if conditioning is None:
        return False, reason
    pipe = model.pipe
    if getattr(pipe, "cross_attention_kwargs", None) or getattr(pipe, "_cross_attention_kwargs", None):
        return False, "cross-attention kwargs (LoRA scale) are set: run per cell"
    if getattr(pipe, "image_encoder", None) is not None and getattr(pipe, "_ip_adapter_loaded", False):
        return False, "an IP-Adapter is loaded: run per cell"
    return True, reason


@dataclass
class _Active:
    """One cell in flight."""

    index: int  # position in the caller's list
    cell: Cell
    generator: object
    prompt_key: tuple
    cfg: bool
    fields: dict = field(default_factory=dict)  # per-sample inputs of the cell itself (FLUX.1's guidance)
    latents: object = None
    state: dict = field(default_factory=dict)  # what its conditioning keeps between steps (inpainting's blend)


@dataclass
class _StartGroup:
    """The cells that start at one ``t_start``: their own scheduler, set up as the pipeline sets it up for that
    strength (``set_timesteps`` then ``set_begin_index``), stepped together once the common grid reaches them."""

    scheduler: object
    offset: int  # position on the common timestep grid where these cells start
    timesteps: object  # the scheduler's timesteps from ``offset``
    step_arguments: dict  # ``eta`` where ``scheduler.step`` takes it
    uses_generator: bool  # whether ``scheduler.step`` takes the cells' generators
    members: list[_Active] = field(default_factory=list)


def _accepts(function, name: str) -> bool:
    return name in set(inspect.signature(function).parameters)



def _set_timesteps(model: ModelHandle, scheduler, steps: int, size, device, strength: float = 1.0) -> None:
    """Set ``scheduler`` up as the pipeline's ``retrieve_timesteps`` does for ``steps`` at ``size`` (width, height):
    with the family's extra arguments (FLUX.1's sigmas, a flow model's ``mu`` from its token count; LCM's strength,
    which shortens its own schedule)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

    width, height = size
    retrieve_timesteps(scheduler, steps, device,
                       **model.family.timestep_arguments(scheduler, steps, strength, width, height))


def _make_conditioner(model: ModelHandle, size):
    """The family's batched conditioning for ``model`` at ``size``, on the pipeline's execution device and in the
    denoiser's dtype."""
    conditioning, reason = model.family.batched_conditioning()
    if conditioning is None:
        raise ValueError(f"batched runner: {reason}")
    return conditioning(model.pipe, model.pipe._execution_device, model.family.denoiser().dtype, size=size)


def run_cells_batched(model: ModelHandle, cells: list[Cell], sources: list, *, max_batch_size: int | None = None,
                      on_step=None, stats: dict | None = None, on_work=None,
                      conditions: list | None = None) -> list[CellOutput]:
    """Generate ``cells`` (one scheduler name and steps value) with the batched runner; return one
    :class:`~img2img_lab.engine.per_cell.CellOutput` per cell, in order.

    ``sources[cell.image_index]`` is each cell's prepared source; all sources must have one size. ``conditions``, if
    given, holds per source the call inputs of the cells' mode (``control_image``, ``mask_image``:
    ``SourceCondition.call_inputs``). Zero-step cells store the VAE round trip, as in the per-cell runner.
    ``on_step(done, total)`` is called after every timestep of the shared loop. ``stats`` (a dict), if given, receives
    ``unet_calls``, ``unet_samples``, ``batch_halvings`` and ``seconds``. ``on_work(n)``, if given, is told each unit
    of work as it is done: a zero-step cell's VAE round trip is 1, and every shared timestep is one per cell it
    advanced (a sweep's progress in denoising steps, so its ETA holds from the first seconds).

    >>> stats = {}
    >>> outputs = run_cells_batched(model, plan.cells(), sources, max_batch_size=2, stats=stats)
    >>> len(outputs), outputs[1].image.size, stats["unet_samples"] >= stats["unet_calls"]
    (6, (64, 64), True)
    """
    return denoise_cells_batched(model, cells, sources, max_batch_size=max_batch_size, on_step=on_step, stats=stats,
                                 on_work=on_work, conditions=conditions)()


def denoise_cells_batched(model: ModelHandle, cells: list[Cell], sources: list, *, max_batch_size: int | None = None,
                          on_step=None, stats: dict | None = None, on_work=None, conditions: list | None = None):
    """:func:`run_cells_batched` up to the final latents; returns ``decode()``, which decodes them (with the safety
    checker and an inpainting's paste) into the outputs. A sweep calls it on its writer thread while the next chunk
    denoises, where the model allows (:func:`~img2img_lab.models.memory.decodes_beside_denoising`). A
    cell's ``seconds`` are its share of the chunk's denoising and decoding, without the time between them.

    >>> decode = denoise_cells_batched(model, plan.cells(), sources, max_batch_size=2)
    >>> [output.image.size for output in decode()][:2]
    [(64, 64), (64, 64)]
    """
    if not cells:
        return lambda: []
    model = _batch_model(model, cells, sources)
    started = time.perf_counter()
    conditioner = _make_conditioner(model, sources[cells[0].image_index].size)
    device = conditioner.device  # the pipeline's execution device (a walk over its modules: read once)
    outputs: list[CellOutput | None] = [None] * len(cells)
    limit = BatchSize(max_batch_size or DEFAULT_MAX_BATCH.get(device.type, 16))
    counters = {"unet_calls": 0, "unet_samples": 0}
    cell_conditions = [None if conditions is None else cell_condition(cell, conditions[cell.image_index])
                       for cell in cells]
    _zero_step_outputs(model, cells, sources, cell_conditions, outputs, on_work)
    active_cells = [(index, cell, cell_conditions[index]) for index, cell in enumerate(cells) if not cell.zero_step]
    groups = conditioning = None
    if active_cells:
        groups, conditioning = _start_groups(model, conditioner, active_cells, sources,
                                             steps=cells[0].num_inference_steps)
        with conditioner.denoising():
            _denoise(conditioner, groups, conditioning, limit=limit, counters=counters, on_step=on_step,
                     on_work=on_work)
    denoised = time.perf_counter() - started

    def decode() -> list[CellOutput]:
        began = time.perf_counter()
        if active_cells:
            _decode(conditioner, groups, conditioning, outputs, limit=limit)
            for index, cell, condition in active_cells:
                outputs[index].image = composited(model.pipe, cell, sources[cell.image_index], condition,
                                                  outputs[index].image)
        seconds = denoised + time.perf_counter() - began
        for index, _, _ in active_cells:
            outputs[index].seconds = seconds / len(active_cells)
        if stats is not None:
            stats.update(counters, batch_halvings=limit.halvings, seconds=seconds, max_batch_size=limit.value)
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        return outputs

    return decode


def _zero_step_outputs(model: ModelHandle, cells, sources, cell_conditions, outputs, on_work) -> None:
    """Zero-step cells: the VAE round trip, exactly as per cell."""
    for index, cell in enumerate(cells):
        if cell.zero_step:
            began, source = time.perf_counter(), sources[cell.image_index]
            image = model.family.vae_roundtrip(source, generator=cell_generator(cell.seed))
            image = composited(model.pipe, cell, source, cell_conditions[index], image, pipeline_pasted=False)
            outputs[index] = CellOutput(image=image, seconds=time.perf_counter() - began,
                                        produced=Produced.VAE_ROUNDTRIP.value)
            if on_work is not None:
                on_work(1)


def _batch_model(model: ModelHandle, cells: list[Cell], sources: list) -> ModelHandle:
    """The handle that runs the cells' mode with its scheduler set, once the cells are checked to form one batch."""
    model = model.for_mode(cells[0].mode)
    supported, reason = batching_supported(model)
    if not supported:
        raise ValueError(f"batched runner: {reason}")
    shared = {(*chunk_key(cell), sources[cell.image_index].size) for cell in cells}
    if len(shared) != 1:
        raise ValueError("run_cells_batched needs cells that share every axis a batch must share (one scheduler, one "
                         f"steps value, one mode...) and one image size per call (got {list(shared)}); group cells "
                         f"first.")
    width, height = sources[cells[0].image_index].size
    for cell in {cell.strength: cell for cell in cells if not cell.zero_step}.values():
        planned = model.step_plan(cell.scheduler, cell.num_inference_steps, cell.strength, width=width, height=height)
        if planned.t_start != cell.t_start:
            raise ValueError(f"cell at strength {cell.strength:g} starts at step {cell.t_start}, but this model's "
                             f"pipeline starts it at {planned.t_start}: plan the cells with the model's step plans "
                             f"(plan.cells(steps=source_steps(model, sources))).")
    model.use_scheduler(cells[0].scheduler)
    return model


# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.get_timesteps (a scheduler per start group)
def _start_groups(model: ModelHandle, conditioner: TextConditioning, active_cells, sources, *, steps: int):
    """Encode prompts and sources once; give every cell its initial latent (VAE sample, then noise, from its own
    generator, as ``prepare_latents`` does: ``conditioner.start_latents``) in a start group: one scheduler per
    ``t_start``, set up as the pipeline sets it up for that strength. Returns ``(groups, conditioning)``."""
    import torch

    size = sources[active_cells[0][1].image_index].size
    conditioning = conditioner.encode(sorted({(cell.prompt, cell.negative_prompt) for _, cell, _ in active_cells}),
                                      size)
    distributions = {index: conditioner.encode_source(sources[index])  # one encoder pass per source
                     for index in dict.fromkeys(cell.image_index for _, cell, _ in active_cells)}
    groups: dict[int, _StartGroup] = {}
    pristine = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)  # copied per group: 5x cheaper
    own_schedule = not model.family.applies_get_timesteps  # LCM: each strength sets its own timesteps
    for index, cell, condition in active_cells:
        key = cell.strength if own_schedule else cell.t_start
        group = groups.get(key)
        if group is None:
            scheduler = copy.deepcopy(pristine)
            _set_timesteps(model, scheduler, steps, size, conditioner.device,
                           strength=cell.strength if own_schedule else 1.0)
            offset = cell.t_start * scheduler.order
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(offset)
            group = groups[key] = _StartGroup(
                scheduler=scheduler, offset=offset, timesteps=scheduler.timesteps[offset:],
                step_arguments={"eta": 0.0} if _accepts(scheduler.step, "eta") else {},
                uses_generator=_accepts(scheduler.step, "generator"))
        member = _Active(index=index, cell=cell, generator=cell_generator(cell.seed),
                         prompt_key=(cell.prompt, cell.negative_prompt), cfg=conditioner.uses_cfg(cell))
        with torch.no_grad():
            member.latents, fields, member.state = conditioner.start_latents(
                group.scheduler, group.timesteps, distributions[cell.image_index], member.generator, cell=cell,
                condition=condition, source=sources[cell.image_index])
        member.fields = {**conditioner.sample_fields(cell), **fields}
        group.members.append(member)
    return groups, conditioning


def _model_inputs(conditioner: TextConditioning, live, conditioning, position: int):
    """Every live sample's model input and per-sample fields, ``(input, fields)`` (the conditioner's ``branches``: CFG
    cells send the negative, then the positive; PAG adds a perturbed one), and the layout ``(member, samples, t)``.
    Groups on schedules of their own (LCM) are at different timesteps: each sample then carries its own
    (``timestep``)."""
    import torch

    samples, layout = [], []
    for group in live:
        members, t = group.members, group.timesteps[position - group.offset]
        scaled = conditioner.model_input(group.scheduler, torch.cat([member.latents for member in members]), t)
        own = {"timestep": t.reshape(1).to(conditioner.device)} if conditioner.per_sample_timesteps else {}
        for row, member in enumerate(members):
            text = conditioning[member.prompt_key]
            branches = conditioner.branches(text, member.cfg)
            fields = {**member.fields, **own,
                      **conditioner.step_fields(member.cell, position - group.offset, len(group.timesteps))}
            samples.extend((scaled[row:row + 1], {**branch, **fields}) for branch in branches)
            layout.append((member, len(branches), t))
    return samples, layout


# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.__call__ (step 9: the denoising loop, classifier-free guidance)
def _denoise(conditioner: TextConditioning, groups, conditioning, *, limit, counters, on_step, on_work=None):
    """Step every start group along the common timestep grid (each group from its offset to the grid's end); at each
    position one denoiser batch for all live cells. Groups on schedules of their own (LCM) start together and step in
    lockstep, each at its own timestep."""
    import torch

    ends = {id(group): group.offset + len(group.timesteps) for group in groups.values()}
    total, first = max(ends.values()), min(group.offset for group in groups.values())
    for position in range(first, total):
        live = [group for group in groups.values() if group.offset <= position < ends[id(group)]]
        samples, layout = _model_inputs(conditioner, live, conditioning, position)
        noise = grouped_outputs(conditioner, samples, live[0].timesteps[position - live[0].offset], limit, counters)
        predictions, cursor = {}, 0
        for member, width, t in layout:
            predictions[member.index] = conditioner.combined(member.cell, noise[cursor:cursor + width], t, member.cfg)
            cursor += width
        for group in live:
            members, t = group.members, group.timesteps[position - group.offset]
            kwargs = dict(group.step_arguments)
            if group.uses_generator:
                kwargs["generator"] = [member.generator for member in members] if len(members) > 1 \
                    else members[0].generator
            with torch.no_grad():
                stepped = group.scheduler.step(torch.cat([predictions[member.index] for member in members]), t,
                                                  torch.cat([member.latents for member in members]), **kwargs,
                                                  return_dict=False)[0]
            for row, member in enumerate(members):
                member.latents = conditioner.after_step(group.scheduler, group.timesteps, position - group.offset,
                                                        stepped[row:row + 1], member.state)
        if on_step is not None:  # progress over the timesteps this batch actually runs
            on_step(position + 1 - first, total - first)
        if on_work is not None:  # one denoising step of every cell this timestep advanced
            on_work(sum(len(group.members) for group in live))


def _decode(conditioner: TextConditioning, groups, conditioning, outputs, *, limit):
    """Decode every cell's final latent in chunks (halving on CUDA out-of-memory) into ``outputs``."""
    import torch

    members = [member for group in groups.values() for member in group.members]
    decode_size, start = max(1, limit.value // 2), 0
    while start < len(members):
        chunk = members[start:start + decode_size]
        text_dtype = conditioning[chunk[0].prompt_key]["positive"]["encoder_hidden_states"].dtype
        try:
            decoded, flagged = conditioner.decode(torch.cat([member.latents for member in chunk]), text_dtype)
        except (RuntimeError, MemoryError) as error:
            if conditioner.device.type == "cuda" and is_oom(error) and decode_size > 1:
                decode_size //= 2
                continue
            raise
        denormalize = [True] * decoded.shape[0] if flagged is None else [not value for value in flagged]
        images = conditioner.pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=denormalize)
        for row, (member, image) in enumerate(zip(chunk, images)):
            outputs[member.index] = CellOutput(image=image, seconds=0.0, produced=Produced.DIFFUSION.value,
                                               nsfw_flagged=None if flagged is None else bool(flagged[row]))
        start += len(chunk)
