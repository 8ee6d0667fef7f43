"""Every diffusers img2img family, measured right (issue #12).

Each family is a tiny random-weight pipeline built offline, saved with ``save_pretrained`` and loaded back through
``load_pipeline``. A sweep over strengths x 2 seeds must give, for every cell, the image of a plain pipeline call
with the same arguments (bit for bit), and record what the pipeline really ran: the timesteps seen by a hook on the
call, the start timestep and noise seen by a hook on the scheduler's ``add_noise`` / ``scale_noise``, zero-step and
duplicate flags derived from those sequences, and outputs of the source's size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ZeroStepCall, hooked_call, structured_image
from img2img_lab.cli.main import main
from img2img_lab.errors import PlanError
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing.tiny_families import TINY_FAMILIES, save_tiny_family

STRENGTHS = [0.0, 0.1, 0.25, 0.3, 0.34, 0.6, 1.0]
STEPS = 4
#: info's native size: denoiser sample size x VAE factor (FLUX.1: the pipeline's default 128 x 2).
NATIVE = {"sd1": 32, "sd2-v": 32, "sdxl": 32, "sd3": 32, "flux-dev": 256, "flux-schnell": 256, "lcm": 32}
REPORT: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: save_tiny_family(family, root / family) for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def source_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("family-source") / "source.png"
    structured_image(32).save(path)
    return path


def _plain_call(pipe, source, strength, seed, guidance):
    """A plain diffusers call, hooked (:func:`conftest.hooked_call`): returns (image, what ran)."""
    kwargs = dict(image=source, prompt="a red cat", strength=strength, num_inference_steps=STEPS,
                  guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed))
    if type(pipe).__name__ in ("StableDiffusion3Img2ImgPipeline", "FluxImg2ImgPipeline"):
        kwargs.update(height=source.height, width=source.width)
    return hooked_call(pipe, **kwargs)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_sweep_records_what_the_pipeline_runs(family, family_dirs, source_path, tmp_path, capsys):
    pipe = load_pipeline(str(family_dirs[family]), device="cpu")
    model = as_model(pipe)
    assert model.native_resolution() == NATIVE[family]
    guidance = 3.0
    plan = SweepPlan(images=[str(source_path)], prompts=["a red cat"], strengths=STRENGTHS, seeds=[0, 1],
                     guidance_scales=[guidance], steps=[STEPS], max_side=None)
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, engine="per-cell", progress=False)
    assert len(table) == len(STRENGTHS) * 2
    source = Image.open(source_path).convert("RGB")
    model.use_scheduler("default")
    checks = {"bit-identical": 0, "steps": 0, "start noise": 0, "flags": 0}
    for seed, rows in table.groupby("seed"):
        first_by_run: dict[tuple, float] = {}
        for row in rows.sort_values("strength").to_dict("records"):
            stored = np.asarray(Image.open(tmp_path / "run" / row["output_path"]).convert("RGB"))
            assert stored.shape == (32, 32, 3), "outputs have the source's size"
            try:
                image, seen = _plain_call(pipe, source, row["strength"], int(seed), guidance)
            except (ZeroStepCall, ValueError, IndexError):  # the pipeline cannot run it: no timestep is left
                assert row["zero_step"] and row["executed_steps"] == 0 and row["log_snr"] == math.inf, row
                checks["flags"] += 1
                continue
            assert np.array_equal(stored, np.asarray(image)), (family, row["strength"], seed)
            checks["bit-identical"] += 1
            recorded = [float(value) for value in row["timesteps"].split(",")]
            assert recorded == pytest.approx(seen["timesteps"], rel=1e-5)
            assert row["unet_evaluations"] == len(seen["timesteps"])
            assert row["start_timestep"] == pytest.approx(seen["start"], rel=1e-5)
            checks["steps"] += 1
            if seen["flow_sigma"] is not None:
                assert row["flow_sigma"] == pytest.approx(seen["flow_sigma"], rel=1e-6)
                assert row["log_snr"] == pytest.approx(2 * math.log((1 - seen["flow_sigma"]) / seen["flow_sigma"])
                                                       if seen["flow_sigma"] < 1 else -math.inf)
            checks["start noise"] += 1
            # Flags from the sequences actually run: a duplicate repeats an earlier strength's run exactly.
            canonical = first_by_run.setdefault(tuple(seen["timesteps"]), row["strength"])
            expected = None if canonical == row["strength"] else canonical
            assert (None if pd_isna(row["duplicate_of"]) else row["duplicate_of"]) == expected
            assert not row["zero_step"]
            checks["flags"] += 1
    from img2img_lab.figures.grids import comparison_grid
    from img2img_lab.metrics.measure import measure_run

    measure_run(tmp_path / "run", ["ssim", "psnr"], progress=False)
    measured = RunStore.open(tmp_path / "run").read_table()
    assert measured["ssim"].notna().all() and measured["psnr"].notna().all()
    grid = comparison_grid(tmp_path / "run", rows="seed", cols="strength", annotate=["ssim"])
    assert grid.width > 32 * len(STRENGTHS) and grid.height > 64
    checks["measure + grid"] = 1
    REPORT[family] = {name: f"{count} ok" for name, count in checks.items()}
    with capsys.disabled():
        print(f"\n[family] {family}: {REPORT[family]}; executed steps by strength "
              f"{dict(zip(STRENGTHS, table[table.seed == 0].executed_steps))}")


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_sd3_and_flux_follow_their_own_strength_arithmetic(family_dirs):
    """SD3 at 4 steps, strength 0.3: 2 steps from t=602 (SD arithmetic said 1 step from 8.9)."""
    sd3 = as_model(load_pipeline(str(family_dirs["sd3"]), device="cpu"))
    step = sd3.step_plan("default", 4, 0.3, width=32, height=32)
    assert (step.executed_steps, round(step.start_timestep), round(step.sigma, 2)) == (2, 602, 1.51)
    flux = as_model(load_pipeline(str(family_dirs["flux-dev"]), device="cpu"))
    small = flux.step_plan("default", 4, 1.0, width=32, height=32)
    large = flux.step_plan("default", 4, 1.0, width=256, height=256)
    assert small.timesteps != large.timesteps, "FLUX.1's dynamic shift (mu) depends on the image size"
    lcm = as_model(load_pipeline(str(family_dirs["lcm"]), device="cpu"))
    assert {lcm.step_plan("default", 4, s, width=32, height=32).executed_steps for s in STRENGTHS[1:]} == {4}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_log_snr_falls_monotonically_with_strength(family, family_dirs):
    model = as_model(load_pipeline(str(family_dirs[family]), device="cpu"))
    strengths = [s / 20 for s in range(2, 21)]  # from 0.1 (LCM needs 50 x strength >= 4 steps)
    levels = [model.step_plan("default", STEPS, s, width=32, height=32).log_snr for s in strengths]
    assert all(a >= b for a, b in zip(levels, levels[1:])), (family, levels)
    assert levels[0] > levels[-1]


def test_ignored_arguments_are_refused_never_keyed_twice(family_dirs, source_path):
    def plan(**axes):
        return SweepPlan(images=[str(source_path)], prompts=["a cat"], strengths=[0.5], steps=[4], **axes)

    lcm = as_model(load_pipeline(str(family_dirs["lcm"]), device="cpu"))
    with pytest.raises(PlanError, match="ignores negative prompts.*Fix: remove negative_prompts"):
        lcm.check_plan(plan(negative_prompts=["", "blurry"]))
    schnell = as_model(load_pipeline(str(family_dirs["flux-schnell"]), device="cpu"))
    with pytest.raises(PlanError, match="ignores the guidance scale.*Fix: list one guidance value"):
        schnell.check_plan(plan(guidance_scales=[1.0, 3.5]))
    assert "guidance_scale is recorded but not used" in schnell.check_plan(plan(guidance_scales=[0.0]))[0]
    sdxl = as_model(load_pipeline(str(family_dirs["sdxl"]), device="cpu"))
    with pytest.raises(PlanError, match=r"guidance scales \[0.0, 1.0\] all leave classifier-free guidance off"):
        sdxl.check_plan(plan(guidance_scales=[0.0, 1.0, 5.0]))
    with pytest.raises(PlanError, match="at guidance 0 classifier-free guidance is off"):
        sdxl.check_plan(plan(guidance_scales=[0.0, 5.0], negative_prompts=["", "blurry"]))
    assert sdxl.check_plan(plan(guidance_scales=[0.0])) == []  # SDXL-Turbo style: guidance 0, one negative
    with pytest.raises(PlanError, match="scheduler 'ddim' cannot run Stable Diffusion 3"):
        as_model(load_pipeline(str(family_dirs["sd3"]), device="cpu")).check_plan(plan(schedulers=["ddim"]))
    with pytest.raises(PlanError, match="strength 0.05 with 4 steps cannot run on Latent Consistency Model"):
        lcm.step_plan("default", 4, 0.05, width=32, height=32)


@pytest.mark.parametrize("family", ["flux-dev", "sd3", "lcm"])
def test_cli_sweep_measure_grid_for_flow_and_lcm_families(family, family_dirs, source_path, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"images: [{source_path}]\nprompts: [a red cat]\nstrengths: [0.0, 0.3, 0.6, 1.0]\n"
                      f"seeds: [0]\nguidance: 3.0\nsteps: 4\nmax_side: null\n")
    out = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(out), "--model", str(family_dirs[family]),
                 "--no-progress"]) == 0
    assert main(["measure", str(out), "--metrics", "ssim,psnr", "--no-progress"]) == 0
    assert main(["grid", str(out), "--annotate", "ssim", "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["curves", str(out), "--metric", "ssim", "--x", "log_snr", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["info", str(family_dirs[family])]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and f"native resolution: {NATIVE[family]} px" in captured.out
    table = RunStore.open(out).read_table()
    assert set(table["model_family"]) == {as_model(load_pipeline(str(family_dirs[family]))).family.name}
    assert table["ssim"].notna().all()


def test_a_broken_model_folder_gives_one_error_line(family_dirs, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken-flux"
    shutil.copytree(family_dirs["flux-dev"], broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err


def test_an_unexpected_failure_is_one_error_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import img2img_lab.models.loading as pipelines

    def explode(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert\ntriggered")

    monkeypatch.setattr(pipelines, "load_pipeline", explode)
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: info failed: RuntimeError: CUDA error: device-side assert triggered (rerun with "
                   "`img2img-lab --debug info ...` for the traceback)"]
    with pytest.raises(RuntimeError, match="device-side assert"):
        main(["--debug", "info"])
