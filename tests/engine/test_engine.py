"""The reference runner reproduces a plain diffusers call bit for bit; zero-step cells never crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2img_lab.engine.per_cell import run_cell
from img2img_lab.images.intake import load_image
from img2img_lab.models.handle import as_model
from img2img_lab.schedulers import make_scheduler
from img2img_lab.plan.sweep_plan import SweepPlan

from conftest import structured_image


def _direct_call(pipe, scheduler_name, source, **kwargs):
    """What a user would type, with no img2img-lab code in the way (fresh scheduler instance)."""
    pipe.scheduler = make_scheduler(as_model(pipe).base_scheduler_config, scheduler_name)
    return np.asarray(pipe(image=source, generator=torch.Generator("cpu").manual_seed(kwargs.pop("seed")),
                           **kwargs).images[0])


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "pndm", "euler_a", "dpmpp_2m", "unipc"])
def test_reference_runner_equals_plain_pipeline_call(tiny_pipe, scheduler):
    source = load_image(structured_image(32), size_multiple=2, warn_below=0)
    plan = SweepPlan(images=["x.png"], prompts=["a red circle"], negative_prompts=["", "blurry"],
                     strengths=[0.3, 0.75, 1.0], seeds=[0, 7], guidance_scales=[1.0, 3.5],
                     steps=[10], schedulers=[scheduler])
    cells = plan.cells()
    assert len(cells) == 24
    for cell in cells[::3] + cells[1::5]:  # a spread over every axis, incl. all strengths
        ours = np.asarray(run_cell(tiny_pipe, cell, source).image)
        theirs = _direct_call(tiny_pipe, scheduler, source, prompt=cell.prompt,
                              negative_prompt=cell.negative_prompt or None, strength=cell.strength,
                              num_inference_steps=cell.num_inference_steps, guidance_scale=cell.guidance_scale,
                              seed=cell.seed)
        assert ours.dtype == np.uint8 and ours.shape == (32, 32, 3)
        assert np.array_equal(ours, theirs), (scheduler, cell)


def test_seed_and_strength_change_the_output(tiny_pipe):
    source = load_image(structured_image(32), size_multiple=2, warn_below=0)
    cells = SweepPlan(images=["x"], prompts=["p"], strengths=[0.3, 0.9], seeds=[0, 1], steps=[10],
                      schedulers=["ddim"]).cells()
    images = [np.asarray(run_cell(tiny_pipe, cell, source).image) for cell in cells]
    assert not np.array_equal(images[0], images[1])  # strength
    assert not np.array_equal(images[0], images[2])  # seed
    again = np.asarray(run_cell(tiny_pipe, cells[0], source).image)
    assert np.array_equal(images[0], again)  # determinism


@pytest.mark.parametrize("strength", [0.0, 0.04])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "pndm"])
def test_zero_step_cells_return_the_vae_round_trip(tiny_pipe, scheduler, strength):
    source = load_image(structured_image(32), size_multiple=2, warn_below=0)
    (cell,) = SweepPlan(images=["x"], prompts=["p"], strengths=[strength], steps=[20],
                        schedulers=[scheduler]).cells()
    assert cell.zero_step and cell.init_steps == 0
    output = run_cell(tiny_pipe, cell, source)
    assert output.produced == "vae_roundtrip"
    expected = as_model(tiny_pipe).family.vae_roundtrip(source, generator=torch.Generator("cpu").manual_seed(0))
    assert np.array_equal(np.asarray(output.image), np.asarray(expected))


def test_diffusers_itself_crashes_on_zero_steps(tiny_pipe):
    """Why zero-step cells are intercepted: the plain call fails deep inside diffusers (DDIM)."""
    source = load_image(structured_image(32), size_multiple=2, warn_below=0)
    tiny_pipe.scheduler = make_scheduler(as_model(tiny_pipe).base_scheduler_config, "ddim")
    with pytest.raises(RuntimeError, match=r"cannot reshape tensor of 0 elements"):  # an empty latent batch
        tiny_pipe(image=source, prompt="p", strength=0.04, num_inference_steps=20,
                  generator=torch.Generator("cpu").manual_seed(0))
