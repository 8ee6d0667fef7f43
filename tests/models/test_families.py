"""Every diffusers class a family module runs, measured right (issues #12, #30, #38).

Each class has a tiny random-weight pipeline declared by its family module (``tiny_pipelines``), saved with
``save_pretrained`` and loaded back through ``load_model``. A sweep over strengths x 2 seeds (inpainting with a mask
file, ControlNet and Control with Canny control images) must give, for every cell, the image of a plain pipeline call
with the same arguments, bit for bit, and record what the pipeline really ran: the timesteps seen by a hook on the
call, the start timestep and noise seen by a hook on the scheduler's ``add_noise`` / ``scale_noise``, pure-noise
starts of inpainting at strength 1, zero-step and duplicate flags derived from those sequences, and outputs of the
source's size. Every class of diffusers' two auto mappings is named by exactly one family module, and every class a
module runs has a tiny pipeline here.
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
from img2img_lab.metrics.edges import edge_map
from img2img_lab.models.families.base import call_parameters
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import TINY_FAMILIES, save_tiny_family

STRENGTHS = [0.0, 0.1, 0.3, 0.34, 0.6, 1.0]
STEPS = 4
#: info's native size: denoiser sample size x VAE factor (FLUX.1: the pipeline's default 128 x 2).
NATIVE = {"sd1": 32, "sd2-v": 32, "sdxl": 32, "sd3": 32, "flux-dev": 256, "flux-schnell": 256, "lcm": 32}
#: Tiny pipelines of classes img2img-lab refuses (tested by the refusal tests below).
REFUSED_TINY = ("flux-kontext",)
UNION_MODE = 3  # a union ControlNet's mode for the Canny control image (ControlNet++'s canny is 3)
SWEPT = tuple(name for name in TINY_FAMILIES if name not in REFUSED_TINY)
REPORT: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: save_tiny_family(name, root / name) for name in ("sd1", "sdxl", "sd3", "flux-dev", "flux-schnell",
                                                                   "lcm")}


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family-source")
    structured_image(32).save(folder / "source.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255  # the "subject": kept when the background is repainted
    (folder / "masks").mkdir()
    Image.fromarray(mask, mode="L").save(folder / "masks" / "source.png")
    return folder


@pytest.fixture
def source_path(source_files):
    return source_files / "source.png"


def _plain_call(pipe, source, strength, seed, guidance, **conditions):
    """What a user of this class would type (no img2img-lab code in the way), hooked
    (:func:`conftest.hooked_call`): returns (image, what ran). Qwen-Image guides through ``true_cfg_scale`` with a
    negative prompt (its docs: " " when there is none)."""
    kwargs = dict(image=source, prompt="a red cat", strength=strength, num_inference_steps=STEPS,
                  generator=torch.Generator("cpu").manual_seed(seed), **conditions)
    if type(pipe).__name__.startswith("QwenImage"):
        kwargs.update(true_cfg_scale=guidance, negative_prompt=" ")
    else:
        kwargs["guidance_scale"] = guidance
    if "height" in call_parameters(pipe):
        kwargs.update(height=source.height, width=source.width)
    return hooked_call(pipe, **kwargs)


def _conditions(model, source_files):
    """The mask (white: repainted, the background) and the Canny control image a plain call of this class takes."""
    source = Image.open(source_files / "source.png").convert("RGB")
    conditions = {}
    if model.inpaints:
        subject = np.asarray(Image.open(source_files / "masks" / "source.png")) > 127
        conditions["mask_image"] = Image.fromarray((~subject).astype(np.uint8) * 255, mode="L")
    if model.needs_control_image:
        edges = edge_map(source).astype(np.uint8) * 255
        conditions["control_image"] = Image.fromarray(np.stack([edges] * 3, -1), mode="RGB")
    if any(model.family.control_mode_counts()):  # a union ControlNet: the Canny map's mode
        conditions["control_mode"] = [UNION_MODE]
    return source, conditions


def _control(model) -> dict | None:
    """The plan's ``control:``: Canny edges, with their mode for a union ControlNet."""
    if not model.needs_control_image:
        return None
    return {"image": "canny", **({"control_modes": [UNION_MODE]} if any(model.family.control_mode_counts()) else {})}


