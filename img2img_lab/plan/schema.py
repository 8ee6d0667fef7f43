"""A cell's identity and the results table's columns, in one place.

* :data:`COLUMNS`: every column of ``results.parquet``, in order, as four groups: the cell's **parameters**
  (:data:`PARAMETER_COLUMNS`), what its strength **runs** (:data:`STEP_COLUMNS`), the **output**
  (:data:`OUTPUT_COLUMNS`) and its **provenance** (:data:`PROVENANCE_COLUMNS`); metric columns follow.
* :func:`cell_key`: the content key of a cell (what identifies a request); :func:`cell_parameters` turns a
  :class:`~img2img_lab.plan.sweep_plan.Cell` into its parameter columns and :func:`cell_from_row` turns a row back.
* :data:`SETTING_COLUMNS`: what a strength curve shares (everything but strength and seed); :func:`row_group`:
  the cells that differ only in strength; :func:`row_identity`: one request, as a hashable tuple.
* :class:`Produced`: how a cell's image was made.

>>> COLUMNS[:3], len(COLUMNS)
(['cell_key', 'source', 'source_name'], 46)
>>> Produced.duplicate("diffusion"), is_duplicate("duplicate:diffusion")
('duplicate:diffusion', True)
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from pathlib import Path

from img2img_lab.plan.sweep_plan import Cell

PARAMETER_COLUMNS = ("source", "source_name", "source_hash", "prompt", "negative_prompt", "strength", "seed",
                     "guidance_scale", "num_inference_steps", "scheduler", "mode", "repaint", "mask_hash",
                     "control_hash", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
#: What a strength means in a cell's mode: ``start_from`` ("noised source", "pure noise" — inpainting at strength 1 —
#: or "source": no step) and ``inpaint_method`` ("latent blend" / "masked-image channels"; None for img2img).
STEP_COLUMNS = ("width", "height", "executed_steps", "t_start", "unet_evaluations", "start_timestep",
                "timesteps", "sigma", "log_snr", "sqrt_alpha_bar", "flow_sigma", "zero_step", "duplicate_of",
                "start_from", "inpaint_method")
OUTPUT_COLUMNS = ("produced", "seconds", "output_path", "output_hash", "nsfw_flagged")
PROVENANCE_COLUMNS = ("model", "model_family", "model_fingerprint", "device", "dtype", "torch_threads", "engine",
                      "batch_id")
#: Columns of results.parquet, in order (metrics are appended by img2img_lab.metrics.measure).
COLUMNS = ["cell_key", *PARAMETER_COLUMNS, *STEP_COLUMNS, *OUTPUT_COLUMNS, *PROVENANCE_COLUMNS]
#: Columns rows written by earlier versions hold that say nothing new (``init_steps`` always equalled
#: ``executed_steps``); tables read from a run folder leave them out.
LEGACY_COLUMNS = ("init_steps",)
#: What one strength curve shares: a source, the prompts, the guidance, the steps and the scheduler.
SETTING_COLUMNS = ("source_hash", "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "scheduler")
#: A calibration's experimental unit: one (source, prompt, negative prompt) pair, resampled as a whole.
UNIT_COLUMNS = SETTING_COLUMNS[:3]
#: The same, as people read it (the source's name instead of its hash): a report's or explorer's grid families.
SETTING_LABEL_COLUMNS = ("source_name", *SETTING_COLUMNS[1:])
#: What a calibration decides separately: one strength reference table per guidance, steps and scheduler.
CONDITION_COLUMNS = SETTING_COLUMNS[3:]
#: The axes a study varies, as grids, curves and the CLI's ``--rows/--cols/--hue`` name them.
AXIS_COLUMNS = ("model", "mode", *SETTING_LABEL_COLUMNS, "seed", "strength")


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
    ``mask_hash`` and ``control_hash`` (:meth:`img2img_lab.sweep.conditions.SourceCondition.columns`).

    >>> cell_parameters(Cell("src/cat.png", 0, "a cat", "", 0.3, 1, 7.5, 20, "ddim", 6, 14, False), "h")["source_name"]
    'cat'
    """
    return {"source": cell.image, "source_name": Path(cell.image).stem, "source_hash": source_hash,
            "prompt": cell.prompt, "negative_prompt": cell.negative_prompt, "strength": cell.strength,
            "seed": cell.seed, "guidance_scale": cell.guidance_scale,
            "num_inference_steps": cell.num_inference_steps, "scheduler": cell.scheduler, "mode": cell.mode,
            "repaint": None, "mask_hash": None, "control_hash": None, **(condition or {}),
            "controlnet_conditioning_scale": cell.controlnet_conditioning_scale,
            "control_guidance_start": cell.control_guidance_start, "control_guidance_end": cell.control_guidance_end}


