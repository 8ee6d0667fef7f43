"""The strength translator (issue #31): each tool's rule, re-derived here from the tool's documented formula (not from
img2img-lab's code), must give the same start σ and executed steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from img2img_lab.cli.main import main
from img2img_lab.strength.mapping import scheduler_record, strength_map, tool_run, translate


def _sdxl_sigmas():
    """SDXL's training sigmas: scaled-linear betas 0.00085..0.012 over 1000 steps (its scheduler_config.json)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def _uniform_in_t(sigmas, n):
    """k-diffusion's get_sigmas / ComfyUI's normal scheduler: n timesteps evenly from 999 to 0, log-σ interpolated."""
    log_sigmas = np.log(sigmas)
    times = np.linspace(len(sigmas) - 1, 0, n)
    return [float(np.exp(np.interp(t, np.arange(len(sigmas)), log_sigmas))) for t in times] + [0.0]


def test_comfyui_denoise_on_sdxl_matches_its_documented_rule():
    # ComfyUI KSampler.set_steps: new_steps = int(steps / denoise); sigmas = calculate_sigmas(new_steps)[-(steps + 1):]
    expected = _uniform_in_t(_sdxl_sigmas(), int(30 / 0.6))[-31:]
    run = tool_run(scheduler_record("sdxl"), "comfyui", steps=30, strength=0.6,
                   settings={"comfyui": {"scheduler": "normal"}})
    assert run.executed_steps == 30
    assert run.start_sigma == pytest.approx(expected[0], rel=1e-9)
    assert run.sigmas == pytest.approx(tuple(expected), rel=1e-9)


@pytest.mark.parametrize("fixed, executed, index, total", [(False, 19, 30 - 18 - 1, 30), (True, 30, 50 - 29 - 1, 50)])
def test_a1111_img2img_with_and_without_fixed_steps(fixed, executed, index, total):
    # setup_img2img_steps: t_enc = int(0.6 * 30) = 18 on 30 sigmas, or (fixed) t_enc = 29 on int(30 / 0.6) = 50;
    # sample_img2img runs sigmas[steps - t_enc - 1:]
    expected = _uniform_in_t(_sdxl_sigmas(), total)[index:]
    run = tool_run(scheduler_record("sdxl"), "a1111-fixed-steps" if fixed else "a1111", steps=30, strength=0.6,
                   settings={"a1111": {"sampler": "Euler"}})  # no schedule of its own: k-diffusion's get_sigmas
    assert run.executed_steps == executed == len(expected) - 1
    assert run.start_sigma == pytest.approx(expected[0], rel=1e-9)


@pytest.mark.parametrize("size", [1024, 512])
def test_flux_dev_start_noise_depends_on_the_image_size(size):
    # diffusers' FLUX.1 img2img: sigmas = linspace(1, 1/N, N), mu linear in the packed token count (256 -> 0.5,
    # 4096 -> 1.15), time shift exp(mu) / (exp(mu) + 1/σ - 1); t_start = int(N - N·s) (no int on N·s)
    steps, strength = 28, 0.6
    tokens = (size // 16) ** 2
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    t_start = int(steps - steps * strength)
    sigma = np.linspace(1.0, 1 / steps, steps)[t_start]
    shifted = math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
    run = tool_run(scheduler_record("flux-dev"), "diffusers", steps=steps, strength=strength, size=size)
    assert run.executed_steps == steps - t_start == 17
    assert run.start_sigma == pytest.approx(shifted / (1 - shifted), rel=1e-5)  # σ/(1-σ): the noise-to-signal ratio
    assert strength_map("flux-dev", steps=steps, strengths=[strength], size=size).tool.tolist() == ["diffusers"]


def test_inverse_translations_round_trip():
    there = translate("sdxl", steps=30, strength=0.6, source="a1111", target="diffusers")
    back = translate("sdxl", steps=30, strength=there["strength"], source="diffusers", target="a1111")
    assert back["executed_steps"] == there["source_executed_steps"] == 19
    comfy = translate("sdxl", steps=30, strength=0.6, source="comfyui", target="diffusers")
    assert comfy["executed_steps"] == 19 and abs(comfy["log_snr"] - comfy["source_log_snr"]) < 0.05
    again = translate("sdxl", steps=30, strength=comfy["strength"], source="diffusers", target="comfyui")
    assert again["executed_steps"] == 30 and abs(again["log_snr"] - comfy["log_snr"]) < 0.05


def test_cli_prints_the_table_a_translation_and_one_line_errors(tmp_path, capsys):
    assert main(["strength", "sdxl", "--steps", "30", "--strength", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert "comfyui" in printed and "a1111-fixed-steps" in printed and "invokeai" in printed
    assert main(["strength", "sdxl", "--steps", "30", "--strength", "0.6", "--from", "comfyui", "--to", "diffusers",
                 "--plot", str(tmp_path / "map.png")]) == 0
    printed = capsys.readouterr().out
    assert "comfyui 0.6 (30 steps" in printed and (tmp_path / "map.png").stat().st_size > 10_000
    assert "simple" in printed and "only under one schedule" in printed  # ComfyUI's node default vs diffusers' Euler
    assert main(["strength", "sd15", "--steps", "30", "--strength", "0.6", "--invokeai-scheduler", "euler",
                 "--a1111-schedule", "exponential"]) == 0
    printed = capsys.readouterr().out
    assert "DPM++ 2M, exponential" in printed and "euler" in printed and "2.1705" in printed
    assert main(["strength", "sdxl", "--steps", "30", "--comfyui-scheduler", "beta"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown ComfyUI scheduler 'beta'" in error[0] and "Fix:" in error[0]
    assert main(["strength", "flux-dev", "--steps", "28", "--strength", "0.6", "--from", "comfyui", "--to",
                 "diffusers"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "flow-matching" in error[0] and "Fix:" in error[0]
    assert main(["strength", "no-such-model", "--steps", "30"]) == 2
    assert "not a bundled name" in capsys.readouterr().err
