"""What a sweep plan's values may be: types, ranges and bounds, each refused with a one-line message and its fix.

Plain functions over values (Python or NumPy numbers, ``str`` or ``pathlib.Path``); :class:`img2img_lab.plan.sweep_plan.SweepPlan`
calls them for every axis. The bounds keep a typo or a hostile config from turning into a hang or a black image:

>>> import numpy as np
>>> check_guidance(7.5), check_seed(np.int64(3)), check_batch_size(None)
(7.5, 3, None)
>>> try:
...     check_guidance(1e308)
... except PlanError as error:
...     print(str(error)[:52])
guidance scale 1e+308 must be a number in [0, 100] (
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

from img2img_lab.errors import PlanError

#: Seeds must fit a torch.Generator's manual_seed.
MAX_SEED = 2**63 - 1
#: Bounds on what a plan may ask for (a typo or a hostile config gets a clear error, not a hang).
MAX_TEXT = 10_000
MAX_AXIS_VALUES = 10_000
MAX_CELLS = 1_000_000
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0


def as_list(value: Any, what: str = "axis") -> list:
    """An axis as a list (a scalar is a one-value axis; a NumPy array is listed), at most MAX_AXIS_VALUES long."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        values = list(value)
    else:
        values = [value]
    if len(values) > MAX_AXIS_VALUES:
        raise PlanError(f"'{what}' lists {len(values):,} values (at most {MAX_AXIS_VALUES:,}). Fix: split the study "
                        f"into several sweeps into one folder.")
    return values


def is_integer(value: Any) -> bool:
    """True for Python and NumPy integers (not for bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_number(value: Any) -> bool:
    """True for Python and NumPy real numbers (not for bools)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _text_number_hint(value: Any) -> str:
    """Why a number arrived as text: YAML 1.1 reads ``1e3`` (no dot) as a string."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads a number like 1e3 without a dot as text: write 1.0e3)"


def check_strength(value: Any) -> float:
    """A strength in [0, 1] as a float."""
    if not is_number(value):
        raise PlanError(f"strength {shown(value)} is not a number{_text_number_hint(value)}. Fix: use numbers in "
                        f"[0, 1], e.g. 0.3.")
    strength = float(value)
    if not math.isfinite(strength):
        raise PlanError(f"strength {shown(value)} is not finite. Fix: use numbers in [0, 1], e.g. 0.3.")
    if not 0.0 <= strength <= 1.0:
        raise PlanError(
            f"strength {shown(value)} is outside [0, 1] (0 keeps the source, 1 replaces it entirely). "
            f"Fix: use values between 0 and 1."
        )
    return strength


def check_seed(value: Any) -> int:
    """A seed in [0, 2**63 - 1] as an int (NumPy integers accepted, bools refused)."""
    if not is_integer(value) or not 0 <= int(value) <= MAX_SEED:
        raise PlanError(f"seed {shown(value)} must be an integer in [0, 2**63 - 1]. Fix: use e.g. 0, 1, 2.")
    return int(value)


def check_guidance(value: Any) -> float:
    """A guidance scale in [0, MAX_GUIDANCE] as a float."""
    if not is_number(value) or not math.isfinite(float(value)) or not 0 <= float(value) <= MAX_GUIDANCE:
        raise PlanError(
            f"guidance scale {shown(value)} must be a number in [0, {MAX_GUIDANCE:g}]{_text_number_hint(value)} "
            f"(values <= 1 disable "
            f"classifier-free guidance; larger values overflow into black images). Fix: use e.g. 1.0, 3.0 or 7.5."
        )
    return float(value)


def check_steps(value: Any) -> int:
    """A step count in [1, MAX_STEPS] as an int (the model checks its scheduler's own bound)."""
    if not is_integer(value) or not 1 <= int(value) <= MAX_STEPS:
        raise PlanError(f"steps {shown(value)} must be an integer in [1, {MAX_STEPS}] (num_inference_steps; a "
                        f"scheduler trained on 1000 timesteps has no more). Fix: use e.g. 20.")
    return int(value)


def check_batch_size(value: Any) -> int | None:
    """``max_batch_size`` as an int >= 1, or ``None`` (the device's default).

    >>> check_batch_size(8), check_batch_size(None)
    (8, None)
    """
    if value is None:
        return None
    if not is_integer(value) or int(value) < 1:
        raise PlanError(f"max batch size {shown(value)} must be a positive integer (UNet samples per call). "
                        f"Fix: use e.g. --max-batch 8, or leave it out for the device's default.")
    return int(value)


def check_text(value: Any, what: str) -> str:
    """Text (``None`` is "" for a negative prompt; a path is accepted for image paths and models), at most MAX_TEXT
    characters.

    >>> check_text(None, "negative prompt")
    ''
    >>> check_text(None, "prompt")
    Traceback (most recent call last):
    ...
    img2img_lab.errors.PlanError: prompt None is no prompt (a config's bare `~` or empty entry). Fix: write "" for the empty prompt, or the prompt in quotes.
    """
    if value is None and what == "prompt":
        raise PlanError('prompt None is no prompt (a config\'s bare `~` or empty entry). Fix: write "" for the empty '
                        'prompt, or the prompt in quotes.')
    if value is None:
        return ""
    if isinstance(value, os.PathLike) and what in ("image path", "model"):
        value = os.fspath(value)
    if what == "image path" and _is_image(value):
        raise PlanError(f"image path {shown(value)} is an image, not a file: a plan records its sources as files (the "
                        f"manifest, configs and rerun commands name them). Fix: save it as a PNG and pass its path "
                        f"(load_image and run_cell take arrays and PIL images directly).")
    if not isinstance(value, str):
        raise PlanError(f"{what} {shown(value)} is not text. Fix: quote it in the config.")
    if len(value) > MAX_TEXT:
        raise PlanError(f"{what} {shown(value)} has {len(value):,} characters (at most {MAX_TEXT:,}). Fix: shorten "
                        f"it.")
    return value


def _is_image(value: Any) -> bool:
    """Whether ``value`` is an image in memory: an array of two or more dimensions, or a PIL image."""
    module = type(value).__module__
    if module.startswith("numpy"):
        return getattr(value, "ndim", 0) >= 2
    return module.startswith("PIL") and hasattr(value, "mode") and hasattr(value, "size")


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: its repr, shortened (a config value can be huge)."""
    if _is_image(value):
        return (f"<array {value.dtype} {tuple(value.shape)}>" if hasattr(value, "shape")
                else f"<PIL image {value.mode} {value.size[0]}x{value.size[1]}>")
    text = repr(value.item() if hasattr(value, "item") and is_number(value) else value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_scheduler(value: Any) -> str:
    """A scheduler name img2img-lab knows, lower-cased (``None`` is "default")."""
    from img2img_lab.schedulers import scheduler_names

    name = "default" if value is None else str(value).lower()
    if name not in scheduler_names():
        raise PlanError(f"unknown scheduler {value!r}. Fix: use one of {', '.join(scheduler_names())}.")
    return name


def check_model(value: Any) -> str:
    """One entry of a ``models`` axis: a non-empty hub id or folder."""
    value = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise PlanError(f"model {shown(value)} in 'models' is not a hub id or folder. Fix: write e.g. "
                        f"models: [embedded, ./my-sdxl-folder].")
    return value


def check_unique(values: Iterable, what: str) -> None:
    """Refuse an axis that lists a value twice."""
    seen = set()
    for value in values:
        if value in seen:
            raise PlanError(f"{what} lists {shown(value)} twice. Fix: list each value once.")
        seen.add(value)
