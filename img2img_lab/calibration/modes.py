"""The mode reference table: which mode (img2img, inpainting) and which strength serve each goal, with CIs.

Every img2img guide prints a *pick the right mode* table: a brand-new scene → text-to-image; keep a real product →
img2img; swap the background only → img2img at low strength; restyle → img2img at high strength. A config with
``modes: [img2img, inpaint]`` and a ``calibration:`` block is calibrated once per mode in one run folder
(:func:`calibrate_modes`; each mode's full result in ``calibration/<mode>/``), and :func:`mode_reference_table` puts
the recommendations side by side: per goal and mode the recommended strength, the measured value or rate with its
95% CI, and the mode that serves the goal best. :func:`folklore_modes` states which folklore rows held.

The goals are the calibration's: **keep** (the first keep target, e.g. ``oracle_subject_kept >= 0.9``), **follow**
(the first follow target, e.g. ``oracle_background_match >= 0.8``: the restyle / new background) and **both** (every
keep and follow target in at least 80% of the images: "swap the background, keep the product").

>>> plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], modes=["img2img", "inpaint"],
...                  inpaint={"mask": "oracle"})
>>> {mode: (sub.modes, sub.inpaint is not None) for mode, sub in mode_plans(plan).items()}
{'img2img': (['img2img'], False), 'inpaint': (['inpaint'], True)}
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field

from img2img_lab.errors import PlanError
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.plan.schema import is_missing

GOALS = ("keep", "follow", "both")


@dataclass
class ModeCalibration:
    """Each mode's :class:`~img2img_lab.calibration.result.CalibrationResult`, the mode reference table and the
    held-out validation (empty without held-out pairs)."""

    results: dict
    table: object
    validation: object = None
    folklore: list = field(default_factory=list)

    def to_markdown(self) -> str:
        """The mode table and the folklore verdicts as Markdown."""
        lines = ["| goal | mode | strength | guidance | value [95% CI] | holds | best mode |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in self.table.to_dict("records"):
            value = ("–" if is_missing(row["value"]) else
                     f"{row['value']:.2f}" + (f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
                                               if not is_missing(row["ci_low"]) else ""))
            strength = "–" if is_missing(row["strength"]) else f"{row['strength']:g}"
            guidance = "–" if is_missing(row["guidance_scale"]) else f"{row['guidance_scale']:g}"
            lines.append(f"| {row['goal']} | {row['mode']} | {strength} | {guidance} | {value} | "
                         f"{'yes' if row['holds'] else 'no'} | {'**yes**' if row['best'] else ''} |")
        lines += ["", "| folklore row | verdict | measured |", "| --- | --- | --- |"]
        lines += [f"| {item['row']} | {item['verdict']} | {item['measured']} |" for item in self.folklore]
        return "\n".join(lines) + "\n"

    def save(self, run_dir) -> None:
        """``calibration/modes.csv`` and ``calibration/modes.md`` (each mode's result is saved by
        :func:`calibrate_modes` in ``calibration/<mode>/``)."""
        from img2img_lab.store.run_store import RunStore, atomic_write

        folder = RunStore(run_dir).calibration_dir(None)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "modes.csv", lambda s: self.table.to_csv(s, index=False), binary=False)
        if self.validation is not None and len(self.validation):
            atomic_write(folder / "modes_validation.csv", lambda s: self.validation.to_csv(s, index=False),
                         binary=False)
        atomic_write(folder / "modes.md", lambda s: s.write("# Mode reference table\n\n" + self.to_markdown()),
                     binary=False)
        figure = self.figure()
        atomic_write(folder / "modes.png", lambda stream: figure.savefig(stream, format="png"))
        import matplotlib.pyplot as plt

        plt.close(figure)

    def figure(self):
        """Each goal's metric (mean and 95% CI band) against strength, one line per mode, the targets dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        first = next(iter(self.results.values()))
        targets = first.settings.keep[:1] + first.settings.follow[:1]
        figure, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.0), dpi=110, squeeze=False)
        for axis, target in zip(axes[0], targets):
            for mode, result in self.results.items():
                summary = result.summary.sort_values("strength")
                summary = summary[summary["guidance_scale"] == summary["guidance_scale"].iloc[0]]
                line = axis.plot(summary["strength"], summary[target.metric], marker="o", label=mode)[0]
                axis.fill_between(summary["strength"], summary[f"{target.metric}_ci_low"],
                                  summary[f"{target.metric}_ci_high"], color=line.get_color(), alpha=0.2)
            axis.axhline(target.threshold, color="grey", linestyle="--", linewidth=1, label=f"target {target.describe()}")
            axis.set_xlabel("strength")
            axis.set_ylabel(target.metric)
            axis.set_ylim(-0.05, 1.05)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        figure.suptitle("Which mode? Each goal's metric against strength (95% CI bands)")
        figure.tight_layout()
        return figure