@pytest.mark.parametrize("name", SWEPT)
def test_every_family_class_sweeps_like_a_plain_call(name, source_files, tmp_path, capsys):
    pipe = load_pipeline(str(save_tiny_family(name, tmp_path / name)), device="cpu", threads=1)
    model = as_model(pipe)
    if name in NATIVE:
        assert model.native_resolution() == NATIVE[name]
    guidance = 3.0
    inpaint = model.inpaints
    plan = SweepPlan(images=[str(source_files / "source.png")], prompts=["a red cat"], strengths=STRENGTHS,
                     seeds=[0, 1], guidance_scales=[guidance], steps=[STEPS], max_side=None,
                     modes=["inpaint" if inpaint else "img2img"],
                     inpaint={"mask": str(source_files / "masks"), "repaint": "background"} if inpaint else None,
                     control=_control(model))
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, engine="per-cell", progress=False)
    assert len(table) == len(STRENGTHS) * 2
    source, conditions = _conditions(model, source_files)
    model.use_scheduler("default")
    checks = {"bit-identical": 0, "steps": 0, "start noise": 0, "flags": 0}
    for seed, rows in table.groupby("seed"):
        first_by_run: dict[tuple, float] = {}
        for row in rows.sort_values("strength").to_dict("records"):
            stored = np.asarray(Image.open(tmp_path / "run" / row["output_path"]).convert("RGB"))
            assert stored.shape == (32, 32, 3), "outputs have the source's size"
            try:
                image, seen = _plain_call(pipe, source, row["strength"], int(seed), guidance, **conditions)
            except (ZeroStepCall, ValueError, IndexError):  # the pipeline cannot run it: no timestep is left
                assert row["zero_step"] and row["executed_steps"] == 0 and row["log_snr"] == math.inf, row
                assert row["start_from"] == "source"
                checks["flags"] += 1
                continue
            assert np.array_equal(stored, np.asarray(image)), (name, row["strength"], seed)
            checks["bit-identical"] += 1
            assert [float(value) for value in row["timesteps"].split(",")] == pytest.approx(seen["timesteps"],
                                                                                            rel=1e-5)
            assert row["unet_evaluations"] == len(seen["timesteps"]) and not row["zero_step"]
            checks["steps"] += 1
            _check_start_noise(row, seen, pure_noise=inpaint and row["strength"] == 1.0)
            checks["start noise"] += 1
            # Flags from the sequences actually run: a duplicate repeats an earlier strength's run exactly.
            canonical = first_by_run.setdefault(tuple(seen["timesteps"]), row["strength"])
            assert (None if pd_isna(row["duplicate_of"]) else row["duplicate_of"]) == (
                None if canonical == row["strength"] else canonical)
            checks["flags"] += 1
    assert checks["bit-identical"] >= 6
    if inpaint:
        assert set(table["inpaint_method"]) == {"masked-image channels" if name == "sd-inpaint-9" else "latent blend"}
        assert table["mask_hash"].notna().all() and set(table["repaint"]) == {"background"}
    if model.needs_control_image:
        assert table["control_hash"].notna().all()
        assert set(table["control_mode"].fillna("none")) == ({str(UNION_MODE)} if any(
            model.family.control_mode_counts()) else {"none"})
    _measure_and_draw(tmp_path / "run", checks)
    REPORT[name] = {check: f"{count} ok" for check, count in checks.items()}
    with capsys.disabled():
        print(f"\n[family] {name} ({type(pipe).__name__}): {REPORT[name]}; executed steps by strength "
              f"{dict(zip(STRENGTHS, table[table.seed == 0].executed_steps))}")


