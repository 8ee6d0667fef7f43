"""Sweep plans: expansion, diffusers' step arithmetic, zero-step and duplicate flags, validation, YAML."""

from __future__ import annotations

import math
import re

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

from img2img_lab.errors import PlanError
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan, strength_steps

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def test_expansion_order_and_size():
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["p", "q"], strengths=[0.2, 0.6], seeds=[0, 1, 2],
                     guidance_scales=[1.0, 7.5], schedulers=["ddim", "euler"], negative_prompts=["", "blurry"])
    cells = plan.cells()
    assert len(cells) == 2 * 2 * 2 * 3 * 2 * 2 * 2
    assert [cell.strength for cell in cells[:4]] == [0.2, 0.6, 0.2, 0.6]  # strength varies fastest
    assert [cell.seed for cell in cells[:4]] == [0, 0, 1, 1]
    assert cells[-1].image == "b.png" and cells[-1].image_index == 1
    assert len({(c.image, c.prompt, c.negative_prompt, c.strength, c.seed, c.guidance_scale, c.scheduler)
                for c in cells}) == len(cells)
    assert "192 cells" in plan.summary()


@pytest.mark.parametrize("steps", [1, 7, 20, 30, 50, 100])
def test_step_arithmetic_matches_the_diffusers_pipeline(steps, tiny_pipe):
    """init_steps/t_start equal StableDiffusionImg2ImgPipeline.get_timesteps for a dense strength grid."""
    original = tiny_pipe.scheduler
    tiny_pipe.scheduler = DDIMScheduler(**SD_BETAS)
    try:
        for index in range(0, 1001):
            strength = index / 1000
            tiny_pipe.scheduler.set_timesteps(steps)
            timesteps, executed = tiny_pipe.get_timesteps(steps, strength, "cpu")
            init_steps, t_start = strength_steps(steps, strength)
            assert executed == init_steps, (steps, strength)
            assert len(timesteps) == init_steps
            assert t_start == steps - init_steps
    finally:
        tiny_pipe.scheduler = original


def test_float_arithmetic_is_diffusers_own():
    assert strength_steps(100, 0.29) == (28, 72)  # 100 * 0.29 = 28.999999999999996
    assert strength_steps(20, 0.3) == (6, 14)  # 20 * 0.3 = 6.000000000000001
    assert strength_steps(20, 1.0) == (20, 0)


def test_zero_step_and_duplicate_flags():
    plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.0, 0.04, 0.05, 0.3, 0.34, 0.35, 1.0],
                     steps=[20], seeds=[0, 1])
    cells = plan.cells()[:7]
    assert [c.init_steps for c in cells] == [0, 0, 1, 6, 6, 7, 20]
    assert [c.zero_step for c in cells] == [True, True, False, False, False, False, False]
    assert [c.duplicate_of for c in cells] == [None, 0.0, None, None, 0.3, None, None]
    # Each seed is its own group: duplicates never point across seeds.
    assert [c.duplicate_of for c in plan.cells()[7:]] == [None, 0.0, None, None, 0.3, None, None]


