"""The batched engine per family (issue #42), on each family's tiny random pipeline, in one run:

    python benchmarks/family_batching.py [--pairs 3] [--threads 1] [--families sd1,flux-dev,...]

Per family: the same cells (2 prompts x strengths 0.25 / 0.5 / 0.75 / 1.0 x 4 seeds x guidance 1 and 3.5, 10 steps,
its default scheduler; a mask or a control image where the pipeline takes one; ``…-crop``: the cells cropped around
the mask, ``padding_mask_crop`` 4) run as a plain loop (one diffusers call per cell,
:func:`img2img_lab.engine.per_cell.run_cell`) and through the batched engine, ``--pairs`` interleaved pairs (the
order alternating). Printed: cells/s of each, the median ratio, denoiser calls and samples,
and the largest pixel difference between the two (levels of 255). Tiny pipelines measure the engine's bookkeeping
and batching at toy sizes, not a real model's speed (``benchmarks/real_size.py`` does that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

FAMILIES = ("sd1", "sdxl", "sd-controlnet", "sd-inpaint", "sd-inpaint-9", "sdxl-controlnet", "sdxl-inpaint", "sd3",
            "flux-dev", "flux-schnell", "flux-inpaint", "chroma-dynamic", "chroma-inpaint", "qwenimage",
            "qwenimage-inpaint", "zimage", "zimage-inpaint", "sd-controlnet-inpaint", "flux-control",
            "sdxl-controlnet-inpaint", "flux-control-inpaint", "flux-controlnet", "flux-controlnet-inpaint", "lcm",
            "sd-pag", "sdxl-pag", "sd-pag-inpaint", "sdxl-pag-inpaint", "sd-controlnet-pag-inpaint",
            "sdxl-controlnet-pag", "sd3-inpaint", "sd3-pag", "sd-controlnet-pooled", "flux-controlnet-xlabs",
            "sd-inpaint-crop", "flux-inpaint-crop", "sd-controlnet-multi", "sd3-inpaint-33",
            "flux-controlnet-inpaint-crop", "flux-controlnet-multi", "sdxl-controlnet-union",
            "sdxl-controlnet-union-inpaint", "flux-controlnet-union")
#: Union ControlNets (ControlNet++ img2img with two maps, the others one): each map's mode.
UNION_MODES = {"sdxl-controlnet-union": [[3, 1]], "sdxl-controlnet-union-inpaint": [3], "flux-controlnet-union": [0]}


def _conditions(family: str, sources):
    from PIL import Image

    conditions, settings = [{} for _ in sources], {}
    if "inpaint" in family:
        mask = Image.new("L", sources[0].size, 0)
        mask.paste(255, (8, 8, 24, 28))
        settings.update(modes=["inpaint"], inpaint={"mask": "m.png"})
        if family.endswith("-crop"):
            settings["inpaint"]["padding_mask_crop"] = [4]
        for condition in conditions:
            condition["mask_image"] = mask
    if "control" in family:  # a ControlNet, or FLUX.1 Control's concatenated control latents
        two = family.endswith("-multi") or family == "sdxl-controlnet-union"
        settings["control"] = {"image": ["c.png", "d.png"] if two else "c.png"}
        if family in UNION_MODES:
            settings["control"]["control_modes"] = UNION_MODES[family]
        for condition, source in zip(conditions, sources):  # mirrored (and flipped, for a second map)
            mirrored = source.transpose(0)
            condition["control_image"] = [mirrored, source.transpose(1)] if two else mirrored
    return (conditions if settings else None), settings


def measure(family: str, pairs: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import structured_image

    from img2img_lab.engine.batched import batching_supported, run_cells_batched
    from img2img_lab.engine.mask_crop import denoise_cropped_cells
    from img2img_lab.engine.per_cell import run_cell
    from img2img_lab.models.handle import as_model
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.sources import source_steps
    from img2img_lab.testing import make_tiny_variant

    pipe = make_tiny_variant(family.removesuffix("-crop"))  # -crop: the same pipeline, its cells cropped
    pipe.set_progress_bar_config(disable=True)
    model = as_model(pipe)
    sources = [structured_image(32, seed=0)]
    conditions, settings = _conditions(family, sources)
    plan = SweepPlan(images=["a.png"], prompts=["a red disc", "a small blue square"],
                     strengths=[0.25, 0.5, 0.75, 1.0], seeds=[0, 1, 2, 3], guidance_scales=[1.0, 3.5], steps=[10],
                     **settings)
    cells = [cell for cell in plan.cells(steps=source_steps(model, sources)) if not cell.zero_step]
    stats: dict = {}

    def loop():
        return [run_cell(model, cell, sources[0], condition=None if conditions is None else conditions[0])
                for cell in cells]

    def batched():
        if family.endswith("-crop"):  # on the crops around the mask, pasted back
            return denoise_cropped_cells(model.for_mode("inpaint"), cells, sources, conditions, stats=stats,
                                         max_batch_size=16)()
        return run_cells_batched(model, cells, sources, stats=stats, max_batch_size=16, conditions=conditions)

    times = {"loop": [], "batched": []}
    outputs = {}
    for index in range(pairs):
        order = ("loop", "batched") if index % 2 == 0 else ("batched", "loop")
        for name in order:
            started = time.perf_counter()
            outputs[name] = (loop if name == "loop" else batched)()
            times[name].append(time.perf_counter() - started)
    worst = max(int(np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max())
                for a, b in zip(outputs["loop"], outputs["batched"]))
    ratios = [plain / fast for plain, fast in zip(times["loop"], times["batched"])]
    return {"family": family, "class": batching_supported(model)[1], "cells": len(cells),
            "loop": len(cells) / statistics.median(times["loop"]),
            "batched": len(cells) / statistics.median(times["batched"]), "ratio": statistics.median(ratios),
            "ratios": ratios, "calls": stats["unet_calls"], "samples": stats["unet_samples"], "worst": worst}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"tiny random pipelines, 32 px, 10 steps, {args.threads} thread(s), {args.pairs} interleaved pairs\n")
    print("| family | pipeline | cells | loop cells/s | batched cells/s | batched / loop (median; pairs) | "
          "denoiser calls / samples | max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in args.families.split(","):
        row = measure(family, args.pairs)
        print(f"| {row['family']} | {row['class']} | {row['cells']} | {row['loop']:.1f} | {row['batched']:.1f} | "
              f"**{row['ratio']:.2f}x** ({', '.join(f'{r:.2f}' for r in row['ratios'])}) | {row['calls']} / "
              f"{row['samples']} | {row['worst']}/255 |", flush=True)


if __name__ == "__main__":
    main()
