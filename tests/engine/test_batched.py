"""The batched runner reproduces the per-cell runner (within 1/255) and is what sweeps use by default."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import structured_image
from img2img_lab.engine.batched import batching_supported, run_cells_batched
from img2img_lab.engine.denoiser_calls import BatchSize, denoiser_outputs
from img2img_lab.engine.per_cell import run_cell
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan

#: Largest per-pixel difference seen per scheduler (printed at the end of the module's tests).
MAX_SEEN: dict[str, int] = {}


def _difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m", "pndm", "unipc"])  # Euler: SDXL's tests
def test_batched_equals_per_cell_within_one_level(tiny_pipe, scheduler, capsys):
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    # Mixed strengths, incl. 0.3 / 0.34 (same executed steps at 10 steps) and a zero-step cell (0.05).
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc", "a blue square"],
                     strengths=[0.05, 0.3, 0.34, 1.0], seeds=[0, 1], guidance_scales=[1.0, 3.5],
                     steps=[10], schedulers=[scheduler])
    cells = [cell for cell in plan.cells() if cell.image_index == 0 or cell.seed == 0]
    stats = {}
    batched = run_cells_batched(as_model(tiny_pipe), cells, sources, stats=stats, max_batch_size=12)
    worst = 0
    for cell, output in zip(cells, batched):
        reference = run_cell(tiny_pipe, cell, sources[cell.image_index])
        assert output.produced == reference.produced
        difference = _difference(output.image, reference.image)
        if cell.zero_step:
            assert difference == 0  # the VAE round trip is the same call
        worst = max(worst, difference)
    MAX_SEEN[scheduler] = worst
    with capsys.disabled():
        print(f"\n[batched] {scheduler}: {len(cells)} cells, max |batched - per-cell| = {worst}/255, "
              f"{stats['unet_calls']} UNet calls, {stats['unet_samples']} UNet samples")
    assert worst <= 1
    # Every cell's UNet evaluations ran exactly once: guidance-1 cells send one sample, guidance-3.5 cells two.

    model = as_model(tiny_pipe)
    assert stats["unet_samples"] == sum(
        (2 if c.guidance_scale > 1 else 1)
        * model.step_plan(scheduler, 10, c.strength, width=32, height=32).denoiser_evaluations
        for c in cells if not c.zero_step)


def test_per_cell_generators_make_cells_independent_of_their_batch(tiny_pipe):
    """A cell's image does not depend on which other cells share its batch (ancestral noise included)."""
    sources = [structured_image(32, seed=0)]
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.5, 0.8], seeds=[0, 1, 2],
                     guidance_scales=[3.0], steps=[10], schedulers=["euler_a"])
    cells = plan.cells()
    together = run_cells_batched(as_model(tiny_pipe), cells, sources)
    alone = run_cells_batched(as_model(tiny_pipe), [cells[3]], sources)
    assert _difference(together[3].image, alone[0].image) <= 1
    assert _difference(together[0].image, together[2].image) > 1  # different seeds differ


def test_each_source_is_encoded_once_per_batch(tiny_pipe, monkeypatch):
    """The batched runner encoded a source once per cell of the batch (a dict comprehension over the cells): four
    encoder passes for four cells of one source, 3.4 s of a 54.6 s SD 1.5-sized sweep at 256 px."""
    model = as_model(tiny_pipe)
    passes = []
    encode = type(tiny_pipe.vae).encode
    monkeypatch.setattr(type(tiny_pipe.vae), "encode", lambda vae, pixels, **kw: (passes.append(1), encode(vae, pixels, **kw))[1])
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["p"], strengths=[0.5, 1.0], seeds=[0, 1], steps=[4],
                     guidance_scales=[3.0], schedulers=["ddim"])
    run_cells_batched(model, plan.cells(), sources)
    assert len(passes) == 2  # 8 cells, 2 sources


def test_denoiser_chunks_halve_on_cuda_out_of_memory():
    import torch

    calls = []

    class FakeConditioner:
        device = torch.device("cuda")

        def predict(self, sample, timestep, fields):
            calls.append(sample.shape[0])
            assert fields["encoder_hidden_states"].shape[0] == sample.shape[0]
            if sample.shape[0] > 4:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return sample * 2

    inputs, fields = torch.arange(10.0).reshape(10, 1, 1, 1), {"encoder_hidden_states": torch.zeros(10, 1, 1)}
    limit, counters = BatchSize(16), {"unet_calls": 0, "unet_samples": 0}
    output = denoiser_outputs(FakeConditioner(), inputs, 1, fields, limit, counters)
    assert torch.equal(output, inputs * 2)
    assert limit.value == 4 and limit.halvings == 2 and calls[:3] == [10, 8, 4]
    assert counters == {"unet_calls": 3, "unet_samples": 10}

    class CpuConditioner(FakeConditioner):
        device = torch.device("cpu")

    with pytest.raises(RuntimeError, match="out of memory"):  # only CUDA OOM is retried
        denoiser_outputs(CpuConditioner(), inputs, 1, fields, BatchSize(16), counters)


