"""Calibration: the measured strength reference table, with uncertainty, and a recommended strength per goal.

Every img2img guide prints the same folklore table for strength. :func:`calibrate` measures it for one
model, a set of source images and prompts:

1. It runs (or reuses, the run folder is a cache) a coarse sweep over strengths x seeds x images x prompts
   (x guidance values), measuring every image.
2. Per guidance and strength it summarises each metric: mean with a bootstrap 95% CI, the seed-to-seed
   spread, the VAE round-trip floor, executed steps and noise level (:func:`strength_summary`).
3. It finds the **crossings** (:func:`find_crossing`): the highest strength that keeps each fidelity
   target ("keep", e.g. ``oracle_kept >= 0.9`` or ``ssim >= 0.7``), the lowest strength that reaches each
   prompt-adherence target ("reach", e.g. ``oracle_match >= 0.8``), each with a bootstrap CI, and the
   knee of the fidelity curves (:func:`knee`).
4. **Adaptive refinement**: where a crossing lies between two tested strengths that are more than one
   executed step apart, it adds the strength in the middle of the executed-step interval (bisection;
   never two strengths that run the same steps) and repeats, so it reaches the crossing a dense grid
   would find with a fraction of its cells.
5. The **strength reference table** (:meth:`CalibrationResult.reference_table`): bands of strength with
   the measured effect (metric ranges with CIs), a verdict (keeps composition / balanced / prompt dominates
   / ~ text-to-image), the goal it serves and a representative thumbnail; as a DataFrame, Markdown and
   HTML; plus a comparison with the folklore bands (:meth:`CalibrationResult.folklore_comparison`) and a
   strength x guidance heatmap (:meth:`CalibrationResult.heatmap`).

Decisions use the CI bound, not the mean, by default (``rule="confident"``): a strength "keeps" a target
when the CI's worse end meets it. That is the guarantee a user who must keep the product wants.

Bootstrap: two-stage over the experimental units: resample (source, prompt) pairs with replacement, then
seeds within each chosen pair; the same resampling is applied at every strength (paired), so curves and
crossings have CIs that respect that one pair's images are correlated across strengths and seeds.

>>> result = calibrate("data/configs/calibrate.yaml", "runs/calibrate")  # minutes on a CPU  # doctest: +SKIP
>>> print(result.to_markdown().splitlines()[0])
# Strength calibration (6 images; 1 sources × 1 prompts × 2 seeds × 1 guidance values; 6 coarse + 0 refinement cells)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Callable

import numpy as np

from img2img_lab.sweep import distributed
from img2img_lab.errors import PlanError
from img2img_lab.images.intake import check_image_files
from img2img_lab.plan.axes import section_axes
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_model
__all__ = ["FOLKLORE", "RULES", "VERDICTS", "CalibrationResult", "CalibrationSettings", "Crossing", "Recommendation",
           "Target", "bootstrap_ci", "bootstrap_means", "calibrate", "find_crossing", "knee", "load_config",
           "record_calibration", "refinement_strengths", "strength_for_steps", "strength_summary", "validate",
           "value_cube"]

from img2img_lab.calibration.result import (FOLKLORE, VERDICTS, CalibrationResult,  # noqa: F401 - re-exported
                                            Recommendation)
from img2img_lab.calibration.settings import RULES, CalibrationSettings, Target, load_config  # noqa: F401
from img2img_lab.calibration.stats import (conditions, unit_labels, bootstrap_ci, bootstrap_means,  # noqa: F401
                                           strength_summary, value_cube)
from img2img_lab.store.run_store import RunStore
from img2img_lab.calibration.crossings import (Crossing, find_crossing, knee, refinement_strengths,  # noqa: F401
                                   strength_for_steps)


# --------------------------------------------------------------------------------------------- driver
def _recommend(goal: str, crossings: list[Crossing], kind: str, preferred_guidance: float | None) -> Recommendation:
    candidates = [c for c in crossings if c.kind == kind]
    if not candidates:
        key = "keep" if kind == "keep" else "follow"
        return Recommendation(goal, "", None, None, None, None, None, False,
                              f"not calibrated: the config gives no {key} target (add one under calibration: {key}:, "
                              f"e.g. {{metric: ssim, at_least: 0.6}})")
    target = candidates[0].target.describe()
    reached = [c for c in candidates if c.reached]
    if reached:
        # keep: the guidance that allows the most change (highest strength); reach: the least (lowest).
        def order(c):
            preferred = 0 if preferred_guidance is not None and np.isclose(c.guidance_scale, preferred_guidance) else 1
            return (-c.strength if kind == "keep" else c.strength, preferred, c.guidance_scale)

        best = sorted(reached, key=order)[0]
        low, high = best.strength_ci
        message = (f"strength {best.strength:g} at guidance {best.guidance_scale:g} ({best.executed_steps} steps): "
                   f"{best.target.metric} {best.value:.3f} [{best.value_ci[0]:.3f}, {best.value_ci[1]:.3f}]"
                   + (f"; the crossing's CI spans strength {low:g}–{high:g}" if math.isfinite(low) else ""))
        return Recommendation(goal, target, best.strength, best.guidance_scale, best.executed_steps, best.value,
                              best.value_ci, best.rule == "confident", message)
    on_average = [c for c in candidates if c.target.met(c.best_value)]
    if on_average:  # the mean meets the target somewhere, but not with the rule's confidence
        best = sorted(on_average, key=lambda c: (-c.best_strength if kind == "keep" else c.best_strength,
                                                 c.guidance_scale))[0]
        message = (f"strength {best.best_strength:g} at guidance {best.guidance_scale:g}: {best.target.metric} "
                   f"{best.best_value:.3f} meets {target} on average, but its 95% CI does not clear the threshold "
                   f"(too few images or too close to the threshold: add seeds or sources)")
        return Recommendation(goal, target, best.best_strength, best.guidance_scale, None, best.best_value, None, False, message)
    better = max if candidates[0].target.higher_is_better else min
    best = better(candidates, key=lambda c: c.best_value)
    verb = "keeps" if kind == "keep" else "reaches"
    message = (f"no calibrated strength {verb} {target} at any guidance, even on average; the best is "
               f"{best.target.metric} {best.best_value:.3f} at strength {best.best_strength:g}, guidance "
               f"{best.guidance_scale:g}")
    return Recommendation(goal, target, None, None, None, best.best_value, None, False, message)


#: The per-image column "every keep and follow target met at once", and the share of images a recommendation for
#: both goals at once needs (by the settings' rule: its CI's lower end, or its mean).
JOINT = "goal_both"
JOINT_RATE = 0.8


def joint_indicator(table, targets) -> np.ndarray:
    """1.0 for each image that meets every target, else 0.0 (NaN where a target's metric is missing).

    >>> table[["strength", "seed"]].assign(both=joint_indicator(table, [Target("ssim", at_least=0.5)])).values.tolist()
    [[0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 0.0]]
    """
    values = np.ones(len(table))
    for target in targets:
        column = table[target.metric].to_numpy(dtype=np.float64)
        met = column >= target.at_least if target.at_least is not None else column <= target.at_most
        values = np.where(np.isnan(column), np.nan, values * met)
    return values


def recommend_both(summary, settings: CalibrationSettings, model=None) -> Recommendation:
    """The lowest strength (the model's recommended guidance first) at which at least :data:`JOINT_RATE` of the images
    meet every keep and follow target at once — by the CI's lower end (rule ``confident``) or the mean; else the best
    joint rate measured, said as such."""
    preferred = model.recommended_guidance() if model is not None else None
    goal = "keep the subject and follow the prompt"
    described = " and ".join(t.describe() for t in settings.keep + settings.follow)
    target = f"{described} in ≥ {JOINT_RATE:.0%} of images"
    evidence = summary[f"{JOINT}_ci_low"] if settings.rule == "confident" else summary[JOINT]
    holding = summary[evidence >= JOINT_RATE]
    if len(holding):
        order = holding.assign(other=~np.isclose(holding["guidance_scale"], preferred if preferred else -1))
        best = order.sort_values(["strength", "other", "guidance_scale"]).iloc[0]
        low, high = float(best[f"{JOINT}_ci_low"]), float(best[f"{JOINT}_ci_high"])
        message = (f"strength {best['strength']:g} at guidance {best['guidance_scale']:g} "
                   f"({int(best['executed_steps'])} steps): both hold in {best[JOINT]:.0%} of images [{low:.0%}, "
                   f"{high:.0%}]")
        return Recommendation(goal, target, float(best["strength"]), float(best["guidance_scale"]),
                              int(best["executed_steps"]), float(best[JOINT]), (low, high),
                              settings.rule == "confident", message)
    best = summary.sort_values(JOINT, ascending=False).iloc[0]
    if best[JOINT] > 0:
        nearest = (f"; the closest is strength {best['strength']:g}, guidance {best['guidance_scale']:g}: "
                   f"{best[JOINT]:.0%} of images [{best[f'{JOINT}_ci_low']:.0%}, {best[f'{JOINT}_ci_high']:.0%}]")
    else:
        nearest = ": no tested strength meets both in any image (keeping and following conflict here)"
    message = f"no calibrated strength meets {described} at once in {JOINT_RATE:.0%} of images{nearest}"
    return Recommendation(goal, target, None, None, None, float(best[JOINT]), None, False, message)


def _model_step_counter(model, plan) -> Callable:
    """``executed(N, strength)`` on the plan's model, scheduler and first source (the pipeline's own count)."""
    from img2img_lab.sweep.run import prepare_source

    source = prepare_source(plan.images[0], model, max_side=plan.max_side, resize_policy=plan.resize_policy)

    def executed(num_inference_steps: int, strength: float) -> int:
        return model.step_plan(plan.schedulers[0], num_inference_steps, strength, width=source.width,
                               height=source.height).executed_steps

    return executed


def calibrate(config, out_dir: str | os.PathLike | None = None, *, settings: CalibrationSettings | None = None,
              pipe=None, runner: Callable | None = None, progress: bool = True, save: bool = True,
              record: bool = True) -> CalibrationResult:
    """Calibrate strength for a model, sources and prompts; return (and save) a :class:`CalibrationResult`.

    Parameters
    ----------
    config : str, Path, SweepPlan or (SweepPlan, CalibrationSettings)
        A calibration YAML (:func:`load_config`) or a plan (then ``settings`` applies).
    out_dir : str or Path
        The run folder (a cache: cells already there are not generated again).
    runner : callable, optional
        ``runner(plan) -> table``; default: :func:`img2img_lab.sweep.run.run_sweep` into ``out_dir`` measuring
        the settings' metrics. Tests pass a synthetic runner.

    ``pipe`` is a diffusers pipeline or a model handle (default: the plan's model, loaded). The plan must have one
    ``steps`` and one ``scheduler`` value (the executed-step arithmetic is per
    steps value); strength 1.0 is always added (the text-to-image reference). With ``record`` (default) the
    run folder records the calibration's provenance (:func:`record_calibration`); ``counts["rounds"]`` lists every
    round's strengths.

    >>> settings = CalibrationSettings(metrics=["ssim"], keep=[Target("ssim", at_least=0.4)], refine_rounds=1,
    ...                                n_resamples=200)
    >>> result = calibrate(plan, "runs/small", settings=settings, pipe=pipe, progress=False)
    >>> result.summary.strength.tolist()  # 0.7: the refinement round's bisection of the keep crossing's interval
    [0.0, 0.5, 0.7, 1.0]
    """
    # 1. The plan and settings (strength 1.0, the text-to-image reference, always included).
    plan, settings = plan_and_settings(config, settings)
    if runner is None:
        check_image_files(plan.images)  # before the model loads
    model = None if pipe is None else as_model(pipe)
    # 2. The runner: run_sweep into the run folder with the settings' metrics (tests pass a synthetic one).
    if runner is None:
        if out_dir is None:
            raise PlanError("calibrate needs an out_dir (the run folder). Fix: pass out_dir='runs/calibrate'.")
        model = model if model is not None else load_model(plan.model)
        runner = _sweep_runner(out_dir, model, settings, progress=progress)
    executed = _model_step_counter(model, plan) if model is not None else None
    # 3. The coarse sweep, then 4. refinement rounds where a crossing lies between tested strengths.
    table = runner(plan)
    rounds = [{"round": 0, "strengths": list(plan.strengths), "guidance_scales": list(plan.guidance_scales),
               "cells": len(table)}]
    table, crossings = _refine(plan, settings, table, runner, rounds, executed=executed)
    # 5. The summary with CIs, knees and recommendations.
    floor = RunStore.open(out_dir).read_floor_of(table) if _is_run_folder(out_dir) else None
    joint = [JOINT] if settings.keep and settings.follow else []
    if joint:  # per image: every keep and follow target met at once ("swap the background": subject kept AND ...)
        table = table.assign(**{JOINT: joint_indicator(table, settings.keep + settings.follow)})
    summary = strength_summary(table, settings.metrics + joint, floor=floor, **_bootstrap_options(settings))
    result = CalibrationResult(table=table, summary=summary, crossings=crossings, knees={}, recommendations={},
                               settings=settings, counts=_counts(table, rounds), run_dir=str(out_dir) if out_dir
                               else None, floor=floor)
    _add_knees(result)
    result.recommendations = _recommendations(crossings, settings, model)
    if joint:
        result.recommendations["both"] = recommend_both(summary, settings, model)
    # 6. Provenance and files in the run folder.
    if _is_run_folder(out_dir) and distributed.current().is_main:  # rank 0 alone writes in a launched job
        if record:
            record_calibration(out_dir, plan, settings, rounds)
        if save:
            result.save(out_dir)
    return result


def plan_and_settings(config, settings, *, allow_modes: bool = False):
    """The plan and settings of a calibration ``config`` (a YAML path, a plan, or ``(plan, settings)``), strength 1.0
    added; one steps value and one scheduler; several modes only with ``allow_modes`` (:mod:`img2img_lab.calibration.modes`).

    >>> plan_and_settings(SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5]), None)[0].strengths
    [0.5, 1.0]
    """
    if isinstance(config, (str, os.PathLike)):
        plan, file_settings = load_config(config)
        settings = settings or file_settings
    elif isinstance(config, tuple):
        plan, settings = config
    else:
        plan = config
    settings = settings or CalibrationSettings()
    if len(plan.steps) != 1 or len(plan.schedulers) != 1:
        raise PlanError(f"calibration needs one steps value and one scheduler (got steps {plan.steps}, "
                        f"schedulers {plan.schedulers}). Fix: calibrate each steps/scheduler separately.")
    several = [plural for plural in section_axes("inpaint") if len((plan.inpaint or {}).get(plural, [])) > 1]
    if several and not allow_modes:
        raise PlanError(f"one calibration covers one inpainting setting, and this plan has several {several[0]} "
                        f"values. Fix: run `img2img-lab calibrate` on the config (each setting is a row of the mode "
                        f"table), or keep one value.")
    if len(plan.modes) > 1 and not allow_modes:
        raise PlanError(f"one calibration covers one mode, and this plan has {plan.modes}. Fix: run `img2img-lab "
                        f"calibrate` on the config (it builds the mode table), or call mode_table.calibrate_modes.")
    if 1.0 not in plan.strengths:
        plan = SweepPlan.from_dict({**plan.to_dict(), "strengths": sorted(plan.strengths + [1.0])})
    return plan, settings


def _sweep_runner(out_dir, model, settings: CalibrationSettings, *, progress: bool) -> Callable:
    from img2img_lab.sweep.run import run_sweep

    calls = []

    def runner(sub_plan):  # the bar says which sweep of the calibration runs: the coarse grid, then each refinement
        label = (f"{sub_plan.name}: coarse grid" if not calls else
                 f"{sub_plan.name}: refine {', '.join(f'{s:g}' for s in sub_plan.strengths)} at guidance "
                 f"{', '.join(f'{g:g}' for g in sub_plan.guidance_scales)}")
        calls.append(label)
        return run_sweep(sub_plan, out_dir, pipe=model, metrics=settings.metrics, progress=progress,
                         progress_label=label)

    return runner


def _is_run_folder(out_dir) -> bool:
    return RunStore.is_run_folder(out_dir)


def _bootstrap_options(settings: CalibrationSettings) -> dict:
    return dict(n_resamples=int(settings.n_resamples), confidence=float(settings.confidence), seed=int(settings.seed))


def _all_crossings(frame, settings: CalibrationSettings) -> list[Crossing]:
    options = {"rule": settings.rule, **_bootstrap_options(settings)}
    kinds = [("keep", target) for target in settings.keep] + [("reach", target) for target in settings.follow]
    return [find_crossing(group, target, kind=kind, **options)
            for _, group in conditions(frame) for kind, target in kinds]


def _refine(plan: SweepPlan, settings: CalibrationSettings, table, runner: Callable, rounds: list[dict], *,
            executed) -> tuple:
    """Refinement rounds: sweep the strengths in the middle of each crossing's executed-step interval (per guidance)
    until no crossing lies between tested strengths; every round is appended to ``rounds``."""
    import pandas as pd

    crossings = _all_crossings(table, settings)
    for round_number in range(1, int(settings.refine_rounds) + 1):
        wanted: dict[float, set[float]] = {}
        for crossing in crossings:
            tested = set(table.loc[np.isclose(table["guidance_scale"], crossing.guidance_scale), "strength"])
            for strength in refinement_strengths(crossing, plan.steps[0], executed=executed):
                if strength not in tested:
                    wanted.setdefault(crossing.guidance_scale, set()).add(strength)
        if not wanted:
            break
        for guidance, strengths in sorted(wanted.items()):
            part = runner(SweepPlan.from_dict({**plan.to_dict(), "strengths": sorted(strengths),
                                               "guidance_scales": [guidance]}))
            table = pd.concat([table, part], ignore_index=True)
            rounds.append({"round": round_number, "strengths": sorted(strengths), "guidance_scales": [guidance],
                           "cells": len(part)})
        table = table.drop_duplicates("cell_key", keep="last").reset_index(drop=True)
        crossings = _all_crossings(table, settings)
    return table, crossings


def _counts(table, rounds: list[dict]) -> dict:
    coarse = rounds[0]["cells"]
    added: dict[str, list[float]] = {}
    for item in rounds[1:]:
        added.setdefault(f"{item['guidance_scales'][0]:g}", []).extend(item["strengths"])
    return {"coarse_cells": coarse, "refinement_cells": len(table) - coarse, "cells": len(table),
            "refinement_rounds": max(item["round"] for item in rounds), "added_strengths": added, "rounds": rounds,
            "summary": f"{table['source_hash'].nunique()} sources × {table['prompt'].nunique()} prompts × "
                       f"{table['seed'].nunique()} seeds × {table['guidance_scale'].nunique()} guidance values; "
                       f"{coarse} coarse + {len(table) - coarse} refinement cells"}


def _add_knees(result: CalibrationResult) -> None:
    metric, summary = result.primary_fidelity_metric, result.summary
    if metric is not None:
        result.knees[metric] = {
            f"{g:g}": knee(part["strength"], part[metric])
            for g, part in ((g, summary[np.isclose(summary["guidance_scale"], g)].sort_values("strength"))
                            for g in result.guidance_values)
        }


def _recommendations(crossings: list[Crossing], settings: CalibrationSettings, model) -> dict:
    preferred = model.recommended_guidance() if model is not None else None
    return {
        "keep": _recommend("keep the subject", [c for c in crossings if c.target == settings.keep[0]]
                           if settings.keep else [], "keep", preferred),
        "follow": _recommend("follow the prompt", [c for c in crossings if c.target == settings.follow[0]]
                             if settings.follow else [], "reach", preferred),
    }


def record_calibration(out_dir, plan: SweepPlan, settings: CalibrationSettings, rounds: list[dict]) -> str:
    """Record a calibration's provenance in its run folder: the full config (``configs/calibration.yaml``: the plan
    and the calibration block) and, in the manifest, every round's strengths and the command that reproduces the
    folder; returns that command. (Every round's sweep plan is also in ``manifest["plans"]``.)

    >>> record_calibration("runs/calibrate", plan, result.settings, [{"round": 0, "strengths": plan.strengths}])
    'img2img-lab calibrate runs/calibrate/configs/calibration.yaml --out NEW_RUN_DIR'
    """
    from img2img_lab.store.manifest import plan_config
    from img2img_lab.store.run_store import RunStore

    store = RunStore.open(out_dir)
    block = asdict(settings)
    for name in ("keep", "follow"):
        block[name] = [{key: value for key, value in target.items() if value is not None} for target in block[name]]
    path = store.write_config("calibration", {**plan_config(plan.to_dict()), "calibration": block})
    relative = str(path.relative_to(store.root))
    command = f"img2img-lab calibrate {store.root}/{relative} --out NEW_RUN_DIR"
    store.update_manifest(lambda manifest: {**manifest, "calibration": {
        "config": relative, "command": command, "settings": block, "rounds": rounds}})
    return command


def validate(result: CalibrationResult, *, pairs, seeds, out_dir, pipe=None, progress: bool = False,
             modes=("img2img",), inpaint: dict | None = None, control: dict | None = None):
    """Check the recommendations on held-out (source image, prompt) pairs: run each goal's recommended
    (strength, guidance) on every pair x seed and measure the goal's metric.

    ``modes`` / ``inpaint`` / ``control``: the mode and conditions the result was calibrated in
    (:mod:`img2img_lab.calibration.modes`; ``control``: a ControlNet's control image and scale).
    Returns a DataFrame per goal: recommended strength and guidance, the target, the held-out mean with its
    bootstrap CI (two-stage over pairs and seeds), the number of runs, and whether the target holds.

    >>> checks = validate(result, pairs=[("data/sources/green_triangle_on_yellow.png", "a white star")], seeds=[0, 1],
    ...                   out_dir="runs/held-out", pipe=pipe)
    >>> checks.columns[:3].tolist()  # doctest: +ELLIPSIS
    [...]
    """
    import pandas as pd

    from img2img_lab.sweep.run import run_sweep

    steps = [int(result.table["num_inference_steps"].iloc[0])]
    schedulers = [str(result.table["scheduler"].iloc[0])]
    rows = []
    settings = result.settings
    goals = [("keep", settings.keep[:1]), ("follow", settings.follow[:1])]
    if "both" in result.recommendations:  # every keep and follow target at once, per image
        goals.append(("both", settings.keep + settings.follow))
    for key, targets in goals:
        recommendation = result.recommendations.get(key)
        if recommendation is None or recommendation.strength is None or not targets:
            continue
        tables = []
        for image, prompt in pairs:
            plan = SweepPlan.from_dict({"images": [str(image)], "prompts": [prompt], "seeds": list(seeds),
                                        "strengths": [recommendation.strength], "steps": steps,
                                        "schedulers": schedulers, "guidance_scales": [recommendation.guidance_scale],
                                        "name": f"validate-{key}", "modes": list(modes),
                                        "inpaint": inpaint if "inpaint" in modes else None,
                                        "control": control})
            tables.append(run_sweep(plan, out_dir, pipe=pipe, metrics=[t.metric for t in targets], progress=progress))
        table = pd.concat(tables, ignore_index=True)
        values = (joint_indicator(table, targets) if key == "both" else table[targets[0].metric].to_numpy())
        mean, low, high = bootstrap_ci(values, groups=unit_labels(table).to_numpy(),
                                       n_resamples=settings.n_resamples, seed=settings.seed)
        rows.append({"goal": recommendation.goal, "strength": recommendation.strength,
                     "guidance_scale": recommendation.guidance_scale, "target": recommendation.target,
                     "held_out_mean": mean, "ci_low": low, "ci_high": high, "runs": len(table),
                     "holds": mean >= JOINT_RATE if key == "both" else targets[0].met(mean)})
    return pd.DataFrame(rows)