def mode_plans(plan: SweepPlan) -> dict[str, SweepPlan]:
    """One single-mode plan per mode (each keeps the inpainting settings only where it inpaints), an inpainting mode
    split into one plan per setting of its options (:func:`variant_name`: ``inpaint+composite+blur4``...): each is
    a row of the mode table."""
    from img2img_lab.plan.axes import section_axes, values_in_mode

    plans = {}
    for mode in plan.modes:
        if mode != "inpaint":
            plans[mode] = SweepPlan.from_dict({**plan.to_dict(), "modes": [mode], "inpaint": None})
            continue
        options = section_axes("inpaint")
        for combination in itertools.product(*(plan.axis_values(axis) for axis in options.values())):
            values = values_in_mode({"mode": mode, **{axis.name: value for axis, value in
                                                      zip(options.values(), combination)}})
            inpaint = {**plan.inpaint, **{plural: [values[axis.name]] for plural, axis in options.items()}}
            plans.setdefault(variant_name(values), SweepPlan.from_dict({**plan.to_dict(), "modes": [mode],
                                                                        "inpaint": inpaint}))
    return plans


def variant_values(name: str) -> dict:
    """The mode and inpainting options a mode table row's name stands for (:func:`variant_name` inverted).

    >>> variant_values("inpaint+composite+blur4")
    {'mode': 'inpaint', 'composite': True, 'mask_blur': 4, 'padding_mask_crop': None}
    >>> variant_values("img2img")
    {'mode': 'img2img'}
    """
    mode, *parts = str(name).split("+")
    if mode != "inpaint":
        return {"mode": mode}
    values = {"mode": mode, "composite": False, "mask_blur": 0, "padding_mask_crop": None}
    for part in parts:
        if part == "composite":
            values["composite"] = True
        elif part.startswith("blur"):
            values["mask_blur"] = int(part[4:])
        elif part.startswith("crop"):
            values.update(composite=True, padding_mask_crop=int(part[4:]))
    return values


def variant_name(values: dict) -> str:
    """A mode table row's name: the mode and its inpainting options where not at their baseline.

    >>> variant_name({"mode": "inpaint", "composite": True, "mask_blur": 4, "padding_mask_crop": None})
    'inpaint+composite+blur4'
    >>> variant_name({"mode": "inpaint", "composite": True, "mask_blur": 0, "padding_mask_crop": 32})
    'inpaint+crop32'
    """
    parts = [values["mode"]]
    if values.get("padding_mask_crop") is not None:
        parts.append(f"crop{values['padding_mask_crop']}")  # "only masked": composited by the pipeline
    elif values.get("composite"):
        parts.append("composite")
    if values.get("mask_blur"):
        parts.append(f"blur{values['mask_blur']}")
    return "+".join(parts)


def calibrate_modes(config, out_dir: str | os.PathLike, *, settings=None, pipe=None, progress: bool = True,
                    held_out_seeds=(0, 1, 2)) -> ModeCalibration:
    """Calibrate every mode of ``config`` into one run folder and build the mode reference table; each mode's
    recommendations are validated on the settings' ``held_out`` pairs (``held_out_seeds`` each)."""
    import pandas as pd

    from img2img_lab.calibration.procedure import plan_and_settings, calibrate, record_calibration, validate

    plan, settings = plan_and_settings(config, settings, allow_modes=True)
    if len(mode_plans(plan)) < 2:
        raise PlanError("a mode table needs at least two modes or inpainting settings. Fix: add modes: [img2img, "
                        "inpaint] to the config (or inpaint: {composite: [false, true]}).")
    if pipe is None:
        from img2img_lab.models.loading import load_model

        pipe = load_model(plan.model)
    results, checks, rounds = {}, [], []
    held_out = [(pair["image"], pair["prompt"]) for pair in settings.held_out]
    for mode, sub_plan in mode_plans(plan).items():
        result = calibrate(sub_plan, out_dir, settings=settings, pipe=pipe, progress=progress, save=False,
                           record=False)
        result.save(out_dir, subfolder=mode)
        results[mode] = result
        rounds += [{**item, "mode": mode} for item in result.counts["rounds"]]
        if held_out:
            part = validate(result, pairs=held_out, seeds=list(held_out_seeds), out_dir=out_dir, pipe=pipe,
                            modes=sub_plan.modes, inpaint=sub_plan.inpaint, control=sub_plan.control)
            checks.append(part.assign(mode=mode))
    record_calibration(out_dir, plan, settings, rounds)
    validation = pd.concat(checks, ignore_index=True) if checks else None
    modes = ModeCalibration(results=results, table=mode_reference_table(results), validation=validation)
    modes.folklore = folklore_modes(modes, text_to_image=text_to_image_check(out_dir, results.get("img2img"),
                                                                            settings))
    modes.save(out_dir)
    return modes