def cell_from_row(row: dict, image_index: int, steps_of) -> Cell:
    """The cell a row records (its steps from the model: ``steps_of``, see :func:`img2img_lab.sweep.run.source_steps`).

    >>> from img2img_lab.plan.sweep_plan import _stable_diffusion_steps
    >>> row = {"source": "cat.png", "prompt": "a cat", "negative_prompt": "", "strength": 0.3, "seed": 1,
    ...        "guidance_scale": 7.5, "num_inference_steps": 20, "scheduler": "ddim"}
    >>> cell_from_row(row, 0, _stable_diffusion_steps).executed_steps
    6
    """
    mode = _text(row.get("mode")) or "img2img"
    control = {name: None if is_missing(row.get(name)) else float(row[name])
               for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")}
    steps = (steps_of(row["scheduler"], int(row["num_inference_steps"]), float(row["strength"]), image_index)
             if mode == "img2img" else steps_of(row["scheduler"], int(row["num_inference_steps"]),
                                                 float(row["strength"]), image_index, mode=mode))
    return Cell(mode=mode, **control, image=str(row["source"]), image_index=image_index, prompt=row["prompt"],
                negative_prompt=row["negative_prompt"], strength=float(row["strength"]), seed=int(row["seed"]),
                guidance_scale=float(row["guidance_scale"]), num_inference_steps=int(row["num_inference_steps"]),
                scheduler=row["scheduler"], executed_steps=steps.executed_steps, t_start=steps.t_start,
                zero_step=steps.zero_step)


def _text(value) -> str | None:
    return None if is_missing(value) else str(value)


def row_conditioning(row: dict) -> tuple:
    """A row's mode and conditioning (``("img2img", None, ...)`` for plain img2img and rows of earlier versions)."""
    return (_text(row.get("mode")) or "img2img", _text(row.get("repaint")), _text(row.get("mask_hash")),
            _text(row.get("control_hash")),
            *(None if is_missing(row.get(name)) else round(float(row[name]), 6)
              for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")))


def _conditioned(row: dict) -> tuple:
    conditioning = row_conditioning(row)
    return () if conditioning == ("img2img",) + (None,) * 6 else conditioning


def row_group(row: dict) -> tuple:
    """The cells of one model that differ only in strength share this (a row's :meth:`Cell.group`)."""
    return (*(row[column] for column in UNIT_COLUMNS), int(row["seed"]), float(row["guidance_scale"]),
            int(row["num_inference_steps"]), row["scheduler"], row.get("model_fingerprint"), *row_conditioning(row))


def row_identity(row: dict) -> tuple:
    """One request of a model, as a hashable tuple of a row's (or a widget's) parameters.

    >>> row_identity({"source_hash": "h", "prompt": "p", "negative_prompt": "", "strength": 0.3000000001,
    ...               "seed": 1, "guidance_scale": 7.5, "num_inference_steps": 20, "scheduler": "ddim"})
    ('h', 'p', '', 0.3, 1, 7.5, 20, 'ddim')
    """
    return (row["source_hash"], row["prompt"], row["negative_prompt"], round(float(row["strength"]), 6),
            int(row["seed"]), round(float(row["guidance_scale"]), 6), int(row["num_inference_steps"]),
            row["scheduler"]) + _conditioned(row)


def cell_key(cell: Cell, *, fingerprint: str, scheduler_config: dict, source_hash: str, width: int, height: int,
             dtype: str, device_type: str, versions: dict[str, str], engine: str = "per-cell",
             conditioning: dict | None = None) -> str:
    """A 20-hex-digit content key over everything that determines a cell's pixels.

    The batched engine's pixels match the per-cell runner's within 1/255, not bit for bit, so its cells are
    keyed (and cached) separately: ``engine`` enters the key unless it is the per-cell reference. The mode (unless
    img2img), ``conditioning`` (the hashes of the source's mask and control image:
    :meth:`~img2img_lab.sweep.conditions.SourceCondition.key_part`) and the ControlNet settings enter it where set.

    >>> cell = Cell("cat.png", 0, "a cat", "", 0.3, 1, 7.5, 20, "ddim", 6, 14, False)
    >>> len(cell_key(cell, fingerprint="f", scheduler_config={}, source_hash="h", width=64, height=64,
    ...              dtype="float32", device_type="cpu", versions={}))
    20
    """
    payload = {
        "model": fingerprint,
        "scheduler": cell.scheduler,
        "scheduler_config": {key: value for key, value in scheduler_config.items() if not key.startswith("_")},
        "source": source_hash,
        "prompt": cell.prompt,
        "negative_prompt": cell.negative_prompt,
        "strength": repr(float(cell.strength)),
        "steps": cell.num_inference_steps,
        "guidance_scale": repr(float(cell.guidance_scale)),
        "seed": cell.seed,
        "size": [width, height],
        "dtype": dtype,
        "device_type": device_type,
        "torch": versions.get("torch"),
        "diffusers": versions.get("diffusers"),
    }
    if engine != "per-cell":
        payload["engine"] = engine
    if cell.mode != "img2img":  # plain img2img cells keep the keys of earlier versions
        payload["mode"] = cell.mode
    payload.update(conditioning or {})
    for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
        if getattr(cell, name) is not None:
            payload[name] = repr(float(getattr(cell, name)))
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
