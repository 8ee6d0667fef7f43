"""The batched engine on the flow-matching families (SD3, FLUX.1 dev and schnell, Chroma, Qwen-Image, Z-Image): every
cell within one level of a plain pipeline call at float32, with each family's own guidance (embedded, classifier-free,
true CFG with Qwen-Image's norm rescale, Z-Image's ``pos + g (pos - neg)`` from g > 0); and LCM, whose strengths step
in lockstep, each sample at its own timestep."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import structured_image
from img2img_lab.engine.batched import batching_supported, run_cells_batched
from img2img_lab.engine.per_cell import run_cell
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import source_steps
from img2img_lab.testing import make_tiny_family, make_tiny_variant

#: family -> (pipeline class, the guidance above which a cell also runs a negative sample; None: never)
FLOW_FAMILIES = {
    "sd3": ("StableDiffusion3Img2ImgPipeline", 1.0),
    "flux-dev": ("FluxImg2ImgPipeline", None),  # guidance is an embedding
    "flux-schnell": ("FluxImg2ImgPipeline", None),  # no guidance at all
    "chroma-dynamic": ("ChromaImg2ImgPipeline", 1.0),
    "qwenimage": ("QwenImageImg2ImgPipeline", 1.0),  # true_cfg_scale
    "zimage": ("ZImageImg2ImgPipeline", 0.0),
}


def _difference(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


@pytest.mark.parametrize("family", list(FLOW_FAMILIES))
def test_batched_flow_family_equals_plain_calls_within_one_level(family, capsys):
    pipe = make_tiny_family(family)
    model = as_model(pipe)
    class_name, negative_above = FLOW_FAMILIES[family]
    assert batching_supported(model) == (True, class_name)
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    # Prompts of different token lengths, a zero-step strength (0.05 at 6 steps), guidance with and without CFG.
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc", "a small blue square"],
                     strengths=[0.05, 0.5, 1.0], seeds=[0, 1], guidance_scales=[1.0, 3.5], steps=[6],
                     schedulers=["default"])
    cells = [cell for cell in plan.cells(steps=source_steps(model, sources))
             if cell.image_index == 0 or (cell.seed == 0 and cell.prompt == "a red disc")]
    stats = {}
    batched = run_cells_batched(model, cells, sources, stats=stats, max_batch_size=16)
    worst = max(_difference(output.image, run_cell(pipe, cell, sources[cell.image_index]).image)
                for cell, output in zip(cells, batched))
    with capsys.disabled():
        print(f"\n[batched flow] {family}: {len(cells)} cells, max |batched - plain call| = {worst}/255, "
              f"{stats['unet_calls']} transformer calls for {stats['unet_samples']} samples")
    assert worst <= 1
    # Every evaluation ran once: two samples where the family guides with a negative branch, one elsewhere.
    expected = sum((2 if negative_above is not None and cell.guidance_scale > negative_above else 1)
                   * model.step_plan("default", 6, cell.strength, width=32, height=32).denoiser_evaluations
                   for cell in cells if not cell.zero_step)
    assert stats["unet_samples"] == expected
    assert stats["unet_calls"] < stats["unet_samples"]


def test_lcm_strengths_step_in_lockstep_each_at_its_own_timestep(capsys):
    """LCM's strength shortens its own schedule (nine strengths at 4 steps: 23 distinct timesteps). Batched, every
    strength steps in lockstep with each sample at its own timestep and guidance embedding: 4 UNet calls for all,
    each cell within one level of its plain call."""
    pipe = make_tiny_family("lcm")
    model = as_model(pipe)
    assert batching_supported(model) == (True, "LatentConsistencyModelImg2ImgPipeline")
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc"], strengths=[0.0, 0.2, 0.5, 0.7, 1.0],
                     seeds=[0, 1], guidance_scales=[1.5, 8.0], steps=[4], schedulers=["default"])
    cells = plan.cells(steps=source_steps(model, sources))
    stats = {}
    batched = run_cells_batched(model, cells, sources, stats=stats, max_batch_size=64)
    worst = max(_difference(output.image, run_cell(pipe, cell, sources[cell.image_index]).image)
                for cell, output in zip(cells, batched))
    evaluations = sum(model.step_plan("default", 4, cell.strength, width=32, height=32).denoiser_evaluations
                      for cell in cells if not cell.zero_step)
    with capsys.disabled():
        print(f"\n[batched lcm] {len(cells)} cells, max |batched - plain call| = {worst}/255, "
              f"{stats['unet_calls']} UNet calls for {stats['unet_samples']} samples")
    assert worst <= 1 and stats["unet_samples"] == evaluations and stats["unet_calls"] == 4


def test_several_flux_controlnets_run_batched_and_union_ones_too():
    """Several FLUX.1 ControlNets and a union one run batched; a FluxMultiControlNetModel of one ControlNet (which
    diffusers runs once per control image) runs per cell and says why."""
    several = make_tiny_variant("flux-controlnet-inpaint-multi")
    assert batching_supported(as_model(several)) == (True, "FluxControlNetInpaintPipeline")
    union = make_tiny_variant("flux-controlnet-union")
    assert batching_supported(as_model(union)) == (True, "FluxControlNetImg2ImgPipeline")
    supported, why = batching_supported(as_model(make_tiny_variant("flux-controlnet-union-list")))
    assert not supported and "a FluxMultiControlNetModel of one ControlNet runs it once per control image" in why


def test_z_image_guidance_one_is_guidance():
    """Z-Image guides from g > 0 (``pos + g (pos - neg)``): guidance 1 differs from 0, and a plan sweeping 0.5 and 1 is
    not refused as 'identical images' (the family said CFG starts above 1, as it does for Chroma)."""
    model = as_model(make_tiny_family("zimage"))
    assert model.family.guidance_used(1.0) and model.family.guidance_used(0.5) and not model.family.guidance_used(0.0)
    source = structured_image(32, seed=0)
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[1.0], guidance_scales=[0.0, 1.0], steps=[4],
                     schedulers=["default"], negative_prompts=["blurry"])
    zero, one = (run_cell(model, cell, source).image for cell in plan.cells())
    assert _difference(zero, one) > 0
