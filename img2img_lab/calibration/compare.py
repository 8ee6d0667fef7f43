"""Compare models in one run folder: "which model keeps my product at strength 0.4?"

A config with ``models: [A, B, ...]`` sweeps every cell on each model (loaded one at a time, cells keyed by
the model's fingerprint, see :func:`img2img_lab.sweep.run.run_model_axis`). Strength means different amounts of
noise on different families (SD's ``int(N*s)`` steps, SD3's flow-matching grid, FLUX.1's shifted one), so models
are put side by side on the family-independent noise axis, the start latent's log-SNR
(:class:`img2img_lab.models.handle.StepPlan`), as well as on strength.

* :func:`calibrate_models` runs the calibration once per model into the shared run folder and writes each
  model's ``calibration/<model>/`` plus the side-by-side ``calibration/models.csv`` and ``models.png``;
* :func:`model_summary` is the side-by-side table (one row per model, guidance and strength);
* :func:`model_curves` plots one metric per model against log-SNR or strength with CI bands.

Grids and curves of a multi-model folder take ``model`` like any axis: ``img2img-lab grid RUN --rows model``,
``img2img-lab curves RUN --metric ssim --x log_snr --hue model``.

>>> results = calibrate_models("compare.yaml", "runs/compare")  # needs a second model  # doctest: +SKIP
>>> model_summary({"embedded": result})[["model", "strength", "log_snr", "ssim"]].round(2)
      model  strength  log_snr  ssim
0  embedded       0.0      inf  0.89
1  embedded       0.5    -0.31  0.62
2  embedded       1.0    -4.25  0.32
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from img2img_lab.errors import PlanError


def model_folder_name(label: str) -> str:
    """A file-system-safe folder name for a model label.

    >>> model_folder_name("stabilityai/sdxl-turbo"), model_folder_name("embedded:shapes-world")
    ('stabilityai-sdxl-turbo', 'embedded-shapes-world')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"


def calibrate_models(config, out_dir: str | os.PathLike, *, settings=None, device: str | None = None,
                     dtype: str | None = None, progress: bool = True, save: bool = True) -> dict:
    """Calibrate every model of the config's ``models`` axis into ``out_dir``; return ``{model label: result}``.

    Each model is loaded, calibrated (coarse sweep, refinement, reference table) and released before the next.
    With ``save``, each result goes to ``calibration/<model>/`` and the comparison to ``calibration/models.csv``
    and ``calibration/models.png`` (the fidelity metric against log-SNR, one line per model).
    """
    import gc

    from img2img_lab.calibration.procedure import calibrate, load_config, record_calibration
    from img2img_lab.models.loading import load_model
    from img2img_lab.sweep.run import run_sweep

    if isinstance(config, (str, os.PathLike)):
        plan, file_settings = load_config(config)
        settings = settings or file_settings
    else:
        plan, settings = config
    if not plan.models:
        raise PlanError("calibrate_models needs a config with 'models: [A, B]'. Fix: list the models to compare.")
    results = {}
    for sub_plan in plan.model_plans():
        model = load_model(sub_plan.model, device=device, dtype=dtype)

        def runner(part, model=model):
            return run_sweep(part, out_dir, pipe=model, metrics=settings.metrics, progress=progress, model_axis=True)

        result = calibrate((sub_plan, settings), out_dir, pipe=model, runner=runner, progress=progress, save=False,
                           record=False)
        label = model.label
        result.run_dir = str(out_dir)
        if save:
            result.save(out_dir, subfolder=model_folder_name(label))
        results[label] = result
        del model
        gc.collect()
    rounds = [{**item, "model": label} for label, result in results.items() for item in result.counts["rounds"]]
    record_calibration(out_dir, plan, settings, rounds)  # the whole comparison: its config lists every model
    if save:
        from img2img_lab.store.run_store import RunStore

        _save_comparison(results, RunStore(out_dir).calibration_dir())
    return results


def model_summary(results: dict):
    """The calibrations' summaries side by side: one row per model, guidance and strength, with ``log_snr``,
    executed steps and every metric's mean and CI.

    >>> model_summary({"embedded": result}).pivot_table(index="strength", columns="model", values="ssim").round(2)
    model     embedded
    strength
    0.0           0.89
    0.5           0.62
    1.0           0.32
    """
    import pandas as pd

    frames = [result.summary.assign(model=label) for label, result in results.items()]
    summary = pd.concat(frames, ignore_index=True)
    return summary[["model"] + [column for column in summary.columns if column != "model"]]


def model_curves(results: dict, metric: str | None = None, *, x: str = "log_snr"):
    """One panel: ``metric`` (default: the primary fidelity metric) against ``x`` (``log_snr`` or ``strength``),
    one line with its CI band per model and guidance. Points without a finite x (strength 0, pure noise) are left
    out on the log-SNR axis."""
    import matplotlib.pyplot as plt

    summary = model_summary(results)
    first = next(iter(results.values()))
    metric = metric or first.primary_fidelity_metric
    if metric is None or metric not in summary.columns:
        raise PlanError(f"metric {metric!r} is not in the calibrations. Fix: use one of the calibration's metrics.")
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=100)
    for (label, guidance), part in summary.groupby(["model", "guidance_scale"], sort=False):
        part = part.sort_values("strength")
        part = part[np.isfinite(part[x])]
        line, = axis.plot(part[x], part[metric], marker="o", markersize=3, label=f"{label} (guidance {guidance:g})")
        axis.fill_between(part[x], part[f"{metric}_ci_low"], part[f"{metric}_ci_high"], color=line.get_color(),
                          alpha=0.18)
    axis.set_xlabel("log-SNR of the start latent (axis reversed: noisier to the right)" if x == "log_snr"
                    else "strength")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by model: mean and CI", fontsize=10)
    if x == "log_snr":
        axis.invert_xaxis()  # more noise (higher strength) to the right, as on the strength axis
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _save_comparison(results: dict, folder: Path) -> None:
    import matplotlib.pyplot as plt

    from img2img_lab.store.run_store import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    summary = model_summary(results)
    atomic_write(folder / "models.csv", lambda stream: summary.to_csv(stream, index=False), binary=False)
    figure = model_curves(results)
    atomic_write(folder / "models.png", lambda stream: figure.savefig(stream, format="png"))
    plt.close(figure)
