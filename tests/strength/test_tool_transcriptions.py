"""Issue #43: each tool's strength rule, transcribed here from the tool's own code (AUTOMATIC1111 v1.10
``setup_img2img_steps`` / ``sample_img2img`` / ``get_sigmas`` with k-diffusion's schedule functions; ComfyUI@311c014
``KSampler.set_steps`` / ``calculate_sigmas``; InvokeAI@8e71a8a ``get_scheduler`` / ``init_scheduler``; diffusers'
``get_timesteps``) in torch, as the tools compute it, and never through img2img-lab's code, must give the executed
steps exactly and the start σ within 1e-4 (relative) on steps {20, 30, 50} × strengths {0 … 1} for SD 1.5 and SDXL."""

from __future__ import annotations

import math

import pytest
import torch

from img2img_lab.strength.mapping import scheduler_record, tool_run, translate

STEPS = (20, 30, 50)
STRENGTHS = (0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0)
MODELS = ("sd15", "sdxl")


class KDiffusionModel:
    """k-diffusion's ``DiscreteSchedule`` (A1111) / ComfyUI's ``ModelSamplingDiscrete``: training sigmas in torch."""

    def __init__(self, config):
        betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def t_to_sigma(self, t):
        t = t.double()
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp()

    def schedule(self, name, n):
        zero = torch.zeros(1, dtype=torch.float64)
        if n <= 0:
            return zero
        smin, smax = float(self.sigmas[0]), float(self.sigmas[-1])
        if name in ("uniform", "normal"):  # get_sigmas / normal_scheduler: t(σ_max) = 999 .. t(σ_min) = 0
            return torch.cat([self.t_to_sigma(torch.linspace(999, 0, n, dtype=torch.float64)), zero])
        if name == "karras":  # get_sigmas_karras, rho 7
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
            return torch.cat([(smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7, zero])
        if name == "simple":  # simple_scheduler
            ss = len(self.sigmas) / n
            return torch.tensor([float(self.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0], dtype=torch.float64)
        raise AssertionError(name)


def a1111(model, steps, strength, *, fixed, schedule):
    """setup_img2img_steps, then sample_img2img's sigmas[steps - t_enc - 1:] and t_enc + 1 steps."""
    if fixed:
        total = int(steps / min(strength, 0.999)) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total, t_enc = steps, int(min(strength, 0.999) * steps)
    sched = model.schedule(schedule, total)[total - t_enc - 1:]
    return len(sched) - 1, float(sched[0])


def comfyui(model, steps, denoise, *, scheduler):
    """KSampler.set_steps."""
    if denoise > 0.9999:
        sigmas = model.schedule(scheduler, steps)
    elif denoise <= 0.0:
        return 0, 0.0
    else:
        sigmas = model.schedule(scheduler, int(steps / denoise))[-(steps + 1):]
    return len(sigmas) - 1, float(sigmas[0])


INVOKEAI_MAP = {"euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
                "dpmpp_3m_k": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3})}