def test_batching_supported_says_why_not():
    from img2img_lab.models.families.tiny_parts import with_two_controlnets
    from img2img_lab.testing import make_tiny_family

    several = with_two_controlnets(make_tiny_family("sd-controlnet"))  # SD's several ControlNets: batched
    assert batching_supported(as_model(several)) == (True, "StableDiffusionControlNetImg2ImgPipeline")
    from diffusers import UNet2DConditionModel

    from img2img_lab.testing import make_tiny_variant

    inpaint = make_tiny_variant("sd3-inpaint-33")  # the mask and the masked source as channels: batched too
    assert batching_supported(as_model(inpaint)) == (True, "StableDiffusion3InpaintPipeline")
    lcm_unet = make_tiny_family("sd1")  # a UNet with a guidance embedding (an LCM-distilled SD UNet)
    settings = {key: value for key, value in lcm_unet.unet.config.items() if not key.startswith("_")}
    lcm_unet.unet = UNet2DConditionModel.from_config({**settings, "time_cond_proj_dim": 8})
    assert batching_supported(as_model(lcm_unet)) == (
        False, "the UNet has a guidance embedding (LCM-style): run per cell")


@pytest.mark.parametrize("family, scheduler", [("sd-pag", "euler_a"), ("sdxl-pag", "dpmpp_2m"), ("sd3-pag", "default")])
def test_batched_pag_equals_plain_calls_within_one_level(family, scheduler, capsys):
    """PAG's perturbed samples share calls with every other cell's samples (a mask tells the PAG layers which rows
    take the identity attention), with and without classifier-free guidance: within one level of plain calls, where
    PAG itself moves the image by far more; the denoiser's processors are the pipeline's again afterwards (SD3: its
    transformer's joint attention)."""
    from img2img_lab.sweep.sources import source_steps
    from img2img_lab.testing import make_tiny_family

    pipe = make_tiny_family(family)
    denoiser = pipe.transformer if family == "sd3-pag" else pipe.unet
    if family == "sd3-pag":  # a random transformer's attention is near uniform: PAG moved its image by 4 levels
        import torch

        with torch.no_grad():  # sharper queries and keys in the PAG layer make the identity attention matter
            layer = denoiser.transformer_blocks[1].attn
            for weight in (layer.to_q.weight, layer.to_k.weight):
                weight.mul_(6)
    model, processors = as_model(pipe), dict(denoiser.attn_processors)
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc"], strengths=[0.05, 0.5, 1.0], seeds=[0, 1],
                     guidance_scales=[1.0, 3.5], steps=[6], schedulers=[scheduler])
    cells = plan.cells(steps=source_steps(model, sources))
    stats = {}
    batched = run_cells_batched(model, cells, sources, stats=stats, max_batch_size=16)
    assert denoiser.attn_processors == processors
    worst = max(_difference(output.image, run_cell(pipe, cell, sources[cell.image_index]).image)
                for cell, output in zip(cells, batched))
    index = max(range(len(cells)), key=lambda index: (cells[index].strength, index))  # a cell denoised all the way
    cell = cells[index]
    without = pipe(**{**model.call_arguments(cell, sources[cell.image_index]), "pag_scale": 0.0}).images[0]
    effect = _difference(batched[index].image, without)
    with capsys.disabled():
        print(f"\n[batched pag] {family}: {len(cells)} cells, max |batched - plain call| = {worst}/255 (PAG itself: "
              f"{effect}/255), {stats['unet_calls']} UNet calls for {stats['unet_samples']} samples")
    assert worst <= 1 and effect > 10 and stats["unet_calls"] < stats["unet_samples"] / 4


def test_run_cells_batched_refuses_mixed_groups(tiny_pipe):
    plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], steps=[10, 12], schedulers=["ddim"])
    with pytest.raises(ValueError, match="one scheduler, one steps value"):
        run_cells_batched(as_model(tiny_pipe), plan.cells(), [structured_image(32)])


