"""The sweep axes, declared once: one :class:`Axis` row per axis in :data:`AXES`.

Everything an axis means is a field of its row — its YAML key and aliases, the check of one value, the plan's
default, whether and how it enters the cell key, its table columns, the pipeline argument it reaches, whether cells
may differ in it inside one batch of the batched engine, how a cell label and the command line name it — and
everything that lists axes is derived from :data:`AXES`: :class:`~img2img_lab.plan.sweep_plan.Cell` and
:class:`~img2img_lab.plan.sweep_plan.SweepPlan` get one field per axis, and the results table's parameter columns,
:func:`~img2img_lab.plan.schema.cell_key`, row identities, labels, the ``sweep`` command's options and the batched
engine's chunk key read the rows (as hydra's sweeper expands a search space declared as data). Adding an axis is one
row here, its argument in the family call if the pipeline takes it, and a test.

The rows are in the order a row of the results table reads (source, prompt, ..., strength, ...); ``nest`` orders the
expansion instead (outermost first; strength varies fastest). An axis added after run folders existed has a
``baseline``: the value every earlier cell implicitly had, which leaves a cell's key, record and label as they were.

>>> [axis.plural for axis in top_level_axes()][:4]
['images', 'prompts', 'negative_prompts', 'strengths']
>>> axis_named("num_inference_steps").key, axis_named("mode").baseline, axis_named("seed").batchable
('steps', 'img2img', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from img2img_lab.errors import PlanError
from img2img_lab.plan.lora_settings import (NO_LORA, check_lora_setting, lora_columns, lora_from_row, lora_key,
                                            lora_words)
from img2img_lab.plan.values import (check_guidance, check_scheduler, check_seed, check_steps, check_strength,
                                     check_text, is_number, shown)

#: An axis without a baseline: every cell of every version is keyed, recorded and labelled by its value.
NO_BASELINE = object()
#: The modes a cell runs in (:mod:`img2img_lab.plan.condition_settings` checks their settings).
MODES = ("img2img", "inpaint")


def _check_mode(value: Any) -> str:
    if value not in MODES:
        raise PlanError(f"unknown mode {shown(value)}. Fix: use {' or '.join(MODES)}.")
    return value


def _check_composite(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"inpaint composite value {shown(value)} must be true or false.")
    return value


def _pixels_check(plural: str) -> Callable[[Any], int]:
    """The check of an inpainting option in pixels: a whole number >= 0 (the image's size bounds it later:
    :func:`img2img_lab.sweep.source_conditions.check_inpaint_pixels`)."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not is_number(value) or float(value) != int(value) or int(value) < 0:
            raise PlanError(f"inpaint {plural} value {shown(value)} must be a whole number of pixels >= 0. Fix: e.g. "
                            f"{plural}: [0, 4].")
        return int(value)

    return check


def _control_check(plural: str) -> Callable[[Any], float]:
    """The check of a ControlNet setting: a number in [0, 10]."""
    def check(value: Any) -> float:
        if isinstance(value, bool) or not is_number(value) or not 0 <= float(value) <= 10:
            raise PlanError(f"control {plural} value {shown(value)} must be a number in [0, 10].")
        return float(value)

    return check


def _check_control_mode(value: Any) -> str:
    """A union ControlNet's mode (the kind of map its control image is): a whole number >= 0, or one per control
    image (a list, or its text ``"3,1"``), kept as text (``"3"``, ``"3,1"``) so a cell key and a table column hold it
    as written."""
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    modes = [int(part) if isinstance(part, str) and part.strip().isdigit() else part for part in parts]
    if not modes or any(isinstance(mode, bool) or not isinstance(mode, int) or mode < 0 for mode in modes):
        raise PlanError(f"control control_modes value {shown(value)} must be a union ControlNet's mode (a whole "
                        f"number >= 0) or a list of them, one per control image. Fix: e.g. control_modes: [3] or "
                        f"control_modes: [[3, 1]] for two control images.")
    return ",".join(str(mode) for mode in modes)


def control_mode_list(value: str) -> list[int]:
    """The ``control_mode`` argument of a union ControlNet pipeline: one mode per control image.

    >>> control_mode_list("3,1")
    [3, 1]
    """
    return [int(part) for part in value.split(",")]


