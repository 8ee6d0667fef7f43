"""The model handle: one loaded img2img pipeline and what its family means for every recorded number.

diffusers' img2img families map the strength dial to denoising steps differently (``../shared/DESIGN.md``):

* SD 1.x/2.x, SDXL: ``t_start = N - min(int(N * s), N)``, so 0.30 and 0.34 at 20 steps run the same steps;
* SD3 / SD3.5, Flux: ``t_start = int(N - min(N * s, N))`` (no ``int`` on ``N * s``), and Flux builds its grid
  from ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu``, which depends on the image size;
* LCM: the strength enters ``LCMScheduler.set_timesteps`` itself and every strength runs ``N`` steps.

A :class:`ModelHandle` therefore never re-derives these rules: :meth:`ModelHandle.step_plan` runs the
pipeline's own timestep preparation (its ``retrieve_timesteps`` with the family's arguments, then its
``get_timesteps``) on a fresh copy of the scheduler and records what would run (:class:`StepPlan`).
Zero-step and duplicate flags come from those sequences. The pipeline's family (one module of
:mod:`img2img_lab.models.families`, picked by class by :mod:`img2img_lab.models.registry`; a class no module names
runs only where its own ``get_timesteps`` can be checked, else it is refused, as are pipelines with no strength dial)
adds the rest: native size and size multiple, the call's ``height``/``width``, which arguments the model ignores, the
pipeline's default guidance, the VAE round trip and the batched conditioning. The handle answers every question
asked of a model — label, sizes, fingerprint, description, recommended guidance — so nothing else asks the pipeline.
For inpainting on an img2img pipeline, :meth:`ModelHandle.for_mode` hands down diffusers' inpainting pipeline of
the same components.

>>> from img2img_lab.models.registry import tiny_pipeline
>>> model = as_model(tiny_pipeline("sd3"))
>>> step = model.step_plan("default", 4, 0.3, width=32, height=32)
>>> model.family.name, step.executed_steps, step.t_start   # SD arithmetic would say 1 step from index 3
('sd3', 2, 2)
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from img2img_lab.errors import ModelError, PlanError
from img2img_lab.models.families.base import Family, call_parameters
from img2img_lab.models.registry import family_of, refusal
from img2img_lab.models.step_plans import StepPlan, compute_step_plan
from img2img_lab.plan.axes import AXES
from img2img_lab.plan.condition_settings import MODES

#: Guidance used when a model says nothing better (Stable Diffusion's customary value).
DEFAULT_GUIDANCE = 7.5


#: The attribute a pipeline carries its handle under (set once, by the handle itself).
HANDLE_ATTRIBUTE = "img2img_lab_model"


class ModelHandle:
    """A loaded diffusers img2img pipeline plus its family, name, folder and scheduler cache.

    Everything the rest of img2img-lab asks about a model goes through this object: sizes
    (:meth:`size_multiple`, :meth:`native_resolution`), what a strength runs (:meth:`step_plan`), which plans
    make sense (:meth:`check_plan`), the arguments of a plain call (:meth:`call_arguments`) and the fingerprint.
    ``pipe`` stays an ordinary diffusers pipeline; it carries only a reference to its handle
    (``pipe.img2img_lab_model``), so a caller who holds the pipeline and passes it back (``pipe=``) gets the same
    handle at the API's edge (:func:`as_model`); inside, the handle is handed down.

    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> model = as_model(tiny_pipeline("flux-dev"))
    >>> model.family.name, model.size_multiple(), model.native_resolution()
    ('flux', 4, 256)
    """

    def __init__(self, pipe, *, label: str | None = None, folder: str | None = None,
                 threads_reason: str = "not chosen by img2img-lab (a pipeline it did not load)"):
        self.pipe = pipe
        self.label = label or str(getattr(pipe, "name_or_path", "") or "in-memory")
        self.folder = folder
        self.base_scheduler_config = {**dict(pipe.scheduler.config), "_class_name": type(pipe.scheduler).__name__}
        self.refusal = refusal(pipe)  # why this pipeline cannot be swept (None: it can)
        self.family: Family = family_of(type(pipe).__name__)(pipe)
        self.parent: ModelHandle | None = None
        self._modes: dict[str, ModelHandle] = {}
        self._schedulers: dict[str, Any] = {}
        self._steps: dict[tuple, StepPlan] = {}
        self._fingerprint: dict | None = None
        self._floors: dict[tuple, Any] = {}  # (fingerprint, source hash, seed) -> the VAE round trip
        self._kept_at: Path | None = None  # where this model's fingerprint as loaded is kept (models/kept.py)
        self._loaded_stamps: dict[str, str] = {}
        self._stamps: dict[str, str] = {}
        self.threads_reason = threads_reason
        self.offload = "none"  # diffusers' CPU offload put on the pipeline (models/memory.py)
        self._steady: dict | None = None  # inside steady(): the device and fingerprint, each read once
        setattr(pipe, HANDLE_ATTRIBUTE, self)

    # ------------------------------------------------------------------ a steady stretch
    @property
    def device(self):
        """The pipeline's device (``pipe.device``: a walk over its modules, about 2 ms for the embedded model), read
        once inside :meth:`steady`."""
        if self._steady is None:
            return self.pipe.device
        if "device" not in self._steady:
            self._steady["device"] = self.pipe.device
        return self._steady["device"]

    @contextmanager
    def steady(self):
        """A stretch in which the caller neither moves the pipeline nor changes its weights (a sweep, from opening
        its folder to keying its cells): :attr:`device` and :meth:`fingerprint` are each worked out once in it, not at
        every question. Nested stretches share the outer one.

        >>> with model.steady():
        ...     model.fingerprint() is model.fingerprint()
        True
        """
        if self._steady is not None:
            yield self
            return
        self._steady = {}
        try:
            yield self
        finally:
            self._steady = None

    # ------------------------------------------------------------------ schedulers
    def scheduler(self, name: str):
        """The scheduler instance for ``name`` (one per name, built from the model's own config)."""
        from img2img_lab.schedulers import make_scheduler

        allowed = self.family.schedulers
        if allowed is not None and name not in allowed:
            raise PlanError(f"scheduler {name!r} cannot run {self.family.label} ({type(self.pipe).__name__}). "
                            f"Fix: use {' or '.join(repr(value) for value in allowed)}.")
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(self.base_scheduler_config, name)
        return self._schedulers[name]

    def use_scheduler(self, name: str):
        """Put the named scheduler on the pipeline (reusing one instance per name, as a user would)."""
        self.pipe.scheduler = self.scheduler(name)
        return self.pipe.scheduler

    # ------------------------------------------------------------------ sizes and arguments
    def size_multiple(self) -> int:
        return self.family.size_multiple()

    def native_resolution(self) -> int | None:
        return self.family.native_resolution()

    def call_arguments(self, cell, source, condition: dict | None = None) -> dict:
        """The keyword arguments of the plain diffusers call that generates ``cell`` from ``source``: each axis's
        value under its pipeline argument (:attr:`~img2img_lab.plan.axes.Axis.call`) where ``__call__`` takes it and
        the value is set, the guidance, negative prompt and ControlNet arguments as the family passes them, the cell's
        generator, and the height and width where the family takes them.

        ``condition`` holds the source's ``mask_image`` (inpainting: white is repainted) and ``control_image``
        (ControlNet) where the cell needs them.

        >>> model.pipe(**model.call_arguments(cell, source)).images[0].size
        (64, 64)
        """
        parameters = call_parameters(self.pipe)
        arguments = {"image": source, "generator": cell_generator(cell.seed)}
        for axis in AXES:
            value = getattr(cell, axis.name)
            if axis.call is not None and axis.call in parameters and value is not None:
                arguments[axis.call] = value if axis.call_value is None else axis.call_value(value)
        arguments.update(self.family.call_extras(cell.guidance_scale, cell.negative_prompt))
        arguments.update({name: value for name, value in (condition or {}).items() if name in parameters})
        arguments.update(self.family.size_arguments(source.width, source.height))
        return self.family.control_arguments(arguments)

    # ------------------------------------------------------------------ modes
    @property
    def inpaints(self) -> bool:
        """Whether this pipeline inpaints (its ``__call__`` takes a ``mask_image``)."""
        return "mask_image" in call_parameters(self.pipe)

    @property
    def needs_control_image(self) -> bool:
        """Whether this pipeline needs a control image (ControlNet / Flux Control)."""
        return "control_image" in call_parameters(self.pipe)

    def for_mode(self, mode: str) -> "ModelHandle":
        """The handle that runs ``mode``: this one where the pipeline already does it, else (inpainting on an img2img
        pipeline) diffusers' inpainting pipeline of the same components (``AutoPipelineForInpainting.from_pipe``:
        a 4-channel UNet inpaints by latent blending), made once."""
        if mode not in MODES:
            raise PlanError(f"unknown mode {mode!r}. Fix: use one of {', '.join(MODES)}.")
        if (mode == "inpaint") == self.inpaints:
            return self
        if self.parent is not None:
            return self.parent.for_mode(mode)
        if mode == "img2img":
            raise PlanError(f"{type(self.pipe).__name__} is an inpainting pipeline: it cannot run plain img2img. "
                            f"Fix: use modes: [inpaint], or load the model's img2img pipeline.")
        if mode not in self._modes:
            self._modes[mode] = self._derived_inpainting()
        return self._modes[mode]

    def _derived_inpainting(self) -> "ModelHandle":
        from diffusers import AutoPipelineForInpainting

        try:
            inpaint = AutoPipelineForInpainting.from_pipe(self.pipe)
        except (ValueError, KeyError, TypeError) as error:
            raise PlanError(f"{type(self.pipe).__name__} has no inpainting pipeline in diffusers ({error}). Fix: "
                            f"remove 'inpaint' from modes, or load an inpainting pipeline.") from None
        inpaint.set_progress_bar_config(disable=True)
        handle = ModelHandle(inpaint, label=self.label, folder=self.folder, threads_reason=self.threads_reason)
        handle.parent = self
        handle.base_scheduler_config = self.base_scheduler_config
        return handle

    def check_sweepable(self) -> None:
        """Raise :class:`ModelError` (one line: the class and what it does instead) where this pipeline cannot be
        swept; called before a run folder is touched."""
        if self.refusal is not None:
            raise ModelError(self.refusal)

    def default_guidance(self) -> float | None:
        return self.family.default_guidance()

    # ------------------------------------------------------------------ strength -> steps
    def step_plan(self, scheduler_name: str, num_inference_steps: int, strength: float, *, width: int,
                  height: int) -> StepPlan:
        """What ``strength`` runs: the pipeline's own timestep preparation on a fresh copy of the scheduler
        (:func:`~img2img_lab.models.step_plans.compute_step_plan`), computed once per setting."""
        key = (scheduler_name, int(num_inference_steps), float(strength), int(width), int(height))
        if key not in self._steps:
            self._steps[key] = compute_step_plan(self.family, self.scheduler(scheduler_name), *key[1:],
                                                 inpaints=self.inpaints)
        return self._steps[key]

    # ------------------------------------------------------------------ plans
    def check_plan(self, plan) -> list[str]:
        """Refuse a plan whose cells would repeat one image under several keys; return notes for the manifest.

        Raises :class:`PlanError` for more steps than a scheduler has timesteps, and when the plan varies (or sets)
        an argument this model ignores: a negative prompt
        on LCM or FLUX.1, several guidance values where guidance does nothing, several negative prompts where
        classifier-free guidance is off, or a scheduler the family cannot run.
        """
        family, ignored, notes = self.family, self.family.ignored_arguments(), []
        for name in plan.schedulers:
            trained = self.scheduler(name).config.get("num_train_timesteps")
            if isinstance(trained, int) and max(plan.steps) > trained:
                raise PlanError(f"steps {max(plan.steps)} is more than scheduler {name!r} of this model accepts "
                                f"(it was trained on {trained} timesteps). Fix: use at most {trained} steps.")
        if "negative_prompt" in ignored and any(plan.negative_prompts):
            raise PlanError(f"this model ignores negative prompts ({ignored['negative_prompt']}), so the plan's "
                            f"negative prompts would change nothing. Fix: remove negative_prompts from the config.")
        if "guidance_scale" in ignored:
            if len(plan.guidance_scales) > 1:
                raise PlanError(f"this model ignores the guidance scale ({ignored['guidance_scale']}), so "
                                f"{plan.guidance_scales} give identical images. Fix: list one guidance value.")
            notes.append(f"guidance_scale is recorded but not used: {ignored['guidance_scale']}")
            return notes + self._family_notes()
        unused = [value for value in plan.guidance_scales if not family.guidance_used(value)]
        if len(unused) > 1:
            raise PlanError(f"guidance scales {unused} all leave classifier-free guidance off on this model (it runs "
                            f"only above 1), so they give identical images. Fix: keep one of them.")
        if unused and len(plan.negative_prompts) > 1 and "negative_prompt" not in ignored:
            raise PlanError(f"at guidance {unused[0]:g} classifier-free guidance is off, so the negative prompts "
                            f"{plan.negative_prompts} give identical images there. Fix: use guidance > 1, or sweep "
                            f"negative prompts in a separate config.")
        return notes + self._family_notes()

    def _family_notes(self) -> list[str]:
        if type(self.family) is Family:
            return [f"{type(self.pipe).__name__} has no img2img-lab family module; its steps were computed with the "
                    f"pipeline's own get_timesteps (checked on a copy of its scheduler)."]
        return []

    def floor(self, source, source_hash: str, seed: int):
        """The source's VAE round trip with ``seed``'s generator (what a zero-step cell of that seed stores), made once
        per weights, source and seed on this handle: sweeps of the same source and model share it.

        >>> model.floor(source, "h", 0) is model.floor(source, "h", 0)
        True
        """
        key = (self.fingerprint()["fingerprint"], source_hash, int(seed))
        if key not in self._floors:
            self._floors[key] = self.family.vae_roundtrip(source, generator=cell_generator(seed))
        return self._floors[key]

    # ------------------------------------------------------------------ identity
    def fingerprint(self, *, refresh: bool = False) -> dict:
        """Hashes of every component's config and weights (see :func:`img2img_lab.models.fingerprint.compute_fingerprint`),
        cached while the weights stay the same (:func:`~img2img_lab.models.fingerprint.component_stamps`): a LoRA fused or a
        weight changed in place since gives a new fingerprint, so cells are never keyed by the old weights. Only the
        components whose stamp changed are hashed again (a float16 VAE upcast for decoding: the VAE, not the UNet)."""
        from img2img_lab.models.fingerprint import component_stamps, compute_fingerprint

        if self._steady is not None and "fingerprint" in self._steady and not refresh:
            return self._steady["fingerprint"]
        stamps = component_stamps(self.pipe)
        if self._fingerprint is None or refresh or stamps != self._stamps:
            kept = {} if refresh or self._fingerprint is None else {
                name: entry for name, entry in self._fingerprint["components"].items()
                if name in stamps and stamps[name] == self._stamps.get(name)}
            self._fingerprint = compute_fingerprint(self.pipe, self.label, scheduler_config=self.base_scheduler_config,
                                                    reuse=kept)
            self._stamps = stamps
            if self._kept_at is not None and stamps == self._loaded_stamps:  # the files as loaded: kept for next time
                self._keep_fingerprint()
        if self._steady is not None:
            self._steady["fingerprint"] = self._fingerprint
        return self._fingerprint

    def keep_fingerprint_at(self, path: Path | None) -> None:
        """Take the fingerprint kept at ``path`` for this model's files as loaded (:mod:`img2img_lab.models.kept`;
        hashing an SD 1.5-sized model's 1.07 B weights takes 5 s on two CPU cores), or keep it there once computed.
        A weight changed after loading is fingerprinted anew and never kept."""
        from img2img_lab.models.fingerprint import component_stamps

        if path is None:
            return
        self._kept_at, self._loaded_stamps = Path(path), component_stamps(self.pipe)
        try:
            kept = json.loads(self._kept_at.read_text())
        except (OSError, ValueError):
            return
        if isinstance(kept, dict) and isinstance(kept.get("fingerprint"), str) and kept.get("model") == self.label:
            self._fingerprint, self._stamps = kept, self._loaded_stamps

    def _keep_fingerprint(self) -> None:
        from img2img_lab._utils.atomic import atomic_write

        try:
            atomic_write(self._kept_at, lambda stream: stream.write(json.dumps(self._fingerprint)), binary=False)
        except OSError:
            pass  # a read-only cache: fingerprinting still works, it is just not kept

    def family_summary(self) -> dict:
        """Family, sizes, default guidance and ignored arguments (the manifest's ``model_family``).

        >>> model.family_summary()["family"], model.family_summary()["native_resolution"]
        ('sd', 64)
        """
        return {"family": self.family.name, "family_label": self.family.label, "sweepable": self.refusal or "yes",
                "size_multiple": self.size_multiple(), "native_resolution": self.native_resolution(),
                "default_guidance": self.default_guidance(), "ignored_arguments": self.family.ignored_arguments()}

    def recommended_guidance(self) -> float:
        """The guidance scale the model's own evaluation recommends, else its pipeline's default, else
        :data:`DEFAULT_GUIDANCE`. A model folder may hold ``evaluation.json`` with ``recommended_guidance`` (the
        embedded model's does: 2.0, measured by :mod:`img2img_lab.shapes.evaluate`); else the pipeline's ``__call__``
        default (SDXL 5.0, SD3 7.0, FLUX.1 3.5, LCM 8.5).

        >>> model.recommended_guidance()  # the embedded model
        2.0
        """
        path = Path(self.folder) / "evaluation.json" if self.folder else None
        if path is not None and path.is_file():
            try:
                return float(json.loads(path.read_text())["recommended_guidance"])
            except (ValueError, KeyError, TypeError):
                pass
        default = self.default_guidance()
        return DEFAULT_GUIDANCE if default is None else default

    def describe(self) -> dict:
        """A summary: name, class, family and size rules, both guidance values (the pipeline's ``__call__`` default
        and the recommended one sweeps use), components with parameter counts, scheduler, device, dtype and
        fingerprint.

        >>> summary = model.describe()
        >>> summary["scheduler"], summary["default_guidance"], summary["recommended_guidance"], summary["size_multiple"]
        ('DDIMScheduler', 7.5, 2.0, 4)
        """
        from img2img_lab.models.fingerprint import component_sizes

        components, total_bytes = component_sizes(self.pipe)
        return {"model": self.label, "pipeline_class": type(self.pipe).__name__, **self.family_summary(),
                "recommended_guidance": self.recommended_guidance(), "components": components,
                "megabytes": round(total_bytes / 1e6, 2), "scheduler": type(self.pipe.scheduler).__name__,
                "device": str(getattr(self.pipe, "device", None)),
                "dtype": str(getattr(self.pipe, "dtype", None)).replace("torch.", ""),
                "fingerprint": self.fingerprint()["fingerprint"]}


def cell_generator(seed: int):
    """The per-cell generator: CPU, seeded with the cell's seed (diffusers' reproducible recipe).

    >>> float(cell_generator(0).initial_seed())
    0.0
    """
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def as_model(pipe_or_model) -> ModelHandle:
    """The :class:`ModelHandle` of a pipeline (the one :func:`~img2img_lab.models.loading.load_pipeline` made, else a
    new one); a handle is returned as is.

    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> pipe = tiny_pipeline("lcm")
    >>> as_model(pipe) is as_model(pipe), as_model(pipe).family.name
    (True, 'lcm')
    """
    if isinstance(pipe_or_model, ModelHandle):
        return pipe_or_model
    handle = getattr(pipe_or_model, HANDLE_ATTRIBUTE, None)
    return handle if isinstance(handle, ModelHandle) and handle.pipe is pipe_or_model else ModelHandle(pipe_or_model)