def test_sweep_uses_the_batched_engine_by_default_and_records_it(tiny_model_dir, source_png, tmp_path):
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    plan = SweepPlan(images=[str(source_png)], prompts=["a red disc"], strengths=[0.0, 0.3, 0.34, 0.7, 1.0],
                     seeds=[0, 1], guidance_scales=[3.0], steps=[10], schedulers=["euler_a"])
    batched = run_sweep(plan, tmp_path / "batched", pipe=pipe, progress=False)
    per_cell = run_sweep(plan, tmp_path / "per-cell", pipe=pipe, progress=False, engine="per-cell")
    manifest = RunStore.open(tmp_path / "batched").read_manifest()
    assert manifest["engine"]["name"] == "batched" and set(batched["engine"]) == {"batched"}
    assert RunStore.open(tmp_path / "per-cell").read_manifest()["engine"]["name"] == "per-cell"
    assert not set(batched["cell_key"]) & set(per_cell["cell_key"])  # cached separately
    for (_, a), (_, b) in zip(batched.iterrows(), per_cell.iterrows()):
        assert (a["strength"], a["seed"]) == (b["strength"], b["seed"])
        image_a = Image.open(tmp_path / "batched" / a["output_path"])
        image_b = Image.open(tmp_path / "per-cell" / b["output_path"])
        assert _difference(image_a, image_b) <= 1
    duplicate = batched[batched["strength"] == 0.34].iloc[0]
    assert duplicate["duplicate_of"] == 0.3 and duplicate["produced"].startswith("duplicate:")
    assert RunStore.open(tmp_path / "batched").read_manifest()["counts"]["reused"] == 2
    # Rerun: nothing generated.
    run_sweep(plan, tmp_path / "batched", pipe=pipe, progress=False)
    assert RunStore.open(tmp_path / "batched").read_manifest()["counts"]["generated"] == 0


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """A tiny random SDXL pipeline saved and loaded back through load_pipeline."""
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.testing import save_tiny_family

    return load_pipeline(str(save_tiny_family("sdxl", tmp_path_factory.mktemp("sdxl") / "sdxl")), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])
def test_batched_sdxl_equals_per_cell_within_one_level(tiny_sdxl, scheduler, capsys):
    """SDXL: pooled embeddings and added time ids per sample; guidance 0 and 1 (no CFG, Turbo-style) and 5. An
    ancestral and a multistep scheduler (every scheduler's state per start group is tested on SD 1.x above; what SDXL
    adds is its conditioning, the same for all)."""
    from img2img_lab.sweep.run import source_steps

    assert batching_supported(as_model(tiny_sdxl)) == (True, "StableDiffusionXLImg2ImgPipeline")
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc", "a blue square"],
                     strengths=[0.05, 0.3, 0.6, 1.0], seeds=[0, 1], guidance_scales=[0.0, 1.0, 5.0], steps=[10],
                     schedulers=[scheduler])
    cells = [cell for cell in plan.cells(steps=source_steps(as_model(tiny_sdxl), sources))
             if cell.image_index == 0 or (cell.seed == 0 and cell.prompt == "a red disc")]
    stats = {}
    batched = run_cells_batched(as_model(tiny_sdxl), cells, sources, stats=stats, max_batch_size=12)
    worst = max(_difference(output.image, run_cell(tiny_sdxl, cell, sources[cell.image_index]).image)
                for cell, output in zip(cells, batched))
    with capsys.disabled():
        print(f"\n[batched sdxl] {scheduler}: {len(cells)} cells, max |batched - per-cell| = {worst}/255, "
              f"{stats['unet_calls']} UNet calls")
    assert worst <= 1


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])
def test_batched_sdxl_is_exact_in_float64(scheduler):
    """In float64 the batched SDXL loop gives the per-cell images exactly: what float32 leaves (<= 1-2/255 on
    random weights) is batched-kernel rounding, not a different computation."""
    import torch

    from img2img_lab.testing import make_tiny_family

    pipe = make_tiny_family("sdxl").to(dtype=torch.float64)
    source = [structured_image(32, seed=1)]
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.3, 0.7, 1.0], seeds=[0, 1],
                     guidance_scales=[1.0, 5.0], steps=[12], schedulers=[scheduler])
    cells = plan.cells()
    for cell, output in zip(cells, run_cells_batched(as_model(pipe), cells, source, max_batch_size=8)):
        assert _difference(output.image, run_cell(pipe, cell, source[0]).image) == 0, cell
