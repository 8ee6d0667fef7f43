"""Sweep plans: the axes of a study, expanded into cells (one generated image each).

A :class:`SweepPlan` names values along the axes of :data:`img2img_lab.plan.axes.AXES` — source image, prompt,
negative prompt, strength, seed, guidance scale, step count, scheduler, mode and the ControlNet settings — and
:meth:`SweepPlan.cells` expands their product into :class:`Cell` objects, strength varying fastest. Both classes get
one field per axis from that table.

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
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from img2img_lab.errors import PlanError
from img2img_lab.plan.axes import AXES, EXPANSION, cell_label_parts, top_level_axes, values_in_mode, yaml_aliases
from img2img_lab.plan.values import MAX_CELLS, as_list, check_model, check_text, check_unique, is_integer, shown


def _with_axis_fields(*, plan: bool):
    """Give a class one dataclass field per axis of :data:`~img2img_lab.plan.axes.AXES` — a list of values for the
    plan (top-level axes; a section's axes live in its mapping), one value for a cell — then make it a keyword-only
    dataclass (a frozen one for cells)."""
    def decorate(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for axis in (top_level_axes() if plan else AXES):
            name = axis.plural if plan else axis.name
            annotations[name] = "list" if plan else axis.kind.__name__
            if plan and axis.default:
                setattr(cls, name, field(default_factory=lambda values=axis.default: list(values)))
            elif not plan and axis.has_baseline():
                setattr(cls, name, axis.baseline)
            elif name in cls.__dict__:
                delattr(cls, name)
        cls.__annotations__ = annotations
        return dataclass(kw_only=True, frozen=not plan)(cls)

    return decorate


@_with_axis_fields(plan=False)
class Cell:
    """One generated image: one value per axis (:data:`~img2img_lab.plan.axes.AXES`: ``image``, ``prompt``,
    ``negative_prompt``, ``strength``, ``seed``, ``guidance_scale``, ``num_inference_steps``, ``scheduler``, ``mode``
    and the ControlNet settings), plus the step arithmetic.

    ``image_index`` is the image's position in the plan; ``executed_steps`` the number of denoising steps the model
    runs (on SD diffusers' ``init_steps = min(int(num_inference_steps * strength), num_inference_steps)``),
    ``t_start`` the index on the scheduler's grid where denoising starts, ``zero_step`` whether no denoising step
    runs, and ``duplicate_of`` the first strength of the same group that runs the same steps (``None`` for
    canonical cells).
    """

    image_index: int
    executed_steps: int
    t_start: int
    zero_step: bool
    duplicate_of: float | None = None

    @property
    def init_steps(self) -> int:
        """Diffusers' name for :attr:`executed_steps` (kept for code written against earlier versions)."""
        return self.executed_steps

    def group(self) -> tuple:
        """Every axis but the strength (the image by its index): cells of one group differ only in strength."""
        return tuple(self.image_index if axis.name == "image" else getattr(self, axis.name)
                     for axis in AXES if axis.name != "strength")

    def label(self) -> str:
        """The cell in words, its axes in row order (what ``verify`` prints for a missing cell).

        >>> Cell(image="src/cat.png", image_index=0, prompt="a cat", negative_prompt="", strength=0.3, seed=1,
        ...      guidance_scale=7.5, num_inference_steps=20, scheduler="ddim", executed_steps=6, t_start=14,
        ...      zero_step=False).label()
        "cat.png · 'a cat' · strength 0.3 · seed 1 · guidance 7.5 · 20 steps · ddim"
        """
        return " · ".join(cell_label_parts(self))

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
class RuleSteps:
    """What a strength runs by Stable Diffusion's rule (:func:`strength_steps`), for plans expanded without a model."""

    executed_steps: int
    t_start: int

    @property
    def zero_step(self) -> bool:
        return self.executed_steps == 0

    @property
    def run_signature(self) -> int:
        return self.t_start


def stable_diffusion_steps(scheduler: str, num_inference_steps: int, strength: float, image_index: int,
                           mode: str = "img2img") -> RuleSteps:
    """A step rule of :meth:`SweepPlan.cells`'s shape: Stable Diffusion's, whatever the model."""
    return RuleSteps(*strength_steps(num_inference_steps, strength))


@_with_axis_fields(plan=True)
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
        Names from :data:`img2img_lab.schedulers.SCHEDULERS`, or ``"default"`` for the model's own.
    modes : list of {"img2img", "inpaint"}
        Each cell runs in one mode (:mod:`img2img_lab.plan.condition_settings`).
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
    inpaint : dict, optional
        ``{mask: auto | oracle | folder | {name: file}, repaint: background | subject}`` for the inpaint mode.
    control : dict, optional
        ``{image: canny | folder | {name: file}, conditioning_scales, guidance_starts, guidance_ends,
        control_modes}`` for ControlNet pipelines; the four lists are axes (``control_modes``: a union ControlNet's
        mode per control image).
    memory : dict, optional
        ``{offload, vae_tiling, vae_slicing, attention_slicing, memory_budget}``: how the sweep fits the model in
        memory (:mod:`img2img_lab.plan.memory_settings`).
    loras : list, optional
        LoRA adapter settings, an axis: ``none``, ``{file: a.safetensors, scales: [0.5, 1]}`` or ``{files: [a, b],
        scales: [[0.5, 1], [1, 1]]}`` (:mod:`img2img_lab.plan.lora_settings`); kept as settings' text.
    adapters : dict, optional
        ``{hash: path}`` of the adapter files the settings name (filled from ``loras``).

    >>> plan = SweepPlan(images=["a.png"], prompts=["a cat"], strengths=[0.2, 0.5], seeds=[0, 1])
    >>> len(plan.cells())
    4
    """

    model: str | None = None
    models: list[str] | None = None
    max_side: int | str | None = "native"
    resize_policy: str = "crop"
    name: str = "sweep"
    inpaint: dict | None = None
    control: dict | None = None
    memory: dict | None = None
    adapters: dict | None = None

    def __post_init__(self) -> None:
        from img2img_lab.plan.lora_settings import expand_lora_entries, setting_parts

        self.loras, adapters = expand_lora_entries(self.loras, self.adapters)
        used = {file_hash for setting in self.loras for _, file_hash, _ in setting_parts(setting)}
        self.adapters = {file_hash: path for file_hash, path in adapters.items() if file_hash in used} or None
        for axis in top_level_axes():
            values = [value if axis.at_baseline(value) else axis.check(value)  # the baseline: what cells had before
                      for value in as_list(getattr(self, axis.plural), axis.plural)]
            if not values:
                raise PlanError(f"the plan's '{axis.plural}' axis is empty. Fix: give at least one value.")
            check_unique(values, axis.plural)
            setattr(self, axis.plural, values)
        self.name = check_text(self.name, "name") or "sweep"
        from img2img_lab.plan.condition_settings import check_conditions

        self.inpaint, self.control = check_conditions(self.modes, self.inpaint, self.control)
        if self.memory is not None:
            from img2img_lab.plan.memory_settings import MemoryControls

            self.memory = MemoryControls.from_config(self.memory).record()
        self._check_models()
        cells = math.prod(len(self.axis_values(axis)) for axis in AXES) * len(self.models or [None])
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

    def _check_models(self) -> None:
        if self.model is not None:
            self.model = check_text(self.model, "model")
        if self.models is None:
            return
        self.models = [check_model(value) for value in as_list(self.models, "models")]
        if not self.models:
            raise PlanError("the plan's 'models' list is empty. Fix: list at least one model, or remove it.")
        check_unique(self.models, "models")
        if self.model is not None:
            raise PlanError("the config gives both 'model' and 'models'. Fix: keep one (models: [A, B] compares "
                            "several models in one run folder).")

    def axis_values(self, axis) -> list:
        """The values of one axis: its list, or its list in its section (a section axis left out: its default)."""
        if axis.section is None:
            return getattr(self, axis.plural)
        return list((getattr(self, axis.section) or {}).get(axis.plural, axis.default))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: str | os.PathLike | None = None) -> "SweepPlan":
        """Build a plan from a dict (e.g. parsed YAML). Scalars become one-value axes; an axis may be named by its
        singular (``strength: 0.5``) or an alias (``guidance``).

        Relative image paths are resolved against ``base_dir`` (the config file's folder).

        >>> SweepPlan.from_dict({"images": "a.png", "prompts": "a cat", "strengths": [0.5]}).seeds
        [0]
        """
        if not isinstance(data, dict):
            raise PlanError(f"a sweep config must be a mapping of axis names to values, got {type(data).__name__}. "
                            f"Fix: write one 'axis: values' per line (see data/configs/).")
        known, aliases = {item.name for item in fields(cls)}, yaml_aliases()
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = aliases.get(key, key)
            if name not in known:
                raise PlanError(f"unknown config key {shown(key)}. Fix: use only {', '.join(sorted(known))}.")
            if name in values:
                raise PlanError(f"config key {key!r} given twice (also as an alias). Fix: keep one.")
            values[name] = value
        required = [item.name for item in fields(cls) if item.default is MISSING and item.default_factory is MISSING]
        for name in required:
            if name not in values:
                raise PlanError(f"the config has no '{name}'. Fix: add it (see data/configs/ for examples).")
        if base_dir is not None:
            values = _relative_to(values, base_dir)
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
        """The plan as plain data (what the manifest stores); ``from_dict`` inverts it. An axis at its baseline
        (``modes: [img2img]``) and unset sections are left out, so a record reads as before they existed."""
        data = asdict(self)
        for axis in top_level_axes():
            if axis.has_baseline() and data[axis.plural] == [axis.baseline]:
                del data[axis.plural]
        for name in ("inpaint", "control", "memory", "adapters"):
            if data[name] is None:
                del data[name]
        return data

    # ---------------------------------------------------------------- expansion
    def cells(self, steps: Callable | None = None) -> list[Cell]:
        """Expand the axes into cells in :data:`~img2img_lab.plan.axes.EXPANSION` order (strength fastest).

        ``steps(scheduler, num_inference_steps, strength, image_index)`` says what a strength runs on the model:
        an object with ``executed_steps``, ``t_start``, ``zero_step`` and ``run_signature`` (the sweep passes the
        model handle's :meth:`~img2img_lab.models.handle.ModelHandle.step_plan`, which asks the pipeline itself). Without
        it, Stable Diffusion's rule (:func:`strength_steps`) applies. A cell duplicates the first strength of its
        group with the same ``run_signature``.

        >>> plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.04, 0.5], steps=[20])
        >>> [cell.zero_step for cell in plan.cells()]
        [True, False]
        """
        steps = steps or stable_diffusion_steps
        outer = [axis for axis in EXPANSION if axis.name != "strength"]
        choices = [list(enumerate(self.images)) if axis.name == "image" else self.axis_values(axis)
                   for axis in outer]
        cells: list[Cell] = []
        seen: set = set()
        for combination in itertools.product(*choices):
            values = values_in_mode(dict(zip((axis.name for axis in outer), combination)))
            if tuple(values.values()) in seen:  # an option of another mode: the same cell as one made already
                continue
            seen.add(tuple(values.values()))
            image_index, values["image"] = values["image"]
            first_by_run: dict[Any, float] = {}
            for strength in self.strengths:
                extra = {} if values["mode"] == "img2img" else {"mode": values["mode"]}
                run = steps(values["scheduler"], values["num_inference_steps"], strength, image_index, **extra)
                duplicate_of = first_by_run.setdefault(run.run_signature, strength)
                cells.append(Cell(**values, strength=strength, image_index=image_index,
                                  executed_steps=run.executed_steps, t_start=run.t_start, zero_step=run.zero_step,
                                  duplicate_of=None if duplicate_of == strength else duplicate_of))
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
        """One line: the size of each axis and the number of cells (an axis with a baseline, or in a section, only
        where it has several values).

        >>> SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.2, 0.5], seeds=[0, 1]).summary()
        '1 images x 1 prompts x 1 negative_prompts x 2 strengths x 2 seeds x 1 guidance_scales x 1 steps x 1 schedulers = 4 cells'
        """
        sizes = [f"{len(self.axis_values(axis))} {axis.plural}" for axis in AXES
                 if len(self.axis_values(axis)) > 1 or not (axis.has_baseline() or axis.section)]
        models = f" x {len(self.models)} models" if self.models else ""
        return f"{' x '.join(sizes)}{models} = {len(self.cells()) * len(self.models or [None])} cells"


def _relative_to(values: dict, base_dir) -> dict:
    """Image, mask and control paths of a config resolved against its folder."""
    from img2img_lab.plan.condition_settings import CONTROL_SOURCES, MASK_SOURCES, resolve_paths

    images = []
    for image in as_list(values["images"]):
        path = Path(str(image)).expanduser()
        images.append(str(path if path.is_absolute() else (Path(base_dir) / path)))
    values = {**values, "images": images}
    if isinstance(values.get("inpaint"), dict):
        values["inpaint"] = resolve_paths(values["inpaint"], "mask", MASK_SOURCES, base_dir)
    if isinstance(values.get("control"), dict):
        values["control"] = resolve_paths(values["control"], "image", CONTROL_SOURCES, base_dir)
    if values.get("loras") is not None:
        from img2img_lab.plan.lora_settings import resolve_lora_paths

        values["loras"] = resolve_lora_paths(values["loras"], base_dir)
    return values