def mode_reference_table(results: dict):
    """Goal × mode: the recommended strength and guidance, the value (keep/follow: the target metric's mean; both: the
    share of images meeting every target) with its CI, whether the target holds, and the best mode per goal (among
    the modes where it holds: keep — the highest strength, the most change allowed; follow and both — the lowest)."""
    import pandas as pd

    rows = []
    for mode, result in results.items():
        for goal in GOALS:
            recommendation = result.recommendations.get(goal)
            if recommendation is None:
                continue
            low, high = recommendation.expected_ci if recommendation.expected_ci else (math.nan, math.nan)
            rows.append({"goal": goal, "goal_label": recommendation.goal, "mode": mode,
                         "strength": recommendation.strength if recommendation.strength is not None else math.nan,
                         "guidance_scale": (recommendation.guidance_scale if recommendation.guidance_scale is not None
                                            else math.nan),
                         "value": recommendation.expected if recommendation.expected is not None else math.nan,
                         "ci_low": low, "ci_high": high, "target": recommendation.target,
                         "holds": recommendation.strength is not None and (recommendation.confident
                                                                           or result.settings.rule == "mean"),
                         "confident": recommendation.confident,
                         "message": recommendation.message})
    table = pd.DataFrame(rows)
    table["best"] = False
    for goal, part in table.groupby("goal"):
        holding = part[part["holds"]]
        if len(holding):
            best = holding["strength"].idxmax() if goal == "keep" else holding["strength"].idxmin()
            table.loc[best, "best"] = True
    return table


def text_to_image_check(run_dir, result, settings) -> dict | None:
    """Is img2img at strength 1 text-to-image? Each strength-1 output's SSIM to its own source minus its mean SSIM to
    the study's other sources, averaged with a two-stage bootstrap CI over (source, prompt) units: a CI that holds 0
    means the output no longer depends on its source."""
    import numpy as np

    from img2img_lab.calibration.stats import bootstrap_ci, unit_labels
    from img2img_lab.metrics.fidelity import ssim
    from img2img_lab.store.run_store import RunStore

    if result is None or result.table["source_hash"].nunique() < 2:
        return None
    store = RunStore.open(run_dir)
    rows = result.table[np.isclose(result.table["strength"], 1.0)]
    sources = {source_hash: store.load_source(source_hash) for source_hash in result.table["source_hash"].unique()}
    gaps = []
    for row in rows.to_dict("records"):
        output = store.load_output(row)
        others = [ssim(image, output) for source_hash, image in sources.items() if source_hash != row["source_hash"]]
        gaps.append(ssim(sources[row["source_hash"]], output) - float(np.mean(others)))
    mean, low, high = bootstrap_ci(np.asarray(gaps), groups=unit_labels(rows).to_numpy(),
                                   n_resamples=settings.n_resamples, seed=settings.seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "images": len(gaps)}


def folklore_modes(modes: ModeCalibration, *, text_to_image: dict | None = None) -> list[dict]:
    """The folklore *pick the right mode* rows, each with a verdict from the measured table (and, for "img2img at
    strength 1 ≈ text-to-image", :func:`text_to_image_check`)."""
    table = modes.table.set_index(["goal", "mode"])
    verdicts = []
    if text_to_image is not None:
        holds = text_to_image["ci_low"] <= 0 <= text_to_image["ci_high"]
        verdicts.append({"row": "a brand-new scene → text-to-image (img2img at strength 1 ≈ text-to-image)",
                         "verdict": "holds" if holds else "does not hold",
                         "measured": f"SSIM to its own source minus to the other sources at strength 1: "
                                     f"{text_to_image['mean']:+.3f} [{text_to_image['ci_low']:+.3f}, "
                                     f"{text_to_image['ci_high']:+.3f}] over {text_to_image['images']} images"})

    def row(goal, mode):
        return table.loc[(goal, mode)] if (goal, mode) in table.index else None

    def best(goal):
        part = modes.table[(modes.table.goal == goal) & modes.table.best]
        return None if part.empty else part.iloc[0]

    keep = best("keep")
    kept = "; ".join(f"{mode} keeps it up to strength {row['strength']:g}" for (goal, mode), row in table.iterrows()
                     if goal == "keep" and row["holds"])
    verdicts.append({"row": "keep a real product → img2img (not another mode)",
                     "verdict": "holds" if keep is not None and keep["mode"] == "img2img" else "does not hold",
                     "measured": f"best: {_said(keep)}" + (f" ({kept})" if kept else "")})
    both, img2img_both = best("both"), row("both", "img2img")
    low_img2img = img2img_both is not None and img2img_both["holds"] and img2img_both["strength"] <= 0.5
    verdicts.append({"row": "swap the background only → img2img at low strength",
                     "verdict": "holds" if low_img2img else "does not hold",
                     "measured": (f"img2img: {img2img_both['message']}" if img2img_both is not None else "not measured")
                     + (f"; best: {_said(both)}" if both is not None else "; no mode meets both targets")})
    follow = row("follow", "img2img")
    high = follow is not None and follow["holds"] and follow["strength"] >= 0.6
    verdicts.append({"row": "restyle → img2img at high strength", "verdict": "holds" if high else "does not hold",
                     "measured": "not measured" if follow is None else str(follow["message"])})
    return verdicts


def _said(row) -> str:
    if row is None:
        return "no mode meets the target"
    return f"{row['mode']} at strength {row['strength']:g} ({row['value']:.2f})"