def _check_start_noise(row: dict, seen: dict, *, pure_noise: bool) -> None:
    if pure_noise:  # inpainting at 1: no add_noise at the first timestep, or at σ = 1
        assert row["start_from"] == "pure noise" and row["log_snr"] == -math.inf
        assert seen["start"] != seen["timesteps"][0] or seen["flow_sigma"] == 1.0, seen
        return
    assert row["start_from"] == "noised source" and seen["noise_after_step"] == 0
    assert row["start_timestep"] == pytest.approx(seen["start"], rel=1e-5)
    if seen["flow_sigma"] is not None:
        sigma = seen["flow_sigma"]
        assert row["flow_sigma"] == pytest.approx(sigma, rel=1e-6)
        assert row["log_snr"] == pytest.approx(2 * math.log((1 - sigma) / sigma) if sigma < 1 else -math.inf)


def _measure_and_draw(run, checks: dict) -> None:
    from img2img_lab.figures.grids import comparison_grid
    from img2img_lab.metrics.measure import measure_run

    measure_run(run, ["ssim", "psnr"], progress=False)
    measured = RunStore.open(run).read_table()
    assert measured["ssim"].notna().all() and measured["psnr"].notna().all()
    grid = comparison_grid(run, rows="seed", cols="strength", annotate=["ssim"])
    assert grid.width > 32 * len(STRENGTHS) and grid.height > 64
    checks["measure + grid"] = 1


def test_every_class_of_both_mappings_is_named_by_exactly_one_family_module():
    """A family is one module: every class of diffusers' two auto mappings (and every class a module names) belongs
    to exactly one module, which runs it, says it has no strength dial, or refuses it."""
    import importlib

    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, AUTO_INPAINT_PIPELINES_MAPPING

    from img2img_lab.models.families.base import Family
    from img2img_lab.models.registry import FAMILY_CLASSES

    owners: dict[str, list[str]] = {}
    for family in FAMILY_CLASSES:
        module = importlib.import_module(family.__module__)
        defined = [value for value in vars(module).values() if isinstance(value, type) and issubclass(value, Family)
                   and value.__module__ == module.__name__ and value.class_names()]
        assert defined == [family], module.__name__  # one family class per module
        for name in family.class_names():
            owners.setdefault(name, []).append(module.__name__.rsplit(".", 1)[1])
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
    mapped = {cls.__name__ for table in (AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, AUTO_INPAINT_PIPELINES_MAPPING)
              for cls in table.values()}
    assert len(mapped) == 45 and mapped - set(owners) == set()


def test_every_class_a_family_module_runs_has_a_tiny_pipeline_here():
    from img2img_lab.models.registry import FAMILIES, TINY_PIPELINES

    built = {type(TINY_PIPELINES[name]()).__name__ for name in SWEPT}
    assert set(FAMILIES) - built == set()
    assert len(FAMILIES) == 32 and len(SWEPT) == 36  # 32: SDXL's two union ControlNet pipelines (were refused)


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


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux-dev", "flux-schnell", "lcm"])
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
    import img2img_lab.models.loading as loading

    def explode(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert\ntriggered")

    monkeypatch.setattr(loading, "load_model", explode)
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: info failed: RuntimeError: CUDA error: device-side assert triggered (rerun with "
                   "`img2img-lab --debug info ...` for the traceback)"]
    with pytest.raises(RuntimeError, match="device-side assert"):
        main(["--debug", "info"])


def test_a_tiny_pipeline_is_built_for_inference_and_repeats_a_call_exactly():
    """Built from configs, a pipeline's text encoders were in training mode: T5's dropout made two identical SD3
    calls differ by up to 3/255 (the real-size benchmark's plain loop did not repeat itself). Every component is in
    evaluation mode now, as after ``from_pretrained``."""
    import torch

    from img2img_lab.testing import make_tiny_family

    pipe = make_tiny_family("sd3")
    assert not any(component.training for component in pipe.components.values()
                   if isinstance(component, torch.nn.Module))
    source = structured_image(32)

    def call():
        return np.asarray(pipe(image=source, prompt="a red cat", strength=0.5, num_inference_steps=2,
                               guidance_scale=7.0, height=32, width=32,
                               generator=torch.Generator().manual_seed(0)).images[0])

    assert np.array_equal(call(), call())