@pytest.mark.parametrize(
    "strength, message",
    [
        (1.5, r"strength 1\.5 is outside \[0, 1\].*Fix: use values between 0 and 1"),
        (-0.1, r"strength -0\.1 is outside \[0, 1\]"),
        (float("nan"), r"strength nan is not finite"),
        (float("inf"), r"strength inf is not finite"),
        ("0.5", r"strength '0\.5' is not a number"),
        (True, r"strength True is not a number"),
    ],
)
def test_bad_strengths(strength, message):
    with pytest.raises(PlanError, match=message):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.2, strength])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seeds": [-1]}, r"seed -1 must be an integer"),
        ({"seeds": [1.5]}, r"seed 1\.5 must be an integer"),
        ({"steps": [0]}, r"steps 0 must be an integer in \[1, 1000\]"),
        ({"steps": [5000]}, r"steps 5000 must be an integer in \[1, 1000\]"),
        ({"guidance_scales": [-2]}, r"guidance scale -2 must be a number in \[0, 100\]"),
        ({"guidance_scales": [1e308]}, r"guidance scale 1e\+308 must be a number in \[0, 100\]"),
        ({"seeds": [True]}, r"seed True must be an integer"),
        ({"prompts": ["x" * 20_000]}, r"prompt 'xxx.*has 20,000 characters \(at most 10,000\)"),
        ({"seeds": list(range(10_001))}, r"'seeds' lists 10,001 values \(at most 10,000\)"),
        ({"schedulers": ["warp_drive"]}, r"unknown scheduler 'warp_drive'. Fix: use one of default, ddim"),
        ({"prompts": []}, r"'prompts' axis is empty"),
        ({"strengths": [0.5, 0.5]}, r"strengths lists 0\.5 twice"),
        ({"prompts": [3]}, r"prompt 3 is not text"),
        ({"max_side": 3}, r"max_side 3 must be an integer in \[8, 16384\]"),
        ({"resize_policy": "stretch"}, r"resize_policy 'stretch' must be"),
    ],
)
def test_bad_axes(changes, message):
    values = dict(images=["a.png"], prompts=["p"], strengths=[0.5])
    values.update(changes)
    with pytest.raises(PlanError, match=message):
        SweepPlan(**values)


def test_yaml_loading(tmp_path):
    config = tmp_path / "study" / "sweep.yaml"
    config.parent.mkdir()
    config.write_text(
        "name: folklore check\n"
        "image: ../sources/cat.png\n"  # alias + scalar
        "prompts: [a cat, a dog]\n"
        "strength: [0.1, 0.5, 0.9]\n"
        "seed: 3\n"
        "guidance: 4.5\n"
        "scheduler: euler_a\n"
        "steps: 25\n"
    )
    plan = SweepPlan.from_yaml(config)
    assert plan.images == [str(tmp_path / "study" / ".." / "sources" / "cat.png")]
    assert plan.seeds == [3] and plan.guidance_scales == [4.5] and plan.schedulers == ["euler_a"]
    assert plan.steps == [25] and plan.name == "folklore check"
    assert SweepPlan.from_dict(plan.to_dict()).cells() == plan.cells()


