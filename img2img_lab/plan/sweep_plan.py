"""Sweep plans: the axes of a study, expanded into cells (one generated image each).

A :class:`SweepPlan` names values along eight axes — source image, prompt, negative prompt, strength,
seed, guidance scale, step count and scheduler — and :meth:`SweepPlan.cells` expands their product
into :class:`Cell` objects, strength varying fastest.

What a strength runs depends on the model's family; a sweep asks the model
(:meth:`img2img_lab.models.handle.ModelHandle.step_plan` runs the pipeline's own timestep preparation) and passes
the answer to :meth:`SweepPlan.cells`. Without a model, the plan uses Stable Diffusion's rule
(``StableDiffusionImg2ImgPipeline.get_timesteps``)::

    init_steps = min(int(num_inference_steps * strength), num_inference_steps)
    t_start    = max(num_inference_steps - init_steps, 0)
    timesteps  = scheduler.timesteps[t_start * scheduler.order:]

so a cell executes ``init_steps`` denoising steps, not ``num_inference_steps``. Two consequences the plan
flags instead of hiding:

* **zero-step cells** (no denoising step runs: strength 0, or e.g. 0.04 at 20 steps on SD) would crash deep
  inside diffusers for most schedulers. img2img-lab never calls the pipeline for them: it returns the
  source's VAE round trip and marks the row ``zero_step=True``.
* **duplicate strengths** (0.30 and 0.34 at 20 steps both run 6 steps on SD; on SD3 / FLUX.1 they do not)
  produce identical images; the later one is marked ``duplicate_of`` the first and its image is reused.

Float arithmetic is diffusers' own: ``int(100 * 0.29)`` is 28, and so is the executed step count.

>>> plan = SweepPlan(images=["cat.png"], prompts=["a cat"], strengths=[0.0, 0.3, 0.34], steps=[20])
>>> [(c.strength, c.executed_steps, c.zero_step, c.duplicate_of) for c in plan.cells()]
[(0.0, 0, True, None), (0.3, 6, False, None), (0.34, 6, False, 0.3)]
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from img2img_lab.errors import PlanError
from img2img_lab.plan.values import (MAX_CELLS, as_list, check_guidance, check_model, check_scheduler, check_seed,
                                     check_steps, check_strength, check_text, check_unique, is_integer, shown)

AXES = ("images", "prompts", "negative_prompts", "strengths", "seeds", "guidance_scales", "steps", "schedulers")



@dataclass(frozen=True)
class Cell:
    """One generated image: every parameter that determines it, plus the step arithmetic.

    ``executed_steps`` is the number of denoising steps the model runs (on SD diffusers'
    ``init_steps = min(int(num_inference_steps * strength), num_inference_steps)``), ``t_start`` the index on the scheduler's grid where denoising starts, ``zero_step`` whether no
    denoising step runs, and ``duplicate_of`` the first strength of the same group that runs the same
    steps (``None`` for canonical cells).
    """

    image: str
    image_index: int
    prompt: str
    negative_prompt: str
    strength: float
    seed: int
    guidance_scale: float
    num_inference_steps: int
    scheduler: str
    executed_steps: int
    t_start: int
    zero_step: bool
    duplicate_of: float | None = None
    mode: str = "img2img"
    controlnet_conditioning_scale: float | None = None
    control_guidance_start: float | None = None
    control_guidance_end: float | None = None

    @property
    def init_steps(self) -> int:
        """Diffusers' name for :attr:`executed_steps` (kept for code written against earlier versions)."""
        return self.executed_steps

    def group(self) -> tuple:
        """Everything but the strength: cells of one group differ only in strength."""
        return (self.image_index, self.prompt, self.negative_prompt, self.seed, self.guidance_scale,
                self.num_inference_steps, self.scheduler, *self.conditioning())

    def conditioning(self) -> tuple:
        """The mode and ControlNet settings (``("img2img", None, None, None)`` for a plain img2img cell)."""
        return (self.mode, self.controlnet_conditioning_scale, self.control_guidance_start,
                self.control_guidance_end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.get_timesteps
def strength_steps(num_inference_steps: int, strength: float) -> tuple[int, int]:
    """``(init_steps, t_start)`` exactly as diffusers computes them for img2img.

    >>> strength_steps(20, 0.3), strength_steps(20, 0.04), strength_steps(100, 0.29)
    ((6, 14), (0, 20), (28, 72))
    """
    init_steps = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_steps, 0)
    return init_steps, t_start


