"""Inpainting the background vs img2img on the embedded shapes-world model, measured by the oracle (issues #30, #41).

"Swap the background, keep the product": 3 sources x 2 background prompts x 3 seeds, each strength run as plain
img2img and as inpainting with the oracle's subject mask (background repainted; diffusers'
StableDiffusionInpaintPipeline on the same 4-channel UNet: latent blending), bare and as people's tools run it
(composited, mask blur 4, both). Prints, per mode and strength, the
share of images that keep the subject (``oracle_subject_kept``) and show the prompt's background
(``oracle_background_match``), both, and the mean seam (:mod:`img2img_lab.metrics.seams`). Run: ``python benchmarks/inpaint_vs_img2img.py [OUT]`` (about a minute on
2 CPU cores).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import img2img_lab  # noqa: F401
from img2img_lab.calibration.modes import variant_name
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep

SOURCES = {"red_circle_on_blue": ["a red circle on a yellow background", "a red circle on a white background"],
           "green_triangle_on_yellow": ["a green triangle on a blue background",
                                        "a green triangle on a white background"],
           "white_star_on_red": ["a white star on a green background", "a white star on a black background"]}
STRENGTHS = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0]
METRICS = ["oracle_subject_kept", "oracle_background_match", "seam"]


def main(out: Path) -> None:
    import pandas as pd

    pipe = load_pipeline(threads=2)
    root = Path(__file__).resolve().parents[1] / "data" / "sources"
    tables = []
    for name, prompts in SOURCES.items():
        plan = SweepPlan(images=[str(root / f"{name}.png")], prompts=prompts, strengths=STRENGTHS, seeds=[0, 1, 2],
                         guidance_scales=[2.0], steps=[20], modes=["img2img", "inpaint"],
                         inpaint={"mask": "oracle", "repaint": "background", "composite": [False, True],
                                  "mask_blur": [0, 4]})
        tables.append(run_sweep(plan, out / name, pipe=pipe, progress=False, metrics=METRICS))
    table = pd.concat(tables)
    table["both"] = (table.oracle_subject_kept == 1) & (table.oracle_background_match == 1)
    table["row"] = [variant_name({"mode": mode, "composite": composite, "mask_blur": blur}) for mode, composite, blur
                    in zip(table["mode"], table["composite"], table["mask_blur"])]
    summary = table.groupby(["row", "strength"])[[*METRICS, "both"]].mean().unstack("row")
    print(f"{len(table)} images; share of the 18 images per cell (3 sources x 2 prompts x 3 seeds)")
    print(summary.round(2).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="inpaint-study-")))