def invokeai(config, steps, strength, *, name):
    """get_scheduler (SCHEDULER_MAP's class from the model's config) and init_scheduler's start."""
    import diffusers

    class_name, extra = INVOKEAI_MAP[name]
    scheduler = getattr(diffusers, class_name).from_config({**config, **extra})
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    denoising_start = 1 - strength  # the UI, in doubles
    t_start_val = int(round(scheduler.config["num_train_timesteps"] * (1 - denoising_start)))
    t_start_idx = len([t for t in timesteps[:: scheduler.order] if t >= t_start_val]) * scheduler.order
    kept = timesteps[t_start_idx:]
    return (len(kept) // scheduler.order, float(scheduler.sigmas[t_start_idx]) if len(kept) else 0.0)


def diffusers_img2img(config, steps, strength):
    """StableDiffusion(XL)Img2ImgPipeline.get_timesteps with the checkpoint's own scheduler; the noise add_noise puts
    on the start latent as a noise-to-signal ratio."""
    import diffusers

    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    scheduler.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if not len(timesteps):
        return steps - t_start, 0.0
    alpha = scheduler.alphas_cumprod.double()[int(timesteps[0])]
    return steps - t_start, float(((1 - alpha) / alpha) ** 0.5)


def _grid():
    return [(model, steps, strength) for model in MODELS for steps in STEPS for strength in STRENGTHS]


@pytest.mark.parametrize("model", MODELS)
def test_every_tool_on_the_grid_matches_its_transcribed_code(model):
    record = scheduler_record(model)
    config, table = record["scheduler"], KDiffusionModel(record["scheduler"])
    checked = 0
    for steps in STEPS:
        for strength in STRENGTHS:
            expected = {
                ("diffusers", None): diffusers_img2img(config, steps, strength),
                ("comfyui", "normal"): comfyui(table, steps, strength, scheduler="normal"),
                ("comfyui", "karras"): comfyui(table, steps, strength, scheduler="karras"),
                ("comfyui", "simple"): comfyui(table, steps, strength, scheduler="simple"),
                ("invokeai", "euler"): invokeai(config, steps, strength, name="euler"),
                ("invokeai", "dpmpp_3m_k"): invokeai(config, steps, strength, name="dpmpp_3m_k"),
            }
            for fixed in (False, True):
                for sampler, schedule in (("Euler", "uniform"), ("DPM++ 2M", "karras")):
                    tool = "a1111-fixed-steps" if fixed else "a1111"
                    expected[(tool, sampler)] = a1111(table, steps, strength, fixed=fixed, schedule=schedule)
            for (tool, option), (executed, sigma) in expected.items():
                settings = {"comfyui": {"scheduler": option}} if tool == "comfyui" else \
                    {"invokeai": {"scheduler": option}} if tool == "invokeai" else \
                    {"a1111": {"sampler": option}} if tool.startswith("a1111") else {}
                run = tool_run(record, tool, steps=steps, strength=strength, settings=settings)
                where = f"{model} {tool} {option} steps={steps} strength={strength}"
                assert run.executed_steps == executed, where
                if model == "sd15" and tool == "diffusers" and not executed and strength > 0:
                    continue  # PNDM's kept timestep: test_pndm_low_strength_reports_what_runs
                assert run.start_sigma == pytest.approx(sigma, rel=1e-4, abs=0 if sigma else 1e-12), where
                checked += 1
    assert checked >= 3 * 8 * 10 - 3


def test_a1111_strength_zero_runs_one_step_from_the_last_sigma():
    # setup_img2img_steps: t_enc = int(0 * 30) = 0; sample_img2img keeps sigmas[30 - 0 - 1:] and runs t_enc + 1 steps
    record = scheduler_record("sdxl")
    for sampler, schedule in (("Euler", "uniform"), ("DPM++ 2M", "karras")):
        run = tool_run(record, "a1111", steps=30, strength=0.0, settings={"a1111": {"sampler": sampler}})
        last = float(KDiffusionModel(record["scheduler"]).schedule(schedule, 30)[29])
        assert run.executed_steps == 1 and run.start_sigma == pytest.approx(last, rel=1e-6)
        assert run.schedule == f"{sampler}, {schedule}"


def test_invokeai_builds_its_own_scheduler_and_rounds_the_start_in_doubles():
    sd15 = scheduler_record("sd15")  # the checkpoint's class is PNDM; InvokeAI's euler runs instead
    run = tool_run(sd15, "invokeai", steps=30, strength=0.6, settings={"invokeai": {"scheduler": "euler"}})
    assert (run.executed_steps, round(run.start_sigma, 2)) == (18, 2.17)
    # 1 - (1 - 0.3515) = 0.35149999...: the start value is round(351.4999...) = 351, so DDIM's timestep 351 (of
    # 1, 51, ..., 951 at 20 steps) is skipped; 352 would have kept it
    assert 1000 * (1 - (1 - 0.3515)) < 351.5
    ddim = {"invokeai": {"scheduler": "ddim"}}
    assert tool_run(sd15, "invokeai", steps=20, strength=0.3515, settings=ddim).executed_steps == 7
    assert tool_run(sd15, "invokeai", steps=20, strength=0.3525, settings=ddim).executed_steps == 8
    assert tool_run(sd15, "invokeai", steps=30, strength=0.6).schedule == "dpmpp_3m_k"  # the UI's default


def test_pndm_low_strength_reports_what_runs():
    # diffusers counts int(30 * 0.02) = 0 steps, but PNDM's timesteps end with a repeated t=1: get_timesteps keeps
    # it, the pipeline adds noise at t=1 and calls the UNet once
    record = scheduler_record("sd15")
    run = tool_run(record, "diffusers", steps=30, strength=0.02)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha = torch.cumprod(1 - betas, dim=0)[1]
    assert run.executed_steps == 0 and run.start_sigma == pytest.approx(float(((1 - alpha) / alpha) ** 0.5), rel=1e-4)
    assert "1 UNet call" in run.note and math.isfinite(run.log_snr)
    sdxl = tool_run(scheduler_record("sdxl"), "diffusers", steps=30, strength=0.02)  # Euler: nothing left, no noise
    assert sdxl.executed_steps == 0 and sdxl.start_sigma == 0.0 and not sdxl.note


def test_translation_says_when_only_a_schedule_makes_the_images_match():
    same = translate("sdxl", steps=30, strength=0.6, source="a1111-fixed-steps", target="comfyui",
                     settings={"a1111": {"sampler": "Euler"}, "comfyui": {"scheduler": "normal"}})
    assert same["log_snr"] == pytest.approx(same["source_log_snr"], abs=1e-9)  # int(30 / s) = 50 from 0.589 on
    assert same["same_schedule"] is True and not same["caveat"]
    other = translate("sdxl", steps=30, strength=0.6, source="a1111-fixed-steps", target="comfyui",
                      settings={"comfyui": {"scheduler": "normal"}})
    assert other["same_schedule"] is False and "karras" in other["caveat"] and "normal" in other["caveat"]
