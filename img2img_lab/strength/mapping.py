"""The strength translator: what one strength runs under each tool's rule, and the strength of another tool that
starts from the same noise.

``img2img-lab strength MODEL --steps 30 --strength 0.6`` (and :func:`strength_map`) print, for a model's scheduler,
the executed steps, the start σ and the start log-SNR of that strength under diffusers (the pipeline's own timestep
code, :meth:`img2img_lab.models.handle.ModelHandle.step_plan`), AUTOMATIC1111 / Forge with and without fixed steps, ComfyUI's
``denoise`` and InvokeAI (rules and their sources: :mod:`img2img_lab.strength.tool_rules`). :func:`translate` answers "ComfyUI
denoise 0.6 on SDXL at 30 steps = diffusers strength ?" by the nearest start log-SNR, and says when the two runs
then follow different schedules. Each tool runs on its default schedule (AUTOMATIC1111's UI: DPM++ 2M, Karras;
ComfyUI's KSampler: simple; InvokeAI's UI: ``dpmpp_3m_k``) unless ``settings`` (:func:`tool_settings`) name another.

``MODEL`` is a bundled scheduler config (:data:`BUNDLED`: the public ``scheduler/scheduler_config.json`` of SD 1.5,
SD 2.1, SDXL, SDXL-Turbo, SD 3.5, FLUX.1-dev, FLUX.1-schnell and Qwen-Image, each file naming its source), a diffusers
model folder, or a hub id whose configs are in the local Hugging Face cache; nothing is downloaded or loaded.

>>> row = strength_map("sdxl", steps=30, strengths=[0.6]).set_index("tool").loc["comfyui"]
>>> int(row.executed_steps), round(float(row.start_sigma), 4), row.schedule
(30, 2.2765, 'simple')
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from img2img_lab.errors import ModelError, PlanError
from img2img_lab.models.handle import ModelHandle
from img2img_lab.models.registry import BUNDLED_SCHEDULERS, IMG2IMG_PIPELINE_OF
from img2img_lab.strength.tool_rules import (DEFAULTS, DiscreteSigmas, ToolRun, a1111_run, check_tool_settings,
                                             comfyui_run, invokeai_run)

#: Bundled scheduler configs (``data/schedulers/<name>.json``), as the family modules declare them.
BUNDLED = BUNDLED_SCHEDULERS
ALL_TOOLS = ("diffusers", "a1111", "a1111-fixed-steps", "comfyui", "invokeai")


def scheduler_record(model: str) -> dict:
    """``{"source", "pipeline", "native_size", "scheduler"}`` for a bundled name, a model folder or a cached hub id.

    >>> scheduler_record("flux-dev")["scheduler"]["use_dynamic_shifting"]
    True
    """
    from img2img_lab.resources import data_path

    if model in BUNDLED:
        return json.loads(data_path("schedulers", f"{model}.json").read_text())
    folder = Path(model).expanduser()
    files = {name: folder / name for name in ("model_index.json", "scheduler/scheduler_config.json")}
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        try:
            files = {name: try_to_load_from_cache(model, name) for name in files}
        except ValueError:
            files = {}
    if not files or not all(isinstance(path, (str, Path)) and Path(path).is_file() for path in files.values()):
        raise ModelError(f"no scheduler config for {model!r}: not a bundled name, a diffusers folder or a hub model in "
                         f"the local cache. Fix: use one of {', '.join(BUNDLED)}, or a model folder.")
    named = json.loads(Path(files["model_index.json"]).read_text()).get("_class_name")
    return {"source": str(model), "pipeline": IMG2IMG_PIPELINE_OF.get(named, named), "native_size": None,
            "scheduler": json.loads(Path(files["scheduler/scheduler_config.json"]).read_text())}


def _stub_model(record: dict):
    """A model handle over the record's pipeline class with no weights: its own timestep code, nothing else."""
    import diffusers

    pipeline_class = getattr(diffusers, str(record["pipeline"]), None)
    config = dict(record["scheduler"])
    scheduler_class = getattr(diffusers, str(config.get("_class_name")), None)
    if pipeline_class is None or scheduler_class is None:
        raise ModelError(f"{record['source']}: pipeline {record['pipeline']!r} or scheduler {config.get('_class_name')!r}"
                         f" is not a diffusers class. Fix: check the model's model_index.json and scheduler config.")
    pipe = object.__new__(pipeline_class)
    for name, value in (("scheduler", scheduler_class.from_config(config)), ("vae_scale_factor", 8),
                        ("transformer", SimpleNamespace(config=SimpleNamespace(patch_size=2)))):
        object.__setattr__(pipe, name, value)
    return ModelHandle(pipe, label=str(record["source"]))


