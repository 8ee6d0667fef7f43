"""GPU figures (issue #19): SD 1.5- and SDXL-sized random-weight pipelines, fp16, at 512² and 1024²:

    python benchmarks/gpu_speed.py [--models sd15,sdxl] [--pairs 3] [--sweeps 2] [--steps 20]
                                   [--only engine,pixels,metrics,sweeps,profile] [--dtype float16]
                                   [--tiny [--side 64]]

Each model is built offline from its released architecture (UNet, VAE and CLIP text encoders at full size, random
weights; a byte-level tokenizer), on the GPU in fp16. Per model, in this one run:

* engine: ``strengths x seeds`` cells (20 steps unless ``--steps``), a plain diffusers loop (``pipe(...)`` per
  cell) against the batched runner, ``--pairs`` interleaved pairs: seconds per image, min and median ratio;
* pixels: the batched outputs against the per-cell reference's (``verify``'s documented tolerance) and each runner
  run twice (bit-identical?);
* metrics: the five default fidelity metrics per image on the GPU (source side once, as a sweep does) and on the
  CPU, their share of the batched and the plain per-image generation time, and the GPU values' largest gap to the
  reference implementations (scikit-image, scipy) on two outputs;
* sweep: ``run_sweep`` with the five metrics against without, ``--sweeps`` interleaved pairs (min ratio): what a
  user's sweep pays for measuring, PNG writing and the store included.

Random weights make random images: the figures are speed, not quality. ``--tiny`` shrinks every width (a CPU
smoke test of this script). Needs a CUDA GPU otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

METRICS = ["ssim", "ms_ssim", "psnr", "delta_e", "edge_f1"]
PROMPT = "a yellow star on a black background"
#: Per model: image side, seeds, guidance, and the full-size (or --tiny) widths.
MODELS = {"sd15": {"side": 512, "seeds": 4, "guidance": 7.5}, "sdxl": {"side": 1024, "seeds": 2, "guidance": 5.0}}


def _clip(hidden: int, layers: int, heads: int, *, projection: bool, act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from img2img_lab._utils.bpe import write_clip_bpe

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_bpe(folder, [], model_max_length=77))
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            projection_dim=hidden, hidden_act=act, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def _vae(side: int, tiny: bool, scaling: float):
    from diffusers import AutoencoderKL

    blocks = (32, 64, 64, 64) if tiny else (128, 256, 512, 512)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=side,
                         block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=scaling)


def build_sd15(tiny: bool):
    """SD 1.5's architecture (runwayml/stable-diffusion-v1-5's configs), random weights; 859M-parameter UNet."""
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip(64 if tiny else 768, 2 if tiny else 12, 4 if tiny else 12, projection=False,
                                    act="quick_gelu")
    unet = UNet2DConditionModel(
        sample_size=64, layers_per_block=2, block_out_channels=(32, 64, 128, 128) if tiny else (320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=8)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionImg2ImgPipeline(vae=_vae(512, tiny, 0.18215), text_encoder=text_encoder,
                                          tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)


def build_sdxl(tiny: bool):
    """SDXL base 1.0's architecture, random weights; 2.6B-parameter UNet, two CLIP text encoders (768, 1280)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip(64 if tiny else 768, 2 if tiny else 12, 4 if tiny else 12, projection=False,
                                    act="quick_gelu")
    text_encoder_2, tokenizer_2 = _clip(128 if tiny else 1280, 2 if tiny else 32, 4 if tiny else 20,
                                        projection=True, act="gelu")
    hidden_2, time_dim = text_encoder_2.config.hidden_size, 256
    unet = UNet2DConditionModel(
        sample_size=128, layers_per_block=2, block_out_channels=(32, 64, 128) if tiny else (320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2) if tiny else (1, 2, 10),
        attention_head_dim=(2, 4, 8) if tiny else (5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + hidden_2,
        cross_attention_dim=text_encoder.config.hidden_size + hidden_2)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLImg2ImgPipeline(
        vae=_vae(1024, tiny, 0.13025), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True)


def _build(name: str, *, tiny: bool, device: str, dtype: str = "float16"):
    import torch

    from img2img_lab._utils.quiet import apply_quiet

    torch.manual_seed(0)
    with torch.device(device):
        pipe = (build_sd15 if name == "sd15" else build_sdxl)(tiny)
    apply_quiet()  # diffusers is imported now
    pipe.to(device, getattr(torch, dtype) if device == "cuda" else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync_timed(function) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _source(side: int):
    from PIL import Image

    from img2img_lab.resources import data_path

    path = data_path("sources", "red_circle_on_blue.png")
    return Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)


def _plan(image: Path, setting: dict, steps: int = 20):
    from img2img_lab.plan.sweep_plan import SweepPlan

    return SweepPlan(images=[str(image)], prompts=[PROMPT], strengths=[0.25, 0.5, 0.75, 1.0],
                     seeds=list(range(setting["seeds"])), guidance_scales=[setting["guidance"]], steps=[steps],
                     schedulers=["default"])


def engine(pipe, cells, source, pairs: int) -> tuple[list, float, float]:
    """Interleaved plain-loop / batched pairs; return (the batched outputs, plain and batched s per image)."""
    from img2img_lab.models.handle import as_model
    from img2img_lab.engine.batched import run_cells_batched
    from img2img_lab.models.handle import cell_generator

    def plain_loop():
        for cell in cells:
            pipe(prompt=cell.prompt, negative_prompt=cell.negative_prompt or None, image=source, strength=cell.strength,
                 num_inference_steps=cell.num_inference_steps, guidance_scale=cell.guidance_scale,
                 generator=cell_generator(cell.seed))

    stats: dict = {}
    outputs = run_cells_batched(as_model(pipe), cells, [source], stats=stats)
    plain_loop()  # warm-up of both paths (kernels, allocator)
    plain, batched, ratios = [], [], []
    for index in range(pairs):
        steps = [plain_loop, lambda: run_cells_batched(as_model(pipe), cells, [source], stats=stats)]
        seconds = [_sync_timed(step) for step in (steps if index % 2 == 0 else steps[::-1])]
        seconds = seconds if index % 2 == 0 else seconds[::-1]
        plain.append(seconds[0] / len(cells))
        batched.append(seconds[1] / len(cells))
        ratios.append(seconds[0] / seconds[1])
    print(f"  engine ({len(cells)} cells, {cells[0].num_inference_steps} steps, strengths 0.25-1.0): plain "
          f"{min(plain):.3f} s/image, batched {min(batched):.3f} s/image; ratio min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); UNet {stats['unet_calls']} calls for {stats['unet_samples']} "
          f"samples (max batch {stats['max_batch_size']}, halvings {stats['batch_halvings']})", flush=True)
    return [output.image for output in outputs], min(plain), min(batched)


def pixels(pipe, cells, source, batched_images) -> None:
    """What ``verify`` relies on, on this device: the batched runner against the per-cell reference (the documented
    tolerance), and each runner run twice (bit-identical?)."""
    import numpy as np

    from img2img_lab.engine.batched import batched_tolerance, run_cells_batched
    from img2img_lab.engine.per_cell import run_cell
    from img2img_lab.models.handle import as_model

    def arrays(images):
        return [np.asarray(image, dtype=np.int16) for image in images]

    def gaps(first, second):
        return [int(np.abs(a - b).max()) for a, b in zip(first, second)]

    alone = arrays([run_cell(pipe, cell, source).image for cell in cells])
    alone_again = arrays([run_cell(pipe, cell, source).image for cell in cells])
    again = arrays([output.image for output in run_cells_batched(as_model(pipe), cells, [source])])
    versus, tolerance = gaps(arrays(batched_images), alone), batched_tolerance(pipe.dtype)
    print(f"  pixels: batched vs per cell, largest gap {max(versus)}/255 (cells over the documented "
          f"{tolerance}/255 for {str(pipe.dtype).replace('torch.', '')}: {sum(g > tolerance for g in versus)} of "
          f"{len(cells)}; median gap "
          f"{statistics.median(versus)}); batched twice: largest gap {max(gaps(arrays(batched_images), again))}; "
          f"per cell twice: {max(gaps(alone, alone_again))}", flush=True)


def metrics(images, source, device: str, plain: float, batched: float) -> None:
    """Per-image metric cost on the GPU and the CPU, its share of generation, and agreement with the references."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
    from test_fidelity import REFERENCES

    from img2img_lab.metrics.fidelity import ReferenceCache
    from img2img_lab.metrics.measure import measure_pairs

    source_array = np.asarray(source)
    outputs = [np.asarray(image) for image in images]
    for where in dict.fromkeys((device, "cpu")):
        references = ReferenceCache(device=where)
        measure_pairs([source_array] * 2, outputs[:2], METRICS, references=references)  # warm-up, source side once
        seconds = min(_sync_timed(lambda: measure_pairs([source_array] * len(outputs), outputs, METRICS,
                                                        references=references)) for _ in range(3)) / len(outputs)
        each = {name: min(_sync_timed(lambda: measure_pairs([source_array] * len(outputs), outputs, [name],
                                                            references=references)) for _ in range(2)) / len(outputs)
                for name in METRICS}
        print(f"  metrics on {where}: {seconds * 1000:.1f} ms/image = {seconds / batched:.1%} of batched generation, "
              f"{seconds / plain:.1%} of the plain loop's ("
              + ", ".join(f"{name} {value * 1000:.1f}" for name, value in each.items()) + " ms alone)", flush=True)
    values = measure_pairs([source_array] * 2, outputs[:2], METRICS, references=ReferenceCache(device=device))
    gaps = {name: max(abs(float(values[name][i]) - REFERENCES[name](source_array, outputs[i])) for i in range(2))
            for name in METRICS if name != "psnr"}
    print("  agreement on " + device + " with the references (largest gap of 2 outputs): "
          + ", ".join(f"{name} {gap:.1e}" for name, gap in gaps.items()), flush=True)


def sweeps(pipe, plan, folder: Path, count: int) -> None:
    from img2img_lab.sweep.run import run_sweep

    run_sweep(plan, folder / "warm-up", pipe=pipe, progress=False, metrics=METRICS)  # first-sweep costs out
    plain, measured = [], []
    for index in range(count):
        runs = [(plain, ()), (measured, METRICS)]
        for times, names in (runs if index % 2 == 0 else runs[::-1]):
            out = folder / f"sweep-{len(names)}-{index}"
            times.append(_sync_timed(lambda: run_sweep(plan, out, pipe=pipe, progress=False, metrics=names)))
    print(f"  sweep of {len(plan.cells())} cells: without metrics {min(plain):.2f} s, with the five "
          f"{min(measured):.2f} s -> {min(measured) / min(plain):.3f}x", flush=True)


def profile_sweep(pipe, plan, folder: Path, lines: int = 30) -> None:
    """One more sweep with the five metrics under cProfile: where a sweep's time goes beside the engine."""
    import cProfile
    import pstats

    from img2img_lab.sweep.run import run_sweep

    profiler = cProfile.Profile()
    profiler.runcall(run_sweep, plan, folder / "profiled", pipe=pipe, progress=False, metrics=METRICS)
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved plain/batched pairs per model")
    parser.add_argument("--sweeps", type=int, default=2, help="interleaved sweep pairs (with / without metrics)")
    parser.add_argument("--tiny", action="store_true", help="shrunken widths, CPU allowed (a smoke test)")
    parser.add_argument("--side", type=int, help="image side (default: 512 for sd15, 1024 for sdxl; 64 with --tiny)")
    parser.add_argument("--only", default="engine,pixels,metrics,sweeps", help="parts to run (and 'profile')")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per cell")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="the pipeline's dtype on a GPU (float32 on the CPU)")
    args = parser.parse_args()

    import torch

    from img2img_lab._utils.quiet import quiet_model_libraries

    quiet_model_libraries()
    warnings.simplefilter("ignore")  # a random model's advisories (unknown words, low fidelity floor)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("gpu_speed: no CUDA GPU here. Fix: run it on a GPU machine, or pass --tiny for a CPU smoke test.")
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{gpu}; torch {torch.__version__}; {'tiny widths' if args.tiny else 'full-size architectures'}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            setting = MODELS[name]
            side = args.side or (64 if args.tiny else setting["side"])
            started = time.perf_counter()
            pipe = _build(name, tiny=args.tiny, device=device, dtype=args.dtype)
            parameters = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
            print(f"{name}: {type(pipe).__name__}, UNet {parameters:.0f}M parameters, {pipe.unet.dtype}, {side}² "
                  f"(built in {time.perf_counter() - started:.1f} s)", flush=True)
            source = _source(side)
            image = Path(scratch) / f"{name}-source.png"
            source.save(image)
            plan = _plan(image, setting, args.steps)
            if any(part in args.only for part in ("engine", "metrics", "pixels")):
                images, plain, batched = engine(pipe, plan.cells(), source, args.pairs)
            if "pixels" in args.only:
                pixels(pipe, plan.cells(), source, images)
            if "metrics" in args.only:
                metrics(images, source, device, plain, batched)
            if "sweeps" in args.only:
                sweeps(pipe, plan, Path(scratch) / name, args.sweeps)
            if "profile" in args.only:
                profile_sweep(pipe, plan, Path(scratch) / name)
            del pipe
            torch.cuda.empty_cache() if device == "cuda" else None


if __name__ == "__main__":
    main()
