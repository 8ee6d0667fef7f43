"""A cell's identity and the results table's columns, in one place; the axes' part of each is derived from the axis
table (:data:`img2img_lab.plan.axes.AXES`).

* :data:`COLUMNS`: every column of ``results.parquet``, in order, as four groups: the cell's **parameters**
  (:data:`PARAMETER_COLUMNS`: each axis's columns, in the table's order), what its strength **runs**
  (:data:`STEP_COLUMNS`), the **output** (:data:`OUTPUT_COLUMNS`) and its **provenance** (:data:`PROVENANCE_COLUMNS`);
  metric columns follow.
* :func:`cell_key`: the content key of a cell (what identifies a request); :func:`cell_parameters` turns a
  :class:`~img2img_lab.plan.sweep_plan.Cell` into its parameter columns and :func:`cell_from_row` turns a row back.
* :data:`SETTING_COLUMNS`: what a strength curve shares (everything but strength and seed); :func:`row_group`:
  the cells that differ only in strength; :func:`row_identity`: one request, as a hashable tuple.
* :class:`Produced`: how a cell's image was made.

>>> COLUMNS[:3], len(COLUMNS)
(['cell_key', 'source', 'source_name'], 54)
>>> Produced.duplicate("diffusion"), is_duplicate("duplicate:diffusion")
('duplicate:diffusion', True)
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from pathlib import Path

from img2img_lab.plan.axes import AXES, key_payload, names_with_role
from img2img_lab.plan.sweep_plan import Cell

#: Each axis's columns, in the axis table's order (the image's are its path, name and content hash; the mode's add the
#: inpainting mask's region and hash, the ControlNet scale's the control image's hash).
PARAMETER_COLUMNS = tuple(column for axis in AXES for column in axis.table_columns)
#: What a strength means in a cell's mode: ``start_from`` ("noised source", "pure noise" — inpainting at strength 1 —
#: or "source": no step) and ``inpaint_method`` ("latent blend" / "masked-image channels"; None for img2img).
STEP_COLUMNS = ("width", "height", "executed_steps", "t_start", "unet_evaluations", "start_timestep",
                "timesteps", "sigma", "log_snr", "sqrt_alpha_bar", "flow_sigma", "zero_step", "duplicate_of",
                "start_from", "inpaint_method")
OUTPUT_COLUMNS = ("produced", "seconds", "output_path", "output_hash", "nsfw_flagged")
PROVENANCE_COLUMNS = ("model", "model_family", "model_fingerprint", "device", "dtype", "torch_threads", "engine",
                      "batch_id", "memory_controls")
#: Columns of results.parquet, in order (metrics are appended by img2img_lab.metrics.measure).
COLUMNS = ["cell_key", *PARAMETER_COLUMNS, *STEP_COLUMNS, *OUTPUT_COLUMNS, *PROVENANCE_COLUMNS]
#: Columns rows written by earlier versions hold that say nothing new (``init_steps`` always equalled
#: ``executed_steps``); tables read from a run folder leave them out.
LEGACY_COLUMNS = ("init_steps",)
#: A calibration's experimental unit: one (source, prompt, negative prompt) pair, resampled as a whole (the ``unit``
#: axes, the image by its content hash).
UNIT_COLUMNS = ("source_hash", *names_with_role("unit")[1:])
#: What a calibration decides separately: one strength reference table per guidance, steps and scheduler (the
#: ``condition`` axes).
CONDITION_COLUMNS = names_with_role("condition")
#: What one strength curve shares: a source, the prompts, the guidance, the steps and the scheduler.
SETTING_COLUMNS = (*UNIT_COLUMNS, *CONDITION_COLUMNS)
#: The same, as people read it (the source's name instead of its hash): a report's or explorer's grid families.
SETTING_LABEL_COLUMNS = ("source_name", *SETTING_COLUMNS[1:])
#: The axes a study varies, as grids, curves and the CLI's ``--rows/--cols/--hue`` name them.
AXIS_COLUMNS = ("model", *names_with_role("mode"), *SETTING_LABEL_COLUMNS, *names_with_role("replicate"),
                *names_with_role("dial"))


class Produced(str, Enum):
    """How a cell's image was made: diffusion, the VAE round trip (a zero-step cell), or reused from the strength it
    duplicates (``"duplicate:<how that one was made>"``)."""

    DIFFUSION = "diffusion"
    VAE_ROUNDTRIP = "vae_roundtrip"

    @staticmethod
    def duplicate(of: str) -> str:
        """The ``produced`` value of a cell that reuses the image of a cell produced ``of``."""
        return f"duplicate:{Produced(of).value}"


def is_duplicate(produced) -> bool:
    """Whether a ``produced`` value (a row's) marks a reused image."""
    return str(produced).startswith("duplicate:")


def is_missing(value) -> bool:
    """Whether a table value holds nothing (absent, or NaN: a metric not measured).

    >>> is_missing(None), is_missing(float("nan")), is_missing(0.0)
    (True, True, False)
    """
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_parameters(cell: Cell, source_hash: str, condition: dict | None = None) -> dict:
    """A cell's parameter columns (:data:`PARAMETER_COLUMNS`); ``condition``: its source's ``repaint``,
    ``mask_hash`` and ``control_hash`` (:meth:`img2img_lab.sweep.source_conditions.SourceCondition.columns`).

    >>> cell = Cell(image="src/cat.png", image_index=0, prompt="a cat", negative_prompt="", strength=0.3, seed=1,
    ...             guidance_scale=7.5, num_inference_steps=20, scheduler="ddim", executed_steps=6, t_start=14,
    ...             zero_step=False)
    >>> cell_parameters(cell, "h")["source_name"]
    'cat'
    """
    derived = {"source": cell.image, "source_name": Path(cell.image).stem, "source_hash": source_hash,
               "repaint": None, "mask_hash": None, "control_hash": None, **(condition or {})}
    for axis in AXES:
        if axis.columns_of is not None:
            derived.update(axis.row_columns(getattr(cell, axis.name)))
    return {column: derived[column] if column in derived else getattr(cell, column) for column in PARAMETER_COLUMNS}


def with_baseline_columns(table):
    """``table`` with the columns of an axis of several parts that its rows predate (the LoRA axis: rows of earlier
    versions ran without an adapter), so analyses that split by them read every folder alike.

    >>> import pandas as pd
    >>> with_baseline_columns(pd.DataFrame({"strength": [0.5]}))["lora"].tolist()
    ['none']
    """
    missing = [axis for axis in AXES if axis.columns_of is not None and axis.has_baseline()
               and axis.name not in table.columns]
    if len(table) == 0 or not missing:
        return table
    return table.assign(**{column: value for axis in missing for column, value in
                           axis.row_columns(axis.baseline).items()})


def cell_from_row(row: dict, image_index: int, steps_of) -> Cell:
    """The cell a row records (its steps from the model: ``steps_of``, see :func:`img2img_lab.sweep.run.source_steps`);
    an axis a row of an earlier version lacks takes its baseline.

    >>> from img2img_lab.plan.sweep_plan import stable_diffusion_steps
    >>> row = {"source": "cat.png", "prompt": "a cat", "negative_prompt": "", "strength": 0.3, "seed": 1,
    ...        "guidance_scale": 7.5, "num_inference_steps": 20, "scheduler": "ddim"}
    >>> cell_from_row(row, 0, stable_diffusion_steps).executed_steps
    6
    """
    values = {axis.name: axis.row_value(row) for axis in AXES}
    extra = {} if values["mode"] == "img2img" else {"mode": values["mode"]}
    steps = steps_of(values["scheduler"], values["num_inference_steps"], values["strength"], image_index, **extra)
    return Cell(**values, image_index=image_index, executed_steps=steps.executed_steps, t_start=steps.t_start,
                zero_step=steps.zero_step)


def _text(value) -> str | None:
    return None if is_missing(value) else str(value)


def row_conditions(row: dict) -> tuple:
    """A row's mode and the source conditions it ran with: ``(mode, repaint, mask_hash, control_hash)``
    (``("img2img", None, None, None)`` for plain img2img and rows of earlier versions)."""
    return (_text(row.get("mode")) or "img2img", _text(row.get("repaint")), _text(row.get("mask_hash")),
            _text(row.get("control_hash")))


def _axis_identity(row: dict, *, skip: tuple[str, ...] = ()) -> tuple:
    """A row's axis values in table order (the image by its content hash, floats rounded to 6 digits), an axis at its
    baseline left out (rows from before it existed read the same), then the source conditions where set."""
    values = []
    for axis in AXES:
        if axis.name in skip:
            continue
        value = row["source_hash"] if axis.name == "image" else axis.row_value(row)
        if axis.at_baseline(value):
            continue
        if axis.key_of is not None:  # a value of several parts by what identifies it (a LoRA: hashes and scales)
            value = axis.key_of(value)
        values.append(round(float(value), 6) if axis.kind is float else value)
    conditions = row_conditions(row)[1:]
    return tuple(values) + (conditions if any(value is not None for value in conditions) else ())


def row_group(row: dict) -> tuple:
    """The cells of one model that differ only in strength share this (a row's :meth:`Cell.group`)."""
    return (*_axis_identity(row, skip=("strength",)), row.get("model_fingerprint"))


def row_identity(row: dict) -> tuple:
    """One request of a model, as a hashable tuple of a row's (or a widget's) parameters.

    >>> row_identity({"source_hash": "h", "prompt": "p", "negative_prompt": "", "strength": 0.3000000001,
    ...               "seed": 1, "guidance_scale": 7.5, "num_inference_steps": 20, "scheduler": "ddim"})
    ('h', 'p', '', 0.3, 1, 7.5, 20, 'ddim')
    """
    return _axis_identity(row)


def cell_key(cell: Cell, *, fingerprint: str, scheduler_config: dict, source_hash: str, width: int, height: int,
             dtype: str, device_type: str, versions: dict[str, str], engine: str = "per-cell",
             conditioning: dict | None = None) -> str:
    """A 20-hex-digit content key over everything that determines a cell's pixels: its axes
    (:func:`img2img_lab.plan.axes.key_payload`: an axis at its baseline leaves the key of an earlier version's cell as
    it was), the model's fingerprint, the scheduler's config, the source's content hash and size, dtype, device type
    and library versions.

    The batched engine's pixels match the per-cell runner's within 1/255, not bit for bit, so its cells are
    keyed (and cached) separately: ``engine`` enters the key unless it is the per-cell reference.
    ``conditioning`` holds the hashes of the source's mask and control image
    (:meth:`~img2img_lab.sweep.source_conditions.SourceCondition.key_part`).

    >>> cell = Cell(image="cat.png", image_index=0, prompt="a cat", negative_prompt="", strength=0.3, seed=1,
    ...             guidance_scale=7.5, num_inference_steps=20, scheduler="ddim", executed_steps=6, t_start=14,
    ...             zero_step=False)
    >>> cell_key(cell, fingerprint="f", scheduler_config={}, source_hash="h", width=64, height=64, dtype="float32",
    ...          device_type="cpu", versions={})
    'dbc5859861c234e6e6e0'
    """
    payload = {
        **key_payload(cell),
        "model": fingerprint,
        "scheduler_config": {key: value for key, value in scheduler_config.items() if not key.startswith("_")},
        "source": source_hash,
        "size": [width, height],
        "dtype": dtype,
        "device_type": device_type,
        "torch": versions.get("torch"),
        "diffusers": versions.get("diffusers"),
        **({"engine": engine} if engine != "per-cell" else {}),
        **(conditioning or {}),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