@dataclass(frozen=True)
class _RuleSteps:
    executed_steps: int
    t_start: int

    @property
    def zero_step(self) -> bool:
        return self.executed_steps == 0

    @property
    def run_signature(self) -> int:
        return self.t_start


def _stable_diffusion_steps(scheduler: str, num_inference_steps: int, strength: float, image_index: int,
                            mode: str = "img2img"):
    return _RuleSteps(*strength_steps(num_inference_steps, strength))


def _control_count(control) -> int:
    if not isinstance(control, dict):
        return 1
    return math.prod(len(as_list(control.get(axis, [None]))) for axis in ("conditioning_scales", "guidance_starts",
                                                                          "guidance_ends"))


@dataclass
class SweepPlan:
    """The axes of a sweep. Every list is one axis; the cells are their product.

    Parameters
    ----------
    images : list of str
        Source image paths.
    prompts : list of str
    strengths : list of float
        Each in [0, 1].
    seeds : list of int
        Each cell uses a CPU ``torch.Generator().manual_seed(seed)``.
    negative_prompts : list of str
        ``""`` means none.
    guidance_scales : list of float
        Classifier-free guidance; <= 1 disables it.
    steps : list of int
        ``num_inference_steps``; a cell executes ``int(steps * strength)`` of them.
    schedulers : list of str
        Names from :data:`img2img_lab.models.loading.SCHEDULERS`, or ``"default"`` for the model's own.
    model : str, optional
        Hub id or diffusers folder; ``None`` means the embedded default model.
    models : list of str, optional
        Several models compared in one run folder (instead of ``model``): the sweep loads them one at a
        time and runs every cell on each; cells are keyed by the model's fingerprint. ``"embedded"`` names
        the embedded model. See :meth:`model_plans`.
    max_side : int, "native" or None
        Downscale sources so their longest side is at most this; ``"native"`` uses the model's
        training resolution; ``None`` keeps the size.
    resize_policy : {"crop", "resize"}
        How sources reach the model's size multiple (see :func:`img2img_lab.images.fit_to_model`).
    name : str
        A label for the study.
    modes : list of {"img2img", "inpaint"}
        Each cell runs in one mode (:mod:`img2img_lab.plan.conditions`).
    inpaint : dict, optional
        ``{mask: auto | oracle | folder | {name: file}, repaint: background | subject}`` for the inpaint mode.
    control : dict, optional
        ``{image: canny | folder | {name: file}, conditioning_scales, guidance_starts, guidance_ends}`` for
        ControlNet pipelines; the three lists are axes.

    >>> plan = SweepPlan(images=["a.png"], prompts=["a cat"], strengths=[0.2, 0.5], seeds=[0, 1])
    >>> len(plan.cells())
    4
    """

    images: list[str]
    prompts: list[str]
    strengths: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])
    negative_prompts: list[str] = field(default_factory=lambda: [""])
    guidance_scales: list[float] = field(default_factory=lambda: [7.5])
    steps: list[int] = field(default_factory=lambda: [20])
    schedulers: list[str] = field(default_factory=lambda: ["default"])
    model: str | None = None
    models: list[str] | None = None
    max_side: int | str | None = "native"
    resize_policy: str = "crop"
    name: str = "sweep"
    modes: list[str] = field(default_factory=lambda: ["img2img"])
    inpaint: dict | None = None
    control: dict | None = None

    def __post_init__(self) -> None:
        self.images = [check_text(image, "image path") for image in as_list(self.images, "images")]
        self.prompts = [check_text(prompt, "prompt") for prompt in as_list(self.prompts, "prompts")]
        self.negative_prompts = [check_text(text, "negative prompt")
                                 for text in as_list(self.negative_prompts, "negative_prompts")]
        self.strengths = [check_strength(value) for value in as_list(self.strengths, "strengths")]
        self.seeds = [check_seed(value) for value in as_list(self.seeds, "seeds")]
        self.guidance_scales = [check_guidance(value) for value in as_list(self.guidance_scales, "guidance_scales")]
        self.steps = [check_steps(value) for value in as_list(self.steps, "steps")]
        self.schedulers = [check_scheduler(value) for value in as_list(self.schedulers, "schedulers")]
        self.name = check_text(self.name, "name") or "sweep"
        for axis in AXES:
            values = getattr(self, axis)
            if not values:
                raise PlanError(f"the plan's '{axis}' axis is empty. Fix: give at least one value.")
            check_unique(values, axis)
        cells = (math.prod(len(getattr(self, axis)) for axis in AXES) * len(as_list(self.models, "models") or [None])
                 * len(as_list(self.modes, "modes") or [None]) * _control_count(self.control))
        if cells > MAX_CELLS:
            raise PlanError(f"the plan has {cells:,} cells (at most {MAX_CELLS:,}). Fix: shrink an axis or split the "
                            f"study into several sweeps.")
        if self.max_side not in (None, "native"):
            if not is_integer(self.max_side) or not 8 <= int(self.max_side) <= 16384:
                raise PlanError(f"max_side {shown(self.max_side)} must be an integer in [8, 16384], 'native' or "
                                f"null.")
            self.max_side = int(self.max_side)
        if self.resize_policy not in ("crop", "resize"):
            raise PlanError(f"resize_policy {shown(self.resize_policy)} must be 'crop' or 'resize'.")
        from img2img_lab.plan.conditions import check_conditions

        self.modes, self.inpaint, self.control = check_conditions(self.modes, self.inpaint, self.control)
        if self.model is not None:
            self.model = check_text(self.model, "model")
        if self.models is not None:
            self.models = [check_model(value) for value in as_list(self.models, "models")]
            if not self.models:
                raise PlanError("the plan's 'models' list is empty. Fix: list at least one model, or remove it.")
            check_unique(self.models, "models")
            if self.model is not None:
                raise PlanError("the config gives both 'model' and 'models'. Fix: keep one (models: [A, B] compares "
                                "several models in one run folder).")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: str | os.PathLike | None = None) -> "SweepPlan":
        """Build a plan from a dict (e.g. parsed YAML). Scalars become one-value axes.

        Relative image paths are resolved against ``base_dir`` (the config file's folder).

        >>> SweepPlan.from_dict({"images": "a.png", "prompts": "a cat", "strengths": [0.5]}).seeds
        [0]
        """
        if not isinstance(data, dict):
            raise PlanError(f"a sweep config must be a mapping of axis names to values, got {type(data).__name__}. "
                            f"Fix: write one 'axis: values' per line (see data/configs/).")
        known = {item.name for item in fields(cls)}
        aliases = {"image": "images", "prompt": "prompts", "negative_prompt": "negative_prompts",
                   "strength": "strengths", "seed": "seeds", "guidance_scale": "guidance_scales",
                   "guidance": "guidance_scales", "num_inference_steps": "steps", "scheduler": "schedulers",
                   "mode": "modes"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = aliases.get(key, key)
            if name not in known:
                raise PlanError(
                    f"unknown config key {shown(key)}. Fix: use only {', '.join(sorted(known))}."
                )
            if name in values:
                raise PlanError(f"config key {key!r} given twice (also as an alias). Fix: keep one.")
            values[name] = value
        for required in ("images", "prompts", "strengths"):
            if required not in values:
                raise PlanError(f"the config has no '{required}'. Fix: add it (see data/configs/ for examples).")
        if base_dir is not None:
            images = []
            for image in as_list(values["images"]):
                path = Path(str(image)).expanduser()
                images.append(str(path if path.is_absolute() else (Path(base_dir) / path)))
            values["images"] = images
            from img2img_lab.plan.conditions import MASK_SOURCES, resolve_paths

            if isinstance(values.get("inpaint"), dict):
                values["inpaint"] = resolve_paths(values["inpaint"], "mask", MASK_SOURCES, base_dir)
            if isinstance(values.get("control"), dict):
                values["control"] = resolve_paths(values["control"], "image", ("canny",), base_dir)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepPlan":
        """Load a plan from a YAML file (:func:`img2img_lab._utils.configfile.read_config`: no aliases, no duplicate keys);
        image paths are relative to the file.

        >>> plan = SweepPlan.from_yaml("data/configs/quick.yaml")
        >>> plan.images, plan.strengths
        (['data/configs/../sources/white_star_on_red.png'], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        """
        from img2img_lab._utils.configfile import read_config

        path = Path(path)
        data = read_config(path)
        if data is None:
            raise PlanError(f"{path}: the config is empty. Fix: add images, prompts and strengths.")
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except PlanError as error:
            raise PlanError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (what the manifest stores); ``from_dict`` inverts it. A plain img2img plan leaves
        out ``modes``, ``inpaint`` and ``control`` (its record reads as before they existed)."""
        data = asdict(self)
        if data["modes"] == ["img2img"]:
            del data["modes"]
        for name in ("inpaint", "control"):
            if data[name] is None:
                del data[name]
        return data

    # ---------------------------------------------------------------- expansion
    def cells(self, steps: Callable | None = None) -> list[Cell]:
        """Expand the axes into cells: image, prompt, negative, guidance, steps, scheduler, seed, strength.

        ``steps(scheduler, num_inference_steps, strength, image_index)`` says what a strength runs on the model:
        an object with ``executed_steps``, ``t_start``, ``zero_step`` and ``run_signature`` (the sweep passes the
        model handle's :meth:`~img2img_lab.models.handle.ModelHandle.step_plan`, which asks the pipeline itself). Without
        it, Stable Diffusion's rule (:func:`strength_steps`) applies. A cell duplicates the first strength of its
        group with the same ``run_signature``.

        >>> plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.04, 0.5], steps=[20])
        >>> [cell.zero_step for cell in plan.cells()]
        [True, False]
        """
        from img2img_lab.plan.conditions import control_settings

        steps = steps or _stable_diffusion_steps
        cells: list[Cell] = []
        groups = itertools.product(self.modes, enumerate(self.images), self.prompts, self.negative_prompts,
                                   self.guidance_scales, self.steps, self.schedulers, control_settings(self.control),
                                   self.seeds)
        for mode, (image_index, image), prompt, negative, guidance, count, scheduler, control, seed in groups:
            first_by_run: dict[Any, float] = {}
            for strength in self.strengths:
                run = steps(scheduler, count, strength, image_index, mode=mode) if mode != "img2img" else \
                    steps(scheduler, count, strength, image_index)
                duplicate_of = first_by_run.setdefault(run.run_signature, strength)
                cells.append(Cell(image=image, image_index=image_index, prompt=prompt, negative_prompt=negative,
                                  strength=strength, seed=seed, guidance_scale=guidance, num_inference_steps=count,
                                  scheduler=scheduler, executed_steps=run.executed_steps, t_start=run.t_start,
                                  zero_step=run.zero_step,
                                  duplicate_of=None if duplicate_of == strength else duplicate_of, mode=mode,
                                  **control))
        return cells

    def model_plans(self) -> list["SweepPlan"]:
        """One single-model plan per model of the ``models`` axis (``[self]`` without one); ``"embedded"`` becomes
        ``None``, the embedded default.

        >>> plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], models=["embedded", "./sdxl"])
        >>> [sub.model for sub in plan.model_plans()]
        [None, './sdxl']
        """
        if not self.models:
            return [self]
        return [SweepPlan.from_dict({**self.to_dict(), "models": None, "model": None if model == "embedded" else model})
                for model in self.models]

    def summary(self) -> str:
        """One line: the size of each axis and the number of cells."""
        sizes = " x ".join(f"{len(getattr(self, axis))} {axis}" for axis in AXES)
        models = f" x {len(self.models)} models" if self.models else ""
        models += f" x {len(self.modes)} modes" if len(self.modes) > 1 else ""
        return f"{sizes}{models} = {len(self.cells()) * len(self.models or [None])} cells"
