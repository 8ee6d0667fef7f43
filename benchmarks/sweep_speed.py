"""Naive per-cell loop vs the batched runner, same cells, one process, one run.

    python benchmarks/sweep_speed.py                         # CPU: the embedded model, 10 strengths x 4 seeds
    python benchmarks/sweep_speed.py --gpu-sd15              # GPU: an SD-1.5-sized random pipeline, 512 px, fp16
    python benchmarks/sweep_speed.py --gpu-sd15 --tiny --device cpu   # the GPU path at toy sizes (tests)
    python benchmarks/sweep_speed.py --sdxl                  # CPU: a tiny random SDXL pipeline, 32 px

Prints for both runners: cells/s, their ratio, UNet evaluations executed, the largest pixel difference between
the two runners' images, and the batched runner's achieved UNet samples/s against the UNet's best batched
throughput measured in the same run (the same UNet timed alone on random inputs at the largest batch size).
"""

from __future__ import annotations

import argparse
import time

import img2img_lab  # noqa: F401  - torchvision shim first


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def best_unet_throughput(pipe, batch: int, *, repeats: int = 5) -> float:
    """UNet samples/s at ``batch`` samples per call on random latents and embeddings (warm, median of repeats)."""
    import torch

    unet = pipe.unet
    device, dtype = pipe.device, unet.dtype
    size = unet.config.sample_size
    latents = torch.randn(batch, unet.config.in_channels, size, size, device=device, dtype=dtype)
    length = pipe.tokenizer.model_max_length
    embeddings = torch.randn(batch, length, unet.config.cross_attention_dim, device=device, dtype=dtype)
    timestep = torch.tensor(500, device=device)
    times = []
    with torch.no_grad():
        for index in range(repeats + 1):
            _sync(device)
            started = time.perf_counter()
            unet(latents, timestep, encoder_hidden_states=embeddings, return_dict=False)
            _sync(device)
            if index:  # the first call warms up
                times.append(time.perf_counter() - started)
    times.sort()
    return batch / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=int, default=10, help="strengths 1/n .. 1 (default 10)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="default 20 (CPU) / 30 (--gpu-sd15)")
    parser.add_argument("--guidance", type=float, default=None, help="default 2 (embedded) / 7.5 (SD)")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--gpu-sd15", action="store_true", help="SD-1.5-sized random pipeline, 512 px, fp16 on CUDA")
    parser.add_argument("--tiny", action="store_true", help="with --gpu-sd15: toy widths, 64 px (a CPU test)")
    parser.add_argument("--sdxl", action="store_true", help="a tiny random SDXL pipeline (two text encoders, "
                                                            "pooled embeddings and time ids per sample), 32 px")
    parser.add_argument("--device", default=None, help="default: cuda for --gpu-sd15, else cpu")
    parser.add_argument("--max-batch", type=int, default=None, help="UNet samples per call (default by device)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from img2img_lab.models.handle import as_model
    from img2img_lab.engine.batch_limits import DEFAULT_MAX_BATCH
    from img2img_lab.engine.batched import run_cells_batched
    from img2img_lab.engine.per_cell import run_cell
    from img2img_lab.images.intake import fit_to_model
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.widgets.strength_explorer import bundled_sources

    torch.set_num_threads(args.threads)
    if args.gpu_sd15:
        from img2img_lab.testing import make_sd15_sized_pipeline

        device = torch.device(args.device or "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--gpu-sd15 needs a CUDA GPU (or --device cpu --tiny for the CPU check of this path)")
        pipe = make_sd15_sized_pipeline(tiny=args.tiny)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = pipe.to(device=device, dtype=dtype)
        side = 64 if args.tiny else 512
        label = f"SD-1.5-sized random pipeline{' (tiny)' if args.tiny else ''}, {side} px, {str(dtype)[6:]}, {device}"
        steps, guidance = args.steps or 30, args.guidance or 7.5
        prompts = ["a watercolor painting of a lighthouse"]
    elif args.sdxl:
        from img2img_lab.testing import make_tiny_family

        device = torch.device(args.device or "cpu")
        pipe = make_tiny_family("sdxl").to(device)
        side = 32
        label = f"tiny random SDXL pipeline, {side} px, {str(pipe.unet.dtype)[6:]}, {device}"
        steps, guidance = args.steps or 20, args.guidance or 5.0
        prompts = ["a red lighthouse"]
    else:
        device = torch.device(args.device or "cpu")
        pipe = load_pipeline(None, device=str(device))
        side = 64
        label = f"embedded shapes-world model, {side} px, {str(pipe.unet.dtype)[6:]}, {device}"
        steps, guidance = args.steps or 20, args.guidance or as_model(pipe).recommended_guidance()
        prompts = ["a yellow star on a black background"]
    source = fit_to_model(Image.open(bundled_sources()["red_circle_on_blue"]).convert("RGB").resize((side, side)))
    strengths = [round((index + 1) / args.strengths, 4) for index in range(args.strengths)]
    plan = SweepPlan(images=["source.png"], prompts=prompts, strengths=strengths, seeds=list(range(args.seeds)),
                     guidance_scales=[guidance], steps=[steps], schedulers=[args.scheduler])
    cells = plan.cells()
    evaluations = sum((2 if guidance > 1 else 1) * cell.executed_steps for cell in cells)
    limit = args.max_batch or DEFAULT_MAX_BATCH.get(device.type, 16)
    print(f"{label}; {len(cells)} cells ({args.strengths} strengths x {args.seeds} seeds), {steps} steps, "
          f"{args.scheduler}, guidance {guidance:g}, max batch {limit} UNet samples")

    run_cell(pipe, cells[-1], source)  # warm-up (kernels, allocator) for both runners
    _sync(device)
    started = time.perf_counter()
    naive = [run_cell(pipe, cell, source).image for cell in cells]
    _sync(device)
    naive_seconds = time.perf_counter() - started

    stats: dict = {}
    _sync(device)
    started = time.perf_counter()
    batched = run_cells_batched(as_model(pipe), cells, [source], max_batch_size=limit, stats=stats)
    _sync(device)
    batched_seconds = time.perf_counter() - started
    difference = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b.image, np.int16)).max())
                     for a, b in zip(naive, batched))
    achieved = stats["unet_samples"] / batched_seconds

    print(f"naive per-cell loop: {naive_seconds:8.2f} s  {len(cells) / naive_seconds:8.2f} cells/s  "
          f"{evaluations} UNet evaluations in {evaluations // (2 if guidance > 1 else 1)} calls")
    print(f"batched runner:      {batched_seconds:8.2f} s  {len(cells) / batched_seconds:8.2f} cells/s  "
          f"{stats['unet_samples']} UNet evaluations in {stats['unet_calls']} calls")
    print(f"batched / naive: {naive_seconds / batched_seconds:.2f}x cells/s; max |batched - naive| = {difference}/255")
    if args.sdxl:  # its UNet also needs pooled embeddings and time ids; the ratio above is the figure
        print(f"UNet samples/s: batched runner {achieved:.1f}")
        return
    best = best_unet_throughput(pipe, limit)
    print(f"UNet samples/s: batched runner {achieved:.1f}, best batched UNet alone at batch {limit} {best:.1f} "
          f"-> {achieved / best:.0%} of the best batched UNet throughput")


if __name__ == "__main__":
    main()