def tool_settings(settings: dict | None = None) -> dict:
    """Each tool's schedule settings: :data:`~img2img_lab.strength.tool_rules.DEFAULTS` with ``settings`` over them
    (``{"a1111": {"sampler": "Euler"}, "comfyui": {"scheduler": "normal"}}``), every name checked.

    >>> tool_settings({"comfyui": {"scheduler": "karras"}})["comfyui"]
    {'scheduler': 'karras'}
    """
    merged = {tool: dict(values) for tool, values in DEFAULTS.items()}
    for tool, values in (settings or {}).items():
        if tool not in merged or not set(values) <= set(merged[tool]):
            known = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in DEFAULTS.items())
            raise PlanError(f"unknown schedule setting {tool}={values}. Fix: set only {known}.")
        merged[tool].update(values)
    check_tool_settings(merged)
    return merged


def tool_run(record: dict, tool: str, *, steps: int, strength: float, size: int | None = None,
             model=None, settings: dict | None = None) -> ToolRun:
    """What ``strength`` runs in ``tool`` (one of :data:`ALL_TOOLS`) on the record's model at ``size`` px, with the
    tools' schedule ``settings`` (:func:`tool_settings`; default: each tool's own default)."""
    if tool == "diffusers":
        return _diffusers_run(record, steps=steps, strength=strength, size=size, model=model)
    config = dict(record["scheduler"])
    if str(config.get("_class_name", "")).startswith("FlowMatch"):
        raise PlanError(f"{tool} runs flow-matching models ({record['source']}) through its own model sampling code, "
                        f"which img2img-lab does not translate. Fix: compare diffusers settings (steps, --size) for this model.")
    table, chosen = _sigma_table(json.dumps(config, sort_keys=True)), tool_settings(settings)
    if tool in ("a1111", "a1111-fixed-steps"):
        return a1111_run(table, steps=steps, strength=strength, fixed_steps=tool == "a1111-fixed-steps",
                         **chosen["a1111"])
    if tool == "comfyui":
        return comfyui_run(table, steps=steps, denoise=strength, **chosen["comfyui"])
    if tool == "invokeai":
        return invokeai_run(config, table, steps=steps, strength=strength, **chosen["invokeai"])
    raise PlanError(f"unknown tool {tool!r}. Fix: use one of {', '.join(ALL_TOOLS)}.")


def _diffusers_run(record: dict, *, steps: int, strength: float, size: int | None, model) -> ToolRun:
    """The pipeline's own step plan. A variance-preserving model's run carries every timestep's σ; where diffusers
    counts 0 steps but a timestep is left (PNDM keeps t=1), the noise it adds and its one UNet call are reported."""
    side = int(size or record.get("native_size") or 1024)
    model = model or _stub_model(record)
    plan = model.step_plan("default", steps, strength, width=side, height=side)
    schedule = f"{type(model.pipe.scheduler).__name__}, {model.pipe.scheduler.config.get('timestep_spacing', '')}"
    if not plan.timesteps:
        return ToolRun("diffusers", strength, steps, 0, (), schedule.rstrip(", "))
    sigmas = (plan.sigma,)
    if plan.schedule == "vp":
        table = _sigma_table(json.dumps(dict(record["scheduler"]), sort_keys=True))
        sigmas = (plan.sigma,) + tuple(table.sigma(t) for t in plan.timesteps[1:]) + (0.0,)
    note = "" if plan.executed_steps else (f"diffusers counts 0 steps, but {type(model.pipe.scheduler).__name__} "
                                           f"keeps timestep {plan.timesteps[0]:g}: noise at σ {plan.sigma:.4f} and "
                                           f"{len(plan.timesteps)} UNet call")
    return ToolRun("diffusers", strength, steps, plan.executed_steps, sigmas, schedule.rstrip(", "), note)


@lru_cache(maxsize=16)
def _sigma_table(config_json: str) -> DiscreteSigmas:
    """A scheduler config's training sigmas, made once (:func:`translate` asks for them a thousand times)."""
    return DiscreteSigmas.from_config(json.loads(config_json))


def strength_map(model: str, *, steps: int, strengths, size: int | None = None, tools=ALL_TOOLS,
                 settings: dict | None = None):
    """A tidy table (tool, schedule, strength, executed_steps, start_sigma, log_snr, note) of ``strengths`` under
    ``tools`` with their schedule ``settings`` (:func:`tool_settings`); tools that cannot translate the model (flow
    matching outside diffusers) are left out."""
    import pandas as pd

    record, rows = scheduler_record(model), []
    stub = _stub_model(record) if "diffusers" in tools else None
    settings = tool_settings(settings)
    for tool in tools:
        for strength in strengths:
            try:
                run = tool_run(record, tool, steps=steps, strength=float(strength), size=size, model=stub,
                               settings=settings)
            except PlanError as error:
                if "flow-matching" not in str(error):
                    raise
                break
            rows.append({"model": model, "tool": tool, "schedule": run.schedule, "strength": float(strength),
                         "steps": steps, "executed_steps": run.executed_steps, "start_sigma": run.start_sigma,
                         "log_snr": run.log_snr, "note": run.note})
    return pd.DataFrame(rows)


