"""The "pick the right mode" table of the embedded shapes-world model, every mode people run (issue #41).

Rows: img2img; inpainting of the background as diffusers runs it bare, composited (the source pasted back outside the
mask, as AUTOMATIC1111, Forge and InvokeAI's canvas do), with a blurred mask (4 px), and both; and ControlNet +
img2img with the project's silhouette ControlNet (``model: embedded-controlnet``, ``control: {image: silhouette}``)
at conditioning scales 0.5 and 1. Each row is calibrated like every other (``data/configs/modes.yaml``: the product
sources, coarse grid + refinement, two-stage bootstrap 95% CIs) and its recommendations are checked on the config's
held-out pairs. Afterwards the seam (:mod:`img2img_lab.metrics.seams`) of every inpainted image is measured against the
oracle's subject mask and summarised per row.

Run: ``python benchmarks/mode_table.py [OUT] [--quick]`` (OUT default: runs/mode-table; about 20 minutes on 2 CPU cores).
Prints the mode table, the held-out checks, the folklore verdicts and the seam per row; writes
``OUT/calibration/modes.md|csv|png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import img2img_lab  # noqa: F401
from img2img_lab.calibration.modes import (ModeCalibration, calibrate_modes, folklore_modes, mode_reference_table,
                                           text_to_image_check)
from img2img_lab.calibration.procedure import calibrate, load_config, validate
from img2img_lab.models.loading import load_model
from img2img_lab.plan.sweep_plan import SweepPlan

CONFIG = Path(__file__).resolve().parents[1] / "data" / "configs" / "modes.yaml"
CONTROL_SCALES = (0.5, 1.0)
HELD_OUT_SEEDS = (0, 1, 2)


def controlnet_rows(plan, settings, out: Path) -> tuple[dict, list]:
    """Calibrate ControlNet + img2img at each conditioning scale into ``out`` (its own run folder: another model),
    and check each on the held-out pairs."""
    model = load_model("embedded-controlnet", threads=2)
    results, checks = {}, []
    held_out = [(pair["image"], pair["prompt"]) for pair in settings.held_out]
    for scale in CONTROL_SCALES:
        control = {"image": "silhouette", "conditioning_scales": [scale]}
        sub = SweepPlan.from_dict({**plan.to_dict(), "model": "embedded-controlnet", "modes": ["img2img"],
                                   "inpaint": None, "control": control})
        name = f"controlnet{scale:g}"
        result = calibrate((sub, settings), out, pipe=model, progress=False, save=False, record=False)
        result.save(out, subfolder=name)
        results[name] = result
        if held_out:
            checks.append(validate(result, pairs=held_out, seeds=list(HELD_OUT_SEEDS), out_dir=out, pipe=model,
                                   control=control).assign(mode=name))
    return results, checks


def seam_by_row(folders: list[Path]):
    """The mean seam (and its share above 1.5) of every inpainted or controlled image, per row and strength."""
    import pandas as pd

    from img2img_lab.metrics.measure import measure_run
    from img2img_lab.store.run_store import RunStore

    tables = []
    for folder in folders:
        measure_run(folder, ["seam"], masks="oracle", progress=False)
        tables.append(RunStore.open(folder).read_table())
    table = pd.concat(tables, ignore_index=True)
    table["row"] = [_row_name(row) for row in table.to_dict("records")]
    return table.groupby(["row", "strength"])["seam"].mean().unstack("strength").round(2)


def _row_name(row: dict) -> str:
    from img2img_lab.calibration.modes import variant_name

    if isinstance(row.get("control_hash"), str):
        return f"controlnet{row['controlnet_conditioning_scale']:g}"
    crop = row.get("padding_mask_crop")
    return variant_name({"mode": row["mode"], "composite": bool(row.get("composite")), "mask_blur":
                         int(row.get("mask_blur") or 0), "padding_mask_crop": None if crop != crop else crop})


def main(out: Path, *, quick: bool = False) -> None:
    import dataclasses

    import pandas as pd

    plan, settings = load_config(CONFIG)
    if quick:  # a smoke run: one source, one seed, three strengths, no refinement
        plan = SweepPlan.from_dict({**plan.to_dict(), "images": plan.images[:1], "seeds": [0],
                                    "strengths": [0.0, 0.5, 1.0]})
        settings = dataclasses.replace(settings, refine_rounds=0, n_resamples=100, held_out=settings.held_out[:1])
    modes = calibrate_modes((plan, settings), out / "modes", pipe=load_model(threads=2), progress=False,
                            held_out_seeds=HELD_OUT_SEEDS)
    control_results, control_checks = controlnet_rows(plan, settings, out / "controlnet")
    results = {**modes.results, **control_results}
    combined = ModeCalibration(results=results, table=mode_reference_table(results),
                               validation=pd.concat([modes.validation, *control_checks], ignore_index=True))
    combined.folklore = folklore_modes(combined, text_to_image=text_to_image_check(out / "modes",
                                                                                  results.get("img2img"), settings))
    combined.save(out)
    print("# Mode reference table (embedded shapes-world model, product sources)\n")
    print(combined.to_markdown())
    print(combined.validation[["mode", "goal", "strength", "held_out_mean", "ci_low", "ci_high", "runs", "holds"]]
          .to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    print("\n# Seam (output's gradient energy around the mask's edge over the source's), mean per row and strength\n")
    print(seam_by_row([out / "modes", out / "controlnet"]).to_string())


if __name__ == "__main__":
    arguments = [argument for argument in sys.argv[1:] if argument != "--quick"]
    main(Path(arguments[0]) if arguments else Path("runs/mode-table"), quick="--quick" in sys.argv)