def test_a_control_image_per_controlnet_resolves_against_the_config(tmp_path):
    config = tmp_path / "study" / "sweep.yaml"
    config.parent.mkdir()
    config.write_text("images: [a.png]\nprompts: [p]\nstrengths: [0.5]\n"
                      "control: {image: [canny, depth, {a: maps/a.png}]}\n")
    plan = SweepPlan.from_yaml(config)
    assert plan.control["image"] == ["canny", str(tmp_path / "study" / "depth"),
                                     {"a": str(tmp_path / "study" / "maps" / "a.png")}]
    assert SweepPlan.from_dict(plan.to_dict()).control == plan.control
    for bad, message in (("[]", "control image is an empty list. Fix: name one control image per ControlNet"),
                         ("[canny, 3]", "control image 3 must be canny, silhouette, a folder")):
        config.write_text(f"images: [a.png]\nprompts: [p]\nstrengths: [0.5]\ncontrol: {{image: {bad}}}\n")
        with pytest.raises(PlanError, match=re.escape(message)):
            SweepPlan.from_yaml(config)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: [a.png\nprompts: x\n")
    with pytest.raises(PlanError, match=r"bad\.yaml: line 2, column 8: not valid YAML \(while parsing a flow sequence"):
        SweepPlan.from_yaml(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("images: a.png\nprompts: p\nstrengths: [0.5]\nstrenght: 0.2\n")
    with pytest.raises(PlanError, match=r"unknown config key 'strenght'"):
        SweepPlan.from_yaml(unknown)
    missing = tmp_path / "missing.yaml"
    missing.write_text("images: a.png\nprompts: p\n")
    with pytest.raises(PlanError, match=r"no 'strengths'"):
        SweepPlan.from_yaml(missing)
    python_tag = tmp_path / "tag.yaml"
    python_tag.write_text("images: !!python/object/apply:os.system ['echo hi']\nprompts: p\nstrengths: [0.5]\n")
    with pytest.raises(PlanError, match="not valid YAML"):  # the safe loader refuses code
        SweepPlan.from_yaml(python_tag)
    with pytest.raises(PlanError, match=r"does not exist"):
        SweepPlan.from_yaml(tmp_path / "none.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(PlanError, match="the config is empty"):
        SweepPlan.from_yaml(empty)


def test_noise_level_at_start_ddim_and_euler(tiny_pipe):
    model = as_model(tiny_pipe)
    ddim = model.scheduler("ddim")
    schedule = model.step_plan("ddim", 20, 0.5, width=32, height=32)
    assert (schedule.executed_steps, schedule.t_start, schedule.denoiser_evaluations) == (10, 10, 10)
    alpha_bar = float(ddim.alphas_cumprod[int(schedule.start_timestep)])
    assert schedule.sqrt_alpha_bar == pytest.approx(math.sqrt(alpha_bar), abs=1e-12)
    assert schedule.sigma == pytest.approx(math.sqrt((1 - alpha_bar) / alpha_bar), abs=1e-9)
    assert schedule.log_snr == pytest.approx(math.log(alpha_bar / (1 - alpha_bar)), abs=1e-9)

    euler = EulerDiscreteScheduler.from_config(model.scheduler("euler").config)
    schedule = model.step_plan("euler", 20, 0.5, width=32, height=32)
    euler.set_timesteps(20)
    assert schedule.sigma == pytest.approx(float(euler.sigmas[10]), rel=1e-6)
    assert schedule.sqrt_alpha_bar == pytest.approx(1 / math.sqrt(1 + float(euler.sigmas[10]) ** 2), rel=1e-6)

    # More strength, more noise: the signal share falls monotonically.
    levels = [model.step_plan("ddim", 20, s / 10, width=32, height=32).sqrt_alpha_bar for s in range(11)]
    assert all(a >= b for a, b in zip(levels, levels[1:])) and levels[0] == 1.0 and levels[-1] < 0.1


def test_pndm_repeats_a_timestep_and_runs_one_call_where_diffusers_counts_zero_steps(tiny_pipe):
    model = as_model(tiny_pipe)  # the tiny pipeline's own scheduler is PNDM (PLMS)
    assert model.step_plan("default", 20, 0.5, width=32, height=32).denoiser_evaluations == 11
    low = model.step_plan("default", 20, 0.04, width=32, height=32)
    # get_timesteps keeps PNDM's last timestep: the pipeline calls the UNet once, so it is not a zero-step cell
    assert (low.executed_steps, low.denoiser_evaluations, low.zero_step) == (0, 1, False)
    assert model.step_plan("default", 20, 0.0, width=32, height=32).denoiser_evaluations == 1  # even at 0
    zero = model.step_plan("ddim", 20, 0.0, width=32, height=32)  # DDIM keeps no timestep: nothing runs
    assert (zero.executed_steps, zero.denoiser_evaluations, zero.start_timestep, zero.sigma) == (0, 0, None, 0.0)
    assert zero.zero_step and zero.log_snr == math.inf


def test_a_missing_prompt_and_an_in_memory_image_are_named_with_their_fix():
    import numpy as np
    from PIL import Image

    with pytest.raises(PlanError, match=r'prompt None is no prompt.*Fix: write "" for the empty prompt'):
        SweepPlan(images=["a.png"], prompts=[None], strengths=[0.5])
    assert SweepPlan(images=["a.png"], prompts=[""], strengths=[0.5], negative_prompts=[None]).negative_prompts == [""]
    for image, shown in ((np.zeros((8, 8, 3), np.uint8), "<array uint8 (8, 8, 3)>"),
                         (Image.new("RGB", (8, 8)), "<PIL image RGB 8x8>")):
        with pytest.raises(PlanError, match=re.escape(shown) + r" is an image, not a file.*Fix: save it as a PNG"):
            SweepPlan(images=[image], prompts=["p"], strengths=[0.5])
