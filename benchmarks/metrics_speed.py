"""How long measuring takes compared with generating: 40 cells of 64x64 on the tiny test pipeline.

    python benchmarks/metrics_speed.py [--cells-strengths 10] [--seeds 4] [--threads 2]

Generates a 10-strength x 4-seed sweep with the reference runner, then measures every cell with
ssim, ms_ssim, psnr, delta_e, edge_f1 and LPIPS, and prints both times and their ratio (one run, one process).
LPIPS is timed with a randomly initialised AlexNet backbone when the real weights are absent: same
architecture and cost, values discarded (they are not LPIPS).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import img2img_lab  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from img2img_lab import metrics
    from img2img_lab.plan import SweepPlan
    from img2img_lab.store import RunStore
    from img2img_lab.sweep import run_sweep
    from img2img_lab.testing import make_tiny_pipeline

    torch.set_num_threads(args.threads)
    pipe = make_tiny_pipeline(sample_size=64)
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        from PIL import Image

        y, x = np.mgrid[0:64, 0:64] / 63
        source = np.stack([x, y, 1 - x], -1) * 255
        source[20:44, 20:44] = rng.uniform(0, 255, 3)
        Image.fromarray(source.astype(np.uint8)).save(Path(folder) / "source.png")
        strengths = [round((index + 1) / args.strengths, 4) for index in range(args.strengths)]
        plan = SweepPlan(images=[str(Path(folder) / "source.png")], prompts=["a red square"], strengths=strengths,
                         seeds=list(range(args.seeds)), steps=[args.steps], guidance_scales=[3.0], schedulers=["ddim"])
        run = Path(folder) / "run"
        started = time.perf_counter()
        table = run_sweep(plan, run, pipe=pipe, progress=False)
        generate = time.perf_counter() - started
        generated = int((table["produced"] == "diffusion").sum())

        store = RunStore.open(run)
        sources = [store.load_source(h) for h in table["source_hash"]]
        outputs = [store.load_output(row) for _, row in table.iterrows()]
        names = ["ssim", "ms_ssim", "psnr", "delta_e", "edge_f1"]
        started = time.perf_counter()
        metrics.measure_pairs(sources, outputs, names)
        lpips_real = metrics.lpips_status("alex")[0]
        metrics.lpips_distances(sources, outputs, random_backbone=not lpips_real)
        measure = time.perf_counter() - started

        print(f"cells: {len(table)} ({generated} generated), 64x64, {args.steps} steps, {args.threads} threads")
        print(f"generate: {generate:.2f} s ({generate / len(table) * 1000:.1f} ms/cell)")
        print(f"measure ({', '.join(names)}, lpips{'' if lpips_real else ' [random backbone, timing only]'}): "
              f"{measure:.3f} s ({measure / len(table) * 1000:.2f} ms/cell)")
        print(f"ratio measure / generate: {measure / generate:.3f} ({measure / generate * 100:.1f}%)")


if __name__ == "__main__":
    main()