@dataclass(frozen=True)
class Axis:
    """One sweep axis (see the module doc). ``check`` turns one value into the checked value or raises
    :class:`PlanError`; ``kind`` is ``float``, ``int`` or ``str`` (how a row's value is read back and a key writes
    it: floats by ``repr``)."""

    name: str  # the Cell field (and the table column, unless ``columns`` says otherwise)
    plural: str  # the SweepPlan field and YAML key: a list of values
    kind: type
    check: Callable[[Any], Any]
    default: tuple = ()  # the plan's values when the config leaves the axis out; () = required
    nest: int = 0  # expansion order, outermost first
    aliases: tuple[str, ...] = ()  # more YAML keys (the singular ``name`` is always one)
    section: str | None = None  # the YAML mapping holding it (``control``), else top level
    key: str | None = None  # its name in the cell key (None: the axis's ``name``)
    keyed: bool = True  # whether its value enters the cell key itself (the image enters by its content hash)
    baseline: Any = NO_BASELINE
    columns: tuple[str, ...] = ()  # its table columns (default: its name)
    call: str | None = None  # the pipeline argument it reaches where ``__call__`` takes it (None: the family's)
    call_value: Callable[[Any], Any] | None = None  # what that argument takes for a value (None: the value)
    batchable: bool = True  # may cells differ in it inside one batch of the batched engine
    role: str = "condition"  # what analyses make of it: see ROLES
    label: str = "{}"  # how a cell label writes a value
    cli: str = ""  # the ``sweep`` option's help ("" = no option)
    repeat: bool = False  # the option repeats (free text, which may hold commas) instead of taking a comma list
    # A value of several parts (a LoRA setting: names, hashes, scales) says how it is keyed, tabled, read back from a
    # row and written in a label; None: the value itself, in the axis's one column.
    key_of: Callable[[Any], str] | None = None
    columns_of: Callable[[Any], dict] | None = None
    from_row: Callable[[dict], Any] | None = None
    words: Callable[[Any], str] | None = None
    # The modes a cell's value applies in (None: every mode); in the others the axis keeps its baseline.
    modes: tuple[str, ...] | None = None

    @property
    def key_name(self) -> str:
        return self.key or self.name

    @property
    def table_columns(self) -> tuple[str, ...]:
        return self.columns or (self.name,)

    def has_baseline(self) -> bool:
        return self.baseline is not NO_BASELINE

    def at_baseline(self, value) -> bool:
        """Whether ``value`` is the one every cell had before this axis existed."""
        return self.has_baseline() and value == self.baseline

    def key_text(self, value):
        """What the cell key holds for ``value`` (floats by ``repr``, so 0.3 and 0.30000000000000004 differ)."""
        if self.key_of is not None:
            return self.key_of(value)
        return repr(float(value)) if self.kind is float else value

    def row_columns(self, value) -> dict:
        """The table columns ``value`` fills (an axis with ``columns_of``; else ``{name: value}``)."""
        return self.columns_of(value) if self.columns_of is not None else {self.name: value}

    def row_value(self, row: dict):
        """This axis's value in a results row (the image: its path, the ``source`` column)."""
        if self.from_row is not None:
            return self.from_row(row)
        return self.read(row.get("source" if self.name == "image" else self.name))

    def read(self, value):
        """A table value read back into this axis's kind (missing: the baseline)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None if not self.has_baseline() else self.baseline
        if self.kind is bool and isinstance(value, str):
            return value.strip().lower() in ("true", "1")
        return self.kind(value)


#: What analyses make of an axis: ``unit`` (a calibration's experimental unit, resampled as a whole: the source and
#: its prompts), ``condition`` (decided separately: one strength reference table per value), ``replicate`` (the
#: seed), ``dial`` (the strength), ``mode`` (split before calibrating), ``control`` (a ControlNet setting).
ROLES = ("unit", "condition", "replicate", "dial", "mode", "control")

#: Every axis, in the order a results row reads. ``nest`` gives the expansion order (strength innermost).
AXES: tuple[Axis, ...] = (
    Axis("image", "images", str, lambda value: check_text(value, "image path"), nest=10, keyed=False,
         columns=("source", "source_name", "source_hash"), role="unit", label="{}", cli=""),
    Axis("prompt", "prompts", str, lambda value: check_text(value, "prompt"), nest=20, call="prompt", role="unit",
         label="{!r}", cli="prompt(s) to sweep (repeat the option), instead of the config's", repeat=True),
    Axis("negative_prompt", "negative_prompts", str, lambda value: check_text(value, "negative prompt"),
         default=("",), nest=30, role="unit", label="negative {!r}",
         cli="negative prompt(s) (repeat the option; \"\" for none), instead of the config's", repeat=True),
    Axis("strength", "strengths", float, check_strength, nest=1000, call="strength", role="dial", label="strength {:g}",
         cli="comma-separated strengths in [0, 1], instead of the config's"),
    Axis("seed", "seeds", int, check_seed, default=(0,), nest=900, role="replicate", label="seed {}",
         cli="comma-separated seeds, instead of the config's"),
    Axis("guidance_scale", "guidance_scales", float, check_guidance, default=(7.5,), nest=40, aliases=("guidance",),
         label="guidance {:g}", cli="comma-separated guidance scales, instead of the config's"),
    Axis("num_inference_steps", "steps", int, check_steps, default=(20,), nest=50, key="steps",
         call="num_inference_steps", batchable=False, label="{} steps",
         cli="comma-separated step counts, instead of the config's"),
    Axis("scheduler", "schedulers", str, check_scheduler, default=("default",), nest=60, batchable=False,
         cli="comma-separated scheduler names, instead of the config's"),
    Axis("mode", "modes", str, _check_mode, default=("img2img",), nest=0, baseline="img2img",
         columns=("mode", "repaint", "mask_hash"), batchable=False, role="mode", label="{}",
         cli="comma-separated modes (img2img, inpaint), instead of the config's"),
    Axis("controlnet_conditioning_scale", "conditioning_scales", float, _control_check("conditioning_scales"), default=(None,), nest=70,
         section="control", baseline=None, columns=("control_hash", "controlnet_conditioning_scale"),
         call="controlnet_conditioning_scale", batchable=False, role="control", label="control scale {:g}"),
    Axis("control_guidance_start", "guidance_starts", float, _control_check("guidance_starts"), default=(None,), nest=71,
         section="control", baseline=None, call="control_guidance_start", batchable=False, role="control",
         label="control start {:g}"),
    Axis("control_guidance_end", "guidance_ends", float, _control_check("guidance_ends"), default=(None,), nest=72,
         section="control", baseline=None, call="control_guidance_end", batchable=False, role="control",
         label="control end {:g}"),
    # A union ControlNet's mode per control image (SDXL's ControlNet++ ``num_control_type``, FLUX.1's ``num_mode``).
    Axis("control_mode", "control_modes", str, _check_control_mode, default=(None,), nest=73, section="control",
         baseline=None, call="control_mode", call_value=control_mode_list, batchable=False, role="control",
         label="control mode {}"),
    # Inpainting as people's tools run it (:mod:`img2img_lab.plan.condition_settings`); inpaint cells only.
    Axis("composite", "composite", bool, _check_composite, default=(False,), nest=74, section="inpaint",
         baseline=False, batchable=False, role="mode", label="{}", modes=("inpaint",),
         words=lambda value: "composited" if value else "not composited"),
    Axis("mask_blur", "mask_blur", int, _pixels_check("mask_blur"), default=(0,), nest=75, section="inpaint",
         baseline=0, batchable=False, role="mode", label="mask blur {}", modes=("inpaint",)),
    Axis("padding_mask_crop", "padding_mask_crop", int, _pixels_check("padding_mask_crop"), default=(None,), nest=76,
         section="inpaint", baseline=None, call="padding_mask_crop", batchable=False, role="mode",
         label="only masked, padding {}", modes=("inpaint",)),
    Axis("lora", "loras", str, check_lora_setting, default=(NO_LORA,), nest=5, baseline=NO_LORA,
         columns=("lora", "lora_hashes", "lora_scales"), batchable=False, label="LoRA {}",
         key_of=lora_key, columns_of=lora_columns, from_row=lora_from_row, words=lora_words),
)

#: The expansion order: outermost first, strength innermost (a group of cells differs only in strength).
EXPANSION: tuple[Axis, ...] = tuple(sorted(AXES, key=lambda axis: axis.nest))


def names_with_role(role: str) -> tuple[str, ...]:
    """The names of the axes of one role (:data:`ROLES`), in table order.

    >>> names_with_role("condition")
    ('guidance_scale', 'num_inference_steps', 'scheduler', 'lora')
    """
    return tuple(axis.name for axis in AXES if axis.role == role)


def axis_named(name: str) -> Axis:
    """The row of ``name`` (a Cell field)."""
    for axis in AXES:
        if axis.name == name:
            return axis
    raise KeyError(f"no axis {name!r}")


def top_level_axes() -> tuple[Axis, ...]:
    """The axes a config lists at its top level (the others live under their ``section``)."""
    return tuple(axis for axis in AXES if axis.section is None)


def section_axes(section: str) -> dict[str, Axis]:
    """``{plural: axis}`` of the axes under a config section (``control``)."""
    return {axis.plural: axis for axis in AXES if axis.section == section}


def yaml_aliases() -> dict[str, str]:
    """Every other YAML key of a top-level axis (its singular name and aliases) -> its plural key.

    >>> yaml_aliases()["guidance"], yaml_aliases()["num_inference_steps"]
    ('guidance_scales', 'steps')
    """
    return {alias: axis.plural for axis in top_level_axes() for alias in (axis.name, *axis.aliases)
            if alias != axis.plural}


def key_payload(cell) -> dict:
    """What a cell's axes put in its cell key: every keyed axis by its key name, an axis at its baseline left out.

    >>> from img2img_lab.plan.sweep_plan import Cell
    >>> cell = Cell(image="a.png", image_index=0, prompt="p", negative_prompt="", strength=0.3, seed=1,
    ...             guidance_scale=7.5, num_inference_steps=20, scheduler="ddim", executed_steps=6, t_start=14,
    ...             zero_step=False)
    >>> sorted(key_payload(cell))
    ['guidance_scale', 'negative_prompt', 'prompt', 'scheduler', 'seed', 'steps', 'strength']
    """
    payload = {}
    for axis in AXES:
        value = getattr(cell, axis.name)
        if axis.keyed and not axis.at_baseline(value):
            payload[axis.key_name] = axis.key_text(value)
    return payload


def cell_label_parts(cell) -> list[str]:
    """A cell's axes in words, in row order (the image by its file name; an axis at its baseline, or an empty
    negative prompt, left out)."""
    parts = []
    for axis in AXES:
        value = getattr(cell, axis.name)
        if axis.at_baseline(value) or (axis.name == "negative_prompt" and not value):
            continue
        if axis.name == "image":
            value = Path(value).name
        elif axis.words is not None:
            value = axis.words(value)
        elif axis.kind is str and axis.name != "scheduler" and len(str(value)) > 40:
            value = str(value)[:39] + "…"
        parts.append(axis.label.format(value))
    return parts


def values_in_mode(values: dict) -> dict:
    """A cell's axis values (``{name: value}``) as its mode runs them: an axis that does not apply in the mode at its
    baseline (an img2img cell has no mask to blur), and a cell cropped "only masked" composited (diffusers' crop
    pastes the inpainted crop back over the source itself, so ``padding_mask_crop`` implies ``composite``).

    >>> values_in_mode({"mode": "img2img", "composite": True, "mask_blur": 4, "padding_mask_crop": None})
    {'mode': 'img2img', 'composite': False, 'mask_blur': 0, 'padding_mask_crop': None}
    >>> values_in_mode({"mode": "inpaint", "composite": False, "mask_blur": 4, "padding_mask_crop": 8})["composite"]
    True
    """
    values = {name: (axis_named(name).baseline if axis_named(name).modes is not None
                     and values["mode"] not in axis_named(name).modes else value) for name, value in values.items()}
    if values.get("padding_mask_crop") is not None:
        values["composite"] = True
    return values


def chunk_key(cell) -> tuple:
    """The values cells of one batch of the batched engine must share (its axes that are not ``batchable``)."""
    return tuple(getattr(cell, axis.name) for axis in AXES if not axis.batchable)