def translate(model: str, *, steps: int, strength: float, source: str, target: str, size: int | None = None,
              settings: dict | None = None) -> dict:
    """The ``target`` strength (0.001 grid) whose start log-SNR is nearest the one ``source`` starts from at
    ``strength`` (ties: the same executed steps first, then the lower strength), with the tools' schedule
    ``settings`` (:func:`tool_settings`). ``same_schedule`` says whether the two runs then walk the same sigmas
    (within 1 %); where they do not, ``caveat`` says that the start matches but the images match only under one
    schedule.

    >>> answer = translate("sdxl", steps=30, strength=0.6, source="comfyui", target="diffusers",
    ...                    settings={"comfyui": {"scheduler": "normal"}})
    >>> answer["strength"], answer["executed_steps"], answer["source_executed_steps"], answer["same_schedule"]
    (0.634, 19, 30, False)
    """
    record, settings = scheduler_record(model), tool_settings(settings)
    stub = _stub_model(record)
    start = tool_run(record, source, steps=steps, strength=strength, size=size, model=stub, settings=settings)
    best = None
    for k in range(0, 1001):
        candidate = tool_run(record, target, steps=steps, strength=k / 1000, size=size, model=stub,
                             settings=settings)
        if not candidate.sigmas:
            continue
        gap = abs(candidate.log_snr - start.log_snr) if math.isfinite(start.log_snr) else math.inf
        order = (round(gap, 9), candidate.executed_steps != start.executed_steps, k)
        if best is None or order < best[0]:
            best = (order, candidate)
    if best is None:
        raise PlanError(f"{target} runs no step at any strength with {steps} steps. Fix: use more steps.")
    found = best[1]
    same = same_schedule(start, found)
    caveat = "" if same is not False else (
        f"the start noise matches, but {source} then follows {start.schedule} and {target} {found.schedule}: the "
        f"images match only under one schedule")
    return {"model": model, "steps": steps, "source": source, "source_strength": strength,
            "source_executed_steps": start.executed_steps, "source_log_snr": start.log_snr,
            "source_schedule": start.schedule, "target": target, "strength": found.strength,
            "executed_steps": found.executed_steps, "log_snr": found.log_snr, "schedule": found.schedule,
            "same_schedule": same, "caveat": caveat}


def same_schedule(first: ToolRun, second: ToolRun, *, tolerance: float = 0.01) -> bool | None:
    """Whether two runs step through the same sigmas (each within ``tolerance``, relative); ``None`` where one run
    does not list them (a flow-matching diffusers run reports its start only).

    >>> same_schedule(ToolRun("a", 0.5, 2, 2, (2.0, 1.0, 0.0)), ToolRun("b", 0.5, 2, 2, (2.0, 1.005, 0.0)))
    True
    """
    if len(first.sigmas) < 2 or len(second.sigmas) < 2:
        return None if (len(first.sigmas) == 1 or len(second.sigmas) == 1) else first.sigmas == second.sigmas
    if len(first.sigmas) != len(second.sigmas):
        return False
    return all(abs(a - b) <= tolerance * max(abs(a), abs(b)) for a, b in zip(first.sigmas, second.sigmas))


def strength_map_figure(models, *, steps: int, size: int | None = None, tools=ALL_TOOLS, settings: dict | None = None):
    """Start log-SNR (top) and executed steps (bottom) against strength, one line per model and tool, each labelled
    with the schedule it follows (:func:`tool_settings`): the cliffs (a jump) and plateaus (several strengths, one
    start) of each rule, on one axis. Equal start noise gives the same image only where two tools also share the
    schedule after it; the figure says so under the legend.

    >>> figure = strength_map_figure(["sdxl"], steps=20)
    >>> figure.axes[0].get_ylabel(), "karras" in " ".join(text.get_text() for text in figure.axes[0].get_legend().texts)
    ('start log-SNR (higher: less noise)', True)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strengths = np.round(np.linspace(0.02, 1.0, 50), 3)
    styles = {"diffusers": "-", "a1111": "--", "a1111-fixed-steps": ":", "comfyui": "-.", "invokeai": (0, (1, 3))}
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7.0), dpi=110, sharex=True)
    for model in models:
        table = strength_map(model, steps=steps, strengths=strengths, size=size, tools=tools, settings=settings)
        for (tool, schedule), rows in table.groupby(["tool", "schedule"], sort=False):
            label = f"{model} · {tool} ({schedule})"
            style = {"linestyle": styles.get(tool, "-"), "linewidth": 1.6}
            top.step(rows.strength, rows.log_snr.clip(lower=-12, upper=12), where="mid", label=label, **style)
            bottom.step(rows.strength, rows.executed_steps, where="mid", label=label, **style)
    top.set_ylabel("start log-SNR (higher: less noise)")
    bottom.set_ylabel(f"executed steps (of {steps})")
    bottom.set_xlabel("strength / denoise")
    top.legend(fontsize=7, ncol=2)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    top.set_title(f"What the strength dial runs, {steps} steps" + (f", {size} px" if size else ""))
    figure.text(0.01, 0.005, "Each tool on its own schedule (in brackets). Two tools at the same start log-SNR give the "
                "same image only if their schedules after it match too.", fontsize=7, ha="left", va="bottom")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure
